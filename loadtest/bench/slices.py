"""Slices (``slice_size``, docs/slices.md): what a cold range moves, and whole-object HITs.

Two measures, each side by side in one run on one machine:

1. **Cold ``bytes=0-0`` through three tiers** (shield → regional → edge, each its own node
   process, the origin ``bench/sliceorigin.py`` answering Range): the bytes each link moved
   for one request of the first byte of a cold object, with slicing on (``slice_size``) and
   off. Bytes are read where they leave: the origin's own count for origin → shield, each
   node's ``reelcdn_bytes_sent`` for the links below it, after the tiers went quiet (an
   unsliced fill goes on after the client's byte has left). Medians of ``--repeat`` cold
   objects per chain, chains alternating.
2. **Whole-object HITs** of one stored object: wrk against the sliced edge, the unsliced edge
   and nginx with its ``slice`` module (``proxy_cache_key $uri$slice_range``), servers
   alternating, medians of ``--repeat`` runs; the origin's request count must not move.
   Beside MB/s, each server's CPU time (user + system, its process group) per response,
   which a machine loaded by others moves much less than throughput.

Usage::

    python -m reelcdn.loadtest.bench.slices [--repeat 3] [--duration 5s] [--size 32MiB]
                                            [--slice 1MiB] [--connections 16]
                                            [--markdown docs/benchmarks/YYYY-MM-DD.md]

Exit status: 0 measured, 1 a server failed or an answer was wrong, 2 missing prerequisites.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import machine
from .common import BenchFailure, byte_size, log, positive_int, run_main
from .origin import make_body
from .procs import LOOPBACK, ManagedProcess, StartupError, free_port, http_get, port_open
from .ranges import group_cpu_seconds
from .servers import BenchOptions, NginxTarget, NodeTarget, Target, find_nginx, stop_all
from .wrk import WrkError, WrkSettings, parse_duration, run_wrk

PROG = "python -m reelcdn.loadtest.bench.slices"
HOT = "/big/hot.mp4"
SETTLE_LIMIT = 30.0  # seconds a cold request's fills may take to go quiet
_BYTES_SENT = re.compile(r"^reelcdn_bytes_sent(?:_total)?(?:\{[^}]*\})?\s+(\S+)$", re.MULTILINE)


class SliceOrigin:
    """``bench/sliceorigin.py`` in a subprocess."""

    def __init__(self, workdir: Path, size: int) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            "origin",
            [sys.executable, "-m", "reelcdn.loadtest.bench.sliceorigin", "--port",
             str(self.port), "--size", str(size)],
            workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self.process.start()
        self.process.wait_ready(lambda: http_get(self.port, "/__count").status == 200,
                                "GET /__count answered 200")

    def counts(self) -> dict:
        return json.loads(http_get(self.port, "/__count").body)

    def stop(self) -> None:
        self.process.stop()


class ChainNode(NodeTarget):
    """One node of a three-tier chain: its upstream is the tier above (or the origin)."""

    def __init__(self, options: BenchOptions, workdir: Path, name: str, upstream: str,
                 slice_size: int) -> None:
        super().__init__(options, workdir, None)  # type: ignore[arg-type]
        self.name = name
        self.upstream = upstream
        self.slice_size = slice_size
        self.config_path = workdir / f"{name}.toml"
        self.label = f"reelcdn {name}"

    def render_config(self) -> str:
        return (
            f"[node.{self.name}]\n"
            f'listen = "{LOOPBACK}:{self.port}"\n'
            f'admin = "{LOOPBACK}:{self.admin_port}"\n'
            f'upstream = "{self.upstream}"\n'
            'cache_memory = "512MiB"\n'
            f"slice_size = {self.slice_size}\n"
            'slice_paths = ["/big/*"]\n'
        )

    def start(self) -> None:
        self.config_path.write_text(self.render_config())
        argv = [*self.command, "node", "--config", str(self.config_path), "--name", self.name]
        self.process = ManagedProcess(self.name, argv, self.workdir,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.process.start()
        self.process.wait_ready(
            lambda: http_get(self.admin_port, "/health", timeout=1.0).status == 200
            and port_open(self.port),
            f"{self.name}: admin /health 200 and the listener open",
        )

    def bytes_sent(self) -> int:
        text = http_get(self.admin_port, "/metrics").body.decode()
        return int(sum(float(v) for v in _BYTES_SENT.findall(text)))


class NginxSlice(NginxTarget):
    """nginx ``proxy_cache`` with its ``slice`` module, the slice size of the nodes."""

    def __init__(self, options: BenchOptions, workdir: Path, origin: SliceOrigin,
                 slice_size: int) -> None:
        super().__init__(options, workdir, origin)  # type: ignore[arg-type]
        self.slice_size = slice_size
        self.prefix = workdir / "nginx-slice"
        self.label = f"nginx slice {self.slice_size // 1024}k"

    def render_config(self) -> str:
        text = super().render_config()
        sliced = (f"slice {self.slice_size};\n"
                  "            proxy_cache_key $uri$is_args$args$slice_range;\n"
                  "            proxy_set_header Range $slice_range;\n"
                  "            proxy_cache_valid 200 206 1d;")
        if "proxy_cache_valid 200 1d;" not in text:
            raise RuntimeError("nginx.conf.tmpl changed: no 'proxy_cache_valid 200 1d;'")
        return text.replace("proxy_cache_valid 200 1d;", sliced, 1)


def range_get(port: int, path: str, value: str | None, timeout: float = 60.0
              ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Range": value} if value else {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def cold_first_byte(chain: list[ChainNode], origin: SliceOrigin, path: str, first: bytes
                    ) -> tuple[list[int], float]:
    """One cold ``bytes=0-0`` at the chain's edge: bytes moved per link (origin → shield,
    shield → regional, regional → edge, edge → client) once every tier is quiet, and the
    request's time."""
    before = [node.bytes_sent() for node in chain]
    started = time.perf_counter()
    status, _, body = range_get(chain[-1].port, path, "bytes=0-0")
    elapsed = time.perf_counter() - started
    if status != 206 or body != first:
        raise BenchFailure(f"{chain[-1].name}: GET {path} bytes=0-0 -> {status}, {body[:8]!r}")
    deadline = time.monotonic() + SETTLE_LIMIT
    last: list[int] = []
    while time.monotonic() < deadline:  # bounded: until two reads 0.5 s apart agree
        now = [origin.counts()["bytes"].get(path, 0)] + [n.bytes_sent() for n in chain]
        if now == last:
            break
        last = now
        time.sleep(0.5)
    moved = [last[0]] + [after - was for after, was in zip(last[1:], before, strict=True)]
    return moved, elapsed


