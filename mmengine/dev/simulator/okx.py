"""OKX v5 public order-book channels, served by the simulator (generator and connection
threads).

Written from `shared/docs/venue-protocols.md` section 4 and the capture, never from our client
(`mmengine.venues.okx`):

- WebSocket at `/ws/v5/public`; `{"op":"subscribe","args":[{"channel":"books","instId":
  "BTC-USDT"}]}` -> one `{"event":"subscribe","arg":{...},"connId":...}` per arg, then (for
  `books`) a `snapshot` and `update`s; `unsubscribe` likewise; unknown instId -> error 60018.
- `books`: every market step is an update with the changed levels `[px, sz, "0", orders]`
  (size "0" deletes), `seqId`/`prevSeqId` chained per instId (a snapshot has prevSeqId -1),
  `ts` in ms, and the legacy `checksum` (CRC32 of the top 25 bids and asks interleaved
  `bid:ask:...` as `px:sz` strings, as a signed int32). Live OKX now sends `checksum: 0`; the
  simulator sends the real value so that both integrity rules are exercised.
- `books5` / `bbo-tbt`: the top 5 / top 1 levels per side as a snapshot whenever they change.
- The text `ping` gets the text `pong`.
- `GET /api/v5/public/instruments?instType=SPOT|SWAP|FUTURES` ("Get instruments", Public
  Data > REST API of OKX's v5 docs): `{"code":"0","msg":"","data":[...]}` with each
  instrument's `instId`, `instType`, `ctVal`, `ctMult`, `ctValCcy`, `ctType` ("" for spot);
  a missing or unknown `instType` is HTTP 400 `{"code":"51000","msg":"Parameter instType
  error","data":[]}`. Swap and future books count whole contracts ("number of contracts
  for derivatives", "Order book channel"), each worth what OKX lists: linear (USDT)
  contracts 0.01 BTC, 0.1 ETH, 1 of other coins; inverse (USD) contracts 100 USD for BTC,
  10 USD for others. Replay serves the capture's recorded answers.

A new `books` subscription is served on the next market step of its instrument, on the
generator thread: the book as of the previous step, then that step's update, so the seqId
chain a client sees never breaks because of when it subscribed.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from mmengine.capture import CaptureEvent
from mmengine.dev.simulator.kit import ASK as KIT_ASK
from mmengine.dev.simulator.kit import BID as KIT_BID
from mmengine.dev.simulator.kit import Level, Part, WireKit
from mmengine.dev.simulator.kraken import MirrorBook
from mmengine.dev.simulator.market import ASK, BID, Change, MarketParams, default_params
from mmengine.dev.simulator.server import ClientConn, OutFrame, Query, ReplayFrame, SimProtocol

WS_PATH = "/ws/v5/public"
CHANNELS = {"books": None, "books5": 5, "bbo-tbt": 1}  # channel -> levels per snapshot
CHECKSUM_LEVELS = 25
SEQ_STEPS = (1, 1, 1, 2, 3)  # seqIds are increasing, not always consecutive
INSTRUMENTS_PATH = "/api/v5/public/instruments"
INST_TYPES = ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION")


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def inst_id(instrument: str) -> str:
    """Our `BTC-USDT-PERP` -> `BTC-USDT-SWAP`, `BTC-USD-20220527` -> `BTC-USD-220527`."""
    parts = instrument.split("-")
    if len(parts) == 3 and parts[2] == "PERP":
        return f"{parts[0]}-{parts[1]}-SWAP"
    if len(parts) == 3 and len(parts[2]) == 8 and parts[2].isdigit():
        return f"{parts[0]}-{parts[1]}-{parts[2][2:]}"
    return instrument


def inst_type(instrument: str) -> str:
    """SPOT, SWAP (`-PERP`) or FUTURES (`-YYYYMMDD`)."""
    parts = instrument.split("-")
    return "SPOT" if len(parts) == 2 else "SWAP" if parts[2] == "PERP" else "FUTURES"


def contract(instrument: str) -> tuple[str, str, str]:
    """(ctVal, ctValCcy, ctType) of a swap or future: USD-quoted ones are inverse."""
    base, quote = instrument.split("-")[:2]
    if quote == "USD":
        return ("100" if base == "BTC" else "10"), "USD", "inverse"
    return {"BTC": "0.01", "ETH": "0.1"}.get(base, "1"), base, "linear"


def wire(value: Decimal) -> str:
    """A price or size as OKX writes it: no exponent, no trailing zeros ("30316", "0.5")."""
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def legacy_checksum(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    parts: list[str] = []
    for i in range(CHECKSUM_LEVELS):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    value = zlib.crc32(":".join(parts).encode())
    return value - 2**32 if value >= 2**31 else value


class OkxKit(WireKit):
    """OKX v5 `books` for the conformance suite: a snapshot (`prevSeqId` -1), then updates
    chained by `prevSeqId`, each with the legacy checksum of the book after it."""

    protocol = "okx-v5"
    instruments = ("BTC-USDT", "ETH-USDT")
    depth = 400

    def __init__(self) -> None:
        super().__init__()
        self.seq = dict.fromkeys(self.instruments, 70_000)

    def _frame(
        self, action: str, instrument: str, bids: list[Level], asks: list[Level], prev: int
    ) -> str:
        checksum = legacy_checksum(
            self.top(instrument, KIT_BID, CHECKSUM_LEVELS),
            self.top(instrument, KIT_ASK, CHECKSUM_LEVELS),
        )
        entry = {
            "asks": [[p, q, "0", "1"] for p, q in asks],
            "bids": [[p, q, "0", "1"] for p, q in bids],
            "ts": "1597026383085",
            "checksum": checksum,
            "prevSeqId": prev,
            "seqId": self.seq[instrument],
        }
        arg = {"channel": "books", "instId": inst_id(instrument)}
        return _dumps({"arg": arg, "action": action, "data": [entry]})

    def snapshot(self, instrument: str, bids: list[Level], asks: list[Level]) -> list[str]:
        self.load(instrument, bids, asks)
        return [self._frame("snapshot", instrument, bids, asks, -1)]

    def update(self, parts: list[Part]) -> str:
        (instrument,) = {inst for inst, _, _ in parts}
        bids = [lv for _, b, _ in parts for lv in b]
        asks = [lv for _, _, a in parts for lv in a]
        self.apply(instrument, bids, asks)
        prev = self.seq[instrument]
        self.seq[instrument] += 1
        return self._frame("update", instrument, bids, asks, prev)


class OkxSim(SimProtocol):
    """OKX v5 public: `books` (incremental, seqId, legacy checksum), `books5`, `bbo-tbt`."""

    venue = "okx-v5"
    ws_path = WS_PATH
    kit = OkxKit

    @classmethod
    def market_params(cls, instrument: str) -> MarketParams:
        params = default_params(instrument)
        if inst_type(instrument) == "SPOT":
            return params
        value, unit, _ = contract(instrument)
        # Whole contracts, about as much of the coin per level as a spot book holds.
        per_contract = Decimal(value) / (params.mid if unit == "USD" else 1)
        typical = max(Decimal(1), (params.typical_size / per_contract).quantize(Decimal(1)))
        return MarketParams(params.mid, params.tick, Decimal(1), typical)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ids = {i: inst_id(i) for i in self.instruments}
        self.instrument_answers: dict[str, str] | None = None  # replay: by query
        self.by_id = {v: k for k, v in self.ids.items()}
        self.mirrors = {i: MirrorBook(m) for i, m in self.markets.items()}
        self.seq = {i: self.rng.randint(1_000, 9_000_000) for i in self.markets}
        self.pending: dict[str, list[ClientConn]] = {}  # instrument -> waiting for a snapshot
        self.tops: dict[tuple[str, str], tuple] = {}  # (channel, instrument) -> last top sent
        self.corrupt: set[str] = set()

    @staticmethod
    def topic(channel: str, instrument: str) -> str:
        return f"{channel}:{instrument}"

    # --- frames ------------------------------------------------------------------------------

    def _levels(self, items: list[tuple[Decimal, Decimal]]) -> list[list[str]]:
        return [[wire(p), wire(q), "0", "0" if q == 0 else "1"] for p, q in items]

    def _checksum(self, instrument: str) -> int:
        mirror = self.mirrors[instrument]
        bids = [(wire(p), wire(q)) for p, q in mirror.top(BID, CHECKSUM_LEVELS)]
        asks = [(wire(p), wire(q)) for p, q in mirror.top(ASK, CHECKSUM_LEVELS)]
        return legacy_checksum(bids, asks)

    def _books_frame(
        self,
        instrument: str,
        action: str,
        bids: list[tuple[Decimal, Decimal]],
        asks: list[tuple[Decimal, Decimal]],
        prev: int,
        seq: int,
        checksum: int,
    ) -> str:
        return _dumps(
            {
                "arg": {"channel": "books", "instId": self.ids[instrument]},
                "action": action,
                "data": [
                    {
                        "asks": self._levels(asks),
                        "bids": self._levels(bids),
                        "ts": str(time.time_ns() // 1_000_000),
                        "checksum": checksum,
                        "prevSeqId": prev,
                        "seqId": seq,
                    }
                ],
            }
        )

    def _snapshot_frame(self, instrument: str) -> str:
        mirror = self.mirrors[instrument]
        return self._books_frame(
            instrument,
            "snapshot",
            mirror.top(BID, 400),
            mirror.top(ASK, 400),
            -1,
            self.seq[instrument],
            self._checksum(instrument),
        )

    def _top_frame(self, channel: str, instrument: str, n: int) -> str | None:
        mirror = self.mirrors[instrument]
        top = (tuple(mirror.top(BID, n)), tuple(mirror.top(ASK, n)))
        if self.tops.get((channel, instrument)) == top:
            return None
        self.tops[(channel, instrument)] = top
        return _dumps(
            {
                "arg": {"channel": channel, "instId": self.ids[instrument]},
                "data": [
                    {
                        "asks": self._levels(list(top[1])),
                        "bids": self._levels(list(top[0])),
                        "instId": self.ids[instrument],
                        "ts": str(time.time_ns() // 1_000_000),
                        "seqId": self.seq[instrument],
                    }
                ],
            }
        )

    # --- generator thread ------------------------------------------------------------------

    def update_frames(
        self, instrument: str, changes: Sequence[Change], wanted: frozenset[str]
    ) -> list[OutFrame]:
        # Waiting subscribers get the book as of the last step, then this step's update.
        for client in self.pending.pop(instrument, ()):
            client.set_topics([*client.topics, self.topic("books", instrument)])
            # Marked before it is queued: the writer thread may send it at once, and the
            # truth's time must not be later than a client's receipt of it.
            self.truth.mark(
                instrument, self.seq[instrument], snapshot=True, before=True, queued=True
            )
            client.outbox.put(self._snapshot_frame(instrument))
        self.mirrors[instrument].apply(changes)
        prev = self.seq[instrument]
        seq = self.seq[instrument] = prev + self.rng.choice(SEQ_STEPS)
        checksum = self._checksum(instrument)
        corrupt = instrument in self.corrupt
        if corrupt:
            self.corrupt.discard(instrument)
            checksum = checksum + 1 if checksum < 2**31 - 1 else checksum - 1
        self.truth.mark(instrument, seq, first=prev, clean=not corrupt)
        bids = [(c.price, c.size) for c in changes if c.side == BID]
        asks = [(c.price, c.size) for c in changes if c.side == ASK]
        frames = [
            OutFrame(
                self.topic("books", instrument),
                self._books_frame(instrument, "update", bids, asks, prev, seq, checksum),
            )
        ]
        for channel, n in CHANNELS.items():
            if n is not None:
                text = self._top_frame(channel, instrument, n)
                if text is not None:
                    frames.append(OutFrame(self.topic(channel, instrument), text))
        return frames

    def corrupt_checksum(self, instrument: str) -> bool:
        self.corrupt.add(instrument)
        return True

    def error_frame(self, instrument: str) -> OutFrame | None:
        return OutFrame(None, self._error("60014", "Requests too frequent."))

    def malformed_frame(self, instrument: str) -> OutFrame:
        text = _dumps({"arg": {"channel": "books", "instId": self.ids[instrument]}, "data": []})
        return OutFrame(None, text[: len(text) // 2])

    # --- connection threads ------------------------------------------------------------------

    def accept(self, path: str, query: Query) -> Sequence[str] | None:
        return [] if path == WS_PATH else None

    def on_client_message(self, client: ClientConn, text: str) -> list[str]:
        if text == "ping":
            return ["pong"]
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [self._error("60012", f"Invalid request: {text[:100]}")]
        op = msg.get("op") if isinstance(msg, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(msg.get("args"), list):
            return [self._error("60012", f"Invalid request: {text[:100]}")]
        if not self.markets:
            # Replay: any subscription starts the recording, which holds the acks and the
            # book frames the venue sent.
            client.set_topics(["replay"])
            return []
        replies = []
        for arg in msg["args"]:
            channel = arg.get("channel") if isinstance(arg, dict) else None
            # a missing id looks up None, which no instrument is: not ours (no extra branch)
            instrument = self.by_id.get(arg.get("instId")) if isinstance(arg, dict) else None  # type: ignore[arg-type]
            if channel not in CHANNELS or instrument is None:
                replies.append(
                    self._error(
                        "60018",
                        f"Wrong URL or channel:{channel},instId:"
                        f"{arg.get('instId') if isinstance(arg, dict) else arg} "
                        "doesn't exist",
                    )
                )
                continue
            ack = _dumps(
                {
                    "event": op,
                    "arg": {"channel": channel, "instId": self.ids[instrument]},
                    "connId": f"{client.id:08x}",
                }
            )
            topic = self.topic(channel, instrument)
            with self.lock:
                client.outbox.put(ack)
                if op == "unsubscribe":
                    waiting = self.pending.get(instrument, [])
                    if client in waiting:
                        waiting.remove(client)
                    client.set_topics([t for t in client.topics if t != topic])
                elif channel == "books":
                    self.pending.setdefault(instrument, []).append(client)
                else:
                    # books5 / bbo-tbt are whole snapshots: the next change brings one.
                    self.tops.pop((channel, instrument), None)
                    client.set_topics([*client.topics, topic])
        return replies

    def _error(self, code: str, text: str) -> str:
        return _dumps({"event": "error", "code": code, "msg": text, "connId": "00000000"})

    def http(self, path: str, query: Query) -> tuple[int, str] | None:
        """`GET /api/v5/public/instruments?instType=SWAP`. Reply (the fields a book client
        needs): {"code":"0","msg":"","data":[{"instId":"BTC-USDT-SWAP","instType":"SWAP",
        "uly":"BTC-USDT","settleCcy":"USDT","ctVal":"0.01","ctMult":"1","ctValCcy":"BTC",
        "ctType":"linear","lotSz":"1","state":"live",...}]}"""
        if path != INSTRUMENTS_PATH:
            return None
        kind = query.get("instType", "")
        if kind not in INST_TYPES:
            error = {"code": "51000", "msg": "Parameter instType error", "data": []}
            return 400, _dumps(error)
        if self.instrument_answers is not None:
            recorded = self.instrument_answers.get(_query_key(query))
            return 200, recorded or _dumps({"code": "0", "msg": "", "data": []})
        data = [self._instrument(i) for i in self.instruments if inst_type(i) == kind]
        return 200, _dumps({"code": "0", "msg": "", "data": data})

    def _instrument(self, instrument: str) -> dict[str, str]:
        base, quote = instrument.split("-")[:2]
        params = self.market_params(instrument)
        entry = dict.fromkeys(("baseCcy", "quoteCcy", "uly", "settleCcy", "ctType"), "")
        entry.update(ctVal="", ctMult="", ctValCcy="", expTime="", state="live")
        entry.update(instId=self.ids[instrument], instType=inst_type(instrument))
        entry.update(tickSz=wire(params.tick), lotSz=wire(params.lot), minSz=wire(params.lot))
        if entry["instType"] == "SPOT":
            entry.update(baseCcy=base, quoteCcy=quote)
            return entry
        value, unit, kind = contract(instrument)
        settle = base if kind == "inverse" else quote
        entry.update(uly=f"{base}-{quote}", settleCcy=settle, ctType=kind)
        entry.update(ctVal=value, ctMult="1", ctValCcy=unit)
        return entry

    # --- replay ----------------------------------------------------------------------------

    def load_replay(
        self, recv: Sequence[CaptureEvent], http_events: Sequence[CaptureEvent]
    ) -> list[ReplayFrame]:
        """Every recorded frame, in order, to each client once it has subscribed; the first
        recorded answer to each instruments query."""
        answers: dict[str, str] = {}
        for event in http_events:
            parts = urlsplit(event.url)
            if parts.path == INSTRUMENTS_PATH:
                answers.setdefault(_query_key(dict(parse_qsl(parts.query))), event.data)
        self.instrument_answers = answers
        return [ReplayFrame(None, e.data) for e in recv]


def _query_key(query: Query) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(query.items()))
