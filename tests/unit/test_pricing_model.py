"""The pricing model, step by step, against hand-computed expectations."""

from __future__ import annotations

import math

import pytest

from mmengine.model import BookTop
from mmengine.pricing.model import (
    InstrumentSpec,
    InstrumentState,
    QuoteParams,
    SourceSpec,
    evaluate,
    microprice,
    quote_ladder,
    round_down,
    round_up,
    skew_bps,
    update_volatility,
)

NOW = 1_800_000_000_000_000_000


def top(
    venue: str,
    bid: float,
    ask: float,
    bid_size: float = 1.0,
    ask_size: float = 1.0,
    instrument: str = "BTC-USD",
    state: str = "LIVE",
    age_ms: float = 0.0,
) -> BookTop:
    return BookTop(
        venue,
        instrument,
        state,
        1,
        -1,
        0,
        NOW - int(age_ms * 1e6),
        [bid, bid - 1],
        [bid_size, 5.0],
        [ask, ask + 1],
        [ask_size, 5.0],
    )


def spec(*venues: str, **kw: object) -> InstrumentSpec:
    sources = tuple(SourceSpec(v, "BTC-USD") for v in venues)
    return InstrumentSpec("BTC-USD", sources, **kw)  # type: ignore[arg-type]


def tops_of(*ts: BookTop) -> dict[tuple[str, str], BookTop]:
    return {(t.venue, t.instrument): t for t in ts}


def test_microprice_of_a_known_top() -> None:
    # bid 100 x 3, ask 101 x 1: more size on the bid, so the price leans to the ask.
    assert microprice(100.0, 3.0, 101.0, 1.0) == pytest.approx(100.75)
    assert microprice(100.0, 1.0, 101.0, 1.0) == pytest.approx(100.5)


def test_mid_over_the_consolidated_top_sums_equal_prices() -> None:
    d = evaluate(
        spec("a", "b", min_venues=2),
        tops_of(top("a", 100.0, 102.0, 1.0, 2.0), top("b", 100.0, 101.0, 3.0, 4.0)),
        {},
        InstrumentState(),
        NOW,
    )
    assert d is not None
    assert (d.best_bid, d.best_bid_size) == (100.0, 4.0)
    assert (d.best_ask, d.best_ask_size) == (101.0, 4.0)
    assert d.fair_value == pytest.approx(100.5)
    assert not d.halted and [u.venue for u in d.used] == ["a", "b"]


def test_weighted_mid_by_size_and_by_configured_weight() -> None:
    a = top("a", 100.0, 102.0, 1.0, 1.0)  # mid 101, size 2
    b = top("b", 104.0, 106.0, 3.0, 3.0)  # mid 105, size 6
    d = evaluate(spec("a", "b", method="weighted_mid"), tops_of(a, b), {}, InstrumentState(), NOW)
    assert d is not None and d.fair_value == pytest.approx((101 * 2 + 105 * 6) / 8)
    assert [round(u.weight, 6) for u in d.used] == [0.25, 0.75]
    fixed = InstrumentSpec(
        "BTC-USD",
        (SourceSpec("a", "BTC-USD", weight=3.0), SourceSpec("b", "BTC-USD", weight=1.0)),
        method="weighted_mid",
    )
    d = evaluate(fixed, tops_of(a, b), {}, InstrumentState(), NOW)
    assert d is not None and d.fair_value == pytest.approx(101 * 0.75 + 105 * 0.25)


def test_microprice_over_n_levels() -> None:
    a = top("a", 100.0, 101.0, 1.0, 1.0)  # second levels: 99 x 5 and 102 x 5
    d = evaluate(
        spec("a", method="microprice", micro_levels=2, min_venues=1),
        tops_of(a),
        {},
        InstrumentState(),
        NOW,
    )
    assert d is not None and d.fair_value == pytest.approx(microprice(100.0, 6.0, 101.0, 6.0))


