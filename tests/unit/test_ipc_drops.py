"""IPC PUB drops at the high-water mark are counted, exactly (issue 16): real IPC sockets,
one subscriber that reads and one that has stopped reading."""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from mmengine.bus import IpcPublisher


def test_drops_at_the_high_water_mark_are_counted_exactly(tmp_path: Path) -> None:
    ctx = zmq.Context()
    forwarder = IpcPublisher(ctx, "prices", "inproc://test.prices", f"ipc://{tmp_path}/p", hwm=50)
    forwarder.start()
    assert forwarder.ready.wait(5) and forwarder.error is None
    reader = ctx.socket(zmq.SUB)
    reader.setsockopt(zmq.RCVHWM, 1_000_000)
    reader.setsockopt(zmq.SUBSCRIBE, b"price.")
    reader.connect(forwarder.endpoint)
    stalled = ctx.socket(zmq.SUB)  # subscribes, then never reads
    stalled.setsockopt(zmq.RCVHWM, 50)
    stalled.setsockopt(zmq.SUBSCRIBE, b"price.")
    stalled.connect(forwarder.endpoint)
    pub = ctx.socket(zmq.PUB)  # what a pricing worker does
    pub.setsockopt(zmq.SNDHWM, 1_000_000)
    pub.connect("inproc://test.prices")
    try:
        deadline = time.monotonic() + 5
        while forwarder.stats.subscriptions < 1:  # both subscriptions reached the PUB
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        n = 20_000
        received = 0
        for i in range(n):
            pub.send_multipart((b"price.BTC-USDT", i.to_bytes(4, "big") + b"x" * 200))
            while reader.poll(0):
                reader.recv_multipart()
                received += 1
        deadline = time.monotonic() + 10
        while forwarder.stats.sent + forwarder.stats.dropped < n:
            assert time.monotonic() < deadline, forwarder.stats
            time.sleep(0.01)
        while reader.poll(200):
            reader.recv_multipart()
            received += 1
        stats = forwarder.stats
        assert stats.dropped > 0  # the stalled subscriber's queue filled
        assert received == stats.sent and stats.sent + stats.dropped == n  # exact
        got_by_stalled = 0
        while stalled.poll(200):
            stalled.recv_multipart()
            got_by_stalled += 1
        assert got_by_stalled == stats.sent
    finally:
        forwarder.stop()
        forwarder.join(5)
        for sock in (reader, stalled, pub):
            sock.close(0)
        ctx.term()
