"""`make bench`: the engine's performance in one JSON file and a few plots (main thread).

1. replay: per capture in tests/data, mmengine's us per book frame with the compiled book
   core (median of >= 5 passes, every check on, each pass a new connection: nothing
   remembered from an earlier pass), the same from `mmengine replay --json` in fresh
   processes, the pure-Python reference core's, the decode floor (orjson.loads of every
   text the book path decodes: the book frames and the REST snapshot bodies), and cryptofeed
   2.4.1 on the same frames, run in its own virtualenv (.venv-peers) by
   scripts/peer_cryptofeed.py; both ratios per venue. book_depth: µs per update at 100 and
   50,000 levels per side (scripts/bench_book_depth.py).
2. e2e: simulated venues (one process each, every protocol with a simulator) at several
   total rates into a real engine process; a separate subscriber process measures
   frame received -> Price delivered, and the engine's own received -> priced.
3. sinks: Kafka (tansu) and Postgres (embedded) throughput, from their own bench scripts.
4. memory: the engine's RSS sampled each second during the e2e runs (`--soak MINUTES` runs
   the 10,000 msgs/s load for that long instead).

Writes bench/results/latest.json (and a dated copy) with the keys machine, commit, replay,
e2e, sinks, memory, and PNG plots beside it. Ratios are what to read: the machine is shared.

`--quick` (`make bench-quick`, under a minute) is a smoke check of the same figures on a
smaller run: replay without cryptofeed, one end-to-end rate, the default Kafka client and
Postgres. It prints a short table and writes bench/results/quick.json (untracked); the
tracked latest.json and plots are only written by a full run, or with `--out`.

    python scripts/bench.py [--quick] [--soak MINUTES] [--no-peers] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
RESULTS = REPO / "bench" / "results"
PEERS = REPO / ".venv-peers"
PY = sys.executable

# venue name, protocol, instruments (normalized), depth (a value the venue offers)
E2E_VENUES = (
    ("binance", "binance", ["BTC-USDT", "ETH-USDT"], 100),
    ("coinbase", "coinbase-advanced", ["BTC-USD", "ETH-USD"], 100),
    ("kraken", "kraken-v2", ["BTC-USD", "ETH-USD"], 10),
    ("okx", "okx-v5", ["BTC-USDT", "ETH-USDT"], 400),
    ("bybit", "bybit-v5-spot", ["BTC-USDT", "ETH-USDT"], 50),
)


# --- 1. replay -------------------------------------------------------------------------------


# cryptofeed 2.4.1 reads only live captures of its recording format: for a capture recorded
# from our simulator the reference is the figure measured on the venue's live capture in
# shared/docs/peer-baseline.md (median µs per book frame), labelled as such.
PEER_BASELINE_US = {"BYBIT": 12.5}


def replay_figures(capture: Path, runs: int, fresh: int) -> list[dict[str, Any]]:
    """Per venue of the capture: the compiled core's µs per book frame (median of `runs`
    passes, each on a new connection), the same in `fresh` new processes of `mmengine
    replay --json`, the pure-Python reference's, and the decode floor."""
    from bench_replay import bench as bench_replay

    compiled = bench_replay(capture, runs, "compiled", fresh)
    python = bench_replay(capture, max(5, runs // 2), "python")
    out = []
    for c, p in zip(compiled, python, strict=True):
        out.append(
            {
                "venue": c["capture"].partition(":")[2] or None,
                "book_frames": c["book_frames"],
                "mmengine_us": c["us_per_book_frame"],
                "mmengine_min_us": c["min"],
                "fresh_process_us": c["fresh_process_us"],
                "python_core_us": p["us_per_book_frame"],
                "floor_us": c["floor_us"],
            }
        )
    return out


def ensure_peers() -> Path | None:
    """cryptofeed 2.4.1 in its own virtualenv, never mixed with ours."""
    python = PEERS / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "cryptofeed==2.4.1"],
            check=True,
            timeout=600,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"cryptofeed unavailable: {exc}", file=sys.stderr)
        return None
    return python