def test_exclusions_carry_their_reasons() -> None:
    s = InstrumentSpec(
        "BTC-USD",
        (
            *(SourceSpec(v, "BTC-USD") for v in "abcdef"),
            SourceSpec("g", "BTC-USDT", fx="USDT-USD"),
        ),
        max_age_ms=1000,
        outlier_bps=50,
    )
    d = evaluate(
        s,
        tops_of(
            top("a", 100.0, 101.0),
            top("b", 100.1, 101.1),
            top("c", 100.2, 101.2),
            top("d", 100.0, 101.0, state="RESYNCING"),
            top("e", 100.0, 101.0, age_ms=2000),
            top("f", 110.0, 111.0),  # about 990 bps from the others
            top("g", 100.0, 101.0, instrument="BTC-USDT"),  # no USDT-USD rate known
        ),
        {},
        InstrumentState(),
        NOW,
    )
    assert d is not None
    reasons = {x.venue: x.reason for x in d.excluded}
    assert reasons == {"d": "not_live", "e": "stale", "f": "outlier", "g": "no_fx"}
    assert [u.venue for u in d.used] == ["a", "b", "c"]


def test_crossed_venue_is_excluded_but_a_cross_between_venues_is_flagged() -> None:
    bad = BookTop("x", "BTC-USD", "LIVE", 1, -1, 0, NOW, [101.0], [1.0], [100.0], [1.0])
    d = evaluate(
        spec("a", "b", "x", min_venues=2),
        tops_of(top("a", 100.0, 100.5), top("b", 100.6, 101.0), bad),
        {},
        InstrumentState(),
        NOW,
    )
    assert d is not None
    assert [(x.venue, x.reason) for x in d.excluded] == [("x", "crossed")]
    assert d.cross_venue_crossed and d.best_bid == 100.6 and d.best_ask == 100.5


def test_fx_converts_prices_not_sizes() -> None:
    s = InstrumentSpec("BTC-USD", (SourceSpec("a", "BTC-USDT", fx="USDT-USD"),), min_venues=1)
    d = evaluate(
        s,
        tops_of(top("a", 100.0, 101.0, 2.0, 3.0, instrument="BTC-USDT")),
        {"USDT-USD": (0.5, NOW)},
        InstrumentState(),
        NOW,
    )
    assert d is not None
    assert (d.best_bid, d.best_bid_size, d.best_ask) == (50.0, 2.0, 50.5)
    assert d.used[0].fx_rate == 0.5
    inverted = InstrumentSpec(
        "BTC-USD", (SourceSpec("a", "BTC-USDT", fx="USD-USDT", fx_invert=True),), min_venues=1
    )
    d = evaluate(
        inverted,
        tops_of(top("a", 100.0, 101.0, instrument="BTC-USDT")),
        {"USD-USDT": (2.0, NOW)},
        InstrumentState(),
        NOW,
    )
    assert d is not None and d.best_bid == 50.0


def test_stale_fx_rate_excludes_the_venue() -> None:
    s = InstrumentSpec("BTC-USD", (SourceSpec("a", "BTC-USDT", fx="USDT-USD"),), min_venues=1)
    d = evaluate(
        s,
        tops_of(top("a", 100.0, 101.0, instrument="BTC-USDT")),
        {"USDT-USD": (1.0, NOW - 20 * 10**9)},
        InstrumentState(),
        NOW,
        {"USDT-USD": 10 * 10**9},
    )
    assert d is not None and d.halted and d.excluded[0].reason == "no_fx"


def test_ewma_volatility_after_a_known_path() -> None:
    state = InstrumentState(last_fair=100.0, last_ts_ns=NOW)
    # One step: +1 % after exactly one half-life: var = 0.5 * r^2 / dt
    update_volatility(state, 101.0, NOW + 10 * 10**9, half_life_s=10.0)
    r = math.log(1.01)
    assert state.var_rate == pytest.approx(0.5 * r * r / 10.0)
    # A flat step of one half-life halves it.
    before = state.var_rate
    state.last_fair, state.last_ts_ns = 101.0, NOW + 10 * 10**9
    update_volatility(state, 101.0, NOW + 20 * 10**9, half_life_s=10.0)
    assert state.var_rate == pytest.approx(before / 2)


