"""Hostile-client soak: a real node under malformed, mutated and slow clients, while a normal
client keeps fetching a cached object.

What it sends, all at once and bounded in count and time:

* ``--requests`` (100,000) random and mutated requests: valid GET/HEAD/POST/Range/CMCD
  requests with bit flips, truncation, duplicated or oversized header fields, bad ranges,
  path traversal (``/../``, ``%2e%2e``), odd methods, huge or negative Content-Length, CMCD
  garbage (``CMCD-Request: bl=--1``) and more, over ``--connections`` concurrent connections,
  up to ``--pipeline`` requests per write;
* ``--slowloris`` (2,000) connections that trickle a request head byte by byte;
* ``--slow-bodies`` (10,000) connections that send a head with ``Content-Length: 1000000``
  and then one body byte every few seconds.

Meanwhile a normal client, in a process of its own, fetches a cached 2 KiB object every
~50 ms and records each latency. What it checks (each failing check makes the exit status 1):

* no unexpected 5xx: 500/502/503/504 from the node must be 0 (501 for an unknown transfer
  coding and 505 for an unknown HTTP version are the protocol's answers, counted apart);
* no "Traceback" in the node's stderr/stdout;
* the normal client's p99 latency ≤ ``--p99-target`` (100 ms) and none of its requests failed;
* every slow connection is ended by the node (not by this script's cap);
* the node still answers (a GET and the admin ``/health``) afterwards.

It also reports the node's peak RSS (VmHWM, and the highest VmRSS sampled). RLIMIT_NOFILE is
raised to the hard limit here; the node inherits it. If that limit is too low for all the
connections, it says so and opens what it can.

Usage::

    python -m reelcdn.loadtest.bench.hostile [--requests N] [--slowloris N] [--slow-bodies N]
        [--quick] [--seed S] [--json FILE]

``--quick`` (2,000 requests, 50 + 50 slow connections, short node timeouts, ~10-20 s) is what
``tests/test_hostile_soak.py`` runs. Exit status: 0 all checks held, 1 a check failed,
2 a server failed to start or bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import random
import re
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import log, non_negative_int, positive_int, run_main
from .procs import LOOPBACK, StartupError, http_get
from .servers import BenchOptions, NodeTarget, OriginServer, find_node_command, stop_all

CACHED = "/obj/2k"  # prebuilt by bench/origin.py, cacheable for a day
HOST = f"Host: {LOOPBACK}"
UNEXPECTED_5XX = (500, 502, 503, 504)

# -- the requests ---------------------------------------------------------------------------

BASES: list[list[bytes]] = [
    [b"GET /obj/2k HTTP/1.1", b"Host: 127.0.0.1"],
    [b"HEAD /obj/2k HTTP/1.1", b"Host: 127.0.0.1"],
    [b"GET /obj/2k HTTP/1.1", b"Host: 127.0.0.1", b"Range: bytes=0-99"],
    [b"GET /obj/2k HTTP/1.1", b"Host: 127.0.0.1", b"Range: bytes=-100, 200-300"],
    [b"GET /obj/1m HTTP/1.1", b"Host: 127.0.0.1", b"Range: bytes=1000-1999"],
    [b"GET /obj/2k HTTP/1.1", b"Host: 127.0.0.1", b'If-None-Match: "x", *'],
    [b"GET /obj/2k?CMCD=bl%3D300%2Cbr%3D3200%2Csid%3D%22abc%22 HTTP/1.1", b"Host: 127.0.0.1"],
    [b"GET /obj/2k HTTP/1.1", b"Host: 127.0.0.1", b"CMCD-Request: bl=300,dl=3000,mtp=25400",
     b'CMCD-Session: sid="6e2fb550",st=v', b"CMCD-Object: br=3200,d=4004,ot=v"],
    [b"GET /missing/x.m4s HTTP/1.1", b"Host: 127.0.0.1"],
    [b"POST /upload HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: text/plain"],
    [b"GET /obj/2k HTTP/1.0"],
]

GARBAGE_FIELDS: list[bytes] = [
    b"Range: bytes=5-1", b"Range: bytes=--1", b"Range: bytes=abc", b"Range: bytes=-0",
    b"Range: bytes=99999999999999999999999-", b"Range: " + b"bytes=0-0," * 500 + b"1-1",
    b"Range: items=0-5", b"Range: bytes=0-99, bytes=5-6", b"Range: bytes=0x10-0x20",
    b"CMCD-Request: bl=--1", b"CMCD-Request: bl=abc,dl=", b"CMCD-Request: nor=\"../../../etc\"",
    b"CMCD-Object: br=1e999,d=-5,tb=NaN", b'CMCD-Session: sid="unterminated',
    b"CMCD-Status: bs,rtp=-5",
    b"CMCD-Request: " + b"x" * 5000, b"CMCD-Object: ot=,,,,=,", b'CMCD-Request: nor="%00\\"',
    b"Content-Length: 99999999999999999999999", b"Content-Length: -1", b"Content-Length: 1e9",
    b"Content-Length: 3, 4", b"Content-Length: 1000000", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: chunked\r\nContent-Length: 4",
    b"Expect: 100-continue", b"Expect: teapot", b"Upgrade: websocket\r\nConnection: Upgrade",
    b"Host: evil.example", b"If-Modified-Since: yesterday", b"If-Range: \"x\"",
    b"Accept-Encoding: " + b"gzip, " * 2000, b"X-Long: " + b"a" * 40000, b"Connection: close",
    b"X-Nul: a\x00b", b" folded: value", b"X-Folded: a\r\n b", b"Cache-Control: no-cache",
    b"Pragma: no-cache", b"Authorization: Bearer x", b"Cookie: a=b", b"Via: 1.1 loop",
    b"Cache-Control: max-age=-1, only-if-cached",
]

TARGETS: list[bytes] = [
    b"/../../etc/passwd", b"/obj/../obj/2k", b"/obj/%2e%2e/%2e%2e/etc/passwd",
    b"/obj/..%2f2k", b"/obj/%2E%2E%2F%2E%2E%2Fx", b"//obj//2k", b"/obj/2k/..", b"/obj/./2k",
    b"/%00", b"/obj/2k#frag", b"*", b"http://evil.example/obj/2k", b"http://127.0.0.1/obj/2k",
    b"obj/2k", b"/" + b"a" * 9000, b"/obj/2k?" + b"q=1&" * 100, b"/\xff\xfe", b"/obj/2k%",
    b"/obj/%zz", b"/v/x/master.m3u8", b"/v/../v/y/index.m3u8", b"/obj/2k?CMCD=bl%3D--1",
    b"/obj/2k?CMCD=%22%22%22", b"/obj/2k?cmcd=nor%3D%22..%2F..%2Fx%22",
]

METHODS: list[bytes] = [
    b"BREW", b"PROPFIND", b"get", b"G\x00T", b"CONNECT", b"TRACE", b"DELETE", b"OPTIONS",
    b"PATCH", b"PUT", b"PRI", b"X" * 300, b"", b"GET GET",
]

VERSIONS: list[bytes] = [b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/1.1 x", b""]


def make_request(rng: random.Random) -> bytes:
    """One request: a valid base, then up to three mutations (a few stay unmutated)."""
    lines = list(rng.choice(BASES))
    body = b""
    if lines[0].startswith(b"POST"):
        body = rng.randbytes(rng.choice((0, 5, 100, 2048)))
        lines.append(b"Content-Length: %d" % len(body))
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        kind = rng.randrange(9)
        if kind == 0:  # a garbage field, or the same field many times
            lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(GARBAGE_FIELDS))
        elif kind == 1:
            lines.extend([rng.choice(lines[1:] or [HOST.encode()])] * rng.choice((2, 50, 150)))
        elif kind == 2:  # an odd target
            method, _, rest = lines[0].partition(b" ")
            version = rest.rpartition(b" ")[2]
            lines[0] = method + b" " + rng.choice(TARGETS) + b" " + version
        elif kind == 3:  # an odd method
            _, _, rest = lines[0].partition(b" ")
            lines[0] = rng.choice(METHODS) + b" " + rest
        elif kind == 4:  # an odd version
            head, _, _ = lines[0].rpartition(b" ")
            lines[0] = head + b" " + rng.choice(VERSIONS)
        elif kind == 5:
            lines = [line for line in lines if not line.lower().startswith(b"host:")]
        elif kind == 6:  # a broken chunked body
            lines.append(b"Transfer-Encoding: chunked")
            body = rng.choice((b"5\r\nabc\r\n0\r\n\r\n", b"zz\r\n", b"0\r\nX-T: 1\r\n\r\n",
                               b"ffffffffffffffffff\r\n", b"3\r\nabc\r\n0\r\n\r\n"))
        else:
            pass  # the byte-level mutations below
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body
    for _ in range(rng.choice((0, 0, 0, 1, 2))):
        kind = rng.randrange(3)
        if kind == 0 and data:  # bit flips
            buf = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            data = bytes(buf)
        elif kind == 1 and data:  # truncation
            data = data[: rng.randrange(len(data))]
        else:  # random bytes spliced in
            at = rng.randrange(len(data) + 1)
            data = data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]
    return data


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def split_statuses(data: bytes) -> list[int]:
    """The final statuses in a stream of responses (1xx skipped), framed by Content-Length or
    chunked; a response to HEAD (no body despite its Content-Length) is recognised by the
    next status line following its head directly."""
    statuses = []
    pos = 0
    while pos < len(data):
        match = _STATUS_LINE.match(data, pos)
        if match is None:
            break
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            statuses.append(int(match.group(1)))
            break
        status = int(match.group(1))
        head = data[pos:end].lower()
        pos = end + 4
        if 100 <= status < 200:
            continue
        statuses.append(status)
        if status in (204, 304) or _STATUS_LINE.match(data, pos):
            continue
        length = re.search(rb"\r\ncontent-length: *(\d+)", head)
        if length is not None:
            pos += int(length.group(1))
        elif b"\r\ntransfer-encoding: chunked" in head:
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    return statuses
                try:
                    size = int(data[pos:line_end].split(b";")[0], 16)
                except ValueError:
                    return statuses
                pos = line_end + 2 + size + 2
                if size == 0:
                    break
        else:
            break
    return statuses


# -- the hostile clients ----------------------------------------------------------------------


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    requests_sent: int = 0
    connections: int = 0
    unanswered: int = 0  # connections closed (or timed out) without any response
    open_failures: Counter[str] = field(default_factory=Counter)
    samples_5xx: list[tuple[int, bytes]] = field(default_factory=list)


async def fuzz_worker(
    port: int, rng: random.Random, budget: list[int], pipeline: int, tally: Tally,
    deadline: float, read_timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    while budget[0] > 0 and loop.time() < deadline:
        count = min(budget[0], rng.randint(1, pipeline))
        budget[0] -= count
        requests = [make_request(rng) for _ in range(count)]
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, port), timeout=5.0)
        except (OSError, TimeoutError) as exc:
            tally.open_failures[type(exc).__name__] += 1
            continue
        tally.connections += 1
        tally.requests_sent += count
        data = b""
        try:
            writer.write(b"".join(requests))
            with contextlib.suppress(OSError):
                writer.write_eof()
            async with asyncio.timeout(read_timeout):
                data = await reader.read(-1)
        except (OSError, TimeoutError):
            data = bytes(reader._buffer)  # what arrived before the reset or the timeout
        finally:
            writer.close()
        statuses = split_statuses(data)
        if not statuses:
            tally.unanswered += 1
        for status in statuses:
            tally.statuses[status] += 1
            if status in UNEXPECTED_5XX and len(tally.samples_5xx) < 20:
                tally.samples_5xx.append((status, b"".join(requests)[:2000]))


@dataclass
class SlowResult:
    opened: int = 0
    open_failures: Counter[str] = field(default_factory=Counter)
    closed_by_node: int = 0
    got_408: int = 0
    held_past_cap: int = 0
    lifetimes: list[float] = field(default_factory=list)


class SlowConn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if len(self.received) < 4096:
            self.received += data

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def slow_clients(
    port: int, count: int, first: bytes, trickle: bytes, every: float, cap: float,
    result: SlowResult, opening: asyncio.Semaphore,
) -> None:
    """Open ``count`` connections (``opening`` bounds the connects in flight), send ``first``,
    then one byte of ``trickle`` per connection every ``every`` s until the node closes each
    (or ``cap`` s pass: then this script closes it and counts it as held)."""
    loop = asyncio.get_running_loop()
    conns: list[tuple[SlowConn, float]] = []

    async def open_one() -> None:
        async with opening:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(SlowConn, LOOPBACK, port), timeout=10.0)
            except (OSError, TimeoutError) as exc:
                result.open_failures[getattr(exc, "strerror", None) or type(exc).__name__] += 1
                return
        result.opened += 1
        assert conn.transport is not None
        conn.transport.write(first)
        conns.append((conn, loop.time()))

    await asyncio.gather(*(open_one() for _ in range(count)))
    sent = 0
    while True:
        alive = [(c, t) for c, t in conns if not c.closed.done()]
        now = loop.time()
        if not alive:
            break
        if all(now - t > cap for _, t in alive):
            for conn, _ in alive:
                result.held_past_cap += 1
                assert conn.transport is not None
                conn.transport.abort()
            break
        piece = trickle[sent % len(trickle): sent % len(trickle) + 1]
        for conn, _ in alive:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.write(piece)
        sent += 1
        await asyncio.sleep(every)
    for conn, _ in conns:
        if conn.closed.done():
            result.closed_by_node += 1
        if conn.received.startswith(b"HTTP/1.1 408 "):
            result.got_408 += 1


async def hold(
    port: int, count: int, first: bytes, trickle: bytes, every: float, cap: float,
    opening: asyncio.Semaphore,
) -> SlowResult:
    result = SlowResult()
    if count:
        started = time.monotonic()
        await slow_clients(port, count, first, trickle, every, cap, result, opening)
        result.lifetimes = [time.monotonic() - started]
    return result


# -- the node and the run ---------------------------------------------------------------------


class HostileNode(NodeTarget):
    """The bench node with the limits of this soak appended to its config."""

    def __init__(self, options: BenchOptions, workdir: Path, origin: OriginServer,
                 limits: dict[str, Any]) -> None:
        super().__init__(options, workdir, origin)
        self.limits = limits

    def render_config(self) -> str:
        lines = [f"[node.{self.NAME}.limits]"]
        for key, value in self.limits.items():
            lines.append(f"{key} = {json.dumps(value)}")
        return super().render_config() + "\n".join(lines) + "\n"


def raise_nofile(wanted: int) -> tuple[int, int, bool]:
    """Raise the soft RLIMIT_NOFILE to the hard one; (soft, hard, enough for ``wanted``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard, soft >= wanted


class MemorySampler(threading.Thread):
    """VmRSS every 0.25 s and the final VmHWM of a process, from /proc/PID/status."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss_kib = 0
        self.hwm_kib = 0
        self.stop = threading.Event()

    def read(self) -> None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                kib = int(value.split()[0])
                if name == "VmRSS":
                    self.peak_rss_kib = max(self.peak_rss_kib, kib)
                else:
                    self.hwm_kib = max(self.hwm_kib, kib)

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.read()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reelcdn.loadtest.bench.hostile",
        description="Hostile-client soak of one reelcdn node (see the module docstring).")
    parser.add_argument("--requests", type=non_negative_int, default=100_000)
    parser.add_argument("--slowloris", type=non_negative_int, default=2_000)
    parser.add_argument("--slow-bodies", type=non_negative_int, default=10_000)
    parser.add_argument("--connections", type=positive_int, default=32,
                        help="concurrent connections of mutated requests (default 32)")
    parser.add_argument("--pipeline", type=positive_int, default=8,
                        help="at most this many requests per connection, in one write")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="the mutated requests stop after this long (default 600)")
    parser.add_argument("--p99-target", type=float, default=0.100, metavar="SECONDS")
    parser.add_argument("--interval", type=float, default=0.050, metavar="SECONDS",
                        help="the normal client's pace (default 0.05)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="2,000 requests, 50 + 50 slow connections, short node timeouts")
    parser.add_argument("--node-cmd", metavar="CMD", help="command that runs the reelcdn CLI")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    parser.add_argument("--keep-temp", action="store_true", help="keep configs and logs")
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 2_000)
        args.slowloris = min(args.slowloris, 50)
        args.slow_bodies = min(args.slow_bodies, 50)
        args.max_seconds = min(args.max_seconds, 10.0)
        # Short timeouts, so the slow connections end within the quick run.
        limits: dict[str, Any] = {"header_timeout": "2s", "body_timeout": "3s",
                                  "body_rate_grace": "1s"}
        slow_every, cap = 0.5, 15.0
    else:
        limits = {}  # the node's defaults: header 10 s, body 30 s (1 KiB/s after 5 s)
        slow_every, cap = 5.0, 60.0
    slow_total = args.slowloris + args.slow_bodies
    # Enough connections for every hostile one: the limit under test is the timeouts, not
    # max_connections (which would answer the normal client 503 at 10,000).
    limits["max_connections"] = slow_total + args.connections + 1000
    wanted = slow_total + args.connections + 200
    soft, hard, enough = raise_nofile(wanted)
    fd_note = (f"RLIMIT_NOFILE {soft} (hard {hard}) for {wanted} descriptors: "
               + ("enough" if enough else "TOO LOW, not every slow connection can be opened"))
    log(fd_note)

    command = find_node_command(tuple(args.node_cmd.split()) if args.node_cmd else None)
    if command is None:
        print("hostile: no `reelcdn` command; pass --node-cmd", file=sys.stderr)
        return 2
    options = BenchOptions(connections=args.connections, nginx_bin=None,
                           node_cmd=tuple(command))
    temp = Path(tempfile.mkdtemp(prefix="reelcdn-hostile-"))
    started: list[Any] = []
    try:
        origin = OriginServer(temp)
        started.append(origin)
        origin.start()
        node = HostileNode(options, temp, origin, limits)
        started.append(node)
        node.start()
        assert node.process is not None and node.process.proc is not None
        pid = node.process.proc.pid
        node_limit = next((line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                           if line.startswith("Max open files")), "")
        if http_get(node.port, CACHED).status != 200:  # cache it
            raise StartupError("node", f"GET {CACHED} did not answer 200")
        report = soak(args, node, pid, slow_every, cap)
        report["fd_limit"] = fd_note
        report["node_fd_limit"] = " ".join(node_limit.split()[3:5])
        report["tracebacks"] = sum(
            path.read_text(errors="replace").count("Traceback")
            for path in (node.process.stderr_path, node.process.stdout_path) if path.exists())
        report["traceback_excerpt"] = first_traceback(node.process.stderr_path)
        report["after_get"] = safe_status(lambda: http_get(node.port, CACHED).status)
        report["after_health"] = safe_status(lambda: http_get(node.admin_port, "/health").status)
    except StartupError as exc:
        print(f"hostile: {exc}\n{exc.details}", file=sys.stderr)
        return 2
    finally:
        stop_all(started)
        if not args.keep_temp:
            for path in sorted(temp.rglob("*"), reverse=True):
                with contextlib.suppress(OSError):
                    path.unlink() if path.is_file() else path.rmdir()
            with contextlib.suppress(OSError):
                temp.rmdir()
        else:
            log(f"logs and config kept in {temp}")
    failures = judge(report, args)
    print_report(report, failures, args)
    if args.json is not None:
        args.json.write_text(json.dumps({**report, "failures": failures}, indent=2) + "\n")
    return 1 if failures else 0


def safe_status(get: Any) -> int:
    try:
        return int(get())
    except (OSError, http.client.HTTPException):
        return 0


def first_traceback(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    at = text.find("Traceback")
    return text[at:at + 2000] if at >= 0 else ""


def soak(args: argparse.Namespace, node: HostileNode, pid: int, slow_every: float,
         cap: float) -> dict[str, Any]:
    sampler = MemorySampler(pid)
    sampler.start()
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    probe_proc = ctx.Process(target=probe_until, args=(node.port, args.interval, send))
    probe_proc.start()
    send.close()
    started = time.monotonic()
    try:
        tally, loris, bodies = asyncio.run(attack(args, node.port, slow_every, cap))
    finally:
        elapsed = time.monotonic() - started
        os.kill(probe_proc.pid, 15)  # SIGTERM: the probe sends what it measured and exits
        latencies, probe_failures = receive.recv() if receive.poll(30) else ([], ["no data"])
        probe_proc.join(10)
        sampler.stop.set()
        sampler.join(2)
        sampler.read()
    latencies_ms = [x * 1000 for x in latencies]
    classes = Counter(f"{s // 100}xx" for s in tally.statuses.elements())
    return {
        "requests": args.requests,
        "requests_sent": tally.requests_sent,
        "fuzz_connections": tally.connections,
        "fuzz_open_failures": dict(tally.open_failures),
        "responses": sum(tally.statuses.values()),
        "unanswered_connections": tally.unanswered,
        "by_class": dict(sorted(classes.items())),
        "by_status": {str(k): v for k, v in sorted(tally.statuses.items())},
        "unexpected_5xx": sum(tally.statuses[s] for s in UNEXPECTED_5XX),
        "protocol_5xx": tally.statuses[501] + tally.statuses[505],
        "samples_5xx": [(s, r.decode("latin-1")) for s, r in tally.samples_5xx[:5]],
        "slowloris": slow_summary(args.slowloris, loris),
        "slow_bodies": slow_summary(args.slow_bodies, bodies),
        "probe_requests": len(latencies_ms),
        "probe_failures": len(probe_failures),
        "probe_failure_samples": probe_failures[:5],
        "p50_ms": round(statistics.median(latencies_ms), 2) if latencies_ms else None,
        "p99_ms": round(percentile(latencies_ms, 0.99), 2) if latencies_ms else None,
        "max_ms": round(max(latencies_ms), 2) if latencies_ms else None,
        "peak_rss_mib": round(sampler.peak_rss_kib / 1024, 1),
        "vmhwm_mib": round(sampler.hwm_kib / 1024, 1),
        "seconds": round(elapsed, 1),
    }


def probe_until(port: int, interval: float, out: Any) -> None:
    """The probe process: runs until SIGTERM, then reports."""
    import signal

    stop = {"at": time.time() + 86_400}

    def on_term(_signum: int, _frame: Any) -> None:
        stop["at"] = 0.0

    signal.signal(signal.SIGTERM, on_term)
    latencies: list[float] = []
    failures: list[str] = []
    conn: http.client.HTTPConnection | None = None
    next_at = time.monotonic()
    while time.time() < stop["at"]:
        start = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5.0)
            conn.request("GET", CACHED)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or len(body) != 2048:
                failures.append(f"status {resp.status}, {len(body)} bytes")
            latencies.append(time.monotonic() - start)
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            if stop["at"] == 0.0:
                break  # interrupted by the stop signal, not a failure of the node
            failures.append(f"{type(exc).__name__}: {exc}")
            if conn is not None:
                conn.close()
            conn = None
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    out.send((latencies, failures))
    out.close()


def slow_summary(count: int, result: SlowResult) -> dict[str, Any]:
    return {
        "asked": count,
        "opened": result.opened,
        "open_failures": dict(result.open_failures),
        "closed_by_node": result.closed_by_node,
        "got_408": result.got_408,
        "held_past_cap": result.held_past_cap,
        "all_gone_after_s": round(result.lifetimes[0], 1) if result.lifetimes else None,
    }


async def attack(args: argparse.Namespace, port: int, slow_every: float,
                 cap: float) -> tuple[Tally, SlowResult, SlowResult]:
    loop = asyncio.get_running_loop()
    rng = random.Random(args.seed)
    tally = Tally()
    budget = [args.requests]
    deadline = loop.time() + args.max_seconds
    opening = asyncio.Semaphore(64)
    loris_head = (b"GET /obj/2k HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 20) for i in range(40)) + b"\r\n")
    body_head = (b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: 1000000\r\n\r\n")
    workers = [
        fuzz_worker(port, random.Random(rng.random()), budget, args.pipeline, tally, deadline,
                    read_timeout=5.0)
        for _ in range(args.connections)
    ]
    results = await asyncio.gather(
        asyncio.gather(*workers),
        hold(port, args.slowloris, loris_head[:1], loris_head[1:], 1.0 if not args.quick
             else slow_every, cap, opening),
        hold(port, args.slow_bodies, body_head + b"x", b"x" * 64, slow_every, cap, opening),
    )
    return tally, results[1], results[2]


def judge(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    failures = []
    if report["unexpected_5xx"]:
        failures.append(f"{report['unexpected_5xx']} unexpected 5xx responses")
    if report["tracebacks"]:
        failures.append(f"{report['tracebacks']} tracebacks in the node's output")
    p99 = report["p99_ms"]
    if p99 is None or p99 > args.p99_target * 1000:
        failures.append(f"normal client p99 {p99} ms > {args.p99_target * 1000:.0f} ms")
    if report["probe_failures"]:
        failures.append(f"{report['probe_failures']} normal-client requests failed")
    for name in ("slowloris", "slow_bodies"):
        slow = report[name]
        if slow["held_past_cap"]:
            failures.append(f"{slow['held_past_cap']} {name} connections were never closed")
        if slow["opened"] < slow["asked"]:
            failures.append(f"only {slow['opened']} of {slow['asked']} {name} connections opened")
    if report["after_get"] != 200 or report["after_health"] != 200:
        failures.append("the node does not answer after the soak")
    return failures


def print_report(report: dict[str, Any], failures: list[str], args: argparse.Namespace) -> None:
    out = sys.stdout
    print("hostile-client soak of one reelcdn node", file=out)
    print(f"  {report['fd_limit']}; node: max open files {report['node_fd_limit']}", file=out)
    print(f"  mutated requests: {report['requests_sent']} sent on {report['fuzz_connections']} "
          f"connections, {report['responses']} responses, "
          f"{report['unanswered_connections']} connections without one", file=out)
    print(f"  by class: {report['by_class']}", file=out)
    print(f"  by status: {report['by_status']}", file=out)
    print(f"  5xx: unexpected (500/502/503/504) {report['unexpected_5xx']}, "
          f"protocol refusals (501/505) {report['protocol_5xx']}", file=out)
    for status, request in report["samples_5xx"]:
        print(f"    {status} for {request[:300]!r}", file=out)
    for name in ("slowloris", "slow_bodies"):
        s = report[name]
        print(f"  {name}: {s['opened']}/{s['asked']} opened, {s['closed_by_node']} closed by the "
              f"node ({s['got_408']} with 408), {s['held_past_cap']} held past the cap, "
              f"all gone after {s['all_gone_after_s']} s"
              + (f", open failures {s['open_failures']}" if s["open_failures"] else ""),
              file=out)
    print(f"  normal client: {report['probe_requests']} requests, p50 {report['p50_ms']} ms, "
          f"p99 {report['p99_ms']} ms, max {report['max_ms']} ms, "
          f"{report['probe_failures']} failed {report['probe_failure_samples']}", file=out)
    print(f"  node memory: peak VmRSS sampled {report['peak_rss_mib']} MiB, "
          f"VmHWM {report['vmhwm_mib']} MiB", file=out)
    print(f"  tracebacks in the node's output: {report['tracebacks']}", file=out)
    if report["traceback_excerpt"]:
        print("    " + report["traceback_excerpt"][:1500].replace("\n", "\n    "), file=out)
    print(f"  after: GET {CACHED} -> {report['after_get']}, /health -> "
          f"{report['after_health']}", file=out)
    print(f"  took {report['seconds']} s", file=out)
    print("RESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, "hostile", argv)


if __name__ == "__main__":
    sys.exit(main())
