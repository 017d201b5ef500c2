"""A whole run: prepare the caches, scrape the nodes, run the shares (in this process or one
process per core), show progress, and put the results together.

Why separate from the workload: the workload is what runs on each event loop; this is what
runs once, around it, and owns everything a person sees (progress, warnings, verdicts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .cachestatus import Tally
from .catalog import master_url
from .hls import PlaylistError, parse_master, parse_media
from .player import PlayerResult
from .scrape import Endpoint, Scraper, difference
from .summary import Slo, check_slos, summarise
from .workload import LiveCounts, ShareResult, Workload, run_share

#: Above this share of one core, the harness process is busy enough to delay its players.
CPU_BOUND = 0.85
#: A loop that wakes this late (p99) delays every read it serves: TTFFs include that delay.
LAG_BOUND = 0.05
#: Above this share of all cores busy (machine-wide, /proc/stat), the machine is saturated:
#: a lagging harness is then starved by the other processes (the CDN under test among them)
#: rather than busy itself, and more load processes would not help.
MACHINE_BOUND = 0.95


@dataclass
class RunOptions:
    workload: Workload
    endpoints: list[Endpoint] = field(default_factory=list)
    cache: str = "as-is"                # as-is | warm | cold
    processes: int = 1
    scrape_interval: float = 2.0
    slos: list[Slo] = field(default_factory=list)
    progress: bool = False
    tier_roles: list[str] | None = None
    label: str = "reelcdn loadtest"
    settle: float = 0.3                 # before the last scrape: let nodes finish counting
    # verify bodies against meta.json: an origin directory, or "cdn" (meta.json fetched
    # through the first target); None: no verification unless workload.digests is set
    verify: str | None = None
    # in-process runs only (processes = 1): asked before each download (see run_share)
    abort_body: Callable[[str], bool] | None = None
    # called once with the run's start (time.monotonic()) as players begin
    on_start: Callable[[float], None] | None = None


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    players: list[PlayerResult]
    tally: Tally
    scrapes: list[Any]
    verdicts: list[dict[str, Any]]
    warnings: list[str]

    @property
    def slo_met(self) -> bool:
        return all(v["met"] for v in self.verdicts)


# ------------------------------------------------------------------------- cache preparation

async def warm_caches(workload: Workload, concurrency: int = 8) -> tuple[int, int]:
    """Fetch every object of the catalog once through every target (so each edge and every
    tier behind it holds it); (objects fetched, failures)."""
    targets = workload.targets or ("",)
    semaphore = asyncio.Semaphore(concurrency)
    fetched = failed = 0

    async def get(session: aiohttp.ClientSession, url: str) -> bytes | None:
        nonlocal fetched, failed
        async with semaphore:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as r:
                    body = await r.read()
                    fetched += 1
                    if r.status >= 400:
                        failed += 1
                        return None
                    return body
            except (aiohttp.ClientError, TimeoutError, OSError):
                failed += 1
                return None

    async def one_video(session: aiohttp.ClientSession, url: str) -> None:
        body = await get(session, url)
        if body is None:
            return
        try:
            variants = parse_master(body.decode("utf-8", "replace"), url)
        except PlaylistError:
            return
        for variant in variants:
            text = await get(session, variant.uri)
            if text is None:
                continue
            try:
                playlist = parse_media(text.decode("utf-8", "replace"), variant.uri)
            except PlaylistError:
                continue
            objects = ([playlist.init_uri] if playlist.init_uri else []) + [
                s.uri for s in playlist.segments]
            await asyncio.gather(*(get(session, o) for o in objects))

    async with aiohttp.ClientSession(auto_decompress=False) as session:
        await asyncio.gather(*(one_video(session, master_url(video, target or None))
                               for target in targets for video in workload.catalog))
    return fetched, failed


async def purge_caches(workload: Workload, endpoints: list[Endpoint]) -> tuple[int, list[str]]:
    """Purge every catalog video from every node (reelcdn admin API); (purged, errors)."""
    purged = 0
    errors: list[str] = []
    async with aiohttp.ClientSession() as session:
        for endpoint in endpoints:
            headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}
            for video in workload.catalog:
                prefix = video.path.rsplit("/", 1)[0] + "/"
                try:
                    async with session.post(endpoint.url.rstrip("/") + "/purge",
                                            json={"prefix": prefix}, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=10)) as r:
                        if r.status != 200:
                            errors.append(f"{endpoint.url}/purge {prefix}: HTTP {r.status}")
                            continue
                        purged += int((await r.json()).get("purged", 0))
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                    errors.append(f"{endpoint.url}/purge: {exc}")
    return purged, errors


# ------------------------------------------------------------------------- processes

def _child(workload: Workload, share: int, shares: int, run_started: float,
           messages: Any) -> None:
    """A worker process: run one share on uvloop, streaming progress, then the result."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    try:
        result = asyncio.run(run_share(workload, share, shares, run_started,
                                       on_live=lambda live: messages.put(("live", live))))
        messages.put(("done", result))
    except BaseException as exc:  # report, never hang the parent
        messages.put(("error", (share, repr(exc))))
        raise


