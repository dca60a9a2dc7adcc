"""Logging helpers shared by every thread: setup and a rate-limited repeat counter."""

from __future__ import annotations

import logging
import sys
import time


def setup_logging(level: str = "INFO") -> None:
    """Human-readable lines on stderr: time, level, thread, logger, message."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-5s %(threadName)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


class RepeatLimiter:
    """Lets one log line per key through every `interval_s`; counts what it held back.

    Owned by one thread (no locking). `allow(key)` returns None when the line must be
    suppressed, else the number of repeats suppressed since the last line for that key.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
