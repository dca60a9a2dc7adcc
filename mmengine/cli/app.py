"""The `mmengine` command (main thread): run, tap, check-config, simulate, demo, replay,
record."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mmengine.errors import ConfigError, MmengineError
from mmengine.locate import RUN_DIR_ENV, EngineNotFound, find_engine, pid_alive
from mmengine.logs import setup_logging
from mmengine.model import INSTRUMENT_RE
from mmengine.signals import StopFlag

if TYPE_CHECKING:
    from collections.abc import Callable

    from mmengine.config import Config
    from mmengine.engine import Engine

log = logging.getLogger("mmengine.cli")

LOG_LEVELS = ["debug", "info", "warning", "error"]


def _log_signal(stop: StopFlag) -> None:
    if stop.signum:
        log.info("received %s, stopping", signal.Signals(stop.signum).name)


def _load_or_exit(path: str) -> Config:
    from mmengine.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"config error in {path}:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


class LazyGroup(click.Group):
    """Commands whose modules are imported only when used: the tools that only attach to
    a running engine (`top`, `tap`, ...) start, and answer "no engine", in well under a
    second, without loading the config models or the Postgres driver."""

    lazy = {
        "db": "mmengine.cli.db:db",
        "db-tail": "mmengine.cli.db:db_tail",
        "simulate": "mmengine.cli.simulate:simulate",  # the simulator package: ~0.3 s to import
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, name = target.split(":")
        command: click.Command = getattr(import_module(module), name)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="Default info. Other libraries' own INFO lines (Kafka client, web servers) show "
    "only with debug.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line (time, level, thread, venue, instrument, event, ...).",
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None, log_format: str) -> None:
    """mmengine: a market maker's pricing engine for crypto.

    Venue order books in, verified; fair values and quotes out, over local IPC
    (and, where configured, Kafka and Postgres).
    """
    ctx.obj = {"log_level": log_level}
    setup_logging(log_level or "info", log_format)


@main.command("check-config")
@click.option("--config", "config_path", required=True, type=click.Path(), help="venues.yaml")
def check_config(config_path: str) -> None:
    """Validate a config file and print what it would run (exit 0), or every error (exit 2)."""
    cfg = _load_or_exit(config_path)
    click.echo(f"{config_path}: OK")
    click.echo(
        f"engine: run_dir={cfg.engine.run_dir} pricing_workers={cfg.engine.pricing_workers} "
        f"top_levels={cfg.engine.top_levels}"
    )
    for v in cfg.venues:
        where = v.url or "default URL"
        click.echo(
            f"venue {v.name} ({v.protocol}, depth {v.depth}, {where}): {', '.join(v.instruments)}"
        )
    for i in cfg.instruments:
        srcs = ", ".join(f"{s.venue}:{s.instrument or i.name}" for s in i.sources)
        click.echo(f"price {i.name} <- {srcs}")
    for warning in cfg.warnings():
        click.echo(f"warning: {warning}", err=True)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(), help="venues.yaml")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics here.")
def run(config_path: str, duration: float | None, metrics_port: int | None) -> None:
    """Run the engine until SIGINT/SIGTERM (or --duration), then stop cleanly.

    On stop every thread is joined, every socket closed, the IPC socket files removed, and
    one summary line per venue is printed.
    """
    from mmengine.engine import Engine

    cfg = _load_or_exit(config_path)
    if metrics_port is not None:
        cfg = cfg.model_copy(
            update={"engine": cfg.engine.model_copy(update={"metrics_port": metrics_port})}
        )
    stop = StopFlag().install()
    for warning in cfg.warnings():
        log.warning("config: %s", warning)
    engine = Engine(cfg)
    failed, clean = _serve(
        engine,
        stop,
        duration,
        lambda: f"engine running; prices on {engine.endpoint('prices')} (run dir {engine.run_dir})",
    )
    for line in engine.summary():
        click.echo(line)
    if failed:  # crash-only: a thread that cannot be restarted died; the supervisor said which
        click.echo(f"engine stopped: {engine.failure}", err=True)
    if failed or not clean:
        sys.exit(1)


def _serve(
    engine: Engine, stop: StopFlag, duration: float | None, banner: Callable[[], str]
) -> tuple[bool, bool]:
    """Start `engine` (exit 1 with the reason if it cannot), say `banner()`, run until a
    signal or `duration`, stop it: (a thread that cannot be restarted died, it stopped
    cleanly)."""
    try:
        engine.start()
    except MmengineError as exc:
        click.echo(f"cannot start: {exc}", err=True)
        sys.exit(1)
    click.echo(banner())
    failed = engine.run_until(stop, duration)
    _log_signal(stop)
    return failed, engine.stop() == 0


RUN_DIR_HELP = f"Engine run dir (default ${RUN_DIR_ENV}, else <tmp>/mmengine)."


def _find_engine(run_dir: str | None) -> dict[str, Any]:
    """The live engine's endpoints.json, or a clear error at once (see mmengine.locate)."""
    try:
        return find_engine(run_dir)
    except EngineNotFound as exc:
        raise click.ClickException(str(exc)) from None


