"""`make bench-quick`: a short table, and the tracked full results left alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_quick_run_never_writes_the_tracked_results_unless_asked(tmp_path: Path) -> None:
    b = bench()
    results = REPO / "bench" / "results"
    assert b.output_path(quick=True, soak=False, out=None) == results / "quick.json"
    assert b.output_path(quick=False, soak=False, out=None) == results / "latest.json"
    assert b.output_path(quick=False, soak=True, out=None) == results / "soak.json"
    assert b.output_path(quick=True, soak=False, out=tmp_path / "x.json") == tmp_path / "x.json"


def test_the_quick_table_is_short_and_has_no_raw_arrays() -> None:
    row = {
        "rate": 1000,
        "p50_us": 466.0,
        "p99_us": 1313.0,
        "engine_p50_us": 220.0,
        "priced": 4432,
        "dropped": 0,
        "cpu_pct": 29.0,
        "cdf_us": [[1.0, 0.1]] * 500,
        "loadgen": {"achieved_per_s": 1000.0, "fell_behind": False},
        "stages": {
            "apply_to_dequeue": {"p50_us": 45.2, "p99_us": 951.0},
            "receive_to_publish": {"p50_us": 321.0, "p99_us": 2682.4},
        },
    }
    result = {
        "replay": {"BINANCE": {"mmengine_us": 25.4}, "X": {"error": "unsupported"}},
        "e2e": [row],
        "sinks": {
            "kafka": {"prices_per_s": 20889, "lag_p50_ms": 10.8, "lag_p99_ms": 59.7},
            "kafka_confluent": None,
        },
        "memory": {"rss_start_mb": 58.7, "rss_end_mb": 59.1},
    }
    table = bench().quick_table(result)
    assert len(table.splitlines()) == 10
    assert "  BINANCE                    25.4" in table
    assert "1,000 msgs/s (achieved 1,000): delivered p50 466 us, p99 1,313 us" in table
    assert "receive_to_publish   p50     321 us  p99   2,682 us" in table
    assert "FELL BEHIND" not in table
    assert "kafka            20,889/s; lag 10.8 / 59.7 ms" in table
    # With the engine's CPU by thread (an engine that reports it): one line more.
    row["thread_cpu"] = {"venue_threads_us_per_frame": 55.9, "pricing_us_per_price": 390.2}
    table = bench().quick_table(result)
    assert len(table.splitlines()) == 11
    assert "    CPU: venue threads 55.9 us a frame, pricing 390.2 us a Price" in table
    assert "[" not in table and "{" not in table
