"""A pricing worker: one thread per shard, owning its inputs, its sequence counters and its
sockets (PULL `inproc://pricing.k`, PUSHes to the sinks); it publishes on the IPC prices
stream in place (`IpcPublisher`, shared with the other workers).

It drains everything queued before pricing, so a burst prices each touched instrument once
(conflation keeps latency flat under load). It never waits on a sink.

Nothing one input can do ends the thread: a message that does not decode is a counted skip,
an exception while pricing one instrument is logged with its traceback, counted, and
publishes that instrument halted ("internal error"), and the loop goes on.

Staleness does not wait for input: each priced instrument has a deadline, the moment its
freshest usable source turns older than `max_age_ms` (ages count from the frame's receive
time). The worker blocks in `poll` until the nearest deadline (never spins), re-prices what
is due, and while every source stays stale repeats the halted Price (`halt_reason` "stale")
every `max_age_ms`.
"""

from __future__ import annotations

import logging
import math
import pickle
import struct
import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import zmq

from mmengine import fastpath
from mmengine.bus import (
    PULL_HWM,
    IpcPublisher,
    ServiceThread,
    decode_envelope,
    pricing_endpoint,
    sink_message,
)
from mmengine.codec import Codec, price_values
from mmengine.latency import PRICING_STAGES, StageLatency
from mmengine.logs import RepeatLimiter
from mmengine.model import BookTop, Price
from mmengine.pricing.model import (
    STALE,
    Decision,
    FxSpec,
    InstrumentSpec,
    InstrumentState,
    evaluate,
    halted_decision,
)

log = logging.getLogger("mmengine.pricing")

# Messages one drain takes before pricing: the queues hold a few per venue thread
# (`mmengine.bus`), so more than this is a flood still arriving; price what came first.
MAX_DRAIN = 64
LATENCY_BOUNDS_US = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 50_000, 250_000)
LATENCY_WINDOW = 2048
# Sink message: [instrument, SINK_KEY(epoch, seq, priced_ts_ns), Avro single-object Price],
# and for a sink that asks for them, a 4th frame: the Price's values, pickled
# (`mmengine.codec.price_values`), so that it need not decode the Avro it spools.
SINK_KEY = struct.Struct(">qqq")
SINK_HWM = 100_000  # bound one drain so a flood cannot delay pricing indefinitely
POLL_MS = 100  # the longest the loop blocks: how soon it sees stop()
MIN_REPEAT_NS = 10_000_000  # a stale halt repeats every max_age_ms, but at most every 10 ms


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
    timed: int = 0  # prices published by the staleness timer (no new input)
    bad_inputs: int = 0  # inproc messages that did not decode (skipped)
    errors: int = 0  # unexpected exceptions caught (logged with traceback; the loop goes on)
    # recv -> priced latency: counts per bucket of LATENCY_BOUNDS_US (last: above them)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_US) + 1))
    latency_sum_us: float = 0.0
    # The latest LATENCY_WINDOW latencies themselves: `top` shows real percentiles of a
    # recent window from them (the histogram's buckets give only their edges).
    recent_latency_us: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    # Per stage of the tick-to-quote path, for every Price a BookTop triggered.
    stages: StageLatency = field(default_factory=lambda: StageLatency(PRICING_STAGES))


def control_endpoint(worker: int) -> str:
    """Where worker k takes position updates (from the engine's control thread)."""
    return f"inproc://pricing-control.{worker}"


