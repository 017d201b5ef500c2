# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of :mod:`reelcdn.extensions._reader_py` (same class, same behaviour).

The pure reader spends most of a small request's parsing time in Python frames: six to eight
llhttp callbacks per request, each reading several attributes and limits. Here the reader is an
extension type: its state and limits are C fields, the callbacks are C functions behind
llhttp's calls, and the common values (``GET``, ``1.1``) are interned instead of decoded.
Everything it produces (``Request`` objects, exceptions, calls on the connection) is the pure
module's, imported from it, so the two are interchangeable; ``tests/test_reader.py`` feeds
both the same random input and compares what comes out.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

import logging

import httptools

from reelcdn.extensions.message import Request
from reelcdn.extensions.target import BadPath, canonical_path, valid_host
from reelcdn.extensions._reader_py import (
    BODY as _BODY,
    CLOSING as _CLOSING,
    HEAD as _HEAD,
    IDLE as _IDLE,
    RequestRejected,
    StopParsing,
    has_body,
)

log = logging.getLogger("reelcdn.protocol")

cdef int IDLE = _IDLE
cdef int HEAD = _HEAD
cdef int BODY = _BODY
cdef int CLOSING = _CLOSING

cdef object HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object HttpParserCallbackError = httptools.HttpParserCallbackError
cdef object HttpParserInvalidMethodError = httptools.HttpParserInvalidMethodError
cdef object HttpParserInvalidURLError = httptools.HttpParserInvalidURLError
cdef object HttpParserError = httptools.HttpParserError
cdef object parse_url = httptools.parse_url

# Methods and versions as the pure reader would decode/encode them, without doing it per request.
cdef dict _METHODS = {m.encode(): m for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")}
cdef dict _VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}

__all__ = ["BODY", "CLOSING", "HEAD", "IDLE", "RequestReader", "RequestRejected", "StopParsing",
           "has_body"]


