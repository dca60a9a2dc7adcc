"""The venues' CRC32 book checksums over the top levels of a book (venue thread).

Both are computed from the strings the book keeps per level (`BookSide.wire`), never from
floats: the venues checksum their own decimal strings. This is the pure-Python reference;
the compiled core (`mmengine.book._core`) computes the same CRC32s in C.

- Kraken (v1 and v2, one function; venue-protocols 3.4): CRC32, unsigned, of the top 10 asks
  (best first) then the top 10 bids, each level `price + qty` in checksum form (`.` removed,
  leading zeros stripped). v1 keeps the wire strings in that form, v2 the numbers written
  with the pair's precisions (`mmengine.book.levels`).
- OKX legacy (4.4): CRC32 of the top 25 bids and asks interleaved `bid1:ask1:bid2:ask2...`
  as `price:size`, a shorter side simply ending, as a signed int32.
"""

from __future__ import annotations

from itertools import chain
from operator import neg
from typing import TYPE_CHECKING
from zlib import crc32

if TYPE_CHECKING:
    from mmengine.book.book import BookSide

KRAKEN_LEVELS = 10
OKX_LEVELS = 25
_flat = chain.from_iterable


def kraken_side_text(side: BookSide) -> bytes:
    """The checksum text of a side's top 10 levels (asks ascending, bids descending)."""
    wire = side.wire
    assert wire is not None, "a checksummed side keeps its strings"
    keys = side.keys[:KRAKEN_LEVELS]
    prices = map(neg, keys) if side.is_bid else keys
    return "".join(map("".join, map(wire.__getitem__, prices))).encode()


def kraken_checksum(asks: BookSide, bids: BookSide) -> int:
    """Kraken's CRC32 of a book (asks first, then bids)."""
    return crc32(kraken_side_text(bids), crc32(kraken_side_text(asks)))


def okx_checksum(bids: BookSide, asks: BookSide) -> int:
    """OKX's legacy CRC32 of a book, signed (C-level map/zip/chain: it runs on every update
    that reaches the top 25)."""
    bid_wire = bids.wire
    ask_wire = asks.wire
    assert bid_wire is not None and ask_wire is not None
    b = list(map(bid_wire.__getitem__, map(neg, bids.keys[:OKX_LEVELS])))
    a = list(map(ask_wire.__getitem__, asks.keys[:OKX_LEVELS]))
    n = min(len(b), len(a))
    pairs = _flat(_flat(zip(b[:n], a[:n], strict=True)))
    text = ":".join(chain(pairs, _flat(b[n:] or a[n:])))
    value = crc32(text.encode())
    return value - 0x1_0000_0000 if value >= 0x8000_0000 else value
