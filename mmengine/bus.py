"""The inproc hops between threads: venue threads -> pricing workers -> publishers.

Sharding: ZeroMQ PUSH round-robins between connected PULLs, which would let two workers
price one instrument out of order. So worker k binds its own PULL at `inproc://pricing.k`,
every venue thread holds one PUSH per worker, and a BookTop for instrument X goes to worker
`stable_shard(X, K)`; per-instrument order holds end to end.

The last hop, `IpcPublisher`, forwards each stream from the engine's inproc PUBs to local
subscribers on IPC and counts what a full subscriber could not take (see its docstring).

BookTops cross the inproc hop pickled: they never leave the process, and pickling a small
tuple costs about a microsecond where Avro costs ten. The envelope is `(top as a tuple,
applied_ns)`: the moment the router took the top (the book was applied), so that pricing can
time each stage of the tick-to-quote path (`mmengine.latency`) without a field in BookTop.
The IPC `books` stream, which other processes read, carries BookTops Avro-encoded.

Sockets are made by the thread that uses them, from the one shared `zmq.Context`.

A venue thread never blocks on a pricing worker: a worker whose queue is full (it is wedged,
or dead) would otherwise stop the venue thread reading, reconnecting and marking its books
stale. What a full queue refuses is kept, the latest per instrument, and sent first once
there is room: pricing keeps only the latest top per venue book, so delivering the latest
loses nothing it uses, and a state change (LIVE -> RESYNCING) still arrives, in order.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import zmq

from mmengine.codec import Codec, book_top_record
from mmengine.model import BookTop

PRICES_IN = "inproc://prices.in"  # pricing workers' PUBs connect here (proxy XSUB)
BOOKS_IN = "inproc://books.in"  # venue threads' PUBs connect here (proxy XSUB)
PUSH_HWM = 100_000
PUB_HWM = 100_000  # inproc PUB -> forwarder, and forwarder -> each IPC subscriber
FORWARD_BATCH = 10_000  # messages forwarded per wake before looking at subscriptions again


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

    def _not_bound(self, exc: BaseException, sockets: Sequence[zmq.Socket]) -> None:
        self.error = exc
        for sock in sockets:
            sock.close()
        self.ready.set()


def stable_shard(instrument: str, workers: int) -> int:
    """The pricing worker that owns `instrument`: the same in every run and every process.

    Python's `hash()` of a str is salted per process, so it cannot keep sharding stable.
    """
    return zlib.crc32(instrument.encode()) % workers


def pricing_endpoint(worker: int) -> str:
    return f"inproc://pricing.{worker}"


def encode_top(top: BookTop, applied_ns: int | None = None) -> bytes:
    """The inproc envelope of a BookTop: `(tuple(top), applied_ns)`, pickled (`applied_ns`
    defaults to now)."""
    stamp = time.time_ns() if applied_ns is None else applied_ns
    return pickle.dumps((tuple(top), stamp), protocol=pickle.HIGHEST_PROTOCOL)


def decode_envelope(payload: bytes) -> tuple[BookTop, int]:
    """(BookTop, applied_ns) from `encode_top`'s envelope."""
    fields, applied_ns = pickle.loads(payload)
    return BookTop._make(fields), applied_ns


def decode_top(payload: bytes) -> BookTop:
    return decode_envelope(payload)[0]


