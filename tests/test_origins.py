"""The shield's origin connectors: filesystem, S3 (a real moto server), HTTP, and failover.

Everything runs on real files, real sockets and a real S3 API server; nothing is mocked. That
a hostile path never *opens* a file outside the root is proven with a Python audit hook (the
``open`` event that ``os.open`` raises), not by patching the origin.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from s3server import free_port, s3_endpoint  # noqa: F401  (s3_endpoint is a fixture)

from reelcdn.edge.config import UpstreamTimeouts
from reelcdn.edge.fetch.contract import FetchFailed, UpstreamResponse
from reelcdn.edge.fetch.upstream import HttpUpstream
from reelcdn.edge.http.dates import format_http_date
from reelcdn.origin.storage import write_sidecar
from reelcdn.shield import build_origin, build_origin_chain
from reelcdn.shield.content_types import content_type_for
from reelcdn.shield.failover import OriginChain
from reelcdn.shield.fs import CHUNK_SIZE, FsOrigin
from reelcdn.shield.paths import OriginRefused, join_key, resolve_key
from reelcdn.shield.s3 import S3Origin

TIMEOUTS = UpstreamTimeouts(connect=1.0, first_byte=3.0, idle=3.0)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


async def read_body(response: UpstreamResponse) -> bytes:
    parts = [chunk async for chunk in response.chunks(5.0)]
    response.release()
    return b"".join(parts)


def fields(response: UpstreamResponse) -> dict[str, str]:
    return {n.decode().lower(): v.decode("latin-1") for n, v in response.headers}


def opens_of(recorder: OpenRecorder, path: Path) -> list[str]:
    """The recorded opens that reached ``path`` (through any link or dot segment)."""
    real = os.path.realpath(path)
    return [p for p in recorder.paths if os.path.realpath(p) == real]


class OpenRecorder:
    """Paths passed to ``open``/``os.open`` anywhere in the process, while recording.

    Audit hooks cannot be removed, so one hook is installed for the session and records only
    while a test holds the recorder; it also sees the origin's worker threads.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.active = False
        # Called with each path just before it is opened: lets a test win a race on purpose.
        self.before_open: Callable[[str], None] | None = None
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            path = os.fsdecode(args[0])
            self.paths.append(path)
            if self.before_open is not None:
                self.before_open(path)

    def __enter__(self) -> OpenRecorder:
        self.paths.clear()
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        self.before_open = None


_RECORDER: OpenRecorder | None = None


@pytest.fixture
def opened() -> Iterator[OpenRecorder]:
    global _RECORDER
    if _RECORDER is None:
        _RECORDER = OpenRecorder()
    with _RECORDER as recorder:
        yield recorder


# ---------------------------------------------------------------------------------------------
# content types and keys
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("master.m3u8", "application/vnd.apple.mpegurl"),
        ("seg_00001.m4s", "video/iso.segment"),
        ("init.mp4", "video/mp4"),
        ("audio.m4a", "audio/mp4"),
        ("meta.json", "application/json"),
        ("poster.jpg", "image/jpeg"),
        ("poster.JPEG", "image/jpeg"),
        ("thumb.png", "image/png"),
        ("seg1.ts", "video/mp2t"),
        ("subs.vtt", "text/vtt"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("blob.bin", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("dir.m3u8/file", "application/octet-stream"),
    ],
)
def test_content_type_by_extension(name: str, expected: str) -> None:
    assert content_type_for(name) == expected


@pytest.mark.parametrize(
    ("target", "key"),
    [
        ("/v/abc/seg_00001.m4s", "v/abc/seg_00001.m4s"),
        ("/v/abc/seg_00001.m4s?token=x&CMCD=y", "v/abc/seg_00001.m4s"),
        ("/v/a%20b/x.m4s", "v/a b/x.m4s"),
        ("/v/%252e%252e/x", "v/%2e%2e/x"),  # double-encoded: a literal name after one decode
        ("/v/..x/x..", "v/..x/x.."),
        ("/v/.hidden", "v/.hidden"),
        ("/v/caf%C3%A9", "v/café"),
    ],
)
def test_resolve_key_accepts_plain_names(target: str, key: str) -> None:
    assert resolve_key(target) == key


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/../etc/passwd", 400),
        ("/%2e%2e/etc/passwd", 400),
        ("/v/%2E%2E/%2E%2E/x", 400),
        ("/v/..%2f..%2fetc", 400),
        ("/v/.%2e/x", 400),
        ("/v/%2e/x", 400),
        ("/v/./x", 400),
        ("/..\\x", 400),
        ("/v/a%5cb", 400),
        ("/v/a%00b", 400),
        ("/v/a\x00b", 400),
        ("/v//x", 400),
        ("//etc/passwd", 400),
        ("/C:/Windows/win.ini", 400),
        ("/c:x", 400),
        ("/v/%ff", 400),
        ("v/abc", 400),
        ("", 400),
        ("/", 404),
        ("/v/abc/", 404),
        ("/../", 400),
    ],
)
def test_resolve_key_refuses(target: str, status: int) -> None:
    with pytest.raises(OriginRefused) as refused:
        resolve_key(target)
    assert refused.value.status == status
    assert isinstance(refused.value, FetchFailed)


