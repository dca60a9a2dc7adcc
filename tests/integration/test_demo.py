"""`mmengine demo` as a new user meets it: Ctrl-C in the terminal loses nothing.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group, so the test starts
the demo in its own group and signals all of it with `os.killpg`, as the terminal does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


class Demo:
    """`mmengine demo` in its own process group, with its own temp dir (TMPDIR)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {**os.environ, "TMPDIR": str(tmp), "COLUMNS": "120"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmengine.cli", "demo", "--rate", "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            start_new_session=True,  # a process group of its own, like a terminal's job
        )
        self.output = ""

    def endpoints(self, timeout_s: float = 30.0) -> Path:
        """The demo engine's endpoints.json once it exists (wherever the demo put it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = sorted(self.tmp.glob("**/endpoints.json"))
            if found:
                return found[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.interrupt()
        raise AssertionError(f"the demo did not start its engine:\n{self.output}")

    def interrupt(self) -> str:
        """Ctrl-C as a terminal sends it: SIGINT to every process of the group."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.output, _ = self.proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.output, _ = self.proc.communicate()
        return self.output


@pytest.fixture
def demo() -> Iterator[Demo]:
    tmp = Path(tempfile.mkdtemp(prefix="mmd-"))  # short: Unix socket paths stay < 108 bytes
    tmp.chmod(0o711)  # as root, the private Postgres runs as its own user and must get in
    running = Demo(tmp)
    try:
        yield running
    finally:
        running.interrupt()
        shutil.rmtree(tmp, ignore_errors=True)


def left_in_spool(output: str, sink: str) -> int:
    match = re.search(rf"^{sink}: .*?(\d+) left in the spool", output, re.M)
    assert match, f"no {sink} summary line in:\n{output}"
    return int(match.group(1))


def test_ctrl_c_to_the_whole_process_group_drains_both_sinks(demo: Demo) -> None:
    demo.endpoints()
    time.sleep(2.0)  # prices flowing into both sinks at several hundred a second
    output = demo.interrupt()
    assert demo.proc.returncode == 0, output
    assert left_in_spool(output, "kafka") == 0, output
    assert left_in_spool(output, "postgres") == 0, output
    assert "nothing left in either spool" in output, output
    # Nothing to keep: the demo's temp dir (spools, log) is gone.
    assert not list(demo.tmp.glob("mmengine-demo-*")), output


def test_what_cannot_be_delivered_is_kept_and_the_demo_says_where(demo: Demo) -> None:
    import psutil

    demo.endpoints()
    time.sleep(1.0)
    broker = [p for p in psutil.Process(demo.proc.pid).children() if p.name() == "tansu"]
    assert len(broker) == 1, [p.name() for p in psutil.Process(demo.proc.pid).children()]
    broker[0].kill()  # the broker is gone: the Kafka writer can only spool
    time.sleep(1.0)
    output = demo.interrupt()
    assert demo.proc.returncode == 1, output
    assert left_in_spool(output, "kafka") > 0, output
    match = re.search(r"the spool is kept in (\S+) and the engine log in (\S+)", output)
    assert match, output
    spool, log = Path(match.group(1)), Path(match.group(2))
    assert log.is_file() and "kafka:" in log.read_text()
    assert [p for p in spool.glob("kafka/seg-*") if p.stat().st_size > 0], list(spool.rglob("*"))
