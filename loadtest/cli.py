"""``reelcdn loadtest``: options, validation with messages that name the option, and the
text summary. ``reelcdn/cli.py`` only registers the sub-command and calls :func:`main_args`.

Exit status: 0 all SLOs met (or none given); 1 an SLO was violated; 2 bad options or inputs;
3 the run itself could not be carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from .network import parse_distribution, parse_rate, parse_seconds
from .options import (  # noqa: F401  (re-exported: the exit codes are the command's API)
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SLO,
    EXIT_USAGE,
    UsageError,
    build_options,
)
from .summary import parse_slos
from .workload import SCENARIOS


def _type(parse: Any, what: str) -> Any:
    """An argparse type whose errors read "argument --x: <why>"."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"{text!r} is not {what}") from None
    convert.__name__ = what
    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text} must be a positive whole number")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{text} must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{text} must be a number >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = parse_seconds(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be above zero")
    return value


def _processes(text: str) -> int:
    if text == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return _positive_int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where")
    where.add_argument("--target", action="append", default=[], metavar="URL",
                       help="base URL of the CDN players connect to (repeat for several "
                       "edges: players are spread over them); default: the topology's edges")
    where.add_argument("--topology", metavar="FILE",
                       help="a reelcdn topology file: edges as targets, every node's admin "
                       "/metrics (with its token) scraped, tiers named by role")
    where.add_argument("--catalog", metavar="FILE",
                       help="video ids, /paths or master URLs, one a line (reelcdn up writes "
                       "DATA_DIR/catalog.txt); not needed with --feed")
    where.add_argument("--feed", metavar="URL",
                       help="the origin API's base URL (e.g. http://127.0.0.1:8300): each "
                       "session first GETs a feed page (phase 'feed', in the TTFF), then "
                       "plays its first item's playback path through the targets")
    where.add_argument("--feed-token", metavar="TOKEN",
                       help="--feed: the user token (reelcdn user-token NAME --config FILE)")
    where.add_argument("--feed-token-file", metavar="FILE",
                       help="--feed: a file holding the user token (reelcdn up writes "
                       "DATA_DIR/user-token)")
    where.add_argument("--feed-type", choices=("for_you", "following", "trending"),
                       default="for_you", help="--feed: which feed; for_you")
    where.add_argument("--admin", action="append", default=[], metavar="URL",
                       help="admin base URL of a node to scrape /metrics from (repeatable)")
    where.add_argument("--admin-token", default=os.environ.get("REELCDN_ADMIN_TOKEN"),
                       help="bearer token for --admin URLs (default: $REELCDN_ADMIN_TOKEN)")

    load = parser.add_argument_group("load")
    load.add_argument("--players", type=_type(_positive_int, "a positive whole number"),
                      default=50, help="concurrent players (with --rate: the cap); 50")
    load.add_argument("--rate", type=_type(_positive_float, "a positive number"),
                      help="Poisson arrivals per second instead of fixed concurrency")
    load.add_argument("--duration", type=_type(_positive_seconds, "a duration"), default=30.0,
                      help="how long players arrive and play (e.g. 30s, 2m is 120s); 30s")
    load.add_argument("--ramp", type=_type(parse_seconds, "a duration"),
                      help="fixed concurrency: spread the first starts over this long "
                      "(default: a quarter of the duration, at most 5 s)")
    load.add_argument("--zipf", type=_type(_non_negative_float, "a number >= 0"), default=0.9,
                      help="popularity exponent over the catalog order (0: uniform); 0.9")
    load.add_argument("--scenario", choices=SCENARIOS, default="steady",
                      help="steady, or flash-crowd: every player starts the same video "
                      "within --flash-window")
    load.add_argument("--flash-window", type=_type(_positive_seconds, "a duration"),
                      default=1.0, help="flash-crowd: starts spread over this long; 1s")
    load.add_argument("--flash-video", metavar="ID",
                      help="flash-crowd: the video (default: the catalog's last, least "
                      "popular one: the coldest)")
    load.add_argument("--cache", choices=("as-is", "warm", "cold"), default="as-is",
                      help="warm: fetch the whole catalog through every target first; cold: "
                      "purge it from every node with an admin endpoint first")
    load.add_argument("--seed", type=int, default=1, help="random seed (same seed, same run)")
    load.add_argument("--max-sessions", type=_type(_positive_int, "a positive whole number"),
                      default=1_000_000, help="stop starting sessions after this many")
    load.add_argument("--processes", type=_type(_processes, "a count or auto"), default=1,
                      help="load processes (one event loop each); 'auto': one per core")

    net = parser.add_argument_group("per-player network")
    net.add_argument("--bandwidth", default="inf",
                     type=_type(lambda t: parse_distribution(t, "rate"), "a rate distribution"),
                     help="link cap per player: 5Mbit, uniform:1Mbit-10Mbit, "
                     "lognormal:5Mbit,0.5, choice:1Mbit|20Mbit, inf; inf")
    net.add_argument("--rtt", default="0ms",
                     type=_type(lambda t: parse_distribution(t, "time"), "a time distribution"),
                     help="added round-trip time before each request (same forms); 0ms")

    player = parser.add_argument_group("player")
    player.add_argument("--start-estimate", type=_type(parse_rate, "a bit rate"),
                        default=500_000.0, help="bandwidth estimate before any measurement "
                        "(hls.js: 500kbit); 500kbit")
    player.add_argument("--patience", type=_type(_positive_seconds, "a duration"),
                        default=10.0, help="a start slower than this is an exit before video "
                        "start (EBVS); 10s")
    player.add_argument("--decode-allowance", type=_type(parse_seconds, "a duration"),
                        default=0.0, help="added to TTFF for decoding the first frame; 0ms")
    player.add_argument("--time-scale", type=_type(_positive_float, "a positive number"),
                        default=1.0, help="media seconds played per wall second (4: a 2 s "
                        "segment plays in 0.5 s); 1")
    player.add_argument("--watch", type=_type(_positive_seconds, "a duration"),
                        help="media seconds each viewer watches (default: the whole video)")
    player.add_argument("--max-buffer", type=_type(_positive_seconds, "a duration"),
                        default=30.0, help="media seconds buffered ahead at most; 30s")
    player.add_argument("--request-timeout", type=_type(_positive_seconds, "a duration"),
                        default=10.0, help="per request; 10s")
    player.add_argument("--retries", type=int, default=1,
                        help="retries of a request after a 5xx or a connection error; 1")
    player.add_argument("--no-cmcd", action="store_true", help="send no CMCD query argument")

    out = parser.add_argument_group("output")
    out.add_argument("--slo", type=_type(parse_slos, "SLOs"),
                     help="objectives, e.g. ttff_p95=200ms,vsf=0.5%%,rebuffer_ratio=1%%; a "
                     "violated one makes the exit status 1")
    out.add_argument("--verify", metavar="SOURCE",
                     help="check every init and media segment body against the size and "
                     "sha256 of its meta.json: SOURCE is the origin directory (its "
                     "v/ID/meta.json files) or 'cdn' (meta.json fetched through the first "
                     "target); a corrupted body makes the exit status 1")
    out.add_argument("--report", metavar="DIR", help="write summary.json, players.jsonl and "
                     "report.html (with plots) here")
    out.add_argument("--scrape-interval", type=_type(_positive_seconds, "a duration"),
                     default=2.0, help="seconds between /metrics scrapes during the run; 2s")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="live progress on stderr (default: when stderr is a terminal)")
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    out.add_argument("--label", default="reelcdn loadtest", help="title of the report")
    parser.add_argument("--compare-nginx", metavar="ORIGIN_DIR",
                        help="side by side: start an origin serving ORIGIN_DIR, reelcdn and "
                        "nginx as equivalent 3-tier topologies in front of it, run the same "
                        "workload against each, report both and their ratios (--report DIR)")
    parser.add_argument("--nginx", metavar="PATH", help="nginx binary for --compare-nginx")


