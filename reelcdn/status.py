"""``reelcdn status``: every node of a topology, live, from their admin APIs.

Each sample asks every node's admin API, concurrently and each request under a timeout, for
``/health`` (up, draining, degraded; the role) and ``/metrics`` (requests by cache status,
bytes sent, cache bytes and capacity, ``reelcdn_upstream_up``), and the origin API's admin
listener (when the topology has ``[api]`` with an ``admin`` address) for its queue. A node
that does not answer is down, with the reason: connection refused, timeout, 401 (the admin
token), another status.

Rates need two samples: requests/s, bytes/s and the hit ratio are the counters' increases
between two samples over the time between them (a counter that went down was reset: its new
value is the increase). ``--json`` takes two samples ``--interval`` apart and prints one
snapshot: for each node its counters at the second sample and the rates over the interval.
The live view (rich) redraws every ``--interval`` seconds, rates over the last interval.

The parsing and the arithmetic are pure functions (:func:`parse_node_metrics`,
:func:`node_row`, :func:`snapshot`, :func:`render_table`); only :func:`take_sample` does I/O.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from reelcdn.edge.ops import ratios


@dataclass(frozen=True)
class Target:
    """What to ask: a node's admin API, or the origin API's admin listener."""

    name: str
    kind: str                 # "node" | "origin"
    role: str                 # edge | regional | shield | origin
    url: str | None           # admin base URL; None: the node has no admin API
    token: str | None = None


@dataclass
class NodeMetrics:
    """What a node's ``/metrics`` says, reduced to what the status shows."""

    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)   # cache_status → requests
    errors_5xx: int = 0
    bytes_sent: int = 0
    cache_bytes: float = 0.0
    cache_capacity: float = 0.0
    cache_objects: float = 0.0
    evictions: int = 0
    upstream_up: dict[str, bool] = field(default_factory=dict)

    @property
    def hits(self) -> int:
        return int(ratios.hits(self.outcomes))


@dataclass
class OriginMetrics:
    queue_depth: float | None = None
    jobs: dict[str, float] = field(default_factory=dict)
    uploads_started: int = 0
    uploads_completed: int = 0
    bytes_received: int = 0


@dataclass
class Sample:
    """One target at one moment: up with its metrics, or down with the reason."""

    target: Target
    at: float                       # time.monotonic()
    up: bool
    error: str | None = None
    health: str | None = None       # ok | draining | degraded ... (the /health status)
    role: str | None = None
    node: NodeMetrics | None = None
    origin: OriginMetrics | None = None


# -- parsing (pure) ----------------------------------------------------------------------------


def parse_node_metrics(text: str) -> NodeMetrics:
    out = NodeMetrics()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == "reelcdn_requests_total":
                out.requests += int(value)
                outcome = labels.get("cache_status", "?")
                out.outcomes[outcome] = out.outcomes.get(outcome, 0) + int(value)
                if labels.get("code", "").startswith("5"):
                    out.errors_5xx += int(value)
            elif name == "reelcdn_bytes_sent_total":
                out.bytes_sent += int(value)
            elif name == "reelcdn_cache_bytes":
                out.cache_bytes += value
            elif name == "reelcdn_cache_capacity_bytes":
                out.cache_capacity += value
            elif name == "reelcdn_cache_objects":
                out.cache_objects += value
            elif name == "reelcdn_cache_evictions_total":
                out.evictions += int(value)
            elif name == "reelcdn_upstream_up":
                out.upstream_up[labels.get("upstream", "?")] = value >= 1
    return out


def parse_origin_metrics(text: str) -> OriginMetrics:
    out = OriginMetrics()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "reelcdn_origin_queue_depth":
                out.queue_depth = s.value
            elif s.name == "reelcdn_origin_jobs":
                out.jobs[s.labels.get("state", "?")] = s.value
            elif s.name == "reelcdn_origin_uploads_started_total":
                out.uploads_started += int(s.value)
            elif s.name == "reelcdn_origin_uploads_completed_total":
                out.uploads_completed += int(s.value)
            elif s.name == "reelcdn_origin_upload_bytes_received_total":
                out.bytes_received += int(s.value)
    return out


