"""Domain types shared by every stage of the data path (no thread of its own).

`BookTop` travels from a venue thread to the pricing worker that owns the instrument;
`Price` leaves a pricing worker for IPC subscribers and the sinks. Times are integer
nanoseconds since the Unix epoch; prices and sizes are floats (the venues' decimal strings
are kept inside the book only where a checksum needs them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

INSTRUMENT_RE = re.compile(r"^[A-Z0-9]+-[A-Z0-9]+(-(PERP|\d{8}))?$")


class BookState(StrEnum):
    """Lifecycle of one venue book. Only a LIVE book's levels ever reach pricing."""

    SYNCING = "SYNCING"  # waiting for the first snapshot after (re)connect
    LIVE = "LIVE"  # verified against the venue's integrity rule
    STALE = "STALE"  # no update within the staleness limit; levels kept, not used
    RESYNCING = "RESYNCING"  # gap or checksum mismatch: dropped, waiting for a new snapshot


class BookTop(NamedTuple):
    """Top N levels of one venue book after an applied update.

    A BookTop whose state is not LIVE carries no levels: it tells the pricing worker to stop
    using that venue's previous top for the instrument.
    """

    venue: str
    instrument: str
    state: str
    # The venue's update id / sequence of the last applied message; for a venue without ids
    # (Kraken) the checksum the book matched; -1 if none. Pricing copies it into VenueUsed.
    venue_seq: int
    cross_seq: int  # Bybit's cross sequence; -1 elsewhere
    exchange_ts_ns: int  # venue event time of the last applied message; 0 if not sent
    recv_ts_ns: int  # local receive time of the frame that produced this top
    bid_prices: list[float]  # best first
    bid_sizes: list[float]
    ask_prices: list[float]  # best first
    ask_sizes: list[float]


@dataclass(slots=True)
class VenueUsed:
    """A venue book that contributed to a Price."""

    venue: str
    instrument: str
    mid: float  # in the priced instrument's quote currency
    weight: float  # normalised: the weights of one Price sum to 1
    fx_rate: float
    # The BookTop this venue contributed: its venue_seq (the id the venue's integrity rule
    # verified) and recv_ts_ns. Together they name one book state, even where the venue's
    # sequence restarts on each connection (Coinbase).
    venue_seq: int = -1
    recv_ts_ns: int = 0


@dataclass(slots=True)
class VenueExcluded:
    """A venue book left out of a Price, and why."""

    venue: str
    instrument: str
    reason: str  # not_live | stale | crossed | no_fx | outlier


@dataclass(slots=True)
class Price:
    """One pricing decision for one instrument; `(instrument, epoch, seq)` identifies it."""

    instrument: str
    epoch: int
    seq: int
    fair_value: float
    best_bid: float
    best_bid_size: float
    best_ask: float
    best_ask_size: float
    venues: list[str] = field(default_factory=list)
    exchange_ts_ns: int = 0
    recv_ts_ns: int = 0
    priced_ts_ns: int = 0
    method: str = "mid"
    volatility_bps: float = 0.0
    half_spread_bps: float = 0.0
    position: float = 0.0
    skew_bps: float = 0.0
    halted: bool = False
    halt_reason: str = ""
    cross_venue_crossed: bool = False
    bids: list[tuple[float, float]] = field(default_factory=list)  # ladder, best first
    asks: list[tuple[float, float]] = field(default_factory=list)
    venues_used: list[VenueUsed] = field(default_factory=list)
    venues_excluded: list[VenueExcluded] = field(default_factory=list)
