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

from cpython.object cimport Py_TYPE, PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF, Py_XINCREF
from cython.operator cimport dereference as deref, preincrement as inc, predecrement as dec
from libc.stdint cimport uint32_t
from libcpp.map cimport map as cmap
from libcpp.string cimport string
from libcpp.vector cimport vector

from mmengine.book import levels as _reference
from mmengine.book.checksum import KRAKEN_LEVELS as _KRAKEN_N, OKX_LEVELS as _OKX_N
from mmengine.book.events import BookUpdate
from mmengine.model import BookState, BookTop

cdef extern from "Python.h":
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow_exception)
    const char* PyUnicode_AsUTF8AndSize(PyObject* text, Py_ssize_t* size)
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype) except NULL
    void PyMem_Free(void* p)
    PyObject* PyErr_Occurred()
    void PyErr_Clear()
    PyObject* PyDict_GetItem(object d, object key)
    PyObject* PyList_GET_ITEM(object lst, Py_ssize_t i)
    Py_ssize_t PyList_GET_SIZE(object lst)
    object PyList_New(Py_ssize_t n)
    void PyList_SET_ITEM(object lst, Py_ssize_t i, object item)
    void PyTuple_SET_ITEM(object tup, Py_ssize_t i, object item)
    object PyFloat_FromDouble(double value)
    bint PyUnicode_IS_COMPACT_ASCII(PyObject* text)
    Py_ssize_t PyUnicode_GET_LENGTH(PyObject* text)
    void* PyUnicode_DATA(PyObject* text)
    object PyType_GenericAlloc(PyTypeObject* kind, Py_ssize_t items)

cdef extern from *:
    """
    #include <map>
    #include <stdint.h>
    #include <string.h>
    struct MmLevel { double size; PyObject* price_text; PyObject* size_text; };
    struct MmEntry { double price; double size; PyObject* price_text; PyObject* size_text; };
    typedef std::map<double, MmLevel> MmLadder;

    static inline MmLadder::iterator mm_insert(MmLadder& ladder, MmLadder::iterator hint,
                                               double key, const MmLevel& level) {
        return ladder.insert(hint, std::make_pair(key, level));
    }

    /* A plain decimal (digits, at most one dot, no sign or exponent) as the double float()
       gives: up to 19 significant digits make an exact integer m, and when m <= 2^53 and
       the scale k <= 22, m / 10^k is one correctly rounded IEEE division of two exact
       values (Clinger's fast path), the same double as float(). Returns 0 for anything
       else, which the caller converts the slow way. */
    static const double mm_pow10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9,
        1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    static inline int mm_decimal(const char* s, Py_ssize_t n, double* out) {
        uint64_t m = 0;
        int digits = 0, scale = 0, dot = 0, seen = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            char c = s[i];
            if (c >= '0' && c <= '9') {
                seen = 1;
                if (dot) scale++;
                if (m == 0 && c == '0') continue;  /* no significant digit yet */
                if (++digits > 19) return 0;
                m = m * 10 + (uint64_t)(c - '0');
            } else if (c == '.' && !dot) {
                dot = 1;
            } else {
                return 0;
            }
        }
        if (!seen) return 0;
        while (scale > 0 && m != 0 && m % 10 == 0) { m /= 10; scale--; }
        if (m > ((uint64_t)1 << 53) || scale > 22) return 0;
        *out = (double)m / mm_pow10[scale];
        return 1;
    }

    /* zlib's CRC32 (what `zlib.crc32` computes), slicing by 8 bytes. */
    static uint32_t mm_crc_table[8][256];
    static void mm_crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            mm_crc_table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int t = 1; t < 8; t++)
                mm_crc_table[t][i] = (mm_crc_table[t - 1][i] >> 8)
                                     ^ mm_crc_table[0][mm_crc_table[t - 1][i] & 0xFF];
    }
    static uint32_t mm_crc32(uint32_t crc, const char* data, size_t n) {
        const unsigned char* p = (const unsigned char*)data;
        uint32_t c = ~crc;
        while (n >= 8) {
            uint32_t one, two;
            memcpy(&one, p, 4);
            memcpy(&two, p + 4, 4);
            one ^= c;  /* little-endian, as every machine this builds on */
            c = mm_crc_table[7][one & 0xFF] ^ mm_crc_table[6][(one >> 8) & 0xFF]
                ^ mm_crc_table[5][(one >> 16) & 0xFF] ^ mm_crc_table[4][one >> 24]
                ^ mm_crc_table[3][two & 0xFF] ^ mm_crc_table[2][(two >> 8) & 0xFF]
                ^ mm_crc_table[1][(two >> 16) & 0xFF] ^ mm_crc_table[0][two >> 24];
            p += 8;
            n -= 8;
        }
        while (n--) c = mm_crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
        return ~c;
    }
    """
    cdef struct Level "MmLevel":
        double size
        PyObject* price_text  # owned, or NULL where no strings are kept
        PyObject* size_text
    cdef struct Entry "MmEntry":
        double price
        double size
        PyObject* price_text  # borrowed from `Levels.owner`
        PyObject* size_text
    bint mm_decimal(const char* s, Py_ssize_t n, double* out) noexcept
    void mm_crc_init()
    uint32_t mm_crc32(uint32_t crc, const char* data, size_t n)

