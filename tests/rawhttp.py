"""A minimal raw HTTP/1.1 client for tests that need exact bytes, timing or many sockets.

aiohttp hides framing and is heavy for hundreds of concurrent sockets in one loop; this reads
one response (Content-Length or chunked framing) from a stream, nothing more.
"""

from __future__ import annotations

import asyncio


class RawResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    response = RawResponse(status, headers, b"")
    if head_only or status in (204, 304) or 100 <= status < 200:
        return response
    length = response.header("content-length")
    if length is not None:
        response.body = await reader.readexactly(int(length))
    elif (response.header("transfer-encoding") or "").lower() == "chunked":
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        response.body = b"".join(parts)
    else:
        response.body = await reader.read()
    return response


async def get(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 10.0,
) -> RawResponse:
    """One request on a fresh connection."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            fields = {"Host": "127.0.0.1", **(headers or {})}
            head = f"{method} {path} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in fields.items()
            )
            writer.write(head.encode() + b"\r\n")
            return await read_response(reader, head_only=method == "HEAD")
        finally:
            writer.close()
