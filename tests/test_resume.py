"""A fill whose body breaks mid-way is resumed from the next parent with Range + If-Range
(docs/failover.md, "A body that breaks"), only when the bytes can be matched exactly."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random

from rawhttp import get

from reelcdn.edge.config import HealthConfig, ParentRef, UpstreamTimeouts, node_config_from_dict
from reelcdn.edge.fetch.parents import hrw_order
from reelcdn.edge.fetch.resume import partial_continues, resume_fields, resume_identity
from reelcdn.edge.ops.server import NodeServer
from reelcdn.shield.connectors import build_upstream

TIMEOUTS = UpstreamTimeouts(connect=1, first_byte=3, idle=3)
OBJECT = random.Random(7).randbytes(2 * 1024 * 1024)
HALF = len(OBJECT) // 2
ETAG = '"obj-v1"'


class ObjectServer:
    """A parent or origin on loopback serving one object (``OBJECT``) at every path.

    ``etag``: the ETag it sends (None: no validator). ``cut_at``: send the head and that many
    body bytes, then reset the connection (as a parent that dies mid-body). It answers
    ``Range: bytes=N-`` with a 206 when ``If-Range`` is absent or equals its ETag, else the
    whole 200 (RFC 9110 §13.1.5). ``requests``: (target, lower-cased fields) of each request."""

    def __init__(self, etag: str | None = ETAG, cut_at: int | None = None) -> None:
        self.etag = etag
        self.cut_at = cut_at
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def data_requests(self) -> list[tuple[str, dict[str, str]]]:
        return [r for r in self.requests if not r[0].startswith("/__reelcdn/")]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                fields = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        fields[name.strip().lower()] = value.strip()
                self.requests.append((target, fields))
                start = 0
                wanted = fields.get("range", "")
                if (wanted.startswith("bytes=") and wanted.endswith("-")
                        and fields.get("if-range", self.etag) == self.etag):
                    start = int(wanted[6:-1])
                validator = f"ETag: {self.etag}\r\n" if self.etag else ""
                status = "206 Partial Content" if start else "200 OK"
                extra = (f"Content-Range: bytes {start}-{len(OBJECT) - 1}/{len(OBJECT)}\r\n"
                         if start else "")
                body = OBJECT[start:]
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{validator}"
                             f"{extra}Cache-Control: max-age=60\r\nAccept-Ranges: bytes\r\n\r\n"
                             .encode())
                if self.cut_at is not None and not target.startswith("/__reelcdn/"):
                    writer.write(body[:self.cut_at])
                    await writer.drain()
                    await asyncio.sleep(0.3)  # let the node read it all before the reset
                    writer.transport.abort()
                    return
                writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def start_edge(parents: list[tuple[str, str]]) -> NodeServer:
    base = node_config_from_dict("edge-r", {"listen": "127.0.0.1:0",
                                            "upstream": "http://127.0.0.1:9"})
    config = dataclasses.replace(
        base, upstream=None, parents=tuple(ParentRef(name, url) for name, url in parents),
        health=HealthConfig(checks=False), upstream_timeouts=TIMEOUTS,
        max_object_bytes=16 * 1024 * 1024,
    )
    server = NodeServer(config, build_upstream)
    await server.start()
    return server


def target_owned_by(owner: str, names: list[str]) -> str:
    return next(f"/v/r/seg.m4s?k={i}" for i in range(1000)
                if hrw_order(names, f"/v/r/seg.m4s?k={i}")[0] == owner)


async def cut_get(port: int, target: str) -> tuple[int, int, bytes]:
    """(status, announced length, body received) of a response the node may cut."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")
                      if line.lower().startswith("content-length:"))
        async with asyncio.timeout(10):
            body = await reader.read(-1)  # the node closes the connection on a cut
        return status, length, body
    finally:
        writer.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_body_cut_mid_way_is_resumed_from_the_next_parent():
    dying = ObjectServer(cut_at=HALF)
    whole = ObjectServer()
    await dying.start()
    await whole.start()
    names = ["dying", "whole"]
    target = target_owned_by("dying", names)
    server = await start_edge([("dying", dying.url), ("whole", whole.url)])
    try:
        # Three clients on the one fill: two whole, one a Range across the break.
        first, joined, tail = await asyncio.gather(
            get(server.port, target), get(server.port, target),
            get(server.port, target, {"Range": f"bytes={HALF - 1000}-"}))
        assert first.status == 200 and joined.status == 200
        assert len(first.body) == len(OBJECT) and sha(first.body) == sha(OBJECT)
        assert sha(joined.body) == sha(OBJECT)
        assert tail.status == 206 and tail.body == OBJECT[HALF - 1000:]
        assert [t for t, _ in dying.data_requests()] == [target]
        [(asked, fields)] = whole.data_requests()
        assert asked == target
        assert fields["range"] == f"bytes={HALF}-" and fields["if-range"] == ETAG
        second = await get(server.port, target)
        assert (second.header("cache-status") or "").startswith("edge-r; hit")
        assert sha(second.body) == sha(OBJECT)
        assert len(dying.data_requests()) == 1 and len(whole.data_requests()) == 1
    finally:
        await server.stop(grace=0.5)
        await dying.stop()
        await whole.stop()


