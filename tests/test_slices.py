"""Slices (slice_size, edge/slices.py, docs/slices.md): large objects fetched, stored and
served in aligned parts, through real tiers on 127.0.0.1 and an origin that answers Range."""

from __future__ import annotations

import asyncio
import email
import hashlib
import re
import socket

import pytest
from aiohttp import web
from rawhttp import get

from reelcdn.edge.cache.keys import KeyPolicy
from reelcdn.edge.config import topology_from_text
from reelcdn.edge.ops.server import NodeServer
from reelcdn.shield.connectors import build_upstream

pytestmark = pytest.mark.usefixtures("no_internal_errors")

MIB = 1024 * 1024
SLICE = MIB
BIG = hashlib.shake_256(b"reelcdn-slices").digest(32 * MIB)
RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RangeOrigin:
    """An object that the test origin serves with single Range requests answered 206 (or
    ignored: ``honour_range = False``), counting requests and body bytes sent."""

    def __init__(self, body: bytes, etag: str = '"v1"', delay: float = 0.0) -> None:
        self.body = body
        self.etag = etag
        self.delay = delay
        self.honour_range = True
        self.cache_control = "max-age=3600"
        self.not_modified = 0
        self.ranges: list[str | None] = []
        self.bytes_sent = 0

    async def handle(self, request: web.Request) -> web.Response:
        value = request.headers.get("Range")
        self.ranges.append(value)
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"Cache-Control": self.cache_control, "Content-Type": "video/mp4",
                   "ETag": self.etag, "Accept-Ranges": "bytes"}
        body = self.body
        if request.headers.get("If-None-Match") == self.etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": self.etag,
                                                     "Cache-Control": self.cache_control})
        match = RANGE.fullmatch(value or "") if self.honour_range else None
        if match is None:
            self.bytes_sent += len(body)
            return web.Response(body=body, headers=headers)
        first = int(match.group(1))
        last = min(int(match.group(2) or len(body) - 1), len(body) - 1)
        if first >= len(body):
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
        headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
        self.bytes_sent += last - first + 1
        return web.Response(status=206, body=body[first:last + 1], headers=headers)


def serve(origin, path: str, body: bytes = BIG, **kwargs) -> RangeOrigin:
    route = RangeOrigin(body, **kwargs)
    origin.set(path, handler=route.handle)
    return route


async def tiers(origin, start_node, **keys):
    """shield → regional → edge, each slicing ``*.mp4`` in 1 MiB slices."""
    keys = {"slice_size": "1MiB", **keys}
    shield = await start_node(origin.url, "shield-t", **keys)
    regional = await start_node(f"http://127.0.0.1:{shield.port}", "regional-t", **keys)
    edge = await start_node(f"http://127.0.0.1:{regional.port}", "edge-t", **keys)
    return shield, regional, edge


def slice_keys(server) -> list[str]:
    return sorted(e.key for e in server.node.store)


async def stored(server, count: int = 1) -> list[str]:
    """The server's stored keys once it holds ``count`` (a fill stores after its readers
    got their bytes), waiting at most 5 s."""
    for _ in range(100):
        if len(slice_keys(server)) >= count:
            break
        await asyncio.sleep(0.05)
    return slice_keys(server)


async def test_first_byte_of_a_cold_object_moves_one_slice_per_tier(origin, start_node):
    route = serve(origin, "/dl/big.mp4")
    nodes = await tiers(origin, start_node)
    response = await get(nodes[2].port, "/dl/big.mp4", {"Range": "bytes=0-0"})
    assert response.status == 206 and response.body == BIG[:1]
    assert response.header("content-range") == f"bytes 0-0/{len(BIG)}"
    assert route.ranges == [f"bytes=0-{SLICE - 1}"]
    assert route.bytes_sent == SLICE
    for server in nodes:  # each tier fetched and stored exactly slice 0
        assert await stored(server) == [KeyPolicy.slice_key("/dl/big.mp4", 0)]
        assert server.node.stats.upstream_failures == 0
    again = await get(nodes[2].port, "/dl/big.mp4", {"Range": "bytes=5-9"})
    assert again.body == BIG[5:10]
    assert again.header("cache-status").split(", ")[-1].startswith("edge-t; hit")
    assert len(route.ranges) == 1


