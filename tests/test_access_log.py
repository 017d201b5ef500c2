"""Access logs (edge/ops/accesslog.py): one line per response from a real node on 127.0.0.1.

Hits, misses, passes, errors and responses cut by the client; the JSON fields and their types;
nginx's combined format; token parameters stripped; rotation by SIGUSR1 under load (a node
process with two workers) losing no line; a full disk (/dev/full) dropping and counting lines
while requests still succeed; sampling. The suite runs these on both twins of the compiled
extensions (``REELCDN_NO_EXTENSIONS=1``, scripts/test.sh).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import TestOrigin, url
from nodeproc import free_port, wait_health

from reelcdn.edge.auth import native
from reelcdn.edge.ops.accesslog import cmcd_session, head_facts, strip_target
from reelcdn.edge.ops.server import NodeServer

MiB = 1024 * 1024

# nginx's combined format, as log parsers read it.
COMBINED = re.compile(
    r'^(?P<addr>\S+) - (?P<user>\S+) \[(?P<time>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" '
    r'"(?P<agent>[^"]*)"$'
)


async def read_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    """The log's lines once it has at least ``count`` (the writer works in batches)."""
    end = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > end:
            return lines
        await asyncio.sleep(0.02)


async def records(path: Path, count: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in await read_lines(path, count)]


def test_target_stripping_cmcd_and_head_facts() -> None:
    names = frozenset({"token", "hdnts", "session"})
    assert strip_target("/a/b.ts?token=x&q=1&Session=s", names) == "/a/b.ts?q=1"
    assert strip_target("/a/b.ts?token=x", names) == "/a/b.ts"
    assert strip_target("/a/b.ts?%74oken=x&q", names) == "/a/b.ts?q"
    assert strip_target("/a/b.ts", names) == "/a/b.ts"
    assert cmcd_session("CMCD=bl%3D21300%2Csid%3D%226e2f-4a%22&x=1", None) == "6e2f-4a"
    assert cmcd_session("", b'sid="abc",cid="v"') == "abc"
    assert cmcd_session("x=1", None) == ""
    head = (b"HTTP/1.1 200 OK\r\nCache-Status: shield-1; fwd=uri-miss; stored, "
            b"edge-t; fwd=uri-miss\r\nContent-Length: 3\r\n\r\nabc")
    assert head_facts(head, b"edge-t") == (200, len(head) - 3, "fwd=uri-miss", "shield-1")
    assert head_facts(b"HTTP/1.1 404 Not Found\r\n\r\n", b"edge-t") == (404, 26, "", "")


