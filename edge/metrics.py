"""Node metrics: plain counters on the hot path, exposed through a prometheus-client collector.

Why not ``Counter.labels(...).inc()`` per request: each call takes a lock and a label lookup,
a measurable share of a ~10 µs HIT. The node bumps plain ints and dict slots instead, and a
custom collector turns them into Prometheus families only when ``/metrics`` is scraped.

The rendering works from plain data (a stats snapshot, gauge values) so that a node running
several worker processes (``workers.py``) can sum its workers' snapshots in the master and
render the sum with the very same code: one node to Prometheus, whatever its process count.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

# Seconds; video TTFB spans sub-millisecond HITs to multi-second cold origin fetches.
TTFB_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class NodeStats:
    """Counters one node keeps while it serves."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.requests: dict[tuple[str, str, int], int] = {}
        self.upstream_requests: dict[tuple[str, int], int] = {}
        self.upstream_failures = 0
        self.coalesced_waiters = 0
        self.bytes_sent = 0
        self.evictions = 0
        self.connections_total = 0
        self.connections_rejected = 0
        self.timeouts = 0
        self.body_files = 0
        self.body_file_fallbacks = 0
        # Disk tier (edge/cache/disktier.py): counters, then levels (rendered as gauges).
        self.disk_hits = 0
        self.disk_writes = 0
        self.disk_evictions = 0
        self.disk_dropped_writes = 0
        self.disk_errors = 0
        self.disk_bytes = 0
        self.disk_objects = 0
        self.disk_capacity = 0
        # Prewarmed objects (edge/ops/admin.py's PrewarmTracker): each one's first request
        # after its prewarm, HIT or not, and how many still wait for one (a level).
        self.prewarm_first_hits = 0
        self.prewarm_first_misses = 0
        self.prewarm_tracked = 0
        # Edge features (edge/video/features.py, playlists.py, prefetch.py, cmcd.py).
        self.playlists_rendered = 0
        self.prefetch_issued = 0
        self.prefetch_used = 0
        self.prefetch_wasted = 0
        self.prefetch_dropped = 0
        # Prefetches refused by their bounds (edge/video/prefetch_bounds.py), by reason.
        self.prefetch_refused: dict[str, int] = {}
        # Access log lines dropped (edge/ops/accesslog.py), by reason: queue (full), write
        # (the write failed, e.g. ENOSPC). Written by the log's thread.
        self.access_log_dropped: dict[str, int] = {}
        self.cmcd_requests = 0
        self.cmcd_starving = 0
        self.cmcd_buffer_ms_sum = 0
        self.cmcd_buffer_reports = 0
        # Signed URLs (edge/auth): requests refused, by reason.
        self.token_refusals: dict[str, int] = {}
        # Health of parents and origins (edge/fetch/health.py): changes, by (upstream, to).
        self.upstream_state_changes: dict[tuple[str, str], int] = {}
        # Bodies that broke mid-way and could be resumed (edge/fetch/resume.py), by outcome:
        # resumed, refused (an upstream answered other bytes: the validator changed), failed.
        self.upstream_resumes: dict[str, int] = {}
        # Content steering (edge/video/steering.py), by PATHWAY-ID: manifests served, by the
        # pathway ranked first; the players' _HLS_throughput reports (bit/s) on their pathway;
        # each pathway's health as the node's checks see it (1 up, 0 down).
        self.steering_manifests: dict[str, int] = {}
        self.steering_throughput_sum: dict[str, int] = {}
        self.steering_throughput_reports: dict[str, int] = {}
        self.steering_pathway_up: dict[str, int] = {}
        # View counts (edge/video/plays.py): plays and completions counted here, batches
        # posted to plays_url, and what could not be (dropped: the queue overflowed or the
        # node stopped with batches unsent; rejected: a permanent 4xx); the unsent backlog.
        self.plays_started = 0
        self.plays_completed = 0
        self.plays_batches_sent = 0
        self.plays_batches_retried = 0
        self.plays_batches_duplicate = 0
        self.plays_batches_dropped = 0
        self.plays_batches_rejected = 0
        self.plays_lost = 0
        self.plays_pending_batches = 0
        self.plays_pending_bytes = 0
        self.ttfb_counts = [0] * (len(TTFB_BUCKETS) + 1)
        self.ttfb_sum = 0.0

    def count(self, method: str, cache_status: str, code: int) -> None:
        key = (method, cache_status, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1

    def upstream(self, upstream: str, code: int) -> None:
        key = (upstream, code)
        self.upstream_requests[key] = self.upstream_requests.get(key, 0) + 1

    def upstream_state(self, upstream: str, to: str) -> None:
        key = (upstream, to)
        self.upstream_state_changes[key] = self.upstream_state_changes.get(key, 0) + 1

    def upstream_resume(self, outcome: str) -> None:
        self.upstream_resumes[outcome] = self.upstream_resumes.get(outcome, 0) + 1

    def observe_ttfb(self, seconds: float) -> None:
        self.ttfb_counts[bisect_left(TTFB_BUCKETS, seconds)] += 1
        self.ttfb_sum += seconds


# The plain counters of ``NodeStats`` that become one ``{node}``-labelled counter each:
# (attribute, metric name, help).
SIMPLE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("coalesced_waiters", "reelcdn_coalesced_waiters", "Requests that joined an in-flight fetch"),
    ("evictions", "reelcdn_cache_evictions", "Entries evicted to stay within the cache budget"),
    ("prewarm_first_hits", "reelcdn_prewarmed_first_hits",
     "Prewarmed objects whose first request after the prewarm was a HIT"),
    ("prewarm_first_misses", "reelcdn_prewarmed_first_misses",
     "Prewarmed objects refilled before any HIT (their first request after the prewarm missed)"),
    ("bytes_sent", "reelcdn_bytes_sent", "Response bytes written to clients"),
    ("upstream_failures", "reelcdn_upstream_failures",
     "Upstream fetches that failed (connect, timeout, broken body)"),
    ("connections_total", "reelcdn_connections", "Client connections accepted"),
    ("connections_rejected", "reelcdn_connections_rejected",
     "Connections refused over the connection cap"),
    ("timeouts", "reelcdn_client_timeouts",
     "Client connections cut by a header, body, idle or send timeout"),
    ("body_files", "reelcdn_body_files",
     "Stored bodies kept in memory files, served with sendfile"),
    ("body_file_fallbacks", "reelcdn_body_file_fallbacks",
     "Large bodies stored as bytes: the descriptor budget was used, or no memory file "
     "could be made (e.g. EMFILE)"),
    ("playlists_rendered", "reelcdn_playlists_rendered",
     "Playlists rendered here from meta.json (200 answers)"),
    ("prefetch_issued", "reelcdn_prefetch_issued",
     "Prefetch fills started (after a media playlist, or on a CMCD nor)"),
    ("prefetch_used", "reelcdn_prefetch_used",
     "Prefetched objects a client then asked for (joined the fetch, or a later HIT)"),
    ("prefetch_wasted", "reelcdn_prefetch_wasted",
     "Prefetched objects evicted or expired before any client asked for them"),
    ("prefetch_dropped", "reelcdn_prefetch_dropped",
     "Prefetch requests dropped because the prefetch queue was full"),
    ("cmcd_requests", "reelcdn_cmcd_requests", "Requests carrying CMCD data"),
    ("cmcd_starving", "reelcdn_cmcd_starving",
     "CMCD requests from players starting up or rebuffering (su or bs)"),
    ("cmcd_buffer_ms_sum", "reelcdn_cmcd_buffer_length_ms_sum",
     "Sum of the CMCD buffer lengths (bl, ms) reported; divide by the reports count"),
    ("cmcd_buffer_reports", "reelcdn_cmcd_buffer_length_reports",
     "CMCD requests that reported a buffer length (bl)"),
    ("plays_started", "reelcdn_plays_started",
     "Plays counted: a session's first media segment of a video delivered (docs/plays.md)"),
    ("plays_completed", "reelcdn_plays_completed",
     "Completions counted: a rendition's last segment delivered to a session"),
    ("plays_batches_sent", "reelcdn_plays_batches_sent",
     "Play batches the origin accepted (200, a duplicate included)"),
    ("plays_batches_retried", "reelcdn_plays_batches_retried",
     "Play batch posts retried after a 5xx, 408, 429, timeout or connection error"),
    ("plays_batches_duplicate", "reelcdn_plays_batches_duplicate",
     "Play batches the origin said it had already counted (a retry after a lost answer)"),
    ("plays_batches_dropped", "reelcdn_plays_batches_dropped",
     "Play batches dropped unsent: the queue exceeded plays_max_pending, or the node stopped"),
    ("plays_batches_rejected", "reelcdn_plays_batches_rejected",
     "Play batches the origin refused for good (a 4xx other than 408/429: not retried)"),
    ("plays_lost", "reelcdn_plays_lost",
     "Plays and completions in dropped or rejected batches"),
    ("disk_hits", "reelcdn_disk_hits",
     "Memory misses answered by the disk tier (the entry moved back into memory)"),
    ("disk_writes", "reelcdn_disk_writes", "Bodies of memory victims written to the disk tier"),
    ("disk_evictions", "reelcdn_disk_evictions",
     "Objects evicted from the disk tier to stay within cache_disk (files removed)"),
    ("disk_dropped_writes", "reelcdn_disk_dropped_writes",
     "Memory victims not written to disk because the write queue was full"),
    ("disk_errors", "reelcdn_disk_errors",
     "Disk tier files that could not be written, opened or mapped (the object is dropped)"),
)

