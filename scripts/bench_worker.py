"""Benchmark: the CPU of one BookTop's whole way through the engine's Python after the book
is applied, in one thread: the venue thread's router (`BookTopRouter.send` and `flush`: the
pickled batch and the inproc send), then one turn of the pricing worker (`_step`: poll,
drain, evaluate, the Price, its Avro payload, the IPC publish, the stage histograms), as
at a low rate, where each top makes its own Price. Five venue books feed the priced
instrument, as in `scripts/bench.py`'s end-to-end engine.

Prints JSON: thread CPU µs per top (best of `--rounds` rounds), split into router and worker, and
with `--calls` the Python function calls per top (`sys.setprofile`) by function.

    .venv/bin/python scripts/bench_worker.py [--n 1000] [--rounds 20] [--calls]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from mmengine.bus import PULL_HWM, BookTopRouter, IpcPublisher, pricing_endpoint
from mmengine.codec import Codec
from mmengine.model import BookTop
from mmengine.pricing.model import FxSpec, InstrumentSpec, SourceSpec
from mmengine.pricing.worker import PricingWorker

VENUES = (
    ("binance", "BTC-USDT"),
    ("coinbase", "BTC-USD"),
    ("kraken", "BTC-USD"),
    ("okx", "BTC-USDT"),
    ("bybit", "BTC-USDT"),
)


def make_top(rng: random.Random, venue: str, inst: str, seq: int) -> BookTop:
    mid = 65000 + rng.uniform(-5, 5)
    now = time.time_ns()
    return BookTop(
        venue,
        inst,
        "LIVE",
        seq,
        -1,
        now,
        now,
        [round(mid - 0.5 - i * 0.5, 2) for i in range(10)],
        [rng.uniform(0.1, 3) for _ in range(10)],
        [round(mid + 0.5 + i * 0.5, 2) for i in range(10)],
        [rng.uniform(0.1, 3) for _ in range(10)],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000, help="tops per round")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", action="store_true", help="count Python calls per top")
    args = parser.parse_args()
    rng = random.Random(1)
    # As the bench engine's config makes it (scripts/bench.py engine_config).
    spec = InstrumentSpec(
        "BTC-USD",
        tuple(SourceSpec(v, i, fx="USDT-USD" if i.endswith("USDT") else None) for v, i in VENUES),
        min_venues=1,
        outlier_bps=10_000,
        max_jump_bps=10_000,
    )
    ctx: zmq.Context[Any] = zmq.Context()
    with tempfile.TemporaryDirectory() as tmp:
        prices = IpcPublisher(ctx, "prices", f"ipc://{Path(tmp) / 'prices'}")
        prices.bind()
        worker = PricingWorker(0, ctx, [spec], 1, prices, fx=(FxSpec("USDT-USD", fixed=1.0),))
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, PULL_HWM)
        pull.bind(pricing_endpoint(0))
        control = ctx.socket(zmq.PULL)
        control.bind("inproc://bench-control")
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        header = Codec("price.avsc").header
        router = BookTopRouter(ctx, 1, {i: ["BTC-USD"] for _, i in VENUES}, None)
        tops = [make_top(rng, *VENUES[j % 5], j) for j in range(500)]

        def one(j: int) -> tuple[float, float]:
            top = tops[j % 500]._replace(recv_ts_ns=time.time_ns())  # never stale
            t0 = time.thread_time()
            router.send(top)
            router.flush()
            t1 = time.thread_time()
            worker._step(poller, pull, control, [], header)
            return t1 - t0, time.thread_time() - t1

        for j in range(200):  # every venue seen, the state warm
            one(j)
        best = (float("inf"), 0.0, 0.0)
        for _ in range(args.rounds):  # short rounds, the best kept: the machine is shared
            r = w = 0.0
            for j in range(args.n):
                a, b = one(j)
                r += a
                w += b
            if r + w < best[0]:
                best = (r + w, r, w)
        out: dict[str, Any] = {
            "python": platform.python_version(),
            "prices": worker.stats.prices,
            "us_per_top": {
                "router (send+flush)": round(best[1] / args.n * 1e6, 2),
                "worker (_step)": round(best[2] / args.n * 1e6, 2),
                "total": round(best[0] / args.n * 1e6, 2),
            },
        }
        if args.calls:
            counts: collections.Counter[str] = collections.Counter()

            def prof(frame: Any, event: str, arg: Any) -> None:
                if event == "call":
                    code = frame.f_code
                    counts[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
                elif event == "c_call":
                    counts[f"C:{getattr(arg, '__qualname__', arg)}"] += 1

            n = 1000
            sys.setprofile(prof)
            for j in range(n):
                one(j)
            sys.setprofile(None)
            del counts["C:thread_time"]
            py = sum(v for k, v in counts.items() if not k.startswith("C:"))
            cc = sum(v for k, v in counts.items() if k.startswith("C:"))
            out["calls_per_top"] = {
                "python": round(py / n, 1),
                "c": round(cc / n, 1),
                "top": {k: round(v / n, 2) for k, v in counts.most_common(40)},
            }
        router.close()
        for sock in (pull, control):
            sock.close(0)
        prices.close()
    ctx.term()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
