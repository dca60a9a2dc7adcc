"""What a venue's `parse` turns a frame into, for the shared driver to apply (venue thread).

A frame yields a list of events: book messages (`BookUpdate`), best-bid/ask tickers for the
audit (`AuditTop`), the connection-wide sequence number where the venue has one
(`Sequenced`), a frame of a channel the engine does not use (`Ignored`), and control
(`Skipped`, `Send`, `Resync`, `Reconnect`). A frame that cannot be
used at all raises `FrameError` instead; raised through `lost_update`, it also names the books
whose update it carried, so that the driver can resync what the loss touched.
"""

from __future__ import annotations

from itertools import repeat
from operator import mul, truediv
from typing import Any, final

from mmengine.errors import FrameError
from mmengine.model import BookTop

_BID_SIZES = BookTop._fields.index("bid_sizes")
_ASK_SIZES = BookTop._fields.index("ask_sizes")

EVERY_BOOK = "*"  # `lost_update`: the loss cannot be attributed to one book


@final  # the driver tells it from an event list by `type(x) is BookUpdate`
class BookUpdate:
    """One book message of one instrument: a snapshot that replaces the book, or a delta.

    Levels are already validated by a `mmengine.book.levels` decoder. Ids are the venue's
    own, None where the message has none: `last_id` is the update id after the message
    (Binance `u`, Bybit `u`, OKX `seqId`, Coinbase `sequence_num`), `first_id` the id it
    follows from (Binance `U`, OKX `prevSeqId`), `prev_id` the last id of the message before
    it where the venue names both (Binance futures `pu`, beside `U`), `cross_seq` Bybit's
    `seq`; `checksum` the venue's CRC32 of the book after the message; `ts_ns` the venue's
    time of the message.
    """

    __slots__ = (
        "asks",
        "bids",
        "checksum",
        "cross_seq",
        "first_id",
        "instrument",
        "last_id",
        "prev_id",
        "snapshot",
        "ts_ns",
    )

    def __init__(
        self,
        instrument: str,
        snapshot: bool,
        bids: list[Any],
        asks: list[Any],
        last_id: int | None = None,
        first_id: int | None = None,
        cross_seq: int = -1,
        ts_ns: int | None = None,
        checksum: int | None = None,
        prev_id: int | None = None,
    ) -> None:
        self.instrument = instrument
        self.snapshot = snapshot
        self.bids = bids
        self.asks = asks
        self.last_id = last_id
        self.first_id = first_id
        self.cross_seq = cross_seq
        self.ts_ns = ts_ns
        self.checksum = checksum
        self.prev_id = prev_id


class AuditTop:
    """The venue's own best bid/ask for an instrument, to compare with the book.

    With `venue_seq` (Binance `@bookTicker` `u`) it waits for the book to reach that update
    id and must then agree exactly (prices and sizes). With `cross_seq` (Bybit `cs`) it must
    agree when the book's cross sequence is equal. Otherwise it is compared with the book as
    it is on arrival, as a loose count that never resyncs.
    """

    __slots__ = ("ask", "ask_size", "bid", "bid_size", "cross_seq", "instrument", "venue_seq")

    def __init__(
        self,
        instrument: str,
        bid: float,
        ask: float,
        bid_size: float | None = None,
        ask_size: float | None = None,
        venue_seq: int | None = None,
        cross_seq: int | None = None,
    ) -> None:
        self.instrument = instrument
        self.bid = bid
        self.ask = ask
        self.bid_size = bid_size
        self.ask_size = ask_size
        self.venue_seq = venue_seq
        self.cross_seq = cross_seq


class Sequenced:
    """The frame's connection-wide sequence number (Coinbase `sequence_num`); comes first."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq


class Skipped:
    """A part of a frame that is not used (an unknown product among known ones): counted."""

    __slots__ = ("detail", "kind")

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        self.detail = detail


class Ignored:
    """A frame of a channel the venue module does not use (trades, klines, candles, another
    depth's book): counted by channel, never an error. A frame of one of our own channels
    that cannot be used is a `Skipped` (or a FrameError) instead."""

    __slots__ = ("channel",)

    def __init__(self, channel: str) -> None:
        self.channel = channel


class Send:
    """Frames the venue needs sent (a subscription that waited for instrument data)."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[str]) -> None:
        self.frames = frames


class Resync:
    """The venue says a book can no longer be trusted (Kraken v2: its precisions changed)."""

    __slots__ = ("instrument", "reason")

    def __init__(self, instrument: str, reason: str) -> None:
        self.instrument = instrument
        self.reason = reason


class Reconnect:
    """The venue announces it will drop the connection (Binance shutdown, OKX upgrade)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class ContractSize:
    """How one instrument's book sizes become base units (a venue fact, learned from the
    venue's instrument data; the driver applies it to each BookTop it publishes).

    The book keeps the venue's own sizes, which its checks and audit compare; pricing gets
    base units, so that books of contracts consolidate with spot books. A contract is worth
    `value` of the quote currency when `in_quote` (inverse contracts, Binance COIN-M: 100 USD
    for BTC, so `q` contracts at price `p` are `q * 100 / p` BTC), else `value` of the base
    currency (`q * value`).
    """

    __slots__ = ("in_quote", "value")

    def __init__(self, value: float, in_quote: bool) -> None:
        self.value = value
        self.in_quote = in_quote

    def __repr__(self) -> str:
        return f"ContractSize({self.value!r}, in_quote={self.in_quote})"

    def to_base(self, top: BookTop) -> BookTop:
        """`top` with its sizes in base units (prices unchanged). Once per published top of
        such a venue: C-level map() and the plain tuple constructor, not `_replace` (1.5 us
        instead of 2.5 for 5 levels a side)."""
        v = repeat(self.value)
        bids = map(mul, top.bid_sizes, v)
        asks = map(mul, top.ask_sizes, v)
        if self.in_quote:
            bids = map(truediv, bids, top.bid_prices)
            asks = map(truediv, asks, top.ask_prices)
        fields = list(top)
        fields[_BID_SIZES] = list(bids)
        fields[_ASK_SIZES] = list(asks)
        return tuple.__new__(BookTop, fields)


Event = BookUpdate | AuditTop | Sequenced | Skipped | Ignored | Send | Resync | Reconnect

# What decoding a frame may raise besides FrameError: the driver counts them as `malformed`.
DECODE_ERRORS = (FrameError, ValueError, KeyError, TypeError, IndexError, AttributeError)


def lost_update(instruments: list[str] | tuple[str, ...], exc: Exception) -> FrameError:
    """`exc`, raised while decoding a frame that carried book updates for `instruments`
    (`EVERY_BOOK`: for books it cannot name), as the FrameError the driver counts; the
    driver then resyncs those books unless their integrity rule would see the loss."""
    if isinstance(exc, FrameError):
        err = FrameError(exc.kind, exc.detail)
    else:
        err = FrameError("malformed", f"{type(exc).__name__}: {exc}")
    err.lost = tuple(instruments)
    return err
