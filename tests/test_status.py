"""``reelcdn status``: the pure sampling arithmetic, then the command against real node
processes on 127.0.0.1 (one of them killed), the 401 of a wrong admin token, a timeout that
does not hang, and the rich table."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from nodeproc import free_port
from prometheus_client import generate_latest
from topoproc import ADMIN_TOKEN, SEGMENT, Topology, get

from reelcdn.edge.metrics import NodeStats, collect_families, snapshot_registry, stats_snapshot
from reelcdn.origin.state import OriginMetrics as ServiceMetrics
from reelcdn.status import (
    NodeMetrics,
    OriginMetrics,
    Sample,
    Target,
    increase,
    node_row,
    parse_node_metrics,
    parse_origin_metrics,
    rate,
    ratio,
    render_text,
    sample_all,
    snapshot,
    targets_of,
)

EDGE = Target("edge-a", "node", "edge", "http://127.0.0.1:1")


def node_sample(at: float, **counters: object) -> Sample:
    """``hits`` of ``requests`` become outcome counts: that many hits, the rest misses."""
    if "hits" in counters:
        hits = counters.pop("hits")
        counters["outcomes"] = {"hit": hits, "miss": counters["requests"] - hits}  # type: ignore[operator]
    return Sample(EDGE, at, up=True, health="ok", role="edge",
                  node=NodeMetrics(**counters))  # type: ignore[arg-type]


# -- pure --------------------------------------------------------------------------------------


def test_increase_rate_and_ratio() -> None:
    assert increase(None, 10) == 0
    assert increase(10, 25) == 15
    assert increase(100, 7) == 7  # went down: the process restarted, its 7 are new
    assert rate(None, 10, 2.0) is None
    assert rate(10, 30, 2.0) == 10.0
    assert rate(10, 30, 0.0) is None
    assert rate(100, 40, 2.0) == 20.0
    assert ratio(3, 4) == 0.75
    assert ratio(0, 0) is None


def test_a_row_has_counters_and_rates_over_the_interval() -> None:
    before = node_sample(10.0, requests=100, hits=50, bytes_sent=1_000, errors_5xx=1,
                         cache_bytes=10.0, cache_capacity=100.0)
    after = node_sample(12.0, requests=140, hits=80, bytes_sent=9_000, errors_5xx=3,
                        cache_bytes=25.0, cache_capacity=100.0,
                        upstream_up={"shield-1": True, "shield-2": False})
    row = node_row(after, before)
    assert row["up"] and row["interval_seconds"] == 2.0
    assert row["requests"] == 140 and row["requests_per_second"] == 20.0
    assert row["bytes_per_second"] == 4_000.0
    assert row["errors_5xx_per_second"] == 1.0
    assert row["hit_ratio_interval"] == 0.75        # 30 of the last 40
    assert row["hit_ratio_total"] == 80 / 140
    assert row["cache_fill"] == 0.25
    assert row["upstreams"] == {"shield-1": True, "shield-2": False}


def test_a_row_without_a_usable_previous_sample_has_no_rates() -> None:
    after = node_sample(12.0, requests=10, hits=5)
    for previous in (None, Sample(EDGE, 10.0, up=False, error="timeout (2 s)")):
        row = node_row(after, previous)
        assert row["requests_per_second"] is None and row["bytes_per_second"] is None
        assert row["hit_ratio_interval"] is None and row["hit_ratio_total"] == 0.5


def test_a_restarted_node_counts_from_zero_and_an_idle_one_has_no_interval_ratio() -> None:
    row = node_row(node_sample(2.0, requests=4, hits=4), node_sample(0.0, requests=90, hits=9))
    assert row["requests_per_second"] == 2.0 and row["hit_ratio_interval"] == 1.0
    idle = node_row(node_sample(2.0, requests=9, hits=3), node_sample(0.0, requests=9, hits=3))
    assert idle["requests_per_second"] == 0.0 and idle["hit_ratio_interval"] is None


def test_snapshot_counts_up_and_down_and_keeps_the_reason() -> None:
    down = Sample(Target("edge-b", "node", "edge", "http://127.0.0.1:2"), 2.0, up=False,
                  error="connection refused")
    origin = Sample(Target("origin-api", "origin", "origin", "http://127.0.0.1:3"), 2.0,
                    up=True, health="ok", origin=OriginMetrics(queue_depth=4.0,
                                                               jobs={"pending": 3.0}))
    doc = snapshot([node_sample(2.0, requests=1), down, origin], None)
    assert (doc["up"], doc["down"]) == (2, 1)
    rows = {r["name"]: r for r in doc["nodes"]}
    assert rows["edge-b"]["error"] == "connection refused" and not rows["edge-b"]["up"]
    assert rows["origin-api"]["queue_depth"] == 4.0
    json.dumps(doc)  # plain data


def test_parse_what_the_node_collector_renders() -> None:
    stats = NodeStats("edge-a")
    for status, code, n in (("hit", 200, 7), ("stale", 200, 1), ("miss", 200, 2),
                            ("error", 502, 3)):
        for _ in range(n):
            stats.count("GET", status, code)
    stats.bytes_sent = 12345
    stats.evictions = 2
    view = {"node": "edge-a", "stats": stats_snapshot(stats),
            "gauges": {"reelcdn_cache_bytes": 300.0, "reelcdn_cache_capacity_bytes": 1200.0,
                       "reelcdn_cache_objects": 5.0},
            "upstream_up": {"regional-1": 1.0, "regional-2": 0.0}}
    assert list(collect_families("edge-a", view["stats"], view["gauges"]))  # sanity
    text = generate_latest(snapshot_registry(lambda: view)).decode()
    got = parse_node_metrics(text)
    assert (got.requests, got.hits, got.errors_5xx) == (13, 8, 3)
    assert got.bytes_sent == 12345 and got.evictions == 2
    assert (got.cache_bytes, got.cache_capacity, got.cache_objects) == (300.0, 1200.0, 5.0)
    assert got.upstream_up == {"regional-1": True, "regional-2": False}


def test_parse_what_the_origin_service_renders() -> None:
    metrics = ServiceMetrics()
    metrics.queue_depth.set(5)
    for state, value in (("pending", 4), ("leased", 1), ("done", 9), ("dead", 0)):
        metrics.jobs.labels(state).set(value)
    metrics.started.inc(3)
    metrics.completed.inc(2)
    metrics.bytes_received.inc(4096)
    got = parse_origin_metrics(generate_latest(metrics.registry).decode())
    assert got.queue_depth == 5 and got.jobs["pending"] == 4 and got.jobs["done"] == 9
    assert (got.uploads_started, got.uploads_completed, got.bytes_received) == (3, 2, 4096)


def test_the_table_renders_up_down_and_the_queue() -> None:
    down = Sample(Target("edge-b", "node", "edge", "http://127.0.0.1:2"), 2.0, up=False,
                  error="401 unauthorized (wrong or missing admin token)")
    origin = Sample(Target("origin-api", "origin", "origin", "http://127.0.0.1:3"), 2.0,
                    up=True, health="ok", origin=OriginMetrics(queue_depth=4.0,
                                                               jobs={"pending": 3.0}))
    before = node_sample(0.0, requests=0, hits=0, cache_capacity=1024.0)
    after = node_sample(2.0, requests=20, hits=15, bytes_sent=4096, cache_bytes=512.0,
                        cache_capacity=1024.0, upstream_up={"regional-1": False})
    text = render_text(snapshot([after, down, origin], [before]))
    for heading in ("node", "role", "state", "req/s", "hit ratio", "bytes/s", "cache"):
        assert heading in text
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert "10.0" in lines["edge-a"] and "75.0%" in lines["edge-a"]
    assert "2.0 KiB/s" in lines["edge-a"] and "50.0%" in lines["edge-a"]
    assert "regional-1 DOWN" in lines["edge-a"]
    assert "down: 401" in lines["edge-b"]
    assert "queue 4" in lines["origin-api"]
    assert "2 up, 1 down" in text


# -- I/O on real sockets -----------------------------------------------------------------------


async def test_a_silent_admin_times_out_and_a_closed_port_is_refused() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes connections; nobody ever answers
    try:
        targets = [Target("silent", "node", "edge", f"http://127.0.0.1:{silent.getsockname()[1]}"),
                   Target("closed", "node", "edge", f"http://127.0.0.1:{free_port()}"),
                   Target("no-admin", "node", "edge", None)]
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            samples = await sample_all(session, targets, timeout=0.3)
        assert time.monotonic() - started < 2.0
    finally:
        silent.close()
    by_name = {s.target.name: s for s in samples}
    assert not any(s.up for s in samples)
    assert by_name["silent"].error == "timeout (0.3 s)"
    assert by_name["closed"].error == "connection refused"
    assert "no admin API" in (by_name["no-admin"].error or "")


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory):
    """shield-1, edge-a, edge-b and the origin API, some traffic, then edge-b killed."""
    group = Topology(tmp_path_factory.mktemp("status"))
    try:
        group.start()
        group.traffic()
        group.kill("edge-b")
        yield group
    finally:
        group.stop()


def status(config: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reelcdn.cli", "status", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_status_json_shows_the_killed_node_down_and_the_others_up(topology) -> None:
    started = time.monotonic()
    done = status(topology.config, "--json", "--interval", "0.5")
    assert time.monotonic() - started < 15
    assert done.returncode == 1, done.stderr  # one node down
    doc = json.loads(done.stdout)
    rows = {r["name"]: r for r in doc["nodes"]}
    assert set(rows) == {"shield-1", "edge-a", "edge-b", "origin-api"}
    assert (doc["up"], doc["down"]) == (3, 1)
    assert rows["edge-b"]["up"] is False and rows["edge-b"]["error"] == "connection refused"
    edge, shield, api = rows["edge-a"], rows["shield-1"], rows["origin-api"]
    assert edge["up"] and shield["up"] and api["up"]
    assert edge["role"] == "edge" and shield["role"] == "shield"
    # traffic(): 2 rounds of 3 segments and a 404 through each edge.
    assert edge["requests"] == 8 and edge["hits"] == 3
    assert 0 < edge["hit_ratio_total"] < 1
    assert edge["bytes_sent"] >= 6 * len(SEGMENT)
    assert edge["requests_per_second"] == 0.0 and edge["bytes_per_second"] == 0.0
    assert 0.4 < edge["interval_seconds"] < 5
    assert edge["upstreams"] == {"shield-1": True}
    assert shield["upstreams"] == {"main": True}
    assert shield["requests"] >= 6 and shield["cache_objects"] >= 3
    assert 0 < edge["cache_fill"] < 1 and edge["cache_capacity"] == 32 * 1024 * 1024
    assert api["queue_depth"] == 0 and api["jobs"]["pending"] == 0


@pytest.mark.slow
async def test_rates_count_the_requests_between_two_samples(topology) -> None:
    targets = [t for t in targets_of(topology.topology) if t.name == "edge-a"]
    async with aiohttp.ClientSession() as session:
        first = await sample_all(session, targets, 2.0)
        for i in (1, 2, 3, 1, 2, 3):
            async with session.get(f"{topology.data('edge-a')}/v/clip/seg_{i:05d}.m4s") as r:
                assert r.status == 200 and await r.read() == SEGMENT
        await asyncio.sleep(0.2)
        second = await sample_all(session, targets, 2.0)
    row = node_row(second[0], first[0])
    seconds = row["interval_seconds"]
    # interval_seconds is rounded to the millisecond, the rate is not: 1 % is that rounding
    assert row["requests_per_second"] * seconds == pytest.approx(6, rel=0.01)
    assert row["hit_ratio_interval"] == 1.0  # all stored by traffic()
    assert row["bytes_per_second"] * seconds >= 6 * len(SEGMENT)


@pytest.mark.slow
def test_a_wrong_admin_token_shows_401(topology, tmp_path) -> None:
    wrong = tmp_path / "wrong-token.toml"
    wrong.write_text(topology.config.read_text().replace(ADMIN_TOKEN, "not-the-token-at-all-0"))
    (tmp_path / "origin").mkdir()
    doc = json.loads(status(wrong, "--json", "--interval", "0.2").stdout)
    rows = {r["name"]: r for r in doc["nodes"]}
    assert rows["edge-a"]["error"].startswith("401") and not rows["edge-a"]["up"]
    assert rows["shield-1"]["error"].startswith("401")
    assert rows["edge-b"]["error"] == "connection refused"
    assert rows["origin-api"]["up"]  # the origin's admin listener has no token


@pytest.mark.slow
def test_status_once_and_the_live_view_print_the_table(topology) -> None:
    once = status(topology.config, "--once", "--interval", "0.3")
    assert once.returncode == 1, once.stderr
    assert "hit ratio" in once.stdout and "req/s" in once.stdout
    lines = {line.split("│")[1].strip(): line for line in once.stdout.splitlines()
             if line.count("│") > 2}
    assert "down: connection refused" in lines["edge-b"]
    assert "shield-1 up" in lines["edge-a"] and "main up" in lines["shield-1"]
    assert "queue 0" in lines["origin-api"]
    live = status(topology.config, "--count", "2", "--interval", "0.3")
    assert live.returncode == 0, live.stderr
    assert "edge-a" in live.stdout and "rates over 0.3 s" in live.stdout


def test_bad_options_and_config_errors_exit_2(tmp_path) -> None:
    assert status(tmp_path / "missing.toml", "--json").returncode == 2
    assert status(tmp_path / "missing.toml", "--interval", "0").returncode == 2


@pytest.mark.slow
def test_the_health_of_a_live_node_matches_the_topologys_token(topology) -> None:
    """The fixture's nodes do ask for the token (the 401 test depends on it)."""
    assert get(topology.admin("edge-a") + "/health")[0] == 401
    assert get(topology.admin("edge-a") + "/health", ADMIN_TOKEN)[0] == 200