# -- arithmetic (pure) -------------------------------------------------------------------------


def increase(before: float | None, after: float) -> float:
    """A counter's increase between two samples; one that went down was reset (the process
    restarted), so everything it counts now is new."""
    if before is None:
        return 0.0
    return after - before if after >= before else after


def rate(before: float | None, after: float, seconds: float) -> float | None:
    """Per second over ``seconds``; None without a previous sample or a positive interval."""
    if before is None or seconds <= 0:
        return None
    return increase(before, after) / seconds


def ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def node_row(current: Sample, previous: Sample | None) -> dict[str, Any]:
    """One node's line of the status: its state, counters at ``current`` and rates since
    ``previous`` (the same target's earlier sample, if it was up)."""
    target = current.target
    row: dict[str, Any] = {
        "name": target.name, "kind": target.kind, "role": current.role or target.role,
        "admin": target.url, "up": current.up, "health": current.health,
        "error": current.error,
    }
    if not current.up:
        return row
    before = previous if previous is not None and previous.up else None
    seconds = current.at - before.at if before is not None else 0.0
    row["interval_seconds"] = round(seconds, 3) if before is not None else None
    if current.node is not None:
        now = current.node
        was = before.node if before is not None else None
        # Each outcome's increase on its own (a restart resets them all), then the one
        # definition of the hit ratio (edge/ops/ratios.py) over them.
        outcomes_delta = {k: increase(was.outcomes.get(k, 0) if was else None, v)
                          for k, v in now.outcomes.items()}
        row.update({
            "requests": now.requests,
            "hits": now.hits,
            "bytes_sent": now.bytes_sent,
            "errors_5xx": now.errors_5xx,
            "requests_per_second": rate(was.requests if was else None, now.requests, seconds),
            "bytes_per_second": rate(was.bytes_sent if was else None, now.bytes_sent, seconds),
            "errors_5xx_per_second": rate(was.errors_5xx if was else None, now.errors_5xx,
                                          seconds),
            # Over the interval when requests arrived in it, else since the node started.
            "hit_ratio_interval": ratios.hit_ratio(outcomes_delta) if was else None,
            "hit_ratio_total": ratios.hit_ratio(now.outcomes),
            "cache_bytes": now.cache_bytes,
            "cache_capacity": now.cache_capacity,
            "cache_fill": ratio(now.cache_bytes, now.cache_capacity),
            "cache_objects": now.cache_objects,
            "evictions": now.evictions,
            "upstreams": dict(sorted(now.upstream_up.items())),
        })
    if current.origin is not None:
        origin = current.origin
        was_o = before.origin if before is not None else None
        row.update({
            "queue_depth": origin.queue_depth,
            "jobs": dict(sorted(origin.jobs.items())),
            "uploads_started": origin.uploads_started,
            "uploads_completed": origin.uploads_completed,
            "upload_bytes_received": origin.bytes_received,
            "upload_bytes_per_second": rate(was_o.bytes_received if was_o else None,
                                             origin.bytes_received, seconds),
        })
    return row


def snapshot(current: list[Sample], previous: list[Sample] | None) -> dict[str, Any]:
    """The status document: every target's row, and how many are up."""
    earlier = {s.target.name: s for s in previous or ()}
    rows = [node_row(s, earlier.get(s.target.name)) for s in current]
    return {
        "nodes": rows,
        "up": sum(1 for r in rows if r["up"]),
        "down": sum(1 for r in rows if not r["up"]),
    }


# -- I/O ---------------------------------------------------------------------------------------


