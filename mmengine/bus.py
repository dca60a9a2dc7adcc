"""The inproc hops between threads: venue threads -> pricing workers -> publishers.

Sharding: ZeroMQ PUSH round-robins between connected PULLs, which would let two workers
price one instrument out of order. So worker k binds its own PULL at `inproc://pricing.k`,
every venue thread holds one PUSH per worker, and a BookTop for instrument X goes to worker
`stable_shard(X, K)`; per-instrument order holds end to end.

BookTops cross the inproc hop pickled: they never leave the process, and pickling a small
tuple costs about a microsecond where Avro costs ten. The IPC `books` stream, which other
processes read, carries them Avro-encoded.

Sockets are made by the thread that uses them, from the one shared `zmq.Context`.

A venue thread never blocks on a pricing worker: a worker whose queue is full (it is wedged,
or dead) would otherwise stop the venue thread reading, reconnecting and marking its books
stale. What a full queue refuses is kept, the latest per instrument, and sent first once
there is room: pricing keeps only the latest top per venue book, so delivering the latest
loses nothing it uses, and a state change (LIVE -> RESYNCING) still arrives, in order.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Mapping, Sequence

import zmq

from mmengine.codec import Codec, book_top_record
from mmengine.model import BookTop

PRICES_IN = "inproc://prices.in"  # pricing workers' PUBs connect here (proxy XSUB)
BOOKS_IN = "inproc://books.in"  # venue threads' PUBs connect here (proxy XSUB)
PUSH_HWM = 100_000


def stable_shard(instrument: str, workers: int) -> int:
    """The pricing worker that owns `instrument`: the same in every run and every process.

    Python's `hash()` of a str is salted per process, so it cannot keep sharding stable.
    """
    return zlib.crc32(instrument.encode()) % workers


def pricing_endpoint(worker: int) -> str:
    return f"inproc://pricing.{worker}"


def encode_top(top: BookTop) -> bytes:
    return pickle.dumps(tuple(top), protocol=pickle.HIGHEST_PROTOCOL)


def decode_top(payload: bytes) -> BookTop:
    return BookTop(*pickle.loads(payload))


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
            self._pub.connect(BOOKS_IN)
            self._codec = Codec("book_top.avsc")
        self.sent = 0
        self.deferred = 0  # tops a full worker queue refused (kept for a later send)
        self.superseded = 0  # deferred tops replaced by a newer one of the same book

    def send(self, top: BookTop) -> None:
        targets = self._targets.get(top.instrument)
        if targets:
            payload = encode_top(top)
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
