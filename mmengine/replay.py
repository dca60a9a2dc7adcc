"""Drive a recorded capture through the same venue and book code the live engine runs
(main thread; no sockets). Recorded REST responses answer the venue's REST requests.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from mmengine.book import L2Book
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


def detect_protocol(header: dict[str, Any], events: list[CaptureEvent]) -> str:
    """The venue protocol of a capture, from its header and its WebSocket address."""
    recorded = recorded_venues(header)
    if recorded and recorded[0].get("protocol") in PROTOCOLS:
        return str(recorded[0]["protocol"])
    exchange = str(header.get("exchange", "")).upper()
    addr = next((e.url for e in events if e.kind == "connect"), "")
    protocol = detect_address(exchange, addr)
    if protocol is not None:
        return protocol
    raise UnsupportedCapture(
        f"unsupported protocol: no venue module for exchange {exchange or '?'} at "
        f"{addr or 'an unknown address'} (supported: {', '.join(sorted(PROTOCOLS))})"
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


@dataclass
class ReplayResult:
    protocol: str
    venue: BookDriver
    session: CaptureSession
    frames: int
    seconds: float  # wall time of the book path: the venue's receive() over every frame
    capture: str = ""


@dataclass(frozen=True)
class ReplayPlan:
    """What to build from a capture: the protocol, the venue's spec and the events it saw."""

    protocol: str
    spec: VenueSpec
    events: list[CaptureEvent]


def plan_replay(
    header: dict[str, Any],
    events: list[CaptureEvent],
    audit: bool = True,
    depth: int = 1000,
    venue_name: str | None = None,
) -> ReplayPlan:
    """Pick the protocol, instruments and depth a capture was recorded with.

    `mmengine record` captures name their venues in the header (several venue connections
    may share one file: `venue_name` picks one). Other format-2 captures (cryptofeed's)
    name instruments their own way, so the instruments and depth come from the subscribe
    frames the recording sent, read by the venue module itself; the header's `l2_book`
    list is the fallback (Binance embeds its streams in the URL).
    """
    recorded = recorded_venues(header)
    if recorded:
        if venue_name is None and len(recorded) > 1:
            names = ", ".join(str(v.get("name")) for v in recorded)
            raise UnsupportedCapture(f"the capture holds venues {names}: choose one (--venue NAME)")
        entry = next((v for v in recorded if venue_name in (None, v.get("name"))), None)
        if entry is None:
            raise UnsupportedCapture(f"the capture has no venue named {venue_name!r}")
        protocol = str(entry.get("protocol"))
        if protocol not in PROTOCOLS:
            raise UnsupportedCapture(f"unsupported protocol {protocol!r} in the capture")
        conn = entry.get("conn")
        spec = VenueSpec(
            name=str(entry.get("name", protocol)),
            protocol=protocol,
            instruments=tuple(entry.get("instruments", ())),
            depth=int(entry.get("depth", depth)),
            audit=audit,
        )
        return ReplayPlan(protocol, spec, [e for e in events if conn in (None, e.conn)])
    protocol = detect_protocol(header, events)
    cls = PROTOCOLS[protocol]
    subscribed = cls.capture_subscription([e.data for e in events if e.kind == "send"])
    if subscribed is not None:
        instruments, sub_depth = subscribed
        depth = sub_depth or depth
    else:
        instruments = tuple(header.get("config", {}).get("l2_book", ()))
    spec = VenueSpec(
        name=protocol, protocol=protocol, instruments=instruments, depth=depth, audit=audit
    )
    return ReplayPlan(protocol, spec, events)


def replay_capture(
    path: str | Path,
    audit: bool = True,
    keep_tops: bool = False,
    depth: int = 1000,
    venue_name: str | None = None,
    trace: IO[str] | None = None,
) -> ReplayResult:
    """Run every recorded frame of `path` through its venue module; returns the venue."""
    header, events = read_capture(path)
    result = replay_events(
        header,
        events,
        audit=audit,
        keep_tops=keep_tops,
        depth=depth,
        venue_name=venue_name,
        trace=trace,
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
) -> ReplayResult:
    """`replay_capture` on a capture already read (the benchmark reads the file once).

    A `connect` event for a connection seen before is a reconnect: the venue is told, as
    the live transport would. With `trace`, one JSON line per book message is written.
    """
    plan = plan_replay(header, events, audit=audit, depth=depth, venue_name=venue_name)
    session = CaptureSession([e for e in plan.events if e.kind == "http"], keep_tops=keep_tops)
    venue = open_venue(plan.spec, session)
    venue.on_connected()
    # (frame, recv ns); a None frame marks a reconnect. Built before the clock starts.
    steps: list[tuple[str | None, int]] = []
    seen: set[str] = set()
    # Captures list each connection's frames in arrival order, one connection after the
    # other (cryptofeed records Kraken's book and ticker channels on separate sockets).
    # A stable sort by receive time interleaves them as they arrived; within a connection
    # the order is unchanged.
    ordered = sorted((e for e in plan.events if e.kind in ("recv", "connect")), key=lambda e: e.ts)
    for e in ordered:
        if e.kind == "recv":
            steps.append((e.data, int(e.ts * 1e9)))
        elif e.kind == "connect":
            if e.conn in seen:
                steps.append((None, 0))
            seen.add(e.conn)
    frames = sum(1 for data, _ in steps if data is not None)
    # The capture's own objects (every frame, read at once) are not the engine's: frozen,
    # no garbage collection walks them during the timed replay, so a fresh process (the
    # CLI) reports what a warm benchmark does.
    gc.collect()
    gc.freeze()
    try:
        seconds = _run(venue, steps) if trace is None else _run_traced(venue, steps, trace)
    finally:
        gc.unfreeze()
    return ReplayResult(plan.protocol, venue, session, frames, seconds)


