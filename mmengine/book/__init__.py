"""Verified L2 books and the shared driver that keeps them (venue thread).

- `book`: the levels of a book (`BookSide`, `L2Book`).
- `levels`: decoders from a venue's JSON level lists to validated float levels.
- `checksum`: the venues' CRC32s over the top levels (Kraken, OKX legacy).
- `integrity`: the venues' rules as small objects (sequences, snapshots, checksums).
- `events`: what a venue module's `parse` yields.
- `sync`: `BookDriver`, which applies those events to a connection's books.

The per-level work (`levels` decoders, `BookSide.load*`/`apply*`, `checksum`) is the seam a
compiled core replaces: the driver calls it once per frame side.
"""

from mmengine.book.book import BookSide, L2Book

__all__ = ["BookSide", "L2Book"]
