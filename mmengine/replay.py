"""Drive a recorded capture through the same venue and book code the live engine runs
(main thread; no sockets). Recorded REST responses answer the venue's REST requests.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from mmengine.book.book import L2Book
from mmengine.book.sync import BookDriver
from mmengine.capture import CaptureEvent, read_capture
from mmengine.model import BookTop
from mmengine.venues.base import VenueSpec
from mmengine.venues.registry import PROTOCOLS, open_venue
from mmengine.venues.registry import detect_protocol as detect_address


class UnsupportedCapture(Exception):
    """The capture's venue or protocol has no venue module (yet)."""


def recorded_venues(header: dict[str, Any]) -> list[dict[str, Any]]:
    """The venue connections an `mmengine record` capture describes (empty for others)."""
    section = header.get("config", {}).get("mmengine")
    if not isinstance(section, dict):
        return []
    return [v for v in section.get("venues", ()) if isinstance(v, dict)]


def record_header(specs: list[VenueSpec]) -> tuple[str, dict[str, Any]]:
    """(exchange, config) for the header of an `mmengine record` capture: each venue
    connection with its protocol, instruments and depth, so `replay` needs no guessing.
    `conn` is the connection name the transport records under (its thread name)."""
    exchanges = sorted({s.protocol.split("-")[0].upper() for s in specs})
    venues = [
        {
            "name": s.name,
            "protocol": s.protocol,
            "conn": f"venue-{s.name}",
            "instruments": list(s.instruments),
            "depth": s.depth,
            "url": s.url,
        }
        for s in specs
    ]
    config = {
        "l2_book": sorted({i for s in specs for i in s.instruments}),
        "mmengine": {"venues": venues},
    }
    return "+".join(exchanges), config


@dataclass(frozen=True)
class RecordedConnection:
    """One WebSocket connection of a capture and how it is read.

    `protocol` is None when no venue module reads it (an unknown host: name one with
    `--protocol`); `venue` is the replayed venue whose books its frames feed; `source` says
    where the protocol came from: `header` (an `mmengine record` capture names it),
    `address` (the registry's table of venue hosts) or `forced` (`--protocol`)."""

    conn: str
    address: str
    protocol: str | None
    venue: str | None
    source: str


def _connections(events: list[CaptureEvent]) -> dict[str, str]:
    """Every WebSocket connection (a connect, send or recv event) by first appearance, with
    its first connect address ("" when the capture has none for it)."""
    found: dict[str, str] = {}
    for e in events:
        if e.kind == "http":
            continue
        if e.conn not in found or (not found[e.conn] and e.kind == "connect"):
            found[e.conn] = e.url if e.kind == "connect" else ""
    return found


def _forced(protocols: dict[str | None, str] | None, conn: str) -> str | None:
    if not protocols:
        return None
    return protocols.get(conn, protocols.get(None))


def capture_connections(
    header: dict[str, Any],
    events: list[CaptureEvent],
    protocols: dict[str | None, str] | None = None,
) -> list[RecordedConnection]:
    """The protocol of every connection of a capture, decided per connection.

    `protocols` forces one (`{None: NAME}`: every connection; `{CONN: NAME}`: that one).
    Otherwise an `mmengine record` capture's header names each connection's protocol, and
    any other capture's connect address is looked up in the registry (a connection with no
    recorded address takes the protocol of the others when they agree on one).
    """
    for name in (protocols or {}).values():
        if name not in PROTOCOLS:
            raise UnsupportedCapture(
                f"unknown protocol {name!r} (supported: {', '.join(sorted(PROTOCOLS))})"
            )
    addresses = _connections(events)
    recorded = {str(v.get("conn")): v for v in recorded_venues(header)}
    exchange = str(header.get("exchange", ""))
    out: list[RecordedConnection] = []
    for conn, address in addresses.items():
        forced = _forced(protocols, conn)
        entry = recorded.get(conn)
        protocol: str | None
        if forced is not None:
            protocol, source = forced, "forced"
        elif entry is not None and entry.get("protocol") in PROTOCOLS:
            protocol, source = str(entry["protocol"]), "header"
        else:
            protocol, source = detect_address(exchange, address), "address"
        venue = str(entry.get("name", protocol)) if entry is not None else protocol
        out.append(RecordedConnection(conn, address, protocol, venue if protocol else None, source))
    known = {c.protocol for c in out if c.protocol is not None}
    if len(known) == 1:
        only = known.pop()
        out = [
            RecordedConnection(c.conn, c.address, only, only, "address")
            if c.protocol is None and not c.address
            else c
            for c in out
        ]
    return out


