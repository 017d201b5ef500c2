"""The admin listener: health, Prometheus metrics, cache stats, purge, bearer token."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import get

REQUIRED = {
    "reelcdn_requests",
    "reelcdn_request_duration_seconds",
    "reelcdn_upstream_requests",
    "reelcdn_coalesced_waiters",
    "reelcdn_cache_objects",
    "reelcdn_cache_bytes",
    "reelcdn_cache_evictions",
    "reelcdn_bytes_sent",
}


def admin(node, path: str) -> str:
    return f"http://127.0.0.1:{node.admin_port}{path}"


async def test_health(node, client):
    async with client.get(admin(node, "/health")) as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_metrics_count_what_happened(origin, node, client):
    origin.set("/m", b"x" * 100, headers={"Cache-Control": "max-age=60"})
    await get(node.port, "/m")
    await get(node.port, "/m")
    async with client.get(admin(node, "/metrics")) as response:
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) >= REQUIRED, REQUIRED - set(families)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values() for s in f.samples
    }
    labels = (("cache_status", "hit"), ("code", "200"), ("method", "GET"), ("node", "edge-t"))
    assert samples[("reelcdn_requests_total", labels)] == 1
    miss = (("cache_status", "miss"), ("code", "200"), ("method", "GET"), ("node", "edge-t"))
    assert samples[("reelcdn_requests_total", miss)] == 1
    upstream = (("code", "200"), ("node", "edge-t"), ("upstream", origin.url))
    assert samples[("reelcdn_upstream_requests_total", upstream)] == 1
    assert samples[("reelcdn_cache_objects", (("node", "edge-t"),))] == 1
    assert samples[("reelcdn_bytes_sent_total", (("node", "edge-t"),))] > 200
    count = samples[("reelcdn_request_duration_seconds_count", (("node", "edge-t"),))]
    assert count == 2


async def test_cache_stats_and_purge(origin, node, client):
    for path in ("/v/abc/seg_00001.m4s", "/v/abc/seg_00002.m4s", "/v/other/seg_00001.m4s",
                 "/misc/a"):
        origin.set(path, b"x", headers={"Cache-Control": "max-age=60"})
        await get(node.port, path)
    async with client.get(admin(node, "/cache/stats")) as response:
        assert (await response.json())["objects"] == 4
    async with client.post(admin(node, "/purge"), json={"path": "/misc/a"}) as response:
        assert (await response.json())["purged"] == 1
    async with client.post(admin(node, "/purge"), json={"video": "abc"}) as response:
        assert (await response.json())["purged"] == 2
    async with client.post(admin(node, "/purge"), json={"prefix": "/v/"}) as response:
        assert (await response.json())["purged"] == 1
    assert len(node.node.store) == 0
    async with client.post(admin(node, "/purge"), json={"colour": "x"}) as response:
        assert response.status == 400
        assert "unknown purge kind" in (await response.json())["error"]
    async with client.post(admin(node, "/purge"), data=b"not json") as response:
        assert response.status == 400


async def test_bearer_token(origin, start_node, client):
    node = await start_node(origin.url, admin_token="s3cret")
    async with client.get(admin(node, "/metrics")) as response:
        assert response.status == 401
    async with client.get(admin(node, "/metrics"),
                          headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401
    async with client.get(admin(node, "/metrics"),
                          headers={"Authorization": "Bearer s3cret"}) as response:
        assert response.status == 200
    async with client.get(admin(node, "/health")) as response:
        assert response.status == 401  # every admin route needs the token
    async with client.get(admin(node, "/health"),
                          headers={"Authorization": "Bearer s3cret"}) as response:
        assert response.status == 200


async def test_each_node_has_its_own_registry(origin, start_node):
    a = await start_node(origin.url, name="node-a")
    b = await start_node(origin.url, name="node-b")
    origin.set("/x", b"x", headers={"Cache-Control": "max-age=60"})
    await get(a.port, "/x")
    async with aiohttp.ClientSession() as session, session.get(admin(b, "/metrics")) as r:
        text = await r.text()
    assert 'node="node-a"' not in text and 'node="node-b"' in text


async def test_prewarm_fetches_through_the_node(origin, node, client):
    for i in range(3):
        origin.set(f"/v/p/seg_{i:05d}.m4s", bytes([i]) * 1000,
                   headers={"Cache-Control": "max-age=60"})
    paths = [f"/v/p/seg_{i:05d}.m4s" for i in range(3)] + ["/v/p/missing"]
    async with client.post(admin(node, "/prewarm"), json={"paths": paths}) as response:
        report = await response.json()
    assert report["requested"] == 4 and report["failed"] == 1
    assert report["results"]["/v/p/seg_00001.m4s"]["status"] == 200
    for path in paths[:3]:
        assert "hit" in (await get(node.port, path)).header("cache-status")
    async with client.post(admin(node, "/prewarm"), json={"paths": ["relative"]}) as response:
        assert response.status == 400
