"""Trending pre-warm: the edge hit ratio of the top trending videos' first requests, before
and after the pre-warm.

    python -m reelcdn.loadtest.bench.prewarm [--repeat 3] [--videos 30] [--top 10]
        [--edges 2] [--prefetch-segments 2] [--json FILE]

Why: the feed pre-warms the top ``prewarm_top`` trending videos into every node after each
recompute (origin/feed/prewarm.py) so that a trending video's first play is a HIT at the
edge; this measures what a player sees of it, on real processes, rather than trusting it.

Each run has two halves, ``off`` (``prewarm_top = 0``: the fair "before", the same topology,
plays and recomputes with nothing pre-warmed) and ``on`` (``prewarm_top = --top``), each on
fresh processes and so on cold caches: a topology file on 127.0.0.1 ephemeral ports with a
shield, a regional and ``--edges`` edges (``reelcdn node``, each with an admin listener; the
embedded default topology's media TTL rules and its ``prefetch_segments``), and the origin
service (``reelcdn origin``: the feed, ``plays_token``, ``trending_interval = 1s``, the
product's default ``prewarm_rungs`` and ``prewarm_segments``). The fs origin holds the demo
video published under ``--videos`` ids (``publish_demo``, as the feed benchmark does), and the
catalog is seeded with them as ready rows before the service starts.

Then: one play batch through ``POST /api/v1/plays`` with the plays token, as an edge posts
it, gives the first ``--top`` videos the most starts (in a known order) and every other video
fewer; the trending feed (``GET /api/v1/feed?feed_type=trending``) is polled until its first
page is those videos in that order, i.e. a recompute has seen the plays; with pre-warm on,
the origin's ``/metrics`` is polled until ``reelcdn_origin_prewarm_videos_total`` reaches
``--top`` (a round ends after its last node answered). A player-like client then plays the
start of each top video, in rank order, each on a fresh keep-alive connection to one edge
(round robin): master playlist → the lowest-bandwidth media playlist → its init segment →
its first segment, recording each response's status, the edge's ``Cache-Status`` member read
as the outcome the edge counted (``loadtest/cachestatus.py`` over ``edge/ops/ratios.py``) and
the time to the response head. The same is then done for up to ``--top`` videos below the
top (never pre-warmed: a control). Last, the edges' own view is scraped:
``reelcdn_prewarmed_first_hits_total`` / ``_misses_total``.

The client sends no CMCD, so an edge prefetches only on the media playlist (the init and the
first ``--prefetch-segments`` segments; 0 turns it off): a "before" first segment may be a HIT
from that prefetch, which is the product's behaviour and part of the figure.

Reported per run and half: the hit ratio at the edge ((hit + stale) / requests, the product's
one definition) of masters, media playlists, inits and first segments, the first segments'
outcomes and median time to the response head, the control's first-segment hit ratio, the
pre-warm round's duration and the load average; then the medians over the runs. Which half
goes first alternates between runs. Every wait is bounded (``--timeout``), every request has
a timeout, every process is stopped (SIGTERM, then SIGKILL) and the temp dir removed.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from reelcdn.loadtest.bench import machine
from reelcdn.loadtest.bench.common import (
    BenchFailure,
    log,
    non_negative_int,
    positive_int,
    run_main,
)
from reelcdn.loadtest.bench.feed import cli, publish_demo, run_async, toml_string, video_id
from reelcdn.loadtest.bench.procs import LOOPBACK, ManagedProcess, StartupError, free_port

PROG = "python -m reelcdn.loadtest.bench.prewarm"
REQUEST_TIMEOUT = 10.0     # one player request, one API or admin request
POLL = 0.1                 # seconds between polls of the feed and of /metrics
MAX_TOP = 50               # the feed API's page limit: the top is checked on one page
MAX_VIDEOS = 1000          # one play batch holds at most this many videos
START_ATTEMPTS = 3         # a half started again on new ports when one was taken meanwhile
MODES = ("off", "on")
KINDS = ("master", "media", "init", "segment")
KIND_TITLES = {"master": "master", "media": "media playlist", "init": "init",
               "segment": "first segment"}


# -- the topology ------------------------------------------------------------------------------

@dataclass
class Site:
    """One half of a run: its topology file, key file, data dir and the ports it names."""

    work: Path
    origin_root: Path
    edges: int
    prewarm_top: int
    prefetch_segments: int
    plays_token: str = field(default_factory=lambda: secrets.token_hex(16))
    ports: dict[str, int] = field(init=False)
    config: Path = field(init=False)
    key_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.key_file = self.work / "origin-keys"
        self.key_file.write_text(f"k1 {secrets.token_hex(32)}\n")
        self.key_file.chmod(0o600)
        names = ["shield-1", "regional-1", *self.edge_names, "api"]
        self.ports = {key: free_port() for name in names for key in (name, f"{name} admin")}
        self.config = self.work / "topology.toml"
        self.config.write_text(self.text())

    @property
    def edge_names(self) -> list[str]:
        return [f"edge-{chr(ord('a') + n)}" for n in range(self.edges)]

    @property
    def node_names(self) -> list[str]:
        """Parents first."""
        return ["shield-1", "regional-1", *self.edge_names]

    def text(self) -> str:
        p = self.ports
        # The media TTL rules and prefetch of the embedded default topology (reelcdn/
        # default_topology.toml); meta.json's freshness comes from its sidecar (a day, ready).
        text = f"""# reelcdn.loadtest.bench.prewarm: shield -> regional -> edges, the origin service
