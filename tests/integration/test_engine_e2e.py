"""End to end with real parts: Binance simulator -> `mmengine run` -> the test's own SUB.

Prices and book tops are decoded with the official `avro` package.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmengine.config import parse_config
from mmengine.dev.simulator import start_simulator
from mmengine.engine import Engine, RunDirBusy
from tests.integration.conftest import Subscriber, official_decode

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT", "ETH-USDT"]


def binance_config(sim: Any, **venue: Any) -> dict[str, Any]:
    return {
        "engine": {"pricing_workers": 2},
        "venues": [
            {
                "name": "binance",
                "protocol": "binance",
                "url": sim.ws_url,
                "rest_url": sim.rest_url,
                "instruments": INSTRUMENTS,
                "depth": 100,
                **venue,
            }
        ],
        # One venue here: quoting from a single venue must be asked for (min_venues).
        "instruments": [
            {"name": i, "sources": [{"venue": "binance"}], "min_venues": 1} for i in INSTRUMENTS
        ],
        "limits": {"reconnect_max_s": 1.0},
    }


def summary_counts(output: str, venue: str = "binance") -> dict[str, int]:
    line = next(ln for ln in output.splitlines() if ln.startswith(f"{venue}: "))
    # Nouns are singular after 1 ("1 resync"): keyed by the plural either way.
    return {
        key if key.endswith("s") or key == "skipped" else key + "s": int(n)
        for n, key in re.findall(
            r"(\d+) (frames?|book messages?|resyncs?|gaps?|skipped|reconnect attempts?)\b", line
        )
    }


def test_prices_flow_end_to_end(engine_factory: Any) -> None:
    with start_simulator("binance", instruments=INSTRUMENTS, rate=300, seed=1) as sim:
        engine = engine_factory(binance_config(sim, audit=True))
        endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
        prices = Subscriber(endpoints["ipc"]["prices"]["endpoint"])
        books = Subscriber(endpoints["ipc"]["books"]["endpoint"], b"book.binance.")
        got = prices.collect("price.avsc", count=300, seconds=20)
        tops = books.collect("book_top.avsc", count=50, seconds=10)
        prices.close()
        books.close()
        assert engine.stop() == 0, engine.output
    assert len(got) == 300
    by_inst: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for topic, price in got:
        assert topic == f"price.{price['instrument']}".encode()
        by_inst[price["instrument"]].append(price)
    assert set(by_inst) == set(INSTRUMENTS)
    for inst, rows in by_inst.items():
        seqs = [r["seq"] for r in rows]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{inst}: seq not contiguous"
        assert all(r["epoch"] == endpoints["epoch"] for r in rows)
        for r in rows:
            assert r["best_bid"] < r["best_ask"]
            assert r["best_bid"] <= r["fair_value"] <= r["best_ask"]
            assert r["venues"] == ["binance"]
            assert r["recv_ts_ns"] <= r["priced_ts_ns"]
    assert len(tops) == 50
    assert all(t["state"] == "LIVE" and t["bid_prices"] and t["ask_prices"] for _, t in tops)
    counts = summary_counts(engine.output)
    assert counts["gaps"] == 0 and counts["resyncs"] == 0


def test_gap_resyncs_and_no_price_comes_from_a_resyncing_book(engine_factory: Any) -> None:
    with start_simulator(
        "binance", instruments=INSTRUMENTS, rate=300, seed=2, faults=["gap"], fault_interval_s=1.0
    ) as sim:
        engine = engine_factory(binance_config(sim))
        endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
        prices = Subscriber(endpoints["ipc"]["prices"]["endpoint"])
        books = Subscriber(endpoints["ipc"]["books"]["endpoint"])
        result: dict[str, Any] = {}
        t = threading.Thread(
            target=lambda: result.update(tops=books.collect("book_top.avsc", seconds=6))
        )
        t.start()
        got = prices.collect("price.avsc", seconds=6)
        t.join()
        prices.close()
        books.close()
        assert engine.stop() == 0, engine.output
        gaps_injected = sim.stats["faults"].get("gap", 0)
    assert gaps_injected >= 2
    counts = summary_counts(engine.output)
    assert counts["gaps"] >= 2 and counts["resyncs"] >= 2, engine.output
    # Windows in which a book was not LIVE, from its own state changes.
    windows: dict[str, list[tuple[int, int]]] = defaultdict(list)
    down_since: dict[str, int] = {}
    for _, top in result["tops"]:
        inst = top["instrument"]
        if top["state"] != "LIVE":
            down_since.setdefault(inst, top["recv_ts_ns"])
        elif inst in down_since:
            windows[inst].append((down_since.pop(inst), top["recv_ts_ns"]))
    assert sum(len(w) for w in windows.values()) >= 1, "no resync seen on the books stream"
    for _, price in got:
        for start, end in windows[price["instrument"]]:
            if start <= price["recv_ts_ns"] < end:
                # Inside a resync the only Price is the one that says "do not quote".
                assert price["halted"] and not price["bids"] and not price["asks"], price
                assert price["venues"] == [] and price["venues_excluded"][0]["reason"] == (
                    "not_live"
                )
    assert any(p["halted"] for _, p in got), "no halted price while resyncing"
    # Both instruments kept being priced.
    assert {p["instrument"] for _, p in got} == set(INSTRUMENTS)


def test_malformed_frames_are_counted_and_the_engine_lives(engine_factory: Any) -> None:
    with start_simulator(
        "binance",
        instruments=INSTRUMENTS,
        rate=200,
        seed=3,
        faults=["malformed"],
        fault_interval_s=0.5,
    ) as sim:
        engine = engine_factory(binance_config(sim))
        endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
        prices = Subscriber(endpoints["ipc"]["prices"]["endpoint"])
        time.sleep(3)
        late = prices.collect("price.avsc", count=20, seconds=10)
        prices.close()
        assert engine.stop() == 0, engine.output
        injected = sim.stats["faults"].get("malformed", 0)
    assert injected >= 2
    assert len(late) == 20  # still pricing after the malformed frames
    assert summary_counts(engine.output)["skipped"] >= injected - 1, engine.output


def test_dropped_connection_reconnects_and_resyncs(engine_factory: Any) -> None:
    with start_simulator("binance", instruments=INSTRUMENTS, rate=200, seed=4) as sim:
        engine = engine_factory(binance_config(sim))
        endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
        books = Subscriber(endpoints["ipc"]["books"]["endpoint"])
        for _ in range(2):  # drops injected on demand: none can land inside the freeze below
            time.sleep(1.5)
            sim.inject("drop")
        time.sleep(1.5)
        prices = Subscriber(endpoints["ipc"]["prices"]["endpoint"])
        late = prices.collect("price.avsc", count=20, seconds=10)
        prices.close()
        # Freeze the market (nothing sent for 3 s) and let the engine catch up: its books,
        # rebuilt after the drops, must be the simulator's own.
        sim.inject("stall")
        time.sleep(0.6)
        frozen = {i: sim.book(i, 5) for i in INSTRUMENTS}
        # Everything queued since the start, read raw (quickly: the stall lasts 3 s), then
        # decoded with the official avro package.
        payloads = []
        while books.sock.poll(300):
            payloads.append(books.sock.recv_multipart()[1])
        books.close()
        tops = [official_decode("book_top.avsc", payload) for payload in payloads]
        assert engine.stop() == 0, engine.output
        drops = sim.stats["faults"].get("drop", 0)
    assert drops == 2
    assert summary_counts(engine.output)["reconnect attempts"] >= drops, engine.output
    assert len(late) == 20 and all(not p["halted"] and p["bids"] for _, p in late)
    for inst in INSTRUMENTS:
        rows = [t for t in tops if t["instrument"] == inst]
        states = [t["state"] for t in rows]
        assert "LIVE" in states[states.index("SYNCING") :], f"{inst}: never rebuilt: {states}"
        last = rows[-1]
        bids, asks = frozen[inst]
        assert last["state"] == "LIVE", inst
        assert last["bid_prices"] == [float(p) for p, _ in bids], inst
        assert last["bid_sizes"] == [float(q) for _, q in bids], inst
        assert last["ask_prices"] == [float(p) for p, _ in asks], inst
        assert last["ask_sizes"] == [float(q) for _, q in asks], inst


def test_bad_config_exits_2_with_the_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "venues": [{"name": "binance", "protocol": "binance", "instruments": ["BTCUSDT"]}],
                "instruments": [{"name": "BTC-USDT", "sources": [{"venue": "binance"}]}],
            }
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "mmengine.cli", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert "venues[0].instruments: 'BTCUSDT' is not BASE-QUOTE" in run.stderr


def test_sigterm_stops_cleanly_and_removes_socket_files(engine_factory: Any) -> None:
    with start_simulator("binance", instruments=INSTRUMENTS, rate=100, seed=5) as sim:
        engine = engine_factory(binance_config(sim))
        run_dir = engine.run_dir
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
        for name in ("prices", "books"):
            assert stat.S_IMODE(os.stat(run_dir / name).st_mode) == 0o600
        time.sleep(1)
        assert engine.stop() == 0, engine.output
    assert sorted(p.name for p in run_dir.iterdir()) == []
    assert "pricing: " in engine.output and "binance: " in engine.output


def test_in_process_engine_joins_every_thread_and_guards_its_run_dir(tmp_path: Path) -> None:
    with start_simulator("binance", instruments=INSTRUMENTS, rate=100, seed=6) as sim:
        doc = binance_config(sim)
        doc["engine"]["run_dir"] = str(tmp_path / "run")
        before = set(threading.enumerate())
        engine = Engine(parse_config(doc))
        engine.start()
        try:
            with pytest.raises(RunDirBusy, match="in use by another engine"):
                Engine(parse_config(doc)).start()
            time.sleep(1)
        finally:
            engine.stop()
        assert set(threading.enumerate()) - before == set()


def test_tap_prints_decoded_prices(engine_factory: Any) -> None:
    with start_simulator("binance", instruments=INSTRUMENTS, rate=200, seed=7) as sim:
        engine = engine_factory(binance_config(sim))
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmengine.cli",
                "tap",
                "--run-dir",
                str(engine.run_dir),
                "--topic",
                "price.ETH-USDT",
                "--count",
                "5",
                "--json",
                "--timeout",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        readable = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmengine.cli",
                "tap",
                "--run-dir",
                str(engine.run_dir),
                "--stream",
                "books",
                "--count",
                "3",
                "--timeout",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert engine.stop() == 0
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(rows) == 5 and {r["instrument"] for r in rows} == {"ETH-USDT"}
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert readable.returncode == 0, readable.stderr
    lines = readable.stdout.splitlines()
    assert len(lines) == 3 and all(
        ln.startswith("book.binance.") and " LIVE " in ln for ln in lines
    )


def test_a_stalled_venue_goes_stale_and_comes_back(engine_factory: Any) -> None:
    """The simulator's stall fault sends nothing for about 3 s on an open connection."""
    with start_simulator(
        "binance",
        instruments=INSTRUMENTS,
        rate=200,
        seed=8,
        faults=["stall"],
        fault_interval_s=2.0,
    ) as sim:
        config = binance_config(sim)
        config["limits"]["stale_after_s"] = 1.0
        engine = engine_factory(config)
        endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
        books = Subscriber(endpoints["ipc"]["books"]["endpoint"], b"book.binance.BTC-USDT")
        tops = books.collect("book_top.avsc", seconds=7)
        books.close()
        assert engine.stop() == 0, engine.output
        assert sim.stats["faults"]["stall"] >= 1
    states = [t["state"] for _, t in tops]
    assert "STALE" in states, "no STALE state seen during a stall"
    first_stale = states.index("STALE")
    assert "LIVE" in states[first_stale:], "never LIVE again after the stall"
    assert all(not t["bid_prices"] for _, t in tops if t["state"] == "STALE")