def test_join_key() -> None:
    assert join_key("", "v/a") == "v/a"
    assert join_key("media", "v/a") == "media/v/a"
    assert join_key("/media/", "v/a") == "media/v/a"


_TOKENS = st.sampled_from(
    ["/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%00", "%25", "%252e",
     "a", "v", "C:", "?", "%3f", "~", "%", "2e", "e", ":"]
)
_HOSTILE = st.lists(_TOKENS, max_size=14).map("".join)
_ROOT = "/srv/origin"


def _assert_contained(key: str) -> None:
    assert not key.startswith("/")
    segments = key.split("/")
    assert all(segment not in ("", ".", "..") for segment in segments), key
    assert "\\" not in key and "\x00" not in key
    assert posixpath.normpath(key) == key  # nothing a normaliser would change
    joined = posixpath.normpath(posixpath.join(_ROOT, key))
    assert joined.startswith(_ROOT + "/"), (key, joined)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_HOSTILE, _HOSTILE.map(lambda s: "/" + s), st.text(max_size=40)))
def test_no_target_resolves_outside_the_root(target: str) -> None:
    try:
        key = resolve_key(target)
    except OriginRefused as refused:
        assert refused.status in (400, 404)
        return
    _assert_contained(key)


# ---------------------------------------------------------------------------------------------
# filesystem origin
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "v" / "abc").mkdir(parents=True)
    (base / "v" / "abc" / "master.m3u8").write_bytes(b"#EXTM3U\n")
    (base / "v" / "abc" / "seg_00001.m4s").write_bytes(os.urandom(3000))
    (tmp_path / "secret.txt").write_bytes(b"SECRET outside the root\n")
    return base


@pytest.fixture
async def fs(root: Path) -> AsyncIterator[FsOrigin]:
    origin = FsOrigin(root, name="disk")
    await origin.start()
    yield origin
    await origin.close()


@pytest.mark.parametrize(
    "name",
    ["master.m3u8", "seg_00001.m4s", "init.mp4", "meta.json", "poster.jpg", "subs.vtt",
     "notes.txt", "seg.ts", "x.unknown"],
)
async def test_fs_content_types(fs: FsOrigin, root: Path, name: str) -> None:
    (root / "v" / "abc" / name).write_bytes(b"data")
    response = await fs.request("GET", f"/v/abc/{name}", [])
    assert response.status == 200
    assert fields(response)["content-type"] == content_type_for(name)
    assert await read_body(response) == b"data"


async def test_fs_validators_and_length(fs: FsOrigin, root: Path) -> None:
    path = root / "v" / "abc" / "seg_00001.m4s"
    st_ = path.stat()
    response = await fs.request("GET", "/v/abc/seg_00001.m4s?CMCD=x", [])
    head = fields(response)
    assert response.status == 200
    assert head["content-length"] == "3000"
    assert head["etag"] == f'"{st_.st_size:x}-{st_.st_mtime_ns:x}"'
    assert head["last-modified"] == format_http_date(st_.st_mtime)
    assert head["accept-ranges"] == "bytes"
    assert await read_body(response) == path.read_bytes()


async def test_fs_etag_changes_when_the_file_changes(fs: FsOrigin, root: Path) -> None:
    path = root / "v" / "abc" / "master.m3u8"
    first = fields(await fs.request("HEAD", "/v/abc/master.m3u8", []))["etag"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    second = fields(await fs.request("HEAD", "/v/abc/master.m3u8", []))["etag"]
    assert first != second


@pytest.mark.parametrize("form", ["exact", "weak", "list", "star"])
async def test_fs_if_none_match_304(fs: FsOrigin, form: str) -> None:
    etag = fields(await fs.request("HEAD", "/v/abc/seg_00001.m4s", []))["etag"]
    value = {"exact": etag, "weak": "W/" + etag, "list": f'"nope", {etag}', "star": "*"}[form]
    for method in ("GET", "HEAD"):
        response = await fs.request(method, "/v/abc/seg_00001.m4s", [(b"If-None-Match", value)])
        assert response.status == 304
        head = fields(response)
        assert head["etag"] == etag and "last-modified" in head
        assert "content-length" not in head
        assert await read_body(response) == b""


async def test_fs_if_modified_since(fs: FsOrigin) -> None:
    head = fields(await fs.request("HEAD", "/v/abc/seg_00001.m4s", []))
    modified = head["last-modified"]
    response = await fs.request("GET", "/v/abc/seg_00001.m4s", [("If-Modified-Since", modified)])
    assert response.status == 304
    earlier = format_http_date(0)
    response = await fs.request("GET", "/v/abc/seg_00001.m4s", [("if-modified-since", earlier)])
    assert response.status == 200
    assert len(await read_body(response)) == 3000
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2): a changed ETag is a 200.
    both = [("If-None-Match", '"other"'), ("If-Modified-Since", modified)]
    response = await fs.request("GET", "/v/abc/seg_00001.m4s", both)
    assert response.status == 200
    response.close()


async def test_fs_head_has_the_get_headers_and_no_body(fs: FsOrigin) -> None:
    get = await fs.request("GET", "/v/abc/seg_00001.m4s", [])
    head = await fs.request("HEAD", "/v/abc/seg_00001.m4s", [])
    assert head.status == 200
    assert fields(head) == fields(get)
    assert await read_body(head) == b""
    get.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_fs_other_methods_get_405(fs: FsOrigin, method: str) -> None:
    response = await fs.request(method, "/v/abc/master.m3u8", [], b"x")
    assert response.status == 405
    assert fields(response)["allow"] == "GET, HEAD"
    await read_body(response)


