"""Trending → CDN pre-warm on a real three-tier topology (shield, regional, two edges on
127.0.0.1) with the origin service started from the same topology file: demo videos
published into the fs origin, plays posted through ``POST /api/v1/plays`` with the plays
token, a recompute, and the top videos' master, media playlist, init and first segments are
HITs at each edge on their first request — the edges' ``reelcdn_prewarmed_first_hits_total``
says so — while a video below the top is a MISS."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from feed_fixtures import video_id
from nodeproc import free_port
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reelcdn.edge.config import topology_from_text
from reelcdn.edge.ops.server import NodeServer
from reelcdn.manifests.meta import VideoMeta
from reelcdn.origin.config import services_from_topology
from reelcdn.origin.demo import LadderRung, synthesise_demo_videos
from reelcdn.origin.feed.api import FEED
from reelcdn.origin.feed.prewarm import prewarm_paths
from reelcdn.origin.service import OriginService
from reelcdn.shield.connectors import build_upstream

pytestmark = pytest.mark.slow

PLAYS_TOKEN = "prewarm-test-plays-token-0123"
RUNGS = (LadderRung("144p", 256, 144, 150_000, 48_000, "main"),
         LadderRung("240p", 426, 240, 300_000, 64_000, "main"))
NODES = ("shield-1", "regional-1", "edge-a", "edge-b")


def topology_text(root: Path, ports: dict[str, tuple[int, int]]) -> str:
    parents = {"regional-1": "shield-1", "edge-a": "regional-1", "edge-b": "regional-1"}
    roles = {"shield-1": "shield", "regional-1": "regional", "edge-a": "edge", "edge-b": "edge"}
    # The embedded default topology's TTL rules for media (immutable once written).
    text = f"""[[defaults.ttl]]
match = "*.m4s"
ttl = "1d"

[[defaults.ttl]]
match = "*/init.mp4"
ttl = "1d"

[origin.main]
type = "fs"
root = "{root}"
"""
    for name in NODES:
        listen, admin = ports[name]
        text += (f'\n[node.{name}]\nrole = "{roles[name]}"\nlisten = "127.0.0.1:{listen}"\n'
                 f'admin = "127.0.0.1:{admin}"\n')
        text += (f'parents = ["{parents[name]}"]\n' if name in parents
                 else 'origins = ["main"]\n')
    return text + f"""
