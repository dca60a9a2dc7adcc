"""The synthetic book that follows a shared fair price: invariants over many steps, exact
diffs, reproducibility, and a market that looks like one (issue 18): the venues' books
cross each other rarely and briefly, separate processes agree on the fair price, and an
outlier venue stays an outlier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from itertools import pairwise

import pytest

from mmengine.dev.simulator.market import (
    ASK,
    BID,
    Change,
    FairPath,
    Market,
    VenueStyle,
    default_params,
    fair_key,
)

T0 = 1_796_000_000.0  # a fixed wall-clock start (2026-12)
# The demo's five venues (their simulators' names give their styles).
DEMO_VENUES = ("binance", "coinbase-advanced", "kraken-v2", "okx-v5", "bybit-v5-spot")


class Clock:
    """A wall clock the test moves."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def apply(shadow: dict[str, dict[Decimal, Decimal]], changes: list[Change]) -> None:
    for side, price, size in changes:
        if size == 0:
            del shadow[side][price]  # a delete is always for a level the book had
        else:
            shadow[side][price] = size


@pytest.mark.parametrize("instrument", ["BTC-USDT", "ETH-USDT", "NKN-USDT"])
def test_ten_thousand_steps_keep_every_invariant(instrument: str) -> None:
    clock = Clock()
    market = Market(
        instrument, seed=f"7:{instrument}", style=VenueStyle.for_venue("okx-v5"), clock=clock
    )
    params = market.params
    shadow = {BID: dict(market.levels(BID)), ASK: dict(market.levels(ASK))}
    for n in range(10_000):
        # 10 ms a step, and once a 5 s silence (a stalled venue): the book jumps after it.
        clock.now += 5.0 if n == 5_000 else 0.01
        changes = market.step()
        assert changes, f"step {n} changed nothing"
        keys = [(c.side, c.price) for c in changes]
        assert len(keys) == len(set(keys)), f"step {n} reports a level twice"
        for c in changes:
            assert c.price > 0 and c.price % params.tick == 0, c
            assert c.size >= 0 and c.size % params.lot == 0, c
        apply(shadow, changes)
        bids = market.levels(BID)
        asks = market.levels(ASK)
        assert 20 <= len(bids) <= 40 and 20 <= len(asks) <= 40, (n, len(bids), len(asks))
        assert bids[0][0] < asks[0][0], f"crossed at step {n}: {bids[0]} / {asks[0]}"
        assert all(q > 0 for _, q in bids) and all(q > 0 for _, q in asks)
        assert all(a[0] > b[0] for a, b in pairwise(bids))
        assert all(a[0] < b[0] for a, b in pairwise(asks))
        # The reported changes are exactly the difference between two consecutive books.
        assert shadow[BID] == dict(bids) and shadow[ASK] == dict(asks), f"diff wrong at {n}"
    assert market.best(BID) == bids[0] and market.best(ASK) == asks[0]


def test_prices_start_near_the_base_mid_on_the_tick_grid() -> None:
    for instrument, mid, tick in [
        ("BTC-USDT", Decimal("65000"), Decimal("0.01")),
        ("ETH-USD", Decimal("3000"), Decimal("0.01")),
        ("SOL-USDT", Decimal("100"), Decimal("0.001")),
    ]:
        assert default_params(instrument).tick == tick
        clock = Clock()
        market = Market(instrument, seed=1, clock=clock)
        for _ in range(500):
            clock.now += 0.01
            market.step()
        best_bid = market.best(BID)
        best_ask = market.best(ASK)
        assert best_bid is not None and best_ask is not None
        assert abs((best_bid[0] + best_ask[0]) / 2 - mid) < mid * Decimal("0.01")
        # A spread of about a basis point (the venue's style), not a hole.
        assert 0 < best_ask[0] - best_bid[0] < mid * Decimal("0.0003")


def test_same_seed_and_clock_same_sequence_and_another_seed_differs() -> None:
    clocks = [Clock(), Clock(), Clock()]
    a, b, c = (
        Market("BTC-USDT", seed=s, clock=k) for s, k in zip((42, 42, 43), clocks, strict=True)
    )
    assert a.levels(BID) == b.levels(BID) and a.levels(ASK) == b.levels(ASK)
    runs: list[list[list[Change]]] = [[], [], []]
    for _ in range(2_000):
        for clock, market, run in zip(clocks, (a, b, c), runs, strict=True):
            clock.now += 0.01
            run.append(market.step())
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert a.levels(BID) == b.levels(BID) and a.levels(ASK) == b.levels(ASK)


