"""Cold-object crowd: N concurrent requests for one object no cache has yet, node vs nginx.

What it measures (docs/overview.md, "Request coalescing that streams" and "Targets"): 500
clients ask for the same cold object at the same instant, and the origin takes 200 ms to answer.
A coalescing cache fetches it once and every client gets it about when the origin answers.
nginx's ``proxy_cache_lock`` also fetches once, but its waiters poll the cache every 500 ms and
wait for the whole object; the reelcdn node attaches every waiter to the one fetch and streams
the bytes as they arrive. Target: 1 origin fetch, p99 ≤ 220 ms at one node.

Why this shape: as in the HIT benchmark, a claim is a ratio from *one* run with servers
alternating round by round, and medians over rounds. The crowd runs in a separate process
(``crowdclient.py``, a raw asyncio Protocol on uvloop) so it does not share the server's event
loop; it still shares the machine's 2 cores, so each round also measures the **client floor**:
the same crowd, on the same connections, for the same object right after, when it is a HIT.
That is what the crowd costs with no waiting at all (client, loopback, and the server's own HIT
path); readers can subtract it. Every body is verified
(status 200, size, sha256 of the path-derived content) and the origin counts fetches per path,
so "1 origin fetch" is checked, not assumed: any other count is flagged.

Usage::

    python -m reelcdn.loadtest.bench.crowd [--rounds 5] [--crowd 500] [--size 256KiB]
        [--origin-delay 200ms] [--only nginx|node] [--markdown docs/benchmarks/YYYY-MM-DD.md]

Exit status: 0 measured, 1 a server failed to start / stay up or a server got no round
measured, 2 missing prerequisites or bad arguments.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import math
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from . import machine
from .coldobj import COLD_PREFIX, DEFAULT_DELAY, DEFAULT_SIZE
from .common import (
    BenchFailure,
    add_server_arguments,
    byte_size,
    log,
    milliseconds,
    non_negative_int,
    positive_int,
    run_main,
)
from .procs import StartupError
from .report import fmt_size
from .servers import (
    REFERENCE,
    TARGETS,
    BenchOptions,
    NginxTarget,
    NodeTarget,
    OriginServer,
    Target,
    find_nginx,
    stop_all,
)

PROG = "python -m reelcdn.loadtest.bench.crowd"
#: Target (docs/overview.md): the node's p99 for the crowd (nginx 1.22 measured 584 ms,
#: Varnish 7.1 432 ms).
TARGET_P99 = 0.220
#: Descriptors per crowd connection across client and server (client socket, server socket,
#: a little slack); checked against RLIMIT_NOFILE, which the servers inherit.
FDS_PER_CLIENT = 2
FD_SLACK = 256


# ----------------------------------------------------------------------------------------
# Measurements


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(q·n)): p99 of 500 is the 495th value,
    an observed latency, not an interpolation."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Phase:
    """One crowd (all requests fired at once) as the client reported it."""

    requests: int
    latencies: tuple[float, ...]  # seconds, complete and verified responses only
    ttfb: tuple[float, ...]
    errors: dict[str, int]
    cache_status: dict[str, int]
    send_span: float

    @classmethod
    def from_json(cls, data: Any) -> Phase:
        """Validate the client's JSON for one phase (ValueError/TypeError/KeyError if bad)."""
        if not isinstance(data, dict):
            raise TypeError(f"phase is not an object: {data!r:.80}")
        return cls(
            requests=int(data["requests"]),
            latencies=tuple(float(x) for x in data["latencies"]),
            ttfb=tuple(float(x) for x in data["ttfb"]),
            errors={str(k): int(v) for k, v in data["errors"].items()},
            cache_status={str(k): int(v) for k, v in data["cache_status"].items()},
            send_span=float(data["send_span"]),
        )

    @property
    def failed(self) -> int:
        return self.requests - len(self.latencies)

    def pct(self, q: float) -> float | None:
        return percentile(self.latencies, q) if self.latencies else None

    def ttfb_pct(self, q: float) -> float | None:
        return percentile(self.ttfb, q) if self.ttfb else None

    @property
    def max(self) -> float | None:
        return max(self.latencies) if self.latencies else None


