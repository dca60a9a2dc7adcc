"""Sink writers against faults on real services (issue 16): a spool record the Kafka writer
cannot send (tansu), and a batch blocked by another session's lock (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zmq

from mmengine.codec import Codec
from mmengine.config import KafkaOutput, PostgresOutput
from mmengine.sinks.kafka import KafkaWriter
from mmengine.sinks.postgres import PostgresWriter
from mmengine.sinks.spool import Spool, pack_frames, read_quarantine
from tests.conftest import wait_for
from tests.integration.kafka_support import (  # noqa: F401 (fixture)
    Broker,
    OfficialDecoder,
    broker,
    consume_all,
    sink_message,
    sink_parts,
)
from tests.integration.pg_support import (  # noqa: F401 (fixtures)
    PgServer,
    history,
    latest,
    pg,
    pg_factory,
    pg_root,
)

pytestmark = pytest.mark.integration

EPOCH = 1_790_000_000_000_000_000


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def test_kafka_writer_quarantines_a_record_it_cannot_send_and_goes_on(
    ctx: zmq.Context,
    broker: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    codec = Codec("price.avsc")
    good = [sink_message(codec, "BTC-USDT", EPOCH, seq) for seq in (1, 2, 3)]
    instrument, key, payload = sink_parts(codec, "BTC-USDT", EPOCH, 9)
    bad = [
        b"\x00\x00\x00\x05abc",  # passes its CRC, does not split into frames
        pack_frames([instrument, key[:5], payload]),  # a key of the wrong size
        pack_frames([instrument, key, b"\xc3\x01" + b"\x00" * 8 + payload[10:]]),  # schema
    ]
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, 1 << 20)
    spool.set_away(True)  # to disk, as a spool left by an earlier run
    for record in (good[0], bad[0], good[1], bad[1], bad[2], good[2]):
        spool.put(record)
    spool.close()
    broker.create_topic("prices")
    writer = KafkaWriter(
        ctx,
        KafkaOutput(bootstrap_servers=broker.bootstrap, topic="prices", drain_timeout_s=2),
        spool_dir,
        1 << 30,
        endpoint="inproc://sink.kafka.faults",
    )
    writer.start()
    try:
        assert writer.ready.wait(10) and writer.error is None
        wait_for(lambda: writer.stats.acknowledged == 3, 20, "the three good records")
        assert writer.is_alive()
        assert writer.counters()["quarantined"] == 3
    finally:
        writer.stop()
        writer.join(15)
    assert not writer.is_alive()
    decode = OfficialDecoder()
    records = consume_all(broker.bootstrap, "prices", expect=3)
    assert [decode(r.value)["seq"] for r in records] == [1, 2, 3]
    assert [data for _why, data in read_quarantine(spool_dir)] == bad
    # Acknowledged in their turn: nothing is left to meet again on the next start.
    again = Spool(spool_dir, 1 << 20)
    assert again.pending == 0
    again.close()


@pytest.mark.parametrize(
    ("timeouts", "message"),
    [
        ({"lock_timeout_ms": 300}, "lock timeout"),
        ({"statement_timeout_ms": 400, "lock_timeout_ms": 60_000}, "statement timeout"),
    ],
    ids=["lock_timeout", "statement_timeout"],
)
def test_postgres_batch_blocked_by_another_sessions_lock_is_abandoned_and_retried(
    ctx: zmq.Context,
    pg: PgServer,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    timeouts: dict[str, int],
    message: str,
) -> None:
    writer = PostgresWriter(
        ctx,
        PostgresOutput(
            dsn=pg.dsn,
            **timeouts,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            drain_timeout_s=2,
        ),
        tmp_path / "spool",
        1 << 30,
        endpoint="inproc://sink.postgres.faults",
    )
    writer.start()
    assert writer.ready.wait(5) and writer.error is None
    codec = Codec("price.avsc")
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(writer.endpoint)
    locker: Any = None
    try:
        push.send(sink_message(codec, "BTC-USDT", EPOCH, 1))
        wait_for(lambda: latest(pg).get("BTC-USDT") == (EPOCH, 1), 10, "the first row")
        # Another session holds the row lock price_latest's upsert needs.
        locker = psycopg.connect(pg.dsn)
        locker.execute("SELECT * FROM price_latest WHERE instrument = 'BTC-USDT' FOR UPDATE")
        push.send(sink_message(codec, "BTC-USDT", EPOCH, 2))
        wait_for(lambda: writer.stats.retries >= 2, 10, "the blocked batch to be retried")
        assert latest(pg)["BTC-USDT"] == (EPOCH, 1)
        assert any(
            f"canceling statement due to {message}" in r.getMessage() for r in caplog.records
        )
        locker.rollback()  # the lock goes: the retried batch commits
        wait_for(lambda: latest(pg).get("BTC-USDT") == (EPOCH, 2), 10, "the retried batch")
        assert history(pg) == [("BTC-USDT", EPOCH, 1), ("BTC-USDT", EPOCH, 2)]
        assert writer.is_alive()
    finally:
        if locker is not None:
            locker.close()
        push.close()
        writer.stop()
        writer.join(15)
    assert not writer.is_alive()
