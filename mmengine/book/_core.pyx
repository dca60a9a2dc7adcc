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

cimport cython
from cpython.object cimport Py_TYPE, PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF, Py_XINCREF
from cython.operator cimport dereference as deref, preincrement as inc, predecrement as dec
from libc.stdint cimport uint32_t, uint64_t
from libcpp.map cimport map as cmap
from libcpp.string cimport string
from libcpp.vector cimport vector

from mmengine.book import levels as _reference
from mmengine.book.checksum import KRAKEN_LEVELS as _KRAKEN_N, OKX_LEVELS as _OKX_N
from mmengine.book.events import AuditTop, BookUpdate, ContractSize
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
    PyObject* PyTuple_GET_ITEM(object tup, Py_ssize_t i)
    object PyFloat_FromDouble(double value)
    object PyLong_FromDouble(double value)
    str PyUnicode_FromStringAndSize(const char* text, Py_ssize_t size)
    double PyFloat_AS_DOUBLE(PyObject* value)
    bint PyUnicode_IS_COMPACT_ASCII(PyObject* text)
    Py_ssize_t PyUnicode_GET_LENGTH(PyObject* text)
    void* PyUnicode_DATA(PyObject* text)
    object PyType_GenericAlloc(PyTypeObject* kind, Py_ssize_t items)
    PyObject* PyUnicode_New(Py_ssize_t size, unsigned int maxchar) except NULL
    Py_ssize_t Py_REFCNT(PyObject* obj)
    str _new_ascii "PyUnicode_New"(Py_ssize_t size, unsigned int maxchar)

cdef extern from *:
    """
    #include <map>
    #include <stdint.h>
    #include <string.h>
    #include <string>
    #include <tuple>
    /* A level: its size, the venue's strings where the book keeps them (a copy: no Python
       object per level), and its Kraken checksum form (`price + qty`) once written:
       `form_len` -1 not yet, -2 longer than `form` (written from the strings each time). */
    struct MmLevel {
        double size; std::string price_text; std::string size_text; int form_len;
        char form[44];
    };
    /* A decoded level: its strings (NULL: none) are in a buffer `Levels.owner` holds. */
    struct MmEntry {
        double price; double size; const char* price_text; const char* size_text;
        int price_len; int size_len;
    };
    typedef std::map<double, MmLevel> MmLadder;

    /* Kraken's checksum form of a decimal string (no leading zeros or dots, then no `.`,
       as `_kraken_form`) into out; its length, or -1 where it is longer than cap. */
    static inline int mm_kraken_form(const std::string& text, char* out, int cap) {
        const char* b = text.data();
        size_t n = text.size(), i = 0;
        int k = 0, dot = 0;
        while (i < n && (b[i] == '0' || b[i] == '.')) i++;
        for (; i < n; i++) {
            if (b[i] == '.' && !dot) { dot = 1; continue; }
            if (k >= cap) return -1;
            out[k++] = b[i];
        }
        return k;
    }

    /* Set the level at `key` (a new one at `hint`, or the one there) from an entry. */
    static inline MmLadder::iterator mm_put(MmLadder& ladder, MmLadder::iterator hint,
                                            double key, const MmEntry& entry, int texts) {
        MmLadder::iterator it = ladder.emplace_hint(
            hint, std::piecewise_construct, std::forward_as_tuple(key), std::forward_as_tuple());
        MmLevel& level = it->second;
        level.size = entry.size;
        level.form_len = -1;
        if (texts) {
            if (entry.price_text) level.price_text.assign(entry.price_text, entry.price_len);
            else level.price_text.clear();
            if (entry.size_text) level.size_text.assign(entry.size_text, entry.size_len);
            else level.size_text.clear();
        }
        return it;
    }

    /* A plain decimal (digits, at most one dot, no sign or exponent) as the double float()
       gives: up to 19 significant digits make an exact integer m, and when m <= 2^53 and
       the scale k <= 22, m / 10^k is one correctly rounded IEEE division of two exact
       values (Clinger's fast path), the same double as float(). Returns 0 for anything
       else, which the caller converts the slow way. */
    static const double mm_pow10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9,
        1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    static inline double mm_pow10_at(int k) { return mm_pow10[k]; }
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

    /* mm_decimal in fewer steps, the same value where both give one: a loop per run of
       digits instead of a test per character, and a fraction's trailing zeros (which change
       no value) dropped from the text rather than divided out. */
    static inline int mm_decimal_runs(const char* s, Py_ssize_t n, double* out) {
        const char* p = s;
        const char* end = s + n;
        const char* from;
        uint64_t m = 0;
        int digits, scale = 0, seen;
        while (p < end && *p == '0') p++;
        from = p;
        while (p < end && (unsigned char)(*p - '0') < 10) m = m * 10 + (uint64_t)(*p++ - '0');
        digits = (int)(p - from);
        seen = p > s;
        if (p < end && *p == '.') {
            const char* fraction = ++p;
            while (end > fraction && end[-1] == '0') { end--; seen = 1; }
            if (m == 0) while (p < end && *p == '0') p++;  /* no significant digit yet */
            from = p;
            while (p < end && (unsigned char)(*p - '0') < 10) m = m * 10 + (uint64_t)(*p++ - '0');
            digits += (int)(p - from);
            scale = (int)(p - fraction);
            seen = seen || p > fraction;
        }
        if (p != end || !seen || digits > 19) return 0;
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
        string price_text  # empty where no strings are kept
        string size_text
        int form_len  # the Kraken checksum form in `form`: -1 not written yet, -2 too long
        char form[44]
    cdef struct Entry "MmEntry":
        double price
        double size
        const char* price_text  # in a buffer `Levels.owner` holds; NULL: none
        const char* size_text
        int price_len
        int size_len
    int mm_kraken_form(const string& text, char* out, int cap) noexcept
    bint mm_decimal(const char* s, Py_ssize_t n, double* out) noexcept
    bint mm_decimal_runs(const char* s, Py_ssize_t n, double* out) noexcept
    double mm_pow10_of "mm_pow10_at"(int k) noexcept
    void mm_crc_init()
    uint32_t mm_crc32(uint32_t crc, const char* data, size_t n)

ctypedef cmap[double, Level] LevelMap
ctypedef cmap[double, Level].iterator LevelIter

cdef extern from *:
    LevelIter mm_put(LevelMap& ladder, LevelIter hint, double key, const Entry& entry,
                     bint texts)

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


@cython.no_gc  # (its `owner` is the decoded level list: it can be in no reference cycle)
@cython.freelist(16)
cdef class Levels:
    """One decoded frame side: validated prices and sizes as C doubles, in the venue's order,
    and (for a checksum) the venue's strings, held alive by `owner`."""

    cdef vector[Entry] entries
    cdef object owner  # what holds the buffers of the entries' strings

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
            (
                PyUnicode_FromStringAndSize(e.price_text, e.price_len),
                PyUnicode_FromStringAndSize(e.size_text, e.size_len),
            )
            for e in self.entries
            if e.price_text != NULL
        ]


cdef inline void _texts(Entry* entry, object price, object size) noexcept:
    """The entry's strings: those of two str objects (held by the Levels' owner)."""
    cdef Py_ssize_t n
    entry.price_text = _utf8(<PyObject*>price, &n)
    entry.price_len = n
    entry.size_text = _utf8(<PyObject*>size, &n)
    entry.size_len = n


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
            _texts(&entry, level[2], level[3])
        out.entries.push_back(entry)
    out.owner = owner
    return out


