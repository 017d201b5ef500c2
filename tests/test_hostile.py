"""Malformed and hostile requests: each gets a clear error (status and reason) and the
connection closes, nothing smuggled behind it is answered, and a fresh client still gets a
normal 200 from the same node — a bad request never takes the node down (docs/overview.md,
"Robustness"). Raw bytes on real loopback sockets; ``RawConn`` lives in ``rawconn.py``.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rawconn import CACHEABLE, RawConn, Response, assert_serves, get

from reelcdn.edge.ops.server import NodeServer

if TYPE_CHECKING:
    from conftest import TestOrigin

pytestmark = pytest.mark.usefixtures("no_internal_errors")


async def rejected_then_fine(
    node: NodeServer, origin: TestOrigin, data: bytes, status: int | tuple[int, ...],
    reason: bytes = b"",
) -> bytes:
    """Send ``data``; expect one error response with a reason, the connection closed, nothing
    else answered; then a fresh client is served. Returns the error body."""
    conn = await RawConn.open(node)
    conn.send(data)
    resp = await conn.read_head()
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status in statuses, (resp.status, resp.head)
    await expect_rejected_body(conn, resp)
    assert reason in resp.body, resp.body
    await assert_serves(node, origin)
    return resp.body


async def expect_rejected_body(conn: RawConn, resp: Response) -> None:
    resp.body = await conn.read_body(resp)
    assert 400 <= resp.status < 600
    assert resp.headers.get("connection", "").lower() == "close"
    assert resp.headers.get("content-type", "").startswith("text/plain")
    assert re.fullmatch(rb"\d{3} [^:]+: .+\n", resp.body), resp.body
    assert await conn.closed_within(2.0), "the node kept the connection after an error"
    assert conn.buffer == b"", f"more bytes after the error: {bytes(conn.buffer)!r}"


HOST = "Host: 127.0.0.1\r\n"

BAD_REQUESTS = {
    # Request smuggling: conflicting framing.
    "cl-and-te": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Content-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        400, b"Transfer-Encoding",
    ),
    "te-and-cl": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Transfer-Encoding: chunked\r\n"
        b"Content-Length: 6\r\n\r\n0\r\n\r\nG",
        400, b"Content-Length",
    ),
    "two-content-lengths": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Content-Length: 3\r\n"
        b"Content-Length: 4\r\n\r\nabcd",
        400, b"Content-Length",
    ),
    "same-content-length-twice": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Content-Length: 3\r\n"
        b"Content-Length: 3\r\n\r\nabc",
        400, b"Content-Length",
    ),
    "content-length-list": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Content-Length: 3, 3\r\n\r\nabc",
        400, b"Content-Length",
    ),
    "negative-content-length": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Content-Length: -1\r\n\r\n",
        400, b"Content-Length",
    ),
    "overflowing-content-length": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Content-Length: 99999999999999999999999\r\n"
        b"\r\n",
        (400, 413), b"",
    ),
    "bad-chunk-size": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Transfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
        400, b"chunk size",
    ),
    "te-not-ending-in-chunked": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Transfer-Encoding: chunked, gzip\r\n\r\n"
        b"0\r\n\r\n",
        400, b"Transfer-Encoding",
    ),
    "te-coding-besides-chunked": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
        b"0\r\n\r\n",
        501, b"transfer coding",
    ),
    "te-on-http10": (
        b"POST /s HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400, b"HTTP/1.0",
    ),
    # Malformed heads.
    "obs-fold": (b"GET / HTTP/1.1\r\n" + HOST.encode() + b"X-A: a\r\n folded\r\n\r\n", 400, b""),
    "space-before-colon": (b"GET / HTTP/1.1\r\n" + HOST.encode() + b"X-A : a\r\n\r\n", 400, b""),
    "whitespace-before-first-field": (b"GET / HTTP/1.1\r\n " + HOST.encode() + b"\r\n", 400,
                                      b""),
    "field-without-colon": (b"GET / HTTP/1.1\r\n" + HOST.encode() + b"NoColon\r\n\r\n", 400,
                            b""),
    "bad-field-name": (b"GET / HTTP/1.1\r\n" + HOST.encode() + b"X(y): 1\r\n\r\n", 400, b""),
    "bare-cr-in-value": (b"GET / HTTP/1.1\r\n" + HOST.encode() + b"X: a\rb\r\n\r\n", 400, b""),
    "lf-only-line-ends": (b"GET / HTTP/1.1\nHost: a\n\n", 400, b""),
    "garbage-line": (b"HELLO\r\n\r\n", 400, b"method"),
    "binary-junk": (bytes(range(256)) + b"\r\n\r\n", 400, b""),
    "tls-client-hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400,
                         b""),
    "nul-in-header-value": (b"GET / HTTP/1.1\r\n" + HOST.encode() + b"X: a\x00b\r\n\r\n", 400,
                            b""),
    "nul-in-target": (b"GET /a\x00b HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400, b"target"),
    "non-ascii-target": (
        "GET /vidéo HTTP/1.1\r\n".encode() + HOST.encode() + b"\r\n", 400, b"target",
    ),
    "latin1-target": (b"GET /vid\xe9o HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400, b"target"),
    "fragment-in-target": (b"GET /a#frag HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400,
                           b"fragment"),
    "relative-target": (b"GET x/y HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400, b"target"),
    "space-in-target": (b"GET /a b HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400, b""),
    "absolute-form-foreign-host": (
        b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400, b"evil.example",
    ),
    "absolute-form-userinfo-trick": (
        b"GET http://127.0.0.1@evil.example/x HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400,
        b"evil.example",
    ),
    "absolute-form-other-scheme": (
        b"GET ftp://127.0.0.1/x HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400, b"",
    ),
    "connect": (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 400,
                b"CONNECT"),
    "no-host-on-http11": (b"GET / HTTP/1.1\r\n\r\n", 400, b"Host"),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, b"Host"),
    # Versions.
    "http2-request-line": (b"GET / HTTP/2.0\r\n" + HOST.encode() + b"\r\n", 505, b"HTTP/1.1"),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, b"HTTP/2"),
    "http12": (b"GET / HTTP/1.2\r\n" + HOST.encode() + b"\r\n", 505, b"version"),
    "http37": (b"GET / HTTP/3.7\r\n" + HOST.encode() + b"\r\n", 505, b"version"),
    "http09": (b"GET /\r\n\r\n", 505, b"HTTP/1.1"),
    "not-http": (b"GET / FTP/1.0\r\n" + HOST.encode() + b"\r\n", 400, b""),
    # Methods.
    "invalid-method-chars": (b"G@T / HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400, b"method"),
    "lowercase-method": (b"get / HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400, b"method"),
    "unknown-method": (b"FROB / HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400, b"method"),
    # Upgrades the node cannot honour and whose body it would otherwise not read.
    "upgrade-with-body": (
        b"POST /s HTTP/1.1\r\n" + HOST.encode() + b"Connection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 34\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        400, b"Upgrade",
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
async def test_bad_request_is_refused_and_the_node_lives_on(
    node: NodeServer, origin: TestOrigin, name: str
) -> None:
    data, status, reason = BAD_REQUESTS[name]
    origin.set("/smuggled", b"SMUGGLED", headers=CACHEABLE)
    await rejected_then_fine(node, origin, data, status, reason)
    assert origin.counts["/s"] == 0 and origin.counts["/smuggled"] == 0
    await no_connections_left(node)


async def no_connections_left(node: NodeServer) -> None:
    """Every connection ends once its client is gone: none leaks or hangs."""
    async with asyncio.timeout(2.0):
        while node.connections:
            await asyncio.sleep(0.01)


async def test_absolute_form_for_this_node_works(node: NodeServer, origin: TestOrigin) -> None:
    origin.set("/abs?q=1", b"absolute", headers=CACHEABLE)
    conn = await RawConn.open(node)
    for target in (
        f"http://127.0.0.1:{node.port}/abs?q=1",
        f"http://localhost:{node.port}/abs?q=1",
        f"HTTP://127.0.0.1:{node.port}/abs?q=1",
    ):
        conn.send(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        resp = await conn.response()
        assert resp.status == 200 and resp.body == b"absolute", (target, resp)
    assert origin.counts["/abs?q=1"] == 1
    conn.close()


async def test_absolute_form_naming_another_port_is_refused(
    node: NodeServer, origin: TestOrigin
) -> None:
    """localhost:other-port (or no port: 80) is another server, not this node."""
    origin.set("/abs", b"absolute", headers=CACHEABLE)
    for target in ("http://localhost/abs", f"http://127.0.0.1:{node.port + 1}/abs",
                   "http://localhost:1/abs"):
        conn = await RawConn.open(node)
        conn.send(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        resp = await conn.response()
        assert resp.status == 400 and b"foreign host" in resp.body, (target, resp)
        conn.close()
    assert origin.counts["/abs"] == 0


@pytest.mark.parametrize("host", [b"", b" ", b"evil.example/v/x", b"a b", b"a@b", b"a?b",
                                  b"[::1", b"a.example#x"])
async def test_invalid_host_field_is_refused(
    node: NodeServer, origin: TestOrigin, host: bytes
) -> None:
    """RFC 9112 §3.2: a request with an invalid Host gets 400 (the host may join a key)."""
    conn = await RawConn.open(node)
    conn.send(b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    resp = await conn.response()
    assert resp.status == 400 and b"Host" in resp.body, (host, resp)
    conn.close()


async def test_every_error_names_its_reason(node: NodeServer, origin: TestOrigin) -> None:
    reasons = set()
    for data, status, _ in BAD_REQUESTS.values():
        conn = await RawConn.open(node)
        conn.send(data)
        resp = await conn.response()
        assert resp.status in ((status,) if isinstance(status, int) else status)
        reasons.add(resp.body.split(b": ", 1)[1])
        conn.close()
    assert len(reasons) >= 15  # specific reasons, not one catch-all message


# --------------------------------------------------------------------------------------------
# Smuggling through pipelining


@pytest.mark.parametrize(
    "bad",
    [
        b"GET /a HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
    ids=["bad-field", "two-lengths", "nul", "garbage", "long-target"],
)
async def test_good_request_behind_a_bad_one_is_not_answered(
    node: NodeServer, origin: TestOrigin, bad: bytes
) -> None:
    origin.set("/smuggled", b"SMUGGLED", headers=CACHEABLE)
    conn = await RawConn.open(node)
    conn.send(bad + get("/smuggled"))
    resp = await conn.read_head()
    assert 400 <= resp.status < 500
    await expect_rejected_body(conn, resp)
    assert origin.counts["/smuggled"] == 0
    await assert_serves(node, origin)


async def test_good_requests_before_a_bad_one_are_answered_then_the_error(
    node: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/before-slow", b"slow one", headers=CACHEABLE, delay=0.2)
    origin.set("/before-hit", b"hit one", headers=CACHEABLE)
    origin.set("/smuggled", b"SMUGGLED", headers=CACHEABLE)
    await assert_serves(node, origin, "/before-hit")
    conn = await RawConn.open(node)
    conn.send(get("/before-slow") + get("/before-hit") + b"GET / HTTP/1.1\r\nX : y\r\n\r\n"
              + get("/smuggled"))
    assert (await conn.response()).body == b"slow one"
    assert (await conn.response()).body == b"hit one"
    error = await conn.read_head()
    assert error.status == 400
    await expect_rejected_body(conn, error)
    assert origin.counts["/smuggled"] == 0


async def test_body_that_looks_like_a_request_is_a_body(
    node: NodeServer, origin: TestOrigin
) -> None:
    origin.set("/carrier", b"carrier", headers=CACHEABLE)
    origin.set("/smuggled", b"SMUGGLED", headers=CACHEABLE)
    inner = get("/smuggled")
    conn = await RawConn.open(node)
    conn.send(
        b"GET /carrier HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner
        + get("/carrier")
    )
    assert (await conn.response()).body == b"carrier"
    assert (await conn.response()).body == b"carrier"
    await asyncio.sleep(0.1)
    assert conn.buffer == b""
    assert origin.counts["/smuggled"] == 0
    conn.close()


async def test_upgrade_is_ignored_for_a_bodyless_request(
    node: NodeServer, origin: TestOrigin
) -> None:
    """``Upgrade: h2c`` (curl --http2) is ignored: the request is answered over HTTP/1.1 and
    the connection goes on."""
    origin.set("/up", b"up", headers=CACHEABLE)
    conn = await RawConn.open(node)
    conn.send(
        b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + get("/up")
    )
    for _ in range(2):
        resp = await conn.response()
        assert resp.status == 200 and resp.body == b"up"
    await asyncio.sleep(0.1)
    assert conn.buffer == b"" and not conn.eof
    conn.close()
    assert "upgrade" not in {k.lower() for k in origin.seen_headers[0]}


@pytest.mark.parametrize("refused", [
    (b"GET /up HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET /up HTTP/1.1\r\n\r\n", 400),
    (b"GET /up HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
])
async def test_a_refusal_after_an_upgrade_request_is_a_4xx(
    node: NodeServer, origin: TestOrigin, refused: tuple[bytes, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request refused while the reader goes on after an ``Upgrade`` one is answered with
    its reason, not as an internal error."""
    origin.set("/up", b"up", headers=CACHEABLE)
    conn = await RawConn.open(node)
    conn.send(b"GET /up HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"\r\n" + refused[0])
    assert (await conn.response()).status == 200
    resp = await conn.response()
    assert resp.status == refused[1] and b"internal error" not in resp.body
    assert "parser callback failed" not in caplog.text
    conn.close()


async def test_many_bad_connections_at_once(node: NodeServer, origin: TestOrigin) -> None:
    async def one(data: bytes) -> int:
        conn = await RawConn.open(node)
        conn.send(data)
        resp = await conn.response()
        conn.close()
        return resp.status

    datas = [data for data, _, _ in BAD_REQUESTS.values()] * 4
    statuses = await asyncio.gather(*(one(d) for d in datas))
    assert all(400 <= s < 600 for s in statuses)
    await assert_serves(node, origin)
    await no_connections_left(node)


# --------------------------------------------------------------------------------------------
# Random bytes and random mutations of valid requests

VALID = [
    get("/fz"),
    get("/fz", method="HEAD"),
    b"GET /fz?a=1&b=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=0-3\r\n"
    b"If-None-Match: \"x\"\r\nAccept: */*\r\n\r\n",
    b"POST /fz-post HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /fz-post HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"POST /fz-post HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
    b"Content-Length: 2\r\n\r\nhi",
    b"GET /fz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]

STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) [^\r\n]*\r\n")


def split_responses(data: bytes) -> list[int]:
    """Statuses of the responses in ``data``; asserts each is well framed. A HEAD response's
    framing fields describe a body that is not there, so a response whose body does not
    lead to another status line (or the end) is retried as bodyless."""
    statuses = []
    pos = 0
    while pos < len(data):
        match = STATUS_LINE.match(data, pos)
        assert match, f"not a response at {pos}: {data[pos:pos + 80]!r}"
        end = data.index(b"\r\n\r\n", pos) + 4
        status = int(match[1])
        statuses.append(status)
        head = data[pos:end].lower()
        length = re.search(rb"\r\ncontent-length: *(\d+)", head)
        candidates = [end]
        if 100 <= status < 200 or status in (204, 304):
            pass
        elif length:
            candidates.insert(0, end + int(length[1]))
        elif b"transfer-encoding: chunked" in head:
            cursor = end
            while True:
                line_end = data.index(b"\r\n", cursor)
                size = int(data[cursor:line_end].split(b";")[0], 16)
                cursor = line_end + 2 + size + 2
                if size == 0:
                    break
            candidates.insert(0, cursor)
        else:
            candidates.insert(0, len(data))  # delimited by the close
        for nxt in candidates:
            if nxt == len(data) or STATUS_LINE.match(data, nxt):
                pos = nxt
                break
        else:
            raise AssertionError(f"bad framing after {data[pos:end]!r}")
    return statuses


def mutate(base: bytes, edits: list[tuple[int, int, int, bytes]]) -> bytes:
    data = bytearray(base)
    for kind, where, length, blob in edits:
        at = where % (len(data) + 1)
        if kind == 0:  # replace a byte
            if data:
                data[at % len(data)] = blob[0] if blob else 0
        elif kind == 1:  # insert
            data[at:at] = blob
        elif kind == 2:  # delete
            del data[at:at + length]
        elif kind == 3:  # duplicate a slice
            data[at:at] = data[at:at + length]
        else:  # truncate
            del data[at:]
    return bytes(data)


edit = st.tuples(
    st.integers(0, 4), st.integers(0, 500), st.integers(1, 20),
    st.binary(min_size=1, max_size=8) | st.sampled_from(
        [b"\r\n", b"\n", b" ", b":", b"\x00", b"0", b"9" * 12, b"chunked", b"\r\n\r\n", b"HTTP/1."]
    ),
)

payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(mutate, st.sampled_from(VALID), st.lists(edit, min_size=1, max_size=4)),
    st.lists(st.sampled_from(VALID), min_size=2, max_size=4).map(b"".join),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=payloads)