def detect_protocol(header: dict[str, Any], events: list[CaptureEvent]) -> str:
    """The venue protocol of a capture's first connection, from its header or its WebSocket
    address (`capture_connections` gives every connection's)."""
    for conn in capture_connections(header, events):
        if conn.protocol is not None:
            return conn.protocol
    addr = next((e.url for e in events if e.kind == "connect"), "")
    raise UnsupportedCapture(unsupported(str(header.get("exchange", "")), addr))


def unsupported(exchange: str, address: str, conn: str | None = None) -> str:
    """What to say about a connection no venue module reads (`conn`: one of several)."""
    where = f"connection {conn}: " if conn is not None else ""
    return (
        f"{where}unsupported protocol: no venue module for exchange {exchange.upper() or '?'} "
        f"at {address or 'an unknown address'} (supported: {', '.join(sorted(PROTOCOLS))}; "
        f"name one with --protocol {f'{conn}=' if conn is not None else ''}NAME)"
    )


@dataclass
class CaptureSession:
    """A `Session` fed from a capture: REST answers come from the recorded responses, at
    once (the next `fetched` returns them), as they did when the capture was recorded."""

    http_records: list[CaptureEvent]
    tops: list[BookTop] = field(default_factory=list)
    keep_tops: bool = False
    published: int = 0
    _answers: list[tuple[Any, str | None, str, int]] = field(default_factory=list)

    def send(self, text: str) -> None:
        pass  # nothing listens; the recorded frames already reflect what was sent

    def fetch(self, key: Any, url: str) -> None:
        want = _url_key(url)
        for rec in self.http_records:
            if _url_key(rec.url) == want:
                # Replayed on the capture's own clock: the driver's time stands.
                self._answers.append((key, rec.data, "", 0))
                return
        self._answers.append((key, None, f"the capture has no recorded response for {url}", 0))

    def fetched(self) -> list[tuple[Any, str | None, str, int]]:
        answers, self._answers = self._answers, []
        return answers

    def publish(self, top: BookTop) -> None:
        self.published += 1
        if self.keep_tops:
            self.tops.append(top)

    def reconnect(self, reason: str) -> None:
        pass


