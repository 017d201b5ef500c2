"""The steering server: HLS Content Steering manifests answered by the edge (docs/steering.md).

A master rendered with steering (playlists.py) names ``SERVER-URI`` and lists a copy of its
variants per pathway; a player fetches the steering manifest there, then again every ``TTL``
seconds at its ``RELOAD-URI``, adding ``_HLS_pathway`` (the pathway it is on) and
``_HLS_throughput`` (its throughput estimate, bit/s) to the query (HLS Content Steering
specification; rfc8216bis §4.4.6.6). This module answers it at ``server_uri``'s path:

    {"VERSION": 1, "TTL": 10, "RELOAD-URI": "/v/demo-1/steering.json?token=…",
     "PATHWAY-PRIORITY": ["edge-a", "backup"]}

- **Ranking** (:func:`rank`, pure): the pathways that are up in configured order, then the
  down ones (kept, last, so that a player may come back to them and is never left with an
  empty list); a session's own pathway (``_HLS_pathway``) stays first while it is up, so a
  noisy check does not move every session at once.
- **Health** (:func:`observe`, pure; :class:`PathwayChecks`, the I/O): every
  ``health_interval`` a GET of each pathway's health URL (``health_urls[id]``, else its base +
  ``health_path``; a base of ``""`` or an absolute path is this node's own listener), failed by
  a status ≥ 400, a connection error or ``health_timeout``; down after ``down_after`` failures
  in a row, up after ``up_after`` passes. Pathways start up. This node's own pathways are also
  down while every one of its upstreams is down (their passive health: it could fill nothing).
- **Caching**: the answer is built per request, never stored (``Cache-Control: no-store``).
- **Tokens**: the node's token gate runs before this hook, as for any path. The rendered
  master's ``SERVER-URI`` carries the viewer's carried query (tokens) like its other URIs, and
  ``RELOAD-URI`` keeps the request's query (less the two ``_HLS_`` parameters, which the player
  sets itself), so a steering path under the video's folder stays granted by the viewer's token.
- **Metrics**: manifests by the pathway ranked first, ``_HLS_throughput`` reports summed by the
  reporting player's pathway (known PATHWAY-IDs only), each pathway's health as a 0/1 level.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from reelcdn.extensions.message import Request

if TYPE_CHECKING:
    from reelcdn.edge.config import NodeConfig, SteeringConfig
    from reelcdn.edge.http.connection import HttpConnection
    from reelcdn.edge.video.host import FeatureHost

log = logging.getLogger("reelcdn.steering")

CONTENT_TYPE = b"application/json"
# The video id as the playlist routes accept it (playlists.py).
_VIDEO_ID = r"(?P<video>[A-Za-z0-9][A-Za-z0-9_-]{0,127})"
# A master's path, against which a relative server_uri resolves.
_MASTER = "/v/{video_id}/master.m3u8"
_CLIENT_PARAMS = ("_HLS_pathway", "_HLS_throughput")
MAX_THROUGHPUT = 10**12  # bit/s; a larger report is not counted


# -- policy: pure functions ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Health:
    """A pathway's health: ``up``, and the failed or passed checks in a row."""

    up: bool = True
    failures: int = 0
    successes: int = 0


def observe(health: Health, ok: bool, down_after: int, up_after: int) -> Health:
    """The health after one check: down after ``down_after`` failures in a row, up again
    after ``up_after`` passes in a row."""
    if ok:
        successes = health.successes + 1
        return Health(health.up or successes >= up_after, 0, successes)
    failures = health.failures + 1
    return Health(health.up and failures < down_after, failures, 0)


def rank(pathways: Sequence[str], up: Mapping[str, bool], current: str | None = None
         ) -> list[str]:
    """PATHWAY-PRIORITY: the pathways that are up in configured order, then the down ones in
    configured order; ``current`` (the session's pathway) first while it is up. A pathway
    missing from ``up`` counts as up."""
    healthy = [p for p in pathways if up.get(p, True)]
    down = [p for p in pathways if not up.get(p, True)]
    if current is not None and current in healthy:
        healthy.remove(current)
        healthy.insert(0, current)
    return healthy + down


def manifest(priority: Sequence[str], ttl: int, reload_uri: str) -> dict[str, Any]:
    """The steering manifest (VERSION 1)."""
    return {"VERSION": 1, "TTL": ttl, "RELOAD-URI": reload_uri,
            "PATHWAY-PRIORITY": list(priority)}


