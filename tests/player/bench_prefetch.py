"""Prefetch at a cold edge: time to first frame and second-segment hit ratio, before/after.

    python tests/player/bench_prefetch.py [--players 60] [--concurrency 10] [--origin-delay 30]

A 3-tier topology (shield → regional → edge, in this process) in front of an HTTP origin that
serves ffmpeg demo videos after ``--origin-delay`` ms (a distant origin: on loopback with no
delay every path is too fast to tell anything apart). Every player watches a video id of its
own (``demo-1-p17`` is served from ``demo-1``'s files), so every request meets cold caches at
every tier. A player does what hls.js does at start: master → first variant's media playlist →
init → segment 0 (TTFF: first request to the last byte of segment 0), then segment 1; its
segment requests carry CMCD ``nor`` naming the next segment. Modes, by edge config:

- ``off``: ``prefetch_segments = 0``, ``prefetch_cmcd = false``
- ``playlist``: prefetch of init + 2 segments after the media playlist only
- ``cmcd``: prefetch on CMCD ``nor`` only
- ``both``: the defaults

Output: a Markdown table (docs/benchmarks/2026-11-22.md records two runs).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))
from demo_tiers import VIDEO, free_ports, synthesise  # noqa: E402

from reelcdn.edge.config import topology_from_text  # noqa: E402
from reelcdn.edge.ops.server import NodeServer  # noqa: E402
from reelcdn.shield.connectors import build_upstream  # noqa: E402

MODES = {
    "off": {"prefetch_segments": 0, "prefetch_cmcd": False},
    "playlist": {"prefetch_segments": 2, "prefetch_cmcd": False},
    "cmcd": {"prefetch_segments": 0, "prefetch_cmcd": True},
    "both": {"prefetch_segments": 2, "prefetch_cmcd": True},
}
TOPOLOGY = """
[defaults]
cache_memory = "256MiB"
[[defaults.ttl]]
match = "*.m4s"
ttl = "1d"
[[defaults.ttl]]
match = "*/init.mp4"
ttl = "1d"
[[defaults.ttl]]
match = "*/meta.json"
ttl = "2s"
[origin.main]
type = "http"
url = "http://127.0.0.1:{origin}"
[node.shield-1]
role = "shield"
listen = "127.0.0.1:{shield}"
origins = ["main"]
[node.regional-1]
role = "regional"
listen = "127.0.0.1:{regional}"
parents = ["shield-1"]
[node.edge-a]
role = "edge"
listen = "127.0.0.1:{edge}"
parents = ["regional-1"]
prefetch_segments = {segments}
prefetch_cmcd = {cmcd}
prefetch_concurrency = {concurrency}
# every player of the bench connects from 127.0.0.1: one client to the per-client budget
prefetch_client_bytes_per_second = "1GiB"
"""
_PLAYER_ID = re.compile(r"^/v/([A-Za-z0-9_-]+?)-p\d+/")


async def start_origin(root: Path, delay: float, port: int) -> web.AppRunner:
    """Files of ``root`` after ``delay`` seconds; ``/v/demo-1-pN/...`` is ``/v/demo-1/...``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        path = _PLAYER_ID.sub(r"/v/\1/", request.path)
        file = (root / path.lstrip("/")).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            return web.Response(status=404)
        return web.Response(body=file.read_bytes())

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def edge_member(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("Cache-Status", "").split(",")[-1].strip()


async def play(session: aiohttp.ClientSession, base: str, player: int) -> tuple[float, str]:
    """One player's start: (TTFF seconds, the edge's Cache-Status member for segment 1)."""
    video = f"{VIDEO}-p{player}"
    started = time.perf_counter()

    async def fetch(path: str, nor: str | None = None) -> aiohttp.ClientResponse:
        url = base + path
        if nor is not None:
            url += "?CMCD=" + quote(f'nor="{nor}",ot=av,sf=h,sid="p{player}",su', safe="")
        async with session.get(url) as response:
            await response.read()
            assert response.status == 200, (url, response.status)
            return response

    master = await fetch(f"/v/{video}/master.m3u8?start=lowest")
    assert master.status == 200
    await fetch(f"/v/{video}/360p/index.m3u8")
    await fetch(f"/v/{video}/360p/init.mp4")
    await fetch(f"/v/{video}/360p/seg_00000.m4s", nor="seg_00001.m4s")
    ttff = time.perf_counter() - started
    second = await fetch(f"/v/{video}/360p/seg_00001.m4s", nor="seg_00002.m4s")
    return ttff, edge_member(second)


async def run_mode(root: Path, mode: str, players: int, concurrency: int,
                   delay: float, first_player: int, prefetch_concurrency: int
                   ) -> dict[str, float]:
    origin_port, shield, regional, edge = free_ports(4)
    keys = MODES[mode]
    text = TOPOLOGY.format(origin=origin_port, shield=shield, regional=regional, edge=edge,
                           segments=keys["prefetch_segments"],
                           cmcd="true" if keys["prefetch_cmcd"] else "false",
                           concurrency=prefetch_concurrency)
    origin = await start_origin(root, delay, origin_port)
    topology = topology_from_text(text, base_dir=str(root))
    servers = []
    for name in topology.order_for_start():
        server = NodeServer(topology.nodes[name], build_upstream)
        await server.start()
        servers.append(server)
    gate = asyncio.Semaphore(concurrency)
    results: list[tuple[float, str]] = []
    try:
        async with aiohttp.ClientSession() as session:
            async def one(player: int) -> None:
                async with gate:
                    results.append(await play(session, f"http://127.0.0.1:{edge}", player))

            await asyncio.gather(*(one(first_player + i) for i in range(players)))
        prefetcher = servers[-1].node.features.prefetcher
        while prefetcher.pending:  # let the last prefetches land before the nodes stop
            await asyncio.sleep(0.01)
        stats = servers[-1].node.stats
        ttffs = sorted(t for t, _ in results)
        hits = sum(1 for _, member in results if member.startswith("edge-a; hit"))
        joined = sum(1 for _, member in results if "collapsed" in member)
        return {
            "ttff_p50": statistics.median(ttffs) * 1000,
            "ttff_p95": ttffs[max(0, round(0.95 * len(ttffs)) - 1)] * 1000,
            "seg1_hit": hits / len(results),
            "seg1_joined": joined / len(results),
            "issued": stats.prefetch_issued,
            "used": stats.prefetch_used,
        }
    finally:
        for server in reversed(servers):
            await server.stop(grace=1.0)
        await origin.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--origin-delay", type=float, default=30.0, help="ms per origin request")
    parser.add_argument("--prefetch-concurrency", type=int, default=16,
                        help="the edge's prefetch_concurrency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesise(Path(tmp)).resolve()
        print(f"{args.players} players ({args.concurrency} at a time), each on its own cold "
              f"video, origin delay {args.origin_delay:g} ms, prefetch_concurrency "
              f"{args.prefetch_concurrency}\n")
        print("| mode | TTFF p50 ms | TTFF p95 ms | seg 1 HIT at edge | seg 1 joined a fetch "
              "| prefetches issued | used |")
        print("|---|---|---|---|---|---|---|")
        for n, mode in enumerate(MODES):
            r = await run_mode(root, mode, args.players, args.concurrency,
                               args.origin_delay / 1000, n * 100_000,
                               args.prefetch_concurrency)
            print(f"| {mode} | {r['ttff_p50']:.1f} | {r['ttff_p95']:.1f} | "
                  f"{r['seg1_hit']:.0%} | {r['seg1_joined']:.0%} | {r['issued']:.0f} | "
                  f"{r['used']:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