class Progress:
    """Accumulates live counts from every share and renders them with rich."""

    def __init__(self, options: RunOptions, run_started: float) -> None:
        self.options = options
        self.run_started = run_started
        self.latest: dict[int, LiveCounts] = {}
        self.ttffs: list[float] = []
        self.cpu = 0.0
        self._live: Any = None

    def update(self, live: LiveCounts) -> None:
        self.ttffs.extend(live.new_ttffs)
        self.latest[live.share] = live

    def __enter__(self) -> Progress:
        if self.options.progress:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.render(), console=Console(stderr=True),
                              refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(None, None, None)

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def render(self) -> Any:
        from rich.table import Table

        from .summary import percentile

        counts = list(self.latest.values())

        def total(name: str) -> int:
            return sum(getattr(c, name) for c in counts)

        elapsed = time.monotonic() - self.run_started
        table = Table(title=f"{self.options.label}: {elapsed:5.1f} s / "
                            f"{self.options.workload.duration:g} s", show_header=True)
        # Short headers: the table must fit an 80-column terminal.
        for column in ("sessions", "active", "ok", "VSF", "EBVS", "TTFF p50", "TTFF p95",
                       "stalls", "responses", "Mbit/s", "CPU"):
            table.add_column(column, justify="right")
        p50, p95 = percentile(self.ttffs, 50), percentile(self.ttffs, 95)
        rate = total("bytes") * 8 / max(elapsed, 1e-3) / 1e6
        table.add_row(
            str(total("started")), str(total("active")), str(total("played")),
            str(total("vsf")), str(total("ebvs")),
            "-" if p50 is None else f"{p50 * 1000:.0f}ms",
            "-" if p95 is None else f"{p95 * 1000:.0f}ms",
            str(total("rebuffers")), str(total("responses")), f"{rate:.1f}",
            f"{self.cpu * 100:.0f}%",
        )
        return table


def machine_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)      # idle + iowait
    total = sum(fields[:8])                                         # guest time is in user
    return total - idle, total


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes, from /proc (0 for a process that is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def _run_shares(options: RunOptions, run_started: float,
                      progress: Progress) -> list[ShareResult]:
    workload = options.workload
    shares = max(1, options.processes)
    if shares == 1:
        cpu0, wall0 = time.process_time(), time.monotonic()

        def on_live(live: LiveCounts) -> None:
            progress.update(live)
            progress.cpu = (time.process_time() - cpu0) / max(time.monotonic() - wall0, 1e-3)
            progress.refresh()

        return [await run_share(workload, 0, 1, run_started, on_live=on_live,
                                abort=options.abort_body)]
    if options.abort_body is not None:
        raise RuntimeError("an abort hook needs the players in this process (processes = 1)")

    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    children = [context.Process(target=_child, args=(workload, i, shares, run_started, messages),
                                name=f"loadtest-share-{i}", daemon=True) for i in range(shares)]
    for child in children:
        child.start()
    results: dict[int, ShareResult] = {}
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    wall0 = time.monotonic()
    # A hard bound: the shares end themselves at the duration; allow start-up and hand-over.
    deadline = wall0 + workload.duration + 60
    try:
        while len(results) + len(errors) < shares and time.monotonic() < deadline:
            try:
                kind, payload = await loop.run_in_executor(None, messages.get, True, 0.5)
            except queue.Empty:
                if all(not c.is_alive() for c in children) and messages.empty():
                    errors.append("a load process exited without a result")
                    break
                continue
            if kind == "live":
                progress.update(payload)
                progress.cpu = _cpu_seconds([c.pid for c in children if c.pid]) / max(
                    time.monotonic() - wall0, 1e-3) / shares
                progress.refresh()
            elif kind == "done":
                results[payload.share] = payload
            else:
                errors.append(f"load process {payload[0]} failed: {payload[1]}")
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)
    if errors:
        raise RuntimeError("; ".join(errors))
    return [results[i] for i in sorted(results)]