cdef class LevelDecoder:
    """One venue connection's level decoders (the methods of `levels.LevelDecoder`), in C."""

    cdef object reference
    cdef object sided_type  # the slotted type of `sided` entries last seen, its keys, slots
    cdef tuple sided_keys
    cdef Py_ssize_t sided_at_p, sided_at_q, sided_at_s
    cdef object numbers_type  # the slotted type of Kraken v2 levels last seen (msgspec)
    cdef PyObject* numbers_kind
    cdef Py_ssize_t numbers_at_p, numbers_at_q

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
                _texts(&entry, p, q)
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
        out = self._numbers(raw, formats)
        if out is not None:
            return out
        price_decimals, size_decimals = formats
        reference = _reference.PairFormats(f".{price_decimals}f", f".{size_decimals}f")
        return _from_reference(_reference.kraken_numbers(raw, reference), True)

    cdef Levels _numbers(self, object raw, tuple formats):
        """`kraken_numbers` of clean input; None otherwise."""
        cdef Levels out
        cdef Py_ssize_t i, n
        cdef Entry entry
        cdef int price_decimals = formats[0]
        cdef int size_decimals = formats[1]
        cdef PyObject* found
        if type(raw) is not list:
            return None
        cdef PyObject* kind = self.numbers_kind  # the entries' type whose slots are known
        cdef Py_ssize_t at_p = self.numbers_at_p, at_q = self.numbers_at_q
        n = PyList_GET_SIZE(raw)
        out = Levels()
        out.entries.reserve(n)
        owner = []
        for i in range(n):
            item = <object>PyList_GET_ITEM(raw, i)
            if type(item) is dict:
                found = PyDict_GetItem(item, "price")
                if found == NULL or not _number(<object>found, &entry.price):
                    return None
                found = PyDict_GetItem(item, "qty")
                if found == NULL or not _number(<object>found, &entry.size):
                    return None
            else:
                # objects of one slotted type (msgspec Structs): `price`, `qty` at slots
                if kind != <PyObject*>Py_TYPE(item):
                    at_p = _slot(type(item), "price")
                    at_q = _slot(type(item), "qty")
                    if at_p == 0 or at_q == 0:
                        return None
                    kind = <PyObject*>Py_TYPE(item)
                    # kept for the next call (the type is held, so its address stays its)
                    self.numbers_type = type(item)
                    self.numbers_kind = kind
                    self.numbers_at_p = at_p
                    self.numbers_at_q = at_q
                found = (<PyObject**>((<char*><PyObject*>item) + at_p))[0]
                if found == NULL or not _number(<object>found, &entry.price):
                    return None
                found = (<PyObject**>((<char*><PyObject*>item) + at_q))[0]
                if found == NULL or not _number(<object>found, &entry.size):
                    return None
            if not (0.0 < entry.price < INF and 0.0 <= entry.size < INF):
                return None
            texts = (_fixed(entry.price, price_decimals), _fixed(entry.size, size_decimals))
            owner.append(texts)
            _texts(&entry, texts[0], texts[1])
            out.entries.push_back(entry)
        out.owner = owner
        return out

    # --- whole book messages in one call (the venue module's fast path) ----------------
    # Each returns the BookUpdate its venue module's own decoding would give, or None when
    # anything is not as expected: the venue module then decodes the message its own way
    # (which also raises what the reference raises). The reference decoder's always return
    # None (`levels.LevelDecoder`).

    def rows_update(
        self, instrument: str, snapshot: bool, bids: object, asks: object, last_id: object,
        cross_seq: object, ts_ms: object
    ) -> object:
        """Bybit `orderbook`: `rows` of both sides, `u` (int), `seq` (int or None: -1) and
        the time in ms (int) -> BookUpdate."""
        cdef Levels b, a
        if type(last_id) is not int or type(ts_ms) is not int:
            return None
        if cross_seq is None:
            cross_seq = -1
        elif type(cross_seq) is not int:
            return None
        b = self._rows(bids, False)
        if b is None:
            return None
        a = self._rows(asks, False)
        if a is None:
            return None
        return _new_update(
            instrument, snapshot, b, a, last_id, None, cross_seq, ts_ms * 1_000_000, None
        )

    def kraken_update(
        self, instrument: str, asks: object, bids: object, checksum: object
    ) -> object:
        """A Kraken v1 update of one object (`a` and/or `b`, with `c`): `kraken_rows` of
        each side given, the time of the last level (of `b`, else `a`), `c` as an int."""
        cdef object a = []
        cdef object b = []
        cdef object last = None
        cdef object c
        cdef object ts_ns = None
        if type(checksum) is not str:
            return None
        c = _digits(checksum)
        if c is None:
            return None
        if asks is not None:
            a = self._rows(asks, True)
            if a is None:
                return None
            if PyList_GET_SIZE(asks):
                last = <object>PyList_GET_ITEM(asks, PyList_GET_SIZE(asks) - 1)
        if bids is not None:
            b = self._rows(bids, True)
            if b is None:
                return None
            if PyList_GET_SIZE(bids):
                last = <object>PyList_GET_ITEM(bids, PyList_GET_SIZE(bids) - 1)
        if last is not None:
            if PyList_GET_SIZE(last) < 3:
                return None
            ts_ns = _seconds_ns(<object>PyList_GET_ITEM(last, 2))
            if ts_ns is None:
                return None
        return _new_update(instrument, False, b, a, None, None, -1, ts_ns, c)

    def kraken_snapshot(self, instrument: str, asks: object, bids: object) -> object:
        """A Kraken v1 snapshot (`as`, `bs`): `kraken_rows` of each side, the time of its
        newest level (the greatest `seconds.micros` string, as `max()` of them)."""
        cdef Levels a, b
        cdef object newest = None
        a = self._rows(asks, True)
        if a is None:
            return None
        b = self._rows(bids, True)
        if b is None:
            return None
        newest = _newest_third(asks, newest)
        if newest is not _NO_TIME:
            newest = _newest_third(bids, newest)
        if newest is _NO_TIME:
            return None
        ts_ns = _seconds_ns("0" if newest is None else newest)
        if ts_ns is None:
            return None
        return _new_update(instrument, True, b, a, None, None, -1, ts_ns, None)

    def kraken_numbers_update(
        self, instrument: str, snapshot: bool, bids: object, asks: object, formats: tuple,
        checksum: object, timestamp: object
    ) -> object:
        """A Kraken v2 `book` entry: `kraken_numbers` of both sides, the integer checksum
        (or None), the RFC 3339 timestamp (or none)."""
        cdef Levels b, a
        cdef object ts_ns = None
        if checksum is not None and type(checksum) is not int:
            return None
        if timestamp:
            ts_ns = _rfc3339_ns(timestamp)
            if ts_ns is None:
                return None
        b = self._numbers(bids or [], formats)
        if b is None:
            return None
        a = self._numbers(asks or [], formats)
        if a is None:
            return None
        return _new_update(instrument, snapshot, b, a, None, None, -1, ts_ns, checksum)

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
                        if (
                            type(item) is self.sided_type
                            and price_key is self.sided_keys[0]
                            and size_key is self.sided_keys[1]
                            and side_key is self.sided_keys[2]
                        ):
                            at_p = self.sided_at_p  # (as found on an earlier frame)
                            at_q = self.sided_at_q
                            at_s = self.sided_at_s
                        else:
                            at_p = _slot(type(item), price_key)
                            at_q = _slot(type(item), size_key)
                            at_s = _slot(type(item), side_key)
                            if at_p == 0 or at_q == 0 or at_s == 0:
                                break
                            self.sided_type = type(item)
                            self.sided_keys = (price_key, size_key, side_key)
                            self.sided_at_p = at_p
                            self.sided_at_q = at_q
                            self.sided_at_s = at_s
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
    """`format(value, f".{decimals}f")`. A value that is a whole number of 10**-decimals
    (what a venue writes with that precision) is written from that integer: the correctly
    rounded text is then that integer's digits, which `PyOS_double_to_string` would also
    give, at a fraction of its cost; anything else is written by it."""
    cdef double scaled
    cdef long long whole
    cdef char[40] buf
    cdef int n = 0, i, lo, hi
    cdef char swap
    if 0.0 <= value and 0 <= decimals <= 15:
        scaled = value * mm_pow10_of(decimals)
        if scaled < 562949953421312.0:  # 2**49: the product is within 1/16 of exact
            whole = <long long>(scaled + 0.5)
            if -0.125 <= scaled - <double>whole <= 0.125:
                # the digits, least significant first, at least decimals + 1 of them
                while whole > 0 or n <= decimals:
                    if n == decimals and decimals > 0:
                        buf[n] = c'.'
                        n += 1
                    buf[n] = c'0' + <char>(whole % 10)
                    whole //= 10
                    n += 1
                lo = 0
                hi = n - 1
                while lo < hi:
                    swap = buf[lo]
                    buf[lo] = buf[hi]
                    buf[hi] = swap
                    lo += 1
                    hi -= 1
                out = _new_ascii(n, 127)  # (digits and a dot: no decoding needed)
                memcpy(PyUnicode_DATA(<PyObject*>out), buf, n)
                return out
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
    cdef list top_prices  # the lists of the last BookTop (`_top_lists`); None: none yet
    cdef list top_sizes
    cdef Py_ssize_t top_n  # ...of its best `top_n` levels
    cdef bint top_dirty  # the side changed since (any level set, deleted or cleared)
    # the top sizes in base units (`L2Book._top_in_base`) and what they were made from
    cdef list base_sizes
    cdef list base_of_prices, base_of_sizes
    cdef double base_value
    cdef bint base_in_quote
    cdef readonly bint is_bid
    cdef readonly bint keep_wire
    cdef double sign

    def __init__(self, is_bid: bool, keep_wire: bool = False) -> None:
        self.is_bid = is_bid
        self.keep_wire = keep_wire
        self.sign = -1.0 if is_bid else 1.0
        self.top_dirty = True

    def __dealloc__(self) -> None:
        self._clear()

    cdef void _kraken_text(self, string* out, int n) noexcept:
        """Append the Kraken checksum text of the best `n` levels (venue-protocols 3.4): each
        level's form, written once from its strings and kept with the level until they
        change (a level set again, or a new one, writes it anew)."""
        cdef LevelIter it = self.ladder.begin()
        cdef int i = 0, k, q
        cdef Level* level
        cdef char[440] buf  # the forms, gathered here and appended at once
        cdef size_t used = 0
        while it != self.ladder.end() and i < n:
            level = &deref(it).second
            if level.form_len == -1:
                k = mm_kraken_form(level.price_text, level.form, sizeof(level.form))
                q = -1
                if k >= 0:
                    q = mm_kraken_form(level.size_text, level.form + k, sizeof(level.form) - k)
                level.form_len = k + q if q >= 0 else -2
            if level.form_len >= 0 and used + level.form_len <= sizeof(buf):
                memcpy(buf + used, level.form, level.form_len)
                used += level.form_len
            else:
                out.append(buf, used)
                used = 0
                if level.form_len >= 0:
                    out.append(level.form, level.form_len)
                else:
                    _kraken_form(out, level.price_text)
                    _kraken_form(out, level.size_text)
            inc(it)
            i += 1
        out.append(buf, used)

    def __len__(self) -> int:
        return self.ladder.size()

    cdef list _sizes_in_base(self, double value, bint in_quote):
        """The sizes of the last top lists (`_top_lists`) in base units: the list made last
        time while those lists (never changed once made) and the contract are the same."""
        if (
            self.base_sizes is None
            or self.base_of_sizes is not self.top_sizes
            or self.base_of_prices is not self.top_prices
            or not _same_double(self.base_value, value)
            or self.base_in_quote != in_quote
        ):
            self.base_sizes = _sizes_in_base(self.top_prices, self.top_sizes, value, in_quote)
            self.base_of_sizes = self.top_sizes
            self.base_of_prices = self.top_prices
            self.base_value = value
            self.base_in_quote = in_quote
        return self.base_sizes

    cdef void _clear(self):
        self.ladder.clear()
        self.top_dirty = True

    def clear(self) -> None:
        self._clear()

    cdef inline void _erase(self, LevelIter it):
        self.ladder.erase(it)
        self.top_dirty = True

    cdef inline void _set(self, double key, const Entry& entry):
        """Set a level; a zero size deletes it (a price not held: nothing to do)."""
        cdef LevelIter it = self.ladder.lower_bound(key)
        self.top_dirty = True
        if entry.size == 0.0:
            if it != self.ladder.end() and deref(it).first == key:
                self._erase(it)
            return
        mm_put(self.ladder, it, key, entry, self.keep_wire)  # (the one there, or a new one)

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
        cdef size_t i
        cdef double sign = self.sign
        self._clear()
        for i in range(levels.entries.size()):
            if levels.entries[i].size == 0.0:
                continue
            # (a repeated price: the level there is set again, so the later one wins)
            mm_put(self.ladder, self.ladder.end(), sign * levels.entries[i].price,
                   levels.entries[i], self.keep_wire)

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
            out.append((_str_of(deref(it).second.price_text), _str_of(deref(it).second.size_text)))
            inc(it)
            i += 1
        return out

    cdef void _top_lists(self, Py_ssize_t n) except *:
        """The best `n` prices and sizes as lists of floats in `top_prices` / `top_sizes`:
        each the list of the last call while its values are unchanged (consecutive BookTops
        share it; a BookTop is read-only), a new list otherwise. One walk of the side."""
        cdef Py_ssize_t count = min(n, <Py_ssize_t>self.ladder.size())
        cdef Py_ssize_t i
        cdef LevelIter it = self.ladder.begin()
        cdef double sign = self.sign
        cdef bint same_prices, same_sizes
        cdef double[64] small_prices, small_sizes  # a configured top is at most 50 levels
        cdef vector[double] big_prices, big_sizes  # (a tool's or a test's longer top)
        cdef double* prices_now = small_prices
        cdef double* sizes_now = small_sizes
        if not self.top_dirty and n == self.top_n and self.top_prices is not None:
            return  # (the lists are the side's as it is: the other side changed)
        if count > 64:
            big_prices.resize(count)
            big_sizes.resize(count)
            prices_now = big_prices.data()
            sizes_now = big_sizes.data()
        prices = self.top_prices
        sizes = self.top_sizes
        same_prices = prices is not None and PyList_GET_SIZE(prices) == count
        same_sizes = same_prices
        for i in range(count):
            prices_now[i] = sign * deref(it).first
            sizes_now[i] = deref(it).second.size
            if same_prices and PyFloat_AS_DOUBLE(PyList_GET_ITEM(prices, i)) != prices_now[i]:
                same_prices = False
            if same_sizes and PyFloat_AS_DOUBLE(PyList_GET_ITEM(sizes, i)) != sizes_now[i]:
                same_sizes = False
            inc(it)
        if not same_prices:
            self.top_prices = _float_list(prices_now, count)
        if not same_sizes:
            self.top_sizes = _float_list(sizes_now, count)
        self.top_dirty = False
        self.top_n = n


