"""Cache keys: the normalised URI that names one stored object (before Vary).

Why normalise: players add parameters that differ on every request (CMCD data, signed-URL
tokens) yet ask for the same bytes; if those entered the key every request would miss and
every viewer would get a private copy. So the key is the path plus the query with ignored
parameters removed and the rest sorted, with percent-encoding made canonical (RFC 3986 §6.2.2:
unreserved characters decoded, hex digits upper-cased). Host joins the key only when an
operator hosts several sites on one node (``host_in_key``).

:class:`KeyPolicy` is the one place that turns a request, a purge or a prefetch target into a
key, and a key back into what a fill asks upstream: every caller (receive, pass invalidation,
purge, prefetch, rendered playlists) goes through it, so no two of them can disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from reelcdn.extensions.target import canonical_path

if TYPE_CHECKING:
    from reelcdn.extensions.message import Request

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


def _canonical_pct(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    return chr(byte) if byte in _UNRESERVED else "%" + match.group(1).upper()


def normalise_component(text: str) -> str:
    """Canonical percent-encoding of one path or query component."""
    return _PCT.sub(_canonical_pct, text) if "%" in text else text


def _param_name(pair: str) -> str:
    name = pair.split("=", 1)[0]
    return normalise_component(name).lower()


def normalise_query(
    query: str, ignored: frozenset[str], ignored_prefixes: Iterable[str] = ()
) -> str:
    """The query without ignored parameters (case-insensitive names), sorted, canonical."""
    if not query:
        return ""
    prefixes = tuple(ignored_prefixes)
    kept = []
    for pair in query.split("&"):
        if not pair:
            continue
        name = _param_name(pair)
        if name in ignored or (prefixes and name.startswith(prefixes)):
            continue
        kept.append(normalise_component(pair))
    kept.sort()
    return "&".join(kept)


def split_target(target: str) -> tuple[str, str]:
    """Split an origin-form request-target into path and query (any fragment dropped)."""
    hash_at = target.find("#")
    if hash_at >= 0:
        target = target[:hash_at]
    path, _, query = target.partition("?")
    return path, query


def cache_key(
    path: str,
    query: str,
    ignored: frozenset[str],
    ignored_prefixes: Iterable[str] = (),
    host: str | None = None,
) -> str:
    """The primary cache key for a request: ``[host]path[?query]``, normalised."""
    key = normalise_component(path)
    if query:
        norm = normalise_query(query, ignored, ignored_prefixes)
        if norm:
            key = key + "?" + norm
    if host is not None:
        key = host.lower() + key
    return key


def carried_query(query: str, carried: frozenset[str]) -> str:
    """The subset of a query named in ``carried`` (e.g. tokens), order kept, for forwarding."""
    if not query or not carried:
        return ""
    return "&".join(p for p in query.split("&") if p and _param_name(p) in carried)


def host_of(value: bytes | str) -> str:
    """The host of a Host field value, lower-cased, without its port (``[::1]:80`` → ``[::1]``)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1].lower() if end > 0 else text.lower()
    return text.split(":", 1)[0].lower()


#: Normalised queries remembered per policy (a pure function of the query): players send the
#: same query (a token, CMCD left aside) with every segment of a video.
QUERY_MEMO = 4096


