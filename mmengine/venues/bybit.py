"""Bybit v5 public order books, spot and linear: `orderbook.{depth}.{symbol}` (venue thread).

Protocol facts (shared/docs/venue-protocols.md section 5):
1. One WebSocket per category: `/v5/public/spot` and `/v5/public/linear`. Subscribe with
   `{"req_id":..,"op":"subscribe","args":["orderbook.200.BTCUSDT"]}`; spot takes at most 10
   args per request (we send at most 10 for both). Depths 1, 50, 200, 1000 for both
   categories; `orderbook.1` sends snapshots only.
2. Integrity is the shared `ContiguousIds` rule: a `snapshot` replaces the book at any time
   (`u == 1`: the venue restarted it, counted in `restarts`); a `delta` must have
   `u == previous u + 1` on its topic. A gap, or a delta before any snapshot, resubscribes
   that one topic (unsubscribe, subscribe: a new snapshot follows).
3. `seq` is the cross sequence (strictly increasing, comparable across depths of a symbol):
   kept in every `BookTop` as `cross_seq`.
4. Keepalive: `{"req_id":"..","op":"ping"}` every 20 s; the pong is an `op: "ping"` ack.
5. Audit (`audit: true`, linear only): `tickers.{symbol}` is a snapshot followed by partial
   deltas, merged field by field (5.7). At an equal cross sequence (`cs`) its best bid/ask
   must agree (a mismatch resyncs); otherwise, always on the real venue, a loose count.
   Spot tickers carry no bid/ask at all: no spot audit.
Symbols: the same wire string `BTCUSDT` names spot and the linear perpetual, so one venue
object serves one category. Spot `BTC-USDT` <-> `BTCUSDT`; linear `BTC-USDT-PERP` <->
`BTCUSDT` and `BTC-USDC-PERP` <-> `BTCPERP`. Wire symbols are never split.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, ClassVar

import msgspec
import orjson
from msgspec import UNSET, Struct, UnsetType

from mmengine.book.events import (
    DECODE_ERRORS,
    BookUpdate,
    Event,
    Ignored,
    lost_update,
)
from mmengine.book.integrity import ContiguousIds
from mmengine.book.levels import LevelDecoder
from mmengine.book.shape import FrameShape
from mmengine.errors import FrameError, VenueRejected
from mmengine.venues.base import TypedBookFrames, VenueSpec, WireInt, integer, sent_objects

SPOT_URL = "wss://stream.bybit.com/v5/public/spot"
DEPTHS = (1, 50, 200, 1000)  # orderbook.N for spot and linear (5.2)
ARGS_PER_REQUEST = 10  # spot's limit per subscribe request (5.5); linear follows it too
PING_S = 20.0  # send {"op":"ping"} this often (5.5)
SILENCE_S = 45.0  # pongs come every 20 s even on a quiet book: two missed means dead
SNAPSHOT = "snapshot"
DELTA = "delta"

log = logging.getLogger("mmengine.venue")


class _BookData(Struct, gc=False):
    s: str
    b: list[list[str]]
    a: list[list[str]]
    u: WireInt
    seq: WireInt | UnsetType = UNSET


class _BookFrame(Struct, gc=False):
    """`orderbook.N` in the shape `parse_book` reads (`TypedBookFrames`: msgspec is a quarter
    cheaper than orjson and dict lookups here)."""

    topic: str
    type: str
    data: _BookData
    ts: WireInt | UnsetType = UNSET
    cts: WireInt | UnsetType = UNSET


def spot_symbol(instrument: str) -> str:
    """`BTC-USDT` -> `BTCUSDT` (joining is safe; splitting is not)."""
    parts = instrument.split("-")
    if len(parts) != 2:
        raise ValueError(f"bybit-v5-spot: {instrument!r} is not BASE-QUOTE")
    return parts[0] + parts[1]


def parse_book(instrument: str, msg: dict[str, Any], levels: LevelDecoder) -> BookUpdate:
    """A whole `orderbook.N` message, validated before any book is touched.

    Delta (spot): {"topic":"orderbook.200.BTCUSDT","ts":1786310816618,"type":"delta",
        "data":{"s":"BTCUSDT","b":[["65140.4","0.875077"]],"a":[["65154.6","0.09948"],
        ["65239.1","0"]],"u":62505425,"seq":112488545865},"cts":1786310816585}
    """
    kind = msg["type"]
    if kind != SNAPSHOT and kind != DELTA:
        raise FrameError("malformed", f"type {kind!r}"[:80])
    data = msg["data"]
    if type(data) is not dict:
        raise FrameError("malformed", "data is not an object")
    seq = data.get("seq")
    ts = msg.get("cts", msg.get("ts", 0))  # the matching engine's time when sent
    return BookUpdate(
        instrument,
        kind == SNAPSHOT,
        levels.rows(data["b"]),
        levels.rows(data["a"]),
        integer(data["u"], "u"),
        None,
        -1 if seq is None else integer(seq, "seq"),
        integer(ts, "ts") * 1_000_000,
    )


class BybitBook(TypedBookFrames):
    """What both categories share; a subclass fixes the category and its symbols."""

    capture_exchange = "BYBIT"
    category: ClassVar[str]
    keepalive_interval_s = PING_S
    silence_timeout_s = SILENCE_S
    depths = DEPTHS
    integrity = ContiguousIds
    ticker_audit: ClassVar[bool] = False  # the category's tickers carry bid1/ask1
    book_start = '{"topic":"orderbook.'  # as Bybit (and our simulator) write them: `topic` first
    book_frame = msgspec.json.Decoder(_BookFrame)
    frame_shape = FrameShape(  # `_BookFrame`, its `data.s` the topic's symbol
        "object", "strings", bids="b", asks="a", books="by_topic", route="topic",
        symbols="symbols", symbol="s", last_id="u", cross_seq="seq", time_ms=("cts", "ts"),
    )  # fmt: skip

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        self.book_channel = f"orderbook.{spec.depth}."
        self.topics = {inst: self.book_channel + s for inst, s in self.symbols.items()}
        self.by_topic = {topic: inst for inst, topic in self.topics.items()}
        self.by_ticker = {f"tickers.{s}": inst for inst, s in self.symbols.items()}
        self._req_ids = itertools.count(1)
        self._rows_update = self.levels.rows_update  # the usual frame's one call
        if spec.audit and not self.ticker_audit:
            log.info("%s: %s tickers carry no best bid/ask: no audit", spec.name, self.category)

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        """The depth of the recording's `orderbook.{depth}.{symbol}` subscriptions (the
        deepest, if several). Its instruments are left to the capture's header: `BTCUSDT`
        names spot and perpetual alike and cannot be split into ours."""
        depth = None
        for msg in sent_objects(sent):
            if msg.get("op") != "subscribe":
                continue
            for arg in msg.get("args", ()):
                parts = arg.split(".") if isinstance(arg, str) else ()
                if len(parts) == 3 and parts[0] == "orderbook" and parts[1].isdigit():
                    depth = max(depth or 0, int(parts[1]))
        return ((), depth) if depth is not None else None

    def _request(self, op: str, args: list[str]) -> str:
        return orjson.dumps(
            {"req_id": f"{op}-{next(self._req_ids)}", "op": op, "args": args}
        ).decode()

    def subscribe_frames(self) -> list[str]:
        args = list(self.by_topic)
        if self.spec.audit and self.ticker_audit:
            args += list(self.by_ticker)
        return [
            self._request("subscribe", args[i : i + ARGS_PER_REQUEST])
            for i in range(0, len(args), ARGS_PER_REQUEST)
        ]

    def resync_frames(self, instrument: str) -> list[str]:
        topic = [self.topics[instrument]]  # the new subscription begins with a snapshot
        return [self._request("unsubscribe", topic), self._request("subscribe", topic)]

    def keepalive_frame(self) -> str:
        return orjson.dumps({"req_id": f"ping-{next(self._req_ids)}", "op": "ping"}).decode()

    def book_update(self, book: _BookFrame) -> BookUpdate | None:
        instrument = self.by_topic.get(book.topic)
        data = book.data
        kind = book.type
        if (
            instrument is None
            or data.s != self.symbols[instrument]
            or kind not in ("delta", "snapshot")  # (a constant tuple: DELTA, SNAPSHOT)
        ):
            return None
        ts = book.cts
        if ts is UNSET:
            ts = 0 if book.ts is UNSET else book.ts
        seq = data.seq
        return self._rows_update(
            instrument,
            kind == SNAPSHOT,
            data.b,
            data.a,
            data.u,
            None if seq is UNSET else seq,
            ts,
        )

    def _parse_message(self, msg: Any) -> list[Event] | BookUpdate:
        if type(msg) is not dict:
            raise FrameError("not_an_object", repr(msg)[:80])
        topic = msg.get("topic")
        if topic is None:
            # acks and pongs: {"success":true,"ret_msg":"pong","conn_id":"..","op":"ping"}
            if msg.get("success") is False:
                raise VenueRejected(f"{msg.get('op')}: {msg.get('ret_msg')}"[:200])
            return []
        instrument = self.by_topic.get(topic) if type(topic) is str else None
        if instrument is not None:
            try:
                update = parse_book(instrument, msg, self.levels)
                if msg["data"]["s"] != self.symbols[instrument]:
                    raise FrameError("unknown_symbol", f"{msg['data']['s']!r} on {topic}"[:80])
            except DECODE_ERRORS as exc:
                raise lost_update((instrument,), exc) from None
            return update
        instrument = self.by_ticker.get(topic) if type(topic) is str else None
        if instrument is not None:
            if self.spec.audit and self.ticker_audit:
                return self._ticker(instrument, msg)
            return [Ignored("tickers")]
        if type(topic) is str and not topic.startswith(self.book_channel):
            # kline.1.BTCUSDT, publicTrade.BTCUSDT, another depth's orderbook: not ours to
            # use (the last part of a topic is always the symbol)
            return [Ignored(topic.rpartition(".")[0] or topic)]
        raise FrameError("unknown_topic", repr(topic)[:80])

    def _ticker(self, instrument: str, msg: dict[str, Any]) -> list[Event]:
        """5. The audit, where the category's tickers carry bid1/ask1 (`ticker_audit`)."""
        raise NotImplementedError


class BybitSpot(BybitBook):
    """Bybit v5 spot order book (`wss://stream.bybit.com/v5/public/spot`)."""

    protocol = "bybit-v5-spot"
    default_url = SPOT_URL
    capture_addresses = (
        "stream.bybit.com/v5/public/spot",
        "stream-testnet.bybit.com/v5/public/spot",
    )
    category = "spot"
    wire_symbol = staticmethod(spot_symbol)
