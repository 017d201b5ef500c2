"""A shield's http origins: active checks with rise/fall and the breaker (the parents' rules,
edge/fetch/health.py), their config keys, and a body that breaks mid-way resumed from the
origin chain with Range + If-Range (docs/failover.md). Origins are aiohttp servers on
127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import generate_latest
from rawhttp import get

from reelcdn.edge.config import (
    ConfigError,
    HealthConfig,
    OriginConfig,
    UpstreamTimeouts,
    node_config_from_dict,
    topology_from_text,
)
from reelcdn.edge.metrics import node_registry
from reelcdn.edge.ops.server import NodeServer
from reelcdn.shield import build_origin_chain
from reelcdn.shield.connectors import build_upstream

TIMEOUTS = UpstreamTimeouts(connect=1, first_byte=3, idle=3)
OBJECT = random.Random(11).randbytes(1024 * 1024 + 123)
HALF = len(OBJECT) // 2
ETAG = '"origin-v1"'
FAST = HealthConfig(path="/healthz", interval=0.1, timeout=0.3, rise=2, fall=2)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AioOrigin:
    """An http origin: ``OBJECT`` at every path but the health path, with a strong ETag,
    ``Range: bytes=N-`` answered 206 when ``If-Range`` matches (else the whole 200, RFC 9110
    §13.1.5). ``health_status``: what ``/healthz`` answers. ``cuts``: how many of the next
    whole-object answers send ``HALF`` bytes and then reset the connection."""

    def __init__(self, etag: str = ETAG) -> None:
        self.etag = etag
        self.health_status = 200
        self.cuts = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.checks = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def data_requests(self) -> list[tuple[str, dict[str, str]]]:
        return list(self.requests)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/{tail:.*}", self._object)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        self.checks += 1
        return web.Response(status=self.health_status, text="health\n")

    async def _object(self, request: web.Request) -> web.StreamResponse:
        fields = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append((request.path_qs, fields))
        start = 0
        wanted = fields.get("range", "")
        if (wanted.startswith("bytes=") and wanted.endswith("-")
                and fields.get("if-range", self.etag) == self.etag):
            start = int(wanted[6:-1])
        headers = {"ETag": self.etag, "Cache-Control": "max-age=60", "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(OBJECT) - 1}/{len(OBJECT)}"
        body = OBJECT[start:]
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        if self.cuts and not start:
            self.cuts -= 1
            await response.write(body[:HALF])
            await asyncio.sleep(0.3)  # let the shield read it all before the reset
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(body)
        await response.write_eof()
        return response


@pytest.fixture
async def origins() -> AsyncIterator[list[AioOrigin]]:
    started: list[AioOrigin] = []
    yield started
    for origin in started:
        await origin.stop()


async def started(origins: list[AioOrigin], origin: AioOrigin) -> AioOrigin:
    await origin.start()
    origins.append(origin)
    return origin


def http_origin(name: str, url: str, health: HealthConfig = FAST) -> OriginConfig:
    return OriginConfig(name=name, type="http", url=url, timeouts=TIMEOUTS, health=health)


async def start_shield(origins: tuple[OriginConfig, ...], **overrides) -> NodeServer:
    base = node_config_from_dict("shield-t", {"listen": "127.0.0.1:0",
                                              "upstream": "http://127.0.0.1:9"})
    config = dataclasses.replace(base, upstream=None, role="shield", origins=origins,
                                 max_object_bytes=16 * 1024 * 1024, **overrides)
    server = NodeServer(config, build_upstream)
    await server.start()
    return server


async def wait_for(predicate, within: float) -> float:
    """Seconds until ``predicate()`` holds; fails after ``within``."""
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < within, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - began


# -- config -------------------------------------------------------------------------------

TOPOLOGY = """
[origin.web]
type = "http"
url = "http://127.0.0.1:8000"
{health}

[origin.disk]
type = "fs"
root = "origin"
{disk}

