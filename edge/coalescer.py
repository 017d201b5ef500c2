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
from collections.abc import AsyncIterator

from .freshness import Freshness


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
        "upstream_cache_status",
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
        lookup = {n.lower(): v for n, v in headers}
        etag = lookup.get(b"etag")
        modified = lookup.get(b"last-modified")
        self.etag = etag.decode("latin-1") if etag is not None else None
        self.last_modified = modified.decode("latin-1") if modified is not None else None
        self.content_type = lookup.get(b"content-type")


class FetchFailed(Exception):
    """The upstream fetch failed; ``status`` is what a client should get (502 or 504)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
        self.task: asyncio.Task[None] | None = None

    # -- writer side (the fill task) --------------------------------------------------------
    def set_head(self, head: FetchHead) -> None:
        self.head = head
        if not self._head_future.done():
            self._head_future.set_result(head)

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, error: FetchFailed) -> None:
        self.error = error
        self.done = True
        if not self._head_future.done():
            self._head_future.set_exception(error)
            # Retrieved here so a fetch nobody waited on does not log "never retrieved".
            self._head_future.exception()
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- reader side (clients) ----------------------------------------------------------------
    async def wait_head(self) -> FetchHead:
        """The response head, or raises ``FetchFailed``. Shielded: a reader that is
        cancelled (client gone) must not cancel the shared future."""
        return await asyncio.shield(self._head_future)

    async def wait_size(self, wanted: int) -> None:
        """Return once ``size >= wanted`` or the fetch is done (complete or failed)."""
        while self.size < wanted and not self.done:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def body(self) -> bytes:
        """The whole body; only valid once ``done`` without error."""
        if len(self.chunks) != 1:
            self.chunks = [b"".join(self.chunks)]
        return self.chunks[0]

    async def read(self, start: int, end: int | None) -> AsyncIterator[memoryview]:
        """Yield the bytes in [start, end) as they arrive (end None: to the end of the body).

        Raises ``FetchFailed`` if the fetch breaks before ``end``: the caller must then cut
        the client connection, since the status line has already gone out.
        """
        pos = start
        index = 0
        chunk_start = 0
        while True:
            if end is not None and pos >= end:
                return
            if pos >= self.size:
                if self.done:
                    if self.error is not None:
                        raise self.error
                    if end is not None and pos < end:
                        raise FetchFailed(502, "upstream body shorter than announced")
                    return
                await self.wait_size(pos + 1)
                continue
            chunks = self.chunks
            if index >= len(chunks) or chunk_start > pos:
                index, chunk_start = 0, 0
            while chunk_start + len(chunks[index]) <= pos:
                chunk_start += len(chunks[index])
                index += 1
            chunk = chunks[index]
            lo = pos - chunk_start
            hi = len(chunk) if end is None else min(len(chunk), end - chunk_start)
            yield memoryview(chunk)[lo:hi]
            pos = chunk_start + hi


class Coalescer:
    """The registry of in-flight fetches, by storage key."""

    def __init__(self) -> None:
        self._inflight: dict[str, Fetch] = {}
        self.waiters_total = 0

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
