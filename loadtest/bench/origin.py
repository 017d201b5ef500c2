"""A tiny, countable HTTP origin for the cache benchmarks.

Why it exists: a cache HIT benchmark needs an origin whose objects are cacheable for a long time
(``Cache-Control: max-age=86400`` plus an ``ETag``) and that can tell afterwards how many times it
was asked. If the counter moves while wrk runs, the "HIT" numbers include misses and the run is
flagged. It is deliberately plain aiohttp: its speed is not measured, only its request count.

The crowd benchmark also needs objects no cache has seen yet, answered after a delay like a
distant origin, whose fetches it can count one path at a time (a coalescing cache must fetch
each exactly once, however many clients ask).

Run: ``python -m reelcdn.loadtest.bench.origin --port 8080 [--cold-size 256KiB]
[--cold-delay 200ms]``. Endpoints:

- ``GET|HEAD /obj/2k`` (2048 bytes) and ``/obj/1m`` (1 MiB): deterministic bytes, strong ETag,
  ``If-None-Match`` answered with 304 (so a revalidating cache is not charged a full body).
  ``/obj/2k-open``: the bytes of ``/obj/2k`` under a second path (the token benchmark protects
  one and leaves the other open); not one of ``OBJECTS``, so the HIT benchmark does not run it.
- ``GET|HEAD /cold/{id}``: ``--cold-size`` bytes derived from the path (``coldobj.cold_body``),
  sent ``--cold-delay`` after the request arrived, ``Cache-Control: max-age=86400``, strong ETag.
- ``GET /__count``: JSON ``{"total": n, "by_path": {...}}``; ``GET /__count?path=/cold/x``:
  ``{"path": "/cold/x", "count": n}``. Not counted itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import signal
import sys
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from .coldobj import COLD_PREFIX, DEFAULT_DELAY, DEFAULT_SIZE, cold_body
from .common import byte_size, milliseconds

#: Benchmark objects: name in the URL (``/obj/{name}``) -> size in bytes.
OBJECTS: dict[str, int] = {"2k": 2048, "1m": 1024 * 1024}
#: More objects served the same way, which no benchmark runs by default.
EXTRA_OBJECTS: dict[str, int] = {"2k-open": 2048}

MAX_AGE = 86_400
COUNT_PATH = "/__count"


def make_body(size: int) -> bytes:
    """Deterministic content, so ETags (and cached copies) stay valid across origin restarts."""
    pattern = bytes(range(256))
    return (pattern * (size // len(pattern) + 1))[:size]


def etag_of(body: bytes) -> str:
    """A strong ETag derived from the content, as a real object store would give."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def if_none_match_hits(header: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2 weak comparison, enough for caches revalidating what we sent."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    tags = (t.strip().removeprefix("W/") for t in header.split(","))
    return etag in tags


def build_app(cold_size: int = DEFAULT_SIZE, cold_delay: float = DEFAULT_DELAY) -> web.Application:
    """The origin application; ``/obj`` bodies and headers are prebuilt once, not per request.

    ``/cold`` bodies are generated per request (each path is meant to be fetched once), before
    the delay, so the delay is the whole time to first byte.
    """
    counts: Counter[str] = Counter()
    prepared: dict[str, tuple[bytes, dict[str, str]]] = {}
    for name, size in {**OBJECTS, **EXTRA_OBJECTS}.items():
        body = make_body(size)
        prepared[name] = (
            body,
            {
                "Cache-Control": f"max-age={MAX_AGE}",
                "ETag": etag_of(body),
                "Content-Type": "application/octet-stream",
            },
        )

    async def obj(request: web.Request) -> web.StreamResponse:
        counts[request.path] += 1
        entry = prepared.get(request.match_info["name"])
        if entry is None:
            raise web.HTTPNotFound(text="no such object\n")
        body, headers = entry
        if if_none_match_hits(request.headers.get("If-None-Match"), headers["ETag"]):
            validators = {k: headers[k] for k in ("Cache-Control", "ETag")}
            return web.Response(status=304, headers=validators)
        return web.Response(body=body, headers=headers)

    async def cold(request: web.Request) -> web.Response:
        arrived = asyncio.get_running_loop().time()
        counts[request.path] += 1
        body = cold_body(request.path, cold_size)
        headers = {
            "Cache-Control": f"max-age={MAX_AGE}",
            "ETag": etag_of(body),
            "Content-Type": "application/octet-stream",
        }
        remaining = cold_delay - (asyncio.get_running_loop().time() - arrived)
        if remaining > 0:
            await asyncio.sleep(remaining)
        return web.Response(body=body, headers=headers)

    async def count(request: web.Request) -> web.Response:
        path = request.query.get("path")
        payload: dict[str, object]
        if path is not None:
            payload = {"path": path, "count": counts.get(path, 0)}
        else:
            payload = {"total": sum(counts.values()), "by_path": dict(counts)}
        return web.Response(text=json.dumps(payload), content_type="application/json")

    app = web.Application()
    app.router.add_get("/obj/{name}", obj)  # also answers HEAD
    app.router.add_get(COLD_PREFIX + "{name}", cold)
    app.router.add_get(COUNT_PATH, count)
    return app


async def serve(
    host: str, port: int, cold_size: int = DEFAULT_SIZE, cold_delay: float = DEFAULT_DELAY
) -> None:
    """Serve until SIGTERM/SIGINT, then close cleanly (the benchmark stops us with SIGTERM)."""
    runner = web.AppRunner(build_app(cold_size, cold_delay), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print(f"origin listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def loopback_host(value: str) -> str:
    """argparse type: the benchmarks only ever listen on loopback addresses."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IP address: {value!r}") from exc
    if not ip.is_loopback:
        raise argparse.ArgumentTypeError(f"only loopback addresses are allowed, got {value}")
    return value


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed (as everywhere in reelcdn), else the stock loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reelcdn.loadtest.bench.origin",
        description="Countable cacheable origin for the reelcdn cache benchmarks.",
    )
    parser.add_argument("--host", type=loopback_host, default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--cold-size",
        type=byte_size,
        default=DEFAULT_SIZE,
        help=f"bytes of each /cold/ object (default {DEFAULT_SIZE})",
    )
    parser.add_argument(
        "--cold-delay",
        type=milliseconds,
        default=DEFAULT_DELAY,
        metavar="MS",
        help=f"delay before answering /cold/ (default {DEFAULT_DELAY * 1000:.0f}ms)",
    )
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(args.host, args.port, args.cold_size, args.cold_delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
