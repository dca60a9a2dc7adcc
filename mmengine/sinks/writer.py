"""The delivery loop every sink writer runs (its own thread, `<sink>-writer`, plus the sink's
helper thread for blocking calls): pull Prices from an inproc socket into a durable spool,
hand them to the sink, forget them once the sink acknowledged them, notice a sink that
stopped answering, count. It lives here once; a sink (`KafkaWriter`, `PostgresWriter`)
supplies only what differs, as the abstract methods of `SpoolingWriter`: how it connects
(its helper thread), how it delivers (a producer window, a batch per transaction), and what
counts as acknowledged (a broker ack, a commit).

One turn of the loop, whatever the sink:

    drain     inproc socket -> spool (never waits: pricing must not)
    collect   the sink's answers: ack delivered records to the spool, rewind on a failure
    deliver   hand the next records to the sink
    watch     records out and no answer for too long: the sink is away (spool on disk)
    flush     the spool's write-ahead to disk
    stop?     once stopped: deliver for drain_timeout_s, leave the rest in the spool
    wait      on the socket (and the helper's wake-up pipe), bounded by the sink's timeout
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

import zmq

from mmengine.bus import pack_frames, unpack_frames
from mmengine.latency import StageLatency
from mmengine.logs import RepeatLimiter
from mmengine.pricing.worker import SINK_KEY
from mmengine.sinks.spool import Spool


class SinkRecord(NamedTuple):
    """One spool record, read back: what a pricing worker handed the writer."""

    instrument: bytes
    epoch: int
    seq: int
    priced_ts_ns: int
    payload: bytes  # Avro single-object Price


def split_record(record: bytes, header: bytes) -> SinkRecord:
    """A spool record as a SinkRecord; ValueError when it is not one (a record can pass its
    CRC and still be unusable: written by another version, or by a bug). `header` is the
    Price schema's single-object header: a payload of another schema is refused here, not by
    every consumer downstream."""
    frames = unpack_frames(record)
    if len(frames) != 3:
        raise ValueError(f"{len(frames)} frames, expected 3 (instrument, key, payload)")
    instrument, key, payload = frames
    if not instrument or len(key) != SINK_KEY.size:
        raise ValueError(f"instrument of {len(instrument)} bytes, key of {len(key)} bytes")
    instrument.decode()  # UnicodeDecodeError is a ValueError
    if payload[: len(header)] != header:
        raise ValueError(f"payload header {payload[:10].hex()} is not {header.hex()}")
    epoch, seq, priced_ts_ns = SINK_KEY.unpack(key)
    return SinkRecord(instrument, epoch, seq, priced_ts_ns, payload)


class SinkConfig(Protocol):
    """What the loop reads from a sink's config section (`outputs.kafka`, `outputs.postgres`)."""

    @property
    def drain_timeout_s(self) -> float: ...


class WriterStats(Protocol):
    """A writer's counters: a dataclass of plain ints (read by other threads, no lock), with
    at least the two the loop keeps."""

    received: int  # sink messages pulled from the pricing workers
    away_episodes: int  # times the sink was found away

    if TYPE_CHECKING:
        __dataclass_fields__: ClassVar[dict[str, Any]]


ConfigT = TypeVar("ConfigT", bound=SinkConfig)
StatsT = TypeVar("StatsT", bound=WriterStats)


