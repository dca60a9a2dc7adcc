"""OKX v5 public order books: `books` (400 levels, incremental), `books5`, `bbo-tbt`
(venue thread).

Integrity (venue-protocols.md 4.4):
1. Sequence, OKX's current rule: each `instId` has its own `seqId`; a snapshot has
   `prevSeqId == -1`; each update's `prevSeqId` must equal the previous message's `seqId`.
   That also covers the two documented special cases: a heartbeat update (`asks:[]`,
   `bids:[]`, `seqId == prevSeqId`) and a reset after maintenance (`seqId < prevSeqId`,
   `prevSeqId` still equal to our last `seqId`). Checked whenever frames carry `seqId`.
2. Legacy CRC32 (what the 2022 capture carries): over the top 25 bids and asks interleaved
   `bid1:ask1:bid2:ask2:...` (`price:size` from the received strings; a shorter side just
   stops), compared as a signed int32. OKX has deprecated it and now sends `checksum: 0`,
   so 0 means "not provided" and only a non-zero value is checked.
A gap or a mismatch drops that `instId`'s book and resubscribes it alone (unsubscribe, then
subscribe for a new snapshot). `books5` and `bbo-tbt` push whole snapshots every time:
each replaces the book, and there is nothing to chain.

Symbols: spot `BTC-USDT` is ours as is; swaps `BTC-USDT-SWAP` -> `BTC-USDT-PERP`; dated
futures `BTC-USD-220527` -> `BTC-USD-20220527` (the instId's YYMMDD expiry, 4.6).
"""

from __future__ import annotations

import re
from itertools import chain
from operator import neg
from typing import Any
from zlib import crc32

import orjson

from mmengine.book import BookSide, L2Book
from mmengine.errors import ConfigError, FrameError, IntegrityError, VenueRejected
from mmengine.model import BookState
from mmengine.venues.base import INF, InstrumentStats, Session, Venue, VenueSpec, level

WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
BOOKS = "books"  # 400-level snapshot, then incremental updates every 100 ms
BOOKS5 = "books5"  # 5-level snapshot every 100 ms when it changes
BBO = "bbo-tbt"  # 1-level snapshot every 10 ms when it changes
CHECKSUM_LEVELS = 25  # legacy CRC32 over the top 25 per side (4.4)
KEEPALIVE_S = 20.0  # send the text `ping` within 30 s of silence; the reply is `pong` (4.5)
SILENCE_S = 30.0  # the server drops a connection with no data pushed for 30 s (4.5)
UPGRADE_NOTICE = "64008"  # "will soon be closed for a service upgrade": reconnect now (4.5)

_FUTURE = re.compile(r"^(.+)-(\d{6})$")
_OURS_FUTURE = re.compile(r"^(.+)-20(\d{6})$")

# (price, size, price string, size string)
OkxLevel = tuple[float, float, str, str]
_flat = chain.from_iterable


# --- symbols -------------------------------------------------------------------------------


def normalize_inst_id(inst_id: str) -> str:
    """`BTC-USDT` -> `BTC-USDT`, `UNI-USD-SWAP` -> `UNI-USD-PERP`,
    `BTC-USD-220527` -> `BTC-USD-20220527`."""
    parts = inst_id.split("-")
    if len(parts) == 2:
        return inst_id
    if len(parts) == 3 and parts[2] == "SWAP":
        return f"{parts[0]}-{parts[1]}-PERP"
    match = _FUTURE.match(inst_id)
    if len(parts) == 3 and match:
        return f"{match.group(1)}-20{match.group(2)}"
    raise ValueError(f"no normalized form for OKX instId {inst_id!r} (spot, swap, future only)")