def test_levels_respects_limit_and_bad_depth_bounds_are_refused() -> None:
    market = Market("ETH-USDT", seed=3)
    assert len(market.levels(BID, 5)) == 5
    assert market.levels(ASK, 5) == market.levels(ASK)[:5]
    with pytest.raises(ValueError, match="max_levels"):
        Market("ETH-USDT", seed=3, min_levels=20, max_levels=21)


def test_the_fair_price_is_a_function_of_seed_instrument_and_time() -> None:
    times = [T0 + i * 0.37 for i in range(200)]
    one = FairPath.for_instrument("BTC-USDT")
    two = FairPath.for_instrument("BTC-USD")  # USDT, USD and USDC books follow one price
    assert [one.mid(t) for t in times] == [two.mid(t) for t in reversed(times)][::-1]
    assert fair_key("BTC-USDT-PERP") == fair_key("XBT-USD") == "BTC-USD"
    assert fair_key("ETH-BTC") == "ETH-BTC"
    other = FairPath.for_instrument("BTC-USDT", seed=1)
    assert [one.mid(t) for t in times] != [other.mid(t) for t in times]
    # It moves like a market: about half a basis point per second, and an hour's moves
    # are tens of basis points, not percent.
    assert one.mid(T0) != one.mid(T0 + 1)
    assert abs(one.mid(T0 + 3600) / one.mid(T0) - 1) < 0.01


def test_separate_processes_agree_on_the_fair_price_and_the_venue_styles() -> None:
    """What lets `mmengine simulate` processes show one market without talking: no
    per-process state (such as Python's salted string hash) enters the path or a style."""
    code = (
        "import json; from mmengine.dev.simulator.market import FairPath, VenueStyle\n"
        "p = FairPath.for_instrument('ETH-USDT', seed=5)\n"
        f"print(json.dumps([[p.mid({T0} + i) for i in range(50)],"
        " [VenueStyle.for_venue(v).basis_bps for v in ('binance', 'okx-v5')]]))\n"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
        )
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
    here = FairPath.for_instrument("ETH-USDT", seed=5)
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == [here.mid(T0 + i) for i in range(50)]
    assert outputs[0][1] == [VenueStyle.for_venue(v).basis_bps for v in ("binance", "okx-v5")]


def consolidated_crossings(
    instrument: str, start: float, styles: dict[str, VenueStyle], seconds: float = 20.0
) -> tuple[float, int, list[float]]:
    """The demo's venues on one clock, each stepping every 10 ms in turn; after every step
    the consolidated best bid and ask across all of them, as pricing sees them. Returns the
    fraction of steps crossed (best bid >= best ask), the longest crossed run in steps, and
    each venue's mid distance from the consolidated median in bps at the end."""
    clock = Clock(start)
    markets = [
        Market(instrument, seed=f"{name}:{instrument}", style=style, clock=clock)
        for name, style in styles.items()
    ]
    crossed = longest = run = 0
    steps = int(seconds / 0.002)
    for n in range(steps):
        clock.now += 0.002  # five venues, each every 10 ms
        markets[n % len(markets)].step()
        best_bid = max(m.levels(BID, 1)[0][0] for m in markets)
        best_ask = min(m.levels(ASK, 1)[0][0] for m in markets)
        if best_bid >= best_ask:
            crossed += 1
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    mids = [(m.levels(BID, 1)[0][0] + m.levels(ASK, 1)[0][0]) / 2 for m in markets]
    median = sorted(mids)[len(mids) // 2]
    away = [float(abs(mid / median - 1)) * 1e4 for mid in mids]
    return crossed / steps, longest, away


@pytest.mark.parametrize(
    ("instrument", "start"), [("BTC-USDT", T0), ("ETH-USD", T0 + 86_400), ("BTC-USD", T0 + 7)]
)
def test_the_venues_books_cross_each_other_rarely_and_briefly(
    instrument: str, start: float
) -> None:
    styles = {name: VenueStyle.for_venue(name) for name in DEMO_VENUES}
    fraction, longest, away = consolidated_crossings(instrument, start, styles)
    print(f"\n{instrument}: {fraction:.2%} of steps crossed, longest {longest * 2} ms")
    assert fraction < 0.05, fraction
    assert longest * 0.002 < 1.0  # brief: gone within a second
    assert max(away) < 1.5  # every venue within a basis point and a half of the others


def test_an_outlier_venue_stays_away_from_the_others() -> None:
    styles = {name: VenueStyle.for_venue(name) for name in DEMO_VENUES}
    styles["okx-v5"] = VenueStyle.for_venue("okx-v5", shift_bps=150)
    _, _, away = consolidated_crossings("BTC-USDT", T0, styles, seconds=2.0)
    assert 149 < away[3] < 151
    assert max(away[:3] + away[4:]) < 1.5
