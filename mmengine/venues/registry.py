"""Protocol name -> venue class. The one place that lists every venue module."""

from __future__ import annotations

from mmengine.venues.base import Venue
from mmengine.venues.binance import BinanceSpot

PROTOCOLS: dict[str, type[Venue]] = {
    BinanceSpot.protocol: BinanceSpot,
}
