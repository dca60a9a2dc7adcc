"""The engine delivering to a real tansu broker: Binance simulator -> engine (venue thread,
pricing workers, IPC, Kafka writer) -> topic, read back with kafka-python, the official
`avro` package and `mmengine kafka-tail`."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmengine.config import parse_config
from mmengine.dev.simulator import start_simulator
from mmengine.engine import Engine
from mmengine.sinks.spool import FRAME
from tests.conftest import free_port
from tests.integration.conftest import Subscriber
from tests.integration.kafka_support import (
    Broker,
    OfficialDecoder,
    broker,  # noqa: F401 (fixture)
    consume_all,
)

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT", "ETH-USDT"]


def engine_config(sim: Any, run_dir: Path, bootstrap: str, topic: str) -> dict[str, Any]:
    return {
        "engine": {"pricing_workers": 2, "run_dir": str(run_dir)},
        "venues": [
            {
                "name": "binance",
                "protocol": "binance",
                "url": sim.ws_url,
                "rest_url": sim.rest_url,
                "instruments": INSTRUMENTS,
            }
        ],
        # One venue: quoting from it must be asked for (else every Price is halted, empty).
        "instruments": [
            {"name": i, "sources": [{"venue": "binance"}], "min_venues": 1} for i in INSTRUMENTS
        ],
        "outputs": {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topic": topic,
                "partitions": 3,
                "drain_timeout_s": 15,
            }
        },
        "limits": {"reconnect_max_s": 1.0, "stale_after_s": 60},
    }


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.stop()


class IpcCollector(threading.Thread):
    """The test's own SUB on the engine's prices endpoint, collecting in the background."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sub = Subscriber(endpoint)
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for _, price in self.sub.collect("price.avsc", seconds=0.2):
                self.got.append((time.monotonic(), price))

    def finish(self) -> None:
        self.halt.set()
        self.join()
        self.sub.close()


def topic_prices(bootstrap: str, topic: str, expect: int) -> dict[str, list[dict[str, Any]]]:
    """instrument -> decoded Prices in topic order, each (epoch, seq) once."""
    out: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, int, int]] = set()
    official_decode = OfficialDecoder()
    for r in consume_all(bootstrap, topic, expect=expect):
        price = official_decode(r.value)
        key = (price["instrument"], price["epoch"], price["seq"])
        if key not in seen:
            seen.add(key)
            out.setdefault(price["instrument"], []).append(price)
    return out


def test_every_ipc_price_reaches_the_topic_once_in_order_and_kafka_tail_shows_it(
    broker: Broker,  # noqa: F811
    engines: list[Engine],
    tmp_path: Path,
) -> None:
    with start_simulator("binance", instruments=INSTRUMENTS, rate=300, seed=11) as sim:
        cfg = parse_config(engine_config(sim, tmp_path / "run", broker.bootstrap, "prices.e2e"))
        engine = Engine(cfg)
        engines.append(engine)
        engine.start()
        endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
        assert endpoints["kafka"]["bootstrap"] == broker.bootstrap
        assert endpoints["kafka"]["topic"] == "prices.e2e"
        ipc = IpcCollector(endpoints["ipc"]["prices"]["endpoint"])
        ipc.start()
        time.sleep(3)
        engine.stop()
        ipc.finish()
    writer = engine.writers[0]
    c = writer.counters()
    priced = sum(w.stats.prices for w in engine.workers)
    assert priced > 100  # the point is that every one of them reaches the topic
    assert c["received"] == priced and c["acknowledged"] == priced and c["pending"] == 0
    assert sum(w.stats.sink_dropped for w in engine.workers) == 0

    got = topic_prices(broker.bootstrap, "prices.e2e", expect=priced)
    assert set(got) == set(INSTRUMENTS)
    for inst, rows in got.items():
        assert [p["seq"] for p in rows] == list(range(1, len(rows) + 1)), inst
    assert sum(len(rows) for rows in got.values()) == priced
    # Every Price seen on IPC is on the topic, identical.
    on_topic = {(p["instrument"], p["seq"]): p for rows in got.values() for p in rows}
    for _, price in ipc.got:
        assert on_topic[(price["instrument"], price["seq"])] == price
    # A SUB misses what was published before its subscription reached the engine (a loaded
    # machine took 0.4 s once); from its first Price of an instrument to its last it misses
    # none.
    assert len(ipc.got) > 0.5 * priced
    for inst in INSTRUMENTS:
        seqs = [p["seq"] for _, p in ipc.got if p["instrument"] == inst]
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), inst
    # ...and they are quoted: the ladders that went through Kafka are not empty.
    quoted = [p for p in on_topic.values() if not p["halted"]]
    assert len(quoted) >= 0.95 * priced
    assert all(p["bids"] and p["asks"] for p in quoted)

    # The CLI reads the same, deduplicated, as JSON lines.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmengine.cli",
            "kafka-tail",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            "prices.e2e",
            "--from-beginning",
            "--json",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == priced
    assert "0 duplicates dropped, 0 gaps" in run.stderr


