"""What every writer thread shares (the Kafka and Postgres writers subclass it): stopping,
its counters, what it tells the engine's summary and endpoints.json, and reading a spool
record back (runs on the writer thread)."""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Any, NamedTuple

from mmengine.pricing.worker import SINK_KEY
from mmengine.sinks.spool import Spool, unpack_frames


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


class SpoolingWriter(threading.Thread):
    """A writer thread delivering from its own spool. Subclasses set `stats` (a dataclass of
    ints), `spool` (once running) and `_stop_event` in their constructor."""

    sink_name = "sink"  # the `sink` label of its metrics and status entry
    stats: Any
    spool: Spool | None
    cfg: Any  # the sink's config section (drain_timeout_s)
    _stop_event: threading.Event
    _drain_s: float | None = None

    def stop(self, drain_s: float | None = None) -> None:
        """Drain, deliver what can be delivered in `drain_timeout_s` (or `drain_s`, when the
        engine's shut-down has less time left), spool the rest, exit."""
        self._drain_s = drain_s
        self._stop_event.set()

    def drain_timeout_s(self) -> float:
        """How long to keep delivering once stopped."""
        configured = float(self.cfg.drain_timeout_s)
        return configured if self._drain_s is None else max(0.0, min(configured, self._drain_s))

    def helpers(self) -> list[threading.Thread]:
        """The helper threads this writer owns (supervised with it)."""
        return []

    def counters(self) -> dict[str, int]:
        """Writer and spool counters in one flat dict (for summaries and metrics)."""
        out = asdict(self.stats)
        if self.spool is not None:
            out.update(self.spool.counters())
        return out

    def summary_line(self) -> str:
        """One line for the engine's stop summary."""
        raise NotImplementedError

    def endpoint_info(self) -> dict[str, Any]:
        """What `<run_dir>/endpoints.json` says about this sink (never a secret)."""
        raise NotImplementedError
