"""(f) Fuzzed frames never raise out of the venue and never move a LIVE book wrongly.

Every case starts from a fresh connection whose two books are LIVE (the venue's own snapshot
frames, written by its wire kit), sends one update in the venue's real frame shape, with one
mutation, and checks the outcome against the kit's plain books:
- nothing escapes `receive`;
- a poisoned level (NaN, inf, negative, zero price, a value of the wrong JSON type) is always
  refused: counted, and the book that would have taken it resyncs;
- a frame counted as skipped leaves every book identical, except those it resyncs (dropped,
  not LIVE);
- a frame that is not skipped leaves the books it updates equal to the kit's plain books,
  the others identical (or, for a mutation that made it no book message at all, every book
  identical);
- every LIVE BookTop published is finite, sorted and uncrossed (OKX, which documents crossed
  books, excepted).
The share of cases that met a LIVE book is printed per venue (`-s`).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmengine.dev.simulator.kit import Level, WireKit
from mmengine.model import BookState
from tests.conformance.conftest import PROTOCOLS, kit_of, live_books, state

CASES = 5_000  # per venue: 1-2 s each (a fresh connection per case)
POISON: list[Any] = ["NaN", "nan", "inf", "-inf", "Infinity", "1e400", "-1", "-0.5", None]
POISON += [True, 7, 1.5, [], {}, "abc", ""]
WRONG: list[Any] = [None, [], {}, True, "abc", "", "NaN", "-1", "1e400"]


def price(rng: random.Random, low: int) -> str:
    return f"{low + rng.randrange(0, 1000) / 100:.{rng.choice((2, 2, 1, 4))}f}"


def size(rng: random.Random) -> str:
    return rng.choice(["0", f"{rng.randrange(1, 100000) / 1000:g}", "0.00000001", "12"])


def side(rng: random.Random, low: int, n: int, deletes: bool) -> list[Level]:
    out = [(price(rng, low), size(rng) if deletes else f"{rng.randrange(1, 999) / 10:g}")]
    out += [(price(rng, low), size(rng) if deletes else "1") for _ in range(n - 1)]
    return out


BOOK = ([("99.5", "1"), ("99", "2")], [("101", "1"), ("102", "3")])


def snapshot_levels(rng: random.Random) -> tuple[list[Level], list[Level]]:
    return side(rng, 90, rng.randrange(1, 8), False), side(rng, 101, rng.randrange(1, 8), False)


class Outcome:
    """The counters and books before a frame, to judge what the frame did."""

    def __init__(self, driver: Any, session: Any) -> None:
        self.driver = driver
        self.session = session
        self.books = state(driver)
        self.skipped = sum(driver.venue_stats.skipped.values())
        self.resyncs = {i: s.resyncs for i, s in driver.stats.items()}
        self.tops = len(session.tops)
        self.live = all(b.state is BookState.LIVE for b in driver.books.values())

    def check(self, kit: WireKit, targets: set[str], bad: bool, mutated: bool, what: str) -> str:
        """`bad`: the frame must be refused; `mutated`: it is not what the venue sent.
        Returns what became of it: refused, applied or ignored."""
        driver = self.driver
        after = state(driver)
        skipped = sum(driver.venue_stats.skipped.values()) > self.skipped
        resynced = {i for i, s in driver.stats.items() if s.resyncs > self.resyncs[i]}
        if bad:
            assert skipped, f"a poisoned frame was not refused: {what}"
        if not bad and not mutated:  # a good frame, as the venue sends it: applied
            assert not skipped and not resynced, f"a good frame was refused: {what}"
        for inst, was in self.books.items():
            now = after[inst]
            if inst in resynced:  # dropped: not LIVE, no levels, waiting for a snapshot
                assert now[0] is not BookState.LIVE and not now[1] and not now[2], what
                continue
            if now == was and (mutated or bad or inst not in targets):
                continue  # untouched: refused, or no message of this book
            assert inst in targets, f"a book the frame does not name moved: {inst} {what}"
            bids, asks = kit.levels(inst)
            book = driver.books[inst]
            assert book.state is BookState.LIVE, what
            assert [(p, book.bids.sizes[p]) for p in book.bids.prices(10**6)] == bids, what
            assert [(p, book.asks.sizes[p]) for p in book.asks.prices(10**6)] == asks, what
        for top in self.session.tops[self.tops :]:
            if top.state != "LIVE":
                assert not top.bid_prices and not top.ask_prices
                continue
            values = [*top.bid_prices, *top.ask_prices, *top.bid_sizes, *top.ask_sizes]
            assert all(math.isfinite(v) and v > 0 for v in values), top
            assert top.bid_prices == sorted(top.bid_prices, reverse=True), top
            assert top.ask_prices == sorted(top.ask_prices), top
            if top.bid_prices and top.ask_prices and not driver.hold_crossed:
                assert top.bid_prices[0] < top.ask_prices[0], top
        if skipped or resynced:
            return "refused"
        return "ignored" if after == self.books and mutated else "applied"


def scalars(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in scalars(v, (*path, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in scalars(v, (*path, i))]
    return [path]


def set_at(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def mutate(frame: str, rng: random.Random, symbols: list[str]) -> tuple[str, bool, str]:
    """(frame, definitely unusable, what was done)."""
    kind = rng.randrange(10)
    if kind == 0:
        return frame[: rng.randrange(1, len(frame))], True, "truncated"
    if kind == 1:
        depth = rng.choice([600, 5000])
        return "[" * depth + "]" * depth, True, "nested"
    doc = orjson.loads(frame)
    paths = scalars(doc)
    if kind in (2, 3, 4):
        path = rng.choice(paths)
        set_at(doc, path, rng.choice(WRONG))
        return orjson.dumps(doc).decode(), False, f"wrong type at {path}"
    if kind == 5:
        for symbol in symbols:
            frame = frame.replace(symbol, "ZZZ9QQQ")
        return frame, False, "unknown symbol"
    if kind == 6 and frame.startswith("{"):
        return '{"junk":1,' + frame[1:-1] + ',"junk":[1]}', False, "duplicate keys"
    if kind == 7 and isinstance(doc, dict):
        key = rng.choice(list(doc))
        del doc[key]
        return orjson.dumps(doc).decode(), False, f"no {key!r}"
    return frame, False, "as sent"


def poisons(kit: WireKit) -> list[Any]:
    """What no level of this venue may hold: for a venue of JSON numbers (Kraken v2), a
    number is the right type (the kit writes decimal strings as numbers)."""
    return [v for v in POISON if not (kit.numbers and type(v) in (int, float))]


def poison_one(rng: random.Random, kit: WireKit, bids: list[Level], asks: list[Level]) -> str:
    """Put one poisoned value into the update's levels."""
    levels = rng.choice([bids, asks]) if bids and asks else (bids or asks)
    i = rng.randrange(len(levels))
    p, q = levels[i]
    if rng.random() < 0.5:
        value = rng.choice([*poisons(kit), "0", "0.000"])  # a zero price too
        levels[i] = (value, q)
        return f"price {value!r}"
    value = rng.choice(poisons(kit))
    levels[i] = (p, value)
    return f"size {value!r}"


