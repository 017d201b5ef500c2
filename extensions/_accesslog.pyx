# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of :mod:`reelcdn.extensions._accesslog_py` (same class, same bytes).

The pure formatter builds each line from Python strings (an f-string, a JSON escape per field,
a dict lookup per head and per target) and encodes the batch; this one reads each record's
values in place and writes the whole batch into one growing C buffer: the head's facts found
with ``memmem``, the target's token parameters skipped while it is copied, strings escaped
byte by byte, numbers and milliseconds written as digits. Only the second's timestamp comes
from Python, once a second.

Records outside what the node produces are handed to the pure twin, line by line, so both
give the same bytes for every input: a value of an unexpected type, a string that is not
one byte per character, a time outside 0..10¹¹ s, a status in the head that is not three
digits, a ``Cache-Status`` line without its end, a query parameter name with ``%`` or a
non-ASCII byte, a CMCD value that decodes to non-ASCII.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport (
    PyUnicode_1BYTE_KIND,
    PyUnicode_DATA,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
)
from libc.string cimport memcmp, memcpy

import random as _random

from reelcdn.extensions import _accesslog_py as _pure
# The twin's helpers, re-exported: both modules offer the same names.
from reelcdn.extensions._accesslog_py import (
    MAX_SECONDS,
    Record,
    cmcd_session,
    head_facts,
    strip_target,
)

__all__ = ["Collector", "LineFormatter", "Record", "cmcd_session", "head_facts", "strip_target"]

cdef tuple _NO_EXTRA = (None, None)


cdef extern from "string.h":
    void* memmem(const void* haystack, size_t haystacklen, const void* needle, size_t needlelen)
    void* memchr(const void* s, int c, size_t n)


cdef const char* _HEX = b"0123456789abcdef"
cdef const char* _HEX_UPPER = b"0123456789ABCDEF"
cdef const char* _CACHE_STATUS = b"\r\ncache-status:"
cdef double _MAX_SECONDS = MAX_SECONDS
# Wall-clock seconds beyond this are handed to the pure twin (64-bit milliseconds, and a
# second that time.gmtime takes).
cdef double _MAX_TIME = 1e11
DEF MAX_MEMBERS = 64


cdef inline bint _is_space(unsigned char c):
    """bytes.strip()'s whitespace."""
    return c == 32 or (9 <= c <= 13)


cdef inline unsigned char _lower(unsigned char c):
    return c + 32 if 65 <= c <= 90 else c


cdef inline int _hex_value(unsigned char c):
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef inline Py_ssize_t _find(const unsigned char* p, Py_ssize_t n, const char* needle,
                             Py_ssize_t m):
    cdef const unsigned char* at
    if n < m:
        return -1
    at = <const unsigned char*>memmem(p, <size_t>n, needle, <size_t>m)
    return -1 if at == NULL else at - p


cdef inline bint _latin1(object text):
    """A str of one byte per character (what the fast path reads in place)."""
    return PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND


cdef class Collector:
    """The records of responses not yet formatted (see the pure twin): the same checks and
    the same tuple, without a Python frame per response."""

    cdef public list pending
    cdef public Py_ssize_t capacity
    cdef public double sample
    cdef public bint combined
    cdef public Py_ssize_t queued
    cdef public Py_ssize_t written
    cdef public object on_first
    cdef public object on_drop
    cdef bytes _last_head

    def __init__(self, Py_ssize_t capacity, double sample, bint combined, on_first,
                 on_drop) -> None:
        self.pending = []
        self.capacity = capacity
        self.sample = sample
        self.combined = combined
        self.queued = 0
        self.written = 0
        self.on_first = on_first
        self.on_drop = on_drop
        self._last_head = None

    def emit(self, request, client, head, sent, ttfb, end, aborted) -> None:
        """Keep one response for the next batch (or not: the sample, a full buffer)."""
        cdef list pending = self.pending
        cdef object headers, error, extra, refused
        cdef const char* p
        cdef Py_ssize_t n, cut
        cdef bytes last
        if self.sample < 1.0 and _random.random() >= self.sample:
            return
        if len(pending) + self.queued - self.written >= self.capacity:
            self.on_drop()
            return
        if type(head) is bytes:  # the head alone; a HIT's repeats: the same object again
            p = PyBytes_AS_STRING(head)
            n = PyBytes_GET_SIZE(head)
            last = self._last_head
            # The last head ends at its first blank line, so a write that starts with it and
            # goes on has that head (no search).
            if last is not None and PyBytes_GET_SIZE(last) < n and \
                    memcmp(p, PyBytes_AS_STRING(last), <size_t>PyBytes_GET_SIZE(last)) == 0:
                head = last
            else:
                cut = _find(<const unsigned char*>p, n, b"\r\n\r\n", 4) + 4
                if 4 <= cut < n:
                    head = self._last_head = PyBytes_FromStringAndSize(p, cut)
        headers = request.headers
        error = request.error
        refused = error[0] if error is not None and not request.start else 0
        if self.combined:
            extra = (headers.get(b"referer"), headers.get(b"user-agent"))
        else:
            extra = _NO_EXTRA
        pending.append((request.method, request.target, request.version, request.start,
                        refused, request.query, headers.get(b"cmcd-session"), extra,
                        client, head, sent, ttfb, end, aborted))
        if len(pending) == 1:
            self.on_first()

    def take(self) -> list:
        """The records collected since the last take, oldest first."""
        cdef list batch = self.pending
        self.pending = []
        return batch


