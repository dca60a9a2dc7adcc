"""The seam between one venue's protocol and the shared code (runs on the venue thread).

A venue module subclasses `VenueProtocol` and fills in its protocol only: its facts as class
data (URL, depths, limits, which integrity rule and checksum its books follow, what a capture
of it looks like), the frames to send, and `parse`, which turns a frame into events
(`mmengine.book.events`) without touching any book. Everything else is shared:
`mmengine.book.sync.BookDriver` applies the events (states, counters, apply, resync, audit),
`transport.VenueConnection` owns the thread, socket, keepalive, backoff and staleness timer,
and `mmengine.replay` drives a capture through the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

import msgspec
import orjson

from mmengine.book.core import book_core
from mmengine.book.events import BookUpdate, ContractSize, Event
from mmengine.book.integrity import ChecksumRule, SequenceRule, Unsequenced
from mmengine.book.levels import LevelDecoder
from mmengine.book.shape import FrameShape
from mmengine.errors import FrameError

# An integer of a typed frame (`TypedBookFrames`) within int64: orjson, the reference's
# decoder, reads a greater one as a float, which the venue modules refuse (msgspec would not).
WireInt = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

# A venue's published subscribe-request limit where it has none (Kraken, Bybit): Binance's
# 5 per second, the strictest per-second figure of the five venues.
UNPUBLISHED_LIMIT = (5, 1.0)


@dataclass(frozen=True)
class VenueSpec:
    """What the engine asks of one venue connection."""

    name: str
    protocol: str
    instruments: tuple[str, ...]
    depth: int = 100
    url: str | None = None
    rest_url: str | None = None
    top_levels: int = 5
    audit: bool = False
    stale_after_s: float = 10.0
    ca_file: str | None = None  # CAs trusted for wss:// and https:// (None: the system's)
    book_core: str | None = None  # `compiled` or `python`; None: $MMENGINE_BOOK, else compiled


class VenueProtocol:
    """One venue protocol: facts as class data, frame builders and `parse`.

    An instance serves one venue connection (the venue thread), so it may keep protocol
    state that `parse` needs (Kraken v2's pair precisions, Bybit's merged tickers); it is
    reset by `on_connected`. `levels` decodes level lists for the connection's book core
    (`mmengine.book.core`): what it returns only that core's books read.
    """

    protocol: ClassVar[str]  # the config's `protocol`
    default_url: ClassVar[str]
    capture_exchange: ClassVar[str]  # the `exchange` of a capture header
    capture_addresses: ClassVar[tuple[str, ...]] = ()  # in a recorded WebSocket address
    keep_wire: ClassVar[bool] = False  # the book keeps level strings (a checksum needs them)
    keepalive_interval_s: ClassVar[float | None] = None  # send keepalive_frame() this often
    silence_timeout_s: ClassVar[float] = 60.0  # no frame at all for this long: reconnect
    max_frame_bytes: ClassVar[int] = 16 * 1024 * 1024
    depths: ClassVar[tuple[int, ...] | None] = None  # book depths offered; None: any
    subscribe_limit: ClassVar[tuple[int, float]] = UNPUBLISHED_LIMIT  # (requests, seconds)
    rest_weight_per_minute: ClassVar[int | None] = None  # REST snapshot budget, if any
    integrity: ClassVar[type[SequenceRule]] = Unsequenced
    checksum: ClassVar[type[ChecksumRule] | None] = None
    connection_sequence: ClassVar[bool] = False  # one sequence across the connection
    crossed_is_venue_state: ClassVar[bool] = False  # documented crossed books: hold, not resync
    audit_alarm_s: ClassVar[float | None] = None  # log a loose audit disagreeing this long
    # The venue's usual book frame, declared (`book.shape`): with the compiled core, a frame
    # beginning with `book_start` is read from its text by the core's scanner, which hands
    # anything else (or anything it does not take at once) to the venue's own `parse`.
    frame_shape: ClassVar[FrameShape | None] = None
    book_start: ClassVar[str] = ""  # how the venue (and our simulator) begins a book frame

    def __init__(self, spec: VenueSpec) -> None:
        self.spec = spec
        # Either core's decoder; the reference's class is the interface both provide.
        core = book_core(spec.book_core)
        self.levels: LevelDecoder = core.decoder()
        # our instrument -> the venue's name for it (`wire_symbol`), and back
        self.symbols = {inst: self.wire_symbol(inst) for inst in spec.instruments}
        self.by_symbol = {symbol: inst for inst, symbol in self.symbols.items()}
        if self.frame_shape is not None and core.scanner is not None:
            # (the venue's names the shape routes by are read at the first frame)
            self.parse = core.scanner(  # type: ignore[method-assign]
                self.frame_shape, self, self.book_start, self.parse, self.keep_wire
            )

    # --- facts of this connection -----------------------------------------------------------

    def book_depth(self) -> int:
        """Levels per side the books keep (truncated beyond)."""
        return self.spec.depth

    def sequence_rule(self, instrument: str) -> SequenceRule:
        return self.integrity(self, instrument)

    def venue_symbol(self, instrument: str) -> str:
        """The venue's own name for one of our instruments."""
        return self.symbols[instrument]

    @classmethod
    def wire_symbol(cls, instrument: str) -> str:
        """The venue's name for `instrument` (ours by default); ValueError where the venue
        cannot name it."""
        return instrument

    def contract_sizes_requests(self) -> list[tuple[str, int]]:
        """(url, REST weight) of each request for the venue's instrument data that says
        what its book sizes are worth (Binance COIN-M `exchangeInfo`; OKX one `instruments`
        request per instrument type); empty where sizes are base units already. The driver
        fetches them on every new connection, before any REST snapshot, and books of
        contracts are published only with their `ContractSize`."""
        return []

    def contract_sized(self, instrument: str) -> bool:
        """Whether `instrument`'s book counts contracts (its tops wait for its
        `ContractSize`): by default every instrument of a venue that asks for sizes; OKX
        spot books are base units beside its swaps on one connection."""
        return True

    def parse_contract_sizes(self, body: str) -> dict[str, ContractSize]:
        """Our instruments' `ContractSize`s from one answer to `contract_sizes_requests`
        (an instrument the answer does not list is missing; FrameError for an unusable
        answer)."""
        raise NotImplementedError

    @classmethod
    def instrument_problem(cls, instrument: str) -> str | None:
        """Why the venue cannot serve `instrument` (config validation), or None: by default
        what `wire_symbol` says of it."""
        try:
            cls.wire_symbol(instrument)
        except ValueError as exc:
            return str(exc)
        return None

    @classmethod
    def capture_subscription(cls, sent: list[str]) -> tuple[tuple[str, ...], int | None] | None:
        """(instruments, depth) a recording subscribed to, read from the frames it sent
        (our names); None when they do not say. Instruments may be empty where the frames
        name them only in a wire form that cannot be split (Bybit's `BTCUSDT`): replay then
        takes the names of the capture header's `l2_book` that the venue accepts."""
        return None

    # --- frames -----------------------------------------------------------------------------

    def connect_url(self) -> str:
        return self.spec.url or self.default_url

    def subscribe_frames(self) -> list[str]:
        """Frames to send right after connecting."""
        return []

    def resync_frames(self, instrument: str) -> list[str]:
        """Frames that make the venue send `instrument` a new snapshot (unsubscribe, then
        subscribe); none where the rule resyncs otherwise (REST)."""
        return []

    def keepalive_frame(self) -> str | None:
        """An application-level ping, sent every `keepalive_interval_s`."""
        return None

    def on_connected(self) -> None:
        """A new connection: forget per-connection protocol state."""

    def parse(self, frame: str) -> list[Event] | BookUpdate:
        """The events of one frame (a lone book message may be returned as it is); raise
        FrameError (or let a decoding error out) for a frame that cannot be used. Nothing is
        applied here."""
        raise NotImplementedError