[defaults]
prefetch_segments = {self.prefetch_segments}

[[defaults.ttl]]
match = "*.m4s"
ttl = "1d"

[[defaults.ttl]]
match = "*/init.mp4"
ttl = "1d"

[[defaults.ttl]]
match = "*.m3u8"
ttl = "2s"

[origin.main]
type = "fs"
root = {toml_string(self.origin_root)}

[node.shield-1]
role = "shield"
listen = "{LOOPBACK}:{p['shield-1']}"
admin = "{LOOPBACK}:{p['shield-1 admin']}"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "{LOOPBACK}:{p['regional-1']}"
admin = "{LOOPBACK}:{p['regional-1 admin']}"
parents = ["shield-1"]
"""
        for name in self.edge_names:
            text += f"""
[node.{name}]
role = "edge"
listen = "{LOOPBACK}:{p[name]}"
admin = "{LOOPBACK}:{p[f'{name} admin']}"
parents = ["regional-1"]
"""
        return text + f"""
[api]
listen = "{LOOPBACK}:{p['api']}"
admin = "{LOOPBACK}:{p['api admin']}"
data_dir = {toml_string(self.work / "api")}
publish_to = "main"
key_file = {toml_string(self.key_file)}
plays_token = "{self.plays_token}"
trending_interval = "1s"
prewarm_top = {self.prewarm_top}
"""

    def seed(self, ids: Sequence[str], duration: float, renditions: Sequence[str]) -> None:
        """``ids`` as ready videos, through the catalog's interface (before the service
        starts, as the feed benchmark seeds its catalog)."""
        from reelcdn.edge.config import load_topology
        from reelcdn.origin.config import check_services, open_catalog, services_from_topology

        services = services_from_topology(load_topology(self.config, check=check_services))
        services.data_dir.mkdir(parents=True, exist_ok=True)
        catalog = open_catalog(services.catalog)
        for number, vid in enumerate(ids):
            catalog.create(vid, f"creator{number % 5}", {"title": f"Video {number}"},
                           status="ready")
            catalog.set_status(vid, "ready", duration=duration, renditions=list(renditions))

    def token(self, user: str) -> str:
        from reelcdn.origin.users import load_keys, mint

        return mint(user, load_keys(self.key_file), 3600)


# -- small HTTP helpers (blocking: setup and polls, not the measured requests) ----------------

def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None, timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body,
                     headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def healthy(admin_port: int) -> bool:
    return request(admin_port, "GET", "/health", timeout=1.0)[0] == 200


def scrape(admin_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A process's ``/metrics`` as ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = request(admin_port, "GET", "/metrics")
    if status != 200:
        raise BenchFailure(f"/metrics on admin port {admin_port} answered {status}")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode("utf-8", "replace"))
            for s in family.samples}


def metric(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and want <= set(ls))


def wait_until(check: Callable[[], bool], what: str, timeout: float) -> float:
    """Poll ``check`` every POLL s until true; the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise BenchFailure(f"{what}: not after {timeout:g} s")
        time.sleep(POLL)
    return time.monotonic() - started