def _url_key(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Path plus query without `limit` (the recorded depth may differ from ours)."""
    parts = urlsplit(url)
    query = tuple(sorted((k, v) for k, v in parse_qsl(parts.query) if k != "limit"))
    return parts.path, query


@dataclass(frozen=True)
class ReplayPlan:
    """What to build for one venue of a capture: its protocol, its spec, the events its
    connections saw (and the REST responses) and those connections."""

    protocol: str
    spec: VenueSpec
    events: list[CaptureEvent]
    connections: tuple[RecordedConnection, ...] = ()


def plan_venues(
    header: dict[str, Any],
    events: list[CaptureEvent],
    audit: bool = True,
    depth: int = 1000,
    venue_name: str | None = None,
    protocols: dict[str | None, str] | None = None,
) -> tuple[list[ReplayPlan], list[RecordedConnection]]:
    """The venues to replay, and the connections no venue module reads.

    Connections read with the same protocol form one venue (one set of books): a recording
    tool may spread one venue's channels over several sockets (cryptofeed records Kraken's
    book and ticker on two). `mmengine record` captures name their venues, instruments and
    depth in the header. Other format-2 captures (cryptofeed's) name instruments their own
    way, so they come from the subscribe frames the recording sent, read by the venue module
    itself, else from the header's `l2_book` names the venue accepts (Binance embeds its
    streams in the URL; Bybit's wire symbols cannot be split). `venue_name` picks one venue.
    """
    connections = capture_connections(header, events, protocols)
    unread = [c for c in connections if c.protocol is None]
    recorded = {str(v.get("name")): v for v in recorded_venues(header)}
    groups: dict[str, list[RecordedConnection]] = {}
    for c in connections:
        if c.venue is not None:
            groups.setdefault(c.venue, []).append(c)
    if venue_name is not None:
        if venue_name not in groups:
            held = ", ".join(groups) or "none"
            raise UnsupportedCapture(f"the capture has no venue named {venue_name!r} ({held})")
        groups = {venue_name: groups[venue_name]}
        unread = []
    if not connections:
        raise UnsupportedCapture("the capture holds no WebSocket connection")
    plans = []
    for name, conns in groups.items():
        protocol = str(conns[0].protocol)
        ids = {c.conn for c in conns}
        entry = recorded.get(name)
        mine = [e for e in events if e.conn in ids or (e.kind == "http" and entry is None)]
        if entry is not None:
            http = [e for e in events if e.kind == "http" and e.conn == entry.get("conn")]
            mine = [e for e in events if e.conn in ids] + http
            instruments = tuple(entry.get("instruments", ()))
            venue_depth = int(entry.get("depth", depth))
        else:
            instruments, venue_depth = _subscribed(header, protocol, mine, depth)
        spec = VenueSpec(
            name=name,
            protocol=protocol,
            instruments=instruments,
            depth=venue_depth,
            audit=audit,
        )
        plans.append(ReplayPlan(protocol, spec, mine, tuple(conns)))
    return plans, unread


def _subscribed(
    header: dict[str, Any], protocol: str, events: list[CaptureEvent], depth: int
) -> tuple[tuple[str, ...], int]:
    """(instruments, depth) a foreign capture's connections subscribed to."""
    cls = PROTOCOLS[protocol]
    subscribed = cls.capture_subscription([e.data for e in events if e.kind == "send"])
    instruments: tuple[str, ...] = ()
    if subscribed is not None:
        instruments, sub_depth = subscribed
        depth = sub_depth or depth
    if not instruments:
        names = header.get("config", {}).get("l2_book", ())
        instruments = tuple(str(i) for i in names if cls.instrument_problem(str(i)) is None)
    return instruments, depth


def plan_replay(
    header: dict[str, Any],
    events: list[CaptureEvent],
    audit: bool = True,
    depth: int = 1000,
    venue_name: str | None = None,
) -> ReplayPlan:
    """The plan of a capture of one venue (or of the venue `venue_name` picks)."""
    plans, _ = plan_venues(header, events, audit=audit, depth=depth, venue_name=venue_name)
    if len(plans) > 1:
        names = ", ".join(p.spec.name for p in plans)
        raise UnsupportedCapture(f"the capture holds venues {names}: choose one (--venue NAME)")
    return plans[0]


@dataclass(slots=True)
class ConnectionCounts:
    """What one recorded connection carried, as its venue's books saw it."""

    frames: int = 0
    book_frames: int = 0
    ignored: int = 0
    skipped: int = 0
    reconnects: int = 0


@dataclass
class VenueReplay:
    """One venue of a capture, replayed: its books, and what each connection carried."""

    plan: ReplayPlan
    venue: BookDriver
    session: CaptureSession
    frames: int
    seconds: float  # wall time of the book path: the venue's receive() over every frame
    counts: dict[str, ConnectionCounts]

    @property
    def protocol(self) -> str:
        return self.plan.protocol


@dataclass
class ReplayResult:
    """Every venue of a capture, replayed; `unread`: the connections no venue module
    reads (their frames were not replayed)."""

    replays: list[VenueReplay]
    unread: list[RecordedConnection] = field(default_factory=list)
    capture: str = ""
    exchange: str = ""  # the capture header's, for what is said about unread connections

    @property
    def venue(self) -> BookDriver:
        """The books of the capture's one venue (a capture of several: pick one with
        `venue_name`, or read `replays`)."""
        if len(self.replays) != 1:
            raise ValueError(f"{len(self.replays)} venues replayed: read `replays`")
        return self.replays[0].venue

    @property
    def session(self) -> CaptureSession:
        if len(self.replays) != 1:
            raise ValueError(f"{len(self.replays)} venues replayed: read `replays`")
        return self.replays[0].session

    @property
    def protocol(self) -> str:
        return "+".join(r.protocol for r in self.replays)

    @property
    def frames(self) -> int:
        return sum(r.frames for r in self.replays)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.replays)


