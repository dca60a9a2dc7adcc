"""Benchmark: `mmengine replay`'s book path over each capture (main thread only).

Reads each capture once, then replays it through the venue module `--runs` times (after one
warm-up run) and prints the median `us_per_book_frame`: decode, apply and verify every book
frame, checksums on, file reading excluded (the same figure `mmengine replay --json` gives).

    .venv/bin/python scripts/bench_replay.py [--runs 7] [CAPTURE ...]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path

from mmengine.capture import read_capture
from mmengine.replay import UnsupportedCapture, recorded_venues, replay_events

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def bench(path: Path, runs: int) -> list[dict[str, object]]:
    """Replay `path` once to warm up, then `runs` times: the median and best µs per book
    frame, for each venue of the capture (a `record` capture may hold several)."""
    header, events = read_capture(path)
    names = [str(v.get("name")) for v in recorded_venues(header)]
    out = []
    for venue_name in names if len(names) > 1 else [None]:
        replay_events(header, events, venue_name=venue_name)  # warm-up
        figures = []
        for _ in range(runs):
            gc.collect()
            result = replay_events(header, events, venue_name=venue_name)
            book_frames = result.venue.venue_stats.book_frames
            figures.append(result.seconds / book_frames * 1e6)
        label = path.name if venue_name is None else f"{path.name}:{venue_name}"
        out.append(
            {
                "capture": label,
                "protocol": result.protocol,
                "book_frames": book_frames,
                "us_per_book_frame": round(statistics.median(figures), 2),
                "min": round(min(figures), 2),
                "runs": runs,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "captures", nargs="*", type=Path, help="default: every tests/data/*.jsonl.gz"
    )
    parser.add_argument("--runs", type=int, default=7, help="timed runs per capture (>= 5)")
    args = parser.parse_args(argv)
    runs = max(5, args.runs)
    captures = args.captures or sorted(DATA.glob("*.jsonl.gz"))
    print(
        f"{'capture':<28} {'protocol':<18} {'book frames':>11} {'us/frame median':>16} {'min':>7}"
    )
    for path in captures:
        try:
            results = bench(path, runs)
        except UnsupportedCapture as exc:
            print(f"{path.name:<28} unsupported: {exc}")
            continue
        for r in results:
            print(
                f"{r['capture']:<28} {r['protocol']:<18} {r['book_frames']:>11} "
                f"{r['us_per_book_frame']:>16} {r['min']:>7}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
