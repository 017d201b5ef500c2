"""``reelcdn up``: run a whole topology on one machine, each node in its own process.

With no config file it runs the embedded default (``default_topology.toml``): a filesystem
origin in the data directory, shield-1, regional-1, edge-a and edge-b, and on first start it
synthesises demo videos into the origin with ffmpeg. The supervisor here:

* starts nodes parents-first and waits for each to be healthy before its children;
* prefixes every line a node logs with the node's name;
* restarts a node that dies (reported, with a growing back-off, bounded);
* forwards SIGHUP (reload) to every node; on SIGINT/SIGTERM stops them all (SIGTERM, then
  SIGKILL after a grace period) so no process is left behind.

When the topology has a filesystem origin it also runs the origin services beside the nodes,
supervised the same way: the origin API (``reelcdn origin``: tus uploads and the video API, on
127.0.0.1:8300, admin on :9300) and one transcoding worker (``reelcdn worker``) that publishes
into that origin's root, so an uploaded video plays through the edges. The signing key of user
tokens is made on first start (``DATA_DIR/origin-keys``) with a token for the user ``demo``
(``DATA_DIR/user-token``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from reelcdn.edge.config import Topology, default_topology_text, load_topology
from reelcdn.edge.config.model import http_base
from reelcdn.edge.config.values import format_address

RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
HEALTH_TIMEOUT = 20.0
STOP_GRACE = 10.0


@dataclass
class NodeProcess:
    """A supervised process: a node, or one of the origin services."""

    name: str
    role: str
    admin_url: str | None
    admin_token: str | None = None
    command: list[str] = field(default_factory=list)  # the ``reelcdn`` sub-command and args
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


def say(message: str) -> None:
    print(f"[up] {message}", flush=True)


def prepare_default(data_dir: Path) -> Path:
    """Write the embedded default topology into the data dir (with an admin token made on
    first start) and return its path; children load that file, so SIGHUP reloads it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "admin-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(24) + "\n")
        token_file.chmod(0o600)
    token = token_file.read_text().strip()
    text = default_topology_text()
    config = data_dir / "topology.toml"
    header = (
        "# Written by `reelcdn up` from the embedded default; edit it and send SIGHUP to\n"
        "# reload, or copy it and run `reelcdn up --config FILE`.\n"
    )
    token_line = f'admin_token = "{token}"  # made on first start, kept in {token_file.name}\n'
    if "\n[defaults]\n" in "\n" + text:
        text = ("\n" + text).replace("\n[defaults]\n", "\n[defaults]\n" + token_line, 1)[1:]
    else:
        text = "[defaults]\n" + token_line + "\n" + text
    rendered = header + text
    if not config.exists() or config.read_text() != rendered:
        config.write_text(rendered)
    return config


def ensure_demo_videos(topology: Topology) -> list[str]:
    """Synthesise demo videos into every filesystem origin that has none yet."""
    from reelcdn.origin.demo import synthesise_demo_videos

    ids: list[str] = []
    for origin in topology.origins.values():
        if origin.type == "fs" and origin.root:
            root = Path(origin.root)
            root.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            made = synthesise_demo_videos(root, log=lambda line: say(f"demo: {line}"))
            say(f"demo videos ready in {root} ({time.monotonic() - started:.1f} s): "
                f"{', '.join(made)}")
            ids.extend(made)
    return ids


DEMO_CREATORS = ("ana", "ben", "chloe")
"""The users whose uploads the demo videos are, in turn. Not ``demo``, the user ``reelcdn up``
signs in: a viewer's own videos are left out of its for-you feed."""


def seed_demo(topology: Topology, video_ids: list[str]) -> list[str]:
    """Seed the origin services with the demo: the demo videos as ``ready`` uploads of a few
    creators (:data:`DEMO_CREATORS`, in turn), and some follows and likes among them and the
    user ``demo`` — so the feed, the web page and the edges' play counts have something on
    first start. Only videos in the origin the services publish into; a video already in the
    catalog is left as it is, and its follows and likes are not seeded again (a restart keeps
    whatever happened since). Returns the ids seeded."""
    from reelcdn.manifests.meta import VideoMeta
    from reelcdn.origin.config import open_catalog, services_from_topology
    from reelcdn.origin.feed.store import SqliteEngagementStore

    services = services_from_topology(topology)
    publish = services.publish
    if publish is None or publish.type != "fs" or not publish.root or not video_ids:
        return []
    catalog = open_catalog(services.catalog)
    seeded: list[tuple[str, str]] = []
    for number, video_id in enumerate(video_ids, 1):
        try:
            meta = VideoMeta.read(Path(publish.root) / "v" / video_id / "meta.json")
        except (OSError, ValueError):
            continue  # made in another origin than the one the services publish into
        if catalog.get(video_id) is not None:
            continue
        owner = DEMO_CREATORS[(number - 1) % len(DEMO_CREATORS)]
        catalog.create(video_id, owner, {
            "title": f"Demo video {number}",
            "caption": f"Synthesised by reelcdn up for @{owner}: a test picture and a tone.",
            "hashtags": "#demo #reelcdn" + (" #tone" if number % 2 else " #pattern"),
        }, status="ready")
        catalog.set_status(video_id, "ready", duration=meta.duration,
                           renditions=[r.name for r in meta.renditions])
        seeded.append((video_id, owner))
    if seeded:
        store = SqliteEngagementStore(services.data_dir / "feed.sqlite")
        try:
            now = time.time()
            owners = sorted({owner for _, owner in seeded})
            store.follow("demo", owners[0], now)  # the following feed is not empty
            for i, owner in enumerate(owners):  # each creator follows the next one
                if len(owners) > 1:
                    store.follow(owner, owners[(i + 1) % len(owners)], now)
            for i, (video_id, owner) in enumerate(seeded):
                for liker in ("demo", *DEMO_CREATORS)[: 1 + i % (len(DEMO_CREATORS) + 1)]:
                    if liker != owner:
                        store.like(liker, video_id, now)
        finally:
            store.close()
    return [video_id for video_id, _ in seeded]


