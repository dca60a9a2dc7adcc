"""Stage latency histograms (mmengine.latency): exact bucket counts, percentiles read off
them, and what status, metrics and `top` show of them."""

from __future__ import annotations

import random
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from mmengine.cli.top import Rates, render
from mmengine.latency import (
    KAFKA_STAGE,
    PRICING_STAGES,
    STAGE_BOUNDS_US,
    StageLatency,
    bucket_quantile,
    merge_reports,
    nearest_rank,
    nearest_ranks,
)
from mmengine.ops.metrics import EngineCollector
from mmengine.ops.status import snapshot
from mmengine.pricing.worker import WorkerStats
from tests.unit.test_reporting import Reporting


def test_buckets_count_every_sample_and_quantiles_fall_in_the_right_bucket() -> None:
    rng = random.Random(5)
    samples = [rng.lognormvariate(4.5, 1.0) for _ in range(20_000)]  # around 90 µs
    hist = StageLatency(("x",))
    for us in samples:
        hist.add((us,))
    counts = hist.report()["x"]["counts"]
    assert sum(counts) == len(samples)
    assert counts[0] == sum(us <= STAGE_BOUNDS_US[0] for us in samples)
    for q in (0.5, 0.9, 0.99):
        exact = nearest_rank(samples, q)
        assert exact is not None
        got = bucket_quantile(counts, q)
        assert got is not None
        # Within the bucket holding the true value.
        i = next(i for i, b in enumerate(STAGE_BOUNDS_US) if exact <= b)
        lower = STAGE_BOUNDS_US[i - 1] if i else 0.0
        assert lower <= got <= STAGE_BOUNDS_US[i], (q, exact, got)
    assert bucket_quantile([0] * (len(STAGE_BOUNDS_US) + 1), 0.5) is None


def test_reports_merge_across_workers_and_sinks_in_path_order() -> None:
    a, b = StageLatency(PRICING_STAGES), StageLatency(PRICING_STAGES)
    a.add((1, 2, 3, 4, 5, 15))
    b.add((10, 20, 30, 40, 50, 150))
    kafka = StageLatency((KAFKA_STAGE,))
    kafka.add((5000,))
    merged = merge_reports([kafka.report(), a.report(), b.report()])
    assert list(merged) == [*PRICING_STAGES, KAFKA_STAGE]
    assert sum(merged["receive_to_publish"]["counts"]) == 2
    assert merged["receive_to_publish"]["sum_us"] == 165
    assert sorted(merged["apply_to_dequeue"]["recent_us"]) == [2, 20]


def test_status_metrics_and_top_show_the_stages() -> None:
    source = Reporting()
    stats = WorkerStats(inputs=9, prices=3)
    stats.stages.add((40.0, 60.0, 30.0, 20.0, 10.0, 160.0))
    source.workers = [SimpleNamespace(k=0, stats=stats, last_price={})]
    writer_stages = StageLatency((KAFKA_STAGE,))
    writer_stages.add((12_000.0,))
    source.writers = [SimpleNamespace(sink_name="kafka", counters=lambda: {}, stages=writer_stages)]
    snap = snapshot(source, now_ns=2_000_000_000)
    assert snap["stages"]["receive_to_publish"]["p50_us"] == 160.0
    assert snap["stages"][KAFKA_STAGE]["count"] == 1
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(source))
    text = generate_latest(registry).decode()
    assert 'mmengine_stage_latency_seconds_count{stage="receive_to_publish"} 1.0' in text
    assert (
        'mmengine_stage_latency_seconds_bucket{le="0.0002",stage="receive_to_publish"} 1.0' in text
    )
    assert (
        'mmengine_stage_latency_seconds_bucket{le="0.00015",stage="receive_to_publish"} 0.0' in text
    )
    assert 'mmengine_stage_latency_seconds_sum{stage="price_to_kafka_ack"} 0.012' in text
    console = Console(width=100, record=True)
    console.print(render(snap, Rates(), width=100))
    screen = console.export_text()
    assert "apply_to_dequeue" in screen and "price_to_kafka_ack" in screen
    line = next(ln for ln in screen.splitlines() if "receive_to_publish" in ln)
    assert "160" in line


def test_nearest_ranks_sorts_once_and_agrees_with_nearest_rank() -> None:
    rng = random.Random(9)
    for n in (0, 1, 2, 99, 100, 2048):
        samples = [rng.uniform(0, 1000) for _ in range(n)]
        qs = (0.0, 0.5, 0.99, 1.0)
        assert nearest_ranks(samples, qs) == [nearest_rank(samples, q) for q in qs]
