"""The inproc hops between threads: venue threads -> pricing workers -> publishers.

Sharding: ZeroMQ PUSH round-robins between connected PULLs, which would let two workers
price one instrument out of order. So worker k binds its own PULL at `inproc://pricing.k`,
every venue thread holds one PUSH per worker, and a BookTop for instrument X goes to worker
`stable_shard(X, K)`; per-instrument order holds end to end.

The last step, `IpcPublisher`, is each IPC stream's public socket, on which pricing workers
(prices) and venue threads (books) publish in place, with no forwarding hop; it counts what
a full subscriber could not take (see its docstring).

BookTops cross the inproc hop by reference: they never leave the process, and a BookTop
is read-only (the book core shares a list between tops only while its values are the
same). A message is a batch: a tuple of `(top, applied_ns)` entries, one in the usual
case; `applied_ns` is the moment the router took the top (the book was applied), so that
pricing can time each stage of the tick-to-quote path (`mmengine.latency`) without a field
in BookTop. The batch waits in `_IN_FLIGHT` under a key, and the ZeroMQ message carries
the key (a 0 byte, then 8 bytes): ZeroMQ still orders the batches, bounds the queues and
wakes the worker. Pickling the batch instead cost the venue thread a dumps and the worker
a loads and a BookTop per top, some 5-10 µs a batch (issue 15); a pickled batch
(`encode_top`, what tests and tools send) is still read. The IPC `books` stream, which
other processes read, carries BookTops Avro-encoded.

A Price goes to each sink's writer thread as one frame (`sink_message`): instrument, sink
key and Avro payload joined by `pack_frames`, which is the writer's spool record as it came;
for a writer that asked for the Price's values (Postgres) they follow as a fourth part, which
the writer takes off. One frame, not a multipart message: each part is a `send` and a `recv`
that let go of the GIL (a three-part message cost 10 µs to send and 9 to take, one frame 3
and 2, measured uncontended).

Sockets are made by the thread that uses them, from the one shared `zmq.Context`; the one
exception is each IPC stream's PUB, shared by its producers under a lock (`IpcPublisher`).

A venue thread never blocks on a pricing worker: a worker whose queue is full (it is wedged,
or dead) would otherwise stop the venue thread reading, reconnecting and marking its books
stale. What a full queue refuses is kept, the latest per instrument, and sent first once
there is room: pricing keeps only the latest top per venue book, so delivering the latest
loses nothing it uses, and a state change (LIVE -> RESYNCING) still arrives, in order.

Tops travel in batches, and the queues are short on purpose (`PUSH_HWM` + `PULL_HWM`
messages per venue thread and worker). A blocking wait lets go of the GIL (the hops' own
sends and recvs no longer do: `mmengine.fastpath`), and a thread gets it back only when a
busy one hands it over (a switch interval): a worker that
must take one message per top falls behind five venue threads reading a flood, and a long
queue made the input of a Price seconds old (50,000 msgs/s on two cores: 7 Prices in 6 s,
RSS +180 MB). So a venue thread sends once per read of its socket (what the frames of that
read changed, the latest top per book), and while a worker's queue is full the batch keeps
conflating at the source; one `recv` brings the worker all of it (counted: `superseded`,
`deferred`, `waiting`).
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from mmengine import fastpath
from mmengine.codec import Codec, book_top_record
from mmengine.model import BookTop

PUSH_HWM = 2  # messages a venue thread's PUSH holds for one worker (see the module doc)
PULL_HWM = 2  # and the worker's PULL, per venue thread
PUB_HWM = 100_000  # messages queued for each IPC subscriber
POLLOUT = fastpath.POLLOUT


class ServiceThread(threading.Thread):
    """An engine thread that makes its sockets when it starts: `ready` is set once they are
    bound (or binding failed: then `error` says why and the sockets are closed), `stop()`
    asks the thread to end within its poll timeout."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def _not_bound(self, exc: BaseException, sockets: Sequence[zmq.Socket[Any]]) -> None:
        self.error = exc
        for sock in sockets:
            sock.close()
        self.ready.set()


_LEN = struct.Struct(">I")


def pack_frames(frames: Sequence[bytes]) -> bytes:
    """One record from several byte strings: each as a `>I` length and its bytes. A sink
    message is such a record (`sink_message`), and the spool stores it as it is."""
    return b"".join(_LEN.pack(len(f)) + f for f in frames)


def unpack_frames(record: bytes) -> list[bytes]:
    """The byte strings `pack_frames` joined; ValueError if `record` is not such a join."""
    frames = []
    pos = 0
    end = len(record)
    while pos < end:
        if end - pos < _LEN.size:
            raise ValueError(f"record ends inside a frame length at byte {pos}")
        (n,) = _LEN.unpack_from(record, pos)
        pos += _LEN.size
        if pos + n > end:
            raise ValueError(f"frame of {n} bytes at byte {pos} runs past the record ({end})")
        frames.append(record[pos : pos + n])
        pos += n
    return frames


