"""Cached large bodies must not take the descriptors client connections need.

A memory-file body (``bodyfile.FileBody``) holds a descriptor. A node whose open-files limit
is low fills its cache with many bodies of ``sendfile_min_size`` or more; new clients must
still be accepted and answered. The node runs in its own process, whose RLIMIT_NOFILE (soft
and hard) is set before it starts, so the test sees what a real node under that limit does.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from nodeproc import free_port, wait_health
from rawhttp import read_response

from reelcdn.edge.cache import bodyfile
from reelcdn.edge.cache.bodyfile import (
    DESCRIPTORS,
    MEMFD_AVAILABLE,
    BodyFiles,
    FileBody,
    descriptor_budget,
    descriptor_reserve,
    file_body,
)
from reelcdn.edge.cache.entry import ENTRY_OVERHEAD, CacheEntry, body_charge
from reelcdn.edge.cache.freshness import Freshness
from reelcdn.edge.cache.store import MemoryStore
from reelcdn.edge.config import Limits
from reelcdn.edge.metrics import NodeStats

pytestmark = pytest.mark.skipif(
    not MEMFD_AVAILABLE or not os.path.isdir("/proc/self/fd"),
    reason="memory files and /proc are Linux-only",
)

LIMIT = 512           # RLIMIT_NOFILE of the node process (soft = hard: it cannot raise it)
CLIENTS = 100         # limits.max_connections: the descriptors client connections may need
OBJECTS = 400         # 64 KiB bodies: 800 descriptors at two per body, 400 at one
NEW_CLIENTS = 25
BODY = 64 * 1024

NODE_TOML = """
[node.edge-fd]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
upstream = "{upstream}"
cache_memory = "128MiB"
upstream_max_connections = 16

[node.edge-fd.limits]
max_connections = {clients}
"""

# Sets the limit, then becomes the node (exec keeps the limit).
LAUNCH = (
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'reelcdn.cli', *sys.argv[1:]])\n"
)


def open_fds() -> int:
    """Descriptors of memory files (bodies) this process holds; garbage collected first, so
    that earlier tests' leftovers do not go away in the middle of a count."""
    gc.collect()
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:")
        except OSError:
            pass
    return count


# --- one descriptor per body, and the budget, in this process ----------------------------------


def test_a_file_body_holds_one_descriptor_until_collected() -> None:
    before, held = open_fds(), DESCRIPTORS.held
    bodies = [file_body([bytes([i]) * 70_000], 70_000) for i in range(200)]
    assert open_fds() - before == 200 and DESCRIPTORS.held - held == 200
    assert all(bytes(b[:2]) == bytes([i]) * 2 for i, b in enumerate(bodies))
    assert all(os.fstat(b.fd).st_size == 70_000 for b in bodies)  # what sendfile reads
    view = memoryview(bodies[7])[:4]
    del bodies
    gc.collect()
    assert bytes(view) == b"\x07" * 4  # a view in flight keeps its body (and descriptor)
    assert open_fds() - before == 1 and DESCRIPTORS.held - held == 1
    del view
    gc.collect()
    assert open_fds() == before and DESCRIPTORS.held == held


def test_when_the_duplicate_cannot_be_identified_the_body_counts_two(monkeypatch) -> None:
    """Another thread opening or closing a descriptor between the probe and the map: the body
    keeps both descriptors, counts both, and closes both."""
    monkeypatch.setattr(bodyfile, "_shares_file", lambda *args: False)
    before, held = open_fds(), DESCRIPTORS.held
    body = file_body([b"r" * 70_000], 70_000)
    assert open_fds() - before == 2 and DESCRIPTORS.held - held == 2
    assert os.pread(body.fd, 3, 0) == b"rrr" and bytes(body[-3:]) == b"rrr"
    del body
    gc.collect()
    assert open_fds() == before and DESCRIPTORS.held == held


def test_with_the_budget_used_new_bodies_are_bytes(monkeypatch) -> None:
    stats = NodeStats("t")
    files = BodyFiles(64 * 1024, stats)
    monkeypatch.setattr(DESCRIPTORS, "budget", DESCRIPTORS.held + 2)
    made = [files.make([bytes([i]) * 65536], 65536) for i in range(3)]
    assert [type(b) for b in made] == [FileBody, FileBody, bytes]
    assert made[2] == b"\x02" * 65536
    assert (stats.body_files, stats.body_file_fallbacks) == (2, 1)
    del made[0]
    gc.collect()
    assert type(files.make([b"y" * 65536], 65536)) is FileBody  # room again


def _entry(key: str, data: bytes) -> CacheEntry:
    fresh = Freshness(storable=True, reason="max-age", lifetime=600, stale_while_revalidate=0,
                      stale_if_error=0, must_revalidate=False, no_cache=False,
                      has_validator=False)
    return CacheEntry(key=key, primary=key, status=200,
                      headers=[(b"Cache-Control", b"max-age=600")], body=data, freshness=fresh,
                      response_time=time.time(), initial_age=0.0)