async def test_a_node_parent_answers_the_resume_on_a_miss():
    """The next parent is a reelcdn node that does not hold the object: it fills it whole
    from its own upstream and answers the Range + If-Range from the arriving body."""
    dying = ObjectServer(cut_at=HALF)
    origin = ObjectServer()
    await dying.start()
    await origin.start()
    regional = await start_edge([("origin", origin.url)])
    names = ["dying", "regional"]
    target = target_owned_by("dying", names)
    server = await start_edge([("dying", dying.url),
                               ("regional", f"http://127.0.0.1:{regional.port}")])
    try:
        first = await get(server.port, target)
        assert first.status == 200 and sha(first.body) == sha(OBJECT)
        # The regional filled the whole object (no Range of the edge's goes further up).
        [(_, fields)] = origin.data_requests()
        assert "range" not in fields and "if-range" not in fields
        second = await get(server.port, target)
        assert (second.header("cache-status") or "").startswith("edge-r; hit")
        assert sha(second.body) == sha(OBJECT)
    finally:
        await server.stop(grace=0.5)
        await regional.stop(grace=0.5)
        await dying.stop()
        await origin.stop()


async def test_a_changed_validator_leaves_the_body_cut_and_unstored():
    dying = ObjectServer(cut_at=HALF)
    changed = ObjectServer(etag='"obj-v2"')  # If-Range fails: it answers the whole 200
    await dying.start()
    await changed.start()
    names = ["dying", "changed"]
    target = target_owned_by("dying", names)
    server = await start_edge([("dying", dying.url), ("changed", changed.url)])
    try:
        status, length, body = await cut_get(server.port, target)
        assert status == 200 and length == len(OBJECT)
        assert len(body) < len(OBJECT) and body == OBJECT[:len(body)]
        [(_, fields)] = changed.data_requests()
        assert fields["range"] == f"bytes={HALF}-" and fields["if-range"] == ETAG
        # Nothing was stored: the next request goes upstream again.
        dying.cut_at = None
        again = await get(server.port, target)
        assert sha(again.body) == sha(OBJECT)
        assert len(dying.data_requests()) == 2
    finally:
        await server.stop(grace=0.5)
        await dying.stop()
        await changed.stop()


async def test_no_strong_validator_no_resume():
    for etag in (None, 'W/"obj-v1"'):
        dying = ObjectServer(etag=etag, cut_at=HALF)
        whole = ObjectServer(etag=etag)
        await dying.start()
        await whole.start()
        names = ["dying", "whole"]
        target = target_owned_by("dying", names)
        server = await start_edge([("dying", dying.url), ("whole", whole.url)])
        try:
            status, length, body = await cut_get(server.port, target)
            assert status == 200 and length == len(OBJECT) and len(body) < len(OBJECT)
            assert whole.data_requests() == []
        finally:
            await server.stop(grace=0.5)
            await dying.stop()
            await whole.stop()


def test_the_resume_answer_must_continue_the_same_bytes():
    etag, total = b'"e"', 100
    assert resume_identity(200, [(b"ETag", etag), (b"Content-Length", b"100")]) == (etag, 100)
    assert resume_identity(200, [(b"ETag", b'W/"e"'), (b"Content-Length", b"100")]) is None
    assert resume_identity(200, [(b"ETag", etag)]) is None
    assert resume_identity(206, [(b"ETag", etag), (b"Content-Length", b"100")]) is None
    good = [(b"ETag", etag), (b"Content-Range", b"bytes 40-99/100"), (b"Content-Length", b"60")]
    assert partial_continues(206, good, etag, 40, total) is None
    assert partial_continues(200, good, etag, 40, total) == "answered 200"
    assert partial_continues(206, good, b'"f"', 40, total) is not None
    assert partial_continues(206, good, etag, 41, total) is not None
    assert partial_continues(206, good, etag, 40, 101) is not None
    short = [(b"ETag", etag), (b"Content-Range", b"bytes 40-98/100")]
    assert partial_continues(206, short, etag, 40, total) is not None
    assert partial_continues(206, [(b"ETag", etag)], etag, 40, total) is not None
    fields = resume_fields([(b"Via", b"1.1 e"), (b"If-None-Match", b'"old"')], etag, 40)
    assert fields == [(b"Via", b"1.1 e"), (b"Range", b"bytes=40-"), (b"If-Range", etag)]