def server_path(server_uri: str) -> str:
    """The path this node answers for ``server_uri`` (``{video_id}`` kept): an absolute URI's
    path, or a relative one resolved against a master's path."""
    if "://" in server_uri:
        path = urllib.parse.urlsplit(server_uri).path or "/"
    else:
        path = urllib.parse.urljoin(_MASTER, server_uri.split("?", 1)[0])
    return path.split("?", 1)[0]


def route_pattern(path: str) -> re.Pattern[str]:
    """A regular expression of the request paths ``path`` (with ``{video_id}``) names."""
    parts = path.split("{video_id}")
    pattern = re.escape(parts[0])
    for i, part in enumerate(parts[1:]):
        pattern += (_VIDEO_ID if i == 0 else "(?P=video)") + re.escape(part)
    return re.compile(pattern)


def client_params(query: str) -> tuple[str | None, int | None, str]:
    """(``_HLS_pathway``, ``_HLS_throughput``, the rest of the query as sent) of a request."""
    pathway: str | None = None
    throughput: int | None = None
    kept = []
    for part in query.split("&") if query else ():
        name, _, value = part.partition("=")
        if name == "_HLS_pathway":
            pathway = urllib.parse.unquote(value)
        elif name == "_HLS_throughput":
            with contextlib.suppress(ValueError):
                number = float(urllib.parse.unquote(value))
                if 0 <= number <= MAX_THROUGHPUT:
                    throughput = int(number)
        elif part:
            kept.append(part)
    return pathway, throughput, "&".join(kept)


def own_base(base: str) -> bool:
    """Whether a pathway's base is this node (relative URIs, or an absolute path)."""
    return base == "" or base.startswith("/")


def health_urls(config: NodeConfig) -> dict[str, str]:
    """Each checked pathway's health URL (pathways not listed are not checked)."""
    steering = config.steering
    if steering is None:
        return {}
    urls = dict(steering.health_urls)
    if steering.health_path is not None:
        for pathway, base in steering.pathways:
            if pathway in urls:
                continue
            if own_base(base):
                own = _own_url(config)
                if own is None:
                    continue
                base = own + base
            urls[pathway] = base + steering.health_path
    return urls


def _own_url(config: NodeConfig) -> str | None:
    """This node's data plane, as its own checks reach it (None: the port is not fixed)."""
    if config.listen_port == 0:
        return None
    host = config.listen_host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{config.listen_port}" if ":" in host else (
        f"http://{host}:{config.listen_port}")


# -- the checks (I/O) ------------------------------------------------------------------------
class PathwayChecks:
    """The active health checks of a node's pathways: one task, a GET per checked pathway
    every ``health_interval``. It reads the node's config each round, so a reload's pathways
    and URLs apply from the next round (a pathway whose URL changed starts up again)."""

    def __init__(self, node: FeatureHost, after_round: Callable[[], None]) -> None:
        self.node = node
        self.health: dict[str, Health] = {}
        self.after_round = after_round  # the server refreshes its health gauge
        self._urls: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        """Stop checking (a round under way is cancelled, its session closed with it)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    def up(self) -> dict[str, bool]:
        return {pathway: health.up for pathway, health in self.health.items()}

    async def _run(self) -> None:
        while True:
            steering = self.node.config.steering
            interval = steering.health_interval if steering is not None else 1.0
            try:
                await self.check_once()
            except Exception:  # a bug here must not stop the checks for good
                log.exception("steering health checks failed")
            await asyncio.sleep(interval)

    async def check_once(self) -> None:
        """One round: every checked pathway, concurrently."""
        config = self.node.config
        steering = config.steering
        urls = health_urls(config) if steering is not None and steering.server_uri else {}
        for pathway in list(self.health):
            if urls.get(pathway) != self._urls.get(pathway):
                del self.health[pathway]  # unchecked now, or another URL: starts up again
        self._urls = urls
        if urls and steering is not None:
            # A fresh connection per check (force_close): a check sees what a player's new
            # connection would, not a pooled one that outlived its host.
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                headers={"User-Agent": "reelcdn-steering-check"},
            ) as session:
                results = await asyncio.gather(*(
                    _check(session, url, steering.health_timeout) for url in urls.values()))
            for (pathway, url), ok in zip(urls.items(), results, strict=True):
                before = self.health.get(pathway, Health())
                after = observe(before, ok, steering.down_after, steering.up_after)
                if after.up != before.up:
                    log.warning("steering pathway %s is %s (%s)", pathway,
                                "up" if after.up else "down", url)
                self.health[pathway] = after
        self.after_round()


async def _check(session: Any, url: str, timeout: float) -> bool:
    """One check: passed when ``url`` answers a status below 400 within ``timeout``."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout),
                               allow_redirects=False) as response:
            await response.read()
            return bool(response.status < 400)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return False


