"""The workload of the memory benchmark: a video catalogue, its origin, and a mixed-load client.

Why a module of its own: the memory soak (``memory.py soak``) needs what the HIT and crowd
benchmarks do not: *many* objects of realistic sizes (2 KiB playlists, 50 KiB–2 MiB CMAF
segments) in a catalogue several times larger than the cache, so that the node keeps filling,
evicting and serving at once, and a client that mixes HITs, misses, Range requests, conditional
requests, 404s and aborted downloads the way players do. The catalogue is derived from a seed,
so the origin (one process) and the client (another) agree on every path, size, ETag and byte
without talking to each other, and the client can verify every body it gets.

Popularity is hierarchical, as for short videos: videos follow a Zipf law; within a video, the
renditions have fixed shares (the ABR ladder's typical use) and early segments are watched more
than late ones (viewers swipe away). ``Catalogue.sampler`` draws requests from that model; the
disk-tier simulation in ``memory.py`` draws its trace from the same one.

Run (``memory.py soak`` does it for you)::

    python -m reelcdn.loadtest.bench.memload origin --port 8000 [--videos 120] [--seed 1]
    python -m reelcdn.loadtest.bench.memload client --port 8080 --duration 600 [--rate 300]
        [--connections 16] [--max-requests N] [--videos 120] [--seed 1]

The client prints one JSON object (its tallies) on stdout when it is done, progress on stderr.
Everything stays on loopback, and the client is bounded in time (``--duration``) and count
(``--max-requests``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import itertools
import json
import random
import signal
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

KIB = 1024
MIB = 1024 * 1024

#: The ABR ladder: rendition name, typical bytes of a 2 s CMAF segment, share of segment requests.
RENDITIONS: tuple[tuple[str, int, float], ...] = (
    ("240p", 60 * KIB, 0.10),
    ("480p", 180 * KIB, 0.25),
    ("720p", 520 * KIB, 0.40),
    ("1080p", 1300 * KIB, 0.25),
)
SEGMENT_MIN = 50 * KIB
SEGMENT_MAX = 2 * MIB
PLAYLIST_SIZE = 2 * KIB
INIT_SIZE = 1200
#: Each later segment is watched this much less than the one before (viewers swipe away).
SEGMENT_DECAY = 0.85
#: Fixed date of every object: content never changes, so validators stay valid across runs.
LAST_MODIFIED = "Sat, 21 Nov 2026 10:00:00 GMT"
SEGMENT_CACHE_CONTROL = "public, max-age=31536000, immutable"
#: Playlists go stale after 2 s: the node then revalidates them (a conditional fill → 304).
PLAYLIST_CACHE_CONTROL = "public, max-age=2"
#: Missing objects are negatively cached for a while, as a shield would ask.
NOT_FOUND_CACHE_CONTROL = "public, max-age=30"
#: Distinct missing paths the client asks for (Zipf over them, so some 404s are cache HITs).
MISSING_NAMES = 400
COUNT_PATH = "/__count"


@lru_cache(maxsize=1)
def noise() -> bytes:
    """4 MiB of seeded pseudo-random bytes: every segment is a window of it (cheap to make on
    the origin, cheap to check on the client, incompressible like real video)."""
    return random.Random(20261122).randbytes(4 * MIB + SEGMENT_MAX)


def window(path: str, size: int) -> bytes:
    """The body of a binary object: ``size`` bytes of :func:`noise` at an offset set by its path."""
    buf = noise()
    offset = zlib.crc32(path.encode()) % (len(buf) - size)
    return buf[offset:offset + size]


def etag(path: str, size: int) -> str:
    """A strong ETag like an object store's (content never changes, so neither does it)."""
    return '"' + hashlib.blake2s(f"{path}:{size}".encode(), digest_size=8).hexdigest() + '"'


@dataclass(frozen=True, slots=True)
class Obj:
    """One object of the catalogue."""

    path: str
    size: int
    kind: str  # "segment", "init", "playlist", "master"

    @property
    def etag(self) -> str:
        return etag(self.path, self.size)

    @property
    def content_type(self) -> str:
        if self.kind in ("playlist", "master"):
            return "application/vnd.apple.mpegurl"
        return "video/iso.segment" if self.kind == "segment" else "video/mp4"

    @property
    def cache_control(self) -> str:
        return PLAYLIST_CACHE_CONTROL if self.kind in ("playlist", "master") else (
            SEGMENT_CACHE_CONTROL
        )


