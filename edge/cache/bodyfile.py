"""Large cached bodies kept in memory files, so that a HIT leaves with ``sendfile(2)``.

Why: profiling 64 KiB Range HITs of a 1 MiB object (docs/benchmarks/2026-11-22.md) showed the node's
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

One descriptor per body: CPython's ``mmap`` keeps a duplicate of the descriptor it maps (for
``size()``/``resize()``), so a body used to hold two, and 3,000 cached 64 KiB objects took
6,000 of a 4096 limit. On Python 3.13+ the map is made with ``trackfd=False`` (no duplicate);
before that, the body adopts the map's own duplicate as its ``fd`` and closes the original
(the map closes its duplicate when collected). The duplicate is found without guessing: it is
the descriptor the next ``dup`` would return, checked to share the original's open file
description (same inode, same file offset, which dups share); when that check fails (another
thread opened or closed a descriptor at that moment) the body keeps both and counts two.

A descriptor budget (:data:`DESCRIPTORS`, per process like the descriptors themselves):
the node sets it at start from RLIMIT_NOFILE minus what client connections, upstream pools
and the disk tier may need (:func:`descriptor_budget`); once memory-file bodies hold that
many, new bodies are stored as ``bytes`` (and a body promoted from the disk tier is copied
into ``bytes``, see ``store.MemoryStore.insert``), so the cache never takes the descriptors
clients need.

Small bodies (below ``sendfile_min_bytes``, 64 KiB by default) stay ``bytes``: a descriptor
per playlist would cost more than the copy it saves, and a HIT of a small object is written
together with its head in one ``write``. When a descriptor cannot be had (``EMFILE``, no
``memfd_create`` on this platform) the body stays ``bytes`` too: slower, never wrong.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import mmap
import os
import resource
import sys
import threading
from collections.abc import Sequence
from typing import Any, Protocol

log = logging.getLogger("reelcdn.bodyfile")

MEMFD_AVAILABLE: bool = hasattr(os, "memfd_create")
"""Whether this platform has ``memfd_create`` (Linux); without it bodies stay ``bytes``."""

_SEALS = getattr(fcntl, "F_SEAL_SEAL", 0) | getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(
    fcntl, "F_SEAL_GROW", 0
) | getattr(fcntl, "F_SEAL_WRITE", 0)

# writev(2) takes at most IOV_MAX (1024 on Linux) buffers per call.
_IOV_MAX = 1024


# Python 3.13+: mmap(..., trackfd=False) maps without keeping a duplicate of the descriptor.
_TRACKFD_PARAM = sys.version_info >= (3, 13)
# File offsets that mark a descriptor while its duplicate is identified (see _shares_file).
_MARKS = itertools.count(1)


class _Descriptors:
    """Descriptors held by memory-file bodies in this process, and how many they may hold.

    ``held`` changes when a :class:`FileBody` is made or collected, which may happen on the
    disk tier's writer thread, hence the lock. ``budget`` is None until a node sets it
    (:func:`descriptor_budget`): no bound, as for tools and unit tests."""

    __slots__ = ("held", "budget", "_lock")

    def __init__(self) -> None:
        self.held = 0
        self.budget: int | None = None
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.held += count

    def room(self) -> bool:
        """Whether one more body may take a descriptor."""
        return self.budget is None or self.held < self.budget

    def over(self) -> bool:
        """Whether bodies hold more than the budget (a body mapped from the disk tier)."""
        return self.budget is not None and self.held > self.budget


DESCRIPTORS = _Descriptors()
"""This process's memory-file descriptors and their budget (``/metrics``:
``reelcdn_body_file_descriptors`` and ``reelcdn_body_file_descriptors_budget``)."""


def _shares_file(candidate: int, fd: int, mark: int) -> bool:
    """Whether ``candidate`` is a duplicate of ``fd``: same inode, and the file offset
    ``fd`` was just moved to (duplicates share one open file description, hence offset)."""
    try:
        if candidate == fd or os.lseek(candidate, 0, os.SEEK_CUR) != mark:
            return False
        mine, theirs = os.fstat(fd), os.fstat(candidate)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


class FileBody(mmap.mmap):
    """A cached body: a read-only shared map of a sealed memory file, plus its descriptor.

    ``FileBody(fd, size)`` takes ``fd`` over: once it returns, the body owns one descriptor
    (``fd``, not necessarily the number given) and the caller must not close what it passed.
    If it raises, ``fd`` is untouched and still the caller's."""

    __slots__ = ("fd", "_owned", "_held")

    fd: int

    def __new__(cls, fd: int, size: int) -> FileBody:
        if _TRACKFD_PARAM:
            body = super().__new__(cls, fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                                   trackfd=False)
            body.fd = body._owned = fd
            body._held = 1
            DESCRIPTORS.add(1)
            return body
        mark = next(_MARKS) % (1 << 30) + 1
        os.lseek(fd, mark, os.SEEK_SET)
        probe = os.dup(fd)  # the lowest free number: where mmap's own duplicate will go
        os.close(probe)
        body = super().__new__(cls, fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        if _shares_file(probe, fd, mark):
            os.close(fd)
            body.fd = probe  # the map's descriptor: the map closes it when collected
            body._owned = -1
            body._held = 1
        else:  # a race with another thread's open or close: keep both (rare)
            body.fd = body._owned = fd
            body._held = 2
        DESCRIPTORS.add(body._held)
        return body

    def close(self) -> None:
        """Unmap now (nothing in the node calls this; collection does it)."""
        super().close()
        self._release()

    def __del__(self) -> None:
        self._release()

    def _release(self) -> None:
        held = getattr(self, "_held", 0)
        if held:
            self._held = 0
            DESCRIPTORS.add(-held)
        owned = getattr(self, "_owned", -1)
        if owned >= 0:
            self._owned = -1
            os.close(owned)
        if held:
            self.fd = -1

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
        self._budget_logged = False

    def make(self, chunks: Sequence[bytes], size: int) -> bytes | FileBody:
        """The body assembled from ``chunks`` (``size`` bytes in all)."""
        if self.min_bytes <= 0 or size < self.min_bytes or not MEMFD_AVAILABLE:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not DESCRIPTORS.room():
            self.counts.body_file_fallbacks += 1
            if not self._budget_logged and DESCRIPTORS.budget:  # 0: said at start
                self._budget_logged = True
                log.info("memory-file bodies hold their whole descriptor budget (%s): further "
                         "large bodies are stored as bytes until some are evicted",
                         DESCRIPTORS.budget)
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


# Descriptors a node needs besides client connections, upstream pools and the disk tier:
# listeners, epoll, admin app and its connections, logs, resolver and executor threads.
BASE_RESERVE = 64
# And a share of the limit kept free for what scales with traffic beyond one descriptor per
# connection: a socket's duplicate while a slow client drains a sendfile (protocol.py),
# admin scrapes, origin files opened by a shield's filesystem connector.
HEADROOM_SHARE = 16  # 1/16 of the limit
# Descriptors an origin connector may hold at once, by type, when its config does not say.
ORIGIN_RESERVE = {"http": 256, "s3": 32, "fs": 64}
DISK_RESERVE = 16  # the disk tier's writer and the files being opened for promotion


def descriptor_reserve(config: Any, limit: int) -> dict[str, int]:
    """The descriptors a node with ``config`` keeps from memory-file bodies under an
    open-files ``limit``: ``{"clients", "upstream", "disk", "other"}``."""
    clients = config.limits.max_connections
    pool = config.upstream_max_connections
    origins = config.origins
    parents = config.parents
    if origins:
        upstream = sum(
            getattr(o, "max_connections", None) or ORIGIN_RESERVE.get(getattr(o, "type", ""), 64)
            for o in origins
        )
    else:  # one pool per parent (parents.ParentSet), or the one upstream's
        upstream = pool * max(1, len(parents))
    disk = DISK_RESERVE if config.cache_disk > 0 else 0
    return {"clients": clients, "upstream": upstream, "disk": disk,
            "other": BASE_RESERVE + limit // HEADROOM_SHARE}


def descriptor_budget(config: Any) -> int:
    """Set this process's memory-file budget for a node starting with ``config``.

    Raises the soft open-files limit to the hard one first (as nginx's
    ``worker_rlimit_nofile``), then gives memory-file bodies what the node's reserve
    (:func:`descriptor_reserve`) leaves; logs one line, a warning when the cache could hold
    more large bodies than that. Returns the budget (0: every body is stored as bytes)."""
    min_bytes = config.sendfile_min_bytes
    if min_bytes <= 0 or not MEMFD_AVAILABLE:
        DESCRIPTORS.budget = 0
        return 0
    soft, hard = raise_open_files_limit()
    reserve = descriptor_reserve(config, soft)
    budget = max(0, soft - sum(reserve.values()))
    DESCRIPTORS.budget = budget
    could_hold = config.cache_memory // min_bytes
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    line = (
        "open-files limit %d (hard %s): %d descriptors for memory-file bodies after %d for "
        "client connections (max_connections), %d upstream, %d disk tier, %d other"
    )
    args = (soft, hard_text, budget, reserve["clients"], reserve["upstream"], reserve["disk"],
            reserve["other"])
    if budget < could_hold:
        log.warning(line + "; the cache could hold %d bodies of %d bytes or more, the rest "
                    "are stored as bytes and sent by copying: raise the limit (ulimit -n, "
                    "systemd LimitNOFILE=) or lower max_connections to send them with sendfile",
                    *args, could_hold, min_bytes)
    else:
        log.info(line, *args)
    return budget


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
