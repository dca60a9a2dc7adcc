"""Assembles and runs the engine (main thread): run dir, epoch, IPC publishers, writers,
pricing workers, venue threads; supervises them; and takes them down in order on stop.

Threads: one per venue connection (`venue-<name>`), one per pricing shard (`pricing-<k>`),
a writer per sink (`kafka-writer`,
`pg-writer`, each with a helper), `control`, `status`, the metrics server, and the
`supervisor` (see `mmengine.ops.supervisor`: every other thread's death is noticed within a
second and restarts it or ends the engine). They share only the zmq.Context and each IPC
stream's publishing socket (`IpcPublisher`, used under its lock).

Start-up refuses what would be unsafe: a run dir owned by another user or writable by others
(it is never chmod-ed once it exists), or a configured epoch not above the last run's.
Stop is bounded: within `engine.shutdown_timeout_s` every thread is joined and the context
terminated, or the threads still alive are named and `stop()` returns 1.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol

import zmq

from mmengine.bus import BookTopRouter, IpcPublisher, stable_shard
from mmengine.codec import Codec
from mmengine.config import Config
from mmengine.errors import MmengineError
from mmengine.ops.metrics import serve_metrics
from mmengine.ops.status import StatusPublisher
from mmengine.ops.supervisor import Supervisor
from mmengine.pricing.control import ControlServer
from mmengine.pricing.model import InstrumentSpec
from mmengine.pricing.worker import PricingWorker
from mmengine.sinks.kafka import KafkaWriter
from mmengine.sinks.postgres import PostgresWriter
from mmengine.sinks.writer import SpoolingWriter
from mmengine.venues.base import VenueSpec
from mmengine.venues.registry import PROTOCOLS
from mmengine.venues.transport import Recorder, VenueConnection

log = logging.getLogger("mmengine.engine")


class StopRequest(Protocol):
    """What `run_until` waits on: a `threading.Event`, or a flag a signal handler sets
    (`mmengine.signals.StopFlag`)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


class RunDirBusy(MmengineError):
    """Another engine holds the run dir."""


class UnsafeDir(MmengineError):
    """A directory the engine would use is not the user's own, or others can write it."""


class EpochError(MmengineError):
    """The epoch cannot be chosen safely (see `next_epoch`)."""


EPOCH_FILE = "epoch"
MAX_EPOCH = 2**63 - 1  # an Avro long


def own_dir(path: Path, what: str) -> None:
    """Create `path` 0700 if absent; if it exists it must be a directory owned by this user
    and not writable by group or others. Never chmod an existing directory: `run_dir: /tmp`
    would otherwise strip /tmp's permissions."""
    try:
        path.mkdir(mode=0o700, parents=True)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeDir(f"{what} {path}: cannot create it: {exc.strerror}") from None
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDir(f"{what} {path} exists and is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeDir(
            f"{what} {path} is owned by uid {info.st_uid}, not by this user "
            f"(uid {os.geteuid()}); give the engine a directory of its own"
        )
    if info.st_mode & 0o022:
        raise UnsafeDir(
            f"{what} {path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"use a directory only its owner can write (chmod 0700 {path}, or another path)"
        )


def next_epoch(path: Path, configured: int | None, now_ns: int) -> int:
    """This run's epoch, never below the last run's: `max(now, last + 1)`, or `configured`
    if it is above the last one (else EpochError). Persisted to `path` (atomically, fsynced)
    before any Price carries it: an epoch that went backwards (a clock stepped back, a
    configured epoch reused) would have every row of the run refused by price_latest's
    guard and skipped by db-tail's cursor."""
    last: int | None = None
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = None
    except OSError as exc:
        raise EpochError(f"cannot read the last epoch from {path}: {exc.strerror}") from None
    if text is not None:
        try:
            last = int(text)
        except ValueError:
            raise EpochError(
                f"{path} should hold the last run's epoch, holds {text[:40]!r}; "
                "fix it or remove it (then the epoch is the start time in ns)"
            ) from None
    if configured is not None:
        if last is not None and configured <= last:
            raise EpochError(
                f"engine.epoch {configured} is not above the last run's epoch {last} "
                f"(recorded in {path}); consumers would ignore this run's prices. Give a "
                f"larger epoch, or leave engine.epoch unset"
            )
        epoch = configured
    else:
        epoch = now_ns if last is None else max(now_ns, last + 1)
    if epoch > MAX_EPOCH:
        raise EpochError(f"epoch {epoch} does not fit a signed 64-bit long")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{epoch}\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return epoch


