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
the spooled Avro) and, while it keeps pace, turns the values into the record's COPY row as
the record arrives (`RowBuilder.from_message`), so a batch is ready the moment the helper
is free (`_due` says when one is cut; under load, it is what arrived during the previous
commit). When behind, it only spools and keeps the values, and builds the rows when their
batch is cut. Rows are COPY BINARY, built with `struct` (no float formatting in Python).

One transaction per batch (`PgBatchWriter.commit`):

1. COPY the batch straight into `price_history`. A batch holds new Prices unless it is a
   replay (a batch retried after a lost commit acknowledgement, a spool segment replayed
   after a crash, a duplicate): then the COPY hits the primary key, the transaction rolls
   back whole (nothing of it is visible, its NOTIFY is never sent), and the batch is
   written again by the staging path: COPY into a temporary table, then
   `INSERT INTO price_history SELECT ... ON CONFLICT DO NOTHING`, which absorbs every
   replayed row. A committed direct COPY is exactly what ON CONFLICT DO NOTHING would have
   done (no row conflicted), so both paths store the same rows. After a conflict the
   writer stays on the staging path until a batch comes out all new (a replayed spool is
   not COPYed twice per batch).
2. Upsert `price_latest` with the newest row per instrument of the batch (picked here, by
   (epoch, seq), and read back by key from price_history in the same statement: no jsonb
   parsed twice, no temporary table touched on the direct path), guarded by
   `WHERE (excluded.epoch, excluded.seq) > (price_latest.epoch, price_latest.seq)`, so a
   replay of old Prices never moves it backwards.
3. `pg_notify('mmengine_prices', '{"epoch":E,"seq":S,"rows":N}')` with the batch's highest
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
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import zmq
from psycopg import sql

from mmengine.bus import unpack_frames
from mmengine.codec import PRICE_FIELDS, PRICE_INDEX, Codec
from mmengine.latency import POSTGRES_STAGE
from mmengine.pricing.worker import SINK_KEY
from mmengine.sinks.pgschema import (
    CHANNEL,
    PRICE_COLUMNS,
    check_schema,
    connect,
    redact_dsn,
    resolve_dsn,
)
from mmengine.sinks.spool import Spool
from mmengine.sinks.writer import SpoolingWriter, split_record

if TYPE_CHECKING:
    from mmengine.config import PostgresOutput

log = logging.getLogger("mmengine.postgres")

ENDPOINT = "inproc://sink.postgres"
APPLICATION_NAME = "mmengine-pg-writer"
STALL_S = 2.0  # a batch in flight this long: treat the server as away (spool on disk)
# Inproc messages per loop (each one's row is built as it arrives: ~10 ms of work) before
# looking at the helper again; the drain also stops early when the helper is free.
MAX_DRAIN = 1_000
# A Price that waited this long in the inproc socket (priced -> drained) means the writer
# is behind: it stops building rows as Prices arrive until it has caught up.
BEHIND_NS = 100_000_000
DAY_NS = 86_400 * 1_000_000_000
_EPOCH_DAY = dt.date(1970, 1, 1)

# The columns of price_history (and price_latest) the writer fills, in COPY order.
HISTORY_COLUMNS = (*PRICE_COLUMNS[:3], "priced_at", *PRICE_COLUMNS[3:])
# The Price fields with a column of their own; every other field goes into `detail`
# (jsonb): the ladder, the per-venue breakdown, fields added later.
_COLUMN_FIELDS = frozenset(PRICE_COLUMNS[:-1])
_FLOATS = PRICE_COLUMNS[6:11]  # fair_value .. best_ask_size
# Where the fields are in a Price's values (`mmengine.codec.price_values`). The row built
# from them must be byte for byte the row built by decoding the payload (a unit test
# checks it on random Prices); this check catches a schema change that moves them.
_DETAIL_FIELDS = tuple(f for f in PRICE_FIELDS if f not in _COLUMN_FIELDS)
if (
    [PRICE_INDEX[k] for k in (*PRICE_COLUMNS[:3], *_FLOATS, "venues")] != list(range(9))
    or [PRICE_INDEX[k] for k in ("exchange_ts_ns", "recv_ts_ns", "halted")] != [9, 10, 17]
    or [PRICE_INDEX[k] for k in _DETAIL_FIELDS] != [12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 23]
):
    raise RuntimeError("schemas/price.avsc changed: update RowBuilder in sinks/postgres.py")

