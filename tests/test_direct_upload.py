"""Direct-to-bucket uploads against moto's S3 server: presigned part URLs from the origin, the
parts PUT by aiohttp over real HTTP, the completion, and a worker that downloads the source
from the bucket and publishes a ready ladder; every refusal on the way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from media import make_clip
from s3server import s3_endpoint  # noqa: F401  (a fixture)

from reelcdn.origin.demo import LadderRung
from reelcdn.origin.direct import s3_client
from reelcdn.origin.pipeline import TranscodeWorker
from reelcdn.origin.queue import SqliteQueue
from reelcdn.origin.service import OriginConfig, OriginService
from reelcdn.origin.storage import FsStore
from reelcdn.origin.transcode import Ladder
from reelcdn.origin.users import Keys, mint
from reelcdn.origin.videos import VideoCatalog

pytestmark = pytest.mark.slow

KEYS = Keys({"k1": b"s" * 40}, "k1")
MiB = 1 << 20
LADDER = Ladder(rungs=(LadderRung("180p", 320, 180, 250_000, 64_000, "main"),),
                preset="ultrafast")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Origin:
    def __init__(self, service: OriginService, port: int, clock: Clock, bucket: str,
                 endpoint: str) -> None:
        self.service = service
        self.url = f"http://127.0.0.1:{port}"
        self.clock = clock
        self.bucket = bucket
        self.endpoint = endpoint
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def auth(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(user, KEYS, 3600, now=self.clock.now)}"}


@pytest.fixture
def bucket(s3_endpoint: str) -> str:  # noqa: F811  (the imported fixture)
    name = f"direct-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=name)
    return name


async def _start(tmp_path: Path, clock: Clock, **config: Any) -> tuple[OriginService, int]:
    settings: dict[str, Any] = {"max_size": 64 * MiB, "upload_ttl": 600,
                                "uploads_per_window": 20, "rate_window": 60, **config}
    service = OriginService(OriginConfig(data_dir=tmp_path / "data", keys=KEYS, **settings),
                            clock=clock)
    port, _ = await service.start("127.0.0.1", 0)
    return service, port


@pytest.fixture
async def origin(tmp_path: Path, s3_endpoint: str,  # noqa: F811
                 bucket: str) -> AsyncIterator[Origin]:
    clock = Clock()
    service, port = await _start(tmp_path, clock, s3_bucket=bucket, s3_prefix="sources",
                                 s3_endpoint_url=s3_endpoint, s3_region="us-east-1",
                                 s3_part_size=5 * MiB)
    yield Origin(service, port, clock, bucket, s3_endpoint)
    await service.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def create(http: aiohttp.ClientSession, origin: Origin, size: int, user: str = "alice",
                 **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"size": size, "filename": "clip.mp4", "content_type": "video/mp4", **fields}
    async with http.post(f"{origin.url}/api/v1/videos", json=body,
                         headers=origin.auth(user)) as response:
        return response.status, await response.json()


async def put_parts(http: aiohttp.ClientSession, created: dict[str, Any],
                    data: bytes) -> list[dict[str, Any]]:
    """PUT each part to its presigned URL, as a browser or a mobile app would."""
    done = []
    size = created["part_size"]
    for part in created["parts"]:
        n = part["part_number"]
        async with http.put(part["url"], data=data[(n - 1) * size:n * size]) as response:
            assert response.status == 200, await response.text()
            done.append({"part_number": n, "etag": response.headers["ETag"]})
    return done


async def complete(http: aiohttp.ClientSession, origin: Origin, video_id: str,
                   parts: Any, user: str = "alice") -> tuple[int, dict[str, Any]]:
    async with http.post(f"{origin.url}/api/v1/videos/{video_id}/complete",
                         json={"parts": parts}, headers=origin.auth(user)) as response:
        return response.status, await response.json()


async def get_video(http: aiohttp.ClientSession, origin: Origin, video_id: str,
                    user: str = "alice") -> tuple[int, dict[str, Any]]:
    async with http.get(f"{origin.url}/api/v1/videos/{video_id}",
                        headers=origin.auth(user)) as response:
        return response.status, await response.json()


async def test_parts_to_the_bucket_then_a_ready_video(
        origin: Origin, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    # Noise, losslessly encoded: 13 MB for 2 s, three parts of S3's smallest size.
    clip = make_clip(tmp_path / "clip.mp4", size="480x270", seconds=2.0,
                     extra=["-vf", "noise=alls=80:allf=t+u", "-qp", "0"])
    data = clip.read_bytes()
    assert 10 * MiB < len(data) <= 15 * MiB
    status, created = await create(http, origin, len(data), title="noise",
                                   hashtags="#tv #static")
    assert status == 201, created
    video_id = created["id"]
    assert len(video_id) == 26 and created["upload_id"] == video_id
    assert created["part_size"] == 5 * MiB and len(created["parts"]) == 3
    assert created["complete"] == f"/api/v1/videos/{video_id}/complete"
    assert created["expires_in"] == 600
    assert all(origin.endpoint in p["url"] and "X-Amz-Signature" in p["url"]
               for p in created["parts"])
    status, state = await get_video(http, origin, video_id)
    assert status == 200 and state["status"] == "uploading"
    assert state["upload"]["state"] == "uploading" and state["upload"]["direct"] is True

    parts = await put_parts(http, created, data)
    status, done = await complete(http, origin, video_id, parts)
    assert status == 200, done
    assert done["status"] == "processing" and done["size"] == len(data)
    key = f"sources/{video_id}/source"
    head = origin.s3.head_object(Bucket=origin.bucket, Key=key)
    assert head["ContentLength"] == len(data) and head["ContentType"] == "video/mp4"
    status, again = await complete(http, origin, video_id, parts)
    assert status == 409 and again["error"] == "already_completed"

    # A worker of its own, as ``reelcdn worker`` opens the queue and the catalog.
    data_dir = tmp_path / "data"
    queue, catalog = SqliteQueue(data_dir / "queue.sqlite"), VideoCatalog(data_dir /
                                                                          "videos.sqlite")
    with contextlib.closing(sqlite3.connect(data_dir / "queue.sqlite")) as peek:
        payloads = [json.loads(row[0]) for row in peek.execute("SELECT payload FROM jobs")]
    assert payloads == [{"source_s3": {"bucket": origin.bucket, "key": key}}]
    workdir = tmp_path / "work"
    worker = TranscodeWorker(queue, FsStore(tmp_path / "published"), catalog, ladder=LADDER,
                             workdir=workdir, s3_client=s3_client(origin.endpoint, "us-east-1"),
                             s3_buckets=(origin.bucket,))
    assert await asyncio.to_thread(worker.run_one)
    row = catalog.get(video_id)
    assert row is not None and row["status"] == "ready", row
    assert row["renditions"] == ["180p"] and row["title"] == "noise"
    assert row["hashtags"] == ["tv", "static"]
    meta = json.loads((tmp_path / "published" / "v" / video_id / "meta.json").read_text())
    assert meta["state"] == "ready"
    assert list(workdir.iterdir()) == []  # the downloaded source is gone
    status, state = await get_video(http, origin, video_id)
    assert status == 200 and state["status"] == "ready"
    assert state["playback"] == f"/v/{video_id}/master.m3u8"
    assert state["upload"]["state"] == "uploaded"
    queue.close()
    catalog.close()


async def test_refusals(origin: Origin, http: aiohttp.ClientSession) -> None:
    url = f"{origin.url}/api/v1/videos"
    async with http.post(url, json={"size": 10}) as response:
        assert response.status == 401
    async with http.post(url, data=b"{not json", headers=origin.auth()) as response:
        assert response.status == 400 and (await response.json())["error"] == "bad_json"
    for fields, code in (({"size": "10"}, "bad_size"), ({"size": 0}, "bad_size"),
                         ({"size": 10, "filename": ""}, "bad_filename"),
                         ({"size": 10, "content_type": "mp4"}, "bad_content_type"),
                         ({"size": 10, "title": 7}, "bad_title")):
        status, body = await create(http, origin, **fields)  # type: ignore[arg-type]
        assert (status, body["error"]) == (400, code), fields
    status, body = await create(http, origin, 64 * MiB + 1)
    assert status == 413 and body["error"] == "too_large"

    # A short part: the parts do not add up to the size; the upload stays open.
    status, created = await create(http, origin, 1000)
    assert status == 201 and len(created["parts"]) == 1
    video_id = created["id"]
    short = await put_parts(http, created, b"x" * 900)
    status, body = await complete(http, origin, video_id, short)
    assert status == 400 and body["error"] == "size_mismatch", body
    # A wrong ETag: S3 refuses the part, and says why.
    status, body = await complete(http, origin, video_id,
                                  [{"part_number": 1, "etag": '"0123456789abcdef"'}])
    assert status == 400 and body["error"] == "InvalidPart", body
    assert "part" in body["detail"].lower()
    for parts in ([], [{"part_number": 0, "etag": "x"}], "all", [{"etag": "x"}]):
        status, body = await complete(http, origin, video_id, parts)
        assert (status, body["error"]) == (400, "bad_parts"), parts
    # Only the owner may complete it, or see it.
    status, body = await complete(http, origin, video_id, short, user="mallory")
    assert status == 403 and body["error"] == "not_owner"
    assert (await get_video(http, origin, video_id, user="mallory"))[0] == 403
    # Unknown ids.
    assert (await complete(http, origin, "a" * 26, short))[0] == 404
    assert (await complete(http, origin, "nope", short))[0] == 404
    # The whole part this time: complete, then 409.
    whole = await put_parts(http, created, b"y" * 1000)
    assert (await complete(http, origin, video_id, whole))[0] == 200
    status, body = await complete(http, origin, video_id, whole)
    assert status == 409 and body["error"] == "already_completed"

    # A part missing of two: refused before S3 completes anything.
    status, created = await create(http, origin, 5 * MiB + 10)
    assert status == 201 and len(created["parts"]) == 2
    first = created["parts"][0]
    async with http.put(first["url"], data=b"z" * (5 * MiB)) as response:
        etag = response.headers["ETag"]
    status, body = await complete(http, origin, created["id"],
                                  [{"part_number": 1, "etag": etag}])
    assert status == 400 and body["error"] == "size_mismatch"
    status, body = await complete(http, origin, created["id"],
                                  [{"part_number": 1, "etag": etag},
                                   {"part_number": 2, "etag": etag}])
    assert status == 400 and body["error"] == "InvalidPart", body


async def test_rate_limit_expiry_and_delete(origin: Origin, http: aiohttp.ClientSession) -> None:
    status, created = await create(http, origin, 100)
    video_id = created["id"]
    parts = await put_parts(http, created, b"a" * 100)
    status, other = await create(http, origin, 100)
    # DELETE while uploading aborts the multipart upload.
    async with http.delete(f"{origin.url}/api/v1/videos/{other['id']}",
                           headers=origin.auth()) as response:
        assert response.status == 200, await response.text()
    assert (await get_video(http, origin, other["id"]))[0] == 410
    open_uploads = origin.s3.list_multipart_uploads(Bucket=origin.bucket).get("Uploads", [])
    assert other["id"] not in {u["Key"].split("/")[1] for u in open_uploads}
    # Past its time: 410, and the sweep aborts it in S3.
    origin.clock.now += 601
    status, body = await complete(http, origin, video_id, parts)
    assert status == 410 and body["error"] == "upload_gone"
    assert await asyncio.to_thread(origin.service.sweep_direct) == [video_id]
    open_uploads = origin.s3.list_multipart_uploads(Bucket=origin.bucket).get("Uploads", [])
    assert video_id not in {u["Key"].split("/")[1] for u in open_uploads}
    assert (await get_video(http, origin, video_id))[0] == 410
    # The per-user rate limit applies as it does to tus creations.
    statuses = [(await create(http, origin, 100, user="bob"))[0] for _ in range(21)]
    assert statuses[:20] == [201] * 20 and statuses[20] == 429


async def test_no_bucket_no_direct_upload(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    clock = Clock()
    service, port = await _start(tmp_path, clock)
    try:
        auth = {"Authorization": f"Bearer {mint('alice', KEYS, 3600, now=clock.now)}"}
        async with http.post(f"http://127.0.0.1:{port}/api/v1/videos", headers=auth,
                             json={"size": 1, "filename": "a", "content_type": "video/mp4"},
                             ) as response:
            assert response.status == 404
            assert (await response.json())["error"] == "no_direct_upload"
        async with http.post(f"http://127.0.0.1:{port}/api/v1/videos/{'a' * 26}/complete",
                             headers=auth, json={"parts": []}) as response:
            assert response.status == 404
            assert (await response.json())["error"] == "no_direct_upload"
    finally:
        await service.stop()


def test_a_gone_source_fails_the_video(tmp_path: Path, s3_endpoint: str,  # noqa: F811
                                       bucket: str) -> None:
    queue = SqliteQueue(tmp_path / "queue.sqlite")
    catalog = VideoCatalog(tmp_path / "videos.sqlite")
    catalog.create("GONEVIDEO", "ann", {}, status="processing")
    queue.enqueue("GONEVIDEO", "transcode",
                  {"source_s3": {"bucket": bucket, "key": "sources/GONEVIDEO/source"}})
    worker = TranscodeWorker(queue, FsStore(tmp_path / "published"), catalog, ladder=LADDER,
                             workdir=tmp_path / "work",
                             s3_client=s3_client(s3_endpoint, "us-east-1"))
    assert worker.run_one()
    row = catalog.get("GONEVIDEO")
    assert row is not None and row["status"] == "failed" and "gone" in row["error"]
    assert queue.depth() == 0  # not retried
