"""The shared book driver: one venue connection's books, kept from its venue's events
(runs on the venue thread; `replay` runs it on the main thread).

A venue module turns each frame into events (`mmengine.book.events`); `BookDriver` applies
them. Per instrument it owns the state machine (SYNCING -> LIVE <-> STALE, RESYNCING), the
counters, apply, truncation to depth, the crossed check, the BookTop it publishes, the
venue's integrity rule (`mmengine.book.integrity`), the resync with the venue's own
resubscribe frames (through the venue's subscribe rate limit) and the top-of-book audit.

Failures map once, here:
- a frame that cannot be used is a counted skip, logged once per kind per interval; when it
  carried an update for a LIVE book, that book missed it and resyncs at once, before any
  later message could be priced from it (the connection, where the venue's counter is
  connection-wide);
- a failed integrity rule (gap, checksum, audit) resyncs that one book; the connection's own
  counter (Coinbase) resyncs every book on it and reconnects.
Anything else is a bug and propagates (the transport logs it and reconnects).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from mmengine.book.core import book_core
from mmengine.book.events import (
    EVERY_BOOK,
    AuditTop,
    BookUpdate,
    ContractSize,
    Ignored,
    Reconnect,
    Resync,
    Send,
    Sequenced,
    Skipped,
)
from mmengine.book.integrity import (
    ChecksumRule,
    ConnectionCounter,
    ContiguousIds,
    RestSnapshotChain,
    SequenceRule,
)
from mmengine.errors import FrameError, IntegrityError
from mmengine.logs import RepeatLimiter
from mmengine.model import BookState, BookTop

if TYPE_CHECKING:
    from mmengine.book.book import L2Book
    from mmengine.venues.base import VenueProtocol

log = logging.getLogger("mmengine.venue")

LIVE = BookState.LIVE
STALE = BookState.STALE
# What a venue's parse may raise for a frame that cannot be used (anything else is a bug).
PARSE_ERRORS = (
    FrameError,
    orjson.JSONDecodeError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
)
MAX_WAITING_AUDITS = 1000  # tickers held until the book reaches their update id
CONTRACT_SIZES = "contract sizes"  # the key of the connection's contract-size fetch
RETRY_SIZES_S = 1.0  # after a failed fetch of contract sizes
RETRY_MISSING_S = 60.0  # after an answer that lists not every instrument of ours


class Session(Protocol):
    """What the driver asks of the connection that feeds it (transport or replay)."""

    def send(self, text: str) -> None:
        """Send a text frame on the venue connection."""

    def publish(self, top: BookTop) -> None:
        """Hand a book's top (or its state change) to pricing."""

    def reconnect(self, reason: str) -> None:
        """Ask for the connection to be dropped and re-established."""

    def fetch(self, key: Any, url: str) -> None:
        """GET `url` away from the thread that reads the socket; the answer comes back
        from `fetched`, tagged with `key`."""

    def fetched(self) -> list[tuple[Any, str | None, str, int]]:
        """Finished fetches: (key, body or None, error text, when the answer was received
        in ns, 0 if not known)."""


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
    restarts: int = 0  # the venue restarted the book (Bybit `u == 1`): replaced, not a gap
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
    requests_delayed: int = 0  # subscribe requests held back by the venue's rate limit
    skipped: Counter[str] = field(default_factory=Counter)
    resyncs: Counter[str] = field(default_factory=Counter)
    # frames of channels the venue module does not use (trades, klines), by channel
    ignored: Counter[str] = field(default_factory=Counter)


class RequestLimit:
    """At most `count` requests in any `per_s` seconds: a sliding window, so that a burst
    can never exceed the venue's published figure in any window."""

    __slots__ = ("count", "per_s", "sent")

    def __init__(self, count: int, per_s: float) -> None:
        self.count = count
        self.per_s = per_s
        self.sent: deque[float] = deque()

    def reset(self) -> None:
        self.sent.clear()

    def allow(self, n: int, now: float) -> bool:
        sent = self.sent
        while sent and now - sent[0] >= self.per_s:
            sent.popleft()
        if len(sent) + n > self.count:
            return False
        sent.extend([now] * n)
        return True


