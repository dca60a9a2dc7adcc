"""Binance's REST bridge over real sockets: the venue connection (its own thread, the REST
fetcher thread) against the simulator, as the engine runs it.

- `binance-merged` diffs merge several update ids, as the venue's 100 ms diffs do, so a REST
  snapshot's `lastUpdateId` falls inside the next diff's range: the book bridges it with no
  gap and ends equal to the simulator's own book.
- A slow REST snapshot (a proxy that holds it 2 s) stalls only the book that waits for it:
  the other book on the connection keeps being updated meanwhile.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mmengine.dev.simulator import SimulatorHandle, start_simulator
from mmengine.model import BookState
from mmengine.venues.base import VenueSpec
from mmengine.venues.binance import BinanceSpot
from mmengine.venues.transport import VenueConnection
from tests.venue_session import Tops, wait_for

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT", "ETH-USDT"]


def connect(sim: SimulatorHandle, tops: Tops, rest_url: str | None = None) -> VenueConnection:
    spec = VenueSpec(
        "binance",
        "binance",
        tuple(INSTRUMENTS),
        depth=1000,
        url=sim.ws_url,
        rest_url=rest_url or sim.rest_url,
    )
    conn = VenueConnection(spec, BinanceSpot, lambda: tops, reconnect_cap_s=0.5)
    conn.start()
    return conn


def all_live(conn: VenueConnection) -> bool:
    return all(b.state is BookState.LIVE for b in list(conn.venue.books.values()))


def same_as_simulator(conn: VenueConnection, sim: SimulatorHandle, inst: str) -> None:
    """Our book equals what the simulator sent (call it with the simulator stalled)."""
    protocol: Any = sim.protocol
    bids, asks = protocol.sent_book(inst) if sim.venue == "binance-merged" else sim.book(inst)
    book = conn.venue.books[inst]
    assert book.state is BookState.LIVE
    assert [(p, book.bids.sizes[p]) for p in book.bids.prices(1000)] == [
        (float(p), float(q)) for p, q in bids
    ]
    assert [(p, book.asks.sizes[p]) for p in book.asks.prices(1000)] == [
        (float(p), float(q)) for p, q in asks
    ]


def test_snapshots_inside_a_merged_diff_bridge_without_a_gap() -> None:
    tops = Tops()
    with start_simulator("binance-merged", instruments=INSTRUMENTS, rate=300, seed=41) as sim:
        conn = connect(sim, tops)
        try:
            venue = conn.venue
            wait_for(lambda: all_live(conn))
            protocol: Any = sim.protocol
            # Reconnect until several syncs met a snapshot taken inside a merging diff.
            for _ in range(8):
                if protocol.snapshots_inside_a_diff >= 2:
                    break
                reconnects = venue.venue_stats.reconnects
                sim.inject("drop")
                wait_for(lambda r=reconnects: venue.venue_stats.reconnects > r)
                wait_for(lambda: all_live(conn))
            assert protocol.snapshots_inside_a_diff >= 2
            time.sleep(0.3)
            sim.inject("stall")  # nothing moves for 3 s: the client catches up
            time.sleep(0.6)
            for inst in INSTRUMENTS:
                same_as_simulator(conn, sim, inst)
            stats = venue.stats.values()
            assert sum(s.sequence_gaps for s in stats) == 0
            assert sum(s.resyncs for s in stats) == 0
        finally:
            conn.stop()
            conn.join(5)
    assert not conn.is_alive()


@pytest.fixture
def slow_rest(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A REST proxy to the simulator that holds every snapshot after the first two (one
    per symbol) for 2 s."""
    state: dict[str, Any] = {"target": None, "served": 0, "held": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["served"] += 1
            if state["served"] > 2:
                state["held"].append(time.monotonic())
                time.sleep(2.0)
            with urllib.request.urlopen(state["target"] + self.path, timeout=5) as resp:
                body = resp.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_slow_rest_snapshot_does_not_stop_the_other_books(slow_rest: dict[str, Any]) -> None:
    tops = Tops()
    with start_simulator("binance", instruments=INSTRUMENTS, rate=200, seed=42) as sim:
        slow_rest["target"] = sim.rest_url
        conn = connect(sim, tops, rest_url=slow_rest["url"])
        try:
            venue = conn.venue
            wait_for(lambda: all_live(conn))
            sim.inject("gap")  # one symbol's diff is lost: it resyncs from a held snapshot
            wait_for(lambda: bool(slow_rest["held"]), 5)
            held_at = slow_rest["held"][0]
            resyncing = next(i for i, b in venue.books.items() if b.state is not BookState.LIVE)
            other = next(i for i in INSTRUMENTS if i != resyncing)
            wait_for(lambda: all_live(conn), 10)
        finally:
            conn.stop()
            conn.join(5)
    # While the snapshot was held (2 s), the other book kept publishing its updates.
    during = [t for at, t in tops.got if held_at + 0.2 < at < held_at + 1.8]
    assert sum(1 for t in during if t.instrument == other and t.state == "LIVE") > 50
    assert not any(t.instrument == resyncing and t.state == "LIVE" for t in during)
    assert venue.venue_stats.reconnects == 0
