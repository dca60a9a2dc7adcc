"""Binance futures on the compiled path against the pure-Python reference (issue 14).

With the compiled core, a USDⓈ-M or COIN-M `depthUpdate` frame is read from its text by the
core's scanner (the shape `binance_futures.BinanceFutures.frame_shape` declares), a delta
whose `pu` is the book's `u` is chained in C (`_core.FramePath`, instead of
`RestSnapshotChain.delta`) and a COIN-M top is turned into base units in C (instead of
`ContractSize.to_base`). Here both cores must agree:
- frame by frame: every frame of the futures capture, the same frames written otherwise
  (reordered keys, spaces) and damaged (an escape, a key twice, ids out of int64, truncated,
  a byte changed), and generated frames: the same event or the same refusal;
- over whole sequences of frames with generated ids (events before the snapshot, stale
  ones, bridging ones, a broken `pu` chain, ids of the wrong type): the same tops, books,
  counters and resyncs;
- and the compiled path is the one taken for the usual frame (a path that always handed its
  work back would pass the above and be as slow as before).
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmengine.book.events import ContractSize
from mmengine.book.integrity import RestSnapshotChain
from mmengine.book.sync import BookDriver
from mmengine.capture import read_capture
from mmengine.replay import plan_venues
from mmengine.venues.base import VenueSpec
from mmengine.venues.registry import PROTOCOLS, open_venue
from tests.unit.test_frame_path import (
    CAPTURES,
    DECIMAL,
    ROW,
    _outcome,
    _parse,
    _replay,
    _variants,
    _venues,
)
from tests.venue_session import RecordingSession

FUTURES = [c for c in CAPTURES if c.path.name == "BINANCE_FUTURES.jsonl.gz"]
IDS = [c.venue_name or "" for c in FUTURES]
INSTRUMENTS = {"binance-usdm": "BTC-USDT-PERP", "binance-coinm": "BTC-USD-PERP"}
SYMBOLS = {"binance-usdm": "BTCUSDT", "binance-coinm": "BTCUSD_PERP"}


def test_there_is_a_capture_of_each_futures_venue() -> None:
    assert sorted(c.venue_name or "" for c in FUTURES) == ["binance-coinm", "binance-usdm"]


def _depth_frames(capture: Any) -> int:
    _, events = read_capture(capture.path)
    conn = f"venue-{capture.venue_name}"
    return sum(
        1
        for e in events
        if e.kind == "recv" and e.conn == conn and '"e":"depthUpdate"' in (e.data or "")
    )


@pytest.mark.parametrize("capture", FUTURES, ids=IDS)
def test_the_usual_futures_frame_takes_the_compiled_path(
    capture: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"delta": 0, "emit": 0, "to_base": 0}

    def counted(name: str, own: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return own(*args, **kwargs)

        return call

    monkeypatch.setattr(RestSnapshotChain, "delta", counted("delta", RestSnapshotChain.delta))
    monkeypatch.setattr(BookDriver, "emit", counted("emit", BookDriver.emit))
    monkeypatch.setattr(ContractSize, "to_base", counted("to_base", ContractSize.to_base))
    header, events = read_capture(capture.path)
    result = _replay(header, events, capture.venue_name, "compiled")
    venue = result.venue
    scanner = venue._parse
    assert type(scanner).__name__ == "FrameScanner"
    # every depthUpdate frame is read from its text (tickers are handed on)...
    assert scanner.scanned == _depth_frames(capture) > 300
    checked = sum(s.sequence_checked for s in venue.stats.values())
    assert checked > 300 and sum(s.sequence_gaps for s in venue.stats.values()) == 0
    # ...its chain checked in C (the rule sees the first event after each snapshot only)...
    assert calls["delta"] <= len(venue.stats), calls
    # ...and its top published from C (the driver emits when each book goes LIVE).
    assert calls["emit"] <= len(venue.stats) and calls["to_base"] <= len(venue.stats), calls
    assert result.session.published > 300


@pytest.mark.parametrize("capture", FUTURES, ids=IDS)
def test_the_scanner_reads_every_futures_frame_as_the_venue_parse_does(capture: Any) -> None:
    """Every frame of the capture, and texts near each depth frame (`test_frame_path`'s
    variants, and ids out of int64, a key twice, the wrapper's keys reordered): the same
    event or the same refusal as the reference core's venue."""
    header, events = read_capture(capture.path)
    plans, _ = plan_venues(header, events, True, 1000, capture.venue_name, None)
    ref, got = _venues(plans[0])
    scanner = got.parse
    rng = random.Random(capture.path.name + (capture.venue_name or ""))
    read: dict[str, list[int]] = {}
    for e in sorted((e for e in plans[0].events if e.kind == "recv"), key=lambda e: e.ts):
        before = scanner.scanned
        assert _parse(got, e.data) == _parse(ref, e.data), e.data
        if scanner.scanned == before:
            continue
        for label, text in (_variants(e.data, got.book_start, rng) | _futures(e.data)).items():
            before = scanner.scanned
            assert _parse(got, text) == _parse(ref, text), (label, text)
            read.setdefault(label, []).append(scanner.scanned - before)
    assert scanner.scanned > 300
    for label in ("spaced", "trailing newline", "reordered", "extra key"):
        assert all(read[label]), f"{label}: not read by the scanner"
    # (a frame that does not begin as Binance writes it, `data first`, is handed on at once)
    for label in ("truncated", "escaped", "leading space", "pu twice", "u out of int64"):
        assert not any(read[label]), f"{label}: read by the scanner"
    for label in ("pu out of int64", "E out of int64", "U negative", "no E", "data first"):
        assert not any(read[label]), f"{label}: read by the scanner"


def _futures(frame: str) -> dict[str, str]:
    """A depth frame with its ids and wrapper changed in ways only a futures frame has."""
    msg = orjson.loads(frame)
    data = msg["data"]

    def with_data(**change: Any) -> str:
        new = {k: v for k, v in data.items() if k not in change or change[k] is not None}
        new.update({k: v for k, v in change.items() if v is not None})
        return orjson.dumps({"stream": msg["stream"], "data": new}).decode()

    def without(key: str) -> str:
        return orjson.dumps(
            {"stream": msg["stream"], "data": {k: v for k, v in data.items() if k != key}}
        ).decode()

    big = 2**63
    return {
        "data first": orjson.dumps({"data": data, "stream": msg["stream"]}).decode(),
        "no stream": orjson.dumps({"data": data}).decode(),
        "extra key": frame[:-1] + ',"x":[1,{"y":null}]}',
        "pu twice": frame.replace('"pu":', '"pu":1,"pu":', 1),
        "u out of int64": frame.replace(f'"u":{data["u"]}', f'"u":{big + data["u"]}', 1),
        "pu out of int64": frame.replace(f'"pu":{data["pu"]}', f'"pu":{big * 4}', 1),
        "E out of int64": with_data(E=big),
        "U negative": with_data(U=-data["U"]),
        "u as string": with_data(u=str(data["u"])),
        "pu as float": with_data(pu=float(data["pu"])),
        "pu null": frame.replace(f'"pu":{data["pu"]}', '"pu":null', 1),
        "no E": without("E"),
        "no pu": without("pu"),
        "no b": without("b"),
        "no s": without("s"),
        "another symbol": with_data(s="XRPUSDT"),
        "a ticker": with_data(e="bookTicker"),
        "no e": without("e"),
        "a snapshot kind": with_data(e="snapshot"),
        "data a list": orjson.dumps({"stream": msg["stream"], "data": [data]}).decode(),
    }


# --- frame by frame, generated values ----------------------------------------------------------

INT = st.one_of(
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=-5, max_value=2**66),
    st.sampled_from([None, True, 1.5, "7", 2**63 - 1, 2**63, 10**18, 10**18 - 1]),
)
OURS = "ours"
CLEAN = st.decimals(min_value=0, max_value=10**6, places=8).map(lambda d: f"{d:f}")
LEVELS = st.one_of(
    st.lists(st.tuples(CLEAN, CLEAN).map(list), max_size=3),
    st.lists(st.one_of(st.tuples(DECIMAL, DECIMAL).map(list), ROW), max_size=3),
)
SCANNED = {"read": 0, "all": 0}  # how many generated frames the scanner read
ABSENT = "absent"


