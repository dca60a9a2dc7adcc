"""Books never LIVE after a missed update, and recovery as narrow as the fault, within the
venue's limits (issue 16): Binance's REST bridge, OKX's crossed books and subscribe limit.

Frames follow the venues' documented shapes (venue-protocols.md 1.3, 4.3); each test drives
one venue connection's books through the shared driver, with REST answers held back where
the test needs a slow snapshot.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from mmengine.book import sync as book_sync
from mmengine.book.sync import RequestLimit
from mmengine.model import BookState
from mmengine.pricing.model import InstrumentSpec, InstrumentState, SourceSpec, evaluate
from tests.venue_session import RecordingSession, venue

# --- Binance (1.4) ---------------------------------------------------------------------------


def diff(symbol: str, first: int, last: int, bids: Any = (), asks: Any = ()) -> str:
    data = {
        "e": "depthUpdate",
        "E": 1700000000000,
        "s": symbol,
        "U": first,
        "u": last,
        "b": [list(b) for b in bids],
        "a": [list(a) for a in asks],
    }
    return orjson.dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": data}).decode()


def snapshot(last_id: int, bids: Any, asks: Any) -> str:
    return orjson.dumps(
        {"lastUpdateId": last_id, "bids": [list(b) for b in bids], "asks": [list(a) for a in asks]}
    ).decode()


BOOK = ([("100.0", "1.0"), ("99.0", "2.0")], [("101.0", "1.0"), ("102.0", "2.0")])


def binance(held: bool = False, symbols: tuple[str, ...] = ("BTC-USDT",)) -> tuple[Any, Any]:
    rest = {f"symbol={s.replace('-', '')}&": snapshot(7, *BOOK) for s in symbols}
    return venue("binance", symbols, RecordingSession(rest, hold=held), depth=100)


def test_a_bridged_book_is_stamped_no_earlier_than_its_rest_snapshot_arrived() -> None:
    """The top a REST snapshot puts LIVE carries the time that snapshot was received, not
    the earlier receive time of the diff whose handling happened to pick it up: its
    `recv_ts_ns` (with `venue_seq`, what names the book in a Price) may not predate data
    the venue had not even served yet. Found by the chaos campaign's checker."""
    driver, session = binance(held=True)
    driver.receive(diff("BTCUSDT", 6, 6), 100)  # buffered; the snapshot is asked for
    session.answer_all(at_ns=150)  # the REST thread has it at 150 ...
    driver.receive(diff("BTCUSDT", 7, 7), 140)  # ... while a diff received at 140 is handled
    book = driver.books["BTC-USDT"]
    assert book.state is BookState.LIVE and book.venue_seq == 7
    assert session.tops[-1].venue_seq == 7 and session.tops[-1].recv_ts_ns == 150


def test_a_diff_overlapping_the_book_after_the_bridge_is_applied_not_a_gap() -> None:
    """Only a hole is a gap (1.4, step 6): the snapshot's L = 7 fell inside the next diff's
    range 6..9, which holds the book's state at 9 and must be applied. (main resynced it.)"""
    driver, _ = binance()
    driver.receive(diff("BTCUSDT", 1, 5), 1)  # buffered, then dropped: u <= L
    book = driver.books["BTC-USDT"]
    assert book.state is BookState.LIVE and book.venue_seq == 7
    driver.receive(diff("BTCUSDT", 6, 9, bids=[("100.5", "3.0")]), 2)
    stats = driver.stats["BTC-USDT"]
    assert (book.state, book.venue_seq, stats.sequence_gaps, stats.resyncs) == (
        BookState.LIVE,
        9,
        0,
        0,
    )
    assert book.bids.prices(3) == [100.5, 100.0, 99.0]
    driver.receive(diff("BTCUSDT", 10, 10, asks=[("101.0", "0")]), 3)
    assert book.asks.prices(3) == [102.0] and book.venue_seq == 10
    driver.receive(diff("BTCUSDT", 9, 10), 4)  # older than the book: stale, dropped
    assert stats.dropped_stale == 2 and book.state is BookState.LIVE
    driver.receive(diff("BTCUSDT", 12, 13), 5)  # 11 never came: a hole
    assert book.state is BookState.RESYNCING and stats.sequence_gaps == 1


