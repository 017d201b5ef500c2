"""The origin's memcached read-through cache (origin/cache.py) with real memcached processes:
two servers as a HashClient cluster, feed pages, video rows and counters cached, one
recompute for a crowd on a cold hot key, likes and deletes seen at once, and the feed still
served from the database while memcached is down, then cached again once it is back."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from feed_fixtures import Origin, running_origin
from hypothesis import given
from hypothesis import strategies as st
from memcached_procs import Memcached, memcached_or_skip
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pymemcache.client import murmur3 as pure_murmur3

from reelcdn.origin.cache import CacheSettings, JsonSerde, Memcache, murmur3_32

pytestmark = pytest.mark.slow


@pytest.fixture
def memcached() -> Iterator[list[Memcached]]:
    exe = memcached_or_skip()
    servers = [Memcached(exe).start() for _ in range(2)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def settings(servers: list[Memcached], **changes: Any) -> CacheSettings:
    values: dict[str, Any] = {"servers": tuple(("127.0.0.1", s.port) for s in servers),
                              "prefix": "t:", "dead_timeout": 0.3, "lock_wait": 3.0,
                              "timeout": 0.2, "connect_timeout": 0.2,
                              "near_ttl": 0.0}  # memcached's own behaviour; near copies below
    values.update(changes)
    return CacheSettings(**values)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def metrics(http: aiohttp.ClientSession, origin: Origin) -> dict[tuple[str, tuple], float]:
    async with http.get(f"{origin.admin}/metrics") as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(values: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


async def trending(http: aiohttp.ClientSession, origin: Origin, user: str = "alice",
                   cursor: str | None = None, limit: int = 3) -> tuple[int, dict[str, Any]]:
    params = {"feed_type": "trending", "limit": str(limit)}
    if cursor:
        params["cursor"] = cursor
    async with http.get(f"{origin.url}/api/v1/feed", params=params,
                        headers=origin.auth(user)) as resp:
        return resp.status, await resp.json()


async def with_trending(http: aiohttp.ClientSession, origin: Origin, n: int = 5) -> list[str]:
    videos = [origin.video("bob", f"v{i}") for i in range(n)]
    status, _ = await origin.plays(http, [{"video_id": v, "starts": 10 * (n - i)}
                                          for i, v in enumerate(videos)])
    assert status == 200
    await origin.recompute()
    return videos


def test_items_are_json_never_pickle() -> None:
    serde = JsonSerde()
    raw, flags = serde.serialize(b"k", {"v": [1, "a"], "x": 1.5})
    assert raw == b'{"v":[1,"a"],"x":1.5}' and serde.deserialize(b"k", raw, flags) == {
        "v": [1, "a"], "x": 1.5}
    assert serde.deserialize(b"k", b"\x80\x04K\x01.", 1) is None  # a pickle's flag: not ours


async def test_pages_rows_and_counters_are_cached_across_the_cluster(
        tmp_path: Path, memcached: list[Memcached], http: aiohttp.ClientSession) -> None:
    async with running_origin(tmp_path, cache=settings(memcached)) as origin:
        videos = await with_trending(http, origin)
        status, first = await trending(http, origin)
        assert status == 200 and [i["id"] for i in first["items"]] == videos[:3]
        assert first["items"][0]["stats"] == {"views": 50, "likes": 0}
        status, again = await trending(http, origin)
        assert again["items"] == first["items"]
        status, second = await trending(http, origin, cursor=first["next_cursor"])
        assert [i["id"] for i in second["items"]] == videos[3:]
        values = await metrics(http, origin)
        assert metric(values, "reelcdn_origin_cache_hits_total", kind="page") >= 1
        assert metric(values, "reelcdn_origin_cache_hits_total", kind="counters") >= 3
        assert metric(values, "reelcdn_origin_cache_recomputes_total", kind="page") == 2
        assert metric(values, "reelcdn_origin_cache_up") == 1
        # GET /api/v1/videos/{id}: the ready row comes from the cache the second time.
        for _ in range(2):
            async with http.get(f"{origin.url}/api/v1/videos/{videos[0]}",
                                headers=origin.auth("bob")) as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ready"
        values = await metrics(http, origin)
        assert metric(values, "reelcdn_origin_cache_hits_total", kind="video") >= 1
        # Consistent hashing spread the keys over both servers.
        assert all(server.items() > 0 for server in memcached)


async def test_a_crowd_on_a_cold_hot_key_recomputes_once(
        tmp_path: Path, memcached: list[Memcached], http: aiohttp.ClientSession) -> None:
    async with running_origin(tmp_path, cache=settings(memcached)) as origin:
        await with_trending(http, origin)
        feed = origin.feed
        computed, lock = [], threading.Lock()
        real = feed._page_ids

        def counted(*args: Any) -> dict[str, Any]:  # the database's part of a page, counted
            with lock:
                computed.append(args[1:])
            time.sleep(0.3)  # slow enough that the whole crowd arrives meanwhile
            return real(*args)

        feed._page_ids = counted  # type: ignore[method-assign]
        crowd = 20
        answers = await asyncio.gather(*(trending(http, origin, user=f"u{i}")
                                         for i in range(crowd)))
        assert all(status == 200 for status, _ in answers)
        assert len({str([i["id"] for i in body["items"]]) for _, body in answers}) == 1
        assert computed == [(0, 3)], computed  # one recompute for the crowd
        values = await metrics(http, origin)
        assert metric(values, "reelcdn_origin_cache_recomputes_total", kind="page") == 1
        waited = metric(values, "reelcdn_origin_cache_lock_waits_total", kind="page",
                        result="value")
        hits = metric(values, "reelcdn_origin_cache_hits_total", kind="page")
        assert waited >= 1 and waited + hits == crowd - 1, (waited, hits)
        assert metric(values, "reelcdn_origin_cache_lock_waits_total", kind="page",
                      result="timeout") == 0


async def test_a_stale_page_is_served_while_one_caller_recomputes(
        tmp_path: Path, memcached: list[Memcached], http: aiohttp.ClientSession) -> None:
    async with running_origin(tmp_path, cache=settings(memcached, page_ttl=0.5)) as origin:
        await with_trending(http, origin)
        status, first = await trending(http, origin)
        assert status == 200
        await asyncio.sleep(0.7)  # past the page's TTL, well inside stale_ttl
        feed, real = origin.feed, origin.feed._page_ids

        def slow(*args: Any) -> dict[str, Any]:
            time.sleep(0.5)
            return real(*args)

        feed._page_ids = slow  # type: ignore[method-assign]
        answers = await asyncio.gather(*(trending(http, origin, user=f"u{i}") for i in range(4)))
        assert all(status == 200 and body["items"] == first["items"] for status, body in answers)
        values = await metrics(http, origin)
        assert metric(values, "reelcdn_origin_cache_stale_served_total", kind="page") >= 1


async def test_likes_and_deletes_are_seen_at_once(
        tmp_path: Path, memcached: list[Memcached], http: aiohttp.ClientSession) -> None:
    async with running_origin(tmp_path, cache=settings(memcached, counters_ttl=60)) as origin:
        videos = await with_trending(http, origin)
        _, first = await trending(http, origin)
        assert first["items"][0]["stats"]["likes"] == 0
        async with http.post(f"{origin.url}/api/v1/videos/{videos[0]}/like",
                             headers=origin.auth("carol")) as resp:
            assert resp.status == 200 and (await resp.json())["likes"] == 1
        _, again = await trending(http, origin)
        assert again["items"][0]["stats"] == {"views": 50, "likes": 1}
        async with http.delete(f"{origin.url}/api/v1/videos/{videos[0]}/like",
                               headers=origin.auth("carol")) as resp:
            assert (await resp.json())["likes"] == 0
        _, again = await trending(http, origin)
        assert again["items"][0]["stats"]["likes"] == 0
        url = f"{origin.url}/api/v1/videos/{videos[1]}"
        async with http.get(url, headers=origin.auth("bob")) as resp:
            assert resp.status == 200  # the ready row is cached now
        async with http.delete(url, headers=origin.auth("bob")) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(url, headers=origin.auth("bob")) as resp:
            assert resp.status == 410  # not the cached ready row
        _, after = await trending(http, origin)  # the cached page passes it over
        assert videos[1] not in [i["id"] for i in after["items"]]


async def test_memcached_down_the_feed_is_served_from_the_database_then_cached_again(
        tmp_path: Path, memcached: list[Memcached], http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reelcdn.origin.cache")
    async with running_origin(tmp_path, cache=settings(memcached)) as origin:
        videos = await with_trending(http, origin)
        status, first = await trending(http, origin)
        assert status == 200
        for server in memcached:
            server.stop()
        started = time.monotonic()
        for _ in range(5):
            status, body = await trending(http, origin)
            assert status == 200 and [i["id"] for i in body["items"]] == videos[:3]
            status, body = await trending(http, origin, cursor=first["next_cursor"])
            assert status == 200 and [i["id"] for i in body["items"]] == videos[3:]
        assert time.monotonic() - started < 5  # no stall per request
        values = await metrics(http, origin)
        assert metric(values, "reelcdn_origin_cache_up") == 0
        assert metric(values, "reelcdn_origin_cache_errors_total", kind="page") >= 1
        assert any(getattr(r, "fields", {}).get("event") == "cache_down" for r in caplog.records)
        for server in memcached:  # back, on the same ports
            server.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded: dead_timeout is 0.3 s
            status, _ = await trending(http, origin)
            assert status == 200
            values = await metrics(http, origin)
            if metric(values, "reelcdn_origin_cache_up") == 1:
                break
            await asyncio.sleep(0.2)
        assert metric(values, "reelcdn_origin_cache_up") == 1
        assert any(getattr(r, "fields", {}).get("event") == "cache_up" for r in caplog.records)
        before = metric(values, "reelcdn_origin_cache_hits_total", kind="page")
        await trending(http, origin)
        await trending(http, origin)
        values = await metrics(http, origin)
        assert metric(values, "reelcdn_origin_cache_hits_total", kind="page") > before


@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=250),
       st.integers(0, 2**32 - 1))
def test_the_compiled_key_hash_is_pymemcaches(key: str, seed: int) -> None:
    """Keys land on the servers pymemcache's own hash would put them on (another client of
    the same cluster finds them)."""
    assert murmur3_32(key, seed) == pure_murmur3.murmur3_32(key, seed)


def test_keys_memcached_cannot_take_are_hashed() -> None:
    cache = Memcache(CacheSettings(servers=(("127.0.0.1", 9),)), CollectorRegistry())
    try:
        assert cache.key("video", "abc") == "reelcdn:video:abc"
        for bad in ("a b", "a\x7fb", "a\nb", "é", "x" * 300):
            hashed = cache.key("video", bad)
            assert hashed.startswith("reelcdn:video#") and len(hashed) < 250, bad
    finally:
        cache.close()


def test_near_copies_answer_hot_keys_for_near_ttl(memcached: list[Memcached]) -> None:
    """A fresh value read (or written) once is answered from the process for ``near_ttl``,
    never past its own TTL; a write through the process replaces it, a delete drops it."""
    now = [1000.0]
    registry = CollectorRegistry()
    cache = Memcache(settings(memcached, near_ttl=1.0, counters_ttl=5.0), registry,
                     clock=lambda: now[0])
    reads: list[list[str]] = []

    def compute(missing: list[str]) -> dict[str, list[int]]:
        reads.append(missing)
        return {key: [len(reads), 0, 0] for key in missing}

    def count(name: str) -> float:
        return registry.get_sample_value(name, {"kind": "counters"}) or 0.0

    try:
        assert cache.get_many("counters", ["a", "b"], compute) == {"a": [1, 0, 0],
                                                                  "b": [1, 0, 0]}
        assert cache.get_many("counters", ["a", "b"], compute) == {"a": [1, 0, 0],
                                                                  "b": [1, 0, 0]}
        assert reads == [["a", "b"]]
        assert count("reelcdn_origin_cache_near_hits_total") == 2
        assert count("reelcdn_origin_cache_hits_total") == 0  # memcached not asked
        cache.set("counters", "a", [9, 9, 9])
        assert cache.get_many("counters", ["a"], compute) == {"a": [9, 9, 9]}
        now[0] += 1.5  # past near_ttl, inside counters_ttl: memcached answers
        assert cache.get_many("counters", ["a", "b"], compute) == {"a": [9, 9, 9],
                                                                  "b": [1, 0, 0]}
        assert count("reelcdn_origin_cache_hits_total") == 2
        cache.delete("counters", ["b"])
        assert cache.get_many("counters", ["b"], compute) == {"b": [2, 0, 0]}
        # A value whose own TTL ends before near_ttl is not kept past it.
        short = Memcache(settings(memcached, near_ttl=10.0, counters_ttl=0.5),
                         CollectorRegistry(), clock=lambda: now[0])
        try:
            short._near_put("k", 1, now[0] + 0.5, now[0])
            now[0] += 0.6
            assert short._near_get("k", now[0]) == (False, None)
        finally:
            short.close()
    finally:
        cache.close()


def test_near_copies_are_bounded() -> None:
    cache = Memcache(CacheSettings(servers=(("127.0.0.1", 9),), near_size=3),
                     CollectorRegistry())
    try:
        for n in range(10):
            cache._near_put(f"k{n}", n, 100.0, 0.0)
        assert list(cache._near) == ["k7", "k8", "k9"]  # the oldest went first
    finally:
        cache.close()