def replay_capture(
    path: str | Path,
    audit: bool = True,
    keep_tops: bool = False,
    depth: int = 1000,
    venue_name: str | None = None,
    trace: IO[str] | None = None,
    protocols: dict[str | None, str] | None = None,
) -> ReplayResult:
    """Run every recorded frame of `path` through its venue modules."""
    header, events = read_capture(path)
    result = replay_events(
        header,
        events,
        audit=audit,
        keep_tops=keep_tops,
        depth=depth,
        venue_name=venue_name,
        trace=trace,
        protocols=protocols,
    )
    result.capture = Path(path).name
    return result


def replay_events(
    header: dict[str, Any],
    events: list[CaptureEvent],
    audit: bool = True,
    keep_tops: bool = False,
    depth: int = 1000,
    venue_name: str | None = None,
    trace: IO[str] | None = None,
    protocols: dict[str | None, str] | None = None,
) -> ReplayResult:
    """`replay_capture` on a capture already read (the benchmark reads the file once).

    A `connect` event for a connection seen before is a reconnect: the venue is told, as
    the live transport would. With `trace`, one JSON line per book message is written.
    """
    plans, unread = plan_venues(header, events, audit, depth, venue_name, protocols)
    replays = [_replay_venue(plan, keep_tops, trace) for plan in plans]
    return ReplayResult(replays, unread, exchange=str(header.get("exchange", "")))


# (frame, recv ns, connection index); a None frame marks a reconnect.
Step = tuple[str | None, int, int]


def _replay_venue(plan: ReplayPlan, keep_tops: bool, trace: IO[str] | None) -> VenueReplay:
    session = CaptureSession([e for e in plan.events if e.kind == "http"], keep_tops=keep_tops)
    venue = open_venue(plan.spec, session)
    venue.on_connected()
    index = {c.conn: i for i, c in enumerate(plan.connections)}
    counts = [ConnectionCounts() for _ in plan.connections]
    # Built before the clock starts.
    steps: list[Step] = []
    seen: set[str] = set()
    # Captures list each connection's frames in arrival order, one connection after the
    # other (cryptofeed records Kraken's book and ticker channels on separate sockets).
    # A stable sort by receive time interleaves them as they arrived; within a connection
    # the order is unchanged.
    ordered = sorted((e for e in plan.events if e.kind in ("recv", "connect")), key=lambda e: e.ts)
    for e in ordered:
        n = index[e.conn]
        if e.kind == "recv":
            steps.append((e.data, int(e.ts * 1e9), n))
            counts[n].frames += 1
        elif e.kind == "connect":
            if e.conn in seen:
                steps.append((None, 0, n))
                counts[n].reconnects += 1
            seen.add(e.conn)
    frames = sum(c.frames for c in counts)
    # The capture's own objects (every frame, read at once) are not the engine's: frozen,
    # no garbage collection walks them during the timed replay, so a fresh process (the
    # CLI) reports what a warm benchmark does.
    gc.collect()
    gc.freeze()
    try:
        tracer = _Tracer(venue, trace) if trace is not None else None
        seconds = _run(venue, steps, counts, tracer)
    finally:
        gc.unfreeze()
    if len(counts) == 1:  # one connection carried everything its venue saw
        vs = venue.venue_stats
        counts[0].book_frames = vs.book_frames
        counts[0].ignored = sum(vs.ignored.values())
        counts[0].skipped = sum(vs.skipped.values())
    by_conn = {c.conn: counts[i] for i, c in enumerate(plan.connections)}
    return VenueReplay(plan, venue, session, frames, seconds, by_conn)


def _run(
    venue: BookDriver,
    steps: list[Step],
    counts: list[ConnectionCounts],
    tracer: _Tracer | None = None,
) -> float:
    """Replay; returns the wall time of the book path: `receive` of the frames that were
    book messages (tickers, trades, heartbeats and acks are replayed but not counted).
    With several connections feeding the venue, each frame's outcome is tallied to its
    connection (outside the timed call)."""
    receive = venue.receive
    vs = venue.venue_stats
    clock = time.perf_counter_ns
    split = len(counts) > 1
    book_ns = 0
    ignored = skipped = 0
    for data, recv_ns, conn in steps:
        if data is None:
            venue.on_disconnected()
            venue.on_connected()
            continue
        before = vs.book_frames
        start = clock()
        receive(data, recv_ns)
        elapsed = clock() - start
        if vs.book_frames != before:
            book_ns += elapsed
        if split:
            count = counts[conn]
            count.book_frames += vs.book_frames - before
            now_ignored = sum(vs.ignored.values())
            now_skipped = sum(vs.skipped.values())
            count.ignored += now_ignored - ignored
            count.skipped += now_skipped - skipped
            ignored, skipped = now_ignored, now_skipped
        if tracer is not None:
            tracer.after(recv_ns)
    return book_ns / 1e9


