"""A load generator that costs little: every venue protocol at a fixed total rate, from one
process and one thread (its main thread), so that a benchmark measures the engine and not
the simulators.

Each venue's frames are its exact protocol, written by that simulator's wire kit
(`mmengine.dev.simulator.kit`): snapshots, then updates with the venue's sequence numbers and
checksums, which the engine verifies as it would the venue's. The frames are rendered
before the run, as a *cycle* of updates per venue that ends with the books as they started
(a last frame per instrument puts back every level the cycle changed). A checksum depends
only on the book, so it repeats every cycle; a sequence number grows by a fixed step per
cycle. Rendering the cycle three times and comparing the texts finds every number that
changes and its step, so each frame becomes a template whose sequence numbers are filled
in at send time (about a microsecond), for any protocol, without knowing its fields; the
third rendering checks the templates reproduce the kit's own text exactly.

On the wire it is a minimal WebSocket server (RFC 6455: the handshake, unmasked server
frames, masked client frames read for close and ping) and, on the same port, the REST
snapshots the kit gives (Binance's depth). Frames due at the same moment to one connection
go out in one `send`. A connection's stream starts when the client first speaks (its
subscribe) or, for a venue that subscribes in the URL, at once; a reconnect starts a fresh
stream from the snapshots.

Pacing: frame k of the run (round robin over the venues) is due at start + k / rate. The
loop sleeps until the next frame is due and sends everything due; how late each wake-up
was is the generator's own lag. A run reports the rate it offered, the rate it achieved,
its lag, and `fell_behind` when it could not keep the schedule (lag beyond 5 ms at p99, or
fewer than 99 % of the frames due issued): such a run measured the generator, not the
engine. Bytes the engine has not read yet wait in a per-connection buffer (counted).

    python -m mmengine.dev.loadgen --rate 10000 --seconds 20

prints one JSON line `{"event": "ready", "venues": {...}}` with each venue's URLs, one
`{"event": "tick", ...}` a second once streaming, and `{"event": "done", ...}` at the end
(after `--seconds`, or on SIGTERM / SIGINT).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import re
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mmengine.dev.simulator import SIM_PROTOCOLS
from mmengine.dev.simulator.kit import Level, WireKit

# (protocol, depth to configure): the five venue protocols of a bench, one connection each.
VENUES: tuple[tuple[str, int], ...] = (
    ("binance", 100),
    ("coinbase-advanced", 100),
    ("kraken-v2", 10),
    ("okx-v5", 400),
    ("bybit-v5-spot", 50),
)
MIDS = {"BTC": 65_000.0, "ETH": 3_500.0}
LEVELS = 8  # per side; below every venue's depth even with a level added inside the spread
CYCLE_UPDATES = 400  # updates per instrument in one cycle, before the restoring frame
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LATE_US = 5_000  # a wake-up later than this at p99 means the generator fell behind
LAG_BIN_US = 10
LAG_BINS = 10_000
MAX_BACKLOG = 64 * 1024 * 1024  # bytes one connection may hold unread before it is dropped

_DIGITS = re.compile(r"(\d+)")


# --- rendering --------------------------------------------------------------------------


def _levels(mid: float, side: int) -> list[tuple[float, str]]:
    """(price, size text) best first: side +1 asks above mid, -1 bids below."""
    return [
        (round(mid + side * (0.05 + 0.10 * i), 2), f"{1 + (i * 7) % 5 * 0.25:.8f}")
        for i in range(LEVELS)
    ]


@dataclass
class _Book:
    """The generator's own view of one instrument's book, to draw changes that stay valid."""

    start_bids: dict[float, str]
    start_asks: dict[float, str]
    bids: dict[float, str] = field(default_factory=dict)
    asks: dict[float, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bids = dict(self.start_bids)
        self.asks = dict(self.start_asks)


def _px(price: float) -> str:
    return f"{price:.2f}"


def _change(book: _Book, rng: random.Random) -> tuple[list[Level], list[Level]]:
    """One market change (bids, asks): mostly a size at one of the best levels, sometimes
    a level inserted inside the spread or taken out again (the mid moves)."""
    roll = rng.random()
    bid, ask = max(book.bids), min(book.asks)
    if roll < 0.1:  # a level out or in at the best, on one side
        side = rng.choice(("b", "a"))
        levels, start = (
            (book.bids, book.start_bids) if side == "b" else (book.asks, book.start_asks)
        )
        added = [p for p in levels if p not in start]
        if added:
            del levels[added[0]]
            change = [(_px(added[0]), "0")]
        else:
            price = round(bid + 0.01, 2) if side == "b" else round(ask - 0.01, 2)
            if not bid < price < ask:
                return [], []
            size = f"{rng.choice((0.5, 1.0, 2.0)):.8f}"
            levels[price] = size
            change = [(_px(price), size)]
        return (change, []) if side == "b" else ([], change)
    side_levels = book.bids if roll < 0.55 else book.asks
    price = rng.choice(sorted(side_levels, reverse=side_levels is book.bids)[:5])
    size = f"{rng.choice((0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)) + rng.randrange(8) * 0.125:.8f}"
    side_levels[price] = size
    change = [(_px(price), size)]
    return (change, []) if side_levels is book.bids else ([], change)


def _restore(book: _Book) -> tuple[list[Level], list[Level]]:
    """The frame that puts the book back as the cycle found it."""
    out: list[list[Level]] = []
    for levels, start in ((book.bids, book.start_bids), (book.asks, book.start_asks)):
        side = [(_px(p), "0") for p in levels if p not in start]
        side += [(_px(p), q) for p, q in start.items() if levels.get(p) != q]
        levels.clear()
        levels.update(start)
        out.append(side)
    return out[0], out[1]


@dataclass
class Template:
    """A frame whose sequence numbers are filled in per cycle: literal parts, and between
    them (value in cycle 0, step per cycle)."""

    parts: list[bytes]
    numbers: list[tuple[int, int]]

    def render(self, cycle: int) -> bytes:
        if not self.numbers:
            return self.parts[0]
        out = [self.parts[0]]
        for (base, step), part in zip(self.numbers, self.parts[1:], strict=True):
            out.append(b"%d" % (base + step * cycle))
            out.append(part)
        return b"".join(out)


def template_of(first: str, second: str) -> Template:
    """The template that turns `first` (cycle 0) into `second` (cycle 1): every digit run
    that differs is a sequence number with a fixed step. ValueError if the texts differ in
    anything but digit runs."""
    a, b = _DIGITS.split(first), _DIGITS.split(second)
    if len(a) != len(b):
        raise ValueError(f"frames differ in shape:\n{first[:200]}\n{second[:200]}")
    parts: list[str] = [""]
    numbers: list[tuple[int, int]] = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if i % 2 == 0 or x == y:
            if i % 2 == 0 and x != y:
                raise ValueError(f"frames differ outside numbers: {x[:80]!r} vs {y[:80]!r}")
            parts[-1] += x
            continue
        numbers.append((int(x), int(y) - int(x)))
        parts.append("")
    return Template([p.encode() for p in parts], numbers)


@dataclass
class VenueFeed:
    """One venue's pre-rendered stream: frames for a new connection, then the cycle."""

    protocol: str
    depth: int
    instruments: tuple[str, ...]
    opening: list[bytes]  # connect frames and snapshots
    cycle: list[Template]
    rest: dict[str, bytes]  # REST answers by a part of the URL
    subscribes_in_url: bool


