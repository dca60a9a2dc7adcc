"""A short chaos campaign with a fixed seed (scripts/chaos.py, docs/chaos.md): every fault
kind once, on the real engine, simulators, broker and database, judged by the independent
checker. A failure names the seed, so that `make chaos` can replay it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEED = 17
MINUTES = 0.75


def test_a_short_campaign_of_every_fault_passes_the_independent_checker(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "chaos.py"),
            "--minutes",
            str(MINUTES),
            "--seed",
            str(SEED),
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    replay = f"replay: make chaos MINUTES={MINUTES} SEED={SEED}"
    assert out.exists(), f"no chaos.json ({replay}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert run.returncode == 0 and result["passed"], f"{replay}\n{run.stdout[-6000:]}"
    assert result["seed"] == SEED and result["wrong_prices"] == 0
    assert result["unverified_prices"] == 0 and result["rule_violations"] == 0
    kinds = {
        *("gap", "badchecksum", "malformed", "oversized", "error", "drop", "stall"),
        *("crossed", "drift", "broker_pause", "broker_kill", "pg_stop", "pg_kill"),
        "engine_kill",
    }
    assert set(result["faults_injected"]) == kinds
    assert result["prices"]["checked_against_truth"] > 1000
    assert result["prices"]["epochs"] >= 2  # the engine was killed and ran again
    assert not result["lost"]["kafka"].get("unexplained") and not result["lost"]["postgres"].get(
        "unexplained"
    )
