"""The engine writing to a real PostgreSQL: Binance simulator -> `mmengine run` (venue
thread, pricing workers, IPC, Postgres writer) -> price_history / price_latest, compared
with what the test's own SUB saw on IPC.

Each engine starts before its simulator, and the test's SUB connects before the first
Price exists, so "every Price published on IPC" is known exactly.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from psycopg.conninfo import conninfo_to_dict

from mmengine.codec import Codec
from mmengine.config import parse_config
from mmengine.dev.simulator import start_simulator
from mmengine.engine import Engine
from mmengine.errors import MmengineError
from mmengine.pricing.worker import SINK_KEY
from mmengine.sinks.spool import FRAME, unpack_frames
from tests.conftest import free_port
from tests.integration.conftest import EngineProcess
from tests.integration.pg_support import (  # noqa: F401 (fixtures)
    PgServer,
    history,
    latest,
    pg,
    pg_factory,
    pg_root,
)

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT", "ETH-USDT"]
# The issue asks for a 30 s outage; the whole file stays near 90 s with it.
OUTAGE_S = 30.0

Key = tuple[str, int, int]


def engine_config(
    port: int, dsn: str | None, instruments: list[str] = INSTRUMENTS, **limits: Any
) -> dict[str, Any]:
    return {
        "engine": {"pricing_workers": 2},
        "venues": [
            {
                "name": "binance",
                "protocol": "binance",
                "url": f"ws://127.0.0.1:{port}/stream",
                "rest_url": f"http://127.0.0.1:{port}",
                "instruments": instruments,
            }
        ],
        # One venue: quoting from it must be asked for, or every Price is halted with an
        # empty ladder and the stored ladders below would compare [] with [].
        "instruments": [
            {"name": i, "sources": [{"venue": "binance"}], "min_venues": 1} for i in instruments
        ],
        "outputs": {
            "ipc": {"books": False},
            "postgres": {
                "dsn": dsn,
                "batch_max_wait_ms": 20,
                "reconnect_max_s": 1.0,
                "drain_timeout_s": 15,
            },
        },
        "limits": {"reconnect_max_s": 0.5, "stale_after_s": 120, **limits},
    }


class IpcCollector(threading.Thread):
    """The test's own SUB on an engine's prices endpoint: (arrival time, decoded Price)."""

    def __init__(self, engine: EngineProcess) -> None:
        super().__init__(daemon=True)
        doc = json.loads((engine.run_dir / "endpoints.json").read_text())
        self.endpoint = doc["ipc"]["prices"]["endpoint"]
        self.postgres = doc.get("postgres")
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.halt = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        codec = Codec("price.avsc")
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"price.")
        sub.connect(self.endpoint)
        self.connected.set()
        try:
            while not self.halt.is_set():
                if sub.poll(50):
                    _, payload = sub.recv_multipart()
                    self.got.append((time.monotonic(), codec.decode(payload)))
        finally:
            sub.close()
            ctx.term()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)

    def price_keys(self) -> list[Key]:
        return sorted((p["instrument"], p["epoch"], p["seq"]) for _, p in self.got)

    def last(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for _, p in self.got:
            out[p["instrument"]] = p
        return out


def start(engine_factory: Any, cfg: dict[str, Any], name: str) -> tuple[EngineProcess, Any]:
    engine = engine_factory(cfg, name)
    ipc = IpcCollector(engine)
    ipc.start()
    ipc.connected.wait(5)
    time.sleep(0.3)  # the SUB's subscription reaches the engine's XPUB
    return engine, ipc


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def summary(engine: EngineProcess) -> str:
    return next(ln for ln in engine.output.splitlines() if ln.startswith("postgres: "))


def spooled_keys(spool_dir: Path) -> list[Key]:
    """The (instrument, epoch, seq) of every intact record in a spool's segment files."""
    out = []
    for path in sorted(spool_dir.glob("seg-*.spool")):
        data = path.read_bytes()
        pos = 0
        while pos + FRAME.size <= len(data):
            length, _ = FRAME.unpack_from(data, pos)
            record = data[pos + FRAME.size : pos + FRAME.size + length]
            if len(record) < length:
                break  # a torn tail: the writer drops it too
            instrument, key, _ = unpack_frames(record)
            epoch, seq, _ = SINK_KEY.unpack(key)
            out.append((instrument.decode(), epoch, seq))
            pos += FRAME.size + length
    return out


