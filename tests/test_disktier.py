"""The disk tier (edge/cache/disktier.py) behind the memory store, with real files in tmp_path.

What must hold: a memory victim worth a file comes back byte for byte, with its headers, Age
and staleness; the tiers are exclusive (a key is in memory or on disk, never both) and the disk
tier stays within its budget, unlinking what it evicts; purge reaches the disk; a full write
queue drops victims instead of holding memory; nothing of a previous run survives a start.
End to end, a node whose working set exceeds its memory answers the early objects again
without asking the origin, Range requests included.

Every unit test runs on both twins of the LRU index (as tests/test_store.py does).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from conftest import url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelcdn.edge.cache import disktier as disk_module
from reelcdn.edge.cache import store as store_module
from reelcdn.edge.cache.bodyfile import MEMFD_AVAILABLE, FileBody, file_body
from reelcdn.edge.cache.disktier import BLOCK, DiskTier, disk_charge, sweep_stale_runs
from reelcdn.edge.cache.entry import ENTRY_OVERHEAD, CacheEntry, body_charge
from reelcdn.edge.cache.freshness import Freshness
from reelcdn.edge.cache.store import MemoryStore

TWIN_MODULE = "lru"  # the twins of the LRU index (the ``twin`` fixture, conftest.py)

KIB = 1024


def freshness(lifetime: float = 600) -> Freshness:
    return Freshness(storable=True, reason="max-age", lifetime=lifetime,
                     stale_while_revalidate=0, stale_if_error=0, must_revalidate=False,
                     no_cache=False, has_validator=True)


def entry(key: str, size: int = 100 * KIB, *, vary: tuple[bytes, ...] = (),
          primary: str | None = None, lifetime: float = 600, age: float = 0.0,
          memfd: bool = False) -> CacheEntry:
    data = os.urandom(size)
    body: Any = file_body([data], size) if memfd and MEMFD_AVAILABLE else data
    return CacheEntry(
        key=key, primary=primary or key, status=200,
        headers=[(b"Content-Type", b"video/mp4"), (b"ETag", f'"{key}"'.encode()),
                 (b"Cache-Control", b"max-age=%d" % lifetime), (b"X-Odd", b"a\x00b: c")],
        body=body, freshness=freshness(lifetime), response_time=time.time() - age,
        initial_age=0.0, vary=vary,
    )


def config(directory: Path, disk: int, min_bytes: int = 64 * KIB) -> SimpleNamespace:
    return SimpleNamespace(cache_disk=disk, cache_dir=str(directory), sendfile_min_bytes=min_bytes)


@pytest.fixture(autouse=True)
def index_twin(twin: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Stores and tiers made during the test use this twin of the LRU index."""
    monkeypatch.setattr(store_module, "lru", twin)
    monkeypatch.setattr(disk_module, "lru", twin)
    yield twin


def make_store(tmp_path: Path, memory_entries: int = 2, disk: int = 10 * 1024 * KIB,
               size: int = 100 * KIB) -> MemoryStore:
    """A store holding ``memory_entries`` entries of ``size`` in memory, with a disk tier."""
    # The slack covers a promoted entry's file charge (whole pages + 1 KiB): still N entries.
    store = MemoryStore(entry("/probe", size).charge * memory_entries + 4096)
    store.configure_disk(config(tmp_path / "disk", disk))
    return store


def files(store: MemoryStore) -> set[str]:
    tier = store.disk
    assert tier is not None
    return {n for n in os.listdir(tier.run_dir) if n != ".lock"}


def check(store: MemoryStore) -> None:
    """Exclusive tiers; disk bytes are the block-rounded sizes and within the budget; after a
    flush, the files are exactly the written records plus the kept files of promoted entries."""
    tier = store.disk
    assert tier is not None
    assert tier.flush()
    in_memory = set(store._entries)
    assert not in_memory & set(tier._records)
    assert tier.bytes == sum(disk_charge(r.size) for r in tier._records.values()) <= tier.capacity
    assert set(tier._index) == set(tier._records)
    expected = {os.path.basename(r.path) for r in tier._records.values()}
    expected |= {os.path.basename(e.disk_path) for e in store if e.disk_path is not None}
    assert files(store) == expected
    counts = tier.counts
    assert (counts.disk_bytes, counts.disk_objects) == (tier.bytes, len(tier))


