"""Protocol name -> venue class. The one place that lists every venue module."""

from __future__ import annotations

from mmengine.venues.base import Venue
from mmengine.venues.binance import BinanceSpot
from mmengine.venues.bybit import BybitLinear, BybitSpot
from mmengine.venues.coinbase import CoinbaseAdvanced
from mmengine.venues.kraken import KrakenV1, KrakenV2
from mmengine.venues.okx import OkxV5

PROTOCOLS: dict[str, type[Venue]] = {
    BinanceSpot.protocol: BinanceSpot,
    KrakenV1.protocol: KrakenV1,
    KrakenV2.protocol: KrakenV2,
    OkxV5.protocol: OkxV5,
    CoinbaseAdvanced.protocol: CoinbaseAdvanced,
    BybitSpot.protocol: BybitSpot,
    BybitLinear.protocol: BybitLinear,
}
