"""`make chaos MINUTES=N [SEED=S]`: a randomized campaign of mixed faults against the whole
engine, judged by an independent checker (main thread; the simulators run on threads of this
process, everything else is a process of its own).

It starts five venue simulators (Binance with merged 100 ms diffs, Coinbase, Kraken v2, OKX,
Bybit; every one keeps its truth journal, `mmengine.dev.simulator.truth`), a Kafka broker
(tansu) and PostgreSQL as direct children (so they can be paused and killed), the checker
(scripts/chaos_check.py, which shares no code with the engine) and the engine (`mmengine
run`, all five venues, both sinks, the IPC books stream on). The market moves at a steady
rate; from a schedule drawn from the seed it injects, at random times:

- on one venue: a sequence gap, a bad checksum (Kraken, OKX: the venues that send one), a
  malformed frame, an oversized frame, the venue's own error message, a dropped connection,
  a 3 s stall (three in ten silence every venue at once), a crossed book, a drift of the
  venue's prices far from the others;
- the broker paused (SIGSTOP, then SIGCONT) or killed (SIGKILL, restarted on its port with
  nothing: tansu keeps topics in memory); Postgres stopped (fast shutdown) or killed
  (SIGKILL, crash recovery on restart); the engine SIGKILLed and started again on the same
  spool and config. Faults of different services may overlap.

Every kind occurs at least once, whatever the length; a fault that would land while the
engine is down waits until it is up again. After the last fault the campaign lets the
engine settle, stops it with SIGTERM (its writers deliver what they hold), and asks the
checker for its verdict. bench/results/chaos.json gets the seed, minutes, faults injected
by kind, Prices checked, wrong Prices, losses and duplicates by cause and recovery times;
a failing run prints its seed, to be replayed with `make chaos MINUTES=N SEED=S`.

Beside them runs the host-stall witness (`--witness FILE`: this script again, in an
interpreter of its own that imports nothing but the standard library): it sleeps 10 ms at a
time and writes down every wake-up that came more than 100 ms late, so that the checker can
tell a host too starved to run anything from a slow engine (docs/chaos.md).

    python scripts/chaos.py --minutes 10 [--seed S] [--out FILE] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import heapq
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PY = sys.executable

# engine venue name -> (protocol, instruments, engine config extras)
VENUES: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "binance": ("binance", ["BTC-USDT", "ETH-USDT"], {"depth": 100, "audit": True}),
    "coinbase": ("coinbase-advanced", ["BTC-USD", "ETH-USD"], {"audit": True}),
    "kraken": ("kraken-v2", ["BTC-USD", "ETH-USD"], {"depth": 10}),
    "okx": ("okx-v5", ["BTC-USDT", "ETH-USDT"], {"depth": 400}),
    "bybit": ("bybit-v5-spot", ["BTC-USDT", "ETH-USDT"], {"depth": 50}),
}
# The simulator serving each protocol: Binance as it is at 100 ms, several update ids merged
# per diff, so a REST snapshot often falls inside the next diff (the sync's hardest case).
SIMULATORS = {"binance": "binance-merged"}
PRICED = ["BTC-USD", "ETH-USD"]
USDT_USD = 0.9998  # a fixed rate that is not 1, so that a conversion forgotten shows
VENUE_FAULTS = (
    "gap",
    "badchecksum",
    "malformed",
    "oversized",
    "error",
    "drop",
    "stall",
    "crossed",
    "drift",
)
SYSTEM_FAULTS = ("broker_pause", "broker_kill", "pg_stop", "pg_kill", "engine_kill")
CHECKSUM_VENUES = ("kraken", "okx")  # `badchecksum` means something only where one is sent
SYSTEM_WEIGHT = 2.0  # of 9 + 2: about one fault in six is a system fault
WARMUP_S = 4.0  # after the engine's first Prices, before the first fault
COOLDOWN_S = 10.0  # after the last fault, before the engine is stopped
ENGINE_SETTLE_S = 2.0  # venue faults wait this long after a restarted engine's first Price
SYSTEM_GAP_S = 2.0  # between the end of one system fault and the start of the next
ALL_STALL_SHARE = 0.3  # of stalls, the share that silences every venue at once
WITNESS_PERIOD_S = 0.010  # the host-stall witness sleeps this long at a time ...
WITNESS_LATE_S = 0.100  # ... and writes down every wake-up later than this


class Events:
    """The campaign's own record of what it did (JSON lines; the checker follows it)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 (closed by close())
        self.lock = threading.Lock()

    def write(self, kind: str, **fields: Any) -> int:
        t = time.time_ns()
        with self.lock:
            self.file.write(json.dumps({"t": t, "kind": kind, **fields}) + "\n")
        return t

    def close(self) -> None:
        self.file.close()


