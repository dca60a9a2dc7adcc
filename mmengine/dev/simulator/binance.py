"""Binance spot public market data, served by the simulator (generator and connection threads).

Speaks the wire protocol of `shared/docs/venue-protocols.md` section 1, written from that
document and the captures, never from our client (`mmengine.venues.binance`), so that a
mistake in the client is not copied here and cancelled out:

- WebSocket combined streams at `/stream?streams=<s1>/<s2>`; every frame is wrapped as
  `{"stream":"<name>","data":{...}}`. `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`,
  `GET_PROPERTY` and `SET_PROPERTY` work on an open connection. Stream names are lowercase;
  a stream for an unknown symbol (or in upper case) is accepted and simply never sent.
- `<sym>@depth@100ms` and `<sym>@depth`: `depthUpdate` diffs with absolute quantities as
  8-decimal strings, "0.00000000" deleting. Per symbol, update ids are consecutive across
  diffs (`U` == previous `u` + 1) and one diff may cover several ids (`U` < `u`), as on the
  venue, where a 100 ms diff merges several book updates. Both cadences get every diff.
- `<sym>@bookTicker`: after a diff that changed the best bid or ask, the exact best levels,
  with `u` = that diff's `u`.
- `GET /api/v3/depth?symbol=BTCUSDT&limit=N`: `lastUpdateId` is the `u` of the last diff
  generated when the snapshot was taken, so the documented sync procedure bridges it.
- `binance-merged` (`BinanceMergedSim`) is the venue as it is at 100 ms: one update id per
  market step, and each diff merges 1 to 4 steps, so a REST snapshot taken between two
  diffs has a `lastUpdateId` that falls inside the next diff's `[U, u]` (1.4, step 5).
- On stop, `{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":...}}` to everyone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import orjson

from mmengine.capture import CaptureEvent
from mmengine.dev.simulator.kit import Level, Part, WireKit
from mmengine.dev.simulator.kraken import MirrorBook
from mmengine.dev.simulator.market import ASK, BID, Change, Side
from mmengine.dev.simulator.server import (
    ClientConn,
    OutFrame,
    Query,
    ReplayFrame,
    SimProtocol,
)

WS_PATH = "/stream"
DEPTH_PATH = "/api/v3/depth"
DEPTH_STREAMS = ("depth@100ms", "depth")  # every diff goes to both cadences
TICKER_STREAM = "bookTicker"
DEFAULT_LIMIT = 100
MAX_LIMIT = 5000  # a larger limit is truncated to 5000, as the venue does
DECIMALS = 8
# How many update ids one diff covers: mostly one, sometimes a few merged updates.
ID_SPANS = (1, 1, 1, 1, 2, 2, 3)
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")

# REST error bodies, verbatim from the venue's error-code list.
ERR_INVALID_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}
ERR_MANDATORY_SYMBOL = {
    "code": -1102,
    "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
}
ERR_ILLEGAL_LIMIT = {
    "code": -1100,
    "msg": "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.",
}


def wire_symbol(instrument: str) -> str:
    """`BTC-USDT` -> `BTCUSDT` (joining is safe; the simulator never splits)."""
    return instrument.replace("-", "")


def fmt(value: Decimal) -> str:
    """A price or size as the venue writes it: fixed point, 8 decimals."""
    return f"{value:.{DECIMALS}f}"


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class BinanceKit(WireKit):
    """Binance spot for the conformance suite: a REST snapshot per symbol (its
    `lastUpdateId` L) and a first diff ending at L (dropped by the sync), then diffs
    `U == previous u + 1`."""

    protocol = "binance"
    instruments = ("BTC-USDT", "ETH-USDT")
    depth = 100

    def __init__(self) -> None:
        super().__init__()
        self.last_id = dict.fromkeys(self.instruments, 1000)
        self._rest: dict[str, str] = {}

    def rest(self) -> dict[str, str]:
        return self._rest

    def _diff(self, instrument: str, first: int, bids: list[Level], asks: list[Level]) -> str:
        symbol = wire_symbol(instrument)
        data = {
            "e": "depthUpdate",
            "E": 1_700_000_000_000,
            "s": symbol,
            "U": first,
            "u": self.last_id[instrument],
            "b": [list(lv) for lv in bids],
            "a": [list(lv) for lv in asks],
        }
        return _dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": data})

    def snapshot(self, instrument: str, bids: list[Level], asks: list[Level]) -> list[str]:
        self.load(instrument, bids, asks)
        body = {
            "lastUpdateId": self.last_id[instrument],
            "bids": [list(lv) for lv in bids],
            "asks": [list(lv) for lv in asks],
        }
        self._rest[f"symbol={wire_symbol(instrument)}&"] = _dumps(body)
        return [self._diff(instrument, self.last_id[instrument] - 1, [], [])]

    def update(self, parts: list[Part]) -> str:
        (instrument,) = {inst for inst, _, _ in parts}
        bids = [lv for _, b, _ in parts for lv in b]
        asks = [lv for _, _, a in parts for lv in a]
        self.apply(instrument, bids, asks)
        self.last_id[instrument] += 1
        return self._diff(instrument, self.last_id[instrument], bids, asks)


class BinanceSim(SimProtocol):
    """Binance spot: combined-stream diffs and bookTicker, plus the REST depth snapshot."""

    venue = "binance"
    ws_path = WS_PATH
    kit = BinanceKit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.symbols = {i: wire_symbol(i) for i in self.instruments}
        self.by_symbol = {s: i for i, s in self.symbols.items()}
        lower = {i: s.lower() for i, s in self.symbols.items()}
        self._depth_topics = {i: tuple(f"{lower[i]}@{d}" for d in DEPTH_STREAMS) for i in lower}
        self._ticker_topic = {i: f"{lower[i]}@{TICKER_STREAM}" for i in lower}
        # Per instrument: the `u` of the last diff generated (sent or, after a `gap`, not),
        # and the best levels last announced, to know when a bookTicker is due.
        self.last_id = {i: self.rng.randint(1_000_000_000, 9_000_000_000) for i in self.markets}
        self._top: dict[str, tuple[Any, Any]] = {}
        self._replay_http: dict[str, str] | None = None
        self._bad_ticker: set[str] = set()  # `badticker` fault: the next ticker lies

    # --- WebSocket ------------------------------------------------------------------------

    def accept(self, path: str, query: Query) -> Sequence[str] | None:
        if path != WS_PATH:
            return None  # raw `/ws/<stream>` endpoints are not simulated
        return [s for s in query.get("streams", "").split("/") if s]

    def on_client_message(self, client: ClientConn, text: str) -> list[str]:
        """`{"method":"SUBSCRIBE","params":[...],"id":1}` -> `{"result":null,"id":1}`."""
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [_error(3, "Invalid JSON: expected value at line 1 column 1", None)]
        if not isinstance(req, dict):
            return [_error(2, "Invalid request: expected a JSON object", None)]
        req_id = req.get("id")
        if req_id is not None and (
            not isinstance(req_id, int) or isinstance(req_id, bool) or req_id < 0
        ):
            return [_error(2, "Invalid request: request ID must be an unsigned integer", None)]
        method = req.get("method")
        if not isinstance(method, str):
            return [_error(2, "Invalid request: missing field `method`", req_id)]
        if method not in METHODS:
            expected = ", ".join(f"`{m}`" for m in METHODS)
            return [
                _error(
                    2,
                    f"Invalid request: unknown variant `{method}`, expected one of {expected}",
                    req_id,
                )
            ]
        params = req.get("params", [])
        if not isinstance(params, list):
            return [_error(1, "Invalid value type: expected a list", req_id)]
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) for p in params):
                return [_error(1, "Invalid value type: expected a string", req_id)]
            if method == "SUBSCRIBE":
                client.set_topics([*client.topics, *params])
            else:
                client.set_topics([t for t in client.topics if t not in params])
            return [_result(None, req_id)]
        if method == "LIST_SUBSCRIPTIONS":
            return [_result(list(client.topics), req_id)]
        if not params or params[0] != "combined":
            return [_error(0, "Unknown property", req_id)]
        if method == "GET_PROPERTY":
            return [_result(True, req_id)]  # `/stream` connections are combined
        if len(params) != 2 or not isinstance(params[1], bool):
            return [_error(1, "Invalid value type: expected Boolean", req_id)]
        if not params[1]:
            # Unwrapped frames on a `/stream` connection are not simulated: say so rather
            # than acknowledge and keep sending wrapped frames.
            return [_error(2, "Invalid request: the simulator only serves combined", req_id)]
        return [_result(None, req_id)]

    def update_frames(
        self, instrument: str, changes: Sequence[Change], wanted: frozenset[str]
    ) -> list[OutFrame]:
        first = self.last_id[instrument] + 1
        last = first + self.rng.choice(ID_SPANS) - 1
        self.last_id[instrument] = last
        self.truth.mark(instrument, last, first=first)
        bids = [(c.price, c.size) for c in changes if c.side == BID]
        asks = [(c.price, c.size) for c in changes if c.side == ASK]
        return self._diff_frames(instrument, first, last, bids, asks, wanted)

    def _diff_frames(
        self,
        instrument: str,
        first: int,
        last: int,
        bids: list[tuple[Decimal, Decimal]],
        asks: list[tuple[Decimal, Decimal]],
        wanted: frozenset[str],
        top: tuple[Any, Any] | None = None,
    ) -> list[OutFrame]:
        """A diff covering ids `first`..`last`, and a bookTicker if the best levels moved
        (`top`: the best levels at `last`, when the market has moved on since)."""
        market = self.markets[instrument]
        if top is None:
            top = (market.best(BID), market.best(ASK))
        top_changed = top != self._top.get(instrument)
        self._top[instrument] = top
        frames: list[OutFrame] = []
        symbol = self.symbols[instrument]
        depth_topics = [t for t in self._depth_topics[instrument] if t in wanted]
        if depth_topics:
            data = {
                "e": "depthUpdate",
                "E": _now_ms(),
                "s": symbol,
                "U": first,
                "u": last,
                "b": [[fmt(p), fmt(q)] for p, q in bids],
                "a": [[fmt(p), fmt(q)] for p, q in asks],
            }
            for topic in depth_topics:
                frames.append(OutFrame(topic, _dumps({"stream": topic, "data": data})))
        ticker = self._ticker_topic[instrument]
        bid, ask = top
        if top_changed and ticker in wanted and bid is not None and ask is not None:
            bid_price = bid[0]
            if instrument in self._bad_ticker:
                # 1 % below the book's best bid, at the same `u`: an audit must catch it.
                self._bad_ticker.discard(instrument)
                bid_price = bid_price * Decimal("0.99")
            data_t = {
                "u": last,
                "s": symbol,
                "b": fmt(bid_price),
                "B": fmt(bid[1]),
                "a": fmt(ask[0]),
                "A": fmt(ask[1]),
            }
            frames.append(OutFrame(ticker, _dumps({"stream": ticker, "data": data_t})))
        return frames

    def malformed_frame(self, instrument: str) -> OutFrame:
        """The first half of a diff frame: not JSON, and no update id is used up by it."""
        symbol = self.symbols[instrument]
        next_id = self.last_id.get(instrument, 0) + 1
        data = {
            "e": "depthUpdate",
            "E": _now_ms(),
            "s": symbol,
            "U": next_id,
            "u": next_id,
            "b": [],
            "a": [],
        }
        text = _dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": data})
        # To every client: a frame that does not parse cannot be told apart by stream anyway.
        return OutFrame(None, text[: len(text) // 2])

    def error_frame(self, instrument: str) -> OutFrame | None:
        """An error with no request id, as the venue answers a request it cannot read."""
        return OutFrame(None, _error(3, "Invalid JSON: expected value at line 1 column 1", None))

    def corrupt_ticker(self, instrument: str) -> bool:
        """The next `@bookTicker` of `instrument` shows a best bid its book does not have."""
        if instrument not in self.markets:
            return False
        self._bad_ticker.add(instrument)
        return True

    def goodbye_frames(self) -> list[OutFrame]:
        data = {"e": "serverShutdown", "E": _now_ms()}
        return [OutFrame(None, _dumps({"stream": "!serverShutdown", "data": data}))]

    # --- REST -----------------------------------------------------------------------------

    def http(self, path: str, query: Query) -> tuple[int, str] | None:
        """`GET /api/v3/depth?symbol=BTCUSDT&limit=N`.

        Reply: {"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],
                "asks":[["4.00000200","12.00000000"]]}
        """
        if path != DEPTH_PATH:
            return None
        symbol = query.get("symbol", "")
        if not symbol:
            return 400, _dumps(ERR_MANDATORY_SYMBOL)
        raw_limit = query.get("limit", str(DEFAULT_LIMIT))
        if not raw_limit.isdigit() or len(raw_limit) > 20:
            return 400, _dumps(ERR_ILLEGAL_LIMIT)
        limit = min(max(int(raw_limit), 1), MAX_LIMIT)
        if self._replay_http is not None:
            body = self._replay_http.get(symbol)
            return (200, body) if body is not None else (400, _dumps(ERR_INVALID_SYMBOL))
        instrument = self.by_symbol.get(symbol)
        if instrument is None:
            return 400, _dumps(ERR_INVALID_SYMBOL)
        market = self.markets[instrument]
        # Book and id read together under the lock: this pair is what makes the snapshot
        # consistent with the diffs. Formatting happens after the lock is released.
        with self.lock:
            last_id = self.last_id[instrument]
            bids = market.levels(BID, limit)
            asks = market.levels(ASK, limit)
            self.truth.mark(instrument, last_id, snapshot=True, queued=True)
        doc = {
            "lastUpdateId": last_id,
            "bids": [[fmt(p), fmt(q)] for p, q in bids],
            "asks": [[fmt(p), fmt(q)] for p, q in asks],
        }
        return 200, _dumps(doc)

    # --- replay ---------------------------------------------------------------------------

    def load_replay(
        self, recv: Sequence[CaptureEvent], http_events: Sequence[CaptureEvent]
    ) -> list[ReplayFrame]:
        """Recorded frames classified by stream; recorded depth snapshots kept per symbol.

        If the capture fetched a symbol's snapshot several times, the first response is
        served: it is the one the recorded diffs were synced against.
        """
        frames: list[ReplayFrame] = []
        for event in recv:
            try:
                msg = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                msg = None  # a recorded frame that does not parse is replayed as recorded
            topic: str | None = None
            sequenced = False
            if isinstance(msg, dict) and isinstance(msg.get("stream"), str):
                topic = msg["stream"]
                data = msg.get("data")
                sequenced = isinstance(data, dict) and data.get("e") == "depthUpdate"
            frames.append(ReplayFrame(topic, event.data, sequenced))
        responses: dict[str, str] = {}
        for event in http_events:
            parts = urlsplit(event.url)
            if parts.path != DEPTH_PATH:
                continue
            symbol = dict(parse_qsl(parts.query)).get("symbol")
            if symbol:
                responses.setdefault(symbol, event.data)
        self._replay_http = responses
        return frames


class BinanceMergedSim(BinanceSim):
    """Binance as it is at 100 ms: each market step is one update id, a diff merges the
    levels of 1 to `max_merged` steps (the last size of a level wins), and it goes out when
    the next step has begun, as a venue sends a window's batch once the next window runs.
    A REST snapshot is the book at the current step, so its `lastUpdateId` usually falls
    inside the diff being merged, which the client receives after the snapshot."""

    venue = "binance-merged"
    max_merged: ClassVar[int] = 4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # per instrument: first id of the diff being merged, its levels by (side, price),
        # and how many steps it still takes; then, complete, waiting for the next step (with
        # the truth's version of the book at its last id)
        self._merging: dict[str, tuple[int, dict[tuple[Side, Decimal], Decimal], int]] = {}
        self._ready: dict[str, tuple[int, int, dict[tuple[Side, Decimal], Decimal], int]] = {}
        self.snapshots_inside_a_diff = 0  # REST snapshots taken while a diff was merging
        self._sent = {i: MirrorBook(m) for i, m in self.markets.items()}

    def sent_book(
        self, instrument: str
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """The book as of the last diff sent (the market may be a diff or two ahead)."""
        with self.lock:
            mirror = self._sent[instrument]
            return mirror.top(BID, 1_000_000), mirror.top(ASK, 1_000_000)

    def update_frames(
        self, instrument: str, changes: Sequence[Change], wanted: frozenset[str]
    ) -> list[OutFrame]:
        step = self.last_id[instrument] + 1
        self.last_id[instrument] = step
        frames: list[OutFrame] = []
        ready = self._ready.pop(instrument, None)
        if ready is not None:  # the window before this step: out now
            first, last, levels, version = ready
            self.truth.mark(instrument, last, first=first, version=version)
            mirror = self._sent[instrument]
            mirror.apply([Change(side, p, q) for (side, p), q in levels.items()])
            top = (next(iter(mirror.top(BID, 1)), None), next(iter(mirror.top(ASK, 1)), None))
            bids = [(p, q) for (side, p), q in levels.items() if side == BID]
            asks = [(p, q) for (side, p), q in levels.items() if side == ASK]
            frames = self._diff_frames(instrument, first, last, bids, asks, wanted, top)
        first, merged, left = self._merging.pop(
            instrument, (step, {}, self.rng.randint(1, self.max_merged))
        )
        for c in changes:
            merged[(c.side, c.price)] = c.size
        if left > 1:
            self._merging[instrument] = (first, merged, left - 1)
        else:
            self._ready[instrument] = (first, step, merged, self.truth.version(instrument))
        return frames

    def http(self, path: str, query: Query) -> tuple[int, str] | None:
        with self.lock:
            inside = self.by_symbol.get(query.get("symbol", "")) in self._merging
        reply = super().http(path, query)
        if inside and reply is not None and reply[0] == 200:
            with self.lock:
                self.snapshots_inside_a_diff += 1
        return reply


def _result(result: Any, req_id: int | None) -> str:
    return _dumps({"result": result, "id": req_id})


def _error(code: int, msg: str, req_id: int | None) -> str:
    return _dumps({"code": code, "msg": msg, "id": req_id})
