"""The HTML report: key numbers first (is the CDN healthy?), then the plots, as one
self-contained file (PNG plots inline as base64) that can be mailed or attached to a ticket.

matplotlib runs on the Agg backend: no display, no GUI toolkit, same output everywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelcdn.edge.ops import ratios

if TYPE_CHECKING:
    from .runner import RunOutcome

PLOT_NAMES = ("ttff_cdf", "ttff_over_time", "phases", "hit_ratio_over_time", "bitrate",
              "rebuffering")


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def make_plots(outcome: RunOutcome) -> dict[str, str]:
    """Plot name → base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    players = outcome.players
    started = [p for p in players if p.ttff is not None]
    ttffs_ms = sorted(p.ttff * 1000 for p in started if p.ttff is not None)
    plots: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if ttffs_ms:
        n = len(ttffs_ms)
        ax.step(ttffs_ms, [(i + 1) / n for i in range(n)], where="post")
        ax.set_xscale("log")
    ax.set_xlabel("TTFF (ms, log scale)")
    ax.set_ylabel("fraction of starts")
    ax.set_title(f"TTFF CDF ({len(ttffs_ms)} starts)")
    ax.grid(True, which="both", alpha=0.3)
    plots["ttff_cdf"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.scatter([p.started_at for p in started], [p.ttff * 1000 for p in started if p.ttff],
               s=6, alpha=0.6, label="started")
    for outcome_name, marker, color in (("vsf", "x", "red"), ("ebvs", "v", "orange")):
        failed = [p for p in players if p.outcome == outcome_name]
        if failed:
            top = max(ttffs_ms, default=1.0)
            ax.scatter([p.started_at for p in failed], [top] * len(failed), marker=marker,
                       color=color, label=outcome_name.upper())
    ax.set_xlabel("session start (s since the run began)")
    ax.set_ylabel("TTFF (ms)")
    ax.set_title("TTFF over time")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, alpha=0.3)
    plots["ttff_over_time"] = _png(fig)

    phases = outcome.summary["phases_ms"]
    labels = ["feed", "master", "media playlist", "init", "first seg. TTFB",
              "first seg. body"]

    def phase_values(q: str) -> list[float]:
        ttfb = phases["first_segment_ttfb"].get(q) or 0.0
        whole = phases["first_segment"].get(q) or 0.0
        feed = (phases.get("feed") or {}).get(q) or 0.0
        return [feed, phases["master"].get(q) or 0.0, phases["media_playlist"].get(q) or 0.0,
                phases["init"].get(q) or 0.0, ttfb, max(whole - ttfb, 0.0)]

    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    for row, q in enumerate(("p50", "p95")):
        left = 0.0
        for index, value in enumerate(phase_values(q)):
            ax.barh(row, value, left=left, color=f"C{index}", label=labels[index] if row == 0
                    else None)
            left += value
    ax.set_yticks([0, 1], ["p50", "p95"])
    ax.set_xlabel("ms (each phase's own percentile, stacked)")
    ax.set_title("start-up phases")
    ax.legend(fontsize=7, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    plots["phases"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    timeline = outcome.tally.timeline
    tiers = outcome.summary["client"]["tiers"]
    for name, info in tiers.items():
        depth = info["depth"]
        seconds = sorted(s for s in timeline if depth in timeline[s])
        ratios = [timeline[s][depth][1] / timeline[s][depth][0] for s in seconds
                  if timeline[s][depth][0]]
        ax.plot(seconds[:len(ratios)], ratios, marker=".", label=f"{name} (Cache-Status)")
    _server_hit_lines(ax, outcome)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("s since the run began")
    ax.set_ylabel("hit ratio")
    ax.set_title("hit ratio per tier over time")
    if ax.get_legend_handles_labels()[0]:  # nothing plotted when no answer came back
        ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    plots["hit_ratio_over_time"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    bitrates = [p.average_bitrate / 1000 for p in started if p.average_bitrate]
    if bitrates:
        ax.hist(bitrates, bins=30)
    ax.set_xlabel("average bitrate per session (kbit/s)")
    ax.set_ylabel("sessions")
    ax.set_title("bitrate")
    plots["bitrate"] = _png(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(7.6, 3.2))
    stalls = [s * 1000 for p in players for s in p.rebuffers]
    if stalls:
        left.hist(stalls, bins=30, color="C3")
    left.set_xlabel("stall duration (ms)")
    left.set_ylabel("events")
    left.set_title(f"rebuffer events ({len(stalls)})")
    counts = [len(p.rebuffers) for p in started]
    if counts:
        right.hist(counts, bins=range(0, max(counts) + 2), color="C1", align="left")
    right.set_xlabel("rebuffers per session")
    right.set_ylabel("sessions")
    plots["rebuffering"] = _png(fig)
    return plots


def _server_hit_lines(ax: Any, outcome: RunOutcome) -> None:
    """Hit ratio per role between consecutive scrapes, from the nodes' own counters."""
    scrapes = outcome.scrapes
    if len(scrapes) < 2:
        return
    roles = sorted({n.role or "node" for s in scrapes for n in s.nodes.values()})
    for role in roles:
        xs, ys = [], []
        for before, after in zip(scrapes, scrapes[1:], strict=False):
            outcomes: dict[str, int] = {}
            for name, node in after.nodes.items():
                if (node.role or "node") != role or name not in before.nodes:
                    continue
                ratios.add_counts(outcomes, node.minus(before.nodes[name]).by_cache_status)
            ratio = ratios.hit_ratio(outcomes)
            if ratio is not None:
                xs.append(after.at)
                ys.append(ratio)
        if xs:
            ax.plot(xs, ys, linestyle="--", label=f"{role} (/metrics)")


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{value * 100:.2f}%"
    if kind == "ms":
        return f"{value:.1f} ms"
    if kind == "kbps":
        return f"{value / 1000:.0f} kbit/s"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(outcome: RunOutcome, plots: dict[str, str]) -> str:
    s = outcome.summary
    run = s["run"]
    healthy = outcome.slo_met and not (s.get("vsf") or 0) and not outcome.warnings
    verdict = ("healthy" if healthy else "SLO violated" if not outcome.slo_met
               else "needs a look")
    colour = {"healthy": "#1a7f37", "SLO violated": "#cf222e"}.get(verdict, "#9a6700")
    ttff = s["ttff_ms"]
    key = [
        ["sessions (attempts)", f"{s['sessions']} ({s['attempts']})"],
        ["TTFF p50 / p95 / p99", " / ".join(_fmt(ttff[k], "ms") for k in ("p50", "p95", "p99"))],
        ["VSF / EBVS / VPF", " / ".join(_fmt(s[k], "pct") for k in ("vsf", "ebvs", "vpf"))],
        ["rebuffer ratio (events)",
         f"{_fmt(s['rebuffer']['ratio'], 'pct')} ({s['rebuffer']['events']})"],
        ["average bitrate (mean)", _fmt(s["average_bitrate_bps"]["mean"], "kbps")],
        ["switches", str(s["switches"])],
        ["origin fetch ratio (offload)",
         f"{_fmt(s['origin_fetch_ratio'], 'pct')} ({_fmt(s['offload'], 'pct')})"],
        ["player requests / failures",
         f"{s['client']['requests']} / {s['client']['failures']}"],
    ]
    slo_rows = [[html.escape(v["slo"]), _fmt(v["measured"]), "met" if v["met"] else
                 "<b>VIOLATED</b>"] for v in s["slo"]]
    tiers = [[html.escape(name), str(t["requests"]), str(t["hits"]),
              _fmt(t["hit_ratio"], "pct"), str(t["collapsed"]), str(t["bytes_served"])]
             for name, t in s["client"]["tiers"].items()]
    server_rows = []
    if s.get("server"):
        for name, node in s["server"]["nodes"].items():
            server_rows.append([html.escape(name), html.escape(str(node["role"])),
                                str(node["requests"]), str(node["hits"]),
                                _fmt(node["hit_ratio"], "pct"), str(node["coalesced_waiters"]),
                                str(node["bytes_sent"]),
                                html.escape(", ".join(f"{k}: {v}" for k, v in
                                                      node["upstream"].items()))])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(run['label'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "img{max-width:100%;margin:.5em 0}.warn{color:#9a6700}</style></head><body>",
        f"<h1>{html.escape(run['label'])}: <span style='color:{colour}'>{verdict}</span></h1>",
        f"<p>{html.escape(run['scenario'])}, cache {html.escape(run['cache'])}, "
        f"{run['players']} players{' at ' + str(run['rate']) + '/s' if run['rate'] else ''}, "
        f"{run['duration']:g} s, Zipf {run['zipf']:g} over {run['videos']} videos, "
        f"bandwidth {html.escape(run['bandwidth'])}, RTT {html.escape(run['rtt'])}, "
        f"time scale {run['time_scale']:g}, targets "
        f"{html.escape(', '.join(run['targets']) or '(catalog URLs)')}</p>",
        _table(key, ["what", "value"]),
    ]
    if slo_rows:
        parts += ["<h2>SLOs</h2>", _table(slo_rows, ["objective", "measured", "verdict"])]
    if outcome.warnings:
        parts += ["<h2>Warnings</h2><ul>"] + [f"<li class='warn'>{html.escape(w)}</li>"
                                              for w in outcome.warnings] + ["</ul>"]
    parts += ["<h2>Tiers (from Cache-Status)</h2>",
              _table(tiers, ["tier", "requests", "hits", "hit ratio", "collapsed",
                             "bytes served"])]
    reconciled = s.get("hit_ratio")
    if reconciled and reconciled["tiers"]:
        rows = [[html.escape(name), _fmt(t["cache_status"], "pct"), _fmt(t["metrics"], "pct"),
                 f"{t['requests_cache_status']} / {t.get('requests_metrics', '–')}",
                 "–" if t["agree"] is None else "yes" if t["agree"] else "<b>no</b>",
                 "<br>".join(html.escape(x) for x in t["explanation"])]
                for name, t in reconciled["tiers"].items()]
        parts += ["<h2>Hit ratio: Cache-Status and /metrics</h2>",
                  f"<p>{html.escape(reconciled['definition'])}; the two agree within "
                  f"{reconciled['tolerance'] * 100:g} points.</p>",
                  _table(rows, ["tier", "by Cache-Status", "by /metrics",
                                "requests (Cache-Status / /metrics)", "agree", "why"])]
    if server_rows:
        parts += ["<h2>Nodes (from /metrics, during the run)</h2>",
                  _table(server_rows, ["node", "role", "requests", "hits", "hit ratio",
                                       "coalesced", "bytes sent", "upstream requests"]),
                  f"<p>origin requests: {s['server']['origin_requests']}</p>"]
    parts.append("<h2>Plots</h2>")
    for name in PLOT_NAMES:
        if name in plots:
            parts.append(f"<img alt='{name}' src='data:image/png;base64,{plots[name]}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(outcome: RunOutcome, path: Path) -> None:
    path.write_text(render_html(outcome, make_plots(outcome)), encoding="utf-8")


def write_outputs(outcome: RunOutcome, report_dir: Path) -> dict[str, Path]:
    """summary.json, players.jsonl and report.html in ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": report_dir / "summary.json", "players": report_dir / "players.jsonl",
             "html": report_dir / "report.html"}
    paths["summary"].write_text(json.dumps(outcome.summary, indent=2, default=str) + "\n")
    with paths["players"].open("w") as out:
        for result in outcome.players:
            out.write(json.dumps(result.to_json(), default=str) + "\n")
    write_html(outcome, paths["html"])
    return paths