# --- the host-stall witness -------------------------------------------------------------------


def host_stall_witness(
    path: Path,
    parent: int | None = None,
    period_s: float = WITNESS_PERIOD_S,
    late_s: float = WITNESS_LATE_S,
) -> int:
    """Sleep `period_s` at a time and append to `path` every wake-up more than `late_s` late,
    until SIGTERM or until `parent` (the process that started it) is gone (run in a process
    of its own: `chaos.py --witness FILE --parent PID`).

    JSON lines: a `head` (its settings), one `stall` per late wake-up (`start`, `end`:
    time.time_ns, the clock of the rest of the campaign; `start` is when it was due), an `end`
    when it stops. Nothing is pinned or prioritised: a process that asks for almost no CPU and
    still wakes up late was kept from running by the host (other processes, the hypervisor,
    memory), which delays the engine and the simulators just as much. A stall of the
    orchestrator's own process (its simulator threads share one GIL) does not show here."""
    # Given by the parent, not read here: a parent gone before this line would go unseen.
    parent = os.getppid() if parent is None else parent
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    period_ns, late_ns = int(period_s * 1e9), int(late_s * 1e9)
    stalls = 0
    with open(path, "a", buffering=1) as out:  # a line at a time: the checker reads it live
        head = {"k": "head", "t": time.time_ns(), "pid": os.getpid()}
        out.write(json.dumps({**head, "period_ms": period_s * 1e3, "late_ms": late_s * 1e3}) + "\n")
        due = time.monotonic_ns() + period_ns
        # A parent that died without stopping it (SIGKILL) leaves it to init: it stops too.
        while not stopping and os.getppid() == parent:
            time.sleep(max(0, due - time.monotonic_ns()) / 1e9)
            now = time.monotonic_ns()
            if now - due > late_ns:
                end = time.time_ns()
                out.write(json.dumps({"k": "stall", "start": end - (now - due), "end": end}) + "\n")
                stalls += 1
            due = now + period_ns
        out.write(json.dumps({"k": "end", "t": time.time_ns(), "stalls": stalls}) + "\n")
    return 0


