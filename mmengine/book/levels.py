"""Level decoders: a venue's decoded JSON level list -> validated float levels (venue thread).

One call per frame side, before anything is applied: a frame whose levels are not all usable
raises `FrameError` and no book moves. Every decoder refuses what no real book holds: a price
that is not finite and > 0, a size that is not finite and >= 0, and a value of the wrong
JSON type (the venues send decimal strings; Kraken v2 sends numbers). Venue modules pick the
decoder of their wire shape through their connection's `LevelDecoder` (below); this module is
the pure-Python reference, `mmengine.book._core.LevelDecoder` the compiled one.
"""

from __future__ import annotations

from itertools import compress
from operator import itemgetter, not_
from typing import TYPE_CHECKING, Any

from mmengine.book.book import Level, WireLevel
from mmengine.errors import FrameError

if TYPE_CHECKING:
    from mmengine.book.events import BookUpdate

INF = float("inf")
_STR = str.__str__
COLUMNAR_FROM = 64  # entries from which `sided` works column-wise (snapshots)


def _bad(p: object, q: object) -> FrameError:
    return FrameError("bad_level", f"price {p!r} size {q!r}"[:120])


def _not_list(what: object) -> FrameError:
    return FrameError("malformed", f"levels {what!r}"[:80])


def one(p: Any, q: Any) -> Level:
    """One level from a ticker or a snapshot field: decimal strings -> (price, size)."""
    if type(p) is not str or type(q) is not str:
        raise _bad(p, q)
    price = float(p)
    size = float(q)
    if not (0.0 < price < INF and 0.0 <= size < INF):
        raise _bad(p, q)
    return price, size


def number(value: Any) -> float:
    """A price sent as a JSON number (Kraken v2 tickers), finite and > 0."""
    if type(value) is not float and type(value) is not int:
        raise _bad(value, None)
    price = float(value)
    if not 0.0 < price < INF:
        raise _bad(value, None)
    return price


def rows(raw: Any, decimals: ParsedDecimals | None = None) -> list[Level]:
    """`[[price, size], ...]` of decimal strings (Binance, Bybit) -> (price, size).

    Sample: [["0.35170000","4265.00000000"],["0.35290000","0"]]

    An update's few levels take their price from the connection's remembered `decimals`
    when given (prices repeat, sizes rarely do). A long list (a REST snapshot) is one
    comprehension: `p + ""` refuses any value that is not a string, and a row that is not a
    list is dropped by its filter and so fails the length check: C-level checks that keep
    1,000 levels close to the cost of their floats alone.
    """
    if raw.__class__ is not list:
        raise _not_list(raw)
    if decimals is not None and len(raw) < COLUMNAR_FROM:
        return _rows_remembered(raw, decimals)
    try:
        out = [(float(r[0] + ""), float(r[1] + "")) for r in raw if r.__class__ is list]
    except TypeError:
        raise FrameError("bad_level", "a price or size is not a decimal string") from None
    if len(out) != len(raw):
        raise _not_list(next(r for r in raw if r.__class__ is not list))
    for price, size in out:
        if not (0.0 < price < INF and 0.0 <= size < INF):
            raise _bad(price, size)
    return out


def _rows_remembered(raw: list[Any], decimals: ParsedDecimals) -> list[Level]:
    decimals.start_over_if_full()
    get_price = decimals.prices.get
    out: list[Level] = []
    append = out.append
    for row in raw:
        if row.__class__ is not list:
            raise _not_list(row)
        p = row[0]
        q = row[1]
        # (an unhashable value raises TypeError in `get`: malformed)
        price = get_price(p) or decimals.new_price(p, q)
        size = float(q + "")  # `+ ""` refuses a value that is not a string
        if not 0.0 <= size < INF:
            raise _bad(p, q)
        append((price, size))
    return out


