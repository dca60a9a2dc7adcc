"""Kraken v1/v2 and OKX v5 protocol rules on the test vectors of venue-protocols.md (3.2, 3.4,
4.4), symbols, sequence chains, and the `mmengine replay` scorecard on the shared captures."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from mmengine.book.book import BookSide
from mmengine.book.checksum import kraken_checksum, okx_checksum
from mmengine.book.levels import PairFormats, checksum_form, kraken_numbers
from mmengine.cli import main
from mmengine.config import parse_config
from mmengine.errors import ConfigError
from mmengine.model import BookState
from mmengine.venues.kraken_v1 import normalize_pair, v1_pair
from mmengine.venues.kraken_v2 import v2_symbol
from mmengine.venues.okx import inst_id, normalize_inst_id
from mmengine.venues.registry import PROTOCOLS
from tests.venue_session import venue

# --- checksum test vectors: the book core's checksums over books holding these levels --------


def _side(is_bid: bool, levels: list[tuple[float, float, str, str]]) -> BookSide:
    side = BookSide(is_bid, keep_wire=True)
    side.load_wire(levels)
    return side


def _kraken_strings(levels: list[tuple[str, str]]) -> list[tuple[float, float, str, str]]:
    return [(float(p), float(q), checksum_form(p), checksum_form(q)) for p, q in levels]


def _okx_strings(levels: list[tuple[str, str]]) -> list[tuple[float, float, str, str]]:
    return [(float(p), float(q), p, q) for p, q in levels]


def test_kraken_v1_vector() -> None:
    asks = [("0.05005", "0.00000500"), ("0.05010", "1.50000000")]
    bids = [("0.05000", "0.00000300"), ("0.04990", "12.00000000")]
    got = kraken_checksum(_side(False, _kraken_strings(asks)), _side(True, _kraken_strings(bids)))
    assert got == 1798879697


V2_ASKS = (
    "45285.2,0.00100000 45286.4,1.54571953 45286.6,1.54571109 45289.6,1.54560911 "
    "45290.2,0.15890660 45291.8,1.54553491 45294.7,0.04454749 45296.1,0.35380000 "
    "45297.5,0.09945542 45299.5,0.18772827"
)
V2_BIDS = (
    "45283.5,0.10000000 45283.4,1.54582015 45282.1,0.10000000 45281.0,0.10000000 "
    "45280.3,1.54592586 45279.0,0.07990000 45277.6,0.03310103 45277.5,0.30000000 "
    "45277.3,1.54602737 45276.6,0.15445238"
)


def _v2_levels(text: str) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in (lv.split(",") for lv in text.split())]


def test_kraken_v2_vector_from_json_numbers() -> None:
    """The docs' worked example: numbers formatted with price precision 1, qty precision 8."""

    def numbers(text: str, pfmt: str, qfmt: str) -> list[tuple[float, float, str, str]]:
        levels = [{"price": p, "qty": q} for p, q in _v2_levels(text)]
        return kraken_numbers(levels, PairFormats(pfmt, qfmt))

    asks = _side(False, numbers(V2_ASKS, ".1f", ".8f"))
    bids = _side(True, numbers(V2_BIDS, ".1f", ".8f"))
    assert kraken_checksum(asks, bids) == 3310070434
    # repr(float) loses the trailing zeros, and with them the checksum.
    naive = [(repr(p), repr(q)) for p, q in _v2_levels(V2_ASKS)]
    naive_bids = [(repr(p), repr(q)) for p, q in _v2_levels(V2_BIDS)]
    got = kraken_checksum(
        _side(False, _kraken_strings(naive)), _side(True, _kraken_strings(naive_bids))
    )
    assert got != 3310070434


def test_okx_legacy_vector() -> None:
    bids = _side(True, _okx_strings([("3366.1", "7"), ("3366", "6")]))
    asks = _side(False, _okx_strings([("3366.8", "9"), ("3368", "8")]))
    assert okx_checksum(bids, asks) == -1881014294


# --- symbols --------------------------------------------------------------------------------


