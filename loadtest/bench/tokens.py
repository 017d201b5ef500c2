"""What checking signed-URL tokens costs on a cache HIT: one node, the same 2 KiB object behind a
protected path and behind an open one, in the same run.

Why this shape (docs/benchmarks/methodology.md): the question is a ratio on one node — a HIT
that passes the token gate (edge/auth/gate.py) against the same HIT that needs no token — so
one node process serves both paths, its ``[tokens]`` table protecting ``/obj/2k`` and leaving
``/obj/2k-open`` (the same bytes) open, and the series alternate run by run with the same wrk
settings; the report gives medians. The origin's request counter is read around every run and
must not move (all HITs), wrk's non-2xx count must be 0 (403 for every request of the forged
series), and after every run one request per series is checked: a 200 with a ``hit`` in its
``Cache-Status``, or the 403 with its ``Reelcdn-Token-Error``.

The series:

- ``token``: ``/obj/2k?token=T``, one valid native token every time: after the first request
  the gate's grant cache answers (a dictionary lookup keyed by path, query, Cookie, Host and
  client address), the case of a player or a benchmark asking again;
- ``open``: ``/obj/2k-open`` without a token: the gate only matches the path against
  ``protect``. ``token``/``open`` is the headline, target ≥ 0.9;
- ``token-lua``: ``token`` again, sent by the wrk Lua script the next two use (one request
  string per token, prebuilt): the control for the CPU wrk spends running Lua per request,
  which the two scripted series pay and the plain ones do not;
- ``cycle``: ``--tokens`` (10,000) different valid tokens, one per request in turn: each is
  verified (an HMAC) in a run's first pass (the ``verify`` run before it evicts them from the
  grant cache) and then found there, so at tens of thousands of requests a second most
  requests are cache hits, in a bigger dictionary;
- ``verify``: ``--verify-tokens`` (40,000) tokens in turn, more than the grant cache holds
  (``CACHE_ENTRIES``): a cycle longer than a FIFO/LRU's capacity never finds its entry, so
  every request is a full verification — the gate's uncached cost;
- ``forged``: one token signed with another secret: 403 ``bad-signature`` for every request,
  each verified (refusals are never remembered): what a flood of forged tokens costs the node.

Usage::

    python -m reelcdn.loadtest.bench.tokens [--repeat 5] [--duration 5s]
                                            [--tokens 10000] [--verify-tokens 40000]
                                            [--markdown docs/benchmarks/YYYY-MM-DD.md]

Exit status: 0 measured, 1 a server failed to start / warm / stay up or a check failed,
2 missing prerequisites or bad arguments.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import secrets
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from . import machine
from .common import (
    BenchFailure,
    add_server_arguments,
    log,
    non_negative_int,
    positive_int,
    run_main,
)
from .procs import LOOPBACK, HttpReply, StartupError
from .report import Run, fmt_latency, fmt_rate
from .servers import BenchOptions, NodeTarget, OriginServer, cache_status_is_hit, stop_all
from .wrk import WrkError, WrkResult, WrkSettings, parse_duration, run_wrk

PROG = "python -m reelcdn.loadtest.bench.tokens"
PROTECTED = "/obj/2k"
OPEN = "/obj/2k-open"
SIZE = 2048
KID = "bench"
TOKEN_LIFETIME = 3600  # seconds: longer than any run
WARM_ATTEMPTS = 6
TARGET_RATIO = 0.9


def _duration(value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark what checking signed-URL tokens costs on a cache HIT: a 2 KiB "
        "HIT with a valid native token against the same HIT without one, same node, same run "
        "(medians of N alternating runs), plus many tokens, uncached verification and forged "
        "tokens.",
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--connections", type=positive_int, default=64, help="wrk -c (default 64)")
    parser.add_argument(
        "--duration", type=_duration, default=5, help="wrk -d, e.g. 5s, 1m (default 5s)"
    )
    parser.add_argument(
        "--repeat", type=positive_int, default=5, help="recorded runs per series (default 5)"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=2,
        metavar="SECONDS",
        help="unrecorded wrk run per series before measuring (default 2, 0 = none)",
    )
    parser.add_argument(
        "--tokens",
        type=positive_int,
        default=10_000,
        help="different valid tokens of the cycle series (default 10000)",
    )
    parser.add_argument(
        "--verify-tokens",
        type=positive_int,
        default=40_000,
        help="tokens of the verify series; more than the gate's grant cache holds, so that "
        "none is found there (default 40000)",
    )
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections (wrk needs a connection per thread)")
    from reelcdn.edge.auth.gate import CACHE_ENTRIES

    if args.verify_tokens <= CACHE_ENTRIES:
        parser.error(
            f"--verify-tokens must exceed the grant cache's {CACHE_ENTRIES} entries, or the "
            "series measures cache hits, not verification"
        )
    return args


class TokenNodeTarget(NodeTarget):
    """The bench node with a ``[tokens]`` table: native tokens required on ``/obj/2k``."""

    label = "reelcdn node (1 process), [tokens] native"

    def __init__(self, options: BenchOptions, workdir: Path, origin: OriginServer,
                 secret: str) -> None:
        super().__init__(options, workdir, origin)
        self.secret = secret

    def render_config(self) -> str:
        return super().render_config() + "\n" + tokens_table(self.NAME, self.secret)


def tokens_table(name: str, secret: str) -> str:
    """The node's ``[tokens]`` table (the node's and the in-process breakdown's)."""
    return (
        f"[node.{name}.tokens]\n"
        'format = "native"\n'
        f'keys = {{ {KID} = "{secret}" }}\n'
        f'protect = ["{PROTECTED}"]\n'
    )