def cryptofeed_us(python: Path, capture: Path, runs: int) -> float | None:
    script = REPO / "scripts" / "peer_cryptofeed.py"
    if not script.exists():
        return None
    run = subprocess.run(
        [str(python), str(script), str(capture), "--replays", str(runs)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if run.returncode != 0:
        print(f"cryptofeed on {capture.name} failed: {run.stderr[-500:]}", file=sys.stderr)
        return None
    return float(json.loads(run.stdout)["us_per_msg_median"])


def replay_section(runs: int, peers: bool, fresh: int = 3) -> dict[str, Any]:
    from mmengine.capture import read_capture
    from mmengine.replay import recorded_venues

    python = ensure_peers() if peers else None
    out: dict[str, Any] = {}
    for capture in sorted(DATA.glob("*.jsonl.gz")):
        header, _ = read_capture(capture)
        ours = recorded_venues(header)  # recorded by `mmengine record` (from a simulator)
        exchange = capture.name.split(".")[0]
        try:
            figures = replay_figures(capture, runs, fresh)
        except Exception as exc:  # an unsupported capture is reported, not fatal
            out[exchange] = {"error": str(exc)}
            continue
        # cryptofeed reads only real captures of its own recording format.
        cf = cryptofeed_us(python, capture, runs) if python and not ours else None
        for fig in figures:
            name = exchange + (f":{fig.pop('venue')}" if fig["venue"] else "")
            fig.pop("venue", None)
            fig["source"] = "simulator (mmengine record)" if ours else "live venue"
            fig["cryptofeed_us"] = cf
            fig["cryptofeed_source"] = "same run, same frames" if cf else None
            if cf is None and peers and exchange in PEER_BASELINE_US:
                fig["cryptofeed_us"] = PEER_BASELINE_US[exchange]
                fig["cryptofeed_source"] = "peer-baseline.md, the venue's live capture"
            cf_us = fig["cryptofeed_us"]
            fig["ratio_vs_cryptofeed"] = round(cf_us / fig["mmengine_us"], 2) if cf_us else None
            fig["ratio_vs_floor"] = round(fig["mmengine_us"] / fig["floor_us"], 2)
            out[name] = fig
            print(f"replay {name}: {fig['mmengine_us']} us/book frame", file=sys.stderr)
    return out


def depth_section(quick: bool) -> dict[str, Any]:
    """µs per book update at 100 and 50,000 levels per side, per core."""
    from bench_book_depth import figures

    return figures([100, 50_000], 3 if quick else 5)


# --- 2. end to end ---------------------------------------------------------------------------


@contextlib.contextmanager
def simulators(
    rate_each: float, sent: dict[str, int]
) -> Iterator[list[tuple[str, str, list[str], int, str, str]]]:
    """One simulator process per protocol; on exit `sent` holds each one's frames sent."""
    from mmengine.simulator import SIM_PROTOCOLS

    procs = []
    running = []
    try:
        for name, protocol, instruments, depth in E2E_VENUES:
            if protocol not in SIM_PROTOCOLS:
                print(f"no simulator for {protocol}; skipped", file=sys.stderr)
                continue
            proc = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "mmengine.cli",
                    "--log-level",
                    "WARNING",
                    "simulate",
                    "--venue",
                    protocol,
                    "--rate",
                    str(rate_each),
                    "--instruments",
                    ",".join(instruments),
                    "--seed",
                    "7",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            procs.append(proc)
            line = proc.stdout.readline() if proc.stdout else ""
            m = re.search(r"ws (\S+)\s+rest (\S+)", line)
            if not m:
                raise RuntimeError(f"{protocol} simulator did not start: {line!r}")
            running.append((name, protocol, instruments, depth, m.group(1), m.group(2)))
        yield running
    finally:
        for proc in procs:
            proc.terminate()
        for proc, (_, protocol, *_rest) in zip(procs, running, strict=False):
            out, _ = proc.communicate(timeout=20)
            m = re.search(r"simulator stopped: .*?([\d,]+) frames sent", out or "")
            sent[protocol] = int(m.group(1).replace(",", "")) if m else 0


def engine_config(venues: list[tuple[str, str, list[str], int, str, str]], run_dir: Path) -> dict:
    cfg_venues = []
    sources: dict[str, list[dict[str, str]]] = {"BTC-USD": [], "ETH-USD": []}
    for name, protocol, instruments, depth, ws, rest in venues:
        cfg_venues.append(
            {
                "name": name,
                "protocol": protocol,
                "url": ws,
                "rest_url": rest,
                "instruments": instruments,
                "depth": depth,
            }
        )
        for inst in instruments:
            sources[inst.split("-")[0] + "-USD"].append({"venue": name, "instrument": inst})
    return {
        "engine": {"run_dir": str(run_dir), "pricing_workers": 2},
        "venues": cfg_venues,
        "instruments": [
            {
                "name": n,
                "sources": s,
                "min_venues": 1,
                "outlier_bps": 10_000,
                "max_jump_bps": 10_000,
            }
            for n, s in sources.items()
        ],
        "fx": [{"pair": "USDT-USD", "fixed": 1.0}],
        "outputs": {"ipc": {"books": False}},
    }


def last_status(run_dir: Path) -> dict[str, Any]:
    import zmq

    endpoints = json.loads((run_dir / "endpoints.json").read_text())
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    sub.connect(endpoints["status"]["endpoint"])
    try:
        if not sub.poll(5000):
            return {}
        return json.loads(sub.recv_multipart()[1])
    finally:
        sub.close(0)
        ctx.term()


def e2e_run(
    rate: float, seconds: float, rss: list[tuple[float, float]], sync_s: float = 3.0
) -> dict[str, Any]:
    n_venues = len(E2E_VENUES)
    sent: dict[str, int] = {}
    with simulators(rate / n_venues, sent) as venues, tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cfg_path = Path(tmp) / "bench.yaml"
        cfg_path.write_text(yaml.safe_dump(engine_config(venues, run_dir)))
        engine = subprocess.Popen(
            [PY, "-m", "mmengine.cli", "--log-level", "WARNING", "run", "--config", str(cfg_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not (run_dir / "endpoints.json").exists():
                if engine.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"engine did not start: {engine.communicate()[0]}")
                time.sleep(0.05)
            time.sleep(sync_s)  # books sync
            proc = psutil.Process(engine.pid)
            before = last_status(run_dir)
            cpu0 = proc.cpu_times()
            t0 = time.monotonic()
            sub = subprocess.Popen(
                [
                    PY,
                    str(REPO / "scripts" / "bench_subscriber.py"),
                    f"ipc://{run_dir / 'prices'}",
                    str(seconds),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            while sub.poll() is None:
                rss.append((time.monotonic(), proc.memory_info().rss / 2**20))
                time.sleep(1.0)
            measured = json.loads(sub.communicate()[0])
            cpu1 = proc.cpu_times()
            wall = time.monotonic() - t0
            after = last_status(run_dir)
        finally:
            engine.terminate()
            out, _ = engine.communicate(timeout=30)
    frames = sum(v["frames"] for v in after["venues"]) - sum(v["frames"] for v in before["venues"])
    inputs = sum(w["inputs"] for w in after["workers"]) - sum(
        w["inputs"] for w in before["workers"]
    )
    priced = sum(w["prices"] for w in after["workers"]) - sum(
        w["prices"] for w in before["workers"]
    )
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall * 100
    skipped = sum(sum(v["skipped"].values()) for v in after["venues"])
    total_frames = sum(v["frames"] for v in after["venues"])
    return {
        "rate": rate,
        "venues": [v[1] for v in venues],
        "seconds": round(wall, 1),
        "p50_us": measured["delivered_us"]["p50"],
        "p99_us": measured["delivered_us"]["p99"],
        "p999_us": measured["delivered_us"]["p999"],
        "max_us": measured["delivered_us"]["max"],
        "engine_p50_us": measured["engine_us"]["p50"],
        "engine_p99_us": measured["engine_us"]["p99"],
        "sent": sum(sent.values()),  # whole simulator lives
        "received_by_venue_threads_total": total_frames,  # up to the last status snapshot
        "received_by_venue_threads": frames,  # within the measured window
        "book_tops_to_pricing": inputs,
        "priced": priced,
        "published": priced,
        "received_by_subscriber": measured["received"],
        "dropped": measured["missed_seq"] + skipped,
        "conflation": round(inputs / priced, 3) if priced else None,
        "cpu_pct": round(cpu, 1),
        "engine_summary": [ln for ln in out.splitlines() if " frames, " in ln][:8],
        "cdf_us": measured.get("cdf_us", []),
    }


# --- 3. sinks --------------------------------------------------------------------------------


def _json_lines(script: str, args: list[str]) -> list[dict[str, Any]]:
    run = subprocess.run(
        [PY, str(REPO / "scripts" / script), *args], capture_output=True, text=True, timeout=1200
    )
    if run.returncode != 0:
        print(f"{script} failed: {run.stderr[-800:]}", file=sys.stderr)
        return []
    out = []
    for line in run.stdout.splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                out.append(doc)
    return out


def kafka_figures(quick: bool, client: str) -> dict[str, Any] | None:
    """The writer flat out (Prices/s it sustains) and at 20,000/s offered (delivery lag)."""
    seconds = "2" if quick else "8"
    rows = _json_lines(
        "bench_kafka.py", ["--rates", "20000,max", "--seconds", seconds, "--client", client]
    )
    if len(rows) < 2:
        return None
    at_20k, flat_out = rows[0], rows[1]
    return {
        "client": client,
        "prices_per_s": flat_out["delivered_per_s"],
        "lag_p50_ms": at_20k["lag_p50_ms"],
        "lag_p99_ms": at_20k["lag_p99_ms"],
        "delivered_per_s_at_20k_offered": at_20k["delivered_per_s"],
        "pricing_wake_p99_us_at_20k": at_20k["probe_wake_p99_us"],
    }


def postgres_figures(quick: bool) -> dict[str, Any] | None:
    """The writer thread fed at 5,000 and 20,000 Prices/s."""
    args = [
        "--rows",
        "10000" if quick else "100000",
        "--sizes",
        "2000",
        "--rates",
        "5000,20000",
        "--seconds",
        "2" if quick else "8",
    ]
    rows = _json_lines("bench_postgres.py", args)
    if not rows:
        return None
    runs = rows[-1]["writer_runs"]
    top = max(runs, key=lambda r: r["prices_per_s"])
    steady = runs[0]
    return {
        "prices_per_s": top["prices_per_s"],
        "lag_p50_ms": steady["lag_p50_ms"],
        "lag_p99_ms": steady["lag_p99_ms"],
        "lag_measured_at_offered_per_s": steady["offered_per_s"],
        "runs": runs,
    }


# --- output ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = {}
    for name in (
        "websocket-client",
        "websockets",
        "pyzmq",
        "orjson",
        "fastavro",
        "kafka-python",
        "psycopg",
        "avro",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
    }


def commit() -> str:
    run = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return run.stdout.strip() or "unknown"


def plots(result: dict[str, Any], rss: list[tuple[float, float]], out_dir: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots", file=sys.stderr)
        return
    replay = {k: v for k, v in result["replay"].items() if "mmengine_us" in v}
    if replay:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = list(replay)
        xs = range(len(names))
        for i, (key, label) in enumerate(
            (
                ("mmengine_us", "mmengine"),
                ("cryptofeed_us", "cryptofeed 2.4.1"),
                ("floor_us", "orjson decode floor"),
            )
        ):
            ax.bar(
                [x + (i - 1) * 0.27 for x in xs],
                [replay[n].get(key) or 0 for n in names],
                width=0.27,
                label=label,
            )
        ax.set_xticks(list(xs), names, rotation=20, ha="right")
        ax.set_ylabel("µs per book frame")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("Replay cost per venue (lower is better)")
        fig.tight_layout()
        fig.savefig(out_dir / "replay.png", dpi=100)
        plt.close(fig)
    if rss:
        fig, ax = plt.subplots(figsize=(8, 3))
        t0 = rss[0][0]
        ax.plot([t - t0 for t, _ in rss], [m for _, m in rss])
        ax.set_xlabel("seconds")
        ax.set_ylabel("engine RSS (MiB)")
        ax.set_title("Memory over the end-to-end runs")
        fig.tight_layout()
        fig.savefig(out_dir / "rss.png", dpi=100)
        plt.close(fig)
    rows = [r for r in result["e2e"] if r.get("cdf_us")]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        for r in rows:
            ax.plot(
                [v for _, v in r["cdf_us"]],
                [q for q, _ in r["cdf_us"]],
                label=f"{r['rate']:,.0f}/s",
            )
        ax.set_xscale("log")
        ax.set_xlabel("µs, frame received by a venue thread -> Price at a subscriber process")
        ax.set_ylabel("fraction of Prices")
        ax.legend(title="total book msgs/s")
        ax.set_title("End-to-end latency CDF")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png", dpi=100)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="under a minute; writes bench/results/quick.json"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where the JSON goes (plots: beside it)"
    )
    parser.add_argument("--soak", type=float, default=None, metavar="MINUTES")
    parser.add_argument("--no-peers", action="store_true", help="skip cryptofeed")
    parser.add_argument("--only", choices=["replay", "e2e", "sinks"], default=None)
    args = parser.parse_args()
    runs = 3 if args.quick else 7
    peers = not (args.no_peers or args.quick)  # cryptofeed's own venv takes minutes to build
    rss: list[tuple[float, float]] = []
    result: dict[str, Any] = {"machine": machine(), "commit": commit()}
    if args.soak:
        result["replay"] = {}
        result["e2e"] = [e2e_run(10_000, args.soak * 60, rss)]
        result["sinks"] = {}
    else:
        want = {args.only} if args.only else {"replay", "e2e", "sinks"}
        result["replay"] = (
            replay_section(runs, peers=peers, fresh=0 if args.quick else 3)
            if "replay" in want
            else {}
        )
        result["book_depth"] = depth_section(args.quick) if "replay" in want else {}
        rates = (1_000,) if args.quick else (1_000, 10_000, 50_000)
        seconds = 4 if args.quick else 20
        result["e2e"] = []
        for rate in rates if "e2e" in want else ():
            row = e2e_run(rate, seconds, rss, sync_s=2.0 if args.quick else 3.0)
            print(
                f"e2e {rate:,}/s: p50 {row['p50_us']:,.0f} us, p99 {row['p99_us']:,.0f} us",
                file=sys.stderr,
            )
            result["e2e"].append(row)
        result["sinks"] = (
            {
                "kafka": kafka_figures(args.quick, "kafka-python"),
                "kafka_confluent": None if args.quick else kafka_figures(False, "confluent"),
                "postgres": postgres_figures(args.quick),
            }
            if "sinks" in want
            else {}
        )
    mems = [m for _, m in rss]
    result["memory"] = {
        "rss_start_mb": round(mems[0], 1) if mems else None,
        "rss_end_mb": round(mems[-1], 1) if mems else None,
        "growth_pct": round((mems[-1] / mems[0] - 1) * 100, 2) if mems else None,
        "samples": len(mems),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    out = output_path(args.quick, bool(args.soak), args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if args.quick:
        # A smoke check: the tracked results and plots stay as the last full run left them.
        if args.out is not None:
            plots(result, rss, out.parent)
        print(quick_table(result))
        print(f"\n(written to {out.relative_to(REPO) if out.is_relative_to(REPO) else out})")
        return
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}.json").write_text(text)
    if not args.soak:
        plots(result, rss, out.parent)
    print(text)


def output_path(quick: bool, soak: bool, out: Path | None) -> Path:
    """Where the results go: `out` when given; else a quick run's own file, the soak's, or
    the full run's tracked latest.json."""
    if out is not None:
        return out
    if quick:
        return RESULTS / "quick.json"
    # A soak is its own record: it must not replace the full benchmark.
    return RESULTS / ("soak.json" if soak else "latest.json")


def quick_table(result: dict[str, Any]) -> str:
    """The quick run in a few lines: what a developer glances at after a change."""

    def num(value: Any, spec: str = ",.0f") -> str:
        return "-" if value is None else format(value, spec)

    lines = ["replay (us per book frame, every check on; python reference; x decode floor)"]
    for name, r in result["replay"].items():
        lines.append(
            f"  {name:<22} {num(r.get('mmengine_us'), '8.1f')}"
            f" {num(r.get('python_core_us'), '8.1f')} {num(r.get('ratio_vs_floor'), '6.1f')}x"
            + (f"   error: {r['error']}" if "error" in r else "")
        )
    lines.append("end to end (five simulated venues -> engine -> subscriber)")
    for r in result["e2e"]:
        lines.append(
            f"  {num(r['rate'])} msgs/s: delivered p50 {num(r['p50_us'])} us, p99 "
            f"{num(r['p99_us'])} us; engine p50 {num(r['engine_p50_us'])} us; "
            f"{num(r['priced'])} priced, {r['dropped']} dropped, CPU {num(r['cpu_pct'])} %"
        )
    lines.append("sinks (Prices/s sustained; delivery lag p50 / p99)")
    for name, s in result["sinks"].items():
        if s:
            lines.append(
                f"  {name:<16} {num(s['prices_per_s'])}/s; lag {num(s['lag_p50_ms'], '.1f')} / "
                f"{num(s['lag_p99_ms'], '.1f')} ms"
            )
    mem = result["memory"]
    lines.append(f"engine RSS {mem['rss_start_mb']} -> {mem['rss_end_mb']} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
