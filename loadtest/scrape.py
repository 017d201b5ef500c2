"""The server-side view: each node's Prometheus ``/metrics``, scraped before, during and after a
run, reduced to the counters a load test needs (requests, hits, upstream requests, coalesced
waiters, bytes sent) and differenced over the run.

Why differences: a node's counters are cumulative since it started (warm-up traffic, earlier
runs); only ``after - before`` belongs to this run. Why not trust the client view alone: a
CDN's own counters are what operators watch, and the two must agree, which the tests check.

Admin endpoints come from ``--admin URL`` (repeatable; ``--admin-token``) or from a topology
file (reelcdn's own config loader gives every node's admin address, role and token).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from reelcdn.edge.ops import ratios


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str                      # admin base URL, e.g. http://127.0.0.1:9080
    token: str | None = None
    name: str | None = None       # from the topology (else learnt from the metrics' labels)
    role: str | None = None       # edge | regional | shield, when known


@dataclass
class NodeCounters:
    """Cumulative counters of one node at one scrape."""

    node: str
    role: str | None = None
    requests: int = 0
    by_cache_status: dict[str, int] = field(default_factory=dict)
    upstream: dict[str, int] = field(default_factory=dict)     # upstream name → requests
    coalesced_waiters: int = 0
    bytes_sent: int = 0
    upstream_failures: int = 0
    prefetch_issued: int = 0      # fills this node started on its own (not requests of it)

    @property
    def hits(self) -> int:
        """hit + stale (``by_cache_status`` is by outcome: edge/ops/ratios.py)."""
        return int(ratios.hits(self.by_cache_status))

    @property
    def hit_ratio(self) -> float | None:
        return ratios.hit_ratio(self.by_cache_status)

    def minus(self, before: NodeCounters | None) -> NodeCounters:
        """The increase of every counter since ``before``, each series on its own; a series
        that went down was reset (see :func:`increase`), so the result is never negative."""
        if before is None:
            return self
        statuses = {k: increase(v, before.by_cache_status.get(k, 0))
                    for k, v in self.by_cache_status.items()}
        upstream = {k: increase(v, before.upstream.get(k, 0)) for k, v in self.upstream.items()}
        return NodeCounters(
            node=self.node, role=self.role,
            # the sum of its series' increases: a sum can hide one series' reset
            requests=(sum(statuses.values()) if statuses
                      else increase(self.requests, before.requests)),
            by_cache_status={k: v for k, v in statuses.items() if v},
            upstream={k: v for k, v in upstream.items() if v},
            coalesced_waiters=increase(self.coalesced_waiters, before.coalesced_waiters),
            bytes_sent=increase(self.bytes_sent, before.bytes_sent),
            upstream_failures=increase(self.upstream_failures, before.upstream_failures),
            prefetch_issued=increase(self.prefetch_issued, before.prefetch_issued),
        )

    def plus(self, other: NodeCounters) -> NodeCounters:
        """Two consecutive increases added up."""
        def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}

        return NodeCounters(
            node=self.node, role=self.role or other.role,
            requests=self.requests + other.requests,
            by_cache_status=add(self.by_cache_status, other.by_cache_status),
            upstream=add(self.upstream, other.upstream),
            coalesced_waiters=self.coalesced_waiters + other.coalesced_waiters,
            bytes_sent=self.bytes_sent + other.bytes_sent,
            upstream_failures=self.upstream_failures + other.upstream_failures,
            prefetch_issued=self.prefetch_issued + other.prefetch_issued,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node, "role": self.role, "requests": self.requests,
            "hits": self.hits, "hit_ratio": self.hit_ratio,
            "by_cache_status": self.by_cache_status, "upstream": self.upstream,
            "coalesced_waiters": self.coalesced_waiters, "bytes_sent": self.bytes_sent,
            "upstream_failures": self.upstream_failures,
            "prefetch_issued": self.prefetch_issued,
        }


def parse_metrics(text: str, role: str | None = None, name: str | None = None) -> NodeCounters:
    """Reduce one ``/metrics`` page to :class:`NodeCounters`."""
    counters = NodeCounters(node=name or "?", role=role)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            value = int(sample.value)
            if name is None and "node" in labels:
                counters.node = labels["node"]
            if sample.name == "reelcdn_requests_total":
                counters.requests += value
                status = labels.get("cache_status", "?")
                counters.by_cache_status[status] = counters.by_cache_status.get(status, 0) + value
            elif sample.name == "reelcdn_upstream_requests_total":
                upstream = labels.get("upstream", "?")
                counters.upstream[upstream] = counters.upstream.get(upstream, 0) + value
            elif sample.name == "reelcdn_coalesced_waiters_total":
                counters.coalesced_waiters += value
            elif sample.name == "reelcdn_bytes_sent_total":
                counters.bytes_sent += value
            elif sample.name == "reelcdn_upstream_failures_total":
                counters.upstream_failures += value
            elif sample.name == "reelcdn_prefetch_issued_total":
                counters.prefetch_issued += value
    return counters


def endpoints_from_topology(path: str) -> list[Endpoint]:
    """Admin endpoints of every node of a reelcdn topology file that has an admin listener, at
    their advertised addresses (``admin_advertise``)."""
    from reelcdn.edge.config import load_topology
    from reelcdn.edge.config.model import http_base

    topology = load_topology(path)
    found = []
    for name, node in topology.nodes.items():
        admin = node.admin_advertised()
        if admin is not None:
            found.append(Endpoint(http_base(admin), node.admin_token, name, node.role))
    return found


def edge_urls_from_topology(path: str) -> list[str]:
    """Base URLs of the topology's edge nodes: where players connect (their advertise
    addresses, since the harness may run on another host)."""
    from reelcdn.edge.config import load_topology
    from reelcdn.edge.config.model import http_base

    topology = load_topology(path)
    return [http_base(topology.nodes[name].advertised()) for name in topology.edges()]


def tier_roles_from_topology(path: str) -> list[str]:
    """Roles from the edge inwards (``["edge", "regional", "shield"]``), following the first
    edge's first parent at each step, to name the Cache-Status depths of the report."""
    from reelcdn.edge.config import load_topology

    topology = load_topology(path)
    edges = topology.edges()
    roles: list[str] = []
    node = topology.nodes[edges[0]] if edges else None
    while node is not None and len(roles) < len(topology.nodes):
        roles.append(node.role)
        parent = node.parents[0].name if node.parents else None
        node = topology.nodes.get(parent) if parent else None
    return roles


