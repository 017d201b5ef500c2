"""The filesystem origin: objects are files under a root directory.

This is the default origin store (docs/overview.md) and the one a shield reads on every miss, so it
is written for two things: never serving anything outside the root, and never blocking the
event loop that also serves the shield's cache hits.

Containment. The target goes through :func:`~reelcdn.shield.paths.resolve_key` (no dot
segments, no backslashes, ...), but symlinks inside the root may still lead outside it. So the
real path is checked against the real root *before* opening (so a file outside is never even
opened: opening a FIFO or a device has side effects), and the opened descriptor's own path
(``/proc/self/fd``) is checked again *after* opening, which closes the race where a directory
is swapped for a symlink between the check and the open. A symlink leading outside answers
**404**, not 403: from a client's point of view no such object exists in the store, a 403
would confirm to a prober that the name is special, and a 404 is what negative caching already
handles; the operator gets a warning in the log instead.

One open per request. Size, ETag and Last-Modified come from ``fstat`` of the descriptor that
is then read, so a file replaced during the request cannot give a head of one file and the
body of another; a file truncated while read fails the body (502) instead of sending short.
The descriptor is opened with ``O_NONBLOCK`` so a FIFO planted under the root cannot hang a
thread, and anything but a regular file is a 404.

Threads. Every filesystem call (``realpath``, ``open``, ``fstat``, ``pread``) runs in the
origin's own small thread pool, so a slow disk stalls fills, not the shield's cache hits, and
the default executor (used by asyncio for DNS) is left alone. A file of at most one chunk
(256 KiB: playlists, ``meta.json``, most short-video segments) is read in the same thread hop
as the open and its descriptor closed at once.

Per-file headers. A file may have a sidecar, ``{dir}/.headers/{name}``
(:mod:`reelcdn.shield.sidecar`; the origin store writes one for every object it publishes
with a Cache-Control): its Cache-Control, Content-Type and Content-Disposition are sent with
the file (Cache-Control on a 304 too, RFC 9110 §15.4.5), so the freshness of ``meta.json``
comes from its publisher, short while the video is processing and long once it is ready. The
sidecar is read in the thread hop that opens the file, *before* the file (the store writes the
file first and its sidecar second: see :func:`reelcdn.origin.storage.write_sidecar`), under
the same containment checks; a missing one changes nothing, a malformed or unreadable one is
ignored with a warning, never an error. Dot-leading path segments (``.headers``,
``.staging``, temporary files) are never served: 404.

Conditional requests (If-None-Match weak comparison, If-Modified-Since, and the If-Match /
If-Unmodified-Since preconditions) are evaluated by :func:`reelcdn.edge.http.conditional.evaluate`,
the same code the cache node uses toward its clients. Range requests are not answered here:
the node fills whole objects and slices ranges itself.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor

from reelcdn.edge.fetch.contract import FetchFailed, Upstream, UpstreamResponse
from reelcdn.edge.http.conditional import evaluate
from reelcdn.edge.http.dates import format_http_date

from .content_types import content_type_bytes
from .paths import OriginRefused, resolve_key
from .sidecar import MAX_BYTES as SIDECAR_MAX_BYTES
from .sidecar import parse as parse_sidecar
from .sidecar import sidecar_path
from .threaded import ThreadedBodyResponse

__all__ = ["CHUNK_SIZE", "FsOrigin", "FsResponse", "simple_response"]

log = logging.getLogger("reelcdn.shield")

CHUNK_SIZE = 256 * 1024
ALLOWED_METHODS = ("GET", "HEAD")
_PROC_FD = "/proc/self/fd"
_HAS_PROC_FD = sys.platform.startswith("linux") and os.path.isdir(_PROC_FD)
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class FsResponse(ThreadedBodyResponse):
    """A response whose body is already in memory, or is read from an open descriptor."""

    SOURCE = "filesystem"

    __slots__ = ("status", "headers", "_data", "_fd", "_offset", "_end", "_executor",
                 "_pending", "_closed")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        data: bytes = b"",
        *,
        fd: int | None = None,
        size: int = 0,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self._data = data
        self._fd = fd
        self._offset = 0
        self._end = size
        self._executor = executor
        self._pending: asyncio.Future[bytes] | None = None
        self._closed = False

    async def chunks(self, idle_timeout: float) -> AsyncIterator[bytes]:
        """The body: the in-memory bytes, or ``pread`` chunks of 256 KiB in a thread."""
        if self._data:
            data, self._data = self._data, b""
            yield data
        if self._fd is None:
            return
        while self._offset < self._end and not self._closed:
            want = min(CHUNK_SIZE, self._end - self._offset)
            chunk = await self._read_in_thread(idle_timeout, os.pread, self._fd, want,
                                               self._offset)
            if not chunk:
                raise FetchFailed(502, "file shrank while it was read")
            self._offset += len(chunk)
            yield chunk
        self._close_fd()

    def release(self) -> None:
        self._close_fd()

    def close(self) -> None:
        self._close_fd()

    def _close_fd(self) -> None:
        """Close the descriptor, after the read in flight if there is one: closing it under a
        running ``pread`` could let the number be reused and another file be read."""
        self._closed = True
        self._data = b""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda _: os.close(fd))
            return
        os.close(fd)


def simple_response(
    status: int, text: str, extra: Iterable[tuple[bytes, bytes]] = ()
) -> FsResponse:
    """A small text answer (404, 405, ...) in the shape every origin uses."""
    body = (text + "\n").encode()
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        *extra,
    ]
    return FsResponse(status, headers, body)


def etag_for(st: os.stat_result) -> str:
    """Strong ETag from size and mtime in nanoseconds, nginx-style hex: cheap, changes on any
    rewrite that touches the file's mtime (a same-size rewrite within the same nanosecond is
    the accepted blind spot, as for nginx and Apache)."""
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


class _Opened:
    """What the opening thread hands back: a refusal, or a regular file, its metadata and the
    fields of its sidecar."""

    __slots__ = ("status", "reason", "fd", "st", "data", "fields")

    def __init__(
        self,
        status: int,
        reason: str = "",
        fd: int | None = None,
        st: os.stat_result | None = None,
        data: bytes = b"",
        fields: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.fd = fd
        self.st = st
        self.data = data
        self.fields = fields or []


class FsOrigin(Upstream):
    """Serve GET and HEAD from the files under ``root``."""

    def __init__(self, root: str | os.PathLike[str], *, name: str | None = None,
                 threads: int = 8) -> None:
        super().__init__()
        self.root = os.path.realpath(os.fspath(root))
        self.name = name or f"fs:{self.root}"
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="shield-fs")

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        """Answer from the file the target names; only I/O errors raise ``FetchFailed``."""
        if self._executor is None:
            raise RuntimeError("Upstream.start() was not called")
        response = await self._answer(method, target, headers)
        self.observe(self.name, response.status)
        return response

    async def _answer(
        self, method: str, target: str, headers: Iterable[tuple[bytes | str, bytes | str]]
    ) -> FsResponse:
        if method not in ALLOWED_METHODS:
            return simple_response(405, "method not allowed", [(b"Allow", b"GET, HEAD")])
        try:
            key = resolve_key(target)
        except OriginRefused as refused:
            return simple_response(refused.status, refused.reason)
        if any(segment.startswith(".") for segment in key.split("/")):
            return simple_response(404, "not found")  # sidecars, staging, temporary files
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._executor, self._open, key, method == "GET")
        try:
            opened = await asyncio.shield(pending)
        except asyncio.CancelledError:
            pending.add_done_callback(_close_unclaimed)  # the thread still opens the file
            raise
        except OSError as exc:
            failure = FetchFailed(502, f"{self.name}: {exc.strerror or exc}")
            self.observe(self.name, failure.status)
            raise failure from exc
        if opened.st is None:
            return simple_response(opened.status, opened.reason)
        st = opened.st
        etag = etag_for(st)
        last_modified = format_http_date(st.st_mtime)
        fields = _request_fields(headers)
        outcome = evaluate(
            method,
            200,
            if_match=fields.get("if-match"),
            if_none_match=fields.get("if-none-match"),
            if_modified_since=fields.get("if-modified-since"),
            if_unmodified_since=fields.get("if-unmodified-since"),
            etag=etag,
            last_modified=last_modified,
        )
        validators = [(b"ETag", etag.encode()), (b"Last-Modified", last_modified.encode())]
        given = dict(opened.fields)
        cache_control = given.get(b"Cache-Control")
        if cache_control is not None:
            validators.append((b"Cache-Control", cache_control))
        if outcome is not None:
            if opened.fd is not None:
                os.close(opened.fd)
            if outcome == 304:
                return FsResponse(304, validators)
            return simple_response(outcome, "precondition failed")
        head = [
            (b"Content-Type", given.get(b"Content-Type") or content_type_bytes(key)),
            (b"Content-Length", str(st.st_size).encode()),
            *validators,
            (b"Accept-Ranges", b"bytes"),
        ]
        disposition = given.get(b"Content-Disposition")
        if disposition is not None:
            head.append((b"Content-Disposition", disposition))
        if method == "HEAD" or opened.fd is None:
            return FsResponse(200, head, opened.data)
        return FsResponse(200, head, fd=opened.fd, size=st.st_size, executor=self._executor)

    def _open(self, key: str, read: bool) -> _Opened:
        """In a thread: read the sidecar of ``key``, open ``key`` under the root, check what
        was opened, and read it whole if it is small. Missing, outside or not a regular file
        → a status, never an error."""
        path = os.path.join(self.root, key)
        real = os.path.realpath(path)
        if not self._inside(real):
            log.warning("%s: %s resolves outside the root (%s): refused", self.name, key, real)
            return _Opened(404, "not found")
        fields = self._sidecar(key, real)  # before the file: the store writes it after
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP,
                             errno.EISDIR, errno.ENXIO):
                return _Opened(404, "not found")
            if exc.errno in (errno.EACCES, errno.EPERM):
                return _Opened(403, "forbidden")
            raise
        keep = False  # whether the descriptor goes to the response (a large GET)
        try:
            if _HAS_PROC_FD and not self._inside(os.readlink(f"{_PROC_FD}/{fd}")):
                # Swapped for a symlink between the realpath check and the open.
                log.warning("%s: %s changed to point outside the root: refused", self.name, key)
                return _Opened(404, "not found")
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return _Opened(404, "not found")
            if not read:  # HEAD: metadata only
                return _Opened(200, st=st, fields=fields)
            if st.st_size <= CHUNK_SIZE:
                data = os.pread(fd, st.st_size, 0) if st.st_size else b""
                if len(data) != st.st_size:
                    raise OSError(errno.EIO, "file shrank while it was read")
                return _Opened(200, st=st, data=data, fields=fields)
            keep = True
            return _Opened(200, fd=fd, st=st, fields=fields)
        finally:
            if not keep:
                os.close(fd)

    def _sidecar(self, key: str, real: str) -> list[tuple[bytes, bytes]]:
        """In the opening thread: the fields of the sidecar of the file at ``real``, with the
        file's containment checks; none when there is no sidecar or it cannot be used (a
        warning says why: the file is still served, as if it had none)."""
        path = os.path.realpath(sidecar_path(real))
        if not self._inside(path):
            log.warning("%s: the sidecar of %s resolves outside the root: ignored", self.name, key)
            return []
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("%s: the sidecar of %s cannot be opened (%s): ignored", self.name,
                            key, exc.strerror)
            return []
        try:
            if _HAS_PROC_FD and not self._inside(os.readlink(f"{_PROC_FD}/{fd}")):
                log.warning("%s: the sidecar of %s changed to point outside the root: ignored",
                            self.name, key)
                return []
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                log.warning("%s: the sidecar of %s is not a regular file: ignored", self.name, key)
                return []
            data = os.pread(fd, SIDECAR_MAX_BYTES + 1, 0)
        except OSError as exc:
            log.warning("%s: the sidecar of %s cannot be read (%s): ignored", self.name, key,
                        exc.strerror or exc)
            return []
        finally:
            os.close(fd)
        try:
            return parse_sidecar(data)
        except ValueError as exc:
            log.warning("%s: the sidecar of %s is malformed (%s): ignored", self.name, key, exc)
            return []

    def _inside(self, real: str) -> bool:
        return real.startswith(self.root + os.sep) if self.root != os.sep else True


def _close_unclaimed(pending: asyncio.Future[_Opened]) -> None:
    """The request was cancelled while its file was being opened: close what was opened."""
    if not pending.cancelled() and pending.exception() is None:
        fd = pending.result().fd
        if fd is not None:
            os.close(fd)


def _request_fields(
    headers: Iterable[tuple[bytes | str, bytes | str]],
) -> dict[str, str]:
    """The conditional request fields, lower-cased names, repeated fields joined by commas."""
    wanted = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
    found: dict[str, str] = {}
    for name, value in headers:
        key = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
        if key in wanted:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found
