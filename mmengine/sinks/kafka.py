"""The Kafka writer (thread `kafka-writer`, plus its helper thread `kafka-connect`): pulls
Prices from `inproc://sink.kafka`, keeps them in a durable spool, produces them with
kafka-python (or confluent-kafka, `client: confluent`), and forgets them only once the
broker has acknowledged them.

Pricing never waits on Kafka: the writer drains its inproc queue into the spool on every
loop, whatever the broker does. Everything that can block on the network for long (building
a producer, which bootstraps; creating the topic) runs on the helper thread, so a broker
that is down, paused or restarting only makes the spool grow.

Delivery is at-least-once, in order per instrument:

- key = instrument, so an instrument's Prices stay in one partition; `acks='all'`;
  `allow_auto_create_topics=False`. The topic is created by the helper, with the
  configured partitions, before any producer is built.
- At most `in_flight_records` are handed to the producer at once; they stay in the spool.
  Acks are applied in FIFO order (the oldest unacknowledged record holds back the rest).
- Idempotence on (default): the broker drops the producer's own retries and keeps per-
  partition order with up to 5 requests in flight. Off: 1 request in flight, so a retry
  cannot overtake. Either way, if the client reports a failure (a record expired, the
  producer turned fatal -- tansu forgets producer ids on restart and an idempotent
  producer then fails every send), the writer drops that producer, builds a new one and
  resends everything unacknowledged from the spool, oldest first. Consumers dedupe on
  (instrument, epoch, seq).
- No ack for `STALL_S` with records in flight (broker down, paused or restarting): the
  producer is dropped at once and the spool keeps everything on disk. A new producer is
  built only once the broker answers and the topic exists again. Why not let the old one
  retry: tansu with memory storage forgets the topic on restart, and a producer's retries
  to the restarted broker make it auto-create the topic with 4 partitions (despite
  `allow_auto_create_topics=False`); tansu then acks writes to the partitions above 3,
  which nobody can ever read, and fails others, so a later seq could land before an
  earlier one. A fresh producer reads fresh metadata and writes only where it can be read.
  (A restart quicker than `STALL_S` can still race; real Kafka does not lose topics.)
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import zmq

from mmengine.codec import Codec
from mmengine.latency import KAFKA_STAGE
from mmengine.sinks.spool import Spool
from mmengine.sinks.writer import SpoolingWriter, split_record

if TYPE_CHECKING:
    from mmengine.config import KafkaOutput

log = logging.getLogger("mmengine.kafka")

ENDPOINT = "inproc://sink.kafka"
STALL_S = 1.0  # no ack for this long with records in flight: the broker is away
# A new producer gets longer for its first ack: it still has to fetch metadata and connect
# (librdkafka took 0.6 s and more here). With STALL_S alone a slow first connect looked
# like an outage, and every rebuilt producer was dropped again before its first ack.
FIRST_ACK_S = 5.0
BUILD_BACKOFF_S = (0.25, 2.0)  # first and largest wait between producer builds
MAX_DRAIN = 20_000  # inproc messages per loop before producing again
HEADER_INT = struct.Struct(">q")
QUARANTINED = -1  # a _Sent's priced_ts_ns for a record set aside instead of sent


class _Timeouts(TypedDict):
    """The client settings both Kafka clients take (kafka-python names)."""

    request_timeout_ms: int
    bootstrap_timeout_ms: int
    reconnect_backoff_ms: int
    reconnect_backoff_max_ms: int


# Timeouts keep a dead or paused broker from tying up the helper thread for long.
CLIENT_TIMEOUTS: _Timeouts = {
    "request_timeout_ms": 5_000,
    "bootstrap_timeout_ms": 2_000,
    "reconnect_backoff_ms": 50,
    "reconnect_backoff_max_ms": 500,
}


def headers_for(payload: bytes, epoch: int, seq: int) -> list[tuple[str, bytes]]:
    """Record headers: the payload's schema fingerprint (8 bytes) and epoch/seq (`>q`)."""
    return [
        ("schema.fingerprint", payload[2:10]),
        ("epoch", HEADER_INT.pack(epoch)),
        ("seq", HEADER_INT.pack(seq)),
    ]


def _admin(bootstrap: str, timeout_s: float) -> Any:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="mmengine-admin",
        request_timeout_ms=int(timeout_s * 1000),
        bootstrap_timeout_ms=int(timeout_s * 1000),
        reconnect_backoff_max_ms=500,
    )