def _run(venue: BookDriver, steps: list[tuple[str | None, int]]) -> float:
    """Replay; returns the wall time of the book path: `receive` of the frames that were
    book messages (tickers, trades, heartbeats and acks are replayed but not counted)."""
    receive = venue.receive
    vs = venue.venue_stats
    clock = time.perf_counter_ns
    book_ns = 0
    for data, recv_ns in steps:
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
    return book_ns / 1e9


def _run_traced(venue: BookDriver, steps: list[tuple[str | None, int]], out: IO[str]) -> float:
    """Replay writing one trace line per book message; only `receive` of book messages is
    timed, as in `_run`."""
    stats = list(venue.stats.items())
    counts = [(s.messages, s.checksums_checked, s.checksums_failed) for _, s in stats]
    vs = venue.venue_stats
    seconds = 0.0
    for data, recv_ns in steps:
        if data is None:
            venue.on_disconnected()
            venue.on_connected()
            continue
        before = vs.book_frames
        start = time.perf_counter()
        venue.receive(data, recv_ns)
        if vs.book_frames != before:
            seconds += time.perf_counter() - start
        for i, (instrument, st) in enumerate(stats):
            messages, checked, failed = counts[i]
            if st.messages == messages:
                continue
            counts[i] = (st.messages, st.checksums_checked, st.checksums_failed)
            ok = None
            if st.checksums_checked != checked:
                ok = st.checksums_failed == failed
            out.write(_trace_line(venue.books[instrument], recv_ns, ok))
    return seconds


def _trace_line(book: L2Book, recv_ns: int, checksum_ok: bool | None) -> str:
    bid = book.bids.best()
    ask = book.asks.best()
    return (
        orjson.dumps(
            {
                "instrument": book.instrument,
                "venue_seq": book.venue_seq if book.venue_seq >= 0 else None,
                "cross_seq": book.cross_seq if book.cross_seq >= 0 else None,
                "exchange_ts_ns": book.exchange_ts_ns,
                "recv_ts_ns": recv_ns,
                "bid": [bid, book.bids.sizes[bid]] if bid is not None else None,
                "ask": [ask, book.asks.sizes[ask]] if ask is not None else None,
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


def scorecard(result: ReplayResult) -> dict[str, Any]:
    """The `mmengine replay --json` object: per instrument what its book went through and
    ends with, and the capture's totals (the figures the README quotes come from here)."""
    venue = result.venue
    vs = venue.venue_stats
    instruments: dict[str, Any] = {}
    for instrument, book in venue.books.items():
        st = venue.stats[instrument]
        bids = book.bids.prices(TOP_LEVELS)
        asks = book.asks.prices(TOP_LEVELS)
        instruments[instrument] = {
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
                "bids": [[p, book.bids.sizes[p]] for p in bids],
                "asks": [[p, book.asks.sizes[p]] for p in asks],
            },
        }
    stats = list(venue.stats.values())
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
    connection = venue.connection
    errors = [f"skipped {n} frame(s): {kind}" for kind, n in sorted(vs.skipped.items())]
    errors += [f"{n} resync(s): {reason}" for reason, n in sorted(vs.resyncs.items())]
    return {
        "capture": result.capture,
        "protocol": result.protocol,
        "frames": result.frames,
        "book_frames": vs.book_frames,
        "seconds": round(result.seconds, 6),
        "us_per_book_frame": round(result.seconds / vs.book_frames * 1e6, 3)
        if vs.book_frames
        else 0.0,
        "connection_sequence": {"checked": connection.checked, "gaps": connection.gaps}
        if connection is not None
        else None,
        "totals": totals,
        "instruments": instruments,
        "errors": errors,
    }


def unsupported_scorecard(capture: str, reason: str) -> dict[str, Any]:
    """The scorecard of a capture no venue module can read: empty, with the reason."""
    return {
        "capture": capture,
        "protocol": None,
        "frames": 0,
        "book_frames": 0,
        "seconds": 0.0,
        "us_per_book_frame": 0.0,
        "connection_sequence": None,
        "totals": None,
        "instruments": {},
        "errors": [reason],
    }


def _ratio(ok: int, of: int) -> str:
    return f"{ok}/{of}"


def format_scorecard(card: dict[str, Any]) -> str:
    """The scorecard as a readable table, then its totals in a sentence."""
    lines = [
        f"{card['capture']}: protocol {card['protocol'] or '-'}, {card['frames']} frames, "
        f"{card['book_frames']} book frames, {card['seconds'] * 1e3:.1f} ms book path, "
        f"{card['us_per_book_frame']:.2f} us/book frame",
    ]
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
        lines.append(sentence)
    for error in card["errors"]:
        lines.append(f"error: {error}")
    return "\n".join(lines)
