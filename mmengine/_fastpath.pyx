# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled parts of the per-Price and per-frame path outside the book core (built by
setup.py with the package; `mmengine.fastpath` says how each is used and keeps the
plain-Python reference of each):

- `encode_price`: the Avro single-object payload of a Price, byte for byte what
  `mmengine.codec.encode_price` writes (a differential test compares them on random
  Prices), written into one C buffer instead of a list of Python bytes joined.
- `send`, `send2`, `recv`, `events`: ZeroMQ calls that never block (ZMQ_DONTWAIT) made
  holding the GIL. pyzmq releases the GIL around every send and recv, even one that cannot
  wait; on a busy engine each release hands the GIL to another thread and the caller then
  waits for it (up to the switch interval), paying two context switches. libzmq's functions
  are found at run time in the libzmq pyzmq loaded (`bind`), so nothing links against it.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AsDouble
from cpython.long cimport PyLong_AsLongLong
from cpython.object cimport PyObject_IsTrue
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

# --- Avro Price encoder -----------------------------------------------------------------


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _reserve(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap
    cdef char* grown
    if b.size + more <= b.cap:
        return 0
    cap = b.cap * 2
    while cap < b.size + more:
        cap *= 2
    grown = <char*>realloc(b.data, cap)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef int _bytes(Buf* b, const char* src, Py_ssize_t n) except -1:
    _reserve(b, n)
    memcpy(b.data + b.size, src, n)
    b.size += n
    return 0


cdef int _long(Buf* b, int64_t value) except -1:
    """Avro long: zig-zag, then base-128 varint (low 7 bits first)."""
    cdef uint64_t n = (<uint64_t>value << 1) ^ <uint64_t>(value >> 63)
    _reserve(b, 10)
    while n >= 0x80:
        b.data[b.size] = <char>((n & 0x7F) | 0x80)
        b.size += 1
        n >>= 7
    b.data[b.size] = <char>n
    b.size += 1
    return 0


cdef int _pylong(Buf* b, object value) except -1:
    return _long(b, PyLong_AsLongLong(value))


cdef int _double(Buf* b, object value) except -1:
    # Avro doubles are little-endian IEEE 754: the host's own layout (checked at import).
    cdef double d = PyFloat_AsDouble(value)
    return _bytes(b, <const char*>&d, 8)


cdef int _string(Buf* b, object text) except -1:
    cdef Py_ssize_t n
    cdef const char* utf8 = PyUnicode_AsUTF8AndSize(text, &n)
    _long(b, n)
    return _bytes(b, utf8, n)


cdef int _bool(Buf* b, object value) except -1:
    cdef char c = 1 if PyObject_IsTrue(value) else 0
    return _bytes(b, &c, 1)


cdef int _count(Buf* b, Py_ssize_t n) except -1:
    """An array's block count, when it has items (the end marker 0 is written after)."""
    if n:
        _long(b, n)
    return 0


cdef char ZERO = 0


cdef int _body(Buf* b, object p) except -1:
    cdef object item
    venues = p.venues
    _string(b, p.instrument)
    _pylong(b, p.epoch)
    _pylong(b, p.seq)
    _double(b, p.fair_value)
    _double(b, p.best_bid)
    _double(b, p.best_bid_size)
    _double(b, p.best_ask)
    _double(b, p.best_ask_size)
    _count(b, len(venues))
    for item in venues:
        _string(b, item)
    _bytes(b, &ZERO, 1)
    _pylong(b, p.exchange_ts_ns)
    _pylong(b, p.recv_ts_ns)
    _pylong(b, p.priced_ts_ns)
    _string(b, p.method)
    _double(b, p.volatility_bps)
    _double(b, p.half_spread_bps)
    _double(b, p.position)
    _double(b, p.skew_bps)
    _bool(b, p.halted)
    _string(b, p.halt_reason)
    _bool(b, p.cross_venue_crossed)
    for ladder in (p.bids, p.asks):
        _count(b, len(ladder))
        for price, size in ladder:
            _double(b, price)
            _double(b, size)
        _bytes(b, &ZERO, 1)
    used = p.venues_used
    _count(b, len(used))
    for item in used:
        _string(b, item.venue)
        _string(b, item.instrument)
        _double(b, item.mid)
        _double(b, item.weight)
        _double(b, item.fx_rate)
        _pylong(b, item.venue_seq)
        _pylong(b, item.recv_ts_ns)
    _bytes(b, &ZERO, 1)
    excluded = p.venues_excluded
    _count(b, len(excluded))
    for item in excluded:
        _string(b, item.venue)
        _string(b, item.instrument)
        _string(b, item.reason)
    _bytes(b, &ZERO, 1)
    return 0


def encode_price(bytes header, p):
    """The single-object payload of a Price: `header` (C3 01 + fingerprint), then the body
    (`mmengine.codec.encode_price`, compiled)."""
    cdef Buf b
    b.cap = 1024
    b.size = 0
    b.data = <char*>malloc(b.cap)
    if b.data == NULL:
        raise MemoryError()
    try:
        _bytes(&b, PyBytes_AS_STRING(header), PyBytes_GET_SIZE(header))
        _body(&b, p)
        return PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        free(b.data)


# --- ZeroMQ without releasing the GIL ----------------------------------------------------

cdef extern from *:
    """
    typedef struct { void *_[8]; } mm_zmq_msg_t;  /* zmq_msg_t: 64 bytes, pointer-aligned */
    typedef int (*mm_send_t)(void *, const void *, size_t, int);
    typedef int (*mm_msg_init_t)(mm_zmq_msg_t *);
    typedef int (*mm_msg_recv_t)(mm_zmq_msg_t *, void *, int);
    typedef void *(*mm_msg_data_t)(mm_zmq_msg_t *);
    typedef size_t (*mm_msg_size_t)(const mm_zmq_msg_t *);
    typedef int (*mm_msg_close_t)(mm_zmq_msg_t *);
    typedef int (*mm_getsockopt_t)(void *, int, void *, size_t *);
    """
    ctypedef struct mm_zmq_msg_t:
        pass
    ctypedef int (*mm_send_t)(void*, const void*, size_t, int)
    ctypedef int (*mm_msg_init_t)(mm_zmq_msg_t*)
    ctypedef int (*mm_msg_recv_t)(mm_zmq_msg_t*, void*, int)
    ctypedef void* (*mm_msg_data_t)(mm_zmq_msg_t*)
    ctypedef size_t (*mm_msg_size_t)(const mm_zmq_msg_t*)
    ctypedef int (*mm_msg_close_t)(mm_zmq_msg_t*)
    ctypedef int (*mm_getsockopt_t)(void*, int, void*, size_t*)


cdef mm_send_t z_send = NULL
cdef mm_msg_init_t z_msg_init = NULL
cdef mm_msg_recv_t z_msg_recv = NULL
cdef mm_msg_data_t z_msg_data = NULL
cdef mm_msg_size_t z_msg_size = NULL
cdef mm_msg_close_t z_msg_close = NULL
cdef mm_getsockopt_t z_getsockopt = NULL

# libzmq's constants (zmq.h; stable across libzmq 4.x)
cdef int DONTWAIT = 1
cdef int SNDMORE = 2
cdef int ZMQ_EVENTS = 15

ZMQ_FUNCTIONS = (
    "zmq_send",
    "zmq_msg_init",
    "zmq_msg_recv",
    "zmq_msg_data",
    "zmq_msg_size",
    "zmq_msg_close",
    "zmq_getsockopt",
)


def bind(dict addresses):
    """Take the addresses of libzmq's functions (`ZMQ_FUNCTIONS`, name -> address, from
    the libzmq pyzmq uses: the sockets are pyzmq's)."""
    global z_send, z_msg_init, z_msg_recv, z_msg_data, z_msg_size, z_msg_close, z_getsockopt
    for name in ZMQ_FUNCTIONS:
        if not addresses.get(name):
            raise ValueError(f"no address for {name}")
    z_send = <mm_send_t><size_t>addresses["zmq_send"]
    z_msg_init = <mm_msg_init_t><size_t>addresses["zmq_msg_init"]
    z_msg_recv = <mm_msg_recv_t><size_t>addresses["zmq_msg_recv"]
    z_msg_data = <mm_msg_data_t><size_t>addresses["zmq_msg_data"]
    z_msg_size = <mm_msg_size_t><size_t>addresses["zmq_msg_size"]
    z_msg_close = <mm_msg_close_t><size_t>addresses["zmq_msg_close"]
    z_getsockopt = <mm_getsockopt_t><size_t>addresses["zmq_getsockopt"]


cdef inline void* _handle(size_t handle) except NULL:
    if z_send == NULL:
        raise RuntimeError("mmengine._fastpath.bind() was not called")
    if handle == 0:
        raise ValueError("a closed socket")
    return <void*>handle


cdef object _error(int err):
    import zmq

    return zmq.ZMQError(err)


cdef int _send(void* sock, bytes data, int flags) except -2:
    """1 sent, 0 refused (EAGAIN).

    A send processes the socket's pending commands only if none were processed for about
    a millisecond, so a queue the reader has since emptied can still look full: the credit
    it sent back waits among those commands. A refused send therefore asks ZMQ_EVENTS,
    which processes them, and tries once more."""
    cdef int rc, value
    cdef size_t size
    cdef bint retried = False
    while True:
        rc = z_send(sock, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), flags | DONTWAIT)
        if rc >= 0:
            return 1
        if errno == EAGAIN:
            if retried:
                return 0
            retried = True
            size = sizeof(int)
            if z_getsockopt(sock, ZMQ_EVENTS, &value, &size) != 0:
                raise _error(errno)
            if not value & 2:  # ZMQ_POLLOUT: full indeed
                return 0
        elif errno != EINTR:
            raise _error(errno)


