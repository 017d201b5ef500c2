"""A small real topology for the load-harness tests: a counting HTTP origin (in a thread) with
synthetic HLS videos, and shield → regional → two edges run by ``reelcdn up --config``.

Why synthetic videos: the harness never decodes, so random bytes of known sizes in the HLS
layout test everything it does, and take milliseconds to make where ffmpeg takes tens of
seconds. Why an HTTP origin of our own: it counts requests per path, which is how the tests
prove one origin fetch per object, and it can fail on purpose (``/v/broken/``: 503).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

from reelcdn.loadtest.bench.procs import free_ports
from reelcdn.manifests.meta import (
    InitSection,
    Rendition,
    Segment,
    VideoMeta,
    average_bandwidth,
    peak_bandwidth,
)

VIDEOS = ("vid-1", "vid-2", "vid-3", "vid-4")
RENDITIONS = (("low", 400_000), ("high", 1_600_000))
SEGMENTS = 4
SEGMENT_SECONDS = 2.0
TOKEN = "loadtest-test-token-0123456789"


def segment_size(video: int, rendition: int, index: int) -> int:
    """Known sizes: about BANDWIDTH × 2 s / 8, varied a little."""
    bandwidth = RENDITIONS[rendition][1]
    return int(bandwidth * SEGMENT_SECONDS / 8 * (0.8 + 0.05 * ((video + index) % 4)))


def make_videos(root: Path, videos: tuple[str, ...] = VIDEOS) -> None:
    for v, video in enumerate(videos):
        base = root / "v" / video
        master = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
        renditions = []
        for r, (name, bandwidth) in enumerate(RENDITIONS):
            master += [f"#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"avc1.4d401e\"",
                       f"{name}/index.m3u8"]
            media = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2",
                     "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD",
                     '#EXT-X-MAP:URI="init.mp4"']
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            init = os.urandom(1200)
            (folder / "init.mp4").write_bytes(init)
            segments = []
            for i in range(SEGMENTS):
                media += [f"#EXTINF:{SEGMENT_SECONDS:.6f},", f"seg_{i:05d}.m4s"]
                body = os.urandom(segment_size(v, r, i))
                (folder / f"seg_{i:05d}.m4s").write_bytes(body)
                segments.append(Segment(f"seg_{i:05d}.m4s", SEGMENT_SECONDS, len(body),
                                        _digest(body)))
            media.append("#EXT-X-ENDLIST")
            (folder / "index.m3u8").write_text("\n".join(media) + "\n")
            height = 360 if r == 0 else 720
            renditions.append(Rendition(
                name=name, width=height * 16 // 9, height=height,
                bandwidth=peak_bandwidth(segments), average_bandwidth=average_bandwidth(segments),
                codecs="avc1.4d401e", video_codec="avc1.4d401e", audio_codec=None,
                frame_rate=30.0, init=InitSection("init.mp4", len(init), _digest(init)),
                segments=tuple(segments)))
        (base / "master.m3u8").write_text("\n".join(master) + "\n")
        # The same video as a meta.json, for edges that render its playlists.
        meta = VideoMeta(video_id=video, state="ready", duration=SEGMENTS * SEGMENT_SECONDS,
                         renditions=tuple(renditions), created_at="2026-01-01T00:00:00Z")
        (base / "meta.json").write_text(meta.to_json())


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


class CountingOrigin:
    """Serves files under ``root`` on 127.0.0.1 from its own thread and event loop; counts
    requests per path; answers 503 under ``/v/broken/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counts[request.path] += 1
        if request.path.startswith("/v/broken/"):
            return web.Response(status=503, text="origin down\n")
        file = (self.root / request.path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            return web.Response(status=404, text="not found\n")
        kind = {".m3u8": "application/vnd.apple.mpegurl",
                ".json": "application/json"}.get(file.suffix, "video/mp4")
        return web.Response(body=file.read_bytes(), content_type=kind,
                            headers={"Cache-Control": "max-age=86400"})

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test origin did not start")

    def stop(self) -> None:
        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)



TOPOLOGY = """
[defaults]
cache_memory = "64MiB"
admin_token = "{token}"
{features}
[[defaults.ttl]]
match = "*"
ttl = "1d"

[origin.main]
type = "http"
url = "http://127.0.0.1:{origin}"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:{shield}"
admin = "127.0.0.1:{shield_admin}"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "127.0.0.1:{regional}"
admin = "127.0.0.1:{regional_admin}"
parents = ["shield-1"]

[node.edge-a]
role = "edge"
listen = "127.0.0.1:{edge_a}"
admin = "127.0.0.1:{edge_a_admin}"
parents = ["regional-1"]

[node.edge-b]
role = "edge"
listen = "127.0.0.1:{edge_b}"
admin = "127.0.0.1:{edge_b_admin}"
parents = ["regional-1"]
"""


# The accounting tests compare what players see (Cache-Status) with every tier's counters, so
# no node may send upstream requests no player sees: no edge prefetch, no meta.json fetches.
NO_EDGE_FEATURES = """render_playlists = false
prefetch_segments = 0
prefetch_cmcd = false
"""
# What reelcdn up's edges do: playlists rendered from meta.json, segments prefetched.
EDGE_FEATURES = """prefetch_segments = 2
prefetch_cmcd = true
"""


class Topology:
    """``reelcdn up --config`` over the counting origin; stopped by :meth:`stop`.
    ``edge_features``: edges render playlists from meta.json and prefetch (as reelcdn up's
    do), so tiers above the edges get requests no player's response shows."""

    def __init__(self, workdir: Path, edge_features: bool = False) -> None:
        self.features = EDGE_FEATURES if edge_features else NO_EDGE_FEATURES
        self.workdir = workdir
        self.origin_root = workdir / "origin"
        make_videos(self.origin_root)
        self.origin = CountingOrigin(self.origin_root)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "up.log"

    def start(self) -> None:
        self.origin.start()
        names = ("shield", "shield_admin", "regional", "regional_admin", "edge_a",
                 "edge_a_admin", "edge_b", "edge_b_admin")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.config = self.workdir / "topology.toml"
        self.config.write_text(TOPOLOGY.format(token=TOKEN, origin=self.origin.port,
                                               features=self.features, **self.ports))
        self.catalog = self.workdir / "catalog.txt"
        self.catalog.write_text("# test catalog\n" + "\n".join(VIDEOS) + "\n")
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reelcdn.cli", "up", "--config", str(self.config),
                 "--data-dir", str(self.workdir / "data"), "--no-demo"],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "reelcdn is up" in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        text = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"reelcdn up did not come up:\n{text}")

    def edge(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.origin.stop()