@dataclass(frozen=True, slots=True)
class Spec:
    """One series: what wrk asks for, and what every answer must be."""

    key: str
    what: str
    target: str  # the URL path wrk requests (scripted series: the script decides)
    status: int  # 200 (a HIT) or 403
    script: str | None = None  # a generated wrk Lua script
    sample: str = ""  # the path checked after each run (default: target)
    refusal: str = ""  # the Reelcdn-Token-Error a 403 must name


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in process group ``pgid`` (the node and any
    child), in seconds, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()  # fields[0] is the state
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


@dataclass(slots=True)
class TokenSeries:
    spec: Spec
    runs: list[Run] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # node CPU per request, each run

    def flagged(self, run: Run) -> bool:
        """A run with socket errors, origin traffic, or answers not all of the expected kind."""
        result = run.result
        if run.origin_fetches or any(result.socket_errors.values()):
            return True
        if self.spec.status == 200:
            return result.non_2xx_3xx != 0
        return result.requests is None or result.non_2xx_3xx != result.requests

    def median(self, attr: str) -> float | None:
        values = [v for r in self.runs if (v := getattr(r.result, attr)) is not None]
        return statistics.median(values) if values else None

    def median_cpu(self) -> float | None:
        return statistics.median(self.cpu_us) if self.cpu_us else None

    def notes(self) -> str:
        notes = []
        n = len(self.runs) + len(self.failures)
        if self.failures:
            notes.append(f"⚠ wrk failed in {len(self.failures)}/{n} runs")
        bad = [r for r in self.runs if self.flagged(r)]
        if bad:
            worst = max(bad, key=lambda r: r.result.error_count).result
            notes.append(
                f"⚠ {len(bad)}/{n} runs flagged (worst: {worst.error_summary() or 'no errors'}, "
                f"{sum(r.origin_fetches for r in bad)} origin fetches)"
            )
        return "; ".join(notes)

    @property
    def suspect(self) -> bool:
        return bool(self.failures) or any(self.flagged(r) for r in self.runs)


def mint(secret: bytes, count: int, expires: int, acl: str = PROTECTED) -> list[str]:
    """``count`` different valid tokens for ``acl`` (each its own expiry second, so each its
    own signature)."""
    from reelcdn.edge.auth import native

    return [native.sign(secret, KID, acl=acl, expires=expires + i) for i in range(count)]