def test_tier_uses_the_twin(tmp_path: Path, index_twin: ModuleType) -> None:
    store = make_store(tmp_path)
    assert type(store.disk._index) is index_twin.LruIndex


# --- demotion and promotion ---------------------------------------------------------------------


@pytest.mark.parametrize("memfd", [False, True])
def test_victim_comes_back_from_disk_byte_for_byte(tmp_path: Path, memfd: bool) -> None:
    store = make_store(tmp_path)
    first = entry("/a", age=5.0, memfd=memfd)
    body, headers, response_time = bytes(first.body), list(first.headers), first.response_time
    store.insert(first)
    store.insert(entry("/b"))
    store.insert(entry("/c"))  # /a leaves memory for the disk
    assert store.peek("/a") is None and "/a" in store.disk
    check(store)
    assert store.disk.counts.disk_writes == 1
    back = store.lookup("/a", {})
    assert back is not None and back is not first
    assert type(back.body) is FileBody and back.body.fd >= 0  # served with sendfile
    assert bytes(back.body) == body and len(back.body) == len(body)
    assert bytes(memoryview(back.body)[1000:2000]) == body[1000:2000]
    assert back.headers == headers and back.etag == '"/a"'
    assert back.response_time == response_time and 5.0 <= back.age(time.time()) < 6.0
    assert back.is_fresh(time.time())
    assert back.charge == body_charge(back.body) + len(back.header_block) + len(
        back.key) + ENTRY_OVERHEAD
    # Exclusive: now in memory only (as the most recent), and /b went to disk in its place.
    assert store.peek("/a") is back and "/a" not in store.disk and "/b" in store.disk
    assert store.disk.counts.disk_hits == 1
    check(store)


