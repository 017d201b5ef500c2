"""The Grafana dashboard (``dashboards/reelcdn.json``) and the Prometheus rules beside it.

The dashboard must load in Grafana as it is (panels with targets, unique ids, a grid
position each, the datasource / role / node variables) and every metric its queries name must
be one the product exposes: each PromQL expression is parsed (promql-parser), its selectors'
metric names are matched against the families a live topology declares on its admin
``/metrics`` (real node processes and the origin API, after some traffic), a histogram's
``_bucket``/``_sum``/``_count`` and a counter's ``_total`` standing for their family. A family
declared with no series yet (HELP/TYPE only: a counter of refusals that never happened) counts.
The rules are checked by promtool itself (``check rules`` and the unit tests of
``reelcdn-rules.test.yml``), and every dashboard query goes through promtool's parser too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families
from topoproc import ADMIN_TOKEN, Topology, get

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
DASHBOARD = DASHBOARDS / "reelcdn.json"
RULES = DASHBOARDS / "reelcdn-rules.yml"
RULES_TESTS = DASHBOARDS / "reelcdn-rules.test.yml"

# Grafana's variables, as Grafana substitutes them before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h",
                     "$node": ".*", "$role": ".*"}
# Metrics of Prometheus itself, not of the product.
PROMETHEUS_OWN = {"up"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every target."""
    return [(panel["title"], target["expr"]) for panel in panels(board)
            for target in panel.get("targets", [])]


def substitute(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects, from its syntax tree."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        kind = type(node).__name__
        if kind == "VectorSelector":
            name = node.name
            if not name:
                name = next((m.value for m in node.matchers.matchers if m.name == "__name__"),
                            None)
            assert name, f"a selector without a metric name in {expr!r}"
            found.add(name)
            return
        for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
            child = getattr(node, attr, None)
            if child is not None and type(child).__module__.startswith("promql_parser"):
                walk(child)
        for child in getattr(node, "args", None) or ():
            walk(child)

    walk(promql_parser.parse(substitute(expr)))
    return found


def test_metric_names_parser_sees_through_functions_and_operators() -> None:
    expr = ('histogram_quantile(0.9, sum by (le) (rate(a_bucket{node=~"$node"}[$__rate_interval])))'
            ' / on (node) group_left b offset 1d - (c or vector(0)) + max_over_time(d[5m:1m])'
            ' + label_replace(e, "x", "$1", "y", "(.*)") + topk(3, f)')
    assert metric_names(expr) == {"a_bucket", "b", "c", "d", "e", "f"}


# -- structure ---------------------------------------------------------------------------------


def test_the_json_is_the_generators_output() -> None:
    sys.path.insert(0, str(DASHBOARDS))
    try:
        import make_dashboard
    finally:
        sys.path.remove(str(DASHBOARDS))
    assert DASHBOARD.read_text() == make_dashboard.render(), (
        "dashboards/reelcdn.json is stale: run python dashboards/make_dashboard.py")


def test_every_hit_ratio_uses_the_one_definition() -> None:
    """Dashboard panels and rules divide hit + stale by the requests for content exactly as
    edge/ops/ratios.py does (and the alert's description says so)."""
    from reelcdn.edge.ops.ratios import PROMQL_CONTENT, PROMQL_HITS

    ratios = [expr for title, expr in queries(dashboard()) if "hit ratio" in title.lower()]
    assert len(ratios) >= 3
    for expr in ratios:
        numerator, _, denominator = expr.partition("/")
        assert PROMQL_HITS in numerator and PROMQL_CONTENT in denominator, expr
    import yaml

    rules = {r.get("record"): r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"]
             for r in g["rules"]}
    assert PROMQL_HITS in rules["node_role:reelcdn_hits:rate5m"]
    assert PROMQL_CONTENT in rules["node_role:reelcdn_content_requests:rate5m"]
    ratio = rules["node_role:reelcdn_hit_ratio:rate5m"]
    assert "node_role:reelcdn_content_requests:rate5m" in ratio


def test_dashboard_has_what_grafana_needs() -> None:
    board = dashboard()
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] >= 36  # Grafana 9
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("role", "node"):
        assert variables[name]["type"] == "query"
        assert "label_values(" in variables[name]["definition"]
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    kinds = set()
    for panel in panels(board):
        kinds.add(panel["type"])
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        mine = {(grid["x"] + dx, grid["y"] + dy)
                for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not mine & cells, f"{panel['title']!r} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']!r} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]
    assert {"row", "timeseries", "stat", "heatmap", "state-timeline"} <= kinds
    titles = {p["title"] for p in panels(board) if p["type"] == "row"}
    assert len(titles) >= 7


def test_the_panels_cover_what_an_operator_watches() -> None:
    """The brief of the dashboard, one metric per subject at least."""
    names = set().union(*(metric_names(expr) for _, expr in queries(dashboard())))
    for wanted in (
        "reelcdn_requests_total", "reelcdn_upstream_requests_total", "reelcdn_bytes_sent_total",
        "reelcdn_request_duration_seconds_bucket", "reelcdn_coalesced_waiters_total",
        "reelcdn_upstream_up", "reelcdn_upstream_state_changes_total", "reelcdn_cache_bytes",
        "reelcdn_cache_capacity_bytes", "reelcdn_cache_evictions_total",
        "reelcdn_token_refusals_total", "reelcdn_origin_jobs", "reelcdn_origin_queue_depth",
        "reelcdn_origin_uploads_started_total", "reelcdn_origin_uploads_completed_total",
        "reelcdn_origin_uploads_failed_total", "reelcdn_origin_upload_bytes_received_total",
        "reelcdn_origin_rendition_publish_seconds_bucket",
    ):
        assert wanted in names, wanted
    exprs = [expr for _, expr in queries(dashboard())]
    assert any(e.startswith("histogram_quantile(0.99") for e in exprs)


def test_every_query_parses() -> None:
    for title, expr in queries(dashboard()):
        try:
            metric_names(expr)
        except Exception as exc:  # promql-parser raises its own error types
            pytest.fail(f"{title!r}: {expr!r} does not parse: {exc}")


# -- against live metrics ----------------------------------------------------------------------


def exposed_names(text: str) -> set[str]:
    """The sample names a ``/metrics`` page declares (HELP/TYPE lines count, series or not):
    a counter family ``x`` stands for ``x_total``, a histogram's for ``x_bucket``, ``x_sum``
    and ``x_count``."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def live_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Metric names of a running shield, two edges and the origin API, after traffic."""
    topology = Topology(tmp_path_factory.mktemp("dashboard"))
    try:
        topology.start()
        topology.traffic()
        names: set[str] = set()
        for name in topology.topology.nodes:
            status, body = get(topology.admin(name) + "/metrics", ADMIN_TOKEN)
            assert status == 200, (name, status)
            names |= exposed_names(body.decode())
        status, body = get(topology.admin("origin-api") + "/metrics")
        assert status == 200
        names |= exposed_names(body.decode())
        return names
    finally:
        topology.stop()


@pytest.mark.slow
def test_every_dashboard_metric_is_exposed(live_names: set[str]) -> None:
    # The live sample is sane: labelled series after traffic, and a family with none.
    assert {"reelcdn_requests_total", "reelcdn_upstream_up", "reelcdn_token_refusals_total",
            "reelcdn_origin_rendition_publish_seconds_bucket"} <= live_names
    missing: dict[str, list[str]] = {}
    board = dashboard()
    for title, expr in queries(board):
        for name in metric_names(expr) - live_names - PROMETHEUS_OWN:
            missing.setdefault(name, []).append(title)
    for variable in board["templating"]["list"]:
        for name in re.findall(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)",
                               variable.get("definition", "")):
            if name not in live_names:
                missing.setdefault(name, []).append(f"variable {variable['name']}")
    assert not missing, f"metrics no node or origin service exposes: {missing}"


