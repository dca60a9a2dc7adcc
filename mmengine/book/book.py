"""L2 order book per (venue, instrument), pure Python: the reference the compiled core
(`mmengine.book._core`) is tested against, and what `MMENGINE_BOOK=python` runs (venue thread
that owns the book).

Levels live in a dict (price -> size) plus a sorted list of sort keys, best first: bids are
keyed by -price so both sides read their best levels from the front. An update is one dict
write and, for a new or removed price, one bisect into the list: no whole-book copies and no
Decimal on the per-message path. Venues whose checksum is computed over the venue's own
decimal strings (Kraken, OKX legacy) keep those strings per level as well.

The driver (`mmengine.book.sync`) touches a book through `L2Book.load` (a snapshot) and
`L2Book.apply` (an update), each one call per frame with both sides' levels already validated
by a `mmengine.book.levels.LevelDecoder`, then `checksum` and `top`: the seam the compiled
core (`mmengine.book._core`) implements as well, behind the same names.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from operator import neg
from typing import TYPE_CHECKING, Any
from zlib import crc32

from mmengine.book.checksum import KRAKEN_LEVELS, OKX_LEVELS, kraken_side_text, okx_checksum
from mmengine.model import BookState, BookTop

if TYPE_CHECKING:
    from mmengine.book.events import BookUpdate

INF = float("inf")
_new_tuple = tuple.__new__  # L2Book.top builds BookTop positionally, without its __new__
_TOP_FIELDS = (
    "venue",
    "instrument",
    "state",
    "venue_seq",
    "cross_seq",
    "exchange_ts_ns",
    "recv_ts_ns",
    "bid_prices",
    "bid_sizes",
    "ask_prices",
    "ask_sizes",
)
if BookTop._fields != _TOP_FIELDS:
    raise ImportError("BookTop's fields changed: update L2Book.top, which builds it by position")

CHECKSUM_LEVELS = {None: 0, "kraken": KRAKEN_LEVELS, "okx": OKX_LEVELS}  # levels it covers
Level = tuple[float, float]
WireLevel = tuple[float, float, str, str]


class BookSide:
    """One side of a book, best level first."""

    __slots__ = ("is_bid", "keys", "sizes", "wire")

    def __init__(self, is_bid: bool, keep_wire: bool = False) -> None:
        self.is_bid = is_bid
        self.sizes: dict[float, float] = {}
        self.keys: list[float] = []
        self.wire: dict[float, tuple[str, str]] | None = {} if keep_wire else None

    def __len__(self) -> int:
        return len(self.keys)

    def clear(self) -> None:
        self.sizes.clear()
        self.keys.clear()
        if self.wire is not None:
            self.wire.clear()

    def set(self, price: float, size: float) -> None:
        """Set the level at `price` to `size`; a zero size deletes it (unknown prices too)."""
        sizes = self.sizes
        if size == 0.0:
            if price in sizes:
                del sizes[price]
                keys = self.keys
                del keys[bisect_left(keys, -price if self.is_bid else price)]
                if self.wire is not None:
                    self.wire.pop(price, None)
            return
        if price not in sizes:
            insort(self.keys, -price if self.is_bid else price)
        sizes[price] = size

    def set_wire(self, price: float, size: float, price_str: str, size_str: str) -> None:
        """`set`, keeping the venue's strings for checksums (the latest string per price)."""
        self.set(price, size)
        if size != 0.0 and self.wire is not None:
            self.wire[price] = (price_str, size_str)

    def apply(self, levels: Iterable[Level]) -> None:
        """`set` each (price, size) level, in order, in one call (the per-message hot path)."""
        sizes = self.sizes
        keys = self.keys
        if self.is_bid:
            for price, size in levels:
                if size == 0.0:
                    if price in sizes:
                        del sizes[price]
                        del keys[bisect_left(keys, -price)]
                    continue
                if price not in sizes:
                    insort(keys, -price)
                sizes[price] = size
            return
        for price, size in levels:
            if size == 0.0:
                if price in sizes:
                    del sizes[price]
                    del keys[bisect_left(keys, price)]
                continue
            if price not in sizes:
                insort(keys, price)
            sizes[price] = size

    def apply_wire(self, levels: Iterable[WireLevel], watch: int = 0) -> bool:
        """`set_wire` each (price, size, price string, size string) level, in order, in one
        call (the per-message hot path). Returns whether any level was at or better than the
        `watch`-th best level before the message, i.e. whether the best `watch` levels may
        have changed (a side shorter than `watch` always counts as changed)."""
        sizes = self.sizes
        keys = self.keys
        wire = self.wire
        is_bid = self.is_bid
        edge = -INF  # watch 0: nothing to report
        if watch > 0:
            edge = keys[watch - 1] if len(keys) >= watch else INF
        touched = False
        for price, size, price_str, size_str in levels:
            key = -price if is_bid else price
            if key <= edge:
                touched = True
            if size == 0.0:
                if price in sizes:
                    del sizes[price]
                    del keys[bisect_left(keys, key)]
                    if wire is not None:
                        wire.pop(price, None)
                continue
            if price not in sizes:
                insort(keys, key)
            sizes[price] = size
            if wire is not None:
                wire[price] = (price_str, size_str)
        return touched

    def load(self, levels: Iterable[Level]) -> None:
        """Replace the side with `levels` (any order, iterated once); zero sizes are
        ignored."""
        self.clear()
        sizes = self.sizes = {p: q for p, q in levels if q != 0.0}
        self.keys = sorted(map(neg, sizes)) if self.is_bid else sorted(sizes)

    def load_wire(self, levels: list[WireLevel]) -> None:
        """`load`, keeping the venue's strings."""
        self.clear()
        sizes = self.sizes = {p: q for p, q, _, _ in levels if q != 0.0}
        if self.wire is not None:
            self.wire = {p: (ps, qs) for p, q, ps, qs in levels if q != 0.0}
        self.keys = sorted(map(neg, sizes)) if self.is_bid else sorted(sizes)

    def truncate(self, depth: int) -> None:
        """Drop levels beyond `depth`: venues send no deletes for levels leaving their window."""
        keys = self.keys
        if len(keys) <= depth:
            return
        sizes = self.sizes
        wire = self.wire
        sign = -1.0 if self.is_bid else 1.0
        for key in keys[depth:]:
            price = sign * key
            del sizes[price]
            if wire is not None:
                wire.pop(price, None)
        del keys[depth:]

    def prices(self, n: int) -> list[float]:
        """The best `n` prices, best first."""
        if self.is_bid:
            return [-k for k in self.keys[:n]]
        return self.keys[:n]

    def best(self) -> float | None:
        if not self.keys:
            return None
        return -self.keys[0] if self.is_bid else self.keys[0]

    def size(self, price: float) -> float | None:
        """The size at `price`, None where the side holds no level."""
        return self.sizes.get(price)

    def levels(self, n: int) -> list[tuple[float, float]]:
        """The best `n` (price, size) levels, best first."""
        sizes = self.sizes
        return [(p, sizes[p]) for p in self.prices(n)]

    def wire_levels(self, n: int) -> list[tuple[str, str]]:
        """The venue's strings of the best `n` levels (for checksums)."""
        assert self.wire is not None, "this side does not keep wire strings"
        wire = self.wire
        return [wire[p] for p in self.prices(n)]