# --- COPY BINARY ---------------------------------------------------------------------------
# One buffer per batch, built with struct: no float formatting in Python, and NaN or
# Infinity keep their meaning. A row: field count, then each field as length + bytes.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no extension
COPY_TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # timestamptz zero (2000-01-01 UTC) in Unix microseconds
_TEXT_OID = 25  # element type of text[]
_NULL = b"\xff\xff\xff\xff"  # a field of length -1
_HEAD = struct.Struct(">hi").pack  # field count, length of the instrument
_I32 = struct.Struct(">i").pack
_ARRAY = struct.Struct(">iiiiii").pack  # length, 1 dimension, no NULLs, element type, n, 1
_EMPTY_ARRAY = struct.pack(">iiii", 12, 0, 0, _TEXT_OID)  # length, 0 dimensions
_INT8 = struct.Struct(">iq").pack
_FLOAT8 = struct.Struct(">id").pack
_BOOL = struct.Struct(">i?").pack
# epoch, seq, priced_at, priced_ts_ns, recv_ts_ns, exchange_ts_ns, the five floats, halted
_FIXED = struct.Struct(">" + "iq" * 6 + "id" * 5 + "i?").pack
_JSONB = struct.Struct(">ib").pack  # length, jsonb version 1 (then the JSON text)
_CACHE_MAX = 4096  # instruments / venue lists whose encoding is kept

_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, HISTORY_COLUMNS))
_STAGE_TYPES = (
    " instrument text, epoch bigint, seq bigint, priced_at timestamptz, priced_ts_ns bigint,"
    " recv_ts_ns bigint, exchange_ts_ns bigint, fair_value float8, best_bid float8,"
    " best_bid_size float8, best_ask float8, best_ask_size float8, halted boolean,"
    " venues text[], detail jsonb"
)
# A temporary table (one per connection) for the staging path. ON COMMIT DELETE ROWS costs
# a truncation at every commit of a transaction that touched it: only the staging path does.
CREATE_STAGE = sql.SQL(
    "CREATE TEMPORARY TABLE IF NOT EXISTS mmengine_stage (" + _STAGE_TYPES + ")"
    " ON COMMIT DELETE ROWS"
)
COPY_HISTORY = sql.SQL("COPY price_history ({}) FROM STDIN (FORMAT BINARY)").format(_COLUMNS)
COPY_STAGE = sql.SQL("COPY mmengine_stage ({}) FROM STDIN (FORMAT BINARY)").format(_COLUMNS)
INSERT_HISTORY = sql.SQL(
    "INSERT INTO price_history ({0}) SELECT {0} FROM mmengine_stage ON CONFLICT DO NOTHING"
).format(_COLUMNS)
# The newest row per instrument of the batch, by its full key (the partition is pruned per
# row), read back from price_history: the row just written, or the stored one it replays;
# then the notification, in the same statement (one round trip less per batch; a
# data-modifying WITH runs once, whatever the outer query reads).
UPSERT_LATEST_AND_NOTIFY = sql.SQL(
    "WITH latest AS (INSERT INTO price_latest AS l ({0}) SELECT {1}"
    " FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[])"
    "   AS k(instrument, epoch, seq, priced_ts_ns)"
    # LATERAL ... LIMIT 1: one primary-key lookup per key in the one partition its
    # priced_at prunes to, whatever the statistics say (a plain join may hash a seq scan).
    " CROSS JOIN LATERAL (SELECT * FROM price_history p WHERE p.instrument = k.instrument"
    "   AND p.epoch = k.epoch AND p.seq = k.seq"
    "   AND p.priced_at = mmengine_ns_to_ts(k.priced_ts_ns) LIMIT 1) h"
    " ON CONFLICT (instrument) DO UPDATE SET"
    " epoch = excluded.epoch, seq = excluded.seq, priced_at = excluded.priced_at,"
    " priced_ts_ns = excluded.priced_ts_ns, recv_ts_ns = excluded.recv_ts_ns,"
    " exchange_ts_ns = excluded.exchange_ts_ns, fair_value = excluded.fair_value,"
    " best_bid = excluded.best_bid, best_bid_size = excluded.best_bid_size,"
    " best_ask = excluded.best_ask, best_ask_size = excluded.best_ask_size,"
    " halted = excluded.halted, venues = excluded.venues, detail = excluded.detail,"
    " updated_at = now()"
    # The never-regress guard: a replayed or late batch cannot move an instrument back.
    " WHERE (excluded.epoch, excluded.seq) > (l.epoch, l.seq))"
    " SELECT pg_notify(%s, %s)"
).format(_COLUMNS, sql.SQL(", ").join(sql.SQL("h.") + sql.Identifier(c) for c in HISTORY_COLUMNS))
ENSURE_PARTITION = sql.SQL("SELECT mmengine_ensure_partition(%s)")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()  # Avro bytes/fixed
    raise TypeError(f"cannot store {type(value).__name__} in detail")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default)


