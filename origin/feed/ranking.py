"""The feeds' ranking: pure functions over records, no I/O, no clock (``now`` is an argument).

Three orders (docs/feed.md has the formulas with their reasons):

- ``following``: the viewer's followed creators' videos, newest first (:func:`following`);
- ``trending``: views with exponential time decay over a window (:func:`trending_score`,
  :func:`trending`), computed from hourly view counts;
- ``for_you``: a weighted sum of recency, engagement and the viewer's affinity to the video's
  creator and hashtags (:func:`for_you_score`, :func:`for_you`), with the videos the viewer has
  played, and their own, left out. :func:`for_you_base` and :func:`for_you_ranked` give the
  same list without scoring the whole pool per viewer (below).

Every order breaks ties by video id, so a ranking of the same inputs is always the same list.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "HOUR",
    "Video",
    "Viewer",
    "Weights",
    "completion_rate",
    "creator_affinity",
    "engagement",
    "ForYouBase",
    "following",
    "for_you",
    "for_you_base",
    "for_you_ranked",
    "for_you_score",
    "base_score",
    "personal_bound",
    "personal_score",
    "hashtag_affinity",
    "lowered",
    "like_rate",
    "popularity",
    "recency",
    "tag_weights",
    "trending",
    "trending_score",
]

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Video:
    """What ranking knows of a video: its catalog fields and its engagement counters
    (``views`` = play starts, ``completions`` = plays watched to the end)."""

    id: str
    owner: str
    created: float
    hashtags: tuple[str, ...] = ()
    views: int = 0
    likes: int = 0
    completions: int = 0


@dataclass(frozen=True, slots=True)
class Viewer:
    """What ranking knows of the viewer: whom they follow, how many videos of each creator
    they liked, their hashtag weights (:func:`tag_weights`) and what they have played."""

    name: str
    follows: frozenset[str] = frozenset()
    liked_owners: Mapping[str, int] = field(default_factory=dict)
    tags: Mapping[str, float] = field(default_factory=dict)
    seen: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Weights:
    """The for_you blend. The five weights sum to 1, so a score is in [0, 1]."""

    recency: float = 0.30
    engagement: float = 0.30
    follows: float = 0.15
    creator: float = 0.10
    hashtags: float = 0.15
    recency_half_life: float = 24 * HOUR  # a day-old video's recency is 0.5
    views_scale: float = 10_000.0         # views at which popularity reaches 1
    like_rate_full: float = 0.10          # a like rate at which it counts in full


# -- the pieces --------------------------------------------------------------------------------

def recency(age: float, half_life: float) -> float:
    """1 for a video just published, halved every ``half_life`` seconds (an age below 0, a
    clock skew, counts as 0)."""
    return 0.5 ** (max(0.0, age) / half_life)


def popularity(views: int, scale: float) -> float:
    """``log(1 + views) / log(1 + scale)``, at most 1: the tenth view counts more than the
    ten-thousandth."""
    if views <= 0:
        return 0.0
    return min(1.0, math.log1p(views) / math.log1p(scale))


def like_rate(likes: int, views: int) -> float:
    """Likes per view, smoothed with 10 views of prior (``likes / (views + 10)``), at most 1:
    one like on one view is not a 100 % rate."""
    return min(1.0, max(0, likes) / (max(0, views) + 10))


def completion_rate(starts: int, completions: int) -> float:
    """Share of plays watched to the end, Laplace-smoothed (``(c + 1) / (s + 2)``: 0.5 with
    no data), at most 1 (a batch may carry the completion of a play started in the last)."""
    return min(1.0, (max(0, completions) + 1) / (max(0, starts) + 2))


def engagement(video: Video, weights: Weights = Weights()) -> float:
    """``0.4 popularity + 0.3 min(1, like_rate / like_rate_full) + 0.3 completion_rate``."""
    rate = min(1.0, like_rate(video.likes, video.views) / weights.like_rate_full)
    return (0.4 * popularity(video.views, weights.views_scale) + 0.3 * rate
            + 0.3 * completion_rate(video.views, video.completions))


def tag_weights(liked: Iterable[Sequence[str]], seen: Iterable[Sequence[str]]
                ) -> dict[str, float]:
    """The viewer's hashtag weights: 2 for each liked video carrying the tag, 1 for each
    played one (tags compared case-insensitively)."""
    weights: dict[str, float] = {}
    for tags, weight in ((t, 2.0) for t in liked):
        for tag in {t.lower() for t in tags}:
            weights[tag] = weights.get(tag, 0.0) + weight
    for tags in seen:
        for tag in {t.lower() for t in tags}:
            weights[tag] = weights.get(tag, 0.0) + 1.0
    return weights


def hashtag_affinity(hashtags: Sequence[str], tags: Mapping[str, float]) -> float:
    """The video's tags' weights summed, over the viewer's heaviest tag's, at most 1."""
    return _tag_affinity(lowered(hashtags), tags, max(tags.values(), default=0.0))


def lowered(hashtags: Sequence[str]) -> tuple[str, ...]:
    """A video's tags as affinity reads them: lowercased, each once (in the order a set of
    them iterates, so that a sum over them adds in the same order wherever it is made)."""
    return tuple({t.lower() for t in hashtags})


def _tag_affinity(tags_of_video: Sequence[str], tags: Mapping[str, float],
                  heaviest: float) -> float:
    if not tags or not tags_of_video or heaviest <= 0:
        return 0.0
    return min(1.0, sum(tags.get(tag, 0.0) for tag in tags_of_video) / heaviest)


def creator_affinity(owner: str, liked_owners: Mapping[str, int]) -> float:
    """``n / (n + 1)`` for a creator ``n`` of whose videos the viewer liked."""
    n = max(0, liked_owners.get(owner, 0))
    return n / (n + 1)


# -- for_you -----------------------------------------------------------------------------------

def base_score(video: Video, now: float, weights: Weights = Weights()) -> float:
    """The terms every viewer shares: ``recency · w + engagement · w``."""
    return (weights.recency * recency(now - video.created, weights.recency_half_life)
            + weights.engagement * engagement(video, weights))


def personal_score(video: Video, viewer: Viewer, weights: Weights = Weights()) -> float:
    """The viewer's own terms: ``follows · w + creator · w + hashtags · w`` (0.0 for a video
    the viewer has no tie to)."""
    return _personal(video.owner, lowered(video.hashtags), viewer,
                     max(viewer.tags.values(), default=0.0), weights)


def _personal(owner: str, tags_of_video: Sequence[str], viewer: Viewer, heaviest: float,
              weights: Weights) -> float:
    """:func:`personal_score` from what may be prepared once: the video's :func:`lowered`
    tags, the viewer's heaviest tag weight."""
    return _owner_part(owner, viewer, weights) + _tags_part(tags_of_video, viewer, heaviest,
                                                            weights)