def write_loadtest_catalog(data_dir: Path, topology: Topology, demo_ids: list[str]) -> Path:
    """Write ``{data_dir}/catalog.txt`` for ``reelcdn loadtest --catalog``: the ready videos
    of every filesystem origin (their ``catalog.txt``, so uploads count too), else the demo
    ids. Written atomically (temp file + rename) so a harness never reads half a list."""
    ids: list[str] = []
    for origin in topology.origins.values():
        listed = Path(origin.root) / "catalog.txt" if origin.type == "fs" and origin.root \
            else None
        if listed is not None and listed.is_file():
            ids.extend(i for i in listed.read_text().split() if i not in ids)
    ids = ids or list(dict.fromkeys(demo_ids))
    path = data_dir / "catalog.txt"
    temporary = data_dir / ".catalog.txt.tmp"
    temporary.write_text("# video ids for `reelcdn loadtest --catalog` (written by reelcdn up)\n"
                         + "".join(f"{i}\n" for i in ids))
    os.replace(temporary, path)
    return path


async def _pump(name: str, stream: asyncio.StreamReader | None, width: int) -> None:
    if stream is None:
        return
    prefix = f"[{name}]".ljust(width + 2) + " "
    while True:
        line = await stream.readline()
        if not line:
            return
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def _healthy(url: str, token: str | None, session: aiohttp.ClientSession) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.get(url + "/health", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=1)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


