"""meta.json's freshness comes from the origin: a shield of the embedded default topology, over
real sockets, keeps a processing meta.json 2 s and a ready one a day, as the origin store's
sidecars say (no TTL rule in the topology decides it for the shield)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rawhttp import RawResponse, get

from reelcdn.edge.config import default_topology_text, topology_from_text
from reelcdn.edge.ops.server import NodeServer
from reelcdn.loadtest.bench.procs import free_port
from reelcdn.origin.cache_control import META_CACHE_PROCESSING, META_CACHE_READY
from reelcdn.origin.storage import FsStore
from reelcdn.shield.connectors import build_upstream

META = "/v/clip/meta.json"



class Nodes:
    def __init__(self, root: Path, servers: dict[str, NodeServer]) -> None:
        self.root = root
        self.servers = servers

    def port(self, name: str) -> int:
        return self.servers[name].port

    def origin_reads(self) -> int:
        stats = self.servers["shield-1"].node.stats.upstream_requests
        return sum(count for (source, _), count in stats.items() if source == "main")


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    """shield-1 and regional-1 of the embedded default topology (its TTL rules, its fs
    origin under the data directory), on free ports."""
    text = re.sub(r"127\.0\.0\.1:\d+", lambda _: f"127.0.0.1:{free_port()}",
                  default_topology_text())
    topology = topology_from_text(text, base_dir=str(tmp_path))
    root = Path(topology.origins["main"].root or "")
    root.mkdir(parents=True)
    servers: dict[str, NodeServer] = {}
    try:
        for name in ("shield-1", "regional-1"):
            server = NodeServer(topology.nodes[name], build_upstream)
            await server.start()
            servers[name] = server
        yield Nodes(root, servers)
    finally:
        for server in reversed(list(servers.values())):
            await server.stop(grace=1.0)


def member(response: RawResponse) -> str:
    """This node's Cache-Status member (the last)."""
    return (response.header("cache-status") or "").split(",")[-1].strip()


def ttl_of(response: RawResponse) -> int:
    found = re.search(r"; ttl=(-?\d+)", member(response))
    assert found is not None, member(response)
    return int(found.group(1))


async def test_meta_json_is_kept_as_long_as_the_origin_says(nodes: Nodes) -> None:
    store = FsStore(nodes.root)
    shield = nodes.port("shield-1")
    store.put_bytes("v/clip/meta.json", b'{"state": "processing"}',
                    cache_control=META_CACHE_PROCESSING)

    first = await get(shield, META)
    assert first.status == 200 and first.body == b'{"state": "processing"}'
    assert first.header("cache-control") == "max-age=2"
    assert "stored" in member(first)
    hit = await get(shield, META)
    assert "hit" in member(hit) and 0 <= ttl_of(hit) <= 2

    # Processing: stale after 2 s, so the shield asks the origin again (unchanged: a 304).
    await asyncio.sleep(2.3)
    reads = nodes.origin_reads()
    again = await get(shield, META)
    assert "fwd=stale" in member(again) and "fwd-status=304" in member(again)
    assert nodes.origin_reads() == reads + 1

    # Ready: the transcoder rewrites it with the day-long Cache-Control.
    store.put_bytes("v/clip/meta.json", b'{"state": "ready"}', cache_control=META_CACHE_READY)
    await asyncio.sleep(2.3)  # the processing copy, just revalidated, runs out
    ready = await get(shield, META)
    assert ready.body == b'{"state": "ready"}'
    assert "fwd=stale" in member(ready) and "fwd-status=200" in member(ready)
    assert ready.header("cache-control") == META_CACHE_READY  # a day, then a day stale
    reads = nodes.origin_reads()
    hit = await get(shield, META)
    assert "hit" in member(hit) and ttl_of(hit) > 86000  # a TTL rule would say 2
    assert nodes.origin_reads() == reads

    # The tier below keeps it as long: its copy's freshness is the shield's, less its Age.
    regional = nodes.port("regional-1")
    await get(regional, META)
    below = await get(regional, META)
    assert below.body == b'{"state": "ready"}'
    assert "hit" in member(below) and ttl_of(below) > 86000
    assert nodes.origin_reads() == reads


async def test_a_meta_json_without_a_sidecar_has_no_freshness_from_a_rule(nodes: Nodes) -> None:
    """Written just now without headers (a store that never wrote sidecars): the shield has
    only the heuristic (10 % of the time since Last-Modified), so it revalidates at once
    rather than keep the file for the 2 s a TTL rule used to give every meta.json."""
    path = nodes.root / "v" / "bare" / "meta.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{}")
    shield = nodes.port("shield-1")
    first = await get(shield, "/v/bare/meta.json")
    assert first.status == 200 and first.header("cache-control") is None
    await asyncio.sleep(0.3)  # past the heuristic's tenth of the second since Last-Modified
    second = await get(shield, "/v/bare/meta.json")
    assert "fwd=stale" in member(second) and "fwd-status=304" in member(second)