# -- the player-like client --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fetch:
    kind: str            # master | media | init | segment
    path: str
    status: int
    outcome: str         # what the edge counted (edge/ops/ratios.py), "none" without a member
    collapsed: bool      # the edge joined a fetch in flight (a prefetch's included)
    head: float          # seconds from sending the request to the response head
    size: int


async def play_start(base: str, edge: str, video: str) -> list[Fetch]:
    """What a player asks first of one video, on one fresh keep-alive connection: master →
    the lowest-bandwidth media playlist → its init → its first segment."""
    import aiohttp

    from reelcdn.loadtest import cachestatus, hls

    fetches: list[Fetch] = []
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def get(kind: str, url: str) -> bytes:
            started = time.perf_counter()
            async with session.get(url) as response:
                head = time.perf_counter() - started
                body = await response.read()
                members = cachestatus.parse(response.headers.get("Cache-Status"))
            mine = members[-1] if members and members[-1].name == edge else None
            fetches.append(Fetch(kind, url[len(base):], response.status,
                                 mine.outcome if mine else "none",
                                 bool(mine and mine.collapsed), head, len(body)))
            if response.status != 200:
                raise BenchFailure(f"{edge}: GET {url[len(base):]} answered "
                                   f"{response.status}")
            return body

        master_url = f"{base}/v/{video}/master.m3u8"
        master = hls.parse_master((await get("master", master_url)).decode(), master_url)
        lowest = master[0].uri
        media = hls.parse_media((await get("media", lowest)).decode(), lowest)
        if media.init_uri is not None:
            await get("init", media.init_uri)
        await get("segment", media.segments[0].uri)
    return fetches


async def play_all(starts: Sequence[tuple[str, str, str]]) -> list[list[Fetch]]:
    """``(base URL, edge name, video)`` one after another (so each time to the head is one
    request's, not a queue's), each bounded by the requests' timeouts."""
    return [await play_start(base, edge, video) for base, edge, video in starts]


# -- one half of a run -------------------------------------------------------------------------

@dataclass
class Half:
    run: int
    mode: str                       # off | on
    position: int                   # 1: this half went first in its run, 2: second
    top: list[list[Fetch]]          # per top video, in rank order
    below: list[list[Fetch]]        # the control: videos below the top
    warmed: int                     # reelcdn_origin_prewarm_videos_total at the fetches
    rounds: dict[str, int]          # prewarm rounds by result
    round_seconds: float | None     # mean duration of the rounds that warmed something
    wait_trending: float            # plays posted → the trending feed showing them
    wait_prewarm: float             # trending shown → every top video warmed
    edge_first: dict[str, int]      # the edges' prewarmed first hits / misses / waiting
    load: float

    def fetches(self, kind: str, control: bool = False) -> list[Fetch]:
        return [f for video in (self.below if control else self.top) for f in video
                if f.kind == kind]

    def outcomes(self, kind: str, control: bool = False) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.fetches(kind, control):
            counts[f.outcome] = counts.get(f.outcome, 0) + 1
        return counts

    def hit_ratio(self, kind: str, control: bool = False) -> float | None:
        from reelcdn.edge.ops.ratios import hit_ratio

        return hit_ratio(self.outcomes(kind, control))

    def head_median(self, kind: str) -> float | None:
        heads = [f.head for f in self.fetches(kind)]
        return statistics.median(heads) if heads else None

    def summary(self) -> dict[str, object]:
        segments = self.fetches("segment")
        return {
            "run": self.run, "mode": self.mode, "position": self.position,
            "videos": len(self.top),
            "hit_ratio": {kind: self.hit_ratio(kind) for kind in KINDS},
            "hits": {kind: hit_count(self.fetches(kind)) for kind in KINDS},
            "segment_outcomes": self.outcomes("segment"),
            "segment_collapsed": sum(f.collapsed for f in segments),
            "segment_head_ms": [round(f.head * 1000, 3) for f in segments],
            "segment_head_median_ms": _ms(self.head_median("segment")),
            "control_videos": len(self.below),
            "control_segment_hit_ratio": self.hit_ratio("segment", control=True),
            "warmed": self.warmed, "rounds": self.rounds,
            "round_seconds": self.round_seconds,
            "wait_trending_s": round(self.wait_trending, 3),
            "wait_prewarm_s": round(self.wait_prewarm, 3),
            "edge_prewarmed": self.edge_first, "load": self.load,
            "fetches": [asdict(f) for video in (*self.top, *self.below) for f in video],
        }


