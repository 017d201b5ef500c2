"""The chaos soak: the default topology in real processes behind a fault-injecting origin,
the harness's players (every body verified against ``meta.json``), a plan of faults, resource
samples of every node, and the checks the report leads with.

Order of a run: videos (demo or synthetic) → the topology file, derived from the embedded
default (fresh loopback ports, the origin replaced by the chaos origin, no origin services) →
the chaos origin and the nodes, parents first, each healthy before the next → the players
(``runner.run``, in this process, so the ``abort_clients`` hook reaches them), the plan and the
sampler side by side for ``duration`` → everything stopped (also on Ctrl-C, SIGTERM or an
error) → checks → ``soak.json`` and ``report.html``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import random
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..bench.procs import free_port
from ..catalog import load_catalog
from ..player import PlayerOptions
from ..runner import RunOptions, RunOutcome
from ..runner import run as run_players
from ..scrape import Endpoint
from ..verify import digests_from_dir
from ..workload import Workload
from .media import demo_videos, longest_segment, synthetic_videos
from .plan import Fault, Plan
from .procs import Managed, Processes, node_argv, origin_argv, read_status

TOKEN = "chaos-soak-admin-token-0123456789"
SAMPLE_INTERVAL = 2.0
BASELINE_AFTER = 60.0       # RSS and fds are judged against the minute after this
WINDOW = 30.0               # seconds of samples averaged (median) at each end
MIN_JUDGED = 120.0          # an incarnation shorter than this after the baseline: reported only
FD_SLACK = 8                # descriptors of connections that come and go


@dataclass
class SoakOptions:
    plan: Plan
    duration: float
    players: int = 30
    report: Path = Path("soak-report")
    data_dir: Path = Path("data")
    videos: str = "demo"                  # demo | synthetic
    seed: int = 1
    retries: int = 1                      # playlists, as hls.js's manifest policy
    segment_retries: int = 3              # init and media segments (hls.js: 6)
    max_start_failures: float = 0.001     # below: 0.1 %
    max_rss_growth: float = 0.05
    sample_interval: float = SAMPLE_INTERVAL
    log_level: str = "INFO"


@dataclass
class SoakResult:
    checks: list[dict[str, Any]]
    events: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    summary: dict[str, Any]
    resources: dict[str, Any]
    run: dict[str, Any]
    leftovers: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.checks if c.get("judged", True))

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "run": self.run, "checks": self.checks,
                "events": self.events, "timeline": self.timeline,
                "resources": self.resources, "samples": self.samples,
                "leftover_pids": self.leftovers, "summary": self.summary}


def say(message: str) -> None:
    print(f"[soak] {message}", flush=True)


# ------------------------------------------------------------------------------ topology

def soak_topology(origin_url: str) -> str:
    """The embedded default topology with fresh loopback ports, an admin token, the origin
    ``main`` served over HTTP by the chaos origin, and no origin services (``[api]``…)."""
    from reelcdn.edge.config import default_topology_text

    text = default_topology_text()
    ports: dict[str, int] = {}

    def fresh(match: re.Match[str]) -> str:
        old = match.group(1)
        ports.setdefault(old, free_port())
        return f'"127.0.0.1:{ports[old]}"'

    text = re.sub(r'"127\.0\.0\.1:(\d+)"', fresh, text)
    # Keep everything up to the origin services: the soak runs nodes only.
    cut = re.search(r"^\[(api|queue|catalog|transcode)\]", text, flags=re.M)
    if cut:
        text = text[:cut.start()]
        # and the comment block introducing them
        text = re.sub(r"(\n#[^\n]*)+\n*$", "\n", text)
    origin = re.search(r"^\[origin\.main\]\n(?:[^\[\n][^\n]*\n)*", text, flags=re.M)
    if origin is None:
        raise RuntimeError("the embedded topology has no [origin.main]: the soak cannot "
                           "put its origin in front of the files")
    text = (text[:origin.start()] + "[origin.main]\ntype = \"http\"\n"
            f"url = \"{origin_url}\"\n\n" + text[origin.end():])
    text = text.replace("\n[defaults]\n", f'\n[defaults]\nadmin_token = "{TOKEN}"\n', 1)
    # Play counts go to the origin API, which the soak does not run (and a `reelcdn up`
    # running beside it must not receive the soak's plays): off.
    text = re.sub(r"^plays_url\s*=.*$", 'plays_url = ""  # off: the soak runs no origin API',
                  text, flags=re.M)
    return ("# Written by the chaos soak from the embedded default topology: fresh ports, the\n"
            "# origin behind the fault-injecting chaos origin, no origin services.\n" + text)


# ------------------------------------------------------------------------------ the soak

class Soak:
    def __init__(self, options: SoakOptions) -> None:
        self.options = options
        self.work = options.report / "run"
        self.logs = self.work / "logs"
        self.procs = Processes()
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.nodes: dict[str, Managed] = {}
        self.origin_port = 0
        self.origin: Managed | None = None
        self.aborts: list[tuple[float, float, float]] = []   # (from, until, fraction)
        self.rng = random.Random(options.seed)
        self.session: aiohttp.ClientSession | None = None
        self.topology: Any = None

    def now(self) -> float:
        return time.monotonic() - self.t0 if self.t0 else 0.0

    # -------------------------------------------------------------- set-up

    def prepare_videos(self) -> tuple[Path, list[str]]:
        if self.options.videos == "synthetic":
            root = self.work / "origin"
            ids = synthetic_videos(root)
        else:
            root = self.options.data_dir / "origin"
            ids = demo_videos(root)
        if not ids:
            raise RuntimeError(f"no videos in {root}")
        return root.resolve(), ids

    async def start(self, root: Path) -> None:
        from reelcdn.edge.config import load_topology
        from reelcdn.edge.config.model import http_base

        self.origin_port = free_port()
        origin_url = f"http://127.0.0.1:{self.origin_port}"
        config = self.work / "topology.toml"
        config.write_text(soak_topology(origin_url))
        self.topology = load_topology(config)
        self.options.plan.check_nodes(list(self.topology.nodes))
        self.origin = self.procs.add(Managed(
            "origin", origin_argv(root, self.origin_port, self.options.seed),
            self.logs / "origin.log", health_url=f"{origin_url}/__chaos/stats", role="origin"))
        for name in self.topology.order_for_start():
            node = self.topology.nodes[name]
            admin = node.admin_advertised()
            self.nodes[name] = self.procs.add(Managed(
                name, node_argv(config, name, self.options.log_level), self.logs / f"{name}.log",
                health_url=http_base(admin) + "/health" if admin else None, token=TOKEN,
                role=node.role))
        assert self.session is not None
        for item in self.procs.items.values():
            item.start()
            if not await item.wait_healthy(self.session):
                raise RuntimeError(f"{item.name} did not become healthy (log: {item.log})")
        say(f"up: origin :{self.origin_port}, " + ", ".join(
            f"{n} ({self.topology.nodes[n].role})" for n in self.nodes))

    # -------------------------------------------------------------- faults

    def abort_hook(self, path: str) -> bool:
        """Asked by each player before a download: abandon this one mid-body?"""
        if not path.endswith((".m4s", ".mp4")) or not self.aborts:
            return False
        now = self.now()
        for begin, until, fraction in self.aborts:
            if begin <= now < until and self.rng.random() < fraction:
                return True
        return False

    async def run_plan(self) -> None:
        tasks = []
        try:
            for fault in self.options.plan.faults:
                if fault.at >= self.options.duration:
                    self.events.append(self.event(fault, fault.at, ok=True,
                                                  detail="not run: after the end of the soak",
                                                  skipped=True))
                    continue
                await asyncio.sleep(max(0.0, fault.at - self.now()))
                tasks.append(asyncio.ensure_future(self.apply(fault)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def event(self, fault: Fault, at: float, ok: bool, detail: str,
              **extra: Any) -> dict[str, Any]:
        return {"index": fault.index, "action": fault.action, "planned_at": fault.at,
                "at": round(at, 3), "ends": round(at + (fault.ends - fault.at), 3),
                "what": fault.describe(), "node": fault.node, "mode": fault.mode,
                "ok": ok, "detail": detail, **extra}

    async def apply(self, fault: Fault) -> None:
        at = self.now()
        say(f"t={at:6.1f} s fault {fault.index}: {fault.describe()}")
        try:
            if fault.action == "kill":
                record = await self.kill(fault, at)
            elif fault.action == "origin":
                record = await self.origin_fault(fault, at)
            elif fault.action == "abort_clients":
                self.aborts.append((at, at + fault.duration, fault.fraction))
                record = self.event(fault, at, True, "players abort downloads mid-body")
            else:
                record = await self.purge(fault, at)
        except asyncio.CancelledError:
            self.events.append(self.event(fault, at, False, "cut by the end of the soak"))
            raise
        except Exception as exc:  # a fault that could not be applied is a failed check
            record = self.event(fault, at, False, f"{type(exc).__name__}: {exc}")
        self.events.append(record)
        if not record["ok"]:
            say(f"fault {fault.index}: {record['detail']}")

    async def kill(self, fault: Fault, at: float) -> dict[str, Any]:
        assert fault.node is not None and self.session is not None
        node = self.nodes[fault.node]
        signum = signal.SIGKILL if fault.signal == "KILL" else signal.SIGTERM
        node.signal(signum)
        if not await node.wait_exit(15.0):
            node.signal(signal.SIGKILL)
            await node.wait_exit(5.0)
        died = self.now()
        if fault.restart_after is None:
            return self.event(fault, at, True, f"down after {died - at:.2f} s, not restarted")
        await asyncio.sleep(max(0.0, at + fault.restart_after - self.now()))
        restarted = self.now()
        node.start()
        healthy = await node.wait_healthy(self.session)
        ready = self.now()
        return self.event(fault, at, healthy,
                          f"down after {died - at:.2f} s; started again at {restarted:.1f} s, "
                          + (f"healthy {ready - restarted:.2f} s later" if healthy
                             else "NOT healthy"),
                          down_at=round(died, 3), restarted_at=round(restarted, 3),
                          healthy_at=round(ready, 3) if healthy else None)

    async def origin_fault(self, fault: Fault, at: float) -> dict[str, Any]:
        assert self.session is not None
        spec = {"mode": fault.mode, "seconds": fault.duration, "fraction": fault.fraction,
                "delay": fault.delay, "status": fault.status}
        url = f"http://127.0.0.1:{self.origin_port}/__chaos/fault"
        async with self.session.post(url, json=spec,
                                     timeout=aiohttp.ClientTimeout(total=5)) as r:
            ok = r.status == 200
            detail = await r.text()
        return self.event(fault, at, ok, "origin: " + detail.strip()[:200])

    async def purge(self, fault: Fault, at: float) -> dict[str, Any]:
        from reelcdn.edge.config.model import http_base

        assert self.session is not None
        purged: dict[str, Any] = {}
        names = [fault.node] if fault.node else list(self.nodes)
        for name in names:
            admin = self.topology.nodes[name].admin_advertised()
            if admin is None:
                purged[name] = "no admin listener"
                continue
            if not self.nodes[name].ready:   # down or starting again: its cache is empty
                purged[name] = 0
                continue
            try:
                async with self.session.post(
                        http_base(admin) + "/purge", json={"prefix": fault.prefix},
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=aiohttp.ClientTimeout(total=10)) as r:
                    purged[name] = (await r.json()).get("purged") if r.status == 200 \
                        else f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                purged[name] = f"{type(exc).__name__}"
        ok = all(isinstance(v, int) for v in purged.values())
        return self.event(fault, at, ok, "purged " + ", ".join(
            f"{k}: {v}" for k, v in purged.items()))

    # -------------------------------------------------------------- sampling

    async def sample_forever(self, stop: asyncio.Event) -> None:
        assert self.session is not None
        url = f"http://127.0.0.1:{self.origin_port}/__chaos/stats"
        while not stop.is_set():
            sample: dict[str, Any] = {"t": round(self.now(), 3), "nodes": {}}
            try:
                async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    stats = await r.json()
                sample["origin_requests"] = stats["requests"]
                sample["origin_faulted"] = sum(stats["faulted"].values())
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError):
                sample["origin_requests"] = None
            for name, node in self.nodes.items():
                pids = node.tree_pids()
                if not pids:
                    sample["nodes"][name] = None
                    continue
                rss = fds = 0
                for pid in pids:
                    r_, f_ = read_status(pid)
                    rss += r_ or 0
                    fds += f_ or 0
                sample["nodes"][name] = {"pid": pids[0], "rss": rss, "fds": fds,
                                         "incarnation": len(node.starts)}
            self.samples.append(sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.sample_interval)

    # -------------------------------------------------------------- the run

    async def players(self, root: Path, videos: list[str]) -> RunOutcome:
        from reelcdn.edge.config.model import http_base

        catalog_file = self.work / "catalog.txt"
        catalog_file.write_text("".join(f"{v}\n" for v in videos))
        catalog = tuple(load_catalog(catalog_file))
        targets = tuple(http_base(self.topology.nodes[n].advertised())
                        for n in self.topology.edges())
        endpoints = [Endpoint(http_base(node.admin_advertised()), TOKEN, name, node.role)
                     for name, node in self.topology.nodes.items()
                     if node.admin_advertised() is not None]
        roles = ["edge", "regional", "shield"]
        workload = Workload(
            targets=targets, catalog=catalog, players=self.options.players,
            duration=self.options.duration, ramp=min(5.0, self.options.duration / 4),
            player=PlayerOptions(retries=self.options.retries,
                                 segment_retries=self.options.segment_retries),
            seed=self.options.seed,
            digests=digests_from_dir(root, [v.path for v in catalog]))
        run_options = RunOptions(
            workload=workload, endpoints=endpoints, processes=1, scrape_interval=5.0,
            tier_roles=roles, label="reelcdn soak", abort_body=self.abort_hook,
            on_start=self.started)
        return await run_players(run_options, log=say)

    def started(self, when: float) -> None:
        self.t0 = when
        stop = self._stop_sampling = asyncio.Event()
        self._sampler = asyncio.ensure_future(self.sample_forever(stop))
        self._planner = asyncio.ensure_future(self.run_plan())

    async def run(self) -> SoakResult:
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        atexit.register(self.procs.kill_now)
        started_wall = time.time()
        outcome: RunOutcome | None = None
        error: str | None = None
        root, videos = await asyncio.get_running_loop().run_in_executor(None,
                                                                        self.prepare_videos)
        segment = longest_segment(root, videos)
        self._sampler: asyncio.Future[None] | None = None
        self._planner: asyncio.Future[None] | None = None
        self._stop_sampling = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session:
                self.session = session
                await self.start(root)
                say(f"{self.options.players} players for {self.options.duration:g} s, "
                    f"{len(self.options.plan.faults)} faults planned")
                try:
                    outcome = await self.players(root, videos)
                finally:
                    self._stop_sampling.set()
                    for task in (self._planner, self._sampler):
                        if task is not None and not task.done():
                            if task is self._planner:
                                task.cancel()
                            await asyncio.gather(task, return_exceptions=True)
        except (RuntimeError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            say(f"the soak failed: {error}")
        finally:
            say("stopping every process")
            await self.procs.stop_all()
            atexit.unregister(self.procs.kill_now)
        leftovers = self.procs.leftovers()
        if outcome is not None:
            from ..report import write_outputs

            try:
                write_outputs(outcome, self.options.report / "loadtest")
            except Exception as exc:  # the harness's own report is a bonus, not a check
                say(f"the harness's report could not be written: {exc!r}")
        return self.result(outcome, error, segment, leftovers, started_wall, videos)

    # -------------------------------------------------------------- checks

    def result(self, outcome: RunOutcome | None, error: str | None, segment: float,
               leftovers: list[int], started_wall: float, videos: list[str]) -> SoakResult:
        options = self.options
        summary = outcome.summary if outcome is not None else {}
        players = outcome.players if outcome is not None else []
        checks: list[dict[str, Any]] = []

        def check(name: str, ok: bool, measured: str, target: str, judged: bool = True,
                  **extra: Any) -> None:
            checks.append({"check": name, "ok": ok, "measured": measured, "target": target,
                           "judged": judged, **extra})

        check("the soak ran", error is None and outcome is not None, error or "yes", "yes")
        verify = summary.get("verify") or {"bodies": 0, "bytes": 0, "corrupted_bodies": 0,
                                           "corrupted_bytes": 0, "examples": []}
        check("corrupted bytes", verify["corrupted_bytes"] == 0 and verify["bodies"] > 0,
              f"{verify['corrupted_bytes']} bytes in {verify['corrupted_bodies']} bodies, of "
              f"{verify['bodies']} verified ({verify['bytes']} bytes)", "0 (and bodies verified)")
        outcomes = summary.get("outcomes", {})
        attempts = summary.get("attempts", 0)
        failed = outcomes.get("vsf", 0) + outcomes.get("ebvs", 0)
        rate = failed / attempts if attempts else None
        check("video start failures", rate is not None and rate < options.max_start_failures,
              "-" if rate is None else f"{rate * 100:.3f} % ({outcomes.get('vsf', 0)} VSF + "
              f"{outcomes.get('ebvs', 0)} EBVS of {attempts} starts)",
              f"< {options.max_start_failures * 100:g} %")
        stalls = [(s, r.player_id) for r in players for s in r.rebuffers]
        longest = max((s for s, _ in stalls), default=0.0)
        check("longest stall", longest <= segment,
              f"{longest:.2f} s ({len(stalls)} stalls)", f"<= one segment ({segment:g} s)")
        resources = self.resources()
        for kind, label in (("rss", "RSS growth"), ("fds", "open descriptors")):
            for name, info in resources.items():
                judged = info["judged"]
                growth = info.get(f"{kind}_growth")
                if kind == "rss":
                    ok = growth is not None and growth <= options.max_rss_growth
                    measured = "-" if growth is None else (
                        f"{growth * 100:+.1f} % ({info['rss_base'] / 2**20:.1f} → "
                        f"{info['rss_end'] / 2**20:.1f} MiB)")
                    target = f"<= {options.max_rss_growth * 100:g} % after the first minute"
                else:
                    base, end = info.get("fds_base"), info.get("fds_end")
                    ok = base is not None and end is not None and \
                        end <= base * (1 + options.max_rss_growth) + FD_SLACK
                    measured = "-" if base is None else f"{base:g} → {end:g}"
                    target = f"<= base × {1 + options.max_rss_growth:g} + {FD_SLACK}"
                check(f"{label}: {name}", ok or not judged, measured,
                      target if judged else f"{target} (not judged: {info['why']})",
                      judged=judged)
        bad = [e for e in self.events if not e["ok"]]
        check("faults applied", not bad,
              f"{sum(1 for e in self.events if not e.get('skipped'))} applied, {len(bad)} failed"
              + (": " + "; ".join(f"{e['index']}: {e['detail']}" for e in bad) if bad else ""),
              "all applied, every killed node healthy again")
        check("processes cleaned up", not leftovers,
              "none left" if not leftovers else f"left: {leftovers}", "none left")
        run = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started_wall)),
               "duration": options.duration, "players": options.players,
               "plan": options.plan.source, "videos": videos, "video_source": options.videos,
               "segment_seconds": segment, "seed": options.seed, "retries": options.retries,
               "segment_retries": options.segment_retries,
               "cores": _cores(), "work_dir": str(self.work)}
        timeline = build_timeline(players, self.samples, options.duration)
        return SoakResult(checks, sorted(self.events, key=lambda e: e["at"]), self.samples,
                          timeline, summary, resources, run, leftovers)

    def resources(self) -> dict[str, Any]:
        """Per node: RSS and descriptors of its last incarnation, the median of the WINDOW
        seconds from BASELINE_AFTER after it started against the median of the last WINDOW
        seconds; judged only when at least MIN_JUDGED seconds lie between."""
        out: dict[str, Any] = {}
        for name, node in self.nodes.items():
            last = len(node.starts)
            rows = [(s["t"], s["nodes"][name]) for s in self.samples
                    if s["nodes"].get(name) and s["nodes"][name]["incarnation"] == last]
            if not rows:
                out[name] = {"judged": False, "why": "no samples", "incarnations": last}
                continue
            began = (node.starts[-1] - self.t0) if self.t0 else 0.0
            base_from = max(0.0, began) + BASELINE_AFTER
            base = [r for t, r in rows if base_from <= t < base_from + WINDOW]
            end_t = rows[-1][0]
            end = [r for t, r in rows if t > end_t - WINDOW]
            judged = bool(base) and end_t - base_from >= MIN_JUDGED
            info: dict[str, Any] = {
                "incarnations": last, "started_at": round(began, 1), "judged": judged,
                "why": "" if judged else (f"its last start ran {end_t - max(began, 0):.0f} s; "
                                          f"judged from {BASELINE_AFTER + MIN_JUDGED:.0f} s"),
                "rss_max": max(r["rss"] for _, r in rows),
                "fds_max": max(r["fds"] for _, r in rows)}
            base = base or [r for _, r in rows[: max(1, len(rows) // 4)]]
            info["rss_base"] = _median([r["rss"] for r in base])
            info["rss_end"] = _median([r["rss"] for r in end])
            info["rss_growth"] = info["rss_end"] / info["rss_base"] - 1 if info["rss_base"] \
                else None
            info["fds_base"] = _median([r["fds"] for r in base])
            info["fds_end"] = _median([r["fds"] for r in end])
            out[name] = info
        return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def build_timeline(players: list[Any], samples: list[dict[str, Any]],
                   duration: float) -> list[dict[str, Any]]:
    """Buckets over the run: starts and their TTFF, start failures, failed requests, stalls,
    the origin's request rate."""
    from ..summary import percentile

    step = 5.0 if duration > 120 else 1.0 if duration <= 60 else 2.0
    count = int(duration // step) + 1
    buckets = [{"t": round(i * step, 3), "starts": 0, "ttff": [], "start_failures": 0,
                "playback_failures": 0, "failed_requests": 0, "stalls": 0,
                "stall_max": 0.0, "origin_rps": None} for i in range(count)]

    def at(t: float) -> dict[str, Any]:
        return buckets[min(count - 1, max(0, int(t // step)))]

    for r in players:
        bucket = at(r.started_at)
        if r.outcome == "unfinished":
            continue
        bucket["starts"] += 1
        if r.ttff is not None:
            bucket["ttff"].append(r.ttff)
        if r.outcome in ("vsf", "ebvs"):
            bucket["start_failures"] += 1
        elif r.outcome == "vpf":
            bucket["playback_failures"] += 1
        for t in r.failures_at:
            at(t)["failed_requests"] += 1
        for t, s in zip(r.rebuffers_at, r.rebuffers, strict=False):
            b = at(t)
            b["stalls"] += 1
            b["stall_max"] = max(b["stall_max"], s)
    previous = None
    for sample in samples:
        if sample.get("origin_requests") is None:
            continue
        if previous is not None and sample["t"] > previous["t"]:
            rate = (sample["origin_requests"] - previous["origin_requests"]) / (
                sample["t"] - previous["t"])
            bucket = at(sample["t"] - 1e-6)
            bucket["origin_rps"] = round(max(rate, bucket["origin_rps"] or 0.0), 2)
        previous = sample
    for bucket in buckets:
        ttffs = bucket.pop("ttff")
        bucket["ttff_p50_ms"] = None if not ttffs else round(percentile(ttffs, 50) * 1000, 1)
        bucket["ttff_max_ms"] = None if not ttffs else round(max(ttffs) * 1000, 1)
        bucket["stall_max"] = round(bucket["stall_max"], 3)
    return buckets


async def soak(options: SoakOptions) -> SoakResult:
    """Run a soak; SIGTERM is handled like Ctrl-C (everything stopped, then re-raised)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
    return await Soak(options).run()


def write_json(result: SoakResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_json(), indent=1, default=str))
