"""Kraken spot WebSocket v2 `book` (venue thread).

Integrity is v1's CRC32 (`mmengine.venues.kraken`, venue-protocols.md 3.4, `KrakenCrc32`),
on the snapshot and every update. v2 sends prices and sizes as JSON numbers, first written
with the pair's `price_precision` / `qty_precision`, from the v2 `instrument` channel: it is
subscribed first on every connection, and a pair's `book` as soon as its precisions are
known, so no book message arrives that we cannot verify. New precisions restart its book.

A mismatch drops that pair's book and resubscribes that pair alone; the other pairs stay
LIVE. A book update that cannot be used resyncs its pair (nothing else would reveal it).
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from msgspec import Struct, field

from mmengine.book.events import (
    DECODE_ERRORS,
    AuditTop,
    BookUpdate,
    Event,
    Ignored,
    Resync,
    Send,
    Skipped,
    lost_update,
)
from mmengine.book.levels import number
from mmengine.book.shape import FrameShape
from mmengine.errors import FrameError, VenueRejected
from mmengine.venues.base import VenueSpec, WireInt, rfc3339_ns
from mmengine.venues.kraken import KrakenBook, spot_pair

WS_URL_V2 = "wss://ws.kraken.com/v2"


class _Level(Struct, gc=False):
    price: float  # (JSON integers too, as float() of them)
    qty: float


class _BookEntry(Struct, gc=False):
    symbol: str
    bids: list[_Level] = field(default_factory=list)
    asks: list[_Level] = field(default_factory=list)
    checksum: WireInt | None = None
    timestamp: str | None = None


class _BookFrame(Struct, gc=False):
    """`book` in the shape `_book` reads (`TypedBookFrames`)."""

    channel: str
    type: str
    data: list[_BookEntry]


def v2_symbol(instrument: str) -> str:
    """`BTC-USD` -> `BTC/USD`."""
    base, quote = spot_pair(instrument)
    return f"{base}/{quote}"


class KrakenV2(KrakenBook):
    """Kraken WebSocket v2 `book`: JSON-number levels, integer `checksum` on every message.

    Snapshot: {"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",
               "bids":[{"price":45283.5,"qty":0.10000000}],"asks":[{"price":45285.2,
               "qty":0.00100000}],"checksum":2383917627}]}
    Update:   {"channel":"book","type":"update","data":[{"symbol":"BTC/USD",
               "bids":[{"price":45283.4,"qty":1.54582015}],"asks":[],"checksum":66975070,
               "timestamp":"2023-10-06T17:35:55.440295Z"}]}
    """

    protocol = "kraken-v2"
    default_url = WS_URL_V2
    capture_addresses = ("kraken.com/v2",)
    ping = '{{"method":"ping","req_id":{}}}'
    book_start = '{"channel":"book"'  # how Kraken (and our simulator) begin book frames
    book_frame = msgspec.json.Decoder(_BookFrame)
    frame_shape = FrameShape(  # `_BookFrame` with one entry, of a pair whose precisions we know
        "object", "numbers", bids="bids", asks="asks", books="by_symbol", route="symbol",
        route_in_entry=True, formats="formats", delta="update", entry_list=True,
        sides_required=False, timestamp="timestamp", checksum="checksum")  # fmt: skip
    wire_symbol = staticmethod(v2_symbol)

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        # symbol -> its precisions for the checksum (`levels.pair_formats`), from `instrument`
        self.formats: dict[str, Any] = {}
        self.book_subscribed: set[str] = set()  # on this connection

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        symbols: list[str] = []
        depth = None
        for text in sent:
            msg = orjson.loads(text)
            params = msg.get("params") if isinstance(msg, dict) else None
            book = isinstance(params, dict) and params.get("channel") == "book"
            if book and msg.get("method") == "subscribe":
                # `book` holds only when params is a dict (mypy does not narrow through it)
                symbols += [s for s in params.get("symbol", ()) if s not in symbols]  # type: ignore[union-attr]
                depth = int(params.get("depth", 10))  # type: ignore[union-attr]
        return (tuple(s.replace("/", "-") for s in symbols), depth) if symbols else None

    def _request(self, method: str, params: dict[str, Any]) -> str:
        self._req_id += 1
        return orjson.dumps({"method": method, "params": params, "req_id": self._req_id}).decode()

    def _book_request(self, method: str, symbols: list[str]) -> str:
        params: dict[str, Any] = {"channel": "book", "symbol": symbols, "depth": self.spec.depth}
        if method == "subscribe":
            params["snapshot"] = True
        return self._request(method, params)

    def subscribe_frames(self) -> list[str]:
        # The book subscription follows once the pairs' precisions are known (module doc).
        frames = [self._request("subscribe", {"channel": "instrument", "snapshot": True})]
        if self.spec.audit:
            # `event_trigger: bbo` emits on every change of best bid or offer (3.2).
            symbols = list(self.symbols.values())
            ticker = {"channel": "ticker", "symbol": symbols, "event_trigger": "bbo"}
            frames.append(self._request("subscribe", ticker))
        return frames

    def resync_frames(self, instrument: str) -> list[str]:
        symbol = self.symbols[instrument]
        if symbol not in self.book_subscribed:
            return []  # subscribed as soon as its precisions arrive
        return [
            self._book_request("unsubscribe", [symbol]),
            self._book_request("subscribe", [symbol]),
        ]

    def on_connected(self) -> None:
        self.book_subscribed.clear()

    def book_update(self, book: _BookFrame) -> BookUpdate | None:
        # The usual frame: one entry of a pair whose precisions are known.
        if len(book.data) != 1:
            return None
        item = book.data[0]
        instrument = self.by_symbol.get(item.symbol)
        formats = self.formats.get(item.symbol)
        kind = book.type
        if instrument is None or formats is None or (kind != "update" and kind != "snapshot"):
            return None
        return self.levels.kraken_numbers_update(
            instrument,
            kind == "snapshot",
            item.bids,
            item.asks,
            formats,
            item.checksum,
            item.timestamp,
        )

    def _parse_message(self, msg: Any) -> list[Event] | BookUpdate:
        if type(msg) is not dict:
            raise FrameError("not_an_object", repr(msg)[:80])
        channel = msg.get("channel")
        if channel == "book":
            return self._book(msg)
        if channel == "instrument":
            return self._instrument(msg)
        if channel == "ticker" and self.spec.audit:
            return self._ticker(msg)
        if channel is None and msg.get("success") is False:
            raise VenueRejected(f"{msg.get('symbol')}: {msg.get('error')}")
        if channel is None or channel in ("heartbeat", "status"):
            return []  # acks and pong; heartbeat and status carry no market data
        return [Ignored(str(channel))]  # trade, ohlc, level3: not ours to use

    def _book(self, msg: dict[str, Any]) -> list[Event] | BookUpdate:
        """Every entry is validated before any book is touched; if one fails, the books of
        the entries before it missed their update too."""
        snapshot = msg["type"] == "snapshot"
        events: list[Event] = []
        instrument = None
        try:
            for item in msg["data"]:
                instrument = self.by_symbol.get(item["symbol"])
                if instrument is None:
                    raise FrameError("unknown_symbol", repr(item["symbol"])[:40])
                formats = self.formats.get(item["symbol"])
                if formats is None:
                    raise FrameError("no_precision", repr(item["symbol"])[:40])
                checksum = item.get("checksum")
                if checksum is not None and type(checksum) is not int:
                    raise FrameError("malformed", f"checksum {checksum!r}"[:80])
                bids = self.levels.kraken_numbers(item.get("bids") or [], formats)
                asks = self.levels.kraken_numbers(item.get("asks") or [], formats)
                ts = item.get("timestamp")
                ts_ns = rfc3339_ns(ts) if ts else None
                update = BookUpdate(
                    instrument, snapshot, bids, asks, None, None, -1, ts_ns, checksum
                )
                events.append(update)
        except DECODE_ERRORS as exc:
            touched = [e.instrument for e in events if isinstance(e, BookUpdate)]
            raise lost_update([*touched, instrument] if instrument else touched, exc) from None
        # one update bare (the driver's fast path), several as a list
        return events[0] if len(events) == 1 else events  # type: ignore[return-value]

    def _instrument(self, msg: dict[str, Any]) -> list[Event]:
        """`{"channel":"instrument","type":"snapshot","data":{"assets":[...],"pairs":[{"symbol":
        "BTC/USD","price_precision":1,"qty_precision":8,...}]}}`"""
        events: list[Event] = []
        found: list[str] = []
        for pair in msg["data"]["pairs"]:
            symbol = pair.get("symbol")
            if symbol not in self.by_symbol:
                continue
            formats = self.levels.pair_formats(
                int(pair["price_precision"]), int(pair["qty_precision"])
            )
            previous = self.formats.get(symbol)
            if previous != formats:  # the same precisions: keep the forms written with them
                self.formats[symbol] = formats
            if symbol not in self.book_subscribed:
                found.append(symbol)
            elif previous != formats:
                # The kept checksum strings used the old precisions: start that book over.
                events.append(Resync(self.by_symbol[symbol], "precision_changed"))
        if found:
            self.book_subscribed.update(found)
            events.append(Send([self._book_request("subscribe", found)]))
        if msg.get("type") == "snapshot":
            missing = [s for s in self.by_symbol if s not in self.formats]
            if missing:
                events.append(
                    Skipped("unknown_symbol", f"no instrument data: {', '.join(missing)}")
                )
        return events

    def _ticker(self, msg: dict[str, Any]) -> list[Event]:
        """`{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":45283.4,
        "bid_qty":0.5,"ask":45285.2,"ask_qty":0.1,...}]}` (numbers, not strings)."""
        events: list[Event] = []
        for entry in msg["data"]:
            instrument = self.by_symbol.get(entry["symbol"])
            if instrument is None:
                raise FrameError("unknown_symbol", repr(entry["symbol"])[:40])
            events.append(AuditTop(instrument, number(entry["bid"]), number(entry["ask"])))
        return events