def test_broker_paused_20s_ipc_keeps_flowing_spool_grows_and_drains(
    broker: Broker,  # noqa: F811
    engines: list[Engine],
    tmp_path: Path,
) -> None:
    broker.create_topic("prices.pause", 3)
    with start_simulator("binance", instruments=INSTRUMENTS, rate=400, seed=12) as sim:
        cfg = parse_config(engine_config(sim, tmp_path / "run", broker.bootstrap, "prices.pause"))
        engine = Engine(cfg)
        engines.append(engine)
        engine.start()
        writer = engine.writers[0]
        endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
        ipc = IpcCollector(endpoints["ipc"]["prices"]["endpoint"])
        ipc.start()
        time.sleep(2)
        assert writer.stats.acknowledged > 200
        broker.pause()
        paused_at = time.monotonic()
        peak = 0
        while time.monotonic() - paused_at < 20:
            time.sleep(0.5)
            peak = max(peak, writer.counters()["spool_bytes"])
        acked_during = writer.stats.acknowledged
        broker.resume()
        resumed_at = time.monotonic()
        time.sleep(3)
        engine.stop()
        ipc.finish()
    c = writer.counters()
    priced = sum(w.stats.prices for w in engine.workers)
    # Pricing and IPC never stalled: Prices kept arriving on IPC through the pause, at
    # about the pace before and after it.
    in_pause = [t for t, _ in ipc.got if paused_at + 1 < t < resumed_at - 1]
    before = [t for t, _ in ipc.got if t < paused_at]
    # Relative to the pace before the pause, so a loaded machine does not fail the test.
    pace_before = len(before) / (before[-1] - before[0])
    pace_during = len(in_pause) / (in_pause[-1] - in_pause[0])
    assert pace_during > 0.5 * pace_before, (pace_during, pace_before)
    gaps = [b - a for a, b in itertools.pairwise(in_pause)]
    assert max(gaps) < 1.0
    assert sum(w.stats.sink_dropped for w in engine.workers) == 0
    # The spool grew on disk while the broker was away, then drained: nothing lost.
    assert c["away_episodes"] >= 1 and peak > 200_000 and c["spooled"] > 5_000, c
    assert c["spool_bytes"] == 0 and c["pending"] == 0 and c["dropped"] == 0, c
    assert acked_during < c["acknowledged"] == c["received"] == priced
    assert list((tmp_path / "run" / "spool" / "kafka").glob("seg-*")) == []
    got = topic_prices(broker.bootstrap, "prices.pause", expect=priced)
    for inst, rows in got.items():
        assert [p["seq"] for p in rows] == list(range(1, len(rows) + 1)), inst
    assert sum(len(rows) for rows in got.values()) == priced


def test_engine_sigkilled_mid_flow_restart_delivers_its_spool_and_drops_a_torn_record(
    broker: Broker,  # noqa: F811
    engines: list[Engine],
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    with start_simulator("binance", instruments=INSTRUMENTS, rate=400, seed=13) as sim:
        # The first engine's broker is away (nothing listens there): what it prices goes
        # to its spool on disk. It is killed with SIGKILL mid-flow.
        dead = f"127.0.0.1:{free_port()}"
        doc = engine_config(sim, tmp_path / "run1", dead, "prices.crash")
        doc["limits"]["spool_dir"] = str(spool_dir)
        config_path = tmp_path / "engine1.yaml"
        config_path.write_text(yaml.safe_dump(doc))
        child = subprocess.Popen(
            [sys.executable, "-m", "mmengine.cli", "run", "--config", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            endpoints = tmp_path / "run1" / "endpoints.json"
            deadline = time.monotonic() + 20
            while not endpoints.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            first_epoch = json.loads(endpoints.read_text())["epoch"]

            def spooled() -> int:
                return sum(p.stat().st_size for p in (spool_dir / "kafka").glob("seg-*"))

            while spooled() < 150_000 and time.monotonic() < deadline:
                time.sleep(0.05)
            child.kill()
        finally:
            child.kill()
            child.wait(timeout=10)
        # A crash in the middle of an append leaves half a frame at the end of a segment.
        last = sorted((spool_dir / "kafka").glob("seg-*.spool"))[-1]
        with open(last, "ab") as f:
            f.write(FRAME.pack(300, 12345) + b"\xc3\x01half a Price")

        # The same engine again, same spool dir, the broker reachable now.
        doc = engine_config(sim, tmp_path / "run2", broker.bootstrap, "prices.crash")
        doc["limits"]["spool_dir"] = str(spool_dir)
        engine = Engine(parse_config(doc))
        engines.append(engine)
        engine.start()
        writer = engine.writers[0]
        recovered = writer.counters()["recovered"]
        assert recovered > 500 and writer.counters()["torn"] == 1
        deadline = time.monotonic() + 20
        while writer.stats.acknowledged < recovered and time.monotonic() < deadline:
            time.sleep(0.05)
        engine.stop()
    c = writer.counters()
    assert c["pending"] == 0 and c["torn"] == 1
    got = topic_prices(broker.bootstrap, "prices.crash", expect=c["acknowledged"])
    # Everything the killed engine had spooled arrives (the torn record never does, and
    # nothing corrupt: every record decoded with the official package), gap-free from 1.
    old = {i: [p["seq"] for p in rows if p["epoch"] == first_epoch] for i, rows in got.items()}
    assert sum(len(s) for s in old.values()) == recovered
    for inst, seqs in old.items():
        assert seqs == list(range(1, len(seqs) + 1)), inst
    assert list((spool_dir / "kafka").glob("seg-*")) == []
