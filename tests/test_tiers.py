"""Three tiers from one topology file: shield (fs origin) → regional(s) → edges."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import get
from s3server import s3_endpoint  # noqa: F401  (a fixture)

from reelcdn.edge.config import topology_from_text
from reelcdn.edge.metrics import node_registry
from reelcdn.edge.ops.server import NodeServer
from reelcdn.loadtest.bench.procs import free_ports
from reelcdn.shield.connectors import build_upstream

TOPOLOGY = """
[defaults]
cache_memory = "64MiB"

[[defaults.ttl]]
match = "*.m4s"
ttl = "1d"

[origin.main]
type = "fs"
root = "origin"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:{shield}"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "127.0.0.1:{r1}"
parents = ["shield-1"]

[node.regional-2]
role = "regional"
listen = "127.0.0.1:{r2}"
parents = ["shield-1"]

[node.edge-a]
role = "edge"
listen = "127.0.0.1:{a}"
parents = ["{edge_parents}"]

[node.edge-b]
role = "edge"
listen = "127.0.0.1:{b}"
parents = ["{edge_parents}"]
"""



class Tiers:
    def __init__(self, root: Path, servers: dict[str, NodeServer]) -> None:
        self.root = root
        self.servers = servers

    def port(self, name: str) -> int:
        return self.servers[name].port

    def origin_reads(self) -> int:
        stats = self.servers["shield-1"].node.stats.upstream_requests
        return sum(count for (source, _), count in stats.items() if source == "main")

    def put(self, path: str, data: bytes) -> None:
        file = self.root / "origin" / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)


async def start_tiers(tmp_path: Path, edge_parents: str) -> Tiers:
    shield, r1, r2, a, b = free_ports(5)
    text = TOPOLOGY.format(shield=shield, r1=r1, r2=r2, a=a, b=b, edge_parents=edge_parents)
    (tmp_path / "origin").mkdir()
    topology = topology_from_text(text, base_dir=str(tmp_path))
    servers: dict[str, NodeServer] = {}
    for name in topology.order_for_start():
        server = NodeServer(topology.nodes[name], build_upstream)
        await server.start()
        servers[name] = server
    return Tiers(tmp_path, servers)


@pytest.fixture
async def tiers(tmp_path):
    tiers = await start_tiers(tmp_path, "regional-1")
    yield tiers
    for server in reversed(list(tiers.servers.values())):
        await server.stop(grace=1.0)


@pytest.fixture
async def two_regionals(tmp_path):
    tiers = await start_tiers(tmp_path, 'regional-1", "regional-2')
    yield tiers
    for server in tiers.servers.values():
        if not server.draining:
            await server.stop(grace=1.0)


def members(response) -> list[str]:
    return [m.strip() for m in (response.header("cache-status") or "").split(",")]


async def test_miss_at_every_tier_then_hit_at_the_edge(tiers):
    tiers.put("/v/demo/360p/seg_00001.m4s", b"S" * 10_000)
    first = await get(tiers.port("edge-a"), "/v/demo/360p/seg_00001.m4s")
    assert first.status == 200 and first.body == b"S" * 10_000
    assert first.header("content-type") == "video/iso.segment"
    assert first.header("etag") and first.header("last-modified")
    names = [m.split(";")[0] for m in members(first)]
    assert names == ["shield-1", "regional-1", "edge-a"]
    assert all("fwd=uri-miss" in m for m in members(first))
    second = await get(tiers.port("edge-a"), "/v/demo/360p/seg_00001.m4s")
    assert members(second)[-1].startswith("edge-a; hit")
    # The other edge misses, and the regional answers from its cache.
    other = await get(tiers.port("edge-b"), "/v/demo/360p/seg_00001.m4s")
    assert other.body == b"S" * 10_000
    assert members(other)[-2].startswith("regional-1; hit")
    assert "edge-b; fwd=uri-miss" in members(other)[-1]
    assert tiers.origin_reads() == 1
    via = [hop.strip() for hop in first.header("via").split(",")]
    assert via == ["1.1 shield-1", "1.1 regional-1", "1.1 edge-a"]


async def test_crowd_over_both_edges_makes_one_origin_read(tiers):
    body = os.urandom(500_000)
    tiers.put("/v/crowd/720p/seg_00003.m4s", body)
    ports = [tiers.port("edge-a"), tiers.port("edge-b")]
    results = await asyncio.gather(*(
        get(ports[i % 2], "/v/crowd/720p/seg_00003.m4s", timeout=30) for i in range(300)
    ))
    assert all(r.status == 200 and r.body == body for r in results)
    assert tiers.origin_reads() == 1


async def test_traversal_is_refused_through_all_tiers(tiers):
    (tiers.root / "secret.txt").write_text("do not serve")
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/v/%2E%2E/%2E%2E/secret.txt",
                 "/v/..%2f..%2fsecret.txt"):
        response = await get(tiers.port("edge-a"), path)
        assert 400 <= response.status < 500, (path, response.status)
        assert b"do not serve" not in response.body


async def test_missing_object_is_404(tiers):
    response = await get(tiers.port("edge-a"), "/v/none/master.m3u8")
    assert response.status == 404


async def test_parents_share_objects_by_hash_and_survive_a_dead_parent(two_regionals):
    tiers = two_regionals
    paths = [f"/v/hrw/seg_{i:05d}.m4s" for i in range(20)]
    for path in paths:
        tiers.put(path, path.encode() * 100)
    for path in paths:
        assert (await get(tiers.port("edge-a"), path)).status == 200
    held = {name: len(tiers.servers[name].node.store) for name in ("regional-1", "regional-2")}
    assert held["regional-1"] + held["regional-2"] == 20  # each object on one regional
    assert held["regional-1"] > 0 and held["regional-2"] > 0
    # Kill regional-1: every request through edge-b (cold) must still succeed.
    await tiers.servers["regional-1"].stop(grace=0.5)
    results = [await get(tiers.port("edge-b"), path) for path in paths]
    assert [r.status for r in results] == [200] * 20
    assert all(r.body == p.encode() * 100 for r, p in zip(results, paths, strict=True))


S3_TOPOLOGY = """
[origin.bucket]
type = "s3"
bucket = "{bucket}"
prefix = "media/"
endpoint_url = "{endpoint}"
region = "us-east-1"

