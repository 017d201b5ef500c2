# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of :mod:`reelcdn.extensions._head_py` (same function, same results).

The pure version joins a list of small ``bytes`` (a concatenation per field, ``%d`` formatting
per number); this one measures every piece first, allocates the result once and copies each
piece into it, writing the numbers' digits directly. Arguments of an unexpected type (not
exactly ``bytes`` / ``int`` / ``None`` / ``bool`` where the node passes those) or numbers
outside a signed 64-bit range are handed to the pure twin, so both behave identically for
every input, and only the node's own calls take the fast path.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from reelcdn.extensions._head_py import build_head as _pure_build_head
from reelcdn.extensions.message import status_line as _status_line

cdef dict _STATUS_LINES = {}

cdef bytes _AGE = b"Age: "
cdef bytes _CACHE_STATUS = b"Cache-Status: "
cdef bytes _TTL = b"; ttl="
cdef bytes _VIA = b"Via: "
cdef bytes _CONTENT_LENGTH = b"Content-Length: "
cdef bytes _CHUNKED = b"Transfer-Encoding: chunked\r\n"


cdef inline Py_ssize_t _digits(long long value):
    """Characters of ``%d`` of value (sign included)."""
    cdef Py_ssize_t n = 1
    cdef unsigned long long v
    if value < 0:
        n += 1
        v = <unsigned long long>(-(value + 1)) + 1
    else:
        v = <unsigned long long>value
    while v >= 10:
        v //= 10
        n += 1
    return n


cdef inline char* _put_int(char* p, long long value, Py_ssize_t width):
    cdef unsigned long long v
    cdef char* end = p + width
    cdef char* q = end
    if value < 0:
        p[0] = b'-'
        v = <unsigned long long>(-(value + 1)) + 1
    else:
        v = <unsigned long long>value
    while True:
        q -= 1
        q[0] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    return end


cdef inline char* _put(char* p, bytes data):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n:
        memcpy(p, PyBytes_AS_STRING(data), n)
    return p + n


cdef inline bint _int64(object value):
    return type(value) is int and -9223372036854775807 <= value <= 9223372036854775807


def build_head(
    status,
    header_block,
    age,
    prior_status,
    node_member,
    detail,
    ttl,
    prior_via,
    via_hop,
    length,
    chunked,
    connection,
):
    if not (
        type(status) is int
        and type(header_block) is bytes
        and (age is None or _int64(age))
        and type(prior_status) is bytes
        and type(node_member) is bytes
        and type(detail) is bytes
        and (ttl is None or _int64(ttl))
        and type(prior_via) is bytes
        and type(via_hop) is bytes
        and (length is None or _int64(length))
        and type(chunked) is bool
        and type(connection) is bytes
    ):
        return _pure_build_head(
            status, header_block, age, prior_status, node_member, detail, ttl, prior_via,
            via_hop, length, chunked, connection,
        )
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _status_line(status)
        if len(_STATUS_LINES) < 1024:
            _STATUS_LINES[status] = line
    cdef bytes status_bytes = <bytes>line
    cdef bytes block = <bytes>header_block
    cdef bytes prior_s = <bytes>prior_status
    cdef bytes member = <bytes>node_member
    cdef bytes det = <bytes>detail
    cdef bytes prior_v = <bytes>prior_via
    cdef bytes hop = <bytes>via_hop
    cdef bytes conn = <bytes>connection
    cdef bint has_age = age is not None
    cdef long long age_value = 0
    cdef Py_ssize_t age_width = 0
    cdef bint has_ttl = False
    cdef long long ttl_value = 0
    cdef Py_ssize_t ttl_width = 0
    cdef bint has_length = length is not None
    cdef long long length_value = 0
    cdef Py_ssize_t length_width = 0
    cdef Py_ssize_t det_len = PyBytes_GET_SIZE(det)
    cdef const char* det_ptr = PyBytes_AS_STRING(det)
    cdef Py_ssize_t total
    cdef char* p

    if has_age:
        age_value = age
        if age_value < 0:
            age_value = 0
        age_width = _digits(age_value)
    if ttl is not None and det_len >= 3 and det_ptr[0] == b'h' and det_ptr[1] == b'i' \
            and det_ptr[2] == b't':
        has_ttl = True
        ttl_value = ttl
        ttl_width = _digits(ttl_value)
    if has_length:
        length_value = length
        length_width = _digits(length_value)

    total = PyBytes_GET_SIZE(status_bytes) + PyBytes_GET_SIZE(block)
    if has_age:
        total += 5 + age_width + 2
    total += 14 + PyBytes_GET_SIZE(member) + 2 + det_len + 2
    if has_ttl:
        total += 6 + ttl_width
    if PyBytes_GET_SIZE(prior_s):
        total += PyBytes_GET_SIZE(prior_s) + 2
    total += 5 + PyBytes_GET_SIZE(hop) + 2
    if PyBytes_GET_SIZE(prior_v):
        total += PyBytes_GET_SIZE(prior_v) + 2
    if has_length:
        total += 16 + length_width + 2
    elif chunked:
        total += PyBytes_GET_SIZE(_CHUNKED)
    total += PyBytes_GET_SIZE(conn) + 2

    result = PyBytes_FromStringAndSize(NULL, total)
    p = PyBytes_AS_STRING(result)
    p = _put(p, status_bytes)
    p = _put(p, block)
    if has_age:
        p = _put(p, _AGE)
        p = _put_int(p, age_value, age_width)
        p[0] = b'\r'
        p[1] = b'\n'
        p += 2
    p = _put(p, _CACHE_STATUS)
    if PyBytes_GET_SIZE(prior_s):
        p = _put(p, prior_s)
        p[0] = b','
        p[1] = b' '
        p += 2
    p = _put(p, member)
    p[0] = b';'
    p[1] = b' '
    p += 2
    p = _put(p, det)
    if has_ttl:
        p = _put(p, _TTL)
        p = _put_int(p, ttl_value, ttl_width)
    p[0] = b'\r'
    p[1] = b'\n'
    p += 2
    p = _put(p, _VIA)
    if PyBytes_GET_SIZE(prior_v):
        p = _put(p, prior_v)
        p[0] = b','
        p[1] = b' '
        p += 2
    p = _put(p, hop)
    p[0] = b'\r'
    p[1] = b'\n'
    p += 2
    if has_length:
        p = _put(p, _CONTENT_LENGTH)
        p = _put_int(p, length_value, length_width)
        p[0] = b'\r'
        p[1] = b'\n'
        p += 2
    elif chunked:
        p = _put(p, _CHUNKED)
    p = _put(p, conn)
    p[0] = b'\r'
    p[1] = b'\n'
    return result
