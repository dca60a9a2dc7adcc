"""The Postgres writer, its schema commands and `db-tail` against a real PostgreSQL server.

The writer is fed by a test thread PUSHing exactly what pricing workers send it
(`kafka_support.Feeder`); the engine-level tests are in test_postgres_engine.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from mmengine.bus import sink_message
from mmengine.codec import Codec
from mmengine.config import PostgresOutput
from mmengine.sinks.pgschema import required_version, schema_version
from mmengine.sinks.postgres import CHANNEL, HISTORY_COLUMNS, PgBatchWriter, PostgresWriter
from mmengine.sinks.spool import Spool
from tests.integration.kafka_support import Feeder, sink_parts
from tests.integration.pg_support import (  # noqa: F401 (fixtures)
    PgServer,
    history,
    latest,
    pg,
    pg_factory,
    pg_root,
)

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT", "ETH-USDT", "SOL-USDT"]
EPOCH = 1_790_000_000_000_000_000
ROOT = Path(__file__).parents[2]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmengine.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


@pytest.fixture
def writers(ctx: zmq.Context, tmp_path: Path) -> Iterator[Callable[..., PostgresWriter]]:
    """Start writers; each is stopped and joined after the test."""
    started: list[PostgresWriter] = []

    def make(dsn: str, spool_dir: Path | None = None, **kw: Any) -> PostgresWriter:
        kw.setdefault("drain_timeout_s", 2.0)
        kw.setdefault("reconnect_max_s", 1.0)
        w = PostgresWriter(
            ctx,
            PostgresOutput(dsn=dsn, **kw),
            spool_dir or tmp_path / f"spool{len(started)}",
            1 << 30,
            spool_memory_records=2_000,
            endpoint=f"inproc://sink.postgres.{len(started)}",
        )
        w.start()
        assert w.ready.wait(5) and w.error is None, w.error
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()
    for w in started:
        w.join(timeout=15)
        assert not w.is_alive()


def expected_keys(feeder: Feeder, epoch: int = EPOCH) -> list[tuple[str, int, int]]:
    return sorted((inst, epoch, seq) for inst, seq in feeder.sent)


def test_db_upgrade_twice_is_a_noop_and_status_shows_it(pg_factory: Any) -> None:  # noqa: F811
    server: PgServer = pg_factory()
    # The password never appears in what the commands print (trust auth ignores it).
    dsn = server.dsn + " password=s3cret-pw"
    before = cli("db", "status", "--dsn", dsn)
    assert before.returncode == 1 and "0001 price_tables: pending" in before.stdout
    first = cli("db", "upgrade", "--dsn", dsn)
    assert first.returncode == 0, first.stderr
    assert "applied 0001 price_tables" in first.stdout
    second = cli("db", "upgrade", "--dsn", dsn)
    assert second.returncode == 0 and "nothing to do" in second.stdout
    status = cli("db", "status", "--dsn", dsn)
    assert status.returncode == 0, status.stdout
    assert "0001 price_tables: applied" in status.stdout and "up to date" in status.stdout
    for out in (before, first, second, status):
        assert "s3cret" not in out.stdout + out.stderr
    # The DSN may come from the environment instead.
    env = {**__import__("os").environ, "MMENGINE_PG_DSN": dsn}
    assert cli("db", "status", env=env).returncode == 0
    with server.connect() as conn:
        assert schema_version(conn) == required_version()
        n = conn.execute("SELECT count(*) FROM mmengine_migrations").fetchone()
        assert n == (required_version(),)


def test_writer_stores_every_price_once_and_latest_is_last(
    pg: PgServer,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., PostgresWriter],
) -> None:
    w = writers(pg.dsn, batch_max_rows=500)
    # As pricing sends them: each Price with its values, so the writer decodes nothing.
    feeder = Feeder(ctx, w.endpoint, INSTRUMENTS, EPOCH, rate=5000, total=6000, values=True)
    feeder.start()
    feeder.join()
    wait_for(lambda: w.stats.written >= 6000, 20, "6000 rows written")
    assert history(pg) == expected_keys(feeder)
    last = {inst: (EPOCH, max(s for i, s in feeder.sent if i == inst)) for inst in INSTRUMENTS}
    assert latest(pg) == last
    c = w.counters()
    assert c["inserted"] == 6000 and c["retries"] == 0 and c["pending"] == 0
    assert c["decoded"] == 0  # every row came from the values pricing sent
    assert c["batches"] >= 12 and c["lag_ns"] > 0
    # Every committed row is timed priced -> committed (mmengine_stage_latency_seconds).
    [stage] = w.stages.report().values()
    assert sum(stage["counts"]) == 6000 and min(stage["recent_us"]) > 0
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT priced_at = mmengine_ns_to_ts(priced_ts_ns), venues, detail, halted,"
            " fair_value, extract(epoch FROM priced_at) * 1e9 - priced_ts_ns"
            " FROM price_history LIMIT 1"
        ).fetchone()
        assert row is not None
        same, venues, detail, halted, fair, skew = row
        assert same and venues == ["sim"] and halted is False and fair > 100
        assert abs(skew) < 1e3  # timestamptz to the microsecond
        # Every row's priced_at (COPY BINARY, computed by the writer) is what the staging
        # path computes on the server: a replay of any row meets its key.
        differ = conn.execute(
            "SELECT count(*) FROM price_history WHERE priced_at <> mmengine_ns_to_ts(priced_ts_ns)"
        ).fetchone()
        assert differ == (0,)
        # Every field without a column of its own (the ladder, the venue breakdown, the
        # fields the schema gains later) lands in detail.
        fields = {f["name"] for f in Codec("price.avsc").schema_json["fields"]}
        assert set(detail) == fields - set(HISTORY_COLUMNS)
        parts = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'price_history'::regclass"
        ).fetchone()
        assert parts is not None and parts[0] >= 2  # today's and tomorrow's partitions


def push_all(ctx: zmq.Context, endpoint: str, messages: list[list[bytes]]) -> None:
    """PUSH these exact sink messages (their parts; bytes as a spool would replay them)."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    for m in messages:
        sock.send(sink_message(*m))
    sock.close()


