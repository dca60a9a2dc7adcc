"""The seam between a venue's protocol and the shared connection (runs on the venue thread).

A venue module subclasses `Venue` and fills in its protocol: where to connect, what to send
on connect, how to turn a frame into book changes and which integrity rule to check. The
shared code around it (`transport.VenueConnection` live, `replay.CaptureSession` offline) owns
the thread, socket, pings, backoff and staleness, and talks to the venue only through the
methods below. Book mechanics (level updates, deletes, truncation) are `mmengine.book`'s.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import orjson

from mmengine.book import L2Book
from mmengine.errors import FrameError, IntegrityError
from mmengine.logs import RepeatLimiter
from mmengine.model import BookState, BookTop

log = logging.getLogger("mmengine.venue")

INF = float("inf")


@dataclass(frozen=True)
class VenueSpec:
    """What the engine asks of one venue connection."""

    name: str
    protocol: str
    instruments: tuple[str, ...]
    depth: int = 100
    url: str | None = None
    rest_url: str | None = None
    top_levels: int = 5
    audit: bool = False
    stale_after_s: float = 10.0
    ca_file: str | None = None  # CAs trusted for wss:// and https:// (None: the system's)


class Session(Protocol):
    """What a venue may ask of the connection that drives it."""

    def send(self, text: str) -> None:
        """Send a text frame on the venue connection."""

    def http_get(self, url: str) -> str:
        """GET a REST resource; raises TransportError on failure."""

    def publish(self, top: BookTop) -> None:
        """Hand a book's top (or its state change) to pricing."""

    def reconnect(self, reason: str) -> None:
        """Ask for the connection to be dropped and re-established."""


@dataclass(slots=True)
class InstrumentStats:
    """Counters for one book; the replay scorecard and the shutdown summary read them."""

    messages: int = 0
    snapshots: int = 0
    updates: int = 0
    dropped_stale: int = 0  # older than the book: dropped, as the venue's rule says
    checksums_checked: int = 0
    checksums_failed: int = 0
    sequence_checked: int = 0
    sequence_gaps: int = 0
    resyncs: int = 0
    crossed: int = 0
    skipped: int = 0
    audit_agree: int = 0
    audit_disagree: int = 0
    # audit by arrival (no shared id with the book): a loose count, never a resync
    audit_loose_agree: int = 0
    audit_loose_disagree: int = 0


@dataclass(slots=True)
class VenueStats:
    """Counters for one venue connection."""

    frames: int = 0
    book_frames: int = 0
    reconnects: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    resyncs: Counter[str] = field(default_factory=Counter)


def level(price: str, size: str) -> tuple[float, float]:
    """A venue level as floats; rejects what no real book holds (NaN, inf, negatives)."""
    p = float(price)
    q = float(size)
    if not (0.0 < p < INF and 0.0 <= q < INF):
        raise FrameError("bad_level", f"price {price!r} size {size!r}")
    return p, q


def seconds_to_ns(value: str | float) -> int:
    """A venue timestamp in seconds (`"1618678133.365913"`) as ns; FrameError if not finite."""
    seconds = float(value)
    if not 0.0 <= seconds < 1e11:
        raise FrameError("bad_timestamp", repr(value))
    return int(seconds * 1e9)


def levels(rows: list[list[str]]) -> list[tuple[float, float]]:
    """Many `[price, size, ...]` rows as float pairs, with `level`'s rule, in one call."""
    out = [(float(r[0]), float(r[1])) for r in rows]
    for p, q in out:
        if not (0.0 < p < INF and 0.0 <= q < INF):
            raise FrameError("bad_level", f"price {p!r} size {q!r}")
    return out


