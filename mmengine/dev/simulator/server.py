"""The venue simulator framework: one local server that any venue protocol plugs into.

Threads (all started by `SimulatorHandle.start`, all joined by `SimulatorHandle.stop`):

- `sim-<venue>-accept` runs `websockets`' accept loop (`serve_forever`).
- One connection thread per TCP connection, created by `websockets`. A plain HTTP GET (a REST
  snapshot) is answered inside the handshake by `process_request` and the thread ends. A
  WebSocket connection's thread registers the client and then only *reads* it: it hands each
  client message to the protocol and queues the replies.
- One `sim-<venue>-writer-<n>` thread per WebSocket client owns all sending to that client,
  from its outbox queue, so a slow client never blocks the generator or other clients.
- `sim-<venue>-generator`: the only thread that changes the market. It steps the synthetic
  books (or advances each client's replay) at the target rate, turns changes into frames
  through the protocol, puts them in the outboxes of the clients subscribed to their topic,
  and injects the faults.

Shared state is small on purpose: the books, the protocol's sequence numbers and the truth
kept for a checker (`truth.py`; one lock, `SimulatorHandle.lock`, held by the generator while
it steps and by an HTTP thread while it copies a snapshot), the tuple of connected clients
(replaced, never mutated, under its own lock), and the counters (their own lock). Nothing in
this module knows a venue: everything venue-specific sits behind `SimProtocol`.
"""

from __future__ import annotations

import contextlib
import http
import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from mmengine.capture import CaptureEvent, read_capture
from mmengine.dev.simulator.market import (
    ASK,
    BID,
    Change,
    FairPath,
    Market,
    MarketParams,
    VenueStyle,
    default_params,
)
from mmengine.dev.simulator.truth import NO_TRUTH, BookVersion, TruthLog

log = logging.getLogger("mmengine.simulator")

FAULT_KINDS = (
    "drop",
    "gap",
    "malformed",
    "stall",
    "badchecksum",
    "badticker",
    "oversized",
    "error",
    "crossed",
    "drift",
)
STALL_S = 3.0  # how long a `stall` fault sends nothing
# An `oversized` frame: beyond what any venue sends (Coinbase's full-book snapshots reach
# several MB) and beyond what a client should accept; `SimulatorHandle(oversized_bytes=)`.
OVERSIZED_BYTES = 65 * 1024 * 1024
# A `drift`: every market of the venue moves away from where it was, in DRIFT_STAGES equal
# steps DRIFT_STAGE_S apart up to DRIFT_BPS, stays there DRIFT_HOLD_S, then comes back at once.
DRIFT_BPS = 1500.0
DRIFT_STAGES = 5
DRIFT_STAGE_S = 0.5
DRIFT_HOLD_S = 5.0
FAULT_JITTER = 0.2  # each fault interval is drawn from interval * [0.8, 1.2]
MAX_BACKLOG = 100_000  # frames queued for one client before it is dropped as too slow
MAX_BATCH = 1_000  # steps done in one wake-up when the generator is behind schedule
CATCH_UP_LIMIT_S = 0.25  # further behind than this, the schedule restarts from now
DRAIN_TIMEOUT_S = 2.0  # stop(): time given to clients to receive what is queued for them
PING_INTERVAL_S = 20.0  # like Binance: a ping every 20 s ...
PING_TIMEOUT_S = 60.0  # ... and a minute to answer it
TRUTH_FLUSH_S = 0.25  # the truth journal reaches the OS at least this often

Query = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class OutFrame:
    """A text frame to send: to clients subscribed to `topic`, or to every client if None."""

    topic: str | None
    text: str


@dataclass(frozen=True, slots=True)
class ReplayFrame:
    """One recorded frame of a capture, as the protocol classified it.

    `topic` is the subscription the frame belongs to (None: sent to every client);
    `sequenced` marks a sequenced book update, the kind a `gap` fault skips during replay.
    """

    topic: str | None
    text: str
    sequenced: bool = False


