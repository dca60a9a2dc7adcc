"""Bybit v5 spot and linear, simulated (generator thread and connection threads).

Public order books and tickers.

Written from `shared/docs/venue-protocols.md` section 5, never from our client
(`mmengine.venues.bybit`):

- One server answers both category paths, `/v5/public/spot` and `/v5/public/linear`, as
  `stream.bybit.com` does. Instruments `BTC-USDT` are spot `BTCUSDT`; `BTC-USDT-PERP` is
  linear `BTCUSDT` and `BTC-USDC-PERP` linear `BTCPERP`. The same wire symbol on the two
  paths names two different books.
- `{"req_id":"..","op":"subscribe","args":["orderbook.200.BTCUSDT","tickers.BTCUSDT"]}` ->
  `{"success":true,"ret_msg":"subscribe","conn_id":"..","op":"subscribe"}` (spot adds
  `req_id` only when one was sent; linear always carries one, "" by default). Unknown
  topics or more than 10 spot args: `"success":false` with the reason in `ret_msg`.
- `orderbook.{1,50,200,1000}.{symbol}`: a `snapshot` (on subscribe), then a `delta` per
  market step with `u` = previous + 1 per topic and `seq` (cross sequence, strictly
  increasing per symbol, shared by every depth); `ts` and `cts` in ms. `orderbook.1` sends
  a snapshot whenever the best level changes. The synthetic market never holds more than
  40 levels a side, so every change is inside a 50/200/1000 window.
- `tickers.{symbol}`: linear sends a full `snapshot`, then *partial* `delta`s holding only
  the changed `bid1*`/`ask1*` fields, with `cs` = the book's `seq` at that step; spot sends
  snapshots with no bid/ask fields at all (lastPrice, 24h stats, usdIndexPrice).
- `{"op":"ping"}` -> `{"success":true,"ret_msg":"pong","conn_id":..,"op":"ping"}`.
- `restart(instrument)` makes the next step announce a venue restart: every depth of that
  instrument gets a `snapshot` with `u == 1`, and deltas continue from 2.

A new book subscription is served on the next market step of its instrument, on the
generator thread: the book as of the previous step, then that step's delta, so the `u`
chain a client sees never breaks because of when it subscribed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from mmengine.capture import CaptureEvent
from mmengine.dev.simulator.kit import Level, Part, WireKit
from mmengine.dev.simulator.kraken import MirrorBook
from mmengine.dev.simulator.market import ASK, BID, Change
from mmengine.dev.simulator.server import ClientConn, OutFrame, Query, ReplayFrame, SimProtocol

PATHS = {"/v5/public/spot": "spot", "/v5/public/linear": "linear"}
DEPTHS = (1, 50, 200, 1000)
SPOT_MAX_ARGS = 10


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def wire(value: Decimal) -> str:
    """A price or size with no exponent and no trailing zeros (spot's style: "65140.4")."""
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def wire_name(instrument: str) -> tuple[str, str] | None:
    """Our name -> (category, Bybit symbol), or None for what Bybit does not list here."""
    parts = instrument.split("-")
    if len(parts) == 2:
        return "spot", parts[0] + parts[1]
    if len(parts) == 3 and parts[2] == "PERP" and parts[1] in ("USDT", "USDC"):
        return "linear", parts[0] + ("USDT" if parts[1] == "USDT" else "PERP")
    return None


def _ms() -> int:
    return time.time_ns() // 1_000_000


class BybitKit(WireKit):
    """Bybit v5 linear for the conformance suite: `orderbook.50` snapshots, then deltas
    `u == previous u + 1` with a rising cross sequence."""

    protocol = "bybit-v5-linear"
    instruments = ("BTC-USDT-PERP", "ETH-USDT-PERP")
    depth = 50

    def __init__(self) -> None:
        super().__init__()
        self.u = dict.fromkeys(self.instruments, 5000)
        self.seq = 900_000

    def _frame(self, kind: str, instrument: str, bids: list[Level], asks: list[Level]) -> str:
        name = wire_name(instrument)
        assert name is not None
        symbol = name[1]
        self.seq += 3
        return _dumps(
            {
                "topic": f"orderbook.{self.depth}.{symbol}",
                "ts": 1_786_310_816_618,
                "type": kind,
                "data": {
                    "s": symbol,
                    "b": [list(lv) for lv in bids],
                    "a": [list(lv) for lv in asks],
                    "u": self.u[instrument],
                    "seq": self.seq,
                },
                "cts": 1_786_310_816_585,
            }
        )

    def snapshot(self, instrument: str, bids: list[Level], asks: list[Level]) -> list[str]:
        self.load(instrument, bids, asks)
        return [self._frame("snapshot", instrument, bids, asks)]

    def update(self, parts: list[Part]) -> str:
        (instrument,) = {inst for inst, _, _ in parts}
        bids = [lv for _, b, _ in parts for lv in b]
        asks = [lv for _, _, a in parts for lv in a]
        self.apply(instrument, bids, asks)
        self.u[instrument] += 1
        return self._frame("delta", instrument, bids, asks)


class BybitSpotKit(BybitKit):
    protocol = "bybit-v5-spot"
    instruments = ("BTC-USDT", "ETH-USDT")


class BybitSim(SimProtocol):
    """Bybit v5 public spot and linear: `orderbook.N` and `tickers`."""

    venue = "bybit-v5-linear"
    ws_path = "/v5/public/linear"
    kit: ClassVar[type[WireKit]] = BybitKit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names: dict[str, tuple[str, str]] = {}
        for inst in self.instruments:
            name = wire_name(inst)
            if name is None:
                raise ValueError(f"bybit: {inst!r} is not BASE-QUOTE or BASE-USDT/USDC-PERP")
            self.names[inst] = name
        self.by_name = {v: k for k, v in self.names.items()}
        self.mirrors = {i: MirrorBook(m) for i, m in self.markets.items()}
        self.u: dict[tuple[str, int], int] = {
            (i, d): self.rng.randint(1_000, 90_000_000) for i in self.markets for d in DEPTHS
        }
        self.seq = {i: self.rng.randint(10**9, 10**11) for i in self.markets}
        self.pending: dict[str, list[tuple[ClientConn, str, int]]] = {}
        self.restarting: set[str] = set()
        self.active: set[str] = set()  # book topics ever subscribed (frames worth encoding)
        self._top: dict[str, tuple[Any, Any]] = {}

    # --- keys and frames ---------------------------------------------------------------------

    def key(self, instrument: str, topic: str) -> str:
        """The server-side topic: the category and the wire topic (names repeat across
        categories)."""
        return f"{self.names[instrument][0]}|{topic}"

    def _fmt(self, instrument: str, value: Decimal, is_size: bool) -> str:
        if self.names[instrument][0] == "spot":
            return wire(value)
        params = self.markets[instrument].params if instrument in self.markets else None
        step = (params.lot if is_size else params.tick) if params else Decimal("0.01")
        return f"{value.quantize(step):f}"  # linear keeps fixed decimals ("2.30")

    def _levels(self, instrument: str, items: Sequence[tuple[Decimal, Decimal]]) -> list[list[str]]:
        return [[self._fmt(instrument, p, False), self._fmt(instrument, q, True)] for p, q in items]

    def _book_frame(
        self,
        instrument: str,
        depth: int,
        kind: str,
        bids: Sequence[tuple[Decimal, Decimal]],
        asks: Sequence[tuple[Decimal, Decimal]],
    ) -> str:
        symbol = self.names[instrument][1]
        now = _ms()
        return _dumps(
            {
                "topic": f"orderbook.{depth}.{symbol}",
                "type": kind,
                "ts": now,
                "data": {
                    "s": symbol,
                    "b": self._levels(instrument, bids),
                    "a": self._levels(instrument, asks),
                    "u": self.u[(instrument, depth)],
                    "seq": self.seq[instrument],
                },
                "cts": now - 3,
            }
        )

    def _snapshot(self, instrument: str, depth: int) -> str:
        mirror = self.mirrors[instrument]
        return self._book_frame(
            instrument, depth, "snapshot", mirror.top(BID, depth), mirror.top(ASK, depth)
        )

    def _ticker(self, instrument: str, kind: str, fields: dict[str, str]) -> str:
        symbol = self.names[instrument][1]
        data: dict[str, Any] = {"symbol": symbol, **fields}
        frame: dict[str, Any] = {"topic": f"tickers.{symbol}", "type": kind, "data": data}
        frame["cs"] = self.seq[instrument]
        frame["ts"] = _ms()
        return _dumps(frame)

    def _ticker_fields(self, instrument: str, full: bool) -> dict[str, str]:
        mirror = self.mirrors[instrument]
        bid = mirror.top(BID, 1)
        ask = mirror.top(ASK, 1)
        if self.names[instrument][0] == "spot":
            # Spot tickers have no bid/ask at all (5.3).
            mid = (bid[0][0] + ask[0][0]) / 2 if bid and ask else Decimal(0)
            last = wire(mid.quantize(self.markets[instrument].params.tick))
            return {
                "lastPrice": last,
                "highPrice24h": last,
                "lowPrice24h": last,
                "prevPrice24h": last,
                "volume24h": "1000",
                "turnover24h": "1000000",
                "price24hPcnt": "0",
                "usdIndexPrice": last,
            }
        out: dict[str, str] = {}
        old = self._top.get(instrument)
        if bid and (full or old is None or old[0] != tuple(bid)):
            out["bid1Price"] = self._fmt(instrument, bid[0][0], False)
            out["bid1Size"] = self._fmt(instrument, bid[0][1], True)
        if ask and (full or old is None or old[1] != tuple(ask)):
            out["ask1Price"] = self._fmt(instrument, ask[0][0], False)
            out["ask1Size"] = self._fmt(instrument, ask[0][1], True)
        if full:
            out["lastPrice"] = out.get("bid1Price", "0")
            out["markPrice"] = out.get("bid1Price", "0")
            out["fundingRate"] = "0.0001"
        return out

    # --- generator thread (self.lock held) --------------------------------------------------

    def restart(self, instrument: str) -> None:
        """Announce a venue restart of `instrument`'s books on its next step (any thread)."""
        with self.lock:
            self.restarting.add(instrument)

    def update_frames(
        self, instrument: str, changes: Sequence[Change], wanted: frozenset[str]
    ) -> list[OutFrame]:
        frames: list[OutFrame] = []
        symbol = self.names[instrument][1]
        # Waiting subscribers: the book as of the last step, then this step's delta.
        # (Topics added here are not in the server's `wanted` yet: `active` says what to encode.)
        for client, key, depth in self.pending.pop(instrument, ()):
            self.active.add(key)
            client.set_topics([*client.topics, key])
            # Marked before it is queued (the writer thread may send it at once).
            self.truth.mark(
                instrument,
                self.u[(instrument, depth)],
                snapshot=True,
                feed=f"orderbook.{depth}",
                before=True,
                queued=True,
            )
            client.outbox.put(self._snapshot(instrument, depth))
        if instrument in self.restarting:
            self.restarting.discard(instrument)
            for depth in DEPTHS:
                self.u[(instrument, depth)] = 1
                key = self.key(instrument, f"orderbook.{depth}.{symbol}")
                frames.append(OutFrame(key, self._snapshot(instrument, depth)))
                if key in self.active:
                    self.truth.mark(
                        instrument, 1, snapshot=True, feed=f"orderbook.{depth}", before=True
                    )
        mirror = self.mirrors[instrument]
        mirror.apply(changes)
        self.seq[instrument] += self.rng.randint(1, 40)
        top = (tuple(mirror.top(BID, 1)), tuple(mirror.top(ASK, 1)))
        top_changed = top != self._top.get(instrument)
        bids = [(c.price, c.size) for c in changes if c.side == BID]
        asks = [(c.price, c.size) for c in changes if c.side == ASK]
        for depth in DEPTHS:
            key = self.key(instrument, f"orderbook.{depth}.{symbol}")
            if depth == 1:
                if top_changed:
                    self.u[(instrument, depth)] += 1
                    if key in self.active:
                        frames.append(OutFrame(key, self._snapshot(instrument, 1)))
                        self.truth.mark(
                            instrument, self.u[(instrument, 1)], snapshot=True, feed="orderbook.1"
                        )
                continue
            self.u[(instrument, depth)] += 1
            if key in self.active:
                frames.append(
                    OutFrame(key, self._book_frame(instrument, depth, "delta", bids, asks))
                )
                self.truth.mark(instrument, self.u[(instrument, depth)], feed=f"orderbook.{depth}")
        ticker_key = self.key(instrument, f"tickers.{symbol}")
        if top_changed and ticker_key in wanted:
            spot = self.names[instrument][0] == "spot"
            fields = self._ticker_fields(instrument, full=False)
            frames.append(
                OutFrame(
                    ticker_key, self._ticker(instrument, "snapshot" if spot else "delta", fields)
                )
            )
        self._top[instrument] = top
        return frames

    def error_frame(self, instrument: str) -> OutFrame | None:
        text = _dumps(
            {"success": False, "ret_msg": "Too many requests", "conn_id": "sim", "op": "subscribe"}
        )
        return OutFrame(None, text)

    def malformed_frame(self, instrument: str) -> OutFrame:
        """Half of a delta frame: not JSON, and no `u` used up."""
        symbol = self.names[instrument][1]
        text = _dumps(
            {
                "topic": f"orderbook.50.{symbol}",
                "type": "delta",
                "ts": _ms(),
                "data": {"s": symbol, "b": [], "a": [], "u": 0, "seq": 0},
            }
        )
        return OutFrame(None, text[: len(text) // 2])

    # --- connection threads -------------------------------------------------------------------

    def accept(self, path: str, query: Query) -> Sequence[str] | None:
        return [] if path in PATHS else None

    def _category(self, client: ClientConn) -> str:
        request = client.ws.request
        path = urlsplit(request.path).path if request is not None else ""
        return PATHS.get(path, "linear")

    def _reply(self, category: str, client: ClientConn, req: dict[str, Any], **fields: Any) -> str:
        out: dict[str, Any] = {"success": True, "ret_msg": "", "conn_id": f"sim-{client.id:06d}"}
        out.update(fields)
        if category == "linear" or "req_id" in req:
            out["req_id"] = str(req.get("req_id", ""))
        return _dumps(out)

    def on_client_message(self, client: ClientConn, text: str) -> list[str]:
        category = self._category(client)
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            req = None
        if not isinstance(req, dict):
            return [
                self._reply(
                    category, client, {}, success=False, ret_msg="error:invalid json", op=""
                )
            ]
        op = req.get("op")
        if op == "ping":
            return [self._reply(category, client, req, ret_msg="pong", op="ping")]
        args = req.get("args")
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            return [
                self._reply(
                    category,
                    client,
                    req,
                    success=False,
                    ret_msg=f"error:unknown op {op!r}",
                    op=str(op),
                )
            ]
        if category == "spot" and len(args) > SPOT_MAX_ARGS:
            return [
                self._reply(
                    category,
                    client,
                    req,
                    success=False,
                    ret_msg=f"args size >{SPOT_MAX_ARGS}",
                    op=op,
                )
            ]
        wanted: list[tuple[str, str, int]] = []  # (instrument, topic, depth; 0 = tickers)
        for arg in args:
            parts = arg.split(".") if isinstance(arg, str) else []
            inst = self.by_name.get((category, parts[-1])) if parts else None
            depth = -1
            if len(parts) == 3 and parts[0] == "orderbook" and parts[1].isdigit():
                depth = int(parts[1]) if int(parts[1]) in DEPTHS else -1
            elif len(parts) == 2 and parts[0] == "tickers":
                depth = 0
            if inst is None or depth < 0:
                return [
                    self._reply(
                        category,
                        client,
                        req,
                        success=False,
                        ret_msg=f"Invalid symbol :[{arg}]",
                        op=op,
                    )
                ]
            wanted.append((inst, arg, depth))
        ack = self._reply(
            category, client, req, ret_msg="subscribe" if category == "spot" else "", op=op
        )
        if not self.markets:  # replaying: the recording holds the frames
            client.set_topics(["replay"])
            return [ack]
        with self.lock:
            client.outbox.put(ack)
            for inst, topic, depth in wanted:
                key = self.key(inst, topic)
                if op == "unsubscribe":
                    waiting = self.pending.get(inst, [])
                    self.pending[inst] = [
                        w for w in waiting if not (w[0] is client and w[1] == key)
                    ]
                    client.set_topics([t for t in client.topics if t != key])
                elif depth == 0:
                    client.set_topics([*client.topics, key])
                    fields = self._ticker_fields(inst, full=True)
                    client.outbox.put(self._ticker(inst, "snapshot", fields))
                else:
                    self.pending.setdefault(inst, []).append((client, key, depth))
        return []

    # --- replay ----------------------------------------------------------------------------

    def load_replay(
        self, recv: Sequence[CaptureEvent], http_events: Sequence[CaptureEvent]
    ) -> list[ReplayFrame]:
        """Every recorded frame in order, to each client once it has subscribed; book
        deltas are the frames a `gap` fault skips."""
        return [
            ReplayFrame(None, e.data, '"delta"' in e.data and '"orderbook.' in e.data[:80])
            for e in recv
        ]


class BybitSpotSim(BybitSim):
    """The same server; `ws_url` points at the spot path."""

    venue = "bybit-v5-spot"
    ws_path = "/v5/public/spot"
    kit = BybitSpotKit
