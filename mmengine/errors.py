"""The engine's exception tree, mapped once where library exceptions enter (no thread).

MmengineError
├── ConfigError        the config file is wrong: exit 2, naming the key path
├── FrameError         a frame we cannot use: counted, logged once per kind, skipped
│   └── VenueRejected  the venue answered with an error message
├── IntegrityError     a book failed the venue's rule (gap, checksum): resync that book
└── TransportError     the connection or a REST call failed: reconnect / retry later
"""

from __future__ import annotations


class MmengineError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(MmengineError):
    """The configuration is invalid; `problems` lists 'key.path: message' lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class FrameError(MmengineError):
    """A frame that cannot be used. `kind` is a short stable label used for counting;
    `lost` names the books whose update the frame carried (empty: none known)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail
        self.lost: tuple[str, ...] = ()


class VenueRejected(FrameError):
    """The venue sent an error frame (bad subscription, rate limit, unknown symbol)."""

    def __init__(self, detail: str) -> None:
        super().__init__("venue_error", detail)


class IntegrityError(MmengineError):
    """A book can no longer be trusted (sequence gap, checksum mismatch, audit mismatch)."""

    def __init__(self, instrument: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{instrument}: {reason} {detail}".rstrip())
        self.instrument = instrument
        self.reason = reason
        self.detail = detail


class TransportError(MmengineError):
    """The connection or a REST request failed."""
