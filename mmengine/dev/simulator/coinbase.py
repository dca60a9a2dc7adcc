"""Coinbase Advanced Trade, simulated (generator thread and connection threads).

Written from `shared/docs/venue-protocols.md` section 2 and the capture, never from our
client (`mmengine.venues.coinbase`):

- WebSocket at `/`. `{"type":"subscribe","product_ids":[...],"channel":"level2"}` (also
  `heartbeats`, `ticker`; `unsubscribe` likewise). A bad request gets
  `{"type":"error","message":...}` (no channel, no sequence number).
- Every other frame has the envelope `channel`, `client_id`, `timestamp` (RFC 3339, ns),
  `sequence_num`, `events[]`, and `sequence_num` is **one counter per connection** across
  every channel, starting at 0. So each client gets its own copy of each frame: the frames
  of client n travel on a private topic `c<n>`.
- `level2` -> channel `l2_data`: one `snapshot` event per product with the whole book, then
  `update` events (absolute `new_quantity`, "0" deletes), sides `"bid"` and `"offer"`.
  The `subscriptions` ack lists all of the client's subscriptions and follows the data.
- `heartbeats`: one frame a second with `heartbeat_counter` (+1 each).
- `ticker`: a `snapshot` on subscribe, then an `update` whenever the best bid or ask moves,
  with `best_bid`, `best_ask` and their quantities.

Everything a client is sent is numbered and queued on the generator thread, in order (acks
and snapshots requested by a client wait for the next market step): the sequence numbers a
client sees are contiguous unless a fault says otherwise. A `gap` fault numbers a market
step's frames and throws them away, so each client sees `sequence_num` jump.

`CoinbaseDeepSim` (`coinbase-advanced-deep`) pads each snapshot with 20,000 far levels per
side, as the venue's full-book snapshots are (the capture's BTC-USD frame held 46,000
levels in 5 MB): the padding sits 10-50 % away from the market and never changes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import orjson
from websockets.protocol import State

from mmengine.capture import CaptureEvent
from mmengine.dev.simulator.kit import Level, Part, WireKit
from mmengine.dev.simulator.kraken import MirrorBook
from mmengine.dev.simulator.market import ASK, BID, Change
from mmengine.dev.simulator.server import ClientConn, OutFrame, Query, ReplayFrame, SimProtocol

WS_PATH = "/"
CHANNELS = ("level2", "heartbeats", "ticker")
HEARTBEAT_S = 1.0
SIDE = {BID: "bid", ASK: "offer"}


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def wire(value: Decimal) -> str:
    """A price or size as Coinbase writes it: no exponent, no trailing zeros."""
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _now_rfc3339(ns: bool = True) -> str:
    now = time.time_ns()
    base = datetime.fromtimestamp(now // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{now % 1_000_000_000:09d}"
    return f"{base}.{frac if ns else frac[:6]}Z"


@dataclass
class _Client:
    """One connection's state: its subscriptions and its own sequence counter."""

    conn: ClientConn
    topic: str
    seq: int = 0
    subs: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHANNELS})
    pending: list[str] = field(default_factory=list)  # bodies waiting to be numbered
    heartbeat_counter: int = 0
    next_heartbeat: float = 0.0


class CoinbaseKit(WireKit):
    """Coinbase Advanced Trade `l2_data` for the conformance suite: one `sequence_num` per
    connection across every frame, full-book snapshots, update events naming their side."""

    protocol = "coinbase-advanced"
    instruments = ("BTC-USD", "ETH-USD")
    truncates = False
    multi_instrument = True  # `events` holds one event per product

    def __init__(self) -> None:
        super().__init__()
        self.seq = 0

    def _frame(self, events: list[dict[str, Any]]) -> str:
        frame = {
            "channel": "l2_data",
            "client_id": "",
            "timestamp": "2026-08-09T21:05:48.507547362Z",
            "sequence_num": self.seq,
            "events": events,
        }
        self.seq += 1
        return _dumps(frame)

    def _event(self, kind: str, instrument: str, bids: list[Level], asks: list[Level]) -> Any:
        entries = [(SIDE[BID], lv) for lv in bids] + [(SIDE[ASK], lv) for lv in asks]
        updates = [
            {
                "side": side,
                "event_time": "2026-08-09T21:05:48.407682Z",
                "price_level": p,
                "new_quantity": q,
            }
            for side, (p, q) in entries
        ]
        return {"type": kind, "product_id": instrument, "updates": updates}

    def snapshot(self, instrument: str, bids: list[Level], asks: list[Level]) -> list[str]:
        self.load(instrument, bids, asks)
        return [self._frame([self._event("snapshot", instrument, bids, asks)])]

    def update(self, parts: list[Part]) -> str:
        for instrument, bids, asks in parts:
            self.apply(instrument, bids, asks)
        return self._frame([self._event("update", *part) for part in parts])


