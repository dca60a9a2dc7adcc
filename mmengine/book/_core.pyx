# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""The compiled book core (venue thread that owns the books): the same books as the
pure-Python reference (`book.py`, `levels.py`, `checksum.py`), with the per-level work in C.

- `LevelDecoder`: one call per frame side turns the level list as the JSON decoder gave it
  into a `Levels` (C doubles, and the venue's strings where a checksum needs them), checking
  every level (a price finite and > 0, a size finite and >= 0, strings where the venue sends
  strings) before any book is touched. Clean input takes the C path (Python's own
  `PyOS_string_to_double`, the function `float()` uses, so the values are the same); anything
  else goes to the reference decoder, so a frame is refused, or accepted, exactly as there.
- `BookSide`: a C++ `std::map` keyed by price (asks) or -price (bids), so `begin()` is the
  best level: an update is O(log n) wherever it lands, and a new best level moves nothing
  else (the reference's sorted list moves the whole side).
- `L2Book`: `load` (a snapshot) and `apply` (a delta, then truncation to depth), the venues'
  CRC32s over the top levels built in C from the kept strings, `top` building the BookTop.
"""

from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF, Py_XINCREF
from cython.operator cimport dereference as deref, preincrement as inc, predecrement as dec
from libc.stdint cimport uint32_t
from libcpp.map cimport map as cmap
from libcpp.string cimport string
from libcpp.utility cimport pair
from libcpp.vector cimport vector

from mmengine.book import levels as _reference
from mmengine.book.checksum import KRAKEN_LEVELS as _KRAKEN_N, OKX_LEVELS as _OKX_N
from mmengine.model import BookState, BookTop

cdef extern from "Python.h":
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow_exception)
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype) except NULL
    void PyMem_Free(void* p)
    PyObject* PyErr_Occurred()
    void PyErr_Clear()
    PyObject* PyDict_GetItem(object d, object key)
    PyObject* PyList_GET_ITEM(object lst, Py_ssize_t i)
    Py_ssize_t PyList_GET_SIZE(object lst)

cdef double INF = float("inf")
cdef object LIVE = BookState.LIVE
cdef object _new_tuple = tuple.__new__  # BookTop by position, without its __new__
cdef str _LIVE_TEXT = "LIVE"
if BookTop._fields != (
    "venue", "instrument", "state", "venue_seq", "cross_seq", "exchange_ts_ns", "recv_ts_ns",
    "bid_prices", "bid_sizes", "ask_prices", "ask_sizes",
):
    raise ImportError("BookTop's fields changed: update L2Book.top, which builds it by position")

cdef int KRAKEN_LEVELS = _KRAKEN_N
cdef int OKX_LEVELS = _OKX_N
cdef int _KRAKEN = 1
cdef int _OKX = 2


# --- decoding ---------------------------------------------------------------------------------


cdef inline bint _decimal(object text, double* out):
    """True, with the value, when `text` is a str that is a float literal as a whole (no
    spaces, no underscores: those, and anything else, go to the reference decoder)."""
    cdef Py_ssize_t n
    cdef const char* buf
    cdef char* end
    if type(text) is not str:
        return False
    buf = PyUnicode_AsUTF8AndSize(text, &n)
    if n == 0:
        return False
    out[0] = PyOS_string_to_double(buf, &end, NULL)
    if end != buf + n:
        if PyErr_Occurred() != NULL:
            PyErr_Clear()
        return False
    return True


cdef inline bint _number(object value, double* out):
    """True, with the value, for a JSON number (float or int, not bool)."""
    if type(value) is float:
        out[0] = <double>value
        return True
    if type(value) is int:
        out[0] = <double>value
        return True
    return False


cdef class Levels:
    """One decoded frame side: validated prices and sizes as C doubles, in the venue's order,
    and (for a checksum) the venue's strings, held alive by `owner`."""

    cdef vector[double] prices
    cdef vector[double] sizes
    cdef vector[PyObject*] price_texts
    cdef vector[PyObject*] size_texts
    cdef object owner

    def __len__(self) -> int:
        return self.prices.size()

    def pairs(self) -> list:
        """(price, size) per level, in order (for tests and debugging)."""
        return [(self.prices[i], self.sizes[i]) for i in range(self.prices.size())]

    def texts(self) -> list:
        """(price text, size text) per level, where kept."""
        return [
            (<object>self.price_texts[i], <object>self.size_texts[i])
            for i in range(self.price_texts.size())
        ]


cdef Levels _from_reference(object decoded, bint wire):
    """What the reference decoder returned (tuples), as Levels."""
    cdef Levels out = Levels()
    owner = []
    for level in decoded:
        out.prices.push_back(level[0])
        out.sizes.push_back(level[1])
        if wire:
            owner.append(level[2])
            owner.append(level[3])
    if wire:
        for i in range(0, len(owner), 2):
            out.price_texts.push_back(<PyObject*>owner[i])
            out.size_texts.push_back(<PyObject*>owner[i + 1])
    out.owner = owner
    return out


cdef class LevelDecoder:
    """One venue connection's level decoders (the methods of `levels.LevelDecoder`), in C."""

    cdef object reference

    def __init__(self) -> None:
        self.reference = _reference.LevelDecoder()

    cdef Levels _rows(self, object raw, bint wire):
        cdef Levels out
        cdef Py_ssize_t i, n
        cdef double price, size
        cdef object row
        if type(raw) is not list:
            return None
        n = PyList_GET_SIZE(raw)
        out = Levels()
        out.prices.reserve(n)
        out.sizes.reserve(n)
        if wire:
            out.price_texts.reserve(n)
            out.size_texts.reserve(n)
        for i in range(n):
            row = <object>PyList_GET_ITEM(raw, i)
            if type(row) is not list or PyList_GET_SIZE(row) < 2:
                return None
            p = <object>PyList_GET_ITEM(row, 0)
            q = <object>PyList_GET_ITEM(row, 1)
            if not _decimal(p, &price) or not _decimal(q, &size):
                return None
            if not (0.0 < price < INF and 0.0 <= size < INF):
                return None
            out.prices.push_back(price)
            out.sizes.push_back(size)
            if wire:
                out.price_texts.push_back(<PyObject*>p)
                out.size_texts.push_back(<PyObject*>q)
        out.owner = raw
        return out

    def rows(self, raw: object) -> Levels:
        """`[[price, size], ...]` decimal strings (Binance, Bybit)."""
        out = self._rows(raw, False)
        if out is None:
            return _from_reference(self.reference.rows(raw), False)
        return out

    def wire_rows(self, raw: object) -> Levels:
        """`[[price, size, ...], ...]` decimal strings, keeping them (OKX legacy)."""
        out = self._rows(raw, True)
        if out is None:
            return _from_reference(self.reference.wire_rows(raw), True)
        return out

    def kraken_rows(self, raw: object) -> Levels:
        """Kraken v1 `[price, volume, timestamp]` strings, kept as sent (the checksum takes
        its form of them: no `.`, no leading zeros)."""
        out = self._rows(raw, True)
        if out is None:
            return _from_reference(self.reference.kraken_rows(raw), True)
        return out

    def pair_formats(self, price_decimals: int, size_decimals: int) -> tuple:
        """A Kraken v2 pair's precisions, for `kraken_numbers`."""
        return (int(price_decimals), int(size_decimals))

    def kraken_numbers(self, raw: object, formats: tuple) -> Levels:
        """Kraken v2 `{"price": 45283.5, "qty": 0.1}` numbers, each written with the pair's
        precision (`PyOS_double_to_string`, what `format(x, ".1f")` uses) for the checksum."""
        cdef Levels out
        cdef Py_ssize_t i, n
        cdef double price, size
        cdef int price_decimals = formats[0]
        cdef int size_decimals = formats[1]
        cdef PyObject* found
        if type(raw) is list:
            n = PyList_GET_SIZE(raw)
            out = Levels()
            owner = []
            for i in range(n):
                entry = <object>PyList_GET_ITEM(raw, i)
                if type(entry) is not dict:
                    break
                found = PyDict_GetItem(entry, "price")
                if found == NULL or not _number(<object>found, &price):
                    break
                found = PyDict_GetItem(entry, "qty")
                if found == NULL or not _number(<object>found, &size):
                    break
                if not (0.0 < price < INF and 0.0 <= size < INF):
                    break
                out.prices.push_back(price)
                out.sizes.push_back(size)
                owner.append(_fixed(price, price_decimals))
                owner.append(_fixed(size, size_decimals))
            else:
                for i in range(0, len(owner), 2):
                    out.price_texts.push_back(<PyObject*>owner[i])
                    out.size_texts.push_back(<PyObject*>owner[i + 1])
                out.owner = owner
                return out
        reference = _reference.PairFormats(f".{price_decimals}f", f".{size_decimals}f")
        return _from_reference(_reference.kraken_numbers(raw, reference), True)

    def sided(
        self, raw: object, bid: str, ask: str, price_key: str, size_key: str, side_key: str
    ) -> tuple:
        """One list of entries naming their side (Coinbase `updates`) -> (bids, asks)."""
        cdef Levels bids = Levels()
        cdef Levels asks = Levels()
        cdef Levels side
        cdef Py_ssize_t i, n
        cdef double price, size
        cdef PyObject* p
        cdef PyObject* q
        cdef PyObject* s
        if type(raw) is list:
            n = PyList_GET_SIZE(raw)
            for i in range(n):
                entry = <object>PyList_GET_ITEM(raw, i)
                if type(entry) is not dict:
                    break
                p = PyDict_GetItem(entry, price_key)
                q = PyDict_GetItem(entry, size_key)
                s = PyDict_GetItem(entry, side_key)
                if p == NULL or q == NULL or s == NULL:
                    break
                if not _decimal(<object>p, &price) or not _decimal(<object>q, &size):
                    break
                if not (0.0 < price < INF and 0.0 <= size < INF):
                    break
                if <object>s == bid:
                    side = bids
                elif <object>s == ask:
                    side = asks
                else:
                    break
                side.prices.push_back(price)
                side.sizes.push_back(size)
            else:
                return bids, asks
        ref_bids, ref_asks = self.reference.sided(raw, bid, ask, price_key, size_key, side_key)
        return _from_reference(ref_bids, False), _from_reference(ref_asks, False)


cdef str _fixed(double value, int decimals):
    cdef char* text = PyOS_double_to_string(value, b"f", decimals, 0, NULL)
    try:
        return text.decode("ascii")
    finally:
        PyMem_Free(text)


# --- the book ---------------------------------------------------------------------------------


cdef extern from *:
    """
    #include <map>
    struct MmLevel { double size; PyObject* price_text; PyObject* size_text; };
    typedef std::map<double, MmLevel> MmLadder;
    static inline MmLadder::iterator mm_insert(MmLadder& ladder, MmLadder::iterator hint,
                                               double key, const MmLevel& level) {
        return ladder.insert(hint, std::make_pair(key, level));
    }
    """
    cdef struct Level "MmLevel":
        double size
        PyObject* price_text  # owned, or NULL where no strings are kept
        PyObject* size_text

ctypedef cmap[double, Level] LevelMap
ctypedef cmap[double, Level].iterator LevelIter

cdef extern from *:
    LevelIter mm_insert(LevelMap& ladder, LevelIter hint, double key, const Level& level)


cdef class BookSide:
    """One side of a book, best level first (the methods of `book.BookSide` the engine and
    the tests read)."""

    cdef LevelMap ladder  # key: price (asks) or -price (bids), so begin() is the best level
    cdef readonly bint is_bid
    cdef readonly bint keep_wire
    cdef double sign

    def __init__(self, is_bid: bool, keep_wire: bool = False) -> None:
        self.is_bid = is_bid
        self.keep_wire = keep_wire
        self.sign = -1.0 if is_bid else 1.0

    def __dealloc__(self) -> None:
        self._clear()

    def __len__(self) -> int:
        return self.ladder.size()

    cdef void _clear(self):
        cdef LevelIter it
        if self.keep_wire:
            it = self.ladder.begin()
            while it != self.ladder.end():
                Py_XDECREF(deref(it).second.price_text)
                Py_XDECREF(deref(it).second.size_text)
                inc(it)
        self.ladder.clear()

    def clear(self) -> None:
        self._clear()

    cdef inline void _erase(self, LevelIter it):
        if self.keep_wire:
            Py_XDECREF(deref(it).second.price_text)
            Py_XDECREF(deref(it).second.size_text)
        self.ladder.erase(it)

    cdef inline void _set(self, double key, double size, PyObject* price_text,
                          PyObject* size_text):
        """Set a level; a zero size deletes it (a price not held: nothing to do)."""
        cdef LevelIter it = self.ladder.lower_bound(key)
        cdef Level level
        if size == 0.0:
            if it != self.ladder.end() and deref(it).first == key:
                self._erase(it)
            return
        if it != self.ladder.end() and deref(it).first == key:
            deref(it).second.size = size
            if self.keep_wire:
                Py_XINCREF(price_text)
                Py_XINCREF(size_text)
                Py_XDECREF(deref(it).second.price_text)
                Py_XDECREF(deref(it).second.size_text)
                deref(it).second.price_text = price_text
                deref(it).second.size_text = size_text
            return
        level.size = size
        level.price_text = NULL
        level.size_text = NULL
        if self.keep_wire:
            Py_XINCREF(price_text)
            Py_XINCREF(size_text)
            level.price_text = price_text
            level.size_text = size_text
        mm_insert(self.ladder, it, key, level)

    cdef void _apply(self, Levels levels):
        cdef size_t i
        cdef size_t n = levels.prices.size()
        cdef bint texts = levels.price_texts.size() == n
        cdef double sign = self.sign
        for i in range(n):
            if texts:
                self._set(sign * levels.prices[i], levels.sizes[i], levels.price_texts[i],
                          levels.size_texts[i])
            else:
                self._set(sign * levels.prices[i], levels.sizes[i], NULL, NULL)

    cdef void _load(self, Levels levels):
        """Replace the side; zero sizes are ignored, the last of a repeated price wins (as
        the reference's dict). Levels usually come best first: inserted at the end."""
        cdef size_t i, before
        cdef size_t n = levels.prices.size()
        cdef bint texts = levels.price_texts.size() == n
        cdef Level level
        cdef LevelIter it
        cdef double sign = self.sign
        self._clear()
        for i in range(n):
            if levels.sizes[i] == 0.0:
                continue
            level.size = levels.sizes[i]
            level.price_text = NULL
            level.size_text = NULL
            if self.keep_wire and texts:
                level.price_text = levels.price_texts[i]
                level.size_text = levels.size_texts[i]
            before = self.ladder.size()
            it = mm_insert(self.ladder, self.ladder.end(), sign * levels.prices[i], level)
            if self.ladder.size() == before:  # a repeated price: the later level wins
                if self.keep_wire:
                    Py_XDECREF(deref(it).second.price_text)
                    Py_XDECREF(deref(it).second.size_text)
                deref(it).second = level
            if self.keep_wire:
                Py_XINCREF(level.price_text)
                Py_XINCREF(level.size_text)

    cdef void _truncate(self, size_t depth):
        cdef LevelIter it
        while self.ladder.size() > depth:
            it = self.ladder.end()
            dec(it)
            self._erase(it)

    def truncate(self, depth: int) -> None:
        """Drop levels beyond `depth`."""
        self._truncate(depth)

    def apply(self, levels: Levels) -> None:
        """Set each level in order (zero size deletes)."""
        self._apply(levels)

    def load(self, levels: Levels) -> None:
        """Replace the side with `levels`."""
        self._load(levels)

    def prices(self, n: int) -> list:
        """The best `n` prices, best first."""
        cdef LevelIter it = self.ladder.begin()
        cdef Py_ssize_t i = 0
        out = []
        while it != self.ladder.end() and i < n:
            out.append(self.sign * deref(it).first)
            inc(it)
            i += 1
        return out

    def levels(self, n: int) -> list:
        """The best `n` (price, size) levels, best first."""
        cdef LevelIter it = self.ladder.begin()
        cdef Py_ssize_t i = 0
        out = []
        while it != self.ladder.end() and i < n:
            out.append((self.sign * deref(it).first, deref(it).second.size))
            inc(it)
            i += 1
        return out

    def best(self) -> object:
        if self.ladder.empty():
            return None
        return self.sign * deref(self.ladder.begin()).first

    def size(self, price: float) -> object:
        """The size at `price`, None where the side holds no level."""
        cdef LevelIter it = self.ladder.find(self.sign * <double>price)
        if it == self.ladder.end():
            return None
        return deref(it).second.size

    @property
    def sizes(self) -> dict:
        """Every level as {price: size} (a copy: for tests and tools, not the hot path)."""
        cdef LevelIter it = self.ladder.begin()
        out = {}
        while it != self.ladder.end():
            out[self.sign * deref(it).first] = deref(it).second.size
            inc(it)
        return out

    def wire_levels(self, n: int) -> list:
        """The venue's strings of the best `n` levels, as kept."""
        cdef LevelIter it = self.ladder.begin()
        cdef Py_ssize_t i = 0
        out = []
        if not self.keep_wire:
            raise ValueError("this side does not keep wire strings")
        while it != self.ladder.end() and i < n:
            out.append((<object>deref(it).second.price_text, <object>deref(it).second.size_text))
            inc(it)
            i += 1
        return out


cdef class L2Book:
    """The verified book of one instrument on one venue, with its sync state (the methods
    and attributes of `book.L2Book`)."""

    cdef public object venue
    cdef public object instrument
    cdef public object state
    cdef public object venue_seq
    cdef public object cross_seq
    cdef public object exchange_ts_ns
    cdef public object recv_ts_ns
    cdef readonly Py_ssize_t depth
    cdef readonly BookSide bids
    cdef readonly BookSide asks
    cdef readonly object checksum_kind
    cdef int kind
    cdef string text  # the checksum text, reused

    def __init__(
        self,
        venue: str,
        instrument: str,
        depth: int,
        keep_wire: bool = False,
        checksum: str | None = None,
    ) -> None:
        if checksum is None:
            self.kind = 0
        elif checksum == "kraken":
            self.kind = _KRAKEN
        elif checksum == "okx":
            self.kind = _OKX
        else:
            raise ValueError(f"unknown book checksum {checksum!r}")
        self.venue = venue
        self.instrument = instrument
        self.depth = depth
        self.checksum_kind = checksum
        self.bids = BookSide(True, keep_wire or checksum is not None)
        self.asks = BookSide(False, keep_wire or checksum is not None)
        self.state = BookState.SYNCING
        self.venue_seq = -1
        self.cross_seq = -1
        self.exchange_ts_ns = 0
        self.recv_ts_ns = 0
        self.text.reserve(2048)

    def clear(self) -> None:
        """Forget every level (before a resync); the state is the caller's to set."""
        self.bids._clear()
        self.asks._clear()
        self.venue_seq = -1
        self.cross_seq = -1

    def truncate(self) -> None:
        self.bids._truncate(self.depth)
        self.asks._truncate(self.depth)

    def load(self, bids: object, asks: object) -> None:
        """A snapshot: replace both sides with decoded levels, truncated to depth."""
        self.bids._load(_levels(bids))
        self.asks._load(_levels(asks))
        self.bids._truncate(self.depth)
        self.asks._truncate(self.depth)

    def apply(self, bids: object, asks: object) -> None:
        """A delta: every level of both sides, then truncation to depth."""
        if type(bids) is Levels:
            self.bids._apply(<Levels>bids)
        elif bids:
            _levels(bids)
        if type(asks) is Levels:
            self.asks._apply(<Levels>asks)
        elif asks:
            _levels(asks)
        self.bids._truncate(self.depth)
        self.asks._truncate(self.depth)

    def is_crossed(self) -> bool:
        if self.bids.ladder.empty() or self.asks.ladder.empty():
            return False
        return -deref(self.bids.ladder.begin()).first >= deref(self.asks.ladder.begin()).first

    def top(self, n: int) -> object:
        """The best `n` levels per side as a BookTop (levels only when LIVE)."""
        if self.state is not LIVE:
            return _new_tuple(BookTop, (
                self.venue, self.instrument, self.state.value, self.venue_seq, self.cross_seq,
                self.exchange_ts_ns, self.recv_ts_ns, [], [], [], [],
            ))
        cdef list bid_prices = []
        cdef list bid_sizes = []
        cdef list ask_prices = []
        cdef list ask_sizes = []
        cdef LevelIter it = self.bids.ladder.begin()
        cdef Py_ssize_t i = 0
        while it != self.bids.ladder.end() and i < n:
            bid_prices.append(-deref(it).first)
            bid_sizes.append(deref(it).second.size)
            inc(it)
            i += 1
        it = self.asks.ladder.begin()
        i = 0
        while it != self.asks.ladder.end() and i < n:
            ask_prices.append(deref(it).first)
            ask_sizes.append(deref(it).second.size)
            inc(it)
            i += 1
        return _new_tuple(BookTop, (
            self.venue, self.instrument, _LIVE_TEXT, self.venue_seq, self.cross_seq,
            self.exchange_ts_ns, self.recv_ts_ns, bid_prices, bid_sizes, ask_prices, ask_sizes,
        ))

    def checksum(self) -> int:
        """The venue's CRC32 of the book as it is now (`checksum_kind`)."""
        cdef uint32_t crc
        self.text.clear()
        if self.kind == _KRAKEN:
            _kraken_text(&self.text, self.asks, KRAKEN_LEVELS)
            _kraken_text(&self.text, self.bids, KRAKEN_LEVELS)
            return _crc32(self.text)
        if self.kind == _OKX:
            _okx_text(&self.text, self.bids, self.asks, OKX_LEVELS)
            crc = _crc32(self.text)
            return <long long>crc - 0x1_0000_0000 if crc >= 0x8000_0000 else <long long>crc
        raise ValueError(f"{self.venue} {self.instrument}: this book has no checksum")


cdef inline Levels _levels(object given):
    if type(given) is Levels:
        return <Levels>given
    if not given:
        return Levels()
    raise TypeError(
        f"levels of type {type(given).__name__}: the compiled book takes what its own "
        "LevelDecoder returns (a venue of another book core?)"
    )


# --- checksums (venue-protocols 3.4 and 4.4; the reference is `checksum.py`) ------------------


cdef uint32_t[256] _CRC_TABLE
cdef void _crc_init():
    cdef uint32_t c
    cdef int i, k
    for i in range(256):
        c = i
        for k in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if (c & 1) else (c >> 1)
        _CRC_TABLE[i] = c
_crc_init()


cdef uint32_t _crc32(const string& text):
    """zlib's CRC32 (the one `zlib.crc32` computes)."""
    cdef uint32_t c = 0xFFFFFFFF
    cdef size_t i
    cdef const char* data = text.c_str()
    for i in range(text.size()):
        c = _CRC_TABLE[(c ^ <unsigned char>data[i]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


cdef inline void _kraken_form(string* out, PyObject* text):
    """Kraken's checksum form of a decimal string: no `.`, no leading zeros."""
    cdef Py_ssize_t n, i
    cdef const char* buf
    cdef bint leading = True
    cdef char ch
    if text == NULL:
        return
    buf = PyUnicode_AsUTF8AndSize(<object>text, &n)
    for i in range(n):
        ch = buf[i]
        if ch == b".":
            continue
        if leading and ch == b"0":
            continue
        leading = False
        out.push_back(ch)


cdef void _kraken_text(string* out, BookSide side, int n):
    cdef LevelIter it = side.ladder.begin()
    cdef int i = 0
    while it != side.ladder.end() and i < n:
        _kraken_form(out, deref(it).second.price_text)
        _kraken_form(out, deref(it).second.size_text)
        inc(it)
        i += 1


cdef inline void _append(string* out, PyObject* text):
    cdef Py_ssize_t n
    cdef const char* buf
    if text == NULL:
        return
    buf = PyUnicode_AsUTF8AndSize(<object>text, &n)
    out.append(buf, n)


cdef void _okx_text(string* out, BookSide bids, BookSide asks, int n):
    """`bid1:ask1:bid2:ask2...` as `price:size`, a shorter side simply ending."""
    cdef LevelIter b = bids.ladder.begin()
    cdef LevelIter a = asks.ladder.begin()
    cdef int i
    cdef bint first = True
    for i in range(n):
        if b != bids.ladder.end():
            if not first:
                out.push_back(b":")
            first = False
            _append(out, deref(b).second.price_text)
            out.push_back(b":")
            _append(out, deref(b).second.size_text)
            inc(b)
        if a != asks.ladder.end():
            if not first:
                out.push_back(b":")
            first = False
            _append(out, deref(a).second.price_text)
            out.push_back(b":")
            _append(out, deref(a).second.size_text)
            inc(a)