async def test_hit_miss_pass_error_lines_are_complete_and_typed(
    origin: TestOrigin, start_node: Callable[..., Any], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    origin.set("/v/seg.m4s", b"x" * 2048, headers={"Cache-Control": "max-age=60"})
    origin.set("/v/nostore.m4s", b"n" * 10, headers={"Cache-Control": "no-store"})
    node: NodeServer = await start_node(origin.url, access_log=str(log))
    cmcd = 'CMCD=bl%3D2000%2Csid%3D%22s-1%22'
    async with aiohttp.ClientSession() as session:
        for path in ("/v/seg.m4s", f"/v/seg.m4s?{cmcd}", "/v/nostore.m4s", "/v/missing"):
            async with session.get(url(node, path)) as response:
                await response.read()
        async with session.post(url(node, "/v/seg.m4s"), data=b"body") as response:
            await response.read()
    # A malformed request: a 400 from the protocol.
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"GET /bad\x01path HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.read(4096)).startswith(b"HTTP/1.1 400")
    writer.close()
    lines = await records(log, 6)
    assert len(lines) == 6, lines
    for line in lines:
        assert set(line) >= {"time", "client", "method", "target", "status", "bytes", "ttfb",
                             "duration", "cache", "upstream", "sid", "node", "aborted"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["client"] == "127.0.0.1" and line["node"] == "edge-t"
        assert isinstance(line["status"], int) and isinstance(line["bytes"], int)
        assert isinstance(line["duration"], float) and line["aborted"] is False
    miss, hit, nostore, missing, post, bad = lines
    assert (miss["target"], miss["status"]) == ("/v/seg.m4s", 200)
    assert miss["cache"] == "fwd=uri-miss; fwd-status=200; stored"
    assert miss["upstream"] == origin.url  # a URL upstream: its name
    assert miss["bytes"] > 2048 and miss["body_bytes"] == 2048
    assert isinstance(miss["ttfb"], float) and miss["ttfb"] <= miss["duration"] + 1e-3
    assert hit["cache"].startswith("hit;") and hit["upstream"] == "" and hit["sid"] == "s-1"
    assert hit["target"] == "/v/seg.m4s?CMCD=bl%3D2000,sid%3D%22s-1%22"  # as aiohttp sent it
    assert (nostore["status"], nostore["cache"]) == (200, "fwd=uri-miss; fwd-status=200")
    assert (missing["status"], missing["cache"]) == (404, "fwd=uri-miss; fwd-status=404")
    assert (post["method"], post["cache"]) == ("POST", "fwd=method; fwd-status=200")
    assert (bad["status"], bad["method"], bad["target"], bad["cache"]) == (400, "-", "-", "")
    assert bad["bytes"] == bad["body_bytes"] > 0 and bad["ttfb"] is None


async def test_combined_format_parses_as_nginx_does(
    origin: TestOrigin, start_node: Callable[..., Any], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    origin.set("/v/a.ts", b"a" * 100, headers={"Cache-Control": "max-age=60"})
    node: NodeServer = await start_node(origin.url, access_log=str(log),
                                        access_log_format="combined")
    headers = {"User-Agent": 'hls "player" 1.0', "Referer": "https://site.example/p"}
    async with aiohttp.ClientSession() as session, session.get(
            url(node, "/v/a.ts"), headers=headers) as response:
        assert await response.read() == b"a" * 100
    (line,) = await read_lines(log, 1)
    match = COMBINED.match(line)
    assert match, line
    assert match["addr"] == "127.0.0.1" and match["request"] == "GET /v/a.ts HTTP/1.1"
    assert (match["status"], match["bytes"]) == ("200", "100")
    assert match["referer"] == "https://site.example/p"
    assert match["agent"] == "hls \\x22player\\x22 1.0"


async def test_token_parameters_never_reach_the_log(tmp_path: Path,
                                                    origin: TestOrigin,
                                                    start_node: Callable[..., Any]) -> None:
    log = tmp_path / "access.log"
    origin.set("/v/abc/seg.m4s", b"s" * 64, headers={"Cache-Control": "max-age=60"})
    secret = "k1-secret-0123456789abcdef"
    node: NodeServer = await start_node(
        origin.url, access_log=str(log), carried_query_params=["session"],
        tokens={"format": "native", "keys": {"k1": secret}},
    )
    token = native.sign(secret.encode(), "k1", acl="/v/abc/", expires=int(time.time()) + 600)
    async with aiohttp.ClientSession() as session:
        for query in (f"token={token}&q=1", f"q=2&session=s3cr3t&token={token}", "token=bad"):
            async with session.get(url(node, f"/v/abc/seg.m4s?{query}")) as response:
                await response.read()
    lines = await records(log, 3)
    assert [line["target"] for line in lines] == [
        "/v/abc/seg.m4s?q=1", "/v/abc/seg.m4s?q=2", "/v/abc/seg.m4s"]
    assert [line["status"] for line in lines] == [200, 200, 403]
    text = log.read_text()
    assert token not in text and "s3cr3t" not in text and "bad" not in text


async def test_a_response_cut_by_the_client_is_logged_as_aborted(
    origin: TestOrigin, start_node: Callable[..., Any], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    body = os.urandom(32 * MiB)
    origin.set("/v/big.mp4", body, headers={"Cache-Control": "max-age=60"})
    node: NodeServer = await start_node(origin.url, access_log=str(log),
                                        max_object_size="64MiB")
    async with aiohttp.ClientSession() as session, session.get(  # fill: a complete MISS
            url(node, "/v/big.mp4")) as response:
        assert len(await response.read()) == len(body)
    # A HIT read in part: a small receive buffer, 64 KiB read, then the socket reset.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", node.port))
    await loop.sock_sendall(sock, b"GET /v/big.mp4 HTTP/1.1\r\nHost: x\r\n\r\n")
    got = 0
    while got < 64 * 1024:
        got += len(await loop.sock_recv(sock, 16384))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset
    lines = await records(log, 2)
    assert len(lines) == 2, lines
    full, cut = lines
    assert full["aborted"] is False and full["body_bytes"] == len(body)
    assert cut["aborted"] is True and cut["status"] == 200
    assert cut["cache"].startswith("hit")
    assert 0 < cut["body_bytes"] < len(body)


async def test_a_full_disk_drops_and_counts_lines_and_requests_still_succeed(
    origin: TestOrigin, start_node: Callable[..., Any]
) -> None:
    origin.set("/v/a.ts", b"a" * 100, headers={"Cache-Control": "max-age=60"})
    node: NodeServer = await start_node(origin.url, access_log="/dev/full")
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(url(node, "/v/a.ts")) as response:
                assert response.status == 200 and await response.read() == b"a" * 100
        end = time.monotonic() + 5.0
        text = ""
        while time.monotonic() < end:
            async with session.get(
                    f"http://127.0.0.1:{node.admin_port}/metrics") as response:
                text = await response.text()
            if 'reelcdn_access_log_dropped_total{node="edge-t",reason="write"} 20.0' in text:
                break
            await asyncio.sleep(0.05)
    assert 'reelcdn_access_log_dropped_total{node="edge-t",reason="write"} 20.0' in text, [
        line for line in text.splitlines() if "access_log" in line]


async def test_a_full_queue_drops_and_counts_lines(
    origin: TestOrigin, start_node: Callable[..., Any], tmp_path: Path
) -> None:
    origin.set("/v/a.ts", b"a", headers={"Cache-Control": "max-age=60"})
    node: NodeServer = await start_node(origin.url, access_log=str(tmp_path / "a.log"),
                                        access_log_buffer=16)
    assert node.access_log is not None
    node.access_log.capacity = 0  # as if the writer were stuck behind a slow disk
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.get(url(node, "/v/a.ts")) as response:
                assert response.status == 200
    assert node.node.stats.access_log_dropped == {"queue": 5}


async def test_sampling_logs_about_the_share_asked(
    origin: TestOrigin, start_node: Callable[..., Any], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    origin.set("/v/a.ts", b"a", headers={"Cache-Control": "max-age=60"})
    node: NodeServer = await start_node(origin.url, access_log=str(log),
                                        access_log_sample=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    request = b"GET /v/a.ts HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(10):  # pipelined, 40 at a time
        writer.write(request * 40)
        got = b""
        while got.count(b"HTTP/1.1 200") < 40:
            got += await reader.read(65536)
    writer.close()
    await asyncio.sleep(0.3)
    lines = await read_lines(log, 400, timeout=0.5)
    assert 150 <= len(lines) <= 250, len(lines)  # 400 × 0.5, ±5 standard deviations


async def test_reload_turns_the_log_on_and_off(
    origin: TestOrigin, start_node: Callable[..., Any], tmp_path: Path
) -> None:
    from conftest import make_config

    log = tmp_path / "access.log"
    origin.set("/v/a.ts", b"a", headers={"Cache-Control": "max-age=60"})
    node: NodeServer = await start_node(origin.url)
    assert node.access_log is None
    await node.reload(make_config(origin.url, access_log=str(log)))
    async with aiohttp.ClientSession() as session, session.get(
            url(node, "/v/a.ts")) as response:
        assert response.status == 200
    assert len(await records(log, 1)) == 1
    await node.reload(make_config(origin.url))
    assert node.access_log is None


# -- a node process: rotation by SIGUSR1 under load ------------------------------------------


@pytest.mark.slow
async def test_rotation_by_sigusr1_under_load_loses_no_line(
    origin: TestOrigin, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    port, admin = free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(f"""
[node.edge-r]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
upstream = "{origin.url}"
workers = 2
access_log = "{log}"
""")
    origin.set("/v/a.ts", b"a" * 2048, headers={"Cache-Control": "max-age=60"})
    stderr = open(tmp_path / "node.stderr", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "reelcdn.cli", "node", "--config", str(config),
         "--name", "edge-r"], stdout=subprocess.DEVNULL, stderr=stderr)
    answered = 0
    try:
        try:
            await wait_health(admin, 30.0)  # the master: every worker answers
        except AssertionError:
            raise AssertionError((tmp_path / "node.stderr").read_text()) from None
        async with aiohttp.ClientSession() as session:

            async def load(seconds: float) -> None:
                nonlocal answered
                stop = time.monotonic() + seconds
                while time.monotonic() < stop:
                    async with session.get(f"http://127.0.0.1:{port}/v/a.ts") as response:
                        assert response.status == 200
                        await response.read()
                        answered += 1

            clients = [asyncio.ensure_future(load(2.0)) for _ in range(4)]
            await asyncio.sleep(0.7)
            os.rename(log, tmp_path / "access.log.1")  # logrotate's rename ...
            process.send_signal(signal.SIGUSR1)  # ... then its postrotate
            await asyncio.gather(*clients)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr.close()
    assert process.returncode == 0, (tmp_path / "node.stderr").read_text()
    rotated = (tmp_path / "access.log.1").read_text().splitlines()
    current = log.read_text().splitlines() if log.exists() else []
    assert rotated and current, (len(rotated), len(current))
    assert answered > 50
    assert len(rotated) + len(current) == answered
    for line in rotated + current:
        assert json.loads(line)["status"] == 200
