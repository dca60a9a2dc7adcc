"""DSN handling (the password never shown) and the migration files' shape."""

from __future__ import annotations

import pytest

from mmengine.sinks.pgschema import (
    DSN_ENV,
    migrations,
    redact_dsn,
    required_version,
    resolve_dsn,
)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db port=5432 user=mm password=s3cret dbname=prices",
        "postgresql://mm:s3cret@db:5432/prices",
        "postgresql://mm:s3cret@db/prices?sslmode=require",
        "host=db password='s3 cret' user=mm",
    ],
)
def test_redact_dsn_drops_the_password_keeps_the_rest(dsn: str) -> None:
    shown = redact_dsn(dsn)
    assert "s3" not in shown and "password" not in shown
    assert "host=db" in shown and "user=mm" in shown


def test_redact_dsn_never_echoes_what_it_cannot_parse() -> None:
    assert redact_dsn("host=db password='unterminated") == "<unparsable DSN>"


def test_empty_dsn_is_described_from_the_pg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "db.internal")
    monkeypatch.setenv("PGDATABASE", "prices")
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    shown = redact_dsn("")
    assert "host=db.internal" in shown and "dbname=prices" in shown and "s3cret" not in shown


def test_resolve_dsn_prefers_explicit_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DSN_ENV, raising=False)
    assert resolve_dsn(None) == ""
    monkeypatch.setenv(DSN_ENV, "host=from-env")
    assert resolve_dsn(None) == "host=from-env"
    assert resolve_dsn("host=explicit") == "host=explicit"


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert required_version() == found[-1].version
    assert all(len(m.checksum) == 64 and m.sql.strip() for m in found)
