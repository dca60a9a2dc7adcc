"""Benchmark: the cost of pricing one instrument from five venue tops, ladder included, by
the engine's model and by the reference it was rewritten from, and of encoding the resulting
Price as the pricing worker does (main thread; prints JSON, µs per Price, best of 5).

    .venv/bin/python scripts/bench_pricing.py [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

from mmengine.codec import Codec, encode_price
from mmengine.model import BookTop, Price
from mmengine.pricing import reference
from mmengine.pricing.model import (
    InstrumentSpec,
    InstrumentState,
    QuoteParams,
    SourceSpec,
    evaluate,
)

VENUES = ("binance", "coinbase", "kraken", "okx", "bybit")


def make_tops(rng: random.Random, now: int) -> dict[tuple[str, str], BookTop]:
    out = {}
    for venue in VENUES:
        mid = 65000 + rng.uniform(-5, 5)
        bids = [round(mid - 0.5 - i * 0.5, 2) for i in range(5)]
        asks = [round(mid + 0.5 + i * 0.5, 2) for i in range(5)]
        sizes = [rng.uniform(0.1, 3) for _ in range(5)]
        inst = "BTC-USDT" if venue in ("binance", "okx", "bybit") else "BTC-USD"
        out[(venue, inst)] = BookTop(
            venue, inst, "LIVE", 1, -1, now, now, bids, sizes, asks, sizes[::-1]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(1)
    spec = InstrumentSpec(
        "BTC-USD",
        tuple(
            SourceSpec(v, "BTC-USDT", fx="USDT-USD")
            if v in ("binance", "okx", "bybit")
            else SourceSpec(v, "BTC-USD")
            for v in VENUES
        ),
        method="microprice",
        micro_levels=3,
        min_venues=3,
        quote=QuoteParams(
            levels=5,
            min_spread_bps=2,
            level_step_bps=1,
            size=0.5,
            size_step=0.25,
            skew_bps_at_max=3,
            max_position=10,
        ),
    )
    now = time.time_ns()
    inputs = [make_tops(rng, now) for _ in range(64)]
    fx = {"USDT-USD": (0.9998, now)}
    header = Codec("price.avsc").header
    results = {}
    for label in ("reference evaluate", "evaluate", "evaluate+encode"):
        model = reference.evaluate if label.startswith("reference") else evaluate
        state = InstrumentState(position=2.0)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for i in range(args.n):
                d = model(spec, inputs[i & 63], fx, state, now + i * 1000)
                if label == "evaluate+encode" and d is not None:
                    price = Price(
                        "BTC-USD",
                        1,
                        i,
                        d.fair_value,
                        d.best_bid,
                        d.best_bid_size,
                        d.best_ask,
                        d.best_ask_size,
                        [u.venue for u in d.used],
                        0,
                        0,
                        0,
                        bids=d.bids,
                        asks=d.asks,
                        venues_used=d.used,
                        venues_excluded=d.excluded,
                    )
                    encode_price(header, price)
            best = min(best, (time.perf_counter() - t0) / args.n * 1e6)
        results[label] = round(best, 2)
    print(json.dumps({"python": platform.python_version(), "us_per_price": results}, indent=2))


if __name__ == "__main__":
    main()