def inst_id(instrument: str) -> str:
    """Our name -> OKX `instId` (the inverse of `normalize_inst_id`)."""
    parts = instrument.split("-")
    if len(parts) == 2:
        return instrument
    if len(parts) == 3 and parts[2] == "PERP":
        return f"{parts[0]}-{parts[1]}-SWAP"
    match = _OURS_FUTURE.match(instrument)
    if len(parts) == 3 and match:
        return f"{match.group(1)}-{match.group(2)}"
    raise ConfigError([f"okx: {instrument!r} is not BASE-QUOTE, BASE-QUOTE-PERP or -YYYYMMDD"])


def channel_for_depth(depth: int) -> str:
    """The config's depth picks the channel: 1 -> `bbo-tbt`, up to 5 -> `books5`,
    more -> `books` (400 levels)."""
    if depth <= 1:
        return BBO
    if depth <= 5:
        return BOOKS5
    return BOOKS


# --- checksum ------------------------------------------------------------------------------


def checksum_of_strings(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """OKX's legacy CRC32 as a signed int32 from the top levels' strings, best first."""
    bids = bids[:CHECKSUM_LEVELS]
    asks = asks[:CHECKSUM_LEVELS]
    parts: list[str] = []
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts += bids[i]
        if i < len(asks):
            parts += asks[i]
    value = crc32(":".join(parts).encode())
    return value - 0x1_0000_0000 if value >= 0x8000_0000 else value


def book_checksum(bids: BookSide, asks: BookSide) -> int:
    """`checksum_of_strings` over a book whose sides keep the received strings (C-level
    map/zip/chain: this runs on every update that reaches the top 25)."""
    bid_wire = bids.wire
    ask_wire = asks.wire
    assert bid_wire is not None and ask_wire is not None
    b = list(map(bid_wire.__getitem__, map(neg, bids.keys[:CHECKSUM_LEVELS])))
    a = list(map(ask_wire.__getitem__, asks.keys[:CHECKSUM_LEVELS]))
    # interleave bid1:ask1:bid2:ask2..., then the longer side alone
    n = min(len(b), len(a))
    pairs = _flat(_flat(zip(b[:n], a[:n], strict=True)))
    text = ":".join(chain(pairs, _flat(b[n:] or a[n:])))
    value = crc32(text.encode())
    return value - 0x1_0000_0000 if value >= 0x8000_0000 else value


# --- parsing (pure functions over the wire shapes) ------------------------------------------

MEMO_MAX = 1 << 14  # decimal strings remembered per connection (about 2.5 MB) before starting over


def parse_levels(levels: list[list[str]], memo: dict[str, float]) -> list[OkxLevel]:
    """`[price, size, "0", numOrders]` levels -> (price, size, price str, size str).

    `memo` remembers the float of each decimal string seen (prices and sizes repeat all the
    time: 3 in 4 strings of the 2022 capture had been seen before, and float() is the main
    cost of a frame). Rejects non-strings, NaN, inf, negatives and zero prices.

    Sample: [["30249.4","0","0","0"],["30261","4","0","1"]]
    """
    out = []
    get = memo.get
    for lv in levels:
        p = lv[0]
        q = lv[1]
        price = get(p)
        if price is None:
            if type(p) is not str:
                raise FrameError("bad_level", f"price {p!r} is not a decimal string")
            price = memo[p] = float(p)
        size = get(q)
        if size is None:
            if type(q) is not str:
                raise FrameError("bad_level", f"size {q!r} is not a decimal string")
            size = memo[q] = float(q)
        if not (0.0 < price < INF and 0.0 <= size < INF):
            raise FrameError("bad_level", f"price {p!r} size {q!r}")
        out.append((price, size, p, q))
    return out


class OkxV5(Venue):
    """OKX v5 public order book channel, one `instId` per book.

    Update: {"arg":{"channel":"books","instId":"BTC-USD-220527"},"action":"update",
             "data":[{"asks":[["30249.4","0","0","0"]],"bids":[["30182.6","452","0","1"]],
             "ts":"1652459225464","checksum":-914047754}]}
    Current frames add "prevSeqId":123456,"seqId":123457 and send "checksum":0.
    """

    protocol = "okx-v5"
    default_url = WS_URL
    keep_wire = True
    keepalive_interval_s = KEEPALIVE_S
    silence_timeout_s = SILENCE_S

    def __init__(self, spec: VenueSpec, session: Session) -> None:
        super().__init__(spec, session)
        self.channel = channel_for_depth(spec.depth)
        self.inst_ids = {inst: inst_id(inst) for inst in self.books}
        self.by_inst_id = {self.inst_ids[inst]: book for inst, book in self.books.items()}
        # `books` keeps OKX's own 400-level window: no truncation below it (4.3: the book
        # stayed at 400 levels or fewer without it), so the top 25 stay complete.
        for book in self.books.values():
            book.depth = 400
        # the legacy checksum of each book's current top 25 (None: to be computed)
        self._crc: dict[str, int | None] = dict.fromkeys(self.books)
        self._memo: dict[str, float] = {}  # decimal string -> float (see `parse_levels`)

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        found: list[str] = []
        depth = None
        for text in sent:
            if not text.startswith("{"):
                continue  # "ping"
            msg = orjson.loads(text)
            if not isinstance(msg, dict) or msg.get("op") != "subscribe":
                continue
            for arg in msg.get("args", ()):
                channel = arg.get("channel")
                if channel in (BOOKS, BOOKS5, BBO) and arg.get("instId") not in found:
                    found.append(arg["instId"])
                    depth = {BOOKS: 400, BOOKS5: 5, BBO: 1}[channel]
        if not found:
            return None
        return tuple(normalize_inst_id(i) for i in found), depth

    def connect_url(self) -> str:
        return self.spec.url or WS_URL

    def venue_symbol(self, instrument: str) -> str:
        return self.inst_ids[instrument]

    def _request(self, op: str, inst_ids: list[str]) -> str:
        return orjson.dumps(
            {"op": op, "args": [{"channel": self.channel, "instId": i} for i in inst_ids]}
        ).decode()

    def subscribe_frames(self) -> list[str]:
        frames = [self._request("subscribe", list(self.by_inst_id))]
        if self.spec.audit:
            # `tickers` (4.3) pushes best bid/ask at most every 100 ms: a loose audit.
            args = [{"channel": "tickers", "instId": i} for i in self.by_inst_id]
            frames.append(orjson.dumps({"op": "subscribe", "args": args}).decode())
        return frames

    def keepalive_frame(self) -> str:
        return "ping"

    def request_resync(self, book: L2Book) -> None:
        # 4.4: on a gap or a checksum mismatch, unsubscribe and subscribe that instId.
        ids = [self.inst_ids[book.instrument]]
        self.session.send(self._request("unsubscribe", ids))
        self.session.send(self._request("subscribe", ids))

    def on_frame(self, frame: str, recv_ns: int) -> None:
        if frame == "pong":
            return
        msg = orjson.loads(frame)
        if type(msg) is not dict:
            raise FrameError("not_an_object", repr(msg)[:80])
        arg = msg.get("arg")
        if "event" in msg:
            self._on_event(msg)
            return
        if type(arg) is not dict or arg.get("channel") != self.channel:
            if type(arg) is dict and arg.get("channel") == "tickers" and self.spec.audit:
                self._on_ticker(arg, msg)
            return  # trades: not ours to use
        book = self.by_inst_id.get(arg.get("instId"))
        if book is None:
            raise FrameError("unknown_symbol", repr(arg.get("instId")))
        data = msg["data"][0]
        if len(self._memo) > MEMO_MAX:
            self._memo.clear()
        # Parse and validate the whole message before touching the book.
        asks = parse_levels(data["asks"], self._memo)
        bids = parse_levels(data["bids"], self._memo)
        checksum = data.get("checksum") or 0  # 0: not provided (deprecated field, 4.4)
        if type(checksum) is not int:
            raise FrameError("malformed", f"checksum {checksum!r}")
        seq = data.get("seqId")
        prev = data.get("prevSeqId")
        if seq is not None and (type(seq) is not int or type(prev) is not int):
            raise FrameError("malformed", f"seqId {seq!r} prevSeqId {prev!r}")
        ts_ns = int(data["ts"]) * 1_000_000 if "ts" in data else 0
        stats = self.stats[book.instrument]
        self.venue_stats.book_frames += 1
        stats.messages += 1
        if self.channel != BOOKS or msg.get("action") == "snapshot":
            self._on_snapshot(book, asks, bids, checksum, seq, prev, stats)
            book.exchange_ts_ns = ts_ns
            self.go_live(book, recv_ns)
            return
        state = book.state
        if state is not BookState.LIVE and state is not BookState.STALE:
            stats.dropped_stale += 1  # in flight before the new snapshot: superseded by it
            return
        if seq is not None:
            stats.sequence_checked += 1
            if prev != book.venue_seq:
                stats.sequence_gaps += 1
                raise IntegrityError(
                    book.instrument, "gap", f"prevSeqId {prev}, last seqId {book.venue_seq}"
                )
        # The checksum covers the top 25 per side: when no level of the message reaches
        # them, the book's last checksum still holds (and is not recomputed).
        touched = book.asks.apply_wire(asks, CHECKSUM_LEVELS)
        if book.bids.apply_wire(bids, CHECKSUM_LEVELS) or touched:
            self._crc[book.instrument] = None
        stats.updates += 1
        if seq is not None:
            book.venue_seq = seq
        if checksum:
            self._verify(book, checksum, stats)
        book.exchange_ts_ns = ts_ns
        self.emit(book, recv_ns)

    def _on_snapshot(
        self,
        book: L2Book,
        asks: list[OkxLevel],
        bids: list[OkxLevel],
        checksum: int,
        seq: int | None,
        prev: int | None,
        stats: InstrumentStats,
    ) -> None:
        if seq is not None and self.channel == BOOKS and prev != -1:
            stats.sequence_gaps += 1
            raise IntegrityError(book.instrument, "gap", f"snapshot with prevSeqId {prev}")
        book.asks.load_wire(asks)
        book.bids.load_wire(bids)
        self._crc[book.instrument] = None
        book.venue_seq = seq if seq is not None else -1
        stats.snapshots += 1
        if checksum:
            self._verify(book, checksum, stats)

    def _verify(self, book: L2Book, checksum: int, stats: InstrumentStats) -> None:
        stats.checksums_checked += 1
        got = self._crc[book.instrument]
        if got is None:
            got = self._crc[book.instrument] = book_checksum(book.bids, book.asks)
        if got != checksum:
            stats.checksums_failed += 1
            raise IntegrityError(book.instrument, "checksum", f"computed {got}, venue {checksum}")

    def _on_ticker(self, arg: dict[str, Any], msg: dict[str, Any]) -> None:
        """`{"arg":{"channel":"tickers","instId":"UNI-USD-SWAP"},"data":[{"bidPx":"5.134",
        "askPx":"5.142",...}]}`: compared with the book on arrival (4.3: a loose check)."""
        book = self.by_inst_id.get(arg.get("instId"))
        if book is None:
            raise FrameError("unknown_symbol", repr(arg.get("instId")))
        data = msg["data"][0]
        bid, _ = level(data["bidPx"], "0")
        ask, _ = level(data["askPx"], "0")
        self.audit_by_arrival(book, bid, ask)

    def _on_event(self, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "error":
            raise VenueRejected(f"code {msg.get('code')}: {msg.get('msg')}")
        if event == "notice" and str(msg.get("code")) == UPGRADE_NOTICE:
            self.session.reconnect("service upgrade announced")
        # subscribe / unsubscribe acks need nothing
