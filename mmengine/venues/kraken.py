"""Kraken spot `book` channel over WebSocket v1 and v2 (venue thread).

Integrity is Kraken's CRC32 book checksum (venue-protocols.md 3.4; Kraken "Spot WebSocket
book checksum" guide); there are no sequence numbers. After applying a whole message and
truncating each side to the subscribed depth (Kraken sends no deletes for levels leaving the
window), the CRC32 of the top 10 asks (ascending) then the top 10 bids (descending), each
level written as `fmt(price) + fmt(qty)` with `fmt(s) = s.replace(".", "").lstrip("0")`,
must equal the message's checksum as an unsigned 32-bit value.

- v1 (`kraken-v1`, what the 2021 capture speaks) sends prices and sizes as strings and the
  checksum as the string `c` on updates only; `fmt` takes the wire strings as received.
- v2 (`kraken-v2`) sends JSON numbers and an integer `checksum` on snapshots and updates;
  the numbers are first written with the pair's `price_precision` / `qty_precision`. We take
  those from the v2 `instrument` channel: it is subscribed first on every connection, and a
  pair's `book` is subscribed as soon as its precisions are known, so no book message ever
  arrives that we cannot verify.

A mismatch drops that pair's book and resubscribes that pair alone (unsubscribe, then
subscribe for a new snapshot); the other pairs on the connection stay LIVE.

Hot path: each level's strings are put in checksum form once, when the message is parsed,
and the book keeps those forms (`BookSide.wire`); the top-10 text of each side is cached and
rebuilt only after a message touches that side's top 10.
"""

from __future__ import annotations

from datetime import UTC, datetime
from operator import itemgetter, neg
from typing import Any
from zlib import crc32

import orjson

from mmengine.book import BookSide, L2Book
from mmengine.errors import ConfigError, FrameError, IntegrityError, VenueRejected
from mmengine.model import BookState
from mmengine.venues.base import (
    INF,
    InstrumentStats,
    Session,
    Venue,
    VenueSpec,
    level,
    seconds_to_ns,
)

WS_URL_V1 = "wss://ws.kraken.com"
WS_URL_V2 = "wss://ws.kraken.com/v2"
DEPTHS = (10, 25, 100, 500, 1000)  # book depths both versions offer (3.1)
CHECKSUM_LEVELS = 10  # top 10 asks then top 10 bids (3.4)
KEEPALIVE_S = 30.0  # the server closes a connection after ~1 min without requests (3.5)
SILENCE_S = 15.0  # heartbeats arrive about once a second, even on busy connections (3.5)
# v1 spells these assets the legacy way (AssetPairs `wsname`); v2 uses the common names (3.6).
V1_ASSET = {"BTC": "XBT", "DOGE": "XDG"}
FROM_V1_ASSET = {v: k for k, v in V1_ASSET.items()}

# A book level as kept for the checksum: (price, size, fmt(price string), fmt(size string)).
KrakenLevel = tuple[float, float, str, str]


# --- symbols -------------------------------------------------------------------------------


def normalize_pair(pair: str) -> str:
    """`XBT/USD` (v1) or `BTC/USD` (v2) -> `BTC-USD`; `XDG` -> `DOGE`."""
    base, sep, quote = pair.partition("/")
    if not sep or not base or not quote:
        raise ValueError(f"expected BASE/QUOTE, was {pair!r}")
    return f"{FROM_V1_ASSET.get(base, base)}-{FROM_V1_ASSET.get(quote, quote)}"


def _split(instrument: str) -> tuple[str, str]:
    parts = instrument.split("-")
    if len(parts) != 2:
        raise ConfigError([f"kraken: {instrument!r} is not a spot BASE-QUOTE pair"])
    return parts[0], parts[1]


def v1_pair(instrument: str) -> str:
    """`BTC-USD` -> `XBT/USD` (v1 wsname)."""
    base, quote = _split(instrument)
    return f"{V1_ASSET.get(base, base)}/{V1_ASSET.get(quote, quote)}"