def _detail_from_values(v: tuple[Any, ...]) -> bytes:
    """`detail` (JSON) of a Price's values: the fields without a column, in schema order,
    nested records as objects; the same bytes as `_dumps` of the decoded record's rest."""
    return _dumps(
        {
            "method": v[12],
            "volatility_bps": v[13],
            "half_spread_bps": v[14],
            "position": v[15],
            "skew_bps": v[16],
            "halt_reason": v[18],
            "cross_venue_crossed": v[19],
            "bids": [{"price": p, "size": s} for p, s in v[20]],
            "asks": [{"price": p, "size": s} for p, s in v[21]],
            "venues_used": [
                {
                    "venue": a,
                    "instrument": b,
                    "mid": c,
                    "weight": d,
                    "fx_rate": e,
                    "venue_seq": f,
                    "recv_ts_ns": g,
                }
                for a, b, c, d, e, f, g in v[22]
            ],
            "venues_excluded": [{"venue": a, "instrument": b, "reason": c} for a, b, c in v[23]],
        }
    )


def _pg_us(ns: int) -> int:
    """timestamptz of Unix ns, in COPY BINARY's microseconds since 2000-01-01: truncated
    toward zero as `mmengine_ns_to_ts` does (the server-side function earlier writers
    computed `priced_at` with, and the latest upsert's lookup uses), so a Price has one key
    whichever writer stored it and a replay meets it."""
    us = ns // 1000 if ns >= 0 else -(-ns // 1000)
    return us - PG_EPOCH_US


# A built row: (instrument, epoch, seq, priced_ts_ns, the row in COPY BINARY).
Row = tuple[str, int, int, int, bytes]


@dataclass(slots=True)
class Prepared:
    """A batch ready for the database (`RowBuilder.prepare`)."""

    rows: int  # records written (decodable ones)
    data: bytes  # every row, a whole COPY BINARY stream
    # the key of the newest row per instrument: instruments, epochs, seqs, priced_ts_ns
    newest: tuple[list[str], list[int], list[int], list[int]]
    top: tuple[int, int]  # the highest (epoch, seq) of the batch
    days: set[int]  # UTC days (since 1970) of the rows' priced_at
    priced_ts_ns: list[int]  # of every row, in order
    bad: list[tuple[bytes, str]]  # (record, why) skipped
    decoded: int  # rows whose Price was decoded from the payload


