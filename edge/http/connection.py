"""HTTP/1.1 server protocol: bytes in, ``Request`` objects out, responses in request order.

An ``asyncio.Protocol`` (run on uvloop). Reading is the ``RequestReader``'s (``reader.py``,
compiled from ``extensions/_reader.pyx`` when built): it feeds httptools (llhttp), enforces the
limits and hands whole requests to ``request_complete``; this module answers them. Why not
aiohttp's server:
a cache HIT must not build a request object graph, go through a router or middlewares — see
docs/overview.md, "Tiers". What a server framework would do for us is done here:

* keep-alive and pipelining: requests are queued and answered strictly in order; a request
  the node answers synchronously (a HIT) is written straight from the parser callback;
* limits: request-target (414), head size and header count (431, also for a head that never
  ends), body size (413), malformed input (400 and close) — llhttp already refuses
  Content-Length with Transfer-Encoding, bad chunk sizes, NUL and other bytes not allowed in a
  head; what it lets through and a cache must not (CONNECT, two Host fields, a fragment, an
  upgrade carrying a body, Transfer-Encoding on HTTP/1.0) is refused here;
* ``Expect: 100-continue``, sent only when the request is next to be answered;
* ``Upgrade`` is ignored (RFC 9110 §7.8): the request is answered over HTTP/1.1;
* trailer fields of a chunked body are discarded, never merged into the header fields;
* timeouts: a whole head within ``header_timeout`` (slowloris), a whole body within
  ``body_timeout`` and, after ``body_rate_grace``, at no less than ``body_min_rate_bytes`` per
  second on average (a body trickled byte by byte), ``idle_timeout`` between keep-alive
  requests (from the end of the last response), a send that makes no progress; checked by
  one sweep per second over all connections (``server.py``), not a timer per request. A
  negative ``deadline`` is a timeout that starts at the next sweep, so that the coarse clock
  never makes a timeout fire early;
* back-pressure: when the transport's buffer is full, reading pauses, streaming responses
  wait on ``drain`` and further requests (even HITs) wait until the client reads;
* a refused request is answered, then the connection is half-closed and what the client still
  sends is read and dropped for a moment (a "lingering close"), so that a client still
  sending a refused body reads the error instead of a reset.

States of a connection. The read side's are the reader's: IDLE (between requests) → HEAD (a
request line has started) → BODY → IDLE, or CLOSING once a response ends the connection (an
error, ``Connection: close``, shutdown): from then on no byte is parsed as a request. The write
side has one named state of its own (``_write``):

* ``idle``: nothing is being answered; a complete request is answered at once (a HIT from the
  parser callback);
* ``answering``: a task is producing a response (waiting for an upstream, or for the client to
  read); later requests queue behind it;
* ``sending file``: no task, but the rest of a body still leaves by ``sendfile(2)`` as the
  socket drains; later requests wait for it.

Two facts stand beside it: ``paused`` (the transport's buffer is full: the node's streamers
wait on ``drain``) and ``_close_after`` (this connection ends once what is being written is
out). Keep-alive is decided in one place, ``connection_field`` (every response asks it), and
acted on in one place, ``_response_done``.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from reelcdn.edge.cache.bodyfile import FileBody
from reelcdn.edge.http.message import error_response
from reelcdn.extensions import reader
from reelcdn.extensions._reader_py import BODY, CLOSING, HEAD, IDLE
from reelcdn.extensions.message import Request

if TYPE_CHECKING:
    from reelcdn.edge.config.model import NodeConfig
    from reelcdn.edge.metrics import NodeStats

log = logging.getLogger("reelcdn.protocol")


# What a connection needs of the things above it, stated here so that this module imports
# neither the node nor the server (h11's way: the protocol layer knows only its own needs).
# ``CacheNode`` and ``NodeServer`` satisfy these structurally.


class ConnectionNode(Protocol):
    """What a connection needs of the node that answers its requests (``CacheNode``)."""

    @property
    def config(self) -> NodeConfig:
        """Read for ``limits`` when the connection is made."""
        ...

    @property
    def stats(self) -> NodeStats:
        """Counted into: connections, rejections, timeouts, time to first byte."""
        ...

    def receive(self, req: Request, conn: HttpConnection) -> Awaitable[None] | None:
        """Answer ``req``: None when written synchronously, else what to await before the
        next request."""
        ...


class AccessLogSink(Protocol):
    """Where a connection hands each finished response for the access log
    (``edge/ops/accesslog.py``'s ``AccessLog``): queued, formatted and written elsewhere."""

    def emit(self, request: Request, client: str, head: bytes | None, sent: int, ttfb: float,
             end: float, aborted: bool) -> None: ...


class ConnectionOwner(Protocol):
    """What a connection needs of the server that accepted it (``NodeServer``)."""

    @property
    def node(self) -> ConnectionNode: ...

    @property
    def access_log(self) -> AccessLogSink | None:
        """Each response is handed to it when complete or cut; None: no access log."""
        ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def served_hosts(self) -> frozenset[str]:
        """Authorities an absolute-form target may name (the reader's Host check)."""
        ...

    @property
    def draining(self) -> bool:
        """Shutting down: new connections are refused with 503."""
        ...

    @property
    def connections(self) -> set[HttpConnection]:
        """The open connections (the sweep's and the connection limit's), joined and left
        by each connection itself."""
        ...

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """Answering tasks, kept alive (and cancelled at shutdown) by the owner."""
        ...


# How long a refused connection keeps reading (and dropping) what the client sends after the
# error response, so that the client sees the response rather than a reset.
LINGER_SECONDS = 2.0


# Linux: more data follows, hold the segment (like TCP_CORK for one call). 0 elsewhere.
_MSG_MORE = getattr(socket, "MSG_MORE", 0)

# What one TCP packet buffer (skb) of a sendfile'd body can hold, as the kernel builds it: at
# most MAX_SKB_FRAGS (17 by default) fragments, one per page of the file it touches, and one
# for the head sent before it with MSG_MORE. See ``lead_length``.
_PAGE = mmap.PAGESIZE


def lead_length(start: int, end: int) -> int:
    """How many bytes of a memory file's [start, end) ``write_file`` copies with the head
    (one ``sendmsg``) before ``sendfile`` takes the rest from a page boundary: those up to
    the first boundary, none when ``start`` is on one.

    Why: the head, copied into the socket's own page, takes one fragment of the packet
    buffer, and the body's first ``sendfile`` pass (16 pages, 64 KiB) one per page it touches.
    At a page-aligned offset a 64 KiB body touches 16 pages, and head and body leave as one
    buffer. At any other offset it touches 17: with the head that is 18 fragments, the kernel
    cuts the response into two buffers and the second waits behind the first. Where TCP
    paces itself (BBR without the fq qdisc, a common default) it waits for the pacing timer:
    a timer armed, an interrupt and a softirq per response, which doubled the system time of
    a 64 KiB Range HIT at a random offset (docs/benchmarks.md, "Ranges at any offset").
    Copying the partial first page with the head (at most 4 KiB) keeps it one fragment
    (two, rarely, when the socket's page fills in between) and starts ``sendfile`` on a
    page boundary."""
    if start % _PAGE == 0:
        return 0
    return min(end, start - start % _PAGE + _PAGE) - start


def _socket_of(transport: asyncio.BaseTransport) -> socket.socket | None:
    """A socket object sharing the transport's descriptor (``send`` with flags, and a
    ``fileno`` for sendfile); None if the transport has no socket (e.g. in tests)."""
    info = transport.get_extra_info("socket")
    if info is None:
        return None
    try:
        return socket.socket(fileno=info.fileno())
    except OSError:
        return None


# The write side's states (see the module docstring); compared by identity.
WRITE_IDLE = "idle"
WRITE_ANSWERING = "answering"
WRITE_SENDING_FILE = "sending file"

_FAILED_AT: set[tuple[type, str, int]] = set()  # where a request failed: tracebacks logged once


def _with_field(head: bytes | memoryview, line: bytes) -> bytes | memoryview:
    """``head`` (a response's first bytes) with ``line`` after its status line."""
    if type(head) is not bytes or not head.startswith(b"HTTP/"):
        return head
    end = head.find(b"\r\n") + 2
    return head[:end] + line + head[end:] if end > 1 else head


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {str(exc)[:200]}"


def _first(exc: BaseException) -> BaseException | None:
    """``exc`` the first time its innermost frame fails (for the log's traceback), else None."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    site = (type(exc), tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)
    if site in _FAILED_AT or len(_FAILED_AT) >= 256:
        return None
    _FAILED_AT.add(site)
    return exc


class _FileSend:
    """A body being sent with sendfile(2) as the socket drains: bytes [start, end) of body,
    over ``fd``, a duplicate of the connection's socket descriptor."""

    __slots__ = ("fd", "body", "start", "end")

    def __init__(self, fd: int, body: FileBody, start: int, end: int) -> None:
        self.fd = fd
        self.body = body
        self.start = start
        self.end = end


class HttpConnection(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "server",
        "node",
        "limits",
        "reader",
        "transport",
        "closed",
        "paused",
        "client_ip",
        "_queue",
        "_write",
        "_drain_waiter",
        "_close_after",
        "_reading_paused",
        "_ttfb_start",
        "_last_progress",
        "_eof",
        "_linger",
        "_expect_continue",
        "_socket",
        "_file_send",
        "cors_allow",
        "_req",
        "_head",
        "_sent",
        "_ttfb",
    )

    def __init__(self, server: ConnectionOwner) -> None:
        self.server = server
        self.node = server.node
        self.limits = server.node.config.limits
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self.client_ip = ""
        # The read side (parser callbacks, limits, read state): compiled when built.
        self.reader = reader.RequestReader(
            self, self.limits, server.served_hosts, server.loop.time
        )
        self._queue: deque[Request] = deque()
        self._write = WRITE_IDLE
        self._drain_waiter: asyncio.Future[None] | None = None
        self._close_after = False
        self._reading_paused = False
        self._ttfb_start = 0.0
        self._last_progress = 0.0
        self._eof = False
        self._linger = False
        self._expect_continue = False
        # A socket object over the transport's descriptor, for sendfile (see write_file);
        # created on first use, detached (never closed) when the connection ends.
        self._socket: socket.socket | None = None
        # The rest of a body that sendfile(2) could not send at once (see write_file).
        self._file_send: _FileSend | None = None
        # The response's Access-Control-Allow-Origin line when the node echoes the origin
        # (a list of cors_origins, edge/http/cors.py): set by the node for each request,
        # written into the response's head by its first write.
        self.cors_allow = b""
        # The access log's bookkeeping of the response being written: its request, its first
        # write (the head: status, Cache-Status), the bytes handed to the transport and the
        # time to first byte. Set on the hot path, read only when the node logs (_log).
        self._req: Request | None = None
        self._head: bytes | None = None
        self._sent = 0
        self._ttfb = -1.0

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but has its methods.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = self.reader.client_ip = peer[0] if isinstance(peer, tuple) else ""
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._req is not None and self.server.access_log is not None:
            self._log(True)  # the client left before the response was complete
        if self._file_send is not None:
            self._end_file_send()
        if self._socket is not None:
            self._socket.detach()  # the descriptor is the transport's: it closes it
            self._socket = None
        self.server.connections.discard(self)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._queue.clear()

    def pause_writing(self) -> None:
        self.paused = True
        self._last_progress = 0.0  # the send timeout starts at the next sweep
        if not self._reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if (
            self._reading_paused
            and self.reader.state != CLOSING
            and len(self._queue) < self.limits.max_pipelined
        ):
            self._resume_reading()

    @property
    def data_received(self) -> Callable[[bytes], None]:  # type: ignore[override]
        """The reader's ``feed`` (→ ``request_complete`` / ``reject`` / ``expect_continue``,
        below). A property rather than a method that forwards: uvloop looks
        ``data_received`` up once per connection and then calls what it got for every read,
        so the bytes go straight to the (compiled) reader with no Python frame of ours."""
        return self.reader.feed

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the responses it asked for; then we close.
        if self._idle():
            return None
        self._eof = True
        return True

    # -- what the reader calls --------------------------------------------------------------
    def request_complete(self, request: Request) -> None:
        """A whole request was read: answer it now, or queue it behind the ones before."""
        if self._write is WRITE_ANSWERING or self._queue:
            # (Only then can a 100 still be owed; the body came without waiting for it.)
            self._expect_continue = False
            self._queue.append(request)
            if len(self._queue) >= self.limits.max_pipelined:
                self._pause_reading()
            return
        if self.paused:
            # The client does not read what it already asked for: answer this one (even a
            # HIT) once it does, so one read full of pipelined requests cannot make the node
            # buffer all their responses.
            self._queue.append(request)
            self._start(self.drain(), answered=False)
            return
        # _dispatch, inlined: this is every HIT's path.
        self._ttfb_start = request.start
        self._req = request
        try:
            pending = self.node.receive(request, self)
        except Exception as exc:
            self._failed(request, exc)
            return
        if pending is not None:
            self._start(pending, request=request)
        else:
            self._response_done()

    def expect_continue(self) -> None:
        """The request being read waits for ``100 Continue`` before sending its body: send
        it now if the request is next to be answered, else when its turn comes."""
        if self._write is WRITE_ANSWERING or self._queue:
            self._expect_continue = True
        elif self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- answering ---------------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        """Answer one request; if the node needs to await, serialise the rest behind it."""
        self._ttfb_start = request.start
        self._req = request
        try:
            pending = self.node.receive(request, self)
        except Exception as exc:
            self._failed(request, exc)
            return
        if pending is None:
            self._response_done()
            return
        self._start(pending, request=request)

    def _start(
        self, pending: Awaitable[None], *, answered: bool = True, request: Request | None = None
    ) -> None:
        """Run ``pending`` (an answer to ``request``, or a wait for the client to read) before
        the queue."""
        self._write = WRITE_ANSWERING
        task = self.server.loop.create_task(self._run(pending, answered, request))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _run(
        self, pending: Awaitable[None], answered: bool, request: Request | None
    ) -> None:
        try:
            await pending
        except Exception as exc:
            self._answered()
            if request is None:
                log.error("connection task failed: %s", _describe(exc), exc_info=_first(exc))
                self.abort()
                return
            self._failed(request, exc)
            if not self.closed:
                self._answer_queued()
            return
        self._answered()
        if self.closed:
            return
        if answered:
            self._response_done()
        self._answer_queued()

    def _answered(self) -> None:
        """The answering task ended: idle, or still sending its body by sendfile."""
        self._write = WRITE_SENDING_FILE if self._file_send is not None else WRITE_IDLE

    def _answer_queued(self) -> None:
        """Answer queued requests in order until one has to wait (for the upstream, or for
        the client to read), then let the next request's head or body in."""
        queue = self._queue
        while queue and self._write is not WRITE_ANSWERING and not self.closed:
            if self.paused:
                self._start(self.drain(), answered=False)
                return
            self._dispatch(queue.popleft())
        if self._write is WRITE_ANSWERING or self.closed or self.reader.state == CLOSING:
            return
        if self._expect_continue and self.reader.state == BODY and self.transport is not None:
            self._expect_continue = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.paused and len(queue) < self.limits.max_pipelined:
            self._resume_reading()

    def _failed(self, request: Request, exc: Exception) -> None:
        """Answering ``request`` raised: a bug of the node, never the client's fault.

        Logged as one short line with the request line (the traceback only the first time a
        given place fails: a client that can trigger the bug must not be able to fill the log
        at 1.5 KB a request). Then, if no byte of this response was written yet
        (``_ttfb_start`` is reset by the first write), the client gets a synthetic 500, as
        from Varnish or nginx, and the connection goes on. nginx closes after an internal
        500 because its request body may be half read; here the request was read whole, so
        the framing is intact and the pipelined requests behind it, which do not depend on
        it, are answered in order. If part of the response is out, its framing is lost and
        the only honest end is to cut the connection (as for a broken upstream body).
        """
        target = request.target[:200].decode("latin-1")
        log.error("answering %s %s failed: %s", request.method, target, _describe(exc),
                  exc_info=_first(exc))
        if not self._ttfb_start or self.closed or self.transport is None:
            self.abort()
            return
        self._ttfb_start = 0.0
        if request.version != b"1.1" or not request.keep_alive:
            self._close_after = True
        close = self.connection_field(request) == b"Connection: close\r\n"
        answer = error_response(500, "internal error", close=close,
                                head_only=request.method == "HEAD")
        self._head, self._sent = answer, len(answer)
        self.transport.write(answer)
        self._response_done()

    def _response_done(self) -> None:
        """A response was written (or handed to sendfile): the one place a connection acts on
        keep-alive. It ends when the response said ``Connection: close``
        (``connection_field`` decided ``_close_after``) or the client half-closed with nothing
        left to answer; a body still leaving by sendfile goes first (``_close`` waits).
        The access log's line is handed over here, or once such a body is out."""
        if (self.server.access_log is not None and self._file_send is None
                and self._req is not None):
            self._log(False)
        if self._close_after or (self._eof and not self._queue):
            self._close()

    def _idle(self) -> bool:
        """Nothing being answered, sent or waiting: the connection may close at once."""
        return self._write is WRITE_IDLE and not self._queue

    def _close(self) -> None:
        """End the connection after its last response. After a refused request, half-close
        and drop what the client still sends for a moment (see LINGER_SECONDS): closing a
        socket with unread bytes sends a reset, which can destroy the error response before
        the client reads it."""
        self.reader.state = CLOSING
        self._queue.clear()
        if self._file_send is not None:
            self._close_after = True
            return  # the body still being sent goes first: _send_more closes after it
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self._linger or self.server.draining or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.reader.deadline = -LINGER_SECONDS
        if self._reading_paused and not self.closed:
            transport.resume_reading()
            self._reading_paused = False

    def reject(self, status: int, reason: str) -> None:
        """Answer a protocol error in pipeline order, then close."""
        reader = self.reader
        if reader.state == CLOSING:
            return  # bytes after the connection's last response (llhttp: data after close)
        request = reader.take_request()
        request.error = (status, reason)
        request.keep_alive = False
        reader.state = CLOSING
        self._linger = True
        self._pause_reading()
        if self._write is WRITE_ANSWERING or self._queue:
            self._queue.append(request)
        else:
            self._dispatch(request)

    def _log(self, aborted: bool) -> None:
        """Hand the response being answered to the access log: complete, or ``aborted`` with
        the bytes that left (what the transport or sendfile still held did not)."""
        request = self._req
        self._req = None
        sink = self.server.access_log
        if request is None or sink is None:
            return
        written = not self._ttfb_start  # (reset by the response's first write)
        sent = self._sent if written else 0
        if aborted and written:
            pending = self._file_send
            if pending is not None:
                sent -= pending.end - pending.start
            transport = self.transport
            if transport is not None:
                try:
                    sent -= transport.get_write_buffer_size()
                except Exception:  # a closed transport may not say
                    pass
        head = self._head if written else None
        if head is not None and type(head) is not bytes:
            head = bytes(head[:8192])
        sink.emit(request, self.client_ip, head, max(sent, 0),
                  self._ttfb if head is not None else -1.0, self.server.loop.time(), aborted)
        # A request refused before its head was whole has no start, so its answer is not a
        # "first write" (write): it adds to a count starting from here.
        self._head = None
        self._sent = 0

    # -- what the node uses ------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        if self._ttfb_start:  # the response's first write: its head
            self._ttfb = ttfb = self.server.loop.time() - self._ttfb_start
            self.node.stats.observe_ttfb(ttfb)
            self._ttfb_start = 0.0
            if self.cors_allow:
                data = _with_field(data, self.cors_allow)
            self._head = data  # type: ignore[assignment]
            self._sent = 0
        self._sent += len(data)
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def write_parts(self, pieces: list[bytes | memoryview]) -> None:
        """Write a response made of pieces (its head first, then e.g. the parts' heads and
        slices of a body) in one gather write: one system call and as few segments as the
        bytes need, where a write per piece made a segment per piece (``TCP_NODELAY``)."""
        if self._ttfb_start:
            self._ttfb = ttfb = self.server.loop.time() - self._ttfb_start
            self.node.stats.observe_ttfb(ttfb)
            self._ttfb_start = 0.0
            if self.cors_allow:
                pieces[0] = _with_field(pieces[0], self.cors_allow)
            self._head = pieces[0]  # type: ignore[assignment]
            self._sent = 0
        self._sent += sum(map(len, pieces))
        if not self.closed and self.transport is not None:
            self.transport.writelines(pieces)

    def write_file(self, head: bytes, body: FileBody, start: int, end: int) -> None:
        """Write ``head`` and bytes [start, end) of ``body`` with sendfile(2) when possible.

        Only when the transport has nothing queued may bytes bypass it (order on the wire);
        then the head goes out with ``MSG_MORE`` so that it shares a segment with the body
        (with the body's bytes up to the first page boundary copied beside it,
        ``lead_length``), and ``sendfile`` hands the memory file's pages to the socket
        without copying them (see ``bodyfile``). Whatever the socket does not take now is
        queued on the transport as a ``memoryview`` of the map, so back-pressure works as
        for any write.
        """
        if self._ttfb_start:
            self._ttfb = ttfb = self.server.loop.time() - self._ttfb_start
            self.node.stats.observe_ttfb(ttfb)
            self._ttfb_start = 0.0
            if self.cors_allow:
                head = _with_field(head, self.cors_allow)  # type: ignore[assignment]
            self._head = head
            self._sent = 0
        self._sent += len(head) + end - start
        transport = self.transport
        if self.closed or transport is None:
            return
        sock = self._socket
        queued = transport.get_write_buffer_size() or transport.is_closing()
        if sock is None and not queued:
            sock = self._socket = _socket_of(transport)
        if sock is None or queued:
            transport.write(head)
            transport.write(memoryview(body)[start:end])
            return
        lead = lead_length(start, end)
        try:
            if lead:
                more = _MSG_MORE if start + lead < end else 0
                sent = sock.sendmsg([head, memoryview(body)[start:start + lead]], (), more)
            else:
                sent = sock.send(head, _MSG_MORE)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()  # the peer is gone (EPIPE, ECONNRESET)
            return
        if sent < len(head):
            transport.write(head[sent:] if sent else head)
            transport.write(memoryview(body)[start:end])
            return
        start += sent - len(head)
        try:
            fd = sock.fileno()
            while start < end:
                sent = os.sendfile(fd, body.fd, start, end - start)
                if not sent:
                    break
                start += sent
        except BlockingIOError:
            self._send_file_later(fd, body, start, end)
            return
        except OSError:
            # The peer is gone (EPIPE, ECONNRESET): the transport would find out on its
            # next read; the response cannot complete, so end the connection now.
            self.abort()
            return
        if start < end:
            transport.write(memoryview(body)[start:end])

    def _send_file_later(self, fd: int, body: FileBody, start: int, end: int) -> None:
        """The socket is full before the body is out: go on with ``sendfile`` each time it
        is writable, rather than queueing the rest on the transport (which would copy it
        through ``write``). Meanwhile the connection counts as paused — later responses
        and reading wait, as when the transport's own buffer is full — and it resumes when
        the last byte is sent. The loop watches a duplicate of the socket's descriptor:
        the transport keeps its own registration of the original."""
        try:
            watched = os.dup(fd)
        except OSError:  # out of descriptors: the transport can still send it (copying)
            assert self.transport is not None
            self.transport.write(memoryview(body)[start:end])
            return
        self._file_send = _FileSend(watched, body, start, end)
        if self._write is WRITE_IDLE:
            self._write = WRITE_SENDING_FILE
        self.pause_writing()
        self.server.loop.add_writer(watched, self._send_more)

    def _send_more(self) -> None:
        """The socket is writable again: send what it takes of the rest of the body."""
        pending = self._file_send
        if pending is None:
            return
        try:
            sent = os.sendfile(pending.fd, pending.body.fd, pending.start,
                               pending.end - pending.start)
        except BlockingIOError:
            return
        except OSError:
            self.abort()  # the peer is gone (abort ends the file send)
            return
        if not sent:
            self.abort()  # the body file ended early: cannot happen with a sealed memfd
            return
        pending.start += sent
        self._last_progress = 0.0  # progress: the send timeout starts over
        if pending.start >= pending.end:
            self._end_file_send()
            self.resume_writing()
            if self._write is not WRITE_ANSWERING:
                self._response_done()  # a close that waited for this body (see _close)

    def _end_file_send(self) -> None:
        pending = self._file_send
        if pending is None:
            return
        self._file_send = None
        if self._write is WRITE_SENDING_FILE:
            self._write = WRITE_IDLE
        # Unregister before closing: epoll forgets a descriptor only when it is removed (or
        # when every descriptor of the socket is closed, and the transport holds one).
        self.server.loop.remove_writer(pending.fd)
        os.close(pending.fd)

    def connection_field(self, request: Request) -> bytes:
        """The Connection field this response carries: ``close`` when it ends the
        connection (then the connection closes after it), ``keep-alive`` for an HTTP/1.0
        client that asked to keep it (1.0 clients close otherwise), nothing for HTTP/1.1's
        default persistence. Every response asks, so the test is here, not in a helper."""
        if (
            self._close_after
            or not request.keep_alive
            or self.server.draining
            or (self._eof and not self._queue)
        ):
            self._close_after = True
            return b"Connection: close\r\n"
        if request.version == b"1.0":
            return b"Connection: keep-alive\r\n"
        return b""

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
        if self._req is not None and self.server.access_log is not None:
            self._log(True)
        self.closed = True
        if self._file_send is not None:
            self._end_file_send()
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
            if not self._last_progress:
                self._last_progress = now
            elif now - self._last_progress > self.limits.send_timeout:
                self.node.stats.timeouts += 1
                self.abort()
            return
        reader = self.reader
        if self._write is WRITE_ANSWERING or self._queue:
            # Answering (the upstream has its own timeouts); what is timed next starts after.
            if reader.state != CLOSING:
                limits = self.limits
                reader.deadline = -(limits.idle_timeout if reader.state == IDLE
                                    else limits.body_timeout if reader.state == BODY
                                    else limits.header_timeout)
            return
        deadline = reader.deadline
        if deadline < 0:
            reader.deadline = now - deadline  # started since the last sweep: time it from now
            return
        reason = "request not received in time"
        if now < deadline:
            if reader.state != BODY or not reader.body_too_slow(now):
                return
            reason = "request body arrives too slowly"
        elif reader.state == BODY:
            reason = "request body not received in time"
        transport = self.transport
        if reader.state == CLOSING:  # the lingering close is over
            if transport is not None:
                transport.close()
            return
        self.node.stats.timeouts += 1
        if reader.state == HEAD or reader.state == BODY:
            reader.state = CLOSING
            if transport is not None:
                transport.write(error_response(408, reason, close=True))
                transport.close()
        elif transport is not None:
            transport.close()

    def shutdown(self) -> None:
        """Graceful stop: idle (and lingering) connections close now, busy ones after their
        response."""
        self._close_after = True
        if (
            self._idle()
            and (self.reader.state == IDLE or self.reader.state == CLOSING)
            and self.transport
        ):
            self.transport.close()
