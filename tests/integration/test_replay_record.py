"""`mmengine record` of two venue protocols into one capture, then `mmengine replay` of it
(issue 18): each connection is replayed with its own protocol, and the same capture without
`record`'s header (as another tool would write it, from hosts the registry does not know)
replays to the same books with `--protocol CONN=NAME`."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmengine.dev.simulator import start_simulator

pytestmark = pytest.mark.integration

VENUES = {
    "bybit-spot": ("bybit-v5-spot", "BTC-USDT"),
    "bybit-linear": ("bybit-v5-linear", "BTC-USDT-PERP"),
}


def mmengine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmengine.cli", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def replay_json(path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = mmengine("replay", str(path), "--json", *args)
    return done.returncode, json.loads(done.stdout)


def test_a_recorded_two_protocol_capture_replays_per_connection(tmp_path: Path) -> None:
    out = tmp_path / "two.jsonl.gz"
    with (
        start_simulator("bybit-v5-spot", instruments=["BTC-USDT", "ETH-USDT"], rate=150) as spot,
        start_simulator("bybit-v5-linear", instruments=["BTC-USDT-PERP"], rate=150) as linear,
    ):
        urls = {"bybit-spot": spot.ws_url, "bybit-linear": linear.ws_url}
        config = {
            "engine": {"run_dir": str(tmp_path / "run")},
            "venues": [
                {
                    "name": name,
                    "protocol": protocol,
                    "url": urls[name],
                    "instruments": ["BTC-USDT", "ETH-USDT"] if name == "bybit-spot" else [inst],
                    "depth": 50,
                    "audit": True,
                }
                for name, (protocol, inst) in VENUES.items()
            ],
            "instruments": [
                {"name": inst, "sources": [{"venue": name}], "min_venues": 1}
                for name, (_, inst) in VENUES.items()
            ],
            "limits": {"spool_dir": str(tmp_path / "spool")},
        }
        cfg = tmp_path / "engine.yaml"
        cfg.write_text(yaml.safe_dump(config))
        recorded = mmengine("record", "--config", str(cfg), "--out", str(out), "--duration", "3")
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr

    code, card = replay_json(out)
    assert code == 0, card["errors"]
    # (in the order the connections first appear in the file: whichever connected first)
    assert sorted((c["conn"], c["protocol"], c["protocol_from"]) for c in card["connections"]) == [
        ("venue-bybit-linear", "bybit-v5-linear", "header"),
        ("venue-bybit-spot", "bybit-v5-spot", "header"),
    ]
    assert set(card["instruments"]) == {"BTC-USDT", "ETH-USDT", "BTC-USDT-PERP"}
    assert all(i["state"] == "LIVE" for i in card["instruments"].values()), card["instruments"]
    assert card["totals"]["sequence"]["gaps"] == 0 and card["totals"]["sequence"]["checked"] > 50
    assert card["totals"]["audit"]["exact"]["disagree"] == 0
    for conn in card["connections"]:
        assert conn["book_frames"] > 0 and conn["skipped"] == 0, conn

    # Another tool's capture of the same traffic: a header without `record`'s venues.
    with gzip.open(out, "rt") as fh:
        lines = [json.loads(line) for line in fh]
    lines[0]["config"].pop("mmengine")
    foreign = tmp_path / "foreign.jsonl.gz"
    with gzip.open(foreign, "wt") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)
    code, unread = replay_json(foreign)
    assert code == 2 and [c["protocol"] for c in unread["connections"]] == [None, None]
    code, forced = replay_json(
        foreign,
        "--protocol",
        "venue-bybit-spot=bybit-v5-spot",
        "--protocol",
        "venue-bybit-linear=bybit-v5-linear",
    )
    assert code == 0, forced["errors"]
    assert {k: v["top"] for k, v in forced["instruments"].items()} == {
        k: v["top"] for k, v in card["instruments"].items()
    }
    assert forced["totals"]["sequence"] == card["totals"]["sequence"]
