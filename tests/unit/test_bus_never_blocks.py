"""A venue thread never blocks on a pricing worker (issue 16): a full worker queue defers
the latest top per instrument, which goes out, in order, once there is room."""

from __future__ import annotations

import threading

import pytest
import zmq

from mmengine import bus
from mmengine.bus import BookTopRouter, decode_top, pricing_endpoint
from mmengine.model import BookTop

INSTRUMENTS = ["BTC-USDT", "ETH-USDT", "SOL-USDT"]


def top(instrument: str, seq: int) -> BookTop:
    return BookTop("v", instrument, "LIVE", seq, -1, 0, seq, [1.0], [1.0], [2.0], [1.0])


def test_a_wedged_worker_does_not_block_the_venue_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "PUSH_HWM", 10)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)  # a worker that stopped reading
    pull.setsockopt(zmq.RCVHWM, 10)
    pull.bind(pricing_endpoint(0))
    router = BookTopRouter(ctx, 1, {i: [i] for i in INSTRUMENTS}, books=None)
    last_sent: dict[str, int] = {}
    done = threading.Event()

    def venue_thread() -> None:
        for seq in range(1, 3001):
            instrument = INSTRUMENTS[seq % 3]
            router.send(top(instrument, seq))
            last_sent[instrument] = seq
        done.set()

    sender = threading.Thread(target=venue_thread, daemon=True)
    sender.start()
    try:
        assert done.wait(5), "the venue thread blocked on a full worker queue"
        assert router.deferred > 0 and router.waiting == 3  # the latest of each instrument
        received: list[BookTop] = []
        while pull.poll(100):
            received.append(decode_top(pull.recv()))
        # Room again: the next send delivers what waited first, then itself.
        router.send(top("BTC-USDT", 3001))
        last_sent["BTC-USDT"] = 3001
        while pull.poll(100):
            received.append(decode_top(pull.recv()))
        assert router.waiting == 0
        for instrument in INSTRUMENTS:
            seqs = [t.venue_seq for t in received if t.instrument == instrument]
            assert seqs == sorted(seqs), instrument  # per-instrument order holds
            assert seqs[-1] == last_sent[instrument], instrument  # the latest arrived
    finally:
        if not sender.is_alive():  # a blocked sender still owns its sockets: leave them
            router.close()
            pull.close(0)
            ctx.term()