# Levels kept on ``NodeStats`` by the node itself (not by the admin app's gauges callback):
# (attribute, metric name, help), rendered as gauges and summed over workers.
STATS_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("disk_bytes", "reelcdn_disk_bytes", "Bytes of files in the disk tier (whole 4 KiB blocks)"),
    ("prewarm_tracked", "reelcdn_prewarmed_waiting",
     "Prewarmed objects whose first request has not come yet"),
    ("disk_objects", "reelcdn_disk_objects", "Objects in the disk tier"),
    ("disk_capacity", "reelcdn_disk_capacity_bytes", "The disk tier's configured budget"),
    ("plays_pending_batches", "reelcdn_plays_pending_batches",
     "Play batches waiting to be posted (retrying, or behind one that is)"),
    ("plays_pending_bytes", "reelcdn_plays_pending_bytes",
     "Bytes of the play batches waiting to be posted (at most plays_max_pending)"),
)


def stats_snapshot(stats: NodeStats) -> dict[str, Any]:
    """The counters of ``stats`` as plain JSON-able data.

    A multi-worker node (``workers.py``) has one ``NodeStats`` per worker process; each worker
    hands its snapshot to the master, which sums them (:func:`sum_snapshots`) and renders the
    sum with the same code as a single node (:func:`collect_families`), so Prometheus sees
    one node either way."""
    return {
        "requests": [[m, s, c, v] for (m, s, c), v in stats.requests.items()],
        "upstream_requests": [[u, c, v] for (u, c), v in stats.upstream_requests.items()],
        "upstream_state_changes": [[u, t, v] for (u, t), v
                                   in stats.upstream_state_changes.items()],
        "counters": {attr: getattr(stats, attr) for attr, _, _ in SIMPLE_COUNTERS},
        "levels": {attr: getattr(stats, attr) for attr, _, _ in STATS_GAUGES},
        "ttfb_counts": list(stats.ttfb_counts),
        "ttfb_sum": stats.ttfb_sum,
        "token_refusals": dict(stats.token_refusals),
        "prefetch_refused": dict(stats.prefetch_refused),
        "access_log_dropped": dict(stats.access_log_dropped),
        "upstream_resumes": dict(stats.upstream_resumes),
        "steering": {name: dict(getattr(stats, name)) for name in STEERING_SERIES},
    }


