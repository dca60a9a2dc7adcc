"""The replay scorecard shows, in text and `--json`, every figure the README quotes for the
real captures (issue 22): audit agreement, diffs dropped before the snapshot, level counts
per side, sequence numbers checked. The README's replay table is taken from this output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mmengine.cli import main


def card(path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    runner = CliRunner()
    args = ["--log-level", "WARNING", "replay", str(path), *extra]
    as_json = runner.invoke(main, [*args, "--json"])
    as_text = runner.invoke(main, args)
    assert as_json.exit_code == 0 and as_text.exit_code == 0, as_json.output
    return json.loads(as_json.stdout), as_text.stdout


def test_binance_figures(data_dir: Path) -> None:
    got, text = card(data_dir / "BINANCE.jsonl.gz")
    totals = got["totals"]
    assert (totals["snapshots"], totals["updates"], totals["dropped_stale"]) == (4, 172, 5)
    assert totals["sequence"] == {"checked": 172, "gaps": 0}
    assert totals["audit"]["exact"] == {"agree": 26, "disagree": 0}
    nkn = got["instruments"]["NKN-USDT"]
    assert nkn["levels"] == {"bids": 614, "asks": 994} and nkn["dropped_stale"] == 1
    assert "5 dropped as older than the book" in text
    assert "0 gaps in 172 sequence checks" in text and "exact audit 26 of 26 agree" in text


def test_coinbase_figures(data_dir: Path) -> None:
    got, text = card(data_dir / "COINBASE.jsonl.gz")
    assert got["connection_sequence"] == {"checked": 1029, "gaps": 0}
    btc = got["instruments"]["BTC-USD"]
    assert btc["levels"] == {"bids": 18769, "asks": 27238}
    assert got["totals"]["audit"]["by_arrival"] == {"agree": 132, "disagree": 22}
    assert "0 gaps in 1029 connection-wide sequence numbers" in text
    # Trades and candles were recorded too: ignored (not errors), counted by channel.
    assert got["ignored"] == {"candles": 6, "market_trades": 59} and got["errors"] == []
    assert "65 frames of channels not used ignored (candles 6, market_trades 59)" in text
    assert "18769/27238" in text and "by arrival 132 of 154" in text


@pytest.mark.parametrize(
    ("capture", "checked", "arrival"),
    [("KRAKEN", 4269, (2, 6)), ("OKX", 290, (1, 24))],
)
def test_checksum_figures(
    data_dir: Path, capture: str, checked: int, arrival: tuple[int, int]
) -> None:
    got, text = card(data_dir / f"{capture}.jsonl.gz")
    assert got["totals"]["checksums"] == {"checked": checked, "failed": 0}
    agree, disagree = arrival
    assert got["totals"]["audit"]["by_arrival"] == {"agree": agree, "disagree": disagree}
    assert f"checksums {checked} of {checked} match" in text
    assert f"by arrival {agree} of {agree + disagree}" in text
    for inst in got["instruments"].values():
        assert len(inst["top"]["bids"]) == min(10, inst["levels"]["bids"])
        assert len(inst["top"]["asks"]) == min(10, inst["levels"]["asks"])


def test_bybit_figures(data_dir: Path) -> None:
    got, text = card(data_dir / "BYBIT.jsonl.gz", "--venue", "bybit-linear")
    assert got["totals"]["sequence"] == {"checked": 451, "gaps": 0}
    assert got["totals"]["audit"]["exact"] == {"agree": 228, "disagree": 0}
    assert "exact audit 228 of 228 agree" in text
