"""The admin API of a node (aiohttp): health, Prometheus metrics, cache stats, purge, prewarm.

Separate from the data plane, on its own address, so that operators' tools never compete with
players for the request path, and a bearer token (``admin_token``) guards it when configured.

A node with ``workers > 1`` runs one of these apps per worker process on a unix socket, plus
``/internal/stats`` (a JSON snapshot of the worker's counters and gauges); the master process
serves the node's real admin address with the same API built on those (``workers.py``). The
request checks (token, purge and prewarm bodies) are shared here so both answer alike.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sized
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reelcdn.edge.cache.bodyfile import DESCRIPTORS
from reelcdn.edge.cache.keys import host_of, split_target
from reelcdn.edge.metrics import node_registry, stats_snapshot, upstream_up_values
from reelcdn.edge.ops import ratios
from reelcdn.extensions.target import BadPath, canonical_path

if TYPE_CHECKING:
    from reelcdn.edge.node import CacheNode

VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
PREWARM_MAX_PATHS = 1000
PREWARM_CONCURRENCY = 8
PREWARM_TRACKED = 10_000      # prewarmed objects watched for their first request
PURGE_KINDS = ("path", "prefix", "video")
# A purge's "host": a DNS name or an IP address, as it appears in the keys of a host_in_key node.
HOST_NAME = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServedNode(Protocol):
    """What the admin of one process reads of the server running its node (``NodeServer``,
    which builds this admin: typing against the server would make the two import each
    other)."""

    @property
    def node(self) -> CacheNode: ...

    @property
    def connections(self) -> Sized:
        """The open client connections (a gauge)."""
        ...

    @property
    def draining(self) -> bool:
        """Shutting down: health answers 503."""
        ...

    @property
    def worker_index(self) -> int | None:
        """This process's index among a node's workers; None for a single-process node."""
        ...

    @property
    def self_url(self) -> str:
        """A base URL reaching this process's own data plane (prewarm fetches through it)."""
        ...


