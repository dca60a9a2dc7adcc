"""Bybit v5 linear perpetuals (`/v5/public/linear`): the category's symbols and its ticker
audit; the book protocol is the one spot speaks too (`mmengine.venues.bybit`, venue thread).

Protocol facts (shared/docs/venue-protocols.md section 5): audit (`audit: true`, linear only):
`tickers.{symbol}` is a snapshot followed by partial deltas, merged field by field (5.7). At
an equal cross sequence (`cs`) its best bid/ask must agree (a mismatch resyncs); otherwise,
always on the real venue, a loose count. Symbols: `BTC-USDT-PERP` <-> `BTCUSDT` and
`BTC-USDC-PERP` <-> `BTCPERP`.
"""

from __future__ import annotations

from typing import Any

from mmengine.book.events import AuditTop, Event
from mmengine.book.levels import one
from mmengine.errors import FrameError
from mmengine.venues.base import VenueSpec
from mmengine.venues.bybit import SNAPSHOT, BybitBook

LINEAR_URL = "wss://stream.bybit.com/v5/public/linear"


def linear_symbol(instrument: str) -> str:
    """`BTC-USDT-PERP` -> `BTCUSDT`; `BTC-USDC-PERP` -> `BTCPERP` (Bybit's USDC perps)."""
    parts = instrument.split("-")
    if len(parts) != 3 or parts[2] != "PERP" or parts[1] not in ("USDT", "USDC"):
        raise ValueError(f"bybit-v5-linear: {instrument!r} is not BASE-USDT-PERP or BASE-USDC-PERP")
    return parts[0] + ("USDT" if parts[1] == "USDT" else "PERP")


def merge_ticker(state: dict[str, Any], msg: dict[str, Any]) -> dict[str, Any]:
    """Linear `tickers`: a snapshot replaces, a delta updates only the fields it carries
    (a missing field means unchanged, 5.7). Returns the merged state.

    Delta: {"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",
            "bid1Price":"65114.20","bid1Size":"6.054","ask1Price":"65114.30",
            "ask1Size":"10.486"},"cs":753843907770,"ts":1786310817883}
    """
    data = msg["data"]
    if type(data) is not dict:
        raise FrameError("malformed", "ticker data is not an object")
    if msg.get("type") == SNAPSHOT:
        state.clear()
    state.update(data)
    return state


class BybitLinear(BybitBook):
    """Bybit v5 linear perpetuals (`wss://stream.bybit.com/v5/public/linear`)."""

    protocol = "bybit-v5-linear"
    default_url = LINEAR_URL
    capture_addresses = (
        "stream.bybit.com/v5/public/linear",
        "stream-testnet.bybit.com/v5/public/linear",
    )
    category = "linear"
    ticker_audit = True
    wire_symbol = staticmethod(linear_symbol)

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        self.tickers: dict[str, dict[str, Any]] = {inst: {} for inst in spec.instruments}

    def on_connected(self) -> None:
        for state in self.tickers.values():
            state.clear()

    def _ticker(self, instrument: str, msg: dict[str, Any]) -> list[Event]:
        """5. Merge the partial ticker (validated on a copy, then kept)."""
        state = self.tickers[instrument]
        merged = merge_ticker(dict(state), msg)
        bid_s = merged.get("bid1Price")
        ask_s = merged.get("ask1Price")
        bid = one(bid_s, "0")[0] if bid_s is not None else None
        ask = one(ask_s, "0")[0] if ask_s is not None else None
        cs = msg.get("cs")
        state.clear()
        state.update(merged)
        if bid is None or ask is None:
            return []
        return [AuditTop(instrument, bid, ask, cross_seq=cs if type(cs) is int else None)]