class RestBudget:
    """Token bucket for a venue's REST weight (Binance: 6000 per minute)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

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


class InstrumentSync:
    """One instrument's book with its rule, counters and cached checks."""

    __slots__ = (
        "audits",
        "book",
        "checks_deltas",
        "checksum",
        "crossed",
        "disagree_since",
        "instrument",
        "rule",
        "size",
        "sized",
        "stats",
    )

    def __init__(
        self, book: L2Book, rule: SequenceRule, checksum: ChecksumRule | None, sized: bool = False
    ) -> None:
        self.instrument = book.instrument
        self.book = book
        self.stats = InstrumentStats()
        self.rule = rule
        # Whether the rule looks at deltas at all (a checksum-only venue's does not: the
        # call is skipped on the hot path, and the driver keeps the id itself).
        self.checks_deltas = type(rule).delta is not SequenceRule.delta
        self.checksum = checksum
        self.crossed = False  # the book is crossed and held (a venue that can be)
        self.audits: deque[AuditTop] = deque()  # tickers waiting for the book's update id
        self.disagree_since = 0  # loose audit: first disagreeing ticker, ns; 0: agreeing
        self.sized = sized  # the book counts contracts: its tops wait for `size`
        self.size: ContractSize | None = None  # book sizes -> base units (None: not yet known)


class _ConnectionResync(Exception):
    """The rest of the frame must not be applied: the connection is resyncing."""


