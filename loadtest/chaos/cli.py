"""``reelcdn soak``: options and the text verdict. ``reelcdn/cli.py`` registers the command and
calls :func:`main_args`.

Exit status: 0 every check held; 1 a check failed (each printed); 2 bad options or plan;
3 the soak could not be carried out (a process did not start); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ..cli import _positive_int, _positive_seconds, _type
from .plan import PlanError, load_plan, standard_plan

EXIT_OK, EXIT_FAILED_CHECK, EXIT_USAGE, EXIT_RUN = 0, 1, 2, 3
DEFAULT_PLAYERS = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", metavar="FILE",
                        help="a chaos plan (TOML, docs/chaos.md); default: the standard plan "
                        "shipped in the package (loadtest/chaos/standard.toml)")
    parser.add_argument("--duration", type=_type(_positive_seconds, "a duration"),
                        help="how long players play (e.g. 10m, 45s); default: the plan's")
    parser.add_argument("--players", type=_type(_positive_int, "a positive whole number"),
                        help=f"concurrent players; default: the plan's, else {DEFAULT_PLAYERS}")
    parser.add_argument("--report", metavar="DIR", default="soak-report",
                        help="where soak.json, report.html, the harness's report, the "
                        "topology and the process logs go (./soak-report)")
    parser.add_argument("--data-dir", default="./data",
                        help="the demo videos' data dir, as reelcdn up's (./data): "
                        "DATA_DIR/origin, made with ffmpeg when missing")
    parser.add_argument("--videos", choices=("demo", "synthetic"), default="demo",
                        help="demo (reelcdn up's, made with ffmpeg) or synthetic (random "
                        "bytes with a real meta.json, in the report dir; instant)")
    parser.add_argument("--retries", type=int, default=1,
                        help="player retries of a failed playlist request; 1")
    parser.add_argument("--segment-retries", type=int, default=3,
                        help="player retries of a failed init or media segment (hls.js "
                        "retries a fragment up to 6 times); 3")
    parser.add_argument("--max-start-failures", type=float, default=0.1, metavar="PERCENT",
                        help="start failures (VSF + EBVS) must stay below this; 0.1 (%%)")
    parser.add_argument("--max-rss-growth", type=float, default=5.0, metavar="PERCENT",
                        help="RSS growth of a node after its first minute; 5 (%%)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--node-log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def main_args(args: argparse.Namespace) -> int:
    from .report import write_report
    from .run import SoakOptions, soak

    try:
        plan = load_plan(args.plan) if args.plan else standard_plan()
    except PlanError as exc:
        print(f"reelcdn soak: plan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    duration = args.duration or plan.duration
    if duration is None:
        print("reelcdn soak: --duration: needed (the plan sets none)", file=sys.stderr)
        return EXIT_USAGE
    if min(args.retries, args.segment_retries) < 0 or args.max_rss_growth < 0 \
            or not 0 < args.max_start_failures <= 100:
        print("reelcdn soak: --retries and --segment-retries >= 0, --max-start-failures in "
              "(0, 100], "
              "--max-rss-growth >= 0", file=sys.stderr)
        return EXIT_USAGE
    report = Path(args.report)
    options = SoakOptions(
        plan=plan, duration=duration, players=args.players or plan.players or DEFAULT_PLAYERS,
        report=report, data_dir=Path(args.data_dir), videos=args.videos, seed=args.seed,
        retries=args.retries, segment_retries=args.segment_retries,
        max_start_failures=args.max_start_failures / 100,
        max_rss_growth=args.max_rss_growth / 100, log_level=args.node_log_level)
    try:
        result = asyncio.run(soak(options))
    except KeyboardInterrupt:
        print("reelcdn soak: interrupted; every process was stopped", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        print("reelcdn soak: terminated; every process was stopped", file=sys.stderr)
        return 143
    paths = write_report(result, report)
    print(text_verdict(result))
    print(f"report: {paths['html']} ({paths['json']})")
    if not result.checks[0]["ok"]:
        return EXIT_RUN
    return EXIT_OK if result.passed else EXIT_FAILED_CHECK


def text_verdict(result: object) -> str:
    lines = [f"soak: {'PASS' if result.passed else 'FAIL'}"]  # type: ignore[attr-defined]
    for check in result.checks:  # type: ignore[attr-defined]
        judged = check.get("judged", True)
        state = ("ok" if check["ok"] else "FAILED") if judged else "reported"
        lines.append(f"  {state:<8} {check['check']}: {check['measured']} "
                     f"(target {check['target']})")
    return "\n".join(lines)
