"""Binance USDⓈ-M and COIN-M futures: `@depth@100ms` events synced to a REST depth snapshot
and chained by `pu` (venue thread).

Facts from Binance's derivatives documentation (developers.binance.com/docs/derivatives,
`usds-margined-futures` and `coin-margined-futures`, which say the same unless noted):
- "Websocket Market Streams": combined streams at `/stream?streams=<s1>/<s2>`, each frame
  `{"stream":"<name>","data":{...}}`; stream names are lowercase; a connection lives 24 h;
  the server pings every 3 minutes; at most 10 incoming messages a second and 1024 streams
  per connection. USDⓈ-M "Important WebSocket Change Notice" (2026-03): `fstream` is split
  into routed paths, and the high-frequency public streams (`@depth`, `@bookTicker`) are on
  `/public`. COIN-M (`dstream`) is not split.
- "Diff. Book Depth Streams": `depthUpdate` with `U` (first update id of the event), `u`
  (last), `pu` (the previous event's `u`), `E`, `T`, `s` (COIN-M adds `ps`, the pair);
  absolute quantities, "0" deletes.
- "How to manage a local order book correctly": the integrity rule, `RestSnapshotChain`.
- "Order Book" (REST): `GET /fapi/v1/depth`, `/dapi/v1/depth`, `limit` 5, 10, 20, 50, 100,
  500 or 1000; weight 2 up to 50, then 5, 10, 20. IP limit `REQUEST_WEIGHT` 2400 a minute.
- "Individual Symbol Book Ticker Streams": `e: bookTicker` with `u`, the order book update
  id: at an equal `u` the book's best levels must match it exactly (`audit: true`).
- Sizes: USDⓈ-M quantities are base units. COIN-M quantities are contracts of a fixed USD
  value, `contractSize` of `GET /dapi/v1/exchangeInfo` ("Exchange Information", weight 1:
  100 for BTC, 10 for others); it is fetched on every connection (the driver converts what
  reaches pricing, `ContractSize`; the book keeps contracts, as the ticker counts them).

Symbols: `BTC-USDT-PERP` <-> `BTCUSDT`, `BTC-USDT-20260327` <-> `BTCUSDT_260327` (USDⓈ-M);
`BTC-USD-PERP` <-> `BTCUSD_PERP`, `BTC-USD-20260327` <-> `BTCUSD_260327` (COIN-M). Joined
from ours, never split.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any, ClassVar

import orjson

from mmengine.book.events import DECODE_ERRORS, BookUpdate, ContractSize, Event, lost_update
from mmengine.book.integrity import RestSnapshotChain
from mmengine.book.shape import FrameShape
from mmengine.errors import FrameError, VenueRejected
from mmengine.venues.base import VenueProtocol, VenueSpec, integer
from mmengine.venues.binance import parse_book_ticker, parse_snapshot

USDM_WS_URL = "wss://fstream.binance.com/public/stream"
USDM_REST_URL = "https://fapi.binance.com"
COINM_WS_URL = "wss://dstream.binance.com/stream"
COINM_REST_URL = "https://dapi.binance.com"
DEPTH_STREAM = "depth@100ms"
TICKER_STREAM = "bookTicker"
SNAPSHOT_LIMITS = (5, 10, 20, 50, 100, 500, 1000)  # `limit` of the REST order book
REST_WEIGHT_PER_MINUTE = 2400
MESSAGES_PER_SECOND = 10
EXCHANGE_INFO_WEIGHT = 1
# The server pings only every 3 minutes: a LIST_SUBSCRIPTIONS request every 30 s is answered,
# so a connection that went quiet (a dated contract, a dead link) is told apart in 90 s.
KEEPALIVE_S = 30.0
SILENCE_S = 90.0


def snapshot_weight(limit: int) -> int:
    """REST weight of one order book snapshot ("Order Book": adjusted on the limit)."""
    if limit <= 50:
        return 2
    if limit <= 100:
        return 5
    if limit <= 500:
        return 10
    return 20


def contract_parts(instrument: str) -> tuple[str, str, str]:
    """`BTC-USD-PERP` -> (BTC, USD, PERP); `BTC-USDT-20260327` -> (BTC, USDT, 260327)."""
    parts = instrument.split("-")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ValueError(f"{instrument!r} is not BASE-QUOTE-PERP or BASE-QUOTE-YYYYMMDD")
    base, quote, kind = parts
    if kind == "PERP":
        return base, quote, kind
    if len(kind) != 8 or not kind.isdigit() or not kind.startswith("20"):
        raise ValueError(f"{instrument!r}: {kind!r} is neither PERP nor a date YYYYMMDD")
    date(int(kind[:4]), int(kind[4:6]), int(kind[6:]))  # ValueError for 20260231
    return base, quote, kind[2:]


class BinanceFutures(VenueProtocol):
    """What USDⓈ-M and COIN-M share: streams, REST snapshots, the `pu` chain, the audit."""

    capture_exchange = "BINANCE"
    silence_timeout_s = SILENCE_S
    keepalive_interval_s = KEEPALIVE_S
    depths = SNAPSHOT_LIMITS  # the book is what the snapshot gives, diffs kept within it
    subscribe_limit = (MESSAGES_PER_SECOND, 1.0)
    rest_weight_per_minute = REST_WEIGHT_PER_MINUTE
    integrity = RestSnapshotChain
    book_start = '{"stream":"'  # as Binance (and our simulator) write a combined-stream frame
    frame_shape = FrameShape(  # `parse_event`'s frame: `data` a depthUpdate of our symbol `s`
        "object", "strings", bids="b", asks="a", books="by_symbol", route="s",
        route_in_entry=True, kind="e", kind_in_entry=True, snapshot=None, delta="depthUpdate",
        last_id="u", first_id="U", prev_id="pu", entry_time_ms="E",
    )  # fmt: skip
    default_rest_url: ClassVar[str]
    depth_path: ClassVar[str]  # of the REST order book
    coin_margined: ClassVar[bool]

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        self.snapshot_limit = next((x for x in SNAPSHOT_LIMITS if x >= spec.depth), 1000)
        self.request_id = 0

    @classmethod
    def wire_symbol(cls, instrument: str) -> str:
        base, quote, kind = contract_parts(instrument)
        if kind == "PERP":
            return f"{base}{quote}_PERP" if cls.coin_margined else f"{base}{quote}"
        return f"{base}{quote}_{kind}"

    @classmethod
    def instrument_problem(cls, instrument: str) -> str | None:
        try:
            _, quote, _ = contract_parts(instrument)
        except ValueError as exc:
            return f"{cls.protocol}: {exc}"
        if cls.coin_margined and quote != "USD":
            return f"{cls.protocol} lists BASE-USD contracts only (USDⓈ-M: binance-usdm)"
        if not cls.coin_margined and quote == "USD":
            return f"{cls.protocol} lists no BASE-USD contracts (COIN-M: binance-coinm)"
        return None

    def connect_url(self) -> str:
        # Streams go in the URL: nothing to subscribe after connecting.
        streams = [f"{s.lower()}@{DEPTH_STREAM}" for s in self.by_symbol]
        if self.spec.audit:
            streams += [f"{s.lower()}@{TICKER_STREAM}" for s in self.by_symbol]
        return f"{self.spec.url or self.default_url}?streams={'/'.join(streams)}"

    def keepalive_frame(self) -> str:
        self.request_id += 1
        return orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": self.request_id}).decode()

    def snapshot_request(self, instrument: str) -> tuple[str, int]:
        """The REST snapshot of one symbol: (url, weight)."""
        base = self.spec.rest_url or self.default_rest_url
        query = f"symbol={self.wire_symbol(instrument)}&limit={self.snapshot_limit}"
        return f"{base}{self.depth_path}?{query}", snapshot_weight(self.snapshot_limit)

    def parse_snapshot(self, body: str) -> tuple[int, Any, Any]:
        """Sample (COIN-M; USDⓈ-M has no `symbol`/`pair`): {"lastUpdateId":16769853,
        "symbol":"BTCUSD_PERP","pair":"BTCUSD","E":1591250106370,"T":1591250106368,
        "bids":[["9638.0","431"]],"asks":[["9638.2","12"]]}"""
        return parse_snapshot(body, self.levels)

    def parse(self, frame: str) -> list[Event] | BookUpdate:
        """Combined-stream frames: `{"stream":"<name>","data":{...}}`."""
        msg = orjson.loads(frame)
        data = msg.get("data") if type(msg) is dict else None
        if type(data) is not dict:
            return self._control(msg)
        symbol = data.get("s")
        instrument = self.by_symbol.get(symbol) if type(symbol) is str else None
        if instrument is None:
            raise FrameError("unknown_symbol", repr(symbol)[:40])
        kind = data.get("e")
        if kind == "depthUpdate":
            try:
                return self.parse_event(instrument, data)
            except DECODE_ERRORS as exc:
                raise lost_update((instrument,), exc) from None
        if kind == "bookTicker":
            return [parse_book_ticker(instrument, data)]
        return []  # other streams (trades, mark price) are not ours to use

    def parse_event(self, instrument: str, data: dict[str, Any]) -> BookUpdate:
        """A `depthUpdate` -> a delta with `U` first, `u` last and `pu` previous.

        Sample (USDⓈ-M): {"e":"depthUpdate","E":123456789,"T":123456788,"s":"BTCUSDT",
        "U":157,"u":160,"pu":149,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}
        """
        first = data["U"]
        last = data["u"]
        prev = data["pu"]
        ms = data["E"]
        if type(first) is not int or type(last) is not int or type(prev) is not int:
            raise FrameError("malformed", f"U {first!r} u {last!r} pu {prev!r}"[:80])
        bids = self.levels.rows(data["b"])
        asks = self.levels.rows(data["a"])
        ts_ns = integer(ms, "E") * 1_000_000
        return BookUpdate(instrument, False, bids, asks, last, first, -1, ts_ns, prev_id=prev)

    def _control(self, msg: object) -> list[Event]:
        """`{"result":null,"id":1}` (an answer: LIST_SUBSCRIPTIONS, our keepalive, answers
        with a list), `{"code":2,"msg":"...","id":1}` or `{"error":{...},"id":1}`."""
        if type(msg) is not dict:
            raise FrameError("not_an_object", repr(msg)[:80])
        error = msg.get("error", msg) if "code" in msg or "error" in msg else None
        if type(error) is dict and "code" in error:
            raise VenueRejected(f"code {error.get('code')}: {error.get('msg')}")
        return []


class BinanceUsdm(BinanceFutures):
    """Binance USDⓈ-M futures (perpetuals and dated, quoted in USDT or USDC)."""

    protocol = "binance-usdm"
    default_url = USDM_WS_URL
    default_rest_url = USDM_REST_URL
    depth_path = "/fapi/v1/depth"
    capture_addresses = ("fstream.binance.com",)
    coin_margined = False


class BinanceCoinm(BinanceFutures):
    """Binance COIN-M futures (inverse, quoted in USD, sized in contracts of fixed USD)."""

    protocol = "binance-coinm"
    default_url = COINM_WS_URL
    default_rest_url = COINM_REST_URL
    depth_path = "/dapi/v1/depth"
    capture_addresses = ("dstream.binance.com",)
    coin_margined = True

    def contract_sizes_requests(self) -> list[tuple[str, int]]:
        base = self.spec.rest_url or self.default_rest_url
        return [(f"{base}/dapi/v1/exchangeInfo", EXCHANGE_INFO_WEIGHT)]

    def parse_contract_sizes(self, body: str) -> dict[str, ContractSize]:
        """Sample: {"symbols":[{"symbol":"BTCUSD_PERP","pair":"BTCUSD","contractType":
        "PERPETUAL","contractSize":100,"marginAsset":"BTC","quoteAsset":"USD",...}],...}"""
        doc = orjson.loads(body)
        symbols = doc.get("symbols") if type(doc) is dict else None
        if type(symbols) is not list:
            raise FrameError("malformed", "exchangeInfo has no symbols list")
        sizes: dict[str, ContractSize] = {}
        for entry in symbols:
            # a missing id looks up None, which no instrument is: not ours (no extra branch)
            instrument = self.by_symbol.get(entry.get("symbol")) if type(entry) is dict else None  # type: ignore[arg-type]
            if instrument is None:
                continue
            value = entry.get("contractSize")
            if type(value) not in (int, float) or not (math.isfinite(value) and value > 0):
                raise FrameError("malformed", f"contractSize {value!r} of {instrument}")
            sizes[instrument] = ContractSize(float(value), in_quote=True)
        return sizes
