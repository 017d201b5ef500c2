# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, annotation_typing=False, embedsignature=True
"""Compiled twin of :mod:`reelcdn.extensions._ranges_py` (HTTP Range parsing and multipart framing).

Why this module looks the way it does:

* It is a *twin*, not a fork: every public name has the pure module's contract, and
  ``tests/test_extensions.py`` runs the pure module's table and property tests plus
  differential tests against both. Constants and the :data:`UNSATISFIABLE` sentinel are imported
  from the pure module, so ``result is ranges.UNSATISFIABLE`` holds whichever twin produced it.
* The hot path is plain C over ``const unsigned char*``: one pass over the header with no
  slicing, no ``str`` methods and no intermediate objects. Positions are ``uint64_t`` (19 digits
  always fit; ``int64_t`` would not). The only objects created are the result list and its
  tuples, or the ``bytes`` being formatted.
* Anything off the hot path is handed to the pure function itself: arguments of unusual types
  (``bytearray``, ``float``, ``bool``, ``str``/``bytes`` subclasses, ranges given as lists),
  object sizes of 2**63 bytes or more, and every error case of ``content_range`` /
  ``multipart_plan``. The pure module has no state and no side effects, so redoing the call there
  gives exactly its result or exception (type and message) with no second copy of the rules.
  ``parse_range`` raises its one error (negative size) itself, since a negative size is cheap
  to detect.
* Signatures carry no annotations on purpose (``annotation_typing=False``): Cython would turn
  them into argument type checks, which the pure twin does not make. The types are in
  ``_ranges.pyi``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_INCREF
from libc.limits cimport LLONG_MAX
from libc.stdint cimport UINT64_MAX, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memchr, memcpy

import os

from reelcdn.extensions import _ranges_py as _pure
from reelcdn.extensions._ranges_py import MAX_DIGITS, UNSATISFIABLE, RangeResult, Unsatisfiable


cdef extern from "Python.h":
    # Not (all) in Cython's cpython/*.pxd. PyUnicode_READY is a no-op from 3.12 on; on 3.11 it
    # makes a legacy (non-compact) string usable by the two macros below.
    int PyUnicode_READY(object o) except -1
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)


__all__ = [
    "MAX_DIGITS",
    "UNSATISFIABLE",
    "RangeResult",
    "Unsatisfiable",
    "content_range",
    "multipart_plan",
    "new_boundary",
    "parse_range",
    "unsatisfied_range",
]

cdef object _UNSAT = UNSATISFIABLE  # C-level reference: no module-dict lookup per call
cdef object _pure_parse_range = _pure.parse_range
cdef object _pure_content_range = _pure.content_range
cdef object _pure_unsatisfied_range = _pure.unsatisfied_range
cdef object _pure_multipart_plan = _pure.multipart_plan

cdef enum:
    _STACK_SPANS = 32      # ranges held on the C stack before falling back to the heap
    _U64_DIGITS = 20       # decimal digits of 2**64 - 1
    _MAX_BOUNDARY = 70     # RFC 2046 §5.1.1

cdef const char* _HEX = b"0123456789abcdef"


ctypedef struct span:
    uint64_t start
    uint64_t end        # exclusive


# RFC 2046 bchars, as a 256-entry lookup table built once at import.
cdef unsigned char _BCHAR[256]


cdef void _init_bchars() noexcept:
    cdef const unsigned char* allowed = (
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
    )
    cdef Py_ssize_t i
    for i in range(256):
        _BCHAR[i] = 0
    i = 0
    while allowed[i] != 0:
        _BCHAR[allowed[i]] = 1
        i += 1


_init_bchars()


# ---------------------------------------------------------------------------------------------
# C helpers
# ---------------------------------------------------------------------------------------------


cdef inline bint _ows(unsigned char c) noexcept nogil:
    """SP or HTAB: the only optional whitespace of RFC 9110 §5.6.3."""
    return c == 32 or c == 9


cdef inline bint _number(const unsigned char* p, Py_ssize_t n, uint64_t* out) noexcept nogil:
    """1*DIGIT of at most MAX_DIGITS ASCII digits into ``out``; false if not one.

    19 digits are at most 10**19 - 1 < 2**64, so the accumulation cannot overflow.
    """
    cdef uint64_t value = 0
    cdef Py_ssize_t i
    cdef unsigned char c
    if n <= 0 or n > 19:
        return False
    for i in range(n):
        c = p[i] - 48           # unsigned wrap-around turns anything below '0' into >= 10
        if c > 9:
            return False
        value = value * 10 + c
    out[0] = value
    return True


cdef inline Py_ssize_t _put_u64(char* out, uint64_t value) noexcept nogil:
    """Decimal digits of ``value`` written at ``out``; returns how many (at most 20)."""
    cdef char tmp[_U64_DIGITS]
    cdef Py_ssize_t n = 0, i
    if value == 0:
        out[0] = 48
        return 1
    while value:
        tmp[n] = <char>(48 + value % 10)
        value //= 10
        n += 1
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef int _cmp_spans(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const span*>a).start
    cdef uint64_t y = (<const span*>b).start
    return (x > y) - (x < y)


cdef void _sort_spans(span* spans, Py_ssize_t n) noexcept nogil:
    """Ascending by start (ties in any order: merging makes them irrelevant)."""
    cdef Py_ssize_t i, j
    cdef span item
    if n > _STACK_SPANS:
        qsort(spans, <size_t>n, sizeof(span), _cmp_spans)
        return
    for i in range(1, n):       # insertion sort: a handful of ranges in practice
        item = spans[i]
        j = i - 1
        while j >= 0 and spans[j].start > item.start:
            spans[j + 1] = spans[j]
            j -= 1
        spans[j + 1] = item


cdef list _as_list(const span* spans, Py_ssize_t n, uint64_t size, object size_obj):
    """``[(start, end), ...]`` as Python ints; an end equal to ``size`` reuses ``size_obj``
    (the caller's own int, as in the pure twin) instead of allocating an equal one."""
    cdef list result = PyList_New(n)
    cdef tuple pair
    cdef object end
    cdef Py_ssize_t i
    for i in range(n):
        end = size_obj if spans[i].end == size else PyLong_FromUnsignedLongLong(spans[i].end)
        pair = (PyLong_FromUnsignedLongLong(spans[i].start), end)
        Py_INCREF(pair)                 # PyList_SET_ITEM steals a reference
        PyList_SET_ITEM(result, i, pair)
    return result


# ---------------------------------------------------------------------------------------------
# parse_range
# ---------------------------------------------------------------------------------------------


cdef object _parse(
    const unsigned char* p, Py_ssize_t n, uint64_t size, object size_obj, long long max_ranges
):
    """The pure ``parse_range`` after its argument checks, over ``n`` bytes at ``p``.

    Spans are collected on the C stack (or on the heap past ``_STACK_SPANS``); Python objects
    are made only for the result.
    """
    cdef span stack_spans[_STACK_SPANS]
    cdef span stack_sorted[_STACK_SPANS]
    cdef span* spans = stack_spans
    cdef span* ordered = stack_sorted
    cdef Py_ssize_t capacity = _STACK_SPANS
    cdef Py_ssize_t nspans = 0, count = 0
    cdef Py_ssize_t i, j, a, b, d, k
    cdef const unsigned char* eq
    cdef uint64_t first, last, suffix, end
    cdef bint disjoint

    eq = <const unsigned char*>memchr(p, 61, <size_t>n)        # '='
    if eq == NULL:
        return None
    # unit: "bytes" case-insensitively, OWS around it. c | 0x20 equals a lower-case letter only
    # for that letter and its upper-case form, and non-ASCII bytes never match.
    a = 0
    b = eq - p
    while a < b and _ows(p[a]):
        a += 1
    while b > a and _ows(p[b - 1]):
        b -= 1
    if (
        b - a != 5
        or (p[a] | 0x20) != 98          # b
        or (p[a + 1] | 0x20) != 121     # y
        or (p[a + 2] | 0x20) != 116     # t
        or (p[a + 3] | 0x20) != 101     # e
        or (p[a + 4] | 0x20) != 115     # s
    ):
        return None

    try:
        i = (eq - p) + 1
        while True:
            # element [i, j): up to the next ',' or the end; OWS stripped to [a, b)
            j = i
            while j < n and p[j] != 44:                        # ','
                j += 1
            a = i
            b = j
            while a < b and _ows(p[a]):
                a += 1
            while b > a and _ows(p[b - 1]):
                b -= 1
            if a < b:
                count += 1
                if count > max_ranges:
                    return None
                d = a
                while d < b and p[d] != 45:                    # '-'
                    d += 1
                if d == b:
                    return None
                if d == a:
                    # suffix-range: the last `suffix` bytes
                    if not _number(p + d + 1, b - d - 1, &suffix):
                        return None
                    if suffix > 0 and size > 0:
                        if nspans == capacity:
                            spans = _grow(spans, stack_spans, &capacity, nspans)
                        spans[nspans].start = size - suffix if suffix < size else 0
                        spans[nspans].end = size
                        nspans += 1
                else:
                    if not _number(p + a, d - a, &first):
                        return None
                    if d + 1 < b:
                        if not _number(p + d + 1, b - d - 1, &last) or last < first:
                            return None
                        end = last + 1 if last < size else size    # min(last + 1, size)
                    else:
                        end = size
                    if first < size:
                        if nspans == capacity:
                            spans = _grow(spans, stack_spans, &capacity, nspans)
                        spans[nspans].start = first
                        spans[nspans].end = end
                        nspans += 1
            if j >= n:
                break
            i = j + 1

        if count == 0:
            return None     # "bytes=" or only empty elements
        if nspans == 0:
            return _UNSAT
        if nspans == 1:
            return _as_list(spans, 1, size, size_obj)

        if nspans > _STACK_SPANS:
            ordered = <span*>PyMem_Malloc(<size_t>nspans * sizeof(span))
            if ordered == NULL:
                raise MemoryError()
        memcpy(ordered, spans, <size_t>nspans * sizeof(span))
        _sort_spans(ordered, nspans)
        disjoint = True
        for k in range(1, nspans):
            if not ordered[k - 1].end < ordered[k].start:
                disjoint = False
                break
        if disjoint:
            # Disjoint and not adjacent: keep the client's order (RFC 9110 §15.3.7.2 SHOULD).
            return _as_list(spans, nspans, size, size_obj)
        k = 0           # merge in place: ordered[0..k] is the merged prefix
        for j in range(1, nspans):
            if ordered[j].start <= ordered[k].end:     # overlapping or adjacent
                if ordered[j].end > ordered[k].end:
                    ordered[k].end = ordered[j].end
            else:
                k += 1
                ordered[k] = ordered[j]
        return _as_list(ordered, k + 1, size, size_obj)
    finally:
        if spans != stack_spans:
            PyMem_Free(spans)
        if ordered != stack_sorted:
            PyMem_Free(ordered)


cdef span* _grow(span* spans, span* stack_spans, Py_ssize_t* capacity, Py_ssize_t used) except NULL:
    """Double the span buffer, moving it to the heap; frees the old heap buffer."""
    cdef span* grown = <span*>PyMem_Malloc(<size_t>(capacity[0] * 2) * sizeof(span))
    if grown == NULL:
        raise MemoryError()
    memcpy(grown, spans, <size_t>used * sizeof(span))
    if spans != stack_spans:
        PyMem_Free(spans)
    capacity[0] *= 2
    return grown


def parse_range(header, size, max_ranges=16):
    """Ranges as ``(start, end_exclusive)`` within an object of ``size`` bytes.

    Same contract as :func:`reelcdn.extensions._ranges_py.parse_range` (read its docstring): ``None`` to
    ignore the header, :data:`UNSATISFIABLE` for a 416, or a fresh non-empty list.
    """
    cdef long long csize, cmax
    cdef int overflow = 0
    cdef const unsigned char* data
    cdef Py_ssize_t length

    if header is None:
        return None
    if type(size) is not int or type(max_ranges) is not int:
        return _pure_parse_range(header, size, max_ranges)
    csize = PyLong_AsLongLongAndOverflow(size, &overflow)
    if overflow > 0:
        return _pure_parse_range(header, size, max_ranges)     # >= 2**63 bytes
    if overflow < 0 or csize < 0:
        raise ValueError(f"negative size {size}")
    cmax = PyLong_AsLongLongAndOverflow(max_ranges, &overflow)
    if overflow > 0:
        cmax = LLONG_MAX                # no limit in practice
    elif overflow < 0:
        cmax = -1                       # any range is one too many
    if type(header) is bytes:
        data = <const unsigned char*>PyBytes_AS_STRING(header)
        length = PyBytes_GET_SIZE(header)
    elif type(header) is str:
        PyUnicode_READY(header)
        if not PyUnicode_IS_ASCII(header):
            return None
        data = <const unsigned char*>PyUnicode_DATA(header)
        length = PyUnicode_GET_LENGTH(header)
    else:
        return _pure_parse_range(header, size, max_ranges)
    # A non-ASCII byte in a bytes header (the pure twin returns None for it after decoding as
    # latin-1) can only sit in the unit or a range-spec, where it makes the header invalid too.
    return _parse(data, length, <uint64_t>csize, size, cmax)


# ---------------------------------------------------------------------------------------------
# Content-Range
# ---------------------------------------------------------------------------------------------


cdef inline bint _as_u63(object value, uint64_t* out):
    """``value`` (an exact int) into ``out`` if 0 <= value < 2**63."""
    cdef int overflow = 0
    cdef long long v
    if type(value) is not int:
        return False
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow != 0 or v < 0:
        return False
    out[0] = <uint64_t>v
    return True


cdef Py_ssize_t _put_range(char* out, uint64_t start, uint64_t end, uint64_t size) noexcept:
    """``bytes a-b/size`` for ``[start, end)`` at ``out`` (at most 68 bytes); returns length."""
    cdef Py_ssize_t n = 6
    memcpy(out, b"bytes ", 6)
    n += _put_u64(out + n, start)
    out[n] = 45     # '-'
    n += 1
    n += _put_u64(out + n, end - 1)
    out[n] = 47     # '/'
    n += 1
    n += _put_u64(out + n, size)
    return n


def content_range(start, end, size):
    """``Content-Range`` value for ``[start, end)`` of ``size`` bytes: ``b"bytes 0-499/1234"``.

    Same contract as :func:`reelcdn.extensions._ranges_py.content_range`.
    """
    cdef uint64_t s = 0, e = 0, z = 0   # initialised for gcc's -Wmaybe-uninitialized
    cdef char buf[80]
    if (
        _as_u63(start, &s) and _as_u63(end, &e) and _as_u63(size, &z)
        and s < e and e <= z
    ):
        return PyBytes_FromStringAndSize(buf, _put_range(buf, s, e, z))
    return _pure_content_range(start, end, size)


def unsatisfied_range(size):
    """``Content-Range`` value for a 416 response: ``b"bytes */1234"``.

    Same contract as :func:`reelcdn.extensions._ranges_py.unsatisfied_range`.
    """
    cdef uint64_t z = 0
    cdef char buf[32]
    if _as_u63(size, &z):
        memcpy(buf, b"bytes */", 8)
        return PyBytes_FromStringAndSize(buf, 8 + _put_u64(buf + 8, z))
    return _pure_unsatisfied_range(size)


# ---------------------------------------------------------------------------------------------
# multipart/byteranges
# ---------------------------------------------------------------------------------------------


cdef bint _valid_boundary(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    if n <= 0 or n > _MAX_BOUNDARY or p[n - 1] == 32:
        return False
    for i in range(n):
        if not _BCHAR[p[i]]:
            return False
    return True


cdef object _plan(list ranges, uint64_t size, object content_type, bytes boundary):
    """The pure ``multipart_plan`` once its arguments have the usual exact types.

    Returns ``None`` whenever the pure twin must decide instead (it then raises its error, or
    handles an unusual element such as a list pair).
    """
    cdef const char* bnd = PyBytes_AS_STRING(boundary)
    cdef Py_ssize_t blen = PyBytes_GET_SIZE(boundary)
    cdef const char* ct = NULL
    cdef Py_ssize_t ctlen = 0
    cdef Py_ssize_t nranges = len(ranges)
    cdef Py_ssize_t prefix_len, tail_len, size_len, i
    cdef char* prefix = NULL
    cdef char* w
    cdef char tail[80]
    cdef char size_digits[_U64_DIGITS]
    cdef uint64_t s = 0, e = 0, total = 0, add
    cdef object item, start, end
    cdef bytes head, closing
    cdef list parts

    if nranges == 0 or not _valid_boundary(<const unsigned char*>bnd, blen):
        return None
    if content_type is not None:
        ct = PyBytes_AS_STRING(content_type)
        ctlen = PyBytes_GET_SIZE(content_type)
        if memchr(ct, 13, <size_t>ctlen) != NULL or memchr(ct, 10, <size_t>ctlen) != NULL:
            return None

    # Every head is prefix + "a-b/size" + CRLF CRLF, where prefix is
    # CRLF "--" boundary CRLF ["Content-Type: " ct CRLF] "Content-Range: bytes ".
    prefix_len = 4 + blen + 2 + (16 + ctlen if ct != NULL else 0) + 21
    prefix = <char*>PyMem_Malloc(<size_t>prefix_len)
    if prefix == NULL:
        raise MemoryError()
    try:
        w = prefix
        memcpy(w, b"\r\n--", 4)
        w += 4
        memcpy(w, bnd, <size_t>blen)
        w += blen
        memcpy(w, b"\r\n", 2)
        w += 2
        if ct != NULL:
            memcpy(w, b"Content-Type: ", 14)
            w += 14
            memcpy(w, ct, <size_t>ctlen)
            w += ctlen
            memcpy(w, b"\r\n", 2)
            w += 2
        memcpy(w, b"Content-Range: bytes ", 21)
        size_len = _put_u64(size_digits, size)

        parts = []
        for i in range(nranges):
            if i >= len(ranges):
                return None                              # shrunk under us (a finaliser?)
            item = ranges[i]
            if type(item) is not tuple or len(<tuple>item) != 2:
                return None
            start = (<tuple>item)[0]
            end = (<tuple>item)[1]
            if not (_as_u63(start, &s) and _as_u63(end, &e) and s < e and e <= size):
                return None
            tail_len = _put_u64(tail, s)
            tail[tail_len] = 45                          # '-'
            tail_len += 1
            tail_len += _put_u64(tail + tail_len, e - 1)
            tail[tail_len] = 47                          # '/'
            tail_len += 1
            memcpy(tail + tail_len, size_digits, <size_t>size_len)
            tail_len += size_len
            memcpy(tail + tail_len, b"\r\n\r\n", 4)
            tail_len += 4
            head = PyBytes_FromStringAndSize(NULL, prefix_len + tail_len)
            w = PyBytes_AS_STRING(head)
            memcpy(w, prefix, <size_t>prefix_len)
            memcpy(w + prefix_len, tail, <size_t>tail_len)
            parts.append((head, start, end))
            add = <uint64_t>(prefix_len + tail_len) + (e - s)
            if total > UINT64_MAX - add:
                return None                              # let Python ints add it up
            total += add
    finally:
        PyMem_Free(prefix)

    closing = PyBytes_FromStringAndSize(NULL, blen + 8)
    w = PyBytes_AS_STRING(closing)
    memcpy(w, b"\r\n--", 4)
    memcpy(w + 4, bnd, <size_t>blen)
    memcpy(w + 4 + blen, b"--\r\n", 4)
    if total > UINT64_MAX - <uint64_t>(blen + 8):
        return None
    return parts, closing, total + <uint64_t>(blen + 8)


def multipart_plan(ranges, size, content_type, boundary):
    """Plan a ``multipart/byteranges`` body (RFC 9110 §14.6).

    Same contract as :func:`reelcdn.extensions._ranges_py.multipart_plan`: returns
    ``([(part_head, start, end_exclusive), ...], closing, total_length)``.
    """
    cdef uint64_t z = 0
    cdef object plan
    if (
        type(ranges) is list
        and type(boundary) is bytes
        and (content_type is None or type(content_type) is bytes)
        and _as_u63(size, &z)
    ):
        plan = _plan(<list>ranges, z, content_type, <bytes>boundary)
        if plan is not None:
            return plan
    return _pure_multipart_plan(ranges, size, content_type, boundary)


def new_boundary():
    """A fresh random boundary: 20 hex digits (80 bits from ``os.urandom``).

    Same contract as :func:`reelcdn.extensions._ranges_py.new_boundary`; ``os.urandom`` is looked up at
    call time, as in the pure twin.
    """
    cdef object raw = os.urandom(10)
    cdef const unsigned char* r
    cdef bytes out
    cdef char* w
    cdef Py_ssize_t i
    if type(raw) is not bytes or PyBytes_GET_SIZE(raw) != 10:
        return raw.hex().encode("ascii")
    r = <const unsigned char*>PyBytes_AS_STRING(raw)
    out = PyBytes_FromStringAndSize(NULL, 20)
    w = PyBytes_AS_STRING(out)
    for i in range(10):
        w[2 * i] = _HEX[r[i] >> 4]
        w[2 * i + 1] = _HEX[r[i] & 15]
    return out
