"""Tally RFC 9211 ``Cache-Status`` from the responses players get.

Why from the client side as well as from ``/metrics``: the response header says, per request,
which tier served it, so hit ratios can be computed per tier and over time for any CDN that
sends the header (reelcdn does on every response; the nginx comparison topology adds it), and
checked against the nodes' own counters.

Members are listed upstream first; the last one is the cache nearest the client. Each member
is read as the outcome its node counted in ``/metrics`` (``edge/ops/ratios.py``:
``outcome_of_member``): hit, stale, revalidated, miss, pass, error, steering. Walking from the
client side, a request reached each member until one served it from its cache (``hit`` or
``stale``, a stale-if-error answer after a failed fetch included) or says ``collapsed`` (the
request joined a fetch another request had started, so it went no further); members beyond
that describe an older fetch or another request's (they travel with the object) and are not
counted. A request that reached every member without either was an *origin fetch*. Counted
this way, a tier's outcomes are what its nodes' own counters say for the same requests, so
the hit ratio (``ratios.hit_ratio``) is the same both ways; what a tier's counters hold
beyond the players' requests (prefetches, other clients, errors without a Cache-Status) is
what ``summary.reconcile`` reports.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

from reelcdn.edge.ops.ratios import HIT_OUTCOMES, NOT_CONTENT, outcome_of_member

ORIGIN = "origin"


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    hit: bool                 # served from this member's cache: outcome hit or stale
    collapsed: bool
    outcome: str = "miss"     # what the member's node counted (edge/ops/ratios.py)
    params: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def parse(value: str | None) -> tuple[Member, ...]:
    """The members of a ``Cache-Status`` value (several header lines joined with commas)."""
    if not value:
        return ()
    return _parse(value)


@functools.lru_cache(maxsize=4096)
def _parse(value: str) -> tuple[Member, ...]:
    # Cached: a run repeats a handful of distinct values (one per path through the tiers)
    # over and over, and parsing each response's anew was ~3 % of a load process's CPU.
    members = []
    for item in value.split(","):
        parts = [p.strip() for p in item.split(";")]
        if not parts[0]:
            continue
        name = parts[0].strip('"')
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip('"') if "=" in p
                  else "?1" for p in parts[1:] if p}
        outcome = outcome_of_member(params)
        members.append(Member(name, outcome in HIT_OUTCOMES, "collapsed" in params, outcome,
                              params))
    return tuple(members)


@dataclass
class TierCounts:
    """One tier (a member name, or a depth) as seen by the responses that reached it."""

    reached: int = 0
    hits: int = 0
    collapsed: int = 0
    bytes_served: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # outcome → requests

    def add(self, other: TierCounts) -> None:
        self.reached += other.reached
        self.hits += other.hits
        self.collapsed += other.collapsed
        self.bytes_served += other.bytes_served
        for outcome, value in other.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + value


@dataclass
class Tally:
    """Counts of responses, mergeable across worker processes (plain data, picklable)."""

    responses: int = 0
    failures: int = 0                      # requests that got no response at all
    statuses: Counter[int] = field(default_factory=Counter)
    bytes: int = 0
    with_cache_status: int = 0
    # responses without a Cache-Status, by status: a reelcdn node's own errors before its
    # cache (400, 403, 431 ...), counted by /metrics as error
    without_cache_status: Counter[int] = field(default_factory=Counter)
    origin_fetches: int = 0                # client view: no hit and not collapsed
    by_name: dict[str, TierCounts] = field(default_factory=dict)
    by_depth: dict[int, TierCounts] = field(default_factory=dict)   # 1 = nearest the client
    # second since the run started → depth → [requests for content reached, hits]
    timeline: dict[int, dict[int, list[int]]] = field(default_factory=dict)
    paths: set[str] = field(default_factory=set)   # distinct objects asked for (no query)

    def record(self, status: int, cache_status: str | None, nbytes: int, second: int,
               path: str = "") -> None:
        if path:
            self.paths.add(path)
        self.responses += 1
        self.statuses[status] += 1
        self.bytes += nbytes
        members = parse(cache_status)
        if not members:
            self.without_cache_status[status] += 1
            return
        self.with_cache_status += 1
        bucket = self.timeline.setdefault(second, {})
        served = False
        collapsed = False
        for depth, member in enumerate(reversed(members), start=1):
            tier = self.by_name.get(member.name)
            if tier is None:
                tier = self.by_name[member.name] = TierCounts()
            level = self.by_depth.get(depth)
            if level is None:
                level = self.by_depth[depth] = TierCounts()
            counts = bucket.setdefault(depth, [0, 0])
            tier.reached += 1
            level.reached += 1
            outcome = member.outcome
            tier.outcomes[outcome] = tier.outcomes.get(outcome, 0) + 1
            level.outcomes[outcome] = level.outcomes.get(outcome, 0) + 1
            if outcome not in NOT_CONTENT:
                counts[0] += 1
            if member.hit:
                tier.hits += 1
                level.hits += 1
                tier.bytes_served += nbytes
                level.bytes_served += nbytes
                counts[1] += 1
                served = True
                break
            if member.collapsed:
                tier.collapsed += 1
                level.collapsed += 1
                tier.bytes_served += nbytes     # delivered from that tier's fetch
                level.bytes_served += nbytes
                collapsed = True
                break
        if not served and not collapsed:
            self.origin_fetches += 1
            origin = self.by_name.get(ORIGIN)
            if origin is None:
                origin = self.by_name[ORIGIN] = TierCounts()
            origin.reached += 1
            origin.bytes_served += nbytes

    def merge(self, other: Tally) -> None:
        self.responses += other.responses
        self.failures += other.failures
        self.statuses.update(other.statuses)
        self.bytes += other.bytes
        self.with_cache_status += other.with_cache_status
        self.without_cache_status.update(other.without_cache_status)
        self.origin_fetches += other.origin_fetches
        self.paths |= other.paths
        for name, counts in other.by_name.items():
            self.by_name.setdefault(name, TierCounts()).add(counts)
        for depth, counts in other.by_depth.items():
            self.by_depth.setdefault(depth, TierCounts()).add(counts)
        for second, depths in other.timeline.items():
            mine = self.timeline.setdefault(second, {})
            for depth, (reached, hits) in depths.items():
                slot = mine.setdefault(depth, [0, 0])
                slot[0] += reached
                slot[1] += hits
