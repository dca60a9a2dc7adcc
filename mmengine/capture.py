"""Format-2 capture files (cryptofeed v3 JSON lines, optionally gzip'd): read and write.

Line 1 is `{"t":"header", "exchange":..., "config":...}`; then one event per line:
`http` (a REST response), `connect` (a WebSocket opened), `send` (a frame we sent), `recv`
(a frame received). `conn` tells connections apart; `ts` is local time in Unix seconds.
Used by replay, record and the simulators (no thread of its own).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import orjson


@dataclass(frozen=True, slots=True)
class CaptureEvent:
    kind: str  # http | connect | send | recv
    conn: str
    ts: float
    data: str  # frame text or response body ("" for connect)
    url: str  # connect address or http url ("" otherwise)


def _open(path: Path, mode: str) -> IO[Any]:
    if path.suffix == ".gz":
        # Text mode: a TextIOWrapper (typeshed tells it only from a literal mode).
        return cast(IO[Any], gzip.open(path, mode + "t", encoding="utf-8"))
    return open(path, mode, encoding="utf-8")


def read_capture(path: str | Path) -> tuple[dict[str, Any], list[CaptureEvent]]:
    """The header and every event, in file order."""
    path = Path(path)
    with _open(path, "r") as fh:
        lines = iter(fh)
        try:
            header = orjson.loads(next(lines))
        except StopIteration:
            raise ValueError(f"{path}: empty capture") from None
        if not isinstance(header, dict) or header.get("t") != "header":
            raise ValueError(f"{path}: line 1 is not a format-2 header")
        events = []
        for n, line in enumerate(lines, start=2):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                events.append(
                    CaptureEvent(
                        obj["t"],
                        str(obj.get("conn", "")),
                        float(obj.get("ts", 0.0)),
                        obj.get("data", ""),
                        obj.get("url") or obj.get("addr") or "",
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a capture event: {exc}") from None
    return header, events


def iter_recv(events: list[CaptureEvent]) -> Iterator[CaptureEvent]:
    return (e for e in events if e.kind == "recv")


class CaptureWriter:
    """Appends format-2 events; safe to call from several venue threads (one lock)."""

    def __init__(self, path: str | Path, exchange: str, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self._fh = _open(self.path, "w")
        self._lock = threading.Lock()
        self._write(
            {
                "t": "header",
                "format": 2,
                "exchange": exchange,
                "config": config,
                "recorded": time.time(),
            }
        )

    def _write(self, obj: dict[str, Any]) -> None:
        line = orjson.dumps(obj).decode() + "\n"
        with self._lock:
            self._fh.write(line)

    def connect(self, conn: str, url: str) -> None:
        self._write({"t": "connect", "conn": conn, "ts": time.time(), "addr": url})

    def sent(self, conn: str, text: str) -> None:
        self._write({"t": "send", "conn": conn, "ts": time.time(), "data": text})

    def received(self, conn: str, text: str, recv_ns: int) -> None:
        self._write({"t": "recv", "conn": conn, "ts": recv_ns / 1e9, "data": text})

    def http(self, conn: str, url: str, body: str) -> None:
        self._write({"t": "http", "conn": conn, "ts": time.time(), "url": url, "data": body})

    def close(self) -> None:
        with self._lock:
            self._fh.close()