def test_a_snapshot_inside_a_buffered_diff_bridges_it() -> None:
    driver, session = binance(held=True)
    driver.receive(diff("BTCUSDT", 3, 5), 1)
    driver.receive(diff("BTCUSDT", 6, 9, bids=[("98.0", "4.0")]), 2)
    session.answer_all()
    driver.on_tick(time.time_ns())
    book = driver.books["BTC-USDT"]
    assert book.state is BookState.LIVE and book.venue_seq == 9
    assert book.bids.prices(3) == [100.0, 99.0, 98.0]
    assert driver.stats["BTC-USDT"].dropped_stale == 1


def test_a_hole_met_while_bridging_from_on_tick_resyncs_that_symbol_only() -> None:
    """An IntegrityError inside the bridge, run from the timer (the snapshot came back
    between frames), resyncs that one symbol: it used to escape `on_tick`, and the
    transport reconnected every book on the connection."""
    driver, session = binance(held=True, symbols=("BTC-USDT", "ETH-USDT"))
    driver.receive(diff("ETHUSDT", 7, 8), 1)
    session.answer_all()
    driver.on_tick(time.time_ns())
    assert driver.books["ETH-USDT"].state is BookState.LIVE
    driver.receive(diff("BTCUSDT", 7, 8), 2)
    driver.receive(diff("BTCUSDT", 11, 12), 3)  # 9 and 10 never came
    session.answer_all()
    driver.on_tick(time.time_ns())  # must not raise
    assert driver.books["BTC-USDT"].state is BookState.RESYNCING
    assert driver.venue_stats.resyncs == {"gap": 1}
    assert driver.books["ETH-USDT"].state is BookState.LIVE and not session.reconnects
    assert session.requested  # a new snapshot is on its way


def test_the_diff_buffer_of_a_sync_is_bounded() -> None:
    """While a snapshot is awaited the diffs are buffered, at most `max_buffered`: beyond,
    the overflow is counted and the sync starts over from the newest diff."""
    driver, session = binance(held=True)
    limit = driver.syncs["BTC-USDT"].rule.max_buffered  # type: ignore[attr-defined]
    for u in range(1, limit + 2):
        driver.receive(diff("BTCUSDT", u, u), u)
    rule = driver.syncs["BTC-USDT"].rule
    assert driver.venue_stats.resyncs == {"sync_buffer_overflow": 1}
    assert [d.last_id for d in rule.buffered] == [limit + 1]  # type: ignore[attr-defined]
    assert len(session.requested) == 2  # the first snapshot, then one for the new sync
    session.answer_all()
    driver.on_tick(time.time_ns())  # the stale first answer is ignored; the second is used
    assert driver.books["BTC-USDT"].state is not BookState.LIVE  # L = 7: far too old


def test_a_failed_snapshot_is_counted_and_retried_later() -> None:
    driver, _ = venue("binance", ("BTC-USDT",), RecordingSession(), depth=100)
    driver.receive(diff("BTCUSDT", 1, 2), 1)
    assert driver.venue_stats.skipped == {"snapshot_failed": 1}
    assert driver.books["BTC-USDT"].state is BookState.SYNCING


# --- OKX: crossed books and the subscribe limit (4.4, 4.5) ----------------------------------


def books5(bid: str, ask: str, seq: int) -> str:
    data = {
        "asks": [[ask, "1", "0", "1"]],
        "bids": [[bid, "1", "0", "1"]],
        "instId": "BTC-USDT",
        "ts": "1597026383085",
        "seqId": seq,
    }
    return orjson.dumps(
        {"arg": {"channel": "books5", "instId": "BTC-USDT"}, "data": [data]}
    ).decode()


