"""OKX v5 public order books: `books` (400 levels, incremental), `books5`, `bbo-tbt`
(venue thread).

Integrity (venue-protocols.md 4.4):
1. Sequence, OKX's current rule, the shared `PreviousIdChain`: each `instId` has its own
   `seqId`; a snapshot has `prevSeqId == -1`; each update's `prevSeqId` must equal the
   previous `seqId` (which also accepts the heartbeat `seqId == prevSeqId` and the reset
   after maintenance). Checked whenever frames carry `seqId`.
2. Legacy CRC32 (what the 2022 capture carries), the shared `OkxCrc32`. OKX has deprecated
   it and now sends `checksum: 0`, so 0 means "not provided" and only a non-zero value is
   checked.
A gap or a mismatch drops that `instId`'s book and resubscribes it alone. `books5` and
`bbo-tbt` push whole snapshots every time: each replaces the book, nothing to chain.

A crossed book is documented during pre-open (section 0): it is held and published as it is
(pricing leaves it out as `crossed`), never resubscribed, which on `books5` would burn the
subscribe limit (480 requests per hour per connection, 4.5) in seconds.

Symbols: spot `BTC-USDT` is ours as is; swaps `BTC-USDT-SWAP` -> `BTC-USDT-PERP`; dated
futures `BTC-USD-220527` -> `BTC-USD-20220527` (the instId's YYMMDD expiry, 4.6).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from mmengine.book.events import (
    DECODE_ERRORS,
    AuditTop,
    BookUpdate,
    Event,
    Reconnect,
    lost_update,
)
from mmengine.book.integrity import OkxCrc32, PreviousIdChain, SequenceRule, Unsequenced
from mmengine.book.levels import LevelDecoder, one
from mmengine.errors import FrameError, VenueRejected
from mmengine.venues.base import VenueProtocol, VenueSpec, integer

WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
BOOKS = "books"  # 400-level snapshot, then incremental updates every 100 ms
BOOKS5 = "books5"  # 5-level snapshot every 100 ms when it changes
BBO = "bbo-tbt"  # 1-level snapshot every 10 ms when it changes
LEVELS = {BOOKS: 400, BOOKS5: 5, BBO: 1}  # the window OKX maintains per channel (4.2)
KEEPALIVE_S = 20.0  # send the text `ping` within 30 s of silence; the reply is `pong` (4.5)
SILENCE_S = 30.0  # the server drops a connection with no data pushed for 30 s (4.5)
SUBSCRIBE_LIMIT = (480, 3600.0)  # subscribe/unsubscribe requests per connection per hour (4.5)
UPGRADE_NOTICE = "64008"  # "will soon be closed for a service upgrade": reconnect now (4.5)

_FUTURE = re.compile(r"^(.+)-(\d{6})$")
_OURS_FUTURE = re.compile(r"^(.+)-20(\d{6})$")


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
    raise ValueError(f"okx: {instrument!r} is not BASE-QUOTE, BASE-QUOTE-PERP or -YYYYMMDD")


def channel_for_depth(depth: int) -> str:
    """The config's depth picks the channel: 1 -> `bbo-tbt`, up to 5 -> `books5`,
    more -> `books` (400 levels)."""
    if depth <= 1:
        return BBO
    if depth <= 5:
        return BOOKS5
    return BOOKS


def parse_book(
    instrument: str, channel: str, msg: dict[str, Any], levels: LevelDecoder
) -> BookUpdate:
    """A whole book message, validated before any book is touched.

    Update: {"arg":{"channel":"books","instId":"BTC-USD-220527"},"action":"update",
             "data":[{"asks":[["30249.4","0","0","0"]],"bids":[["30182.6","452","0","1"]],
             "ts":"1652459225464","checksum":-914047754}]}
    Current frames add "prevSeqId":123456,"seqId":123457 and send "checksum":0; `books5`
    frames carry `seqId` only and no `action`.
    """
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

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        self.channel = channel_for_depth(spec.depth)
        self.inst_ids = {inst: inst_id(inst) for inst in spec.instruments}
        self.by_inst_id = {i: inst for inst, i in self.inst_ids.items()}

    @classmethod
    def instrument_problem(cls, instrument: str) -> str | None:
        try:
            inst_id(instrument)
        except ValueError as exc:
            return str(exc)
        return None

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
        # OKX keeps the channel's window itself: no truncation below it (4.3: the book
        # stayed at 400 levels or fewer without it), so the top 25 stay complete.
        return LEVELS[self.channel]

    def sequence_rule(self, instrument: str) -> SequenceRule:
        rule = PreviousIdChain if self.channel == BOOKS else Unsequenced
        return rule(self, instrument)

    def venue_symbol(self, instrument: str) -> str:
        return self.inst_ids[instrument]

    def _request(self, op: str, inst_ids: list[str], channel: str | None = None) -> str:
        args = [{"channel": channel or self.channel, "instId": i} for i in inst_ids]
        return orjson.dumps({"op": op, "args": args}).decode()

    def subscribe_frames(self) -> list[str]:
        frames = [self._request("subscribe", list(self.by_inst_id))]
        if self.spec.audit:
            # `tickers` (4.3) pushes best bid/ask at most every 100 ms: a loose audit.
            frames.append(self._request("subscribe", list(self.by_inst_id), "tickers"))
        return frames

    def resync_frames(self, instrument: str) -> list[str]:
        ids = [self.inst_ids[instrument]]  # 4.4: unsubscribe and subscribe that instId
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
                return [self._ticker(arg, msg)]  # type: ignore[arg-type]
            return []  # trades: not ours to use
        instrument = self.by_inst_id.get(arg.get("instId"))  # type: ignore[union-attr]
        if instrument is None:
            raise FrameError("unknown_symbol", repr(arg.get("instId"))[:40])  # type: ignore[union-attr]
        try:
            return parse_book(instrument, channel, msg, self.levels)
        except DECODE_ERRORS as exc:
            raise lost_update((instrument,), exc) from None

    def _ticker(self, arg: dict[str, Any], msg: dict[str, Any]) -> AuditTop:
        """`{"arg":{"channel":"tickers","instId":"UNI-USD-SWAP"},"data":[{"bidPx":"5.134",
        "askPx":"5.142",...}]}`: compared with the book on arrival (4.3: a loose check)."""
        instrument = self.by_inst_id.get(arg.get("instId"))
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
