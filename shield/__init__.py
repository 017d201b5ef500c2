"""reelcdn.shield: the origin side of the shield tier.

The shield is a cache node like every other tier (``reelcdn.edge``); what makes it a shield is
its upstream, built here from the ``[[node.NAME.origins]]`` of the config: origin connectors
behind the same ``Upstream`` interface as an HTTP parent, so the node's coalescing, caching and
stale-on-error work unchanged in front of them.

- ``fs``: files under a root directory (:class:`~reelcdn.shield.fs.FsOrigin`);
- ``s3``: keys under a bucket prefix, boto3 in threads (:class:`~reelcdn.shield.s3.S3Origin`);
- ``http``: another HTTP server, an ``HttpUpstream`` on the origin's URL (a path in the URL
  prefixes every target: ``http://store:9000/media`` + ``/v/a/x.m4s``);

tried in order with failover by :class:`~reelcdn.shield.failover.OriginChain`.

Configs are duck-typed (any object with ``name, type, root, url, bucket, prefix, endpoint_url,
region, profile, timeouts``) so this module does not depend on how the config is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from reelcdn.edge.fetch.contract import Upstream, UpstreamTimeouts
from reelcdn.edge.fetch.upstream import HttpUpstream

from .failover import OriginChain
from .fs import FsOrigin
from .paths import OriginRefused, resolve_key
from .s3 import S3Origin

__all__ = [
    "FsOrigin",
    "OriginChain",
    "OriginRefused",
    "S3Origin",
    "build_origin",
    "build_origin_chain",
    "resolve_key",
]

ORIGIN_TYPES = ("fs", "s3", "http")


def build_origin(config: Any) -> Upstream:
    """One origin connector from an ``OriginConfig``-like object; ``ValueError`` if the
    fields its type needs are missing (the config loader should have said so first)."""
    kind = getattr(config, "type", None)
    name = getattr(config, "name", None) or None
    timeouts = getattr(config, "timeouts", None) or UpstreamTimeouts()
    if kind == "fs":
        root = getattr(config, "root", None)
        if not root:
            raise ValueError(f"origin {name}: type fs needs root")
        return FsOrigin(root, name=name)
    if kind == "s3":
        bucket = getattr(config, "bucket", None)
        if not bucket:
            raise ValueError(f"origin {name}: type s3 needs bucket")
        return S3Origin(
            bucket,
            prefix=getattr(config, "prefix", None) or "",
            endpoint_url=getattr(config, "endpoint_url", None) or None,
            region=getattr(config, "region", None) or None,
            profile=getattr(config, "profile", None) or None,
            timeouts=timeouts,
            max_connections=getattr(config, "max_connections", None) or 32,
            attempts=getattr(config, "attempts", None) or 2,
            name=name,
        )
    if kind == "http":
        url = getattr(config, "url", None)
        if not url:
            raise ValueError(f"origin {name}: type http needs url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"origin {name}: url must be http(s)://host[:port][/prefix]: {url}")
        if parts.query or parts.fragment:
            raise ValueError(f"origin {name}: url must not have a query or fragment: {url}")
        # HttpUpstream appends the target to the URL: a path in it is the prefix.
        return HttpUpstream(
            url,
            timeouts=timeouts,
            max_connections=getattr(config, "max_connections", None) or 256,
            name=name,
        )
    raise ValueError(f"origin {name}: type must be one of {', '.join(ORIGIN_TYPES)}, not {kind!r}")


def build_origin_chain(
    configs: Iterable[Any],
    retry_after: float = 10.0,
    failures: int = 3,
    *,
    checks: bool = True,
    node: str = "",
) -> OriginChain:
    """The shield's upstream: every configured origin, in order, with failover. ``checks``
    (the node's ``health.checks``) turns on the active checks of its http origins, each with
    its own ``health`` settings; fs and s3 origins have passive health only."""
    configs = list(configs)
    checked = {
        config.name: config.health
        for config in configs
        if checks and getattr(config, "type", None) == "http"
        and getattr(config, "health", None) is not None
    }
    return OriginChain(
        [build_origin(config) for config in configs], retry_after=retry_after,
        failures=failures, checks=checked, node=node,
    )
