"""Range HITs at any offset: the reelcdn node side by side with nginx ``proxy_cache``.

Why a benchmark of its own: the HIT benchmark's Range case asks for 64 KiB at 64 KiB
boundaries, which is how players fetch but not all a CDN is asked; byte ranges at any offset,
of any length, and several ranges in one request (``multipart/byteranges``) take other paths
through the node and the kernel. Cases (``ranges.lua`` draws the requests, the same rules as
:func:`draw_ranges` here):

- ``aligned64k``: 64 KiB at a random 64 KiB boundary (the control: the HIT bench's case);
- ``offset64k``: 64 KiB at a random byte offset;
- ``randlen``: one range at a random offset, its length 1 KiB to 1 MiB, log-uniform (as many
  short ranges as long ones; a uniform length would make every run a bandwidth test);
- ``multi``: 2 to 4 disjoint ranges in increasing order, each 1 KiB to 64 KiB.

Each run is seeded (``--seed`` plus the run's number): both servers of a run get the same
mix. Before measuring, every case's answers are checked on a sample of ``--check`` requests per
server (status, ``Content-Range``, ``Content-Length``, the multipart framing, every byte against
the object), and during the runs the bytes per response wrk reports must match what the case's
mix should give (a server answering 200 with the whole object would fail it): a benchmark
measuring wrong answers is worse than none. Otherwise as ``hit``: one process each, servers
alternating, medians of ``--repeat`` runs, the origin's request counter unchanged during runs.

Usage::

    python -m reelcdn.loadtest.bench.ranges [--repeat 3] [--duration 5s] [--cases a,b]
                                            [--markdown docs/benchmarks/YYYY-MM-DD.md]

Exit status: 0 measured, 1 a server failed to start, answered wrong or died, 2 missing
prerequisites or bad arguments.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import machine
from .common import BenchFailure, add_server_arguments, log, positive_int, run_main
from .hit import _duration, _ensure_alive, _options, _origin_count, check_prerequisites, warm
from .origin import OBJECTS, make_body
from .procs import LOOPBACK, StartupError
from .report import fmt_latency
from .servers import REFERENCE, TARGETS, NodeTarget, OriginServer, Target, find_nginx, stop_all
from .wrk import WrkError, WrkResult, WrkSettings, run_wrk

PROG = "python -m reelcdn.loadtest.bench.ranges"
OBJECT = "1m"
SIZE = OBJECTS[OBJECT]
SCRIPT = str(Path(__file__).with_name("ranges.lua"))
CASES = ("aligned64k", "offset64k", "randlen", "multi")
#: How far wrk's bytes per response may be from the mix's expected mean (heads included).
BYTES_TOLERANCE = 0.15


# -- the request mix ---------------------------------------------------------------------------
def _loglen(rng: random.Random, lo: int, hi: int) -> int:
    return math.floor(math.exp(math.log(lo) + rng.random() * (math.log(hi) - math.log(lo))))


def draw_ranges(case: str, rng: random.Random, size: int = SIZE) -> list[tuple[int, int]]:
    """One request's ranges as ``(start, end_exclusive)``, by the rules of ``ranges.lua``."""
    if case == "aligned64k":
        start = rng.randint(0, size // 65536 - 1) * 65536
        return [(start, start + 65536)]
    if case == "offset64k":
        start = rng.randint(0, size - 65536)
        return [(start, start + 65536)]
    if case == "randlen":
        length = _loglen(rng, 1024, size)
        start = rng.randint(0, size - length)
        return [(start, start + length)]
    if case == "multi":
        n = rng.randint(2, 4)
        slot = size // n
        spans = []
        for i in range(n):
            length = _loglen(rng, 1024, 65536)
            start = i * slot + rng.randint(0, slot - length - 1)
            spans.append((start, start + length))
        return spans
    raise ValueError(f"unknown case {case!r}")


def range_header(spans: Sequence[tuple[int, int]]) -> str:
    return "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in spans)


def expected_body_mean(case: str, seed: int, draws: int = 20_000) -> float:
    """Mean body length of a case's mix (multipart framing excluded), from many draws."""
    rng = random.Random(seed)
    return statistics.fmean(
        sum(e - s for s, e in draw_ranges(case, rng)) for _ in range(draws)
    )


# -- checking answers --------------------------------------------------------------------------
def _multipart_parts(body: bytes, boundary: bytes) -> list[tuple[str, bytes]]:
    """``[(content_range, data), ...]`` of a ``multipart/byteranges`` body; raises
    ValueError on any framing error (RFC 9110 §14.6, RFC 2046 §5.1.1: an empty preamble,
    so the body may start with the CRLF that belongs to the first delimiter)."""
    delimiter = b"--" + boundary
    closing = b"\r\n" + delimiter + b"--\r\n"
    if not body.endswith(closing):
        raise ValueError("no closing delimiter")
    body = body[: -len(closing)].removeprefix(b"\r\n")
    if not body.startswith(delimiter + b"\r\n"):
        raise ValueError(f"does not start with the delimiter: {body[:40]!r}")
    parts = []
    for piece in body[len(delimiter) + 2:].split(b"\r\n" + delimiter + b"\r\n"):
        head, sep, data = piece.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part without a blank line after its fields")
        fields = {}
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError(f"bad part field {line!r}")
            fields[name.strip().lower().decode()] = value.strip().decode()
        if "content-range" not in fields:
            raise ValueError("a part without Content-Range")
        parts.append((fields["content-range"], data))
    return parts


def check_answer(
    spans: Sequence[tuple[int, int]], status: int, headers: dict[str, str], body: bytes,
    content: bytes,
) -> str | None:
    """What is wrong with one answer to ``spans`` of ``content`` (None: nothing)."""
    size = len(content)
    if status != 206:
        return f"status {status}, expected 206"
    length = headers.get("content-length")
    if length is None or int(length) != len(body):
        return f"Content-Length {length} for a body of {len(body)} bytes"
    if len(spans) == 1:
        start, end = spans[0]
        want = f"bytes {start}-{end - 1}/{size}"
        if headers.get("content-range") != want:
            return f"Content-Range {headers.get('content-range')!r}, expected {want!r}"
        if body != content[start:end]:
            return f"body of {want} differs from the object's bytes"
        return None
    ctype = headers.get("content-type", "")
    kind, _, params = ctype.partition(";")
    boundary = params.strip().removeprefix("boundary=").strip('"')
    if kind.strip().lower() != "multipart/byteranges" or not boundary:
        return f"Content-Type {ctype!r}, expected multipart/byteranges with a boundary"
    try:
        parts = _multipart_parts(body, boundary.encode())
    except ValueError as exc:
        return f"multipart body: {exc}"
    if len(parts) != len(spans):
        return f"{len(parts)} parts for {len(spans)} ranges"
    for (start, end), (crange, data) in zip(spans, parts, strict=True):
        want = f"bytes {start}-{end - 1}/{size}"
        if crange != want:
            return f"part Content-Range {crange!r}, expected {want!r}"
        if data != content[start:end]:
            return f"part {want} differs from the object's bytes"
    return None


@dataclass(slots=True)
class Checked:
    """A sample of answers: how many, the mean head and framing bytes beside the ranges."""

    answers: int = 0
    overhead: list[int] = field(default_factory=list)  # response bytes beyond the ranges


def check_sample(target: Target, case: str, seed: int, count: int) -> Checked:
    """``count`` requests of the case's mix over one keep-alive connection, each answer
    checked; raises BenchFailure on the first wrong one."""
    content = make_body(SIZE)
    rng = random.Random(seed)
    path = f"/obj/{OBJECT}"
    checked = Checked()
    conn = http.client.HTTPConnection(LOOPBACK, target.port, timeout=10.0)
    try:
        for _ in range(count):
            spans = draw_ranges(case, rng)
            header = range_header(spans)
            conn.request("GET", path, headers={"Range": header})
            resp = conn.getresponse()
            body = resp.read()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            wrong = check_answer(spans, resp.status, headers, body, content)
            if wrong:
                raise BenchFailure(f"{target.label}: {case}: Range: {header}: {wrong}")
            head_bytes = len(f"HTTP/1.1 {resp.status} {resp.reason}\r\n\r\n") + sum(
                len(k) + len(v) + 4 for k, v in resp.getheaders()
            )
            checked.answers += 1
            checked.overhead.append(head_bytes + len(body) - sum(e - s for s, e in spans))
    except (OSError, http.client.HTTPException) as exc:
        raise BenchFailure(f"{target.label}: {case}: request failed: {exc!r}") from exc
    finally:
        conn.close()
    return checked


# -- measuring ---------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every process in group ``pgid`` (a target's server and its
    workers: each runs in a session of its own). On a machine others load, CPU per request
    moves much less than requests per second."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _pgid(target: Target) -> int:
    proc = target.process.proc if target.process else None
    return proc.pid if proc is not None else -1


