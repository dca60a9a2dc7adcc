"""The `mmengine db ...` and `mmengine db-tail` commands (main thread of the CLI process).

`db-tail` is the reliable consumer a Postgres user wants: LISTEN for the writer's
`mmengine_prices` notifications, and on each one -- and on every (re)connect -- read the
`price_history` rows after the last (epoch, seq) it printed for each instrument. NOTIFY
alone is lost while a listener is disconnected; the catch-up query makes delivery
complete, and the per-instrument cursor makes it exactly-once. It works because the writer
commits each instrument's rows in (epoch, seq) order (one batch in flight, FIFO spool).
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import psycopg
from psycopg import sql

from mmengine.sinks.pgschema import (
    CHANNEL,
    PRICE_COLUMNS,
    connect,
    redact_dsn,
    resolve_dsn,
    status_lines,
    upgrade,
)

DSN_HELP = "libpq DSN or URI (default $MMENGINE_PG_DSN, then the PG* variables)."
TAIL_LIMIT = 10_000  # rows per instrument per catch-up query

# Rows after each instrument's cursor (instruments without one: from their first row),
# `limit` per instrument, oldest first. price_latest lists the instruments: it is written
# in the same transaction as their history rows.
CATCH_UP = sql.SQL(
    "SELECT h.instrument, h.epoch, h.seq, h.priced_ts_ns, h.recv_ts_ns, h.exchange_ts_ns,"
    " h.fair_value, h.best_bid, h.best_bid_size, h.best_ask, h.best_ask_size, h.halted,"
    " h.venues, h.detail"
    " FROM price_latest l"
    " LEFT JOIN unnest(%(i)s::text[], %(e)s::bigint[], %(s)s::bigint[])"
    "   AS c(instrument, epoch, seq) ON c.instrument = l.instrument"
    " CROSS JOIN LATERAL ("
    "   SELECT * FROM price_history p"
    "   WHERE p.instrument = l.instrument"
    "     AND (p.epoch, p.seq) > (coalesce(c.epoch, -1), coalesce(c.seq, -1))"
    "   ORDER BY p.epoch, p.seq LIMIT %(limit)s) h"
    " WHERE %(only)s::text IS NULL OR l.instrument = %(only)s"
    " ORDER BY h.priced_ts_ns, h.instrument, h.epoch, h.seq"
)
START_AT = sql.SQL(
    "SELECT instrument, epoch, seq FROM price_latest"
    " WHERE %(only)s::text IS NULL OR instrument = %(only)s"
)
FIELDS = PRICE_COLUMNS  # the order CATCH_UP selects them in


def _open(dsn: str, app: str) -> psycopg.Connection[Any]:
    try:
        conn: psycopg.Connection[Any] = connect(dsn, app, 5.0, autocommit=True)
    except psycopg.Error as exc:
        raise click.ClickException(
            f"cannot connect to {redact_dsn(dsn)}: {str(exc).strip()}"
        ) from None
    return conn


@click.group("db")
def db() -> None:
    """Manage the Postgres schema the engine writes Prices to."""


@db.command("upgrade")
@click.option("--dsn", default=None, help=DSN_HELP)
def db_upgrade(dsn: str | None) -> None:
    """Apply the pending schema migrations (each in a transaction; a no-op when current)."""
    target = resolve_dsn(dsn)
    with _open(target, "mmengine-db-upgrade") as conn:
        applied = upgrade(conn)
        for m in applied:
            click.echo(f"applied {m.version:04d} {m.name}")
        if not applied:
            click.echo("nothing to do: the schema is up to date")
        for line in status_lines(conn)[-1:]:
            click.echo(line)


@db.command("status")
@click.option("--dsn", default=None, help=DSN_HELP)
def db_status(dsn: str | None) -> None:
    """Show each migration, applied (when) or pending; exit 1 if any is pending."""
    target = resolve_dsn(dsn)
    with _open(target, "mmengine-db-status") as conn:
        lines = status_lines(conn)
    click.echo(f"database {redact_dsn(target)}")
    for line in lines:
        click.echo(line)
    if "run `mmengine db upgrade`" in lines[-1]:
        sys.exit(1)


@db.command("prune")
@click.option("--dsn", default=None, help=DSN_HELP)
@click.option("--keep-days", type=click.IntRange(min=1), required=True, help="Days to keep.")
def db_prune(dsn: str | None, keep_days: int) -> None:
    """Drop the daily price_history partitions older than --keep-days (UTC days)."""
    target = resolve_dsn(dsn)
    with _open(target, "mmengine-db-prune") as conn:
        rows = conn.execute(
            "SELECT mmengine_drop_partitions_before((now() AT TIME ZONE 'UTC')::date - %s)",
            (keep_days - 1,),
        ).fetchall()
    for (name,) in rows:
        click.echo(f"dropped {name}")
    click.echo(f"{len(rows)} partitions dropped")


class Tail:
    """LISTEN + catch-up after a per-instrument (epoch, seq) cursor; see the module doc."""

    def __init__(
        self,
        dsn: str,
        emit: Callable[[dict[str, Any]], None],
        instrument: str | None = None,
        since_seq: int | None = None,
        flush: Callable[[], None] | None = None,
        count: int | None = None,
    ) -> None:
        self.dsn = dsn
        self.emit = emit
        self.flush = flush
        self.count = count  # stop after this many rows (None: never)
        self.instrument = instrument
        self.since_seq = since_seq
        self.cursor: dict[str, tuple[int, int]] | None = None  # set on the first connect
        self.printed = 0
        self.reconnects = 0

    def _start(self, conn: psycopg.Connection[Any]) -> None:
        """Where to begin: now (each instrument's latest row), or after --since-seq in
        each instrument's latest epoch. Instruments that appear later print from row one."""
        rows = conn.execute(START_AT, {"only": self.instrument}).fetchall()
        if self.since_seq is None:
            self.cursor = {i: (e, s) for i, e, s in rows}
        else:
            self.cursor = {i: (e, self.since_seq) for i, e, _ in rows}

    def catch_up(self, conn: psycopg.Connection[Any]) -> int:
        """Print every committed row after the cursor; returns how many."""
        cursor = self.cursor
        assert cursor is not None
        total = 0
        done = False
        while not done:
            insts = list(cursor)
            params = {
                "i": insts,
                "e": [cursor[i][0] for i in insts],
                "s": [cursor[i][1] for i in insts],
                "limit": TAIL_LIMIT,
                "only": self.instrument,
            }
            rows = conn.execute(CATCH_UP, params).fetchall()
            per: dict[str, int] = {}
            for row in rows:
                if self.count is not None and self.printed + total >= self.count:
                    done = True
                    break
                rec = dict(zip(FIELDS, row, strict=True))
                inst = rec["instrument"]
                key = (rec["epoch"], rec["seq"])
                if key > cursor.get(inst, (-1, -1)):
                    cursor[inst] = key
                self.emit(rec)
                per[inst] = per.get(inst, 0) + 1
                total += 1
            if not per or max(per.values()) < TAIL_LIMIT:
                break
        self.printed += total
        if total and self.flush is not None:
            self.flush()
        return total

    def run(self, idle_check_s: float = 5.0) -> None:
        """Until `count` rows were printed (forever if None); reconnects on its own."""
        count = self.count
        backoff = 0.2
        while count is None or self.printed < count:
            try:
                with connect(self.dsn, "mmengine-db-tail", 5.0, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    if self.cursor is None:
                        self._start(conn)
                    # After LISTEN: a commit before it is read now, one after it notifies.
                    self.catch_up(conn)
                    backoff = 0.2
                    last = time.monotonic()
                    while count is None or self.printed < count:
                        got = False
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            got = True
                        if got or time.monotonic() - last > idle_check_s:
                            self.catch_up(conn)
                            last = time.monotonic()
            except psycopg.OperationalError as exc:
                self.reconnects += 1
                wait = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, 5.0)
                click.echo(
                    f"db-tail: {redact_dsn(self.dsn)}: {str(exc).strip()}; "
                    f"reconnecting in {wait:.2f} s",
                    err=True,
                )
                time.sleep(wait)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def readable(r: dict[str, Any]) -> str:
    """One human line per row."""
    return (
        f"{r['instrument']:<14} epoch {r['epoch']} seq {r['seq']:>7}  "
        f"fair {_fmt(r['fair_value'], '<14.8g')} "
        f"bid {_fmt(r['best_bid'], '.8g')} x {_fmt(r['best_bid_size'], '.6g')}  "
        f"ask {_fmt(r['best_ask'], '.8g')} x {_fmt(r['best_ask_size'], '.6g')}  "
        f"venues {','.join(r['venues'])}{'  HALTED' if r['halted'] else ''}"
    )


@click.command("db-tail")
@click.option("--dsn", default=None, help=DSN_HELP)
@click.option("--instrument", default=None, help="Only this instrument, e.g. BTC-USD.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--since-seq",
    type=click.IntRange(min=0),
    default=None,
    help="Start after this seq of each instrument's latest epoch (default: from now).",
)
@click.option("--count", type=int, default=None, help="Exit once this many rows are printed.")
def db_tail(
    dsn: str | None,
    instrument: str | None,
    as_json: bool,
    since_seq: int | None,
    count: int | None,
) -> None:
    """Print Prices as they are committed to price_history, every row exactly once, across
    disconnects (LISTEN mmengine_prices + a catch-up query after the last row printed)."""
    out = sys.stdout

    def emit(rec: dict[str, Any]) -> None:
        out.write((json.dumps(rec) if as_json else readable(rec)) + "\n")

    tail = Tail(resolve_dsn(dsn), emit, instrument, since_seq, flush=out.flush, count=count)
    with contextlib.suppress(KeyboardInterrupt):
        tail.run()
