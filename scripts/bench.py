"""`make bench`: the engine's performance in one JSON file and a few plots (main thread).

1. replay: per capture in tests/data, mmengine's us per book frame with the compiled book
   core (median of >= 5 passes, every check on, each pass a new connection: nothing
   remembered from an earlier pass), the same from `mmengine replay --json` in fresh
   processes, the pure-Python reference core's, the decode floor (orjson.loads of every
   text the book path decodes: the book frames and the REST snapshot bodies), and cryptofeed
   2.4.1 on the same frames, run in its own virtualenv (.venv-peers) by
   scripts/peer_cryptofeed.py; both ratios per venue. book_depth: µs per update at 100 and
   50,000 levels per side (scripts/bench_book_depth.py).
2. e2e: the load generator (mmengine.dev.loadgen: one process sending pre-rendered
   frames of all five venue protocols, sequence numbers and checksums valid) at several
   total rates into a real engine process; a separate subscriber process measures
   frame received -> Price delivered; the engine's stage histograms
   (`mmengine_stage_latency_seconds`) give where the time goes, per stage, for the window;
   the generator says what it offered and achieved, and whether it fell behind.
3. sinks: Kafka (tansu; kafka-python and confluent) and Postgres (embedded) at 20,000
   Prices/s offered and flat out, from their own bench scripts, run while an engine prices
   10,000 book msgs/s from the load generator on the same cores.
4. memory: the engine's RSS sampled each second during the e2e runs (`--soak MINUTES` runs
   the 10,000 msgs/s load for that long instead).

Writes bench/results/latest.json (and a dated copy) with the keys machine, commit, replay,
e2e, sinks, memory, and PNG plots beside it (replay, latency CDF, stages, RSS). Ratios
are what to read: the machine is shared.

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
PRICING_WORKERS = 2
ENGINE_OVERRIDES: dict[str, Any] = {}  # engine.* keys from --engine KEY=VALUE (experiments)

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
                # the median of (book path ÷ floor) over passes taken in pairs (bench_replay)
                "ratio_vs_floor": c["ratio_vs_floor"],
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
            out[name] = fig
            print(f"replay {name}: {fig['mmengine_us']} us/book frame", file=sys.stderr)
    return out


def depth_section(quick: bool) -> dict[str, Any]:
    """µs per book update at 100 and 50,000 levels per side, per core."""
    from bench_book_depth import figures

    return figures([100, 50_000], 3 if quick else 5)


# --- 2. end to end ---------------------------------------------------------------------------


# The bench's venue connection names, by protocol.
VENUE_NAMES = {
    "binance": "binance",
    "coinbase-advanced": "coinbase",
    "kraken-v2": "kraken",
    "okx-v5": "okx",
    "bybit-v5-spot": "bybit",
}


class LoadGen:
    """The load generator (mmengine.dev.loadgen) as a child process; its JSON lines
    are read on a thread of their own."""

    def __init__(self, rate: float, seconds: float) -> None:
        import threading

        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "mmengine.dev.loadgen",
                "--rate",
                str(rate),
                "--seconds",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        try:
            self.ready = json.loads(first)
        except ValueError:
            self.stop()
            raise RuntimeError(f"the load generator did not start: {first!r}") from None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))

    def last(self, event: str) -> dict[str, Any] | None:
        return next((d for d in reversed(self.lines) if d.get("event") == event), None)

    def wait(self, event: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.last(event)
            if found is not None:
                return found
            if self.proc.poll() is not None and self._reader.is_alive() is False:
                break
            time.sleep(0.05)
        raise RuntimeError(f"load generator: no {event!r} line ({self.lines[-3:]})")

    def stop(self) -> dict[str, Any] | None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_reader"):
            self._reader.join(5)
        return self.last("done")


def engine_config(venues: dict[str, dict[str, Any]], run_dir: Path) -> dict:
    """The bench engine: the load generator's five venues, BTC-USD and ETH-USD priced from
    all of them (USDT at a fixed 1.0)."""
    cfg_venues = []
    sources: dict[str, list[dict[str, str]]] = {"BTC-USD": [], "ETH-USD": []}
    for protocol, v in venues.items():
        name = VENUE_NAMES.get(protocol, protocol)
        cfg_venues.append(
            {
                "name": name,
                "protocol": protocol,
                "url": v["ws"],
                "rest_url": v["rest"],
                "instruments": v["instruments"],
                "depth": v["depth"],
            }
        )
        for inst in v["instruments"]:
            sources[inst.split("-")[0] + "-USD"].append({"venue": name, "instrument": inst})
    return {
        "engine": {"run_dir": str(run_dir), "pricing_workers": PRICING_WORKERS, **ENGINE_OVERRIDES},
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


def thread_cpu_window(
    before: dict[str, Any], after: dict[str, Any], frames: int, priced: int
) -> dict[str, Any]:
    """Where the engine's CPU went in the window, from its status (`thread_cpu_s`): ms of
    CPU per second of each thread, the venue threads' µs per frame read and the pricing
    workers' µs per Price."""
    seconds = (after["ts_ns"] - before["ts_ns"]) / 1e9
    cpu0, cpu1 = before.get("thread_cpu_s", {}), after.get("thread_cpu_s", {})
    used = {name: cpu1[name] - cpu0.get(name, 0.0) for name in cpu1}
    venue_s = sum(v for n, v in used.items() if n.startswith("venue-") and not n.endswith("-rest"))
    pricing_s = sum(v for n, v in used.items() if n.startswith("pricing-"))
    return {
        "ms_per_s": {n: round(v / seconds * 1000, 1) for n, v in sorted(used.items()) if v > 0}
        if seconds > 0
        else {},
        "venue_threads_us_per_frame": round(venue_s / frames * 1e6, 1) if frames else None,
        "pricing_us_per_price": round(pricing_s / priced * 1e6, 1) if priced else None,
    }