def write_cycle_script(workdir: Path, name: str, tokens: Sequence[str], threads: int) -> str:
    """A wrk script sending ``PROTECTED?token=…`` with each token in turn.

    The tokens are read from a file beside the script when each wrk thread starts, and every
    request string is built then, so a request costs wrk a table index. With several wrk
    threads, thread ``i`` takes every ``threads``-th token, so no two threads send the same
    token close together (which would turn the verify series into cache hits).
    """
    token_file = workdir / f"{name}.tokens"
    token_file.write_text("\n".join(tokens) + "\n", encoding="ascii")
    script = workdir / f"{name}.lua"
    script.write_text(
        f"-- generated by {PROG}: {len(tokens)} tokens, one per request in turn\n"
        "local counter = 0\n"
        "function setup(thread)\n"
        '  thread:set("id", counter)\n'
        "  counter = counter + 1\n"
        "end\n"
        "local requests = {}\n"
        "local n, i = 0, 0\n"
        "function init(args)\n"
        "  local k = 0\n"
        f'  for token in io.lines("{token_file}") do\n'
        f"    if k % {threads} == id then\n"
        "      n = n + 1\n"
        f'      requests[n] = wrk.format("GET", "{PROTECTED}?token=" .. token)\n'
        "    end\n"
        "    k = k + 1\n"
        "  end\n"
        "end\n"
        "function request()\n"
        "  i = i % n + 1\n"
        "  return requests[i]\n"
        "end\n",
        encoding="ascii",
    )
    return str(script)


def check_prerequisites(options: BenchOptions) -> list[str]:
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk: not on PATH (apt-get install wrk)")
    if importlib.util.find_spec("aiohttp") is None:
        missing.append("aiohttp: not importable, the origin needs it (pip install aiohttp)")
    return missing + NodeTarget.missing(options)


def _get(node: NodeTarget, path: str) -> HttpReply:
    try:
        return node.get(path)
    except (OSError, http.client.HTTPException) as exc:
        raise BenchFailure(
            f"node: GET {path} failed: {exc!r}\n--- node output (tail) ---\n{node.diagnostics()}"
        ) from exc


def check_answer(node: NodeTarget, spec: Spec) -> str:
    """One request of the series, held to what every answer must be; returns a description."""
    path = spec.sample or spec.target
    reply = _get(node, path)
    if spec.status == 200:
        status = node.cache_status(reply)
        if reply.status != 200 or len(reply.body) != SIZE or not node.is_hit(reply):
            raise BenchFailure(
                f"{spec.key}: GET {path[:60]}… -> {reply.status}, {len(reply.body)} bytes, "
                f"Cache-Status {status!r} (expected a 200 HIT of {SIZE} bytes)"
            )
        return f"200, Cache-Status: {status}"
    error = reply.header("Reelcdn-Token-Error")
    if reply.status != spec.status or error != spec.refusal:
        raise BenchFailure(
            f"{spec.key}: GET {path[:60]}… -> {reply.status}, Reelcdn-Token-Error {error!r} "
            f"(expected {spec.status}, {spec.refusal!r})"
        )
    return f"{reply.status}, Reelcdn-Token-Error: {error}"


def warm(node: NodeTarget, path: str) -> str:
    """Fetch until the node answers from its cache; returns the HIT's cache status."""
    seen = []
    for attempt in range(WARM_ATTEMPTS):
        reply = _get(node, path)
        status = node.cache_status(reply)
        seen.append(status or "(none)")
        if reply.status != 200 or len(reply.body) != SIZE:
            raise BenchFailure(
                f"node: GET {path[:60]} -> {reply.status}, {len(reply.body)} bytes "
                f"(expected 200, {SIZE} bytes)\n{reply.body[:200]!r}"
            )
        if attempt > 0 and cache_status_is_hit(status):
            return status or ""
    raise BenchFailure(
        f"node: GET {path[:60]} never reported a HIT in {WARM_ATTEMPTS} requests "
        f"(cache status seen: {', '.join(seen)})"
    )


def _ensure_alive(node: NodeTarget) -> None:
    status = node.process.exit_status() if node.process else None
    if status is not None:
        raise BenchFailure(
            f"node exited with status {status} during the benchmark\n" + node.diagnostics()
        )


def _origin_count(origin: OriginServer) -> int:
    try:
        return origin.count()
    except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
        raise BenchFailure(f"origin: GET /__count failed: {exc!r}") from exc


def _describe(result: WrkResult) -> str:
    errors = result.error_summary()
    return f"{result.requests_per_sec:,.0f} req/s" + (f", {errors}" if errors else "")


