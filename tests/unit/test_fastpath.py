"""The compiled fast path (`mmengine/_fastpath.pyx`) against its plain-Python reference
(`mmengine.fastpath`): the same Avro bytes for any Price, and the same answers from the
ZeroMQ calls made holding the GIL as from pyzmq's."""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any

import pytest
import zmq
from hypothesis import given, settings

from mmengine import fastpath
from mmengine.codec import Codec, encode_price
from mmengine.model import Price
from tests.unit.test_codec_and_bus import _expected_record, official_decode, prices_st

_fast = pytest.importorskip("mmengine._fastpath", reason="the compiled fast path is not built")

HEADER = Codec("price.avsc").header


def test_the_engine_uses_the_compiled_fast_path_when_it_is_built() -> None:
    assert fastpath.COMPILED
    assert fastpath.encode_price is _fast.encode_price
    assert fastpath.send2 is _fast.send2


@settings(max_examples=500)
@given(price=prices_st)
def test_compiled_price_encoder_writes_the_references_bytes(price: Price) -> None:
    assert _fast.encode_price(HEADER, price) == encode_price(HEADER, price)


@settings(max_examples=100)
@given(price=prices_st)
def test_the_official_decoder_reads_the_compiled_payload_as_the_price(price: Price) -> None:
    assert official_decode("price.avsc", _fast.encode_price(HEADER, price)) == _expected_record(
        price
    )


def test_a_payload_larger_than_the_first_buffer_is_whole() -> None:
    """The encoder starts with 1 KiB and grows: a long ladder and long names cross it."""
    price = Price(
        "X" * 3000,
        1,
        2,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        ["v" * 700] * 3,
        bids=[(float(i), 1.5) for i in range(300)],
        halt_reason="é" * 500,
    )
    assert _fast.encode_price(HEADER, price) == encode_price(HEADER, price)


def test_an_unencodable_value_raises_as_the_reference_does() -> None:
    for bad in ({"instrument": None}, {"seq": 1.5}, {"fair_value": "x"}, {"seq": 2**64}):
        price = Price("A-B", 1, 2, 1.0, 1.0, 1.0, 1.0, 1.0)
        for field, value in bad.items():
            setattr(price, field, value)
        with pytest.raises((TypeError, OverflowError)):
            _fast.encode_price(HEADER, price)


@pytest.fixture
def pair() -> Any:
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 2)
    push.setsockopt(zmq.LINGER, 0)
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 2)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind("inproc://fastpath-test")
    push.connect("inproc://fastpath-test")
    yield push, pull
    push.close()
    pull.close()
    ctx.term()


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_send_recv_and_events_answer_as_pyzmq_does(pair: Any, impl: str) -> None:
    push, pull = pair
    send, recv, events = (
        (_fast.send, _fast.recv, _fast.events)
        if impl == "compiled"
        else (fastpath.py_send, fastpath.py_recv, fastpath.py_events)
    )
    hp, hl = fastpath.handle(push), fastpath.handle(pull)
    assert recv(hl) is None
    assert events(hl) & fastpath.POLLIN == 0
    assert events(hp) & fastpath.POLLOUT
    sent = 0
    while send(hp, b"m%d" % sent):  # the queues fill: a refused send says so, no raise
        sent += 1
        assert sent < 100
    assert sent >= 2 and not events(hp) & fastpath.POLLOUT
    assert events(hl) & fastpath.POLLIN
    got = []
    while (m := recv(hl)) is not None:
        got.append(m)
    assert got == [b"m%d" % i for i in range(sent)]  # in order, none lost, none doubled
    assert pull.poll(0) == 0


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_send2_is_one_two_frame_message(impl: str) -> None:
    send2 = _fast.send2 if impl == "compiled" else fastpath.py_send2
    ctx: zmq.Context[Any] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"price.")
    pub.bind("inproc://fastpath-pub")
    sub.connect("inproc://fastpath-pub")
    time.sleep(0.05)  # the subscription reaches the PUB
    try:
        assert send2(fastpath.handle(pub), b"other.x", b"no")
        assert send2(fastpath.handle(pub), b"price.A", b"\x00payload")
        assert sub.poll(2000)
        assert sub.recv_multipart() == [b"price.A", b"\x00payload"]
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()


def test_a_held_send_does_not_let_go_of_the_gil() -> None:
    """The point of the compiled calls: while a thread makes them, another thread that
    waits for the GIL does not get it (pyzmq's send lets go of it at every call, and the
    waiting thread takes it now and then). The switch interval is made long, so that
    only a release hands the GIL over."""
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 0)  # no limit: every send is taken
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 0)
    pull.bind("inproc://fastpath-gil")
    push.connect("inproc://fastpath-gil")
    ran = [0]
    stop = threading.Event()

    def spinner() -> None:
        while not stop.is_set():
            ran[0] += 1
            time.sleep(0)  # lets go of the GIL, then waits for it again

    def handovers(send: Any, h: int) -> int:
        before = ran[0]
        for _ in range(20_000):
            send(h, b"x")
        return ran[0] - before

    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    t = threading.Thread(target=spinner, daemon=True)
    t.start()
    try:
        time.sleep(0.01)
        h = fastpath.handle(push)
        held = handovers(_fast.send, h)
        released = handovers(fastpath.py_send, h)
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        t.join()
        push.close(0)
        pull.close(0)
        ctx.term()
    assert held == 0
    assert released > 0  # the same sends through pyzmq: the spinner ran in between


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_recv_into_nowait_reads_what_waits_and_never_waits(impl: str) -> None:
    read = _fast.recv_into_nowait if impl == "compiled" else fastpath.py_recv_into_nowait
    a, b = socket.socketpair()
    b.settimeout(5.0)  # as a venue socket: non-blocking underneath
    buf = bytearray(16)
    try:
        t0 = time.monotonic()
        assert read(b.fileno(), buf, 0) == -1  # nothing waits: at once
        assert time.monotonic() - t0 < 1.0
        a.sendall(b"hello")
        time.sleep(0.05)
        assert read(b.fileno(), buf, 3) == 5
        assert bytes(buf[3:8]) == b"hello" and bytes(buf[:3]) == b"\0\0\0"
        a.sendall(b"x" * 40)  # more than the room left: the rest stays in the socket
        time.sleep(0.05)
        assert read(b.fileno(), buf, 10) == 6
        assert read(b.fileno(), buf, 0) == 16
        assert read(b.fileno(), buf, 0) == 16
        assert read(b.fileno(), buf, 0) == 2
        assert read(b.fileno(), buf, 0) == -1
        with pytest.raises(ValueError):
            read(b.fileno(), buf, 16)  # no room
        a.close()
        time.sleep(0.05)
        while (n := read(b.fileno(), buf, 0)) > 0:
            pass
        assert n == 0  # the peer closed
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_a_send_to_a_queue_the_reader_emptied_is_taken(pair: Any, impl: str) -> None:
    """libzmq processes a socket's commands on a send only about every millisecond, and
    the reader's credit for the room it made is one: without asking again, a send to a
    queue (high-water mark 2) emptied a moment ago was refused now and then."""
    push, pull = pair
    send, recv = (
        (_fast.send, _fast.recv) if impl == "compiled" else (fastpath.py_send, fastpath.py_recv)
    )
    hp, hl = fastpath.handle(push), fastpath.handle(pull)
    for i in range(3000):
        assert send(hp, b"%d" % i), f"message {i} refused"
        assert recv(hl) == b"%d" % i