# The usual frame with clean values, or one part (or more) of it drawn from the wild.
WILD = {
    "kind": st.sampled_from(["bookTicker", "other", ABSENT]),
    "symbol": st.sampled_from(["BTCUSDT", "BTCUSD_PERP", "ETHUSDT", 7, ABSENT]),
    "bids": st.one_of(LEVELS, st.sampled_from([ABSENT, None, "x"])),
    "asks": LEVELS,
    "ids": st.tuples(*(st.one_of(INT, st.just(ABSENT)) for _ in range(4))),
}


@settings(max_examples=500, deadline=None)
@given(
    protocol=st.sampled_from(sorted(INSTRUMENTS)),
    wild=st.one_of(st.just(()), st.lists(st.sampled_from(sorted(WILD)), max_size=3)),
    clean_bids=st.lists(st.tuples(CLEAN, CLEAN).map(list), max_size=3),
    clean_asks=st.lists(st.tuples(CLEAN, CLEAN).map(list), max_size=3),
    clean_ids=st.tuples(*(st.integers(min_value=0, max_value=2**50) for _ in range(4))),
    draw=st.data(),
    order=st.randoms(use_true_random=False),
    spaced=st.booleans(),
)
def test_futures_frames_parse_the_same(
    protocol: str,
    wild: list[str],
    clean_bids: Any,
    clean_asks: Any,
    clean_ids: Any,
    draw: Any,
    order: random.Random,
    spaced: bool,
) -> None:
    parts = {
        "kind": "depthUpdate",
        "symbol": SYMBOLS[protocol],
        "bids": clean_bids,
        "asks": clean_asks,
        "ids": clean_ids,
    }
    for name in wild:
        parts[name] = draw.draw(WILD[name], label=name)
    data: dict[str, Any] = {
        "e": parts["kind"],
        "s": parts["symbol"],
        "b": parts["bids"],
        "a": parts["asks"],
        "T": 5,
        "ps": "BTCUSD",
    }
    data.update(zip(("U", "u", "pu", "E"), parts["ids"], strict=True))
    items = [(k, v) for k, v in data.items() if v != ABSENT]
    order.shuffle(items)
    msg = {"stream": "btcusdt@depth@100ms", "data": dict(items)}
    ref = PROTOCOLS[protocol](
        VenueSpec("v", protocol, (INSTRUMENTS[protocol],), book_core="python")
    )
    got = PROTOCOLS[protocol](
        VenueSpec("v", protocol, (INSTRUMENTS[protocol],), book_core="compiled")
    )
    # (json, not orjson: ids beyond 64 bits are written as the venue would write them; spaced
    # but its beginning, which the scanner looks for)
    frame = json.dumps(msg, separators=(", ", ": ") if spaced else (",", ":"))
    frame = frame.replace('{"stream": "', '{"stream":"', 1)
    assert _parse(got, frame) == _parse(ref, frame), frame
    SCANNED["read"] += got.parse.scanned
    SCANNED["all"] += 1


