"""What an upload through the origin API costs: tus throughput, and upload to playable.

    python -m reelcdn.loadtest.bench.upload tus [--size 200MB] [--chunk 8MiB] [--repeat 5]
    python -m reelcdn.loadtest.bench.upload playable [--seconds 15] [--size 1920x1080] [--repeat 3]

Both start the real programs as processes from one temp topology file (an fs origin, a user-token
key file written here, a token minted for the user ``bench``) and upload with **tuspy**, the
reference Python tus client, in PATCHes of ``--chunk`` bytes (8 MiB) each with an
``Upload-Checksum: sha1 …`` header (tuspy's ``upload_checksum=True``; the run checks that every
PATCH carried one, and the server verifies it or answers 460).

* ``tus``: ``reelcdn origin`` alone, a file of ``--size`` random bytes (200 MB = 200 × 10⁶);
  MB/s (10⁶ bytes/s) from the first PATCH's first byte to the last PATCH's answer (the creation
  POST is before), the CPU seconds the origin process spent on the upload (utime + stime from
  /proc/PID/stat, all its threads) and the client's. One unrecorded upload of one chunk warms
  the server first. Target: ≥ 150 MB/s.
* ``playable``: a shield → regional → edge topology (``reelcdn node``), ``reelcdn origin`` and
  one ``reelcdn worker`` with the default ladder (360p, 720p, 1080p); a clip made by ffmpeg
  (``make_source`` of the pipeline benchmark), uploaded once a run (a fresh video id each).
  From the last PATCH's answer the edge is polled every 50 ms until the master playlist, the
  first media playlist it lists, that playlist's init segment and first media segment all
  answer 200 ("first rung playable", target ≤ 5 s), then the API until ``status`` is
  ``ready``. The worker's own times come from its ``job_done`` log record. The worker polls
  its queue once a second when idle, so up to 1 s of the first figure is that wait; the
  "queue wait" column is the time from the upload's end to the job's start in the worker.

Runs follow each other (there is one thing to measure, nothing to alternate with); the
report has every run, the medians and the 1-minute load average at each run's start. Every
upload has a timeout (``--timeout``), and the processes are stopped at the end (SIGTERM, then
SIGKILL) and the temp dir removed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urljoin

from reelcdn.loadtest.bench import machine
from reelcdn.loadtest.bench.common import BenchFailure, log, positive_int, run_main
from reelcdn.loadtest.bench.procs import LOOPBACK, ManagedProcess, StartupError, free_port

PROG = "python -m reelcdn.loadtest.bench.upload"
POLL = 0.05  # seconds between polls of the edge and of the API
TUS_TARGET_MBPS = 150.0
PLAYABLE_TARGET_S = 5.0
USER = "bench"


# -- arguments ---------------------------------------------------------------------------------

def byte_count(value: str) -> int:
    """argparse type: ``200MB`` (10⁶), ``8MiB`` (2²⁰), ``4000000``: the config files' sizes."""
    from reelcdn.edge.config import ConfigError
    from reelcdn.edge.config.values import parse_size

    try:
        size = parse_size(value, file="argument", key="size")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if size < 1:
        raise argparse.ArgumentTypeError("the size must be at least 1 byte")
    return size


def seconds_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from exc
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return seconds


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tus = sub.add_parser("tus", help="tus upload throughput of `reelcdn origin`, and its CPU")
    tus.add_argument("--size", default="200MB", help="file size: 200MB = 200 × 10⁶ bytes")
    tus.add_argument("--chunk", default="8MiB", help="PATCH size (8MiB)")
    tus.add_argument("--repeat", type=positive_int, default=5, help="recorded uploads (5)")
    tus.add_argument("--timeout", type=seconds_arg, default=300.0,
                     help="seconds one upload may take before the run fails (300)")
    play = sub.add_parser("playable", help="upload → first rung playable through an edge → ready")
    play.add_argument("--seconds", type=float, default=15.0, help="source length (15)")
    play.add_argument("--size", default="1920x1080", help="source size, WxH (1920x1080)")
    play.add_argument("--chunk", default="8MiB", help="PATCH size (8MiB)")
    play.add_argument("--repeat", type=positive_int, default=3, help="uploads (3)")
    play.add_argument("--timeout", type=seconds_arg, default=300.0,
                      help="seconds one run (upload to ready) may take (300)")
    args = parser.parse_args(list(argv))
    try:
        args.chunk_bytes = byte_count(args.chunk)
        if args.command == "tus":
            args.size_bytes = byte_count(args.size)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    return args