def describe_failure(exc: BaseException, timeout: float) -> str:
    """A short reason for an admin request that failed."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"timeout ({timeout:g} s)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect: {cause.strerror or cause}" if cause else "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientError):
        return f"{exc.__class__.__name__}: {exc}"[:120]
    return f"{exc.__class__.__name__}: {exc}"[:120]


class AdminFailed(Exception):
    pass


async def _get(session: aiohttp.ClientSession, target: Target, path: str,
               timeout: float) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    assert target.url is not None
    async with session.get(target.url + path, headers=headers,
                           timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        return response.status, await response.read()


async def take_sample(session: aiohttp.ClientSession, target: Target,
                      timeout: float) -> Sample:
    """Ask one target for its health and metrics; never raises, never waits past about
    ``2 * timeout`` (two requests, each bounded)."""
    at = time.monotonic()
    if target.url is None:
        return Sample(target, at, up=False, error="no admin API (admin is not set)")
    try:
        status, body = await _get(session, target, "/health", timeout)
        if status == 401:
            raise AdminFailed("401 unauthorized (wrong or missing admin token)")
        try:
            health = json.loads(body)
        except ValueError:
            health = {}
        state = health.get("status") if isinstance(health, dict) else None
        if status not in (200, 503):
            raise AdminFailed(f"/health answered {status}")
        if status == 503:  # draining, starting, or no worker serves
            return Sample(target, at, up=False, health=state or "unavailable",
                          error=f"/health 503 ({state or 'unavailable'})",
                          role=health.get("role") if isinstance(health, dict) else None)
        status, body = await _get(session, target, "/metrics", timeout)
        if status != 200:
            raise AdminFailed(f"/metrics answered {status}")
        text = body.decode("utf-8", "replace")
        at = time.monotonic()  # the counters are as of now
        sample = Sample(target, at, up=True, health=state or "ok",
                        role=health.get("role") if isinstance(health, dict) else None)
        if target.kind == "origin":
            sample.origin = parse_origin_metrics(text)
        else:
            sample.node = parse_node_metrics(text)
        return sample
    except AdminFailed as exc:
        return Sample(target, at, up=False, error=str(exc))
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return Sample(target, at, up=False, error=describe_failure(exc, timeout))


async def sample_all(session: aiohttp.ClientSession, targets: list[Target],
                     timeout: float) -> list[Sample]:
    return list(await asyncio.gather(*(take_sample(session, t, timeout) for t in targets)))


def targets_of(topology: Any) -> list[Target]:
    """Every node of a loaded topology, at its advertised admin address with its token, and
    the origin API's admin listener when the file has an ``[api]`` with ``admin``."""
    from reelcdn.edge.config.model import http_base

    out = []
    for name in reversed(topology.order_for_start()):  # edges first, the shield last
        node = topology.nodes[name]
        admin = node.admin_advertised()
        out.append(Target(name, "node", node.role, http_base(admin) if admin else None,
                          node.admin_token))
    if "api" in topology.services:
        from reelcdn.origin.config import services_from_topology

        api = services_from_topology(topology).api
        admin = api.admin
        if admin is not None:
            host, port = admin
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1" if host != "::" else "::1"
            out.append(Target("origin-api", "origin", "origin", http_base((host, port))))
    return out


# -- rendering (pure) --------------------------------------------------------------------------


