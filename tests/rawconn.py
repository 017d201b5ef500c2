"""A raw HTTP/1.1 client connection for protocol and hostile-input tests.

``RawConn`` is a bare ``asyncio.Protocol`` client that speaks bytes: send anything (pipelined,
split, malformed), then parse the node's responses one by one. It keeps every byte it received
even when the node then resets the connection, and every read is bounded by
``asyncio.timeout``. The rest are small helpers the tests of the node's protocol share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from reelcdn.edge.ops.server import NodeServer

if TYPE_CHECKING:
    from conftest import TestOrigin

CACHEABLE = {"Cache-Control": "max-age=300"}
READ_TIMEOUT = 5.0


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    head: bytes = b""
    field_names: list[str] = field(default_factory=list)


class RawConn(asyncio.Protocol):
    """A client connection that speaks bytes: send anything, parse responses one by one."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._wakeup: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, server: NodeServer | int) -> RawConn:
        port = server if isinstance(server, int) else server.port
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, "127.0.0.1", port)
        return conn

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # like any client: the node is done, so close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _more(self) -> None:
        """Wait for more bytes or the end of the stream; EOFError if it already ended."""
        if self.eof:
            raise EOFError(f"connection closed; unparsed {bytes(self.buffer[:200])!r}")
        self._wakeup = asyncio.get_running_loop().create_future()
        await self._wakeup

    # sending
    def send(self, data: bytes) -> None:
        """Write, unless the node already closed the connection (then the bytes are moot)."""
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(data)

    def send_eof(self) -> None:
        assert self.transport is not None
        self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # reading
    async def _until(self, separator: bytes) -> bytes:
        while (end := self.buffer.find(separator)) < 0:
            await self._more()
        end += len(separator)
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    async def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._more()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_head(self, timeout: float = READ_TIMEOUT) -> Response:
        async with asyncio.timeout(timeout):
            head = await self._until(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        assert version == "HTTP/1.1", lines[0]
        code, _, reason = rest.partition(" ")
        headers: dict[str, str] = {}
        names = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            names.append(name)
            key = name.lower()
            value = value.strip()
            headers[key] = headers[key] + ", " + value if key in headers else value
        return Response(int(code), reason, headers, b"", head, names)

    async def read_body(self, resp: Response, timeout: float = READ_TIMEOUT) -> bytes:
        async with asyncio.timeout(timeout):
            if "content-length" in resp.headers:
                return await self._exactly(int(resp.headers["content-length"]))
            if resp.headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int((await self._until(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        while await self._until(b"\r\n") != b"\r\n":
                            pass  # trailer fields
                        return b"".join(parts)
                    parts.append(await self._exactly(size))
                    assert await self._exactly(2) == b"\r\n"
            return await self.read_to_close(timeout)

    async def response(self, *, head: bool = False, timeout: float = READ_TIMEOUT) -> Response:
        """The next final response (interim 1xx responses are skipped)."""
        resp = await self.read_head(timeout)
        while 100 <= resp.status < 200:
            resp = await self.read_head(timeout)
        if not head and resp.status not in (204, 304):
            resp.body = await self.read_body(resp, timeout)
        return resp

    async def read_to_close(self, timeout: float = READ_TIMEOUT) -> bytes:
        async with asyncio.timeout(timeout):
            while not self.eof:
                await self._more()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def closed_within(self, timeout: float) -> bool:
        """Whether the node ends the connection (FIN or reset) within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not self.eof:
                    await self._more()
        except TimeoutError:
            return False
        return True


def get(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def assert_serves(server: NodeServer, origin: TestOrigin, path: str = "/ok") -> None:
    """A fresh connection gets a normal 200: the node is still alive and well."""
    if path not in origin.routes:
        origin.set(path, b"still fine", headers=CACHEABLE)
    conn = await RawConn.open(server)
    try:
        conn.send(get(path))
        resp = await conn.response()
        assert resp.status == 200, resp
        assert resp.body == origin.routes[path].body
    finally:
        conn.close()


def recording_handler(bodies: list[bytes], status: int = 200) -> Callable[..., Any]:
    async def handler(request: web.Request) -> web.Response:
        data = await request.read()
        bodies.append(data)
        return web.Response(
            status=status,
            body=b"got " + str(len(data)).encode() + b" bytes via " + request.method.encode(),
            headers={"Cache-Control": "max-age=300"},
        )

    return handler


async def between_sweeps(server: NodeServer) -> None:
    """Wait until half-way between two timeout sweeps: a timeout started now must still take
    its full length although the node's coarse clock is half a second old."""
    since = server.loop.time() - server.clock
    await asyncio.sleep((0.5 - since) % 1.0)
