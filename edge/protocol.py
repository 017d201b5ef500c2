"""HTTP/1.1 server protocol: bytes in, ``Request`` objects out, responses in request order.

An ``asyncio.Protocol`` (run on uvloop) feeding httptools (llhttp). Why not aiohttp's server:
a cache HIT must not build a request object graph, go through a router or middlewares — see
DESIGN.md "Runtime choices". What a server framework would do for us is done here:

* keep-alive and pipelining: requests are queued and answered strictly in order; a request
  the node answers synchronously (a HIT) is written straight from the parser callback;
* limits: request-target (414), head size and header count (431), body size (413), malformed
  input (400 and close) — llhttp already refuses Content-Length with Transfer-Encoding, bad
  chunk sizes, NUL and other bytes not allowed in a head;
* ``Expect: 100-continue``;
* timeouts: a whole head within ``header_timeout`` (slowloris), ``idle_timeout`` between
  keep-alive requests, a body or a send that makes no progress; checked by one sweep per
  second over all connections (``server.py``), not a timer per request;
* back-pressure: when the transport's buffer is full, reading pauses and streaming responses
  wait on ``drain``.

States of a connection: IDLE (between requests) → HEAD (a request line has started) → BODY →
(queued/answering) → IDLE, or CLOSING once a response says ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import httptools

from .http import Request, error_response

if TYPE_CHECKING:
    from .server import NodeServer

log = logging.getLogger("reelcdn.protocol")

IDLE, HEAD, BODY, CLOSING = 0, 1, 2, 3


class RequestRejected(Exception):
    """Raised from a parser callback to stop parsing with a status and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HttpConnection(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "server",
        "node",
        "limits",
        "transport",
        "parser",
        "state",
        "deadline",
        "closed",
        "paused",
        "client_ip",
        "_request",
        "_url",
        "_header_name",
        "_head_bytes",
        "_body",
        "_body_size",
        "_queue",
        "_busy",
        "_drain_waiter",
        "_close_after",
        "_reading_paused",
        "_ttfb_start",
        "_last_progress",
    )

    def __init__(self, server: NodeServer) -> None:
        self.server = server
        self.node = server.node
        self.limits = server.node.config.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.state = IDLE
        self.deadline = 0.0
        self.closed = False
        self.paused = False
        self.client_ip = ""
        self._request: Request | None = None
        self._url: list[bytes] = []
        self._header_name = b""
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: deque[Request] = deque()
        self._busy = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._close_after = False
        self._reading_paused = False
        self._ttfb_start = 0.0
        self._last_progress = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but has its methods.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        server = self.server
        server.node.stats.connections_total += 1
        if len(server.connections) >= self.limits.max_connections or server.draining:
            server.node.stats.connections_rejected += 1
            reason = "node is shutting down" if server.draining else "too many connections"
            transport.write(error_response(503, reason, close=True))
            transport.close()
            self.closed = True
            return
        server.connections.add(self)
        # The first request must arrive as promptly as any later head.
        self.deadline = server.clock + self.limits.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._queue.clear()

    def pause_writing(self) -> None:
        self.paused = True
        self._last_progress = self.server.clock
        if not self._reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._reading_paused and len(self._queue) < self.limits.max_pipelined:
            self._resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSING:
            return  # after an error or Connection: close, further bytes are not requests
        try:
            self.parser.feed_data(data)
        except RequestRejected as rejected:
            self._reject(rejected.status, rejected.reason)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRejected):
                self._reject(cause.status, cause.reason)
            else:
                log.exception("parser callback failed")
                self._reject(500, "internal error while reading the request")
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrade is not supported")
        except httptools.HttpParserInvalidMethodError:
            self._reject(400, "invalid request method")
        except httptools.HttpParserInvalidURLError:
            self._reject(400, "invalid request target")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the responses it asked for; then we close.
        if not self._busy and not self._queue:
            return None
        self._close_after = True
        return True

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        request = Request()
        request.client_ip = self.client_ip
        self._request = request
        self._url = []
        self._head_bytes = 0
        self._body = []
        self._body_size = 0
        self.state = HEAD
        self.deadline = self.server.clock + self.limits.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_target_bytes:
            raise RequestRejected(414, "request-target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._request
        assert request is not None
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.limits.max_head_bytes:
            raise RequestRejected(431, "request header fields too large")
        if len(request.raw_headers) >= self.limits.max_headers:
            raise RequestRejected(431, "too many header fields")
        request.raw_headers.append((name, value))
        lower = name.lower()
        headers = request.headers
        if lower in headers:
            headers[lower] = headers[lower] + b", " + value
        else:
            headers[lower] = value

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        parser = self.parser
        request.method = parser.get_method().decode("ascii", "replace")
        request.version = parser.get_http_version().encode()
        request.keep_alive = parser.should_keep_alive()
        request.start = self.server.loop.time()
        target = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        self._set_target(request, target)
        if request.version not in (b"1.1", b"1.0"):
            raise RequestRejected(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        if request.version == b"1.1" and b"host" not in request.headers:
            raise RequestRejected(400, "HTTP/1.1 request without Host")
        length = request.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            raise RequestRejected(413, "request body too large")
        expect = request.headers.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise RequestRejected(417, "unsupported expectation")
            if request.version == b"1.1" and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.state = BODY

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
            if url.schema not in (b"http", b"https") or url.host is None:
                raise RequestRejected(400, "request target must be a path")
            host = url.host.decode("latin-1").lower()
            if host not in self.server.served_hosts:
                raise RequestRejected(400, f"absolute-form target for a foreign host {host!r}")
            target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
        try:
            text = target.decode("ascii")
        except UnicodeDecodeError as exc:
            raise RequestRejected(400, "request target is not ASCII") from exc
        request.target = target
        path, _, query = text.partition("?")
        request.path = path
        request.query = query.partition("#")[0]

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_bytes:
            raise RequestRejected(413, "request body too large")
        self._body.append(body)
        self.deadline = self.server.clock + self.limits.header_timeout

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        if self._body:
            request.body = b"".join(self._body)
            self._body = []
        self.state = IDLE
        self.deadline = self.server.clock + self.limits.idle_timeout
        if self._busy or self._queue:
            self._queue.append(request)
            if len(self._queue) >= self.limits.max_pipelined:
                self._pause_reading()
            return
        self._dispatch(request)

    # -- answering ---------------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        """Answer one request; if the node needs to await, serialise the rest behind it."""
        self._ttfb_start = request.start
        pending = self.node.receive(request, self)
        if pending is None:
            self._after_response()
            return
        self._busy = True
        task = self.server.loop.create_task(self._run(pending))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _run(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except Exception:
            log.exception("request handling failed")
            self.abort()
        self._busy = False
        if self.closed:
            return
        self._after_response()
        while self._queue and not self._busy and not self.closed and self.state != CLOSING:
            self._dispatch(self._queue.popleft())
        if not self.paused and len(self._queue) < self.limits.max_pipelined:
            self._resume_reading()

    def _after_response(self) -> None:
        if self._close_after:
            self.state = CLOSING
            if self.transport is not None:
                self.transport.close()
            self._queue.clear()

    def _reject(self, status: int, reason: str) -> None:
        """Answer a protocol error in pipeline order, then close."""
        request = self._request or Request()
        self._request = None
        request.error = (status, reason)
        request.keep_alive = False
        self.state = CLOSING
        self._pause_reading()
        if self._busy or self._queue:
            self._queue.append(request)
        else:
            self._dispatch(request)

    # -- what the node uses ------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        if self._ttfb_start:
            self.node.stats.observe_ttfb(self.server.loop.time() - self._ttfb_start)
            self._ttfb_start = 0.0
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close_after(self, request: Request) -> bool:
        """Whether this response ends the connection; the node then sends Connection: close."""
        if not request.keep_alive or self.server.draining or self.state == CLOSING:
            self._close_after = True
        return self._close_after

    def close_after_response(self) -> None:
        self._close_after = True

    async def drain(self) -> None:
        """Wait until the transport's buffer has room (or the client is gone)."""
        if not self.paused or self.closed:
            return
        waiter = self.server.loop.create_future()
        self._drain_waiter = waiter
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def abort(self) -> None:
        """Cut the connection without completing the response (the body broke)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self._reading_paused = True

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()
            self._reading_paused = False

    # -- timeouts and shutdown (driven by the server's sweep) ---------------------------------
    def check_timeouts(self, now: float) -> None:
        if self.closed:
            return
        if self.paused:
            if now - self._last_progress > self.limits.send_timeout:
                self.node.stats.timeouts += 1
                self.abort()
            return
        if self._busy or self._queue:
            return  # answering; the upstream has its own timeouts
        if now < self.deadline:
            return
        self.node.stats.timeouts += 1
        if self.state in (HEAD, BODY):
            self.state = CLOSING
            if self.transport is not None:
                self.transport.write(error_response(408, "request not received in time",
                                                    close=True))
                self.transport.close()
        elif self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their response."""
        self._close_after = True
        if not self._busy and not self._queue and self.state == IDLE and self.transport:
            self.transport.close()
