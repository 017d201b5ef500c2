"""The origin's tus 1.0.0 upload API on a real loopback port: tuspy uploads, every error
status, durability across a ``kill -9`` of a ``reelcdn origin`` process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from nodeproc import free_port
from prometheus_client.parser import text_string_to_metric_families
from tusclient import client as tus_client

from reelcdn.origin import tus
from reelcdn.origin.service import OriginConfig, OriginService
from reelcdn.origin.uploads import UploadStore
from reelcdn.origin.users import Keys, mint

SECRET = b"s" * 40
KEYS = Keys({"k1": SECRET}, "k1")
TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {"Content-Type": "application/offset+octet-stream"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Origin:
    def __init__(self, service: OriginService, port: int, admin_port: int, clock: Clock):
        self.service = service
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.clock = clock
        self.completed: list[tuple[str, Path, dict[str, str], str]] = []

    def token(self, user: str = "alice") -> str:
        return mint(user, KEYS, 3600, now=self.clock.now)

    def auth(self, user: str = "alice", **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}", **TUS, **more}


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    clock = Clock()
    config = OriginConfig(data_dir=tmp_path / "data", keys=KEYS, max_size=8 << 20,
                          upload_ttl=600, uploads_per_window=20, rate_window=60)
    service = OriginService(config, clock=clock)
    port, admin_port = await service.start("127.0.0.1", 0, "127.0.0.1", 0)
    assert admin_port is not None
    result = Origin(service, port, admin_port, clock)
    service.on_upload_complete = lambda *args: result.completed.append(args)
    yield result
    await service.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def create(http: aiohttp.ClientSession, origin: Origin, length: int,
                 user: str = "alice", **headers: str) -> str:
    async with http.post(f"{origin.url}/api/v1/uploads",
                         headers=origin.auth(user, **{"Upload-Length": str(length)}, **headers),
                         ) as resp:
        assert resp.status == 201, await resp.text()
        return f"{origin.url}{resp.headers['Location']}"


async def patch(http: aiohttp.ClientSession, origin: Origin, url: str, offset: int,
                body: bytes, user: str = "alice", **headers: str) -> aiohttp.ClientResponse:
    async with http.patch(url, data=body, headers=origin.auth(
            user, **STREAM, **{"Upload-Offset": str(offset)}, **headers)) as resp:
        await resp.read()
        return resp


async def head_offset(http: aiohttp.ClientSession, origin: Origin, url: str) -> int:
    async with http.head(url, headers=origin.auth()) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        return int(resp.headers["Upload-Offset"])


def sha1_header(body: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()


async def expect_error(resp: aiohttp.ClientResponse, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"] == code and body["detail"]
    return body


# -- tuspy, the reference flow -----------------------------------------------------------------

def tuspy_upload(endpoint: str, token: str, path: Path, chunk: int, **kwargs) -> str:
    tus = tus_client.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
    uploader = tus.uploader(str(path), chunk_size=chunk, upload_checksum=True, **kwargs)
    uploader.upload()
    return str(uploader.url)


async def test_tuspy_upload_in_chunks_with_checksums(origin: Origin, http, tmp_path: Path):
    source = tmp_path / "clip.mp4"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    meta = {"filename": "clip.mp4", "title": "Été à Paris", "caption": "a, b", "hashtags": "#a #b"}
    url = await asyncio.to_thread(tuspy_upload, f"{origin.url}/api/v1/uploads",
                                  origin.token("bob"), source, 512 * 1024, metadata=meta)
    video_id = url.rsplit("/", 1)[1]
    assert url == f"{origin.url}/api/v1/uploads/{video_id}" and len(video_id) == 26

    [(hook_id, path, hook_meta, owner)] = origin.completed
    assert (hook_id, hook_meta, owner) == (video_id, meta, "bob")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest

    async with http.get(f"{origin.url}/api/v1/videos/{video_id}",
                        headers=origin.auth("bob")) as resp:
        assert resp.status == 200
        state = await resp.json()
    assert state["status"] == "processing"  # queued for a transcoding worker
    upload = state["upload"]
    assert upload["state"] == "uploaded" and upload["sha256"] == digest
    assert upload["offset"] == upload["length"] == source.stat().st_size
    assert state["metadata"] == meta

    async with http.get(f"{origin.admin}/metrics") as resp:
        metrics = await resp.text()
    assert "reelcdn_origin_uploads_started_total 1.0" in metrics
    assert "reelcdn_origin_uploads_completed_total 1.0" in metrics
    samples = {s.name: s.value for family in text_string_to_metric_families(metrics)
               for s in family.samples}
    assert samples["reelcdn_origin_upload_bytes_received_total"] == source.stat().st_size


async def test_options_and_cors_preflight_need_no_token(origin: Origin, http):
    async with http.options(f"{origin.url}/api/v1/uploads", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "upload-length,tus-resumable"}) as resp:
        assert resp.status == 204
        h = resp.headers
    assert h["Tus-Version"] == "1.0.0" and h["Tus-Resumable"] == "1.0.0"
    assert set(h["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "checksum", "termination", "expiration"}
    assert h["Tus-Max-Size"] == str(8 << 20)
    assert set(h["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "md5", "crc32"}
    assert h["Access-Control-Allow-Origin"] == "*"
    allowed = {v.strip().lower() for v in h["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "tus-resumable", "upload-length", "upload-offset",
            "upload-metadata", "upload-checksum", "content-type"} <= allowed
    assert "PATCH" in h["Access-Control-Allow-Methods"]
    exposed = {v.strip() for v in h["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "Upload-Offset", "Upload-Length", "Tus-Version", "Tus-Resumable",
            "Upload-Expires"} <= exposed


async def test_creation_with_upload_and_expires_and_override(origin: Origin, http):
    body = os.urandom(1000)
    async with http.post(f"{origin.url}/api/v1/uploads", data=body[:600], headers=origin.auth(
            **STREAM, **{"Upload-Length": "1000", "Upload-Checksum": sha1_header(body[:600]),
                         "Upload-Metadata": "filename Y2xpcC5tcDQ=,title"})) as resp:
        assert resp.status == 201
        assert resp.headers["Upload-Offset"] == "600"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        expires = resp.headers["Upload-Expires"]
        url = f"{origin.url}{resp.headers['Location']}"
    assert expires.endswith(" GMT")
    # X-HTTP-Method-Override: a POST that is a PATCH.
    async with http.post(url, data=body[600:], headers=origin.auth(
            **STREAM, **{"Upload-Offset": "600", "X-HTTP-Method-Override": "PATCH"})) as resp:
        assert resp.status == 204, await resp.text()
        assert resp.headers["Upload-Offset"] == "1000"
        assert "Upload-Expires" not in resp.headers  # complete: it no longer expires
    [(_, path, meta, owner)] = origin.completed
    assert path.read_bytes() == body and meta == {"filename": "clip.mp4", "title": ""}


# -- error paths -------------------------------------------------------------------------------

async def test_checksum_mismatch_is_460_and_keeps_nothing(origin: Origin, http):
    url = await create(http, origin, 3000)
    first = os.urandom(1000)
    assert (await patch(http, origin, url, 0, first,
                        **{"Upload-Checksum": sha1_header(first)})).status == 204
    path = origin.service.store.path_of(url.rsplit("/", 1)[1])
    second = os.urandom(1000)
    for algorithm in ("sha1", "md5", "crc32"):
        wrong = tus.hasher(algorithm)
        wrong.update(b"not the body")
        header = f"{algorithm} {base64.b64encode(wrong.digest()).decode()}"
        resp = await patch(http, origin, url, 1000, second, **{"Upload-Checksum": header})
        assert resp.status == 460, algorithm
        assert resp.headers["Tus-Resumable"] == "1.0.0"
        assert await head_offset(http, origin, url) == 1000
        assert path.stat().st_size == 1000 and path.read_bytes() == first
    crc = tus.hasher("crc32")
    crc.update(second)
    good = f"crc32 {base64.b64encode(crc.digest()).decode()}"
    assert (await patch(http, origin, url, 1000, second, **{"Upload-Checksum": good})).status \
        == 204
    resp = await patch(http, origin, url, 2000, b"x", **{"Upload-Checksum": "sha256 AAAA"})
    await expect_error(resp, 400, "checksum_algorithm_unsupported")
    async with http.get(f"{origin.admin}/metrics") as metrics:
        assert 'reelcdn_origin_uploads_failed_total{reason="checksum_mismatch"} 3.0' in \
            await metrics.text()


async def test_wrong_offset_is_409(origin: Origin, http):
    url = await create(http, origin, 100)
    assert (await patch(http, origin, url, 0, b"a" * 10)).status == 204
    resp = await patch(http, origin, url, 5, b"b" * 10)
    assert resp.status == 409 and resp.headers["Upload-Offset"] == "10"
    resp = await patch(http, origin, url, 20, b"b" * 10)
    assert resp.status == 409
    assert await head_offset(http, origin, url) == 10


async def test_other_versions_are_412(origin: Origin, http):
    for version in ({"Tus-Resumable": "0.2.2"}, {}):
        headers = {"Authorization": f"Bearer {origin.token()}", "Upload-Length": "10",
                   **version}
        async with http.post(f"{origin.url}/api/v1/uploads", headers=headers) as resp:
            await expect_error(resp, 412, "tus_version_unsupported" if version
                               else "tus_version_missing")
            assert resp.headers["Tus-Version"] == "1.0.0"
    url = await create(http, origin, 10)
    headers = {**origin.auth(**STREAM, **{"Upload-Offset": "0"}), "Tus-Resumable": "2.0.0"}
    async with http.patch(url, data=b"x" * 10, headers=headers) as resp:
        assert resp.status == 412
    assert await head_offset(http, origin, url) == 0


async def test_sizes_413_and_bad_requests(origin: Origin, http):
    async with http.post(f"{origin.url}/api/v1/uploads",
                         headers=origin.auth(**{"Upload-Length": str((8 << 20) + 1)})) as resp:
        await expect_error(resp, 413, "upload_too_large")
    url = await create(http, origin, 100)
    await expect_error(await patch(http, origin, url, 0, b"x" * 101), 413, "body_too_large")

    async def chunked():  # no Content-Length: the body is watched as it arrives
        for _ in range(4):
            yield b"y" * 40

    async with http.patch(url, data=chunked(), headers=origin.auth(
            **STREAM, **{"Upload-Offset": "0"})) as resp:
        await expect_error(resp, 413, "body_too_large")
    assert await head_offset(http, origin, url) == 0
    assert origin.service.store.path_of(url.rsplit("/", 1)[1]).stat().st_size == 0
    async with http.patch(url, data=b"x", headers=origin.auth(
            **{"Content-Type": "application/octet-stream", "Upload-Offset": "0"})) as resp:
        await expect_error(resp, 415, "bad_content_type")
    async with http.patch(url, data=b"x", headers=origin.auth(**STREAM)) as resp:
        await expect_error(resp, 400, "upload_offset_missing")
    for bad in ({}, {"Upload-Length": "-1"}, {"Upload-Length": "10",
                                              "Upload-Metadata": "title not-base64!"}):
        async with http.post(f"{origin.url}/api/v1/uploads", headers=origin.auth(**bad)) as resp:
            assert resp.status == 400


async def test_expired_uploads_are_410_and_swept(origin: Origin, http):
    url = await create(http, origin, 100)
    assert (await patch(http, origin, url, 0, b"z" * 10)).status == 204
    other = await create(http, origin, 100)
    path = origin.service.store.path_of(other.rsplit("/", 1)[1])
    origin.clock.now += 601
    assert (await patch(http, origin, url, 10, b"z" * 10)).status == 410
    async with http.head(url, headers=origin.auth()) as resp:
        assert resp.status == 410 and "Upload-Offset" not in resp.headers
    assert path.exists()
    assert origin.service.sweep() == [other.rsplit("/", 1)[1]]
    assert not path.exists()
    async with http.get(f"{origin.url}/api/v1/videos/{other.rsplit('/', 1)[1]}",
                        headers=origin.auth()) as resp:
        await expect_error(resp, 410, "upload_expired")


async def test_termination(origin: Origin, http):
    url = await create(http, origin, 100)
    assert (await patch(http, origin, url, 0, b"q" * 10)).status == 204
    async with http.delete(url, headers=origin.auth()) as resp:
        assert resp.status == 204 and resp.headers["Tus-Resumable"] == "1.0.0"
    await expect_error(await patch(http, origin, url, 10, b"q"), 410, "upload_terminated")
    async with http.delete(url, headers=origin.auth()) as resp:
        assert resp.status == 410
    async with http.head(f"{origin.url}/api/v1/uploads/{'a' * 26}", headers=origin.auth()) as r:
        assert r.status == 404


async def test_tokens_are_required_on_every_route_but_options(origin: Origin, http):
    url = await create(http, origin, 10)
    video = f"{origin.url}/api/v1/videos/{url.rsplit('/', 1)[1]}"
    expired = mint("alice", KEYS, 10, now=origin.clock.now - 60)
    forged = mint("alice", ("k1", b"f" * 40), 3600, now=origin.clock.now)
    unknown = mint("alice", ("k9", SECRET), 3600, now=origin.clock.now)
    bad_tokens = [None, "Basic abc", "Bearer nonsense", f"Bearer {expired}",
                  f"Bearer {forged}", f"Bearer {unknown}"]
    requests = [("POST", f"{origin.url}/api/v1/uploads"), ("HEAD", url), ("PATCH", url),
                ("DELETE", url), ("GET", video), ("GET", f"{origin.url}/api/v1/nothing")]
    for authorization in bad_tokens:
        headers = {**TUS, **STREAM, "Upload-Length": "10", "Upload-Offset": "0"}
        if authorization:
            headers["Authorization"] = authorization
        for method, target in requests:
            async with http.request(method, target, headers=headers, data=b"") as resp:
                assert resp.status == 401, (method, target, authorization)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                if method != "HEAD":
                    assert (await resp.json())["error"] == "unauthorized"
    async with http.get(video, headers={"Authorization": f"Bearer {expired}"}) as resp:
        assert "expired" in (await resp.json())["detail"]
    async with http.options(url) as resp:
        assert resp.status == 204
    # Another user's upload.
    await expect_error(await patch(http, origin, url, 0, b"x", user="mallory"), 403, "not_owner")


async def test_upload_creation_is_rate_limited_per_user(origin: Origin, http):
    for _ in range(20):
        await create(http, origin, 10)
    async with http.post(f"{origin.url}/api/v1/uploads",
                         headers=origin.auth(**{"Upload-Length": "10"})) as resp:
        body = await expect_error(resp, 429, "rate_limited")
        assert resp.headers["Retry-After"] == "3"  # 20 per 60 s: one back every 3 s
        assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
    assert body["detail"]
    await create(http, origin, 10, user="bob")  # another user's bucket
    origin.clock.now += 3
    await create(http, origin, 10)


async def raw_partial_patch(port: int, path: str, token: str, offset: int, declared: int,
                            sent: bytes, extra: str = "") -> None:
    """A PATCH whose connection closes after ``sent`` of ``declared`` bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
                  f"Upload-Offset: {offset}\r\nContent-Length: {declared}\r\n{extra}\r\n"
                  ).encode() + sent)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()


