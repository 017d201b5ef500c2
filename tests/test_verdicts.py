"""The node's pure verdicts, without sockets: stale-if-error, stale-while-revalidate, client
no-cache, and the one precondition entry point."""

from __future__ import annotations

from reelcdn.edge.cache.entry import CacheEntry
from reelcdn.edge.cache.freshness import decide
from reelcdn.edge.cache.verdicts import client_wants_fresh, stale_on_error, stale_while_revalidate
from reelcdn.edge.http.conditional import request_verdict


def entry(cache_control: str, now: float = 1000.0) -> CacheEntry:
    fields = {"cache-control": cache_control}
    freshness = decide("GET", 200, fields, "/x", request_has_authorization=False, ttl_rules=(),
                       now=now, heuristic_fraction=0.1, heuristic_max=86400.0)
    return CacheEntry(key="/x", primary="/x", status=200,
                      headers=[(b"Cache-Control", cache_control.encode())], body=b"x",
                      freshness=freshness, response_time=now, initial_age=0.0, vary=())


def test_stale_on_error_within_the_allowance_only() -> None:
    e = entry("max-age=10, stale-if-error=20")
    assert stale_on_error(e, 1000 + 25)
    assert not stale_on_error(e, 1000 + 31)
    assert not stale_on_error(entry("max-age=10, stale-if-error=20, must-revalidate"), 1015)
    assert not stale_on_error(entry("max-age=10"), 1011)
    assert not stale_on_error(None, 1000)


def test_stale_while_revalidate_window() -> None:
    e = entry("max-age=10, stale-while-revalidate=5")
    assert stale_while_revalidate(e, 1014)
    assert not stale_while_revalidate(e, 1016)
    assert not stale_while_revalidate(entry("max-age=10, stale-while-revalidate=5, no-cache"),
                                      1011)


def test_client_wants_fresh() -> None:
    assert client_wants_fresh({b"cache-control": b"No-Cache"})
    assert client_wants_fresh({b"cache-control": b"max-age=0, x"})
    assert client_wants_fresh({b"pragma": b"no-cache"})
    assert not client_wants_fresh({b"cache-control": b"max-age=5", b"pragma": b"no-cache"})
    assert not client_wants_fresh({})


def test_request_verdict() -> None:
    assert request_verdict("GET", {}, 200, '"a"', None) is None
    assert request_verdict("GET", {b"if-none-match": b'"a"'}, 200, '"a"', None) == 304
    assert request_verdict("GET", {b"if-match": b'"b"'}, 200, '"a"', None) == 412
    assert request_verdict("GET", {b"if-none-match": b'"b"'}, 200, '"a"', None) is None


def test_shareable_and_pass_marks() -> None:
    from reelcdn.edge.cache.verdicts import PASS_MARK_SECONDS, pass_mark, shareable

    stored = entry("max-age=60").freshness
    not_stored = entry("no-store").freshness
    assert shareable({"cache-control": "max-age=60"}, stored)
    assert not shareable({"cache-control": "private, max-age=60"}, not_stored)
    assert not shareable({"set-cookie": "a=b", "cache-control": "max-age=60"}, not_stored)
    assert shareable({"set-cookie": "a=b"}, stored)  # a forcing TTL rule stored it: shared
    assert shareable({"cache-control": "no-store"}, not_stored)  # no-store: shared, not kept
    assert pass_mark(100.0) == 100.0 + PASS_MARK_SECONDS


def test_within_size() -> None:
    from reelcdn.edge.cache.verdicts import within_size

    assert within_size(None, 10) and within_size(10, 10)
    assert not within_size(11, 10)


def test_if_modified_since_without_last_modified_uses_date() -> None:
    """RFC 9111 §4.3.2: a stored response without Last-Modified is compared by its Date."""
    ims = {b"if-modified-since": b"Wed, 02 Dec 2026 10:00:00 GMT"}
    earlier, later = "Wed, 02 Dec 2026 09:00:00 GMT", "Wed, 02 Dec 2026 11:00:00 GMT"
    assert request_verdict("GET", ims, 200, None, None, earlier) == 304
    assert request_verdict("GET", ims, 200, None, None, later) is None
    assert request_verdict("GET", ims, 200, None, later, earlier) is None  # LM wins
    stored = entry("max-age=60")
    assert stored.modified_basis is None  # no Date in these headers
