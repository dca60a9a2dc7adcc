"""`mmengine demo` as a new user meets it: Ctrl-C in the terminal loses nothing.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group, so the test starts
the demo in its own group and signals all of it with `os.killpg`, as the terminal does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def _demo() -> Iterator[Demo]:
    tmp = Path(tempfile.mkdtemp(prefix="mmd-"))  # short: Unix socket paths stay < 108 bytes
    tmp.chmod(0o711)  # as root, the private Postgres runs as its own user and must get in
    running = Demo(tmp)
    try:
        yield running
    finally:
        running.interrupt()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def demo() -> Iterator[Demo]:
    yield from _demo()


@pytest.fixture(scope="module")
def running_demo() -> Iterator[Demo]:
    """One demo for the tests that use it while it runs, then the Ctrl-C test ends it."""
    yield from _demo()


REPO = Path(__file__).resolve().parents[2]


def mmengine(demo: Demo, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A bare `mmengine` command, as a user types it in a second terminal."""
    return subprocess.run(
        [sys.executable, "-m", "mmengine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**demo.env, "COLUMNS": "100"},
        cwd=REPO,
    )


def readme_ipc_snippet() -> str:
    """The README's Python IPC example, exactly as printed there."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"```python\n(import io, zmq.*?)```", text, re.S)
    assert match, "no Python IPC snippet in the README"
    return match.group(1)


def test_the_tools_find_the_demo_without_options(running_demo: Demo) -> None:
    demo = running_demo
    endpoints = demo.endpoints()
    run_dir = demo.tmp / "mmengine"  # the default run dir (<tmp>/mmengine): the demo's
    assert endpoints == run_dir / "endpoints.json"
    deadline = time.monotonic() + 20
    while "quoting" not in (top := mmengine(demo, "top", "--once")).stdout:
        assert time.monotonic() < deadline, top.stdout + top.stderr
    # top: 100 columns, nothing cut, the quoted spread and the crossed flag.
    assert top.returncode == 0, top.stderr
    assert "…" not in top.stdout and max(map(len, top.stdout.splitlines())) <= 100
    for word in ("BTC-USD", "ETH-USD", "binance", "bybit", "spread", "crossed", "p99 µs"):
        assert word in top.stdout, word

    # The README's IPC snippet, as written (the demo's TMPDIR stands in for /tmp).
    snippet = readme_ipc_snippet().replace("/tmp/mmengine", str(run_dir))
    code = snippet + "print(topic.decode(), price['instrument'], price['seq'])\n"
    ipc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, cwd=REPO
    )
    assert ipc.returncode == 0, ipc.stderr
    assert ipc.stdout.startswith("price.BTC-USD BTC-USD "), ipc.stdout

    # tap with a plain instrument name.
    tap = mmengine(demo, "tap", "--topic", "ETH-USD", "--count", "3", "--json")
    assert tap.returncode == 0, tap.stderr
    assert [json.loads(line)["instrument"] for line in tap.stdout.splitlines()] == ["ETH-USD"] * 3

    # A short position as written, then one beyond max_position: accepted, with a warning.
    short = mmengine(demo, "set-position", "BTC-USD", "-1")
    assert short.returncode == 0 and "BTC-USD position -1: accepted" in short.stdout, short
    assert short.stderr == ""
    big = mmengine(demo, "set-position", "ETH-USD", "99")
    assert big.returncode == 0 and "accepted" in big.stdout, big
    assert "warning: |99| is beyond ETH-USD's quote.max_position 50: the skew is capped" in (
        big.stderr
    )
    tap = mmengine(demo, "tap", "--topic", "BTC-USD", "--count", "1", "--json")
    assert json.loads(tap.stdout)["position"] == -1.0

    # kafka-tail finds the broker through the running engine: no library chatter, no
    # traceback, a summary in words.
    kafka = mmengine(demo, "kafka-tail", "--count", "5")
    assert kafka.returncode == 0, kafka.stderr
    assert len([ln for ln in kafka.stdout.splitlines() if ln.startswith(("BTC", "ETH"))]) == 5
    assert re.fullmatch(
        r"5 prices, 0 duplicates dropped, 0 gaps \(0 seqs missing\), 0 late\n", kafka.stderr
    ), kafka.stderr

    # db-tail with the README's instrument.
    dsn = json.loads(endpoints.read_text())["postgres"]["dsn"]
    rows = mmengine(demo, "db-tail", "--dsn", dsn, "--instrument", "BTC-USD", "--count", "2")
    assert rows.returncode == 0, rows.stderr
    assert [ln.split()[0] for ln in rows.stdout.splitlines()] == ["BTC-USD", "BTC-USD"]


def test_the_demo_market_rarely_crosses_and_its_metrics_are_served(running_demo: Demo) -> None:
    """One fair price per instrument under every simulated venue: the venues' books cross
    each other on few Prices (it was every Price); the engine's metrics are on a free
    port named in endpoints.json."""
    demo = running_demo
    endpoints = json.loads(demo.endpoints().read_text())
    url = endpoints["metrics"]
    assert url and url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = reply.read().decode()
    for venue in ("binance", "coinbase", "kraken", "okx", "bybit"):
        assert f'mmengine_venue_connected{{venue="{venue}"}} 1.0' in body, venue
    assert "mmengine_pricing_prices_total" in body
    tap = mmengine(demo, "tap", "--count", "800", "--json", timeout=60)
    assert tap.returncode == 0, tap.stderr
    prices = [json.loads(line) for line in tap.stdout.splitlines()]
    assert len(prices) == 800
    quoted = [p for p in prices if not p["halted"]]
    assert len(quoted) > 700, [p["halt_reason"] for p in prices if p["halted"]][:5]
    crossed = sum(p["cross_venue_crossed"] for p in prices)
    print(f"\ndemo: {crossed} of {len(prices)} Prices crossed across venues")
    assert crossed / len(prices) < 0.05
    # Every venue's book sits within a few basis points of the fair value (none drifts
    # off on a walk of its own).
    for p in quoted[-50:]:
        for used in p["venues_used"]:
            assert abs(used["mid"] / p["fair_value"] - 1) < 5e-4, (used, p["fair_value"])


def left_in_spool(output: str, sink: str) -> int:
    match = re.search(rf"^{sink}: .*?(\d+) left in the spool", output, re.M)
    assert match, f"no {sink} summary line in:\n{output}"
    return int(match.group(1))


def test_ctrl_c_to_the_whole_process_group_drains_both_sinks(running_demo: Demo) -> None:
    demo = running_demo
    demo.endpoints()
    time.sleep(2.0)  # prices flowing into both sinks at several hundred a second
    output = demo.interrupt()
    assert demo.proc.returncode == 0, output
    assert left_in_spool(output, "kafka") == 0, output
    assert left_in_spool(output, "postgres") == 0, output
    assert "nothing left in either spool" in output, output
    # The metrics port is named with the other ways to watch, and the crossed share said.
    assert re.search(r"metrics: http://127\.0\.0\.1:\d+/metrics", output), output
    assert "curl -s http://127.0.0.1:" in output, output
    share = re.search(r"crossed across venues: [\d,]+ of [\d,]+ prices \(([\d.]+)%\)", output)
    assert share and float(share[1]) < 5.0, output[-2000:]
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