def measure(
    wrk: str,
    settings: WrkSettings,
    origin: OriginServer,
    node: NodeTarget,
    specs: Sequence[Spec],
    repeat: int,
    warmup: int,
) -> list[TokenSeries]:
    """The series alternate run by run (token, open, token-lua, cycle, verify, forged, token,
    …), ``repeat`` recorded runs each, after one unrecorded warm-up run each."""
    all_series = [TokenSeries(spec) for spec in specs]
    assert node.process is not None and node.process.proc is not None  # started
    pgid = node.process.proc.pid  # its own session: the pid is the group id
    if warmup:
        for spec in specs:
            log(f"{spec.key}: {warmup} s unrecorded warm-up")
            try:
                run_wrk(wrk, node.url(spec.target),
                        WrkSettings(settings.threads, settings.connections, warmup), spec.script)
            except WrkError as exc:
                log(f"warm-up failed (ignored): {exc}")
            _ensure_alive(node)
    for rep in range(1, repeat + 1):
        for series in all_series:
            spec = series.spec
            before = _origin_count(origin)
            cpu_before = group_cpu_seconds(pgid)
            try:
                result, _raw = run_wrk(wrk, node.url(spec.target), settings, spec.script)
            except WrkError as exc:
                series.failures.append(str(exc))
                log(f"{spec.key} run {rep}/{repeat}: FAILED: {exc}")
                _ensure_alive(node)
                continue
            cpu = group_cpu_seconds(pgid) - cpu_before
            fetched = _origin_count(origin) - before
            run = Run(result, fetched)
            series.runs.append(run)
            if result.requests:
                series.cpu_us.append(cpu / result.requests * 1e6)
            _ensure_alive(node)
            sample = check_answer(node, spec)
            log(
                f"{spec.key} run {rep}/{repeat}: {_describe(result)}"
                + (f", node CPU {series.cpu_us[-1]:.1f} µs/request" if result.requests else "")
                + (f", {fetched} origin fetches" if fetched else "")
                + (" ⚠" if series.flagged(run) else "")
                + f"; sample: {sample}"
            )
    return all_series


def _ratio(series: TokenSeries, reference: TokenSeries) -> tuple[float | None, str]:
    ours, theirs = series.median("requests_per_sec"), reference.median("requests_per_sec")
    if ours is None or not theirs:
        return None, "—"
    warn = " ⚠" if series.suspect or reference.suspect else ""
    return ours / theirs, f"{ours / theirs:.2f}{warn}"


def _cpu_ratio(series: TokenSeries, reference: TokenSeries) -> tuple[float | None, str]:
    """The reference's node CPU per request ÷ this series': the throughput ratio the node
    would reach if it had a core to itself (below 1: this series costs more)."""
    ours, theirs = series.median_cpu(), reference.median_cpu()
    if not ours or theirs is None:
        return None, "—"
    warn = " ⚠" if series.suspect or reference.suspect else ""
    return theirs / ours, f"{theirs / ours:.2f}{warn}"


#: The series each one is compared with.
REFERENCE_OF = {"token": "open", "token-lua": "open", "cycle": "token-lua",
                "verify": "token-lua", "forged": "open"}


def results_table(all_series: Sequence[TokenSeries]) -> str:
    by_key = {s.spec.key: s for s in all_series}
    rows = [
        "| series | what wrk sends | answers | req/s | p99 latency | node CPU µs/req "
        "| vs | req/s ratio | CPU ratio | runs (req/s) | runs (CPU µs/req) | notes |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---|---|---|",
    ]
    for series in all_series:
        spec = series.spec
        ref = by_key.get(REFERENCE_OF.get(spec.key, ""))
        ratio_text = cpu_text = "—"
        if ref is not None:
            ratio_text = _ratio(series, ref)[1]
            cpu_text = _cpu_ratio(series, ref)[1]
        if spec.key == "token":
            ratio_text, cpu_text = f"**{ratio_text}**", f"**{cpu_text}**"
        per_run = " · ".join(
            f"{r.result.requests_per_sec:,.0f}" + (" ⚠" if series.flagged(r) else "")
            for r in series.runs
        )
        per_run_cpu = " · ".join(f"{v:.1f}" for v in series.cpu_us)
        cpu = series.median_cpu()
        answers = "200 HIT" if spec.status == 200 else f"{spec.status} {spec.refusal}"
        rows.append(
            f"| {spec.key} | {spec.what} | {answers} "
            f"| {fmt_rate(series.median('requests_per_sec'))} "
            f"| {fmt_latency(series.median('latency_p99'))} "
            f"| {'—' if cpu is None else f'{cpu:.1f}'} "
            f"| {ref.spec.key if ref else '—'} | {ratio_text} | {cpu_text} "
            f"| {per_run or '—'} | {per_run_cpu or '—'} | {series.notes()} |"
        )
    return "\n".join(rows)


