"""The feed's latency at a fixed arrival rate, with memcached and without.

    python -m reelcdn.loadtest.bench.feed [--rate 500] [--duration 10s] [--repeat 3]
        [--videos 300] [--feed-type for_you] [--engaged] [--profile DIR]

Starts, as processes on 127.0.0.1 ephemeral ports, two ``reelcdn origin`` services from two
topology files that differ only in a ``[cache]`` section (``servers`` = a ``memcached`` this
bench starts, ``-m 64``), each with its own data directory whose catalog is seeded with
``--videos`` ready rows (through the catalog's interface, ``open_catalog``, before the
service starts; by ``--creators`` owners, so that for_you has videos of others) and whose
fs origin holds the demo video published under the first few ids (``publish_demo``: one
short synthesised demo copied under each id, as tests/test_feed_prewarm.py does). With
``--engaged`` each viewer also gets a history before the service starts (2 creators
followed, 20 videos liked, 50 played: ``FeedSite.engage``), so that for_you's ranking has
their ties to score; without it the viewers have none.

Each run drives ``GET /api/v1/feed?feed_type=…&limit=10`` at a fixed arrival rate
(``--rate`` per second, one request every 1/rate s: open loop, the next request does not wait
for the last) for ``--duration``, with the tokens of ``--users`` viewers in turn, on one
aiohttp session (keep-alive, at most ``--max-in-flight`` requests at once; an arrival over it
is counted as dropped, not queued). A request's latency runs from its scheduled time to the
last byte of the answer, so a late client (or a queue in the server) is in the figure and not
hidden (no coordinated omission); the client's own lateness is reported beside it.

Warm: each service first gets one unrecorded run of the same load. Then ``--repeat`` rounds,
each running both services, alternating which goes first, one at a time (the other is idle).
Reported: every run (p50, p99, max, errors, dropped, achieved rate, the origin process's CPU
per request, its cache hits and misses from ``/metrics``, the load average), the medians of
each and the target (p99 ≤ 10 ms with memcached warm). ``--profile DIR`` records the origin
process of each kind with ``py-spy record`` during its last run (raw collapsed stacks) and
prints where the samples fall (SQLite, JSON, memcached, aiohttp, the ranking ...).

Every loop is bounded (the runs by their duration plus a timeout, each request by 5 s) and
every process is stopped at the end (SIGTERM, then SIGKILL), the temp dir removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from reelcdn.loadtest.bench import machine
from reelcdn.loadtest.bench.common import BenchFailure, log, positive_int, run_main
from reelcdn.loadtest.bench.procs import LOOPBACK, ManagedProcess, free_port

PROG = "python -m reelcdn.loadtest.bench.feed"
TARGET_P99_MS = 10.0
REQUEST_TIMEOUT = 5.0
CREATORS = ("ana", "ben", "chloe", "dev", "eli", "fay", "gus", "hana")


# -- the setup (also used by tests/test_loadtest_feed.py) --------------------------------------

def cli(*words: str) -> list[str]:
    """The reelcdn CLI of this interpreter."""
    return [sys.executable, "-m", "reelcdn.cli", *words]


def toml_string(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string: the same escapes as JSON's


def video_id(n: int) -> str:
    """A valid video id (26 of a-z 2-7) for the number ``n``."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    digits = []
    for _ in range(26):
        digits.append(alphabet[n % 32])
        n //= 32
    return "".join(reversed(digits))


