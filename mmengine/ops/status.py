"""Engine status: one snapshot of every thread's counters (built on the `status` thread).

Each thread keeps plain counters in its own objects (venue stats, book states, worker stats,
writer counters) and never locks for them: updating an int costs nothing on the hot path.
This module reads them from outside, which is safe under the GIL for ints and for copies of
dicts made in C. Two consumers: the IPC status stream (`ipc://<run_dir>/status`, one JSON
message a second, read by `mmengine top`) and the Prometheus endpoint (`mmengine.ops.metrics`).

It reads them through a small reporting protocol (`Reporting` and the sources below), never
through the engine itself: status and metrics sit after the engine's parts and import none
of the assembly (the engine imports them, not the other way round).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import zmq

from mmengine.bus import IpcStats, ServiceThread
from mmengine.latency import (
    STAGE_BOUNDS_US,
    StageLatency,
    merge_reports,
    nearest_rank,
    window_summary,
)
from mmengine.model import Price
from mmengine.pricing.worker import LATENCY_BOUNDS_US, WorkerStats


class VenueSource(Protocol):
    """What a venue connection hands out: exactly what `VenueConnection` exposes today.

    - `connected`: whether a WebSocket is open now.
    - `venue`: an object with `name` and `protocol` (str); `venue_stats` with `frames`,
      `book_frames`, `reconnects` (ints) and `skipped`, `resyncs` (mappings kind -> count);
      `stats`, a mapping instrument -> per-book counters (`messages`, `resyncs`,
      `sequence_gaps`, `checksums_checked`, `checksums_failed`, `audit_agree`,
      `audit_disagree`, `skipped`); and `books`, a mapping instrument -> book with `state`
      (an enum whose `.value` is SYNCING, LIVE, STALE or RESYNCING) and `recv_ts_ns`.

    A venue layer that keeps these names plugs in unchanged. When the engine restarts a
    venue thread it hands the old `venue_stats` and `stats` objects to the new one, so the
    counters never reset during a run.
    """

    @property
    def connected(self) -> bool: ...

    @property
    def venue(self) -> Any: ...


class WorkerSource(Protocol):
    """A pricing worker: its shard number, counters and the last Price per instrument."""

    # Read-only (properties): a worker's own dict is a Mapping to the reader.
    @property
    def k(self) -> int: ...
    @property
    def stats(self) -> WorkerStats: ...
    @property
    def last_price(self) -> Mapping[str, Price]: ...


class WriterSource(Protocol):
    """A sink writer: its `sink` label, a flat dict of int counters, and the latency of its
    stage (priced -> acknowledged or committed)."""

    sink_name: str
    stages: StageLatency

    def counters(self) -> dict[str, int]: ...


class StreamSource(Protocol):
    """An IPC stream forwarder: its name and counters (sent, dropped at the HWM)."""

    stream: str
    stats: IpcStats


class ControlSource(Protocol):
    """The control thread's counters (requests, accepted, refused, errors)."""

    stats: Any


class Reporting(Protocol):
    """Everything a status snapshot reads (the engine provides it)."""

    epoch: int
    started_ns: int

    @property
    def connections(self) -> Sequence[VenueSource]: ...

    @property
    def workers(self) -> Sequence[WorkerSource]: ...

    @property
    def writers(self) -> Sequence[WriterSource]: ...

    @property
    def publishers(self) -> Sequence[StreamSource]: ...

    @property
    def control(self) -> ControlSource | None: ...

    def thread_reports(self) -> list[dict[str, Any]]:
        """Each supervised thread: name, kind, alive, policy, deaths, restarts, last_error."""
        ...

    def router_counters(self) -> dict[str, dict[str, int]]:
        """Per venue: BookTops deferred/superseded/waiting because a worker queue was full."""
        ...


log = logging.getLogger("mmengine.status")

STATUS_TOPIC = b"status"