ctypedef cmap[double, Level] LevelMap
ctypedef cmap[double, Level].iterator LevelIter

cdef extern from *:
    LevelIter mm_insert(LevelMap& ladder, LevelIter hint, double key, const Level& level)

mm_crc_init()

cdef double INF = float("inf")
cdef object LIVE = BookState.LIVE
cdef PyTypeObject* _BOOK_TOP = <PyTypeObject*>BookTop
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
    buf = _utf8(<PyObject*>text, &n)
    if n == 0:
        return False
    if mm_decimal(buf, n, out):
        return True
    out[0] = PyOS_string_to_double(buf, &end, NULL)
    if end != buf + n:
        if PyErr_Occurred() != NULL:
            PyErr_Clear()
        return False
    return True


cdef inline const char* _utf8(PyObject* text, Py_ssize_t* n) noexcept:
    """A str's UTF-8 bytes (its own buffer when ASCII); empty if they cannot be had."""
    cdef const char* buf
    if PyUnicode_IS_COMPACT_ASCII(text):
        n[0] = PyUnicode_GET_LENGTH(text)
        return <const char*>PyUnicode_DATA(text)
    buf = PyUnicode_AsUTF8AndSize(text, n)
    if buf == NULL:
        PyErr_Clear()
        n[0] = 0
        return ""
    return buf


cdef inline bint _number(object value, double* out):
    """True, with the value, for a JSON number (float or int, not bool)."""
    if type(value) is float or type(value) is int:
        out[0] = <double>value
        return True
    return False


cdef class Levels:
    """One decoded frame side: validated prices and sizes as C doubles, in the venue's order,
    and (for a checksum) the venue's strings, held alive by `owner`."""

    cdef vector[Entry] entries
    cdef object owner

    def __len__(self) -> int:
        return self.entries.size()

    def __bool__(self) -> bool:
        return not self.entries.empty()

    def pairs(self) -> list:
        """(price, size) per level, in order (for tests and debugging)."""
        return [(e.price, e.size) for e in self.entries]

    def texts(self) -> list:
        """(price text, size text) per level, where kept."""
        return [
            (<object>e.price_text, <object>e.size_text)
            for e in self.entries
            if e.price_text != NULL
        ]