@pytest.mark.parametrize("target", ["/v/abc/missing.m4s", "/v/nope/x", "/v/abc/master.m3u8/x"])
async def test_fs_missing_is_404(fs: FsOrigin, target: str) -> None:
    response = await fs.request("GET", target, [])
    assert response.status == 404
    assert await read_body(response) == b"not found\n"


@pytest.mark.parametrize("target", ["/v/abc", "/v", "/v/abc/", "/"])
async def test_fs_directory_is_404(fs: FsOrigin, target: str) -> None:
    response = await fs.request("GET", target, [])
    assert response.status == 404
    await read_body(response)


async def test_fs_fifo_is_404_and_does_not_hang(fs: FsOrigin, root: Path) -> None:
    os.mkfifo(root / "v" / "abc" / "pipe.m4s")
    async with asyncio.timeout(5):
        response = await fs.request("GET", "/v/abc/pipe.m4s", [])
    assert response.status == 404


async def test_fs_request_cancelled_while_opening_leaks_no_descriptor(
    fs: FsOrigin, root: Path
) -> None:
    (root / "v" / "abc" / "big.mp4").write_bytes(os.urandom(2 * CHUNK_SIZE))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        task = asyncio.ensure_future(fs.request("GET", "/v/abc/big.mp4", []))
        await asyncio.sleep(0)
        task.cancel()
        try:
            response = await task
        except asyncio.CancelledError:
            continue
        response.close()  # the open won the race: an ordinary response
    await asyncio.sleep(0.1)
    assert len(os.listdir("/proc/self/fd")) <= before + 2


async def test_fs_large_file_streams_in_chunks(fs: FsOrigin, root: Path) -> None:
    data = os.urandom(5 * CHUNK_SIZE + 12345)
    (root / "v" / "abc" / "big.mp4").write_bytes(data)
    response = await fs.request("GET", "/v/abc/big.mp4", [])
    assert fields(response)["content-length"] == str(len(data))
    chunks = [chunk async for chunk in response.chunks(5.0)]
    response.release()
    assert b"".join(chunks) == data
    assert len(chunks) == 6 and max(map(len, chunks)) == CHUNK_SIZE


async def test_fs_serves_the_file_it_opened_even_if_replaced(fs: FsOrigin, root: Path) -> None:
    """Head and body come from one descriptor: a file replaced mid-request does not mix."""
    path = root / "v" / "abc" / "big.mp4"
    old = os.urandom(3 * CHUNK_SIZE)
    path.write_bytes(old)
    response = await fs.request("GET", "/v/abc/big.mp4", [])
    fresh = root / "v" / "abc" / "big.tmp"
    fresh.write_bytes(b"new" * 10)
    fresh.replace(path)
    assert await read_body(response) == old
    assert fields(response)["content-length"] == str(len(old))


async def test_fs_truncated_while_read_fails_the_body(fs: FsOrigin, root: Path) -> None:
    path = root / "v" / "abc" / "big.mp4"
    path.write_bytes(os.urandom(4 * CHUNK_SIZE))
    response = await fs.request("GET", "/v/abc/big.mp4", [])
    body = response.chunks(5.0)
    assert len(await body.__anext__()) == CHUNK_SIZE
    os.truncate(path, CHUNK_SIZE + 10)
    with pytest.raises(FetchFailed) as failed:
        async for _ in body:
            pass
    assert failed.value.status == 502
    response.close()


async def test_fs_abandoned_body_closes_its_descriptor(fs: FsOrigin, root: Path) -> None:
    (root / "v" / "abc" / "big.mp4").write_bytes(os.urandom(3 * CHUNK_SIZE))
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(20):
        response = await fs.request("GET", "/v/abc/big.mp4", [])
        body = cast(AsyncGenerator[bytes, None], response.chunks(5.0))
        await body.__anext__()
        response.close()
        await body.aclose()
    await asyncio.sleep(0.05)
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) <= before + 2


HOSTILE_TARGETS = [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/v/%2E%2E/%2E%2E/secret.txt",
    "/v/..%2f..%2fsecret.txt",
    "/v/abc/..%2F..%2F..%2Fsecret.txt",
    "/..\\secret.txt",
    "/v/%5c..%5c..%5csecret.txt",
    "/secret.txt%00.m4s",
    "/v/abc/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "/v/abc/%252e%252e/%252e%252e/secret.txt",
]


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
async def test_fs_traversal_is_refused_without_opening(
    fs: FsOrigin, root: Path, target: str, opened: OpenRecorder
) -> None:
    response = await fs.request("GET", target, [])
    body = await read_body(response)
    assert 400 <= response.status < 500
    assert b"SECRET" not in body
    assert opens_of(opened, root.parent / "secret.txt") == []


