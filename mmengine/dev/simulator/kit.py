"""A venue's wire format with any levels, for the conformance suite (the caller's thread).

Each simulator module gives a `WireKit` for its protocol (its `SimProtocol` class names it
in `kit`): it writes the venue's real frame shapes for books a test chooses, with the
sequence numbers and checksums that follow on, so the suite (`tests/conformance/`) can put a
fresh connection's books LIVE, then send one update (or a poisoned one) and check the result
against the kit's own plain books. Levels are (price, size) wire values, normally decimal
strings; an update's size "0" deletes. Values that are not decimal strings of a finite
number (poison: "NaN", None, -1...) are written as given and never enter the kit's books.
Like the simulators, kits are written from the protocol notes, not from the client.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

Level = tuple[Any, Any]
Part = tuple[str, list[Level], list[Level]]  # (instrument, bids, asks)
Floats = list[tuple[float, float]]
BID = "bids"
ASK = "asks"


def number(value: Any) -> float | None:
    """The finite float a wire value stands for, or None (poison, or a deletion's 0 price)."""
    if not isinstance(value, str):
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def usable(level: Level) -> bool:
    price = number(level[0])
    size = number(level[1])
    return price is not None and size is not None and price > 0 and size >= 0


class WireKit:
    """Book messages of one venue, and the plain books they describe."""

    protocol: ClassVar[str]
    instruments: ClassVar[tuple[str, str]]  # two instruments the venue lists
    depth: ClassVar[int] = 10  # the depth to configure (and the kit's books truncate to)
    truncates: ClassVar[bool] = True  # False: the venue sends the whole book (Coinbase)
    multi_instrument: ClassVar[bool] = False  # one frame can carry several instruments
    numbers: ClassVar[bool] = False  # levels go out as JSON numbers (Kraken v2), not strings

    def __init__(self) -> None:
        # instrument -> side -> price -> (price string, size string): the latest strings
        self.books: dict[str, dict[str, dict[float, tuple[str, str]]]] = {}

    # --- what a venue gives --------------------------------------------------------------

    def connect_frames(self) -> list[str]:
        """Frames a new connection gets before any book (Kraken v2's instrument data)."""
        return []

    def rest(self) -> dict[str, str]:
        """REST answers, by a part of the URL (Binance's depth snapshots)."""
        return {}

    def snapshot(self, instrument: str, bids: list[Level], asks: list[Level]) -> list[str]:
        """Frames that take the instrument's book LIVE holding these levels (best first)."""
        raise NotImplementedError

    def update(self, parts: list[Part]) -> str:
        """One frame carrying each part's levels in order. Venues whose frames hold one
        instrument take parts of one instrument (one side each, or both)."""
        raise NotImplementedError

    # --- the kit's plain books ------------------------------------------------------------

    def load(self, instrument: str, bids: list[Level], asks: list[Level]) -> None:
        self.books[instrument] = {BID: {}, ASK: {}}
        self.apply(instrument, bids, asks)

    def apply(self, instrument: str, bids: list[Level], asks: list[Level]) -> None:
        book = self.books[instrument]
        for side, levels in ((BID, bids), (ASK, asks)):
            for p, q in levels:
                if not usable((p, q)):
                    continue
                if number(q) == 0:
                    # ignores below: usable() above: number(p) is a Decimal key
                    book[side].pop(number(p), None)  # type: ignore[arg-type]
                else:
                    book[side][number(p)] = (p, q)  # type: ignore[index]
            if self.truncates:
                for price in self.prices(instrument, side)[self.depth :]:
                    del book[side][price]

    def prices(self, instrument: str, side: str) -> list[float]:
        """Best first."""
        return sorted(self.books[instrument][side], reverse=side == BID)

    def top(self, instrument: str, side: str, n: int) -> list[tuple[str, str]]:
        """The strings of the best `n` levels."""
        levels = self.books[instrument][side]
        return [levels[p] for p in self.prices(instrument, side)[:n]]

    def levels(
        self, instrument: str
    ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The book as floats, best first: what the engine's book must hold."""
        out = []
        for side in (BID, ASK):
            levels = self.books[instrument][side]
            out.append([(p, float(levels[p][1])) for p in self.prices(instrument, side)])
        return out[0], out[1]
