"""Real servers and processes as fixtures: the engine as a child process, its IPC streams."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
import yaml
import zmq

from mmengine.codec import SCHEMA_DIR
from tests.venue_session import wait_for


def official_decode(schema_file: str, payload: bytes) -> dict[str, Any]:
    """Decode a single-object payload with the official `avro` package (the reference)."""
    schema = avro.schema.parse((SCHEMA_DIR / schema_file).read_text())
    assert payload[:2] == b"\xc3\x01", "no single-object marker"
    assert payload[2:10] == schema.fingerprint("CRC-64-AVRO"), "fingerprint mismatch"
    reader = avro.io.DatumReader(schema)
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(payload[10:])))  # type: ignore[no-any-return]


@dataclass
class EngineProcess:
    """`mmengine run` in a child process; `stop()` sends SIGTERM and collects the output.

    A thread reads the engine's output as it comes: an engine that logs more than a pipe
    holds (64 KiB) while nobody reads would block in its logging call and look frozen."""

    config_path: Path
    run_dir: Path
    proc: subprocess.Popen[str]
    output: str = ""
    returncode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.proc.stdout is not None:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    def stop(self) -> int:
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self._reader is not None:
                self._reader.join(timeout=10)
            self.output = "".join(self._lines)
            self.returncode = self.proc.returncode
        return self.returncode


def start_engine(config: dict[str, Any], tmp_path: Path) -> EngineProcess:
    run_dir = tmp_path / "run"
    config.setdefault("engine", {})["run_dir"] = str(run_dir)
    # Each engine its own spool (and epoch file), as docs/operations.md asks of engines
    # that run side by side; the default, the user's state dir, is one per user.
    config.setdefault("limits", {}).setdefault("spool_dir", str(tmp_path / "spool"))
    config_path = tmp_path / "engine.yaml"
    config_path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmengine.cli", "run", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    engine = EngineProcess(config_path, run_dir, proc)
    deadline = time.monotonic() + 20
    while not (run_dir / "endpoints.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            engine.stop()
            raise AssertionError(f"engine did not start:\n{engine.output}")
        time.sleep(0.05)
    return engine


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Any]:
    """Start engines from config dicts; every one is stopped (SIGTERM) after the test."""
    engines: list[EngineProcess] = []

    def factory(config: dict[str, Any], name: str = "e0") -> EngineProcess:
        where = tmp_path / name
        where.mkdir()
        engine = start_engine(config, where)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.stop()


class Subscriber:
    """An independent SUB on one of the engine's IPC endpoints (the test's own socket)."""

    def __init__(self, endpoint: str, topic: bytes = b"") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 1_000_000)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)

    def collect(
        self, schema_file: str, count: int | None = None, seconds: float = 10.0
    ) -> list[tuple[bytes, dict[str, Any]]]:
        """Messages until `count` arrived or `seconds` passed (no fewer-than check here)."""
        out: list[tuple[bytes, dict[str, Any]]] = []
        deadline = time.monotonic() + seconds
        while (count is None or len(out) < count) and time.monotonic() < deadline:
            if self.sock.poll(50):
                topic, payload = self.sock.recv_multipart()
                out.append((topic, official_decode(schema_file, payload)))
        return out

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class BooksStream(threading.Thread):
    """Every BookTop on an engine's `books` stream, decoded with the official `avro`
    package, as it arrives (`got`, in order)."""

    def __init__(self, engine: EngineProcess) -> None:
        super().__init__(daemon=True)
        doc = json.loads((engine.run_dir / "endpoints.json").read_text())
        self.sub = Subscriber(doc["ipc"]["books"]["endpoint"])
        self.got: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.halt.is_set():
            if self.sub.sock.poll(50):
                self.got.append(official_decode("book_top.avsc", self.sub.sock.recv_multipart()[1]))

    def states(self, instrument: str) -> list[str]:
        return [t["state"] for t in list(self.got) if t["instrument"] == instrument]

    def finish(self) -> None:
        self.halt.set()
        self.join(5)
        self.sub.close()


def frozen_live_tops(
    engine: EngineProcess, sims: list[Any], instruments: int
) -> dict[str, dict[str, Any]]:
    """The last LIVE top of each book on the engine's `books` stream, taken once
    `instruments` books are LIVE, the simulators' markets are frozen (`stall`, 3 s) and what
    they sent has arrived: to compare with the simulators' own books right after."""
    doc = json.loads((engine.run_dir / "endpoints.json").read_text())
    sub = Subscriber(doc["ipc"]["books"]["endpoint"])
    latest: dict[str, dict[str, Any]] = {}

    def drain() -> bool:
        for _, top in sub.collect("book_top.avsc", seconds=0.1):
            if top["state"] == "LIVE":
                latest[top["instrument"]] = top
        return len(latest) == instruments

    try:
        wait_for(drain, 15)
        for sim in sims:
            sim.inject("stall")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            drain()
    finally:
        sub.close()
    return latest
