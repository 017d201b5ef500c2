"""From raw results to the numbers a person reads: percentiles, rates, ratios, SLO verdicts.

Definitions (so that numbers from different runs and CDNs mean the same thing):

- attempts: sessions whose start finished one way or the other (played, VSF, EBVS, or a
  failure during playback); sessions cut by the end of the run before their start finished
  are ``unfinished`` and left out of every rate.
- ``vsf`` = VSF / attempts; ``ebvs`` = EBVS / attempts; ``vpf`` = playback failures / attempts.
- TTFF percentiles over successful starts, in milliseconds, decode allowance included.
- ``rebuffer_ratio`` = stall time / (stall time + played time), both in wall seconds.
- ``origin_fetch_ratio`` = origin requests / player requests; ``offload`` = 1 - that ratio.
  From the nodes' metrics when they were scraped, else from ``Cache-Status``.
- hit ratio: the product's one definition (``edge/ops/ratios.py``, docs/operations.md):
  (hit + stale) / requests for content, computed per tier both from the players'
  ``Cache-Status`` and from the nodes' ``/metrics`` increases; ``hit_ratio`` in the summary
  puts the two side by side and says what differs (:func:`reconcile`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from reelcdn.edge.ops import ratios

from .cachestatus import Tally
from .player import PlayerResult
from .scrape import NodeCounters, origin_requests
from .verify import summary_of as verify_summary

PERCENTILES = (50, 90, 95, 99)
PHASES = ("feed", "master", "media_playlist", "init", "first_segment_ttfb", "first_segment")
#: How many distinct start-failure reasons the summary lists.
FAILURE_REASONS = 10


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def distribution_ms(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"p{q}": _ms(percentile(values, q)) for q in PERCENTILES}
    out["max"] = _ms(max(values)) if values else None
    out["mean"] = _ms(sum(values) / len(values)) if values else None
    out["count"] = len(values)
    return out


def tier_label(depth: int, roles: list[str]) -> str:
    """Depth 1 is the edge; with the roles known (a topology), name the tier by role."""
    if 0 < depth <= len(roles):
        return roles[depth - 1]
    return {1: "edge", 2: "tier-2", 3: "tier-3"}.get(depth, f"tier-{depth}")


def start_failures(players: list[PlayerResult]) -> dict[str, int]:
    """VSF and EBVS reasons as ``phase: error`` → sessions, the most frequent first."""
    counts: dict[str, int] = {}
    for result in players:
        if result.outcome in ("vsf", "ebvs"):
            key = f"{result.failed_phase}: {result.error}"
            counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(ordered[:FAILURE_REASONS])


def summarise(players: list[PlayerResult], tally: Tally,
              server: dict[str, NodeCounters] | None, wall_seconds: float,
              tier_roles: list[str] | None = None, time_scale: float = 1.0) -> dict[str, Any]:
    tier_roles = tier_roles or []
    outcomes: dict[str, int] = {}
    for result in players:
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
    attempts = sum(v for k, v in outcomes.items() if k != "unfinished")
    started = [r for r in players if r.ttff is not None]
    ttffs = [r.ttff for r in started if r.ttff is not None]
    phases = {phase: distribution_ms([r.phases[phase] for r in started if phase in r.phases])
              for phase in PHASES}
    stalls = [s for r in players for s in r.rebuffers]
    stall_time = sum(stalls)
    played_wall = sum(r.played_seconds for r in started) / time_scale
    bitrates = [r.average_bitrate for r in started if r.average_bitrate]

    def rate(key: str) -> float | None:
        return outcomes.get(key, 0) / attempts if attempts else None

    client_tiers = {}
    for depth, counts in sorted(tally.by_depth.items()):
        client_tiers[tier_label(depth, tier_roles)] = {
            "depth": depth, "requests": counts.reached, "hits": counts.hits,
            "hit_ratio": ratios.hit_ratio(counts.outcomes),
            "collapsed": counts.collapsed, "bytes_served": counts.bytes_served,
            "outcomes": dict(sorted(counts.outcomes.items())),
        }
    origin_view = tally.by_name.get("origin")
    summary: dict[str, Any] = {
        "sessions": len(players),
        "attempts": attempts,
        "outcomes": outcomes,
        "vsf": rate("vsf"), "ebvs": rate("ebvs"), "vpf": rate("vpf"),
        "ttff_ms": distribution_ms(ttffs),
        "phases_ms": phases,
        "start_failures": start_failures(players),
        "rebuffer": {
            "events": len(stalls),
            "sessions_with_rebuffer": sum(1 for r in started if r.rebuffers),
            "stall_seconds": round(stall_time, 3),
            "ratio": stall_time / (stall_time + played_wall) if stall_time + played_wall else 0.0,
            "duration_ms": distribution_ms(stalls),
        },
        "switches": sum(r.switches for r in players),
        "average_bitrate_bps": {
            "mean": sum(bitrates) / len(bitrates) if bitrates else None,
            "p50": percentile(bitrates, 50),
        },
        "client": {
            "requests": tally.responses + tally.failures,
            "responses": tally.responses,
            "failures": tally.failures,
            "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
            "bytes": tally.bytes,
            "throughput_bps": tally.bytes * 8 / wall_seconds if wall_seconds > 0 else None,
            "with_cache_status": tally.with_cache_status,
            "tiers": client_tiers,
            "nodes": {name: {"requests": c.reached, "hits": c.hits, "collapsed": c.collapsed,
                             "bytes_served": c.bytes_served}
                      for name, c in sorted(tally.by_name.items())},
            "origin_fetches": tally.origin_fetches,
            "origin_bytes": origin_view.bytes_served if origin_view else 0,
            "without_cache_status": {str(k): v for k, v
                                     in sorted(tally.without_cache_status.items())},
        },
    }
    if tally.with_cache_status:
        ratio = tally.origin_fetches / tally.responses if tally.responses else None
        summary["client"]["origin_fetch_ratio"] = ratio
    summary["verify"] = verify_summary(players)
    summary["server"] = server_view(server) if server else None
    summary["hit_ratio"] = reconcile(summary["client"], summary["server"])
    source = summary["server"] if summary["server"] else summary["client"]
    ratio = source.get("origin_fetch_ratio")
    summary["origin_fetch_ratio"] = ratio
    summary["offload"] = None if ratio is None else 1 - ratio
    return summary


def server_view(delta: dict[str, NodeCounters]) -> dict[str, Any]:
    """Per node and per role: requests, hits, coalesced waiters, bytes; origin requests."""
    roles: dict[str, dict[str, Any]] = {}
    for node in delta.values():
        role = roles.setdefault(node.role or "node", {
            "requests": 0, "hits": 0, "coalesced_waiters": 0, "bytes_sent": 0,
            "prefetch_issued": 0, "outcomes": {}})
        role["requests"] += node.requests
        role["hits"] += node.hits
        role["coalesced_waiters"] += node.coalesced_waiters
        role["bytes_sent"] += node.bytes_sent
        role["prefetch_issued"] += node.prefetch_issued
        ratios.add_counts(role["outcomes"], node.by_cache_status)
    for role in roles.values():
        role["outcomes"] = dict(sorted(role["outcomes"].items()))
        role["hit_ratio"] = ratios.hit_ratio(role["outcomes"])
    origin = origin_requests(delta)
    edge_requests = roles.get("edge", {}).get("requests")
    return {
        "nodes": {name: node.to_json() for name, node in sorted(delta.items())},
        "roles": roles,
        "origin_requests": origin,
        "edge_requests": edge_requests,
        "coalesced_waiters": sum(n.coalesced_waiters for n in delta.values()),
        "origin_fetch_ratio": origin / edge_requests if edge_requests else None,
    }


# ------------------------------------------------------------------- hit ratio, both ways

#: The edge's two hit ratios (Cache-Status, /metrics) within this of each other agree.
AGREEMENT = 0.005
DEFINITION = ("(hit + stale) / requests for content (every request but CORS preflights and "
              "steering manifests), as edge/ops/ratios.py defines it for /metrics, "
              "/cache/stats, reelcdn status and the dashboard")


def _signed(counts: dict[str, int]) -> str:
    return ", ".join(f"{v:+d} {k}" for k, v in sorted(counts.items()))


def reconcile(client: dict[str, Any], server: dict[str, Any] | None) -> dict[str, Any]:
    """Each tier's hit ratio from the players' Cache-Status and from its nodes' /metrics,
    with the difference of their outcome counts and what it comes from.

    At the edge both count the players' requests, so they agree but for requests only one
    side saw: answers without a Cache-Status (a node's own errors before its cache), requests
    that got no answer, requests from other clients (a prewarm), requests cut at the end of
    the run. Above the edge, /metrics also counts what the tier below asked on its own
    (prefetches, background revalidations), which no player's response shows: the two are
    then ratios of different requests, and the report says by how much they differ."""
    out: dict[str, Any] = {"definition": DEFINITION, "tolerance": AGREEMENT, "tiers": {}}
    roles = server["roles"] if server else {}
    names = list(client["tiers"]) + sorted((r for r in roles if r not in client["tiers"]),
                                           key=lambda r: r != "edge")
    prefetches = sum(r.get("prefetch_issued", 0) for r in roles.values())  # edges' only
    for index, name in enumerate(names):
        seen = client["tiers"].get(name, {}).get("outcomes", {})
        counted = roles.get(name, {}).get("outcomes") if name in roles else None
        by_status = ratios.hit_ratio(seen)
        tier: dict[str, Any] = {
            "cache_status": by_status,
            "requests_cache_status": int(ratios.content_requests(seen)),
        }
        out["tiers"][name] = tier
        if counted is None:
            tier.update(metrics=None, difference=None, agree=None, explanation=[
                "no /metrics for this tier (not scraped): only the Cache-Status figure"])
            continue
        by_metrics = ratios.hit_ratio(counted)
        difference = None if by_status is None or by_metrics is None else \
            by_metrics - by_status
        diff = {k: counted.get(k, 0) - seen.get(k, 0) for k in counted.keys() | seen.keys()}
        diff = {k: v for k, v in diff.items() if v}
        tier.update(metrics=by_metrics, requests_metrics=int(ratios.content_requests(counted)),
                    difference=difference,
                    agree=difference is not None and abs(difference) <= AGREEMENT,
                    outcomes_difference=dict(sorted(diff.items())))
        explanation: list[str] = []
        if not diff:
            explanation.append(f"the same {tier['requests_metrics']} requests with the same "
                               "outcomes both ways")
        elif index == 0:
            more = {k: v for k, v in diff.items() if v > 0}
            fewer = {k: -v for k, v in diff.items() if v < 0}
            if more:
                causes = []
                bare = client.get("without_cache_status", {})
                if bare:
                    causes.append(f"{sum(bare.values())} player responses had no Cache-Status "
                                  "(a node's own answer before its cache, status "
                                  + ", ".join(f"{k} ×{v}" for k, v in bare.items())
                                  + "), counted as error by /metrics")
                if client.get("failures"):
                    causes.append(f"{client['failures']} player requests got no answer "
                                  "(a node may have counted them)")
                causes.append("requests not from these players (a prewarm, other clients) "
                              "and answers cut by the end of the run")
                explanation.append(f"/metrics counted {sum(more.values())} requests the "
                                   f"players' Cache-Status did not show ({_signed(more)}): "
                                   + "; ".join(causes))
            if fewer:
                explanation.append(f"players saw {sum(fewer.values())} answers /metrics did "
                                   f"not count between its first and last scrape "
                                   f"({_signed({k: -v for k, v in fewer.items()})}): counted "
                                   "before the first scrape, or lost in a node restart")
        else:
            below = names[index - 1]
            extra = tier["requests_metrics"] - tier["requests_cache_status"]
            explanation.append(
                f"/metrics counts every request {below} made of this tier, "
                f"{tier['requests_metrics']}, Cache-Status only those of the players' requests "
                f"that reached it, {tier['requests_cache_status']}: {extra:+d} requests no "
                "player's response shows (prefetches: the edges issued "
                f"{prefetches}, each asked here unless a tier below had it; background "
                "revalidations; fills for other clients), so the two ratios are over "
                "different requests")
        if difference is not None and not tier["agree"]:
            explanation.append(f"the ratios differ by {difference * 100:+.2f} points "
                               f"(/metrics − Cache-Status)")
        tier["explanation"] = explanation
    edge = next(iter(out["tiers"].values()), None)
    out["edge"] = edge
    return out


# ------------------------------------------------------------------------------------ SLOs

_SLO_KEY = re.compile(r"^(ttff_(p\d{1,2}|max|mean)|vsf|ebvs|vpf|rebuffer_ratio|"
                      r"origin_fetch_ratio|offload|hit_ratio)$")
LOWER_BOUNDS = {"offload", "hit_ratio"}      # the value must be at least the target


@dataclass(frozen=True, slots=True)
class Slo:
    key: str
    target: float        # seconds for ttff_*, a fraction otherwise
    text: str


def parse_slos(text: str) -> list[Slo]:
    """``ttff_p95=200ms,vsf=0.5%`` → SLOs. ValueError names the bad part."""
    slos = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not _SLO_KEY.match(key):
            raise ValueError(
                f"--slo: {part!r}: expected KEY=VALUE with KEY one of ttff_p50/p90/p95/p99/max/"
                "mean, vsf, ebvs, vpf, rebuffer_ratio, origin_fetch_ratio, offload, hit_ratio")
        value = value.strip()
        try:
            if key.startswith("ttff_"):
                from .network import parse_seconds

                target = parse_seconds(value)
            elif value.endswith("%"):
                target = float(value[:-1]) / 100
            else:
                target = float(value)
        except ValueError:
            wanted = "duration (e.g. 200ms)" if key.startswith("ttff_") \
                else "ratio (e.g. 0.5% or 0.005)"
            raise ValueError(f"--slo: {part!r}: {value!r} is not a {wanted}") from None
        slos.append(Slo(key, target, part))
    if not slos:
        raise ValueError("--slo: no objective given")
    return slos


def measured(summary: dict[str, Any], key: str) -> float | None:
    if key.startswith("ttff_"):
        value = summary["ttff_ms"].get(key[5:])
        return None if value is None else value / 1000
    if key == "rebuffer_ratio":
        return summary["rebuffer"]["ratio"]
    if key == "hit_ratio":
        server = summary.get("server")
        if server and "edge" in server["roles"]:
            return server["roles"]["edge"]["hit_ratio"]
        edge = next(iter(summary["client"]["tiers"].values()), None)
        return edge["hit_ratio"] if edge else None
    return summary.get(key)


def check_slos(summary: dict[str, Any], slos: list[Slo]) -> list[dict[str, Any]]:
    verdicts = []
    for slo in slos:
        value = measured(summary, slo.key)
        if value is None:
            ok = False      # nothing measured (no start at all) cannot meet an objective
        elif slo.key in LOWER_BOUNDS:
            ok = value >= slo.target
        else:
            ok = value <= slo.target
        verdicts.append({"slo": slo.text, "key": slo.key, "target": slo.target,
                         "measured": value, "met": ok})
    return verdicts
