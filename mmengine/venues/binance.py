"""Binance spot: `@depth@100ms` diffs synced to a REST depth snapshot (venue thread).

Integrity is Binance's "How to manage a local order book correctly" (venue-protocols 1.4),
the shared `RestSnapshotBridge` rule: diffs carry `U` (first update id) and `u` (last); a
book is LIVE only once a REST snapshot with `lastUpdateId = L` is bridged by a diff with
`U <= L+1 <= u`, and after that only a hole (`U > last + 1`) is a gap. A gap resyncs that
one symbol from a new REST snapshot (fetched off the venue thread, within the REST weight
budget) while the WebSocket stays open.

Audit (`audit: true`): `@bookTicker` carries the order-book update id `u`; at an equal id the
book's best bid/ask and their sizes must match it exactly (a mismatch resyncs).
"""

from __future__ import annotations

from typing import Any

import orjson

from mmengine.book.events import (
    DECODE_ERRORS,
    AuditTop,
    BookUpdate,
    Event,
    Ignored,
    Reconnect,
    lost_update,
)
from mmengine.book.integrity import RestSnapshotBridge
from mmengine.book.levels import LevelDecoder, one
from mmengine.errors import FrameError, VenueRejected
from mmengine.venues.base import VenueProtocol, VenueSpec, integer

WS_URL = "wss://stream.binance.com:9443/stream"
REST_URL = "https://api.binance.com"
DEPTH_STREAM = "depth@100ms"
TICKER_STREAM = "bookTicker"
SNAPSHOT_LIMITS = (5, 10, 20, 50, 100, 500, 1000, 5000)  # `limit` of GET /api/v3/depth
REST_WEIGHT_PER_MINUTE = 6000  # IP limit `REQUEST_WEIGHT` (1.1)
MESSAGES_PER_SECOND = 5  # incoming messages per connection, subscribe requests included (1.5)
SILENCE_S = 60.0  # the server pings every 20 s even when the books are quiet (1.5)


def snapshot_weight(limit: int) -> int:
    """REST weight of `GET /api/v3/depth` for a given limit (Binance rest-api.md)."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


def _stream_channel(msg: dict[str, Any]) -> str:
    """`nknusdt@kline_1m` -> `kline_1m`: a combined stream's channel, without the symbol."""
    stream = msg.get("stream")
    return stream.partition("@")[2] or stream if type(stream) is str else "?"


def parse_snapshot(body: str, levels: LevelDecoder) -> tuple[int, Any, Any]:
    """`GET /api/v3/depth` -> (lastUpdateId, bids, asks).

    Sample: {"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],
             "asks":[["4.00000200","12.00000000"]]}
    """
    doc = orjson.loads(body)
    if type(doc) is not dict:
        raise FrameError("malformed", "the depth snapshot is not an object")
    last_id = integer(doc["lastUpdateId"], "lastUpdateId")
    return last_id, levels.rows(doc["bids"]), levels.rows(doc["asks"])


def parse_diff(instrument: str, data: dict[str, Any], levels: LevelDecoder) -> BookUpdate:
    """A `depthUpdate` -> a delta with `U` as first id and `u` as last.

    Sample: {"e":"depthUpdate","E":1633998512568,"s":"NKNUSDT","U":499869753,"u":499869754,
             "b":[["0.35170000","4265.00000000"]],"a":[["0.35290000","10968.00000000"]]}
    """
    first = data["U"]
    last = data["u"]
    ms = data["E"]
    if type(first) is not int or type(last) is not int or type(ms) is not int:
        raise FrameError("malformed", f"U {first!r} u {last!r} E {ms!r}"[:80])
    return BookUpdate(
        instrument,
        False,
        levels.rows(data["b"]),
        levels.rows(data["a"]),
        last,
        first,
        -1,
        ms * 1_000_000,
    )


