"""Side by side: the same workload against reelcdn and against nginx, both as 3-tier
topologies (edge → regional → shield) in front of the same origin, one after the other.

Why one after the other: on a 2-core machine two CDNs under load at once would take CPU from
each other and from the harness; run in turn, each gets the machine the same way, with the
same seed (same arrivals, same videos, same links). Each CDN is started fresh (so ``cold`` is
really cold) and stopped after its run. The origin (``fileorigin.py``) is shared and counts
every object request, the one origin-offload measure both CDNs have, and, apart, the health
checks of reelcdn's shield (nginx makes none); reelcdn's nodes are also scraped.

Output in ``--report DIR``: ``reelcdn/`` and ``nginx/`` (each a full report), ``compare.json``
and ``compare.md`` (the two side by side, with nginx / reelcdn ratios of the TTFF percentiles:
above 1 means reelcdn starts videos faster).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .bench.procs import ManagedProcess, StartupError, free_port, http_get
from .bench.servers import _nginx_info, find_nginx
from .fileorigin import CHECK_PATH

TEMPLATE = Path(__file__).parent / "nginx3tier" / "tier.conf.tmpl"
TOKEN = "loadtest-compare-admin-token"
TIERS = ("shield", "regional", "edge")


class FileOrigin:
    def __init__(self, root: Path, workdir: Path, delay: str) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            "origin", [sys.executable, "-m", "reelcdn.loadtest.fileorigin", "--root", str(root),
                       "--port", str(self.port), "--delay", delay], workdir)

    def start(self) -> None:
        self.process.start()
        self.process.wait_ready(lambda: http_get(self.port, "/__count").status == 200,
                                "GET /__count answered 200")

    def counts(self) -> tuple[dict[str, int], int]:
        """(requests per object path, health checks) so far."""
        view = json.loads(http_get(self.port, "/__count").body)
        return {path: int(n) for path, n in view["paths"].items()}, int(view["checks"])

    def stop(self) -> None:
        self.process.stop()


class ReelcdnTiers:
    """shield → regional → edge, run by ``reelcdn up --config``."""

    name = "reelcdn"

    def __init__(self, origin_port: int, workdir: Path) -> None:
        self.workdir = workdir / "reelcdn"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {tier: (free_port(), free_port()) for tier in TIERS}
        parent = {"regional": "shield", "edge": "regional"}
        lines = ['[defaults]', 'cache_memory = "512MiB"', f'admin_token = "{TOKEN}"', "",
                 "[[defaults.ttl]]", 'match = "*"', 'ttl = "1d"', "",
                 "[origin.main]", 'type = "http"', f'url = "http://127.0.0.1:{origin_port}"', "",
                 "[origin.main.health]", f'path = "{CHECK_PATH}"', ""]
        for tier in TIERS:
            port, admin = self.ports[tier]
            lines += [f"[node.{tier}]", f'role = "{tier}"', f'listen = "127.0.0.1:{port}"',
                      f'admin = "127.0.0.1:{admin}"']
            lines.append('origins = ["main"]' if tier == "shield"
                         else f'parents = ["{parent[tier]}"]')
            lines.append("")
        self.config = self.workdir / "topology.toml"
        self.config.write_text("\n".join(lines))
        self.process = ManagedProcess(
            "reelcdn-up", [sys.executable, "-m", "reelcdn.cli", "--log-level", "WARNING", "up",
                           "--config", str(self.config), "--data-dir",
                           str(self.workdir / "data"), "--no-demo"],
            self.workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['edge'][0]}"

    def admin_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{admin}" for _, admin in self.ports.values()]

    def start(self) -> None:
        self.process.start()
        self.process.wait_ready(
            lambda: "reelcdn is up" in self.process.stdout_path.read_text(errors="replace"),
            "reelcdn up printed 'reelcdn is up'", timeout=60)

    def version(self) -> str:
        from importlib import metadata

        return f"reelcdn {metadata.version('reelcdn')}"

    def stop(self) -> None:
        self.process.stop(grace=15)


class NginxTiers:
    """Three nginx instances, one per tier, each with its own proxy_cache."""

    name = "nginx"

    def __init__(self, nginx: str, origin_port: int, workdir: Path) -> None:
        self.nginx = nginx
        self.info = _nginx_info(nginx)
        self.workdir = workdir / "nginx"
        self.ports = {tier: free_port() for tier in TIERS}
        self.origin_port = origin_port
        self.processes: list[ManagedProcess] = []

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['edge']}"

    def render(self, tier: str, prefix: Path, parent_port: int) -> str:
        import grp
        import pwd

        user_line = ""
        if os.geteuid() == 0:   # workers would run as nobody and not reach our 0700 dirs
            user_line = (f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                         f"{grp.getgrgid(os.getegid()).gr_name};")
        extra = "\n".join(f"    {m}_temp_path {prefix}/{m}_temp;"
                          for m in ("fastcgi", "uwsgi", "scgi")
                          if f"--without-http_{m}_module" not in self.info)
        text = TEMPLATE.read_text()
        for key, value in {"@USER_LINE@": user_line, "@PREFIX@": str(prefix),
                           "@EXTRA_TEMP_PATHS@": extra, "@PARENT_PORT@": str(parent_port),
                           "@PORT@": str(self.ports[tier]), "@NAME@": f"nginx-{tier}"}.items():
            text = text.replace(key, value)
        return text

    def start(self) -> None:
        parent_port = self.origin_port
        for tier in TIERS:
            prefix = self.workdir / tier
            prefix.mkdir(parents=True, exist_ok=True)
            conf = prefix / "nginx.conf"
            conf.write_text(self.render(tier, prefix, parent_port))
            process = ManagedProcess(f"nginx-{tier}", [self.nginx, "-p", f"{prefix}/", "-c",
                                                       str(conf), "-e", str(prefix / "error.log")],
                                     prefix)
            self.processes.append(process)
            process.start()
            port = self.ports[tier]
            process.wait_ready(lambda port=port: http_get(port, "/__nginx_ready").status == 204,
                               "GET /__nginx_ready answered 204")
            parent_port = port

    def version(self) -> str:
        first = self.info.splitlines()[0] if self.info else ""
        return first.removeprefix("nginx version: ") or "nginx"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """nginx / reelcdn for TTFF percentiles (above 1: reelcdn faster); origin requests and
    offload side by side."""
    ours, theirs = results["reelcdn"], results["nginx"]
    ratios = {f"ttff_{q}_nginx_over_reelcdn": _ratio(theirs["ttff_ms"][q], ours["ttff_ms"][q])
              for q in ("p50", "p90", "p95", "p99")}
    ratios["origin_requests_nginx_over_reelcdn"] = _ratio(theirs["origin_requests_counted"],
                                                          ours["origin_requests_counted"])
    return ratios


def markdown(results: dict[str, dict[str, Any]], ratios: dict[str, Any],
             command: str) -> str:
    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v * 100:.2f}%"

    def tier_ratio(s: dict[str, Any], tier: str) -> str:
        return pct(s["client"]["tiers"].get(tier, {}).get("hit_ratio"))

    def harness(s: dict[str, Any]) -> str:
        view = s.get("harness") or {}
        machine = view.get("machine_busy")
        return (f"{view.get('cpu_max', 0) * 100:.0f}% of a core, lag p99 "
                f"{view.get('loop_lag_p99_ms', 0):.0f} ms, machine "
                + ("–" if machine is None else f"{machine * 100:.0f}%"))

    rows = [("TTFF p50 (ms)", lambda s: ms(s["ttff_ms"]["p50"]), "ttff_p50"),
            ("TTFF p90 (ms)", lambda s: ms(s["ttff_ms"]["p90"]), "ttff_p90"),
            ("TTFF p95 (ms)", lambda s: ms(s["ttff_ms"]["p95"]), "ttff_p95"),
            ("TTFF p99 (ms)", lambda s: ms(s["ttff_ms"]["p99"]), "ttff_p99"),
            ("sessions played", lambda s: str(s["outcomes"].get("played", 0)), None),
            ("VSF", lambda s: pct(s["vsf"]), None),
            ("EBVS", lambda s: pct(s["ebvs"]), None),
            ("rebuffer ratio (events)", lambda s: f"{pct(s['rebuffer']['ratio'])} "
             f"({s['rebuffer']['events']})", None),
            ("player requests", lambda s: str(s["client"]["requests"]), None),
            ("origin requests (counted at the origin)",
             lambda s: str(s["origin_requests_counted"]), "origin_requests"),
            ("objects the origin served more than once (requests)",
             lambda s: f"{len(s['origin_paths_fetched_again'])} "
             f"({sum(s['origin_paths_fetched_again'].values())})", None),
            ("origin health checks (not in the requests above)",
             lambda s: str(s["origin_checks_counted"]), None),
            ("origin offload", lambda s: pct(s["offload_counted"]), None),
            ("edge hit ratio (Cache-Status)", lambda s: tier_ratio(s, "edge"), None),
            ("regional hit ratio (Cache-Status)", lambda s: tier_ratio(s, "regional"), None),
            ("shield hit ratio (Cache-Status)", lambda s: tier_ratio(s, "shield"), None),
            ("harness: busiest process, loop lag, machine busy", harness, None)]
    lines = [f"`{command}`", "", "| | reelcdn | nginx | nginx / reelcdn |", "|---|---|---|---|"]
    for label, get, key in rows:
        ratio = ratios.get(f"{key}_nginx_over_reelcdn") if key else None
        lines.append(f"| {label} | {get(results['reelcdn'])} | {get(results['nginx'])} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines) + "\n"


def main_compare(args: argparse.Namespace) -> int:
    from .options import EXIT_FAILED, EXIT_OK, EXIT_SLO, EXIT_USAGE, UsageError, build_options
    from .report import write_outputs
    from .runner import run, warm_caches

    origin_dir = Path(args.compare_nginx)
    if not (origin_dir / "v").is_dir():
        print(f"reelcdn loadtest: --compare-nginx {origin_dir}: no v/ folder of videos there "
              "(give reelcdn up's DATA_DIR/origin)", file=sys.stderr)
        return EXIT_USAGE
    nginx = find_nginx(args.nginx)
    if nginx is None:
        print("reelcdn loadtest: --nginx: no nginx binary (apt-get install nginx)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.target or args.topology or args.admin:
        print("reelcdn loadtest: --compare-nginx starts its own CDNs: drop --target, "
              "--topology and --admin", file=sys.stderr)
        return EXIT_USAGE
    report = Path(args.report or "loadtest-compare")
    workdir = Path(tempfile.mkdtemp(prefix="reelcdn-compare-"))
    origin = FileOrigin(origin_dir.resolve(), workdir, "0ms")
    results: dict[str, dict[str, Any]] = {}
    status = EXIT_OK
    command = " ".join(["reelcdn", *sys.argv[1:]]) if sys.argv else "reelcdn loadtest"
    try:
        origin.start()
        for cdn_class in (ReelcdnTiers, NginxTiers):
            cdn = ReelcdnTiers(origin.port, workdir) if cdn_class is ReelcdnTiers \
                else NginxTiers(nginx, origin.port, workdir)
            print(f"== {cdn.name}: starting 3 tiers", file=sys.stderr)
            cdn.start()
            try:
                run_args = copy.copy(args)
                run_args.target = [cdn.edge_url]
                run_args.admin = cdn.admin_urls() if isinstance(cdn, ReelcdnTiers) else []
                run_args.admin_token = TOKEN
                run_args.label = f"{args.label} — {cdn.name} ({cdn.version()})"
                try:
                    options = build_options(run_args)
                except UsageError as exc:
                    print(f"reelcdn loadtest: {exc}", file=sys.stderr)
                    return EXIT_USAGE
                if args.cache == "warm":
                    fetched, failed = asyncio.run(warm_caches(options.workload))
                    print(f"warm-up: {fetched} objects, {failed} failed", file=sys.stderr)
                options.cache = "as-is"          # fresh servers are cold; warm is done
                options.tier_roles = ["edge", "regional", "shield"]
                paths_before, checks_before = origin.counts()
                started = time.monotonic()
                outcome = asyncio.run(run(options, log=lambda m: print(m, file=sys.stderr)))
                paths_after, checks_after = origin.counts()
                fetched = {path: n - paths_before.get(path, 0)
                           for path, n in paths_after.items() if n > paths_before.get(path, 0)}
                counted = sum(fetched.values())
                summary = outcome.summary
                summary["origin_requests_counted"] = counted
                summary["origin_checks_counted"] = checks_after - checks_before
                summary["origin_paths_fetched_again"] = {
                    path: n for path, n in sorted(fetched.items()) if n > 1}
                requests = summary["client"]["requests"]
                summary["offload_counted"] = 1 - counted / requests if requests else None
                summary["cdn_version"] = cdn.version()
                write_outputs(outcome, report / cdn.name)
                results[cdn.name] = summary
                print(f"== {cdn.name}: done in {time.monotonic() - started:.1f} s",
                      file=sys.stderr)
                if not outcome.slo_met:
                    status = EXIT_SLO
            finally:
                cdn.stop()
    except (StartupError, RuntimeError, OSError) as exc:
        details = getattr(exc, "details", "")
        print(f"reelcdn loadtest: the comparison failed: {exc}\n{details}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        origin.stop()
    ratios = compare(results)
    report.mkdir(parents=True, exist_ok=True)
    (report / "compare.json").write_text(json.dumps(
        {"ratios": ratios, "reelcdn": results["reelcdn"], "nginx": results["nginx"]},
        indent=2, default=str) + "\n")
    table = markdown(results, ratios, command)
    (report / "compare.md").write_text(table)
    print(table)
    return status