@dataclass(frozen=True)
class Stream:
    """One IPC stream the engine exposes."""

    name: str
    topic_prefix: str
    schema: str


STREAMS = (
    Stream("prices", "price.", "price.avsc"),
    Stream("books", "book.", "book_top.avsc"),
)


class Engine:
    """One engine run: `start()`, then `run_until(event)` (or `stop()`).

    It is also what `mmengine.ops.status` and `mmengine.ops.metrics` read, through the reporting
    protocol there (`Reporting`): `connections`, `workers`, `writers`, `publishers`,
    `control`, `epoch`, `started_ns`, `thread_reports()` and `router_counters()`.
    """

    def __init__(self, cfg: Config, recorder: Recorder | None = None) -> None:
        self.cfg = cfg
        self.epoch = 0  # chosen in start() (next_epoch)
        self.run_dir = Path(cfg.engine.run_dir)
        self.state_dir = Path(cfg.limits.spool_dir)
        self.recorder = recorder
        self.ctx: zmq.Context | None = None
        self.publishers: list[IpcPublisher] = []
        self.workers: list[PricingWorker] = []
        self.writers: list[SpoolingWriter[Any, Any]] = []
        self.connections: list[VenueConnection] = []
        self.control: ControlServer | None = None
        self.status: StatusPublisher | None = None
        self.metrics_server: Any = None
        self.metrics_thread: threading.Thread | None = None
        self.supervisor = Supervisor(self._fatal)
        self.failed = threading.Event()  # a thread that cannot be restarted died
        self.failure = ""
        self._routers: dict[str, list[BookTopRouter]] = {}  # venue -> every router it had
        self._lock_file: IO[str] | None = None
        self.started_ns = 0

    def _fatal(self, reason: str) -> None:
        self.failure = reason
        self.failed.set()

    # --- start ---------------------------------------------------------------------------

    def _claim_run_dir(self) -> None:
        own_dir(self.run_dir, "run dir")
        lock = open(self.run_dir / "engine.lock", "a+")  # noqa: SIM115 (held for the run)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RunDirBusy(
                f"run dir {self.run_dir} is in use by another engine; "
                "give this one its own engine.run_dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock_file = lock

    def endpoint(self, stream: str) -> str:
        return f"ipc://{self.run_dir / stream}"

    def _preflight(self) -> None:
        """Every check that can refuse a start, made before any thread exists: the metrics
        port is free, and the Postgres schema is current (a server that is down is not a
        refusal: the writer spools until it is up, and checks the schema on connect)."""
        port = self.cfg.engine.metrics_port
        if port is not None:
            with socket.socket() as probe:
                # As the metrics server binds (http.server sets SO_REUSEADDR).
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as exc:
                    raise MmengineError(
                        f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}"
                    ) from None
        pg = self.cfg.outputs.postgres
        if pg is not None:
            from mmengine.sinks.pgschema import (
                SchemaError,
                check_schema,
                connect,
                redact_dsn,
                resolve_dsn,
            )

            dsn = resolve_dsn(pg.dsn)
            try:
                with connect(dsn, "mmengine-start-check", min(pg.connect_timeout_s, 3.0)) as conn:
                    check_schema(conn)
            except SchemaError as exc:
                raise MmengineError(f"postgres {redact_dsn(dsn)}: {exc}") from None
            except Exception as exc:
                log.warning(
                    "postgres %s is not reachable at start-up (%s); prices are spooled until it is",
                    redact_dsn(dsn),
                    str(exc).strip(),
                )

    def start(self) -> None:
        cfg = self.cfg
        self._claim_run_dir()
        try:
            own_dir(self.state_dir, "spool dir (limits.spool_dir)")
            self.epoch = next_epoch(self.state_dir / EPOCH_FILE, cfg.engine.epoch, time.time_ns())
            self._preflight()
        except BaseException:
            self._release_run_dir()
            raise
        sys.setswitchinterval(cfg.engine.switch_interval_us / 1e6)
        self.ctx = ctx = zmq.Context()
        self.started_ns = time.time_ns()
        self.supervisor.install_hook()
        try:
            streams = [s for s in STREAMS if s.name != "books" or cfg.outputs.ipc.books]
            for stream in streams:
                pub = IpcPublisher(ctx, stream.name, self.endpoint(stream.name))
                try:
                    pub.bind()
                except (zmq.ZMQError, OSError) as exc:
                    raise MmengineError(f"cannot bind {pub.endpoint}: {exc}") from None
                self.publishers.append(pub)
            # Writers bind their inproc PULLs before the workers connect their PUSHes.
            self._start_writers(ctx)
            self._start_postgres_writer(ctx)
            self._start_workers(ctx, cfg.instrument_specs())
            self._start_control(ctx)
            self._start_status(ctx)
            self._start_venues(ctx, cfg.venue_specs(), cfg.instrument_specs())
            self._write_endpoints(streams)
            self.supervisor.start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "engine started: epoch %d, %d venues, %d instruments, %d pricing workers",
            self.epoch,
            len(self.connections),
            len(cfg.instruments),
            len(self.workers),
        )

    def _start_workers(self, ctx: zmq.Context, instruments: list[InstrumentSpec]) -> None:
        k_total = self.cfg.engine.pricing_workers
        by_name = {i.name: i for i in instruments}
        for k in range(k_total):
            owned = [i for i in instruments if stable_shard(i.name, k_total) == k]
            # FX instruments owned elsewhere whose rates this worker's instruments need.
            fx_inputs = {
                src.fx: by_name[src.fx]
                for i in owned
                for src in i.sources
                if src.fx in by_name and stable_shard(src.fx, k_total) != k
            }
            worker = PricingWorker(
                k,
                ctx,
                owned,
                self.epoch,
                self.publisher("prices"),
                sink_endpoints=tuple(w.endpoint for w in self.writers),
                sinks_with_values=frozenset(w.endpoint for w in self.writers if w.takes_values),
                fx=self.cfg.fx_specs(),
                fx_inputs=tuple(fx_inputs.values()),
                positions=self.cfg.positions(),
            )
            worker.start()
            worker.ready.wait(5)
            self.workers.append(worker)
            if worker.error is not None:
                raise MmengineError(f"pricing worker {k} cannot start: {worker.error}")
            self.supervisor.watch(worker, "pricing")

    def publisher(self, stream: str) -> IpcPublisher:
        return next(p for p in self.publishers if p.stream == stream)

    def _start_status(self, ctx: zmq.Context) -> None:
        self.status = self._new_status(ctx)
        self.supervisor.watch(self.status, "status", lambda: self._restart_status(ctx))
        port = self.cfg.engine.metrics_port
        if port is not None:
            self._serve_metrics(port)
            assert self.metrics_thread is not None
            self.supervisor.watch(self.metrics_thread, "metrics", lambda: self._serve_metrics(port))

    def _new_status(self, ctx: zmq.Context) -> StatusPublisher:
        status = StatusPublisher(self, ctx, self.endpoint("status"))
        status.start()
        status.ready.wait(5)
        if status.error is not None:
            raise MmengineError(f"cannot bind {status.endpoint}: {status.error}")
        return status

    def _restart_status(self, ctx: zmq.Context) -> StatusPublisher:
        self.status = self._new_status(ctx)
        return self.status

    def _serve_metrics(self, port: int) -> threading.Thread:
        if self.metrics_server is not None:  # a restart: free the port first
            self.metrics_server.server_close()
        try:
            self.metrics_server, self.metrics_thread = serve_metrics(self, port)
        except OSError as exc:
            raise MmengineError(f"cannot serve metrics on 127.0.0.1:{port}: {exc}") from exc
        return self.metrics_thread

    def _start_control(self, ctx: zmq.Context) -> None:
        self.control = self._new_control(ctx)
        self.supervisor.watch(self.control, "control", lambda: self._restart_control(ctx))

    def _new_control(self, ctx: zmq.Context) -> ControlServer:
        control = ControlServer(
            ctx,
            self.endpoint("control"),
            {i.name for i in self.cfg.instruments},
            self.cfg.engine.pricing_workers,
            {i.name: i.quote.max_position for i in self.cfg.instruments},
        )
        control.start()
        control.ready.wait(5)
        if control.error is not None:
            raise MmengineError(f"cannot bind {control.endpoint}: {control.error}")
        return control

    def _restart_control(self, ctx: zmq.Context) -> ControlServer:
        previous = self.control
        self.control = self._new_control(ctx)
        if previous is not None:
            self.control.stats = previous.stats  # counters never reset during a run
        return self.control

    def spool_dir(self, sink: str) -> Path:
        """Where a writer keeps what its sink has not acknowledged: <limits.spool_dir>/<sink>."""
        return self.state_dir / sink

    def fsync_interval_s(self) -> float | None:
        policy = self.cfg.limits.fsync
        return None if policy == "none" else policy.interval_ms / 1000

    def _start_writers(self, ctx: zmq.Context) -> None:
        kafka = self.cfg.outputs.kafka
        if kafka is None:
            return
        limits = self.cfg.limits
        writer = KafkaWriter(
            ctx,
            kafka,
            self.spool_dir("kafka"),
            limits.spool_max_bytes,
            spool_memory_records=limits.spool_memory_records,
            fsync_interval_s=self.fsync_interval_s(),
        )
        writer.start()
        writer.ready.wait(10)
        self.writers.append(writer)
        if writer.error is not None:
            raise MmengineError(f"kafka writer cannot start: {writer.error}")
        self._watch_writer(writer)

    def _watch_writer(self, writer: SpoolingWriter[Any, Any]) -> None:
        self.supervisor.watch(writer, "writer")
        for helper in writer.helpers():
            self.supervisor.watch(helper, "writer")

    def _start_postgres_writer(self, ctx: zmq.Context) -> None:
        pg = self.cfg.outputs.postgres
        if pg is None:
            return
        writer = PostgresWriter(
            ctx,
            pg,
            self.spool_dir("postgres"),
            self.cfg.limits.spool_max_bytes,
            spool_memory_records=self.cfg.limits.spool_memory_records,
            fsync_interval_s=self.fsync_interval_s(),
        )
        writer.start()
        writer.ready.wait(10)
        self.writers.append(writer)
        if writer.error is not None:
            raise MmengineError(f"postgres writer cannot start: {writer.error}")
        self._watch_writer(writer)

    def _start_venues(
        self, ctx: zmq.Context, venues: list[VenueSpec], instruments: list[InstrumentSpec]
    ) -> None:
        k_total = self.cfg.engine.pricing_workers
        books = self.publisher("books") if self.cfg.outputs.ipc.books else None
        for spec in venues:
            routes: dict[str, list[str]] = {}
            by_name = {i.name: i for i in instruments}
            for inst in instruments:
                for src in inst.sources:
                    if src.venue == spec.name:
                        routes.setdefault(src.instrument, []).append(inst.name)
                    # An engine-priced FX rate: its books also go to this instrument's worker.
                    fx_inst = by_name.get(src.fx) if src.fx else None
                    for fx_src in fx_inst.sources if fx_inst else ():
                        if fx_src.venue == spec.name:
                            routes.setdefault(fx_src.instrument, []).append(inst.name)

            def make_router(
                routes: dict[str, list[str]] = routes, venue: str = spec.name
            ) -> BookTopRouter:
                # Made on the venue thread (it owns the sockets); kept here for the counters.
                router = BookTopRouter(ctx, k_total, routes, books)
                self._routers.setdefault(venue, []).append(router)
                return router

            conn = self._new_venue(spec, make_router)
            index = len(self.connections)
            self.connections.append(conn)
            self.supervisor.watch(conn, "venue", partial(self._restart_venue, index, make_router))

    def _new_venue(
        self,
        spec: VenueSpec,
        make_router: Callable[[], BookTopRouter],
        previous: VenueConnection | None = None,
    ) -> VenueConnection:
        """Start a venue connection. One that replaces a dead `previous` takes over its
        counter objects (what the reporting protocol reads), so they never reset during a
        run, and its first connect counts as a reconnect attempt."""
        conn = VenueConnection(
            spec,
            PROTOCOLS[spec.protocol],
            make_router,
            reconnect_cap_s=self.cfg.limits.reconnect_max_s,
            recorder=self.recorder,
        )
        if previous is not None:
            conn.venue.venue_stats = previous.venue.venue_stats
            conn.venue.stats = previous.venue.stats
            conn.connects = max(previous.connects, 1)
            conn.venue.venue_stats.reconnects += 1  # the restart is a reconnect attempt
        conn.start()
        return conn

    def _restart_venue(
        self, index: int, make_router: Callable[[], BookTopRouter]
    ) -> VenueConnection:
        old = self.connections[index]
        self.connections[index] = conn = self._new_venue(old.spec, make_router, previous=old)
        return conn

    def _write_endpoints(self, streams: list[Stream]) -> None:
        doc: dict[str, Any] = {
            "pid": os.getpid(),
            "epoch": self.epoch,
            "started_ns": self.started_ns,
            "ipc": {
                s.name: {
                    "endpoint": self.endpoint(s.name),
                    "topic_prefix": s.topic_prefix,
                    "schema": str(Codec(s.schema).path),
                    "fingerprint": Codec(s.schema).fingerprint.hex(),
                }
                for s in streams
            },
            "status": {"endpoint": self.endpoint("status"), "topic": "status", "format": "json"},
            "metrics": (
                f"http://127.0.0.1:{self.cfg.engine.metrics_port}/metrics"
                if self.cfg.engine.metrics_port
                else None
            ),
            "control": {
                "endpoint": self.endpoint("control"),
                "protocol": "REQ/REP JSON: {op: set_position, instrument, qty}",
            },
        }
        for writer in self.writers:
            doc[writer.sink_name] = writer.endpoint_info()
        tmp = self.run_dir / "endpoints.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.chmod(tmp, 0o600)
        tmp.replace(self.run_dir / "endpoints.json")

    # --- stop ----------------------------------------------------------------------------

    def run_until(self, stop: StopRequest, duration_s: float | None = None) -> bool:
        """Block until `stop` is set, `duration_s` passes, or a thread that cannot be
        restarted dies (`failed`); True in the last case. The caller then calls `stop()`."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not stop.is_set() and not self.failed.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self.supervisor.ident is not None and not self.supervisor.is_alive():
                self._fatal("the supervisor thread died")
                break
            stop.wait(0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic())))
        return self.failed.is_set()

    def stop(self) -> int:
        """Join every thread, close every socket, remove the IPC socket files; 0 when all
        of it happened within `engine.shutdown_timeout_s`, else 1 after naming (at ERROR)
        the threads still alive. A thread that outlives its join keeps its sockets open,
        which would make `Context.term()` block forever: the context is then left alone
        (the process is about to exit)."""
        budget = self.cfg.engine.shutdown_timeout_s
        deadline = time.monotonic() + budget

        def left(cap: float | None = None) -> float:
            rest = max(0.0, deadline - time.monotonic())
            return rest if cap is None else min(cap, rest)

        self.supervisor.stop()
        if self.supervisor.is_alive():
            self.supervisor.join(timeout=left(1.0))
        for conn in self.connections:
            conn.stop()
        for conn in self.connections:
            # Venue threads notice stop() within a receive timeout (0.25 s), or after a REST
            # fetch (10 s at most); keep a third of the budget for the rest.
            conn.join(timeout=max(0.0, left() - budget * 2 / 3))
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        for helper in (self.status, self.control):
            if helper is not None:
                helper.stop()
                helper.join(timeout=left(5.0))
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.join(timeout=left(5.0))
        # After the workers (their queued Prices reach the writers' spools), before the
        # context ends: each writer delivers what it can within its drain timeout (cut to
        # what the budget leaves) and leaves the rest in its spool for the next start.
        for writer in self.writers:
            writer.stop(drain_s=left() - 3.0)
        for writer in self.writers:
            writer.join(timeout=left())
        for pub in self.publishers:  # safe even if a producer outlived its join: it is ignored
            pub.close()
        alive = [t.name for t in self._threads() if t.is_alive()]
        clean = not alive
        if alive:
            log.error(
                "shutdown: %d thread(s) still alive after %.0f s: %s; leaving their sockets "
                "and exiting anyway",
                len(alive),
                budget,
                ", ".join(alive),
                extra={"event": "shutdown_incomplete"},
            )
        elif self.ctx is not None:
            clean = self._term_context(left())
        self.ctx = None
        self.supervisor.remove_hook()
        self._release_run_dir()
        return 0 if clean else 1

    def _threads(self) -> list[threading.Thread]:
        """Every thread this engine started (the latest of each restarted one)."""
        threads: list[threading.Thread] = [*self.connections, *self.workers]
        for writer in self.writers:
            threads.append(writer)
            threads.extend(writer.helpers())
        threads.extend(t for t in (self.control, self.status, self.metrics_thread) if t)
        return [t for t in threads if t.ident is not None]

    def _term_context(self, timeout_s: float) -> bool:
        """`ctx.term()` on a helper thread, waiting at most `timeout_s` (a socket left open
        by a thread that died without closing it would block it forever)."""
        ctx = self.ctx
        assert ctx is not None
        done = threading.Event()

        def term() -> None:
            ctx.term()
            done.set()

        threading.Thread(target=term, name="zmq-term", daemon=True).start()
        if done.wait(max(timeout_s, 0.5)):
            return True
        log.error("shutdown: the zmq context did not terminate (a socket was left open)")
        return False

    def _release_run_dir(self) -> None:
        if self._lock_file is None:  # only the engine holding the run dir cleans it
            return
        for pub in self.publishers:
            Path(pub.endpoint.removeprefix("ipc://")).unlink(missing_ok=True)
        for extra in ("control", "status"):
            Path(self.endpoint(extra).removeprefix("ipc://")).unlink(missing_ok=True)
        (self.run_dir / "endpoints.json").unlink(missing_ok=True)
        (self.run_dir / "engine.lock").unlink(missing_ok=True)
        self._lock_file.close()
        self._lock_file = None

    # --- what status and metrics read (the reporting protocol) -----------------------------

    def thread_reports(self) -> list[dict[str, Any]]:
        """Every supervised thread: alive, deaths, restarts, last error."""
        return self.supervisor.reports()

    def router_counters(self) -> dict[str, dict[str, int]]:
        """Per venue: BookTops its threads' routers deferred (a worker queue was full) and
        superseded before delivery, over every thread the venue had."""
        out = {}
        for venue, routers in list(self._routers.items()):
            out[venue] = {
                "deferred": sum(r.deferred for r in routers),
                "superseded": sum(r.superseded for r in routers),
                "waiting": sum(r.waiting for r in routers),
            }
        return out

    def summary(self) -> list[str]:
        """One line per venue: frames, book messages, resyncs, gaps, skips, reconnects."""
        lines = []
        for conn in self.connections:
            venue = conn.venue
            vs = venue.venue_stats
            gaps = sum(s.sequence_gaps for s in venue.stats.values())
            checks = sum(s.checksums_failed for s in venue.stats.values())
            lines.append(
                f"{venue.name}: {many(vs.frames, 'frame')}, "
                f"{many(vs.book_frames, 'book message')}, {counted(vs.resyncs, 'resync')}, "
                f"{many(gaps, 'gap')}, {many(checks, 'checksum failure')}, "
                f"{counted(vs.skipped, 'skipped')}, {many(vs.reconnects, 'reconnect attempt')}"
            )
        prices = sum(w.stats.prices for w in self.workers)
        inputs = sum(w.stats.inputs for w in self.workers)
        lines.append(f"pricing: {inputs} book tops in, {prices} prices out")
        lines.extend(writer.summary_line() for writer in self.writers)
        return lines


def many(n: int, noun: str) -> str:
    """`1 gap`, `0 gaps`, `2 gaps` (`skipped` stays as it is)."""
    return f"{n} {noun}" if n == 1 or noun == "skipped" else f"{n} {noun}s"


def counted(by_kind: dict[str, int], noun: str) -> str:
    """`7 resyncs (gap 5, checksum 2)`, `1 resync (gap 1)`, or `0 resyncs`."""
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items()) if n)
    return many(sum(by_kind.values()), noun) + (f" ({kinds})" if kinds else "")
