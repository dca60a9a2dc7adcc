"""The venues' integrity rules as small objects the venue modules name (venue thread).

A sequence rule decides, per instrument, what a book message means for the book: a snapshot
is accepted (or is a gap), a delta is applied, dropped as older than the book, or is a gap
(`IntegrityError`: the driver resyncs that one book). A checksum rule verifies the book after
a message. `ConnectionCounter` is the one rule kept per connection (Coinbase).

| rule | venue |
|---|---|
| `Unsequenced` | Kraken (checksum only), OKX `books5`/`bbo-tbt` |
| `CountedByConnection` | Coinbase's books, checked by the connection's counter |
| `ContiguousIds` | Bybit: `u == previous u + 1` per topic; a snapshot replaces, `u == 1` restarts |
| `PreviousIdChain` | OKX: `prevSeqId == previous seqId` |
| `RestSnapshotBridge` | Binance spot: diffs buffered and bridged to a REST snapshot |
| `RestSnapshotChain` | Binance futures: bridged to a REST snapshot, then `pu == previous u` |
| `KrakenCrc32`, `OkxCrc32` | the CRC32 over the top levels (the book computes it) |
| `ConnectionCounter` | Coinbase `sequence_num`: one counter across every channel |

"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from mmengine.book.checksum import KRAKEN_LEVELS, OKX_LEVELS
from mmengine.book.events import BookUpdate
from mmengine.errors import FrameError, IntegrityError
from mmengine.model import BookState

if TYPE_CHECKING:
    from mmengine.book.book import L2Book
    from mmengine.book.sync import BookDriver, InstrumentSync

_SYNCING = BookState.SYNCING


class SequenceRule:
    """The base rule: every message is accepted (a book verified only by a checksum, or a
    venue that sends whole snapshots). Subclasses override what their venue promises."""

    def __init__(self, venue: Any, instrument: str) -> None:
        self.instrument = instrument

    def reset(self) -> None:
        """A new connection: forget everything."""

    def snapshot(self, sync: InstrumentSync, ev: BookUpdate) -> None:
        """A snapshot arrives; raise IntegrityError if it cannot start the book."""
        sync.book.venue_seq = ev.last_id if ev.last_id is not None else -1

    def delta(self, sync: InstrumentSync, ev: BookUpdate) -> bool:
        """A delta for a LIVE book: True to apply it, False to drop it (counted here),
        IntegrityError for a gap."""
        if ev.last_id is not None:
            sync.book.venue_seq = ev.last_id
        return True

    def not_synced(
        self, sync: InstrumentSync, ev: BookUpdate, driver: BookDriver, recv_ns: int
    ) -> None:
        """A delta for a book waiting for its snapshot: sent before the snapshot, which
        supersedes it."""
        sync.stats.dropped_stale += 1

    def resync(self, sync: InstrumentSync, ev: object, driver: BookDriver) -> None:
        """The book was dropped (the driver also sends the venue's resubscribe frames)."""

    def tick(self, sync: InstrumentSync, driver: BookDriver) -> None:
        """About four times a second (retries)."""


class Unsequenced(SequenceRule):
    """No sequence numbers to check (whatever id the messages carry is kept)."""


class CountedByConnection(Unsequenced):
    """Books whose messages a connection-wide counter checks (Coinbase): each message counts
    as checked on its book; a gap is the connection's (`ConnectionCounter`)."""

    def snapshot(self, sync: InstrumentSync, ev: BookUpdate) -> None:
        sync.stats.sequence_checked += 1
        sync.book.venue_seq = ev.last_id if ev.last_id is not None else -1

    def delta(self, sync: InstrumentSync, ev: BookUpdate) -> bool:
        sync.stats.sequence_checked += 1
        if ev.last_id is not None:
            sync.book.venue_seq = ev.last_id
        return True

    def not_synced(
        self, sync: InstrumentSync, ev: BookUpdate, driver: BookDriver, recv_ns: int
    ) -> None:
        sync.stats.sequence_checked += 1
        sync.stats.dropped_stale += 1  # before its (new) snapshot: superseded by it


class ContiguousIds(SequenceRule):
    """Each delta's id is the previous one + 1 (Bybit `u`, per topic; 5.4). A snapshot
    replaces the book at any time; one with id 1 is the venue restarting the book (counted
    in `restarts`, not a gap). A delta before any snapshot is a gap."""

    def snapshot(self, sync: InstrumentSync, ev: BookUpdate) -> None:
        book = sync.book
        if ev.last_id == 1 and book.venue_seq > 1:
            sync.stats.restarts += 1
        book.venue_seq = ev.last_id if ev.last_id is not None else -1

    def delta(self, sync: InstrumentSync, ev: BookUpdate) -> bool:
        book = sync.book
        stats = sync.stats
        stats.sequence_checked += 1
        if ev.last_id != book.venue_seq + 1:
            stats.sequence_gaps += 1
            raise IntegrityError(self.instrument, "gap", f"u={ev.last_id} after u={book.venue_seq}")
        book.venue_seq = ev.last_id
        return True

    def not_synced(
        self, sync: InstrumentSync, ev: BookUpdate, driver: BookDriver, recv_ns: int
    ) -> None:
        stats = sync.stats
        if sync.book.state is not _SYNCING:
            stats.dropped_stale += 1  # in flight before the new snapshot: superseded by it
            return
        stats.sequence_checked += 1
        stats.sequence_gaps += 1
        raise IntegrityError(self.instrument, "gap", f"delta u={ev.last_id} before a snapshot")


class PreviousIdChain(SequenceRule):
    """Each message names the id of the one before it (OKX 4.4: `prevSeqId` must equal the
    previous `seqId`; a snapshot has `prevSeqId == -1`). That also accepts OKX's heartbeat
    (`seqId == prevSeqId`) and its reset after maintenance (`seqId < prevSeqId`). Messages
    without ids (the 2022 capture) are not chained."""

    def snapshot(self, sync: InstrumentSync, ev: BookUpdate) -> None:
        if ev.last_id is not None and ev.first_id != -1:
            sync.stats.sequence_gaps += 1
            raise IntegrityError(self.instrument, "gap", f"snapshot with prevSeqId {ev.first_id}")
        sync.book.venue_seq = ev.last_id if ev.last_id is not None else -1

    def delta(self, sync: InstrumentSync, ev: BookUpdate) -> bool:
        if ev.last_id is None:
            return True
        book = sync.book
        stats = sync.stats
        stats.sequence_checked += 1
        if ev.first_id != book.venue_seq:
            stats.sequence_gaps += 1
            raise IntegrityError(
                self.instrument, "gap", f"prevSeqId {ev.first_id}, last seqId {book.venue_seq}"
            )
        book.venue_seq = ev.last_id
        return True


class RestSnapshotBridge(SequenceRule):
    """Binance spot, "How to manage a local order book correctly" (venue-protocols 1.4),
    numbered as there. Diffs carry `U` (first id) and `u` (last id).

    1. Buffer every diff (at most `max_buffered`; beyond that, a resync starts over).
    2. Get a REST snapshot, `L = lastUpdateId` (off the venue thread: `driver.fetch`).
    3. A hole between the snapshot and the first buffered diff (`L + 1 < U`): fetch again.
    4. Drop the buffered diffs with `u <= L`.
    5. The first remaining diff must bridge: `U <= L+1 <= u`; otherwise fetch again.
    6. Book = snapshot, then each diff in order: `u <= last` is stale (dropped); only a hole
       (`U > last + 1`) is a gap; otherwise apply and `last = u`. The same rule holds for
       every live diff, so a snapshot whose `L` falls inside a diff's range bridges.
    The venue gives `snapshot_request(instrument) -> (url, weight)` and
    `parse_snapshot(body) -> (L, bids, asks)`.
    """

    max_buffered: ClassVar[int] = 1000
    retry_failed_s: ClassVar[float] = 1.0
    retry_unbridged_s: ClassVar[float] = 0.25
    bridge_offset: ClassVar[int] = 1  # the first diff applied holds L + 1 (steps 3 to 5)

    def __init__(self, venue: Any, instrument: str) -> None:
        super().__init__(venue, instrument)
        self.venue = venue
        self.buffered: list[BookUpdate] = []
        self.generation = 0  # a snapshot answers the request of its own generation only
        self.in_flight = False
        self.next_attempt = 0.0  # monotonic time before which no snapshot is requested

    def reset(self) -> None:
        self.buffered.clear()
        self.generation += 1
        self.in_flight = False
        self.next_attempt = 0.0

    def snapshot(self, sync: InstrumentSync, ev: BookUpdate) -> None:
        raise FrameError("malformed", "Binance books start from REST snapshots only")

    def delta(self, sync: InstrumentSync, ev: BookUpdate) -> bool:
        # 6. for a live diff.
        book = sync.book
        last = book.venue_seq
        # ignores below: a sequenced venue's BookUpdate has first_id/last_id set
        if ev.last_id <= last:  # type: ignore[operator]
            sync.stats.dropped_stale += 1
            return False
        stats = sync.stats
        stats.sequence_checked += 1
        if ev.first_id > last + 1:  # type: ignore[operator]
            stats.sequence_gaps += 1
            raise IntegrityError(self.instrument, "gap", f"U={ev.first_id} after u={last}")
        book.venue_seq = ev.last_id  # type: ignore[assignment]
        return True

    def not_synced(
        self, sync: InstrumentSync, ev: BookUpdate, driver: BookDriver, recv_ns: int
    ) -> None:
        # 1. Buffer while no snapshot is held.
        if len(self.buffered) >= self.max_buffered:
            raise IntegrityError(
                self.instrument, "sync_buffer_overflow", f"{len(self.buffered)} diffs waiting"
            )
        self.buffered.append(ev)
        self.request(sync, driver)
        driver.poll_fetches(recv_ns)

    def resync(self, sync: InstrumentSync, ev: object, driver: BookDriver) -> None:
        # The WebSocket stays open: the diff that showed the gap is the first buffered.
        self.buffered.clear()
        self.generation += 1
        self.in_flight = False
        if isinstance(ev, BookUpdate):
            self.buffered.append(ev)
        self.request(sync, driver)

    def tick(self, sync: InstrumentSync, driver: BookDriver) -> None:
        if self.buffered and sync.book.state in (BookState.SYNCING, BookState.RESYNCING):
            self.request(sync, driver)

    def request(self, sync: InstrumentSync, driver: BookDriver) -> None:
        """2. Ask for a snapshot, unless one is on its way or the REST weight budget is
        spent (then `tick` asks again)."""
        if self.in_flight or time.monotonic() < self.next_attempt:
            return
        url, weight = self.venue.snapshot_request(self.instrument)
        if driver.fetch(self.instrument, self.generation, url, weight):
            self.in_flight = True

    def fetched(
        self,
        sync: InstrumentSync,
        generation: int,
        body: str | None,
        error: str,
        driver: BookDriver,
        recv_ns: int,
    ) -> None:
        """A snapshot fetch finished (on the venue thread, from `driver.poll_fetches`)."""
        if generation != self.generation:
            return  # asked for an earlier sync of this book
        self.in_flight = False
        if body is not None:
            try:
                last_id, bids, asks = self.venue.parse_snapshot(body)
            except (FrameError, ValueError, KeyError, TypeError, IndexError) as exc:
                body, error = None, f"unusable depth snapshot: {exc}"
        if body is None:
            self.next_attempt = time.monotonic() + self.retry_failed_s
            driver.skip("snapshot_failed", error, self.instrument)
            return
        self.bridge(sync, last_id, bids, asks, driver, recv_ns)

    def bridge(
        self,
        sync: InstrumentSync,
        last_id: int,
        bids: list[Any],
        asks: list[Any],
        driver: BookDriver,
        recv_ns: int,
    ) -> None:
        buffered = self.buffered
        stats = sync.stats
        edge = last_id + self.bridge_offset  # the id the first diff applied must hold
        # 3. A hole between the snapshot and the first buffered diff: a newer one is needed.
        # ignores below: buffered diffs are sequenced, so first_id/last_id are set (see parse_diff)
        if buffered and buffered[0].first_id > edge:  # type: ignore[operator]
            self.next_attempt = time.monotonic() + self.retry_unbridged_s
            return
        # 4. Drop the buffered diffs the snapshot already holds.
        pending = [d for d in buffered if d.last_id >= edge]  # type: ignore[operator]
        # 5. The first remaining diff must bridge the snapshot: U <= L+1 <= u.
        if pending and pending[0].first_id > edge:  # type: ignore[operator]
            self.next_attempt = time.monotonic() + self.retry_unbridged_s
            stats.sequence_gaps += 1
            return
        stats.dropped_stale += len(buffered) - len(pending)
        buffered.clear()
        driver.load(sync, bids, asks, last_id)
        stats.updates += len(pending)
        self.apply_buffered(sync, pending, driver)
        driver.go_live(sync, recv_ns)

    def apply_buffered(self, sync: InstrumentSync, pending: list[Any], driver: BookDriver) -> None:
        """6. Book = snapshot, then the buffered diffs in order."""
        book = sync.book
        stats = sync.stats
        for diff in pending:
            if diff.last_id <= book.venue_seq:
                continue
            if diff.first_id > book.venue_seq + 1:
                stats.sequence_gaps += 1
                raise IntegrityError(self.instrument, "gap", "inside the buffered diffs")
            book.venue_seq = diff.last_id
            driver.apply(sync, diff)


class RestSnapshotChain(RestSnapshotBridge):
    """Binance USDⓈ-M and COIN-M futures (and options), "How to manage a local order book
    correctly", numbered as there. Events carry `U` (`first_id`), `u` (`last_id`) and `pu`
    (`prev_id`, the previous event's `u`). Ids are not contiguous from one event to the next
    (`U` may exceed `pu + 1`), so unlike spot a hole in the ids is no gap: the chain is.

    2-3. Buffer the events (as spot), get a REST snapshot, `L = lastUpdateId`.
    4. Drop the events with `u < L` (an event ending at `L` is kept, unlike spot's `u <= L`).
    5. The first processed event must have `U <= L <= u`; otherwise fetch again.
    6. From then on every event's `pu` must equal the previous event's `u`; anything else is a
       gap that resyncs the symbol from a new snapshot.
    A snapshot with no later event buffered is the book at `L`: LIVE at once, and the next
    event must bridge it (step 5) before the chain (step 6) takes over.
    """

    bridge_offset = 0  # the first event applied holds L itself: U <= L <= u

    def __init__(self, venue: Any, instrument: str) -> None:
        super().__init__(venue, instrument)
        self.bridged = False  # an event has bridged the snapshot: the `pu` chain holds

    def delta(self, sync: InstrumentSync, ev: BookUpdate) -> bool:
        book = sync.book
        last = book.venue_seq
        stats = sync.stats
        if self.bridged:
            # 6.
            stats.sequence_checked += 1
            if ev.prev_id != last:
                stats.sequence_gaps += 1
                raise IntegrityError(self.instrument, "gap", f"pu={ev.prev_id} after u={last}")
        else:
            # 4. and 5. for the first event after a snapshot that had none buffered after it.
            # ignores below: a sequenced venue's BookUpdate has first_id/last_id set
            if ev.last_id < last:  # type: ignore[operator]
                stats.dropped_stale += 1
                return False
            stats.sequence_checked += 1
            if ev.first_id > last:  # type: ignore[operator]
                stats.sequence_gaps += 1
                raise IntegrityError(self.instrument, "gap", f"U={ev.first_id} after L={last}")
            self.bridged = True
        book.venue_seq = ev.last_id  # type: ignore[assignment]
        return True

    def apply_buffered(self, sync: InstrumentSync, pending: list[Any], driver: BookDriver) -> None:
        book = sync.book
        stats = sync.stats
        self.bridged = bool(pending)
        for n, event in enumerate(pending):
            stats.sequence_checked += 1  # the first bridged (5.), the others chain (6.)
            if n and event.prev_id != book.venue_seq:
                stats.sequence_gaps += 1
                raise IntegrityError(self.instrument, "gap", "inside the buffered events")
            book.venue_seq = event.last_id
            driver.apply(sync, event)


# --- checksums ---------------------------------------------------------------------------


class ChecksumRule:
    """The venue's CRC32 over the top `levels` of a book, verified after a message.

    The book computes it (`L2Book.checksum`, in C in the compiled core) and keeps what it
    can between messages; the rule names which one (`kind`) and compares."""

    kind: ClassVar[str]
    levels: ClassVar[int]

    __slots__ = ()

    def value(self, book: L2Book) -> int:
        """The checksum of the book as it is now."""
        return book.checksum()


class KrakenCrc32(ChecksumRule):
    """Kraken, v1 and v2 (`mmengine.book.checksum`): top 10 asks then top 10 bids."""

    kind = "kraken"
    levels = KRAKEN_LEVELS

    __slots__ = ()


class OkxCrc32(ChecksumRule):
    """OKX legacy (`mmengine.book.checksum`): top 25 bids and asks interleaved, signed."""

    kind = "okx"
    levels = OKX_LEVELS

    __slots__ = ()


# --- per connection ------------------------------------------------------------------------


class ConnectionCounter:
    """One sequence number per connection across every channel, each frame the previous + 1
    (Coinbase `sequence_num`, 2.4). A gap cannot be attributed to a book: the whole
    connection resyncs. A new connection counts from scratch."""

    __slots__ = ("checked", "gaps", "last")

    def __init__(self) -> None:
        self.last = -1  # the last frame's number on this connection; -1: none yet
        self.checked = 0
        self.gaps = 0

    def reset(self) -> None:
        self.last = -1

    def check(self, seq: int) -> str | None:
        """Take the frame's number; a description of the gap if one was missed."""
        last = self.last
        self.last = seq
        if last < 0:
            return None
        self.checked += 1
        if seq == last + 1:
            return None
        self.gaps += 1
        return f"sequence_num gap: expected {last + 1}, got {seq}"