cdef Levels _from_reference(object decoded, bint wire):
    """What the reference decoder returned (tuples), as Levels."""
    cdef Levels out = Levels()
    cdef Entry entry
    owner = []
    entry.price_text = NULL
    entry.size_text = NULL
    for level in decoded:
        entry.price = level[0]
        entry.size = level[1]
        if wire:
            owner.append(level)
            entry.price_text = <PyObject*>level[2]
            entry.size_text = <PyObject*>level[3]
        out.entries.push_back(entry)
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
        cdef Entry entry
        cdef object row
        if type(raw) is not list:
            return None
        n = PyList_GET_SIZE(raw)
        out = Levels()
        out.entries.reserve(n)
        entry.price_text = NULL
        entry.size_text = NULL
        for i in range(n):
            row = <object>PyList_GET_ITEM(raw, i)
            if type(row) is not list or PyList_GET_SIZE(row) < 2:
                return None
            p = <object>PyList_GET_ITEM(row, 0)
            q = <object>PyList_GET_ITEM(row, 1)
            if not _decimal(p, &entry.price) or not _decimal(q, &entry.size):
                return None
            if not (0.0 < entry.price < INF and 0.0 <= entry.size < INF):
                return None
            if wire:
                entry.price_text = <PyObject*>p
                entry.size_text = <PyObject*>q
            out.entries.push_back(entry)
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
        cdef Entry entry
        cdef int price_decimals = formats[0]
        cdef int size_decimals = formats[1]
        cdef PyObject* found
        if type(raw) is list:
            n = PyList_GET_SIZE(raw)
            out = Levels()
            out.entries.reserve(n)
            owner = []
            for i in range(n):
                item = <object>PyList_GET_ITEM(raw, i)
                if type(item) is not dict:
                    break
                found = PyDict_GetItem(item, "price")
                if found == NULL or not _number(<object>found, &entry.price):
                    break
                found = PyDict_GetItem(item, "qty")
                if found == NULL or not _number(<object>found, &entry.size):
                    break
                if not (0.0 < entry.price < INF and 0.0 <= entry.size < INF):
                    break
                texts = (_fixed(entry.price, price_decimals), _fixed(entry.size, size_decimals))
                owner.append(texts)
                entry.price_text = <PyObject*>texts[0]
                entry.size_text = <PyObject*>texts[1]
                out.entries.push_back(entry)
            else:
                out.owner = owner
                return out
        reference = _reference.PairFormats(f".{price_decimals}f", f".{size_decimals}f")
        return _from_reference(_reference.kraken_numbers(raw, reference), True)

    def sided(
        self, raw: object, bid: str, ask: str, price_key: str, size_key: str, side_key: str
    ) -> tuple:
        """One list of entries naming their side (Coinbase `updates`) -> (bids, asks); the
        entries are dicts, or objects of one slotted type (msgspec Structs), whose fields are
        read at their slots."""
        cdef Levels bids = Levels()
        cdef Levels asks = Levels()
        cdef Py_ssize_t i, n
        cdef Entry entry
        cdef PyObject* p
        cdef PyObject* q
        cdef PyObject* s
        cdef PyObject* kind = NULL  # the entries' type, once their slots are known
        cdef Py_ssize_t at_p = 0, at_q = 0, at_s = 0
        entry.price_text = NULL
        entry.size_text = NULL
        if type(raw) is list:
            n = PyList_GET_SIZE(raw)
            for i in range(n):
                item = <object>PyList_GET_ITEM(raw, i)
                if type(item) is dict:
                    p = PyDict_GetItem(item, price_key)
                    q = PyDict_GetItem(item, size_key)
                    s = PyDict_GetItem(item, side_key)
                else:
                    if kind != <PyObject*>Py_TYPE(item):
                        if kind != NULL:
                            break  # entries of two types: the reference judges them
                        at_p = _slot(type(item), price_key)
                        at_q = _slot(type(item), size_key)
                        at_s = _slot(type(item), side_key)
                        if at_p == 0 or at_q == 0 or at_s == 0:
                            break
                        kind = <PyObject*>Py_TYPE(item)
                    p = (<PyObject**>((<char*><PyObject*>item) + at_p))[0]
                    q = (<PyObject**>((<char*><PyObject*>item) + at_q))[0]
                    s = (<PyObject**>((<char*><PyObject*>item) + at_s))[0]
                if p == NULL or q == NULL or s == NULL:
                    break
                if not _decimal(<object>p, &entry.price) or not _decimal(<object>q, &entry.size):
                    break
                if not (0.0 < entry.price < INF and 0.0 <= entry.size < INF):
                    break
                if <object>s is bid or <object>s == bid:
                    bids.entries.push_back(entry)
                elif <object>s is ask or <object>s == ask:
                    asks.entries.push_back(entry)
                else:
                    break
            else:
                return bids, asks
        ref_bids, ref_asks = self.reference.sided(raw, bid, ask, price_key, size_key, side_key)
        return _from_reference(ref_bids, False), _from_reference(ref_asks, False)


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int T_OBJECT_EX


cdef Py_ssize_t _slot(type kind, str name):
    """The offset of an object field `name` in instances of `kind` (a slot of a member
    descriptor, as msgspec Structs and `__slots__` classes have); 0 if it has none."""
    descr = None
    for klass in kind.__mro__:
        descr = klass.__dict__.get(name)
        if descr is not None:
            break
    if descr is None or type(descr).__name__ != "member_descriptor":
        return 0
    if (<PyMemberDescrObject*>descr).d_member.type != T_OBJECT_EX:
        return 0
    return (<PyMemberDescrObject*>descr).d_member.offset


cdef str _fixed(double value, int decimals):
    cdef char* text = PyOS_double_to_string(value, b"f", decimals, 0, NULL)
    try:
        return text.decode("ascii")
    finally:
        PyMem_Free(text)


