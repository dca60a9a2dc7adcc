"""Benchmark: what the spool's fsync policy costs the writer thread (limits.fsync).

The situation where fsync matters: the sink is away, so every Price the writer accepts is
appended to a segment file. This drives a Spool the way a writer thread does -- put the
records that arrived since the last loop, then `flush()` -- at an offered rate, for each
policy, in one run (so the ratios compare like with like on a noisy machine), and reports
the writer-thread time per loop and per record, the fsync count and the fsync duration.

    .venv/bin/python scripts/bench_fsync.py [--rate 5000] [--seconds 3] [--dir PATH]

Run it on the file system the spool will live on: fsync cost is the disk's, not Python's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mmengine.bus import pack_frames
from mmengine.codec import Codec, price_record
from mmengine.model import Price
from mmengine.pricing.worker import SINK_KEY
from mmengine.sinks.spool import Spool

POLICIES: list[tuple[str, float | None]] = [
    ("none", None),
    ("interval_ms: 1000", 1.0),
    ("interval_ms: 100", 0.1),
    ("interval_ms: 10", 0.01),
    ("interval_ms: 0", 0.0),
]
LOOP_S = 0.005  # a writer loop wakes about this often while records arrive


def record(codec: Codec, seq: int) -> bytes:
    now = time.time_ns()
    price = Price("BTC-USDT", 1, seq, 100.0, 99.5, 1.0, 100.5, 2.0, ["a", "b"], now, now, now)
    payload = codec.encode(price_record(price))
    return pack_frames([b"BTC-USDT", SINK_KEY.pack(1, seq, now), payload])


def run(directory: Path, interval: float | None, rate: float, seconds: float) -> dict[str, Any]:
    codec = Codec("price.avsc")
    records = [record(codec, seq) for seq in range(1, 1001)]  # built before the clock runs
    spool = Spool(directory, 1 << 34, fsync_interval_s=interval, name="bench")
    spool.set_away(True)  # the sink is away: everything goes to disk
    busy = 0.0
    loops = 0
    n = 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate)
        t0 = time.perf_counter()
        while n < due:
            spool.put(records[n % 1000])
            n += 1
        spool.flush()
        busy += time.perf_counter() - t0
        loops += 1
        time.sleep(LOOP_S)
    stats = spool.stats
    spool.close()
    return {
        "records": n,
        "loops": loops,
        "busy_ms_per_loop": busy / loops * 1e3,
        "busy_us_per_record": busy / max(n, 1) * 1e6,
        "writer_busy_fraction": busy / seconds,
        "fsyncs": stats.fsyncs,
        "fsync_ms_mean": stats.fsync_ns / max(stats.fsyncs, 1) / 1e6,
        "fsync_share_of_busy": stats.fsync_ns / 1e9 / busy if busy else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="records/s offered")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", type=Path, default=None, help="where the spools go")
    args = parser.parse_args()
    results = {}
    for name, interval in POLICIES:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-fsync-") as tmp:
            results[name] = run(Path(tmp), interval, args.rate, args.seconds)
        r = results[name]
        print(
            f"{name:<18} {r['records']:>7} records  {r['busy_us_per_record']:6.2f} us/record  "
            f"writer busy {r['writer_busy_fraction'] * 100:5.1f} %  {r['fsyncs']:>5} fsyncs "
            f"of {r['fsync_ms_mean']:6.2f} ms ({r['fsync_share_of_busy'] * 100:4.1f} % of busy)"
        )
    print(json.dumps({"rate": args.rate, "seconds": args.seconds, "results": results}))


if __name__ == "__main__":
    main()
