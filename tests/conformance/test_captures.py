"""(a) Each protocol's capture replays through the engine's own code with every integrity
check passing, and its final books equal the independent reference.

The reference is cryptofeed 2.4.1's final books of the same frames
(tests/data/cryptofeed_final_books.json; for Coinbase its `harness_reference`, because
cryptofeed drops the snapshot asks there), matched by the venue's own symbol. A capture
recorded from our simulator has no such reference: its venue checksums and sequences,
checked on every message, are its truth.

(c) A malformed frame, among the capture's real ones, is a counted skip with every book
unchanged.
"""

from __future__ import annotations

import ast
from functools import cache
from typing import Any

import orjson
import pytest

from mmengine.book.sync import BookDriver
from mmengine.capture import read_capture
from mmengine.model import BookState
from mmengine.replay import CaptureSession, plan_replay, replay_capture
from mmengine.venues.registry import open_venue
from tests.conformance.conftest import DATA, Capture, captures, state


@cache
def references() -> dict[str, Any]:
    return orjson.loads((DATA / "cryptofeed_final_books.json").read_bytes())["venues"]


def replayed(capture: Capture) -> Any:
    return replay_capture(capture.path, audit=True, venue_name=capture.venue_name)


def test_capture_replays_with_every_check_passing(protocol: str) -> None:
    for capture in captures()[protocol]:
        result = replayed(capture)
        venue = result.venue
        assert result.protocol == protocol
        stats = list(venue.stats.values())
        assert not venue.venue_stats.skipped, capture
        assert not venue.venue_stats.resyncs, capture
        assert all(b.state is BookState.LIVE for b in venue.books.values()), capture
        assert sum(s.checksums_failed + s.sequence_gaps + s.audit_disagree for s in stats) == 0
        checked = sum(s.checksums_checked + s.sequence_checked for s in stats)
        if venue.connection is not None:
            checked += venue.connection.checked
        assert checked > 0, f"{capture}: no integrity check ran"
        assert all(s.updates > 0 for s in stats), capture


def test_final_books_equal_the_reference(protocol: str) -> None:
    compared = 0
    for capture in captures()[protocol]:
        header, _ = read_capture(capture.path)
        reference = references().get(str(header.get("exchange", "")).upper())
        if reference is None or capture.venue_name is not None:
            continue
        venue = replayed(capture).venue
        by_symbol = {venue.venue_symbol(i): i for i in venue.books}
        assert {e["exchange_symbol"] for e in reference.values()} == set(by_symbol)
        for entry in reference.values():
            inst = by_symbol[entry["exchange_symbol"]]
            ref = entry.get("harness_reference", entry)
            ref = ref if isinstance(ref, dict) else ast.literal_eval(ref)
            book = venue.books[inst]
            want_bids = [(float(p), float(q)) for p, q in ref["bids"]]
            want_asks = [(float(p), float(q)) for p, q in ref["asks"]]
            assert [(p, book.bids.sizes[p]) for p in book.bids.prices(len(want_bids))] == want_bids
            assert [(p, book.asks.sizes[p]) for p in book.asks.prices(len(want_asks))] == want_asks
            assert (len(book.bids), len(book.asks)) == (ref["bid_levels"], ref["ask_levels"])
            crc = entry.get("venue_checksum_after_last_frame")
            if crc is not None:
                rule = venue.syncs[inst].checksum
                assert rule is not None
                assert rule.value(book) & 0xFFFFFFFF == crc & 0xFFFFFFFF, inst
            compared += 1
    if not compared:
        pytest.skip(
            f"{protocol}: its capture was recorded from our simulator; there is no independent"
            " reference book, its checksums and sequences (checked above) are its truth"
        )


# --- (c) malformed frames --------------------------------------------------------------------


def live_from_capture(capture: Capture) -> tuple[BookDriver, CaptureSession, list[str]]:
    """The capture's connection replayed until its books are LIVE, and its later frames."""
    header, events = read_capture(capture.path)
    plan = plan_replay(header, events, venue_name=capture.venue_name)
    session = CaptureSession([e for e in plan.events if e.kind == "http"], keep_tops=True)
    venue = open_venue(plan.spec, session)
    venue.on_connected()
    frames = [e for e in sorted(plan.events, key=lambda e: e.ts) if e.kind == "recv"]
    for n, event in enumerate(frames):
        venue.receive(event.data, int(event.ts * 1e9))
        if all(b.state is BookState.LIVE for b in venue.books.values()):
            return venue, session, [e.data for e in frames[n + 1 :]]
    raise AssertionError(f"{capture}: the books never went LIVE")


def malformed_copies(frame: str, venue: BookDriver) -> list[str]:
    """Frames that cannot be read as anything: cut short, too deep, or of no book of ours."""
    unknown = frame
    for instrument in venue.books:
        unknown = unknown.replace(venue.venue_symbol(instrument), "ZZZ9QQQ")
    return [
        frame[: len(frame) // 2],
        frame[:1],
        frame[:-1],
        "[" * 5000 + "]" * 5000,
        "",
        "\x00\x01",
        unknown,
    ]


def test_a_malformed_frame_is_a_counted_skip_with_every_book_unchanged(protocol: str) -> None:
    capture = captures()[protocol][0]
    venue, session, later = live_from_capture(capture)
    book_frame = next(f for f in later if any(venue.venue_symbol(i) in f for i in venue.books))
    before = state(venue)
    tops = len(session.tops)
    for n, frame in enumerate(malformed_copies(book_frame, venue), start=1):
        venue.receive(frame, 1)
        assert sum(venue.venue_stats.skipped.values()) == n, repr(frame[:80])
        assert state(venue) == before, repr(frame[:80])
    assert not venue.venue_stats.resyncs and len(session.tops) == tops