@dataclass(slots=True)
class CaseRuns:
    """The runs of one case on one server."""

    case: str
    server_key: str
    label: str
    expected_bytes: float  # per response, heads included
    runs: list[WrkResult] = field(default_factory=list)
    cpu_per_request: list[float] = field(default_factory=list)  # seconds, per run
    problems: list[str] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    def median_cpu(self) -> float | None:
        return statistics.median(self.cpu_per_request) if self.cpu_per_request else None


def _bytes_problem(result: WrkResult, expected: float) -> str | None:
    if not result.requests_per_sec:
        return "no requests"
    per = result.bytes_per_sec / result.requests_per_sec
    if abs(per - expected) > BYTES_TOLERANCE * expected:
        return f"{per:,.0f} bytes per response, the mix gives {expected:,.0f}"
    return None


def measure(
    wrk: str, settings: WrkSettings, origin: OriginServer, targets: Sequence[Target],
    cases: Sequence[str], repeat: int, warmup: int, seed: int, check: int,
) -> list[CaseRuns]:
    everything: list[CaseRuns] = []
    url_path = f"/obj/{OBJECT}"
    for case in cases:
        by_target = {}
        for target in targets:
            checked = check_sample(target, case, seed, check)
            overhead = statistics.fmean(checked.overhead)
            expected = expected_body_mean(case, seed) + overhead
            log(f"{case} {target.key}: {checked.answers} answers checked, "
                f"~{overhead:,.0f} bytes of head and framing each")
            by_target[target.key] = CaseRuns(case, target.key, target.label, expected)
            if warmup:
                try:
                    run_wrk(wrk, target.url(url_path),
                            WrkSettings(settings.threads, settings.connections, warmup),
                            SCRIPT, (case, str(seed)))
                except WrkError as exc:
                    log(f"warm-up failed (ignored): {exc}")
                _ensure_alive(target)
        for rep in range(1, repeat + 1):
            run_seed = seed + rep
            for target in targets:
                series = by_target[target.key]
                before = _origin_count(origin)
                cpu_before = group_cpu_seconds(_pgid(target))
                try:
                    result, _raw = run_wrk(wrk, target.url(url_path), settings, SCRIPT,
                                           (case, str(run_seed)))
                except WrkError as exc:
                    series.problems.append(f"run {rep}: wrk failed: {exc}")
                    log(f"{case} {target.key} run {rep}/{repeat}: FAILED: {exc}")
                    _ensure_alive(target)
                    continue
                cpu = group_cpu_seconds(_pgid(target)) - cpu_before
                fetched = _origin_count(origin) - before
                series.runs.append(result)
                if result.requests:
                    series.cpu_per_request.append(cpu / result.requests)
                notes = [result.error_summary()] if result.error_count else []
                if fetched:
                    notes.append(f"{fetched} origin fetches")
                wrong = _bytes_problem(result, series.expected_bytes)
                if wrong:
                    notes.append(wrong)
                if notes:
                    series.problems.append(f"run {rep}: " + "; ".join(notes))
                log(f"{case} {target.key} run {rep}/{repeat} (seed {run_seed}): "
                    f"{result.requests_per_sec:,.0f} req/s, "
                    f"{result.bytes_per_sec / 1e6:,.1f} MB/s, "
                    f"{cpu * 1e6 / max(result.requests or 1, 1):.1f} µs CPU per request"
                    + (f"; ⚠ {'; '.join(notes)}" if notes else ""))
                _ensure_alive(target)
        everything += by_target.values()
    return everything


