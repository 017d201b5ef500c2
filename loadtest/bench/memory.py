"""Memory of the cache node: bytes per cached object, RSS under a long mixed load, and what a
disk tier pays.

Why (docs/overview.md, the memory target: "RSS ≤ configured cache bytes × 1.1 + 80 MB under load"):
``cache_memory`` is only an honest budget if what the store *charges* per entry covers what an
entry *costs*, and if nothing else in the process grows with the load (fragmentation, copies of
bodies, buffers of slow clients). Both are measured here rather than assumed, and so is the
case for the disk tier (``disk`` measured that it pays before it was built; ``disk-node`` measures
the built one).

Subcommands::

    python -m reelcdn.loadtest.bench.memory overhead [--markdown FILE]
    python -m reelcdn.loadtest.bench.memory soak [--duration 600] [--cache 256MiB]
        [--rate 300] [--connections 16] [--node-env MALLOC_ARENA_MAX=2] [--markdown FILE]
    python -m reelcdn.loadtest.bench.memory disk [--markdown FILE]
    python -m reelcdn.loadtest.bench.memory disk-node [--memory 32MiB] [--disk 256MiB]
        [--objects 200] [--object-size 1MiB] [--requests 4000] [--markdown FILE]

``overhead``
    Builds N entries per profile (2 KiB playlists, segments of 50 KiB kept as ``bytes``, of
    512 KiB and 2 MiB kept in memory files) with the node's own code (``CacheNode._fetch_head``,
    a ``Fetch`` fed in 64 KiB chunks, ``CacheNode._store``: what a fill does) from realistic
    upstream headers, inserts them into the node's ``MemoryStore``, serves each once (a HIT
    caches its rendered head in the entry), and reports per entry: what the store charges
    beyond the body, the growth of the Python heap (tracemalloc) beyond the body, the memory
    file's page rounding, the kernel's objects per memory file (slab, approximate: system-wide),
    and the RSS growth of a fresh process doing the same without tracemalloc.
``soak``
    Starts the catalogue origin (``memload.py``: 2 GiB of 2 KiB playlists and 50 KiB–2 MiB
    segments, 8× a 256 MiB cache) and ONE node process, drives a bounded mixed load from a
    separate process (Zipf popularity, HITs, misses that evict, Range and conditional requests,
    404s, aborted downloads), samples the node's memory every second and its cache counters
    every 5 s, and reports RSS against the limit. Memory files matter here: their pages are
    shared memory that ``VmRSS`` counts only once mapped *and touched*, and a body sent with
    ``sendfile`` is never touched, so VmRSS alone would flatter the node. The footprint judged
    is therefore ``VmRSS − RssShmem + the pages of the memory files the process holds``.
``disk``
    (a) Latency of one request per object size: a node HIT from memory, a node miss served by a
    parent node's HIT over loopback, and on a minimal blocking server the three ways a disk tier
    could answer (bytes in memory, a file in the page cache via ``sendfile``, a file evicted
    from the page cache first). (b) Hit ratios of memory-only vs memory + disk (an exclusive
    second LRU) on a Zipf trace over a catalogue far larger than memory, simulated: cheap and
    deterministic.
``disk-node``
    The disk tier as built (``edge/cache/disktier.py``) in a real node process: an origin process
    with ``--objects`` objects, a node with ``cache_memory`` below the working set, once without
    and once with ``cache_disk`` (memory + disk hold it all), a Zipf trace of sequential GETs on
    one keep-alive connection (every body verified): hit ratio and origin requests of each; then
    time per way of answering: HIT from memory, HIT from disk (round-robin over every object, so
    each request is a disk hit; counted by ``reelcdn_disk_hits``), the same with the files'
    pages dropped from the page cache before each request, and a miss to the origin.

Exit status: 0 measured (whatever the verdict), 1 a server failed or the load went wrong,
2 missing prerequisites or bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import json
import linecache
import os
import random
import secrets
import shlex
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import machine
from .common import BenchFailure, byte_size, log, positive_int, run_main
from .memload import KIB, MIB, Catalogue
from .procs import LOOPBACK, ManagedProcess, StartupError, free_port, http_get, port_open
from .servers import find_node_command

PROG = "python -m reelcdn.loadtest.bench.memory"
MB = 1_000_000
#: docs/overview.md: RSS ≤ cache × 1.1 + 80 MB. "MB" read as MiB (361.6 MiB for
#: a 256 MiB cache); the report also gives the stricter reading with 80 × 10^6 bytes.
RSS_FACTOR = 1.1
RSS_EXTRA = 80 * MIB
CHUNK = 64 * KIB  # fills arrive in chunks of about this size from aiohttp


def rss_limit(cache: int, extra: int = RSS_EXTRA) -> int:
    """The memory target's limit (docs/overview.md) for a node with ``cache`` bytes of cache."""
    return int(cache * RSS_FACTOR + extra)


def fmt_mib(n: float | None) -> str:
    return "—" if n is None else f"{n / MIB:.1f} MiB"


def machine_info() -> machine.MachineInfo:
    """The machine, with the commit of the code measured."""
    revision = machine.source_revision(Path(__file__).resolve().parents[2])
    return machine.collect({"reelcdn": revision})


# ----------------------------------------------------------------------------------------
# Reading a process's memory


STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def proc_status(pid: int) -> dict[str, int]:
    """The memory fields of ``/proc/PID/status``, in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in STATUS_FIELDS:
            fields[name] = int(rest.split()[0]) * 1024
    return fields


def memfd_usage(pid: int) -> tuple[int, int]:
    """(memory files, bytes of their pages) held open by ``pid``, each file counted once.

    Why by inode: Python's ``mmap`` keeps a ``dup`` of the descriptor it maps, so every
    ``FileBody`` shows up twice in ``/proc/PID/fd``. ``st_blocks`` counts the pages really
    allocated (a body's size rounded up to whole pages)."""
    fd_dir = f"/proc/{pid}/fd"
    seen: set[tuple[int, int]] = set()
    total = 0
    for name in os.listdir(fd_dir):
        path = f"{fd_dir}/{name}"
        try:
            if not os.readlink(path).startswith("/memfd:"):
                continue
            st = os.stat(path)
        except OSError:
            continue  # closed meanwhile
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            total += st.st_blocks * 512
    return len(seen), total


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (system-wide: used only for the kernel's slab objects)."""
    info: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            info[name] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return info


# ----------------------------------------------------------------------------------------
# overhead: what one cached object costs beyond its body


def upstream_headers(kind: str, path: str, size: int, serial: int) -> list[tuple[bytes, bytes]]:
    """The raw header fields an edge gets from its parent for a segment or a playlist.

    Every name and value is a new ``bytes`` object, as aiohttp's parser makes them per
    response: the stored entry keeps them alive, so they are part of what an entry costs."""
    if kind == "playlist":
        fields = [
            ("Content-Type", "application/vnd.apple.mpegurl"),
            ("Cache-Control", "public, max-age=2"),
        ]
    else:
        fields = [
            ("Content-Type", "video/iso.segment"),
            ("Cache-Control", "public, max-age=31536000, immutable"),
        ]
    fields += [
        ("Content-Length", str(size)),
        ("ETag", f'"{0x6553f1a2 + serial:x}-{size:x}"'),
        ("Last-Modified", "Sat, 21 Nov 2026 10:00:00 GMT"),
        ("Accept-Ranges", "bytes"),
        ("Date", "Sun, 22 Nov 2026 08:00:00 GMT"),
        ("Age", str(serial % 600)),
        ("Cache-Status", "shield; fwd=uri-miss; stored, regional-1; fwd=uri-miss; stored"),
        ("Via", "1.1 shield, 1.1 regional-1"),
        ("Access-Control-Allow-Origin", "*"),
        ("Timing-Allow-Origin", "*"),
    ]
    return [(name.encode(), value.encode()) for name, value in fields]


class BuildError(RuntimeError):
    """The node's code no longer has what the benchmark drives (it says which)."""


class EntryBuilder:
    """Makes cache entries the way a fill does, with the node's own code.

    Why not ``CacheEntry(...)`` directly: the node adds fields (Date, Accept-Ranges), decides
    freshness, and chooses the body's form (``bytes`` or a memory file); an entry built by hand
    would measure a different object from the one the node keeps. The private methods used are
    checked up front so a refactor of ``node.py`` gives a clear message, not a wrong number.
    """

    NEEDED = ("_fetch_head", "_store", "_rebuild_hit_head", "store", "body_files")

    def __init__(self, capacity: int = 1 << 40, sendfile_min: int | None = None) -> None:
        from reelcdn.edge import node as node_module
        from reelcdn.edge.config import node_config_from_dict
        from reelcdn.edge.fetch.coalescer import Fetch

        table: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "upstream": "http://127.0.0.1:9",
            "cache_memory": capacity,
        }
        if sendfile_min is not None:
            table["sendfile_min_size"] = sendfile_min
        from reelcdn.shield.connectors import build_upstream

        self.node = node_module.CacheNode(node_config_from_dict("memory-bench", table),
                                          build_upstream)
        missing = [n for n in self.NEEDED if not hasattr(self.node, n)]
        for name in ("_storable_headers", "_header_map"):
            if not hasattr(node_module, name):
                missing.append(f"node.{name}")
        if missing:
            raise BuildError(f"edge/node.py changed: no {', '.join(missing)} to build entries with")
        self._storable = node_module._storable_headers
        self._header_map = node_module._header_map
        self._fetch = Fetch

    @property
    def store(self) -> Any:
        return self.node.store

    def fill(self, path: str, raw: list[tuple[bytes, bytes]], chunks: list[bytes]) -> Any:
        """Run the storing half of a fill (``CacheNode._run_fill`` after the head arrived);
        returns the stored entry. Needs a running event loop (a ``Fetch`` has futures)."""
        now = time.time()
        node = self.node
        headers = self._storable(raw)
        head = node._fetch_head(200, headers, self._header_map(raw), path, now, now)
        fetch = self._fetch(path, path, {})
        fetch.set_head(head)
        for chunk in chunks:
            fetch.append(chunk)
        fetch.finish()
        node._store(fetch, head, path)
        return node.store.lookup(path, {})

    def hit(self, entry: Any) -> None:
        """What a whole-object HIT leaves behind in the entry (its rendered head)."""
        self.node._rebuild_hit_head(entry, time.time())


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    kind: str  # "playlist" or "segment"
    size: int  # nominal body size; each entry's is drawn within ±10 %
    entries: int  # for tracemalloc
    rss_entries: int  # for the RSS pass (more: RSS moves in pages)


PROFILES: tuple[Profile, ...] = (
    Profile("playlist 2 KiB", "playlist", 2 * KIB, 4000, 40000),
    Profile("segment 50 KiB (bytes)", "segment", 50 * KIB, 2000, 4000),
    Profile("segment 512 KiB (memory file)", "segment", 512 * KIB, 300, 500),
    Profile("segment 2 MiB (memory file)", "segment", 2 * MIB, 100, 150),
)


def profile_bodies(profile: Profile, count: int, seed: int = 5) -> list[tuple[str, int]]:
    """(path, size) of ``count`` objects of a profile; sizes jittered so page rounding is real."""
    rng = random.Random(seed)
    ext = "m3u8" if profile.kind == "playlist" else "m4s"
    return [
        (f"/v/v{i:010d}/720p/{'index' if ext == 'm3u8' else f'seg_{i % 1000:05d}'}.{ext}",
         int(profile.size * rng.uniform(0.9, 1.1)))
        for i in range(count)
    ]


_SOURCE = bytes(range(256)) * ((2 * MIB + 256 * KIB) // 256)


def arriving_chunks(size: int) -> list[bytes]:
    """A body as the upstream client hands it over: new ``bytes`` of up to 64 KiB each."""
    return [_SOURCE[i:i + min(CHUNK, size - i)] for i in range(0, size, CHUNK)]


@dataclass(frozen=True, slots=True)
class HeapResult:
    """One profile measured with tracemalloc (sums over ``entries``)."""

    profile: str
    entries: int
    payload: int  # body bytes
    heap_payload: int  # body bytes on the Python heap (bodies kept as bytes)
    stored: int  # traced heap growth once all are stored
    after_hit: int  # ... and once each was served once
    charged_beyond_body: int  # sum of (charge − body length)
    page_rounding: int  # memory-file pages beyond the body (st_blocks × 512 − size)
    body_files: int  # entries whose body is a memory file
    header_block: int  # sum of len(header_block)

    def per_entry(self, total: int) -> float:
        return total / self.entries

    @property
    def heap_overhead(self) -> float:
        """Python heap per entry beyond its body, stored and served once."""
        return (self.after_hit - self.heap_payload) / self.entries

    @property
    def measured(self) -> float:
        """What the test compares with the charge: heap overhead + page rounding."""
        return self.heap_overhead + self.page_rounding / self.entries

    @property
    def charged(self) -> float:
        return self.charged_beyond_body / self.entries


def _is_file_body(body: object) -> bool:
    return hasattr(body, "fd") and not isinstance(body, bytes)


async def _measure_heap(profile: Profile, count: int) -> HeapResult:
    builder = EntryBuilder()
    # Warm lazily made objects (date cache, interned names) outside the measured window.
    warm = builder.fill("/warm", upstream_headers(profile.kind, "/warm", 10, 0), [b"x" * 10])
    builder.hit(warm)
    objects = profile_bodies(profile, count)
    gc.collect()
    outer = tracemalloc.is_tracing()  # e.g. python -X tracemalloc: leave it running
    if not outer:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        entries = []
        for serial, (path, size) in enumerate(objects):
            key = "".join(path)  # a new str, as cache_key() makes one per request
            entries.append(builder.fill(key, upstream_headers(profile.kind, key, size, serial),
                                        arriving_chunks(size)))
        gc.collect()
        stored = tracemalloc.get_traced_memory()[0] - base
        for entry in entries:
            builder.hit(entry)
        gc.collect()
        after_hit = tracemalloc.get_traced_memory()[0] - base
    finally:
        if not outer:
            tracemalloc.stop()
    # The list holding the entries is the benchmark's, not the node's.
    list_cost = sys.getsizeof(entries)
    payload = heap_payload = rounding = files = 0
    for entry in entries:
        body = entry.body
        payload += len(body)
        if _is_file_body(body):
            files += 1
            rounding += os.fstat(body.fd).st_blocks * 512 - len(body)
        else:
            heap_payload += len(body)
    return HeapResult(
        profile=profile.name,
        entries=count,
        payload=payload,
        heap_payload=heap_payload,
        stored=stored - list_cost,
        after_hit=after_hit - list_cost,
        charged_beyond_body=sum(e.charge - len(e.body) for e in entries),
        page_rounding=rounding,
        body_files=files,
        header_block=sum(len(e.header_block) for e in entries),
    )


def measure_heap(profile: Profile, count: int | None = None) -> HeapResult:
    """Per-entry Python heap cost of ``count`` entries of ``profile`` (tracemalloc)."""
    return asyncio.run(_measure_heap(profile, count or profile.entries))


async def _measure_rss(profile: Profile) -> dict[str, int]:
    builder = EntryBuilder()
    warm = builder.fill("/warm", upstream_headers(profile.kind, "/warm", 10, 0), [b"x" * 10])
    builder.hit(warm)
    objects = profile_bodies(profile, profile.rss_entries)
    gc.collect()
    pid = os.getpid()
    before, fds_before = proc_status(pid), memfd_usage(pid)
    entries = []
    for serial, (path, size) in enumerate(objects):
        key = "".join(path)
        entry = builder.fill(key, upstream_headers(profile.kind, key, size, serial),
                             arriving_chunks(size))
        builder.hit(entry)
        entries.append(entry)
    gc.collect()
    after, fds_after = proc_status(pid), memfd_usage(pid)
    return {
        "entries": len(entries),
        "payload": sum(len(e.body) for e in entries),
        "anon": after["RssAnon"] - before["RssAnon"],
        "rss": after["VmRSS"] - before["VmRSS"],
        "memfd": fds_after[1] - fds_before[1],
        "charged": sum(e.charge - len(e.body) for e in entries),
    }


async def _breakdown(profile: Profile, count: int) -> list[tuple[float, float, str, str]]:
    builder = EntryBuilder()
    warm = builder.fill("/warm", upstream_headers(profile.kind, "/warm", 10, 0), [b"x" * 10])
    builder.hit(warm)
    objects = profile_bodies(profile, count)
    gc.collect()
    if tracemalloc.is_tracing():
        return []
    tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()
        entries = []
        for serial, (path, size) in enumerate(objects):
            key = "".join(path)
            entry = builder.fill(key, upstream_headers(profile.kind, key, size, serial),
                                 arriving_chunks(size))
            builder.hit(entry)
            entries.append(entry)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    here = Path(__file__).resolve()
    root = here.parents[2]
    rows = []
    for stat in after.compare_to(before, "lineno"):
        if stat.size_diff <= 0:
            continue
        frame = stat.traceback[0]
        path = Path(frame.filename).resolve()
        if path == here:
            # Of the benchmark's own lines only the header bytes count (the node keeps them);
            # the bodies are the payload, the list and the keys' strings are the benchmark's.
            text = linecache.getline(frame.filename, frame.lineno)
            if "name.encode()" in text:
                where = "header names and values kept from the upstream response (new `bytes`)"
            elif 'key = "".join(path)' in text:
                where = "the cache key (`str`, made per request by `cache_key`)"
            elif "now = time.time()" in text:
                where = "response time (`float`, kept for Age)"
            else:
                continue
        else:
            try:
                where = f"{path.relative_to(root)}:{frame.lineno}"
            except ValueError:
                continue
            where += ": `" + linecache.getline(frame.filename, frame.lineno).strip()[:60] + "`"
        rows.append((stat.size_diff / count, stat.count_diff / count, where, ""))
    return rows


def measure_rss_child(index: int) -> dict[str, int]:
    """RSS growth of a fresh process storing one profile's entries (no tracemalloc in it: its
    own tables would be counted). Run as ``overhead --rss-child N``."""
    argv = [sys.executable, "-m", "reelcdn.loadtest.bench.memory", "overhead",
            "--rss-child", str(index)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise BenchFailure(f"RSS pass of {PROFILES[index].name} failed:\n{done.stderr[-2000:]}")
    result: dict[str, int] = json.loads(done.stdout)
    return result


def kernel_per_memfd(trials: int = 3, count: int = 1000) -> list[float]:
    """Slab bytes per memory-file body (inode, dentry, two open files, a mapping), from
    /proc/meminfo deltas: system-wide, so only approximate on a shared machine."""
    from reelcdn.edge.cache.bodyfile import MEMFD_AVAILABLE, file_body

    if not MEMFD_AVAILABLE:
        return []
    results = []
    for _ in range(trials):
        gc.collect()
        before = meminfo()
        bodies = [file_body([b"x" * 4096], 4096) for _ in range(count)]
        after = meminfo()
        results.append((after.get("Slab", 0) - before.get("Slab", 0)) / count)
        del bodies
        gc.collect()
    return results


def overhead_report(heap: list[HeapResult], rss: list[dict[str, int]],
                    slab: list[float]) -> str:
    from reelcdn.edge.cache import entry as store

    lines = [
        "| profile | entries | body kept as | charged beyond body | Python heap beyond body "
        "(stored → after 1st HIT) | page rounding | measured total | RSS-based (fresh process) "
        "| measured ≤ charged? |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for h, r in zip(heap, rss, strict=True):
        stored = (h.stored - h.heap_payload) / h.entries
        rss_over = (r["anon"] + r["memfd"] - r["payload"]) / r["entries"]
        ok = "yes" if h.measured <= h.charged else f"**no** ({h.measured / h.charged:.1f}×)"
        kept = "memory file" if h.body_files == h.entries else (
            "bytes" if h.body_files == 0 else f"{h.body_files} files")
        lines.append(
            f"| {h.profile} | {h.entries} | {kept} | {h.charged:,.0f} B "
            f"| {stored:,.0f} → {h.heap_overhead:,.0f} B | {h.page_rounding / h.entries:,.0f} B "
            f"| **{h.measured:,.0f} B** | {rss_over:,.0f} B ({r['entries']} entries) | {ok} |"
        )
    slab_text = ", ".join(f"{s:,.0f}" for s in slab) if slab else "n/a (no memfd_create)"
    hb = sum(h.header_block for h in heap) / sum(h.entries for h in heap)
    lines += [
        "",
        f"The store charges `len(body) + len(header_block) + len(key) + ENTRY_OVERHEAD` with "
        f"`ENTRY_OVERHEAD = {store.ENTRY_OVERHEAD}` (header blocks here: {hb:.0f} B on "
        "average). *Python heap beyond body*: tracemalloc growth per entry minus the bodies "
        "kept as bytes, once stored and once each entry was served (a HIT keeps its rendered "
        "head in `head_cache`). *Page rounding*: a memory file holds whole 4 KiB pages. "
        f"*Kernel objects per memory file* (slab, system-wide /proc/meminfo delta over 1000 "
        f"files, 3 trials): {slab_text} B — not in the measured total, as it cannot be "
        "measured exactly here. *RSS-based*: RssAnon + memory-file pages − bodies, in a fresh "
        "process without tracemalloc (includes malloc's own overhead and freed chunks).",
    ]
    return "\n".join(lines) + "\n"


def breakdown_report(profile: Profile, rows: list[tuple[float, float, str, str]]) -> str:
    if not rows:
        return "(no breakdown: tracemalloc was already tracing)\n"
    rows = sorted(rows, reverse=True)
    lines = [
        f"Where the bytes of one {profile.name} entry go (stored and served once; tracemalloc "
        "by allocating line, 2000 entries; lines under 8 B per entry left out):",
        "",
        "| bytes per entry | objects per entry | allocated at |",
        "|---:|---:|---|",
    ]
    lines += [f"| {size:,.0f} | {count:.1f} | {where} |" for size, count, where, _ in rows
              if size >= 8]
    lines.append(f"| **{sum(r[0] for r in rows):,.0f}** | | total |")
    return "\n".join(lines) + "\n"


def run_overhead(args: argparse.Namespace) -> int:
    if args.rss_child is not None:
        print(json.dumps(asyncio.run(_measure_rss(PROFILES[args.rss_child]))))
        return 0
    heap, rss = [], []
    for index, profile in enumerate(PROFILES):
        log(f"overhead: {profile.name}: tracemalloc over {profile.entries} entries")
        heap.append(measure_heap(profile))
        log(f"overhead: {profile.name}: RSS of a fresh process over {profile.rss_entries}")
        rss.append(measure_rss_child(index))
    slab = kernel_per_memfd()
    rows = asyncio.run(_breakdown(PROFILES[0], 2000))
    started = datetime.now(UTC)
    info = machine_info()
    report = "\n".join([
        f"### Per-entry overhead, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{PROG} overhead`",
        "",
        overhead_report(heap, rss, slab),
        breakdown_report(PROFILES[0], rows),
        "Machine:",
        "",
        *info.markdown_lines(),
    ]) + "\n"
    print(report)
    _append(args.markdown, report)
    return 0


# ----------------------------------------------------------------------------------------
# soak: one node under a long mixed load


@dataclass(frozen=True, slots=True)
class MemSample:
    t: float
    rss: int
    anon: int
    shmem: int
    memfd_files: int
    memfd_bytes: int
    fds: int

    @property
    def footprint(self) -> int:
        """RSS without the mapped memory-file pages, plus all of their pages (see module doc)."""
        return self.rss - self.shmem + self.memfd_bytes


@dataclass(frozen=True, slots=True)
class CacheSample:
    t: float
    bytes: int
    objects: int
    evictions: int


@dataclass(slots=True)
class SoakResult:
    memory: list[MemSample] = field(default_factory=list)
    cache: list[CacheSample] = field(default_factory=list)
    hwm: int = 0
    client: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def admin_get(port: int, path: str, token: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {name: value} summed over label sets (one node: one set each)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def node_config(port: int, admin: int, upstream: str, cache: int, token: str) -> str:
    return (
        "[node.soak]\n"
        f'listen = "{LOOPBACK}:{port}"\n'
        f'admin = "{LOOPBACK}:{admin}"\n'
        f'upstream = "{upstream}"\n'
        f"cache_memory = {cache}\n"
        f'admin_token = "{token}"\n'
    )


def soak_prerequisites(args: argparse.Namespace) -> list[str]:
    missing = []
    if not Path("/proc/self/status").exists():
        missing.append("/proc: the soak reads /proc/PID/status (Linux only)")
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        missing.append("aiohttp: not importable (pip install aiohttp): origin and client need it")
    if find_node_command(tuple(shlex.split(args.node_cmd)) if args.node_cmd else None) is None:
        missing.append("reelcdn: no `reelcdn` console script (pip install -e .), or --node-cmd")
    return missing


def run_soak(args: argparse.Namespace, argv: Sequence[str]) -> int:
    missing = soak_prerequisites(args)
    if missing:
        print(f"{PROG} soak: missing prerequisites:", file=sys.stderr)
        for item in missing:
            print(f"  - {item}", file=sys.stderr)
        return 2
    command = find_node_command(tuple(shlex.split(args.node_cmd)) if args.node_cmd else None)
    assert command is not None
    info = machine_info()
    started_at = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="reelcdn-memory-"))
    catalogue = Catalogue(args.videos, args.segments, args.seed)
    result = SoakResult()
    running: list[ManagedProcess] = []
    client: subprocess.Popen[bytes] | None = None
    try:
        origin_port, port, admin = free_port(), free_port(), free_port()
        common = ["--videos", str(args.videos), "--segments", str(args.segments),
                  "--seed", str(args.seed)]
        origin = ManagedProcess(
            "origin",
            [sys.executable, "-m", "reelcdn.loadtest.bench.memload", "origin",
             "--port", str(origin_port), *common],
            workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        running.append(origin)
        origin.start()
        origin.wait_ready(lambda: http_get(origin_port, "/__count", timeout=1).status == 200,
                          "GET /__count answered 200")
        log(f"origin ready: {len(catalogue.objects)} objects, {fmt_mib(catalogue.total_bytes)} "
            f"({catalogue.total_bytes / args.cache:.1f}× the cache)")
        token = secrets.token_hex(16)
        config = workdir / "node.toml"
        config.write_text(node_config(port, admin, f"http://{LOOPBACK}:{origin_port}",
                                      args.cache, token))
        node_env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(args.node_env)}
        node = ManagedProcess("node", [*command, "node", "--config", str(config),
                                       "--name", "soak"], workdir, env=node_env)
        running.append(node)
        node.start()
        node.wait_ready(
            lambda: admin_get(admin, "/health", token, 1)[0] == 200 and port_open(port),
            "admin /health answered 200 and the listener accepts connections",
        )
        assert node.proc is not None
        pid = node.proc.pid
        log(f"node ready (pid {pid}), cache {fmt_mib(args.cache)}; load for {args.duration:.0f} s "
            f"at {args.rate:g} req/s over {args.connections} connections")
        client_err = (workdir / "client.stderr.log").open("wb")
        client_out = workdir / "client.json"
        with client_out.open("wb") as out:
            client = subprocess.Popen(
                [sys.executable, "-m", "reelcdn.loadtest.bench.memload", "client",
                 "--port", str(port), "--duration", str(args.duration),
                 "--rate", str(args.rate), "--connections", str(args.connections),
                 "--max-requests", str(args.max_requests), "--zipf", str(args.zipf),
                 "--mix", args.mix, *common],
                stdout=out, stderr=client_err, stdin=subprocess.DEVNULL,
            )
        sample_loop(result, pid, admin, token, client, args, node)
        client_err.close()
        if client.returncode != 0:
            raise BenchFailure(f"load client exited with {client.returncode}:\n"
                               + (workdir / "client.stderr.log").read_text()[-2000:])
        result.client = json.loads(client_out.read_text())
        result.hwm = proc_status(pid).get("VmHWM", 0)
        status, body = admin_get(admin, "/metrics", token)
        if status == 200:
            result.metrics = parse_metrics(body.decode())
        status, body = admin_get(admin, "/cache/stats", token)
        if status == 200:
            stats = json.loads(body)
            result.cache.append(CacheSample(time.monotonic(), stats["bytes"], stats["objects"],
                                            stats["evictions"]))
        result.origin = json.loads(http_get(origin_port, "/__count").body)
        if node.exit_status() is not None:
            raise BenchFailure("node exited during the soak:\n" + node.output_tail())
    except StartupError as exc:
        print(f"{PROG} soak: {exc.name} failed to start: {exc.reason}\n{exc.details}",
              file=sys.stderr)
        return 1
    except BenchFailure as exc:
        print(f"{PROG} soak: {exc}", file=sys.stderr)
        return 1
    finally:
        if client is not None and client.poll() is None:
            client.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                client.wait(10)
            if client.poll() is None:
                client.kill()
        for proc in reversed(running):
            proc.stop()
        if args.keep_temp:
            log(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    report = soak_report(result, args, argv, info, started_at, catalogue, command)
    print(report)
    _append(args.markdown, report)
    return 0


def sample_loop(result: SoakResult, pid: int, admin: int, token: str,
                client: subprocess.Popen[bytes], args: argparse.Namespace,
                node: ManagedProcess) -> None:
    """Every second: the node's memory; every 5 s: its cache counters. Until the client is
    done, bounded by ``--duration`` + 120 s (then the client is stopped and it is flagged)."""
    t0 = time.monotonic()
    deadline = t0 + args.duration + 120
    tick = 0
    while client.poll() is None:
        now = time.monotonic()
        if now > deadline:
            result.problems.append("the load client overran its duration by 120 s: stopped")
            client.terminate()
            client.wait(10)
            break
        if node.exit_status() is not None:
            raise BenchFailure("node exited during the soak:\n" + node.output_tail())
        try:
            st = proc_status(pid)
            files, pages = memfd_usage(pid)
        except OSError as exc:
            raise BenchFailure(f"cannot read the node's /proc entries: {exc}") from exc
        result.memory.append(MemSample(now - t0, st["VmRSS"], st["RssAnon"], st["RssShmem"],
                                       files, pages, open_fds(pid)))
        if tick % 5 == 0:
            try:
                status, body = admin_get(admin, "/cache/stats", token)
                if status == 200:
                    stats = json.loads(body)
                    result.cache.append(CacheSample(now - t0, stats["bytes"], stats["objects"],
                                                    stats["evictions"]))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                result.problems.append(f"/cache/stats failed at {now - t0:.0f} s: {exc!r}")
        if tick % 60 == 0 and tick:
            last = result.memory[-1]
            log(f"{now - t0:4.0f} s: VmRSS {fmt_mib(last.rss)}, footprint "
                f"{fmt_mib(last.footprint)}, memory files {last.memfd_files}, "
                f"cache {fmt_mib(result.cache[-1].bytes) if result.cache else '—'}")
        tick += 1
        time.sleep(max(0.0, t0 + tick - time.monotonic()))


def _spark(values: Sequence[float], limit: float, width: int = 60) -> list[str]:
    """An ASCII chart: one column per time slice (its max), 8 rows up to max(values, limit)."""
    if not values:
        return []
    step = max(1, len(values) // width)
    cols = [max(values[i:i + step]) for i in range(0, len(values), step)]
    top = max(max(cols), limit)
    rows = []
    for level in range(8, 0, -1):
        threshold = top * level / 8
        line = "".join("█" if v >= threshold else " " for v in cols)
        mark = " ← limit" if threshold >= limit > top * (level - 1) / 8 else ""
        rows.append(f"{threshold / MIB:6.0f} MiB |{line}|{mark}")
    rows.append(" " * 11 + "+" + "-" * len(cols) + f"+  ({step} s per column)")
    return rows


MIX_TEXT = {
    "players": "60 % segments, 13 % Range, 11 % playlists, 5 % inits/masters, 6 % "
    "conditional, 3 % 404, 1 % HEAD, 1 % aborted downloads",
    "small": "`--mix small`: only small objects, each under one of 400 000 query variants "
    "(distinct cache keys; half the draws under 4 hot ones): 70 % playlists, 20 % inits, "
    "5 % conditional, 5 % 404",
}


def soak_report(result: SoakResult, args: argparse.Namespace, argv: Sequence[str],
                info: machine.MachineInfo, started: datetime, catalogue: Catalogue,
                command: list[str]) -> str:
    mem = result.memory
    limit = rss_limit(args.cache)
    strict = rss_limit(args.cache, 80 * MB)
    rss = [s.rss for s in mem]
    foot = [s.footprint for s in mem]
    c = result.client
    requests = int(c.get("requests", 0))
    hits = int(c.get("hits", 0))
    evictions = result.cache[-1].evictions if result.cache else None
    max_rss, max_foot = max(rss, default=0), max(foot, default=0)
    files = result.metrics.get("reelcdn_body_files_total", 0.0)
    fallbacks = result.metrics.get("reelcdn_body_file_fallbacks_total", 0.0)
    fetched = sorted((k, v) for k, v in result.origin.get("by_kind", {}).items() if k != "bytes")
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(c.get("status", {}).items()))
    median_rss = statistics.median(rss) if rss else None
    median_foot = statistics.median(foot) if foot else None
    last_cache = result.cache[-1] if result.cache else None
    max_anon = max((s.anon for s in mem), default=0)
    lines = [
        f"### Memory soak run, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{shlex.join([*PROG.split(), *argv])}`",
        "",
        f"One node process, `cache_memory = {args.cache // MIB}MiB`; origin catalogue "
        f"{len(catalogue.objects)} objects, {fmt_mib(catalogue.total_bytes)} "
        f"({catalogue.total_bytes / args.cache:.1f}× the cache): {catalogue.videos} videos × 4 "
        f"renditions × {catalogue.segments} segments (50 KiB–2 MiB), 2 KiB media playlists "
        "(max-age 2 s: revalidated), masters, inits. Load (`memload.py client`, its own "
        f"process): {args.rate:g} req/s over {args.connections} keep-alive connections for "
        f"{args.duration:.0f} s, Zipf {args.zipf} over videos; {MIX_TEXT[args.mix]}; every "
        "body verified. Sampled every second: VmRSS, RssShmem and the memory files the node "
        "holds (`/proc/PID/fd`, one per inode, allocated pages).",
        "",
        f"Limit: {args.cache // MIB} MiB × 1.1 + 80 MB = **{fmt_mib(limit)}** reading MB as "
        f"MiB ({fmt_mib(strict)} with 80 × 10⁶ bytes).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| VmRSS max / median / at end | **{fmt_mib(max_rss)}** / {fmt_mib(median_rss)} / "
        f"{fmt_mib(rss[-1] if rss else None)} |",
        f"| VmHWM at end | {fmt_mib(result.hwm)} |",
        "| footprint = VmRSS − RssShmem + memory-file pages: max / median / at end "
        f"| **{fmt_mib(max_foot)}** / {fmt_mib(median_foot)} / "
        f"{fmt_mib(foot[-1] if foot else None)} |",
        f"| RssAnon (Python heap, buffers) max | {fmt_mib(max_anon)} |",
        f"| memory files max (count / pages) | {max((s.memfd_files for s in mem), default=0)} / "
        f"{fmt_mib(max((s.memfd_bytes for s in mem), default=0))} |",
        f"| open descriptors max | {max((s.fds for s in mem), default=0)} |",
        "| cache bytes (store's own count) max / at end | "
        f"{fmt_mib(max((s.bytes for s in result.cache), default=None))} / "
        f"{fmt_mib(last_cache.bytes if last_cache else None)} |",
        f"| cached objects at end | {last_cache.objects if last_cache else '—'} |",
        f"| evictions | {evictions if evictions is not None else '—'} |",
        f"| bodies stored as memory files / fallbacks to bytes | {files:.0f} / {fallbacks:.0f} |",
        f"| requests (client) / HITs / body bytes | {requests} / {hits} "
        f"({hits / max(requests, 1):.0%}) / {c.get('body_bytes', 0) / 2**30:.1f} GiB |",
        f"| statuses | {statuses} |",
        f"| client errors / verification failures | {sum(c.get('errors', {}).values())} / "
        f"{c.get('verify_failures', 0)} |",
        f"| origin fetches | {', '.join(f'{k}: {v}' for k, v in fetched)} |",
    ]
    verdict_rss = max_rss <= limit
    verdict_foot = max_foot <= limit
    lines += [
        "",
        f"Verdict: VmRSS max {fmt_mib(max_rss)} {'≤' if verdict_rss else '>'} {fmt_mib(limit)}; "
        f"footprint max {fmt_mib(max_foot)} {'≤' if verdict_foot else '>'} {fmt_mib(limit)}: "
        f"target **{'met' if verdict_rss and verdict_foot else 'NOT met'}**.",
    ]
    if c.get("examples"):
        lines += ["", "Verification failures (first): " + "; ".join(c["examples"][:5])]
    if c.get("errors"):
        lines += ["", "Client errors: " + ", ".join(f"{k} ×{v}" for k, v in c["errors"].items())]
    for problem in result.problems:
        lines += ["", f"⚠ {problem}"]
    lines += ["", "Over time (each row: maxima over the interval ending at t; cache counters at "
              "its last sample, taken every 5 s):",
              "", "| t | VmRSS | RssAnon | memory files | footprint | cache bytes | objects "
              "| evictions |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    span = max(1, int(args.duration) // 10)
    end_all = int(mem[-1].t) + 1 if mem else 0
    for start in range(0, end_all, span):
        part = [s for s in mem if start <= s.t < start + span]
        cache = [s for s in result.cache if s.t < start + span]
        if not part:
            continue
        last = cache[-1] if cache else None
        lines.append(
            f"| {start}–{min(start + span, end_all)} s | {fmt_mib(max(s.rss for s in part))} "
            f"| {fmt_mib(max(s.anon for s in part))} "
            f"| {fmt_mib(max(s.memfd_bytes for s in part))} "
            f"| {fmt_mib(max(s.footprint for s in part))} "
            f"| {fmt_mib(last.bytes if last else None)} | {last.objects if last else '—'} "
            f"| {last.evictions if last else '—'} |"
        )
    lines += ["", "Footprint over time:", "", "```", *_spark(foot, limit), "```", "",
              "Machine:", "", *info.markdown_lines()]
    extra = " with " + " ".join(f"{k}={v}" for k, v in args.node_env) if args.node_env else ""
    lines.append(f"- node: `{shlex.join(command)} node --config … --name soak`{extra}")
    lines.append(f"- load average at end (1/5/15 min): {machine.loadavg()}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# disk (a): latency of a memory HIT, a page-cache file via sendfile, a miss to a parent


DISK_SIZES: tuple[int, ...] = (2 * KIB, 64 * KIB, 512 * KIB, 2 * MIB)
_MSG_MORE = getattr(socket, "MSG_MORE", 0)


def _request_targets(sock: socket.socket) -> Iterator[str]:
    """The request-target of each keep-alive GET a benchmark client sends on ``sock`` (heads
    only: these servers' clients send no bodies), until it closes."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        yield head.split(b" ", 2)[1].decode()


class _DiskHandler(socketserver.BaseRequestHandler):
    """Keep-alive GETs of ``/{mem|memfd|file|cold}/{size}``; blocking, one thread per client,
    so each way of answering is the only thing measured (no event loop in the way)."""

    server: _DiskServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        for target in _request_targets(sock):
            self.server.answer(sock, target)


class _DiskServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, directory: Path) -> None:
        super().__init__((LOOPBACK, port), _DiskHandler)
        from reelcdn.edge.cache.bodyfile import file_body

        self.bodies = {size: _SOURCE[:size] for size in DISK_SIZES}
        self.memfds = {size: file_body([body], size) for size, body in self.bodies.items()}
        self.files: dict[int, str] = {}
        for size, body in self.bodies.items():
            path = directory / f"obj-{size}"
            with path.open("wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            self.files[size] = str(path)

    def answer(self, sock: socket.socket, target: str) -> None:
        try:
            _, route, size_text = target.split("/", 2)
            size = int(size_text)
            body = self.bodies[size]
        except (ValueError, KeyError):
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: video/iso.segment\r\n"
            b"Cache-Control: public, max-age=86400\r\nETag: \"%d\"\r\nContent-Length: %d\r\n\r\n"
            % (size, size)
        )
        if route == "mem":
            if size <= 64 * KIB:
                sock.sendall(head + body)
            else:
                sock.sendall(head)
                sock.sendall(body)
            return
        if route == "memfd":
            sock.send(head, _MSG_MORE)
            _sendfile(sock, self.memfds[size].fd, size)
            return
        fd = os.open(self.files[size], os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fstat(fd)  # what a disk tier does to learn the length / check the entry
            if route == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            sock.send(head, _MSG_MORE)
            _sendfile(sock, fd, size)
        finally:
            os.close(fd)


def _sendfile(sock: socket.socket, fd: int, size: int) -> None:
    offset = 0
    while offset < size:
        sent = os.sendfile(sock.fileno(), fd, offset, size - offset)
        if not sent:
            raise OSError("sendfile sent nothing")
        offset += sent


def run_disk_server(args: argparse.Namespace) -> int:
    """Hidden subcommand: serve until SIGTERM (the ``disk`` benchmark runs it as a process)."""
    import signal

    directory = Path(args.dir)
    server = _DiskServer(args.port, directory)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"disk server on {LOOPBACK}:{args.port}, files in {directory}", flush=True)
    server.serve_forever(poll_interval=0.2)
    return 0


class KeepAliveClient:
    """Sequential GETs on one connection, timing each to its last body byte.

    Blocking and minimal (``recv_into`` a reused buffer) so that the client's cost is small
    and the same for every server measured."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(4 * MIB)
        self.pending = b""

    def close(self) -> None:
        self.sock.close()

    def _read_head(self) -> tuple[bytes, bytes]:
        data = self.pending
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("connection closed before the response head")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def _read_exactly(self, n: int, rest: bytes) -> bytes:
        """Consume ``n`` body bytes (``rest`` first); return what arrived beyond them."""
        if len(rest) >= n:
            return rest[n:]
        remaining = n - len(rest)
        view = memoryview(self.buf)
        while remaining:
            got = self.sock.recv_into(view, min(remaining, len(self.buf)))
            if not got:
                raise OSError("connection closed mid-body")
            remaining -= got
        return b""

    def get(self, path: str) -> tuple[float, int, str]:
        """(seconds, status, Cache-Status) of one GET."""
        t0 = time.perf_counter()
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head, rest = self._read_head()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if "content-length" in fields:
            self.pending = self._read_exactly(int(fields["content-length"]), rest)
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            self.pending = self._read_chunked(rest)
        else:
            raise OSError(f"response without framing: {lines[0]}")
        return time.perf_counter() - t0, status, fields.get("cache-status", "")

    def _read_chunked(self, data: bytes) -> bytes:
        while True:
            while b"\r\n" not in data:
                data += self.sock.recv(65536)
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = self._read_exactly(size + 2, data)
            if size == 0:
                return data


@dataclass(frozen=True, slots=True)
class Latency:
    way: str
    size: int
    samples: tuple[float, ...]
    note: str = ""

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_gets(port: int, path: str, count: int, warmup: int = 20,
              expect: Callable[[str], bool] | None = None) -> tuple[list[float], str]:
    """``count`` timed GETs after ``warmup`` untimed ones; the last Cache-Status seen."""
    client = KeepAliveClient(port)
    try:
        samples = []
        status_value = ""
        for i in range(warmup + count):
            seconds, status, status_value = client.get(path)
            if status != 200:
                raise BenchFailure(f"GET {path} on port {port} answered {status}")
            if expect is not None and not expect(status_value):
                raise BenchFailure(f"GET {path} on port {port}: unexpected Cache-Status "
                                   f"{status_value!r}")
            if i >= warmup:
                samples.append(seconds)
        return samples, status_value
    finally:
        client.close()


def _node(name: str, command: list[str], workdir: Path, table: str) -> tuple[ManagedProcess, int]:
    port, admin = free_port(), free_port()
    config = workdir / f"{name}.toml"
    config.write_text(f'[node.{name}]\nlisten = "{LOOPBACK}:{port}"\nadmin = "{LOOPBACK}:{admin}"\n'
                      + table)
    proc = ManagedProcess(name, [*command, "node", "--config", str(config), "--name", name],
                          workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.start()
    proc.wait_ready(lambda: http_get(admin, "/health", timeout=1).status == 200
                    and port_open(port), "admin /health answered 200")
    return proc, port


def measure_latencies(args: argparse.Namespace, workdir: Path,
                      command: list[str]) -> list[Latency]:
    """Every way of answering, every size, one after the other (sequential, keep-alive)."""
    running: list[ManagedProcess] = []
    results: list[Latency] = []
    try:
        disk_port = free_port()
        files = Path(tempfile.mkdtemp(prefix="reelcdn-disk-", dir=args.disk_dir))
        server = ManagedProcess(
            "diskserver",
            [sys.executable, "-m", "reelcdn.loadtest.bench.memory", "disk-server",
             "--port", str(disk_port), "--dir", str(files)],
            workdir,
        )
        running.append(server)
        server.start()
        server.wait_ready(lambda: port_open(disk_port), "listening")
        parent, parent_port = _node("parent", command, workdir,
                                    f'upstream = "http://{LOOPBACK}:{disk_port}"\n'
                                    'cache_memory = "64MiB"\n')
        running.append(parent)
        # The edge stores nothing (every object is over its max_object_size): each request is
        # a miss answered by the parent's HIT over loopback, through the edge's pooled client.
        edge, edge_port = _node("edge", command, workdir,
                                f'upstream = "http://{LOOPBACK}:{parent_port}"\n'
                                'cache_memory = "64MiB"\nmax_object_size = "1KiB"\n')
        running.append(edge)
        log("disk: servers ready")
        from .servers import cache_status_is_hit

        for size in DISK_SIZES:
            count = args.requests if size < MIB else max(50, args.requests // 2)
            path = f"/mem/{size}"
            http_get(parent_port, path)  # fill the parent
            ways: list[tuple[str, int, str, Callable[[str], bool] | None]] = [
                ("node: HIT from memory", parent_port, path, cache_status_is_hit),
                ("node: miss → parent HIT (loopback)", edge_port, path,
                 lambda v: not cache_status_is_hit(v)),
                ("bytes in memory", disk_port, path, None),
                ("memory file, sendfile", disk_port, f"/memfd/{size}", None),
                ("disk file in page cache: open + sendfile", disk_port, f"/file/{size}", None),
                ("disk file not cached (fadvise DONTNEED first)", disk_port, f"/cold/{size}", None),
            ]
            for way, port, target, expect in ways:
                samples, _ = time_gets(port, target, count, expect=expect)
                results.append(Latency(way, size, tuple(samples)))
                log(f"disk: {way}, {size // KIB} KiB: p50 {results[-1].pct(0.5) * 1e6:.0f} µs")
        import shutil

        shutil.rmtree(files, ignore_errors=True)
    finally:
        for proc in reversed(running):
            proc.stop()
    return results


# ----------------------------------------------------------------------------------------
# disk (b): hit ratios of memory-only vs memory + disk, simulated


#: What the simulated store charges per entry beyond the body (≈ the measured overhead).
SIM_ENTRY_CHARGE = 4 * KIB


@dataclass(frozen=True, slots=True)
class SimResult:
    zipf: float
    disk: int
    requests: int
    memory_hits: int
    disk_hits: int
    bytes_total: int
    bytes_memory: int
    bytes_disk: int

    @property
    def hit_ratio(self) -> float:
        return (self.memory_hits + self.disk_hits) / self.requests

    @property
    def byte_hit_ratio(self) -> float:
        return (self.bytes_memory + self.bytes_disk) / self.bytes_total


def simulate(trace: Sequence[tuple[int, int]], memory: int, disk: int, warmup: int,
             zipf: float) -> SimResult:
    """Replay ``trace`` ((object id, size) pairs) through an LRU of ``memory`` bytes whose
    victims go to an LRU of ``disk`` bytes (exclusive: a disk hit moves the object back to
    memory). Counts only after ``warmup`` requests."""
    mem: OrderedDict[int, int] = OrderedDict()
    dsk: OrderedDict[int, int] = OrderedDict()
    mem_bytes = dsk_bytes = 0
    m_hits = d_hits = b_total = b_mem = b_disk = n = 0
    for i, (key, size) in enumerate(trace):
        counted = i >= warmup
        charge = size + SIM_ENTRY_CHARGE
        if key in mem:
            mem.move_to_end(key)
            if counted:
                m_hits += 1
                b_mem += size
        else:
            if key in dsk:
                del dsk[key]
                dsk_bytes -= charge
                if counted:
                    d_hits += 1
                    b_disk += size
            mem[key] = charge
            mem_bytes += charge
            while mem_bytes > memory:
                victim, vcharge = mem.popitem(last=False)
                mem_bytes -= vcharge
                if disk:
                    dsk[victim] = vcharge
                    dsk_bytes += vcharge
                    while dsk_bytes > disk:
                        dsk_bytes -= dsk.popitem(last=False)[1]
        if counted:
            n += 1
            b_total += size
    return SimResult(zipf, disk, n, m_hits, d_hits, b_total, b_mem, b_disk)


def simulate_all(args: argparse.Namespace) -> list[tuple[Catalogue, SimResult]]:
    """Every catalogue size × Zipf exponent × disk size, on one trace per catalogue and Zipf."""
    results = []
    for videos in args.sim_videos:
        catalogue = Catalogue(videos, 8, args.seed)
        ids = {path: i for i, path in enumerate(catalogue.objects)}
        for zipf in args.sim_zipf:
            sampler = catalogue.sampler(zipf, args.seed + 11)
            trace = [(ids[o.path], o.size) for o in sampler.trace(args.sim_requests)]
            warmup = len(trace) * 3 // 10
            for disk in (0, *args.sim_disk):
                r = simulate(trace, args.sim_memory, disk, warmup, zipf)
                results.append((catalogue, r))
                log(f"disk: simulated {catalogue.total_bytes / 2**30:.0f} GiB catalogue, Zipf "
                    f"{zipf}, disk {fmt_mib(disk)}: hit ratio {r.hit_ratio:.1%}, byte hit ratio "
                    f"{r.byte_hit_ratio:.1%}")
    return results


def disk_report(lat: list[Latency], sims: list[tuple[Catalogue, SimResult]],
                args: argparse.Namespace, argv: Sequence[str], info: machine.MachineInfo,
                started: datetime) -> str:
    ways = list(dict.fromkeys(x.way for x in lat))
    sizes = list(dict.fromkeys(x.size for x in lat))
    by = {(x.way, x.size): x for x in lat}
    lines = [
        f"### Disk tier measurements, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{shlex.join([*PROG.split(), *argv])}`",
        "",
        "(a) One GET at a time on a keep-alive loopback connection, time to the last body byte, "
        f"p50 / p99 in µs over {args.requests} requests ({max(50, args.requests // 2)} for "
        "≥ 1 MiB) after 20 unrecorded. *node*: the reelcdn node (uvloop); the other rows: a "
        "minimal blocking server, the same for every row, answering from bytes in memory, "
        "from a memory file with sendfile (what the node does for bodies ≥ 64 KiB), from a "
        "file on disk (`open` + `fstat` + `sendfile` + `close`, as a disk tier would), and "
        f"from that file after `posix_fadvise(DONTNEED)` (a real disk read; disk: "
        f"{args.disk_dir or tempfile.gettempdir()}).",
        "",
    ]
    if not lat:
        lines.append("(a) not measured (--sim-only).")
    else:
        lines += ["| way | " + " | ".join(f"{s // KIB} KiB" for s in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
    for way in ways:
        cells = []
        for size in sizes:
            x = by.get((way, size))
            cells.append("—" if x is None else
                         f"{x.pct(0.5) * 1e6:,.0f} / {x.pct(0.99) * 1e6:,.0f}")
        lines.append(f"| {way} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"(b) Simulated: {args.sim_requests:,} requests per row, drawn like the soak's (80 % "
        "segments, 13 % playlists, inits, masters; Zipf over videos, early segments more "
        "popular) over catalogues of 8-segment videos; memory LRU "
        f"{fmt_mib(args.sim_memory)}, its victims to a disk LRU (exclusive: a disk hit moves "
        f"back to memory); {SIM_ENTRY_CHARGE // KIB} KiB charged per entry beyond the body; "
        "the first 30 % of each trace warms the caches and is not counted.",
        "",
        "| catalogue | Zipf s | disk | hit ratio (memory + disk) | of which disk "
        "| byte hit ratio | of which disk | requests to the parent |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for catalogue, r in sims:
        lines.append(
            f"| {catalogue.videos} videos, {catalogue.total_bytes / 2**30:.1f} GiB "
            f"({catalogue.total_bytes / args.sim_memory:.0f}× memory) | {r.zipf} "
            f"| {'none' if not r.disk else f'{r.disk / 2**30:g} GiB'} "
            f"| {r.hit_ratio:.1%} | {r.disk_hits / r.requests:.1%} | {r.byte_hit_ratio:.1%} "
            f"| {r.bytes_disk / r.bytes_total:.1%} | {1 - r.hit_ratio:.1%} |"
        )
    lines += ["", "Machine:", "", *info.markdown_lines()]
    return "\n".join(lines) + "\n"


def run_disk(args: argparse.Namespace, argv: Sequence[str]) -> int:
    command = find_node_command(tuple(shlex.split(args.node_cmd)) if args.node_cmd else None)
    if command is None and not args.sim_only:
        print(f"{PROG} disk: missing prerequisite: the `reelcdn` console script "
              "(pip install -e .), or --node-cmd; or --sim-only", file=sys.stderr)
        return 2
    info = machine_info()
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="reelcdn-disk-bench-"))
    lat: list[Latency] = []
    try:
        if not args.sim_only:
            assert command is not None
            lat = measure_latencies(args, workdir, command)
    except StartupError as exc:
        print(f"{PROG} disk: {exc.name} failed to start: {exc.reason}\n{exc.details}",
              file=sys.stderr)
        return 1
    except BenchFailure as exc:
        print(f"{PROG} disk: {exc}", file=sys.stderr)
        return 1
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    sims = simulate_all(args)
    report = disk_report(lat, sims, args, argv, info, started)
    print(report)
    _append(args.markdown, report)
    return 0


# ----------------------------------------------------------------------------------------
# disk-node: the disk tier as built, in a real node process


def _object_body(index: int, size: int) -> memoryview:
    """Object ``index`` of the disk-node origin: distinct per object, no copy."""
    return memoryview(_SOURCE)[index % 251: index % 251 + size]


class _ObjectHandler(socketserver.BaseRequestHandler):
    """Keep-alive GETs of ``/obj/{i}``: ``--object-size`` bytes, cacheable for a day."""

    server: _ObjectOrigin

    def handle(self) -> None:
        sock: socket.socket = self.request
        for target in _request_targets(sock):
            try:
                index = int(target.removeprefix("/obj/"))
            except ValueError:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            size = self.server.size
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: video/iso.segment\r\n"
                b"Cache-Control: public, max-age=86400\r\nETag: \"o%d\"\r\n"
                b"Content-Length: %d\r\n\r\n" % (index, size)
            )
            sock.sendall(_object_body(index, size))


class _ObjectOrigin(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, size: int) -> None:
        super().__init__((LOOPBACK, port), _ObjectHandler)
        self.size = size


def run_object_origin(args: argparse.Namespace) -> int:
    """Hidden subcommand: the disk-node origin, until SIGTERM."""
    import signal

    server = _ObjectOrigin(args.port, args.object_size)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"object origin on {LOOPBACK}:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    return 0


class BodyClient(KeepAliveClient):
    """Sequential GETs on one connection, each body kept whole to be verified."""

    def fetch(self, path: str) -> tuple[float, int, str, bytes]:
        """(seconds to the last body byte, status, Cache-Status, body)."""
        t0 = time.perf_counter()
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head, rest = self._read_head()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(fields["content-length"])
        body = bytearray(length)
        view = memoryview(body)
        have = min(len(rest), length)
        view[:have] = rest[:have]
        self.pending = rest[have:]
        while have < length:
            got = self.sock.recv_into(view[have:], length - have)
            if not got:
                raise OSError("connection closed mid-body")
            have += got
        return time.perf_counter() - t0, status, fields.get("cache-status", ""), bytes(body)


@dataclass(slots=True)
class DiskNodeRun:
    label: str
    disk: int
    requests: int = 0
    hits: int = 0
    measured: int = 0            # requests after the warm-up
    measured_hits: int = 0
    hit_seconds: list[float] = field(default_factory=list)
    miss_seconds: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    latencies: list[Latency] = field(default_factory=list)


def _zipf_trace(objects: int, count: int, s: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** s for rank in range(objects)]
    order = list(range(objects))
    rng.shuffle(order)  # popularity unrelated to the object number
    return [order[i] for i in rng.choices(range(objects), weights=weights, k=count)]


def _drop_page_cache(directory: Path) -> int:
    """posix_fadvise(DONTNEED) every file under ``directory``; pages a process maps stay."""
    dropped = 0
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                dropped += 1
            finally:
                os.close(fd)
    return dropped


def _metrics(admin: int) -> dict[str, float]:
    status, body = admin_get(admin, "/metrics", "")
    if status != 200:
        raise BenchFailure(f"/metrics answered {status}")
    return parse_metrics(body.decode())


def _timed_ways(client: BodyClient, args: argparse.Namespace, admin: int, disk: int,
                cache_dir: Path) -> list[Latency]:
    from .servers import cache_status_is_hit

    size, objects, count = args.object_size, args.objects, args.lat_requests
    results: list[Latency] = []

    def timed(way: str, paths: Sequence[str], want_hit: bool,
              before: Callable[[], object] | None = None) -> Latency:
        samples = []
        for path in paths:
            if before is not None:
                before()
            seconds, status, cache_status, body = client.fetch(path)
            if status != 200 or cache_status_is_hit(cache_status) != want_hit:
                raise BenchFailure(f"{way}: GET {path} answered {status}, {cache_status!r}")
            if body != _object_body(int(path.rsplit("/", 1)[1]), size):
                raise BenchFailure(f"{way}: GET {path}: wrong body")
            samples.append(seconds)
        result = Latency(way, size, tuple(samples))
        log(f"disk-node: {way}: p50 {result.pct(0.5) * 1e6:.0f} µs, "
            f"p99 {result.pct(0.99) * 1e6:.0f} µs")
        return result

    hot = [f"/obj/{i}" for i in range(4)]  # 4 objects: well within any memory tested
    for path in hot:
        client.fetch(path)
    results.append(timed("HIT from memory", [hot[i % 4] for i in range(count)], True))
    every = [f"/obj/{i}" for i in range(objects)]
    if not disk:
        # Round-robin over the other objects, more than memory holds, after one untimed
        # pass (then the next object is always the least recently used): each one a miss.
        others = every[4:]
        for path in others:
            client.fetch(path)
        results.append(timed("miss → origin (loopback)",
                             [others[i % len(others)] for i in range(count)], False))
        return results
    for path in every:  # one pass: the LRU order is now this order, the oldest on disk
        client.fetch(path)
    time.sleep(0.5)  # let the writer catch up with the pass's demotions
    rounds = [every[i % objects] for i in range(count)]
    before = _metrics(admin).get("reelcdn_disk_hits_total", 0.0)
    results.append(timed("HIT from disk (page cache)", rounds, True))
    hits = _metrics(admin).get("reelcdn_disk_hits_total", 0.0) - before
    results[-1] = Latency(results[-1].way, size, results[-1].samples,
                          f"{hits:.0f} of {count} were disk hits")
    before = hits + before
    results.append(timed("HIT from disk, page cache dropped first", rounds, True,
                         before=lambda: _drop_page_cache(cache_dir)))
    hits = _metrics(admin).get("reelcdn_disk_hits_total", 0.0) - before
    results[-1] = Latency(results[-1].way, size, results[-1].samples,
                          f"{hits:.0f} of {count} were disk hits")
    return results


def measure_disk_node(args: argparse.Namespace, workdir: Path, label: str,
                      disk: int, origin_port: int) -> DiskNodeRun:
    from .servers import cache_status_is_hit

    run_ = DiskNodeRun(label, disk)
    cache_dir = Path(tempfile.mkdtemp(prefix="reelcdn-disk-node-", dir=args.disk_dir))
    table = (f'upstream = "http://{LOOPBACK}:{origin_port}"\n'
             f'cache_memory = {args.memory}\nmax_object_size = "64MiB"\n')
    if disk:
        table += f'cache_disk = {disk}\ncache_dir = "{cache_dir}"\n'
    port, admin = free_port(), free_port()
    config = workdir / f"{label.replace(' ', '-')}.toml"
    config.write_text(f'[node.bench]\nlisten = "{LOOPBACK}:{port}"\n'
                      f'admin = "{LOOPBACK}:{admin}"\n' + table)
    command = [sys.executable, "-m", "reelcdn.cli",
               "node", "--config", str(config), "--name", "bench"]
    proc = ManagedProcess(label.replace(" ", "-"), command, workdir,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.start()
    try:
        proc.wait_ready(lambda: http_get(admin, "/health", timeout=1).status == 200
                        and port_open(port), "admin /health answered 200")
        trace = _zipf_trace(args.objects, args.requests, args.zipf, args.seed)
        warmup = int(len(trace) * args.warmup)
        client = BodyClient(port)
        try:
            for n, index in enumerate(trace):
                path = f"/obj/{index}"
                seconds, status, cache_status, body = client.fetch(path)
                if status != 200 or body != _object_body(index, args.object_size):
                    raise BenchFailure(f"{label}: GET {path} answered {status} or a wrong body")
                hit = cache_status_is_hit(cache_status)
                run_.requests += 1
                run_.hits += hit
                if n >= warmup:
                    run_.measured += 1
                    run_.measured_hits += hit
                    (run_.hit_seconds if hit else run_.miss_seconds).append(seconds)
            log(f"disk-node: {label}: {run_.measured_hits}/{run_.measured} hits after warm-up")
            run_.metrics = _metrics(admin)
            run_.latencies = _timed_ways(client, args, admin, disk, cache_dir)
        finally:
            client.close()
    finally:
        proc.stop()
        import shutil

        shutil.rmtree(cache_dir, ignore_errors=True)
    return run_


def _pct(values: Sequence[float], q: float) -> str:
    if not values:
        return "–"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6:,.0f}"


def disk_node_report(runs: list[DiskNodeRun], args: argparse.Namespace, argv: Sequence[str],
                     info: machine.MachineInfo, started: datetime) -> str:
    when = started.strftime("%Y-%m-%d %H:%M UTC")
    out = [f"### Disk tier, real node, {when}", ""]
    out.append(f"Command: `{PROG} {' '.join(shlex.quote(a) for a in argv)}`")
    out.append("")
    out.append(
        f"One node process (`cache_memory = {fmt_mib(args.memory)}`), origin: {args.objects} "
        f"objects of {fmt_mib(args.object_size)} ({fmt_mib(args.objects * args.object_size)}, "
        f"`max-age=86400`) from a separate process on loopback. Load: {args.requests} GETs, "
        f"Zipf s = {args.zipf} over the objects, one at a time on one keep-alive connection "
        f"(every body verified); the first {args.warmup:.0%} warm the cache and are not counted "
        "in the hit ratio (origin requests: the whole run, from `reelcdn_upstream_requests`). "
        "The node runs as `reelcdn node`.")
    out.append("")
    out.append("| node | requests | hit ratio (after warm-up) | origin requests | disk hits | "
               "disk writes | dropped writes | disk evictions | disk bytes at end | "
               "HIT p50 / p99 µs | miss p50 / p99 µs |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        m = r.metrics
        ratio = r.measured_hits / r.measured if r.measured else 0.0
        out.append(
            f"| {r.label}{f' ({fmt_mib(r.disk)} disk)' if r.disk else ''} | {r.requests} | "
            f"{ratio:.1%} | {m.get('reelcdn_upstream_requests_total', 0):.0f} | "
            f"{m.get('reelcdn_disk_hits_total', 0):.0f} | "
            f"{m.get('reelcdn_disk_writes_total', 0):.0f} | "
            f"{m.get('reelcdn_disk_dropped_writes_total', 0):.0f} | "
            f"{m.get('reelcdn_disk_evictions_total', 0):.0f} | "
            f"{fmt_mib(m.get('reelcdn_disk_bytes', 0))} | "
            f"{_pct(r.hit_seconds, 0.5)} / {_pct(r.hit_seconds, 0.99)} | "
            f"{_pct(r.miss_seconds, 0.5)} / {_pct(r.miss_seconds, 0.99)} |")
    out.append("")
    out.append(f"Time to the last body byte of one {fmt_mib(args.object_size)} GET, "
               f"{args.lat_requests} requests per row, sequential on one keep-alive connection:")
    out.append("")
    out.append("| way | node | p50 µs | p99 µs | note |")
    out.append("|---|---|---:|---:|---|")
    for r in runs:
        for lat in r.latencies:
            out.append(f"| {lat.way} | {r.label} | {lat.pct(0.5) * 1e6:,.0f} | "
                       f"{lat.pct(0.99) * 1e6:,.0f} | {lat.note} |")
    out.append("")
    out += ["Machine:", "", *info.markdown_lines(),
            f"- load average at end (1/5/15 min): {machine.loadavg()}"]
    return "\n".join(out) + "\n"


def run_disk_node(args: argparse.Namespace, argv: Sequence[str]) -> int:
    info = machine_info()
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="reelcdn-disk-node-bench-"))
    runs: list[DiskNodeRun] = []
    origin_port = free_port()
    origin = ManagedProcess(
        "origin",
        [sys.executable, "-m", "reelcdn.loadtest.bench.memory", "object-origin",
         "--port", str(origin_port), "--object-size", str(args.object_size)],
        workdir,
    )
    try:
        origin.start()
        origin.wait_ready(lambda: port_open(origin_port), "listening")
        for label, disk in (("memory only", 0), ("memory + disk", args.disk)):
            runs.append(measure_disk_node(args, workdir, label, disk, origin_port))
    except StartupError as exc:
        print(f"{PROG} disk-node: {exc.name} failed to start: {exc.reason}\n{exc.details}",
              file=sys.stderr)
        return 1
    finally:
        origin.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    report = disk_node_report(runs, args, argv, info, started)
    print(report)
    _append(args.markdown, report)
    return 0


# ----------------------------------------------------------------------------------------
# Command line


def _append(path: Path | None, text: str) -> None:
    if path is not None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
        log(f"appended to {path}")


def _env_pair(value: str) -> tuple[str, str]:
    name, sep, val = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name, val


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{overhead,soak,disk,disk-node}")
    over = sub.add_parser("overhead", help="bytes per cached object beyond its body")
    over.add_argument("--rss-child", type=int, choices=range(len(PROFILES)),
                      help=argparse.SUPPRESS)
    soak = sub.add_parser("soak", help="RSS of one node under a long mixed load")
    soak.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    soak.add_argument("--cache", type=byte_size, default=256 * MIB,
                      help="cache_memory of the node (default 256MiB)")
    soak.add_argument("--rate", type=float, default=300.0, help="requests/s (default 300)")
    soak.add_argument("--connections", type=positive_int, default=16)
    soak.add_argument("--max-requests", type=positive_int, default=2_000_000)
    soak.add_argument("--videos", type=positive_int, default=120)
    soak.add_argument("--segments", type=positive_int, default=8)
    soak.add_argument("--zipf", type=float, default=0.9)
    soak.add_argument("--mix", choices=sorted(MIX_TEXT), default="players",
                      help="players (default): the full player mix; small: many small objects, "
                      "where per-entry overhead decides memory")
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--node-env", type=_env_pair, action="append", default=[],
                      metavar="NAME=VALUE",
                      help="environment of the node (e.g. MALLOC_ARENA_MAX=2); repeatable")
    disk = sub.add_parser("disk", help="what a disk tier would buy (latency, hit ratio)")
    disk.add_argument("--requests", type=positive_int, default=400,
                      help="timed requests per way and size (default 400)")
    disk.add_argument("--disk-dir", help="where the disk files go (default: the temp dir)")
    disk.add_argument("--sim-only", action="store_true", help="skip (a), simulate only")
    disk.add_argument("--sim-videos", type=positive_int, nargs="+", default=[500, 2000],
                      help="catalogue sizes in videos of ~17 MiB (default 500 2000)")
    disk.add_argument("--sim-requests", type=positive_int, default=1_000_000)
    disk.add_argument("--sim-memory", type=byte_size, default=256 * MIB)
    disk.add_argument("--sim-disk", type=lambda v: byte_size(v) if not v.endswith("GiB")
                      else int(float(v[:-3]) * 2**30), nargs="+",
                      default=[1 * 2**30, 4 * 2**30, 16 * 2**30],
                      help="disk sizes to simulate (default 1GiB 4GiB 16GiB)")
    disk.add_argument("--sim-zipf", type=float, nargs="+", default=[0.7, 0.9, 1.1])
    disk.add_argument("--seed", type=int, default=1)
    dnode = sub.add_parser("disk-node", help="the disk tier as built, in a real node")
    dnode.add_argument("--memory", type=byte_size, default=32 * MIB)
    dnode.add_argument("--disk", type=byte_size, default=256 * MIB)
    dnode.add_argument("--objects", type=positive_int, default=200)
    dnode.add_argument("--object-size", type=byte_size, default=MIB)
    dnode.add_argument("--requests", type=positive_int, default=4000)
    dnode.add_argument("--lat-requests", type=positive_int, default=400)
    dnode.add_argument("--zipf", type=float, default=0.9)
    dnode.add_argument("--warmup", type=float, default=0.25,
                       help="fraction of the trace not counted in the hit ratio")
    dnode.add_argument("--seed", type=int, default=1)
    dnode.add_argument("--disk-dir", help="where cache_dir goes (default: the temp dir)")
    origin_cmd = sub.add_parser("object-origin", help=argparse.SUPPRESS)
    origin_cmd.add_argument("--port", type=int, required=True)
    origin_cmd.add_argument("--object-size", type=int, required=True)
    server = sub.add_parser("disk-server", help=argparse.SUPPRESS)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--dir", required=True)
    for p in (over, soak, disk, dnode):
        p.add_argument("--markdown", type=Path, metavar="FILE",
                       help="also append the result section to FILE")
    for p in (soak, disk):
        p.add_argument("--node-cmd", metavar="CMD", help="command that runs the reelcdn CLI")
    soak.add_argument("--keep-temp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    if args.command == "soak" and not 1 <= args.duration <= 3600:
        parser.error("--duration must be between 1 and 3600 s")
    if args.command == "soak" and not 0 < args.rate <= 10_000:
        parser.error("--rate must be in (0, 10000]")
    return args


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        if args.command == "overhead":
            return run_overhead(args)
        if args.command == "soak":
            return run_soak(args, argv)
        if args.command == "disk":
            return run_disk(args, argv)
        if args.command == "disk-node":
            return run_disk_node(args, argv)
        if args.command == "object-origin":
            return run_object_origin(args)
        return run_disk_server(args)
    except BuildError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except BenchFailure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())