def _resolve_endpoint(
    run_dir: str | None, endpoint: str | None, stream: str
) -> tuple[str, str, int | None]:
    """(endpoint, schema file name, engine pid or None) from an explicit endpoint or the
    run dir's endpoints.json."""
    if endpoint:
        return endpoint, "book_top.avsc" if "books" in endpoint else "price.avsc", None
    doc = _find_engine(run_dir)
    pid = int(doc["pid"])
    if stream in ("control", "status"):
        return doc[stream]["endpoint"], "", pid
    info = doc["ipc"].get(stream)
    if info is None:
        raise click.ClickException(f"the engine in {doc['run_dir']} exposes no {stream!r} stream")
    return info["endpoint"], Path(info["schema"]).name, pid


def tap_filter(stream: str, topic: str) -> tuple[bytes, str | None]:
    """(ZeroMQ subscription prefix, instrument to keep or None) for `tap --topic`.

    Prices: a plain name is an instrument prefix (`BTC-USD`, or `BTC` for every BTC
    instrument); `price.BTC-USD` is taken as written. Books: topics are
    `book.<venue>.<instrument>`, so a plain instrument name (`BTC-USDT`) keeps that
    instrument from every venue, and any other plain name is a venue (`binance`)."""
    prefix = "price." if stream == "prices" else "book."
    if not topic or topic.startswith(prefix):
        return topic.encode(), None
    if stream == "books" and INSTRUMENT_RE.match(topic):
        return prefix.encode(), topic
    return (prefix + topic).encode(), None


class EngineWatch:
    """Notices, while a tool waits for messages, that the engine it attached to is gone."""

    def __init__(self, pid: int | None, every_s: float = 1.0) -> None:
        self.pid = pid
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    def check(self) -> None:
        if self.pid is None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        if not pid_alive(self.pid):
            raise click.ClickException(f"the engine (pid {self.pid}) has stopped")


@main.command()
@click.option("--run-dir", default=None, help=RUN_DIR_HELP)
@click.option(
    "--endpoint", default=None, help="Explicit endpoint, e.g. ipc:///tmp/mmengine/prices."
)
@click.option(
    "--stream", type=click.Choice(["prices", "books"]), default="prices", show_default=True
)
@click.option(
    "--topic",
    default="",
    help="Filter: an instrument (BTC-USD, or BTC for every BTC instrument); with "
    "--stream books an instrument (BTC-USDT) or a venue (binance).",
)
@click.option("--count", type=int, default=None, help="Exit after this many messages.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def tap(
    run_dir: str | None,
    endpoint: str | None,
    stream: str,
    topic: str,
    count: int | None,
    as_json: bool,
    timeout: float | None,
) -> None:
    """Attach to a running engine's IPC stream and print decoded messages.

    Without options it finds the engine through <run dir>/endpoints.json and prints Prices,
    e.g. `mmengine tap --topic BTC-USD`. It exits when the engine stops.
    """
    address, schema, pid = _resolve_endpoint(run_dir, endpoint, stream)
    import zmq

    from mmengine.codec import Codec

    subscription, instrument = tap_filter(stream, topic)
    codec = Codec(schema)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, subscription)
    sub.connect(address)
    watch = EngineWatch(pid)
    gaps = SeqGaps() if stream == "prices" else None
    seen = 0
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while count is None or seen < count:
            if deadline is not None and time.monotonic() > deadline:
                raise click.ClickException(f"timed out after {seen} messages")
            if not sub.poll(200):
                watch.check()
                continue
            topic_b, payload = sub.recv_multipart()
            if instrument is not None and not topic_b.endswith(b"." + instrument.encode()):
                continue
            record = codec.decode(payload)
            seen += 1
            if gaps is not None:
                gap = gaps.check(record["instrument"], record["epoch"], record["seq"])
                if gap:
                    click.echo(gap, err=True)
            if as_json:
                click.echo(json.dumps(record))
            else:
                click.echo(_readable(topic_b.decode(), record))
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
        ctx.term()
        if gaps is not None and gaps.missed:
            click.echo(
                f"tap: {gaps.missed} Prices missed in {gaps.gaps} gaps "
                "(this subscriber fell behind)",
                err=True,
            )


