"""The soak's report: ``soak.json`` (everything measured) and ``report.html``, self-contained
(inline SVG, no scripts): the verdict and checks first, then a timeline of the faults against
TTFF, start failures and failed requests, stalls, the origin's request rate and every node's
RSS and open descriptors, then the faults as applied.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .run import SoakResult

WIDTH, LEFT, RIGHT, PANEL, GAP = 1000, 70, 20, 120, 28
COLOURS = ("#0969da", "#1a7f37", "#bf3989", "#9a6700", "#8250df", "#cf222e", "#57606a")
FAULT_COLOURS = {"kill": "#cf222e", "origin": "#d4a72c", "abort_clients": "#8250df",
                 "purge": "#57606a"}


def _x(t: float, duration: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * max(0.0, min(t, duration)) / max(duration, 1e-9)


def _fault_bands(result: SoakResult, top: float, height: float, duration: float) -> list[str]:
    parts = []
    for event in result.events:
        if event.get("skipped"):
            continue
        colour = FAULT_COLOURS.get(event["action"], "#999")
        x0 = _x(event["at"], duration)
        end = event.get("healthy_at") or event["ends"]
        x1 = max(x0 + 2, _x(end, duration))
        parts.append(f"<rect x='{x0:.1f}' y='{top:.1f}' width='{x1 - x0:.1f}' "
                     f"height='{height:.1f}' fill='{colour}' opacity='0.10'/>")
    return parts


def _panel(result: SoakResult, index: int, title: str, unit: str,
           series: list[tuple[str, str, list[tuple[float, float | None]], str]],
           duration: float, limit: float | None = None) -> list[str]:
    top = 40 + index * (PANEL + GAP)
    values = [v for _, _, points, _ in series for _, v in points if v is not None]
    y_max = max([*values, limit or 0.0, 1e-9]) * 1.1
    if not values and limit is None:
        y_max = 1.0

    def y(value: float) -> float:
        return top + PANEL - PANEL * value / y_max

    parts = _fault_bands(result, top, PANEL, duration)
    parts.append(f"<rect x='{LEFT}' y='{top}' width='{WIDTH - LEFT - RIGHT}' height='{PANEL}' "
                 "fill='none' stroke='#d0d7de'/>")
    parts.append(f"<text x='{LEFT}' y='{top - 6}' font-size='13' font-weight='bold'>"
                 f"{html.escape(title)}</text>")
    for fraction in (0.0, 0.5, 1.0):
        value = y_max / 1.1 * fraction
        parts.append(f"<text x='{LEFT - 6}' y='{y(value) + 4:.1f}' font-size='10' "
                     f"text-anchor='end'>{value:.3g}{unit}</text>")
    if limit is not None:
        parts.append(f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{y(limit):.1f}' "
                     f"y2='{y(limit):.1f}' stroke='#cf222e' stroke-dasharray='4 3'/>")
    legend_x = WIDTH - RIGHT
    for number, (label, colour, points, kind) in enumerate(series):
        drawn = [(t, v) for t, v in points if v is not None]
        if kind == "bar":
            step = (WIDTH - LEFT - RIGHT) / max(len(points), 1)
            for t, v in drawn:
                if v:
                    parts.append(f"<rect x='{_x(t, duration):.1f}' y='{y(v):.1f}' "
                                 f"width='{max(step * 0.8, 1):.1f}' "
                                 f"height='{top + PANEL - y(v):.1f}' fill='{colour}'/>")
        elif kind == "dot":
            for t, v in drawn:
                parts.append(f"<circle cx='{_x(t, duration):.1f}' cy='{y(v):.1f}' r='2' "
                             f"fill='{colour}'/>")
        elif drawn:
            path = " ".join(f"{'M' if i == 0 else 'L'}{_x(t, duration):.1f},{y(v):.1f}"
                            for i, (t, v) in enumerate(drawn))
            parts.append(f"<path d='{path}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        legend_x -= 8 + 7 * len(label) + 14
        parts.append(f"<rect x='{legend_x:.0f}' y='{top - 16}' width='10' height='10' "
                     f"fill='{colour}'/><text x='{legend_x + 14:.0f}' y='{top - 7}' "
                     f"font-size='11'>{html.escape(label)}</text>")
        del number
    return parts


def timeline_svg(result: SoakResult) -> str:
    duration = float(result.run["duration"])
    buckets = result.timeline
    segment = float(result.run.get("segment_seconds") or 0) or None

    def col(key: str, scale: float = 1.0) -> list[tuple[float, float | None]]:
        return [(b["t"], None if b[key] is None else b[key] * scale) for b in buckets]

    node_names = sorted({n for s in result.samples for n in s["nodes"]})
    rss = [(name, COLOURS[i % len(COLOURS)],
            [(s["t"], s["nodes"][name]["rss"] / 2**20 if s["nodes"].get(name) else None)
             for s in result.samples], "line") for i, name in enumerate(node_names)]
    fds = [(name, COLOURS[i % len(COLOURS)],
            [(s["t"], float(s["nodes"][name]["fds"]) if s["nodes"].get(name) else None)
             for s in result.samples], "line") for i, name in enumerate(node_names)]
    panels = [
        ("TTFF of the starts begun in each interval", " ms",
         [("p50", COLOURS[0], col("ttff_p50_ms"), "line"),
          ("max", COLOURS[5], col("ttff_max_ms"), "dot")], None),
        ("errors per interval", "",
         [("failed requests", COLOURS[3], col("failed_requests"), "bar"),
          ("start failures", COLOURS[5], col("start_failures"), "dot"),
          ("playback failures", COLOURS[4], col("playback_failures"), "dot")], None),
        ("longest stall ending in each interval (dashed: one segment)", " s",
         [("stall", COLOURS[2], col("stall_max"), "bar")], segment),
        ("origin requests per second", "/s",
         [("origin", COLOURS[1], col("origin_rps"), "line")], None),
        ("RSS per node", " MiB", rss, None),
        ("open file descriptors per node", "", fds, None),
    ]
    parts: list[str] = []
    lanes_top = 40 + len(panels) * (PANEL + GAP)
    for index, (title, unit, series, limit) in enumerate(panels):
        parts += _panel(result, index, title, unit, series, duration, limit)
    # the faults, one lane each, under the panels, and the time axis
    parts.append(f"<text x='{LEFT}' y='{lanes_top - 6}' font-size='13' "
                 "font-weight='bold'>faults</text>")
    lane = 0
    for event in result.events:
        if event.get("skipped"):
            continue
        colour = FAULT_COLOURS.get(event["action"], "#999")
        x0 = _x(event["at"], duration)
        x1 = max(x0 + 3, _x(event.get("healthy_at") or event["ends"], duration))
        y0 = lanes_top + lane * 16
        parts.append(f"<rect x='{x0:.1f}' y='{y0}' width='{x1 - x0:.1f}' height='12' "
                     f"fill='{colour}' opacity='0.8'/><text x='{x1 + 4:.1f}' y='{y0 + 10}' "
                     f"font-size='10'>{event['index']}: {html.escape(event['what'])}</text>")
        lane += 1
    axis = lanes_top + lane * 16 + 14
    for tick in range(0, int(duration) + 1, max(1, int(duration / 10) // 5 * 5 or 1)):
        parts.append(f"<text x='{_x(tick, duration):.1f}' y='{axis}' font-size='10' "
                     f"text-anchor='middle'>{tick}s</text>")
    height = axis + 10
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' "
            f"viewBox='0 0 {WIDTH} {height}' font-family='sans-serif'>" + "".join(parts)
            + "</svg>")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(result: SoakResult) -> str:
    run = result.run
    verdict = "PASS" if result.passed else "FAIL"
    colour = "#1a7f37" if result.passed else "#cf222e"
    check_rows = [[html.escape(c["check"]),
                   ("ok" if c["ok"] else "<b>FAILED</b>") if c.get("judged", True)
                   else "reported", html.escape(c["measured"]), html.escape(c["target"])]
                  for c in result.checks]
    event_rows = [[f"{e['index']}", f"{e['planned_at']:g} s", f"{e['at']:.1f} s",
                   html.escape(e["what"]), "ok" if e["ok"] else "<b>failed</b>",
                   html.escape(e["detail"])] for e in result.events]
    s = result.summary
    key = []
    if s:
        ttff = s["ttff_ms"]
        key = [["sessions", str(s["sessions"])], ["outcomes", html.escape(json.dumps(
            s["outcomes"]))], ["TTFF p50 / p95 / max", " / ".join(
                "-" if ttff[q] is None else f"{ttff[q]:.0f} ms" for q in ("p50", "p95", "max"))],
            ["rebuffer events / ratio", f"{s['rebuffer']['events']} / "
             f"{s['rebuffer']['ratio'] * 100:.3f} %"],
            ["player requests (no answer)", f"{s['client']['requests']} "
             f"({s['client']['failures']})"],
            ["verified bodies / bytes", f"{s['verify']['bodies']} / {s['verify']['bytes']}"],
            ["statuses", html.escape(json.dumps(s["client"]["statuses"]))]]
    resource_rows = [[html.escape(name), str(info.get("incarnations")),
                      f"{info.get('rss_base', 0) / 2**20:.1f}",
                      f"{info.get('rss_end', 0) / 2**20:.1f}",
                      f"{info.get('rss_max', 0) / 2**20:.1f}", f"{info.get('fds_base', '-')}",
                      f"{info.get('fds_end', '-')}", f"{info.get('fds_max', '-')}",
                      "yes" if info.get("judged") else html.escape(info.get("why", ""))]
                     for name, info in result.resources.items()]
    examples = (s.get("verify") or {}).get("examples") or []
    parts = [
        "<!doctype html><meta charset='utf-8'><title>reelcdn soak</title>",
        "<style>body{font-family:sans-serif;margin:20px;max-width:1060px}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d0d7de;"
        "padding:3px 8px;font-size:13px;text-align:left}</style>",
        f"<h1>reelcdn soak: <span style='color:{colour}'>{verdict}</span></h1>",
        f"<p>{html.escape(run['started'])}, {run['duration']:g} s, {run['players']} players, "
        f"plan {html.escape(str(run['plan']))}, videos {html.escape(', '.join(run['videos']))}"
        f" ({html.escape(run['video_source'])}), {run['cores']} cores</p>",
        "<h2>Checks</h2>", _table(["check", "verdict", "measured", "target"], check_rows),
        "<h2>Timeline</h2><p>Shaded: while a fault was active (a kill: until the node was "
        "healthy again).</p>", timeline_svg(result),
        "<h2>Faults as applied</h2>",
        _table(["#", "planned", "applied", "what", "", "detail"], event_rows),
        "<h2>Players</h2>", _table(["", ""], key),
        "<h2>Nodes (last incarnation; RSS in MiB)</h2>",
        _table(["node", "starts", "RSS base", "RSS end", "RSS max", "fds base", "fds end",
                "fds max", "judged"], resource_rows),
    ]
    if examples:
        parts += ["<h2>Corrupted bodies (first ones)</h2>",
                  _table(["path", "at", "problem", "Cache-Status"],
                         [[html.escape(str(e.get(k))) for k in ("path", "at", "problem",
                                                                  "cache_status")]
                          for e in examples])]
    return "\n".join(parts)


def write_report(result: SoakResult, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "soak.json", "html": directory / "report.html"}
    paths["json"].write_text(json.dumps(result.to_json(), indent=1, default=str))
    paths["html"].write_text(render_html(result))
    return paths