def _owner_part(owner: str, viewer: Viewer, weights: Weights) -> float:
    """The personal terms that depend on the creator alone (the same for all their videos)."""
    return (weights.follows * (1.0 if owner in viewer.follows else 0.0)
            + weights.creator * creator_affinity(owner, viewer.liked_owners))


def _tags_part(tags_of_video: Sequence[str], viewer: Viewer, heaviest: float,
               weights: Weights) -> float:
    """The personal term that depends on the tags alone (the same for every video with
    these tags)."""
    return weights.hashtags * _tag_affinity(tags_of_video, viewer.tags, heaviest)


def personal_bound(viewer: Viewer, weights: Weights = Weights()) -> float:
    """At least :func:`personal_score` of any video for ``viewer`` (each term at its most
    for this viewer; float rounding is monotonic, so the sum bounds the sum)."""
    creator = max((creator_affinity(owner, viewer.liked_owners)
                   for owner in viewer.liked_owners), default=0.0)
    hashtags = 1.0 if any(weight > 0 for weight in viewer.tags.values()) else 0.0
    return (weights.follows * (1.0 if viewer.follows else 0.0) + weights.creator * creator
            + weights.hashtags * hashtags)


def for_you_score(video: Video, viewer: Viewer, now: float,
                  weights: Weights = Weights()) -> float:
    """The weighted sum, in [0, 1] with weights summing to 1: the shared terms plus the
    viewer's own (added in that order everywhere, so a video the viewer has no tie to scores
    its shared terms exactly)."""
    return base_score(video, now, weights) + personal_score(video, viewer, weights)


def for_you(videos: Iterable[Video], viewer: Viewer, now: float,
            weights: Weights = Weights(), limit: int | None = None) -> list[str]:
    """Video ids by score, highest first (ties by id), without the viewer's own videos and
    those they have played."""
    scored = [(-for_you_score(video, viewer, now, weights), video.id) for video in videos
              if video.id not in viewer.seen and video.owner != viewer.name]
    scored.sort()
    return [video_id for _, video_id in scored[:limit]]


# -- for_you, per viewer without scoring the pool --------------------------------------------
#
# A score is the shared terms (recency, engagement: the same for every viewer) plus the
# viewer's own (follows, creator, hashtags), which are 0.0 for every video the viewer has no
# tie to — not by a creator they follow or liked, no hashtag they have a weight for. So the
# shared scores are computed and sorted once per pool (:func:`for_you_base`), and a viewer's
# ranking (:func:`for_you_ranked`) walks that order, adds the personal terms of the videos
# they are tied to, and stops as soon as no video further down could make the page even with
# the most this viewer's personal terms can add (a threshold walk). Same list as
# :func:`for_you` (tests/test_feed_ranking.py checks it with hypothesis); the cost follows the
# page and how far the viewer's ties reach down the order, not the pool.


@dataclass(frozen=True, slots=True)
class ForYouBase:
    """A pool ranked by its shared terms (:func:`base_score`) as of ``now``: ``ranked`` is
    ``(-base score, id)`` in order; ``owners`` and ``tags`` (lowercased) index the ids a
    viewer may be tied to."""

    now: float
    videos: Mapping[str, Video]
    ranked: Sequence[tuple[float, str]]
    owners: Mapping[str, Sequence[str]]
    tags: Mapping[str, Sequence[str]]
    lowered: Mapping[str, tuple[str, ...]]  # each video's :func:`lowered` tags
    newest: float | None  # the latest ``created`` in the pool (None: an empty pool)


