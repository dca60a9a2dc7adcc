"""Binance USDⓈ-M and COIN-M futures public market data, served by the simulator (generator
and connection threads).

Written from Binance's derivatives documentation (the sections the venue module cites), not
from our client (`mmengine.venues.binance_futures`), so that a mistake there is not copied
here. What differs from spot (`mmengine.dev.simulator.binance`, whose request handling this
reuses):

- WebSocket combined streams at `/public/stream` (USDⓈ-M, the routed path of the public
  book streams) or `/stream` (COIN-M).
- `<sym>@depth@100ms`: `depthUpdate` with `E`, `T`, `s` (COIN-M also `ps`), `U`, `u` and `pu`,
  the `u` of the symbol's previous event. Ids jump from one event to the next (`U` may be
  well past `pu + 1`: the venue numbers the updates of every symbol in one sequence), and an
  event may cover several ids. A `gap` fault generates an event and never sends it, so the
  next one's `pu` names an event the client never had.
- `<sym>@bookTicker`: `e: bookTicker`, `u` = the event's `u`, `E`, `T` (COIN-M also `ps`).
- `GET /fapi/v1/depth` / `/dapi/v1/depth` (`lastUpdateId` = the `u` of the last event
  generated, so the documented bridge `U <= lastUpdateId <= u` holds), and COIN-M
  `GET /dapi/v1/exchangeInfo` with each symbol's `contractSize` (100 USD for BTC, 10 for
  others). COIN-M books count whole contracts; prices and sizes are written to the
  contract's tick and lot, as the venue does (`"65000.1"`, `"300"`).
- No shutdown notice: the futures streams document none.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import orjson

from mmengine.capture import CaptureEvent
from mmengine.dev.simulator.binance import (
    DEFAULT_LIMIT,
    ERR_ILLEGAL_LIMIT,
    ERR_INVALID_SYMBOL,
    ERR_MANDATORY_SYMBOL,
    BinanceKit,
    BinanceSim,
)
from mmengine.dev.simulator.kit import Level, Part
from mmengine.dev.simulator.market import ASK, BID, Change, MarketParams, default_params
from mmengine.dev.simulator.server import OutFrame, Query, ReplayFrame

SNAPSHOT_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
ID_SPANS = (1, 1, 1, 2, 3)  # update ids one event covers
ID_JUMPS = (0, 0, 1, 2, 5, 40)  # ids of other symbols between two events of one symbol


def futures_symbol(instrument: str, coin_margined: bool) -> str:
    """`BTC-USDT-PERP` -> `BTCUSDT`, `BTC-USD-PERP` -> `BTCUSD_PERP` (COIN-M),
    `BTC-USD-20260327` -> `BTCUSD_260327`."""
    base, quote, kind = instrument.split("-")
    if kind == "PERP":
        return f"{base}{quote}_PERP" if coin_margined else f"{base}{quote}"
    return f"{base}{quote}_{kind[2:]}"


def contract_size(instrument: str) -> int:
    """COIN-M: USD per contract (Binance: 100 for BTC, 10 for every other coin)."""
    return 100 if instrument.startswith("BTC-") else 10


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _places(step: Decimal) -> int:
    return max(0, -int(step.as_tuple().exponent))


class BinanceFuturesKit(BinanceKit):
    """USDⓈ-M frames for the conformance suite: a REST snapshot per symbol (`L`), a first
    event bridging it (`U = L - 1`, `u = L`), then events chained by `pu`, ids jumping (the
    spot kit's REST answers and ids, the futures frames)."""

    protocol = "binance-usdm"
    instruments = ("BTC-USDT-PERP", "ETH-USDT-PERP")
    depth = 100  # deeper than a simulated book: the REST snapshot holds all of it
    coin_margined: ClassVar[bool] = False

    def _event(self, instrument: str, first: int, prev: int, bids: Any, asks: Any) -> str:
        symbol = futures_symbol(instrument, self.coin_margined)
        data = {
            "e": "depthUpdate",
            "E": 1_700_000_000_000,
            "T": 1_700_000_000_000,
            "s": symbol,
            "U": first,
            "u": self.last_id[instrument],
            "pu": prev,
            "b": [list(lv) for lv in bids],
            "a": [list(lv) for lv in asks],
        }
        if self.coin_margined:
            data["ps"] = symbol.split("_")[0]
        return _dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": data})

    def snapshot(self, instrument: str, bids: list[Level], asks: list[Level]) -> list[str]:
        self.load(instrument, bids, asks)
        last = self.last_id[instrument]
        body = {"lastUpdateId": last, "E": 1, "T": 1, "bids": bids, "asks": asks}
        symbol = futures_symbol(instrument, self.coin_margined)
        self._rest[f"symbol={symbol}&"] = _dumps(body)
        return [self._event(instrument, last - 1, last - 4, [], [])]

    def update(self, parts: list[Part]) -> str:
        (instrument,) = {inst for inst, _, _ in parts}
        bids = [lv for _, b, _ in parts for lv in b]
        asks = [lv for _, _, a in parts for lv in a]
        self.apply(instrument, bids, asks)
        prev = self.last_id[instrument]
        self.last_id[instrument] = prev + 4  # ids 1 and 2 after prev were other symbols'
        return self._event(instrument, prev + 3, prev, bids, asks)


class BinanceCoinmKit(BinanceFuturesKit):
    """COIN-M frames: as USDⓈ-M, with `ps`, and the contract sizes in `exchangeInfo`."""

    protocol = "binance-coinm"
    instruments = ("BTC-USD-PERP", "ETH-USD-PERP")
    coin_margined = True

    def __init__(self) -> None:
        super().__init__()
        symbols = [
            {"symbol": futures_symbol(i, True), "contractSize": contract_size(i)}
            for i in self.instruments
        ]
        self._rest["/dapi/v1/exchangeInfo"] = _dumps({"symbols": symbols})


class BinanceUsdmSim(BinanceSim):
    """Binance USDⓈ-M futures: combined-stream depth events and bookTicker, REST depth."""

    venue = "binance-usdm"
    ws_path = "/public/stream"
    kit = BinanceFuturesKit
    default_instruments = ("BTC-USDT-PERP", "ETH-USDT-PERP")
    depth_path: ClassVar[str] = "/fapi/v1/depth"
    coin_margined: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.symbols = {i: futures_symbol(i, self.coin_margined) for i in self.instruments}
        self.by_symbol = {s: i for i, s in self.symbols.items()}
        lower = {i: s.lower() for i, s in self.symbols.items()}
        self._depth_topics = {i: (f"{lower[i]}@depth@100ms",) for i in lower}
        self._ticker_topic = {i: f"{lower[i]}@bookTicker" for i in lower}
        grids = {i: self.market_params(i) for i in self.instruments}
        self._decimals = {i: (_places(g.tick), _places(g.lot)) for i, g in grids.items()}
        self._info_body: str | None = None  # exchangeInfo in replay mode
        # REST answers served (HTTP 200), by kind: the server's `snapshots_served` counts
        # every 200, exchangeInfo too, and the two weigh differently against the venue's
        # request-weight limit. Written under `self.lock` (several connection threads).
        self.snapshots_served = 0
        self.exchange_info_served = 0

    @classmethod
    def market_params(cls, instrument: str) -> MarketParams:
        base = instrument.split("-", 1)[0]
        mid = default_params(instrument).mid
        tick = Decimal("0.1") if base == "BTC" else Decimal("0.01")
        if cls.coin_margined:  # whole contracts
            return MarketParams(mid, tick, Decimal("1"), Decimal("300"))
        typical = Decimal("2") if base == "BTC" else Decimal("20")
        return MarketParams(mid, tick, Decimal("0.001"), typical)

    def accept(self, path: str, query: Query) -> Sequence[str] | None:
        if path != self.ws_path:
            return None
        return [s for s in query.get("streams", "").split("/") if s]

    def update_frames(
        self, instrument: str, changes: Sequence[Change], wanted: frozenset[str]
    ) -> list[OutFrame]:
        prev = self.last_id[instrument]
        first = prev + 1 + self.rng.choice(ID_JUMPS)
        last = first + self.rng.choice(ID_SPANS) - 1
        self.last_id[instrument] = last
        self.truth.mark(instrument, last, first=prev)  # `pu`: the id this update follows
        market = self.markets[instrument]
        top = (market.best(BID), market.best(ASK))
        top_changed = top != self._top.get(instrument)
        self._top[instrument] = top
        symbol = self.symbols[instrument]
        price_dp, size_dp = self._decimals[instrument]
        ms = time.time_ns() // 1_000_000
        common: dict[str, Any] = {"E": ms, "T": ms, "s": symbol}
        if self.coin_margined:
            common["ps"] = symbol.split("_")[0]
        frames: list[OutFrame] = []
        topic = self._depth_topics[instrument][0]
        if topic in wanted:
            levels: dict[str, list[list[str]]] = {BID: [], ASK: []}
            for c in changes:
                levels[c.side].append([f"{c.price:.{price_dp}f}", f"{c.size:.{size_dp}f}"])
            data = {"e": "depthUpdate", **common, "U": first, "u": last, "pu": prev}
            data.update(b=levels[BID], a=levels[ASK])
            frames.append(OutFrame(topic, _dumps({"stream": topic, "data": data})))
        ticker = self._ticker_topic[instrument]
        bid, ask = top
        if top_changed and ticker in wanted and bid is not None and ask is not None:
            bid_price = bid[0]
            if instrument in self._bad_ticker:  # 1 % under the book's best bid, at equal `u`
                self._bad_ticker.discard(instrument)
                bid_price = (bid_price * Decimal("0.99")).quantize(bid[0])
            quote = {"e": "bookTicker", "u": last, **common}
            quote.update(b=f"{bid_price:.{price_dp}f}", B=f"{bid[1]:.{size_dp}f}")
            quote.update(a=f"{ask[0]:.{price_dp}f}", A=f"{ask[1]:.{size_dp}f}")
            frames.append(OutFrame(ticker, _dumps({"stream": ticker, "data": quote})))
        return frames

    def goodbye_frames(self) -> list[OutFrame]:
        return []

    def http(self, path: str, query: Query) -> tuple[int, str] | None:
        """`GET <depth path>?symbol=BTCUSDT&limit=N` (COIN-M: also `exchangeInfo`).

        Reply: {"lastUpdateId":1027024,"E":1589436922972,"T":1589436922959,
                "bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}
        """
        if path != self.depth_path:
            return None
        symbol = query.get("symbol", "")
        if not symbol:
            return 400, _dumps(ERR_MANDATORY_SYMBOL)
        raw_limit = query.get("limit", str(DEFAULT_LIMIT))
        if not raw_limit.isdigit() or int(raw_limit) not in SNAPSHOT_LIMITS:
            return 400, _dumps(ERR_ILLEGAL_LIMIT)
        if self._replay_http is not None:
            body = self._replay_http.get(symbol)
            if body is None:
                return 400, _dumps(ERR_INVALID_SYMBOL)
            with self.lock:
                self.snapshots_served += 1
            return 200, body
        instrument = self.by_symbol.get(symbol)
        if instrument is None:
            return 400, _dumps(ERR_INVALID_SYMBOL)
        market = self.markets[instrument]
        with self.lock:  # the book and its id, read together: what makes the bridge hold
            self.snapshots_served += 1
            last_id = self.last_id[instrument]
            bids = market.levels(BID, int(raw_limit))
            asks = market.levels(ASK, int(raw_limit))
            self.truth.mark(instrument, last_id, snapshot=True, queued=True)
        price_dp, size_dp = self._decimals[instrument]
        ms = time.time_ns() // 1_000_000
        doc: dict[str, Any] = {"lastUpdateId": last_id, "E": ms, "T": ms}
        if self.coin_margined:
            doc.update(symbol=symbol, pair=symbol.split("_")[0])
        doc["bids"] = [[f"{p:.{price_dp}f}", f"{q:.{size_dp}f}"] for p, q in bids]
        doc["asks"] = [[f"{p:.{price_dp}f}", f"{q:.{size_dp}f}"] for p, q in asks]
        return 200, _dumps(doc)

    def replay_connection(self, events: Sequence[CaptureEvent]) -> str | None:
        """The first recorded connection to this venue's stream path (a capture of both
        futures venues, as `mmengine record` makes, holds one connection of each)."""
        for e in events:
            if e.kind == "connect" and urlsplit(e.url).path == self.ws_path:
                return e.conn
        return super().replay_connection(events)

    def load_replay(
        self, recv: Sequence[CaptureEvent], http_events: Sequence[CaptureEvent]
    ) -> list[ReplayFrame]:
        """Recorded frames by stream; the first recorded REST answer per symbol (the one the
        recorded events were bridged to), and the recorded `exchangeInfo`."""
        frames: list[ReplayFrame] = []
        for event in recv:
            try:
                msg = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                msg = None
            topic = msg.get("stream") if isinstance(msg, dict) else None
            data = msg.get("data") if isinstance(msg, dict) else None
            sequenced = isinstance(data, dict) and data.get("e") == "depthUpdate"
            frames.append(
                ReplayFrame(topic if isinstance(topic, str) else None, event.data, sequenced)
            )
        responses: dict[str, str] = {}
        for event in http_events:
            parts = urlsplit(event.url)
            if parts.path.endswith("/exchangeInfo"):
                self._info_body = self._info_body or event.data
            symbol = dict(parse_qsl(parts.query)).get("symbol")
            if parts.path == self.depth_path and symbol:
                responses.setdefault(symbol, event.data)
        self._replay_http = responses
        return frames


class BinanceCoinmSim(BinanceUsdmSim):
    """Binance COIN-M futures: as USDⓈ-M on `dstream`, sized in contracts, with
    `exchangeInfo` naming each contract's USD value."""

    venue = "binance-coinm"
    ws_path = "/stream"
    kit = BinanceCoinmKit
    default_instruments = ("BTC-USD-PERP", "ETH-USD-PERP")
    depth_path = "/dapi/v1/depth"
    coin_margined = True

    def http(self, path: str, query: Query) -> tuple[int, str] | None:
        """`GET /dapi/v1/exchangeInfo` too. Reply (the fields a client of the book needs):
        {"timezone":"UTC","serverTime":1,"rateLimits":[...],"symbols":[{"symbol":
        "BTCUSD_PERP","pair":"BTCUSD","contractType":"PERPETUAL","contractStatus":"TRADING",
        "contractSize":100,"marginAsset":"BTC","baseAsset":"BTC","quoteAsset":"USD"}]}"""
        if path != "/dapi/v1/exchangeInfo":
            return super().http(path, query)
        with self.lock:
            self.exchange_info_served += 1
        if self._info_body is not None:
            return 200, self._info_body
        symbols = []
        for instrument, symbol in self.symbols.items():
            base, _, kind = instrument.split("-")
            symbols.append(
                {
                    "symbol": symbol,
                    "pair": symbol.split("_")[0],
                    "contractType": "PERPETUAL" if kind == "PERP" else "CURRENT_QUARTER",
                    "contractStatus": "TRADING",
                    "contractSize": contract_size(instrument),
                    "marginAsset": base,
                    "baseAsset": base,
                    "quoteAsset": "USD",
                }
            )
        limits = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "limit": 2400}]
        doc = {"timezone": "UTC", "serverTime": time.time_ns() // 1_000_000}
        doc.update(rateLimits=limits, symbols=symbols)
        return 200, _dumps(doc)
