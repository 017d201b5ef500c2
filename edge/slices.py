"""Slices: large objects fetched, stored and served in aligned parts (as nginx's ``slice``).

With ``slice_size = S`` (> 0), a GET or HEAD whose path matches ``slice_paths`` and that the
store holds no whole entry for comes here from ``CacheNode.receive`` (one call, on the miss
side: the HIT path of whole entries is untouched). The object is then never fetched whole:

* slice ``k`` is bytes ``[k*S, min((k+1)*S, total))``, asked upstream as
  ``Range: bytes=k*S-((k+1)*S-1)``, coalesced by its own key (``KeyPolicy.slice_key``) and
  stored as its own ``206`` entry (its ``primary`` is the object's key, so a purge of the
  object reaches its slices);
* a client request is planned over the slices it covers (whole, one range, several ranges):
  its head comes from the first slice it needs (status 200 with ``Content-Length`` the
  object's total, or the 206 / multipart plan of ``Delivery.range_plan``), then each slice's
  bytes are written in order — from a stored slice with ``write_file`` (``sendfile`` of the
  slice's memory file, no copy), from an arriving slice as its chunks come;
* every slice carries the object's identity: the total of its ``Content-Range`` and its
  validator (a strong ETag, else Last-Modified). A request takes the identity of the first
  slice it uses; a slice of another identity invalidates the object's slices, and the request
  starts over if nothing was written yet (at most ``ATTEMPTS`` times) or is cut otherwise: a
  client never receives bytes of two versions;
* an upstream that answers a slice with anything but a ``206`` of exactly that slice (an
  origin ignoring Range answers ``200`` with the whole body) is not sliced: the node
  remembers the object for ``WHOLE_FOR`` seconds and the request goes the ordinary way
  (``CacheNode.miss``: fetched, streamed and stored whole, then plain HITs).

docs/slices.md says why and what it costs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from fnmatch import translate
from typing import TYPE_CHECKING, Any, Protocol

from reelcdn.edge.cache.bodyfile import BodyFiles, FileBody
from reelcdn.edge.cache.entry import CacheEntry
from reelcdn.edge.cache.freshness import current_age
from reelcdn.edge.cache.keys import KeyPolicy
from reelcdn.edge.cache.store import MemoryStore
from reelcdn.edge.delivery import Delivery
from reelcdn.edge.fetch.coalescer import Coalescer, Fetch, FetchHead
from reelcdn.edge.fetch.contract import FetchFailed, Upstream
from reelcdn.edge.fetch.order import FillOrder
from reelcdn.edge.fetch.resume import content_range, strong_etag
from reelcdn.edge.http import conditional
from reelcdn.edge.http.message import render_fields, validators
from reelcdn.edge.metrics import NodeStats
from reelcdn.extensions import ranges
from reelcdn.extensions.message import Request

if TYPE_CHECKING:
    from reelcdn.edge.config import NodeConfig
    from reelcdn.edge.http.connection import HttpConnection

log = logging.getLogger("reelcdn.slices")

#: Tries of one request when the object changes under it before anything was written.
ATTEMPTS = 3
#: How long an object whose upstream answered a slice with a whole 200 goes the ordinary way.
WHOLE_FOR = 600.0
#: Objects whose identity (and whole-answer mark) the slicer remembers; the oldest go first.
REMEMBERED = 16384
#: Above this many slices an object's invalidation scans the store instead of each key.
INVALIDATE_EACH = 4096

_NO_FIELDS: dict[bytes, bytes] = {}
_FIRST_POS = re.compile(rb"[ \t]*bytes[ \t]*=[ \t]*([0-9]{1,18})[ \t]*-", re.IGNORECASE)

# Request fields that make an answer conditional: left to the full path (``_answer``).
_CONDITIONALS = frozenset({b"if-none-match", b"if-modified-since", b"if-match",
                           b"if-unmodified-since", b"if-range"})

# (total length, validator): what every slice of one version of an object shares.
Identity = tuple[int, bytes | None]


class SliceHost(Protocol):
    """What the slicer uses of ``CacheNode`` (structurally; this module never imports it)."""

    config: NodeConfig
    store: MemoryStore
    coalescer: Coalescer
    upstream: Upstream
    stats: NodeStats
    delivery: Delivery
    body_files: BodyFiles
    _background: set[asyncio.Task[None]]

    def fill_order(self, req: Request, primary: str, reload: bool = False) -> FillOrder: ...

    def miss(self, req: Request, conn: HttpConnection, primary: str, stale: CacheEntry | None,
             fwd: bytes | None = None) -> Awaitable[None]: ...

    def _fetch_head(self, status: int, headers: list[tuple[bytes, bytes]],
                    hmap: dict[str, str], primary: str, request_time: float,
                    response_time: float) -> FetchHead: ...


class NotSliced(FetchFailed):
    """The upstream answered a slice's request with something other than that slice;
    ``answered`` is its status (200: it ignores Range)."""

    def __init__(self, answered: int, reason: str, *, whole: bool = False) -> None:
        super().__init__(502, reason)
        self.answered = answered
        # Serve the object the ordinary way for a while (WHOLE_FOR): its upstream ignores
        # Range (a 200), or answers it for one client only (private).
        self.whole = whole or answered == 200


class _Changed(Exception):
    """A slice of another identity than the request's first: start over (nothing written)."""


