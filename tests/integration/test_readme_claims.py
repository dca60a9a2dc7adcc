"""What the README promises, each checked from outside a running engine: a simulator with a
fault, `mmengine` as a child process, its IPC streams (decoded with the official `avro`
package), its logs, exit codes and stop summary. No private venue method is called, so
these hold whatever shape the venue layer takes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
import websocket

from mmengine.dev.simulator import start_simulator
from tests.conftest import free_port, wait_for
from tests.integration.conftest import BooksStream, EngineProcess
from tests.integration.pg_support import (  # noqa: F401 (fixtures)
    PgServer,
    pg,
    pg_factory,
    pg_root,
)

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT", "ETH-USDT"]
CLI = [sys.executable, "-m", "mmengine.cli"]


def binance(sim: Any, instruments: list[str] = INSTRUMENTS, **venue: Any) -> dict[str, Any]:
    return {
        "venues": [
            {
                "name": "binance",
                "protocol": "binance",
                "url": sim.ws_url,
                "rest_url": sim.rest_url,
                "instruments": instruments,
                **venue,
            }
        ],
        "instruments": [
            {"name": i, "sources": [{"venue": "binance"}], "min_venues": 1} for i in instruments
        ],
        "limits": {"reconnect_max_s": 0.5},
    }


def summary_line(engine: EngineProcess, venue: str) -> str:
    return next(ln for ln in engine.output.splitlines() if ln.startswith(f"{venue}: "))


def test_binance_bookticker_mismatch_resyncs_that_book(engine_factory: Any) -> None:
    """README, venues table: `@bookTicker` at the equal update id `u`: a mismatch resyncs."""
    with start_simulator("binance", instruments=INSTRUMENTS, rate=100, seed=101) as sim:
        engine = engine_factory(binance(sim, audit=True))
        tops = BooksStream(engine)
        wait_for(lambda: all("LIVE" in tops.states(i) for i in INSTRUMENTS), 10, "LIVE books")
        for n in (1, 2):
            sim.inject("badticker")
            wait_for(
                lambda n=n: sum(s == "RESYNCING" for i in INSTRUMENTS for s in tops.states(i)) >= n,
                10,
                "a resync",
            )
            wait_for(lambda: all(tops.states(i)[-1] == "LIVE" for i in INSTRUMENTS), 10, "LIVE")
        assert engine.stop() == 0, engine.output
        tops.finish()
        assert sim.stats["faults"]["badticker"] == 2
    # Each lying ticker cost its book exactly one resync, for the audit; nothing else moved.
    line = summary_line(engine, "binance")
    assert "2 resyncs (audit 2)" in line and "0 gaps" in line, line
    assert len(re.findall(r"binance \S+ RESYNCING \(audit\)", engine.output)) == 2


def test_binance_resync_snapshots_respect_the_rest_weight_budget(engine_factory: Any) -> None:
    """README: a gap fetches a new REST snapshot, rate-limited on request weight. Depth
    5000 costs 250 of Binance's 6000 a minute: 24 snapshots at once, then one per 2.5 s."""
    with start_simulator("binance", instruments=["BTC-USDT"], rate=100, seed=102) as sim:
        engine = engine_factory(binance(sim, ["BTC-USDT"], depth=5000))
        started = time.monotonic()
        tops = BooksStream(engine)
        wait_for(lambda: "LIVE" in tops.states("BTC-USDT"), 10, "a LIVE book")
        gaps = 0
        while time.monotonic() - started < 6.0:  # a gap every 0.1 s: ~55 resyncs asked for
            sim.inject("gap")
            gaps += 1
            time.sleep(0.1)
        served = sim.stats["snapshots_served"]
        elapsed = time.monotonic() - started
        # Once the gaps stop, the budget refills and the book comes back.
        wait_for(lambda: tops.states("BTC-USDT")[-1] == "LIVE", 10, "LIVE again")
        assert engine.stop() == 0, engine.output
        tops.finish()
    budget = 6000 / 250 + elapsed * 100 / 250
    print(f"{gaps} gaps in {elapsed:.1f} s, {served} snapshots served (budget {budget:.1f})")
    assert gaps > budget + 5, "too few gaps to reach the limit"
    # Without the limit every gap would be one snapshot at once (the simulator answers
    # in a millisecond); with it the book waits, out of LIVE, for the budget to refill.
    assert served <= budget + 1, (served, budget)
    waits, down_since = [], None
    for t in tops.got:
        if t["state"] != "LIVE" and down_since is None:
            down_since = t["recv_ts_ns"]
        elif t["state"] == "LIVE" and down_since is not None:
            waits.append((t["recv_ts_ns"] - down_since) / 1e9)
            down_since = None
    assert max(waits) > 1.5, waits