def json_error(message: str, status: int = 400, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def bearer_middleware(token: Callable[[], str | None]) -> Any:
    """Require ``Authorization: Bearer <token>`` on every route, ``/health`` included (a
    load balancer's probe sends the header; health reveals the topology and upstream state).
    ``token`` is read per request, so a reloaded config takes effect at once."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        expected_token = token()
        if expected_token is not None:
            given = request.headers.get("Authorization", "")
            expected = "Bearer " + expected_token
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return web.json_response(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="reelcdn-admin"'},
                )
        return await handler(request)

    return require_token


class PurgeSpec(NamedTuple):
    """What a purge names: ``kind`` (path | prefix | video), its ``value``, and the site
    (``host``) when the node keys by host; without one every site's copy goes."""

    kind: str
    value: str
    host: str | None = None

    def body(self) -> dict[str, str]:
        """The JSON body that names this purge again (a master forwards it to workers)."""
        out = {self.kind: self.value}
        if self.host is not None:
            out["host"] = self.host
        return out


async def read_purge_spec(request: web.Request) -> PurgeSpec | web.Response:
    """Body: {"path": "/v/x/seg_00001.m4s"} | {"prefix": "/v/x/"} | {"video": "x"}, with an
    optional "host" (nodes with ``host_in_key``); the spec, or the 400 to answer."""
    try:
        spec = await request.json()
    except ValueError:
        return json_error("body must be JSON")
    if not isinstance(spec, dict):
        return json_error('give exactly one of "path", "prefix" or "video"')
    spec = dict(spec)
    host = spec.pop("host", None)
    if host is not None and (not isinstance(host, str) or not HOST_NAME.fullmatch(host)):
        return json_error('"host" must be a host name such as "cdn.example.com"')
    if len(spec) != 1:
        return json_error('give exactly one of "path", "prefix" or "video"')
    (kind, value), = spec.items()
    if kind not in PURGE_KINDS:
        return json_error(f'unknown purge kind "{kind}": use "path", "prefix" or "video"')
    if not isinstance(value, str) or not value:
        return json_error(f'"{kind}" must be a non-empty string')
    if kind in ("path", "prefix") and not value.startswith("/"):
        return json_error(f'"{kind}" must start with "/"')
    if kind in ("path", "prefix"):
        try:
            canonical_path(split_target(value)[0])
        except BadPath as exc:
            return json_error(f'"{kind}": {exc}')
    if kind == "video" and not VIDEO_ID.match(value):
        return json_error("invalid video id")
    return PurgeSpec(kind, value, host)


def purge_local(node: CacheNode, spec: PurgeSpec) -> int:
    """Remove what a checked purge spec names from this process's store (memory and disk,
    every Vary variant); entries removed. The keys are the node's own (``KeyPolicy``)."""
    match = node.keys.purge_matcher(spec.kind, spec.value, spec.host)
    return node.store.remove_matching(match)


async def read_prewarm_paths(request: web.Request) -> list[str] | web.Response:
    """Body: {"paths": ["/v/x/master.m3u8", ...]}; the paths, or the 400 to answer."""
    try:
        spec = await request.json()
    except ValueError:
        return json_error("body must be JSON")
    paths = spec.get("paths") if isinstance(spec, dict) else None
    if not isinstance(paths, list) or not paths:
        return json_error('"paths" must be a non-empty list')
    if len(paths) > PREWARM_MAX_PATHS:
        return json_error(f"at most {PREWARM_MAX_PATHS} paths per request")
    bad = [p for p in paths if not isinstance(p, str) or not p.startswith("/")]
    if bad:
        return json_error('every path must be a string starting with "/"', bad=bad[:10])
    return paths


async def prewarm_paths(server: ServedNode, paths: list[str]) -> dict[str, dict[str, object]]:
    """GET each path from the node's own listener (bounded concurrency), reading and
    discarding bodies; report status and Cache-Status per path.

    A worker of a multi-worker node uses its private loopback listener: through the shared
    SO_REUSEPORT port the kernel would hand the request to any worker, and the point is to
    fill *this* worker's cache."""
    base = server.self_url
    limit = asyncio.Semaphore(PREWARM_CONCURRENCY)
    results: dict[str, dict[str, object]] = {}
    timeout = aiohttp.ClientTimeout(total=60)

    async def one(session: aiohttp.ClientSession, path: str) -> None:
        async with limit:
            try:
                async with session.get(base + path, headers={"X-Reelcdn-Prewarm": "1"}) as r:
                    size = 0
                    async for chunk in r.content.iter_any():
                        size += len(chunk)
                    results[path] = {"status": r.status, "bytes": size,
                                     "cache_status": r.headers.get("Cache-Status", "")}
            except (aiohttp.ClientError, TimeoutError) as exc:
                results[path] = {"status": 599, "error": str(exc) or exc.__class__.__name__}

    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        await asyncio.gather(*(one(session, p) for p in dict.fromkeys(paths)))
    return results


class PrewarmTracker:
    """Whether each prewarmed object's first request after its prewarm was a HIT: the
    figure that says whether prewarming works (``reelcdn_prewarmed_first_hits_total`` and
    ``_misses_total``).

    At a prewarm, each path the node then stores is noted with its entry's fill time
    (``response_time``) and HIT count. :meth:`settle` (at each scrape, ``/cache/stats`` and
    prewarm) looks again: more HITs on the same fill → a first HIT; another fill → the object
    was fetched again before any HIT (evicted, or stale and refilled) → a miss. Either way
    the object is no longer watched. An object evicted and not yet asked for stays watched
    (up to ``PREWARM_TRACKED``, oldest dropped uncounted). Rendered playlists have no entry
    of their own and are not counted; their meta.json is, on parents. Sampled, not per
    request: a HIT followed by a refill between two looks counts as a miss."""

    def __init__(self) -> None:
        self.watched: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def settle(self, node: CacheNode) -> None:
        stats, store = node.stats, node.store
        for key, (filled, hits) in list(self.watched.items()):
            entry = store.peek(key)
            if entry is None:
                continue
            if entry.response_time != filled:
                stats.prewarm_first_misses += 1
            elif entry.hits > hits:
                stats.prewarm_first_hits += 1
            else:
                continue
            del self.watched[key]
        stats.prewarm_tracked = len(self.watched)

    def note(self, node: CacheNode, host: str, paths: list[str],
             results: dict[str, dict[str, object]]) -> None:
        """Watch the objects a prewarm stored (after its own requests, which HIT too)."""
        for path in paths:
            if results.get(path, {}).get("status") != 200:
                continue
            try:
                key = node.keys.for_target(path, host)
            except BadPath:
                continue
            entry = node.store.peek(key)
            if entry is None:
                continue
            self.watched.pop(key, None)
            self.watched[key] = (entry.response_time, entry.hits)
            while len(self.watched) > PREWARM_TRACKED:
                self.watched.popitem(last=False)
        node.stats.prewarm_tracked = len(self.watched)


def upstream_health(node: CacheNode) -> dict[str, dict[str, Any]]:
    health = getattr(node.upstream, "health", None)
    return health() if callable(health) else {}


def node_gauges(server: ServedNode) -> dict[str, float]:
    node = server.node
    return {
        "reelcdn_cache_objects": len(node.store),
        "reelcdn_cache_bytes": node.store.bytes,
        "reelcdn_cache_capacity_bytes": node.store.capacity,
        "reelcdn_inflight_fetches": len(node.coalescer),
        "reelcdn_open_connections": len(server.connections),
        # One per process; the master of a multi-worker node sets its own (workers.py:
        # configured, and up: answering and not draining).
        "reelcdn_workers": 1,
        "reelcdn_workers_up": 0 if server.draining else 1,
        # Descriptors are the process's (bodyfile.DESCRIPTORS), like the connections.
        "reelcdn_body_file_descriptors": DESCRIPTORS.held,
        "reelcdn_body_file_descriptors_budget": DESCRIPTORS.budget or 0,
    }


def request_outcomes(requests: dict[tuple[str, str, int], int]) -> dict[str, int]:
    """``NodeStats.requests`` (by method, outcome, code) summed by outcome."""
    return ratios.outcome_counts((outcome, v) for (_, outcome, _), v in requests.items())


def cache_stats(server: ServedNode) -> dict[str, Any]:
    node = server.node
    outcomes = request_outcomes(node.stats.requests)
    first_hits, first_misses = node.stats.prewarm_first_hits, node.stats.prewarm_first_misses
    first = first_hits + first_misses
    return {
        "node": node.name,
        "objects": len(node.store),
        "bytes": node.store.bytes,
        "capacity": node.store.capacity,
        "evictions": node.store.evictions,
        "inflight": len(node.coalescer),
        # Every request answered, by outcome (reelcdn_requests_total's cache_status), and the
        # hit ratio of edge/ops/ratios.py: (hit + stale) / requests for content; null when
        # none came yet.
        "requests": sum(outcomes.values()),
        "outcomes": outcomes,
        "hits": ratios.hits(outcomes),
        "hit_ratio": ratios.hit_ratio(outcomes),
        # The disk tier (cache_disk; all 0 without one): disk hits are among the hits above.
        "disk_objects": node.stats.disk_objects,
        "disk_bytes": node.stats.disk_bytes,
        "disk_capacity": node.stats.disk_capacity,
        "disk_hits": node.stats.disk_hits,
        # Prewarmed objects' first requests (PrewarmTracker).
        "prewarmed": {"first_hits": first_hits, "first_misses": first_misses,
                      "first_hit_ratio": first_hits / first if first else None,
                      "waiting": node.stats.prewarm_tracked},
        "upstreams": upstream_health(node),
    }


def internal_stats(server: ServedNode) -> dict[str, Any]:
    """What a worker tells its master: enough to render the node's /metrics and
    /cache/stats as a sum over workers."""
    node = server.node
    return {
        "pid": os.getpid(),
        "worker": server.worker_index,
        "draining": server.draining,
        "stats": stats_snapshot(node.stats),
        "gauges": node_gauges(server),
        "upstream_up": upstream_up_values(upstream_health(node)),
        "cache": cache_stats(server),
    }


class AdminBackend:
    """What the admin API answers with. One process's node (:class:`LocalAdmin`) and a
    workers' master (``workers.WorkersAdmin``, which asks its workers and sums) are the two
    backends of the one application :func:`build_admin_app` builds."""

    def admin_token(self) -> str | None:
        raise NotImplementedError

    async def health(self) -> tuple[dict[str, Any], int]:
        """The health document and its HTTP status (200 ok or degraded: serving, some of a
        node's workers down; 503 draining, starting or down)."""
        raise NotImplementedError

    async def metrics(self) -> bytes:
        """The Prometheus text exposition."""
        raise NotImplementedError

    async def cache_stats(self) -> dict[str, Any]:
        raise NotImplementedError

    async def purge(self, spec: PurgeSpec) -> tuple[dict[str, Any], int]:
        raise NotImplementedError

    async def prewarm(self, paths: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    async def snapshot(self) -> dict[str, Any]:
        """The JSON snapshot a workers' master sums (``/internal/stats``, workers only)."""
        raise NotImplementedError


class LocalAdmin(AdminBackend):
    """The admin backend of one process: its own node and store."""

    def __init__(self, server: ServedNode) -> None:
        self.server = server
        node = server.node
        self.registry = node_registry(
            node.stats, lambda: node_gauges(server), lambda: upstream_health(node)
        )
        self.prewarmed = PrewarmTracker()

    def admin_token(self) -> str | None:
        return self.server.node.config.admin_token

    async def health(self) -> tuple[dict[str, Any], int]:
        server = self.server
        node = server.node
        status = "draining" if server.draining else "ok"
        body: dict[str, Any] = {"status": status, "node": node.name, "role": node.config.role}
        if server.worker_index is not None:
            body.update(worker=server.worker_index, pid=os.getpid())
        return body, 503 if server.draining else 200

    async def metrics(self) -> bytes:
        self.prewarmed.settle(self.server.node)
        return generate_latest(self.registry)

    async def cache_stats(self) -> dict[str, Any]:
        self.prewarmed.settle(self.server.node)
        return cache_stats(self.server)

    async def purge(self, spec: PurgeSpec) -> tuple[dict[str, Any], int]:
        return {"purged": purge_local(self.server.node, spec), **spec.body()}, 200

    async def prewarm(self, paths: list[str]) -> dict[str, Any]:
        """Each path is fetched through this node's own data plane, so this node and every
        tier above it store the object."""
        node = self.server.node
        self.prewarmed.settle(node)  # what happened to the last prewarm's objects first
        results = await prewarm_paths(self.server, paths)
        self.prewarmed.note(node, host_of(urlsplit(self.server.self_url).netloc), paths,
                            results)
        failed = sum(1 for r in results.values() if r["status"] >= 400)  # type: ignore[operator]
        return {"requested": len(paths), "failed": failed, "results": results}

    async def snapshot(self) -> dict[str, Any]:
        self.prewarmed.settle(self.server.node)
        return internal_stats(self.server)


def build_admin_app(backend: AdminBackend, internal: bool = False) -> web.Application:
    """The admin application (health, metrics, cache stats, purge, prewarm) over a backend,
    behind the bearer token; ``internal`` adds ``/internal/stats`` (a worker's, for its
    master)."""

    async def health(request: web.Request) -> web.Response:
        body, status = await backend.health()
        return web.json_response(body, status=status)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=await backend.metrics(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(await backend.cache_stats())

    async def purge(request: web.Request) -> web.Response:
        spec = await read_purge_spec(request)
        if isinstance(spec, web.Response):
            return spec
        body, status = await backend.purge(spec)
        return web.json_response(body, status=status)

    async def prewarm(request: web.Request) -> web.Response:
        paths = await read_prewarm_paths(request)
        if isinstance(paths, web.Response):
            return paths
        return web.json_response(await backend.prewarm(paths))

    async def snapshot(request: web.Request) -> web.Response:
        return web.json_response(await backend.snapshot())

    app = web.Application(middlewares=[bearer_middleware(backend.admin_token)])
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/cache/stats", stats)
    app.router.add_post("/purge", purge)
    app.router.add_post("/prewarm", prewarm)
    if internal:
        app.router.add_get("/internal/stats", snapshot)
    return app


async def start_admin(
    app: web.Application, *, host: str | None = None, port: int | None = None,
    unix_path: str | None = None,
) -> tuple[web.AppRunner, int | None]:
    """Serve ``app`` on ``host:port`` (0: any free port) or a unix socket; the runner (to
    clean up) and the bound TCP port, read through aiohttp's public ``addresses``."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        if unix_path is not None:
            await web.UnixSite(runner, unix_path).start()
            return runner, None
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = next((a for a in runner.addresses if isinstance(a, tuple)), None)
    return runner, None if bound is None else bound[1]
