"""The compiled fast path (`mmengine/_fastpath.pyx`), or its plain-Python reference when it
was not built (no thread of its own: resolved once at import).

Two things, both measured on the engine's busiest threads (README, Performance):

- `encode_price`: the Avro payload of a Price. The reference is
  `mmengine.codec.encode_price` (about 25 µs a Price); the compiled one writes the same
  bytes into one C buffer (about 2 µs). tests/unit/test_fastpath.py compares them on
  random Prices and decodes the compiled one's with the official avro package.
- `send`, `send2`, `recv`, `events` on a pyzmq socket's handle
  (`handle(sock)`): the calls of the inproc hops, the IPC publisher and the pricing
  workers' hand-over to the sink writers that never wait (ZMQ_DONTWAIT), made
  holding the GIL. pyzmq releases the GIL around every send and recv; with a dozen threads
  on two cores each release gives the GIL away and the caller waits to get it back (a
  futex wake, a context switch and a wait up to the switch interval, 5 ms), which was
  most of the venue threads' and pricing workers' CPU beyond their Python (issue 15). The
  reference makes the same calls through pyzmq.

- `recv_into_nowait`: a venue thread's socket read when bytes are waiting (under load,
  nearly always), holding the GIL; only an empty socket makes the thread wait, in a poll
  that lets go of it (`mmengine.venues.transport.FrameReader`). A Python socket read with a
  timeout lets go of the GIL twice, for its poll and for its recv.

A handle is the address of the libzmq socket: it must not be used after the socket is
closed (every caller closes its sockets only after its last call, or under the lock its
calls take, as `IpcPublisher` does).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import zmq

from mmengine import codec
from mmengine.model import Price

log = logging.getLogger("mmengine.fastpath")

POLLIN = int(zmq.POLLIN)  # plain ints: a pyzmq flag is an enum, and `&` on one runs Python
POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)


def handle(sock: zmq.Socket[Any]) -> int:
    """The address of `sock`'s libzmq socket, which the functions below take."""
    return int(sock.underlying)


# --- the reference: the same calls through pyzmq (it finds a socket by its handle) -----------

_by_handle: dict[int, zmq.Socket[Any]] = {}


def _sock(h: int) -> zmq.Socket[Any]:
    sock = _by_handle.get(h)
    if sock is None:
        sock = _by_handle[h] = zmq.Socket.shadow(h)
    return sock


def _send_or_retry(sock: zmq.Socket[Any], data: bytes, flags: int) -> bool:
    """A send that libzmq refused is tried again if ZMQ_EVENTS (which processes the
    socket's pending commands: a send does so at most about every millisecond) then says
    there is room: the credit of a queue the reader emptied may be waiting among them."""
    try:
        sock.send(data, flags)
    except zmq.Again:
        if not py_events(handle(sock)) & POLLOUT:
            return False
        try:
            sock.send(data, flags)
        except zmq.Again:
            return False
    return True


def py_send(h: int, data: bytes) -> bool:
    """Send one frame without waiting; False when the socket refused it (a full queue)."""
    return _send_or_retry(_sock(h), data, _NOBLOCK)


def py_send2(h: int, first: bytes, second: bytes) -> bool:
    """A two-frame message, as `py_send`; False when the first frame was refused."""
    sock = _sock(h)
    if not _send_or_retry(sock, first, _NOBLOCK | _SNDMORE):
        return False
    sock.send(second, _NOBLOCK)
    return True


def py_recv(h: int) -> bytes | None:
    """One frame without waiting; None when none is queued."""
    try:
        data: bytes = _sock(h).recv(_NOBLOCK)
    except zmq.Again:
        return None
    return data


def py_events(h: int) -> int:
    """ZMQ_EVENTS of the socket (POLLIN | POLLOUT) as a plain int."""
    return int(_sock(h).getsockopt(_EVENTS))


def py_recv_into_nowait(fd: int, buf: bytearray, start: int) -> int:
    """Read what the socket `fd` holds into `buf[start:]` without waiting: the bytes read,
    0 when the peer closed, -1 when nothing waits (the fd is non-blocking: a Python socket
    with a timeout is)."""
    if start < 0 or start >= len(buf):
        raise ValueError("no room in the buffer")
    try:
        return os.readv(fd, [memoryview(buf)[start:]])
    except BlockingIOError:
        return -1


# --- which one runs ---------------------------------------------------------------------------


def _compiled() -> Any | None:
    """The compiled module bound to pyzmq's libzmq, or None (with the reason logged)."""
    try:
        from mmengine import _fastpath
    except ImportError as exc:
        log.warning("the compiled fast path is not built (%s): plain Python instead", exc)
        return None
    if sys.byteorder != "little":  # it writes Avro's little-endian doubles as the host's
        return None
    try:
        from zmq.backend.cython import _zmq

        lib = ctypes.CDLL(_zmq.__file__)  # dlsym on it also searches the libzmq it loaded
        _fastpath.bind(
            {
                name: int(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0)
                for name in _fastpath.ZMQ_FUNCTIONS
            }
        )
    except (ImportError, OSError, AttributeError, ValueError) as exc:
        log.warning("libzmq's functions not found (%s): pyzmq's calls instead", exc)
        return None
    return _fastpath


_mod = _compiled()
COMPILED = _mod is not None

encode_price: Callable[[bytes, Price], bytes] = (
    _mod.encode_price if _mod is not None else codec.encode_price
)
send: Callable[[int, bytes], bool] = _mod.send if _mod is not None else py_send
send2: Callable[[int, bytes, bytes], bool] = _mod.send2 if _mod is not None else py_send2
recv: Callable[[int], bytes | None] = _mod.recv if _mod is not None else py_recv
events: Callable[[int], int] = _mod.events if _mod is not None else py_events
recv_into_nowait: Callable[[int, bytearray, int], int] = (
    _mod.recv_into_nowait if _mod is not None else py_recv_into_nowait
)
