"""The Postgres writer (thread `pg-writer`, plus its helper thread `pg-commit`, which owns
the database connection): pulls Prices from `inproc://sink.postgres`, keeps them in the
durable spool shared with the Kafka writer, writes them in batches, and forgets them only
once the batch's transaction has committed.

Pricing never waits on Postgres: the writer thread only moves records from its inproc
queue into the spool and hands batches to `pg-commit`; every blocking call (connect, COPY,
commit) happens on the helper, so a server that is down, slow or restarting only makes the
spool grow (on disk, once the server is found away).

Nothing pricing already had is decoded again: with each Price, pricing sends its values
(`mmengine.codec.price_values`, pickled, in-process only) beside the Avro payload; the
writer spools the Avro record (what a restart replays: after one, rows come from decoding
the spooled Avro) and keeps the values by record until the record's batch is built. The
writer thread builds the next batch's rows and COPY text while the helper waits on the
server with the one before, so Python work and the server's overlap.

One transaction per batch (`PgBatchWriter.write`):

1. COPY the batch into a temporary staging table (`ON COMMIT DELETE ROWS`, one per
   connection): COPY is ~4x faster than multi-row INSERTs from Python here.
2. `INSERT INTO price_history SELECT ... FROM stage ON CONFLICT DO NOTHING`: the key
   (instrument, epoch, seq) absorbs every replay (a batch retried after a lost commit
   acknowledgement, a spool segment replayed after a crash).
3. Upsert `price_latest` with the newest row per instrument of the batch, guarded by
   `WHERE (excluded.epoch, excluded.seq) > (price_latest.epoch, price_latest.seq)`, so a
   replay of old Prices never moves it backwards.
4. `pg_notify('mmengine_prices', '{"epoch":E,"seq":S,"rows":N}')` with the batch's highest
   (epoch, seq); it is delivered on commit, so a listener never sees a row before it is
   visible (`mmengine db-tail` also catches up by query, since NOTIFY is lost across a
   disconnect).

On an error the helper drops its connection; the writer rewinds the spool (the batch goes
out again, first), keeps everything on disk, and retries after a backoff with jitter. The
session sets `lock_timeout` and `statement_timeout`, so a batch waiting on a lock another
session holds on `price_latest` (a long report, a manual `LOCK TABLE`) is abandoned and
retried instead of holding the queue indefinitely.

A spool record that passes its CRC but is not a Price this writer can read is quarantined
(see `Spool.quarantine`) and counted in `undecodable`; it never stops the queue.
Only one batch is in flight, so batches commit in spool (FIFO) order, which keeps each
instrument's rows committing in (epoch, seq) order: what db-tail's catch-up relies on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import pickle
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import zmq
from psycopg import sql

from mmengine.codec import PRICE_INDEX, Codec, values_reader
from mmengine.latency import POSTGRES_STAGE, StageLatency
from mmengine.logs import RepeatLimiter
from mmengine.sinks.pgschema import (
    CHANNEL,
    PRICE_COLUMNS,
    check_schema,
    connect,
    redact_dsn,
    resolve_dsn,
)
from mmengine.sinks.spool import Spool, pack_frames
from mmengine.sinks.writer import SpoolingWriter, split_record

if TYPE_CHECKING:
    from mmengine.config import PostgresOutput

log = logging.getLogger("mmengine.postgres")

ENDPOINT = "inproc://sink.postgres"
APPLICATION_NAME = "mmengine-pg-writer"
STALL_S = 2.0  # a batch in flight this long: treat the server as away (spool on disk)
MAX_DRAIN = 20_000  # inproc messages per loop before looking at the helper again
DAY_NS = 86_400 * 1_000_000_000
_EPOCH_DAY = dt.date(1970, 1, 1)

# Columns of the staging table, in COPY order. Every other field of the decoded Avro record
# goes into `detail` (jsonb): the ladder, the per-venue breakdown, fields added later.
STAGE_COLUMNS = PRICE_COLUMNS
_SCALARS = STAGE_COLUMNS[6:11]  # the float columns, taken from the record as they are
# Where the columns are in a Price's values (`mmengine.codec.price_values`), and the rest,
# which goes into `detail`.
_I_INSTRUMENT, _I_EPOCH, _I_SEQ = (PRICE_INDEX[k] for k in ("instrument", "epoch", "seq"))
_I_RECV, _I_EXCHANGE = PRICE_INDEX["recv_ts_ns"], PRICE_INDEX["exchange_ts_ns"]
_I_SCALARS = tuple(PRICE_INDEX[k] for k in _SCALARS)
_I_HALTED, _I_VENUES = PRICE_INDEX["halted"], PRICE_INDEX["venues"]
_detail_from_values = values_reader(
    frozenset((*STAGE_COLUMNS[:-1], "instrument", "epoch", "seq", "priced_ts_ns"))
)

CREATE_STAGE = sql.SQL(
    "CREATE TEMPORARY TABLE IF NOT EXISTS mmengine_stage ("
    " instrument text, epoch bigint, seq bigint, priced_ts_ns bigint, recv_ts_ns bigint,"
    " exchange_ts_ns bigint, fair_value float8, best_bid float8, best_bid_size float8,"
    " best_ask float8, best_ask_size float8, halted boolean, venues text[], detail jsonb"
    ") ON COMMIT DELETE ROWS"
)
# Text COPY written as one buffer per batch (`_copy_text`): psycopg's per-row binary
# `write_row` adapted every value in Python (its text[] dumper alone cost more than the
# rest of the row); joining the lines ourselves is about a quarter of that.
COPY_STAGE = sql.SQL("COPY mmengine_stage ({}) FROM STDIN").format(
    sql.SQL(", ").join(map(sql.Identifier, STAGE_COLUMNS))
)
# COPY text format: a backslash, tab, newline or carriage return inside a value is escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


_ROW = (
    "instrument, epoch, seq, priced_at, priced_ts_ns, recv_ts_ns, exchange_ts_ns, fair_value,"
    " best_bid, best_bid_size, best_ask, best_ask_size, halted, venues, detail"
)
_FROM_STAGE = (
    "instrument, epoch, seq, mmengine_ns_to_ts(priced_ts_ns), priced_ts_ns, recv_ts_ns,"
    " exchange_ts_ns, fair_value, best_bid, best_bid_size, best_ask, best_ask_size,"
    " coalesce(halted, false), coalesce(venues, '{}'), coalesce(detail, '{}')"
)
INSERT_HISTORY = sql.SQL(
    "INSERT INTO price_history (" + _ROW + ") SELECT " + _FROM_STAGE + " FROM mmengine_stage"
    " ON CONFLICT DO NOTHING"
)
UPSERT_LATEST = sql.SQL(
    "INSERT INTO price_latest AS l (" + _ROW + ") "
    "SELECT DISTINCT ON (instrument) " + _FROM_STAGE + " FROM mmengine_stage"
    " ORDER BY instrument, epoch DESC, seq DESC"
    " ON CONFLICT (instrument) DO UPDATE SET"
    " epoch = excluded.epoch, seq = excluded.seq, priced_at = excluded.priced_at,"
    " priced_ts_ns = excluded.priced_ts_ns, recv_ts_ns = excluded.recv_ts_ns,"
    " exchange_ts_ns = excluded.exchange_ts_ns, fair_value = excluded.fair_value,"
    " best_bid = excluded.best_bid, best_bid_size = excluded.best_bid_size,"
    " best_ask = excluded.best_ask, best_ask_size = excluded.best_ask_size,"
    " halted = excluded.halted, venues = excluded.venues, detail = excluded.detail,"
    " updated_at = now()"
    # The never-regress guard: a replayed or late batch cannot move an instrument back.
    " WHERE (excluded.epoch, excluded.seq) > (l.epoch, l.seq)"
)
NOTIFY = sql.SQL("SELECT pg_notify(%s, %s)")
ENSURE_PARTITION = sql.SQL("SELECT mmengine_ensure_partition(%s)")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()  # Avro bytes/fixed
    raise TypeError(f"cannot store {type(value).__name__} in detail")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default)


def _num(value: Any) -> str:
    """A bigint or float8 in COPY text (None: NULL); float8 reads repr's shortest
    round-trip form exactly."""
    return "\\N" if value is None else repr(value)


def _text_array(values: list[str]) -> str:
    """A text[] literal, every element quoted."""
    return (
        "{"
        + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
        + "}"
    )


def _copy_line(row: tuple[Any, ...]) -> str:
    """One staging row (STAGE_COLUMNS order) as a line of COPY text."""
    return "\t".join(
        (
            row[0].translate(_COPY_ESCAPES),
            str(row[1]),
            str(row[2]),
            str(row[3]),
            _num(row[4]),
            _num(row[5]),
            _num(row[6]),
            _num(row[7]),
            _num(row[8]),
            _num(row[9]),
            _num(row[10]),
            "t" if row[11] else "f",
            _text_array(row[12]).translate(_COPY_ESCAPES),
            _dumps(row[13]).decode().translate(_COPY_ESCAPES),
        )
    )


def _copy_text(rows: list[tuple[Any, ...]]) -> bytes:
    """The staging rows as one COPY text buffer."""
    return "".join([_copy_line(row) + "\n" for row in rows]).encode()


@dataclass(slots=True)
class Prepared:
    """A batch ready for the database (`PgBatchWriter.prepare`)."""

    rows: list[tuple[Any, ...]]
    bad: list[tuple[bytes, str]]  # (record, why) skipped
    text: bytes  # the rows as COPY text
    decoded: int  # rows whose Price was decoded from the payload


@dataclass(slots=True)
class BatchResult:
    """What one committed batch did."""

    rows: int  # records in the batch (decodable ones)
    inserted: int  # new price_history rows (rows - inserted were replays)
    undecodable: int  # records skipped: not a Price this schema can read
    txn_s: float  # BEGIN .. COMMIT, seconds
    last_priced_ts_ns: int  # of the batch's last record
    bad: list[tuple[bytes, str]] = field(default_factory=list)  # (record, why) skipped
    priced_ts_ns: list[int] = field(default_factory=list)  # of every row written
    committed_ns: int = 0  # when COMMIT returned (time.time_ns)
    decoded: int = 0  # rows whose Price had to be decoded from the payload


class PgBatchWriter:
    """One connection and the per-batch transaction (used by `pg-commit` and the bench).

    Not thread-safe: one owner thread.
    """

    def __init__(
        self,
        dsn: str,
        connect_timeout_s: float = 5.0,
        statement_timeout_ms: int | None = None,
        lock_timeout_ms: int | None = None,
    ) -> None:
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.conn: psycopg.Connection[Any] | None = None
        self.codec = Codec("price.avsc")
        self.decoded = 0  # rows built by decoding the payload (no values came with them)
        self._days: set[int] = set()  # partitions known to exist on this connection
        self._log = RepeatLimiter()

    def open(self) -> psycopg.Connection[Any]:
        """Connect (if not connected), check the schema, create the staging table."""
        if self.conn is not None:
            return self.conn
        conn = connect(
            self.dsn,
            APPLICATION_NAME,
            self.connect_timeout_s,
            autocommit=True,
            # Find a dead peer on a real network (ignored on a Unix socket).
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        try:
            # Session settings (the connection is autocommit): a batch blocked by another
            # session's lock fails after lock_timeout and is retried.
            for name, value in (
                ("statement_timeout", self.statement_timeout_ms),
                ("lock_timeout", self.lock_timeout_ms),
            ):
                if value is not None:
                    conn.execute("SELECT set_config(%s, %s, false)", (name, f"{value}ms"))
            check_schema(conn)
            conn.execute(CREATE_STAGE)
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self._days.clear()
        return conn

    def close(self) -> None:
        """Drop the connection (after an error its state is unknown)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:
                log.debug("closing the postgres connection: %r", exc)

    def rows(
        self, records: list[bytes], values: Sequence[bytes | None] = ()
    ) -> tuple[list[tuple[Any, ...]], list[tuple[bytes, str]]]:
        """Staging rows from spool records; (rows, [(record, why) for each one skipped]).
        A row's last element is its `detail` (a dict, stored as jsonb).

        `values[i]`, when given, is record i's Price values as the pricing worker pickled
        them in this process (`mmengine.codec.price_values`): the row comes from them
        instead of decoding the Avro payload (several times cheaper). Without them (a
        record read back from the spool after a restart or a retry), or when they do not
        belong to the record, the payload is decoded: the spool is the truth."""
        header = self.codec.header
        out = []
        bad: list[tuple[bytes, str]] = []
        for i, record in enumerate(records):
            try:
                instrument, epoch, seq, priced_ts_ns, payload = split_record(record, header)
                name = instrument.decode()
                given = values[i] if i < len(values) else None
                row = self._row_from_values(name, epoch, seq, priced_ts_ns, given)
                if row is None:
                    row = self._row_from_payload(name, epoch, seq, priced_ts_ns, payload)
                    self.decoded += 1
            except Exception as exc:
                # A poison record must not stop the queue behind it: skip it (the writer
                # thread quarantines and counts it).
                bad.append((record, f"postgres: {type(exc).__name__}: {exc}"))
                continue
            out.append(row)
        return out, bad

    @staticmethod
    def _row_from_values(
        name: str, epoch: int, seq: int, priced_ts_ns: int, given: bytes | None
    ) -> tuple[Any, ...] | None:
        if given is None:
            return None
        try:
            v = pickle.loads(given)  # from this process's pricing worker only
            if v[_I_INSTRUMENT] != name or v[_I_EPOCH] != epoch or v[_I_SEQ] != seq:
                return None
            venues = v[_I_VENUES]
            return (
                name,
                epoch,
                seq,
                priced_ts_ns,
                v[_I_RECV],
                v[_I_EXCHANGE],
                *(v[i] for i in _I_SCALARS),
                bool(v[_I_HALTED]),
                venues,
                _detail_from_values(v),
            )
        except Exception:
            return None  # not what this version writes: the payload decides

    def _row_from_payload(
        self, name: str, epoch: int, seq: int, priced_ts_ns: int, payload: bytes
    ) -> tuple[Any, ...]:
        rec = self.codec.decode(payload)
        for k in ("instrument", "epoch", "seq", "priced_ts_ns"):
            rec.pop(k, None)
        venues = rec.pop("venues", None)
        if not isinstance(venues, list) or not all(isinstance(v, str) for v in venues):
            if venues is not None:
                rec["venues"] = venues  # a richer shape: keep it in detail
            venues = []
        halted = rec.pop("halted", False)
        return (
            name,
            epoch,
            seq,
            priced_ts_ns,
            rec.pop("recv_ts_ns", 0),
            rec.pop("exchange_ts_ns", 0),
            *(rec.pop(k, None) for k in _SCALARS),
            bool(halted),
            venues,
            rec,
        )

    def _ensure_partitions(
        self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]
    ) -> None:
        days = {r[3] // DAY_NS for r in rows} - self._days
        if not days:
            return
        # Also the next day, so midnight finds its partition already there.
        wanted = sorted(days | {d + 1 for d in days})
        with conn.transaction():
            for day in wanted:
                conn.execute(ENSURE_PARTITION, (_EPOCH_DAY + dt.timedelta(days=day),))
        self._days.update(wanted)

    def prepare(self, records: list[bytes], values: Sequence[bytes | None] = ()) -> Prepared:
        """Everything a batch needs before the database: rows and the COPY buffer (pure
        CPU, no connection; the writer thread does it for the next batch while the helper
        waits on the server with the one before). `values`: see `rows`."""
        decoded = self.decoded
        rows, bad = self.rows(records, values)
        return Prepared(rows, bad, _copy_text(rows) if rows else b"", self.decoded - decoded)

    def write(self, records: list[bytes], values: Sequence[bytes | None] = ()) -> BatchResult:
        """Prepare and commit a batch (see `commit`)."""
        return self.commit(self.prepare(records, values))

    def commit(self, batch: Prepared) -> BatchResult:
        """Write a prepared batch in one transaction; raises psycopg errors (the caller
        reconnects)."""
        conn = self.open()
        rows, bad = batch.rows, batch.bad
        if not rows:
            return BatchResult(0, 0, len(bad), 0.0, 0, bad)
        self._ensure_partitions(conn, rows)
        top = max((r[1], r[2]) for r in rows)
        note = orjson.dumps({"epoch": top[0], "seq": top[1], "rows": len(rows)}).decode()
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(COPY_STAGE) as copy:
                copy.write(batch.text)
            cur.execute(INSERT_HISTORY)
            inserted = cur.rowcount
            cur.execute(UPSERT_LATEST)
            cur.execute(NOTIFY, (CHANNEL, note))
        committed_ns = time.time_ns()
        return BatchResult(
            len(rows),
            inserted,
            len(bad),
            time.perf_counter() - t0,
            rows[-1][3],
            bad,
            [r[3] for r in rows],
            committed_ns,
            batch.decoded,
        )


@dataclass(slots=True)
class PostgresWriterStats:
    """Counters of the writer (plain ints read by other threads; no lock)."""

    received: int = 0  # sink messages pulled from the pricing workers
    written: int = 0  # records committed (replays included)
    inserted: int = 0  # new price_history rows
    batches: int = 0  # committed transactions
    retries: int = 0  # batches that failed and go out again
    retried: int = 0  # records in them
    undecodable: int = 0  # records skipped (not a readable Price)
    decoded: int = 0  # rows built by decoding the Avro payload (read back from the spool)
    connects: int = 0  # connections opened
    away_episodes: int = 0  # times the server was found away
    lag_ns: int = 0  # now - priced_ts_ns of the last committed record
    last_txn_us: int = 0  # duration of the last batch transaction


@dataclass(slots=True)
class _Done:
    """The helper's answer for one batch."""

    n: int  # records taken from the spool for it
    result: BatchResult | None
    error: BaseException | None
    connected: bool  # the helper opened a new connection for it


class _Committer(threading.Thread):
    """Owns the connection; writes each batch it is given, answers on `results`, and wakes
    the writer by writing a byte to a pipe the writer polls.

    A pipe rather than a zmq socket: this thread can be stuck in a database call for as
    long as the server is (a SIGSTOPped server never answers), and an open zmq socket here
    would then block the engine's `Context.term()` on stop. It is a daemon thread.
    """

    def __init__(self, wake_fd: int, dsn: str, cfg: PostgresOutput) -> None:
        super().__init__(name="pg-commit", daemon=True)
        self.wake_fd = wake_fd  # the pipe's write end; this thread closes it when it exits
        self.batch = PgBatchWriter(
            dsn, cfg.connect_timeout_s, cfg.statement_timeout_ms, cfg.lock_timeout_ms
        )
        # (records taken from the spool for it, the prepared batch), None: exit
        self.requests: queue.SimpleQueue[tuple[int, Prepared] | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[_Done] = queue.SimpleQueue()

    def run(self) -> None:
        try:
            while True:
                request = self.requests.get()
                if request is None:
                    return
                n, prepared = request
                connected = self.batch.conn is None
                try:
                    done = _Done(n, self.batch.commit(prepared), None, connected)
                except Exception as exc:
                    # Connection lost, server restarting, schema too old, a bad statement:
                    # the connection's state is unknown, so drop it; the batch is retried.
                    self.batch.close()
                    done = _Done(n, None, exc, connected)
                self.results.put(done)
                # A full pipe means wake-ups are pending already; a closed read end means
                # the writer is gone and the answer no longer matters.
                with contextlib.suppress(BlockingIOError, BrokenPipeError):
                    os.write(self.wake_fd, b"x")
        finally:
            self.batch.close()
            os.close(self.wake_fd)

    def stop(self) -> None:
        self.requests.put(None)


class PostgresWriter(SpoolingWriter):
    """Delivers the Prices PUSHed to `endpoint` to Postgres; see the module docstring.

    Start it before the pricing workers (it binds the PULL) and stop it after them: on
    `stop()` it drains its queue, writes for up to `cfg.drain_timeout_s`, and leaves what
    is not committed in the spool for the next start. Construct it only to start it: it
    opens the pipe its helper wakes it through, which the threads close when they exit.
    """

    sink_name = "postgres"  # the `sink` label of its metrics and status entry
    takes_values = True  # pricing sends each Price's values with it (see `_drain`)

    def __init__(
        self,
        ctx: zmq.Context,
        cfg: PostgresOutput,
        spool_dir: str | Path,
        spool_max_bytes: int,
        spool_memory_records: int = 10_000,
        endpoint: str = ENDPOINT,
        fsync_interval_s: float | None = None,
    ) -> None:
        super().__init__(name="pg-writer", daemon=True)
        self.fsync_interval_s = fsync_interval_s
        self.ctx = ctx
        self.cfg = cfg
        self.endpoint = endpoint
        self.dsn = resolve_dsn(cfg.dsn)
        self.dsn_display = redact_dsn(self.dsn)
        self.spool_dir = Path(spool_dir)
        self.spool_max_bytes = spool_max_bytes
        self.spool_memory_records = spool_memory_records
        self.stats = PostgresWriterStats()
        self.stages = StageLatency((POSTGRES_STAGE,))  # priced -> committed, per row
        self.spool: Spool | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        self._committer = _Committer(wake_w, self.dsn, cfg)
        self._inflight = 0  # records in the batch the helper is writing (0: none)
        self._ready: tuple[int, Prepared] | None = None  # the next batch, prepared
        self._preparer = PgBatchWriter(self.dsn)  # this thread's: rows, never a connection
        self._sent_at = 0.0
        self._waiting_since: float | None = None  # oldest pending record's wait began
        self._backoff = cfg.reconnect_min_s
        self._next_try = 0.0
        self._log = RepeatLimiter()
        # Spool record -> the Price values pricing sent with it (pickled), until its batch
        # is handed out; bounded, oldest out first (a record without them is decoded).
        self._values: OrderedDict[bytes, bytes] = OrderedDict()
        self._values_max = max(4 * spool_memory_records, 4 * cfg.batch_max_rows)

    def helpers(self) -> list[threading.Thread]:
        return [self._committer]

    def summary_line(self) -> str:
        c = self.counters()
        return (
            f"postgres: {c['received']} prices in, {c['written']} written "
            f"({c['inserted']} new rows) in {c['batches']} batches, {c['retries']} retries, "
            f"{c.get('spooled', 0)} spooled, {c.get('dropped', 0)} dropped, "
            f"{c.get('pending', 0)} left in the spool, lag {c['lag_ns'] / 1e6:.1f} ms"
        )

    def endpoint_info(self) -> dict[str, Any]:
        return {
            "dsn": self.dsn_display,  # never the password
            "tables": ["price_history", "price_latest"],
            "channel": CHANNEL,
        }

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.RCVHWM, 100_000)
        try:
            pull.bind(self.endpoint)
            self.spool = spool = Spool(
                self.spool_dir,
                self.spool_max_bytes,
                memory_records=self.spool_memory_records,
                name="postgres spool",
                fsync_interval_s=self.fsync_interval_s,
            )
        except Exception as exc:
            self.error = exc
            pull.close()
            os.close(self._wake_r)
            os.close(self._committer.wake_fd)  # never started: nobody else closes it
            self.ready.set()
            return
        self._committer.start()
        self.ready.set()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        deadline: float | None = None
        try:
            while True:
                got = self._drain(pull, spool)
                now = time.monotonic()
                self._collect(spool, now)
                stopping = self._stop_event.is_set()
                self._send(spool, now, stopping)
                self._watch(spool, now)
                spool.flush()
                if stopping:
                    if deadline is None:
                        deadline = now + self.drain_timeout_s()
                    if got == 0 and (spool.pending == 0 or now > deadline):
                        break
                poller.poll(self._timeout_ms(spool, now))
        except Exception:
            log.exception("postgres writer failed; uncommitted records stay in the spool")
            raise
        finally:
            self._shutdown(pull, spool)

    def _timeout_ms(self, spool: Spool, now: float) -> int:
        if self._inflight:
            return 100  # the helper wakes us; this is only for the stall watch
        if spool.pending:
            due = max(self._next_try, (self._waiting_since or now) + self._max_wait_s())
            return max(1, min(100, int((due - now) * 1000) + 1))
        return 100

    def _max_wait_s(self) -> float:
        return self.cfg.batch_max_wait_ms / 1000

    def _drain(self, pull: zmq.Socket, spool: Spool) -> int:
        """Move what pricing sent into the spool (the Avro record: what a restart replays)
        and keep the Price values that came with it, by record, for its batch."""
        n = 0
        put = spool.put
        recv = pull.recv_multipart
        cache = self._values
        limit = self._values_max
        while n < MAX_DRAIN:
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) == 4:
                record = pack_frames(frames[:3])
                cache[record] = frames[3]
                if len(cache) > limit:  # far behind (the server is away): decode later
                    cache.popitem(last=False)
            else:
                record = pack_frames(frames)
            put(record)
            n += 1
        self.stats.received += n
        return n

    def _send(self, spool: Spool, now: float, stopping: bool) -> None:
        """Hand the next batch to the helper: when it is full, has waited long enough, or
        there is a backlog (spooled, or stopping). While one is in flight, prepare the next
        (rows and COPY text, on this thread), so the helper has it the moment it is free."""
        if now < self._next_try:
            return
        if self._inflight:
            if self._ready is None and self._due(spool, now, stopping):
                self._ready = self._prepare(spool, now)
            return
        batch = self._ready
        self._ready = None
        if batch is None:
            if not self._due(spool, now, stopping):
                return
            batch = self._prepare(spool, now)
            if batch is None:
                return
        self._inflight = batch[0]
        self._sent_at = now
        self._committer.requests.put(batch)

    def _due(self, spool: Spool, now: float, stopping: bool) -> bool:
        """Whether records not yet taken make a batch now."""
        waiting = spool.pending - spool.in_flight
        if waiting <= 0:
            self._waiting_since = None
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        return (
            waiting >= self.cfg.batch_max_rows
            or now - self._waiting_since >= self._max_wait_s()
            or spool.away
            or stopping
        )

    def _prepare(self, spool: Spool, now: float) -> tuple[int, Prepared] | None:
        records = spool.take(self.cfg.batch_max_rows)
        if not records:
            return None
        waiting = spool.pending - spool.in_flight
        self._waiting_since = now if waiting > 0 else None
        cache = self._values
        values = [cache.pop(r, None) for r in records] if cache else []
        return len(records), self._preparer.prepare(records, values)

    def _collect(self, spool: Spool, now: float) -> None:
        """Apply the helper's answers: ack a committed batch; rewind and back off on error."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                done = self._committer.results.get_nowait()
            except queue.Empty:
                return
            self._apply(done, spool, now)

    def _apply(self, done: _Done, spool: Spool, now: float) -> None:
        self._inflight = 0
        stats = self.stats
        if done.connected and done.error is None:
            stats.connects += 1
            log.info("postgres writer connected to %s", self.dsn_display)
        result = done.result
        if result is not None:
            for record, why in result.bad:
                spool.quarantine(record, why)
            spool.ack(done.n)
            stats.written += result.rows
            stats.inserted += result.inserted
            stats.undecodable += result.undecodable
            stats.decoded += result.decoded
            stats.batches += 1
            stats.last_txn_us = int(result.txn_s * 1e6)
            if result.last_priced_ts_ns:
                stats.lag_ns = time.time_ns() - result.last_priced_ts_ns
                add = self.stages.add
                committed_ns = result.committed_ns
                for priced_ns in result.priced_ts_ns:
                    add(((committed_ns - priced_ns) / 1000,))
            self._backoff = self.cfg.reconnect_min_s
            if spool.away:
                log.info(
                    "postgres is back: writing %d spooled records (%d bytes)",
                    spool.pending,
                    spool.stats.spool_bytes,
                )
                spool.set_away(False)
            return
        # Failed: the batch (and everything after it) goes out again, oldest first.
        stats.retries += 1
        self._ready = None  # rewound with the rest: prepared again from the spool
        stats.retried += spool.rewind()
        if not spool.away:
            stats.away_episodes += 1
            spool.set_away(True)
        wait = self._backoff * random.uniform(0.5, 1.0)  # jitter: engines do not stampede
        self._next_try = now + wait
        self._backoff = min(self._backoff * 2, self.cfg.reconnect_max_s)
        held = self._log.allow(type(done.error).__name__)
        if held is not None:
            log.warning(
                "postgres %s: %s; retrying in %.2f s, %d records waiting in the spool "
                "(%d bytes; %d such errors not logged)",
                self.dsn_display,
                str(done.error).strip() or repr(done.error),
                wait,
                spool.pending,
                spool.stats.spool_bytes,
                held,
            )

    def _watch(self, spool: Spool, now: float) -> None:
        """A batch in flight for STALL_S: keep everything on disk until it answers."""
        if self._inflight and now - self._sent_at > STALL_S and not spool.away:
            self.stats.away_episodes += 1
            log.warning(
                "postgres: a batch of %d has not committed after %.1f s; spooling to disk",
                self._inflight,
                now - self._sent_at,
            )
            spool.set_away(True)

    def _shutdown(self, pull: zmq.Socket, spool: Spool) -> None:
        pull.close()
        self._committer.stop()
        # A batch in flight may still commit: wait briefly and ack it if it did; if it
        # commits after we give up, the next start replays it and the key absorbs it.
        self._committer.join(timeout=2.0 if self._inflight else 5.0)
        self._collect(spool, time.monotonic())
        os.close(self._wake_r)
        left = spool.pending
        spool.close()
        if left:
            log.warning(
                "postgres writer stopped with %d records not committed; they are in %s "
                "and go out first on the next start",
                left,
                self.spool_dir,
            )