class L2Book:
    """The verified book of one instrument on one venue, with its sync state.

    `checksum` names the venue's CRC32 over the top levels (`"kraken"`, `"okx"`) that
    `checksum()` computes; its text is cached per side between messages (`_parts[0]` asks,
    `_parts[1]` bids) and rebuilt only when a message touched that side's top levels.
    """

    __slots__ = (
        "_checksum_levels",
        "_parts",
        "asks",
        "bids",
        "checksum_kind",
        "cross_seq",
        "depth",
        "exchange_ts_ns",
        "instrument",
        "recv_ts_ns",
        "state",
        "venue",
        "venue_seq",
    )

    def __init__(
        self,
        venue: str,
        instrument: str,
        depth: int,
        keep_wire: bool = False,
        checksum: str | None = None,
    ) -> None:
        self.venue = venue
        self.instrument = instrument
        self.depth = depth
        self.bids = BookSide(True, keep_wire or checksum is not None)
        self.asks = BookSide(False, keep_wire or checksum is not None)
        self.state = BookState.SYNCING
        self.venue_seq = -1
        self.cross_seq = -1
        self.exchange_ts_ns = 0
        self.recv_ts_ns = 0
        if checksum not in CHECKSUM_LEVELS:
            raise ValueError(f"unknown book checksum {checksum!r}")
        self.checksum_kind = checksum
        self._checksum_levels = CHECKSUM_LEVELS[checksum]
        self._parts: list[Any] = [None, None]

    def clear(self) -> None:
        """Forget every level (before a resync); the state is the caller's to set."""
        self.bids.clear()
        self.asks.clear()
        self.venue_seq = -1
        self.cross_seq = -1
        self._parts[0] = self._parts[1] = None

    def load(self, bids: Iterable[Any], asks: Iterable[Any]) -> None:
        """A snapshot: replace both sides with decoded levels, truncated to depth."""
        if self.bids.wire is not None:
            # A book that keeps wire strings is fed by a wire decoder (lists of WireLevel);
            # `load` is typed for every decoder's levels, `load_wire` for that one.
            self.bids.load_wire(bids)  # type: ignore[arg-type]
            self.asks.load_wire(asks)  # type: ignore[arg-type]
        else:
            self.bids.load(bids)
            self.asks.load(asks)
        self.truncate()
        self._parts[0] = self._parts[1] = None

    def apply(self, bids: Iterable[Any], asks: Iterable[Any]) -> None:
        """A delta: every level of both sides (set, delete on zero size, deletes of absent
        levels ignored), then truncation to depth (venues send no deletes for levels leaving
        their window). A side whose top levels may have changed loses its checksum text."""
        if self.bids.wire is not None:
            watch = self._checksum_levels
            parts = self._parts
            if asks and self.asks.apply_wire(asks, watch):
                parts[0] = None
            if bids and self.bids.apply_wire(bids, watch):
                parts[1] = None
        else:
            if bids:
                self.bids.apply(bids)
            if asks:
                self.asks.apply(asks)
        depth = self.depth
        if len(self.bids.keys) > depth or len(self.asks.keys) > depth:
            self.truncate()
            if depth < self._checksum_levels:
                self._parts[0] = self._parts[1] = None

    def update(self, ev: BookUpdate) -> int | None:
        """A delta its sequence rule accepted, in one call: `apply` its levels, take its
        cross sequence and venue time; the book's checksum when the message carries the
        venue's (to compare), else None."""
        self.apply(ev.bids, ev.asks)
        if ev.cross_seq >= 0:
            self.cross_seq = ev.cross_seq
        if ev.ts_ns is not None:
            self.exchange_ts_ns = ev.ts_ns
        if ev.checksum is not None and self.checksum_kind is not None:
            return self.checksum()
        return None

    def checksum(self) -> int:
        """The venue's CRC32 of the book as it is now (`checksum_kind`)."""
        parts = self._parts
        if self.checksum_kind == "kraken":
            ask_text = parts[0]
            if ask_text is None:
                ask_text = parts[0] = kraken_side_text(self.asks)
            bid_text = parts[1]
            if bid_text is None:
                bid_text = parts[1] = kraken_side_text(self.bids)
            return crc32(bid_text, crc32(ask_text))
        if self.checksum_kind == "okx":
            # The sides interleave: the value is kept whole until either side's top changes.
            crc: int | None = parts[0]
            if crc is None or parts[1] is None:
                crc = parts[0] = okx_checksum(self.bids, self.asks)
                parts[1] = True
            return crc
        raise ValueError(f"{self.venue} {self.instrument}: this book has no checksum")

    def truncate(self) -> None:
        self.bids.truncate(self.depth)
        self.asks.truncate(self.depth)

    def is_crossed(self) -> bool:
        bids = self.bids.keys
        asks = self.asks.keys
        return bool(bids) and bool(asks) and -bids[0] >= asks[0]

    def top(self, n: int) -> BookTop:
        """The best `n` levels per side as a BookTop (levels only when LIVE)."""
        if self.state is not BookState.LIVE:
            return BookTop(
                self.venue,
                self.instrument,
                self.state.value,
                self.venue_seq,
                self.cross_seq,
                self.exchange_ts_ns,
                self.recv_ts_ns,
                [],
                [],
                [],
                [],
            )
        # Once per applied message: C-level map() and the plain tuple constructor (what
        # BookTop's own __new__ calls) keep this about a quarter cheaper.
        bids = self.bids
        asks = self.asks
        bid_prices = list(map(neg, bids.keys[:n]))
        ask_prices = asks.keys[:n]
        return _new_tuple(
            BookTop,
            (
                self.venue,
                self.instrument,
                "LIVE",
                self.venue_seq,
                self.cross_seq,
                self.exchange_ts_ns,
                self.recv_ts_ns,
                bid_prices,
                list(map(bids.sizes.__getitem__, bid_prices)),
                ask_prices,
                list(map(asks.sizes.__getitem__, ask_prices)),
            ),
        )
