"""The admin API of a node (aiohttp): health, Prometheus metrics, cache stats, purge.

Separate from the data plane, on its own address, so that operators' tools never compete with
players for the request path, and a bearer token (``admin_token``) guards it when configured.
"""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .cachekey import cache_key, split_target
from .metrics import node_registry

if TYPE_CHECKING:
    from .server import NodeServer

VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


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

    registry = node_registry(node.stats, gauges)

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

    app = web.Application(middlewares=[require_token])
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/cache/stats", cache_stats)
    app.router.add_post("/purge", purge)
    return app
