"""The origin's object store: where transcoded videos are written for the shield to serve.

One interface, two backends, both laid out as the shield's origins read them
(docs/overview.md, "URL scheme"): the key of ``/v/{video_id}/360p/seg_00000.m4s`` is
``v/{video_id}/360p/seg_00000.m4s``.

- :class:`FsStore` ``(root)``: files under a directory, the layout the shield's ``fs`` origin
  serves (``{root}/v/{video_id}/...``). A file's ``cache_control`` (and ``content_type`` when
  one is given; else the shield derives it from the extension) goes into its sidecar,
  ``{dir}/.headers/{name}`` (:mod:`reelcdn.shield.sidecar`, written by
  :func:`write_sidecar`), which the shield's ``fs`` origin sends with the file.
- :class:`S3Store` ``(bucket, prefix, client)``: objects under a key prefix of a bucket
  (boto3, any S3 API), the layout the shield's ``s3`` origin serves; ``Content-Type`` (from
  the extension unless given) and ``Cache-Control`` are stored with each object.

Keys are relative ``/``-separated paths: no leading ``/``, no empty, ``.`` or ``..`` segment,
no backslash or control character (:class:`ValueError` otherwise), so a key can never name
something outside the store.

:meth:`ObjectStore.publish_dir` is how a finished rendition becomes visible: readers (players
following ``meta.json``) never find half of one.

- fs: the directory is copied into a staging directory on the same filesystem
  (``{root}/.staging/publish/``), then renamed onto the destination. A new destination is one
  ``rename``; an existing one is swapped with ``renameat2(RENAME_EXCHANGE)`` (Linux ≥ 3.15,
  most local filesystems), so at every instant the path holds either the whole old or the
  whole new directory. Where the exchange is not supported the old directory is renamed aside
  first: for the microseconds between the two renames the path does not exist (a reader gets
  a 404, never a mixture).
- S3 has no rename: every object is uploaded first and the rendition's ``index.m3u8`` last,
  then objects left from an earlier, longer publish are deleted. ``meta.json`` (written by the
  caller after ``publish_dir`` returns) is what lists the segments, so a reader following it
  never meets a missing one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from reelcdn.shield import sidecar
from reelcdn.shield.content_types import content_type_for
from reelcdn.shield.paths import join_key

__all__ = ["FsStore", "ObjectStore", "S3Store", "check_key", "write_sidecar"]

PLAYLIST_NAME = "index.m3u8"
"""Published last by :meth:`S3Store.publish_dir`: the object that makes a rendition whole."""
STAGING = ".staging/publish"
"""Under an :class:`FsStore` root, beside ``v/``: same filesystem, so renames are atomic."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def check_key(key: str, *, prefix: bool = False) -> str:
    """*key* if it is a plain relative object key, else ValueError (a ``prefix`` may end in /)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"object key must be a non-empty string (got {key!r})")
    body = key[:-1] if prefix and key.endswith("/") else key
    if body.startswith("/") or _CONTROL.search(body) or any(
            part in ("", ".", "..") for part in body.split("/")):
        raise ValueError(f"object key {key!r}: use a relative path without empty, '.' or '..'"
                         " segments, backslashes or control characters")
    return key


def _dir_prefix(prefix: str) -> str:
    """A key prefix as a directory: ``v/abc`` and ``v/abc/`` both mean ``v/abc/``."""
    return check_key(prefix, prefix=True).rstrip("/") + "/"


def _rule_for(rules: dict[str, str], name: str) -> str | None:
    """The Cache-Control *rules* give the file *name*: by file name, else by extension."""
    return rules.get(name.rsplit("/", 1)[-1]) or rules.get(os.path.splitext(name)[1])


def _local_files(local_dir: Path) -> list[str]:
    """Relative ``/`` paths of the regular files under *local_dir*, sorted."""
    if not local_dir.is_dir():
        raise NotADirectoryError(f"not a directory: {local_dir}")
    out = []
    for path in local_dir.rglob("*"):
        if sidecar.HEADERS_DIR in path.relative_to(local_dir).parts:
            continue  # headers of a file, not an object (a copy of a published directory)
        if path.is_symlink():
            raise ValueError(f"refusing to publish a symlink: {path}")
        if path.is_file():
            out.append(path.relative_to(local_dir).as_posix())
    return sorted(out)


class ObjectStore(Protocol):
    """What a transcoding worker writes through."""

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None,
                 cache_control: str | None = None) -> None: ...

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None,
                  cache_control: str | None = None) -> None: ...

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; KeyError when there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the directory *prefix*; returns how many (fs: 0 or 1)."""
        ...

    def publish_dir(self, local_dir: str | os.PathLike[str], key_prefix: str,
                    cache_control: dict[str, str] | None = None) -> list[str]:
        """Make *local_dir*'s files the objects under *key_prefix*, all at once for readers.

        *cache_control* maps a file name (``index.m3u8``) or an extension (``.m4s``) to a
        Cache-Control value. Returns the published keys.
        """
        ...


