"""Request coalescing that streams: one upstream fetch per key, many readers while it arrives.

The first miss for a key creates a ``Fetch`` and starts it as a task of its own, owned by no
client: a client that disconnects stops reading but never cancels the fetch others wait on.
Every later request for the key attaches to the same ``Fetch`` and reads its body as chunks
arrive (read-while-write). Readers sleep on futures that ``append``/``finish``/``fail`` resolve,
so they wake exactly when there is something new: no polling interval, unlike
``proxy_cache_lock``.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from reelcdn.edge.cache.freshness import Freshness
from reelcdn.edge.fetch.contract import FetchFailed
from reelcdn.edge.http.message import render_fields, validators


class FetchHead:
    """The upstream response head as the readers need it."""

    __slots__ = (
        "status",
        "headers",
        "content_length",
        "freshness",
        "shareable",
        "storable",
        "response_time",
        "initial_age",
        "vary",
        "etag",
        "last_modified",
        "content_type",
        "block",
        "prior",
    )

    def __init__(
        self,
        *,
        status: int,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        freshness: Freshness,
        shareable: bool,
        storable: bool,
        response_time: float,
        initial_age: float,
        vary: tuple[bytes, ...],
    ) -> None:
        self.status = status
        self.headers = headers
        self.content_length = content_length
        self.freshness = freshness
        self.shareable = shareable
        self.storable = storable
        self.response_time = response_time
        self.initial_age = initial_age
        self.vary = vary
        self.etag, self.last_modified, self.content_type = validators(headers)
        # The stored fields rendered once, shared by every reader's response head.
        self.block, self.prior = render_fields(headers)


class Fetch:
    """One in-flight upstream response: its head, then a growing list of body chunks."""

    __slots__ = (
        "key",
        "head",
        "chunks",
        "size",
        "done",
        "error",
        "readers",
        "_head_future",
        "_waiters",
        "_pushers",
        "_head_waiters",
        "task",
        "primary",
        "request_headers",
    )

    def __init__(self, key: str, primary: str = "", request_headers: dict | None = None) -> None:
        self.key = key
        # The URI key and the initiating request's fields: a response that turns out to
        # Vary is shared only with collapsed requests that select the same variant.
        self.primary = primary or key
        self.request_headers: dict[bytes, bytes] = request_headers or {}
        self.head: FetchHead | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.error: FetchFailed | None = None
        self.readers = 0
        self._head_future: asyncio.Future[FetchHead] = asyncio.get_running_loop().create_future()
        self._waiters: list[asyncio.Future[None]] = []
        self._pushers: list[_Pusher] = []
        self._head_waiters: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None

    # -- writer side (the fill task) --------------------------------------------------------
    def set_head(self, head: FetchHead) -> None:
        self.head = head
        if not self._head_future.done():
            self._head_future.set_result(head)
        self._wake_head()

    def _wake_head(self) -> None:
        waiters, self._head_waiters = self._head_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self._pushers:
            self._push()
        if self._waiters:
            self._wake()

    def finish(self) -> None:
        self.done = True
        self._release_pushers()
        self._wake()

    def fail(self, error: FetchFailed) -> None:
        self.error = error
        self.done = True
        if not self._head_future.done():
            self._head_future.set_exception(error)
            # Retrieved here so a fetch nobody waited on does not log "never retrieved".
            self._head_future.exception()
        self._wake_head()
        self._release_pushers()
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- reader side (clients) ----------------------------------------------------------------
    async def wait_head(self) -> FetchHead:
        """The response head, or raises ``FetchFailed``. Each reader waits on a future of
        its own: a reader that is cancelled must not cancel the shared one."""
        if not self._head_future.done():
            waiter = asyncio.get_running_loop().create_future()
            self._head_waiters.append(waiter)
            await waiter
        return self._head_future.result()

    async def wait_size(self, wanted: int) -> None:
        """Return once ``size >= wanted`` or the fetch is done (complete or failed)."""
        while self.size < wanted and not self.done:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _write_from(self, sink: Sink, pos: int, end: int | None, chunked: bool) -> int:
        """Write what has arrived of [pos, end) to ``sink`` now; return the new position."""
        limit = self.size if end is None else min(self.size, end)
        if pos >= limit:
            return pos
        # Find the chunk holding ``pos`` (readers usually resume at a chunk boundary).
        offset = self.size
        index = len(self.chunks)
        while offset > pos:
            index -= 1
            offset -= len(self.chunks[index])
        while pos < limit:
            chunk = self.chunks[index]
            lo = pos - offset
            hi = min(len(chunk), limit - offset)
            piece = chunk if lo == 0 and hi == len(chunk) else memoryview(chunk)[lo:hi]
            if chunked:
                sink.write(b"%x\r\n" % (hi - lo))
                sink.write(piece)
                sink.write(b"\r\n")
            else:
                sink.write(piece)
            pos = offset + hi
            offset += len(chunk)
            index += 1
        return pos

    async def stream_to(self, sink: Sink, start: int, end: int | None, chunked: bool) -> int:
        """Send [start, end) of the body to ``sink`` as it arrives; return bytes sent.

        While the sink keeps up, the *fetch* pushes each new chunk straight into it from
        ``append`` (one write per attached client, no task wake-up per chunk); the reader's
        task sleeps until its range is complete, the sink needs draining, or the fetch
        broke. Raises ``FetchFailed`` if the body ends early: the caller must then cut the
        client connection, since the status line has already gone out.
        """
        pos = start
        while True:
            pos = self._write_from(sink, pos, end, chunked)
            if (end is not None and pos >= end) or (self.done and pos >= self.size):
                if self.error is not None and (end is None or pos < end):
                    raise self.error
                if end is not None and pos < end:
                    raise FetchFailed(502, "upstream body shorter than announced")
                return pos - start
            if sink.closed:
                return pos - start
            if sink.paused:
                await sink.drain()
                continue
            if self.done:
                if self.error is not None:
                    raise self.error
                raise FetchFailed(502, "upstream body shorter than announced")
            pusher = _Pusher(sink, pos, end, chunked)
            self._pushers.append(pusher)
            pos = await pusher.future

    def _push(self) -> None:
        """Hand newly arrived bytes to every sink that is keeping up."""
        keep = []
        for pusher in self._pushers:
            sink = pusher.sink
            if not sink.closed and not sink.paused:
                pusher.pos = self._write_from(sink, pusher.pos, pusher.end, pusher.chunked)
                if (pusher.end is None or pusher.pos < pusher.end) and not sink.paused:
                    keep.append(pusher)
                    continue
            if not pusher.future.done():
                pusher.future.set_result(pusher.pos)
        self._pushers = keep

    def _release_pushers(self) -> None:
        pushers, self._pushers = self._pushers, []
        for pusher in pushers:
            if not pusher.future.done():
                pusher.future.set_result(pusher.pos)


class Sink(Protocol):
    """Where a reader's bytes go: the client connection (``protocol.HttpConnection``)."""

    closed: bool
    paused: bool

    def write(self, data: bytes | memoryview) -> None: ...

    async def drain(self) -> None: ...


class _Pusher:
    """A reader parked on a fetch: ``append`` writes to its sink until it is done."""

    __slots__ = ("sink", "pos", "end", "chunked", "future")

    def __init__(self, sink: Sink, pos: int, end: int | None, chunked: bool) -> None:
        self.sink = sink
        self.pos = pos
        self.end = end
        self.chunked = chunked
        self.future: asyncio.Future[int] = asyncio.get_running_loop().create_future()


class Coalescer:
    """The registry of in-flight fetches, by storage key."""

    def __init__(self) -> None:
        self._inflight: dict[str, Fetch] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def get(self, key: str) -> Fetch | None:
        return self._inflight.get(key)

    def add(self, fetch: Fetch) -> None:
        self._inflight[fetch.key] = fetch

    def discard(self, fetch: Fetch) -> None:
        """Forget a fetch (done, or no longer joinable) if it is still the registered one."""
        if self._inflight.get(fetch.key) is fetch:
            del self._inflight[fetch.key]
