"""The origin's aiohttp applications: the public API under ``/api/v1/`` and the admin one.

Public routes (``Authorization: Bearer <user token>`` on every request but OPTIONS):

- ``/api/v1/uploads``: tus 1.0.0 — OPTIONS (capabilities), POST (creation,
  creation-with-upload; rate-limited per user: 429 with ``Retry-After``);
- ``/api/v1/uploads/{video_id}``: HEAD (offset), PATCH (append; checksum), DELETE
  (termination), OPTIONS;
- ``/api/v1/videos``: GET (an owner's videos); POST, with an S3 upload bucket configured, a
  direct-to-bucket upload: presigned part URLs (``origin/direct.py``; rate-limited like tus);
- ``/api/v1/videos/{video_id}``: GET, the video's state; DELETE;
- ``/api/v1/videos/{video_id}/complete``: POST, the direct upload's parts are all in;
- the feed service's routes (``origin/feed/api.py``): ``/api/v1/feed``, likes, follows,
  sessions, and ``/api/v1/plays`` (the edges' play counts, with their own token).

``X-HTTP-Method-Override`` on a POST names the method, as tus 1.0.0 asks. Every error is JSON,
``{"error": CODE, "detail": TEXT}``, with its status (tus statuses as ``origin/tus.py`` says);
every answer carries the CORS headers a browser tus client needs.

The admin application serves ``/metrics`` (Prometheus) and ``/health``, on its own listener.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reelcdn.manifests.meta import is_video_id
from reelcdn.origin import direct as direct_mod
from reelcdn.origin import tus
from reelcdn.origin.feed import api as feed_api
from reelcdn.origin.logs import USER, fields
from reelcdn.origin.uploads import (
    EXPIRED,
    TERMINATED,
    UPLOADED,
    Upload,
    new_video_id,
    valid_video_id,
)
from reelcdn.origin.users import BadToken, RateLimiter, valid_name, verify
from reelcdn.origin.videos import CatalogUnavailable
from reelcdn.origin.web import routes as web_routes

if TYPE_CHECKING:
    from reelcdn.origin.state import OriginState

log = logging.getLogger("reelcdn.origin")

SERVICE: web.AppKey[OriginState] = web.AppKey("origin_service")
WRITE_BATCH = 1 << 20  # bytes gathered before one pwrite

ALLOW_METHODS = "POST, GET, HEAD, PATCH, DELETE, OPTIONS"


class ApiError(tus.TusError):
    """An error of the API itself (not of the tus protocol); same shape."""


def _error_response(status: int, code: str, detail: str,
                    headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status,
                             headers=headers or {})


# -- middleware and signals --------------------------------------------------------------------

@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    service = request.app[SERVICE]
    try:
        # A handler marked own_auth checks its own credentials (the edges' plays token).
        if request.method != "OPTIONS" and not getattr(handler, "own_auth", False):
            request[USER] = _authenticate(request, service)
        return await handler(request)
    except tus.TusError as exc:
        service.metrics.errors.labels(str(exc.status), exc.code).inc()
        return _error_response(exc.status, exc.code, exc.reason, exc.headers)
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        service.metrics.errors.labels(str(exc.status), code).inc()
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return _error_response(exc.status, code, exc.reason, headers)
    except CatalogUnavailable as exc:  # the shared catalog's database: throttled, unreachable
        log.warning("%s %s: %s", request.method, request.path, exc)
        service.metrics.errors.labels("503", "catalog_unavailable").inc()
        return _error_response(503, "catalog_unavailable", "the video catalog failed; try again",
                               {"Retry-After": "1"})
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        service.metrics.errors.labels("500", "internal").inc()
        return _error_response(500, "internal", "the server failed; try again")


def _authenticate(request: web.Request, service: OriginState) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="reelcdn"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "an Authorization: Bearer <user token> is required",
                       challenge)
    try:
        return verify(token.strip(), service.config.keys, service.clock())
    except BadToken as exc:
        raise ApiError(401, "unauthorized", f"bad token: {exc.reason}",
                       {"WWW-Authenticate": f'Bearer realm="reelcdn", '
                        f'error="invalid_token", error_description="{exc.reason}"'}) from None


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    service = request.app[SERVICE]
    origins = service.config.cors_origins
    origin = request.headers.get("Origin")
    if "*" in origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers.add("Vary", "Origin")
    response.headers["Access-Control-Expose-Headers"] = ", ".join(tus.RESPONSE_HEADERS)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ", ".join(tus.REQUEST_HEADERS)
        response.headers["Access-Control-Max-Age"] = "86400"
    if request.path.startswith("/api/v1/uploads"):
        response.headers["Tus-Resumable"] = tus.TUS_VERSION


# -- tus ---------------------------------------------------------------------------------------

def _method(request: web.Request) -> str:
    override = request.headers.get("X-HTTP-Method-Override")
    if request.method == "POST" and override:
        return override.strip().upper()
    return request.method


def _options(service: OriginState) -> web.Response:
    return web.Response(status=204, headers=tus.options_headers(service.limits))


def _not_allowed(allow: str) -> ApiError:
    return ApiError(405, "method_not_allowed", "method not allowed here", {"Allow": allow})


async def uploads_root(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    method = _method(request)
    if method == "OPTIONS":
        return _options(service)
    tus.check_version(method, request.headers)
    if method != "POST":
        raise _not_allowed("POST, OPTIONS")
    verdict = tus.creation_verdict(request.headers, service.limits)
    user = request[USER]
    wait = service.limiter.take(user, service.clock())
    if wait:
        raise ApiError(429, "rate_limited",
                       f"too many uploads: {service.limiter.rate} per "
                       f"{service.limiter.window:g} s",
                       {"Retry-After": RateLimiter.retry_after(wait)})
    now = service.clock()
    upload = await asyncio.to_thread(
        service.store.create, user, verdict.length, verdict.metadata, now,
        now + service.config.upload_ttl)
    service.metrics.started.inc()
    log.info("upload created", extra=fields(event="upload_created", video=upload.id, user=user,
                                            length=verdict.length, via="tus"))
    await asyncio.to_thread(service.catalog.create, upload.id, user, dict(verdict.metadata))
    location = f"/api/v1/uploads/{upload.id}"
    headers = {"Location": location}
    if verdict.has_body:
        async with _lock(service, upload.id):
            try:
                await _receive(request, service, upload, verdict.checksum)
            except tus.TusError as exc:
                exc.headers.update(headers)  # the upload exists: the client may go on with it
                exc.headers.update(tus.upload_headers(upload))
                raise
        headers.update(tus.upload_headers(upload))
    elif upload.state == UPLOADED:
        await service.upload_complete(upload.id)
    if upload.expires is not None and upload.offset < upload.length:
        headers["Upload-Expires"] = tus.http_date(upload.expires)
    return web.Response(status=201, headers=headers)


def _lock(service: OriginState, video_id: str) -> asyncio.Lock:
    """One request at a time changes an upload; another one meanwhile → 423."""
    lock = service.locks.setdefault(video_id, asyncio.Lock())
    if lock.locked():
        raise ApiError(423, "upload_busy", "another request is writing this upload")
    return lock


def _find(service: OriginState, request: web.Request, video_id: str) -> Upload:
    """The caller's available upload: 404 unknown, 410 expired or terminated, 403 another
    user's. An upload found past its expiry is expired here and now."""
    upload = service.store.get(video_id) if valid_video_id(video_id) else None
    overdue = (upload is not None and upload.state == "uploading"
               and upload.expires is not None and upload.expires <= service.clock())
    if overdue:
        assert upload is not None
        if service.store.end(upload.id, EXPIRED, service.clock()):
            service.metrics.failed.labels("expired").inc()
    tus.check_available(upload, expired=overdue)
    assert upload is not None
    if upload.owner != request[USER]:
        raise ApiError(403, "not_owner", "this upload belongs to another user")
    return upload


