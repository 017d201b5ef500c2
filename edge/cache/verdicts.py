"""Pure verdicts of the request steps, in the manner of Varnish's ``return (...)``: facts of a
request or a stored entry in, a decision out. No I/O, no node; ``node.py`` acts on them.

Each decision the node makes in more than one place lives here once, so the MISS path, the
fill and the failure path cannot drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reelcdn.edge.cache.entry import CacheEntry
    from reelcdn.edge.cache.freshness import Freshness

#: How long a URI whose response may not be shared skips coalescing ("hit-for-pass").
PASS_MARK_SECONDS = 30.0


def stale_on_error(entry: CacheEntry | None, now: float, default_allowance: float = 0.0) -> bool:
    """Whether ``entry`` may answer instead of an upstream failure (5xx or none at all):
    within its ``stale-if-error`` allowance (RFC 5861 §4) and not ``must-revalidate``.

    ``default_allowance`` is the node's ``stale_if_error_max``: the allowance of an entry
    whose origin sent no ``stale-if-error`` (an origin's own value always wins). It never
    applies to ``no-cache`` (every reuse needs a successful validation) nor to a stored
    server error (a negatively cached 5xx must not outlive its short TTL)."""
    if entry is None:
        return False
    freshness = entry.freshness
    if freshness.must_revalidate:
        return False
    allowance = freshness.stale_if_error
    if allowance <= 0 and not freshness.no_cache and entry.status < 500:
        allowance = default_allowance
    return allowance > 0 and entry.ttl(now) > -allowance


def failure_backoff(failures: int, base: float, cap: float, rand: float) -> float:
    """Seconds a node waits before asking upstream again for an object whose revalidation
    failed ``failures`` times in a row (>= 1): ``base × 2^(failures−1)`` capped at ``cap``,
    then "equal jitter" (``rand`` in [0, 1) picks a point in the upper half), so the children
    of one failing parent do not come back in step. Never below ``base / 2``."""
    exponent = min(max(failures, 1) - 1, 62)
    delay = min(cap, base * (2.0**exponent))
    return delay * (0.5 + 0.5 * rand)


def upstream_served_stale(lifetime: float, age: float, cache_status: str | None) -> bool:
    """Whether an upstream's answer is a parent's stale copy served because *its* upstream
    failed: past its freshness lifetime *and* marked so by the parent (its ``Cache-Status``
    member says ``stale-if-error``). The node then counts it as a failure for its back-off
    rather than revalidating through every tier on each request. An answer that is merely
    old on arrival (an origin's ``Age``, a slow ``Date``) is an ordinary answer: stale at
    once, revalidated at the next request, never a reason to keep serving it (RFC 9111 §4.2).
    An object without a lifetime (stored on a validator alone) never counts."""
    return (lifetime > 0 and age >= lifetime and cache_status is not None
            and "stale-if-error" in cache_status)


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


def shareable(fields: dict[str, str], freshness: Freshness) -> bool:
    """Whether one upstream response may answer every client collapsed on its fetch. A
    response for one client (``Set-Cookie``, ``Cache-Control: private``) is not, unless policy
    stores it anyway (a forcing TTL rule): then it is shared like any stored object. ``fields``:
    lower-cased names, comma-joined values."""
    private = "set-cookie" in fields or "private" in fields.get("cache-control", "").lower()
    return not private or freshness.storable


def pass_mark(response_time: float) -> float:
    """Until when a URI whose response was not shareable skips coalescing and goes straight
    to ``pass`` (Varnish's hit-for-pass): the next clients must not queue behind a fetch they
    cannot share."""
    return response_time + PASS_MARK_SECONDS


def within_size(size: int | None, limit: int) -> bool:
    """Whether a body of ``size`` bytes (None: not known yet) may be stored under
    ``max_object_size``: checked on the announced length and again as the body arrives."""
    return size is None or size <= limit
