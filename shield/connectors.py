"""Which upstream a node's config names, built: the one place that knows every connector.

A node fetches from exactly one of: an upstream URL (``HttpUpstream``), parents chosen by
rendezvous hashing (``ParentSet``), or origins in failover order (a shield's origin chain: fs,
s3, http). The request steps (``edge/node.py``) and the server (``edge/ops/server.py``) depend
on the ``Upstream`` contract only and take this function as a parameter
(``NodeServer(config, build_upstream)``, ``serve(config, build_upstream, ...)``); what puts a
node together — the ``reelcdn node`` command, the tests, the benchmarks — passes it. It lives
in ``shield/`` because it is the one composition that knows the shield's connectors, and the
shield sits above the edge: ``edge/`` never imports ``shield/``.
"""

from __future__ import annotations

from reelcdn.edge.config import NodeConfig
from reelcdn.edge.fetch.contract import Upstream
from reelcdn.edge.fetch.parents import ParentSet
from reelcdn.edge.fetch.upstream import HttpUpstream
from reelcdn.shield import build_origin_chain


def build_upstream(config: NodeConfig) -> Upstream:
    """The node's upstream from its config: an upstream URL, HRW parents, or origins
    (a shield)."""
    parents = config.parents
    origins = config.origins
    if origins:
        return build_origin_chain(
            origins,
            retry_after=config.parent_retry_after,
            failures=config.parent_failures,
            checks=config.health.checks,
            node=config.name,
        )
    if parents:
        return ParentSet(
            parents,
            timeouts=config.upstream_timeouts,
            max_connections=config.upstream_max_connections,
            failures_to_down=config.parent_failures,
            retry_after=config.parent_retry_after,
            fallback=config.fallback,
            health=config.health,
            node=config.name,
        )
    if not config.upstream:
        raise ValueError(f"node {config.name} has no upstream, parents or origins")
    return HttpUpstream(
        config.upstream,
        timeouts=config.upstream_timeouts,
        max_connections=config.upstream_max_connections,
    )