async def upload_item(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    method = _method(request)
    if method == "OPTIONS":
        return _options(service)
    tus.check_version(method, request.headers)
    video_id = request.match_info["video_id"]
    if method == "HEAD":
        upload = _find(service, request, video_id)
        return web.Response(status=200, headers=tus.upload_headers(upload))
    if method == "PATCH":
        upload = _find(service, request, video_id)
        async with _lock(service, video_id):
            upload = _find(service, request, video_id)  # the offset as of now
            verdict = tus.patch_verdict(request.headers, upload)
            if upload.state == UPLOADED and verdict.body_length == 0:
                return web.Response(status=204, headers=tus.upload_headers(upload))
            await _receive(request, service, upload, verdict.checksum)
        return web.Response(status=204, headers=tus.upload_headers(upload))
    if method == "DELETE":
        upload = _find(service, request, video_id)
        if upload.state == UPLOADED:
            raise ApiError(409, "upload_complete",
                           "a complete upload is a video; it cannot be terminated")
        async with _lock(service, video_id):
            if service.store.end(video_id, TERMINATED, service.clock()):
                service.metrics.failed.labels("terminated").inc()
        service.locks.pop(video_id, None)
        return web.Response(status=204)
    raise _not_allowed("HEAD, PATCH, DELETE, OPTIONS")


async def _receive(request: web.Request, service: OriginState, upload: Upload,
                   checksum: tus.Checksum | None) -> None:
    """Append the request's body to the upload at its committed offset: write as it arrives,
    then (checksum verified) fsync and commit the offset. A checksum mismatch or a body past
    the length keeps nothing; a body cut short keeps what arrived unless a checksum was
    announced (a partial body cannot be verified)."""
    writer = service.store.open_writer(upload)
    handed_over = False
    try:
        digest = tus.hasher(checksum.algorithm) if checksum else None
        buffer = bytearray()
        cut_short = False
        try:
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                tus.check_room(upload.offset, writer.written + len(buffer) + len(chunk),
                               upload.length)
                if digest is not None:
                    digest.update(chunk)
                buffer += chunk
                if len(buffer) >= WRITE_BATCH:
                    writer.write(buffer)
                    buffer.clear()
        except tus.TusError:
            writer.discard()
            service.metrics.failed.labels("body_too_large").inc()
            raise
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            log.info("upload %s: body cut short (%s)", upload.id, exc)
            cut_short = True
        except Exception as exc:  # aiohttp's payload errors (ContentLengthError, ...)
            if type(exc).__module__.split(".")[0] != "aiohttp":
                raise
            log.info("upload %s: body cut short (%s)", upload.id, exc)
            cut_short = True
        writer.write(buffer)
        content_length = request.content_length
        if content_length is not None and writer.written != content_length:
            cut_short = True
        if cut_short:
            service.metrics.failed.labels("aborted").inc()
            if checksum is not None:
                writer.discard()
                raise ApiError(400, "body_incomplete",
                               "the body ended early; a chunk with a checksum is kept whole "
                               "or not at all")
        if checksum is not None and digest is not None:
            try:
                tus.check_checksum(checksum, digest.digest())
            except tus.TusError:
                writer.discard()
                service.metrics.failed.labels("checksum_mismatch").inc()
                raise
        if writer.written == 0:
            return
        now = service.clock()
        handed_over = True
        complete = await asyncio.to_thread(
            _sync_and_commit, writer, checksum.header() if checksum else None, now,
            now + service.config.upload_ttl)
        service.metrics.bytes_received.inc(writer.written)
    finally:
        if not handed_over:
            writer.close()
    if complete:
        service.metrics.completed.inc()
        log.info("upload complete", extra=fields(event="upload_complete", video=upload.id,
                                                 user=upload.owner, length=upload.length,
                                                 via="tus"))
        service.locks.pop(upload.id, None)
        await service.upload_complete(upload.id)


def _sync_and_commit(writer: Any, checksum: str | None, now: float, expires: float) -> bool:
    try:
        return bool(writer.sync_and_commit(checksum, now, expires))
    finally:
        writer.close()


# -- videos ------------------------------------------------------------------------------------

def catalog_view(video_id: str, status: str, entry: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a video's catalog row: its text, the renditions published so
    far, ``playback`` once one plays, ``error`` when it failed."""
    view: dict[str, Any] = {
        "title": entry["title"], "caption": entry["caption"], "hashtags": entry["hashtags"],
        "renditions": entry["renditions"], "duration": entry["duration"],
    }
    if entry["renditions"] and status in ("processing", "ready"):
        view["playback"] = f"/v/{video_id}/master.m3u8"
    if entry["error"]:
        view["error"] = entry["error"]
    return view


async def video(request: web.Request) -> web.StreamResponse:
    """A video's state: ``status`` (uploading | processing | ready | failed), the renditions
    published so far, ``duration``, ``playback`` (the master playlist's path, once a rendition
    is playable), ``error`` (why it failed), and its upload's progress."""
    service = request.app[SERVICE]
    if request.method == "OPTIONS":
        return web.Response(status=204)
    if request.method not in ("GET", "HEAD", "DELETE"):
        raise _not_allowed("GET, HEAD, DELETE, OPTIONS")
    video_id = request.match_info["video_id"]
    direct = await asyncio.to_thread(_direct_upload, service, video_id)
    if direct is not None:
        return await _direct_video(request, service, direct)
    # A GET reads the row through the cache (ready rows); a DELETE reads it as of now.
    read = service.video_row if request.method in ("GET", "HEAD") else service.catalog.get
    entry = await asyncio.to_thread(read, video_id) if is_video_id(video_id) else None
    if entry is not None and service.store.get(video_id) is None:
        # Uploaded through another API host sharing the catalog (or its upload record is
        # gone): the catalog row is the video.
        return await _catalog_video(request, service, video_id, entry)
    upload = _find(service, request, video_id)
    if entry is not None and entry["status"] == "deleted":
        raise ApiError(410, "deleted", "this video was deleted")
    if request.method == "DELETE":
        return await _delete_video(service, video_id, entry)
    status = entry["status"] if entry is not None else "uploading"
    if status == "uploading" and upload.state == UPLOADED:
        status = "processing"  # the last byte is in: queued (the catalog follows the hook)
    body: dict[str, Any] = {
        "id": upload.id,
        "status": status,
        "owner": upload.owner,
        "metadata": upload.metadata,
        "upload": {"state": upload.state, "length": upload.length, "offset": upload.offset},
        "created": tus.http_date(upload.created),
    }
    if entry is not None:
        body.update(catalog_view(video_id, status, entry))
    if upload.state == UPLOADED:
        body["upload"]["sha256"] = upload.sha256
    elif upload.expires is not None:
        body["upload"]["expires"] = tus.http_date(upload.expires)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _catalog_video(request: web.Request, service: OriginState, video_id: str,
                         entry: dict[str, Any]) -> web.Response:
    """A video known only from the catalog: its owner may read and delete it, anyone may
    read it once ``ready`` (as the listing shows it)."""
    if entry["status"] == "deleted":
        raise ApiError(410, "deleted", "this video was deleted")
    caller = request[USER]
    if caller != entry["owner"] and (request.method == "DELETE" or entry["status"] != "ready"):
        raise ApiError(403, "not_owner", "this video belongs to another user")
    if request.method == "DELETE":
        return await _delete_video(service, video_id, entry)
    body: dict[str, Any] = {
        "id": video_id,
        "status": entry["status"],
        "owner": entry["owner"],
        "metadata": {k: entry[k] for k in ("title", "caption", "filename") if entry[k]},
        "created": tus.http_date(entry["created"]),
        **catalog_view(video_id, entry["status"], entry),
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _delete_video(service: OriginState, video_id: str,
                        entry: dict[str, Any] | None) -> web.Response:
    """Remove a video: its published objects, its copies on every node (purged through their
    admin APIs, parents first), its upload; the catalog keeps a ``deleted`` row (GET: 410).
    A video still being transcoded is refused (409): the worker would publish it again."""
    if entry is not None and entry["status"] == "processing":
        raise ApiError(409, "processing", "the video is still being processed: delete it "
                       "once it is ready or failed")
    objects = 0
    if service.published is not None:
        objects = await asyncio.to_thread(service.published.delete_prefix, f"v/{video_id}")
    purged = await service.purge_video(video_id)
    await asyncio.to_thread(service.store.end, video_id, TERMINATED, service.clock())
    if entry is not None:
        await asyncio.to_thread(service.catalog.set_status, video_id, "deleted")
    await asyncio.to_thread(service.video_deleted, video_id)
    log.info("video deleted", extra=fields(event="video_deleted", video=video_id,
                                           objects=objects, purged=purged))
    return web.json_response({"deleted": video_id, "objects": objects, "purged": purged},
                             headers={"Cache-Control": "no-store"})


async def videos(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/videos?owner=NAME&limit=N``: an owner's videos, newest first. The caller
    sees all of their own (``owner`` defaults to the caller); another owner's only once
    ``ready``. ``POST``: a direct-to-bucket upload (:func:`_create_direct`)."""
    service = request.app[SERVICE]
    if request.method == "OPTIONS":
        return web.Response(status=204)
    if request.method == "POST":
        return await _create_direct(request, service)
    if request.method not in ("GET", "HEAD"):
        raise _not_allowed("GET, HEAD, POST, OPTIONS")
    caller = request[USER]
    owner = request.query.get("owner", caller)
    if not valid_name(owner):
        raise ApiError(400, "bad_owner", "owner must be a user name (A-Z a-z 0-9 _ -)")
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 200:
        raise ApiError(400, "bad_limit", "limit must be an integer from 1 to 200")
    rows = await asyncio.to_thread(service.catalog.by_owner, owner, limit)
    items = [
        {"id": row["id"], "status": row["status"], **catalog_view(row["id"], row["status"], row)}
        for row in rows if owner == caller or row["status"] == "ready"
    ]
    return web.json_response({"owner": owner, "items": items},
                             headers={"Cache-Control": "no-store"})


# -- direct-to-bucket uploads -------------------------------------------------------------------

_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(f"{_TOKEN}/{_TOKEN}")
_TEXT_FIELDS = {"title": 200, "caption": 2000, "hashtags": 1000}


def _direct(service: OriginState) -> direct_mod.DirectUploads:
    if service.direct is None:
        # 404, not 501: the software has the feature, this deployment has no bucket for it,
        # which is no server fault (a 5xx is retried by clients and pages whoever is on
        # call); and a client's rule stays one: 404 here, use tus.
        raise ApiError(404, "no_direct_upload",
                       "this origin has no upload bucket: upload with tus (/api/v1/uploads)")
    return service.direct


def _direct_upload(service: OriginState, video_id: str) -> direct_mod.DirectUpload | None:
    if service.direct is None or not valid_video_id(video_id):
        return None
    return service.direct.get(video_id)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "bad_json", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ApiError(400, f"bad_{name}", f"{name} must be a{' non-empty' * required} string")
    if len(value) > limit or any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise ApiError(400, f"bad_{name}",
                       f"{name}: at most {limit} characters, no control characters")
    return value


async def _create_direct(request: web.Request, service: OriginState) -> web.Response:
    """``POST /api/v1/videos`` ``{"size", "filename", "content_type", "title"?, "caption"?,
    "hashtags"?}``: a video id, its catalog row (``uploading``), an S3 multipart upload for
    the source and one presigned PUT URL per part."""
    direct = _direct(service)
    body = await _json_object(request)
    size = body.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ApiError(400, "bad_size", "size must be the file's length in bytes (an integer "
                       "above 0)")
    if size > service.config.max_size:
        raise ApiError(413, "too_large", f"size is above the largest upload allowed "
                       f"({service.config.max_size} bytes)")
    filename = _text(body, "filename", 255, required=True)
    content_type = body.get("content_type")
    if not isinstance(content_type, str) or not _MEDIA_TYPE.fullmatch(content_type):
        raise ApiError(400, "bad_content_type", "content_type must be a media type, "
                       "e.g. video/mp4")
    metadata = {"filename": filename or "", "content_type": content_type}
    for name, limit in _TEXT_FIELDS.items():
        value = _text(body, name, limit)
        if value is not None:
            metadata[name] = value
    user = request[USER]
    wait = service.limiter.take(user, service.clock())
    if wait:
        raise ApiError(429, "rate_limited",
                       f"too many uploads: {service.limiter.rate} per "
                       f"{service.limiter.window:g} s",
                       {"Retry-After": RateLimiter.retry_after(wait)})
    video_id = new_video_id()
    upload, parts = await _s3(asyncio.to_thread(
        direct.create, video_id, user, size, content_type, metadata, service.clock(),
        service.direct_ttl))
    service.metrics.started.inc()
    log.info("upload created", extra=fields(event="upload_created", video=video_id, user=user,
                                            length=size, via="s3"))
    await asyncio.to_thread(service.catalog.create, video_id, user, metadata)
    return web.json_response(
        {"id": video_id, "upload_id": video_id, "part_size": upload.part_size,
         "parts": parts, "complete": f"/api/v1/videos/{video_id}/complete",
         "expires_in": service.direct_ttl},
        status=201,
        headers={"Location": f"/api/v1/videos/{video_id}", "Cache-Control": "no-store"})


async def _s3(call: Any) -> Any:
    """Await an S3 call: an S3 API that fails or cannot be reached answers 502."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return await call
    except (BotoCoreError, ClientError) as exc:
        log.warning("S3 call failed: %s", exc)
        raise ApiError(502, "s3_unavailable", "the upload bucket failed; try again") from None


def _parts(body: dict[str, Any]) -> list[tuple[int, str]]:
    parts = body.get("parts")
    if not isinstance(parts, list) or not 1 <= len(parts) <= direct_mod.MAX_PARTS:
        raise ApiError(400, "bad_parts", "parts must be a list of {part_number, etag}, "
                       f"1 to {direct_mod.MAX_PARTS} of them")
    out = []
    for part in parts:
        number = part.get("part_number") if isinstance(part, dict) else None
        etag = part.get("etag") if isinstance(part, dict) else None
        if (not isinstance(number, int) or isinstance(number, bool)
                or not 1 <= number <= direct_mod.MAX_PARTS
                or not isinstance(etag, str) or not etag.strip() or len(etag) > 200):
            raise ApiError(400, "bad_parts", "each part is {\"part_number\": 1..10000, "
                           "\"etag\": the ETag of its PUT's answer}")
        out.append((number, etag.strip()))
    return out


async def complete_direct(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/videos/{id}/complete`` ``{"parts": [{"part_number", "etag"}]}`` (the
    owner only): S3 completes the multipart upload, the object's size is checked, and the
    video is queued for transcoding as a finished tus upload would be."""
    service = request.app[SERVICE]
    if request.method == "OPTIONS":
        return web.Response(status=204)
    if request.method != "POST":
        raise _not_allowed("POST, OPTIONS")
    direct = _direct(service)
    video_id = request.match_info["video_id"]
    upload = await asyncio.to_thread(_direct_upload, service, video_id)
    if upload is None:
        raise ApiError(404, "not_found", "no direct upload has this id")
    if upload.owner != request[USER]:
        raise ApiError(403, "not_owner", "this upload belongs to another user")
    parts = _parts(await _json_object(request))
    with direct.busy(video_id):
        upload = await asyncio.to_thread(direct.get, video_id)  # as of now
        assert upload is not None
        _check_open(upload, service)
        try:
            await _s3(asyncio.to_thread(direct.complete, upload, parts, service.clock()))
        except direct_mod.DirectError as exc:
            fresh = await asyncio.to_thread(direct.get, video_id)
            if fresh is not None and fresh.state == direct_mod.ABORTED:
                await asyncio.to_thread(service.catalog.set_status, video_id, "failed",
                                        error=exc.reason)
            raise
        await asyncio.to_thread(service.on_direct_complete, video_id, upload.bucket,
                                upload.key, dict(upload.metadata), upload.owner)
        await asyncio.to_thread(direct.mark_completed, video_id, service.clock())
    service.metrics.completed.inc()
    service.metrics.bytes_received.inc(upload.size)
    log.info("upload complete", extra=fields(event="upload_complete", video=video_id,
                                             user=upload.owner, length=upload.size, via="s3"))
    return web.json_response({"id": video_id, "status": "processing", "size": upload.size,
                              "video": f"/api/v1/videos/{video_id}"},
                             headers={"Cache-Control": "no-store"})


def _check_open(upload: direct_mod.DirectUpload, service: OriginState) -> None:
    """409 for a completed upload, 410 for one aborted or past its time."""
    if upload.state == direct_mod.COMPLETED:
        raise ApiError(409, "already_completed", "this upload is complete")
    if upload.state != direct_mod.UPLOADING:
        raise ApiError(410, "upload_gone", f"this upload is {upload.state}")
    if upload.expires <= service.clock():
        raise ApiError(410, "upload_gone", "this upload has expired")


async def _direct_video(request: web.Request, service: OriginState,
                        upload: direct_mod.DirectUpload) -> web.Response:
    """GET or DELETE of a video uploaded straight to the bucket."""
    if upload.owner != request[USER]:
        raise ApiError(403, "not_owner", "this video belongs to another user")
    entry = await asyncio.to_thread(service.catalog.get, upload.id)
    if entry is not None and entry["status"] == "deleted":
        raise ApiError(410, "deleted", "this video was deleted")
    if request.method == "DELETE":
        if entry is not None and entry["status"] == "processing":
            raise ApiError(409, "processing", "the video is still being processed: delete it "
                           "once it is ready or failed")
        assert service.direct is not None
        await _s3(asyncio.to_thread(service.direct.abort, upload, service.clock()))
        await _s3(asyncio.to_thread(service.direct.client.delete_object, Bucket=upload.bucket,
                                    Key=upload.key))
        return await _delete_video(service, upload.id, entry)
    state = {direct_mod.COMPLETED: UPLOADED}.get(upload.state, upload.state)
    if state == direct_mod.UPLOADING and upload.expires <= service.clock():
        state = EXPIRED
    if state in (EXPIRED, direct_mod.ABORTED) and (entry is None
                                                   or entry["status"] == "uploading"):
        raise ApiError(410, "upload_gone", f"this upload is {state}")
    status = entry["status"] if entry is not None else "uploading"
    body: dict[str, Any] = {
        "id": upload.id, "status": status, "owner": upload.owner,
        "metadata": upload.metadata,
        "upload": {"state": state, "length": upload.size, "direct": True},
        "created": tus.http_date(upload.created),
    }
    if state == direct_mod.UPLOADING:
        body["upload"]["expires"] = tus.http_date(upload.expires)
    if entry is not None:
        body.update(catalog_view(upload.id, status, entry))
    return web.json_response(body, headers={"Cache-Control": "no-store"})


# -- applications ------------------------------------------------------------------------------

def build_app(service: OriginState) -> web.Application:
    app = web.Application(middlewares=[_middleware])
    app[SERVICE] = service
    app.router.add_route("*", "/api/v1/uploads", uploads_root)
    app.router.add_route("*", "/api/v1/uploads/", uploads_root)
    app.router.add_route("*", "/api/v1/uploads/{video_id}", upload_item)
    app.router.add_route("*", "/api/v1/videos", videos)
    app.router.add_route("*", "/api/v1/videos/{video_id}", video)
    app.router.add_route("*", "/api/v1/videos/{video_id}/complete", complete_direct)
    feed_api.register(app, service)  # the feed, likes, follows, play counts: docs/feed.md
    web_routes.register(app, service)  # the web page at /, its files, /api/v1/config: docs/web.md
    app.on_response_prepare.append(_on_prepare)
    return app


async def _metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        await asyncio.to_thread(service.metrics.observe_pipeline, service.queue, service.catalog)
    except Exception as exc:  # a shared queue or catalog down: the rest is still worth serving
        log.warning("metrics: the queue's and catalog's levels are stale: %s: %s",
                    exc.__class__.__name__, exc)
        service.metrics.scrape_errors.inc()
    body = generate_latest(service.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_admin_app(service: OriginState) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    return app