def command_line(args: argparse.Namespace) -> str:
    words = [*PROG.split(), args.command]
    if args.command == "tus":
        words += ["--size", args.size, "--chunk", args.chunk, "--repeat", str(args.repeat)]
    else:
        words += ["--seconds", f"{args.seconds:g}", "--size", args.size]
        if args.chunk != "8MiB":
            words += ["--chunk", args.chunk]
        words += ["--repeat", str(args.repeat)]
    return shlex.join(words)


# -- processes, files, requests ----------------------------------------------------------------

def cli(*words: str) -> list[str]:
    """The reelcdn CLI of this interpreter (what ``reelcdn up`` runs its children with)."""
    return [sys.executable, "-m", "reelcdn.cli", *words]


def toml_string(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string: the same escapes as JSON's


def write_keys(path: Path) -> str:
    """A key file with one fresh key; a token for ``USER`` signed with it."""
    from reelcdn.origin.users import load_keys, mint

    path.write_text(f"k1 {secrets.token_hex(32)}\n")
    path.chmod(0o600)
    return mint(USER, load_keys(path), 86400)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads) in seconds, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is the state
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            timeout: float = 5.0) -> Reply:
    """One request on a fresh loopback connection."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return Reply(response.status, response.read())
    finally:
        conn.close()


def api_ready(port: int) -> bool:
    """The API answers tus capability discovery (OPTIONS needs no token)."""
    return request(port, "OPTIONS", "/api/v1/uploads", timeout=1.0).status == 204


def node_healthy(admin_port: int) -> bool:
    return request(admin_port, "GET", "/health", timeout=1.0).status == 200


def start(process: ManagedProcess, running: list[ManagedProcess], ready, what: str,
          timeout: float = 30.0) -> None:
    running.append(process)
    process.start()
    process.wait_ready(ready, what, timeout=timeout)
    log(f"{process.name} ready (pid {process.proc.pid if process.proc else '?'})")


def stop_all(running: list[ManagedProcess]) -> None:
    for process in reversed(running):
        process.stop(grace=10.0)


@contextlib.contextmanager
def deadline(seconds: float, what: str, servers: list[ManagedProcess]) -> Iterator[None]:
    """Bound a blocking client call that has no timeout of its own (tuspy's requests carry
    none): past ``seconds`` the servers are stopped, which breaks the call's connection, and the
    run fails saying it timed out."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        log(f"{what}: not done after {seconds:g} s; stopping the servers")
        stop_all(servers)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as exc:
        if fired.is_set():
            raise BenchFailure(f"{what}: timed out after {seconds:g} s") from exc
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        raise BenchFailure(f"{what}: timed out after {seconds:g} s")


# -- the upload --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Upload:
    video_id: str
    seconds: float   # first PATCH's first byte to the last PATCH's answer
    ended: float     # time.monotonic() at the last PATCH's answer
    ended_wall: float  # time.time() at the same moment
    patches: int


def tus_upload(endpoint: str, token: str, path: Path, chunk: int, title: str) -> Upload:
    """Upload ``path`` with tuspy: creation (untimed), then PATCHes of ``chunk`` bytes with
    sha1 checksums, timed from the first to the last answer."""
    from tusclient import client as tus_client

    uploader = tus_client.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"}) \
        .uploader(str(path), chunk_size=chunk, upload_checksum=True,
                  metadata={"filename": path.name, "title": title})
    uploader.set_url(uploader.create_url())
    size = uploader.get_file_size()
    patches = 0
    started = time.monotonic()
    while uploader.offset < size:
        uploader.upload_chunk()
        patches += 1
        sent = getattr(uploader.request, "_request_headers", {}).get("upload-checksum", "")
        if not sent.startswith("sha1 "):
            raise BenchFailure(f"tuspy sent no sha1 Upload-Checksum (got {sent!r}); this "
                               "benchmark measures checksummed PATCHes")
    ended, ended_wall = time.monotonic(), time.time()
    return Upload(str(uploader.url).rsplit("/", 1)[1], ended - started, ended, ended_wall,
                  patches)