class ParsedDecimals:
    """Decimal string -> float, remembered per venue connection: prices (and OKX's contract
    sizes) repeat all the time (3 in 4 strings of the OKX capture had been seen before), and
    `float()` is the main per-level cost.
    Only valid values are remembered (a price finite and > 0, a size finite and >= 0), so a
    string found here needs no further check. Bounded: it starts over beyond `limit`
    strings (about 2.5 MB)."""

    __slots__ = ("limit", "prices", "sizes")

    def __init__(self, limit: int = 1 << 14) -> None:
        self.prices: dict[str, float] = {}
        self.sizes: dict[str, float] = {}
        self.limit = limit

    def start_over_if_full(self) -> None:
        if len(self.prices) + len(self.sizes) > self.limit:
            self.prices.clear()
            self.sizes.clear()

    def new_price(self, p: Any, q: Any) -> float:
        """A price string not remembered yet: checked, converted, remembered (prices
        repeat: this runs for a fraction of the levels)."""
        if p.__class__ is not str:
            raise _bad(p, q)
        price = float(p)
        if not 0.0 < price < INF:
            raise _bad(p, q)
        self.prices[p] = price
        return price


def wire_rows(raw: Any, decimals: ParsedDecimals) -> list[WireLevel]:
    """`[[price, size, ...], ...]` of decimal strings -> (price, size, price str, size str),
    keeping the venue's strings for a checksum over them (OKX legacy).

    Sample: [["30249.4","0","0","0"],["30261","4","0","1"]]
    """
    if raw.__class__ is not list:
        raise _not_list(raw)
    decimals.start_over_if_full()
    sizes = decimals.sizes
    get_price = decimals.prices.get
    get_size = sizes.get
    out: list[WireLevel] = []
    append = out.append
    for row in raw:
        if row.__class__ is not list:
            raise _not_list(row)
        p = row[0]
        q = row[1]
        # (an unhashable value raises TypeError in `get`: malformed)
        price = get_price(p) or decimals.new_price(p, q)
        size = get_size(q)
        if size is None:
            if q.__class__ is not str:
                raise _bad(p, q)
            size = float(q)
            if not 0.0 <= size < INF:
                raise _bad(p, q)
            sizes[q] = size
        append((price, size, p, q))
    return out


def checksum_form(s: str) -> str:
    """Kraken's checksum form of a decimal string: no `.`, no leading zeros (3.4)."""
    return s.replace(".", "").lstrip("0")


def kraken_rows(raw: Any) -> list[WireLevel]:
    """Kraken v1 `[price, volume, timestamp(, "r")]` strings -> (price, size, and both strings
    in Kraken's checksum form), so the checksum never re-reads a level. (A value that is not
    a string fails on `.replace`.)

    Sample: [["0.042990","364630.28272081","1618678145.920470"]]
    """
    if raw.__class__ is not list:
        raise _not_list(raw)
    out: list[WireLevel] = []
    append = out.append
    for row in raw:
        if row.__class__ is not list:
            raise _not_list(row)
        p = row[0]
        q = row[1]
        price = float(p)
        size = float(q)
        if not (0.0 < price < INF and 0.0 <= size < INF):
            raise _bad(p, q)
        append((price, size, p.replace(".", "").lstrip("0"), q.replace(".", "").lstrip("0")))
    return out


class PairFormats:
    """A Kraken v2 pair's precisions (`.1f`-style formats) and, per connection, the checksum
    form of each number already written with them (prices and sizes repeat; `format` is the
    main per-level cost). Bounded like `ParsedDecimals`."""

    __slots__ = ("limit", "price_format", "price_forms", "size_format", "size_forms")

    def __init__(self, price_format: str, size_format: str, limit: int = 1 << 14) -> None:
        self.price_format = price_format
        self.size_format = size_format
        self.price_forms: dict[float, str] = {}
        self.size_forms: dict[float, str] = {}
        self.limit = limit

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PairFormats) and (self.price_format, self.size_format) == (
            other.price_format,
            other.size_format,
        )

    # Unhashable, as a class that defines __eq__ is; typeshed declares __hash__ a method.
    __hash__ = None  # type: ignore[assignment]


