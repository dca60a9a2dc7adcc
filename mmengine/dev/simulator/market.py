"""A synthetic, venue-neutral L2 book that follows a shared fair price (runs on the
simulator's generator thread).

Every simulated venue shows the same latent fair price of an instrument (`FairPath`), each
in its own way (`VenueStyle`): a small basis, its own mean-reverting noise, a latency, and
a book shape (spread, level spacing, sizes). So the venues' books agree as real venues do:
their mids differ by a fraction of their spreads, and a consolidated book crosses only
rarely and briefly (when a fast venue has moved and a slow one has not yet). The fair price
is a deterministic function of (seed, instrument, time): simulators in separate processes
(`mmengine simulate`, one per venue) agree without talking to each other.

Prices live on an integer tick grid and sizes on an integer lot grid, so the book is exact,
and two runs with the same seed and the same clock readings are identical; `Decimal`
appears only at the edge, in the levels a step reports and in `levels()`. Each `step()` is
one market event (the book following the fair price, or size changes near the top, a new
or a cancelled level) and returns the levels it changed as `Change(side, price, size)`,
size 0 meaning "delete". A venue protocol turns those into its own wire frames; nothing
here knows any venue.

Invariants after every step (the unit tests check them): the book is never crossed, each side
holds between `min_levels` and `max_levels` levels, every present level has a size > 0, and
applying the reported changes to a copy of the previous book gives exactly the new book.

Who calls it: the generator thread steps it while holding the simulator's book lock; an HTTP
thread reads `levels()` under the same lock for a REST snapshot. The class itself takes no
lock.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from statistics import NormalDist
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
    """Where an instrument's fair price sits and the grids its books live on."""

    mid: Decimal  # the fair price's centre
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


# Quotes that stand for the same dollar: `BTC-USDT`, `BTC-USD` and `BTC-USDC-PERP` follow
# one fair price (each venue's basis is its own).
_DOLLARS = ("USD", "USDT", "USDC")


def fair_key(instrument: str) -> str:
    """The fair price an instrument follows: its base against the dollar (`BTC-USDT-PERP`
    -> `BTC-USD`) or against its quote (`ETH-BTC`)."""
    parts = instrument.upper().split("-")
    base = "BTC" if parts[0] == "XBT" else parts[0]
    quote = parts[1] if len(parts) > 1 else "USD"
    return f"{base}-{'USD' if quote in _DOLLARS else quote}"


_NORMAL = NormalDist()
# Octaves of the fair path: value noise at periods of 0.25 s to 4.5 h. Amplitudes grow as
# the square root of the period, so the path moves like a random walk over seconds to
# hours, and stays within a few percent of its centre over a day.
_PERIODS_S = tuple(0.25 * 4**j for j in range(9))


class FairPath:
    """One instrument's latent fair price, shared by every simulated venue.

    `mid(t)` is a deterministic function of (seed, key, t): a sum of octaves of smooth value
    noise whose values at grid times are hashed from (seed, key, octave, index), so any
    process computes the same path for the same wall-clock time. `vol_bps` is roughly the
    standard deviation of a one-second log return, in basis points.
    """

    def __init__(self, key: str, centre: float, seed: int = 0, vol_bps: float = 0.5) -> None:
        self.key = key
        self.centre = centre
        self.seed = seed
        # Each octave contributes 2 a^2 to the variance of a return longer than its period,
        # and the shorter octaves sum to about 4/3 of the one at the horizon: a^2 = v P / 3.
        var = (vol_bps * 1e-4) ** 2
        self._amplitudes = tuple(math.sqrt(var * p * 0.43) for p in _PERIODS_S)
        self._knots: dict[int, tuple[int, float, float]] = {}  # octave -> (index, v0, v1)

    @classmethod
    def for_instrument(cls, instrument: str, seed: int = 0, vol_bps: float = 0.5) -> FairPath:
        """The path `instrument` follows, centred on its default price."""
        return cls(fair_key(instrument), float(default_params(instrument).mid), seed, vol_bps)

    def _knot(self, octave: int, index: int) -> float:
        digest = hashlib.blake2b(
            f"{self.seed}:{self.key}:{octave}:{index}".encode(), digest_size=8
        ).digest()
        u = (int.from_bytes(digest, "little") + 0.5) / 2**64
        return _NORMAL.inv_cdf(u)

    def log_return(self, t: float) -> float:
        """log(mid(t) / centre)."""
        total = 0.0
        for octave, (period, amplitude) in enumerate(
            zip(_PERIODS_S, self._amplitudes, strict=True)
        ):
            x = t / period
            index = math.floor(x)
            cached = self._knots.get(octave)
            if cached is None or cached[0] != index:
                if cached is not None and cached[0] == index - 1:
                    v0 = cached[2]  # time moves forward: the next segment starts where it ended
                else:
                    v0 = self._knot(octave, index)
                cached = (index, v0, self._knot(octave, index + 1))
                self._knots[octave] = cached
            frac = x - index
            # Smoothstep between the knots: no corner where two segments meet.
            w = frac * frac * (3.0 - 2.0 * frac)
            total += amplitude * (cached[1] + (cached[2] - cached[1]) * w)
        return total

    def mid(self, t: float) -> float:
        """The fair price at Unix time `t`."""
        return self.centre * math.exp(self.log_return(t))