def test_symbols() -> None:
    assert normalize_pair("XBT/USD") == "BTC-USD"
    assert normalize_pair("XDG/XBT") == "DOGE-BTC"
    assert normalize_pair("BTC/USD") == "BTC-USD"
    assert v1_pair("BTC-USD") == "XBT/USD" and v1_pair("DOGE-EUR") == "XDG/EUR"
    assert v2_symbol("DOGE-USD") == "DOGE/USD"
    assert normalize_inst_id("BTC-USDT") == "BTC-USDT"
    assert normalize_inst_id("UNI-USD-SWAP") == "UNI-USD-PERP"
    assert normalize_inst_id("BTC-USD-220527") == "BTC-USD-20220527"
    assert inst_id("BTC-USD-20220527") == "BTC-USD-220527"
    assert inst_id("BTC-USDT-PERP") == "BTC-USDT-SWAP"
    with pytest.raises(ValueError):
        normalize_inst_id("BTC-USD-220514-22000-C")


def test_kraken_rejects_a_depth_it_does_not_offer() -> None:
    doc = {
        "venues": [{"name": "k", "protocol": "kraken-v2", "instruments": ["BTC-USD"], "depth": 50}],
        "instruments": [{"name": "BTC-USD", "sources": [{"venue": "k"}]}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert err.value.problems == [
        "venues[0].depth: kraken-v2 offers depths 10, 25, 100, 500, 1000; was 50"
    ]


# --- Kraken v2 on the docs' synthetic frames --------------------------------------------------

INSTRUMENT = (
    '{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[{"symbol":"BTC/USD",'
    '"base":"BTC","quote":"USD","price_precision":1,"qty_precision":8,"status":"online"}]}}'
)
SNAPSHOT = (
    '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[{"price":45283.5,'
    '"qty":0.10000000}],"asks":[{"price":45285.2,"qty":0.00100000}],"checksum":2383917627}]}'
)
UPDATE = (
    '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":45283.4,'
    '"qty":1.54582015}],"asks":[],"checksum":66975070,'
    '"timestamp":"2023-10-06T17:35:55.440295Z"}]}'
)


def test_kraken_v2_subscribes_the_book_once_precisions_are_known_and_verifies_it() -> None:
    kraken, session = venue("kraken-v2", ("BTC-USD",), depth=10)
    first = [orjson.loads(f) for f in kraken.subscribe_frames()]
    assert [f["params"]["channel"] for f in first] == ["instrument"]
    kraken.receive(INSTRUMENT, 1)
    sub = orjson.loads(session.sent[-1])
    assert sub["method"] == "subscribe"
    assert sub["params"] == {
        "channel": "book",
        "symbol": ["BTC/USD"],
        "depth": 10,
        "snapshot": True,
    }
    kraken.receive(SNAPSHOT, 2)
    kraken.receive(UPDATE, 3)
    stats = kraken.stats["BTC-USD"]
    assert (stats.checksums_checked, stats.checksums_failed) == (2, 0)
    book = kraken.books["BTC-USD"]
    assert book.state is BookState.LIVE
    assert book.bids.prices(2) == [45283.5, 45283.4]
    assert book.exchange_ts_ns == 1696613755440295000
    # A wrong checksum resyncs that pair alone: unsubscribe, then subscribe.
    session.sent.clear()
    kraken.receive(UPDATE.replace("66975070", "66975071"), 4)
    assert stats.checksums_failed == 1 and book.state is BookState.RESYNCING
    assert [orjson.loads(s)["method"] for s in session.sent] == ["unsubscribe", "subscribe"]
    # Updates before the new snapshot are dropped; the snapshot brings it back.
    kraken.receive(UPDATE, 5)
    assert book.state is BookState.RESYNCING and stats.dropped_stale == 1
    kraken.receive(SNAPSHOT, 6)
    assert book.state is BookState.LIVE


def test_kraken_frames_that_cannot_be_used_are_counted_and_resync_only_their_pair() -> None:
    """Kraken has no sequence numbers: an update for a pair that cannot be used is an update
    that book missed and that no later message would reveal (its checksum covers only the
    top 10), so that pair resyncs. Frames that name no pair of ours leave every book be."""
    kraken, session = venue("kraken-v1", ("BTC-USD", "ETH-USD"), depth=10)
    for pair in ("XBT/USD", "ETH/USD"):
        kraken.receive(
            f'[1,{{"as":[["100.0","1.0","1.0"]],"bs":[["99.0","1.0","1.0"]]}},"book-10","{pair}"]',
            1,
        )
    btc, eth = kraken.books["BTC-USD"], kraken.books["ETH-USD"]
    assert btc.state is eth.state is BookState.LIVE
    for bad in (
        '[1,{"a":[["101.0","1.0","1.0"]],"c":"1"},"book-10","XBT/EUR"]',
        '[1,{"a":[["101.0","1.0"',
        '{"errorMessage":"Currency pair not supported","event":"subscriptionStatus",'
        '"pair":"XBT/USDX","status":"error"}',
    ):
        kraken.receive(bad, 2)
    assert btc.asks.prices(5) == [100.0] and eth.asks.prices(5) == [100.0]
    assert btc.state is eth.state is BookState.LIVE and not session.sent
    kraken.receive('[1,{"a":[["NaN","1.0","1.0"]],"c":"1"},"book-10","XBT/USD"]', 3)
    assert btc.state is BookState.RESYNCING and eth.state is BookState.LIVE
    assert [(m["event"], m["pair"]) for m in map(orjson.loads, session.sent)] == [
        ("unsubscribe", ["XBT/USD"]),
        ("subscribe", ["XBT/USD"]),
    ]
    kraken.receive('[1,{"a":[["101.0","1.0","1.0"]],"c":"x"},"book-10","ETH/USD"]', 4)
    assert eth.state is BookState.RESYNCING and eth.asks.prices(5) == []
    assert dict(kraken.venue_stats.skipped) == {
        "bad_level": 1,
        "malformed": 1,
        "unknown_symbol": 1,
        "bad_json": 1,
        "venue_error": 1,
    }
    assert dict(kraken.venue_stats.resyncs) == {"unusable_update": 2}


# --- OKX sequence chain (4.4) ----------------------------------------------------------------


def _okx_frame(action: str, prev: int, seq: int, bids: list[list[str]] | None = None) -> str:
    return orjson.dumps(
        {
            "arg": {"channel": "books", "instId": "BTC-USDT"},
            "action": action,
            "data": [
                {
                    "asks": [["101", "1", "0", "1"]] if action == "snapshot" else [],
                    "bids": bids if bids is not None else [],
                    "ts": "1597026383085",
                    "checksum": 0,
                    "prevSeqId": prev,
                    "seqId": seq,
                }
            ],
        }
    ).decode()


def test_okx_sequence_chain_with_heartbeat_and_reset_then_a_gap() -> None:
    okx, session = venue("okx-v5", ("BTC-USDT",), depth=400)
    book = okx.books["BTC-USDT"]
    stats = okx.stats["BTC-USDT"]
    # The docs' example: -1->10, 10->15, 15->15 (heartbeat), 15->3 (reset), 3->5.
    okx.receive(_okx_frame("snapshot", -1, 10, [["100", "1", "0", "1"]]), 1)
    okx.receive(_okx_frame("update", 10, 15, [["99", "2", "0", "1"]]), 2)
    okx.receive(_okx_frame("update", 15, 15), 3)
    okx.receive(_okx_frame("update", 15, 3, [["99", "0", "0", "0"]]), 4)
    okx.receive(_okx_frame("update", 3, 5, [["98", "1", "0", "1"]]), 5)
    assert (stats.sequence_checked, stats.sequence_gaps) == (4, 0)
    assert stats.checksums_checked == 0  # checksum 0 means "not provided"
    assert book.state is BookState.LIVE and book.venue_seq == 5
    assert book.bids.prices(5) == [100.0, 98.0]
    okx.receive(_okx_frame("update", 6, 7, [["97", "1", "0", "1"]]), 6)
    assert stats.sequence_gaps == 1 and book.state is BookState.RESYNCING
    assert [orjson.loads(s)["op"] for s in session.sent] == ["unsubscribe", "subscribe"]
    assert book.bids.prices(5) == []


def test_okx_ping_pong_and_upgrade_notice() -> None:
    okx, session = venue("okx-v5", ("BTC-USDT",), depth=400)
    assert okx.keepalive_frame() == "ping" and okx.keepalive_interval_s < 30
    okx.receive("pong", 1)
    okx.receive('{"event":"notice","code":"64008","msg":"upgrade","connId":"a"}', 2)
    assert session.reconnects and not okx.venue_stats.skipped


# --- the replay scorecard on the four shared captures -----------------------------------------


@pytest.mark.parametrize(
    ("capture", "protocol", "book_frames", "checked"),
    [
        ("KRAKEN", "kraken-v1", 4279, 4269),
        ("OKX", "okx-v5", 290, 290),
        ("BINANCE", "binance", 177, 0),
        ("COINBASE", "coinbase-advanced", 775, 0),
    ],
)
def test_replay_json(
    data_dir: Path, tmp_path: Path, capture: str, protocol: str, book_frames: int, checked: int
) -> None:
    trace = tmp_path / "trace.jsonl"
    out = CliRunner().invoke(
        main, ["replay", str(data_dir / f"{capture}.jsonl.gz"), "--json", "--trace", str(trace)]
    )
    assert out.exit_code == 0, out.output
    card = json.loads(out.stdout)
    assert set(card) == {
        "capture",
        "protocol",
        "frames",
        "book_frames",
        "book_core",
        "seconds",
        "us_per_book_frame",
        "connection_sequence",
        "totals",
        "instruments",
        "errors",
        "ignored",  # issue 18: frames of channels no venue module uses, by channel
        "connections",  # issue 18: each recorded connection and its protocol
    }
    assert card["capture"] == f"{capture}.jsonl.gz"
    assert (card["protocol"], card["book_frames"], card["errors"]) == (protocol, book_frames, [])
    assert card["us_per_book_frame"] > 0 and card["book_core"] == "compiled"
    insts = card["instruments"].values()
    assert sum(i["checksums"]["checked"] for i in insts) == checked
    assert sum(i["checksums"]["failed"] for i in insts) == 0
    assert sum(i["sequence"]["gaps"] for i in insts) == 0
    for inst in insts:
        assert set(inst) == {
            "venue",  # issue 18: a capture may hold several venues
            "venue_symbol",
            "messages",
            "snapshots",
            "updates",
            "dropped_stale",
            "checksums",
            "sequence",
            "audit",
            "resyncs",
            "restarts",
            "crossed",
            "skipped",
            "state",
            "levels",
            "top",
        }
        assert inst["state"] == "LIVE"
        assert len(inst["top"]["bids"]) == 10 or inst["top"]["bids"]
        bids = [p for p, _ in inst["top"]["bids"]]
        asks = [p for p, _ in inst["top"]["asks"]]
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(lines) == sum(i["messages"] for i in insts)
    assert set(lines[0]) == {
        "venue",  # issue 18: a capture may hold several venues
        "instrument",
        "venue_seq",
        "cross_seq",
        "exchange_ts_ns",
        "recv_ts_ns",
        "bid",
        "ask",
        "checksum_ok",
        "state",
    }
    assert sum(1 for x in lines if x["checksum_ok"] is True) == checked
    assert not any(x["checksum_ok"] is False for x in lines)
    live = [x for x in lines if x["state"] == "LIVE"]
    assert live and all(x["venue_seq"] is not None for x in live)
    if capture in ("KRAKEN", "OKX"):
        # No sequence in these captures: a book is named by the checksum it matched.
        assert all(0 <= x["venue_seq"] < 2**32 for x in live)


def test_replay_reports_a_venue_without_a_module_as_unsupported(tmp_path: Path) -> None:
    capture = tmp_path / "DERIBIT.jsonl"
    capture.write_text(
        '{"t":"header","exchange":"DERIBIT","config":{"l2_book":["BTC-PERPETUAL"]}}\n'
        '{"t":"connect","conn":"d.ws.1","ts":1.0,"addr":"wss://www.deribit.com/ws/api/v2"}\n'
        '{"t":"recv","conn":"d.ws.1","ts":1.1,"data":"{}"}\n'
    )
    out = CliRunner().invoke(main, ["replay", str(capture), "--json"])
    assert out.exit_code == 2
    card = json.loads(out.stdout)
    assert card["protocol"] is None and card["instruments"] == {} and card["totals"] is None
    assert card["errors"] == [
        "unsupported protocol: no venue module for exchange DERIBIT at "
        f"wss://www.deribit.com/ws/api/v2 (supported: {', '.join(sorted(PROTOCOLS))}; "
        "name one with --protocol NAME)"
    ]
    assert [(c["conn"], c["protocol"]) for c in card["connections"]] == [("d.ws.1", None)]
    text = CliRunner().invoke(main, ["replay", str(capture)])
    assert text.exit_code == 2 and "unsupported protocol" in text.stdout


def test_okx_frames_that_cannot_be_used_are_counted_and_resync_only_what_they_touched() -> None:
    okx, session = venue("okx-v5", ("BTC-USDT",), depth=400)
    okx.receive(_okx_frame("snapshot", -1, 10, [["100", "1", "0", "1"]]), 1)
    book = okx.books["BTC-USDT"]
    before = (book.bids.prices(5), book.asks.prices(5))
    update = orjson.loads(_okx_frame("update", 10, 11, [["99", "1", "0", "1"]]))

    def variant(**data: object) -> str:
        msg = orjson.loads(orjson.dumps(update))
        msg["data"][0].update(data)
        return orjson.dumps(msg).decode()

    # Frames that name no book of ours: the book stays, and its chain goes on from 10.
    for bad in (
        _okx_frame("update", 10, 11).replace("BTC-USDT", "ETH-USDT"),
        _okx_frame("update", 10, 11)[:40],
        '{"event":"error","code":"60012","msg":"Invalid request"}',
    ):
        okx.receive(bad, 2)
    assert (book.bids.prices(5), book.asks.prices(5)) == before
    assert book.state is BookState.LIVE and book.venue_seq == 10 and not session.sent
    okx.receive(variant(), 3)
    assert book.bids.prices(5) == [100.0, 99.0] and book.venue_seq == 11
    # An update of BTC-USDT that cannot be used: that book missed it, and resyncs at once.
    for n, bad in enumerate(
        (
            variant(bids=[["99", "1", "0", "1"], ["NaN", "1", "0", "1"]]),
            variant(bids=[["99", 1, "0", "1"]]),
            variant(checksum="123"),
            variant(seqId="11"),
        )
    ):
        okx.receive(_okx_frame("snapshot", -1, 20, [["100", "1", "0", "1"]]), 4)
        assert book.state is BookState.LIVE
        okx.receive(bad, 5)
        assert book.state is BookState.RESYNCING and book.bids.prices(5) == []
        assert okx.venue_stats.resyncs["unusable_update"] == n + 1
    assert dict(okx.venue_stats.skipped) == {
        "bad_level": 2,
        "malformed": 2,
        "unknown_symbol": 1,
        "bad_json": 1,
        "venue_error": 1,
    }
    assert [orjson.loads(s)["op"] for s in session.sent] == ["unsubscribe", "subscribe"] * 4


@pytest.mark.parametrize("protocol", ["kraken-v1", "kraken-v2"])
def test_a_kraken_book_is_named_by_the_checksum_it_matched(protocol: str) -> None:
    """Kraken sends no sequence: a book's `venue_seq` (what a Price's `venues_used` names)
    is the CRC32 of the top 10 the venue sent and the book matched; for a v1 snapshot,
    which carries none, the checksum of the book as loaded. Every top published carries
    the checksum of exactly the book it shows."""
    from tests.conformance.conftest import kit_of, live_books

    kit = kit_of(protocol)
    inst = kit.instruments[0]
    bids = [(f"{100 - i}.00", "1.00000000") for i in range(12)]
    asks = [(f"{101 + i}.00", "2.00000000") for i in range(12)]
    driver, session = live_books(kit, {inst: (bids, asks)})
    book = driver.books[inst]
    assert book.state is BookState.LIVE
    assert book.venue_seq == kit.checksum(inst) == session.tops[-1].venue_seq
    driver.receive(kit.update([(inst, [("100.00", "3.00000000")], [])]), 3)
    assert book.venue_seq == kit.checksum(inst) == session.tops[-1].venue_seq
    assert session.tops[-1].bid_sizes[0] == 3.0
    # A level below the top 10 changes nothing the checksum covers: the same name.
    driver.receive(kit.update([(inst, [("89.00", "4.00000000")], [])]), 4)
    assert session.tops[-1].venue_seq == session.tops[-2].venue_seq