def headline(all_series: Sequence[TokenSeries]) -> str:
    by_key = {s.spec.key: s for s in all_series}
    if "token" not in by_key or "open" not in by_key:
        return ""
    ratio, text = _ratio(by_key["token"], by_key["open"])
    cpu_ratio, cpu_text = _cpu_ratio(by_key["token"], by_key["open"])
    if ratio is None:
        return "Headline: no ratio (a series has no runs)."
    verdict = "met" if ratio >= TARGET_RATIO else "**missed**"
    text = f"{ratio:.3f}" + text[4:]  # three decimals: 0.899 is not shown as a missed 0.90
    return (
        f"Headline: HIT 2 KiB with a valid native token ÷ the same HIT without one, same node: "
        f"**{text}** on req/s (target ≥ {TARGET_RATIO}: {verdict}); "
        f"on the node's CPU per request: {cpu_text}."
    )


@dataclass(frozen=True, slots=True)
class Piece:
    """One step of the request path timed in-process: with the token and without."""

    label: str
    token_us: float
    open_us: float | None  # None: the step only exists with a token


def _us_per_call(func: Callable[[], object], repeat: int, number: int) -> float:
    """Median over ``repeat`` timings of ``number`` calls, µs per call."""
    times = timeit.repeat(func, number=number, repeat=repeat)
    return statistics.median(times) / number * 1e6


def time_pieces(secret: str, verify_tokens: int, repeat: int = 7) -> list[Piece]:
    """The steps of a HIT that differ between the ``token`` and the ``open`` series, timed
    in this process on what the node runs (the reader twin ``reelcdn.extensions`` picks, the
    key policy and the gate built from the node's own TOML): reading wrk's request, its cache
    key, the gate with the grant cached, and the gate with nothing cached (and its parts)."""
    import hashlib
    import hmac

    from reelcdn.edge.auth import native
    from reelcdn.edge.auth.gate import TokenGate
    from reelcdn.edge.auth.verdict import Grant
    from reelcdn.edge.cache.keys import KeyPolicy
    from reelcdn.edge.config import topology_from_text
    from reelcdn.extensions import reader

    config = topology_from_text(
        f'[node.bench]\nlisten = "{LOOPBACK}:1"\nupstream = "http://{LOOPBACK}:2"\n'
        + tokens_table("bench", secret), base_dir=".").nodes["bench"]
    assert config.tokens is not None
    gate, keys = TokenGate(config.tokens), KeyPolicy.from_config(config)
    now = time.time()
    valid = mint(secret.encode(), verify_tokens, int(now) + TOKEN_LIFETIME)

    class Sink:
        last: Any = None

        def request_complete(self, request: Any) -> None:
            self.last = request

        def reject(self, status: int, reason: str) -> None:
            raise BenchFailure(f"the reader refused a benchmark request: {status} {reason}")

        def expect_continue(self) -> None:
            pass

    def read(target: str) -> tuple[Callable[[], object], Any]:
        data = f"GET {target} HTTP/1.1\r\nHost: {LOOPBACK}:8080\r\n\r\n".encode()
        sink = Sink()
        feeder = reader.RequestReader(sink, config.limits, frozenset(), time.monotonic)
        feeder.feed(data)
        sink.last.client_ip = LOOPBACK
        return partial(feeder.feed, data), sink.last

    feed_token, token_req = read(f"{PROTECTED}?token={valid[0]}")
    feed_open, open_req = read(OPEN)
    uncached = [read(f"{PROTECTED}?token={t}")[1] for t in valid]
    position = iter(range(1 << 62))

    def check_uncached() -> object:
        return gate.check(uncached[next(position) % verify_tokens], now)

    for _ in range(verify_tokens):  # fill the grant cache: what follows always misses it
        check_uncached()
    if gate.check(token_req, now).__class__ is not Grant or \
            gate.check(open_req, now) is not None:
        raise BenchFailure("in-process: the gate refuses the token or checks the open path")
    mac_input = native.DOMAIN + valid[0].split(".")[0].encode()
    n = 20_000
    return [
        Piece("read the request (`RequestReader.feed`, wrk's GET)",
              _us_per_call(feed_token, repeat, n), _us_per_call(feed_open, repeat, n)),
        Piece("its cache key (`KeyPolicy.for_request`: the token left out)",
              _us_per_call(partial(keys.for_request, token_req), repeat, n),
              _us_per_call(partial(keys.for_request, open_req), repeat, n)),
        Piece("the gate, grant cached (`TokenGate.check`; open: `protect` does not match)",
              _us_per_call(partial(gate.check, token_req, now), repeat, n),
              _us_per_call(partial(gate.check, open_req, now), repeat, n)),
        Piece(f"the gate, nothing cached ({verify_tokens:,} tokens in turn)",
              _us_per_call(check_uncached, repeat, n), None),
        Piece("… of which the token's signature and claims (`native.verify_token`)",
              _us_per_call(partial(native.verify_token, valid[0], gate.ring), repeat, n), None),
        Piece("… of which the HMAC-SHA256 itself",
              _us_per_call(lambda: hmac.new(secret.encode(), mac_input, hashlib.sha256).digest(),
                           repeat, n), None),
    ]