def window_percentiles_us(samples: list[float]) -> dict[str, float | None]:
    """p50 and p99 (nearest rank) of recent latency samples; None without any."""
    return {"p50": nearest_rank(samples, 0.5), "p99": nearest_rank(samples, 0.99)}


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) each live, named thread of this process has used, by
    thread name (summed where a name repeats); empty where there is no /proc (not Linux).
    Threads left with Python's default name (`Thread-N`: the metrics server's short-lived
    request threads) are left out: a counter must not vanish between two scrapes. A thread
    restarted after a death starts again from zero (a counter reset, to Prometheus).

    Read from /proc/self/task/<native id>/stat, not `time.pthread_getcpuclockid`: a thread
    may end between listing and reading, and its /proc entry then just disappears, while its
    pthread id would name freed memory. Resolution: one clock tick (10 ms)."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        tid = thread.native_id
        if tid is None or thread.name.startswith("Thread-"):
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # ended since enumerate(), or no /proc
        # Fields after the command name (which may hold spaces and parentheses): the 14th
        # and 15th of the line are utime and stime, in clock ticks.
        fields = stat[stat.rfind(b")") + 2 :].split()
        try:
            ticks = int(fields[11]) + int(fields[12])
        except (IndexError, ValueError):
            continue
        out[thread.name] = out.get(thread.name, 0.0) + ticks / _CLOCK_TICKS
    return out


