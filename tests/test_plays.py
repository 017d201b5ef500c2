"""View counts from the edges (edge/video/plays.py, docs/plays.md).

Unit tests of the counter, the batches and the queue; then a real 3-tier topology over an
ffmpeg demo video whose edge posts its counts to a receiver on 127.0.0.1 that stands in for
the origin's ingest endpoint: it implements the contract (bearer token, JSON body, limits,
idempotency by batch id) and can be told to fail.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from nodeproc import wait_health
from player.demo_tiers import VIDEO, DemoTiers, free_ports, synthesise
from prometheus_client import generate_latest
from rawhttp import get

from reelcdn.edge.config import ConfigError, node_config_from_dict
from reelcdn.edge.metrics import node_registry, stats_snapshot, sum_snapshots
from reelcdn.edge.video import plays
from reelcdn.edge.video.features import _counts_plays
from reelcdn.manifests.meta import VideoMeta

TOKEN = "test-plays-token"


# -- the counter ----------------------------------------------------------------------------
def test_a_pair_counts_once_until_it_idles_past_the_ttl():
    counter = plays.PlayCounter(ttl=60.0, capacity=100)
    pair = ("sid-1", "v1")
    assert counter.lookup(pair, 0.0) is None
    seen = counter.start(pair, "v1", "sid-1", 0.0)
    assert counter.lookup(pair, 50.0) is seen          # active: expiry pushed to 110
    assert counter.lookup(pair, 100.0) is seen         # still within 60 s of the last segment
    assert counter.lookup(pair, 161.0) is None         # idle 61 s: a new play
    assert counter.complete(seen, "v1") and not counter.complete(seen, "v1")
    counter.start(("sid-2", "v1"), "v1", "sid-2", 0.0)
    counter.start(("1.2.3.4", 7, "v2"), "v2", None, 0.0)
    assert sorted(counter.take(), key=lambda i: i["video_id"]) == [
        {"video_id": "v1", "starts": 2, "completions": 1, "sessions": ["sid-1", "sid-2"]},
        {"video_id": "v2", "starts": 1, "completions": 0},   # no sid: no sessions key
    ]
    assert counter.take() == []


def test_the_counter_is_bounded():
    counter = plays.PlayCounter(ttl=60.0, capacity=50)
    for i in range(1000):
        counter.start((f"s{i}", "v"), "v", f"s{i}", float(i) / 1000)
    assert len(counter.seen) == 50
    assert counter.lookup(("s999", "v"), 1.0) is not None
    assert counter.lookup(("s0", "v"), 1.0) is None    # the least recent went first
    [item] = counter.take()
    assert item["starts"] == 1000 and len(item["sessions"]) == plays.MAX_SESSIONS_PER_VIDEO


def test_batches_stay_within_the_limits_and_keep_every_count():
    items = [{"video_id": f"video-{i}", "starts": i % 7 + 1, "completions": i % 3,
              "sessions": [f"{'s' * 60}{j:04d}" for j in range(i % 101)]}
             for i in range(3000)]
    batches = plays.build_batches("edge-a", 2, items)
    assert len(batches) > 1
    seen: list[dict[str, Any]] = []
    ids = set()
    for batch in batches:
        body = json.loads(batch.body)
        assert set(body) == {"batch", "node", "plays"} and body["node"] == "edge-a"
        assert body["batch"] == batch.id and batch.id not in ids
        ids.add(batch.id)
        node, _, hex_part = batch.id.partition(":")
        assert node == "edge-a" and len(hex_part) == 32 and hex_part.startswith("03")
        int(hex_part, 16)
        assert len(batch.body) <= plays.BATCH_BYTES
        assert len(body["plays"]) + sum(len(i.get("sessions", ())) for i in body["plays"]) \
            <= plays.BATCH_WEIGHT
        assert batch.plays == sum(i["starts"] + i["completions"] for i in body["plays"])
        seen += body["plays"]
    assert seen == items


def test_the_outbox_drops_the_oldest_but_never_the_batch_being_posted():
    box = plays.Outbox(limit=300)
    made = [plays.Batch(f"b{i}", b"x" * 100, 1) for i in range(5)]
    assert box.add(made[0]) == [] and box.add(made[1]) == [] and box.add(made[2]) == []
    assert box.add(made[3]) == [made[0]]
    assert box.add(made[4], keep=made[1]) == [made[2]]     # b1 is in flight: b2 goes
    assert [b.id for b in box.batches] == ["b1", "b3", "b4"] and box.bytes == 300
    big = plays.Batch("big", b"x" * 400, 1)
    assert box.add(big) == [made[1], made[3], made[4], big]
    assert len(box) == 0 and box.bytes == 0


def test_retry_after_and_backoff():
    assert plays.retry_after("7", 0.0) == 7.0
    assert plays.retry_after("Thu, 01 Jan 1970 00:00:30 GMT", 10.0) == 20.0
    assert plays.retry_after("soon", 0.0) is None and plays.retry_after(None, 0.0) is None
    rng = random.Random(1)
    for attempts in range(1, 40):
        delay = plays.backoff(attempts, rng)
        cap = min(plays.RETRY_MAX, plays.RETRY_BASE * 2 ** (attempts - 1))
        assert cap / 2 <= delay <= cap


def test_only_edges_with_a_plays_url_count():
    base = {"listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:1"}
    url = {"plays_url": "http://127.0.0.1:8300/api/v1/plays", "plays_token": TOKEN}
    assert _counts_plays(node_config_from_dict("e", {**base, **url}))
    assert not _counts_plays(node_config_from_dict("e", base))
    assert not _counts_plays(node_config_from_dict("e", {**base, "plays_url": ""}))
    assert not _counts_plays(node_config_from_dict("r", {**base, **url, "role": "regional"}))
    # A regional in [defaults] with the edges' URL needs no token: it never posts.
    node_config_from_dict("r", {**base, "role": "shield", "plays_url": url["plays_url"]})
    with pytest.raises(ConfigError, match="plays_url: an edge posting plays needs a token"):
        node_config_from_dict("e", {**base, "plays_url": url["plays_url"]})


def test_metrics_sum_over_workers():
    from reelcdn.edge.metrics import NodeStats

    one, two = NodeStats("e"), NodeStats("e")
    one.plays_started, two.plays_started = 3, 4
    one.plays_pending_bytes, two.plays_pending_bytes = 100, 50
    total = sum_snapshots([stats_snapshot(one), stats_snapshot(two)])
    assert total["counters"]["plays_started"] == 7
    assert total["levels"]["plays_pending_bytes"] == 150


# -- a receiver standing in for the origin's ingest endpoint ------------------------------------
class Receiver:
    """``POST /api/v1/plays`` as the contract has it. ``fail`` is a list of statuses answered
    (in order) before the real handling; ``counted`` sums each batch id once."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.fail: list[int] = []
        self.retry_after: str | None = None
        self.posts: list[dict[str, Any]] = []     # every body received, retries included
        self.batches: dict[str, dict[str, Any]] = {}
        self.starts: Counter[str] = Counter()
        self.completions: Counter[str] = Counter()
        self.sessions: dict[str, list[str]] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/plays"

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "bad token"}, status=401)
        if request.content_type != "application/json":
            return web.json_response({"error": "not json"}, status=400)
        if len(raw) > 1 << 20:
            return web.json_response({"error": "too big"}, status=413)
        body = json.loads(raw)
        self.posts.append(body)
        if self.fail:
            status = self.fail.pop(0)
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response({"error": "failing"}, status=status, headers=headers)
        if len(body["plays"]) > 10_000:
            return web.json_response({"error": "too many"}, status=413)
        duplicate = body["batch"] in self.batches
        if duplicate:
            assert self.batches[body["batch"]] == body  # a retry resends the same body
        else:
            self.batches[body["batch"]] = body
            for item in body["plays"]:
                self.starts[item["video_id"]] += item["starts"]
                self.completions[item["video_id"]] += item["completions"]
                self.sessions.setdefault(item["video_id"], []).extend(item.get("sessions", []))
        return web.json_response({"batch": body["batch"], "duplicate": duplicate, "unknown": 0})

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/api/v1/plays", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def eventually(check, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