def video_state(api_port: int, token: str, video_id: str) -> dict:
    reply = request(api_port, "GET", f"/api/v1/videos/{video_id}",
                    {"Authorization": f"Bearer {token}"})
    if reply.status != 200:
        raise BenchFailure(f"GET video {video_id}: {reply.status} {reply.body[:200]!r}")
    return json.loads(reply.body)


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        left = size
        while left:
            block = min(left, 8 << 20)
            out.write(os.urandom(block))
            left -= block
    return path


def fmt_runs(values: Sequence[float], spec: str) -> str:
    return " · ".join(format(v, spec) for v in values)


def machine_info() -> machine.MachineInfo:
    """The machine, the client's version and the commit, with the load average now (call it at
    the start of the run)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tuspy = version("tuspy")
    except PackageNotFoundError:
        tuspy = "unknown"
    return machine.collect({
        "tuspy": tuspy,
        "reelcdn": machine.source_revision(Path(__file__).resolve().parents[2]),
    })


def machine_lines(started: datetime, info: machine.MachineInfo) -> list[str]:
    return [f"Run: {started:%Y-%m-%d %H:%M} UTC; load average at the end (1/5/15 min): "
            f"{machine.loadavg()}.", "", "Machine:", "", *info.markdown_lines()]


# -- tus ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TusRun:
    mbps: float
    seconds: float
    server_user: float
    server_sys: float
    client_cpu: float
    load: float


def tus_topology(work: Path, api_port: int) -> Path:
    config = work / "topology.toml"
    config.write_text(f"""# reelcdn.loadtest.bench.upload tus
[origin.main]
type = "fs"
root = {toml_string(work / "origin")}

[node.shield-1]
role = "shield"
listen = "{LOOPBACK}:{free_port()}"
origins = ["main"]