cdef inline void _put_again(object top, Py_ssize_t i, object value):
    """Replace item i of a tuple just built here (no one else holds it yet)."""
    cdef PyObject* old = PyTuple_GET_ITEM(top, i)
    Py_INCREF(value)
    PyTuple_SET_ITEM(top, i, value)
    Py_XDECREF(old)


cdef list _float_list(const double* values, Py_ssize_t count):
    cdef Py_ssize_t i
    out = PyList_New(count)
    for i in range(count):
        value = PyFloat_FromDouble(values[i])
        Py_INCREF(value)  # SET_ITEM steals a reference
        PyList_SET_ITEM(out, i, value)
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
    cdef uint32_t ask_crc  # Kraken: the CRC32 of `ask_text` (the bids' continue from it)

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
        self._apply_sides(bids, asks)

    cdef void _apply_sides(self, object bids, object asks) except *:
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
        if type(ev) is not BookUpdate or _AT_CHECKSUM == 0:
            raise TypeError(f"a BookUpdate, not {type(ev).__name__}")
        return self._update(ev)

    cdef object _update(self, object ev):
        cdef PyObject* bids
        cdef PyObject* asks
        cdef PyObject* cross_seq
        cdef PyObject* ts_ns
        cdef PyObject* checksum
        bids = _at(ev, _AT_BIDS)
        asks = _at(ev, _AT_ASKS)
        cross_seq = _at(ev, _AT_CROSS_SEQ)
        ts_ns = _at(ev, _AT_TS_NS)
        checksum = _at(ev, _AT_CHECKSUM)
        if bids == NULL or asks == NULL or cross_seq == NULL or ts_ns == NULL or checksum == NULL:
            raise AttributeError("a BookUpdate with a field not set")
        self._apply_sides(<object>bids, <object>asks)
        if <object>cross_seq >= 0:
            self.cross_seq = <object>cross_seq
        if <object>ts_ns is not None:
            self.exchange_ts_ns = <object>ts_ns
        if <object>checksum is not None and self.kind != 0:
            return self._checksum()
        return None

    def is_crossed(self) -> bool:
        return self._is_crossed()

    cdef inline bint _is_crossed(self):
        if self.bids.ladder.empty() or self.asks.ladder.empty():
            return False
        return -deref(self.bids.ladder.begin()).first >= deref(self.asks.ladder.begin()).first

    def top(self, n: int) -> object:
        """The best `n` levels per side as a BookTop (levels only when LIVE)."""
        return self._top_of(n)

    cdef object _top_of(self, Py_ssize_t n):
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
        if depth == 0:
            _put(top, 7, [])
            _put(top, 8, [])
            _put(top, 9, [])
            _put(top, 10, [])
        else:
            self.bids._top_lists(depth)
            self.asks._top_lists(depth)
            _put(top, 7, self.bids.top_prices)
            _put(top, 8, self.bids.top_sizes)
            _put(top, 9, self.asks.top_prices)
            _put(top, 10, self.asks.top_sizes)
        return top

    cdef object _top_in_base(self, Py_ssize_t n, double value, bint in_quote):
        """`ContractSize(value, in_quote).to_base(self.top(n))` of a LIVE book, its lists of
        sizes in base units kept with each side while its top lists are the same."""
        top = self._top_of(n)
        if self.state is not LIVE:
            return top  # (no levels to convert)
        _put_again(top, 8, self.bids._sizes_in_base(value, in_quote))
        _put_again(top, 10, self.asks._sizes_in_base(value, in_quote))
        return top

    def checksum(self) -> int:
        """The venue's CRC32 of the book as it is now (`checksum_kind`)."""
        return self._checksum()

    cdef object _checksum(self):
        cdef uint32_t crc
        if self.crc is not None:
            return self.crc
        if self.kind == _KRAKEN:
            if self.asks_changed:
                self.ask_text.clear()
                self.asks._kraken_text(&self.ask_text, KRAKEN_LEVELS)
                self.ask_crc = mm_crc32(0, self.ask_text.c_str(), self.ask_text.size())
            if self.bids_changed:
                self.bid_text.clear()
                self.bids._kraken_text(&self.bid_text, KRAKEN_LEVELS)
            crc = mm_crc32(self.ask_crc, self.bid_text.c_str(), self.bid_text.size())
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
    void* memcpy(void* dest, const void* src, size_t n)
    int memcmp(const void* a, const void* b, size_t n)


cdef inline void _kraken_form(string* out, const string& text) noexcept:
    """Kraken's checksum form of a decimal string: no `.`, no leading zeros."""
    cdef Py_ssize_t n = text.size(), i = 0
    cdef const char* buf = text.data()
    cdef const char* dot
    while i < n and (buf[i] == b"0" or buf[i] == b"."):
        i += 1
    dot = <const char*>memchr(buf + i, b".", n - i)
    if dot == NULL:
        out.append(buf + i, n - i)
        return
    out.append(buf + i, dot - (buf + i))
    out.append(dot + 1, buf + n - dot - 1)


cdef inline str _str_of(const string& text):
    """A kept string (ASCII: the decoders keep decimal strings only) as a str."""
    return PyUnicode_FromStringAndSize(text.data(), text.size())


cdef inline void _okx_level(string* out, const Level& level) noexcept:
    """`price:size`, after a `:` unless it is the first level of the text."""
    if not out.empty():
        out.push_back(b":")
    out.append(level.price_text)
    out.push_back(b":")
    out.append(level.size_text)


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


# --- the driver's per-frame path (the reference: `sync.BookDriver.receive` / `on_book`) -------


cdef inline object _field(object obj, Py_ssize_t offset):
    """A slot's object (a new reference); AttributeError where it is unset."""
    cdef PyObject* value = (<PyObject**>((<char*><PyObject*>obj) + offset))[0]
    if value == NULL:
        raise AttributeError("a slot of the driver's state is not set")
    return <object>value


cdef inline void _store(object obj, Py_ssize_t offset, object value):
    """Set a slot (the reference is taken; the old value released)."""
    cdef PyObject** at = <PyObject**>((<char*><PyObject*>obj) + offset)
    cdef PyObject* old = at[0]
    Py_INCREF(value)
    at[0] = <PyObject*>value
    Py_XDECREF(old)


cdef inline void _bump(object obj, Py_ssize_t offset) except *:
    """`obj.<slot> += 1` for a counter slot."""
    _store(obj, offset, _field(obj, offset) + 1)


