"""Kraken v1 and OKX v5 on the real captures (tests/data/KRAKEN.jsonl.gz, 2021-04;
tests/data/OKX.jsonl.gz, 2022-05).

Truth comes from the venues: every Kraken `c` and OKX `checksum` is the venue's own CRC32 of
its book after that message, so a correctly built book matches all of them. The final books
are also compared with cryptofeed 2.4.1's, built independently from the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from mmengine.book.sync import BookDriver
from mmengine.capture import CaptureEvent, read_capture
from mmengine.model import BookState
from mmengine.replay import CaptureSession, plan_replay, replay_capture
from mmengine.venues.kraken_v1 import normalize_pair
from mmengine.venues.okx import normalize_inst_id
from mmengine.venues.registry import open_venue

KRAKEN_PAIRS = {
    "KSM-BTC": "KSM/XBT",
    "XMR-USD": "XMR/USD",
    "ETH-CHF": "ETH/CHF",
    "OMG-USD": "OMG/USD",
    "GRT-ETH": "GRT/ETH",
    "WAVES-EUR": "WAVES/EUR",
    "ADA-BTC": "ADA/XBT",
    "BTC-CHF": "XBT/CHF",
    "SC-EUR": "SC/EUR",
    "OCEAN-BTC": "OCEAN/XBT",
}
OKX_IDS = {
    "BTC-USD-20220527": "BTC-USD-220527",
    "UNI-USD-PERP": "UNI-USD-SWAP",
    "BTC-USDT": "BTC-USDT",
}


def test_kraken_every_checksum_is_checked_and_matches(data_dir: Path) -> None:
    result = replay_capture(data_dir / "KRAKEN.jsonl.gz")
    venue = result.venue
    assert result.protocol == "kraken-v1"
    assert {i: venue.venue_symbol(i) for i in venue.books} == KRAKEN_PAIRS
    stats = venue.stats.values()
    assert venue.venue_stats.book_frames == 4279
    assert sum(s.snapshots for s in stats) == 10
    assert sum(s.updates for s in stats) == 4269
    # Every update carries `c`, including the one two-sided frame whose `c` is in its last
    # object (cryptofeed misses that one).
    assert sum(s.checksums_checked for s in stats) == 4269
    assert sum(s.checksums_failed for s in stats) == 0
    assert all(s.resyncs == 0 and s.crossed == 0 and s.skipped == 0 for s in stats)
    assert not venue.venue_stats.skipped
    assert all(b.state is BookState.LIVE for b in venue.books.values())
    assert all(len(b.bids) <= 1000 and len(b.asks) <= 1000 for b in venue.books.values())


def test_okx_every_checksum_is_checked_and_matches(data_dir: Path) -> None:
    result = replay_capture(data_dir / "OKX.jsonl.gz")
    venue = result.venue
    assert result.protocol == "okx-v5"
    # Our names come from the recorded subscribe frames, not from the header's
    # cryptofeed names (BTC-USD-22K27).
    assert {i: venue.venue_symbol(i) for i in venue.books} == OKX_IDS
    stats = venue.stats.values()
    assert venue.venue_stats.book_frames == 290
    assert sum(s.snapshots for s in stats) == 3
    assert sum(s.updates for s in stats) == 287
    assert sum(s.checksums_checked for s in stats) == 290
    assert sum(s.checksums_failed for s in stats) == 0
    # The 2022 frames predate seqId: nothing to chain.
    assert sum(s.sequence_checked for s in stats) == 0
    assert all(s.resyncs == 0 and s.crossed == 0 for s in stats)
    assert not venue.venue_stats.skipped
    assert all(b.state is BookState.LIVE for b in venue.books.values())


@pytest.mark.parametrize(
    ("capture", "venue_key", "normalize"),
    [("KRAKEN", "KRAKEN", normalize_pair), ("OKX", "OKX", normalize_inst_id)],
)
def test_final_books_match_the_independent_reference(
    data_dir: Path, capture: str, venue_key: str, normalize: object
) -> None:
    ref = orjson.loads((data_dir / "cryptofeed_final_books.json").read_bytes())
    venue = replay_capture(data_dir / f"{capture}.jsonl.gz").venue
    books = ref["venues"][venue_key]
    assert len(books) == len(venue.books)
    for entry in books.values():
        inst = normalize(entry["exchange_symbol"])  # type: ignore[operator]
        book = venue.books[inst]
        want_bids = [(float(p), float(q)) for p, q in entry["bids"]]
        want_asks = [(float(p), float(q)) for p, q in entry["asks"]]
        got_bids = [(p, book.bids.sizes[p]) for p in book.bids.prices(len(want_bids))]
        got_asks = [(p, book.asks.sizes[p]) for p in book.asks.prices(len(want_asks))]
        assert got_bids == want_bids, inst
        assert got_asks == want_asks, inst
        assert (len(book.bids), len(book.asks)) == (entry["bid_levels"], entry["ask_levels"])
        # The venue's checksum after the last frame, from our own book.
        got = book.checksum()
        assert book.checksum_kind == ("kraken" if capture == "KRAKEN" else "okx")
        assert got & 0xFFFFFFFF == entry["venue_checksum_after_last_frame"] & 0xFFFFFFFF, inst


# --- a corrupted copy: one price digit changed in one frame ---------------------------------


@dataclass
class SendingSession(CaptureSession):
    """A capture session that keeps what the venue sends (resubscriptions)."""

    sent: list[str] = field(default_factory=list)

    def send(self, text: str) -> None:
        self.sent.append(text)


def _venue(path: Path) -> tuple[BookDriver, SendingSession, list[CaptureEvent]]:
    header, events = read_capture(path)
    plan = plan_replay(header, events)
    session = SendingSession([], keep_tops=True)
    venue = open_venue(plan.spec, session)
    venue.on_connected()
    return venue, session, [e for e in events if e.kind == "recv"]


def _bump_last_digit(price: str) -> str:
    return price[:-1] + str((int(price[-1]) + 1) % 10)


def _corrupt_in_top(
    venue: BookDriver, frames: list[CaptureEvent], start: int, symbol: str, level_of
) -> tuple[int, str]:
    """Replay clean frames up to the first update of `symbol` from `start` whose first level
    is inside the book's top 10; return its index and the frame with that price changed."""
    for i, event in enumerate(frames):
        if i >= start and symbol in event.data:
            found = level_of(orjson.loads(event.data))
            if found is not None:
                is_ask, price = found
                book = next(
                    b for b in venue.books.values() if venue.venue_symbol(b.instrument) == symbol
                )
                side = book.asks if is_ask else book.bids
                top = side.prices(10)
                if len(top) == 10 and (
                    float(price) <= top[-1] if is_ask else float(price) >= top[-1]
                ):
                    bad = event.data.replace(f'["{price}"', f'["{_bump_last_digit(price)}"', 1)
                    assert bad != event.data
                    return i, bad
        venue.receive(event.data, int(event.ts * 1e9))
    raise AssertionError("no frame to corrupt")