async def test_fs_symlink_leading_outside_is_404_and_never_opened(
    fs: FsOrigin, root: Path, opened: OpenRecorder
) -> None:
    secret = root.parent / "secret.txt"
    (root / "v" / "abc" / "leak.m4s").symlink_to(secret)
    (root / "v" / "out").symlink_to(root.parent)  # a directory link leading outside
    for target in ("/v/abc/leak.m4s", "/v/out/secret.txt"):
        for method in ("GET", "HEAD"):
            response = await fs.request(method, target, [])
            assert response.status == 404
            assert b"SECRET" not in await read_body(response)
    assert opens_of(opened, secret) == []
    # The recorder does see the origin's opens (so the assertion above means something).
    await read_body(await fs.request("GET", "/v/abc/master.m3u8", []))
    assert opens_of(opened, root / "v" / "abc" / "master.m3u8") != []


async def test_fs_directory_swapped_for_a_link_after_the_check_is_refused(
    fs: FsOrigin, root: Path, opened: OpenRecorder
) -> None:
    """The race the post-open check exists for: between the realpath check and the open, a
    directory on the path is replaced by a symlink leading outside. The audit hook runs just
    before the open and makes the swap, so the race is won every time."""
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "x.m4s").write_bytes(b"SECRET swapped in")
    (root / "v" / "race").mkdir()
    (root / "v" / "race" / "x.m4s").write_bytes(b"inside")
    target_path = str(root / "v" / "race" / "x.m4s")

    def swap(path: str) -> None:
        if path == target_path and not (root / "v" / "race").is_symlink():
            (root / "v" / "race").rename(root / "v" / "race.old")
            (root / "v" / "race").symlink_to(outside)

    opened.before_open = swap
    response = await fs.request("GET", "/v/race/x.m4s", [])
    assert (root / "v" / "race").is_symlink()  # the swap did happen
    assert response.status == 404
    assert b"SECRET" not in await read_body(response)


async def test_fs_symlink_inside_the_root_is_served(fs: FsOrigin, root: Path) -> None:
    (root / "v" / "alias").symlink_to(root / "v" / "abc")
    response = await fs.request("GET", "/v/alias/master.m3u8", [])
    assert response.status == 200
    assert await read_body(response) == b"#EXTM3U\n"


# Sidecars: per-file headers in {dir}/.headers/{name} (reelcdn.shield.sidecar).


def put_sidecar(root: Path, key: str, data: bytes) -> Path:
    directory, name = key.rsplit("/", 1)
    path = root / directory / ".headers" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def test_fs_sends_the_headers_of_the_sidecar(fs: FsOrigin, root: Path) -> None:
    (root / "v" / "abc" / "meta.json").write_bytes(b"{}")
    write_sidecar(root / "v" / "abc" / "meta.json", cache_control="max-age=2")
    for method in ("GET", "HEAD"):
        response = await fs.request(method, "/v/abc/meta.json", [])
        assert response.status == 200
        head = fields(response)
        assert head["cache-control"] == "max-age=2"
        assert head["content-type"] == "application/json"
        assert await read_body(response) == (b"{}" if method == "GET" else b"")
    # Written by hand: any case, the three fields allowed; Content-Type replaces the guess.
    put_sidecar(root, "v/abc/seg_00001.m4s", b"content-type: video/mp4\n"
                b"CACHE-CONTROL:public, max-age=60\n"
                b'Content-Disposition: attachment; filename="seg.m4s"\n')
    response = await fs.request("GET", "/v/abc/seg_00001.m4s", [])
    assert [(n, v) for n, v in response.headers if n in (
        b"Content-Type", b"Cache-Control", b"Content-Disposition")] == [
        (b"Content-Type", b"video/mp4"), (b"Cache-Control", b"public, max-age=60"),
        (b"Content-Disposition", b'attachment; filename="seg.m4s"')]
    assert len(await read_body(response)) == 3000


async def test_fs_a_304_carries_the_sidecar_cache_control(fs: FsOrigin, root: Path) -> None:
    put_sidecar(root, "v/abc/master.m3u8", b"Cache-Control: max-age=86400\n")
    etag = fields(await fs.request("HEAD", "/v/abc/master.m3u8", []))["etag"]
    response = await fs.request("GET", "/v/abc/master.m3u8", [(b"If-None-Match", etag)])
    assert response.status == 304
    head = fields(response)
    assert head["cache-control"] == "max-age=86400" and head["etag"] == etag
    assert "content-type" not in head


async def test_fs_a_file_without_a_sidecar_is_served_as_before(fs: FsOrigin, root: Path) -> None:
    put_sidecar(root, "v/abc/other.m4s", b"Cache-Control: max-age=1\n")  # another file's
    response = await fs.request("GET", "/v/abc/master.m3u8", [])
    assert [n for n, _ in response.headers] == [
        b"Content-Type", b"Content-Length", b"ETag", b"Last-Modified", b"Accept-Ranges"]
    assert fields(response)["content-type"] == "application/vnd.apple.mpegurl"
    assert await read_body(response) == b"#EXTM3U\n"


MALFORMED_SIDECARS = {
    "unlisted-field": b"Cache-Control: max-age=60\nSet-Cookie: a=b\n",
    "crlf": b"Cache-Control: max-age=60\r\n",
    "cr-inside": b"Cache-Control: max-age=60\rX-Injected: 1\n",
    "nul": b"Cache-Control: max-age=60\x00\n",
    "no-final-newline": b"Cache-Control: max-age=60",
    "no-colon": b"Cache-Control max-age=60\n",
    "empty-value": b"Cache-Control:\n",
    "twice": b"Cache-Control: max-age=60\nCache-Control: no-store\n",
    "non-ascii": "Content-Disposition: attachment; filename=\u00e9\n".encode(),
    "long-value": b"Cache-Control: " + b"x" * 1025 + b"\n",
    "oversized": b"Cache-Control: max-age=60\n" + b"\n" * 5000,
    "space-in-name": b"Cache Control: max-age=60\n",
}


