"""``POST /api/v1/plays``: the edges' play counts on a real origin over loopback — the shared
token, idempotent batches, unknown videos, the limits, seen videos from CMCD sessions, the
batch ids' cleanup — and the ``[api] plays_token`` / ``plays_token_env`` keys."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from feed_fixtures import PLAYS_TOKEN, Origin, running_origin, video_id

from reelcdn.edge.config import ConfigError, topology_from_text
from reelcdn.origin.config import services_from_topology
from reelcdn.origin.feed.store import BATCH_KEEP


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    async with running_origin(tmp_path) as made:
        yield made


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, origin: Origin, body: Any,
               token: str | None = PLAYS_TOKEN, content_type: str = "application/json",
               ) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"{origin.url}/api/v1/plays", data=data, headers=headers) as resp:
        return resp.status, await resp.json()


def views(origin: Origin, video: str) -> tuple[int, int]:
    counters = origin.feed.store.counters([video])
    return (counters[video].views, counters[video].completions) if video in counters else (0, 0)


async def test_a_batch_is_counted_once(origin: Origin, http: aiohttp.ClientSession) -> None:
    a, b = origin.video("bob"), origin.video("bob", status="processing")  # both play
    body = {"batch": "edge-a:" + "0123456789abcdef" * 2, "node": "edge-a", "plays": [
        {"video_id": a, "starts": 3, "completions": 2, "sessions": ["s1", "s2"]},
        {"video_id": b, "starts": 1, "completions": 0},
        {"video_id": a, "starts": 1, "completions": 1},  # the same video twice: summed
    ]}
    status, answer = await post(http, origin, body)
    assert status == 200
    assert answer == {"batch": body["batch"], "duplicate": False, "unknown": 0}
    for _ in range(2):  # a retry (the answer was lost), then another
        status, answer = await post(http, origin, body)
        assert status == 200 and answer["duplicate"] is True and answer["unknown"] == 0
    assert views(origin, a) == (4, 3) and views(origin, b) == (1, 0)
    # Another batch id is another batch.
    status, answer = await post(http, origin, {**body, "batch": "edge-a:" + "f" * 32})
    assert answer["duplicate"] is False and views(origin, a) == (8, 6)


async def test_unknown_videos_are_counted_not_refused(origin: Origin,
                                                      http: aiohttp.ClientSession) -> None:
    ready = origin.video("bob")
    uploading = origin.video("bob", status="uploading")
    deleted = origin.video("bob", status="deleted")
    batch = "edge-b:" + "a" * 32
    body = {"batch": batch, "node": "edge-b", "plays": [
        {"video_id": ready, "starts": 1, "completions": 1},
        {"video_id": video_id(10**30), "starts": 5, "completions": 0},  # no such video
        {"video_id": "not-a-video-id", "starts": 5, "completions": 0},
        {"video_id": uploading, "starts": 1, "completions": 0},
        {"video_id": deleted, "starts": 1, "completions": 0},
    ]}
    status, answer = await post(http, origin, body)
    assert status == 200 and answer == {"batch": batch, "duplicate": False, "unknown": 4}
    status, answer = await post(http, origin, body)
    assert answer == {"batch": batch, "duplicate": True, "unknown": 4}  # as first counted
    assert views(origin, ready) == (1, 1) and views(origin, uploading) == (0, 0)
    status, answer = await post(http, origin, {"batch": "edge-b:" + "b" * 32, "node": "edge-b",
                                               "plays": []})
    assert status == 200 and answer["unknown"] == 0


async def test_the_token_is_the_plays_token(origin: Origin,
                                            http: aiohttp.ClientSession) -> None:
    body = {"batch": "edge-a:" + "c" * 32, "node": "edge-a", "plays": []}
    for token in (None, "", "wrong-token-0123456789", PLAYS_TOKEN[:-1], PLAYS_TOKEN + "x"):
        status, answer = await post(http, origin, body, token=token)
        assert status == 401 and answer["error"] == "unauthorized", token
    # A user token is not the plays token.
    user = origin.auth("alice")["Authorization"].split(" ", 1)[1]
    status, _ = await post(http, origin, body, token=user)
    assert status == 401
    async with http.post(f"{origin.url}/api/v1/plays", json=body,
                         headers={"Authorization": f"Basic {PLAYS_TOKEN}"}) as resp:
        assert resp.status == 401
    status, _ = await post(http, origin, body)
    assert status == 200


@pytest.mark.parametrize("body, code", [
    (b"not json", "bad_json"),
    (b"[1, 2]", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    ({"node": "edge-a", "plays": []}, "bad_batch"),
    ({"batch": "edge-a:1234", "node": "edge-a", "plays": []}, "bad_batch"),
    ({"batch": "edge a:" + "a" * 32, "node": "edge-a", "plays": []}, "bad_batch"),
    ({"batch": "edge-a:" + "g" * 32, "node": "edge-a", "plays": []}, "bad_batch"),
    ({"batch": "edge-a:" + "a" * 32, "plays": []}, "bad_node"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a"}, "bad_plays"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a", "plays": {}}, "bad_plays"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a", "plays": [7]}, "bad_plays"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a", "plays": [{"starts": 1}]}, "bad_plays"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a",
      "plays": [{"video_id": "v", "starts": -1}]}, "bad_plays"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a",
      "plays": [{"video_id": "v", "starts": 1.5}]}, "bad_plays"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a",
      "plays": [{"video_id": "v", "starts": True}]}, "bad_plays"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a",
      "plays": [{"video_id": "v", "starts": 1, "completions": "2"}]}, "bad_plays"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a",
      "plays": [{"video_id": "v", "starts": 1, "sessions": "s1"}]}, "bad_plays"),
    ({"batch": "edge-a:" + "a" * 32, "node": "edge-a",
      "plays": [{"video_id": "v", "starts": 1, "sessions": [1]}]}, "bad_plays"),
])
async def test_a_malformed_body_is_400(origin: Origin, http: aiohttp.ClientSession,
                                       body: Any, code: str) -> None:
    status, answer = await post(http, origin, body)
    assert status == 400 and answer["error"] == code, answer
    assert answer["detail"]


async def test_limits_and_content_type(origin: Origin, http: aiohttp.ClientSession) -> None:
    vid = origin.video("bob")
    entry = {"video_id": vid, "starts": 1, "completions": 0}
    many = {"batch": "edge-a:" + "d" * 32, "node": "edge-a", "plays": [entry] * 10_001}
    status, answer = await post(http, origin, many)
    assert status == 413 and answer["error"] == "too_many_plays"
    status, answer = await post(http, origin, {**many, "plays": [entry] * 10_000})
    assert status == 200 and views(origin, vid) == (10_000, 0)
    huge = {"batch": "edge-a:" + "e" * 32, "node": "edge-a", "plays": [],
            "pad": "x" * (1 << 20)}
    status, answer = await post(http, origin, huge)
    assert status == 413 and answer["error"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"batch": "edge-a:' + b"e" * 32 + b'", "pad": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    async with http.post(f"{origin.url}/api/v1/plays", data=chunks(),
                         headers={"Authorization": f"Bearer {PLAYS_TOKEN}",
                                  "Content-Type": "application/json"}) as resp:
        assert resp.status == 413
    status, answer = await post(http, origin, {"batch": "edge-a:" + "f" * 32, "node": "x",
                                               "plays": []}, content_type="text/plain")
    assert status == 415 and answer["error"] == "bad_content_type"
    status, answer = await post(http, origin, {"batch": "edge-a:" + "f" * 32, "node": "x",
                                               "plays": []},
                                content_type="application/json; charset=utf-8")
    assert status == 200


async def test_batch_ids_are_kept_48_hours_then_dropped(origin: Origin,
                                                        http: aiohttp.ClientSession) -> None:
    vid = origin.video("bob")
    body = {"batch": "edge-a:" + "1" * 32, "node": "edge-a",
            "plays": [{"video_id": vid, "starts": 1}]}
    await post(http, origin, body)
    store = origin.feed.store
    origin.clock.now += 24 * 3600
    store.cleanup(origin.clock.now, 0)
    assert (await post(http, origin, body))[1]["duplicate"] is True  # a day later: still
    origin.clock.now += BATCH_KEEP  # past the 48 h: forgotten by the sweep
    assert store.cleanup(origin.clock.now, 0)["batches"] == 1
    assert (await post(http, origin, body))[1]["duplicate"] is False


async def test_sessions_mark_videos_seen_for_their_user(origin: Origin,
                                                        http: aiohttp.ClientSession) -> None:
    vid = origin.video("bob")
    async with http.post(f"{origin.url}/api/v1/sessions/6e2fc1f6-sid",
                         headers=origin.auth("alice")) as resp:
        assert resp.status == 204
    async with http.post(f"{origin.url}/api/v1/sessions/bad%20sid",
                         headers=origin.auth("alice")) as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "bad_session"
    status, _ = await post(http, origin, {"batch": "edge-a:" + "2" * 32, "node": "edge-a",
                                          "plays": [{"video_id": vid, "starts": 1,
                                                     "sessions": ["6e2fc1f6-sid", "other"]}]})
    assert status == 200
    assert origin.feed.store.seen_of("alice", 10) == [vid]


async def test_plays_are_off_without_a_token(tmp_path: Path,
                                             http: aiohttp.ClientSession) -> None:
    async with running_origin(tmp_path, plays_token=None) as made:
        status, answer = await post(http, made, {"batch": "edge-a:" + "3" * 32,
                                                 "node": "edge-a", "plays": []})
        assert status == 404 and answer["error"] == "plays_disabled"


# -- the configuration keys --------------------------------------------------------------------

NODES = """
[origin.media]
type = "fs"
root = "media"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:18100"
origins = ["media"]
"""


def services(text: str, tmp_path: Path) -> Any:
    return services_from_topology(topology_from_text(NODES + text, base_dir=str(tmp_path)))


def config_error(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        services(text, tmp_path).plays_token()
    return str(caught.value)


def test_plays_token_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert services("", tmp_path).plays_token() is None
    got = services('[api]\nplays_token = "0123456789abcdef"\n', tmp_path)
    assert got.plays_token() == "0123456789abcdef"
    assert "api.plays_token" in config_error('[api]\nplays_token = "short"\n', tmp_path)
    assert "api.plays_token" in config_error("[api]\nplays_token = 12345678901234567\n",
                                             tmp_path)
    monkeypatch.setenv("REELCDN_TEST_PLAYS", "from-the-environment-0123")
    got = services('[api]\nplays_token_env = "REELCDN_TEST_PLAYS"\n', tmp_path)
    assert got.plays_token() == "from-the-environment-0123"
    monkeypatch.setenv("REELCDN_TEST_PLAYS", "short")
    assert "shorter than 16" in config_error('[api]\nplays_token_env = "REELCDN_TEST_PLAYS"\n',
                                             tmp_path)
    monkeypatch.delenv("REELCDN_TEST_PLAYS")
    assert "not set" in config_error('[api]\nplays_token_env = "REELCDN_TEST_PLAYS"\n',
                                     tmp_path)
    assert "environment variable" in config_error('[api]\nplays_token_env = "1-bad"\n',
                                                  tmp_path)
    assert "not both" in config_error(
        '[api]\nplays_token = "0123456789abcdef"\nplays_token_env = "X"\n', tmp_path)


def test_feed_keys(tmp_path: Path) -> None:
    got = services('[api]\ntrending_interval = "30s"\ntrending_window = "1d"\n'
                   'trending_half_life = "2h"\nfeed_pool = 100\nfeed_depth = 50\n'
                   'feed_cursor_ttl = "15m"\n', tmp_path)
    assert (got.api.trending_interval, got.api.trending_window, got.api.trending_half_life,
            got.api.feed_pool, got.api.feed_depth, got.api.feed_cursor_ttl) == \
        (30.0, 86400.0, 7200.0, 100, 50, 900.0)
    assert "api.feed_depth" in config_error("[api]\nfeed_depth = 5\n", tmp_path)
    assert "api.trending_interval" in config_error('[api]\ntrending_interval = "0s"\n',
                                                   tmp_path)


async def test_batches_as_the_edge_builds_them(origin: Origin,
                                               http: aiohttp.ClientSession) -> None:
    """The edge's own encoder (``edge/video/plays.py``): its batches are accepted as sent."""
    from reelcdn.edge.video.plays import build_batches

    vid = origin.video("bob")
    items = [{"video_id": vid, "starts": 2, "completions": 1, "sessions": ["sid-a", "sid-b"]},
             {"video_id": "unknown-video", "starts": 1, "completions": 0}]
    for worker in (None, 3):
        for batch in build_batches("edge-a", worker, items):
            async with http.post(f"{origin.url}/api/v1/plays", data=batch.body,
                                 headers={"Authorization": f"Bearer {PLAYS_TOKEN}",
                                          "Content-Type": "application/json"}) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"batch": batch.id, "duplicate": False,
                                             "unknown": 1}
    assert views(origin, vid) == (4, 2)
