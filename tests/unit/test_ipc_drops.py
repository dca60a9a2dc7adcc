"""IPC streams with a slow subscriber (issues 15 and 16): real IPC sockets, one subscriber
that reads and one that has stopped reading. The stalled one loses its own messages only,
and what it lost is counted on the engine's side (a lower bound: drop episodes) and seen
exactly on its side (gaps in seq)."""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from mmengine.bus import IpcPublisher

N = 20_000


def sub(ctx: zmq.Context, endpoint: str, rcvhwm: int) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.SUBSCRIBE, b"price.")
    sock.connect(endpoint)
    return sock


def seq_of(parts: list[bytes]) -> int:
    return int.from_bytes(parts[1][:4], "big")


def test_a_stalled_subscriber_loses_its_own_messages_only_and_they_are_counted(
    tmp_path: Path,
) -> None:
    ctx = zmq.Context()
    publisher = IpcPublisher(ctx, "prices", f"ipc://{tmp_path}/p", hwm=1000)
    publisher.bind()
    reader = sub(ctx, publisher.endpoint, 1_000_000)
    stalled = sub(ctx, publisher.endpoint, 100)  # subscribes, then stops reading
    try:
        # Both subscriptions in place: probes until each has one (a SUB's subscription
        # reaches the PUB a little after connect).
        deadline = time.monotonic() + 5
        while not (reader.poll(0) and stalled.poll(0)):
            assert time.monotonic() < deadline
            publisher.publish(b"price.PROBE", (2**32 - 1).to_bytes(4, "big"))
            time.sleep(0.01)
        for sock in (reader, stalled):
            while sock.poll(50):
                sock.recv_multipart()
        sent_before = publisher.stats.sent
        got: list[int] = []
        for i in range(N):
            publisher.publish(b"price.BTC-USDT", i.to_bytes(4, "big") + b"x" * 200)
            while reader.poll(0):
                got.append(seq_of(reader.recv_multipart()))
            if i % 500 == 499:  # the reader keeps up: never near its own high-water mark
                deadline = time.monotonic() + 5
                while len(got) < i + 1:
                    assert reader.poll(int((deadline - time.monotonic()) * 1000) + 1), len(got)
                    got.append(seq_of(reader.recv_multipart()))
        while len(got) < N and reader.poll(1000):
            got.append(seq_of(reader.recv_multipart()))
        # The reader got every message, in order, while the other subscriber was stalled.
        assert got == list(range(N))
        stats = publisher.stats
        assert stats.sent - sent_before == N
        # The stalled subscriber's queue filled: at least one drop episode was counted.
        assert stats.dropped >= 1
        # What it holds, read now: a prefix, then gaps. Each counted episode lost at least
        # one message for it, so the count is a lower bound of its loss.
        held = []
        while stalled.poll(200):
            held.append(seq_of(stalled.recv_multipart()))
        assert held and held == sorted(held)
        missed = N - len(held)
        assert missed >= stats.dropped, (missed, stats.dropped)
    finally:
        for sock in (reader, stalled):
            sock.close(0)
        publisher.close()
        ctx.term()


def test_publish_after_close_is_ignored(tmp_path: Path) -> None:
    """A producer that outlives the engine's stop must not touch a closed socket."""
    ctx = zmq.Context()
    publisher = IpcPublisher(ctx, "books", f"ipc://{tmp_path}/b")
    publisher.bind()
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o600
    publisher.close()
    publisher.publish(b"book.x", b"y")
    assert publisher.stats.sent == 0
    ctx.term()
