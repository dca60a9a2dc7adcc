"""A venue thread never blocks on a pricing worker (issue 16): a full worker queue defers
the latest top per instrument, which goes out, in order and as one batch, once there is
room. A flood therefore conflates at the source instead of queueing (issue 15). A venue
thread flushes once per socket read, so what one read's frames changed goes out together."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq

from mmengine import bus
from mmengine.bus import BookTopRouter, decode_tops, pricing_endpoint
from mmengine.model import BookTop

INSTRUMENTS = ["BTC-USDT", "ETH-USDT", "SOL-USDT"]


def top(instrument: str, seq: int) -> BookTop:
    return BookTop("v", instrument, "LIVE", seq, -1, 0, seq, [1.0], [1.0], [2.0], [1.0])


def received_batches(pull: zmq.Socket[bytes]) -> list[list[BookTop]]:
    batches = []
    while pull.poll(100):
        batches.append(decode_tops(pull.recv()))
    return batches


def test_a_wedged_worker_does_not_block_the_venue_thread() -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)  # a worker that stopped reading
    pull.setsockopt(zmq.RCVHWM, bus.PULL_HWM)
    pull.bind(pricing_endpoint(0))
    router = BookTopRouter(ctx, 1, {i: [i] for i in INSTRUMENTS}, books=None)
    last_sent: dict[str, int] = {}
    done = threading.Event()

    def venue_thread() -> None:
        for seq in range(1, 3001):  # one frame per socket read
            instrument = INSTRUMENTS[seq % 3]
            router.send(top(instrument, seq))
            router.flush()
            last_sent[instrument] = seq
        done.set()

    in_flight_before = set(bus._IN_FLIGHT)
    sender = threading.Thread(target=venue_thread, daemon=True)
    sender.start()
    try:
        assert done.wait(5), "the venue thread blocked on a full worker queue"
        assert router.waiting == 3  # the latest of each instrument
        # The queue holds a few messages at most: the rest conflated at the source.
        queued = received_batches(pull)
        assert 0 < len(queued) <= bus.PUSH_HWM + bus.PULL_HWM
        assert router.deferred == 3000 - len(queued)
        assert router.superseded == router.deferred - 3
        # Room again: flush() sends what waits, the latest of each, as one message.
        router.flush()
        assert router.waiting == 0 and router.batches == len(queued) + 1
        (batch,) = received_batches(pull)
        assert [t.venue_seq for t in batch] == sorted(last_sent.values())  # oldest first
        # A send behind nothing waiting goes out alone again.
        router.send(top("BTC-USDT", 3001))
        router.flush()
        assert [[t.venue_seq for t in b] for b in received_batches(pull)] == [[3001]]
        for instrument in INSTRUMENTS:
            seqs = [t.venue_seq for b in (*queued, batch) for t in b if t.instrument == instrument]
            assert seqs == sorted(seqs), instrument  # per-instrument order holds
            assert seqs[-1] == last_sent[instrument], instrument  # the latest arrived
        # Every batch sent was received, and none refused was left behind in flight.
        assert set(bus._IN_FLIGHT) == in_flight_before
    finally:
        if not sender.is_alive():  # a blocked sender still owns its sockets: leave them
            router.close()
            pull.close(0)
            ctx.term()


@pytest.fixture
def worker() -> Iterator[tuple[BookTopRouter, zmq.Socket[bytes]]]:
    """A venue thread's router and the PULL of the one worker it feeds (read by the test)."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, bus.PULL_HWM)
    pull.bind(pricing_endpoint(0))
    router = BookTopRouter(ctx, 1, {i: [i] for i in INSTRUMENTS}, books=None)
    yield router, pull
    router.close()
    pull.close(0)
    ctx.term()


def test_a_top_sent_while_others_wait_joins_their_batch_in_order(
    worker: tuple[BookTopRouter, zmq.Socket[bytes]],
) -> None:
    router, pull = worker
    seq = 0
    while router.waiting == 0:  # fill the queue until a top must wait
        seq += 1
        router.send(top(INSTRUMENTS[seq % 3], seq))
        router.flush()
    waiting_one = seq
    assert router.deferred == 1
    assert received_batches(pull)  # the worker reads: room again
    router.send(top(INSTRUMENTS[(seq + 1) % 3], seq + 1))
    router.flush()
    (batch,) = received_batches(pull)
    assert [t.venue_seq for t in batch] == [waiting_one, seq + 1]
    assert router.waiting == 0


def test_the_frames_of_one_read_go_out_as_one_batch_of_the_latest_per_book(
    worker: tuple[BookTopRouter, zmq.Socket[bytes]],
) -> None:
    router, pull = worker
    for seq, instrument in enumerate(["BTC-USDT", "ETH-USDT", "BTC-USDT", "SOL-USDT"], 1):
        router.send(top(instrument, seq))
    assert router.waiting == 3 and not pull.poll(50)  # nothing goes before the flush
    router.flush()
    (batch,) = received_batches(pull)
    assert [(t.instrument, t.venue_seq) for t in batch] == [
        ("ETH-USDT", 2),
        ("BTC-USDT", 3),
        ("SOL-USDT", 4),
    ]
    assert router.superseded == 1 and router.deferred == 0 and router.waiting == 0


def test_tops_cross_by_reference_and_a_key_is_read_once(
    worker: tuple[BookTopRouter, zmq.Socket[bytes]],
) -> None:
    router, pull = worker
    sent = top("BTC-USDT", 1)
    router.send(sent)
    router.flush()
    assert pull.poll(1000)
    payload = pull.recv()
    assert len(payload) == 9 and payload[0] == 0  # a key, not the pickled batch
    ((got, applied_ns),) = bus.decode_envelope(payload)
    assert got is sent and applied_ns > 0
    with pytest.raises(KeyError):
        bus.decode_envelope(payload)