class _Tracer:
    """Writes one trace line per book message: each book's counters are compared after
    every frame."""

    def __init__(self, venue: BookDriver, out: IO[str]) -> None:
        self.venue = venue
        self.out = out
        self.stats = list(venue.stats.items())
        self.counts = [(s.messages, s.checksums_checked, s.checksums_failed) for _, s in self.stats]

    def after(self, recv_ns: int) -> None:
        for i, (instrument, st) in enumerate(self.stats):
            messages, checked, failed = self.counts[i]
            if st.messages == messages:
                continue
            self.counts[i] = (st.messages, st.checksums_checked, st.checksums_failed)
            ok = None
            if st.checksums_checked != checked:
                ok = st.checksums_failed == failed
            self.out.write(_trace_line(self.venue, self.venue.books[instrument], recv_ns, ok))


def _trace_line(venue: BookDriver, book: L2Book, recv_ns: int, checksum_ok: bool | None) -> str:
    bid = book.bids.best()
    ask = book.asks.best()
    return (
        orjson.dumps(
            {
                "venue": venue.name,
                "instrument": book.instrument,
                "venue_seq": book.venue_seq if book.venue_seq >= 0 else None,
                "cross_seq": book.cross_seq if book.cross_seq >= 0 else None,
                "exchange_ts_ns": book.exchange_ts_ns,
                "recv_ts_ns": recv_ns,
                "bid": [bid, book.bids.size(bid)] if bid is not None else None,
                "ask": [ask, book.asks.size(ask)] if ask is not None else None,
                "checksum_ok": checksum_ok,
                "state": book.state.value,
            }
        ).decode()
        + "\n"
    )


# --- the scorecard -------------------------------------------------------------------------

TOP_LEVELS = 10


def _audit(st: Any) -> dict[str, dict[str, int]]:
    return {
        "exact": {"agree": st.audit_agree, "disagree": st.audit_disagree},
        "by_arrival": {"agree": st.audit_loose_agree, "disagree": st.audit_loose_disagree},
    }


def _instrument_card(venue: BookDriver, instrument: str) -> dict[str, Any]:
    book = venue.books[instrument]
    st = venue.stats[instrument]
    return {
        "venue": venue.name,
        "venue_symbol": venue.venue_symbol(instrument),
        "messages": st.messages,
        "snapshots": st.snapshots,
        "updates": st.updates,
        "dropped_stale": st.dropped_stale,
        "checksums": {"checked": st.checksums_checked, "failed": st.checksums_failed},
        "sequence": {"checked": st.sequence_checked, "gaps": st.sequence_gaps},
        "audit": _audit(st),
        "resyncs": st.resyncs,
        "restarts": st.restarts,
        "crossed": st.crossed,
        "skipped": st.skipped,
        "state": book.state.value,
        "levels": {"bids": len(book.bids), "asks": len(book.asks)},
        "top": {
            "bids": [list(level) for level in book.bids.levels(TOP_LEVELS)],
            "asks": [list(level) for level in book.asks.levels(TOP_LEVELS)],
        },
    }


def _connection_card(conn: RecordedConnection, counts: ConnectionCounts | None) -> dict[str, Any]:
    counts = counts or ConnectionCounts()
    return {
        "conn": conn.conn,
        "address": conn.address,
        "protocol": conn.protocol,
        "protocol_from": conn.source if conn.protocol is not None else None,
        "venue": conn.venue,
        "frames": counts.frames,
        "book_frames": counts.book_frames,
        "ignored": counts.ignored,
        "skipped": counts.skipped,
        "reconnects": counts.reconnects,
    }