# -- a real edge --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def origin_root(tmp_path_factory) -> Path:
    return synthesise(tmp_path_factory.mktemp("plays"))


@pytest.fixture(scope="module")
def segments(origin_root) -> list[str]:
    meta = VideoMeta.read(origin_root / "v" / VIDEO / "meta.json")
    rendition = meta.renditions[0]
    return [f"/v/{VIDEO}/{rendition.name}/{s.uri}" for s in rendition.segments]


@pytest.fixture
async def receiver():
    server = await Receiver().start()
    yield server
    await server.stop()


async def start_tiers(origin_root: Path, url: str, **keys: Any) -> DemoTiers:
    keys = {"plays_url": url, "plays_token": TOKEN, "plays_flush_interval": "200ms", **keys}
    return await DemoTiers(origin_root, **keys).start()


def cmcd(sid: str) -> dict[str, str]:
    return {"CMCD-Session": f'sid="{sid}"'}


async def fetch(tiers: DemoTiers, path: str, headers: dict[str, str] | None = None,
                method: str = "GET") -> int:
    response = await get(tiers.port, path, headers, method=method)
    return response.status


@pytest.mark.slow
@pytest.mark.usefixtures("no_internal_errors")
async def test_plays_count_once_per_sid_and_completions_at_the_last_segment(
        origin_root, segments, receiver):
    tiers = await start_tiers(origin_root, receiver.url)
    try:
        # The player's playlists bring meta.json to the edge: completions can be told.
        assert await fetch(tiers, f"/v/{VIDEO}/master.m3u8") == 200
        for _ in range(2):  # a session reloading its segments is still one play
            for path in segments:
                assert await fetch(tiers, path, cmcd("session-a")) == 200
        assert await fetch(tiers, segments[0], cmcd("session-b")) == 200
        # The sid in the query argument counts the same.
        query = "?CMCD=" + quote('sid="session-c"', safe="")
        assert await fetch(tiers, segments[0] + query) == 200
        # Not plays: HEAD, an init section, a missing segment, a browser's prefetch.
        assert await fetch(tiers, segments[0], cmcd("session-d"), method="HEAD") == 200
        assert await fetch(tiers, f"/v/{VIDEO}/{segments[0].split('/')[3]}/init.mp4",
                           cmcd("session-e")) == 200
        assert await fetch(tiers, f"/v/{VIDEO}/360p/seg_99999.m4s", cmcd("session-f")) == 404
        assert await fetch(tiers, segments[0], {**cmcd("session-g"),
                                                "Sec-Purpose": "prefetch"}) == 200
        await eventually(lambda: receiver.starts[VIDEO] >= 3)
        await asyncio.sleep(0.5)  # nothing more arrives
        assert receiver.starts == {VIDEO: 3}
        assert receiver.completions == {VIDEO: 1}
        assert sorted(receiver.sessions[VIDEO]) == ["session-a", "session-b", "session-c"]
        stats = tiers.edge.node.stats
        assert (stats.plays_started, stats.plays_completed) == (3, 1)
        assert stats.plays_batches_sent == len(receiver.batches) >= 1
        # Parents never count: they see the edge's fills.
        for name in ("regional-1", "shield-1"):
            assert tiers.servers[name].node.stats.plays_started == 0
        text = generate_latest(node_registry(stats, lambda: {})).decode()
        assert 'reelcdn_plays_started_total{node="edge-a"} 3.0' in text
        assert 'reelcdn_plays_completed_total{node="edge-a"} 1.0' in text
        assert 'reelcdn_plays_pending_batches{node="edge-a"} 0.0' in text
    finally:
        await tiers.stop()


