"""Benchmark: `mmengine replay`'s book path over each capture (main thread only).

Reads each capture once, then replays it through its venue module `--runs` times (after one
warm-up run) and prints the median `us_per_book_frame`: decode, validate, apply, verify and
publish every book frame, checksums on, file reading excluded (the figure `mmengine replay
--json` gives). Every timed pass builds a new venue connection, so nothing a connection
remembers (decimal strings, checksum texts) carries over from an earlier pass.

Beside it, the decode floor: `orjson.loads` of every text the book path decodes (the book
frames, and the REST snapshot bodies it fetched: Binance), per book frame, one floor pass
after each book-path pass; the ratio is the median of the passes' ratios; with `--fresh N`,
the median of N `mmengine replay CAPTURE --json` runs, each in a fresh process.

    .venv/bin/python scripts/bench_replay.py [--runs 7] [--core compiled|python] [--fresh 3]
                                             [CAPTURE ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from mmengine.book.core import ENV
from mmengine.capture import CaptureEvent, read_capture
from mmengine.replay import (
    CaptureSession,
    UnsupportedCapture,
    plan_replay,
    recorded_venues,
    replay_events,
)
from mmengine.venues.registry import open_venue

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def venues_of(header: dict[str, Any]) -> list[str | None]:
    """The venue names to replay one at a time (a `record` capture may hold several)."""
    names = [str(v.get("name")) for v in recorded_venues(header)]
    return list(names) if len(names) > 1 else [None]


def book_path_texts(
    header: dict[str, Any], events: list[CaptureEvent], venue_name: str | None
) -> tuple[list[str], int]:
    """(every text the book path decodes, book frames): the frames that were book messages
    and the REST bodies the venue fetched, found by one untimed replay."""
    plan = plan_replay(header, events, venue_name=venue_name)
    session = CaptureSession([e for e in plan.events if e.kind == "http"])
    bodies: list[str] = []
    answers = session.fetched

    def fetched() -> list[tuple[Any, str | None, str, int]]:
        got = answers()
        bodies.extend(answer[1] for answer in got if answer[1] is not None)
        return got

    session.fetched = fetched  # type: ignore[method-assign]
    driver = open_venue(plan.spec, session)
    driver.on_connected()
    texts: list[str] = []
    seen: set[str] = set()
    for e in sorted((e for e in plan.events if e.kind in ("recv", "connect")), key=lambda e: e.ts):
        if e.kind == "connect":
            if e.conn in seen:  # a reconnect, as replay does it
                driver.on_disconnected()
                driver.on_connected()
            seen.add(e.conn)
            continue
        before = driver.venue_stats.book_frames
        driver.receive(e.data, int(e.ts * 1e9))
        if driver.venue_stats.book_frames != before:
            texts.append(e.data)
    return texts + bodies, driver.venue_stats.book_frames


def decode_floor_us(texts: list[str], book_frames: int, runs: int) -> float:
    """The median time of `orjson.loads` over `texts`, per book frame."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for text in texts:
            orjson.loads(text)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / max(book_frames, 1) * 1e6


def fresh_process_us(path: Path, venue_name: str | None, runs: int, core: str) -> float:
    """The median `us_per_book_frame` of `mmengine replay PATH --json`, each run a new
    process (nothing warmed by an earlier pass: what a user sees)."""
    cli = [sys.executable, "-m", "mmengine.cli", "replay", str(path), "--json"]
    if venue_name is not None:
        cli += ["--venue", venue_name]
    figures = []
    for _ in range(runs):
        run = subprocess.run(
            cli, capture_output=True, text=True, check=True, env={**os.environ, ENV: core}
        )
        figures.append(float(json.loads(run.stdout)["us_per_book_frame"]))
    return statistics.median(figures)


def bench(path: Path, runs: int, core: str = "compiled", fresh: int = 0) -> list[dict[str, Any]]:
    """Replay `path` once to warm up, then `runs` times, with the `core` book core: the
    median and best µs per book frame, and the decode floor, for each venue of the capture."""
    header, events = read_capture(path)
    out = []
    previous = os.environ.get(ENV)
    os.environ[ENV] = core
    try:
        for venue_name in venues_of(header):
            replay_events(header, events, venue_name=venue_name)  # warm-up
            texts, counted = book_path_texts(header, events, venue_name)
            figures = []
            floors = []
            ratios = []
            # Each pass of the book path is followed by a pass of the floor, and the ratio is
            # the median of the pairs': on a shared machine the speed drifts between passes
            # (±20 % in minutes), and two medians taken apart drift apart with it.
            for _ in range(runs):
                gc.collect()
                result = replay_events(header, events, venue_name=venue_name)
                book_frames = result.venue.venue_stats.book_frames
                figures.append(result.seconds / book_frames * 1e6)
                floors.append(decode_floor_us(texts, counted, 1))
                ratios.append(figures[-1] / floors[-1])
            median = statistics.median(figures)
            floor = statistics.median(floors)
            label = path.name if venue_name is None else f"{path.name}:{venue_name}"
            out.append(
                {
                    "capture": label,
                    "protocol": result.protocol,
                    "book_core": result.venue.core.name,
                    "book_frames": book_frames,
                    "us_per_book_frame": round(median, 2),
                    "min": round(min(figures), 2),
                    "runs": runs,
                    "floor_us": round(floor, 2),
                    "ratio_vs_floor": round(statistics.median(ratios), 2),  # of the pairs
                    "fresh_process_us": round(fresh_process_us(path, venue_name, fresh, core), 2)
                    if fresh
                    else None,
                }
            )
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "captures", nargs="*", type=Path, help="default: every tests/data/*.jsonl.gz"
    )
    parser.add_argument("--runs", type=int, default=7, help="timed runs per capture (>= 5)")
    parser.add_argument("--core", choices=["compiled", "python"], default="compiled")
    parser.add_argument("--fresh", type=int, default=0, help="also N fresh-process CLI runs")
    args = parser.parse_args(argv)
    runs = max(5, args.runs)
    captures = args.captures or sorted(DATA.glob("*.jsonl.gz"))
    print(
        f"{'capture':<28} {'core':<8} {'frames':>6} {'us/frame median':>15} {'min':>7}"
        f" {'floor us':>8} {'x floor':>7} {'fresh process us':>16}"
    )
    for path in captures:
        try:
            results = bench(path, runs, args.core, args.fresh)
        except UnsupportedCapture as exc:
            print(f"{path.name:<28} unsupported: {exc}")
            continue
        for r in results:
            fresh = "-" if r["fresh_process_us"] is None else r["fresh_process_us"]
            print(
                f"{r['capture']:<28} {r['book_core']:<8} {r['book_frames']:>6} "
                f"{r['us_per_book_frame']:>15} {r['min']:>7} {r['floor_us']:>8} "
                f"{r['ratio_vs_floor']:>7} {fresh:>16}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