@pytest.mark.parametrize("data", list(MALFORMED_SIDECARS.values()), ids=list(MALFORMED_SIDECARS))
async def test_fs_a_malformed_sidecar_is_ignored_with_a_warning(
    fs: FsOrigin, root: Path, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    put_sidecar(root, "v/abc/master.m3u8", data)
    with caplog.at_level("WARNING", logger="reelcdn.shield"):
        response = await fs.request("GET", "/v/abc/master.m3u8", [])
    assert response.status == 200
    head = fields(response)
    assert "cache-control" not in head and "set-cookie" not in head and "x-injected" not in head
    assert head["content-type"] == "application/vnd.apple.mpegurl"
    assert await read_body(response) == b"#EXTM3U\n"
    assert any("sidecar of v/abc/master.m3u8 is malformed" in r.getMessage()
               for r in caplog.records)


async def test_fs_an_unusable_sidecar_is_ignored_and_one_outside_never_opened(
    fs: FsOrigin, root: Path, opened: OpenRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    headers = root / "v" / "abc" / ".headers"
    headers.mkdir()
    (headers / "master.m3u8").mkdir()  # a directory
    os.mkfifo(headers / "seg_00001.m4s")  # a FIFO: must not hang a thread
    outside = root.parent / "secret.txt"
    (root / "v" / "abc" / "leak.json").write_bytes(b"{}")
    (headers / "leak.json").symlink_to(outside)  # leads outside the root
    with caplog.at_level("WARNING", logger="reelcdn.shield"):
        async with asyncio.timeout(5):
            for target in ("/v/abc/master.m3u8", "/v/abc/seg_00001.m4s", "/v/abc/leak.json"):
                response = await fs.request("GET", target, [])
                assert response.status == 200
                assert "cache-control" not in fields(response)
                assert b"SECRET" not in await read_body(response)
    assert opens_of(opened, outside) == []
    assert len([r for r in caplog.records if "sidecar" in r.getMessage()]) == 3


@pytest.mark.parametrize("target", [
    "/v/abc/.headers/meta.json", "/v/abc/%2eheaders/meta.json", "/.staging/publish/x",
    "/v/.hidden/x", "/v/abc/.meta.json-x.tmp",
])
async def test_fs_hidden_paths_are_404(fs: FsOrigin, root: Path, target: str) -> None:
    """Sidecars, the store's staging area and its temporary files exist, but are no objects."""
    put_sidecar(root, "v/abc/meta.json", b"Cache-Control: max-age=2\n")
    for key in (".staging/publish/x", "v/.hidden/x", "v/abc/.meta.json-x.tmp"):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"hidden")
    for method in ("GET", "HEAD"):
        response = await fs.request(method, target, [])
        assert response.status == 404
        assert b"max-age" not in await read_body(response)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.one_of(_HOSTILE.map(lambda s: "/" + s), _HOSTILE))
def test_fs_never_serves_outside_the_root(tmp_path: Path, target: str) -> None:
    base = tmp_path / "prop"
    if not base.exists():
        (base / "root" / "v").mkdir(parents=True)
        (base / "secret").write_bytes(b"SECRET")
        (base / "root" / "v" / "a").write_bytes(b"inside")

    async def fetch() -> tuple[int, bytes]:
        origin = FsOrigin(base / "root")
        await origin.start()
        try:
            response = await origin.request("GET", target + "secret", [])
            return response.status, await read_body(response)
        finally:
            await origin.close()

    status, body = asyncio.run(fetch())
    assert b"SECRET" not in body
    assert status in (200, 400, 404)


# ---------------------------------------------------------------------------------------------
# S3 origin, against moto's server
# ---------------------------------------------------------------------------------------------

BIG = os.urandom(5 * 1024 * 1024 + 7)


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:  # noqa: F811  (the imported fixture)
    name = f"reel-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    put = client.put_object
    # Types S3 would get wrong, on purpose: the origin decides by extension.
    put(Bucket=name, Key="media/v/abc/master.m3u8", Body=b"#EXTM3U\n",
        ContentType="binary/octet-stream")
    put(Bucket=name, Key="media/v/abc/seg_00001.m4s", Body=b"\x00" * 3000)
    put(Bucket=name, Key="media/v/abc/meta.json", Body=b"{}", ContentType="text/plain",
        CacheControl="max-age=5")
    put(Bucket=name, Key="media/v/abc/poster.webp", Body=b"RIFF", ContentType="image/webp")
    put(Bucket=name, Key="media/v/abc/big.mp4", Body=BIG)
    put(Bucket=name, Key="secret.txt", Body=b"SECRET outside the prefix")
    return name