class BookDriver:
    """Keeps the books of one venue connection from its venue's events.

    The transport (or replay) calls `receive` for every frame, `on_tick` about four times a
    second, `on_connected` / `on_disconnected`, and sends `subscribe_frames()` and
    `keepalive_frame()`. Status and replay read `books`, `stats` and `venue_stats`.
    """

    def __init__(self, venue: VenueProtocol, session: Session) -> None:
        spec = venue.spec
        self.venue = venue
        self.spec = spec
        self.name = spec.name
        self.protocol = venue.protocol
        self.session = session
        self._path: Any = None  # the compiled core's per-frame path (below), if any
        self._max_frame_bytes = venue.max_frame_bytes
        self.keepalive_interval_s = venue.keepalive_interval_s
        self.silence_timeout_s = venue.silence_timeout_s
        self._top_levels = spec.top_levels
        self.hold_crossed = venue.crossed_is_venue_state
        alarm = venue.audit_alarm_s
        self.audit_alarm_ns = int(alarm * 1e9) if alarm is not None else 0
        depth = venue.book_depth()
        sized = bool(venue.contract_sizes_requests())
        self.core = book_core(spec.book_core)
        checksum_cls = venue.checksum
        kind = checksum_cls.kind if checksum_cls is not None else None
        self.syncs: dict[str, InstrumentSync] = {}
        for inst in spec.instruments:
            self.syncs[inst] = InstrumentSync(
                self.core.book(spec.name, inst, depth, venue.keep_wire, kind),
                venue.sequence_rule(inst),
                checksum_cls() if checksum_cls is not None else None,
                sized and venue.contract_sized(inst),
            )
        self.books: dict[str, L2Book] = {i: s.book for i, s in self.syncs.items()}
        self.stats: dict[str, InstrumentStats] = {i: s.stats for i, s in self.syncs.items()}
        self.venue_stats = VenueStats()
        self.connection = ConnectionCounter() if venue.connection_sequence else None
        self.requests = RequestLimit(*venue.subscribe_limit)
        self.rest = (
            RestBudget(venue.rest_weight_per_minute, 60.0) if venue.rest_weight_per_minute else None
        )
        self._waiting: deque[tuple[str | None, list[str]]] = deque()  # requests held back
        self._fetching = 0  # fetches asked for and not answered yet
        # The venue's contract sizes (`VenueProtocol.contract_sizes_requests`): fetched on
        # every connection before any snapshot; the generation tells a late answer apart.
        self._sizes_requests: list[tuple[str, int]] = []
        self._sizes_generation = 0
        self._sizes_in_flight = 0  # requests of this round not answered yet
        self._sizes_failed = False  # an answer of this round was unusable
        self._sizes_next = 0.0  # monotonic time before which they are not asked for again
        self._log_limiter = RepeatLimiter()
        self._parse = venue.parse
        if self.core.frame_path is not None:
            # The compiled core's per-frame path replaces `receive` and `on_book` on this
            # instance (the class's methods stay the reference it hands other cases to).
            path = self.core.frame_path(
                self, ContiguousIds, IntegrityError, PARSE_ERRORS, RestSnapshotChain
            )
            self.receive = path.receive  # type: ignore[method-assign]
            self.on_book = path.on_book  # type: ignore[method-assign]
            self._path = path
        self._handlers: dict[type[Any], Callable[[Any, int], None]] = {
            AuditTop: self.on_audit,
            Sequenced: self.on_sequenced,
            Skipped: self.on_skipped,
            Ignored: self.on_ignored,
            Send: self.on_send,
            Resync: self.on_resync,
            Reconnect: self.on_reconnect,
        }

    @property
    def max_frame_bytes(self) -> int:
        """A frame longer than this is a counted skip (`frame_too_large`), never parsed."""
        return self._max_frame_bytes

    @max_frame_bytes.setter
    def max_frame_bytes(self, value: int) -> None:
        self._max_frame_bytes = value
        if self._path is not None:
            self._path.limits(value, self._top_levels)  # it keeps them as C integers

    @property
    def top_levels(self) -> int:
        """Levels per side in each BookTop published."""
        return self._top_levels

    @top_levels.setter
    def top_levels(self, value: int) -> None:
        self._top_levels = value
        if self._path is not None:
            self._path.limits(self._max_frame_bytes, value)

    # --- what the transport calls --------------------------------------------------------

    def connect_url(self) -> str:
        return self.venue.connect_url()

    def venue_symbol(self, instrument: str) -> str:
        return self.venue.venue_symbol(instrument)

    def keepalive_frame(self) -> str | None:
        return self.venue.keepalive_frame()

    def subscribe_frames(self) -> list[str]:
        """The venue's subscriptions for a new connection, within its request limit (the
        rest follow from `on_tick` as the limit allows)."""
        frames = self.venue.subscribe_frames()
        now = time.monotonic()
        for i in range(len(frames)):
            if not self.requests.allow(1, now):
                self._waiting.append((None, frames[i:]))
                self.venue_stats.requests_delayed += len(frames) - i
                return frames[:i]
        return frames

    def on_connected(self) -> None:
        """A new connection is open: every book starts from scratch."""
        self.venue.on_connected()
        self.requests.reset()
        self._waiting.clear()
        self._fetching = 0
        self._parse = self.venue.parse
        if self.connection is not None:
            self.connection.reset()
        for sync in self.syncs.values():
            sync.rule.reset()
            self._drop(sync)
            self.set_state(sync, BookState.SYNCING, "connected")
        self._sizes_requests = self.venue.contract_sizes_requests()
        self._sizes_generation += 1
        self._sizes_in_flight = 0
        self._sizes_next = 0.0
        if self._sizes_requests:
            for sync in self.syncs.values():
                sync.size = None
            self._fetch_sizes()

    def on_disconnected(self) -> None:
        """The connection is gone: no book on it can be trusted until resynced."""
        self._waiting.clear()
        for sync in self.syncs.values():
            self._drop(sync)
            self.set_state(sync, BookState.SYNCING, "disconnected")

    def on_tick(self, now_ns: int) -> None:
        """About four times a second between frames: held requests, snapshot fetches and
        retries, and the staleness timer."""
        if self._waiting:
            self._send_waiting()
        if (
            self._sizes_requests
            and not self._sizes_in_flight
            and any(s.sized and s.size is None for s in self.syncs.values())
        ):
            self._fetch_sizes()
        for sync in self.syncs.values():
            try:
                sync.rule.tick(sync, self)
            except IntegrityError as exc:
                self._failed(exc, None)
        if self._fetching:
            self.poll_fetches(now_ns)
        self.check_staleness(now_ns)

    def receive(self, frame: str, recv_ns: int) -> None:
        """Feed one frame through the venue's parse and apply what it yields. (With the
        compiled book core, `FramePath.receive` takes this method's place on the instance:
        the same steps, with the LIVE delta of `on_book` in C; this is the reference.)"""
        self.venue_stats.frames += 1
        if len(frame) > self.max_frame_bytes:
            self.skip("frame_too_large", f"{len(frame)} characters")
            return
        try:
            events = self._parse(frame)  # `_awaiting_reconnect` while the connection resyncs
        except PARSE_ERRORS as exc:
            self.parse_failed(exc)
            return
        if type(events) is BookUpdate:  # the common case: one book message
            try:
                self.on_book(events, recv_ns)
            except IntegrityError as exc:
                self._failed(exc, events)
            return
        self.handle_events(cast("list[Any]", events), recv_ns)

    def parse_failed(self, exc: Exception) -> None:
        """A frame the venue's parse refused (one of `PARSE_ERRORS`): counted, and what
        it carried for a LIVE book resynced."""
        if isinstance(exc, FrameError):
            self._unusable(exc)
        elif isinstance(exc, orjson.JSONDecodeError):
            self.skip("bad_json", str(exc))
        else:
            # Venues decode a whole frame before anything is applied: every book unchanged.
            self.skip("malformed", f"{type(exc).__name__}: {exc}")

    def handle_events(self, events: list[Any], recv_ns: int) -> None:
        """The events of one frame, in order (a connection resync ends the frame)."""
        for ev in events:
            try:
                if type(ev) is BookUpdate:
                    self.on_book(ev, recv_ns)
                else:
                    self._handlers[type(ev)](ev, recv_ns)
            except IntegrityError as exc:
                self._failed(exc, ev)
            except _ConnectionResync:
                return

    # --- events ------------------------------------------------------------------------------

    def on_book(self, ev: BookUpdate, recv_ns: int) -> None:
        sync = self.syncs[ev.instrument]
        stats = sync.stats
        self.venue_stats.book_frames += 1
        stats.messages += 1
        if ev.snapshot:
            sync.rule.snapshot(sync, ev)
            self.load(sync, ev.bids, ev.asks, None, ev)
            self.go_live(sync, recv_ns)
            return
        state = sync.book.state
        if state is not LIVE and state is not STALE:
            sync.rule.not_synced(sync, ev, self, recv_ns)
            return
        last_id = ev.last_id
        if last_id is not None:  # a message without ids leaves a sequence rule nothing
            if sync.checks_deltas:
                if not sync.rule.delta(sync, ev):
                    return
            else:
                sync.book.venue_seq = last_id
        # The hot path of every venue: one call applies the levels and computes the checksum.
        got = sync.book.update(ev)
        stats.updates += 1
        if got is not None:
            stats.checksums_checked += 1
            if got != ev.checksum:
                stats.checksums_failed += 1
                raise IntegrityError(
                    sync.instrument, "checksum", f"computed {got}, venue {ev.checksum}"
                )
            if last_id is None:
                # No id (Kraken): the book is named by the checksum it matched (as unsigned
                # 32 bits: OKX's legacy one is signed, and -1 means "none").
                sync.book.venue_seq = got & 0xFFFFFFFF
        elif last_id is None and sync.checksum is not None:
            sync.book.venue_seq = -1  # neither an id nor a checksum: this state has no name
        self.emit(sync, recv_ns)
        if sync.audits:
            self._audit_waiting(sync)

    def on_audit(self, ev: AuditTop, recv_ns: int) -> None:
        sync = self.syncs[ev.instrument]
        book = sync.book
        if ev.venue_seq is not None:
            # Exact at an equal update id: the ticker usually arrives before the diff that
            # reaches its id, so it waits; one whose id falls inside a diff never meets a
            # book state and is dropped.
            if book.state is LIVE and ev.venue_seq < book.venue_seq:
                return
            if len(sync.audits) < MAX_WAITING_AUDITS:
                sync.audits.append(ev)
            if ev.venue_seq == book.venue_seq:
                self._audit_waiting(sync)
            return
        if book.state is not LIVE:
            return
        stats = sync.stats
        agree = book.bids.best() == ev.bid and book.asks.best() == ev.ask
        if ev.cross_seq is not None and ev.cross_seq == book.cross_seq:
            if agree:
                stats.audit_agree += 1
                return
            stats.audit_disagree += 1
            raise IntegrityError(sync.instrument, "audit", f"ticker {ev.bid}/{ev.ask}")
        # By arrival: tickers run on their own schedule, so this is a loose count.
        if agree:
            stats.audit_loose_agree += 1
            sync.disagree_since = 0
            return
        stats.audit_loose_disagree += 1
        if self.audit_alarm_ns:
            self._audit_alarm(sync, ev, recv_ns)

    def on_sequenced(self, ev: Sequenced, recv_ns: int) -> None:
        assert self.connection is not None, "the venue has no connection-wide counter"
        gap = self.connection.check(ev.seq)
        if gap is not None:
            self.resync_connection("sequence_gap", gap, gap=True)
            raise _ConnectionResync

    def on_skipped(self, ev: Skipped, recv_ns: int) -> None:
        self.skip(ev.kind, ev.detail)

    def on_ignored(self, ev: Ignored, recv_ns: int) -> None:
        self.venue_stats.ignored[ev.channel] += 1  # not logged: it is nobody's problem

    def on_send(self, ev: Send, recv_ns: int) -> None:
        self.request(None, ev.frames)

    def on_resync(self, ev: Resync, recv_ns: int) -> None:
        sync = self.syncs.get(ev.instrument)
        if sync is not None:
            self.resync(sync, ev.reason)

    def on_reconnect(self, ev: Reconnect, recv_ns: int) -> None:
        self.session.reconnect(ev.reason)

    # --- book steps (the rules call these too) ----------------------------------------------

    def load(
        self,
        sync: InstrumentSync,
        bids: list[Any],
        asks: list[Any],
        last_id: int | None,
        ev: BookUpdate | None = None,
    ) -> None:
        """A snapshot replaces the book (truncated to depth; verified if it carries a
        checksum)."""
        book = sync.book
        book.load(bids, asks)
        if last_id is not None:
            book.venue_seq = last_id
        sync.stats.snapshots += 1
        if ev is not None:
            book.cross_seq = ev.cross_seq
            if ev.ts_ns is not None:
                book.exchange_ts_ns = ev.ts_ns
            if ev.checksum is not None and sync.checksum is not None:
                self.verify(sync, ev.checksum)
            if ev.last_id is None and sync.checksum is not None:
                # A venue without ids (Kraken): the book's name is its checksum, the one
                # the venue sent (verified above) or, for a snapshot that carries none
                # (Kraken v1), the one of the book as loaded.
                book.venue_seq = book.checksum() & 0xFFFFFFFF

    def apply(self, sync: InstrumentSync, ev: BookUpdate) -> None:
        """Apply every level of a delta, then truncate to depth (venues send no deletes for
        levels leaving their window), as `on_book` does for a LIVE book."""
        sync.book.update(ev)

    def verify(self, sync: InstrumentSync, checksum: int) -> None:
        stats = sync.stats
        stats.checksums_checked += 1
        got = sync.book.checksum()
        if got != checksum:
            stats.checksums_failed += 1
            raise IntegrityError(sync.instrument, "checksum", f"computed {got}, venue {checksum}")

    def go_live(self, sync: InstrumentSync, recv_ns: int) -> None:
        """The book is verified: mark it LIVE and publish its top (a book of contracts
        whose sizes are not known yet is kept and checked, its tops held: `emit`)."""
        if sync.sized and sync.size is None and self._sizes_in_flight:
            # A venue whose snapshot comes with the subscription (OKX) may send it before
            # its sizes are in: an answer already back is taken now (a replay's come at once).
            self.poll_fetches(recv_ns)
        book = sync.book
        if book.is_crossed() and not self.hold_crossed:
            sync.stats.crossed += 1
            self.resync(sync, "crossed")
            return
        book.recv_ts_ns = recv_ns
        self.set_state(sync, LIVE, f"seq {book.venue_seq}")
        self.emit(sync, recv_ns)
        if sync.audits:
            self._audit_waiting(sync)

    def emit(self, sync: InstrumentSync, recv_ns: int) -> None:
        """A synced book changed: publish its new top. A crossed book is resynced, unless
        the venue documents crossed books (OKX pre-open): then it is published as it is and
        pricing leaves it out (`crossed`) until it uncrosses, with no resubscribe storm."""
        book = sync.book
        book.recv_ts_ns = recv_ns
        if book.state is STALE:
            self.set_state(sync, LIVE, "updated again")
        if book.is_crossed():
            if not self.hold_crossed:
                sync.stats.crossed += 1
                self.resync(sync, "crossed")
                return
            if not sync.crossed:
                sync.crossed = True
                sync.stats.crossed += 1
                log.info(
                    "%s %s crossed (%s >= %s): held, not priced",
                    self.name,
                    sync.instrument,
                    book.bids.best(),
                    book.asks.best(),
                    extra={"venue": self.name, "instrument": sync.instrument, "event": "crossed"},
                )
        elif sync.crossed:
            sync.crossed = False
        size = sync.size
        if size is None and sync.sized:
            return  # contracts are never priced as base units: held until the sizes are in
        top = book.top(self.top_levels)
        if size is not None:
            top = size.to_base(top)
        self.session.publish(top)

    # --- states, resyncs, requests ------------------------------------------------------------

    def set_state(self, sync: InstrumentSync, state: BookState, reason: str) -> None:
        """Change a book's state; logs the change and tells pricing when it leaves LIVE."""
        book = sync.book
        if book.state is state:
            return
        was_live = book.state is LIVE
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

    def resync(self, sync: InstrumentSync, reason: str, event: object = None) -> None:
        """Drop one book and fetch it again; the other books on the connection stay LIVE."""
        sync.stats.resyncs += 1
        self.venue_stats.resyncs[reason] += 1
        self._drop(sync, keep_audits=reason != "audit")
        book = sync.book
        if book.state is BookState.RESYNCING:
            book.state = BookState.SYNCING  # log the new reason below
        self.set_state(sync, BookState.RESYNCING, reason)
        sync.rule.resync(sync, event, self)
        self.request(sync.instrument, self.venue.resync_frames(sync.instrument))

    def resync_connection(self, reason: str, detail: str, gap: bool) -> None:
        """The venue's counter is connection-wide: every book is dropped and the connection
        re-established (fresh snapshots); nothing more on it is applied."""
        for sync in self.syncs.values():
            stats = sync.stats
            if gap:
                stats.sequence_gaps += 1
            stats.resyncs += 1
            self.venue_stats.resyncs[reason] += 1
            self._drop(sync)
            self.set_state(sync, BookState.RESYNCING, detail)
        self._parse = self._awaiting_reconnect
        self.session.reconnect(detail)

    def request(self, key: str | None, frames: list[str]) -> None:
        """Send subscribe requests within the venue's limit; hold them back otherwise (one
        held resubscription per instrument)."""
        if not frames:
            return
        if not self._waiting and self.requests.allow(len(frames), time.monotonic()):
            for frame in frames:
                self.session.send(frame)
            return
        if key is None or all(k != key for k, _ in self._waiting):
            self._waiting.append((key, frames))
            self.venue_stats.requests_delayed += len(frames)

    def _send_waiting(self) -> None:
        now = time.monotonic()
        while self._waiting:
            _key, frames = self._waiting[0]
            if not self.requests.allow(len(frames), now):
                return
            self._waiting.popleft()
            for frame in frames:
                self.session.send(frame)

    def fetch(self, instrument: str, generation: int, url: str, weight: float) -> bool:
        """Fetch a REST snapshot off the venue thread, within the venue's REST weight
        budget; False when the budget is spent, or while the venue's contract sizes are not
        known (the rule asks again later)."""
        sync = self.syncs[instrument]
        if sync.sized and sync.size is None:
            return False
        if self.rest is not None and not self.rest.try_acquire(weight):
            return False
        self._fetching += 1
        self.session.fetch((instrument, generation), url)
        return True

    def poll_fetches(self, recv_ns: int) -> None:
        """Hand finished snapshot fetches to their books' rules (and contract sizes to the
        books, whose snapshots are then asked for at once: the loop takes their answers
        too where they come back at once, as in a replay). A book a snapshot puts LIVE is
        stamped no earlier than the snapshot's own arrival (`recv_ns` may be the receive
        time of a frame handled since, which can be earlier)."""
        while answers := self.session.fetched():
            for (instrument, generation), body, error, got_ns in answers:
                self._fetching = max(0, self._fetching - 1)
                if instrument == CONTRACT_SIZES:
                    self._sizes_fetched(generation, body, error)
                    continue
                sync = self.syncs.get(instrument)
                if sync is None:
                    continue
                try:
                    # answers come only for rules that fetch (RestSnapshot*): they have `fetched`
                    sync.rule.fetched(sync, generation, body, error, self, max(recv_ns, got_ns))  # type: ignore[attr-defined]
                except IntegrityError as exc:
                    self._failed(exc, None)

    def _fetch_sizes(self) -> None:
        """Ask for the venue's contract sizes, every request of the venue at once (within
        the REST budget; `on_tick` retries)."""
        if not self._sizes_requests or time.monotonic() < self._sizes_next:
            return
        weight = sum(w for _, w in self._sizes_requests)
        if self.rest is not None and not self.rest.try_acquire(weight):
            return
        self._sizes_in_flight = len(self._sizes_requests)
        self._sizes_failed = False
        for url, _ in self._sizes_requests:
            self._fetching += 1
            self.session.fetch((CONTRACT_SIZES, self._sizes_generation), url)

    def _sizes_fetched(self, generation: int, body: str | None, error: str) -> None:
        """One answer: the books it gives sizes for go on at once; once every answer of
        the round is in, the books none of them listed are counted."""
        if generation != self._sizes_generation:
            return  # asked for on an earlier connection
        self._sizes_in_flight = max(0, self._sizes_in_flight - 1)
        sizes: dict[str, ContractSize] = {}
        if body is not None:
            try:
                sizes = self.venue.parse_contract_sizes(body)
            except (FrameError, ValueError, KeyError, TypeError, IndexError) as exc:
                body, error = None, f"unusable contract sizes: {exc}"
        if body is None:
            self._sizes_failed = True
            self._sizes_next = time.monotonic() + RETRY_SIZES_S
            self.skip("contract_sizes_failed", error)
        for instrument, size in sizes.items():
            sync = self.syncs.get(instrument)
            if sync is None or not sync.sized or sync.size is not None:
                continue  # a size known on this connection is kept
            sync.size = size
            try:
                sync.rule.tick(sync, self)  # its snapshot, now that its sizes are known
            except IntegrityError as exc:
                self._failed(exc, None)
                continue
            if sync.book.state is LIVE:
                self.emit(sync, sync.book.recv_ts_ns)  # synced while its size was on its way
        if self._sizes_in_flight or self._sizes_failed:
            return
        missing = [i for i, s in self.syncs.items() if s.sized and s.size is None]
        if missing:
            # Asked for again now and then: a listing may come later. Until then these books
            # publish nothing (no REST snapshot is asked for them); the others go on.
            self._sizes_next = time.monotonic() + RETRY_MISSING_S
            self.skip("unknown_symbol", f"no contract size for {', '.join(missing)}")

    def _awaiting_reconnect(self, frame: str) -> list[Any]:
        """`parse` while the connection resyncs: nothing on it can be trusted until it is
        re-established."""
        self.skip("awaiting_reconnect")
        return []

    def _drop(self, sync: InstrumentSync, keep_audits: bool = False) -> None:
        sync.book.clear()
        sync.crossed = False
        sync.disagree_since = 0
        if not keep_audits:
            sync.audits.clear()

    def _failed(self, exc: IntegrityError, ev: object) -> None:
        sync = self.syncs.get(exc.instrument)
        if sync is not None:
            self.resync(sync, exc.reason, ev)

    def _unusable(self, exc: FrameError) -> None:
        """A frame that cannot be used; if it carried updates, resync what the loss
        touched: a sequence rule would see it only on the next message, a checksum maybe
        never (a level below the checksummed top)."""
        lost = exc.lost
        self.skip(exc.kind, exc.detail, lost[0] if len(lost) == 1 else None)
        if not lost:
            return
        if self.connection is not None:
            # The frame used up a connection-wide number: the loss cannot be seen later.
            self.resync_connection("unusable_update", f"unusable update: {exc.kind}", gap=False)
            return
        for instrument in self.syncs if EVERY_BOOK in lost else lost:
            sync = self.syncs.get(instrument)
            if sync is not None and sync.book.state in (LIVE, STALE):
                self.resync(sync, "unusable_update")

    # --- audits ----------------------------------------------------------------------------

    def _audit_waiting(self, sync: InstrumentSync) -> None:
        """Compare the book with every waiting ticker of its update id (prices and sizes)."""
        book = sync.book
        if book.state is not LIVE:
            return
        tickers = sync.audits
        stats = sync.stats
        # only audits with a venue_seq wait in `audits` (Binance bookTicker `u`): never None here
        while tickers and tickers[0].venue_seq <= book.venue_seq:  # type: ignore[operator]
            t = tickers.popleft()
            if t.venue_seq != book.venue_seq:
                continue
            if (
                book.bids.best() == t.bid
                and book.asks.best() == t.ask
                and book.bids.size(t.bid) == t.bid_size
                and book.asks.size(t.ask) == t.ask_size
            ):
                stats.audit_agree += 1
                continue
            stats.audit_disagree += 1
            tickers.clear()
            raise IntegrityError(
                sync.instrument, "audit", f"ticker {t.bid}/{t.ask} at {t.venue_seq}"
            )

    def _audit_alarm(self, sync: InstrumentSync, ev: AuditTop, recv_ns: int) -> None:
        """A loose audit that has disagreed for longer than the venue's tolerance: logged
        (never a resync: the venue's ticker is not in lockstep with its book)."""
        since = sync.disagree_since or recv_ns
        sync.disagree_since = since
        if recv_ns - since <= self.audit_alarm_ns:
            return
        held = self._log_limiter.allow(f"audit:{sync.instrument}")
        if held is not None:
            log.warning(
                "%s %s: ticker %s/%s has disagreed with the book for %.1fs",
                self.name,
                sync.instrument,
                ev.bid,
                ev.ask,
                (recv_ns - since) / 1e9,
            )

    # --- counting ----------------------------------------------------------------------------

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

    def check_staleness(self, now_ns: int) -> None:
        """Mark LIVE books with no update for `stale_after_s` as STALE (pricing drops them)."""
        limit = int(self.spec.stale_after_s * 1e9)
        for sync in self.syncs.values():
            book = sync.book
            if book.state is LIVE and now_ns - book.recv_ts_ns > limit:
                self.set_state(sync, STALE, f"no update for {self.spec.stale_after_s}s")
