"""The Postgres schema and how to reach the server (called from the main thread by the CLI
and the engine's start-up check; the writer thread calls `check_schema` on each connect).

- Migrations are the package's `migrations/NNNN_name.sql` files, applied in order, each in
  its own transaction under an advisory lock (two `db upgrade`s at once do not race), and
  recorded in `mmengine_migrations` with a checksum of the file. Applying them again is a
  no-op. The engine needs `REQUIRED_VERSION` and refuses an older schema.
- DSN: `--dsn`/config, else `$MMENGINE_PG_DSN`, else libpq's own `PG*` variables (an empty
  DSN). The password should come from `PGPASSWORD` or `~/.pgpass`; whatever its source,
  `redact_dsn` removes it before a DSN is logged, printed or written to endpoints.json.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mmengine.errors import MmengineError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATIONS_TABLE = "mmengine_migrations"
LOCK_KEY = 0x6D6D_656E_6769_6E65  # "mmengine": one advisory lock for schema changes
DSN_ENV = "MMENGINE_PG_DSN"
CHANNEL = "mmengine_prices"  # NOTIFY channel of the writer, LISTENed to by db-tail
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


# The Price columns of price_history and price_latest that are not derived (priced_at is),
# in one order: the writer's COPY staging table and db-tail's catch-up query both use it.
PRICE_COLUMNS = (
    "instrument",
    "epoch",
    "seq",
    "priced_ts_ns",
    "recv_ts_ns",
    "exchange_ts_ns",
    "fair_value",
    "best_bid",
    "best_bid_size",
    "best_ask",
    "best_ask_size",
    "halted",
    "venues",
    "detail",
)


class SchemaError(MmengineError):
    """The database schema is not what this version of mmengine needs."""


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file of the package."""

    version: int
    name: str
    sql: str
    checksum: str  # sha256 of the file, recorded when applied


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration in the package, in version order."""
    out = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = _NAME.match(path.name)
        if m is None:
            raise SchemaError(f"migration file name {path.name!r} is not NNNN_name.sql")
        text = path.read_text()
        out.append(
            Migration(int(m.group(1)), m.group(2), text, hashlib.sha256(text.encode()).hexdigest())
        )
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise SchemaError(f"migration versions must run 1, 2, 3...: found {versions}")
    return tuple(out)


def required_version() -> int:
    """The schema version this package writes to (its newest migration)."""
    return migrations()[-1].version


# --- DSN --------------------------------------------------------------------------------


def resolve_dsn(dsn: str | None) -> str:
    """The DSN to connect with: explicit, else $MMENGINE_PG_DSN, else "" (libpq reads PG*)."""
    if dsn:
        return dsn
    return os.environ.get(DSN_ENV, "")


def redact_dsn(dsn: str) -> str:
    """The DSN without its password (key=value form), safe to log and publish.

    Falls back to "<unparsable DSN>" rather than echo a string that may hold a secret.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    params.pop("password", None)
    if not params:
        # Everything comes from the PG* environment: say so, without the password.
        keys = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER")
        env = {k[2:].lower(): os.environ[k] for k in keys if os.environ.get(k)}
        env = {("dbname" if k == "database" else k): v for k, v in env.items()}
        return make_conninfo("", **env) if env else "(libpq defaults)"
    return make_conninfo("", **params)


def connect(
    dsn: str, application_name: str, connect_timeout_s: float = 5.0, **kw: Any
) -> psycopg.Connection[Any]:
    """A psycopg connection (the caller owns it; one thread each)."""
    return psycopg.connect(
        dsn,
        application_name=application_name,
        connect_timeout=max(1, round(connect_timeout_s)),
        **kw,
    )


# --- migrations -------------------------------------------------------------------------


def _ensure_table(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(MIGRATIONS_TABLE))
        )


def applied(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str, Any]] | None:
    """version -> (name, checksum, applied_at) of what the database has; None if it has
    never seen `db upgrade`."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,)).fetchone()
    if not exists or not exists[0]:
        return None
    rows = conn.execute(
        sql.SQL("SELECT version, name, checksum, applied_at FROM {} ORDER BY version").format(
            sql.Identifier(MIGRATIONS_TABLE)
        )
    ).fetchall()
    return {v: (n, c, t) for v, n, c, t in rows}


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The highest applied migration (0 for a database without mmengine tables)."""
    done = applied(conn)
    return max(done) if done else 0


def check_schema(conn: psycopg.Connection[Any]) -> int:
    """Raise SchemaError unless the database has at least `required_version()`."""
    have = schema_version(conn)
    need = required_version()
    if have < need:
        raise SchemaError(
            f"the database schema is at version {have}, this mmengine needs {need}: "
            "run `mmengine db upgrade --dsn DSN` first"
        )
    return have


def upgrade(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; returns those applied."""
    conn.autocommit = True
    _ensure_table(conn)
    done: list[Migration] = []
    for m in migrations():
        with conn.transaction():
            # Serialise concurrent upgraders; then look again under the lock.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            have = conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE version = %s").format(
                    sql.Identifier(MIGRATIONS_TABLE)
                ),
                (m.version,),
            ).fetchone()
            if have:
                continue
            # The file is package data, never assembled from input: run it as it is.
            conn.execute(sql.SQL(m.sql))
            conn.execute(
                sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
                    sql.Identifier(MIGRATIONS_TABLE)
                ),
                (m.version, m.name, m.checksum),
            )
            done.append(m)
    return done


def status_lines(conn: psycopg.Connection[Any]) -> list[str]:
    """What `db status` prints: each migration, applied (when) or pending, and drift."""
    done = applied(conn) or {}
    lines = []
    for m in migrations():
        row = done.get(m.version)
        if row is None:
            lines.append(f"{m.version:04d} {m.name}: pending")
            continue
        name, checksum, at = row
        note = "" if checksum == m.checksum else "  (WARNING: the file changed since)"
        lines.append(f"{m.version:04d} {name}: applied {at:%Y-%m-%d %H:%M:%S%z}{note}")
    for version in sorted(set(done) - {m.version for m in migrations()}):
        lines.append(f"{version:04d} {done[version][0]}: applied, unknown to this mmengine")
    have = max(done) if done else 0
    need = required_version()
    verdict = "up to date" if have >= need else "run `mmengine db upgrade`"
    lines.append(f"schema version {have}, this mmengine needs {need}: {verdict}")
    return lines