async def test_a_body_cut_short_keeps_what_arrived_unless_checksummed(origin: Origin, http):
    url = await create(http, origin, 5000)
    path = url.removeprefix(origin.url)
    port = int(origin.url.rsplit(":", 1)[1])
    body = os.urandom(5000)
    await raw_partial_patch(port, path, origin.token(), 0, 5000, body[:1500])
    await asyncio.sleep(0.2)
    assert await head_offset(http, origin, url) == 1500
    await raw_partial_patch(port, path, origin.token(), 1500, 3500, body[1500:2500],
                            f"Upload-Checksum: {sha1_header(body[1500:])}\r\n")
    await asyncio.sleep(0.2)
    assert await head_offset(http, origin, url) == 1500
    assert (await patch(http, origin, url, 1500, body[1500:])).status == 204
    assert origin.completed[0][1].read_bytes() == body


async def test_a_hook_missed_by_a_crash_is_called_at_the_next_start(tmp_path: Path):
    store = UploadStore(tmp_path)
    upload = store.create("carol", 3, {"title": "t"}, time.time(), None)
    writer = store.open_writer(upload)
    writer.write(b"abc")
    assert writer.sync_and_commit(None, time.time(), None)
    writer.close()
    store.close()
    service = OriginService(OriginConfig(data_dir=tmp_path, keys=KEYS))
    seen: list[tuple] = []

    async def hook(*args):
        seen.append(args)

    service.on_upload_complete = hook
    await service.start("127.0.0.1", 0)
    await service.stop()
    assert [(s[0], s[2], s[3]) for s in seen] == [(upload.id, {"title": "t"}, "carol")]
    again = OriginService(OriginConfig(data_dir=tmp_path, keys=KEYS))
    assert again.store.unnotified() == []
    again.store.close()


