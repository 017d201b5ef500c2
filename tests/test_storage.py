"""The origin object store: a real filesystem, and moto's S3 server over a socket."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from s3server import s3_endpoint  # noqa: F401  (a fixture)

from reelcdn.origin import storage
from reelcdn.origin.storage import FsStore, S3Store, check_key


def rendition(tmp: Path, tag: str, segments: int) -> Path:
    """A fake rendition whose every file names its version, and a playlist listing them."""
    d = tmp / f"src-{tag}-{segments}"
    d.mkdir()
    (d / "init.mp4").write_bytes(f"init {tag}".encode())
    names = [f"seg_{i:05d}.m4s" for i in range(segments)]
    for name in names:
        (d / name).write_bytes(f"{tag} {name}".encode() * 100)
    (d / "index.m3u8").write_text(f"#{tag}\n" + "".join(f"{n}\n" for n in names))
    return d


@pytest.mark.parametrize("key", ["", "/v/a", "v//a", "v/../a", "v/./a", "v\\a", "v/a\x00",
                                 "v/a\n"])
def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)
    with pytest.raises(ValueError):
        FsStore(tmp_path).put_bytes(key, b"x")


def test_fs_put_get_exists_delete(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    src = tmp_path / "file"
    src.write_bytes(b"segment")
    store.put_file("v/a/360p/seg_00000.m4s", src)
    store.put_bytes("v/a/meta.json", b"{}", cache_control="max-age=2")
    assert (tmp_path / "v/a/360p/seg_00000.m4s").read_bytes() == b"segment"
    assert (tmp_path / "v/a/meta.json").stat().st_mode & 0o777 == 0o644
    assert store.get_bytes("v/a/meta.json") == b"{}"
    assert store.exists("v/a/meta.json") and not store.exists("v/a/360p")
    with pytest.raises(KeyError):
        store.get_bytes("v/a/nothing")
    store.put_bytes("v/ab/meta.json", b"other")
    assert store.delete_prefix("v/a") == 1
    assert not store.exists("v/a/meta.json") and store.exists("v/ab/meta.json")
    assert store.delete_prefix("v/a/") == 0
    assert not list((tmp_path / storage.STAGING).iterdir())


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_fs_publish_dir_replaces_the_whole_directory(tmp_path: Path, exchange: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        monkeypatch.setattr(storage, "exchange", lambda a, b: False)
    store = FsStore(tmp_path / "root")
    keys = store.publish_dir(rendition(tmp_path, "one", 3), "v/a/360p")
    assert keys[0] == "v/a/360p/index.m3u8" and len(keys) == 5
    store.publish_dir(rendition(tmp_path, "two", 2), "v/a/360p")
    published = tmp_path / "root/v/a/360p"
    assert sorted(p.name for p in published.iterdir()) == [
        "index.m3u8", "init.mp4", "seg_00000.m4s", "seg_00001.m4s"]  # the 3rd is gone
    assert (published / "index.m3u8").read_text().startswith("#two")
    assert published.stat().st_mode & 0o777 == 0o755
    assert not list((tmp_path / "root" / storage.STAGING).iterdir())


@pytest.mark.skipif(storage._RENAMEAT2 is None, reason="no renameat2 on this platform")
def test_fs_readers_always_find_one_whole_rendition(tmp_path: Path) -> None:
    """While renditions of two versions replace each other, the directory always exists and
    always holds one version entirely: listing it and reading every file, a reader holding the
    directory open (as a path walk does) sees one version's complete set, never a mixture."""
    store = FsStore(tmp_path / "root")
    sources = [rendition(tmp_path, "one", 6), rendition(tmp_path, "two", 3)]
    expected = {src.name.split("-")[1]: sorted(p.name for p in src.iterdir())
                for src in sources}
    store.publish_dir(sources[0], "v/a/360p")
    target = tmp_path / "root/v/a/360p"
    stop = threading.Event()
    problems: list[str] = []
    seen: set[str] = set()

    def reader() -> None:
        while not stop.is_set():
            try:
                fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                problems.append("the rendition directory was missing")
                continue
            try:
                names = sorted(os.listdir(fd))
                with open(os.open("index.m3u8", os.O_RDONLY, dir_fd=fd)) as f:
                    tag = f.readline()[1:].strip()
                current = os.stat(target).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                continue  # an old version deleted under us after the swap: not a mixture
            finally:
                os.close(fd)
            if not current:
                continue  # swapped out (and being deleted) while we listed it
            seen.add(tag)
            if names != expected[tag]:
                problems.append(f"{tag}: {names}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            store.publish_dir(sources[i % 2], "v/a/360p")
    finally:
        stop.set()
        thread.join()
    assert seen == {"one", "two"}
    assert not problems, problems[:5]


# --------------------------------------------------------------------------- sidecars


def sidecar_of(root: Path, key: str) -> str | None:
    """The text of *key*'s sidecar under *root*, or None when it has none."""
    directory, name = key.rsplit("/", 1)
    path = root / directory / ".headers" / name
    return path.read_text() if path.exists() else None


def test_fs_writes_a_sidecar_beside_an_object_with_headers(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    src = tmp_path / "poster"
    src.write_bytes(b"jpeg")
    store.put_bytes("v/a/meta.json", b"{}", cache_control="max-age=2")
    store.put_file("v/a/poster.jpg", src, content_type="image/webp", cache_control="max-age=9")
    store.put_bytes("v/a/master.m3u8", b"#EXTM3U\n")  # no headers: no sidecar
    assert sidecar_of(tmp_path, "v/a/meta.json") == "Cache-Control: max-age=2\n"
    assert sidecar_of(tmp_path, "v/a/poster.jpg") == (
        "Cache-Control: max-age=9\nContent-Type: image/webp\n")
    assert sidecar_of(tmp_path, "v/a/master.m3u8") is None
    assert (tmp_path / "v/a/.headers/meta.json").stat().st_mode & 0o777 == 0o644
    # Rewritten: the sidecar follows; rewritten without headers: it goes.
    store.put_bytes("v/a/meta.json", b"{ }", cache_control="max-age=86400")
    assert sidecar_of(tmp_path, "v/a/meta.json") == "Cache-Control: max-age=86400\n"
    store.put_bytes("v/a/poster.jpg", b"png")
    assert sidecar_of(tmp_path, "v/a/poster.jpg") is None
    assert sorted(p.name for p in (tmp_path / "v/a/.headers").iterdir()) == ["meta.json"]


def test_fs_writes_the_object_then_its_sidecar(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The order write_sidecar's docstring argues for: each rename into place, in order."""
    store = FsStore(tmp_path)
    store.put_bytes("v/a/meta.json", b"processing", cache_control="max-age=2")
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str | Path) -> None:
        renames.append((os.path.relpath(dst, tmp_path),
                        sidecar_of(tmp_path, "v/a/meta.json") or ""))
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", replace)
    store.put_bytes("v/a/meta.json", b"ready", cache_control="max-age=86400")
    # The object is renamed while the old sidecar is in place; the sidecar after it.
    assert renames == [("v/a/meta.json", "Cache-Control: max-age=2\n"),
                       ("v/a/.headers/meta.json", "Cache-Control: max-age=2\n")]
    assert sidecar_of(tmp_path, "v/a/meta.json") == "Cache-Control: max-age=86400\n"


@pytest.mark.parametrize("value", ["max-age=2\r\nX-Evil: 1", "max-age=2\n", "a\x00b",
                                   " max-age=2", "x" * 1025, "max-age=2\u00e9"])
def test_fs_refuses_a_header_value_before_writing_anything(tmp_path: Path, value: str) -> None:
    store = FsStore(tmp_path)
    store.put_bytes("v/a/meta.json", b"old", cache_control="max-age=2")
    for headers in ({"cache_control": value}, {"content_type": value}):
        with pytest.raises(ValueError):
            store.put_bytes("v/a/meta.json", b"new", **headers)
        assert store.get_bytes("v/a/meta.json") == b"old"
        assert sidecar_of(tmp_path, "v/a/meta.json") == "Cache-Control: max-age=2\n"
    assert [p.name for p in (tmp_path / "v/a").iterdir() if p.name.endswith(".tmp")] == []


def test_fs_keys_inside_a_sidecar_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FsStore(tmp_path).put_bytes("v/a/.headers/meta.json", b"Cache-Control: max-age=1\n")
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_fs_publish_dir_carries_the_sidecars(tmp_path: Path, exchange: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        monkeypatch.setattr(storage, "exchange", lambda a, b: False)
    store = FsStore(tmp_path / "root")
    rules = {"index.m3u8": "max-age=60", ".m4s": "max-age=31536000, immutable"}
    source = rendition(tmp_path, "one", 2)
    (source / ".headers").mkdir()  # a caller's own sidecars are not objects, nor published
    (source / ".headers" / "init.mp4").write_text("Cache-Control: no-store\n")
    keys = store.publish_dir(source, "v/a/360p", rules)
    assert keys == [f"v/a/360p/{n}" for n in (
        "index.m3u8", "init.mp4", "seg_00000.m4s", "seg_00001.m4s")]
    root = tmp_path / "root"
    published = root / "v/a/360p"
    assert sorted(p.name for p in (published / ".headers").iterdir()) == [
        "index.m3u8", "seg_00000.m4s", "seg_00001.m4s"]  # init.mp4: no rule, no sidecar
    assert sidecar_of(root, "v/a/360p/index.m3u8") == "Cache-Control: max-age=60\n"
    assert sidecar_of(root, "v/a/360p/seg_00001.m4s") == (
        "Cache-Control: max-age=31536000, immutable\n")
    assert (published / ".headers").stat().st_mode & 0o777 == 0o755
    assert (published / ".headers/index.m3u8").stat().st_mode & 0o777 == 0o644
    # Published again under other rules: the sidecars are swapped with the directory.
    store.publish_dir(rendition(tmp_path, "two", 1), "v/a/360p", {".m4s": "max-age=5"})
    assert sorted(p.name for p in (published / ".headers").iterdir()) == ["seg_00000.m4s"]
    assert sidecar_of(root, "v/a/360p/seg_00000.m4s") == "Cache-Control: max-age=5\n"
    # Without rules, no sidecar directory at all.
    store.publish_dir(rendition(tmp_path, "three", 1), "v/a/360p")
    assert not (published / ".headers").exists()
    assert not list((root / storage.STAGING).iterdir())


def test_fs_delete_prefix_removes_the_sidecars(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    store.publish_dir(rendition(tmp_path, "one", 1), "v/a/360p", {".m4s": "max-age=60"})
    store.put_bytes("v/a/meta.json", b"{}", cache_control="max-age=2")
    assert sidecar_of(tmp_path, "v/a/360p/seg_00000.m4s") is not None
    assert store.delete_prefix("v/a") == 1
    assert not (tmp_path / "v/a").exists()
    assert not list((tmp_path / storage.STAGING).iterdir())


# --------------------------------------------------------------------------- S3


@pytest.fixture
def s3(s3_endpoint: str) -> S3Store:  # noqa: F811
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"origin-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Store(bucket, "media", client, max_workers=4)


@pytest.mark.slow
def test_s3_put_get_exists_delete(s3: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "seg"
    src.write_bytes(b"segment")
    s3.put_file("v/a/360p/seg_00000.m4s", src, cache_control="max-age=31536000, immutable")
    s3.put_bytes("v/a/meta.json", b"{}", cache_control="max-age=2")
    s3.put_bytes("v/ab/meta.json", b"other")
    head = s3.client.head_object(Bucket=s3.bucket, Key="media/v/a/360p/seg_00000.m4s")
    assert head["ContentType"] == "video/iso.segment"
    assert head["CacheControl"] == "max-age=31536000, immutable"
    assert s3.client.head_object(Bucket=s3.bucket,
                                 Key="media/v/a/meta.json")["ContentType"] == "application/json"
    assert s3.get_bytes("v/a/360p/seg_00000.m4s") == b"segment"
    assert s3.exists("v/a/meta.json") and not s3.exists("v/a/nothing")
    with pytest.raises(KeyError):
        s3.get_bytes("v/a/nothing")
    assert s3.delete_prefix("v/a") == 2
    assert not s3.exists("v/a/meta.json") and s3.exists("v/ab/meta.json")


@pytest.mark.slow
def test_s3_publish_dir_uploads_the_playlist_last_and_drops_leftovers(
        s3: S3Store, tmp_path: Path) -> None:
    order: list[str] = []
    s3.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: order.append(params["Key"]))
    rules = {"index.m3u8": "max-age=60", ".m4s": "max-age=31536000, immutable"}
    keys = s3.publish_dir(rendition(tmp_path, "one", 5), "v/a/360p", rules)
    assert len(keys) == 7 and len(order) == 7
    assert order[-1] == "media/v/a/360p/index.m3u8"
    order.clear()
    s3.publish_dir(rendition(tmp_path, "two", 2), "v/a/360p/", rules)
    assert order[-1] == "media/v/a/360p/index.m3u8"
    listed = sorted(o["Key"] for o in s3.client.list_objects_v2(
        Bucket=s3.bucket, Prefix="media/v/a/")["Contents"])
    assert listed == [f"media/v/a/360p/{n}" for n in (
        "index.m3u8", "init.mp4", "seg_00000.m4s", "seg_00001.m4s")]
    assert s3.get_bytes("v/a/360p/index.m3u8").startswith(b"#two")
    head = s3.client.head_object(Bucket=s3.bucket, Key="media/v/a/360p/index.m3u8")
    assert head["CacheControl"] == "max-age=60"
    assert head["ContentType"] == "application/vnd.apple.mpegurl"
    head = s3.client.head_object(Bucket=s3.bucket, Key="media/v/a/360p/init.mp4")
    assert "CacheControl" not in head