@pytest.mark.slow
@pytest.mark.usefixtures("no_internal_errors")
async def test_without_sid_the_client_address_and_user_agent_are_the_session(
        origin_root, segments, receiver):
    tiers = await start_tiers(origin_root, receiver.url)
    try:
        for agent in ("player-1", "player-1", "player-2"):
            assert await fetch(tiers, segments[0], {"User-Agent": agent}) == 200
        # A conditional request answered 304 is a view too (a replay from the player's cache).
        etag = (await get(tiers.port, segments[1], {"User-Agent": "player-1"})).header("etag")
        assert etag
        assert await fetch(tiers, segments[1], {"User-Agent": "player-3",
                                                "If-None-Match": etag}) == 304
        await eventually(lambda: receiver.starts[VIDEO] >= 3)
        await asyncio.sleep(0.5)
        assert receiver.starts == {VIDEO: 3}  # player-1 (three segments), player-2, player-3
        assert tiers.edge.node.stats.plays_started == 3
        # No sid: no sessions listed (the key is left out).
        assert all("sessions" not in item for body in receiver.batches.values()
                   for item in body["plays"])
    finally:
        await tiers.stop()


@pytest.mark.slow
@pytest.mark.usefixtures("no_internal_errors")
async def test_a_batch_answered_503_is_retried_with_the_same_id_and_counted_once(
        origin_root, segments, receiver):
    receiver.fail = [503]
    receiver.retry_after = "1"
    tiers = await start_tiers(origin_root, receiver.url)
    try:
        assert await fetch(tiers, segments[0], cmcd("retry-me")) == 200
        await eventually(lambda: len(receiver.batches) == 1)
        first, second = receiver.posts[0], receiver.posts[1]
        assert first == second  # same batch id, same body
        assert receiver.starts == {VIDEO: 1}
        stats = tiers.edge.node.stats
        assert (stats.plays_batches_retried, stats.plays_batches_sent) == (1, 1)
    finally:
        await tiers.stop()


@pytest.mark.slow
@pytest.mark.usefixtures("no_internal_errors")
async def test_a_duplicate_answer_after_a_lost_one_is_counted_once(origin_root, segments,
                                                                    receiver):
    """The origin counted the batch but its answer never arrived: the retry is a duplicate."""
    tiers = await start_tiers(origin_root, receiver.url)
    reporter = tiers.edge.node.features.plays.reporter
    try:
        assert await fetch(tiers, segments[0], cmcd("lost-answer")) == 200
        await eventually(lambda: len(receiver.batches) == 1)
        batch = plays.Batch(*[receiver.posts[0]["batch"], json.dumps(
            receiver.posts[0], separators=(",", ":")).encode(), 1])
        assert await reporter._post(batch) == ("sent", 0.0)
        assert receiver.starts == {VIDEO: 1}
        assert tiers.edge.node.stats.plays_batches_duplicate == 1
    finally:
        await tiers.stop()