# --------------------------------------------------------------------------- filesystem


def _renameat2() -> Any:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)  # glibc >= 2.28
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2() if os.uname().sysname == "Linux" else None
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); False when unsupported."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def write_sidecar(path: str | os.PathLike[str], *, cache_control: str | None = None,
                  content_type: str | None = None) -> None:
    """Write the sidecar of the file at *path* (``{dir}/.headers/{name}``), or remove it when
    no field is given, so a file rewritten without headers does not keep its old ones.

    Atomic: written beside its final name and renamed into place, so a reader finds the old
    sidecar or the whole new one. ValueError for a value a sidecar may not hold (CR, LF, ...).

    Order, when a file and its headers both change: the **file first, then its sidecar**
    (:meth:`FsStore._write`), and the fs origin reads the sidecar *before* it opens the file.
    So a reader that finds the new headers also finds the new file; the one mixture it can
    meet, for the moment between the two renames, is the new file with the old headers. That
    is the harmless mixture for the change this store makes: ``meta.json`` goes from
    ``max-age=2`` (processing) to ``max-age=86400`` (ready), so the mixture is the ready meta
    kept 2 s too briefly (and its revalidation, a 304 with the new Cache-Control, fixes it),
    while the other order could show the *processing* meta with the day-long headers, kept
    by every tier for a day. (A change from long to short freshness would want the other
    order; nothing here makes one: a ready video never goes back to processing.) A file
    written for the first time has no sidecar for that moment: the shield sends no
    Cache-Control and the node's heuristic gives a file just modified no freshness.
    """
    fields = _sidecar_fields(cache_control, content_type)
    target = Path(sidecar.sidecar_path(path))
    if not fields:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            target.unlink()
        return
    data = sidecar.render(fields)
    target.parent.mkdir(mode=0o755, exist_ok=True)
    _replace_file(target, lambda out: out.write(data))


def _sidecar_fields(cache_control: str | None, content_type: str | None) -> dict[str, str]:
    return {name: value for name, value in (("Cache-Control", cache_control),
                                            ("Content-Type", content_type)) if value}