def ensure_topic(
    bootstrap: str, topic: str, partitions: int, replication: int = 1, timeout_s: float = 5.0
) -> bool:
    """Create `topic` with `partitions` if the cluster lacks it. True if it was created.

    Raises kafka errors (NoBrokersAvailable, KafkaTimeoutError) when the broker is away.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = _admin(bootstrap, timeout_s)
    try:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics([NewTopic(topic, partitions, replication)])
        except TopicAlreadyExistsError:
            return False  # another writer won the race: same outcome
        return True
    finally:
        admin.close()


class _Client(ABC):
    """The seam between the writer and a Kafka client library: built on the connector
    thread, used only on the writer thread (and closed on the connector thread)."""

    failed: BaseException | None = None  # a client-wide fatal error (confluent)

    @abstractmethod
    def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int,
        sent: _Sent,
    ) -> bool:
        """Hand one record over; False when the client has no room now (try later).
        Raises when the client cannot take records at all."""

    def poll(self) -> None:  # noqa: B027 (a client whose callbacks run elsewhere: nothing)
        """Serve delivery callbacks that run on the caller's thread."""

    @abstractmethod
    def close(self, timeout_s: float) -> None:
        """Close, waiting up to `timeout_s` for deliveries; never raises."""


class _KafkaPythonClient(_Client):
    """kafka-python: pure Python; its I/O thread runs the futures' callbacks."""

    def __init__(self, cfg: KafkaOutput) -> None:
        from kafka import KafkaProducer

        self.producer = KafkaProducer(
            bootstrap_servers=cfg.bootstrap_servers.split(","),
            client_id="mmengine-kafka-writer",
            acks="all",
            enable_idempotence=cfg.idempotence,
            # Idempotence keeps per-partition order with up to 5 in flight; without it,
            # only one request in flight keeps a retry from overtaking the next batch.
            max_in_flight_requests_per_connection=5 if cfg.idempotence else 1,
            linger_ms=cfg.linger_ms,
            batch_size=cfg.batch_size,
            allow_auto_create_topics=False,
            # Long enough to ride out a paused broker; a record that still fails makes
            # the writer resend from the spool.
            delivery_timeout_ms=60_000,
            max_block_ms=250,  # send() must not hold the writer thread
            metrics_enabled=False,  # its sensors cost CPU on every record
            **CLIENT_TIMEOUTS,
        )

    def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int,
        sent: _Sent,
    ) -> bool:
        future = self.producer.send(
            topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms
        )
        future.add_callback(sent.ok)
        future.add_errback(sent.fail)
        return True

    def close(self, timeout_s: float) -> None:
        producer = self.producer
        if timeout_s <= 0:
            # close(0) flushes first, and that raises KafkaTimeoutError while records are
            # pending, before close reaches its own force close: the dropped producer would
            # go on sending in the background (late duplicates, even a later seq before an
            # earlier one's resend). So stop its sender first (kafka-python 3.0 internals).
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(5)
        try:
            producer.close(timeout=timeout_s)
        except Exception as exc:
            log.debug("closing the old producer: %r", exc)


class _ConfluentClient(_Client):
    """confluent-kafka (librdkafka): I/O in C threads outside the GIL; delivery callbacks
    run inside `poll()` on the writer thread."""

    def __init__(self, cfg: KafkaOutput) -> None:
        from confluent_kafka import Producer

        self.producer = Producer(
            {
                "bootstrap.servers": cfg.bootstrap_servers,
                "client.id": "mmengine-kafka-writer",
                "acks": "all",
                "enable.idempotence": cfg.idempotence,
                "max.in.flight.requests.per.connection": 5 if cfg.idempotence else 1,
                "linger.ms": cfg.linger_ms,
                "batch.size": cfg.batch_size,
                "allow.auto.create.topics": False,
                "message.timeout.ms": 60_000,
                "queue.buffering.max.messages": max(100_000, 2 * cfg.in_flight_records),
                # kafka-python's partitioner (murmur2), so an instrument keeps its
                # partition when the client is switched.
                "partitioner": "murmur2_random",
                "socket.timeout.ms": CLIENT_TIMEOUTS["request_timeout_ms"],
                "reconnect.backoff.max.ms": CLIENT_TIMEOUTS["reconnect_backoff_max_ms"],
                "error_cb": self._error,
                # librdkafka logs each refused connect at level 3 straight to stderr; the
                # writer's own lines (away, back, rebuilt) say what matters.
                "log_level": 2,
            }
        )

    def _error(self, err: Any) -> None:
        # Transport errors (broker down) are retried inside librdkafka and show up as a
        # stall; only a fatal error (the idempotent producer lost its id) needs a rebuild.
        if err.fatal() and self.failed is None:
            from confluent_kafka import KafkaException

            self.failed = KafkaException(err)

    def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int,
        sent: _Sent,
    ) -> bool:
        try:
            self.producer.produce(
                topic,
                value=value,
                key=key,
                # list is invariant: confluent's stub wants values typed str | bytes | None;
                # it only reads the pairs, and bytes is one of them.
                headers=headers,  # type: ignore[arg-type]
                timestamp=timestamp_ms,
                on_delivery=sent.delivered,
            )
        except BufferError:
            return False
        return True

    def poll(self) -> None:
        self.producer.poll(0)

    def close(self, timeout_s: float) -> None:
        try:
            if timeout_s <= 0:
                # What it holds is resent from the spool; nothing of it may go out later.
                self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(timeout_s)
        except Exception as exc:
            log.debug("closing the old producer: %r", exc)