def test_volatility_is_finite_for_bursts_of_close_updates() -> None:
    state = InstrumentState(last_fair=100.0, last_ts_ns=NOW)
    update_volatility(state, 100.01, NOW + 1000, half_life_s=30.0)  # 1 µs later
    r = math.log(1.0001)
    assert state.var_rate == pytest.approx(math.log(2) / 30.0 * r * r, rel=1e-3)


def test_skew_direction_and_clamp() -> None:
    q = QuoteParams(skew_bps_at_max=4.0, max_position=10.0)
    assert skew_bps(5.0, q) == -2.0  # long: quotes move down
    assert skew_bps(-5.0, q) == 2.0
    assert skew_bps(50.0, q) == -4.0


def test_ladder_hand_computed() -> None:
    q = QuoteParams(
        levels=2, min_spread_bps=10.0, vol_mult=0.0, level_step_bps=10.0, size=1.0, size_step=0.5
    )
    bids, asks = quote_ladder(1000.0, 5.0, 0.0, 0.0, q, tick=0.1, lot=0.01)
    # level 0: +-5 bps = 0.5; level 1: +-15 bps = 1.5
    assert bids == [(999.5, 1.0), (998.5, 1.5)]
    assert asks == [(1000.5, 1.0), (1001.5, 1.5)]


def test_ladder_rounds_away_from_fair_and_drops_levels_crossing_it() -> None:
    q = QuoteParams(levels=3, level_step_bps=1.0, size=1.0)
    bids, asks = quote_ladder(100.0, 0.5, 0.0, 0.0, q, tick=0.01, lot=0.01)
    assert bids == [(99.99, 1.0), (99.98, 1.0), (99.97, 1.0)]
    assert asks == [(100.01, 1.0), (100.02, 1.0), (100.03, 1.0)]
    # A skew of -20 bps puts the first asks at or below fair: they are dropped.
    bids, asks = quote_ladder(100.0, 0.5, -20.0, 0.0, q, tick=0.01, lot=0.01)
    assert all(a > 100.0 for a, _ in asks) and len(asks) < 3
    assert all(b < 100.0 for b, _ in bids)


def test_size_skew_leans_sizes() -> None:
    q = QuoteParams(levels=1, size=2.0, max_position=10.0, skew_sizes=True)
    bids, asks = quote_ladder(100.0, 5.0, 0.0, 5.0, q, tick=0.01, lot=0.1)
    assert bids[0][1] == 1.0 and asks[0][1] == 3.0


def test_rounding_helpers() -> None:
    assert round_down(100.019, 0.01) == 100.01
    assert round_up(100.011, 0.01) == 100.02
    assert round_down(100.02, 0.01) == 100.02  # on tick stays


def test_halts_on_too_few_venues_and_on_a_jump() -> None:
    s = spec("a", "b", min_venues=2, max_jump_bps=100)
    d = evaluate(s, tops_of(top("a", 100.0, 101.0)), {}, InstrumentState(), NOW)
    assert d is not None and d.halted and "min_venues" in d.halt_reason
    assert d.bids == [] and d.asks == []
    state = InstrumentState()
    d = evaluate(s, tops_of(top("a", 100.0, 101.0), top("b", 100.0, 101.0)), {}, state, NOW)
    assert d is not None and not d.halted and d.bids and d.asks
    d = evaluate(s, tops_of(top("a", 110.0, 111.0), top("b", 110.0, 111.0)), {}, state, NOW + 1)
    assert d is not None and d.halted and "moved" in d.halt_reason and not d.bids


def test_nothing_to_say_before_any_venue_was_live() -> None:
    assert evaluate(spec("a"), {}, {}, InstrumentState(), NOW) is None


