"""The feed API on a real origin service over loopback: the three feeds, their signed cursors
and stable pages, likes, follows, seen videos, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from feed_fixtures import KEYS, Origin, running_origin
from prometheus_client.parser import text_string_to_metric_families

from reelcdn.origin.feed.cursors import Cursor, make_cursor
from reelcdn.origin.users import Keys


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    async with running_origin(tmp_path) as made:
        yield made


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_feed(http: aiohttp.ClientSession, origin: Origin, user: str = "alice",
                   **query: Any) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{origin.url}/api/v1/feed", params={k: str(v) for k, v in
                                                             query.items()},
                        headers=origin.auth(user)) as resp:
        return resp.status, await resp.json()


async def all_pages(http: aiohttp.ClientSession, origin: Origin, user: str, feed_type: str,
                    limit: int, between: Any = None) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):  # bounded
        query: dict[str, Any] = {"feed_type": feed_type, "limit": limit}
        if cursor:
            query["cursor"] = cursor
        status, body = await get_feed(http, origin, user, **query)
        assert status == 200, body
        ids += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids
        if between is not None:
            await between()
    raise AssertionError("the feed never ended")


async def send(http: aiohttp.ClientSession, method: str, url: str, origin: Origin,
               user: str = "alice") -> tuple[int, dict[str, Any]]:
    async with http.request(method, url, headers=origin.auth(user)) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else {})


async def test_every_route_needs_a_user_token(origin: Origin,
                                              http: aiohttp.ClientSession) -> None:
    vid = origin.video("bob")
    for method, path in (("GET", "/api/v1/feed"), ("POST", f"/api/v1/videos/{vid}/like"),
                         ("DELETE", f"/api/v1/videos/{vid}/like"),
                         ("POST", "/api/v1/users/bob/follow"),
                         ("POST", "/api/v1/sessions/abc")):
        async with http.request(method, origin.url + path) as resp:
            assert resp.status == 401, path
            assert (await resp.json())["error"] == "unauthorized"
        async with http.request(method, origin.url + path,
                                headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401, path


async def test_feed_type_and_limit_are_checked(origin: Origin,
                                               http: aiohttp.ClientSession) -> None:
    status, body = await get_feed(http, origin, feed_type="popular")
    assert status == 400 and body["error"] == "bad_feed_type"
    for limit in ("0", "51", "x", "-1", "1e3", ""):
        status, body = await get_feed(http, origin, feed_type="trending", limit=limit)
        assert status == 400 and body["error"] == "bad_limit", limit
    for _ in range(12):
        origin.video("bob", hashtags="#cats")
    await origin.recompute()
    status, body = await get_feed(http, origin)  # for_you, 10 by default
    assert status == 200 and len(body["items"]) == 10 and body["next_cursor"]
    status, body = await get_feed(http, origin, limit=50)
    assert status == 200 and len(body["items"]) == 12 and body["next_cursor"] is None


async def test_following_lists_followed_creators_ready_videos_newest_first(
        origin: Origin, http: aiohttp.ClientSession) -> None:
    b1 = origin.video("bob", "b1", "#cats #fun")
    origin.video("dave", "d1")
    c1 = origin.video("carol", "c1")
    origin.video("bob", "processing", status="processing")
    origin.video("carol", "failed", status="failed")
    b2 = origin.video("bob", "b2")
    status, body = await get_feed(http, origin, feed_type="following")
    assert status == 200 and body == {"feed_type": "following", "items": [],
                                      "next_cursor": None}
    for name in ("bob", "carol"):
        status, answer = await send(http, "POST", f"{origin.url}/api/v1/users/{name}/follow",
                                    origin)
        assert status == 200 and answer == {"user": name, "following": True}
    status, body = await get_feed(http, origin, feed_type="following")
    assert [item["id"] for item in body["items"]] == [b2, c1, b1]
    first = body["items"][2]
    assert first == {
        "id": b1, "title": "b1", "caption": "c", "hashtags": ["cats", "fun"], "owner": "bob",
        "poster": f"/v/{b1}/poster.jpg", "playback": f"/v/{b1}/master.m3u8",
        "duration": 12.5, "created": first["created"], "stats": {"views": 0, "likes": 0},
        "viewer": {"liked": False, "following": True},
    }
    # Unfollowing: the next session leaves carol out.
    status, _ = await send(http, "DELETE", f"{origin.url}/api/v1/users/carol/follow", origin)
    assert status == 200
    assert await all_pages(http, origin, "alice", "following", 1) == [b2, b1]


async def test_follow_rules(origin: Origin, http: aiohttp.ClientSession) -> None:
    origin.video("bob")
    url = f"{origin.url}/api/v1/users/%s/follow"
    status, body = await send(http, "POST", url % "alice", origin)
    assert status == 400 and body["error"] == "cannot_follow_self"
    status, body = await send(http, "POST", url % "nobody", origin)
    assert status == 404 and body["error"] == "unknown_user"
    status, body = await send(http, "POST", url % "bad.name", origin)
    assert status == 400 and body["error"] == "bad_user"
    for _ in range(2):  # idempotent
        assert (await send(http, "POST", url % "bob", origin))[0] == 200
    assert origin.feed.store.follows_of("alice", 10) == ["bob"]
    for _ in range(2):
        assert (await send(http, "DELETE", url % "bob", origin))[0] == 200
    assert origin.feed.store.follows_of("alice", 10) == []
    async with http.get(url % "bob", headers=origin.auth()) as resp:
        assert resp.status == 405 and "POST" in resp.headers["Allow"]


async def test_likes_are_idempotent_and_counted(origin: Origin,
                                                http: aiohttp.ClientSession) -> None:
    vid = origin.video("bob")
    url = f"{origin.url}/api/v1/videos/{vid}/like"
    for _ in range(2):
        status, body = await send(http, "POST", url, origin)
        assert status == 200 and body == {"video": vid, "liked": True, "likes": 1}
    status, body = await send(http, "POST", url, origin, user="carol")
    assert body["likes"] == 2
    status, body = await send(http, "DELETE", url, origin)
    assert status == 200 and body == {"video": vid, "liked": False, "likes": 1}
    status, body = await send(http, "DELETE", url, origin)
    assert body["likes"] == 1
    await origin.recompute()
    status, page = await get_feed(http, origin, user="dave", feed_type="for_you")
    assert page["items"][0]["stats"] == {"views": 0, "likes": 1}
    # Each viewer sees their own marks: carol likes it, alice unliked it.
    assert page["items"][0]["viewer"] == {"liked": False, "following": False}
    status, page = await get_feed(http, origin, user="carol", feed_type="for_you")
    assert page["items"][0]["viewer"] == {"liked": True, "following": False}
    for bad in ("nosuchvideo", "a" * 26):
        status, body = await send(http, "POST", f"{origin.url}/api/v1/videos/{bad}/like",
                                  origin)
        assert status == 404 and body["error"] == "not_found"
    uploading = origin.video("bob", status="uploading")
    status, _ = await send(http, "POST", f"{origin.url}/api/v1/videos/{uploading}/like", origin)
    assert status == 404


async def test_trending_is_recomputed_in_the_background_not_per_request(
        origin: Origin, http: aiohttp.ClientSession) -> None:
    a, b, c = (origin.video("bob", t) for t in "abc")
    origin.video("bob", "never played")
    await origin.plays(http, [{"video_id": a, "starts": 5, "completions": 1},
                              {"video_id": b, "starts": 9, "completions": 2}])
    await origin.recompute()
    assert await all_pages(http, origin, "alice", "trending", 2) == [b, a]
    await origin.plays(http, [{"video_id": c, "starts": 50}])
    assert await all_pages(http, origin, "alice", "trending", 2) == [b, a]  # not yet
    await origin.recompute()
    status, body = await get_feed(http, origin, feed_type="trending", limit=5)
    assert [item["id"] for item in body["items"]] == [c, b, a]
    assert body["items"][0]["stats"] == {"views": 50, "likes": 0}
    # Old views decay out of the window.
    origin.clock.now += 49 * 3600
    await origin.recompute()
    assert await all_pages(http, origin, "alice", "trending", 2) == []


async def test_trending_recomputes_on_its_own(tmp_path: Path,
                                              http: aiohttp.ClientSession) -> None:
    import asyncio

    async with running_origin(tmp_path, trending_interval=0.05) as made:
        vid = made.video("bob")
        await made.plays(http, [{"video_id": vid, "starts": 3}])
        for _ in range(100):  # bounded: 5 s
            if made.feed.trending_ids == [vid]:
                break
            await asyncio.sleep(0.05)
        assert made.feed.trending_ids == [vid]


async def test_cursors_are_signed_expiring_and_bound(origin: Origin,
                                                     http: aiohttp.ClientSession) -> None:
    for _ in range(5):
        origin.video("bob")
    await origin.recompute()
    status, body = await get_feed(http, origin, feed_type="for_you", limit=2)
    cursor = body["next_cursor"]
    assert status == 200 and cursor.startswith("c1.")
    head, kid, payload, sig = cursor.split(".")
    forged = [
        cursor[:-1] + ("A" if cursor[-1] != "A" else "B"),
        f"{head}.{kid}.{payload[:-2]}xx.{sig}",
        "garbage", "c1.k1.e30.AAAA",
        make_cursor(Cursor("alice", "for_you", "for_you:x", 0, int(origin.clock.now) + 60),
                    Keys({"k1": b"x" * 40}, "k1")),
    ]
    for text in forged:
        status, answer = await get_feed(http, origin, feed_type="for_you", cursor=text)
        assert status == 400 and answer["error"] == "bad_cursor", text
    status, answer = await get_feed(http, origin, user="mallory", feed_type="for_you",
                                    cursor=cursor)
    assert status == 400 and answer["error"] == "cursor_mismatch"
    status, answer = await get_feed(http, origin, feed_type="trending", cursor=cursor)
    assert status == 400 and answer["error"] == "cursor_mismatch"
    status, answer = await get_feed(http, origin, feed_type="for_you", limit=2, cursor=cursor)
    assert status == 200 and len(answer["items"]) == 2
    origin.clock.now += 3601
    status, answer = await get_feed(http, origin, feed_type="for_you", cursor=cursor)
    assert status == 400 and answer["error"] == "cursor_expired"
    # A genuine cursor whose session the store dropped is expired too.
    ghost = make_cursor(Cursor("alice", "for_you", "for_you:gone", 0,
                               int(origin.clock.now) + 60), KEYS)
    status, answer = await get_feed(http, origin, feed_type="for_you", cursor=ghost)
    assert status == 400 and answer["error"] == "cursor_expired"


@pytest.mark.parametrize("feed_type", ["for_you", "trending", "following"])
async def test_pages_never_repeat_or_skip_while_videos_arrive(
        origin: Origin, http: aiohttp.ClientSession, feed_type: str) -> None:
    """Between pages: new videos, plays reversing the popularity order (a live ``(score, id)``
    keyset would repeat some items and skip others), recomputes. A session's pages are exactly
    its first ranking, each item once; the videos that arrived meanwhile are in the next."""
    origin.video("bob")  # never played: not trending
    await send(http, "POST", f"{origin.url}/api/v1/users/bob/follow", origin)
    videos = [origin.video("bob" if n % 2 else "carol", hashtags="#x") for n in range(23)]
    await origin.plays(http, [{"video_id": v, "starts": n + 1} for n, v in enumerate(videos)])
    await origin.recompute()
    ranked_at_start = list(origin.feed.trending_ids)
    fresh: list[str] = []

    async def churn() -> None:
        fresh.append(origin.video("bob", hashtags="#x"))
        await origin.plays(http, [{"video_id": v, "starts": 1000 - 10 * n}
                                  for n, v in enumerate([*fresh, *videos])])
        await origin.recompute()

    first = await all_pages(http, origin, "alice", feed_type, 4, between=churn)
    assert len(first) == len(set(first)), "an item was repeated"
    assert len(fresh) >= 2 and not set(fresh) & set(first)
    expected = {"following": 12, "for_you": 24, "trending": 23}[feed_type]
    assert len(first) == expected, "an item was skipped"
    if feed_type == "trending":
        assert first == ranked_at_start
    again = await all_pages(http, origin, "alice", feed_type, 50)
    assert set(again) == set(first) | set(fresh)


async def test_for_you_leaves_out_seen_and_own_videos(origin: Origin,
                                                      http: aiohttp.ClientSession) -> None:
    mine = origin.video("alice")
    watched = origin.video("bob", hashtags="#cats")
    other = origin.video("bob", hashtags="#cats")
    status, _ = await send(http, "POST", f"{origin.url}/api/v1/sessions/sess-1", origin)
    assert status == 204
    status, body = await send(http, "POST", f"{origin.url}/api/v1/sessions/sess-1", origin,
                              user="mallory")
    assert status == 409 and body["error"] == "session_taken"
    await origin.plays(http, [{"video_id": watched, "starts": 1, "sessions": ["sess-1"]},
                              {"video_id": other, "starts": 1, "sessions": ["unregistered"]}])
    await origin.recompute()
    ids = await all_pages(http, origin, "alice", "for_you", 10)
    assert ids == [other]
    assert mine not in ids and watched not in ids
    assert set(await all_pages(http, origin, "carol", "for_you", 10)) == {mine, watched, other}


async def test_deleted_videos_are_passed_over(origin: Origin,
                                              http: aiohttp.ClientSession) -> None:
    videos = [origin.video("bob") for _ in range(4)]
    await origin.recompute()
    status, body = await get_feed(http, origin, feed_type="for_you", limit=2)
    shown = [item["id"] for item in body["items"]]
    rest = [v for v in videos if v not in shown]
    origin.service.catalog.set_status(rest[0], "deleted")
    await origin.recompute()
    status, body = await get_feed(http, origin, feed_type="for_you", limit=2,
                                  cursor=body["next_cursor"])
    assert [item["id"] for item in body["items"]] == [rest[1]]
    assert body["next_cursor"] is None


async def test_feed_metrics(origin: Origin, http: aiohttp.ClientSession) -> None:
    vid = origin.video("bob")
    await origin.recompute()
    await get_feed(http, origin, feed_type="trending")
    await get_feed(http, origin, feed_type="trending")
    await get_feed(http, origin, feed_type="for_you")
    batch = "edge-a:" + "ab" * 16
    for _ in range(2):
        await origin.plays(http, [{"video_id": vid, "starts": 3, "completions": 1},
                                  {"video_id": "unknown", "starts": 1}], batch=batch)
    async with http.get(f"{origin.admin}/metrics") as resp:
        text = await resp.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("reelcdn_origin_feed_requests_total", (("feed_type", "trending"),))] == 2
    assert samples[("reelcdn_origin_feed_requests_total", (("feed_type", "for_you"),))] == 1
    assert samples[("reelcdn_origin_feed_recompute_seconds_count", ())] >= 2
    assert samples[("reelcdn_origin_plays_ingested_total", ())] == 3
    assert samples[("reelcdn_origin_play_completions_ingested_total", ())] == 1
    assert samples[("reelcdn_origin_plays_unknown_videos_total", ())] == 1
    assert samples[("reelcdn_origin_play_batches_total", (("result", "counted"),))] == 1
    assert samples[("reelcdn_origin_play_batches_total", (("result", "duplicate"),))] == 1