class ClientConn:
    """One connected WebSocket client.

    The protocol may read `topics` / `topic_set` and change them with `set_topics` (from the
    client's connection thread). Everything else belongs to the server: `outbox` is filled by
    the generator and the connection thread and drained by the writer thread; `replay_pos`
    and `skip_update` are the generator's alone.
    """

    __slots__ = (
        "aborted",
        "id",
        "outbox",
        "replay_pos",
        "skip_update",
        "topic_set",
        "topics",
        "ws",
    )

    def __init__(self, conn_id: int, ws: ServerConnection, topics: Iterable[str]) -> None:
        self.id = conn_id
        self.ws = ws
        self.topics: tuple[str, ...] = ()
        self.topic_set: frozenset[str] = frozenset()
        self.set_topics(topics)
        self.outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.replay_pos = 0
        self.skip_update = False
        self.aborted = False

    def set_topics(self, topics: Iterable[str]) -> None:
        """Replace the subscriptions (order kept, duplicates dropped)."""
        ordered = tuple(dict.fromkeys(topics))
        # Two plain assignments: the generator reads `topic_set` without a lock and sees
        # either the old set or the new one, never a set being changed.
        self.topics = ordered
        self.topic_set = frozenset(ordered)


class SimProtocol:
    """A venue's wire protocol, plugged into `SimulatorHandle`.

    A subclass implements only what its venue needs; the server owns sockets, threads,
    pacing, fault timing and the client registry. Which thread calls what:

    - `update_frames` and `malformed_frame`: the generator thread. `update_frames` runs with
      `self.lock` held (the market was just stepped under the same lock), so it may read the
      books and keep sequence state without locking.
    - `http`: an HTTP connection thread, *without* the lock: take `self.lock` around reads of
      the books or of sequence state, and format the body after releasing it.
    - `accept`: a connection thread during the handshake (pure: no state).
    - `on_client_message`: the client's connection thread.
    - `load_replay`: the starting thread, before any other thread exists.
    - `goodbye_frames`: the stopping thread, after the generator has stopped.
    """

    venue: ClassVar[str] = ""
    ws_path: ClassVar[str] = "/"  # path of `SimulatorHandle.ws_url`
    # What `start_simulator` serves when no instruments are named (the venue lists them).
    default_instruments: ClassVar[tuple[str, ...]] = ("BTC-USDT", "ETH-USDT")

    @classmethod
    def market_params(cls, instrument: str) -> MarketParams:
        """Where a synthetic book of `instrument` starts and the grids it lives on (a venue
        whose sizes are contracts, or whose ticks differ, says so here)."""
        return default_params(instrument)

    # How the venue's integrity rule ties ids to books (`mmengine.dev.simulator.truth`).
    truth_rule: ClassVar[str] = "chain"
    # Where the protocol marks which id names which book (`SimulatorHandle(truth=True)`).
    truth: TruthLog = NO_TRUTH

    def __init__(
        self,
        instruments: Sequence[str],
        markets: Mapping[str, Market],
        lock: threading.Lock,
        rng: random.Random,
    ) -> None:
        """`markets` is empty in replay mode; `rng` is seeded, for reproducible ids."""
        self.instruments = tuple(instruments)
        self.markets = markets
        self.lock = lock
        self.rng = rng

    def accept(self, path: str, query: Query) -> Sequence[str] | None:
        """The topics a WebSocket opened at `path?query` subscribes to, or None to refuse it
        (the client gets HTTP 404)."""
        raise NotImplementedError

    def on_client_message(self, client: ClientConn, text: str) -> list[str]:
        """Handle a frame from a client (e.g. a subscribe); return the replies to send."""
        return []

    def http(self, path: str, query: Query) -> tuple[int, str] | None:
        """Answer a plain HTTP GET with (status, JSON body), or None for 404."""
        return None

    def update_frames(
        self, instrument: str, changes: Sequence[Change], wanted: frozenset[str]
    ) -> list[OutFrame]:
        """Frames announcing one market step of `instrument` (`changes`, already applied).

        Advance sequence state for every step, even when no frame is wanted: `wanted` (the
        union of all clients' topics) only lets the protocol skip encoding frames no one
        receives. A `gap` fault calls this and throws the frames away.
        """
        raise NotImplementedError

    def malformed_frame(self, instrument: str) -> OutFrame:
        """A frame that does not parse (truncated JSON, say), changing no sequence state."""
        raise NotImplementedError

    def corrupt_checksum(self, instrument: str) -> bool:
        """The `badchecksum` fault (generator thread, `self.lock` held): make the next update
        of `instrument` carry a wrong checksum. Returns False if the venue has none."""
        return False

    def error_frame(self, instrument: str) -> OutFrame | None:
        """The `error` fault: an error message as the venue sends it unasked (a rate limit,
        say), changing no sequence state; None if the venue has no such message."""
        return None

    def corrupt_ticker(self, instrument: str) -> bool:
        """The `badticker` fault (generator thread, `self.lock` held): make the next
        best-bid/ask ticker of `instrument` disagree with its book. Returns False if the
        venue has no such ticker tied to the book."""
        return False

    def goodbye_frames(self) -> list[OutFrame]:
        """Frames sent to every client when the simulator stops (a shutdown notice)."""
        return []

    def replay_connection(self, events: Sequence[CaptureEvent]) -> str | None:
        """The recorded connection to replay (the starting thread). By default the first
        WebSocket connection of the capture: a later one (a reconnect) starts its own sync
        and would not follow on from the first. A venue whose recorder opened one connection
        per channel picks the one that carries its books."""
        return next((e.conn for e in events if e.kind in ("connect", "recv")), None)

    def load_replay(
        self, recv: Sequence[CaptureEvent], http_events: Sequence[CaptureEvent]
    ) -> list[ReplayFrame]:
        """Prepare replay mode: classify the recorded WebSocket frames (`recv`, in file
        order) and keep what `http` should answer from the recorded responses."""
        raise NotImplementedError


