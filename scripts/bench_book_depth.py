"""Benchmark: the cost of one book update at 100 and at 50,000 levels per side, for each
book core (main thread only).

Per core and depth, a book is loaded with `depth` levels per side, then timed over updates
of the kinds a venue sends, each applied the way the driver applies a frame side (decoded by
the core's `LevelDecoder`, then `L2Book.apply`):
- `new_top`: a new best bid inserted, then deleted (the reference's sorted list moves the
  whole side for it: the growth with depth users of the peers complain about);
- `top_size`: the size of the best bid changed;
- `deep`: a level inside the book inserted, then deleted.
Prints ns per update (decode included) and writes nothing.

    .venv/bin/python scripts/bench_book_depth.py [--depths 100,50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from mmengine.book.core import book_core

BEST_BID = 100_000.0  # levels 0.5 apart below it (bids) and above it (asks)


def book_of(core: Any, depth: int) -> tuple[Any, Any]:
    decoder = core.decoder()
    bids = [[f"{BEST_BID - i * 0.5:.1f}", "1.5"] for i in range(depth)]
    asks = [[f"{BEST_BID + 0.5 + i * 0.5:.1f}", "2.5"] for i in range(depth)]
    book = core.book("bench", "BTC-USD", depth * 2)
    book.load(decoder.rows(bids), decoder.rows(asks))
    return book, decoder


def per_update_ns(core: Any, depth: int, kind: str, repeat: int, n: int = 20_000) -> float:
    """The median over `repeat` runs of the time per update, ns."""
    book, decoder = book_of(core, depth)
    if kind == "new_top":
        frames = [[[f"{BEST_BID + 0.2:.1f}", "1"]], [[f"{BEST_BID + 0.2:.1f}", "0"]]]
    elif kind == "top_size":
        frames = [[[f"{BEST_BID:.1f}", "3"]], [[f"{BEST_BID:.1f}", "1.5"]]]
    else:
        price = f"{BEST_BID - (depth // 2) * 0.5 - 0.2:.1f}"
        frames = [[[price, "1"]], [[price, "0"]]]
    empty: list[Any] = []
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n // 2):
            for rows in frames:
                book.apply(decoder.rows(rows), empty)
        times.append((time.perf_counter() - start) / n * 1e9)
    return statistics.median(times)


def figures(depths: list[int], repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("compiled", "python"):
        core = book_core(name)
        out[name] = {
            str(depth): {
                kind: round(per_update_ns(core, depth, kind, repeat))
                for kind in ("new_top", "top_size", "deep")
            }
            for depth in depths
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="100,50000", help="levels per side, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    result = figures(depths, args.repeat)
    print(f"{'core':<9} {'levels/side':>11} {'new_top ns':>11} {'top_size ns':>12} {'deep ns':>8}")
    for core, by_depth in result.items():
        for depth, row in by_depth.items():
            print(
                f"{core:<9} {depth:>11} {row['new_top']:>11} {row['top_size']:>12} {row['deep']:>8}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
