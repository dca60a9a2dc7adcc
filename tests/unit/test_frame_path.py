"""The compiled per-frame path against the pure-Python reference (issue 14, small frames).

With the compiled book core, `BookDriver.receive` / `on_book` run in C (`_core.FramePath`)
and the Kraken v1, Kraken v2 and Bybit modules decode their usual book frame with msgspec
and one core call (`LevelDecoder.kraken_update`, ...); the reference core runs the driver's
Python methods and the venue modules' own decoding. Here both must agree:
- on every capture, with a share of its frames damaged (truncated, a field of the wrong
  type, an unknown symbol, a key removed, a checksum or an id changed, a frame left out):
  the same BookTops, books, per-instrument counters, venue counters, skips and resyncs;
- frame by frame, in each venue's shape with generated values (odd timestamps, checksums,
  numbers, ids): the same event, or the same refusal;
- the compiled path is taken for the usual frame (a fast path that always handed its work
  to the reference would pass every test above and be as slow as before).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmengine.book.core import ENV
from mmengine.book.events import BookUpdate
from mmengine.book.levels import checksum_form
from mmengine.book.sync import BookDriver
from mmengine.capture import CaptureEvent, read_capture
from mmengine.errors import FrameError
from mmengine.replay import CaptureSession, plan_venues, replay_events
from mmengine.venues.base import VenueSpec
from mmengine.venues.registry import PROTOCOLS
from tests.conformance.conftest import captures
from tests.conformance.test_fuzz import mutate

CAPTURES = [c for found in captures().values() for c in found]
DAMAGED_SHARE = 0.02  # of the frames of a capture


def _damaged(events: list[CaptureEvent], seed: str) -> list[CaptureEvent]:
    """The capture with a share of its received frames damaged or left out."""
    rng = random.Random(seed)
    out = []
    for e in events:
        if e.kind != "recv" or rng.random() >= DAMAGED_SHARE:
            out.append(e)
            continue
        kind = rng.randrange(4)
        if kind == 0:
            continue  # lost: the integrity rule must see it
        if kind == 1:  # a checksum or an id one off
            doc = e.data
            for key in ('"c":"', '"checksum":', '"u":', '"seqId":', '"sequence_num":'):
                at = doc.find(key)
                if at >= 0:
                    at += len(key)
                    digit = doc[at]
                    if digit.isdigit():
                        doc = doc[:at] + str((int(digit) + 1) % 10) + doc[at + 1 :]
                    break
            out.append(dataclasses.replace(e, data=doc))
            continue
        try:
            orjson.loads(e.data)
        except orjson.JSONDecodeError:
            out.append(e)
            continue
        frame, _, _ = mutate(e.data, rng, ["XBT/USD", "BTC/USD", "BTCUSDT", "ETHUSDT"])
        out.append(dataclasses.replace(e, data=frame))
    return out


def _replay(
    header: dict[str, Any], events: list[CaptureEvent], venue_name: str | None, core: str
) -> Any:
    previous = os.environ.get(ENV)
    os.environ[ENV] = core
    try:
        result = replay_events(header, events, keep_tops=True, venue_name=venue_name)
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
    assert result.venue.core.name == core
    return result


def _outcome(result: Any) -> dict[str, Any]:
    venue = result.venue
    vs = venue.venue_stats
    # A book that leaves LIVE is stamped with the wall clock (`set_state`): not compared.
    tops = [t if t.state == "LIVE" else t._replace(recv_ts_ns=0) for t in result.session.tops]
    return {
        "tops": tops,
        "venue": (vs.frames, vs.book_frames, dict(vs.skipped), dict(vs.resyncs), dict(vs.ignored)),
        "stats": {i: dataclasses.asdict(s) for i, s in venue.stats.items()},
        "books": {
            i: (
                b.state,
                b.venue_seq,
                b.cross_seq,
                b.exchange_ts_ns,
                b.recv_ts_ns if b.state.value == "LIVE" else 0,
                b.bids.levels(10**6),
                b.asks.levels(10**6),
            )
            for i, b in venue.books.items()
        },
    }


@pytest.mark.parametrize(
    "capture", CAPTURES, ids=[f"{c.path.name}:{c.venue_name or ''}" for c in CAPTURES]
)
def test_both_paths_agree_on_every_capture_clean_and_damaged(capture: Any) -> None:
    header, events = read_capture(capture.path)
    for label, run in (("clean", events), ("damaged", _damaged(events, capture.path.name))):
        ref = _outcome(_replay(header, run, capture.venue_name, "python"))
        got = _outcome(_replay(header, run, capture.venue_name, "compiled"))
        for key in ref:
            assert got[key] == ref[key], f"{label}: {key} differ"
        if label == "damaged":
            # the damage was seen: something was refused or resynced
            skipped, resyncs = ref["venue"][2], ref["venue"][3]
            assert skipped or resyncs, "no damage was noticed"


# --- the compiled path is the one taken ---------------------------------------------------------


def _counting(own: Any, handed: dict[str, int]) -> Any:
    def counted_parse(self: Any, msg: Any) -> Any:
        handed["parse"] += 1
        return own(self, msg)

    return counted_parse


FAST = ["KRAKEN.jsonl.gz", "KRAKEN_V2.jsonl.gz", "BYBIT.jsonl.gz"]


@pytest.mark.parametrize(
    "capture",
    [c for c in CAPTURES if c.path.name in FAST],
    ids=[f"{c.path.name}:{c.venue_name or ''}" for c in CAPTURES if c.path.name in FAST],
)
def test_the_usual_book_frame_takes_the_compiled_path(
    capture: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: dict[str, int] = {"on_book": 0, "parse": 0}
    reference_on_book = BookDriver.on_book

    def counted_on_book(self: BookDriver, ev: BookUpdate, recv_ns: int) -> None:
        handed["on_book"] += 1
        reference_on_book(self, ev, recv_ns)

    monkeypatch.setattr(BookDriver, "on_book", counted_on_book)
    owners = {k for cls in PROTOCOLS.values() for k in cls.__mro__ if "_parse_message" in vars(k)}
    for owner in owners:
        monkeypatch.setattr(
            owner, "_parse_message", _counting(vars(owner)["_parse_message"], handed)
        )
    header, events = read_capture(capture.path)
    result = _replay(header, events, capture.venue_name, "compiled")
    venue = result.venue
    book_frames = venue.venue_stats.book_frames
    snapshots = sum(s.snapshots for s in venue.stats.values())
    assert book_frames > 400
    # Only snapshots (and what the rules do around them) go to the Python driver...
    assert handed["on_book"] <= 2 * snapshots + 2, handed
    # ...and the venue module's own decoding sees the control frames, not book updates.
    assert handed["parse"] <= venue.venue_stats.frames - book_frames + snapshots, handed


# --- frame by frame, generated values in each venue's shape --------------------------------------


def _venue(protocol: str, core: str, instruments: tuple[str, ...]) -> Any:
    spec = VenueSpec(name="v", protocol=protocol, instruments=instruments, book_core=core)
    return PROTOCOLS[protocol](spec)


def _view(ev: Any) -> Any:
    """An event as comparable values (levels as floats, with their checksum forms)."""
    if isinstance(ev, list):
        return [_view(e) for e in ev]
    if type(ev) is not BookUpdate:
        return (type(ev).__name__, {k: getattr(ev, k) for k in type(ev).__slots__})

    def side(levels: Any) -> list[Any]:
        if hasattr(levels, "pairs"):  # compiled Levels: the strings it keeps as sent
            texts = levels.texts() or [(None, None)] * len(levels)
            return [
                (p, q, *(checksum_form(t) if t is not None else None for t in text))
                for (p, q), text in zip(levels.pairs(), texts, strict=True)
            ]
        return [(lv[0], lv[1], *(lv[2:] or (None, None))) for lv in levels]

    return (
        ev.instrument,
        ev.snapshot,
        side(ev.bids),
        side(ev.asks),
        ev.last_id,
        ev.first_id,
        ev.cross_seq,
        ev.ts_ns,
        ev.checksum,
        ev.prev_id,
    )


def _parse(venue: Any, frame: str) -> Any:
    try:
        return _view(venue.parse(frame))
    except FrameError as exc:
        return ("FrameError", exc.kind, tuple(getattr(exc, "lost", ())))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return ("error", type(exc).__name__)


def _both(protocol: str, instruments: tuple[str, ...], prepare: list[str], frame: str) -> None:
    ref = _venue(protocol, "python", instruments)
    got = _venue(protocol, "compiled", instruments)
    for text in prepare:
        ref.parse(text)
        got.parse(text)
    assert _parse(got, frame) == _parse(ref, frame), frame


DECIMAL = st.one_of(
    st.decimals(min_value=0, max_value=10**6, places=8).map(lambda d: f"{d:f}"),
    st.sampled_from(["0", "1", "0.0", "1e3", " 1.5", "1_0", "nan", "-1", "", "٣"]),
)
ODD: st.SearchStrategy[Any] = st.sampled_from([None, 1, 1.5, True, "x", [], {}])
ROW = st.lists(st.one_of(DECIMAL, ODD), min_size=1, max_size=4)
TIME = st.one_of(
    st.floats(min_value=0, max_value=2e9, allow_nan=False).map(lambda t: f"{t:.6f}"),
    st.sampled_from(["1618678134.144286", "1e20", "-1", "abc", "0", "99999999999.5"]),
)


@settings(max_examples=400, deadline=None)
@given(
    side=st.sampled_from(["a", "b", "ab"]),
    rows=st.lists(st.one_of(st.tuples(DECIMAL, DECIMAL, TIME).map(list), ROW), max_size=3),
    checksum=st.one_of(
        st.integers(min_value=0, max_value=2**40).map(str), st.sampled_from(["", "-1", "1 ", "x"])
    ),
    pair=st.sampled_from(["XBT/USD", "ETH/USD", "ZZZ/USD"]),
    snapshot=st.booleans(),
)
def test_kraken_v1_frames_parse_the_same(
    side: str, rows: list[Any], checksum: str, pair: str, snapshot: bool
) -> None:
    if snapshot:
        body: dict[str, Any] = {"as": rows, "bs": rows[::-1]}
    else:
        body = {key: rows for key in side} | {"c": checksum}
    frame = orjson.dumps([42, body, "book-100", pair]).decode()  # (the venue's depth: 100)
    _both("kraken-v1", ("BTC-USD", "ETH-USD"), [], frame)


NUMBER = st.one_of(
    st.decimals(min_value=0, max_value=10**6, places=6).map(float),
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from([0.1 + 0.2, 1e-9, 123456789.123456789, -1.0, True, "1.5", None]),
)
STAMP = st.one_of(
    st.datetimes(
        min_value=datetime.datetime(1969, 1, 1),
        max_value=datetime.datetime(2300, 1, 1),
    ).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    st.sampled_from(
        [
            "2023-10-06T17:35:55.440295Z",
            "2023-10-06T17:35:55Z",
            "2023-02-30T17:35:55.440295Z",
            "2023-10-06T17:35:55.440295+00:00",
            "2023-10-06 17:35:55.440295Z",
            "",
            None,
            5,
        ]
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    bids=st.lists(st.fixed_dictionaries({"price": NUMBER, "qty": NUMBER}), max_size=3),
    asks=st.lists(st.fixed_dictionaries({"price": NUMBER, "qty": NUMBER}), max_size=3),
    checksum=st.one_of(st.none(), st.integers(min_value=0, max_value=2**32), st.just("1")),
    stamp=STAMP,
    kind=st.sampled_from(["update", "snapshot", "other"]),
    precisions=st.tuples(st.integers(0, 10), st.integers(0, 10)),
)
def test_kraken_v2_frames_parse_the_same(
    bids: Any, asks: Any, checksum: Any, stamp: Any, kind: str, precisions: Any
) -> None:
    instrument = orjson.dumps(
        {
            "channel": "instrument",
            "type": "snapshot",
            "data": {
                "pairs": [
                    {
                        "symbol": "BTC/USD",
                        "price_precision": precisions[0],
                        "qty_precision": precisions[1],
                    }
                ]
            },
        }
    ).decode()
    entry: dict[str, Any] = {"symbol": "BTC/USD", "bids": bids, "asks": asks}
    if checksum is not None:
        entry["checksum"] = checksum
    if stamp is not None:
        entry["timestamp"] = stamp
    frame = orjson.dumps({"channel": "book", "type": kind, "data": [entry]}).decode()
    _both("kraken-v2", ("BTC-USD",), [instrument], frame)


INT = st.one_of(st.integers(min_value=-5, max_value=2**62), st.sampled_from([None, True, 1.5, "7"]))


@settings(max_examples=400, deadline=None)
@given(
    protocol=st.sampled_from(["bybit-v5-spot", "bybit-v5-linear"]),
    kind=st.sampled_from(["delta", "snapshot", "other"]),
    bids=st.lists(st.one_of(st.tuples(DECIMAL, DECIMAL).map(list), ROW), max_size=3),
    asks=st.lists(st.one_of(st.tuples(DECIMAL, DECIMAL).map(list), ROW), max_size=3),
    u=INT,
    seq=st.one_of(INT, st.just("absent")),
    times=st.tuples(st.one_of(INT, st.just("absent")), st.one_of(INT, st.just("absent"))),
    symbol=st.sampled_from(["BTCUSDT", "ETHUSDT"]),
)
def test_bybit_frames_parse_the_same(
    protocol: str, kind: str, bids: Any, asks: Any, u: Any, seq: Any, times: Any, symbol: str
) -> None:
    data: dict[str, Any] = {"s": symbol, "b": bids, "a": asks, "u": u}
    if seq != "absent":
        data["seq"] = seq
    msg: dict[str, Any] = {"topic": "orderbook.50.BTCUSDT", "type": kind, "data": data}
    for key, value in zip(("ts", "cts"), times, strict=True):
        if value != "absent":
            msg[key] = value
    instrument = "BTC-USDT" if protocol == "bybit-v5-spot" else "BTC-USDT-PERP"
    ref = PROTOCOLS[protocol](VenueSpec("v", protocol, (instrument,), 50, book_core="python"))
    got = PROTOCOLS[protocol](VenueSpec("v", protocol, (instrument,), 50, book_core="compiled"))
    frame = orjson.dumps(msg).decode()
    assert _parse(got, frame) == _parse(ref, frame), frame


def test_the_driver_state_classes_are_slotted_for_the_compiled_path() -> None:
    """The compiled path reads and counts these objects' slots in C; a field added without
    a slot (or a class made a plain one) is refused when a driver is built, not misread."""
    from mmengine.book import _core
    from mmengine.book.integrity import ContiguousIds
    from mmengine.book.sync import PARSE_ERRORS
    from mmengine.errors import IntegrityError

    spec = VenueSpec("v", "bybit-v5-spot", ("BTC-USDT",), book_core="compiled")
    driver = BookDriver(PROTOCOLS["bybit-v5-spot"](spec), CaptureSession([]))
    assert type(getattr(driver.receive, "__self__", None)) is _core.FramePath

    @dataclasses.dataclass
    class Unslotted:
        frames: int = 0
        book_frames: int = 0

    driver.venue_stats = Unslotted()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="not a slot"):
        _core.FramePath(driver, ContiguousIds, IntegrityError, PARSE_ERRORS)


# --- the frame scanner: a frame's text read in C (`_core.FrameScanner`) -------------------------

SCANNED = [c for c in CAPTURES if c.path.name in FAST]
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')
SPACED = re.compile(r'"(?:[^"\\]|\\.)*"|[,:\[\]{}]')  # (strings are kept as they are)
SPACES = {",": " ,\t", ":": ": \n", "[": "[ ", "]": "\r]", "{": "{ ", "}": " }"}


def _nested_reversed(doc: Any, top: bool = True) -> Any:
    """Every object's keys in reverse order but the top object's (the frame still begins as
    the venue's book frames do, so the scanner reads it)."""
    if isinstance(doc, list):
        return [_nested_reversed(x, False) for x in doc]
    if isinstance(doc, dict):
        items = [(k, _nested_reversed(v, False)) for k, v in doc.items()]
        return dict(items if top else items[::-1])
    return doc


def _variants(frame: str, start: str, rng: random.Random) -> dict[str, str]:
    """Texts near a book frame (which begins with `start`): the same JSON value written
    otherwise (the scanner must read it, or hand it on), and damage of the kinds a text
    reader can get wrong."""
    tokens = list(TOKEN.finditer(frame))
    one = rng.choice(tokens) if tokens else None
    rest = frame[len(start) :]
    out = {
        "spaced": start + SPACED.sub(lambda m: SPACES.get(m.group(), m.group()), rest),
        "leading space": " " + frame,
        "trailing newline": frame + "\r\n",
        "trailing junk": frame + "x",
        "reordered": orjson.dumps(_nested_reversed(orjson.loads(frame))).decode(),
        "truncated": frame[: rng.randrange(1, len(frame))],
        "a byte changed": _changed(frame, rng),
        "non-ascii": frame.replace('"', '"\u00e9', 1) if rng.random() < 0.5 else frame + " \u00e9",
    }
    if one is not None:
        text = one.group()
        at, end = one.span()
        if text.startswith('"') and len(text) > 2:
            # a JSON escape of the same character
            out["escaped"] = frame[: at + 1] + f"\\u{ord(text[1]):04x}" + frame[at + 2 :]
            if TOKEN.fullmatch(text[1:-1]) and text[1:-1][:1].isdigit():
                out["string as number"] = frame[:at] + text[1:-1] + frame[end:]
            out["duplicated key"] = frame[:at] + text + ":1," + frame[at:]
        elif not text.startswith('"'):
            out["number as string"] = frame[:at] + f'"{text}"' + frame[end:]
            out["exponent"] = frame[:at] + text + "e0" + frame[end:]
            out["infinite"] = frame[:at] + text + "e999" + frame[end:]  # (orjson refuses it)
            out["leading zero"] = frame[:at] + "0" + text + frame[end:]
            out["negative"] = frame[:at] + "-" + text + frame[end:]
            out["fraction"] = frame[:at] + text + ".0" + frame[end:]
            out["twenty digits"] = frame[:at] + "9" * 20 + frame[end:]
    return out


def _changed(frame: str, rng: random.Random) -> str:
    at = rng.randrange(len(frame))
    return frame[:at] + rng.choice('"{}[],:0.e-\\ aZ9') + frame[at + 1 :]


def _venues(plan: Any) -> tuple[Any, Any]:
    """(the reference core's venue, the compiled core's) for a capture's plan."""
    spec = plan.spec
    ref = PROTOCOLS[spec.protocol](dataclasses.replace(spec, book_core="python"))
    got = PROTOCOLS[spec.protocol](dataclasses.replace(spec, book_core="compiled"))
    assert type(got.parse).__name__ == "FrameScanner"
    return ref, got


@pytest.mark.parametrize(
    "capture", SCANNED, ids=[f"{c.path.name}:{c.venue_name or ''}" for c in SCANNED]
)
def test_the_scanner_reads_every_frame_as_the_venue_parse_does(capture: Any) -> None:
    """Every frame of the capture, and texts near each book frame: the same event or the
    same refusal as the reference core's venue (whose parse is orjson and the venue
    module's own code); the usual frame, also spaced out or with its keys in another order,
    is read by the scanner, and a frame with an escape is not."""
    header, events = read_capture(capture.path)
    plans, _ = plan_venues(header, events, True, 1000, capture.venue_name, None)
    ref, got = _venues(plans[0])
    scanner = got.parse
    rng = random.Random(capture.path.name)
    scanned: dict[str, list[int]] = {}
    for e in sorted((e for e in plans[0].events if e.kind == "recv"), key=lambda e: e.ts):
        before = scanner.scanned
        assert _parse(got, e.data) == _parse(ref, e.data), e.data
        if scanner.scanned == before:
            continue  # not a usual book frame: its variants are no test of the scanner
        for label, text in _variants(e.data, got.book_start, rng).items():
            before = scanner.scanned
            assert _parse(got, text) == _parse(ref, text), (label, text)
            scanned.setdefault(label, []).append(scanner.scanned - before)
    assert scanner.scanned > 400
    for label in ("spaced", "trailing newline", "reordered"):
        assert all(scanned[label]), f"{label}: not read by the scanner"
    for label in ("leading space", "trailing junk", "truncated", "non-ascii", "escaped"):
        assert not any(scanned[label]), f"{label}: read by the scanner"


def test_the_scanner_is_the_compiled_core_venues_parse_only_where_declared() -> None:
    for protocol, cls in PROTOCOLS.items():
        spec = VenueSpec("v", protocol, (), book_core="compiled")
        kind = type(cls(spec).parse).__name__
        assert kind == ("FrameScanner" if getattr(cls, "frame_shape", None) else "method")
        assert type(cls(dataclasses.replace(spec, book_core="python")).parse).__name__ == "method"


@settings(max_examples=500, deadline=None)
@given(
    texts=st.lists(
        st.from_regex(r"\A0{0,3}[0-9]{0,20}(\.[0-9]{0,20}0{0,9})?\Z"), min_size=2, max_size=8
    )
)
def test_the_scanner_reads_decimal_strings_as_float_does(texts: list[str]) -> None:
    """Digit runs of every length (the scanner reads eight at a time), leading and trailing
    zeros, a dot anywhere: the same levels as the reference (`float()`), or the same
    refusal."""
    rows = [[texts[i], texts[i + 1]] for i in range(0, len(texts) - 1, 2)]
    data = {"s": "BTCUSDT", "b": rows, "a": rows[::-1], "u": 7, "seq": 9}
    frame = orjson.dumps({"topic": "orderbook.50.BTCUSDT", "type": "snapshot", "data": data})
    ref = PROTOCOLS["bybit-v5-spot"](
        VenueSpec("v", "bybit-v5-spot", ("BTC-USDT",), 50, book_core="python")
    )
    got = PROTOCOLS["bybit-v5-spot"](
        VenueSpec("v", "bybit-v5-spot", ("BTC-USDT",), 50, book_core="compiled")
    )
    assert _parse(got, frame.decode()) == _parse(ref, frame.decode()), frame


@pytest.mark.parametrize(
    "body",
    [
        '{"b":[["1.5","2.0","1618678133.365913"]],"b":[["1.6","2.0","1618678133.365913"]],"c":"1"}',
        '{"b":[["1.5","2.0","1618678133.365913"]],"c":"1","c":"2"}',
        '{"b":[["1.5","2.0","1618678133.365913"]],"c":"1","x":1}',
        '{"as":[["1.5","2.0","1618678133.365913"]],"bs":[],"as":[]}',
        '{"b":[["1.5","2.0","1618678133.365913"]],"c":"1","bs":null}',
        '{"b":null,"a":[["1.5","2.0","1618678133.365913"]],"c":"123"}',
    ],
)
def test_the_scanner_hands_on_a_kraken_body_it_cannot_take_at_once(body: str) -> None:
    """A key twice or one the body does not have: handed to the venue's parse (the
    reference's outcome); a null side is read as absent, as the Structs read it."""
    frame = f'[42,{body},"book-100","XBT/USD"]'
    ref = _venue("kraken-v1", "python", ("BTC-USD",))
    got = _venue("kraken-v1", "compiled", ("BTC-USD",))
    passed = got.parse.passed
    assert _parse(got, frame) == _parse(ref, frame)
    read = "null" in body and '"bs":null' not in body  # the last case is read
    assert got.parse.passed == passed + (0 if read else 1)
