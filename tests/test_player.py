"""Rendered playlists against real players, through a running 3-tier topology over ffmpeg
demo videos: PyAV (ffmpeg's HLS demuxer) opens and decodes them, and hls.js plays them in
headless Debian Chromium, with each filter option.

Chromium comes from apt and hls.js + playwright-core from tests/player/package.json
(scripts/test.sh installs both). Without them the hls.js tests skip with the reason, except in
CI (``CI`` set), where a missing browser is a failure: CI must really play the video.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import av
import m3u8
import pytest
from aiohttp import web
from player.demo_tiers import VIDEO, DemoTiers, synthesise
from rawhttp import get

# Chromium (hls.js) and PyAV play rendered playlists through real tiers.
pytestmark = pytest.mark.slow

PLAYER_DIR = Path(__file__).parent / "player"
HLS_JS = PLAYER_DIR / "node_modules" / "hls.js" / "dist" / "hls.min.js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

# Query → the variant heights the master must list, in order.
FILTERS: dict[str, list[int]] = {
    "": [360, 720],
    "max_height=360": [360],
    "max_bandwidth=1500000": [360],
    "codecs=avc1.64001f,mp4a": [720],
    "start=highest": [720, 360],
}


@pytest.fixture(scope="module")
def origin_root(tmp_path_factory) -> Path:
    return synthesise(tmp_path_factory.mktemp("player"))


@pytest.fixture
async def tiers(origin_root):
    tiers = await DemoTiers(origin_root, carried_query_params=["token"]).start()
    yield tiers
    await tiers.stop()


def decode_with_pyav(url: str) -> tuple[int, float, int]:
    """(video frames decoded, seconds of video, height) of an HLS URL, read by ffmpeg."""
    frames = 0
    last = 0.0
    height = 0
    with av.open(url, timeout=10.0) as container:
        stream = container.streams.video[0]
        height = stream.codec_context.height
        for frame in container.decode(stream):
            frames += 1
            last = float(frame.time or 0.0)
    return frames, last, height


async def test_pyav_decodes_rendered_playlists_with_each_filter(tiers):
    for query, heights in FILTERS.items():
        master = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?{query}&token=t0k")
        assert master.status == 200, query
        listed = [p.stream_info.resolution[1] for p in m3u8.loads(master.body.decode()).playlists]
        assert listed == heights, query
        # ffmpeg's HLS demuxer follows the master (with the token on every URI) and picks a
        # variant; open the first listed one explicitly too, the one players start on.
        url = f"{tiers.base()}/v/{VIDEO}/master.m3u8?{query}&token=t0k"
        frames, seconds, _ = await asyncio.to_thread(decode_with_pyav, url)
        assert frames >= 150 and seconds > 5.0, (query, frames, seconds)
        first = m3u8.loads(master.body.decode()).playlists[0].uri
        assert first.endswith("?token=t0k")
        media_url = f"{tiers.base()}/v/{VIDEO}/{first}"
        frames, seconds, height = await asyncio.to_thread(decode_with_pyav, media_url)
        assert height == heights[0] and frames >= 150, (query, height, frames)


def chromium_or_skip() -> None:
    missing = [what for what, ok in (
        (f"chromium ({CHROMIUM})", Path(CHROMIUM).exists()),
        ("tests/player/node_modules (npm install in tests/player)", HLS_JS.exists()),
        ("node", shutil.which("node") is not None),
    ) if not ok]
    if not missing:
        return
    reason = "hls.js player test needs " + ", ".join(missing) + " (scripts/test.sh installs them)"
    if os.environ.get("CI"):
        pytest.fail(reason + "; in CI the browser test must run")
    pytest.skip(reason)


async def play_in_chromium(page_url: str, timeout_ms: int = 20000) -> dict:
    process = await asyncio.create_subprocess_exec(
        "node", str(PLAYER_DIR / "play.js"), page_url, str(timeout_ms),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_ms / 1000 + 30)
    assert process.returncode == 0, stderr.decode()[-2000:]
    return json.loads(stdout)


async def test_hlsjs_plays_rendered_master_in_chromium_with_each_filter(tiers):
    chromium_or_skip()
    for query, heights in FILTERS.items():
        src = f"/v/{VIDEO}/master.m3u8?{query}&token=t0k"
        page = f"{tiers.base()}/player/page.html?src={quote(src, safe='')}"
        result = await play_in_chromium(page)
        assert result["supported"], result
        assert result["manifestParsed"], (query, result)
        # hls.js sorts its levels by bitrate; firstLevel is the variant the master lists first.
        assert sorted(level["height"] for level in result["levels"]) == sorted(heights), result
        assert result["levels"][result["firstLevel"]]["height"] == heights[0], (query, result)
        assert result["fragsBuffered"] >= 1 and result["playing"], (query, result)
        assert result["currentTime"] > 1.0, (query, result)
        assert not [e for e in result["errors"] if "fatal" in e], (query, result["errors"])
        # Every fragment hls.js asked for carried the token, through rendered playlists.
        assert result["urls"] and all(u.endswith("token=t0k") for u in result["urls"]), result
    stats = tiers.edge.node.stats
    assert stats.playlists_rendered >= 2 * len(FILTERS)


async def test_hlsjs_plays_an_uploaded_video_while_processing_and_once_ready(tmp_path):
    """A creator's upload through the origin API, a transcoding worker, three tiers and
    hls.js: the master lists the lowest rendition alone while the others encode (the worker
    is held right after its first publish while the browser plays), then the full ladder."""
    import threading

    from media import make_clip

    from reelcdn.origin.pipeline import TranscodeWorker
    from reelcdn.origin.service import OriginConfig, OriginService
    from reelcdn.origin.storage import FsStore
    from reelcdn.origin.users import Keys, mint
    from reelcdn.upload import upload

    chromium_or_skip()
    root, data = tmp_path / "origin", tmp_path / "data"
    root.mkdir()
    data.mkdir()
    key = ("k1", b"k" * 32)
    service = OriginService(OriginConfig(data_dir=data, keys=Keys({key[0]: key[1]}, key[0])))
    port, _ = await service.start("127.0.0.1", 0)
    tiers = await DemoTiers(root, meta_ttl="1s").start()
    published, resume = threading.Event(), threading.Event()

    def hold(video_id: str, meta) -> None:
        published.set()
        resume.wait(60)  # the browser plays the processing video meanwhile

    worker = TranscodeWorker(service.queue, FsStore(root), service.catalog,
                             workdir=tmp_path / "work", on_published=hold)
    clip = make_clip(tmp_path / "clip.mp4", size="1280x720", seconds=6.0)
    try:
        video_id = await upload(clip, f"http://127.0.0.1:{port}", mint("ann", key, 600),
                                progress=False)
        running = asyncio.ensure_future(asyncio.to_thread(worker.run_one))
        assert await asyncio.to_thread(published.wait, 60)
        page = f"{tiers.base()}/player/page.html?src=" + quote(
            f"/v/{video_id}/master.m3u8", safe="")
        early = await play_in_chromium(page)
        assert early["manifestParsed"] and early["playing"], early
        assert [level["height"] for level in early["levels"]] == [360], early
        resume.set()
        assert await running
        assert service.catalog.get(video_id)["status"] == "ready"
        await asyncio.sleep(2.5)  # meta.json's 1 s TTL at each tier
        ready = await play_in_chromium(page)
        assert ready["manifestParsed"] and ready["playing"], ready
        assert sorted(level["height"] for level in ready["levels"]) == [360, 720], ready
        assert not [e for e in ready["errors"] if "fatal" in e], ready["errors"]
    finally:
        resume.set()
        await tiers.stop()
        await service.stop()


async def test_hlsjs_plays_a_video_to_its_end_while_it_is_still_being_encoded(tmp_path):
    """The browser starts at the first published segment and plays on while ffmpeg adds the
    rest (an EVENT playlist it reloads), to the end once the video is ready: no fatal error,
    every segment of the lowest rendition fetched in order."""
    import threading

    from media import make_clip

    from reelcdn.manifests.meta import VideoMeta
    from reelcdn.origin.storage import FsStore
    from reelcdn.origin.transcode import Ladder, transcode

    chromium_or_skip()
    root = tmp_path / "origin"
    root.mkdir()
    clip = make_clip(tmp_path / "clip.mp4", size="1280x720", seconds=12.0)
    tiers = await DemoTiers(root, meta_ttl="1s").start()
    first: list[VideoMeta] = []
    published = threading.Event()

    def on_publish(meta: VideoMeta) -> None:
        first.append(meta)
        published.set()

    encoding = asyncio.ensure_future(asyncio.to_thread(
        transcode, clip, "growing", FsStore(root), Ladder(), workdir=tmp_path / "work",
        on_publish=on_publish))
    try:
        assert await asyncio.to_thread(published.wait, 120)
        assert first[0].state == "processing"
        listed_at_start = len(first[0].renditions[0].segments)
        src = quote("/v/growing/master.m3u8", safe="")
        result = await play_in_chromium(
            f"{tiers.base()}/player/page.html?src={src}&until=1000", timeout_ms=90000)
        final = (await encoding).meta
        assert result["ended"], result
        assert not [e for e in result["errors"] if "fatal" in e], result["errors"]
        lowest = final.renditions[0]
        fetched = [u.rsplit("/", 1)[1] for u in result["urls"] if "/seg_" in u]
        assert fetched == [s.uri for s in lowest.segments], (
            fetched, listed_at_start, result["levels"], result["probes"])
        assert listed_at_start < len(lowest.segments)  # it really grew under the player
    finally:
        await tiers.stop()
        if not encoding.done():
            await asyncio.wait([encoding], timeout=120)


async def test_hlsjs_starts_a_processing_video_at_its_beginning(tmp_path):
    """A video still transcoding is an EVENT playlist without ENDLIST, which players treat as
    live and would join near its end (hls.js: three target durations back); the rendered
    playlist's EXT-X-START:TIME-OFFSET=0 makes them start at the first segment."""
    from reelcdn.manifests.meta import VideoMeta

    chromium_or_skip()
    root = synthesise(tmp_path / "origin", duration=16.0)
    path = root / "v" / VIDEO / "meta.json"
    ready = VideoMeta.read(path)
    ready.replace(state="processing", renditions=ready.renditions[:1]).write(path)
    (root / "v" / VIDEO / ".headers" / "meta.json").write_text("Cache-Control: max-age=2\n")
    tiers = await DemoTiers(root).start()
    try:
        media = await get(tiers.port, f"/v/{VIDEO}/{ready.renditions[0].name}/index.m3u8")
        assert "#EXT-X-START:TIME-OFFSET=0\n" in media.body.decode()
        assert "#EXT-X-ENDLIST" not in media.body.decode()
        src = quote(f"/v/{VIDEO}/master.m3u8", safe="")
        result = await play_in_chromium(f"{tiers.base()}/player/page.html?src={src}")
        assert result["playing"], result
        media_urls = [u for u in result["urls"] if not u.endswith("/init.mp4")]
        assert media_urls[0].endswith("/seg_00000.m4s"), result["urls"]
    finally:
        await tiers.stop()


