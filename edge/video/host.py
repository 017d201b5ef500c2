"""What the video features need of the node hosting them: ``FeatureHost``.

The features (``features.py``, ``playlists.py``, ``prefetch.py``) are reached from the node
through one hook and call back into it: to read its config, count, look up and key objects,
start or join fills, write heads and fall back to the node's own handling. They type that
node as this Protocol rather than import ``CacheNode``: the node imports the features, so
the features naming the node would make the two import each other. ``CacheNode`` satisfies
it structurally; the members are exactly the ones the features use.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from reelcdn.edge.cache.keys import KeyPolicy
    from reelcdn.edge.cache.store import CacheEntry, MemoryStore
    from reelcdn.edge.config import NodeConfig
    from reelcdn.edge.fetch.coalescer import Coalescer, Fetch
    from reelcdn.edge.fetch.order import FillOrder
    from reelcdn.edge.http.connection import HttpConnection
    from reelcdn.edge.metrics import NodeStats
    from reelcdn.extensions.message import Request
    from reelcdn.manifests.meta import VideoMeta

__all__ = ["FeatureHost", "HeadBuilder", "MediaPlaylistHook"]


class MediaPlaylistHook(Protocol):
    """What a rendered media playlist tells the features (``EdgeFeatures``): the player's
    next requests can be prefetched."""

    def after_media_playlist(
        self, req: Request, video: str, meta: VideoMeta, rendition: str
    ) -> None: ...


class HeadBuilder(Protocol):
    """What rendered playlists need of the node's writing side (``Delivery``): its head
    builder, so their heads carry the node's Age, Cache-Status, Via and CMSD as every other
    head does."""

    def head(
        self,
        status: int,
        header_block: bytes,
        age: float | None,
        member: bytes,
        ttl: float | None,
        length: int | None,
        close: bytes,
        *,
        chunked: bool = ...,
        prior: tuple[bytes, bytes] = ...,
        cmsd_block: bytes | None = ...,
    ) -> bytes: ...


class FeatureHost(Protocol):
    """The node as the video features see it (``CacheNode``)."""

    @property
    def name(self) -> str:
        """The node's name (its CMSD member)."""
        ...

    @property
    def config(self) -> NodeConfig: ...

    @property
    def stats(self) -> NodeStats: ...

    @property
    def keys(self) -> KeyPolicy:
        """Keys a prefetch target and a playlist's meta.json as the node keys requests."""
        ...

    @property
    def store(self) -> MemoryStore: ...

    @property
    def coalescer(self) -> Coalescer:
        """The fills in flight: joined rather than started twice."""
        ...

    @property
    def delivery(self) -> HeadBuilder:
        """Builds every head the node sends, rendered playlists' included."""
        ...

    @property
    def upstream(self) -> object:
        """The node's upstream: the steering server reads its ``health()`` view, if any."""
        ...

    @property
    def features(self) -> MediaPlaylistHook | None: ...

    def receive(
        self, req: Request, conn: HttpConnection, hooks: bool = True
    ) -> Awaitable[None] | None:
        """The node's own handling (``hooks=False``: as a static object, no features)."""
        ...

    def fill_order_for(
        self, key: str, client_ip: str, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> FillOrder: ...

    def start_fill(
        self, key: str, primary: str, order: FillOrder, stale: CacheEntry | None
    ) -> Fetch: ...