class PricingWorker(ServiceThread):
    """Prices the instruments of shard `k`.

    `instruments` are the ones this worker owns and publishes. `fx_inputs` are FX
    instruments owned by other workers whose venue books are also routed here, so this
    worker computes the conversion rates it needs itself instead of waiting on another
    thread (same inputs, same model, same rate).
    """

    def __init__(
        self,
        k: int,
        ctx: zmq.Context[Any],
        instruments: list[InstrumentSpec],
        epoch: int,
        prices: IpcPublisher,
        sink_endpoints: tuple[str, ...] = (),
        sinks_with_values: frozenset[str] = frozenset(),
        fx: tuple[FxSpec, ...] = (),
        fx_inputs: tuple[InstrumentSpec, ...] = (),
        positions: dict[str, float] | None = None,
    ) -> None:
        super().__init__(f"pricing-{k}")
        self.k = k
        self.ctx = ctx
        self.specs: dict[str, InstrumentSpec] = {s.name: s for s in instruments}
        for spec in fx_inputs:
            self.specs.setdefault(spec.name, replace(spec, publish=False))
        self.epoch = epoch
        self.prices = prices
        self.sink_endpoints = sink_endpoints
        self.sinks_with_values = sinks_with_values
        # FX instruments first, so a rate is fresh before the prices that use it
        fx_names = {f.instrument for f in fx if f.instrument}
        self.order = {name: (0 if name in fx_names else 1) for name in self.specs}
        self.fx_rates: dict[str, tuple[float, int]] = {}
        self.fx_max_age_ns: dict[str, float] = {}
        for f in fx:
            if f.fixed is not None:
                self.fx_rates[f.pair] = (f.fixed, 2**62)  # a fixed rate never goes stale
            elif f.instrument is not None:
                self.fx_max_age_ns[f.instrument] = f.max_age_ms * 1e6
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
        # When each published instrument must be priced again without new input (ns).
        self.due: dict[str, float] = {}
        self.max_age_ns = {n: s.max_age_ms * 1e6 for n, s in self.specs.items()}
        # A fixed rate never goes stale, so it never brings a deadline nearer: `_schedule`
        # looks only at the rates pricing computes (a few µs a Price less).
        fixed = {f.pair for f in fx if f.fixed is not None} - set(self.fx_max_age_ns)
        self.fx_sources = {
            n: [
                (src.venue, src.fx)
                for src in s.sources
                if src.fx is not None and src.fx not in fixed
            ]
            for n, s in self.specs.items()
        }
        self.stats = WorkerStats()
        self._arrivals: dict[str, tuple[int, int]] = {}  # filled by each drain
        self._values_for: list[bool] = []  # per sink socket: it takes the Price's values
        self._sink_log = RepeatLimiter()
        self._error_log = RepeatLimiter()

    def run(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        control = self.ctx.socket(zmq.PULL)
        sinks: list[zmq.Socket[Any]] = []
        try:
            self._values_for = [e in self.sinks_with_values for e in self.sink_endpoints]
            for sock in (pull, control):
                sock.setsockopt(zmq.LINGER, 0)
            pull.setsockopt(zmq.RCVHWM, PULL_HWM)
            pull.bind(pricing_endpoint(self.k))
            control.bind(control_endpoint(self.k))
            for endpoint in self.sink_endpoints:
                sock = self.ctx.socket(zmq.PUSH)
                sinks.append(sock)
                sock.setsockopt(zmq.SNDHWM, SINK_HWM)
                sock.setsockopt(zmq.LINGER, 5000)  # queued prices reach the writer on stop
                sock.connect(endpoint)
            header = Codec("price.avsc").header
        except Exception as exc:
            self._not_bound(exc, (pull, control, *sinks))
            raise
        self.ready.set()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        sink_handles = [fastpath.handle(sock) for sock in sinks]  # open until the end
        try:
            while not self._stop_event.is_set():
                try:
                    self._step(poller, pull, control, sink_handles, header)
                except Exception:
                    # A bug outside the per-input guards: count it, keep serving.
                    self._count_error("pricing loop")
        finally:
            for sock in (pull, control, *sinks):
                sock.close()

    def _step(
        self,
        poller: zmq.Poller,
        pull: zmq.Socket[Any],
        control: zmq.Socket[Any],
        sinks: list[int],
        header: bytes,
    ) -> None:
        """One turn: take what is queued, or else wait for input or the nearest staleness
        deadline; then price.

        What is queued is taken holding the GIL; only an empty queue waits in `poll`, which
        lets go of it (under load, a worker that let go of the GIL at every turn waited for
        it behind the venue threads, up to a switch interval each time)."""
        taken = self._drain(pull)
        if taken is None:
            events = dict(poller.poll(self._timeout_ms()))
            taken = self._drain(pull) if pull in events else None
        touched = {} if taken is None else taken
        self._apply_positions(control, touched)
        now_ns = time.time_ns()
        timed = self._due_now(now_ns, touched)
        if not touched:
            return
        arrivals = self._arrivals
        for name in sorted(touched, key=self.order.__getitem__):
            try:
                trigger = touched[name]
                price = self.price(name, trigger, now_ns, timed=name in timed)
                if price is not None:
                    encoded_ns, published_ns = self._publish(price, sinks, header)
                    if trigger is not None and name not in timed:
                        applied_ns, dequeued_ns = arrivals[name]
                        recv_ns = trigger.recv_ts_ns
                        priced_ns = price.priced_ts_ns
                        self.stats.stages.add(
                            (
                                (applied_ns - recv_ns) / 1000,
                                (dequeued_ns - applied_ns) / 1000,
                                (priced_ns - dequeued_ns) / 1000,
                                (encoded_ns - priced_ns) / 1000,
                                (published_ns - encoded_ns) / 1000,
                                (published_ns - recv_ns) / 1000,
                            )
                        )
            except Exception:
                self._count_error(f"pricing {name}")
                self.due.pop(name, None)  # a failing instrument waits for new input
                price = self._internal_error_price(name, now_ns)
                if price is not None:
                    self._publish(price, sinks, header)

    def _publish(self, price: Price, sinks: list[int], header: bytes) -> tuple[int, int]:
        """To IPC subscribers and to every sink's writer (`sinks`: their sockets' handles,
        `mmengine.fastpath`); returns when it was encoded and when the IPC send returned
        (ns)."""
        name = price.instrument.encode()
        payload = fastpath.encode_price(header, price)
        encoded_ns = time.time_ns()
        self.prices.publish(b"price." + name, payload)
        published_ns = time.time_ns()
        if sinks:
            key = SINK_KEY.pack(price.epoch, price.seq, price.priced_ts_ns)
            record = sink_message(name, key, payload)
            with_values: bytes | None = None
            for sink, values in zip(sinks, self._values_for, strict=True):
                if values:
                    if with_values is None:
                        pickled = pickle.dumps(price_values(price), pickle.HIGHEST_PROTOCOL)
                        with_values = sink_message(name, key, payload, pickled)
                    self._to_sink(sink, with_values)
                else:
                    self._to_sink(sink, record)
        return encoded_ns, published_ns

    def _timeout_ms(self) -> int:
        """Block until the nearest deadline (at most POLL_MS, to notice stop())."""
        if not self.due:
            return POLL_MS
        wait_ns = min(self.due.values()) - time.time_ns()
        return max(0, min(POLL_MS, math.ceil(wait_ns / 1e6)))

    def _due_now(self, now_ns: int, touched: dict[str, BookTop | None]) -> set[str]:
        """Instruments whose deadline passed and no new input re-prices: price them now."""
        if not self.due:
            return set()
        timed = {n for n, due in self.due.items() if due <= now_ns and n not in touched}
        for name in timed:
            touched[name] = None
        return timed

    def _count_error(self, where: str) -> None:
        self.stats.errors += 1
        held = self._error_log.allow(where)
        if held is not None:
            log.exception(
                "pricing-%d: unexpected error in %s (%d errors so far, %d such held back)",
                self.k,
                where,
                self.stats.errors,
                held,
            )

    def _apply_positions(
        self, control: zmq.Socket[Any], touched: dict[str, BookTop | None]
    ) -> None:
        """Position updates: (instrument, quantity), pickled. Each re-prices at once."""
        h = fastpath.handle(control)
        while True:
            raw = fastpath.recv(h)
            if raw is None:
                return
            try:
                name, qty = pickle.loads(raw)
                qty = float(qty)
                if not math.isfinite(qty):
                    raise ValueError(f"position {qty!r} is not finite")
            except Exception:
                self.stats.bad_inputs += 1
                self._count_error("a position update")
                continue
            state = self.states.get(name)
            if state is None or not self.specs[name].publish:
                continue
            state.position = qty
            self.stats.positions += 1
            touched.setdefault(name, None)
            log.info("pricing-%d: %s position set to %s", self.k, name, qty)

    def _to_sink(self, sink: int, message: bytes) -> None:
        """Hand a Price (`mmengine.bus.sink_message`) to a writer thread without ever
        waiting on it (nor letting go of the GIL: `mmengine.fastpath`). The writer drains
        its queue into its own spool, so a full queue means the writer thread is wedged:
        count the loss loudly rather than stall pricing."""
        if not fastpath.send(sink, message):
            self.stats.sink_dropped += 1
            if self._sink_log.allow("sink_full") is not None:
                log.error(
                    "pricing-%d: a sink queue is full; %d prices dropped so far",
                    self.k,
                    self.stats.sink_dropped,
                )

    def _drain(self, pull: zmq.Socket[Any]) -> dict[str, BookTop | None] | None:
        """Take everything queued (without waiting); returns each touched instrument with
        its latest input, or None when nothing was queued."""
        touched: dict[str, BookTop | None] = {}
        arrivals = self._arrivals  # instrument -> (applied_ns, dequeued_ns) of its trigger
        arrivals.clear()
        fed_by = self.fed_by
        tops = self.tops
        now = time.time_ns
        # Received holding the GIL (`mmengine.fastpath`): a recv that releases it may wait a
        # switch interval to get it back from a venue thread.
        recv = fastpath.recv
        h = fastpath.handle(pull)
        n = 0  # messages
        tops_in = 0  # BookTops they carried (a message is a batch: `mmengine.bus`)
        while n < MAX_DRAIN:
            payload = recv(h)
            if payload is None:
                break
            dequeued_ns = now()
            n += 1
            try:
                batch = decode_envelope(payload)
            except Exception:
                self.stats.bad_inputs += 1
                self._count_error("decoding a book top")
                continue
            tops_in += len(batch)
            for top, applied_ns in batch:
                key = (top.venue, top.instrument)
                for name in fed_by.get(key, ()):
                    tops[name][key] = top
                    touched[name] = top
                    arrivals[name] = (applied_ns, dequeued_ns)
        if not n:
            return None
        stats = self.stats
        stats.inputs += tops_in
        stats.drains += 1
        stats.last_drain = tops_in
        if tops_in > stats.max_drain:
            stats.max_drain = tops_in
        return touched

    def price(
        self, name: str, trigger: BookTop | None, now_ns: int, timed: bool = False
    ) -> Price | None:
        """Price one instrument from its latest venue tops; None before any venue was LIVE.

        `timed`: the staleness timer asked, with no new input; the Price then carries the
        receive time of the freshest input it had, and stays out of the latency histogram.
        """
        spec = self.specs[name]
        state = self.states[name]
        decision = evaluate(spec, self.tops[name], self.fx_rates, state, now_ns, self.fx_max_age_ns)
        if decision is None:
            return None
        if spec.name in self.fx_max_age_ns and not decision.halted:
            self.fx_rates[spec.name] = (decision.fair_value, now_ns)
        if not spec.publish:
            return None
        self._schedule(name, decision, now_ns)
        if timed:
            self.stats.timed += 1
            trigger = max(self.tops[name].values(), key=lambda t: t.recv_ts_ns, default=None)
        return self._publishable(name, decision, trigger, now_ns, count_latency=not timed)

    def _schedule(self, name: str, decision: Decision, now_ns: int) -> None:
        """When `name` must be priced again without input: when its freshest used source (or
        the FX rate it used) turns stale; while it is halted stale, every max_age_ms."""
        max_age_ns = self.max_age_ns[name]
        if decision.halted and decision.halt_reason == STALE:
            self.due[name] = now_ns + max(max_age_ns, MIN_REPEAT_NS)
            return
        used = decision.used
        if not used:
            self.due.pop(name, None)
            return
        tops = self.tops[name]
        due = min([tops[(u.venue, u.instrument)].recv_ts_ns for u in used]) + max_age_ns
        for venue, fx in self.fx_sources[name]:  # empty unless a source needs a rate
            known = self.fx_rates.get(fx)
            if known is not None and any(u.venue == venue for u in used):
                due = min(due, known[1] + self.fx_max_age_ns.get(fx, max_age_ns))
        self.due[name] = due + 1  # an age must exceed max_age_ms to be stale

    def _internal_error_price(self, name: str, now_ns: int) -> Price | None:
        """After an unexpected error pricing `name`: a halted Price, so that the last live
        one does not stand (None if even that fails, or nothing was ever published)."""
        if name not in self.last_price or not self.specs[name].publish:
            return None
        try:
            spec = self.specs[name]
            decision = halted_decision(spec, self.states[name], [], "internal error")
            return self._publishable(name, decision, None, now_ns, count_latency=False)
        except Exception:
            self._count_error(f"halting {name}")
            return None

    def _publishable(
        self,
        name: str,
        decision: Decision,
        trigger: BookTop | None,
        now_ns: int,
        count_latency: bool = True,
    ) -> Price:
        """The next Price of `name` from a decision: assigns seq, counts, keeps it."""
        spec = self.specs[name]
        self.seq[name] += 1
        stats = self.stats
        stats.prices += 1
        stats.halted += decision.halted
        priced_ns = time.time_ns()
        recv_ns = trigger.recv_ts_ns if trigger is not None else now_ns
        if count_latency:
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