def for_you_base(videos: Iterable[Video], now: float,
                 weights: Weights = Weights()) -> ForYouBase:
    """Score a pool's shared terms once for everyone (a video listed twice: the last copy
    counts)."""
    pool = {video.id: video for video in videos}
    owners: dict[str, list[str]] = {}
    tags: dict[str, list[str]] = {}
    tags_of = {video_id: lowered(video.hashtags) for video_id, video in pool.items()}
    for video in pool.values():
        owners.setdefault(video.owner, []).append(video.id)
        for tag in tags_of[video.id]:
            tags.setdefault(tag, []).append(video.id)
    ranked = sorted((-base_score(video, now, weights), video.id) for video in pool.values())
    newest = max((video.created for video in pool.values()), default=None)
    return ForYouBase(now, pool, ranked, owners, tags, tags_of, newest)


def for_you_ranked(base: ForYouBase, viewer: Viewer, weights: Weights = Weights(),
                   limit: int | None = None, created_at_most: float | None = None,
                   ) -> list[str]:
    """``for_you(base's videos, viewer, base.now, weights, limit)``, without scoring the
    whole pool: the videos are walked by their shared score, highest first, each scored in
    full (its personal terms only if the viewer is tied to it), and the walk stops once
    even the largest personal score this viewer can give (:func:`personal_bound`) could not
    lift the next video past the ``limit``-th best. ``created_at_most``: leave out videos
    created after it."""
    if limit is not None and limit <= 0:
        return []
    tied: set[str] = set()
    for owner in itertools.chain(viewer.follows, viewer.liked_owners):
        tied.update(base.owners.get(owner, ()))
    for tag in viewer.tags:
        tied.update(base.tags.get(tag, ()))
    bound = personal_bound(viewer, weights)
    heaviest = max(viewer.tags.values(), default=0.0)
    owner_parts: dict[str, float] = {}
    tags_parts: dict[tuple[str, ...], float] = {}
    prune = limit is not None and min(weights.follows, weights.creator, weights.hashtags) >= 0
    best: list[float] = []  # the ``limit`` highest full scores so far (a min-heap)
    scored: list[tuple[float, str]] = []
    for negative, video_id in base.ranked:
        shared = -negative
        if prune and len(best) >= limit and shared + bound < best[0]:  # type: ignore[operator]
            # (``best`` is not empty here: ``limit`` is at least 1)
            break  # no video left can reach the page
        video = base.videos[video_id]
        if (video_id in viewer.seen or video.owner == viewer.name
                or (created_at_most is not None and video.created > created_at_most)):
            continue
        if video_id in tied:  # its personal terms, each part computed once per request
            owner_part = owner_parts.get(video.owner)
            if owner_part is None:
                owner_part = owner_parts[video.owner] = _owner_part(video.owner, viewer,
                                                                    weights)
            tags_of_video = base.lowered[video_id]
            tags_part = tags_parts.get(tags_of_video)
            if tags_part is None:
                tags_part = tags_parts[tags_of_video] = _tags_part(tags_of_video, viewer,
                                                                   heaviest, weights)
            full = shared + (owner_part + tags_part)
        else:
            full = shared
        scored.append((-full, video_id))
        if prune:
            if len(best) < limit:  # type: ignore[operator]
                heapq.heappush(best, full)
            elif full > best[0]:
                heapq.heapreplace(best, full)
    scored.sort()
    return [video_id for _, video_id in scored[:limit]]


# -- trending ----------------------------------------------------------------------------------

def trending_score(hourly: Iterable[tuple[float, int]], now: float, window: float,
                   half_life: float) -> float:
    """``Σ views_h · 0.5 ^ (age_h / half_life)`` over the hourly buckets ``(hour start,
    views)`` whose hour started less than ``window`` seconds ago; ``age_h`` is measured from
    the bucket's middle (at least 0)."""
    total = 0.0
    for start, views in hourly:
        if views <= 0 or now - start >= window:
            continue
        age = max(0.0, now - (start + HOUR / 2))
        total += views * 0.5 ** (age / half_life)
    return total


def trending(scores: Mapping[str, float], limit: int | None = None) -> list[str]:
    """Video ids by trending score, highest first (ties by id); zero scores left out."""
    ranked = sorted((-score, video_id) for video_id, score in scores.items() if score > 0)
    return [video_id for _, video_id in ranked[:limit]]


# -- following ---------------------------------------------------------------------------------

def following(videos: Iterable[Video], follows: frozenset[str] | set[str],
              limit: int | None = None) -> list[str]:
    """The followed creators' videos, newest first (ties by id, highest first)."""
    chosen = sorted(((video.created, video.id) for video in videos if video.owner in follows),
                    reverse=True)
    return [video_id for _, video_id in chosen[:limit]]
