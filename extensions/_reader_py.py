"""Request reading: bytes → httptools (llhttp) → ``Request`` objects, with the node's limits.

This is the part of the HTTP/1.1 server protocol that runs for every byte a client sends: the
llhttp parser's callbacks (``on_message_begin`` … ``on_message_complete``), the limits they
enforce and the errors they map, and the read-side state of the connection (IDLE → HEAD → BODY
→ IDLE, or CLOSING). It is free of sockets: what it produces goes to its connection (see
``protocol.HttpConnection``) through three calls — ``request_complete(request)``,
``reject(status, reason)`` and, for ``Expect: 100-continue``, ``expect_continue()``.

Why a class of its own: it is on the HIT path (six to eight callbacks per request), so it has a
compiled twin, ``extensions/_reader.pyx``, with the same API and behaviour
(``reelcdn.extensions.reader`` is the one in use; ``tests/test_reader.py`` runs both and
compares them on random input). This module is the reference.

What it refuses, beyond what llhttp already refuses (Content-Length with Transfer-Encoding,
bad chunk sizes, NUL and other bytes not allowed in a head): a request-target beyond
``max_target_bytes`` (414), a head beyond ``max_head_bytes`` or with more than ``max_headers``
fields (431, also for a head that never ends), a body beyond ``max_body_bytes`` (413), HTTP
versions other than 1.0/1.1 (505), CONNECT, two Host fields, a fragment, an absolute-form
target for a foreign host, a non-ASCII target, HTTP/1.1 without Host, an upgrade carrying a
body, Transfer-Encoding on HTTP/1.0 (400), transfer codings other than chunked (501) and
expectations other than 100-continue (417). Trailer fields of a chunked body are read and
dropped, never merged into the header fields (RFC 9110 §6.5.1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httptools

from reelcdn.extensions.message import Request
from reelcdn.extensions.target import BadPath, canonical_path, valid_host

__all__ = [
    "BODY",
    "CLOSING",
    "HEAD",
    "IDLE",
    "RequestReader",
    "RequestRejected",
    "StopParsing",
    "has_body",
]

log = logging.getLogger("reelcdn.protocol")

IDLE, HEAD, BODY, CLOSING = 0, 1, 2, 3


class RequestRejected(Exception):
    """Raised from a parser callback to stop parsing with a status and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class StopParsing(Exception):
    """Raised from a parser callback when the connection is closing: bytes after the last
    answered request are not requests."""


def has_body(length: bytes | None, coding: bytes | None) -> bool:
    """Whether a request with these Content-Length / Transfer-Encoding values has a body."""
    return coding is not None or (length is not None and length.strip(b"0") != b"")


