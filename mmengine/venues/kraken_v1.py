"""Kraken spot WebSocket v1 `book-<depth>` (venue thread); what the 2021 capture speaks.

Integrity is Kraken's CRC32 book checksum, shared with v2 (`mmengine.venues.kraken`,
venue-protocols.md 3.4): in v1 the checksum is the message's `c` (a string, on updates only;
in the *last* object of a two-sided update), and v1 checksums the wire strings as received.
Snapshots carry no checksum: the book is LIVE from its snapshot. A mismatch, or a book
update that cannot be used, resubscribes that pair alone.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import msgspec
import orjson
from msgspec import UNSET, Struct, UnsetType, field

from mmengine.book.events import (
    DECODE_ERRORS,
    AuditTop,
    BookUpdate,
    Event,
    Ignored,
    lost_update,
)
from mmengine.book.levels import LevelDecoder, one
from mmengine.book.shape import FrameShape
from mmengine.errors import FrameError, VenueRejected
from mmengine.venues.base import VenueSpec, seconds_to_ns
from mmengine.venues.kraken import KrakenBook, spot_pair

WS_URL_V1 = "wss://ws.kraken.com"
# v1 spells these assets the legacy way (AssetPairs `wsname`); v2 uses the common names (3.6).
V1_ASSET = {"BTC": "XBT", "DOGE": "XDG"}
FROM_V1_ASSET = {v: k for k, v in V1_ASSET.items()}
_Rows = list[list[str]]


class _BookBody(Struct, gc=False, forbid_unknown_fields=True):
    # (null reads as absent, as `.get` does; `as`/`bs` count by their presence)
    a: _Rows | None = None
    b: _Rows | None = None
    c: str | None = None
    as_: _Rows | UnsetType | None = field(name="as", default=UNSET)
    bs: _Rows | UnsetType | None = UNSET


class _BookFrame(Struct, array_like=True, gc=False):
    """A `book-<depth>` frame of one object in the shape `parse_book` reads
    (`TypedBookFrames`)."""

    channel_id: int
    body: _BookBody
    channel: str
    pair: str


def normalize_pair(pair: str) -> str:
    """`XBT/USD` (v1) or `BTC/USD` (v2) -> `BTC-USD`; `XDG` -> `DOGE`."""
    base, sep, quote = pair.partition("/")
    if not sep or not base or not quote:
        raise ValueError(f"expected BASE/QUOTE, was {pair!r}")
    return f"{FROM_V1_ASSET.get(base, base)}-{FROM_V1_ASSET.get(quote, quote)}"


def v1_pair(instrument: str) -> str:
    """`BTC-USD` -> `XBT/USD` (v1 wsname)."""
    base, quote = spot_pair(instrument)
    return f"{V1_ASSET.get(base, base)}/{V1_ASSET.get(quote, quote)}"


def parse_book(instrument: str, msg: list[Any], levels: LevelDecoder) -> BookUpdate:
    """A `book-<depth>` array frame -> a snapshot or an update.

    Snapshot: [1360,{"as":[["0.000022900","13355.87450757","1618678123.481570"]],
               "bs":[...]},"book-1000","ADA/XBT"]
    Update:   [1920,{"a":[["0.042990","364630.28272081","1618678145.920470"]]},
               {"b":[["0.042990","0.00000000","1618678145.920708"]],"c":"4105471083"},
               "book-1000","SC/EUR"]
    """
    first = msg[1]
    if type(first) is not dict:
        raise FrameError("malformed", "a book payload is an object")
    if "as" in first or "bs" in first:
        wire_asks = first.get("as") or []
        wire_bids = first.get("bs") or []
        asks = levels.kraken_rows(wire_asks)
        bids = levels.kraken_rows(wire_bids)
        # The newest level timestamp stands for the snapshot's time (the strings all read
        # `seconds.micros`, so the greatest string is the latest time).
        ts: int | None = seconds_to_ns(max(map(itemgetter(2), wire_asks + wire_bids), default="0"))
        return BookUpdate(instrument, True, bids, asks, None, None, -1, ts)
    # An update is one object, or two when both sides change; `c` sits in the last one.
    asks = bids = []
    checksum = None
    ts = None
    for obj in msg[1:-2]:
        a = obj.get("a")
        if a is not None:
            asks = levels.kraken_rows(a)
            if a:
                ts = a[-1][2]
        b = obj.get("b")
        if b is not None:
            bids = levels.kraken_rows(b)
            if b:
                ts = b[-1][2]
        c = obj.get("c")
        if c is not None:
            checksum = int(c)
    ts_ns = seconds_to_ns(ts) if ts is not None else None
    return BookUpdate(instrument, False, bids, asks, None, None, -1, ts_ns, checksum)


class KrakenV1(KrakenBook):
    """Kraken WebSocket v1: array frames, string levels, string checksum `c`."""

    protocol = "kraken-v1"
    default_url = WS_URL_V1
    capture_addresses = ("kraken.com",)
    ping = '{{"event":"ping","reqid":{}}}'
    book_start = "["  # a data frame (events are objects)
    book_frame = msgspec.json.Decoder(_BookFrame)
    frame_shape = FrameShape(  # [id, {"a"/"b": rows, "c"} or {"as", "bs"}, channel, pair]
        "array", "strings", bids="b", asks="a", checksum="c", snapshot_bids="bs",
        snapshot_asks="as", books="by_symbol", route="pair", channel="channel",
    )  # fmt: skip
    wire_symbol = staticmethod(v1_pair)

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        self.channel = f"book-{spec.depth}"  # route on channelName and pair (3.7)

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        for text in sent:
            msg = orjson.loads(text)
            sub = msg.get("subscription") if isinstance(msg, dict) else None
            if (
                isinstance(sub, dict)
                and msg.get("event") == "subscribe"
                and sub.get("name") == "book"
            ):
                pairs = tuple(normalize_pair(p) for p in msg.get("pair", ()))
                return pairs, int(sub.get("depth", 10))
        return None

    def _subscription(self, event: str, pairs: list[str], name: str = "book") -> str:
        sub: dict[str, Any] = {"name": name}
        if name == "book":
            sub["depth"] = self.spec.depth
        return orjson.dumps({"event": event, "pair": pairs, "subscription": sub}).decode()

    def subscribe_frames(self) -> list[str]:
        frames = [self._subscription("subscribe", list(self.by_symbol))]
        if self.spec.audit:
            # v1 `ticker` (3.3): best bid/ask, updated on trades: a loose audit by arrival.
            frames.append(self._subscription("subscribe", list(self.by_symbol), "ticker"))
        return frames

    def resync_frames(self, instrument: str) -> list[str]:
        pair = [self.symbols[instrument]]  # 3.4: unsubscribe, subscribe for a new snapshot
        return [self._subscription("unsubscribe", pair), self._subscription("subscribe", pair)]

    def book_update(self, book: _BookFrame) -> BookUpdate | None:
        # The usual frame (99 in 100): one book object of ours, `a` and/or `b` with `c`
        # (an update) or `as` and `bs` alone (a snapshot).
        instrument = self.by_symbol.get(book.pair) if book.channel == self.channel else None
        body = book.body
        if instrument is None:
            return None
        if body.as_ is UNSET and body.bs is UNSET:
            if body.c is None:
                return None
            return self.levels.kraken_update(instrument, body.a, body.b, body.c)
        if body.a is None and body.b is None and body.c is None:
            return self.levels.kraken_snapshot(
                instrument,
                [] if body.as_ is UNSET else body.as_ or [],
                [] if body.bs is UNSET else body.bs or [],
            )
        return None

    def _parse_message(self, msg: Any) -> list[Event] | BookUpdate:
        if type(msg) is not list:
            return self._event(msg)
        channel = msg[-2] if len(msg) >= 4 else None
        if type(channel) is not str or type(msg[-1]) is not str:
            raise FrameError("malformed", "a data frame is [channelID, payload..., name, pair]")
        if channel != self.channel:
            if channel == "ticker" and self.spec.audit:
                return [self._ticker(msg)]
            return [Ignored(channel)]  # trade, spread, another depth's book: not ours to use
        instrument = self.by_symbol.get(msg[-1])
        if instrument is None:
            raise FrameError("unknown_symbol", repr(msg[-1])[:40])
        try:
            return parse_book(instrument, msg, self.levels)
        except DECODE_ERRORS as exc:
            raise lost_update((instrument,), exc) from None

    def _ticker(self, msg: list[Any]) -> AuditTop:
        """`[1668,{"a":["13.253900",35,"35.72"],"b":["13.232900",185,"185.18"],...},"ticker",
        "WAVES/EUR"]`: `a`/`b` are [price, whole lot volume, lot volume]."""
        instrument = self.by_symbol.get(msg[-1])
        if instrument is None:
            raise FrameError("unknown_symbol", repr(msg[-1])[:40])
        body = msg[1]
        return AuditTop(instrument, one(body["b"][0], "0")[0], one(body["a"][0], "0")[0])

    def _event(self, msg: Any) -> list[Event]:
        if not isinstance(msg, dict):
            raise FrameError("not_an_object", repr(msg)[:80])
        event = msg.get("event")
        if event == "subscriptionStatus" and msg.get("status") == "error":
            raise VenueRejected(f"{msg.get('pair')}: {msg.get('errorMessage')}")
        if event == "error":
            raise VenueRejected(str(msg.get("errorMessage")))
        return []  # heartbeat, pong, systemStatus, acks