def video_id(index: int) -> str:
    """An 11-character id like the platform's (base64url-ish, derived from the index)."""
    digest = hashlib.blake2s(str(index).encode(), digest_size=8).hexdigest()
    return "v" + digest[:10]


@dataclass(slots=True)
class Catalogue:
    """``videos`` videos × the ladder × ``segments`` segments, plus playlists and inits."""

    videos: int = 120
    segments: int = 8
    seed: int = 1
    objects: dict[str, Obj] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        for v in range(self.videos):
            vid = video_id(v)
            self.ids.append(vid)
            self._add(Obj(f"/v/{vid}/master.m3u8", 0, "master"))
            for name, typical, _ in RENDITIONS:
                self._add(Obj(f"/v/{vid}/{name}/index.m3u8", 0, "playlist"))
                self._add(Obj(f"/v/{vid}/{name}/init.mp4", INIT_SIZE, "init"))
                for n in range(self.segments):
                    size = int(typical * rng.uniform(0.6, 1.5))
                    size = max(SEGMENT_MIN, min(SEGMENT_MAX, size))
                    self._add(Obj(f"/v/{vid}/{name}/seg_{n:05d}.m4s", size, "segment"))
        # Text objects: their size is that of their rendered text.
        for path, obj in list(self.objects.items()):
            if obj.kind in ("playlist", "master"):
                self.objects[path] = Obj(path, len(self.body(obj)), obj.kind)

    def _add(self, obj: Obj) -> None:
        self.objects[obj.path] = obj

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects.values())

    def body(self, obj: Obj) -> bytes:
        """The object's bytes (text objects rendered, binary ones from :func:`noise`)."""
        if obj.kind == "playlist":
            return render_playlist(obj.path, self.segments)
        if obj.kind == "master":
            return render_master(obj.path)
        return window(obj.path, obj.size)

    def sampler(self, zipf_s: float, seed: int) -> CatalogueSampler:
        return CatalogueSampler(self, zipf_s, seed)