def scorecard(result: ReplayResult) -> dict[str, Any]:
    """The `mmengine replay --json` object: each connection (its protocol and what it
    carried), per instrument what its book went through and ends with, and the capture's
    totals (the figures the README quotes come from here).

    An instrument is keyed by its name, or `venue:name` where two venues of the capture
    both have it. `errors` lists what failed (frames of our channels that could not be
    used, resyncs, connections no venue module reads); `ignored` counts frames of channels
    no venue module uses, which are not errors."""
    replays = result.replays
    several = len(replays) > 1
    names = [i for r in replays for i in r.venue.books]
    shared = {n for n in names if names.count(n) > 1}
    instruments: dict[str, Any] = {}
    for r in replays:
        for instrument in r.venue.books:
            key = f"{r.venue.name}:{instrument}" if instrument in shared else instrument
            instruments[key] = _instrument_card(r.venue, instrument)
    stats = [s for r in replays for s in r.venue.stats.values()]
    totals = {
        "snapshots": sum(s.snapshots for s in stats),
        "updates": sum(s.updates for s in stats),
        "dropped_stale": sum(s.dropped_stale for s in stats),
        "checksums": {
            "checked": sum(s.checksums_checked for s in stats),
            "failed": sum(s.checksums_failed for s in stats),
        },
        "sequence": {
            "checked": sum(s.sequence_checked for s in stats),
            "gaps": sum(s.sequence_gaps for s in stats),
        },
        "audit": {
            kind: {
                way: sum(a[kind][way] for a in (_audit(s) for s in stats))
                for way in ("agree", "disagree")
            }
            for kind in ("exact", "by_arrival")
        },
    }
    counters = [r.venue.connection for r in replays if r.venue.connection is not None]
    errors: list[str] = []
    ignored: Counter[str] = Counter()
    connections = []
    for r in replays:
        vs = r.venue.venue_stats
        ignored.update(vs.ignored)
        where = f"{r.venue.name}: " if several else ""
        errors += [f"{where}skipped {n} frame(s): {kind}" for kind, n in sorted(vs.skipped.items())]
        errors += [f"{where}{n} resync(s): {reason}" for reason, n in sorted(vs.resyncs.items())]
        connections += [_connection_card(c, r.counts.get(c.conn)) for c in r.plan.connections]
    several = len(result.unread) + sum(len(r.plan.connections) for r in replays) > 1
    for c in result.unread:
        connections.append(_connection_card(c, None))
        errors.append(unsupported(result.exchange, c.address, c.conn if several else None))
    if not replays:  # nothing could be read: the scorecard of an unsupported capture
        return {
            **unsupported_scorecard(result.capture, errors[0]),
            "errors": errors,
            "connections": connections,
        }
    book_frames = sum(r.venue.venue_stats.book_frames for r in replays)
    return {
        "capture": result.capture,
        "protocol": result.protocol or None,
        "frames": result.frames,
        "book_frames": book_frames,
        "book_core": replays[0].venue.core.name if replays else None,
        "seconds": round(result.seconds, 6),
        "us_per_book_frame": round(result.seconds / book_frames * 1e6, 3) if book_frames else 0.0,
        "connection_sequence": {
            "checked": sum(c.checked for c in counters),
            "gaps": sum(c.gaps for c in counters),
        }
        if counters
        else None,
        "totals": totals,
        "instruments": instruments,
        "ignored": dict(sorted(ignored.items())),
        "errors": errors,
        "connections": connections,
    }


def unsupported_scorecard(capture: str, reason: str) -> dict[str, Any]:
    """The scorecard of a capture no venue module can read: empty, with the reason."""
    return {
        "capture": capture,
        "protocol": None,
        "frames": 0,
        "book_frames": 0,
        "book_core": None,
        "seconds": 0.0,
        "us_per_book_frame": 0.0,
        "connection_sequence": None,
        "totals": None,
        "instruments": {},
        "ignored": {},
        "errors": [reason],
        "connections": [],
    }


def exit_code(card: dict[str, Any]) -> int:
    """`mmengine replay`'s exit code: 2 when a connection (or the whole capture) could not
    be read by any venue module, 1 when something failed (an integrity check, a frame of
    our channels that could not be used), 0 otherwise: ignored channels are not failures."""
    if card["protocol"] is None or any(c["protocol"] is None for c in card["connections"]):
        return 2
    return 1 if card["errors"] else 0


def _ratio(ok: int, of: int) -> str:
    return f"{ok}/{of}"


