"""Tick-to-quote latency by stage (a shared base: no thread of its own, no imports from the
data path). The thread that owns a `StageLatency` adds to it; status and metrics read it.

Every Price a BookTop triggered is timed at each stage boundary, as integer nanoseconds of
`time.time_ns()` (one clock for every thread, and for the subscriber processes on the same
machine):

    received   the venue thread read the frame (`BookTop.recv_ts_ns`)
    applied    the book driver applied it and handed the top to the router
    dequeued   the pricing worker took that BookTop off its inproc queue
    priced     the model decided (`Price.priced_ts_ns`)
    encoded    the Avro payload was built
    published  the IPC send returned (the Price is on its way to subscribers)

The sinks time one more interval each, from `priced` to the broker's acknowledgement or
the database's commit. `STAGES` names each interval; `receive_to_publish` is the whole
engine path (its percentiles are not the sum of the stages' percentiles).

Adding a sample is plain list arithmetic (no lock, no logging): the owner thread is the only
writer; readers copy the lists (a C-level copy under the GIL) and may see one sample's
stages half-counted, never a torn number.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

# Bucket upper bounds (µs): steps of 1.5-2x from 5 µs to 10 s, so that a percentile read off
# the buckets (interpolated inside one) is within a bucket's width of the true value.
STAGE_BOUNDS_US: tuple[float, ...] = (
    5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 20_000, 50_000,
    100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000,
)  # fmt: skip

PRICING_STAGES = (
    "receive_to_apply",  # venue thread: parse, verify and apply the frame
    "apply_to_dequeue",  # the inproc hop and the pricing worker's wake-up
    "dequeue_to_price",  # drain the rest of the queue, then the model
    "price_to_encode",  # build the Price and its Avro payload
    "encode_to_publish",  # the IPC send
    "receive_to_publish",  # the whole engine path, frame to IPC
)
KAFKA_STAGE = "price_to_kafka_ack"
POSTGRES_STAGE = "price_to_postgres_commit"
STAGES = (*PRICING_STAGES, KAFKA_STAGE, POSTGRES_STAGE)
WINDOW = 2048  # recent samples kept per owner, for real percentiles in `mmengine top`


class StageLatency:
    """Histograms (exact counts per bucket of `STAGE_BOUNDS_US`, and sums) of a fixed list
    of stages, and the latest `WINDOW` samples of each, for one owner thread."""

    __slots__ = ("counts", "names", "recent", "sums_us")

    def __init__(self, names: Sequence[str], window: int = WINDOW) -> None:
        self.names = tuple(names)
        self.counts = [[0] * (len(STAGE_BOUNDS_US) + 1) for _ in self.names]
        self.sums_us = [0.0] * len(self.names)
        # One tuple per sample (one value per stage): one append per Price.
        self.recent: deque[tuple[float, ...]] = deque(maxlen=window)

    def add(self, values_us: tuple[float, ...]) -> None:
        """One sample: a value per stage, in `names` order (µs)."""
        counts = self.counts
        sums = self.sums_us
        bounds = STAGE_BOUNDS_US
        for i, us in enumerate(values_us):
            counts[i][bisect_left(bounds, us)] += 1
            sums[i] += us
        self.recent.append(values_us)

    def report(self) -> dict[str, dict[str, Any]]:
        """Per stage: bucket counts, sum (µs) and the recent window's values (copies)."""
        recent = list(self.recent)  # one C call under the GIL: a consistent copy
        return {
            name: {
                "counts": list(self.counts[i]),
                "sum_us": self.sums_us[i],
                "recent_us": [s[i] for s in recent],
            }
            for i, name in enumerate(self.names)
        }


def merge_reports(reports: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Several owners' reports (pricing workers, writers) as one per stage, in STAGES order:
    counts and sums added, recent windows joined."""
    merged: dict[str, dict[str, Any]] = {}
    for report in reports:
        for name, r in report.items():
            into = merged.setdefault(
                name, {"counts": [0] * (len(STAGE_BOUNDS_US) + 1), "sum_us": 0.0, "recent_us": []}
            )
            into["counts"] = [a + b for a, b in zip(into["counts"], r["counts"], strict=True)]
            into["sum_us"] += r["sum_us"]
            into["recent_us"].extend(r["recent_us"])
    order = {name: i for i, name in enumerate(STAGES)}
    return dict(sorted(merged.items(), key=lambda kv: order.get(kv[0], len(order))))


def nearest_rank(samples: Sequence[float], q: float) -> float | None:
    """The q-quantile of samples by nearest rank; None without any."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def nearest_ranks(samples: Sequence[float], qs: Sequence[float]) -> list[float | None]:
    """`nearest_rank` of each q in `qs`, sorting the samples once (the status thread sorts
    every stage's window each second, holding the GIL while `sorted` runs)."""
    if not samples:
        return [None for _ in qs]
    ordered = sorted(samples)
    last = len(ordered) - 1
    return [ordered[min(last, int(q * len(ordered)))] for q in qs]


def bucket_quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (µs) read off bucket counts, interpolated linearly inside the bucket
    that holds it (as Prometheus' histogram_quantile does); None without samples. A quantile
    in the last, open bucket is reported as its lower bound."""
    total = sum(counts)
    if total == 0:
        return None
    target = q * total
    running = 0
    for i, n in enumerate(counts):
        if n and running + n >= target:
            if i >= len(STAGE_BOUNDS_US):
                return float(STAGE_BOUNDS_US[-1])
            lower = STAGE_BOUNDS_US[i - 1] if i else 0.0
            return lower + (STAGE_BOUNDS_US[i] - lower) * (target - running) / n
        running += n
    return float(STAGE_BOUNDS_US[-1])


def window_summary(report: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage: count, mean, and p50/p99 of the recent window (µs), for `mmengine top`."""
    out = {}
    for name, r in report.items():
        count = sum(r["counts"])
        p50, p99 = nearest_ranks(r["recent_us"], (0.5, 0.99))
        out[name] = {
            "count": count,
            "mean_us": r["sum_us"] / count if count else None,
            "p50_us": p50,
            "p99_us": p99,
        }
    return out
