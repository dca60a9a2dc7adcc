"""Assembles and runs the engine (main thread): run dir, IPC publishers, pricing workers,
venue threads; and takes them down in order on stop.

Threads: one per venue connection (`venue-<name>`), one per pricing shard (`pricing-<k>`),
one C-level `zmq.proxy` per IPC stream (`ipc-<stream>`). They share only the zmq.Context.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zmq

from mmengine.bus import BOOKS_IN, PRICES_IN, BookTopRouter, stable_shard
from mmengine.codec import Codec
from mmengine.config import Config
from mmengine.errors import MmengineError
from mmengine.metrics import serve_metrics
from mmengine.pricing.control import ControlServer
from mmengine.pricing.model import InstrumentSpec
from mmengine.pricing.worker import PricingWorker
from mmengine.sinks.kafka import KafkaWriter
from mmengine.sinks.postgres import PostgresWriter
from mmengine.sinks.writer import SpoolingWriter
from mmengine.status import StatusPublisher
from mmengine.venues.base import VenueSpec
from mmengine.venues.registry import PROTOCOLS
from mmengine.venues.transport import Recorder, VenueConnection

log = logging.getLogger("mmengine.engine")


class RunDirBusy(MmengineError):
    """Another engine holds the run dir."""


@dataclass(frozen=True)
class Stream:
    """One IPC stream the engine exposes."""

    name: str
    inproc: str
    topic_prefix: str
    schema: str


STREAMS = (
    Stream("prices", PRICES_IN, "price.", "price.avsc"),
    Stream("books", BOOKS_IN, "book.", "book_top.avsc"),
)


class IpcPublisher(threading.Thread):
    """XSUB (inproc, the engine's PUBs connect) -> XPUB (ipc, local subscribers) in C."""

    def __init__(self, ctx: zmq.Context, stream: Stream, endpoint: str) -> None:
        super().__init__(name=f"ipc-{stream.name}", daemon=True)
        self.ctx = ctx
        self.stream = stream
        self.endpoint = endpoint
        self.control = f"inproc://control.{stream.name}"
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        xsub = self.ctx.socket(zmq.XSUB)
        xpub = self.ctx.socket(zmq.XPUB)
        control = self.ctx.socket(zmq.PAIR)
        for sock in (xsub, xpub, control):
            sock.setsockopt(zmq.LINGER, 0)
        try:
            xpub.setsockopt(zmq.SNDHWM, 100_000)
            xsub.bind(self.stream.inproc)
            xpub.bind(self.endpoint)
            path = self.endpoint.removeprefix("ipc://")
            os.chmod(path, 0o600)
            control.bind(self.control)
        except zmq.ZMQError as exc:
            self.error = exc
            self.ready.set()
            for sock in (xsub, xpub, control):
                sock.close()
            return
        self.ready.set()
        try:
            zmq.proxy_steerable(xsub, xpub, None, control)
        except zmq.ContextTerminated:
            pass  # stop() terminates the proxy first; this is only a late shutdown
        finally:
            for sock in (xsub, xpub, control):
                sock.close()

    def terminate(self, ctx: zmq.Context) -> None:
        if self.error is not None or not self.is_alive():
            return
        sock = ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 1000)  # 0 could discard the command before delivery
        sock.connect(self.control)
        sock.send(b"TERMINATE")
        sock.close()
        self.join(timeout=5)


