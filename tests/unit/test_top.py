"""`mmengine top`: a dashboard that fits 100 columns without cutting a number."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from mmengine.cli.top import Rates, render
from mmengine.ops.status import window_percentiles_us

VENUES = [
    ("binance", "binance"),
    ("coinbase", "coinbase-advanced"),
    ("kraken", "kraken-v2"),
    ("okx", "okx-v5"),
    ("bybit-linear", "bybit-v5-linear"),
]


def snapshot(ts_s: float, scale: int) -> dict[str, Any]:
    """A status snapshot with large counters and long names, as after weeks of running."""
    return {
        "ts_ns": int(ts_s * 1e9),
        "epoch": 1796073665346875695,
        "pid": 4194303,
        "uptime_s": 1_234_567.0,
        "venues": [
            {
                "name": name,
                "protocol": protocol,
                "connected": n != 3,
                "frames": 123_456_789 * scale,
                "book_frames": 0,
                "reconnects": 1234,
                "skipped": {"malformed": 12_345},
                "resyncs": {"gap": 23_456},
                "books": [
                    {"instrument": "BTC-USDT-PERP", "state": "LIVE", "age_s": 0.004},
                    {"instrument": "ETH-USDT-PERP", "state": "STALE", "age_s": 12.5},
                ],
                "live": 1,
            }
            for n, (name, protocol) in enumerate(VENUES)
        ],
        "workers": [
            {
                "worker": k,
                "inputs": 98_765_432 * scale,
                "prices": 87_654_321 * scale,
                "last_drain": 12_345,
                "latency_window_us": {"p50": 387.4, "p99": 123_456.7},
                "latency_counts": [],
            }
            for k in range(2)
        ],
        "instruments": [
            {
                "instrument": "BTC-USDT-PERP",
                "seq": 123_456_789,
                "fair_value": 123_456.789012,
                "spread_bps": -3.5,
                "quoted_spread_bps": 2.0015,
                "crossed": True,
                "volatility_bps": 123.45,
                "position": -12.5,
                "venues_used": ["okx", "bybit-linear"],
                "venues_excluded": ["binance:stale", "coinbase:outlier", "kraken:not_live"],
                "halted": False,
                "halt_reason": "",
            },
            {
                "instrument": "DOGE-USD",
                "seq": 5,
                "fair_value": 0.123456789,
                "spread_bps": None,
                "quoted_spread_bps": None,
                "crossed": False,
                "volatility_bps": 0.0,
                "position": 0.0,
                "venues_used": [],
                "venues_excluded": ["kraken:stale"],
                "halted": True,
                "halt_reason": "min_venues",
            },
        ],
        "sinks": [
            {
                "name": "kafka",
                "acknowledged": 9_876_543_210,
                "pending": 1_234_567,
                "spool_bytes": 1_073_741_824,
                "dropped": 0,
                "delivery_lag_ns": 12_345_678_901,
            },
            {"name": "postgres", "written": 9_876_543_210, "pending": 0, "lag_ns": 0},
        ],
        # CPU seconds per thread since start: the second snapshot, a second later, adds
        # 0.62 cores of venue threads, 0.33 of pricing, 0.05 of sinks, 0.02 of the rest.
        "thread_cpu_s": {
            "venue-binance": 1000.0 + 0.4 * scale,
            "venue-binance-rest": 10.0 + 0.02 * scale,
            "venue-okx": 900.0 + 0.2 * scale,
            "pricing-0": 700.0 + 0.33 * scale,
            "kafka-writer": 50.0 + 0.04 * scale,
            "pg-commit": 5.0 + 0.01 * scale,
            "status": 9.0 + 0.02 * scale,
        },
    }


def draw(width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    rates = Rates()
    render(snapshot(1000.0, 1), rates, width=width)
    console.print(render(snapshot(1001.0, 2), rates, width=width))
    return console.export_text()


def test_100_columns_hold_every_number_whole() -> None:
    text = draw(100)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 100
    assert "…" not in text
    for number in (
        "123,456,789",  # venue msgs/s: one second's frames
        "23,456",
        "12,345",
        "1,234",
        "0.00s",  # the freshest book of the venue
        "123,456,789",  # seq
        "123,456.79",  # fair value, 8 significant digits
        "0.12345679",
        "2.00",  # the quoted spread
        "123.45",
        "-12.5",
        "98,765,432",
        "87,654,321",
        "1.13",  # conflation
        "387",  # p50 from the recent window
        "123,457",  # p99
        "9,876,543,210",
        "1,234,567",
        "1,073,741,824",
        "12,345.7",  # lag ms
    ):
        assert number in text, number
    assert re.search(r"BTC-USDT-PERP .* CROSSED .* 2/5 ", text)
    assert "HALTED" in text and "min_venues" in text
    # The venue names and the excluded reasons are whole words, folded if need be.
    for word in ("bybit-linear", "binance:stale", "coinbase:outlier", "kraken:not_live"):
        assert word in text, word


def test_a_wider_terminal_shows_protocols_and_venue_names() -> None:
    narrow, wide = draw(100), draw(160)
    assert "bybit-v5-linear" not in narrow and "bybit-v5-linear" in wide
    assert "okx bybit-linear" in wide


def test_latency_percentiles_are_of_real_samples_not_bucket_edges() -> None:
    samples = [float(v) for v in range(1, 1001)]  # 1..1000 µs
    assert window_percentiles_us(samples) == {"p50": 501.0, "p99": 991.0}
    assert window_percentiles_us([]) == {"p50": None, "p99": None}
    assert window_percentiles_us([333.3]) == {"p50": 333.3, "p99": 333.3}


def test_cpu_by_kind_of_thread_in_cores() -> None:
    """The cores each kind of thread used between two snapshots, and their sum (one
    interpreter lock: near 1.0 the engine is saturated); absent for an engine that does not
    report thread CPU."""
    text = draw(100)
    assert "cpu (cores)  venues 0.62  pricing 0.33  sinks 0.05  other 0.02  = 1.02" in text
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    rates = Rates()
    older = [snapshot(1000.0 + k, k + 1) for k in range(2)]
    for snap in older:
        del snap["thread_cpu_s"]
    render(older[0], rates, width=100)
    console.print(render(older[1], rates, width=100))
    assert "cpu (cores)" not in console.export_text()