class Supervisor:
    def __init__(self, config_file: Path, topology: Topology, log_level: str,
                 services: list[NodeProcess] | None = None) -> None:
        self.config_file = config_file
        self.topology = topology
        self.log_level = log_level
        self.nodes: dict[str, NodeProcess] = {}
        self.stopping = False
        for name in topology.order_for_start():
            node = topology.nodes[name]
            admin_address = node.admin_advertised()
            admin = http_base(admin_address) if admin_address is not None else None
            self.nodes[name] = NodeProcess(
                name=name, role=node.role, admin_url=admin, admin_token=node.admin_token,
                command=["node", "--config", str(config_file), "--name", name],
            )
        for service in services or ():
            self.nodes[service.name] = service
        self.width = max((len(n) for n in self.nodes), default=4)

    async def spawn(self, node: NodeProcess) -> None:
        node.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reelcdn.cli", "--log-level", self.log_level, *node.command,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, env={**os.environ, "REELCDN_SUPERVISED": "1"},
        )
        node.started_at = time.monotonic()
        node.pumps = [
            asyncio.create_task(_pump(node.name, node.process.stdout, self.width)),
            asyncio.create_task(_pump(node.name, node.process.stderr, self.width)),
        ]

    async def wait_healthy(self, node: NodeProcess, session: aiohttp.ClientSession) -> bool:
        if node.admin_url is None:
            await asyncio.sleep(0.5)
            return node.process is not None and node.process.returncode is None
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            if node.process is not None and node.process.returncode is not None:
                return False
            if await _healthy(node.admin_url, node.admin_token, session):
                return True
            await asyncio.sleep(0.1)
        return False

    async def start_all(self) -> bool:
        async with aiohttp.ClientSession() as session:
            for node in self.nodes.values():
                await self.spawn(node)
                if not await self.wait_healthy(node, session):
                    say(f"node {node.name} did not become healthy; stopping")
                    return False
        return True

    async def watch(self) -> None:
        """Restart nodes that die, with back-off, until stopping."""
        while not self.stopping:
            waits = {
                asyncio.ensure_future(n.process.wait()): n
                for n in self.nodes.values() if n.process is not None
            }
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if self.stopping:
                return
            for task in done:
                node = waits[task]
                code = task.result()
                if time.monotonic() - node.started_at > 60:
                    node.restarts = 0
                delay = RESTART_BACKOFF[min(node.restarts, len(RESTART_BACKOFF) - 1)]
                say(f"node {node.name} exited with status {code}; restarting in {delay:.1f} s")
                node.restarts += 1
                await asyncio.sleep(delay)
                if not self.stopping:
                    await self.spawn(node)

    def signal_all(self, sig: int) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(sig)

    async def stop_all(self) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for node in reversed(list(self.nodes.values())):
            process = node.process
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                say(f"node {node.name} did not stop in {STOP_GRACE:.0f} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            for pump in node.pumps:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pump, 2)


def origin_services(topology: Topology, data: Path, config_file: Path) -> list[NodeProcess]:
    """The origin API and one transcoding worker, as the topology's ``[api]``, ``[queue]``,
    ``[catalog]`` and ``[transcode]`` describe them, publishing into its ``publish_to`` origin;
    none when the file has no origin to publish into. The user-token key file is made on
    first start, and a token for the user ``demo`` beside it (``DATA_DIR/user-token``)."""
    from reelcdn.origin.config import services_from_topology

    services = services_from_topology(topology)
    if services.publish is None:
        return []
    services.data_dir.mkdir(parents=True, exist_ok=True)
    key_file = services.api.key_file
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(f"k1 {secrets.token_hex(32)}\n")
        key_file.chmod(0o600)
    token_file = data / "user-token"
    if not token_file.exists():
        from reelcdn.origin.users import mint

        token_file.write_text(mint("demo", services.keys(), 365 * 86400) + "\n")
        token_file.chmod(0o600)
    admin = services.api.admin
    return [
        NodeProcess(name="origin-api", role="origin",
                    admin_url=f"http://{format_address(*admin)}" if admin else None,
                    command=["origin", "--config", str(config_file)]),
        NodeProcess(name="worker-1", role="worker", admin_url=None,
                    command=["worker", "--config", str(config_file)]),
    ]


def print_urls(topology: Topology, video_ids: list[str], token_file: Path | None,
               services: list[NodeProcess] | None = None, data: Path | None = None) -> None:
    lines = ["", "reelcdn is up. Play (hls.js, Safari, ffplay, VLC):"]
    edges = [n for n in topology.nodes.values() if n.role == "edge"]
    for edge in edges:
        for video in video_ids or ["<video id>"]:
            lines.append(f"  {http_base(edge.advertised())}/v/{video}/master.m3u8")
    signed = [edge.name for edge in edges if edge.tokens is not None]
    if signed:
        lines.append(f"Signed URLs are required at {', '.join(signed)}: "
                     f"reelcdn sign --config {topology.file} URL --ttl 1h")
    else:
        lines.append("Signed URLs: off (anyone can play). To require them, add a "
                     "[defaults.tokens] table to the topology and reload (docs/tokens.md).")
    lines.append("Admin (health, /metrics, /cache/stats, POST /purge, POST /prewarm):")
    for node in topology.nodes.values():
        admin_address = node.admin_advertised()
        if admin_address is not None:
            lines.append(f"  {node.name:<12} {http_base(admin_address)}/metrics")
    if token_file is not None:
        lines.append(f"Admin bearer token: in {token_file}")
    if services and data is not None:
        from reelcdn.origin.config import services_from_topology

        api = services_from_topology(topology).api
        metrics = (f"  (metrics: http://{format_address(*api.admin)}/metrics)" if api.admin
                   else "")
        lines.append(f"Origin API (tus uploads, videos): "
                     f"http://{format_address(*api.listen)}/api/v1/{metrics}")
        lines.append(f"  user token for 'demo': in {data / 'user-token'}; one transcoding "
                     "worker publishes uploads into the origin")
        lines.append(f"Web page (feed, player, uploads; sign in with that token): "
                     f"http://{format_address(*api.listen)}/")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


async def run_up(config: str | None, data_dir: str, log_level: str = "INFO",
                 demo: bool = True) -> int:
    data = Path(data_dir).resolve()
    token_file = None
    if config is None:
        config_file = prepare_default(data)
        token_file = data / "admin-token"
        say(f"no --config: running the embedded default topology ({config_file})")
    else:
        config_file = Path(config).resolve()
    from reelcdn.origin.config import check_services

    # Node keys and the origin services' keys together: one list of every problem.
    topology = load_topology(config_file, data_dir=str(data), check=check_services)
    video_ids: list[str] = []
    if demo:
        video_ids = await asyncio.get_running_loop().run_in_executor(
            None, ensure_demo_videos, topology
        )
    data.mkdir(parents=True, exist_ok=True)
    catalog = write_loadtest_catalog(data, topology, video_ids)
    say(f"load-test catalog: {catalog} (reelcdn loadtest --topology {config_file} "
        f"--catalog {catalog})")
    services = origin_services(topology, data, config_file)
    if services and video_ids:
        seeded = seed_demo(topology, video_ids)
        if seeded:
            say(f"demo seeded: {', '.join(seeded)} as uploads of {', '.join(DEMO_CREATORS)}, "
                "with follows and likes")
    supervisor = Supervisor(config_file, topology, log_level, services)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: supervisor.signal_all(signal.SIGHUP))
    status = 0
    try:
        if not await supervisor.start_all():
            return 1
        print_urls(topology, video_ids, token_file, services, data)
        watcher = asyncio.create_task(supervisor.watch())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        stopper.cancel()
    finally:
        say("stopping all nodes and services")
        await supervisor.stop_all()
        say("stopped")
    return status