# -- the answer ---------------------------------------------------------------------------------
class SteeringServer:
    """Answers steering manifests at the path of the node's ``steering.server_uri``."""

    def __init__(self, node: FeatureHost) -> None:
        self.node = node
        self.checks = PathwayChecks(node, self.refresh_gauge)
        self._config: NodeConfig | None = None
        self._prefix = ""
        self._route: re.Pattern[str] | None = None

    def start(self) -> None:
        """Start the health checks (they idle while nothing is configured to be checked)."""
        self.checks.start()

    def close(self) -> None:
        self.checks.close()

    def route(self) -> re.Pattern[str] | None:
        """The steering path's pattern for the current config (rebuilt after a reload)."""
        config = self.node.config
        if config is not self._config:
            self._config = config
            steering = config.steering
            if steering is None or steering.server_uri is None:
                self._route, self._prefix = None, ""
            else:
                path = server_path(steering.server_uri)
                self._route = route_pattern(path)
                self._prefix = path.split("{video_id}", 1)[0]
        return self._route

    def takes(self, path: str) -> bool:
        """Whether ``path`` is the steering path (a prefix test first: this runs per request)."""
        route = self.route()
        return route is not None and path.startswith(self._prefix) and (
            route.fullmatch(path) is not None)

    def up(self) -> dict[str, bool]:
        """Each pathway's health: its checks, and for this node's own pathways also whether
        any of its upstreams is up."""
        steering = self.node.config.steering
        if steering is None:
            return {}
        checked = self.checks.up()
        own_ok = self._own_upstream_up()
        return {pathway: checked.get(pathway, True) and (own_ok or not own_base(base))
                for pathway, base in steering.pathways}

    def refresh_gauge(self) -> None:
        self.node.stats.steering_pathway_up = {
            pathway: int(up) for pathway, up in self.up().items()}

    def priority(self, current: str | None) -> list[str]:
        """PATHWAY-PRIORITY for a session on ``current``."""
        steering = self.node.config.steering
        assert steering is not None
        return rank([pathway for pathway, _ in steering.pathways], self.up(), current)

    def _own_upstream_up(self) -> bool:
        """False when every upstream of this node is down (its passive health)."""
        health = getattr(self.node.upstream, "health", None)
        view = health() if callable(health) else {}
        return not view or any(state.get("up", True) for state in view.values())

    def answer(self, req: Request, conn: HttpConnection) -> None:
        node = self.node
        steering: SteeringConfig | None = node.config.steering
        assert steering is not None
        if req.method not in ("GET", "HEAD"):
            self._write(req, conn, 405, b"405 Method Not Allowed\n", b"text/plain",
                        b"Allow: GET, HEAD\r\n")
            return
        ids = [pathway for pathway, _ in steering.pathways]
        session, throughput, rest = client_params(req.query)
        current = session if session in ids else None
        stats = node.stats
        if current is not None and throughput is not None:
            stats.steering_throughput_sum[current] = (
                stats.steering_throughput_sum.get(current, 0) + throughput)
            stats.steering_throughput_reports[current] = (
                stats.steering_throughput_reports.get(current, 0) + 1)
        priority = self.priority(current)
        reload_uri = req.path + ("?" + rest if rest else "")
        body = json.dumps(manifest(priority, steering.ttl, reload_uri),
                          separators=(",", ":")).encode()
        stats.steering_manifests[priority[0]] = stats.steering_manifests.get(priority[0], 0) + 1
        self._write(req, conn, 200, body, CONTENT_TYPE)

    def _write(self, req: Request, conn: HttpConnection, status: int, body: bytes,
               content_type: bytes, extra: bytes = b"") -> None:
        node = self.node
        block = (b"Content-Type: " + content_type + b"\r\nCache-Control: no-store\r\n" + extra)
        head = node.delivery.head(status, block, None, b"detail=steering", None, len(body),
                                  conn.connection_field(req))
        conn.write(head if req.method == "HEAD" else head + body)
        node.stats.bytes_sent += len(head) + (0 if req.method == "HEAD" else len(body))
        node.stats.count(req.method, "steering", status)