def run_of(epoch: int, per_instrument: int, values: bool = False) -> list[list[bytes]]:
    codec = Codec("price.avsc")
    return [
        sink_parts(codec, inst, epoch, seq, values)
        for seq in range(1, per_instrument + 1)
        for inst in INSTRUMENTS
    ]


def test_replays_are_absorbed_and_latest_never_regresses(
    pg: PgServer,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., PostgresWriter],
) -> None:
    w = writers(pg.dsn, batch_max_rows=128)
    newer, older = run_of(EPOCH + 1, 100), run_of(EPOCH, 200)
    push_all(ctx, w.endpoint, newer)
    wait_for(lambda: w.stats.written >= 300, 10, "the newer run")
    # An older run's Prices (an old spool delivered late) arrive after the newer ones...
    push_all(ctx, w.endpoint, older)
    wait_for(lambda: w.stats.written >= 900, 10, "the older run")
    assert latest(pg) == {inst: (EPOCH + 1, 100) for inst in INSTRUMENTS}
    assert len(history(pg)) == 900
    # ...and byte-identical replays of stored Prices (a spool segment delivered twice, a
    # batch retried after a lost commit acknowledgement) change nothing.
    push_all(ctx, w.endpoint, newer[150:] + older[:300])
    wait_for(lambda: w.stats.written >= 1350, 10, "the replay")
    assert w.stats.inserted == 900 and w.stats.retries == 0
    assert len(history(pg)) == 900
    assert latest(pg) == {inst: (EPOCH + 1, 100) for inst in INSTRUMENTS}


def records_of(messages: list[list[bytes]]) -> tuple[list[bytes], list[bytes]]:
    """(spool records, pickled values) of sink messages made with `values=True`."""
    return [sink_message(*m[:3]) for m in messages], [m[3] for m in messages]


def notifications(conn: Any) -> list[dict[str, int]]:
    """The mmengine_prices payloads delivered to a LISTENing connection so far."""
    return [json.loads(n.payload) for n in conn.notifies(timeout=0.5, stop_after=100)]