@pytest.fixture
async def s3(s3_endpoint: str, bucket: str) -> AsyncIterator[S3Origin]:  # noqa: F811
    origin = S3Origin(bucket, prefix="media/", endpoint_url=s3_endpoint, region="us-east-1",
                      timeouts=TIMEOUTS, name="s3")
    await origin.start()
    yield origin
    await origin.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("master.m3u8", "application/vnd.apple.mpegurl"),
        ("seg_00001.m4s", "video/iso.segment"),
        ("meta.json", "application/json"),
        ("poster.webp", "image/webp"),  # an extension we do not know: S3's own type
    ],
)
async def test_s3_content_types(s3: S3Origin, name: str, content_type: str) -> None:
    response = await s3.request("GET", f"/v/abc/{name}", [])
    assert response.status == 200
    assert fields(response)["content-type"] == content_type
    await read_body(response)


@pytest.mark.slow
async def test_s3_headers_under_the_prefix(
    s3: S3Origin, s3_endpoint: str, bucket: str  # noqa: F811
) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    stored = client.head_object(Bucket=bucket, Key="media/v/abc/seg_00001.m4s")
    response = await s3.request("GET", "/v/abc/seg_00001.m4s?token=abc", [])
    head = fields(response)
    assert head["content-length"] == "3000"
    assert head["etag"] == stored["ETag"]
    assert head["last-modified"] == format_http_date(stored["LastModified"].timestamp())
    assert head["accept-ranges"] == "bytes"
    assert await read_body(response) == b"\x00" * 3000
    meta = await s3.request("GET", "/v/abc/meta.json", [])
    assert fields(meta)["cache-control"] == "max-age=5"
    await read_body(meta)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["/v/abc/missing.m4s", "/secret.txt", "/media/secret.txt"])
async def test_s3_missing_key_is_404(s3: S3Origin, target: str) -> None:
    for method in ("GET", "HEAD"):
        response = await s3.request(method, target, [])
        assert response.status == 404
        assert b"SECRET" not in await read_body(response)


@pytest.mark.slow
async def test_s3_traversal_is_refused(s3: S3Origin) -> None:
    for target in ("/../secret.txt", "/%2e%2e/secret.txt", "/v/..%2f..%2fsecret.txt"):
        response = await s3.request("GET", target, [])
        assert response.status == 400
        assert b"SECRET" not in await read_body(response)


@pytest.mark.slow
async def test_s3_if_none_match_304(s3: S3Origin) -> None:
    etag = fields(await s3.request("HEAD", "/v/abc/seg_00001.m4s", []))["etag"]
    for method in ("GET", "HEAD"):
        response = await s3.request(method, "/v/abc/seg_00001.m4s", [(b"If-None-Match", etag)])
        assert response.status == 304
        assert fields(response)["etag"] == etag
        assert await read_body(response) == b""
    response = await s3.request("GET", "/v/abc/seg_00001.m4s", [(b"If-None-Match", '"other"')])
    assert response.status == 200
    await read_body(response)


@pytest.mark.slow
async def test_s3_if_modified_since_304(s3: S3Origin) -> None:
    modified = fields(await s3.request("HEAD", "/v/abc/seg_00001.m4s", []))["last-modified"]
    response = await s3.request("GET", "/v/abc/seg_00001.m4s", [("If-Modified-Since", modified)])
    assert response.status == 304
    response = await s3.request("GET", "/v/abc/seg_00001.m4s",
                                [("If-Modified-Since", format_http_date(0))])
    assert response.status == 200
    await read_body(response)


@pytest.mark.slow
async def test_s3_head(s3: S3Origin) -> None:
    response = await s3.request("HEAD", "/v/abc/big.mp4", [])
    assert response.status == 200
    head = fields(response)
    assert head["content-length"] == str(len(BIG))
    assert head["content-type"] == "video/mp4"
    assert await read_body(response) == b""


@pytest.mark.slow
async def test_s3_other_methods_get_405(s3: S3Origin) -> None:
    response = await s3.request("PUT", "/v/abc/x.m4s", [], b"data")
    assert response.status == 405
    assert fields(response)["allow"] == "GET, HEAD"


@pytest.mark.slow
async def test_s3_streams_a_large_object_intact(s3: S3Origin) -> None:
    response = await s3.request("GET", "/v/abc/big.mp4", [])
    assert fields(response)["content-length"] == str(len(BIG))
    digest = hashlib.sha256()
    count = 0
    async for chunk in response.chunks(5.0):
        digest.update(chunk)
        count += 1
    response.release()
    assert digest.hexdigest() == hashlib.sha256(BIG).hexdigest()
    assert count >= len(BIG) // CHUNK_SIZE


@pytest.mark.slow
async def test_s3_abandoned_stream_can_be_closed(s3: S3Origin) -> None:
    response = await s3.request("GET", "/v/abc/big.mp4", [])
    body = cast(AsyncGenerator[bytes, None], response.chunks(5.0))
    await body.__anext__()
    response.close()
    await body.aclose()
    again = await s3.request("GET", "/v/abc/master.m3u8", [])  # the pool still works
    assert await read_body(again) == b"#EXTM3U\n"


@pytest.mark.slow
async def test_s3_overlong_key_is_404_not_an_origin_failure(
    chains: list[OriginChain], s3_endpoint: str, bucket: str  # noqa: F811
) -> None:
    """S3 answers a key over 1024 bytes with a 400 error: counted as a failure, anyone could
    open the origin's circuit with long URLs."""
    chain = await start_chain(chains, build_origin_chain([
        origin_config(name="s3", type="s3", bucket=bucket, prefix="media",
                      endpoint_url=s3_endpoint, region="us-east-1"),
    ], failures=1))
    for _ in range(3):
        response = await chain.request("GET", "/v/" + "a" * 1100, [])
        assert response.status == 404
        await read_body(response)
    assert chain.counters()["s3"]["failures"] == 0 and chain.counters()["s3"]["up"]


