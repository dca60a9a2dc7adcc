"""Coinbase Advanced Trade order books from `level2`, with `heartbeats` (venue thread).

Channels: `level2` (frames say `l2_data`: a snapshot, then updates), `heartbeats`, and for the
audit `ticker`.

Protocol facts (shared/docs/venue-protocols.md section 2):
1. Subscribe within 5 s of connecting, one channel per message: the frames go out as soon as
   the socket opens (`subscribe_frames`). The ack may arrive after the data: data is
   accepted without waiting for it.
2. Each product's first `l2_data` event is a `snapshot` of the *full* book (the capture's
   BTC-USD frame is 5,079,379 bytes, 46,000 levels): it replaces the book, every level of
   it kept (no truncation: `depth` does not apply to this venue). `update` events carry
   absolute quantities, "0" deleting. The ask side is spelled `"offer"` (never "ask").
3. Integrity: there is no checksum. `sequence_num` is one counter per connection across all
   channels, each frame the previous + 1. A gap cannot be attributed to a channel, so every
   book on the connection is dropped and the connection is re-established (fresh
   snapshots); the gap is counted on every book.
4. Keepalive: `heartbeats` arrive once a second; no frame for 5 s means the connection is
   dead (`silence_timeout_s`). The server sends no app-level ping.
5. Audit (`audit: true`): the `ticker` channel is event-driven, not in lockstep with
   `l2_data`, so its best bid/ask is compared with the book *at arrival* as a loose count
   (`audit_loose_agree` / `audit_loose_disagree`); a disagreement lasting longer than
   `AUDIT_TOLERANCE_S` is logged, and never resyncs anything (2.4).

Failures map as everywhere (`Venue.receive`): an unusable frame is a counted skip; an
`l2_data` frame for one of our products that cannot be used also resyncs that product (it
carried a sequence number, so the venue meant it as part of the book and the book would
otherwise silently miss it). A single book's resync (crossed book, unusable update)
unsubscribes and resubscribes that product's `level2`: the new subscription begins with a
snapshot.
"""

from __future__ import annotations

import calendar
import time
from collections import deque
from itertools import compress
from operator import itemgetter, not_
from typing import Any

import orjson

from mmengine.book import L2Book
from mmengine.errors import FrameError, IntegrityError, VenueRejected
from mmengine.model import BookState
from mmengine.venues.base import INF, Session, Venue, VenueSpec, log

WS_URL = "wss://advanced-trade-ws.coinbase.com"
LEVEL2 = "level2"  # the channel subscribed ...
L2_DATA = "l2_data"  # ... and the channel name its frames carry
HEARTBEATS = "heartbeats"
TICKER = "ticker"
SUBSCRIPTIONS = "subscriptions"
BID = "bid"
OFFER = "offer"  # the ask side: Advanced Trade never says "ask"
SUBSCRIBE_WITHIN_S = 5.0  # the venue drops a connection that has not subscribed by then
SILENCE_S = 5.0  # heartbeats come every ~1 s: 5 s of nothing means the connection is dead
MAX_FRAME_BYTES = 64 * 1024 * 1024  # snapshots are several MB; 64 MiB is ample headroom
COLUMNAR_FROM = 64  # entries from which parse_levels works column-wise
AUDIT_TOLERANCE_S = 5.0  # ticker vs book: alarm when they disagree for longer than this
MESSAGES_PER_SECOND = 8  # unauthenticated messages per second per IP (2.5)

Level = tuple[float, float]

_PRICE = itemgetter("price_level")
_SIZE = itemgetter("new_quantity")
_SIDE = itemgetter("side")


# --- parsing (pure functions over the wire shapes) ------------------------------------------


