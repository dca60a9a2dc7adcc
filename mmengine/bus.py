"""The inproc hops between threads: venue threads -> pricing workers -> publishers.

Sharding: ZeroMQ PUSH round-robins between connected PULLs, which would let two workers
price one instrument out of order. So worker k binds its own PULL at `inproc://pricing.k`,
every venue thread holds one PUSH per worker, and a BookTop for instrument X goes to worker
`stable_shard(X, K)`; per-instrument order holds end to end.

BookTops cross the inproc hop pickled: they never leave the process, and pickling a small
tuple costs about a microsecond where Avro costs ten. The IPC `books` stream, which other
processes read, carries them Avro-encoded.

Sockets are made by the thread that uses them, from the one shared `zmq.Context`.
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
    to each distinct worker owning one of them. Sends block at the (large) high-water mark
    rather than drop, so a state change (LIVE -> RESYNCING) can never be lost.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        workers: int,
        routes: Mapping[str, Sequence[str]],
        publish_books: bool,
    ) -> None:
        self._pushes: list[zmq.Socket] = []
        for k in range(workers):
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, PUSH_HWM)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(pricing_endpoint(k))
            self._pushes.append(sock)
        self._targets: dict[str, list[zmq.Socket]] = {
            inst: [self._pushes[k] for k in sorted({stable_shard(p, workers) for p in priced})]
            for inst, priced in routes.items()
        }
        self._pub: zmq.Socket | None = None
        self._codec: Codec | None = None
        if publish_books:
            self._pub = ctx.socket(zmq.PUB)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.connect(BOOKS_IN)
            self._codec = Codec("book_top.avsc")
        self.sent = 0

    def send(self, top: BookTop) -> None:
        targets = self._targets.get(top.instrument)
        if targets:
            payload = encode_top(top)
            for sock in targets:
                sock.send(payload)
            self.sent += 1
        if self._pub is not None and self._codec is not None:
            topic = f"book.{top.venue}.{top.instrument}".encode()
            self._pub.send_multipart((topic, self._codec.encode(book_top_record(top))))

    def close(self) -> None:
        for sock in self._pushes:
            sock.close()
        if self._pub is not None:
            self._pub.close()