class SpoolingWriter(threading.Thread, ABC, Generic[ConfigT, StatsT]):
    """A writer thread delivering from its own spool to one sink; see the module docstring.

    Start it before the pricing workers (it binds the PULL at `endpoint`) and stop it after
    them: on `stop()` it drains its queue, delivers for up to `cfg.drain_timeout_s`, and
    leaves what the sink has not acknowledged in the spool for the next start. `ready` is
    set once it is running, or once it failed to start (then `error` says why).
    """

    # Whether pricing sends each Price's values beside its Avro payload (a fourth frame).
    takes_values: ClassVar[bool] = False
    # Inproc messages per turn of the loop before answers are looked at again.
    max_drain: ClassVar[int] = 10_000
    # How the shut-down lines name what the sink has not taken yet.
    undelivered: ClassVar[str] = "unacknowledged"

    def __init__(
        self,
        sink_name: str,
        thread_name: str,
        ctx: zmq.Context[Any],
        cfg: ConfigT,
        stats: StatsT,
        stage: str,
        spool_dir: str | Path,
        spool_max_bytes: int,
        spool_memory_records: int,
        endpoint: str,
        fsync_interval_s: float | None,
    ) -> None:
        super().__init__(name=thread_name, daemon=True)
        self.sink_name = sink_name  # the `sink` label of its metrics and status entry
        self.ctx = ctx
        self.cfg = cfg
        self.stats = stats
        self.stages = StageLatency((stage,))  # priced -> acknowledged, per record
        self.endpoint = endpoint
        self.spool_dir = Path(spool_dir)
        self.spool_max_bytes = spool_max_bytes
        self.spool_memory_records = spool_memory_records
        self.fsync_interval_s = fsync_interval_s
        self.spool: Spool | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.logger = logging.getLogger(f"mmengine.{sink_name}")
        self._stop_event = threading.Event()
        self._drain_s: float | None = None
        # The last sign of life from the sink (an acknowledgement, a new connection, or
        # nothing out): the stall watch measures silence from here.
        self._progress_at = time.monotonic()
        self._log = RepeatLimiter()

    # --- what the engine reads ----------------------------------------------------------------

    def stop(self, drain_s: float | None = None) -> None:
        """Drain, deliver what can be delivered in `drain_timeout_s` (or `drain_s`, when the
        engine's shut-down has less time left), spool the rest, exit."""
        self._drain_s = drain_s
        self._stop_event.set()

    def drain_timeout_s(self) -> float:
        """How long to keep delivering once stopped."""
        configured = float(self.cfg.drain_timeout_s)
        return configured if self._drain_s is None else max(0.0, min(configured, self._drain_s))

    def counters(self) -> dict[str, int]:
        """Writer and spool counters in one flat dict (for summaries and metrics)."""
        out: dict[str, int] = asdict(self.stats)
        if self.spool is not None:
            out.update(self.spool.counters())
        return out

    @abstractmethod
    def helpers(self) -> list[threading.Thread]:
        """The helper threads this writer owns (supervised with it)."""

    @abstractmethod
    def summary_line(self) -> str:
        """One line for the engine's stop summary."""

    @abstractmethod
    def endpoint_info(self) -> dict[str, Any]:
        """What `<run_dir>/endpoints.json` says about this sink (never a secret)."""

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.RCVHWM, 100_000)
        try:
            self._check()
            pull.bind(self.endpoint)
            self.spool = spool = Spool(
                self.spool_dir,
                self.spool_max_bytes,
                memory_records=self.spool_memory_records,
                name=f"{self.sink_name} spool",
                fsync_interval_s=self.fsync_interval_s,
            )
        except Exception as exc:
            self.error = exc
            pull.close()
            self._abandon()
            self.ready.set()
            return
        self._start_helpers()
        self.ready.set()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        for fd in self._wake_fds():
            poller.register(fd, zmq.POLLIN)
        deadline: float | None = None
        try:
            while True:
                got = self._drain(pull, spool)
                now = time.monotonic()
                stopping = self._stop_event.is_set()
                self._collect(spool, now)
                self._deliver(spool, now, stopping)
                self._watch(spool, now)
                spool.flush()
                if stopping:
                    if deadline is None:
                        deadline = now + self.drain_timeout_s()
                    if got == 0 and (spool.pending == 0 or now > deadline):
                        break
                poller.poll(self._timeout_ms(spool, now))
        except Exception:
            self.logger.exception(
                "%s writer failed; what is %s stays in the spool", self.sink_name, self.undelivered
            )
            raise
        finally:
            self._shutdown(pull, spool)

    def _drain(self, pull: zmq.Socket[Any], spool: Spool) -> int:
        """Move what pricing sent into the spool, up to `max_drain` messages."""
        n = 0
        put = spool.put
        recv = pull.recv
        keep = self._record
        limit = self.max_drain
        self._drain_starts(spool)
        while n < limit:
            # recv_multipart asks the socket for RCVMORE per frame, through an enum
            # conversion; a frame received without copy carries the flag (~30 % cheaper).
            try:
                frame = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            frames = [frame.bytes]
            while frame.more:  # the rest of a multipart message is there already
                frame = recv(zmq.NOBLOCK, copy=False)
                frames.append(frame.bytes)
            put(keep(frames, n))
            n += 1
            if not n & 63 and self._deliverer_free():
                break  # the sink can take more now: hand it the next records first
        self.stats.received += n
        if n:
            self._drained()
        return n

    def _acknowledged(self, spool: Spool, n: int, now: float) -> None:
        """The sink acknowledged the `n` oldest records handed to it: forget them. The sink
        answers again, so a spool that had gone to disk while it was away goes back to
        memory."""
        spool.ack(n)
        self._progress_at = now
        if spool.away:
            self.logger.info(
                "%s is back: delivering %d spooled records (%d bytes)",
                self.sink_name,
                spool.pending,
                spool.stats.spool_bytes,
            )
            spool.set_away(False)

    def _watch(self, spool: Spool, now: float) -> None:
        """The stall watch: records out and no answer for longer than the sink allows."""
        limit = self._stall_limit_s(spool)
        if limit is None:
            self._progress_at = now  # nothing out: silence is no sign of trouble
            return
        waited = now - self._progress_at
        if waited > limit:
            self.stats.away_episodes += 1
            self._stalled(spool, waited)

    def _shutdown(self, pull: zmq.Socket[Any], spool: Spool) -> None:
        pull.close()
        self._stop_helpers(spool)
        left = spool.pending
        spool.close()
        if left:
            self.logger.warning(
                "%s writer stopped with %d records %s; they are in %s "
                "and go out first on the next start",
                self.sink_name,
                left,
                self.undelivered,
                self.spool_dir,
            )

    # --- what a sink supplies -----------------------------------------------------------------

    @abstractmethod
    def _start_helpers(self) -> None:
        """Start the helper thread(s) and ask for a first connection."""

    @abstractmethod
    def _collect(self, spool: Spool, now: float) -> None:
        """Take the sink's answers: `_acknowledged` what it acknowledged (in spool order);
        on a failure, rewind the spool so everything unacknowledged goes out again."""

    @abstractmethod
    def _deliver(self, spool: Spool, now: float, stopping: bool) -> None:
        """Hand the next records to the sink (or ask for a connection when there is none)."""

    @abstractmethod
    def _stall_limit_s(self, spool: Spool) -> float | None:
        """How long the sink may stay silent now; None when nothing is out to it."""

    @abstractmethod
    def _stalled(self, spool: Spool, waited_s: float) -> None:
        """No answer for `waited_s` with records out: treat the sink as away."""

    @abstractmethod
    def _timeout_ms(self, spool: Spool, now: float) -> int:
        """How long the loop may wait for a message before looking at the sink again."""

    @abstractmethod
    def _stop_helpers(self, spool: Spool) -> None:
        """Stop the helper thread(s) on the way out; apply any answer that still came."""

    # Hooks with a default: a sink overrides those it needs.

    def _check(self) -> None:
        """Fail at start (before the socket is bound) on what would only fail later."""

    def _abandon(self) -> None:
        """Release what the constructor acquired, when the writer failed to start."""

    def _wake_fds(self) -> Sequence[int]:
        """File descriptors that wake the loop besides the socket (a helper's pipe)."""
        return ()

    def _drain_starts(self, spool: Spool) -> None:
        """Called before each drain (decide how much work each message may cost)."""

    def _record(self, frames: list[bytes], n: int) -> bytes:
        """The spool record of one sink message (`n`: messages drained before it): the
        message itself (`mmengine.bus.sink_message`). A message of another shape is joined
        into one record as it came, and refused with a count when it is delivered."""
        return frames[0] if len(frames) == 1 else pack_frames(frames)

    def _deliverer_free(self) -> bool:
        """Whether the sink could take more right now (checked every 64 messages)."""
        return False

    def _drained(self) -> None:
        """Called after a drain that moved at least one message."""
