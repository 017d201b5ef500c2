"""The steering server (edge/video/steering.py): its config keys, the ranking and health
policies as pure functions, and a node answering steering manifests over real sockets (the
JSON, a pathway going down moving last, a session kept on its pathway, tokens, metrics)."""

from __future__ import annotations

import pytest

from reelcdn.edge.config import ConfigError, SteeringConfig, node_config_from_dict
from reelcdn.edge.video.steering import (
    Health,
    client_params,
    manifest,
    observe,
    rank,
    route_pattern,
    server_path,
)

BASE = {"listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:1"}


# -- config -----------------------------------------------------------------------------------
def test_steering_health_keys_parse_with_defaults_and_errors_naming_the_key():
    node = node_config_from_dict("e", {**BASE, "steering": {
        "server_uri": "/v/{video_id}/steering.json",
        "pathways": {"a": "", "b": "https://cdn-b.example.com"}}})
    assert node.steering == SteeringConfig(
        pathways=(("a", ""), ("b", "https://cdn-b.example.com")),
        server_uri="/v/{video_id}/steering.json")
    steering = node.steering
    assert (steering.ttl, steering.health_path, steering.health_urls, steering.health_interval,
            steering.health_timeout, steering.down_after, steering.up_after) == (
        10, None, (), 2.0, 1.0, 2, 2)
    node = node_config_from_dict("e", {**BASE, "steering": {
        "server_uri": "/steering", "ttl": 4, "health_path": "/health.txt",
        "health_urls": {"b": "https://cdn-b.example.com/status/ok"},
        "health_interval": "500ms", "health_timeout": "250ms", "down_after": 3, "up_after": 5,
        "pathways": {"a": "", "b": "https://cdn-b.example.com"}}})
    steering = node.steering
    assert (steering.ttl, steering.health_path, steering.health_urls, steering.health_interval,
            steering.health_timeout, steering.down_after, steering.up_after) == (
        4, "/health.txt", (("b", "https://cdn-b.example.com/status/ok"),), 0.5, 0.25, 3, 5)
    pathways = {"a": "", "b": "https://cdn-b.example.com"}
    for extra, key, message in (
        ({"ttl": 0}, "steering.ttl", "must be 1..3600"),
        ({"health_path": "health.txt"}, "steering.health_path", "an absolute path"),
        ({"health_path": '/a"b'}, "steering.health_path", "an absolute path"),
        ({"health_urls": {"c": "http://x:1/h"}}, "steering.health_urls.c",
         "not one of the pathways"),
        ({"health_urls": {"b": "x/h"}}, "steering.health_urls.b", "missing http://"),
        ({"health_interval": 0}, "steering.health_interval", "larger than 0"),
        ({"down_after": 0}, "steering.down_after", "must be 1..100"),
    ):
        with pytest.raises(ConfigError) as error:
            node_config_from_dict("e", {**BASE, "steering": {
                "server_uri": "/s", "pathways": pathways, **extra}})
        assert error.value.key == f"node.e.{key}", (extra, error.value)
        assert message in error.value.message, (extra, error.value.message)


# -- policy -----------------------------------------------------------------------------------
def test_rank_puts_down_pathways_last_in_configured_order():
    ids = ["a", "b", "c"]
    assert rank(ids, {}) == ["a", "b", "c"]  # unknown health counts as up
    assert rank(ids, {"a": False}) == ["b", "c", "a"]
    assert rank(ids, {"a": False, "b": False}) == ["c", "a", "b"]
    assert rank(ids, {"a": False, "b": False, "c": False}) == ["a", "b", "c"]  # never empty


def test_rank_keeps_a_session_on_its_pathway_while_it_is_up():
    ids = ["a", "b", "c"]
    assert rank(ids, {}, "b") == ["b", "a", "c"]
    assert rank(ids, {"a": False}, "c") == ["c", "b", "a"]
    assert rank(ids, {"b": False}, "b") == ["a", "c", "b"]  # its pathway is down: moved
    assert rank(ids, {}, "zz") == ["a", "b", "c"]  # an unknown pathway is ignored
    assert rank(ids, {}, None) == ["a", "b", "c"]


