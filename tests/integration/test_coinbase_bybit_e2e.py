"""End to end with real parts: the Coinbase and Bybit simulators over loopback sockets -> the
engine (in process, or `mmengine run` as a child) -> the test's own ZeroMQ SUB, decoded with
the official `avro` package.

Books are checked against the simulator's own book (while it is stalled, the book every
client was last sent), not against callback counts; faults are injected on demand.
"""

from __future__ import annotations

import ast
import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from mmengine.book.sync import BookDriver as Venue
from mmengine.cli.demo import DEMO_INSTRUMENTS, DEMO_VENUES, demo_config
from mmengine.config import parse_config
from mmengine.dev.simulator import SimulatorHandle, start_simulator
from mmengine.engine import Engine
from mmengine.model import BookState
from tests.integration.conftest import Subscriber
from tests.venue_session import wait_for

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "data"


def all_live(venue: Venue) -> bool:
    return all(b.state is BookState.LIVE for b in list(venue.books.values()))


def freeze(sim: SimulatorHandle) -> None:
    """Stall the simulator (no step, nothing sent for 3 s) and let the client catch up: its
    books are then the ones the client was last sent."""
    sim.inject("stall")
    time.sleep(0.6)


def assert_same_book(venue: Venue, sim: SimulatorHandle, inst: str, sim_inst: str) -> None:
    """Our book equals the simulator's own book, every level of the market (call `freeze`
    first)."""
    bids, asks = sim.book(sim_inst)
    book = venue.books[inst]
    assert book.state is BookState.LIVE
    assert [(p, book.bids.sizes[p]) for p in book.bids.prices(len(bids))] == [
        (float(p), float(q)) for p, q in bids
    ], inst
    assert [(p, book.asks.sizes[p]) for p in book.asks.prices(len(asks))] == [
        (float(p), float(q)) for p, q in asks
    ], inst


def bybit_config(sim: SimulatorHandle, run_dir: Path, audit: bool = True) -> dict[str, Any]:
    base = f"ws://127.0.0.1:{sim.port}/v5/public"
    return {
        "engine": {"run_dir": str(run_dir), "top_levels": 10},
        "venues": [
            {
                "name": "bybit-spot",
                "protocol": "bybit-v5-spot",
                "url": f"{base}/spot",
                "instruments": ["BTC-USDT", "ETH-USDT"],
                "depth": 50,
                "audit": audit,
            },
            {
                "name": "bybit-linear",
                "protocol": "bybit-v5-linear",
                "url": f"{base}/linear",
                "instruments": ["BTC-USDT-PERP"],
                "depth": 200,
                "audit": audit,
            },
        ],
        "instruments": [
            {"name": "BTC-USDT", "sources": [{"venue": "bybit-spot"}], "min_venues": 1},
            {"name": "ETH-USDT", "sources": [{"venue": "bybit-spot"}], "min_venues": 1},
            {"name": "BTC-USDT-PERP", "sources": [{"venue": "bybit-linear"}], "min_venues": 1},
        ],
        "limits": {"reconnect_max_s": 0.5},
    }


BYBIT_SIM_INSTRUMENTS = ["BTC-USDT", "ETH-USDT", "BTC-USDT-PERP"]


def test_bybit_linear_and_spot_on_one_engine(tmp_path: Path) -> None:
    with start_simulator(
        "bybit-v5-linear", instruments=BYBIT_SIM_INSTRUMENTS, rate=300, seed=21
    ) as sim:
        engine = Engine(parse_config(bybit_config(sim, tmp_path / "run")))
        engine.start()
        prices = Subscriber(engine.endpoint("prices"))
        try:
            spot, linear = (c.venue for c in engine.connections)
            wait_for(lambda: all_live(spot) and all_live(linear))
            got = prices.collect("price.avsc", count=300, seconds=10)
            time.sleep(0.3)
            freeze(sim)
            assert_same_book(spot, sim, "BTC-USDT", "BTC-USDT")
            assert_same_book(spot, sim, "ETH-USDT", "ETH-USDT")
            assert_same_book(linear, sim, "BTC-USDT-PERP", "BTC-USDT-PERP")
            # Same wire symbol BTCUSDT, two different books.
            assert spot.books["BTC-USDT"].bids.prices(5) != linear.books[
                "BTC-USDT-PERP"
            ].bids.prices(5)
            assert linear.books["BTC-USDT-PERP"].cross_seq > 0
            st = linear.stats["BTC-USDT-PERP"]
            assert st.audit_agree > 10 and st.audit_disagree == 0  # tickers at equal `cs`
            assert all(s.sequence_gaps == 0 for v in (spot, linear) for s in v.stats.values())
        finally:
            engine.stop()
            prices.close()
    priced = {p["instrument"] for _, p in got}
    assert priced == {"BTC-USDT", "ETH-USDT", "BTC-USDT-PERP"}
    used = {p["instrument"]: {u["venue"] for u in p["venues_used"]} for _, p in got}
    assert used["BTC-USDT-PERP"] == {"bybit-linear"} and used["BTC-USDT"] == {"bybit-spot"}


