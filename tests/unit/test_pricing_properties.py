"""Properties of the pricing model that must hold for any inputs (hypothesis)."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mmengine.model import BookTop
from mmengine.pricing.model import (
    InstrumentSpec,
    InstrumentState,
    QuoteParams,
    SourceSpec,
    evaluate,
    quote_ladder,
    raw_ladder,
    skew_bps,
)

NOW = 1_800_000_000_000_000_000
TICK = 0.01
LOT = 0.001

prices = st.floats(min_value=1.0, max_value=100_000.0, allow_nan=False)
sizes = st.floats(min_value=0.001, max_value=1000.0, allow_nan=False)
quotes = st.builds(
    QuoteParams,
    levels=st.integers(1, 6),
    min_spread_bps=st.floats(0.0, 50.0),
    vol_mult=st.floats(0.0, 5.0),
    level_step_bps=st.floats(0.0, 20.0),
    size=st.floats(0.01, 10.0),
    size_step=st.floats(0.0, 5.0),
    skew_bps_at_max=st.floats(0.0, 30.0),
    max_position=st.floats(0.1, 100.0),
    skew_sizes=st.booleans(),
)


@st.composite
def venue_tops(draw: st.DrawFn) -> list[BookTop]:
    n = draw(st.integers(1, 5))
    out = []
    for i in range(n):
        bid = draw(prices)
        spread = draw(st.floats(0.0001, 0.05))
        ask = bid * (1 + spread)
        state = draw(st.sampled_from(["LIVE", "LIVE", "LIVE", "STALE", "RESYNCING"]))
        age = draw(st.sampled_from([0, 0, 10_000]))
        out.append(
            BookTop(
                f"v{i}",
                "X-USD",
                state,
                1,
                -1,
                0,
                NOW - age * 10**6,
                [bid],
                [draw(sizes)],
                [ask],
                [draw(sizes)],
            )
        )
    return out


def on_grid(value: float, step: float) -> bool:
    return abs(value / step - round(value / step)) < 1e-6


@given(fair=prices, half=st.floats(0.0, 100.0), position=st.floats(-200.0, 200.0), q=quotes)
def test_ladder_is_on_tick_monotone_and_never_crosses_fair(
    fair: float, half: float, position: float, q: QuoteParams
) -> None:
    bids, asks = quote_ladder(fair, half, skew_bps(position, q), position, q, TICK, LOT)
    assert all(p < fair for p, _ in bids) and all(p > fair for p, _ in asks)
    assert all(a[0] > b[0] for a, b in itertools.pairwise(bids))
    assert all(b[0] > a[0] for a, b in itertools.pairwise(asks))
    for p, s in bids + asks:
        assert on_grid(p, TICK) and on_grid(s, LOT) and s > 0


@given(
    fair=prices,
    half=st.floats(0.0, 100.0),
    pos=st.floats(-100.0, 100.0),
    extra=st.floats(0.0, 100.0),
    q=quotes,
)
def test_a_longer_position_never_moves_quotes_up(
    fair: float, half: float, pos: float, extra: float, q: QuoteParams
) -> None:
    shorter = raw_ladder(fair, half, skew_bps(pos, q), q, TICK)
    longer = raw_ladder(fair, half, skew_bps(pos + extra, q), q, TICK)
    # Level by level, before levels that would cross fair are dropped.
    for (bid0, ask0), (bid1, ask1) in zip(shorter, longer, strict=True):
        assert bid1 <= bid0 and ask1 <= ask0


@settings(max_examples=200)
@given(
    tops=venue_tops(),
    q=quotes,
    min_venues=st.integers(1, 3),
    method=st.sampled_from(["mid", "weighted_mid", "microprice"]),
)
def test_decisions_for_any_inputs(
    tops: list[BookTop], q: QuoteParams, min_venues: int, method: str
) -> None:
    spec = InstrumentSpec(
        "X-USD",
        tuple(SourceSpec(t.venue, "X-USD") for t in tops),
        max_age_ms=1000,
        method=method,
        min_venues=min_venues,
        max_jump_bps=1e9,
        tick=TICK,
        lot=LOT,
        quote=q,
    )
    d = evaluate(spec, {(t.venue, t.instrument): t for t in tops}, {}, InstrumentState(), NOW)
    if d is None:
        return
    if d.halted:
        assert d.bids == [] and d.asks == []
        return
    assert math.isfinite(d.fair_value)
    for p, _ in d.bids:
        assert p < d.fair_value
    for p, _ in d.asks:
        assert p > d.fair_value
    used = {u.venue for u in d.used}
    assert used.isdisjoint({x.venue for x in d.excluded})
    assert abs(sum(u.weight for u in d.used) - 1.0) < 1e-9


@settings(max_examples=200)
@given(tops=venue_tops(), junk=prices)
def test_excluded_venues_never_influence_fair_value(tops: list[BookTop], junk: float) -> None:
    spec = InstrumentSpec(
        "X-USD",
        tuple(SourceSpec(t.venue, "X-USD") for t in tops),
        max_age_ms=1000,
        min_venues=1,
        max_jump_bps=1e9,
        outlier_bps=1e9,
    )
    by_key = {(t.venue, t.instrument): t for t in tops}
    d = evaluate(spec, by_key, {}, InstrumentState(), NOW)
    if d is None or not d.excluded:
        return
    # Move every excluded venue's prices anywhere: the fair value must not change.
    moved = dict(by_key)
    for x in d.excluded:
        t = by_key[(x.venue, x.instrument)]
        moved[(x.venue, x.instrument)] = t._replace(bid_prices=[junk], ask_prices=[junk * 1.01])
    d2 = evaluate(spec, moved, {}, InstrumentState(), NOW)
    assert d2 is not None
    assert d2.fair_value == d.fair_value or (d.halted and d2.halted)
