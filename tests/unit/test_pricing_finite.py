"""No Price carries a non-finite number or a ladder level at or below zero; an instrument
whose every source has aged out halts with `halt_reason` "stale" (issue 16)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mmengine.model import BookTop
from mmengine.pricing.model import (
    STALE,
    Decision,
    InstrumentSpec,
    InstrumentState,
    QuoteParams,
    SourceSpec,
    evaluate,
)

NOW = 1_800_000_000_000_000_000
BIG = 1e308  # finite, but two of them sum to inf


def top(
    venue: str,
    bid: float,
    ask: float,
    bid_size: float = 1.0,
    ask_size: float = 1.0,
    age_ms: float = 0.0,
    instrument: str = "BTC-USD",
) -> BookTop:
    return BookTop(
        venue,
        instrument,
        "LIVE",
        1,
        -1,
        0,
        NOW - int(age_ms * 1e6),
        [bid],
        [bid_size],
        [ask],
        [ask_size],
    )


def spec(*venues: str, **kw: object) -> InstrumentSpec:
    sources = tuple(SourceSpec(v, "BTC-USD") for v in venues)
    return InstrumentSpec("BTC-USD", sources, **kw)  # type: ignore[arg-type]


def assert_publishable(d: Decision) -> None:
    """What every Price must satisfy, halted or not: every number finite (checked field by
    field here, not with the model's own `non_finite_field`, which also halts a decision
    whose finite fields merely overflow when summed)."""
    numbers = [
        d.fair_value,
        d.best_bid,
        d.best_bid_size,
        d.best_ask,
        d.best_ask_size,
        d.volatility_bps,
        d.half_spread_bps,
        d.skew_bps,
        d.position,
    ]
    numbers += [x for u in d.used for x in (u.mid, u.weight, u.fx_rate)]
    assert all(math.isfinite(x) for x in numbers), d
    for p, s in d.bids + d.asks:
        assert p > 0.0 and s > 0.0 and math.isfinite(p) and math.isfinite(s)
    if d.halted:
        assert d.bids == [] and d.asks == [] and d.halt_reason


def test_sizes_near_the_float_limit_halt_instead_of_publishing_nan() -> None:
    # Two venues each with 1e308 on both sides: the consolidated sizes are inf, so the
    # microprice is inf/inf = NaN. Today that NaN reaches math.floor and kills the worker.
    s = spec("a", "b", method="microprice", min_venues=1)
    tops = {
        ("a", "BTC-USD"): top("a", 100.0, 101.0, BIG, BIG),
        ("b", "BTC-USD"): top("b", 100.0, 101.0, BIG, BIG),
    }
    state = InstrumentState()
    d = evaluate(s, tops, {}, state, NOW)
    assert d is not None and d.halted and "non-finite" in d.halt_reason
    assert_publishable(d)
    assert state.last_fair == 0.0 and state.var_rate == 0.0  # the state is not poisoned


def test_a_wide_ladder_never_bids_at_or_below_zero() -> None:
    # levels 50 x 250 bps: level 49 sits 122.5 % below fair. Today it is published at <= 0.
    q = QuoteParams(levels=50, level_step_bps=250.0)
    d = evaluate(
        spec("a", min_venues=1, quote=q), {("a", "BTC-USD"): top("a", 100.0, 101.0)}, {},
        InstrumentState(), NOW,
    )  # fmt: skip
    assert d is not None and not d.halted
    assert_publishable(d)
    assert len(d.bids) == 40  # levels 0..39 are above zero (offset < 100 %)
    assert len(d.asks) == 50


def test_a_large_volatility_never_bids_at_or_below_zero() -> None:
    state = InstrumentState(last_fair=100.5, last_ts_ns=NOW - 10**9, var_rate=50.0)
    d = evaluate(
        spec("a", min_venues=1, max_jump_bps=1e9, quote=QuoteParams(vol_mult=3.0)),
        {("a", "BTC-USD"): top("a", 100.0, 101.0)},
        {},
        state,
        NOW,
    )
    assert d is not None and not d.halted and d.half_spread_bps > 10_000
    assert_publishable(d)
    assert d.bids == [] and d.asks  # no bid is possible at that spread; asks still are


def test_an_infinite_or_zero_fx_rate_excludes_the_source() -> None:
    s = InstrumentSpec("BTC-USD", (SourceSpec("a", "BTC-USDT", fx="USDT-USD"),), min_venues=1)
    tops = {("a", "BTC-USDT"): top("a", 100.0, 101.0, instrument="BTC-USDT")}
    for rate in (math.inf, math.nan, 0.0):
        d = evaluate(s, tops, {"USDT-USD": (rate, 2**62)}, InstrumentState(), NOW)
        assert d is not None and d.halted, rate
        assert [x.reason for x in d.excluded] == ["no_fx"]
        assert_publishable(d)


def test_every_source_stale_halts_with_reason_stale() -> None:
    s = spec("a", "b", max_age_ms=1000, min_venues=1)
    tops = {
        ("a", "BTC-USD"): top("a", 100.0, 101.0, age_ms=1500),
        ("b", "BTC-USD"): top("b", 100.0, 101.0, age_ms=2500),
    }
    d = evaluate(s, tops, {}, InstrumentState(), NOW)
    assert d is not None and d.halted and d.halt_reason == STALE == "stale"
    assert {x.reason for x in d.excluded} == {"stale"}
    # One fresh source: not stale any more.
    tops[("a", "BTC-USD")] = top("a", 100.0, 101.0, age_ms=10)
    d = evaluate(s, tops, {}, InstrumentState(), NOW)
    assert d is not None and not d.halted


def test_a_non_finite_position_halts() -> None:
    state = InstrumentState(position=math.inf)
    d = evaluate(
        spec("a", min_venues=1, quote=QuoteParams(skew_bps_at_max=10.0)),
        {("a", "BTC-USD"): top("a", 100.0, 101.0)},
        {},
        state,
        NOW,
    )
    assert d is not None and d.halted and "position" in d.halt_reason
    assert_publishable(d)


def test_an_infinite_max_age_does_not_raise() -> None:
    d = evaluate(
        spec("a", min_venues=1, max_age_ms=math.inf),
        {("a", "BTC-USD"): top("a", 100.0, 101.0, age_ms=10**9)},
        {},
        InstrumentState(),
        NOW,
    )
    assert d is not None and not d.halted


floats = st.one_of(
    st.floats(min_value=5e-324, max_value=BIG),
    st.sampled_from([BIG, 1e300, 1e-300, 5e-324, 1.0, 100.0]),
)


@settings(max_examples=300, deadline=None)
@given(
    levels=st.lists(st.tuples(floats, floats, floats, floats), min_size=1, max_size=4),
    method=st.sampled_from(["mid", "weighted_mid", "microprice"]),
    position=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0)),
    ladder=st.tuples(st.integers(0, 50), st.floats(0, 1e6), st.floats(0, 1e6)),
    tick=st.sampled_from([1e-8, 0.01, 1.0, 1e6]),
)
def test_any_market_data_gives_a_publishable_decision_or_none(
    levels: list[tuple[float, float, float, float]],
    method: str,
    position: float,
    ladder: tuple[int, float, float],
    tick: float,
) -> None:
    """Absurd but finite venue levels (what a venue's level check lets through), any
    position, any ladder shape: evaluate never raises and never returns a non-finite
    number or a level at or below zero."""
    n, step, vol_mult = ladder
    tops = {}
    for i, (a, b, c, d) in enumerate(levels):
        bid, ask = min(a, b), max(a, b)
        if bid == ask:
            ask = math.nextafter(ask, math.inf)
            if not math.isfinite(ask):
                continue
        tops[(f"v{i}", "BTC-USD")] = top(f"v{i}", bid, ask, c, d)
    s = InstrumentSpec(
        "BTC-USD",
        tuple(SourceSpec(f"v{i}", "BTC-USD") for i in range(len(levels))),
        method=method,
        min_venues=1,
        tick=tick,
        quote=QuoteParams(levels=n, level_step_bps=step, vol_mult=vol_mult, skew_bps_at_max=5),
    )
    state = InstrumentState(position=position)
    for now in (NOW, NOW + 10**6):  # twice: the second step uses the volatility state
        d = evaluate(s, tops, {}, state, now)
        if d is not None:
            assert_publishable(d)
