"""A pricing worker: one thread per shard, owning its inputs, its sequence counters and its
sockets (PULL `inproc://pricing.k`, a PUB into the prices proxy, PUSHes to the sinks).

It drains everything queued before pricing, so a burst prices each touched instrument once
(conflation keeps latency flat under load). It never waits on a sink.
"""

from __future__ import annotations

import logging
import pickle
import struct
import threading
import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field, replace

import zmq

from mmengine.bus import PRICES_IN, decode_top, pricing_endpoint
from mmengine.codec import Codec, encode_price
from mmengine.logs import RepeatLimiter
from mmengine.model import BookTop, Price
from mmengine.pricing.model import FxSpec, InstrumentSpec, InstrumentState, evaluate

log = logging.getLogger("mmengine.pricing")

MAX_DRAIN = 10_000
LATENCY_BOUNDS_US = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 50_000, 250_000)
LATENCY_WINDOW = 2048
# Sink message: [instrument, SINK_KEY(epoch, seq, priced_ts_ns), Avro single-object Price].
SINK_KEY = struct.Struct(">qqq")
SINK_HWM = 100_000  # bound one drain so a flood cannot delay pricing indefinitely


@dataclass(slots=True)
class WorkerStats:
    inputs: int = 0
    prices: int = 0
    halted: int = 0  # prices that said "do not quote"
    drains: int = 0
    positions: int = 0  # position updates applied
    sink_dropped: int = 0  # a writer's inproc queue was full (the writer is wedged)
    last_drain: int = 0  # BookTops taken in the last drain (the queue depth it found)
    max_drain: int = 0
    # recv -> priced latency: counts per bucket of LATENCY_BOUNDS_US (last: above them)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_US) + 1))
    latency_sum_us: float = 0.0
    # The latest LATENCY_WINDOW latencies themselves: `top` shows real percentiles of a
    # recent window from them (the histogram's buckets give only their edges).
    recent_latency_us: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


def control_endpoint(worker: int) -> str:
    """Where worker k takes position updates (from the engine's control thread)."""
    return f"inproc://pricing-control.{worker}"


