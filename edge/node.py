"""The cache node's request steps: receive → lookup → hit | miss | pass → deliver.

This file is the whole life of a request once the protocol (``protocol.py``) has parsed it,
written as a few named steps in the manner of Varnish:

``receive``
    Reject what the protocol flagged, send non-GET/HEAD methods to ``pass_``, compute the
    cache key, look the key up in the store.
HIT (``deliver_entry``)
    A fresh entry is answered synchronously from memory: conditional requests (304/412),
    Range (206, multipart, 416), then one or two ``transport.write`` calls. No task, no await.
MISS (``miss``)
    Join the in-flight fetch for the key or start one (``start_fill``), wait for its head,
    then stream its body to the client as it arrives (``deliver_fetch``). Stale entries are
    revalidated the same way (If-None-Match / If-Modified-Since), served while revalidating
    within ``stale-while-revalidate``, and served on upstream errors within ``stale-if-error``.
``pass_``
    Forward the request with its body, stream the answer back, store nothing.

Policy lives elsewhere: freshness and storability in ``freshness.py``, client conditionals in
``conditional.py``, Range arithmetic in ``ranges.py``, keys in ``cachekey.py``. Mechanism lives
in ``store.py`` (LRU), ``coalescer.py`` (shared fetches) and ``upstream.py`` (aiohttp client).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from reelcdn.edge.auth.gate import TokenGate
from reelcdn.edge.auth.verdict import Refusal
from reelcdn.edge.cache.backoff import FailureBackoff
from reelcdn.edge.cache.bodyfile import BodyFiles, FileBody
from reelcdn.edge.cache.freshness import Freshness, current_age, decide
from reelcdn.edge.cache.keys import KeyPolicy
from reelcdn.edge.cache.store import CacheEntry, MemoryStore
from reelcdn.edge.cache.verdicts import (
    client_wants_fresh,
    pass_mark,
    shareable,
    stale_on_error,
    stale_while_revalidate,
    upstream_served_stale,
    within_size,
)
from reelcdn.edge.config import HEALTH_PATH, NodeConfig, TtlRule
from reelcdn.edge.delivery import Delivery
from reelcdn.edge.fetch.coalescer import Coalescer, Fetch, FetchHead
from reelcdn.edge.fetch.contract import FetchFailed, Upstream
from reelcdn.edge.fetch.order import FillOrder
from reelcdn.edge.http import conditional
from reelcdn.edge.http.cors import CorsPolicy
from reelcdn.edge.http.dates import format_http_date, http_date_now_bytes
from reelcdn.edge.http.message import (
    HOP_BY_HOP,
    error_response,
    forwardable,
    normalise_accept_encoding,
    render_fields,
)
from reelcdn.edge.metrics import NodeStats
from reelcdn.edge.slices import Slicer
from reelcdn.edge.video.features import CONTINUE, EdgeFeatures
from reelcdn.extensions import ranges  # compiled twin when built, else extensions/_ranges_py.py
from reelcdn.extensions.message import Request

if TYPE_CHECKING:
    from reelcdn.edge.http.connection import HttpConnection

log = logging.getLogger("reelcdn.node")

# Bodies up to this size are joined with their head into one write (one syscall).
SMALL_BODY = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})
CONNECTION_CLOSE = b"Connection: close\r\n"
# Cache-Status "fwd" of a request the client asked to be answered fresh (honor_client_no_cache).
FWD_REQUEST = b"fwd=request"
# Request fields not copied upstream on a pass: recomputed here (Via, X-Forwarded-For,
# framing). A fill forwards only its allow-list (``fill_headers``, see ``fill_order``).
PASS_DROPS = frozenset({b"host", b"content-length", b"x-forwarded-for", b"via", b"expect"})


def _storable_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream header pairs minus hop-by-hop fields, those named in Connection, and fields
    the node recomputes (Content-Length, Age)."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(v.strip().lower() for v in value.split(b","))
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower == b"content-length" or lower == b"age":
            continue
        kept.append((name, value))
    return kept


def _header_map(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lowercase-name → comma-joined value, as the policy functions want them."""
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        merged[key] = merged[key] + ", " + text if key in merged else text
    return merged


