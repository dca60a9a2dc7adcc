"""The command line as a new user meets it: options, messages, finding the engine."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmengine.cli.app import main, tap_filter
from mmengine.cli.simulate import _check_capture_fits, simulator_summary
from mmengine.dev.simulator import FAULT_KINDS
from mmengine.locate import EngineNotFound, find_engine

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`main` sets up logging for the process; give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def run(args: list[str], run_dir: Path | None = None) -> tuple[int, str, float]:
    """(exit code, stderr + stdout, seconds) of `mmengine ARGS` in this process."""
    env = {"MMENGINE_RUN_DIR": str(run_dir)} if run_dir else {}
    started = time.monotonic()
    result = CliRunner().invoke(main, args, env=env)
    return result.exit_code, result.stderr + result.stdout, time.monotonic() - started


def test_unknown_log_level_is_refused() -> None:
    code, out, _ = run(["--log-level", "verbose", "top"])
    assert code == 2
    assert "'verbose' is not one of 'debug', 'info', 'warning', 'error'" in out


@pytest.mark.parametrize(
    "args",
    [
        ["top"],
        ["tap"],
        ["set-position", "BTC-USD", "-1"],
        ["kafka-tail"],
    ],
)
def test_without_an_engine_the_tools_answer_at_once_with_where_they_looked(
    args: list[str], tmp_path: Path
) -> None:
    code, out, seconds = run(args, run_dir=tmp_path)
    assert code == 1, out
    assert f"no engine found: {tmp_path / 'endpoints.json'} does not exist" in out
    assert "--run-dir DIR (or set MMENGINE_RUN_DIR)" in out
    assert seconds < 1.0  # it used to wait 10 s before saying so


def test_an_engine_killed_without_cleaning_up_is_reported_as_stopped(tmp_path: Path) -> None:
    pid = dead_pid()
    (tmp_path / "engine.lock").write_text(f"{pid}\n")
    (tmp_path / "endpoints.json").write_text(
        json.dumps({"pid": pid, "ipc": {}, "status": {"endpoint": "ipc:///nowhere"}})
    )
    for args in (["tap"], ["top"], ["--log-level", "debug", "set-position", "BTC-USD", "2"]):
        code, out, seconds = run(args, run_dir=tmp_path)
        assert code == 1 and seconds < 1.0, out
        assert f"that wrote {tmp_path / 'endpoints.json'} (pid {pid}) is not running" in out


def test_a_starting_engine_is_waited_for_and_a_dead_lock_is_not(tmp_path: Path) -> None:
    (tmp_path / "engine.lock").write_text(f"{os.getpid()}\n")  # alive: "starting"
    started = time.monotonic()
    with pytest.raises(EngineNotFound, match="did not finish starting within 0 s"):
        find_engine(tmp_path, wait_s=0.3)
    assert time.monotonic() - started >= 0.3
    (tmp_path / "engine.lock").write_text(f"{dead_pid()}\n")
    with pytest.raises(EngineNotFound, match="does not exist"):
        find_engine(tmp_path, wait_s=30)


def test_tap_topic_takes_a_plain_instrument_or_venue() -> None:
    assert tap_filter("prices", "") == (b"", None)
    assert tap_filter("prices", "BTC-USD") == (b"price.BTC-USD", None)
    assert tap_filter("prices", "BTC") == (b"price.BTC", None)
    assert tap_filter("prices", "price.ETH-USD") == (b"price.ETH-USD", None)
    assert tap_filter("books", "binance") == (b"book.binance", None)
    assert tap_filter("books", "book.okx.BTC-USDT") == (b"book.okx.BTC-USDT", None)
    assert tap_filter("books", "BTC-USDT") == (b"book.", "BTC-USDT")  # from every venue


def test_a_simulator_refuses_a_capture_of_another_protocol() -> None:
    code, out, _ = run(["simulate", "--venue", "okx-v5", "--replay", str(DATA / "KRAKEN.jsonl.gz")])
    assert code == 1
    assert "is a kraken-v1 capture; the okx-v5 simulator cannot replay it" in out
    assert "--venue kraken-v1" in out
    with pytest.raises(Exception, match="kraken-v1 capture; the kraken-v2 simulator"):
        _check_capture_fits("kraken-v2", str(DATA / "KRAKEN.jsonl.gz"))
    # What fits: the recorded protocol, either venue of a two-venue recording, and the
    # deep Coinbase simulator for a Coinbase capture.
    _check_capture_fits("kraken-v1", str(DATA / "KRAKEN.jsonl.gz"))
    _check_capture_fits("bybit-v5-linear", str(DATA / "BYBIT.jsonl.gz"))
    _check_capture_fits("coinbase-advanced-deep", str(DATA / "COINBASE.jsonl.gz"))


def test_simulate_takes_every_fault_kind_the_simulators_inject() -> None:
    """`--fault` offers the simulator package's own FAULT_KINDS (badticker included)."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    faults = [arg for kind in FAULT_KINDS for arg in ("--fault", kind)]
    try:
        # Every kind parses; the command then stops at the venue nobody simulates.
        code, out, _ = run(["simulate", "--venue", "no-such-venue", *faults])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert "badticker" in FAULT_KINDS
    assert code == 1 and "no simulator for venue 'no-such-venue'" in out, out
    code, out, _ = run(["simulate", "--venue", "binance", "--fault", "meteor"])
    assert code == 2
    assert "'meteor' is not one of " + ", ".join(f"'{k}'" for k in FAULT_KINDS) in out