def markdown_table(everything: Sequence[CaseRuns], subject: str = NodeTarget.key) -> str:
    rows = [
        f"| case | server | req/s | MB/s | p99 latency | CPU µs/req | {subject}/{REFERENCE} "
        "req/s | CPU (theirs/ours) | runs (req/s) | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for series in everything:
        ratio = cpu_ratio = "—"
        if series.server_key == subject:
            ref = next((s for s in everything
                        if s.case == series.case and s.server_key == REFERENCE), None)
            ours = series.median("requests_per_sec")
            theirs = ref.median("requests_per_sec") if ref else None
            if ours is not None and theirs:
                suspect = series.problems or (ref.problems if ref else [])
                ratio = f"**{ours / theirs:.2f}**" + (" ⚠" if suspect else "")
            our_cpu, their_cpu = series.median_cpu(), ref.median_cpu() if ref else None
            if our_cpu and their_cpu:
                cpu_ratio = f"{their_cpu / our_cpu:.2f}"
        cpu_us = series.median_cpu()
        rps = series.median("requests_per_sec")
        bps = series.median("bytes_per_sec")
        runs = " · ".join(f"{r.requests_per_sec:,.0f}" for r in series.runs) or "—"
        rows.append(
            f"| {series.case} | {series.label} "
            f"| {'—' if rps is None else f'{rps:,.0f}'} "
            f"| {'—' if bps is None else f'{bps / 1e6:,.1f}'} "
            f"| {fmt_latency(series.median('latency_p99'))} "
            f"| {'—' if cpu_us is None else f'{cpu_us * 1e6:.1f}'} | {ratio} | {cpu_ratio} "
            f"| {runs} "
            f"| {'⚠ ' + ' / '.join(series.problems) if series.problems else ''} |"
        )
    return "\n".join(rows)


# -- the command -------------------------------------------------------------------------------
def _cases(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(CASES)}"
        )
    return names


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark Range HITs at any offset (random offsets and lengths, several "
        "ranges) of the reelcdn node side by side with nginx proxy_cache.",
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--connections", type=positive_int, default=64,
                        help="wrk -c (default 64)")
    parser.add_argument("--duration", type=_duration, default=5,
                        help="wrk -d per run, e.g. 5s (default 5s)")
    parser.add_argument("--repeat", type=positive_int, default=3,
                        help="recorded runs per server and case (default 3)")
    parser.add_argument("--warmup", type=int, default=1, metavar="SECONDS",
                        help="unrecorded wrk run per server and case (default 1, 0 = none)")
    parser.add_argument("--cases", type=_cases, default=list(CASES),
                        help=f"comma-separated cases (default {','.join(CASES)})")
    parser.add_argument("--seed", type=int, default=1,
                        help="run k of every case uses seed + k (default 1)")
    parser.add_argument("--check", type=positive_int, default=200,
                        help="answers checked per server and case before measuring (default 200)")
    parser.add_argument("--only", choices=[t.key for t in TARGETS],
                        help="benchmark one server only")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="server processes each (default 1)")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def render_report(everything: Sequence[CaseRuns], info: machine.MachineInfo,
                  settings: WrkSettings, args: argparse.Namespace, argv: Sequence[str],
                  started: datetime, load_end: str) -> str:
    return "\n".join([
        f"### Range HIT run, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{shlex.join([*PROG.split(), *argv])}`",
        "",
        f"wrk `{settings.describe()}` with `ranges.lua`, {args.repeat} recorded runs per server "
        f"and case (servers alternating, run k seeded {args.seed}+k, {args.check} answers per "
        "server and case checked byte for byte first); values are medians; MB/s as counted by "
        "wrk (heads included); CPU µs/req: user + system time of the server's processes "
        "during the run over its requests (steadier than req/s on a loaded machine). "
        "Ratios above 1: reelcdn ahead.",
        "",
        markdown_table(everything),
        "",
        "Machine:",
        "",
        *info.markdown_lines(),
        f"- load average at the end: {load_end}",
    ]) + "\n"


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    selected = [t for t in TARGETS if args.only in (None, t.key)]
    missing = check_prerequisites(args, selected)
    if missing:
        print(f"{PROG}: missing prerequisites:", file=sys.stderr)
        for item in missing:
            print(f"  - {item}", file=sys.stderr)
        return 2
    wrk = shutil.which("wrk")
    assert wrk is not None
    settings = WrkSettings(args.threads, args.connections, args.duration)
    options = _options(args)
    tools = {"wrk": machine.wrk_version(wrk)}
    if any(t.key == "nginx" for t in selected):
        nginx = find_nginx(args.nginx)
        assert nginx is not None
        tools = {"nginx": machine.nginx_version(nginx), **tools}
    if any(t.key == "node" for t in selected):
        tools["reelcdn"] = machine.source_revision(Path(__file__).resolve().parents[2])
    info = machine.collect(tools)
    started = datetime.now(UTC)
    per_run = args.duration + 1
    budget = len(args.cases) * len(selected) * (args.repeat * per_run + args.warmup + 2)
    log(f"about {budget} s of load ({len(args.cases)} cases × {len(selected)} servers × "
        f"{args.repeat} runs of {args.duration} s, plus warm-ups and checks)")

    workdir = Path(tempfile.mkdtemp(prefix="reelcdn-bench-"))
    running: list[Target | OriginServer] = []
    try:
        origin = OriginServer(workdir)
        running.append(origin)
        origin.start()
        targets: list[Target] = []
        for cls in selected:
            target = cls(options, workdir, origin)
            running.append(target)
            target.start()
            targets.append(target)
            log(f"{target.key} ready on {target.url('')}: {warm(target, OBJECT)}")
        t0 = time.monotonic()
        everything = measure(wrk, settings, origin, targets, args.cases, args.repeat,
                             args.warmup, args.seed, args.check)
        log(f"measured in {time.monotonic() - t0:.0f} s")
    except StartupError as exc:
        print(f"{PROG}: {exc.name} failed to start: {exc.reason}", file=sys.stderr)
        if exc.details.strip():
            print(f"--- {exc.name} output (tail) ---\n{exc.details}", file=sys.stderr)
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

    report = render_report(everything, info, settings, args, argv, started, machine.loadavg())
    print(report)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as fh:
            fh.write("\n" + report)
        log(f"appended to {args.markdown}")
    return 1 if any(not s.runs or s.problems for s in everything) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())