@example(payload=b"")
@example(payload=b"\r\n\r\n\r\n")
@example(payload=VALID[0] + b"\x00" * 10)
@example(payload=b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nshort")
async def test_random_input_never_breaks_the_node(
    node: NodeServer, origin: TestOrigin, caplog: pytest.LogCaptureFixture, payload: bytes
) -> None:
    if "/fz" not in origin.routes:
        origin.set("/fz", b"fuzz body", headers=CACHEABLE)

        async def echo(request: web.Request) -> web.Response:
            return web.Response(body=await request.read())

        origin.set("/fz-post", handler=echo)
    conn = await RawConn.open(node)
    conn.send(payload)
    conn.send_eof()  # a half-closed client gets what it asked for, then the node closes
    data = await conn.read_to_close(timeout=5.0)
    statuses = split_responses(data)
    for status in statuses:
        assert 100 <= status < 600
    conn.close()
    await assert_serves(node, origin, "/fz")
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, errors[0].getMessage()


async def test_node_is_fine_after_the_fuzzing(node: NodeServer, origin: TestOrigin) -> None:
    # The fuzz test shares the node across its examples; this checks a fresh node and the
    # absence of leaked connections after a burst of random garbage.
    junk = [bytes((i * 37 + j) % 256 for j in range(200)) for i in range(50)]
    for data in junk:
        conn = await RawConn.open(node)
        conn.send(data)
        conn.send_eof()
        split_responses(await conn.read_to_close(timeout=5.0))
        conn.close()
    await no_connections_left(node)
    await assert_serves(node, origin)
