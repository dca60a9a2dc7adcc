"""Book messages written by each venue's wire kit, against a connection whose books are LIVE.

- A valid update moves the book to exactly the kit's plain book (sizes, deletes, deletes of
  absent levels, truncation to depth).
- (e) A multi-part frame whose second part is malformed leaves no book LIVE that missed the
  first part's update: the books it touched resync (the connection, where the venue's
  counter is connection-wide), the others are untouched.
"""

from __future__ import annotations

from mmengine.model import BookState
from tests.conformance.conftest import kit_of, live_books, state

BOOK = (
    [("100.5", "1.5"), ("100.25", "2"), ("99", "3")],
    [("101", "1"), ("101.75", "0.25"), ("102", "4")],
)


def test_a_valid_update_gives_exactly_the_plain_book(protocol: str) -> None:
    kit = kit_of(protocol)
    x, y = kit.instruments
    driver, session = live_books(kit, {x: BOOK, y: BOOK})
    assert all(b.state is BookState.LIVE for b in driver.books.values())
    others = state(driver)[y]
    bids = [("100.5", "0"), ("100.75", "2.5"), ("98", "0")]  # delete, new best, absent delete
    asks = [("101", "3"), ("103", "1")]
    driver.receive(kit.update([(x, bids, asks)]), 3)
    book = driver.books[x]
    assert book.state is BookState.LIVE, dict(driver.venue_stats.skipped)
    want_bids, want_asks = kit.levels(x)
    assert [(p, book.bids.sizes[p]) for p in book.bids.prices(10**6)] == want_bids
    assert [(p, book.asks.sizes[p]) for p in book.asks.prices(10**6)] == want_asks
    assert want_bids[0] == (100.75, 2.5) and (100.5, 1.5) not in want_bids
    assert state(driver)[y] == others
    top = session.tops[-1]
    assert (top.instrument, top.state, top.bid_prices[0], top.ask_prices[0]) == (
        x,
        "LIVE",
        100.75,
        101.0,
    )


def test_the_book_is_truncated_to_the_depth_the_venue_keeps(protocol: str) -> None:
    kit = kit_of(protocol)
    x, y = kit.instruments
    driver, _ = live_books(kit, {x: BOOK, y: BOOK})
    deep = [(f"{90 - n * 0.01:.2f}", "1") for n in range(kit.depth + 5)]
    driver.receive(kit.update([(x, deep, [])]), 3)
    book = driver.books[x]
    want_bids, _ = kit.levels(x)
    assert book.state is BookState.LIVE
    assert [(p, book.bids.sizes[p]) for p in book.bids.prices(10**6)] == want_bids
    assert len(book.bids) == (kit.depth if kit.truncates else len(deep) + len(BOOK[0]))


def test_a_multi_part_frame_whose_second_part_is_malformed(protocol: str) -> None:
    kit = kit_of(protocol)
    x, y = kit.instruments
    driver, session = live_books(kit, {x: BOOK, y: BOOK})
    good = (x, [("100.75", "5")], [])
    # the second part: another book's update, or the other side of this one
    bad = (y, [("NaN", "1")], []) if kit.multi_instrument else (x, [], [("NaN", "1")])
    tops = len(session.tops)
    driver.receive(kit.update([good, bad]), 3)
    touched = {x, bad[0]}
    for inst, book in driver.books.items():
        if driver.connection is not None or inst in touched:
            assert book.state is BookState.RESYNCING and len(book.bids) == 0, inst
        else:
            assert book.state is BookState.LIVE, inst
    assert all(t.state != "LIVE" for t in session.tops[tops:])
    assert driver.venue_stats.skipped == {"bad_level": 1}
    if driver.connection is not None:
        assert session.reconnects  # Coinbase: the connection resyncs
    else:
        assert not session.reconnects
