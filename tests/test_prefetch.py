"""CMCD-driven prefetch and its accounting, CMCD parsing, and CMSD headers.

The cold-edge tests run a real 3-tier topology over ffmpeg demo videos; the accounting tests a
single node in front of the programmable test origin (slow or short-lived objects on demand).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from player.demo_tiers import VIDEO, DemoTiers, synthesise
from prometheus_client import generate_latest
from rawhttp import get

from reelcdn.edge.metrics import node_registry
from reelcdn.edge.video import cmcd, cmsd
from reelcdn.edge.video.prefetch import resolve


@pytest.fixture(scope="module")
def origin_root(tmp_path_factory) -> Path:
    return synthesise(tmp_path_factory.mktemp("prefetch"))


def edge_member(response) -> str:
    return (response.header("cache-status") or "").split(",")[-1].strip()


def with_cmcd(path: str, payload: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}CMCD={quote(payload, safe='')}"


async def settle(node, timeout: float = 10.0) -> None:
    """Wait until the node has no prefetch queued or running."""
    async with asyncio.timeout(timeout):
        while node.features.prefetcher.pending:
            await asyncio.sleep(0.02)


# -- CMCD parsing -------------------------------------------------------------------------------
def test_cmcd_payload_parsing_follows_cta_5004():
    keys = cmcd.parse_payload('bl=21300,br=3200,bs,cid="faec5fc2",d=4004,mtp=25400,'
                              'nor="..%2F300kbps%2Fseg_2.m4s,x",nrr="12323-48763",ot=v,'
                              'sid="6e2f\\"b5",su,com.example-x=7')
    assert keys["bl"] == 21300 and keys["mtp"] == 25400 and keys["bs"] is True
    assert keys["su"] is True and keys["ot"] == "v" and keys["sid"] == '6e2f"b5'
    assert keys["nor"] == "..%2F300kbps%2Fseg_2.m4s,x"  # a comma inside a string
    assert keys["nrr"] == "12323-48763" and keys["com.example-x"] == 7
    assert cmcd.parse_payload(",,=1,bl=") == {}  # malformed items are skipped, never fatal


def test_cmcd_from_query_and_headers_merge():
    data = cmcd.from_request(
        "a=1&CMCD=" + quote('nor="seg_00002.m4s",sid="s1"', safe=""),
        {b"cmcd-request": b"bl=1200,su", b"cmcd-status": b"bs", b"cmcd-session": b'sid="s2"'},
    )
    assert data is not None
    assert (data.nor, data.bl, data.su, data.bs, data.starving) == (
        "seg_00002.m4s", 1200, True, True, True)
    assert data.sid == "s2"  # headers after the query argument
    assert cmcd.from_request("a=1", {}) is None


def test_nor_resolves_relative_to_the_request_path_and_stays_on_this_host():
    assert resolve("/v/x/360p/seg_00001.m4s", "seg_00002.m4s") == "/v/x/360p/seg_00002.m4s"
    assert resolve("/v/x/360p/seg_00001.m4s", "../720p/seg_00002.m4s") == "/v/x/720p/seg_00002.m4s"
    assert resolve("/v/x/a.m4s", "/v/y/b.m4s?t=1") == "/v/y/b.m4s?t=1"
    assert resolve("/v/x/a.m4s", "http://elsewhere.example/b.m4s") is None
    assert resolve("/v/x/a.m4s", "//elsewhere.example/b.m4s") is None


def test_cmsd_syntax():
    assert cmsd.dynamic_member('edge "a"', 48000, 12) == '"edge \\"a\\"";etp=48000;rtt=12'
    assert cmsd.node_block("edge-a") == b'CMSD-Dynamic: "edge-a"\r\n'
    assert cmsd.static_playlist_block("e", live=False) == b'CMSD-Static: ot=m,sf=h,st=v,n="e"\r\n'


# -- the cold edge -----------------------------------------------------------------------------
@pytest.fixture
async def tiers(origin_root):
    tiers = await DemoTiers(origin_root).start()
    yield tiers
    await tiers.stop()


@pytest.mark.slow
async def test_cold_edge_nor_makes_the_next_segment_a_hit(tiers):
    base = f"/v/{VIDEO}/360p/"
    for n in range(2):
        first = await get(tiers.port, with_cmcd(base + f"seg_{n:05d}.m4s",
                                                f'nor="seg_{n + 1:05d}.m4s",sid="p1",su'))
        assert first.status == 200
        # Cold for seg 0; seg 1 is already here, prefetched on seg 0's nor.
        assert edge_member(first).startswith("edge-a; fwd=uri-miss" if n == 0 else "edge-a; hit")
        await settle(tiers.edge.node)
        following = await get(tiers.port, base + f"seg_{n + 1:05d}.m4s")
        assert following.status == 200
        assert edge_member(following).startswith("edge-a; hit"), following.header("cache-status")
    stats = tiers.edge.node.stats
    assert (stats.prefetch_issued, stats.prefetch_used) == (2, 2)
    assert stats.cmcd_requests == 2 and stats.cmcd_starving == 2
    # The regional saw each object once: no prefetch was duplicated by the client request.
    regional = {key[1]: count for key, count in
                tiers.servers["regional-1"].node.stats.requests.items()}
    assert sum(regional.values()) == 3


@pytest.mark.slow
async def test_nor_in_cmcd_headers_and_the_chain_of_cmsd_members(tiers):
    base = f"/v/{VIDEO}/720p/"
    response = await get(tiers.port, base + "seg_00000.m4s",
                         headers={"CMCD-Request": 'nor="seg_00001.m4s"'})
    assert response.status == 200
    # Every tier appends its member, shield first, like Cache-Status.
    assert response.header("cmsd-dynamic") == '"shield-1", "regional-1", "edge-a"'
    await settle(tiers.edge.node)
    assert edge_member(await get(tiers.port, base + "seg_00001.m4s")).startswith("edge-a; hit")


@pytest.mark.slow
async def test_client_request_joins_a_running_prefetch(tiers):
    node = tiers.edge.node
    base = f"/v/{VIDEO}/720p/"
    await get(tiers.port, with_cmcd(base + "seg_00000.m4s", 'nor="seg_00002.m4s"'))
    # No settle: the next request races the prefetch and must not start a second fetch.
    joined = await get(tiers.port, base + "seg_00002.m4s")
    assert joined.status == 200
    await settle(node)
    assert node.stats.prefetch_used == 1
    regional_requests = sum(tiers.servers["regional-1"].node.stats.requests.values())
    assert regional_requests == 2  # seg_00000 and seg_00002, each once


@pytest.mark.slow
async def test_with_host_in_key_prefetches_are_stored_under_the_client_s_key(origin_root):
    """host_in_key puts the Host into every key: a prefetch must be filed under the key of the
    site that asked, or the next request of that site misses it."""
    tiers = await DemoTiers(origin_root, host_in_key=True).start()
    try:
        node = tiers.edge.node
        site = {"Host": "Site-A.example:8443"}  # keys use the host lowercased, port dropped
        base = f"/v/{VIDEO}/360p/"
        first = await get(tiers.port, with_cmcd(base + "seg_00000.m4s", 'nor="seg_00001.m4s"'),
                          headers=site)
        assert first.status == 200
        await settle(node)
        keys = {entry.primary for entry in node.store}
        assert f"site-a.example{base}seg_00001.m4s" in keys, keys
        following = await get(tiers.port, base + "seg_00001.m4s", headers=site)
        assert edge_member(following).startswith("edge-a; hit"), following.header("cache-status")
        # Another site has its own copy: the prefetch made for site A is not its.
        other = await get(tiers.port, base + "seg_00001.m4s", headers={"Host": "b.example"})
        assert edge_member(other).startswith("edge-a; fwd=uri-miss")

        # The media playlist's prefetch (init + first segments) is filed per site too.
        media = await get(tiers.port, f"/v/{VIDEO}/720p/index.m3u8", headers=site)
        assert media.status == 200
        await settle(node)
        init = await get(tiers.port, f"/v/{VIDEO}/720p/init.mp4", headers=site)
        assert edge_member(init).startswith("edge-a; hit"), init.header("cache-status")
        assert node.stats.prefetch_used == 2
    finally:
        await tiers.stop()


# -- accounting on one node ----------------------------------------------------------------------
async def test_prefetch_metrics_wasted_and_dropped(origin, start_node):
    origin.set("/v/p/short.m4s", b"s" * 100, headers={"Cache-Control": "max-age=1"})
    for name in ("slow-a", "slow-b", "slow-c"):
        origin.set(f"/v/p/{name}.m4s", b"x" * 100, delay=0.4,
                   headers={"Cache-Control": "max-age=60"})
    node_server = await start_node(origin.url, prefetch_queue=1, prefetch_concurrency=1)
    node = node_server.node
    await get(node_server.port, with_cmcd("/v/p/page.m4s", 'nor="short.m4s"'))
    await settle(node)
    await asyncio.sleep(1.1)
    node.features.prefetcher.sweep()
    assert node.stats.prefetch_wasted == 1  # expired before anyone asked

    for name in ("slow-a", "slow-b", "slow-c"):  # one runs, one waits, one is dropped
        await get(node_server.port, with_cmcd("/v/p/page.m4s", f'nor="{name}.m4s"'))
    assert node.stats.prefetch_dropped == 1
    await settle(node)
    assert node.stats.prefetch_issued == 3
    # CMCD never reached the origin, neither in the query nor in headers.
    assert all("CMCD" not in path for path in origin.counts)
    text = generate_latest(node_registry(node.stats, lambda: {})).decode()
    for name, value in (("reelcdn_prefetch_issued_total", 3), ("reelcdn_prefetch_wasted_total", 1),
                        ("reelcdn_prefetch_dropped_total", 1), ("reelcdn_cmcd_requests_total", 4)):
        assert f'{name}{{node="edge-t"}} {value}.0' in text, name


async def test_cmcd_headers_are_not_forwarded_on_fills(origin, start_node):
    origin.set("/q/a.m4s", b"a" * 10, headers={"Cache-Control": "max-age=60"})
    node_server = await start_node(origin.url)
    response = await get(node_server.port, "/q/a.m4s?CMCD=bl%3D100",
                         headers={"CMCD-Request": "bl=100", "CMCD-Session": 'sid="x"'})
    assert response.status == 200
    assert list(origin.counts) == ["/q/a.m4s"]
    sent = {name.lower() for name in origin.seen_headers[-1]}
    assert not sent & {"cmcd-request", "cmcd-session", "cmcd-object", "cmcd-status"}


async def test_a_closing_node_starts_no_more_prefetches(origin, start_node):
    """Queued prefetches are forgotten when the node stops: none reaches the parent after."""
    for name in ("slow-a", "slow-b"):
        origin.set(f"/v/c/{name}.m4s", b"x" * 100, delay=0.3,
                   headers={"Cache-Control": "max-age=60"})
    node_server = await start_node(origin.url, prefetch_concurrency=1)
    node = node_server.node
    for name in ("slow-a", "slow-b"):  # one starts, one stays queued behind the cap of 1
        await get(node_server.port, with_cmcd("/v/c/page.m4s", f'nor="{name}.m4s"'))
    await asyncio.sleep(0.05)
    prefetcher = node.features.prefetcher
    assert prefetcher.pending == 2
    await node.close()
    assert prefetcher.pending == 0
    assert not prefetcher.want("/v/c/slow-c.m4s", "127.0.0.1", request_path="/v/c/page.m4s")
    await asyncio.sleep(0.5)
    assert "/v/c/slow-b.m4s" not in origin.counts


@given(st.text(alphabet='ab=,"\\ 1-', max_size=40))
def test_cmcd_item_splitting_fast_path_matches_the_character_loop(payload):
    assert cmcd._split_items(payload) == cmcd._split_escaped(payload)
