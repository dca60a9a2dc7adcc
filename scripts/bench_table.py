"""Print bench/results/latest.json (and soak.json if present) as Markdown tables for the
README's Performance section (main thread).

    python scripts/bench_table.py [bench/results/latest.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def fmt(value: Any, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "latest.json"
    d = json.loads(path.read_text())
    m = d["machine"]
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']};"
        f" commit `{d['commit']}`.\n"
    )
    print(
        "| capture | source | mmengine µs/book frame (compiled core) | same, fresh process |"
        " python reference core µs | cryptofeed 2.4.1 µs | orjson floor µs |"
        " cryptofeed ÷ mmengine | mmengine ÷ floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in d["replay"].items():
        if "mmengine_us" not in r:
            continue
        cf = fmt(r.get("cryptofeed_us"), ".1f")
        if r.get("cryptofeed_source") and r["cryptofeed_source"] != "same run, same frames":
            cf += "*"
        print(
            f"| {name} | {r.get('source', '')} | {fmt(r['mmengine_us'], '.1f')} |"
            f" {fmt(r.get('fresh_process_us'), '.1f')} | {fmt(r.get('python_core_us'), '.1f')} |"
            f" {cf} | {fmt(r['floor_us'], '.2f')} |"
            f" {fmt(r.get('ratio_vs_cryptofeed'), '.2f')} | {fmt(r['ratio_vs_floor'], '.1f')} |"
        )
    if any(
        r.get("cryptofeed_source", "") not in (None, "same run, same frames")
        for r in d["replay"].values()
    ):
        print("\n\\* cryptofeed cannot read this capture (recorded from our simulator): its figure")
        print("on the venue's live capture in peer-baseline.md, for scale only.")
    depth = d.get("book_depth") or {}
    if depth:
        print()
        print(
            "| core | levels per side | new best level ns | best level's size ns | deep level ns |"
        )
        print("|---|---|---|---|---|")
        for core, by_depth in depth.items():
            for levels, row in by_depth.items():
                print(
                    f"| {core} | {int(levels):,} | {fmt(row['new_top'])} | {fmt(row['top_size'])} |"
                    f" {fmt(row['deep'])} |"
                )
    print()
    print(
        "| book msgs/s offered | p50 µs | p99 µs | p99.9 µs | max µs | engine p50 / p99 µs |"
        " parsed by venue threads | superseded at the source | priced | conflation | dropped |"
        " engine CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in d["e2e"]:
        print(
            f"| {fmt(r['rate'])} | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} |"
            f" {fmt(r['p999_us'])} | {fmt(r['max_us'])} |"
            f" {fmt(r['engine_p50_us'])} / {fmt(r['engine_p99_us'])} |"
            f" {fmt(r['received_by_venue_threads'])} |"
            f" {fmt(r.get('book_tops_superseded_at_source'))} | {fmt(r['priced'])} |"
            f" {fmt(r['conflation'], '.1f')} | {r['dropped']} | {fmt(r['cpu_pct'], '.0f')} |"
        )
    print()
    stages = [r for r in d["e2e"] if r.get("stages")]
    if stages:
        names = list(stages[0]["stages"])
        print(
            "| stage (µs, p50 / p99) | " + " | ".join(f"{fmt(r['rate'])}/s" for r in stages) + " |"
        )
        print("|---|" + "---|" * len(stages))
        for name in names:
            cells = []
            for r in stages:
                st = r["stages"].get(name) or {}
                cells.append(f"{fmt(st.get('p50_us'))} / {fmt(st.get('p99_us'))}")
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()
    cpu_rows = [r for r in d["e2e"] if r.get("thread_cpu")]
    if cpu_rows:
        print(
            "| book msgs/s offered | venue threads ms/s | pricing ms/s | other ms/s |"
            " venue-thread CPU µs a frame | pricing CPU µs a Price |"
        )
        print("|---|---|---|---|---|---|")
        for r in cpu_rows:
            tc = r["thread_cpu"]
            ms = tc.get("ms_per_s") or {}
            venue = sum(v for n, v in ms.items() if n.startswith("venue-"))
            pricing = sum(v for n, v in ms.items() if n.startswith("pricing-"))
            other = sum(ms.values()) - venue - pricing
            print(
                f"| {fmt(r['rate'])} | {fmt(venue)} | {fmt(pricing)} | {fmt(other)} |"
                f" {fmt(tc.get('venue_threads_us_per_frame'), '.1f')} |"
                f" {fmt(tc.get('pricing_us_per_price'), '.1f')} |"
            )
        print()
    if stages:
        print(
            "| book msgs/s offered | generator achieved | generator wake lag p99 µs |"
            " generator fell behind | engine read /s | engine fell behind (generator held MB) |"
        )
        print("|---|---|---|---|---|---|")
        for r in stages:
            g = r.get("loadgen") or {}
            held = (g.get("backlog_max_bytes") or 0) / 2**20
            print(
                f"| {fmt(r['rate'])} | {fmt(g.get('achieved_per_s'))} |"
                f" {fmt(g.get('wake_lag_p99_us'))} | {'yes' if g.get('fell_behind') else 'no'} |"
                f" {fmt(g.get('engine_intake_per_s'))} |"
                f" {'yes' if g.get('engine_fell_behind') else 'no'} ({held:,.1f}) |"
            )
        print()
    print(
        "| sink | Prices/s sustained (flat out) | delivered at 20,000/s offered"
        " | delivery lag p50 / p99 ms | lag measured at |"
    )
    print("|---|---|---|---|---|")
    load = d["sinks"].get("engine_load")  # the engine pricing beside the sinks, not a sink
    for name, s in d["sinks"].items():
        if s and "prices_per_s" in s:
            at = s.get("lag_measured_at_offered_per_s", 20_000)
            print(
                f"| {name} | {fmt(s['prices_per_s'])} |"
                f" {fmt(s.get('delivered_per_s_at_20k_offered'))} |"
                f" {fmt(s['lag_p50_ms'], '.1f')} / {fmt(s['lag_p99_ms'], '.1f')} |"
                f" {fmt(at)} Prices/s offered |"
            )
    if load:
        print(
            f"\nMeanwhile an engine priced {fmt(load['rate'])} book msgs/s from the load"
            f" generator: frame -> subscriber p50 {fmt(load['p50_us'])} us, p99"
            f" {fmt(load['p99_us'])} us, engine CPU {fmt(load['cpu_pct'])} %."
        )
    soak = RESULTS / "soak.json"
    if soak.exists():
        mem = json.loads(soak.read_text())["memory"]
        print(
            f"\nSoak ({mem['samples']} s at 10,000 msgs/s): RSS {mem['rss_start_mb']} →"
            f" {mem['rss_end_mb']} MB ({mem['growth_pct']:+.1f} %)."
        )


if __name__ == "__main__":
    main()
