"""Each protocol against its simulator over real loopback sockets, through the shared
transport (the venue thread, its REST fetcher) as the engine runs it.

- (b) A lost update (the simulator's `gap`) or a wrong checksum (`badchecksum`, where the
  venue has one) resyncs one book, or the connection where the venue's rule says so; the
  book is LIVE again and equals the simulator's own.
- (d) A dropped connection reconnects, resubscribes, and the rebuilt books equal the
  simulator's own.
- (t) Every LIVE top the connection publishes, through lost updates, bad checksums, broken
  frames and a dropped connection, is the book the simulator announced under the
  `venue_seq` it names (the simulator's own record of what it sent, `truth=True`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mmengine.dev.simulator import SimulatorHandle, start_simulator
from mmengine.dev.simulator.binance_futures import contract_size
from mmengine.venues.base import VenueSpec
from mmengine.venues.transport import VenueConnection
from tests.conformance.conftest import all_live, kit_of, registration
from tests.venue_session import Tops, wait_for

pytestmark = pytest.mark.integration


@contextmanager
def connected(
    protocol: str, seed: int, truth: bool = False
) -> Iterator[tuple[SimulatorHandle, VenueConnection]]:
    """The protocol's simulator and a venue connection to it, its books LIVE."""
    kit = kit_of(protocol)
    simulator = registration(protocol).simulator_classes()[0].venue
    with start_simulator(
        simulator, instruments=list(kit.instruments), rate=200, seed=seed, truth=truth
    ) as sim:
        spec = VenueSpec(
            "v",
            protocol,
            kit.instruments,
            depth=kit.depth,
            url=sim.ws_url,
            rest_url=sim.rest_url,
        )
        conn = VenueConnection(spec, registration(protocol).venue, Tops, reconnect_cap_s=0.5)
        conn.start()
        try:
            wait_for(lambda: all_live(conn.venue))
            yield sim, conn
        finally:
            conn.stop()
            conn.join(5)
    assert not conn.is_alive()


def same_books(sim: SimulatorHandle, conn: VenueConnection) -> None:
    """Stall the simulator, let the client catch up, and compare every book with the
    simulator's own (the levels the venue keeps for the subscribed depth)."""
    sim.inject("stall")
    time.sleep(0.5)
    for inst, book in conn.venue.books.items():
        bids, asks = sim.book(inst)
        for side, levels in ((book.bids, bids), (book.asks, asks)):
            want = [(float(p), float(q)) for p, q in levels[: book.depth]]
            assert [(p, side.sizes[p]) for p in side.prices(len(want))] == want, inst
            assert len(side) == len(want), inst


def resyncs(conn: VenueConnection) -> dict[str, int]:
    return {i: s.resyncs for i, s in list(conn.venue.stats.items())}


def test_a_lost_update_resyncs_what_the_venue_rule_says(protocol: str) -> None:
    venue_cls = registration(protocol).venue
    fault = "badchecksum" if venue_cls.checksum is not None else "gap"
    with connected(protocol, seed=51) as (sim, conn):
        venue = conn.venue
        before = resyncs(conn)
        for _ in range(10):  # a lost step that changed nothing the rule sees is no fault
            sim.inject(fault)
            try:
                wait_for(lambda: resyncs(conn) != before, 1.0)
                break
            except AssertionError:
                continue
        after = resyncs(conn)
        changed = {i for i in after if after[i] != before[i]}
        if venue_cls.connection_sequence:
            assert changed == set(after)  # the counter is connection-wide
            wait_for(lambda: venue.venue_stats.reconnects >= 1)
        else:
            assert len(changed) == 1 and venue.venue_stats.reconnects == 0
        assert all(after[i] - before[i] == 1 for i in changed)
        wait_for(lambda: all_live(venue))
        same_books(sim, conn)


def test_a_dropped_connection_reconnects_resubscribes_and_rebuilds_every_book(
    protocol: str,
) -> None:
    with connected(protocol, seed=52) as (sim, conn):
        venue = conn.venue
        connections = sim.stats["connections"]
        sim.inject("drop")
        wait_for(lambda: venue.venue_stats.reconnects >= 1)
        wait_for(lambda: all_live(venue))
        assert sim.stats["connections"] > connections
        same_books(sim, conn)


def in_base_units(protocol: str, instrument: str, levels: list[tuple[str, str]]) -> list:
    """The simulator's levels as a BookTop shows them: sizes in base units. COIN-M sizes are
    contracts worth a fixed number of USD each (the simulator's own table, not the engine's)."""
    if protocol != "binance-coinm":
        return [(float(p), float(q)) for p, q in levels]
    usd = float(contract_size(instrument))
    return [(float(p), float(q) * usd / float(p)) for p, q in levels]