class CrossedBook:
    """The `crossed` fault: a market whose bid side also holds one level above its best ask,
    until its next step removes it (the generator's alone, like the market it wraps). Reads
    (`levels`, `best`) see the extra level, so a REST snapshot taken meanwhile shows the
    same crossed book as the WebSocket."""

    def __init__(self, market: Market, level: tuple[Decimal, Decimal]) -> None:
        self.market = market
        self.level = level
        self.instrument = market.instrument
        self.params = market.params

    def levels(self, side: str, limit: int | None = None) -> list[tuple[Decimal, Decimal]]:
        if side != BID:
            # side is BID or ASK: the Market's Literal, read as str by the venue protocols
            return self.market.levels(side, limit)  # type: ignore[arg-type]
        out = [self.level, *self.market.levels(BID, None if limit is None else limit - 1)]
        return out if limit is None else out[:limit]

    def best(self, side: str) -> tuple[Decimal, Decimal] | None:
        # side is BID or ASK: the Market's Literal, read as str by the venue protocols
        return self.level if side == BID else self.market.best(side)  # type: ignore[arg-type]

    def step(self) -> list[Change]:
        """The market's next step, and the extra level deleted (unless the step itself
        set a bid at that price)."""
        changes = self.market.step()
        price = self.level[0]
        if not any(c.side == BID and c.price == price for c in changes):
            changes.insert(0, Change(BID, price, Decimal(0)))  # the best bid comes first
        return changes


def book_changes(old: Any, new: Any) -> list[Change]:
    """The changed levels that turn book `old` into book `new` (bids best first, then asks)."""
    changes: list[Change] = []
    for side in (BID, ASK):
        before = dict(old.levels(side))
        after = dict(new.levels(side))
        for price in before.keys() | after.keys():
            size = after.get(price, Decimal(0))
            if before.get(price, Decimal(0)) != size:
                changes.append(Change(side, price, size))
    changes.sort(key=lambda c: (c.side != BID, -c.price if c.side == BID else c.price))
    return changes


_CLOSE = object()  # outbox sentinel: the client is gone, end the writer
_GOING_AWAY = object()  # outbox sentinel: the simulator stops, close with 1001 and end


