"""The origin of the slice benchmark (``bench/slices.py``): large objects that answer Range.

``GET /big/{name}`` is an object of ``--size`` bytes (the same deterministic content as the
other benchmarks' objects, ``origin.make_body``) with a strong ETag; a single
``Range: bytes=first-[last]`` is answered ``206`` with its ``Content-Range``, as object stores
do. ``GET /__count`` reports requests and body bytes sent per path, which is what the
benchmark reads: the bytes a cold request moved out of the origin.

Usage: ``python -m reelcdn.loadtest.bench.sliceorigin --port P --size 32MiB``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
from collections import Counter

from aiohttp import web

from .common import byte_size
from .origin import etag_of, make_body

MAX_AGE = 86_400
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def build_app(size: int) -> web.Application:
    body = make_body(size)
    headers = {"Cache-Control": f"max-age={MAX_AGE}", "ETag": etag_of(body),
               "Content-Type": "video/mp4", "Accept-Ranges": "bytes"}
    counts: Counter[str] = Counter()
    sent: Counter[str] = Counter()

    async def big(request: web.Request) -> web.Response:
        counts[request.path] += 1
        match = _RANGE.fullmatch(request.headers.get("Range", ""))
        if match is None:
            sent[request.path] += size
            return web.Response(body=body, headers=headers)
        first = int(match.group(1))
        last = min(int(match.group(2) or size - 1), size - 1)
        if first >= size:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        sent[request.path] += last - first + 1
        return web.Response(status=206, body=body[first:last + 1], headers={
            **headers, "Content-Range": f"bytes {first}-{last}/{size}"})

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"total": sum(counts.values()),
                                             "requests": dict(counts), "bytes": dict(sent)}),
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/big/{name}", big)
    app.router.add_get("/__count", count)
    return app


async def serve(port: int, size: int) -> None:
    runner = web.AppRunner(build_app(size), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reelcdn.loadtest.bench.sliceorigin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=byte_size, default=32 * 1024 * 1024)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
