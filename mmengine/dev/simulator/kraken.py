"""Kraken spot WebSocket v1 and v2 `book` channel, served by the simulator (generator and
connection threads).

Written from `shared/docs/venue-protocols.md` section 3 and the capture, never from our client
(`mmengine.venues.kraken_v1`, `kraken_v2`), so that a mistake in the client is not copied here:

- v1 at `/`: `{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book",
  "depth":10}}` -> one `subscriptionStatus` per pair, then the array snapshot
  `[channelID,{"as":[...],"bs":[...]},"book-10","XBT/USD"]`; updates `{"a":[...]}` and/or
  `{"b":[...]}` (two objects when both sides change, `"c"` in the last one). Levels are
  `[price, volume, timestamp]` strings, prices with the pair's decimals, volumes with 8.
- v2 at `/v2`: `instrument` channel (pairs with `price_precision` / `qty_precision`), then
  `book` with JSON-number levels and an integer `checksum` on the snapshot and every update.
- Per subscribed depth, the client sees the top `depth` levels of each side: a change inside
  that window is sent, a level deleted from the book is sent with volume 0, a level pushed
  out of the window by a better one is *not* deleted (the client truncates), and a level
  that slides into the window is sent as an update (the venue's behaviour, 3.4).
- Checksum (3.4): CRC32 of the top 10 asks then top 10 bids, `price + qty` with the `.`
  removed and leading zeros stripped; v1 over the wire strings, v2 over the numbers written
  with the pair's precisions.
- Pings: v1 `{"event":"ping","reqid":N}` -> `{"event":"pong","reqid":N}`; v2
  `{"method":"ping","req_id":N}` -> `{"method":"pong","req_id":N,...}`.

A new book subscription is served on the next market step of its instrument, on the
generator thread: it gets the book as of the previous step, then that step's update, so a
client never misses or repeats an update because of when it subscribed.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from mmengine.capture import CaptureEvent
from mmengine.dev.simulator.kit import ASK as KIT_ASK
from mmengine.dev.simulator.kit import BID as KIT_BID
from mmengine.dev.simulator.kit import Level, Part, WireKit, number
from mmengine.dev.simulator.market import ASK, BID, Change, Market
from mmengine.dev.simulator.server import ClientConn, OutFrame, Query, ReplayFrame, SimProtocol

DEPTHS = (10, 25, 100, 500, 1000)
V1_NAMES = {"BTC": "XBT", "DOGE": "XDG"}


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _decimals(step: Decimal) -> int:
    return max(0, -int(step.normalize().as_tuple().exponent))


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def crc_text(text: str) -> str:
    """Kraken's per-level form: `.` removed, leading zeros stripped."""
    return text.replace(".", "").lstrip("0")


class MirrorBook:
    """The book as the venue last announced it (one instrument), from market `Change`s."""

    def __init__(self, market: Market) -> None:
        self.sides: dict[str, dict[Decimal, Decimal]] = {
            BID: dict(market.levels(BID)),
            ASK: dict(market.levels(ASK)),
        }

    def apply(self, changes: Sequence[Change]) -> None:
        for change in changes:
            side = self.sides[change.side]
            if change.size == 0:
                side.pop(change.price, None)
            else:
                side[change.price] = change.size

    def top(self, side: str, n: int) -> list[tuple[Decimal, Decimal]]:
        levels = self.sides[side]
        prices = sorted(levels, reverse=(side == BID))[:n]
        return [(p, levels[p]) for p in prices]


