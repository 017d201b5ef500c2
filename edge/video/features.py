"""The edge's request hook: rendered playlists, CMCD and prefetch, in one call from ``receive``.

Why one hook: ``CacheNode.receive`` is the HIT path, so the edge features cost it one method
call and a few dict lookups, and node.py keeps one small, local change. The hook runs after the
cache key is computed and returns ``CONTINUE`` to let the node go on as usual, or the node's
answer (None, written synchronously, or an awaitable) when it took the request.

- ``/v/{id}/master.m3u8`` and ``/v/{id}/{rendition}/(index|iframes).m3u8`` go to the
  playlist renderer (edge/video/playlists.py) when ``render_playlists`` is on (default: edges).
- CMCD (edge/video/cmcd.py) is read from the ``CMCD`` query argument and headers; ``nor`` asks the
  prefetcher (edge/video/prefetch.py) for the next object, which it fetches only if it is a
  segment of the request's own video, within the client's and the node's byte budgets
  (edge/video/prefetch_bounds.py); ``su``/``bs``/``bl``/``mtp``/``sid`` go to the metrics and
  the debug log. The hook runs after the token gate: a refused request prefetches nothing.
- A request for an object a prefetch brought (or is bringing) counts that prefetch as used.
- The path of ``steering.server_uri`` is answered by the steering server
  (edge/video/steering.py): a content-steering manifest ranking the pathways by health.
- On an edge with ``plays_url``, media segment GETs go by the play counter
  (edge/video/plays.py): a session's first segment of a video (and a rendition's last) is
  counted once its answer is out; the counts are posted to the origin in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from reelcdn.edge.video import cmcd, playlists
from reelcdn.edge.video.plays import NOT_TAKEN, PLAY_SUFFIXES, Plays
from reelcdn.edge.video.prefetch import Prefetcher, request_host, resolve
from reelcdn.edge.video.steering import SteeringServer
from reelcdn.extensions.message import Request
from reelcdn.manifests.meta import VideoMeta

if TYPE_CHECKING:
    from reelcdn.edge.config import NodeConfig
    from reelcdn.edge.http.connection import HttpConnection
    from reelcdn.edge.video.host import FeatureHost

log = logging.getLogger("reelcdn.cmcd")

#: Returned by :meth:`EdgeFeatures.receive` when the node should handle the request itself.
CONTINUE = object()


class EdgeFeatures:
    """Playlist rendering, CMCD and prefetch of one node."""

    def __init__(self, node: FeatureHost, worker: int | None = None) -> None:
        self.node = node
        self.playlists = playlists.PlaylistRenderer(node)
        self.prefetcher = Prefetcher(node)
        self.steering = SteeringServer(node)
        self.plays = Plays(node, self.playlists, worker)
        self.counting = _counts_plays(node.config)

    def apply_config(self, config: NodeConfig) -> None:
        """A reload: plays are counted from now on only if the new config says so."""
        self.counting = _counts_plays(config)

    def start(self) -> None:
        """The node is starting: the steering server's health checks begin."""
        self.steering.start()

    def close(self) -> None:
        """The node is stopping: no more prefetches or health checks."""
        self.counting = False
        self.prefetcher.close()
        self.steering.close()

    async def flush(self) -> None:
        """The node is stopping gracefully: post the plays counted (bounded in time)."""
        self.counting = False
        await self.plays.aclose()

    @property
    def rendering(self) -> bool:
        config = self.node.config
        if config.render_playlists is None:
            return config.role == "edge"
        return config.render_playlists

    def receive(
        self, req: Request, conn: HttpConnection, primary: str
    ) -> Awaitable[None] | None | object:
        """The hook: ``CONTINUE``, or the answer to a request it took (a rendered playlist)."""
        prefetcher = self.prefetcher
        if prefetcher._running or prefetcher._unused:
            prefetcher.note_request(primary)
        query = req.query
        headers = req.headers
        sid = None
        if (query and ("CMCD" in query or "cmcd" in query)) or (
            b"cmcd-request" in headers or b"cmcd-object" in headers
            or b"cmcd-session" in headers or b"cmcd-status" in headers
        ):
            sid = self._cmcd(req)
        path = req.path
        if path.endswith(".m3u8") and self.rendering:
            answer = self.playlists.receive(req, conn, primary)
            if answer is not playlists.NOT_PLAYLIST:
                return answer
        if self.counting and req.method == "GET" and path.endswith(PLAY_SUFFIXES):
            answer = self.plays.receive(req, conn, sid)
            if answer is not NOT_TAKEN:
                return answer
        if self.steering.takes(path):
            return self.steering.answer(req, conn)
        return CONTINUE

    def _cmcd(self, req: Request) -> str | None:
        """Record the request's CMCD; return its session id (``sid``), if any."""
        data = cmcd.from_request(req.query, req.headers)
        if data is None:
            return None
        stats = self.node.stats
        stats.cmcd_requests += 1
        if data.starving:
            stats.cmcd_starving += 1
        if data.bl is not None:
            stats.cmcd_buffer_ms_sum += data.bl
            stats.cmcd_buffer_reports += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("cmcd %s sid=%s ot=%s su=%s bs=%s bl=%s mtp=%s nor=%s nrr=%s", req.path,
                      data.sid, data.ot, data.su, data.bs, data.bl, data.mtp, data.nor, data.nrr)
        if data.nor and self.node.config.prefetch_cmcd:
            target = resolve(req.path, data.nor)
            if target is not None:
                self.prefetcher.want(target, req.client_ip, self._host(req),
                                     request_path=req.path)
        return data.sid

    def after_media_playlist(
        self, req: Request, video: str, meta: VideoMeta, rendition: str
    ) -> None:
        """A media playlist was served: the player's next requests are the rendition's init
        segment and first segments, so fetch them now (``prefetch_segments``)."""
        count = self.node.config.prefetch_segments
        if count <= 0:
            return
        media = next((r for r in (*meta.renditions, *meta.audio) if r.name == rendition), None)
        if media is None:
            return
        base = f"/v/{video}/{rendition}/"  # the URL's id: the objects sit beside the playlist
        uris = [media.init.uri] + [segment.uri for segment in media.segments[:count]]
        host = self._host(req)
        for uri in dict.fromkeys(uris):  # the same bounds as a nor: a meta.json names the URIs
            self.prefetcher.want(base + uri, req.client_ip, host, request_path=req.path)

    def _host(self, req: Request) -> str | None:
        """The host that joins prefetch keys (``host_in_key``), as in the client's own key."""
        return request_host(req) if self.node.config.host_in_key else None


def _counts_plays(config: NodeConfig) -> bool:
    """Plays are counted by edges (players' requests), never by parents, which see only the
    edges' fills; and only with somewhere to send them."""
    return config.role == "edge" and config.plays_url is not None