def test_the_worked_example_in_docs_pricing() -> None:
    def t(venue: str, inst: str, b: float, bs: float, a: float, as_: float) -> BookTop:
        return BookTop(venue, inst, "LIVE", 1, -1, 0, NOW, [b], [bs], [a], [as_])

    s = InstrumentSpec(
        "BTC-USD",
        (
            SourceSpec("coinbase", "BTC-USD"),
            SourceSpec("kraken", "BTC-USD"),
            SourceSpec("binance", "BTC-USDT", fx="USDT-USD"),
            SourceSpec("okx", "BTC-USDT", fx="USDT-USD"),
        ),
        method="microprice",
        outlier_bps=50,
        quote=QuoteParams(
            levels=3,
            min_spread_bps=4,
            vol_mult=1.0,
            level_step_bps=2,
            size=0.5,
            size_step=0.25,
            skew_bps_at_max=3,
            max_position=10,
        ),
    )
    tops = tops_of(
        t("coinbase", "BTC-USD", 65000.00, 1.2, 65001.00, 0.8),
        t("kraken", "BTC-USD", 65000.50, 0.5, 65001.50, 2.0),
        t("binance", "BTC-USDT", 64987.00, 3.0, 64988.50, 1.0),
        t("okx", "BTC-USDT", 65900.00, 1.0, 65901.00, 1.0),
    )
    state = InstrumentState(position=4.0, var_rate=(1.5e-4) ** 2)
    d = evaluate(s, tops, {"USDT-USD": (1.0002, NOW)}, state, NOW)
    assert d is not None
    assert d.fair_value == pytest.approx(65000.6923, abs=1e-4)
    assert (d.best_bid, d.best_bid_size, d.best_ask, d.best_ask_size) == (
        65000.5,
        0.5,
        65001.0,
        0.8,
    )
    assert d.half_spread_bps == 2.0 and d.skew_bps == pytest.approx(-1.2)
    assert d.bids == [(64979.89, 0.5), (64966.89, 0.75), (64953.89, 1.0)]
    assert d.asks == [(65005.9, 0.5), (65018.89, 0.75), (65031.89, 1.0)]
    assert [(u.venue, round(u.weight, 3)) for u in d.used] == [
        ("coinbase", 0.235),
        ("kraken", 0.294),
        ("binance", 0.471),
    ]
    assert [(x.venue, x.reason) for x in d.excluded] == [("okx", "outlier")]


def test_one_bad_venue_of_three_is_the_only_outlier() -> None:
    d = evaluate(
        spec("a", "b", "c", outlier_bps=50),
        tops_of(top("a", 100.0, 100.2), top("b", 100.05, 100.25), top("c", 102.0, 102.2)),
        {},
        InstrumentState(),
        NOW,
    )
    assert d is not None
    assert [(x.venue, x.reason) for x in d.excluded] == [("c", "outlier")]
    assert [u.venue for u in d.used] == ["a", "b"]


def test_a_coin_priced_under_its_tick_gets_no_bid_at_zero() -> None:
    # A coin at 0.004 with the default tick 0.01: every bid rounds down to 0.0, which no
    # venue accepts; the asks round up to 0.01 and stay. A half-spread of 100 % or more
    # would make bids negative: dropped too.
    bids, asks = quote_ladder(0.004, 1.0, 0.0, 0.0, QuoteParams(levels=2), 0.01, 0.001)
    assert bids == [] and asks == [(0.01, 1.0)]
    bids, asks = quote_ladder(100.0, 20_000.0, 0.0, 0.0, QuoteParams(levels=1), 0.01, 0.001)
    assert bids == [] and asks == [(300.0, 1.0)]


def test_each_venue_used_names_the_exact_top_it_was_computed_from() -> None:
    """`venues_used[i].venue_seq` and `recv_ts_ns` are those of the BookTop whose levels
    gave its mid: an independent checker looks that book up at the venue."""
    a = top("a", 100.0, 100.2)._replace(venue_seq=777, recv_ts_ns=NOW - 5)
    b = top("b", 100.1, 100.3)._replace(venue_seq=3_000_000_000, recv_ts_ns=NOW - 9)
    d = evaluate(spec("a", "b", min_venues=2), tops_of(a, b), {}, InstrumentState(), NOW)
    assert d is not None and not d.halted
    assert [(u.venue, u.mid, u.venue_seq, u.recv_ts_ns) for u in d.used] == [
        ("a", (100.0 + 100.2) / 2, 777, NOW - 5),
        ("b", (100.1 + 100.3) / 2, 3_000_000_000, NOW - 9),
    ]
