"""Large cached bodies in memory files, served with sendfile(2) (edge/cache/bodyfile.py).

What must hold: the bytes a client gets are exactly the origin's, whichever path wrote them
(sendfile, a partial sendfile finished by the transport, a busy transport, HEAD, multipart);
a memory file is immutable once filled; its descriptor goes with the object; running out of
descriptors degrades to ``bytes`` instead of failing a fill.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource

import pytest
from rawhttp import get, read_response

from reelcdn.edge.cache.bodyfile import MEMFD_AVAILABLE, BodyFiles, FileBody, file_body
from reelcdn.edge.config import ConfigError
from reelcdn.edge.metrics import NodeStats

pytestmark = pytest.mark.skipif(not MEMFD_AVAILABLE, reason="memfd_create is Linux-only")

HEADERS = {"Cache-Control": "max-age=600", "ETag": '"f1"', "Content-Type": "video/mp4"}


def test_file_body_holds_the_chunks_in_order() -> None:
    chunks = [os.urandom(n) for n in (1, 4096, 70_000, 3)] + [b"z"] * 2000  # > IOV_MAX chunks
    size = sum(map(len, chunks))
    body = file_body(chunks, size)
    assert isinstance(body, FileBody)
    assert len(body) == size
    assert bytes(body) == b"".join(chunks)
    assert bytes(memoryview(body)[4000:4200]) == b"".join(chunks)[4000:4200]
    assert os.fstat(body.fd).st_size == size


def test_file_body_is_sealed_against_writes() -> None:
    body = file_body([b"a" * 100_000], 100_000)
    with pytest.raises(PermissionError):
        os.pwrite(body.fd, b"X", 0)
    with pytest.raises(PermissionError):
        os.ftruncate(body.fd, 10)
    assert bytes(body[:3]) == b"aaa"


def test_file_body_wrong_size_is_refused_and_leaks_nothing() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="expected"):
        file_body([b"abc"], 4)
    assert len(os.listdir("/proc/self/fd")) == before


def test_descriptor_closed_when_the_body_is_collected() -> None:
    body = file_body([b"q" * 70_000], 70_000)
    fd = body.fd
    os.fstat(fd)
    del body
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_view_outlives_the_body_object() -> None:
    """An evicted body may still be queued on a slow client's transport as a memoryview."""
    body = file_body([b"v" * 80_000], 80_000)
    view = memoryview(body)[10:20]
    del body
    gc.collect()
    assert bytes(view) == b"v" * 10


def test_threshold_decides_between_bytes_and_files() -> None:
    stats = NodeStats("t")
    files = BodyFiles(64 * 1024, stats)
    small = files.make([b"a" * 1000, b"b"], 1001)
    assert type(small) is bytes and small == b"a" * 1000 + b"b"
    large = files.make([b"c" * 65536], 65536)
    assert type(large) is FileBody and bytes(large) == b"c" * 65536
    assert (stats.body_files, stats.body_file_fallbacks) == (1, 0)
    off = BodyFiles(0, stats)
    assert type(off.make([b"d" * 200_000], 200_000)) is bytes


def test_out_of_descriptors_falls_back_to_bytes() -> None:
    """With no descriptor left (EMFILE), the body is stored as bytes and counted."""
    stats = NodeStats("t")
    files = BodyFiles(1024, stats)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)  # the descriptor number the next open would get
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        body = files.make([b"e" * 5000], 5000)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert type(body) is bytes and body == b"e" * 5000
    assert stats.body_file_fallbacks == 1 and stats.body_files == 0


async def test_large_hits_come_from_a_memory_file_byte_for_byte(origin, node) -> None:
    body = os.urandom(1_500_000)
    origin.set("/seg.m4s", body, headers=HEADERS)
    first = await get(node.port, "/seg.m4s")
    assert first.status == 200 and first.body == body
    entry = node.node.store.lookup("/seg.m4s", {})
    assert entry is not None and type(entry.body) is FileBody
    assert node.node.stats.body_files == 1
    hit = await get(node.port, "/seg.m4s")
    assert hit.status == 200 and hit.body == body
    assert "; hit" in (hit.header("cache-status") or "")
    for start, end in ((0, 65535), (65536, 131071), (1_499_990, 1_499_999), (7, 7)):
        part = await get(node.port, "/seg.m4s", {"Range": f"bytes={start}-{end}"})
        assert part.status == 206 and part.body == body[start:end + 1]
        assert part.header("content-range") == f"bytes {start}-{end}/{len(body)}"
    head = await get(node.port, "/seg.m4s", method="HEAD")
    assert head.status == 200 and head.header("content-length") == str(len(body))
    multi = await get(node.port, "/seg.m4s", {"Range": "bytes=0-9,100000-100009"})
    assert multi.status == 206 and body[100000:100010] in multi.body
    assert origin.counts["/seg.m4s"] == 1