cdef Py_ssize_t _need_slot(type kind, str name) except 0:
    cdef Py_ssize_t at = _slot(kind, name)
    if at == 0:
        raise TypeError(f"{kind.__name__}.{name} is not a slot: the compiled path reads it in C")
    return at


cdef object _FALSE = False
cdef Py_ssize_t _AT_INSTRUMENT = _slot(BookUpdate, "instrument")
cdef Py_ssize_t _AT_SNAPSHOT = _slot(BookUpdate, "snapshot")
cdef Py_ssize_t _AT_LAST_ID = _slot(BookUpdate, "last_id")


cdef class FramePath:
    """`BookDriver.receive` and `on_book` in C for one driver (venue thread): what the
    reference does for every frame, with the common case done here in one call: a book
    message for a LIVE book (state check, the sequence rule's fast case, apply, checksum
    compare, counters, the BookTop published). Anything else (a snapshot, a book not LIVE,
    a rule's other answers, a crossed or contract-sized book, waiting audits, a frame that
    is not one book message, a refused frame) is handed to the driver's own Python methods,
    so the outcome is the reference's by construction; `tests/unit/test_book_cores.py`
    checks books, tops, counters and errors on every capture.

    The driver's state objects (`InstrumentSync`, `InstrumentStats`, `VenueStats`, the
    event `BookUpdate`) are slotted classes whose slots are read and counted in C."""

    cdef object driver
    cdef dict syncs
    cdef object venue_stats
    cdef object publish
    cdef object reference_on_book
    cdef object reference_emit
    cdef object audit_waiting
    cdef object failed
    cdef object parse_failed
    cdef object handle_events
    cdef object skip
    cdef object contiguous  # the rules whose fast case is done here (`ContiguousIds`...
    cdef object chain  # ...and `RestSnapshotChain`'s `pu` chain once bridged)
    cdef object integrity_error
    cdef object parse_errors
    cdef type sync_type
    cdef type stats_type
    cdef Py_ssize_t max_frame_bytes  # the driver's (it sets them again through `limits`)
    cdef Py_ssize_t top_levels
    cdef Py_ssize_t at_frames, at_book_frames
    cdef Py_ssize_t at_book, at_stats, at_rule, at_checks_deltas, at_checksum, at_crossed
    cdef Py_ssize_t at_audits, at_sized, at_size
    cdef Py_ssize_t at_messages, at_updates, at_checked, at_failed, at_seq_checked
    cdef Py_ssize_t at_audit_agree

    def __init__(self, driver: object, contiguous: type, integrity_error: type,
                 parse_errors: tuple, chain: object = None) -> None:
        kind = type(driver)
        self.driver = driver
        self.syncs = driver.syncs
        self.venue_stats = driver.venue_stats
        self.publish = driver.session.publish  # a driver's session is its for life
        # The reference's own methods (the class's: the instance's are this path's).
        self.reference_on_book = kind.on_book.__get__(driver, kind)
        self.reference_emit = kind.emit.__get__(driver, kind)
        self.audit_waiting = driver._audit_waiting
        self.failed = driver._failed
        self.parse_failed = driver.parse_failed
        self.handle_events = driver.handle_events
        self.skip = driver.skip
        self.contiguous = contiguous
        self.chain = chain
        self.integrity_error = integrity_error
        self.parse_errors = parse_errors
        self.max_frame_bytes = driver.max_frame_bytes
        self.top_levels = driver.top_levels
        vs = type(self.venue_stats)
        self.at_frames = _need_slot(vs, "frames")
        self.at_book_frames = _need_slot(vs, "book_frames")
        self.sync_type = None
        self.stats_type = None
        for sync in self.syncs.values():
            self._learn(type(sync), type(sync.stats))
            break

    cdef void _learn(self, type sync_type, type stats_type) except *:
        self.at_book = _need_slot(sync_type, "book")
        self.at_stats = _need_slot(sync_type, "stats")
        self.at_rule = _need_slot(sync_type, "rule")
        self.at_checks_deltas = _need_slot(sync_type, "checks_deltas")
        self.at_checksum = _need_slot(sync_type, "checksum")
        self.at_crossed = _need_slot(sync_type, "crossed")
        self.at_audits = _need_slot(sync_type, "audits")
        self.at_sized = _need_slot(sync_type, "sized")
        self.at_size = _need_slot(sync_type, "size")
        self.at_messages = _need_slot(stats_type, "messages")
        self.at_updates = _need_slot(stats_type, "updates")
        self.at_checked = _need_slot(stats_type, "checksums_checked")
        self.at_failed = _need_slot(stats_type, "checksums_failed")
        self.at_seq_checked = _need_slot(stats_type, "sequence_checked")
        self.at_audit_agree = _need_slot(stats_type, "audit_agree")
        self.sync_type = sync_type
        self.stats_type = stats_type

    def limits(self, max_frame_bytes: int, top_levels: int) -> None:
        """The driver's `max_frame_bytes` and `top_levels`, whenever it sets them."""
        self.max_frame_bytes = max_frame_bytes
        self.top_levels = top_levels

    def receive(self, frame: str, recv_ns: object) -> None:
        """`BookDriver.receive`."""
        driver = self.driver
        _bump(self.venue_stats, self.at_frames)
        if len(frame) > self.max_frame_bytes:
            self.skip("frame_too_large", f"{len(frame)} characters")
            return
        parse = driver._parse
        try:
            if type(parse) is FrameScanner:
                events = (<FrameScanner>parse)._parse(frame)
            else:
                events = parse(frame)
        except Exception as exc:
            if isinstance(exc, self.parse_errors):
                self.parse_failed(exc)
                return
            raise
        if type(events) is BookUpdate:
            try:
                self._on_book(events, recv_ns)
            except Exception as exc:
                if isinstance(exc, self.integrity_error):
                    self.failed(exc, events)
                    return
                raise
            return
        self.handle_events(events, recv_ns)

    def on_book(self, ev: object, recv_ns: object) -> None:
        """`BookDriver.on_book`."""
        if type(ev) is not BookUpdate:
            self.reference_on_book(ev, recv_ns)
            return
        self._on_book(ev, recv_ns)

    cdef void _on_book(self, object ev, object recv_ns) except *:
        cdef PyObject* found
        cdef L2Book book
        cdef object last_id
        found = PyDict_GetItem(self.syncs, _field(ev, _AT_INSTRUMENT))
        if found == NULL or _at(ev, _AT_SNAPSHOT) != <PyObject*>_FALSE:
            self.reference_on_book(ev, recv_ns)  # (a KeyError there, as in the reference)
            return
        sync = <object>found
        if type(sync) is not self.sync_type:
            self.reference_on_book(ev, recv_ns)
            return
        book_obj = _field(sync, self.at_book)
        stats = _field(sync, self.at_stats)
        if type(book_obj) is not L2Book or type(stats) is not self.stats_type:
            self.reference_on_book(ev, recv_ns)
            return
        book = <L2Book>book_obj
        if book.state is not LIVE:
            self.reference_on_book(ev, recv_ns)  # STALE, or waiting for a snapshot
            return
        _bump(self.venue_stats, self.at_book_frames)
        _bump(stats, self.at_messages)
        last_id = _field(ev, _AT_LAST_ID)
        if last_id is not None:
            if _field(sync, self.at_checks_deltas) is True:
                rule = _field(sync, self.at_rule)
                seq = book.venue_seq
                if (
                    type(rule) is self.contiguous
                    and type(last_id) is int
                    and type(seq) is int
                    and last_id == seq + 1
                ):
                    _bump(stats, self.at_seq_checked)
                    book.venue_seq = last_id
                elif type(rule) is self.chain and self._chained(rule, ev, seq):
                    # (the chain's own `delta` where `pu` is the book's `u`: checked, applied)
                    _bump(stats, self.at_seq_checked)
                    book.venue_seq = last_id
                elif not rule.delta(sync, ev):
                    return
            else:
                book.venue_seq = last_id
        got = book._update(ev)
        self._counted(sync, stats, book, ev, got, last_id)
        if (
            book.state is not LIVE  # (a rule's delta may have changed it)
            or _field(sync, self.at_crossed) is not False
            or book._is_crossed()
        ):
            self.reference_emit(sync, recv_ns)  # held or crossed: the reference's
        else:
            size = _field(sync, self.at_size)
            if size is None and _field(sync, self.at_sized) is False:
                book.recv_ts_ns = recv_ns
                self.publish(book._top_of(self.top_levels))
            elif type(size) is ContractSize and type(_field(size, _AT_VALUE)) is float:
                # contracts in base units, as `ContractSize.to_base` gives them
                book.recv_ts_ns = recv_ns
                self.publish(book._top_in_base(self.top_levels,
                                               PyFloat_AS_DOUBLE(_at(size, _AT_VALUE)),
                                               bool(_field(size, _AT_IN_QUOTE))))
            else:
                self.reference_emit(sync, recv_ns)  # held until its sizes are known
        self._audits(sync, book, stats)

    cdef bint _chained(self, object rule, object ev, object seq) except -1:
        """Whether a bridged `pu` chain accepts `ev` as is (its `pu` the book's `u`)."""
        prev = _field(ev, _AT_PREV_ID)
        return (
            rule.bridged is True
            and type(prev) is int
            and type(seq) is int
            and type(_field(ev, _AT_LAST_ID)) is int
            and prev == seq
        )

    cdef inline void _audits(self, object sync, L2Book book, object stats) except *:
        tickers = _field(sync, self.at_audits)
        if tickers:
            self._audit(sync, book, stats, tickers)

    cdef void _audit(self, object sync, L2Book book, object stats, object tickers) except *:
        """`BookDriver._audit_waiting` where every waiting ticker is older than the book or
        agrees with it; at the first that does not, or anything unusual, the driver's own
        method takes over (it compares that ticker again and resyncs)."""
        cdef BookSide bids = book.bids
        cdef BookSide asks = book.asks
        if book.state is not LIVE:
            return
        seq = book.venue_seq
        while tickers:
            t = tickers[0]
            if type(t) is not AuditTop or type(seq) is not int:
                break
            at = _field(t, _AT_AUDIT_SEQ)
            if type(at) is not int:
                break
            if at > seq:
                return  # (it waits for a later update id)
            if at == seq and not (
                _best_is(bids, _at(t, _AT_AUDIT_BID), _at(t, _AT_AUDIT_BID_SIZE))
                and _best_is(asks, _at(t, _AT_AUDIT_ASK), _at(t, _AT_AUDIT_ASK_SIZE))
            ):
                break
            tickers.popleft()
            if at == seq:
                _bump(stats, self.at_audit_agree)
        else:
            return
        self.audit_waiting(sync)

    cdef void _counted(self, object sync, object stats, L2Book book, object ev, object got,
                       object last_id) except *:
        """The counters and checksum verdict of an applied delta (`on_book`)."""
        _bump(stats, self.at_updates)
        if got is not None:
            _bump(stats, self.at_checked)
            checksum = _field(ev, _AT_CHECKSUM)
            if got != checksum:
                _bump(stats, self.at_failed)
                raise self.integrity_error(
                    _field(ev, _AT_INSTRUMENT), "checksum", f"computed {got}, venue {checksum}"
                )
            if last_id is None:
                # (as unsigned 32 bits, which Kraken's CRC already is: no new int for it)
                book.venue_seq = got if book.kind == _KRAKEN else got & 0xFFFFFFFF
        elif last_id is None and _field(sync, self.at_checksum) is not None:
            book.venue_seq = -1



