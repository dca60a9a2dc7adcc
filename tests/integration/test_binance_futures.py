"""Binance futures end to end (issue 20), checked from outside: the engine as a child process
against the COIN-M and USDⓈ-M simulators, its books read from its IPC stream (decoded with
the official `avro` package) and compared with the simulators' own books; and the recorded
capture served back by the simulator to a venue connection.
"""

from __future__ import annotations

from typing import Any

import pytest

from mmengine.dev.simulator import start_simulator
from mmengine.venues.base import VenueSpec
from mmengine.venues.binance_futures import BinanceCoinm
from mmengine.venues.transport import VenueConnection
from tests.integration.conftest import frozen_live_tops
from tests.venue_session import Tops, wait_for

pytestmark = pytest.mark.integration

LEVELS = 5


def venue(name: str, sim: Any, instruments: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": name,
        "url": sim.ws_url,
        "rest_url": sim.rest_url,
        "instruments": instruments,
        "depth": 100,
        "audit": True,
    }


def test_pricing_gets_base_units_from_contracts_and_spot_sized_books(engine_factory: Any) -> None:
    """A COIN-M book of whole contracts reaches the books stream as `q * 100 / p` BTC; a
    USDⓈ-M book's sizes (BTC already) reach it unchanged. Truth: the simulators' books."""
    with (
        start_simulator("binance-coinm", rate=100, seed=301) as coinm,
        start_simulator("binance-usdm", rate=100, seed=302) as usdm,
    ):
        config = {
            "engine": {"top_levels": LEVELS},
            "venues": [
                venue("binance-coinm", coinm, ["BTC-USD-PERP"]),
                venue("binance-usdm", usdm, ["BTC-USDT-PERP"]),
            ],
            "instruments": [
                {"name": i, "sources": [{"venue": v}], "min_venues": 1}
                for i, v in (("BTC-USD-PERP", "binance-coinm"), ("BTC-USDT-PERP", "binance-usdm"))
            ],
        }
        engine = engine_factory(config)
        latest = frozen_live_tops(engine, [coinm, usdm], 2)
        for instrument, sim, per_contract in (
            ("BTC-USD-PERP", coinm, 100.0),
            ("BTC-USDT-PERP", usdm, None),
        ):
            bids, asks = sim.book(instrument, LEVELS)
            top = latest[instrument]
            assert top["bid_prices"] == [float(p) for p, _ in bids], instrument
            assert top["ask_prices"] == [float(p) for p, _ in asks], instrument
            for side, levels in (("bid_sizes", bids), ("ask_sizes", asks)):
                if per_contract is None:
                    want = [float(q) for _, q in levels]
                else:
                    want = [float(q) * per_contract / float(p) for p, q in levels]
                    assert all(float(q) == int(q) for _, q in levels)  # whole contracts
                assert top[side] == want, (instrument, side)
        # BTC, not contracts: a $100 contract is a small fraction of a BTC near 60,000 USD
        contracts = float(coinm.book("BTC-USD-PERP", 1)[0][0][1])
        assert latest["BTC-USD-PERP"]["bid_sizes"][0] < contracts / 100
        assert engine.stop() == 0, engine.output
    assert "binance-coinm: " in engine.output and "0 gaps" in engine.output


def test_the_simulator_serves_the_recorded_capture_back(data_dir: Any) -> None:
    """`mmengine simulate --venue binance-coinm --replay tests/data/BINANCE_FUTURES...`: the
    COIN-M connection of the capture (it also holds the USDⓈ-M one), its exchangeInfo and
    snapshots, to a venue connection whose audit then agrees with every ticker it meets."""
    capture = data_dir / "BINANCE_FUTURES.jsonl.gz"
    with start_simulator("binance-coinm", replay=capture, rate=400) as sim:
        instruments = ("BTC-USD-PERP", "ETH-USD-PERP")
        spec = VenueSpec(
            "c",
            "binance-coinm",
            instruments,
            depth=100,
            url=sim.ws_url,
            rest_url=sim.rest_url,
            audit=True,
        )
        conn = VenueConnection(spec, BinanceCoinm, Tops, reconnect_cap_s=0.5)
        conn.start()
        try:
            stats = conn.venue.stats
            wait_for(lambda: sum(s.audit_agree for s in stats.values()) >= 150, 15)
            assert all(s.sequence_gaps == 0 and s.audit_disagree == 0 for s in stats.values())
            assert {i: b.state.value for i, b in conn.venue.books.items()} == dict.fromkeys(
                instruments, "LIVE"
            )
        finally:
            conn.stop()
            conn.join(5)
    assert not conn.is_alive()
