"""The crowd: N keep-alive connections that each send one GET at the same instant.

Why a process and a raw ``asyncio.Protocol`` of its own: the benchmark measures how a server
serves a crowd, so the client must cost as little as possible and must not share an event loop
(or a GIL) with anything else. aiohttp's client costs a task, a response object and a stream
reader per request, which for 500 sockets is measurable; here a connection is one small
Protocol that counts bytes, keeps the body chunks it was given (no copies), and takes two
timestamps. Bodies are verified (status, size, sha256 of the path-derived content) only after
the crowd is done, so hashing 500 bodies never delays the reading of another socket.

Protocol of a run (all on 127.0.0.1):

1. open ``--crowd`` connections (bounded concurrency, so no SYN is dropped), wait ``--settle``
   seconds so the server has accepted them all;
2. per phase (``--phases``, default 2): write the request on every connection in one tight
   loop ("write all, then read"), each request timed from its own write to its last body byte
   (and to its first response byte); wait for all, bounded by ``--timeout``;
3. reconnect any connection the server closed, settle, next phase.

The benchmark runs phase 1 on a cold path (the coalescing test) and phase 2 on the same path,
which is then a cache HIT: the floor (client, loopback and the server's HIT path).
Output: one JSON object on stdout (see ``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from .coldobj import cold_digest
from .common import byte_size, positive_int

LOOPBACK = "127.0.0.1"
MAX_HEAD = 64 * 1024
CONNECT_CONCURRENCY = 64


@dataclass(slots=True)
class Outcome:
    """What one request got; ``error`` is None for a complete response."""

    status: int = 0
    sent: float = 0.0
    first_byte: float | None = None
    done: float | None = None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    status_value: str | None = None
    error: str | None = None


class CrowdConnection(asyncio.Protocol):
    """One client connection: sends a request when told, parses one response.

    Response framing: ``Content-Length`` (the fast path: body chunks are kept as received) or
    ``Transfer-Encoding: chunked`` (decoded into chunks); anything else is an error, since a
    cache serving a known-length object has no reason to use neither.
    """

    def __init__(self, status_header: bytes, on_done: Callable[[CrowdConnection], None]) -> None:
        self.status_header = status_header
        self.on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.will_close = False
        self.outcome: Outcome | None = None
        self._head = b""
        self._in_body = False
        self._remaining = 0  # Content-Length mode: body bytes still expected
        self._chunked = False
        self._cbuf = b""  # chunked mode: undecoded bytes
        self._csize = -1  # chunked mode: bytes left in the current chunk, -1 = want size line

    # -- driving --------------------------------------------------------------------------
    def send(self, request: bytes) -> None:
        outcome = self.outcome = Outcome()
        self._head = b""
        self._in_body = False
        self._chunked = False
        self._cbuf = b""
        self._csize = -1
        if self.transport is None or self.closed:
            outcome.error = "connection closed before sending"
            self.on_done(self)
            return
        outcome.sent = time.perf_counter()
        self.transport.write(request)

    def abort(self, reason: str) -> None:
        """Give up on the in-flight request (the phase timed out)."""
        if self.outcome is not None and self.outcome.done is None and self.outcome.error is None:
            self.outcome.error = reason
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        outcome = self.outcome
        if outcome is not None and outcome.done is None and outcome.error is None:
            outcome.error = "connection closed mid-response"
            self.on_done(self)

    def data_received(self, data: bytes) -> None:
        outcome = self.outcome
        if outcome is None or outcome.done is not None or outcome.error is not None:
            if data.strip():
                self._fail("unsolicited bytes after the response")
            return
        if outcome.first_byte is None:
            outcome.first_byte = time.perf_counter()
        if self._in_body:
            self._body(data)
            return
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD:
                self._fail("response head too large")
            else:
                self._head = head
            return
        self._head = b""
        if not self._parse_head(head[:end]):
            return
        self._in_body = True
        rest = head[end + 4 :]
        if rest or (not self._chunked and self._remaining == 0):
            self._body(rest)

    # -- parsing ----------------------------------------------------------------------------
    def _parse_head(self, head: bytes) -> bool:
        outcome = self.outcome
        assert outcome is not None
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._fail(f"bad status line {lines[0][:80]!r}")
            return False
        outcome.status = int(parts[1])
        length: int | None = None
        values: list[str] = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    self._fail(f"bad Content-Length {value[:40]!r}")
                    return False
                length = int(value)
            elif name == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            elif name == b"connection":
                self.will_close = b"close" in value.lower()
            if name == self.status_header:
                values.append(value.decode("latin-1"))
        if values:
            outcome.status_value = ", ".join(values)
        if self._chunked:
            return True
        if length is None:
            self._fail("response without Content-Length or chunked encoding")
            return False
        self._remaining = length
        return True

    def _body(self, data: bytes) -> None:
        if self._chunked:
            self._dechunk(data)
            return
        outcome = self.outcome
        assert outcome is not None
        if data:
            if len(data) > self._remaining:
                self._fail("more body bytes than Content-Length")
                return
            outcome.chunks.append(data)
            outcome.size += len(data)
            self._remaining -= len(data)
        if self._remaining == 0:
            self._complete()

    def _dechunk(self, data: bytes) -> None:
        outcome = self.outcome
        assert outcome is not None
        buf = self._cbuf + data
        pos = 0
        while True:
            if self._csize > 0:
                take = min(self._csize, len(buf) - pos)
                if take == 0:
                    break
                outcome.chunks.append(buf[pos : pos + take])
                outcome.size += take
                pos += take
                self._csize -= take
                if self._csize == 0:
                    self._csize = -2  # want the CRLF after the chunk data
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            line = buf[pos:eol]
            pos = eol + 2
            if self._csize == -2:
                if line:
                    self._fail("bad chunk terminator")
                    return
                self._csize = -1
            elif self._csize == -1:
                try:
                    self._csize = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self._fail("bad chunk size line")
                    return
                if self._csize == 0:
                    self._csize = -3  # want trailer lines up to an empty one
            elif not line:  # -3: end of trailers
                self._cbuf = b""
                self._complete()
                return
        self._cbuf = buf[pos:]

    def _complete(self) -> None:
        assert self.outcome is not None
        self.outcome.done = time.perf_counter()
        if self.will_close and self.transport is not None:
            self.transport.close()
        self.on_done(self)

    def _fail(self, reason: str) -> None:
        outcome = self.outcome
        if outcome is not None and outcome.done is None and outcome.error is None:
            outcome.error = reason
            self.on_done(self)
        if self.transport is not None:
            self.transport.abort()


class Crowd:
    """The connections and the bookkeeping of one phase."""

    def __init__(self, port: int, size: int, count: int, status_header: str) -> None:
        self.port = port
        self.size = size
        self.count = count
        self.status_header = status_header.lower().encode("latin-1")
        self.connections: list[CrowdConnection] = []
        self.connect_errors: Counter[str] = Counter()
        self._pending = 0
        self._all_done: asyncio.Future[None] | None = None

    def _on_done(self, _conn: CrowdConnection) -> None:
        self._pending -= 1
        if self._pending <= 0 and self._all_done is not None and not self._all_done.done():
            self._all_done.set_result(None)

    async def _open_one(self, semaphore: asyncio.Semaphore) -> CrowdConnection | None:
        loop = asyncio.get_running_loop()
        async with semaphore:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: CrowdConnection(self.status_header, self._on_done),
                        LOOPBACK,
                        self.port,
                    ),
                    timeout=10.0,
                )
            except (OSError, TimeoutError) as exc:
                self.connect_errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                return None
        return protocol

    async def connect(self) -> None:
        """Open connections until there are ``count`` usable ones (or connecting fails)."""
        self.connections = [c for c in self.connections if not c.closed and not c.will_close]
        missing = self.count - len(self.connections)
        if missing <= 0:
            return
        semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
        opened = await asyncio.gather(*(self._open_one(semaphore) for _ in range(missing)))
        self.connections += [c for c in opened if c is not None]

    async def phase(self, path: str, timeout: float) -> dict[str, object]:
        """Fire one request per connection at once; return the phase's measurements."""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{self.port}\r\n"
            "User-Agent: reelcdn-bench-crowd\r\nAccept: */*\r\n\r\n"
        ).encode("latin-1")
        conns = list(self.connections)
        self._pending = len(conns)
        self._all_done = asyncio.get_running_loop().create_future()
        first = time.perf_counter()
        for conn in conns:
            conn.send(request)
        last = time.perf_counter()
        if conns:
            try:
                await asyncio.wait_for(asyncio.shield(self._all_done), timeout)
            except TimeoutError:
                for conn in conns:
                    conn.abort(f"no complete response within {timeout:g} s")
        return self._summarise(conns, path, last - first)

    def _summarise(
        self, conns: list[CrowdConnection], path: str, send_span: float
    ) -> dict[str, object]:
        """Verify every body (after the fact: hashing never delays reading) and summarise."""
        expected = cold_digest(path, self.size)
        latencies: list[float] = []
        ttfb: list[float] = []
        errors: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        cache_status: Counter[str] = Counter()
        for conn in conns:
            outcome = conn.outcome
            if outcome is None:
                errors["never sent"] += 1
                continue
            if outcome.status:
                statuses[str(outcome.status)] += 1
            cache_status[outcome.status_value or "(none)"] += 1
            error = outcome.error
            if error is None and outcome.status != 200:
                error = f"status {outcome.status}"
            if error is None and outcome.size != self.size:
                error = f"body of {outcome.size} bytes, expected {self.size}"
            if error is None:
                digest = hashlib.sha256()
                for chunk in outcome.chunks:
                    digest.update(chunk)
                if digest.hexdigest() != expected:
                    error = "body sha256 differs from the origin's"
            outcome.chunks = []  # free the memory before the next phase
            if error is not None:
                errors[error] += 1
                continue
            assert outcome.done is not None and outcome.first_byte is not None
            latencies.append(outcome.done - outcome.sent)
            ttfb.append(outcome.first_byte - outcome.sent)
        missing = self.count - len(conns)
        if missing > 0:
            errors["no connection (connect failed)"] += missing
        return {
            "path": path,
            "requests": self.count,
            "ok": len(latencies),
            "latencies": latencies,
            "ttfb": ttfb,
            "errors": dict(errors),
            "statuses": dict(statuses),
            "cache_status": dict(cache_status),
            "send_span": send_span,
        }

    def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()