@dataclass(frozen=True, slots=True)
class VenueStyle:
    """How one simulated venue shows the shared fair price."""

    basis_bps: float = 0.0  # a constant offset from the fair price (an outlier: large)
    noise_bps: float = 0.0  # standard deviation of its own mean-reverting deviation
    noise_half_life_s: float = 2.0
    latency_s: float = 0.0  # it shows the fair price this much later
    half_spread_bps: float = 0.6  # its best bid and ask sit this far from its mid
    level_gap_bps: float = 0.1  # mean distance between its levels
    size_mult: float = 1.0  # its level sizes against the instrument's typical size

    @classmethod
    def for_venue(cls, venue: str, shift_bps: float = 0.0) -> VenueStyle:
        """A venue's own style, drawn from its name (the same in every process), with its
        whole market moved `shift_bps` away from the others."""
        rng = random.Random(f"style:{venue}")
        return cls(
            basis_bps=rng.uniform(-0.15, 0.15) + shift_bps,
            noise_bps=rng.uniform(0.06, 0.16),
            noise_half_life_s=rng.uniform(0.2, 0.8),
            latency_s=rng.uniform(0.002, 0.06),
            half_spread_bps=rng.uniform(0.25, 0.6),
            level_gap_bps=rng.uniform(0.06, 0.15),
            size_mult=rng.uniform(0.5, 2.0),
        )

    def shifted(self, shift_bps: float) -> VenueStyle:
        return replace(self, basis_bps=self.basis_bps + shift_bps)


# Event mix of a step that does not follow the fair price (cumulative probabilities): most
# messages on a real book touch sizes near the top.
_P_RESIZE = 0.60
_P_INSERT = 0.80
# Depth bias: levels are picked at index ~ Exp(mean 4) from the top, like real book activity.
_TOP_BIAS = 0.25


