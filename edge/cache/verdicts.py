"""Pure verdicts of the request steps, in the manner of Varnish's ``return (...)``: facts of a
request or a stored entry in, a decision out. No I/O, no node; ``node.py`` acts on them.

Each decision the node makes in more than one place lives here once, so the MISS path, the
fill and the failure path cannot drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reelcdn.edge.cache.store import CacheEntry


def stale_on_error(entry: CacheEntry | None, now: float) -> bool:
    """Whether ``entry`` may answer instead of an upstream failure (5xx or none at all):
    within its ``stale-if-error`` allowance (RFC 5861 §4) and not ``must-revalidate``."""
    if entry is None:
        return False
    freshness = entry.freshness
    allowance = freshness.stale_if_error
    return allowance > 0 and not freshness.must_revalidate and entry.ttl(now) > -allowance


def stale_while_revalidate(entry: CacheEntry, now: float) -> bool:
    """Whether a stale ``entry`` may be served while it is revalidated in the background
    (RFC 5861 §3): within ``stale-while-revalidate`` and not ``no-cache``."""
    freshness = entry.freshness
    swr = freshness.stale_while_revalidate
    return swr > 0 and not freshness.no_cache and entry.ttl(now) > -swr


def client_wants_fresh(headers: dict[bytes, bytes]) -> bool:
    """Request ``Cache-Control: no-cache`` or ``max-age=0`` (or ``Pragma: no-cache`` without
    Cache-Control). Acted on only with ``honor_client_no_cache``: by default one client must
    not be able to send every viewer's requests to the origin."""
    value = headers.get(b"cache-control")
    if value is None:
        return headers.get(b"pragma", b"").lower() == b"no-cache"
    directives = {d.strip().lower() for d in value.split(b",")}
    return b"no-cache" in directives or b"max-age=0" in directives
