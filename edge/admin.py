"""The admin API of a node (aiohttp): health, Prometheus metrics, cache stats, purge.

Separate from the data plane, on its own address, so that operators' tools never compete with
players for the request path, and a bearer token (``admin_token``) guards it when configured.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .cachekey import cache_key, split_target
from .metrics import node_registry

if TYPE_CHECKING:
    from .server import NodeServer

VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
PREWARM_MAX_PATHS = 1000
PREWARM_CONCURRENCY = 8


async def prewarm_paths(server: NodeServer, paths: list[str]) -> dict[str, dict[str, object]]:
    """GET each path from the node's own listener (bounded concurrency), reading and
    discarding bodies; report status and Cache-Status per path."""
    host = server.node.config.listen_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    base = f"http://{host}:{server.port}" if ":" not in host else f"http://[{host}]:{server.port}"
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


def build_admin_app(server: NodeServer) -> web.Application:
    node = server.node

    def gauges() -> dict[str, float]:
        return {
            "reelcdn_cache_objects": len(node.store),
            "reelcdn_cache_bytes": node.store.bytes,
            "reelcdn_cache_capacity_bytes": node.store.capacity,
            "reelcdn_inflight_fetches": len(node.coalescer),
            "reelcdn_open_connections": len(server.connections),
        }

    def upstream_health() -> dict[str, dict[str, object]]:
        health = getattr(node.upstream, "health", None)
        return health() if callable(health) else {}

    registry = node_registry(node.stats, gauges, upstream_health)

    @web.middleware
    async def require_token(request: web.Request, handler):  # type: ignore[no-untyped-def]
        token = node.config.admin_token
        if token is not None and request.path != "/health":
            given = request.headers.get("Authorization", "")
            expected = "Bearer " + token
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return web.json_response(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="reelcdn-admin"'},
                )
        return await handler(request)

    async def health(request: web.Request) -> web.Response:
        status = "draining" if server.draining else "ok"
        return web.json_response(
            {"status": status, "node": node.name, "role": node.config.role},
            status=503 if server.draining else 200,
        )

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def cache_stats(request: web.Request) -> web.Response:
        requests = node.stats.requests
        hits = sum(v for (_, status, _), v in requests.items() if status == "hit")
        total = sum(requests.values())
        return web.json_response(
            {
                "node": node.name,
                "objects": len(node.store),
                "bytes": node.store.bytes,
                "capacity": node.store.capacity,
                "evictions": node.store.evictions,
                "inflight": len(node.coalescer),
                "requests": total,
                "hits": hits,
                "hit_ratio": hits / total if total else 0.0,
                "upstreams": upstream_health(),
            }
        )

    async def purge(request: web.Request) -> web.Response:
        """Body: {"path": "/v/x/seg_00001.m4s"} | {"prefix": "/v/x/"} | {"video": "x"}."""
        try:
            spec = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(spec, dict) or len(spec) != 1:
            return web.json_response(
                {"error": 'give exactly one of "path", "prefix" or "video"'}, status=400
            )
        (kind, value), = spec.items()
        if not isinstance(value, str) or not value:
            return web.json_response({"error": f'"{kind}" must be a non-empty string'},
                                     status=400)
        config = node.config
        if kind == "path":
            if not value.startswith("/"):
                return web.json_response({"error": '"path" must start with "/"'}, status=400)
            path, query = split_target(value)
            removed = node.store.remove_primary(
                cache_key(path, query, config.ignore_query_params, config.ignore_query_prefixes)
            )
        elif kind == "prefix":
            if not value.startswith("/"):
                return web.json_response({"error": '"prefix" must start with "/"'}, status=400)
            removed = node.store.remove_prefix(value)
        elif kind == "video":
            if not VIDEO_ID.match(value):
                return web.json_response({"error": "invalid video id"}, status=400)
            removed = node.store.remove_prefix(f"/v/{value}/")
        else:
            return web.json_response(
                {"error": f'unknown purge kind "{kind}": use "path", "prefix" or "video"'},
                status=400,
            )
        return web.json_response({"purged": removed, kind: value})

    async def prewarm(request: web.Request) -> web.Response:
        """Body: {"paths": ["/v/x/master.m3u8", ...]}. Each path is fetched through this
        node's own data plane, so this node and every tier above it store the object."""
        try:
            spec = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        paths = spec.get("paths") if isinstance(spec, dict) else None
        if not isinstance(paths, list) or not paths:
            return web.json_response({"error": '"paths" must be a non-empty list'}, status=400)
        if len(paths) > PREWARM_MAX_PATHS:
            return web.json_response(
                {"error": f"at most {PREWARM_MAX_PATHS} paths per request"}, status=400
            )
        bad = [p for p in paths if not isinstance(p, str) or not p.startswith("/")]
        if bad:
            return web.json_response(
                {"error": 'every path must be a string starting with "/"', "bad": bad[:10]},
                status=400,
            )
        results = await prewarm_paths(server, paths)
        failed = sum(1 for r in results.values() if r["status"] >= 400)
        return web.json_response({"requested": len(paths), "failed": failed,
                                  "results": results})

    app = web.Application(middlewares=[require_token])
    app.router.add_post("/prewarm", prewarm)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/cache/stats", cache_stats)
    app.router.add_post("/purge", purge)
    return app
