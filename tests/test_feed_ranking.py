"""The feeds' ranking (``origin/feed/ranking.py``: pure functions) on crafted data, the
cursors (``origin/feed/cursors.py``), and the feed service's paging over a real SQLite
catalog and engagement store: properties with hypothesis, among them that a session's pages
never repeat or skip an item while videos arrive and scores change between pages."""

from __future__ import annotations

import math
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from reelcdn.origin.feed import ranking
from reelcdn.origin.feed.cursors import (
    MAX_CURSOR,
    Cursor,
    CursorError,
    make_cursor,
    open_cursor,
)
from reelcdn.origin.feed.ranking import HOUR, Video, Viewer, Weights
from reelcdn.origin.feed.service import FeedService, FeedSettings
from reelcdn.origin.feed.store import Play, SqliteEngagementStore
from reelcdn.origin.users import Keys
from reelcdn.origin.videos import VideoCatalog

NOW = 1_800_000_000.0
KEYS = Keys({"k1": b"k" * 40, "k0": b"o" * 40}, "k1")


# -- the pieces --------------------------------------------------------------------------------

def test_recency_halves_every_half_life() -> None:
    assert ranking.recency(0, HOUR) == 1.0
    assert ranking.recency(HOUR, HOUR) == 0.5
    assert ranking.recency(3 * HOUR, HOUR) == 0.125
    assert ranking.recency(-50, HOUR) == 1.0  # clock skew: a video from the future is new


def test_popularity_is_logarithmic_and_capped() -> None:
    assert ranking.popularity(0, 10_000) == 0.0
    assert ranking.popularity(10_000, 10_000) == pytest.approx(1.0)
    assert ranking.popularity(10**9, 10_000) == 1.0
    assert ranking.popularity(100, 10_000) == pytest.approx(math.log1p(100) / math.log1p(10_000))


def test_rates_are_smoothed() -> None:
    assert ranking.like_rate(1, 0) == pytest.approx(0.1)  # one like on no view is not 100 %
    assert ranking.like_rate(50, 990) == pytest.approx(0.05)
    assert ranking.completion_rate(0, 0) == 0.5
    assert ranking.completion_rate(8, 8) == pytest.approx(0.9)
    assert ranking.completion_rate(1, 5) == 1.0  # completions of plays started earlier


def test_engagement_blend() -> None:
    video = Video("v", "bob", NOW, views=10_000, likes=2_000, completions=10_000)
    assert ranking.engagement(video) == pytest.approx(0.4 + 0.3 + 0.3 * 10_001 / 10_002)
    video = Video("v", "bob", NOW, views=990, likes=50, completions=0)
    assert ranking.engagement(video) == pytest.approx(
        0.4 * math.log1p(990) / math.log1p(10_000) + 0.3 * 0.5 + 0.3 / 992)
    assert ranking.engagement(Video("v", "bob", NOW)) == pytest.approx(0.3 * 0.5)


def test_affinities() -> None:
    tags = ranking.tag_weights([["Cats", "fun"], ["cats"]], [["dogs"], ["cats", "cats"]])
    assert tags == {"cats": 5.0, "fun": 2.0, "dogs": 1.0}
    assert ranking.hashtag_affinity(["CATS"], tags) == 1.0
    assert ranking.hashtag_affinity(["fun", "dogs"], tags) == pytest.approx(3 / 5)
    assert ranking.hashtag_affinity(["birds"], tags) == 0.0
    assert ranking.hashtag_affinity(["cats"], {}) == 0.0
    assert ranking.creator_affinity("bob", {"bob": 3}) == 0.75
    assert ranking.creator_affinity("eve", {"bob": 3}) == 0.0


def test_for_you_on_crafted_data() -> None:
    """The followed creator's fresh video on a liked tag first; a two-day-old viral video
    next, before a fresh one nobody watched yet; what was seen and one's own never."""
    viewer = Viewer("alice", follows=frozenset({"bob"}), liked_owners={"bob": 1},
                    tags={"cats": 2.0}, seen=frozenset({"seen"}))
    videos = [
        Video("fresh_followed", "bob", NOW - HOUR, ("cats",)),
        Video("viral_old", "carol", NOW - 2 * 24 * HOUR, ("news",), views=50_000,
              likes=5_000, completions=40_000),
        Video("fresh_stranger", "dave", NOW - HOUR, ("news",)),
        Video("seen", "bob", NOW, ("cats",), views=10**6),
        Video("mine", "alice", NOW, ("cats",)),
    ]
    assert ranking.for_you(videos, viewer, NOW) == ["fresh_followed", "viral_old",
                                                    "fresh_stranger"]
    score = ranking.for_you_score(videos[0], viewer, NOW)
    w = Weights()
    expected = (w.recency * 0.5 ** (1 / 24) + w.engagement * 0.3 * 0.5 + w.follows * 1.0
                + w.creator * 0.5 + w.hashtags * 1.0)
    assert score == pytest.approx(expected)
    assert ranking.for_you(videos, viewer, NOW, limit=1) == ["fresh_followed"]


