"""The compiled book core against the pure-Python reference (issue 14).

- On every capture: both cores publish the same BookTops, write the same trace (state, best
  levels, whether the venue's checksum matched, per book message) and end with the same
  books, checksums and scorecard.
- On generated operation sequences (snapshots, sets, deletes, deletes of absent levels,
  truncation to depth, repeated prices) through each core's own decoders: the same levels,
  tops, checksums and crossed state after every step.
- The decoders accept and refuse the same level lists (poisoned values, wrong types, wrong
  shapes), with the same error; decimal strings become the same doubles as `float()`.
- The core is chosen by config or environment; a compiled core that does not import is an
  error that says so, never a silent fall back.
"""

from __future__ import annotations

import io
import math
import sys
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from mmengine.book import core as core_module
from mmengine.book.core import ENV, BookCoreMissing, book_core, core_name
from mmengine.book.levels import checksum_form
from mmengine.capture import read_capture
from mmengine.config import parse_config
from mmengine.errors import ConfigError, FrameError
from mmengine.model import BookState
from mmengine.replay import replay_events, scorecard
from tests.conformance.conftest import captures

PYTHON = book_core("python")
COMPILED = book_core("compiled")
CAPTURES = [c for found in captures().values() for c in found]


# --- every capture ------------------------------------------------------------------------


def _replay(capture: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    monkeypatch.setenv(ENV, name)
    header, events = read_capture(capture.path)
    trace = io.StringIO()
    result = replay_events(
        header, events, keep_tops=True, venue_name=capture.venue_name, trace=trace
    )
    assert result.venue.core.name == name
    return result, trace.getvalue()


@pytest.mark.parametrize(
    "capture", CAPTURES, ids=[f"{c.path.name}:{c.venue_name or ''}" for c in CAPTURES]
)
def test_both_cores_keep_the_same_books_on_every_capture(
    capture: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, ref_trace = _replay(capture, "python", monkeypatch)
    got, got_trace = _replay(capture, "compiled", monkeypatch)
    assert got_trace.splitlines() == ref_trace.splitlines()  # per message, in order
    assert got.session.tops == ref.session.tops  # every BookTop published
    assert len(got.session.tops) > 10
    card, ref_card = scorecard(got), scorecard(ref)
    for key in ("seconds", "us_per_book_frame", "book_core"):
        card.pop(key), ref_card.pop(key)
    assert card == ref_card
    for instrument, book in got.venue.books.items():
        want = ref.venue.books[instrument]
        assert book.state is want.state
        assert book.bids.levels(10**6) == want.bids.levels(10**6), instrument
        assert book.asks.levels(10**6) == want.asks.levels(10**6), instrument
        if want.checksum_kind is not None and want.state is BookState.LIVE:
            assert book.checksum() == want.checksum()


# --- generated operation sequences -----------------------------------------------------------

# A price grid with Kraken-like leading zeros and OKX-like plain strings; sizes repeat and
# delete ("0"), and deletes of prices never held are frequent.
TICKS = st.integers(min_value=1, max_value=60)
DECIMALS = st.sampled_from([1, 2, 5])
SIZES = st.sampled_from(["0", "0", "1", "2.5", "0.00012345", "12", "3.10000000", "0.0"])


@st.composite
def sides(draw: st.DrawFn, low: int) -> list[list[str]]:
    places = draw(DECIMALS)
    rows = []
    for tick in draw(st.lists(TICKS, max_size=12)):
        price = (low + tick) / 10**places
        rows.append([f"{price:.{places}f}", draw(SIZES), "1618678145.920470"])
    return rows


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["load", "apply", "apply", "apply"]), sides(100), sides(150)),
    min_size=1,
    max_size=25,
)
SHAPES = ["rows", "wire_rows", "kraken_rows", "kraken_numbers", "sided"]


def _decode(core: Any, decoder: Any, shape: str, rows: list[list[str]]) -> Any:
    if shape == "kraken_numbers":
        numbers = [{"price": float(p), "qty": float(q)} for p, q, _ in rows]
        return decoder.kraken_numbers(numbers, decoder.pair_formats(5, 8))
    if shape == "sided":
        entries = [{"side": "bid", "price_level": p, "new_quantity": q} for p, q, _ in rows]
        return decoder.sided(entries, "bid", "offer", "price_level", "new_quantity", "side")[0]
    return getattr(decoder, shape)(rows)