def sink_message(instrument: bytes, key: bytes, payload: bytes, values: bytes = b"") -> bytes:
    """What pricing sends a sink's writer for one Price: without `values` (the Price's
    values, pickled), also the writer's spool record; with them, the record and then them."""
    record = pack_frames((instrument, key, payload))
    return record + _LEN.pack(len(values)) + values if values else record


def stable_shard(instrument: str, workers: int) -> int:
    """The pricing worker that owns `instrument`: the same in every run and every process.

    Python's `hash()` of a str is salted per process, so it cannot keep sharding stable.
    """
    return zlib.crc32(instrument.encode()) % workers


def pricing_endpoint(worker: int) -> str:
    return f"inproc://pricing.{worker}"


Entry = tuple[BookTop, int]  # (a BookTop, applied_ns): one top in a batch

# Batches sent and not yet received, by key (see the module doc). A batch whose message is
# lost with its worker's socket (a worker that died: the supervisor ends the engine or
# restarts it) stays here: at most the queues' few messages per venue thread.
_IN_FLIGHT: dict[int, tuple[Entry, ...]] = {}
_KEYS = itertools.count()  # next() is one C call: atomic under the GIL, unique per batch
_KEY = struct.Struct("<xQ")  # a 0 byte (no pickle starts with it), then the key


def encode_top(top: BookTop, applied_ns: int | None = None) -> bytes:
    """The inproc message of one BookTop: a batch of one entry `(tuple(top), applied_ns)`,
    pickled (`applied_ns` defaults to now)."""
    stamp = time.time_ns() if applied_ns is None else applied_ns
    return pickle.dumps(((tuple(top), stamp),), protocol=pickle.HIGHEST_PROTOCOL)


def decode_envelope(payload: bytes) -> Sequence[tuple[BookTop, int]]:
    """The (BookTop, applied_ns) pairs of one inproc message, in the order they were sent:
    the batch itself for a key (taken out of `_IN_FLIGHT`: a key is read once), else a
    pickled batch; KeyError or an unpickling error for a message that is neither."""
    if len(payload) == _KEY.size and payload[0] == 0:
        return _IN_FLIGHT.pop(_KEY.unpack(payload)[0])
    return [(BookTop._make(fields), applied_ns) for fields, applied_ns in pickle.loads(payload)]


def decode_tops(payload: bytes) -> list[BookTop]:
    return [top for top, _ in decode_envelope(payload)]