async def test_a_range_across_two_slices_fetches_two(origin, start_node):
    route = serve(origin, "/dl/big.mp4")
    *_, edge = await tiers(origin, start_node)
    span = f"bytes={3 * SLICE - 10}-{3 * SLICE + 9}"
    response = await get(edge.port, "/dl/big.mp4", {"Range": span})
    assert response.status == 206 and response.body == BIG[3 * SLICE - 10:3 * SLICE + 10]
    assert sorted(route.ranges) == [f"bytes={2 * SLICE}-{3 * SLICE - 1}",
                                    f"bytes={3 * SLICE}-{4 * SLICE - 1}"]
    assert route.bytes_sent == 2 * SLICE


async def test_whole_object_is_byte_identical_then_a_hit(origin, start_node):
    route = serve(origin, "/dl/big.mp4")
    *_, edge = await tiers(origin, start_node)
    cold = await get(edge.port, "/dl/big.mp4", timeout=60)
    assert cold.status == 200 and cold.header("content-range") is None
    assert int(cold.header("content-length")) == len(BIG)
    assert cold.body == BIG
    assert len(route.ranges) == 32 and route.bytes_sent == len(BIG)
    assert len(await stored(edge, 32)) == 32  # the last fill stores after its last byte left
    warm = await get(edge.port, "/dl/big.mp4", timeout=60)
    assert warm.status == 200 and warm.body == BIG
    assert warm.header("cache-status").split(", ")[-1].startswith("edge-t; hit; ttl=")
    assert len(route.ranges) == 32
    head = await get(edge.port, "/dl/big.mp4", method="HEAD")
    assert head.status == 200 and head.header("content-length") == str(len(BIG))
    tail = await get(edge.port, "/dl/big.mp4", {"Range": "bytes=-5"})
    assert tail.body == BIG[-5:]
    multi = await get(edge.port, "/dl/big.mp4", {"Range": f"bytes=0-9,{5 * SLICE}-{5 * SLICE + 9}"})
    ctype = multi.header("content-type")
    message = email.message_from_bytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n"
                                       + multi.body)
    assert [p.get_payload(decode=True) for p in message.get_payload()] == [
        BIG[:10], BIG[5 * SLICE:5 * SLICE + 10]]
    unsatisfiable = await get(edge.port, "/dl/big.mp4", {"Range": f"bytes={len(BIG)}-"})
    assert unsatisfiable.status == 416
    matched = await get(edge.port, "/dl/big.mp4", {"If-None-Match": '"v1"'})
    assert matched.status == 304
    assert len(route.ranges) == 32


async def test_concurrent_requests_for_a_cold_slice_coalesce(origin, start_node):
    route = serve(origin, "/dl/big.mp4", delay=0.2)
    edge = await start_node(origin.url, slice_size="1MiB")
    answers = await asyncio.gather(*(get(edge.port, "/dl/big.mp4", {"Range": f"bytes={i}-{i + 99}"})
                                     for i in range(20)))
    assert [a.body for a in answers] == [BIG[i:i + 100] for i in range(20)]
    assert route.ranges == [f"bytes=0-{SLICE - 1}"]
    assert edge.node.stats.coalesced_waiters == 19


async def test_a_new_version_between_slices_never_mixes(origin, start_node):
    """Slice 0 stored as v1, then the origin changes: a whole GET must not join v1's slice 0
    with v2's others — the node starts over (nothing written yet) or cuts the body."""
    route = serve(origin, "/dl/big.mp4")
    edge = await start_node(origin.url, slice_size="1MiB")
    first = await get(edge.port, "/dl/big.mp4", {"Range": "bytes=0-0"})
    assert first.body == BIG[:1]
    changed = bytes(b ^ 0xFF for b in BIG[:4 * MIB])
    route.body, route.etag = changed, '"v2"'
    for _ in range(3):  # a client that retries a cut response
        try:
            whole = await get(edge.port, "/dl/big.mp4", timeout=30)
        except (asyncio.IncompleteReadError, ConnectionError):
            continue
        assert whole.body == changed  # never v1's slice 0 with v2's
        assert whole.header("etag") == '"v2"'
        break
    else:
        raise AssertionError("no complete answer in three tries")
    again = await get(edge.port, "/dl/big.mp4", {"Range": "bytes=0-3"})
    assert again.body == changed[:4]