def human_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _per_second(value: float | None) -> str:
    return "—" if value is None else human_bytes(value) + "/s"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def render_table(doc: dict[str, Any], title: str = "reelcdn status") -> Any:
    """A rich Table of a status document (:func:`snapshot`)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", expand=False)
    for heading, justify in (("node", "left"), ("role", "left"), ("state", "left"),
                             ("req/s", "right"), ("hit ratio", "right"),
                             ("bytes/s", "right"), ("5xx/s", "right"), ("cache", "right"),
                             ("upstreams / queue", "left")):
        table.add_column(heading, justify=justify)  # type: ignore[arg-type]
    for row in doc["nodes"]:
        if not row["up"]:
            state = Text(f"down: {row['error']}", style="bold red")
            table.add_row(row["name"], row["role"], state, *(["—"] * 5), "")
            continue
        health = row.get("health") or "ok"
        state = Text("up" if health == "ok" else health,
                     style="green" if health == "ok" else "yellow")
        if row["kind"] == "origin":
            jobs = row.get("jobs") or {}
            depth = row.get("queue_depth")
            queue = (f"queue {depth:.0f}" if depth is not None else "queue ?") + (
                f" (pending {jobs.get('pending', 0):.0f}, leased {jobs.get('leased', 0):.0f}, "
                f"dead {jobs.get('dead', 0):.0f})" if jobs else "")
            table.add_row(row["name"], row["role"], state, "—", "—",
                          _per_second(row.get("upload_bytes_per_second")), "—", "—",
                          queue)
            continue
        ratio_value = row.get("hit_ratio_interval")
        hit = _pct(ratio_value) if ratio_value is not None else (
            _pct(row.get("hit_ratio_total")) + " (all)" if row.get("hit_ratio_total")
            is not None else "—")
        cache = f"{human_bytes(row.get('cache_bytes'))} / {human_bytes(row.get('cache_capacity'))}"
        if row.get("cache_fill") is not None:
            cache += f" ({_pct(row['cache_fill'])})"
        upstreams = Text()
        for i, (name, up) in enumerate((row.get("upstreams") or {}).items()):
            if i:
                upstreams.append(" ")
            upstreams.append(f"{name} {'up' if up else 'DOWN'}",
                             style="green" if up else "bold red")
        table.add_row(row["name"], row["role"], state, _num(row.get("requests_per_second")),
                      hit, _per_second(row.get("bytes_per_second")),
                      _num(row.get("errors_5xx_per_second"), 2), cache, upstreams)
    table.caption = f"{doc['up']} up, {doc['down']} down"
    return table


def render_text(doc: dict[str, Any], width: int = 160) -> str:
    """The table as plain text (``--once``; tests)."""
    import io

    from rich.console import Console

    console = Console(record=True, width=width, color_system=None, force_terminal=False,
                      file=io.StringIO())
    console.print(render_table(doc))
    return console.export_text()


# -- the command -------------------------------------------------------------------------------


@dataclass
class Options:
    interval: float = 2.0
    timeout: float = 2.0
    json: bool = False
    once: bool = False
    count: int | None = None      # live view: stop after this many refreshes (None: Ctrl-C)


async def two_samples(targets: list[Target], options: Options) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        first = await sample_all(session, targets, options.timeout)
        await asyncio.sleep(options.interval)
        second = await sample_all(session, targets, options.timeout)
    return snapshot(second, first)


async def live(targets: list[Target], options: Options) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    async with aiohttp.ClientSession() as session:
        previous = await sample_all(session, targets, options.timeout)
        doc = snapshot(previous, None)
        refreshes = 0
        with Live(render_table(doc, "reelcdn status (sampling…)"), console=console,
                  auto_refresh=False) as view:
            last = time.monotonic()
            while options.count is None or refreshes < options.count:
                # every interval from the start of the previous sample, however long it took
                await asyncio.sleep(max(0.0, options.interval - (time.monotonic() - last)))
                last = time.monotonic()
                current = await sample_all(session, targets, options.timeout)
                doc = snapshot(current, previous)
                previous = current
                refreshes += 1
                stamp = time.strftime("%H:%M:%S")
                view.update(render_table(
                    doc, f"reelcdn status at {stamp} (rates over {options.interval:g} s; "
                    "Ctrl-C quits)"), refresh=True)


def run(targets: list[Target], options: Options) -> int:
    """``--json`` / ``--once``: one snapshot from two samples; else the live view. Exit
    status: 0 when every target answered, 1 when some did not."""
    if options.json or options.once:
        doc = asyncio.run(two_samples(targets, options))
        doc["interval_seconds"] = options.interval
        if options.json:
            print(json.dumps(doc, indent=2))
        else:
            print(render_text(doc), end="")
        return 0 if doc["down"] == 0 else 1
    try:
        asyncio.run(live(targets, options))
    except KeyboardInterrupt:
        return 0
    return 0