def _view(book: Any, n: int) -> tuple[Any, ...]:
    view = (
        book.bids.levels(10**6),
        book.asks.levels(10**6),
        len(book.bids),
        len(book.asks),
        book.bids.best(),
        book.asks.best(),
        book.is_crossed(),
        book.top(n),
    )
    return (*view, book.checksum()) if book.checksum_kind else view


@settings(max_examples=300, deadline=None)
@given(
    operations=OPERATIONS,
    depth=st.integers(min_value=1, max_value=30),
    shape=st.sampled_from(SHAPES),
    checksum=st.sampled_from([None, "kraken", "okx"]),
    n=st.integers(min_value=1, max_value=8),
)
def test_both_cores_agree_on_generated_operations(
    operations: list[Any], depth: int, shape: str, checksum: str | None, n: int
) -> None:
    # Each checksum with the shape of its venues' levels (Kraken's form is the decoder's).
    wire = shape not in ("rows", "sided")
    if checksum is not None:
        checksum = {"wire_rows": "okx", "kraken_rows": "kraken", "kraken_numbers": "kraken"}.get(
            shape
        )
    books, decoders = [], []
    for core in (PYTHON, COMPILED):
        book = core.book("v", "X-Y", depth, wire, checksum)
        book.state = BookState.LIVE
        books.append(book)
        decoders.append(core.decoder())
    for kind, bids, asks in operations:
        views = []
        for core, book, decoder in zip((PYTHON, COMPILED), books, decoders, strict=True):
            decoded = (_decode(core, decoder, shape, bids), _decode(core, decoder, shape, asks))
            getattr(book, kind)(*decoded)
            views.append(_view(book, n))
        assert views[1] == views[0], (kind, bids, asks)


# --- decoders: the same levels accepted, the same refused ------------------------------------

STRINGS = ["1.5", "0.00042", "100", "0", "0.0", " 1.5", "1_0", "1e3", "+2", "-0", "-1", "nan"]
STRINGS += ["inf", "Infinity", "1e400", "", "abc", ".", "0x10", "١٢"]
VALUES = st.sampled_from(STRINGS) | st.sampled_from([None, True, 7, 1.5, [], {}, -0.0, math.nan])
ROWS = st.lists(st.lists(VALUES, min_size=0, max_size=4) | VALUES, max_size=4)
RAW = ROWS | VALUES


def _outcome(call: Any) -> Any:
    try:
        decoded = call()
    except FrameError as exc:
        return ("FrameError", exc.kind)
    except Exception as exc:  # the venue maps these to `malformed`: the type must agree
        return (type(exc).__name__,)
    if isinstance(decoded, tuple):  # sided: (bids, asks)
        return tuple(_levels(side) for side in decoded)
    return _levels(decoded)


def _levels(decoded: Any) -> list[tuple[Any, ...]]:
    if hasattr(decoded, "pairs"):  # compiled Levels: pairs, and the strings kept
        texts = decoded.texts()
        pairs = decoded.pairs()
        return [(*pair, *texts[i]) if texts else pair for i, pair in enumerate(pairs)]
    return [tuple(level) for level in decoded]