def test_every_live_top_is_the_book_the_simulator_announced_under_its_venue_seq(
    protocol: str,
) -> None:
    venue_cls = registration(protocol).venue
    faults = ["gap", "malformed", "drop"]
    if venue_cls.checksum is not None:
        faults.append("badchecksum")
    with connected(protocol, seed=53, truth=True) as (sim, conn):
        tops = conn._publisher
        assert isinstance(tops, Tops)
        for fault in faults:
            sim.inject(fault)
            time.sleep(0.3)
            wait_for(lambda: all_live(conn.venue))
        time.sleep(0.3)
        live = [t for _, t in list(tops.got) if t.state == "LIVE"]
    checked = 0
    for top in live:
        truth = sim.book_at(top.instrument, top.venue_seq, top.recv_ts_ns)
        assert truth is not None, f"{top.instrument} venue_seq {top.venue_seq}: never sent"
        n = len(top.bid_prices)
        want_bids = in_base_units(protocol, top.instrument, truth.bids[:n])
        want_asks = in_base_units(protocol, top.instrument, truth.asks[: len(top.ask_prices)])
        assert list(zip(top.bid_prices, top.bid_sizes, strict=True)) == want_bids, top
        assert list(zip(top.ask_prices, top.ask_sizes, strict=True)) == want_asks, top
        checked += 1
    assert checked > 50 and sum(sim.stats["faults"].values()) == len(faults)


def test_a_venue_error_message_and_an_oversized_frame_are_counted_skips(protocol: str) -> None:
    """Bad input that carries no book update: each is a counted skip of its own kind, every
    book stays LIVE on the same connection, nothing resyncs."""
    venue_cls = registration(protocol).venue
    with connected(protocol, seed=54) as (sim, conn):
        venue = conn.venue
        sim.oversized_bytes = venue_cls.max_frame_bytes + 1024
        before = resyncs(conn)
        sim.inject("error")
        wait_for(lambda: venue.venue_stats.skipped["venue_error"] >= 1)
        sim.inject("oversized")
        wait_for(lambda: venue.venue_stats.skipped["frame_too_large"] >= 1)
        assert all_live(venue) and resyncs(conn) == before
        assert venue.venue_stats.reconnects == 0 and conn.connects == 1


def test_a_crossed_book_is_never_priced_and_comes_back(protocol: str) -> None:
    """The simulator announces a bid above its best ask (a valid message: ids and checksums
    follow on). A venue that documents crossed books (OKX) holds it LIVE, published as it
    is, for pricing to leave out; every other venue resyncs that book. Either way the book
    is LIVE again and every LIVE top equals the book announced under its venue_seq."""
    venue_cls = registration(protocol).venue
    with connected(protocol, seed=55, truth=True) as (sim, conn):
        venue = conn.venue
        sim.inject("crossed")
        wait_for(lambda: sum(s.crossed for s in venue.stats.values()) >= 1)
        time.sleep(0.2)
        wait_for(lambda: all_live(venue))
        tops = [t for _, t in list(conn._publisher.got) if t.state == "LIVE"]  # type: ignore[union-attr]
    if venue_cls.crossed_is_venue_state:
        assert not venue.venue_stats.resyncs
        crossed = [t for t in tops if t.bid_prices[0] >= t.ask_prices[0]]
        assert crossed  # published as the venue has it; pricing excludes it (`crossed`)
    else:
        assert venue.venue_stats.resyncs["crossed"] >= 1
        assert all(t.bid_prices[0] < t.ask_prices[0] for t in tops)
    for top in tops:
        truth = sim.book_at(top.instrument, top.venue_seq, top.recv_ts_ns)
        assert truth is not None and float(truth.bids[0][0]) == top.bid_prices[0], top


def test_a_drift_moves_every_book_of_the_venue_and_back(protocol: str) -> None:
    """`drift`: the venue's markets move away in stages, hold, and come back; every stage is
    a valid update (no resync), and every LIVE top is the book announced under its id."""
    from mmengine.dev.simulator import server

    with connected(protocol, seed=56, truth=True) as (sim, conn):
        venue = conn.venue
        start = {i: b.bids.best() for i, b in venue.books.items()}
        old = (server.DRIFT_STAGE_S, server.DRIFT_HOLD_S)
        server.DRIFT_STAGE_S, server.DRIFT_HOLD_S = 0.1, 0.5
        try:
            sim.inject("drift")
            wait_for(
                lambda: all((b.bids.best() or 0) > start[i] * 1.10 for i, b in venue.books.items()),
                10.0,  # an upper bound: a loaded machine slows the stages
            )
            wait_for(
                lambda: all((b.bids.best() or 0) < start[i] * 1.02 for i, b in venue.books.items()),
                10.0,
            )
        finally:
            server.DRIFT_STAGE_S, server.DRIFT_HOLD_S = old
        time.sleep(0.1)
        assert not venue.venue_stats.resyncs and all_live(venue)
        tops = [t for _, t in list(conn._publisher.got) if t.state == "LIVE"]  # type: ignore[union-attr]
    for top in tops:
        truth = sim.book_at(top.instrument, top.venue_seq, top.recv_ts_ns)
        assert truth is not None and float(truth.asks[0][0]) == top.ask_prices[0], top