def start_witness(path: Path) -> subprocess.Popen[bytes]:
    """The witness in an interpreter of its own (this file, nothing of the engine imported)."""
    return subprocess.Popen(
        [PY, str(Path(__file__).resolve()), "--witness", str(path), "--parent", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def stop_child(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the services -------------------------------------------------------------------------------


class Broker:
    """tansu as a direct child on a fixed port: paused, killed and started again there."""

    def __init__(self, port: int, log: Path) -> None:
        from mmengine.dev.tansu import start_tansu

        self.port = port
        self.log = log
        self._start = start_tansu
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = self._start(self.port, log=log)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Engine:
    """`mmengine run` as a child process, started again on the same config and spool."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"\n===== engine start {self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [PY, "-m", "mmengine.cli", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM: the writers deliver what they hold; the exit code (None: not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def engine_config(
    sims: dict[str, Any], run_dir: Path, spool: Path, kafka: str, pg: str
) -> dict[str, Any]:
    venues = []
    for name, (protocol, instruments, extra) in VENUES.items():
        entry: dict[str, Any] = {
            "name": name,
            "protocol": protocol,
            "url": sims[name].ws_url,
            "instruments": instruments,
            **extra,
        }
        if protocol == "binance":
            entry["rest_url"] = sims[name].rest_url
        venues.append(entry)
    instruments = []
    for inst in PRICED:
        base = inst.split("-")[0]
        sources = []
        for name, (_, listed, _) in VENUES.items():
            venue_inst = next(i for i in listed if i.startswith(base + "-"))
            sources.append({"venue": name, "instrument": venue_inst})
        instruments.append(
            {
                "name": inst,
                "sources": sources,
                "min_venues": 3,
                "max_age_ms": 1500,
                # The five simulated markets walk apart by up to about 1 %: an outlier is a
                # venue that drifted (15 %), not one that wandered.
                "outlier_bps": 300,
                "max_jump_bps": 1000,
                "fair_value": {"method": "microprice", "levels": 3},
                "quote": {
                    "levels": 3,
                    "min_spread_bps": 2.0,
                    "vol_mult": 1.5,
                    "level_step_bps": 1.0,
                    "size": 0.5 if base == "BTC" else 5.0,
                    "size_step": 0.25 if base == "BTC" else 2.5,
                    "skew_bps_at_max": 3.0,
                    "max_position": 5.0 if base == "BTC" else 50.0,
                },
            }
        )
    return {
        "engine": {"run_dir": str(run_dir), "pricing_workers": 2},
        "venues": venues,
        "fx": [{"pair": "USDT-USD", "fixed": USDT_USD}],
        "instruments": instruments,
        "outputs": {
            "ipc": {"books": True},
            "kafka": {"bootstrap_servers": kafka, "topic": "mmengine.prices"},
            "postgres": {"dsn": pg},
        },
        "limits": {"stale_after_s": 2, "reconnect_max_s": 2, "spool_dir": str(spool)},
    }


# --- the schedule -----------------------------------------------------------------------------


def schedule(
    rng: random.Random, start: float, end: float, interval: float
) -> list[tuple[float, str, str | None, float]]:
    """(time, kind, venue, duration) of every fault: each kind once, then random draws, at
    times spread over [start, end) with jitter. Faults of one service (the broker, the
    database, the engine) never overlap; those of different services may (the engine
    killed while the broker is paused: its spool is on disk)."""
    span = max(end - start, 1.0)
    n = max(len(VENUE_FAULTS) + len(SYSTEM_FAULTS), int(span / interval))
    kinds = [*VENUE_FAULTS, *SYSTEM_FAULTS]
    weights = [1.0] * len(VENUE_FAULTS) + [SYSTEM_WEIGHT / len(SYSTEM_FAULTS)] * len(SYSTEM_FAULTS)
    kinds += rng.choices(kinds, weights, k=n - len(kinds))
    rng.shuffle(kinds)
    out = []
    free_at = dict.fromkeys(("broker", "pg", "engine"), start)  # when each service is back
    for i, kind in enumerate(kinds):
        t = start + span * (i + rng.uniform(0.1, 0.9)) / n
        if kind in SYSTEM_FAULTS:
            duration = {
                "broker_pause": rng.uniform(2.0, 4.0),
                "broker_kill": rng.uniform(1.0, 2.0),
                "pg_stop": rng.uniform(1.0, 3.0),
                "pg_kill": rng.uniform(0.5, 2.0),
                "engine_kill": rng.uniform(0.3, 1.5),
            }[kind]
            service = kind.split("_")[0]
            t = max(t, free_at[service])
            free_at[service] = t + duration + SYSTEM_GAP_S
            out.append((t, kind, None, duration))
        elif kind == "stall" and rng.random() < ALL_STALL_SHARE:
            out.append((t, kind, "*", 0.0))  # every venue at once: pricing halts "stale"
        else:
            venue = rng.choice(CHECKSUM_VENUES if kind == "badchecksum" else list(VENUES))
            out.append((t, kind, venue, 0.0))
    out.sort(key=lambda x: x[0])
    return out


# --- the campaign -----------------------------------------------------------------------------


def wait_for(cond: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def first_price(endpoint: str, seconds: float) -> bool:
    """Whether a Price arrives on the engine's IPC stream within `seconds`."""
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"price.")
    sub.connect(endpoint)
    try:
        return bool(sub.poll(int(seconds * 1000)))
    finally:
        sub.close()
        ctx.term()


def run(args: argparse.Namespace) -> int:
    import yaml

    from mmengine.dev.pgserver import free_port, start_private_server
    from mmengine.dev.simulator import start_simulator
    from mmengine.venues.registry import REGISTRY

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mmengine-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "truth").mkdir(exist_ok=True)
    duration = args.minutes * 60.0
    print(f"chaos: seed {seed}, {args.minutes:g} minute(s), work dir {work}", flush=True)
    limits = {r.protocol: r.venue.max_frame_bytes for r in REGISTRY}
    events = Events(work / "events.jsonl")
    injected: Counter[str] = Counter()
    engine_exit: int | None = None
    result: dict[str, Any] = {}
    with ExitStack() as stack:
        stack.callback(events.close)
        # First in, last out: it watches the host for the whole campaign, teardown included.
        witness = start_witness(work / "host_stalls.jsonl")
        stack.callback(stop_child, witness)
        sims = {}
        for i, (name, (protocol, instruments, _)) in enumerate(VENUES.items()):
            sim = stack.enter_context(
                start_simulator(
                    SIMULATORS.get(protocol, protocol),
                    instruments=instruments,
                    rate=args.rate,
                    seed=seed * 10 + i,
                    truth_path=work / "truth" / f"{name}.truth",
                )
            )
            # Beyond what the engine accepts from that venue (its own limit), by a little.
            sim.oversized_bytes = limits[protocol] + 4096
            sims[name] = sim
        broker = Broker(free_port(), work / "tansu.log")
        broker.start()
        stack.callback(broker.stop)
        pg = start_private_server()
        stack.callback(shutil.rmtree, pg.datadir.parent, True)
        stack.callback(pg.stop)
        kafka = f"127.0.0.1:{broker.port}"
        run_dir = work / "run"
        config = engine_config(sims, run_dir, work / "spool", kafka, pg.dsn)
        config_path = work / "engine.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        checker_log = open(work / "checker.log", "ab")  # noqa: SIM115
        stack.callback(checker_log.close)
        checker = subprocess.Popen(
            [
                PY,
                str(REPO / "scripts" / "chaos_check.py"),
                "run",
                "--config",
                str(config_path),
                "--schemas",
                str(REPO / "schemas"),
                "--truth",
                str(work / "truth"),
                "--events",
                str(work / "events.jsonl"),
                "--ipc",
                f"ipc://{run_dir}/prices",
                "--ipc-books",
                f"ipc://{run_dir}/books",
                "--kafka",
                kafka,
                "--topic",
                "mmengine.prices",
                "--pg",
                pg.dsn,
                "--host-stalls",
                str(work / "host_stalls.jsonl"),
                "--out",
                str(work / "verdict.json"),
            ],
            stdin=subprocess.PIPE,
            stdout=checker_log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        stack.callback(lambda: checker.poll() is None and checker.kill())
        engine = Engine(config_path, work / "engine.log")
        engine.start()
        stack.callback(lambda: engine.alive() and engine.kill())
        events.write("engine_start")
        prices_endpoint = f"ipc://{run_dir}/prices"
        if not first_price(prices_endpoint, 30.0):
            raise RuntimeError(f"the engine published no Price in 30 s; see {work / 'engine.log'}")
        started = time.monotonic()
        plan = schedule(rng, started + WARMUP_S, started + duration - COOLDOWN_S, args.interval)
        # (time, tiebreak, kind, venue, duration, id of the system fault an end belongs to)
        queue: list[tuple[float, int, str, str | None, float, int]] = []
        for n, (t, kind, venue, d) in enumerate(plan):
            heapq.heappush(queue, (t, n, kind, venue, d, 0))
        engine_settled = 0.0
        fault_id = 0
        up = threading.Event()  # a restarted engine published its first Price
        while queue:
            t, n, kind, venue, d, fid = queue[0]
            now = time.monotonic()
            if engine_settled == float("inf") and up.is_set():
                engine_settled = now + ENGINE_SETTLE_S
            if now < t:
                time.sleep(min(t - now, 0.2))
                continue
            heapq.heappop(queue)
            if venue is not None and now < engine_settled:
                # The engine is down or just restarted: the fault waits (a moment at a time:
                # when it is up again is not known yet).
                heapq.heappush(queue, (now + 0.2, n, kind, venue, d, 0))
                continue
            if venue is not None:
                for name in VENUES if venue == "*" else [venue]:
                    sims[name].inject(kind)
                events.write(kind, venue=venue)
                injected[kind] += 1
                continue
            if kind.endswith(":end"):
                kind = kind[:-4]
                if kind == "broker_pause":
                    broker.resume()
                elif kind == "broker_kill":
                    broker.start()
                elif kind in ("pg_stop", "pg_kill"):
                    pg.start()
                elif kind == "engine_kill":
                    engine.start()
                    engine_settled = float("inf")
                    up.clear()
                    threading.Thread(
                        target=lambda: first_price(prices_endpoint, 60.0) and up.set(),
                        daemon=True,
                    ).start()
                events.write(kind, phase="end", id=fid)
                continue
            fault_id += 1
            injected[kind] += 1
            if kind == "broker_pause":
                broker.pause()
            elif kind == "broker_kill":
                broker.kill()
            elif kind == "pg_stop":
                pg.stop()
            elif kind == "pg_kill":
                pg.kill()
            elif kind == "engine_kill":
                engine.kill()
                engine_settled = float("inf")
            # Written once done: everything the killed engine published came before it.
            events.write(kind, phase="start", id=fault_id)
            end = (time.monotonic() + d, len(plan) + fault_id, kind + ":end", None, 0.0, fault_id)
            heapq.heappush(queue, end)
            if not engine.alive() and kind != "engine_kill":
                raise RuntimeError(
                    f"the engine exited ({engine.proc.returncode if engine.proc else '?'}); "
                    f"see {work / 'engine.log'}"
                )
        # Settle, then a clean stop: the writers deliver everything they hold.
        rest = started + duration - time.monotonic()
        time.sleep(max(rest, 3.0))
        if not engine.alive():
            raise RuntimeError(f"the engine exited; see {work / 'engine.log'}")
        engine_exit = engine.stop()
        events.write("engine_stop", code=engine_exit)
        assert checker.stdin is not None
        checker.stdin.write("finish\n")
        checker.stdin.flush()
        try:
            checker.wait(timeout=600)
        except subprocess.TimeoutExpired:
            checker.kill()
            checker.wait()
        verdict = work / "verdict.json"
        result = (
            json.loads(verdict.read_text())
            if verdict.exists()
            else {
                "passed": False,
                "failures": [
                    f"the checker ended without a verdict (exit {checker.returncode}); "
                    f"see {work / 'checker.log'}"
                ],
            }
        )
    left = spool_left(work / "engine.log")
    errors = engine_errors(work / "engine.log")
    if errors:
        result.setdefault("failures", []).append(
            f"the engine logged {sum(errors.values())} ERROR/CRITICAL line(s) of its own"
        )
        result["passed"] = False
    if engine_exit != 0:
        result.setdefault("failures", []).append(f"the engine's clean stop exited {engine_exit}")
        result["passed"] = False
    if any(left.values()):
        result.setdefault("failures", []).append(f"records left in the spool at the end: {left}")
        result["passed"] = False
    out = {
        "seed": seed,
        "minutes": args.minutes,
        "rate_per_venue": args.rate,
        "fault_interval_s": args.interval,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "faults_injected": dict(sorted(injected.items())),
        "engine_starts": engine.starts,
        "engine_errors": errors,
        **result,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    summary(out, args)
    if out.get("passed") and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"chaos: work dir kept: {work}", flush=True)
    return 0 if out.get("passed") else 1


def spool_left(log: Path) -> dict[str, int]:
    """Records each sink left in its spool at the last stop, from the engine's summary."""
    import re

    left: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            match = re.match(r"\s*(\w+): .*?(\d+) left in the spool", line)
            if match:
                left[match.group(1)] = int(match.group(2))
    return left


def engine_errors(log: Path) -> dict[str, int]:
    """ERROR and CRITICAL lines the engine's own loggers wrote (a thread that died, an
    internal error, a spool that filled up): none is expected, whatever the fault. The
    Kafka client's own ERROR lines about a broker that went away are not the engine's."""
    import re

    found: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            match = re.match(r"\S+ \S+ (ERROR|CRITICAL)\s+(\S+) (mmengine[\w.]*): (.{0,60})", line)
            if match:
                found[f"{match.group(3)}: {match.group(4)}"] += 1
    return dict(found)


def commit() -> str:
    got = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return got.stdout.strip() or "unknown"


def summary(out: dict[str, Any], args: argparse.Namespace) -> None:
    prices = out.get("prices", {})
    print(
        f"chaos: {sum(out['faults_injected'].values())} faults "
        f"({', '.join(f'{k} {v}' for k, v in out['faults_injected'].items())}); "
        f"{prices.get('checked_against_truth', 0):,} Prices checked against the true books "
        f"({prices.get('venue_books_checked', 0):,} venue books), "
        f"wrong {out.get('wrong_prices', '?')}, unverified {out.get('unverified_prices', '?')}, "
        f"lost {out.get('lost', {})}, duplicated {out.get('duplicated', {})}",
        flush=True,
    )
    stalls = out.get("host_stalls") or {}
    excused = out.get("excused_host_stall") or {}
    print(
        f"chaos: host stalls {stalls.get('n', '?')} (total {stalls.get('total_s', '?')} s,"
        f" max {stalls.get('max_s', '?')} s); excused by them: {excused.get('n', 0)}"
        f" ({excused.get('silences', 0)} silence(s), {excused.get('recoveries', 0)}"
        " recovery(ies))"
        + ("" if stalls.get("watched", True) else "; NO WITNESS FILE: nothing excused"),
        flush=True,
    )
    for line in excused.get("examples", [])[:5]:
        print(f"  excused: {line}")
    for kind, r in (out.get("recovery_s") or {}).items():
        print(
            f"  recovery {kind:<13} n {r['n']:>3}  p50 {r['p50']}  max {r['max']}"
            f"  (limit {r['limit']} s)"
        )
    if out.get("passed"):
        print(f"chaos: PASSED (seed {out['seed']}); {args.out}", flush=True)
    else:
        for failure in out.get("failures", []):
            print(f"chaos: FAILED: {failure}", flush=True)
        for name, lines in (out.get("examples") or {}).items():
            for line in lines[:5]:
                print(f"  {name}: {line}")
        print(
            f"chaos: FAILED with seed {out['seed']}; replay: "
            f"make chaos MINUTES={out['minutes']:g} SEED={out['seed']}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rate", type=float, default=30.0, help="book updates/s per venue")
    parser.add_argument("--interval", type=float, default=2.5, help="mean seconds between faults")
    parser.add_argument("--out", default=str(RESULTS / "chaos.json"))
    parser.add_argument("--work", default=None, help="work dir (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir after a pass")
    parser.add_argument("--witness", metavar="FILE", help="be the host-stall witness, writing FILE")
    parser.add_argument("--parent", type=int, help="the witness stops when this process is gone")
    args = parser.parse_args(argv)
    if args.witness:
        return host_stall_witness(Path(args.witness), args.parent)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM unwinds like Ctrl-C: every process and server the campaign started is stopped.
    signal.signal(signal.SIGTERM, interrupted)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
