"""A venue's usual book frame, declared (venue thread): which JSON keys hold the book's name,
its levels, sequence, checksum and time. The compiled core's scanner (`_core.FrameScanner`)
reads a frame of that shape straight from its text into levels, with no Python object per
level; a frame it does not recognise at once (any other shape, a JSON escape, a duplicated
key, a number it does not read exactly) takes the venue's own parse, unchanged. A venue
module declares; the scanning is shared code here and in `_core.pyx`.

Route names (`books`, `symbols`, `formats`, `channel`) are attributes of the venue object,
read when its first frame is scanned (after the venue's `__init__`): `books` and `channel`
are copied then (a venue's names for its books are fixed for its life); `symbols` and
`formats` are read in place, so a Kraken v2 pair's precisions learnt later are seen.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameShape:
    """The usual book frame: `layout` "array" (Kraken v1: `[id, {body}, channel, name]`) or
    "object" (`{..., kind, entry: {...}}`, Bybit and Kraken v2; Binance futures' combined
    stream `{"stream": .., "data": {"e": "depthUpdate", ...}}`, its kind in the entry); its
    levels "strings" (`[["price", "size", ...], ...]`) or "numbers" (`[{"price": 1.5,
    "qty": 2}, ...]`, written with the pair's precisions for the checksum)."""

    layout: str
    levels: str
    bids: str
    asks: str
    books: str  # venue attribute: {the frame's name for a book: our instrument}
    route: str  # the key whose string names the book (array layout: its last element)
    route_in_entry: bool = False  # the route key is in the entry, not the top object
    symbols: str | None = None  # venue attribute {instrument: wire symbol} that...
    symbol: str | None = None  # ...this entry key must equal (Bybit `s`)
    formats: str | None = None  # venue attribute {wire symbol: (price dp, size dp)}
    price: str = "price"  # "numbers": the keys of a level
    size: str = "qty"
    kind: str = "type"  # object layout: the key saying snapshot or delta, and its values
    snapshot: str | None = "snapshot"  # (None: this shape is never a snapshot)
    delta: str = "delta"
    kind_in_entry: bool = False  # the kind key is in the entry, not the top object
    entry: str = "data"  # the object holding the levels...
    entry_list: bool = False  # ...or a list of exactly one such object
    sides_required: bool = True  # both level keys present (else a missing side is empty)
    last_id: str | None = None  # entry: an integer update id (`u`)
    first_id: str | None = None  # entry: the integer first update id (Binance `U`)...
    prev_id: str | None = None  # ...and the previous message's last (Binance futures `pu`)
    cross_seq: str | None = None  # entry: an optional integer cross sequence (`seq`)
    time_ms: tuple[str, ...] = ()  # top object: integer ms times, the first present wins
    entry_time_ms: str | None = None  # entry: a required integer ms time (Binance `E`)
    timestamp: str | None = None  # entry: an RFC 3339 time (Kraken v2)
    checksum: str | None = None  # entry: the integer checksum (array layout: digit string)
    channel: str | None = None  # array layout: venue attribute the channel must equal
    snapshot_bids: str | None = None  # array layout: a snapshot's level keys (`bs`, `as`)
    snapshot_asks: str | None = None