class KeyPolicy:
    """How this node names stored objects: the ignored query parameters and whether the host
    is part of the key. Built from a node's config; immutable (its memo of normalised
    queries is a cache of a pure function, emptied when full)."""

    __slots__ = ("ignored", "ignored_prefixes", "host_in_key", "_queries")

    def __init__(
        self,
        ignored: frozenset[str] = frozenset(),
        ignored_prefixes: Iterable[str] = (),
        host_in_key: bool = False,
    ) -> None:
        self.ignored = ignored
        self.ignored_prefixes = tuple(ignored_prefixes)
        self.host_in_key = host_in_key
        self._queries: dict[str, str] = {}

    @classmethod
    def from_config(cls, config: Any) -> KeyPolicy:
        return cls(config.ignore_query_params, config.ignore_query_prefixes, config.host_in_key)

    def host(self, headers: dict[bytes, bytes]) -> str | None:
        """The host that joins a request's key, or None without ``host_in_key``."""
        if not self.host_in_key:
            return None
        return host_of(headers.get(b"host", b""))

    def for_request(self, req: Request) -> str:
        """The primary key of a parsed request (its path is already canonical: the reader
        made it so)."""
        path = req.path
        if not self.host_in_key and "%" not in path:  # what cache_key gives (test_cachekey)
            query = req.query
            if not query:
                return path
            norm = self._queries.get(query)
            if norm is None:
                norm = normalise_query(query, self.ignored, self.ignored_prefixes)
                if len(self._queries) >= QUERY_MEMO:
                    self._queries.clear()
                self._queries[query] = norm
            return path + "?" + norm if norm else path
        return cache_key(path, req.query, self.ignored, self.ignored_prefixes,
                         self.host(req.headers))

    def for_target(self, target: str, host: str | None = None) -> str:
        """The primary key of an origin-form target from elsewhere (a purge, a prefetch, a
        rendered playlist's meta.json): the path made canonical first (``BadPath`` for one
        that cannot be), ``host`` used only under ``host_in_key``."""
        path, query = split_target(target)
        return cache_key(canonical_path(path), query, self.ignored, self.ignored_prefixes,
                         host.lower() if self.host_in_key and host is not None else None)

    @staticmethod
    def key_host(key: str) -> str:
        """The host part of a key ("" when the host is not in the key). A host never holds
        a "/" (the reader refuses such a Host field), so the path starts at the first one."""
        return key[: key.find("/")]

    @staticmethod
    def upstream_target(key: str) -> str:
        """What a fill asks its parent for: the key's path and kept query, without the host."""
        slash = key.find("/")
        return key if slash == 0 else key[slash:]

    @staticmethod
    def slice_key(primary: str, index: int) -> str:
        """The storage key of slice ``index`` of the object keyed ``primary`` (``slice_size``,
        edge/slices.py): the object's key, a NUL (never in a canonical path or query, as in a
        Vary variant's key) and the index. Its entry's ``primary`` stays the object's key, so a
        purge of the object reaches its slices."""
        return primary + "\0slice=" + str(index)

    @staticmethod
    def rule_path(key: str) -> str:
        """The path TTL rules match: the key's path without host and query."""
        slash = key.find("/")
        path = key if slash <= 0 else key[slash:]
        return path.split("?", 1)[0]

    def invalidated_by(
        self, req: Request, response_headers: list[tuple[bytes, bytes]]
    ) -> list[str]:
        """The primary keys an unsafe request's success invalidates (RFC 9111 §4.4): its
        target URI, and the URIs its response names in Location and Content-Location when
        they are on the same host (another host's objects are never this client's to
        invalidate). Unusable URIs are skipped."""
        keys = [self.for_request(req)]
        host = host_of(req.headers.get(b"host", b""))
        for name, value in response_headers:
            if name.lower() not in (b"location", b"content-location"):
                continue
            target = _same_host_target(value.decode("latin-1").strip(), host)
            if target is None:
                continue
            try:
                key = self.for_target(target, host)
            except ValueError:
                continue
            if key not in keys:
                keys.append(key)
        return keys

    def purge_matcher(self, kind: str, value: str, host: str | None = None) -> Any:
        """A predicate over primary keys for a purge: ``path`` (one URI), ``prefix`` or
        ``video``; with ``host_in_key`` and no ``host``, every site's copy matches."""
        if kind == "video":
            kind, value = "prefix", f"/v/{value}/"
        if kind == "path":
            wanted = self.for_target(value, host)
            if not self.host_in_key or host is not None:
                return wanted.__eq__
            return lambda key: self.upstream_target(key) == wanted
        prefix = canonical_path(value)
        if self.host_in_key:
            if host is not None:
                full = host.lower() + prefix
                return lambda key: key.startswith(full)
            return lambda key: self.upstream_target(key).startswith(prefix)
        return lambda key: key.startswith(prefix)


def _same_host_target(uri: str, host: str) -> str | None:
    """The origin-form target of a Location/Content-Location value that names the request's
    own host (an absolute path, or an absolute URI with that host), else None."""
    if uri.startswith("/") and not uri.startswith("//"):
        path, query = split_target(uri)
        return path + ("?" + query if query else "")
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    if host_of(parts.netloc) != host:
        return None
    return (parts.path or "/") + ("?" + parts.query if parts.query else "")