def test_bybit_gap_resubscribes_and_u1_snapshot_replaces(tmp_path: Path) -> None:
    with start_simulator("bybit-v5-spot", instruments=["BTC-USDT"], rate=300, seed=22) as sim:
        cfg = bybit_config(sim, tmp_path / "run", audit=False)
        cfg["venues"] = cfg["venues"][:1]
        cfg["venues"][0]["instruments"] = ["BTC-USDT"]
        cfg["instruments"] = cfg["instruments"][:1]
        engine = Engine(parse_config(cfg))
        engine.start()
        try:
            venue = engine.connections[0].venue
            stats = venue.stats["BTC-USDT"]
            wait_for(lambda: all_live(venue))
            sim.inject("gap")
            wait_for(lambda: stats.sequence_gaps == 1 and stats.resyncs == 1)
            wait_for(lambda: all_live(venue) and stats.snapshots == 2)
            assert venue.venue_stats.reconnects == 0  # one topic resubscribed, no reconnect
            sim.protocol.restart("BTC-USDT")  # type: ignore[attr-defined]
            wait_for(lambda: stats.restarts == 1)
            assert stats.sequence_gaps == 1 and stats.resyncs == 1  # a restart is no gap
            wait_for(lambda: venue.books["BTC-USDT"].venue_seq > 20)
            freeze(sim)
            assert 20 < venue.books["BTC-USDT"].venue_seq < 10_000  # counting again from 1
            assert_same_book(venue, sim, "BTC-USDT", "BTC-USDT")
        finally:
            engine.stop()


@pytest.mark.parametrize("protocol", ["coinbase-advanced", "bybit-v5-spot"])
def test_malformed_frames_and_drops_through_the_simulator(protocol: str, tmp_path: Path) -> None:
    insts = ["BTC-USD", "ETH-USD"] if protocol.startswith("coinbase") else ["BTC-USDT", "ETH-USDT"]
    with start_simulator(protocol, instruments=insts, rate=200, seed=23) as sim:
        venue_cfg = {"name": "v", "protocol": protocol, "url": sim.ws_url, "instruments": insts}
        if protocol.startswith("bybit"):
            venue_cfg["depth"] = 50
        cfg = {
            "engine": {"run_dir": str(tmp_path / "run")},
            "venues": [venue_cfg],
            "instruments": [
                {"name": i, "sources": [{"venue": "v"}], "min_venues": 1} for i in insts
            ],
            "limits": {"reconnect_max_s": 0.5},
        }
        engine = Engine(parse_config(cfg))
        engine.start()
        try:
            venue = engine.connections[0].venue
            wait_for(lambda: all_live(venue))
            for _ in range(3):
                sim.inject("malformed")
            wait_for(lambda: venue.venue_stats.skipped["bad_json"] == 3)
            assert sum(s.resyncs for s in venue.stats.values()) == 0
            assert all_live(venue)
            sim.inject("drop")
            wait_for(lambda: venue.venue_stats.reconnects == 1)
            wait_for(lambda: all_live(venue))
            freeze(sim)
            for inst in insts:
                assert_same_book(venue, sim, inst, inst)
        finally:
            engine.stop()


def test_coinbase_gap_rebuilds_every_book_from_full_size_snapshots(tmp_path: Path) -> None:
    insts = ["BTC-USD", "ETH-USD"]
    with start_simulator("coinbase-advanced-deep", instruments=insts, rate=200, seed=24) as sim:
        cfg = {
            "engine": {"run_dir": str(tmp_path / "run")},
            "venues": [
                {
                    "name": "cb",
                    "protocol": "coinbase-advanced",
                    "url": sim.ws_url,
                    "instruments": insts,
                    "audit": True,
                }
            ],
            "instruments": [
                {"name": i, "sources": [{"venue": "cb"}], "min_venues": 1} for i in insts
            ],
            "limits": {"reconnect_max_s": 0.5},
        }
        engine = Engine(parse_config(cfg))
        engine.start()
        try:
            venue = engine.connections[0].venue
            wait_for(lambda: all_live(venue))
            assert all(len(b.asks) > 20_000 and len(b.bids) > 20_000 for b in venue.books.values())
            sim.inject("gap")
            wait_for(lambda: venue.connection.gaps == 1)
            wait_for(lambda: venue.venue_stats.reconnects == 1 and all_live(venue))
            # Both books were dropped and rebuilt (the gap cannot be attributed).
            assert all(s.sequence_gaps == 1 and s.snapshots == 2 for s in venue.stats.values())
            time.sleep(0.3)
            freeze(sim)
            for inst in insts:
                assert_same_book(venue, sim, inst, inst)
                assert len(venue.books[inst].asks) >= 20_000  # the padding, never truncated
            stats = venue.stats.values()
            assert sum(s.audit_loose_agree for s in stats) > 10
            assert sum(s.audit_loose_disagree for s in stats) == 0
        finally:
            engine.stop()