def test_history_is_exactly_the_ipc_prices_and_latest_is_the_last(
    pg: PgServer,  # noqa: F811
    engine_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    # (trust auth ignores the password; it is there to check it is never shown). A password
    # comes from the environment only: the config file refuses one.
    monkeypatch.setenv("MMENGINE_PG_DSN", pg.dsn + " password=s3cret-pw")
    cfg = engine_config(port, None)
    engine, ipc = start(engine_factory, cfg, "e0")
    # endpoints.json names the database, without the password.
    named = conninfo_to_dict(ipc.postgres["dsn"])
    assert named == conninfo_to_dict(pg.dsn) and ipc.postgres["channel"] == "mmengine_prices"
    assert "s3cret" not in (engine.run_dir / "endpoints.json").read_text()
    with start_simulator("binance", port=port, instruments=INSTRUMENTS, rate=300, seed=1):
        wait_for(lambda: len(ipc.got) >= 1500, 20, "1500 prices on IPC")
    time.sleep(0.5)  # the venue is gone: no more Prices
    assert engine.stop() == 0, engine.output
    ipc.stop()
    keys = ipc.price_keys()
    assert len(keys) >= 1500 and len(set(keys)) == len(keys)
    assert history(pg) == keys
    last = ipc.last()
    assert latest(pg) == {i: (p["epoch"], p["seq"]) for i, p in last.items()}
    # The stored row is the published Price, field for field (extras in detail), and the
    # Prices are quoted: non-empty ladders.
    quoted = [p for _, p in ipc.got if not p["halted"]]
    assert len(quoted) >= 0.95 * len(ipc.got)
    assert all(p["bids"] and p["asks"] for p in quoted)
    with pg.connect() as conn:
        stored = conn.execute(
            "SELECT instrument, epoch, seq, detail FROM price_history WHERE NOT halted"
        ).fetchall()
        by_key = {(i, e, s): d for i, e, s, d in stored}
        assert len(by_key) == len(quoted)
        for p in quoted:
            detail = by_key[(p["instrument"], p["epoch"], p["seq"])]
            assert detail["bids"] == p["bids"] and detail["asks"] == p["asks"]
        for inst, p in last.items():
            row = conn.execute(
                "SELECT fair_value, best_bid, best_ask, venues, halted, priced_ts_ns, detail"
                " FROM price_latest WHERE instrument = %s",
                (inst,),
            ).fetchone()
            assert row is not None
            fair, bid, ask, venues, halted, ts, detail = row
            assert (fair, bid, ask, venues, halted, ts) == (
                p["fair_value"],
                p["best_bid"],
                p["best_ask"],
                p["venues"],
                p["halted"],
                p["priced_ts_ns"],
            )
            assert detail["bids"] == p["bids"] and detail["venues_used"] == p["venues_used"]
    line = summary(engine)
    assert f"{len(keys)} written" in line and "0 retries" in line, line
    assert "s3cret" not in engine.output


def test_postgres_down_30s_under_flow_nothing_lost_latest_never_regresses(
    pg: PgServer,  # noqa: F811
    engine_factory: Any,
) -> None:
    port = free_port()
    engine, ipc = start(engine_factory, engine_config(port, pg.dsn), "e0")
    with start_simulator("binance", port=port, instruments=INSTRUMENTS, rate=200, seed=2):
        wait_for(lambda: len(history(pg)) >= 200, 20, "rows before the outage")
        before = latest(pg)
        pg.stop()
        down_at = time.monotonic()
        time.sleep(OUTAGE_S)
        pg.start()
        up_at = time.monotonic()
        # Recovery: the writer reconnects and drains its spool; price_latest only moves
        # forward while it does.
        seen = dict(before)
        regressions = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = latest(pg)
            for inst, key in now.items():
                if key < seen.get(inst, (0, 0)):
                    regressions.append((inst, seen[inst], key))
                seen[inst] = max(seen.get(inst, (0, 0)), key)
            if len(history(pg)) >= len(ipc.got) - 50:
                break
            time.sleep(0.1)
        time.sleep(1.0)
    time.sleep(0.5)
    assert engine.stop() == 0, engine.output
    ipc.stop()

    # Pricing and IPC never stalled: Prices kept coming at the usual pace during the outage.
    during = [t for t, _ in ipc.got if down_at <= t <= up_at]
    assert len(during) > OUTAGE_S * 50, len(during)
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < 1.0, max(gaps)
    # Nothing lost, nothing twice; latest is the last Price and never moved back.
    keys = ipc.price_keys()
    assert history(pg) == keys
    assert not regressions, regressions[:5]
    assert latest(pg) == {i: (p["epoch"], p["seq"]) for i, p in ipc.last().items()}
    line = summary(engine)
    print(line, "| prices during the outage:", len(during))
    spooled = int(line.split(" spooled")[0].rsplit(" ", 1)[1])
    assert spooled > len(during) * 0.9, line
    assert "0 left in the spool" in line and " 0 retries" not in line, line


def history_after_start(server: PgServer) -> list[Key]:
    """Start a stopped server, then read price_history."""
    server.start()
    return history(server)


def test_engine_sigkill_restart_on_same_spool_loses_nothing_replays_absorbed(
    pg: PgServer,  # noqa: F811
    engine_factory: Any,
    tmp_path: Path,
) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    cfg = engine_config(port, pg.dsn, spool_dir=str(spool))
    # Small batches, so the spool drains over many transactions after the outage.
    cfg["outputs"]["postgres"]["batch_max_rows"] = 20
    first, ipc = start(engine_factory, cfg, "e1")
    with start_simulator("binance", port=port, instruments=INSTRUMENTS, rate=200, seed=3):
        wait_for(lambda: len(history(pg)) >= 300, 20, "rows before the outage")
        pg.stop()  # the writer now keeps everything in its spool on disk
        time.sleep(2.0)
        before = len(history_after_start(pg))
        # SIGKILL mid-flow, while the writer is draining its spool: the segment is partly
        # acknowledged, so the next start replays rows that are already committed.
        deadline = time.monotonic() + 10
        while len(history(pg)) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        first.proc.kill()
        first.proc.wait(timeout=10)
        ipc.stop()
        on_disk = spooled_keys(spool / "postgres")
        committed = set(history(pg))
        replayed = committed & set(on_disk)
        second, _ = start(engine_factory, engine_config(port, pg.dsn, spool_dir=str(spool)), "e2")
        epoch2 = json.loads((second.run_dir / "endpoints.json").read_text())["epoch"]
        wait_for(
            lambda: (
                set(on_disk) <= set(history(pg))
                and sum(1 for k in history(pg) if k[1] == epoch2) > 200
            ),
            30,
            "the spool to be replayed and new rows",
        )
    time.sleep(0.5)
    assert second.stop() == 0, second.output
    rows = history(pg)
    print(
        f"committed before the kill {len(committed)}, on disk {len(on_disk)}, "
        f"of which already committed (replayed, absorbed) {len(replayed)}; {summary(second)}"
    )
    assert len(on_disk) > 200 and len(replayed) > 0
    line = summary(second)
    written, new = map(int, re.findall(r"(\d+) written \((\d+) new rows\)", line)[0])
    # The replays were absorbed by the key (not stored twice, not an error).
    assert written - new == len(replayed) and "0 retries" in line, line
    assert committed <= set(rows) and set(on_disk) <= set(rows)
    assert len(rows) == len(set(rows))
    epoch1 = {k[1] for k in ipc.price_keys()}
    assert len(epoch1) == 1 and epoch2 > min(epoch1)
    for inst in INSTRUMENTS:
        seqs = [s for i, e, s in rows if i == inst and e in epoch1]
        # Nothing acknowledged or spooled is lost: the first run's rows have no gap...
        assert seqs == list(range(1, len(seqs) + 1)), inst
        # ...and only the newest Prices can be missing: those the writer held in memory
        # only (the server was back, so new Prices no longer went to disk) when the
        # process died -- the spool's documented durability. A fraction of a second's worth.
        published = [s for i, _, s in ipc.price_keys() if i == inst]
        assert published[: len(seqs)] == seqs
        assert len(published) - len(seqs) <= 100, (len(published), len(seqs))
    # The second run's Prices are newer: price_latest holds them.
    assert all(e == epoch2 for e, _ in latest(pg).values())


def test_two_engines_with_disjoint_instruments_share_one_database(
    pg: PgServer,  # noqa: F811
    engine_factory: Any,
) -> None:
    port = free_port()
    split = {"a": ["BTC-USDT", "ETH-USDT"], "b": ["SOL-USDT", "XRP-USDT"]}
    runs = {
        n: start(engine_factory, engine_config(port, pg.dsn, insts), n)
        for n, insts in split.items()
    }
    everything = split["a"] + split["b"]
    with start_simulator("binance", port=port, instruments=everything, rate=400, seed=4):
        wait_for(lambda: all(len(ipc.got) >= 600 for _, ipc in runs.values()), 20, "prices")
    time.sleep(0.5)
    for engine, ipc in runs.values():
        assert engine.stop() == 0, engine.output
        ipc.stop()
    rows = history(pg)
    epochs = set()
    for name, (_, ipc) in runs.items():
        mine = [k for k in rows if k[0] in split[name]]
        assert mine == ipc.price_keys(), name
        epochs |= {k[1] for k in mine}
    assert len(epochs) == 2
    assert latest(pg) == {
        i: (p["epoch"], p["seq"]) for _, ipc in runs.values() for i, p in ipc.last().items()
    }


def test_engine_refuses_to_start_against_an_older_schema(
    pg_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    server: PgServer = pg_factory()  # no `db upgrade`
    cfg = engine_config(free_port(), server.dsn)
    cfg["engine"]["run_dir"] = str(tmp_path / "run")
    engine = Engine(parse_config(cfg))
    with pytest.raises(MmengineError, match=r"db upgrade"):
        engine.start()
    assert engine.workers == [] and not (tmp_path / "run" / "endpoints.json").exists()
    # Refused before any thread started: no IPC publisher, no writer.
    assert engine.publishers == [] and engine.writers == []