# -- a real process, killed ----------------------------------------------------------------------

def start_origin(data: Path, keys: Path, port: int) -> subprocess.Popen[bytes]:
    config = data.parent / "origin.toml"
    config.write_text(f"""
[origin.media]
type = "fs"
root = "{data.parent / 'media'}"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:{free_port()}"
origins = ["media"]

[api]
listen = "127.0.0.1:{port}"
data_dir = "{data}"
key_file = "{keys}"
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "reelcdn.cli", "--log-level", "WARNING", "origin",
         "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("reelcdn origin did not listen")


@pytest.mark.slow
async def test_offsets_and_bytes_survive_kill_9(tmp_path: Path, http):
    keys = tmp_path / "keys"
    keys.write_text(f"k1 {SECRET.decode()}\n")
    token = mint("dave", KEYS, 600)
    auth = {"Authorization": f"Bearer {token}", **TUS}
    source = tmp_path / "source.bin"
    data = os.urandom(6 * 1024 * 1024)
    source.write_bytes(data)
    port = free_port()
    proc = start_origin(tmp_path / "data", keys, port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with http.post(f"{base}/api/v1/uploads", headers={
                **auth, "Upload-Length": str(len(data))}) as resp:
            assert resp.status == 201
            url = base + resp.headers["Location"]
        half = len(data) // 2
        for start in range(0, half, 1 << 20):
            async with http.patch(url, data=data[start:start + (1 << 20)], headers={
                    **auth, **STREAM, "Upload-Offset": str(start)}) as resp:
                assert resp.status == 204
        # A PATCH under way when the process dies: some of its bytes are written past the
        # committed offset, none committed (the body has not ended).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"PATCH {url.removeprefix(base)} HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n"
                      f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {half}"
                      f"\r\nContent-Length: {len(data) - half}\r\n\r\n").encode()
                     + data[half:half + 2_500_000])
        await writer.drain()
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        writer.transport.abort()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    stored = tmp_path / "data" / "uploads" / f"{url.rsplit('/', 1)[1]}.bin"
    assert stored.stat().st_size > half  # written, not committed: cut off at the start
    proc = start_origin(tmp_path / "data", keys, port)
    try:
        async with http.head(url, headers=auth) as resp:
            assert resp.status == 200
            offset = int(resp.headers["Upload-Offset"])
        assert offset == half
        assert stored.read_bytes() == data[:offset]
        await asyncio.to_thread(tuspy_upload, f"{base}/api/v1/uploads", token, source,
                                1 << 20, url=url)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        async with http.get(f"{base}/api/v1/videos/{url.rsplit('/', 1)[1]}", headers=auth) as r:
            state = await r.json()
        assert state["upload"]["state"] == "uploaded"
        assert state["upload"]["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        proc.terminate()
        proc.wait(10)
