"""Cached large bodies must not take the descriptors client connections need.

A memory-file body (``bodyfile.FileBody``) holds a descriptor. A node whose open-files limit
is low fills its cache with many bodies of ``sendfile_min_size`` or more; new clients must
still be accepted and answered. The node runs in its own process, whose RLIMIT_NOFILE (soft
and hard) is set before it starts, so the test sees what a real node under that limit does.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import aiohttp
import pytest
from nodeproc import free_port, wait_health
from rawhttp import read_response

from reelcdn.edge.bodyfile import MEMFD_AVAILABLE

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
