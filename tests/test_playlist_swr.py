"""Rendered playlists and their meta.json's staleness, through a real 3-tier topology over an
ffmpeg demo video: a stale meta.json within its stale-while-revalidate window answers at once
(the edge renders from the stale copy) and is revalidated once, in the background, at every
tier; a processing video's meta.json has no window, so its EVENT playlist still grows as soon
as its short freshness ends; and a repeated playlist request is answered from the finished
answer kept for its stored meta.json rather than rendered again."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import m3u8
import pytest
from player.demo_tiers import VIDEO, DemoTiers, synthesise
from rawhttp import RawResponse, get

from reelcdn.edge.video import playlists
from reelcdn.manifests import carried_part, options_from_query, render_master
from reelcdn.manifests.meta import VideoMeta
from reelcdn.origin.cache_control import META_CACHE_PROCESSING, META_CACHE_READY
from reelcdn.origin.storage import write_sidecar

pytestmark = pytest.mark.slow  # ffmpeg demo video served through a real 3-tier topology

META_TTL = 1.0  # the topology's TTL rule for */meta.json: stale a second after each fetch
STALE_MEMBER = 'edge-a; hit; detail="stale-while-revalidate rendered"'


@pytest.fixture(scope="module")
def origin_root(tmp_path_factory) -> Path:
    return synthesise(tmp_path_factory.mktemp("playlist-swr"))


@pytest.fixture(scope="module")
def meta(origin_root) -> VideoMeta:
    return VideoMeta.read(origin_root / "v" / VIDEO / "meta.json")


@pytest.fixture
async def tiers(origin_root):
    tiers = await DemoTiers(origin_root, meta_ttl=f"{META_TTL:g}s",
                            carried_query_params=["token"]).start()
    yield tiers
    await tiers.stop()


def edge_member(response: RawResponse) -> str:
    return (response.header("cache-status") or "").split(",")[-1].strip()


def requests_of(tiers: DemoTiers, node: str) -> int:
    """Requests ``node`` answered so far, whatever their outcome."""
    return sum(tiers.servers[node].node.stats.requests.values())


def origin_reads(tiers: DemoTiers) -> int:
    stats = tiers.servers["shield-1"].node.stats.upstream_requests
    return sum(count for (source, _), count in stats.items() if source == "main")


async def fills_done(tiers: DemoTiers) -> None:
    """Wait until no node has a fill in flight (background revalidations included)."""
    async with asyncio.timeout(10):
        while any(len(server.node.coalescer) for server in tiers.servers.values()):
            await asyncio.sleep(0.01)


def delay_answers(tiers: DemoTiers, node: str, seconds: float) -> None:
    """Make ``node`` answer every request ``seconds`` late (a slow parent)."""
    cache_node = tiers.servers[node].node
    original: Callable[..., Awaitable[None] | None] = cache_node.receive

    def late(req, conn, hooks: bool = True):  # type: ignore[no-untyped-def]
        async def answer() -> None:
            await asyncio.sleep(seconds)
            pending = original(req, conn, hooks)
            if pending is not None:
                await pending
        return answer()

    cache_node.receive = late  # type: ignore[method-assign]


def test_ready_meta_json_may_be_served_stale_while_revalidated_and_processing_may_not():
    """The origin's Cache-Control decides where stale-while-revalidate applies: a ready
    meta.json's content never changes (a revalidation only confirms it), a processing one's
    grows with every segment."""
    assert "stale-while-revalidate=86400" in META_CACHE_READY
    assert "max-age=86400" in META_CACHE_READY
    assert "stale-while-revalidate" not in META_CACHE_PROCESSING


async def test_stale_meta_json_within_its_window_answers_at_once(tiers, meta, origin_root):
    sidecar = (origin_root / "v" / VIDEO / ".headers" / "meta.json").read_text()
    assert f"Cache-Control: {META_CACHE_READY}" in sidecar  # what the demo publishes
    first = await get(tiers.port, f"/v/{VIDEO}/master.m3u8")
    assert edge_member(first).startswith("edge-a; fwd=uri-miss")
    await asyncio.sleep(META_TTL + 0.2)  # meta.json is now stale at every tier

    # The parent is slow: a player waiting on the revalidation would wait 0.8 s.
    delay_answers(tiers, "regional-1", 0.8)
    started = time.monotonic()
    stale = await get(tiers.port, f"/v/{VIDEO}/master.m3u8")
    waited = time.monotonic() - started
    assert stale.status == 200
    assert stale.body == first.body and stale.header("etag") == first.header("etag")
    assert edge_member(stale) == STALE_MEMBER
    assert waited < 0.4, waited
    # The parents' members of the stored meta.json are kept, as for any rendered answer.
    assert stale.header("cache-status").split(",")[0].startswith("shield-1")
    # Other playlists of the video, and other options, are answered from the same copy.
    for path in ("master.m3u8?start=highest", "360p/index.m3u8"):
        other = await get(tiers.port, f"/v/{VIDEO}/{path}")
        assert other.status == 200 and edge_member(other) == STALE_MEMBER, path
    assert other.body.decode().startswith("#EXTM3U")
    assert tiers.edge.node.stats.requests.get(("GET", "stale", 200)) == 3
    await fills_done(tiers)


async def test_one_background_revalidation_per_object_at_every_tier(tiers):
    await get(tiers.port, f"/v/{VIDEO}/master.m3u8")
    await fills_done(tiers)
    regional, shield, reads = (requests_of(tiers, "regional-1"), requests_of(tiers, "shield-1"),
                               origin_reads(tiers))
    await asyncio.sleep(META_TTL + 0.2)
    delay_answers(tiers, "regional-1", 0.3)  # so the revalidation is still in flight below

    answers = await asyncio.gather(*(get(tiers.port, f"/v/{VIDEO}/master.m3u8")
                                     for _ in range(20)))
    assert {edge_member(a) for a in answers} == {STALE_MEMBER}
    await fills_done(tiers)
    # One revalidation of meta.json asked of each tier (coalesced: twenty players, one fill),
    # and each parent, whose copy was as stale, answered from it and revalidated once too.
    assert requests_of(tiers, "regional-1") == regional + 1
    assert requests_of(tiers, "shield-1") == shield + 1
    assert origin_reads(tiers) == reads + 1
    regional_stats = tiers.servers["regional-1"].node.stats.requests
    assert regional_stats.get(("GET", "stale", 200), 0) == 1  # a 304 from its stale copy


async def test_a_processing_video_s_playlist_still_grows_promptly(tiers, origin_root, meta):
    """No window for a processing meta.json: once its freshness ends, the next reload waits
    for the revalidation and sees the segment published meanwhile, not a stale copy."""
    folder = origin_root / "v" / "proc-swr"
    folder.mkdir(exist_ok=True)

    def publish(segments: int) -> None:
        low = meta.renditions[0]
        partial = meta.replace(
            video_id="proc-swr", state="processing",
            renditions=[dataclasses.replace(low, segments=low.segments[:segments])])
        (folder / "meta.json").write_text(partial.to_json())
        write_sidecar(folder / "meta.json", cache_control=META_CACHE_PROCESSING)

    def segments(response: RawResponse) -> int:
        return len(m3u8.loads(response.body.decode()).segments)

    publish(1)
    path = f"/v/proc-swr/{meta.renditions[0].name}/index.m3u8"
    first = await get(tiers.port, path)
    assert first.status == 200 and segments(first) == 1
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in first.body.decode()
    publish(2)
    deadline = time.monotonic() + META_TTL + 1.0  # about one target duration (2 s)
    while True:
        reload = await get(tiers.port, path)
        assert edge_member(reload) != STALE_MEMBER  # never a stale processing playlist
        if segments(reload) == 2:
            break
        assert time.monotonic() < deadline, "the new segment did not show up in time"
        await asyncio.sleep(0.1)
    assert "fwd=stale; fwd-status=200" in edge_member(reload)


async def test_a_repeated_request_is_answered_from_the_kept_answer(tiers, meta, monkeypatch):
    first = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?CMCD=sid%3D%22a%22")
    renderer = tiers.edge.node.features.playlists
    assert len(renderer.answers) == 1

    def no_parsing(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a kept answer must not parse the query again")

    monkeypatch.setattr(playlists, "options_from_query", no_parsing)
    # Another CMCD value (ignored by the cache key): the same kept answer, nothing parsed.
    again = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?CMCD=sid%3D%22b%22")
    assert again.status == 200 and again.body == first.body
    assert again.header("etag") == first.header("etag")
    assert edge_member(again) == "edge-a; hit; detail=rendered"
    not_modified = await get(tiers.port, f"/v/{VIDEO}/master.m3u8",
                             headers={"If-None-Match": first.header("etag")})
    assert not_modified.status == 304 and not_modified.body == b""
    head = await get(tiers.port, f"/v/{VIDEO}/master.m3u8", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("content-length") == str(len(first.body))
    assert len(renderer.answers) == 1
    monkeypatch.undo()

    # A token is filled into the URIs: each token has its own answer, never another's.
    tokened = {token: await get(tiers.port, f"/v/{VIDEO}/master.m3u8?token={token}")
               for token in ("t1", "t2")}
    for token, response in tokened.items():
        assert response.body.decode() == render_master(
            meta, options_from_query(f"token={token}", ["token"]))
    assert len(renderer.answers) == 3

    # A new meta.json (another version) is rendered again, not answered from the old answer.
    await asyncio.sleep(META_TTL + 0.2)
    delay_answers(tiers, "regional-1", 0.0)
    changed = meta.replace(renditions=list(reversed(meta.renditions)))
    meta_file = tiers.servers["shield-1"].node.config.origins[0].root
    Path(meta_file, "v", VIDEO, "meta.json").write_text(changed.to_json())
    try:
        async with asyncio.timeout(10):
            while True:  # the first requests answer from the stale copy, then the new one
                response = await get(tiers.port, f"/v/{VIDEO}/master.m3u8")
                await fills_done(tiers)
                if response.body.decode() == render_master(changed):
                    break
                await asyncio.sleep(0.05)
    finally:
        Path(meta_file, "v", VIDEO, "meta.json").write_text(meta.to_json())


def test_carried_part_is_what_the_options_carry():
    carried = frozenset({"token", "exp"})
    for query in ("", "token=a", "CMCD=x&token=a%20b&exp=1", "TOKEN=c&tok%65n=d&exp=1",
                  "?exp=2&max_height=360&token=x", "token=a&token=b", "a=1&&exp=3&"):
        expected = options_from_query(query, carried).carried_query
        assert carried_part(query, carried) == expected, query
    assert carried_part("token=a", frozenset()) == ""


def test_kept_answers_are_bounded_in_count_and_in_bytes():
    def answer(size: int) -> playlists.RenderedAnswer:
        return playlists.RenderedAnswer("/v/x/meta.json", None, None,  # type: ignore[arg-type]
                                        ("x", "master", ""), b"", b"#" * size, '"t"')

    store = playlists._AnswerStore(3, 100)
    for key in "abcd":
        store.put(key, answer(10))
    assert len(store) == 3 and store.get("a") is None  # the least recently used went first
    assert store.get("b") is not None
    store.put("e", answer(85))  # over the byte bound: the oldest go until it fits
    assert store.bytes <= 100 and store.get("e") is not None and store.get("b") is not None
    assert store.get("c") is None and store.get("d") is None
    store.put("huge", answer(101))  # larger than the whole bound: never kept
    assert store.get("huge") is None and store.bytes <= 100
