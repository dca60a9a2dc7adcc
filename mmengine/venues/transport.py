"""The shared WebSocket connection: one thread per venue connection (the venue thread).

It owns the socket and the connection's book driver (`mmengine.book.sync.BookDriver`, around
the venue's protocol object). It reconnects with capped exponential backoff and jitter,
answers server pings, sends the venue's application-level keepalive, reconnects after
`silence_timeout_s` without any frame, and runs the driver's timers. Frames are read by
`FrameReader`, straight off the socket, many per `recv` (websocket-client opens, writes to
and closes the connection). REST snapshots are fetched by a small second thread of the
connection (`RestFetcher`), so a slow snapshot never stops the socket being read. It knows
no venue by name: everything venue-specific comes through the `VenueProtocol` seam.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import select
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

import websocket

from mmengine.book.sync import BookDriver
from mmengine.errors import TransportError
from mmengine.fastpath import recv_into_nowait
from mmengine.model import BookTop
from mmengine.venues.base import VenueProtocol, VenueSpec

log = logging.getLogger("mmengine.transport")

TICK_S = 0.25
# While BookTops wait for a full pricing queue, the socket is read with this timeout, so
# that they go out soon after the worker makes room even if the venue falls quiet.
HOLD_RETRY_S = 0.001
RECV_BYTES = 256 * 1024  # one recv takes every frame waiting, up to this
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class FrameReader:
    """Reads a WebSocket's messages (server frames, RFC 6455 section 5) off its socket.

    websocket-client reads each frame with three or more `recv` calls (header, length,
    payload) and builds an object per frame: about 17 µs of GIL-holding Python per frame,
    which capped a venue thread near 20,000 frames/s. This reads whatever the socket holds
    in one `recv_into` and cuts the frames out of it (a few µs per frame): under load one
    system call serves many frames. It reads into one buffer of its own, allocated once: a
    `recv(256 KiB)` per call would allocate that much and shrink it to what came, which
    fragments the heap (the engine's RSS grew a third in ten minutes). A ping is answered
    (`pong`) and returned, so that it counts as traffic; fragments are joined; a frame
    larger than the buffer is read into a buffer of its size. A masked server frame or
    reserved bits (no extension is negotiated) break the protocol:
    `websocket.WebSocketProtocolException`.
    """

    def __init__(self, sock: Any, pong: Callable[[bytes], None]) -> None:
        self._sock = sock
        self._pong = pong
        self._buf = bytearray(RECV_BYTES)
        self._view = memoryview(self._buf)
        self._pos = 0  # the next unread byte
        self._end = 0  # one past the last byte read
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        # A plain TCP socket (not TLS: its bytes must go through the SSL object) is read
        # holding the GIL while bytes wait, and waited on in a poll that lets go of it once
        # (`mmengine.fastpath`); a Python socket read with a timeout lets go twice.
        self._fd = sock.fileno() if type(sock) is socket.socket else -1
        self._poll: select.poll | None = None
        if self._fd >= 0:
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)

    def next(self) -> tuple[int, bytes]:
        """The next message or control frame as (opcode, payload); (0, b"") when the
        socket's timeout passed with no complete frame."""
        while True:
            frame = self._frame()
            if frame is None:
                if not self._fill():
                    return 0, b""
                continue
            fin, opcode, payload = frame
            if opcode in (OP_TEXT, OP_BINARY):
                if fin and not self._fragments:
                    return opcode, payload
                if self._fragments:
                    raise websocket.WebSocketProtocolException(
                        "a new message inside a fragmented one"
                    )
                self._fragment_opcode = opcode
                self._fragments.append(payload)
            elif opcode == OP_CONT:
                if not self._fragments:
                    raise websocket.WebSocketProtocolException(
                        "a continuation frame with no message"
                    )
                self._fragments.append(payload)
                if fin:
                    whole = b"".join(self._fragments)
                    self._fragments = []
                    return self._fragment_opcode, whole
            elif opcode == OP_PING:
                self._pong(payload)
                return opcode, payload
            elif opcode in (OP_CLOSE, OP_PONG):
                return opcode, payload
            else:
                raise websocket.WebSocketProtocolException(f"unknown opcode {opcode}")

    def buffered(self) -> bool:
        """Whether a whole frame is in the buffer (the next `next()` need not read)."""
        size = self._header(self._pos, self._end - self._pos)
        return size is not None and size[0] + size[1] <= self._end - self._pos

    def _header(self, pos: int, avail: int) -> tuple[int, int] | None:
        """(header bytes, payload length) of the frame at `pos`; None while its header is
        not all in the buffer."""
        if avail < 2:
            return None
        length = self._buf[pos + 1] & 0x7F  # unmasked: the 7-bit length
        if length < 126:
            return 2, length
        head = 4 if length == 126 else 10
        if avail < head:
            return None
        return head, int.from_bytes(self._buf[pos + 2 : pos + head], "big")

    def _frame(self) -> tuple[bool, int, bytes] | None:
        """Cut one frame out of the buffer (reading the rest of a large one); None when the
        buffer holds no complete header or frame."""
        buf = self._buf
        pos = self._pos
        end = self._end
        avail = end - pos
        if avail < 2:
            return None
        b0 = buf[pos]
        if b0 & 0x70 or buf[pos + 1] & 0x80:
            raise websocket.WebSocketProtocolException(
                "a server frame with reserved bits or a mask"
            )
        opcode = b0 & 0x0F
        size = self._header(pos, avail)
        if size is None:
            return None
        head, length = size
        if opcode & 0x8 and (length > 125 or not b0 & 0x80):
            raise websocket.WebSocketProtocolException("a control frame too long or fragmented")
        stop = pos + head + length
        if stop <= end:
            self._pos = stop
            return bool(b0 & 0x80), opcode, bytes(self._view[pos + head : stop])
        if head + length <= RECV_BYTES:
            return None  # the buffer can hold it: the next reads complete it
        # Larger than the buffer: read the rest straight into a buffer of its size.
        payload = bytearray(length)
        view = memoryview(payload)
        have = end - pos - head
        view[:have] = self._view[pos + head : end]
        self._pos = self._end = 0
        while have < length:
            n = self._sock.recv_into(view[have:], min(length - have, 1 << 20))
            if not n:
                raise websocket.WebSocketConnectionClosedException("closed inside a frame")
            have += n
        return bool(b0 & 0x80), opcode, bytes(payload)

    def _fill(self) -> bool:
        """One read into the free end of the buffer (what is unread first moved to its
        start); False on the socket's timeout."""
        pos = self._pos
        if pos:
            rest = self._end - pos
            if rest:
                self._view[:rest] = self._view[pos : self._end]
            self._pos = 0
            self._end = rest
        if self._poll is not None:
            n = recv_into_nowait(self._fd, self._buf, self._end)
            if n < 0:
                timeout = self._sock.gettimeout()
                if not self._poll.poll(None if timeout is None else math.ceil(timeout * 1000)):
                    return False
                n = recv_into_nowait(self._fd, self._buf, self._end)
                if n < 0:
                    return False  # woken with nothing to read: as a timeout
        else:
            try:
                n = self._sock.recv_into(self._view[self._end :])
            except TimeoutError:
                return False
        if not n:
            raise websocket.WebSocketConnectionClosedException("the venue closed the socket")
        self._end += n
        return True


class TopPublisher(Protocol):
    """Where a venue thread sends BookTops; created inside the venue thread (it owns sockets).

    `send` queues a top (`waiting` of them); `flush()` delivers what it can without
    blocking. The venue thread flushes whenever it has no complete frame left to read, so
    the frames of one socket read go out together.
    """

    waiting: int

    def send(self, top: BookTop) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Recorder(Protocol):
    """Optional tap on everything a connection sends and receives (`mmengine record`)."""

    def connect(self, conn: str, url: str) -> None: ...

    def sent(self, conn: str, text: str) -> None: ...

    def received(self, conn: str, text: str, recv_ns: int) -> None: ...

    def http(self, conn: str, url: str, body: str) -> None: ...


class Backoff:
    """Capped exponential backoff with equal jitter: waits in [d/2, d], d doubling to `cap_s`."""

    def __init__(self, base_s: float = 0.25, cap_s: float = 30.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0

    def next_delay(self) -> float:
        d: float = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt += 1
        return d / 2 + random.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempt = 0


class RestFetcher:
    """GETs for one venue connection on a thread of their own (`venue-<name>-rest`), so that
    a slow REST snapshot (10 s timeout) never stops the venue thread reading its socket.
    Answers come back through a queue the venue thread polls; it still owns every book."""

    def __init__(
        self,
        name: str,
        recorder: Recorder | None,
        timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._tls = tls  # None: the system's trust store
        self._recorder = recorder
        self._requests: queue.SimpleQueue[tuple[Any, str] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[Any, str | None, str, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def fetch(self, key: Any, url: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-rest", daemon=True)
            self._thread.start()
        self._requests.put((key, url))

    def fetched(self) -> list[tuple[Any, str | None, str, int]]:
        """Finished fetches: (key, body or None, error, when the answer was received)."""
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def stop(self, timeout_s: float = 1.0) -> None:
        """Ask the thread to end; a fetch still in flight is abandoned (daemon thread)."""
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s: a REST fetch is still in flight at stop", self.name)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            key, url = item
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s, context=self._tls) as resp:
                    body: str = resp.read().decode()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self._results.put((key, None, f"GET {url}: {exc}", time.time_ns()))
                continue
            got_ns = time.time_ns()
            if self._recorder is not None:
                self._recorder.http(self.name, url, body)
            self._results.put((key, body, "", got_ns))


class _Reconnect(Exception):
    """Raised inside the read loop when the venue or a timer asks for a new connection."""


class VenueConnection(threading.Thread):
    """Runs one venue connection until `stop()`; implements the venue's `Session`."""

    def __init__(
        self,
        spec: VenueSpec,
        venue_cls: type[VenueProtocol],
        make_publisher: Callable[[], TopPublisher],
        reconnect_cap_s: float = 30.0,
        recorder: Recorder | None = None,
    ) -> None:
        super().__init__(name=f"venue-{spec.name}", daemon=True)
        self.spec = spec
        # TLS trust: the venue's own CA file (a private venue, the TLS simulator), else the
        # system's store. Server name (SNI) and certificate checks are always on.
        self._sslopt = {"ca_certs": spec.ca_file} if spec.ca_file else None
        https = ssl.create_default_context(cafile=spec.ca_file) if spec.ca_file else None
        self._rest = RestFetcher(self.name, recorder, tls=https)
        self.venue = BookDriver(venue_cls(spec), self)
        self._make_publisher = make_publisher
        self._publisher: TopPublisher | None = None
        self._stop_event = threading.Event()
        self._ws: websocket.WebSocket | None = None
        self._backoff = Backoff(cap_s=reconnect_cap_s)
        self._reconnect_reason: str | None = None
        self._recorder = recorder
        self.connects = 0

    @property
    def connected(self) -> bool:
        """Whether a WebSocket is open right now (read by the status thread)."""
        return self._ws is not None

    # --- Session -------------------------------------------------------------------------

    def send(self, text: str) -> None:
        if self._ws is None:
            raise TransportError("not connected")
        if self._recorder is not None:
            self._recorder.sent(self.name, text)
        self._ws.send(text)

    def fetch(self, key: Any, url: str) -> None:
        self._rest.fetch(key, url)

    def fetched(self) -> list[tuple[Any, str | None, str, int]]:
        return self._rest.fetched()

    def publish(self, top: BookTop) -> None:
        if self._publisher is not None:
            self._publisher.send(top)

    def reconnect(self, reason: str) -> None:
        self._reconnect_reason = reason

    # --- thread --------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        self._publisher = self._make_publisher()
        try:
            while not self._stop_event.is_set():
                self._run_one_connection()
                if self._stop_event.is_set():
                    break
                delay = self._backoff.next_delay()
                # Every attempt counts, whether or not it connects: a venue that never
                # answers must not report 0 reconnects.
                self.venue.venue_stats.reconnects += 1
                log.info("%s reconnecting in %.2fs", self.spec.name, delay)
                self._pause(delay)
        finally:
            self.venue.on_disconnected()
            self._publisher.flush()  # the books' last state, if the queues have room
            self._rest.stop()
            self._publisher.close()

    def _pause(self, delay_s: float) -> None:
        """Wait `delay_s` (or until stop), delivering the BookTops that wait for a full
        pricing queue meanwhile (a lost connection's books, marked stale)."""
        deadline = time.monotonic() + delay_s
        publisher = self._publisher
        while publisher is not None and publisher.waiting:
            publisher.flush()
            if self._stop_event.wait(HOLD_RETRY_S) or time.monotonic() >= deadline:
                return
        self._stop_event.wait(max(0.0, deadline - time.monotonic()))

    def _run_one_connection(self) -> None:
        venue = self.venue
        url = venue.connect_url()
        try:
            ws = websocket.create_connection(
                url,
                timeout=10,
                skip_utf8_validation=True,  # str decoding already rejects bad UTF-8
                enable_multithread=False,
                sslopt=self._sslopt,
            )
        except ssl.SSLCertVerificationError as exc:
            log.warning(
                "%s connect to %s refused: the venue's TLS certificate did not verify (%s); "
                "trusted CAs: %s",
                self.spec.name,
                url.split("?")[0],
                exc.verify_message,
                self.spec.ca_file or "the system store (set ca_file to trust another CA)",
            )
            return
        except (websocket.WebSocketException, OSError) as exc:
            log.warning("%s connect to %s failed: %s", self.spec.name, url, exc)
            return
        self._ws = ws
        self.connects += 1
        if self._recorder is not None:
            self._recorder.connect(self.name, url)
        log.info("%s connected to %s", self.spec.name, url.split("?")[0])
        self._reconnect_reason = None
        try:
            ws.settimeout(TICK_S)
            venue.on_connected()
            for frame in venue.subscribe_frames():
                self.send(frame)
            self._read_loop(ws)
        except _Reconnect as exc:
            log.warning("%s reconnect: %s", self.spec.name, exc)
        except (websocket.WebSocketException, OSError) as exc:
            log.warning("%s connection lost: %s", self.spec.name, exc)
        except Exception:
            log.exception("%s internal error; reconnecting", self.spec.name)
        finally:
            self._ws = None
            with contextlib.suppress(websocket.WebSocketException, OSError):
                ws.close(timeout=1)
            # What the last frames made of the books goes to pricing before the books are
            # marked disconnected, as it went to the `books` stream: not superseded by it.
            if self._publisher is not None:
                self._publisher.flush()
            venue.on_disconnected()

    def _read_loop(self, ws: websocket.WebSocket) -> None:
        venue = self.venue
        recorder = self._recorder
        keepalive_s = venue.keepalive_interval_s
        silence_ns = int(venue.silence_timeout_s * 1e9)
        last_frame_ns = time.time_ns()
        next_keepalive = time.monotonic() + keepalive_s if keepalive_s else float("inf")
        next_tick = time.monotonic() + TICK_S
        live_since: float | None = None
        sock = ws.sock
        publisher = self._publisher
        assert sock is not None and publisher is not None  # connected; made by run()
        reader = FrameReader(sock, ws.pong)
        holding = False  # tops wait for a pricing queue: the socket's timeout is short
        while not self._stop_event.is_set():
            # Only before a read that may wait: flush, and set the timeout to what is left
            # waiting (a settimeout is an ioctl and more Python: not one per frame).
            if not reader.buffered():
                if publisher.waiting:
                    publisher.flush()
                if holding != bool(publisher.waiting):
                    holding = not holding
                    sock.settimeout(HOLD_RETRY_S if holding else TICK_S)
            opcode, payload = reader.next()
            now = time.monotonic()
            if opcode in (OP_TEXT, OP_BINARY):
                recv_ns = time.time_ns()
                last_frame_ns = recv_ns
                frame = payload.decode()
                if recorder is not None:
                    recorder.received(self.name, frame, recv_ns)
                venue.receive(frame, recv_ns)
            elif opcode == OP_CLOSE:
                raise _Reconnect("closed by the venue")
            elif opcode:
                last_frame_ns = time.time_ns()  # ping/pong: the connection is alive
            if self._reconnect_reason is not None:
                raise _Reconnect(self._reconnect_reason)
            if now >= next_keepalive:
                frame_text = venue.keepalive_frame()
                if frame_text is not None:
                    self.send(frame_text)
                next_keepalive = now + (keepalive_s or 0.0)
            if now >= next_tick:
                next_tick = now + TICK_S
                now_ns = time.time_ns()
                if now_ns - last_frame_ns > silence_ns:
                    raise _Reconnect(f"no frame for {venue.silence_timeout_s:.0f}s")
                venue.on_tick(now_ns)
                # A connection that has held a LIVE book for a while resets the backoff.
                if live_since is None and any(
                    b.state.value == "LIVE" for b in venue.books.values()
                ):
                    live_since = now
                if live_since is not None and now - live_since > 10.0:
                    self._backoff.reset()
