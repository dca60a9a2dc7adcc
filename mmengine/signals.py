"""Stop requests from SIGINT/SIGTERM (main thread of a command-line process)."""

from __future__ import annotations

import signal
import time


class StopFlag:
    """A stop request that a signal handler may set.

    `threading.Event.set()` takes the Event's own lock, and a signal handler runs on the main
    thread between bytecodes: when the signal lands while that thread holds the same lock
    inside `Event.wait()`, the handler waits on itself forever (Ctrl-C hangs the process).
    A plain attribute needs no lock; waiting is a short sleep, which a signal cuts short.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int = 0) -> None:
        self.signum = signum

    def is_set(self) -> bool:
        return self.signum is not None

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds (in steps of at most 0.1 s); True once set."""
        deadline = time.monotonic() + timeout
        while self.signum is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(0.1, left))
        return self.signum is not None

    def install(self) -> StopFlag:
        """Set this flag on SIGINT and SIGTERM; returns self."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, _frame: self.set(number))
        return self
