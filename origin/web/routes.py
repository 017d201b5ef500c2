"""The web page's routes, registered into the origin API's application (``origin/api.py``'s
``build_app`` calls :func:`register`); docs/web.md.

- ``GET /`` (and ``/index.html``): the page. Its references to ``/static/NAME`` carry
  ``?v=`` + the file's digest, rewritten when the files are loaded, so the page is
  revalidated (``no-cache``) while the files it names are cached for a year (``immutable``):
  a new package's page names new versions.
- ``GET /static/NAME``: the script, the style sheet and the vendored libraries
  (``vendor/``). Only the files found under this folder when the application is built are
  served, looked up by their exact relative name: nothing else (``..``, escapes, absolute
  paths, this package's Python files) can ever be named, so there is no traversal to guard.
- ``GET /api/v1/config``: what the page needs to know of this deployment, public (no user
  token): ``playback_base`` (``[api] playback_base``: the edge it plays and shows posters
  from) and the largest upload.

Every answer has an ``ETag`` (an ``If-None-Match`` that matches is answered 304) and
``X-Content-Type-Options: nosniff``; files that compress are sent gzipped to a client that
accepts it (compressed once, at load; their own ETag, ``Vary: Accept-Encoding``). The page
has a Content-Security-Policy that allows scripts and styles from this origin alone and
media, images and requests from the playback edge.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from yarl import URL

if TYPE_CHECKING:
    from reelcdn.origin.state import OriginState

__all__ = ["WEB_DIR", "Asset", "load_assets", "register"]

WEB_DIR = Path(__file__).parent

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
VERSIONED = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_STATIC_REF = re.compile(r'(["\'])/static/([A-Za-z0-9_./-]+)\1')


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str      # a strong validator: the quoted digest
    version: str   # the ?v= of a versioned reference
    gzipped: bytes | None  # the body gzipped, when that is smaller


def _asset(body: bytes, content_type: str) -> Asset:
    digest = hashlib.sha256(body).hexdigest()
    packed = gzip.compress(body, compresslevel=9, mtime=0)
    return Asset(body, content_type, f'"{digest[:32]}"', digest[:16],
                 packed if len(packed) < len(body) * 0.9 else None)


def load_assets(root: Path = WEB_DIR) -> tuple[Asset, dict[str, Asset]]:
    """The page, and the static files by name relative to ``root`` (``app.js``,
    ``vendor/hls.min.js``, ...): every file of a served type, but the page itself."""
    static: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if (not path.is_file() or path.suffix not in CONTENT_TYPES
                or relative.as_posix() == "index.html"
                or any(part.startswith((".", "__")) for part in relative.parts)):
            continue
        static[relative.as_posix()] = _asset(path.read_bytes(), CONTENT_TYPES[path.suffix])
    html = (root / "index.html").read_text(encoding="utf-8")

    def versioned(match: re.Match[str]) -> str:
        quote, name = match.group(1), match.group(2)
        if name not in static:
            raise ValueError(f"index.html names /static/{name}, which is not in {root}")
        return f"{quote}/static/{name}?v={static[name].version}{quote}"

    page = _asset(_STATIC_REF.sub(versioned, html).encode(), CONTENT_TYPES[".html"])
    return page, static


def _source(base: str | None) -> str:
    """The CSP source of the playback edge: its scheme, host and port."""
    if not base:
        return ""
    url = URL(base)
    if url.scheme not in ("http", "https") or not url.host:
        return ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = "" if url.is_default_port() else f":{url.port}"
    return f" {url.scheme}://{host}{port}"


def content_security_policy(playback_base: str | None) -> str:
    edge = _source(playback_base)
    return (f"default-src 'self'; script-src 'self'; style-src 'self'; "
            f"img-src 'self' data:{edge}; media-src 'self' blob:{edge}; "
            f"connect-src 'self'{edge}; worker-src 'self' blob:; "
            f"frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _answer(request: web.Request, asset: Asset, cache_control: str,
            extra: dict[str, str] | None = None) -> web.Response:
    headers = {"Cache-Control": cache_control, "X-Content-Type-Options": "nosniff",
               **(extra or {})}
    body, etag = asset.body, asset.etag
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
        if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
            # Its own ETag: one for both codings would let a cache answer one with the other.
            body, etag = asset.gzipped, asset.etag[:-1] + '-gzip"'
            headers["Content-Encoding"] = "gzip"
    headers["ETag"] = etag
    if etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        headers.pop("Content-Encoding", None)
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.content_type
    return web.Response(body=body, headers=headers)


def _accepts_gzip(field: str) -> bool:
    for item in field.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def register(app: web.Application, state: OriginState) -> None:
    """Add the page's routes to the origin API's application. The files are read now, once."""
    page, static = load_assets()
    page_headers = {"Content-Security-Policy": content_security_policy(
        state.config.playback_base), "Referrer-Policy": "no-referrer"}

    async def index(request: web.Request) -> web.StreamResponse:
        return _answer(request, page, REVALIDATE, page_headers)

    async def asset(request: web.Request) -> web.StreamResponse:
        found = static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(reason="no such file")
        versioned = request.query.get("v") == found.version
        return _answer(request, found, VERSIONED if versioned else REVALIDATE)

    async def config(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"playback_base": state.config.playback_base, "api": "/api/v1",
             "uploads": "/api/v1/uploads", "max_upload_size": state.config.max_size},
            headers={"Cache-Control": "no-store"})

    for handler in (index, asset, config):
        handler.own_auth = True  # type: ignore[attr-defined]  # public: no user token
    app.router.add_get("/", index)
    app.router.add_get("/index.html", index)
    app.router.add_get("/static/{name:.+}", asset)
    app.router.add_get("/api/v1/config", config)
