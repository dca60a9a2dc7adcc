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
from collections.abc import Callable, Iterator
from typing import Any

import zmq
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mmengine.ops.status import STATUS_TOPIC


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


WIDE = 120  # from this many columns on, the tables add protocols and venue names

# `thread_cpu_s` of the status, summed by what the threads do (by name): the first prefix
# that matches; anything else (status, control, supervisor, metrics) is "other".
CPU_GROUPS = (
    ("venues", ("venue-",)),
    ("pricing", ("pricing-",)),
    ("sinks", ("kafka-", "pg-")),
)


def cpu_line(snap: dict[str, Any], rates: Rates) -> Text | None:
    """Cores each kind of engine thread used since the previous snapshot; None before the
    engine reports thread CPU (an older engine, or not Linux)."""
    cpu = snap.get("thread_cpu_s")
    if not cpu:
        return None
    ts = snap["ts_ns"] / 1e9
    totals = {group: 0.0 for group, _ in CPU_GROUPS} | {"other": 0.0}
    for name, seconds in cpu.items():
        group = next((g for g, prefixes in CPU_GROUPS if name.startswith(prefixes)), "other")
        totals[group] += seconds
    used = {group: rates.rate("cpu:" + group, seconds, ts) for group, seconds in totals.items()}
    text = "  ".join(f"{group} {cores:.2f}" for group, cores in used.items())
    # Every Python thread takes turns on one interpreter lock: near one core in all, the
    # engine is saturated and Prices wait in its queues.
    return Text(f"cpu (cores)  {text}  = {sum(used.values()):.2f}")


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A table whose cells are never cut: numbers do not wrap, text columns fold."""
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        expand=False,
    )
    for name, kind in columns:
        if kind == "text":
            table.add_column(name, justify="left", overflow="fold")
        else:
            table.add_column(name, justify="right", no_wrap=True)
    return table


def _fit(table: Table, rows: list[list[str]]) -> Table:
    """Add `rows`; text columns get at least their longest word, so they fold between
    words (venue lists) rather than inside a name."""
    for row in rows:
        table.add_row(*row)
    for n, column in enumerate(table.columns):
        if column.overflow == "fold":
            words = [w for row in rows for w in row[n].split()] + [str(column.header)]
            column.min_width = max((len(w) for w in words), default=1)
    return table


def render(
    snap: dict[str, Any],
    rates: Rates,
    latency: dict[str, list[int]] | None = None,
    width: int = 100,
) -> Group:
    """The dashboard for one snapshot, laid out for a terminal `width` columns wide (100 fits
    every number; wider adds protocols and the names of the venues used).

    Latency percentiles are the engine's own, over its latest priced instruments (a recent
    window of real latencies, not histogram bucket edges). `latency` is unused (kept for
    callers of the older signature)."""
    wide = width >= WIDE
    ts = snap["ts_ns"] / 1e9
    head = Text(
        f"mmengine  pid {snap['pid']}  epoch {snap['epoch']}  up {snap['uptime_s']:,.0f}s   "
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
    venue_cols = [("venue", "text")]
    if wide:
        venue_cols.append(("protocol", "text"))
    venue_cols += [
        ("conn", "num"),
        ("msgs/s", "num"),
        ("LIVE/\nbooks", "num"),
        ("resyncs", "num"),
        ("skipped", "num"),
        ("reconnect\ntries", "num"),
        ("last msg\nage", "num"),
    ]
    venue_rows = []
    for v in snap["venues"]:
        ages = [b["age_s"] for b in v["books"] if b["age_s"] is not None]
        row = [v["name"]] + ([v["protocol"]] if wide else [])
        row += [
            "up" if v["connected"] else "DOWN",
            f"{rates.rate('v:' + v['name'], v['frames'], ts):,.0f}",
            f"{v['live']}/{len(v['books'])}",
            f"{sum(v['resyncs'].values()):,}",
            f"{sum(v['skipped'].values()):,}",
            f"{v['reconnects']:,}",
            _fmt(min(ages) if ages else None, ".2f") + "s",
        ]
        venue_rows.append(row)
    venues = _fit(_table("venues", venue_cols), venue_rows)
    instrument_rows = []
    exclusions = []
    for i in snap["instruments"]:
        used, excluded = i["venues_used"], i["venues_excluded"]
        row = [
            i["instrument"],
            f"{i['seq']:,}",
            f"{i['fair_value']:,.8g}",
            _fmt(i.get("quoted_spread_bps"), ".2f"),
            f"{i['volatility_bps']:.2f}",
            f"{i['position']:g}",
            "CROSSED" if i.get("crossed") else "no",
        ]
        if wide:
            row += [" ".join(used) or "-", " ".join(excluded) or "-"]
        else:
            row.append(f"{len(used)}/{len(used) + len(excluded)}")
            if excluded:
                exclusions.append(f"{i['instrument']}: {' '.join(excluded)}")
        row.append(f"HALTED {i['halt_reason']}" if i["halted"] else "quoting")
        instrument_rows.append(row)
    instrument_cols = [
        ("instrument", "text"),
        ("seq", "num"),
        ("fair value", "num"),
        ("spread\nbp", "num"),
        ("vol\nbp", "num"),
        ("position", "num"),
        ("venues\ncrossed", "num"),
    ]
    if wide:
        instrument_cols += [("venues used", "text"), ("excluded", "text")]
    else:
        instrument_cols.append(("venues\nused", "num"))
    instrument_cols.append(("state", "text"))
    instruments = _fit(
        _table(
            "instruments (spread: of the quoted ladder; crossed: venues' books cross each other)",
            instrument_cols,
        ),
        instrument_rows,
    )
    workers = _table(
        "pricing (latency: received -> priced, recent prices)",
        [
            ("worker", "num"),
            ("in/s", "num"),
            ("prices/s", "num"),
            ("conflation", "num"),
            ("queue", "num"),
            ("p50 µs", "num"),
            ("p99 µs", "num"),
        ],
    )
    for w in snap["workers"]:
        key = f"w{w['worker']}"
        in_rate = rates.rate(key + ":in", w["inputs"], ts)
        out_rate = rates.rate(key + ":out", w["prices"], ts)
        window = w.get("latency_window_us") or {}
        workers.add_row(
            str(w["worker"]),
            f"{in_rate:,.0f}",
            f"{out_rate:,.0f}",
            _fmt(in_rate / out_rate if out_rate else None, ".2f"),
            f"{w['last_drain']:,}",
            _fmt(window.get("p50"), ",.0f"),
            _fmt(window.get("p99"), ",.0f"),
        )
    parts: list[Any] = [head, venues, instruments]
    if exclusions:
        parts.append(Text("excluded  " + "\n          ".join(exclusions)))
    parts.append(workers)
    cpu = cpu_line(snap, rates)
    if cpu is not None:
        parts.append(cpu)
    stages = snap.get("stages") or {}
    if stages:
        table = _table(
            "latency by stage (µs; p50/p99 of recent Prices, count since start)",
            [("stage", "text"), ("p50 µs", "num"), ("p99 µs", "num"), ("count", "num")],
        )
        for name, st in stages.items():
            table.add_row(
                name,
                _fmt(st.get("p50_us"), ",.0f"),
                _fmt(st.get("p99_us"), ",.0f"),
                f"{st.get('count', 0):,}",
            )
        parts.append(table)
    if snap["sinks"]:
        sinks = _table(
            "sinks",
            [
                ("sink", "text"),
                ("delivered", "num"),
                ("in spool", "num"),
                ("spool bytes", "num"),
                ("dropped", "num"),
                ("lag ms", "num"),
            ],
        )
        for s in snap["sinks"]:
            lag = s.get("delivery_lag_ns", s.get("lag_ns"))
            sinks.add_row(
                s["name"],
                f"{s.get('acknowledged', s.get('written', 0)):,}",
                f"{s.get('pending', 0):,}",
                f"{s.get('spool_bytes', 0):,}",
                f"{s.get('dropped', 0):,}",
                _fmt(lag / 1e6 if lag else None, ",.1f"),
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


def run_top(
    endpoint: str,
    once: bool = False,
    timeout_s: float = 10.0,
    alive: Callable[[], bool] | None = None,
) -> int:
    """Attach to a status endpoint and draw until `q`, Ctrl-C, or one frame with `once`.

    `alive` says whether the engine still runs: while no status arrives, top checks it
    every second and exits 1 with a message when the engine has stopped."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC)
    sub.connect(endpoint)
    console = Console()
    rates = Rates()
    last_status = time.monotonic()
    try:
        if once:
            # Two snapshots, so rates cover one interval.
            snaps: list[dict[str, Any]] = []
            deadline = time.monotonic() + timeout_s
            while len(snaps) < 2 and time.monotonic() < deadline:
                if sub.poll(200):
                    snaps.append(json.loads(sub.recv_multipart()[1]))
                elif alive is not None and not alive():
                    break
            if not snaps:
                console.print(f"no status from {endpoint} within {timeout_s:.0f}s")
                return 1
            for snap in snaps[:-1]:
                render(snap, rates, width=console.width)
            console.print(render(snaps[-1], rates, width=console.width))
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
                    live.update(render(snap, rates, width=console.width), refresh=True)
                    last_status = time.monotonic()
                elif time.monotonic() - last_status > 2.5 and alive is not None and not alive():
                    live.update(Text("the engine has stopped"), refresh=True)
                    return 1
    except KeyboardInterrupt:
        return 0
    finally:
        sub.close()
        ctx.term()