def test_coinbase_capture_replayed_by_the_simulator_over_a_socket(tmp_path: Path) -> None:
    """The real 5 MB snapshot frame through the simulator's socket and the engine's client."""
    with start_simulator("coinbase-advanced", replay=DATA / "COINBASE.jsonl.gz", rate=2000) as sim:
        cfg = {
            "engine": {"run_dir": str(tmp_path / "run")},
            "venues": [
                {
                    "name": "cb",
                    "protocol": "coinbase-advanced",
                    "url": sim.ws_url,
                    "instruments": ["BTC-USD", "ETH-USD"],
                }
            ],
            "instruments": [
                {"name": i, "sources": [{"venue": "cb"}], "min_venues": 1}
                for i in ("BTC-USD", "ETH-USD")
            ],
        }
        engine = Engine(parse_config(cfg))
        engine.start()
        try:
            venue = engine.connections[0].venue
            wait_for(lambda: venue.connection.last == 1029, 15)
            book = venue.books["BTC-USD"]
            assert (len(book.bids), len(book.asks)) == (18_769, 27_238)
            assert venue.connection.gaps == 0
            doc = orjson.loads((DATA / "cryptofeed_final_books.json").read_bytes())
            ref = doc["venues"]["COINBASE"]["BTC-USD"]["harness_reference"]
            ref = ref if isinstance(ref, dict) else ast.literal_eval(ref)
            assert [(p, book.asks.sizes[p]) for p in book.asks.prices(10)] == [
                (float(p), float(q)) for p, q in ref["asks"]
            ]
        finally:
            engine.stop()


def test_five_simulated_venues_feed_every_price(engine_factory: Any, tmp_path: Path) -> None:
    """Binance, Coinbase, Kraken v2, OKX and Bybit simulators -> `mmengine run` -> SUB: every
    instrument is priced from all five (min_venues 3), and the Price says which fed it."""
    with contextlib.ExitStack() as stack:
        sims = {
            name: stack.enter_context(
                start_simulator(protocol, instruments=insts, rate=150, seed=30 + i)
            )
            for i, (name, (protocol, insts)) in enumerate(DEMO_VENUES.items())
        }
        cfg = demo_config(sims, tmp_path / "unused")
        assert all(i["min_venues"] > 1 for i in cfg["instruments"])
        engine = engine_factory(cfg)
        endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
        sub = Subscriber(endpoints["ipc"]["prices"]["endpoint"])
        try:
            deadline = time.monotonic() + 20
            full: dict[str, dict[str, Any]] = {}
            while time.monotonic() < deadline and set(full) != set(DEMO_INSTRUMENTS):
                for _, price in sub.collect("price.avsc", count=50, seconds=1):
                    if len({u["venue"] for u in price["venues_used"]}) == 5:
                        full[price["instrument"]] = price
        finally:
            sub.close()
            assert engine.stop() == 0, engine.output
    assert set(full) == set(DEMO_INSTRUMENTS), engine.output[-3000:]
    for inst, price in full.items():
        used = {u["venue"]: u for u in price["venues_used"]}
        assert set(used) == set(DEMO_VENUES)
        assert set(price["venues"]) == set(DEMO_VENUES)
        assert abs(sum(u["weight"] for u in used.values()) - 1.0) < 1e-9
        assert used["binance"]["fx_rate"] == 1.0  # USDT books converted to USD
        # (The consolidated best bid and ask may cross between independent venues; the
        # quote ladder around the fair value may not.)
        assert not price["halted"] and price["bids"] and price["asks"], inst
        assert price["bids"][0]["price"] < price["fair_value"] < price["asks"][0]["price"]
    summary = defaultdict(str)
    for line in engine.output.splitlines():
        for name in DEMO_VENUES:
            if line.startswith(f"{name}: "):
                summary[name] = line
    assert set(summary) == set(DEMO_VENUES), engine.output[-3000:]