[api]
listen = "127.0.0.1:0"
data_dir = "origin-service"
publish_to = "main"
key_file = "keys"
plays_token = "{PLAYS_TOKEN}"
prewarm_top = 2
prewarm_rungs = 1
prewarm_segments = 1
"""


@dataclass
class Cdn:
    service: OriginService
    api: str
    nodes: dict[str, NodeServer]
    videos: list[str]        # ready, in the catalog, published
    root: Path

    def edge(self, name: str) -> str:
        return f"http://127.0.0.1:{self.nodes[name].port}"

    def meta(self, video: str) -> VideoMeta:
        return VideoMeta.read(self.root / "v" / video / "meta.json")


@pytest.fixture
async def cdn(tmp_path: Path) -> AsyncIterator[Cdn]:
    root = tmp_path / "origin"
    synthesise_demo_videos(root, count=1, duration=4.0, renditions=RUNGS, log=lambda _: None)
    videos = []
    for _ in range(3):  # the demo video published under three catalog ids
        vid = video_id()
        shutil.copytree(root / "v" / "demo-1", root / "v" / vid)
        meta = VideoMeta.read(root / "v" / vid / "meta.json")
        meta.replace(video_id=vid).write(root / "v" / vid / "meta.json")
        videos.append(vid)
    (tmp_path / "keys").write_text("k1 " + "s" * 40 + "\n")
    ports = {name: (free_port(), free_port()) for name in NODES}
    topology = topology_from_text(topology_text(root, ports), base_dir=str(tmp_path))
    nodes: dict[str, NodeServer] = {}
    for name in NODES:  # parents first
        nodes[name] = NodeServer(topology.nodes[name], build_upstream)
        await nodes[name].start()
    config = services_from_topology(topology).service_config()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    service = OriginService(config)
    try:
        port, _ = await service.start("127.0.0.1", 0)
        for vid in videos:
            service.catalog.create(vid, "bob", {"title": vid})
            service.catalog.set_status(vid, "ready", duration=4.0,
                                       renditions=[r.name for r in RUNGS])
        yield Cdn(service, f"http://127.0.0.1:{port}", nodes, videos, root)
    finally:
        await service.stop()
        for node in reversed(list(nodes.values())):
            await node.stop()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        await resp.read()
        return resp.status, resp.headers.get("Cache-Status", "")


def last_member(cache_status: str) -> str:
    return cache_status.split(",")[-1].strip()


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, tuple], float]:
    async with http.get(url) as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_trending_videos_are_hits_at_every_edge_on_their_first_request(
        cdn: Cdn) -> None:
    top, second, below = cdn.videos
    feed = cdn.service.app[FEED]
    assert feed.prewarmer is not None
    async with aiohttp.ClientSession() as http:
        batch = {"batch": f"edge-a:{'1' * 32}", "node": "edge-a",
                 "plays": [{"video_id": top, "starts": 30}, {"video_id": second, "starts": 20},
                           {"video_id": below, "starts": 10}]}
        async with http.post(f"{cdn.api}/api/v1/plays", json=batch,
                             headers={"Authorization": f"Bearer {PLAYS_TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()
        await feed.refresh()  # the recompute; its prewarm runs in the background
        report = await feed.prewarmer.wait()
        assert report is not None and report["videos"] == [top, second], report
        assert all(answer["failed"] == 0 and answer["paths"] > 0
                   for answer in report["nodes"].values()), report
        # What a player asks first, at each edge: every one a HIT.
        for edge in ("edge-a", "edge-b"):
            for video in (top, second):
                meta = cdn.meta(video)
                lowest = min(meta.renditions, key=lambda r: r.bandwidth)
                rendition = f"/v/{video}/{lowest.name}"
                for path in (f"/v/{video}/master.m3u8", f"{rendition}/index.m3u8",
                             f"{rendition}/{lowest.init.uri}",
                             f"{rendition}/{lowest.segments[0].uri}"):
                    status, cache_status = await get(http, cdn.edge(edge) + path)
                    assert status == 200, (edge, path)
                    assert last_member(cache_status).startswith(f"{edge}; hit"), (
                        edge, path, cache_status)
        # A video below the top was not warmed: its first segment is a MISS at the edge.
        meta = cdn.meta(below)
        lowest = min(meta.renditions, key=lambda r: r.bandwidth)
        status, cache_status = await get(
            http, f"{cdn.edge('edge-a')}/v/{below}/{lowest.name}/{lowest.segments[0].uri}")
        assert status == 200 and "; hit" not in last_member(cache_status), cache_status
        # The edges' metric: the prewarmed objects' first requests were HITs (init and the
        # first segment of two videos), none missed.
        for edge in ("edge-a", "edge-b"):
            admin = f"http://127.0.0.1:{cdn.nodes[edge].admin_port}"
            values = await scrape(http, f"{admin}/metrics")
            labels = (("node", edge),)
            assert values[("reelcdn_prewarmed_first_hits_total", labels)] == 4, edge
            assert values[("reelcdn_prewarmed_first_misses_total", labels)] == 0, edge
            async with http.get(f"{admin}/cache/stats") as resp:
                stats = (await resp.json())["prewarmed"]
            assert stats["first_hit_ratio"] == 1.0, stats
        # The origin's side: one round done, paths warmed at each tier.
        text = generate_latest(cdn.service.metrics.registry).decode()
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}
        assert values[("reelcdn_origin_prewarm_rounds_total", (("result", "done"),))] == 1
        for tier in ("shield", "regional", "edge"):
            ok = values[("reelcdn_origin_prewarm_paths_total",
                         (("result", "ok"), ("tier", tier)))]
            assert ok > 0, tier
        # The next recompute warms nothing again (both are warm), and never a third.
        await feed.refresh()
        again = await feed.prewarmer.wait()
        assert again is not None and again["videos"] == []


def test_the_paths_of_a_video() -> None:
    from reelcdn.manifests.meta import InitSection, Rendition, Segment

    digest = "sha256:" + "ab" * 32

    def rung(name: str, bandwidth: int) -> Rendition:
        segs = tuple(Segment(f"seg_{i:05d}.m4s", 2.0, 1000, digest) for i in range(3))
        return Rendition(name=name, width=640, height=360, bandwidth=bandwidth,
                         average_bandwidth=bandwidth, codecs="avc1.4d401e,mp4a.40.2",
                         video_codec="avc1.4d401e", audio_codec="mp4a.40.2", frame_rate=30.0,
                         init=InitSection("init.mp4", 100, digest), segments=segs)

    meta = VideoMeta(video_id="v1", state="ready", duration=6.0, poster=None,
                     renditions=(rung("720p", 3_000_000), rung("360p", 800_000)),
                     created_at="2025-01-02T03:04:05Z")
    edge: Any = prewarm_paths("v1", meta, rungs=1, segments=2, renders=True)
    assert edge == ["/v/v1/master.m3u8", "/v/v1/720p/index.m3u8", "/v/v1/360p/index.m3u8",
                    "/v/v1/360p/init.mp4", "/v/v1/360p/seg_00000.m4s",
                    "/v/v1/360p/seg_00001.m4s"]
    assert prewarm_paths("v1", meta, rungs=2, segments=1, renders=False) == [
        "/v/v1/meta.json", "/v/v1/360p/init.mp4", "/v/v1/360p/seg_00000.m4s",
        "/v/v1/720p/init.mp4", "/v/v1/720p/seg_00000.m4s"]