# --- the book ---------------------------------------------------------------------------------


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

    cdef inline void _set(self, double key, const Entry& entry):
        """Set a level; a zero size deletes it (a price not held: nothing to do)."""
        cdef LevelIter it = self.ladder.lower_bound(key)
        cdef Level level
        if entry.size == 0.0:
            if it != self.ladder.end() and deref(it).first == key:
                self._erase(it)
            return
        if it != self.ladder.end() and deref(it).first == key:
            deref(it).second.size = entry.size
            if self.keep_wire:
                Py_XINCREF(entry.price_text)
                Py_XINCREF(entry.size_text)
                Py_XDECREF(deref(it).second.price_text)
                Py_XDECREF(deref(it).second.size_text)
                deref(it).second.price_text = entry.price_text
                deref(it).second.size_text = entry.size_text
            return
        level.size = entry.size
        level.price_text = NULL
        level.size_text = NULL
        if self.keep_wire:
            Py_XINCREF(entry.price_text)
            Py_XINCREF(entry.size_text)
            level.price_text = entry.price_text
            level.size_text = entry.size_text
        mm_insert(self.ladder, it, key, level)

    cdef double _edge(self, int watch):
        """The key of the `watch`-th best level; +inf when the side is shorter."""
        cdef LevelIter it = self.ladder.begin()
        cdef int i = 1
        if <size_t>watch > self.ladder.size():
            return INF
        while i < watch:
            inc(it)
            i += 1
        return deref(it).first

    cdef bint _apply(self, Levels levels, int watch):
        """Set every level in order; whether any was at or better than the `watch`-th best
        level before (the best `watch` levels may have changed)."""
        cdef size_t i
        cdef double key
        cdef double sign = self.sign
        cdef double edge = self._edge(watch) if watch > 0 else -INF
        cdef bint touched = False
        for i in range(levels.entries.size()):
            key = sign * levels.entries[i].price
            if key <= edge:
                touched = True
            self._set(key, levels.entries[i])
        return touched

    cdef void _load(self, Levels levels):
        """Replace the side; zero sizes are ignored, the last of a repeated price wins (as
        the reference's dict). Levels usually come best first: each goes in at the end."""
        cdef size_t i, before
        cdef Level level
        cdef LevelIter it
        cdef double sign = self.sign
        self._clear()
        for i in range(levels.entries.size()):
            if levels.entries[i].size == 0.0:
                continue
            level.size = levels.entries[i].size
            level.price_text = NULL
            level.size_text = NULL
            if self.keep_wire:
                level.price_text = levels.entries[i].price_text
                level.size_text = levels.entries[i].size_text
                Py_XINCREF(level.price_text)
                Py_XINCREF(level.size_text)
            before = self.ladder.size()
            it = mm_insert(self.ladder, self.ladder.end(), sign * levels.entries[i].price, level)
            if self.ladder.size() == before:  # a repeated price: the later level wins
                if self.keep_wire:
                    Py_XDECREF(deref(it).second.price_text)
                    Py_XDECREF(deref(it).second.size_text)
                deref(it).second = level

    cdef bint _truncate(self, size_t depth):
        cdef LevelIter it
        cdef bint dropped = False
        while self.ladder.size() > depth:
            it = self.ladder.end()
            dec(it)
            self._erase(it)
            dropped = True
        return dropped

    def truncate(self, depth: int) -> None:
        """Drop levels beyond `depth`."""
        self._truncate(depth)

    def apply(self, levels: Levels) -> None:
        """Set each level in order (zero size deletes)."""
        self._apply(levels, 0)

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

    cdef object _top(self, Py_ssize_t n, bint sizes):
        """The best `n` prices (or their sizes) as a list of floats."""
        cdef Py_ssize_t count = min(n, <Py_ssize_t>self.ladder.size())
        cdef Py_ssize_t i
        cdef LevelIter it = self.ladder.begin()
        out = PyList_New(count)
        for i in range(count):
            value = PyFloat_FromDouble(
                deref(it).second.size if sizes else self.sign * deref(it).first
            )
            Py_INCREF(value)
            PyList_SET_ITEM(out, i, value)
            inc(it)
        return out