[api]
listen = "{LOOPBACK}:{api_port}"
data_dir = {toml_string(work / "api")}
key_file = {toml_string(work / "origin-keys")}
uploads_per_window = 1000
""")
    return config


def run_tus(args: argparse.Namespace) -> int:
    started_at, info = datetime.now(UTC), machine_info()
    work = Path(tempfile.mkdtemp(prefix="reelcdn-upload-bench-"))
    running: list[ManagedProcess] = []
    try:
        size, chunk = args.size_bytes, args.chunk_bytes
        source = random_file(work / "source.bin", size)
        warm = random_file(work / "warm.bin", min(chunk, size))
        api_port = free_port()
        token = write_keys(work / "origin-keys")
        config = tus_topology(work, api_port)
        origin = ManagedProcess("origin", cli("origin", "--config", str(config)), work)
        start(origin, running, lambda: api_ready(api_port), "the API answering")
        assert origin.proc is not None
        endpoint = f"http://{LOOPBACK}:{api_port}/api/v1/uploads"
        with deadline(args.timeout, "warm-up upload", running):
            tus_upload(endpoint, token, warm, chunk, "warm-up")
        runs: list[TusRun] = []
        for number in range(1, args.repeat + 1):
            load = os.getloadavg()[0]
            (user0, sys0), client0 = cpu_seconds(origin.proc.pid), time.process_time()
            with deadline(args.timeout, f"upload {number}", running):
                done = tus_upload(endpoint, token, source, chunk, f"run {number}")
            user1, sys1 = cpu_seconds(origin.proc.pid)
            client = time.process_time() - client0
            state = video_state(api_port, token, done.video_id)
            upload = state.get("upload") or {}
            if upload.get("state") != "uploaded" or upload.get("offset") != size:
                raise BenchFailure(f"upload {number}: the API reports {upload}")
            runs.append(TusRun(size / done.seconds / 1e6, done.seconds, user1 - user0,
                               sys1 - sys0, client, load))
            log(f"run {number}/{args.repeat}: {runs[-1].mbps:.0f} MB/s ({done.seconds:.2f} s, "
                f"{done.patches} PATCHes), origin CPU {user1 - user0:.2f} s user + "
                f"{sys1 - sys0:.2f} s sys, client CPU {client:.2f} s, load {load:.2f}")
        print_tus(args, runs, started_at, info)
    finally:
        stop_all(running)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_tus(args: argparse.Namespace, runs: list[TusRun], started: datetime,
              info: machine.MachineInfo) -> None:
    size_mb = args.size_bytes / 1e6
    med = statistics.median
    mbps = med(r.mbps for r in runs)
    print(f"### tus upload to `reelcdn origin`: {size_mb:g} MB of random bytes in "
          f"{args.chunk} PATCHes with sha1 checksums, tuspy, loopback\n")
    print(f"Command: `{command_line(args)}`\n")
    cpu = med(r.server_user + r.server_sys for r in runs)
    print("| run | MB/s | seconds | origin CPU s (user + sys) | client CPU s | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|")
    for number, r in enumerate(runs, 1):
        print(f"| {number} | {r.mbps:.0f} | {r.seconds:.2f} | "
              f"{r.server_user + r.server_sys:.2f} ({r.server_user:.2f} + {r.server_sys:.2f}) | "
              f"{r.client_cpu:.2f} | {r.load:.2f} |")
    print(f"| **median** | **{mbps:.0f}** | {med(r.seconds for r in runs):.2f} | "
          f"{cpu:.2f} ({med(r.server_user for r in runs):.2f} + "
          f"{med(r.server_sys for r in runs):.2f}) | {med(r.client_cpu for r in runs):.2f} | |")
    print(f"\nMB/s = 10⁶ bytes/s from the first PATCH's first byte to the last PATCH's answer. "
          f"tus median: **{mbps:.0f} MB/s** (target ≥ {TUS_TARGET_MBPS:.0f} MB/s: "
          f"{'met' if mbps >= TUS_TARGET_MBPS else 'NOT met'}); what it costs: "
          f"{cpu:.2f} s of the origin's CPU per {size_mb:g} MB (utime + stime of `reelcdn "
          f"origin`, all threads; sys is the kernel's share: socket reads, writes, fsyncs). "
          f"Every upload stays in the origin's data dir, so later runs write beside the "
          f"earlier ones' files.\n")
    print("\n".join(machine_lines(started, info)))


# -- playable ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PlayableRun:
    upload: float
    first_rung: float
    ready: float
    queue_wait: float          # upload end → the job's start in the worker (log clock)
    worker_first: float        # the job's start → the lowest rung published (the worker's log)
    worker_total: float
    rung: str
    load: float


def playable_topology(work: Path, ports: dict[str, int]) -> Path:
    config = work / "topology.toml"
    config.write_text(f"""# reelcdn.loadtest.bench.upload playable: shield -> regional -> edge,
# the origin API and one worker, the default ladder. The TTL rules are those of `reelcdn up`'s
# default topology for 200s; there is no negative caching (a 404 rule) so that polling the
# edge before the video is published does not hold a 404 in the tiers.
[defaults]

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
root = {toml_string(work / "origin")}

[node.shield-1]
role = "shield"
listen = "{LOOPBACK}:{ports['shield-1']}"
admin = "{LOOPBACK}:{ports['shield-1 admin']}"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "{LOOPBACK}:{ports['regional-1']}"
admin = "{LOOPBACK}:{ports['regional-1 admin']}"
parents = ["shield-1"]

[node.edge-a]
role = "edge"
listen = "{LOOPBACK}:{ports['edge-a']}"
admin = "{LOOPBACK}:{ports['edge-a admin']}"
parents = ["regional-1"]

