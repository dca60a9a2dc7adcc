"""The synthetic random-walk book: invariants over many steps, exact diffs, reproducibility."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise

import pytest

from mmengine.simulator.market import ASK, BID, Change, Market, default_params


def apply(shadow: dict[str, dict[Decimal, Decimal]], changes: list[Change]) -> None:
    for side, price, size in changes:
        if size == 0:
            del shadow[side][price]  # a delete is always for a level the book had
        else:
            shadow[side][price] = size


@pytest.mark.parametrize("instrument", ["BTC-USDT", "ETH-USDT", "NKN-USDT"])
def test_ten_thousand_steps_keep_every_invariant(instrument: str) -> None:
    market = Market(instrument, seed=f"7:{instrument}")
    params = market.params
    shadow = {BID: dict(market.levels(BID)), ASK: dict(market.levels(ASK))}
    for n in range(10_000):
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
        market = Market(instrument, seed=1)
        for _ in range(500):
            market.step()
        best_bid = market.best(BID)
        best_ask = market.best(ASK)
        assert best_bid is not None and best_ask is not None
        assert abs((best_bid[0] + best_ask[0]) / 2 - mid) < mid * Decimal("0.01")
        assert best_ask[0] - best_bid[0] < 50 * tick  # a plausible spread, not a hole


def test_same_seed_same_sequence_and_another_seed_differs() -> None:
    a = Market("BTC-USDT", seed=42)
    b = Market("BTC-USDT", seed=42)
    c = Market("BTC-USDT", seed=43)
    assert a.levels(BID) == b.levels(BID) and a.levels(ASK) == b.levels(ASK)
    run_a = [a.step() for _ in range(2_000)]
    run_b = [b.step() for _ in range(2_000)]
    run_c = [c.step() for _ in range(2_000)]
    assert run_a == run_b
    assert run_a != run_c
    assert a.levels(BID) == b.levels(BID) and a.levels(ASK) == b.levels(ASK)


def test_levels_respects_limit_and_bad_depth_bounds_are_refused() -> None:
    market = Market("ETH-USDT", seed=3)
    assert len(market.levels(BID, 5)) == 5
    assert market.levels(ASK, 5) == market.levels(ASK)[:5]
    with pytest.raises(ValueError, match="max_levels"):
        Market("ETH-USDT", seed=3, min_levels=20, max_levels=21)