def stage_window(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per stage, what the engine's histograms gained between two status snapshots: count,
    mean and p50/p99 read off the buckets (interpolated inside one)."""
    from mmengine.latency import bucket_quantile

    out = {}
    for name, st in after.get("stages", {}).items():
        prev = before.get("stages", {}).get(name)
        counts = st["counts"]
        total = st["sum_us"]
        if prev is not None:
            counts = [a - b for a, b in zip(counts, prev["counts"], strict=True)]
            total -= prev["sum_us"]
        n = sum(counts)
        out[name] = {
            "count": n,
            "mean_us": round(total / n, 1) if n else None,
            "p50_us": _round(bucket_quantile(counts, 0.5)),
            "p99_us": _round(bucket_quantile(counts, 0.99)),
        }
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _sum(doc: dict[str, Any], section: str, key: str) -> int:
    return sum(item[key] for item in doc.get(section, ()))


def start_engine(cfg: dict[str, Any], tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    run_dir = tmp / "run"
    cfg["engine"]["run_dir"] = str(run_dir)
    cfg_path = tmp / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    engine = subprocess.Popen(
        [PY, "-m", "mmengine.cli", "--log-level", "WARNING", "run", "--config", str(cfg_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (run_dir / "endpoints.json").exists():
        if engine.poll() is not None or time.monotonic() > deadline:
            engine.kill()
            raise RuntimeError(f"engine did not start: {engine.communicate()[0]}")
        time.sleep(0.05)
    return engine, run_dir


def e2e_run(
    rate: float,
    seconds: float,
    rss: list[tuple[float, float]],
    sync_s: float = 3.0,
    during: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """The engine at `rate` book msgs/s from the load generator: a subscriber process
    measures frame received -> Price delivered; the engine's status gives the stages.
    `during`: something else to measure while the engine runs at that rate (the sinks);
    what it returns is the row's `during`."""
    gen = LoadGen(rate, 24 * 3600)  # stopped below
    during_result = None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = engine_config(gen.ready["venues"], Path(tmp))
        engine = None
        try:
            engine, run_dir = start_engine(cfg, Path(tmp))
            gen.wait("streaming", 30)
            time.sleep(sync_s)  # books sync
            proc = psutil.Process(engine.pid)
            before = last_status(run_dir)
            tick0 = gen.last("tick") or {"sent": 0, "seconds": 0.0}
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
            if during is not None:
                during_result = during()
            while sub.poll() is None:
                rss.append((time.monotonic(), proc.memory_info().rss / 2**20))
                time.sleep(1.0)
            measured = json.loads(sub.communicate()[0])
            cpu1 = proc.cpu_times()
            wall = time.monotonic() - t0
            after = last_status(run_dir)
            tick1 = gen.last("tick") or tick0
        finally:
            out = ""
            if engine is not None:
                engine.terminate()
                out, _ = engine.communicate(timeout=60)
            done = gen.stop()
    frames = _sum(after, "venues", "frames") - _sum(before, "venues", "frames")
    inputs = _sum(after, "workers", "inputs") - _sum(before, "workers", "inputs")
    priced = _sum(after, "workers", "prices") - _sum(before, "workers", "prices")
    # BookTops a newer top of the same book replaced before they left the venue thread
    # (conflation at the source: `mmengine.bus`).
    superseded = _sum(after, "venues", "superseded_tops") - _sum(
        before, "venues", "superseded_tops"
    )
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall * 100
    threads_cpu = thread_cpu_window(before, after, frames, priced)
    skipped = sum(sum(v["skipped"].values()) for v in after["venues"])
    resyncs = sum(sum(v["resyncs"].values()) for v in after["venues"])
    gaps = sum(b["gaps"] for v in after["venues"] for b in v["books"])
    window_s = tick1["seconds"] - tick0["seconds"]
    loadgen = {
        "offered_per_s": rate,
        "achieved_per_s": round((tick1["sent"] - tick0["sent"]) / window_s, 1)
        if window_s > 0
        else None,
        "wake_lag_p50_us": (done or {}).get("wake_lag_p50_us"),
        "wake_lag_p99_us": (done or {}).get("wake_lag_p99_us"),
        "backlog_max_bytes": (done or {}).get("backlog_max_bytes"),
        "fell_behind": bool((done or {}).get("fell_behind", True))
        or (window_s > 0 and (tick1["sent"] - tick0["sent"]) < 0.99 * rate * window_s),
        "render_s": gen.ready.get("render_s"),
    }
    # The engine's side: what its venue threads read per second in the window. Below the
    # offered rate, frames waited in the sockets (the generator holds the rest: backlog).
    intake = frames / wall if wall > 0 else 0.0
    loadgen["engine_intake_per_s"] = round(intake, 1)
    loadgen["engine_fell_behind"] = intake < 0.95 * rate
    return {
        "rate": rate,
        "venues": list(gen.ready["venues"]),
        "seconds": round(wall, 1),
        "p50_us": measured["delivered_us"]["p50"],
        "p99_us": measured["delivered_us"]["p99"],
        "p999_us": measured["delivered_us"]["p999"],
        "max_us": measured["delivered_us"]["max"],
        "engine_p50_us": measured["engine_us"]["p50"],
        "engine_p99_us": measured["engine_us"]["p99"],
        "loadgen": loadgen,
        "received_by_venue_threads": frames,  # within the measured window
        "book_tops_to_pricing": inputs,
        "book_tops_superseded_at_source": superseded,
        "priced": priced,
        "received_by_subscriber": measured["received"],
        "missed_by_subscriber": measured["missed_seq"],
        "dropped": measured["missed_seq"] + skipped,
        "skipped_frames": skipped,
        "resyncs": resyncs,
        "sequence_gaps": gaps,
        "conflation": round(inputs / priced, 3) if priced else None,
        "cpu_pct": round(cpu, 1),
        "thread_cpu": threads_cpu,
        "stages": stage_window(before, after),
        "sinks": {s["name"]: s for s in after.get("sinks", ())},
        "engine_summary": [ln for ln in out.splitlines() if " frames, " in ln][:8],
        "cdf_us": measured.get("cdf_us", []),
        "during": during_result,
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
    """The writer thread flat out (Prices/s it sustains) and at 20,000/s offered (commit
    lag of every row, priced -> committed)."""
    args = [
        "--rows",
        "10000" if quick else "100000",
        "--sizes",
        "2000",
        "--rates",
        "20000,max",
        "--seconds",
        "2" if quick else "8",
    ]
    rows = _json_lines("bench_postgres.py", args)
    if not rows:
        return None
    runs = rows[-1]["writer_runs"]
    at_20k, flat_out = runs[0], runs[1]
    return {
        "prices_per_s": flat_out["prices_per_s"],
        "lag_p50_ms": at_20k["lag_p50_ms"],
        "lag_p99_ms": at_20k["lag_p99_ms"],
        "delivered_per_s_at_20k_offered": at_20k["prices_per_s"],
        "lag_measured_at_offered_per_s": at_20k["offered_per_s"],
        "runs": runs,
    }


def sinks_section(quick: bool, rss: list[tuple[float, float]]) -> dict[str, Any]:
    """Kafka (both clients) and Postgres at 20,000 Prices/s offered and flat out. A full
    run measures them while an engine prices 10,000 book msgs/s from the load generator on
    the same cores (`engine_load` says how that engine fared meanwhile); `--quick` measures
    the default Kafka client and Postgres alone."""

    def measure() -> dict[str, Any]:
        return {
            "kafka": kafka_figures(quick, "kafka-python"),
            "kafka_confluent": None if quick else kafka_figures(False, "confluent"),
            "postgres": postgres_figures(quick),
        }

    if quick:
        return measure()
    row = e2e_run(10_000, 10, rss, during=measure)
    out: dict[str, Any] = row["during"]
    out["engine_load"] = {
        "rate": 10_000,
        "p50_us": row["p50_us"],
        "p99_us": row["p99_us"],
        "cpu_pct": row["cpu_pct"],
        "loadgen": row["loadgen"],
    }
    return out


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
    stage_plot(plt, [r for r in result["e2e"] if r.get("stages")], out_dir)
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


def stage_plot(plt: Any, rows: list[dict[str, Any]], out_dir: Path) -> None:
    """stages.png: per rate, the engine path stacked stage by stage, as shares of its mean
    (means add up to the whole path's mean, percentiles do not), each bar labelled with
    the mean and the whole path's p50 / p99 in µs."""
    from mmengine.latency import PRICING_STAGES

    if not rows:
        return
    parts = PRICING_STAGES[:-1]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r['rate']:,.0f}/s" for r in rows]
    means = [[(r["stages"].get(n) or {}).get("mean_us") or 0.0 for n in parts] for r in rows]
    totals = [sum(m) or 1.0 for m in means]
    bottom = [0.0] * len(rows)
    for i, name in enumerate(parts):
        shares = [m[i] / t * 100 for m, t in zip(means, totals, strict=True)]
        ax.bar(labels, shares, bottom=bottom, label=name.replace("_", " "))
        for x, (b, h, m) in enumerate(zip(bottom, shares, means, strict=True)):
            if h >= 6:
                ax.text(x, b + h / 2, f"{m[i]:,.0f}", ha="center", va="center", fontsize=7)
        bottom = [b + h for b, h in zip(bottom, shares, strict=True)]
    for x, r in enumerate(rows):
        whole = r["stages"].get(PRICING_STAGES[-1]) or {}
        ax.text(
            x,
            101,
            f"mean {totals[x]:,.0f}\np50 {whole.get('p50_us') or 0:,.0f}  "
            f"p99 {whole.get('p99_us') or 0:,.0f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylim(0, 118)
    ax.set_ylabel("share of the mean µs per Price (%); bar labels: mean µs")
    ax.set_xlabel("book msgs/s offered by the load generator")
    ax.set_title("Where a tick's time goes: frame received -> Price published on IPC")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out_dir / "stages.png", dpi=100)
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
    parser.add_argument(
        "--rates",
        type=lambda text: tuple(float(r) for r in text.split(",")),
        default=None,
        help="end-to-end rates, comma-separated (default: 1000 quick, else 1000,10000,50000)",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="each end-to-end window (default 4 quick, 20)"
    )
    parser.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an engine.* config key for the end-to-end engine (e.g. switch_interval_us=200)",
    )
    args = parser.parse_args()
    for item in args.engine:
        key, _, value = item.partition("=")
        ENGINE_OVERRIDES[key] = yaml.safe_load(value)
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
        rates = args.rates or ((1_000,) if args.quick else (1_000, 10_000, 50_000))
        seconds = args.seconds or (4 if args.quick else 20)
        result["e2e"] = []
        for rate in rates if "e2e" in want else ():
            row = e2e_run(rate, seconds, rss, sync_s=2.0 if args.quick else 3.0)
            print(
                f"e2e {rate:,}/s: p50 {row['p50_us']:,.0f} us, p99 {row['p99_us']:,.0f} us",
                file=sys.stderr,
            )
            result["e2e"].append(row)
        result["sinks"] = sinks_section(args.quick, rss) if "sinks" in want else {}
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
    if args.out is None:  # a dated copy beside the tracked results
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
    lines.append("end to end (load generator, five venues -> engine -> subscriber)")
    for r in result["e2e"]:
        gen = r.get("loadgen") or {}
        lines.append(
            f"  {num(r['rate'])} msgs/s (achieved {num(gen.get('achieved_per_s'))}"
            f"{', GENERATOR FELL BEHIND' if gen.get('fell_behind') else ''}): delivered p50 "
            f"{num(r['p50_us'])} us, p99 {num(r['p99_us'])} us; "
            f"{num(r['priced'])} priced, {r['dropped']} dropped, CPU {num(r['cpu_pct'])} %"
        )
        tc = r.get("thread_cpu")
        if tc:
            lines.append(
                f"    CPU: venue threads {num(tc.get('venue_threads_us_per_frame'), '.1f')} us"
                f" a frame, pricing {num(tc.get('pricing_us_per_price'), '.1f')} us a Price"
            )
        for name, st in (r.get("stages") or {}).items():
            lines.append(
                f"    {name:<20} p50 {num(st['p50_us'], '7,.0f')} us  p99 "
                f"{num(st['p99_us'], '7,.0f')} us"
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