class TypedBookFrames(VenueProtocol):
    """A venue whose usual frame is one book message of a known shape (Kraken v1 and v2,
    Bybit): a frame beginning with `book_start` is decoded by msgspec into the venue's
    Struct (`book_frame`: no dict lookups, cheaper than orjson) and handed to `book_update`,
    which turns it into a BookUpdate in one call where the book core has it. Anything else
    (another shape, a msgspec error, a book_update of None) is decoded by orjson and judged
    by `_parse_message`, the reference for every frame. With the compiled core, a venue
    that declares its usual frame (`frame_shape`) has it read from the text by the core's
    scanner first (`VenueProtocol`), which hands this parse anything it does not
    recognise."""

    book_frame: ClassVar[msgspec.json.Decoder[Any]]  # into the venue's Struct

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        # on the instance: the cheapest lookups on the per-frame path
        self._book_start = self.book_start
        self._decode_book = self.book_frame.decode
        if type(self.levels) is LevelDecoder:
            # The reference core decodes no book message in one call (`book_update` would
            # give None after msgspec's decode): each frame is decoded once, by orjson.
            self.parse = self._parse_json  # type: ignore[method-assign]

    def parse(self, frame: str) -> list[Event] | BookUpdate:
        if frame.startswith(self._book_start):
            try:
                book = self._decode_book(frame)
            except msgspec.MsgspecError:
                book = None
            if book is not None:
                update = self.book_update(book)
                if update is not None:
                    return update
        return self._parse_message(orjson.loads(frame))

    def _parse_json(self, frame: str) -> list[Event] | BookUpdate:
        return self._parse_message(orjson.loads(frame))

    def book_update(self, book: Any) -> BookUpdate | None:
        """The BookUpdate of one decoded book frame, or None: judged by `_parse_message`."""
        raise NotImplementedError

    def _parse_message(self, msg: Any) -> list[Event] | BookUpdate:
        """The events of one frame decoded by orjson (as `parse`)."""
        raise NotImplementedError


class TypedFrame(msgspec.Struct, gc=False):
    """A part of a frame decoded by msgspec into a typed Struct (no garbage-collector work,
    strings checked while decoding), read as the dict orjson would give (`[key]`, `.get`),
    so one parse reads both. A venue decodes a frame so only when it has the known shape
    (any msgspec error: decoded by orjson, and judged as any frame)."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def sent_objects(sent: list[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects among the frames a recording sent (for `capture_subscription`);
    any other frame (not JSON, not an object) is passed over."""
    for text in sent:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(msg, dict):
            yield msg


def seconds_to_ns(value: object) -> int:
    """A venue timestamp in seconds (`"1618678133.365913"`) as ns; FrameError if not sane."""
    # float() of what is no number raises, and the caller counts a malformed frame
    seconds = float(value)  # type: ignore[arg-type]
    if not 0.0 <= seconds < 1e11:
        raise FrameError("bad_timestamp", repr(value))
    return int(seconds * 1e9)


def rfc3339_ns(ts: str) -> int:
    """`2023-10-06T17:35:55.440295Z` -> ns since the epoch."""
    dt = datetime.fromisoformat(ts)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def integer(value: object, name: str) -> int:
    """A JSON integer field (an update id, a time in ms); FrameError for any other type."""
    if type(value) is not int:
        raise FrameError("malformed", f"{name} {value!r}"[:80])
    return value