@dataclass(frozen=True, slots=True)
class Round:
    """One server's round: the cold crowd, then the HIT crowd (the floor), and the fetches."""

    path: str
    cold: Phase
    floor: Phase
    origin_fetches: int
    floor_all_hits: bool

    @property
    def flagged(self) -> bool:
        return (
            self.origin_fetches != 1
            or self.cold.failed > 0
            or self.floor.failed > 0
            or not self.floor_all_hits
        )


@dataclass(slots=True)
class ServerResult:
    """All rounds of one server; the report's statistics are medians over its rounds, so one
    round disturbed by a neighbour on the shared machine does not make the headline."""

    key: str
    label: str
    rounds: list[Round] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # rounds the client could not report

    def median(self, values: Sequence[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    def cold(self, q: float) -> float | None:
        return self.median([r.cold.pct(q) for r in self.rounds])

    def cold_max(self) -> float | None:
        return self.median([r.cold.max for r in self.rounds])

    def cold_ttfb(self, q: float) -> float | None:
        return self.median([r.cold.ttfb_pct(q) for r in self.rounds])

    def floor(self, q: float) -> float | None:
        return self.median([r.floor.pct(q) for r in self.rounds])

    def over_floor(self, q: float) -> float | None:
        """Median over rounds of (cold pq − floor pq) of the same round."""
        diffs = []
        for r in self.rounds:
            cold, floor = r.cold.pct(q), r.floor.pct(q)
            if cold is not None and floor is not None:
                diffs.append(cold - floor)
        return statistics.median(diffs) if diffs else None


# ----------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark a crowd of concurrent requests for one cold object (request "
        "coalescing) on the reelcdn node side by side with nginx proxy_cache_lock.",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="recorded rounds per server (default 5)"
    )
    parser.add_argument(
        "--warmup-rounds",
        type=non_negative_int,
        default=1,
        help="unrecorded rounds per server first (default 1): upstream connections, "
        "lazy initialisation",
    )
    parser.add_argument(
        "--crowd", type=positive_int, default=500, help="concurrent requests (default 500)"
    )
    parser.add_argument(
        "--size",
        type=byte_size,
        default=DEFAULT_SIZE,
        help=f"cold object size, e.g. 256KiB, 1MiB (default {fmt_size(DEFAULT_SIZE)})",
    )
    parser.add_argument(
        "--origin-delay",
        type=milliseconds,
        default=DEFAULT_DELAY,
        metavar="MS",
        help=f"origin delay before answering, e.g. 200ms (default {DEFAULT_DELAY * 1000:.0f}ms)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.3,
        metavar="SECONDS",
        help="pause between opening the crowd's connections and firing (default 0.3)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a crowd not complete after this long is cut and its stragglers are errors "
        "(default 30)",
    )
    parser.add_argument(
        "--only", choices=[t.key for t in TARGETS], help="benchmark one server only"
    )
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.crowd * args.size > 2 * 1024**3:
        parser.error("--crowd × --size must stay under 2 GiB (the client keeps bodies to verify)")
    if not 0 <= args.settle <= 10:
        parser.error("--settle must be between 0 and 10 s")
    if not 1 <= args.timeout <= 300:
        parser.error("--timeout must be between 1 and 300 s")
    return args


def _options(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        connections=args.crowd,
        nginx_bin=args.nginx,
        node_cmd=tuple(shlex.split(args.node_cmd)) if args.node_cmd else None,
        node_args=tuple(shlex.split(args.node_args)),
    )


def raise_fd_limit(needed: int) -> str | None:
    """Raise the soft RLIMIT_NOFILE to ``needed`` if the hard limit allows (the servers and the
    client inherit it); return a problem description, or None."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            return (
                f"open files: the hard limit is {hard}, a crowd of this size needs {needed} "
                "(raise `ulimit -Hn`, or use a smaller --crowd)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return None


def check_prerequisites(args: argparse.Namespace, targets: Sequence[type[Target]]) -> list[str]:
    """Everything missing, all at once, with the package that provides it."""
    missing = []
    if importlib.util.find_spec("aiohttp") is None:
        missing.append("aiohttp: not importable, the origin needs it (pip install aiohttp)")
    problem = raise_fd_limit(FDS_PER_CLIENT * args.crowd + FD_SLACK)
    if problem:
        missing.append(problem)
    options = _options(args)
    for target in targets:
        missing += target.missing(options)
    return missing


# ----------------------------------------------------------------------------------------
# Running


def run_client(
    target: Target, path: str, args: argparse.Namespace, workdir: Path
) -> dict[str, object]:
    """Run one crowd client process (cold phase, then HIT phase on ``path``); its JSON report.

    Bounded: two phases of ``--timeout`` each plus connecting and verifying, then killed.
    """
    argv = [
        sys.executable,
        "-m",
        "reelcdn.loadtest.bench.crowdclient",
        "--port",
        str(target.port),
        "--path",
        path,
        "--path",
        path,
        "--crowd",
        str(args.crowd),
        "--size",
        str(args.size),
        "--status-header",
        target.status_header,
        "--settle",
        str(args.settle),
        "--timeout",
        str(args.timeout),
    ]
    limit = 2 * args.timeout + 2 * args.settle + 60
    stderr_path = workdir / "crowdclient.stderr.log"
    with stderr_path.open("ab") as err:
        try:
            done = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=err, timeout=limit, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"crowd client did not finish within {limit:.0f} s") from exc
    if done.returncode != 0:
        tail = stderr_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(
            f"crowd client exited with status {done.returncode}:\n" + "\n".join(tail)
        )
    try:
        report = json.loads(done.stdout)
    except ValueError as exc:
        raise RuntimeError(f"crowd client printed no JSON: {done.stdout[:200]!r}") from exc
    if not isinstance(report, dict):
        raise RuntimeError("crowd client printed JSON that is not an object")
    return report


def _ensure_alive(target: Target) -> None:
    status = target.process.exit_status() if target.process else None
    if status is not None:
        raise BenchFailure(
            f"{target.label} exited with status {status} during the benchmark\n"
            + target.diagnostics()
        )


def _origin_fetches(origin: OriginServer, path: str) -> int:
    try:
        return origin.count_path(path)
    except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
        raise BenchFailure(
            f"origin: GET /__count?path={path} failed: {exc!r}\n--- origin output (tail) ---\n"
            + origin.process.output_tail()
        ) from exc


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def one_round(
    target: Target, origin: OriginServer, path: str, args: argparse.Namespace, workdir: Path
) -> Round:
    """Cold crowd + HIT crowd on ``path``; raises RuntimeError if the client failed."""
    report = run_client(target, path, args, workdir)
    phases = report.get("phases")
    if not isinstance(phases, list) or len(phases) != 2:
        raise RuntimeError(f"crowd client reported {phases!r} instead of two phases")
    try:
        cold, floor = (Phase.from_json(p) for p in phases)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RuntimeError(f"crowd client report is malformed: {exc!r}") from exc
    hits = sum(n for value, n in floor.cache_status.items() if target.is_hit_value(value))
    return Round(
        path=path,
        cold=cold,
        floor=floor,
        origin_fetches=_origin_fetches(origin, path),
        floor_all_hits=hits == floor.requests,
    )


def _describe(round_: Round) -> str:
    cold, floor = round_.cold, round_.floor
    text = (
        f"cold p50 {_ms(cold.pct(0.5))} p99 {_ms(cold.pct(0.99))} max {_ms(cold.max)} "
        f"(first byte p99 {_ms(cold.ttfb_pct(0.99))}, sends over {cold.send_span * 1000:.1f} ms)"
        f"; HIT floor p99 {_ms(floor.pct(0.99))}; {round_.origin_fetches} origin fetch"
        + ("" if round_.origin_fetches == 1 else "es ⚠")
    )
    for name, phase in (("cold", cold), ("HIT", floor)):
        if phase.errors:
            text += f"; {name} ERRORS {phase.errors}"
    if not round_.floor_all_hits:
        text += f"; HIT crowd not all HITs: {floor.cache_status}"
    return text


def measure(
    targets: Sequence[Target], origin: OriginServer, args: argparse.Namespace, workdir: Path
) -> list[ServerResult]:
    """Warm-up rounds, then ``--rounds`` rounds with the servers alternating in each."""
    run_id = secrets.token_hex(4)  # fresh paths even against a cache that outlived a run
    results = {t.key: ServerResult(t.key, t.label) for t in targets}
    schedule = [(f"w{i}", False) for i in range(1, args.warmup_rounds + 1)]
    schedule += [(f"r{i}", True) for i in range(1, args.rounds + 1)]
    for name, recorded in schedule:
        for target in targets:
            path = f"{COLD_PREFIX}{run_id}-{name}-{target.key}"
            what = f"{target.key} {'round ' + name[1:] if recorded else 'warm-up ' + name[1:]}"
            try:
                round_ = one_round(target, origin, path, args, workdir)
            except RuntimeError as exc:
                _ensure_alive(target)
                if recorded:
                    results[target.key].failures.append(str(exc))
                log(f"{what}: FAILED: {exc}")
                continue
            log(f"{what}: {_describe(round_)}")
            if recorded:
                results[target.key].rounds.append(round_)
            _ensure_alive(target)
    return list(results.values())


# ----------------------------------------------------------------------------------------
# Report


def _notes(result: ServerResult) -> str:
    notes = []
    n = len(result.rounds) + len(result.failures)
    if result.failures:
        notes.append(f"⚠ client failed in {len(result.failures)}/{n} rounds")
    wrong = [r.origin_fetches for r in result.rounds if r.origin_fetches != 1]
    if wrong:
        notes.append(f"⚠ origin fetches ≠ 1 in {len(wrong)}/{n} rounds")
    for name, attr in (("cold", "cold"), ("HIT", "floor")):
        errored = [getattr(r, attr) for r in result.rounds if getattr(r, attr).failed]
        if errored:
            total: Counter[str] = Counter()
            for phase in errored:
                total.update(phase.errors)
            worst = ", ".join(f"{reason} ×{k}" for reason, k in total.most_common(2))
            notes.append(f"⚠ {name} crowd errors in {len(errored)}/{n} rounds ({worst})")
    not_hits = sum(1 for r in result.rounds if not r.floor_all_hits)
    if not_hits:
        notes.append(f"⚠ HIT crowd not all HITs in {not_hits}/{n} rounds")
    return "; ".join(notes)


def _ratio(subject: ServerResult | None, reference: ServerResult | None) -> str:
    if subject is None or reference is None:
        return "—"
    ours, theirs = subject.cold(0.99), reference.cold(0.99)
    if ours is None or not theirs:
        return "—"
    suspect = any(r.failures or any(x.flagged for x in r.rounds) for r in (subject, reference))
    return f"**{ours / theirs:.2f}**" + (" ⚠" if suspect else "")


def markdown_table(results: Sequence[ServerResult]) -> str:
    """One row per server; values are medians over rounds of each round's statistic."""
    by_key = {r.key: r for r in results}
    subject_key = NodeTarget.key
    rows = [
        f"| server | p50 | p99 | max | first byte p99 | origin fetches per round "
        f"| HIT floor p99 | p99 − floor | {subject_key}/{REFERENCE} p99 | p99 per round "
        "| notes |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for result in results:
        fetches = " · ".join(
            str(r.origin_fetches) + ("" if r.origin_fetches == 1 else " ⚠") for r in result.rounds
        )
        per_round = " · ".join(
            f"{(r.cold.pct(0.99) or 0) * 1000:.0f}" + (" ⚠" if r.flagged else "")
            for r in result.rounds
        )
        ratio = _ratio(result, by_key.get(REFERENCE)) if result.key == subject_key else "—"
        rows.append(
            f"| {result.label} "
            f"| {_ms(result.cold(0.5))} "
            f"| **{_ms(result.cold(0.99))}** "
            f"| {_ms(result.cold_max())} "
            f"| {_ms(result.cold_ttfb(0.99))} "
            f"| {fetches or '—'} "
            f"| {_ms(result.floor(0.99))} "
            f"| {_ms(result.over_floor(0.99))} "
            f"| {ratio} "
            f"| {per_round + ' ms' if per_round else '—'} "
            f"| {_notes(result)} |"
        )
    return "\n".join(rows)


def _verdict(results: Sequence[ServerResult]) -> str:
    node = next((r for r in results if r.key == NodeTarget.key), None)
    if node is None or not node.rounds:
        return ""
    p99 = node.cold(0.99)
    one_fetch = all(r.origin_fetches == 1 for r in node.rounds) and not node.failures
    met = one_fetch and p99 is not None and p99 <= TARGET_P99
    return (
        f"Target (docs/overview.md: 1 origin fetch, p99 ≤ {TARGET_P99 * 1000:.0f} ms at one node): "
        f"**{'met' if met else 'not met'}** — node p99 {_ms(p99)} (its HIT floor p99 "
        f"{_ms(node.floor(0.99))}), origin fetches per round "
        f"{'all 1' if one_fetch else 'not all 1'}."
    )


def _tallies(results: Sequence[ServerResult]) -> list[str]:
    """Cache status values of the cold crowds, summed over rounds: evidence of coalescing."""
    lines = []
    for result in results:
        total: Counter[str] = Counter()
        for r in result.rounds:
            total.update(r.cold.cache_status)
        if total:
            values = "; ".join(f"`{value}` ×{n}" for value, n in total.most_common(4))
            lines.append(f"- {result.label}: {values}")
    return lines


def render_report(
    results: Sequence[ServerResult],
    info: machine.MachineInfo,
    args: argparse.Namespace,
    argv: Sequence[str],
    started: datetime,
    targets: Sequence[Target],
) -> str:
    lines = [
        f"### Cold-object crowd run, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{shlex.join([*PROG.split(), *argv])}`",
        "",
        f"{args.crowd} concurrent GETs (one per pre-opened keep-alive connection, all written "
        f"at once) for one cold {fmt_size(args.size)} object; origin answers after "
        f"{args.origin_delay * 1000:.0f} ms. {args.rounds} recorded round"
        f"{'s' if args.rounds > 1 else ''} per server (servers alternating, after "
        f"{args.warmup_rounds} unrecorded), a fresh object each round; values are medians over "
        "rounds of each round's statistic (nearest-rank percentiles over the crowd). Latency: "
        "from a request's write to its last body byte, at the client; every body verified "
        "(status, size, sha256). HIT floor: the same crowd on the same connections for the "
        "same object right after, now a HIT: what the crowd costs with no waiting at all "
        "(client, loopback and the server's HIT path, on the same 2 cores). "
        "p99 − floor: median over rounds of the round's cold p99 minus its HIT p99.",
        "",
        markdown_table(results),
        "",
    ]
    verdict = _verdict(results)
    if verdict:
        lines += [verdict, ""]
    tallies = _tallies(results)
    if tallies:
        lines += ["Cache status of the cold crowds (all rounds):", "", *tallies, ""]
    lines += ["Machine:", "", *info.markdown_lines()]
    node = next((t for t in targets if isinstance(t, NodeTarget)), None)
    if node is not None:
        extra = f" {shlex.join(node.options.node_args)}" if node.options.node_args else ""
        lines.append(f"- node command: `{node.command_line()} node --config … --name bench{extra}`")
    lines.append(f"- crowd client: `loadtest/bench/crowdclient.py` on {_client_loop()}")
    lines.append(f"- load average at end (1/5/15 min): {machine.loadavg()}")
    return "\n".join(lines) + "\n"


def _client_loop() -> str:
    try:
        return f"uvloop {metadata.version('uvloop')}"
    except metadata.PackageNotFoundError:
        return "the asyncio default loop"


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    selected = [t for t in TARGETS if args.only in (None, t.key)]
    missing = check_prerequisites(args, selected)
    if missing:
        print(f"{PROG}: missing prerequisites:", file=sys.stderr)
        for item in missing:
            print(f"  - {item}", file=sys.stderr)
        return 2
    options = _options(args)
    tools: dict[str, str] = {}
    if any(t is NginxTarget for t in selected):
        nginx = find_nginx(args.nginx)
        assert nginx is not None  # checked above
        tools["nginx"] = machine.nginx_version(nginx)
    if any(t is NodeTarget for t in selected):
        tools["reelcdn"] = machine.source_revision(Path(__file__).resolve().parents[2])
    info = machine.collect(tools)
    started_at = datetime.now(UTC)

    workdir = Path(tempfile.mkdtemp(prefix="reelcdn-crowd-"))
    running: list[Target | OriginServer] = []
    targets: list[Target] = []
    try:
        origin = OriginServer(
            workdir,
            ["--cold-size", str(args.size), "--cold-delay", f"{args.origin_delay * 1000:g}ms"],
        )
        running.append(origin)
        origin.start()
        log(f"origin ready on {origin.base_url}")
        for cls in selected:
            target = cls(options, workdir, origin)
            running.append(target)
            target.start()
            targets.append(target)
            log(f"{target.key} ready on {target.url('')}")
        t0 = time.monotonic()
        results = measure(targets, origin, args, workdir)
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

    report = render_report(results, info, args, argv, started_at, targets)
    print(report)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as fh:
            fh.write("\n" + report)
        log(f"appended to {args.markdown}")
    return 1 if any(not r.rounds for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())