def warm(target: Target, size: int) -> None:
    for _ in range(6):
        status, headers, body = range_get(target.port, HOT, None)
        if status != 200 or len(body) != size:
            raise BenchFailure(f"{target.label}: GET {HOT} -> {status}, {len(body)} bytes")
        value = headers.get("cache-status") or headers.get("x-cache-status") or ""
        if "hit" in value.lower().split(",")[-1]:
            return
    raise BenchFailure(f"{target.label}: {HOT} never answered as a HIT")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--duration", type=parse_duration, default=5)
    parser.add_argument("--connections", type=positive_int, default=16,
                        help="wrk -c of the HIT runs (default 16)")
    parser.add_argument("--size", type=byte_size, default=32 * 1024 * 1024)
    parser.add_argument("--slice", type=byte_size, default=1024 * 1024)
    parser.add_argument("--nginx", default=None, help="nginx binary (default: on PATH)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="append the report to this file")
    return parser.parse_args(argv)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    nginx = find_nginx(args.nginx)
    options = BenchOptions(connections=args.connections, nginx_bin=args.nginx, node_cmd=None)
    missing = NodeTarget.missing(options) + ([] if wrk else ["wrk: apt-get install wrk"])
    if missing:
        print(f"{PROG}: missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    assert wrk is not None
    tools = {"wrk": machine.wrk_version(wrk),
             "reelcdn": machine.source_revision(Path(__file__).resolve().parents[2])}
    if nginx is not None:
        tools["nginx"] = machine.nginx_version(nginx)
    info = machine.collect(tools)
    started_at = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="reelcdn-bench-slices-"))
    running: list = []
    body = make_body(args.size)
    try:
        origin = SliceOrigin(workdir, args.size)
        running.append(origin)
        origin.start()
        chains: dict[str, list[ChainNode]] = {}
        for label, size in (("sliced", args.slice), ("whole", 0)):
            upstream = origin.base_url
            chain = []
            for tier in ("shield", "regional", "edge"):
                node = ChainNode(options, workdir, f"{tier}-{label}", upstream, size)
                running.append(node)
                node.start()
                chain.append(node)
                upstream = f"http://{LOOPBACK}:{node.port}"
            chains[label] = chain
        log("origin and two chains of three tiers ready")
        cold: dict[str, list[tuple[list[int], float]]] = {k: [] for k in chains}
        for rep in range(args.repeat):
            for label, chain in chains.items():
                path = f"/big/cold-{label}-{rep}.mp4"
                moved, elapsed = cold_first_byte(chain, origin, path, body[:1])
                cold[label].append((moved, elapsed))
                log(f"cold bytes=0-0 {label} {rep + 1}/{args.repeat}: {moved} bytes per link, "
                    f"{elapsed * 1000:.0f} ms")
        targets: list[Target] = []
        if nginx is not None:
            ngx = NginxSlice(options, workdir, origin, args.slice)
            running.append(ngx)
            ngx.start()
            targets.append(ngx)
        targets += [chains["whole"][-1], chains["sliced"][-1]]
        for target in targets:
            warm(target, args.size)
        settings = WrkSettings(1, args.connections, args.duration)
        hits: dict[str, list[tuple[float, float]]] = {t.label: [] for t in targets}
        slow: dict[str, int] = {t.label: 0 for t in targets}
        cpu: dict[str, list[float]] = {t.label: [] for t in targets}
        for rep in range(args.repeat):
            for target in targets:
                before = origin.counts()["total"]
                pgid = target.process.proc.pid if target.process and target.process.proc else -1
                cpu_before = group_cpu_seconds(pgid)
                try:
                    result, _ = run_wrk(wrk, target.url(HOT), settings)
                except WrkError as exc:
                    raise BenchFailure(f"{target.label}: {exc}") from exc
                served = result.requests or round(result.requests_per_sec * args.duration)
                cpu[target.label].append((group_cpu_seconds(pgid) - cpu_before)
                                         / max(served, 1))
                fetched = origin.counts()["total"] - before
                # wrk's "timeout" is a response slower than 2 s (a 32 MiB body on a loaded
                # machine), not a failure; anything else is.
                timeouts = result.socket_errors.get("timeout", 0)
                if fetched or result.error_count - timeouts:
                    raise BenchFailure(f"{target.label}: {fetched} origin requests, errors "
                                       f"{result.error_summary()} during a HIT run")
                hits[target.label].append((result.requests_per_sec, result.bytes_per_sec))
                slow[target.label] += timeouts
                log(f"HIT {target.label} {rep + 1}/{args.repeat}: "
                    f"{result.requests_per_sec:,.1f} req/s, {result.bytes_per_sec / 1e6:,.0f} MB/s"
                    + f", {cpu[target.label][-1] * 1000:,.2f} ms CPU per response"
                    + (f", {timeouts} responses over 2 s" if timeouts else ""))
    except StartupError as exc:
        print(f"{PROG}: {exc.name} failed to start: {exc.reason}\n{exc.details}",
              file=sys.stderr)
        return 1
    except BenchFailure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(running)
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [
        f"### Slices, {started_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{shlex.join([*PROG.split(), *argv])}`; object {args.size} bytes, "
        f"slice {args.slice} bytes; medians of {args.repeat} (chains and servers alternating).",
        "",
        "| cold `bytes=0-0`, 3 tiers | origin → shield | shield → regional | regional → edge "
        "| edge → client | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, runs in cold.items():
        per_link = [_median([m[i] for m, _ in runs]) for i in range(4)]
        lines.append(f"| {label} | " + " | ".join(f"{v:,.0f} B" for v in per_link)
                     + f" | {_median([e for _, e in runs]) * 1000:,.0f} ms |")
    lines += ["", f"| whole-object HIT (wrk `{settings.describe()}`) | req/s | MB/s "
              "| runs (MB/s) | CPU per response | responses over 2 s |",
              "|---|---:|---:|---|---:|---:|"]
    for label, runs in hits.items():
        lines.append(f"| {label} | {_median([r for r, _ in runs]):,.1f} | "
                     f"{_median([b for _, b in runs]) / 1e6:,.0f} | "
                     + " · ".join(f"{b / 1e6:,.0f}" for _, b in runs)
                     + f" | {_median(cpu[label]) * 1000:,.2f} ms | {slow[label]} |")
    lines += ["", "Machine:", "", *info.markdown_lines()]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as fh:
            fh.write("\n" + report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())
