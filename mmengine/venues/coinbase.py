"""Coinbase Advanced Trade order books from `level2`, with `heartbeats` (venue thread).

Channels: `level2` (frames say `l2_data`: a snapshot, then updates), `heartbeats`, and for the
audit `ticker`. Protocol facts (shared/docs/venue-protocols.md section 2):
1. Subscribe within 5 s of connecting, one channel per message: the frames go out as soon as
   the socket opens. The ack may arrive after the data: data is accepted without it.
2. Each product's first `l2_data` event is a `snapshot` of the *full* book (the capture's
   BTC-USD frame is 5,079,379 bytes, 46,000 levels): it replaces the book, every level of
   it kept (`depth` does not apply). `update` events carry absolute quantities, "0"
   deleting. The ask side is spelled `"offer"` (never "ask").
3. Integrity: no checksum. `sequence_num` is one counter per connection across all channels
   (the shared `ConnectionCounter`), each frame the previous + 1. A gap cannot be attributed
   to a channel, so every book on the connection is dropped and the connection
   re-established (fresh snapshots). An `l2_data` frame that cannot be used used up its
   number all the same: the books it touched missed an update no later number reveals, so
   it resyncs the connection too. A crossed book resubscribes its product only.
4. Keepalive: `heartbeats` arrive once a second; no frame for 5 s: the connection is dead.
5. Audit (`audit: true`): the `ticker` channel is event-driven, not in lockstep with
   `l2_data`, so its best bid/ask is compared with the book at arrival as a loose count; a
   disagreement lasting longer than `AUDIT_TOLERANCE_S` is logged, never resynced (2.4).
"""

from __future__ import annotations

import calendar
import contextlib
import time
from typing import Any, Literal

import msgspec
import orjson

from mmengine.book.events import (
    DECODE_ERRORS,
    EVERY_BOOK,
    AuditTop,
    BookUpdate,
    Event,
    Ignored,
    Sequenced,
    Skipped,
    lost_update,
)
from mmengine.book.integrity import CountedByConnection
from mmengine.book.levels import one
from mmengine.errors import FrameError, VenueRejected
from mmengine.venues.base import TypedFrame, VenueProtocol, VenueSpec, sent_objects

WS_URL = "wss://advanced-trade-ws.coinbase.com"
LEVEL2 = "level2"  # the channel subscribed ...
L2_DATA = "l2_data"  # ... and the channel name its frames carry
HEARTBEATS = "heartbeats"
TICKER = "ticker"
SUBSCRIPTIONS = "subscriptions"
CONTROL_CHANNELS = (HEARTBEATS, SUBSCRIPTIONS)  # channels that carry no market data
BID = "bid"
OFFER = "offer"  # the ask side: Advanced Trade never says "ask"
SILENCE_S = 5.0  # heartbeats come every ~1 s: 5 s of nothing means the connection is dead
MAX_FRAME_BYTES = 64 * 1024 * 1024  # snapshots are several MB; 64 MiB is ample headroom
AUDIT_TOLERANCE_S = 5.0  # ticker vs book: alarm when they disagree for longer than this
MESSAGES_PER_SECOND = 8  # unauthenticated messages per second per IP (2.5)
FULL_BOOK = 1 << 62  # depth of a book that is never truncated
L2_START = '{"channel":"l2_data"'  # how Advanced Trade (and the simulator) begin l2 frames
# msgspec decodes l2_data (46,000-level snapshots) in a quarter of orjson's time: these types.


class _Update(TypedFrame, gc=False):
    side: Literal["bid", "offer"]  # (another side: decoded by orjson, refused as `bad_side`)
    price_level: str
    new_quantity: str


class _Event(TypedFrame, gc=False):
    type: str
    product_id: str
    updates: list[_Update]


class _L2Frame(TypedFrame, gc=False):
    channel: str
    timestamp: str
    sequence_num: int
    events: list[_Event]


L2_FRAME = msgspec.json.Decoder(_L2Frame)