cdef struct Facts:
    long status
    Py_ssize_t head_len
    const unsigned char* cache
    Py_ssize_t cache_len
    const unsigned char* upstream
    Py_ssize_t upstream_len
    bint upstream_named  # the node's own upstream (upstream_name)


cdef class LineFormatter:
    """The lines of one node's records (see the pure twin)."""

    cdef readonly str node
    cdef readonly bytes member
    cdef readonly str upstream_name
    cdef readonly frozenset strip
    cdef object _pure
    cdef bytes _tail
    cdef bytes _upstream_json
    cdef tuple _ascii_names
    cdef long long _json_second
    cdef bytes _json_stamp
    cdef long long _clf_second
    cdef bytes _clf_stamp
    # The last head read, whole, and its facts (pointing into it): a HIT's first write is a
    # new object (head and body joined) but its head repeats for a second of Age.
    cdef bytes _memo
    cdef Facts _memo_facts
    cdef char* _buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap

    def __cinit__(self) -> None:
        self._buf = NULL
        self._len = 0
        self._cap = 0

    def __init__(self, str node, bytes member, str upstream_name, frozenset strip) -> None:
        self.node = node
        self.member = member
        self.upstream_name = upstream_name
        self.strip = strip
        self._pure = _pure.LineFormatter(node, member, upstream_name, strip)
        self._tail = (',"node":' + _pure.json_str(node) + ',"aborted":').encode("ascii")
        self._upstream_json = _pure.json_str(upstream_name).encode("ascii")
        # Only an ASCII name can equal an ASCII parameter name, lowercased.
        self._ascii_names = tuple(n.encode("ascii") for n in strip if n.isascii())
        self._json_second = -1
        self._json_stamp = b""
        self._clf_second = -1
        self._clf_stamp = b""
        self._memo = None

    def __dealloc__(self) -> None:
        if self._buf != NULL:
            PyMem_Free(self._buf)
            self._buf = NULL

    # -- the output buffer ------------------------------------------------------------------
    cdef int _reserve(self, Py_ssize_t more) except -1:
        cdef Py_ssize_t need = self._len + more
        cdef Py_ssize_t cap
        cdef char* grown
        if need <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap else 65536
        while cap < need:
            cap *= 2
        grown = <char*>PyMem_Realloc(self._buf, <size_t>cap)
        if grown == NULL:
            raise MemoryError()
        self._buf = grown
        self._cap = cap
        return 0

    cdef inline int _put(self, const char* p, Py_ssize_t n) except -1:
        self._reserve(n)
        memcpy(self._buf + self._len, p, <size_t>n)
        self._len += n
        return 0

    cdef inline int _put_bytes(self, bytes b) except -1:
        return self._put(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef int _put_int(self, long long value) except -1:
        cdef char digits[24]
        cdef int n = 0
        cdef unsigned long long v
        cdef bint negative = value < 0
        self._reserve(24)
        if negative:
            v = <unsigned long long>(-(value + 1)) + 1
        else:
            v = <unsigned long long>value
        while True:
            digits[n] = <char>(48 + v % 10)
            n += 1
            v //= 10
            if v == 0:
                break
        if negative:
            self._buf[self._len] = b'-'
            self._len += 1
        while n > 0:
            n -= 1
            self._buf[self._len] = digits[n]
            self._len += 1
        return 0

    cdef int _put_3(self, long long value) except -1:
        """Three digits, zero-padded (0..999)."""
        self._reserve(3)
        self._buf[self._len] = <char>(48 + value // 100)
        self._buf[self._len + 1] = <char>(48 + value // 10 % 10)
        self._buf[self._len + 2] = <char>(48 + value % 10)
        self._len += 3
        return 0

    cdef int _put_seconds(self, double value) except -1:
        """As the pure ``seconds``: milliseconds rounded, written ``S.mmm``."""
        cdef double scaled
        cdef long long ms = 0
        if value > 0:
            if value > _MAX_SECONDS:
                value = _MAX_SECONDS
            scaled = value * 1000.0
            scaled = scaled + 0.5
            ms = <long long>scaled
        self._put_int(ms // 1000)
        self._put_bytes(b".")
        return self._put_3(ms % 1000)

    cdef int _put_json(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Latin-1 text as the inside of a JSON string, as ``json.dumps`` escapes it."""
        cdef Py_ssize_t i
        cdef unsigned char c
        cdef char* out
        self._reserve(6 * n)
        out = self._buf + self._len
        for i in range(n):
            c = p[i]
            if 32 <= c <= 126 and c != 34 and c != 92:
                out[0] = <char>c
                out += 1
            else:
                out[0] = b'\\'
                if c == 34 or c == 92:
                    out[1] = <char>c
                    out += 2
                elif c == 10:
                    out[1] = b'n'
                    out += 2
                elif c == 13:
                    out[1] = b'r'
                    out += 2
                elif c == 9:
                    out[1] = b't'
                    out += 2
                elif c == 8:
                    out[1] = b'b'
                    out += 2
                elif c == 12:
                    out[1] = b'f'
                    out += 2
                else:
                    out[1] = b'u'
                    out[2] = b'0'
                    out[3] = b'0'
                    out[4] = _HEX[c >> 4]
                    out[5] = _HEX[c & 15]
                    out += 6
        self._len = out - self._buf
        return 0

    cdef int _put_nginx(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Latin-1 text escaped as nginx does (``\\xHH``)."""
        cdef Py_ssize_t i
        cdef unsigned char c
        cdef char* out
        self._reserve(4 * n)
        out = self._buf + self._len
        for i in range(n):
            c = p[i]
            if 32 <= c <= 126 and c != 34 and c != 92:
                out[0] = <char>c
                out += 1
            else:
                out[0] = b'\\'
                out[1] = b'x'
                out[2] = _HEX_UPPER[c >> 4]
                out[3] = _HEX_UPPER[c & 15]
                out += 4
        self._len = out - self._buf
        return 0

    cdef inline int _put_text(self, const unsigned char* p, Py_ssize_t n, bint json) except -1:
        if json:
            return self._put_json(p, n)
        return self._put_nginx(p, n)

    cdef bytes _take(self):
        cdef bytes out = PyBytes_FromStringAndSize(self._buf, self._len)
        self._len = 0
        return out

    # -- facts of a record --------------------------------------------------------------------
    cdef int _facts(self, bytes data, Facts* f):
        """The pure ``_head_facts`` of ``data``: 0, or 1 when the pure twin must decide."""
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef const char* q
        cdef Py_ssize_t m
        cdef int result
        if self._memo is not None:
            # The memo ends with its first blank line, so a write starting with it has the
            # same head.
            m = PyBytes_GET_SIZE(self._memo)
            if n >= m and memcmp(p, PyBytes_AS_STRING(self._memo), <size_t>m) == 0:
                f[0] = self._memo_facts
                return 0
        result = self._read_facts(data, f)
        if result == 0 and f.head_len >= 4 and memcmp(p + f.head_len - 4, b"\r\n\r\n", 4) == 0 \
                and _find(<const unsigned char*>p, f.head_len, b"\r\n\r\n", 4) == f.head_len - 4:
            self._memo = PyBytes_FromStringAndSize(p, f.head_len)
            q = PyBytes_AS_STRING(self._memo)
            self._memo_facts = f[0]
            if f.cache_len:
                self._memo_facts.cache = <const unsigned char*>q + (<const char*>f.cache - p)
            if f.upstream_len:
                self._memo_facts.upstream = <const unsigned char*>q + (<const char*>f.upstream - p)
        return result

    cdef int _read_facts(self, bytes data, Facts* f):
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t end, at, line_end, i, j, k, count, start, stop, semi
        cdef Py_ssize_t spans[MAX_MEMBERS][2]
        cdef const unsigned char* member = <const unsigned char*>PyBytes_AS_STRING(self.member)
        cdef Py_ssize_t member_len = PyBytes_GET_SIZE(self.member)
        cdef unsigned char c
        f.status = 0
        f.head_len = 0
        f.cache_len = 0
        f.upstream_len = 0
        f.upstream_named = False
        end = _find(p, n, b"\r\n\r\n", 4)
        if end >= 0:
            n = end + 4
        if n < 5 or memcmp(p, b"HTTP/", 5) != 0:
            return 0
        if n < 12:
            return 1
        for i in range(9, 12):
            if not 48 <= p[i] <= 57:
                return 1
        f.status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
        f.head_len = n
        # "\r\ncache-status:", any case
        at = -1
        i = 0
        while i + 15 <= n:
            c = p[i]
            if c == 13 and p[i + 1] == 10 and _lower(p[i + 2]) == 99:  # \r\nc
                j = 3
                while j < 15 and _lower(p[i + j]) == <unsigned char>_CACHE_STATUS[j]:
                    j += 1
                if j == 15:
                    at = i
                    break
            i += 1
        if at < 0:
            return 0
        line_end = _find(p + at + 2, n - at - 2, b"\r\n", 2)
        if line_end < 0:
            return 1
        stop = at + 2 + line_end
        # members: spans between commas, stripped
        count = 0
        start = at + 15
        while True:
            i = start
            while i < stop and p[i] != 44:
                i += 1
            if count == MAX_MEMBERS:
                return 1
            j, k = start, i
            while j < k and _is_space(p[j]):
                j += 1
            while k > j and _is_space(p[k - 1]):
                k -= 1
            spans[count][0] = j
            spans[count][1] = k
            count += 1
            if i >= stop:
                break
            start = i + 1
        for i in range(count - 1, -1, -1):
            j, k = spans[i][0], spans[i][1]
            semi = j
            while semi < k and p[semi] != 59:
                semi += 1
            start, stop = j, semi  # the name, stripped
            while start < stop and _is_space(p[start]):
                start += 1
            while stop > start and _is_space(p[stop - 1]):
                stop -= 1
            if stop - start != member_len or memcmp(p + start, member, <size_t>member_len) != 0:
                continue
            start, stop = (semi + 1 if semi < k else k), k  # the parameters, stripped
            while start < stop and _is_space(p[start]):
                start += 1
            while stop > start and _is_space(p[stop - 1]):
                stop -= 1
            f.cache = p + start
            f.cache_len = stop - start
            if f.cache_len >= 4 and memcmp(f.cache, b"fwd=", 4) == 0:
                if i == 0:
                    f.upstream_named = True
                else:
                    start, stop = spans[i - 1][0], spans[i - 1][1]
                    semi = start
                    while semi < stop and p[semi] != 59:
                        semi += 1
                    stop = semi
                    while start < stop and _is_space(p[start]):
                        start += 1
                    while stop > start and _is_space(p[stop - 1]):
                        stop -= 1
                    while start < stop and p[start] == 34:
                        start += 1
                    while stop > start and p[stop - 1] == 34:
                        stop -= 1
                    f.upstream = p + start
                    f.upstream_len = stop - start
            return 0
        return 0

    cdef bint _stripped_name(self, const unsigned char* p, Py_ssize_t n):
        """Whether an ASCII parameter name without ``%`` is one of the stripped names."""
        cdef bytes name
        cdef const unsigned char* q
        cdef Py_ssize_t i
        for name in self._ascii_names:
            if PyBytes_GET_SIZE(name) != n:
                continue
            q = <const unsigned char*>PyBytes_AS_STRING(name)
            i = 0
            while i < n and _lower(p[i]) == q[i]:
                i += 1
            if i == n:
                return True
        return False

    cdef int _check_query(self, const unsigned char* p, Py_ssize_t n):
        """1 when a parameter name in the target's query has ``%`` or a non-ASCII byte (the pure
        twin percent-decodes and lowercases it)."""
        cdef Py_ssize_t i = 0
        cdef bint in_name = True
        while i < n and p[i] != 63:  # ?
            i += 1
        for i in range(i + 1, n):
            if p[i] == 38:  # &
                in_name = True
            elif p[i] == 61:  # =
                in_name = False
            elif in_name and (p[i] == 37 or p[i] >= 128):
                return 1
        return 0

    cdef int _put_target(self, const unsigned char* p, Py_ssize_t n, bint json) except -1:
        """The target without stripped parameters (its query checked by _check_query)."""
        cdef Py_ssize_t q = 0, i, start, eq
        cdef bint first = True
        while q < n and p[q] != 63:  # ?
            q += 1
        self._put_text(p, q, json)
        if q == n:
            return 0
        start = q + 1
        while start <= n:
            i = start
            while i < n and p[i] != 38:
                i += 1
            if i > start:
                eq = start
                while eq < i and p[eq] != 61:
                    eq += 1
                if not self._stripped_name(p + start, eq - start):
                    if first:
                        self._put_text(<const unsigned char*>b"?", 1, json)
                        first = False
                    else:
                        self._put_text(<const unsigned char*>b"&", 1, json)
                    self._put_text(p + start, i - start, json)
            start = i + 1
        return 0

    cdef int _cmcd_value(self, str query, char* out, Py_ssize_t* size):
        """The ``CMCD`` query parameter's value percent-decoded into ``out`` (``size``: its
        length, 0 without one): 0, or 1 when it has (or decodes to) a non-ASCII byte or
        exceeds ``out``'s 512 bytes, which the pure twin decodes as UTF-8."""
        cdef const unsigned char* p = <const unsigned char*>PyUnicode_DATA(query)
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(query)
        cdef Py_ssize_t i, start = 0, eq, j, m = 0
        cdef int hi, lo
        cdef unsigned char c
        size[0] = 0
        while start <= n:
            i = start
            while i < n and p[i] != 38:  # &
                i += 1
            eq = start
            while eq < i and p[eq] != 61:  # =
                eq += 1
            if eq - start == 4 and _lower(p[start]) == 99 and _lower(p[start + 1]) == 109 \
                    and _lower(p[start + 2]) == 99 and _lower(p[start + 3]) == 100:  # cmcd
                j = eq + 1
                while j < i:
                    c = p[j]
                    if c >= 128 or m >= 512:
                        return 1
                    if c == 37 and j + 2 < i:  # %XX
                        hi = _hex_value(p[j + 1])
                        lo = _hex_value(p[j + 2])
                        if hi >= 0 and lo >= 0:
                            if hi >= 8:
                                return 1
                            c = <unsigned char>(hi * 16 + lo)
                            j += 2
                    out[m] = <char>c
                    m += 1
                    j += 1
                size[0] = m
                return 0
            start = i + 1
        return 0

    cdef int _put_sid(self, const unsigned char* p, Py_ssize_t n) except -1:
        """The ``sid`` of a CMCD value (``p``) as a JSON string."""
        cdef Py_ssize_t at, end, i
        at = _find(p, n, b'sid="', 5)
        self._put_bytes(b'"')
        if at >= 0:
            end = -1
            for i in range(at + 5, n):
                if p[i] == 34:
                    end = i
                    break
            if end > 0:
                self._put_json(p + at + 5, end - at - 5)
        return self._put_bytes(b'"')

    # -- lines ----------------------------------------------------------------------------------
    cdef int _plain_record(self, tuple r, bint json):
        """Whether the fast path can write ``r`` (else the pure twin writes it)."""
        cdef object extra
        if len(r) != 14:
            return 0
        if type(r[0]) is not str or not _latin1(r[0]):
            return 0
        if type(r[1]) is not bytes or type(r[2]) is not bytes or type(r[3]) is not float:
            return 0
        if type(r[4]) is not int or type(r[5]) is not str or not _latin1(r[5]):
            return 0
        if r[6] is not None and type(r[6]) is not bytes:
            return 0
        if type(r[8]) is not str or not _latin1(r[8]):
            return 0
        if r[9] is not None and type(r[9]) is not bytes:
            return 0
        if type(r[10]) is not int or type(r[11]) is not float or type(r[12]) is not float:
            return 0
        if type(r[13]) is not bool:
            return 0
        if not json:
            extra = r[7]
            if type(extra) is not tuple or len(extra) != 2:
                return 0
            if (extra[0] is not None and type(extra[0]) is not bytes) or \
                    (extra[1] is not None and type(extra[1]) is not bytes):
                return 0
        return 1

    def json_lines(self, list batch, double offset) -> bytes:
        """The records as JSON lines; ``offset`` turns the loop's clock into wall time."""
        cdef object record
        self._len = 0
        try:
            for record in batch:
                if type(record) is not tuple or not self._json_line(<tuple>record, offset):
                    self._put_bytes(self._pure.json_line(record, offset).encode("ascii"))
        except BaseException:
            self._len = 0  # (a line may be half written)
            raise
        return self._take()

    def combined_lines(self, list batch, double offset) -> bytes:
        """The records as nginx ``combined`` lines."""
        cdef object record
        self._len = 0
        try:
            for record in batch:
                if type(record) is not tuple or not self._combined_line(<tuple>record, offset):
                    self._put_bytes(self._pure.combined_line(record, offset).encode("ascii"))
        except BaseException:
            self._len = 0  # (a line may be half written)
            raise
        return self._take()

    def json_line(self, record, double offset) -> str:
        """One record's JSON line (as the pure twin's)."""
        return self.json_lines([record], offset).decode("ascii")

    def combined_line(self, record, double offset) -> str:
        """One record's ``combined`` line (as the pure twin's)."""
        return self.combined_lines([record], offset).decode("ascii")

    cdef bint _json_line(self, tuple r, double offset) except -1:
        cdef Facts f
        cdef str method, query, client
        cdef bytes target, version, head
        cdef object cmcd
        cdef long long refused, sent, ms, status, head_len
        cdef double start, ttfb, end, wall
        cdef bint aborted
        cdef char sid[512]
        cdef Py_ssize_t sid_len = 0
        if not self._plain_record(r, True):
            return False
        method = r[0]
        target = r[1]
        version = r[2]
        start = r[3]
        query = r[5]
        cmcd = r[6]
        client = r[8]
        head = r[9]
        ttfb = r[11]
        end = r[12]
        aborted = r[13]
        wall = (end + offset) * 1000.0
        if not 0.0 <= wall < _MAX_TIME * 1000.0:
            return False
        try:
            refused = r[4]
            sent = r[10]
        except OverflowError:
            return False
        if head is None:
            f.status = 0
            f.head_len = 0
            f.cache_len = 0
            f.upstream_len = 0
            f.upstream_named = False
        elif self._facts(head, &f):
            return False
        if not refused and self._check_query(
                <const unsigned char*>PyBytes_AS_STRING(target), PyBytes_GET_SIZE(target)):
            return False
        if query and self._cmcd_value(query, sid, &sid_len):
            return False
        # -- from here on, nothing is handed back: the line is written
        ms = <long long>wall
        if ms // 1000 != self._json_second:
            self._json_second = ms // 1000
            self._json_stamp = _pure.iso_second(ms // 1000).encode("ascii")
        status = f.status
        head_len = f.head_len
        if refused:
            status = refused
            head_len = 0
        if not status:
            status = 499 if aborted else 0
        self._put_bytes(b'{"time":"')
        self._put_bytes(self._json_stamp)
        self._put_bytes(b".")
        self._put_3(ms % 1000)
        self._put_bytes(b'Z","client":"')
        self._put_json(<const unsigned char*>PyUnicode_DATA(client), PyUnicode_GET_LENGTH(client))
        if refused:
            self._put_bytes(b'","method":"-","target":"-')
        else:
            self._put_bytes(b'","method":"')
            self._put_json(<const unsigned char*>PyUnicode_DATA(method),
                           PyUnicode_GET_LENGTH(method))
            self._put_bytes(b'","target":"')
            self._put_target(<const unsigned char*>PyBytes_AS_STRING(target),
                             PyBytes_GET_SIZE(target), True)
        if version == b"1.1":
            self._put_bytes(b'","protocol":"HTTP/1.1","status":')
        elif version == b"1.0":
            self._put_bytes(b'","protocol":"HTTP/1.0","status":')
        else:
            self._put_bytes(b'","protocol":"HTTP/?","status":')
        self._put_int(status)
        self._put_bytes(b',"bytes":')
        self._put_int(sent)
        self._put_bytes(b',"body_bytes":')
        self._put_int(sent - head_len if sent > head_len else 0)
        self._put_bytes(b',"ttfb":')
        if ttfb < 0:
            self._put_bytes(b"null")
        else:
            self._put_seconds(ttfb)
        self._put_bytes(b',"duration":')
        if start:
            self._put_seconds(end - start)
        else:
            self._put_bytes(b"0.000")
        self._put_bytes(b',"cache":"')
        self._put_json(f.cache, f.cache_len)
        self._put_bytes(b'","upstream":')
        if f.upstream_named:
            self._put_bytes(self._upstream_json)
        else:
            self._put_bytes(b'"')
            self._put_json(f.upstream, f.upstream_len)
            self._put_bytes(b'"')
        self._put_bytes(b',"sid":')
        if sid_len:
            self._put_sid(<const unsigned char*>sid, sid_len)
        elif cmcd is not None:
            self._put_sid(<const unsigned char*>PyBytes_AS_STRING(cmcd), PyBytes_GET_SIZE(cmcd))
        else:
            self._put_bytes(b'""')
        self._put_bytes(self._tail)
        if aborted:
            self._put_bytes(b"true}\n")
        else:
            self._put_bytes(b"false}\n")
        return True

    cdef bint _combined_line(self, tuple r, double offset) except -1:
        cdef Facts f
        cdef str method, client
        cdef bytes target, version, head
        cdef object referer, agent
        cdef long long refused, sent, second, status, head_len
        cdef double end, wall
        cdef bint aborted
        if not self._plain_record(r, False):
            return False
        method = r[0]
        target = r[1]
        version = r[2]
        referer, agent = r[7]
        client = r[8]
        head = r[9]
        end = r[12]
        aborted = r[13]
        wall = end + offset
        if not 0.0 <= wall < _MAX_TIME:
            return False
        try:
            refused = r[4]
            sent = r[10]
        except OverflowError:
            return False
        if head is None:
            f.status = 0
            f.head_len = 0
        elif self._facts(head, &f):
            return False
        if not refused and self._check_query(
                <const unsigned char*>PyBytes_AS_STRING(target), PyBytes_GET_SIZE(target)):
            return False
        second = <long long>wall
        if second != self._clf_second:
            self._clf_second = second
            self._clf_stamp = _pure.clf_second(second).encode("ascii")
        status = f.status
        head_len = f.head_len
        if refused:
            status = refused
            head_len = 0
        if not status:
            status = 499 if aborted else 0
        if PyUnicode_GET_LENGTH(client):
            self._put_nginx(<const unsigned char*>PyUnicode_DATA(client),
                            PyUnicode_GET_LENGTH(client))
        else:
            self._put_bytes(b"-")
        self._put_bytes(b" - - [")
        self._put_bytes(self._clf_stamp)
        self._put_bytes(b'] "')
        if refused:
            self._put_bytes(b"-")
        else:
            self._put_nginx(<const unsigned char*>PyUnicode_DATA(method),
                            PyUnicode_GET_LENGTH(method))
            self._put_bytes(b" ")
            self._put_target(<const unsigned char*>PyBytes_AS_STRING(target),
                             PyBytes_GET_SIZE(target), False)
            self._put_bytes(b" HTTP/")
            self._put_nginx(<const unsigned char*>PyBytes_AS_STRING(version),
                            PyBytes_GET_SIZE(version))
        self._put_bytes(b'" ')
        self._put_int(status)
        self._put_bytes(b" ")
        self._put_int(sent - head_len if sent > head_len else 0)
        self._put_bytes(b' "')
        self._put_quoted(referer)
        self._put_bytes(b'" "')
        self._put_quoted(agent)
        self._put_bytes(b'"\n')
        return True

    cdef int _put_quoted(self, object value) except -1:
        if value is None or PyBytes_GET_SIZE(value) == 0:
            return self._put_bytes(b"-")
        return self._put_nginx(<const unsigned char*>PyBytes_AS_STRING(value),
                               PyBytes_GET_SIZE(value))
