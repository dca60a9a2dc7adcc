"""Hostile input, per venue: 10,000 mutations of real capture frames, plus arbitrary JSON.

Each venue is first brought LIVE by replaying its capture (the real frames), then fed
mutated copies of its own book frames: truncated, wrong types, NaN / inf / negative numbers,
unknown symbols, duplicate keys, deep nesting, multi-MB. What must hold:
- no exception ever escapes the venue (`receive` is what the venue thread calls);
- no book that is not LIVE ever publishes levels, and a LIVE top is finite and uncrossed;
- every definitely-bad frame is accounted for: a counted skip or a resync.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmengine.book.sync import BookDriver as Venue
from mmengine.capture import read_capture
from mmengine.model import BookTop
from mmengine.replay import replay_capture

# capture, or capture:venue where one capture holds several venue connections
CAPTURES = [
    "BINANCE",
    "COINBASE",
    "KRAKEN",
    "KRAKEN_V2",
    "OKX",
    "BYBIT:bybit-spot",
    "BYBIT:bybit-linear",
]
CASES = 10_000
MAX_FRAME = 2_000_000  # frames larger than this are mutated only in the dedicated test


def live_venue(data_dir: Path, name: str) -> tuple[Venue, list[str]]:
    """The venue after replaying its capture (books LIVE), and its book frames."""
    capture, _, venue_name = name.partition(":")
    path = data_dir / f"{capture}.jsonl.gz"
    venue = replay_capture(path, keep_tops=True, venue_name=venue_name or None).venue
    _, events = read_capture(path)
    conns = {e.conn for e in events if e.kind == "connect" and venue_name in e.conn}
    frames = [
        e.data
        for e in events
        if e.kind == "recv"
        and (not venue_name or e.conn in conns)
        and len(e.data) < MAX_FRAME
        and _is_book_frame(e.data)
    ]
    assert frames, name
    return venue, frames


def _is_book_frame(text: str) -> bool:
    return any(
        k in text
        for k in ('"depthUpdate"', '"l2_data"', '"book-', '"books"', '"orderbook.', '"book"')
    )


def scalars(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every scalar in a decoded JSON value."""
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += scalars(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += scalars(v, (*path, i))
    else:
        out.append(path)
    return out


def set_at(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


NUMERIC_POISON = ["NaN", "nan", "inf", "-inf", "1e400", "-1", "-0.5", "Infinity"]
WRONG_TYPES: list[Any] = [None, [], {}, True, "abc", 10**18, -7, 1.5]


def mutate(frame: str, rng: random.Random) -> tuple[str, bool]:
    """A mutated frame and whether it is definitely bad (must be skipped or resynced)."""
    kind = rng.randrange(8)
    if kind == 0:  # truncated
        return frame[: rng.randrange(1, max(2, len(frame) - 1))], True
    if kind == 1:  # deeply nested
        depth = rng.choice([600, 2000, 50_000])
        return "[" * depth + "]" * depth, True
    if kind == 2:  # not JSON at all
        return rng.choice(["", "null", "pong", "}{", "\x00\x01", "[1,2,3]", '"x"']), False
    doc = orjson.loads(frame)
    paths = scalars(doc)
    if not paths:
        return frame, False
    path = rng.choice(paths)
    if kind == 3:  # wrong type anywhere
        set_at(doc, path, rng.choice(WRONG_TYPES))
        return orjson.dumps(doc).decode(), False
    if kind == 4:  # poison a numeric string (prices and sizes are numeric strings)
        numeric = [p for p in paths if _numeric(_get(doc, p))]
        if not numeric:
            return frame, False
        set_at(doc, rng.choice(numeric), rng.choice(NUMERIC_POISON))
        return orjson.dumps(doc).decode(), False
    if kind == 5:  # symbols the engine never subscribed
        text = orjson.dumps(doc).decode()
        for sym in (
            "BTCUSDT",
            "BTC-USD",
            "XBT/USD",
            "BTC-USDT",
            "ETH-USD",
            "NKNUSDT",
            "SC/EUR",
            "XMR/USD",
            "UNI-USD-SWAP",
            "ETHUSDT",
            "BTC/USD",
        ):
            text = text.replace(sym, "ZZZQQQ")
        return text, False
    if kind == 6:  # duplicate keys: the last one wins in orjson, as in every JSON parser
        if frame.startswith("{"):
            return '{"junk":1,' + frame[1:-1] + ',"junk":[1]}', False
        return frame, False
    # empty or huge arrays
    arrays = [p for p in paths if len(p) >= 2]
    if arrays:
        set_at(doc, path, rng.choice([[], [[]], ["1e308"] * 3]))
    return orjson.dumps(doc).decode(), False


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


def _numeric(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def check_tops(tops: list[BookTop]) -> None:
    for top in tops:
        if top.state != "LIVE":
            assert not top.bid_prices and not top.ask_prices, top
            continue
        for p in (*top.bid_prices, *top.ask_prices, *top.bid_sizes, *top.ask_sizes):
            assert math.isfinite(p) and p >= 0.0, top
        if top.bid_prices and top.ask_prices:
            assert top.bid_prices[0] < top.ask_prices[0], top


def accounted(venue: Venue) -> int:
    skipped = sum(venue.venue_stats.skipped.values())
    resyncs = sum(venue.venue_stats.resyncs.values())
    return skipped + resyncs


@pytest.mark.parametrize("name", CAPTURES)
def test_ten_thousand_mutated_frames(data_dir: Path, name: str) -> None:
    venue, frames = live_venue(data_dir, name)
    session = venue.session
    session.tops.clear()  # type: ignore[attr-defined]
    rng = random.Random(f"fuzz:{name}")
    definitely_bad = 0
    for _ in range(CASES):
        frame, bad = mutate(rng.choice(frames), rng)
        before = accounted(venue)
        venue.receive(frame, 1)  # must never raise
        if bad:
            definitely_bad += 1
            assert accounted(venue) > before, f"{name}: not counted: {frame[:120]!r}"
    check_tops(session.tops)  # type: ignore[attr-defined]
    assert definitely_bad > CASES // 5
    assert sum(venue.venue_stats.skipped.values()) >= definitely_bad


@pytest.mark.parametrize("name", CAPTURES)
def test_multi_megabyte_frames_are_refused_or_parsed_without_harm(
    data_dir: Path, name: str
) -> None:
    venue, frames = live_venue(data_dir, name)
    before = accounted(venue)
    huge_array = "[" + ",".join(['["1.0","1.0"]'] * 400_000) + "]"  # about 5.6 MB
    venue.receive(huge_array, 1)
    venue.receive(frames[0][:-1] + " " * (venue.max_frame_bytes + 1) + frames[0][-1], 1)
    assert accounted(venue) >= before + 2
    assert venue.venue_stats.skipped.get("frame_too_large", 0) >= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.recursive(
        st.none()
        | st.booleans()
        | st.floats()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "e",
                        "s",
                        "U",
                        "u",
                        "b",
                        "a",
                        "data",
                        "channel",
                        "events",
                        "arg",
                        "action",
                        "topic",
                        "type",
                        "c",
                        "as",
                        "bs",
                    ]
                )
                | st.text(max_size=4),
                children,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
def test_arbitrary_json_never_escapes(doc: Any, venues_live: dict[str, Venue]) -> None:
    text = orjson.dumps(doc).decode()
    for venue in venues_live.values():
        venue.receive(text, 1)
        check_tops(venue.session.tops[-50:])  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def venues_live(data_dir: Path) -> dict[str, Venue]:
    return {name: live_venue(data_dir, name)[0] for name in CAPTURES}
