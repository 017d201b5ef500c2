"""Cache keys: the normalised URI that names one stored object (before Vary).

Why normalise: players add parameters that differ on every request (CMCD data, signed-URL
tokens) yet ask for the same bytes; if those entered the key every request would miss and
every viewer would get a private copy. So the key is the path plus the query with ignored
parameters removed and the rest sorted, with percent-encoding made canonical (RFC 3986 §6.2.2:
unreserved characters decoded, hex digits upper-cased). Host joins the key only when an
operator hosts several sites on one node (``host_in_key``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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