def test_a_body_mapped_from_disk_over_the_budget_comes_back_as_bytes(tmp_path: Path,
                                                                    monkeypatch) -> None:
    datas = {key: os.urandom(100_000) for key in ("/a", "/b", "/c")}
    store = MemoryStore(_entry("/p", datas["/a"]).charge * 2 + 4096)
    store.configure_disk(SimpleNamespace(cache_disk=10 << 20, cache_dir=str(tmp_path),
                                         sendfile_min_bytes=64 * 1024))
    try:
        for key, data in datas.items():
            store.insert(_entry(key, data))  # /a goes to the disk tier
        assert store.disk is not None and store.disk.flush()
        monkeypatch.setattr(DESCRIPTORS, "budget", DESCRIPTORS.held)
        held = DESCRIPTORS.held
        back = store.lookup("/a", {})
        assert back is not None and type(back.body) is bytes and back.body == datas["/a"]
        assert back.charge == body_charge(back.body) + len(back.header_block) + len(
            back.key) + ENTRY_OVERHEAD
        assert store.bytes == sum(e.charge for e in store)
        gc.collect()
        assert DESCRIPTORS.held == held  # the file's descriptor went with the mapped body
        monkeypatch.setattr(DESCRIPTORS, "budget", None)
        assert store.disk.flush()  # /b, which /a's return pushed out, is written
        again = store.lookup("/b", {})  # with room, a disk hit is mapped as before
        assert again is not None and type(again.body) is FileBody
    finally:
        store.close()


def test_the_reserve_keeps_clients_upstreams_and_the_disk_tier(monkeypatch) -> None:
    monkeypatch.setattr(DESCRIPTORS, "budget", None)
    monkeypatch.setattr(bodyfile, "raise_open_files_limit", lambda: (4096, 4096))
    edge = SimpleNamespace(limits=Limits(max_connections=1000), upstream_max_connections=100,
                           parents=("p1", "p2"), origins=(), cache_disk=1 << 30,
                           sendfile_min_bytes=64 * 1024, cache_memory=256 << 20)
    reserve = descriptor_reserve(edge, 4096)
    assert reserve == {"clients": 1000, "upstream": 200, "disk": bodyfile.DISK_RESERVE,
                       "other": bodyfile.BASE_RESERVE + 4096 // bodyfile.HEADROOM_SHARE}
    assert descriptor_budget(edge) == 4096 - sum(reserve.values()) == DESCRIPTORS.budget
    origins = (SimpleNamespace(type="s3", max_connections=None),
               SimpleNamespace(type="http", max_connections=40))
    shield = SimpleNamespace(**{**vars(edge), "parents": (), "origins": origins})
    assert descriptor_reserve(shield, 4096)["upstream"] == 32 + 40
    crowded = SimpleNamespace(**{**vars(edge), "limits": Limits(max_connections=10_000)})
    assert descriptor_budget(crowded) == 0  # clients first: every body is stored as bytes
    off = SimpleNamespace(**{**vars(edge), "sendfile_min_bytes": 0})
    assert descriptor_budget(off) == 0


# --- a node process under a low limit ------------------------------------------------------------


def body_of(i: int) -> bytes:
    return (b"%06d" % i) * (BODY // 6) + b"x" * (BODY % 6)


async def fetch_one(port: int, path: str) -> int:
    """The status of one GET on a new connection, 0 when it was not answered."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (TimeoutError, OSError):
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = await asyncio.wait_for(read_response(reader), 5)
        return response.status if response.body == body_of(int(path.rsplit("/", 1)[1])) else -1
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
        return 0
    finally:
        writer.close()


async def test_a_full_cache_of_large_bodies_leaves_descriptors_for_clients(origin, tmp_path):
    for i in range(OBJECTS):
        origin.set(f"/o/{i}", body_of(i), headers={"Cache-Control": "max-age=600"})
    port, admin = free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(NODE_TOML.format(port=port, admin=admin, upstream=origin.url,
                                       clients=CLIENTS))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LAUNCH.format(limit=LIMIT), "node", "--config", str(config),
        "--name", "edge-fd", stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_health(admin)
        # Fill the cache over one keep-alive connection (it needs no new descriptor).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        for i in range(OBJECTS):
            writer.write(f"GET /o/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = await asyncio.wait_for(read_response(reader), 10)
            assert response.status == 200 and len(response.body) == BODY
        fill_seconds = time.monotonic() - started
        assert origin.counts[f"/o/{OBJECTS - 1}"] == 1

        # New clients, all at once (each a descriptor), for objects of either kind.
        paths = [f"/o/{i * (OBJECTS // NEW_CLIENTS)}" for i in range(NEW_CLIENTS)]
        statuses = await asyncio.gather(*(fetch_one(port, p) for p in paths))
        assert statuses == [200] * NEW_CLIENTS, f"fill took {fill_seconds:.1f} s"

        open_fds = len(os.listdir(f"/proc/{process.pid}/fd"))
        assert open_fds < LIMIT - CLIENTS, f"{open_fds} descriptors open"
        writer.close()

        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{admin}/metrics") as metrics:
            text = await metrics.text()
        values = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("reelcdn_body_file")
        }
        budget = values["reelcdn_body_file_descriptors_budget"]
        assert 0 < budget < LIMIT - CLIENTS
        assert 0 < values["reelcdn_body_file_descriptors"] <= budget
        assert values["reelcdn_body_file_fallbacks_total"] > 0  # the rest stayed bytes
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
    stderr = (await process.stderr.read()).decode()
    assert "descriptors" in stderr  # the start-up line naming the budget