[api]
listen = "{LOOPBACK}:{ports['api']}"
data_dir = {toml_string(work / "api")}
key_file = {toml_string(work / "origin-keys")}
publish_to = "main"
uploads_per_window = 1000
""")
    return config


def playlist_uris(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


def map_uri(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("#EXT-X-MAP:"):
            for part in line.split(":", 1)[1].split(","):
                key, _, value = part.partition("=")
                if key.strip() == "URI":
                    return value.strip().strip('"')
    return None


def first_rung_playable(edge_port: int, video_id: str, until: float) -> tuple[float, str]:
    """Poll the edge every POLL s until the master, its first media playlist, that playlist's
    init segment and first segment all answer 200; (time.monotonic() then, the rendition)."""
    master = f"/v/{video_id}/master.m3u8"
    while True:
        reply = request(edge_port, "GET", master)
        if reply.status == 200 and (variants := playlist_uris(reply.body.decode())):
            media = urljoin(master, variants[0])
            playlist = request(edge_port, "GET", media)
            if playlist.status == 200:
                text = playlist.body.decode()
                segments = playlist_uris(text)
                init = map_uri(text)
                wanted = [urljoin(media, u) for u in ([init] if init else []) + segments[:1]]
                if segments and all(request(edge_port, "GET", p).status == 200 for p in wanted):
                    return time.monotonic(), media.rsplit("/", 2)[-2]
        if time.monotonic() > until:
            raise BenchFailure(f"video {video_id} not playable through the edge in time "
                               f"(last master answer {reply.status})")
        time.sleep(POLL)


def ready_at(api_port: int, token: str, video_id: str, until: float) -> float:
    while True:
        state = video_state(api_port, token, video_id)
        if state.get("status") == "ready":
            return time.monotonic()
        if state.get("status") == "failed":
            raise BenchFailure(f"video {video_id} failed: {state.get('error')}")
        if time.monotonic() > until:
            raise BenchFailure(f"video {video_id} not ready in time ({state.get('status')})")
        time.sleep(POLL)


def worker_record(log_file: Path, video_id: str, wait: float = 5.0) -> dict:
    """The worker's ``job_done`` record of the video (logged just after ``ready``)."""
    until = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError):
            for line in log_file.read_text(errors="replace").splitlines():
                if video_id in line and '"job_done"' in line:
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if record.get("event") == "job_done" and record.get("video") == video_id:
                            return record
        if time.monotonic() > until:
            raise BenchFailure(f"no job_done record of {video_id} in {log_file.name}")
        time.sleep(POLL)


