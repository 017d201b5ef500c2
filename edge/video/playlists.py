"""HLS playlists rendered at the edge from the video's ``meta.json`` (docs/manifests.md).

``/v/{id}/master.m3u8``, ``/v/{id}/{rendition}/index.m3u8`` and ``.../iframes.m3u8`` are not
fetched: the node fetches ``/v/{id}/meta.json`` through its parents like any object (cached
with its TTL, coalesced) and renders the playlist with the pure ``reelcdn.manifests`` library.
So per-request variations (filters, start order, tokens on every URI) cost no upstream traffic
and parents never render anything.

Caching: renderings are cached as token-free *templates* (``manifests.Template``) under
``(meta.version, kind, rendition, options.cache_key())`` in a bounded LRU; each request fills
its own carried query (tokens) in, so finished text with a token is never cached. A HIT (meta
fresh in the store, template cached) is answered synchronously, like any cache HIT.

Fallback: when ``meta.json`` is missing (404, or any non-200) the request is served as a
normal cached fetch of the playlist's own path, i.e. the origin's static playlist.

Answers: ``Content-Type: application/vnd.apple.mpegurl``; an ETag from the meta version, the
playlist, the options and the carried query (so it names these exact bytes); Cache-Control from
the meta state (``ready``: immutable content, an hour; ``processing``: one second, players
reload EVENT playlists); 304/412 on conditional requests; HEAD; ``Cache-Status`` saying
``detail=rendered`` after the meta.json's own outcome (``hit``, ``fwd=uri-miss``, or
``fwd=stale; fwd-status=304`` when revalidated), with the parents' members before it. Each
answer is counted in ``reelcdn_requests_total`` under that same outcome (hit, miss,
revalidated; ``edge/ops/ratios.py``), so a playlist rendered from a fresh meta.json is a hit
in ``/metrics`` as in ``Cache-Status``; ``reelcdn_playlists_rendered_total`` counts renderings.
Bad options are 400 naming the parameter; filters that exclude every variant 404; a video with
nothing playable yet 503 with ``Retry-After``.

Content steering: when the node's ``steering`` config has a ``server_uri``, every master gets
``EXT-X-CONTENT-STEERING`` and one copy of the variants per pathway (the library's ``Steering``,
built once per config and part of ``options.cache_key()``, so of the template key and the ETag).

CMSD: the heads are built here per response, so this node's ``CMSD-Dynamic`` member carries
``etp``/``rtt`` from TCP_INFO of this client's connection where the kernel measured them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from reelcdn.edge.cache.keys import host_of
from reelcdn.edge.cache.store import CacheEntry
from reelcdn.edge.fetch.contract import FetchFailed
from reelcdn.edge.http import conditional
from reelcdn.edge.video import cmsd
from reelcdn.extensions.message import Request
from reelcdn.manifests import (
    ManifestError,
    NotReady,
    NoVariants,
    OptionError,
    Pathway,
    RenderOptions,
    Steering,
    Template,
    UnknownRendition,
    iframe_template,
    master_template,
    media_template,
    options_from_query,
)
from reelcdn.manifests.meta import VideoMeta

if TYPE_CHECKING:
    from reelcdn.edge.config import NodeConfig, SteeringConfig
    from reelcdn.edge.http.connection import HttpConnection
    from reelcdn.edge.video.host import FeatureHost

log = logging.getLogger("reelcdn.playlists")

# /v/{video_id}/master.m3u8 and /v/{video_id}/{rendition}/(index|iframes).m3u8
_ROUTE = re.compile(
    r"/v/(?P<video>[A-Za-z0-9][A-Za-z0-9_-]{0,127})/"
    r"(?:(?P<master>master)|(?P<rendition>[A-Za-z0-9][A-Za-z0-9_-]{0,127})/"
    r"(?P<kind>index|iframes))\.m3u8"
)
CONTENT_TYPE = b"application/vnd.apple.mpegurl"
READY_MAX_AGE = 3600       # a ready video's playlists never change (a new version is new text)
PROCESSING_MAX_AGE = 1     # EVENT playlists grow: players reload about every target duration
NOT_READY_RETRY = 2        # seconds, Retry-After while nothing is playable yet
PARSED_METAS = 64          # parsed VideoMeta kept per node, by stored meta.json entry

Route = tuple[str, str, str]  # (video id, kind: master | media | iframes, rendition)


def route(path: str) -> Route | None:
    """Which rendered playlist a path names, or None."""
    match = _ROUTE.fullmatch(path)
    if match is None:
        return None
    if match.group("master"):
        return match.group("video"), "master", ""
    kind = "media" if match.group("kind") == "index" else "iframes"
    return match.group("video"), kind, match.group("rendition")


class _Lru(OrderedDict):  # type: ignore[type-arg]
    """A small bounded mapping, least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def get_touch(self, key: object) -> object | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: object, value: object) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class PlaylistRenderer:
    """Renders the playlists of one node from the meta.json entries it caches."""

    def __init__(self, node: FeatureHost) -> None:
        self.node = node
        self.templates = _Lru(node.config.playlist_cache_entries)
        self._metas = _Lru(PARSED_METAS)    # meta.json key -> (entry, VideoMeta)
        self._steering_of: NodeConfig | None = None   # the config _steering was built from
        self._steering: Steering | None = None

    def steering(self) -> Steering | None:
        """The node's content steering (None: not configured, or no server URI), rebuilt only
        when a reload replaced the config."""
        config = self.node.config
        if config is not self._steering_of:
            self._steering = steering_of(config.steering)
            self._steering_of = config
        return self._steering

    # -- entry point ---------------------------------------------------------------------------
    def receive(self, req: Request, conn: HttpConnection, where: Route) -> Awaitable[None] | None:
        """Answer a playlist request: synchronously when meta.json is fresh in the store."""
        node = self.node
        config = node.config
        video, _, _ = where
        try:
            options = options_from_query(req.query, config.carried_query_params,
                                         steering=self.steering())
        except OptionError as exc:
            self._write_error(req, conn, 400, str(exc), b"detail=bad-option", "error")
            return None
        meta_key = node.keys.for_target(f"/v/{video}/meta.json",
                                         host_of(req.headers.get(b"host", b"")))
        entry = node.store.lookup(meta_key, {})
        if entry is not None and entry.is_fresh(time.time()):
            meta = self._meta_of(meta_key, entry)
            if meta is None:
                return node.receive(req, conn, hooks=False)  # no usable meta.json: static
            self._answer(req, conn, where, options, meta, b"hit", entry.prior[0], "hit")
            return None
        return self._fetch_and_answer(req, conn, where, options, meta_key, entry)

    async def _fetch_and_answer(
        self,
        req: Request,
        conn: HttpConnection,
        where: Route,
        options: RenderOptions,
        meta_key: str,
        stale: CacheEntry | None,
    ) -> None:
        """Fetch meta.json like any miss (joining an in-flight fetch), then render."""
        node = self.node
        fetch = node.coalescer.get(meta_key)
        collapsed = fetch is not None
        if fetch is None:
            entry = node.store.lookup(meta_key, {})  # a fill may have finished since receive
            if entry is not None and entry.is_fresh(time.time()):
                meta = self._meta_of(meta_key, entry)
                if meta is not None:
                    self._answer(req, conn, where, options, meta, b"hit", entry.prior[0],
                                 "hit")
                    return
            order = node.fill_order_for(meta_key, req.client_ip)
            fetch = node.start_fill(meta_key, meta_key, order, stale)
        meta: VideoMeta | None = None
        prior = b""
        status = 502
        revalidated = False
        try:
            head = await fetch.wait_head()
            await fetch.wait_size(1 << 62)  # returns when the body is complete (or broke)
            if isinstance(head, CacheEntry):  # revalidated by a 304: the stored entry
                revalidated = True
                status = head.status
                prior = head.prior[0]
                if status == 200:
                    meta = self._meta_of(meta_key, head)
            else:
                status = head.status
                prior = head.prior[0]
                if status == 200 and fetch.error is None:
                    meta = _parse(b"".join(fetch.chunks), meta_key)
        except FetchFailed as failure:
            status = failure.status
        if meta is None:
            log.debug("no meta.json for %s (status %d): static playlist", req.path, status)
            pending = node.receive(req, conn, hooks=False)
            if pending is not None:
                await pending
            return
        # The playlist's outcome is its meta.json's, said as node.miss says it for any
        # object: a stored copy confirmed by a 304 is revalidated, anything else a miss.
        member = b"fwd=stale" if stale is not None else b"fwd=uri-miss"
        member += b"; fwd-status=304" if revalidated else b"; fwd-status=%d" % status
        if collapsed:
            member += b"; collapsed"
        self._answer(req, conn, where, options, meta, member, prior,
                     "revalidated" if revalidated else "miss")

    def stored_meta(self, video: str, req: Request) -> VideoMeta | None:
        """The parsed meta of ``video`` as this node holds it (fresh or stale), for the
        request's host; None when not stored. Never fetches (the play counter's look)."""
        node = self.node
        meta_key = node.keys.for_target(f"/v/{video}/meta.json",
                                         host_of(req.headers.get(b"host", b"")))
        entry = node.store.lookup(meta_key, {})
        return None if entry is None else self._meta_of(meta_key, entry)

    def _meta_of(self, meta_key: str, entry: CacheEntry) -> VideoMeta | None:
        """The parsed meta of a stored meta.json entry (parsed once per entry), or None when
        it is not a 200 or does not validate."""
        if entry.status != 200:
            return None
        cached = self._metas.get_touch(meta_key)
        if cached is not None and cached[0] is entry:  # type: ignore[index]
            return cached[1]  # type: ignore[index,no-any-return]
        meta = _parse(bytes(entry.body), meta_key)
        if meta is not None:
            self._metas.put(meta_key, (entry, meta))
        return meta

    # -- rendering and the answer --------------------------------------------------------------
    def _template(self, meta: VideoMeta, where: Route, options: RenderOptions) -> Template:
        _, kind, rendition = where
        key = (meta.version, kind, rendition, options.cache_key() if kind == "master" else "")
        template = self.templates.get_touch(key)
        if template is None:
            if kind == "master":
                template = master_template(meta, options)
            elif kind == "media":
                template = media_template(meta, rendition)
            else:
                template = iframe_template(meta, rendition)
            self.templates.put(key, template)
        return template  # type: ignore[return-value]

    def _answer(
        self,
        req: Request,
        conn: HttpConnection,
        where: Route,
        options: RenderOptions,
        meta: VideoMeta,
        member: bytes,
        prior: bytes,
        outcome: str,
    ) -> None:
        """Render and write the playlist; counted under ``outcome``, its meta.json's lookup
        (hit, miss, revalidated: edge/ops/ratios.py), like any answer of this node."""
        node = self.node
        try:
            template = self._template(meta, where, options)
        except NoVariants as exc:
            self._write_error(req, conn, 404, str(exc), member + b"; detail=no-variants",
                              outcome, prior)
            return
        except UnknownRendition as exc:
            self._write_error(req, conn, 404, str(exc), member + b"; detail=unknown-rendition",
                              outcome, prior)
            return
        except NotReady as exc:
            self._write_error(req, conn, 503, str(exc), member + b"; detail=not-ready", outcome,
                              prior, extra=b"Retry-After: %d\r\n" % NOT_READY_RETRY)
            return
        except ManifestError as exc:  # a future subclass: still a clear answer
            self._write_error(req, conn, 422, str(exc), member + b"; detail=unrenderable",
                              outcome, prior)
            return
        body = template.fill(options.carried_query).encode()
        etag = _etag(meta, where, options)
        max_age = READY_MAX_AGE if meta.ready else PROCESSING_MAX_AGE
        block = (
            b"Content-Type: " + CONTENT_TYPE + b"\r\n"
            + b"Cache-Control: public, max-age=%d\r\n" % max_age
            + b"ETag: " + etag.encode() + b"\r\n"
        )
        if node.config.cmsd:
            block += cmsd.static_playlist_block(node.name, live=not meta.ready)
        member += b"; detail=rendered"
        close = conn.connection_field(req)
        verdict = conditional.request_verdict(req.method, req.headers, 200, etag, None)
        if verdict is not None:
            length = None if verdict == 304 else 0
            head = self._head(conn, verdict, block if verdict == 304 else b"", member,
                              length, close, prior)
            conn.write(head)
            node.stats.count(req.method, outcome, verdict)
            return
        head = self._head(conn, 200, block, member, len(body), close, prior)
        conn.write(head if req.method == "HEAD" else head + body)
        node.stats.bytes_sent += len(head) + (0 if req.method == "HEAD" else len(body))
        node.stats.count(req.method, outcome, 200)
        node.stats.playlists_rendered += 1
        if where[1] == "media" and node.features is not None:
            node.features.after_media_playlist(req, where[0], meta, where[2])

    def _head(
        self,
        conn: HttpConnection,
        status: int,
        block: bytes,
        member: bytes,
        length: int | None,
        close: bytes,
        prior: bytes,
    ) -> bytes:
        """The head of a rendered answer: what ``Delivery.head`` writes, except that this
        node's ``CMSD-Dynamic`` member carries the client connection's measured ``etp``/``rtt``
        (this head is built for this one response, unlike a stored object's shared one)."""
        node = self.node
        line = None
        if node.config.cmsd:
            etp, rtt = cmsd.tcp_measures(_socket_of(conn))
            line = cmsd.dynamic_block(node.name, etp, rtt)
        return node.delivery.head(status, block, None, member, None, length, close,
                          prior=(prior, b""), cmsd_block=line)

    def _write_error(
        self,
        req: Request,
        conn: HttpConnection,
        status: int,
        reason: str,
        member: bytes,
        outcome: str,
        prior: bytes = b"",
        extra: bytes = b"",
    ) -> None:
        """A rendered error answer, counted under ``outcome`` (its meta.json's lookup, or
        ``error`` for a bad query option, answered before any)."""
        node = self.node
        body = f"{status} {reason}\n".encode()
        block = (b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
                 + extra)
        head = self._head(conn, status, block, member, len(body), conn.connection_field(req),
                          prior)
        conn.write(head if req.method == "HEAD" else head + body)
        node.stats.bytes_sent += len(head) + len(body)
        node.stats.count(req.method, outcome, status)


def steering_of(config: SteeringConfig | None) -> Steering | None:
    """The library's ``Steering`` for a node's steering config; None without one or without a
    server URI (no steering server: no ``EXT-X-CONTENT-STEERING``, variants listed once)."""
    if config is None or config.server_uri is None:
        return None
    return Steering(config.server_uri,
                    tuple(Pathway(pathway, base) for pathway, base in config.pathways),
                    config.initial)


def _socket_of(conn: HttpConnection) -> Any:
    """The client connection's socket view (only read, with getsockopt), or None."""
    transport = conn.transport
    return None if transport is None else transport.get_extra_info("socket")


def _parse(body: bytes, meta_key: str) -> VideoMeta | None:
    try:
        return VideoMeta.from_json(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("%s does not validate, serving static playlists: %s", meta_key, exc)
        return None


def _etag(meta: VideoMeta, where: Route, options: RenderOptions) -> str:
    """A strong validator of these exact bytes: meta version + which playlist + options +
    carried query (two tokens give two texts, so two tags)."""
    _, kind, rendition = where
    digest = hashlib.blake2s(
        "\0".join((kind, rendition, options.cache_key(), options.carried_query)).encode(),
        digest_size=6,
    ).hexdigest()
    return f'"{meta.version}-{digest}"'
