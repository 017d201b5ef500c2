"""Write ``dashboards/reelcdn.json``, the Grafana dashboard of a reelcdn deployment, from the
panel list below (run ``python dashboards/make_dashboard.py`` after editing it;
``tests/test_dashboard.py`` checks that the JSON in the repository is this script's output and
that every metric its queries name is one a live node or origin service exposes).

The queries filter on two labels: ``node`` (every node metric has it) and ``role`` (edge,
regional, shield), which the nodes do not export: Prometheus attaches it to each target in the
scrape configuration (docs/operations.md). With the variable at "All" (``.*``) a deployment
without that label still fills every panel but the tier and offload ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from reelcdn.edge.ops.ratios import PROMQL_CONTENT, PROMQL_HITS

OUT = Path(__file__).with_name("reelcdn.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'node=~"$node", role=~"$role"'
RI = "$__rate_interval"


def rate(metric: str, matchers: str = "", by: str = "") -> str:
    labels = SEL + (", " + matchers if matchers else "")
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({metric}{{{labels}}}[{RI}]))"


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    out = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref,
           "range": True}
    out.update(extra)
    return out


def timeseries(title: str, targets: list[dict[str, Any]], unit: str = "short",
               description: str = "", w: int = 12, h: int = 8, stack: bool = False,
               maximum: float | None = None, minimum: float | None = 0) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
                   "showPoints": "never", "spanNulls": False,
                   "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
    }
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {"type": "timeseries", "title": title, "description": description,
            "datasource": DS, "targets": targets, "w": w, "h": h,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, expr: str, unit: str, description: str = "",
         steps: list[tuple[str, float | None]] | None = None, w: int = 4) -> dict[str, Any]:
    steps = steps or [("green", None)]
    return {"type": "stat", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, instant=True, range=False)], "w": w, "h": 4,
            "fieldConfig": {"defaults": {
                "unit": unit, "decimals": 2,
                "thresholds": {"mode": "absolute",
                               "steps": [{"color": c, "value": v} for c, v in steps]}},
                "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                          "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}}


def state_timeline(title: str, expr: str, legend: str, description: str = "",
                   w: int = 12) -> dict[str, Any]:
    return {"type": "state-timeline", "title": title, "description": description,
            "datasource": DS, "targets": [target(expr, legend)], "w": w, "h": 8,
            "fieldConfig": {"defaults": {
                "mappings": [{"type": "value", "options": {
                    "0": {"text": "down", "color": "red", "index": 0},
                    "1": {"text": "up", "color": "green", "index": 1}}}],
                "thresholds": {"mode": "absolute", "steps": [
                    {"color": "red", "value": None}, {"color": "green", "value": 1}]}},
                "overrides": []},
            "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                        "legend": {"displayMode": "list", "placement": "bottom"}}}


def heatmap(title: str, expr: str, description: str = "", w: int = 12) -> dict[str, Any]:
    return {"type": "heatmap", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, "{{le}}", format="heatmap")], "w": w, "h": 8,
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {"calculate": False, "yAxis": {"unit": "s"},
                        "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges",
                                                "exponent": 0.5, "steps": 64},
                        "rowsFrame": {"layout": "auto"},
                        "tooltip": {"show": True, "yHistogram": False}}}


# The hit ratio's one definition (edge/ops/ratios.py): (hit + stale) / every request but CORS
# preflights and steering manifests.
HITS = PROMQL_HITS
CONTENT = PROMQL_CONTENT
FIVE_XX = 'code=~"5.."'
EDGE_REQUESTS = f'sum(rate(reelcdn_requests_total{{role="edge"}}[{RI}]))'
SHIELD_ORIGIN_REQUESTS = f'sum(rate(reelcdn_upstream_requests_total{{role="shield"}}[{RI}]))'
OFFLOAD_REQUESTS = f"1 - ({SHIELD_ORIGIN_REQUESTS} or vector(0)) / {EDGE_REQUESTS}"
OFFLOAD_BYTES = (f'1 - (sum(rate(reelcdn_bytes_sent_total{{role="shield"}}[{RI}])) or vector(0))'
                 f' / sum(rate(reelcdn_bytes_sent_total{{role="edge"}}[{RI}]))')


def hit_ratio(by: str) -> str:
    return (f"{rate('reelcdn_requests_total', HITS, by)}\n  /\n"
            f"{rate('reelcdn_requests_total', CONTENT, by)}")


def quantile(q: float, by: str = "node") -> str:
    return (f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate(reelcdn_request_duration_seconds_bucket{{{SEL}}}[{RI}])))")


ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    ("Overview", [
        stat("Edge requests/s", EDGE_REQUESTS, "reqps",
             "Requests the edges (role=\"edge\") answered, per second."),
        stat("Edge hit ratio",
             f'sum(rate(reelcdn_requests_total{{role="edge", {HITS}}}[{RI}]))'
             f' / sum(rate(reelcdn_requests_total{{role="edge", {CONTENT}}}[{RI}]))',
             "percentunit", "Share of the edges' requests for content answered from their "
             "cache without waiting on upstream: (hit + stale) / every request but CORS "
             "preflights and steering manifests (docs/operations.md).",
             [("red", None), ("orange", 0.7), ("green", 0.9)]),
        stat("Origin offload (requests)", OFFLOAD_REQUESTS, "percentunit",
             "1 − the shields' requests to their origins / the edges' client requests: the "
             "share of client requests the origin never saw.",
             [("red", None), ("orange", 0.9), ("green", 0.98)]),
        stat("Offload (bytes, lower bound)", OFFLOAD_BYTES, "percentunit",
             "1 − bytes the shields sent / bytes the edges sent. The shields' egress bounds "
             "what the origin sent (no node counts bytes received from upstream), so the "
             "byte offload is at least this.",
             [("red", None), ("orange", 0.9), ("green", 0.98)]),
        stat("Upstreams down", f"count(reelcdn_upstream_up{{{SEL}}} == 0) or vector(0)",
             "none", "Parents and origins out of rotation (reelcdn_upstream_up = 0), over the "
             "selected nodes.", [("green", None), ("red", 1)]),
        stat("5xx answers/s", rate("reelcdn_requests_total", FIVE_XX) + " or vector(0)",
             "reqps", "Responses with a 5xx status, every selected node.",
             [("green", None), ("orange", 0.1), ("red", 1)]),
    ]),
    ("Requests and hit ratio", [
        timeseries("Requests/s by node", [target(rate("reelcdn_requests_total", by="node"),
                                                 "{{node}}")], "reqps"),
        timeseries("Requests/s by cache status",
                   [target(rate("reelcdn_requests_total", by="cache_status"),
                           "{{cache_status}}")], "reqps",
                   "Each request's outcome: hit, stale, revalidated, miss, pass, error, "
                   "preflight, steering. A playlist rendered from meta.json is counted under "
                   "its meta.json's outcome (reelcdn_playlists_rendered_total counts "
                   "renderings).", stack=True),
        timeseries("Hit ratio by node", [target(hit_ratio("node"), "{{node}}")],
                   "percentunit", "(hit + stale) / requests for content (all but preflight "
                   "and steering), per node.", maximum=1),
        timeseries("Hit ratio by tier", [target(hit_ratio("role"), "{{role}}")],
                   "percentunit", "(hit + stale) / requests for content (all but preflight "
                   "and steering), per role label.", maximum=1),
        timeseries("Bytes sent/s by node",
                   [target(rate("reelcdn_bytes_sent_total", by="node"), "{{node}}")],
                   "Bps", "Response bytes written to clients (children, for parents)."),
        timeseries("Open connections",
                   [target(f"sum by (node) (reelcdn_open_connections{{{SEL}}})", "{{node}}"),
                    target(rate("reelcdn_connections_total", by="node"), "{{node}} accepted/s",
                           "B")], "short"),
    ]),
    ("Origin offload", [
        timeseries("Origin offload", [
            target(OFFLOAD_REQUESTS, "requests"),
            target(OFFLOAD_BYTES, "bytes (lower bound)", "B")], "percentunit",
            "Requests: 1 − shields' upstream requests / edges' requests. Bytes: 1 − shields' "
            "egress / edges' egress (a lower bound of the byte offload).", maximum=1,
            minimum=None),
        timeseries("Shield requests to origins by origin and code", [
            target(f'sum by (upstream, code) (rate(reelcdn_upstream_requests_total{{role='
                   f'"shield", node=~"$node"}}[{RI}]))', "{{upstream}} {{code}}")],
            "reqps", "What the shields asked their origins (502/504: connect failures, "
            "timeouts)."),
        timeseries("Upstream requests by tier", [
            target(rate("reelcdn_upstream_requests_total", by="role"), "{{role}}")], "reqps",
            "Requests each tier sent to the tier above it (the shields: to the origins)."),
        timeseries("Egress by tier", [
            target(rate("reelcdn_bytes_sent_total", by="role"), "{{role}}")], "Bps"),
    ]),
    ("Latency (time to first byte)", [
        timeseries("TTFB p50 / p90 / p99 by node", [
            target(quantile(0.5), "p50 {{node}}"), target(quantile(0.9), "p90 {{node}}", "B"),
            target(quantile(0.99), "p99 {{node}}", "C")], "s",
            "histogram_quantile over reelcdn_request_duration_seconds: from a complete "
            "request head to the first response byte."),
        timeseries("TTFB p99 by tier", [target(quantile(0.99, "role"), "p99 {{role}}")], "s"),
        heatmap("TTFB distribution",
                f"sum by (le) (increase(reelcdn_request_duration_seconds_bucket{{{SEL}}}[{RI}]))",
                "Requests per TTFB bucket."),
        timeseries("Mean TTFB by node", [target(
            f"{rate('reelcdn_request_duration_seconds_sum', by='node')}\n  /\n"
            f"{rate('reelcdn_request_duration_seconds_count', by='node')}", "{{node}}")], "s"),
    ]),
    ("Coalescing and upstream health", [
        timeseries("Coalesced waiters/s", [
            target(rate("reelcdn_coalesced_waiters_total", by="node"), "{{node}}")], "reqps",
            "Requests that joined a fetch already in flight instead of asking upstream."),
        timeseries("In-flight fetches", [
            target(f"sum by (node) (reelcdn_inflight_fetches{{{SEL}}})", "{{node}}")]),
        state_timeline("Upstream up", f"max by (node, upstream) (reelcdn_upstream_up{{{SEL}}})",
                       "{{node}} → {{upstream}}",
                       "1 while a parent or origin is in rotation, 0 while down or half-open.",
                       w=24),
        timeseries("Upstream state changes", [
            target(f"sum by (node, upstream, to) (increase(reelcdn_upstream_state_changes_total"
                   f"{{{SEL}}}[{RI}]))", "{{node}} → {{upstream}}: {{to}}")], "short",
            "Health state changes by the state entered (up, half_open, down)."),
        timeseries("Upstream failures and resumes", [
            target(rate("reelcdn_upstream_failures_total", by="node"), "{{node}} failures"),
            target(rate("reelcdn_upstream_resumes_total", by="node, outcome"),
                   "{{node}} resume {{outcome}}", "B")], "reqps",
            "Fetches that failed (connect, timeout, broken body); broken bodies resumed, "
            "refused or failed."),
    ]),
    ("Cache", [
        timeseries("Memory cache fill", [
            target(f"sum by (node) (reelcdn_cache_bytes{{{SEL}}})\n  /\n"
                   f"sum by (node) (reelcdn_cache_capacity_bytes{{{SEL}}})", "{{node}}")],
            "percentunit", "Bytes charged to the memory cache / its budget.", maximum=1),
        timeseries("Memory cache bytes and objects", [
            target(f"sum by (node) (reelcdn_cache_bytes{{{SEL}}})", "{{node}} bytes"),
            target(f"sum by (node) (reelcdn_cache_capacity_bytes{{{SEL}}})",
                   "{{node}} capacity", "B")], "bytes"),
        timeseries("Evictions/s", [
            target(rate("reelcdn_cache_evictions_total", by="node"), "{{node}} memory"),
            target(rate("reelcdn_disk_evictions_total", by="node"), "{{node}} disk", "B")],
            "ops"),
        timeseries("Disk tier", [
            target(f"sum by (node) (reelcdn_disk_bytes{{{SEL}}})\n  /\n"
                   f"sum by (node) (reelcdn_disk_capacity_bytes{{{SEL}}} > 0)", "{{node}} fill"),
        ], "percentunit", "Disk tier bytes / cache_disk (nodes with a disk tier).",
            maximum=1),
        timeseries("Disk tier activity", [
            target(rate("reelcdn_disk_hits_total", by="node"), "{{node}} hits"),
            target(rate("reelcdn_disk_writes_total", by="node"), "{{node}} writes", "B"),
            target(rate("reelcdn_disk_dropped_writes_total", by="node"), "{{node}} dropped",
                   "C"),
            target(rate("reelcdn_disk_errors_total", by="node"), "{{node}} errors", "D")],
            "ops"),
        timeseries("Body files (sendfile) descriptors", [
            target(f"sum by (node) (reelcdn_body_file_descriptors{{{SEL}}})", "{{node}} held"),
            target(f"sum by (node) (reelcdn_body_file_descriptors_budget{{{SEL}}})",
                   "{{node}} budget", "B")]),
    ]),
    ("Errors", [
        timeseries("Error answers by code", [
            target(rate("reelcdn_requests_total", 'cache_status="error"', "node, code"),
                   "{{node}} {{code}}")], "reqps",
            "Answers the node made itself because it could not serve (upstream failures, "
            "bad requests, timeouts)."),
        timeseries("5xx answers by node", [
            target(rate("reelcdn_requests_total", FIVE_XX, "node, code"),
                   "{{node}} {{code}}")], "reqps"),
        timeseries("Signed-URL refusals by reason", [
            target(rate("reelcdn_token_refusals_total", by="reason"), "{{reason}}")], "reqps"),
        timeseries("Client timeouts and refused connections", [
            target(rate("reelcdn_client_timeouts_total", by="node"), "{{node}} timeouts"),
            target(rate("reelcdn_connections_rejected_total", by="node"),
                   "{{node}} over the connection cap", "B")], "ops"),
        timeseries("Prefetches refused by reason", [
            target(rate("reelcdn_prefetch_refused_total", by="reason"), "{{reason}}")], "ops"),
        timeseries("Origin API errors by code", [
            target(f"sum by (status, code) (rate(reelcdn_origin_api_errors_total[{RI}]))",
                   "{{status}} {{code}}")], "reqps"),
    ]),
    ("Origin services: uploads and transcoding", [
        timeseries("Jobs by state", [
            target("sum by (state) (reelcdn_origin_jobs)", "{{state}}")], "short",
            "Transcoding jobs: pending, leased, done, dead."),
        timeseries("Queue depth", [
            target("sum(reelcdn_origin_queue_depth)", "pending + leased")], "short"),
        timeseries("Uploads", [
            target(f"sum(rate(reelcdn_origin_uploads_started_total[{RI}]))", "started"),
            target(f"sum(rate(reelcdn_origin_uploads_completed_total[{RI}]))", "completed",
                   "B"),
            target(f"sum by (reason) (rate(reelcdn_origin_uploads_failed_total[{RI}]))",
                   "failed: {{reason}}", "C")], "ops"),
        timeseries("Upload bytes received/s", [
            target(f"sum(rate(reelcdn_origin_upload_bytes_received_total[{RI}]))",
                   "received")], "Bps", "Upload bytes committed (fsynced)."),
        timeseries("Job duration by rendition (p50 / p90)", [
            target("histogram_quantile(0.5, sum by (rendition, le) "
                   "(reelcdn_origin_rendition_publish_seconds_bucket))", "p50 {{rendition}}"),
            target("histogram_quantile(0.9, sum by (rendition, le) "
                   "(reelcdn_origin_rendition_publish_seconds_bucket))", "p90 {{rendition}}",
                   "B")], "s",
            "Seconds from a job's start to each rendition published, over the videos the "
            "catalog holds (the service fills the histogram from the catalog at each scrape, "
            "so it is a level, not a rate)."),
        timeseries("Videos by status", [
            target("sum by (status) (reelcdn_origin_videos)", "{{status}}")]),
    ]),
    ("Origin services: the feed", [
        timeseries("Feed pages by type", [
            target(f"sum by (feed_type) (rate(reelcdn_origin_feed_requests_total[{RI}]))",
                   "{{feed_type}}")], "reqps"),
        timeseries("Plays counted from the edges", [
            target(f"sum(rate(reelcdn_origin_plays_ingested_total[{RI}]))", "starts"),
            target(f"sum(rate(reelcdn_origin_play_completions_ingested_total[{RI}]))",
                   "completions", "B"),
            target(f"sum by (result) (rate(reelcdn_origin_play_batches_total[{RI}]))",
                   "batches {{result}}", "C")], "ops",
            "Play starts and completions from the edges' batches; a duplicate batch is one "
            "an edge sent again and was counted once."),
        timeseries("Trending recompute (p50 / p90)", [
            target("histogram_quantile(0.5, sum by (le) "
                   f"(rate(reelcdn_origin_feed_recompute_seconds_bucket[{RI}])))", "p50"),
            target("histogram_quantile(0.9, sum by (le) "
                   f"(rate(reelcdn_origin_feed_recompute_seconds_bucket[{RI}])))", "p90",
                   "B"),
            target(f"sum(rate(reelcdn_origin_feed_recompute_errors_total[{RI}]))",
                   "failed/s", "C")], "s",
            "Seconds to rank trending and score the for_you pool (every trending_interval)."),
        timeseries("Pre-warmed objects: first request a HIT", [
            target(f"sum(rate(reelcdn_prewarmed_first_hits_total{{{SEL}}}[{RI}]))\n  /\n"
                   f"(sum(rate(reelcdn_prewarmed_first_hits_total{{{SEL}}}[{RI}]))"
                   f" + sum(rate(reelcdn_prewarmed_first_misses_total{{{SEL}}}[{RI}])))",
                   "first-request hit ratio")], "percentunit",
            "Of the objects the feed pre-warmed into the nodes (trending videos' playlists, "
            "init and first segments), the share whose first request was a HIT."),
    ]),
]


def template_variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {"type": "query", "name": name, "label": label, "datasource": DS,
                "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
                "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "sort": 1, "hide": 0, "options": [], "regex": ""}

    return [
        {"type": "datasource", "name": "datasource", "label": "Data source",
         "query": "prometheus", "refresh": 1, "hide": 0, "options": [], "regex": "",
         "current": {}},
        query_var("role", "Role", "label_values(reelcdn_requests_total, role)"),
        query_var("node", "Node", 'label_values(reelcdn_requests_total{role=~"$role"}, node)'),
    ]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for title, row_panels in ROWS:
        panels.append({"type": "row", "title": title, "id": next_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row_panels:
            panel = dict(panel)
            w, h = panel.pop("w"), panel.pop("h")
            if x + w > 24:
                x, y, line_height = 0, y + line_height, 0
            panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            panel["id"] = next_id
            next_id += 1
            x += w
            line_height = max(line_height, h)
            panels.append(panel)
        y += line_height
    return {
        "title": "reelcdn",
        "uid": "reelcdn-overview",
        "description": "reelcdn nodes (edge, regional, shield) and origin services: requests, "
                       "hit ratio, offload, TTFB, upstream health, cache, errors, uploads and "
                       "transcoding (docs/operations.md).",
        "tags": ["reelcdn", "cdn", "video"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 37,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": template_variables()},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
