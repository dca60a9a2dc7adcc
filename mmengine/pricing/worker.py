"""A pricing worker: one thread per shard, owning its inputs, its sequence counters and its
sockets (PULL `inproc://pricing.k`, a PUB into the prices proxy, PUSHes to the sinks).

It drains everything queued before pricing, so a burst prices each touched instrument once
(conflation keeps latency flat under load). It never waits on a sink.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass

import zmq

from mmengine.bus import PRICES_IN, decode_top, pricing_endpoint
from mmengine.codec import Codec, price_record
from mmengine.logs import RepeatLimiter
from mmengine.model import BookTop, Price
from mmengine.pricing.model import InstrumentSpec, consolidate

log = logging.getLogger("mmengine.pricing")

MAX_DRAIN = 10_000
# Sink message: [instrument, SINK_KEY(epoch, seq, priced_ts_ns), Avro single-object Price].
SINK_KEY = struct.Struct(">qqq")
SINK_HWM = 100_000  # bound one drain so a flood cannot delay pricing indefinitely


@dataclass(slots=True)
class WorkerStats:
    inputs: int = 0
    prices: int = 0
    unpriced: int = 0  # touched but no usable venue
    drains: int = 0
    sink_dropped: int = 0  # a writer's inproc queue was full (the writer is wedged)


class PricingWorker(threading.Thread):
    """Prices the instruments of shard `k`."""

    def __init__(
        self,
        k: int,
        ctx: zmq.Context,
        instruments: list[InstrumentSpec],
        epoch: int,
        sink_endpoints: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name=f"pricing-{k}", daemon=True)
        self.k = k
        self.ctx = ctx
        self.instruments = {spec.name: spec for spec in instruments}
        self.epoch = epoch
        self.sink_endpoints = sink_endpoints
        # (venue, venue instrument) -> priced instruments it feeds
        self.fed_by: dict[tuple[str, str], list[str]] = {}
        for spec in instruments:
            for src in spec.sources:
                self.fed_by.setdefault((src.venue, src.instrument), []).append(spec.name)
        self.tops: dict[str, dict[str, BookTop]] = {spec.name: {} for spec in instruments}
        self.seq: dict[str, int] = {spec.name: 0 for spec in instruments}
        self.stats = WorkerStats()
        self.ready = threading.Event()
        self._stop_event = threading.Event()
        self._sink_log = RepeatLimiter()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind(pricing_endpoint(self.k))
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.connect(PRICES_IN)
        sinks = []
        for endpoint in self.sink_endpoints:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, SINK_HWM)
            sock.setsockopt(zmq.LINGER, 5000)  # queued prices reach the writer on stop
            sock.connect(endpoint)
            sinks.append(sock)
        codec = Codec("price.avsc")
        self.ready.set()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        try:
            while not self._stop_event.is_set():
                if not poller.poll(100):
                    continue
                touched = self._drain(pull)
                now_ns = time.time_ns()
                for name in touched:
                    price = self.price(name, touched[name], now_ns)
                    if price is None:
                        continue
                    payload = codec.encode(price_record(price))
                    topic = b"price." + name.encode()
                    pub.send_multipart((topic, payload))
                    if sinks:
                        key = SINK_KEY.pack(price.epoch, price.seq, price.priced_ts_ns)
                        for sock in sinks:
                            self._to_sink(sock, (name.encode(), key, payload))
        finally:
            pull.close()
            pub.close()
            for sock in sinks:
                sock.close()

    def _to_sink(self, sock: zmq.Socket, frames: tuple[bytes, bytes, bytes]) -> None:
        """Hand a Price to a writer thread without ever waiting on it. The writer drains
        its queue into its own spool, so a full queue means the writer thread is wedged:
        count the loss loudly rather than stall pricing."""
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.stats.sink_dropped += 1
            if self._sink_log.allow("sink_full") is not None:
                log.error(
                    "pricing-%d: a sink queue is full; %d prices dropped so far",
                    self.k,
                    self.stats.sink_dropped,
                )

    def _drain(self, pull: zmq.Socket) -> dict[str, BookTop]:
        """Take everything queued; returns each touched instrument with its latest input."""
        touched: dict[str, BookTop] = {}
        fed_by = self.fed_by
        tops = self.tops
        n = 0
        while n < MAX_DRAIN:
            try:
                payload = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            top = decode_top(payload)
            for name in fed_by.get((top.venue, top.instrument), ()):
                tops[name][top.venue] = top
                touched[name] = top
        self.stats.inputs += n
        self.stats.drains += 1
        return touched

    def price(self, name: str, trigger: BookTop, now_ns: int) -> Price | None:
        """Price one instrument from its latest venue tops; None when nothing is usable."""
        spec = self.instruments[name]
        result = consolidate(
            list(self.tops[name].values()), now_ns, int(spec.max_age_ms * 1_000_000)
        )
        if result is None:
            self.stats.unpriced += 1
            return None
        self.seq[name] += 1
        self.stats.prices += 1
        return Price(
            instrument=name,
            epoch=self.epoch,
            seq=self.seq[name],
            fair_value=result.fair_value,
            best_bid=result.best_bid,
            best_bid_size=result.best_bid_size,
            best_ask=result.best_ask,
            best_ask_size=result.best_ask_size,
            venues=result.venues,
            exchange_ts_ns=trigger.exchange_ts_ns,
            recv_ts_ns=trigger.recv_ts_ns,
            priced_ts_ns=time.time_ns(),
        )
