"""A real Kafka-protocol broker (tansu, memory storage) as a fixture, and helpers to feed
the Kafka writer and read a topic back to its end (never by `end_offsets`: tansu's are
wrong for multi-record batches)."""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
import zmq

from mmengine import bus
from mmengine.codec import SCHEMA_DIR, Codec, price_record, price_values
from mmengine.dev.tansu import start_tansu
from mmengine.model import Price
from mmengine.pricing.worker import SINK_KEY
from mmengine.sinks.kafka import ensure_topic
from tests.conftest import free_port


class Broker:
    """tansu as a direct child process on a fixed port; can be killed, paused, restarted."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = start_tansu(self.port, log)

    def kill(self) -> None:
        """SIGKILL and reap: memory storage loses every topic and record."""
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def create_topic(self, topic: str, partitions: int = 6) -> None:
        ensure_topic(self.bootstrap, topic, partitions)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh tansu on a free port; killed and reaped after the test."""
    b = Broker(free_port(), tmp_path / "tansu.log")
    b.start()
    try:
        yield b
    finally:
        b.kill()


@dataclass
class Record:
    """One consumed Kafka record."""

    key: bytes
    value: bytes
    headers: dict[str, bytes]
    partition: int
    offset: int

    @property
    def epoch_seq(self) -> tuple[int, int]:
        return (
            struct.unpack(">q", self.headers["epoch"])[0],
            struct.unpack(">q", self.headers["seq"])[0],
        )


def consume_all(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0, idle_s: float = 1.0
) -> list[Record]:
    """Every record of `topic` from the beginning: until at least `expect` arrived and
    nothing new came for `idle_s`, or `timeout_s` passed. Partitions are assigned directly
    (no group join), every client refuses auto-creation."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        session_timeout_ms=6000,
        consumer_timeout_ms=200,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    out.append(Record(r.key, r.value, dict(r.headers), r.partition, r.offset))
            if batch:
                last_new = time.monotonic()
            elif len(out) >= expect and time.monotonic() - last_new > idle_s:
                break
        return out
    finally:
        consumer.close()


class OfficialDecoder:
    """Decodes Price payloads with the official `avro` package (the reference), parsing
    the schema once: `tests.integration.conftest.official_decode` re-parses it per call,
    which costs about a millisecond a record."""

    def __init__(self, schema_file: str = "price.avsc") -> None:
        self.schema = avro.schema.parse((SCHEMA_DIR / schema_file).read_text())
        self.fingerprint = self.schema.fingerprint("CRC-64-AVRO")
        self.reader = avro.io.DatumReader(self.schema)

    def __call__(self, payload: bytes) -> dict[str, Any]:
        assert payload[:2] == b"\xc3\x01", "no single-object marker"
        assert payload[2:10] == self.fingerprint, "fingerprint mismatch"
        return self.reader.read(avro.io.BinaryDecoder(io.BytesIO(payload[10:])))  # type: ignore[no-any-return]


def sink_message(
    codec: Codec, instrument: str, epoch: int, seq: int, values: bool = False
) -> bytes:
    """What a pricing worker PUSHes to a writer for one Price, as one frame (`values`: with
    the Price's values, as pricing sends them to the Postgres writer)."""
    return bus.sink_message(*sink_parts(codec, instrument, epoch, seq, values))


def sink_parts(
    codec: Codec, instrument: str, epoch: int, seq: int, values: bool = False
) -> list[bytes]:
    """The parts of `sink_message`: instrument, sink key, Avro payload (and values)."""
    now = time.time_ns()
    price = Price(
        instrument, epoch, seq, 100.0 + seq, 99.5, 1.0, 100.5, 2.0, ["sim"], now, now, now
    )
    frames = [
        instrument.encode(),
        SINK_KEY.pack(epoch, seq, now),
        codec.encode(price_record(price)),
    ]
    if values:
        frames.append(pickle.dumps(price_values(price), pickle.HIGHEST_PROTOCOL))
    return frames


class Feeder(threading.Thread):
    """A stand-in for the pricing workers: PUSHes Prices for `instruments` at `rate`/s
    (round-robin, seq per instrument from 1), never blocking, and remembers what the
    writer accepted into its queue (the zmq send succeeded)."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        instruments: list[str],
        epoch: int,
        rate: float,
        total: int | None = None,
        values: bool = False,
    ) -> None:
        super().__init__(name="feeder", daemon=True)
        self.values = values
        self.ctx = ctx
        self.endpoint = endpoint
        self.instruments = instruments
        self.epoch = epoch
        self.rate = rate
        self.total = total
        self.sent: list[tuple[str, int]] = []
        self.stalled = 0  # sends that would have blocked
        self.halt = threading.Event()
        self.sent_at: list[float] = []

    def run(self) -> None:
        codec = Codec("price.avsc")
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 100_000)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(self.endpoint)
        seq = dict.fromkeys(self.instruments, 0)
        n = 0
        start = time.monotonic()
        try:
            while not self.halt.is_set() and (self.total is None or n < self.total):
                inst = self.instruments[n % len(self.instruments)]
                seq[inst] += 1
                try:
                    push.send(
                        sink_message(codec, inst, self.epoch, seq[inst], self.values),
                        zmq.NOBLOCK,
                    )
                    self.sent.append((inst, seq[inst]))
                    self.sent_at.append(time.monotonic())
                except zmq.Again:
                    self.stalled += 1
                n += 1
                ahead = start + n / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        finally:
            push.close()


def by_instrument(records: list[Any], decode: Any) -> dict[str, list[int]]:
    """instrument -> seqs in topic order, from decoded payloads."""
    out: dict[str, list[int]] = {}
    for r in records:
        d = decode(r.value)
        out.setdefault(d["instrument"], []).append(d["seq"])
    return out