def _merge_304(
    stored: list[tuple[bytes, bytes]], update: list[tuple[bytes, bytes]], received: float
) -> list[tuple[bytes, bytes]]:
    """RFC 9111 §3.2: fields in the 304 replace the stored fields of the same name.

    A 304 without Date gets one for ``received`` (RFC 9110 §6.6.1: a recipient with a clock
    records when a dateless response arrived). Without it the stored, old Date would survive
    the merge and make the refreshed entry as old as the first response: stale at once, and
    revalidated on every request (an fs origin's 304s carry no Date)."""
    fresh = _storable_headers(update)
    if not any(name.lower() == b"date" for name, _ in fresh):
        fresh.append((b"Date", format_http_date(received).encode("latin-1")))
    replaced = {name.lower() for name, _ in fresh} - {b"content-type", b"content-encoding"}
    kept = [(n, v) for n, v in stored if n.lower() not in replaced]
    return kept + [(n, v) for n, v in fresh if n.lower() in replaced]


# Server errors a node caches for ``negative_ttl_5xx`` (501 is cacheable on its own terms).
NEGATIVE_5XX = frozenset(range(500, 600)) - {501}


def _ttl_rules(config: NodeConfig) -> tuple[TtlRule, ...]:
    """The operator's TTL rules, then negative caching of upstream 5xx answers: a last rule,
    so an operator's own rule for a 5xx comes first, and not forcing, so an answer marked
    no-store or private is still not stored."""
    if config.negative_ttl_5xx <= 0:
        return config.ttl_rules
    return config.ttl_rules + (TtlRule("*", config.negative_ttl_5xx, NEGATIVE_5XX),)


def _upstream_spec(config: NodeConfig) -> tuple[object, ...]:
    return (
        config.upstream,
        config.parents,
        config.origins,
        config.upstream_timeouts,
        config.upstream_max_connections,
        config.fallback,
        config.health,
    )


