"""Binance spot: `@depth@100ms` diffs synced to a REST depth snapshot (venue thread).

Integrity follows Binance's "How to manage a local order book correctly" (numbered below):
diffs carry `U` (first update id) and `u` (last); a book is LIVE only once a REST snapshot
with `lastUpdateId = L` is bridged by a diff with `U <= L+1 <= u`, and every later diff must
start at `U == previous u + 1`. A gap resyncs that one symbol from a new REST snapshot while
the WebSocket stays open.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import orjson

from mmengine.book import L2Book
from mmengine.errors import FrameError, IntegrityError, TransportError, VenueRejected
from mmengine.model import BookState
from mmengine.venues.base import RateLimiter, Venue, level, levels

WS_URL = "wss://stream.binance.com:9443/stream"
REST_URL = "https://api.binance.com"
DEPTH_STREAM = "depth@100ms"
SNAPSHOT_LIMITS = (5, 10, 20, 50, 100, 500, 1000, 5000)
REST_WEIGHT_PER_MINUTE = 6000
MAX_WAITING_TICKERS = 1000  # audit tickers held while a book syncs


def snapshot_weight(limit: int) -> int:
    """REST weight of `GET /api/v3/depth` for a given limit (Binance rest-api.md)."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


def wire_symbol(instrument: str) -> str:
    """`BTC-USDT` -> `BTCUSDT`. Joining is safe; splitting the wire symbol is not."""
    return instrument.replace("-", "")


@dataclass(slots=True)
class DepthDiff:
    """One parsed `depthUpdate`.

    Sample: {"e":"depthUpdate","E":1633998512568,"s":"NKNUSDT","U":499869753,"u":499869754,
             "b":[["0.35170000","4265.00000000"]],"a":[["0.35290000","10968.00000000"]]}
    """

    first_id: int  # U
    last_id: int  # u
    event_ns: int  # E (ms) in ns
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


def parse_diff(data: dict) -> DepthDiff:
    return DepthDiff(
        int(data["U"]),
        int(data["u"]),
        int(data["E"]) * 1_000_000,
        levels(data["b"]),
        levels(data["a"]),
    )


