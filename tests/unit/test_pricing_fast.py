"""The engine's pricing model (`mmengine.pricing.model.evaluate`) against the reference it
was rewritten from (`mmengine.pricing.reference.evaluate`): on random markets, specs and
sequences of Prices, every Decision and the state left behind must be equal, bit for bit."""

from __future__ import annotations

import dataclasses
import random

import pytest

from mmengine.model import BookTop
from mmengine.pricing import reference
from mmengine.pricing.model import (
    Decision,
    InstrumentSpec,
    InstrumentState,
    QuoteParams,
    SourceSpec,
    evaluate,
)

NOW = 1_800_000_000_000_000_000
VENUES = ("binance", "coinbase", "kraken", "okx", "bybit", "bitstamp")


def random_spec(rng: random.Random) -> InstrumentSpec:
    sources = []
    for venue in rng.sample(VENUES, rng.randint(1, len(VENUES))):
        fx = rng.random() < 0.3
        sources.append(
            SourceSpec(
                venue,
                "BTC-USDT" if fx else "BTC-USD",
                weight=rng.choice([None, None, rng.uniform(0.1, 5.0), 0.0]),
                fx="USDT-USD" if fx else None,
                fx_invert=fx and rng.random() < 0.3,
            )
        )
    tick = rng.choice([0.01, 0.1, 0.5, 1.0, 0.0001])
    return InstrumentSpec(
        "BTC-USD",
        tuple(sources),
        max_age_ms=rng.choice([5000.0, 100.0, float("inf")]),
        method=rng.choice(["mid", "weighted_mid", "microprice"]),
        micro_levels=rng.randint(1, 6),
        outlier_bps=rng.choice([5.0, 50.0, 100.0, 10_000.0]),
        min_venues=rng.choice([1, 1, 2, 4]),
        max_jump_bps=rng.choice([1.0, 50.0, 500.0, 500.0]),
        vol_half_life_s=rng.choice([0.5, 30.0]),
        vol_horizon_s=rng.choice([1.0, 60.0]),
        tick=tick,
        lot=rng.choice([0.0001, 0.001, 0.1]),
        quote=QuoteParams(
            levels=rng.randint(1, 8),
            min_spread_bps=rng.uniform(0.0, 20.0),
            vol_mult=rng.uniform(0.0, 3.0),
            level_step_bps=rng.choice([0.0, 0.5, 1.0, rng.uniform(0.0, 30.0)]),
            size=rng.uniform(0.0, 3.0),
            size_step=rng.uniform(0.0, 1.0),
            skew_bps_at_max=rng.uniform(0.0, 10.0),
            max_position=rng.choice([0.0, 1.0, 10.0]),
            skew_sizes=rng.random() < 0.4,
        ),
    )


def random_top(rng: random.Random, venue: str, instrument: str, mid: float, now: int) -> BookTop:
    grid = rng.choice([0.01, 0.5, 1.0])  # coarse grids make equal prices across venues
    levels = rng.randint(0, 6)
    state = rng.choice(["LIVE"] * 8 + ["STALE", "RESYNCING"])
    if state != "LIVE" or levels == 0:
        return BookTop(venue, instrument, state, 1, -1, 0, now, [], [], [], [])
    center = mid * (1 + rng.choice([0.0, 0.0, 0.0, rng.uniform(-0.02, 0.02)]))
    best_bid = round(center / grid) * grid - grid * rng.randint(0, 2)
    best_ask = best_bid + grid * rng.choice([1, 1, 2, -1, 0])  # sometimes crossed
    bids = [best_bid - grid * i for i in range(levels)]
    asks = [best_ask + grid * i for i in range(levels)]
    return BookTop(
        venue,
        instrument,
        state,
        rng.randint(0, 10**9),
        -1,
        now,
        now - rng.choice([0, 0, 0, 50, 10_000]) * 1_000_000,
        bids,
        [rng.choice([0.001, 0.5, rng.uniform(0.0, 10.0)]) for _ in bids],
        asks,
        [rng.choice([0.001, 0.5, rng.uniform(0.0, 10.0)]) for _ in asks],
    )


def fields(decision: Decision | None) -> tuple[object, ...] | None:
    return None if decision is None else dataclasses.astuple(decision)


@pytest.mark.parametrize("seed", range(4))
def test_the_fast_model_decides_as_the_reference_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    compared = quoted = 0
    for _ in range(250):
        spec = random_spec(rng)
        position = rng.choice([0.0, 3.0, -12.5])
        fast_state = InstrumentState(position=position)
        ref_state = InstrumentState(position=position)
        mid = rng.uniform(100.0, 100_000.0)
        now = NOW
        tops: dict[tuple[str, str], BookTop] = {}
        for _ in range(rng.randint(1, 6)):  # a sequence: volatility and jumps carry over
            now += rng.choice([1_000, 1_000_000, 400_000_000])
            mid *= 1 + rng.gauss(0, 0.001)
            for src in spec.sources:
                if rng.random() < 0.8:
                    key = (src.venue, src.instrument)
                    tops[key] = random_top(rng, src.venue, src.instrument, mid, now)
            rate = rng.choice([1.0, 0.9998, 1.0003, 1.0003, 0.0, float("inf")])
            fx = {"USDT-USD": (rate, now - rng.choice([0, 20_000_000_000]))}
            fx_age = rng.choice([None, {"USDT-USD": 1e9}])
            fast = evaluate(spec, tops, fx, fast_state, now, fx_age)
            ref = reference.evaluate(spec, tops, fx, ref_state, now, fx_age)
            assert fields(fast) == fields(ref), (seed, spec)
            assert fast_state == ref_state, (seed, spec)
            compared += 1
            quoted += bool(fast is not None and fast.bids)
    print(f"{compared} decisions compared, {quoted} with a ladder")
    assert quoted > compared // 6  # many reach the ladder, not only the halts