# ------------------------------------------------------------------------- the run

async def load_digests(options: RunOptions) -> RunOptions:
    """Options whose workload carries the reference digests ``options.verify`` names."""
    from .verify import digests_from_dir, fetch_digests

    workload = options.workload
    if options.verify is None:
        return options
    masters = [video.path for video in workload.catalog]
    if options.verify == "cdn":
        base = workload.targets[0] if workload.targets else ""
        if not base:
            raise ValueError("--verify cdn needs a --target or --topology")
        digests = await fetch_digests(base, masters)
    else:
        digests = digests_from_dir(Path(options.verify), masters)
    return dataclasses.replace(options, workload=dataclasses.replace(workload, digests=digests))


def verify_verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """The implicit objective of a verified run: not one corrupted byte."""
    corrupted = summary["verify"]["corrupted_bytes"]
    return {"slo": "corrupted_bytes=0", "key": "corrupted_bytes", "target": 0,
            "measured": corrupted, "met": corrupted == 0}


async def run(options: RunOptions, log: Callable[[str], None] = print) -> RunOutcome:
    options = await load_digests(options)
    workload = options.workload
    warnings: list[str] = []
    if workload.digests is not None:
        log(f"verifying bodies: {len(workload.digests)} objects with meta.json digests")
    if options.cache == "warm":
        fetched, failed = await warm_caches(workload)
        log(f"warm-up: {fetched} objects fetched through {len(workload.targets) or 1} "
            f"target(s), {failed} failed")
        if failed:
            warnings.append(f"warm-up: {failed} of {fetched} fetches failed")
    elif options.cache == "cold":
        if not options.endpoints:
            warnings.append("--cache cold: no admin endpoints to purge through; the caches "
                            "are as cold as they were")
        else:
            purged, errors = await purge_caches(workload, options.endpoints)
            log(f"cold start: {purged} cache entries purged")
            warnings.extend(errors[:5])

    run_started = time.monotonic()
    if options.on_start is not None:
        options.on_start(run_started)
    machine0 = machine_cpu_ticks()
    async with Scraper(options.endpoints, run_started) as scraper:
        before = await scraper.scrape()
        stop = asyncio.Event()
        periodic = asyncio.ensure_future(scraper.every(options.scrape_interval, stop))
        progress = Progress(options, run_started)
        try:
            with progress:
                shares = await _run_shares(options, run_started, progress)
            machine1 = machine_cpu_ticks()
        finally:
            stop.set()
            await asyncio.gather(periodic, return_exceptions=True)
        await asyncio.sleep(options.settle)
        after = await scraper.scrape()
        warnings.extend(scraper.errors[:5])
    wall = time.monotonic() - run_started

    tally = Tally()
    players: list[PlayerResult] = []
    for share in shares:
        tally.merge(share.tally)
        players.extend(share.players)
    players.sort(key=lambda r: r.started_at)
    delta = difference(before, after, scraper.scrapes) if before and after else None
    summary = summarise(players, tally, delta, wall, options.tier_roles,
                        workload.player.time_scale)
    machine = None
    if machine0 is not None and machine1 is not None and machine1[1] > machine0[1]:
        machine = (machine1[0] - machine0[0]) / (machine1[1] - machine0[1])
    summary["harness"] = harness_view(shares, options, machine)
    warnings.extend(summary["harness"]["warnings"])
    edge = summary["hit_ratio"]["edge"]
    if edge is not None and edge.get("agree") is False:
        warnings.append(
            f"edge hit ratio: {edge['cache_status'] * 100:.2f}% by Cache-Status, "
            f"{edge['metrics'] * 100:.2f}% by /metrics: " + "; ".join(edge["explanation"]))
    summary["run"] = describe(options, wall)
    verdicts = check_slos(summary, options.slos)
    if workload.digests is not None:
        verdicts.append(verify_verdict(summary))
    summary["slo"] = verdicts
    summary["warnings"] = warnings
    return RunOutcome(summary, players, tally, scraper.scrapes, verdicts, warnings)


