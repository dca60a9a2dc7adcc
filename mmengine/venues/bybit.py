"""Bybit v5 public order books, spot and linear: `orderbook.{depth}.{symbol}` (venue thread).

Protocol facts (shared/docs/venue-protocols.md section 5):
1. One WebSocket per category: `/v5/public/spot` and `/v5/public/linear`. Subscribe with
   `{"req_id":..,"op":"subscribe","args":["orderbook.200.BTCUSDT"]}`; spot takes at most 10
   args per request (we send at most 10 for both). Depths 1, 50, 200, 1000 for both
   categories; `orderbook.1` sends snapshots only.
2. `type: "snapshot"` replaces the book, at any time; a snapshot with `u == 1` is the venue
   restarting that book (counted in `restarts`, and replaced like any snapshot).
3. `type: "delta"` applies (absolute sizes, "0" deletes) and must have
   `u == previous u + 1` on its topic. A gap, or a delta before any snapshot, drops that one
   book and resubscribes its topic (unsubscribe, subscribe: a new snapshot follows); the
   other books on the connection stay LIVE.
4. `seq` is the cross sequence (strictly increasing, comparable across depths of a symbol):
   kept in `L2Book.cross_seq` and so in every `BookTop`.
5. Keepalive: `{"req_id":"..","op":"ping"}` every 20 s; the pong is an `op: "ping"` ack.
6. Audit (`audit: true`, linear only): `tickers.{symbol}` is a snapshot followed by *partial*
   deltas, merged field by field. When its `cs` equals the book's cross sequence the
   best bid/ask must agree (a disagreement resyncs, like a checksum failure); otherwise,
   which the recordings show is always the case (0 of 740), the book at arrival is compared
   as a loose count. Spot tickers carry no bid/ask fields at all, so spot has no ticker
   audit (a spot venue with `audit: true` says so once at start).

Symbols: the same wire string `BTCUSDT` names spot and the linear perpetual, so one venue
object serves one category. Spot `BTC-USDT` <-> `BTCUSDT`; linear `BTC-USDT-PERP` <->
`BTCUSDT` and `BTC-USDC-PERP` <-> `BTCPERP` (USDC perps). Wire symbols are never split.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from mmengine.book import L2Book
from mmengine.errors import ConfigError, FrameError, IntegrityError, VenueRejected
from mmengine.model import BookState
from mmengine.venues.base import Session, Venue, VenueSpec, levels, log

SPOT_URL = "wss://stream.bybit.com/v5/public/spot"
LINEAR_URL = "wss://stream.bybit.com/v5/public/linear"
DEPTHS = (1, 50, 200, 1000)  # orderbook.N for spot and linear (5.2)
ARGS_PER_REQUEST = 10  # spot's limit per subscribe request (5.5); linear follows it too
PING_S = 20.0  # send {"op":"ping"} this often (5.5)
SILENCE_S = 45.0  # pongs come every 20 s even on a quiet book: two missed means dead
SNAPSHOT = "snapshot"
DELTA = "delta"
TICKER_FIELDS = ("bid1Price", "bid1Size", "ask1Price", "ask1Size")
# Quote coins tried, longest first, to name a wire symbol from a foreign capture (replay only).
KNOWN_QUOTES = ("USDT", "USDC", "USDE", "EUR", "BRL", "BTC", "ETH", "DAI", "MNT")

Level = tuple[float, float]


# --- symbols -------------------------------------------------------------------------------


def spot_symbol(instrument: str) -> str:
    """`BTC-USDT` -> `BTCUSDT` (joining is safe; splitting is not)."""
    parts = instrument.split("-")
    if len(parts) != 2:
        raise ConfigError([f"bybit-v5-spot: {instrument!r} is not BASE-QUOTE"])
    return parts[0] + parts[1]


def linear_symbol(instrument: str) -> str:
    """`BTC-USDT-PERP` -> `BTCUSDT`; `BTC-USDC-PERP` -> `BTCPERP` (Bybit's USDC perps)."""
    parts = instrument.split("-")
    if len(parts) != 3 or parts[2] != "PERP" or parts[1] not in ("USDT", "USDC"):
        raise ConfigError(
            [f"bybit-v5-linear: {instrument!r} is not BASE-USDT-PERP or BASE-USDC-PERP"]
        )
    return parts[0] + ("USDT" if parts[1] == "USDT" else "PERP")


def normalize_symbol(symbol: str, category: str) -> str | None:
    """A wire symbol from a capture's subscribe frames -> our name, from known quote coins;
    None when no known quote ends it (dated futures, exotic quotes)."""
    if category == "linear":
        if symbol.endswith("PERP") and len(symbol) > 4:
            return f"{symbol[:-4]}-USDC-PERP"
        return f"{symbol[:-4]}-USDT-PERP" if symbol.endswith("USDT") and len(symbol) > 4 else None
    for quote in KNOWN_QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}-{quote}"
    return None


# --- parsing (pure functions over the wire shapes) ------------------------------------------