@pytest.mark.parametrize("cases", [CASES])
def test_mutated_frames_never_move_a_live_book_wrongly(protocol: str, cases: int) -> None:
    rng = random.Random(f"fuzz:{protocol}")
    met_live = 0
    outcomes: Counter[str] = Counter()
    for _ in range(cases):
        kit = kit_of(protocol)
        x, y = kit.instruments
        driver, session = live_books(kit, {x: snapshot_levels(rng), y: snapshot_levels(rng)})
        before = Outcome(driver, session)
        met_live += before.live
        bids = side(rng, 90, rng.randrange(1, 5), True) if rng.random() < 0.8 else []
        asks = side(rng, 101, rng.randrange(1, 5), True) if rng.random() < 0.8 or not bids else []
        poisoned = rng.random() < 0.3
        what = poison_one(rng, kit, bids, asks) if poisoned else ""
        parts = [(x, bids, asks)]
        if kit.multi_instrument and rng.random() < 0.3:
            parts.append((y, side(rng, 90, 2, True), []))
        frame = kit.update(parts)
        symbols = [driver.venue_symbol(i) for i in kit.instruments]
        frame, bad, how = mutate(frame, rng, symbols) if rng.random() < 0.6 else (frame, False, "")
        mutated = bool(how) and how != "as sent"
        driver.receive(frame, 3)  # must never raise
        targets = {inst for inst, _, _ in parts}
        # A poisoned level must be refused unless a mutation took it out of the frame.
        must_refuse = bad or (poisoned and not mutated)
        outcomes[before.check(kit, targets, must_refuse, mutated, f"{what} {how}")] += 1
    share = met_live / cases
    print(f"\n{protocol}: {cases} cases, {share:.1%} met LIVE books; {dict(outcomes)}")
    assert share >= 0.9
    # Both ways out are exercised: frames applied to LIVE books, and frames refused.
    assert outcomes["applied"] > cases // 5 and outcomes["refused"] > cases // 5


