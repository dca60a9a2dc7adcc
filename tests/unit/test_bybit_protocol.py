"""Bybit v5 (spot and linear) against the documented protocol, not only our simulator.

The frames quoted in shared/docs/venue-protocols.md section 5.3 (recorded from the venue)
are parsed as they are; the sequence rules (snapshot replaces, `u` contiguous, `u == 1` a
restart, a gap resubscribes one topic) are driven frame by frame. The recorded simulator
session tests/data/BYBIT.jsonl.gz (made with `mmengine record`) replays with no gap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from mmengine.book.levels import LevelDecoder
from mmengine.capture import CaptureEvent
from mmengine.config import parse_config
from mmengine.errors import ConfigError
from mmengine.model import BookState
from mmengine.replay import detect_protocol, replay_capture, scorecard
from mmengine.venues.bybit import BybitSpot, parse_book, spot_symbol
from mmengine.venues.bybit_linear import BybitLinear, linear_symbol, merge_ticker
from tests.venue_session import RecordingSession, venue

# Real frames, verbatim from venue-protocols.md 5.3 (first spot, second linear).
DOC_SPOT_DELTA = '{"topic":"orderbook.200.BTCUSDT","ts":1786310816618,"type":"delta","data":{"s":"BTCUSDT","b":[["65140.4","0.875077"]],"a":[["65154.6","0.09948"],["65154.7","0.123013"],["65239","0.155135"],["65239.1","0"]],"u":62505425,"seq":112488545865},"cts":1786310816585}'  # noqa: E501
DOC_LINEAR_DELTA = '{"topic":"orderbook.200.ETHUSDT","type":"delta","ts":1786310817731,"data":{"s":"ETHUSDT","b":[["1922.27","5.91"],["1922.26","2.30"],["1921.17","26.03"],["1921.16","0"]],"a":[["1922.43","2.17"],["1923.59","0.12"],["1923.60","41.92"],["1923.68","32.37"],["1923.69","4.01"],["1924.12","0.01"],["1924.13","73.12"]],"u":14768461,"seq":430879399832},"cts":1786310817727}'  # noqa: E501
DOC_TICKER_DELTA = '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","bid1Price":"65114.20","bid1Size":"6.054","ask1Price":"65114.30","ask1Size":"10.486"},"cs":753843907770,"ts":1786310817883}'  # noqa: E501
DOC_ACK_LINEAR = '{"success":true,"ret_msg":"","conn_id":"d8bu1olkndm7crnfs1e0-j6akw","req_id":"","op":"subscribe"}'  # noqa: E501
DOC_ACK_SPOT = (
    '{"success":true,"ret_msg":"subscribe","conn_id":"d9avt8shteepr00gfc1g-4zd1x","op":"subscribe"}'
)
DOC_PONG_SPOT = '{"success":true,"ret_msg":"pong","conn_id":"abc","op":"ping"}'


class _Session(RecordingSession):
    def fetch(self, key: Any, url: str) -> None:
        raise AssertionError("Bybit needs no REST")

    def reconnect(self, reason: str) -> None:
        raise AssertionError("a Bybit gap resubscribes one topic, it never reconnects")


def _frame(kind: str, symbol: str, u: int, seq: int, b: Any = (), a: Any = (), depth=200) -> str:
    return orjson.dumps(
        {
            "topic": f"orderbook.{depth}.{symbol}",
            "ts": 1786310816618,
            "type": kind,
            "data": {"s": symbol, "b": list(b), "a": list(a), "u": u, "seq": seq},
            "cts": 1786310816585,
        }
    ).decode()


def _venue(cls: type = BybitSpot, inst: str = "BTC-USDT", audit: bool = False) -> Any:
    return venue(cls.protocol, (inst,), _Session(), depth=200, audit=audit)


# --- the documented frames ---------------------------------------------------------------------


def test_documented_spot_delta_parses_as_the_docs_say() -> None:
    m = parse_book("BTC-USDT", orjson.loads(DOC_SPOT_DELTA), LevelDecoder())
    assert (m.instrument, m.snapshot, m.last_id, m.cross_seq) == (
        "BTC-USDT",
        False,
        62505425,
        112488545865,
    )
    assert m.bids == [(65140.4, 0.875077)]
    assert m.asks[-1] == (65239.1, 0.0)  # size "0" deletes
    assert m.ts_ns == 1786310816585 * 1_000_000  # cts, the matching engine's time


def test_documented_frames_apply_on_a_live_book_of_each_category() -> None:
    spot, _ = _venue(BybitSpot, "BTC-USDT")
    spot.receive(
        _frame(
            "snapshot", "BTCUSDT", 62505424, 112488545800, [["65140.3", "1"]], [["65239.1", "2"]]
        ),
        1,
    )
    spot.receive(DOC_SPOT_DELTA, 2)
    book = spot.books["BTC-USDT"]
    assert book.state is BookState.LIVE
    assert (book.venue_seq, book.cross_seq) == (62505425, 112488545865)
    assert book.bids.prices(2) == [65140.4, 65140.3]
    assert book.asks.prices(5) == [65154.6, 65154.7, 65239.0]  # 65239.1 deleted
    linear, session = _venue(BybitLinear, "ETH-USDT-PERP")
    linear.receive(_frame("snapshot", "ETHUSDT", 14768460, 430879399000, [["1921.16", "3"]]), 1)
    linear.receive(DOC_LINEAR_DELTA, 2)
    book = linear.books["ETH-USDT-PERP"]
    assert book.state is BookState.LIVE and book.cross_seq == 430879399832
    assert book.bids.prices(5) == [1922.27, 1922.26, 1921.17]
    assert book.bids.sizes[1922.26] == 2.30
    # The BookTop carries the cross sequence.
    assert session.tops[-1].cross_seq == 430879399832 and session.tops[-1].venue_seq == 14768461


@pytest.mark.parametrize("ack", [DOC_ACK_LINEAR, DOC_ACK_SPOT, DOC_PONG_SPOT])
def test_documented_acks_and_pongs_need_nothing(ack: str) -> None:
    venue, session = _venue()
    venue.receive(ack, 1)
    assert not venue.venue_stats.skipped and not session.sent


def test_documented_partial_ticker_delta_merges_field_by_field() -> None:
    state: dict[str, Any] = {}
    merge_ticker(state, {"type": "snapshot", "data": {"symbol": "BTCUSDT", "bid1Price": "1"}})
    merge_ticker(state, {"type": "delta", "data": {"symbol": "BTCUSDT", "ask1Price": "2"}})
    assert state == {"symbol": "BTCUSDT", "bid1Price": "1", "ask1Price": "2"}
    merge_ticker(state, orjson.loads(DOC_TICKER_DELTA))
    assert state["bid1Price"] == "65114.20" and state["ask1Size"] == "10.486"
    merge_ticker(state, {"type": "snapshot", "data": {"symbol": "BTCUSDT"}})
    assert state == {"symbol": "BTCUSDT"}  # a snapshot replaces


def test_linear_ticker_audit_by_arrival_is_loose_and_a_delta_without_bid_keeps_it() -> None:
    venue, session = _venue(BybitLinear, "BTC-USDT-PERP", audit=True)
    assert any("tickers.BTCUSDT" in f for f in venue.subscribe_frames())
    venue.receive(_frame("snapshot", "BTCUSDT", 5, 100, [["65114.2", "6"]], [["65114.3", "9"]]), 1)
    venue.receive(DOC_TICKER_DELTA, 2)  # cs never equals a book seq on the venue: loose
    st = venue.stats["BTC-USDT-PERP"]
    assert (st.audit_loose_agree, st.audit_loose_disagree) == (1, 0)
    partial = {"topic": "tickers.BTCUSDT", "type": "delta", "cs": 7, "ts": 1}
    partial["data"] = {"symbol": "BTCUSDT", "ask1Price": "65114.5"}
    venue.receive(orjson.dumps(partial).decode(), 3)  # bid1Price kept from before
    assert (st.audit_loose_agree, st.audit_loose_disagree) == (1, 1)
    assert venue.books["BTC-USDT-PERP"].state is BookState.LIVE and not session.sent


def test_ticker_disagreeing_at_an_equal_cross_sequence_resyncs() -> None:
    venue, session = _venue(BybitLinear, "BTC-USDT-PERP", audit=True)
    venue.receive(_frame("snapshot", "BTCUSDT", 5, 100, [["10", "1"]], [["11", "1"]]), 1)
    ok = {"topic": "tickers.BTCUSDT", "type": "snapshot", "cs": 100, "ts": 1}
    ok["data"] = {"symbol": "BTCUSDT", "bid1Price": "10", "ask1Price": "11"}
    venue.receive(orjson.dumps(ok).decode(), 2)
    assert venue.stats["BTC-USDT-PERP"].audit_agree == 1
    bad = dict(ok, data={"symbol": "BTCUSDT", "bid1Price": "9.5", "ask1Price": "11"})
    venue.receive(orjson.dumps(bad).decode(), 3)
    assert venue.stats["BTC-USDT-PERP"].audit_disagree == 1
    assert venue.books["BTC-USDT-PERP"].state is BookState.RESYNCING
    assert [orjson.loads(s)["op"] for s in session.sent] == ["unsubscribe", "subscribe"]


def test_spot_has_no_ticker_audit_to_subscribe() -> None:
    venue, _ = _venue(BybitSpot, "BTC-USDT", audit=True)
    assert not any("tickers" in f for f in venue.subscribe_frames())


# --- sequence rules ------------------------------------------------------------------------


def test_gap_resubscribes_that_topic_only() -> None:
    bybit, session = venue("bybit-v5-spot", ("BTC-USDT", "ETH-USDT"), _Session(), depth=50)
    bybit.receive(_frame("snapshot", "BTCUSDT", 10, 1, [["100", "1"]], [["101", "1"]], 50), 1)
    bybit.receive(_frame("snapshot", "ETHUSDT", 20, 2, [["10", "1"]], [["11", "1"]], 50), 1)
    bybit.receive(_frame("delta", "BTCUSDT", 11, 3, [["100", "2"]], [], 50), 2)
    bybit.receive(_frame("delta", "BTCUSDT", 13, 5, [["99", "2"]], [], 50), 3)  # 12 missing
    btc, eth = bybit.books["BTC-USDT"], bybit.books["ETH-USDT"]
    assert btc.state is BookState.RESYNCING and len(btc.bids) == 0
    assert eth.state is BookState.LIVE
    assert bybit.stats["BTC-USDT"].sequence_gaps == 1
    sent = [orjson.loads(s) for s in session.sent]
    assert [(m["op"], m["args"]) for m in sent] == [
        ("unsubscribe", ["orderbook.50.BTCUSDT"]),
        ("subscribe", ["orderbook.50.BTCUSDT"]),
    ]
    # Deltas still in flight are dropped; the new snapshot brings the book back.
    bybit.receive(_frame("delta", "BTCUSDT", 14, 6, [["98", "1"]], [], 50), 4)
    assert bybit.stats["BTC-USDT"].dropped_stale == 1
    bybit.receive(_frame("snapshot", "BTCUSDT", 30, 9, [["97", "1"]], [["101", "1"]], 50), 5)
    assert btc.state is BookState.LIVE and btc.bids.prices(5) == [97.0]


def test_delta_before_any_snapshot_is_a_gap() -> None:
    venue, session = _venue()
    venue.receive(_frame("delta", "BTCUSDT", 11, 3, [["100", "2"]]), 1)
    assert venue.books["BTC-USDT"].state is BookState.RESYNCING
    assert venue.stats["BTC-USDT"].sequence_gaps == 1 and len(session.sent) == 2


def test_u_equal_1_snapshot_is_a_restart_that_replaces_the_book() -> None:
    venue, session = _venue()
    venue.receive(_frame("snapshot", "BTCUSDT", 500, 1000, [["100", "1"]], [["101", "1"]]), 1)
    venue.receive(_frame("delta", "BTCUSDT", 501, 1001, [["99", "1"]]), 2)
    venue.receive(_frame("snapshot", "BTCUSDT", 1, 5000, [["90", "1"]], [["91", "1"]]), 3)
    book = venue.books["BTC-USDT"]
    assert book.state is BookState.LIVE and book.bids.prices(5) == [90.0]
    assert (book.venue_seq, book.cross_seq) == (1, 5000)
    stats = venue.stats["BTC-USDT"]
    assert stats.restarts == 1 and stats.sequence_gaps == 0
    venue.receive(_frame("delta", "BTCUSDT", 2, 5001, [["89", "1"]]), 4)
    assert book.bids.prices(5) == [90.0, 89.0] and not session.sent


def test_ping_every_20_s_and_subscribe_at_most_10_args() -> None:
    insts = tuple(f"C{i}-USDT" for i in range(23))
    bybit, _ = venue("bybit-v5-spot", insts, _Session(), depth=1)
    assert bybit.keepalive_interval_s == 20.0
    assert orjson.loads(bybit.keepalive_frame())["op"] == "ping"
    frames = [orjson.loads(f) for f in bybit.subscribe_frames()]
    assert [len(f["args"]) for f in frames] == [10, 10, 3]
    assert frames[0]["args"][0] == "orderbook.1.C0USDT"


# --- symbols and config ---------------------------------------------------------------------


def test_symbols_for_both_categories() -> None:
    assert spot_symbol("BTC-USDT") == "BTCUSDT"
    assert linear_symbol("BTC-USDT-PERP") == "BTCUSDT"
    assert linear_symbol("BTC-USDC-PERP") == "BTCPERP"
    with pytest.raises(ValueError):
        linear_symbol("BTC-USDT")
    with pytest.raises(ValueError):
        spot_symbol("BTC-USDT-PERP")


def _cfg(protocol: str, depth: int, inst: str) -> dict[str, Any]:
    return {
        "venues": [{"name": "b", "protocol": protocol, "instruments": [inst], "depth": depth}],
        "instruments": [{"name": inst, "sources": [{"venue": "b"}], "min_venues": 1}],
    }


@pytest.mark.parametrize("protocol", ["bybit-v5-spot", "bybit-v5-linear"])
def test_config_depths_are_those_bybit_offers(protocol: str) -> None:
    inst = "BTC-USDT-PERP" if protocol.endswith("linear") else "BTC-USDT"
    for depth in (1, 50, 200, 1000):
        parse_config(_cfg(protocol, depth, inst))
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg(protocol, 100, inst))
    assert "venues[0].depth" in str(err.value) and "1, 50, 200, 1000" in str(err.value)


# --- hostile frames --------------------------------------------------------------------------

UNATTRIBUTABLE = [
    '{"topic":"orderbook.200.BTCUSDT","type":"delta","data":{"s":"BTCU',  # truncated
    "[]",
    '{"success":false,"ret_msg":"Invalid symbol :[orderbook.200.FOO]","op":"subscribe"}',
    _frame("delta", "DOGEUSDT", 501, 1001, [["1", "1"]]),  # unknown topic
]
UNUSABLE_UPDATES = [
    _frame("delta", "ETHUSDT", 501, 1001, [["1", "1"]]).replace(
        "orderbook.200.ETHUSDT", "orderbook.200.BTCUSDT"
    ),  # symbol does not match the topic
    _frame("delta", "BTCUSDT", 501, 1001, [["1e400", "1"]]),  # huge number
    _frame("delta", "BTCUSDT", 501, 1001, [["100", "-1"]]),
    _frame("delta", "BTCUSDT", 501, 1001, [[100, None]]),  # wrong types
    _frame("delta", "BTCUSDT", 501, 1001, [[]]),  # empty level
    _frame("delta", "BTCUSDT", 501, 1001, ["12", "34"]),  # a level that is a string
    _frame("delta", "BTCUSDT", "501", 1001),  # u as a string
    _frame("delta", "BTCUSDT", 501, 1001).replace('"b":[]', '"b":{}'),
    _frame("update", "BTCUSDT", 501, 1001),  # unknown type
]


def _live_btc() -> tuple[Any, Any]:
    venue, session = _venue()
    venue.receive(_frame("snapshot", "BTCUSDT", 500, 1000, [["100", "1"]], [["101", "1"]]), 1)
    return venue, session


@pytest.mark.parametrize("frame", UNATTRIBUTABLE)
def test_hostile_frames_for_no_book_are_counted_and_change_no_book(frame: str) -> None:
    venue, session = _live_btc()
    book = venue.books["BTC-USDT"]
    before = (book.state, dict(book.bids.sizes), dict(book.asks.sizes), book.venue_seq)
    venue.receive(frame, 2)
    assert sum(venue.venue_stats.skipped.values()) == 1
    assert (book.state, dict(book.bids.sizes), dict(book.asks.sizes), book.venue_seq) == before
    # The next good delta still applies: nothing was consumed by the hostile frame.
    venue.receive(_frame("delta", "BTCUSDT", 501, 1001, [["100", "3"]]), 3)
    assert book.bids.sizes[100.0] == 3.0 and not session.sent


@pytest.mark.parametrize("frame", UNUSABLE_UPDATES)
def test_an_unusable_update_of_a_topic_resyncs_that_topic_at_once(frame: str) -> None:
    """The venue sent that book an update we cannot apply: the book missed it. It resyncs
    now (unsubscribe, subscribe) rather than stay LIVE until the next delta shows a gap."""
    venue, session = _live_btc()
    venue.receive(frame, 2)
    assert sum(venue.venue_stats.skipped.values()) == 1
    book = venue.books["BTC-USDT"]
    assert book.state is BookState.RESYNCING and len(book.bids) == 0
    assert [orjson.loads(s)["op"] for s in session.sent] == ["unsubscribe", "subscribe"]
    venue.receive(_frame("snapshot", "BTCUSDT", 600, 1100, [["99", "1"]], [["101", "1"]]), 3)
    assert book.state is BookState.LIVE and book.bids.prices(5) == [99.0]


def test_empty_level_arrays_are_a_valid_delta() -> None:
    venue, _ = _venue()
    venue.receive(_frame("snapshot", "BTCUSDT", 500, 1000, [["100", "1"]], [["101", "1"]]), 1)
    venue.receive(_frame("delta", "BTCUSDT", 501, 1001), 2)
    assert venue.books["BTC-USDT"].venue_seq == 501 and not venue.venue_stats.skipped


# --- the recorded capture ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "protocol", "insts"),
    [
        ("bybit-linear", "bybit-v5-linear", ("BTC-USDT-PERP", "ETH-USDT-PERP")),
        ("bybit-spot", "bybit-v5-spot", ("BTC-USDT", "ETH-USDT")),
    ],
)
def test_recorded_capture_replays_without_a_gap(
    data_dir: Path, name: str, protocol: str, insts: tuple[str, ...]
) -> None:
    result = replay_capture(data_dir / "BYBIT.jsonl.gz", venue_name=name)
    card = scorecard(result)
    assert card["protocol"] == protocol and card["errors"] == []
    assert set(card["instruments"]) == set(insts)
    for inst in insts:
        row = card["instruments"][inst]
        assert row["state"] == "LIVE" and row["snapshots"] == 1
        assert row["sequence"]["gaps"] == 0 and row["sequence"]["checked"] == row["updates"] > 100
        book = result.venue.books[inst]
        assert book.cross_seq > 0
    if protocol == "bybit-v5-linear":
        stats = result.venue.stats.values()
        assert sum(s.audit_agree for s in stats) > 0 and sum(s.audit_disagree for s in stats) == 0
    print(f"\n{name}: replay {card['us_per_book_frame']:.1f} us/book frame")


def test_config_rejects_an_instrument_the_category_does_not_list() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg("bybit-v5-linear", 50, "BTC-USDT"))
    assert "venues[0].instruments" in str(err.value) and "BASE-USDT-PERP" in str(err.value)
    with pytest.raises(ConfigError):
        parse_config(_cfg("bybit-v5-spot", 50, "BTC-USDT-PERP"))


@pytest.mark.parametrize(
    ("exchange", "addr", "protocol"),
    [
        ("BYBIT", "wss://stream.bybit.com/v5/public/spot", "bybit-v5-spot"),
        ("BYBIT", "wss://stream.bybit.com/v5/public/linear", "bybit-v5-linear"),
        ("COINBASE", "wss://advanced-trade-ws.coinbase.com", "coinbase-advanced"),
    ],
)
def test_replay_detects_the_protocol_from_the_address(
    exchange: str, addr: str, protocol: str
) -> None:
    events = [CaptureEvent("connect", "c", 0.0, "", addr)]
    assert detect_protocol({"exchange": exchange}, events) == protocol
