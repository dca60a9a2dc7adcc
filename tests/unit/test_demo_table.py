"""The demo's live table fits a 100-column terminal without cutting a number (issue 18):
Prices as the demo shows them, with long venue lists, a halt and wide figures."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from mmengine.cli.demo import _table

VENUES = ["binance", "coinbase", "kraken", "okx", "bybit"]


def price(instrument: str, fair: float, **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "instrument": instrument,
        "fair_value": fair,
        "volatility_bps": 12.3456,
        "position": -12.5,
        "skew_bps": -3.0,
        "halted": False,
        "halt_reason": "",
        "bids": [{"price": fair - 13.21, "size": 12.25}],
        "asks": [{"price": fair + 13.21, "size": 12.25}],
        "venues_used": [{"venue": v, "weight": 0.2} for v in VENUES],
        "venues_excluded": [],
        "priced_ts_ns": 123_456_000,
        "recv_ts_ns": 1_000,
        "cross_venue_crossed": False,
    }
    record.update(over)
    return record


def test_the_live_table_fits_100_columns_without_cutting_a_number() -> None:
    rows = {
        "BTC-USD": price("BTC-USD", 123456.78),
        "ETH-USD": price(
            "ETH-USD",
            2992.12,
            venues_used=[{"venue": v, "weight": 0.33} for v in VENUES[:3]],
            venues_excluded=[
                {"venue": "okx", "reason": "outlier"},
                {"venue": "bybit", "reason": "stale"},
            ],
        ),
        "SOL-USD": price(
            "SOL-USD",
            150.5,
            halted=True,
            halt_reason="2 usable venue(s), fewer than min_venues 3",
            bids=[],
            asks=[],
        ),
    }
    counts = {"BTC-USD": 1_234_567, "ETH-USD": 1_234_560, "SOL-USD": 7}
    crossed = {"BTC-USD": 4_321}
    console = Console(width=100, record=True, color_system=None)
    console.print(_table(rows, counts, time.monotonic() - 1_000, crossed))
    text = console.export_text()
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100 and "…" not in text, text
    btc = next(ln for ln in lines if ln.startswith("BTC-USD"))
    for figure in ("123456.78", "123443.57x12.25", "123469.99x12.25", "12.35", "-12.5/-3.00"):
        assert figure in btc, (figure, btc)
    assert "5/5" in btc and "0.4%" in btc and btc.rstrip().endswith("123455")
    assert "ETH-USD: left out okx:outlier bybit:stale" in text
    assert "SOL-USD: HALTED: 2 usable venue(s), fewer than min_venues 3" in text
    assert "2,469,134 prices" in lines[0] and "0.2% crossed across venues" in lines[0]