def parse_snapshot(body: str) -> tuple[int, list[tuple[float, float]], list[tuple[float, float]]]:
    """`GET /api/v3/depth` -> (lastUpdateId, bids, asks).

    Sample: {"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],
             "asks":[["4.00000200","12.00000000"]]}
    """
    try:
        doc = orjson.loads(body)
        return (
            int(doc["lastUpdateId"]),
            levels(doc["bids"]),
            levels(doc["asks"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise TransportError(f"unusable depth snapshot: {exc}") from exc


@dataclass(slots=True)
class SyncState:
    """Step 1 of the sync: diffs buffered while the snapshot is outstanding."""

    buffered: list[DepthDiff] = field(default_factory=list)
    # audit: bookTickers (u, bid, bid size, ask, ask size) waiting for the book to reach u
    tickers: deque[tuple[int, float, float, float, float]] = field(default_factory=deque)
    next_attempt: float = 0.0  # monotonic time before which no snapshot is requested


class BinanceSpot(Venue):
    """Binance spot diff-depth book, verified against REST snapshots and `@bookTicker`."""

    protocol = "binance"
    default_url = WS_URL
    default_rest_url = REST_URL
    silence_timeout_s = 60.0  # the server pings every 20 s even when the books are quiet

    def __init__(self, spec, session) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, session)
        self.by_symbol = {wire_symbol(i): self.books[i] for i in self.books}
        self.sync: dict[str, SyncState] = {i: SyncState() for i in self.books}
        self.rest_limiter = RateLimiter(REST_WEIGHT_PER_MINUTE, 60.0)
        self.snapshot_limit = next((x for x in SNAPSHOT_LIMITS if x >= spec.depth), 5000)

    def venue_symbol(self, instrument: str) -> str:
        return wire_symbol(instrument)

    def connect_url(self) -> str:
        streams = [f"{s.lower()}@{DEPTH_STREAM}" for s in self.by_symbol]
        if self.spec.audit:
            streams += [f"{s.lower()}@bookTicker" for s in self.by_symbol]
        return f"{self.spec.url or WS_URL}?streams={'/'.join(streams)}"

    def on_connected(self) -> None:
        super().on_connected()
        for state in self.sync.values():
            state.buffered.clear()
            state.next_attempt = 0.0

    def request_resync(self, book: L2Book) -> None:
        # The WebSocket stays open; diffs arriving from now on are buffered (step 1).
        self.sync[book.instrument].buffered.clear()

    def on_frame(self, frame: str, recv_ns: int) -> None:
        msg = orjson.loads(frame)
        data = msg.get("data") if isinstance(msg, dict) else None
        if not isinstance(data, dict):
            self._on_control(msg)
            return
        symbol = data.get("s")
        book = self.by_symbol.get(symbol) if isinstance(symbol, str) else None
        if book is None:
            raise FrameError("unknown_symbol", repr(symbol))
        if data.get("e") == "depthUpdate":
            self.venue_stats.book_frames += 1
            self.stats[book.instrument].messages += 1
            self._on_diff(book, parse_diff(data), recv_ns)
        elif "b" in data and "B" in data and "e" not in data:
            self._on_book_ticker(book, data)
        # other streams (trades, klines) are not ours to use: ignored without counting

    def _on_control(self, msg: object) -> None:
        if not isinstance(msg, dict):
            raise FrameError("not_an_object", repr(msg)[:80])
        error = msg.get("error", msg) if "code" in msg or "error" in msg else None
        if isinstance(error, dict) and "code" in error:
            raise VenueRejected(f"code {error.get('code')}: {error.get('msg')}")
        if msg.get("e") == "serverShutdown" or msg.get("stream") == "!serverShutdown":
            self.session.reconnect("server shutdown announced")
        # subscription acks ({"result":null,"id":1}) need nothing

    def _on_diff(self, book: L2Book, diff: DepthDiff, recv_ns: int) -> None:
        stats = self.stats[book.instrument]
        if book.state is BookState.LIVE or book.state is BookState.STALE:
            # Step 6: apply live diffs.
            if diff.last_id <= book.venue_seq:
                stats.dropped_stale += 1
                return
            stats.sequence_checked += 1
            if diff.first_id != book.venue_seq + 1:
                stats.sequence_gaps += 1
                self.resync(book, "gap")
                self.sync[book.instrument].buffered.append(diff)
                self._try_snapshot(book, recv_ns)
                return
            self._apply(book, diff)
            stats.updates += 1
            self.emit(book, recv_ns)
            self._audit(book)
            return
        # Step 1: buffer while no snapshot is held.
        self.sync[book.instrument].buffered.append(diff)
        self._try_snapshot(book, recv_ns)

    def on_tick(self, now_ns: int) -> None:
        for book in self.books.values():
            if self.sync[book.instrument].buffered and book.state in (
                BookState.SYNCING,
                BookState.RESYNCING,
            ):
                self._try_snapshot(book, now_ns)
        super().on_tick(now_ns)

    def _try_snapshot(self, book: L2Book, recv_ns: int) -> None:
        sync = self.sync[book.instrument]
        if time.monotonic() < sync.next_attempt:
            return
        if not self.rest_limiter.try_acquire(snapshot_weight(self.snapshot_limit)):
            return  # retried from on_tick once the weight budget refills
        base = self.spec.rest_url or REST_URL
        url = (
            f"{base}/api/v3/depth?symbol={wire_symbol(book.instrument)}&limit={self.snapshot_limit}"
        )
        try:
            # Step 2: fetch the snapshot.
            last_id, bids, asks = parse_snapshot(self.session.http_get(url))
        except TransportError as exc:
            sync.next_attempt = time.monotonic() + 1.0
            self.skip("snapshot_failed", str(exc), book.instrument)
            return
        buffered = sync.buffered
        # Step 3: a snapshot older than the first buffered diff is useless; fetch again.
        if buffered and last_id < buffered[0].first_id:
            sync.next_attempt = time.monotonic() + 0.25
            return
        # Step 4: drop buffered diffs the snapshot already contains.
        pending = [d for d in buffered if d.last_id > last_id]
        stats = self.stats[book.instrument]
        # Step 5: the first remaining diff must bridge the snapshot: U <= L+1 <= u.
        if pending and not (pending[0].first_id <= last_id + 1 <= pending[0].last_id):
            sync.next_attempt = time.monotonic() + 0.25
            stats.sequence_gaps += 1
            return
        stats.dropped_stale += len(buffered) - len(pending)
        # Step 6: book = snapshot, then the buffered diffs in order.
        book.bids.load(bids)
        book.asks.load(asks)
        book.venue_seq = last_id
        stats.snapshots += 1
        stats.updates += len(pending)
        for diff in pending:
            if diff.first_id != book.venue_seq + 1 and diff is not pending[0]:
                buffered.clear()
                raise IntegrityError(book.instrument, "gap", "inside the buffered diffs")
            self._apply(book, diff)
        buffered.clear()
        book.truncate()
        self.go_live(book, recv_ns)
        self._audit(book)

    def _apply(self, book: L2Book, diff: DepthDiff) -> None:
        bids = book.bids
        asks = book.asks
        for price, size in diff.bids:
            bids.set(price, size)
        for price, size in diff.asks:
            asks.set(price, size)
        book.truncate()
        book.venue_seq = diff.last_id
        book.exchange_ts_ns = diff.event_ns

    def _on_book_ticker(self, book: L2Book, data: dict) -> None:
        """Audit input: `@bookTicker` `u` is the order-book update id. It usually arrives
        before the 100 ms diff that reaches that id, so it waits until the book gets there;
        a ticker whose id falls inside a diff's [U, u] never meets a book state and is
        dropped."""
        ticker = (int(data["u"]), *level(data["b"], data["B"]), *level(data["a"], data["A"]))
        if book.state is BookState.LIVE and ticker[0] < book.venue_seq:
            return
        tickers = self.sync[book.instrument].tickers
        if len(tickers) < MAX_WAITING_TICKERS:
            tickers.append(ticker)
        if ticker[0] == book.venue_seq:
            self._audit(book)

    def _audit(self, book: L2Book) -> None:
        """Compare the book with every waiting ticker of the same update id."""
        tickers = self.sync[book.instrument].tickers
        if not tickers or book.state is not BookState.LIVE:
            return
        stats = self.stats[book.instrument]
        while tickers and tickers[0][0] <= book.venue_seq:
            u, bid, bid_size, ask, ask_size = tickers.popleft()
            if u != book.venue_seq:
                continue
            if (
                book.bids.best() == bid
                and book.asks.best() == ask
                and book.bids.sizes.get(bid) == bid_size
                and book.asks.sizes.get(ask) == ask_size
            ):
                stats.audit_agree += 1
                continue
            stats.audit_disagree += 1
            tickers.clear()
            raise IntegrityError(book.instrument, "audit", f"bookTicker {bid}/{ask} at u={u}")
