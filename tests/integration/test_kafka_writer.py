"""The Kafka writer against a real tansu broker, for both clients: exactly-once after
dedupe, order, a second client reading the same, spool limit, and broker kill and restart
(slow and fast), checked from the exact cut (the writer's FIFO acknowledged count when it
gave up on the killed broker) on the raw records, before any dedupe.

The writer is fed by a test thread PUSHing exactly what pricing workers send it (see
`kafka_support.Feeder`). The engine-level tests (every IPC Price on the topic, the 20 s
broker pause, the engine SIGKILLed and restarted on its spool) are in test_kafka_engine.py.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from mmengine.cli.kafka_tail import SeqTracker, tail
from mmengine.config import KafkaOutput
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
    # Every acknowledged record is timed priced -> acked (mmengine_stage_latency_seconds).
    [stage] = w.stages.report().values()
    assert sum(stage["counts"]) == 4000 and min(stage["recent_us"]) > 0
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


class DropWatch(threading.Thread):
    """Finds the exact cut of a broker kill from the writer's own counters.

    The writer applies acks in FIFO order, so `acknowledged == n` means the first n records
    it received (the feeder's `sent[:n]`) are acknowledged. After a kill it drops the
    producer that was live (no ack for `STALL_S`, or a client failure) and resends
    everything unacknowledged. What the dying broker acknowledged before that moment is
    gone with its memory storage, by design; everything after it must arrive.

    Sampling every millisecond from just before the kill, this keeps `acknowledged` at the
    first sample that sees the drop (read *after* the drop flag, so it can only be late by
    acks of a producer built since, which takes far longer than a millisecond)."""

    def __init__(self, writer: KafkaWriter) -> None:
        super().__init__(name="drop-watch", daemon=True)
        self.writer = writer
        stats = writer.stats
        self.base = stats.away_episodes + stats.failures
        self.acked_before = stats.acknowledged  # re-read right before the kill
        self.in_flight_at_kill = 0
        self.cut: int | None = None
        self.halt = threading.Event()

    def mark_kill(self) -> None:
        stats = self.writer.stats
        # Nothing was resent before the kill, so produced - acknowledged is in flight.
        assert stats.retried == 0
        self.acked_before = stats.acknowledged
        self.in_flight_at_kill = stats.produced - self.acked_before

    def run(self) -> None:
        stats = self.writer.stats
        while self.cut is None and not self.halt.is_set():
            dropped = stats.away_episodes + stats.failures > self.base
            acked = stats.acknowledged
            if dropped:
                self.cut = acked
            else:
                time.sleep(0.001)


def check_from_the_cut(records: list[Record], feeder: Feeder, watch: DropWatch, c: dict) -> int:
    """Every record the feeder handed over from the cut on is on the topic, in order,
    counted on the raw records (before any dedupe); returns the duplicates, which only a
    resend can make: at most what was in flight when the writer resent (`retried`)."""
    cut = watch.cut
    assert cut is not None, "the writer never dropped the producer of the killed broker"
    # The cut lies inside the window that was in flight at the kill.
    assert watch.acked_before <= cut <= watch.acked_before + watch.in_flight_at_kill, (
        watch.acked_before,
        cut,
        watch.in_flight_at_kill,
    )
    raw: dict[str, list[int]] = {}
    for r in records:
        epoch, seq = r.epoch_seq
        assert epoch == EPOCH
        raw.setdefault(r.key.decode(), []).append(seq)
    duplicates = 0
    drops = c["away_episodes"] + c["failures"]
    for inst, want in expected(feeder, cut).items():
        got = [s for s in raw.get(inst, []) if s >= want[0]]
        missing = sorted(set(want) - set(got))
        assert not missing, f"{inst}: {len(missing)} records lost from the cut on: {missing[:5]}"
        assert set(got) == set(want), f"{inst}: records nobody sent"
        first_seen = list(dict.fromkeys(got))
        assert first_seen == want, f"{inst}: out of order"
        duplicates += len(got) - len(want)
        # Raw order: one increasing run per producer life; a resend may restart a run.
        restarts = sum(1 for a, b in itertools.pairwise(got) if b <= a)
        assert restarts <= drops, (inst, restarts, drops)
    assert duplicates <= c["retried"], (duplicates, c["retried"])
    return duplicates


@pytest.mark.parametrize(
    ("client", "idempotence"),
    [("kafka-python", True), ("kafka-python", False), ("confluent", True)],
    ids=["kafka-python-idempotent", "kafka-python-plain", "confluent-idempotent"],
)
def test_broker_killed_every_record_from_the_exact_cut_arrives_in_order(
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
    watch = DropWatch(w)
    watch.start()
    watch.mark_kill()
    broker.kill()  # memory storage: the topic and every record are gone
    killed_at = len(feeder.sent)
    wait_for(lambda: watch.cut is not None, 10, "the writer to drop the dead producer")
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
    assert watch.cut is not None
    records = consume_all(broker.bootstrap, "prices.kill", expect=total - watch.cut)
    duplicates = check_from_the_cut(records, feeder, watch, c)
    print(
        f"{client}: acked before the kill {watch.acked_before}, cut {watch.cut} "
        f"(in flight at the kill {watch.in_flight_at_kill}), sent {total}, "
        f"duplicates {duplicates}, resent {c['retried']}"
    )
    assert restarted_at > killed_at >= watch.cut
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
    w = writers(broker.bootstrap, topic="prices.fast", idempotence=True, client="kafka-python")
    feeder = Feeder(ctx, w.endpoint, INSTRUMENTS, EPOCH, rate=1000)
    feeder.start()
    wait_for(lambda: w.stats.acknowledged > 1000, 10, "deliveries before the kill")
    watch = DropWatch(w)
    watch.start()
    watch.mark_kill()
    broker.kill()
    broker.start()  # back before the writer notices the stall
    wait_for(lambda: watch.cut is not None, 10, "the writer to drop the fatal producer")
    time.sleep(2)
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
    # way, so what matters is below: everything from the exact cut on arrives, in order.
    assert c["failures"] >= 1 and c["producer_builds"] >= 2 and c["retried"] > 0, c
    assert watch.cut is not None
    records = consume_all(broker.bootstrap, "prices.fast", expect=total - watch.cut)
    duplicates = check_from_the_cut(records, feeder, watch, c)
    print(
        f"acked before the kill {watch.acked_before}, cut {watch.cut} (in flight at the kill "
        f"{watch.in_flight_at_kill}), duplicates {duplicates}, resent {c['retried']}"
    )