def hit_count(fetches: Sequence[Fetch]) -> int:
    from reelcdn.edge.ops.ratios import HIT_OUTCOMES

    return sum(f.outcome in HIT_OUTCOMES for f in fetches)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def start_site(site: Site, log_dir: Path, running: list[ManagedProcess],
               timeout: float) -> None:
    """Every node (at once, then each waited for), then the origin service."""
    nodes = []
    for name in site.node_names:
        process = ManagedProcess(f"{log_dir.name}-{name}",
                                 cli("node", "--config", str(site.config), "--name", name),
                                 log_dir)
        running.append(process)
        process.start()
        nodes.append((name, process))
    for name, process in nodes:
        admin = site.ports[f"{name} admin"]
        process.wait_ready(lambda a=admin: healthy(a), "/health answering 200", timeout)
    origin = ManagedProcess(f"{log_dir.name}-origin",
                            cli("origin", "--config", str(site.config)), log_dir)
    running.append(origin)
    origin.start()
    origin.wait_ready(lambda: healthy(site.ports["api admin"]), "/health answering 200",
                      timeout)


def start_fresh(name: str, prewarm_top: int, work: Path, origin_root: Path,
                ids: Sequence[str], meta: tuple[float, list[str]], args: argparse.Namespace,
                processes: list[ManagedProcess]) -> Site:
    """A half's topology written, seeded and started, on fresh ports and a fresh data dir
    again (at most START_ATTEMPTS times) when a port it picked was bound by another socket
    before its server bound it: ``free_port`` takes ports from the ephemeral range, which the
    many client connections of the earlier halves' processes draw from too."""
    for attempt in range(1, START_ATTEMPTS + 1):
        log_dir = work / (name if attempt == 1 else f"{name}-{attempt}")
        site = Site(log_dir, origin_root, args.edges, prewarm_top, args.prefetch_segments)
        site.seed(ids, *meta)
        try:
            start_site(site, log_dir, processes, args.timeout)
            return site
        except StartupError as exc:
            if "address already in use" not in exc.details or attempt == START_ATTEMPTS:
                raise
            log(f"{exc.name}: a port was taken meanwhile; {name} again on new ports")
            for process in reversed(processes):
                process.stop(grace=10.0)
            processes.clear()
    raise AssertionError("unreachable: the last attempt returns or raises")


def post_plays(site: Site, ids: Sequence[str], top: int) -> None:
    """One batch, as an edge posts it: the top videos 1000, 990, ... starts (rank order),
    the others fewer than any of them."""
    plays = [{"video_id": vid, "starts": 1000 - 10 * rank if rank < top else
              max(1, 500 - rank)} for rank, vid in enumerate(ids)]
    body = json.dumps({"batch": f"edge-a:{secrets.token_hex(16)}", "node": "edge-a",
                       "plays": plays}).encode()
    status, answer = request(site.ports["api"], "POST", "/api/v1/plays",
                             {"Authorization": f"Bearer {site.plays_token}",
                              "Content-Type": "application/json"}, body)
    if status != 200:
        raise BenchFailure(f"POST /api/v1/plays answered {status}: {answer[:300]!r}")
    if json.loads(answer).get("unknown"):
        raise BenchFailure(f"the origin counted some plays as unknown videos: {answer!r}")