class BookTopRouter:
    """A venue thread's sender: each BookTop goes to the workers pricing its instrument.

    `routes` maps a venue instrument to the priced instruments it feeds; a BookTop goes once
    to each distinct worker owning one of them. A send never blocks: at the high-water mark
    the top waits in `_pending` (latest per instrument; see the module doc) and goes out
    before anything newer to that worker.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        workers: int,
        routes: Mapping[str, Sequence[str]],
        publish_books: bool,
        hwm: int | None = None,
    ) -> None:
        self._pushes: list[zmq.Socket] = []
        for k in range(workers):
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, hwm or PUSH_HWM)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(pricing_endpoint(k))
            self._pushes.append(sock)
        # instrument -> the (worker, PUSH) pairs its tops go to
        self._targets: dict[str, list[tuple[int, zmq.Socket]]] = {
            inst: [(k, self._pushes[k]) for k in sorted({stable_shard(p, workers) for p in priced})]
            for inst, priced in routes.items()
        }
        # per worker: instrument -> its latest encoded top that a full queue refused
        self._pending: list[dict[str, bytes]] = [{} for _ in range(workers)]
        self._pub: zmq.Socket | None = None
        self._codec: Codec | None = None
        if publish_books:
            self._pub = ctx.socket(zmq.PUB)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.setsockopt(zmq.SNDHWM, PUB_HWM)
            self._pub.connect(BOOKS_IN)
            self._codec = Codec("book_top.avsc")
        self.sent = 0
        self.deferred = 0  # tops a full worker queue refused (kept for a later send)
        self.superseded = 0  # deferred tops replaced by a newer one of the same book

    def send(self, top: BookTop) -> None:
        targets = self._targets.get(top.instrument)
        if targets:
            payload = encode_top(top)  # stamped: the book was applied just now
            for k, sock in targets:
                pending = self._pending[k]
                if pending and not self._flush(sock, pending):
                    self._defer(pending, top.instrument, payload)
                    continue
                try:
                    sock.send(payload, zmq.NOBLOCK)
                except zmq.Again:
                    self._defer(pending, top.instrument, payload)
            self.sent += 1
        if self._pub is not None and self._codec is not None:
            topic = f"book.{top.venue}.{top.instrument}".encode()
            self._pub.send_multipart((topic, self._codec.encode(book_top_record(top))))

    @property
    def waiting(self) -> int:
        """Tops held back by full worker queues right now."""
        return sum(len(p) for p in self._pending)

    def _defer(self, pending: dict[str, bytes], instrument: str, payload: bytes) -> None:
        self.deferred += 1
        if instrument in pending:
            self.superseded += 1
            del pending[instrument]  # re-insert last: older instruments go out first
        pending[instrument] = payload

    def _flush(self, sock: zmq.Socket, pending: dict[str, bytes]) -> bool:
        """Send what a full queue refused, oldest first; True once nothing waits."""
        while pending:
            instrument = next(iter(pending))
            try:
                sock.send(pending[instrument], zmq.NOBLOCK)
            except zmq.Again:
                return False
            del pending[instrument]
        return True

    def close(self) -> None:
        for sock in self._pushes:
            sock.close()
        if self._pub is not None:
            self._pub.close()


@dataclass(slots=True)
class IpcStats:
    """Counters of one IPC stream (plain ints read by the status thread)."""

    sent: int = 0  # messages handed to the subscribers they matched
    dropped: int = 0  # messages not sent: a matching subscriber's queue was full
    subscriptions: int = 0  # subscribe/unsubscribe messages passed upstream


class IpcPublisher(ServiceThread):
    """One IPC stream (thread `ipc-<name>`): XSUB on `inproc` (the engine's PUBs connect
    there) to XPUB on `endpoint` (local subscribers connect there), forwarding in both
    directions like `zmq.proxy`, and counting drops.

    ZeroMQ's PUB and XPUB drop a message for a subscriber whose queue is at its high-water
    mark and report nothing. So the XPUB runs with ZMQ_XPUB_NODROP: a send that some matching
    subscriber cannot take fails with EAGAIN instead, and the message is counted in
    `dropped`. libzmq's send is all or nothing here, so such a message reaches no
    subscriber: the count is exact, and the price is that one subscriber `hwm` messages
    behind makes the stream drop for all until it catches up. (Sending such a message again
    in lossy mode would spare the others, but libzmq then parks the full subscriber's pipe
    and skips it silently until it drains, so the count would miss most drops; a count that
    is wrong is worse than this trade.) ZMTP heartbeats disconnect a subscriber whose process
    stopped answering, which frees its queue.

    The C proxy cannot count (its sends block or end the proxy); the cost is a Python recv
    and send per message, paid only for topics some subscriber subscribed to (subscriptions
    go upstream, so unwanted messages are dropped at the PUBs, as with the proxy).
    """

    def __init__(
        self, ctx: zmq.Context, name: str, inproc: str, endpoint: str, hwm: int = PUB_HWM
    ) -> None:
        super().__init__(f"ipc-{name}")
        self.ctx = ctx
        self.stream = name
        self.inproc = inproc
        self.endpoint = endpoint
        self.hwm = hwm
        self.stats = IpcStats()

    def run(self) -> None:
        xsub = self.ctx.socket(zmq.XSUB)
        xpub = self.ctx.socket(zmq.XPUB)
        try:
            for sock in (xsub, xpub):
                sock.setsockopt(zmq.LINGER, 0)
            xsub.setsockopt(zmq.RCVHWM, PUB_HWM)
            xpub.setsockopt(zmq.SNDHWM, self.hwm)
            xpub.setsockopt(zmq.XPUB_NODROP, 1)
            xpub.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            xpub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
            xsub.bind(self.inproc)
            xpub.bind(self.endpoint)
            if self.endpoint.startswith("ipc://"):
                os.chmod(self.endpoint.removeprefix("ipc://"), 0o600)
        except (zmq.ZMQError, OSError) as exc:
            self._not_bound(exc, (xsub, xpub))
            return
        self.ready.set()
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        try:
            while not self._stop_event.is_set():
                events = dict(poller.poll(100))
                if xpub in events:
                    self._subscriptions(xpub, xsub)
                if xsub in events:
                    self._forward(xsub, xpub)
        finally:
            xsub.close()
            xpub.close()

    def _subscriptions(self, xpub: zmq.Socket, xsub: zmq.Socket) -> None:
        while True:
            try:
                message = xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            xsub.send(message)
            self.stats.subscriptions += 1

    def _forward(self, xsub: zmq.Socket, xpub: zmq.Socket) -> None:
        # recv/send by hand rather than *_multipart: a third less Python per message.
        stats = self.stats
        recv = xsub.recv
        more = xsub.getsockopt
        send = xpub.send
        for _ in range(FORWARD_BATCH):
            try:
                parts = [recv(zmq.NOBLOCK)]
            except zmq.Again:
                return
            while more(zmq.RCVMORE):
                parts.append(recv())
            last = parts.pop()
            try:
                # With XPUB_NODROP only the first part can fail (libzmq counts whole
                # messages against the high-water mark), so a message goes out whole or not.
                for part in parts:
                    send(part, zmq.SNDMORE | zmq.NOBLOCK)
                send(last, zmq.NOBLOCK)
                stats.sent += 1
            except zmq.Again:  # a matching subscriber's queue is full: nobody gets it
                stats.dropped += 1