def send(size_t handle, bytes data):
    """Send one frame without waiting and without releasing the GIL; False when the
    socket refused it (EAGAIN: a full queue), ZMQError on any other error."""
    return _send(_handle(handle), data, 0) == 1


def send2(size_t handle, bytes first, bytes second):
    """Send a two-frame message (first with SNDMORE) as `send` does; False when the first
    frame was refused (nothing sent). libzmq counts whole messages against the high-water
    mark, so the second frame of an accepted first goes out."""
    cdef void* sock = _handle(handle)
    if not _send(sock, first, SNDMORE):
        return False
    if not _send(sock, second, 0):
        raise _error(EAGAIN)  # not expected: the message's first frame was taken
    return True


def recv(size_t handle):
    """One message frame without waiting and without releasing the GIL, as bytes; None
    when none is queued."""
    cdef void* sock = _handle(handle)
    cdef mm_zmq_msg_t msg
    cdef int rc
    z_msg_init(&msg)
    while True:
        rc = z_msg_recv(&msg, sock, DONTWAIT)
        if rc >= 0:
            break
        if errno == EAGAIN:
            z_msg_close(&msg)
            return None
        if errno != EINTR:
            z_msg_close(&msg)
            raise _error(errno)
    try:
        return PyBytes_FromStringAndSize(<char*>z_msg_data(&msg), z_msg_size(&msg))
    finally:
        z_msg_close(&msg)


