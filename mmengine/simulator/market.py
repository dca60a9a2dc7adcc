"""A synthetic, venue-neutral L2 book that random-walks (runs on the simulator's generator thread).

Prices live on an integer tick grid and sizes on an integer lot grid, so the book is exact and
two runs with the same seed are identical; `Decimal` appears only at the edge, in the levels a
step reports and in `levels()`. Each `step()` is one market event (a sweep that moves the
price, size changes near the top, a new or cancelled level) and returns the levels it changed
as `Change(side, price, size)`, size 0 meaning "delete". A venue protocol turns those into its
own wire frames; nothing here knows any venue.

Invariants after every step (the unit tests check them): the book is never crossed, each side
holds between `min_levels` and `max_levels` levels, every present level has a size > 0, and
applying the reported changes to a copy of the previous book gives exactly the new book.

Who calls it: the generator thread steps it while holding the simulator's book lock; an HTTP
thread reads `levels()` under the same lock for a REST snapshot. The class itself takes no
lock.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, NamedTuple

Side = Literal["bid", "ask"]
BID: Side = "bid"
ASK: Side = "ask"


class Change(NamedTuple):
    """One changed level: the new absolute size at `price`; size 0 deletes the level."""

    side: Side
    price: Decimal
    size: Decimal


@dataclass(frozen=True, slots=True)
class MarketParams:
    """Where an instrument's book starts and the grids it lives on."""

    mid: Decimal  # starting mid price
    tick: Decimal  # price grid
    lot: Decimal  # size grid
    typical_size: Decimal  # median size of a level


def default_params(instrument: str) -> MarketParams:
    """Plausible grids by base currency (`BTC-USDT` -> BTC); the quote does not matter."""
    base = instrument.split("-", 1)[0].upper()
    if base in ("BTC", "XBT"):
        return MarketParams(Decimal("65000"), Decimal("0.01"), Decimal("0.00001"), Decimal("0.5"))
    if base == "ETH":
        return MarketParams(Decimal("3000"), Decimal("0.01"), Decimal("0.0001"), Decimal("5"))
    return MarketParams(Decimal("100"), Decimal("0.001"), Decimal("0.01"), Decimal("100"))


# Event mix of one step (cumulative probabilities). Moves are rarer than size changes, as on a
# real book where most messages touch sizes near the top.
_P_MOVE = 0.25
_P_RESIZE = 0.70
_P_INSERT = 0.85
# Depth bias: levels are picked at index ~ Exp(mean 4) from the top, like real book activity.
_TOP_BIAS = 0.25