def render_feed(protocol: str, depth: int, seed: int = 7) -> VenueFeed:
    """Render one venue's stream with its simulator's wire kit (see the module doc)."""
    # only the kit-bearing simulators are in PROTOCOLS here; SimProtocol declares no kit()
    kit: WireKit = SIM_PROTOCOLS[protocol].kit()  # type: ignore[attr-defined]
    rng = random.Random(f"{seed}:{protocol}")
    books = {}
    opening = [f.encode() for f in kit.connect_frames()]
    for inst in kit.instruments:
        mid = MIDS.get(inst.split("-")[0], 100.0)
        bids, asks = dict(_levels(mid, -1)), dict(_levels(mid, +1))
        books[inst] = _Book(bids, asks)
        frames = kit.snapshot(
            inst, [(_px(p), q) for p, q in bids.items()], [(_px(p), q) for p, q in asks.items()]
        )
        opening += [f.encode() for f in frames]
    rest = {key: body.encode() for key, body in kit.rest().items()}
    # The same changes three times over: each cycle ends where it started.
    changes: list[tuple[str, list[Level], list[Level]]] = []
    for _ in range(CYCLE_UPDATES):
        for inst in kit.instruments:
            bid_changes, ask_changes = _change(books[inst], rng)
            if bid_changes or ask_changes:
                changes.append((inst, bid_changes, ask_changes))
    for inst in kit.instruments:
        changes.append((inst, *_restore(books[inst])))
    cycles = [[kit.update([(inst, b, a)]) for inst, b, a in changes] for _ in range(3)]
    templates = [template_of(x, y) for x, y in zip(cycles[0], cycles[1], strict=True)]
    for t, third in zip(templates, cycles[2], strict=True):
        if t.render(2) != third.encode():
            raise ValueError(f"{protocol}: a sequence number does not step evenly: {third[:200]}")
    return VenueFeed(
        protocol,
        depth,
        tuple(kit.instruments),
        opening,
        templates,
        rest,
        subscribes_in_url=protocol == "binance",
    )