class RfcSeconds:
    """RFC 3339 with up to 9 fractional digits, UTC -> ns; the whole-second part is parsed
    once per second (one per connection: it grows by one entry a second, bounded)."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds: dict[str, int] = {}  # "2026-08-09T21:05:48" -> Unix seconds

    def ns(self, text: str) -> int:
        """`2026-08-09T21:05:48.507547362Z` -> ns since the epoch."""
        head = text[:19]
        sec = self.seconds.get(head)
        if sec is None:
            if len(self.seconds) > 100_000:
                self.seconds.clear()
            sec = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
            self.seconds[head] = sec
        frac = text[20:-1] if len(text) > 20 and text[19] == "." else ""
        if frac and not frac.isdigit():
            raise ValueError(f"bad timestamp {text!r}")
        return sec * 1_000_000_000 + (int((frac + "000000000")[:9]) if frac else 0)


class CoinbaseAdvanced(VenueProtocol):
    """Coinbase Advanced Trade `level2`, verified by the connection-wide `sequence_num`.

    Update: {"channel":"l2_data","timestamp":"2026-08-09T21:05:48.507547362Z",
             "sequence_num":17,"events":[{"type":"update","product_id":"BTC-USD",
             "updates":[{"side":"bid","event_time":"2026-08-09T21:05:48.407682Z",
             "price_level":"56948.21","new_quantity":"0.01321935"}]}]}
    """

    protocol = "coinbase-advanced"
    default_url = WS_URL
    capture_exchange = "COINBASE"
    capture_addresses = ("advanced-trade-ws.coinbase.com",)
    silence_timeout_s = SILENCE_S
    max_frame_bytes = MAX_FRAME_BYTES
    subscribe_limit = (MESSAGES_PER_SECOND, 1.0)
    integrity = CountedByConnection
    connection_sequence = True
    audit_alarm_s = AUDIT_TOLERANCE_S

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        # `product_id` is already BASE-QUOTE (2.6); public `-USDC` products are answered
        # with the `-USD` product's frames.
        self.by_product = {inst: inst for inst in spec.instruments}
        for inst in spec.instruments:
            if inst.endswith("-USDC"):
                self.by_product.setdefault(inst[:-1], inst)
        self.timestamps = RfcSeconds()

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        found: list[str] = []
        for msg in sent_objects(sent):
            if msg.get("channel") == LEVEL2:
                found += [p for p in msg.get("product_ids", ()) if p not in found]
        return (tuple(found), None) if found else None

    def book_depth(self) -> int:
        return FULL_BOOK  # the full book, every level (nothing ever truncates it)

    def _request(self, op: str, channel: str, products: list[str]) -> str:
        return orjson.dumps({"type": op, "product_ids": products, "channel": channel}).decode()

    def subscribe_frames(self) -> list[str]:
        # Right after the socket opens: well inside the venue's 5 s (1.).
        products = list(self.spec.instruments)
        frames = [
            self._request("subscribe", HEARTBEATS, products),
            self._request("subscribe", LEVEL2, products),
        ]
        if self.spec.audit:
            frames.append(self._request("subscribe", TICKER, products))
        return frames

    def resync_frames(self, instrument: str) -> list[str]:
        # One product: a new level2 subscription starts with a fresh snapshot.
        products = [instrument]
        return [
            self._request("unsubscribe", LEVEL2, products),
            self._request("subscribe", LEVEL2, products),
        ]

    def parse(self, frame: str) -> list[Event]:
        msg = None
        if frame.startswith(L2_START):
            # (not the shape above: decoded as any frame below, and judged as such)
            with contextlib.suppress(msgspec.MsgspecError):
                msg = L2_FRAME.decode(frame)
        if msg is None:
            msg = orjson.loads(frame)
        if type(msg) is not dict and type(msg) is not _L2Frame:
            raise FrameError("not_an_object", repr(msg)[:80])
        seq = msg.get("sequence_num")
        if seq is None:
            if msg.get("type") == "error":  # {"type":"error","message":"..."}: no channel
                raise VenueRejected(str(msg.get("message"))[:200])
            raise FrameError("no_sequence_num", frame[:80])
        if type(seq) is not int:
            raise FrameError("malformed", f"sequence_num {seq!r}"[:80])
        channel = msg.get("channel")
        events: list[Event] = [Sequenced(seq)]  # 3. checked before anything is applied
        if channel == L2_DATA:
            try:
                self._l2(msg, seq, events)
            except DECODE_ERRORS as exc:
                raise lost_update((EVERY_BOOK,), exc) from None
        elif channel == TICKER and self.spec.audit:
            try:
                events += self._tickers(msg)
            except DECODE_ERRORS as exc:  # the number is used; the ticker is not
                events.append(Skipped("malformed", f"ticker: {type(exc).__name__}: {exc}"))
        elif channel not in CONTROL_CHANNELS:
            # market_trades, candles, status (and tickers when not auditing): not ours to use
            events.append(Ignored(str(channel)))
        return events

    def _l2(self, msg: TypedFrame | dict[str, Any], seq: int, out: list[Event]) -> None:
        """Every event of an `l2_data` frame, validated before any book is touched."""
        entries = msg["events"]
        if type(entries) is not list:
            raise FrameError("malformed", "events is not a list")
        ts_ns = self.timestamps.ns(msg["timestamp"])
        for event in entries:
            product = event["product_id"]
            instrument = self.by_product.get(product) if type(product) is str else None
            if instrument is None:
                # Not a product of ours: counted, and the frame's other events still apply.
                out.append(Skipped("unknown_symbol", repr(product)[:40]))
                continue
            kind = event["type"]
            if kind != "snapshot" and kind != "update":
                raise FrameError("malformed", f"event type {kind!r}"[:80])
            bids, asks = self.levels.sided(
                event["updates"], BID, OFFER, "price_level", "new_quantity", "side"
            )
            out.append(BookUpdate(instrument, kind == "snapshot", bids, asks, seq, None, -1, ts_ns))

    def _tickers(self, msg: TypedFrame | dict[str, Any]) -> list[Event]:
        """5. Sample ticker: {"type":"ticker","product_id":"ETH-USD","price":"1919.41",...,
        "best_bid":"1919.44","best_ask":"1919.49","best_bid_quantity":"0.02858092",...}"""
        out: list[Event] = []
        for event in msg["events"]:
            for ticker in event["tickers"]:
                instrument = self.by_product.get(ticker["product_id"])
                if instrument is not None:
                    bid = one(ticker["best_bid"], "0")[0]
                    out.append(AuditTop(instrument, bid, one(ticker["best_ask"], "0")[0]))
        return out
