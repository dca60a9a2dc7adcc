"""Drive a recorded capture through the same venue and book code the live engine runs
(main thread; no sockets). Recorded REST responses answer the venue's REST requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mmengine.capture import CaptureEvent, read_capture
from mmengine.errors import TransportError
from mmengine.model import BookTop
from mmengine.venues.base import Venue, VenueSpec
from mmengine.venues.registry import PROTOCOLS


class UnsupportedCapture(Exception):
    """The capture's venue or protocol has no venue module (yet)."""


def detect_protocol(header: dict[str, Any], events: list[CaptureEvent]) -> str:
    """The venue protocol of a capture, from its header and its WebSocket address."""
    exchange = str(header.get("exchange", "")).upper()
    addr = next((e.url for e in events if e.kind == "connect"), "")
    if exchange == "BINANCE" and "binance.com" in addr:
        return "binance"
    raise UnsupportedCapture(
        f"no venue module for exchange {exchange or '?'} at {addr or 'unknown address'}"
    )


@dataclass
class CaptureSession:
    """A `Session` fed from a capture: REST answers come from the recorded responses."""

    http_records: list[CaptureEvent]
    tops: list[BookTop] = field(default_factory=list)
    keep_tops: bool = False
    published: int = 0

    def send(self, text: str) -> None:
        pass  # nothing listens; the recorded frames already reflect what was sent

    def http_get(self, url: str) -> str:
        want = _url_key(url)
        for rec in self.http_records:
            if _url_key(rec.url) == want:
                return rec.data
        raise TransportError(f"the capture has no recorded response for {url}")

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
    venue: Venue
    session: CaptureSession
    frames: int
    seconds: float


def replay_capture(
    path: str | Path, audit: bool = True, keep_tops: bool = False, depth: int = 1000
) -> ReplayResult:
    """Run every recorded frame of `path` through its venue module; returns the venue."""
    header, events = read_capture(path)
    protocol = detect_protocol(header, events)
    instruments = tuple(header.get("config", {}).get("l2_book", ()))
    spec = VenueSpec(
        name=protocol, protocol=protocol, instruments=instruments, depth=depth, audit=audit
    )
    session = CaptureSession([e for e in events if e.kind == "http"], keep_tops=keep_tops)
    venue = PROTOCOLS[protocol](spec, session)
    venue.on_connected()
    frames = [e for e in events if e.kind == "recv"]
    start = time.perf_counter()
    for event in frames:
        venue.receive(event.data, int(event.ts * 1e9))
    seconds = time.perf_counter() - start
    return ReplayResult(protocol, venue, session, len(frames), seconds)