def test_okx_books5_snapshots_carry_seq_id_only_and_go_live() -> None:
    """`books5` frames have `seqId` and no `prevSeqId` (nothing to chain): each replaces the
    book. (main took every one of them for malformed: a depth <= 5 never went LIVE.)"""
    okx, _ = venue("okx-v5", ("BTC-USDT",), depth=5)
    okx.receive(books5("100", "101", 10), 1)
    book = okx.books["BTC-USDT"]
    assert book.state is BookState.LIVE and book.venue_seq == 10
    assert not okx.venue_stats.skipped


def test_okx_crossed_book_is_held_out_of_pricing_without_a_resubscribe_storm() -> None:
    """A crossed OKX book (documented during pre-open) stays synced and is published as it
    is; pricing leaves it out as `crossed`. No unsubscribe/subscribe per snapshot, which on
    books5 (every 100 ms) burnt 480 requests an hour in under a minute."""
    okx, session = venue("okx-v5", ("BTC-USDT",), depth=5)
    okx.receive(books5("100", "101", 10), 1)
    for seq in range(11, 111):
        okx.receive(books5("102", "101", seq), seq)
    book = okx.books["BTC-USDT"]
    stats = okx.stats["BTC-USDT"]
    assert not session.sent and stats.resyncs == 0
    assert book.state is BookState.LIVE and stats.crossed == 1  # one crossed episode
    top = session.tops[-1]
    assert top.state == "LIVE" and top.bid_prices[0] >= top.ask_prices[0]
    spec = InstrumentSpec("BTC-USDT", (SourceSpec("okx-v5", "BTC-USDT"),), min_venues=1)
    decision = evaluate(spec, {("okx-v5", "BTC-USDT"): top}, {}, InstrumentState(), top.recv_ts_ns)
    assert decision is not None and decision.halted
    assert [x.reason for x in decision.excluded] == ["crossed"]
    okx.receive(books5("100.5", "101", 111), 111)  # uncrossed: priced again
    assert session.tops[-1].bid_prices == [100.5] and stats.crossed == 1


def test_subscribe_requests_stay_within_the_venue_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """OKX allows 480 subscribe/unsubscribe requests per connection per hour (4.5): a storm
    of resyncs sends no more than that in any hour; the rest wait, counted, and go out as
    the window moves on."""
    clock = [1000.0]
    monkeypatch.setattr(book_sync.time, "monotonic", lambda: clock[0])
    insts = tuple(f"C{i}-USDT" for i in range(300))
    okx, session = venue("okx-v5", insts, depth=400)
    assert len(okx.subscribe_frames()) == 1
    for n, inst in enumerate(insts):
        snap = {"asks": [["101", "1", "0", "1"]], "bids": [["100", "1", "0", "1"]]}
        snap |= {"ts": "1", "checksum": 0, "prevSeqId": -1, "seqId": 10}
        frame = {"arg": {"channel": "books", "instId": inst}, "action": "snapshot", "data": [snap]}
        okx.receive(orjson.dumps(frame).decode(), n)
        gap = dict(frame, action="update", data=[dict(snap, prevSeqId=5, seqId=12)])
        okx.receive(orjson.dumps(gap).decode(), n)  # a gap: resubscribe that instId
    assert sum(okx.venue_stats.resyncs.values()) == 300
    assert len(session.sent) == 478  # 239 resyncs of 2 requests, plus the subscription
    assert okx.venue_stats.requests_delayed == 122
    okx.on_tick(0)
    assert len(session.sent) == 478  # the window has not moved
    clock[0] += 3600.0
    okx.on_tick(0)
    assert len(session.sent) == 478 + 122


def test_request_limit_is_a_sliding_window() -> None:
    limit = RequestLimit(3, 10.0)
    assert limit.allow(2, 0.0) and limit.allow(1, 5.0)
    assert not limit.allow(1, 9.9)
    assert limit.allow(2, 10.0)  # the two sent at 0.0 left the window
    assert not limit.allow(1, 14.9) and limit.allow(1, 15.0)
