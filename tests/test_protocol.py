"""The node's HTTP/1.1 server protocol (``edge/http/connection.py``) on real loopback sockets.

Keep-alive, pipelining, HEAD, ``Expect: 100-continue``, request bodies, limits, timeouts, the
connection cap, graceful shutdown and clients that vanish mid-response. Anything pipelined or
hostile is written as raw bytes by ``RawConn`` (``rawconn.py``), a bare ``asyncio.Protocol``
client that keeps every byte it received even when the node then resets the connection; every
read is bounded by ``asyncio.timeout``. No test may make the node log an error of its own
(the ``no_internal_errors`` fixture, conftest.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from conftest import url
from rawconn import (
    CACHEABLE,
    READ_TIMEOUT,
    RawConn,
    Response,
    assert_serves,
    between_sweeps,
    get,
    recording_handler,
)

from reelcdn.edge.ops.server import NodeServer

if TYPE_CHECKING:
    from conftest import TestOrigin

pytestmark = pytest.mark.usefixtures("no_internal_errors")


async def expect_rejected(conn: RawConn, status: int, *, timeout: float = READ_TIMEOUT) -> Response:
    """The node answers ``status`` with a reason in the body, then closes."""
    resp = await conn.response(timeout=timeout)
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers.get("connection", "").lower() == "close"
    assert resp.body.startswith(f"{status} ".encode()) and b": " in resp.body, resp.body
    assert await conn.closed_within(2.0), "the node kept the connection open after an error"
    assert conn.buffer == b"", f"bytes after the error response: {bytes(conn.buffer)!r}"
    return resp


# --------------------------------------------------------------------------------------------
# Keep-alive


async def test_keep_alive_serves_several_requests_on_one_connection(
    node: NodeServer, origin: TestOrigin
) -> None:
    for i in range(3):
        origin.set(f"/k{i}", f"body {i}".encode(), headers=CACHEABLE)
    conn = await RawConn.open(node)
    for round_ in range(2):  # misses, then hits
        for i in range(3):
            conn.send(get(f"/k{i}"))
            resp = await conn.response()
            assert resp.status == 200
            assert resp.body == f"body {i}".encode()
            assert "close" not in resp.headers.get("connection", "")
            status = resp.headers["cache-status"]
            assert ("; hit" in status) == (round_ == 1), status
    assert not conn.eof
    assert sum(origin.counts[f"/k{i}"] for i in range(3)) == 3
    conn.close()


async def test_aiohttp_client_reuses_the_connection(
    node: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/reuse", b"r" * 3000, headers=CACHEABLE)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(5):
            async with session.get(url(node, "/reuse")) as resp:
                assert resp.status == 200
                assert await resp.read() == b"r" * 3000
    assert node.node.stats.connections_total == 1


async def test_http10_without_keep_alive_is_closed(node: NodeServer, origin: TestOrigin) -> None:
    origin.set("/ten", b"ten", headers=CACHEABLE)
    for _ in range(2):  # miss, then hit
        conn = await RawConn.open(node)
        conn.send(b"GET /ten HTTP/1.0\r\n\r\n")
        resp = await conn.response()
        assert resp.status == 200 and resp.body == b"ten"
        assert resp.headers["connection"].lower() == "close"
        assert await conn.closed_within(2.0)
    # HTTP/1.0 asking for keep-alive keeps the connection.
    conn = await RawConn.open(node)
    for _ in range(2):
        conn.send(b"GET /ten HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = await conn.response()
        assert resp.status == 200 and resp.body == b"ten"
        assert "close" not in resp.headers.get("connection", "")
    conn.close()


async def test_connection_close_on_http11_closes_after_the_response(
    node: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/cc", b"cc", headers=CACHEABLE)
    origin.set("/cc-slow", b"slow", headers=CACHEABLE, delay=0.2)
    for path in ("/cc", "/cc", "/cc-slow"):  # miss, hit, slow miss
        conn = await RawConn.open(node)
        conn.send(get(path, "Connection: close"))
        resp = await conn.response()
        assert resp.status == 200
        assert resp.headers["connection"].lower() == "close"
        assert await conn.closed_within(2.0)


async def test_nothing_after_connection_close_is_answered(
    node: NodeServer, origin: TestOrigin
) -> None:
    """Requests pipelined behind a closing one are not answered, whether the closing one is a
    HIT (answered inside the parser callback) or a MISS."""
    origin.set("/last", b"last", headers=CACHEABLE)
    origin.set("/after", b"after", headers=CACHEABLE)
    origin.set("/after-miss", b"after", headers=CACHEABLE)
    await assert_serves(node, origin, "/last")  # now a HIT
    await assert_serves(node, origin, "/after")  # a HIT too
    for first in (get("/last", "Connection: close"), b"GET /last HTTP/1.0\r\n\r\n",
                  get("/miss-close", "Connection: close")):
        conn = await RawConn.open(node)
        conn.send(first + get("/after") + get("/after-miss") + get("/after"))
        resp = await conn.response()
        assert resp.headers["connection"].lower() == "close"
        rest = await conn.read_to_close(3.0)
        assert rest == b"", rest
    await asyncio.sleep(0.1)
    assert origin.counts["/after"] == 1 and origin.counts["/after-miss"] == 0
    # Nor are they counted as errors: the client never saw an answer to them.
    assert not [key for key in node.node.stats.requests if key[1] == "error"]


async def test_half_closed_client_gets_every_pipelined_response(
    node: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/h1", b"one", headers=CACHEABLE, delay=0.2)
    origin.set("/h2", b"two", headers=CACHEABLE, delay=0.1)
    origin.set("/h3", b"three", headers=CACHEABLE)
    conn = await RawConn.open(node)
    conn.send(get("/h1") + get("/h2") + get("/h3"))
    conn.send_eof()
    bodies = [(await conn.response()).body for _ in range(3)]
    assert bodies == [b"one", b"two", b"three"]
    assert await conn.closed_within(2.0)


# --------------------------------------------------------------------------------------------
# Pipelining


async def test_pipelined_requests_are_answered_in_order(
    node: NodeServer, origin: TestOrigin
) -> None:
    delays = [0.4, 0, 0.1, 0, 0.3, 0, 0.05, 0, 0.2, 0]
    paths = [f"/p{i}" for i in range(10)]
    for i, (path, delay) in enumerate(zip(paths, delays, strict=True)):
        headers = dict(CACHEABLE)
        origin.set(path, f"pipelined body {i} ".encode() * (i + 1), headers=headers, delay=delay)
    for path in paths[1::2]:  # the odd ones are HITs
        await assert_serves(node, origin, path)
    conn = await RawConn.open(node)
    conn.send(b"".join(get(path) for path in paths))  # one write
    for i, path in enumerate(paths):
        resp = await conn.response()
        assert resp.status == 200
        assert resp.body == origin.routes[path].body, (i, resp.body[:40])
        assert ("; hit" in resp.headers["cache-status"]) == (i % 2 == 1)
    # The connection is still usable afterwards.
    conn.send(get(paths[0]))
    assert (await conn.response()).body == origin.routes[paths[0]].body
    conn.close()


async def test_head_in_a_pipeline(node: NodeServer, origin: TestOrigin) -> None:
    origin.set("/ph-hit", b"h" * 5000, headers=CACHEABLE)
    origin.set("/ph-miss", b"m" * 7000, headers=CACHEABLE, delay=0.1)
    origin.set("/ph-next", b"next body", headers=CACHEABLE)
    await assert_serves(node, origin, "/ph-hit")
    conn = await RawConn.open(node)
    conn.send(
        get("/ph-miss", method="HEAD") + get("/ph-next") + get("/ph-hit", method="HEAD")
        + get("/ph-next") + get("/ph-miss")
    )
    first = await conn.response(head=True)
    assert first.status == 200 and first.headers["content-length"] == "7000"
    second = await conn.response()
    assert second.body == b"next body"
    third = await conn.response(head=True)
    assert third.headers["content-length"] == "5000"
    assert (await conn.response()).body == b"next body"
    assert (await conn.response()).body == b"m" * 7000
    await asyncio.sleep(0.1)
    assert conn.buffer == b""
    conn.close()


async def test_head_on_miss_and_hit(node: NodeServer, origin: TestOrigin) -> None:
    body = bytes(range(256)) * 40
    origin.set("/head", body, headers=CACHEABLE)
    conn = await RawConn.open(node)
    for expect_hit in (False, True):
        conn.send(get("/head", method="HEAD"))
        resp = await conn.response(head=True)
        assert resp.status == 200
        assert resp.headers["content-length"] == str(len(body))
        assert ("; hit" in resp.headers["cache-status"]) == expect_hit
        await asyncio.sleep(0.1)
        assert conn.buffer == b"", "a HEAD response carried a body"
    conn.send(get("/head"))
    resp = await conn.response()
    assert resp.body == body
    conn.close()
    assert origin.counts["/head"] == 1


async def test_many_pipelined_requests_with_back_pressure(
    node: NodeServer, origin: TestOrigin
) -> None:
    """More requests than ``max_pipelined`` and responses bigger than the socket buffers,
    all in one write: everything arrives, in order, while the client reads slowly."""
    body = b"x" * 300_000
    origin.set("/big", body, headers=CACHEABLE)
    origin.set("/small", b"small", headers=CACHEABLE, delay=0.05)
    await assert_serves(node, origin, "/big")
    count = 150
    paths = ["/big" if i % 3 else "/small" for i in range(count)]
    conn = await RawConn.open(node)
    conn.send(b"".join(get(p) for p in paths))
    await asyncio.sleep(0.3)  # let the node fill the buffers
    for path in paths:
        resp = await conn.response(timeout=10)
        assert resp.body == origin.routes[path].body
    conn.close()


async def test_pipelined_hits_wait_for_a_client_that_does_not_read(
    node: NodeServer, origin: TestOrigin
) -> None:
    """One write of small requests for a big cached object must not make the node buffer
    every response: answering stops while the client does not read."""
    body = b"B" * 512 * 1024
    origin.set("/amplify", body, headers=CACHEABLE)
    await assert_serves(node, origin, "/amplify")
    conn = await RawConn.open(node)
    assert conn.transport is not None
    conn.transport.pause_reading()
    conn.send(get("/amplify") * 60)  # 30 MiB of responses
    await asyncio.sleep(0.3)
    (server_side,) = node.connections
    assert server_side.transport is not None
    buffered = server_side.transport.get_write_buffer_size()
    assert buffered < 4 * 1024 * 1024, f"{buffered} bytes buffered for a client not reading"
    conn.transport.resume_reading()
    for _ in range(60):
        assert (await conn.response(timeout=10)).body == body
    conn.close()


# --------------------------------------------------------------------------------------------
# Request bodies and Expect: 100-continue


async def test_expect_100_continue(node: NodeServer, origin: TestOrigin) -> None:
    bodies: list[bytes] = []
    origin.set("/upload", handler=recording_handler(bodies))
    payload = b"p" * 10_000
    for _ in range(2):
        conn = await RawConn.open(node)
        conn.send(
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(payload)
        )
        interim = await conn.read_head(timeout=2.0)  # before any byte of the body
        assert interim.status == 100, interim
        assert interim.head == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.send(payload)
        resp = await conn.response()
        assert resp.status == 200
        assert resp.body == b"got 10000 bytes via POST"
        conn.close()
    assert bodies == [payload, payload]
    assert origin.counts["/upload"] == 2  # POST responses are never cached
    # A POST invalidates nothing it should not and is not served to a GET either.
    conn = await RawConn.open(node)
    conn.send(get("/upload"))
    assert (await conn.response()).body == b"got 0 bytes via GET"
    conn.close()
    assert origin.counts["/upload"] == 3
    assert all("expect" not in {k.lower() for k in h} for h in origin.seen_headers)


async def test_expect_100_continue_waits_for_its_turn_in_a_pipeline(
    node: NodeServer, origin: TestOrigin
) -> None:
    """The 100 (Continue) of a pipelined request must not land inside the response to an
    earlier request still being answered."""
    bodies: list[bytes] = []
    origin.set("/slow-first", b"first response", headers=CACHEABLE, delay=0.3)
    origin.set("/upload2", handler=recording_handler(bodies))
    conn = await RawConn.open(node)
    conn.send(
        get("/slow-first")
        + b"PUT /upload2 HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5\r\n\r\n"
    )
    first = await conn.read_head()
    assert first.status == 200, first
    assert await conn.read_body(first) == b"first response"
    interim = await conn.read_head()
    assert interim.status == 100
    conn.send(b"hello")
    resp = await conn.response()
    assert resp.body == b"got 5 bytes via PUT"
    assert bodies == [b"hello"]
    conn.close()


async def test_expect_with_another_expectation_is_refused(
    node: NodeServer, origin: TestOrigin
) -> None:
    conn = await RawConn.open(node)
    conn.send(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx")
    await expect_rejected(conn, 417)
    await assert_serves(node, origin)


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_chunked_request_body_is_forwarded(
    node: NodeServer, origin: TestOrigin, method: str
) -> None:
    bodies: list[bytes] = []
    origin.set("/chunked", handler=recording_handler(bodies))
    conn = await RawConn.open(node)
    conn.send(
        f"{method} /chunked HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    await asyncio.sleep(0.05)
    conn.send(b"7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")
    resp = await conn.response()
    assert resp.status == 200
    assert resp.body == f"got 12 bytes via {method}".encode()
    assert bodies == [b"hello, world"]
    # A trailer field is not a header field: it is neither merged nor forwarded.
    assert "x-trailer" not in {k.lower() for k in origin.seen_headers[-1]}
    # Content-Length body, then the same connection keeps working.
    conn.send(
        f"{method} /chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc".encode()
    )
    assert (await conn.response()).body == f"got 3 bytes via {method}".encode()
    assert bodies[-1] == b"abc"
    assert origin.counts["/chunked"] == 2
    conn.close()


async def test_trailer_fields_do_not_change_the_request(
    node: NodeServer, origin: TestOrigin
) -> None:
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=await request.read())

    origin.set("/trailers", handler=handler)
    conn = await RawConn.open(node)
    conn.send(
        b"POST /trailers HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nAuthorization: Bearer forged\r\nHost: evil.example\r\n\r\n"
    )
    resp = await conn.response()
    assert resp.status == 200 and resp.body == b"ok"
    forwarded = {k.lower(): v for k, v in seen[0].items()}
    assert "authorization" not in forwarded
    assert "evil" not in forwarded.get("host", "")
    conn.close()


# --------------------------------------------------------------------------------------------
# Limits

LIMITS = {
    "max_target_bytes": "1KiB",
    "max_head_bytes": "16KiB",
    "max_headers": 30,
    "max_body_bytes": "64KiB",
}


@pytest.fixture
async def limited(origin: TestOrigin, start_node: Callable[..., Any]) -> NodeServer:
    return await start_node(origin.url, limits=LIMITS)


async def test_target_too_long_is_414(limited: NodeServer, origin: TestOrigin) -> None:
    conn = await RawConn.open(limited)
    conn.send(get("/" + "a" * 2000))
    resp = await expect_rejected(conn, 414)
    assert b"request-target too long" in resp.body
    # Just under the limit is fine (a 404 from the origin, not a 414).
    conn = await RawConn.open(limited)
    conn.send(get("/" + "a" * 1000))
    assert (await conn.response()).status == 404
    conn.close()
    await assert_serves(limited, origin)


async def test_target_too_long_arriving_in_pieces_is_414(
    limited: NodeServer, origin: TestOrigin
) -> None:
    conn = await RawConn.open(limited)
    conn.send(b"GET /")
    for _ in range(30):
        conn.send(b"b" * 100)
        await asyncio.sleep(0)
    await expect_rejected(conn, 414)
    await assert_serves(limited, origin)


async def test_huge_header_is_431(node: NodeServer, origin: TestOrigin) -> None:
    conn = await RawConn.open(node)  # default limits: 32 KiB of head
    conn.send(get("/x", "X-Big: " + "v" * 100_000))
    resp = await expect_rejected(conn, 431)
    assert b"too large" in resp.body
    await assert_serves(node, origin)


async def test_header_that_never_ends_is_refused_early(
    limited: NodeServer, origin: TestOrigin
) -> None:
    """A header value that keeps coming is refused once it is over the head limit, not
    buffered until a line end that never comes (or until the header timeout)."""
    conn = await RawConn.open(limited)
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
    start = time.monotonic()
    try:
        for _ in range(200):
            if conn.eof:
                break
            conn.send(b"z" * 4096)
            await asyncio.sleep(0.002)
    except (ConnectionError, RuntimeError):
        pass
    await expect_rejected(conn, 431, timeout=3.0)
    assert time.monotonic() - start < 3.0
    await assert_serves(limited, origin)


async def test_too_many_headers_is_431(limited: NodeServer, origin: TestOrigin) -> None:
    conn = await RawConn.open(limited)
    conn.send(get("/x", *(f"X-H{i}: {i}" for i in range(40))))
    resp = await expect_rejected(conn, 431)
    assert b"too many header fields" in resp.body
    conn = await RawConn.open(limited)
    conn.send(get("/x", *(f"X-H{i}: {i}" for i in range(25))))
    assert (await conn.response()).status == 404
    conn.close()
    await assert_serves(limited, origin)


async def test_content_length_over_the_body_limit_is_413(
    limited: NodeServer, origin: TestOrigin
) -> None:
    conn = await RawConn.open(limited)
    conn.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n")
    resp = await expect_rejected(conn, 413)  # before the body is sent
    assert b"request body too large" in resp.body
    # With Expect: 100-continue the client never gets a 100 and never sends the body.
    conn = await RawConn.open(limited)
    conn.send(
        b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n"
    )
    await expect_rejected(conn, 413)
    assert origin.counts["/up"] == 0
    await assert_serves(limited, origin)


async def test_chunked_body_over_the_limit_is_413(
    limited: NodeServer, origin: TestOrigin
) -> None:
    conn = await RawConn.open(limited)
    conn.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 16384 + b"c" * 16384 + b"\r\n"
    for _ in range(5):  # 80 KiB > 64 KiB
        conn.send(chunk)
    resp = await expect_rejected(conn, 413)
    assert b"request body too large" in resp.body
    assert origin.counts["/up"] == 0
    await assert_serves(limited, origin)


async def test_body_just_under_the_limit_is_forwarded(
    limited: NodeServer, origin: TestOrigin
) -> None:
    bodies: list[bytes] = []
    origin.set("/up", handler=recording_handler(bodies))
    payload = b"u" * 65536
    async with (
        aiohttp.ClientSession() as session,
        session.post(url(limited, "/up"), data=payload) as resp,
    ):
        assert resp.status == 200
        assert await resp.read() == b"got 65536 bytes via POST"
    assert bodies == [payload]


# --------------------------------------------------------------------------------------------
# Timeouts (the sweep runs once per second, so a 1 s timeout fires 1–2 s after its start)

TIMEOUTS = {"header_timeout": "1s", "idle_timeout": "1s"}


@pytest.fixture
async def impatient(origin: TestOrigin, start_node: Callable[..., Any]) -> NodeServer:
    return await start_node(origin.url, limits=TIMEOUTS)


@pytest.mark.slow
async def test_slowloris_is_cut_off(impatient: NodeServer, origin: TestOrigin) -> None:
    await between_sweeps(impatient)
    conn = await RawConn.open(impatient)
    start = time.monotonic()
    head = get("/slow", *(f"X-Pad-{i}: {'p' * 10}" for i in range(20)))
    for byte in head[:-1]:
        if conn.eof:
            break
        try:
            conn.send(bytes([byte]))
        except (ConnectionError, RuntimeError):
            break
        await asyncio.sleep(0.3)
    elapsed = time.monotonic() - start
    assert conn.eof, "still connected after sending byte after byte for a long time"
    assert 1.0 <= elapsed <= 1.0 + 1.5 + 0.3, elapsed
    rest = await conn.read_to_close(1.0)
    assert rest == b"" or rest.startswith(b"HTTP/1.1 408 "), rest
    assert impatient.node.stats.timeouts >= 1
    await assert_serves(impatient, origin)


@pytest.mark.slow
async def test_idle_keep_alive_connection_is_closed(
    impatient: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/idle", b"idle", headers=CACHEABLE)
    await between_sweeps(impatient)
    conn = await RawConn.open(impatient)
    conn.send(get("/idle"))
    assert (await conn.response()).body == b"idle"
    answered = time.monotonic()
    assert await conn.closed_within(3.0)
    idle = time.monotonic() - answered
    assert 0.95 <= idle <= 1.0 + 1.5, idle
    assert conn.buffer == b""  # closed silently: there was no request to answer


@pytest.mark.slow
async def test_idle_time_counts_from_the_end_of_the_response(
    impatient: NodeServer, origin: TestOrigin
) -> None:
    """A response that takes longer than the idle timeout must not leave the connection
    already expired when it ends."""
    origin.set("/takes-long", b"worth the wait", headers=CACHEABLE, delay=1.3)
    conn = await RawConn.open(impatient)
    conn.send(get("/takes-long"))
    assert (await conn.response()).body == b"worth the wait"
    answered = time.monotonic()
    assert await conn.closed_within(3.0)
    assert time.monotonic() - answered >= 0.95, "closed before the idle timeout"


@pytest.mark.slow
async def test_a_connection_that_never_sends_is_closed(
    impatient: NodeServer, origin: TestOrigin
) -> None:
    await between_sweeps(impatient)
    start = time.monotonic()
    conn = await RawConn.open(impatient)
    assert await conn.closed_within(3.0)
    assert 0.95 <= time.monotonic() - start <= 2.5
    assert conn.buffer == b""
    assert impatient.connections == set()
    await assert_serves(impatient, origin)


async def test_a_head_sent_in_pieces_within_the_timeout_is_served(
    impatient: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/pieces", b"pieces", headers=CACHEABLE)
    conn = await RawConn.open(impatient)
    request = get("/pieces")
    for piece in (request[:5], request[5:12], request[12:]):
        conn.send(piece)
        await asyncio.sleep(0.25)
    assert (await conn.response()).body == b"pieces"
    conn.close()


# --------------------------------------------------------------------------------------------
# The connection cap


async def test_max_connections(origin: TestOrigin, start_node: Callable[..., Any]) -> None:
    server = await start_node(origin.url, limits={"max_connections": 3})
    origin.set("/cap", b"cap", headers=CACHEABLE)
    held = [await RawConn.open(server) for _ in range(3)]
    for conn in held:
        conn.send(get("/cap"))
        assert (await conn.response()).body == b"cap"
    extra = await RawConn.open(server)
    resp = await extra.response()
    assert resp.status == 503
    assert resp.headers["connection"].lower() == "close"
    assert b"too many connections" in resp.body
    assert await extra.closed_within(2.0)
    # The held connections still work.
    held[0].send(get("/cap"))
    assert (await held[0].response()).body == b"cap"
    for conn in held[:2]:
        conn.close()
    await asyncio.sleep(0.1)
    fresh = [await RawConn.open(server) for _ in range(2)]
    for conn in fresh:
        conn.send(get("/cap"))
        assert (await conn.response()).body == b"cap"
        conn.close()
    held[2].close()
    assert server.node.stats.connections_rejected == 1


# --------------------------------------------------------------------------------------------
# Graceful shutdown


async def test_graceful_shutdown(origin: TestOrigin, start_node: Callable[..., Any]) -> None:
    server = await start_node(origin.url)
    origin.set("/inflight", b"i" * 200_000, headers=CACHEABLE, delay=0.5)
    origin.set("/warm", b"warm", headers=CACHEABLE)
    idle = await RawConn.open(server)
    idle.send(get("/warm"))
    assert (await idle.response()).body == b"warm"
    busy = await RawConn.open(server)
    busy.send(get("/inflight"))
    await asyncio.sleep(0.1)  # the node is waiting for the origin
    start = time.monotonic()
    stopping = asyncio.create_task(server.stop(grace=5))
    await asyncio.sleep(0.05)
    assert await idle.closed_within(1.0), "an idle keep-alive connection survived the stop"
    with pytest.raises(OSError):
        await RawConn.open(server)
    resp = await busy.response()
    assert resp.status == 200 and resp.body == b"i" * 200_000
    assert resp.headers["connection"].lower() == "close"
    assert await busy.closed_within(2.0)
    async with asyncio.timeout(5):
        await stopping
    assert time.monotonic() - start < 2.0


# --------------------------------------------------------------------------------------------
# Clients that vanish


async def test_client_disconnecting_mid_response(
    node: NodeServer, origin: TestOrigin
) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    origin.set("/vanish", body, headers=CACHEABLE, chunk_size=65536, chunk_delay=0.01)
    origin.set("/after-vanish", b"after", headers=CACHEABLE)
    for how in ("close", "abort"):
        conn = await RawConn.open(node)
        conn.send(get("/vanish?" + how))
        resp = await conn.read_head()
        assert resp.status == 200
        async with asyncio.timeout(READ_TIMEOUT):
            while len(conn.buffer) < 100_000:
                await conn._more()
        getattr(conn, how)()
    await asyncio.sleep(0.1)
    await assert_serves(node, origin, "/after-vanish")
    # The fill was not the client's: it completes, and the object is whole (then cached).
    for expect_hit in (False, True):
        conn = await RawConn.open(node)
        conn.send(get("/vanish?close"))
        resp = await conn.response()
        assert resp.body == body
        assert ("; hit" in resp.headers["cache-status"]) == expect_hit
        conn.close()
    assert origin.counts["/vanish?close"] == 1


async def test_options_asterisk_is_answered_by_the_node(node):
    from rawhttp import get as raw_get

    response = await raw_get(node.port, "*", method="OPTIONS")
    assert response.status == 200
    assert "GET" in response.header("allow")


async def test_http10_keep_alive_is_confirmed(origin, node):
    origin.set("/k10", b"x", headers={"Cache-Control": "max-age=60"})
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    for _ in range(2):
        writer.write(b"GET /k10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Connection: keep-alive" in head
        await reader.readexactly(1)
    writer.close()
