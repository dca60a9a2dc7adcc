"""Pieces of the shared transport: backoff with jitter, the REST weight limiter."""

from __future__ import annotations

import time

from mmengine.book.sync import RestBudget
from mmengine.venues.transport import Backoff


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_backoff_jitter_spreads_reconnects() -> None:
    delays = {round(Backoff(base_s=1.0, cap_s=8.0).next_delay(), 6) for _ in range(50)}
    assert len(delays) > 40  # equal jitter: clients do not reconnect in lockstep


def test_rate_limiter_spends_and_refills() -> None:
    limiter = RestBudget(capacity=10, per_seconds=1.0)
    assert limiter.try_acquire(6)
    assert not limiter.try_acquire(6)
    time.sleep(0.45)
    assert limiter.try_acquire(6)


def test_reconnect_attempts_are_counted_even_when_none_connects() -> None:
    """A venue that never answers must not report "0 reconnects"."""
    from mmengine.venues.base import VenueSpec
    from mmengine.venues.registry import PROTOCOLS
    from mmengine.venues.transport import VenueConnection
    from tests.conftest import free_port

    class Nowhere:
        waiting = 0

        def send(self, top: object) -> None:
            pass

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    spec = VenueSpec("okx", "okx-v5", ("BTC-USDT",), depth=400, url=f"ws://127.0.0.1:{free_port()}")
    conn = VenueConnection(spec, PROTOCOLS["okx-v5"], Nowhere, reconnect_cap_s=0.2)
    conn._backoff = Backoff(base_s=0.05, cap_s=0.1)
    conn.start()
    deadline = time.monotonic() + 5
    while conn.venue.venue_stats.reconnects < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    conn.stop()
    conn.join(5)
    assert conn.connects == 0
    assert conn.venue.venue_stats.reconnects >= 3