def log_time(stamp: str) -> float:
    """A JSON log record's ``time`` (``2026-12-02T09:05:01.123Z``) as Unix seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def run_playable(args: argparse.Namespace) -> int:
    from reelcdn.loadtest.bench.pipeline import make_source
    from reelcdn.origin.transcode import Ladder

    started_at, info = datetime.now(UTC), machine_info()
    work = Path(tempfile.mkdtemp(prefix="reelcdn-playable-bench-"))
    running: list[ManagedProcess] = []
    try:
        log(f"making the source clip ({args.seconds:g} s {args.size})")
        source = make_source(work / "source.mp4", args.seconds, args.size)
        names = ["shield-1", "regional-1", "edge-a"]
        ports = {key: free_port() for key in
                 [*names, *(f"{n} admin" for n in names), "api"]}
        token = write_keys(work / "origin-keys")
        config = playable_topology(work, ports)
        for name in names:
            admin = ports[f"{name} admin"]
            start(ManagedProcess(name, cli("node", "--config", str(config), "--name", name),
                                 work), running, lambda a=admin: node_healthy(a),
                  "/health answering 200")
        start(ManagedProcess("origin", cli("origin", "--config", str(config)), work), running,
              lambda: api_ready(ports["api"]), "the API answering")
        worker = ManagedProcess("worker", cli("worker", "--config", str(config)), work)
        start(worker, running, lambda: "worker " in worker.stdout_path.read_text(errors="replace"),
              "its start line")
        endpoint = f"http://{LOOPBACK}:{ports['api']}/api/v1/uploads"

        def one(number: int, clip: Path) -> tuple[Upload, float, str, float, dict]:
            with deadline(args.timeout, f"upload {number}", running):
                done = tus_upload(endpoint, token, clip, args.chunk_bytes, f"run {number}")
            until = done.ended + args.timeout
            first, rung = first_rung_playable(ports["edge-a"], done.video_id, until)
            ready = ready_at(ports["api"], token, done.video_id, until)
            return done, first, rung, ready, worker_record(worker.stderr_path, done.video_id)

        log("warm-up: a 1 s 320x180 clip, unrecorded")
        *_, record = one(0, make_source(work / "warm.mp4", 1, "320x180"))
        runs: list[PlayableRun] = []
        for number in range(1, args.repeat + 1):
            # The worker, idle, polls its queue every second from the end of its last job:
            # start the uploads at phases spread evenly over that second.
            phase = (number - 0.5) / args.repeat
            time.sleep(max(0.0, log_time(record["time"]) + phase - time.time()))
            load = os.getloadavg()[0]
            done, first, rung, ready, record = one(number, source)
            published = record.get("published") or {}
            total = float(record.get("seconds", "nan"))
            job_start = log_time(record["time"]) - total
            runs.append(PlayableRun(
                upload=done.seconds, first_rung=first - done.ended, ready=ready - done.ended,
                queue_wait=job_start - done.ended_wall,
                worker_first=float(published.get(rung, min(published.values(), default=0.0))),
                worker_total=total, rung=rung, load=load))
            r = runs[-1]
            log(f"run {number}/{args.repeat} ({done.video_id}): first rung ({rung}) playable "
                f"{r.first_rung:.2f} s after the last byte, ready {r.ready:.2f} s; worker: "
                f"queue wait {r.queue_wait:.2f} s, first publish {r.worker_first:.2f} s, "
                f"all {r.worker_total:.2f} s; load {load:.2f}")
        ladder = ", ".join(r.name for r in Ladder().rungs)
        print_playable(args, runs, source, ladder, started_at, info)
    finally:
        stop_all(running)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_playable(args: argparse.Namespace, runs: list[PlayableRun], source: Path,
                   ladder: str, started: datetime, info: machine.MachineInfo) -> None:
    med = statistics.median
    first = med(r.first_rung for r in runs)
    print(f"### Upload to playable through three tiers ({args.seconds:g} s {args.size} 30 fps "
          f"source, {source.stat().st_size / 1e6:.1f} MB; default ladder {ladder})\n")
    print(f"Command: `{command_line(args)}`\n")
    print("| run | upload | first rung playable | ready | queue wait | worker: first rung / "
          "all | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for number, r in enumerate(runs, 1):
        print(f"| {number} | {r.upload:.2f} s | {r.first_rung:.2f} s ({r.rung}) | "
              f"{r.ready:.2f} s | {r.queue_wait:.2f} s | {r.worker_first:.2f} / "
              f"{r.worker_total:.2f} s | {r.load:.2f} |")
    print(f"| **median** | {med(r.upload for r in runs):.2f} s | **{first:.2f} s** | "
          f"{med(r.ready for r in runs):.2f} s | {med(r.queue_wait for r in runs):.2f} s | "
          f"{med(r.worker_first for r in runs):.2f} / {med(r.worker_total for r in runs):.2f} s"
          " | |")
    print(f"\nFirst rung playable: the master playlist, its first media playlist, that "
          f"playlist's init.mp4 and first segment all 200 through the edge (polled every "
          f"{POLL * 1000:.0f} ms from the last PATCH's answer); ready: the API's `status`. "
          f"Median **{first:.2f} s** (target ≤ {PLAYABLE_TARGET_S:g} s: "
          f"{'met' if first <= PLAYABLE_TARGET_S else 'NOT met'}). The worker polls its queue "
          f"once a second when idle, so 0–1 s of the figure is that wait: the queue wait "
          f"column (upload end to the job's start, from the worker's log clock). Upload k of "
          f"N starts (k − ½)/N s after the worker's previous job ended (after an unrecorded "
          f"warm-up upload of a 1 s clip), so the uploads meet that poll at phases spread over "
          f"its second. The worker's columns are from its `job_done` record (seconds from the "
          f"job's start).\n")
    print("\n".join(machine_lines(started, info)))


# -- entry point -------------------------------------------------------------------------------

def run(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        return run_tus(args) if args.command == "tus" else run_playable(args)
    except StartupError as exc:
        print(f"{PROG}: {exc}\n{exc.details}", file=sys.stderr)
        return 1
    except BenchFailure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