class BookTopRouter:
    """A venue thread's sender: each BookTop goes to the workers pricing its instrument.

    `routes` maps a venue instrument to the priced instruments it feeds; a BookTop goes once
    to each distinct worker owning one of them. `send` only queues the top (the latest per
    instrument and worker, in `_pending`); `flush` sends what is queued for each worker as
    one message, and is called by the venue thread when it has no complete frame left to
    read, so a burst of frames read at once costs one send per worker, not one per frame.
    A flush never blocks: a worker whose queue is full keeps its batch waiting (`waiting`
    tops) for the next flush, and newer tops of the same book replace older ones in it.
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        workers: int,
        routes: Mapping[str, Sequence[str]],
        books: IpcPublisher | None,
        hwm: int | None = None,
    ) -> None:
        self._pushes: list[zmq.Socket[Any]] = []
        for k in range(workers):
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, hwm or PUSH_HWM)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(pricing_endpoint(k))
            self._pushes.append(sock)
        # The PUSHes' libzmq handles: sends made holding the GIL (`mmengine.fastpath`).
        self._handles = [fastpath.handle(sock) for sock in self._pushes]
        # instrument -> the workers its tops go to
        self._targets: dict[str, list[int]] = {
            inst: sorted({stable_shard(p, workers) for p in priced})
            for inst, priced in routes.items()
        }
        # per worker: instrument -> its latest top not yet sent, oldest first
        self._pending: list[dict[str, Entry]] = [{} for _ in range(workers)]
        self._blocked = [False] * workers  # the worker's queue was full at the last flush
        self.waiting = 0  # tops queued and not yet sent
        self._books = books  # the IPC `books` stream, when it is on
        self._codec = Codec("book_top.avsc") if books is not None else None
        self.sent = 0  # tops routed
        self.deferred = 0  # tops that waited because their worker's queue was full
        self.superseded = 0  # tops replaced by a newer one of the same book before a send
        self.batches = 0  # messages sent

    def send(self, top: BookTop) -> None:
        """Queue `top` for its workers; it goes out at the next `flush()`."""
        targets = self._targets.get(top.instrument)
        if targets:
            entry = (top, time.time_ns())  # stamped: the book was applied just now
            instrument = top.instrument
            for k in targets:
                pending = self._pending[k]
                self.deferred += self._blocked[k]
                if instrument in pending:
                    self.superseded += 1
                    del pending[instrument]  # re-insert last: older instruments go first
                else:
                    self.waiting += 1
                pending[instrument] = entry
            self.sent += 1
        if self._books is not None and self._codec is not None:
            topic = f"book.{top.venue}.{top.instrument}".encode()
            self._books.publish(topic, self._codec.encode(book_top_record(top)))

    def flush(self) -> None:
        """Send what is queued, one message per worker whose queue has room; never blocks."""
        for k, pending in enumerate(self._pending):
            if pending:
                self._send_batch(k, pending)

    def _send_batch(self, k: int, pending: dict[str, Entry]) -> None:
        h = self._handles[k]
        # Only a worker's full queue refuses a send, and a refused one neither raises nor
        # lets go of the GIL (`fastpath`): ask first whether there is room (ZMQ_EVENTS, a
        # poll syscall in libzmq) only while the queue was full.
        if self._blocked[k] and not fastpath.events(h) & POLLOUT:
            return
        key = next(_KEYS)
        _IN_FLIGHT[key] = tuple(pending.values())
        if fastpath.send(h, _KEY.pack(key)):
            self.waiting -= len(pending)
            self.batches += 1
            self._blocked[k] = False
            pending.clear()
            return
        del _IN_FLIGHT[key]
        if not self._blocked[k]:
            self.deferred += len(pending)
            self._blocked[k] = True

    def close(self) -> None:
        for sock in self._pushes:
            sock.close()


@dataclass(slots=True)
class IpcStats:
    """Counters of one IPC stream (plain ints, changed under the publisher's lock, read by
    the status thread without it)."""

    sent: int = 0  # messages published
    # Messages that at least one subscriber could not take because its queue was full: each
    # starts a drop episode for that subscriber. The messages it misses while the episode
    # lasts are not counted (libzmq does not say), so this is a lower bound of what was
    # lost; a subscriber sees its exact gaps in each instrument's contiguous `seq`.
    dropped: int = 0


class IpcPublisher:
    """One IPC stream's public socket: a PUB bound at `endpoint` (`ipc://<run_dir>/prices`,
    `.../books`), on which the threads that produce the stream publish directly (the pricing
    workers for prices, the venue threads for books).

    No forwarding hop: the socket is shared under a lock held only around the send (about
    a microsecond; ZeroMQ allows a socket to move between threads behind a full memory
    barrier, which the lock gives). A forwarder thread (inproc XSUB -> XPUB) cost a thread
    wake-up per message and, in Python, about 4 us of GIL-holding CPU (the C `zmq.proxy`
    about 0.5 us, but it cannot count drops); publishing in place measured 40-80 us less at
    p50 for a subscriber process at 10,000 msgs/s (see README, Performance).

    Slow subscribers: each loses its own messages only. The socket runs with
    ZMQ_XPUB_NODROP, so a send that some matching subscriber's full queue refuses fails with
    EAGAIN instead of dropping silently: that message is counted in `stats.dropped` and sent
    again without NODROP, which delivers it to every other subscriber and lets libzmq set
    the full one aside until it has read down its backlog. While it is set aside, NODROP
    does not see it, so a drop episode is counted once (see `IpcStats.dropped`). ZMTP
    heartbeats disconnect a subscriber whose process stopped answering, which frees its
    queue.
    """

    def __init__(self, ctx: zmq.Context[Any], name: str, endpoint: str, hwm: int = PUB_HWM) -> None:
        self.ctx = ctx
        self.stream = name
        self.endpoint = endpoint
        self.hwm = hwm
        self.stats = IpcStats()
        self._lock = threading.Lock()
        self._sock: zmq.Socket[Any] | None = None
        self._handle = 0  # the libzmq socket's address while it is bound

    def bind(self) -> None:
        """Bind the socket (on the engine's thread, before any producer starts); raises
        zmq.ZMQError or OSError when the endpoint cannot be used."""
        sock = self.ctx.socket(zmq.PUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
            sock.bind(self.endpoint)
            if self.endpoint.startswith("ipc://"):
                os.chmod(self.endpoint.removeprefix("ipc://"), 0o600)
        except (zmq.ZMQError, OSError):
            sock.close()
            raise
        with self._lock:
            self._sock = sock
            self._handle = fastpath.handle(sock)

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Send `[topic, payload]` to every subscriber whose queue has room; never blocks
        (and keeps the GIL: `mmengine.fastpath`). After `close()` it does nothing."""
        with self._lock:
            sock = self._sock
            if sock is None:
                return
            # With NODROP only the first part can fail (libzmq counts whole messages
            # against the high-water mark): a message goes out whole or not at all.
            if not fastpath.send2(self._handle, topic, payload):
                # A matching subscriber's queue is full: count, spare the rest.
                self.stats.dropped += 1
                sock.setsockopt(zmq.XPUB_NODROP, 0)
                try:
                    fastpath.send2(self._handle, topic, payload)
                finally:
                    sock.setsockopt(zmq.XPUB_NODROP, 1)
            self.stats.sent += 1

    def close(self) -> None:
        """Close the socket (once every producer has stopped; a late publish is ignored)."""
        with self._lock:
            sock, self._sock = self._sock, None
            self._handle = 0
        if sock is not None:
            sock.close()