@pytest.mark.slow
async def test_s3_missing_bucket_is_a_failure(s3_endpoint: str) -> None:  # noqa: F811
    origin = S3Origin("no-such-bucket-here", endpoint_url=s3_endpoint, timeouts=TIMEOUTS)
    await origin.start()
    try:
        with pytest.raises(FetchFailed) as failed:
            await origin.request("GET", "/v/abc/master.m3u8", [])
        assert failed.value.status == 502
    finally:
        await origin.close()


@pytest.mark.slow
async def test_s3_unreachable_endpoint_is_502(s3_endpoint: str) -> None:  # noqa: F811
    origin = S3Origin("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}",
                      timeouts=TIMEOUTS, attempts=1)
    await origin.start()
    try:
        with pytest.raises(FetchFailed) as failed:
            await origin.request("GET", "/v/abc/master.m3u8", [])
        assert failed.value.status == 502 and failed.value.retryable
    finally:
        await origin.close()


# ---------------------------------------------------------------------------------------------
# build_origin, http origins, failover
# ---------------------------------------------------------------------------------------------


def origin_config(**kw: Any) -> SimpleNamespace:
    base = dict(name="o", type="fs", root=None, url=None, bucket=None, prefix="",
                endpoint_url=None, region=None, profile=None, timeouts=TIMEOUTS)
    base.update(kw)
    return SimpleNamespace(**base)


def closed_http(name: str = "dead") -> HttpUpstream:
    return HttpUpstream(f"http://127.0.0.1:{free_port()}", timeouts=TIMEOUTS, name=name)


@pytest.mark.slow
async def test_build_origin_kinds(root: Path, s3_endpoint: str, bucket: str) -> None:  # noqa: F811
    fs = build_origin(origin_config(name="disk", type="fs", root=str(root)))
    s3 = build_origin(origin_config(name="bucket", type="s3", bucket=bucket, prefix="media",
                                    endpoint_url=s3_endpoint, region="us-east-1"))
    http = build_origin(origin_config(name="web", type="http", url="http://127.0.0.1:1/media/"))
    assert isinstance(fs, FsOrigin) and fs.name == "disk"
    assert isinstance(s3, S3Origin) and s3.prefix == "media"
    assert isinstance(http, HttpUpstream) and http.base_url == "http://127.0.0.1:1/media"
    for bad in (origin_config(type="ftp"), origin_config(type="fs"),
                origin_config(type="s3"), origin_config(type="http", url="ftp://x/"),
                origin_config(type="http", url="http://x/?q=1")):
        with pytest.raises(ValueError):
            build_origin(bad)


async def test_http_origin_with_a_path_prefix(origin: Any) -> None:
    origin.set("/store/v/abc/master.m3u8", b"#EXTM3U\n")
    http = build_origin(origin_config(name="web", type="http", url=origin.url + "/store"))
    await http.start()
    try:
        response = await http.request("GET", "/v/abc/master.m3u8?x=1", [])
        assert response.status == 200
        assert await read_body(response) == b"#EXTM3U\n"
        assert origin.counts["/store/v/abc/master.m3u8?x=1"] == 1
    finally:
        await http.close()


@pytest.fixture
async def chains() -> AsyncIterator[list[OriginChain]]:
    started: list[OriginChain] = []
    yield started
    for chain in started:
        await chain.close()


async def start_chain(chains: list[OriginChain], chain: OriginChain) -> OriginChain:
    await chain.start()
    chains.append(chain)
    return chain


async def test_failover_from_a_closed_port_to_fs(chains: list[OriginChain], root: Path) -> None:
    seen: list[tuple[str, int]] = []
    chain = OriginChain([closed_http(), FsOrigin(root, name="disk")])
    chain.observe = lambda source, status: seen.append((source, status))
    await start_chain(chains, chain)
    response = await chain.request("GET", "/v/abc/master.m3u8", [])
    assert response.status == 200
    assert await read_body(response) == b"#EXTM3U\n"
    assert chain.counters()["dead"]["failures"] == 1
    disk = chain.counters()["disk"]
    assert (disk["requests"], disk["failures"], disk["consecutive_failures"], disk["up"]) == (
        1, 0, 0, True)
    assert seen == [("dead", 502), ("disk", 200)]


async def test_failover_from_a_500_to_fs(
    chains: list[OriginChain], root: Path, origin: Any
) -> None:
    origin.set("/v/abc/master.m3u8", b"broken", status=500)
    http = HttpUpstream(origin.url, timeouts=TIMEOUTS, name="web")
    chain = await start_chain(chains, OriginChain([http, FsOrigin(root, name="disk")]))
    response = await chain.request("GET", "/v/abc/master.m3u8", [])
    assert response.status == 200
    assert await read_body(response) == b"#EXTM3U\n"
    assert origin.counts["/v/abc/master.m3u8"] == 1
    assert chain.counters()["web"]["failures"] == 1


