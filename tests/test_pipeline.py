"""Upload → queue → worker → published ladder → played through the CDN, on real parts.

The origin service runs on a loopback port and takes the upload from tuspy; the worker is a
real ``reelcdn worker`` process (one of them killed with SIGKILL mid-job); the published files
are served by a shield node with an ``fs`` origin and an edge in front of it; PyAV decodes what
the edge serves.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from media import make_clip
from nodeproc import free_port

from reelcdn.edge.config import topology_from_text
from reelcdn.edge.ops.server import NodeServer
from reelcdn.origin.demo import LadderRung
from reelcdn.origin.pipeline import TranscodeWorker, enqueue_on_upload
from reelcdn.origin.queue import SqliteQueue
from reelcdn.origin.service import OriginConfig, OriginService
from reelcdn.origin.storage import FsStore
from reelcdn.origin.transcode import Ladder
from reelcdn.origin.users import Keys, mint
from reelcdn.origin.videos import VideoCatalog
from reelcdn.shield.connectors import build_upstream

pytestmark = pytest.mark.slow

LADDER = Ladder(rungs=(
    LadderRung("180p", 320, 180, 250_000, 64_000, "main"),
    LadderRung("360p", 640, 360, 600_000, 96_000),
), preset="ultrafast")
KEY = ("k1", b"0" * 32)


def test_the_worker_publishes_and_the_catalog_follows(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "queue.sqlite")
    catalog = VideoCatalog(tmp_path / "videos.sqlite")
    hook = enqueue_on_upload(queue, catalog)
    clip = make_clip(tmp_path / "clip.mp4", seconds=4.0)
    poison = tmp_path / "poison.mp4"
    poison.write_bytes(random.Random(2026).randbytes(50_000))  # seeded: always "not media"
    catalog.create("GOODVIDEO", "ann", {"title": "a clip", "hashtags": "#cats #dogs"})
    hook("GOODVIDEO", clip, {"title": "a clip"}, "ann")
    hook("GOODVIDEO", clip, {"title": "a clip"}, "ann")  # a hook called twice queues once
    hook("BADVIDEO", poison, {}, "ann")
    assert queue.depth() == 2
    seen: list[tuple[str, str]] = []
    worker = TranscodeWorker(queue, FsStore(tmp_path / "origin"), catalog, ladder=LADDER,
                             workdir=tmp_path / "work",
                             on_published=lambda vid, meta: seen.append((vid, meta.state)))
    assert worker.run_one() and worker.run_one() and not worker.run_one()
    good = catalog.get("GOODVIDEO")
    assert good is not None and good["status"] == "ready"
    assert good["renditions"] == ["180p", "360p"] and good["hashtags"] == ["cats", "dogs"]
    assert seen == [("GOODVIDEO", "processing")]  # playable before the ladder was done
    times = catalog.publish_times()
    assert set(times) == {"180p", "360p"} and times["180p"][0] <= times["360p"][0]
    meta = json.loads((tmp_path / "origin/v/GOODVIDEO/meta.json").read_text())
    assert meta["state"] == "ready"
    bad = catalog.get("BADVIDEO")
    assert bad is not None and bad["status"] == "failed"
    assert "unreadable" in bad["error"] or "not a video" in bad["error"]
    assert queue.counts().get("dead", 0) == 0  # a bad source is not retried
    assert queue.depth() == 0


def _topology(origin_root: Path, shield: int, edge: int) -> str:
    return f"""
[origin.main]
type = "fs"
root = "{origin_root}"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:{shield}"
admin = "127.0.0.1:0"
origins = ["main"]

[node.edge-a]
role = "edge"
listen = "127.0.0.1:{edge}"
admin = "127.0.0.1:0"
parents = ["shield-1"]

[[node.edge-a.ttl]]
match = "*/meta.json"
ttl = "1s"

