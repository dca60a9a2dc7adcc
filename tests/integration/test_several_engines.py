"""Scale-out: two engine processes own disjoint instruments and deliver into one Kafka topic
(a real tansu) and one Postgres (a real server). The consumers a user runs, `kafka-tail` and
`db-tail`, see one stream: every Price of both engines, once, in order per instrument."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from mmengine.dev.simulator import start_simulator
from tests.conftest import free_port
from tests.integration.kafka_support import Broker, broker  # noqa: F401 (fixture)
from tests.integration.pg_support import PgServer, pg, pg_factory, pg_root  # noqa: F401
from tests.integration.test_postgres_engine import start, wait_for

pytestmark = pytest.mark.integration

SPLIT = {"a": ["BTC-USDT", "ETH-USDT"], "b": ["SOL-USDT", "XRP-USDT"]}
TOPIC = "mmengine.prices"


def engine_config(sim_port: int, bootstrap: str, dsn: str, instruments: list[str]) -> dict:
    return {
        "venues": [
            {
                "name": "binance",
                "protocol": "binance",
                "url": f"ws://127.0.0.1:{sim_port}/stream",
                "rest_url": f"http://127.0.0.1:{sim_port}",
                "instruments": instruments,
            }
        ],
        "instruments": [
            {"name": i, "sources": [{"venue": "binance"}], "min_venues": 1} for i in instruments
        ],
        "outputs": {
            "ipc": {"books": False},
            "kafka": {"bootstrap_servers": bootstrap, "topic": TOPIC, "linger_ms": 10},
            "postgres": {"dsn": dsn, "batch_max_wait_ms": 20},
        },
        "limits": {"reconnect_max_s": 0.5},
    }


def per_instrument(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        out.setdefault(r["instrument"], []).append((r["epoch"], r["seq"]))
    return out


def test_two_engines_one_topic_one_database(
    broker: Broker,  # noqa: F811
    pg: PgServer,  # noqa: F811
    engine_factory: Any,
) -> None:
    port = free_port()
    runs = {
        name: start(engine_factory, engine_config(port, broker.bootstrap, pg.dsn, insts), name)
        for name, insts in SPLIT.items()
    }
    everything = SPLIT["a"] + SPLIT["b"]
    with start_simulator("binance", port=port, instruments=everything, rate=400, seed=9):
        wait_for(lambda: all(len(ipc.got) >= 400 for _, ipc in runs.values()), 30, "prices")
    time.sleep(0.5)
    for engine, ipc in runs.values():
        assert engine.stop() == 0, engine.output
        ipc.stop()
    published = per_instrument([p for _, ipc in runs.values() for _, p in ipc.got])
    total = sum(len(v) for v in published.values())
    assert set(published) == set(everything)
    assert len({epoch for keys in published.values() for epoch, _ in keys}) == 2

    kafka = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmengine.cli",
            "kafka-tail",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            TOPIC,
            "--from-beginning",
            "--json",
            "--count",
            str(total),
            "--timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert kafka.returncode == 0, kafka.stderr[-2000:]
    from_kafka = per_instrument([json.loads(line) for line in kafka.stdout.splitlines()])

    db = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmengine.cli",
            "db-tail",
            "--dsn",
            pg.dsn,
            "--since-seq",
            "0",
            "--json",
            "--count",
            str(total),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert db.returncode == 0, db.stderr[-2000:]
    from_db = per_instrument([json.loads(line) for line in db.stdout.splitlines()])

    # Complete, once, in seq order per instrument, from both engines.
    assert from_kafka == published
    assert from_db == published
