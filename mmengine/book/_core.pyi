"""Signatures of the compiled book core's functions added for the per-frame path
(`_core.pyx`); the rest of the module is typed `Any` until it has its own stubs."""

from typing import Any

from mmengine.book.events import BookUpdate

class LevelDecoder:
    def rows_update(
        self,
        instrument: str,
        snapshot: bool,
        bids: object,
        asks: object,
        last_id: object,
        cross_seq: object,
        ts_ms: object,
    ) -> BookUpdate | None: ...
    def kraken_update(
        self, instrument: str, asks: object, bids: object, checksum: object
    ) -> BookUpdate | None: ...
    def kraken_snapshot(self, instrument: str, asks: object, bids: object) -> BookUpdate | None: ...
    def kraken_numbers_update(
        self,
        instrument: str,
        snapshot: bool,
        bids: object,
        asks: object,
        formats: tuple[int, int],
        checksum: object,
        timestamp: object,
    ) -> BookUpdate | None: ...
    def __getattr__(self, name: str) -> Any: ...

class FramePath:
    def __init__(
        self,
        driver: Any,
        contiguous: type,
        integrity_error: type[Exception],
        parse_errors: tuple[type[Exception], ...],
    ) -> None: ...
    def limits(self, max_frame_bytes: int, top_levels: int) -> None: ...
    def receive(self, frame: str, recv_ns: int) -> None: ...
    def on_book(self, ev: BookUpdate, recv_ns: int) -> None: ...

def __getattr__(name: str) -> Any: ...