def test_commands_other_than_simulate_do_not_import_the_simulators() -> None:
    """cli.py stays quick to import (tools that attach to a running engine)."""
    code = "import sys, mmengine.cli; print('mmengine.dev.simulator' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_simulator_summary_is_a_sentence() -> None:
    stats = {
        "connections": 2,
        "frames_sent": 12345,
        "updates_generated": 6000,
        "snapshots_served": 4,
        "slow_consumer_drops": 0,
        "faults": {"gap": 2, "drop": 1},
        "open_connections": 0,
    }
    line = simulator_summary("binance", stats)
    assert line == (
        "binance simulator stopped: 2 connections, 12,345 frames sent, 6,000 book updates "
        "generated, 4 REST snapshots served, 0 slow clients dropped, faults injected: "
        "1 drop, 2 gap"
    )


def _replay(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmengine.cli", *extra, "replay", str(DATA / "OKX.jsonl.gz")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_replay_prints_its_scorecard_and_state_lines_only_when_asked() -> None:
    quiet = _replay()
    assert quiet.returncode == 0, quiet.stderr
    assert "OKX.jsonl.gz: protocol okx-v5" in quiet.stdout
    assert quiet.stderr == ""
    verbose = subprocess.run(
        [sys.executable, "-m", "mmengine.cli", "replay", "--verbose", str(DATA / "OKX.jsonl.gz")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert " LIVE " in verbose.stderr and "INFO" in verbose.stderr
    assert " LIVE " in _replay("--log-level", "info").stderr


def test_engine_summary_counts_read_as_words() -> None:
    from collections import Counter

    from mmengine.engine import counted, many

    assert counted(Counter(gap=5, checksum=2), "resync") == "7 resyncs (checksum 2, gap 5)"
    assert counted(Counter(gap=1), "resync") == "1 resync (gap 1)"
    assert counted(Counter(), "resync") == "0 resyncs"
    assert counted(Counter(), "skipped") == "0 skipped"
    assert many(1, "reconnect attempt") == "1 reconnect attempt"
    assert many(3, "gap") == "3 gaps"


def test_a_stopped_simulator_says_what_it_did_once_in_words() -> None:
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "mmengine.cli", "simulate", "--venue", "binance"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()  # log lines, then "binance simulator: ws ..."
        while "simulator: ws" not in first and first:
            first = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:  # never left behind, whatever failed
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert rest.count("simulator stopped") == 1, rest
    assert "binance simulator stopped: 0 connections, 0 frames sent" in rest
    assert "{" not in rest, rest


def _has_eventfd(pid: int) -> bool:
    """Whether process `pid` holds an eventfd (a ZeroMQ context makes one)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        return any("eventfd" in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds)
    except OSError:
        return False


def test_tap_and_top_exit_when_the_engine_they_watch_stops(tmp_path: Path) -> None:
    """An engine killed while a tool waits on it: the tool says so instead of hanging."""
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    nowhere = f"ipc://{tmp_path}/nothing"  # nobody binds it: the tool only waits
    (tmp_path / "endpoints.json").write_text(
        json.dumps(
            {
                "pid": stand_in.pid,
                "ipc": {"prices": {"endpoint": nowhere, "schema": "price.avsc"}},
                "status": {"endpoint": nowhere},
            }
        )
    )
    env = {**os.environ, "MMENGINE_RUN_DIR": str(tmp_path)}
    tools = [
        subprocess.Popen(
            [sys.executable, "-m", "mmengine.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in (["tap"], ["top"])
    ]
    # Both attached and waiting: each has made its ZeroMQ context (an eventfd), which it does
    # after finding the endpoints and before it waits; a loaded machine takes its time.
    deadline = time.monotonic() + 30
    while not all(_has_eventfd(t.pid) for t in tools) and time.monotonic() < deadline:
        if any(t.poll() is not None for t in tools):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    if [t.poll() for t in tools] != [None, None]:
        early = [(t.args[-1], t.returncode, *t.communicate(timeout=10)) for t in tools]
        stand_in.kill()
        raise AssertionError(f"a tool exited while the engine was alive: {early}")
    stand_in.kill()
    stand_in.wait()
    _, tap_err = tools[0].communicate(timeout=10)
    top_out, _ = tools[1].communicate(timeout=10)
    assert tools[0].returncode == 1 and f"the engine (pid {stand_in.pid}) has stopped" in tap_err
    assert tools[1].returncode == 1 and "the engine has stopped" in top_out


def test_tap_reports_the_gaps_it_sees(tmp_path: Path) -> None:
    """A subscriber that falls behind loses Prices (PUB/SUB); tap says so, per instrument,
    from the contiguous `seq`. Here the stream itself skips every tenth seq."""
    import threading

    import zmq

    from mmengine.bus import IpcPublisher
    from mmengine.codec import Codec, encode_price
    from mmengine.model import Price

    ctx = zmq.Context()
    publisher = IpcPublisher(ctx, "prices", f"ipc://{tmp_path}/prices")
    publisher.bind()
    stop = threading.Event()

    def feed() -> None:
        header = Codec("price.avsc").header
        seq = 0
        while not stop.is_set():
            seq += 1
            if seq % 10 == 0:
                continue  # lost before this subscriber
            price = Price("AAA-USD", 7, seq, 100.0, 99.0, 1.0, 101.0, 1.0)
            publisher.publish(b"price.AAA-USD", encode_price(header, price))
            time.sleep(0.001)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        code, out, _ = run(["tap", "--endpoint", publisher.endpoint, "--count", "40", "--json"])
    finally:
        stop.set()
        feeder.join()
        publisher.close()
        ctx.term()
    assert code == 0, out
    gaps = [ln for ln in out.splitlines() if ln.startswith("gap: AAA-USD")]
    assert len(gaps) >= 3
    assert all(": 1 Prices missed" in ln for ln in gaps)
    assert f"tap: {len(gaps)} Prices missed in {len(gaps)} gaps" in out


REPO = Path(__file__).resolve().parents[2]
NAME = r"[A-Z0-9]{2,10}-[A-Z0-9]{2,10}(?:-[A-Z0-9]{4,8})?"  # our instrument names


def shipped_instruments() -> tuple[set[str], set[str]]:
    """(what the shipped configs price, what their venues are asked for)."""
    from mmengine.config import load_config

    priced: set[str] = set()
    sourced: set[str] = set()
    for path in sorted((REPO / "config").glob("*.yaml")):
        cfg = load_config(path)
        priced |= {i.name for i in cfg.instruments}
        sourced |= {s.instrument for i in cfg.instruments for s in i.sources}
    return priced, sourced


def help_text(command: str) -> str:
    # Wide enough that click never wraps a name at its hyphen.
    result = CliRunner().invoke(
        main, [command, "--help"], terminal_width=400, max_content_width=400
    )
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_help_texts_and_readme_examples_name_instruments_the_shipped_configs_price() -> None:
    """An example a new user copies must give output: `tap --topic BTC-USDT` or `db-tail
    --instrument BTC-USDT` waited forever, as no shipped config prices BTC-USDT (it is a
    venue's instrument, which only `--stream books` shows)."""
    import re

    priced, sourced = shipped_instruments()
    assert {"BTC-USD", "ETH-USD"} <= priced and "BTC-USDT" not in priced
    # Commands whose instrument is a priced one: every name in their help.
    for command in ("set-position", "db-tail", "kafka-tail", "top"):
        named = set(re.findall(NAME, help_text(command)))
        assert named <= priced, (command, named - priced)
    # tap: Prices by instrument, books by a venue's instrument (said as such).
    text = help_text("tap")
    books = re.search(r"--stream books an instrument \((" + NAME + r")\)", text)
    assert books and books[1] in sourced, text
    prices = set(re.findall(NAME, text.replace(books[0], "")))
    assert prices and prices <= priced, (prices - priced, text)
    # README and docs: every example that names a Price's instrument.
    example = re.compile(
        r"mmengine (?:tap(?: \[[^]]*\])* --topic|set-position|db-tail(?: --\S+ \S+)* --instrument)"
        r" (" + NAME + r")\b"
    )
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for match in example.finditer(doc.read_text()):
            found.append((doc.name, match[1]))
            assert match[1] in priced, (doc.name, match[0])
    assert len(found) >= 5, found  # the pattern still sees the README's examples
