"""Request coalescing: one upstream fetch per key, bodies streamed to every waiter."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time

import pytest
from rawhttp import get, read_response

SEGMENT = os.urandom(32_000)
CACHEABLE = {"Cache-Control": "max-age=3600", "Content-Type": "video/iso.segment"}


@pytest.mark.slow
async def test_500_concurrent_cold_requests_make_one_fetch(origin, node):
    """The issue's target: 500 players ask for one cold segment behind a 200 ms origin → one
    origin fetch, identical bodies, the slowest answer within origin latency + 50 ms.

    The crowd runs in its own process with its connections opened beforehand, as real
    players do; its own cost (parsing 500 responses on one core) is measured as the floor of
    the same crowd on a HIT and not charged to the node. The machine is shared, so the
    timing is given three attempts (each with a fresh object, each asserting one fetch and
    correct bodies): a node that waits on anything but the fetch — a poll interval like
    proxy_cache_lock's 500 ms — fails all three."""
    origin.set("/v/a/warm.m4s", SEGMENT, headers=CACHEABLE)
    expected = hashlib.sha256(SEGMENT).hexdigest()
    await get(node.port, "/v/a/warm.m4s")
    attempts = []
    for attempt in range(3):
        path = f"/v/a/seg_{attempt:05d}.m4s"
        origin.set(path, SEGMENT, headers=CACHEABLE, delay=0.2)
        floor = max((await run_crowd(node.port, "/v/a/warm.m4s", 500))["latencies"])
        result = await run_crowd(node.port, path, 500)
        assert origin.counts[path] == 1
        assert result["statuses"] == {"200": 500}
        assert result["digests"] == {expected: 500}
        slowest = max(result["latencies"])
        attempts.append((round(slowest * 1000), round(floor * 1000)))
        print(f"attempt {attempt}: slowest {slowest * 1000:.0f} ms, floor {floor * 1000:.0f} ms")
        if slowest < 0.2 + 0.05 + floor:
            break
    else:
        raise AssertionError(f"slowest over origin + 50 ms + floor in every attempt "
                             f"(slowest ms, floor ms): {attempts}")
    assert node.node.stats.coalesced_waiters == 499 * len(attempts)


async def run_crowd(port: int, path: str, count: int) -> dict:
    """Run ``crowd.py`` (a separate process) and return its JSON report."""
    here = os.path.dirname(__file__)
    process = await asyncio.create_subprocess_exec(
        sys.executable, os.path.join(here, "crowd.py"), "--port", str(port),
        "--path", path, "--count", str(count), "--start-at", str(time.time() + 1.0),
        stdout=asyncio.subprocess.PIPE, cwd=here,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return json.loads(out)


async def test_waiters_get_bytes_as_they_arrive(origin, node):
    """Read-while-write: a waiter sees the first chunk long before the fetch completes."""
    body = os.urandom(64 * 1024 * 8)
    origin.set("/slow", body, headers=CACHEABLE, chunk_size=64 * 1024, chunk_delay=0.1)
    first = asyncio.create_task(get(node.port, "/slow"))
    await asyncio.sleep(0.15)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    start = time.perf_counter()
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(1)
    first_byte = time.perf_counter() - start
    rest = await reader.readexactly(len(body) - 1)
    total = time.perf_counter() - start
    writer.close()
    assert first_byte < 0.1, first_byte
    assert total > 0.4  # the body really streamed over the origin's pace
    assert (await first).body == body
    assert origin.counts["/slow"] == 1
    assert rest == body[1:]


async def test_client_disconnect_does_not_cancel_shared_fetch(origin, node):
    body = os.urandom(200_000)
    origin.set("/shared", body, headers=CACHEABLE, chunk_size=20_000, chunk_delay=0.02)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"GET /shared HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    others = [asyncio.create_task(get(node.port, "/shared")) for _ in range(5)]
    await asyncio.sleep(0.05)
    writer.transport.abort()  # the first client goes away mid-body
    results = await asyncio.gather(*others)
    assert all(r.body == body for r in results)
    assert origin.counts["/shared"] == 1
    again = await get(node.port, "/shared")
    assert again.body == body and "hit" in again.header("cache-status")


async def test_failed_fetch_gives_waiters_502_not_a_hang(origin, start_node):
    node = await start_node("http://127.0.0.1:9")  # nothing listens on the discard port
    results = await asyncio.gather(*(get(node.port, "/gone") for _ in range(20)))
    assert {r.status for r in results} == {502}
    assert all(b"upstream" in r.body for r in results)


@pytest.mark.slow
async def test_timeout_gives_504(origin, start_node):
    node = await start_node(origin.url, upstream_timeouts={"first_byte": "0.3s"})
    origin.set("/late", b"x", headers=CACHEABLE, delay=2)
    start = time.perf_counter()
    results = await asyncio.gather(*(get(node.port, "/late") for _ in range(10)))
    assert {r.status for r in results} == {504}
    assert time.perf_counter() - start < 1.5
    assert origin.counts["/late"] == 1


async def test_body_broken_midway_cuts_clients_and_is_not_stored(origin, node):
    body = os.urandom(100_000)
    origin.set("/broken", body, headers=CACHEABLE, chunk_size=10_000, chunk_delay=0.01,
               break_after=50_000)

    async def fetch_all() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            response = await read_response(reader)
            return response.body
        except (asyncio.IncompleteReadError, ConnectionError):
            return b"<cut>"
        finally:
            writer.close()

    results = await asyncio.gather(*(fetch_all() for _ in range(5)))
    assert results == [b"<cut>"] * 5  # truncated, never a complete-looking wrong body
    assert len(node.node.store) == 0


async def test_uncacheable_response_is_shared_with_collapsed_waiters(origin, node):
    origin.set("/nostore", b"payload", headers={"Cache-Control": "no-store"}, delay=0.2)
    results = await asyncio.gather(*(get(node.port, "/nostore") for _ in range(20)))
    assert all(r.body == b"payload" for r in results)
    assert origin.counts["/nostore"] == 1
    assert len(node.node.store) == 0
    await get(node.port, "/nostore")
    assert origin.counts["/nostore"] == 2  # never stored


async def test_private_response_makes_waiters_fetch_their_own(origin, node):
    origin.set("/mine", b"secret", headers={"Cache-Control": "private"}, delay=0.1)
    results = await asyncio.gather(*(get(node.port, "/mine") for _ in range(5)))
    assert all(r.status == 200 for r in results)
    assert origin.counts["/mine"] == 5
    statuses = [r.header("cache-status") for r in results]
    assert sum("fwd=bypass" in s for s in statuses) == 4
