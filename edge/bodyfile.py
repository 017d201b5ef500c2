"""Large cached bodies kept in memory files, so that a HIT leaves with ``sendfile(2)``.

Why: profiling 64 KiB Range HITs of a 1 MiB object (docs/benchmarks.md) showed the node's
biggest single cost was the kernel copying each slice from the Python ``bytes`` into socket
buffers (``_copy_from_iter``, ~19 % of the node's CPU). nginx does not pay it: its cache is a
file and ``sendfile`` hands page references to the socket. A body held in an anonymous memory
file (``memfd_create(2)``) can be sent the same way, while staying in memory like every other
cached body (memfd pages are RAM, not disk; they are charged to the cache budget as before).

:class:`FileBody` is a read-only ``mmap`` of that file, so everything that treats a body as
bytes keeps working with zero copies (``len``, ``memoryview`` slices written to a transport,
``bytes(...)`` when really needed); ``fd`` is what ``sendfile`` reads from. The file is sealed
(no write, grow or shrink) once filled: a cached response is immutable, and the seals make the
kernel enforce it.

Lifetime: nothing closes a ``FileBody`` explicitly. An evicted entry may still be in flight
(a slow client's transport buffer holding a ``memoryview`` of the map), so the map lives as
long as any view of it, and the descriptor is closed when the object itself is collected.

Small bodies (below ``sendfile_min_bytes``, 64 KiB by default) stay ``bytes``: a descriptor
per playlist would cost more than the copy it saves, and a HIT of a small object is written
together with its head in one ``write``. When a descriptor cannot be had (``EMFILE``, no
``memfd_create`` on this platform) the body stays ``bytes`` too: slower, never wrong.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import resource
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("reelcdn.bodyfile")

MEMFD_AVAILABLE: bool = hasattr(os, "memfd_create")
"""Whether this platform has ``memfd_create`` (Linux); without it bodies stay ``bytes``."""

_SEALS = getattr(fcntl, "F_SEAL_SEAL", 0) | getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(
    fcntl, "F_SEAL_GROW", 0
) | getattr(fcntl, "F_SEAL_WRITE", 0)

# writev(2) takes at most IOV_MAX (1024 on Linux) buffers per call.
_IOV_MAX = 1024


class FileBody(mmap.mmap):
    """A cached body: a read-only shared map of a sealed memory file, plus its descriptor."""

    __slots__ = ("fd",)

    fd: int

    def __new__(cls, fd: int, size: int) -> FileBody:
        body = super().__new__(cls, fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        body.fd = fd
        return body

    def __del__(self) -> None:
        fd = getattr(self, "fd", -1)
        if fd >= 0:
            self.fd = -1
            os.close(fd)

    def __repr__(self) -> str:
        return f"<FileBody fd={self.fd} size={len(self)}>"


class _Counts(Protocol):
    body_files: int
    body_file_fallbacks: int


class BodyFiles:
    """Makes cached bodies: a :class:`FileBody` when large enough and possible, else ``bytes``.

    One per node; counts what it did in the node's stats (``reelcdn_body_files`` and
    ``reelcdn_body_file_fallbacks`` in ``/metrics``).
    """

    def __init__(self, min_bytes: int, counts: _Counts) -> None:
        self.min_bytes = min_bytes
        self.counts = counts
        self._warned = False

    def make(self, chunks: Sequence[bytes], size: int) -> bytes | FileBody:
        """The body assembled from ``chunks`` (``size`` bytes in all)."""
        if self.min_bytes <= 0 or size < self.min_bytes or not MEMFD_AVAILABLE:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            body = file_body(chunks, size)
        except OSError as exc:
            self.counts.body_file_fallbacks += 1
            if not self._warned:
                self._warned = True
                hint = " (raise the open-files limit)" if exc.errno == errno.EMFILE else ""
                log.warning("cannot keep bodies in memory files, storing bytes: %s%s", exc, hint)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.counts.body_files += 1
        return body


def file_body(chunks: Sequence[bytes], size: int) -> FileBody:
    """Write ``chunks`` into a new sealed memory file and map it. Raises ``OSError``."""
    if size <= 0:
        raise ValueError("a memory file body must not be empty")
    fd = os.memfd_create("reelcdn-body", os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0))
    try:
        written = 0
        for first in range(0, len(chunks), _IOV_MAX):
            batch = list(chunks[first:first + _IOV_MAX])
            while batch:
                n = os.writev(fd, batch)
                written += n
                # A short write (rare for memory files) leaves the rest of the batch to redo.
                while batch and n >= len(batch[0]):
                    n -= len(batch[0])
                    batch.pop(0)
                if batch and n:
                    batch[0] = memoryview(batch[0])[n:]
        if written != size:
            raise ValueError(f"body is {written} bytes, expected {size}")
        if _SEALS:
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            except OSError:
                pass  # sealing is a safety net, not a requirement (old kernels)
        return FileBody(fd, size)
    except BaseException:
        os.close(fd)
        raise


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one: large bodies each hold a descriptor.

    Returns the (soft, hard) limit now in force. Never lowers anything; failures are ignored
    (the store falls back to ``bytes`` when descriptors run out).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return soft, hard