[node.shield-1]
role = "shield"
listen = "127.0.0.1:9100"
origins = ["web", "disk"]
"""


def load(health: str = "", disk: str = ""):
    return topology_from_text(TOPOLOGY.format(health=health, disk=disk), base_dir="/tmp")


def test_origin_health_keys() -> None:
    web_origin, disk = load().nodes["shield-1"].origins
    assert web_origin.health == HealthConfig(path="/")  # checked by default, path "/"
    web_origin, _ = load('[origin.web.health]\npath = "/ping"\ninterval = "500ms"\nrise = 3\n'
                         'fall = 1\ntimeout = "200ms"').nodes["shield-1"].origins
    assert web_origin.health == HealthConfig(path="/ping", interval=0.5, rise=3, fall=1,
                                             timeout=0.2)
    web_origin, _ = load("[origin.web.health]\nchecks = false").nodes["shield-1"].origins
    assert not web_origin.health.checks


@pytest.mark.parametrize(
    ("health", "disk", "key", "fragment"),
    [
        ("[origin.web.health]\nrise = 0", "", "origin.web.health.rise", "at least 1"),
        ("[origin.web.health]\ninterval = 0", "", "origin.web.health.interval", "larger than 0"),
        ('[origin.web.health]\npath = "ping"', "", "origin.web.health.path", "absolute path"),
        ("[origin.web.health]\nfal = 2", "", "origin.web.health.fal", 'did you mean "fall"?'),
        ("health = 3", "", "origin.web.health", "table"),
        ("", "[origin.disk.health]\nfall = 2", "origin.disk.health",
         "health is for http origins"),
    ],
)
def test_bad_origin_health_values_name_the_key(health: str, disk: str, key: str,
                                               fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(health, disk)
    assert info.value.key == key
    assert fragment in info.value.message


# -- active checks ----------------------------------------------------------------------------

async def test_checks_take_an_origin_out_and_put_it_back(origins, tmp_path: Path) -> None:
    origin = await started(origins, AioOrigin())
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x").write_bytes(b"replica")
    chain = build_origin_chain(
        [http_origin("web", origin.url),
         OriginConfig(name="disk", type="fs", root=str(tmp_path))], node="shield-t")
    changes: list[tuple[str, str]] = []
    chain.state_change = lambda name, to: changes.append((name, to))
    await chain.start()
    try:
        await wait_for(lambda: origin.checks >= 2, 2.0)
        assert chain.health()["web"]["up"] and chain.health()["web"]["checked"]
        assert not chain.health()["disk"]["checked"]  # fs: passive only
        origin.health_status = 503
        took = await wait_for(lambda: not chain.health()["web"]["up"], 2.0)
        assert took < (FAST.fall + 1) * FAST.interval + 0.3
        assert chain.health()["web"]["checks"] == "down"
        assert changes == [("web", "down")]
        # Down: skipped while the replica answers (the origin sees no data request).
        response = await chain.request("GET", "/v/x", [])
        assert response.status == 200
        response.close()
        assert origin.requests == []
        origin.health_status = 404  # any answer below 500 passes: the origin is alive
        await wait_for(lambda: chain.health()["web"]["up"], 2.0)
        assert changes == [("web", "down"), ("web", "up")]
        response = await chain.request("GET", "/v/x", [])
        assert response.status == 200
        response.close()
        assert [t for t, _ in origin.requests] == ["/v/x"]
    finally:
        await chain.close()


async def test_an_origin_marked_down_is_tried_last_not_never(origins) -> None:
    origin = await started(origins, AioOrigin())
    origin.health_status = 500  # its checks fail, but it serves objects
    chain = build_origin_chain([http_origin("web", origin.url)], node="shield-t")
    await chain.start()
    try:
        await wait_for(lambda: not chain.health()["web"]["up"], 2.0)
        response = await chain.request("GET", "/v/obj", [])
        assert response.status == 200  # the only origin: asked anyway
        response.close()
        assert len(origin.requests) == 1
    finally:
        await chain.close()


async def test_checks_off_with_the_shields_health_checks(origins) -> None:
    origin = await started(origins, AioOrigin())
    chain = build_origin_chain([http_origin("web", origin.url)], checks=False)
    await chain.start()
    try:
        await asyncio.sleep(0.35)
        assert origin.checks == 0 and not chain.health()["web"]["checked"]
    finally:
        await chain.close()


async def test_origin_state_in_metrics(origins) -> None:
    origin = await started(origins, AioOrigin())
    server = await start_shield((http_origin("web", origin.url),))
    try:
        node = server.node
        registry = node_registry(node.stats, lambda: {}, node.upstream.health)
        await wait_for(lambda: origin.checks >= 1, 2.0)
        text = generate_latest(registry).decode()
        assert 'reelcdn_upstream_up{node="shield-t",upstream="web"} 1.0' in text
        origin.health_status = 503
        await wait_for(lambda: not node.upstream.health()["web"]["up"], 2.0)
        text = generate_latest(registry).decode()
        assert 'reelcdn_upstream_up{node="shield-t",upstream="web"} 0.0' in text
        assert ('reelcdn_upstream_state_changes_total{node="shield-t",to="down",'
                'upstream="web"} 1.0') in text
    finally:
        await server.stop(grace=0.5)


# -- resume from the origin chain -------------------------------------------------------------

async def test_a_body_cut_by_an_origin_is_resumed_from_the_next_origin(origins) -> None:
    dying = await started(origins, AioOrigin())
    dying.cuts = 1
    whole = await started(origins, AioOrigin())
    server = await start_shield((http_origin("dying", dying.url),
                                 http_origin("whole", whole.url)))
    try:
        first, joined = await asyncio.gather(get(server.port, "/v/a/seg.m4s"),
                                             get(server.port, "/v/a/seg.m4s"))
        for response in (first, joined):
            assert response.status == 200 and sha(response.body) == sha(OBJECT)
        [(_, fields)] = whole.data_requests()
        assert fields["range"] == f"bytes={HALF}-" and fields["if-range"] == ETAG
        again = await get(server.port, "/v/a/seg.m4s")
        assert (again.header("cache-status") or "").startswith("shield-t; hit")
        assert sha(again.body) == sha(OBJECT)  # stored whole
        entry = server.node.store.lookup("/v/a/seg.m4s", {})
        assert entry is not None and sha(bytes(entry.body)) == sha(OBJECT)
        assert server.node.stats.upstream_resumes == {"resumed": 1}
        assert len(dying.data_requests()) == 1 and len(whole.data_requests()) == 1
    finally:
        await server.stop(grace=0.5)


async def test_the_only_origin_is_asked_again_for_the_rest(origins) -> None:
    only = await started(origins, AioOrigin())
    only.cuts = 1
    server = await start_shield((http_origin("only", only.url),))
    try:
        response = await get(server.port, "/v/b/seg.m4s")
        assert response.status == 200 and sha(response.body) == sha(OBJECT)
        (_, first), (_, second) = only.data_requests()
        assert "range" not in first
        assert second["range"] == f"bytes={HALF}-" and second["if-range"] == ETAG
        assert server.node.stats.upstream_resumes == {"resumed": 1}
        again = await get(server.port, "/v/b/seg.m4s")
        assert (again.header("cache-status") or "").startswith("shield-t; hit")
    finally:
        await server.stop(grace=0.5)


async def test_a_changed_validator_at_the_next_origin_is_refused(origins) -> None:
    dying = await started(origins, AioOrigin())
    dying.cuts = 2  # its own retry is cut too
    changed = await started(origins, AioOrigin(etag='"origin-v2"'))
    server = await start_shield((http_origin("dying", dying.url),
                                 http_origin("changed", changed.url)))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /v/c/seg.m4s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        async with asyncio.timeout(10):
            body = await reader.read(-1)  # cut: the shield closes the connection
        writer.close()
        assert len(body) < len(OBJECT) and body == OBJECT[:len(body)]
        assert server.node.stats.upstream_resumes == {"refused": 1}
        assert server.node.store.lookup("/v/c/seg.m4s", {}) is None  # not stored
    finally:
        await server.stop(grace=0.5)


async def test_no_origin_to_answer_counts_a_failed_resume(origins) -> None:
    only = await started(origins, AioOrigin())
    only.cuts = 1
    server = await start_shield((http_origin("only", only.url),))
    try:
        async def stop_after_head() -> None:
            await wait_for(lambda: only.requests, 5.0)
            await only.stop()  # gone before the resume asks it
            origins.remove(only)

        stopper = asyncio.create_task(stop_after_head())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /v/d/seg.m4s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(10):
            body = await reader.read(-1)
        writer.close()
        await stopper
        assert len(body) < len(OBJECT)
        assert server.node.stats.upstream_resumes == {"failed": 1}
        text = generate_latest(node_registry(server.node.stats, lambda: {})).decode()
        assert 'reelcdn_upstream_resumes_total{node="shield-t",outcome="failed"} 1.0' in text
    finally:
        await server.stop(grace=0.5)