cdef class RequestReader:
    """See :class:`reelcdn.extensions._reader_py.RequestReader`: the same API and behaviour."""

    cdef public object conn
    cdef public object parser
    cdef public int state
    cdef public double deadline
    cdef public object client_ip
    cdef public object request
    cdef object _served_hosts
    cdef object _clock
    cdef Py_ssize_t _max_target_bytes
    cdef Py_ssize_t _max_head_bytes
    cdef Py_ssize_t _max_headers
    cdef object _max_body_bytes  # compared with int(Content-Length), which has no bound
    cdef Py_ssize_t _max_body_size
    cdef double _header_timeout
    cdef double _idle_timeout
    cdef double _body_timeout
    cdef Py_ssize_t _body_min_rate
    cdef double _body_rate_grace
    cdef dict _fields
    cdef list _raw_fields
    cdef list _url
    cdef Py_ssize_t _head_bytes
    cdef Py_ssize_t _head_raw
    cdef list _body
    cdef Py_ssize_t _body_size

    def __init__(self, conn, limits, served_hosts, clock):
        self.conn = conn
        self.parser = httptools.HttpRequestParser(self)
        self.state = IDLE
        self.deadline = -float(limits.header_timeout)
        self.client_ip = ""
        self.request = None
        self._served_hosts = served_hosts
        self._clock = clock
        self._max_target_bytes = limits.max_target_bytes
        self._max_head_bytes = limits.max_head_bytes
        self._max_headers = limits.max_headers
        self._max_body_bytes = limits.max_body_bytes
        self._max_body_size = limits.max_body_bytes
        self._header_timeout = float(limits.header_timeout)
        self._idle_timeout = float(limits.idle_timeout)
        self._body_timeout = float(limits.body_timeout)
        self._body_min_rate = limits.body_min_rate_bytes
        self._body_rate_grace = float(limits.body_rate_grace)
        self._fields = {}
        self._raw_fields = []
        self._url = []
        self._head_bytes = 0
        self._head_raw = 0
        self._body = []
        self._body_size = 0

    # -- bytes in ---------------------------------------------------------------------------
    def feed(self, data):
        if self.state == CLOSING:
            return
        upgraded = -1
        try:
            try:
                self.parser.feed_data(data)
            except HttpParserUpgrade as upgrade:
                upgraded = int(upgrade.args[0])
            if upgraded >= 0:
                # Outside the except block: an exception raised while one is handled gets
                # that one as its __context__, hiding the refusal httptools chained there.
                self._after_upgrade(data, upgraded)
        except RequestRejected as rejected:
            self.conn.reject(rejected.status, rejected.reason)
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRejected):
                self.conn.reject(cause.status, cause.reason)
            elif not isinstance(cause, StopParsing):
                log.error("parser callback failed", exc_info=cause or exc)
                self.conn.reject(500, "internal error while reading the request")
        except HttpParserInvalidMethodError:
            self.conn.reject(400, "invalid request method")
        except HttpParserInvalidURLError:
            self.conn.reject(400, "invalid request target")
        except HttpParserError as exc:
            message = str(exc)
            if message.startswith("Invalid HTTP version"):
                self.conn.reject(505, "unsupported HTTP version: use HTTP/1.1")
            elif message.startswith("Pause on PRI"):
                self.conn.reject(505, "HTTP/2 is not supported here: use HTTP/1.1")
            else:
                self.conn.reject(400, f"malformed request: {message}")
        else:
            if self.state == HEAD:
                if self._head_raw < 0:
                    self._head_raw = 0
                else:
                    self._head_raw += len(data)
                    if self._head_raw > self._max_head_bytes:
                        self.conn.reject(431, "request header fields too large")

    cdef _after_upgrade(self, data, Py_ssize_t offset):
        while offset < len(data) and self.state != CLOSING:
            data = data[offset:]
            try:
                self.parser.feed_data(data)
                return
            except HttpParserUpgrade as upgrade:
                offset = int(upgrade.args[0])

    def take_request(self):
        request = self.request
        self.request = None
        return request if request is not None else Request()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self):
        if self.state == CLOSING:
            raise StopParsing
        request = Request()
        request.client_ip = self.client_ip
        self.request = request
        self._fields = request.headers
        self._raw_fields = request.raw_headers
        self._url = []
        self._head_bytes = 0
        self._head_raw = -1
        self._body = []
        self._body_size = 0
        self.state = HEAD
        self.deadline = -self._header_timeout

    def on_url(self, bytes url):
        self._url.append(url)
        self._head_bytes += PyBytes_GET_SIZE(url)
        if self._head_bytes > self._max_target_bytes:
            raise RequestRejected(414, "request-target too long")

    def on_header(self, bytes name, bytes value):
        self._head_bytes += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
        if self._head_bytes > self._max_head_bytes:
            raise RequestRejected(431, "request header fields too large")
        cdef list raw = self._raw_fields
        if len(raw) >= self._max_headers:
            raise RequestRejected(431, "too many header fields")
        raw.append((name, value))
        cdef bytes lower = name.lower()
        cdef dict headers = self._fields
        cdef object known = headers.get(lower)
        if known is not None:
            if lower == b"host":
                raise RequestRejected(400, "more than one Host field")
            headers[lower] = <bytes>known + b", " + value
        else:
            headers[lower] = value

    def on_headers_complete(self):
        request = self.request
        assert request is not None
        parser = self.parser
        cdef bytes method_bytes = parser.get_method()
        method = _METHODS.get(method_bytes)
        if method is None:
            method = method_bytes.decode("ascii", "replace")
        request.method = method
        version_text = parser.get_http_version()
        version = _VERSIONS.get(version_text)
        if version is None:
            version = version_text.encode()
        request.version = version
        request.keep_alive = parser.should_keep_alive()
        request.start = self._clock()
        if version != b"1.1" and version != b"1.0":
            raise RequestRejected(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        if method == "CONNECT":
            raise RequestRejected(400, "CONNECT is not supported: this is not a forward proxy")
        cdef list url = self._url
        target = url[0] if len(url) == 1 else b"".join(url)
        self._set_target(request, target, method)
        cdef dict headers = request.headers
        if version == b"1.1" and b"host" not in headers:
            raise RequestRejected(400, "HTTP/1.1 request without Host")
        host_field = headers.get(b"host")
        if host_field is not None and not valid_host(host_field):
            raise RequestRejected(400, "invalid Host field")
        length = headers.get(b"content-length")
        if length is not None:
            length = length.strip()
            if length.isdigit() and int(length) > self._max_body_bytes:
                raise RequestRejected(413, "request body too large")
        coding = headers.get(b"transfer-encoding")
        if coding is not None:
            if version == b"1.0":
                raise RequestRejected(400, "Transfer-Encoding in an HTTP/1.0 request")
            if coding.strip().lower() != b"chunked":
                raise RequestRejected(501, "unsupported transfer coding: only chunked")
            self._fields = {}
            self._raw_fields = []
        if b"upgrade" in headers and parser.should_upgrade() and has_body(length, coding):
            raise RequestRejected(400, "Upgrade is not supported on a request with a body")
        expect = headers.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise RequestRejected(417, "unsupported expectation")
            if version == b"1.1" and has_body(length, coding):
                self.conn.expect_continue()
        self.state = BODY
        self.deadline = -self._body_timeout

    cdef _set_target(self, request, bytes target, method):
        if PyBytes_GET_SIZE(target) == 0 or PyBytes_AS_STRING(target)[0] != b"/":
            if target == b"*" and method == "OPTIONS":
                request.target = target
                request.path = "*"
                return
            try:
                url = parse_url(target)
            except HttpParserInvalidURLError as exc:
                raise RequestRejected(400, "invalid request target") from exc
            if url.schema is None or url.schema.lower() not in (b"http", b"https") or not url.host:
                raise RequestRejected(400, "request target must be a path")
            host = url.host.decode("latin-1").lower()
            if url.port is not None:
                host = f"{host}:{url.port}"
            if host not in self._served_hosts:
                raise RequestRejected(400, f"absolute-form target for a foreign host {host!r}")
            target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
        cdef str text
        try:
            text = target.decode("ascii")
        except UnicodeDecodeError as exc:
            raise RequestRejected(400, "request target is not ASCII") from exc
        if "#" in text:
            raise RequestRejected(400, "request target with a fragment")
        path, _, query = text.partition("?")
        if "%" in path or "/." in path or "//" in path:  # target.is_canonical, inlined
            try:
                path = canonical_path(path)
            except BadPath as exc:
                raise RequestRejected(400, str(exc)) from None
            target = (path + "?" + query if query else path).encode("ascii")
        request.target = target
        request.path = path
        request.query = query

    def on_body(self, bytes body):
        self._body_size += PyBytes_GET_SIZE(body)
        if self._body_size > self._max_body_size:
            raise RequestRejected(413, "request body too large")
        self._body.append(body)

    def body_too_slow(self, double now):
        if self.state != BODY or self.deadline < 0 or self._body_min_rate <= 0:
            return False
        cdef double elapsed = now - (self.deadline - self._body_timeout)
        return elapsed > self._body_rate_grace and self._body_size < self._body_min_rate * elapsed

    def on_message_complete(self):
        request = self.request
        assert request is not None
        self.request = None
        if self._body:
            request.body = b"".join(self._body)
            self._body = []
        self.state = IDLE
        self.deadline = -self._idle_timeout
        self.conn.request_complete(request)