def _kraken_level(msg: object) -> tuple[bool, str] | None:
    if not isinstance(msg, list) or not str(msg[-2]).startswith("book"):
        return None
    for obj in msg[1:-2]:
        for key, is_ask in (("a", True), ("b", False)):
            if obj.get(key):
                return is_ask, obj[key][0][0]
    return None


def _okx_level(msg: object) -> tuple[bool, str] | None:
    if not isinstance(msg, dict) or msg.get("action") != "update":
        return None
    data = msg["data"][0]
    if data["asks"]:
        return True, data["asks"][0][0]
    if data["bids"]:
        return False, data["bids"][0][0]
    return None


@pytest.mark.parametrize(
    ("capture", "symbol", "instrument", "level_of"),
    [
        ("KRAKEN", "XMR/USD", "XMR-USD", _kraken_level),
        ("OKX", "BTC-USDT", "BTC-USDT", _okx_level),
    ],
)
def test_a_corrupted_price_fails_the_checksum_at_that_frame_and_resyncs_that_book(
    data_dir: Path, capture: str, symbol: str, instrument: str, level_of
) -> None:
    venue, session, frames = _venue(data_dir / f"{capture}.jsonl.gz")
    index, bad = _corrupt_in_top(venue, frames, len(frames) // 2, symbol, level_of)
    stats = venue.stats[instrument]
    assert stats.checksums_failed == 0
    session.sent.clear()
    tops_before = len(session.tops)
    venue.receive(bad, int(frames[index].ts * 1e9))
    # The checksum fails at exactly that frame, and only that book resyncs, alone.
    assert stats.checksums_failed == 1
    assert stats.resyncs == 1
    assert venue.books[instrument].state is BookState.RESYNCING
    assert len(session.sent) == 2
    unsub, sub = (orjson.loads(s) for s in session.sent)
    if capture == "KRAKEN":
        assert (unsub["event"], unsub["pair"]) == ("unsubscribe", [symbol])
        assert (sub["event"], sub["pair"]) == ("subscribe", [symbol])
        assert sub["subscription"] == {"name": "book", "depth": 1000}
    else:
        assert unsub == {"op": "unsubscribe", "args": [{"channel": "books", "instId": symbol}]}
        assert sub == {"op": "subscribe", "args": [{"channel": "books", "instId": symbol}]}
    # The rest of the capture: that book waits for a snapshot (none comes), publishing no
    # levels; every other book keeps matching the venue.
    for event in frames[index + 1 :]:
        venue.receive(event.data, int(event.ts * 1e9))
    assert stats.checksums_failed == 1
    assert stats.dropped_stale > 0
    assert venue.books[instrument].state is BookState.RESYNCING
    mine = [t for t in session.tops[tops_before:] if t.instrument == instrument]
    assert mine and all(not t.bid_prices and not t.ask_prices for t in mine)
    for other, st in venue.stats.items():
        if other != instrument:
            assert st.checksums_failed == 0 and st.resyncs == 0, other
            assert venue.books[other].state is BookState.LIVE, other