def parse_levels(updates: list[dict[str, Any]]) -> tuple[list[Level], list[Level]]:
    """`l2_data` event `updates` -> (bids, asks) as floats; raises FrameError on a bad level.

    Sample entry: {"side":"offer","event_time":"2026-08-09T21:05:48.407682Z",
                   "price_level":"65106.54","new_quantity":"0"}

    An update holds a few entries: a plain loop is cheapest. A snapshot holds ~46,000, so
    it is done column-wise by C-level `map`s: the prices, the quantities, the sides, then
    one validation per column (a sum is NaN or inf if any element is) and a split by side.
    """
    if type(updates) is not list:
        raise FrameError("malformed", "updates is not a list")
    if len(updates) < COLUMNAR_FROM:
        bids: list[Level] = []
        asks: list[Level] = []
        for entry in updates:
            p = float(entry["price_level"])
            q = float(entry["new_quantity"])
            if not (0.0 < p < INF and 0.0 <= q < INF):
                raise FrameError("bad_level", f"{entry!r}"[:120])
            side = entry["side"]
            if side == BID:
                bids.append((p, q))
            elif side == OFFER:
                asks.append((p, q))
            else:
                raise FrameError("bad_side", repr(side)[:40])
        return bids, asks
    return _parse_columns(updates)


def _parse_columns(updates: list[dict[str, Any]]) -> tuple[list[Level], list[Level]]:
    """`parse_levels` for a large list (a snapshot), column by column."""
    prices = list(map(float, map(_PRICE, updates)))
    sizes = list(map(float, map(_SIZE, updates)))
    sides = list(map(_SIDE, updates))
    if not (min(prices) > 0.0 and sum(prices) < INF and min(sizes) >= 0.0 and sum(sizes) < INF):
        raise FrameError("bad_level", f"prices {min(prices)}..{max(prices)}, sizes {max(sizes)}")
    n_bids = sides.count(BID)
    if n_bids + sides.count(OFFER) != len(sides):
        bad = next(s for s in sides if s != BID and s != OFFER)
        raise FrameError("bad_side", repr(bad)[:40])
    levels = zip(prices, sizes, strict=True)
    if n_bids == len(sides):
        return list(levels), []
    if n_bids == 0:
        return [], list(levels)
    is_bid = list(map(BID.__eq__, sides))
    return (
        list(compress(zip(prices, sizes, strict=True), is_bid)),
        list(compress(levels, map(not_, is_bid))),
    )


_SECONDS: dict[str, int] = {}  # "2026-08-09T21:05:48" -> Unix seconds (grows by 1 per second)


def timestamp_ns(text: str) -> int:
    """RFC 3339 with up to 9 fractional digits, UTC (`2026-08-09T21:05:48.507547362Z`) -> ns.

    The whole-second part is cached: only the fraction is parsed per frame."""
    head = text[:19]
    sec = _SECONDS.get(head)
    if sec is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        sec = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        _SECONDS[head] = sec
    frac = text[20:-1] if len(text) > 20 and text[19] == "." else ""
    if frac and not frac.isdigit():
        raise ValueError(f"bad timestamp {text!r}")
    return sec * 1_000_000_000 + (int((frac + "000000000")[:9]) if frac else 0)


def product_id(instrument: str) -> str:
    """Our `BTC-USD` is Coinbase's `product_id` as is (2.6); only BASE-QUOTE exists here."""
    return instrument