def v2_symbol(instrument: str) -> str:
    """`BTC-USD` -> `BTC/USD`."""
    base, quote = _split(instrument)
    return f"{base}/{quote}"


# --- checksum ------------------------------------------------------------------------------


def fmt(s: str) -> str:
    """Kraken's checksum form of a decimal string: no `.`, no leading zeros (3.4)."""
    return s.replace(".", "").lstrip("0")


def checksum_of_strings(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """CRC32 (unsigned) of the top 10 asks (best first) then bids, from decimal strings.

    v1 passes the wire strings; v2 passes `f"{price:.{price_precision}f}"` and the like.
    """
    text = "".join(fmt(p) + fmt(q) for p, q in asks[:CHECKSUM_LEVELS] + bids[:CHECKSUM_LEVELS])
    return crc32(text.encode())


def book_checksum(asks: BookSide, bids: BookSide) -> int:
    """`checksum_of_strings` on a live book, whose sides keep `fmt`-ed strings per level."""
    ask_wire = asks.wire
    bid_wire = bids.wire
    assert ask_wire is not None and bid_wire is not None
    parts = [s for key in asks.keys[:CHECKSUM_LEVELS] for s in ask_wire[key]]
    parts += [s for key in bids.keys[:CHECKSUM_LEVELS] for s in bid_wire[-key]]
    return crc32("".join(parts).encode())


# --- parsing (pure functions over the wire shapes) ------------------------------------------


def parse_v1_levels(levels: list[list[str]]) -> list[KrakenLevel]:
    """v1 levels `[price, volume, timestamp(, "r")]` -> checksum-ready levels.

    Sample: [["0.042990","364630.28272081","1618678145.920470"]]
    """
    out = []
    for lv in levels:
        p = lv[0]
        q = lv[1]
        price = float(p)
        size = float(q)
        if not (0.0 < price < INF and 0.0 <= size < INF):
            raise FrameError("bad_level", f"price {p!r} size {q!r}")
        out.append((price, size, p.replace(".", "").lstrip("0"), q.replace(".", "").lstrip("0")))
    return out


def parse_v2_levels(levels: list[dict[str, float]], pfmt: str, qfmt: str) -> list[KrakenLevel]:
    """v2 levels `{"price": 45283.5, "qty": 0.1}` -> checksum-ready levels, the numbers
    written with the pair's precisions (`pfmt` like ".1f")."""
    out = []
    for lv in levels:
        price = lv["price"]
        size = lv["qty"]
        if type(price) is not float:
            price = float(price) if type(price) is int else INF
        if type(size) is not float:
            size = float(size) if type(size) is int else INF
        if not (0.0 < price < INF and 0.0 <= size < INF):
            raise FrameError("bad_level", f"price {lv.get('price')!r} size {lv.get('qty')!r}")
        out.append((price, size, fmt(format(price, pfmt)), fmt(format(size, qfmt))))
    return out


def rfc3339_ns(ts: str) -> int:
    """`2023-10-06T17:35:55.440295Z` -> ns since the epoch."""
    dt = datetime.fromisoformat(ts)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


# --- shared book steps --------------------------------------------------------------------


class _KrakenBook(Venue):
    """What both versions share: depth, apply + truncate + checksum, resubscribe one pair."""

    keep_wire = True
    keepalive_interval_s = KEEPALIVE_S
    silence_timeout_s = SILENCE_S
    depths = DEPTHS

    def __init__(self, spec: VenueSpec, session: Session) -> None:
        if spec.depth not in DEPTHS:
            raise ConfigError(
                [
                    f"{spec.name}.depth: Kraken offers {', '.join(map(str, DEPTHS))}; "
                    f"was {spec.depth}"
                ]
            )
        super().__init__(spec, session)
        self._req_id = 0
        # Per book, the checksum text of the top 10 asks and bids (None: to be rebuilt).
        self._tops: dict[str, list[bytes | None]] = {i: [None, None] for i in self.books}

    def _next_req_id(self) -> int:
        self._req_id += 1
        return self._req_id

    def _load(
        self,
        book: L2Book,
        asks: list[KrakenLevel],
        bids: list[KrakenLevel],
        checksum: int | None,
        stats: InstrumentStats,
    ) -> None:
        """A snapshot replaces the book; verified when it carries a checksum (v2)."""
        book.asks.load_wire(asks)
        book.bids.load_wire(bids)
        book.truncate()
        self._tops[book.instrument] = [None, None]
        stats.snapshots += 1
        if checksum is not None:
            self._verify(book, checksum, stats)

    def _apply(
        self,
        book: L2Book,
        asks: list[KrakenLevel],
        bids: list[KrakenLevel],
        checksum: int | None,
        stats: InstrumentStats,
    ) -> None:
        """Apply every level of the message in order, truncate to depth, then verify.

        The checksum string of a side only changes when a level at or above its 10th level
        changes (or the side holds fewer than 10): otherwise the cached string is reused.
        """
        tops = self._tops[book.instrument]
        if asks and book.asks.apply_wire(asks, CHECKSUM_LEVELS):
            tops[0] = None
        if bids and book.bids.apply_wire(bids, CHECKSUM_LEVELS):
            tops[1] = None
        # Truncate to the subscribed depth (3.4); never reaches the top 10 (depth >= 10).
        depth = book.depth
        if len(book.asks.keys) > depth or len(book.bids.keys) > depth:
            book.truncate()
        stats.updates += 1
        if checksum is not None:
            self._verify(book, checksum, stats)

    def _verify(self, book: L2Book, checksum: int, stats: InstrumentStats) -> None:
        stats.checksums_checked += 1
        tops = self._tops[book.instrument]
        ask_text = tops[0]
        if ask_text is None:
            wire = book.asks.wire
            assert wire is not None
            keys = book.asks.keys[:CHECKSUM_LEVELS]
            ask_text = tops[0] = "".join(map("".join, map(wire.__getitem__, keys))).encode()
        bid_text = tops[1]
        if bid_text is None:
            wire = book.bids.wire
            assert wire is not None
            prices = map(neg, book.bids.keys[:CHECKSUM_LEVELS])
            bid_text = tops[1] = "".join(map("".join, map(wire.__getitem__, prices))).encode()
        got = crc32(bid_text, crc32(ask_text))
        if got != checksum:
            stats.checksums_failed += 1
            raise IntegrityError(book.instrument, "checksum", f"computed {got}, venue {checksum}")


# --- v1 -----------------------------------------------------------------------------------


class KrakenV1(_KrakenBook):
    """Kraken WebSocket v1 `book-<depth>`: array frames, string levels, string checksum `c`.

    Snapshot: [1360,{"as":[["0.000022900","13355.87450757","1618678123.481570"]],
               "bs":[...]},"book-1000","ADA/XBT"]
    Update:   [1920,{"a":[["0.042990","364630.28272081","1618678145.920470"]]},
               {"b":[["0.042990","0.00000000","1618678145.920708"]],"c":"4105471083"},
               "book-1000","SC/EUR"]
    """

    protocol = "kraken-v1"
    default_url = WS_URL_V1

    def __init__(self, spec: VenueSpec, session: Session) -> None:
        super().__init__(spec, session)
        self.pairs = {inst: v1_pair(inst) for inst in self.books}
        self.by_pair = {self.pairs[inst]: book for inst, book in self.books.items()}
        # Route on channelName and pair: channel ids are deprecated (3.7).
        self.channel = f"book-{spec.depth}"

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        for text in sent:
            msg = orjson.loads(text)
            sub = msg.get("subscription") if isinstance(msg, dict) else None
            if (
                msg.get("event") == "subscribe"
                and isinstance(sub, dict)
                and sub.get("name") == "book"
            ):
                pairs = tuple(normalize_pair(p) for p in msg.get("pair", ()))
                return pairs, int(sub.get("depth", 10))
        return None

    def connect_url(self) -> str:
        return self.spec.url or WS_URL_V1

    def venue_symbol(self, instrument: str) -> str:
        return self.pairs[instrument]

    def _subscription(self, event: str, pairs: list[str]) -> str:
        return orjson.dumps(
            {
                "event": event,
                "pair": pairs,
                "subscription": {"name": "book", "depth": self.spec.depth},
            }
        ).decode()

    def subscribe_frames(self) -> list[str]:
        frames = [self._subscription("subscribe", list(self.by_pair))]
        if self.spec.audit:
            # v1 `ticker` (3.3): best bid/ask, updated on trades: a loose audit by arrival.
            frames.append(
                orjson.dumps(
                    {
                        "event": "subscribe",
                        "pair": list(self.by_pair),
                        "subscription": {"name": "ticker"},
                    }
                ).decode()
            )
        return frames

    def keepalive_frame(self) -> str:
        return f'{{"event":"ping","reqid":{self._next_req_id()}}}'

    def request_resync(self, book: L2Book) -> None:
        # 3.4: on mismatch, unsubscribe and subscribe `book` for that pair for a new snapshot.
        pair = [self.pairs[book.instrument]]
        self.session.send(self._subscription("unsubscribe", pair))
        self.session.send(self._subscription("subscribe", pair))

    def on_frame(self, frame: str, recv_ns: int) -> None:
        msg = orjson.loads(frame)
        if type(msg) is not list:
            self._on_event(msg)
            return
        channel = msg[-2] if len(msg) >= 4 else None
        if type(channel) is not str or type(msg[-1]) is not str:
            raise FrameError("malformed", "a data frame is [channelID, payload..., name, pair]")
        if channel != self.channel:
            if channel == "ticker" and self.spec.audit:
                self._on_ticker(msg)
            return  # trade, spread: not ours to use
        book = self.by_pair.get(msg[-1])
        if book is None:
            raise FrameError("unknown_symbol", repr(msg[-1]))
        stats = self.stats[book.instrument]
        self.venue_stats.book_frames += 1
        stats.messages += 1
        first = msg[1]
        if "as" in first or "bs" in first:
            # Snapshots carry no checksum in v1 (3.3, [V 10/10]): LIVE at once.
            wire_asks = first.get("as") or []
            wire_bids = first.get("bs") or []
            asks = parse_v1_levels(wire_asks)
            bids = parse_v1_levels(wire_bids)
            # The newest level timestamp stands for the snapshot's exchange time (the strings
            # all read `seconds.micros`, so the greatest string is the latest time).
            ts_ns = seconds_to_ns(max(map(itemgetter(2), wire_asks + wire_bids), default="0"))
            self._load(book, asks, bids, None, stats)
            book.exchange_ts_ns = ts_ns
            self.go_live(book, recv_ns)
            return
        state = book.state
        if state is not BookState.LIVE and state is not BookState.STALE:
            stats.dropped_stale += 1  # in flight before the new snapshot: superseded by it
            return
        # An update is one object, or two when both sides change; `c` sits in the last one.
        asks = bids = ()
        checksum = None
        ts = None
        for obj in msg[1:-2]:
            a = obj.get("a")
            if a is not None:
                asks = parse_v1_levels(a)
                if a:
                    ts = a[-1][2]
            b = obj.get("b")
            if b is not None:
                bids = parse_v1_levels(b)
                if b:
                    ts = b[-1][2]
            c = obj.get("c")
            if c is not None:
                checksum = int(c)
        ts_ns = seconds_to_ns(ts) if ts is not None else None  # parsed before the book moves
        self._apply(book, asks, bids, checksum, stats)  # type: ignore[arg-type]
        if ts_ns is not None:
            book.exchange_ts_ns = ts_ns
        self.emit(book, recv_ns)

    def _on_ticker(self, msg: list[Any]) -> None:
        """`[1668,{"a":["13.253900",35,"35.72"],"b":["13.232900",185,"185.18"],...},"ticker",
        "WAVES/EUR"]`: `a`/`b` are [price, whole lot volume, lot volume]."""
        book = self.by_pair.get(msg[-1])
        if book is None:
            raise FrameError("unknown_symbol", repr(msg[-1]))
        body = msg[1]
        bid, _ = level(body["b"][0], "0")
        ask, _ = level(body["a"][0], "0")
        self.audit_by_arrival(book, bid, ask)

    def _on_event(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            raise FrameError("not_an_object", repr(msg)[:80])
        event = msg.get("event")
        if event == "heartbeat" or event == "pong" or event == "systemStatus":
            return
        if event == "subscriptionStatus" and msg.get("status") == "error":
            raise VenueRejected(f"{msg.get('pair')}: {msg.get('errorMessage')}")
        if event == "error":
            raise VenueRejected(str(msg.get("errorMessage")))


# --- v2 -----------------------------------------------------------------------------------


class KrakenV2(_KrakenBook):
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

    def __init__(self, spec: VenueSpec, session: Session) -> None:
        super().__init__(spec, session)
        self.symbols = {inst: v2_symbol(inst) for inst in self.books}
        self.by_symbol = {self.symbols[inst]: book for inst, book in self.books.items()}
        # symbol -> (price format, qty format), e.g. (".1f", ".8f"), from `instrument`
        self.formats: dict[str, tuple[str, str]] = {}
        self.book_subscribed: set[str] = set()  # on this connection

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        symbols: list[str] = []
        depth = None
        for text in sent:
            msg = orjson.loads(text)
            params = msg.get("params") if isinstance(msg, dict) else None
            if (
                msg.get("method") == "subscribe"
                and isinstance(params, dict)
                and params.get("channel") == "book"
            ):
                symbols += [s for s in params.get("symbol", ()) if s not in symbols]
                depth = int(params.get("depth", 10))
        if not symbols:
            return None
        return tuple(normalize_pair(s) for s in symbols), depth

    def connect_url(self) -> str:
        return self.spec.url or WS_URL_V2

    def venue_symbol(self, instrument: str) -> str:
        return self.symbols[instrument]

    def subscribe_frames(self) -> list[str]:
        # The book subscription follows once the pairs' precisions are known (see module doc).
        frames = [
            orjson.dumps(
                {
                    "method": "subscribe",
                    "params": {"channel": "instrument", "snapshot": True},
                    "req_id": self._next_req_id(),
                }
            ).decode()
        ]
        if self.spec.audit:
            # `event_trigger: bbo` emits on every change of best bid or offer (3.2).
            frames.append(
                orjson.dumps(
                    {
                        "method": "subscribe",
                        "params": {
                            "channel": "ticker",
                            "symbol": list(self.symbols.values()),
                            "event_trigger": "bbo",
                        },
                        "req_id": self._next_req_id(),
                    }
                ).decode()
            )
        return frames

    def _book_request(self, method: str, symbols: list[str]) -> str:
        params: dict[str, Any] = {"channel": "book", "symbol": symbols, "depth": self.spec.depth}
        if method == "subscribe":
            params["snapshot"] = True
        return orjson.dumps(
            {"method": method, "params": params, "req_id": self._next_req_id()}
        ).decode()

    def on_connected(self) -> None:
        super().on_connected()
        self.book_subscribed.clear()

    def keepalive_frame(self) -> str:
        return f'{{"method":"ping","req_id":{self._next_req_id()}}}'

    def request_resync(self, book: L2Book) -> None:
        # 3.4: on mismatch, unsubscribe and subscribe `book` for that pair for a new snapshot.
        symbol = self.symbols[book.instrument]
        if symbol not in self.book_subscribed:
            return  # subscribed as soon as its precisions arrive
        self.session.send(self._book_request("unsubscribe", [symbol]))
        self.session.send(self._book_request("subscribe", [symbol]))

    def on_frame(self, frame: str, recv_ns: int) -> None:
        msg = orjson.loads(frame)
        if type(msg) is not dict:
            raise FrameError("not_an_object", repr(msg)[:80])
        channel = msg.get("channel")
        if channel == "book":
            self._on_book(msg, recv_ns)
        elif channel == "instrument":
            self._on_instrument(msg)
        elif channel == "ticker" and self.spec.audit:
            self._on_ticker(msg)
        elif channel is None and msg.get("success") is False:
            raise VenueRejected(f"{msg.get('symbol')}: {msg.get('error')}")
        # heartbeat, status, pong, acks: nothing to do

    def _on_ticker(self, msg: dict[str, Any]) -> None:
        """`{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":45283.4,
        "bid_qty":0.5,"ask":45285.2,"ask_qty":0.1,...}]}` (numbers, not strings)."""
        for entry in msg["data"]:
            book = self.by_symbol.get(entry["symbol"])
            if book is None:
                raise FrameError("unknown_symbol", repr(entry["symbol"]))
            bid, _ = level(str(entry["bid"]), "0")
            ask, _ = level(str(entry["ask"]), "0")
            self.audit_by_arrival(book, bid, ask)

    def _on_instrument(self, msg: dict[str, Any]) -> None:
        """`{"channel":"instrument","type":"snapshot","data":{"assets":[...],"pairs":[{"symbol":
        "BTC/USD","price_precision":1,"qty_precision":8,...}]}}`"""
        pairs = msg["data"]["pairs"]
        found: list[str] = []
        for pair in pairs:
            symbol = pair.get("symbol")
            if symbol not in self.by_symbol:
                continue
            formats = (f".{int(pair['price_precision'])}f", f".{int(pair['qty_precision'])}f")
            previous = self.formats.get(symbol)
            self.formats[symbol] = formats
            if symbol not in self.book_subscribed:
                found.append(symbol)
            elif previous != formats:
                # The kept checksum strings used the old precisions: start that book over.
                book = self.by_symbol[symbol]
                self.resync(book, "precision_changed")
        if found:
            self.book_subscribed.update(found)
            self.session.send(self._book_request("subscribe", found))
        if msg.get("type") == "snapshot":
            missing = [s for s in self.by_symbol if s not in self.formats]
            if missing:
                self.skip("unknown_symbol", f"no instrument data for {', '.join(missing)}")

    def _on_book(self, msg: dict[str, Any], recv_ns: int) -> None:
        snapshot = msg["type"] == "snapshot"
        # Parse and validate every entry before touching any book.
        parsed = []
        for item in msg["data"]:
            symbol = item["symbol"]
            book = self.by_symbol.get(symbol)
            if book is None:
                raise FrameError("unknown_symbol", repr(symbol))
            formats = self.formats.get(symbol)
            if formats is None:
                raise FrameError("no_precision", repr(symbol))
            pfmt, qfmt = formats
            checksum = item.get("checksum")
            if checksum is not None and type(checksum) is not int:
                raise FrameError("malformed", f"checksum {checksum!r}")
            ts = item.get("timestamp")
            parsed.append(
                (
                    book,
                    parse_v2_levels(item.get("asks") or (), pfmt, qfmt),
                    parse_v2_levels(item.get("bids") or (), pfmt, qfmt),
                    checksum,
                    rfc3339_ns(ts) if ts else 0,
                )
            )
        for book, asks, bids, checksum, ts_ns in parsed:
            stats = self.stats[book.instrument]
            self.venue_stats.book_frames += 1
            stats.messages += 1
            if snapshot:
                try:
                    self._load(book, asks, bids, checksum, stats)
                except IntegrityError as exc:
                    self.resync(book, exc.reason)
                    continue
                if ts_ns:
                    book.exchange_ts_ns = ts_ns
                self.go_live(book, recv_ns)
                continue
            state = book.state
            if state is not BookState.LIVE and state is not BookState.STALE:
                stats.dropped_stale += 1  # in flight before the new snapshot: superseded
                continue
            try:
                self._apply(book, asks, bids, checksum, stats)
            except IntegrityError as exc:
                self.resync(book, exc.reason)
                continue
            if ts_ns:
                book.exchange_ts_ns = ts_ns
            self.emit(book, recv_ns)