def test_observe_needs_n_failures_to_go_down_and_m_passes_to_come_back():
    health = Health()
    assert health.up
    health = observe(health, False, down_after=2, up_after=3)
    assert health.up and health.failures == 1  # one failure: still up
    health = observe(health, True, 2, 3)
    assert health.up and health.failures == 0  # a pass resets the failures
    health = observe(observe(health, False, 2, 3), False, 2, 3)
    assert not health.up
    health = observe(observe(health, True, 2, 3), True, 2, 3)
    assert not health.up and health.successes == 2
    health = observe(health, False, 2, 3)
    assert not health.up and health.successes == 0  # a failure resets the passes
    for _ in range(3):
        health = observe(health, True, 2, 3)
    assert health.up


def test_manifest_paths_and_client_parameters():
    assert manifest(["a", "b"], 10, "/s?token=t") == {
        "VERSION": 1, "TTL": 10, "RELOAD-URI": "/s?token=t", "PATHWAY-PRIORITY": ["a", "b"]}
    assert server_path("/steer/{video_id}.json?v=1") == "/steer/{video_id}.json"
    assert server_path("https://steer.example/x/{video_id}") == "/x/{video_id}"
    assert server_path("steering.json") == "/v/{video_id}/steering.json"  # beside the master
    assert server_path("../{video_id}.json") == "/v/{video_id}.json"
    route = route_pattern("/v/{video_id}/steering/{video_id}.json")
    assert route.fullmatch("/v/demo-1/steering/demo-1.json")
    assert not route.fullmatch("/v/demo-1/steering/demo-2.json")
    assert not route_pattern("/steer/{video_id}.json").fullmatch("/steer/a/b.json")
    assert client_params("token=t&_HLS_pathway=edge-a&_HLS_throughput=5000000&exp=9") == (
        "edge-a", 5000000, "token=t&exp=9")
    assert client_params("_HLS_throughput=abc&_HLS_pathway=b%2Ec") == ("b.c", None, "")
    assert client_params("_HLS_throughput=-1") == (None, None, "")
    assert client_params("") == (None, None, "")


# -- a node answering steering manifests ---------------------------------------------------------
class Backend:
    """An origin for the edge and a backup CDN's health URL, each answering what the test
    says (``statuses``); no-store, so every check of the edge's own health reaches it."""

    def __init__(self) -> None:
        self.statuses = {"/health": 200, "/backup-health": 200}
        self.port = 0
        self._runner = None

    async def start(self) -> Backend:
        from aiohttp import web

        async def answer(request):
            status = self.statuses.get(request.path, 404)
            return web.Response(status=status, text="ok\n",
                                headers={"Cache-Control": "no-store"})

        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()


SECRET = "s" * 32


@pytest.fixture
async def steering_node():
    from player.demo_tiers import free_ports

    from reelcdn.edge.ops.server import NodeServer
    from reelcdn.shield.connectors import build_upstream

    backend = await Backend().start()
    (port,) = free_ports(1)
    config = node_config_from_dict("edge-a", {
        "listen": f"127.0.0.1:{port}", "upstream": f"http://127.0.0.1:{backend.port}",
        "carried_query_params": ["token"],
        "tokens": {"format": "native", "keys": {"k1": SECRET}, "current_key": "k1",
                   "protect": ["/v/*"]},
        "steering": {
            "server_uri": "steering.json", "ttl": 3, "health_path": "/health",
            "health_urls": {"backup": f"http://127.0.0.1:{backend.port}/backup-health"},
            "health_interval": "50ms", "health_timeout": "500ms", "down_after": 2,
            "up_after": 2,
            "pathways": {"edge-a": "", "backup": f"http://127.0.0.1:{backend.port}"}}})
    server = NodeServer(config, build_upstream)
    await server.start()
    yield server, backend
    await server.stop(grace=0.5)
    await backend.stop()


async def steer(port: int, token: str, query: str = "") -> tuple[int, dict, object]:
    import json

    from rawhttp import get

    response = await get(port, f"/v/demo-1/steering.json?token={token}{query}")
    body = json.loads(response.body) if response.status == 200 else {}
    return response.status, body, response


