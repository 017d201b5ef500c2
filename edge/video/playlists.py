"""HLS playlists rendered at the edge from the video's ``meta.json`` (docs/manifests.md).

``/v/{id}/master.m3u8``, ``/v/{id}/{rendition}/index.m3u8`` and ``.../iframes.m3u8`` are not
fetched: the node fetches ``/v/{id}/meta.json`` through its parents like any object (cached
with its TTL, coalesced) and renders the playlist with the pure ``reelcdn.manifests`` library.
So per-request variations (filters, start order, tokens on every URI) cost no upstream traffic
and parents never render anything.

Caching, in two layers. Renderings are cached as token-free *templates*
(``manifests.Template``) under ``(meta.version, kind, rendition, options.cache_key())`` in a
bounded LRU, shared by every viewer and every token. And each finished 200 answer (body, ETag,
fields) is kept as a :class:`RenderedAnswer` under the request's cache key and carried query,
for as long as the stored meta.json entry it was rendered from is the one the store holds: a
repeated request is then one dict lookup, the meta.json lookup and a write, as a stored
object's HIT is, instead of parsing options, filling the template, hashing the ETag and
building the fields again. Both are answered synchronously, like any cache HIT.

Staleness: meta.json is judged by ``verdicts.stale_while_revalidate``, the same function the
node applies to every stored object. A stale meta.json within its ``stale-while-revalidate``
window (RFC 5861 §3) still answers at once, and one background revalidation of it is started
(none when a fill of it is already in flight: they share the coalescer), so no player waits
on a revalidation the origin allowed to be hidden. Parents hold meta.json as an ordinary
object and apply the same rule. Past the window, or without one, the request waits for the
revalidation as before. The origin gives a ready video's meta.json a window and a processing
one none (``origin/cache_control.py``): an EVENT playlist must show new segments as soon as
its short max-age ends, not one revalidation later.

Fallback: when ``meta.json`` is missing (404, or any non-200) the request is served as a
normal cached fetch of the playlist's own path, i.e. the origin's static playlist.

Answers: ``Content-Type: application/vnd.apple.mpegurl``; an ETag from the meta version, the
playlist, the options and the carried query (so it names these exact bytes); Cache-Control from
the meta state (``ready``: immutable content, an hour; ``processing``: one second, players
reload EVENT playlists); 304/412 on conditional requests; HEAD; ``Cache-Status`` saying
``detail=rendered`` after the meta.json's own outcome (``hit``, ``fwd=uri-miss``, or
``fwd=stale; fwd-status=304`` when revalidated), with the parents' members before it, or
``hit; detail="stale-while-revalidate rendered"`` when answered from a stale meta.json within
its window. Each answer is counted in ``reelcdn_requests_total`` under that same outcome (hit,
stale, miss, revalidated; ``edge/ops/ratios.py``), so a playlist rendered from a fresh
meta.json is a hit in ``/metrics`` as in ``Cache-Status``; ``reelcdn_playlists_rendered_total``
counts the 200 answers.
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
from reelcdn.edge.cache.verdicts import stale_while_revalidate
from reelcdn.edge.fetch.contract import FetchFailed
from reelcdn.edge.http import conditional
from reelcdn.edge.video import cmsd
from reelcdn.extensions.message import Request
from reelcdn.manifests import (
    OPTION_PARAMETERS,
    ManifestError,
    NotReady,
    NoVariants,
    OptionError,
    Pathway,
    RenderOptions,
    Steering,
    Template,
    UnknownRendition,
    carried_part,
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
ANSWERS = 4096             # finished answers kept per node, and their body bytes at most:
ANSWER_BYTES = 8 << 20     # a long video's media playlist is tens of KiB, and tokens make
                           # one answer per viewer

Route = tuple[str, str, str]  # (video id, kind: master | media | iframes, rendition)

#: Returned by :meth:`PlaylistRenderer.receive` for a path that names no rendered playlist.
NOT_PLAYLIST = object()

#: This node's Cache-Status member of a playlist answered from a stale meta.json within its
#: stale-while-revalidate window (read as ``stale``, like a stored object's, by ratios.py).
STALE_MEMBER = b'hit; detail="stale-while-revalidate rendered"'
FRESH_MEMBER = b"hit; detail=rendered"


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


class RenderedAnswer:
    """One rendered playlist's finished 200 answer: what every request with the same cache key
    and carried query gets while ``entry`` (the stored meta.json it was rendered from) is the
    one the store holds. A 304 refreshes that entry in place, so the answer outlives a
    revalidation; a new meta.json is a new entry, and the answer is rendered again."""

    __slots__ = ("meta_key", "entry", "meta", "where", "block", "body", "etag")

    def __init__(self, meta_key: str, entry: CacheEntry | None, meta: VideoMeta, where: Route,
                 block: bytes, body: bytes, etag: str) -> None:
        self.meta_key = meta_key
        self.entry = entry
        self.meta = meta
        self.where = where
        self.block = block      # Content-Type, Cache-Control, ETag, CMSD-Static
        self.body = body
        self.etag = etag


class _AnswerStore:
    """Finished answers by (cache key, carried query), least recently used dropped first,
    bounded in count and in body bytes."""

    def __init__(self, limit: int, byte_limit: int) -> None:
        self.limit = limit
        self.byte_limit = byte_limit
        self.bytes = 0
        self._answers: OrderedDict[str, RenderedAnswer] = OrderedDict()

    def get(self, key: str) -> RenderedAnswer | None:
        answer = self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
        return answer

    def put(self, key: str, answer: RenderedAnswer) -> None:
        if len(answer.body) > self.byte_limit:
            return
        old = self._answers.pop(key, None)
        if old is not None:
            self.bytes -= len(old.body)
        self._answers[key] = answer
        self.bytes += len(answer.body)
        while len(self._answers) > self.limit or self.bytes > self.byte_limit:
            _, dropped = self._answers.popitem(last=False)
            self.bytes -= len(dropped.body)

    def clear(self) -> None:
        self._answers.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._answers)


class PlaylistRenderer:
    """Renders the playlists of one node from the meta.json entries it caches."""

    def __init__(self, node: FeatureHost) -> None:
        self.node = node
        self.templates = _Lru(node.config.playlist_cache_entries)
        self.answers = _AnswerStore(ANSWERS, ANSWER_BYTES)
        self._metas = _Lru(PARSED_METAS)    # meta.json key -> (entry, VideoMeta)
        self._steering_of: NodeConfig | None = None   # the config _steering was built from
        self._steering: Steering | None = None
        self._answers_of: NodeConfig | None = None    # the config the answers were made under
        self._carried: frozenset[str] = frozenset()
        self._keyed_options = True
        # CMSD-Dynamic lines of client connections measured this second (complete ones only).
        self._measured: dict[HttpConnection, bytes] = {}
        self._measured_second = 0

    def steering(self) -> Steering | None:
        """The node's content steering (None: not configured, or no server URI), rebuilt only
        when a reload replaced the config."""
        config = self.node.config
        if config is not self._steering_of:
            self._steering = steering_of(config.steering)
            self._steering_of = config
        return self._steering

    def _answer_key(self, req: Request, primary: str) -> str | None:
        """Where a request's finished answer is kept: its cache key (the path, the options'
        parameters and, under ``host_in_key``, the host; ignored parameters such as CMCD
        left out) and its carried query. None when the key cannot stand for the options (an
        operator ignores an option's parameter), so nothing is kept."""
        config = self.node.config
        if config is not self._answers_of:  # first use, or a reload: answers made under the
            self._answers_of = config       # old config (steering, CMSD, tokens) are void
            self.answers.clear()
            self._carried = frozenset(config.carried_query_params)
            keys = self.node.keys
            self._keyed_options = not any(
                name in keys.ignored or name.startswith(keys.ignored_prefixes)
                for name in OPTION_PARAMETERS)
        if not self._keyed_options:
            return None
        carried = carried_part(req.query, self._carried) if self._carried else ""
        return primary + "\0" + carried if carried else primary

    # -- entry point ---------------------------------------------------------------------------
    def receive(
        self, req: Request, conn: HttpConnection, primary: str
    ) -> Awaitable[None] | None | object:
        """Answer a playlist request (``NOT_PLAYLIST`` when the path names none): at once
        when meta.json is fresh in the store, or stale within its stale-while-revalidate
        window; else after fetching or revalidating it."""
        node = self.node
        answer_key = self._answer_key(req, primary)
        if answer_key is not None:
            kept = self.answers.get(answer_key)
            if kept is not None:
                entry = node.store.lookup(kept.meta_key, {})
                if entry is kept.entry and entry is not None:
                    member = self._usable(req, kept.meta_key, entry)
                    if member is not None:
                        self._write(req, conn, kept, member, entry.prior[0],
                                    "hit" if member is FRESH_MEMBER else "stale")
                        return None
        where = route(req.path)
        if where is None:
            return NOT_PLAYLIST
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
        if entry is not None:
            member = self._usable(req, meta_key, entry)
            if member is not None:
                meta = self._meta_of(meta_key, entry)
                if meta is None:
                    return node.receive(req, conn, hooks=False)  # no usable meta.json: static
                self._answer(req, conn, where, options, meta, member, entry.prior[0],
                             "hit" if member is FRESH_MEMBER else "stale", meta_key, entry,
                             answer_key)
                return None
        return self._fetch_and_answer(req, conn, where, options, meta_key, entry, answer_key)

    def _usable(self, req: Request, meta_key: str, entry: CacheEntry) -> bytes | None:
        """Whether a stored meta.json may answer now, as this node's Cache-Status member:
        fresh, or stale within its stale-while-revalidate window (the node's one verdict,
        ``verdicts.stale_while_revalidate``), in which case one background revalidation is
        started unless a fill of it is already in flight. None: the request must wait for
        a fetch or a revalidation."""
        now = time.time()
        if now < entry.fresh_until:
            return FRESH_MEMBER
        if entry.status == 200 and stale_while_revalidate(entry, now):
            node = self.node
            if node.coalescer.get(meta_key) is None:
                node.start_fill(meta_key, meta_key,
                                node.fill_order_for(meta_key, req.client_ip), entry)
            return STALE_MEMBER
        return None

    async def _fetch_and_answer(
        self,
        req: Request,
        conn: HttpConnection,
        where: Route,
        options: RenderOptions,
        meta_key: str,
        stale: CacheEntry | None,
        answer_key: str | None,
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
                    self._answer(req, conn, where, options, meta, FRESH_MEMBER,
                                 entry.prior[0], "hit", meta_key, entry, answer_key)
                    return
            order = node.fill_order_for(meta_key, req.client_ip)
            fetch = node.start_fill(meta_key, meta_key, order, stale)
        meta: VideoMeta | None = None
        source: CacheEntry | None = None   # the stored entry rendered from, if stored
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
                    source = head
            else:
                status = head.status
                prior = head.prior[0]
                if status == 200 and fetch.error is None:
                    stored = node.store.lookup(meta_key, {})
                    if stored is not None and stored.status == 200 and fetch.done and (
                            stored.response_time == head.response_time):
                        source = stored   # the fill stored this body: parsed once, kept
                        meta = self._meta_of(meta_key, stored)
                    else:
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
        self._answer(req, conn, where, options, meta, member + b"; detail=rendered", prior,
                     "revalidated" if revalidated else "miss", meta_key, source, answer_key)

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
        meta_key: str,
        source: CacheEntry | None,
        answer_key: str | None,
    ) -> None:
        """Render and write the playlist; counted under ``outcome``, its meta.json's lookup
        (hit, stale, miss, revalidated: edge/ops/ratios.py), like any answer of this node.
        ``member`` is this node's whole Cache-Status member. The finished answer is kept
        under ``answer_key`` when it was rendered from a stored meta.json (``source``)."""
        node = self.node
        try:
            template = self._template(meta, where, options)
        except NoVariants as exc:
            self._write_error(req, conn, 404, str(exc), _error_member(member, b"no-variants"),
                              outcome, prior)
            return
        except UnknownRendition as exc:
            self._write_error(req, conn, 404, str(exc), _error_member(member, b"unknown-rendition"),
                              outcome, prior)
            return
        except NotReady as exc:
            self._write_error(req, conn, 503, str(exc), _error_member(member, b"not-ready"),
                              outcome, prior, extra=b"Retry-After: %d\r\n" % NOT_READY_RETRY)
            return
        except ManifestError as exc:  # a future subclass: still a clear answer
            self._write_error(req, conn, 422, str(exc), _error_member(member, b"unrenderable"),
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
        answer = RenderedAnswer(meta_key, source, meta, where, block, body, etag)
        if source is not None and answer_key is not None:
            self.answers.put(answer_key, answer)
        self._write(req, conn, answer, member, prior, outcome)

    def _write(
        self,
        req: Request,
        conn: HttpConnection,
        answer: RenderedAnswer,
        member: bytes,
        prior: bytes,
        outcome: str,
    ) -> None:
        """Write a finished answer (200, or 304/412 on the request's preconditions), counted
        under ``outcome``; a media playlist's also asks for its first objects' prefetch."""
        node = self.node
        close = conn.connection_field(req)
        verdict = conditional.request_verdict(req.method, req.headers, 200, answer.etag, None)
        if verdict is not None:
            length = None if verdict == 304 else 0
            head = self._head(conn, verdict, answer.block if verdict == 304 else b"", member,
                              length, close, prior)
            conn.write(head)
            node.stats.count(req.method, outcome, verdict)
            return
        body = answer.body
        head = self._head(conn, 200, answer.block, member, len(body), close, prior)
        if req.method == "HEAD":
            conn.write(head)
            node.stats.bytes_sent += len(head)
        else:
            conn.write(head + body)
            node.stats.bytes_sent += len(head) + len(body)
        node.stats.count(req.method, outcome, 200)
        node.stats.playlists_rendered += 1
        where = answer.where
        if where[1] == "media" and node.features is not None:
            node.features.after_media_playlist(req, where[0], answer.meta, where[2])

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
        line = self._measures(conn) if node.config.cmsd else None
        return node.delivery.head(status, block, None, member, None, length, close,
                          prior=(prior, b""), cmsd_block=line)

    def _measures(self, conn: HttpConnection) -> bytes:
        """This node's ``CMSD-Dynamic`` line for a client connection, with the kernel's
        ``etp``/``rtt`` of it. Read once a second per connection once both are known (a
        player asks its playlists on one connection within milliseconds, and reading
        TCP_INFO through the transport costs a socket object and a system call, about as
        much as the rest of a kept answer); until then, on every answer, so the delivery
        rate shows as soon as the kernel has measured it."""
        second = int(time.monotonic())
        measured = self._measured
        if second != self._measured_second:
            measured.clear()  # also lets go of the connections of the second before
            self._measured_second = second
        line = measured.get(conn)
        if line is None:
            etp, rtt = cmsd.tcp_measures(_socket_of(conn))
            line = cmsd.dynamic_block(self.node.name, etp, rtt)
            if etp is not None and rtt is not None:
                measured[conn] = line
        return line

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


def _error_member(member: bytes, detail: bytes) -> bytes:
    """The Cache-Status member of a renderer's error answer: the meta.json's outcome with the
    error's ``detail`` instead of ``rendered`` (still read as ``stale`` when the meta.json was
    a stale copy within its window, as the answer is counted)."""
    if member is STALE_MEMBER:
        return b'hit; detail="stale-while-revalidate ' + detail + b'"'
    return member.replace(b"; detail=rendered", b"") + b"; detail=" + detail


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