class CacheNode:
    """One cache node (edge, regional or shield): store, coalescer, upstream, policy."""

    def __init__(
        self,
        config: NodeConfig,
        build_upstream: Callable[[NodeConfig], Upstream],
        worker_index: int | None = None,
    ) -> None:
        """``build_upstream`` makes the node's upstream from a config (and again on a reload
        that changes it): the parents, an origin chain or a URL. It comes from the place that
        composes a node (``reelcdn.shield.connectors.build_upstream``), so the edge never imports
        the origin connectors. ``worker_index``: this process is that worker of the node
        (its play batches say so)."""
        self.config = config
        self.name = config.name
        self._build_upstream = build_upstream
        self.keys = KeyPolicy.from_config(config)
        self._fill_allowed = frozenset(n.encode() for n in config.fill_headers)
        self.store = MemoryStore(config.cache_memory)
        self.coalescer = Coalescer()
        self.upstream: Upstream = build_upstream(config)
        self.stats = NodeStats(config.name)
        self.body_files = BodyFiles(config.sendfile_min_bytes, self.stats)
        self.store.configure_disk(config, self.stats)  # cache_disk > 0: memory's victims go there
        self.upstream.observe = self.stats.upstream
        self.upstream.state_change = self.stats.upstream_state
        self.upstream.resume_outcome = self.stats.upstream_resume
        # CORS (edge/http/cors.py): the constant fields go into every head Delivery builds;
        # with a list of origins, receive also hands the connection the origin to echo.
        self.cors = CorsPolicy(config.cors_origins)
        self._cors_echo: CorsPolicy | None = self.cors if self.cors.per_request else None
        self.delivery = Delivery(config.name, self.stats, config.cmsd, self.cors.head_line)
        self.features: EdgeFeatures | None = EdgeFeatures(self, worker_index)
        # Signed URLs (edge/auth): None when the node checks no tokens.
        self.tokens: TokenGate | None = TokenGate(config.tokens) if config.tokens else None
        self._pass_until: dict[str, float] = {}
        # Keys whose revalidation failed lately: not asked upstream again before their time.
        self.backoff = FailureBackoff(config.failure_backoff_base, config.failure_backoff_max)
        self._ttl_rules = _ttl_rules(config)
        self._background: set[asyncio.Task[None]] = set()
        # Large objects in slices (slice_size, edge/slices.py); None: off, nothing changes.
        self.slicer: Slicer | None = self._slicer(config)

    async def apply_config(self, config: NodeConfig) -> None:
        """Take a reloaded config: policy, size and upstream change; the cache is kept.

        A changed upstream (URL, parents, origins, timeouts) is built and started before it
        replaces the old one; fetches already under way finish on the old one, which is
        closed once they are done."""
        old = self.config
        self.config = config
        self.keys = KeyPolicy.from_config(config)
        self._fill_allowed = frozenset(n.encode() for n in config.fill_headers)
        self.stats.evictions += self.store.resize(config.cache_memory)
        self.body_files.min_bytes = config.sendfile_min_bytes
        self.store.configure_disk(config, self.stats)
        self.cors = CorsPolicy(config.cors_origins)
        self._cors_echo = self.cors if self.cors.per_request else None
        self.delivery.configure(config.name, config.cmsd, self.cors.head_line)
        self.backoff.base = config.failure_backoff_base
        self.backoff.cap = config.failure_backoff_max
        self._ttl_rules = _ttl_rules(config)
        self.slicer = self._slicer(config)
        if self.features is not None:
            self.features.apply_config(config)
        if config.tokens != old.tokens:  # a new gate: a retired key fails from now on
            self.tokens = TokenGate(config.tokens) if config.tokens else None
        if _upstream_spec(config) != _upstream_spec(old):
            fresh = self._build_upstream(config)
            fresh.observe = self.stats.upstream
            fresh.state_change = self.stats.upstream_state
            fresh.resume_outcome = self.stats.upstream_resume
            await fresh.start()
            retired, self.upstream = self.upstream, fresh
            task = asyncio.get_running_loop().create_task(self._retire(retired))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _slicer(self, config: NodeConfig) -> Slicer | None:
        if not config.slice_size:
            return None
        return Slicer(self, _storable_headers, _header_map, _merge_304)

    async def _retire(self, upstream: Upstream, linger: float = 60.0) -> None:
        """Close a replaced upstream once the fills that use it are done (at most
        ``linger`` seconds: every fetch is bounded by its own timeouts anyway)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + linger
        while len(self.coalescer) and loop.time() < deadline:
            await asyncio.sleep(0.5)  # reload only, bounded
        await asyncio.sleep(0.5)
        await upstream.close()

    async def start(self) -> None:
        await self.upstream.start()
        if self.features is not None:
            self.features.start()  # the steering server's health checks

    async def close(self) -> None:
        if self.features is not None:
            self.features.close()
            await self.features.flush()  # the plays counted so far (bounded in time)
        for task in list(self._background):
            task.cancel()
        self.store.close()  # the disk tier's files go now, not at exit
        await self.upstream.close()

    # ------------------------------------------------------------------------------------
    # receive
    # ------------------------------------------------------------------------------------
    def receive(
        self, req: Request, conn: HttpConnection, hooks: bool = True
    ) -> Awaitable[None] | None:
        """Answer a request. Returns None when the answer was written synchronously (a HIT,
        an error), else an awaitable the connection runs before its next request."""
        if req.error is not None:
            status, reason = req.error
            conn.write(error_response(status, reason, close=True,
                                      head_only=req.method == "HEAD"))
            self.stats.count(req.method, "error", status)
            conn.close_after_response()
            return None
        method = req.method
        if self._cors_echo is not None:  # a list of cors_origins: echo the allowed one
            conn.cors_allow = self._cors_echo.allow_line(req.headers.get(b"origin"))
        if req.path == HEALTH_PATH:
            return self._health(req, conn)
        gate = self.tokens
        if gate is not None and method != "OPTIONS":
            verdict = gate.check(req, time.time())
            if verdict is not None and verdict.__class__ is Refusal:
                return self._refuse_token(req, conn, verdict.reason)  # type: ignore[union-attr]
        if method != "GET" and method != "HEAD":
            if (method == "OPTIONS" and self.cors.enabled and b"origin" in req.headers
                    and b"access-control-request-method" in req.headers):
                return self._preflight(req, conn)
            if req.path == "*":
                return self._options_asterisk(req, conn)
            return self.pass_(req, conn, "method")
        config = self.config
        primary = self.keys.for_request(req)
        if hooks and self.features is not None:  # playlists, CMCD, prefetch (features.py)
            answer = self.features.receive(req, conn, primary)
            if answer is not CONTINUE:
                return answer  # type: ignore[return-value]
        if b"authorization" in req.headers:
            return self.pass_(req, conn, "request")
        entry = self.store.lookup(primary, req.headers)
        now = time.time()
        if entry is not None and config.honor_client_no_cache and client_wants_fresh(req.headers):
            return self.miss(req, conn, primary, entry, FWD_REQUEST)
        if entry is not None:
            if now < entry.fresh_until:  # entry.is_fresh(now), without the call
                entry.hits += 1
                self.deliver_entry(req, conn, entry, now, b"hit")
                # (stats.count, inlined: every HIT)
                counts = self.stats.requests
                key = (method, "hit", entry.status)
                counts[key] = counts.get(key, 0) + 1
                return None
            if stale_while_revalidate(entry, now):
                self.revalidate_in_background(req, primary, entry)
                self.deliver_entry(req, conn, entry, now, b"hit; detail=stale-while-revalidate")
                self.stats.count(method, "stale", entry.status)
                return None
            backoff = self.backoff
            if entry.key in backoff and stale_on_error(entry, now, config.stale_if_error_max):
                # Its upstream failed lately: the stale copy, and at most one revalidation
                # per back-off period, in the background (docs/failover.md).
                if not backoff.blocked(entry.key, now):
                    self.revalidate_in_background(req, primary, entry)
                self.deliver_entry(req, conn, entry, now, b"hit; detail=stale-if-error")
                self.stats.count(method, "stale", entry.status)
                return None
        elif self.slicer is not None and self.slicer.applies(primary):
            return self.slicer.serve(req, conn, primary)  # no whole entry: slices
        return self.miss(req, conn, primary, entry)

    def _health(self, req: Request, conn: HttpConnection) -> None:
        """A child's health check (docs/failover.md): 200 while this node serves, 503 once it
        drains; answered here, before the token gate and the cache, and never forwarded."""
        draining = conn.server.draining
        body = b"draining\n" if draining else b"ok\n"
        head = b"".join((
            b"HTTP/1.1 503 Service Unavailable\r\n" if draining else b"HTTP/1.1 200 OK\r\n",
            b"Content-Type: text/plain\r\nCache-Control: no-store\r\n",
            b"Content-Length: %d\r\n" % len(body),
            conn.connection_field(req),
            b"\r\n",
        ))
        conn.write(head if req.method == "HEAD" else head + body)
        return None

    def _refuse_token(self, req: Request, conn: HttpConnection, reason: str) -> None:
        """403 before the cache: the reason in ``Reelcdn-Token-Error`` and the body, never
        a hint of what a valid token would be."""
        field = conn.connection_field(req)
        conn.write(error_response(403, f"token refused: {reason}",
                                  close=field.startswith(b"Connection: close"),
                                  head_only=req.method == "HEAD",
                                  extra=b"Reelcdn-Token-Error: " + reason.encode() + b"\r\n"))
        self.stats.token_refusals[reason] = self.stats.token_refusals.get(reason, 0) + 1
        self.stats.count(req.method, "error", 403)
        return None

    def _preflight(self, req: Request, conn: HttpConnection) -> None:
        """A CORS preflight, answered here from the node's policy (``cors.py``): nothing is
        looked up or sent upstream. The echoed origin, if any, is in the head already."""
        conn.cors_allow = b""
        conn.write(self.cors.preflight_head(req.headers.get(b"origin"),
                                            conn.connection_field(req)))
        self.stats.count(req.method, "preflight", 204)
        return None

    def _options_asterisk(self, req: Request, conn: HttpConnection) -> None:
        """``OPTIONS *`` asks about this server, not a resource: answered here."""
        head = self.delivery.head(
            200, b"Allow: GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE\r\n", None,
            b"detail=options", None, 0, conn.connection_field(req),
        )
        conn.write(head)
        self.stats.count(req.method, "pass", 200)
        return None

    # ------------------------------------------------------------------------------------
    # HIT: deliver a stored entry
    # ------------------------------------------------------------------------------------
    def deliver_entry(
        self,
        req: Request,
        conn: HttpConnection,
        entry: CacheEntry,
        now: float,
        member: bytes,
    ) -> None:
        """Write a stored response: 304/412, a Range answer, or the whole body."""
        headers = req.headers
        close = conn.connection_field(req)
        verdict = conditional.request_verdict(req.method, headers, entry.status, entry.etag,
                                              entry.last_modified, entry.modified_basis)
        if verdict is not None:
            self.delivery.bodyless(conn, verdict, entry.headers, entry.age(now), member, close)
            return
        body = entry.body
        if entry.status == 200 and b"range" in headers and (
            b"if-range" not in headers
            or conditional.if_range_allows(req.header(b"if-range"), entry.etag,
                                           entry.last_modified)
        ):
            parsed = ranges.parse_range(headers[b"range"], len(body))
            if parsed is not None:
                self.delivery.ranges_of_body(
                    req, conn, parsed, body, entry.header_block, entry.content_type,
                    entry.age(now), member, close, entry.prior,
                )
                return
        if member == b"hit" and not close:
            # The full 200 head of a plain HIT, rebuilt only when the Age second changes.
            cached = entry.head_cache
            if cached is not None and cached[0] == int(now):
                head = cached[1]
            else:
                head = self._rebuild_hit_head(entry, now)
        else:
            head = self.delivery.head(
                entry.status, entry.header_block, entry.age(now), member, entry.ttl(now),
                len(body), close, prior=entry.prior,
            )
        if req.method == "HEAD":
            conn.write(head)
        elif type(body) is FileBody:
            conn.write_file(head, body, 0, len(body))
        elif len(body) <= SMALL_BODY:
            conn.write(head + body)
        else:
            conn.write(head)
            conn.write(body)
        self.stats.bytes_sent += len(head) + (len(body) if req.method != "HEAD" else 0)

    def _rebuild_hit_head(self, entry: CacheEntry, now: float) -> bytes:
        """Build a plain HIT's head for this second of Age and keep it on the entry."""
        head = self.delivery.head(
            entry.status, entry.header_block, entry.age(now), b"hit", entry.ttl(now),
            len(entry.body), b"", prior=entry.prior,
        )
        entry.head_cache = (int(now), head)
        return head

    # ------------------------------------------------------------------------------------
    # MISS: coalesced fetch, streamed
    # ------------------------------------------------------------------------------------
    async def miss(
        self,
        req: Request,
        conn: HttpConnection,
        primary: str,
        stale: CacheEntry | None,
        fwd: bytes | None = None,
    ) -> None:
        """Join or start the fetch for this key, then deliver what it brings."""
        now = time.time()
        mark = self._pass_until.get(primary)
        if mark is not None:
            if mark > now:
                await self.pass_(req, conn, "bypass")
                return
            del self._pass_until[primary]
        vary = self.store.vary_of(primary)
        key = MemoryStore.variant_key(primary, vary, req.headers)
        fetch = self.coalescer.get(key)
        collapsed = fetch is not None
        if fetch is None and fwd is None:
            # ``receive`` returned this coroutine and it started on a later loop pass: a fill
            # may have completed in between, so look again before fetching a second time.
            entry = self.store.lookup(primary, req.headers)
            if entry is not None and entry.is_fresh(now):
                entry.hits += 1
                self.deliver_entry(req, conn, entry, now, b"hit")
                self.stats.count(req.method, "hit", entry.status)
                return
        if fetch is None:
            order = self.fill_order(req, primary, reload=fwd == FWD_REQUEST)
            fetch = self.start_fill(key, primary, order, stale)
        else:
            self.stats.coalesced_waiters += 1
        if fwd is None:
            fwd = b"fwd=stale" if stale is not None else b"fwd=uri-miss"
        fetch.readers += 1
        try:
            try:
                head = await fetch.wait_head()
            except FetchFailed as failure:
                self._deliver_failure(req, conn, stale, failure, fwd)
                return
            if isinstance(head, CacheEntry):
                # Revalidated: the upstream said 304 and the stored entry was refreshed.
                member = fwd + b"; fwd-status=304"
                if collapsed:
                    member += b"; collapsed"
                self.deliver_entry(req, conn, head, time.time(), member)
                self.stats.count(req.method, "revalidated", head.status)
                return
            if collapsed and (not head.shareable or not self._same_variant(fetch, head, req)):
                await self.pass_(req, conn, "vary-miss" if head.shareable else "bypass")
                return
            if fetch.error is not None and fetch.size == 0 and stale is not None:
                self._deliver_failure(req, conn, stale, fetch.error, fwd)
                return
            member = fwd + b"; fwd-status=%d" % head.status
            if head.storable and fetch.done and fetch.error is None:
                # Only when known (RFC 9211 "stored": the cache stored it): a body still
                # arriving may yet break or outgrow max_object_size and not be stored.
                member += b"; stored"
            if collapsed:
                member += b"; collapsed"
            await self.deliver_fetch(req, conn, fetch, head, member)
            self.stats.count(req.method, "miss", head.status)
        finally:
            fetch.readers -= 1

    def _same_variant(self, fetch: Fetch, head: FetchHead, req: Request) -> bool:
        """Whether a collapsed request selects the variant the fetch will become."""
        if not head.vary:
            return True
        return MemoryStore.variant_key(
            fetch.primary, head.vary, req.headers
        ) == MemoryStore.variant_key(fetch.primary, head.vary, fetch.request_headers)

    def _deliver_failure(
        self,
        req: Request,
        conn: HttpConnection,
        stale: CacheEntry | None,
        failure: FetchFailed,
        fwd: bytes,
    ) -> None:
        """Serve stale within stale-if-error (RFC 5861) or answer 502/504 with the reason."""
        now = time.time()
        if stale is not None and stale_on_error(stale, now, self.config.stale_if_error_max):
            member = fwd + b"; fwd-status=%d; detail=stale-if-error" % failure.status
            self.deliver_entry(req, conn, stale, now, member)
            self.stats.count(req.method, "stale", stale.status)
            return
        self.delivery.failure(req, conn, failure, fwd)

    def start_fill(
        self, key: str, primary: str, order: FillOrder, stale: CacheEntry | None
    ) -> Fetch:
        """Start the one upstream fetch for ``key``, as a task no client owns."""
        fetch = Fetch(key, primary, order.selecting)
        self.coalescer.add(fetch)
        fetch.task = asyncio.get_running_loop().create_task(
            self._run_fill(fetch, primary, order, stale)
        )
        self._background.add(fetch.task)
        fetch.task.add_done_callback(self._background.discard)
        return fetch

    def revalidate_in_background(self, req: Request, primary: str, stale: CacheEntry) -> None:
        """stale-while-revalidate: refresh the entry without making the client wait."""
        if self.coalescer.get(stale.key) is None:
            self.start_fill(stale.key, primary, self.fill_order(req, primary), stale)

    def fill_order(self, req: Request, primary: str, reload: bool = False) -> FillOrder:
        """The fill a client's request asks for: only the client fields the operator allows
        (``fill_headers``) and those a stored response for this URI Varies on; nothing else
        the client sent reaches the shared fetch (a reflected X-Forwarded-Host or Cookie
        would otherwise be served to every viewer). Accept-Encoding is normalised, so clients
        that accept the same codings share one fill and one variant. ``reload``: the client
        asked for a fresh answer and the node honours it (``honor_client_no_cache``), so the
        fill carries ``Cache-Control: no-cache`` and every tier up to the origin validates
        (RFC 9111 §5.2.1.4), not only this one."""
        allowed = self._fill_allowed
        vary = self.store.vary_of(primary)
        if vary:
            allowed = allowed | frozenset(vary)
        fields: list[tuple[bytes, bytes]] = []
        selecting: dict[bytes, bytes] = {}
        headers = req.headers
        for name in allowed:
            value = headers.get(name)
            if value is None:
                continue
            if name == b"accept-encoding":
                value = normalise_accept_encoding(value)
            selecting[name] = value
            fields.append((name, value))
        fields.extend(self._forwarding_fields(req.headers, req.client_ip))
        if reload:
            fields.append((b"Cache-Control", b"no-cache"))
        return FillOrder(self.keys.upstream_target(primary), fields, selecting)

    def fill_order_for(
        self, key: str, client_ip: str, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> FillOrder:
        """A fill no client request carries (a prefetch, a playlist's meta.json): the key's
        target, the node's own fields and ``extra`` (e.g. ``Sec-Purpose: prefetch``)."""
        fields = list(extra)
        fields.extend(self._forwarding_fields({}, client_ip))
        return FillOrder(self.keys.upstream_target(key), fields, {})

    @staticmethod
    def _validators(stale: CacheEntry | None) -> list[tuple[bytes, bytes]]:
        """Our own validators when revalidating ``stale`` (never the client's)."""
        if stale is None:
            return []
        fields = []
        if stale.etag is not None:
            fields.append((b"If-None-Match", stale.etag.encode("latin-1")))
        if stale.last_modified is not None:
            fields.append((b"If-Modified-Since", stale.last_modified.encode("latin-1")))
        return fields

    def _forwarding_fields(
        self, headers: dict[bytes, bytes], client_ip: str
    ) -> list[tuple[bytes, bytes]]:
        """Via and X-Forwarded-For with this hop appended."""
        via = headers.get(b"via")
        own_via = self.delivery.via_hop
        xff = headers.get(b"x-forwarded-for")
        client = client_ip.encode()
        return [
            (b"Via", via + b", " + own_via if via else own_via),
            (b"X-Forwarded-For", xff + b", " + client if xff else client),
        ]

    async def _run_fill(
        self, fetch: Fetch, primary: str, order: FillOrder, stale: CacheEntry | None
    ) -> None:
        """Fetch the whole object once; hand the head and the body to the readers as they
        arrive; store it if policy allows. Never raises: failures go to the readers."""
        request_time = time.time()
        response = None
        try:
            response = await self.upstream.request(
                "GET", order.target, order.fields + self._validators(stale)
            )
            response_time = time.time()
            headers = _storable_headers(response.headers)
            if response.status == 304 and stale is not None:
                merged = _merge_304(stale.headers, response.headers, response_time)
                hmap = _header_map(merged)
                freshness = self._decide(stale.status, hmap, primary)
                # The 304's own Age (RFC 9111 §4.3.4, §5.1): a parent answering from its cache
                # says how old its copy is; the merged fields never carry Age.
                answered = _header_map(response.headers)
                age = current_age(answered.get("age"), hmap.get("date"), request_time,
                                  response_time)
                stale.refresh(merged, freshness, response_time, age)
                self._note_answer(fetch.key, freshness.lifetime, age, response_time,
                                  answered.get("cache-status"))
                if self.store.peek(stale.key) is stale:
                    # Re-filed so the budget counts its new header block now, not later.
                    self.stats.evictions += self.store.insert(stale)
                fetch.set_head(stale)  # type: ignore[arg-type]
                fetch.finish()
                return
            hmap = _header_map(response.headers)
            if response.status >= 500 and stale_on_error(stale, response_time,
                                                          self.config.stale_if_error_max):
                self.backoff.failed(fetch.key, response_time)
                fetch.fail(FetchFailed(response.status, f"upstream answered {response.status}"))
                return
            fetch.set_head(self._fetch_head(response.status, headers, hmap, primary,
                                            request_time, response_time))
            head = fetch.head
            assert head is not None
            if response.status < 500:
                self._note_answer(fetch.key, head.freshness.lifetime, head.initial_age,
                                  response_time, hmap.get("cache-status"))
            elif stale is not None:
                self.backoff.failed(fetch.key, response_time)
            if stale is not None and not head.storable:
                self.store.remove(stale.key)  # the new answer replaces it, even uncached
            if not head.shareable:
                self._pass_until[primary] = pass_mark(response_time)
                self.coalescer.discard(fetch)
            limit = self.config.max_object_bytes
            async for chunk in response.chunks(self.config.upstream_timeouts.idle):
                fetch.append(chunk)
                if head.storable and not within_size(fetch.size, limit):
                    head.storable = False
            if head.content_length is not None and fetch.size != head.content_length:
                raise FetchFailed(502, "upstream body shorter than its Content-Length")
            fetch.finish()
            if head.storable:
                self._store(fetch, head, primary)
        except FetchFailed as failure:
            self.stats.upstream_failures += 1
            if stale is not None:
                self.backoff.failed(fetch.key, time.time())
            fetch.fail(failure)
            if response is not None:
                response.close()
                response = None
        except asyncio.CancelledError:
            fetch.fail(FetchFailed(503, "node shutting down"))
            raise
        except Exception as exc:  # a bug must not leave readers hanging
            log.exception("fill of %s failed", primary)
            fetch.fail(FetchFailed(502, f"internal error: {exc.__class__.__name__}"))
        finally:
            self.coalescer.discard(fetch)
            if response is not None:
                response.release()

    def _note_answer(self, key: str, lifetime: float, age: float, now: float,
                     cache_status: str | None) -> None:
        """An upstream answered for ``key``: its back-off ends, unless the answer arrived
        already stale (a parent riding out its own upstream's failure), which counts as one
        more failure so this tier too stops asking on every request."""
        if upstream_served_stale(lifetime, age, cache_status):
            self.backoff.failed(key, now, grow=False)
        elif key in self.backoff:
            self.backoff.succeeded(key)

    def _decide(self, status: int, hmap: dict[str, str], path: str) -> Freshness:
        """Freshness of a response for the object keyed ``path`` (a cache key: with
        ``host_in_key`` the host comes first, and TTL rules match the path after it)."""
        config = self.config
        return decide(
            "GET",
            status,
            hmap,
            self.keys.rule_path(path),
            request_has_authorization=False,
            ttl_rules=self._ttl_rules,
            now=time.time(),
            heuristic_fraction=config.heuristic_fraction,
            heuristic_max=config.heuristic_max,
        )

    def _fetch_head(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        hmap: dict[str, str],
        primary: str,
        request_time: float,
        response_time: float,
    ) -> FetchHead:
        freshness = self._decide(status, hmap, primary)
        length_text = hmap.get("content-length")
        length = None
        if length_text is not None and length_text.strip().isdigit():
            length = int(length_text.strip())
        vary_text = hmap.get("vary", "")
        vary = tuple(
            sorted({v.strip().lower().encode() for v in vary_text.split(",") if v.strip()})
        )
        if "date" not in hmap:
            headers = headers + [(b"Date", http_date_now_bytes())]
        if status == 200:
            # The node serves ranges of any whole object it holds or is fetching.
            headers = [(n, v) for n, v in headers if n.lower() != b"accept-ranges"]
            headers.append((b"Accept-Ranges", b"bytes"))
        storable = freshness.storable and within_size(length, self.config.max_object_bytes)
        return FetchHead(
            status=status,
            headers=headers,
            content_length=length,
            freshness=freshness,
            shareable=shareable(hmap, freshness),
            storable=storable,
            response_time=response_time,
            initial_age=current_age(hmap.get("age"), hmap.get("date"), request_time,
                                    response_time),
            vary=vary,
        )

    def _store(self, fetch: Fetch, head: FetchHead, primary: str) -> None:
        key = fetch.key
        if head.vary:
            key = MemoryStore.variant_key(primary, head.vary, fetch.request_headers)
        entry = CacheEntry(
            key=key,
            primary=primary,
            status=head.status,
            headers=head.headers,
            body=self.body_files.make(fetch.chunks, fetch.size),
            freshness=head.freshness,
            response_time=head.response_time,
            initial_age=head.initial_age,
            vary=head.vary,
        )
        self.stats.evictions += self.store.insert(entry)

    async def deliver_fetch(
        self,
        req: Request,
        conn: HttpConnection,
        fetch: Fetch,
        head: FetchHead,
        member: bytes,
    ) -> None:
        """Stream an in-flight response: whole, a range of it, 304/412, or bodyless."""
        close = conn.connection_field(req)
        block = head.block
        age = head.initial_age + (time.time() - head.response_time)
        headers = req.headers
        if head.status == 200:
            verdict = conditional.request_verdict(req.method, headers, head.status, head.etag,
                                                  head.last_modified)
            if verdict is not None:
                self.delivery.bodyless(conn, verdict, head.headers, age, member, close)
                return
        if head.status in NO_BODY_STATUSES:
            conn.write(self.delivery.head(head.status, block, age, member, None, None, close,
                                  prior=head.prior))
            return
        if (
            head.status == 200
            and b"range" in headers
            and conditional.if_range_allows(req.header(b"if-range"), head.etag,
                                            head.last_modified)
        ):
            size = head.content_length
            if size is None:
                await fetch.wait_size(1 << 62)  # need the whole length for the Content-Range
                size = fetch.size
            parsed = ranges.parse_range(headers[b"range"], size)
            if parsed is not None:
                await self.delivery.ranges_of_fetch(req, conn, fetch, parsed, size, block,
                                                    head.content_type, age, member, close,
                                                    head.prior)
                return
        length = head.content_length
        chunked = length is None and req.version == b"1.1"
        if length is None and not chunked:
            close = CONNECTION_CLOSE
            conn.close_after_response()
        conn.write(self.delivery.head(head.status, block, age, member, None, length, close,
                              chunked=chunked, prior=head.prior))
        if req.method == "HEAD":
            return
        await self.delivery.stream(conn, fetch, 0, None, chunked)

    # ------------------------------------------------------------------------------------
    # PASS: forward, never store
    # ------------------------------------------------------------------------------------
    async def pass_(self, req: Request, conn: HttpConnection, reason: str) -> None:
        """Forward a request upstream as it is (with its body) and stream the answer back.
        Unsafe methods invalidate what the node stored for the URI (RFC 9111 §4.4)."""
        member = b"fwd=" + reason.encode()
        fields = forwardable(req.raw_headers, PASS_DROPS)
        fields.extend(self._forwarding_fields(req.headers, req.client_ip))
        target = req.target.decode("latin-1")  # canonical path (the reader's) + raw query
        try:
            response = await self.upstream.request(req.method, target, fields, req.body)
        except FetchFailed as failure:
            self.stats.upstream_failures += 1
            self._deliver_failure(req, conn, None, failure, member)
            return
        try:
            if req.method not in ("GET", "HEAD") and response.status < 400:
                for key in self.keys.invalidated_by(req, response.headers):
                    self.store.remove_primary(key)
            headers = _storable_headers(response.headers)
            block, prior = render_fields(headers)
            hmap = _header_map(response.headers)
            length_text = hmap.get("content-length", "").strip()
            length = int(length_text) if length_text.isdigit() else None
            close = conn.connection_field(req)
            bodyless = (req.method == "HEAD" or response.status in NO_BODY_STATUSES
                        or response.status < 200)
            chunked = False
            if bodyless:
                framing = length if req.method == "HEAD" else None
            else:
                framing = length
                chunked = length is None and req.version == b"1.1"
                if length is None and not chunked:
                    close = CONNECTION_CLOSE
                    conn.close_after_response()
            conn.write(self.delivery.head(response.status, block, None, member + b"; fwd-status=%d"
                                  % response.status, None, framing, close, chunked=chunked,
                                  prior=prior))
            self.stats.count(req.method, "pass", response.status)
            if bodyless:
                return
            async for chunk in response.chunks(self.config.upstream_timeouts.idle):
                if conn.closed:
                    response.close()
                    return
                if chunked:
                    conn.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                else:
                    conn.write(chunk)
                self.stats.bytes_sent += len(chunk)
                if conn.paused:
                    await conn.drain()
            if chunked:
                conn.write(b"0\r\n\r\n")
        except FetchFailed:
            response.close()
            conn.abort()
        finally:
            response.release()
