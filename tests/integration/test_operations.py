"""Operating a running engine: Prometheus metrics, the status stream and `mmengine top`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
import zmq

from mmengine.dev.simulator import start_simulator
from tests.conftest import free_port

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT", "ETH-USDT"]


def config(sim: Any, metrics_port: int) -> dict[str, Any]:
    return {
        "engine": {"metrics_port": metrics_port},
        "venues": [
            {
                "name": "binance",
                "protocol": "binance",
                "url": sim.ws_url,
                "rest_url": sim.rest_url,
                "instruments": INSTRUMENTS,
                "audit": True,
            }
        ],
        "instruments": [
            {"name": i, "sources": [{"venue": "binance"}], "min_venues": 1} for i in INSTRUMENTS
        ],
    }


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("mmengine_"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_metrics_status_stream_and_top(engine_factory: Any) -> None:
    port = free_port()
    with start_simulator("binance", instruments=INSTRUMENTS, rate=200, seed=51) as sim:
        engine = engine_factory(config(sim, port))
        time.sleep(2.5)
        first = scrape(port)
        time.sleep(1.2)
        second = scrape(port)
        endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"status")
        sub.connect(endpoints["status"]["endpoint"])
        assert sub.poll(5000), "no status message within 5 s"
        status = json.loads(sub.recv_multipart()[1])
        sub.close(0)
        ctx.term()
        top = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmengine.cli",
                "top",
                "--run-dir",
                str(engine.run_dir),
                "--once",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "COLUMNS": "140"},
        )
        assert engine.stop() == 0, engine.output
    book = '{instrument="BTC-USDT",venue="binance"}'
    assert (
        second[f"mmengine_book_messages_total{book}"] > first[f"mmengine_book_messages_total{book}"]
    )
    assert second['mmengine_book_state{instrument="BTC-USDT",state="LIVE",venue="binance"}'] == 1
    assert second[f"mmengine_book_audit_agreements_total{book}"] > 0
    assert second[f"mmengine_book_audit_disagreements_total{book}"] == 0
    assert second['mmengine_venue_connected{venue="binance"}'] == 1
    prices = sum(v for k, v in second.items() if k.startswith("mmengine_pricing_prices_total"))
    counted = sum(
        v for k, v in second.items() if k.startswith("mmengine_pricing_latency_seconds_count")
    )
    assert prices > 100 and counted == prices  # every price lands in the latency histogram
    # Counters never go backwards between scrapes.
    for key, value in first.items():
        if key.split("{")[0].endswith("_total"):
            assert second[key] >= value, key
    assert [v["name"] for v in status["venues"]] == ["binance"]
    assert {i["instrument"] for i in status["instruments"]} == set(INSTRUMENTS)
    assert top.returncode == 0, top.stderr
    for needle in ("venues", "binance", "BTC-USDT", "ETH-USDT", "pricing", "quoting"):
        assert needle in top.stdout, needle


def test_metrics_port_in_use_is_a_clear_start_error(tmp_path: Any) -> None:
    import socket

    import yaml

    with socket.socket() as blocker, start_simulator("binance", instruments=INSTRUMENTS) as sim:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        cfg = config(sim, port)
        cfg["engine"]["run_dir"] = str(tmp_path / "run")
        # A sink too: its writer thread must not start (nor log) before the port check.
        cfg["outputs"] = {"kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"}}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        run = subprocess.run(
            [sys.executable, "-m", "mmengine.cli", "run", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in run.stderr
    assert not (tmp_path / "run" / "prices").exists()
    # Every check that can refuse a start comes before any thread: no line from another.
    logged = [line for line in run.stderr.splitlines() if line[:4].isdigit()]
    assert all(" MainThread " in line for line in logged), run.stderr
