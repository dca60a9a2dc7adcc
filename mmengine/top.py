"""`mmengine top`: a live terminal dashboard of a running engine (main thread of `top`).

It subscribes to the engine's status stream (`ipc://<run_dir>/status`, one JSON snapshot a
second) and redraws: venues, instruments, pricing workers, sinks. `q` or Ctrl-C quits.
Works over ssh and inside tmux: it only needs a terminal, no mouse, no colours required.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

import zmq
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mmengine.status import STATUS_TOPIC, percentile_us


class Rates:
    """Per-second rates from successive snapshots (counters are cumulative)."""

    def __init__(self) -> None:
        self.prev: dict[str, tuple[float, float]] = {}

    def rate(self, key: str, value: float, ts: float) -> float:
        prev = self.prev.get(key)
        self.prev[key] = (value, ts)
        if prev is None or ts <= prev[1]:
            return 0.0
        return (value - prev[0]) / (ts - prev[1])


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def render(snap: dict[str, Any], rates: Rates, latency: dict[str, list[int]]) -> Group:
    """The dashboard for one snapshot. `latency` keeps the previous histogram per worker, so
    percentiles cover the last interval rather than the whole run."""
    ts = snap["ts_ns"] / 1e9
    head = Text(
        f"mmengine  pid {snap['pid']}  epoch {snap['epoch']}  up {snap['uptime_s']:.0f}s   "
        "(q quits)",
        style="bold",
    )
    died = [t for t in snap.get("threads", ()) if t["deaths"]]
    if died:  # supervision: which threads died, and whether they are back
        head.append(
            f"\n{sum(t['deaths'] for t in died)} thread death(s): "
            + ", ".join(
                f"{t['name']} ({t['restarts']} restarts{'' if t['alive'] else ', DOWN'})"
                for t in died
            ),
            style="bold red",
        )
    venues = Table(title="venues", expand=True, title_justify="left")
    for col in (
        "venue",
        "protocol",
        "conn",
        "msgs/s",
        "LIVE/books",
        "resyncs",
        "skipped",
        "reconnects",
        "last msg age",
    ):
        venues.add_column(col, justify="left" if col in ("venue", "protocol") else "right")
    for v in snap["venues"]:
        ages = [b["age_s"] for b in v["books"] if b["age_s"] is not None]
        venues.add_row(
            v["name"],
            v["protocol"],
            "up" if v["connected"] else "DOWN",
            f"{rates.rate('v:' + v['name'], v['frames'], ts):,.0f}",
            f"{v['live']}/{len(v['books'])}",
            str(sum(v["resyncs"].values())),
            str(sum(v["skipped"].values())),
            str(v["reconnects"]),
            _fmt(min(ages) if ages else None, ".2f") + "s",
        )
    instruments = Table(title="instruments", expand=True, title_justify="left")
    for col in (
        "instrument",
        "seq",
        "fair value",
        "spread bp",
        "vol bp",
        "pos",
        "venues used",
        "excluded",
        "state",
    ):
        instruments.add_column(
            col,
            justify="left"
            if col in ("instrument", "venues used", "excluded", "state")
            else "right",
        )
    for i in snap["instruments"]:
        instruments.add_row(
            i["instrument"],
            str(i["seq"]),
            f"{i['fair_value']:.6g}",
            _fmt(i["spread_bps"], ".2f"),
            f"{i['volatility_bps']:.2f}",
            f"{i['position']:g}",
            ",".join(i["venues_used"]),
            " ".join(i["venues_excluded"]) or "-",
            f"HALTED {i['halt_reason']}" if i["halted"] else "quoting",
        )
    workers = Table(title="pricing", expand=True, title_justify="left")
    for col in ("worker", "in/s", "prices/s", "conflation", "queue", "p50 µs", "p99 µs"):
        workers.add_column(col, justify="right")
    for w in snap["workers"]:
        key = f"w{w['worker']}"
        prev = latency.get(key, [0] * len(w["latency_counts"]))
        window = [a - b for a, b in zip(w["latency_counts"], prev, strict=True)]
        latency[key] = w["latency_counts"]
        in_rate = rates.rate(key + ":in", w["inputs"], ts)
        out_rate = rates.rate(key + ":out", w["prices"], ts)
        workers.add_row(
            str(w["worker"]),
            f"{in_rate:,.0f}",
            f"{out_rate:,.0f}",
            _fmt(in_rate / out_rate if out_rate else None, ".2f"),
            str(w["last_drain"]),
            _fmt(percentile_us(window, 0.5), ".0f"),
            _fmt(percentile_us(window, 0.99), ".0f"),
        )
    parts: list[Any] = [head, venues, instruments, workers]
    if snap["sinks"]:
        sinks = Table(title="sinks", expand=True, title_justify="left")
        for col in ("sink", "delivered", "spooled", "spool bytes", "dropped", "lag ms"):
            sinks.add_column(col, justify="left" if col == "sink" else "right")
        for s in snap["sinks"]:
            lag = s.get("delivery_lag_ns", s.get("lag_ns"))
            sinks.add_row(
                s["name"],
                str(s.get("acknowledged", s.get("written", 0))),
                str(s.get("spooled", 0)),
                str(s.get("spool_bytes", 0)),
                str(s.get("dropped", 0)),
                _fmt(lag / 1e6 if lag else None, ".1f"),
            )
        parts.append(sinks)
    return Group(*parts)


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """Single key presses from a terminal (cbreak mode), restored on exit."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(endpoint: str, once: bool = False, timeout_s: float = 10.0) -> int:
    """Attach to a status endpoint and draw until `q`, Ctrl-C, or one frame with `once`."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC)
    sub.connect(endpoint)
    console = Console()
    rates = Rates()
    latency: dict[str, list[int]] = {}
    try:
        if once:
            # Two snapshots, so rates and latency cover one interval.
            snaps = []
            deadline = time.monotonic() + timeout_s
            while len(snaps) < 2 and time.monotonic() < deadline:
                if sub.poll(200):
                    snaps.append(json.loads(sub.recv_multipart()[1]))
            if not snaps:
                console.print(f"no status from {endpoint} within {timeout_s:.0f}s")
                return 1
            for snap in snaps[:-1]:
                render(snap, rates, latency)
            console.print(render(snaps[-1], rates, latency))
            return 0
        with (
            _keys() as fd,
            Live(
                Text("waiting for the engine's status..."),
                console=console,
                screen=False,
                auto_refresh=False,
            ) as live,
        ):
            while True:
                pressed = fd is not None and select.select([fd], [], [], 0)[0]
                if pressed and os.read(fd, 1) in (b"q", b"Q"):
                    return 0
                if sub.poll(100):
                    snap = json.loads(sub.recv_multipart()[1])
                    live.update(render(snap, rates, latency), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        sub.close()
        ctx.term()