def test_trending_on_crafted_data() -> None:
    window, half = 48 * HOUR, 6 * HOUR
    # 100 views in the hour that started 6.5 h ago (its middle: 6 h ago) count as 50 now.
    assert ranking.trending_score([(NOW - 6.5 * HOUR, 100)], NOW, window, half) == \
        pytest.approx(50.0)
    assert ranking.trending_score([(NOW - 0.2 * HOUR, 100)], NOW, window, half) == 100.0
    old = [(NOW - 49 * HOUR, 10**6)]
    assert ranking.trending_score(old, NOW, window, half) == 0.0  # out of the window
    scores = {
        "steady": ranking.trending_score([(NOW - h * HOUR, 100) for h in range(1, 24)],
                                         NOW, window, half),
        "burst_now": ranking.trending_score([(NOW - HOUR, 1_500)], NOW, window, half),
        "burst_yesterday": ranking.trending_score([(NOW - 24 * HOUR, 5_000)], NOW, window,
                                                  half),
        "nothing": 0.0,
    }
    assert ranking.trending(scores) == ["burst_now", "steady", "burst_yesterday"]
    assert ranking.trending({"b": 1.0, "a": 1.0}) == ["a", "b"]  # ties by id


def test_following_newest_first() -> None:
    videos = [Video("a", "bob", 10), Video("b", "carol", 30), Video("c", "bob", 20),
              Video("d", "eve", 40), Video("e", "bob", 30)]
    assert ranking.following(videos, {"bob", "carol"}) == ["e", "b", "c", "a"]
    assert ranking.following(videos, set()) == []


# -- properties --------------------------------------------------------------------------------

ids = st.text("abcdefgh", min_size=1, max_size=4)
owners = st.sampled_from(["alice", "bob", "carol", "dave"])
videos_st = st.lists(st.builds(
    Video, ids, owners, st.floats(NOW - 30 * 24 * HOUR, NOW + HOUR),
    st.lists(st.sampled_from(["cats", "dogs", "fun", "news"]), max_size=3).map(tuple),
    st.integers(0, 10**7), st.integers(0, 10**6), st.integers(0, 10**7),
), max_size=30, unique_by=lambda v: v.id)
viewers = st.builds(
    Viewer, st.just("alice"), st.frozensets(owners),
    st.dictionaries(owners, st.integers(0, 20)),
    st.dictionaries(st.sampled_from(["cats", "dogs", "fun", "news"]), st.floats(0, 50)),
    st.frozensets(ids, max_size=5))


@given(videos_st, viewers)
def test_for_you_scores_are_bounded_and_the_order_is_total(videos: list[Video],
                                                           viewer: Viewer) -> None:
    for video in videos:
        assert 0.0 <= ranking.for_you_score(video, viewer, NOW) <= 1.0 + 1e-9
    ranked = ranking.for_you(videos, viewer, NOW)
    assert len(ranked) == len(set(ranked))
    assert not set(ranked) & viewer.seen
    assert all(v.owner != "alice" for v in videos if v.id in ranked)
    assert set(ranked) == {v.id for v in videos if v.id not in viewer.seen
                           and v.owner != "alice"}
    assert ranking.for_you(list(reversed(videos)), viewer, NOW) == ranked  # input order
    scores = {v.id: ranking.for_you_score(v, viewer, NOW) for v in videos}
    assert all(scores[a] >= scores[b] for a, b in zip(ranked, ranked[1:], strict=False))


@given(videos_st, viewers, st.one_of(st.none(), st.integers(0, 40)),
       st.one_of(st.none(), st.floats(NOW - 30 * 24 * HOUR, NOW + HOUR)))
def test_for_you_from_a_shared_base_is_the_same_list(videos: list[Video], viewer: Viewer,
                                                     limit: int | None,
                                                     newest: float | None) -> None:
    """Scoring once per pool and merging the viewer's tied videos in gives exactly the list
    of scoring every video for the viewer (ties and all)."""
    base = ranking.for_you_base(videos, NOW)
    expected = ranking.for_you([v for v in videos if newest is None or v.created <= newest],
                               viewer, NOW, limit=limit)
    assert ranking.for_you_ranked(base, viewer, limit=limit, created_at_most=newest) == expected


