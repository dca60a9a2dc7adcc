"""Reading the Prices topic back (main thread of `mmengine kafka-tail`): consume, decode,
deduplicate on (instrument, epoch, seq), and report gaps in `seq` per (instrument, epoch).

The writer delivers at least once, so a record can appear twice (a resend after a broker
restart or an engine restart); `(instrument, epoch, seq)` is the idempotency key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mmengine.codec import Codec

log = logging.getLogger("mmengine.kafka_tail")

MAX_MISSING = 100_000  # remembered missing seqs per (instrument, epoch); beyond: counted only


@dataclass(slots=True)
class _Stream:
    last: int
    missing: set[int] = field(default_factory=set)


@dataclass(slots=True)
class SeqTracker:
    """Verdict per record: "new", "late" (fills an earlier gap) or "duplicate".

    Memory per (instrument, epoch) is the last seq plus the seqs still missing, so it stays
    small however long the tail runs.
    """

    streams: dict[tuple[str, int], _Stream] = field(default_factory=dict)
    new: int = 0
    duplicates: int = 0
    late: int = 0
    gaps: int = 0
    missing: int = 0  # seqs skipped by gaps and not (yet) filled

    def see(
        self, instrument: str, epoch: int, seq: int, on_gap: Callable[[str], None] | None = None
    ) -> str:
        key = (instrument, epoch)
        stream = self.streams.get(key)
        if stream is None:  # the first we see of it: we may have started mid-stream
            self.streams[key] = _Stream(seq)
            self.new += 1
            return "new"
        if seq == stream.last + 1:
            stream.last = seq
            self.new += 1
            return "new"
        if seq > stream.last:
            first, last = stream.last + 1, seq - 1
            n = last - first + 1
            self.gaps += 1
            self.missing += n
            room = MAX_MISSING - len(stream.missing)
            if room > 0:
                stream.missing.update(range(first, first + min(n, room)))
            if on_gap is not None:
                span = f"{first}" if n == 1 else f"{first}..{last}"
                on_gap(f"gap in {instrument} epoch {epoch}: seq {span} missing ({n})")
            stream.last = seq
            self.new += 1
            return "new"
        if seq in stream.missing:
            stream.missing.discard(seq)
            self.missing -= 1
            self.late += 1
            return "late"
        self.duplicates += 1
        return "duplicate"

    def summary(self) -> str:
        """What the tail saw, as one sentence."""
        return (
            f"{self.new + self.late:,} prices, {self.duplicates:,} duplicates dropped, "
            f"{self.gaps:,} gaps ({self.missing:,} seqs missing), {self.late:,} late"
        )


class CloseRaceFilter(logging.Filter):
    """Drops the two errors kafka-python 3.0.12 can log while a consumer closes.

    `KafkaConsumer.close()` closes the broker connections from the calling thread while
    the client's IO thread still runs; a task of that thread may then register the closed
    socket with its selector, which raises `ValueError: Invalid file descriptor: -1` (its
    unregister path catches that, its register path does not) and logs it with a traceback
    as "Unhandled exception in task"; and a metadata request in flight is cancelled, which
    `kafka.cluster` logs as "Metadata refresh: failed Cancelled" (seen once on a loaded
    machine). The consumer is closing and nothing is lost. The filter lets everything else
    through, and these errors too before `closing` is set.
    """

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.closing:
            return True
        if record.name == "kafka.cluster":
            return "Cancelled" not in record.getMessage()
        if not record.exc_info:
            return True
        exc = record.exc_info[1]
        return not (isinstance(exc, ValueError) and "Invalid file descriptor" in str(exc))


def tail(
    bootstrap: str,
    topic: str,
    from_beginning: bool = False,
    group: str | None = None,
    timeout_s: float | None = None,
    tracker: SeqTracker | None = None,
    on_gap: Callable[[str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Decoded Prices from `topic`, duplicates removed, until `timeout_s` passes with nothing
    new (forever when None). Without `group`, every partition is assigned directly (no group
    join, nothing committed); with it, the consumer joins the group and commits."""
    from kafka import KafkaConsumer, TopicPartition

    tracker = tracker if tracker is not None else SeqTracker()
    codec = Codec("price.avsc")
    close_race = CloseRaceFilter()
    close_logs = [logging.getLogger(name) for name in ("kafka.net.selector", "kafka.cluster")]
    for close_log in close_logs:
        close_log.addFilter(close_race)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        client_id="mmengine-kafka-tail",
        group_id=group,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=group is not None,
        allow_auto_create_topics=False,  # never let a reader create the topic
        # Group joins take about half the session timeout on tansu; keep it short.
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    try:
        if group is None:
            partitions = _wait_for_partitions(consumer, topic, timeout_s)
            assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            if from_beginning:
                consumer.seek_to_beginning(*assigned)
            else:
                # tansu's end offsets can point inside the last batch: a few already
                # written records may show first.
                consumer.seek_to_end(*assigned)
        else:
            consumer.subscribe([topic])
        started = last_new = time.monotonic()
        joined = group is None
        while timeout_s is None or time.monotonic() - last_new < timeout_s:
            batch = consumer.poll(timeout_ms=200)
            if not joined:
                # The group join takes about half the session timeout: idle time counts
                # from the assignment on.
                joined = bool(consumer.assignment())
                if time.monotonic() - started < 30:
                    last_new = time.monotonic()
            for records in batch.values():
                for r in records:
                    last_new = time.monotonic()
                    try:
                        price = codec.decode(r.value)
                    except ValueError as exc:
                        log.warning("skipping %s[%d]@%d: %s", topic, r.partition, r.offset, exc)
                        continue
                    verdict = tracker.see(price["instrument"], price["epoch"], price["seq"], on_gap)
                    if verdict != "duplicate":
                        yield price
    finally:
        close_race.closing = True
        try:
            consumer.close()
        finally:
            # The IO thread has stopped once close() returns.
            for close_log in close_logs:
                close_log.removeFilter(close_race)


def _wait_for_partitions(consumer: Any, topic: str, timeout_s: float | None) -> set[int]:
    """The topic's partitions, waiting for the writer to create it if need be (a miss in
    the metadata cache makes kafka-python fetch the cluster's metadata again)."""
    deadline = time.monotonic() + (timeout_s if timeout_s is not None else 3600 * 24 * 365)
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic!r} does not exist on the cluster")
        time.sleep(0.5)
