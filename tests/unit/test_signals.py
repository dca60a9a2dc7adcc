"""A stop request set by a real signal, without the lock `Event.set()` would take."""

from __future__ import annotations

import os
import signal
import threading
import time

from mmengine.signals import StopFlag


def test_a_signal_sets_the_flag_and_ends_a_wait_at_once() -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        flag = StopFlag().install()
        assert not flag.wait(0.05)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        assert flag.wait(10.0)
        assert time.monotonic() - started < 2.0
        assert flag.signum == signal.SIGTERM
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_the_handler_takes_no_lock() -> None:
    """What made Event unsafe: its set() acquires a lock the waiting thread may hold. The
    flag's set() is a plain attribute store, so it works even while a lock is held."""
    flag = StopFlag()
    lock = threading.Lock()
    with lock:
        flag.set(signal.SIGINT)
    assert flag.is_set() and flag.wait(0.0)