def test_multi_megabyte_frames_are_refused_or_parsed_without_harm(protocol: str) -> None:
    kit = kit_of(protocol)
    x, y = kit.instruments
    driver, session = live_books(kit, {x: BOOK, y: BOOK})
    before = Outcome(driver, session)
    huge_array = "[" + ",".join(['["1.0","1.0"]'] * 400_000) + "]"  # about 5.6 MB
    driver.receive(huge_array, 1)
    frame = kit.update([(x, [("95", "1")], [])])
    driver.receive(frame[:-1] + " " * (driver.max_frame_bytes + 1) + frame[-1], 1)
    assert driver.venue_stats.skipped["frame_too_large"] == 1
    assert sum(driver.venue_stats.skipped.values()) == 2
    assert state(driver) == before.books


# --- hypothesis: structured frames in each venue's real shape ---------------------------------

DECIMALS = st.decimals(min_value=1, max_value=99999, places=4, allow_nan=False)
SIZES = st.one_of(
    st.just("0"), st.decimals(min_value=0, max_value=1000, places=8).map(lambda d: f"{d:f}")
)
POISONS = st.sampled_from(POISON)


def levels_of(low: int) -> st.SearchStrategy[list[Level]]:
    prices = st.integers(min_value=0, max_value=999).map(lambda n: f"{low + n / 100:.2f}")
    return st.lists(st.tuples(prices, SIZES), max_size=6)


@pytest.mark.parametrize("venue_protocol", PROTOCOLS)
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is never a fluke
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    book=st.tuples(levels_of(90), levels_of(101)),
    update=st.tuples(levels_of(90), levels_of(101)),
    poison=st.one_of(st.none(), st.tuples(st.booleans(), st.booleans(), POISONS)),
    data=st.data(),
)
def test_structured_frames_in_the_venue_shape(
    venue_protocol: str, book: Any, update: Any, poison: Any, data: Any
) -> None:
    kit = kit_of(venue_protocol)
    x, y = kit.instruments
    # A snapshot as venues send one: one level per price, no zero sizes.
    start = tuple(
        list({float(p): (p, q) for p, q in reversed(side) if float(q) != 0}.values())
        for side in book
    )
    driver, session = live_books(kit, {x: start, y: ([("90", "1")], [("110", "1")])})
    bids, asks = list(update[0]), list(update[1])
    if poison is not None and poison[2] not in poisons(kit):
        poison = None  # a number is a good value for a venue of JSON numbers
    if poison is not None:
        on_bids, on_price, value = poison
        levels = bids if on_bids else asks
        if not levels:
            levels.append(("95.00" if on_bids else "105.00", "1"))
        i = data.draw(st.integers(0, len(levels) - 1))
        levels[i] = (value, levels[i][1]) if on_price else (levels[i][0], value)
    before = Outcome(driver, session)
    driver.receive(kit.update([(x, bids, asks)]), 3)
    before.check(kit, {x}, poison is not None, False, f"poison {poison}")