def parse_book_ticker(instrument: str, data: dict[str, Any]) -> AuditTop:
    """A `@bookTicker` (no `e`, no `E`; `u` is the order-book update id) -> an exact audit.

    Sample: {"u":499869768,"s":"NKNUSDT","b":"0.35210000","B":"672.00000000",
             "a":"0.35260000","A":"3199.00000000"}
    """
    bid, bid_size = one(data["b"], data["B"])
    ask, ask_size = one(data["a"], data["A"])
    return AuditTop(instrument, bid, ask, bid_size, ask_size, venue_seq=integer(data["u"], "u"))


class BinanceSpot(VenueProtocol):
    """Binance spot diff-depth books, verified against REST snapshots and `@bookTicker`."""

    protocol = "binance"
    default_url = WS_URL
    capture_exchange = "BINANCE"
    capture_addresses = ("binance.com",)
    silence_timeout_s = SILENCE_S
    subscribe_limit = (MESSAGES_PER_SECOND, 1.0)
    rest_weight_per_minute = REST_WEIGHT_PER_MINUTE
    integrity = RestSnapshotBridge

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        self.snapshot_limit = next((x for x in SNAPSHOT_LIMITS if x >= spec.depth), 5000)

    @classmethod
    def wire_symbol(cls, instrument: str) -> str:
        """`BTC-USDT` -> `BTCUSDT`. Joining is safe; splitting the wire symbol is not (1.6)."""
        return instrument.replace("-", "")

    def connect_url(self) -> str:
        # Streams go in the URL (1.2): nothing to subscribe after connecting.
        streams = [f"{s.lower()}@{DEPTH_STREAM}" for s in self.by_symbol]
        if self.spec.audit:
            streams += [f"{s.lower()}@{TICKER_STREAM}" for s in self.by_symbol]
        return f"{self.spec.url or WS_URL}?streams={'/'.join(streams)}"

    def snapshot_request(self, instrument: str) -> tuple[str, int]:
        """The REST snapshot of one symbol: (url, weight)."""
        base = self.spec.rest_url or REST_URL
        url = (
            f"{base}/api/v3/depth?symbol={self.wire_symbol(instrument)}&limit={self.snapshot_limit}"
        )
        return url, snapshot_weight(self.snapshot_limit)

    def parse_snapshot(self, body: str) -> tuple[int, Any, Any]:
        return parse_snapshot(body, self.levels)

    def parse(self, frame: str) -> list[Event] | BookUpdate:
        """Combined-stream frames: `{"stream":"<name>","data":{...}}`."""
        msg = orjson.loads(frame)
        data = msg.get("data") if type(msg) is dict else None
        if type(data) is not dict:
            return self._control(msg)
        if data.get("e") == "serverShutdown":
            return [Reconnect("server shutdown announced")]  # reconnect at once (1.5)
        event = data.get("e")
        book_ticker = event is None and "b" in data and "B" in data
        if event != "depthUpdate" and not book_ticker:
            # other streams (aggTrade, kline, 24hrTicker) are not ours to use
            return [Ignored(event if type(event) is str else _stream_channel(msg))]
        symbol = data.get("s")
        instrument = self.by_symbol.get(symbol) if type(symbol) is str else None
        if instrument is None:
            raise FrameError("unknown_symbol", repr(symbol)[:40])
        if book_ticker:
            return [parse_book_ticker(instrument, data)]
        try:
            return parse_diff(instrument, data, self.levels)
        except DECODE_ERRORS as exc:
            raise lost_update((instrument,), exc) from None

    def _control(self, msg: object) -> list[Event]:
        """`{"result":null,"id":1}` (an ack), `{"code":2,"msg":"...","id":1}` (an error, also
        nested as `{"error":{...}}`), `{"e":"serverShutdown","E":...}`."""
        if type(msg) is not dict:
            raise FrameError("not_an_object", repr(msg)[:80])
        error = msg.get("error", msg) if "code" in msg or "error" in msg else None
        if type(error) is dict and "code" in error:
            raise VenueRejected(f"code {error.get('code')}: {error.get('msg')}")
        if msg.get("e") == "serverShutdown":
            return [Reconnect("server shutdown announced")]
        return []