def pieces_table(pieces: Sequence[Piece]) -> str:
    rows = ["| step | µs with the token | µs without | difference |", "|---|---:|---:|---:|"]
    for piece in pieces:
        if piece.open_us is None:
            rows.append(f"| {piece.label} | {piece.token_us:.2f} | — | — |")
        else:
            rows.append(f"| {piece.label} | {piece.token_us:.2f} | {piece.open_us:.2f} "
                        f"| {piece.token_us - piece.open_us:+.2f} |")
    extra = sum(p.token_us - p.open_us for p in pieces[:3] if p.open_us is not None)
    rows += ["", f"The first three rows are what a `token` HIT does that an `open` one does not: "
                 f"**{extra:+.2f} µs** per request in all."]
    return "\n".join(rows)


def render_report(
    all_series: Sequence[TokenSeries],
    info: machine.MachineInfo,
    settings: WrkSettings,
    args: argparse.Namespace,
    argv: Sequence[str],
    started: datetime,
    node: NodeTarget,
    cache_entries: int,
    pieces: Sequence[Piece],
) -> str:
    lines = [
        f"### Token check on a cache HIT, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{shlex.join([*PROG.split(), *argv])}`",
        "",
        f"One node process with `[node.bench.tokens]` `format = \"native\"`, "
        f"`protect = [\"{PROTECTED}\"]`; `{OPEN}` is the same 2 KiB object, unprotected. "
        f"wrk `{settings.describe()}`, {args.repeat} recorded run"
        f"{'s' if args.repeat > 1 else ''} per series (series alternating run by run, after a "
        f"{args.warmup} s unrecorded warm-up each); values are medians. Every run: the origin's "
        "request counter did not move unless flagged (⚠), wrk counted no non-2xx answer (the "
        "forged series: every answer a 403), and one request after it was checked (a 200 with "
        "`hit` in `Cache-Status`, or the 403's `Reelcdn-Token-Error`). Node CPU: utime + stime "
        "of the node process over the run ÷ the requests wrk counted (what a request costs the "
        "node, whatever else wants the cores). req/s ratio: this series ÷ the `vs` series; "
        "CPU ratio: the `vs` series' CPU per request ÷ this one's (the throughput ratio on a "
        "core of its own).",
        "",
        results_table(all_series),
        "",
        headline(all_series),
        "",
        f"What the series measure: `token` repeats one token, so after its first request the "
        f"gate's grant cache answers (path, query, Cookie, Host, client address → grant); "
        f"`token-lua` is the same through the Lua script the next two use (its cost to wrk); "
        f"`cycle` sends {args.tokens:,} different tokens in turn: each run's first pass verifies "
        "them (the `verify` run before it has pushed them out of the grant cache), then they "
        f"are found there; `verify` sends {args.verify_tokens:,} "
        f"tokens in turn, more than the grant cache's {cache_entries:,} entries, so none is ever "
        "found there and every request is an HMAC-SHA256 verification; `forged` sends one "
        "token signed with another secret: refusals are never cached, so every request is "
        "verified and refused.",
        "",
        "Where the difference is: the steps of a HIT that differ with a token, timed in the "
        "bench process after the runs (the node's reader twin, key policy and gate, built from "
        "the same TOML; median of 7 timings of 20,000 calls; Python-level timings, no I/O):",
        "",
        pieces_table(pieces),
        "",
        "Machine:",
        "",
        *info.markdown_lines(),
    ]
    extra = f" {shlex.join(node.options.node_args)}" if node.options.node_args else ""
    lines.append(f"- node command: `{node.command_line()} node --config … --name bench{extra}`")
    return "\n".join(lines) + "\n"


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    options = BenchOptions(
        connections=args.connections,
        nginx_bin=None,
        node_cmd=tuple(shlex.split(args.node_cmd)) if args.node_cmd else None,
        node_args=tuple(shlex.split(args.node_args)),
    )
    missing = check_prerequisites(options)
    if missing:
        print(f"{PROG}: missing prerequisites:", file=sys.stderr)
        for item in missing:
            print(f"  - {item}", file=sys.stderr)
        return 2
    from reelcdn.edge.auth.gate import CACHE_ENTRIES

    wrk = shutil.which("wrk")
    assert wrk is not None  # checked above
    settings = WrkSettings(args.threads, args.connections, args.duration)
    info = machine.collect({
        "wrk": machine.wrk_version(wrk),
        "reelcdn": machine.source_revision(Path(__file__).resolve().parents[2]),
    })
    started_at = datetime.now(UTC)

    secret = secrets.token_urlsafe(24)
    expires = int(time.time()) + TOKEN_LIFETIME
    t0 = time.monotonic()
    valid = mint(secret.encode(), max(args.tokens, args.verify_tokens), expires)
    forged = mint(b"not-the-node-secret-" + secret.encode(), 1, expires)[0]
    log(f"minted {len(valid):,} tokens in {time.monotonic() - t0:.1f} s")

    workdir = Path(tempfile.mkdtemp(prefix="reelcdn-bench-tokens-"))
    running: list[NodeTarget | OriginServer] = []
    try:
        one = write_cycle_script(workdir, "one", valid[:1], args.threads)
        cycle = write_cycle_script(workdir, "cycle", valid[: args.tokens], args.threads)
        verify = write_cycle_script(workdir, "verify", valid[: args.verify_tokens], args.threads)
        token_path = f"{PROTECTED}?token={valid[0]}"
        specs = [
            Spec("token", f"`{PROTECTED}?token=T`, one valid token", token_path, 200),
            Spec("open", f"`{OPEN}`, no token (not protected)", OPEN, 200),
            Spec("token-lua", "as `token`, through the Lua script", PROTECTED, 200, one,
                 sample=token_path),
            Spec("cycle", f"{args.tokens:,} valid tokens in turn (Lua)", PROTECTED, 200, cycle,
                 sample=f"{PROTECTED}?token={valid[args.tokens - 1]}"),
            Spec("verify", f"{args.verify_tokens:,} valid tokens in turn (Lua)", PROTECTED, 200,
                 verify, sample=f"{PROTECTED}?token={valid[args.verify_tokens - 1]}"),
            Spec("forged", "one token signed with another secret",
                 f"{PROTECTED}?token={forged}", 403, refusal="bad-signature"),
        ]
        origin = OriginServer(workdir)
        running.append(origin)
        origin.start()
        log(f"origin ready on {origin.base_url}")
        node = TokenNodeTarget(options, workdir, origin, secret)
        running.append(node)
        node.start()
        log(f"node ready on http://{LOOPBACK}:{node.port}")
        for path in (token_path, OPEN):
            log(f"node {path[:40]} warm: {warm(node, path)}")
        for spec in specs:
            log(f"{spec.key}: {check_answer(node, spec)}")
        t0 = time.monotonic()
        all_series = measure(wrk, settings, origin, node, specs, args.repeat, args.warmup)
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
        stop_all(running)  # type: ignore[arg-type]
        if args.keep_temp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    log("timing the steps that differ, in-process")
    pieces = time_pieces(secret, args.verify_tokens)
    report = render_report(all_series, info, settings, args, argv, started_at, node,
                           CACHE_ENTRIES, pieces)
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