def kraken_numbers(raw: Any, formats: PairFormats) -> list[WireLevel]:
    """Kraken v2 `{"price": 45283.5, "qty": 0.1}` JSON numbers -> (price, size, and both
    written with the pair's precisions (`price_format` like ".1f") in checksum form).

    Sample: [{"price":45283.5,"qty":0.10000000}]
    """
    if raw.__class__ is not list:
        raise _not_list(raw)
    price_forms = formats.price_forms
    size_forms = formats.size_forms
    if len(price_forms) + len(size_forms) > formats.limit:
        price_forms.clear()
        size_forms.clear()
    out: list[WireLevel] = []
    append = out.append
    for lv in raw:
        if lv.__class__ is not dict:
            raise _not_list(lv)
        price = lv["price"]
        size = lv["qty"]
        if price.__class__ is not float:
            price = float(price) if price.__class__ is int else INF
        if size.__class__ is not float:
            size = float(size) if size.__class__ is int else INF
        if not (0.0 < price < INF and 0.0 <= size < INF):
            raise _bad(lv.get("price"), lv.get("qty"))
        price_form = price_forms.get(price)
        if price_form is None:
            price_form = price_forms[price] = checksum_form(format(price, formats.price_format))
        size_form = size_forms.get(size)
        if size_form is None:
            size_form = size_forms[size] = checksum_form(format(size, formats.size_format))
        append((price, size, price_form, size_form))
    return out


def sided(
    raw: Any, bid: str, ask: str, price_key: str, size_key: str, side_key: str
) -> tuple[list[Level], list[Level]]:
    """One list of entries naming their side (Coinbase `updates`) -> (bids, asks).

    Sample entry: {"side":"offer","event_time":"2026-08-09T21:05:48.407682Z",
                   "price_level":"65106.54","new_quantity":"0"}
    (or any object read by `entry[key]`, such as a typed msgspec Struct).

    A handful of entries: a plain loop, two lists. A snapshot holds ~46,000, so it is done
    column-wise by C-level `map`s (prices, sizes, sides, one validation per column: a sum is
    NaN or inf if any element is), and each side comes back as an iterator to be consumed
    once (by `BookSide.load`, or `apply`).
    """
    if type(raw) is not list:
        raise _not_list(raw)
    if len(raw) >= COLUMNAR_FROM:
        return _sided_columns(raw, bid, ask, price_key, size_key, side_key)
    bids: list[Level] = []
    asks: list[Level] = []
    for entry in raw:
        p = entry[price_key]
        q = entry[size_key]
        price = float(p + "")  # `+ ""` refuses a value that is not a string
        size = float(q + "")
        if not (0.0 < price < INF and 0.0 <= size < INF):
            raise _bad(p, q)
        side = entry[side_key]
        if side == bid:
            bids.append((price, size))
        elif side == ask:
            asks.append((price, size))
        else:
            raise FrameError("bad_side", repr(side)[:40])
    return bids, asks


def _sided_columns(
    raw: list[Any], bid: str, ask: str, price_key: str, size_key: str, side_key: str
) -> tuple[list[Level], list[Level]]:
    # `str.__str__` refuses any value that is not a string, inside the same C-level pass.
    try:
        prices = list(map(float, map(_STR, map(itemgetter(price_key), raw))))
        sizes = list(map(float, map(_STR, map(itemgetter(size_key), raw))))
    except TypeError:
        raise FrameError("bad_level", "a price or size is not a decimal string") from None
    if not (min(prices) > 0.0 and sum(prices) < INF and min(sizes) >= 0.0 and sum(sizes) < INF):
        raise FrameError("bad_level", f"prices {min(prices)}..{max(prices)}, sizes {max(sizes)}")
    sides = list(map(itemgetter(side_key), raw))
    n_bids = sides.count(bid)
    if n_bids + sides.count(ask) != len(sides):
        bad = next(s for s in sides if s != bid and s != ask)
        raise FrameError("bad_side", repr(bad)[:40])
    # Validated above; each side is handed on as an iterator the book's load consumes once
    # (building two lists of 23,000 tuples cost more than every check together).
    levels = zip(prices, sizes, strict=True)
    # ignores below: iterators for lists: the book's load reads them once (above)
    if n_bids == len(sides):
        return levels, iter(())  # type: ignore[return-value]
    if n_bids == 0:
        return iter(()), levels  # type: ignore[return-value]
    is_bid = list(map(bid.__eq__, sides))
    return (
        compress(zip(prices, sizes, strict=True), is_bid),  # type: ignore[return-value]
        compress(levels, map(not_, is_bid)),
    )


