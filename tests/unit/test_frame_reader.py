"""FrameReader: server frames built by websocket-client's own ABNF encoder (the reference),
read back over a real socket pair, whole and split at every byte boundary."""

from __future__ import annotations

import random
import socket
import threading

import pytest
import websocket
from websocket import ABNF

from mmengine.venues.transport import RECV_BYTES, FrameReader


def frame(opcode: int, data: bytes, fin: bool = True) -> bytes:
    """A server frame (unmasked), as websocket-client encodes it."""
    return ABNF(int(fin), 0, 0, 0, opcode, 0, data).format()


def read_all(chunks: list[bytes], count: int) -> tuple[list[tuple[int, bytes]], list[bytes]]:
    """Send `chunks` one by one through a socket pair; read `count` messages back."""
    a, b = socket.socketpair()
    b.settimeout(2.0)
    pongs: list[bytes] = []

    def send() -> None:
        for chunk in chunks:
            a.sendall(chunk)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        reader = FrameReader(b, pongs.append)
        out = [reader.next() for _ in range(count)]
    finally:
        sender.join()
        a.close()
        b.close()
    return out, pongs


def test_messages_of_every_length_class_come_back_whole() -> None:
    rng = random.Random(7)
    sizes = [0, 1, 125, 126, 127, 65_535, 65_536, 300_000, RECV_BYTES + 1]
    payloads = [bytes(rng.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1) for n in sizes]
    payloads = [p[:n] for p, n in zip(payloads, sizes, strict=True)]
    stream = b"".join(frame(ABNF.OPCODE_TEXT, p) for p in payloads)
    out, _ = read_all([stream], len(payloads))
    assert out == [(ABNF.OPCODE_TEXT, p) for p in payloads]


def test_frames_split_at_every_byte_boundary() -> None:
    stream = (
        frame(ABNF.OPCODE_TEXT, b'{"a":1}')
        + frame(ABNF.OPCODE_BINARY, b"x" * 300)
        + frame(ABNF.OPCODE_TEXT, "é€".encode())
    )
    for cut in range(1, len(stream)):
        out, _ = read_all([stream[:cut], stream[cut:]], 3)
        assert [p for _, p in out] == [b'{"a":1}', b"x" * 300, "é€".encode()], cut


def test_one_byte_at_a_time() -> None:
    stream = frame(ABNF.OPCODE_TEXT, b"a" * 200) + frame(ABNF.OPCODE_TEXT, b"b")
    out, _ = read_all([bytes([c]) for c in stream], 2)
    assert out == [(ABNF.OPCODE_TEXT, b"a" * 200), (ABNF.OPCODE_TEXT, b"b")]


def test_fragments_are_joined_and_a_ping_between_them_is_answered() -> None:
    stream = (
        frame(ABNF.OPCODE_TEXT, b"one ", fin=False)
        + frame(ABNF.OPCODE_PING, b"are you there")
        + frame(ABNF.OPCODE_CONT, b"two ", fin=False)
        + frame(ABNF.OPCODE_CONT, b"three")
        + frame(ABNF.OPCODE_PONG, b"")
        + frame(ABNF.OPCODE_CLOSE, b"\x03\xe8bye")
    )
    out, pongs = read_all([stream], 4)
    assert out == [
        (ABNF.OPCODE_PING, b"are you there"),
        (ABNF.OPCODE_TEXT, b"one two three"),
        (ABNF.OPCODE_PONG, b""),
        (ABNF.OPCODE_CLOSE, b"\x03\xe8bye"),
    ]
    assert pongs == [b"are you there"]


def test_a_timeout_returns_no_frame_and_keeps_a_partial_one() -> None:
    a, b = socket.socketpair()
    b.settimeout(0.05)
    try:
        reader = FrameReader(b, lambda _: None)
        whole = frame(ABNF.OPCODE_TEXT, b"later")
        a.sendall(whole[:3])
        assert reader.next() == (0, b"")
        a.sendall(whole[3:])
        assert reader.next() == (ABNF.OPCODE_TEXT, b"later")
    finally:
        a.close()
        b.close()


def test_the_peer_closing_the_socket_is_a_closed_connection() -> None:
    a, b = socket.socketpair()
    b.settimeout(1.0)
    reader = FrameReader(b, lambda _: None)
    a.sendall(frame(ABNF.OPCODE_TEXT, b"last")[:4])
    a.close()
    try:
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            reader.next()
    finally:
        b.close()


@pytest.mark.parametrize(
    "bad",
    [
        ABNF(1, 0, 0, 0, ABNF.OPCODE_TEXT, 1, b"masked").format(),  # a server must not mask
        ABNF(1, 1, 0, 0, ABNF.OPCODE_TEXT, 0, b"rsv1").format(),  # no extension negotiated
        frame(ABNF.OPCODE_CONT, b"orphan"),
        frame(ABNF.OPCODE_PING, b"p" * 126),
        bytes([0x83, 3]) + b"abc",  # a reserved opcode
        frame(ABNF.OPCODE_TEXT, b"a", fin=False) + frame(ABNF.OPCODE_TEXT, b"b"),
    ],
    # Named, not shown: the masked frame's key is random, and pytest-xdist's workers must
    # collect the same test ids.
    ids=["masked", "rsv1", "orphan-continuation", "long-ping", "reserved-opcode", "unfinished"],
)
def test_protocol_violations_are_refused(bad: bytes) -> None:
    a, b = socket.socketpair()
    b.settimeout(1.0)
    try:
        a.sendall(bad)
        with pytest.raises(websocket.WebSocketProtocolException):
            FrameReader(b, lambda _: None).next()
    finally:
        a.close()
        b.close()


def test_buffered_says_whether_a_whole_frame_waits_without_reading() -> None:
    """The venue thread sends its BookTops when `buffered()` is False: a wrong True would
    hold them until more data came, a wrong False would split a burst into more sends."""
    sizes = (5, 200, 70_000)  # the 7-bit, 16-bit and 64-bit length forms
    frames = [frame(ABNF.OPCODE_TEXT, b"x" * n) for n in sizes]
    ends = [sum(len(f) for f in frames[: i + 1]) for i in range(len(frames))]
    stream = b"".join(frames)
    a, b = socket.socketpair()
    b.settimeout(2.0)
    try:
        reader = FrameReader(b, lambda _: None)
        assert not reader.buffered()
        got = 0  # frames taken with next()
        cuts = sorted({*range(1, 12), *(e + d for e in ends for d in (-1, 0, 1, 3))})
        sent = 0
        for cut in (c for c in cuts if c <= len(stream)):
            a.sendall(stream[sent:cut])
            sent = cut
            reader._fill()  # what arrived, read as next() would read it
            while True:
                whole = got < len(frames) and ends[got] <= sent
                assert reader.buffered() == whole, (cut, got)
                if not whole:
                    break
                assert reader.next() == (ABNF.OPCODE_TEXT, b"x" * sizes[got])
                got += 1
        assert got == len(frames)
    finally:
        a.close()
        b.close()
