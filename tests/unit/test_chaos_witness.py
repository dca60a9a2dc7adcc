"""The chaos campaign's host-stall witness (scripts/chaos.py --witness): a process of its own
that writes down when the host kept it from running, and never outlives the campaign."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos.py"


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines(keepends=True) if x.endswith("\n")]


def _wait(cond: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _state(pid: int) -> str:
    """The process's state letter (R, S, T, Z...); "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _gone(pid: int) -> bool:
    """Not running: exited, or a zombie nobody has reaped yet."""
    return _state(pid) in ("", "Z")


def test_the_witness_records_the_time_it_was_kept_from_running(tmp_path: Path) -> None:
    path = tmp_path / "host_stalls.jsonl"
    cmd = [sys.executable, str(SCRIPT), "--witness", str(path), "--parent", str(os.getpid())]
    witness = subprocess.Popen(cmd)
    try:
        _wait(lambda: any(r["k"] == "head" for r in _records(path)), "the witness's head")
        # A host that runs nothing of it for 0.4 s, as an overloaded machine would. (Stopped
        # for sure before the clock starts: a SIGCONT discards a SIGSTOP not yet acted on.)
        asked = time.time_ns()
        witness.send_signal(signal.SIGSTOP)
        _wait(lambda: _state(witness.pid) == "T", "the witness to stop")
        stopped = time.time_ns()
        time.sleep(0.4)
        resumed = time.time_ns()
        witness.send_signal(signal.SIGCONT)
        _wait(lambda: any(r["k"] == "stall" for r in _records(path)), "a stall")
        witness.terminate()
        assert witness.wait(timeout=10) == 0
    finally:
        if witness.poll() is None:
            witness.kill()
            witness.wait()
    records = _records(path)
    head, *stalls, end = records
    assert head["k"] == "head" and head["late_ms"] == 100.0 and end["k"] == "end"
    assert len(stalls) == 1 and end["stalls"] == 1
    start, stop = stalls[0]["start"], stalls[0]["end"]
    # It was due at most one period (10 ms) after it stopped and woke once resumed; the
    # scheduler's own delays only make the stall longer, never shorter.
    assert asked - 20_000_000 <= start <= stopped + 20_000_000, (start - asked) / 1e6
    assert stop >= resumed and stop - start >= 0.39e9


def test_the_witness_stops_when_the_campaign_that_started_it_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "host_stalls.jsonl"
    # A stand-in for the orchestrator: starts the witness as its child, then dies by SIGKILL.
    parent = (
        "import os, signal, subprocess, sys\n"
        f"cmd = [sys.executable, {str(SCRIPT)!r}, '--witness', {str(path)!r},"
        " '--parent', str(os.getpid())]\n"
        "print(subprocess.Popen(cmd).pid, flush=True)\n"
        "sys.stdin.readline()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    pid = int(proc.stdout.readline())
    try:
        _wait(lambda: any(r["k"] == "head" for r in _records(path)), "the witness's head")
        assert not _gone(pid)
        proc.stdin.write("die\n")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == -signal.SIGKILL
        _wait(lambda: _gone(pid), "the orphaned witness to stop", 5.0)
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert _records(path)[-1]["k"] == "end"  # it stopped on its own, cleanly


def test_the_witness_imports_nothing_of_the_engine() -> None:
    code = (
        "import runpy, sys; sys.argv = ['x', '--help'];\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mmengine', 'yaml', 'zmq')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