@pytest.mark.slow
def test_every_rule_metric_is_exposed(live_names: set[str]) -> None:
    import yaml

    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    missing = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            missing |= metric_names(rule["expr"]) - live_names - recorded - PROMETHEUS_OWN
    assert not missing


# -- promtool ----------------------------------------------------------------------------------


def promtool() -> str:
    """promtool (Debian's prometheus package, which scripts/test.sh installs); skipped where
    absent, except in CI, where it must run."""
    found = shutil.which("promtool")
    if found:
        return found
    reason = "promtool is not installed (apt-get install prometheus; scripts/test.sh does)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = run_promtool("check", "rules", RULES.name, cwd=DASHBOARDS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", RULES_TESTS.name, cwd=DASHBOARDS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_dashboard_query_passes_promtool(tmp_path: Path) -> None:
    """Each query, its Grafana variables substituted, as a recording rule promtool checks."""
    import yaml

    rules = [{"record": f"dashboard:query_{i}", "expr": substitute(expr)}
             for i, (_, expr) in enumerate(queries(dashboard()))]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run_promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout


def test_promtool_is_not_lenient(tmp_path: Path) -> None:
    """The check above would catch a broken query."""
    (tmp_path / "bad.yml").write_text(
        "groups:\n- name: x\n  rules:\n  - record: x:y\n    expr: sum(rate(a[5m])\n")
    assert run_promtool("check", "rules", "bad.yml", cwd=tmp_path).returncode != 0
