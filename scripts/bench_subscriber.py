"""A separate subscriber process for the end-to-end benchmark (its own main thread).

It subscribes to an engine's IPC `prices` stream for a fixed time and measures, per Price,
now - recv_ts_ns (frame received by the venue thread -> Price delivered here) and the
engine's own priced_ts_ns - recv_ts_ns. Messages that were already queued when it started
are discarded first. Prints one JSON object.

    python scripts/bench_subscriber.py ENDPOINT SECONDS
"""

from __future__ import annotations

import json
import sys
import time

import zmq

from mmengine.codec import Codec


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "p999": None, "max": None}
    s = sorted(values)
    n = len(s) - 1
    return {
        "p50": s[int(0.5 * n)],
        "p99": s[int(0.99 * n)],
        "p999": s[int(0.999 * n)],
        "max": s[-1],
    }


def cdf(values: list[float]) -> list[tuple[float, float]]:
    """(quantile, µs) at 1 % steps plus the tail, for a CDF plot."""
    if not values:
        return []
    s = sorted(values)
    n = len(s) - 1
    qs = [i / 100 for i in range(1, 100)] + [0.995, 0.999, 1.0]
    return [(q, s[int(q * n)]) for q in qs]


def main() -> None:
    endpoint, seconds = sys.argv[1], float(sys.argv[2])
    codec = Codec("price.avsc")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1_000_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"price.")
    sub.connect(endpoint)
    time.sleep(0.3)
    while sub.poll(0):  # drop what queued before the window
        sub.recv_multipart()
    delivered: list[float] = []
    engine: list[float] = []
    seqs: dict[str, int] = {}
    gaps = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not sub.poll(50):
            continue
        _topic, payload = sub.recv_multipart()
        now = time.time_ns()
        rec = codec.decode(payload)
        delivered.append((now - rec["recv_ts_ns"]) / 1000)
        engine.append((rec["priced_ts_ns"] - rec["recv_ts_ns"]) / 1000)
        last = seqs.get(rec["instrument"])
        if last is not None and rec["seq"] != last + 1:
            gaps += rec["seq"] - last - 1
        seqs[rec["instrument"]] = rec["seq"]
    sub.close(0)
    ctx.term()
    print(
        json.dumps(
            {
                "received": len(delivered),
                "missed_seq": gaps,  # Prices published but not seen here (PUB/SUB drops)
                "delivered_us": quantiles(delivered),
                "engine_us": quantiles(engine),
                "cdf_us": cdf(delivered),
            }
        )
    )


if __name__ == "__main__":
    main()
