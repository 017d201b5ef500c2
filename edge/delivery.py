"""Delivery: how a node writes an answer, apart from deciding which answer to give.

``node.py`` decides (HIT, MISS, PASS, stale, which status); this module writes: response heads
with this node's ``Age``/``Cache-Status``/``Via``/``CMSD`` fields, bodyless answers (304/412),
Range answers (one range, ``multipart/byteranges``, 416) from a whole body in memory or from a
fetch still arriving, and the 5xx a failed upstream leaves. One Range plan serves both sources,
so a stored object and an arriving one are answered byte for byte the same. The rendered
playlists use :meth:`Delivery.head` too: every head a node sends is built here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelcdn.edge.cache.bodyfile import FileBody
from reelcdn.edge.fetch.coalescer import Fetch
from reelcdn.edge.fetch.contract import FetchFailed
from reelcdn.edge.http.message import NO_PRIOR, render_fields
from reelcdn.edge.metrics import NodeStats
from reelcdn.edge.video import cmsd
from reelcdn.extensions import (
    head as heads,  # compiled twins when built, else extensions/_head_py.py
)
from reelcdn.extensions import ranges  # and extensions/_ranges_py.py
from reelcdn.extensions.message import Request

if TYPE_CHECKING:
    from reelcdn.edge.http.connection import HttpConnection

# Stored fields a 304 answered from cache leaves out: those describing the body it does not
# carry. Everything else goes, so a lower tier revalidating through this one takes the
# refreshed fields (RFC 9111 §4.3.4) as it would from the origin's 304.
NOT_MODIFIED_DROPS = frozenset(
    {b"content-type", b"content-encoding", b"content-range", b"content-length",
     b"accept-ranges", b"transfer-encoding"}
)

# A Range plan: the 206/416 head, then (part head, start, end) pieces, then the closing bytes.
RangePlan = tuple[bytes, list[tuple[bytes, int, int]], bytes]


def sf_token(name: str) -> str:
    """A Cache-Status member name: a bare sf-token where the name allows, else a string."""
    if name and (name[0].isalpha() or name[0] == "*"):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Delivery:
    """The writing side of one node: its identity in heads and the writers that use it."""

    __slots__ = ("stats", "member", "via_hop", "cmsd_line", "cors_line", "own_lines")

    def __init__(self, name: str, stats: NodeStats, with_cmsd: bool,
                 cors_line: bytes = b"") -> None:
        self.stats = stats
        self.member = sf_token(name).encode()
        self.via_hop = b"1.1 " + name.encode()
        self.configure(name, with_cmsd, cors_line)

    def configure(self, name: str, with_cmsd: bool, cors_line: bytes = b"") -> None:
        """A reload: the CMSD line follows ``cmsd``, the CORS line ``cors_origins``
        (``CorsPolicy.head_line``); both are built here once, not per head."""
        self.cmsd_line = cmsd.node_block(name) if with_cmsd else b""
        self.cors_line = cors_line
        self.own_lines = self.cmsd_line + cors_line

    def head(
        self,
        status: int,
        header_block: bytes,
        age: float | None,
        member: bytes,
        ttl: float | None,
        length: int | None,
        close: bytes,
        *,
        chunked: bool = False,
        prior: tuple[bytes, bytes] = NO_PRIOR,
        cmsd_block: bytes | None = None,
    ) -> bytes:
        """Status line, stored fields, then what this node adds: Age, Cache-Status, Via,
        framing (Content-Length or chunked) and Connection (``head.build_head``, compiled
        when built). ``cmsd_block`` replaces this node's shared ``CMSD-Dynamic`` line (a
        rendered playlist's carries its connection's measures). The node's CORS fields
        (``cors.py``) come with it."""
        own = self.own_lines if cmsd_block is None else cmsd_block + self.cors_line
        return heads.build_head(
            status, header_block + own, None if age is None else int(age), prior[0],
            self.member, member, None if ttl is None else int(ttl), prior[1], self.via_hop,
            length, chunked, close,
        )

    def bodyless(
        self,
        conn: HttpConnection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        age: float | None,
        member: bytes,
        close: bytes,
    ) -> None:
        """304 Not Modified or 412 Precondition Failed answered from a representation."""
        if status == 304:
            block, prior = render_fields(
                [(n, v) for n, v in headers if n.lower() not in NOT_MODIFIED_DROPS]
            )
            head = self.head(304, block, age, member, None, None, close, prior=prior)
        else:
            head = self.head(status, b"", None, member, None, 0, close)
        conn.write(head)
        self.stats.bytes_sent += len(head)

    # -- Range answers --------------------------------------------------------------------
    def range_plan(
        self,
        parsed: list[tuple[int, int]],
        size: int,
        header_block: bytes,
        content_type: bytes | None,
        age: float | None,
        member: bytes,
        close: bytes,
        prior: tuple[bytes, bytes],
    ) -> RangePlan:
        """The 206 for satisfiable ranges of a ``size``-byte representation: one range with
        Content-Range, or ``multipart/byteranges`` with a part head per range."""
        if len(parsed) == 1:
            start, end = parsed[0]
            block = (header_block + b"Content-Range: "
                     + ranges.content_range(start, end, size) + b"\r\n")
            head = self.head(206, block, age, member, None, end - start, close, prior=prior)
            return head, [(b"", start, end)], b""
        boundary = ranges.new_boundary()
        parts, closing, total = ranges.multipart_plan(parsed, size, content_type, boundary)
        block = b"".join(
            line + b"\r\n"
            for line in header_block.split(b"\r\n")
            if line and not line.lower().startswith(b"content-type:")
        )
        block += b"Content-Type: multipart/byteranges; boundary=" + boundary + b"\r\n"
        head = self.head(206, block, age, member, None, total, close, prior=prior)
        return head, parts, closing

    def unsatisfiable(self, conn: HttpConnection, size: int, member: bytes,
                      close: bytes) -> None:
        """416 with ``Content-Range: bytes */size``."""
        block = b"Content-Range: " + ranges.unsatisfied_range(size) + b"\r\n"
        head = self.head(416, block, None, member, None, 0, close)
        conn.write(head)
        self.stats.bytes_sent += len(head)

    def ranges_of_body(
        self,
        req: Request,
        conn: HttpConnection,
        parsed: list[tuple[int, int]] | object,
        body: bytes | memoryview,
        header_block: bytes,
        content_type: bytes | None,
        age: float | None,
        member: bytes,
        close: bytes,
        prior: tuple[bytes, bytes] = NO_PRIOR,
    ) -> None:
        """A Range answer from a whole body held in memory (or a memory file)."""
        size = len(body)
        if parsed is ranges.UNSATISFIABLE:
            self.unsatisfiable(conn, size, member, close)
            return
        assert isinstance(parsed, list)
        head, parts, closing = self.range_plan(parsed, size, header_block, content_type, age,
                                               member, close, prior)
        sent = len(head)
        if req.method == "HEAD":
            conn.write(head)
        elif len(parts) == 1 and type(body) is FileBody:
            _, start, end = parts[0]
            conn.write_file(head, body, start, end)
            sent += end - start
        else:
            # Several parts (or a body in bytes): one gather write of head, part heads and
            # slices, not a write (and a segment) per piece.
            pieces: list[bytes | memoryview] = [head]
            view = memoryview(body)
            for part_head, start, end in parts:
                if part_head:
                    pieces.append(part_head)
                    sent += len(part_head)
                pieces.append(view[start:end])
                sent += end - start
            if closing:
                pieces.append(closing)
                sent += len(closing)
            conn.write_parts(pieces)
        self.stats.bytes_sent += sent

    async def ranges_of_fetch(
        self,
        req: Request,
        conn: HttpConnection,
        fetch: Fetch,
        parsed: list[tuple[int, int]] | object,
        size: int,
        header_block: bytes,
        content_type: bytes | None,
        age: float | None,
        member: bytes,
        close: bytes,
        prior: tuple[bytes, bytes],
    ) -> None:
        """The same Range answer from a fetch still arriving: each part as its bytes come."""
        if parsed is ranges.UNSATISFIABLE:
            self.unsatisfiable(conn, size, member, close)
            return
        assert isinstance(parsed, list)
        head, parts, closing = self.range_plan(parsed, size, header_block, content_type, age,
                                               member, close, prior)
        conn.write(head)
        self.stats.bytes_sent += len(head)
        if req.method == "HEAD":
            return
        for part_head, start, end in parts:
            if part_head:
                conn.write(part_head)
            await self.stream(conn, fetch, start, end, False)
            if conn.closed:
                return
        if closing:
            conn.write(closing)

    async def stream(
        self, conn: HttpConnection, fetch: Fetch, start: int, end: int | None, chunked: bool
    ) -> None:
        """Copy [start, end) of a fetch to the client as it arrives, honouring back-pressure.
        A broken fetch cuts the connection: the client must see a truncated response, never
        a complete-looking wrong one."""
        sent = 0
        try:
            sent = await fetch.stream_to(conn, start, end, chunked)
            if chunked and not conn.closed:
                conn.write(b"0\r\n\r\n")
        except FetchFailed:
            conn.abort()
        finally:
            self.stats.bytes_sent += sent

    def failure(
        self, req: Request, conn: HttpConnection, failure: FetchFailed, fwd: bytes
    ) -> None:
        """The 5xx (or 4xx, for a refused target) an upstream failure leaves, with its
        reason in the body and ``detail=upstream-failure``; never stored."""
        body = f"{failure.status} upstream failure: {failure.reason}\n".encode()
        block = b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
        head = self.head(
            failure.status, block, None, fwd + b"; detail=upstream-failure", None, len(body),
            conn.connection_field(req),
        )
        conn.write(head if req.method == "HEAD" else head + body)
        self.stats.bytes_sent += len(head) + len(body)
        self.stats.count(req.method, "error", failure.status)
