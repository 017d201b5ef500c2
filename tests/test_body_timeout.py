"""Request bodies are timed as a whole: ``body_timeout`` from the end of the head, and after
``body_rate_grace`` at least ``body_min_rate_bytes`` per second on average. A body trickled
byte by byte (the slowloris of bodies) is answered 408 and closed instead of holding its
connection forever; a normal upload is unaffected, and a normal client is answered while
hundreds of slow bodies are open. Real sockets on 127.0.0.1; the sweep runs once per second,
so a timeout fires up to two seconds after its nominal time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from rawconn import CACHEABLE, RawConn, assert_serves, between_sweeps, get, recording_handler

from reelcdn.edge.ops.server import NodeServer

if TYPE_CHECKING:
    from conftest import TestOrigin

# Each test waits out body timeouts of one to two seconds.
pytestmark = [pytest.mark.usefixtures("no_internal_errors"), pytest.mark.slow]

# A minimum rate checked after one second; the total deadline far away.
RATE = {"body_timeout": "30s", "body_min_rate_bytes": "1KiB", "body_rate_grace": "1s"}
# A total deadline of two seconds; a minimum rate that a steady trickle stays above.
TOTAL = {"body_timeout": "2s", "body_min_rate_bytes": "100", "body_rate_grace": "1s"}

POST_HEAD = b"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n"


@pytest.fixture
async def rate_node(origin: TestOrigin, start_node: Callable[..., Any]) -> NodeServer:
    return await start_node(origin.url, limits=RATE)


@pytest.fixture
async def total_node(origin: TestOrigin, start_node: Callable[..., Any]) -> NodeServer:
    return await start_node(origin.url, limits=TOTAL)


async def trickle(conn: RawConn, piece: bytes, every: float, limit: float) -> float:
    """Send ``piece`` every ``every`` s until the node closes the connection (or ``limit`` s
    pass); the seconds it took."""
    start = time.monotonic()
    while not conn.eof and time.monotonic() - start < limit:
        with contextlib.suppress(ConnectionError, RuntimeError):
            conn.send(piece)
        await asyncio.sleep(every)
    return time.monotonic() - start


async def test_a_body_trickled_byte_by_byte_is_cut_off(
    rate_node: NodeServer, origin: TestOrigin
) -> None:
    """The defect: one byte now and then restarted the timeout forever."""
    origin.set("/up", handler=recording_handler([]))
    await between_sweeps(rate_node)
    conn = await RawConn.open(rate_node)
    conn.send(POST_HEAD)
    elapsed = await trickle(conn, b"x", 0.3, limit=10.0)
    assert conn.eof, "a body of one byte per 0.3 s is still being read after 10 s"
    assert 1.0 <= elapsed <= 1.0 + 2.0 + 0.3, elapsed
    assert conn.buffer.startswith(b"HTTP/1.1 408 "), bytes(conn.buffer)
    assert b"request body arrives too slowly" in conn.buffer
    assert origin.counts["/up"] == 0
    assert rate_node.node.stats.timeouts >= 1
    await assert_serves(rate_node, origin)


async def test_a_body_above_the_rate_still_ends_at_the_total_deadline(
    total_node: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/up", handler=recording_handler([]))
    await between_sweeps(total_node)
    conn = await RawConn.open(total_node)
    conn.send(POST_HEAD)
    elapsed = await trickle(conn, b"y" * 200, 0.5, limit=10.0)  # 400 bytes/s > 100
    assert conn.eof, "a body trickled for 10 s is still being read"
    assert 2.0 <= elapsed <= 2.0 + 2.0 + 0.5, elapsed
    assert conn.buffer.startswith(b"HTTP/1.1 408 "), bytes(conn.buffer)
    assert b"request body not received in time" in conn.buffer
    assert origin.counts["/up"] == 0
    await assert_serves(total_node, origin)


async def test_a_body_sent_in_time_is_passed_upstream(
    total_node: NodeServer, origin: TestOrigin
) -> None:
    """An upload in pieces, slower than one read but within the deadline and above the rate,
    reaches the origin whole; then the same connection serves a cached GET."""
    bodies: list[bytes] = []
    origin.set("/up", handler=recording_handler(bodies))
    origin.set("/after", b"after the upload", headers=CACHEABLE)
    payload = bytes(range(256)) * 256  # 64 KiB
    conn = await RawConn.open(total_node)
    conn.send(b"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 65536\r\n\r\n")
    for start in range(0, len(payload), 16384):
        conn.send(payload[start:start + 16384])
        await asyncio.sleep(0.3)
    resp = await conn.response()
    assert resp.status == 200, resp
    assert resp.body == b"got 65536 bytes via POST"
    assert bodies == [payload]
    await asyncio.sleep(2.5)  # past the body deadline: it ended with the body
    conn.send(get("/after"))
    resp = await conn.response()
    assert resp.status == 200 and resp.body == b"after the upload"
    conn.close()


async def test_a_chunked_body_is_timed_the_same_way(
    rate_node: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/up", handler=recording_handler([]))
    await between_sweeps(rate_node)
    conn = await RawConn.open(rate_node)
    conn.send(b"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    elapsed = await trickle(conn, b"1\r\nz\r\n", 0.3, limit=10.0)
    assert conn.eof and 1.0 <= elapsed <= 3.3, elapsed
    assert conn.buffer.startswith(b"HTTP/1.1 408 "), bytes(conn.buffer)


async def test_a_normal_client_is_answered_while_500_slow_bodies_are_open(
    total_node: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/up", handler=recording_handler([]))
    origin.set("/normal", b"normal", headers=CACHEABLE)
    await assert_serves(total_node, origin, "/normal")  # cached now
    slow = [await RawConn.open(total_node) for _ in range(500)]
    for conn in slow:
        conn.send(POST_HEAD + b"s")
    await asyncio.sleep(0.2)
    assert len(total_node.connections) >= 500
    for _ in range(5):
        start = time.monotonic()
        await assert_serves(total_node, origin, "/normal")
        assert time.monotonic() - start < 0.5
        await asyncio.sleep(0.1)
    # All of them end within the body timeout (plus the sweep), each with a 408.
    async with asyncio.timeout(2.0 + 2.5):
        while not all(conn.eof for conn in slow):
            await asyncio.sleep(0.1)
    assert all(conn.buffer.startswith(b"HTTP/1.1 408 ") for conn in slow)
    assert len(total_node.connections) <= 1
    await assert_serves(total_node, origin, "/normal")
