"""What a simulator announced, remembered for an independent checker (the simulator's threads,
always under the simulator's lock, `SimulatorHandle.lock`).

A simulator knows the truth an engine must reproduce: the book it announced after every step.
`TruthLog` keeps, for a bounded window, the top N levels of every *version* of every book (a
version is one announcement: a market step, or a fault's crossed or drifted book) and *marks*:
which venue id names which version, on which feed, and whether it reached the client intact.
It answers "what was the book at sequence s" (`book_at`) and, with a `path`, also writes
everything as JSON lines for a checker in another process to read (the chaos campaign's does;
a file survives every fault the campaign injects, a query endpoint would not be needed).

Marks, by the venue's integrity rule (`rule` in the header, declared by the protocol):

- `chain` (Binance `u`, OKX `seqId`, Bybit `u`): ids are the venue's, the same for every client
  of the simulator; a mark per update (`first`: the id it follows from, where the venue says),
  a `snapshot` mark per snapshot served (REST or WebSocket). A book at id s was verified if a
  snapshot at an id <= s was served and every update after it up to s was delivered intact.
- `connection` (Coinbase `sequence_num`): ids count per connection (`feed` = the client); the
  rule is connection-wide, so any update lost on the connection after a book's snapshot makes
  every later id of that connection unverifiable.
- `checksum` (Kraken, which has no ids): the id is the CRC32 of the top 10 levels the message
  announced (its honest value, also when a fault corrupts the one sent: `clean` is then 0).

A mark made while the server throws a step's frames away (the `gap` fault) is `delivered: 0`,
unless the protocol put that frame straight into a client's outbox (`queued=True`: a snapshot
served on a step that a gap then hides is still sent).

Journal lines (compact keys): `{"k":"head",...}`, `{"k":"book","i":instrument,"v":version,
"t":ns,"b":[[price,size],...],"a":[...]}`, `{"k":"mark","i":..,"v":..,"id":..,"f":feed,
"s":snapshot,"ok":clean,"d":delivered,"t":ns,"p":first}`, `{"k":"fault","kind":..,"i":..,
"t":ns,"until":ns}`. Prices and sizes are the venue's decimal strings.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from mmengine.dev.simulator.market import ASK, BID

RULES = ("chain", "connection", "checksum")
Levels = list[tuple[str, str]]


class BookSource(Protocol):
    """What the log reads a book from: a `Market` (or a view of one)."""

    def levels(self, side: Any, limit: int | None = None) -> list[tuple[Any, Any]]: ...


@dataclass(frozen=True, slots=True)
class Mark:
    """One venue id naming one version of a book."""

    instrument: str
    version: int
    id: int
    feed: str
    snapshot: bool
    clean: bool
    delivered: bool
    t_ns: int
    first: int | None


@dataclass(frozen=True, slots=True)
class BookVersion:
    """The top levels of one version of a book, best first, as decimal strings."""

    instrument: str
    version: int
    t_ns: int
    bids: Levels
    asks: Levels


class TruthLog:
    """The truth of one simulator: book versions and the marks naming them (see module doc).

    `window` bounds what stays in memory per instrument (versions, and marks); the journal
    at `path` keeps everything.
    """

    enabled = True

    def __init__(
        self,
        venue: str,
        rule: str,
        instruments: Sequence[str],
        levels: int = 5,
        window: int = 20_000,
        path: str | Path | None = None,
        seed: int | None = None,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown integrity rule {rule!r}; known: {', '.join(RULES)}")
        self.venue = venue
        self.rule = rule
        self.levels = levels
        self.versions: dict[str, int] = dict.fromkeys(instruments, -1)
        self._books: dict[str, deque[BookVersion]] = {i: deque(maxlen=window) for i in instruments}
        self._marks: dict[str, deque[Mark]] = {i: deque(maxlen=4 * window) for i in instruments}
        self._delivering = True
        self._file: IO[bytes] | None = None
        if path is not None:
            self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
            self._write(
                {
                    "k": "head",
                    "venue": venue,
                    "rule": rule,
                    "levels": levels,
                    "instruments": list(instruments),
                    "seed": seed,
                    "t": time.time_ns(),
                }
            )

    # --- what the server records ---------------------------------------------------------

    def announce(self, instrument: str, book: BookSource) -> int:
        """A new version of `instrument`'s book (already changed in `book`); returns it."""
        version = self.versions[instrument] + 1
        self.versions[instrument] = version
        entry = BookVersion(
            instrument,
            version,
            time.time_ns(),
            [(str(p), str(q)) for p, q in book.levels(BID, self.levels)],
            [(str(p), str(q)) for p, q in book.levels(ASK, self.levels)],
        )
        self._books[instrument].append(entry)
        if self._file is not None:
            self._write(
                {
                    "k": "book",
                    "i": instrument,
                    "v": version,
                    "t": entry.t_ns,
                    "b": entry.bids,
                    "a": entry.asks,
                }
            )
        return version

    @contextlib.contextmanager
    def undelivered(self) -> Iterator[None]:
        """Marks made inside are of frames the server throws away (a `gap`)."""
        self._delivering = False
        try:
            yield
        finally:
            self._delivering = True

    def fault(self, kind: str, instrument: str | None, until_ns: int | None = None) -> None:
        """A fault the server injected (the checker times recovery from it)."""
        if self._file is not None:
            self._write(
                {
                    "k": "fault",
                    "kind": kind,
                    "i": instrument,
                    "t": time.time_ns(),
                    "until": until_ns,
                }
            )

    # --- what a protocol records ---------------------------------------------------------

    def version(self, instrument: str) -> int:
        """The current version of `instrument`'s book."""
        return self.versions[instrument]

    def mark(
        self,
        instrument: str,
        seq: int,
        *,
        snapshot: bool = False,
        first: int | None = None,
        clean: bool = True,
        feed: object = "*",
        before: bool = False,
        version: int | None = None,
        queued: bool = False,
    ) -> None:
        """Venue id `seq` names the current version of `instrument` (the previous one with
        `before`: a snapshot of "the book as of the last step"; or `version`)."""
        if version is None:
            version = self.versions[instrument] - (1 if before else 0)
        entry = Mark(
            instrument,
            version,
            seq,
            str(feed),
            snapshot,
            clean,
            self._delivering or queued,
            time.time_ns(),
            first,
        )
        self._marks[instrument].append(entry)
        if self._file is not None:
            self._write(
                {
                    "k": "mark",
                    "i": instrument,
                    "v": version,
                    "id": seq,
                    "f": entry.feed,
                    "s": int(snapshot),
                    "ok": int(clean),
                    "d": int(entry.delivered),
                    "t": entry.t_ns,
                    "p": first,
                }
            )

    # --- queries ---------------------------------------------------------------------------

    def book_at(self, instrument: str, seq: int, recv_ns: int | None = None) -> BookVersion | None:
        """The book that venue id `seq` named, as remembered (None: unknown, or out of the
        window). Where ids repeat (a new connection counts from 0 again), the latest one sent
        before `recv_ns`, the time a client received it."""
        for entry in reversed(self._marks[instrument]):
            if entry.id == seq and (recv_ns is None or entry.t_ns <= recv_ns):
                return self.book(instrument, entry.version)
        return None

    def book(self, instrument: str, version: int) -> BookVersion | None:
        """One version of a book, if still in the window."""
        for entry in reversed(self._books[instrument]):
            if entry.version == version:
                return entry
            if entry.version < version:
                break
        return None

    def marks(self, instrument: str) -> list[Mark]:
        """The marks in the window, oldest first."""
        return list(self._marks[instrument])

    # --- the journal ---------------------------------------------------------------------

    def _write(self, record: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(orjson.dumps(record) + b"\n")

    def flush(self) -> None:
        """Hand the journal to the OS (a reader in another process sees it)."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class NoTruth(TruthLog):
    """The default: nothing is recorded (a simulator in a benchmark pays nothing for it)."""

    enabled = False

    def __init__(self) -> None:  # no state at all
        pass

    def announce(self, instrument: str, book: BookSource) -> int:
        return 0

    def fault(self, kind: str, instrument: str | None, until_ns: int | None = None) -> None:
        pass

    def version(self, instrument: str) -> int:
        return 0

    def mark(self, instrument: str, seq: int, **kwargs: Any) -> None:
        pass

    @contextlib.contextmanager
    def undelivered(self) -> Iterator[None]:
        yield

    def book_at(self, instrument: str, seq: int, recv_ns: int | None = None) -> BookVersion | None:
        return None

    def book(self, instrument: str, version: int) -> BookVersion | None:
        return None

    def marks(self, instrument: str) -> list[Mark]:
        return []

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


NO_TRUTH = NoTruth()