@dataclass(slots=True)
class BatchResult:
    """What one committed batch did."""

    rows: int  # records in the batch (decodable ones)
    inserted: int  # new price_history rows (rows - inserted were replays)
    undecodable: int  # records skipped: not a Price this schema can read
    txn_s: float  # BEGIN .. COMMIT, seconds (both attempts, when staged)
    last_priced_ts_ns: int  # of the batch's last record
    bad: list[tuple[bytes, str]] = field(default_factory=list)  # (record, why) skipped
    priced_ts_ns: list[int] = field(default_factory=list)  # of every row written
    committed_ns: int = 0  # when COMMIT returned (time.time_ns)
    decoded: int = 0  # rows whose Price had to be decoded from the payload
    staged: bool = False  # written by the staging path (ON CONFLICT DO NOTHING)


class RowBuilder:
    """Turns spool records into COPY BINARY rows and batches: pure CPU, no connection (the
    writer thread builds rows while the helper waits on the server). One owner thread."""

    def __init__(self) -> None:
        self.codec = Codec("price.avsc")
        self.decoded = 0  # rows built by decoding the payload (no values came with them)
        self._heads: dict[str, bytes] = {}  # instrument -> field count + its field
        self._venues: dict[tuple[str, ...], bytes] = {}  # venue list -> its text[] field

    def _head(self, name: str) -> bytes:
        head = self._heads.get(name)
        if head is None:
            raw = name.encode()
            head = _HEAD(len(HISTORY_COLUMNS), len(raw)) + raw
            if len(self._heads) >= _CACHE_MAX:
                self._heads.clear()
            self._heads[name] = head
        return head

    def _venue_array(self, venues: tuple[str, ...]) -> bytes:
        field_ = self._venues.get(venues)
        if field_ is None:
            items = [v.encode() for v in venues]
            body = b"".join(_I32(len(v)) + v for v in items)
            # text[]: ndim 1, no NULLs, element type, then (size, lower bound 1); or empty.
            field_ = (
                _ARRAY(20 + len(body), 1, 0, _TEXT_OID, len(items), 1) + body
                if items
                else _EMPTY_ARRAY
            )
            if len(self._venues) >= _CACHE_MAX:
                self._venues.clear()
            self._venues[venues] = field_
        return field_

    def from_values(self, record: bytes, pickled: bytes) -> Row | None:
        """The row of a spool record from the Price values pricing sent with it (pickled,
        this process only); None when they are not this record's or do not fit (the caller
        then decodes the payload: the spool is the truth)."""
        try:
            instrument, key, payload = unpack_frames(record)
        except ValueError:
            return None
        return self.from_message(instrument, key, payload, pickled)

    def from_message(
        self, instrument: bytes, key: bytes, payload: bytes, pickled: bytes
    ) -> Row | None:
        """`from_values` of the sink message's frames themselves (as the writer receives
        them, before it packs the spool record): the same checks as `split_record`."""
        try:
            epoch, seq, ts = SINK_KEY.unpack(key)
            v = pickle.loads(pickled)
            name = v[0]
            if (
                v[1] != epoch
                or v[2] != seq
                or ts < 0
                or name.encode() != instrument
                or not instrument
                or not payload.startswith(self.codec.header)
            ):
                return None
            detail = _detail_from_values(v)
            fixed = _FIXED(
                8, epoch, 8, seq, 8, ts // 1000 - PG_EPOCH_US, 8, ts, 8, v[10], 8, v[9],
                8, v[3], 8, v[4], 8, v[5], 8, v[6], 8, v[7], 1, v[17],
            )  # fmt: skip
            data = b"".join(
                (
                    self._head(name),
                    fixed,
                    self._venue_array(tuple(v[8])),
                    _JSONB(len(detail) + 1, 1),
                    detail,
                )
            )
        except Exception:
            return None  # not what this version writes: the payload decides
        return name, epoch, seq, ts, data

    def from_record(self, record: bytes) -> Row:
        """The row of a spool record, by decoding its Avro payload; raises on a record that
        is not a Price this schema can read."""
        instrument, epoch, seq, ts, payload = split_record(record, self.codec.header)
        name = instrument.decode()
        rec = self.codec.decode(payload)
        for k in ("instrument", "epoch", "seq", "priced_ts_ns"):
            rec.pop(k, None)
        venues = rec.pop("venues", None)
        if not isinstance(venues, list) or not all(isinstance(v, str) for v in venues):
            if venues is not None:
                rec["venues"] = venues  # a richer shape: keep it in detail
            venues = []
        halted = bool(rec.pop("halted", False))
        recv, exch = rec.pop("recv_ts_ns", 0), rec.pop("exchange_ts_ns", 0)
        floats = [rec.pop(k, None) for k in _FLOATS]
        detail = _dumps(rec)
        parts = [
            self._head(name),
            _INT8(8, epoch),
            _INT8(8, seq),
            _INT8(8, _pg_us(ts)),
            _INT8(8, ts),
            _INT8(8, recv),
            _INT8(8, exch),
            *(_NULL if x is None else _FLOAT8(8, x) for x in floats),
            _BOOL(1, halted),
            self._venue_array(tuple(venues)),
            _JSONB(len(detail) + 1, 1),
            detail,
        ]
        self.decoded += 1
        return name, epoch, seq, ts, b"".join(parts)

    def prepare(
        self, records: Sequence[bytes], given: Sequence[Row | bytes | None] = ()
    ) -> Prepared:
        """A batch of spool records. `given[i]`, when there, is record i's row built
        already (`from_message` as it arrived) or its pickled Price values; otherwise the
        payload is decoded. A record that is not a readable Price is skipped into `bad`
        (the writer quarantines and counts it): a poison record must not stop the queue."""
        decoded = self.decoded
        chunks = [COPY_SIGNATURE]
        stamps: list[int] = []
        newest: dict[str, Row] = {}
        bad: list[tuple[bytes, str]] = []
        for i, record in enumerate(records):
            got = given[i] if i < len(given) else None
            row = got if type(got) is tuple else None
            if row is None:
                try:
                    if isinstance(got, bytes):
                        row = self.from_values(record, got)
                    if row is None:
                        row = self.from_record(record)
                except Exception as exc:
                    bad.append((record, f"postgres: {type(exc).__name__}: {exc}"))
                    continue
            chunks.append(row[4])
            stamps.append(row[3])
            best = newest.get(row[0])
            if best is None or (row[1], row[2]) > (best[1], best[2]):
                newest[row[0]] = row
        chunks.append(COPY_TRAILER)
        rows = newest.values()
        return Prepared(
            len(stamps),
            b"".join(chunks),
            (list(newest), [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]),
            max(((r[1], r[2]) for r in rows), default=(0, 0)),
            {ts // DAY_NS for ts in stamps},
            stamps,
            bad,
            self.decoded - decoded,
        )


class _KeyExists(Exception):
    """The direct COPY met a row already stored: the batch is (partly) a replay."""


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
        self.builder = RowBuilder()  # for `write` (the writer thread has its own)
        # The last batch met stored rows: write through staging until one is all new.
        self.replaying = False
        self._days: set[int] = set()  # partitions known to exist on this connection

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

    def _ensure_partitions(self, conn: psycopg.Connection[Any], days: set[int]) -> None:
        days = days - self._days
        if not days:
            return
        # Also the next day, so midnight finds its partition already there.
        wanted = sorted(days | {d + 1 for d in days})
        with conn.transaction():
            for day in wanted:
                conn.execute(ENSURE_PARTITION, (_EPOCH_DAY + dt.timedelta(days=day),))
        self._days.update(wanted)

    def write(self, records: list[bytes], values: Sequence[bytes | None] = ()) -> BatchResult:
        """Prepare and commit a batch (see `RowBuilder.prepare` and `commit`)."""
        return self.commit(self.builder.prepare(records, values))

    def commit(self, batch: Prepared) -> BatchResult:
        """Write a prepared batch in one transaction (two when the direct COPY meets stored
        rows); raises psycopg errors (the caller reconnects)."""
        conn = self.open()
        if not batch.rows:
            return BatchResult(0, 0, len(batch.bad), 0.0, 0, batch.bad)
        self._ensure_partitions(conn, batch.days)
        epoch, seq = batch.top
        note = orjson.dumps({"epoch": epoch, "seq": seq, "rows": batch.rows}).decode()
        t0 = time.perf_counter()
        inserted = None
        if not self.replaying:
            try:
                self._write_direct(conn, batch, note)
                inserted = batch.rows
            except _KeyExists:
                self.replaying = True
        staged = inserted is None
        if inserted is None:
            inserted = self._write_staged(conn, batch, note)
            self.replaying = inserted < batch.rows
        committed_ns = time.time_ns()
        return BatchResult(
            batch.rows,
            inserted,
            len(batch.bad),
            time.perf_counter() - t0,
            batch.priced_ts_ns[-1],
            batch.bad,
            batch.priced_ts_ns,
            committed_ns,
            batch.decoded,
            staged,
        )

    def _write_direct(self, conn: psycopg.Connection[Any], batch: Prepared, note: str) -> None:
        with conn.transaction(), conn.cursor() as cur:
            try:
                with cur.copy(COPY_HISTORY) as copy:
                    copy.write(batch.data)
            except psycopg.errors.UniqueViolation as exc:
                # Only price_history's key can be violated here; leaving the block rolls
                # the whole transaction back.
                raise _KeyExists(str(exc)) from exc
            self._finish(cur, batch, note)

    def _write_staged(self, conn: psycopg.Connection[Any], batch: Prepared, note: str) -> int:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(COPY_STAGE) as copy:
                copy.write(batch.data)
            cur.execute(INSERT_HISTORY)
            inserted = cur.rowcount
            self._finish(cur, batch, note)
        return inserted

    @staticmethod
    def _finish(cur: psycopg.Cursor[Any], batch: Prepared, note: str) -> None:
        """The rest of a batch's transaction: price_latest and the notification."""
        cur.execute(UPSERT_LATEST_AND_NOTIFY, (*batch.newest, CHANNEL, note))


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
    staged: int = 0  # batches written through staging + ON CONFLICT (they replayed rows)
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


class PostgresWriter(SpoolingWriter["PostgresOutput", PostgresWriterStats]):
    """Delivers the Prices PUSHed to `endpoint` to Postgres; see the module docstring. The
    loop, the spool and the stall watch are `SpoolingWriter`'s; this class holds the batch
    policy and what arrives beside each Price (its values, turned into a COPY row).

    Construct it only to start it: it opens the pipe its helper wakes it through, which the
    threads close when they exit.
    """

    takes_values = True  # pricing sends each Price's values with it (see `_record`)
    max_drain = MAX_DRAIN
    undelivered = "not committed"

    def __init__(
        self,
        ctx: zmq.Context[Any],
        cfg: PostgresOutput,
        spool_dir: str | Path,
        spool_max_bytes: int,
        spool_memory_records: int = 10_000,
        endpoint: str = ENDPOINT,
        fsync_interval_s: float | None = None,
    ) -> None:
        super().__init__(
            "postgres",
            "pg-writer",
            ctx,
            cfg,
            PostgresWriterStats(),
            POSTGRES_STAGE,
            spool_dir,
            spool_max_bytes,
            spool_memory_records,
            endpoint,
            fsync_interval_s,
        )
        self.dsn = resolve_dsn(cfg.dsn)
        self.dsn_display = redact_dsn(self.dsn)
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        self._committer = _Committer(wake_w, self.dsn, cfg)
        self._inflight = 0  # records in the batch the helper is writing (0: none)
        self._ready: tuple[int, Prepared] | None = None  # the next batch, prepared
        self._builder = RowBuilder()  # this thread's: rows, never a connection
        self._waiting_since: float | None = None  # oldest pending record's wait began
        self._backoff = cfg.reconnect_min_s
        self._next_try = 0.0
        # Spool record -> its row, built from the Price values pricing sent with it (or
        # those values, pickled, when the row was not built on arrival), until its batch is
        # handed out; bounded, oldest out first (a record without either is decoded).
        self._rows: OrderedDict[bytes, Row | bytes] = OrderedDict()
        self._rows_max = max(4 * spool_memory_records, 4 * cfg.batch_max_rows)
        # How this drain turns a Price's values into its row: at once (`from_message`),
        # or None: keep the values, build the row when its batch is cut.
        self._build: Callable[[bytes, bytes, bytes, bytes], Row | None] | None = None

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

    # --- what differs from the other sinks ------------------------------------------------

    def _abandon(self) -> None:
        os.close(self._wake_r)
        os.close(self._committer.wake_fd)  # never started: nobody else closes it

    def _start_helpers(self) -> None:
        self._committer.start()

    def _wake_fds(self) -> Sequence[int]:
        return (self._wake_r,)

    def _timeout_ms(self, spool: Spool, now: float) -> int:
        if self._inflight:
            return 100  # the helper wakes us; this is only for the stall watch
        if spool.pending:
            due = max(self._next_try, (self._waiting_since or now) + self._max_wait_s())
            return max(1, min(100, int((due - now) * 1000) + 1))
        return 100

    def _max_wait_s(self) -> float:
        return self.cfg.batch_max_wait_ms / 1000

    def _drain_starts(self, spool: Spool) -> None:
        """While the writer keeps pace, each record's row is built from the Price values
        that came with it as it arrives, so the next batch is ready when the helper is
        free. When behind (a backlog in the spool, the server away; `_record` also notices
        Prices that waited in the socket) the values are only kept: draining stays cheap,
        so a backlog goes to the spool (and disk) rather than filling the socket up to
        where pricing would drop, and the rows are built when their batch is."""
        waiting = spool.pending - spool.in_flight
        self._build = (
            self._builder.from_message
            if not spool.away and waiting < 2 * self.cfg.batch_max_rows
            else None
        )

    def _record(self, frames: list[bytes], n: int) -> bytes:
        """The spool record is the Avro message (what a restart replays); the values
        beside it become its row now, or are kept for later (see `_drain_starts`)."""
        message = super()._record(frames, n)
        try:
            parts = unpack_frames(message)
        except ValueError:
            return message  # not a sink message: refused, with a count, when delivered
        if len(parts) != 4:
            return message  # no values: the record as it came
        instrument, key, payload, values = parts
        record = message[: len(message) - 4 - len(values)]  # the values are its last part
        build = self._build
        if (
            build is not None
            and not n & 63
            and len(key) == SINK_KEY.size
            and time.time_ns() - SINK_KEY.unpack(key)[2] > BEHIND_NS
        ):
            self._build = build = None  # this Price waited in the socket: catch up first
        cache = self._rows
        if build is None:
            cache[record] = values
        else:
            row = build(instrument, key, payload, values)
            if row is not None:  # else: not this record's values; decoded later
                cache[record] = row
        if len(cache) > self._rows_max:  # far behind (the server is away): decode later
            cache.popitem(last=False)
        return record

    def _deliverer_free(self) -> bool:
        return bool(self._inflight) and not self._committer.results.empty()

    def _drained(self) -> None:
        if self._waiting_since is None:
            # The batch clock starts when a record arrives, also while the helper is busy:
            # once it is free, what waited through its transaction goes out at once.
            self._waiting_since = time.monotonic()

    def _deliver(self, spool: Spool, now: float, stopping: bool) -> None:
        """Hand the next batch to the helper: when it is full, has waited long enough, or
        there is a backlog (spooled, or stopping). While one is in flight and a full batch
        (or a backlog) waits, prepare it on this thread: its rows may have to be built or
        decoded (a spool read back after an outage or a restart). Otherwise wait: the rows
        of records that arrived while the helper was busy are built already, and the
        batch is cut when the helper is free, as large as what waited."""
        if now < self._next_try:
            return
        if self._inflight:
            if self._ready is None and self._backlog(spool, stopping):
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
        self._progress_at = now  # the stall watch times the batch from here
        self._committer.requests.put(batch)

    def _due(self, spool: Spool, now: float, stopping: bool) -> bool:
        """Whether records not yet taken make a batch now (the helper is free): a tenth of
        a full batch is worth a transaction at once (under load, what arrived during the
        last one); fewer wait up to batch_max_wait_ms to fill up (few, larger commits
        at low rates)."""
        waiting = spool.pending - spool.in_flight
        if waiting <= 0:
            self._waiting_since = None
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        return (
            waiting >= max(1, self.cfg.batch_max_rows // 10)
            or now - self._waiting_since >= self._max_wait_s()
            or spool.away
            or stopping
        )

    def _backlog(self, spool: Spool, stopping: bool) -> bool:
        """Whether a full batch (or a backlog: the server away, or stopping) waits."""
        waiting = spool.pending - spool.in_flight
        return waiting >= self.cfg.batch_max_rows or (waiting > 0 and (spool.away or stopping))

    def _prepare(self, spool: Spool, now: float) -> tuple[int, Prepared] | None:
        records = spool.take(self.cfg.batch_max_rows)
        if not records:
            return None
        waiting = spool.pending - spool.in_flight
        self._waiting_since = now if waiting > 0 else None
        cache = self._rows
        given = [cache.pop(r, None) for r in records] if cache else []
        return len(records), self._builder.prepare(records, given)

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
        """What counts as acknowledged: the batch's transaction committed."""
        self._inflight = 0
        stats = self.stats
        if done.connected and done.error is None:
            stats.connects += 1
            log.info("postgres writer connected to %s", self.dsn_display)
        result = done.result
        if result is not None:
            for record, why in result.bad:
                spool.quarantine(record, why)
            # The spool first: a reader that sees the counters sees the records gone.
            self._acknowledged(spool, done.n, now)
            stats.written += result.rows
            stats.inserted += result.inserted
            stats.undecodable += result.undecodable
            stats.decoded += result.decoded
            stats.staged += result.staged
            stats.batches += 1
            stats.last_txn_us = int(result.txn_s * 1e6)
            if result.last_priced_ts_ns:
                stats.lag_ns = time.time_ns() - result.last_priced_ts_ns
                add = self.stages.add
                committed_ns = result.committed_ns
                for priced_ns in result.priced_ts_ns:
                    add(((committed_ns - priced_ns) / 1000,))
            self._backoff = self.cfg.reconnect_min_s
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

    def _stall_limit_s(self, spool: Spool) -> float | None:
        # A batch in flight, and the server not yet known to be away.
        return STALL_S if self._inflight and not spool.away else None

    def _stalled(self, spool: Spool, waited_s: float) -> None:
        """A batch in flight for STALL_S: keep everything on disk until it answers."""
        log.warning(
            "postgres: a batch of %d has not committed after %.1f s; spooling to disk",
            self._inflight,
            waited_s,
        )
        spool.set_away(True)

    def _stop_helpers(self, spool: Spool) -> None:
        self._committer.stop()
        # A batch in flight may still commit: wait briefly and ack it if it did; if it
        # commits after we give up, the next start replays it and the key absorbs it.
        self._committer.join(timeout=2.0 if self._inflight else 5.0)
        self._collect(spool, time.monotonic())
        os.close(self._wake_r)
