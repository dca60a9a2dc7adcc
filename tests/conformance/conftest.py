"""The conformance suite runs over every protocol of the registry (mmengine.venues.registry):
a new venue passes the same tests by being registered.

What each protocol brings: its venue module (the registry), its simulator and that
simulator's wire kit (`mmengine.dev.simulator.kit`), and a capture in tests/data (recorded from
the venue, or from its simulator with `mmengine record`) that `mmengine replay` recognises.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from mmengine.book.sync import BookDriver
from mmengine.capture import read_capture
from mmengine.dev.simulator.kit import WireKit
from mmengine.model import BookState
from mmengine.replay import UnsupportedCapture, detect_protocol, recorded_venues
from mmengine.venues.base import VenueSpec
from mmengine.venues.registry import REGISTRY, Registration, open_venue
from tests.venue_session import RecordingSession

DATA = Path(__file__).parent.parent / "data"
PROTOCOLS = [r.protocol for r in REGISTRY]


@dataclass(frozen=True)
class Capture:
    path: Path
    venue_name: str | None  # a `record` capture of several venues: which one


@cache
def captures() -> dict[str, list[Capture]]:
    """Every capture in tests/data by the protocol `mmengine replay` reads it with."""
    found: dict[str, list[Capture]] = {}
    for path in sorted(DATA.glob("*.jsonl.gz")):
        header, events = read_capture(path)
        recorded = recorded_venues(header)
        if recorded:
            for entry in recorded:
                found.setdefault(str(entry["protocol"]), []).append(Capture(path, entry["name"]))
            continue
        try:
            found.setdefault(detect_protocol(header, events), []).append(Capture(path, None))
        except UnsupportedCapture:
            continue
    return found


def registration(protocol: str) -> Registration:
    return next(r for r in REGISTRY if r.protocol == protocol)


def kit_of(protocol: str) -> WireKit:
    """A fresh wire kit of the protocol's simulator."""
    sim = registration(protocol).simulator_classes()[0]
    kit: WireKit = sim.kit()  # type: ignore[attr-defined]
    return kit


def state(driver: BookDriver) -> dict[str, Any]:
    """Everything a book holds, to compare before and after a frame."""
    return {
        i: (b.state, dict(b.bids.sizes), dict(b.asks.sizes), b.venue_seq, b.cross_seq)
        for i, b in driver.books.items()
    }


def live_books(
    kit: WireKit, books: dict[str, tuple[list[Any], list[Any]]], audit: bool = False
) -> tuple[BookDriver, RecordingSession]:
    """A fresh connection of the kit's protocol whose books are LIVE with `books`."""
    session = RecordingSession(kit.rest())
    spec = VenueSpec(kit.protocol, kit.protocol, kit.instruments, depth=kit.depth, audit=audit)
    driver = open_venue(spec, session)
    driver.on_connected()
    for frame in kit.connect_frames():
        driver.receive(frame, 1)
    for instrument, (bids, asks) in books.items():
        for frame in kit.snapshot(instrument, bids, asks):
            driver.receive(frame, 2)
    return driver, session


def all_live(driver: BookDriver) -> bool:
    return all(b.state is BookState.LIVE for b in list(driver.books.values()))


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)