def snapshot(engine: Reporting, now_ns: int | None = None) -> dict[str, Any]:
    """Everything an operator looks at, as plain JSON-able data."""
    now_ns = now_ns or time.time_ns()
    venues = []
    routers = engine.router_counters()
    for conn in list(engine.connections):
        venue = conn.venue
        vs = venue.venue_stats
        books = []
        for inst, book in list(venue.books.items()):
            st = venue.stats[inst]
            books.append(
                {
                    "instrument": inst,
                    "state": book.state.value,
                    "messages": st.messages,
                    "resyncs": st.resyncs,
                    "gaps": st.sequence_gaps,
                    "checksums_checked": st.checksums_checked,
                    "checksums_failed": st.checksums_failed,
                    "audit_agree": st.audit_agree,
                    "audit_disagree": st.audit_disagree,
                    "skipped": st.skipped,
                    "age_s": (now_ns - book.recv_ts_ns) / 1e9 if book.recv_ts_ns else None,
                }
            )
        venues.append(
            {
                "name": venue.name,
                "protocol": venue.protocol,
                "connected": conn.connected,
                "frames": vs.frames,
                "book_frames": vs.book_frames,
                "reconnects": vs.reconnects,
                "requests_delayed": vs.requests_delayed,
                "skipped": dict(vs.skipped),
                "resyncs": dict(vs.resyncs),
                "books": books,
                "live": sum(b["state"] == "LIVE" for b in books),
                "deferred_tops": routers.get(venue.name, {}).get("deferred", 0),
                "superseded_tops": routers.get(venue.name, {}).get("superseded", 0),
                "waiting_tops": routers.get(venue.name, {}).get("waiting", 0),
            }
        )
    workers = []
    instruments = []
    for w in engine.workers:
        s = w.stats
        workers.append(
            {
                "worker": w.k,
                "inputs": s.inputs,
                "prices": s.prices,
                "halted": s.halted,
                "drains": s.drains,
                "last_drain": s.last_drain,
                "max_drain": s.max_drain,
                "sink_dropped": s.sink_dropped,
                "timed": s.timed,
                "bad_inputs": s.bad_inputs,
                "errors": s.errors,
                "latency_counts": list(s.latency),
                "latency_sum_us": s.latency_sum_us,
                # list() of a deque is one C call under the GIL: a consistent copy.
                "latency_window_us": window_percentiles_us(list(s.recent_latency_us)),
            }
        )
        for name, p in list(w.last_price.items()):
            instruments.append(
                {
                    "instrument": name,
                    "seq": p.seq,
                    "fair_value": p.fair_value,
                    "spread_bps": (p.best_ask - p.best_bid) / p.fair_value * 1e4
                    if p.fair_value and not p.halted
                    else None,
                    # The spread this engine quotes: the ladder's best ask over its best bid.
                    "quoted_spread_bps": (p.asks[0][0] - p.bids[0][0]) / p.fair_value * 1e4
                    if p.fair_value and p.bids and p.asks and not p.halted
                    else None,
                    "crossed": p.cross_venue_crossed,
                    "volatility_bps": p.volatility_bps,
                    "position": p.position,
                    "venues_used": [u.venue for u in p.venues_used],
                    "venues_excluded": [f"{x.venue}:{x.reason}" for x in p.venues_excluded],
                    "halted": p.halted,
                    "halt_reason": p.halt_reason,
                    "age_s": (now_ns - p.priced_ts_ns) / 1e9,
                }
            )
    sinks = [{"name": w.sink_name, **w.counters()} for w in engine.writers]
    reports = [w.stats.stages.report() for w in engine.workers]
    reports += [w.stages.report() for w in engine.writers if hasattr(w, "stages")]
    merged = merge_reports(reports)
    summary = window_summary(merged)
    stages = {
        name: {"counts": r["counts"], "sum_us": r["sum_us"], **summary[name]}
        for name, r in merged.items()
    }
    streams = [
        {"name": p.stream, "sent": p.stats.sent, "dropped": p.stats.dropped}
        for p in engine.publishers
    ]
    control = engine.control
    threads = engine.thread_reports()
    return {
        "ts_ns": now_ns,
        "epoch": engine.epoch,
        "pid": os.getpid(),
        "uptime_s": (now_ns - engine.started_ns) / 1e9 if engine.started_ns else 0.0,
        "venues": venues,
        "workers": workers,
        "instruments": sorted(instruments, key=lambda i: i["instrument"]),
        "sinks": sinks,
        "ipc": streams,
        "control": _counters(control.stats) if control is not None else {},
        "threads": threads,
        "thread_deaths": sum(t["deaths"] for t in threads),
        "thread_restarts": sum(t["restarts"] for t in threads),
        # Where the engine's CPU goes, per thread (venue-<name>, pricing-<k>, status, the
        # writers...): seconds since each thread started.
        "thread_cpu_s": thread_cpu_seconds(),
        "latency_bounds_us": list(LATENCY_BOUNDS_US),
        # Per stage of the tick-to-quote path (mmengine.latency): bucket counts over
        # stage_bounds_us since start, and p50/p99 of the latest samples.
        "stages": stages,
        "stage_bounds_us": list(STAGE_BOUNDS_US),
    }


def _counters(stats: Any) -> dict[str, int]:
    return {name: getattr(stats, name) for name in getattr(stats, "__slots__", ())}


class StatusPublisher(ServiceThread):
    """Publishes a status snapshot on `ipc://<run_dir>/status` once a second."""

    def __init__(self, engine: Reporting, ctx: zmq.Context, endpoint: str, interval_s: float = 1.0):
        super().__init__("status")
        self.engine = engine
        self.ctx = ctx
        self.endpoint = endpoint
        self.interval_s = interval_s

    def run(self) -> None:
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        try:
            pub.bind(self.endpoint)
            os.chmod(self.endpoint.removeprefix("ipc://"), 0o600)
        except (zmq.ZMQError, OSError) as exc:
            self._not_bound(exc, (pub,))
            return
        self.ready.set()
        try:
            while not self._stop_event.wait(self.interval_s):
                try:
                    doc = snapshot(self.engine)
                except Exception:  # a status bug must never take the engine down
                    log.exception("status snapshot failed")
                    continue
                pub.send_multipart((STATUS_TOPIC, json.dumps(doc).encode()))
        finally:
            pub.close()
