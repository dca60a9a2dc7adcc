"""Thread supervision (its own thread, `supervisor`): nothing the engine runs dies silently.

Every engine thread is registered with a policy:

- `restart`: a thread that holds no inproc endpoint other threads connect to (venue
  connections, the control and status threads, the metrics server) is replaced by a fresh
  one, after a backoff that grows while it keeps dying (0 s, then 1 s doubling to 30 s).
- `fatal`: a thread that binds an inproc endpoint others are connected to (pricing workers,
  writers and their helpers) cannot be replaced in place: ZeroMQ's
  inproc transport does not reconnect a peer to a re-bound endpoint (checked with libzmq
  4.3.5), so a replacement would receive nothing. Its death makes the engine exit non-zero
  (crash-only): the supervisor sets `failed`, `mmengine run` stops and exits 1, and the
  service manager restarts the process; spools and the epoch file carry the state over.

Those threads already catch what one message, request or record can throw; a death here
means something outside that (an exception in a guard, SystemExit, a socket error). It is
noticed within `CHECK_S` (a dead thread is found by `is_alive()`, which also catches the
SystemExit that Python's threading drops without a word), logged at ERROR with the thread's
name and, where Python gave one, its traceback, counted per thread, and shown in the status
snapshot (`threads`), the metrics (`mmengine_thread_*`) and `mmengine top`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("mmengine.supervisor")

CHECK_S = 0.2  # how often threads are looked at: a death is noticed within this
RESTART_BACKOFF_S = (1.0, 30.0)  # second restart waits 1 s, doubling to 30 s
STABLE_S = 60.0  # a thread that lived this long starts its backoff over


@dataclass
class Supervised:
    """One supervised thread (and its successors, for `restart`)."""

    name: str
    kind: str  # venue | pricing | writer | control | status | metrics
    thread: threading.Thread
    restart: Callable[[], threading.Thread] | None  # None: fatal
    deaths: int = 0
    restarts: int = 0
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)
    next_restart: float | None = None  # set while a dead thread waits for its restart
    backoff_s: float = 0.0

    def report(self) -> dict[str, Any]:
        """What status and metrics show for this thread."""
        return {
            "name": self.name,
            "kind": self.kind,
            "alive": self.thread.is_alive(),
            "policy": "restart" if self.restart is not None else "fatal",
            "deaths": self.deaths,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


class Supervisor(threading.Thread):
    """Watches registered threads; restarts or fails the engine (see the module doc)."""

    def __init__(self, on_fatal: Callable[[str], None]) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.on_fatal = on_fatal
        self.entries: list[Supervised] = []
        self._lock = threading.Lock()  # guards `entries` (registered from the main thread)
        self._stop_event = threading.Event()
        self._errors: dict[int, str] = {}  # thread ident -> its exception, from the hook
        self._previous_hook = threading.excepthook

    def watch(
        self,
        thread: threading.Thread,
        kind: str,
        restart: Callable[[], threading.Thread] | None = None,
    ) -> Supervised:
        """Supervise a started thread (or one started later: a thread never started is
        not dead)."""
        entry = Supervised(thread.name, kind, thread, restart)
        with self._lock:
            self.entries.append(entry)
        return entry

    def reports(self) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self.entries)
        return [e.report() for e in entries]

    def stop(self) -> None:
        self._stop_event.set()

    def install_hook(self) -> None:
        """Log an uncaught exception in any thread through logging (with the thread's name
        and traceback) and keep it for the supervisor's report."""

        def hook(args: threading.ExceptHookArgs) -> None:
            name = args.thread.name if args.thread is not None else "?"
            text = "".join(traceback.format_exception_only(args.exc_type, args.exc_value)).strip()
            if args.thread is not None and args.thread.ident is not None:
                self._errors[args.thread.ident] = text
            log.error(
                "thread %s raised %s",
                name,
                text,
                # typeshed: excepthook's exc_value is optional; logging takes it as given
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
                extra={"event": "thread_died"},
            )

        threading.excepthook = hook

    def remove_hook(self) -> None:
        threading.excepthook = self._previous_hook

    def run(self) -> None:
        while not self._stop_event.wait(CHECK_S):
            try:
                self.check()
            except Exception:  # a supervisor bug must not end supervision
                log.exception("supervisor check failed")

    def check(self, now: float | None = None) -> None:
        """One look at every thread (also called directly by tests)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            entries = list(self.entries)
        for entry in entries:
            if self._stop_event.is_set():
                return
            thread = entry.thread
            if entry.next_restart is None:
                if thread.ident is None or thread.is_alive():
                    continue
                self._died(entry, now)
            if entry.next_restart is not None and now >= entry.next_restart:
                self._restart(entry, now)

    def _died(self, entry: Supervised, now: float) -> None:
        entry.deaths += 1
        ident = entry.thread.ident
        entry.last_error = self._errors.pop(ident, "") if ident is not None else ""
        why = entry.last_error or "it ended without an exception (SystemExit or a return)"
        if entry.restart is None:
            log.critical(
                "thread %s died (%s); it cannot be restarted in place, so the engine exits "
                "(crash-only) and its service manager restarts it",
                entry.name,
                why,
                extra={"event": "thread_died"},
            )
            self.on_fatal(f"thread {entry.name} died: {why}")
            return
        if now - entry.started > STABLE_S:
            entry.backoff_s = 0.0
        wait = entry.backoff_s
        entry.backoff_s = (
            RESTART_BACKOFF_S[0] if wait == 0.0 else min(wait * 2, RESTART_BACKOFF_S[1])
        )
        entry.next_restart = now + wait
        log.error(
            "thread %s died (%s); restarting it in %.1f s (death %d)",
            entry.name,
            why,
            wait,
            entry.deaths,
            extra={"event": "thread_died"},
        )

    def _restart(self, entry: Supervised, now: float) -> None:
        assert entry.restart is not None
        entry.next_restart = None
        try:
            entry.thread = entry.restart()
        except Exception as exc:
            log.exception("thread %s could not be restarted", entry.name)
            self.on_fatal(f"thread {entry.name} died and could not be restarted: {exc!r}")
            return
        entry.started = now
        entry.restarts += 1
        log.warning(
            "thread %s restarted (restart %d)",
            entry.name,
            entry.restarts,
            extra={"event": "thread_restarted"},
        )
