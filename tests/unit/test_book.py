"""L2 book mechanics: ordering, deletes, truncation, wire strings, tops by state."""

from __future__ import annotations

import random

from mmengine.book import BookSide, L2Book
from mmengine.model import BookState


def test_sides_are_best_first() -> None:
    book = L2Book("v", "BTC-USDT", depth=10)
    book.bids.load([(100.0, 1.0), (102.0, 2.0), (101.0, 3.0)])
    book.asks.load([(105.0, 1.0), (103.0, 2.0), (104.0, 3.0)])
    assert book.bids.prices(3) == [102.0, 101.0, 100.0]
    assert book.asks.prices(3) == [103.0, 104.0, 105.0]
    assert book.bids.best() == 102.0 and book.asks.best() == 103.0


def test_zero_size_deletes_and_unknown_delete_is_ignored() -> None:
    side = BookSide(is_bid=True)
    side.load([(100.0, 1.0), (99.0, 1.0)])
    side.set(100.0, 0.0)
    side.set(50.0, 0.0)  # a delete for a price we do not hold is normal
    assert side.prices(5) == [99.0]
    assert side.sizes == {99.0: 1.0}


def test_update_existing_level_keeps_one_key() -> None:
    side = BookSide(is_bid=False)
    side.set(10.0, 1.0)
    side.set(10.0, 2.0)
    assert side.keys == [10.0] and side.sizes[10.0] == 2.0


def test_truncate_drops_worst_levels_and_their_strings() -> None:
    book = L2Book("v", "X-Y", depth=2, keep_wire=True)
    for p in (1.0, 2.0, 3.0):
        book.bids.set_wire(p, 1.0, f"{p:.2f}", "1.0")
        book.asks.set_wire(p + 10, 1.0, f"{p + 10:.2f}", "1.0")
    book.truncate()
    assert book.bids.prices(5) == [3.0, 2.0]
    assert book.asks.prices(5) == [11.0, 12.0]
    assert book.bids.wire is not None and set(book.bids.wire) == {3.0, 2.0}
    assert book.asks.wire_levels(2) == [("11.00", "1.0"), ("12.00", "1.0")]


def test_latest_wire_string_wins() -> None:
    side = BookSide(is_bid=False, keep_wire=True)
    side.set_wire(1.5, 2.0, "1.50000", "2.0")
    side.set_wire(1.5, 3.0, "1.5", "3.000")
    assert side.wire_levels(1) == [("1.5", "3.000")]


def test_random_updates_match_a_plain_dict_model() -> None:
    rng = random.Random(7)
    side = BookSide(is_bid=True)
    model: dict[float, float] = {}
    for _ in range(5000):
        price = float(rng.randint(1, 300))
        size = 0.0 if rng.random() < 0.4 else float(rng.randint(1, 9))
        side.set(price, size)
        if size:
            model[price] = size
        else:
            model.pop(price, None)
    assert side.prices(1000) == sorted(model, reverse=True)
    assert side.sizes == model


def test_top_carries_levels_only_when_live() -> None:
    book = L2Book("binance", "BTC-USDT", depth=10)
    book.bids.load([(100.0, 1.0), (99.0, 2.0)])
    book.asks.load([(101.0, 3.0)])
    book.venue_seq = 42
    top = book.top(5)
    assert top.state == "SYNCING" and top.bid_prices == [] and top.ask_prices == []
    book.state = BookState.LIVE
    top = book.top(1)
    assert top.bid_prices == [100.0] and top.bid_sizes == [1.0]
    assert top.ask_prices == [101.0] and top.ask_sizes == [3.0]
    assert top.venue_seq == 42


def test_crossed_detection() -> None:
    book = L2Book("v", "X-Y", depth=10)
    book.bids.load([(101.0, 1.0)])
    book.asks.load([(101.0, 1.0)])
    assert book.is_crossed()
    book.asks.set(101.0, 0.0)
    book.asks.set(102.0, 1.0)
    assert not book.is_crossed()