class PricingWorker(threading.Thread):
    """Prices the instruments of shard `k`.

    `instruments` are the ones this worker owns and publishes. `fx_inputs` are FX
    instruments owned by other workers whose venue books are also routed here, so this
    worker computes the conversion rates it needs itself instead of waiting on another
    thread (same inputs, same model, same rate).
    """

    def __init__(
        self,
        k: int,
        ctx: zmq.Context,
        instruments: list[InstrumentSpec],
        epoch: int,
        sink_endpoints: tuple[str, ...] = (),
        fx: tuple[FxSpec, ...] = (),
        fx_inputs: tuple[InstrumentSpec, ...] = (),
        positions: dict[str, float] | None = None,
    ) -> None:
        super().__init__(name=f"pricing-{k}", daemon=True)
        self.k = k
        self.ctx = ctx
        self.specs: dict[str, InstrumentSpec] = {s.name: s for s in instruments}
        for spec in fx_inputs:
            self.specs.setdefault(spec.name, replace(spec, publish=False))
        self.epoch = epoch
        self.sink_endpoints = sink_endpoints
        # FX instruments first, so a rate is fresh before the prices that use it
        fx_names = {f.instrument for f in fx if f.instrument}
        self.order = {name: (0 if name in fx_names else 1) for name in self.specs}
        self.fx_rates: dict[str, tuple[float, int]] = {}
        self.fx_max_age_ns: dict[str, int] = {}
        for f in fx:
            if f.fixed is not None:
                self.fx_rates[f.pair] = (f.fixed, 2**62)  # a fixed rate never goes stale
            elif f.instrument is not None:
                self.fx_max_age_ns[f.instrument] = int(f.max_age_ms * 1e6)
        # (venue, venue instrument) -> instruments it feeds
        self.fed_by: dict[tuple[str, str], list[str]] = {}
        for spec in self.specs.values():
            for src in spec.sources:
                self.fed_by.setdefault((src.venue, src.instrument), []).append(spec.name)
        self.tops: dict[str, dict[tuple[str, str], BookTop]] = {n: {} for n in self.specs}
        self.states = {n: InstrumentState() for n in self.specs}
        for name, qty in (positions or {}).items():
            if name in self.states:
                self.states[name].position = qty
        self.seq: dict[str, int] = {n: 0 for n in self.specs}
        self.last_price: dict[str, Price] = {}
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
        control = self.ctx.socket(zmq.PULL)
        control.setsockopt(zmq.LINGER, 0)
        control.bind(control_endpoint(self.k))
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
        header = Codec("price.avsc").header
        self.ready.set()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        try:
            while not self._stop_event.is_set():
                events = dict(poller.poll(100))
                if not events:
                    continue
                touched = self._drain(pull) if pull in events else {}
                if control in events:
                    self._apply_positions(control, touched)
                now_ns = time.time_ns()
                for name in sorted(touched, key=self.order.__getitem__):
                    price = self.price(name, touched[name], now_ns)
                    if price is None or not self.specs[name].publish:
                        continue
                    payload = encode_price(header, price)
                    topic = b"price." + name.encode()
                    pub.send_multipart((topic, payload))
                    if sinks:
                        key = SINK_KEY.pack(price.epoch, price.seq, price.priced_ts_ns)
                        for sock in sinks:
                            self._to_sink(sock, (name.encode(), key, payload))
        finally:
            for sock in (pull, control, pub, *sinks):
                sock.close()

    def _apply_positions(self, control: zmq.Socket, touched: dict[str, BookTop | None]) -> None:
        """Position updates: (instrument, quantity), pickled. Each re-prices at once."""
        while True:
            try:
                name, qty = pickle.loads(control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            state = self.states.get(name)
            if state is None or not self.specs[name].publish:
                continue
            state.position = float(qty)
            self.stats.positions += 1
            touched.setdefault(name, None)
            log.info("pricing-%d: %s position set to %s", self.k, name, qty)

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

    def _drain(self, pull: zmq.Socket) -> dict[str, BookTop | None]:
        """Take everything queued; returns each touched instrument with its latest input."""
        touched: dict[str, BookTop | None] = {}
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
            key = (top.venue, top.instrument)
            for name in fed_by.get(key, ()):
                tops[name][key] = top
                touched[name] = top
        stats = self.stats
        stats.inputs += n
        stats.drains += 1
        stats.last_drain = n
        if n > stats.max_drain:
            stats.max_drain = n
        return touched

    def price(self, name: str, trigger: BookTop | None, now_ns: int) -> Price | None:
        """Price one instrument from its latest venue tops; None before any venue was LIVE."""
        spec = self.specs[name]
        state = self.states[name]
        decision = evaluate(spec, self.tops[name], self.fx_rates, state, now_ns, self.fx_max_age_ns)
        if decision is None:
            return None
        if spec.name in self.fx_max_age_ns and not decision.halted:
            self.fx_rates[spec.name] = (decision.fair_value, now_ns)
        if not spec.publish:
            return None
        self.seq[name] += 1
        stats = self.stats
        stats.prices += 1
        stats.halted += decision.halted
        priced_ns = time.time_ns()
        recv_ns = trigger.recv_ts_ns if trigger is not None else now_ns
        latency_us = (priced_ns - recv_ns) / 1000
        stats.latency[bisect_left(LATENCY_BOUNDS_US, latency_us)] += 1
        stats.latency_sum_us += latency_us
        stats.recent_latency_us.append(latency_us)
        price = Price(
            instrument=name,
            epoch=self.epoch,
            seq=self.seq[name],
            fair_value=decision.fair_value,
            best_bid=decision.best_bid,
            best_bid_size=decision.best_bid_size,
            best_ask=decision.best_ask,
            best_ask_size=decision.best_ask_size,
            venues=[u.venue for u in decision.used],
            exchange_ts_ns=trigger.exchange_ts_ns if trigger is not None else 0,
            recv_ts_ns=recv_ns,
            priced_ts_ns=priced_ns,
            method=spec.method,
            volatility_bps=decision.volatility_bps,
            half_spread_bps=decision.half_spread_bps,
            position=decision.position,
            skew_bps=decision.skew_bps,
            halted=decision.halted,
            halt_reason=decision.halt_reason,
            cross_venue_crossed=decision.cross_venue_crossed,
            bids=decision.bids,
            asks=decision.asks,
            venues_used=decision.used,
            venues_excluded=decision.excluded,
        )
        self.last_price[name] = price  # read by the status thread; never mutated after
        return price