def test_the_generated_futures_frames_were_read_by_the_scanner_often() -> None:
    """(after the test above, in this module's order) a generator that never made a usual
    frame would test only the hand-on"""
    if SCANNED["all"] < 100:
        pytest.skip("the generated frames' test did not run first")
    assert SCANNED["read"] > SCANNED["all"] / 4, SCANNED


# --- whole sequences: the `pu` chain, the snapshot, COIN-M sizes -------------------------------


def _snapshot(last_id: int) -> str:
    book = {"bids": [["100.0", "1"], ["99.0", "2"]], "asks": [["101.0", "1"], ["102.0", "2"]]}
    return orjson.dumps({"lastUpdateId": last_id, "E": 1, "T": 1, **book}).decode()


INFO = orjson.dumps(
    {"symbols": [{"symbol": "BTCUSD_PERP", "pair": "BTCUSD", "contractSize": 100}]}
).decode()

# A step: an event, the snapshot answered (its id near the last event's), or a ticker. An
# event chains on the last one (`pu` its `u`, ids may jump), or breaks the chain, or carries
# an id of another type, or is an old one again; its level is mostly deep in the book, so
# the best levels (which the tickers name, agreeing or not) are the snapshot's for a while.
EVENT = st.tuples(
    st.sampled_from(["chain"] * 6 + ["broken", "odd", "old"]),
    st.integers(0, 2),  # U beyond the last u + 1
    st.integers(0, 3),  # u beyond U
    st.sampled_from(["90.0", "110.0"] * 3 + ["100.5", "99.5", "101.5", "100.0", "101.0"]),
    st.sampled_from(["0", "1", "2.5"]),
    st.booleans(),
)
TICKER = st.tuples(
    st.just("ticker"),
    st.integers(-1, 3),  # its u beyond the last event's
    st.sampled_from(["100.0", "100.0", "100.5"]),
    st.sampled_from(["1", "1", "2.5"]),
    st.sampled_from(["101.0", "101.0", "100.5"]),
    st.sampled_from(["1", "1", "2"]),
)
ANSWER = st.tuples(st.just("answer"), st.integers(-1, 3))  # the snapshot's id this far back
STEP = st.one_of(EVENT, EVENT, EVENT, TICKER, ANSWER)