def test_for_you_from_a_shared_base_on_crafted_data() -> None:
    videos = [Video("a", "bob", NOW - HOUR, ("Cats",)), Video("b", "carol", NOW, ()),
              Video("c", "dave", NOW - 2 * HOUR, ("dogs",), views=50, likes=20),
              Video("d", "alice", NOW), Video("e", "eve", NOW - 3 * HOUR, ("cats",))]
    base = ranking.for_you_base(videos, NOW)
    viewer = Viewer("alice", follows=frozenset({"dave"}), tags={"cats": 2.0},
                    seen=frozenset({"e"}))
    ranked = ranking.for_you_ranked(base, viewer)
    assert ranked == ranking.for_you(videos, viewer, NOW)
    assert "d" not in ranked and "e" not in ranked  # own, played
    assert ranked[0] == "c"  # followed and engaging
    assert ranking.for_you_ranked(base, viewer, limit=2) == ranked[:2]
    assert "b" not in ranking.for_you_ranked(base, viewer, created_at_most=NOW - 1)


@given(st.integers(0, 10**6), st.integers(1, 10**6), st.floats(0, 46 * HOUR))
def test_trending_more_views_or_fresher_never_ranks_lower(views: int, more: int,
                                                          age: float) -> None:
    window, half = 48 * HOUR, 6 * HOUR
    base = ranking.trending_score([(NOW - age - HOUR, views)], NOW, window, half)
    assert ranking.trending_score([(NOW - age - HOUR, views + more)], NOW, window, half) > base
    assert ranking.trending_score([(NOW - HOUR, views)], NOW, window, half) >= base


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_engagement_is_in_unit_range_and_grows_with_likes(views: int, likes: int,
                                                          completions: int) -> None:
    low = ranking.engagement(Video("v", "o", NOW, (), views, likes, completions))
    high = ranking.engagement(Video("v", "o", NOW, (), views, likes + 1, completions))
    assert 0.0 <= low <= high <= 1.0


# -- cursors -----------------------------------------------------------------------------------

@given(st.text("abcXYZ_-", min_size=1, max_size=64), st.sampled_from(ranking.__all__),
       st.text(min_size=1, max_size=40), st.integers(0, 10**6))
def test_cursor_round_trip(user: str, feed_type: str, snapshot: str, position: int) -> None:
    cursor = Cursor(user, feed_type, snapshot, position, int(NOW) + 60)
    text = make_cursor(cursor, KEYS)
    assert text.isascii() and " " not in text
    assert open_cursor(text, KEYS, user, feed_type, NOW) == cursor


@given(st.sampled_from(["for_you", "following"]),
       st.lists(st.text("abcdefghijklmnopqrstuvwxyz234567", min_size=26, max_size=26),
                max_size=50, unique=True),
       st.one_of(st.none(), st.floats(0, 2e9)), st.integers(0, 50))
def test_first_page_cursor_round_trip(feed_type: str, shown: list[str], newest: float | None,
                                      position: int) -> None:
    """A personal first page's cursor (no snapshot yet) carries the ids it showed and the
    newest ``created`` it ranked, exactly, within the length a cursor may have."""
    cursor = Cursor("alice", feed_type, "", position, int(NOW) + 60, tuple(shown), newest)
    text = make_cursor(cursor, KEYS)
    assert len(text) <= MAX_CURSOR
    assert open_cursor(text, KEYS, "alice", feed_type, NOW) == cursor


def test_cursor_refusals() -> None:
    cursor = Cursor("alice", "for_you", "s", 3, int(NOW) + 60)
    text = make_cursor(cursor, KEYS)

    def code(candidate: str, user: str = "alice", feed_type: str = "for_you",
             now: float = NOW, keys: Keys = KEYS) -> str:
        with pytest.raises(CursorError) as caught:
            open_cursor(candidate, keys, user, feed_type, now)
        return caught.value.code

    version, kid, payload, sig = text.split(".")
    assert code(text, user="bob") == "cursor_mismatch"
    assert code(text, feed_type="trending") == "cursor_mismatch"
    assert code(text, now=NOW + 60) == "cursor_expired"
    assert code(text, keys=Keys({"k0": b"o" * 40}, "k0")) == "bad_cursor"  # key rotated out
    assert open_cursor(text, Keys({"k1": b"k" * 40, "k9": b"n" * 40}, "k9"), "alice",
                       "for_you", NOW) == cursor  # still accepted after a rotation
    assert code(f"{version}.k0.{payload}.{sig}") == "bad_cursor"
    for n in range(len(payload)):  # every single-character change of the payload
        changed = payload[:n] + ("A" if payload[n] != "A" else "B") + payload[n + 1:]
        assert code(f"{version}.{kid}.{changed}.{sig}") == "bad_cursor"
    forged = make_cursor(Cursor("alice", "for_you", "s", 3, int(NOW) - 10), KEYS)
    assert code(forged[:-3] + "AAA") == "bad_cursor"  # forged and expired: bad_cursor
    for junk in ("", "x" * 3000, "c1.k1", "c2.k1.e30.AAAA", "c1.k1.!!.AAAA"):
        assert code(junk) == "bad_cursor"


