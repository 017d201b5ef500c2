"""The hit ratio's one definition (``edge/ops/ratios.py``) on crafted counts, and the reading
of a node's ``Cache-Status`` member as the outcome the node counted."""

from __future__ import annotations

import pytest

from reelcdn.edge.ops.ratios import (
    HIT_OUTCOMES,
    NOT_CONTENT,
    OUTCOMES,
    PROMQL_CONTENT,
    PROMQL_HITS,
    add_counts,
    content_requests,
    hit_ratio,
    hits,
    outcome_counts,
    outcome_of_member,
)
from reelcdn.loadtest.cachestatus import parse


def test_hits_are_hit_and_stale_over_every_request_for_content() -> None:
    counts = {"hit": 60, "stale": 10, "revalidated": 5, "miss": 15, "pass": 4, "error": 6}
    assert hits(counts) == 70 and content_requests(counts) == 100
    assert hit_ratio(counts) == 0.7


def test_preflights_and_steering_manifests_are_outside_the_ratio() -> None:
    base = {"hit": 3, "miss": 1}
    assert hit_ratio({**base, "preflight": 1000, "steering": 50}) == hit_ratio(base) == 0.75


def test_revalidated_passes_and_errors_are_not_hits_but_count() -> None:
    assert hit_ratio({"hit": 1, "revalidated": 1}) == 0.5
    assert hit_ratio({"hit": 1, "pass": 3}) == 0.25
    assert hit_ratio({"stale": 1, "error": 1}) == 0.5


def test_an_outcome_not_named_counts_as_a_non_hit() -> None:
    assert hit_ratio({"hit": 1, "something-new": 1}) == 0.5


def test_nothing_to_divide_is_none_not_zero() -> None:
    assert hit_ratio({}) is None
    assert hit_ratio({"preflight": 3, "steering": 1}) is None
    assert hit_ratio({"miss": 2}) == 0.0


def test_the_vocabulary_and_the_promql_say_the_same() -> None:
    assert set(HIT_OUTCOMES) < set(OUTCOMES) and set(NOT_CONTENT) < set(OUTCOMES)
    assert PROMQL_HITS == 'cache_status=~"hit|stale"'
    assert PROMQL_CONTENT == 'cache_status!~"preflight|steering"'


def test_counts_by_outcome_add_up() -> None:
    series = [("hit", 2), ("miss", 1), ("hit", 3)]
    assert outcome_counts(series) == {"hit": 5, "miss": 1}
    assert add_counts({"hit": 1}, {"hit": 2, "stale": 1}) == {"hit": 3, "stale": 1}


@pytest.mark.parametrize(("member", "outcome"), [
    # what node.py, delivery.py, playlists.py and steering.py write, and what they count
    ("e; hit", "hit"),
    ("e; hit; detail=rendered", "hit"),                       # from a fresh meta.json
    ("e; hit; detail=no-variants", "hit"),                    # a rendered 404, fresh meta
    ("e; hit; detail=stale-while-revalidate", "stale"),
    ("e; hit; detail=stale-if-error", "stale"),               # backed off: not asked
    ("e; fwd=stale; fwd-status=503; detail=stale-if-error", "stale"),   # asked, failed
    ("e; fwd=stale; fwd-status=304", "revalidated"),
    ("e; fwd=stale; fwd-status=304; collapsed", "revalidated"),
    ("e; fwd=stale; fwd-status=304; detail=rendered", "revalidated"),   # meta.json's
    ("e; fwd=request; fwd-status=304", "revalidated"),        # no-cache, confirmed
    ("e; fwd=uri-miss; fwd-status=200; stored", "miss"),
    ("e; fwd=uri-miss; fwd-status=200; collapsed", "miss"),
    ("e; fwd=uri-miss; fwd-status=200; detail=rendered", "miss"),
    ("e; fwd=stale; fwd-status=200; stored", "miss"),
    ("e; fwd=request; fwd-status=200", "miss"),
    ("e; fwd=method; fwd-status=201", "pass"),
    ("e; fwd=bypass; fwd-status=200", "pass"),
    ("e; fwd=vary-miss; fwd-status=200", "pass"),
    ("e; detail=options", "pass"),                            # OPTIONS *
    ("e; fwd=uri-miss; detail=upstream-failure", "error"),
    ("e; detail=bad-option", "error"),                        # a playlist's bad query
    ("e; detail=steering", "steering"),
])
def test_a_member_says_the_outcome_its_node_counted(member: str, outcome: str) -> None:
    (parsed,) = parse(member)
    assert parsed.outcome == outcome
    assert outcome_of_member(parsed.params) == outcome
    assert parsed.hit == (outcome in HIT_OUTCOMES)