class SeqGaps:
    """Gaps in each instrument's `seq` as one subscriber sees them: PUB/SUB drops messages
    for a subscriber that falls a high-water mark behind, and `seq` counts per instrument
    from 1 without gaps within an epoch, so every missed Price shows here exactly."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[int, int]] = {}  # instrument -> (epoch, seq)
        self.missed = 0
        self.gaps = 0

    def check(self, instrument: str, epoch: int, seq: int) -> str | None:
        """A line about the gap before this Price, or None."""
        prev = self.last.get(instrument)
        self.last[instrument] = (epoch, seq)
        if prev is None or prev[0] != epoch or seq == prev[1] + 1 or seq <= prev[1]:
            return None
        lost = seq - prev[1] - 1
        self.missed += lost
        self.gaps += 1
        return (
            f"gap: {instrument} seq {prev[1]} -> {seq}: {lost} Prices missed by this "
            "subscriber (it fell behind; the engine counts such episodes in "
            "mmengine_ipc_dropped_total)"
        )


def _readable(topic: str, r: dict[str, Any]) -> str:
    if topic.startswith("price."):
        return readable_price(r)
    bids = " ".join(f"{p:.8g}" for p in r["bid_prices"][:3])
    asks = " ".join(f"{p:.8g}" for p in r["ask_prices"][:3])
    return f"{topic:<30} {r['state']:<9} seq {r['venue_seq']}  bids {bids} | asks {asks}"


def readable_price(r: dict[str, Any]) -> str:
    """A Price as two or three lines: the decision, the ladder, and what was left out."""
    lat = (r["priced_ts_ns"] - r["recv_ts_ns"]) / 1000
    used = " ".join(
        f"{u['venue']}:{u['mid']:.8g}@{u['weight']:.2f}"
        + (f"(fx {u['fx_rate']:.6g})" if u["fx_rate"] != 1.0 else "")
        for u in r.get("venues_used", [])
    ) or ",".join(r["venues"])
    head = (
        f"{r['instrument']:<12} #{r['seq']:<7} fair {r['fair_value']:<12.8g} "
        f"[{r.get('method', 'mid')}] bbo {r['best_bid']:.8g} x {r['best_bid_size']:.4g} / "
        f"{r['best_ask']:.8g} x {r['best_ask_size']:.4g}  vol {r.get('volatility_bps', 0):.2f}bp "
        f"pos {r.get('position', 0):g} skew {r.get('skew_bps', 0):+.2f}bp  {lat:.0f}us"
    )
    lines = [head, f"    used {used}"]
    if r.get("cross_venue_crossed"):
        lines[0] += "  CROSSED ACROSS VENUES"
    if r.get("halted"):
        lines.append(f"    HALTED: {r['halt_reason']}")
    elif r.get("bids") or r.get("asks"):
        bids = " ".join(f"{b['price']:.8g}x{b['size']:g}" for b in r["bids"])
        asks = " ".join(f"{a['price']:.8g}x{a['size']:g}" for a in r["asks"])
        lines.append(f"    quotes {bids} | {asks}  (half-spread {r['half_spread_bps']:.2f}bp)")
    if r.get("venues_excluded"):
        out = " ".join(f"{x['venue']}:{x['reason']}" for x in r["venues_excluded"])
        lines.append(f"    excluded {out}")
    return "\n".join(lines)


@main.command()
@click.option("--run-dir", default=None, help=RUN_DIR_HELP)
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and logs).")
def top(run_dir: str | None, once: bool) -> None:
    """Live dashboard of a running engine: venues, instruments, pricing, sinks. q quits.

    Fits 100 columns; a wider terminal shows more (protocols, venue names)."""
    endpoint, _, pid = _resolve_endpoint(run_dir, None, "status")
    from mmengine.cli.top import run_top

    sys.exit(run_top(endpoint, once=once, alive=lambda: pid_alive(pid or 0)))


# A short position is negative: `set-position BTC-USD -1` must read -1 as QTY, not as an
# option (unknown options are left to the arguments).
@main.command("set-position", context_settings={"ignore_unknown_options": True})
@click.argument("instrument")
@click.argument("qty", type=float)
@click.option("--run-dir", default=None, help=RUN_DIR_HELP)
def set_position(instrument: str, qty: float, run_dir: str | None) -> None:
    """Tell a running engine the inventory position of INSTRUMENT (base units: long > 0,
    short < 0), e.g. `mmengine set-position BTC-USD -1`.

    The engine re-prices the instrument at once with the new skew. A position beyond the
    instrument's quote.max_position is accepted; the skew stays at its maximum.
    """
    endpoint, _, _pid = _resolve_endpoint(run_dir, None, "control")
    import zmq

    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(endpoint)
    try:
        req.send(json.dumps({"op": "set_position", "instrument": instrument, "qty": qty}).encode())
        if not req.poll(5000):
            raise click.ClickException("the engine did not answer within 5 s")
        reply = json.loads(req.recv())
    finally:
        req.close()
        ctx.term()
    if not reply.get("ok"):
        raise click.ClickException(reply.get("error", "refused"))
    click.echo(f"{instrument} position {qty:g}: accepted")
    if reply.get("warning"):
        click.echo(f"warning: {reply['warning']}", err=True)


@main.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--rate", type=float, default=200.0, show_default=True, help="Messages/s per venue.")
def demo(duration: float | None, rate: float) -> None:
    """The offline demo: simulated venues, the engine, prices shown live. Ctrl-C stops it."""
    from mmengine.cli.demo import run_demo

    sys.exit(run_demo(duration, rate))


@main.command()
@click.argument("capture", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the scorecard as one JSON object.")
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write one JSON line per book message to this file.",
)
@click.option("--venue", "venue_name", default=None, help="Replay only this venue of the capture.")
@click.option(
    "--protocol",
    "forced",
    multiple=True,
    metavar="[CONN=]NAME",
    help="Read the capture's connections (or connection CONN) as protocol NAME: for "
    "captures from hosts the registry does not know (repeatable).",
)
@click.option("--verbose", is_flag=True, help="Also log each book's state changes.")
@click.pass_context
def replay(
    ctx: click.Context,
    capture: str,
    as_json: bool,
    trace_path: str | None,
    venue_name: str | None,
    forced: tuple[str, ...],
    verbose: bool,
) -> None:
    """Replay a format-2 capture through the live venue and book code; print a scorecard.

    Each connection's protocol comes from the capture's header (`mmengine record`) or its
    connect address; connections of one protocol feed one venue's books. Frames of channels
    no venue module uses are counted as ignored. Exit 0 when every check passed, 1 when an
    integrity check failed or a frame of our channels could not be used, 2 when a connection
    (or the capture) has no venue module.
    """
    if not verbose and ctx.obj.get("log_level") is None:
        # The scorecard is the story; a state line per book is for --verbose.
        logging.getLogger("mmengine").setLevel(logging.WARNING)
    from mmengine.replay import (
        UnsupportedCapture,
        exit_code,
        format_scorecard,
        replay_capture,
        scorecard,
        unsupported_scorecard,
    )

    name = Path(capture).name
    protocols = _forced_protocols(forced)
    try:
        if trace_path:
            with open(trace_path, "w", encoding="utf-8") as trace:
                result = replay_capture(
                    capture, venue_name=venue_name, trace=trace, protocols=protocols
                )
        else:
            result = replay_capture(capture, venue_name=venue_name, protocols=protocols)
    except UnsupportedCapture as exc:
        card = unsupported_scorecard(name, str(exc))
        click.echo(json.dumps(card) if as_json else f"{name}: {exc}")
        sys.exit(2)
    except ConfigError as exc:  # the compiled book core is not built, or MMENGINE_BOOK is wrong
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(2)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"cannot read {capture}: {exc}") from exc
    card = scorecard(result)
    click.echo(json.dumps(card) if as_json else format_scorecard(card))
    sys.exit(exit_code(card))


def _forced_protocols(forced: tuple[str, ...]) -> dict[str | None, str]:
    """`--protocol NAME` (every connection) and `--protocol CONN=NAME` (one), checked."""
    from mmengine.venues.registry import PROTOCOLS

    protocols: dict[str | None, str] = {}
    for item in forced:
        conn, _, name = item.rpartition("=")
        if name not in PROTOCOLS:
            raise click.BadParameter(
                f"{name!r} is not a protocol; one of: {', '.join(sorted(PROTOCOLS))}",
                param_hint="--protocol",
            )
        protocols[conn or None] = name
    return protocols


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(), help="venues.yaml")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="FILE.jsonl or FILE.jsonl.gz"
)
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
def record(config_path: str, out: str, duration: float | None) -> None:
    """Run the engine and record what its venue connections receive and send (and the REST
    responses they fetch) as a format-2 capture that `mmengine replay` reads."""
    from mmengine.capture import CaptureWriter
    from mmengine.engine import Engine
    from mmengine.replay import record_header

    cfg = _load_or_exit(config_path)
    exchange, header_config = record_header(cfg.venue_specs())
    stop = StopFlag().install()
    writer = CaptureWriter(out, exchange, header_config)
    engine = Engine(cfg, recorder=writer)
    try:
        failed, clean = _serve(
            engine,
            stop,
            duration,
            lambda: f"recording to {out}; prices on {engine.endpoint('prices')}",
        )
    finally:
        writer.close()
    for line in engine.summary():
        click.echo(line)
    click.echo(f"recorded {out}")
    if failed or not clean:
        sys.exit(1)


@main.command("kafka-tail")
@click.option("--bootstrap", default=None, help="HOST:PORT (default: the running engine's).")
@click.option(
    "--run-dir",
    default=None,
    help=f"Find bootstrap and topic in this engine's endpoints.json (default ${RUN_DIR_ENV}, "
    "else <tmp>/mmengine).",
)
@click.option("--topic", default=None, help="Topic (default mmengine.prices).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record.")
@click.option("--count", type=int, default=None, help="Exit after this many Prices.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--group", default=None, help="Join this consumer group (commits offsets).")
@click.option("--timeout", type=float, default=None, help="Exit after this long with nothing.")
def kafka_tail(
    bootstrap: str | None,
    run_dir: str | None,
    topic: str | None,
    from_beginning: bool,
    count: int | None,
    as_json: bool,
    group: str | None,
    timeout: float | None,
) -> None:
    """Consume the Prices topic and print decoded Prices.

    Without --bootstrap it reads the broker and topic of the running engine (as `top` finds
    it). Duplicates (same instrument, epoch, seq: delivery is at-least-once) are dropped; a
    gap in seq per (instrument, epoch) is reported on stderr. Without --group no offsets are
    committed and every partition is read directly.
    """
    from mmengine.cli.kafka_tail import SeqTracker, tail

    if bootstrap is None:
        try:
            doc = find_engine(run_dir)
        except EngineNotFound as exc:
            raise click.ClickException(f"{exc}; or give --bootstrap HOST:PORT") from None
        kafka = doc.get("kafka")
        if kafka is None:
            raise click.ClickException(
                f"the engine in {doc['run_dir']} does not deliver to Kafka; give --bootstrap"
            )
        bootstrap = kafka["bootstrap"]
        topic = topic or kafka["topic"]
    topic = topic or "mmengine.prices"
    tracker = SeqTracker()
    seen = 0
    try:
        for price in tail(
            bootstrap,
            topic,
            from_beginning=from_beginning,
            group=group,
            timeout_s=timeout,
            tracker=tracker,
            on_gap=lambda msg: click.echo(f"warning: {msg}", err=True),
        ):
            click.echo(json.dumps(price) if as_json else _readable("price.", price))
            seen += 1
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(tracker.summary(), err=True)


if __name__ == "__main__":
    main()