class CoinbaseSim(SimProtocol):
    """Coinbase Advanced Trade: `level2` (`l2_data`), `heartbeats`, `ticker`."""

    venue = "coinbase-advanced"
    ws_path = WS_PATH
    kit = CoinbaseKit
    truth_rule = "connection"  # `sequence_num` counts per connection, across channels
    padding_levels: ClassVar[int] = 0  # far levels added to each snapshot side

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mirrors = {i: MirrorBook(m) for i, m in self.markets.items()}
        self.clients: dict[int, _Client] = {}  # guarded by self.lock
        self._top: dict[str, tuple[Any, Any]] = {}
        self._padding = {i: self._make_padding(i) for i in self.markets}

    # --- frames --------------------------------------------------------------------------

    def _make_padding(self, instrument: str) -> str:
        """`padding_levels` far levels per side as a JSON fragment (built once)."""
        n = self.padding_levels
        if not n:
            return ""
        market = self.markets[instrument]
        tick = market.params.tick
        mid = market.params.mid
        rng = random.Random(f"padding:{instrument}")
        event_time = _now_rfc3339(ns=False)
        entries = []
        for side, start, step in ((BID, mid * Decimal("0.9"), -1), (ASK, mid * Decimal("1.1"), 1)):
            px = start.quantize(tick)
            span = (mid * Decimal("0.4") / n / tick).to_integral_value() or 1
            for _ in range(n):
                px += step * tick * rng.randint(1, int(span))
                size = market.params.lot * rng.randint(1, 100_000)
                entries.append(
                    {
                        "side": SIDE[side],
                        "event_time": event_time,
                        "price_level": wire(px),
                        "new_quantity": wire(size),
                    }
                )
        return _dumps(entries)[1:-1]

    def _envelope(self, client: _Client, channel: str, events: str, ts: str) -> str:
        text = (
            f'{{"channel":"{channel}","client_id":"","timestamp":"{ts}",'
            f'"sequence_num":{client.seq},"events":{events}}}'
        )
        client.seq += 1
        return text

    def _snapshot_events(self, instrument: str) -> str:
        mirror = self.mirrors[instrument]
        event_time = _now_rfc3339(ns=False)
        entries = [
            {
                "side": SIDE[side],
                "event_time": event_time,
                "price_level": wire(p),
                "new_quantity": wire(q),
            }
            for side in (BID, ASK)
            for p, q in mirror.top(side, 1_000_000)
        ]
        body = _dumps(entries)
        padding = self._padding.get(instrument, "")
        if padding:
            body = body[:-1] + ("," if entries else "") + padding + "]"
        return f'[{{"type":"snapshot","product_id":"{instrument}","updates":{body}}}]'

    def _ticker_event(self, instrument: str, kind: str) -> str | None:
        mirror = self.mirrors[instrument]
        bids = mirror.top(BID, 1)
        asks = mirror.top(ASK, 1)
        if not bids or not asks:
            return None
        (bid, bid_q), (ask, ask_q) = bids[0], asks[0]
        ticker = {
            "type": "ticker",
            "product_id": instrument,
            "price": wire((bid + ask) / 2),
            "volume_24_h": "1000",
            "low_24_h": wire(bid),
            "high_24_h": wire(ask),
            "low_52_w": wire(bid),
            "high_52_w": wire(ask),
            "price_percent_chg_24_h": "0",
            "best_bid": wire(bid),
            "best_ask": wire(ask),
            "best_bid_quantity": wire(bid_q),
            "best_ask_quantity": wire(ask_q),
        }
        return _dumps([{"type": kind, "tickers": [ticker]}])

    def _ack_events(self, client: _Client) -> str:
        subs: dict[str, list[str]] = {}
        for channel, products in client.subs.items():
            if products:
                subs[channel] = ["heartbeats"] if channel == "heartbeats" else list(products)
        return _dumps([{"subscriptions": subs}])

    # --- generator thread (self.lock held) --------------------------------------------------

    def _live_clients(self) -> list[_Client]:
        for cid in [c for c, s in self.clients.items() if s.conn.ws.state is not State.OPEN]:
            del self.clients[cid]
        return list(self.clients.values())

    def update_frames(
        self, instrument: str, changes: Sequence[Change], wanted: frozenset[str]
    ) -> list[OutFrame]:
        ts = _now_rfc3339()
        clients = self._live_clients()
        frames: list[OutFrame] = []
        # Requests since the last step: acks, snapshots, errors, numbered in order.
        for client in clients:
            for kind in client.pending:
                if kind.startswith("snapshot:"):
                    text = self._snapshot_events(kind[9:])
                    # The book as of now: this step's changes (of `instrument`) are
                    # applied below.
                    product = kind[9:]
                    self.truth.mark(
                        product,
                        client.seq,
                        snapshot=True,
                        feed=client.conn.id,
                        before=product == instrument,
                    )
                    frames.append(
                        OutFrame(client.topic, self._envelope(client, "l2_data", text, ts))
                    )
                elif kind.startswith("ticker:"):
                    events = self._ticker_event(kind[7:], "snapshot")
                    if events is not None:
                        env = self._envelope(client, "ticker", events, ts)
                        frames.append(OutFrame(client.topic, env))
                elif kind == "ack":
                    env = self._envelope(client, "subscriptions", self._ack_events(client), ts)
                    frames.append(OutFrame(client.topic, env))
                else:  # an error frame, verbatim (no sequence number)
                    frames.append(OutFrame(client.topic, kind))
            client.pending.clear()
        self.mirrors[instrument].apply(changes)
        updates = [
            {
                "side": SIDE[c.side],
                "event_time": ts[:26] + "Z",
                "price_level": wire(c.price),
                "new_quantity": wire(c.size),
            }
            for c in changes
        ]
        l2 = _dumps([{"type": "update", "product_id": instrument, "updates": updates}])
        mirror = self.mirrors[instrument]
        top = (tuple(mirror.top(BID, 1)), tuple(mirror.top(ASK, 1)))
        top_changed = top != self._top.get(instrument)
        self._top[instrument] = top
        ticker = self._ticker_event(instrument, "update") if top_changed else None
        now = time.monotonic()
        for client in clients:
            if instrument in client.subs["level2"]:
                self.truth.mark(instrument, client.seq, feed=client.conn.id)
                frames.append(OutFrame(client.topic, self._envelope(client, "l2_data", l2, ts)))
            if ticker is not None and instrument in client.subs["ticker"]:
                frames.append(OutFrame(client.topic, self._envelope(client, "ticker", ticker, ts)))
            if client.subs["heartbeats"] and now >= client.next_heartbeat:
                client.next_heartbeat = now + HEARTBEAT_S
                client.heartbeat_counter += 1
                beat = _dumps(
                    [
                        {
                            "current_time": ts.replace("T", " ").replace("Z", " +0000 UTC"),
                            "heartbeat_counter": client.heartbeat_counter,
                        }
                    ]
                )
                frames.append(
                    OutFrame(client.topic, self._envelope(client, "heartbeats", beat, ts))
                )
        return frames

    def malformed_frame(self, instrument: str) -> OutFrame:
        """Half of an update frame: not JSON, and no sequence number used up."""
        text = _dumps(
            {
                "channel": "l2_data",
                "timestamp": _now_rfc3339(),
                "sequence_num": 0,
                "events": [{"type": "update", "product_id": instrument, "updates": []}],
            }
        )
        return OutFrame(None, text[: len(text) // 2])

    def error_frame(self, instrument: str) -> OutFrame | None:
        """`{"type":"error","message":...}`: no channel and no sequence number (2.4)."""
        return OutFrame(None, _dumps({"type": "error", "message": "rate limit exceeded"}))

    # --- connection threads -------------------------------------------------------------------

    def accept(self, path: str, query: Query) -> Sequence[str] | None:
        return [] if path == WS_PATH else None

    def on_client_message(self, client: ClientConn, text: str) -> list[str]:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self._reply_error(client, "failure to parse subscribe message")
        if not isinstance(msg, dict):
            return self._reply_error(client, "failure to parse subscribe message")
        op = msg.get("type")
        channel = msg.get("channel")
        products = msg.get("product_ids", [])
        if op not in ("subscribe", "unsubscribe"):
            return self._reply_error(client, f"unknown message type {op!r}")
        if channel not in CHANNELS:
            return self._reply_error(client, f"unknown channel {channel!r}")
        if not isinstance(products, list) or not all(isinstance(p, str) for p in products):
            return self._reply_error(client, "product_ids must be a list of strings")
        unknown = [p for p in products if p not in self.instruments]
        if unknown:
            return self._reply_error(client, f"invalid product_id {unknown[0]!r}")
        if not self.markets:  # replaying: the recording holds every frame, acks included
            client.set_topics(["replay"])
            return []
        with self.lock:
            state = self._state(client)
            subs = state.subs[channel]
            if op == "subscribe":
                for p in products:
                    if p not in subs:
                        subs.append(p)
                        if channel == "level2":
                            state.pending.append(f"snapshot:{p}")
                        elif channel == "ticker":
                            state.pending.append(f"ticker:{p}")
            else:
                state.subs[channel] = [p for p in subs if p not in products]
            state.pending.append("ack")
        return []

    def _state(self, client: ClientConn) -> _Client:
        state = self.clients.get(client.id)
        if state is None:
            state = self.clients[client.id] = _Client(client, f"c{client.id}")
            client.set_topics([state.topic])
        return state

    def _reply_error(self, client: ClientConn, message: str) -> list[str]:
        text = _dumps({"type": "error", "message": message})
        if not self.markets:
            return [text]
        with self.lock:
            self._state(client).pending.append(text)
        return []

    # --- replay ----------------------------------------------------------------------------

    def load_replay(
        self, recv: Sequence[CaptureEvent], http_events: Sequence[CaptureEvent]
    ) -> list[ReplayFrame]:
        """Every recorded frame in order, to each client once it has subscribed; `l2_data`
        updates are the frames a `gap` fault skips."""
        frames = []
        for event in recv:
            sequenced = '"l2_data"' in event.data[:200] and '"update"' in event.data[:400]
            frames.append(ReplayFrame(None, event.data, sequenced))
        return frames


class CoinbaseDeepSim(CoinbaseSim):
    """`CoinbaseSim` with full-book-sized snapshots (20,000 extra levels per side)."""

    venue = "coinbase-advanced-deep"
    padding_levels = 20_000