@dataclass(slots=True)
class BookMessage:
    """One parsed `orderbook.N` message.

    Delta (spot): {"topic":"orderbook.200.BTCUSDT","ts":1786310816618,"type":"delta",
        "data":{"s":"BTCUSDT","b":[["65140.4","0.875077"]],"a":[["65154.6","0.09948"],
        ["65239.1","0"]],"u":62505425,"seq":112488545865},"cts":1786310816585}
    """

    topic: str
    symbol: str  # data.s
    snapshot: bool
    bids: list[Level]
    asks: list[Level]
    update_id: int  # u
    cross_seq: int  # seq; -1 if absent
    ts_ns: int  # cts (matching engine) if sent, else ts (system), in ns


def _levels(raw: object) -> list[Level]:
    """`[["65140.4","0.875077"], ...]` -> float pairs (each row must be a list: indexing a
    string row would read its characters as numbers)."""
    if type(raw) is not list:
        raise FrameError("malformed", f"levels {raw!r}"[:80])
    if any(type(row) is not list for row in raw):
        raise FrameError("malformed", "a level is not a [price, size] list")
    return levels(raw)


def _int(value: object, name: str) -> int:
    if type(value) is not int:
        raise FrameError("malformed", f"{name} {value!r}"[:80])
    return value


def parse_book(msg: dict[str, Any]) -> BookMessage:
    """Validate a whole `orderbook.N` message; raises FrameError (or KeyError/TypeError/
    ValueError, which the venue seam counts as malformed) without touching any book."""
    kind = msg["type"]
    if kind != SNAPSHOT and kind != DELTA:
        raise FrameError("malformed", f"type {kind!r}"[:80])
    data = msg["data"]
    if type(data) is not dict:
        raise FrameError("malformed", "data is not an object")
    symbol = data["s"]
    if type(symbol) is not str:
        raise FrameError("malformed", f"s {symbol!r}"[:80])
    seq = data.get("seq")
    ts = msg.get("cts", msg.get("ts", 0))
    return BookMessage(
        msg["topic"],
        symbol,
        kind == SNAPSHOT,
        _levels(data["b"]),
        _levels(data["a"]),
        _int(data["u"], "u"),
        -1 if seq is None else _int(seq, "seq"),
        _int(ts, "ts") * 1_000_000,
    )


def merge_ticker(state: dict[str, Any], msg: dict[str, Any]) -> dict[str, Any]:
    """Linear `tickers`: a snapshot replaces, a delta updates only the fields it carries
    (a missing field means unchanged, 5.7). Returns the merged state.

    Delta: {"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",
            "bid1Price":"65114.20","bid1Size":"6.054","ask1Price":"65114.30",
            "ask1Size":"10.486"},"cs":753843907770,"ts":1786310817883}
    """
    data = msg["data"]
    if type(data) is not dict:
        raise FrameError("malformed", "ticker data is not an object")
    if msg.get("type") == SNAPSHOT:
        state.clear()
    state.update(data)
    return state