# --- the wire ---------------------------------------------------------------------------


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, n) + payload
    if n < 65_536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


class Conn:
    """One accepted TCP connection: HTTP until it upgrades, then a WebSocket stream."""

    __slots__ = ("feed", "inbuf", "outbuf", "pos", "sock", "streaming", "upgraded")

    def __init__(self, sock: socket.socket, feed: VenueFeed) -> None:
        self.sock = sock
        self.feed = feed
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.upgraded = False
        self.streaming = False
        self.pos = 0  # index into the cycle (all cycles laid end to end)

    def next_frame(self) -> bytes:
        cycle = self.feed.cycle
        frame = cycle[self.pos % len(cycle)].render(self.pos // len(cycle))
        self.pos += 1
        return frame


@dataclass
class Stats:
    due: int = 0  # frames the schedule asked for (to connected, streaming venues)
    sent: int = 0  # frames written to a connection's buffer
    no_connection: int = 0  # frames due to a venue with no streaming connection
    connections: int = 0
    dropped_connections: int = 0  # closed for holding MAX_BACKLOG unread
    backlog_max: int = 0  # the most bytes one connection held unread
    # How late each wake-up was, in 10 us bins up to 100 ms (the last bin: beyond), so
    # that a long run (a soak) keeps a flat memory.
    lag_bins: list[int] = field(default_factory=lambda: [0] * (LAG_BINS + 1))
    lag_max_us: float = 0.0

    def lag(self, us: float) -> None:
        self.lag_bins[min(int(us) // LAG_BIN_US, LAG_BINS)] += 1
        if us > self.lag_max_us:
            self.lag_max_us = us

    def lag_quantile(self, q: float) -> float | None:
        """The upper edge of the bin holding quantile q (us); None before any wake-up."""
        total = sum(self.lag_bins)
        if not total:
            return None
        running = 0
        for i, n in enumerate(self.lag_bins):
            running += n
            if running >= q * total:
                return float((i + 1) * LAG_BIN_US) if i < LAG_BINS else self.lag_max_us
        return self.lag_max_us


class LoadGenerator:
    """The server: listens on one port per venue; `run` streams at `rate` frames/s."""

    def __init__(self, feeds: Sequence[VenueFeed], host: str = "127.0.0.1") -> None:
        self.feeds = list(feeds)
        self.selector = selectors.DefaultSelector()
        self.listeners: dict[socket.socket, VenueFeed] = {}
        self.conns: dict[socket.socket, Conn] = {}
        self.ports: dict[str, int] = {}
        self.stats = Stats()
        self._stop = False
        for feed in self.feeds:
            lsock = socket.socket()
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((host, 0))
            lsock.listen(16)
            lsock.setblocking(False)
            self.listeners[lsock] = feed
            self.ports[feed.protocol] = lsock.getsockname()[1]
            self.selector.register(lsock, selectors.EVENT_READ)
        self.host = host

    def endpoints(self) -> dict[str, dict[str, Any]]:
        return {
            f.protocol: {
                "ws": f"ws://{self.host}:{self.ports[f.protocol]}"
                + SIM_PROTOCOLS[f.protocol].ws_path,
                "rest": f"http://{self.host}:{self.ports[f.protocol]}",
                "instruments": list(f.instruments),
                "depth": f.depth,
            }
            for f in self.feeds
        }

    def stop(self) -> None:
        self._stop = True

    # --- I/O ------------------------------------------------------------------------------

    def _poll_io(self) -> None:
        for key, _ in self.selector.select(0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock in self.listeners:
                try:
                    new, _addr = sock.accept()
                except BlockingIOError:
                    continue
                new.setblocking(False)
                new.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conns[new] = Conn(new, self.listeners[sock])
                self.selector.register(new, selectors.EVENT_READ)
                continue
            conn = self.conns.get(sock)
            if conn is None:
                continue
            try:
                data = sock.recv(65_536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self._close(conn)
                continue
            conn.inbuf += data
            if conn.upgraded:
                self._client_frames(conn)
            else:
                self._http(conn)

    def _http(self, conn: Conn) -> None:
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(conn.inbuf[:end]).decode("latin-1")
        del conn.inbuf[: end + 4]
        lines = head.split("\r\n")
        target = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        key = headers.get("sec-websocket-key")
        if key is None:
            body = next((b for part, b in conn.feed.rest.items() if part in target), None)
            status = "200 OK" if body is not None else "404 Not Found"
            body = body if body is not None else b'{"error":"not found"}'
            conn.outbuf += (
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
            self._flush(conn)
            self._close(conn)
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        conn.outbuf += (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
        conn.upgraded = True
        self.stats.connections += 1
        for frame in conn.feed.opening:
            conn.outbuf += ws_frame(frame)
        if conn.feed.subscribes_in_url:
            conn.streaming = True
        self._flush(conn)

    def _client_frames(self, conn: Conn) -> None:
        buf = conn.inbuf
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            n = buf[1] & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                (n,) = struct.unpack_from("!H", buf, 2)
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                (n,) = struct.unpack_from("!Q", buf, 2)
                pos = 10
            masked = buf[1] & 0x80
            if len(buf) < pos + (4 if masked else 0) + n:
                return
            mask = bytes(buf[pos : pos + 4]) if masked else b"\0\0\0\0"
            pos += 4 if masked else 0
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[pos : pos + n]))
            del buf[: pos + n]
            if opcode == 0x8:  # close: answer and drop
                conn.outbuf += ws_frame(payload[:2], 0x8)
                self._flush(conn)
                self._close(conn)
                return
            if opcode == 0x9:
                conn.outbuf += ws_frame(payload, 0xA)
            elif opcode == 0x1 and not conn.streaming:
                conn.streaming = True  # its subscribe: the stream starts

    def _flush(self, conn: Conn) -> None:
        if not conn.outbuf:
            return
        try:
            n = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._close(conn)
            return
        del conn.outbuf[:n]
        held = len(conn.outbuf)
        if held > self.stats.backlog_max:
            self.stats.backlog_max = held
        if held > MAX_BACKLOG:
            self.stats.dropped_connections += 1
            self._close(conn)

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.sock, None) is None:
            return
        self.selector.unregister(conn.sock)
        conn.sock.close()

    # --- the run --------------------------------------------------------------------------

    def streaming(self) -> dict[str, Conn]:
        """The newest streaming connection of each venue."""
        out = {}
        for conn in self.conns.values():
            if conn.streaming:
                out[conn.feed.protocol] = conn
        return out

    def wait_streaming(self, timeout_s: float) -> bool:
        """Serve connections until every venue streams (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop:
            self._poll_io()
            if len(self.streaming()) == len(self.feeds):
                return True
            time.sleep(0.002)
        return False

    def run(self, rate: float, seconds: float, report: Any = None) -> dict[str, Any]:
        """Stream for `seconds` (or until `stop()`); returns the run's figures."""
        stats = self.stats
        order = [f.protocol for f in self.feeds]
        interval = 1.0 / rate
        start = time.monotonic()
        k = 0  # frames due so far
        next_io = start
        next_report = start + 1.0
        while not self._stop:
            now = time.monotonic()
            if now - start >= seconds:
                break
            if now >= next_io:
                self._poll_io()
                next_io = now + 0.001
            due_k = int((now - start) / interval) + 1
            if due_k > k:
                stats.lag((now - (start + k * interval)) * 1e6)
                live = self.streaming()
                touched = set()
                for j in range(k, due_k):
                    conn = live.get(order[j % len(order)])
                    stats.due += 1
                    if conn is None:
                        stats.no_connection += 1
                        continue
                    conn.outbuf += ws_frame(conn.next_frame())
                    stats.sent += 1
                    touched.add(conn)
                k = due_k
                for conn in touched:
                    self._flush(conn)
            for conn in list(self.conns.values()):
                if conn.outbuf:
                    self._flush(conn)
            if report is not None and now >= next_report:
                next_report += 1.0
                report(self.figures(rate, now - start, final=False))
            wait = start + k * interval - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.001))
        return self.figures(rate, time.monotonic() - start, final=True)

    def figures(self, rate: float, elapsed_s: float, final: bool) -> dict[str, Any]:
        s = self.stats
        p50 = s.lag_quantile(0.5)
        p99 = s.lag_quantile(0.99)
        achieved = s.sent / elapsed_s if elapsed_s > 0 else 0.0
        offered = rate
        # Behind: wake-ups too late, or fewer frames issued than the schedule asked for
        # (frames due to a venue with no connection are issued, and counted apart).
        fell_behind = p99 is not None and (p99 > LATE_US or s.due < 0.99 * rate * elapsed_s)
        return {
            "event": "done" if final else "tick",
            "seconds": round(elapsed_s, 3),
            "offered_per_s": offered,
            "achieved_per_s": round(achieved, 1),
            "due": s.due,
            "sent": s.sent,
            "no_connection": s.no_connection,
            "wake_lag_p50_us": p50,
            "wake_lag_p99_us": p99,
            "wake_lag_max_us": round(s.lag_max_us, 1),
            "backlog_max_bytes": s.backlog_max,
            "connections": s.connections,
            "dropped_connections": s.dropped_connections,
            "fell_behind": fell_behind,
        }

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        for lsock in self.listeners:
            self.selector.unregister(lsock)
            lsock.close()
        self.selector.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, required=True, help="book frames per second, total")
    ap.add_argument("--seconds", type=float, default=60.0, help="stream this long, then stop")
    ap.add_argument("--connect-timeout", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if args.rate <= 0:
        ap.error("--rate must be > 0")
    t0 = time.monotonic()
    feeds = [render_feed(protocol, depth, args.seed) for protocol, depth in VENUES]
    gen = LoadGenerator(feeds)
    signal.signal(signal.SIGTERM, lambda *_: gen.stop())
    signal.signal(signal.SIGINT, lambda *_: gen.stop())

    def emit(doc: dict[str, Any]) -> None:
        print(json.dumps(doc), flush=True)

    emit(
        {
            "event": "ready",
            "render_s": round(time.monotonic() - t0, 2),
            "venues": gen.endpoints(),
        }
    )
    try:
        if not gen.wait_streaming(args.connect_timeout):
            emit({"event": "error", "error": "not every venue connected and subscribed"})
            return 1
        emit({"event": "streaming"})
        emit(gen.run(args.rate, args.seconds, report=emit))
    finally:
        gen.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