cdef Py_ssize_t _AT_AUDIT_SEQ = _need_slot(AuditTop, "venue_seq")
cdef Py_ssize_t _AT_AUDIT_BID = _need_slot(AuditTop, "bid")
cdef Py_ssize_t _AT_AUDIT_ASK = _need_slot(AuditTop, "ask")
cdef Py_ssize_t _AT_AUDIT_BID_SIZE = _need_slot(AuditTop, "bid_size")
cdef Py_ssize_t _AT_AUDIT_ASK_SIZE = _need_slot(AuditTop, "ask_size")


cdef bint _best_is(BookSide side, PyObject* price, PyObject* size) noexcept:
    """Whether the side's best level is (price, size), both given as floats (the audit's
    `best() == price and size(price) == size`); False for anything else."""
    cdef LevelIter it
    if price == NULL or size == NULL or side.ladder.empty():
        return False
    if type(<object>price) is not float or type(<object>size) is not float:
        return False
    it = side.ladder.begin()
    return (
        side.sign * deref(it).first == PyFloat_AS_DOUBLE(price)
        and deref(it).second.size == PyFloat_AS_DOUBLE(size)
    )


cdef Py_ssize_t _AT_VALUE = _need_slot(ContractSize, "value")
cdef Py_ssize_t _AT_IN_QUOTE = _need_slot(ContractSize, "in_quote")


cdef inline bint _same_double(double a, double b) noexcept:
    return memcmp(&a, &b, sizeof(double)) == 0


cdef list _sizes_in_base(list prices, list sizes, double value, bint in_quote):
    cdef Py_ssize_t i, n = PyList_GET_SIZE(sizes)
    cdef double q
    out = PyList_New(n)
    for i in range(n):
        q = PyFloat_AS_DOUBLE(PyList_GET_ITEM(sizes, i)) * value
        if in_quote:
            q = q / PyFloat_AS_DOUBLE(PyList_GET_ITEM(prices, i))
        item = PyFloat_FromDouble(q)
        Py_INCREF(item)  # SET_ITEM steals a reference
        PyList_SET_ITEM(out, i, item)
    return out


# --- the fields of a book message (the venue modules' fast path) ------------------------------


cdef Py_ssize_t _AT_FIRST_ID = _slot(BookUpdate, "first_id")
cdef Py_ssize_t _AT_PREV_ID = _slot(BookUpdate, "prev_id")
cdef PyTypeObject* _BOOK_UPDATE = <PyTypeObject*>BookUpdate


cdef object _new_update(
    object instrument, object snapshot, object bids, object asks, object last_id,
    object first_id, object cross_seq, object ts_ns, object checksum, object prev_id=None
):
    """A BookUpdate with its slots filled in C (what its `__init__` sets, without the call)."""
    ev = PyType_GenericAlloc(_BOOK_UPDATE, 0)
    _store(ev, _AT_INSTRUMENT, instrument)
    _store(ev, _AT_SNAPSHOT, True if snapshot else False)
    _store(ev, _AT_BIDS, bids)
    _store(ev, _AT_ASKS, asks)
    _store(ev, _AT_LAST_ID, last_id)
    _store(ev, _AT_FIRST_ID, first_id)
    _store(ev, _AT_CROSS_SEQ, cross_seq)
    _store(ev, _AT_TS_NS, ts_ns)
    _store(ev, _AT_CHECKSUM, checksum)
    _store(ev, _AT_PREV_ID, prev_id)
    return ev


cdef object _digits(str text):
    """A str of 1 to 18 ASCII digits as an int (what `int()` gives it); None otherwise."""
    cdef Py_ssize_t n, i
    cdef const char* buf
    cdef long long value = 0
    if not PyUnicode_IS_COMPACT_ASCII(<PyObject*>text):
        return None
    n = PyUnicode_GET_LENGTH(<PyObject*>text)
    if n < 1 or n > 18:
        return None
    buf = <const char*>PyUnicode_DATA(<PyObject*>text)
    for i in range(n):
        if buf[i] < c'0' or buf[i] > c'9':
            return None
        value = value * 10 + (buf[i] - c'0')
    return value


cdef object _seconds_ns(object text):
    """`seconds_to_ns` (venues.base) of a decimal string in range; None otherwise."""
    cdef double seconds
    if not _decimal(text, &seconds):
        return None
    if not (0.0 <= seconds < 1e11):
        return None
    return PyLong_FromDouble(seconds * 1e9)


cdef inline int _two(const char* p):
    if p[0] < c'0' or p[0] > c'9' or p[1] < c'0' or p[1] > c'9':
        return -1
    return (p[0] - c'0') * 10 + (p[1] - c'0')


cdef object _rfc3339_ns(object text):
    """`2023-10-06T17:35:55.440295Z` (exactly this form: UTC, microseconds) as ns since the
    epoch, as `kraken_v2.rfc3339_ns` gives it; None for anything else."""
    cdef const char* p
    cdef int year, month, day, hour, minute, second, i, micros = 0
    cdef long long days, y, era, yoe, doy, doe, mp
    cdef int[13] month_days
    if type(text) is not str or not PyUnicode_IS_COMPACT_ASCII(<PyObject*>text):
        return None
    if PyUnicode_GET_LENGTH(<PyObject*>text) != 27:
        return None
    p = <const char*>PyUnicode_DATA(<PyObject*>text)
    if (p[4] != c'-' or p[7] != c'-' or p[10] != c'T' or p[13] != c':' or p[16] != c':'
            or p[19] != c'.' or p[26] != c'Z'):
        return None
    if _two(p) < 0 or _two(p + 2) < 0:
        return None
    year = _two(p) * 100 + _two(p + 2)
    month = _two(p + 5)
    day = _two(p + 8)
    hour = _two(p + 11)
    minute = _two(p + 14)
    second = _two(p + 17)
    for i in range(20, 26):
        if p[i] < c'0' or p[i] > c'9':
            return None
        micros = micros * 10 + (p[i] - c'0')
    if year < 1970 or year > 2200 or month < 1 or month > 12 or day < 1 or hour < 0 or hour > 23:
        return None
    if minute < 0 or minute > 59 or second < 0 or second > 59:
        return None
    month_days[:] = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        month_days[2] = 29
    if day > month_days[month]:
        return None
    # days from 1970-01-01 (H. Hinnant's days_from_civil)
    y = year - (1 if month <= 2 else 0)
    era = y // 400
    yoe = y - era * 400
    mp = month - 3 if month > 2 else month + 9
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return (
        (days * 86400 + hour * 3600 + minute * 60 + second) * 1_000_000_000 + micros * 1000
    )


cdef object _NO_TIME = object()