def _verify_line(verify: dict[str, Any] | None) -> list[str]:
    if not verify or not verify["bodies"]:
        return []
    return [f"verified bodies {verify['bodies']} ({verify['bytes']} bytes): corrupted "
            f"{verify['corrupted_bodies']} ({verify['corrupted_bytes']} bytes)"]


def _feed_lines(summary: dict[str, Any]) -> list[str]:
    """The feed phase (--feed) and the start failures' reasons."""
    lines = []
    feed = summary["phases_ms"].get("feed") or {}
    if feed.get("count"):
        lines.append(f"feed (in the TTFF) p50 {feed['p50']:.1f} ms, p99 {feed['p99']:.1f} ms, "
                     f"max {feed['max']:.1f} ms over {feed['count']} starts")
    for reason, count in (summary.get("start_failures") or {}).items():
        lines.append(f"  start failure x{count}: {reason}")
    return lines


def text_summary(summary: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.2f}%"

    ttff = summary["ttff_ms"]
    lines = [
        f"sessions {summary['sessions']} (attempts {summary['attempts']}): "
        + ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items())),
        f"TTFF p50 {ms(ttff['p50'])}, p95 {ms(ttff['p95'])}, p99 {ms(ttff['p99'])}, "
        f"max {ms(ttff['max'])}",
        f"VSF {pct(summary['vsf'])}, EBVS {pct(summary['ebvs'])}, VPF {pct(summary['vpf'])}; "
        f"rebuffer ratio {pct(summary['rebuffer']['ratio'])} "
        f"({summary['rebuffer']['events']} events); switches {summary['switches']}",
        *_feed_lines(summary),
        *_verify_line(summary.get("verify")),
        f"player requests {summary['client']['requests']} "
        f"({summary['client']['failures']} without answer), "
        f"origin fetch ratio {pct(summary['origin_fetch_ratio'])}",
    ]
    for name, tier in summary["client"]["tiers"].items():
        lines.append(f"  {name:<10} requests {tier['requests']:>7}  hits {tier['hits']:>7}  "
                     f"hit ratio {pct(tier['hit_ratio'])}  collapsed {tier['collapsed']}")
    if summary.get("server"):
        server = summary["server"]
        lines.append(f"server: origin requests {server['origin_requests']}, coalesced "
                     f"waiters {server['coalesced_waiters']}")
    reconciled = summary.get("hit_ratio")
    if reconciled and reconciled["tiers"]:
        lines.append("hit ratio, (hit + stale) / requests for content, by Cache-Status and "
                     "by /metrics:")
        for name, tier in reconciled["tiers"].items():
            lines.append(f"  {name:<10} {pct(tier['cache_status'])} / {pct(tier['metrics'])}"
                         + ("" if tier["agree"] is not False else "  (differ)"))
            for line in tier["explanation"]:
                lines.append(f"{'':13}{line}")
    harness = summary.get("harness")
    if harness:
        machine = harness.get("machine_busy")
        lines.append(
            f"harness: {len(harness['processes'])} load process(es), busiest "
            f"{harness['cpu_max'] * 100:.0f}% of a core, {harness.get('cpu_total', 0):.2f} cores "
            f"in all, event-loop lag p99 {harness['loop_lag_p99_ms']:.0f} ms; machine "
            + ("-" if machine is None else f"{machine * 100:.0f}% busy")
            + f" ({harness.get('cores', '?')} cores); "
            f"{summary['client']['requests'] / max(summary['run']['wall_seconds'], 1e-3):.0f} "
            "player requests/s")
    for verdict in summary["slo"]:
        lines.append(f"SLO {verdict['slo']}: {'met' if verdict['met'] else 'VIOLATED'} "
                     f"(measured {verdict['measured']})")
    for warning in summary["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def main_args(args: argparse.Namespace) -> int:
    """Run ``reelcdn loadtest`` from parsed options; the exit status."""
    if args.compare_nginx:
        from .compare import main_compare

        if args.catalog is None or getattr(args, "feed", None):
            print("reelcdn loadtest: --compare-nginx: needs --catalog (the same videos for "
                  "both CDNs), and not --feed", file=sys.stderr)
            return EXIT_USAGE

        return main_compare(args)
    try:
        options = build_options(args)
    except UsageError as exc:
        print(f"reelcdn loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from .report import write_outputs
    from .runner import run

    try:
        outcome = asyncio.run(run(options, log=lambda line: print(line, file=sys.stderr)))
    except ValueError as exc:   # --verify: the reference digests could not be read
        print(f"reelcdn loadtest: --verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError) as exc:
        print(f"reelcdn loadtest: the run failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.report:
        paths = write_outputs(outcome, Path(args.report))
        print(f"report: {paths['html']}", file=sys.stderr)
    if args.json:
        print(json.dumps(outcome.summary, indent=2, default=str))
    else:
        print(text_summary(outcome.summary))
    return EXIT_OK if outcome.slo_met else EXIT_SLO
