"""Nothing dies silently, nothing hangs (issue 16): every engine thread is supervised, a
death is noticed within a second, logged by name, counted in status and metrics, and
restarted or ends the engine non-zero; shut-down is bounded and names what is still alive.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmengine.cli.top import Rates, render
from mmengine.config import parse_config
from mmengine.dev.simulator import start_simulator
from mmengine.engine import Engine
from mmengine.ops.status import snapshot
from mmengine.venues.transport import VenueConnection
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT", "ETH-USDT"]


def config(sim: Any, run_dir: Path, **engine: Any) -> dict[str, Any]:
    return {
        "engine": {"run_dir": str(run_dir), **engine},
        "venues": [
            {
                "name": "binance",
                "protocol": "binance",
                "url": sim.ws_url,
                "rest_url": sim.rest_url,
                "instruments": INSTRUMENTS,
            }
        ],
        "instruments": [
            {"name": i, "sources": [{"venue": "binance"}], "min_venues": 1} for i in INSTRUMENTS
        ],
    }


def thread(engine: Engine, name: str) -> dict[str, Any]:
    return next(t for t in snapshot(engine)["threads"] if t["name"] == name)


def live_books(engine: Engine) -> int:
    return sum(b.state.value == "LIVE" for b in engine.connections[0].venue.books.values())


@pytest.fixture
def sim() -> Iterator[Any]:
    with start_simulator("binance", instruments=INSTRUMENTS, rate=100, seed=5) as s:
        yield s


def test_a_dead_venue_thread_is_noticed_logged_counted_and_restarted(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    engine = Engine(parse_config(config(sim, tmp_path / "run", metrics_port=port)))
    engine.start()
    try:
        wait_for(lambda: live_books(engine) == 2, 10, "LIVE books")
        first = engine.connections[0]
        frames_before = first.venue.venue_stats.frames

        def die(_now_ns: int) -> None:
            raise SystemExit("injected")  # Python's default thread hook drops this silently

        first.venue.on_tick = die  # type: ignore[method-assign]
        wait_for(lambda: not first.is_alive(), 5, "the venue thread to die")
        dead_at = time.monotonic()
        wait_for(lambda: thread(engine, "venue-binance")["deaths"] == 1, 2, "the death")
        assert time.monotonic() - dead_at < 1.0  # noticed within a second
        wait_for(lambda: engine.connections[0] is not first, 2, "a restart")
        second = engine.connections[0]
        assert second.is_alive() and second.name == "venue-binance"
        wait_for(lambda: live_books(engine) == 2, 10, "LIVE books again")
        report = thread(engine, "venue-binance")
        assert report == {
            "name": "venue-binance",
            "kind": "venue",
            "alive": True,
            "policy": "restart",
            "deaths": 1,
            "restarts": 1,
            "last_error": "SystemExit: injected",
        }
        # Counters carry over: the new thread's venue counts on from the old one's.
        assert second.venue.venue_stats is first.venue.venue_stats
        assert second.venue.venue_stats.frames >= frames_before
        assert second.venue.venue_stats.reconnects >= 1
        died = [r for r in caplog.records if "thread venue-binance died" in r.getMessage()]
        assert died and died[0].levelno == logging.ERROR
        snap = snapshot(engine)
        assert snap["thread_deaths"] == 1 and snap["thread_restarts"] == 1
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = metrics.decode()
        assert 'mmengine_thread_deaths_total{kind="venue",thread="venue-binance"} 1.0' in text
        assert 'mmengine_thread_restarts_total{kind="venue",thread="venue-binance"} 1.0' in text
        assert 'mmengine_thread_alive{kind="pricing",thread="pricing-0"} 1.0' in text
        assert 'mmengine_ipc_dropped_total{stream="prices"} 0.0' in text
        # `mmengine top` shows it.
        from rich.console import Console

        console = Console(width=160, record=True)
        console.print(render(snap, Rates(), {}))
        assert "1 thread death(s): venue-binance" in console.export_text()
    finally:
        assert engine.stop() == 0


def test_an_exception_in_a_thread_is_logged_with_its_traceback(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(parse_config(config(sim, tmp_path / "run")))
    engine.start()
    try:
        control = engine.control
        assert control is not None

        def broken(*_args: Any) -> Any:
            raise RuntimeError("injected control failure")

        control.answer = broken  # type: ignore[method-assign]
        import json

        import zmq

        ctx = zmq.Context()
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(engine.endpoint("control"))
        req.send(json.dumps({"op": "set_position", "instrument": "BTC-USDT", "qty": 1}).encode())
        wait_for(lambda: thread(engine, "control")["restarts"] == 1, 3, "control restarted")
        assert "RuntimeError: injected control failure" in thread(engine, "control")["last_error"]
        raised = [r for r in caplog.records if "thread control raised" in r.getMessage()]
        assert raised and raised[0].exc_info is not None
        # The new control thread answers.
        req.close()
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(engine.endpoint("control"))
        req.send(json.dumps({"op": "set_position", "instrument": "BTC-USDT", "qty": 1}).encode())
        assert req.poll(3000) and json.loads(req.recv())["ok"] is True
        req.close()
        ctx.term()
    finally:
        assert engine.stop() == 0


DRIVER = """
import sys, time
from mmengine.pricing import worker

_drain = worker.PricingWorker._drain
_started = time.monotonic()


def dying(self, pull):
    if self.k == 0 and time.monotonic() - _started > 2.0:
        raise SystemExit("injected")  # past every guard of the loop
    return _drain(self, pull)


worker.PricingWorker._drain = dying
from mmengine.cli import main

sys.argv = ["mmengine", "run", "--config", sys.argv[1]]
main()
"""


def test_a_pricing_worker_death_ends_the_engine_with_exit_1(sim: Any, tmp_path: Path) -> None:
    """A worker binds an inproc endpoint the venue threads are connected to, which a new
    thread could not take over: crash-only, the engine stops by itself and exits 1."""
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(config(sim, tmp_path / "run", pricing_workers=1)))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(driver), str(path)],
        capture_output=True,
        text=True,
        timeout=40,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert time.monotonic() - started < 25
    assert "thread pricing-0 died" in proc.stderr
    assert "engine stopped: thread pricing-0 died" in proc.stderr
    assert not (tmp_path / "run" / "prices").exists()  # it still cleaned its run dir


def test_shutdown_is_bounded_and_names_the_threads_still_alive(
    sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def wedged(self: VenueConnection, _ws: Any) -> None:
        release.wait(60)  # a venue thread stuck in a call that never returns

    monkeypatch.setattr(VenueConnection, "_read_loop", wedged)
    engine = Engine(parse_config(config(sim, tmp_path / "run", shutdown_timeout_s=3)))
    engine.start()
    wait_for(lambda: engine.connections[0].connected, 5, "the venue to connect")
    result: list[int] = []
    stopper = threading.Thread(target=lambda: result.append(engine.stop()), daemon=True)
    started = time.monotonic()
    stopper.start()
    stopper.join(10)
    try:
        assert not stopper.is_alive(), "stop() did not return (ctx.term() blocked)"
        assert time.monotonic() - started < 3 + 1.5
        assert result == [1]
        alive = [r.getMessage() for r in caplog.records if "still alive" in r.getMessage()]
        assert alive and "venue-binance" in alive[0]
        assert not (tmp_path / "run" / "endpoints.json").exists()
    finally:
        release.set()