class _KrakenSim(SimProtocol):
    """What both versions share: windows per depth, diffs, checksums, pending snapshots."""

    version = 1
    truth_rule = "checksum"  # no ids: a book is named by its top-10 checksum

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pairs = {i: self.pair_name(i) for i in self.instruments}
        self.by_pair = {p: i for i, p in self.pairs.items()}
        self.price_dp: dict[str, int] = {}
        self.qty_dp: dict[str, int] = {}
        for inst, market in self.markets.items():
            self.price_dp[inst] = _decimals(market.params.tick)
            self.qty_dp[inst] = _decimals(market.params.lot)
        self.mirrors = {i: MirrorBook(m) for i, m in self.markets.items()}
        # (instrument, depth) -> the window the clients of that topic hold
        self.windows: dict[tuple[str, int], tuple[dict[Decimal, Decimal], ...]] = {}
        # (instrument, depth) -> clients waiting for their snapshot (served on the next step)
        self.pending: dict[tuple[str, int], list[ClientConn]] = {}
        self.corrupt: set[str] = set()
        self.channel_ids = {i: 1000 + n for n, i in enumerate(self.instruments)}
        self._replay_topics: dict[str, str] = {}

    # --- names -----------------------------------------------------------------------------

    def pair_name(self, instrument: str) -> str:
        base, quote = instrument.split("-")[:2]
        if self.version == 1:
            base, quote = V1_NAMES.get(base, base), V1_NAMES.get(quote, quote)
        return f"{base}/{quote}"

    @staticmethod
    def topic(instrument: str, depth: int) -> str:
        return f"book:{depth}:{instrument}"

    # --- book views --------------------------------------------------------------------------

    def window(self, instrument: str, depth: int) -> tuple[dict[Decimal, Decimal], ...]:
        mirror = self.mirrors[instrument]
        return dict(mirror.top(BID, depth)), dict(mirror.top(ASK, depth))

    def checksum(self, instrument: str, bids: dict, asks: dict) -> int:
        ask_levels = sorted(asks.items())[:10]
        bid_levels = sorted(bids.items(), reverse=True)[:10]
        text = "".join(
            crc_text(self.price_str(instrument, p)) + crc_text(self.qty_str(instrument, q))
            for p, q in ask_levels + bid_levels
        )
        return zlib.crc32(text.encode())

    def price_str(self, instrument: str, price: Decimal) -> str:
        return f"{price:.{self.price_dp[instrument]}f}"

    def qty_str(self, instrument: str, qty: Decimal) -> str:
        # v1 writes volumes with 8 decimals; v2's checksum uses the pair's qty precision
        dp = self.qty_dp[instrument]
        return f"{qty:.{max(8, dp) if self.version == 1 else dp}f}"

    @property
    def replaying(self) -> bool:
        return not self.markets

    # --- generator thread ------------------------------------------------------------------

    def update_frames(
        self, instrument: str, changes: Sequence[Change], wanted: frozenset[str]
    ) -> list[OutFrame]:
        corrupt = instrument in self.corrupt
        keys = [k for k in self.windows if k[0] == instrument]
        # Waiting subscribers get the book as of the last step, then this step's update.
        for key in keys:
            clients = self.pending.pop(key, None)
            if clients:
                old_bids, old_asks = self.windows[key]
                for client in clients:
                    self._send_snapshot(client, instrument, key[1], old_bids, old_asks, True)
        self.mirrors[instrument].apply(changes)
        frames = []
        for key in keys:
            old_bids, old_asks = self.windows[key]
            new_bids, new_asks = self.windows[key] = self.window(instrument, key[1])
            bids = _diff(old_bids, new_bids, self.mirrors[instrument].sides[BID])
            asks = _diff(old_asks, new_asks, self.mirrors[instrument].sides[ASK])
            if not bids and not asks:
                continue  # nothing changed inside this window
            crc = self.checksum(instrument, new_bids, new_asks)
            self.truth.mark(instrument, crc, clean=not corrupt)
            if corrupt:
                crc = (crc + 1) % 2**32
                self.corrupt.discard(instrument)
            frames.append(
                OutFrame(
                    self.topic(instrument, key[1]),
                    self.update_text(instrument, key[1], bids, asks, crc),
                )
            )
        return frames

    def corrupt_checksum(self, instrument: str) -> bool:
        self.corrupt.add(instrument)
        return True

    def _send_snapshot(
        self,
        client: ClientConn,
        instrument: str,
        depth: int,
        bids: dict,
        asks: dict,
        before: bool = False,
    ) -> None:
        text = self.snapshot_text(instrument, depth, bids, asks)
        client.set_topics([*client.topics, self.topic(instrument, depth)])
        if self.truth.enabled:  # marked before it is queued (the writer may send it at once)
            crc = self.checksum(instrument, bids, asks)
            self.truth.mark(instrument, crc, snapshot=True, before=before, queued=True)
        client.outbox.put(text)

    def _subscribe(self, client: ClientConn, instrument: str, depth: int) -> None:
        """Queue a book subscription (with `self.lock` held)."""
        key = (instrument, depth)
        if key not in self.windows:
            # The first subscriber of this window: its snapshot is the current book.
            self.windows[key] = self.window(instrument, depth)
            bids, asks = self.windows[key]
            self._send_snapshot(client, instrument, depth, bids, asks)
            return
        self.pending.setdefault(key, []).append(client)

    def _unsubscribe(self, client: ClientConn, instrument: str, depth: int) -> None:
        key = (instrument, depth)
        waiting = self.pending.get(key)
        if waiting and client in waiting:
            waiting.remove(client)
        topic = self.topic(instrument, depth)
        client.set_topics([t for t in client.topics if t != topic])

    def malformed_frame(self, instrument: str) -> OutFrame:
        text = self.update_text(instrument, 10, [], [], 0)
        return OutFrame(None, text[: len(text) // 2])

    # --- replay ----------------------------------------------------------------------------

    def accept(self, path: str, query: Query) -> Sequence[str] | None:
        return [] if path == self.ws_path else None

    def load_replay(
        self, recv: Sequence[CaptureEvent], http_events: Sequence[CaptureEvent]
    ) -> list[ReplayFrame]:
        """Every recorded frame, in order, to each client once it has subscribed."""
        return [ReplayFrame(None, e.data) for e in recv]

    def replay_connection(self, events: Sequence[CaptureEvent]) -> str | None:
        """The connection that subscribed `book` (cryptofeed opens one per channel)."""
        for event in events:
            if event.kind == "send" and '"book"' in event.data:
                return event.conn
        return super().replay_connection(events)

    def _replay_subscribe(self, client: ClientConn) -> list[str]:
        """Replay: any subscription starts the recording, which holds the acks and the book
        frames the venue sent."""
        client.set_topics(["replay"])
        return []

    # --- per version -------------------------------------------------------------------------

    def snapshot_text(self, instrument: str, depth: int, bids: dict, asks: dict) -> str:
        raise NotImplementedError

    def update_text(
        self,
        instrument: str,
        depth: int,
        bids: list[tuple[Decimal, Decimal]],
        asks: list[tuple[Decimal, Decimal]],
        crc: int,
    ) -> str:
        raise NotImplementedError


def _diff(
    old: dict[Decimal, Decimal], new: dict[Decimal, Decimal], book: dict[Decimal, Decimal]
) -> list[tuple[Decimal, Decimal]]:
    """What a client holding window `old` must apply to hold `new`: changed or entering
    levels, and zero volume for levels deleted from the book (not for those pushed out)."""
    out = [(p, q) for p, q in new.items() if old.get(p) != q]
    out += [(p, Decimal(0)) for p in old if p not in new and p not in book]
    return out


class KrakenV1Kit(WireKit):
    """Kraken v1 `book-10` for the conformance suite: array frames with string levels,
    the CRC32 of the book after each update in `c` (in the last object)."""

    protocol = "kraken-v1"
    instruments = ("BTC-USD", "ETH-USD")
    depth = 10

    def pair(self, instrument: str) -> str:
        base, quote = instrument.split("-")
        return f"{V1_NAMES.get(base, base)}/{V1_NAMES.get(quote, quote)}"

    def checksum(self, instrument: str) -> int:
        levels = self.top(instrument, KIT_ASK, 10) + self.top(instrument, KIT_BID, 10)
        return zlib.crc32("".join(self.form(p) + self.form(q) for p, q in levels).encode())

    def form(self, value: str) -> str:
        return crc_text(value)

    def _levels(self, levels: list[Level]) -> list[list[Any]]:
        return [[p, q, "1618678145.920470"] for p, q in levels]

    def snapshot(self, instrument: str, bids: list[Level], asks: list[Level]) -> list[str]:
        self.load(instrument, bids, asks)
        body = {"as": self._levels(asks), "bs": self._levels(bids)}
        return [_dumps([42, body, f"book-{self.depth}", self.pair(instrument)])]

    def update(self, parts: list[Part]) -> str:
        """One object per side of each part, in order; `c` in the last one."""
        (instrument,) = {inst for inst, _, _ in parts}
        objects: list[dict[str, Any]] = []
        for _, bids, asks in parts:
            self.apply(instrument, bids, asks)
            if asks:
                objects.append({"a": self._levels(asks)})
            if bids:
                objects.append({"b": self._levels(bids)})
        if not objects:
            objects.append({"a": []})
        objects[-1]["c"] = str(self.checksum(instrument))
        return _dumps([42, *objects, f"book-{self.depth}", self.pair(instrument)])


class KrakenV2Kit(KrakenV1Kit):
    """Kraken v2 `book` for the conformance suite: the `instrument` channel's precisions
    first, then JSON-number levels with the CRC32 in `checksum` on every message."""

    protocol = "kraken-v2"
    multi_instrument = True  # `data` holds one entry per symbol
    numbers = True
    PRICE = ".2f"
    QTY = ".8f"

    def pair(self, instrument: str) -> str:
        return instrument.replace("-", "/")

    def form(self, value: str) -> str:
        return crc_text(value)

    def checksum(self, instrument: str) -> int:
        levels = self.top(instrument, KIT_ASK, 10) + self.top(instrument, KIT_BID, 10)
        text = "".join(
            crc_text(format(float(p), self.PRICE)) + crc_text(format(float(q), self.QTY))
            for p, q in levels
        )
        return zlib.crc32(text.encode())

    def connect_frames(self) -> list[str]:
        pairs = [
            {"symbol": self.pair(i), "price_precision": 2, "qty_precision": 8}
            for i in self.instruments
        ]
        return [_dumps({"channel": "instrument", "type": "snapshot", "data": {"pairs": pairs}})]

    def _numbers(self, levels: list[Level]) -> list[dict[str, Any]]:
        # A decimal string of a finite number goes out as a JSON number; poison as it is.
        out = []
        for p, q in levels:
            out.append(
                {
                    "price": number(p) if number(p) is not None else p,
                    "qty": number(q) if number(q) is not None else q,
                }
            )
        return out

    def _entry(self, instrument: str, bids: list[Level], asks: list[Level]) -> dict[str, Any]:
        return {
            "symbol": self.pair(instrument),
            "bids": self._numbers(bids),
            "asks": self._numbers(asks),
            "checksum": self.checksum(instrument),
            "timestamp": "2023-10-06T17:35:55.440295Z",
        }

    def snapshot(self, instrument: str, bids: list[Level], asks: list[Level]) -> list[str]:
        self.load(instrument, bids, asks)
        entry = self._entry(instrument, bids, asks)
        return [_dumps({"channel": "book", "type": "snapshot", "data": [entry]})]

    def update(self, parts: list[Part]) -> str:
        data = []
        for instrument, bids, asks in parts:
            self.apply(instrument, bids, asks)
            data.append(self._entry(instrument, bids, asks))
        return _dumps({"channel": "book", "type": "update", "data": data})


class KrakenV1Sim(_KrakenSim):
    """Kraken WebSocket v1 (`wss://ws.kraken.com`)."""

    venue = "kraken-v1"
    ws_path = "/"
    version = 1
    kit = KrakenV1Kit

    def _level(self, instrument: str, price: Decimal, qty: Decimal, ts: str) -> list[str]:
        return [self.price_str(instrument, price), self.qty_str(instrument, qty), ts]

    def snapshot_text(self, instrument: str, depth: int, bids: dict, asks: dict) -> str:
        ts = f"{time.time():.6f}"
        payload = {
            "as": [self._level(instrument, p, q, ts) for p, q in sorted(asks.items())],
            "bs": [
                self._level(instrument, p, q, ts) for p, q in sorted(bids.items(), reverse=True)
            ],
        }
        return _dumps(
            [self.channel_ids[instrument], payload, f"book-{depth}", self.pairs[instrument]]
        )

    def error_frame(self, instrument: str) -> OutFrame | None:
        return OutFrame(None, _dumps({"errorMessage": "Exceeded msg rate", "event": "error"}))

    def update_text(
        self,
        instrument: str,
        depth: int,
        bids: list[tuple[Decimal, Decimal]],
        asks: list[tuple[Decimal, Decimal]],
        crc: int,
    ) -> str:
        ts = f"{time.time():.6f}"
        parts: list[dict[str, Any]] = []
        if asks:
            parts.append({"a": [self._level(instrument, p, q, ts) for p, q in asks]})
        if bids:
            parts.append({"b": [self._level(instrument, p, q, ts) for p, q in bids]})
        if not parts:
            parts.append({"a": []})
        parts[-1]["c"] = str(crc)  # `c` sits in the last object (3.3)
        return _dumps(
            [self.channel_ids[instrument], *parts, f"book-{depth}", self.pairs[instrument]]
        )

    def on_client_message(self, client: ClientConn, text: str) -> list[str]:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [_dumps({"errorMessage": "Malformed request", "event": "error"})]
        if not isinstance(msg, dict):
            return [_dumps({"errorMessage": "Malformed request", "event": "error"})]
        event = msg.get("event")
        if event == "ping":
            reply = {"event": "pong"}
            if "reqid" in msg:
                reply["reqid"] = msg["reqid"]
            return [_dumps(reply)]
        if event not in ("subscribe", "unsubscribe"):
            return [_dumps({"errorMessage": "Unsupported event", "event": "error"})]
        if self.replaying:
            return self._replay_subscribe(client)
        sub = msg.get("subscription") or {}
        depth = int(sub.get("depth", 10))
        replies = []
        for pair in msg.get("pair") or []:
            status: dict[str, Any] = {
                "channelName": f"book-{depth}",
                "event": "subscriptionStatus",
                "pair": pair,
                "subscription": {"depth": depth, "name": "book"},
            }
            instrument = self.by_pair.get(pair)
            if sub.get("name") != "book" or instrument is None or depth not in DEPTHS:
                why = (
                    f"Currency pair not supported {pair}"
                    if instrument is None
                    else "Subscription depth not supported"
                )
                replies.append(
                    _dumps(
                        {
                            "errorMessage": why,
                            "event": "subscriptionStatus",
                            "pair": pair,
                            "status": "error",
                            "subscription": sub,
                        }
                    )
                )
                continue
            status["channelID"] = self.channel_ids[instrument]
            with self.lock:
                status["status"] = "subscribed" if event == "subscribe" else "unsubscribed"
                # The ack goes out before the snapshot, as on the venue.
                client.outbox.put(_dumps(status))
                if event == "subscribe":
                    self._subscribe(client, instrument, depth)
                else:
                    self._unsubscribe(client, instrument, depth)
        return replies


class KrakenV2Sim(_KrakenSim):
    """Kraken WebSocket v2 (`wss://ws.kraken.com/v2`)."""

    venue = "kraken-v2"
    ws_path = "/v2"
    version = 2
    kit = KrakenV2Kit

    def _levels(self, items: list[tuple[Decimal, Decimal]]) -> list[dict[str, float]]:
        return [{"price": float(p), "qty": float(q)} for p, q in items]

    def snapshot_text(self, instrument: str, depth: int, bids: dict, asks: dict) -> str:
        entry = {
            "symbol": self.pairs[instrument],
            "bids": self._levels(sorted(bids.items(), reverse=True)),
            "asks": self._levels(sorted(asks.items())),
            "checksum": self.checksum(instrument, bids, asks),
        }
        return _dumps({"channel": "book", "type": "snapshot", "data": [entry]})

    def error_frame(self, instrument: str) -> OutFrame | None:
        now = _now_rfc3339()
        text = _dumps(
            {
                "error": "Exceeded msg rate",
                "method": "subscribe",
                "success": False,
                "time_in": now,
                "time_out": now,
            }
        )
        return OutFrame(None, text)

    def update_text(
        self,
        instrument: str,
        depth: int,
        bids: list[tuple[Decimal, Decimal]],
        asks: list[tuple[Decimal, Decimal]],
        crc: int,
    ) -> str:
        entry = {
            "symbol": self.pairs[instrument],
            "bids": self._levels(bids),
            "asks": self._levels(asks),
            "checksum": crc,
            "timestamp": _now_rfc3339(),
        }
        return _dumps({"channel": "book", "type": "update", "data": [entry]})

    def _instrument_snapshot(self) -> str:
        pairs = []
        for inst, pair in self.pairs.items():
            market = self.markets.get(inst)
            base, quote = pair.split("/")
            pairs.append(
                {
                    "symbol": pair,
                    "base": base,
                    "quote": quote,
                    "status": "online",
                    "price_precision": self.price_dp.get(inst, 1),
                    "qty_precision": self.qty_dp.get(inst, 8),
                    "price_increment": float(market.params.tick) if market else 0.1,
                    "qty_increment": float(market.params.lot) if market else 1e-8,
                }
            )
        return _dumps(
            {"channel": "instrument", "type": "snapshot", "data": {"assets": [], "pairs": pairs}}
        )

    def on_client_message(self, client: ClientConn, text: str) -> list[str]:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [_dumps({"error": "Malformed request", "success": False})]
        if not isinstance(msg, dict):
            return [_dumps({"error": "Malformed request", "success": False})]
        method = msg.get("method")
        req_id = msg.get("req_id")
        now = _now_rfc3339()
        if method == "ping":
            return [_dumps({"method": "pong", "req_id": req_id, "time_in": now, "time_out": now})]
        if self.replaying and method == "subscribe":
            return self._replay_subscribe(client)
        params = msg.get("params") or {}
        channel = params.get("channel")
        if method not in ("subscribe", "unsubscribe") or channel not in ("book", "instrument"):
            return [
                _dumps(
                    {
                        "error": f"Unsupported request {method} {channel}",
                        "method": method,
                        "req_id": req_id,
                        "success": False,
                        "time_in": now,
                        "time_out": now,
                    }
                )
            ]
        if channel == "instrument":
            ack = {
                "method": method,
                "req_id": req_id,
                "result": {"channel": "instrument", "snapshot": True},
                "success": True,
                "time_in": now,
                "time_out": now,
            }
            return (
                [_dumps(ack), self._instrument_snapshot()]
                if method == "subscribe"
                else [_dumps(ack)]
            )
        depth = int(params.get("depth", 10))
        replies = []
        for symbol in params.get("symbol") or []:
            instrument = self.by_pair.get(symbol)
            if instrument is None or depth not in DEPTHS:
                why = (
                    f"Currency pair not supported {symbol}"
                    if instrument is None
                    else "Invalid depth"
                )
                replies.append(
                    _dumps(
                        {
                            "error": why,
                            "method": method,
                            "req_id": req_id,
                            "success": False,
                            "symbol": symbol,
                            "time_in": now,
                            "time_out": now,
                        }
                    )
                )
                continue
            ack = {
                "method": method,
                "req_id": req_id,
                "result": {
                    "channel": "book",
                    "depth": depth,
                    "snapshot": True,
                    "symbol": symbol,
                },
                "success": True,
                "time_in": now,
                "time_out": now,
            }
            with self.lock:
                client.outbox.put(_dumps(ack))
                if method == "subscribe":
                    self._subscribe(client, instrument, depth)
                else:
                    self._unsubscribe(client, instrument, depth)
        return replies