def _split(target: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(target)
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(key, value)  # the first value of a repeated key wins
    return parts.path, query


def _json_response(status: int, body: str) -> Response:
    data = body.encode()
    st = http.HTTPStatus(status)
    headers = Headers(
        [
            ("Content-Type", "application/json;charset=UTF-8"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(st.value, st.phrase, headers, data)


class _Stats:
    """Counters shared by all simulator threads (one small lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "connections",
                "frames_sent",
                "updates_generated",
                "snapshots_served",
                "http_errors",
                "client_messages",
                "slow_consumer_drops",
            ),
            0,
        )
        self.faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def fault(self, kind: str) -> None:
        with self.lock:
            self.faults[kind] += 1


class SimulatorHandle:
    """A running venue simulator: a WebSocket + REST server on one local port.

    Build it with `mmengine.dev.simulator.start_simulator`. Use it as a context manager, or call
    `stop()` (idempotent), which closes every connection and joins every thread it started.
    """

    def __init__(
        self,
        protocol_cls: type[SimProtocol],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        instruments: Sequence[str] = ("BTC-USDT", "ETH-USDT"),
        rate: float = 50.0,
        replay: str | Path | None = None,
        faults: Sequence[str] = (),
        fault_interval_s: float = 5.0,
        seed: int | None = None,
        shift_bps: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        market_seed: int = 0,
        truth: bool = False,
        truth_path: str | Path | None = None,
        truth_levels: int = 5,
        oversized_bytes: int = OVERSIZED_BYTES,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 frames/s, was {rate}")
        if fault_interval_s <= 0:
            raise ValueError(f"fault_interval_s must be > 0, was {fault_interval_s}")
        unknown = [f for f in faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault {unknown[0]!r}; known: {', '.join(FAULT_KINDS)}")
        self.venue = protocol_cls.venue
        self.host = host
        self.rate = float(rate)
        self.faults = tuple(dict.fromkeys(faults))
        self.fault_interval_s = float(fault_interval_s)
        self.oversized_bytes = oversized_bytes
        # A run without a seed still gets one, and says which: it can be re-run exactly.
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.replay_path = Path(replay) if replay is not None else None
        # TLS: serve `wss://` and `https://` with this context's certificate, as venues do.
        self.ssl_context = ssl_context
        self.lock = threading.Lock()  # books and protocol sequence state
        self._rng = random.Random(f"{self.seed}:server")
        self._stats = _Stats()

        self.markets: dict[str, Market] = {}
        self._replay: list[ReplayFrame] | None = None
        if self.replay_path is not None:
            header, events = read_capture(self.replay_path)
            inst = list((header.get("config") or {}).get("l2_book") or [])
            if not inst:
                raise ValueError(f"{self.replay_path}: header has no config.l2_book instruments")
            self.instruments: tuple[str, ...] = tuple(inst)
            self.protocol = protocol_cls(
                self.instruments, self.markets, self.lock, random.Random(f"{self.seed}:proto")
            )
            ws_conn = self.protocol.replay_connection(events)
            recv = [e for e in events if e.kind == "recv" and e.conn == ws_conn]
            http_events = [e for e in events if e.kind == "http"]
            self._replay = self.protocol.load_replay(recv, http_events)
        else:
            if not instruments:
                raise ValueError("no instruments to simulate")
            self.instruments = tuple(dict.fromkeys(instruments))
            # Every simulator shows the same fair price of an instrument (a function of the
            # market seed and the wall clock: separate processes agree) in its venue's own
            # style; `shift_bps` moves this venue's whole market (tests an outlier filter).
            style = VenueStyle.for_venue(self.venue, shift_bps)
            self._style = style  # where a `drift` comes back to
            for name in self.instruments:
                fair = FairPath.for_instrument(name, market_seed)
                self.markets[name] = Market(
                    name,
                    seed=f"{self.seed}:{name}",
                    params=protocol_cls.market_params(name),
                    fair=fair,
                    style=style,
                )
            self.protocol = protocol_cls(
                self.instruments, self.markets, self.lock, random.Random(f"{self.seed}:proto")
            )

        # The truth (synthetic books only): every version of every book and the ids naming
        # them, for a checker; off by default, it costs a few microseconds per step.
        self.truth: TruthLog = NO_TRUTH
        if truth or truth_path is not None:
            if self._replay is not None:
                raise ValueError("truth is kept for synthetic books only, not in replay mode")
            self.truth = TruthLog(
                protocol_cls.venue,
                protocol_cls.truth_rule,
                self.instruments,
                levels=truth_levels,
                path=truth_path,
                seed=self.seed,
            )
            for name, market in self.markets.items():
                self.truth.announce(name, market)
            self.protocol.truth = self.truth

        # Client registry: a tuple replaced under the condition's lock, so the generator can
        # iterate the current tuple without holding any lock.
        self._clients_cond = threading.Condition()
        self._clients: tuple[ClientConn, ...] = ()
        self._wanted: frozenset[str] = frozenset()
        self._next_id = 0
        self._seen: list[ServerConnection] = []  # connections whose threads stop() joins
        self._closing = False

        self._wake = threading.Event()
        self._stopping = False
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stall_until = 0.0
        self._round_robin = 0
        self._drift_plan: list[tuple[float, float]] = []  # (monotonic time, shift in bps)
        self._drifts = 0

        self._server: Server | None = None
        self._accept_thread: threading.Thread | None = None
        self._generator_thread: threading.Thread | None = None
        self.port = port  # 0: start() binds a free one and stores it here

    # --- public -----------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """The WebSocket URL, e.g. `ws://127.0.0.1:PORT/stream` (`wss://` with TLS; the client
        adds its query)."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self._url_host()}:{self.port}{self.protocol.ws_path}"

    @property
    def rest_url(self) -> str:
        """The REST base URL, e.g. `http://127.0.0.1:PORT` (same port as the WebSocket;
        `https://` with TLS)."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self._url_host()}:{self.port}"

    @property
    def stats(self) -> dict[str, Any]:
        """A copy of the counters: connections (WebSocket clients accepted), open_connections,
        frames_sent, updates_generated, snapshots_served (HTTP 200s), http_errors,
        client_messages, slow_consumer_drops, and faults (injected, per kind)."""
        with self._stats.lock:
            out: dict[str, Any] = dict(self._stats.counts)
            out["faults"] = dict(self._stats.faults)
        out["open_connections"] = len(self._clients)
        return out

    def book(
        self, instrument: str, limit: int | None = None
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """The simulator's own current book of `instrument` as (bids, asks), best first.

        Synthetic mode only. After `stop()` it is the book every client was last sent.
        """
        market = self.markets.get(instrument)
        if market is None:
            raise KeyError(f"no synthetic book for {instrument!r} (replay mode or unknown)")
        with self.lock:
            return market.levels(BID, limit), market.levels(ASK, limit)

    def book_at(self, instrument: str, seq: int, recv_ns: int | None = None) -> BookVersion | None:
        """The book the venue id `seq` named, from the truth kept with `truth=True` (None if
        unknown or out of its window); `recv_ns`: when a client received it, for a venue
        whose ids restart on each connection."""
        with self.lock:
            return self.truth.book_at(instrument, seq, recv_ns)

    def inject(self, kind: str) -> None:
        """Inject one fault now (on the generator thread), besides any scheduled ones, even
        with no client connected."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        self._requests.put(kind)
        self._wake.set()

    def start(self) -> SimulatorHandle:
        """Bind, start the accept and generator threads; returns self."""
        self._server = serve(
            self._serve_ws,
            self.host,
            self.port,
            process_request=self._process_request,
            ssl=self.ssl_context,
            compression=None,  # venue feeds are not deflated, and websocket-client can't inflate
            max_size=None,
            open_timeout=5.0,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            close_timeout=1.0,  # bounds stop() when a client doesn't answer the close
            logger=logging.getLogger("mmengine.simulator.ws"),
        )
        self.port = int(self._server.socket.getsockname()[1])
        self._accept_thread = threading.Thread(
            target=self._server.serve_forever, name=f"sim-{self.venue}-accept", daemon=True
        )
        self._accept_thread.start()
        self._generator_thread = threading.Thread(
            target=self._generate, name=f"sim-{self.venue}-generator", daemon=True
        )
        self._generator_thread.start()
        mode = f"replaying {self.replay_path}" if self.replay_path else "synthetic books"
        log.info(
            "%s simulator on %s (%s): %s, %.0f frames/s, faults %s every %.1fs, seed %d",
            self.venue,
            self.ws_url,
            mode,
            ", ".join(self.instruments),
            self.rate,
            ",".join(self.faults) or "none",
            self.fault_interval_s,
            self.seed,
        )
        return self

    def stop(self) -> None:
        """Close the server and every connection, join every thread. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stopping = True
        self._wake.set()
        if self._generator_thread is not None:
            self._generator_thread.join()
        with self.lock:
            self.truth.close()
        # Let each client receive what is already queued for it, then a goodbye and a
        # 1001 close; a client that does not read gets DRAIN_TIMEOUT_S, then is cut off.
        goodbye = self.protocol.goodbye_frames()
        with self._clients_cond:
            self._closing = True
            clients = self._clients
        for client in clients:
            for frame in goodbye:
                client.outbox.put(frame.text)
            client.outbox.put(_GOING_AWAY)
        with self._clients_cond:
            self._clients_cond.wait_for(lambda: not self._clients, timeout=DRAIN_TIMEOUT_S)
        if self._server is not None:
            self._server.shutdown()  # closes the listener, closes what is left, joins handlers
        if self._accept_thread is not None:
            self._accept_thread.join()
        # websockets' own per-connection threads (reader, keepalive) are daemons that end
        # right after their socket closes; wait for them so that stop() leaves nothing behind.
        with self._clients_cond:
            seen, self._seen = self._seen, []
        for ws in seen:
            ws.recv_events_thread.join(timeout=2.0)
            keepalive = getattr(ws, "keepalive_thread", None)
            if keepalive is not None:
                keepalive.join(timeout=2.0)
        # `stats` is the caller's to report (`mmengine simulate` says it in a sentence).
        log.debug("%s simulator stopped: %s", self.venue, self.stats)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- connection threads -------------------------------------------------------------------

    def _url_host(self) -> str:
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self.host == "::":
            return "[::1]"
        return f"[{self.host}]" if ":" in self.host else self.host

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Handshake hook: a WebSocket upgrade goes on (or 404s); any other GET is REST."""
        with self._clients_cond:
            if len(self._seen) > 64:
                self._seen = [c for c in self._seen if c.recv_events_thread.is_alive()]
            self._seen.append(ws)
        path, query = _split(request.path)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self._closing:
                return ws.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
            if self.protocol.accept(path, query) is None:
                self._stats.add("http_errors")
                return ws.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
            return None
        reply = self.protocol.http(path, query)
        if reply is None:
            self._stats.add("http_errors")
            return ws.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        status, body = reply
        self._stats.add("snapshots_served" if status == 200 else "http_errors")
        return _json_response(status, body)

    def _serve_ws(self, ws: ServerConnection) -> None:
        """A WebSocket client's connection thread: register, read client frames, clean up."""
        path, query = _split(ws.request.path if ws.request is not None else "/")
        client = self._register(ws, self.protocol.accept(path, query) or ())
        if client is None:
            return  # the simulator is stopping
        threading.current_thread().name = f"sim-{self.venue}-conn-{client.id}"
        writer = threading.Thread(
            target=self._write, args=(client,), name=f"sim-{self.venue}-writer-{client.id}"
        )
        writer.start()
        try:
            for message in ws:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                self._stats.add("client_messages")
                replies = self.protocol.on_client_message(client, text)
                self._recompute_wanted()
                for reply in replies:
                    client.outbox.put(reply)
        except ConnectionClosed:
            pass  # dropped by the client, by a `drop` fault or by stop()
        finally:
            self._unregister(client)
            client.outbox.put(_CLOSE)
            writer.join()

    def _write(self, client: ClientConn) -> None:
        """A client's writer thread: everything sent to the client is sent from here."""
        ws = client.ws
        get = client.outbox.get
        try:
            while True:
                item = get()
                sent = 0
                # Drain what is queued before touching the counters' lock again.
                while True:
                    if item is _CLOSE:
                        return
                    if item is _GOING_AWAY:
                        ws.close(CloseCode.GOING_AWAY, "simulator stopping")
                        return
                    # the queue holds str or bytes frames besides the two markers returned above
                    ws.send(item)  # type: ignore[arg-type]
                    sent += 1
                    try:
                        item = client.outbox.get_nowait()
                    except queue.Empty:
                        break
                self._stats.add("frames_sent", sent)
        except (ConnectionClosed, OSError):
            return  # the reader thread sees the same closed connection and cleans up

    def _register(self, ws: ServerConnection, topics: Iterable[str]) -> ClientConn | None:
        with self._clients_cond:
            if self._closing:
                return None
            self._next_id += 1
            client = ClientConn(self._next_id, ws, topics)
            self._clients = (*self._clients, client)
            self._wanted = self._wanted | client.topic_set
        self._stats.add("connections")
        log.info("%s client %d connected: %s", self.venue, client.id, ",".join(client.topics))
        return client

    def _unregister(self, client: ClientConn) -> None:
        with self._clients_cond:
            self._clients = tuple(c for c in self._clients if c is not client)
            self._wanted = frozenset().union(*(c.topic_set for c in self._clients))
            self._clients_cond.notify_all()

    def _recompute_wanted(self) -> None:
        with self._clients_cond:
            self._wanted = frozenset().union(*(c.topic_set for c in self._clients))

    # --- generator thread ---------------------------------------------------------------------

    def _next_fault_time(self, after: float) -> float:
        if not self.faults:
            return float("inf")
        jitter = self._rng.uniform(1 - FAULT_JITTER, 1 + FAULT_JITTER)
        return after + self.fault_interval_s * jitter

    def _generate(self) -> None:
        """Pace the market at `rate` steps/s; inject faults on schedule and on request."""
        interval = 1.0 / self.rate
        now = time.monotonic()
        next_step = now
        next_fault = self._next_fault_time(now)
        next_flush = now + TRUTH_FLUSH_S
        try:
            while not self._stopping:
                now = time.monotonic()
                if now >= next_flush:
                    next_flush = now + TRUTH_FLUSH_S
                    with self.lock:
                        self.truth.flush()
                while True:
                    try:
                        requested = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    self._inject(requested, now)
                if self._drift_plan and now >= self._drift_plan[0][0]:
                    _, bps = self._drift_plan.pop(0)
                    self._shift_markets(bps)
                if now >= next_fault:
                    # A scheduled fault fires only while a client is connected: one that hits
                    # nobody would be counted without being seen, and the counts are what a
                    # test compares with the client's own. inject() always fires.
                    kind = self._rng.choice(self.faults)
                    if self._clients:
                        self._inject(kind, now)
                    next_fault = self._next_fault_time(max(now, self._stall_until))
                if now < self._stall_until:
                    # A stall sends nothing and freezes the market too, so sequence numbers
                    # stay contiguous when frames flow again: the fault is silence, no more.
                    next_step = self._stall_until
                if now < next_step:
                    # Sleep, never spin: a spinning thread would starve every other thread
                    # of the GIL (the connection threads and the engine under test).
                    wake = min(next_step, next_fault, next_flush)
                    if self._drift_plan:
                        wake = min(wake, self._drift_plan[0][0])
                    self._wake.wait(wake - now)
                    self._wake.clear()
                    continue
                done = 0
                while next_step <= now and done < MAX_BATCH and not self._stopping:
                    self._tick()
                    next_step += interval
                    done += 1
                if now - next_step > CATCH_UP_LIMIT_S:
                    next_step = now  # too far behind to catch up: keep the rate, not the debt
        except Exception:
            log.exception("%s simulator generator failed; no more frames", self.venue)

    def _tick(self) -> None:
        if self._replay is not None:
            for client in self._clients:
                self._replay_next(client)
            return
        instrument = self.instruments[self._round_robin]
        self._round_robin = (self._round_robin + 1) % len(self.instruments)
        self._broadcast(self._step(instrument))

    def _step(self, instrument: str, discard: bool = False) -> list[OutFrame]:
        """One market step of `instrument`, announced; `discard`: its frames will be thrown
        away (the `gap` fault), which the truth notes (inside the lock, where it marks)."""
        with self.lock:
            market = self.markets[instrument]
            changes = market.step()
            if isinstance(market, CrossedBook):
                self.markets[instrument] = market = market.market  # uncrossed again
            self.truth.announce(instrument, market)
            with self.truth.undelivered() if discard else contextlib.nullcontext():
                frames = self.protocol.update_frames(instrument, changes, self._wanted)
        self._stats.add("updates_generated")
        return frames

    def _cross(self, instrument: str) -> list[OutFrame]:
        """Announce a bid one tick above the best ask, sized like it: a valid message (ids
        and checksums follow on) of a crossed book, gone again at the next step."""
        with self.lock:
            market = self.markets[instrument]
            ask = market.best(ASK)
            if isinstance(market, CrossedBook) or ask is None:
                return []
            level = (ask[0] + market.params.tick, ask[1])
            crossed = CrossedBook(market, level)
            # a CrossedBook reads and steps like the Market it wraps (levels, best, step)
            self.markets[instrument] = crossed  # type: ignore[assignment]
            self.truth.announce(instrument, crossed)
            return self.protocol.update_frames(instrument, [Change(BID, *level)], self._wanted)

    def _shift_markets(self, bps: float) -> None:
        """Every market of the venue jumps to a new book showing the shared fair price `bps`
        further away than the venue's usual style (a `drift` stage), announced as one valid
        update per instrument."""
        self._drifts += 1
        style = self._style.shifted(bps)
        for instrument in self.instruments:
            with self.lock:
                old = self.markets[instrument]
                base = old.market if isinstance(old, CrossedBook) else old
                new = Market(
                    instrument,
                    seed=f"{self.seed}:{instrument}:drift{self._drifts}",
                    params=base.params,
                    fair=base.fair,
                    style=style,
                )
                changes = book_changes(old, new)
                self.markets[instrument] = new
                self.truth.announce(instrument, new)
                frames = self.protocol.update_frames(instrument, changes, self._wanted)
            self._broadcast(frames)

    def _replay_next(self, client: ClientConn) -> None:
        """Send the client its next recorded frame (one per tick), skipping other topics."""
        frames = self._replay
        assert frames is not None
        if not client.topic_set:
            return  # the replay starts at the client's first subscription
        while client.replay_pos < len(frames):
            frame = frames[client.replay_pos]
            client.replay_pos += 1
            if frame.topic is not None and frame.topic not in client.topic_set:
                continue
            if client.skip_update and frame.sequenced:
                client.skip_update = False  # the `gap` fault: this update is never sent
                continue
            client.outbox.put(frame.text)
            return
        # The replay is over: the connection stays open and idle.

    def _broadcast(self, frames: Sequence[OutFrame]) -> None:
        clients = self._clients
        for frame in frames:
            for client in clients:
                if frame.topic is None or frame.topic in client.topic_set:
                    client.outbox.put(frame.text)
        for client in clients:
            if not client.aborted and client.outbox.qsize() > MAX_BACKLOG:
                # A client this far behind would get ever older data: cut it off, as a venue
                # does with a slow consumer, rather than queue without bound.
                log.warning("%s client %d too slow; dropped", self.venue, client.id)
                self._stats.add("slow_consumer_drops")
                self._abort(client)

    def _abort(self, client: ClientConn) -> None:
        """Cut the TCP connection without a WebSocket close frame."""
        client.aborted = True
        # shutdown(), unlike close(), also wakes a writer blocked in sendall(). OSError: the
        # socket is already gone.
        with contextlib.suppress(OSError):
            client.ws.socket.shutdown(socket.SHUT_RDWR)

    def _inject(self, kind: str, now: float) -> None:
        self._stats.fault(kind)
        log.info("%s simulator: injecting %s", self.venue, kind)
        instrument: str | None = None
        until_ns: int | None = None
        if kind == "drop":
            for client in self._clients:
                self._abort(client)
        elif kind == "gap":
            if self._replay is not None:
                for client in self._clients:
                    client.skip_update = True
            else:
                # One instrument's update happens (its book and ids move) but is never sent.
                instrument = self.instruments[self._round_robin]
                self._round_robin = (self._round_robin + 1) % len(self.instruments)
                self._step(instrument, discard=True)
        elif kind == "malformed":
            instrument = self._rng.choice(self.instruments)
            self._broadcast([self.protocol.malformed_frame(instrument)])
        elif kind == "badchecksum":
            instrument = self._rng.choice(self.instruments)
            with self.lock:
                self.protocol.corrupt_checksum(instrument)
        elif kind == "badticker":
            instrument = self._rng.choice(self.instruments)
            with self.lock:
                self.protocol.corrupt_ticker(instrument)
        elif kind == "stall":
            self._stall_until = now + STALL_S
            until_ns = time.time_ns() + int(STALL_S * 1e9)
        elif kind == "oversized":
            # Valid JSON, no book in it: what a client must refuse by size alone.
            padding = "x" * max(0, self.oversized_bytes - 20)
            self._broadcast([OutFrame(None, f'{{"oversized":"{padding}"}}')])
        elif kind == "error":
            instrument = self._rng.choice(self.instruments)
            frame = self.protocol.error_frame(instrument)
            if frame is not None:
                self._broadcast([frame])
        elif kind == "crossed" and self._replay is None:
            instrument = self._rng.choice(self.instruments)
            self._broadcast(self._cross(instrument))
        elif kind == "drift" and self._replay is None and not self._drift_plan:
            plan = [
                (now + i * DRIFT_STAGE_S, DRIFT_BPS * (i + 1) / DRIFT_STAGES)
                for i in range(DRIFT_STAGES)
            ]
            back = plan[-1][0] + DRIFT_HOLD_S
            self._drift_plan = [*plan, (back, 0.0)]
            until_ns = time.time_ns() + int((back - now) * 1e9)
        with self.lock:
            self.truth.fault(kind, instrument, until_ns)
