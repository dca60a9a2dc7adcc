"""The load generator (issue 15): its pre-rendered frames are each venue's exact protocol,
verified by the engine's own book code (sequence numbers and checksums), cycle after cycle;
and its wire is a WebSocket a real client reads."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
import websocket

from mmengine.dev.loadgen import VENUES, LoadGenerator, render_feed, template_of
from mmengine.model import BookState
from tests.venue_session import RecordingSession, venue


@pytest.mark.parametrize(("protocol", "depth"), VENUES)
def test_frames_keep_the_books_live_and_verified_cycle_after_cycle(
    protocol: str, depth: int
) -> None:
    feed = render_feed(protocol, depth)
    session = RecordingSession({k: v.decode() for k, v in feed.rest.items()})
    driver, _ = venue(protocol, feed.instruments, session, depth=depth)
    for frame in feed.opening:
        driver.receive(frame.decode(), time.time_ns())
    driver.on_tick(time.time_ns())  # REST snapshots (Binance) come back here
    n = len(feed.cycle)
    books_at_start = None
    for k in range(3 * n):  # three cycles: the sequence numbers step on, checksums repeat
        driver.receive(feed.cycle[k % n].render(k // n).decode(), time.time_ns())
        if k == 0:
            driver.on_tick(time.time_ns())
        if k % n == n - 1:
            books = {i: (dict(b.bids.sizes), dict(b.asks.sizes)) for i, b in driver.books.items()}
            books_at_start = books_at_start or books
            assert books == books_at_start  # each cycle ends where it started
    assert all(b.state is BookState.LIVE for b in driver.books.values())
    stats = list(driver.stats.values())
    assert sum(s.resyncs for s in stats) == 0
    assert sum(s.sequence_gaps for s in stats) == 0
    assert sum(s.checksums_failed for s in stats) == 0
    assert not driver.venue_stats.skipped
    assert sum(s.updates for s in stats) >= 3 * n - len(feed.instruments)  # all applied
    if driver.venue.checksum is not None:
        assert sum(s.checksums_checked for s in stats) >= 3 * n  # verified, not skipped


def test_a_template_fills_sequence_numbers_and_refuses_other_changes() -> None:
    t = template_of('{"u":17,"p":"1.05","c":99}', '{"u":29,"p":"1.05","c":99}')
    assert t.render(0) == b'{"u":17,"p":"1.05","c":99}'
    assert t.render(3) == b'{"u":53,"p":"1.05","c":99}'
    with pytest.raises(ValueError):
        template_of('{"s":"a1"}', '{"s":"b1"}')


def test_a_websocket_client_reads_the_stream_and_the_rest_snapshot() -> None:
    feed = render_feed("binance", 100)
    gen = LoadGenerator([feed])
    ep = gen.endpoints()["binance"]
    result: dict[str, object] = {}
    runner = threading.Thread(target=lambda: result.update(gen.run(2000, 1.5)))
    runner.start()  # serves the handshake too
    try:
        ws = websocket.create_connection(ep["ws"] + "?streams=btcusdt@depth@100ms", timeout=5)
        with urllib.request.urlopen(ep["rest"] + "/api/v3/depth?symbol=BTCUSDT&limit=100") as r:
            assert b"lastUpdateId" in r.read()
        frames = [ws.recv() for _ in range(200)]
        ws.close()
    finally:
        gen.stop()
        runner.join(5)
        gen.close()
    assert frames[: len(feed.opening)] == [f.decode() for f in feed.opening]
    assert all('"depthUpdate"' in f for f in frames)
    assert result["sent"] and not result["dropped_connections"]
    assert result["offered_per_s"] == 2000
