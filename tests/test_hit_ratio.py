"""One hit ratio from three places of a real edge node: a crafted sequence of requests (miss,
hit, a 304 to a conditional request, HEAD, rendered playlists from a fresh, a fetched and a
revalidated meta.json, revalidated, stale-while-revalidate, stale-if-error, pass, a playlist's
bad option) gives the same outcome counts and the same ratio from ``/metrics`` (as
``reelcdn loadtest`` and ``reelcdn status`` parse it), from ``/cache/stats`` and from the
``Cache-Status`` the client received (as ``reelcdn loadtest`` tallies it)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from reelcdn.edge.ops.ratios import hit_ratio
from reelcdn.loadtest.cachestatus import Tally
from reelcdn.loadtest.scrape import parse_metrics
from reelcdn.manifests.meta import (
    InitSection,
    Rendition,
    Segment,
    VideoMeta,
    average_bandwidth,
    peak_bandwidth,
)
from reelcdn.status import parse_node_metrics

pytestmark = pytest.mark.usefixtures("no_internal_errors")

VIDEO = "vid-1"


def meta_json() -> bytes:
    digest = "sha256:" + "ab" * 32
    segs = (Segment("seg_00000.m4s", 2.0, 250_000, digest),
            Segment("seg_00001.m4s", 2.0, 240_000, digest))
    rendition = Rendition(
        name="360p", width=640, height=360, bandwidth=peak_bandwidth(segs),
        average_bandwidth=average_bandwidth(segs), codecs="avc1.4d401e,mp4a.40.2",
        video_codec="avc1.4d401e", audio_codec="mp4a.40.2", frame_rate=30.0,
        init=InitSection("init.mp4", 1200, digest), segments=segs)
    meta = VideoMeta(video_id=VIDEO, state="ready", duration=4.0, renditions=(rendition,),
                     created_at="2025-01-02T03:04:05Z")
    return meta.to_json().encode()


def conditional(body: bytes, etag: str, cache_control: str):
    """An origin handler that answers If-None-Match with a 304, so the node revalidates."""
    async def handle(request: web.Request) -> web.Response:
        headers = {"ETag": etag, "Cache-Control": cache_control}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)
    return handle


async def test_metrics_cache_stats_and_cache_status_say_one_hit_ratio(origin, start_node):
    origin.set(f"/v/{VIDEO}/meta.json",
               handler=conditional(meta_json(), '"m1"', "max-age=1"))
    origin.set("/obj", b"o" * 100, headers={"Cache-Control": "max-age=600", "ETag": '"o1"'})
    origin.set("/reval", handler=conditional(b"r" * 10, '"r1"', "max-age=1"))
    origin.set("/swr", b"s", headers={"Cache-Control": "max-age=1, stale-while-revalidate=60"})
    origin.set("/sie", b"e", headers={"Cache-Control": "max-age=1, stale-if-error=60"})
    node = await start_node(origin.url, role="edge", prefetch_segments=0)
    base = f"http://127.0.0.1:{node.port}"
    admin = f"http://127.0.0.1:{node.admin_port}"
    tally = Tally()
    members: list[str] = []

    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async def ask(method: str, path: str, expect: int = 200, **headers: str) -> str:
            async with session.request(method, base + path, headers=headers) as response:
                await response.read()
                assert response.status == expect, (method, path, response.status)
                cache_status = response.headers.get("Cache-Status", "")
            tally.record(response.status, cache_status, 0, 0, path)
            members.append(cache_status.split(",")[-1].strip())
            return members[-1]

        master = f"/v/{VIDEO}/master.m3u8"
        assert "fwd=uri-miss" in await ask("GET", "/obj")                      # miss
        assert "; hit" in await ask("GET", "/obj")                            # hit
        assert "hit" in await ask("GET", "/obj", 304, **{"If-None-Match": '"o1"'})  # 304
        assert "hit" in await ask("HEAD", "/obj")                             # HEAD hit
        assert "hit" in await ask("GET", "/obj", **{"If-None-Match": '"x"'})  # 200 hit
        first = await ask("GET", master)                                      # meta fetched
        assert "fwd=uri-miss" in first and "detail=rendered" in first
        assert "hit; detail=rendered" in await ask("GET", master)             # fresh meta
        assert "hit; detail=rendered" in await ask("GET", f"/v/{VIDEO}/360p/index.m3u8")
        for path in ("/reval", "/swr", "/sie"):
            assert "fwd=uri-miss" in await ask("GET", path)                   # misses
        await asyncio.sleep(1.6)  # every max-age=1 copy is stale now
        assert "fwd=stale; fwd-status=304" in await ask("GET", "/reval")      # revalidated
        again = await ask("GET", master)                                      # meta: 304
        assert "fwd=stale; fwd-status=304" in again and "detail=rendered" in again
        assert "detail=stale-while-revalidate" in await ask("GET", "/swr")    # stale
        origin.set("/sie", b"down", status=503)
        failed = await ask("GET", "/sie")                                     # stale (asked)
        assert "fwd-status=503" in failed and "detail=stale-if-error" in failed
        assert "hit; detail=stale-if-error" in await ask("GET", "/sie")       # stale (backoff)
        assert "fwd=method" in await ask("POST", "/obj")                      # pass
        assert "detail=bad-option" in await ask("GET", master + "?max_height=abc", 400)

        for _ in range(50):  # background revalidations are fills, not requests: let them end
            if not len(node.node.coalescer):
                break
            await asyncio.sleep(0.05)
        async with session.get(admin + "/metrics") as response:
            text = await response.text()
        async with session.get(admin + "/cache/stats") as response:
            stats = await response.json()

    expected = {"hit": 6, "miss": 5, "revalidated": 2, "stale": 3, "pass": 1, "error": 1}
    assert sum(expected.values()) == len(members) == 18, members
    seen = tally.by_depth[1].outcomes
    scraped = parse_metrics(text)
    assert seen == expected, members
    assert scraped.by_cache_status == expected
    assert parse_node_metrics(text).outcomes == expected
    assert stats["outcomes"] == expected
    ratio = hit_ratio(expected)
    assert ratio == 9 / 18
    assert hit_ratio(seen) == scraped.hit_ratio == stats["hit_ratio"] == ratio
    assert tally.by_depth[1].hits == scraped.hits == stats["hits"] == 9
