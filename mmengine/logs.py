"""Logging shared by every thread: text or JSON lines, secrets masked, repeats rate-limited."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

SECRET_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    # postgresql://user:secret@host -> postgresql://user:***@host. The password is the
    # URL's userinfo: it ends at the first `@` and holds no `/`, `?` or `#` (RFC 3986), so
    # an `@` later in the path (Binance's `btcusdt@depth`) is not a credential.
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]+:)[^/?#@\s]+@", re.I), r"\1***@"),
    # password=secret, password='a b' (libpq quoting), api_key: secret, "secret": "x"
    (
        re.compile(
            r"\b(password|passwd|pwd|secret|api[_-]?key|token)(\"?\s*[=:]\s*)"
            r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s\"'&,]+)",
            re.I,
        ),
        lambda m: m.group(1) + m.group(2) + _masked(m.group(0)[m.end(2) - m.start() :]),
    ),
)


def _masked(value: str) -> str:
    """`***`, inside the value's own quotes if it had them."""
    return f"{value[0]}***{value[0]}" if value[:1] in ("'", '"') else "***"


# Fields a structured line may carry (set with `extra=` on the logging call).
FIELDS = ("venue", "instrument", "event", "state", "reason", "worker", "sink")


def redact(text: str) -> str:
    """Mask passwords and keys in a log line (DSNs, key=value pairs)."""
    for pattern, repl in SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFormatter(logging.Formatter):
    """The human-readable format, with secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, thread, logger, message, and any FIELDS."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "thread": record.threadName,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class LibraryFilter(logging.Filter):
    """Keeps other libraries' INFO and DEBUG lines (kafka-python logs ~25 per consumer
    start) out of the output unless the level is DEBUG; their warnings and errors pass."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if self.level <= logging.DEBUG or record.name.startswith("mmengine"):
            return True
        if record.name == "kafka.net.selector" and "ran for" in str(record.msg):
            # kafka-python's own event-loop timing diagnostic ("Task ... ran for 0.222s
            # (>0.100s threshold)"): a WARNING on any busy machine, and nothing a user can act on.
            return False
        return record.levelno >= logging.WARNING


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log lines on stderr: human-readable by default, or JSON with `fmt="json"`.

    `level` is one of debug, info, warning, error (any case); other libraries log below
    WARNING only at debug."""
    levelno = logging.getLevelName(level.upper())
    if not isinstance(levelno, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(LibraryFilter(levelno))
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = RedactingFormatter(
            "%(asctime)s %(levelname)-5s %(threadName)s %(name)s: %(message)s"
        )
    handler.setFormatter(formatter)
    logging.basicConfig(level=levelno, handlers=[handler], force=True)


class RepeatLimiter:
    """Lets one log line per key through every `interval_s`; counts what it held back.

    Owned by one thread (no locking). `allow(key)` returns None when the line must be
    suppressed, else the number of repeats suppressed since the last line for that key.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
