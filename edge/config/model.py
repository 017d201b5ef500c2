"""The topology configuration's model: the validated, typed form of a reelcdn topology file.

Frozen dataclasses and their defaults, without any I/O or parsing: the contract the rest of the
node (store, node, protocol, shield) codes against. ``reelcdn.edge.config`` loads a TOML file into
these (and re-exports them, so ``from reelcdn.edge.config import NodeConfig`` keeps working); the
table of keys that fills them and documents them is in ``reelcdn.edge.config.keys``.
"""

from __future__ import annotations

import heapq
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from reelcdn.edge.fetch.contract import UpstreamTimeouts  # noqa: F401  (part of the model: NodeConfig fields)

__all__ = [
    "DEFAULT_FILL_HEADERS",
    "DEFAULT_IGNORE_QUERY_PARAMS",
    "DEFAULT_TTL_STATUSES",
    "HEALTH_PATH",
    "ORIGIN_HEALTH",
    "HealthConfig",
    "ORIGIN_TYPES",
    "ROLES",
    "Limits",
    "NodeConfig",
    "OriginConfig",
    "ParentRef",
    "SteeringConfig",
    "TOKEN_CARRIED_FORMATS",
    "TOKEN_QUERY_PARAMS",
    "TokenConfig",
    "token_query_params",
    "Topology",
    "TtlRule",
    "UpstreamTimeouts",
    "describe_upstream",
    "http_base",
    "reachable_host",
]


#: Response codes a TTL rule applies to when it does not list ``statuses``.
DEFAULT_TTL_STATUSES: frozenset[int] = frozenset({200, 206})

#: Query parameters left out of the cache key by default: player telemetry (CMCD) and the
#: signed-URL parameters of the token formats we accept, so that every viewer shares one copy.
DEFAULT_IGNORE_QUERY_PARAMS: frozenset[str] = frozenset(
    {"cmcd", "token", "hdnts", "expires", "signature", "policy", "key-pair-id", "md5", "st", "e"}
)

#: Client fields a shared fill forwards by default (``fill_headers``): only the one whose value
#: the node normalises. Fields a stored response Varies on are forwarded besides.
DEFAULT_FILL_HEADERS: frozenset[str] = frozenset({"accept-encoding"})

#: The roles a node can play in the tier topology.
ROLES: tuple[str, ...] = ("edge", "regional", "shield")

#: The kinds of origin store a shield can fetch from.
ORIGIN_TYPES: tuple[str, ...] = ("fs", "s3", "http")


@dataclass(frozen=True, slots=True)
class TtlRule:
    """An operator rule overriding origin freshness for matching responses.

    ``match`` is a glob on the request path (``fnmatch`` syntax, e.g. ``/v/*/seg_*.m4s`` or
    ``*.m3u8``). ``statuses`` limits the rule to those response codes (default
    :data:`DEFAULT_TTL_STATUSES`, i.e. 200 and 206; list 404 etc. explicitly for negative
    caching). ``force`` also stores responses marked no-store/private/Set-Cookie.
    """

    match: str
    ttl: float
    statuses: frozenset[int] = DEFAULT_TTL_STATUSES
    force: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    max_head_bytes: int = 32 * 1024          # request line + headers -> 431 beyond
    max_target_bytes: int = 8 * 1024         # request-target -> 414 beyond
    max_body_bytes: int = 64 * 1024 * 1024   # request body -> 413 beyond
    max_headers: int = 100                   # header count -> 431 beyond
    max_connections: int = 10_000            # beyond: 503 + close
    max_pipelined: int = 64                  # queued requests per connection before reading pauses
    header_timeout: float = 10.0             # seconds to receive a complete request head
    body_timeout: float = 30.0               # seconds to receive a whole body, from the head's end
    body_min_rate_bytes: int = 1024          # body bytes/s averaged from the head's end: 408 below
    body_rate_grace: float = 5.0             # ... once the body has taken longer than this
    idle_timeout: float = 60.0               # keep-alive idle seconds
    send_timeout: float = 60.0               # a response write making no progress this long: close
    shutdown_grace: float = 10.0             # seconds to finish in-flight responses on shutdown


