"""The spool after an OS crash or a bad record (issue 16): a zero-filled tail is damage, not
empty records; what cannot be delivered is quarantined and counted; the fsync policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmengine.sinks import spool as spool_module
from mmengine.sinks.spool import (
    FRAME,
    QUARANTINE_DIR,
    Spool,
    pack_frames,
    read_quarantine,
    unpack_frames,
)


def rec(i: int) -> bytes:
    return f"record-{i:06d}".encode() * 3


def drain(spool: Spool) -> list[bytes]:
    out = []
    while got := spool.take(7):
        out.extend(got)
        spool.ack(len(got))
    return out


def spooled(directory: Path, n: int) -> Path:
    spool = Spool(directory, max_bytes=1 << 20)
    spool.set_away(True)
    for i in range(n):
        spool.put(rec(i))
    spool.close()
    [path] = sorted(directory.glob("seg-*.spool"))
    return path


def test_a_zero_filled_tail_is_cut_not_read_as_empty_records(tmp_path: Path) -> None:
    # After an OS crash a file can end in blocks that were allocated but never written:
    # zeros. crc32(b"") == 0, so each 8 zero bytes looked like a valid empty record.
    path = spooled(tmp_path, 10)
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.stats.recovered == 10 and again.stats.torn == 1
    assert path.stat().st_size == good
    assert drain(again) == [rec(i) for i in range(10)]
    assert not (tmp_path / QUARANTINE_DIR).exists()  # zeros are not worth keeping
    again.close()


def test_an_empty_record_is_refused() -> None:
    spool = Spool.__new__(Spool)  # the check comes before any state is touched
    with pytest.raises(ValueError, match="never empty"):
        spool.put(b"")


def test_a_damaged_tail_is_copied_to_quarantine_before_it_is_cut(tmp_path: Path) -> None:
    path = spooled(tmp_path, 3)
    junk = FRAME.pack(len(rec(9)), 12345) + rec(9)  # complete frame, wrong CRC
    with open(path, "ab") as f:
        f.write(junk)
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.stats.torn == 1 and again.stats.quarantined == 1
    assert drain(again) == [rec(i) for i in range(3)]
    again.close()
    [(why, data)] = read_quarantine(tmp_path)
    assert why.startswith(path.name) and data == junk


def test_a_record_the_writer_cannot_use_is_quarantined_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.quarantine(b"\x01\x02 not a price", "does not split into frames")
    assert spool.stats.quarantined == 1 and spool.counters()["quarantined"] == 1
    spool.close()
    assert read_quarantine(tmp_path) == [("does not split into frames", b"\x01\x02 not a price")]


def test_unpack_frames_refuses_a_record_that_is_not_a_join_of_frames() -> None:
    good = pack_frames([b"BTC-USDT", b"k" * 24, b"payload"])
    for bad in (good[:-1], good[:3], b"\xff\xff\xff\xff rest"):
        with pytest.raises(ValueError):
            unpack_frames(bad)


class FsyncSpy:
    """Records what os.fsync was called on (the real fsync still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = os.fsync

        def spy(fd: int) -> None:
            self.paths.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        monkeypatch.setattr(spool_module.os, "fsync", spy)


def test_fsync_policy_interval_syncs_segment_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = FsyncSpy(monkeypatch)
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync_interval_s=3600.0)
    spool.set_away(True)
    spool.put(rec(0))
    spool.flush()  # the first flush after writes syncs: the interval counts from the last
    [segment] = sorted(tmp_path.glob("seg-*.spool"))
    assert sorted(spy.paths) == sorted([str(segment), str(tmp_path)])
    spool.put(rec(1))
    spool.flush()  # within the interval: nothing
    assert len(spy.paths) == 2
    spool.close()  # shut-down syncs what the interval held back
    assert spy.paths[2:] == [str(segment)]
    assert spool.stats.fsyncs == 3 and spool.stats.fsync_ns > 0


def test_fsync_policy_none_never_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = FsyncSpy(monkeypatch)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.set_away(True)
    for i in range(5):
        spool.put(rec(i))
        spool.flush()
    spool.close()
    assert spy.paths == [] and spool.stats.fsyncs == 0
