"""What every writer thread shares (the Kafka and Postgres writers subclass it): stopping,
its counters, and what it tells the engine's summary and endpoints.json."""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Any

from mmengine.sinks.spool import Spool


class SpoolingWriter(threading.Thread):
    """A writer thread delivering from its own spool. Subclasses set `stats` (a dataclass of
    ints), `spool` (once running) and `_stop_event` in their constructor."""

    sink_name = "sink"  # the `sink` label of its metrics and status entry
    stats: Any
    spool: Spool | None
    _stop_event: threading.Event

    def stop(self) -> None:
        """Drain, deliver what can be delivered in `drain_timeout_s`, spool the rest, exit."""
        self._stop_event.set()

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