async def wait_for(predicate, seconds: float = 5.0) -> None:
    import asyncio

    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def test_node_answers_the_steering_manifest_ranked_by_pathway_health(steering_node):
    import time

    from reelcdn.edge.auth import native

    server, backend = steering_node
    node = server.node
    token = native.sign(SECRET.encode(), "k1", acl="/v/demo-1/", expires=int(time.time()) + 60)
    # Both pathways pass their checks: configured order; the reload URI keeps the token.
    await wait_for(lambda: node.stats.steering_pathway_up == {"edge-a": 1, "backup": 1})
    status, body, response = await steer(
        server.port, token, "&_HLS_pathway=edge-a&_HLS_throughput=4000000")
    assert status == 200, response.body
    assert body == {"VERSION": 1, "TTL": 3,
                    "RELOAD-URI": f"/v/demo-1/steering.json?token={token}",
                    "PATHWAY-PRIORITY": ["edge-a", "backup"]}
    assert response.header("content-type") == "application/json"
    assert response.header("cache-control") == "no-store"
    assert "detail=steering" in response.header("cache-status")
    # A session on the backup stays there while it is up (stickiness).
    _, body, _ = await steer(server.port, token, "&_HLS_pathway=backup&_HLS_throughput=2000000")
    assert body["PATHWAY-PRIORITY"] == ["backup", "edge-a"]
    # The token gate covers the path like any other under /v/: no token, no manifest.
    refused, _, _ = await steer(server.port, "")
    assert refused == 403

    # The backup fails its checks: down after two failures, then last for every session.
    backend.statuses["/backup-health"] = 503
    await wait_for(lambda: node.stats.steering_pathway_up.get("backup") == 0)
    _, body, _ = await steer(server.port, token, "&_HLS_pathway=backup")
    assert body["PATHWAY-PRIORITY"] == ["edge-a", "backup"]  # not removed: last
    # This node's own pathway is checked through its own listener (the chain behind it).
    backend.statuses["/health"] = 500
    await wait_for(lambda: node.stats.steering_pathway_up.get("edge-a") == 0)
    _, body, _ = await steer(server.port, token, "&_HLS_pathway=edge-a")
    assert body["PATHWAY-PRIORITY"] == ["edge-a", "backup"]  # all down: configured order
    backend.statuses["/backup-health"] = 200
    await wait_for(lambda: node.stats.steering_pathway_up.get("backup") == 1)
    _, body, _ = await steer(server.port, token, "&_HLS_pathway=edge-a")
    assert body["PATHWAY-PRIORITY"] == ["backup", "edge-a"]  # off a down pathway
    backend.statuses["/health"] = 200
    await wait_for(lambda: node.stats.steering_pathway_up.get("edge-a") == 1)
    _, body, _ = await steer(server.port, token, "&_HLS_pathway=backup")
    assert body["PATHWAY-PRIORITY"] == ["backup", "edge-a"]  # recovered, session kept

    # Nothing stored; counted by first pathway, throughput by the player's pathway.
    assert not [key for key in node.store._entries if "steering" in key]
    stats = node.stats
    assert stats.steering_manifests == {"edge-a": 3, "backup": 3}
    assert stats.steering_throughput_sum == {"edge-a": 4000000, "backup": 2000000}
    assert stats.steering_throughput_reports == {"edge-a": 1, "backup": 1}
    from prometheus_client import generate_latest

    from reelcdn.edge.metrics import node_registry

    text = generate_latest(node_registry(stats, dict)).decode()
    assert 'reelcdn_steering_manifests_total{node="edge-a",pathway="backup"} 3.0' in text
    assert 'reelcdn_steering_pathway_up{node="edge-a",pathway="edge-a"} 1.0' in text
    assert ('reelcdn_steering_throughput_bps_sum_total{node="edge-a",pathway="edge-a"} '
            '4e+06') in text


def test_workers_sum_steering_counts_and_keep_a_pathway_up_only_if_every_worker_sees_it_up():
    from reelcdn.edge.metrics import NodeStats, stats_snapshot, sum_snapshots

    one, two = NodeStats("e"), NodeStats("e")
    one.steering_manifests = {"a": 2}
    two.steering_manifests = {"a": 3, "b": 1}
    one.steering_pathway_up = {"a": 1, "b": 1}
    two.steering_pathway_up = {"a": 1, "b": 0}
    total = sum_snapshots([stats_snapshot(one), stats_snapshot(two)])
    assert total["steering"]["steering_manifests"] == {"a": 5, "b": 1}
    assert total["steering"]["steering_pathway_up"] == {"a": 1, "b": 0}