cdef object _newest_third(object rows, object newest):
    """The greatest of `newest` and the third elements of `rows` (ASCII strings compared
    as `max()` does); `_NO_TIME` where one is missing or not such a string."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(rows)
    cdef Py_ssize_t size, best_size = 0
    cdef const char* text
    cdef const char* best = NULL
    cdef int order
    if newest is not None:
        best = <const char*>PyUnicode_DATA(<PyObject*>newest)
        best_size = PyUnicode_GET_LENGTH(<PyObject*>newest)
    for i in range(n):
        row = <object>PyList_GET_ITEM(rows, i)
        if PyList_GET_SIZE(row) < 3:
            return _NO_TIME
        value = <object>PyList_GET_ITEM(row, 2)
        if type(value) is not str or not PyUnicode_IS_COMPACT_ASCII(<PyObject*>value):
            return _NO_TIME
        text = <const char*>PyUnicode_DATA(<PyObject*>value)
        size = PyUnicode_GET_LENGTH(<PyObject*>value)
        if best != NULL:
            order = memcmp(text, best, size if size < best_size else best_size)
            if order < 0 or (order == 0 and size <= best_size):
                continue
        newest = value
        best = text
        best_size = size
    return newest


# --- the usual book frame scanned from its text (`shape.FrameShape`) --------------------------


cdef extern from *:
    """
    #include <vector>
    /* One JSON value of a scanned frame: kind '{' '[' '"' 'n' 't' 'f' 'z' (null); a string's
       span is its content (no quotes); `next` is the index after the value and everything
       in it; `count` the elements (array) or pairs (object); `flags` of a number: 1 a
       minus, 2 a fraction (one with an exponent is refused). */
    struct MmTok { int kind; int start; int len; int next; int count; int flags; };
    typedef std::vector<MmTok> MmTape;

    static inline int mm_ws(const char* s, int i, int n) {
        while (i < n && (s[i] == ' ' || s[i] == '\\t' || s[i] == '\\n' || s[i] == '\\r')) i++;
        return i;
    }
    /* 1: a character a scanned string may hold as it is (printable ASCII but `"` and `\\`) */
    static unsigned char mm_plain_char[256];
    static void mm_scan_init(void) {
        for (int c = 0x20; c < 0x7F; c++) mm_plain_char[c] = c != '"' && c != '\\\\';
    }
    static inline int mm_digits(const char* s, int i, int n) {
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        return i;
    }
    /* A scalar at s[i] into `t` (a string, a number, true, false, null); the index after
       it, or -1. */
    static inline __attribute__((always_inline)) int mm_scalar(const char* s, int i, int n, MmTok* t) {
        char c = s[i];
        if (c == '"') {
            int j = i + 1;
            while (j < n && mm_plain_char[(unsigned char)s[j]]) j++;
            if (j >= n || s[j] != '"') return -1;  /* an escape, a control, non-ASCII */
            t->kind = '"';
            t->start = i + 1;
            t->len = j - i - 1;
            return j + 1;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            int j = i, flags = 0, d;
            if (s[j] == '-') { flags |= 1; j++; }
            if (j >= n) return -1;
            if (s[j] == '0') j++;
            else if (s[j] >= '1' && s[j] <= '9') j = mm_digits(s, j, n);
            else return -1;
            if (j < n && s[j] == '.') {
                flags |= 2;
                d = ++j;
                j = mm_digits(s, j, n);
                if (j == d) return -1;
            }
            /* An exponent may make a number infinite, which orjson refuses and a key the
               scanner does not read would let through: refused (the venues send none). */
            if (j < n && (s[j] == 'e' || s[j] == 'E')) return -1;
            if (j - i > 30) return -1;
            t->kind = 'n';
            t->start = i;
            t->len = j - i;
            t->flags = flags;
            return j;
        }
        t->start = i;
        t->len = 0;
        if (n - i >= 4 && memcmp(s + i, "true", 4) == 0) { t->kind = 't'; return i + 4; }
        if (n - i >= 5 && memcmp(s + i, "false", 5) == 0) { t->kind = 'f'; return i + 5; }
        if (n - i >= 4 && memcmp(s + i, "null", 4) == 0) { t->kind = 'z'; return i + 4; }
        return -1;
    }
    #define MM_WS(i) if (i < n && (unsigned char)s[i] <= ' ') i = mm_ws(s, i, n)
    /* An object's key at i (a string, then its `:`) onto the tape at k; i after the `:`,
       or -1 when the text is not that. */
    static inline __attribute__((always_inline)) int mm_key(
            const char* s, int i, int n, MmTok* t, int& k) {
        if (i >= n || s[i] != '"') return -1;
        MmTok* v = &t[k];
        v->next = ++k;
        v->count = 0;
        v->flags = 0;
        i = mm_scalar(s, i, n, v);
        if (i < 0) return -1;
        MM_WS(i);
        if (i >= n || s[i] != ':') return -1;
        return i + 1;
    }

    /* The whole text as one JSON value (and nothing after it but whitespace) on `tape`, in
       order (an object's key before its value); the number of values, or 0. Strict JSON,
       and less: a string with an escape, a control or a non-ASCII character, a number
       with an exponent or longer than 30 characters, or a nesting deeper than 10 are refused
       like invalid JSON
       (the frame then takes the full decoder, which judges it). */
    static int mm_scan(const char* s, Py_ssize_t length, MmTape& tape) {
        if (length <= 0 || length > 0x3FFFFFFF) return 0;
        int n = (int)length, i = 0, k = 0, depth = 0, open[11];
        /* every value but the first follows a `,` `:` `[` or `{`, which is no value */
        size_t need = (size_t)n / 2 + 2;
        if (tape.size() < need) tape.resize(need);
        MmTok* t = tape.data();
        for (;;) {
            /* a value at i */
            MM_WS(i);
            if (i >= n) return 0;
            MmTok* v = &t[k];
            v->next = ++k;
            v->count = 0;
            v->flags = 0;
            char c = s[i];
            if (c == '{' || c == '[') {
                v->kind = c;
                v->start = i;
                v->len = 0;
                i++;
                MM_WS(i);
                if (i < n && s[i] == (c == '{' ? '}' : ']')) {
                    i++;  /* empty: a value of its container, as any */
                } else {
                    if (depth == 10) return 0;
                    open[depth++] = k - 1;
                    if (c == '[') continue;
                    /* an object's first key */
                    i = mm_key(s, i, n, t, k);
                    if (i < 0) return 0;
                    continue;
                }
            } else {
                i = mm_scalar(s, i, n, v);
                if (i < 0) return 0;
            }
            /* a value is done: close what it ends, find the next */
            for (;;) {
                MM_WS(i);
                if (depth == 0) return i == n ? k : 0;
                if (i >= n) return 0;
                MmTok* top = &t[open[depth - 1]];
                top->count++;
                if (s[i] == ',') {
                    i++;
                    if (top->kind == '{') {
                        MM_WS(i);
                        i = mm_key(s, i, n, t, k);
                        if (i < 0) return 0;
                    }
                    break;
                }
                if (s[i] != (top->kind == '{' ? '}' : ']')) return 0;
                i++;
                top->next = k;
                depth--;
            }
        }
    }
    """
    cdef struct Tok "MmTok":
        int kind
        int start
        int len
        int next
        int count
        int flags
    bint mm_scan(const char* s, Py_ssize_t n, vector[Tok]& tape)
    void mm_scan_init()

mm_scan_init()


cdef enum:
    _ABSENT = -1
    _TWICE = -2
    _NULL = -3  # (Kraken v1's body: a null key is there, its value None)


@cython.final
cdef class FrameScanner:
    """A venue's `parse` (the compiled core): a frame of its declared usual shape
    (`shape.FrameShape`) is read from its text in one call, levels straight into `Levels`
    with no Python object per level (Kraken v1's strings, which its checksum needs, are read
    where they are in the text), and returned as the BookUpdate the venue's own parse would
    give. Anything else goes to that parse (`fallback`), unchanged: another shape or value
    type, a JSON escape or non-ASCII text, a duplicated key, a number that is not a plain
    decimal, a level or field the venue's decoder would refuse. So a frame is refused,
    skipped or applied exactly as without the scanner (`tests/unit/test_frame_path.py`)."""

    cdef object fallback
    cdef object venue  # read at the first frame (`_ready`), then dropped
    cdef object shape
    cdef string k_start
    cdef bint ready, array_layout, numbers, wire, entry_list, sides_required
    cdef bint route_in_entry, kind_in_entry
    cdef vector[string] route_keys  # the frame's names of our books, and for each...
    cdef list route_items  # ...(its name as a str, our instrument), read once (`_ready`)
    cdef dict symbols
    cdef dict formats
    cdef string k_channel
    cdef bint check_channel
    cdef string k_bids, k_asks, k_route, k_symbol, k_price, k_size, k_kind, k_snapshot
    cdef string k_delta, k_entry, k_last_id, k_cross_seq, k_timestamp, k_checksum
    cdef string k_first_id, k_prev_id, k_entry_time_ms
    cdef string k_snap_bids, k_snap_asks
    cdef vector[string] k_time_ms
    cdef vector[Tok] tape
    cdef const char* text
    cdef object frame  # (the text's str, while it is read)
    cdef object last  # the BookUpdate last returned (filled again when no one holds it)
    cdef readonly Py_ssize_t scanned  # frames returned from the text
    cdef readonly Py_ssize_t passed  # frames handed to the fallback

    def __init__(self, shape: object, venue: object, start: str, fallback: object,
                 keep_wire: bool) -> None:
        if shape.layout not in ("array", "object") or shape.levels not in ("strings", "numbers"):
            raise ValueError(f"unknown frame shape {shape!r}")
        self.shape = shape
        self.venue = venue
        self.k_start = _key_text(start)
        self.fallback = fallback
        self.array_layout = shape.layout == "array"
        self.numbers = shape.levels == "numbers"
        self.wire = keep_wire
        self.entry_list = shape.entry_list
        self.sides_required = shape.sides_required
        self.route_in_entry = shape.route_in_entry
        self.kind_in_entry = shape.kind_in_entry
        self.k_bids = _key_text(shape.bids)
        self.k_asks = _key_text(shape.asks)
        self.k_route = _key_text(shape.route)
        self.k_symbol = _key_text(shape.symbol)
        self.k_price = _key_text(shape.price)
        self.k_size = _key_text(shape.size)
        self.k_kind = _key_text(shape.kind)
        self.k_snapshot = _key_text(shape.snapshot)
        self.k_delta = _key_text(shape.delta)
        self.k_entry = _key_text(shape.entry)
        self.k_last_id = _key_text(shape.last_id)
        self.k_first_id = _key_text(shape.first_id)
        self.k_prev_id = _key_text(shape.prev_id)
        self.k_entry_time_ms = _key_text(shape.entry_time_ms)
        self.k_cross_seq = _key_text(shape.cross_seq)
        self.k_timestamp = _key_text(shape.timestamp)
        self.k_checksum = _key_text(shape.checksum)
        self.k_snap_bids = _key_text(shape.snapshot_bids)
        self.k_snap_asks = _key_text(shape.snapshot_asks)
        for key in shape.time_ms:
            self.k_time_ms.push_back(_key_text(key))

    cdef void _ready(self) except *:
        shape = self.shape
        venue = self.venue
        self.route_items = []
        for name, instrument in getattr(venue, shape.books).items():
            self.route_keys.push_back(_key_text(name))
            self.route_items.append((name, instrument))
        self.symbols = getattr(venue, shape.symbols) if shape.symbols else None
        self.formats = getattr(venue, shape.formats) if shape.formats else None
        self.check_channel = bool(shape.channel)
        if self.check_channel:
            self.k_channel = _key_text(getattr(venue, shape.channel))
        if (self.symbols is None) != (not shape.symbol) or (self.formats is None) == self.numbers:
            raise ValueError(f"frame shape {shape!r}: its routes do not match its levels")
        self.venue = None
        self.ready = True

    def __call__(self, frame: str) -> object:
        """The venue's `parse`."""
        return self._parse(frame)

    cdef object _parse(self, object frame):
        cdef object got = None
        cdef Py_ssize_t n
        if type(frame) is str and PyUnicode_IS_COMPACT_ASCII(<PyObject*>frame):
            n = PyUnicode_GET_LENGTH(<PyObject*>frame)
            self.text = <const char*>PyUnicode_DATA(<PyObject*>frame)
            self.frame = frame
            if <size_t>n >= self.k_start.size() and memcmp(
                self.text, self.k_start.data(), self.k_start.size()
            ) == 0:
                if not self.ready:
                    self._ready()
                if mm_scan(self.text, n, self.tape):
                    got = self._array() if self.array_layout else self._object()
            self.text = NULL
            self.frame = None
        if got is None:
            self.passed += 1
            return self.fallback(frame)
        self.scanned += 1
        return got

    # --- reading the tape -------------------------------------------------------------------

    cdef int _get(self, int obj, const string& key) noexcept:
        """The index of `key`'s value in object `obj`: _ABSENT, or _TWICE if it is there twice
        (an undeclared key (empty) is absent)."""
        cdef int j = obj + 1, k, found = _ABSENT
        cdef Tok* t = self.tape.data()
        cdef int n = key.size()
        cdef const char* name = key.data()
        if n == 0:
            return _ABSENT
        for k in range(t[obj].count):
            # (a key is a string: `mm_scan`)
            if t[j].len == n and self.text[t[j].start] == name[0] and memcmp(
                self.text + t[j].start, name, n
            ) == 0:
                if found != _ABSENT:
                    return _TWICE
                found = j + 1
            j = t[j + 1].next
        return found

    cdef bint _is(self, int at, const string& text) noexcept:
        """Whether string `at` is `text`."""
        return (
            self.tape[at].kind == c'"'
            and <size_t>self.tape[at].len == text.size()
            and memcmp(self.text + self.tape[at].start, text.data(), text.size()) == 0
        )

    cdef bint _unique(self, int obj) noexcept:
        """No key of object `obj` is there twice (which value a decoder keeps is its own)."""
        cdef int a = obj + 1, b, i, k
        cdef Tok* t = self.tape.data()
        cdef const char* text = self.text
        cdef uint64_t seen = 0, bit
        # One pass first: a key's length and first and last characters pick one of 64
        # bits; no bit picked twice means no key twice. Otherwise every pair is compared.
        for i in range(t[obj].count):
            bit = 0
            if t[a].len:
                # (chosen so that the keys of every declared frame fall apart, a letter's
                # two cases too; a collision only costs the pairwise check)
                bit = (<unsigned char>text[t[a].start]
                       + <unsigned char>text[t[a].start + t[a].len - 1] * 4 + t[a].len) & 63
            bit = (<uint64_t>1) << bit
            if seen & bit:
                break
            seen |= bit
            a = t[a + 1].next
        else:
            return True
        a = obj + 1
        for i in range(t[obj].count):
            b = t[a + 1].next
            for k in range(i + 1, t[obj].count):
                if (
                    t[a].len == t[b].len
                    and text[t[a].start] == text[t[b].start]  # (most keys differ at once)
                    and memcmp(text + t[a].start, text + t[b].start, t[a].len) == 0
                ):
                    return False
                b = t[b + 1].next
            a = t[a + 1].next
        return True

    cdef str _str(self, int at):
        return <str>self._ascii(at)

    cdef PyObject* _ascii(self, int at) except NULL:
        """String `at` as a new str (a new reference): its text is ASCII (`mm_scan`)."""
        cdef PyObject* out = PyUnicode_New(self.tape[at].len, 127)
        memcpy(PyUnicode_DATA(out), self.text + self.tape[at].start, self.tape[at].len)
        return out

    cdef object _route(self, int at):
        """(name, instrument) of the book string `at` names; None if none of ours."""
        cdef size_t i
        if at < 0 or self.tape[at].kind != c'"':
            return None
        for i in range(self.route_keys.size()):
            if self._is(at, self.route_keys[i]):
                return self.route_items[i]
        return None

    cdef object _checksum_text(self, int at):
        """A string of 1 to 18 ASCII digits as an int (`_digits`); None otherwise."""
        cdef long long value = 0
        cdef int i
        cdef const char* p = self.text + self.tape[at].start
        if self.tape[at].kind != c'"' or not (1 <= self.tape[at].len <= 18):
            return None
        for i in range(self.tape[at].len):
            if p[i] < c'0' or p[i] > c'9':
                return None
            value = value * 10 + (p[i] - c'0')
        return value

    cdef object _int(self, int at):
        """A JSON integer of 1 to 18 digits, no sign, as an int; None otherwise."""
        cdef long long value = 0
        cdef int i
        cdef const char* p
        if at < 0 or self.tape[at].kind != c'n' or self.tape[at].flags != 0:
            return None
        if self.tape[at].len > 18:
            return None
        p = self.text + self.tape[at].start
        for i in range(self.tape[at].len):
            value = value * 10 + (p[i] - c'0')
        return value

    cdef inline bint _plain(self, int at, double* out) noexcept:
        """A plain decimal (digits, a dot) at `at` (a string's content or a number)."""
        return mm_decimal_runs(self.text + self.tape[at].start, self.tape[at].len, out)

    cdef object _seconds_ns(self, int at):
        """`seconds_to_ns` of a plain decimal string in range; None otherwise."""
        cdef double seconds
        if not self._plain(at, &seconds) or not (0.0 <= seconds < 1e11):
            return None
        return PyLong_FromDouble(seconds * 1e9)

    cdef Levels _rows(self, int arr):
        """`[["price", "size", ...], ...]`: every element a string, the first two clean
        levels; None otherwise."""
        cdef Levels out
        cdef Entry entry
        cdef int j = arr + 1, k, e
        cdef Tok row
        cdef bint wire = self.wire
        if self.tape[arr].kind != c'[':
            return None
        out = Levels.__new__(Levels)  # (no __init__ to look up)
        out.entries.reserve(self.tape[arr].count)
        entry.price_text = NULL
        entry.size_text = NULL
        if wire:
            out.owner = self.frame  # (the strings are read where they are in its text)
        for k in range(self.tape[arr].count):
            row = self.tape[j]
            if row.kind != c'[' or row.count < 2 or row.next - j - 1 != row.count:
                return None
            for e in range(j + 1, row.next):
                if self.tape[e].kind != c'"':
                    return None
            if not self._plain(j + 1, &entry.price) or not self._plain(j + 2, &entry.size):
                return None
            if not (0.0 < entry.price < INF and 0.0 <= entry.size < INF):
                return None
            if wire:
                entry.price_text = self.text + self.tape[j + 1].start
                entry.price_len = self.tape[j + 1].len
                entry.size_text = self.text + self.tape[j + 2].start
                entry.size_len = self.tape[j + 2].len
            out.entries.push_back(entry)
            j = row.next
        return out

    cdef Levels _numbers(self, int arr, int price_decimals, int size_decimals):
        """`[{"price": 1.5, "qty": 2}, ...]` plain non-negative numbers, written with the
        pair's precisions (`LevelDecoder.kraken_numbers`); None otherwise."""
        cdef Levels out
        cdef Entry entry
        cdef int j = arr + 1, k, p, q
        if self.tape[arr].kind != c'[':
            return None
        out = Levels.__new__(Levels)
        out.entries.reserve(self.tape[arr].count)
        owner = []
        out.owner = owner
        for k in range(self.tape[arr].count):
            if self.tape[j].kind != c'{':
                return None
            p = self._get(j, self.k_price)
            q = self._get(j, self.k_size)
            if p < 0 or q < 0 or self.tape[p].kind != c'n' or self.tape[q].kind != c'n':
                return None
            if (self.tape[p].flags | self.tape[q].flags) & 1:  # a sign
                return None
            if not self._plain(p, &entry.price) or not self._plain(q, &entry.size):
                return None
            if not (0.0 < entry.price < INF and 0.0 <= entry.size < INF):
                return None
            texts = (_fixed(entry.price, price_decimals), _fixed(entry.size, size_decimals))
            owner.append(texts)
            _texts(&entry, texts[0], texts[1])
            out.entries.push_back(entry)
            j = self.tape[j].next
        return out

    cdef Levels _side(self, int at, object formats):
        """A side's levels at `at` (_ABSENT: none, where the shape allows it)."""
        if at == _ABSENT and not self.sides_required:
            return Levels()
        if at < 0:
            return None
        if formats is not None:
            return self._numbers(at, (<tuple>formats)[0], (<tuple>formats)[1])
        return self._rows(at)

    # --- the two layouts --------------------------------------------------------------------

    cdef object _object(self):
        """`{kind, entry: {levels, ...}, ...}` (Bybit, Kraken v2)."""
        cdef int kind, entry, route, at, i
        cdef bint snapshot
        cdef Levels bids, asks
        cdef PyObject* found
        cdef Py_ssize_t n
        cdef const char* expected
        if self.tape[0].kind != c'{' or not self._unique(0):
            return None
        entry = self._get(0, self.k_entry)
        if entry < 0:
            return None
        if self.entry_list:
            if self.tape[entry].kind != c'[' or self.tape[entry].count != 1:
                return None
            entry += 1
        if self.tape[entry].kind != c'{':
            return None
        # the kind first: a frame of another kind (Binance's tickers) is handed on at once
        kind = self._get(entry if self.kind_in_entry else 0, self.k_kind)
        if kind < 0:
            return None
        if not self.k_snapshot.empty() and self._is(kind, self.k_snapshot):
            snapshot = True
        elif self._is(kind, self.k_delta):
            snapshot = False
        else:
            return None
        if not self._unique(entry):
            return None
        routed = self._route(self._get(entry if self.route_in_entry else 0, self.k_route))
        if routed is None:
            return None
        name, instrument = <tuple>routed
        if self.symbols is not None:  # the entry's symbol is the book's
            at = self._get(entry, self.k_symbol)
            found = PyDict_GetItem(self.symbols, instrument)
            if at < 0 or found == NULL or type(<object>found) is not str:
                return None
            expected = _utf8(found, &n)
            if self.tape[at].kind != c'"' or self.tape[at].len != n:
                return None
            if memcmp(self.text + self.tape[at].start, expected, n) != 0:
                return None
        formats = None
        if self.formats is not None:
            found = PyDict_GetItem(self.formats, name)
            if found == NULL or type(<object>found) is not tuple:
                return None
            formats = <object>found
        last_id = None
        if not self.k_last_id.empty():
            last_id = self._int(self._get(entry, self.k_last_id))
            if last_id is None:
                return None
        first_id = None
        if not self.k_first_id.empty():
            first_id = self._int(self._get(entry, self.k_first_id))
            if first_id is None:
                return None
        prev_id = None
        if not self.k_prev_id.empty():
            prev_id = self._int(self._get(entry, self.k_prev_id))
            if prev_id is None:
                return None
        cross_seq = -1
        at = self._get(entry, self.k_cross_seq)
        if at != _ABSENT:
            cross_seq = self._int(at)
            if cross_seq is None:
                return None
        ts_ns = None
        if self.k_time_ms.size():
            ts = None
            for i in range(<int>self.k_time_ms.size()):
                at = self._get(0, self.k_time_ms[i])
                if at != _ABSENT:
                    value = self._int(at)
                    if value is None:
                        return None
                    if ts is None:
                        ts = value
            ts_ns = 0 if ts is None else ts * 1_000_000
        if not self.k_entry_time_ms.empty():
            ts = self._int(self._get(entry, self.k_entry_time_ms))
            if ts is None:
                return None
            ts_ns = ts * 1_000_000
        at = self._get(entry, self.k_timestamp)
        if at != _ABSENT and self.tape[at].kind != c'z':
            if self.tape[at].kind != c'"':
                return None
            if self.tape[at].len:
                ts_ns = _rfc3339_ns(self._str(at))
                if ts_ns is None:
                    return None
        checksum = None
        at = self._get(entry, self.k_checksum)
        if at != _ABSENT and self.tape[at].kind != c'z':
            checksum = self._int(at)
            if checksum is None:
                return None
        bids = self._side(self._get(entry, self.k_bids), formats)
        if bids is None:
            return None
        asks = self._side(self._get(entry, self.k_asks), formats)
        if asks is None:
            return None
        return self._update(
            instrument, snapshot, bids, asks, last_id, cross_seq, ts_ns, checksum, first_id, prev_id
        )

    cdef object _array(self):
        """`[id, {body}, channel, name]` (Kraken v1): an update (`a` and/or `b`, with `c`)
        or a snapshot (`as`, `bs`), as `LevelDecoder.kraken_update` / `kraken_snapshot`."""
        cdef int body, at, a, b, c, sa, sb, j, k, last = -1, newest = -1, length
        cdef int keys
        cdef PyObject* found
        cdef object asks, bids
        if self.tape[0].kind != c'[' or self.tape[0].count != 4:
            return None
        if self.tape[1].kind != c'n' or self.tape[1].flags != 0 or self.tape[1].len > 18:
            return None
        body = self.tape[1].next
        if self.tape[body].kind != c'{':  # (a key twice or one not declared: refused below)
            return None
        at = self.tape[body].next
        if self.tape[at].kind != c'"' or self.tape[at + 1].kind != c'"':
            return None
        if self.check_channel and not self._is(at, self.k_channel):
            return None
        routed = self._route(at + 1)
        if routed is None:
            return None
        instrument = (<tuple>routed)[1]
        a = self._present(body, self.k_asks, c'[')
        b = self._present(body, self.k_bids, c'[')
        c = self._present(body, self.k_checksum, c'"')
        sa = self._present(body, self.k_snap_asks, c'[')
        sb = self._present(body, self.k_snap_bids, c'[')
        if a == _TWICE or b == _TWICE or c == _TWICE or sa == _TWICE or sb == _TWICE:
            return None
        keys = (a != _ABSENT) + (b != _ABSENT) + (c != _ABSENT) + (sa != _ABSENT) + (sb != _ABSENT)
        if keys != self.tape[body].count:
            return None  # a key the body does not have
        if sa == _ABSENT and sb == _ABSENT:
            if c < 0:
                return None
            checksum = self._checksum_text(c)
            if checksum is None:
                return None
            asks = []
            bids = []
            if a >= 0:
                asks = self._rows(a)
                if asks is None:
                    return None
                if self.tape[a].count:
                    last = self._last(a)
            if b >= 0:
                bids = self._rows(b)
                if bids is None:
                    return None
                if self.tape[b].count:
                    last = self._last(b)
            ts_ns = None
            if last >= 0:
                if self.tape[last].count < 3:
                    return None
                ts_ns = self._seconds_ns(last + 3)
                if ts_ns is None:
                    return None
            return self._update(instrument, False, bids, asks, None, -1, ts_ns, checksum)
        if a >= 0 or b >= 0 or c >= 0:
            return None
        asks = self._rows(sa) if sa >= 0 else Levels()
        bids = self._rows(sb) if sb >= 0 else Levels()
        if asks is None or bids is None:
            return None
        for at in (sa, sb):  # the newest level's time: the greatest string
            if at < 0:
                continue
            j = at + 1
            for k in range(self.tape[at].count):
                if self.tape[j].count < 3:
                    return None
                if newest < 0 or self._after(j + 3, newest):
                    newest = j + 3
                j = self.tape[j].next
        if newest < 0:
            ts_ns = 0
        else:
            ts_ns = self._seconds_ns(newest)
            if ts_ns is None:
                return None
        return self._update(instrument, True, bids, asks, None, -1, ts_ns, None)

    cdef object _update(
        self, object instrument, bint snapshot, object bids, object asks, object last_id,
        object cross_seq, object ts_ns, object checksum, object first_id=None,
        object prev_id=None
    ):
        """The frame's BookUpdate: the one returned last, filled again, where nothing else
        holds it any more (the driver is done with it: no allocation, no collector work), a
        new one otherwise."""
        cdef object ev
        if self.last is None or Py_REFCNT(<PyObject*>self.last) != 1:
            self.last = _new_update(
                instrument, snapshot, bids, asks, last_id, first_id, cross_seq, ts_ns, checksum,
                prev_id
            )
            return self.last
        ev = self.last
        _store(ev, _AT_INSTRUMENT, instrument)
        _store(ev, _AT_SNAPSHOT, True if snapshot else False)
        _store(ev, _AT_BIDS, bids)
        _store(ev, _AT_ASKS, asks)
        _store(ev, _AT_LAST_ID, last_id)
        _store(ev, _AT_CROSS_SEQ, cross_seq)
        _store(ev, _AT_TS_NS, ts_ns)
        _store(ev, _AT_CHECKSUM, checksum)
        _store(ev, _AT_FIRST_ID, first_id)
        _store(ev, _AT_PREV_ID, prev_id)
        return ev

    cdef int _present(self, int obj, const string& key, int kind) noexcept:
        """A key's value of the given kind: its index; _ABSENT where missing or null (read
        as missing, as `.get` and the venue's Structs do); _TWICE where it is not usable.
        (A null key still counts as there: `_NULL`.)"""
        cdef int at = self._get(obj, key)
        if at == _ABSENT or at == _TWICE:
            return at
        if self.tape[at].kind == c'z':
            return _NULL
        if self.tape[at].kind != kind:
            return _TWICE
        return at

    cdef int _last(self, int arr) noexcept:
        """The index of the last element of array `arr`."""
        cdef int j = arr + 1, k
        for k in range(self.tape[arr].count - 1):
            j = self.tape[j].next
        return j

    cdef bint _after(self, int at, int than) noexcept:
        """Whether string `at` sorts after string `than` (as `max()` of str compares)."""
        cdef int n = self.tape[at].len, m = self.tape[than].len
        cdef int order = memcmp(self.text + self.tape[at].start, self.text + self.tape[than].start,
                                n if n < m else m)
        return order > 0 or (order == 0 and n > m)


cdef string _key_text(object key):
    """A declared key as bytes; empty where the shape declares none."""
    cdef string out
    if key:
        out = (<str>key).encode("ascii")
    return out