class CoinbaseAdvanced(Venue):
    """Coinbase Advanced Trade `level2`, verified by the connection-wide `sequence_num`.

    Update: {"channel":"l2_data","timestamp":"2026-08-09T21:05:48.507547362Z",
             "sequence_num":17,"events":[{"type":"update","product_id":"BTC-USD",
             "updates":[{"side":"bid","event_time":"2026-08-09T21:05:48.407682Z",
             "price_level":"56948.21","new_quantity":"0.01321935"}]}]}
    """

    protocol = "coinbase-advanced"
    default_url = WS_URL
    silence_timeout_s = SILENCE_S
    max_frame_bytes = MAX_FRAME_BYTES

    def __init__(self, spec: VenueSpec, session: Session) -> None:
        super().__init__(spec, session)
        self.by_product: dict[str, L2Book] = {}
        for inst, book in self.books.items():
            book.depth = 1 << 62  # the full book, every level (nothing ever truncates it)
            self.by_product[product_id(inst)] = book
        # Public `-USDC` products are answered with the `-USD` product's frames (2.6).
        for inst, book in self.books.items():
            if inst.endswith("-USDC"):
                self.by_product.setdefault(inst[:-1], book)
        self.last_seq = -1  # sequence_num of the last frame on this connection; -1: none yet
        self.sequence_checked = 0  # frames whose sequence_num was checked (connection-wide)
        self.sequence_gaps = 0
        self._dirty = False  # a gap was seen: ignore book data until the reconnect
        self._disagree_since: dict[str, int] = {}  # audit: first ticker disagreeing, ns
        # parse + load time of the latest snapshot events (the figure the issue asks for)
        self.snapshot_seconds: deque[float] = deque(maxlen=100)

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        found: list[str] = []
        for text in sent:
            try:
                msg = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if isinstance(msg, dict) and msg.get("channel") == LEVEL2:
                found += [p for p in msg.get("product_ids", ()) if p not in found]
        return (tuple(found), None) if found else None

    def connect_url(self) -> str:
        return self.spec.url or WS_URL

    def venue_symbol(self, instrument: str) -> str:
        return product_id(instrument)

    def _request(self, op: str, channel: str, products: list[str]) -> str:
        return orjson.dumps({"type": op, "product_ids": products, "channel": channel}).decode()

    def subscribe_frames(self) -> list[str]:
        # Sent right after the socket opens: well inside the venue's 5 s (1.). Three or four
        # messages, under the 8 per second limit.
        products = [product_id(i) for i in self.books]
        frames = [
            self._request("subscribe", HEARTBEATS, products),
            self._request("subscribe", LEVEL2, products),
        ]
        if self.spec.audit:
            frames.append(self._request("subscribe", TICKER, products))
        return frames

    def on_connected(self) -> None:
        super().on_connected()
        self.last_seq = -1  # a new connection counts from 0 again (2.5)
        self._dirty = False
        self._disagree_since.clear()

    def request_resync(self, book: L2Book) -> None:
        # One product: a new level2 subscription starts with a fresh snapshot.
        products = [product_id(book.instrument)]
        self.session.send(self._request("unsubscribe", LEVEL2, products))
        self.session.send(self._request("subscribe", LEVEL2, products))

    # --- frames ----------------------------------------------------------------------------

    def on_frame(self, frame: str, recv_ns: int) -> None:
        msg = orjson.loads(frame)
        if type(msg) is not dict:
            raise FrameError("not_an_object", repr(msg)[:80])
        seq = msg.get("sequence_num")
        if seq is None:
            if msg.get("type") == "error":
                raise VenueRejected(str(msg.get("message"))[:200])
            raise FrameError("no_sequence_num", frame[:80])
        if type(seq) is not int:
            raise FrameError("malformed", f"sequence_num {seq!r}")
        # 3. One counter per connection, across every channel.
        last = self.last_seq
        self.last_seq = seq
        if last >= 0:
            self.sequence_checked += 1
            if seq != last + 1:
                self._on_gap(last + 1, seq)
                return
        if self._dirty:
            return
        channel = msg.get("channel")
        if channel == L2_DATA:
            self._on_l2(msg, recv_ns)
        elif channel == TICKER:
            if self.spec.audit:
                self._on_ticker(msg, recv_ns)
        elif channel in (HEARTBEATS, SUBSCRIPTIONS):
            pass  # heartbeats only keep the connection alive; acks need nothing (1.)
        # other channels (market_trades, candles) are not ours to use

    def _on_gap(self, expected: int, got: int) -> None:
        """3. The loss cannot be attributed: every book on the connection is dirty."""
        self.sequence_gaps += 1
        self._dirty = True
        for book in self.books.values():
            stats = self.stats[book.instrument]
            stats.sequence_gaps += 1
            stats.resyncs += 1
            self.venue_stats.resyncs["sequence_gap"] += 1
            book.clear()
            self.set_state(book, BookState.RESYNCING, f"sequence_num gap: {expected} -> {got}")
        self.session.reconnect(f"sequence_num gap: expected {expected}, got {got}")

    def _on_l2(self, msg: dict[str, Any], recv_ns: int) -> None:
        events = msg["events"]
        if type(events) is not list:
            raise FrameError("malformed", "events is not a list")
        # Validate the whole message before touching any book.
        parsed: list[tuple[L2Book, bool, list[Level], list[Level], int, float]] = []
        for event in events:
            product = event["product_id"]
            book = self.by_product.get(product) if type(product) is str else None
            if book is None:
                # Not a product of ours: counted, and the frame's other events still apply.
                self.skip("unknown_symbol", repr(product)[:40])
                continue
            start = time.perf_counter()
            try:
                kind = event["type"]
                if kind != "snapshot" and kind != "update":
                    raise FrameError("malformed", f"event type {kind!r}"[:80])
                bids, asks = parse_levels(event["updates"])
                ts_ns = timestamp_ns(msg["timestamp"])
            except (FrameError, ValueError, KeyError, TypeError) as exc:
                # The frame carried a sequence number: it was part of this book's stream.
                kind_ = exc.kind if isinstance(exc, FrameError) else "malformed"
                self.skip(kind_, str(exc), book.instrument)
                if book.state is BookState.RESYNCING:
                    return  # a new snapshot is already on its way (8 messages/s limit)
                raise IntegrityError(book.instrument, "unusable_update", str(exc)[:80]) from None
            parse_s = time.perf_counter() - start
            parsed.append((book, kind == "snapshot", bids, asks, ts_ns, parse_s))
        for book, is_snapshot, bids, asks, ts_ns, parse_s in parsed:
            stats = self.stats[book.instrument]
            self.venue_stats.book_frames += 1
            stats.messages += 1
            stats.sequence_checked += 1
            book.exchange_ts_ns = ts_ns
            if is_snapshot:
                # 2. The snapshot is the full book: it replaces whatever was held.
                start = time.perf_counter()
                book.bids.load(bids)
                book.asks.load(asks)
                self.snapshot_seconds.append(parse_s + time.perf_counter() - start)
                book.venue_seq = msg["sequence_num"]
                stats.snapshots += 1
                self.go_live(book, recv_ns)
                continue
            if book.state is not BookState.LIVE and book.state is not BookState.STALE:
                stats.dropped_stale += 1  # before its (new) snapshot: superseded by it
                continue
            set_bid = book.bids.set
            set_ask = book.asks.set
            for p, q in bids:
                set_bid(p, q)
            for p, q in asks:
                set_ask(p, q)
            book.venue_seq = msg["sequence_num"]
            stats.updates += 1
            self.emit(book, recv_ns)

    def _on_ticker(self, msg: dict[str, Any], recv_ns: int) -> None:
        """5. Loose audit: the ticker's best bid/ask against the book at arrival.

        Sample ticker: {"type":"ticker","product_id":"ETH-USD","price":"1919.41",...,
                        "best_bid":"1919.44","best_ask":"1919.49",
                        "best_bid_quantity":"0.02858092","best_ask_quantity":"0.07814824"}
        """
        checks: list[tuple[L2Book, float, float]] = []
        for event in msg["events"]:
            for ticker in event["tickers"]:
                book = self.by_product.get(ticker["product_id"])
                if book is None or book.state is not BookState.LIVE:
                    continue
                checks.append((book, float(ticker["best_bid"]), float(ticker["best_ask"])))
        for book, bid, ask in checks:
            stats = self.stats[book.instrument]
            if book.bids.best() == bid and book.asks.best() == ask:
                stats.audit_loose_agree += 1
                self._disagree_since.pop(book.instrument, None)
                continue
            stats.audit_loose_disagree += 1
            since = self._disagree_since.setdefault(book.instrument, recv_ns)
            if recv_ns - since > AUDIT_TOLERANCE_S * 1e9:
                held = self._log_limiter.allow(f"audit:{book.instrument}")
                if held is not None:
                    log.warning(
                        "%s %s: ticker %s/%s has disagreed with the book for %.1fs",
                        self.name,
                        book.instrument,
                        bid,
                        ask,
                        (recv_ns - since) / 1e9,
                    )
