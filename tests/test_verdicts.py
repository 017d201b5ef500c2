"""The node's pure verdicts, without sockets: stale-if-error, stale-while-revalidate, client
no-cache, and the one precondition entry point."""

from __future__ import annotations

import pytest

from reelcdn.edge.cache.backoff import FailureBackoff
from reelcdn.edge.cache.entry import CacheEntry
from reelcdn.edge.cache.freshness import decide
from reelcdn.edge.cache.verdicts import (
    client_wants_fresh,
    failure_backoff,
    stale_on_error,
    stale_while_revalidate,
    upstream_served_stale,
)
from reelcdn.edge.config import TtlRule
from reelcdn.edge.http.conditional import request_verdict


def entry(cache_control: str, now: float = 1000.0, status: int = 200) -> CacheEntry:
    fields = {"cache-control": cache_control}
    rules = (TtlRule("*", 1.0, frozenset({503})),)
    freshness = decide("GET", status, fields, "/x", request_has_authorization=False,
                       ttl_rules=rules, now=now, heuristic_fraction=0.1, heuristic_max=86400.0)
    return CacheEntry(key="/x", primary="/x", status=status,
                      headers=[(b"Cache-Control", cache_control.encode())], body=b"x",
                      freshness=freshness, response_time=now, initial_age=0.0, vary=())


def test_stale_on_error_within_the_allowance_only() -> None:
    e = entry("max-age=10, stale-if-error=20")
    assert stale_on_error(e, 1000 + 25)
    assert not stale_on_error(e, 1000 + 31)
    assert not stale_on_error(entry("max-age=10, stale-if-error=20, must-revalidate"), 1015)
    assert not stale_on_error(entry("max-age=10"), 1011)
    assert not stale_on_error(None, 1000)


def test_the_node_allowance_applies_where_the_origin_said_nothing() -> None:
    assert stale_on_error(entry("max-age=10"), 1000 + 10 + 3599, default_allowance=3600)
    assert not stale_on_error(entry("max-age=10"), 1000 + 10 + 3601, default_allowance=3600)
    # the origin's own stale-if-error wins, shorter or longer
    assert not stale_on_error(entry("max-age=10, stale-if-error=5"), 1016, default_allowance=3600)
    assert stale_on_error(entry("max-age=10, stale-if-error=9000"), 5000, default_allowance=60)
    # never against must-revalidate, s-maxage, no-cache, nor for a stored server error
    for cc in ("max-age=10, must-revalidate", "s-maxage=10", "no-cache"):
        assert not stale_on_error(entry(cc), 1011, default_allowance=3600), cc
    assert not stale_on_error(entry("", status=503), 1002, default_allowance=3600)
    # 0 turns it off
    assert not stale_on_error(entry("max-age=10"), 1011, default_allowance=0)


def test_failure_backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() -> None:
    assert [failure_backoff(n, 1.0, 30.0, 0.999999) for n in (1, 2, 3, 4, 5)] == pytest.approx(
        [1, 2, 4, 8, 16], rel=1e-5)
    assert failure_backoff(6, 1.0, 30.0, 0.0) == 15.0
    assert failure_backoff(100, 1.0, 30.0, 0.5) == 22.5
    assert failure_backoff(10_000, 1.0, 30.0, 0.0) == 15.0  # no overflow
    assert failure_backoff(0, 2.0, 30.0, 0.0) == 1.0


def test_an_answer_already_stale_counts_as_a_failure() -> None:
    marked = "shield-1; hit; detail=stale-if-error"
    assert upstream_served_stale(60.0, 61.0, marked)
    assert upstream_served_stale(60.0, 60.0, marked)
    assert not upstream_served_stale(60.0, 10.0, marked)
    assert not upstream_served_stale(0.0, 500.0, marked)  # stored on a validator
    # Old on arrival but not served on an error (an origin's Age, a slow Date): an ordinary
    # answer, revalidated next time, never a reason to hold on to it.
    assert not upstream_served_stale(60.0, 61.0, None)
    assert not upstream_served_stale(60.0, 61.0, "shield-1; fwd=miss; stored")


def test_failure_backoff_table() -> None:
    table = FailureBackoff(1.0, 30.0, limit=3, rand=lambda: 0.0)
    assert not table.blocked("/a", 0.0)
    assert table.failed("/a", 100.0) == 100.5
    assert table.blocked("/a", 100.4) and not table.blocked("/a", 100.5)
    assert table.failed("/a", 101.0) == 102.0  # the second failure in a row: 2 s, jittered
    assert table.failures("/a") == 2
    table.failed("/a", 103.0, grow=False)  # a parent's stale answer: the first back-off
    assert table.failures("/a") == 1 and not table.blocked("/a", 103.5)
    table.succeeded("/a")
    assert "/a" not in table and table.failures("/a") == 0
    for key in ("/1", "/2", "/3", "/4"):  # bounded: the oldest key is forgotten
        table.failed(key, 0.0)
    assert len(table) == 3 and "/1" not in table and "/4" in table


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
