"""The disk tier: the memory LRU's victims kept in files, an exclusive second LRU level.

Why (docs/benchmarks/2026-11-22.md, "Disk tier run" and the decision after it): a HIT from a
file in the page cache costs what a memory HIT costs, even a cold-disk read is about twice as
cheap as a miss to a parent on the same host, and a catalogue far larger than ``cache_memory``
gets several times the hit ratio from a few GiB of disk.

How it works with :class:`~reelcdn.edge.cache.store.MemoryStore` (which owns one ``DiskTier`` when
``cache_disk > 0``):

* **Demotion.** When the memory LRU evicts an entry whose body is at least ``min_bytes``, the
  store hands it to :meth:`DiskTier.put`. Its metadata (status, header pairs packed with
  ``marshal``, freshness, response time and initial age — so Age and staleness survive the
  round trip —, Vary) goes into an in-memory record, its body to a background thread that
  writes it to a file under the tier's own run directory. The event loop never writes a body:
  it only queues the job. The queue is bounded (``queue_bytes``, ``queue_entries``); a victim
  that does not fit is dropped and counted (``disk_dropped_writes``). Until its file is written
  a record keeps the entry itself, so it can be served (and promoted) from memory meanwhile.
* **The disk LRU** (an :class:`~reelcdn.extensions._lru_py.LruIndex`, compiled when built) is
  bounded by
  ``capacity`` bytes of files, each charged in whole 4 KiB blocks; evicting unlinks the file
  (in the background thread: unlinking a large file is not free either).
* **Promotion.** A memory miss asks :meth:`take`: a written record's file is opened and mapped
  read-only as a :class:`~reelcdn.edge.cache.bodyfile.FileBody` (bytes-like, and ``fd`` for
  ``sendfile``), the ``CacheEntry`` is rebuilt around it, leaves the disk index (exclusive
  tiers) and is inserted into memory by the store. Its file is kept while the entry is in
  memory (``entry.disk_path``): when memory evicts it again it is re-indexed without writing a
  byte; when it leaves memory otherwise (purge, replacement) the file is unlinked.
* **Vary.** Variants keep their storage keys; the tier remembers the Vary fields of the
  primary keys it holds, so a lookup that memory cannot resolve still finds its variant.

Files live in ``<cache_dir>/run-XXXXXXXX/``, one directory per tier, locked with ``flock`` for
as long as the tier lives. Nothing persists across restarts: a new tier removes every ``run-*``
directory whose lock it can take (left by a stopped or crashed process) and the tier removes its
own directory when it is closed, collected or the process exits. Two processes (workers) may
share one ``cache_dir``: each has its own directory and budget.

Threads: every method is called from the event loop's thread; the writer thread only touches
files, the job queue and the completion deque. Completions are applied on the loop thread
(``call_soon_threadsafe`` when a loop was running at the first demotion, and at the start of
every tier operation).

Known limit: a disk HIT whose file is no longer in the page cache is read by ``sendfile`` on
the event loop (``posix_fadvise(WILLNEED)`` is issued at promotion, which starts the read-ahead
but does not wait for it); see docs/benchmarks/2026-12-01.md, "Disk tier as built", for what a
cold read costs.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import fcntl
import logging
import marshal
import os
import queue
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reelcdn.edge.cache.bodyfile import FileBody
from reelcdn.edge.cache.entry import CacheEntry
from reelcdn.edge.metrics import NodeStats
from reelcdn.extensions import lru  # the compiled LRU index when built, else extensions/_lru_py.py

if TYPE_CHECKING:
    from reelcdn.edge.cache.freshness import Freshness
    from reelcdn.extensions._lru_py import LruIndex

log = logging.getLogger("reelcdn.disktier")

BLOCK = 4096
"""Files are charged to the disk budget in whole blocks of this size."""
DEFAULT_QUEUE_BYTES = 32 * 1024 * 1024
"""Body bytes waiting to be written, at most (one body larger than this is still accepted
when nothing else waits): memory held beyond ``cache_memory`` while writes catch up."""
DEFAULT_QUEUE_ENTRIES = 256
RUN_PREFIX = "run-"
_LOCK_NAME = ".lock"
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def disk_charge(size: int) -> int:
    """Bytes of the disk budget a body of ``size`` bytes takes (whole blocks)."""
    return (size + BLOCK - 1) // BLOCK * BLOCK


class _Record:
    """One object of the disk tier: what rebuilds its ``CacheEntry``, and its file."""

    __slots__ = (
        "key", "primary", "status", "fields", "freshness", "response_time", "initial_age",
        "vary", "hits", "size", "path", "entry", "written", "failed", "cancelled",
    )

    def __init__(self, entry: CacheEntry, path: str, pending: bool) -> None:
        self.key = entry.key
        self.primary = entry.primary
        self.status = entry.status
        # One bytes object instead of a list of tuples of bytes: ~4× less heap per record.
        self.fields = marshal.dumps(entry.headers)
        self.freshness: Freshness = entry.freshness
        self.response_time = entry.response_time
        self.initial_age = entry.initial_age
        self.vary = entry.vary
        self.hits = entry.hits
        self.size = len(entry.body)
        self.path = path
        # While the write is pending the record keeps the entry (and its body) itself.
        self.entry: CacheEntry | None = entry if pending else None
        self.written = not pending
        self.failed = False
        self.cancelled = False


# ---------------------------------------------------------------------------------------------
# The writer thread. It holds no reference to the tier (so a dropped tier is collected and its
# finalizer cleans up): only the channel's queue, deque and a weak reference for completions.

_STOP = ("stop",)


class _Channel:
    __slots__ = ("jobs", "done", "loop", "drain", "thread", "run_dir", "lock_fd", "__weakref__")

    def __init__(self, run_dir: str, lock_fd: int) -> None:
        self.run_dir = run_dir
        self.lock_fd = lock_fd  # closed by the writer once the run directory is gone
        self.jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.done: collections.deque[_Record] = collections.deque()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.drain: weakref.WeakMethod[Callable[[], None]] | None = None
        self.thread: threading.Thread | None = None

    def notify(self) -> None:
        loop, drain = self.loop, self.drain
        if loop is None or drain is None:
            return
        try:
            loop.call_soon_threadsafe(_call_weak, drain)
        except RuntimeError:
            pass  # the loop is closed: the next tier operation drains


def _call_weak(ref: weakref.WeakMethod[Callable[[], None]]) -> None:
    method = ref()
    if method is not None:
        method()


def _write_body(path: str, body: bytes | FileBody) -> None:
    fd = os.open(path, _WRITE_FLAGS, 0o600)
    try:
        size = len(body)
        done = 0
        if type(body) is FileBody and body.fd >= 0:
            while done < size:  # memory file → disk file inside the kernel
                n = os.sendfile(fd, body.fd, done, size - done)
                if n == 0:
                    raise OSError(f"short copy into {path}")
                done += n
        else:
            view = memoryview(body)
            while done < size:
                done += os.write(fd, view[done:])
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("disk tier: cannot remove %s: %s", path, exc)


def sweep_stale_runs(directory: str, keep: str | None = None) -> int:
    """Remove the ``run-*`` directories under ``directory`` that no live tier holds (their lock
    can be taken): files of a previous process. Returns how many went."""
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        path = os.path.join(directory, name)
        if not name.startswith(RUN_PREFIX) or path == keep:
            continue
        try:
            fd = os.open(os.path.join(path, _LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1  # a run directory without its lock is nobody's
        except OSError:
            continue
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live tier (this process or another) holds it
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        finally:
            if fd >= 0:
                os.close(fd)
    return removed


def _writer(channel: _Channel) -> None:
    jobs, done = channel.jobs, channel.done
    while True:
        job = jobs.get()
        kind = job[0]
        if kind == "stop":
            return
        try:
            if kind == "write":
                record, body = job[1], job[2]
                if not record.cancelled:
                    try:
                        _write_body(record.path, body)
                        record.written = True
                    except OSError as exc:
                        record.failed = True
                        log.warning("disk tier: cannot write %s: %s", record.path, exc)
                del body, job
                done.append(record)
                del record
                channel.notify()
            elif kind == "unlink":
                _unlink(job[1])
            elif kind == "sweep":
                count = sweep_stale_runs(job[1], job[2])
                if count:
                    log.info("disk tier: removed %d stale run directories under %s",
                             count, job[1])
            elif kind == "sync":
                job[1].set()
            elif kind == "rmtree":
                shutil.rmtree(channel.run_dir, ignore_errors=True)
                if channel.lock_fd >= 0:
                    os.close(channel.lock_fd)  # the run directory's lock, once it is gone
                    channel.lock_fd = -1
        except Exception:  # a bug must not stop the writer
            log.exception("disk tier: %s job failed", kind)


_LIVE: weakref.WeakSet[_Channel] = weakref.WeakSet()


_RMTREE = ("rmtree",)


@atexit.register
def _stop_all_at_exit() -> None:
    """At exit, let every writer finish its queue and remove its run directory."""
    for channel in list(_LIVE):
        thread = channel.thread
        if thread is not None and thread.is_alive():
            channel.jobs.put(_RMTREE)
            channel.jobs.put(_STOP)
            thread.join(timeout=10.0)


def _finalize(channel: _Channel) -> None:
    """The tier is closed or collected: its writer removes the run directory, then stops."""
    channel.jobs.put(_RMTREE)
    channel.jobs.put(_STOP)


# ---------------------------------------------------------------------------------------------


class DiskTier:
    """A byte-bounded LRU of cached responses kept in files (see the module docstring)."""

    def __init__(
        self,
        capacity: int,
        directory: str,
        *,
        min_bytes: int = 64 * 1024,
        counts: Any = None,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        queue_entries: int = DEFAULT_QUEUE_ENTRIES,
        index_type: Callable[[int], LruIndex] | None = None,
    ) -> None:
        """Create ``directory`` if missing and this tier's run directory inside it (raises
        ``OSError`` when it cannot); stale run directories are removed in the background."""
        self.directory = os.path.abspath(directory)
        self.min_bytes = max(1, min_bytes)
        # The node's NodeStats; a tier of its own (tests, tools) counts into a private one.
        self.counts = counts if counts is not None else NodeStats("disk-tier")
        self.queue_bytes = queue_bytes
        self.queue_entries = queue_entries
        self._index = (index_type or lru.LruIndex)(capacity)
        self._records: dict[str, _Record] = {}
        self._vary: dict[str, tuple[bytes, ...]] = {}
        self._variant_keys: dict[str, set[str]] = {}
        self._pending = 0
        self._pending_bytes = 0
        self._serial = 0
        os.makedirs(self.directory, exist_ok=True)
        self.run_dir, lock_fd = self._make_run_dir()
        self._prefix = self.run_dir + os.sep
        channel = self._channel = _Channel(self.run_dir, lock_fd)
        channel.drain = weakref.WeakMethod(self._drain)
        thread = threading.Thread(target=_writer, args=(channel,), daemon=True,
                                  name="reelcdn-disk-writer")
        channel.thread = thread
        thread.start()
        _LIVE.add(channel)
        self._finalizer = weakref.finalize(self, _finalize, channel)
        channel.jobs.put(("sweep", self.directory, self.run_dir))
        self._levels()

    def _make_run_dir(self) -> tuple[str, int]:
        """A fresh directory, locked, then renamed to ``run-*`` (a sweep never sees it
        unlocked)."""
        tmp = tempfile.mkdtemp(prefix="tmp-", dir=self.directory)
        fd = -1
        try:
            fd = os.open(os.path.join(tmp, _LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            final = os.path.join(self.directory, RUN_PREFIX + os.path.basename(tmp)[4:])
            os.rename(tmp, final)
            return final, fd
        except BaseException:
            if fd >= 0:
                os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # --------------------------------------------------------------------------------- views
    @property
    def capacity(self) -> int:
        return self._index.capacity

    @property
    def bytes(self) -> int:
        """Sum of the charges (whole blocks) of the objects the tier holds."""
        return self._index.bytes

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def keys(self) -> list[str]:
        """Storage keys, least recently demoted first."""
        return list(self._index)

    def vary_of(self, primary: str) -> tuple[bytes, ...]:
        return self._vary.get(primary, ())

    @property
    def pending(self) -> int:
        """Writes queued or in progress."""
        return self._pending

    def owns(self, path: str | None) -> bool:
        """Whether ``path`` is a file of this tier (a promoted entry's kept file)."""
        return path is not None and path.startswith(self._prefix)

    def _levels(self) -> None:
        counts = self.counts
        counts.disk_bytes = self._index.bytes
        counts.disk_objects = len(self._records)
        counts.disk_capacity = self._index.capacity

    # ------------------------------------------------------------------------- demotion
    def put(self, entry: CacheEntry) -> bool:
        """Keep a memory victim. False when it is not kept (too small, larger than the tier,
        the write queue full, or the tier is closed)."""
        if self._finalizer.alive is False:
            return False
        if self._channel.done:
            self._drain()
        size = len(entry.body)
        charge = disk_charge(size)
        if charge > self._index.capacity:
            self.discard_file(entry.disk_path)
            return False
        kept = entry.disk_path
        if kept is not None and self.owns(kept):
            # Promoted earlier and its file was kept: index it again, nothing to write.
            record = _Record(entry, kept, pending=False)
        else:
            if size < self.min_bytes:
                return False
            if self._pending and (
                self._pending >= self.queue_entries
                or self._pending_bytes + size > self.queue_bytes
            ):
                self.counts.disk_dropped_writes += 1
                return False
            self._serial += 1
            record = _Record(entry, f"{self._prefix}{self._serial:x}", pending=True)
            if self._channel.loop is None:
                try:
                    self._channel.loop = asyncio.get_running_loop()
                except RuntimeError:
                    pass
            self._pending += 1
            self._pending_bytes += size
            self._channel.jobs.put(("write", record, entry.body))
        self._file(record, charge)
        return True

    def _file(self, record: _Record, charge: int) -> None:
        key = record.key
        old = self._records.pop(key, None)
        if old is not None:
            self._index.remove(key)
            self._release(old)
        if record.vary or key != record.primary:
            primary = record.primary
            if self._vary.get(primary) != record.vary:
                self.remove_primary(primary)
            self._vary[primary] = record.vary
            self._variant_keys.setdefault(primary, set()).add(key)
        elif record.primary in self._vary:
            self.remove_primary(record.primary)
        self._records[key] = record
        evicted = self._index.insert(key, charge)
        for victim in evicted:
            self._release(self._pop(victim))
        self.counts.disk_evictions += len(evicted)
        self._levels()

    # ------------------------------------------------------------------------- promotion
    def take(self, key: str) -> CacheEntry | None:
        """Remove the object stored under ``key`` and return its entry, body mapped from its
        file (or, while its write is pending, the body it came with); None if not here."""
        if self._channel.done:
            self._drain()
        record = self._records.get(key)
        if record is None:
            return None
        self._index.remove(key)
        self._pop_record(record)
        if record.entry is not None:  # not written yet: cancel the write, keep the body
            record.cancelled = True
            entry = record.entry
            record.entry = None
            entry.hits = record.hits
            self.counts.disk_hits += 1
            self._levels()
            return entry
        entry = self._open(record)
        self._levels()
        if entry is not None:
            self.counts.disk_hits += 1
        return entry

    def _open(self, record: _Record) -> CacheEntry | None:
        path = record.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.counts.disk_errors += 1
            log.warning("disk tier: cannot open %s: %s", path, exc)
            return None
        try:
            if os.fstat(fd).st_size != record.size:
                raise OSError(f"{path} is not {record.size} bytes long")
            try:
                os.posix_fadvise(fd, 0, record.size, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # only a hint
            body = FileBody(fd, record.size)
        except (OSError, ValueError) as exc:
            os.close(fd)
            self.counts.disk_errors += 1
            log.warning("disk tier: cannot map %s: %s", path, exc)
            self._channel.jobs.put(("unlink", path))
            return None
        entry = CacheEntry(
            key=record.key,
            primary=record.primary,
            status=record.status,
            headers=marshal.loads(record.fields),
            body=body,  # type: ignore[arg-type]  # bytes-like; the store charges it as a file
            freshness=record.freshness,
            response_time=record.response_time,
            initial_age=record.initial_age,
            vary=record.vary,
        )
        entry.hits = record.hits
        entry.disk_path = path
        return entry

    # ------------------------------------------------------------------------- removal
    def _pop(self, key: str) -> _Record:
        record = self._records[key]
        self._pop_record(record)
        return record

    def _pop_record(self, record: _Record) -> None:
        """Forget a record already out of the index (Vary bookkeeping included)."""
        del self._records[record.key]
        if record.vary or record.key != record.primary:
            keys = self._variant_keys.get(record.primary)
            if keys is not None:
                keys.discard(record.key)
                if not keys:
                    del self._variant_keys[record.primary]
                    self._vary.pop(record.primary, None)

    def _release(self, record: _Record) -> None:
        """A record left the tier for good: its file goes (now, or once written)."""
        if record.entry is not None:
            record.cancelled = True  # the writer skips it, or _drain unlinks what it wrote
            record.entry = None
        elif record.written:
            self._channel.jobs.put(("unlink", record.path))

    def discard_file(self, path: str | None) -> None:
        """A promoted entry left memory without coming back here: remove its kept file."""
        if path is not None and self.owns(path):
            self._channel.jobs.put(("unlink", path))

    def remove(self, key: str) -> bool:
        """Remove one object by its storage key."""
        if key not in self._records:
            return False
        self._index.remove(key)
        self._release(self._pop(key))
        self._levels()
        return True

    def remove_primary(self, primary: str) -> int:
        """Remove every variant of one URI."""
        keys = set(self._variant_keys.get(primary, ()))
        keys.add(primary)
        removed = 0
        for key in keys:
            if key in self._records:
                self._index.remove(key)
                self._release(self._pop(key))
                removed += 1
        self._vary.pop(primary, None)
        self._variant_keys.pop(primary, None)
        self._levels()
        return removed

    def remove_matching(self, match: Callable[[str], bool]) -> int:
        """Remove every object whose primary key ``match`` accepts."""
        keys = [k for k, r in self._records.items() if match(r.primary)]
        for key in keys:
            self.remove(key)
        return len(keys)

    def admit(self, key: str, primary: str, vary: tuple[bytes, ...]) -> None:
        """Memory stores a new version under ``key``: drop the copy here (the tiers are
        exclusive) and, if the Vary of the URI changed, its variants here too."""
        if not self._records:
            return
        if key in self._records:
            self.remove(key)
        if self._vary.get(primary, ()) != vary and (
            primary in self._vary or primary in self._records
        ):
            self.remove_primary(primary)

    def resize(self, capacity: int) -> int:
        """Change the byte budget (reload); evicts (unlinks) down to it. Returns evictions."""
        evicted = self._index.resize(capacity)
        for key in evicted:
            self._release(self._pop(key))
        self.counts.disk_evictions += len(evicted)
        self._levels()
        return len(evicted)

    # ------------------------------------------------------------------------- completions
    def _drain(self) -> None:
        """Apply finished writes (loop thread): a written record drops its body; a failed one
        leaves the tier; a cancelled one has its file removed."""
        done = self._channel.done
        changed = False
        while done:
            record = done.popleft()
            self._pending -= 1
            self._pending_bytes -= record.size
            if record.cancelled:
                if record.written:
                    self._channel.jobs.put(("unlink", record.path))
                continue
            if record.failed:
                self.counts.disk_errors += 1
                if self._records.get(record.key) is record:
                    self._index.remove(record.key)
                    self._pop_record(record)
                    changed = True
                record.entry = None
                continue
            record.entry = None  # the body is on disk now: memory can let it go
            self.counts.disk_writes += 1
        if changed:
            self._levels()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued job is done and apply the completions (tests, benchmarks;
        blocks the calling thread). False on timeout."""
        ok = True
        for _ in range(2):  # writes, then the unlinks their completions may queue
            self._drain()
            ok = self.wait_writer(timeout) and ok
        self._drain()
        return ok

    def wait_writer(self, timeout: float = 10.0) -> bool:
        """Block until the writer has done every job queued so far; unlike :meth:`flush` it
        applies nothing, so any thread may call it (e.g. an executor while the loop runs)."""
        marker = threading.Event()
        self._channel.jobs.put(("sync", marker))
        return marker.wait(timeout)

    def close(self) -> None:
        """Forget every object and remove the run directory (in the background)."""
        if not self._finalizer.alive:
            return
        self._drain()
        for record in list(self._records.values()):
            self._release(record)
        self._records.clear()
        self._vary.clear()
        self._variant_keys.clear()
        self._index.resize(0)
        self._levels()
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __repr__(self) -> str:
        return (f"DiskTier({self.run_dir!r}, objects={len(self._records)}, bytes={self.bytes}, "
                f"capacity={self.capacity}, pending={self._pending})")
