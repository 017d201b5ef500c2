"""The feed service's state beside the origin's: the engagement store, the pool of ready
videos and the trending ranking (recomputed in the background every ``trending_interval``),
feed sessions (snapshots of a ranking, paged by signed cursors), and the feed's metrics.

The scoring is ``ranking.py``'s (pure); this module gathers its inputs — the catalog through
the :class:`~reelcdn.origin.videos.Catalog` protocol, engagement through
:class:`~reelcdn.origin.feed.store.EngagementStore` — and keeps what it computed.

Why a snapshot per feed session: the ranked feeds' scores move (views arrive, time passes,
the trending ranking is recomputed), so neither an offset nor a ``(score, id)`` keyset into a
live ranking is stable: an item whose score rises past the cursor is skipped, one that falls
past it is shown twice. A session's order is an immutable list (at most ``feed_depth`` ids)
kept in the store, and every cursor is a position in it. New videos go to the next session; a
video deleted or no longer ready meanwhile is passed over. Trending sessions share the
snapshot of one recompute. A personal session (for_you, following) writes its own only when
its second page is asked for — most sessions never get there, and one write per first page
was most of a first page's cost: the first page ranks just what it shows, and its cursor
carries those ids and the newest ``created`` it ranked; the second page ranks again, videos
created after that left out, and keeps the shown ids followed by the rest of the new order.
Nothing is repeated (the shown ids come first, once) and nothing skipped (every id not shown
is in the rest), whatever moved in between.

for_you is ranked from a :class:`~reelcdn.origin.feed.ranking.ForYouBase` built at each
recompute (the pool scored once for a viewer of no signals); a request scores only the videos
the viewer is tied to (``ranking.for_you_ranked``), so it ranks as of the last recompute, as
its counters already were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from reelcdn.origin.cache import NoCache, ReadThrough
from reelcdn.origin.feed import ranking
from reelcdn.origin.feed.cursors import Cursor, CursorError, make_cursor, open_cursor
from reelcdn.origin.feed.prewarm import Prewarmer
from reelcdn.origin.feed.store import Counters, EngagementStore, SqliteEngagementStore
from reelcdn.origin.logs import fields
from reelcdn.origin.users import Keys
from reelcdn.origin.videos import Catalog

__all__ = ["FEED_TYPES", "FeedMetrics", "FeedService", "FeedSettings", "Page"]

log = logging.getLogger("reelcdn.origin.feed")

FEED_TYPES = ("for_you", "following", "trending")
#: Videos whose plays count: a processing video already plays its first rendition.
PLAYABLE = ("processing", "ready")
SESSION_TTL = 24 * 3600.0        # a registered CMCD session id maps to its user this long
CLEANUP_EVERY = 600.0
MAX_FOLLOWEES = 200              # the following feed reads the 200 most recently followed
LIKES_READ = 50                  # liked and played videos read for a viewer's affinities
SEEN_EXCLUDED = 5000             # played videos left out of for_you (the most recent)


@dataclass(frozen=True)
class FeedSettings:
    keys: Keys
    trending_interval: float = 60.0
    trending_window: float = 48 * 3600.0
    trending_half_life: float = 6 * 3600.0
    pool: int = 5000
    depth: int = 500
    cursor_ttl: float = 3600.0
    weights: ranking.Weights = ranking.Weights()


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


class FeedMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("reelcdn_origin_feed_requests", "feed pages served, by type",
                                ["feed_type"], registry=registry)
        self.recompute = Histogram(
            "reelcdn_origin_feed_recompute_seconds",
            "seconds to recompute the trending ranking and the feeds' pool",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry)
        self.recompute_errors = Counter("reelcdn_origin_feed_recompute_errors",
                                        "recomputes that failed (the last ranking is kept)",
                                        registry=registry)
        self.plays = Counter("reelcdn_origin_plays_ingested",
                             "play starts counted from the edges' batches", registry=registry)
        self.completions = Counter("reelcdn_origin_play_completions_ingested",
                                   "play completions counted from the edges' batches",
                                   registry=registry)
        self.batches = Counter("reelcdn_origin_play_batches",
                               "play batches received, by result (counted, duplicate)",
                               ["result"], registry=registry)
        self.unknown = Counter("reelcdn_origin_plays_unknown_videos",
                               "entries of counted batches naming no playable video",
                               registry=registry)


class FeedService:
    def __init__(self, settings: FeedSettings, catalog: Catalog | Callable[[], Catalog],
                 store: EngagementStore, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.time, *, cache: ReadThrough | None = None,
                 prewarmer: Prewarmer | None = None) -> None:
        """``catalog``: the catalog, or a callable answering the one in use now (the origin's
        state may be given another catalog after the application is built). ``cache``: the
        read-through cache of pages, rows and counters (``origin/cache.py``; none by
        default). ``prewarmer``: what each recompute pre-warms into the nodes (none: off)."""
        self.settings = settings
        self.cache: ReadThrough = cache if cache is not None else NoCache()
        self.prewarmer = prewarmer
        self._catalog_of: Callable[[], Catalog] = (
            catalog if callable(catalog) else lambda: catalog)
        self.store = store
        self.clock = clock
        self.metrics = FeedMetrics(registry)
        self._lock = threading.Lock()
        self.pool: dict[str, dict[str, Any]] = {}      # ready rows, newest feed_pool
        self.trending_ids: list[str] = []
        self.trending_version = ""
        self.trending_rows: dict[str, dict[str, Any]] = {}
        self.for_you_base = ranking.for_you_base((), clock(), settings.weights)
        self._known: OrderedDict[str, None] = OrderedDict()  # playable ids seen by ingest
        self._last_cleanup = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def catalog(self) -> Catalog:
        return self._catalog_of()

    @classmethod
    def open(cls, config: Any, catalog: Catalog | Callable[[], Catalog],
             registry: CollectorRegistry,
             clock: Callable[[], float], *, cache: ReadThrough | None = None,
             published: Callable[[], Any] | None = None) -> FeedService:
        """The feed service of an origin's config (``OriginConfig``): SQLite in its data
        dir; pre-warm into the config's nodes when it names any and ``prewarm_top`` > 0
        (``published``: the store videos are published into, where meta.json is read)."""
        settings = FeedSettings(
            keys=config.keys, trending_interval=config.trending_interval,
            trending_window=config.trending_window,
            trending_half_life=config.trending_half_life, pool=config.feed_pool,
            depth=config.feed_depth, cursor_ttl=config.feed_cursor_ttl)
        store = SqliteEngagementStore(config.data_dir / "feed.sqlite")
        prewarmer = None
        if config.prewarm_targets and config.prewarm_top > 0 and published is not None:
            prewarmer = Prewarmer(config.prewarm_targets, published, registry,
                                  top=config.prewarm_top, rungs=config.prewarm_rungs,
                                  segments=config.prewarm_segments,
                                  timeout=config.prewarm_timeout)
        return cls(settings, catalog, store, registry, clock, cache=cache, prewarmer=prewarmer)

    # -- the background recompute --------------------------------------------------------------

    async def start(self) -> None:
        await self._recompute_logged()
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.prewarmer is not None:
            await self.prewarmer.stop()
        self.store.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.trending_interval)
            await self._recompute_logged()

    async def _recompute_logged(self) -> None:
        try:
            await asyncio.to_thread(self.recompute)
        except Exception:
            self.metrics.recompute_errors.inc()
            log.exception("feed recompute failed; the last ranking is kept")
            return
        if self.prewarmer is not None:  # in the background: never holds the feed up
            with self._lock:
                ranked = list(self.trending_ids)
            self.prewarmer.schedule(ranked)

    async def refresh(self) -> None:
        """Recompute now, as the background loop does (and pre-warm after it)."""
        await self._recompute_logged()

    def recompute(self) -> None:
        """Read the pool of ready videos and rank trending; drop old rows now and then."""
        started = time.perf_counter()
        settings, now = self.settings, self.clock()
        rows = self.catalog.newest("ready", settings.pool)
        pool = {row["id"]: row for row in rows}
        counters = self.store.counters(pool)
        hourly = self.store.hourly_views(now - settings.trending_window)
        scores = {video: ranking.trending_score(buckets, now, settings.trending_window,
                                                settings.trending_half_life)
                  for video, buckets in hourly.items()}
        ranked, trending_rows = [], {}
        for video in ranking.trending(scores)[:settings.depth * 2]:  # bounded catalog reads
            row = pool.get(video) or self.catalog.get(video)
            if row is not None and row["status"] == "ready":
                ranked.append(video)
                trending_rows[video] = row
                if len(ranked) >= settings.depth:
                    break
        version = f"trending:{int(now * 1000):x}:{secrets.token_hex(4)}"
        candidates = {**trending_rows, **pool}
        missing = [video for video in candidates if video not in counters]
        all_counters = {**counters, **self.store.counters(missing)} if missing else counters
        videos = [_video(row, all_counters.get(video)) for video, row in candidates.items()]
        base = ranking.for_you_base(videos, now, settings.weights)
        with self._lock:
            self.pool = pool
            self.trending_ids, self.trending_version = ranked, version
            self.trending_rows = trending_rows
            self.for_you_base = base
        if now - self._last_cleanup >= CLEANUP_EVERY:
            dropped = self.store.cleanup(now, now - settings.trending_window)
            self._last_cleanup = now
            if any(dropped.values()):
                log.info("feed cleanup", extra=fields(event="feed_cleanup", **dropped))
        seconds = time.perf_counter() - started
        self.metrics.recompute.observe(seconds)
        log.debug("feed recomputed", extra=fields(event="feed_recomputed", pool=len(pool),
                                                  trending=len(ranked),
                                                  seconds=round(seconds, 3)))

    # -- rows ----------------------------------------------------------------------------------

    def _row(self, video: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.pool.get(video) or self.trending_rows.get(video)
        return row if row is not None else self.video_row(video)

    def forget(self, video: str) -> None:
        """A deleted video: out of the pool and trending rows now, not at the next
        recompute (its cached row is dropped by the caller)."""
        with self._lock:
            self.pool.pop(video, None)
            self.trending_rows.pop(video, None)

    def video_row(self, video: str) -> dict[str, Any] | None:
        """The catalog's row through the cache (ready rows only are cached)."""
        return self.cache.get("video", video, lambda: self.catalog.get(video),
                              store_if=lambda row: row is not None and row["status"] == "ready")

    def counters(self, videos: Sequence[str]) -> dict[str, Counters]:
        """The videos' counters through the cache (``counters_ttl``: eventually consistent);
        a video never counted is all zeros."""

        def read(missing: list[str]) -> dict[str, list[int]]:
            found = self.store.counters(missing)
            return {v: list(_counts(found.get(v, Counters()))) for v in missing}

        cached = self.cache.get_many("counters", list(videos), read)
        return {video: Counters(*values) for video, values in cached.items()}

    def counted(self, video: str) -> Counters:
        """A video's counters as of now (after a like): read from the store and written
        into the cache, so the next page shows them."""
        counters = self.store.counters([video]).get(video, Counters())
        self.cache.set("counters", video, list(_counts(counters)))
        return counters

    def playable(self, video: str) -> bool:
        """Whether plays of ``video`` count (it exists and plays: processing or ready)."""
        with self._lock:
            pooled = video in self.pool or video in self._known
        row = None if pooled else self.catalog.get(video)
        if pooled or (row is not None and row["status"] in PLAYABLE):
            with self._lock:
                self._known[video] = None
                while len(self._known) > 100_000:
                    self._known.popitem(last=False)
            return True
        return False

    # -- feeds ---------------------------------------------------------------------------------

    def page(self, user: str, feed_type: str, limit: int, cursor_text: str | None) -> Page:
        """A page of a feed: from a new snapshot without a cursor, else from the cursor's.
        Raises CursorError for a bad cursor (one whose snapshot is gone is expired)."""
        now = self.clock()
        newest: float | None = None  # of a personal first page: its cursor carries it
        if cursor_text is None and feed_type == "trending":
            # Every trending session starts on the same snapshot: its first page is the
            # hottest key of the feed (cached, one recompute at a time).
            with self._lock:
                snapshot_id, ranked = self.trending_version, list(self.trending_ids)
            expires, position = now + self.settings.cursor_ttl, 0

            def first_page() -> dict[str, Any]:
                if ranked:  # kept past the cursors' expiry by as long as a copy may be served
                    self.store.save_snapshot(snapshot_id, ranked, expires + self._page_margin())
                return self._page_ids(ranked, 0, limit)

            cut = self.cache.get("page", f"{snapshot_id}:0:{limit}", first_page, hot=True)
        elif cursor_text is None:
            # A personal session's first page: ranked for what it shows, nothing written.
            expires, snapshot_id = now + self.settings.cursor_ttl, ""
            items, newest = self._personal(user, feed_type,
                                           min(self.settings.depth, 4 * limit + 1), None)
            cut = self._page_ids(items, 0, limit)
        else:
            cursor = open_cursor(cursor_text, self.settings.keys, user, feed_type, now)
            snapshot_id, expires, position = cursor.snapshot, cursor.expires, cursor.position
            if not snapshot_id:  # the second page of a personal session: its order is kept now
                snapshot_id, items = self._keep_session(user, cursor)
                cut = self._page_ids(items, position, limit)
            else:
                def next_page() -> dict[str, Any]:
                    found = self.store.snapshot(snapshot_id, now)
                    if found is None:
                        raise CursorError("cursor_expired", "the feed session has expired: "
                                          "start again without a cursor")
                    return self._page_ids(found, position, limit)

                cut = self.cache.get("page", f"{snapshot_id}:{position}:{limit}", next_page,
                                     hot=True)
        rows = [row for row in map(self._row, cut["ids"])
                if row is not None and row["status"] == "ready"]  # deleted since: passed over
        next_cursor = None
        if cut["next"] < cut["total"]:
            shown = tuple(row["id"] for row in rows) if not snapshot_id else ()
            position = len(shown) if not snapshot_id else cut["next"]
            next_cursor = make_cursor(
                Cursor(user, feed_type, snapshot_id, position, int(expires), shown,
                       newest if not snapshot_id else None), self.settings.keys)
        counters = self.counters([row["id"] for row in rows])
        # Never cached: the viewer's own marks, read for this page's videos and owners.
        liked, followed = self.store.viewer_marks(
            user, [row["id"] for row in rows], [row["owner"] for row in rows])
        self.metrics.requests.labels(feed_type).inc()
        return Page([item_view(row, counters.get(row["id"], Counters()),
                               liked=row["id"] in liked, following=row["owner"] in followed)
                     for row in rows], next_cursor)

    def _page_margin(self) -> float:
        settings = self.cache.settings
        return settings.page_ttl + settings.stale_ttl if not isinstance(self.cache,
                                                                        NoCache) else 0.0

    def _page_ids(self, items: Sequence[str], position: int, limit: int) -> dict[str, Any]:
        """What a page is (and what the cache keeps of it): its ids, the position after it,
        and the snapshot's length."""
        rows, after = self._rows_from(items, position, limit)
        return {"ids": [row["id"] for row in rows], "next": after, "total": len(items)}

    def _rows_from(self, items: Sequence[str], position: int, limit: int,
                   ) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` rows still ready from ``position`` on, and the position after the
        last id looked at (at most ``4 * limit`` ids are looked at: a page of many videos
        deleted since is short rather than slow)."""
        page: list[dict[str, Any]] = []
        end = min(len(items), position + 4 * limit)
        while position < end and len(page) < limit:
            row = self._row(items[position])
            position += 1
            if row is not None and row["status"] == "ready":
                page.append(row)
        return page, position

    def _personal(self, user: str, feed_type: str, limit: int, created_at_most: float | None,
                  ) -> tuple[list[str], float | None]:
        """A personal feed's first ``limit`` ids, videos created after ``created_at_most``
        left out, and the newest ``created`` among the videos it ranked."""
        if feed_type == "following":
            return self._following(user, limit, created_at_most)
        with self._lock:
            base = self.for_you_base
        ranked = ranking.for_you_ranked(base, self.viewer(user), self.settings.weights,
                                        limit=limit, created_at_most=created_at_most)
        return ranked, base.newest if created_at_most is None else created_at_most

    def _keep_session(self, user: str, cursor: Cursor) -> tuple[str, list[str]]:
        """A personal session's order, kept from its second page on: the ids its first page
        showed, then the feed ranked now without them (videos newer than the first page's
        left out), ``feed_depth`` in all; saved under a new snapshot id."""
        shown = list(dict.fromkeys(cursor.shown))
        depth = max(self.settings.depth, len(shown))
        ranked, _ = self._personal(user, cursor.feed_type, depth + len(shown), cursor.newest)
        left = set(shown)
        items = shown + [video for video in ranked if video not in left][:depth - len(shown)]
        snapshot_id = f"{cursor.feed_type}:{secrets.token_hex(12)}"
        if items:
            self.store.save_snapshot(snapshot_id, items, cursor.expires)
        return snapshot_id, items

    def _following(self, user: str, limit: int, created_at_most: float | None,
                   ) -> tuple[list[str], float | None]:
        followees = self.store.follows_of(user, MAX_FOLLOWEES)
        videos = [_video(row) for followee in followees
                  for row in self.catalog.by_owner(followee, self.settings.depth)
                  if row["status"] == "ready"]
        if created_at_most is not None:
            videos = [video for video in videos if video.created <= created_at_most]
        newest = max((video.created for video in videos), default=created_at_most)
        return ranking.following(videos, set(followees), limit=limit), newest

    def viewer(self, user: str) -> ranking.Viewer:
        """What ranking knows of ``user``: follows, liked creators, hashtag weights, seen."""
        follows = frozenset(self.store.follows_of(user, 10_000))
        liked = [row for row in map(self._row, self.store.likes_of(user, LIKES_READ)) if row]
        seen = self.store.seen_of(user, SEEN_EXCLUDED)
        seen_rows = [row for row in map(self._row, seen[:LIKES_READ]) if row]
        liked_owners: dict[str, int] = {}
        for row in liked:
            liked_owners[row["owner"]] = liked_owners.get(row["owner"], 0) + 1
        tags = ranking.tag_weights([row["hashtags"] for row in liked],
                                   [row["hashtags"] for row in seen_rows])
        return ranking.Viewer(user, follows, liked_owners, tags, frozenset(seen))


def _counts(counters: Counters) -> tuple[int, int, int]:
    return counters.views, counters.likes, counters.completions


def _video(row: dict[str, Any], counters: Counters | None = None) -> ranking.Video:
    counters = counters or Counters()
    return ranking.Video(row["id"], row["owner"], float(row["created"] or 0.0),
                         tuple(row["hashtags"]), counters.views, counters.likes,
                         counters.completions)


def item_view(row: dict[str, Any], counters: Counters, *, liked: bool = False,
              following: bool = False) -> dict[str, Any]:
    """A feed item: the video's text, owner, poster and playback paths, duration, stats, and
    the viewer's marks (``viewer``: whether they like the video and follow its owner)."""
    video = row["id"]
    return {
        "id": video, "title": row["title"], "caption": row["caption"],
        "hashtags": row["hashtags"], "owner": row["owner"],
        "poster": f"/v/{video}/poster.jpg",
        "playback": f"/v/{video}/master.m3u8" if row["renditions"] else None,
        "duration": row["duration"], "created": row["created"],
        "stats": {"views": counters.views, "likes": counters.likes},
        "viewer": {"liked": liked, "following": following},
    }