def test_a_batch_meeting_stored_rows_is_staged_and_ends_exactly_right(
    pg: PgServer,  # noqa: F811
) -> None:
    records, values = records_of(run_of(EPOCH, 40, values=True))
    writer = PgBatchWriter(pg.dsn)
    with pg.connect() as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        # A batch of new Prices goes straight into price_history.
        first = writer.write(records[:60], values[:60])
        assert not first.staged and first.inserted == 60 and not writer.replaying
        # A batch holding a duplicate of its own and 30 stored rows (a retried batch whose
        # commit was acknowledged after all, say): the direct COPY meets the key, rolls
        # back whole, and the staging path absorbs exactly the replayed rows.
        mixed = [*records[30:90], records[80]]
        second = writer.write(mixed, [*values[30:90], values[80]])
        assert second.staged and second.rows == 61 and second.inserted == 30
        assert writer.replaying  # the next batch goes through staging first
        third = writer.write(records[90:105], values[90:105])
        assert third.staged and third.inserted == 15 and not writer.replaying
        # All new again: back on the direct path.
        fourth = writer.write(records[105:], values[105:])
        assert not fourth.staged and fourth.inserted == 15
        # Old Prices of this run, replayed last, change nothing and never move latest back.
        fifth = writer.write(records[:90], values[:90])
        assert fifth.staged and fifth.inserted == 0
        # One notification per committed batch, none for a rolled-back direct attempt,
        # each with its batch's highest (epoch, seq) and row count.
        got = notifications(listener)
    writer.close()
    assert got == [
        {"epoch": EPOCH, "seq": seq, "rows": n}
        for seq, n in ((20, 60), (30, 61), (35, 15), (40, 15), (30, 90))
    ]
    assert history(pg) == sorted((i, EPOCH, s) for i in INSTRUMENTS for s in range(1, 41))
    assert latest(pg) == {inst: (EPOCH, 40) for inst in INSTRUMENTS}
    with pg.connect() as conn:
        # The staged rows are the same rows the direct path writes, field for field.
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (fair_value, venues, detail::text))"
            " FROM price_history WHERE seq = 10 AND instrument = 'ETH-USDT'"
        ).fetchone()
        assert row == (1, 1)


def test_a_whole_spool_replayed_after_a_crash_ends_exactly_right(
    pg: PgServer,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., PostgresWriter],
    tmp_path: Path,
) -> None:
    records, values = records_of(run_of(EPOCH, 500, values=True))
    # The state a crash leaves: every record still in the spool on disk (none acknowledged),
    # the oldest 1,000 committed already.
    spool_dir = tmp_path / "crashed"
    spool = Spool(spool_dir, 1 << 30, name="postgres spool")
    spool.set_away(True)  # straight to segment files
    for record in records:
        spool.put(record)
    spool.flush()
    spool.close()
    committed = PgBatchWriter(pg.dsn)
    assert committed.write(records[:1000], values[:1000]).inserted == 1000
    committed.close()
    w = writers(pg.dsn, spool_dir, batch_max_rows=400)
    wait_for(lambda: w.stats.written >= 1500, 20, "the spool to be replayed")
    # Then new Prices, as pricing sends them.
    push_all(ctx, w.endpoint, run_of(EPOCH + 1, 100, values=True))
    wait_for(lambda: w.stats.written >= 1800, 20, "the new Prices")
    c = w.counters()
    assert c["pending"] == 0 and c["retries"] == 0 and c["undecodable"] == 0
    # The replayed spool is decoded (no values came with it), its committed part absorbed.
    assert c["written"] == 1800 and c["inserted"] == 800 and c["decoded"] == 1500
    # Batches of 400 from the spool: the first meets the key and is staged, and so are the
    # next ones until one comes out all new (the fourth); the new Prices go direct.
    assert c["staged"] == 4 and c["batches"] > 4
    assert c["recovered"] == 1500
    want = sorted(
        [(i, EPOCH, s) for i in INSTRUMENTS for s in range(1, 501)]
        + [(i, EPOCH + 1, s) for i in INSTRUMENTS for s in range(1, 101)]
    )
    assert history(pg) == want
    assert latest(pg) == {inst: (EPOCH + 1, 100) for inst in INSTRUMENTS}


def test_postgres_sigkill_mid_batch_batch_is_retried_and_key_absorbs_replay(
    pg: PgServer,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., PostgresWriter],
) -> None:
    w = writers(pg.dsn, batch_max_rows=2000)
    feeder = Feeder(ctx, w.endpoint, INSTRUMENTS, EPOCH, rate=8000)
    feeder.start()
    wait_for(lambda: w.stats.written > 4000, 10, "rows before the kill")
    wait_for(lambda: w._inflight > 0, 5, "a batch in flight")
    pg.kill()  # SIGKILL the postmaster mid-batch
    killed_at = len(feeder.sent)
    time.sleep(1.0)
    pg.start()  # crash recovery; committed rows survive
    time.sleep(1.5)
    feeder.halt.set()
    feeder.join()
    total = len(feeder.sent)
    wait_for(lambda: w.counters()["pending"] == 0, 30, "the spool to drain")
    c = w.counters()
    print("counters after the postgres kill:", c, "sent", total, "killed at", killed_at)
    assert c["retries"] >= 1 and c["retried"] > 0 and c["connects"] >= 2
    assert feeder.stalled == 0
    rows = history(pg)
    assert rows == expected_keys(feeder)  # nothing lost, nothing twice
    assert c["written"] - c["inserted"] >= 0  # replays (if any) were absorbed, not stored