CLIENTS: dict[str, Callable[[KafkaOutput], _Client]] = {
    "kafka-python": _KafkaPythonClient,
    "confluent": _ConfluentClient,
}


@dataclass(slots=True)
class KafkaWriterStats:
    """Counters of the writer (plain ints read by other threads; no lock)."""

    received: int = 0  # sink messages pulled from the pricing workers
    produced: int = 0  # records handed to the producer (resends included)
    acknowledged: int = 0  # records the broker acknowledged
    retried: int = 0  # records handed to the producer again after a failure
    failures: int = 0  # client failures that made the writer rebuild its producer
    producer_builds: int = 0
    topic_creates: int = 0  # times the writer created the topic (start-up, broker lost it)
    delivery_lag_ns: int = 0  # now - priced_ts_ns of the last acknowledged record
    away_episodes: int = 0  # times the broker was found away (no acks for STALL_S)


class _Generation:
    """One producer's life; callbacks of a dropped producer land on a dead generation."""

    __slots__ = ("acked", "client", "failed")

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.failed: BaseException | None = None
        self.acked = False  # has this producer had an acknowledgement yet


class _Sent:
    """One record handed to the producer. Its callbacks (on kafka-python's I/O thread, or
    in confluent's poll on the writer thread) only set attributes the writer reads."""

    __slots__ = ("done", "gen", "priced_ts_ns")

    def __init__(self, gen: _Generation, priced_ts_ns: int) -> None:
        self.gen = gen
        self.priced_ts_ns = priced_ts_ns
        self.done = False

    def ok(self, _metadata: Any) -> None:
        self.done = True

    def fail(self, exc: BaseException) -> None:
        if self.gen.failed is None:
            self.gen.failed = exc

    def delivered(self, err: Any, _msg: Any) -> None:
        """confluent-kafka's delivery report."""
        if err is None:
            self.done = True
        else:
            from confluent_kafka import KafkaException

            self.fail(KafkaException(err))


@dataclass(slots=True)
class _Result:
    """The connector's answer to one request."""

    topic_created: bool
    client: _Client | None
    error: BaseException | None