cdef class L2Book:
    """The verified book of one instrument on one venue, with its sync state (the methods
    and attributes of `book.L2Book`). With a `checksum`, each side's checksum text is kept
    between messages and rebuilt only when a message touched that side's top levels."""

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
    cdef int watch  # levels the checksum covers (0: none)
    cdef string ask_text  # Kraken: each side's checksum text; OKX: the whole text in ask_text
    cdef string bid_text
    cdef bint asks_changed
    cdef bint bids_changed
    cdef object crc  # the last value while neither side changed; None: to compute

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
            self.watch = 0
        elif checksum == "kraken":
            self.kind = _KRAKEN
            self.watch = KRAKEN_LEVELS
        elif checksum == "okx":
            self.kind = _OKX
            self.watch = OKX_LEVELS
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
        self._changed()

    cdef inline void _changed(self):
        self.asks_changed = True
        self.bids_changed = True
        self.crc = None

    def clear(self) -> None:
        """Forget every level (before a resync); the state is the caller's to set."""
        self.bids._clear()
        self.asks._clear()
        self.venue_seq = -1
        self.cross_seq = -1
        self._changed()

    def truncate(self) -> None:
        self.bids._truncate(self.depth)
        self.asks._truncate(self.depth)
        self._changed()

    def load(self, bids: object, asks: object) -> None:
        """A snapshot: replace both sides with decoded levels, truncated to depth."""
        self.bids._load(_levels(bids))
        self.asks._load(_levels(asks))
        self.bids._truncate(self.depth)
        self.asks._truncate(self.depth)
        self._changed()

    def apply(self, bids: object, asks: object) -> None:
        """A delta: every level of both sides (set, delete on zero size, deletes of absent
        levels ignored), then truncation to depth."""
        cdef bint dropped
        if type(asks) is Levels:
            if self.asks._apply(<Levels>asks, self.watch):
                self.asks_changed = True
                self.crc = None
        elif asks:
            _levels(asks)
        if type(bids) is Levels:
            if self.bids._apply(<Levels>bids, self.watch):
                self.bids_changed = True
                self.crc = None
        elif bids:
            _levels(bids)
        dropped = self.bids._truncate(self.depth)
        dropped = self.asks._truncate(self.depth) or dropped
        if dropped and self.depth < self.watch:
            self._changed()

    def update(self, ev: object) -> object:
        """A delta its sequence rule accepted, in one call: `apply` its levels, take its
        cross sequence and venue time; the book's checksum when the message carries the
        venue's (to compare), else None. (`ev` is a BookUpdate: its slots are read in C.)"""
        cdef PyObject* bids
        cdef PyObject* asks
        cdef PyObject* cross_seq
        cdef PyObject* ts_ns
        cdef PyObject* checksum
        if type(ev) is not BookUpdate or _AT_CHECKSUM == 0:
            raise TypeError(f"a BookUpdate, not {type(ev).__name__}")
        bids = _at(ev, _AT_BIDS)
        asks = _at(ev, _AT_ASKS)
        cross_seq = _at(ev, _AT_CROSS_SEQ)
        ts_ns = _at(ev, _AT_TS_NS)
        checksum = _at(ev, _AT_CHECKSUM)
        if bids == NULL or asks == NULL or cross_seq == NULL or ts_ns == NULL or checksum == NULL:
            raise AttributeError("a BookUpdate with a field not set")
        self.apply(<object>bids, <object>asks)
        if <object>cross_seq >= 0:
            self.cross_seq = <object>cross_seq
        if <object>ts_ns is not None:
            self.exchange_ts_ns = <object>ts_ns
        if <object>checksum is not None and self.kind != 0:
            return self.checksum()
        return None

    def is_crossed(self) -> bool:
        if self.bids.ladder.empty() or self.asks.ladder.empty():
            return False
        return -deref(self.bids.ladder.begin()).first >= deref(self.asks.ladder.begin()).first

    def top(self, n: int) -> object:
        """The best `n` levels per side as a BookTop (levels only when LIVE)."""
        cdef bint live = self.state is LIVE
        cdef Py_ssize_t depth = n if live else 0
        top = PyType_GenericAlloc(_BOOK_TOP, 11)
        _put(top, 0, self.venue)
        _put(top, 1, self.instrument)
        _put(top, 2, _LIVE_TEXT if live else self.state.value)
        _put(top, 3, self.venue_seq)
        _put(top, 4, self.cross_seq)
        _put(top, 5, self.exchange_ts_ns)
        _put(top, 6, self.recv_ts_ns)
        _put(top, 7, self.bids._top(depth, False))
        _put(top, 8, self.bids._top(depth, True))
        _put(top, 9, self.asks._top(depth, False))
        _put(top, 10, self.asks._top(depth, True))
        return top

    def checksum(self) -> int:
        """The venue's CRC32 of the book as it is now (`checksum_kind`)."""
        cdef uint32_t crc
        if self.crc is not None:
            return self.crc
        if self.kind == _KRAKEN:
            if self.asks_changed:
                self.ask_text.clear()
                _kraken_text(&self.ask_text, self.asks, KRAKEN_LEVELS)
            if self.bids_changed:
                self.bid_text.clear()
                _kraken_text(&self.bid_text, self.bids, KRAKEN_LEVELS)
            crc = mm_crc32(0, self.ask_text.c_str(), self.ask_text.size())
            crc = mm_crc32(crc, self.bid_text.c_str(), self.bid_text.size())
            self.crc = crc
        elif self.kind == _OKX:
            self.ask_text.clear()
            _okx_text(&self.ask_text, self.bids, self.asks, OKX_LEVELS)
            crc = mm_crc32(0, self.ask_text.c_str(), self.ask_text.size())
            self.crc = <long long>crc - 0x1_0000_0000 if crc >= 0x8000_0000 else <long long>crc
        else:
            raise ValueError(f"{self.venue} {self.instrument}: this book has no checksum")
        self.asks_changed = False
        self.bids_changed = False
        return self.crc