def publish_demo(root: Path, ids: Sequence[str]) -> float:
    """One short demo video (two small renditions) synthesised under ``root`` and published
    under each of ``ids`` (its meta.json's ``video_id`` rewritten); its duration."""
    from reelcdn.manifests.meta import VideoMeta
    from reelcdn.origin.demo import LadderRung, synthesise_demo_videos

    rungs = (LadderRung("144p", 256, 144, 150_000, 48_000, "main"),
             LadderRung("240p", 426, 240, 300_000, 64_000, "main"))
    synthesise_demo_videos(root, count=1, duration=4.0, renditions=rungs, log=lambda _: None)
    source = root / "v" / "demo-1"
    for vid in ids:
        target = root / "v" / vid
        if not target.exists():
            shutil.copytree(source, target)
            meta = VideoMeta.read(target / "meta.json")
            meta.replace(video_id=vid).write(target / "meta.json")
    return VideoMeta.read(source / "meta.json").duration


@dataclass
class FeedSite:
    """A topology file for one origin service (and, with ``edge``, one edge node in front of
    its fs origin), its key file and data dir; ``seed`` fills its catalog."""

    work: Path
    api_port: int
    admin_port: int
    memcached: int | None = None          # a [cache] section pointing at this port
    edge: tuple[int, int] | None = None   # (listen, admin) of an edge under the shield
    origin_root: Path | None = None       # shared fs origin (default: work/origin)
    config: Path = field(init=False)
    key_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        root = self.origin_root or self.work / "origin"
        root.mkdir(parents=True, exist_ok=True)
        self.key_file = self.work / "origin-keys"
        if not self.key_file.exists():
            self.key_file.write_text(f"k1 {os.urandom(32).hex()}\n")
            self.key_file.chmod(0o600)
        text = f"""# reelcdn.loadtest.bench.feed
[origin.main]
type = "fs"
root = {toml_string(root)}

[node.shield-1]
role = "shield"
listen = "{LOOPBACK}:{free_port()}"
admin = "{LOOPBACK}:{free_port()}"
origins = ["main"]
"""
        if self.edge is not None:
            text += f"""
[node.edge-a]
role = "edge"
listen = "{LOOPBACK}:{self.edge[0]}"
admin = "{LOOPBACK}:{self.edge[1]}"
parents = ["shield-1"]
"""
        text += f"""

[api]
listen = "{LOOPBACK}:{self.api_port}"
admin = "{LOOPBACK}:{self.admin_port}"
data_dir = {toml_string(self.work / "api")}
publish_to = "main"
key_file = {toml_string(self.key_file)}
trending_interval = "1h"
prewarm_top = 0
"""
        if self.memcached is not None:
            text += f'\n[cache]\nservers = ["{LOOPBACK}:{self.memcached}"]\n'
        self.config = self.work / "topology.toml"
        self.config.write_text(text)

    @property
    def api(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def token(self, user: str, ttl: float = 86400) -> str:
        from reelcdn.origin.users import load_keys, mint

        return mint(user, load_keys(self.key_file), ttl)

    def seed(self, ids: Sequence[str], duration: float = 4.0) -> None:
        """``ids`` as ready videos of :data:`CREATORS` in turn, through the catalog's
        interface (the service is not running yet)."""
        from reelcdn.edge.config import load_topology
        from reelcdn.origin.config import check_services, open_catalog, services_from_topology

        topology = load_topology(self.config, check=check_services)
        services = services_from_topology(topology)
        services.data_dir.mkdir(parents=True, exist_ok=True)
        catalog = open_catalog(services.catalog)
        for number, vid in enumerate(ids):
            owner = CREATORS[number % len(CREATORS)]
            catalog.create(vid, owner, {"title": f"Video {number}", "caption": "seeded",
                                        "hashtags": f"#bench #tag{number % 7}"},
                           status="ready")
            catalog.set_status(vid, "ready", duration=duration, renditions=["144p", "240p"])

    def engage(self, users: Sequence[str], ids: Sequence[str], *, seed: int = 7) -> None:
        """Give each viewer a history, as a for_you viewer has (before the service starts):
        2 creators followed, 20 videos liked, 50 played (marked seen through a registered
        CMCD session and a play batch), chosen at random (``seed``) — every video is then
        tied to every viewer through its hashtags, the ranking's hardest case."""
        import random

        from reelcdn.edge.config import load_topology
        from reelcdn.origin.config import check_services, services_from_topology
        from reelcdn.origin.feed.store import Play, SqliteEngagementStore

        services = services_from_topology(load_topology(self.config, check=check_services))
        store = SqliteEngagementStore(services.data_dir / "feed.sqlite")
        chosen, now = random.Random(seed), time.time()
        try:
            for number, user in enumerate(users):
                for creator in chosen.sample(CREATORS, 2):
                    store.follow(user, creator, now)
                for vid in chosen.sample(list(ids), min(20, len(ids))):
                    store.like(user, vid, now)
                sid = f"bench-{number}"
                store.register_session(sid, user, now + 86400, now)
                plays = [Play(vid, 1, 1, (sid,))
                         for vid in chosen.sample(list(ids), min(50, len(ids)))]
                store.ingest(f"bench:{number:032x}", "bench", plays, 0, now)
        finally:
            store.close()

    def origin_process(self, name: str, log_dir: Path) -> ManagedProcess:
        return ManagedProcess(name, cli("origin", "--config", str(self.config)), log_dir)

    def feed_first(self, token: str, feed_type: str = "for_you") -> str | None:
        """The id of the first item of ``token``'s user's feed page, None for an empty one."""
        status, body = _get(self.api_port, f"/api/v1/feed?feed_type={feed_type}&limit=10",
                            {"Authorization": f"Bearer {token}"})
        if status != 200:
            raise BenchFailure(f"the feed answered {status}: {body[:200]!r}")
        items = json.loads(body)["items"]
        return items[0]["id"] if items else None

    def feed_ready(self, token: str) -> bool:
        reply = _get(self.api_port, "/api/v1/feed?limit=1",
                     {"Authorization": f"Bearer {token}"})
        return reply[0] == 200


def _get(port: int, path: str, headers: dict[str, str] | None = None,
         timeout: float = 2.0) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def start_memcached(log_dir: Path, port: int) -> ManagedProcess:
    exe = shutil.which("memcached") or "/usr/bin/memcached"
    argv = [exe, "-l", LOOPBACK, "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to run as root without it
    process = ManagedProcess("memcached", argv, log_dir)
    process.start()

    def listening() -> bool:
        import socket

        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True

    process.wait_ready(listening, "listening")
    return process


# -- the driver --------------------------------------------------------------------------------

@dataclass
class DriveResult:
    latencies: list[float]          # seconds, scheduled time → last byte, 200s only
    errors: dict[str, int]
    dropped: int
    sent: int
    lateness: list[float]           # seconds the client sent after the scheduled time
    wall: float

    def pct(self, q: float) -> float | None:
        from reelcdn.loadtest.summary import percentile

        return percentile(self.latencies, q)


async def drive(url: str, tokens: Sequence[str], rate: float, duration: float,
                max_in_flight: int = 256) -> DriveResult:
    """GET ``url`` every 1/``rate`` s for ``duration`` s with ``tokens`` in turn (open loop,
    bounded: at most ``max_in_flight`` at once, the rest dropped; every request times out)."""
    import aiohttp

    count = int(rate * duration)
    latencies: list[float] = []
    lateness: list[float] = []
    errors: dict[str, int] = {}
    dropped = 0
    in_flight: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)

    async def one(session: aiohttp.ClientSession, scheduled: float, token: str) -> None:
        lateness.append(time.monotonic() - scheduled)
        try:
            async with session.get(url, headers={"Authorization": f"Bearer {token}"},
                                   timeout=timeout) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        if status == 200:
            latencies.append(time.monotonic() - scheduled)
        else:
            errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1

    connector = aiohttp.TCPConnector(limit=max_in_flight, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        started = time.monotonic()
        for i in range(count):
            scheduled = started + i / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                dropped += 1
                continue
            task = asyncio.ensure_future(one(session, scheduled, tokens[i % len(tokens)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=REQUEST_TIMEOUT + 1)
        wall = time.monotonic() - started
        for task in list(in_flight):
            task.cancel()
    return DriveResult(latencies, errors, dropped, count - dropped, lateness, wall)


# -- the runs ----------------------------------------------------------------------------------

@dataclass
class Run:
    kind: str                 # memcached | none
    round: int
    p50: float | None         # ms
    p99: float | None
    max: float | None
    ok: int
    errors: dict[str, int]
    dropped: int
    rate: float               # answered per second
    late_p99: float           # ms
    cpu_per_request: float    # ms of the origin process's CPU per request
    cache: dict[str, int]     # hits, misses of the run (from /metrics)
    load: float


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_CACHE = re.compile(r'^reelcdn_origin_cache_(hits|misses|errors)_total\{[^}]*\}\s+([0-9.e+]+)$',
                    re.M)


def cache_counts(admin_port: int) -> dict[str, int]:
    try:
        status, body = _get(admin_port, "/metrics")
    except OSError:
        return {}
    if status != 200:
        return {}
    counts = {"hits": 0, "misses": 0, "errors": 0}
    for kind, value in _CACHE.findall(body.decode("utf-8", "replace")):
        counts[kind] += int(float(value))
    return counts


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def one_run(kind: str, number: int, site: FeedSite, process: ManagedProcess,
            tokens: Sequence[str], args: argparse.Namespace,
            profile: Path | None = None) -> Run:
    assert process.proc is not None
    pid = process.proc.pid
    url = f"{site.api}/api/v1/feed?feed_type={args.feed_type}&limit=10"
    load = os.getloadavg()[0]
    cache0, cpu0 = cache_counts(site.admin_port), cpu_seconds(pid)
    spy = None
    if profile is not None:
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--duration", str(int(args.duration)),
             "--rate", "250", "--format", "raw", "--nonblocking", "--threads", "--gil",
             "-o", str(profile)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = run_async(drive(url, tokens, args.rate, args.duration, args.max_in_flight))
    finally:
        if spy is not None:
            try:
                spy.wait(timeout=args.duration + 20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
    cpu = cpu_seconds(pid) - cpu0
    cache1 = cache_counts(site.admin_port)
    ok = len(result.latencies)
    return Run(kind=kind, round=number, p50=ms(result.pct(50)), p99=ms(result.pct(99)),
               max=ms(max(result.latencies)) if result.latencies else None, ok=ok,
               errors=result.errors, dropped=result.dropped,
               rate=round(ok / result.wall, 1) if result.wall else 0.0,
               late_p99=ms(_p99(result.lateness)) or 0.0,
               cpu_per_request=round(cpu * 1000 / max(result.sent, 1), 3),
               cache={k: cache1.get(k, 0) - cache0.get(k, 0)
                      for k in ("hits", "misses", "errors")},
               load=load)


def _p99(values: list[float]) -> float | None:
    from reelcdn.loadtest.summary import percentile

    return percentile(values, 99)


def run_async(coro):  # type: ignore[no-untyped-def]
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# -- profile -----------------------------------------------------------------------------------

CATEGORIES = (  # the first that matches a frame of a sample names the sample (innermost first)
    ("memcached", ("pymemcache", "origin/cache.py")),
    ("SQLite", ("sqlite3", "(execute)", "(executemany)", "(fetchall)", "(fetchone)",
                "origin/feed/store.py", "origin/videos.py")),
    ("JSON", ("json/", "(dumps)", "(loads)")),
    ("ranking", ("origin/feed/ranking.py",)),
    ("tokens, cursors", ("origin/users.py", "origin/feed/cursors.py")),
    ("feed service", ("origin/feed/service.py", "origin/feed/api.py")),
    ("aiohttp", ("aiohttp/", "asyncio/", "uvloop")),
)


def profile_summary(path: Path) -> list[tuple[str, float]]:
    """py-spy raw (collapsed) stacks → (category, share of the busy samples), largest first.
    A sample counts under the innermost frame that matches a category; idle threads (waiting
    on a lock, a queue or epoll) are left out."""
    counts: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1] if frames else ""
        if any(word in leaf for word in ("(wait)", "(_worker)", "(select)", "(poll)",
                                         "(run_forever)", "(acquire)", "(get) (queue")):
            continue
        n = int(number)
        total += n
        name = "other"
        for frame in reversed(frames):
            found = next((c for c, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if found is not None:
                name = found
                break
        counts[name] = counts.get(name, 0) + n
    return sorted(((k, v / total) for k, v in counts.items()), key=lambda kv: -kv[1]) \
        if total else []


# -- the command -------------------------------------------------------------------------------

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from reelcdn.loadtest.network import parse_seconds

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second; 500")
    parser.add_argument("--duration", type=parse_seconds, default=10.0,
                        help="seconds per run; 10s")
    parser.add_argument("--repeat", type=positive_int, default=3, help="rounds; 3")
    parser.add_argument("--videos", type=positive_int, default=300,
                        help="ready rows seeded into each catalog; 300")
    parser.add_argument("--published", type=positive_int, default=3,
                        help="of which published (the demo's files under their ids); 3")
    parser.add_argument("--engaged", action="store_true",
                        help="viewers with a history (follows, likes, plays): for_you's "
                             "ranking then scores their tied videos; default: none")
    parser.add_argument("--users", type=positive_int, default=50,
                        help="viewers whose tokens the requests use in turn; 50")
    parser.add_argument("--feed-type", choices=("for_you", "following", "trending"),
                        default="for_you")
    parser.add_argument("--max-in-flight", type=positive_int, default=256)
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="py-spy record the origin of each kind during its last run")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    return parser.parse_args(argv)


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def report(args: argparse.Namespace, runs: list[Run], started: datetime,
           info: machine.MachineInfo, profiles: dict[str, list[tuple[str, float]]]) -> str:
    lines = [f"# Feed latency at {args.rate:g} requests/s, memcached vs none", "",
             f"`{PROG} {' '.join(sys.argv[1:])}`", "",
             f"Run: {started:%Y-%m-%d %H:%M} UTC; {args.videos} ready videos, "
             f"feed_type={args.feed_type}, limit=10, {args.users} users"
             f"{' with a history (2 follows, 20 likes, 50 plays each)' if args.engaged else ''}, "
             f"{args.duration:g} s a run, one unrecorded warm-up run each; load average at "
             f"the start {info.loadavg}, at the end {machine.loadavg()}.", "",
             "| round | cache | p50 ms | p99 ms | max ms | ok | errors | dropped | answered/s "
             "| client late p99 ms | origin CPU ms/req | cache hits / misses / errors | load |",
             "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in runs:
        errors = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
        cache = (f"{r.cache.get('hits', 0)} / {r.cache.get('misses', 0)} / "
                 f"{r.cache.get('errors', 0)}") \
            if r.kind == "memcached" else "-"
        lines.append(f"| {r.round} | {r.kind} | {fmt(r.p50)} | {fmt(r.p99)} | {fmt(r.max)} | "
                     f"{r.ok} | {errors} | {r.dropped} | {r.rate:g} | {fmt(r.late_p99)} | "
                     f"{r.cpu_per_request:.3f} | {cache} | {r.load:.2f} |")
    lines += ["", "Medians of the rounds:", "",
              "| cache | p50 ms | p99 ms | max ms | origin CPU ms/req |",
              "|---|---:|---:|---:|---:|"]
    medians: dict[str, float | None] = {}
    for kind in ("memcached", "none"):
        mine = [r for r in runs if r.kind == kind]

        def med(values: list[float | None]) -> float | None:
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None

        p99 = med([r.p99 for r in mine])
        medians[kind] = p99
        lines.append(f"| {kind} | {fmt(med([r.p50 for r in mine]))} | {fmt(p99)} | "
                     f"{fmt(med([r.max for r in mine]))} | "
                     f"{fmt(med([r.cpu_per_request for r in mine]), '.3f')} |")
    warm = medians.get("memcached")
    lines += ["", "Target p99 ≤ 10 ms with memcached warm: " + (
        "no measurement" if warm is None else
        ("met" if warm <= TARGET_P99_MS else
         f"NOT met: {warm:.2f} ms, {warm - TARGET_P99_MS:.2f} ms over "
         f"({warm / TARGET_P99_MS:.1f}×)"))]
    for kind, shares in profiles.items():
        lines += ["", f"py-spy, origin with cache={kind}, busy samples by where they fall: "
                  + ", ".join(f"{name} {share * 100:.0f} %" for name, share in shares)]
    lines += ["", "Machine:", "", *info.markdown_lines()]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    if not (0 < args.rate <= 5000) or not (0 < args.duration <= 600):
        raise BenchFailure("--rate must be in (0, 5000] and --duration in (0, 600 s]")
    started = datetime.now(UTC)
    info = machine.collect({"reelcdn": machine.source_revision(Path(__file__).resolve()
                                                               .parents[2])})
    work = Path(tempfile.mkdtemp(prefix="reelcdn-bench-feed-"))
    running: list[ManagedProcess] = []
    try:
        ids = [video_id(n + 1) for n in range(args.videos)]
        origin_root = work / "origin"
        publish_demo(origin_root, ids[:args.published])
        mc_port = free_port()
        running.append(start_memcached(work, mc_port))
        sites = {
            "memcached": FeedSite(work / "with-cache", free_port(), free_port(),
                                  memcached=mc_port, origin_root=origin_root),
            "none": FeedSite(work / "no-cache", free_port(), free_port(),
                             origin_root=origin_root),
        }
        processes: dict[str, ManagedProcess] = {}
        tokens: dict[str, list[str]] = {}
        for kind, site in sites.items():
            site.seed(ids)
            if args.engaged:
                site.engage([f"viewer{n}" for n in range(args.users)], ids)
            tokens[kind] = [site.token(f"viewer{n}") for n in range(args.users)]
            process = site.origin_process(f"origin-{kind}", work)
            running.append(process)
            process.start()
            process.wait_ready(lambda s=site, k=kind: s.feed_ready(tokens[k][0]),
                               "answering the feed", timeout=30)
            processes[kind] = process
            log(f"origin ({kind}) ready: {site.api}, pid {process.proc.pid}")  # type: ignore
        for kind in sites:
            log(f"warm-up run: {kind}")
            one_run(kind, 0, sites[kind], processes[kind], tokens[kind], args)
        runs: list[Run] = []
        profiles: dict[str, list[tuple[str, float]]] = {}
        for number in range(1, args.repeat + 1):
            order = ("memcached", "none") if number % 2 else ("none", "memcached")
            for kind in order:
                profile = None
                if args.profile is not None and number == args.repeat:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profile = args.profile / f"origin-{kind}.txt"
                result = one_run(kind, number, sites[kind], processes[kind], tokens[kind],
                                 args, profile)
                log(f"round {number} {kind}: p50 {result.p50} ms, p99 {result.p99} ms, "
                    f"ok {result.ok}, errors {result.errors}, dropped {result.dropped}")
                runs.append(result)
                if profile is not None:
                    profiles[kind] = profile_summary(profile)
        print(report(args, runs, started, info, profiles))
        return 0
    finally:
        for process in reversed(running):
            process.stop(grace=10.0)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


def main(argv: Sequence[str] | None = None) -> int:
    def guarded(words: list[str]) -> int:
        try:
            return run(words)
        except BenchFailure as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1

    return run_main(guarded, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