@pytest.mark.slow
@pytest.mark.usefixtures("no_internal_errors")
async def test_origin_down_keeps_a_bounded_queue_and_counts_what_it_drops(origin_root,
                                                                        segments):
    (closed,) = free_ports(1)
    url = f"http://127.0.0.1:{closed}/api/v1/plays"
    tiers = await start_tiers(origin_root, url, plays_max_pending=600)
    stats = tiers.edge.node.stats
    outbox = tiers.edge.node.features.plays.reporter.outbox
    receiver = Receiver()
    try:
        for i in range(12):  # about one play per flush interval: a batch each
            assert await fetch(tiers, segments[0], cmcd(f"down-{i}")) == 200
            await asyncio.sleep(0.25)
        await eventually(lambda: stats.plays_batches_dropped > 0)
        assert 0 < outbox.bytes == stats.plays_pending_bytes <= 600
        assert stats.plays_pending_batches == len(outbox) >= 1
        assert stats.plays_batches_retried >= 1
        queued = sum(batch.plays for batch in outbox.batches)
        assert stats.plays_lost + queued == stats.plays_started == 12
        # The origin comes back: what is left is posted, in order, and counted once.
        await receiver.start(closed)
        await eventually(lambda: stats.plays_pending_batches == 0, timeout=40)
        assert receiver.starts[VIDEO] == queued
        sids = receiver.sessions[VIDEO]
        assert sids == sorted(sids, key=lambda sid: int(sid.split("-")[1]))  # in order
        assert sids[-1] == "down-11"
    finally:
        await tiers.stop()
        await receiver.stop()


@pytest.mark.slow
async def test_a_401_drops_the_batch_and_is_not_retried(origin_root, segments, caplog):
    receiver = await Receiver(token="another-token").start()
    tiers = await start_tiers(origin_root, receiver.url)
    stats = tiers.edge.node.stats
    try:
        for i in range(3):
            assert await fetch(tiers, segments[0], cmcd(f"refused-{i}")) == 200
            await asyncio.sleep(0.3)
        await eventually(lambda: stats.plays_batches_rejected == 3)
        await asyncio.sleep(1.5)  # well past a first retry's back-off
        assert stats.plays_batches_rejected == 3 and stats.plays_batches_retried == 0
        assert stats.plays_lost == 3 and stats.plays_pending_batches == 0
        refused = [r for r in caplog.records if "answered 401" in r.getMessage()]
        assert len(refused) == 1  # logged once
    finally:
        await tiers.stop()
        await receiver.stop()


@pytest.mark.slow
@pytest.mark.usefixtures("no_internal_errors")
async def test_a_graceful_stop_posts_what_was_counted(origin_root, segments, receiver):
    tiers = await start_tiers(origin_root, receiver.url, plays_flush_interval="1h")
    try:
        assert await fetch(tiers, segments[0], cmcd("before-stop")) == 200
        await asyncio.sleep(0.3)
        assert receiver.posts == []  # the next cut is an hour away
    finally:
        await tiers.stop()
    assert receiver.starts == {VIDEO: 1} and receiver.sessions[VIDEO] == ["before-stop"]


@pytest.mark.slow
async def test_each_worker_posts_its_own_batches_and_the_master_sums_them(
        origin, receiver, tmp_path):
    """``workers = 2``: batches from both workers (their tag in the id), every play counted
    once at the origin, and the master's /metrics the sum."""
    origin.set("/v/demo-1/360p/seg_00000.m4s", b"s" * 2048,
               headers={"Cache-Control": "max-age=3600"})
    port, admin = free_ports(2)
    config = tmp_path / "node.toml"
    config.write_text(f"""
[node.edge-w]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
upstream = "{origin.url}"
workers = 2
plays_url = "{receiver.url}"
plays_token = "{TOKEN}"
plays_flush_interval = "200ms"
""")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reelcdn.cli", "node", "--config", str(config), "--name",
        "edge-w", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_health(admin, deadline=30.0)
        for i in range(40):  # a connection each: the kernel spreads them over the workers
            response = await get(port, "/v/demo-1/360p/seg_00000.m4s", cmcd(f"w-{i}"))
            assert response.status == 200
        await eventually(lambda: receiver.starts["demo-1"] == 40, timeout=20)
        tags = {batch.split(":")[1][:2] for batch in receiver.batches}
        assert tags == {"01", "02"}
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{admin}/metrics") as answer:
            text = await answer.text()
        assert 'reelcdn_plays_started_total{node="edge-w"} 40.0' in text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()