def _same(a: Any, b: Any) -> bool:
    """Outcomes equal, -0.0 and 0.0 alike, NaN never accepted."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and not math.isnan(a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=400, deadline=None)
@given(raw=RAW, method=st.sampled_from(["rows", "wire_rows", "kraken_rows"]))
def test_row_decoders_accept_and_refuse_the_same(raw: Any, method: str) -> None:
    want = _outcome(lambda: getattr(PYTHON.decoder(), method)(raw))
    got = _outcome(lambda: getattr(COMPILED.decoder(), method)(raw))
    if method == "kraken_rows" and isinstance(got, list):  # compiled keeps the wire form
        got = [(p, q, checksum_form(ps), checksum_form(qs)) for p, q, ps, qs in got]
    assert _same(got, want), (raw, got, want)


NUMBERS = st.sampled_from([1.5, 7, 0, 0.0, -1.0, True, None, "1.5", float("inf"), 1e-9, 2**53])


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(
        st.fixed_dictionaries({"price": NUMBERS, "qty": NUMBERS})
        | st.dictionaries(st.sampled_from(["price", "qty", "x"]), NUMBERS)
        | VALUES,
        max_size=4,
    )
    | VALUES
)
def test_number_decoder_accepts_and_refuses_the_same(entries: Any) -> None:
    want = _outcome(
        lambda: PYTHON.decoder().kraken_numbers(entries, PYTHON.decoder().pair_formats(2, 4))
    )
    got = _outcome(
        lambda: COMPILED.decoder().kraken_numbers(entries, COMPILED.decoder().pair_formats(2, 4))
    )
    if isinstance(got, list):
        got = [(p, q, checksum_form(ps), checksum_form(qs)) for p, q, ps, qs in got]
    assert _same(got, want), (entries, got, want)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(
        st.fixed_dictionaries(
            {"side": st.sampled_from(["bid", "offer", "ask", None]), "p": VALUES, "q": VALUES}
        )
        | VALUES,
        max_size=70,  # past 64 the reference decodes column-wise
    )
    | VALUES
)
def test_sided_decoder_accepts_and_refuses_the_same(entries: Any) -> None:
    args = ("bid", "offer", "p", "q", "side")
    want = _outcome(lambda: PYTHON.decoder().sided(entries, *args))
    got = _outcome(lambda: COMPILED.decoder().sided(entries, *args))
    assert _same(got, want), (entries, got, want)


@settings(max_examples=2000, deadline=None)
@given(
    digits=st.text("0123456789", min_size=1, max_size=25),
    dot=st.integers(min_value=0, max_value=25),
)
def test_decimal_strings_become_the_doubles_float_gives(digits: str, dot: int) -> None:
    text = digits[:dot] + "." + digits[dot:] if dot <= len(digits) else digits
    ((_price, size),) = COMPILED.decoder().rows([["1", text]]).pairs()
    assert size == float(text) and math.copysign(1, size) == 1, text


# --- choosing the core ------------------------------------------------------------------------


def test_the_core_is_chosen_by_config_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert core_name() == "compiled"
    monkeypatch.setenv(ENV, "python")
    assert core_name() == "python" and core_name("compiled") == "compiled"
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ConfigError, match="MMENGINE_BOOK: unknown book core 'fast'"):
        core_name()
    monkeypatch.delenv(ENV)
    doc = {
        "engine": {"book_core": "python"},
        "venues": [{"name": "k", "protocol": "kraken-v1", "instruments": ["BTC-USD"]}],
        "instruments": [{"name": "BTC-USD", "sources": [{"venue": "k"}]}],
    }
    (spec,) = parse_config(doc).venue_specs()
    assert spec.book_core == "python"
    from mmengine.venues.registry import open_venue
    from tests.venue_session import RecordingSession

    driver = open_venue(spec, RecordingSession())
    assert driver.core is PYTHON and type(driver.books["BTC-USD"]) is PYTHON.book


def test_a_compiled_core_that_does_not_import_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mmengine.book

    monkeypatch.setitem(sys.modules, "mmengine.book._core", None)  # import fails
    monkeypatch.delattr(mmengine.book, "_core", raising=False)
    core_module._load.cache_clear()
    try:
        with pytest.raises(BookCoreMissing, match="does not import") as err:
            book_core("compiled")
        assert "MMENGINE_BOOK=python" in str(err.value) and "make venv" in str(err.value)
        monkeypatch.delenv(ENV, raising=False)
        doc = {
            "venues": [{"name": "k", "protocol": "kraken-v1", "instruments": ["BTC-USD"]}],
            "instruments": [{"name": "BTC-USD", "sources": [{"venue": "k"}]}],
        }
        with pytest.raises(ConfigError, match=r"engine\.book_core"):
            parse_config(doc)
        from mmengine.cli import main

        run = CliRunner().invoke(main, ["replay", "tests/data/KRAKEN.jsonl.gz"])
        assert run.exit_code == 2 and "compiled book core does not import" in run.output
        assert book_core("python") == PYTHON  # the reference still runs
    finally:
        core_module._load.cache_clear()