def test_db_prune_drops_whole_days_older_than_keep_days(pg: PgServer) -> None:  # noqa: F811
    """README: `mmengine db prune --dsn DSN` (retention: daily partitions, UTC days)."""
    ages = (10, 3, 2, 1, 0)  # days before today (UTC)
    with pg.connect() as conn:
        for age in ages:
            conn.execute(
                "SELECT mmengine_ensure_partition((now() AT TIME ZONE 'UTC')::date - %s)", (age,)
            )
            conn.execute(
                "INSERT INTO price_history (instrument, epoch, seq, priced_at, priced_ts_ns,"
                " recv_ts_ns, exchange_ts_ns) VALUES ('BTC-USD', 1, %s,"
                " ((now() AT TIME ZONE 'UTC')::date - %s)::timestamp AT TIME ZONE 'UTC'"
                " + interval '12 hours', 0, 0, 0)",
                (100 - age, age),
            )
        conn.commit()
    run = subprocess.run(
        [*CLI, "db", "prune", "--dsn", pg.dsn, "--keep-days", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("dropped price_history_") == 2 and "2 partitions dropped" in run.stdout
    with pg.connect() as conn:
        left = [s for (s,) in conn.execute("SELECT seq FROM price_history ORDER BY seq")]
    assert left == [98, 99, 100]  # today and the two days before it: 3 days kept
    again = subprocess.run(
        [*CLI, "db", "prune", "--dsn", pg.dsn, "--keep-days", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "0 partitions dropped" in again.stdout


def test_simulate_command_serves_the_venue_protocol_and_stops_on_sigterm() -> None:
    """README: `mmengine simulate --venue PROTOCOL [--port P] [--rate N]`."""
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "simulate", "--venue", "binance", "--port", str(port), "--rate", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = ""
        deadline = time.monotonic() + 20
        while f"ws ws://127.0.0.1:{port}/stream" not in banner and time.monotonic() < deadline:
            banner = proc.stdout.readline()
            assert banner or proc.poll() is None, "simulate exited"
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/stream?streams=btcusdt@depth@100ms", timeout=10
        )
        frame = json.loads(ws.recv())
        ws.close()
        body = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/v3/depth?symbol=BTCUSDT&limit=5", timeout=10
        ).read()
        snapshot = json.loads(body)
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert frame["stream"] == "btcusdt@depth@100ms" and frame["data"]["e"] == "depthUpdate"
    assert len(snapshot["bids"]) == 5 and snapshot["lastUpdateId"] > 0
    assert proc.returncode == 0, out
    assert "simulator stopped" in out


def test_demo_command_runs_offline_shows_prices_and_leaves_nothing_behind() -> None:
    """README: `mmengine demo [--duration S]` (what `make demo` runs)."""
    # Its own temp dir (TMPDIR), so that what it leaves is told apart from another demo's
    # (test_demo.py's, a developer's `make demo`); short: Unix socket paths stay < 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="mmr-"))
    tmp.chmod(0o711)  # as root, the private Postgres runs as its own user and must get in
    try:
        run = subprocess.run(
            [*CLI, "demo", "--duration", "4"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "160", "TMPDIR": str(tmp)},
        )
        left_in_tmp = sorted(tmp.glob("mmengine-demo-*"))  # its work dirs: removed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert run.returncode == 0, run.stdout + run.stderr
    shown = re.search(r"prices shown: ([\d,]+)", run.stdout)
    assert shown and int(shown[1].replace(",", "")) > 50, run.stdout[-2000:]
    for needle in ("pricing: ", "kafka: ", "postgres: ", "binance: ", "coinbase: "):
        assert needle in run.stdout, needle
    # Its engine, broker and database were children of the demo and are gone with it.
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if any(str(tmp) in part for part in (p.info["cmdline"] or []))
    ]
    assert leftovers == []
    assert left_in_tmp == [], left_in_tmp


def test_a_run_dir_held_by_a_running_engine_is_exit_1_and_endpoints_json_is_0600(
    engine_factory: Any,
) -> None:
    """README: exit 1 when the run dir is held by another engine; endpoints.json is 0600."""
    with start_simulator("binance", instruments=INSTRUMENTS, rate=50, seed=103) as sim:
        first = engine_factory(binance(sim))
        endpoints = first.run_dir / "endpoints.json"
        assert stat.S_IMODE(endpoints.stat().st_mode) == 0o600
        second = subprocess.run(
            [*CLI, "run", "--config", str(first.config_path), "--duration", "5"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # The first engine is untouched: still running, its endpoints file still its own.
        assert first.proc.poll() is None
        assert json.loads(endpoints.read_text())["pid"] == first.proc.pid
        assert first.stop() == 0, first.output
    assert second.returncode == 1, second.stdout + second.stderr
    assert "in use by another engine" in second.stderr + second.stdout


def test_repeated_skips_are_logged_once_per_interval_in_a_running_engine(
    engine_factory: Any,
) -> None:
    """README: a bad frame is counted by kind and logged once per kind per 10 s."""
    with start_simulator(
        "binance",
        instruments=INSTRUMENTS,
        rate=100,
        seed=104,
        faults=["malformed"],
        fault_interval_s=0.05,
    ) as sim:
        engine = engine_factory(binance(sim))
        time.sleep(3.0)
        assert engine.stop() == 0, engine.output
        injected = sim.stats["faults"]["malformed"]
    skipped = re.search(r"(\d+) skipped \(bad_json (\d+)\)", summary_line(engine, "binance"))
    assert skipped, summary_line(engine, "binance")
    assert injected >= 20 and int(skipped[2]) >= injected - 2, (injected, skipped[0])
    logged = [ln for ln in engine.output.splitlines() if "skipped frame: bad_json" in ln]
    assert len(logged) == 1, logged


def test_coinbase_reconnects_after_5s_of_silence_and_rebuilds_its_books(
    engine_factory: Any,
) -> None:
    """README/venues: Coinbase heartbeats come every second; 5 s without any frame means the
    connection is dead: reconnect, fresh snapshots."""
    insts = ["BTC-USD", "ETH-USD"]
    with start_simulator("coinbase-advanced", instruments=insts, rate=50, seed=105) as sim:
        engine = engine_factory(
            {
                "venues": [
                    {
                        "name": "coinbase",
                        "protocol": "coinbase-advanced",
                        "url": sim.ws_url,
                        "instruments": insts,
                    }
                ],
                "instruments": [
                    {"name": i, "sources": [{"venue": "coinbase"}], "min_venues": 1} for i in insts
                ],
                "limits": {"reconnect_max_s": 0.5, "stale_after_s": 30},
            }
        )
        tops = BooksStream(engine)
        wait_for(lambda: all("LIVE" in tops.states(i) for i in insts), 10, "LIVE books")
        # Two stalls back to back: about 5.8 s without a frame (heartbeats stop too).
        sim.inject("stall")
        time.sleep(2.8)
        sim.inject("stall")
        wait_for(lambda: any(s != "LIVE" for i in insts for s in tops.states(i)), 10, "a drop")
        wait_for(lambda: all(tops.states(i)[-1] == "LIVE" for i in insts), 10, "LIVE again")
        time.sleep(0.5)
        sim.inject("stall")  # freeze the market; the client catches up with what was sent
        time.sleep(0.6)
        last = {t["instrument"]: t for t in list(tops.got) if t["state"] == "LIVE"}
        books = {i: sim.book(i, 5) for i in insts}
        assert engine.stop() == 0, engine.output
        tops.finish()
    assert "coinbase reconnect: no frame for 5s" in engine.output
    assert summary_line(engine, "coinbase").endswith(", 1 reconnect attempt")
    # The silence lasted 5 s (plus one 0.25 s timer tick) before the connection was dropped.
    for inst in insts:
        rows = [t for t in tops.got if t["instrument"] == inst]
        down = next(i for i, t in enumerate(rows) if t["state"] != "LIVE")
        silent_s = (rows[down]["recv_ts_ns"] - rows[down - 1]["recv_ts_ns"]) / 1e9
        assert 5.0 <= silent_s <= 6.0, (inst, silent_s)
    # The rebuilt book is the simulator's own book.
    for inst in insts:
        bids, asks = books[inst]
        top = last[inst]
        assert top["bid_prices"] == [float(p) for p, _ in bids], inst
        assert top["bid_sizes"] == [float(q) for _, q in bids], inst
        assert top["ask_prices"] == [float(p) for p, _ in asks], inst
        assert top["ask_sizes"] == [float(q) for _, q in asks], inst