class Venue:
    """Base of every venue protocol. Subclasses set the class facts and the seam methods."""

    protocol: ClassVar[str]
    default_url: ClassVar[str]
    default_rest_url: ClassVar[str | None] = None
    keep_wire: ClassVar[bool] = False  # keep the venue's level strings for checksums
    keepalive_interval_s: ClassVar[float | None] = None  # send keepalive_frame() this often
    silence_timeout_s: ClassVar[float] = 60.0  # no frame at all for this long: reconnect
    max_frame_bytes: ClassVar[int] = 16 * 1024 * 1024
    depths: ClassVar[tuple[int, ...] | None] = None  # book depths the venue offers; None: any

    def __init__(self, spec: VenueSpec, session: Session) -> None:
        self.spec = spec
        self.name = spec.name
        self.session = session
        self.books: dict[str, L2Book] = {
            inst: L2Book(spec.name, inst, spec.depth, self.keep_wire) for inst in spec.instruments
        }
        self.stats: dict[str, InstrumentStats] = {inst: InstrumentStats() for inst in self.books}
        self.venue_stats = VenueStats()
        self._log_limiter = RepeatLimiter()

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        """(instruments, depth) a recording subscribed to, read from its `send` frames in our
        normalized names; None when the frames do not say (replay then uses the header)."""
        return None

    def venue_symbol(self, instrument: str) -> str:
        """The venue's own name for one of our instruments (for reports)."""
        return instrument

    @classmethod
    def instrument_problem(cls, instrument: str) -> str | None:
        """Why the venue cannot serve `instrument` (config validation), or None."""
        return None

    # --- the seam: each venue module implements these -------------------------------------

    def connect_url(self) -> str:
        """The WebSocket URL to open (with streams embedded, where the venue does that)."""
        raise NotImplementedError

    def subscribe_frames(self) -> list[str]:
        """Frames to send right after connecting."""
        return []

    def on_frame(self, frame: str, recv_ns: int) -> None:
        """Parse one frame and apply it; raise FrameError for a frame that cannot be used."""
        raise NotImplementedError

    def keepalive_frame(self) -> str | None:
        """An application-level ping, sent every `keepalive_interval_s`."""
        return None

    def on_tick(self, now_ns: int) -> None:
        """Called about four times a second between frames (retries, timers). Venues that
        override it call this too: it runs the per-book staleness timer."""
        self.check_staleness(now_ns)

    def on_connected(self) -> None:
        """A new connection is open: every book starts from scratch."""
        for book in self.books.values():
            book.clear()
            self.set_state(book, BookState.SYNCING, "connected")

    def on_disconnected(self) -> None:
        """The connection is gone: no book on it can be trusted until resynced."""
        for book in self.books.values():
            book.clear()
            self.set_state(book, BookState.SYNCING, "disconnected")

    def request_resync(self, book: L2Book) -> None:
        """Start getting a fresh snapshot for `book` (resubscribe or REST)."""
        raise NotImplementedError

    # --- entry point for the shared connection ---------------------------------------------

    def receive(self, frame: str, recv_ns: int) -> None:
        """Feed one frame through the venue, mapping its failures once, here:
        an unusable frame is a counted skip, a failed integrity rule resyncs that one book.
        Anything else is a bug and propagates (the connection logs it and reconnects)."""
        self.venue_stats.frames += 1
        if len(frame) > self.max_frame_bytes:
            self.skip("frame_too_large", f"{len(frame)} characters")
            return
        try:
            self.on_frame(frame, recv_ns)
        except FrameError as exc:
            self.skip(exc.kind, exc.detail)
        except IntegrityError as exc:
            book = self.books.get(exc.instrument)
            if book is not None:
                self.resync(book, exc.reason)
        except orjson.JSONDecodeError as exc:
            self.skip("bad_json", str(exc))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            # Venue modules parse a whole message before touching a book, so a malformed
            # frame fails here with every book unchanged.
            self.skip("malformed", f"{type(exc).__name__}: {exc}")

    # --- shared helpers for venue modules -------------------------------------------------

    def set_state(self, book: L2Book, state: BookState, reason: str) -> None:
        """Change a book's state; logs the change and tells pricing when it leaves LIVE."""
        if book.state is state:
            return
        was_live = book.state is BookState.LIVE
        book.state = state
        log.info(
            "%s %s %s (%s)",
            self.name,
            book.instrument,
            state.value,
            reason,
            extra={
                "venue": self.name,
                "instrument": book.instrument,
                "event": "book_state",
                "state": state.value,
                "reason": reason,
            },
        )
        if was_live:
            # Stamped with the time of the change, so a reader can see when the book left.
            book.recv_ts_ns = time.time_ns()
            self.session.publish(book.top(0))

    def go_live(self, book: L2Book, recv_ns: int) -> None:
        """The book is verified: mark it LIVE and publish its top."""
        if book.is_crossed():
            self.stats[book.instrument].crossed += 1
            self.resync(book, "crossed")
            return
        book.recv_ts_ns = recv_ns
        self.set_state(book, BookState.LIVE, f"seq {book.venue_seq}")
        self.session.publish(book.top(self.spec.top_levels))

    def emit(self, book: L2Book, recv_ns: int) -> None:
        """A synced book changed: publish its new top (a crossed book is resynced instead)."""
        book.recv_ts_ns = recv_ns
        if book.state is BookState.STALE:
            self.set_state(book, BookState.LIVE, "updated again")
        bids = book.bids.keys
        asks = book.asks.keys
        if bids and asks and -bids[0] >= asks[0]:
            self.stats[book.instrument].crossed += 1
            self.resync(book, "crossed")
            return
        self.session.publish(book.top(self.spec.top_levels))

    def resync(self, book: L2Book, reason: str) -> None:
        """Drop one book and fetch it again; the other books on the connection stay LIVE."""
        stats = self.stats[book.instrument]
        stats.resyncs += 1
        self.venue_stats.resyncs[reason] += 1
        book.clear()
        if book.state is BookState.RESYNCING:
            book.state = BookState.SYNCING  # log the new reason below
        self.set_state(book, BookState.RESYNCING, reason)
        self.request_resync(book)

    def skip(self, kind: str, detail: str = "", instrument: str | None = None) -> None:
        """Count a frame we cannot use; log it once per kind per interval."""
        self.venue_stats.skipped[kind] += 1
        if instrument is not None and instrument in self.stats:
            self.stats[instrument].skipped += 1
        held = self._log_limiter.allow(kind)
        if held is not None:
            more = f" ({held} more since last report)" if held else ""
            log.warning(
                "%s skipped frame: %s %s%s",
                self.name,
                kind,
                detail[:200],
                more,
                extra={"venue": self.name, "event": "frame_skipped", "reason": kind},
            )

    def audit_by_arrival(self, book: L2Book, bid: float, ask: float) -> None:
        """A best-bid/ask ticker that shares no id with the book (Kraken, OKX, Coinbase):
        compare with the book as it is on arrival and count. Tickers run on their own
        schedule, so a disagreement is only a loose count, never a resync."""
        if book.state is not BookState.LIVE:
            return
        stats = self.stats[book.instrument]
        if book.bids.best() == bid and book.asks.best() == ask:
            stats.audit_loose_agree += 1
        else:
            stats.audit_loose_disagree += 1

    def check_staleness(self, now_ns: int) -> None:
        """Mark LIVE books with no update for `stale_after_s` as STALE (pricing drops them)."""
        limit = int(self.spec.stale_after_s * 1e9)
        for book in self.books.values():
            if book.state is BookState.LIVE and now_ns - book.recv_ts_ns > limit:
                self.set_state(book, BookState.STALE, f"no update for {self.spec.stale_after_s}s")


def now_ns() -> int:
    return time.time_ns()


class RateLimiter:
    """Token bucket for a venue's REST weight budget (one per venue connection)."""

    def __init__(self, capacity: float, per_seconds: float) -> None:
        self.capacity = capacity
        self.rate = capacity / per_seconds
        self.tokens = capacity
        self.stamp = time.monotonic()

    def try_acquire(self, cost: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