class _Bybit(Venue):
    """What both categories share; a subclass fixes the category and its symbols."""

    category: ClassVar[str]
    keepalive_interval_s = PING_S
    silence_timeout_s = SILENCE_S
    depths = DEPTHS
    ticker_audit: ClassVar[bool] = False  # the category's tickers carry bid1/ask1

    def __init__(self, spec: VenueSpec, session: Session) -> None:
        super().__init__(spec, session)
        self.symbols = {inst: self.wire_symbol(inst) for inst in self.books}
        self.topics = {inst: f"orderbook.{spec.depth}.{s}" for inst, s in self.symbols.items()}
        self.by_topic = {self.topics[inst]: book for inst, book in self.books.items()}
        self.by_ticker = {f"tickers.{self.symbols[i]}": b for i, b in self.books.items()}
        self.tickers: dict[str, dict[str, Any]] = {inst: {} for inst in self.books}
        self.restarts: dict[str, int] = dict.fromkeys(self.books, 0)  # u == 1 snapshots
        self._req_ids = itertools.count(1)
        if spec.audit and not self.ticker_audit:
            log.info(
                "%s: %s tickers carry no best bid/ask; the top-of-book audit is not available",
                spec.name,
                self.category,
            )

    @classmethod
    def wire_symbol(cls, instrument: str) -> str:
        raise NotImplementedError

    @classmethod
    def instrument_problem(cls, instrument: str) -> str | None:
        try:
            cls.wire_symbol(instrument)
        except ConfigError as exc:
            return exc.problems[0]
        return None

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        found: list[str] = []
        depth = None
        for text in sent:
            try:
                msg = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(msg, dict) or msg.get("op") != "subscribe":
                continue
            for arg in msg.get("args", ()):
                parts = str(arg).split(".")
                if len(parts) == 3 and parts[0] == "orderbook":
                    name = normalize_symbol(parts[2], cls.category)
                    if name is not None and name not in found:
                        found.append(name)
                        depth = int(parts[1])
        return (tuple(found), depth) if found else None

    def connect_url(self) -> str:
        return self.spec.url or self.default_url

    def venue_symbol(self, instrument: str) -> str:
        return self.symbols[instrument]

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

    def keepalive_frame(self) -> str:
        return orjson.dumps({"req_id": f"ping-{next(self._req_ids)}", "op": "ping"}).decode()

    def on_connected(self) -> None:
        super().on_connected()
        for state in self.tickers.values():
            state.clear()

    def request_resync(self, book: L2Book) -> None:
        # 3. Resubscribe that one topic: the new subscription begins with a snapshot.
        topic = [self.topics[book.instrument]]
        self.session.send(self._request("unsubscribe", topic))
        self.session.send(self._request("subscribe", topic))

    # --- frames ----------------------------------------------------------------------------

    def on_frame(self, frame: str, recv_ns: int) -> None:
        msg = orjson.loads(frame)
        if type(msg) is not dict:
            raise FrameError("not_an_object", repr(msg)[:80])
        topic = msg.get("topic")
        if topic is None:
            # acks and pongs: {"success":true,"ret_msg":"pong","conn_id":"..","op":"ping"}
            if msg.get("success") is False:
                raise VenueRejected(f"{msg.get('op')}: {msg.get('ret_msg')}"[:200])
            return
        book = self.by_topic.get(topic) if type(topic) is str else None
        if book is not None:
            self._on_book(book, parse_book(msg), recv_ns)
            return
        book = self.by_ticker.get(topic) if type(topic) is str else None
        if book is not None:
            if self.spec.audit and self.ticker_audit:
                self._on_ticker(book, msg)
            return
        raise FrameError("unknown_topic", repr(topic)[:80])

    def _on_book(self, book: L2Book, m: BookMessage, recv_ns: int) -> None:
        if m.symbol != self.symbols[book.instrument]:
            raise FrameError("unknown_symbol", f"{m.symbol!r} on {m.topic}")
        stats = self.stats[book.instrument]
        self.venue_stats.book_frames += 1
        stats.messages += 1
        if m.snapshot:
            # 2. A snapshot replaces the book; u == 1 is the venue restarting it.
            if m.update_id == 1 and book.venue_seq > 1:
                self.restarts[book.instrument] += 1
            book.bids.load(m.bids)
            book.asks.load(m.asks)
            book.truncate()
            book.venue_seq = m.update_id
            book.cross_seq = m.cross_seq
            book.exchange_ts_ns = m.ts_ns
            stats.snapshots += 1
            self.go_live(book, recv_ns)
            return
        state = book.state
        if state is BookState.RESYNCING:
            stats.dropped_stale += 1  # in flight before the new snapshot: superseded by it
            return
        stats.sequence_checked += 1
        if state is BookState.SYNCING:
            stats.sequence_gaps += 1
            raise IntegrityError(book.instrument, "gap", f"delta u={m.update_id} before a snapshot")
        # 3. Deltas are contiguous on a topic.
        if m.update_id != book.venue_seq + 1:
            stats.sequence_gaps += 1
            raise IntegrityError(
                book.instrument, "gap", f"u={m.update_id} after u={book.venue_seq}"
            )
        set_bid = book.bids.set
        set_ask = book.asks.set
        for p, q in m.bids:
            set_bid(p, q)
        for p, q in m.asks:
            set_ask(p, q)
        book.truncate()
        book.venue_seq = m.update_id
        book.cross_seq = m.cross_seq  # 4.
        book.exchange_ts_ns = m.ts_ns
        stats.updates += 1
        self.emit(book, recv_ns)

    def _on_ticker(self, book: L2Book, msg: dict[str, Any]) -> None:
        """6. Merge the partial ticker, then compare its best bid/ask with the book."""
        state = self.tickers[book.instrument]
        merged = merge_ticker(dict(state), msg)  # validated on a copy, then kept
        bid_s = merged.get("bid1Price")
        ask_s = merged.get("ask1Price")
        bid = float(bid_s) if bid_s is not None else None
        ask = float(ask_s) if ask_s is not None else None
        cs = msg.get("cs")
        state.clear()
        state.update(merged)
        if bid is None or ask is None or book.state is not BookState.LIVE:
            return
        stats = self.stats[book.instrument]
        agree = book.bids.best() == bid and book.asks.best() == ask
        if type(cs) is int and cs == book.cross_seq:
            if agree:
                stats.audit_agree += 1
                return
            stats.audit_disagree += 1
            raise IntegrityError(book.instrument, "audit", f"ticker {bid}/{ask} at seq={cs}")
        if agree:
            stats.audit_loose_agree += 1
        else:
            stats.audit_loose_disagree += 1


class BybitSpot(_Bybit):
    """Bybit v5 spot order book (`wss://stream.bybit.com/v5/public/spot`)."""

    protocol = "bybit-v5-spot"
    default_url = SPOT_URL
    category = "spot"

    @classmethod
    def wire_symbol(cls, instrument: str) -> str:
        return spot_symbol(instrument)


class BybitLinear(_Bybit):
    """Bybit v5 linear perpetuals (`wss://stream.bybit.com/v5/public/linear`)."""

    protocol = "bybit-v5-linear"
    default_url = LINEAR_URL
    category = "linear"
    ticker_audit = True

    @classmethod
    def wire_symbol(cls, instrument: str) -> str:
        return linear_symbol(instrument)