async def run_crowd(
    port: int,
    paths: list[str],
    count: int,
    size: int,
    status_header: str,
    settle: float,
    timeout: float,
) -> dict[str, object]:
    """Connect, then run one phase per path on the same (kept-alive) connections."""
    crowd = Crowd(port, size, count, status_header)
    phases = []
    try:
        for path in paths:
            await crowd.connect()
            await asyncio.sleep(settle)
            phases.append(await crowd.phase(path, timeout))
    finally:
        crowd.close()
        await asyncio.sleep(0)  # let the transports close
    return {"crowd": count, "connect_errors": dict(crowd.connect_errors), "phases": phases}


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed: the cheaper the client, the more of the number is the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    """Print ``{"crowd": N, "connect_errors": {...}, "phases": [{...}, ...]}`` on stdout.

    Each phase: ``latencies`` and ``ttfb`` (seconds, complete and verified responses only),
    ``ok``, ``errors`` (reason -> count), ``statuses``, ``cache_status`` (value of
    ``--status-header`` -> count) and ``send_span`` (seconds from the first to the last write).
    """
    parser = argparse.ArgumentParser(
        prog="python -m reelcdn.loadtest.bench.crowdclient",
        description="A crowd of concurrent GETs on pre-opened keep-alive connections.",
    )
    parser.add_argument("--port", type=int, required=True, help=f"server port on {LOOPBACK}")
    parser.add_argument(
        "--path",
        action="append",
        required=True,
        help="path of a phase (repeat for more phases on the same connections)",
    )
    parser.add_argument("--crowd", type=positive_int, default=500, help="connections (500)")
    parser.add_argument(
        "--size", type=byte_size, required=True, help="expected body size (the origin's)"
    )
    parser.add_argument(
        "--status-header", default="Cache-Status", help="response header to tally per value"
    )
    parser.add_argument(
        "--settle", type=float, default=0.3, help="seconds between connecting and firing"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per phase")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        result = runner.run(
            run_crowd(
                args.port,
                args.path,
                args.crowd,
                args.size,
                args.status_header,
                args.settle,
                args.timeout,
            )
        )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