def _drive(protocol: str, core: str, steps: list[Any], snapshot_id: int) -> dict[str, Any]:
    instrument = INSTRUMENTS[protocol]
    symbol = SYMBOLS[protocol]
    rest = {f"symbol={symbol}&": _snapshot(snapshot_id), "/exchangeInfo": INFO}
    session = RecordingSession(rest, hold=True)
    spec = VenueSpec("v", protocol, (instrument,), depth=100, audit=True, book_core=core)
    driver = open_venue(spec, session)
    driver.on_connected()
    session.answer_all()  # COIN-M's contract sizes
    driver.poll_fetches(0)
    last = snapshot_id  # the id the generated events are written around
    for n, step in enumerate(steps, 1):
        if step[0] == "answer":
            session.rest[f"symbol={symbol}&"] = _snapshot(last - step[1])
            session.answer_all()
            driver.poll_fetches(n)
            continue
        if step[0] == "ticker":
            _, ahead, bid_price, bid_size, ask_price, ask_size = step
            quote = {"e": "bookTicker", "u": last + ahead, "E": n, "T": n, "s": symbol}
            quote |= {"b": bid_price, "B": bid_size, "a": ask_price, "A": ask_size}
            driver.receive(orjson.dumps({"stream": "t", "data": quote}).decode(), n)
            continue
        how, jump, span, price, size, bid = step
        first = last + 1 + jump
        prev: Any = last
        if how == "broken":
            prev = last - 1 - jump
        elif how == "odd":
            prev = [None, "x", 1.5][jump]
        elif how == "old":
            first, prev = last - 3, last - 4
        u = first + span
        data = {
            "e": "depthUpdate",
            "E": n,
            "T": n,
            "s": symbol,
            "U": first,
            "u": u,
            "pu": prev,
            "b": [[price, size]] if bid else [],
            "a": [] if bid else [[price, size]],
        }
        driver.receive(orjson.dumps({"stream": "s", "data": data}).decode(), n)
        last = max(last, u)
    book = driver.books[instrument]
    vs = driver.venue_stats
    return {
        "tops": [t if t.state == "LIVE" else t._replace(recv_ts_ns=0) for t in session.tops],
        "venue": (vs.frames, vs.book_frames, dict(vs.skipped), dict(vs.resyncs)),
        "stats": driver.stats[instrument],
        "book": (book.state, book.venue_seq, book.bids.levels(99), book.asks.levels(99)),
        "requested": len(session.requested),
    }


@settings(max_examples=400, deadline=None)
@given(
    protocol=st.sampled_from(sorted(INSTRUMENTS)),
    steps=st.lists(STEP, min_size=3, max_size=30),
    snapshot_id=st.integers(1000, 1010),
)
def test_futures_sequences_give_the_same_books_on_both_cores(
    protocol: str, steps: list[Any], snapshot_id: int
) -> None:
    ref = _drive(protocol, "python", steps, snapshot_id)
    got = _drive(protocol, "compiled", steps, snapshot_id)
    assert got == ref


def test_a_broken_pu_chain_resyncs_on_the_compiled_path() -> None:
    """The capture with one event's `pu` moved off the chain: both cores see the gap, at the
    same event, and resync from a new snapshot (the same outcome, frame for frame)."""
    capture = next(c for c in FUTURES if c.venue_name == "binance-usdm")
    header, events = read_capture(capture.path)
    depth = [
        i
        for i, e in enumerate(events)
        if e.kind == "recv" and e.conn == "venue-binance-usdm" and '"depthUpdate"' in e.data
    ]
    at = depth[len(depth) // 2]
    msg = orjson.loads(events[at].data)
    msg["data"]["pu"] -= 1
    events = list(events)
    events[at] = dataclasses.replace(events[at], data=orjson.dumps(msg).decode())
    ref = _outcome(_replay(header, events, capture.venue_name, "python"))
    got = _outcome(_replay(header, events, capture.venue_name, "compiled"))
    assert got == ref
    assert sum(s["sequence_gaps"] for s in got["stats"].values()) == 1
    assert got["venue"][3] == {"gap": 1}


def test_waiting_tickers_are_audited_on_the_compiled_path_as_by_the_driver() -> None:
    """Two tickers wait for update id 1002: the first agrees with the book there, the second
    names another size. The event reaching 1002 is chained in C, which counts the first and
    hands the second to the driver's audit: a disagreement, and a resync, on both cores."""
    steps = [
        ("chain", 0, 0, "90.0", "1", True),  # 1001, buffered
        ("answer", 0),  # the snapshot at 1001: the buffered event bridges it
        ("ticker", 1, "100.0", "1", "101.0", "1"),
        ("ticker", 1, "100.0", "2.5", "101.0", "1"),
        ("chain", 0, 0, "110.0", "3", False),  # 1002
    ]
    for protocol in INSTRUMENTS:
        ref = _drive(protocol, "python", steps, 1000)
        got = _drive(protocol, "compiled", steps, 1000)
        assert got == ref
        stats = got["stats"]
        assert (stats.audit_agree, stats.audit_disagree, stats.resyncs) == (1, 1, 1)
