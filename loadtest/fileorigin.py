"""An HTTP origin serving a folder (``v/{video}/...`` as ``reelcdn up`` lays it out) that counts
what it is asked, for the side-by-side comparison.

Why a separate origin: nginx needs an HTTP upstream, and the comparison is only fair when
reelcdn's shield fetches from the very same server; its per-path counts are then the one
origin-offload measure both CDNs share (nginx has no ``/metrics``).

Health checks are answered at ``CHECK_PATH`` (200) and counted apart from the objects: a
shield checks an http origin every couple of seconds (docs/failover.md), nginx's open-source
tiers never do, and a check moves no content; counted with the objects, a 30 s run's 15 checks
read as 15 more origin fetches than nginx's.

Run: ``python -m reelcdn.loadtest.fileorigin --root DIR --port N [--delay 20ms]``.
``GET /__count`` answers ``{"total": n, "paths": {...}, "checks": k}`` (``total`` and ``paths``:
the objects asked for) and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path

from aiohttp import web

from .network import parse_seconds

#: What the comparison's shield is told to check (``[origin.NAME.health] path``).
CHECK_PATH = "/__origin/health"

TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".m4s": "video/iso.segment",
         ".mp4": "video/mp4", ".json": "application/json", ".jpg": "image/jpeg"}


def build_app(root: Path, delay: float = 0.0) -> web.Application:
    root = root.resolve()
    counts: Counter[str] = Counter()
    checks = 0

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"total": sum(counts.values()), "paths": dict(counts),
                                  "checks": checks})

    async def check(request: web.Request) -> web.Response:
        nonlocal checks
        checks += 1
        return web.Response(text="ok\n")

    async def serve(request: web.Request) -> web.StreamResponse:
        counts[request.path] += 1
        if delay:
            await asyncio.sleep(delay)
        file = (root / request.path.lstrip("/")).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            return web.Response(status=404, text="not found\n")
        body = await asyncio.get_running_loop().run_in_executor(None, file.read_bytes)
        return web.Response(body=body, headers={
            "Content-Type": TYPES.get(file.suffix, "application/octet-stream"),
            "Cache-Control": "max-age=86400"})

    app = web.Application()
    app.router.add_get("/__count", count)
    app.router.add_get(CHECK_PATH, check)
    app.router.add_get("/{tail:.*}", serve)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", default="0ms", help="added before every answer")
    args = parser.parse_args()
    web.run_app(build_app(Path(args.root), parse_seconds(args.delay)), host="127.0.0.1",
                port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
