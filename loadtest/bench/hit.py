"""Cache HIT throughput: the reelcdn node side by side with nginx ``proxy_cache``.

Why this shape (docs/benchmarks/methodology.md): absolute numbers on a shared 2-core machine
drift from hour to hour, so the only meaningful result is a ratio measured in *one* run, with
*the same* wrk settings, one process (node) / one worker (nginx) each — or ``--workers N`` of
each — servers alternating so drift hits both, and medians of N runs. Both servers proxy the
same local origin; after warming, the origin's request counter must not move during a run, which
proves the numbers are HITs.

Usage::

    python -m reelcdn.loadtest.bench.hit [--repeat 3] [--threads 1 --connections 64 --duration 10s]
                                         [--only nginx|node] [--workers 1] [--access-log]
                                         [--markdown docs/benchmarks/YYYY-MM-DD.md]

Exit status: 0 measured, 1 a server failed to start / warm / stay up (its log tail is printed),
2 missing prerequisites or bad arguments.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import machine
from .common import (
    BenchFailure,
    add_server_arguments,
    log,
    non_negative_int,
    positive_int,
    run_main,
)
from .origin import OBJECTS
from .procs import StartupError
from .report import Run, Series, markdown_table
from .servers import (
    REFERENCE,
    TARGETS,
    BenchOptions,
    LoggingNodeTarget,
    NodeTarget,
    OriginServer,
    Target,
    find_nginx,
    stop_all,
)
from .wrk import WrkError, WrkSettings, parse_duration, run_wrk

PROG = "python -m reelcdn.loadtest.bench.hit"
WARM_ATTEMPTS = 6


def _duration(value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _objects(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown object(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(BENCHMARKS)}"
        )
    return names


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark cache HITs of the reelcdn node side by side with nginx "
        "proxy_cache (same run, same wrk settings, medians of N alternating runs).",
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--connections", type=positive_int, default=64, help="wrk -c (default 64)")
    parser.add_argument(
        "--duration", type=_duration, default=10, help="wrk -d, e.g. 10s, 1m (default 10s)"
    )
    parser.add_argument(
        "--repeat", type=positive_int, default=3, help="runs per server and object (default 3)"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=2,
        metavar="SECONDS",
        help="unrecorded wrk run per server and object before measuring (default 2, 0 = none)",
    )
    parser.add_argument(
        "--only", choices=[t.key for t in TARGETS], help="benchmark one server only"
    )
    parser.add_argument(
        "--objects",
        type=_objects,
        default=list(BENCHMARKS),
        help=f"comma-separated objects (default {','.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes: nginx worker_processes and the node's `workers` (default 1); "
        "on a 2-core machine wrk shares the cores, so more workers measure contention too",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="compare the node with its access log off and on (to a file), instead of nginx",
    )
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections (wrk needs a connection per thread)")
    return args


def check_prerequisites(args: argparse.Namespace, targets: Sequence[type[Target]]) -> list[str]:
    """Everything missing, all at once, with the package that provides it."""
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk: not on PATH (apt-get install wrk)")
    if importlib.util.find_spec("aiohttp") is None:
        missing.append("aiohttp: not importable, the origin needs it (pip install aiohttp)")
    options = _options(args)
    for target in targets:
        missing += target.missing(options)
    return missing


def _options(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        connections=args.connections,
        nginx_bin=args.nginx,
        node_cmd=tuple(shlex.split(args.node_cmd)) if args.node_cmd else None,
        node_args=tuple(shlex.split(args.node_args)),
        workers=args.workers,
    )


#: Benchmark variants that request ranges of a stored object: name → (object, wrk script,
#: bytes per response). Warming fetches the whole object; wrk then asks for ranges of it.
RANGE_VARIANTS: dict[str, tuple[str, str, int]] = {
    "1m-range64k": ("1m", "range64k.lua", 64 * 1024),
}
BENCHMARKS: dict[str, int] = {**OBJECTS, **{k: v[2] for k, v in RANGE_VARIANTS.items()}}


def object_of(name: str) -> str:
    """The stored object a benchmark name reads (itself, or a range variant's object)."""
    return RANGE_VARIANTS[name][0] if name in RANGE_VARIANTS else name


def script_of(name: str) -> str | None:
    """The wrk Lua script of a range variant (shipped beside this module)."""
    if name not in RANGE_VARIANTS:
        return None
    return str(Path(__file__).with_name(RANGE_VARIANTS[name][1]))


def warm(target: Target, object_name: str) -> str:
    """Fetch until the target answers from its cache; returns the HIT's cache status.

    A few requests, not one: nginx stores on the first miss, but a cache with second-hit
    admission stores only on the second, so the third is the first HIT.
    """
    object_name = object_of(object_name)
    path = f"/obj/{object_name}"
    size = OBJECTS[object_name]
    statuses = []
    for attempt in range(WARM_ATTEMPTS):
        try:
            reply = target.get(path)
        except (OSError, http.client.HTTPException) as exc:
            raise BenchFailure(
                f"{target.label}: GET {path} failed: {exc!r}\n"
                f"--- {target.key} output (tail) ---\n{target.diagnostics()}"
            ) from exc
        status = target.cache_status(reply)
        statuses.append(status or "(none)")
        if reply.status != 200 or len(reply.body) != size:
            raise BenchFailure(
                f"{target.label}: GET {path} -> {reply.status}, {len(reply.body)} bytes "
                f"(expected 200, {size} bytes)"
            )
        if attempt > 0 and target.is_hit(reply):
            return status or ""
    raise BenchFailure(
        f"{target.label}: GET {path} never reported a HIT in {WARM_ATTEMPTS} requests "
        f"(cache status seen: {', '.join(statuses)})"
    )


def _ensure_alive(target: Target) -> None:
    status = target.process.exit_status() if target.process else None
    if status is not None:
        raise BenchFailure(
            f"{target.label} exited with status {status} during the benchmark\n"
            + target.diagnostics()
        )


def _origin_count(origin: OriginServer) -> int:
    """The origin's request counter; an unreachable origin ends the run (exit status 1)."""
    try:
        return origin.count()
    except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
        raise BenchFailure(
            f"origin: GET /__count failed: {exc!r}\n--- origin output (tail) ---\n"
            + origin.process.output_tail()
        ) from exc


def measure(
    wrk: str,
    settings: WrkSettings,
    origin: OriginServer,
    targets: Sequence[Target],
    objects: Sequence[str],
    repeat: int,
    warmup: int,
) -> list[Series]:
    """For each object: servers alternate run by run, ``repeat`` recorded runs each."""
    all_series: list[Series] = []
    for name in objects:
        path = f"/obj/{object_of(name)}"
        script = script_of(name)
        by_target = {t.key: Series(name, BENCHMARKS[name], t.key, t.label) for t in targets}
        if warmup:
            for target in targets:
                log(f"{path} {target.key}: {warmup} s unrecorded warm-up")
                try:
                    run_wrk(
                        wrk,
                        target.url(path),
                        WrkSettings(settings.threads, settings.connections, warmup),
                        script,
                    )
                except WrkError as exc:
                    log(f"warm-up failed (ignored): {exc}")
                _ensure_alive(target)
        for rep in range(1, repeat + 1):
            for target in targets:
                series = by_target[target.key]
                before = _origin_count(origin)
                try:
                    result, _raw = run_wrk(wrk, target.url(path), settings, script)
                except WrkError as exc:
                    series.failures.append(str(exc))
                    log(f"{path} {target.key} run {rep}/{repeat}: FAILED: {exc}")
                    _ensure_alive(target)
                    continue
                fetched = _origin_count(origin) - before
                series.runs.append(Run(result, fetched))
                errors = result.error_summary()
                log(
                    f"{path} {target.key} run {rep}/{repeat}: "
                    f"{result.requests_per_sec:,.0f} req/s, {result.bytes_per_sec / 1e6:,.1f} MB/s"
                    + (f", ERRORS: {errors}" if errors else "")
                    + (f", {fetched} origin fetches" if fetched else "")
                )
                _ensure_alive(target)
        all_series += by_target.values()
    return all_series


def render_report(
    all_series: Sequence[Series],
    info: machine.MachineInfo,
    settings: WrkSettings,
    args: argparse.Namespace,
    argv: Sequence[str],
    started: datetime,
    targets: Sequence[Target],
) -> str:
    subject, reference = NodeTarget.key, REFERENCE
    if args.access_log:
        subject, reference = LoggingNodeTarget.key, NodeTarget.key
    lines = [
        f"### Cache HIT run, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{shlex.join([*PROG.split(), *argv])}`",
        "",
        f"wrk `{settings.describe()}`, {args.repeat} recorded run{'s' if args.repeat > 1 else ''} "
        "per server and object "
        f"(servers alternating, after a {args.warmup} s unrecorded warm-up); "
        "values are medians. MB/s = 10⁶ bytes/s as counted by wrk (headers included). "
        f"Ratio = {subject}/{reference} on req/s for small objects, bytes/s for large ones.",
        "",
        markdown_table(all_series, reference, subject),
        "",
        "Machine:",
        "",
        *info.markdown_lines(),
    ]
    node = next((t for t in targets if isinstance(t, NodeTarget)), None)
    if node is not None:
        extra = f" {shlex.join(node.options.node_args)}" if node.options.node_args else ""
        lines.append(f"- node command: `{node.command_line()} node --config … --name bench{extra}`")
    return "\n".join(lines) + "\n"


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    selected = [t for t in TARGETS if args.only in (None, t.key)]
    if args.access_log:  # the node, with its access log off and on
        selected = [NodeTarget, LoggingNodeTarget]
    missing = check_prerequisites(args, selected)
    if missing:
        print(f"{PROG}: missing prerequisites:", file=sys.stderr)
        for item in missing:
            print(f"  - {item}", file=sys.stderr)
        return 2
    wrk = shutil.which("wrk")
    assert wrk is not None  # checked above
    settings = WrkSettings(args.threads, args.connections, args.duration)
    options = _options(args)
    tools = {"wrk": machine.wrk_version(wrk)}
    if any(t.key == "nginx" for t in selected):
        nginx = find_nginx(args.nginx)
        assert nginx is not None  # checked above
        tools = {"nginx": machine.nginx_version(nginx), **tools}
    if any(t.key == "node" for t in selected):
        tools["reelcdn"] = machine.source_revision(Path(__file__).resolve().parents[2])
    info = machine.collect(tools)
    started_at = datetime.now(UTC)

    workdir = Path(tempfile.mkdtemp(prefix="reelcdn-bench-"))
    running: list[Target | OriginServer] = []
    try:
        origin = OriginServer(workdir)
        running.append(origin)
        origin.start()
        log(f"origin ready on {origin.base_url}")
        targets: list[Target] = []
        for cls in selected:
            target = cls(options, workdir, origin)
            running.append(target)
            target.start()
            targets.append(target)
            log(f"{target.key} ready on {target.url('')}")
        for target in targets:
            for name in args.objects:
                status = warm(target, name)
                log(f"{target.key} /obj/{name} warm: {status}")
        t0 = time.monotonic()
        all_series = measure(wrk, settings, origin, targets, args.objects, args.repeat, args.warmup)
        log(f"measured in {time.monotonic() - t0:.0f} s")
    except StartupError as exc:
        print(f"{PROG}: {exc.name} failed to start: {exc.reason}", file=sys.stderr)
        if exc.details.strip():
            print(f"--- {exc.name} output (tail) ---\n{exc.details}", file=sys.stderr)
        if exc.name == "node":
            print("(use --only nginx to benchmark nginx alone)", file=sys.stderr)
        return 1
    except BenchFailure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(running)
        if args.keep_temp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    report = render_report(all_series, info, settings, args, argv, started_at, targets)
    print(report)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as fh:
            fh.write("\n" + report)
        log(f"appended to {args.markdown}")
    return 1 if any(not s.runs for s in all_series) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())