async def test_small_bodies_stay_bytes(origin, node) -> None:
    origin.set("/index.m3u8", b"#EXTM3U\n" * 10, headers=HEADERS)
    assert (await get(node.port, "/index.m3u8")).status == 200
    entry = node.node.store.lookup("/index.m3u8", {})
    assert entry is not None and type(entry.body) is bytes


async def test_sendfile_can_be_switched_off(origin, start_node) -> None:
    server = await start_node(origin.url, sendfile_min_size=0)
    origin.set("/big", b"B" * 300_000, headers=HEADERS)
    assert (await get(server.port, "/big")).body == b"B" * 300_000
    entry = server.node.store.lookup("/big", {})
    assert entry is not None and type(entry.body) is bytes


async def test_slow_reader_gets_every_byte_in_order(origin, node) -> None:
    """Responses larger than the socket buffers, pipelined to a client that reads late: the
    part sendfile could not send goes on with sendfile as the socket drains (nothing is
    copied to the transport), and the next responses wait for it."""
    big = os.urandom(4 * 1024 * 1024)
    origin.set("/huge", big, headers=HEADERS)
    await get(node.port, "/huge")
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    ranges = [(0, 3_000_000), (1_000_000, 4 * 1024 * 1024 - 1), (5, 10)]
    requests = b"".join(
        b"GET /huge HTTP/1.1\r\nHost: x\r\nRange: bytes=%d-%d\r\n\r\n" % r for r in ranges
    )
    writer.write(requests + b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.3)  # the node fills the socket buffers and queues the rest
    (server_side,) = node.connections
    assert server_side.transport is not None
    assert server_side._file_send is not None, "the socket took a 3 MB body at once"
    assert server_side.transport.get_write_buffer_size() == 0  # not copied to the transport
    for start, end in ranges:
        response = await asyncio.wait_for(read_response(reader), 10)
        assert response.status == 206 and response.body == big[start:end + 1]
    whole = await asyncio.wait_for(read_response(reader), 10)
    assert whole.status == 200 and whole.body == big
    writer.close()


async def test_the_write_state_follows_a_body_left_to_sendfile(origin, node) -> None:
    """A HIT whose body the socket cannot take at once: the connection's write state is
    "sending file" (no task, the body leaves as the socket drains), then "idle" again, and the
    next request on the connection is answered at once."""
    from reelcdn.edge.http.connection import WRITE_IDLE, WRITE_SENDING_FILE

    big = os.urandom(4 * 1024 * 1024)
    origin.set("/state", big, headers=HEADERS)
    await get(node.port, "/state")
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.2)
    (server_side,) = node.connections
    assert server_side._write is WRITE_SENDING_FILE and server_side.paused
    response = await asyncio.wait_for(read_response(reader), 10)
    assert response.body == big
    assert server_side._write is WRITE_IDLE and not server_side.paused
    writer.write(b"GET /state HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n")
    response = await asyncio.wait_for(read_response(reader), 10)
    assert response.status == 206 and response.body == big[:10]
    writer.close()


def test_config_key_sendfile_min_size() -> None:
    from conftest import make_config

    config = make_config("http://127.0.0.1:1", sendfile_min_size="128KiB")
    assert config.sendfile_min_bytes == 128 * 1024
    with pytest.raises(ConfigError, match="sendfile_min_size"):
        make_config("http://127.0.0.1:1", sendfile_min_size="lots")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_client_gone_mid_body_leaves_no_descriptor(origin, node) -> None:
    big = os.urandom(4 * 1024 * 1024)
    origin.set("/gone", big, headers=HEADERS)
    await get(node.port, "/gone")
    before = open_descriptors()
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readexactly(1000)  # the response started; the rest waits for the socket
        writer.transport.abort()  # a reset, mid-body
    await asyncio.sleep(0.3)
    assert not node.connections
    assert open_descriptors() <= before
    again = await get(node.port, "/gone")
    assert again.body == big


async def test_connection_close_waits_for_the_whole_body(origin, node) -> None:
    """``Connection: close`` on a body sendfile finishes later: the close comes after it."""
    big = os.urandom(3 * 1024 * 1024)
    origin.set("/closing", big, headers=HEADERS)
    await get(node.port, "/closing")
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"GET /closing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                 b"GET /closing HTTP/1.1\r\nHost: x\r\n\r\n")  # must not be answered
    await asyncio.sleep(0.2)
    response = await asyncio.wait_for(read_response(reader), 10)
    assert response.status == 200 and response.body == big
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing more
    writer.close()


@pytest.mark.slow
async def test_a_stalled_reader_is_cut_after_the_send_timeout(origin, start_node) -> None:
    server = await start_node(origin.url, limits={"send_timeout": "1s"})
    big = os.urandom(4 * 1024 * 1024)
    origin.set("/stall", big, headers=HEADERS)
    await get(server.port, "/stall")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.2)
    (server_side,) = server.connections
    assert server_side._file_send is not None
    await asyncio.sleep(3.2)  # never read: no progress for more than send_timeout
    assert not server.connections and server.node.stats.timeouts == 1
    writer.close()