def _short_address(address: str) -> str:
    """Host and path of a connect address (Binance's stream list in the query is long)."""
    parts = urlsplit(address)
    short = parts.netloc + parts.path if parts.netloc else address
    return short if len(short) <= 40 else short[:39] + "…"


def format_scorecard(card: dict[str, Any]) -> str:
    """The scorecard as a readable table, then its totals in a sentence."""
    lines = [
        f"{card['capture']}: protocol {card['protocol'] or '-'}, {card['frames']} frames, "
        f"{card['book_frames']} book frames, {card['seconds'] * 1e3:.1f} ms book path, "
        f"{card['us_per_book_frame']:.2f} us/book frame",
    ]
    if card["connections"]:
        lines.append(
            f"{'connection':<20} {'protocol':<17} {'from':<7} {'address':<40} {'frames':>7} "
            f"{'book':>7} {'ignored':>7} {'skipped':>7}"
        )
    for c in card["connections"]:
        lines.append(
            f"{c['conn']:<20} {c['protocol'] or 'UNREAD':<17} {c['protocol_from'] or '-':<7} "
            f"{_short_address(c['address']):<40} {c['frames']:>7} {c['book_frames']:>7} "
            f"{c['ignored']:>7} {c['skipped']:>7}"
        )
    if card["instruments"]:
        lines.append(
            f"{'instrument':<18} {'venue symbol':<15} {'state':<9} {'msgs':>5} {'snap':>4} "
            f"{'upd':>5} {'drop':>4} {'crc ok/n':>11} {'seq gap/n':>11} {'resync':>6} "
            f"{'skip':>4} {'levels b/a':>13} {'audit ok/n':>10} {'arrival ok/n':>12}  "
            "best bid / best ask"
        )
    for name, inst in card["instruments"].items():
        crc = inst["checksums"]
        seq = inst["sequence"]
        exact = inst["audit"]["exact"]
        loose = inst["audit"]["by_arrival"]
        levels = inst["levels"]
        bids = inst["top"]["bids"]
        asks = inst["top"]["asks"]
        bid = f"{bids[0][1]:.8g} @ {bids[0][0]:.10g}" if bids else "-"
        ask = f"{asks[0][1]:.8g} @ {asks[0][0]:.10g}" if asks else "-"
        lines.append(
            f"{name:<18} {inst['venue_symbol']:<15} {inst['state']:<9} {inst['messages']:>5} "
            f"{inst['snapshots']:>4} {inst['updates']:>5} {inst['dropped_stale']:>4} "
            f"{_ratio(crc['checked'] - crc['failed'], crc['checked']):>11} "
            f"{_ratio(seq['gaps'], seq['checked']):>11} {inst['resyncs']:>6} "
            f"{inst['skipped']:>4} {_ratio(levels['bids'], levels['asks']):>13} "
            f"{_ratio(exact['agree'], exact['agree'] + exact['disagree']):>10} "
            f"{_ratio(loose['agree'], loose['agree'] + loose['disagree']):>12}  {bid} / {ask}"
        )
    totals = card.get("totals")
    if totals:
        crc = totals["checksums"]
        seq = totals["sequence"]
        exact = totals["audit"]["exact"]
        loose = totals["audit"]["by_arrival"]
        sentence = (
            f"totals: {totals['snapshots']} snapshots, {totals['updates']} updates, "
            f"{totals['dropped_stale']} dropped as older than the book; "
            f"checksums {crc['checked'] - crc['failed']} of {crc['checked']} match; "
            f"{seq['gaps']} gaps in {seq['checked']} sequence checks"
        )
        connection = card.get("connection_sequence")
        if connection:
            sentence += (
                f", {connection['gaps']} gaps in {connection['checked']} connection-wide "
                "sequence numbers"
            )
        sentence += (
            f"; exact audit {exact['agree']} of {exact['agree'] + exact['disagree']} agree, "
            f"by arrival {loose['agree']} of {loose['agree'] + loose['disagree']}"
        )
        ignored = card.get("ignored") or {}
        if ignored:
            channels = ", ".join(f"{name} {n}" for name, n in ignored.items())
            sentence += (
                f"; {sum(ignored.values())} frames of channels not used ignored ({channels})"
            )
        lines.append(sentence)
    for error in card["errors"]:
        lines.append(f"error: {error}")
    return "\n".join(lines)