#: The path every node answers on its data plane for a child's health check, without its cache
#: (``CacheNode.receive``): 200 while it serves, 503 while it drains.
HEALTH_PATH = "/__reelcdn/health"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Active checks of a node's upstreams (``[node.NAME.health]``, docs/failover.md): a GET of
    ``path`` on each parent and fallback node (and a shield's http origins) every ``interval``,
    failed after ``timeout``; an upstream is taken out after ``fall`` failed checks in a row and
    put back after ``rise`` passed ones (HAProxy's rise/fall)."""

    checks: bool = True
    path: str = HEALTH_PATH
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3


#: What an http origin's check GETs unless its ``[origin.NAME.health]`` says otherwise: the
#: origin is no reelcdn node, so any answer below 500 passes (docs/failover.md).
ORIGIN_HEALTH = HealthConfig(path="/")


@dataclass(frozen=True, slots=True)
class OriginConfig:
    """One ``[origin.NAME]``: where a shield finds the objects.

    Only the fields of the origin's ``type`` are set: ``root`` (fs, an absolute path), ``url``
    (http: ``scheme://host[:port][/prefix]`` without a trailing slash; request paths are
    appended), ``bucket``/``prefix``/``endpoint_url``/``region``/``profile`` (s3; ``prefix`` is
    empty or ends with "/"). S3 credentials are deliberately absent: boto3 finds them in the
    environment or its files, so no secret ever sits in a topology file.
    """

    name: str
    type: str                          # fs | s3 | http
    root: str | None = None
    url: str | None = None
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    health: HealthConfig = ORIGIN_HEALTH   # http: active checks ([origin.NAME.health])


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A parent node as a child reaches it: its name (the HRW identity, so every child hashes
    objects to the same parent) and its base URL, built from the parent's advertise address
    (:meth:`NodeConfig.advertised`)."""

    name: str
    url: str                           # e.g. "http://127.0.0.1:8200"


@dataclass(frozen=True, slots=True)
class SteeringConfig:
    """Content steering of the master playlists an edge renders (``[node.NAME.steering]`` or
    ``[defaults.steering]``, docs/manifests.md "Content steering").

    ``pathways`` are ``(PATHWAY-ID, base)`` in file order, the first being the default; ``base``
    is ``""`` (URIs relative to the master: the host that served it) or where that pathway's
    copies live (``https://cdn-b.example.com``, an absolute path), to which ``/v/{id}/...`` is
    appended. ``server_uri`` is where players fetch the steering manifest (``{video_id}`` is
    replaced); without it nothing is steered: the master carries no ``EXT-X-CONTENT-STEERING``
    and lists each variant once, as without pathways. ``initial`` is the PATHWAY-ID players
    start on (None: the first).

    The node answers the steering manifest itself at ``server_uri``'s path (edge/video/
    steering.py, docs/steering.md): players reload it every ``ttl`` seconds; each pathway's
    health is a GET of ``health_urls[id]``, else of its base + ``health_path`` (None and no
    URL: not checked, counted up), every ``health_interval``, failed after
    ``health_timeout``; a pathway is down after ``down_after`` failures in a row and up again
    after ``up_after`` successes.
    """

    pathways: tuple[tuple[str, str], ...]
    server_uri: str | None = None
    initial: str | None = None
    ttl: int = 10
    health_path: str | None = None
    health_urls: tuple[tuple[str, str], ...] = ()
    health_interval: float = 2.0
    health_timeout: float = 1.0
    down_after: int = 2
    up_after: int = 2


#: The query parameters each token format may be carried in (case as viewers send them).
TOKEN_QUERY_PARAMS: dict[str, tuple[str, ...]] = {
    "native": ("token",),
    "akamai": ("hdnts", "__token__"),
    "cloudfront": ("Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm"),
    "nginx_md5": ("md5", "expires"),
}
#: Formats whose query token grants more than one URL, so that a rendered playlist can copy
#: it to the URIs it lists (nginx_md5 hashes the URI itself; a canned CloudFront policy names
#: one URL, a custom one may be a wildcard: the viewer's token is copied and checked).
TOKEN_CARRIED_FORMATS = frozenset({"native", "akamai", "cloudfront"})


def token_query_params(tokens: TokenConfig) -> tuple[str, ...]:
    """The query parameters a node's tokens may come in."""
    params = TOKEN_QUERY_PARAMS[tokens.format]
    return params if tokens.query_param is None else (*params, tokens.query_param)


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """A node's ``[tokens]``: signed URLs checked before the cache (docs/tokens.md).

    ``keys``: key id → HMAC secret (bytes) or, for ``cloudfront``, a PEM public key.
    ``options`` are the format's own (``algorithm`` for akamai, ``expression`` for
    nginx_md5, ``scheme`` for cloudfront)."""

    format: str
    keys: dict[str, bytes]
    current_key: str | None = None
    protect: tuple[str, ...] = ("/v/*",)
    exempt: tuple[str, ...] = ("/v/*/poster.jpg",)
    sources: tuple[str, ...] = ("query", "cookie")
    query_param: str | None = None
    cookie: str | None = None
    header: str | None = None
    clock_skew: float = 30.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node. It fetches from exactly one of: ``upstream`` (a URL, e.g. a parent outside the
    file), ``parents`` (nodes of the file, chosen by HRW) or ``origins`` (a shield, in failover
    order); ``upstream`` is ``None`` for the other two."""

    name: str
    listen_host: str
    listen_port: int
    admin_host: str | None
    admin_port: int | None
    upstream: str | None               # base URL, e.g. "http://127.0.0.1:8000"; None: see above
    role: str = "edge"                 # edge | regional | shield
    cache_memory: int = 256 * 1024 * 1024
    max_object_bytes: int = 64 * 1024 * 1024
    # Stored bodies at least this large live in memory files and leave with sendfile(2)
    # (edge/cache/bodyfile.py); 0 keeps every body as bytes.
    sendfile_min_bytes: int = 64 * 1024
    # Disk tier (edge/cache/disktier.py): memory's victims (bodies >= sendfile_min_bytes) kept in
    # files under cache_dir, at most cache_disk bytes of them; 0: no disk tier. Nothing
    # persists across restarts. cache_dir is absolute (resolved against the file's directory).
    cache_disk: int = 0
    cache_dir: str | None = None
    # Slices (edge/slices.py, docs/slices.md): GET objects whose path matches slice_paths are
    # fetched and stored in aligned slices of slice_size bytes (Range requests upstream), each
    # its own entry; 0: off, every object fetched and stored whole.
    slice_size: int = 0
    slice_paths: tuple[str, ...] = ("*.mp4",)
    ttl_rules: tuple[TtlRule, ...] = ()
    ignore_query_params: frozenset[str] = DEFAULT_IGNORE_QUERY_PARAMS
    ignore_query_prefixes: tuple[str, ...] = ()
    host_in_key: bool = False
    # Client request fields a shared fill forwards upstream (lowercase names). Everything else a
    # client sends stays with that client: a fill serves every viewer, so an unkeyed field
    # (X-Forwarded-Host, Cookie, ...) reflected by the origin would poison the shared copy.
    # Fields a stored response Varies on are forwarded as well; Accept-Encoding normalised.
    fill_headers: frozenset[str] = DEFAULT_FILL_HEADERS
    honor_client_no_cache: bool = False
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86_400.0
    # Failing upstreams (docs/failover.md#a-failing-origin): the stale-if-error allowance of
    # objects whose origin sent none (0: only the origin's), the per-object back-off between
    # revalidations of a failing object (base × 2^n, jittered, capped), and how long an
    # upstream 5xx is cached when nothing else stores it (0: not cached).
    stale_if_error_max: float = 3600.0
    failure_backoff_base: float = 1.0
    failure_backoff_max: float = 30.0
    negative_ttl_5xx: float = 0.0
    # hosts accepted in absolute-form targets (besides the listen host)
    server_names: tuple[str, ...] = ()
    admin_token: str | None = None
    limits: Limits = field(default_factory=Limits)
    upstream_timeouts: UpstreamTimeouts = field(default_factory=UpstreamTimeouts)
    upstream_max_connections: int = 256
    source_file: str = "<embedded>"
    parents: tuple[ParentRef, ...] = ()
    origins: tuple[OriginConfig, ...] = ()
    parent_retry_after: float = 10.0   # seconds a failed parent (or origin) is skipped
    parent_failures: int = 3           # consecutive errors/5xx that mark a parent down
    # Nodes tried, in order, when no parent answered (docs/failover.md); active checks of
    # parents and fallbacks.
    fallback: tuple[ParentRef, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    workers: int = 1                   # processes sharing the listener (SO_REUSEPORT)
    # Edge features (edge/video/features.py). Query parameters copied to every URI of a rendered
    # playlist (tokens); they never enter a cache key (the loader adds them to the ignored).
    carried_query_params: tuple[str, ...] = ()
    render_playlists: bool | None = None   # None: only role = "edge" renders (from meta.json)
    playlist_cache_entries: int = 1024     # rendered templates kept per node (LRU)
    prefetch_segments: int = 2             # init + this many segments after a media playlist
    prefetch_cmcd: bool = True             # prefetch CMCD ``nor``/``nrr`` objects
    prefetch_queue: int = 256              # queued prefetches beyond this are dropped
    prefetch_concurrency: int = 16         # prefetch fills in flight at once
    # Bytes prefetches may fetch (edge/video/prefetch_bounds.py): per client (IPv4 address or
    # IPv6 /64; a bucket of 4 s of this rate) and for the whole node (a bucket of 1 s).
    prefetch_client_bytes_per_second: int = 8 * 1024 * 1024
    prefetch_bytes_per_second: int = 256 * 1024 * 1024
    cmsd: bool = True                      # add CMSD-Dynamic (CTA-5006) naming this node
    # CORS on the data plane (edge/http/cors.py, docs/cors.md): "*" (any page), a list of
    # origins ("https://www.example.com", echoed with Vary: Origin), or () for none.
    cors_origins: tuple[str, ...] = ("*",)
    steering: SteeringConfig | None = None  # content steering of rendered master playlists
    tokens: TokenConfig | None = None  # signed URLs checked before the cache
    # View counts (edge/video/plays.py, docs/plays.md): an edge counts plays and completions
    # and posts them in batches to this URL with this bearer token; None: not counted.
    plays_url: str | None = None
    plays_token: str | None = None
    plays_flush_interval: float = 5.0      # a batch every this many seconds
    plays_max_pending: int = 4 * 1024 * 1024  # bytes of unsent batches kept (oldest dropped)
    # Access log (edge/http/accesslog.py, docs/operations.md#access-logs): None (off), "stdout"
    # or an absolute file path; one line per response, "json" or nginx "combined"; a share of
    # responses logged (sampling); lines queued for the writer thread beyond which they drop.
    access_log: str | None = None
    access_log_format: str = "json"
    access_log_sample: float = 1.0
    access_log_buffer: int = 16384
    # Where other nodes and tools reach this node (another host's view of it), as written in
    # the file; None: derived from listen / admin (see advertised(), admin_advertised()).
    advertise: tuple[str, int] | None = None
    admin_advertise: tuple[str, int] | None = None

    def advertised(self) -> tuple[str, int]:
        """The address other nodes use for this node's data plane: ``advertise``, else the
        listen address with a wildcard host turned into the loopback of its family."""
        if self.advertise is not None:
            return self.advertise
        return reachable_host(self.listen_host), self.listen_port

    def admin_advertised(self) -> tuple[str, int] | None:
        """The address other hosts' tools (the origin API's purge, the load harness's scrape)
        use for the admin API: ``admin_advertise``; else the admin address, a wildcard host
        taken as ``advertise``'s host (when of its family: the admin listens there too) or
        else as loopback; None without an admin API."""
        if self.admin_host is None or self.admin_port is None:
            return None
        if self.admin_advertise is not None:
            return self.admin_advertise
        host = self.admin_host
        if host in ("0.0.0.0", "::") and self.advertise is not None:
            try:
                version = ipaddress.ip_address(self.advertise[0]).version
            except ValueError:
                version = 0  # a host name: the operator's to resolve
            if version in (0, 4 if host == "0.0.0.0" else 6):
                return self.advertise[0], self.admin_port
        return reachable_host(host), self.admin_port


def reachable_host(host: str) -> str:
    """A host to connect to for a listener on ``host``: a wildcard (listen everywhere) becomes
    the loopback of the same family, the one address sure to reach it from its own host."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def http_base(address: tuple[str, int]) -> str:
    """``http://host:port`` for an address (IPv6 in brackets)."""
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


#: Start order of the roles: the tiers closest to the origin first.
_ROLE_RANK: dict[str, int] = {"shield": 0, "regional": 1, "edge": 2}


@dataclass(frozen=True)
class Topology:
    """A whole validated file: its origins and nodes, both in file order."""

    file: str
    origins: dict[str, OriginConfig]
    nodes: dict[str, NodeConfig]
    #: The tables of the origin services' sections (``[api]``, ``[queue]``, ``[catalog]``,
    #: ``[transcode]``), as written: ``reelcdn.origin.config`` validates them, since the
    #: services sit above the nodes and the node loader must not know their keys.
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Where the file's relative paths resolve (the file's directory, or the data directory
    #: for the embedded default).
    base_dir: str = "."

    def roles(self) -> dict[str, str]:
        """Node name → role, in file order."""
        return {name: node.role for name, node in self.nodes.items()}

    def edges(self) -> list[str]:
        """Names of the edge nodes (the ones players connect to), in file order."""
        return [name for name, node in self.nodes.items() if node.role == "edge"]

    def order_for_start(self) -> list[str]:
        """Node names so that every parent comes before its children.

        Children probe their parents as soon as they start, so a supervisor starting nodes in
        this order never reports a parent as down that is merely late. Among nodes free to
        start, shields go first, then regionals, then edges, each in file order, so the order
        is stable and reads like the tiers.
        """
        index = {name: i for i, name in enumerate(self.nodes)}
        waiting = {
            name: {p.name for p in (*node.parents, *node.fallback) if p.name in self.nodes}
            for name, node in self.nodes.items()
        }
        children: dict[str, list[str]] = {name: [] for name in self.nodes}
        for name, parents in waiting.items():
            for parent in parents:
                children[parent].append(name)

        def rank(name: str) -> tuple[int, int, str]:
            return (_ROLE_RANK.get(self.nodes[name].role, len(_ROLE_RANK)), index[name], name)

        ready = [rank(name) for name, parents in waiting.items() if not parents]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            name = heapq.heappop(ready)[2]
            order.append(name)
            for child in children[name]:
                waiting[child].discard(name)
                if not waiting[child]:
                    heapq.heappush(ready, rank(child))
        # The loader refuses cycles; should a hand-built Topology have one, keep its nodes anyway.
        order.extend(sorted(set(self.nodes) - set(order), key=rank))
        return order


def describe_upstream(node: NodeConfig) -> str:
    """Where a node fetches from, for logs and ``reelcdn validate``."""
    if node.origins:
        return "origins " + ", ".join(f"{o.name} ({o.type})" for o in node.origins)
    if node.parents:
        fallback = "; fallback " + ", ".join(p.name for p in node.fallback) if node.fallback else ""
        return "parents " + ", ".join(p.name for p in node.parents) + fallback
    return f"upstream {node.upstream}"