class Market:
    """One venue's book of one instrument, following a fair price in the venue's style.

    `seed` feeds a private `random.Random`: the same seed (an int or a string such as
    "7:BTC-USDT") and the same `clock` readings give the same sequence of steps on every run
    and platform. `fair` defaults to the instrument's path with seed 0, `style` to a
    neutral venue, `clock` to the wall clock (what lets separate processes agree).
    """

    def __init__(
        self,
        instrument: str,
        seed: int | str | None = None,
        *,
        params: MarketParams | None = None,
        min_levels: int = 20,
        max_levels: int = 40,
        fair: FairPath | None = None,
        style: VenueStyle | None = None,
        clock: Callable[[], float] = time.time,
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
        self.fair = fair or FairPath(fair_key(instrument), float(self.params.mid))
        self.style = style or VenueStyle()
        self._clock = clock
        self._rng = random.Random(seed)
        self._tick = self.params.tick
        self._lot = self.params.lot
        self._tick_f = float(self.params.tick)
        self._typical_lots = max(
            1, int(self.params.typical_size * Decimal(str(self.style.size_mult)) / self._lot)
        )
        # Level spacing is 1 to 3 units; a unit is half the venue's mean gap, in ticks.
        gap = self.style.level_gap_bps * 1e-4 * float(self.params.mid) / self._tick_f
        self._unit = max(1, round(gap / 2))
        # Levels are placed within this many ticks of the best (three units per level).
        self._window = 3 * min_levels * self._unit
        self._noise = 0.0  # the venue's own deviation, bps
        self._noise_t: float | None = None
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

    def quote(self, now: float) -> tuple[int, int]:
        """(best bid, best ask) in ticks where this venue shows the fair price at `now`:
        the path as of `now - latency`, moved by the venue's basis and its own noise, with
        the venue's half-spread either side."""
        style = self.style
        if self._noise_t is None:
            self._noise_t = now
        elif style.noise_bps and now > self._noise_t:
            # Ornstein-Uhlenbeck, exact over any interval: mean 0, stdev `noise_bps`.
            decay = 0.5 ** ((now - self._noise_t) / style.noise_half_life_s)
            shock = self._rng.gauss(0.0, 1.0) * math.sqrt(1.0 - decay * decay)
            self._noise = self._noise * decay + style.noise_bps * shock
            self._noise_t = now
        mid = self.fair.mid(now - style.latency_s) * (1 + (style.basis_bps + self._noise) / 1e4)
        centre = mid / self._tick_f
        half = centre * style.half_spread_bps / 1e4
        bid = max(1, math.floor(centre - half))
        ask = max(bid + 1, math.ceil(centre + half))
        return bid, ask

    # --- stepping ---------------------------------------------------------------------------

    def step(self) -> list[Change]:
        """One market event; returns the changed levels (never empty, no price twice)."""
        while True:
            self._before = {}
            bid, ask = self.quote(self._clock())
            bids, asks = self._prices[BID], self._prices[ASK]
            if abs(bids[-1] - bid) > self._unit or abs(asks[0] - ask) > self._unit:
                self._follow(bid, ask)
            else:
                r = self._rng.random()
                if r < _P_RESIZE:
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

    def _gap(self) -> int:
        return self._rng.randint(1, 3) * self._unit

    def _index_from_top(self, side: Side) -> int:
        n = len(self._prices[side])
        i = min(int(self._rng.expovariate(_TOP_BIAS)), n - 1)
        return n - 1 - i if side == BID else i

    def _build(self) -> None:
        bid, ask = self.quote(self._clock())
        start = (self.min_levels + self.max_levels) // 2
        px = bid
        for _ in range(start):
            if px < 1:
                break
            self._set(BID, px, self._draw_lots())
            px -= self._gap()
        px = ask
        for _ in range(start):
            self._set(ASK, px, self._draw_lots())
            px += self._gap()
        self._before = {}

    def _follow(self, bid: int, ask: int) -> None:
        """The book moves to where the venue shows the fair price now: orders on the wrong
        side of the new best prices are taken or pulled, the new best levels are quoted,
        and the levels behind them fill in."""
        bids, asks = self._prices[BID], self._prices[ASK]
        while bids and bids[-1] > bid:
            self._set(BID, bids[-1], 0)
        while asks and asks[0] < ask:
            self._set(ASK, asks[0], 0)
        for side, best in ((BID, bid), (ASK, ask)):
            if best not in self._size[side]:
                self._set(side, best, self._draw_lots())
            self._fill_behind(side)

    def _fill_behind(self, side: Side) -> None:
        """Levels between a new best and the rest of the side (at most a few per step)."""
        prices = self._prices[side]
        if side == BID:
            best = prices[-1]
            nxt = prices[-2] if len(prices) > 1 else best - self._window
            px = best - self._gap()
            for _ in range(6):
                if px <= nxt or px < 1:
                    return
                self._set(BID, px, self._draw_lots())
                px -= self._gap()
        else:
            best = prices[0]
            nxt = prices[1] if len(prices) > 1 else best + self._window
            px = best + self._gap()
            for _ in range(6):
                if px >= nxt:
                    return
                self._set(ASK, px, self._draw_lots())
                px += self._gap()

    def _resize(self, side: Side) -> None:
        px = self._prices[side][self._index_from_top(side)]
        old = self._size[side][px]
        new = self._draw_lots()
        self._set(side, px, new if new != old else old + 1)

    def _insert(self, side: Side) -> None:
        """A new level behind the best, never inside the spread (the venue's quoted spread
        is its style; the next follow restores its best prices)."""
        bids, asks = self._prices[BID], self._prices[ASK]
        offset = (1 + int(self._rng.expovariate(1 / 5))) * self._unit
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
        price moves: a move then crosses a level or two, not a hole left by old cancels.
        """
        prices = self._prices[side]
        sizes = self._size[side]
        while len(prices) < self.min_levels:
            best = prices[-1] if side == BID else prices[0]
            reach = self._rng.randint(1, self._window)
            px = best - reach if side == BID else best + reach
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