class Engine:
    """One engine run: `start()`, then `stop()` (or `run_until(event)`)."""

    def __init__(self, cfg: Config, recorder: Recorder | None = None) -> None:
        self.cfg = cfg
        self.epoch = cfg.engine.epoch if cfg.engine.epoch is not None else time.time_ns()
        self.run_dir = Path(cfg.engine.run_dir)
        self.recorder = recorder
        self.ctx: zmq.Context | None = None
        self.publishers: list[IpcPublisher] = []
        self.workers: list[PricingWorker] = []
        self.writers: list[SpoolingWriter] = []
        self.connections: list[VenueConnection] = []
        self.control: ControlServer | None = None
        self.status: StatusPublisher | None = None
        self.metrics_server: Any = None
        self._lock_file: IO[str] | None = None
        self.started_ns = 0

    # --- start ---------------------------------------------------------------------------

    def _claim_run_dir(self) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
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
            self._preflight()
        except BaseException:
            self.stop()
            raise
        sys.setswitchinterval(cfg.engine.switch_interval_us / 1e6)
        self.ctx = ctx = zmq.Context()
        self.started_ns = time.time_ns()
        try:
            streams = [s for s in STREAMS if s.name != "books" or cfg.outputs.ipc.books]
            for stream in streams:
                pub = IpcPublisher(ctx, stream, self.endpoint(stream.name))
                pub.start()
                pub.ready.wait(5)
                if pub.error is not None:
                    raise MmengineError(f"cannot bind {pub.endpoint}: {pub.error}")
                self.publishers.append(pub)
            # Writers bind their inproc PULLs before the workers connect their PUSHes.
            self._start_writers(ctx)
            self._start_postgres_writer(ctx)
            self._start_workers(ctx, cfg.instrument_specs())
            self._start_control(ctx)
            self._start_status(ctx)
            self._start_venues(ctx, cfg.venue_specs(), cfg.instrument_specs())
            self._write_endpoints(streams)
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
                sink_endpoints=tuple(w.endpoint for w in self.writers),
                fx=self.cfg.fx_specs(),
                fx_inputs=tuple(fx_inputs.values()),
                positions=self.cfg.positions(),
            )
            worker.start()
            worker.ready.wait(5)
            self.workers.append(worker)

    def _start_status(self, ctx: zmq.Context) -> None:
        status = StatusPublisher(self, ctx, self.endpoint("status"))
        status.start()
        status.ready.wait(5)
        self.status = status
        if status.error is not None:
            raise MmengineError(f"cannot bind {status.endpoint}: {status.error}")
        port = self.cfg.engine.metrics_port
        if port is not None:
            try:
                self.metrics_server = serve_metrics(self, port)
            except OSError as exc:
                raise MmengineError(f"cannot serve metrics on 127.0.0.1:{port}: {exc}") from exc

    def _start_control(self, ctx: zmq.Context) -> None:
        control = ControlServer(
            ctx,
            self.endpoint("control"),
            {i.name for i in self.cfg.instruments},
            self.cfg.engine.pricing_workers,
            {i.name: i.quote.max_position for i in self.cfg.instruments},
        )
        control.start()
        control.ready.wait(5)
        self.control = control
        if control.error is not None:
            raise MmengineError(f"cannot bind {control.endpoint}: {control.error}")

    def spool_dir(self, sink: str) -> Path:
        """Where a writer keeps what its sink has not acknowledged: <limits.spool_dir>/<sink>."""
        base = self.cfg.limits.spool_dir
        return (Path(base) if base else self.run_dir / "spool") / sink

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
        )
        writer.start()
        writer.ready.wait(10)
        self.writers.append(writer)
        if writer.error is not None:
            raise MmengineError(f"kafka writer cannot start: {writer.error}")

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
        )
        writer.start()
        writer.ready.wait(10)
        self.writers.append(writer)
        if writer.error is not None:
            raise MmengineError(f"postgres writer cannot start: {writer.error}")

    def _start_venues(
        self, ctx: zmq.Context, venues: list[VenueSpec], instruments: list[InstrumentSpec]
    ) -> None:
        k_total = self.cfg.engine.pricing_workers
        publish_books = self.cfg.outputs.ipc.books
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

            def make_router(routes: dict[str, list[str]] = routes) -> BookTopRouter:
                return BookTopRouter(ctx, k_total, routes, publish_books)

            conn = VenueConnection(
                spec,
                PROTOCOLS[spec.protocol],
                make_router,
                reconnect_cap_s=self.cfg.limits.reconnect_max_s,
                recorder=self.recorder,
            )
            conn.start()
            self.connections.append(conn)

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

    def stop(self) -> None:
        """Join every thread, close every socket, remove the IPC socket files."""
        for conn in self.connections:
            conn.stop()
        for conn in self.connections:
            conn.join(timeout=10)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        for helper in (self.status, self.control):
            if helper is not None:
                helper.stop()
                helper.join(timeout=5)
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.join(timeout=5)
        # After the workers (their queued Prices reach the writers' spools), before the
        # context ends: each writer delivers what it can within its drain timeout and
        # leaves the rest in its spool for the next start.
        for writer in self.writers:
            writer.stop()
        for writer in self.writers:
            writer.join(timeout=writer.cfg.drain_timeout_s + 15)
        if self.ctx is not None:
            for pub in self.publishers:
                pub.terminate(self.ctx)
            self.ctx.term()
            self.ctx = None
        if self._lock_file is not None:  # only the engine holding the run dir cleans it
            for pub in self.publishers:
                Path(pub.endpoint.removeprefix("ipc://")).unlink(missing_ok=True)
            for extra in ("control", "status"):
                Path(self.endpoint(extra).removeprefix("ipc://")).unlink(missing_ok=True)
            (self.run_dir / "endpoints.json").unlink(missing_ok=True)
            (self.run_dir / "engine.lock").unlink(missing_ok=True)
            self._lock_file.close()
            self._lock_file = None

    def summary(self) -> list[str]:
        """One line per venue: frames, book messages, resyncs, gaps, skips, reconnects."""
        lines = []
        for conn in self.connections:
            venue = conn.venue
            vs = venue.venue_stats
            gaps = sum(s.sequence_gaps for s in venue.stats.values())
            checks = sum(s.checksums_failed for s in venue.stats.values())
            lines.append(
                f"{venue.name}: {vs.frames} frames, {vs.book_frames} book messages, "
                f"{counted(vs.resyncs, 'resyncs')}, {gaps} gaps, {checks} checksum failures, "
                f"{counted(vs.skipped, 'skipped')}, {vs.reconnects} reconnect attempts"
            )
        prices = sum(w.stats.prices for w in self.workers)
        inputs = sum(w.stats.inputs for w in self.workers)
        lines.append(f"pricing: {inputs} book tops in, {prices} prices out")
        lines.extend(writer.summary_line() for writer in self.writers)
        return lines


def counted(by_kind: dict[str, int], noun: str) -> str:
    """`7 resyncs (gap 5, checksum 2)`, or `0 resyncs`."""
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items()) if n)
    return f"{sum(by_kind.values())} {noun}" + (f" ({kinds})" if kinds else "")
