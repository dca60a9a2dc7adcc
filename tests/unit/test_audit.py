"""Top-of-book audit against the venues' own best-bid/ask channels.

Exact where an id ties the ticker to a book state (Binance `u`); by arrival, as a loose count,
where nothing does (Kraken, OKX, Coinbase). The expected counts are the ones measured
independently on the same captures in shared/docs/venue-protocols.md.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from mmengine.replay import replay_capture
from tests.venue_session import venue


def loose(name: str, data_dir: Path) -> tuple[int, int]:
    venue = replay_capture(data_dir / f"{name}.jsonl.gz", audit=True).venue
    return (
        sum(s.audit_loose_agree for s in venue.stats.values()),
        sum(s.audit_loose_disagree for s in venue.stats.values()),
    )


def test_binance_book_ticker_is_exact(data_dir: Path) -> None:
    venue = replay_capture(data_dir / "BINANCE.jsonl.gz", audit=True).venue
    assert sum(s.audit_agree for s in venue.stats.values()) == 26
    assert sum(s.audit_disagree for s in venue.stats.values()) == 0


def test_kraken_ticker_by_arrival_matches_the_measured_2_of_8(data_dir: Path) -> None:
    assert loose("KRAKEN", data_dir) == (2, 6)


def test_okx_tickers_by_arrival_match_the_measured_1_of_25(data_dir: Path) -> None:
    assert loose("OKX", data_dir) == (1, 24)


def test_coinbase_ticker_by_arrival_matches_the_measured_132_of_154(data_dir: Path) -> None:
    assert loose("COINBASE", data_dir) == (132, 22)


def test_loose_disagreements_never_resync(data_dir: Path) -> None:
    for name in ("KRAKEN", "OKX", "COINBASE"):
        venue = replay_capture(data_dir / f"{name}.jsonl.gz", audit=True).venue
        assert sum(venue.venue_stats.resyncs.values()) == 0, name


def test_audit_subscribes_the_ticker_channels() -> None:
    loud, _ = venue("kraken-v2", ("BTC-USD",), depth=10, audit=True)
    frames = [orjson.loads(f) for f in loud.subscribe_frames()]
    ticker = [f for f in frames if f["params"]["channel"] == "ticker"]
    assert ticker and ticker[0]["params"]["event_trigger"] == "bbo"
    assert ticker[0]["params"]["symbol"] == ["BTC/USD"]
    quiet, _ = venue("kraken-v2", ("BTC-USD",), depth=10, audit=False)
    frames = [orjson.loads(f) for f in quiet.subscribe_frames()]
    assert all(f["params"]["channel"] != "ticker" for f in frames)