async def test_the_object_changing_under_a_request_cuts_it(origin, start_node):
    """v2 appears while slices of v1 are being served: the response already begun is cut,
    never completed with v2's bytes; the next one is whole v2."""
    route = serve(origin, "/dl/big.mp4")
    edge = await start_node(origin.url, slice_size="1MiB")
    await get(edge.port, "/dl/big.mp4", {"Range": f"bytes=0-{2 * SLICE - 1}"})  # v1: 0, 1
    changed = bytes(b ^ 0xFF for b in BIG)
    route.body, route.etag = changed, '"v2"'
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await get(edge.port, "/dl/big.mp4", {"Range": f"bytes=0-{3 * SLICE - 1}"})
    after = await get(edge.port, "/dl/big.mp4", {"Range": f"bytes=0-{3 * SLICE - 1}"})
    assert after.body == changed[:3 * SLICE] and after.header("etag") == '"v2"'


async def test_an_origin_that_ignores_range_is_served_whole(origin, start_node):
    route = serve(origin, "/dl/big.mp4", body=BIG[:3 * MIB])
    route.honour_range = False
    edge = await start_node(origin.url, slice_size="1MiB")
    response = await get(edge.port, "/dl/big.mp4", {"Range": "bytes=10-19"})
    assert response.status == 206 and response.body == BIG[10:20]
    assert await stored(edge) == ["/dl/big.mp4"]
    whole = await get(edge.port, "/dl/big.mp4")
    assert whole.status == 200 and whole.body == BIG[:3 * MIB]
    assert whole.header("cache-status").startswith("edge-t; hit")
    assert len(route.ranges) == 2  # the refused slice, then the whole object once
    assert slice_keys(edge) == ["/dl/big.mp4"]


async def test_small_objects_and_other_paths(origin, start_node):
    small = serve(origin, "/dl/small.mp4", body=BIG[:1000])
    origin.set("/v/a/seg.m4s", BIG[:5000], headers={"Cache-Control": "max-age=60"})
    edge = await start_node(origin.url, slice_size="1MiB")
    assert (await get(edge.port, "/dl/small.mp4")).body == BIG[:1000]
    await stored(edge)
    assert (await get(edge.port, "/dl/small.mp4")).header("cache-status").startswith("edge-t; hit")
    assert small.ranges == [f"bytes=0-{SLICE - 1}"]
    whole = await get(edge.port, "/dl/small.mp4")  # one stored slice, answered at once
    assert whole.status == 200 and whole.header("content-range") is None
    assert whole.header("content-length") == "1000" and whole.header("etag") == '"v1"'
    part = await get(edge.port, "/dl/small.mp4", {"Range": "bytes=10-19"})
    assert part.status == 206 and part.body == BIG[10:20]
    assert part.header("content-range") == "bytes 10-19/1000"  # one, not the slice's too
    head = await get(edge.port, "/dl/small.mp4", method="HEAD")
    assert head.status == 200 and head.header("content-length") == "1000"
    assert small.ranges == [f"bytes=0-{SLICE - 1}"]
    assert (await get(edge.port, "/v/a/seg.m4s")).body == BIG[:5000]
    assert "/v/a/seg.m4s" in await stored(edge, 2)  # not sliced: stored whole
    assert origin.seen_headers[-1].get("Range") is None


async def test_a_missing_object_is_answered_as_upstream_answers(origin, start_node):
    edge = await start_node(origin.url, slice_size="1MiB")
    response = await get(edge.port, "/dl/none.mp4")
    assert response.status == 404
    route = serve(origin, "/dl/later.mp4", body=BIG[:3 * MIB])  # a 404 does not mark it whole
    origin.set("/dl/later.mp4", status=404)
    assert (await get(edge.port, "/dl/later.mp4")).status == 404
    origin.set("/dl/later.mp4", handler=route.handle)
    later = await get(edge.port, "/dl/later.mp4", {"Range": "bytes=0-9"})
    assert later.status == 206 and later.body == BIG[:10]
    assert route.ranges == [f"bytes=0-{SLICE - 1}"]


async def test_a_purge_of_the_object_removes_its_slices(origin, start_node):
    serve(origin, "/dl/big.mp4")
    edge = await start_node(origin.url, slice_size="1MiB")
    await get(edge.port, "/dl/big.mp4", {"Range": f"bytes=0-{2 * SLICE}"})
    assert len(await stored(edge, 3)) == 3
    node = edge.node
    assert node.store.remove_matching(node.keys.purge_matcher("path", "/dl/big.mp4")) == 3
    assert slice_keys(edge) == []


def test_slice_size_is_validated():
    from reelcdn.edge.config import ConfigError, node_config_from_dict

    base = {"listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:1"}
    assert node_config_from_dict("n", base).slice_size == 0
    assert node_config_from_dict("n", {**base, "slice_size": "4MiB"}).slice_size == 4 * MIB
    for bad in ("1KiB", "1GiB", -1, "many"):
        with pytest.raises(ConfigError) as caught:
            node_config_from_dict("n", {**base, "slice_size": bad})
        assert "slice_size" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        node_config_from_dict("n", {**base, "slice_paths": ["big"]})
    assert "slice_paths" in str(caught.value)


