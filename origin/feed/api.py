"""The feed service's routes, registered into the origin API's application
(``origin/api.py``'s ``build_app`` calls :func:`register`):

- ``GET /api/v1/feed?feed_type=for_you|following|trending&limit=&cursor=``: a page of a feed;
- ``POST``/``DELETE /api/v1/videos/{video_id}/like``: like, unlike (idempotent);
- ``POST``/``DELETE /api/v1/users/{name}/follow``: follow, unfollow (idempotent);
- ``POST /api/v1/sessions/{sid}``: a player's CMCD session id is the caller's, so the plays the
  edges count under it mark videos seen for the caller;
- ``POST /api/v1/plays``: the edges' play counts, with the shared ``plays_token`` (not a user
  token: the handler authenticates itself, ``own_auth``).

Errors are the API's JSON ``{"error": CODE, "detail": TEXT}`` (raised as ``TusError``, which
the API's middleware answers). docs/feed.md describes each route.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from reelcdn.manifests.meta import is_video_id
from reelcdn.origin.feed.cursors import CursorError
from reelcdn.origin.feed.service import FEED_TYPES, PLAYABLE, SESSION_TTL, FeedService
from reelcdn.origin.feed.store import Play
from reelcdn.origin.logs import USER, fields
from reelcdn.origin.tus import TusError
from reelcdn.origin.users import valid_name

if TYPE_CHECKING:
    from reelcdn.origin.state import OriginState

__all__ = ["FEED", "MAX_PLAYS", "MAX_PLAYS_BODY", "register"]

log = logging.getLogger("reelcdn.origin.feed")

FEED: web.AppKey[FeedService] = web.AppKey("feed_service")
PLAYS_TOKEN: web.AppKey[str | None] = web.AppKey("plays_token")

DEFAULT_LIMIT = 10
MAX_LIMIT = 50
MAX_PLAYS_BODY = 1 << 20      # bytes of a play batch
MAX_PLAYS = 10_000            # entries of a play batch
MAX_COUNT = 1_000_000_000     # starts or completions of one entry
_BATCH = re.compile(r"[A-Za-z0-9_-]{1,200}:[0-9a-fA-F]{32}")
_NODE = re.compile(r"[A-Za-z0-9_-]{1,200}")
_SID = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,64}")  # CMCD sid: printable, no " or \
_NO_STORE = {"Cache-Control": "no-store"}


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None
           ) -> TusError:
    return TusError(status, code, detail, headers)


def _allow(request: web.Request, *methods: str) -> None:
    if request.method not in methods:
        allow = ", ".join((*methods, "OPTIONS"))
        raise _error(405, "method_not_allowed", "method not allowed here", {"Allow": allow})


# -- the feed ----------------------------------------------------------------------------------

async def feed(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/feed``: ``{"items": [...], "next_cursor": str | null}``."""
    if request.method == "OPTIONS":
        return web.Response(status=204)
    _allow(request, "GET", "HEAD")
    service = request.app[FEED]
    feed_type = request.query.get("feed_type", "for_you")
    if feed_type not in FEED_TYPES:
        raise _error(400, "bad_feed_type", f"feed_type must be one of {', '.join(FEED_TYPES)}")
    text = request.query.get("limit", str(DEFAULT_LIMIT))
    limit = int(text) if text.isdigit() and len(text) <= 4 else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise _error(400, "bad_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    cursor = request.query.get("cursor")
    try:
        page = await asyncio.to_thread(service.page, request[USER], feed_type, limit,
                                       cursor or None)
    except CursorError as exc:
        raise _error(400, exc.code, exc.reason) from None
    return web.json_response({"feed_type": feed_type, "items": page.items,
                              "next_cursor": page.next_cursor}, headers=_NO_STORE)


# -- likes and follows -------------------------------------------------------------------------

async def like(request: web.Request) -> web.StreamResponse:
    """``POST`` likes the video (a second POST changes nothing), ``DELETE`` unlikes it:
    ``{"video", "liked", "likes"}``. 404 for a video that is not (or no longer) playable; an
    unlike of one deleted since is accepted."""
    if request.method == "OPTIONS":
        return web.Response(status=204)
    _allow(request, "POST", "DELETE")
    service = request.app[FEED]
    video = request.match_info["video_id"]
    row = await asyncio.to_thread(service.catalog.get, video) if is_video_id(video) else None
    if row is None or (request.method == "POST" and row["status"] not in PLAYABLE):
        raise _error(404, "not_found", "no video has this id")
    user, now = request[USER], service.clock()
    if request.method == "POST":
        await asyncio.to_thread(service.store.like, user, video, now)
    else:
        await asyncio.to_thread(service.store.unlike, user, video)
    likes = (await asyncio.to_thread(service.counted, video)).likes  # the cache's copy too
    return web.json_response({"video": video, "liked": request.method == "POST",
                              "likes": likes}, headers=_NO_STORE)


async def follow(request: web.Request) -> web.StreamResponse:
    """``POST`` follows the creator ``name`` (idempotent), ``DELETE`` unfollows:
    ``{"user", "following"}``. There are no accounts: a creator is a user with a video in the
    catalog, so following a name with none is 404 (unfollowing is always accepted). 400 for
    one's own name."""
    if request.method == "OPTIONS":
        return web.Response(status=204)
    _allow(request, "POST", "DELETE")
    service = request.app[FEED]
    name, user = request.match_info["name"], request[USER]
    if not valid_name(name):
        raise _error(400, "bad_user", "a user name is 1-64 of A-Z a-z 0-9 _ -")
    if name == user:
        raise _error(400, "cannot_follow_self", "you cannot follow yourself")
    if request.method == "POST":
        videos = await asyncio.to_thread(service.catalog.by_owner, name, 1)
        if not videos:
            raise _error(404, "unknown_user", f"{name} has no videos to follow")
        await asyncio.to_thread(service.store.follow, user, name, service.clock())
    else:
        await asyncio.to_thread(service.store.unfollow, user, name)
    return web.json_response({"user": name, "following": request.method == "POST"},
                             headers=_NO_STORE)


async def session(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/sessions/{sid}``: the player's CMCD session id is the caller's for 24 h
    (204), so plays under it mark videos seen; 409 while another user holds it."""
    if request.method == "OPTIONS":
        return web.Response(status=204)
    _allow(request, "POST")
    service = request.app[FEED]
    sid = request.match_info["sid"]
    if not _SID.fullmatch(sid):
        raise _error(400, "bad_session", "a session id is 1-64 printable ASCII characters, "
                     'no space, " or \\')
    now = service.clock()
    if not await asyncio.to_thread(service.store.register_session, sid, request[USER],
                                   now + SESSION_TTL, now):
        raise _error(409, "session_taken", "another user holds this session id")
    return web.Response(status=204, headers=_NO_STORE)


# -- play counts from the edges ----------------------------------------------------------------

def _plays_auth(request: web.Request) -> None:
    token = request.app[PLAYS_TOKEN]
    if token is None:
        raise _error(404, "plays_disabled", "this origin takes no play counts ([api] "
                     "plays_token is not set)")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    ok = hmac.compare_digest(given.strip().encode(), token.encode())
    if scheme.lower() != "bearer" or not ok:
        raise _error(401, "unauthorized", "an Authorization: Bearer <plays token> is required",
                     {"WWW-Authenticate": 'Bearer realm="reelcdn-plays"'})


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_PLAYS_BODY:
        raise _error(413, "too_large", f"a play batch is at most {MAX_PLAYS_BODY} bytes")
    body = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > MAX_PLAYS_BODY:
            raise _error(413, "too_large", f"a play batch is at most {MAX_PLAYS_BODY} bytes")


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _error(400, "bad_plays", f"{where} must be an integer from 0 to {MAX_COUNT}")
    return value


def parse_batch(raw: bytes) -> tuple[str, str, list[tuple[str, int, int, tuple[str, ...]]]]:
    """``(batch, node, entries)`` of a play batch's body, or a 400 (413 past MAX_PLAYS)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _error(400, "bad_json", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _error(400, "bad_json", "the body must be a JSON object")
    batch, node, plays = body.get("batch"), body.get("node"), body.get("plays")
    if not isinstance(batch, str) or not _BATCH.fullmatch(batch):
        raise _error(400, "bad_batch", 'batch must be "<node-name>:<32 hex digits>"')
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        raise _error(400, "bad_node", "node must be a node name (1-200 of A-Z a-z 0-9 _ -)")
    if not isinstance(plays, list):
        raise _error(400, "bad_plays", "plays must be a list")
    if len(plays) > MAX_PLAYS:
        raise _error(413, "too_many_plays", f"a batch has at most {MAX_PLAYS} entries")
    entries = []
    for index, entry in enumerate(plays):
        where = f"plays[{index}]"
        if not isinstance(entry, dict):
            raise _error(400, "bad_plays", f"{where} must be an object")
        video = entry.get("video_id")
        if not isinstance(video, str) or not 1 <= len(video) <= 256:
            raise _error(400, "bad_plays", f"{where}.video_id must be a string")
        starts = _count(entry.get("starts", 0), f"{where}.starts")
        completions = _count(entry.get("completions", 0), f"{where}.completions")
        sessions = entry.get("sessions", [])
        if sessions is None:
            sessions = []
        if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
            raise _error(400, "bad_plays", f"{where}.sessions must be a list of strings")
        entries.append((video, starts, completions, tuple(sessions)))
    return batch, node, entries


def _known(service: FeedService, entries: list[tuple[str, int, int, tuple[str, ...]]],
           ) -> tuple[list[Play], int]:
    """The entries of playable videos (merged per video), and how many entries were not."""
    merged: dict[str, list[Any]] = {}
    unknown = 0
    verdict: dict[str, bool] = {}
    for video, starts, completions, sessions in entries:
        if video not in verdict:
            verdict[video] = is_video_id(video) and service.playable(video)
        if not verdict[video]:
            unknown += 1
            continue
        slot = merged.setdefault(video, [0, 0, set()])
        slot[0] += starts
        slot[1] += completions
        slot[2].update(sid for sid in sessions if _SID.fullmatch(sid))
    plays = [Play(video, s, c, tuple(sorted(sids))) for video, (s, c, sids) in merged.items()]
    return plays, unknown


async def plays(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/plays``: count a batch of the edges' plays once (by ``batch``):
    ``{"batch", "duplicate", "unknown"}``."""
    _plays_auth(request)
    _allow(request, "POST")
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise _error(415, "bad_content_type", "a play batch is Content-Type: application/json")
    service = request.app[FEED]
    batch, node, entries = parse_batch(await _body(request))
    known, unknown = await asyncio.to_thread(_known, service, entries)
    duplicate, unknown = await asyncio.to_thread(service.store.ingest, batch, node, known,
                                                 unknown, service.clock())
    metrics = service.metrics
    if duplicate:
        metrics.batches.labels("duplicate").inc()
    else:
        metrics.batches.labels("counted").inc()
        metrics.plays.inc(sum(p.starts for p in known))
        metrics.completions.inc(sum(p.completions for p in known))
        metrics.unknown.inc(unknown)
    log.info("plays ingested", extra=fields(event="plays_ingested", batch=batch, node=node,
                                            entries=len(entries), unknown=unknown,
                                            duplicate=duplicate))
    return web.json_response({"batch": batch, "duplicate": duplicate, "unknown": unknown},
                             headers=_NO_STORE)


plays.own_auth = True  # type: ignore[attr-defined]  # the plays token, not a user token


# -- registration ------------------------------------------------------------------------------

def register(app: web.Application, state: OriginState) -> FeedService:
    """Add the feed's routes to the origin API's application, its service (started and
    stopped with the application) and its metrics (in the origin's registry)."""
    service = FeedService.open(state.config, lambda: state.catalog, state.metrics.registry,
                               state.clock, cache=state.cache, published=lambda: state.published)
    app[FEED] = service
    state.on_video_deleted.append(service.forget)
    app[PLAYS_TOKEN] = state.config.plays_token
    app.router.add_route("*", "/api/v1/feed", feed)
    app.router.add_route("*", "/api/v1/videos/{video_id}/like", like)
    app.router.add_route("*", "/api/v1/users/{name}/follow", follow)
    app.router.add_route("*", "/api/v1/sessions/{sid}", session)
    app.router.add_route("*", "/api/v1/plays", plays)

    async def started(_: web.Application) -> None:
        await service.start()

    async def stopped(_: web.Application) -> None:
        await service.stop()

    app.on_startup.append(started)
    app.on_cleanup.append(stopped)
    return service