def trending_first(site: Site, token: str, limit: int) -> list[str]:
    status, body = request(site.ports["api"], "GET",
                           f"/api/v1/feed?feed_type=trending&limit={limit}",
                           {"Authorization": f"Bearer {token}"})
    if status != 200:
        raise BenchFailure(f"the trending feed answered {status}: {body[:300]!r}")
    return [item["id"] for item in json.loads(body)["items"]]


def run_half(number: int, mode: str, position: int, work: Path, origin_root: Path,
             ids: Sequence[str], meta: tuple[float, list[str]],
             args: argparse.Namespace) -> Half:
    mine: list[ManagedProcess] = []
    try:
        site = start_fresh(f"run{number}-{mode}", args.top if mode == "on" else 0, work,
                           origin_root, ids, meta, args, mine)
        load = os.getloadavg()[0]
        top, below = list(ids[:args.top]), list(ids[args.top:args.top * 2])
        token = site.token("viewer")
        posted = time.monotonic()
        post_plays(site, ids, args.top)
        wait_until(lambda: trending_first(site, token, args.top) == top,
                   "the trending feed listing the top videos in order", args.timeout)
        wait_trending = time.monotonic() - posted
        wait_prewarm = 0.0
        admin = site.ports["api admin"]
        if mode == "on":
            wait_prewarm = wait_until(
                lambda: metric(scrape(admin), "reelcdn_origin_prewarm_videos_total")
                >= args.top, "every top video pre-warmed into every node", args.timeout)
        values = scrape(admin)
        rounds = {result: int(metric(values, "reelcdn_origin_prewarm_rounds_total",
                                     result=result))
                  for result in ("done", "failed", "skipped")}
        count = metric(values, "reelcdn_origin_prewarm_seconds_count")
        round_seconds = (round(metric(values, "reelcdn_origin_prewarm_seconds_sum") / count, 3)
                         if count else None)
        warmed = int(metric(values, "reelcdn_origin_prewarm_videos_total"))
        edges = site.edge_names
        bases = {name: f"http://{LOOPBACK}:{site.ports[name]}" for name in edges}

        def starts(videos: Sequence[str]) -> list[tuple[str, str, str]]:
            return [(bases[edges[i % len(edges)]], edges[i % len(edges)], v)
                    for i, v in enumerate(videos)]

        played = run_async(asyncio.wait_for(play_all(starts(top + below)),
                                            timeout=args.timeout))
        edge_first = {"hits": 0, "misses": 0, "waiting": 0}
        for name in edges:
            values = scrape(site.ports[f"{name} admin"])
            edge_first["hits"] += int(metric(values, "reelcdn_prewarmed_first_hits_total"))
            edge_first["misses"] += int(metric(values, "reelcdn_prewarmed_first_misses_total"))
            edge_first["waiting"] += int(metric(values, "reelcdn_prewarmed_waiting"))
        return Half(number, mode, position, played[:len(top)], played[len(top):], warmed,
                    rounds, round_seconds, wait_trending, wait_prewarm, edge_first, load)
    finally:
        for process in reversed(mine):  # the origin first (its prewarm), then edges up
            process.stop(grace=10.0)


# -- the report --------------------------------------------------------------------------------

def fmt_ratio(ratio: float | None, hits: int | None = None, total: int | None = None) -> str:
    if ratio is None:
        return "-"
    text = f"{ratio * 100:.0f} %"
    return f"{text} ({hits}/{total})" if hits is not None else text


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def command_line(args: argparse.Namespace) -> str:
    words = [*PROG.split(), "--repeat", str(args.repeat), "--videos", str(args.videos),
             "--top", str(args.top)]
    if args.edges != 2:
        words += ["--edges", str(args.edges)]
    if args.prefetch_segments != 2:
        words += ["--prefetch-segments", str(args.prefetch_segments)]
    return shlex.join(words)


