"""The durable spool a writer thread keeps between accepting a record and its sink
acknowledging it (owned and called by exactly one writer thread; no locks).

Sink-agnostic: records are opaque bytes (a sink message arrives as one record:
`mmengine.bus.sink_message`). The Kafka writer uses it; the Postgres writer reuses it.

The pending records form one FIFO, oldest first::

    taken (handed to the sink, not yet acknowledged; re-handed after `rewind`)
      + disk (append-only segment files, not yet handed out)
      + memory (a bounded deque, not yet handed out)

- `put` appends to memory. When memory is full, or the sink is away (`set_away(True)`),
  memory is written to the end of the disk part first, so the order above always holds and,
  while the sink is away, everything accepted is on disk.
- `take(n)` hands out the next n records in that order; `ack(n)` removes the n oldest taken
  records once the sink has acknowledged them (at-least-once: nothing leaves the spool
  before that). `rewind()` makes every taken-but-unacknowledged record go out again, in
  order, for a sink that lost its connection or had to be rebuilt.
- Segment files frame each record as `>II` (length, CRC32 of the record) + record bytes. A
  record is never empty, so a length of 0 is damage: this is what rejects a zero-filled tail
  (blocks a file system allocated but never wrote before an OS crash), which would otherwise
  read as valid empty records because `crc32(b"") == 0`. On start-up every segment in the
  directory is scanned: a frame that is short, empty or fails its CRC (a torn tail after a
  crash) is counted in `torn`, logged, copied to `quarantine/` (unless it is all zeros) and
  cut off the file; the valid records before it are delivered first, in order. A segment
  whose records are all acknowledged is deleted.
- A record that passes its CRC but is not what the writer expects (`quarantine()`, called by
  the writer thread) is appended to `quarantine/` and counted, never delivered, and never
  blocks the queue behind it.
- The disk part is bounded by `max_bytes`. A record that must go to disk when it is full is
  the newest one and is dropped: counted, logged at ERROR at most once per interval. Pricing
  never waits and memory stays flat.

Durability: records are handed to the OS (`flush`) once per writer loop, which survives the
engine being killed. With `fsync_interval_s` set, `flush` also fsyncs the segment being
written (and the directory, after a segment file was created) at most that often, so a
power cut loses at most that interval of what was on its way to disk; with None, nothing
is fsynced and a power cut loses whatever the OS had not written back (often ~30 s). A
record that is only in memory (the sink was up and keeping pace) is lost if the process
dies; on restart a segment that was partly acknowledged is replayed whole, so consumers see
duplicates, never gaps: they dedupe on the record's idempotency key. docs/operations.md
lists what each fault can lose.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mmengine.bus import pack_frames, unpack_frames
from mmengine.errors import MmengineError
from mmengine.logs import RepeatLimiter

log = logging.getLogger("mmengine.spool")

FRAME = struct.Struct(">II")  # record length, CRC32 of the record
SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".spool"
MAX_RECORD = 64 * 1024 * 1024  # a longer length field can only be a torn or corrupt frame
QUARANTINE_DIR = "quarantine"


class SpoolBusy(MmengineError):
    """Another writer holds this spool directory."""


def read_quarantine(directory: str | os.PathLike[str]) -> list[tuple[str, bytes]]:
    """(why, data) of everything a spool in `directory` set aside, oldest first: for an
    operator looking into `<spool_dir>/<sink>/quarantine/` (and for tests)."""
    out = []
    for path in sorted((Path(directory) / QUARANTINE_DIR).glob(f"*{SEGMENT_SUFFIX}")):
        data = path.read_bytes()
        pos = 0
        while pos + FRAME.size <= len(data):
            length, _crc = FRAME.unpack_from(data, pos)
            why, body = unpack_frames(data[pos + FRAME.size : pos + FRAME.size + length])
            out.append((why.decode(errors="replace"), body))
            pos += FRAME.size + length
    return out


@dataclass(slots=True)
class SpoolStats:
    """Counters of one spool; read by other threads for metrics (plain ints, no lock)."""

    accepted: int = 0  # records put and kept
    spooled: int = 0  # records written to a segment file
    spool_bytes: int = 0  # bytes in segment files now
    peak_bytes: int = 0  # the most spool_bytes has been
    dropped: int = 0  # newest records refused because the disk part was full
    torn: int = 0  # damaged frames found at start-up (cut off, never delivered)
    torn_bytes: int = 0  # bytes cut off with them
    recovered: int = 0  # records found in segment files at start-up
    acknowledged: int = 0  # records the sink acknowledged (removed from the spool)
    segments_deleted: int = 0
    quarantined: int = 0  # records (or damaged tails) set aside in quarantine/, not delivered
    quarantine_dropped: int = 0  # ... that did not fit in it (counted, not kept)
    fsyncs: int = 0  # fsync calls (segments and directory)
    fsync_ns: int = 0  # time spent in them


class _Segment:
    """One append-only segment file and how far it has been read and acknowledged."""

    __slots__ = ("acked", "number", "path", "read", "records", "size")

    def __init__(self, number: int, path: Path, size: int = 0, records: int = 0) -> None:
        self.number = number
        self.path = path
        self.size = size  # bytes written
        self.records = records  # records written
        self.read = 0  # records handed out from it
        self.acked = 0  # records acknowledged from it


class _Entry:
    """A taken record: its bytes (kept for a resend) and the segment holding it, if any."""

    __slots__ = ("data", "seg")

    def __init__(self, data: bytes, seg: _Segment | None) -> None:
        self.data = data
        self.seg = seg


class Spool:
    """A bounded memory queue spilling to append-only segment files; see the module doc."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int,
        memory_records: int = 10_000,
        segment_bytes: int = 8 * 1024 * 1024,
        name: str = "spool",
        log_interval_s: float = 10.0,
        fsync_interval_s: float | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.fsync_interval_s = fsync_interval_s
        self._unsynced = False  # bytes written since the last fsync
        self._dir_unsynced = False  # a segment file was created since the last fsync
        self._last_fsync = float("-inf")
        self._quarantine: IO[bytes] | None = None
        self._quarantine_bytes = 0
        self.max_bytes = max_bytes
        self.memory_records = memory_records
        self.segment_bytes = segment_bytes
        self.name = name
        self.stats = SpoolStats()
        self._memory: deque[bytes] = deque()
        self._taken: deque[_Entry] = deque()
        self._resend = 0  # index in _taken of the next record to hand out again
        self._segments: deque[_Segment] = deque()
        self._disk_pending = 0  # records on disk not yet handed out
        self._bytes = 0
        self._away = False
        self._active: _Segment | None = None  # the segment being appended to
        self._writer: IO[bytes] | None = None
        self._rseg: _Segment | None = None  # the segment being read
        self._reader: IO[bytes] | None = None
        self._next_number = 0
        self._drop_log = RepeatLimiter(log_interval_s)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = self._claim()
        self._recover()

    # --- start-up ----------------------------------------------------------------------

    def _claim(self) -> IO[str]:
        # Two writers appending to one directory would interleave and delete each other's
        # segments; refuse the second.
        lock = open(self.directory / "spool.lock", "a+")  # noqa: SIM115 (held while open)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SpoolBusy(
                f"spool dir {self.directory} is in use by another writer (another engine? "
                "give each engine its own limits.spool_dir)"
            ) from None
        return lock

    def _recover(self) -> None:
        paths = sorted(self.directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))
        for path in paths:
            try:
                number = int(path.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)])
            except ValueError:
                log.warning("%s: ignoring unexpected file %s", self.name, path)
                continue
            self._next_number = max(self._next_number, number + 1)
            records, good = self._scan(path)
            if records == 0:
                path.unlink()
                continue
            seg = _Segment(number, path, good, records)
            self._segments.append(seg)
            self._disk_pending += records
            self._bytes += good
            self.stats.recovered += records
        self._set_bytes()
        if self.stats.recovered or self.stats.torn:
            log.warning(
                "%s: recovered %d records (%d bytes) in %d segments from %s; "
                "%d torn frames (%d bytes) cut off",
                self.name,
                self.stats.recovered,
                self._bytes,
                len(self._segments),
                self.directory,
                self.stats.torn,
                self.stats.torn_bytes,
            )

    def _scan(self, path: Path) -> tuple[int, int]:
        """Count the valid records of a segment; cut off a damaged tail. -> (records, bytes)."""
        data = path.read_bytes()
        pos = 0
        records = 0
        end = len(data)
        while pos < end:
            if end - pos < FRAME.size:
                break
            length, crc = FRAME.unpack_from(data, pos)
            start = pos + FRAME.size
            if length == 0 or length > MAX_RECORD or start + length > end:
                break
            if zlib.crc32(data[start : start + length]) != crc:
                break
            pos = start + length
            records += 1
        if pos < end:
            # A crash mid-append leaves a partial frame; anything after a bad frame cannot be
            # trusted either (its length field may be garbage). Never deliver it.
            self.stats.torn += 1
            self.stats.torn_bytes += end - pos
            tail = data[pos:]
            zeros = not tail.strip(b"\0")
            if not zeros:
                self._set_aside(f"{path.name}@{pos}", tail)
            log.error(
                "%s: %s has a torn or corrupt frame at byte %d; cutting its last %d bytes "
                "(%s; %d valid records kept)",
                self.name,
                path.name,
                pos,
                end - pos,
                "all zeros: a tail the OS allocated but never wrote"
                if zeros
                else f"copied to {QUARANTINE_DIR}/",
                records,
            )
            os.truncate(path, pos)
        return records, pos

    # --- producer side -----------------------------------------------------------------

    def put(self, record: bytes) -> bool:
        """Accept a record; False if it was dropped because the spool is full."""
        if not record:
            raise ValueError("a spool record is never empty (an empty frame marks damage)")
        if not self._away and len(self._memory) < self.memory_records:
            self._memory.append(record)
            self.stats.accepted += 1
            return True
        # Memory is full or the sink is away: the record goes to disk, after what memory
        # holds (written first, to keep the order).
        if self._memory:
            self._spill()
        if self._memory or not self._fits(FRAME.size + len(record)):
            self._drop()
            return False
        self._append(record)
        self.stats.accepted += 1
        return True

    def set_away(self, away: bool) -> None:
        """The sink is away (True): keep everything on disk until it is back (False)."""
        if away and not self._away:
            self._spill()
        self._away = away

    @property
    def away(self) -> bool:
        return self._away

    def flush(self, force_sync: bool = False) -> None:
        """Hand buffered segment writes to the OS (survives a kill of the process); with an
        fsync policy, also fsync them once `fsync_interval_s` has passed (survives power
        loss). `force_sync`: fsync now if the policy is on (shut-down)."""
        if self._writer is not None:
            self._writer.flush()
        interval = self.fsync_interval_s
        if interval is None or not (self._unsynced or self._dir_unsynced):
            return
        now = time.monotonic()
        if not force_sync and now - self._last_fsync < interval:
            return
        self._last_fsync = now
        t0 = time.perf_counter_ns()
        if self._unsynced and self._writer is not None:
            os.fsync(self._writer.fileno())
            self.stats.fsyncs += 1
        if self._dir_unsynced:
            self._fsync_dir()
        self._unsynced = self._dir_unsynced = False
        self.stats.fsync_ns += time.perf_counter_ns() - t0

    def _fsync_dir(self) -> None:
        """Make the directory's entries (a new segment file) durable."""
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stats.fsyncs += 1

    def quarantine(self, record: bytes, reason: str) -> None:
        """Set aside a record the writer cannot deliver (it passed its CRC but does not
        decode): appended to quarantine/ for an operator, counted, logged. The caller still
        acknowledges it, so it never blocks the records behind it."""
        self._set_aside(reason, record)
        log.error(
            "%s: quarantined a record that cannot be delivered (%s); %d so far, in %s",
            self.name,
            reason,
            self.stats.quarantined,
            self.directory / QUARANTINE_DIR,
        )

    def _set_aside(self, what: str, data: bytes) -> None:
        """Append `data` to this run's quarantine file, within max_bytes: spool framing, each
        record `pack_frames((why, data))`."""
        if self._quarantine_bytes + FRAME.size + len(data) > self.max_bytes:
            self.stats.quarantine_dropped += 1
            return
        if self._quarantine is None:
            where = self.directory / QUARANTINE_DIR
            where.mkdir(mode=0o700, exist_ok=True)
            path = where / f"q-{time.time_ns()}{SEGMENT_SUFFIX}"
            self._quarantine = open(path, "ab")  # noqa: SIM115 (closed in close())
        body = pack_frames((what.encode()[:200], data))
        self._quarantine.write(FRAME.pack(len(body), zlib.crc32(body)) + body)
        self._quarantine.flush()
        self._quarantine_bytes += FRAME.size + len(body)
        self.stats.quarantined += 1

    def _fits(self, nbytes: int) -> bool:
        return self._bytes + nbytes <= self.max_bytes

    def _drop(self) -> None:
        self.stats.dropped += 1
        held = self._drop_log.allow("full")
        if held is not None:
            log.error(
                "%s: SPOOL FULL (%d bytes, limit %d): dropping the newest records; "
                "%d dropped so far (%d since the last report). Is the sink down?",
                self.name,
                self._bytes,
                self.max_bytes,
                self.stats.dropped,
                held + 1,
            )

    def _spill(self) -> None:
        """Write memory to the end of the disk part, if it all fits.

        Records already taken but held only in memory (the sink has them in flight) are
        written first when nothing untaken is on disk, so that while the sink is away every
        unacknowledged record is durable and the file order is the FIFO order.
        """
        trailing: list[_Entry] = []
        if self._disk_pending == 0:
            for entry in reversed(self._taken):
                if entry.seg is not None:
                    break
                trailing.append(entry)
            trailing.reverse()
        need = sum(FRAME.size + len(e.data) for e in trailing)
        if trailing and self._fits(need):
            if self._reader is not None:
                # The reader's file position is before these; reopening skips `read` records.
                self._reader.close()
                self._reader = None
            for entry in trailing:
                entry.seg = self._write(entry.data)
                # Already handed out: the reader must not hand it out again.
                entry.seg.read += 1
        else:
            need = 0
        if not self._memory:
            return
        if not self._fits(need + sum(FRAME.size + len(r) for r in self._memory)):
            return  # put() drops the newest record instead; memory keeps its order
        memory = self._memory
        while memory:
            self._append(memory.popleft())

    def _append(self, record: bytes) -> None:
        self._write(record)
        self._disk_pending += 1

    def _write(self, record: bytes) -> _Segment:
        seg = self._active
        if seg is None or self._writer is None:
            number = self._next_number
            self._next_number += 1
            path = self.directory / f"{SEGMENT_PREFIX}{number:012d}{SEGMENT_SUFFIX}"
            seg = _Segment(number, path)
            self._writer = open(path, "ab", buffering=1024 * 1024)  # noqa: SIM115
            self._active = seg
            self._segments.append(seg)
            self._dir_unsynced = True
        n = FRAME.size + len(record)
        self._writer.write(FRAME.pack(len(record), zlib.crc32(record)))
        self._writer.write(record)
        seg.size += n
        seg.records += 1
        self._bytes += n
        self._unsynced = True
        self.stats.spooled += 1
        self._set_bytes()
        if seg.size >= self.segment_bytes:
            self._close_writer()
        return seg

    def _close_writer(self) -> None:
        if self._writer is not None:
            if self.fsync_interval_s is not None and self._unsynced:
                # Its last writes would escape the interval once the file is closed.
                self._writer.flush()
                t0 = time.perf_counter_ns()
                os.fsync(self._writer.fileno())
                self.stats.fsyncs += 1
                self.stats.fsync_ns += time.perf_counter_ns() - t0
                self._unsynced = False
            self._writer.close()
        self._writer = None
        self._active = None

    def _set_bytes(self) -> None:
        self.stats.spool_bytes = self._bytes
        self.stats.peak_bytes = max(self.stats.peak_bytes, self._bytes)

    # --- sink side -----------------------------------------------------------------------

    def take(self, n: int) -> list[bytes]:
        """The next (at most) n records in FIFO order; they stay until `ack`."""
        out: list[bytes] = []
        taken = self._taken
        while self._resend < len(taken) and len(out) < n:
            out.append(taken[self._resend].data)
            self._resend += 1
        while len(out) < n and self._disk_pending:
            entry = self._read_disk()
            if entry is None:
                continue
            taken.append(entry)
            self._resend += 1
            out.append(entry.data)
        memory = self._memory
        while len(out) < n and memory:
            data = memory.popleft()
            taken.append(_Entry(data, None))
            self._resend += 1
            out.append(data)
        return out

    def ack(self, n: int) -> None:
        """The n oldest taken records were acknowledged by the sink: forget them."""
        taken = self._taken
        for _ in range(n):
            seg = taken.popleft().seg
            if seg is not None:
                seg.acked += 1
        self._resend = max(0, self._resend - n)
        self.stats.acknowledged += n
        # Acks come in FIFO order, so fully acknowledged segments are always the oldest.
        segments = self._segments
        while segments and segments[0].acked >= segments[0].records:
            self._delete(segments.popleft())

    def untake(self, n: int) -> None:
        """Give back the last n records `take` handed out (the sink could not take them);
        they come out again, first, on the next `take`."""
        self._resend -= n
        assert self._resend >= 0

    def rewind(self) -> int:
        """Hand every taken, unacknowledged record out again; returns how many."""
        n = self._resend
        self._resend = 0
        return n

    @property
    def in_flight(self) -> int:
        """Records handed out and not yet acknowledged (nor rewound)."""
        return self._resend

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (taken, on disk or in memory)."""
        return len(self._taken) + self._disk_pending + len(self._memory)

    @property
    def memory_len(self) -> int:
        return len(self._memory)

    def _read_disk(self) -> _Entry | None:
        seg = self._rseg
        if seg is None or seg.read >= seg.records:
            seg = self._next_read_segment()
        if seg is self._active and self._writer is not None:
            self._writer.flush()  # the reader opens its own handle
        if self._reader is None:
            self._reader = open(seg.path, "rb")  # noqa: SIM115
            pos = 0
            # Skip what was handed out already (records written back after being taken).
            for _ in range(seg.read):
                header = self._reader.read(FRAME.size)
                pos += FRAME.size + FRAME.unpack(header)[0]
                self._reader.seek(pos)
        reader = self._reader
        header = reader.read(FRAME.size)
        if len(header) == FRAME.size:
            length, crc = FRAME.unpack(header)
            data = reader.read(length) if 0 < length <= MAX_RECORD else b""
            if data and len(data) == length and zlib.crc32(data) == crc:
                seg.read += 1
                self._disk_pending -= 1
                return _Entry(data, seg)
        # Damaged after start-up (the file was changed under us): drop the rest of it.
        lost = seg.records - seg.read
        log.error("%s: %s is damaged; %d records lost", self.name, seg.path.name, lost)
        self.stats.torn += 1
        self._disk_pending -= lost
        seg.records = seg.read  # the segment ends here now; deleted once these are acked
        return None

    def _next_read_segment(self) -> _Segment:
        current = self._rseg
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for seg in self._segments:
            if (current is None or seg.number > current.number) and seg.read < seg.records:
                self._rseg = seg
                return seg
        raise AssertionError(f"{self.name}: {self._disk_pending} records on disk not found")

    def _delete(self, seg: _Segment) -> None:
        if seg is self._active:
            self._close_writer()
        if seg is self._rseg:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._rseg = None
        seg.path.unlink(missing_ok=True)
        self._bytes -= seg.size
        self._set_bytes()
        self.stats.segments_deleted += 1

    # --- shut-down -----------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The spool's counters as a writer reports them (summaries, status, metrics)."""
        s = self.stats
        return {
            "spooled": s.spooled,
            "spool_bytes": s.spool_bytes,
            "spool_peak_bytes": s.peak_bytes,
            "dropped": s.dropped,
            "torn": s.torn,
            "recovered": s.recovered,
            "quarantined": s.quarantined,
            "fsyncs": s.fsyncs,
            "fsync_ns": s.fsync_ns,
            "pending": self.pending,
        }

    def close(self) -> None:
        """Put every unacknowledged record on disk for the next start, and close files."""
        self.rewind()
        self._spill()
        lost = sum(1 for e in self._taken if e.seg is None) + len(self._memory)
        if lost:
            log.error(
                "%s: %d unacknowledged records did not fit on disk and are lost",
                self.name,
                lost,
            )
        self.flush(force_sync=True)
        self._close_writer()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._quarantine is not None:
            self._quarantine.close()
            self._quarantine = None
        self._lock.close()
