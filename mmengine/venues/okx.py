"""OKX v5 public order books: `books` (400 levels, incremental), `books5`, `bbo-tbt`; venue thread.

Integrity (venue-protocols.md 4.4): the `seqId`/`prevSeqId` chain (`PreviousIdChain`: a
snapshot has `prevSeqId == -1`, heartbeats and resets after maintenance chain too) whenever
frames carry `seqId`; the legacy CRC32 of the 2022 capture (`OkxCrc32`; deprecated, OKX now
sends `checksum: 0`, "not provided"). A gap or a mismatch resubscribes that `instId` alone;
`books5` and `bbo-tbt` push whole snapshots. A crossed book (documented during pre-open,
section 0) is held and published as it is, never resubscribed: on `books5` that would burn
the 480 subscribe requests per hour per connection (4.5) in seconds. Symbols (4.6):
`BTC-USDT` as is, `BTC-USDT-SWAP` -> `BTC-USDT-PERP`, `BTC-USD-220527` -> `BTC-USD-20220527`.

Sizes (OKX v5 API docs, www.okx.com/docs-v5/en): "Order book channel" (Order Book Trading >
Market Data > WebSocket): a level's size is the "number of contracts for derivatives,
quantity in base currency for Spot". "Get instruments" (Public Data > REST API, 20 requests
per 2 s per IP and instrument type): `ctVal`, `ctMult`, `ctValCcy` and `ctType` (`linear`:
the value is in the base coin, BTC-USDT-SWAP 0.01 BTC; `inverse`: in USD, BTC-USD-SWAP 100
USD), "" until shortly before a listing trades. "Unit convert" (0.888 BTC at 35000 is 311
BTC-USD-SWAP contracts): inverse base = contracts * ctVal / price. The book keeps contracts
(OKX's checksum is over its strings); the driver converts the tops it publishes.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from mmengine.book.events import (
    DECODE_ERRORS,
    AuditTop,
    BookUpdate,
    ContractSize,
    Event,
    Ignored,
    Reconnect,
    lost_update,
)
from mmengine.book.integrity import OkxCrc32, PreviousIdChain, SequenceRule, Unsequenced
from mmengine.book.levels import LevelDecoder, one
from mmengine.errors import FrameError, VenueRejected
from mmengine.venues.base import VenueProtocol, VenueSpec, integer

WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
REST_URL = "https://www.okx.com"
BOOKS = "books"  # 400-level snapshot, then incremental updates every 100 ms
BOOKS5 = "books5"  # 5-level snapshot every 100 ms when it changes
BBO = "bbo-tbt"  # 1-level snapshot every 10 ms when it changes
LEVELS = {BOOKS: 400, BOOKS5: 5, BBO: 1}  # the window OKX maintains per channel (4.2)
KEEPALIVE_S = 20.0  # send the text `ping` within 30 s of silence; the reply is `pong` (4.5)
SILENCE_S = 30.0  # the server drops a connection with no data pushed for 30 s (4.5)
SUBSCRIBE_LIMIT = (480, 3600.0)  # subscribe/unsubscribe requests per connection per hour (4.5)
UPGRADE_NOTICE = "64008"  # "will soon be closed for a service upgrade": reconnect now (4.5)

_FUTURE = re.compile(r"^.+-\d{6}$")
_OURS_FUTURE = re.compile(r"^.+-20\d{6}$")


def normalize_inst_id(inst_id: str) -> str:
    """`BTC-USDT` -> `BTC-USDT`, `UNI-USD-SWAP` -> `UNI-USD-PERP`,
    `BTC-USD-220527` -> `BTC-USD-20220527`."""
    parts = inst_id.split("-")
    if len(parts) == 3 and (parts[2] == "SWAP" or _FUTURE.match(inst_id)):
        return f"{parts[0]}-{parts[1]}-{'PERP' if parts[2] == 'SWAP' else '20' + parts[2]}"
    if len(parts) != 2:
        raise ValueError(f"no normalized form for OKX instId {inst_id!r} (spot, swap, future)")
    return inst_id


def inst_id(instrument: str) -> str:
    """Our name -> OKX `instId` (the inverse of `normalize_inst_id`)."""
    parts = instrument.split("-")
    if len(parts) == 3 and (parts[2] == "PERP" or _OURS_FUTURE.match(instrument)):
        return f"{parts[0]}-{parts[1]}-{'SWAP' if parts[2] == 'PERP' else parts[2][2:]}"
    if len(parts) != 2:
        raise ValueError(f"okx: {instrument!r} is not BASE-QUOTE, BASE-QUOTE-PERP or -YYYYMMDD")
    return instrument


def channel_for_depth(depth: int) -> str:
    """The config's depth picks the channel: 1 -> `bbo-tbt`, up to 5 -> `books5`, more ->
    `books` (400 levels)."""
    return BBO if depth <= 1 else BOOKS5 if depth <= 5 else BOOKS


def parse_book(
    instrument: str, channel: str, msg: dict[str, Any], levels: LevelDecoder
) -> BookUpdate:
    """A whole book message, validated before any book is touched: {"arg":{"channel":"books",
    "instId":"BTC-USD-220527"},"action":"update","data":[{"asks":[["30249.4","0","0","0"]],
    "bids":[],"ts":"1652459225464","checksum":-914047754}]} (2022; now also seqIds)."""
    entries = msg["data"]
    if type(entries) is not list or len(entries) != 1:
        raise FrameError("malformed", "data is not one book entry")
    data = entries[0]
    asks = levels.wire_rows(data["asks"])
    bids = levels.wire_rows(data["bids"])
    checksum = data.get("checksum") or 0  # 0: not provided (deprecated field, 4.4)
    if type(checksum) is not int:
        raise FrameError("malformed", f"checksum {checksum!r}"[:80])
    seq = data.get("seqId")
    prev = data.get("prevSeqId")
    snapshot = channel != BOOKS or msg.get("action") == "snapshot"
    if seq is not None:
        seq = integer(seq, "seqId")
        if channel == BOOKS:
            prev = integer(prev, "prevSeqId")
    ts_ns = int(data["ts"]) * 1_000_000 if "ts" in data else 0
    return BookUpdate(instrument, snapshot, bids, asks, seq, prev, -1, ts_ns, checksum or None)


class OkxV5(VenueProtocol):
    """OKX v5 public order book channel, one `instId` per book."""

    protocol = "okx-v5"
    default_url = WS_URL
    capture_exchange = "OKX"
    capture_addresses = ("okx.com",)
    keep_wire = True
    keepalive_interval_s = KEEPALIVE_S
    silence_timeout_s = SILENCE_S
    subscribe_limit = SUBSCRIBE_LIMIT
    checksum = OkxCrc32
    crossed_is_venue_state = True
    wire_symbol = staticmethod(inst_id)

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        self.channel = channel_for_depth(spec.depth)

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        found: list[str] = []
        depth = None
        for text in sent:
            msg = orjson.loads(text) if text.startswith("{") else None  # or "ping"
            if not isinstance(msg, dict) or msg.get("op") != "subscribe":
                continue
            for arg in msg.get("args", ()):
                if arg.get("channel") in LEVELS and arg.get("instId") not in found:
                    found.append(arg["instId"])
                    depth = LEVELS[arg["channel"]]
        return (tuple(normalize_inst_id(i) for i in found), depth) if found else None

    def book_depth(self) -> int:
        # OKX keeps the channel's window itself (4.3): the top 25 stay complete.
        return LEVELS[self.channel]

    def sequence_rule(self, instrument: str) -> SequenceRule:
        return (PreviousIdChain if self.channel == BOOKS else Unsequenced)(self, instrument)

    def contract_sized(self, instrument: str) -> bool:
        return self.symbols[instrument] != instrument  # a spot instId is our name

    def contract_sizes_requests(self) -> list[tuple[str, int]]:
        swaps = {i.endswith("-SWAP") for i, ours in self.by_symbol.items() if i != ours}  # types
        url = f"{self.spec.rest_url or REST_URL}/api/v5/public/instruments"
        return [(f"{url}?instType={'SWAP' if s else 'FUTURES'}", 1) for s in sorted(swaps)[::-1]]

    def parse_contract_sizes(self, body: str) -> dict[str, ContractSize]:
        """A contract of ours is `ctVal * ctMult` (1 for every swap and future listed) of the
        base coin (`linear`) or the quote, USD (`inverse`). {"code":"0","data":[{"instId":
        "BTC-USDT-SWAP","ctType":"linear","ctVal":"0.01","ctMult":"1","ctValCcy":"BTC"}]}"""
        doc = orjson.loads(body)
        data = doc.get("data") if type(doc) is dict and doc.get("code") == "0" else None
        if type(data) is not list:
            raise FrameError("malformed", f"instruments answer {body[:80]!r}")
        sizes = {}
        for entry in data:
            # a missing id looks up None, which no instrument is: not ours (no extra branch)
            ours = self.by_symbol.get(entry.get("instId")) if type(entry) is dict else None  # type: ignore[arg-type]
            if ours is None or ours == entry["instId"] or not entry.get("ctVal"):
                continue  # not ours, spot, or listed soon (its values are "" until then)
            base, quote = ours.split("-")[:2]
            units = {(base, "linear"): False, (quote, "inverse"): True}
            in_quote = units.get((entry.get("ctValCcy"), entry.get("ctType")))
            value = float(entry["ctVal"]) * float(entry.get("ctMult") or 1)
            if in_quote is None or not (math.isfinite(value) and value > 0):
                raise FrameError("malformed", f"contract of {ours}: {entry}"[:200])
            sizes[ours] = ContractSize(value, in_quote)
        return sizes

    def _request(self, op: str, inst_ids: list[str], channel: str | None = None) -> str:
        args = [{"channel": channel or self.channel, "instId": i} for i in inst_ids]
        return orjson.dumps({"op": op, "args": args}).decode()

    def subscribe_frames(self) -> list[str]:
        frames = [self._request("subscribe", list(self.by_symbol))]
        if self.spec.audit:
            # `tickers` (4.3) pushes best bid/ask at most every 100 ms: a loose audit.
            frames.append(self._request("subscribe", list(self.by_symbol), "tickers"))
        return frames

    def resync_frames(self, instrument: str) -> list[str]:
        ids = [self.symbols[instrument]]  # 4.4: unsubscribe and subscribe that instId
        return [self._request("unsubscribe", ids), self._request("subscribe", ids)]

    def keepalive_frame(self) -> str:
        return "ping"

    def parse(self, frame: str) -> list[Event] | BookUpdate:
        if frame == "pong":
            return []
        msg = orjson.loads(frame)
        if type(msg) is not dict:
            raise FrameError("not_an_object", repr(msg)[:80])
        if "event" in msg:
            return self._event(msg)
        arg = msg.get("arg")
        channel = arg.get("channel") if type(arg) is dict else None
        if channel != self.channel:
            if channel == "tickers" and self.spec.audit:
                # channel is 'tickers' only when arg is a dict (channel comes from arg.get)
                return [self._ticker(arg, msg)]  # type: ignore[arg-type]
            # trades, candles, another depth's book: not ours to use
            return [Ignored(channel)] if type(channel) is str else []
        # ignores below: arg is a dict when channel matched (channel comes from arg.get above)
        instrument = self.by_symbol.get(arg.get("instId"))  # type: ignore[union-attr]
        if instrument is None:
            raise FrameError("unknown_symbol", repr(arg.get("instId"))[:40])  # type: ignore[union-attr]
        try:
            return parse_book(instrument, channel, msg, self.levels)
        except DECODE_ERRORS as exc:
            raise lost_update((instrument,), exc) from None

    def _ticker(self, arg: dict[str, Any], msg: dict[str, Any]) -> AuditTop:
        """`{"arg":{"channel":"tickers",...},"data":[{"bidPx":"5.134","askPx":"5.142",...}]}`:
        compared with the book on arrival (4.3: a loose check)."""
        # a missing id looks up None, which no instrument is: not ours (no extra branch)
        instrument = self.by_symbol.get(arg.get("instId"))  # type: ignore[arg-type]
        if instrument is None:
            raise FrameError("unknown_symbol", repr(arg.get("instId"))[:40])
        data = msg["data"][0]
        return AuditTop(instrument, one(data["bidPx"], "0")[0], one(data["askPx"], "0")[0])

    def _event(self, msg: dict[str, Any]) -> list[Event]:
        event = msg.get("event")
        if event == "error":
            raise VenueRejected(f"code {msg.get('code')}: {msg.get('msg')}")
        if event == "notice" and str(msg.get("code")) == UPGRADE_NOTICE:
            return [Reconnect("service upgrade announced")]
        return []  # subscribe / unsubscribe acks need nothing