def events(size_t handle):
    """The socket's ZMQ_EVENTS (POLLIN 1 | POLLOUT 2), as a plain int."""
    cdef void* sock = _handle(handle)
    cdef int value = 0
    cdef size_t size = sizeof(int)
    if z_getsockopt(sock, ZMQ_EVENTS, &value, &size) != 0:
        raise _error(errno)
    return value


# --- a socket read that does not wait ----------------------------------------------------

cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_recv "recv"(int fd, void* buf, size_t n, int flags)
    int MSG_DONTWAIT


def recv_into_nowait(int fd, bytearray buf, Py_ssize_t start):
    """Read what the socket `fd` holds into `buf[start:]` without waiting and without
    releasing the GIL: the bytes read, 0 when the peer closed the connection, -1 when
    nothing is waiting; OSError on a socket error."""
    cdef Py_ssize_t room = len(buf) - start
    cdef ssize_t n
    if start < 0 or room <= 0:
        raise ValueError("no room in the buffer")
    while True:
        n = c_recv(fd, <char*>buf + start, room, MSG_DONTWAIT)
        if n >= 0:
            return n
        if errno == EAGAIN:
            return -1
        if errno != EINTR:
            raise OSError(errno, os_strerror(errno))


cdef object os_strerror(int err):
    import os

    return os.strerror(err)
