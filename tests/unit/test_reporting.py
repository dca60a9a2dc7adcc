"""Status and metrics read a small reporting protocol, not the engine (issue 13, item 5):
no import of `mmengine.engine`, and a snapshot of plain objects that only have what the
protocol names."""

from __future__ import annotations

import ast
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

import mmengine
from mmengine.book.sync import InstrumentStats, VenueStats
from mmengine.bus import IpcStats
from mmengine.model import BookState, Price
from mmengine.ops.metrics import EngineCollector
from mmengine.ops.status import snapshot
from mmengine.pricing.control import ControlStats
from mmengine.pricing.worker import WorkerStats

PACKAGE = Path(mmengine.__file__).parent


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def test_status_and_metrics_do_not_import_the_engine() -> None:
    for name in ("status.py", "metrics.py"):
        assert "mmengine.engine" not in imported_modules(PACKAGE / "ops" / name), name


class Reporting:
    """Only what `mmengine.ops.status.Reporting` names: no Engine anywhere."""

    def __init__(self) -> None:
        book = SimpleNamespace(state=BookState.LIVE, recv_ts_ns=1_000)
        venue = SimpleNamespace(
            name="binance",
            protocol="binance",
            venue_stats=VenueStats(
                frames=10, book_frames=9, skipped=Counter(bad_json=1), requests_delayed=6
            ),
            stats={"BTC-USDT": InstrumentStats(messages=9)},
            books={"BTC-USDT": book},
        )
        self.epoch = 7
        self.started_ns = 1
        self.connections = [SimpleNamespace(connected=True, venue=venue)]
        price = Price("BTC-USDT", 7, 3, 100.0, 99.0, 1.0, 101.0, 1.0, priced_ts_ns=2_000)
        stats = WorkerStats(inputs=9, prices=3, timed=1)
        self.workers = [SimpleNamespace(k=0, stats=stats, last_price={"BTC-USDT": price})]
        self.writers = [SimpleNamespace(sink_name="kafka", counters=lambda: {"acknowledged": 3})]
        self.publishers = [SimpleNamespace(stream="prices", stats=IpcStats(sent=5, dropped=2))]
        self.control = SimpleNamespace(stats=ControlStats(requests=2, accepted=1, refused=1))

    def thread_reports(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "venue-binance",
                "kind": "venue",
                "alive": True,
                "policy": "restart",
                "deaths": 1,
                "restarts": 1,
                "last_error": "SystemExit",
            }
        ]

    def router_counters(self) -> dict[str, dict[str, int]]:
        return {"binance": {"deferred": 4, "superseded": 1, "waiting": 3}}


def test_a_snapshot_and_the_metrics_from_the_protocol_alone() -> None:
    source = Reporting()
    snap = snapshot(source, now_ns=2_000_000_000)
    [venue] = snap["venues"]
    assert venue["frames"] == 10 and venue["live"] == 1 and venue["deferred_tops"] == 4
    assert venue["superseded_tops"] == 1 and venue["waiting_tops"] == 3
    assert venue["requests_delayed"] == 6
    assert snap["workers"][0]["timed"] == 1
    assert snap["instruments"][0]["instrument"] == "BTC-USDT"
    assert snap["ipc"] == [{"name": "prices", "sent": 5, "dropped": 2}]
    assert snap["control"] == {"requests": 2, "accepted": 1, "refused": 1, "errors": 0}
    assert snap["thread_deaths"] == 1 and snap["thread_restarts"] == 1
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(source))
    text = generate_latest(registry).decode()
    for line in (
        'mmengine_ipc_dropped_total{stream="prices"} 2.0',
        'mmengine_thread_deaths_total{kind="venue",thread="venue-binance"} 1.0',
        'mmengine_venue_deferred_tops_total{venue="binance"} 4.0',
        'mmengine_venue_superseded_tops_total{venue="binance"} 1.0',
        'mmengine_venue_waiting_tops{venue="binance"} 3.0',
        'mmengine_venue_requests_delayed_total{venue="binance"} 6.0',
        'mmengine_pricing_timed_prices_total{worker="0"} 1.0',
        'mmengine_control_requests_total{outcome="refused"} 1.0',
        'mmengine_sink_acknowledged_total{sink="kafka"} 3.0',
    ):
        assert line in text, line


def test_each_threads_cpu_is_in_the_snapshot_and_the_metrics() -> None:
    """A thread that burns a known CPU time (its own clock, `time.thread_time`) shows it by
    name; a thread that sleeps shows next to none; an ended thread is gone."""
    release = threading.Event()

    def burn(seconds: float) -> None:
        while time.thread_time() < seconds:
            pass
        release.wait(10)

    burner = threading.Thread(target=burn, args=(0.3,), name="test-burner")
    sleeper = threading.Thread(target=release.wait, args=(10,), name="test-sleeper")
    unnamed = threading.Thread(target=release.wait, args=(10,))  # "Thread-N (wait)"
    burner.start()
    sleeper.start()
    unnamed.start()
    try:
        deadline = time.monotonic() + 10
        # /proc counts whole clock ticks (10 ms) of the same clock: two ticks of slack.
        while snapshot(Reporting())["thread_cpu_s"].get("test-burner", 0.0) < 0.28:
            assert time.monotonic() < deadline, "the burner's CPU never showed"
            time.sleep(0.05)
        snap = snapshot(Reporting())
        cpu = snap["thread_cpu_s"]
        assert 0.28 <= cpu["test-burner"] <= 0.5, cpu
        assert cpu["test-sleeper"] <= 0.02, cpu
        assert not [name for name in cpu if name.startswith("Thread-")], cpu  # short-lived
        registry = CollectorRegistry(auto_describe=False)
        registry.register(EngineCollector(Reporting()))
        text = generate_latest(registry).decode()
        [line] = [ln for ln in text.splitlines() if 'thread="test-burner"' in ln]
        assert line.startswith("mmengine_thread_cpu_seconds_total"), line
        assert float(line.split()[-1]) >= 0.28
    finally:
        release.set()
        burner.join()
        sleeper.join()
        unnamed.join()
    assert "test-burner" not in snapshot(Reporting())["thread_cpu_s"]