def slice_identity(headers: list[tuple[bytes, bytes]]) -> tuple[int, int, Identity] | None:
    """(first, last, identity) of a slice's head, or None without a usable Content-Range."""
    rng = content_range(headers)
    if rng is None:
        return None
    validator = strong_etag(headers)
    if validator is None:
        validator = next((v for n, v in headers if n.lower() == b"last-modified"), None)
    return rng[0], rng[1], (rng[2], validator)


def _without_content_range(block: bytes) -> bytes:
    """A stored slice's rendered fields without its ``Content-Range`` line (the answer's own
    framing replaces it)."""
    lower = block.lower()
    at = lower.find(b"content-range:")
    while at > 0 and block[at - 2:at] != b"\r\n":
        at = lower.find(b"content-range:", at + 1)
    if at < 0:
        return block
    end = block.find(b"\r\n", at)
    return block[:at] + (block[end + 2:] if end >= 0 else b"")


class Slicer:
    """The slices of one node: which requests, their fills, and serving them."""

    def __init__(
        self,
        node: SliceHost,
        storable_headers: Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]],
        header_map: Callable[[list[tuple[bytes, bytes]]], dict[str, str]],
        merge_304: Callable[[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], float],
                            list[tuple[bytes, bytes]]],
    ) -> None:
        """``storable_headers``, ``header_map`` and ``merge_304``: the node's own helpers
        (``node.py``), passed in so that a slice's head is stored and refreshed exactly as a
        whole response's."""
        config = node.config
        self.node = node
        self.size = config.slice_size
        self._paths = re.compile("|".join(f"(?:{translate(p)})" for p in config.slice_paths)
                                 or "(?!)")
        self._storable = storable_headers
        self._header_map = header_map
        self._merge_304 = merge_304
        self._known: dict[str, Identity] = {}
        self._whole: dict[str, float] = {}
        self._identities: dict[str, tuple[bytes, tuple[int, int, Identity] | None]] = {}

    # -- which requests ---------------------------------------------------------------------
    def applies(self, primary: str) -> bool:
        """Whether the object keyed ``primary`` is served in slices."""
        if self._paths.match(KeyPolicy.rule_path(primary)) is None:
            return False
        until = self._whole.get(primary)
        if until is None:
            return True
        if until > time.time():
            return False
        del self._whole[primary]
        return True

    def _remember(self, table: dict[str, Any], key: str, value: Any) -> None:
        table.pop(key, None)
        if len(table) >= REMEMBERED:
            del table[next(iter(table))]
        table[key] = value

    def _learn(self, primary: str, identity: Identity) -> None:
        """A slice of ``identity`` arrived: another one before it invalidates the object."""
        known = self._known.get(primary)
        if known is not None and known != identity:
            self.invalidate(primary, known[0])
        self._remember(self._known, primary, identity)

    def invalidate(self, primary: str, total: int) -> None:
        """Drop every stored slice of the object (a version of ``total`` bytes)."""
        self._known.pop(primary, None)
        store = self.node.store
        count = -(-total // self.size)
        if count > INVALIDATE_EACH:
            store.remove_matching(primary.__eq__)
            return
        for index in range(count):
            store.remove(KeyPolicy.slice_key(primary, index))

    # -- fills ------------------------------------------------------------------------------
    def _source(self, req: Request, primary: str, index: int) -> CacheEntry | Fetch:
        """Slice ``index``: its fresh stored entry, the fetch under way, or a new fetch."""
        node = self.node
        key = KeyPolicy.slice_key(primary, index)
        entry = node.store.lookup(key, _NO_FIELDS)
        stale = None
        if entry is not None:
            seen = self._entry_identity(entry)
            if seen is None or not self._is_slice(seen, index):
                node.store.remove(key)  # a slice of another size (before a reload): anew
            elif time.time() < entry.fresh_until:
                entry.hits += 1
                return entry
            elif seen[2] == self._known.get(primary, seen[2]):
                stale = entry  # revalidated with its validators: a 304 keeps its body
        fetch = node.coalescer.get(key)
        if fetch is not None:
            node.stats.coalesced_waiters += 1
            return fetch
        order = node.fill_order(req, primary)
        first = index * self.size
        order.fields.append((b"Range", b"bytes=%d-%d" % (first, first + self.size - 1)))
        if stale is not None:
            if stale.etag is not None:
                order.fields.append((b"If-None-Match", stale.etag.encode("latin-1")))
            if stale.last_modified is not None:
                order.fields.append((b"If-Modified-Since",
                                     stale.last_modified.encode("latin-1")))
        fetch = Fetch(key, primary, order.selecting)
        node.coalescer.add(fetch)
        fetch.task = asyncio.get_running_loop().create_task(
            self._fill(fetch, primary, index, order, stale))
        node._background.add(fetch.task)
        fetch.task.add_done_callback(node._background.discard)
        return fetch

    def _entry_identity(self, entry: CacheEntry) -> tuple[int, int, Identity] | None:
        """``slice_identity`` of a stored slice, remembered while its header block is the
        same object (a 304's refresh or a new entry renders a new one): it is read for every
        slice of every answer, and parsing the fields each time was most of a sliced HIT's
        Python."""
        cached = self._identities.get(entry.key)
        if cached is not None and cached[0] is entry.header_block:
            return cached[1]
        seen = slice_identity(entry.headers)
        self._remember(self._identities, entry.key, (entry.header_block, seen))
        return seen

    def _is_slice(self, seen: tuple[int, int, Identity], index: int) -> bool:
        """Whether a Content-Range is exactly slice ``index`` at this slice size (a stored
        slice of another size, before a reload, is not)."""
        first = index * self.size
        return seen[0] == first and seen[1] == min(first + self.size, seen[2][0]) - 1

    def _stored(self, primary: str, index: int) -> bool:
        entry = self.node.store.peek(KeyPolicy.slice_key(primary, index))
        return entry is not None and time.time() < entry.fresh_until

    async def _fill(self, fetch: Fetch, primary: str, index: int, order: FillOrder,
                    stale: CacheEntry | None = None) -> None:
        """Fetch one slice (revalidate ``stale``); check it is that slice; hand it to the
        readers; store it. Never raises: failures go to the readers."""
        node = self.node
        response = None
        try:
            request_time = time.time()
            response = await node.upstream.request("GET", order.target, order.fields)
            response_time = time.time()
            if response.status == 304 and stale is not None:
                self._refreshed(fetch, primary, index, stale, response.headers,
                                request_time, response_time)
                return
            if response.status != 206:
                raise NotSliced(response.status,
                                f"upstream answered {response.status} to a slice")
            seen = slice_identity(response.headers)
            if seen is None or not self._is_slice(seen, index):
                raise NotSliced(206, "upstream answered 206 with another Content-Range "
                                f"than slice {index}")
            identity = seen[2]
            length = seen[1] - seen[0] + 1
            headers = self._storable(response.headers)
            head = node._fetch_head(200, headers, self._header_map(response.headers),
                                    primary, request_time, response_time)
            if not head.shareable:
                # Never shared through slices: the ordinary path passes such answers.
                raise NotSliced(206, "upstream answered a slice for one client only",
                                whole=True)
            self._learn(primary, identity)
            head.status = 206
            head.content_length = length
            fetch.set_head(head)
            async for chunk in response.chunks(node.config.upstream_timeouts.idle):
                fetch.append(chunk)
                if fetch.size > length:
                    raise FetchFailed(502, "upstream slice longer than its Content-Range")
            if fetch.size != length:
                raise FetchFailed(502, "upstream slice shorter than its Content-Range")
            fetch.finish()
            if head.storable and self._known.get(primary) == identity:
                entry = CacheEntry(
                    key=fetch.key, primary=primary, status=206, headers=head.headers,
                    body=node.body_files.make(fetch.chunks, fetch.size),
                    freshness=head.freshness, response_time=head.response_time,
                    initial_age=head.initial_age,
                )
                node.stats.evictions += node.store.insert(entry)
        except NotSliced as failure:
            fetch.fail(failure)
        except FetchFailed as failure:
            node.stats.upstream_failures += 1
            fetch.fail(failure)
            if response is not None:
                response.close()
                response = None
        except asyncio.CancelledError:
            fetch.fail(FetchFailed(503, "node shutting down"))
            raise
        except Exception as exc:  # a bug must not leave readers hanging
            log.exception("slice %d of %s failed", index, primary)
            fetch.fail(FetchFailed(502, f"internal error: {exc.__class__.__name__}"))
        finally:
            node.coalescer.discard(fetch)
            if response is not None:
                if fetch.error is not None:
                    response.close()  # a whole body we will not read: drop the connection
                else:
                    response.release()

    def _refreshed(self, fetch: Fetch, primary: str, index: int, stale: CacheEntry,
                   answered: list[tuple[bytes, bytes]], request_time: float,
                   response_time: float) -> None:
        """A 304 for a stale slice (RFC 9111 §4.3.4): its fields refreshed, its body kept,
        both handed to the readers as the slice."""
        node = self.node
        merged = self._merge_304(stale.headers, answered, response_time)
        seen = slice_identity(merged)
        if seen is None or not self._is_slice(seen, index):
            raise NotSliced(304, "a 304 changed the slice's Content-Range")
        hmap = self._header_map(merged)
        answered_map = self._header_map(answered)
        age = current_age(answered_map.get("age"), hmap.get("date"), request_time,
                          response_time)
        head = node._fetch_head(200, merged, hmap, primary, request_time, response_time)
        head.status = 206
        head.content_length = len(stale.body)
        head.initial_age = age
        self._learn(primary, seen[2])
        fetch.set_head(head)
        # A view, not the body: a FileBody is an mmap, which the plain asyncio transport
        # refuses to write; the view is what write_file queues of one anyway.
        fetch.append(memoryview(stale.body))  # type: ignore[arg-type]
        fetch.finish()
        if not head.storable:
            node.store.remove(stale.key)  # the refreshed answer may no longer be stored
            return
        stale.refresh(merged, head.freshness, response_time, age)
        if node.store.peek(stale.key) is stale:
            node.stats.evictions += node.store.insert(stale)  # re-filed: its new header block

    async def _opened(self, source: CacheEntry | Fetch, index: int
                      ) -> tuple[Identity, list[tuple[bytes, bytes]], float]:
        """(identity, stored fields, age) of a slice; ``_Changed`` for a stored slice that
        is not slice ``index`` of this slice size (a reload changed it)."""
        now = time.time()
        if type(source) is CacheEntry:
            seen = self._entry_identity(source)
            if seen is None or not self._is_slice(seen, index):
                self.node.store.remove(source.key)
                raise _Changed
            return seen[2], source.headers, source.age(now)
        assert isinstance(source, Fetch)
        head = await source.wait_head()
        seen = slice_identity(head.headers)
        assert seen is not None  # the fill checked it before set_head
        return seen[2], head.headers, head.initial_age + (now - head.response_time)

    # -- serving ----------------------------------------------------------------------------
    def serve(self, req: Request, conn: HttpConnection, primary: str) -> Awaitable[None] | None:
        """Answer a GET or HEAD of a sliced object (``applies`` said so): None when written
        now (``_one_stored_slice``), else the coroutine that answers."""
        if self._one_stored_slice(req, conn, primary):
            return None
        return self._serve(req, conn, primary)

    def _one_stored_slice(self, req: Request, conn: HttpConnection, primary: str) -> bool:
        """A HIT that one stored slice answers — a whole object no larger than a slice, or one
        range within one slice, without conditionals — written now as a whole entry's HIT is
        (no task, one ``write_file``); False leaves the request to ``_serve``."""
        known = self._known.get(primary)
        if known is None:
            return False
        headers = req.headers
        if _CONDITIONALS.intersection(headers):
            return False
        total = known[0]
        size = self.size
        start, end, ranged = 0, total, False
        range_value = headers.get(b"range")
        if range_value is not None:
            parsed = ranges.parse_range(range_value, total)
            if parsed is not None:
                if parsed is ranges.UNSATISFIABLE or len(parsed) != 1:  # type: ignore[arg-type]
                    return False
                start, end = parsed[0]  # type: ignore[index]
                ranged = True
        index = start // size
        if index != (end - 1) // size:
            return False
        entry = self.node.store.lookup(KeyPolicy.slice_key(primary, index), _NO_FIELDS)
        now = time.time()
        if entry is None or now >= entry.fresh_until:
            return False
        seen = self._entry_identity(entry)
        base = index * size
        if seen is None or seen[2] != known or not self._is_slice(seen, index):
            return False
        entry.hits += 1
        node = self.node
        close = conn.connection_field(req)
        cached = entry.head_cache  # a slice entry's: its whole-object 200 head, per second
        if not ranged and not close and cached is not None and cached[0] == int(now):
            head = cached[1]
        else:
            block = _without_content_range(entry.header_block)
            age = entry.age(now)
            if ranged:
                head = node.delivery.range_plan([(start, end)], total, block,
                                                entry.content_type, age, b"hit", close,
                                                entry.prior)[0]
            else:
                head = node.delivery.head(200, block, age, b"hit", entry.ttl(now), total,
                                          close, prior=entry.prior)
                if not close:
                    entry.head_cache = (int(now), head)
        body = entry.body
        sent = len(head)
        if req.method == "HEAD":
            conn.write(head)
        elif type(body) is FileBody:
            conn.write_file(head, body, start - base, end - base)
            sent += end - start
        else:
            conn.write_parts([head, memoryview(body)[start - base:end - base]])
            sent += end - start
        node.stats.bytes_sent += sent
        node.stats.count(req.method, "hit", 206 if ranged else 200)
        return True

    async def _serve(self, req: Request, conn: HttpConnection, primary: str) -> None:
        node = self.node
        from_zero = False
        for _ in range(ATTEMPTS):
            try:
                await self._answer(req, conn, primary, from_zero)
                return
            except _Changed:
                continue
            except NotSliced as refused:
                if refused.answered == 416 and not from_zero:
                    # A first position past the end of an object of unknown length: slice 0
                    # says the length (then 416), rather than a whole fetch the ordinary way.
                    from_zero = True
                    continue
                if refused.whole:  # it ignores Range, or answers privately: for a while
                    self._remember(self._whole, primary, time.time() + WHOLE_FOR)
                await node.miss(req, conn, primary, None)
                return
            except FetchFailed as failure:
                node.delivery.failure(req, conn, failure, b"fwd=uri-miss; detail=sliced")
                return
        node.delivery.failure(req, conn, FetchFailed(502, "the object changed upstream on "
                                                     "every attempt"), b"fwd=uri-miss")

    def _first_index(self, range_value: bytes | None, primary: str) -> int:
        """The slice a request needs first, as far as it is known before the total is:
        the one of a Range's first position (when the total is unknown or covers it)."""
        if range_value is None:
            return 0
        match = _FIRST_POS.match(range_value)
        if match is None:
            return 0
        first = int(match.group(1))
        known = self._known.get(primary)
        if known is not None and first >= known[0]:
            return 0  # unsatisfiable as far as we know: slice 0 tells
        return first // self.size

    async def _answer(self, req: Request, conn: HttpConnection, primary: str,
                      from_zero: bool = False) -> None:
        node = self.node
        size = self.size
        headers = req.headers
        range_value = headers.get(b"range")
        index = 0 if from_zero else self._first_index(range_value, primary)
        sources: dict[int, CacheEntry | Fetch] = {index: self._source(req, primary, index)}
        first = sources[index]
        identity, fields, age = await self._opened(first, index)
        known = self._known.get(primary)
        if known is not None and known != identity:
            # A stored slice of a version a later fill replaced: its siblings go, and so
            # does it, before anything of it is written.
            self.invalidate(primary, identity[0])
            raise _Changed
        total = identity[0]
        fields = [(n, v) for n, v in fields if n.lower() != b"content-range"]
        block, prior = render_fields(fields)
        etag, last_modified, content_type = validators(fields)
        close = conn.connection_field(req)
        verdict = conditional.request_verdict(req.method, headers, 200, etag, last_modified)
        if verdict is not None:
            node.delivery.bodyless(conn, verdict, fields, age, b"hit", close)
            node.stats.count(req.method, "hit", verdict)
            return
        parsed: Any = None
        if range_value is not None and conditional.if_range_allows(
                req.header(b"if-range"), etag, last_modified):
            parsed = ranges.parse_range(range_value, total)
        if parsed is ranges.UNSATISFIABLE:
            node.delivery.unsatisfiable(conn, total, b"hit", close)
            node.stats.count(req.method, "hit", 416)
            return
        spans = [(0, total)] if parsed is None else parsed
        wanted = sum((end - 1) // size - start // size + 1 for start, end in spans)
        stored = 0
        if wanted <= INVALIDATE_EACH:  # an answer's Cache-Status is not worth a long scan
            stored = sum(1 for start, end in spans
                         for k in range(start // size, (end - 1) // size + 1)
                         if type(sources.get(k)) is CacheEntry
                         or (k not in sources and self._stored(primary, k)))
        hit = stored == wanted
        member = (b"hit" if hit else b"fwd=partial; detail=sliced" if stored
                  else b"fwd=uri-miss; detail=sliced")
        if parsed is None:
            ttl = first.ttl(time.time()) if hit and type(first) is CacheEntry else None
            head = node.delivery.head(200, block, age, member, ttl, total, close, prior=prior)
            parts: list[tuple[bytes, int, int]] = [(b"", 0, total)]
            closing = b""
            status = 200
        else:
            head, parts, closing = node.delivery.range_plan(parsed, total, block, content_type,
                                                            age, member, close, prior)
            status = 206
        conn.write(head)
        node.stats.bytes_sent += len(head)
        node.stats.count(req.method, "hit" if hit else "miss", status)
        if req.method == "HEAD":
            return
        try:
            for part_head, start, end in parts:
                if part_head:
                    conn.write(part_head)
                    node.stats.bytes_sent += len(part_head)
                await self._copy(req, conn, primary, sources, identity, start, end)
                if conn.closed:
                    return
            if closing:
                conn.write(closing)
                node.stats.bytes_sent += len(closing)
        except (_Changed, FetchFailed) as broke:
            if isinstance(broke, NotSliced) and broke.whole:
                self._remember(self._whole, primary, time.time() + WHOLE_FOR)
            conn.abort()  # the head is out: the client must see a cut body, never mixed ones

    async def _copy(self, req: Request, conn: HttpConnection, primary: str,
                    sources: dict[int, CacheEntry | Fetch], identity: Identity,
                    start: int, end: int) -> None:
        """Write bytes [start, end) of the object from its slices, in order."""
        node = self.node
        size = self.size
        stats = node.stats
        index = start // size
        last = (end - 1) // size
        while start < end and not conn.closed:
            source = sources.pop(index, None) or self._source(req, primary, index)
            if index < last and index + 1 not in sources and not self._stored(primary,
                                                                                 index + 1):
                sources[index + 1] = self._source(req, primary, index + 1)  # one ahead
            seen, _, _ = await self._opened(source, index)
            if seen != identity:
                self.invalidate(primary, identity[0])
                raise _Changed
            base = index * size
            lo = start - base
            hi = min(end, base + size) - base
            if type(source) is CacheEntry:
                body = source.body
                if type(body) is FileBody:
                    conn.write_file(b"", body, lo, hi)
                else:
                    conn.write(memoryview(body)[lo:hi])
                stats.bytes_sent += hi - lo
                if conn.paused:
                    await conn.drain()
            else:
                assert isinstance(source, Fetch)
                stats.bytes_sent += await source.stream_to(conn, lo, hi, False)
            start = base + hi
            index += 1