async def scrape_one(session: aiohttp.ClientSession, endpoint: Endpoint) -> NodeCounters:
    headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}
    async with session.get(endpoint.url.rstrip("/") + "/metrics", headers=headers,
                           timeout=aiohttp.ClientTimeout(total=5)) as response:
        if response.status != 200:
            raise ScrapeError(f"{endpoint.url}/metrics answered HTTP {response.status}"
                              + (" (is --admin-token right?)" if response.status == 401 else ""))
        text = await response.text()
    return parse_metrics(text, endpoint.role, endpoint.name)


class ScrapeError(RuntimeError):
    pass


@dataclass
class Scrape:
    at: float                           # seconds since the run started (negative: before)
    nodes: dict[str, NodeCounters]


class Scraper:
    """Scrapes all endpoints together; keeps every scrape for the over-time plots."""

    def __init__(self, endpoints: list[Endpoint], run_started: float) -> None:
        self.endpoints = endpoints
        self.run_started = run_started
        self.scrapes: list[Scrape] = []
        self.errors: list[str] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Scraper:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def scrape(self) -> Scrape | None:
        if not self.endpoints or self._session is None:
            return None
        results = await asyncio.gather(
            *(scrape_one(self._session, e) for e in self.endpoints), return_exceptions=True)
        nodes: dict[str, NodeCounters] = {}
        for endpoint, outcome in zip(self.endpoints, results, strict=True):
            if isinstance(outcome, BaseException):
                message = f"scrape of {endpoint.url}: {outcome}"
                if message not in self.errors:
                    self.errors.append(message)
                continue
            nodes[outcome.node] = outcome
        scrape = Scrape(time.monotonic() - self.run_started, nodes)
        self.scrapes.append(scrape)
        return scrape

    async def every(self, seconds: float, stop: asyncio.Event) -> None:
        """Scrape periodically until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except TimeoutError:
                await self.scrape()


def origin_requests(delta: dict[str, NodeCounters]) -> int:
    """Requests the CDN sent outside itself: upstream requests to anything that is not one of
    the scraped nodes (a shield's origins; an edge's upstream URL in a one-tier setup)."""
    names = set(delta)
    return sum(count for node in delta.values() for upstream, count in node.upstream.items()
               if upstream not in names)


def increase(now: int, then: int) -> int:
    """How much a counter grew from ``then`` to ``now``. A counter never goes down unless
    its process restarted and counted from zero again; then, as Prometheus' ``rate()`` and
    ``increase()`` do, the new value is taken as the increase since the restart (what the
    old process counted after ``then`` is lost, so this is a lower bound)."""
    return now - then if now >= then else now


def difference(
    before: Scrape | None, after: Scrape | None, scrapes: list[Scrape] | None = None
) -> dict[str, NodeCounters]:
    """Each node's counter increases from ``before`` to ``after``. With ``scrapes`` (every
    scrape of the run, holding both), the increases are summed scrape to scrape like
    ``rate()`` does over its samples, so a restart between two scrapes costs only what the
    node counted between its last scrape and its death. A node missing from ``before`` (it
    started during the run) counts from zero."""
    if after is None:
        return {}
    if before is None:
        return dict(after.nodes)
    series = [before, after]
    if scrapes:
        at = [i for i, s in enumerate(scrapes) if s is before or s is after]
        if len(at) == 2:
            series = scrapes[at[0]: at[1] + 1]
    out: dict[str, NodeCounters] = {}
    for name, node in after.nodes.items():
        previous = before.nodes.get(name) or NodeCounters(node=name, role=node.role)
        total = NodeCounters(node=name, role=node.role)
        for scrape in series[1:]:
            current = scrape.nodes.get(name)
            if current is None:  # not answering then (restarting?): bridge over it
                continue
            total = total.plus(current.minus(previous))
            previous = current
        out[name] = total
    return out