def test_db_tail_prints_every_row_exactly_once_across_forced_disconnects(
    pg: PgServer,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., PostgresWriter],
) -> None:
    w = writers(pg.dsn, batch_max_rows=200, batch_max_wait_ms=10)
    tail = subprocess.Popen(
        [sys.executable, "-m", "mmengine.cli", "db-tail", "--dsn", pg.dsn, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines: list[dict[str, Any]] = []

    def read() -> None:
        assert tail.stdout is not None
        for line in tail.stdout:
            lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # db-tail starts "from now": wait until it is listening before any row exists.
        wait_for(lambda: _tail_backends(pg) == 1, 10, "db-tail to connect")
        feeder = Feeder(ctx, w.endpoint, INSTRUMENTS, EPOCH, rate=1500)
        feeder.start()
        kills = 0
        for _ in range(3):
            time.sleep(0.7)
            # Cut db-tail's own connection mid-flow: notifications sent while it is away
            # are lost; its catch-up query on reconnect must fill the hole.
            kills += _terminate_tail(pg)
            wait_for(lambda: _tail_backends(pg) == 1, 10, "db-tail to reconnect")
        time.sleep(0.5)
        feeder.halt.set()
        feeder.join()
        want = expected_keys(feeder)
        wait_for(lambda: len(lines) >= len(want), 20, f"{len(want)} rows printed")
        time.sleep(1.0)  # anything printed twice would show up now
    finally:
        tail.terminate()
        tail.wait(timeout=10)
        reader.join(timeout=5)
    assert tail.stderr is not None
    err = tail.stderr.read()
    assert kills == 3 and err.count("reconnecting") >= 3, err
    got = [(r["instrument"], r["epoch"], r["seq"]) for r in lines]
    assert len(got) == len(set(got)), "a row was printed twice"
    assert sorted(got) == want == history(pg)
    # Per instrument, in seq order.
    for inst in INSTRUMENTS:
        seqs = [s for i, _, s in got if i == inst]
        assert seqs == sorted(seqs)


def _tail_backends(server: PgServer) -> int:
    with server.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mmengine-db-tail'"
        ).fetchone()
    return int(row[0]) if row else 0


def _terminate_tail(server: PgServer) -> int:
    with server.connect() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'mmengine-db-tail'"
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def test_db_tail_since_seq_instrument_and_count(
    pg: PgServer,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., PostgresWriter],
) -> None:
    w = writers(pg.dsn)
    push_all(ctx, w.endpoint, run_of(EPOCH, 100))
    wait_for(lambda: w.stats.written >= 300, 10, "rows")
    out = cli(
        "db-tail", "--dsn", pg.dsn, "--instrument", "ETH-USDT", "--since-seq", "40",
        "--count", "50", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["instrument"], r["seq"]) for r in rows] == [("ETH-USDT", s) for s in range(41, 91)]
    assert rows[0]["venues"] == ["sim"] and "bids" in rows[0]["detail"]
    # Readable lines by default.
    out = cli("db-tail", "--dsn", pg.dsn, "--since-seq", "99", "--count", "3")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3
    assert all(" seq     100  fair " in line for line in out.stdout.splitlines()), out.stdout


def test_writer_runs_as_a_least_privilege_role(
    pg: PgServer,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., PostgresWriter],
) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE ROLE mm_writer LOGIN")
        conn.execute("GRANT SELECT, INSERT, UPDATE ON price_history, price_latest TO mm_writer")
        conn.execute("GRANT SELECT ON mmengine_migrations TO mm_writer")
        conn.execute("GRANT TEMPORARY ON DATABASE postgres TO mm_writer")
        # Nothing else: the fresh database has no partition yet, and the writer makes them
        # through the SECURITY DEFINER function.
    dsn = pg.dsn.replace("user=postgres", "user=mm_writer")
    w = writers(dsn)
    push_all(ctx, w.endpoint, run_of(EPOCH, 50))
    wait_for(lambda: w.stats.written >= 150, 10, "rows written as mm_writer")
    assert w.stats.retries == 0 and len(history(pg)) == 150
    with pg.connect() as conn:
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'price_history'::regclass"
        ).fetchall()
    assert owners == [("postgres",)]