class LevelDecoder:
    """One venue connection's level decoders, pure Python (the reference): what a venue
    module calls, once per frame side, to validate and convert a level list before any book
    is touched. It holds the connection's remembered decimals. The compiled core's
    `mmengine.book._core.LevelDecoder` has the same methods and returns levels only its own
    book reads; a venue gets the one of its connection's core (`VenueProtocol.levels`)."""

    __slots__ = ("decimals",)

    def __init__(self) -> None:
        self.decimals = ParsedDecimals()

    def rows(self, raw: Any) -> list[Level]:
        """`[[price, size], ...]` decimal strings (Binance, Bybit): see `rows`."""
        return rows(raw, self.decimals)

    def wire_rows(self, raw: Any) -> list[WireLevel]:
        """`[[price, size, ...], ...]` keeping the strings (OKX legacy): see `wire_rows`."""
        return wire_rows(raw, self.decimals)

    def kraken_rows(self, raw: Any) -> list[WireLevel]:
        """Kraken v1 `[price, volume, timestamp]` strings: see `kraken_rows`."""
        return kraken_rows(raw)

    def pair_formats(self, price_decimals: int, size_decimals: int) -> PairFormats:
        """A Kraken v2 pair's precisions, for `kraken_numbers` (equal when they are)."""
        return PairFormats(f".{price_decimals}f", f".{size_decimals}f")

    def kraken_numbers(self, raw: Any, formats: PairFormats) -> list[WireLevel]:
        """Kraken v2 `{"price": 1.5, "qty": 2.0}` numbers: see `kraken_numbers`."""
        return kraken_numbers(raw, formats)

    def sided(
        self, raw: Any, bid: str, ask: str, price_key: str, size_key: str, side_key: str
    ) -> tuple[list[Level], list[Level]]:
        """Entries naming their side (Coinbase `updates`): see `sided`."""
        return sided(raw, bid, ask, price_key, size_key, side_key)

    # A whole book message in one call: the compiled core's fast path of a venue module
    # (`_core.LevelDecoder.rows_update`, ...). Here none: the venue module decodes every
    # message its own way, which is the reference the fast path is tested against.

    def rows_update(
        self,
        instrument: str,
        snapshot: bool,
        bids: Any,
        asks: Any,
        last_id: Any,
        cross_seq: Any,
        ts_ms: Any,
    ) -> BookUpdate | None:
        """Bybit `orderbook` in one call: None (decoded by the venue module)."""
        return None

    def kraken_update(
        self, instrument: str, asks: Any, bids: Any, checksum: Any
    ) -> BookUpdate | None:
        """A Kraken v1 update object in one call: None (decoded by the venue module)."""
        return None

    def kraken_snapshot(self, instrument: str, asks: Any, bids: Any) -> BookUpdate | None:
        """A Kraken v1 snapshot in one call: None (decoded by the venue module)."""
        return None

    def kraken_numbers_update(
        self,
        instrument: str,
        snapshot: bool,
        bids: Any,
        asks: Any,
        formats: PairFormats,
        checksum: Any,
        timestamp: Any,
    ) -> BookUpdate | None:
        """A Kraken v2 `book` entry in one call: None (decoded by the venue module)."""
        return None