async def test_a_404_is_an_answer_not_a_failure(
    chains: list[OriginChain], root: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    chain = await start_chain(
        chains, OriginChain([FsOrigin(empty, name="first"), FsOrigin(root, name="second")])
    )
    response = await chain.request("GET", "/v/abc/master.m3u8", [])
    assert response.status == 404
    assert chain.counters()["second"]["requests"] == 0
    assert chain.counters()["first"]["failures"] == 0


async def test_refused_targets_do_not_count_against_origins(
    chains: list[OriginChain], root: Path
) -> None:
    chain = await start_chain(chains, OriginChain([FsOrigin(root, name="a"),
                                                   FsOrigin(root, name="b")], failures=1))
    for _ in range(5):
        response = await chain.request("GET", "/../etc/passwd", [])
        assert response.status == 400
    assert chain.counters()["a"]["failures"] == 0 and chain.counters()["a"]["up"]
    assert chain.counters()["b"]["requests"] == 0


async def test_all_down_is_502(chains: list[OriginChain]) -> None:
    chain = await start_chain(chains, OriginChain([closed_http("a"), closed_http("b")]))
    with pytest.raises(FetchFailed) as failed:
        await chain.request("GET", "/v/abc/master.m3u8", [])
    assert failed.value.status == 502
    assert {name: c["failures"] for name, c in chain.counters().items()} == {"a": 1, "b": 1}


async def test_last_500_is_returned_when_every_origin_fails(
    chains: list[OriginChain], origin: Any
) -> None:
    origin.set("/x", b"boom", status=503)
    http = HttpUpstream(origin.url, timeouts=TIMEOUTS, name="web")
    chain = await start_chain(chains, OriginChain([closed_http(), http]))
    response = await chain.request("GET", "/x", [])
    assert response.status == 503
    assert await read_body(response) == b"boom"


async def test_post_is_not_resent_after_a_500(
    chains: list[OriginChain], origin: Any, root: Path
) -> None:
    origin.set("/api/v1/upload", b"failed", status=500)
    http = HttpUpstream(origin.url, timeouts=TIMEOUTS, name="web")
    chain = await start_chain(chains, OriginChain([http, FsOrigin(root, name="disk")]))
    response = await chain.request("POST", "/api/v1/upload", [], b"payload")
    assert response.status == 500  # it may have acted: not sent again
    await read_body(response)
    assert chain.counters()["disk"]["requests"] == 0
    # A refused connection never reached the origin: a POST may go to the next one.
    chain2 = await start_chain(chains, OriginChain([closed_http(), http]))
    response = await chain2.request("POST", "/api/v1/upload", [], b"payload")
    assert response.status == 500
    await read_body(response)


async def test_origin_skipped_after_failures_then_retried(
    chains: list[OriginChain], root: Path
) -> None:
    chain = await start_chain(chains, build_origin_chain(
        [origin_config(name="dead", type="http", url=f"http://127.0.0.1:{free_port()}"),
         origin_config(name="disk", type="fs", root=str(root))],
        retry_after=0.5, failures=3,
    ))
    for _ in range(3):
        response = await chain.request("GET", "/v/abc/master.m3u8", [])
        assert await read_body(response) == b"#EXTM3U\n"
    dead = chain.counters()["dead"]
    assert (dead["requests"], dead["failures"], dead["consecutive_failures"], dead["up"]) == (
        3, 3, 3, False)
    assert dead["breaker"] == "open" and not dead["checked"]  # a closed port: no checks here
    for _ in range(5):  # skipped: not even tried
        response = await chain.request("GET", "/v/abc/master.m3u8", [])
        assert response.status == 200
        response.close()
    assert chain.counters()["dead"]["requests"] == 3
    assert chain.counters()["disk"]["requests"] == 8
    await asyncio.sleep(0.55)
    assert chain.counters()["dead"]["state"] == "half_open"  # one request may try it
    response = await chain.request("GET", "/v/abc/master.m3u8", [])  # tried again: fails
    assert response.status == 200
    response.close()
    counters = chain.counters()["dead"]
    assert counters["requests"] == 4 and not counters["up"]  # one more failure: down again


async def test_all_down_origins_are_still_tried(chains: list[OriginChain], root: Path) -> None:
    dead = closed_http()
    chain = await start_chain(chains, OriginChain([dead], failures=1, retry_after=60))
    for _ in range(3):
        with pytest.raises(FetchFailed):
            await chain.request("GET", "/x", [])
    assert chain.counters()["dead"]["requests"] == 3  # down, but the only one: tried


async def test_chain_rejects_duplicate_names(root: Path) -> None:
    with pytest.raises(ValueError):
        OriginChain([FsOrigin(root, name="x"), FsOrigin(root, name="x")])
    with pytest.raises(ValueError):
        OriginChain([])


@pytest.mark.slow
async def test_chain_over_s3_and_fs(
    chains: list[OriginChain], root: Path, s3_endpoint: str, bucket: str  # noqa: F811
) -> None:
    """S3 first, the disk as the replica: S3's answer wins while it is up."""
    chain = await start_chain(chains, build_origin_chain([
        origin_config(name="s3", type="s3", bucket=bucket, prefix="media",
                      endpoint_url=s3_endpoint, region="us-east-1"),
        origin_config(name="disk", type="fs", root=str(root)),
    ]))
    response = await chain.request("GET", "/v/abc/seg_00001.m4s", [])
    assert await read_body(response) == b"\x00" * 3000
    assert chain.counters()["disk"]["requests"] == 0
