"""Every venue protocol, once: its venue module, its simulator and how a capture of it is
recognised (no thread of its own).

Adding a venue touches its module (`mmengine/venues/<venue>.py`), its simulator
(`mmengine/dev/simulator/<venue>.py`) and one line here; the conformance suite
(`tests/conformance/`) then runs over it like over every other venue, and fails while any of
the three is missing. Simulators are named, not imported: they are development tools the
engine does not load.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmengine.book.sync import BookDriver, Session
from mmengine.venues.base import VenueProtocol, VenueSpec
from mmengine.venues.binance import BinanceSpot
from mmengine.venues.binance_futures import BinanceCoinm, BinanceUsdm
from mmengine.venues.bybit import BybitSpot
from mmengine.venues.bybit_linear import BybitLinear
from mmengine.venues.coinbase import CoinbaseAdvanced
from mmengine.venues.kraken_v1 import KrakenV1
from mmengine.venues.kraken_v2 import KrakenV2
from mmengine.venues.okx import OkxV5

if TYPE_CHECKING:
    from mmengine.dev.simulator.server import SimProtocol


@dataclass(frozen=True)
class Registration:
    """One protocol: the venue module's class and its simulators (`module:Class`; the
    first speaks the protocol as the venue does, any others are variants of it)."""

    venue: type[VenueProtocol]
    simulators: tuple[str, ...]

    @property
    def protocol(self) -> str:
        return self.venue.protocol

    def simulator_classes(self) -> list[type[SimProtocol]]:
        out = []
        for target in self.simulators:
            module, _, name = target.partition(":")
            out.append(getattr(importlib.import_module(module), name))
        return out


REGISTRY: tuple[Registration, ...] = (
    Registration(
        BinanceSpot,
        (
            "mmengine.dev.simulator.binance:BinanceSim",
            "mmengine.dev.simulator.binance:BinanceMergedSim",
        ),
    ),
    Registration(KrakenV1, ("mmengine.dev.simulator.kraken:KrakenV1Sim",)),
    Registration(KrakenV2, ("mmengine.dev.simulator.kraken:KrakenV2Sim",)),
    Registration(OkxV5, ("mmengine.dev.simulator.okx:OkxSim",)),
    Registration(
        CoinbaseAdvanced,
        (
            "mmengine.dev.simulator.coinbase:CoinbaseSim",
            "mmengine.dev.simulator.coinbase:CoinbaseDeepSim",
        ),
    ),
    Registration(BybitSpot, ("mmengine.dev.simulator.bybit:BybitSpotSim",)),
    Registration(BybitLinear, ("mmengine.dev.simulator.bybit:BybitSim",)),
    Registration(BinanceUsdm, ("mmengine.dev.simulator.binance_futures:BinanceUsdmSim",)),
    Registration(BinanceCoinm, ("mmengine.dev.simulator.binance_futures:BinanceCoinmSim",)),
)

PROTOCOLS: dict[str, type[VenueProtocol]] = {r.protocol: r.venue for r in REGISTRY}


def open_venue(spec: VenueSpec, session: Session) -> BookDriver:
    """The books of one venue connection, driven from its protocol's events."""
    return BookDriver(PROTOCOLS[spec.protocol](spec), session)


def detect_protocol(exchange: str, address: str) -> str | None:
    """The protocol of one recorded connection, from its WebSocket address: the registration
    whose address pattern matches most specifically (`kraken.com/v2` before `kraken.com`);
    None when no venue module reads it. A capture header's `exchange` (cryptofeed's
    `BYBIT`; `BINANCE+BYBIT` from `mmengine record`; empty: any) limits the candidates to
    the venues it names."""
    named = {e for e in exchange.upper().split("+") if e}
    best: tuple[int, str] | None = None
    for reg in REGISTRY:
        if named and reg.venue.capture_exchange not in named:
            continue
        for pattern in reg.venue.capture_addresses:
            if pattern in address and (best is None or len(pattern) > best[0]):
                best = (len(pattern), reg.protocol)
    return best[1] if best is not None else None


def simulators() -> dict[str, Any]:
    """Every registered simulator by the name `mmengine simulate --venue` takes."""
    return {cls.venue: cls for reg in REGISTRY for cls in reg.simulator_classes()}