[[node.edge-a.ttl]]
match = "*.m3u8"
ttl = "1s"
"""


def _worker(data_dir: Path, origin_root: Path, lease: float) -> subprocess.Popen[bytes]:
    """A ``reelcdn worker`` sharing the service's SQLite queue and catalog (its data dir)."""
    config = data_dir.parent / "worker.toml"
    config.write_text(f"""
[origin.main]
type = "fs"
root = "{origin_root}"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:{free_port()}"
origins = ["main"]

[api]
data_dir = "{data_dir}"

[transcode]
lease = {lease}
""")
    return subprocess.Popen(
        [sys.executable, "-m", "reelcdn.cli", "worker", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _tus_upload(url: str, token: str, path: Path) -> str:
    from tusclient import client

    uploader = client.TusClient(url, headers={"Authorization": f"Bearer {token}"}).uploader(
        str(path), chunk_size=256 * 1024, metadata={"filename": path.name, "title": "e2e"}
    )
    uploader.upload()
    return uploader.url.rsplit("/", 1)[1]


async def _status(session: aiohttp.ClientSession, base: str, token: str,
                  video_id: str) -> dict[str, Any]:
    async with session.get(f"{base}/api/v1/videos/{video_id}",
                           headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        return await response.json()


async def _wait_status(session: aiohttp.ClientSession, base: str, token: str, video_id: str,
                       wanted: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = await _status(session, base, token, video_id)
        if state["status"] in wanted or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.2)


async def test_upload_to_playback_through_the_cdn(tmp_path: Path) -> None:
    """tus upload; the first worker is killed mid-job and a second finishes it after the
    lease runs out; the edge serves the master, media playlist and a segment that decodes."""
    data_dir, origin_root = tmp_path / "data", tmp_path / "origin"
    data_dir.mkdir()
    shield_port, edge_port = free_port(), free_port()
    topology = topology_from_text(_topology(origin_root, shield_port, edge_port),
                                  base_dir=str(tmp_path))
    nodes = [NodeServer(topology.nodes[name], build_upstream) for name in ("shield-1", "edge-a")]
    for node in nodes:
        await node.start()
    targets = tuple((n.node.name, f"http://127.0.0.1:{n.admin_port}", None) for n in nodes)
    service = OriginService(OriginConfig(data_dir=data_dir, keys=Keys({KEY[0]: KEY[1]}, KEY[0]),
                                         origin_root=origin_root, purge_targets=targets))
    port, _ = await service.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    token = mint("ann", KEY, 3600)
    clip = make_clip(tmp_path / "clip.mp4", size="1280x720", seconds=8.0)
    first = _worker(data_dir, origin_root, lease=3.0)
    second: subprocess.Popen[bytes] | None = None
    try:
        async with aiohttp.ClientSession() as session:
            video_id = await asyncio.to_thread(_tus_upload, f"{base}/api/v1/uploads", token,
                                               clip)
            # kill the first worker once it holds the job (its lease is 3 s)
            queue = SqliteQueue(data_dir / "queue.sqlite")
            deadline = time.monotonic() + 20
            while queue.counts().get("leased", 0) == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert queue.counts().get("leased", 0) == 1
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = _worker(data_dir, origin_root, lease=3.0)
            state = await _wait_status(session, base, token, video_id,
                                       {"processing", "ready", "failed"}, 60)
            while state["status"] == "processing" and "playback" not in state:
                state = await _wait_status(session, base, token, video_id, {"ready"}, 1)
            assert state["status"] in ("processing", "ready"), state
            edge = f"http://127.0.0.1:{edge_port}"
            async with session.get(edge + state["playback"]) as response:
                assert response.status == 200
                master = await response.text()
            rendition = next(line for line in master.splitlines()
                             if line and not line.startswith("#")).split("?")[0]
            media_url = f"{edge}/v/{video_id}/{rendition}"
            async with session.get(media_url) as response:
                assert response.status == 200
                playlist = await response.text()
            segment = next(line for line in playlist.splitlines() if line.endswith(".m4s"))
            rendition_base = media_url.rsplit("/", 1)[0]
            async with session.get(f"{rendition_base}/init.mp4") as response:
                init = await response.read()
            async with session.get(f"{rendition_base}/{segment}") as response:
                assert response.status == 200
                body = await response.read()
            with av.open(io.BytesIO(init + body)) as container:
                frames = sum(1 for _ in container.decode(video=0))
            assert frames > 0
            state = await _wait_status(session, base, token, video_id, {"ready", "failed"}, 90)
            assert state["status"] == "ready", state
            assert state["renditions"] == ["360p", "720p"]  # the default ladder, not upscaled
            job = queue.counts()
            assert job.get("done") == 1 and job.get("dead", 0) == 0
            queue.close()

            # DELETE: the objects go, every node purges its copies, the video answers 410.
            auth = {"Authorization": f"Bearer {token}"}
            async with session.delete(f"{base}/api/v1/videos/{video_id}",
                                      headers=auth) as response:
                assert response.status == 200
                deleted = await response.json()
            assert deleted["objects"] == 1 and not (origin_root / "v" / video_id).exists()
            assert deleted["purged"]["shield-1"] >= 1 and deleted["purged"]["edge-a"] >= 1
            async with session.get(f"{base}/api/v1/videos/{video_id}", headers=auth) as response:
                assert response.status == 410
            async with session.get(edge + state["playback"]) as response:
                assert response.status == 404
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for node in reversed(nodes):
            await node.stop(grace=1.0)
        await service.stop()


async def test_reelcdn_upload_client_sends_a_file_in_checksummed_chunks(
    tmp_path: Path,
) -> None:
    """``reelcdn upload``'s client: creation, checksummed PATCHes, the errors it reports."""
    from reelcdn.upload import UploadFailed, upload, wait_playable

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    service = OriginService(OriginConfig(data_dir=data_dir, keys=Keys({KEY[0]: KEY[1]}, KEY[0])))
    port, _ = await service.start("127.0.0.1", 0)
    api = f"http://127.0.0.1:{port}"
    token = mint("ann", KEY, 3600)
    source = tmp_path / "blob.mp4"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    try:
        video_id = await upload(source, api, token, title="t", chunk=1 << 20, progress=False)
        upload_row = service.store.get(video_id)
        assert upload_row is not None and upload_row.path.read_bytes() == source.read_bytes()
        # not a video: the worker would fail it; here nothing runs the job, so it waits
        with pytest.raises(UploadFailed, match="not playable"):
            await wait_playable(api, token, video_id, timeout=0.5)
        with pytest.raises(UploadFailed, match="401"):
            await upload(source, api, "bad-token", progress=False)
    finally:
        await service.stop()


async def test_listing_an_owners_videos_and_the_pipeline_metrics(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    service = OriginService(OriginConfig(data_dir=data_dir, keys=Keys({KEY[0]: KEY[1]}, KEY[0])))
    port, admin = await service.start("127.0.0.1", 0, "127.0.0.1", 0)
    api = f"http://127.0.0.1:{port}"
    catalog = service.catalog
    catalog.create("VIDREADY", "ann", {"title": "done"})
    catalog.set_status("VIDREADY", "ready", renditions=["360p"], duration=4.0)
    catalog.record_timings("VIDREADY", {"360p": 2.5, "720p": 9.0})
    catalog.create("VIDWIP", "ann", {"title": "wip"})
    service.queue.enqueue("VIDWIP", "transcode", {"source": "/nowhere"})
    ann = {"Authorization": f"Bearer {mint('ann', KEY, 3600)}"}
    bob = {"Authorization": f"Bearer {mint('bob', KEY, 3600)}"}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{api}/api/v1/videos", headers=ann) as response:
                mine = await response.json()
            assert [v["id"] for v in mine["items"]] == ["VIDWIP", "VIDREADY"]
            async with session.get(f"{api}/api/v1/videos?owner=ann", headers=bob) as response:
                theirs = await response.json()
            assert [v["id"] for v in theirs["items"]] == ["VIDREADY"]  # only ready ones
            assert theirs["items"][0]["playback"] == "/v/VIDREADY/master.m3u8"
            async with session.get(f"{api}/api/v1/videos?owner=a/b", headers=ann) as response:
                assert response.status == 400
            async with session.get(f"{api}/api/v1/videos?limit=0", headers=ann) as response:
                assert response.status == 400
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
                text = await response.text()
            assert 'reelcdn_origin_jobs{state="pending"} 1.0' in text
            assert "reelcdn_origin_queue_depth 1.0" in text
            assert 'reelcdn_origin_videos{status="ready"} 1.0' in text
            # What the workers recorded in the catalog, as a histogram by rendition.
            name = "reelcdn_origin_rendition_publish_seconds"
            assert f'{name}_bucket{{le="2.0",rendition="360p"}} 0.0' in text
            assert f'{name}_bucket{{le="3.0",rendition="360p"}} 1.0' in text
            assert f'{name}_bucket{{le="5.0",rendition="720p"}} 0.0' in text
            assert f'{name}_bucket{{le="10.0",rendition="720p"}} 1.0' in text
            assert f'{name}_count{{rendition="720p"}} 1.0' in text
            assert f'{name}_sum{{rendition="360p"}} 2.5' in text
    finally:
        await service.stop()


async def test_a_video_being_processed_cannot_be_deleted_a_failed_one_can(
    tmp_path: Path,
) -> None:
    from reelcdn.upload import upload

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    service = OriginService(OriginConfig(data_dir=data_dir, keys=Keys({KEY[0]: KEY[1]}, KEY[0])))
    port, _ = await service.start("127.0.0.1", 0)
    api = f"http://127.0.0.1:{port}"
    ann = {"Authorization": f"Bearer {mint('ann', KEY, 3600)}"}
    bob = {"Authorization": f"Bearer {mint('bob', KEY, 3600)}"}
    source = tmp_path / "x.mp4"
    source.write_bytes(os.urandom(10_000))
    try:
        video_id = await upload(source, api, mint("ann", KEY, 3600), progress=False)
        url = f"{api}/api/v1/videos/{video_id}"
        async with aiohttp.ClientSession() as session:
            async with session.delete(url, headers=ann) as response:
                assert response.status == 409  # queued: a worker would publish it again
                assert (await response.json())["error"] == "processing"
            service.catalog.set_status(video_id, "failed", error="not a video")
            async with session.delete(url, headers=bob) as response:
                assert response.status == 403
            async with session.delete(url, headers=ann) as response:
                assert response.status == 200
                assert (await response.json())["purged"] == {}
            async with session.get(url, headers=ann) as response:
                assert response.status == 410
    finally:
        await service.stop()