class Market:
    """One instrument's random-walk book.

    `seed` feeds a private `random.Random`: the same seed (an int or a string such as
    "7:BTC-USDT") gives the same sequence of steps on every run and platform.
    """

    def __init__(
        self,
        instrument: str,
        seed: int | str | None = None,
        *,
        params: MarketParams | None = None,
        min_levels: int = 20,
        max_levels: int = 40,
    ) -> None:
        if min_levels < 1 or max_levels < min_levels + 5:
            raise ValueError(
                f"need 1 <= min_levels and max_levels >= min_levels + 5, "
                f"were {min_levels} and {max_levels}"
            )
        self.instrument = instrument
        self.params = params or default_params(instrument)
        self.min_levels = min_levels
        self.max_levels = max_levels
        self._rng = random.Random(seed)
        self._tick = self.params.tick
        self._lot = self.params.lot
        self._typical_lots = max(1, int(self.params.typical_size / self.params.lot))
        self._base_mid = int(self.params.mid / self.params.tick)
        # Levels are placed within this many ticks of the best (three ticks per level).
        self._window = 3 * min_levels
        # Price (ticks) -> size (lots), plus the sorted prices of each side (ascending for
        # both: the best bid is the last element, the best ask the first).
        self._size: dict[Side, dict[int, int]] = {BID: {}, ASK: {}}
        self._prices: dict[Side, list[int]] = {BID: [], ASK: []}
        # The sizes, as of the start of the current step, of levels the step has touched.
        self._before: dict[tuple[Side, int], int] = {}
        self.steps = 0
        self._build()

    # --- reading ---------------------------------------------------------------------------

    def best(self, side: Side) -> tuple[Decimal, Decimal] | None:
        """The best level of one side as (price, size), or None if the side is empty."""
        prices = self._prices[side]
        if not prices:
            return None
        px = prices[-1] if side == BID else prices[0]
        return self._tick * px, self._lot * self._size[side][px]

    def levels(self, side: Side, limit: int | None = None) -> list[tuple[Decimal, Decimal]]:
        """(price, size) levels, best first: bids descending, asks ascending."""
        prices = self._prices[side]
        ordered = reversed(prices) if side == BID else iter(prices)
        sizes = self._size[side]
        out: list[tuple[Decimal, Decimal]] = []
        for px in ordered:
            if limit is not None and len(out) >= limit:
                break
            out.append((self._tick * px, self._lot * sizes[px]))
        return out

    def depth(self, side: Side) -> int:
        """Number of levels on one side."""
        return len(self._prices[side])

    # --- stepping ---------------------------------------------------------------------------

    def step(self) -> list[Change]:
        """One market event; returns the changed levels (never empty, no price twice)."""
        while True:
            self._before = {}
            r = self._rng.random()
            if r < _P_MOVE:
                self._move()
            elif r < _P_RESIZE:
                for _ in range(self._rng.randint(1, 3)):
                    self._resize(self._side())
            elif r < _P_INSERT:
                self._insert(self._side())
            else:
                self._cancel(self._side())
            for side in (BID, ASK):
                self._trim(side)
                self._refill(side)
            changes = self._changes()
            if changes:  # an event can undo itself (add then trim the same level): try again
                self.steps += 1
                return changes

    def _changes(self) -> list[Change]:
        # Report a level only if it differs from the start of the step: a level added and
        # removed within one step is not news, and a delete of it would be noise.
        out: list[Change] = []
        for (side, px), old in self._before.items():
            new = self._size[side].get(px, 0)
            if new != old:
                out.append(Change(side, self._tick * px, self._lot * new))
        # Bids best-first, then asks best-first: the order real venues tend to use.
        out.sort(key=lambda c: (c.side != BID, -c.price if c.side == BID else c.price))
        return out

    def _set(self, side: Side, px: int, lots: int) -> None:
        sizes = self._size[side]
        old = sizes.get(px, 0)
        self._before.setdefault((side, px), old)
        prices = self._prices[side]
        if lots == 0:
            if old:
                del sizes[px]
                del prices[bisect_left(prices, px)]
            return
        if not old:
            insort(prices, px)
        sizes[px] = lots

    def _side(self) -> Side:
        return BID if self._rng.random() < 0.5 else ASK

    def _draw_lots(self) -> int:
        # Log-normal sizes: mostly near the typical size, now and then a large one.
        return max(1, round(self._rng.lognormvariate(0.0, 0.8) * self._typical_lots))

    def _index_from_top(self, side: Side) -> int:
        n = len(self._prices[side])
        i = min(int(self._rng.expovariate(_TOP_BIAS)), n - 1)
        return n - 1 - i if side == BID else i

    def _build(self) -> None:
        spread = self._rng.randint(1, 4)
        best_bid = self._base_mid - spread // 2 - 1
        best_ask = best_bid + spread
        start = (self.min_levels + self.max_levels) // 2
        px = best_bid
        for _ in range(start):
            self._set(BID, px, self._draw_lots())
            px -= self._rng.randint(1, 3)
        px = best_ask
        for _ in range(start):
            self._set(ASK, px, self._draw_lots())
            px += self._rng.randint(1, 3)

    def _move(self) -> None:
        """An aggressive order sweeps 1-3 ticks of one side; the other side follows it."""
        bids, asks = self._prices[BID], self._prices[ASK]
        mid = (bids[-1] + asks[0]) / 2
        # A gentle pull back towards the starting price keeps a long demo run plausible
        # (within about 1 %) without making the walk visibly mean-reverting.
        pull = max(-0.2, min(0.2, (mid - self._base_mid) / (self._base_mid * 0.01) * 0.2))
        up = self._rng.random() < 0.5 - pull
        n = self._rng.choice((1, 1, 1, 2, 2, 3))
        if up:
            limit = asks[0] + n
            while asks and asks[0] < limit:
                self._set(ASK, asks[0], 0)
            self._refill(ASK)
            # The bid follows at least n ticks and closes the spread to 1-2 ticks again.
            target = max(bids[-1] + n, asks[0] - self._rng.choice((1, 1, 2)))
            target = min(target, asks[0] - 1)
            if target > bids[-1]:
                self._set(BID, target, self._draw_lots())
        else:
            limit = bids[-1] - n
            while bids and bids[-1] > limit:
                self._set(BID, bids[-1], 0)
            self._refill(BID)
            target = min(asks[0] - n, bids[-1] + self._rng.choice((1, 1, 2)))
            target = max(target, bids[-1] + 1)
            if target < asks[0]:
                self._set(ASK, target, self._draw_lots())

    def _resize(self, side: Side) -> None:
        px = self._prices[side][self._index_from_top(side)]
        old = self._size[side][px]
        new = self._draw_lots()
        self._set(side, px, new if new != old else old + 1)

    def _insert(self, side: Side) -> None:
        """A new level near the top; half the time inside a spread wider than one tick."""
        bids, asks = self._prices[BID], self._prices[ASK]
        if asks[0] - bids[-1] > 1 and self._rng.random() < 0.5:
            # Liquidity providers close a wide spread: this is the force that keeps cancels
            # at the top from widening the spread forever.
            self._set(side, self._rng.randint(bids[-1] + 1, asks[0] - 1), self._draw_lots())
            return
        offset = 1 + int(self._rng.expovariate(1 / 5))
        px = bids[-1] - offset if side == BID else asks[0] + offset
        if px >= 1 and px not in self._size[side]:
            self._set(side, px, self._draw_lots())

    def _cancel(self, side: Side) -> None:
        if len(self._prices[side]) <= self.min_levels:
            self._resize(side)
            return
        self._set(side, self._prices[side][self._index_from_top(side)], 0)

    def _refill(self, side: Side) -> None:
        """Add levels until the side is `min_levels` deep, at free prices near the top.

        Refilling near the top rather than at the far end keeps the book dense where the
        price moves: a sweep then crosses a tick or two, not a hole left by old cancels.
        """
        prices = self._prices[side]
        sizes = self._size[side]
        while len(prices) < self.min_levels:
            if not prices:
                # An empty side restarts one tick away from the other side's best.
                px = self._prices[ASK][0] - 1 if side == BID else self._prices[BID][-1] + 1
            else:
                best = prices[-1] if side == BID else prices[0]
                px = (
                    best - self._rng.randint(1, self._window)
                    if side == BID
                    else (best + self._rng.randint(1, self._window))
                )
                if px in sizes:
                    continue  # the window has ~3 free ticks per level: a retry is cheap
            if px < 1:
                return  # the grid ends at one tick; never reached from a realistic mid
            self._set(side, px, self._draw_lots())

    def _trim(self, side: Side) -> None:
        """Cancel the farthest levels: beyond `max_levels`, or left far behind by moves."""
        prices = self._prices[side]
        while prices:
            far = prices[0] if side == BID else prices[-1]
            best = prices[-1] if side == BID else prices[0]
            if len(prices) <= self.max_levels and abs(best - far) <= 2 * self._window:
                return
            self._set(side, far, 0)
