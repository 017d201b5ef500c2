"""What a client's CMCD ``nor`` can make the CDN prefetch: only media objects of the request's
own video, only for a request the token gate let in, within byte budgets per client and for
the node (edge/video/prefetch_bounds.py, applied by edge/video/prefetch.py).

The rules are pure functions, tested as such; the rest runs a real node over real sockets in
front of the counting test origin, and reads the origin's request counts: a refused prefetch
is one the origin never saw.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from rawhttp import RawResponse, read_response

from reelcdn.edge.auth import native
from reelcdn.edge.metrics import NodeStats, node_registry, stats_snapshot, sum_snapshots
from reelcdn.edge.ops.workers import worker_config
from reelcdn.edge.video.prefetch_bounds import (
    ByteBucket,
    ClientBudgets,
    client_key,
    is_media_object,
    keyed_query,
    same_video,
    video_of,
)

if TYPE_CHECKING:
    from conftest import TestOrigin

MiB = 1024 * 1024
SEGMENT = {"Cache-Control": "max-age=600"}


# -- the rules -----------------------------------------------------------------------------------
def test_video_of_takes_the_id_of_an_object_under_v() -> None:
    assert video_of("/v/abc/360p/seg_00001.m4s") == "abc"
    assert video_of("/v/abc/meta.json") == "abc"
    for outside in ("/", "/x/abc/seg.m4s", "/v/", "/v/abc", "/v/abc/", "/video/abc/s.m4s",
                    "/V/abc/s.m4s", "v/abc/s.m4s"):
        assert video_of(outside) is None, outside


def test_same_video_is_the_request_s_video_and_nothing_else() -> None:
    request = "/v/abc/360p/seg_00001.m4s"
    assert same_video(request, "/v/abc/360p/seg_00002.m4s")
    assert same_video(request, "/v/abc/720p/init.mp4")  # another rung of the same video
    assert not same_video(request, "/v/abd/360p/seg_00002.m4s")
    assert not same_video(request, "/v/ab/360p/seg_00002.m4s")
    assert not same_video(request, "/v/abc")
    assert not same_video(request, "/big.mp4")
    # a request outside /v/{id}/ prefetches nothing, not even "its own" objects
    assert not same_video("/x/page.m4s", "/x/next.m4s")
    assert not same_video("/v/abc", "/v/abc/360p/seg_00002.m4s")


@given(st.text(alphabet="/vab.x", max_size=14), st.text(alphabet="/vab.x", max_size=14))
def test_same_video_holds_only_for_two_objects_under_one_v_id(request: str, target: str) -> None:
    if same_video(request, target):
        video = request.split("/")[2]
        assert video and target.startswith(f"/v/{video}/") and request.startswith(f"/v/{video}/")
        assert len(target) > len(f"/v/{video}/")


def test_only_segments_and_init_sections_are_media_objects() -> None:
    for path in ("/v/a/360p/seg_00001.m4s", "/v/a/360p/init.mp4", "/v/a/hls/s1.ts",
                 "/v/a/audio/s1.aac", "/v/a/subs/s1.vtt", "/v/a/a/s.m4a", "/v/a/v/s.m4v"):
        assert is_media_object(path), path
    for path in ("/v/a/meta.json", "/v/a/master.m3u8", "/v/a/360p/index.m3u8",
                 "/v/a/poster.jpg", "/v/a/x.bin", "/v/a/m4s", "/v/a/seg.m4s/"):
        assert not is_media_object(path), path
    assert keyed_query("/v/a/s.m4s?bust=1") and not keyed_query("/v/a/s.m4s")


def test_client_key_is_the_ipv4_address_or_the_ipv6_64() -> None:
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key("") == "" and client_key("not-an-ip") == "not-an-ip"


def test_a_byte_bucket_is_charged_after_the_fact_and_refuses_while_negative() -> None:
    bucket = ByteBucket(400, now=0.0)
    assert bucket.allows(0.0, 100, 400)
    bucket.charge(1000, 0.0, 100, 400)  # one object larger than the whole burst
    assert bucket.level == -600
    assert not bucket.allows(5.0, 100, 400)  # -100
    assert bucket.allows(6.0, 100, 400)  # 0: even again
    assert bucket.refill(100.0, 100, 400) == 400  # never above the burst
    assert bucket.refill(50.0, 100, 400) == 400  # a clock going back adds nothing
    assert bucket.refill(100.0, 10, 40) == 40  # a reload to a smaller burst applies at once


def test_client_budgets_are_per_client_and_bounded() -> None:
    budgets = ClientBudgets(capacity=3)
    assert budgets.allows("a", 0.0, 100, 400) and len(budgets) == 0  # asking stores nothing
    budgets.charge("a", 1000, 0.0, 100, 400)
    assert not budgets.allows("a", 1.0, 100, 400)
    assert budgets.allows("b", 1.0, 100, 400)  # another client has its own bucket
    for client in ("b", "c", "d"):
        budgets.charge(client, 10, 1.0, 100, 400)
    assert len(budgets) == 3  # "a", the least recently used, was pushed out...
    assert budgets.allows("a", 1.0, 100, 400)  # ...and is forgotten as full
    assert budgets.level("b", 1.0, 100, 400) == 390


# -- a real node ----------------------------------------------------------------------------------
def with_cmcd(path: str, payload: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}CMCD={quote(payload, safe='')}"


async def get_from(port: int, path: str, source: str = "127.0.0.1",
                   headers: dict[str, str] | None = None) -> tuple[RawResponse, int]:
    """GET ``path`` from the local address ``source`` (127.0.0.0/8 is all loopback on
    Linux, so each address is another client to the node); the response and the bytes sent."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0))
        try:
            fields = {"Host": "127.0.0.1", **(headers or {})}
            head = (f"GET {path} HTTP/1.1\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode()
            writer.write(head)
            return await read_response(reader), len(head)
        finally:
            writer.close()


async def settle(node, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while node.features.prefetcher.pending:
            await asyncio.sleep(0.02)


def refused(node) -> dict[str, int]:
    return dict(node.stats.prefetch_refused)


async def test_the_990_byte_attack_fetches_nothing_upstream(origin: TestOrigin,
                                                            start_node) -> None:
    """A request for one video whose nor names a big object of another video, a non-media
    object of its own, or anything outside /v/: the origin sees the requests and nothing
    else."""
    origin.set("/v/a/360p/seg_00000.m4s", b"s" * 1000, headers=SEGMENT)
    origin.set("/v/b/big.mp4", b"B" * (8 * MiB), headers=SEGMENT)
    origin.set("/v/a/meta.json", b"{}", headers=SEGMENT)
    origin.set("/x/page.m4s", b"p" * 100, headers=SEGMENT)
    origin.set("/x/big.m4s", b"B" * MiB, headers=SEGMENT)
    server = await start_node(origin.url)
    node = server.node
    request = "/v/a/360p/seg_00000.m4s"
    attacks = {
        '"/v/b/big.mp4"': "other_video",
        '"../../b/big.mp4"': "other_video",
        '"../../../x/big.m4s"': "other_video",
        '"../meta.json"': "not_media",
        '"../poster.jpg"': "not_media",
        '"index.m3u8"': "not_media",
        '"seg_00001.m4s?bust=1"': "query",
        '"%2e%2e/%2e%2e/b/big.mp4"': None,  # a ".." in any spelling: not a path at all
        '"..%2F..%2Fb%2Fbig.mp4"': None,
        '"http://elsewhere.example/v/a/360p/seg_00001.m4s"': None,
    }
    sizes = []
    for nor in attacks:
        response, size = await get_from(server.port, with_cmcd(request, f"nor={nor},su"))
        sizes.append(size)
        assert response.status == 200
        # the same nor in the CMCD-Request header
        response, size = await get_from(server.port, request,
                                        headers={"CMCD-Request": f"nor={nor}"})
        sizes.append(size)
        assert response.status == 200
    # a request outside /v/{id}/ prefetches nothing, whatever its nor names
    response, size = await get_from(server.port, with_cmcd("/x/page.m4s", 'nor="big.m4s"'))
    sizes.append(size)
    assert response.status == 200
    await settle(node)
    await asyncio.sleep(0.1)
    assert max(sizes) < 990  # each attempt is one small request
    assert dict(origin.counts) == {request: 1, "/x/page.m4s": 1}
    assert node.stats.prefetch_issued == 0
    expected: dict[str, int] = {}
    for reason in attacks.values():
        if reason is not None:
            expected[reason] = expected.get(reason, 0) + 2
    expected["other_video"] += 1  # /x/page.m4s's nor
    assert refused(node) == expected


async def test_a_same_video_nor_still_prefetches(origin: TestOrigin, start_node) -> None:
    origin.set("/v/a/360p/seg_00000.m4s", b"0" * 1000, headers=SEGMENT)
    origin.set("/v/a/720p/seg_00001.m4s", b"1" * 1000, headers=SEGMENT)
    server = await start_node(origin.url)
    await get_from(server.port,
                   with_cmcd("/v/a/360p/seg_00000.m4s", 'nor="../720p/seg_00001.m4s"'))
    await settle(server.node)
    assert origin.counts["/v/a/720p/seg_00001.m4s"] == 1
    response, _ = await get_from(server.port, "/v/a/720p/seg_00001.m4s")
    assert response.header("cache-status").split(";")[1].strip() == "hit"
    assert (server.node.stats.prefetch_issued, server.node.stats.prefetch_used) == (1, 1)
    assert refused(server.node) == {}


async def test_a_client_over_its_budget_gets_no_more_prefetches_another_still_does(
    origin: TestOrigin, start_node,
) -> None:
    for n in range(4):
        origin.set(f"/v/a/360p/seg_{n:05d}.m4s", bytes([48 + n]) * MiB, headers=SEGMENT)
    # 64 KiB/s with a 4 s burst: 256 KiB; the first 1 MiB prefetch leaves it at -768 KiB,
    # which takes 12 s to refill.
    server = await start_node(origin.url, prefetch_client_bytes_per_second="64KiB")
    node = server.node
    page = "/v/a/360p/seg_00000.m4s"
    await get_from(server.port, with_cmcd(page, 'nor="seg_00001.m4s"'), "127.0.0.1")
    await settle(node)
    assert origin.counts["/v/a/360p/seg_00001.m4s"] == 1  # within the burst: fetched
    await get_from(server.port, with_cmcd(page, 'nor="seg_00002.m4s"'), "127.0.0.1")
    await settle(node)
    assert "/v/a/360p/seg_00002.m4s" not in origin.counts  # in debt: refused
    assert refused(node) == {"client_budget": 1}
    await get_from(server.port, with_cmcd(page, 'nor="seg_00003.m4s"'), "127.0.0.2")
    await settle(node)
    assert origin.counts["/v/a/360p/seg_00003.m4s"] == 1  # another client: its own budget
    assert node.stats.prefetch_issued == 2
    # The client in debt still gets what it asks for itself: only prefetch is bounded.
    response, _ = await get_from(server.port, "/v/a/360p/seg_00002.m4s", "127.0.0.1")
    assert response.status == 200 and len(response.body) == MiB


async def test_the_node_budget_caps_the_sum_of_all_clients(origin: TestOrigin,
                                                           start_node) -> None:
    for n in range(1, 5):
        origin.set(f"/v/a/360p/seg_{n:05d}.m4s", bytes([48 + n]) * MiB, headers=SEGMENT,
                   delay=0.5)
    page = "/v/a/360p/seg_00000.m4s"
    origin.set(page, b"0" * 1000, headers=SEGMENT)
    # the node: 64 KiB/s, a 1 s burst; each client alone would have 8 MiB/s
    server = await start_node(origin.url, prefetch_bytes_per_second="64KiB",
                              prefetch_concurrency=1)
    node = server.node
    # Three clients ask while nothing is charged yet: the first prefetch starts, the other
    # two wait in the queue (concurrency 1) and are refused when their turn comes, the
    # first one's MiB having put the node's bucket in debt.
    for n, source in ((1, "127.0.0.1"), (2, "127.0.0.2"), (3, "127.0.0.3")):
        await get_from(server.port, with_cmcd(page, f'nor="seg_{n:05d}.m4s"'), source)
    assert node.features.prefetcher.pending == 3 and node.stats.prefetch_issued == 1
    await settle(node)
    # ...and a fourth client asking now is refused at once.
    await get_from(server.port, with_cmcd(page, 'nor="seg_00004.m4s"'), "127.0.0.4")
    await settle(node)
    prefetched = [n for n in range(1, 5) if f"/v/a/360p/seg_{n:05d}.m4s" in origin.counts]
    assert prefetched == [1]
    assert node.stats.prefetch_issued == 1
    assert refused(node) == {"node_budget": 3}


async def test_a_request_the_token_gate_refuses_prefetches_nothing(origin: TestOrigin,
                                                                   start_node) -> None:
    key = b"k1-secret-0123456789abcdef"
    origin.set("/v/a/360p/seg_00000.m4s", b"0" * 1000, headers=SEGMENT)
    origin.set("/v/a/360p/seg_00001.m4s", b"1" * 1000, headers=SEGMENT)
    origin.set("/v/a/360p/index.m3u8", b"#EXTM3U\n", headers=SEGMENT)
    server = await start_node(origin.url, tokens={"format": "native",
                                                  "keys": {"k1": key.decode()}})
    node = server.node
    page = "/v/a/360p/seg_00000.m4s"
    other = native.sign(key, "k1", acl="/v/b/", expires=4_000_000_000)  # another video's
    forged = native.sign(b"another-secret-0123456789", "k1", acl="/v/a/", expires=4_000_000_000)
    for query in ("", f"?token={other}", f"?token={forged}"):
        response, _ = await get_from(server.port, with_cmcd(page + query, 'nor="seg_00001.m4s"'))
        assert response.status == 403
        response, _ = await get_from(server.port, page + query,
                                     headers={"CMCD-Request": 'nor="seg_00001.m4s"'})
        assert response.status == 403
    await settle(node)
    await asyncio.sleep(0.1)
    assert dict(origin.counts) == {}  # neither the request nor its nor reached the origin
    assert node.stats.prefetch_issued == 0 and node.stats.cmcd_requests == 0
    # The same request with a valid token is answered and its nor prefetched.
    good = native.sign(key, "k1", acl="/v/a/", expires=4_000_000_000)
    response, _ = await get_from(server.port,
                                 with_cmcd(f"{page}?token={good}", 'nor="seg_00001.m4s"'))
    assert response.status == 200
    await settle(node)
    assert dict(origin.counts) == {page: 1, "/v/a/360p/seg_00001.m4s": 1}
    assert node.stats.prefetch_issued == 1


def test_refusals_are_in_metrics_and_summed_over_workers() -> None:
    one, two = NodeStats("edge-a"), NodeStats("edge-a")
    one.prefetch_refused.update({"other_video": 2, "client_budget": 1})
    two.prefetch_refused.update({"other_video": 3, "not_media": 4})
    total = sum_snapshots([stats_snapshot(one), stats_snapshot(two)])
    assert total["prefetch_refused"] == {"other_video": 5, "client_budget": 1, "not_media": 4}
    text = generate_latest(node_registry(one, lambda: {})).decode()
    assert 'reelcdn_prefetch_refused_total{node="edge-a",reason="other_video"} 2.0' in text
    assert 'reelcdn_prefetch_refused_total{node="edge-a",reason="client_budget"} 1.0' in text


def test_workers_share_the_node_budget_and_each_gives_a_client_the_full_rate() -> None:
    from conftest import make_config

    config = make_config("http://127.0.0.1:1", prefetch_bytes_per_second="256MiB",
                         prefetch_client_bytes_per_second="8MiB")
    share = worker_config(config, 4)
    assert share.prefetch_bytes_per_second == 64 * MiB
    assert share.prefetch_client_bytes_per_second == 8 * MiB


@pytest.mark.parametrize("value", [0, "0MiB", -1, "fast"])
def test_budgets_must_be_positive_sizes(value) -> None:
    from conftest import make_config

    from reelcdn.edge.config import ConfigError

    for key in ("prefetch_bytes_per_second", "prefetch_client_bytes_per_second"):
        with pytest.raises(ConfigError) as caught:
            make_config("http://127.0.0.1:1", **{key: value})
        assert key in str(caught.value)
