"""Properties of the pricing model that must hold for any inputs (hypothesis)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmengine.model import BookTop
from mmengine.pricing.model import (
    InstrumentSpec,
    InstrumentState,
    QuoteParams,
    SourceSpec,
    evaluate,
    median,
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


# --- several levels, crossed inputs, FX sources, tick sizes, outliers on ------------------

TICKS = (0.00000001, 0.0001, 0.01, 0.05, 0.5, 1.0, 5.0)
FX_RATES = {"USDT-USD": (0.9987, NOW), "USD-EUR": (1.0823, NOW)}  # EUR-priced via inverted USD


@st.composite
def market(draw: st.DrawFn) -> tuple[list[SourceSpec], dict[tuple[str, str], BookTop], float]:
    """2-6 venue books around one mid on a shared price grid (so equal prices meet and sum),
    each with 1-5 levels a side; some crossed, shifted (outliers), stale, not LIVE, quoted
    in another currency with or without a known rate. Returns (sources, tops, grid)."""
    grid = draw(st.sampled_from((0.000001, 0.01, 0.5, 1.0)))  # 1e-6: a coin priced below its tick
    center = draw(st.integers(200, 2_000_000))  # in grid units
    n = draw(st.integers(2, 6))
    sources: list[SourceSpec] = []
    tops: dict[tuple[str, str], BookTop] = {}
    for i in range(n):
        venue = f"v{i}"
        quote = draw(st.sampled_from(["USD", "USD", "USDT", "EUR", "JPY"]))
        instrument = f"X-{quote}"
        fx, invert = {
            "USD": (None, False),
            "USDT": ("USDT-USD", False),
            "EUR": ("USD-EUR", True),
            "JPY": ("JPY-USD", False),  # no rate known: `no_fx`
        }[quote]
        sources.append(SourceSpec(venue, instrument, fx=fx, fx_invert=invert))
        shift = draw(st.sampled_from([0, 0, 0, 1, -1, 5, -5, 40, -40, 400]))  # in bps
        mid = round(center * (1 + shift / 1e4))
        half = draw(st.integers(-3, 20))  # negative: a crossed venue book
        depth = draw(st.integers(1, 5))
        bid_prices = [(mid - half - k * draw(st.integers(1, 3))) * grid for k in range(depth)]
        ask_prices = [(mid + half + 1 + k * draw(st.integers(1, 3))) * grid for k in range(depth)]
        # best first, strictly ordered, positive
        bid_prices = sorted({round(p, 8) for p in bid_prices if p > 0}, reverse=True)
        ask_prices = sorted({round(p, 8) for p in ask_prices})
        state = draw(st.sampled_from(["LIVE", "LIVE", "LIVE", "LIVE", "STALE", "RESYNCING"]))
        if state != "LIVE":
            bid_prices, ask_prices = [], []  # a non-LIVE BookTop carries no levels
        age_ms = draw(st.sampled_from([0, 0, 0, 50, 10_000]))
        tops[(venue, instrument)] = BookTop(
            venue,
            instrument,
            state,
            1,
            -1,
            0,
            NOW - age_ms * 10**6,
            bid_prices,
            [draw(sizes) for _ in bid_prices],
            ask_prices,
            [draw(sizes) for _ in ask_prices],
        )
    return sources, tops, grid


def rate_of(src: SourceSpec) -> float | None:
    if src.fx is None:
        return 1.0
    known = FX_RATES.get(src.fx)
    if known is None:
        return None
    return 1.0 / known[0] if src.fx_invert else known[0]


def on_tick(price: float, tick: float) -> bool:
    """Exactly on the grid, as the decimal text a venue would be sent."""
    from decimal import Decimal

    return Decimal(repr(price)) % Decimal(repr(tick)) == 0


@settings(max_examples=400, deadline=None)
@given(
    inputs=market(),
    method=st.sampled_from(["mid", "weighted_mid", "microprice"]),
    micro_levels=st.integers(1, 5),
    outlier_bps=st.sampled_from([10.0, 100.0, 1000.0]),
    min_venues=st.integers(1, 4),
    tick=st.sampled_from(TICKS),
    q=quotes,
    position=st.floats(-200.0, 200.0),
)
def test_fair_value_and_the_consolidated_top_follow_from_the_venues_used(
    inputs: tuple[list[SourceSpec], dict[tuple[str, str], BookTop], float],
    method: str,
    micro_levels: int,
    outlier_bps: float,
    min_venues: int,
    tick: float,
    q: QuoteParams,
    position: float,
) -> None:
    sources, tops, _grid = inputs
    spec = InstrumentSpec(
        "X-USD",
        tuple(sources),
        max_age_ms=1000,
        method=method,
        micro_levels=micro_levels,
        outlier_bps=outlier_bps,
        min_venues=min_venues,
        max_jump_bps=1e9,
        tick=tick,
        lot=LOT,
        quote=q,
    )
    state = InstrumentState(position=position)
    d = evaluate(spec, tops, FX_RATES, state, NOW)
    by_venue = {s.venue: s for s in sources}
    top_of = {s.venue: tops[(s.venue, s.instrument)] for s in sources}
    if d is None:
        assert all(t.state != "LIVE" for t in tops.values())
        return

    # Every exclusion is justified by its inputs.
    usable_mids = {}
    for x in d.excluded:
        t, src = top_of[x.venue], by_venue[x.venue]
        if x.reason == "not_live":
            assert t.state not in ("LIVE", "STALE") or not t.bid_prices or not t.ask_prices
        elif x.reason == "stale":
            # aged past max_age_ms, or marked STALE by its venue thread (silent)
            assert t.state == "STALE" or NOW - t.recv_ts_ns > spec.max_age_ms * 1e6
        elif x.reason == "crossed":
            assert t.bid_prices[0] >= t.ask_prices[0]
        elif x.reason == "no_fx":
            assert rate_of(src) is None
        else:
            assert x.reason == "outlier", x.reason
            rate = rate_of(src)
            assert rate is not None
            usable_mids[x.venue] = (t.bid_prices[0] + t.ask_prices[0]) / 2 * rate
    # ...and every venue used passes every rule.
    for u in d.used:
        t, src = top_of[u.venue], by_venue[u.venue]
        rate = rate_of(src)
        assert t.state == "LIVE" and NOW - t.recv_ts_ns <= spec.max_age_ms * 1e6
        assert t.bid_prices[0] < t.ask_prices[0] and rate is not None
        assert u.fx_rate == rate
        assert u.mid == (t.bid_prices[0] + t.ask_prices[0]) / 2 * rate
        usable_mids[u.venue] = u.mid
    assert {u.venue for u in d.used} | {x.venue for x in d.excluded} == set(by_venue)
    if len(usable_mids) >= 3:
        center = median(list(usable_mids.values()))
        for venue, mid in usable_mids.items():
            far = abs(mid / center - 1.0) * 1e4 > outlier_bps
            assert far == (venue not in {u.venue for u in d.used}), venue

    if not d.used:
        assert d.halted and d.bids == [] and d.asks == []
        return
    used_tops = [(top_of[u.venue], u.fx_rate) for u in d.used]
    bids = [p * r for t, r in used_tops for p in t.bid_prices]
    asks = [p * r for t, r in used_tops for p in t.ask_prices]
    # The consolidated top is the best converted level of the venues used, sizes summed.
    assert d.best_bid == max(t.bid_prices[0] * r for t, r in used_tops)
    assert d.best_ask == min(t.ask_prices[0] * r for t, r in used_tops)
    assert d.best_bid_size == pytest.approx(
        sum(t.bid_sizes[0] for t, r in used_tops if t.bid_prices[0] * r == d.best_bid)
    )
    assert d.cross_venue_crossed == (d.best_bid >= d.best_ask)
    # Fair value lies within the used venues' bid/ask range (converted), whatever the method.
    assert min(bids) <= d.fair_value <= max(asks)
    mids = [u.mid for u in d.used]
    if method == "weighted_mid":
        # a weighted mean of the venue mids: inside their range
        assert min(mids) * (1 - 1e-12) <= d.fair_value <= max(mids) * (1 + 1e-12)
    elif method == "mid":
        assert d.fair_value == (d.best_bid + d.best_ask) / 2
    if not d.cross_venue_crossed and method != "weighted_mid":
        # (a weighted mean of venue mids may leave the inside market: a wide venue's mid
        # sits outside a tighter venue's spread, by design of that method)
        assert d.best_bid <= d.fair_value <= d.best_ask
    assert abs(sum(u.weight for u in d.used) - 1.0) < 1e-9

    # Quoting: halted exactly when too few venues; the ladder is on the tick, positive,
    # strictly beyond fair and monotone.
    assert d.halted == (len(d.used) < min_venues)
    if d.halted:
        assert d.bids == [] and d.asks == []
        return
    for p, s in d.bids + d.asks:
        assert p > 0 and s > 0, (p, s)
        assert on_tick(p, tick), (p, tick)
    assert all(p < d.fair_value for p, _ in d.bids)
    assert all(p > d.fair_value for p, _ in d.asks)
    assert all(a[0] > b[0] for a, b in itertools.pairwise(d.bids))
    assert all(b[0] > a[0] for a, b in itertools.pairwise(d.asks))
