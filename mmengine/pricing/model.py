"""The pricing model (pure functions, run on a pricing worker thread).

v0: consolidate the LIVE, fresh venue tops of one priced instrument into a best bid/ask and
take fair value as their mid. The pricing-model issue replaces this with the full model;
the seam is `price_instrument`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmengine.model import BookTop


@dataclass(frozen=True)
class SourceSpec:
    """One venue book that feeds a priced instrument."""

    venue: str
    instrument: str


@dataclass(frozen=True)
class InstrumentSpec:
    """A priced instrument and the venue books that feed it."""

    name: str
    sources: tuple[SourceSpec, ...]
    max_age_ms: float = 5000.0


@dataclass(slots=True)
class Consolidated:
    """The consolidated top of one priced instrument, before it becomes a Price."""

    best_bid: float
    best_bid_size: float
    best_ask: float
    best_ask_size: float
    fair_value: float
    venues: list[str]


def consolidate(tops: list[BookTop], now_ns: int, max_age_ns: int) -> Consolidated | None:
    """Best bid/ask over the usable tops; None when no venue is usable.

    A top is usable when LIVE, not older than `max_age_ns` by local receive time and has
    both sides. Sizes at the same best price are summed across venues.
    """
    best_bid = 0.0
    best_bid_size = 0.0
    best_ask = float("inf")
    best_ask_size = 0.0
    venues: list[str] = []
    for top in tops:
        if top.state != "LIVE" or now_ns - top.recv_ts_ns > max_age_ns:
            continue
        if not top.bid_prices or not top.ask_prices:
            continue
        venues.append(top.venue)
        bid = top.bid_prices[0]
        if bid > best_bid:
            best_bid, best_bid_size = bid, top.bid_sizes[0]
        elif bid == best_bid:
            best_bid_size += top.bid_sizes[0]
        ask = top.ask_prices[0]
        if ask < best_ask:
            best_ask, best_ask_size = ask, top.ask_sizes[0]
        elif ask == best_ask:
            best_ask_size += top.ask_sizes[0]
    if not venues:
        return None
    return Consolidated(
        best_bid, best_bid_size, best_ask, best_ask_size, (best_bid + best_ask) / 2, venues
    )