async def test_tus_js_client_uploads_from_a_browser(tmp_path):
    """tus-js-client in Chromium, from a page of another origin (CORS), in 256 KiB chunks:
    the origin API keeps every byte and queues the video."""
    import hashlib

    from reelcdn.origin.service import OriginConfig, OriginService
    from reelcdn.origin.users import Keys, mint

    chromium_or_skip()
    if not (PLAYER_DIR / "node_modules" / "tus-js-client").exists():
        pytest.fail("tests/player/node_modules lacks tus-js-client (npm ci in tests/player)")
    key = ("k1", b"k" * 32)
    service = OriginService(OriginConfig(data_dir=tmp_path, keys=Keys({key[0]: key[1]}, key[0])))
    port, _ = await service.start("127.0.0.1", 0)
    source = tmp_path / "clip.mp4"
    source.write_bytes(os.urandom(1024 * 1024 + 333))
    # The creator's page: another origin than the API's (another port), on loopback too.
    tus_js = PLAYER_DIR / "node_modules" / "tus-js-client" / "dist" / "tus.min.js"
    async def page(request: web.Request) -> web.Response:
        return web.Response(text='<!doctype html><script src="/tus.min.js"></script>',
                            content_type="text/html")

    async def script(request: web.Request) -> web.FileResponse:
        return web.FileResponse(tus_js)

    page_app = web.Application()
    page_app.router.add_get("/", page)
    page_app.router.add_get("/tus.min.js", script)
    page_runner = web.AppRunner(page_app, access_log=None)
    await page_runner.setup()
    page_site = web.TCPSite(page_runner, "127.0.0.1", 0)
    await page_site.start()
    page_port = next(a for a in page_runner.addresses if isinstance(a, tuple))[1]
    try:
        process = await asyncio.create_subprocess_exec(
            "node", str(PLAYER_DIR / "upload.js"), f"http://127.0.0.1:{page_port}/",
            f"http://127.0.0.1:{port}/api/v1/uploads", mint("ann", key, 600), str(source),
            "30000",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()[-2000:]
        result = json.loads(stdout)
        assert "error" not in result, result
        video_id = result["url"].rsplit("/", 1)[1]
        assert result["progress"][-1] == [source.stat().st_size] * 2
        upload = service.store.get(video_id)
        assert upload is not None and upload.state == "uploaded" and upload.owner == "ann"
        assert hashlib.sha256(upload.path.read_bytes()).digest() == hashlib.sha256(
            source.read_bytes()).digest()
        assert upload.metadata["title"] == "from a browser"
        assert service.catalog.get(video_id)["status"] == "processing"
    finally:
        await page_runner.cleanup()
        await service.stop()
