"""The Kafka writer against a real tansu broker, for both clients: exactly-once after
dedupe, order, a second client reading the same, broker kill and restart (slow and fast),
spool limit.

The writer is fed by a test thread PUSHing exactly what pricing workers send it (see
`kafka_support.Feeder`). The engine-level tests (every IPC Price on the topic, the 20 s
broker pause, the engine SIGKILLed and restarted on its spool) are in test_kafka_engine.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from mmengine.config import KafkaOutput
from mmengine.kafka_tail import SeqTracker, tail
from mmengine.sinks.kafka import KafkaWriter
from tests.conftest import free_port
from tests.integration.kafka_support import (
    Broker,
    Feeder,
    OfficialDecoder,
    Record,
    broker,  # noqa: F401 (fixture)
    consume_all,
)

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT"]
EPOCH = 1_790_000_000_000_000_000


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


@pytest.fixture
def writers(ctx: zmq.Context, tmp_path: Path) -> Iterator[Callable[..., KafkaWriter]]:
    """Start writers; each is stopped and joined after the test."""
    started: list[KafkaWriter] = []

    def make(bootstrap: str, spool_dir: Path | None = None, **kw: Any) -> KafkaWriter:
        spool_max = kw.pop("spool_max_bytes", 1 << 30)
        kw.setdefault("drain_timeout_s", 1.0)
        cfg = KafkaOutput(bootstrap_servers=bootstrap, **kw)
        w = KafkaWriter(
            ctx,
            cfg,
            spool_dir or tmp_path / "spool",
            spool_max,
            spool_memory_records=2_000,
            endpoint=f"inproc://sink.kafka.{len(started)}",
        )
        w.start()
        assert w.ready.wait(5) and w.error is None, w.error
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()
    for w in started:
        w.join(timeout=15)
        assert not w.is_alive()


def dedupe(records: list[Record]) -> dict[str, list[int]]:
    """instrument -> seqs in topic order, first occurrence of each (epoch, seq) kept."""
    seen: set[tuple[bytes, int, int]] = set()
    out: dict[str, list[int]] = {}
    for r in records:
        epoch, seq = r.epoch_seq
        if (r.key, epoch, seq) in seen:
            continue
        seen.add((r.key, epoch, seq))
        out.setdefault(r.key.decode(), []).append(seq)
    return out


def expected(feeder: Feeder, start: int = 0) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for inst, seq in feeder.sent[start:]:
        out.setdefault(inst, []).append(seq)
    return out


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_every_price_arrives_once_in_order_and_decodes(
    broker: Broker,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., KafkaWriter],
    client: str,
) -> None:
    from kafka import KafkaAdminClient

    w = writers(broker.bootstrap, topic="prices.t1", partitions=4, client=client)
    feeder = Feeder(ctx, w.endpoint, INSTRUMENTS, EPOCH, rate=3000, total=4000)
    feeder.start()
    feeder.join()
    wait_for(lambda: w.stats.acknowledged >= 4000, 20, "4000 acks")
    # The writer created the topic itself, with the configured partition count.
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    [desc] = admin.describe_topics(["prices.t1"])
    admin.close()
    assert len(desc["partitions"]) == 4

    records = consume_all(broker.bootstrap, "prices.t1", expect=4000)
    assert dedupe(records) == expected(feeder)
    official_decode = OfficialDecoder()
    for r in records:
        price = official_decode(r.value)
        assert r.key.decode() == price["instrument"]
        assert r.epoch_seq == (price["epoch"], price["seq"]) and price["epoch"] == EPOCH
        assert r.headers["schema.fingerprint"] == r.value[2:10]
    # One instrument, one partition.
    parts: dict[bytes, set[int]] = {}
    for r in records:
        parts.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in parts.values())
    c = w.counters()
    assert c["produced"] == c["acknowledged"] == 4000
    assert c["dropped"] == 0 and c["pending"] == 0 and c["delivery_lag_ns"] > 0

    if client == "confluent":
        # kafka-tail's group mode reads what librdkafka wrote: all of it, once.
        tracker = SeqTracker()
        seen = list(
            tail(broker.bootstrap, "prices.t1", True, group="tail", timeout_s=1.5, tracker=tracker)
        )
        assert len(seen) == 4000 and tracker.gaps == 0 and tracker.duplicates == 0
        return
    # A second, independent client reads the same records, byte for byte.
    confluent_kafka = pytest.importorskip("confluent_kafka")
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "independent-reader",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
        }
    )
    consumer.subscribe(["prices.t1"])
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 30
    while len(got) < len(records) and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            got.append((msg.key(), msg.value()))
    consumer.close()
    assert sorted(got) == sorted((r.key, r.value) for r in records)


@pytest.mark.parametrize(
    ("client", "idempotence"),
    [("kafka-python", True), ("kafka-python", False), ("confluent", True)],
    ids=["kafka-python-idempotent", "kafka-python-plain", "confluent-idempotent"],
)
def test_broker_killed_and_restarted_writer_recreates_topic_and_resends(
    broker: Broker,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., KafkaWriter],
    client: str,
    idempotence: bool,
) -> None:
    broker.create_topic("prices.kill", 6)
    w = writers(broker.bootstrap, topic="prices.kill", idempotence=idempotence, client=client)
    feeder = Feeder(ctx, w.endpoint, INSTRUMENTS, EPOCH, rate=1000)
    feeder.start()
    wait_for(lambda: w.stats.acknowledged > 1000, 10, "deliveries before the kill")
    broker.kill()  # memory storage: the topic and every record are gone
    killed_at = len(feeder.sent)
    time.sleep(1.5)
    assert w.is_alive()
    broker.start()  # same port, no topic: the writer must create it again
    restarted_at = len(feeder.sent)
    time.sleep(1.5)
    feeder.halt.set()
    feeder.join()
    total = len(feeder.sent)
    wait_for(lambda: w.counters()["pending"] == 0, 30, "everything acknowledged")

    c = w.counters()
    assert c["topic_creates"] >= 1  # re-created after the restart (it was made by the test)
    # No ack for a second: the writer dropped the producer, and built a new one only once
    # the broker answered and the topic was back; what was in flight went out again.
    assert c["away_episodes"] >= 1 and c["producer_builds"] >= 2 and c["retried"] > 0
    records = consume_all(broker.bootstrap, "prices.kill", expect=total - killed_at)
    got = dedupe(records)
    want_after = expected(feeder, killed_at)
    for inst, seqs in want_after.items():
        # Everything accepted from the kill on arrives, in order, with no gap up to the end
        # (what was acked before the kill is gone with the broker's memory storage).
        first = seqs[0]
        tail = got[inst][got[inst].index(first) :]
        assert tail == seqs, inst
    assert restarted_at > killed_at
    assert feeder.stalled == 0


def test_spool_limit_drops_newest_counted_logged_once_memory_flat(
    ctx: zmq.Context,
    writers: Callable[..., KafkaWriter],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    w = writers(f"127.0.0.1:{port}", topic="prices.full", spool_max_bytes=300_000)
    assert w.spool is not None
    wait_for(lambda: w.spool is not None and w.spool.away, 10, "the writer to give up")
    rss = psutil.Process(os.getpid()).memory_info().rss
    with caplog.at_level(logging.ERROR, logger="mmengine.spool"):
        feeder = Feeder(ctx, w.endpoint, INSTRUMENTS, EPOCH, rate=20_000, total=30_000)
        feeder.start()
        feeder.join()
        wait_for(lambda: w.stats.received == 30_000, 10, "the writer to take everything")
    c = w.counters()
    assert feeder.stalled == 0
    assert c["dropped"] > 25_000
    assert c["spool_bytes"] <= 300_000 and c["spooled"] + c["dropped"] == 30_000
    full = [r for r in caplog.records if "SPOOL FULL" in r.getMessage()]
    assert len(full) == 1
    grown = psutil.Process(os.getpid()).memory_info().rss - rss
    assert grown < 30 * 1024 * 1024, grown

    # When the broker appears, the oldest records are delivered: the newest were dropped.
    b = Broker(port, tmp_path / "late.log")
    b.start()
    try:
        wait_for(lambda: w.counters()["pending"] == 0, 20, "the spool to drain")
        records = consume_all(b.bootstrap, "prices.full", expect=c["spooled"])
        got = dedupe(records)
        assert sum(len(s) for s in got.values()) == c["spooled"]
        for seqs in got.values():
            assert seqs == list(range(1, len(seqs) + 1))
    finally:
        w.stop()
        w.join(10)
        b.kill()


def test_fast_broker_restart_fatal_idempotent_producer_is_rebuilt(
    broker: Broker,  # noqa: F811
    ctx: zmq.Context,
    writers: Callable[..., KafkaWriter],
) -> None:
    broker.create_topic("prices.fast", 6)
    w = writers(broker.bootstrap, topic="prices.fast", idempotence=True)
    feeder = Feeder(ctx, w.endpoint, INSTRUMENTS, EPOCH, rate=1000)
    feeder.start()
    wait_for(lambda: w.stats.acknowledged > 1000, 10, "deliveries before the kill")
    broker.kill()
    killed_at = len(feeder.sent)
    broker.start()  # back before the writer notices the stall
    time.sleep(3)
    feeder.halt.set()
    feeder.join()
    total = len(feeder.sent)
    wait_for(lambda: w.counters()["pending"] == 0, 30, "everything acknowledged")
    c = w.counters()
    # tansu forgot the producer id: kafka-python's idempotent producer turned fatal
    # (InitProducerId UnknownError) before any stall showed; the writer built a new one and
    # resent what was unacknowledged. Who re-creates the topic is a race here: the writer,
    # or tansu itself when the dying producer's retries reach it first (it auto-creates
    # despite allow_auto_create_topics=False). The new producer reads fresh metadata either
    # way, so what matters is below: everything from the kill on arrives, in order.
    assert c["failures"] >= 1 and c["producer_builds"] >= 2 and c["retried"] > 0, c
    records = consume_all(broker.bootstrap, "prices.fast", expect=total - killed_at)
    got = dedupe(records)
    for inst, seqs in expected(feeder, killed_at).items():
        tail = got[inst][got[inst].index(seqs[0]) :]
        assert tail == seqs, inst
