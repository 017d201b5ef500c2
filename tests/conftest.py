"""Shared fixtures: a programmable test origin and cache nodes, on real loopback sockets.

The origin is a real aiohttp server on 127.0.0.1 that counts the requests it gets per path,
records their headers, and serves what a test programs (status, headers, body, latency,
slow or broken bodies). Nodes run in the test's own event loop (uvloop by default; set
``REELCDN_TEST_LOOP=asyncio`` for the plain loop) and listen on ephemeral ports.

Also here: ``no_internal_errors`` (the node logs no error of its own during a test), and
``twin`` / ``compiled`` for modules with a compiled twin (set ``TWIN_MODULE`` in the test
module). Helpers that are not fixtures live in plain modules beside the tests (``rawconn.py``,
``rawhttp.py``, ``nodeproc.py``, ``ranges_cases.py``, ...); test modules never import each other.
Tests that take seconds or start programs are marked ``slow`` (``-m "not slow"`` skips them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import aiohttp
import compiled_twin
import pytest
from aiohttp import web

from reelcdn.edge.config import NodeConfig, node_config_from_dict
from reelcdn.edge.ops.server import NodeServer
from reelcdn.shield.connectors import build_upstream


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    """uvloop (the production loop) unless REELCDN_TEST_LOOP=asyncio asks for the plain one."""
    if os.environ.get("REELCDN_TEST_LOOP", "uvloop") == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


@dataclasses.dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0                 # before the response head
    chunk_size: int = 0                # >0: stream the body in chunks of this size ...
    chunk_delay: float = 0.0           # ... with this pause between chunks
    break_after: int | None = None     # close the connection after this many body bytes
    handler: Callable[[web.Request], Any] | None = None


class TestOrigin:
    """An origin whose answers the test programs and whose request counts it reads."""

    __test__ = False  # a helper named Test…, not a test class (imported by test modules)

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.counts: Counter[str] = Counter()
        self.requests: list[web.Request] = []
        self.seen_headers: list[dict[str, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, path: str, body: bytes = b"", **kwargs: Any) -> Route:
        route = Route(body=body, **kwargs)
        self.routes[path] = route
        return route

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counts[request.path_qs] += 1
        self.seen_headers.append(dict(request.headers))
        await request.read()
        route = self.routes.get(request.path_qs) or self.routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="not found\n")
        if route.handler is not None:
            return await route.handler(request)
        if route.delay:
            await asyncio.sleep(route.delay)
        headers = dict(route.headers)
        if route.chunk_size or route.break_after is not None:
            response = web.StreamResponse(status=route.status, headers=headers)
            response.content_length = len(route.body)
            await response.prepare(request)
            step = route.chunk_size or len(route.body) or 1
            sent = 0
            for start in range(0, len(route.body), step):
                piece = route.body[start:start + step]
                if route.break_after is not None and sent + len(piece) > route.break_after:
                    await response.write(piece[: route.break_after - sent])
                    request.transport.close()  # type: ignore[union-attr]
                    return response
                await response.write(piece)
                sent += len(piece)
                if route.chunk_delay:
                    await asyncio.sleep(route.chunk_delay)
            await response.write_eof()
            return response
        return web.Response(status=route.status, body=route.body, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def origin() -> AsyncIterator[TestOrigin]:
    server = TestOrigin()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def no_internal_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a client sends, the node logs no error of its own (a failed callback, a
    failed request task): hostile input is answered, not crashed on. Protocol test modules
    apply it to every test: ``pytestmark = pytest.mark.usefixtures("no_internal_errors")``."""
    yield
    errors = [r for r in caplog.records
              if r.levelno >= logging.ERROR and r.name.startswith("reelcdn")]
    assert not errors, [r.getMessage() for r in errors]


# ---------------------------------------------------------------------------------------------
# The compiled and the pure twin of an ``extensions`` module
# ---------------------------------------------------------------------------------------------


def _twin_name(request: pytest.FixtureRequest) -> str:
    name = getattr(request.module, "TWIN_MODULE", None)
    if name is None:
        pytest.fail(f"{request.module.__name__} uses a twin fixture: set TWIN_MODULE = \"lru\" "
                    "(or ranges, head, reader) at the top of the module")
    return name


@pytest.fixture(scope="module", params=["pure", "compiled"])
def twin(request: pytest.FixtureRequest) -> ModuleType:
    """Each twin in turn of the module the test module names in ``TWIN_MODULE``: the pure one
    (``reelcdn.edge.<name>``, the reference) and the compiled one (``reelcdn.extensions._<name>``).

    The ``compiled`` parameter skips only when ``REELCDN_NO_EXTENSIONS`` is set; a compiled
    module that is missing or older than its ``.pyx`` fails (``compiled_twin.load_compiled``).
    """
    name = _twin_name(request)
    if request.param == "pure":
        return importlib.import_module(f"reelcdn.extensions._{name}_py")
    return compiled_twin.load_compiled(name)


@pytest.fixture(scope="module")
def compiled(request: pytest.FixtureRequest) -> ModuleType:
    """The compiled twin alone, for differential tests against the pure one (skips and fails
    as ``twin`` does)."""
    return compiled_twin.load_compiled(_twin_name(request))


def make_config(upstream: str, name: str = "edge-t", **overrides: Any) -> NodeConfig:
    table: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "upstream": upstream,
        "cache_memory": "64MiB",
    }
    table.update(overrides)
    return node_config_from_dict(name, table)


@pytest.fixture
async def start_node() -> AsyncIterator[Callable[..., Any]]:
    """Start nodes with ``await start_node(upstream_url, **config keys)``."""
    servers: list[NodeServer] = []

    async def start(upstream: str, name: str = "edge-t", **overrides: Any) -> NodeServer:
        server = NodeServer(make_config(upstream, name, **overrides), build_upstream)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=1.0)


@pytest.fixture
async def node(origin: TestOrigin, start_node: Callable[..., Any]) -> NodeServer:
    return await start_node(origin.url)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def url(server: NodeServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"