TOPOLOGY = """
[defaults]
cache_memory = "128MiB"
slice_size = "1MiB"
slice_paths = ["/dl/*"]

[origin.main]
type = "fs"
root = "origin"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:{shield}"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "127.0.0.1:{regional}"
parents = ["shield-1"]

[node.edge-a]
role = "edge"
listen = "127.0.0.1:{edge}"
parents = ["regional-1"]
"""


async def test_a_topology_over_an_fs_origin_that_answers_no_range(tmp_path):
    """The fs origin answers every request whole: the shield stores the object whole (after
    one refused slice) and answers its child's slices from it; below it, one slice a tier."""
    sockets = [socket.socket() for _ in range(3)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    shield, regional, edge = (sock.getsockname()[1] for sock in sockets)
    for sock in sockets:
        sock.close()
    (tmp_path / "origin" / "dl").mkdir(parents=True)
    (tmp_path / "origin" / "dl" / "film.mp4").write_bytes(BIG[:4 * MIB])
    topology = topology_from_text(TOPOLOGY.format(shield=shield, regional=regional, edge=edge),
                                  base_dir=str(tmp_path))
    servers = []
    try:
        for name in topology.order_for_start():
            server = NodeServer(topology.nodes[name], build_upstream)
            await server.start()
            servers.append(server)
        first = await get(edge, "/dl/film.mp4", {"Range": "bytes=0-0"})
        assert first.status == 206 and first.body == BIG[:1]
        by_name = {s.node.name: s for s in servers}
        # (the shield's whole fill goes on after the first byte)
        assert await stored(by_name["shield-1"]) == ["/dl/film.mp4"]  # whole, from the fs
        for name in ("regional-1", "edge-a"):
            assert await stored(by_name[name]) == [KeyPolicy.slice_key("/dl/film.mp4", 0)]
        whole = await get(edge, "/dl/film.mp4")
        assert whole.status == 200 and whole.body == BIG[:4 * MIB]
        assert len(await stored(by_name["edge-a"], 4)) == 4
    finally:
        for server in reversed(servers):
            await server.stop(grace=1.0)


async def test_a_reload_that_changes_the_slice_size_never_serves_old_slices(origin, start_node):
    import dataclasses

    body = BIG[:5 * MIB]
    route = serve(origin, "/dl/big.mp4", body=body)
    edge = await start_node(origin.url, slice_size="1MiB")
    await get(edge.port, "/dl/big.mp4", {"Range": f"bytes=0-{2 * SLICE - 1}"})  # 1 MiB: 0, 1
    await edge.node.apply_config(dataclasses.replace(edge.node.config, slice_size=2 * MIB))
    part = await get(edge.port, "/dl/big.mp4", {"Range": "bytes=0-9"})
    assert part.status == 206 and part.body == body[:10]
    whole = await get(edge.port, "/dl/big.mp4", timeout=30)
    assert whole.status == 200 and whole.body == body
    assert route.ranges[2:] == [f"bytes=0-{2 * MIB - 1}", f"bytes={2 * MIB}-{4 * MIB - 1}",
                                f"bytes={4 * MIB}-{6 * MIB - 1}"]


async def test_cold_multipart_and_a_client_that_leaves_mid_body(origin, start_node):
    route = serve(origin, "/dl/big.mp4", body=BIG[:6 * MIB])
    edge = await start_node(origin.url, slice_size="1MiB")
    multi = await get(edge.port, "/dl/big.mp4",
                      {"Range": f"bytes=10-19,{4 * SLICE - 5}-{4 * SLICE + 4}"})
    assert multi.status == 206
    message = email.message_from_bytes(b"Content-Type: " + multi.header("content-type").encode()
                                       + b"\r\n\r\n" + multi.body)
    assert [p.get_payload(decode=True) for p in message.get_payload()] == [
        BIG[10:20], BIG[4 * SLICE - 5:4 * SLICE + 5]]
    assert sorted(route.ranges) == sorted(f"bytes={k * SLICE}-{(k + 1) * SLICE - 1}"
                                          for k in (0, 3, 4))
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /dl/big.mp4 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await reader.readexactly(100_000)  # the head and some body, then gone
    writer.close()
    await stored(edge, 2)  # the fills go on without the client
    whole = await get(edge.port, "/dl/big.mp4", timeout=30)
    assert whole.status == 200 and whole.body == BIG[:6 * MIB]


async def test_slices_evicted_to_the_disk_tier_come_back(origin, start_node, tmp_path):
    body = BIG[:8 * MIB]
    route = serve(origin, "/dl/big.mp4", body=body)
    edge = await start_node(origin.url, slice_size="1MiB", cache_memory="3MiB",
                            cache_disk="64MiB", cache_dir=str(tmp_path / "disk"))
    first = await get(edge.port, "/dl/big.mp4", timeout=30)
    assert first.body == body
    disk = edge.node.store.disk
    for _ in range(100):  # the disk tier writes in the background: ≤ 5 s
        if len(disk) >= 5:
            break
        await asyncio.sleep(0.05)
    assert len(disk) >= 5  # most slices left memory for the disk
    again = await get(edge.port, "/dl/big.mp4", timeout=30)
    assert again.status == 200 and again.body == body
    assert len(route.ranges) == 8  # every slice came back from the disk, none refetched


async def test_a_private_answer_is_never_shared_through_slices(origin, start_node):
    route = serve(origin, "/dl/mine.mp4", body=BIG[:2 * MIB])
    route.cache_control = "private, max-age=60"
    edge = await start_node(origin.url, slice_size="1MiB")
    answers = await asyncio.gather(*(get(edge.port, "/dl/mine.mp4", {"Range": "bytes=0-9"})
                                     for _ in range(3)))
    assert [a.body for a in answers] == [BIG[:10]] * 3
    assert [a.status for a in answers] == [206] * 3
    assert slice_keys(edge) == []
    assert len(route.ranges) >= 1 + 3  # the refused slice, then one answer per client


async def test_a_range_past_the_end_of_a_cold_object_is_416_without_a_whole_fetch(
        origin, start_node):
    route = serve(origin, "/dl/big.mp4", body=BIG[:3 * MIB])
    edge = await start_node(origin.url, slice_size="1MiB")
    response = await get(edge.port, "/dl/big.mp4", {"Range": f"bytes={10 * MIB}-"})
    assert response.status == 416
    assert response.header("content-range") == f"bytes */{3 * MIB}"
    assert route.ranges == [f"bytes={10 * SLICE}-{11 * SLICE - 1}", f"bytes=0-{SLICE - 1}"]
    assert route.bytes_sent == SLICE
    assert await stored(edge) == [KeyPolicy.slice_key("/dl/big.mp4", 0)]


async def test_stale_slices_are_revalidated_through_the_tiers(origin, start_node):
    """A stale slice is asked with its validators; a 304 keeps its body (no bytes move)."""
    route = serve(origin, "/dl/big.mp4", body=BIG[:3 * MIB])
    route.cache_control = "max-age=1"
    *_, edge = await tiers(origin, start_node)
    first = await get(edge.port, "/dl/big.mp4", {"Range": "bytes=0-9"})
    assert first.body == BIG[:10]
    await stored(edge)
    # The 304 that revalidates it makes it fresh for a minute: the last request below is a
    # hit however slow the machine (a 1 s lifetime again lapsed before it in a loaded CI run).
    route.cache_control = "max-age=60"
    await asyncio.sleep(1.2)
    again = await get(edge.port, "/dl/big.mp4", {"Range": "bytes=0-9"})
    assert again.status == 206 and again.body == BIG[:10]
    assert route.not_modified == 1 and route.bytes_sent == SLICE
    assert await stored(edge) == [KeyPolicy.slice_key("/dl/big.mp4", 0)]
    fresh = await get(edge.port, "/dl/big.mp4", {"Range": "bytes=0-9"})
    assert fresh.header("cache-status").split(", ")[-1].startswith("edge-t; hit")
    assert route.not_modified == 1


async def test_concurrent_cold_whole_reads_fetch_each_slice_once(origin, start_node):
    body = BIG[:8 * MIB]
    route = serve(origin, "/dl/big.mp4", body=body, delay=0.05)
    edge = await start_node(origin.url, slice_size="1MiB")
    answers = await asyncio.gather(*(get(edge.port, "/dl/big.mp4", timeout=30)
                                     for _ in range(5)))
    assert all(a.status == 200 and a.body == body for a in answers)
    assert sorted(route.ranges) == sorted(f"bytes={k * SLICE}-{(k + 1) * SLICE - 1}"
                                          for k in range(8))
