"""The durable spool: FIFO order through memory, disk and resends; torn tails; the byte
limit; replay after a restart."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mmengine.sinks.spool import FRAME, Spool, SpoolBusy, pack_frames, unpack_frames


def rec(i: int) -> bytes:
    return f"record-{i:06d}".encode() * 3


def drain(spool: Spool, batch: int = 7) -> list[bytes]:
    """Take and ack everything, in batches, as a sink keeping pace would."""
    out = []
    while True:
        got = spool.take(batch)
        if not got:
            return out
        out.extend(got)
        spool.ack(len(got))


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.spool"))


def test_frames_round_trip() -> None:
    frames = [b"BTC-USDT", b"\x00" * 24, b"", b"\xc3\x01payload"]
    assert unpack_frames(pack_frames(frames)) == frames


def test_memory_only_when_the_sink_keeps_pace(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, memory_records=100)
    for i in range(50):
        assert spool.put(rec(i))
    assert drain(spool) == [rec(i) for i in range(50)]
    assert spool.stats.spooled == 0 and segments(tmp_path) == []
    assert spool.stats.acknowledged == 50 and spool.pending == 0


def test_overflow_goes_to_disk_and_order_holds(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, memory_records=10, segment_bytes=300)
    for i in range(10):
        spool.put(rec(i))
    first = spool.take(3)  # three in flight from memory, then a burst overflows memory
    for i in range(10, 520):
        spool.put(rec(i))
    assert spool.stats.spooled > 500
    assert len(segments(tmp_path)) > 5  # rolled at segment_bytes
    assert spool.memory_len <= 10
    spool.ack(3)
    assert first + drain(spool) == [rec(i) for i in range(520)]
    # Every segment was acknowledged, so every segment file is gone.
    assert segments(tmp_path) == []
    assert spool.stats.spool_bytes == 0
    assert spool.stats.segments_deleted > 5


def test_rewind_resends_unacknowledged_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, memory_records=5, segment_bytes=200)
    for i in range(40):
        spool.put(rec(i))
    first = spool.take(10)
    spool.ack(4)  # 0..3 delivered; 4..9 in flight when the sink is rebuilt
    assert spool.rewind() == 6
    assert spool.take(8) == [*first[4:], rec(10), rec(11)]
    spool.ack(8)
    assert drain(spool) == [rec(i) for i in range(12, 40)]


def test_away_puts_everything_on_disk_including_in_flight(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, memory_records=1000)
    for i in range(10):
        spool.put(rec(i))
    assert spool.take(4) == [rec(i) for i in range(4)]  # in flight from memory
    spool.set_away(True)
    for i in range(10, 20):
        spool.put(rec(i))
    spool.flush()
    assert spool.memory_len == 0
    # Everything not acknowledged (0..19) is on disk, in FIFO order.
    data = b"".join(p.read_bytes() for p in segments(tmp_path))
    on_disk = []
    pos = 0
    while pos < len(data):
        n, _ = FRAME.unpack_from(data, pos)
        on_disk.append(data[pos + 8 : pos + 8 + n])
        pos += 8 + n
    assert on_disk == [rec(i) for i in range(20)]
    # The four in flight are not handed out twice; the rest follow.
    assert spool.take(100) == [rec(i) for i in range(4, 20)]
    spool.set_away(False)
    spool.ack(20)
    assert segments(tmp_path) == [] and spool.pending == 0


def test_restart_replays_spooled_records_first_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, memory_records=8, segment_bytes=250)
    for i in range(30):
        spool.put(rec(i))
    got = spool.take(5)
    spool.ack(2)
    assert got[:2] == [rec(0), rec(1)]
    spool.close()  # 2..29 are unacknowledged: all must survive
    again = Spool(tmp_path, max_bytes=1 << 20, memory_records=8, segment_bytes=250)
    replayed = again.stats.recovered
    for i in range(30, 35):
        again.put(rec(i))
    out = drain(again)
    assert replayed >= 28
    # A partly acknowledged segment replays whole: duplicates of 0..1 allowed, no gaps.
    start = out.index(rec(2))
    assert out[start:] == [rec(i) for i in range(2, 35)]
    assert out[:start] == [rec(i) for i in range(2 - start, 2)]
    assert segments(tmp_path) == []


def test_crash_without_close_keeps_flushed_disk_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, memory_records=4)
    spool.set_away(True)
    for i in range(25):
        spool.put(rec(i))
    spool.flush()
    spool._lock.close()  # what the kernel does when the process dies
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.stats.recovered == 25 and again.stats.torn == 0
    assert drain(again) == [rec(i) for i in range(25)]


@pytest.mark.parametrize("damage", ["partial_header", "partial_body", "bad_crc"])
def test_torn_tail_is_counted_cut_and_never_delivered(tmp_path: Path, damage: str) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.set_away(True)
    for i in range(10):
        spool.put(rec(i))
    spool.close()
    [path] = segments(tmp_path)
    good_size = path.stat().st_size
    last = rec(10)
    frame = FRAME.pack(len(last), 0) + last
    with open(path, "ab") as f:
        if damage == "partial_header":
            f.write(frame[:5])
        elif damage == "partial_body":
            f.write(FRAME.pack(len(last), 0)[:4] + (0).to_bytes(4, "big") + last[:7])
        else:
            f.write(frame)  # complete, but the CRC (0) does not match
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.stats.torn == 1
    assert again.stats.recovered == 10
    assert path.stat().st_size == good_size  # cut off, so appends continue cleanly
    again.put(rec(11))
    assert drain(again) == [rec(i) for i in range(10)] + [rec(11)]


def test_corrupt_frame_in_the_middle_drops_the_rest_of_that_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.set_away(True)
    for i in range(10):
        spool.put(rec(i))
    spool.close()
    [path] = segments(tmp_path)
    data = bytearray(path.read_bytes())
    frame_len = FRAME.size + len(rec(0))
    data[frame_len * 4 + FRAME.size + 2] ^= 0xFF  # flip a byte inside record 4
    path.write_bytes(bytes(data))
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.stats.torn == 1 and again.stats.recovered == 4
    assert drain(again) == [rec(i) for i in range(4)]


def test_full_spool_drops_the_newest_counts_and_logs_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame_len = FRAME.size + len(rec(0))
    spool = Spool(tmp_path, max_bytes=frame_len * 20, memory_records=5, log_interval_s=3600)
    spool.set_away(True)
    with caplog.at_level(logging.ERROR, logger="mmengine.spool"):
        kept = [spool.put(rec(i)) for i in range(1000)]
    assert kept == [True] * 20 + [False] * 980  # the oldest kept, the newest dropped
    assert spool.stats.dropped == 980
    assert spool.stats.spool_bytes == frame_len * 20
    assert spool.memory_len == 0
    full = [r for r in caplog.records if "SPOOL FULL" in r.getMessage()]
    assert len(full) == 1  # loud but rate-limited
    spool.set_away(False)
    assert drain(spool) == [rec(i) for i in range(20)]
    # Room again: new records are accepted.
    assert spool.put(rec(2000)) and drain(spool) == [rec(2000)]


def test_memory_is_bounded_when_disk_is_full_and_sink_is_up(tmp_path: Path) -> None:
    frame_len = FRAME.size + len(rec(0))
    spool = Spool(tmp_path, max_bytes=frame_len * 10, memory_records=5)
    for i in range(200):
        spool.put(rec(i))
    assert spool.memory_len <= 5
    assert spool.stats.spool_bytes <= frame_len * 10
    assert spool.stats.dropped > 150
    out = drain(spool)
    assert out == sorted(out)  # whatever was kept comes out in order


def test_a_second_writer_cannot_share_the_spool_dir(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolBusy):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.close()
    Spool(tmp_path, max_bytes=1 << 20).close()


def test_unexpected_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "seg-notanumber.spool").write_bytes(b"x")
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.stats.recovered == 0
    assert os.path.exists(tmp_path / "seg-notanumber.spool")


def test_random_operations_match_a_reference_fifo(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any mix of put/take/ack/rewind/away/restart hands records out in FIFO order, resends
    exactly the unacknowledged ones, and loses nothing (a restart may only repeat some
    acknowledged records just before the first unacknowledged one)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    ops = st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(1, 40)),
            st.tuples(st.just("take"), st.integers(1, 30)),
            st.tuples(st.just("ack"), st.integers(0, 30)),
            st.tuples(st.just("rewind"), st.just(0)),
            st.tuples(st.just("away"), st.integers(0, 1)),
            st.tuples(st.just("restart"), st.just(0)),
        ),
        max_size=40,
    )

    @settings(max_examples=150, deadline=None)
    @given(ops)
    def run(program: list[tuple[str, int]]) -> None:
        path = tmp_path_factory.mktemp("spool")
        mk = lambda: Spool(path, max_bytes=1 << 24, memory_records=6, segment_bytes=180)  # noqa: E731
        spool = mk()
        pending: list[bytes] = []  # unacknowledged, in order
        acked: list[bytes] = []
        inflight = 0
        counter = 0
        for op, arg in program:
            if op == "put":
                for _ in range(arg):
                    assert spool.put(rec(counter))
                    pending.append(rec(counter))
                    counter += 1
            elif op == "take":
                got = spool.take(arg)
                assert got == pending[inflight : inflight + arg]
                inflight += len(got)
            elif op == "ack":
                n = min(arg, inflight)
                spool.ack(n)
                acked.extend(pending[:n])
                del pending[:n]
                inflight -= n
            elif op == "rewind":
                spool.rewind()
                inflight = 0
            elif op == "away":
                spool.set_away(bool(arg))
            else:
                spool.close()
                spool = mk()
                out = drain(spool)
                dup = len(out) - len(pending)
                assert dup >= 0 and out[dup:] == pending
                assert dup == 0 or out[:dup] == acked[-dup:]
                acked.extend(pending)
                pending, inflight = [], 0
        spool.rewind()
        spool.ack(0)
        assert drain(spool) == pending
        spool.close()
        assert segments(path) == []

    run()