class _Connector(threading.Thread):
    """Blocking client work, off the writer thread: drop the old producer, ensure the
    topic, build a new producer."""

    def __init__(self, cfg: KafkaOutput) -> None:
        super().__init__(name="kafka-connect", daemon=True)
        self.cfg = cfg
        self.requests: queue.SimpleQueue[_Client | bool | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[_Result] = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            old = self.requests.get()  # the producer to drop, True for none, None: exit
            if old is None:
                return
            if isinstance(old, _Client):
                old.close(0)
            created = False
            client = None
            error: BaseException | None = None
            cfg = self.cfg
            try:
                # The topic first, and only with no producer of ours alive (see the module
                # docstring): a producer must never be what makes the broker create it.
                created = ensure_topic(
                    cfg.bootstrap_servers, cfg.topic, cfg.partitions, cfg.replication, 2.0
                )
                client = CLIENTS[cfg.client](cfg)
            except Exception as exc:
                error = exc
            self.results.put(_Result(created, client, error))

    def stop(self) -> None:
        self.requests.put(None)


class KafkaWriter(SpoolingWriter["KafkaOutput", KafkaWriterStats]):
    """Delivers the Prices PUSHed to `endpoint` to Kafka; see the module docstring. The loop,
    the spool and the stall watch are `SpoolingWriter`'s; this class holds the producer
    window: at most `cfg.in_flight_records` handed to the producer, acknowledged in FIFO
    order, all resent on a new producer after a failure or a stall.
    """

    max_drain = MAX_DRAIN

    def __init__(
        self,
        ctx: zmq.Context[Any],
        cfg: KafkaOutput,
        spool_dir: str | Path,
        spool_max_bytes: int,
        spool_memory_records: int = 10_000,
        endpoint: str = ENDPOINT,
        fsync_interval_s: float | None = None,
    ) -> None:
        super().__init__(
            "kafka",
            "kafka-writer",
            ctx,
            cfg,
            KafkaWriterStats(),
            KAFKA_STAGE,
            spool_dir,
            spool_max_bytes,
            spool_memory_records,
            endpoint,
            fsync_interval_s,
        )
        self._header = Codec("price.avsc").header
        # Set to a list to record every acknowledged record's delivery lag (benchmarks).
        self.lag_log: list[int] | None = None
        self._connector = _Connector(cfg)
        self._gen: _Generation | None = None
        self._inflight: deque[_Sent] = deque()
        self._building = False  # a build request is with the connector
        self._next_build = 0.0
        self._build_wait = BUILD_BACKOFF_S[0]
        kafka_log = logging.getLogger("kafka")
        if kafka_log.level == logging.NOTSET:
            # kafka-python logs every connect and metadata refresh at INFO; our own lines
            # say what matters (away, back, rebuilt, topic created).
            kafka_log.setLevel(logging.WARNING)

    def helpers(self) -> list[threading.Thread]:
        return [self._connector]

    def summary_line(self) -> str:
        c = self.counters()
        return (
            f"kafka: {c['received']} prices in, {c['acknowledged']} acknowledged, "
            f"{c['retried']} resent, {c['spooled']} spooled, {c['dropped']} dropped, "
            f"{c['pending']} left in the spool, lag {c['delivery_lag_ns'] / 1e6:.1f} ms"
        )

    def endpoint_info(self) -> dict[str, Any]:
        return {
            "bootstrap": self.cfg.bootstrap_servers,
            "topic": self.cfg.topic,
            "key": "instrument",
            "fingerprint": Codec("price.avsc").fingerprint.hex(),
        }

    # --- what differs from the other sinks ------------------------------------------------

    def _check(self) -> None:
        if self.cfg.client == "confluent":
            import confluent_kafka  # noqa: F401 (fail at start, not at the first build)

    def _start_helpers(self) -> None:
        self._connector.start()
        self._request_build(None)

    def _timeout_ms(self, spool: Spool, now: float) -> int:
        # Acks arrive on kafka-python's thread, not on a socket we can poll: wake often
        # while records are in flight, rarely when idle.
        return 5 if spool.in_flight else 50

    def _collect(self, spool: Spool, now: float) -> None:
        self._poll_connector(spool, now)
        if self._gen is not None:
            self._gen.client.poll()
        self._complete(spool, now)

    def _deliver(self, spool: Spool, now: float, stopping: bool) -> None:
        if self._gen is not None:
            self._pump(spool)
        elif not self._building and now >= self._next_build:
            self._request_build(None)

    def _pump(self, spool: Spool) -> None:
        """Hand the next records to the producer, up to the in-flight bound."""
        gen = self._gen
        assert gen is not None
        room = self.cfg.in_flight_records - spool.in_flight
        if room <= 0:
            return
        records = spool.take(min(room, 5_000))
        if not records:
            return
        send = gen.client.send
        topic = self.cfg.topic
        inflight = self._inflight
        header = self._header
        for i, record in enumerate(records):
            try:
                r = split_record(record, header)
            except ValueError as exc:
                # Passed its CRC, yet not a record this writer can send: set it aside and
                # acknowledge it in its turn, so it never blocks the queue (nor kills the
                # writer, which would meet it first again after every restart).
                spool.quarantine(record, f"kafka: {exc}")
                unusable = _Sent(gen, QUARANTINED)
                unusable.done = True
                inflight.append(unusable)
                continue
            sent = _Sent(gen, r.priced_ts_ns)
            try:
                accepted = send(
                    topic,
                    r.instrument,
                    r.payload,
                    headers_for(r.payload, r.epoch, r.seq),
                    r.priced_ts_ns // 1_000_000,
                    sent,
                )
            except Exception as exc:
                # Metadata unknown (topic lost) or a fatal producer: this and every later
                # record go out again from the spool on a new producer.
                self.stats.failures += 1
                self._drop(spool, f"kafka producer refused a record ({exc!r})")
                return
            if not accepted:  # the client's queue is full: the rest wait in the spool
                spool.untake(len(records) - i)
                return
            inflight.append(sent)
            self.stats.produced += 1

    def _complete(self, spool: Spool, now: float) -> None:
        """What counts as acknowledged: the broker's acks, applied in FIFO order (the
        oldest record handed over holds back the rest); on a client failure, rebuild and
        resend."""
        inflight = self._inflight
        n = 0
        last: _Sent | None = None
        now_ns = time.time_ns()
        lags = self.lag_log
        add = self.stages.add
        delivered = 0
        while inflight and inflight[0].done:
            sent = inflight.popleft()
            n += 1
            if sent.priced_ts_ns == QUARANTINED:
                continue  # a quarantined record: acknowledged in its turn, not delivered
            last = sent
            delivered += 1
            add(((now_ns - sent.priced_ts_ns) / 1000,))
            if lags is not None:
                lags.append(now_ns - sent.priced_ts_ns)
        if last is not None:
            # The spool first: a reader that sees the counters sees the records gone.
            self._acknowledged(spool, n, now)
            if self._gen is not None:
                self._gen.acked = True
            self.stats.acknowledged += delivered
            self.stats.delivery_lag_ns = now_ns - last.priced_ts_ns
        elif n:
            spool.ack(n)  # only set-aside records: no sign of life from the broker
        gen = self._gen
        if gen is not None:
            failed = gen.failed or gen.client.failed
            if failed is not None:
                self.stats.failures += 1
                self._drop(spool, f"kafka producer failed ({failed!r})")

    def _drop(self, spool: Spool, why: str) -> None:
        """Drop the producer, resend everything unacknowledged on a new one (built once
        the broker answers and the topic exists); spool to disk meanwhile."""
        gen = self._gen
        assert gen is not None
        resend = spool.rewind()
        self.stats.retried += resend
        self._inflight.clear()
        self._gen = None
        spool.set_away(True)
        held = self._log.allow("drop")
        if held is not None:
            log.warning(
                "%s; spooling to disk, and resending %d unacknowledged records on a new "
                "producer once the broker answers (%d such lines held back)",
                why,
                resend,
                held,
            )
        self._request_build(gen.client)

    def _stall_limit_s(self, spool: Spool) -> float | None:
        gen = self._gen
        if gen is None or not spool.in_flight:
            return None
        # A new producer gets longer for its first ack (FIRST_ACK_S).
        return STALL_S if gen.acked else FIRST_ACK_S

    def _stalled(self, spool: Spool, waited_s: float) -> None:
        self._drop(
            spool,
            f"kafka: no acknowledgement for {waited_s:.1f} s "
            f"with {spool.in_flight} records in flight",
        )

    def _request_build(self, old: _Client | None) -> None:
        self._building = True
        self._connector.requests.put(old if old is not None else True)

    def _poll_connector(self, spool: Spool, now: float) -> None:
        results = self._connector.results
        while True:
            try:
                result = results.get_nowait()
            except queue.Empty:
                return
            self._building = False
            if result.topic_created:
                self.stats.topic_creates += 1
                log.warning(
                    "kafka: created topic %s (%d partitions)", self.cfg.topic, self.cfg.partitions
                )
            if result.client is not None:
                self._gen = _Generation(result.client)
                self._build_wait = BUILD_BACKOFF_S[0]
                self._progress_at = now
                self.stats.producer_builds += 1
                log.info(
                    "kafka producer ready (%s, %s, topic %s, idempotence %s)",
                    self.cfg.client,
                    self.cfg.bootstrap_servers,
                    self.cfg.topic,
                    "on" if self.cfg.idempotence else "off",
                )
            elif result.error is not None:
                # The broker is away: keep spooling, try again later.
                spool.set_away(True)
                self._next_build = now + self._build_wait
                self._build_wait = min(self._build_wait * 2, BUILD_BACKOFF_S[1])
                held = self._log.allow("connect")
                if held is not None:
                    log.warning(
                        "kafka %s not reachable (%r); spooling (%d records, %d bytes)",
                        self.cfg.bootstrap_servers,
                        result.error,
                        spool.pending,
                        spool.stats.spool_bytes,
                    )

    def _stop_helpers(self, spool: Spool) -> None:
        gen = self._gen
        if gen is not None:
            # Nothing pending: a clean close. Else drop it; the spool keeps the rest.
            gen.client.close(2 if spool.pending == 0 else 0)
        self._connector.stop()
        self._connector.join(timeout=5)
