"""Binance spot on the real capture (tests/data/BINANCE.jsonl.gz, recorded 2021-10).

Truth comes from the venue: `@bookTicker` carries the order-book update id `u`, so at an
equal id the book's best levels must match it exactly.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from mmengine.book.sync import BookDriver
from mmengine.capture import read_capture
from mmengine.model import BookState
from mmengine.replay import CaptureSession, replay_capture
from mmengine.venues.base import VenueSpec
from mmengine.venues.registry import open_venue

INSTRUMENTS = ("NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR")


def test_capture_syncs_and_agrees_with_every_book_ticker(data_dir: Path) -> None:
    result = replay_capture(data_dir / "BINANCE.jsonl.gz", audit=True)
    venue = result.venue
    stats = venue.stats
    assert set(stats) == set(INSTRUMENTS)
    assert venue.venue_stats.book_frames == 177
    assert sum(s.snapshots for s in stats.values()) == 4
    # Step 4 of the sync: the diffs already inside the REST snapshot are dropped.
    assert sum(s.dropped_stale for s in stats.values()) == 5
    assert sum(s.updates for s in stats.values()) == 172
    assert sum(s.sequence_gaps for s in stats.values()) == 0
    # Every bookTicker that shares an update id with a book state agrees with it.
    assert sum(s.audit_agree for s in stats.values()) == 26
    assert sum(s.audit_disagree for s in stats.values()) == 0
    assert all(s.resyncs == 0 and s.crossed == 0 for s in stats.values())
    assert all(b.state is BookState.LIVE for b in venue.books.values())


def test_final_books_match_the_independent_reference(data_dir: Path) -> None:
    """cryptofeed 2.4.1's final top 10 from the same frames (Binance is correct there)."""
    ref = orjson.loads((data_dir / "cryptofeed_final_books.json").read_bytes())
    books = ref["venues"]["BINANCE"]
    venue = replay_capture(data_dir / "BINANCE.jsonl.gz").venue
    for inst in INSTRUMENTS:
        book = venue.books[inst]
        want_bids = [(float(p), float(q)) for p, q in books[inst]["bids"]]
        want_asks = [(float(p), float(q)) for p, q in books[inst]["asks"]]
        n = len(want_bids)
        got_bids = [(p, book.bids.sizes[p]) for p in book.bids.prices(n)]
        got_asks = [(p, book.asks.sizes[p]) for p in book.asks.prices(len(want_asks))]
        assert got_bids == want_bids, inst
        assert got_asks == want_asks, inst
        assert (len(book.bids), len(book.asks)) == (
            books[inst]["bid_levels"],
            books[inst]["ask_levels"],
        ), inst


def _venue(data_dir: Path) -> tuple[BookDriver, CaptureSession, list]:
    _header, events = read_capture(data_dir / "BINANCE.jsonl.gz")
    session = CaptureSession([e for e in events if e.kind == "http"], keep_tops=True)
    spec = VenueSpec("binance", "binance", INSTRUMENTS, depth=1000, audit=True)
    venue = open_venue(spec, session)
    venue.on_connected()
    return venue, session, [e for e in events if e.kind == "recv"]


def test_a_missing_diff_resyncs_that_symbol_only(data_dir: Path) -> None:
    venue, session, frames = _venue(data_dir)
    nkn = [i for i, e in enumerate(frames) if '"s":"NKNUSDT","U"' in e.data]
    dropped = nkn[40]
    for i, event in enumerate(frames):
        if i != dropped:
            venue.receive(event.data, int(event.ts * 1e9))
    stats = venue.stats["NKN-USDT"]
    assert stats.sequence_gaps == 1 and stats.resyncs == 1
    assert venue.venue_stats.resyncs["gap"] == 1
    # The only recorded snapshot is older than the gap, so the book can never be rebuilt
    # from this capture: it must stay out of LIVE, and publish no levels after the gap.
    assert venue.books["NKN-USDT"].state is BookState.RESYNCING
    nkn_tops = [t for t in session.tops if t.instrument == "NKN-USDT"]
    first_not_live = next(i for i, t in enumerate(nkn_tops) if t.state != "LIVE")
    assert all(not t.bid_prices and not t.ask_prices for t in nkn_tops[first_not_live:])
    # The other symbols on the connection were not touched.
    for inst in ("BLZ-ETH", "LRC-BTC", "RUNE-EUR"):
        assert venue.books[inst].state is BookState.LIVE
        assert venue.stats[inst].resyncs == 0


def test_frames_that_cannot_be_used_are_counted_and_an_unusable_diff_resyncs_its_symbol(
    data_dir: Path,
) -> None:
    venue, _session, frames = _venue(data_dir)
    for event in frames[:20]:
        venue.receive(event.data, int(event.ts * 1e9))

    def books() -> dict[str, tuple[BookState, list[float], list[float]]]:
        return {i: (b.state, b.bids.prices(10), b.asks.prices(10)) for i, b in venue.books.items()}

    before = books()
    assert before["NKN-USDT"][0] is BookState.LIVE
    # Frames that name no book of ours: counted, and every book stays as it was.
    for frame in (
        '{"stream":"nknusdt@depth@100ms","data":{"e":"depthUpdate"',  # truncated
        '{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"NOPEUSDT","U":1,"u":2,"b":[],"a":[]}}',
        '{"code":2,"msg":"Invalid request: unknown stream","id":1}',
        "[1,2,3]",
    ):
        venue.receive(frame, 0)
    assert books() == before
    # A diff of NKNUSDT that cannot be used is an update that book missed: it resyncs at
    # once rather than wait for the next diff to show the hole; the others are untouched.
    for frame in (
        '{"stream":"x","data":{"e":"depthUpdate","s":"NKNUSDT","U":"a","u":1,"b":[],"a":[]}}',
        '{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"NKNUSDT","U":1,"u":2,'
        '"b":[["NaN","1"]],"a":[]}}',
    ):
        venue.receive(frame, 0)
    assert dict(venue.venue_stats.skipped) == {
        "bad_json": 1,
        "malformed": 1,
        "bad_level": 1,
        "unknown_symbol": 1,
        "venue_error": 1,
        "not_an_object": 1,
    }
    assert dict(venue.venue_stats.resyncs) == {"unusable_update": 1}
    after = books()
    assert after.pop("NKN-USDT")[0] is not BookState.LIVE
    assert after == {i: b for i, b in before.items() if i != "NKN-USDT"}