# NodeStats' steering dicts, by PATHWAY-ID: summed over workers, except the health level,
# where a pathway counts as up only when every worker's checks see it up (the minimum).
STEERING_SERIES = ("steering_manifests", "steering_throughput_sum",
                   "steering_throughput_reports", "steering_pathway_up")


def _sum_steering(snapshots: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {name: {} for name in STEERING_SERIES}
    for snap in snapshots:
        for name, values in snap.get("steering", {}).items():
            into = out.setdefault(name, {})
            for pathway, value in values.items():
                if name == "steering_pathway_up":
                    into[pathway] = min(into.get(pathway, value), value)
                else:
                    into[pathway] = into.get(pathway, 0) + value
    return out


def sum_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add stats snapshots key by key (same labels → one series), for a node's workers."""
    requests: dict[tuple[str, str, int], int] = {}
    upstream: dict[tuple[str, int], int] = {}
    changes: dict[tuple[str, str], int] = {}
    counters = {attr: 0 for attr, _, _ in SIMPLE_COUNTERS}
    levels = {attr: 0 for attr, _, _ in STATS_GAUGES}
    ttfb = [0] * (len(TTFB_BUCKETS) + 1)
    ttfb_sum = 0.0
    refusals: dict[str, int] = {}
    prefetch_refused: dict[str, int] = {}
    access_log_dropped: dict[str, int] = {}
    resumes: dict[str, int] = {}
    snapshots = list(snapshots)
    for snap in snapshots:
        for outcome, value in snap.get("upstream_resumes", {}).items():
            resumes[outcome] = resumes.get(outcome, 0) + value
        for reason, value in snap.get("token_refusals", {}).items():
            refusals[reason] = refusals.get(reason, 0) + value
        for reason, value in snap.get("prefetch_refused", {}).items():
            prefetch_refused[reason] = prefetch_refused.get(reason, 0) + value
        for reason, value in snap.get("access_log_dropped", {}).items():
            access_log_dropped[reason] = access_log_dropped.get(reason, 0) + value
        for method, status, code, value in snap["requests"]:
            key = (method, status, int(code))
            requests[key] = requests.get(key, 0) + value
        for name, code, value in snap["upstream_requests"]:
            ukey = (name, int(code))
            upstream[ukey] = upstream.get(ukey, 0) + value
        for name, to, value in snap.get("upstream_state_changes", []):
            changes[(name, to)] = changes.get((name, to), 0) + value
        for attr, value in snap["counters"].items():
            counters[attr] = counters.get(attr, 0) + value
        for attr, value in snap.get("levels", {}).items():
            levels[attr] = levels.get(attr, 0) + value
        for i, value in enumerate(snap["ttfb_counts"][: len(ttfb)]):
            ttfb[i] += value
        ttfb_sum += snap["ttfb_sum"]
    return {
        "requests": [[m, s, c, v] for (m, s, c), v in requests.items()],
        "upstream_requests": [[u, c, v] for (u, c), v in upstream.items()],
        "upstream_state_changes": [[u, t, v] for (u, t), v in changes.items()],
        "counters": counters,
        "levels": levels,
        "ttfb_counts": ttfb,
        "ttfb_sum": ttfb_sum,
        "token_refusals": refusals,
        "prefetch_refused": prefetch_refused,
        "access_log_dropped": access_log_dropped,
        "upstream_resumes": resumes,
        "steering": _sum_steering(snapshots),
    }


def collect_families(
    node: str,
    stats: dict[str, Any],
    gauges: dict[str, float],
    upstream_up: dict[str, float] | None = None,
) -> Iterator[Any]:
    """Prometheus families of one node from plain data: a stats snapshot, gauge values by
    metric name, and 1/0 per upstream (``None``: the node has no upstream health)."""
    requests = CounterMetricFamily(
        "reelcdn_requests", "Requests answered, by method, cache status (the request's "
        "outcome: hit, stale, revalidated, miss, pass, error, preflight, steering; the hit "
        "ratio is (hit + stale) over all but preflight and steering, docs/operations.md) and "
        "status code",
        labels=["node", "method", "cache_status", "code"],
    )
    for method, cache_status, code, value in sorted(stats["requests"]):
        requests.add_metric([node, method, cache_status, str(code)], value)
    yield requests
    refused = CounterMetricFamily(
        "reelcdn_token_refusals", "Requests refused for their signed-URL token (403), by reason",
        labels=["node", "reason"],
    )
    for reason, value in sorted(stats.get("token_refusals", {}).items()):
        refused.add_metric([node, reason], value)
    yield refused
    prefetch_refused = CounterMetricFamily(
        "reelcdn_prefetch_refused", "Prefetches refused by their bounds, by reason: other_video "
        "(outside the request's video), not_media (not a segment or init section), query (a "
        "keyed query), client_budget, node_budget (byte budgets spent)",
        labels=["node", "reason"],
    )
    for reason, value in sorted(stats.get("prefetch_refused", {}).items()):
        prefetch_refused.add_metric([node, reason], value)
    yield prefetch_refused
    access_log_dropped = CounterMetricFamily(
        "reelcdn_access_log_dropped", "Access log lines dropped, by reason: queue (the writer's "
        "queue was full), write (the write failed, e.g. a full disk)",
        labels=["node", "reason"],
    )
    for reason, value in sorted(stats.get("access_log_dropped", {}).items()):
        access_log_dropped.add_metric([node, reason], value)
    yield access_log_dropped
    yield from _steering_families(node, stats.get("steering", {}))

    buckets = []
    cumulative = 0
    counts = stats["ttfb_counts"]
    for bound, count in zip(TTFB_BUCKETS, counts, strict=False):
        cumulative += count
        buckets.append((repr(bound), cumulative))
    cumulative += counts[-1]
    buckets.append(("+Inf", cumulative))
    ttfb = HistogramMetricFamily(
        "reelcdn_request_duration_seconds",
        "Time from a complete request head to the first byte of the response",
        labels=["node"],
    )
    ttfb.add_metric([node], buckets, stats["ttfb_sum"])
    yield ttfb

    upstream = CounterMetricFamily(
        "reelcdn_upstream_requests", "Requests sent upstream, by upstream and status code "
        "(502/504 for connection failures and timeouts)",
        labels=["node", "upstream", "code"],
    )
    for name, code, value in sorted(stats["upstream_requests"]):
        upstream.add_metric([node, name, str(code)], value)
    yield upstream
    changes = CounterMetricFamily(
        "reelcdn_upstream_state_changes", "Health state changes of parents, fallback nodes and "
        "origins, by the state entered (up, half_open, down; docs/failover.md)",
        labels=["node", "upstream", "to"],
    )
    for name, to, value in sorted(stats.get("upstream_state_changes", [])):
        changes.add_metric([node, name, to], value)
    yield changes
    resumes = CounterMetricFamily(
        "reelcdn_upstream_resumes", "Bodies from parents or origins that broke mid-way and "
        "could be resumed (a strong ETag and a Content-Length), by outcome: resumed (the rest "
        "came with Range + If-Range), refused (an upstream answered other bytes: the validator "
        "changed), failed (no upstream could answer); docs/failover.md",
        labels=["node", "outcome"],
    )
    for outcome, value in sorted(stats.get("upstream_resumes", {}).items()):
        resumes.add_metric([node, outcome], value)
    yield resumes

    for attr, name, doc in SIMPLE_COUNTERS:
        family = CounterMetricFamily(name, doc, labels=["node"])
        family.add_metric([node], stats["counters"].get(attr, 0))
        yield family

    for attr, name, doc in STATS_GAUGES:
        level = GaugeMetricFamily(name, doc, labels=["node"])
        level.add_metric([node], stats.get("levels", {}).get(attr, 0))
        yield level

    for name, value in gauges.items():
        gauge = GaugeMetricFamily(name, GAUGE_HELP.get(name, name), labels=["node"])
        gauge.add_metric([node], value)
        yield gauge

    if upstream_up is not None:
        up = GaugeMetricFamily(
            "reelcdn_upstream_up",
            "1 while a parent or origin is in rotation, 0 while it is down or half-open "
            "(failed checks or requests; docs/failover.md)",
            labels=["node", "upstream"],
        )
        for name, value in sorted(upstream_up.items()):
            up.add_metric([node, name], value)
        yield up


def _steering_families(node: str, steering: dict[str, dict[str, int]]) -> Iterator[Any]:
    """Content steering's series, labelled by PATHWAY-ID (docs/steering.md)."""
    for name, metric, doc, family in (
        ("steering_manifests", "reelcdn_steering_manifests",
         "Steering manifests served, by the pathway ranked first", CounterMetricFamily),
        ("steering_throughput_sum", "reelcdn_steering_throughput_bps_sum",
         "Sum of the throughputs (bit/s) players reported with _HLS_throughput, by the "
         "pathway they were on; divide by the reports count", CounterMetricFamily),
        ("steering_throughput_reports", "reelcdn_steering_throughput_reports",
         "Steering requests that reported a throughput, by the player's pathway",
         CounterMetricFamily),
        ("steering_pathway_up", "reelcdn_steering_pathway_up",
         "1 while a steering pathway passes its health checks, 0 while it is down",
         GaugeMetricFamily),
    ):
        series = family(metric, doc, labels=["node", "pathway"])
        for pathway, value in sorted(steering.get(name, {}).items()):
            series.add_metric([node, pathway], value)
        yield series


def upstream_up_values(health: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{upstream: 1.0 | 0.0}`` from an upstream's ``health()`` view."""
    return {name: 1.0 if state.get("up") else 0.0 for name, state in health.items()}


class NodeCollector(Collector):
    """Renders a node's ``NodeStats`` and cache gauges as Prometheus metric families."""

    def __init__(
        self,
        stats: NodeStats,
        gauges: Callable[[], dict[str, float]],
        upstream_health: Callable[[], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self._stats = stats
        self._gauges = gauges
        self._upstream_health = upstream_health

    def collect(self) -> Iterator[Any]:
        up = None if self._upstream_health is None else upstream_up_values(
            self._upstream_health())
        yield from collect_families(
            self._stats.node, stats_snapshot(self._stats), self._gauges(), up
        )


class SnapshotCollector(Collector):
    """Renders whatever ``source()`` returns at scrape time: ``{"node", "stats", "gauges",
    "upstream_up"}`` with the meanings of :func:`collect_families`. The master of a
    multi-worker node fills it with the sum of its workers."""

    def __init__(self, source: Callable[[], dict[str, Any]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        view = self._source()
        yield from collect_families(
            view["node"], view["stats"], view["gauges"], view.get("upstream_up")
        )


GAUGE_HELP = {
    "reelcdn_cache_objects": "Entries in the memory cache",
    "reelcdn_cache_bytes": "Bytes charged to the memory cache (bodies, headers, overhead)",
    "reelcdn_cache_capacity_bytes": "The memory cache's configured budget",
    "reelcdn_inflight_fetches": "Upstream fetches in progress (each may feed many clients)",
    "reelcdn_open_connections": "Client connections open now",
    "reelcdn_workers": "Worker processes of the node (each with its own memory cache)",
    "reelcdn_workers_up": "Worker processes serving now (answering their master, not draining)",
    "reelcdn_body_file_descriptors":
        "Descriptors held by cached bodies kept in memory files (one each)",
    "reelcdn_body_file_descriptors_budget":
        "Descriptors memory-file bodies may hold: RLIMIT_NOFILE minus the client, upstream "
        "and disk reserve",
}


def node_registry(
    stats: NodeStats,
    gauges: Callable[[], dict[str, float]],
    upstream_health: Callable[[], dict[str, dict[str, Any]]] | None = None,
) -> CollectorRegistry:
    """A registry of one node's metrics (one per node, so several nodes can share a process
    in tests without clashing)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(stats, gauges, upstream_health))
    return registry


def snapshot_registry(source: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry rendering ``source()`` (see :class:`SnapshotCollector`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    return registry