# -- paging over the real stores ---------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _service(root: Path, clock: Clock) -> tuple[FeedService, VideoCatalog]:
    catalog = VideoCatalog(root / "videos.sqlite")
    store = SqliteEngagementStore(root / "feed.sqlite")
    settings = FeedSettings(keys=KEYS, depth=200)
    return FeedService(settings, catalog, store, CollectorRegistry(), clock), catalog


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.integers(0, 20), limits=st.lists(st.integers(1, 7), min_size=1, max_size=12),
       arrivals=st.lists(st.integers(0, 2), min_size=12, max_size=12),
       feed_type=st.sampled_from(["for_you", "trending", "following"]),
       plays=st.lists(st.integers(0, 500), min_size=40, max_size=40))
def test_pages_never_repeat_or_skip_while_videos_arrive(
        initial: int, limits: list[int], arrivals: list[int], feed_type: str,
        plays: list[int]) -> None:
    """Page through a session with any page sizes; between pages, new videos arrive, plays
    change every score and the trending ranking is recomputed. The pages are the session's
    first ranking exactly: none repeated, none skipped (none was deleted)."""
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        service, catalog = _service(Path(tmp), clock)
        made = 0

        def add(count: int) -> None:
            nonlocal made
            for _ in range(count):
                vid = f"v{made:04d}"
                catalog.create(vid, ("bob", "carol", "dave")[made % 3], {"hashtags": "#x"})
                catalog.set_status(vid, "ready", renditions=["360p"])
                made += 1

        def play(round_: int) -> None:
            batch = [Play(f"v{n:04d}", plays[(n + 7 * round_) % len(plays)], 0)
                     for n in range(made)]
            service.store.ingest(f"edge:{round_:032x}", "edge", batch, 0, clock())
            service.recompute()

        try:
            add(initial)
            service.store.follow("alice", "bob", clock())
            play(0)
            first = service.page("alice", feed_type, limits[0], None)
            shown = [item["id"] for item in first.items]
            # The ranking the session took (what the first page snapshot holds).
            cursor = first.next_cursor
            for round_ in range(1, 100):  # bounded: at most 20 items, a page has one or more
                if cursor is None:
                    break
                limit = limits[round_ % len(limits)]
                add(arrivals[round_ % len(arrivals)])
                clock.now += 30
                play(round_)
                page = service.page("alice", feed_type, limit, cursor)
                shown += [item["id"] for item in page.items]
                cursor = page.next_cursor
            assert cursor is None
            assert len(shown) == len(set(shown)), "an item was repeated"
            eligible = {f"v{n:04d}" for n in range(initial)}
            if feed_type == "following":
                eligible = {v for n, v in enumerate(sorted(eligible)) if n % 3 == 0}
            if feed_type == "trending":
                eligible = {f"v{n:04d}" for n in range(initial) if plays[n % len(plays)]}
            assert set(shown) == eligible, "an item was skipped (or a new one shown)"
        finally:
            service.store.close()
            catalog.close()


@pytest.mark.parametrize("feed_type", ["for_you", "following"])
def test_a_personal_session_is_kept_from_its_second_page(tmp_path: Path,
                                                         feed_type: str) -> None:
    """First pages write nothing; the second page keeps the session's order (the first
    page's ids first), and a second page asked again (a retry) is the same page."""
    clock = Clock()
    service, catalog = _service(tmp_path, clock)
    try:
        for n in range(12):
            catalog.create(f"v{n:04d}", "bob", {"hashtags": "#x"})
            catalog.set_status(f"v{n:04d}", "ready", renditions=["360p"])
        service.store.follow("alice", "bob", clock())
        service.recompute()

        def kept() -> int:
            with sqlite3.connect(tmp_path / "feed.sqlite") as db:
                return int(db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0])

        firsts = [service.page("alice", feed_type, 4, None) for _ in range(5)]
        assert kept() == 0
        first = firsts[0]
        assert first.next_cursor is not None and len(first.items) == 4
        # Between the pages: alice likes and plays; the order may change, not the pages.
        service.store.like("alice", "v0011", clock())
        second = service.page("alice", feed_type, 4, first.next_cursor)
        again = service.page("alice", feed_type, 4, first.next_cursor)
        assert kept() == 2
        ids = [item["id"] for item in (*first.items, *second.items)]
        assert len(set(ids)) == 8
        assert [item["id"] for item in again.items] == [item["id"] for item in second.items]
        rest = service.page("alice", feed_type, 50, second.next_cursor)
        assert rest.next_cursor is None
        assert sorted(ids + [item["id"] for item in rest.items]) == [
            f"v{n:04d}" for n in range(12)]
    finally:
        service.store.close()
        catalog.close()