cdef inline PyObject* _at(object obj, Py_ssize_t offset) noexcept:
    """The object in a slot (borrowed), NULL if unset."""
    return (<PyObject**>((<char*><PyObject*>obj) + offset))[0]


cdef Py_ssize_t _AT_BIDS = _slot(BookUpdate, "bids")
cdef Py_ssize_t _AT_ASKS = _slot(BookUpdate, "asks")
cdef Py_ssize_t _AT_CROSS_SEQ = _slot(BookUpdate, "cross_seq")
cdef Py_ssize_t _AT_TS_NS = _slot(BookUpdate, "ts_ns")
cdef Py_ssize_t _AT_CHECKSUM = _slot(BookUpdate, "checksum")


cdef inline void _put(object top, Py_ssize_t i, object value):
    Py_INCREF(value)  # SET_ITEM steals a reference
    PyTuple_SET_ITEM(top, i, value)


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


cdef extern from "string.h":
    const void* memchr(const void* s, int c, size_t n)


cdef inline void _kraken_form(string* out, PyObject* text) noexcept:
    """Kraken's checksum form of a decimal string: no `.`, no leading zeros."""
    cdef Py_ssize_t n, i = 0
    cdef const char* buf
    cdef const char* dot
    if text == NULL:
        return
    buf = _utf8(text, &n)
    while i < n and (buf[i] == b"0" or buf[i] == b"."):
        i += 1
    dot = <const char*>memchr(buf + i, b".", n - i)
    if dot == NULL:
        out.append(buf + i, n - i)
        return
    out.append(buf + i, dot - (buf + i))
    out.append(dot + 1, buf + n - dot - 1)


cdef void _kraken_text(string* out, BookSide side, int n) noexcept:
    cdef LevelIter it = side.ladder.begin()
    cdef int i = 0
    while it != side.ladder.end() and i < n:
        _kraken_form(out, deref(it).second.price_text)
        _kraken_form(out, deref(it).second.size_text)
        inc(it)
        i += 1


cdef inline void _append(string* out, PyObject* text) noexcept:
    cdef Py_ssize_t n
    cdef const char* buf
    if text == NULL:
        return
    buf = _utf8(text, &n)
    out.append(buf, n)


cdef inline void _okx_level(string* out, const Level& level) noexcept:
    """`price:size`, after a `:` unless it is the first level of the text."""
    if not out.empty():
        out.push_back(b":")
    _append(out, level.price_text)
    out.push_back(b":")
    _append(out, level.size_text)


cdef void _okx_text(string* out, BookSide bids, BookSide asks, int n) noexcept:
    """`bid1:ask1:bid2:ask2...` as `price:size`, a shorter side simply ending (`out` starts
    empty)."""
    cdef LevelIter b = bids.ladder.begin()
    cdef LevelIter a = asks.ladder.begin()
    cdef int i
    for i in range(n):
        if b != bids.ladder.end():
            _okx_level(out, deref(b).second)
            inc(b)
        if a != asks.ladder.end():
            _okx_level(out, deref(a).second)
            inc(a)
