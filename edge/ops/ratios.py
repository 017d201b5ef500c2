"""The hit ratio: one definition for ``/metrics``, ``/cache/stats``, ``reelcdn status``, the
dashboard and rules, and ``reelcdn loadtest`` (docs/operations.md, "Hit ratio").

Every request a node answers has one *outcome*, the ``cache_status`` label of
``reelcdn_requests_total``:

=============== ===================================================================================
``hit``         a fresh stored copy answered it (200, 206, 304/412 to a conditional request, HEAD);
                a playlist rendered from a fresh stored ``meta.json``
``stale``       a stale stored copy answered it instead of an upstream answer: within
                stale-while-revalidate, or stale-if-error (the upstream failed or is backed off)
``revalidated`` a stale stored copy answered it after the upstream confirmed it (a 304); a
                playlist rendered from a ``meta.json`` revalidated so
``miss``        fetched upstream for this request, or joined a fetch in flight (collapsed, a
                prefetch's included); a playlist rendered from a ``meta.json`` fetched so
``pass``        forwarded without the cache (other methods, ``Authorization``, bypass, Vary miss)
``error``       the node's own error answer (a bad request, a refused token, an upstream failure)
``preflight``   a CORS preflight, answered from the configuration
``steering``    a content steering manifest, answered from the configuration
=============== ===================================================================================

**hit ratio = (hit + stale) / (every outcome but preflight and steering)**: the share of the
requests for content that the node's cache answered without waiting on its upstream.
Revalidated answers waited for an upstream round trip and are not hits (RFC 9211 does not
call them hits either); passes and errors are requests for content the cache did not answer,
so they are in the denominator. A request is counted once, by the node that answered it: a
node's own fills (a prefetch, a rendered playlist's ``meta.json``) are not requests of that
node but they are requests of its parent.

The same outcome is read from the node's ``Cache-Status`` member (RFC 9211) by
:func:`outcome_of_member`, so a ratio computed from the responses players received and one
computed from ``/metrics`` agree when they count the same requests (``reelcdn loadtest``
reports both and what differs). Pure: no I/O, no imports of the product.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HIT = "hit"
STALE = "stale"
REVALIDATED = "revalidated"
MISS = "miss"
PASS = "pass"
ERROR = "error"
PREFLIGHT = "preflight"
STEERING = "steering"

#: Every outcome a node counts, in the order reports list them.
OUTCOMES = (HIT, STALE, REVALIDATED, MISS, PASS, ERROR, PREFLIGHT, STEERING)
#: Outcomes that are hits: answered from the cache without waiting on the upstream.
HIT_OUTCOMES = (HIT, STALE)
#: Answers from the configuration, not requests for content: outside the ratio entirely.
NOT_CONTENT = (PREFLIGHT, STEERING)

#: The same definition as PromQL label matchers on ``reelcdn_requests_total``.
PROMQL_HITS = 'cache_status=~"' + "|".join(HIT_OUTCOMES) + '"'
PROMQL_CONTENT = 'cache_status!~"' + "|".join(NOT_CONTENT) + '"'

# Cache-Status ``fwd`` values of a request forwarded without the cache (a pass); the other
# forwards (uri-miss, stale, request, partial, miss) are fills.
_PASS_FWD = frozenset({"bypass", "method", "vary-miss"})
# ``detail`` values of the node's own answers: an upstream failure, and the renderer's bad
# query option (a 400 before any lookup).
_ERROR_DETAIL = frozenset({"upstream-failure", "bad-option"})


def hits(counts: Mapping[str, float]) -> float:
    """The numerator: ``hit`` + ``stale``."""
    return sum(counts.get(outcome, 0) for outcome in HIT_OUTCOMES)


def content_requests(counts: Mapping[str, float]) -> float:
    """The denominator: every outcome counted but ``preflight`` and ``steering`` (an outcome
    not named here counts, as a non-hit)."""
    return sum(value for outcome, value in counts.items() if outcome not in NOT_CONTENT)


def hit_ratio(counts: Mapping[str, float]) -> float | None:
    """(hit + stale) / requests for content, over counts by outcome; None when there were no
    requests for content (nothing to divide)."""
    total = content_requests(counts)
    return hits(counts) / total if total > 0 else None


def add_counts(into: dict[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """Add ``counts`` into ``into`` outcome by outcome (returns ``into``)."""
    for outcome, value in counts.items():
        into[outcome] = into.get(outcome, 0) + value
    return into


def outcome_counts(series: Iterable[tuple[str, int]]) -> dict[str, int]:
    """``{outcome: count}`` from ``(cache_status, count)`` pairs, e.g. the series of
    ``reelcdn_requests_total`` (methods and codes summed)."""
    out: dict[str, int] = {}
    for outcome, value in series:
        out[outcome] = out.get(outcome, 0) + value
    return out


def outcome_of_member(params: Mapping[str, str]) -> str:
    """The outcome a reelcdn node counted for the response whose own ``Cache-Status`` member
    has these parameters (``{"hit": "?1", "fwd": "stale", "fwd-status": "304", ...}``, values
    as written, quotes removed). ``hit`` or ``stale`` exactly when the node counted a hit.

    Between the non-hit outcomes one case is ambiguous: ``fwd=request`` is both a fill the
    client asked to reload (``no-cache``: a miss, or revalidated when the upstream said 304)
    and a pass of a request with ``Authorization``; it is read as the fill (all three are
    non-hits, so the ratio is the same)."""
    detail = params.get("detail", "")
    if "hit" in params:
        return STALE if detail.startswith("stale-") else HIT
    if detail == "stale-if-error":      # forwarded, failed, answered from the stale copy
        return STALE
    if detail in _ERROR_DETAIL:
        return ERROR
    if detail == "steering":
        return STEERING
    fwd = params.get("fwd")
    if fwd is None:
        return PASS if detail == "options" else ERROR
    if fwd in _PASS_FWD:
        return PASS
    if params.get("fwd-status") == "304":  # a conditional fill the upstream confirmed
        return REVALIDATED
    return MISS