def medians(halves: Sequence[Half]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for mode in MODES:
        mine = [h for h in halves if h.mode == mode]
        row: dict[str, float | None] = {kind: median([h.hit_ratio(kind) for h in mine])
                                        for kind in KINDS}
        row["segment_head_median_ms"] = _ms(median([h.head_median("segment") for h in mine]))
        row["control_segment_hit_ratio"] = median(
            [h.hit_ratio("segment", control=True) for h in mine])
        out[mode] = row
    return out


def report(args: argparse.Namespace, halves: Sequence[Half], started: datetime,
           info: machine.MachineInfo, meta: tuple[float, list[str]]) -> str:
    title = {"off": "before (prewarm_top = 0)", "on": f"after (prewarm_top = {args.top})"}
    lines = [f"### Trending pre-warm: edge hit ratio of the top {args.top} trending videos' "
             f"first requests, before vs after", "",
             f"Command: `{command_line(args)}`", "",
             f"Run: {started:%Y-%m-%d %H:%M} UTC; {args.videos} videos (the {meta[0]:g} s demo "
             f"video, renditions {', '.join(meta[1])}) published and ready, plays posted to "
             f"the origin with the "
             f"plays token, the top {args.top} given the most; shield → regional → "
             f"{args.edges} edge(s) as `reelcdn node` processes, `reelcdn origin` with "
             f"trending_interval = 1s and the default prewarm_rungs = 2, prewarm_segments = 2; "
             f"edges prefetch_segments = {args.prefetch_segments}. Each half on fresh "
             f"processes (cold caches); a player-like client plays master → lowest media "
             f"playlist → init → first segment of each top video from an edge (round robin), "
             f"one video after another, each on a fresh connection. Hit = the edge's "
             f"Cache-Status member is a hit (or stale); head = request sent → response head.",
             "",
             "| run | half | master | media playlist | init | first segment | first segment "
             "outcomes | first segment head p50 ms | control (below top) first segment | "
             "warmed / rounds done·failed | round s | edges' prewarmed first hits / misses | "
             "load (1 min) |",
             "|---:|---|---:|---:|---:|---:|---|---:|---:|---|---:|---|---:|"]
    for h in halves:
        cells = []
        for kind in KINDS:
            fetched = h.fetches(kind)
            cells.append(fmt_ratio(h.hit_ratio(kind), hit_count(fetched), len(fetched)))
        outcomes = h.outcomes("segment")
        collapsed = sum(f.collapsed for f in h.fetches("segment"))
        text = " · ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        if collapsed:
            text += f" (collapsed {collapsed})"
        lines.append(
            f"| {h.run} | {h.mode} ({'first' if h.position == 1 else 'second'}) | "
            f"{' | '.join(cells)} | {text} | {fmt_ms(_ms(h.head_median('segment')))} | "
            f"{fmt_ratio(h.hit_ratio('segment', control=True))} | "
            f"{h.warmed} / {h.rounds['done']}·{h.rounds['failed']} | "
            f"{'-' if h.round_seconds is None else f'{h.round_seconds:.2f}'} | "
            f"{h.edge_first['hits']} / {h.edge_first['misses']} | {h.load:.2f} |")
    med = medians(halves)
    lines += ["", f"Medians over the {args.repeat} run(s):", "",
              "| | master | media playlist | init | first segment | first segment head p50 "
              "ms | control first segment |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for mode in MODES:
        row = med[mode]
        lines.append(f"| {title[mode]} | "
                     + " | ".join(fmt_ratio(row[kind]) for kind in KINDS)
                     + f" | {fmt_ms(row['segment_head_median_ms'])} | "
                       f"{fmt_ratio(row['control_segment_hit_ratio'])} |")
    before, after = med["off"], med["on"]
    after_halves = [h for h in halves if h.mode == "on"]
    first = {key: sum(h.edge_first[key] for h in after_halves)
             for key in ("hits", "misses", "waiting")}
    lines += ["", f"Edge hit ratio of the top {args.top} trending videos' first segments: "
              f"**{fmt_ratio(before['segment'])} before, {fmt_ratio(after['segment'])} after "
              f"the pre-warm**; their median time to the response head "
              f"{fmt_ms(before['segment_head_median_ms'])} ms before, "
              f"{fmt_ms(after['segment_head_median_ms'])} ms after (medians of the runs' "
              f"medians). The edges' own counters over the after halves: "
              f"{first['hits']} pre-warmed objects whose first request was a HIT "
              f"(`reelcdn_prewarmed_first_hits_total`), {first['misses']} not "
              f"(`_first_misses_total`), {first['waiting']} pre-warmed and asked by no player "
              f"here (`reelcdn_prewarmed_waiting`: the second rung, the second segments, and "
              f"every object on the edges that did not play the video)."]
    if args.prefetch_segments:
        lines += ["", "With the edges' prefetch on, a before-half init or first segment "
                  "asked while the edge's prefetch of it is in flight joins that fill (a "
                  "miss, collapsed) and one asked after it is a HIT: on loopback the player "
                  "is a fraction of a millisecond behind the prefetch, so that figure is a "
                  "race (a player a network round trip away leaves the prefetch longer). "
                  "`--prefetch-segments 0` measures the pre-warm alone."]
    lines += ["",
              f"Run ended {datetime.now(UTC):%H:%M} UTC; load average at the end (1/5/15 "
              f"min): {machine.loadavg()}.", "", "Machine:", "", *info.markdown_lines()]
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=positive_int, default=3,
                        help="runs, each a before and an after half; 3")
    parser.add_argument("--videos", type=positive_int, default=30,
                        help="videos published, seeded and given plays; 30")
    parser.add_argument("--top", type=positive_int, default=10,
                        help="the top trending videos pre-warmed and played; 10 (the "
                             "product's prewarm_top)")
    parser.add_argument("--edges", type=positive_int, default=2,
                        help="edges under the regional; 2 (as `reelcdn up`)")
    parser.add_argument("--prefetch-segments", type=non_negative_int, default=2,
                        help="the edges' prefetch after a media playlist; 2 (as `reelcdn up`),"
                             " 0: off")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds any one wait (a start, the trending, the pre-warm, the "
                             "plays) may take; 60")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every half and the medians as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(list(argv))
    if args.top > MAX_TOP:
        parser.error(f"--top is at most {MAX_TOP} (one page of the trending feed)")
    if not args.top <= args.videos <= MAX_VIDEOS:
        parser.error(f"--videos must be from --top to {MAX_VIDEOS}")
    if not 0 < args.timeout <= 600:
        parser.error("--timeout must be in (0, 600]")
    return args


def run(argv: list[str]) -> int:
    from reelcdn.manifests.meta import VideoMeta

    args = parse_args(argv)
    started = datetime.now(UTC)
    info = machine.collect({"reelcdn": machine.source_revision(Path(__file__).resolve()
                                                               .parents[2])})
    work = Path(tempfile.mkdtemp(prefix="reelcdn-bench-prewarm-"))
    try:
        ids = [video_id(n + 1) for n in range(args.videos)]
        origin_root = work / "origin"
        log(f"publishing the demo video under {len(ids)} ids")
        duration = publish_demo(origin_root, ids)
        renditions = [r.name for r in VideoMeta.read(origin_root / "v" / ids[0]
                                                     / "meta.json").renditions]
        halves: list[Half] = []
        for number in range(1, args.repeat + 1):
            order = MODES if number % 2 else tuple(reversed(MODES))
            for position, mode in enumerate(order, 1):
                half = run_half(number, mode, position, work, origin_root, ids,
                                (duration, renditions), args)
                halves.append(half)
                log(f"run {number} {mode}: first segment hit ratio "
                    f"{fmt_ratio(half.hit_ratio('segment'))}, head p50 "
                    f"{fmt_ms(_ms(half.head_median('segment')))} ms, warmed {half.warmed}, "
                    f"load {half.load:.2f}")
        print(report(args, halves, started, info, (duration, renditions)))
        if args.json is not None:
            args.json.write_text(json.dumps({
                "command": command_line(args), "started": started.isoformat(),
                "top": args.top, "videos": args.videos, "edges": args.edges,
                "prefetch_segments": args.prefetch_segments,
                "halves": [h.summary() for h in halves], "medians": medians(halves),
                "loadavg_start": info.loadavg, "loadavg_end": machine.loadavg(),
            }, indent=1))
        return 0
    finally:  # each half has stopped its own processes
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    def guarded(words: list[str]) -> int:
        try:
            return run(words)
        except StartupError as exc:
            print(f"{PROG}: {exc}\n{exc.details}", file=sys.stderr)
            return 1
        except BenchFailure as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1

    return run_main(guarded, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