@lru_cache(maxsize=4096)
def render_playlist(path: str, segments: int) -> bytes:
    """A CMAF media playlist of about 2 KiB (tokenised segment URIs, as an edge renders them)."""
    token = hashlib.blake2s(path.encode(), digest_size=24).hexdigest()
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-TARGETDURATION:2",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="init.mp4?token=exp=1795000000~acl=/v/*~hmac={token}"',
    ]
    for n in range(segments):
        lines.append("#EXTINF:2.000000,")
        lines.append(f"seg_{n:05d}.m4s?token=exp=1795000000~acl=/v/*~hmac={token}")
    lines.append("#EXT-X-ENDLIST")
    text = "\n".join(lines) + "\n"
    pad = PLAYLIST_SIZE - len(text)
    if pad > 0:  # comments keep every playlist at the nominal size, whatever the id lengths
        text += "#" + "x" * (pad - 2) + "\n"
    return text.encode()


@lru_cache(maxsize=1024)
def render_master(path: str) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for name, typical, _ in RENDITIONS:
        bandwidth = typical * 8 // 2
        height = int(name[:-1])
        lines.append(
            f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={height * 16 // 9}x{height},'
            f'CODECS="avc1.64001f,mp4a.40.2"'
        )
        lines.append(f"{name}/index.m3u8")
    return ("\n".join(lines) + "\n").encode()


class CatalogueSampler:
    """Draws objects with the hierarchical popularity model (see the module docstring)."""

    def __init__(self, catalogue: Catalogue, zipf_s: float, seed: int) -> None:
        self.catalogue = catalogue
        self.rng = random.Random(seed)
        weights = [1.0 / (rank ** zipf_s) for rank in range(1, catalogue.videos + 1)]
        order = list(range(catalogue.videos))
        random.Random(catalogue.seed + 1).shuffle(order)  # popularity is not the index order
        self._video_order = order
        self._video_cum = list(itertools.accumulate(weights))
        self._rend_cum = list(itertools.accumulate(share for _, _, share in RENDITIONS))
        self._seg_cum = list(
            itertools.accumulate(SEGMENT_DECAY ** n for n in range(catalogue.segments))
        )

    def _pick(self, cumulative: list[float]) -> int:
        return bisect.bisect_left(cumulative, self.rng.random() * cumulative[-1])

    def video(self) -> str:
        return self.catalogue.ids[self._video_order[self._pick(self._video_cum)]]

    def rendition(self) -> str:
        return RENDITIONS[min(self._pick(self._rend_cum), len(RENDITIONS) - 1)][0]

    def segment(self) -> Obj:
        vid, rend = self.video(), self.rendition()
        n = min(self._pick(self._seg_cum), self.catalogue.segments - 1)
        return self.catalogue.objects[f"/v/{vid}/{rend}/seg_{n:05d}.m4s"]

    def playlist(self) -> Obj:
        return self.catalogue.objects[f"/v/{self.video()}/{self.rendition()}/index.m3u8"]

    def master(self) -> Obj:
        return self.catalogue.objects[f"/v/{self.video()}/master.m3u8"]

    def init(self) -> Obj:
        return self.catalogue.objects[f"/v/{self.video()}/{self.rendition()}/init.mp4"]

    def missing(self) -> str:
        """A path the origin does not have (Zipf over a fixed set, so repeats are negative HITs)."""
        rank = min(int(self.rng.paretovariate(1.0)), MISSING_NAMES) - 1
        vid = self.catalogue.ids[rank % self.catalogue.videos]
        return f"/v/{vid}/720p/seg_{90000 + rank:05d}.m4s"

    def trace(self, count: int) -> Iterator[Obj]:
        """``count`` object requests as players make them (segments, playlists, inits, masters)
        in the soak's proportions: the disk-tier simulation replays this."""
        for _ in range(count):
            r = self.rng.random()
            if r < 0.80:
                yield self.segment()
            elif r < 0.93:
                yield self.playlist()
            elif r < 0.97:
                yield self.init()
            else:
                yield self.master()


# ----------------------------------------------------------------------------------------
# Origin


def build_origin_app(catalogue: Catalogue) -> Any:
    """The aiohttp origin: every catalogue object with realistic headers, conditional GETs
    answered with 304, anything else 404 (negatively cacheable). Counts what it served."""
    from aiohttp import web

    counts: Counter[str] = Counter()
    started = time.time()

    def headers_of(obj: Obj) -> dict[str, str]:
        # What an edge gets from a shield in front of an object store (shield/fs.py, s3.py):
        # the shield's own Cache-Status and Via lines included, as the edge stores them too.
        return {
            "Content-Type": obj.content_type,
            "ETag": obj.etag,
            "Last-Modified": LAST_MODIFIED,
            "Cache-Control": obj.cache_control,
            "Accept-Ranges": "bytes",
            "Cache-Status": "shield; fwd=uri-miss; stored",
            "Via": "1.1 shield",
            "Access-Control-Allow-Origin": "*",
            "Timing-Allow-Origin": "*",
        }

    async def handle(request: web.Request) -> web.Response:
        obj = catalogue.objects.get(request.path)
        if obj is None:
            counts["404"] += 1
            return web.Response(
                status=404,
                text="not found\n",
                headers={"Cache-Control": NOT_FOUND_CACHE_CONTROL, "Via": "1.1 shield"},
            )
        headers = headers_of(obj)
        inm = request.headers.get("If-None-Match")
        if inm is not None and obj.etag in (t.strip() for t in inm.split(",")):
            counts["304"] += 1
            return web.Response(status=304, headers=headers)
        counts[obj.kind] += 1
        counts["bytes"] += obj.size
        return web.Response(body=catalogue.body(obj), headers=headers)

    async def count(request: web.Request) -> web.Response:
        payload = {"by_kind": dict(counts), "uptime": time.time() - started}
        return web.Response(text=json.dumps(payload), content_type="application/json")

    app = web.Application()
    app.router.add_get(COUNT_PATH, count)
    app.router.add_get("/{tail:.*}", handle)  # also answers HEAD
    return app


async def serve_origin(port: int, catalogue: Catalogue) -> None:
    """Serve until SIGTERM/SIGINT (the benchmark stops its servers with SIGTERM)."""
    from aiohttp import web

    runner = web.AppRunner(build_origin_app(catalogue), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(f"memload origin on 127.0.0.1:{port}: {len(catalogue.objects)} objects, "
          f"{catalogue.total_bytes / MIB:.0f} MiB", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------------------------
# Client


@dataclass(slots=True)
class Tally:
    """What the client saw; printed as JSON at the end."""

    requests: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    status: Counter[str] = field(default_factory=Counter)
    hits: int = 0
    body_bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    verify_failures: int = 0
    examples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.verify_failures += 1
        if len(self.examples) < 10:
            self.examples.append(message)

    def as_json(self, elapsed: float) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

        return {
            "requests": self.requests,
            "by_kind": dict(self.by_kind),
            "status": dict(self.status),
            "hits": self.hits,
            "body_bytes": self.body_bytes,
            "errors": dict(self.errors),
            "verify_failures": self.verify_failures,
            "examples": self.examples,
            "latency_p50": pct(0.5),
            "latency_p99": pct(0.99),
            "elapsed": elapsed,
        }


def _is_hit(cache_status: str | None) -> bool:
    if not cache_status:
        return False
    params = [p.strip() for p in cache_status.split(",")[-1].split(";")[1:]]
    return "hit" in params


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of the mix: what to send and what must come back."""

    kind: str
    path: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    expect: int = 200
    obj: Obj | None = None
    span: tuple[int, int] | None = None  # expected [start, end) of a 206
    abort: bool = False


def plan(sampler: CatalogueSampler) -> Planned:
    """Draw the next request of the mix (shares chosen to look like a player population):
    60 % whole segments, 13 % Range requests on segments, 11 % playlists, 3 % inits,
    2 % masters, 6 % conditional requests (5 with the right ETag → 304, 1 with a wrong one),
    3 % 404s, 1 % HEAD, 1 % downloads aborted after the first bytes."""
    rng = sampler.rng
    r = rng.random()
    if r < 0.60:
        obj = sampler.segment()
        return Planned("segment", obj.path, obj=obj)
    if r < 0.73:
        obj = sampler.segment()
        size = obj.size
        shape = rng.random()
        if shape < 0.6:  # a 64 KiB window, as a player fetching a byte-range rendition
            start = rng.randrange(0, max(1, size - 64 * KIB))
            end = min(size, start + 64 * KIB)
            value = f"bytes={start}-{end - 1}"
        elif shape < 0.8:  # suffix
            n = rng.randrange(1, min(size, 128 * KIB))
            start, end = size - n, size
            value = f"bytes=-{n}"
        else:  # open-ended
            start, end = rng.randrange(0, size), size
            value = f"bytes={start}-"
        return Planned("range", obj.path, headers=(("Range", value),), expect=206, obj=obj,
                       span=(start, end))
    if r < 0.84:
        obj = sampler.playlist()
        return Planned("playlist", obj.path, obj=obj)
    if r < 0.87:
        obj = sampler.init()
        return Planned("init", obj.path, obj=obj)
    if r < 0.89:
        obj = sampler.master()
        return Planned("master", obj.path, obj=obj)
    if r < 0.95:
        obj = sampler.segment() if rng.random() < 0.7 else sampler.playlist()
        if rng.random() < 5 / 6:
            return Planned("conditional", obj.path, headers=(("If-None-Match", obj.etag),),
                           expect=304, obj=obj)
        return Planned("conditional-miss", obj.path, headers=(("If-None-Match", '"nope"'),),
                       obj=obj)
    if r < 0.98:
        return Planned("404", sampler.missing(), expect=404)
    if r < 0.99:
        obj = sampler.segment()
        return Planned("head", obj.path, method="HEAD", obj=obj)
    obj = sampler.segment()
    return Planned("abort", obj.path, obj=obj, abort=True)


#: The small-object mix: distinct cache keys per (object, ``?n=``) pair; the origin ignores
#: the query, so a small catalogue gives as many cached objects as wanted.
SMALL_VARIANTS = 400_000
SMALL_HOT = 4


def plan_small(sampler: CatalogueSampler) -> Planned:
    """Draw the next request of the small-object mix: what fills a cache with *many* entries
    (the case where per-entry overhead, not bodies, decides memory). 70 % playlists, 20 %
    inits, 5 % conditional playlists (→ 304), 5 % 404s; each object under one of 400 000
    query variants, half of the draws under one of 4 hot ones (so there are HITs too)."""
    rng = sampler.rng
    variant = rng.randrange(SMALL_HOT if rng.random() < 0.5 else SMALL_VARIANTS)
    r = rng.random()
    if r < 0.70:
        obj = sampler.playlist()
        return Planned("playlist", f"{obj.path}?n={variant}", obj=obj)
    if r < 0.90:
        obj = sampler.init()
        return Planned("init", f"{obj.path}?n={variant}", obj=obj)
    if r < 0.95:
        obj = sampler.playlist()
        return Planned("conditional", f"{obj.path}?n={variant}",
                       headers=(("If-None-Match", obj.etag),), expect=304, obj=obj)
    return Planned("404", f"{sampler.missing()}?n={variant}", expect=404)


MIXES: dict[str, Callable[[CatalogueSampler], Planned]] = {"players": plan, "small": plan_small}


def check(p: Planned, status: int, body: bytes, content_range: str | None,
          catalogue: Catalogue, tally: Tally) -> None:
    """Verify one complete response against the catalogue; record a failure if it differs."""
    if status != p.expect:
        tally.fail(f"{p.kind} {p.path}: status {status}, expected {p.expect}")
        return
    if p.obj is None or status in (304, 404):
        return
    if p.method == "HEAD":
        if body:
            tally.fail(f"HEAD {p.path}: {len(body)} body bytes")
        return
    full = catalogue.body(p.obj)
    if status == 206:
        assert p.span is not None
        start, end = p.span
        want = f"bytes {start}-{end - 1}/{p.obj.size}"
        if content_range != want:
            tally.fail(f"range {p.path}: Content-Range {content_range!r}, expected {want!r}")
        elif body != full[start:end]:
            tally.fail(f"range {p.path}: wrong bytes ({len(body)} of {end - start})")
        return
    if body != full:
        tally.fail(f"{p.kind} {p.path}: wrong body ({len(body)} bytes of {len(full)})")


async def run_client(args: argparse.Namespace) -> dict[str, Any]:
    """Drive the node: ``--connections`` workers pacing a global schedule of ``--rate``
    requests per second, until ``--duration`` s or ``--max-requests`` requests."""
    import aiohttp

    catalogue = Catalogue(args.videos, args.segments, args.seed)
    sampler = catalogue.sampler(args.zipf, args.seed + 7)
    tally = Tally()
    draw = MIXES[args.mix]
    base = f"http://127.0.0.1:{args.port}"
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + args.duration
    ticket = itertools.count()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def one(session: aiohttp.ClientSession, p: Planned) -> None:
        t0 = loop.time()
        try:
            async with session.request(p.method, base + p.path, headers=dict(p.headers),
                                       allow_redirects=False) as resp:
                if p.abort:
                    await resp.content.read(16 * KIB)
                    resp.close()  # drop the connection mid-body, as a swiping viewer does
                    tally.status["aborted"] += 1
                    return
                body = await resp.read()
                tally.status[str(resp.status)] += 1
                tally.body_bytes += len(body)
                if _is_hit(resp.headers.get("Cache-Status")):
                    tally.hits += 1
                check(p, resp.status, body, resp.headers.get("Content-Range"), catalogue, tally)
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.errors[f"{p.kind}: {exc.__class__.__name__}"] += 1
            return
        tally.latencies.append(loop.time() - t0)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            n = next(ticket)
            if n >= args.max_requests:
                return
            due = start + n / args.rate
            now = loop.time()
            if due >= deadline or now >= deadline:
                return
            if due > now:
                await asyncio.sleep(due - now)
            p = draw(sampler)
            tally.requests += 1
            tally.by_kind[p.kind] += 1
            await one(session, p)

    async def progress() -> None:
        while not stop.is_set():
            await asyncio.sleep(10)
            elapsed = loop.time() - start
            print(f"[memload] {elapsed:5.0f} s: {tally.requests} requests, {tally.hits} HITs, "
                  f"{tally.body_bytes / MIB:.0f} MiB, {sum(tally.errors.values())} errors, "
                  f"{tally.verify_failures} bad", file=sys.stderr, flush=True)

    reporter = loop.create_task(progress())
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     auto_decompress=False) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.connections)))
    stop.set()
    reporter.cancel()
    return tally.as_json(loop.time() - start)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reelcdn.loadtest.bench.memload",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("origin", "client"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--videos", type=int, default=120)
        p.add_argument("--segments", type=int, default=8)
        p.add_argument("--seed", type=int, default=1)
    client = sub.choices["client"]
    client.add_argument("--duration", type=float, required=True, help="seconds (at most 3600)")
    client.add_argument("--rate", type=float, default=300.0, help="requests per second")
    client.add_argument("--connections", type=int, default=16)
    client.add_argument("--max-requests", type=int, default=2_000_000)
    client.add_argument("--zipf", type=float, default=0.9, help="Zipf exponent over videos")
    client.add_argument("--mix", choices=sorted(MIXES), default="players",
                        help="players (default): segments, ranges, playlists...; small: "
                        "many small objects (playlists, inits) under query variants")
    args = parser.parse_args(argv)
    if args.videos < 1 or args.segments < 1:
        parser.error("--videos and --segments must be >= 1")
    if args.command == "origin":
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve_origin(args.port, Catalogue(args.videos, args.segments, args.seed)))
        return 0
    if not 0 < args.duration <= 3600 or not 0 < args.rate <= 100_000:
        parser.error("--duration must be in (0, 3600] and --rate in (0, 100000]")
    if not 1 <= args.connections <= 1000:
        parser.error("--connections must be in [1, 1000]")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        report = runner.run(run_client(args))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