class RequestReader:
    """The read side of one connection: feeds llhttp and turns its callbacks into requests.

    ``conn`` receives ``request_complete(request)`` for each whole request (in order),
    ``reject(status, reason)`` when the input is refused (the reader is CLOSING after it),
    and ``expect_continue()`` when a request asks for a 100 before sending its body.
    ``limits`` is the node's ``Limits``; ``served_hosts`` the host names an absolute-form
    target may name; ``clock`` the event loop's ``time`` (a request's start).

    ``state`` and ``deadline`` are the connection's read state and its timeout (a negative
    deadline is a timeout that starts at the next sweep; see ``protocol.py``); the connection
    sets ``state = CLOSING`` itself when a response ends it.
    """

    __slots__ = (
        "conn",
        "parser",
        "state",
        "deadline",
        "client_ip",
        "request",
        "_served_hosts",
        "_clock",
        "_max_target_bytes",
        "_max_head_bytes",
        "_max_headers",
        "_max_body_bytes",
        "_header_timeout",
        "_idle_timeout",
        "_body_timeout",
        "_body_min_rate",
        "_body_rate_grace",
        "_fields",
        "_raw_fields",
        "_url",
        "_head_bytes",
        "_head_raw",
        "_body",
        "_body_size",
    )

    def __init__(
        self, conn: Any, limits: Any, served_hosts: frozenset[str], clock: Callable[[], float]
    ) -> None:
        self.conn = conn
        self.parser = httptools.HttpRequestParser(self)
        self.state = IDLE
        # The first request must arrive as promptly as any later head.
        self.deadline = -float(limits.header_timeout)
        self.client_ip = ""
        self.request: Request | None = None  # the one being read, if any
        self._served_hosts = served_hosts
        self._clock = clock
        self._max_target_bytes: int = limits.max_target_bytes
        self._max_head_bytes: int = limits.max_head_bytes
        self._max_headers: int = limits.max_headers
        self._max_body_bytes: int = limits.max_body_bytes
        self._header_timeout = float(limits.header_timeout)
        self._idle_timeout = float(limits.idle_timeout)
        self._body_timeout = float(limits.body_timeout)
        self._body_min_rate: int = limits.body_min_rate_bytes
        self._body_rate_grace = float(limits.body_rate_grace)
        # Where on_header puts fields: the request's, or (for trailers) a throwaway.
        self._fields: dict[bytes, bytes] = {}
        self._raw_fields: list[tuple[bytes, bytes]] = []
        self._url: list[bytes] = []
        self._head_bytes = 0
        self._head_raw = 0
        self._body: list[bytes] = []
        self._body_size = 0

    # -- bytes in ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse what the client sent; refusals go to ``conn.reject``."""
        if self.state == CLOSING:
            return  # after an error or Connection: close, further bytes are not requests
        upgraded = -1
        try:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                upgraded = int(upgrade.args[0])
            if upgraded >= 0:
                # Outside the except block: an exception raised while one is handled gets
                # that one as its __context__, hiding the refusal httptools chained there.
                self._after_upgrade(data, upgraded)
        except RequestRejected as rejected:
            self.conn.reject(rejected.status, rejected.reason)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRejected):
                self.conn.reject(cause.status, cause.reason)
            elif not isinstance(cause, StopParsing):
                log.error("parser callback failed", exc_info=cause or exc)
                self.conn.reject(500, "internal error while reading the request")
        except httptools.HttpParserInvalidMethodError:
            self.conn.reject(400, "invalid request method")
        except httptools.HttpParserInvalidURLError:
            self.conn.reject(400, "invalid request target")
        except httptools.HttpParserError as exc:
            message = str(exc)
            if message.startswith("Invalid HTTP version"):
                self.conn.reject(505, "unsupported HTTP version: use HTTP/1.1")
            elif message.startswith("Pause on PRI"):
                self.conn.reject(505, "HTTP/2 is not supported here: use HTTP/1.1")
            else:
                self.conn.reject(400, f"malformed request: {message}")
        else:
            if self.state == HEAD:
                # llhttp hands a header line over only once it ends: count the bytes of a
                # head spanning reads, or an endless field would be buffered without limit.
                # (The read where the head began is not counted: it is bounded anyway.)
                if self._head_raw < 0:
                    self._head_raw = 0
                else:
                    self._head_raw += len(data)
                    if self._head_raw > self._max_head_bytes:
                        self.conn.reject(431, "request header fields too large")

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        """The upgrade is ignored: the request (bodyless, see on_headers_complete) was
        answered as HTTP/1.1, and what follows it is the next request."""
        while offset < len(data) and self.state != CLOSING:
            data = data[offset:]
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                offset = int(upgrade.args[0])

    def take_request(self) -> Request:
        """The request being read (or a new one), now the connection's to answer with an
        error: the reader forgets it."""
        request = self.request
        self.request = None
        return request if request is not None else Request()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.state == CLOSING:
            raise StopParsing  # pipelined behind a response that closes the connection
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

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self._max_target_bytes:
            raise RequestRejected(414, "request-target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head_bytes:
            raise RequestRejected(431, "request header fields too large")
        raw = self._raw_fields
        if len(raw) >= self._max_headers:
            raise RequestRejected(431, "too many header fields")
        raw.append((name, value))
        lower = name.lower()
        headers = self._fields
        if lower in headers:
            if lower == b"host":
                raise RequestRejected(400, "more than one Host field")
            headers[lower] = headers[lower] + b", " + value
        else:
            headers[lower] = value

    def on_headers_complete(self) -> None:
        request = self.request
        assert request is not None
        parser = self.parser
        request.method = parser.get_method().decode("ascii", "replace")
        request.version = parser.get_http_version().encode()
        request.keep_alive = parser.should_keep_alive()
        request.start = self._clock()
        if request.version not in (b"1.1", b"1.0"):
            raise RequestRejected(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        if request.method == "CONNECT":
            raise RequestRejected(400, "CONNECT is not supported: this is not a forward proxy")
        target = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        self._set_target(request, target)
        headers = request.headers
        if request.version == b"1.1" and b"host" not in headers:
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
            if request.version == b"1.0":
                raise RequestRejected(400, "Transfer-Encoding in an HTTP/1.0 request")
            if coding.strip().lower() != b"chunked":
                raise RequestRejected(501, "unsupported transfer coding: only chunked")
            # Trailer fields (after the last chunk) are read and dropped, never merged into
            # the header fields (RFC 9110 §6.5.1): a trailer could otherwise add a field
            # that was checked or forwarded as if the client had sent it in the head.
            self._fields = {}
            self._raw_fields = []
        if b"upgrade" in headers and parser.should_upgrade() and has_body(length, coding):
            # llhttp would not read the body of an upgrade; it must not become a request.
            raise RequestRejected(400, "Upgrade is not supported on a request with a body")
        expect = headers.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise RequestRejected(417, "unsupported expectation")
            if request.version == b"1.1" and has_body(length, coding):
                self.conn.expect_continue()
        self.state = BODY
        # The whole body has one deadline from here, however it trickles in (a body that
        # restarted its timeout with each byte would hold a connection forever).
        self.deadline = -self._body_timeout

    def _set_target(self, request: Request, target: bytes) -> None:
        """Accept origin-form, and absolute-form only for a host this node serves: a cache
        node is not an open forward proxy."""
        if target[:1] != b"/":
            if target == b"*" and request.method == "OPTIONS":
                request.target = target
                request.path = "*"
                return
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError as exc:
                raise RequestRejected(400, "invalid request target") from exc
            if url.schema is None or url.schema.lower() not in (b"http", b"https") or not url.host:
                raise RequestRejected(400, "request target must be a path")
            host = url.host.decode("latin-1").lower()
            if url.port is not None:
                host = f"{host}:{url.port}"
            if host not in self._served_hosts:
                raise RequestRejected(400, f"absolute-form target for a foreign host {host!r}")
            target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
        try:
            text = target.decode("ascii")
        except UnicodeDecodeError as exc:
            raise RequestRejected(400, "request target is not ASCII") from exc
        if "#" in text:  # (on str: ``in`` on bytes costs several times more)
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

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body_bytes:
            raise RequestRejected(413, "request body too large")
        self._body.append(body)

    def body_too_slow(self, now: float) -> bool:
        """Whether the body being read arrives below ``body_min_rate_bytes`` per second,
        averaged since its timing started (the deadline less ``body_timeout``), once it has
        taken longer than ``body_rate_grace``. Asked by the connection's timeout sweep."""
        if self.state != BODY or self.deadline < 0 or self._body_min_rate <= 0:
            return False
        elapsed = now - (self.deadline - self._body_timeout)
        return elapsed > self._body_rate_grace and self._body_size < self._body_min_rate * elapsed

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None
        self.request = None
        if self._body:
            request.body = b"".join(self._body)
            self._body = []
        self.state = IDLE
        self.deadline = -self._idle_timeout
        self.conn.request_complete(request)
