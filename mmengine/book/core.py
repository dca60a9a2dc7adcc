"""Which book core keeps a connection's books: compiled (the default) or the pure-Python
reference (no thread of its own: resolved once when a venue connection is built).

- `compiled`: `mmengine.book._core`, Cython compiled to C++ from `mmengine/book/_core.pyx`
  by the package build (`make venv`, `pip install -e .`). Levels are C doubles in a
  `std::map` per side (a new best level moves nothing else), one C call per frame side
  decodes, validates and applies, and the checksums and the BookTop are built in C. The
  driver's per-frame path (`receive`, and `on_book` for a LIVE book) is one C call too
  (`FramePath`), handing every other case to the driver's Python methods.
- `python`: `book.py`, `levels.py` and `checksum.py`, the reference the compiled core is
  tested against (`tests/unit/test_book_cores.py`), for debugging.

The choice: `engine.book_core` in the config, else the environment variable `MMENGINE_BOOK`,
else `compiled`. A compiled core that was not built (or does not import) is an error at start,
never a silent fall back to the reference, which is several times slower: the engine exits
naming the problem and both ways out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

from mmengine.errors import ConfigError

ENV = "MMENGINE_BOOK"
COMPILED = "compiled"
PYTHON = "python"
CORES = (COMPILED, PYTHON)


class BookCoreMissing(ConfigError):
    """The compiled core was asked for and cannot be imported."""


@dataclass(frozen=True)
class BookCore:
    """What a core provides: the book class and the level decoders its books read."""

    name: str
    book: type[Any]  # `L2Book(venue, instrument, depth, keep_wire=False, checksum=None)`
    decoder: type[Any]  # `LevelDecoder()`: one per venue connection
    # `FramePath(driver, ...)`: the driver's `receive` / `on_book` in C; None: the driver's
    # own Python methods (the reference)
    frame_path: type[Any] | None = None
    # `FrameScanner(shape, venue, start, fallback, keep_wire)`: a venue's `parse` reading its
    # usual book frame from the text (`shape.FrameShape`); None: the venue's own parse
    scanner: type[Any] | None = None


def core_name(name: str | None = None) -> str:
    """The core to use: `name` if given, else `$MMENGINE_BOOK`, else compiled."""
    chosen = name or os.environ.get(ENV) or COMPILED
    if chosen not in CORES:
        source = "engine.book_core" if name else ENV
        raise ConfigError([f"{source}: unknown book core {chosen!r}; known: {', '.join(CORES)}"])
    return chosen


@cache
def _load(chosen: str) -> BookCore:
    if chosen == PYTHON:
        from mmengine.book.book import L2Book
        from mmengine.book.levels import LevelDecoder

        return BookCore(PYTHON, L2Book, LevelDecoder)
    try:
        from mmengine.book import _core
    except ImportError as exc:
        raise BookCoreMissing(
            [
                f"engine.book_core: the compiled book core does not import ({exc}). Build it "
                "with `make venv` (or `pip install -e .`, which compiles "
                "mmengine/book/_core.pyx), or run the pure-Python reference, several times "
                f"slower: `engine.book_core: python` or {ENV}=python."
            ]
        ) from exc
    return BookCore(COMPILED, _core.L2Book, _core.LevelDecoder, _core.FramePath, _core.FrameScanner)


def book_core(name: str | None = None) -> BookCore:
    """The book core of that name (see `core_name`); BookCoreMissing if it is not built."""
    return _load(core_name(name))