[origin.backup]
type = "fs"
root = "backup"

[node.shield-s3]
role = "shield"
listen = "127.0.0.1:{shield}"
origins = ["bucket", "backup"]

[node.edge-s3]
role = "edge"
listen = "127.0.0.1:{edge}"
parents = ["shield-s3"]

[[node.edge-s3.ttl]]
match = "*.m4s"
ttl = "1d"
"""


@pytest.mark.slow
async def test_s3_origin_through_a_shield_and_failover_to_fs(tmp_path, s3_endpoint):  # noqa: F811
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = "tiers-" + os.urandom(4).hex()
    client.create_bucket(Bucket=bucket)
    body = os.urandom(200_000)
    client.put_object(Bucket=bucket, Key="media/v/s3vid/360p/seg_00000.m4s", Body=body)
    (tmp_path / "backup" / "v" / "s3vid").mkdir(parents=True)
    (tmp_path / "backup" / "v" / "s3vid" / "poster.jpg").write_bytes(b"JPEG")
    shield, edge = free_ports(2)
    text = S3_TOPOLOGY.format(bucket=bucket, endpoint=s3_endpoint, shield=shield, edge=edge)
    topology = topology_from_text(text, base_dir=str(tmp_path))
    servers = []
    try:
        for name in topology.order_for_start():
            server = NodeServer(topology.nodes[name], build_upstream)
            await server.start()
            servers.append(server)
        response = await get(edge, "/v/s3vid/360p/seg_00000.m4s")
        assert response.status == 200 and response.body == body
        assert response.header("content-type") == "video/iso.segment"
        assert "hit" in (await get(edge, "/v/s3vid/360p/seg_00000.m4s")).header("cache-status")
        # A 404 from the bucket is an answer (origins are copies of one store): no failover.
        assert (await get(edge, "/v/s3vid/poster.jpg")).status == 404
        # With the bucket unreachable, the chain falls over to the fs origin.
        client.delete_object(Bucket=bucket, Key="media/v/s3vid/360p/seg_00000.m4s")
        client.delete_bucket(Bucket=bucket)
        missing_bucket = await get(edge, "/v/s3vid/poster.jpg?fresh=1")
        assert missing_bucket.status == 200 and missing_bucket.body == b"JPEG"
    finally:
        for server in reversed(servers):
            await server.stop(grace=1.0)


async def test_per_parent_metrics(two_regionals):
    """Requests and health per parent, as /metrics exports them."""
    tiers = two_regionals
    for i in range(10):
        tiers.put(f"/v/m/seg_{i:05d}.m4s", b"x")
        await get(tiers.port("edge-a"), f"/v/m/seg_{i:05d}.m4s")
    edge = tiers.servers["edge-a"]
    registry = node_registry(edge.node.stats, dict, edge.node.upstream.health)
    text = generate_latest(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    per_parent = {dict(labels)["upstream"]: value for (name, labels), value in samples.items()
                  if name == "reelcdn_upstream_requests_total"}
    assert set(per_parent) == {"regional-1", "regional-2"}
    assert sum(per_parent.values()) == 10
    up = {dict(labels)["upstream"]: value for (name, labels), value in samples.items()
          if name == "reelcdn_upstream_up"}
    assert up == {"regional-1": 1.0, "regional-2": 1.0}
