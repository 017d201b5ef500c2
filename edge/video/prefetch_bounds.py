"""What a prefetch may fetch, and how much of it: the rules edge/video/prefetch.py applies.

Why these bounds: a client chooses what CMCD ``nor`` names, and a prefetch costs the CDN an
upstream fetch the client never receives, so without them one small request could make a
large object travel origin → shield → regional → edge (990 bytes from a client moved 320 MiB
when ``nor`` could name any path). Every prefetch, on ``nor`` or after a media playlist, must
therefore be:

- **of the same video** as the request that asked for it (:func:`same_video`): the URL scheme
  is ``/v/{video_id}/...`` (docs/overview.md), so a request for one video never warms another
  one, and a request outside ``/v/{id}/`` prefetches nothing. Together with the order of
  ``CacheNode.receive`` (the token gate refuses before the features run), a client can only
  make the node prefetch objects of a video it was let in to watch.
- **a media object a player fetches next** (:func:`is_media_object`): init sections and
  segments, by suffix. Not playlists (an edge renders them per request from meta.json, so a
  prefetched ``index.m3u8`` is filed under a key no rendering edge serves, and players reload
  them themselves), not ``meta.json`` (the renderer's input, never a player's), not a poster
  or anything else. No query that stays in the key either (:func:`keyed_query`): the objects a
  rendered playlist names carry only ignored parameters (tokens), and a free query would make
  each prefetch of one segment a new object, fetched again from the origin.
- **within budgets of bytes**: a token bucket per client (:class:`ClientBudgets`, keyed by
  :func:`client_key`) and one for the node (:class:`ByteBucket`). A prefetch's size is known
  only once it has arrived, so the bytes it fetched are charged after the fill and a bucket
  below zero refuses new prefetches until it refills; the overrun is at most the fills that
  were already running (``prefetch_concurrency``) times the object size.

Pure: no I/O; the clock is passed in (seconds, monotonic).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

__all__ = [
    "CLIENT_BURST_SECONDS",
    "MAX_CLIENTS",
    "MEDIA_SUFFIXES",
    "NODE_BURST_SECONDS",
    "ByteBucket",
    "ClientBudgets",
    "client_key",
    "is_media_object",
    "keyed_query",
    "same_video",
    "video_of",
]

#: Suffixes of the objects a player fetches after a playlist: CMAF/fMP4 segments (``.m4s``)
#: and init sections or single-file renditions (``.mp4``; ``.m4a``/``.m4v`` their audio and
#: video spellings), MPEG-TS segments (``.ts``), packed audio (``.aac``) and WebVTT subtitle
#: segments (``.vtt``).
MEDIA_SUFFIXES: tuple[str, ...] = (".m4s", ".mp4", ".m4a", ".m4v", ".ts", ".aac", ".vtt")
#: A client's bucket holds this many seconds of its rate: what a player starting up (init +
#: the first segments of a high rung, fetched faster than real time) may draw at once.
CLIENT_BURST_SECONDS = 4.0
#: The node's bucket holds one second of its rate.
NODE_BURST_SECONDS = 1.0
#: Client buckets kept (LRU): a bound on memory. A bucket pushed out is forgotten as full,
#: which is also what it becomes after ``CLIENT_BURST_SECONDS`` idle; the node's bucket bounds
#: the sum whatever happens to the per-client ones.
MAX_CLIENTS = 16384

_VIDEO_PREFIX = "/v/"


def video_of(path: str) -> str | None:
    """The video id of an object path ``/v/{video_id}/{name...}``, or None for a path outside
    any video (``/x``, ``/v/``, ``/v/id``, ``/v/id/``). ``path`` is canonical (no ``..``, no
    ``//``: extensions/target.py), as request paths and cache keys are."""
    if not path.startswith(_VIDEO_PREFIX):
        return None
    slash = path.find("/", len(_VIDEO_PREFIX))
    if slash <= len(_VIDEO_PREFIX) or slash == len(path) - 1:
        return None
    return path[len(_VIDEO_PREFIX):slash]


def same_video(request_path: str, target_path: str) -> bool:
    """Whether ``target_path`` is an object of the video ``request_path`` belongs to (both
    canonical paths, without query). False whenever the request is outside ``/v/{id}/``."""
    video = video_of(request_path)
    return video is not None and video_of(target_path) == video


def is_media_object(path: str) -> bool:
    """Whether ``path`` names an init section or a segment (:data:`MEDIA_SUFFIXES`),
    the only objects a prefetch fetches."""
    return path.endswith(MEDIA_SUFFIXES)


def keyed_query(key: str) -> bool:
    """Whether a cache key keeps a query (what remains after the ignored parameters)."""
    return "?" in key


def client_key(ip: str) -> str:
    """The client a budget is kept for: its IPv4 address, or the /64 of an IPv6 one (a host
    is commonly given a whole /64, so a per-address bucket would be one per attempt); an
    IPv4-mapped IPv6 address is its IPv4 address. Anything unparsable keys as itself."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return ip


class ByteBucket:
    """A token bucket of bytes: it refills at ``rate`` bytes per second up to ``burst`` and is
    charged after the fact, so it may go below zero; while it is, it allows nothing. Rate and
    burst are passed on each call, so a reloaded configuration applies at once."""

    __slots__ = ("level", "stamp")

    def __init__(self, burst: float, now: float) -> None:
        self.level = float(burst)  # a new client (or the node) starts full
        self.stamp = now

    def refill(self, now: float, rate: float, burst: float) -> float:
        if now > self.stamp:
            self.level = min(float(burst), self.level + (now - self.stamp) * rate)
        elif self.level > burst:
            self.level = float(burst)
        self.stamp = max(self.stamp, now)
        return self.level

    def allows(self, now: float, rate: float, burst: float) -> bool:
        """True unless the bucket is below zero (after refilling to ``now``)."""
        return self.refill(now, rate, burst) >= 0.0

    def charge(self, size: int, now: float, rate: float, burst: float) -> None:
        """Take ``size`` bytes (already fetched) out of the bucket."""
        self.refill(now, rate, burst)
        self.level -= size


class ClientBudgets:
    """One :class:`ByteBucket` per client (:func:`client_key`), the last ``capacity`` clients
    seen kept in LRU order."""

    __slots__ = ("capacity", "_buckets")

    def __init__(self, capacity: int = MAX_CLIENTS) -> None:
        self.capacity = capacity
        self._buckets: OrderedDict[str, ByteBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allows(self, client: str, now: float, rate: float, burst: float) -> bool:
        """Whether ``client`` may start another prefetch. A client never seen has a full
        bucket, so asking does not store one."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return True
        self._buckets.move_to_end(client)
        return bucket.allows(now, rate, burst)

    def charge(self, client: str, size: int, now: float, rate: float, burst: float) -> None:
        """Charge ``size`` fetched bytes to ``client``."""
        buckets = self._buckets
        bucket = buckets.get(client)
        if bucket is None:
            bucket = buckets[client] = ByteBucket(burst, now)
            while len(buckets) > self.capacity:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(client)
        bucket.charge(size, now, rate, burst)

    def level(self, client: str, now: float, rate: float, burst: float) -> float:
        """The bytes ``client`` may still draw (negative: in debt); ``burst`` if unknown."""
        bucket = self._buckets.get(client)
        return float(burst) if bucket is None else bucket.refill(now, rate, burst)