def test_stale_on_disk_is_stale_when_it_comes_back(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.insert(entry("/s", lifetime=1, age=0.5))
    store.insert(entry("/b"))
    store.insert(entry("/c"))
    assert store.disk.flush()
    time.sleep(0.6)
    back = store.lookup("/s", {})
    assert back is not None and not back.is_fresh(time.time())
    assert back.ttl(time.time()) < 0 and back.age(time.time()) >= 1.1
    assert back.etag == '"/s"'  # what the node revalidates with


def test_promoted_file_is_reused_when_memory_evicts_it_again(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for key in ("/a", "/b", "/c"):
        store.insert(entry(key))
    store.disk.flush()
    back = store.lookup("/a", {})
    path = back.disk_path
    assert path is not None and os.path.exists(path)
    store.insert(entry("/d"))
    store.insert(entry("/e"))  # /a leaves memory again
    assert "/a" in store.disk and store.disk._records["/a"].path == path
    check(store)
    assert store.disk.counts.disk_writes == 3  # /a, /b, /c: not /a twice
    assert bytes(store.lookup("/a", {}).body) == bytes(back.body)


def test_small_bodies_just_drop(tmp_path: Path) -> None:
    store = MemoryStore(entry("/x", 1000).charge * 2 + 10)
    store.configure_disk(config(tmp_path, 10 * 1024 * KIB))
    for key in ("/x", "/y", "/z"):
        store.insert(entry(key, 1000))
    assert store.peek("/x") is None and len(store.disk) == 0
    assert store.lookup("/x", {}) is None
    check(store)


def test_pending_write_serves_the_original_body(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """While a victim waits for its write, a lookup takes it back with the body it had; the
    write is cancelled or its file removed."""
    gate = threading.Event()
    real = disk_module._write_body

    def slow(path: str, body: Any) -> None:
        gate.wait(10)
        real(path, body)

    monkeypatch.setattr(disk_module, "_write_body", slow)
    store = make_store(tmp_path)
    first = entry("/a")
    for e in (first, entry("/b"), entry("/c")):
        store.insert(e)
    assert store.disk.pending == 1
    back = store.lookup("/a", {})
    assert back is first and type(back.body) is bytes and back.disk_path is None
    gate.set()  # /a's write finishes (its file is then removed); /b, evicted for /a, is kept
    check(store)
    assert store.disk.pending == 0 and store.disk.counts.disk_writes == 1
    assert set(store.disk._records) == {"/b"}


def test_write_queue_bound_drops_and_counts(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real = disk_module._write_body

    def blocked(path: str, body: Any) -> None:
        gate.wait(10)
        real(path, body)

    monkeypatch.setattr(disk_module, "_write_body", blocked)
    store = MemoryStore(entry("/probe").charge + 10)  # one entry in memory
    store.configure_disk(config(tmp_path, 10 * 1024 * KIB))
    store.disk.queue_entries = 3
    for i in range(7):
        store.insert(entry(f"/{i}"))  # 6 victims: 3 queued, 3 dropped
    assert store.disk.pending == 3 and store.disk.counts.disk_dropped_writes == 3
    assert set(store.disk._records) == {"/0", "/1", "/2"}
    gate.set()
    check(store)
    assert store.disk.counts.disk_writes == 3
    store.disk.queue_entries, store.disk.queue_bytes = 100, 150 * KIB
    gate.clear()
    for i in range(7, 10):
        store.insert(entry(f"/{i}"))  # 100 KiB each: the second and third exceed 150 KiB
    assert store.disk.pending == 1 and store.disk.counts.disk_dropped_writes == 5
    gate.set()
    check(store)


def test_write_failure_drops_the_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(path: str, body: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk_module, "_write_body", failing)
    store = make_store(tmp_path)
    for key in ("/a", "/b", "/c"):
        store.insert(entry(key))
    check(store)
    assert len(store.disk) == 0 and store.disk.counts.disk_errors == 1
    assert store.lookup("/a", {}) is None


def test_vanished_file_is_a_miss(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for key in ("/a", "/b", "/c"):
        store.insert(entry(key))
    store.disk.flush()
    os.unlink(store.disk._records["/a"].path)
    assert store.lookup("/a", {}) is None
    assert store.disk.counts.disk_errors == 1 and "/a" not in store.disk
    check(store)


# --- budget, eviction, purge, resize ------------------------------------------------------------


def test_disk_lru_evicts_oldest_and_unlinks(tmp_path: Path) -> None:
    size = 100 * KIB
    store = make_store(tmp_path, disk=3 * disk_charge(size))
    for i in range(8):
        store.insert(entry(f"/{i}", size))  # 6 victims, disk holds 3
    check(store)
    assert store.disk.keys() == ["/3", "/4", "/5"]
    assert store.disk.counts.disk_evictions == 3 and len(files(store)) == 3
    assert store.disk.bytes == 3 * disk_charge(size) and disk_charge(size) % BLOCK == 0


def test_object_larger_than_the_disk_is_not_kept(tmp_path: Path) -> None:
    store = make_store(tmp_path, disk=50 * KIB)
    for key in ("/a", "/b", "/c"):
        store.insert(entry(key))
    check(store)
    assert len(store.disk) == 0 and store.disk.counts.disk_dropped_writes == 0


def test_purge_reaches_the_disk(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for key in ("/v/a/1", "/v/a/2", "/v/b/1", "/x", "/y", "/z"):
        store.insert(entry(key))
    store.disk.flush()
    assert set(store.disk._records) == {"/v/a/1", "/v/a/2", "/v/b/1", "/x"}
    assert store.remove("/x") is True and store.remove("/x") is False
    assert store.remove_primary("/v/b/1") == 1
    assert store.lookup("/v/a/1", {}) is not None  # promoted, its file kept ...
    kept = store.peek("/v/a/1").disk_path
    assert store.remove_prefix("/v/a/") == 2  # ... and purged from memory and disk
    check(store)  # /y went to disk when /v/a/1 came back
    assert not os.path.exists(kept) and set(store.disk._records) == {"/y"}


def test_new_version_in_memory_replaces_the_disk_copy(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for key in ("/a", "/b", "/c"):
        store.insert(entry(key))
    assert "/a" in store.disk
    fresh = entry("/a", 70 * KIB)
    store.insert(fresh)
    assert "/a" not in store.disk
    check(store)
    assert store.lookup("/a", {}) is fresh


def test_resize_and_reconfigure(tmp_path: Path) -> None:
    size = 100 * KIB
    store = make_store(tmp_path, disk=5 * disk_charge(size))
    for i in range(7):
        store.insert(entry(f"/{i}", size))
    check(store)
    tier = store.disk
    assert len(tier) == 5
    store.configure_disk(config(tmp_path / "disk", 2 * disk_charge(size)))  # reload: smaller
    assert store.disk is tier and tier.capacity == 2 * disk_charge(size)
    assert tier.keys() == ["/3", "/4"] and tier.counts.disk_evictions == 3
    check(store)
    store.configure_disk(config(tmp_path / "disk", 2 * disk_charge(size)))  # unchanged: no-op
    assert store.disk is tier and len(tier) == 2
    store.configure_disk(config(tmp_path / "other", 10 * disk_charge(size)))  # moved: new tier
    moved = store.disk
    assert moved is not tier and len(moved) == 0 and moved.directory == str(tmp_path / "other")
    assert tier.closed and store.lookup("/3", {}) is None
    assert _gone(tier.run_dir)
    store.configure_disk(config(tmp_path / "other", 0))  # cache_disk = 0: no tier
    assert store.disk is None and _gone(moved.run_dir)
    store.insert(entry("/late"))  # victims just drop again
    assert store.lookup("/0", {}) is None


def _gone(path: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not os.path.exists(path)


# --- Vary ---------------------------------------------------------------------------------------


VARY = (b"accept-encoding",)


def variant(primary: str, encoding: bytes) -> CacheEntry:
    key = MemoryStore.variant_key(primary, VARY, {b"accept-encoding": encoding})
    return entry(key, vary=VARY, primary=primary)


def test_vary_variants_survive_the_round_trip(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    gz, br = variant("/v", b"gzip"), variant("/v", b"br")
    gz_body, br_body = bytes(gz.body), bytes(br.body)
    store.insert(gz)
    store.insert(br)
    store.insert(entry("/b"))
    store.insert(entry("/c"))  # both variants on disk; memory forgot the Vary of /v
    assert store._vary.get("/v") is None and store.vary_of("/v") == VARY
    assert store.lookup("/v", {}) is None  # no variant for no Accept-Encoding
    got = store.lookup("/v", {b"accept-encoding": b"br"})
    assert got is not None and bytes(got.body) == br_body and got.vary == VARY
    # Memory knows the Vary again; the other variant is still on disk and still reachable.
    assert gz.key in store.disk
    got = store.lookup("/v", {b"accept-encoding": b"gzip"})
    assert got is not None and bytes(got.body) == gz_body
    check(store)
    assert store.remove_primary("/v") == 2


def test_a_changed_vary_drops_the_disk_variants(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.insert(variant("/v", b"gzip"))
    store.insert(entry("/b"))
    store.insert(entry("/c"))
    assert store.disk.vary_of("/v") == VARY
    store.insert(entry("/v", 70 * KIB))  # the origin dropped its Vary
    # The variant left the disk; /b followed /c out of memory to make room for /v.
    assert store.disk.vary_of("/v") == () and set(store.disk._records) == {"/b"}
    check(store)


# --- files of previous runs, lifetime -----------------------------------------------------------


def test_start_removes_stale_runs_but_not_live_ones(tmp_path: Path) -> None:
    directory = tmp_path / "disk"
    stale = directory / "run-old"
    stale.mkdir(parents=True)
    (stale / "1").write_bytes(b"x" * 100)
    (stale / ".lock").write_bytes(b"")
    unrelated = directory / "keep-me"
    unrelated.write_bytes(b"operator's file")
    live = DiskTier(1 << 20, str(directory))
    other = DiskTier(1 << 20, str(directory))  # a second tier on the same directory (workers)
    assert live.flush() and other.flush()
    assert not stale.exists() and unrelated.exists()
    assert os.path.isdir(live.run_dir) and os.path.isdir(other.run_dir)
    assert sweep_stale_runs(str(directory)) == 0  # both hold their locks
    live.close()
    assert _gone(live.run_dir) and os.path.isdir(other.run_dir)
    other.close()


def test_a_dropped_tier_removes_its_directory(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for key in ("/a", "/b", "/c"):
        store.insert(entry(key))
    run_dir = store.disk.run_dir
    store.disk.flush()
    assert os.listdir(run_dir)
    del store
    gc.collect()
    assert _gone(run_dir)


def test_unusable_cache_dir(tmp_path: Path) -> None:
    """At start the node must not run without the tier it was given; a reload keeps the tier
    it has (the server logs the reload as failed otherwise half applied)."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OSError, match="cache_dir .*file/sub"):
        MemoryStore(1 << 20).configure_disk(config(blocker / "sub", 1 << 20))
    store = make_store(tmp_path)
    tier = store.disk
    store.configure_disk(config(blocker / "sub", 1 << 20))
    assert store.disk is tier and not tier.closed


def test_cache_dir_is_created(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    tier = DiskTier(1 << 20, str(directory))
    assert directory.is_dir() and os.path.dirname(tier.run_dir) == str(directory)
    tier.close()


# --- random operations against the invariants ---------------------------------------------------


ops = st.lists(
    st.tuples(
        st.sampled_from(["ins", "ins", "ins", "get", "get", "get", "del", "primary", "prefix",
                         "resize", "disk"]),
        st.sampled_from(["/a/1", "/a/2", "/b/1", "/b/2", "/v"]),
        st.sampled_from([None, b"gzip", b"br"]),
        st.integers(60, 200),
    ),
    max_size=40,
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=ops)
def test_random_operations_keep_the_invariants(tmp_path_factory: pytest.TempPathFactory,
                                               steps: list[Any]) -> None:
    """Memory + disk against a model of what was stored last under each key: every lookup
    returns the model's body or nothing, never another one; the invariants hold throughout."""
    directory = tmp_path_factory.mktemp("disk")
    store = MemoryStore(entry("/p", 100 * KIB).charge * 2)
    store.configure_disk(config(directory, 5 * disk_charge(100 * KIB)))
    model: dict[str, bytes] = {}
    for name, key, encoding, size in steps:
        headers = {} if encoding is None else {b"accept-encoding": encoding}
        if name == "ins":
            vary = () if encoding is None else VARY
            new = entry(MemoryStore.variant_key(key, vary, headers), size * KIB, vary=vary,
                        primary=key)
            store.insert(new)
            # Replacing a key's Vary (or dropping it) forgets the other variants of the key.
            for k in [k for k in model if k.split("\0")[0] == key]:
                if vary != (VARY if "\0" in k else ()):
                    del model[k]
            model[new.key] = bytes(new.body)
        elif name == "get":
            got = store.lookup(key, headers)
            if got is not None:
                assert model.get(got.key) == bytes(got.body)
        elif name == "del":
            store.remove(MemoryStore.variant_key(key, store.vary_of(key), headers))
        elif name == "primary":
            store.remove_primary(key)
            model = {k: v for k, v in model.items() if k.split("\0")[0] != key}
        elif name == "prefix":
            store.remove_prefix(key[:3])
            model = {k: v for k, v in model.items() if not k.startswith(key[:3])}
        elif name == "resize":
            store.configure_disk(config(directory, size * 20 * KIB))
        else:
            assert store.disk.flush()
        check(store)
    store.close()


# --- end to end: a real node --------------------------------------------------------------------

pytestmark_e2e = pytest.mark.skipif(not MEMFD_AVAILABLE, reason="needs memfd_create (Linux)")
OBJECT = 100 * KIB


async def disk_node(start_node: Any, origin: Any, tmp_path: Path, **overrides: Any) -> Any:
    table = {"cache_memory": "350KiB", "cache_disk": "8MiB",
             "cache_dir": str(tmp_path / "cache"), **overrides}
    server = await start_node(origin.url, **table)
    assert server.node.store.disk is not None  # the node configures its disk tier at start
    return server


def serve(origin: Any, count: int, *, max_age: int = 600) -> dict[str, bytes]:
    bodies = {}
    for i in range(count):
        path = f"/seg/{i}.m4s"
        bodies[path] = os.urandom(OBJECT)
        origin.set(path, bodies[path], headers={"Cache-Control": f"max-age={max_age}",
                                                "ETag": f'"e{i}"', "Content-Type": "video/mp4"})
    return bodies


async def flush(server: Any) -> None:
    """Let the node's writer finish (waiting in a thread: the loop keeps serving), then apply
    the completions on the loop, twice (writes, then the unlinks they may queue)."""
    disk = server.node.store.disk
    assert disk is not None
    for _ in range(2):
        assert await asyncio.get_running_loop().run_in_executor(None, disk.wait_writer)
        disk._drain()


@pytestmark_e2e
async def test_node_answers_evicted_objects_from_disk(origin, start_node, client, tmp_path):
    server = await disk_node(start_node, origin, tmp_path)
    bodies = serve(origin, 8)
    for path, body in bodies.items():
        async with client.get(url(server, path)) as response:
            assert response.status == 200 and await response.read() == body
    store = server.node.store
    assert len(store) <= 3 and len(store.disk) >= 5  # the early ones left memory
    await flush(server)
    for path, body in bodies.items():  # all of them again: from memory or disk
        async with client.get(url(server, path)) as response:
            assert response.status == 200 and await response.read() == body
            assert response.headers["Cache-Status"].startswith("edge-t; hit; ttl=")
            assert int(response.headers["Age"]) >= 0
    assert all(origin.counts[path] == 1 for path in bodies)
    stats = server.node.stats
    assert stats.disk_hits >= 5 and stats.disk_writes >= 5
    # Range requests and HEAD on an object that comes back from disk.
    await flush(server)
    first = "/seg/0.m4s"
    assert first in store.disk
    async with client.get(url(server, first), headers={"Range": "bytes=1000-1999"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 1000-1999/{OBJECT}"
        assert await response.read() == bodies[first][1000:2000]
    assert type(store.peek(first).body) is FileBody and store.peek(first).disk_path
    second = "/seg/1.m4s"
    await flush(server)
    async with client.get(url(server, second),
                          headers={"Range": "bytes=0-9,50000-50009,-5"}) as response:
        assert response.status == 206
        data = await response.read()
        for piece in (bodies[second][:10], bodies[second][50000:50010], bodies[second][-5:]):
            assert piece in data
    async with client.get(url(server, "/seg/2.m4s"), headers={"Range": f"bytes={OBJECT}-"}) as r:
        assert r.status == 416
    async with client.head(url(server, "/seg/3.m4s")) as response:
        assert response.status == 200 and response.headers["Content-Length"] == str(OBJECT)
    async with client.get(url(server, "/seg/4.m4s"), headers={"If-None-Match": '"e4"'}) as r:
        assert r.status == 304
    assert all(origin.counts[path] == 1 for path in bodies)
    # /metrics shows the disk tier.
    async with client.get(f"http://127.0.0.1:{server.admin_port}/metrics") as response:
        text = await response.text()
    assert 'reelcdn_disk_hits_total{node="edge-t"}' in text
    assert 'reelcdn_disk_bytes{node="edge-t"}' in text
    # So does /cache/stats.
    async with client.get(f"http://127.0.0.1:{server.admin_port}/cache/stats") as response:
        stats = await response.json()
    assert stats["disk_hits"] > 0 and stats["disk_capacity"] > 0
    assert stats["disk_objects"] == len(store.disk) and stats["disk_bytes"] > 0
    # Purge: from memory and disk alike, then the origin is asked again.
    async with client.post(f"http://127.0.0.1:{server.admin_port}/purge",
                           json={"prefix": "/seg/"}) as response:
        assert (await response.json())["purged"] == 8
    assert len(store.disk) == 0
    for path, body in bodies.items():
        async with client.get(url(server, path)) as response:
            assert await response.read() == body
        assert origin.counts[path] == 2


@pytestmark_e2e
async def test_stale_object_from_disk_is_revalidated(origin, start_node, client, tmp_path):
    server = await disk_node(start_node, origin, tmp_path)
    bodies = serve(origin, 5, max_age=1)
    from aiohttp import web

    async def conditional(request: web.Request, path: str = "/seg/0.m4s") -> web.Response:
        if request.headers.get("If-None-Match") == '"e0"':
            return web.Response(status=304, headers={"ETag": '"e0"',
                                                     "Cache-Control": "max-age=600"})
        return web.Response(body=bodies[path], headers={"ETag": '"e0"',
                                                        "Cache-Control": "max-age=1"})

    origin.routes["/seg/0.m4s"].handler = conditional
    for path in bodies:
        async with client.get(url(server, path)) as response:
            await response.read()
    await flush(server)
    assert "/seg/0.m4s" in server.node.store.disk
    await asyncio.sleep(1.2)
    async with client.get(url(server, "/seg/0.m4s")) as response:
        assert await response.read() == bodies["/seg/0.m4s"]
        assert "fwd=stale; fwd-status=304" in response.headers["Cache-Status"]
    assert origin.counts["/seg/0.m4s"] == 2
    async with client.get(url(server, "/seg/0.m4s")) as response:
        assert response.headers["Cache-Status"].startswith("edge-t; hit; ttl=")
        assert await response.read() == bodies["/seg/0.m4s"]
    assert origin.counts["/seg/0.m4s"] == 2


@pytestmark_e2e
async def test_reload_resizes_the_disk_tier(origin, start_node, client, tmp_path):
    server = await disk_node(start_node, origin, tmp_path)
    bodies = serve(origin, 8)
    for path in bodies:
        async with client.get(url(server, path)) as response:
            await response.read()
    await flush(server)
    store = server.node.store
    tier = store.disk
    assert len(tier) >= 5
    smaller = dataclasses_replace(server.node.config, cache_disk=2 * disk_charge(OBJECT))
    await server.reload(smaller)
    assert store.disk is tier and len(tier) == 2 and tier.bytes <= smaller.cache_disk
    off = dataclasses_replace(smaller, cache_disk=0)
    await server.reload(off)
    if store.disk is not None:
        store.configure_disk(off)
    assert store.disk is None and _gone(tier.run_dir)


def dataclasses_replace(config: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_disk_metrics_render_and_sum() -> None:
    """Counters become *_total counters, levels gauges; a multi-worker master sums both."""
    from reelcdn.edge.metrics import NodeStats, collect_families, stats_snapshot, sum_snapshots

    a, b = NodeStats("n"), NodeStats("n")
    a.disk_hits, b.disk_hits, a.disk_dropped_writes = 3, 4, 1
    a.disk_bytes, b.disk_bytes = 8192, 4096
    summed = sum_snapshots([stats_snapshot(a), stats_snapshot(b)])
    families = {f.name: f for f in collect_families("n", summed, {})}
    assert families["reelcdn_disk_hits"].type == "counter"
    assert families["reelcdn_disk_hits"].samples[0].value == 7
    assert families["reelcdn_disk_dropped_writes"].samples[0].value == 1
    assert families["reelcdn_disk_bytes"].type == "gauge"
    assert families["reelcdn_disk_bytes"].samples[0].value == 12288