def _replace_file(target: Path, fill: Callable[[Any], object]) -> None:
    """Write *target* beside its final name and rename it into place: a reader sees the old
    file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class FsStore:
    """Objects as files under *root* (the shield's ``fs`` origin layout), each with its
    sidecar of headers when it was written with a ``cache_control`` or ``content_type``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FsStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file that holds *key* (ValueError for a key inside a sidecar directory)."""
        if sidecar.HEADERS_DIR in check_key(key).split("/"):
            raise ValueError(f"object key {key!r}: {sidecar.HEADERS_DIR} holds headers")
        return self.root / key

    @contextlib.contextmanager
    def _staging(self, name: str) -> Iterator[Path]:
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=staging))
        try:
            os.chmod(work, 0o755)  # mkdtemp makes 0700; the tree is served to the world
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None,
                 cache_control: str | None = None) -> None:
        with open(path, "rb") as src:
            self._write(key, lambda out: shutil.copyfileobj(src, out, 1 << 20),
                        cache_control, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None,
                  cache_control: str | None = None) -> None:
        self._write(key, lambda out: out.write(data), cache_control, content_type)

    def _write(self, key: str, fill: Callable[[Any], object], cache_control: str | None,
               content_type: str | None) -> None:
        """Write an object beside its final name and rename it into place (a reader sees the
        old file or the whole new one, never a part), then its sidecar (:func:`write_sidecar`
        says why in this order)."""
        target = self.path(key)
        sidecar.render(_sidecar_fields(cache_control, content_type))  # bad values: refused
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace_file(target, fill)
        write_sidecar(target, cache_control=cache_control, content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        """Remove the directory *prefix*, its files' sidecars with it: renamed into staging
        first (gone for readers at once), then deleted."""
        target = self.root / _dir_prefix(prefix).rstrip("/")
        if not target.is_dir():
            return 0
        with self._staging("delete") as work:
            os.rename(target, work / "gone")
        return 1

    def publish_dir(self, local_dir: str | os.PathLike[str], key_prefix: str,
                    cache_control: dict[str, str] | None = None) -> list[str]:
        local_dir = Path(local_dir)
        files = _local_files(local_dir)
        prefix = _dir_prefix(key_prefix)
        target = self.root / prefix.rstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._staging(target.name) as work:
            fresh = work / "new"
            # A copy, not a move: *local_dir* may be on another filesystem (a scratch disk).
            shutil.copytree(local_dir, fresh, symlinks=False,
                            ignore=shutil.ignore_patterns(sidecar.HEADERS_DIR))
            # The sidecars go inside the directory, so the rename publishes them with it.
            rules = cache_control or {}
            for name in files:
                rule = _rule_for(rules, name)
                if rule:
                    write_sidecar(fresh / name, cache_control=rule)
            for dirpath, _dirnames, filenames in os.walk(fresh):
                os.chmod(dirpath, 0o755)
                for name in filenames:
                    os.chmod(os.path.join(dirpath, name), 0o644)
            try:
                os.rename(fresh, target)  # a new destination (fails when it exists)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                    raise
                if not exchange(fresh, target):  # now *fresh* holds the old directory
                    os.rename(target, work / "old")
                    os.rename(fresh, target)
        return [prefix + f for f in files]


# --------------------------------------------------------------------------- S3


class S3Store:
    """Objects under ``s3://bucket/prefix/`` through a boto3 S3 *client* (thread-safe)."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, *,
                 max_workers: int = 8) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.max_workers = max_workers

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    def _key(self, key: str) -> str:
        return join_key(self.prefix, check_key(key))

    @staticmethod
    def _extra(key: str, content_type: str | None, cache_control: str | None) -> dict[str, str]:
        extra = {"ContentType": content_type or content_type_for(key)}
        if cache_control:
            extra["CacheControl"] = cache_control
        return extra

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None,
                 cache_control: str | None = None) -> None:
        # upload_file switches to a multipart upload for large files, each part retried.
        self.client.upload_file(os.fspath(path), self.bucket, self._key(key),
                                ExtraArgs=self._extra(key, content_type, cache_control))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None,
                  cache_control: str | None = None) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                               **self._extra(key, content_type, cache_control))

    def _missing(self, exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc):
                raise KeyError(key) from None
            raise
        with contextlib.closing(answer["Body"]) as body:
            return body.read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc):
                return False
            raise
        return True

    def _list(self, prefix: str) -> list[str]:
        """Full keys (bucket prefix included) under the store key *prefix*."""
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=join_key(self.prefix, prefix)):
            keys += [obj["Key"] for obj in page.get("Contents", ())]
        return keys

    def _delete(self, full_keys: list[str]) -> None:
        for i in range(0, len(full_keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = full_keys[i:i + 1000]
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OSError(f"s3://{self.bucket}: cannot delete {first.get('Key')}: "
                              f"{first.get('Code')} {first.get('Message')}")

    def delete_prefix(self, prefix: str) -> int:
        keys = self._list(_dir_prefix(prefix))
        self._delete(keys)
        return len(keys)

    def publish_dir(self, local_dir: str | os.PathLike[str], key_prefix: str,
                    cache_control: dict[str, str] | None = None) -> list[str]:
        local_dir = Path(local_dir)
        files = _local_files(local_dir)
        prefix = _dir_prefix(key_prefix)
        rules = cache_control or {}

        def upload(name: str) -> None:
            self.put_file(prefix + name, local_dir / name, cache_control=_rule_for(rules, name))

        playlists = [f for f in files if f.rsplit("/", 1)[-1] == PLAYLIST_NAME]
        media = [f for f in files if f not in playlists]
        with ThreadPoolExecutor(max(1, self.max_workers), thread_name_prefix="s3-publish") as ex:
            list(ex.map(upload, media))  # re-raises the first failure; playlists not yet up
        for name in playlists:
            upload(name)
        published = {join_key(self.prefix, prefix + f) for f in files}
        self._delete([k for k in self._list(prefix) if k not in published])
        return [prefix + f for f in files]