def harness_view(shares: list[ShareResult], options: RunOptions,
                 machine_busy: float | None = None) -> dict[str, Any]:
    """The client's own load: CPU per process, event-loop lag and how busy the whole machine
    was, with a warning when the harness rather than the CDN may be what limits the numbers.

    Two different causes are told apart, because their cures differ. A load process near a
    whole core is *busy*: more processes (up to one per core) or fewer players help. A lagging
    loop in a process well under a core, on a machine whose cores are all busy, is *starved*:
    the other processes (on one machine, the CDN under test) take the cores, and more load
    processes would only take more from the CDN.
    """
    processes = []
    warnings = []
    cores = os.cpu_count() or 1
    for share in shares:
        cpu = share.cpu_seconds / share.wall_seconds if share.wall_seconds else 0.0
        processes.append({"share": share.share, "cpu": round(cpu, 3),
                          "loop_lag_p99_ms": round(share.loop_lag_p99 * 1000, 2),
                          "loop_lag_max_ms": round(share.loop_lag_max * 1000, 2),
                          "dropped_arrivals": share.dropped_arrivals})
    busiest = max((p["cpu"] for p in processes), default=0.0)
    harness_cores = sum(p["cpu"] for p in processes)
    worst_lag = max((s.loop_lag_p99 for s in shares), default=0.0)
    lag = f"event-loop lag p99 {worst_lag * 1000:.0f} ms; TTFF includes that delay"
    saturated = machine_busy is not None and machine_busy > MACHINE_BOUND
    if busiest > CPU_BOUND:
        more = (f"use --processes {min(cores, len(shares) + 1)} or fewer players"
                if len(shares) < cores else "use fewer players")
        warnings.append(
            f"the client may be the bottleneck: busiest load process at {busiest:.0%} of a "
            f"core, {lag}. {more[0].upper() + more[1:]}, or run the harness on another machine")
    elif worst_lag > LAG_BOUND and saturated:
        warnings.append(
            f"the machine was saturated: {machine_busy:.0%} of its {cores} cores busy, the "
            f"load processes using {harness_cores:.2f} cores and everything else (the CDN under "
            f"test among it) the rest; the harness was starved, not busy ({lag}). The numbers "
            "describe an overloaded machine: use fewer players, or run the harness on another "
            "machine")
    elif worst_lag > LAG_BOUND:
        warnings.append(
            f"the client may be the bottleneck: busiest load process at {busiest:.0%} of a "
            f"core, {lag}. Use fewer players, or run the harness on another machine")
    dropped = sum(s.dropped_arrivals for s in shares)
    if dropped:
        warnings.append(f"{dropped} Poisson arrivals were dropped at the --players cap")
    return {"processes": processes, "cpu_max": busiest, "cpu_total": round(harness_cores, 3),
            "machine_busy": None if machine_busy is None else round(machine_busy, 3),
            "cores": cores, "loop_lag_p99_ms": round(worst_lag * 1000, 2),
            "warnings": warnings}


def describe(options: RunOptions, wall: float) -> dict[str, Any]:
    workload = options.workload
    player = workload.player
    return {
        "label": options.label,
        "targets": list(workload.targets),
        "videos": len(workload.catalog),
        "scenario": workload.scenario,
        "cache": options.cache,
        "players": workload.players,
        "rate": workload.rate,
        "duration": workload.duration,
        "wall_seconds": round(wall, 3),
        "zipf": workload.zipf,
        "bandwidth": workload.bandwidth.text,
        "rtt": workload.rtt.text,
        "time_scale": player.time_scale,
        "start_estimate_bps": player.start_estimate_bps,
        "patience": player.patience,
        "decode_allowance": player.decode_allowance,
        "watch": player.watch,
        "processes": options.processes,
        "seed": workload.seed,
    }
