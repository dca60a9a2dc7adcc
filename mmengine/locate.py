"""Finding a running engine from the command-line tools (main thread of `top`, `tap`,
`set-position`, `kafka-tail`, and the demo).

An engine announces itself in `<run_dir>/endpoints.json` (written once every thread is up,
removed on a clean stop) and holds `<run_dir>/engine.lock` (its pid inside) from the first
step of its start. The tools look in one run dir: `--run-dir`, else `$MMENGINE_RUN_DIR`,
else `<tmp>/mmengine` (the engine's own default, where `make demo` runs its engine when it
is free). What they find there is one of:

- a live engine: endpoints.json names a pid that runs;
- a starting engine: no endpoints.json yet, engine.lock names a pid that runs (worth a
  short wait);
- a stopped engine: endpoints.json or engine.lock left by a pid that no longer runs (a
  kill -9); reported at once, never waited on;
- nothing: reported at once, with the path looked at and how to point elsewhere.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "MMENGINE_RUN_DIR"
ELSEWHERE = f"give --run-dir DIR (or set {RUN_DIR_ENV}) to use another engine's run dir"


class EngineNotFound(Exception):
    """No live engine in the run dir looked at; the message says where and what to do."""


def default_run_dir() -> Path:
    """`$MMENGINE_RUN_DIR`, else `<tmp>/mmengine` (the engine's default `engine.run_dir`)."""
    return Path(os.environ.get(RUN_DIR_ENV) or Path(tempfile.gettempdir()) / "mmengine")


def pid_alive(pid: int) -> bool:
    """Does a process with this pid exist (ours or another user's)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "engine.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def engine_running(run_dir: Path) -> bool:
    """Is an engine (running or starting) holding `run_dir`?"""
    pid = _lock_pid(run_dir)
    return pid is not None and pid_alive(pid)


def find_engine(run_dir: str | Path | None = None, wait_s: float = 10.0) -> dict[str, Any]:
    """The endpoints document of the live engine in `run_dir` (default: `default_run_dir()`).

    Waits up to `wait_s` only for an engine that is starting (its lock names a live pid);
    raises EngineNotFound at once when there is no engine or it has stopped.
    """
    directory = Path(run_dir) if run_dir else default_run_dir()
    path = directory / "endpoints.json"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            doc = {}
        except (OSError, ValueError) as exc:
            raise EngineNotFound(f"cannot read {path}: {exc}") from None
        if doc:
            pid = int(doc.get("pid", 0))
            if pid_alive(pid):
                doc["run_dir"] = str(directory)
                return doc
            raise EngineNotFound(
                f"the engine that wrote {path} (pid {pid}) is not running: it was stopped "
                f"or killed. Start one (`mmengine run --config FILE` or `make demo`), or "
                f"{ELSEWHERE}"
            )
        starting = _lock_pid(directory)
        if starting is None or not pid_alive(starting) or time.monotonic() > deadline:
            what = (
                f"the engine holding {directory} (pid {starting}) did not finish starting "
                f"within {wait_s:.0f} s"
                if starting is not None and pid_alive(starting)
                else f"no engine found: {path} does not exist"
            )
            raise EngineNotFound(
                f"{what}. Start one (`mmengine run --config FILE` or `make demo`), or {ELSEWHERE}"
            )
        time.sleep(0.1)
