"""Topology configuration: the validated, typed form of a reelcdn TOML file.

Operators describe a whole tier topology in one plain TOML file (DESIGN.md §3 "Operations"):
origins, and nodes that fetch from other nodes of the file (``parents``), from origins (a
shield), or from an ``upstream`` URL outside the file::

    [defaults]                      # optional: applies to every node unless the node sets the key
    cache_memory = "256MiB"

    [origin.main]
    type = "fs"                     # fs | s3 | http
    root = "./data/origin"          # relative to this file's directory

    [node.shield-1]
    role = "shield"
    listen = "127.0.0.1:8100"
    origins = ["main"]              # in order: failover goes down the list

    [node.edge-a]
    listen = "127.0.0.1:8080"
    parents = ["shield-1"]          # or: upstream = "http://127.0.0.1:8000"

    [[node.edge-a.ttl]]
    match = "*.m4s"
    ttl = "1d"

The loader follows the approach of shaka-streamer's validated config: the file is checked
completely before a node starts, and every problem is a :class:`ConfigError` naming the file, the
dotted key (``node.edge-a.cache_memory``) and what is wrong in words an operator understands. A
misspelt key is an error, never silently ignored, because an ignored ``cache_memroy`` would run a
node with a default the operator believes they changed. Cross-node mistakes (an unknown parent, a
cycle, an edge used as a parent, two nodes on one port) are found here too, before any node binds,
rather than as a confusing failure at run time.

The dataclasses below are the contract the rest of the node codes against; the loader only builds
them.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import heapq
import importlib.resources
import ipaddress
import json
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

__all__ = [
    "DEFAULT_IGNORE_QUERY_PARAMS",
    "DEFAULT_TTL_STATUSES",
    "ROLES",
    "ORIGIN_TYPES",
    "ConfigError",
    "Limits",
    "NodeConfig",
    "OriginConfig",
    "ParentRef",
    "SteeringConfig",
    "Topology",
    "TtlRule",
    "UpstreamTimeouts",
    "default_topology_text",
    "load_config_file",
    "load_node_config",
    "load_topology",
    "node_config_from_dict",
    "parse_address",
    "parse_duration",
    "parse_size",
    "topology_from_text",
]


class ConfigError(ValueError):
    """A configuration problem, with the file and the dotted key it concerns.

    ``key`` is empty for problems with the file as a whole (unreadable, TOML syntax, no nodes);
    the message then reads ``file: message`` instead of ``file: key: message``.
    """

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


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


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    connect: float = 3.0
    first_byte: float = 10.0
    idle: float = 10.0       # between body chunks


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


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A parent node as a child reaches it: its name (the HRW identity, so every child hashes
    objects to the same parent) and its base URL, built from the parent's listen address."""

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
    """

    pathways: tuple[tuple[str, str], ...]
    server_uri: str | None = None
    initial: str | None = None


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
    # (edge/bodyfile.py); 0 keeps every body as bytes.
    sendfile_min_bytes: int = 64 * 1024
    # Disk tier (edge/disktier.py): memory's victims (bodies >= sendfile_min_bytes) kept in
    # files under cache_dir, at most cache_disk bytes of them; 0: no disk tier. Nothing
    # persists across restarts. cache_dir is absolute (resolved against the file's directory).
    cache_disk: int = 0
    cache_dir: str | None = None
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
    workers: int = 1                   # processes sharing the listener (SO_REUSEPORT)
    # Edge features (edge/features.py). Query parameters copied to every URI of a rendered
    # playlist (tokens); they never enter a cache key (the loader adds them to the ignored).
    carried_query_params: tuple[str, ...] = ()
    render_playlists: bool | None = None   # None: only role = "edge" renders (from meta.json)
    playlist_cache_entries: int = 1024     # rendered templates kept per node (LRU)
    prefetch_segments: int = 2             # init + this many segments after a media playlist
    prefetch_cmcd: bool = True             # prefetch CMCD ``nor``/``nrr`` objects
    prefetch_queue: int = 256              # queued prefetches beyond this are dropped
    prefetch_concurrency: int = 16         # prefetch fills in flight at once
    cmsd: bool = True                      # add CMSD-Dynamic (CTA-5006) naming this node
    steering: SteeringConfig | None = None  # content steering of rendered master playlists


#: Start order of the roles: the tiers closest to the origin first.
_ROLE_RANK: dict[str, int] = {"shield": 0, "regional": 1, "edge": 2}


@dataclass(frozen=True)
class Topology:
    """A whole validated file: its origins and nodes, both in file order."""

    file: str
    origins: dict[str, OriginConfig]
    nodes: dict[str, NodeConfig]

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
            name: {p.name for p in node.parents if p.name in self.nodes}
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


# --------------------------------------------------------------------------------------------
# Messages: say what was found in TOML terms, since that is what the operator wrote.


def _quote(text: str, limit: int = 60) -> str:
    """Quote a value the way it would appear in TOML, shortened so one bad value can't flood."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _describe(value: Any) -> str:
    """Name a TOML value's type and show it, e.g. ``string "yes"`` or ``integer 5``."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"date/time {value.isoformat()}"
    return type(value).__name__


def _type_error(file: str, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(file, key, f"expected {expected}, got {_describe(value)}")


def _unknown_key(file: str, prefix: str, key: str, allowed: Iterable[str]) -> ConfigError:
    """Reject a key nobody reads, suggesting the closest allowed one (it is usually a typo)."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"?' if close else "allowed keys are " + ", ".join(allowed)
    return ConfigError(file, f"{prefix}.{key}", f"unknown key {_quote(key)}: {hint}")


def _check_keys(
    file: str, prefix: str, table: Mapping[str, Any], allowed: Iterable[str]
) -> None:
    allowed = frozenset(allowed)
    for key in table:
        if key not in allowed:
            raise _unknown_key(file, prefix, key, allowed)


# --------------------------------------------------------------------------------------------
# Value parsers. Public ones are used by other modules (e.g. admin API arguments) too.

_SIZE_RE = re.compile(r"(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)")
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_HELP = "use a number with B, KiB, MiB, GiB, KB, MB, GB"


def parse_size(value: int | str, *, file: str, key: str) -> int:
    """Parse a byte count: an integer, or a string such as ``"256MiB"``, ``"1.5GiB"``, ``"64 MB"``.

    Both decimal (KB = 1000) and binary (KiB = 1024) units are accepted, case-insensitively,
    because operators copy sizes from both kinds of documentation; a bare ``M`` or ``G`` is
    refused since it is ambiguous between the two. Fractions of a unit round down to whole bytes.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _type_error(file, key, 'a size (integer bytes or a string like "256MiB")', value)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(file, key, f"size must not be negative, got {value}")
        return value
    text = value.strip().lower()
    if text.startswith("-"):
        raise ConfigError(file, key, f"size must not be negative, got {_quote(value)}")
    match = _SIZE_RE.fullmatch(text)
    if match is None or match["unit"] not in _SIZE_UNITS:
        hint = ""
        if match is not None and match["unit"] in ("k", "m", "g"):
            u = match["unit"].upper()
            hint = f' ("{match["num"]}{u}" is ambiguous: write {u}iB or {u}B)'
        raise ConfigError(file, key, f"bad size {_quote(value)}: {_SIZE_HELP}{hint}")
    amount = Fraction(match["num"]) * _SIZE_UNITS[match["unit"]]
    if amount.denominator != 1 and match["unit"] in ("", "b"):
        raise ConfigError(file, key, f"bad size {_quote(value)}: not a whole number of bytes")
    return math.floor(amount)


_DURATION_PART = r"(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|s|m|h|d)"
_DURATION_RE = re.compile(rf"(?:{_DURATION_PART}\s*)+")
_DURATION_PARTS = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_HELP = (
    'use a number of seconds or a number with ms, s, m, h, d (e.g. "500ms", "2s", "1h30m")'
)


def parse_duration(value: int | float | str, *, file: str, key: str) -> float:
    """Parse a duration in seconds: a number, or ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"``,
    ``"1d"`` (units may be combined, ``"1h30m"``).

    Units exist because TTLs span milliseconds to days and a bare ``86400`` is easy to get wrong
    by a factor of ten; infinity and NaN (valid TOML floats) are refused since no timer can use
    them.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _type_error(file, key, 'a duration (seconds or a string like "2s")', value)
    if isinstance(value, int | float):
        seconds = float(value)
        if math.isnan(seconds) or math.isinf(seconds):
            raise ConfigError(file, key, f"bad duration {value}: must be a finite number")
        if seconds < 0:
            raise ConfigError(file, key, f"duration must not be negative, got {value}")
        return seconds
    text = value.strip().lower()
    if text.startswith("-"):
        raise ConfigError(file, key, f"duration must not be negative, got {_quote(value)}")
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    if not _DURATION_RE.fullmatch(text):
        raise ConfigError(file, key, f"bad duration {_quote(value)}: {_DURATION_HELP}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PARTS.findall(text))


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?", re.IGNORECASE)
_ADDRESS_HELP = 'use host:port, e.g. "127.0.0.1:8080" or "[::1]:8080"'


def _is_hostname(host: str) -> bool:
    return _HOSTNAME_RE.fullmatch(host) is not None


def parse_address(value: str, *, file: str, key: str) -> tuple[str, int]:
    """Parse a listen address ``host:port`` (IPv6 in brackets) into ``(host, port)``.

    The host is required (``0.0.0.0`` to listen everywhere) so that exposing a node on every
    interface is a decision written in the file, not an accident of an omitted host. Port 0 asks
    the OS for a free port (tests use it). The host is returned without brackets.
    """
    if not isinstance(value, str):
        raise _type_error(file, key, 'an address string like "127.0.0.1:8080"', value)
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(file, key, f"bad address {_quote(value)}: missing port; {_ADDRESS_HELP}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(file, key, f"bad address {_quote(value)}: unclosed [")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                file, key, f"bad address {_quote(value)}: {_quote(host)} is not an IPv6 address"
            ) from None
    elif ":" in host:
        raise ConfigError(
            file, key, f"bad address {_quote(value)}: put an IPv6 address in brackets, e.g. "
            f'"[{host}]:{port_text}"'
        )
    elif not host:
        raise ConfigError(
            file, key, f'bad address {_quote(value)}: missing host (use "0.0.0.0:{port_text}" '
            "to listen on every interface)"
        )
    elif not _is_hostname(host):
        raise ConfigError(
            file, key, f"bad address {_quote(value)}: {_quote(host)} is not a host name or IP"
        )
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            file, key, f"bad port {_quote(port_text)} in {_quote(value)}: use a number 0..65535 "
            "(0 picks a free port)"
        )
    return host, int(port_text)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_bool(value: Any, file: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise _type_error(file, key, "a boolean (true or false)", value)
    return value


def _parse_int(value: Any, file: str, key: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(file, key, "an integer", value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(file, key, f"must be {bound}, got {value}")
    return value


def _parse_fraction(value: Any, file: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(file, key, "a number between 0 and 1", value)
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ConfigError(file, key, f"must be between 0 and 1, got {value}")
    return float(value)


def _parse_str_list(
    value: Any, file: str, key: str, check: Callable[[str, str], str]
) -> tuple[str, ...]:
    """Parse an array of strings, passing each through ``check(item, item_key)``; de-duplicate
    keeping order so the stored tuple is what the operator meant, once."""
    if not isinstance(value, list):
        raise _type_error(file, key, "an array of strings", value)
    out: dict[str, None] = {}
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        if not isinstance(item, str):
            raise _type_error(file, item_key, "a string", item)
        out[check(item, item_key)] = None
    return tuple(out)


def _query_name_checker(file: str, what: str) -> Callable[[str, str], str]:
    """Query parameter names are compared case-insensitively, so they are stored lowercased."""

    def check(item: str, item_key: str) -> str:
        if not item or any(c.isspace() or c in "&=?#" for c in item):
            raise ConfigError(
                file, item_key, f"bad {what} {_quote(item)}: must be non-empty, without spaces "
                "or any of & = ? #"
            )
        return item.lower()

    return check


#: Query parameters the playlist renderer reads as options; a carried (copied) parameter with
#: one of these names would be both at once.
_PLAYLIST_OPTIONS = ("max_height", "max_bandwidth", "codecs", "start")


def _parse_carried(value: Any, file: str, key: str) -> tuple[str, ...]:
    """``carried_query_params``: names copied from a playlist request to every URI inside the
    rendered playlist (tokens). Lowercase, like every query name the node compares, and never an
    option name (``start`` cannot be both a filter and a token)."""
    names = _parse_str_list(value, file, key, _query_name_checker(file, "parameter"))
    for i, name in enumerate(names):
        if name in _PLAYLIST_OPTIONS or name == "cmcd":
            raise ConfigError(
                file, f"{key}[{i}]", f"{_quote(name)} cannot be carried: it is read by the node "
                "itself (" + ", ".join(_PLAYLIST_OPTIONS) + ", cmcd)"
            )
    return tuple(dict.fromkeys(names))


_FIELD_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Never forwarded as client fields whatever the operator lists: framing and hop-by-hop fields
# are the connection's, Host and the forwarding fields the node sets itself.
_UNFORWARDABLE_FIELDS = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length", "host", "via", "x-forwarded-for", "expect",
})


def _field_name_checker(file: str) -> Callable[[str, str], str]:
    def check(item: str, item_key: str) -> str:
        if not _FIELD_NAME_RE.fullmatch(item):
            raise ConfigError(file, item_key, f"{_quote(item)} is not an HTTP field name")
        if item.lower() in _UNFORWARDABLE_FIELDS:
            raise ConfigError(
                file, item_key, f"{_quote(item)} is set by the node or the connection and "
                "cannot be forwarded from a client"
            )
        return item

    return check


def _server_name_checker(file: str) -> Callable[[str, str], str]:
    def check(item: str, item_key: str) -> str:
        host = item.strip().lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        if ":" in host:
            raise ConfigError(
                file, item_key, f"bad server name {_quote(item)}: list host names without a port"
            )
        if not _is_hostname(host):
            raise ConfigError(file, item_key, f"bad server name {_quote(item)}: not a host name")
        return host

    return check


def _parse_upstream(value: Any, file: str, key: str) -> str:
    """Normalise the upstream to ``http://host:port``: the node appends request paths to it, so a
    path prefix, query or credentials here would silently change every upstream request."""
    if not isinstance(value, str):
        raise _type_error(file, key, 'a URL string like "http://127.0.0.1:8000"', value)
    example = "e.g. \"http://127.0.0.1:8000\""
    if "://" not in value:
        raise ConfigError(
            file, key, f"bad upstream URL {_quote(value)}: missing http://, write "
            f"{_quote('http://' + value.strip())}"
        )
    try:
        url = urllib.parse.urlsplit(value.strip())
        port = url.port
    except ValueError as exc:
        raise ConfigError(file, key, f"bad upstream URL {_quote(value)}: {exc}") from None
    if url.scheme.lower() != "http":
        scheme = url.scheme or "no scheme"
        raise ConfigError(
            file, key, f"bad upstream URL {_quote(value)}: {scheme} is not supported, use an "
            f"http:// URL ({example})"
        )
    if not url.hostname:
        raise ConfigError(file, key, f"bad upstream URL {_quote(value)}: missing host ({example})")
    if url.username is not None or url.password is not None:
        raise ConfigError(
            file, key, f"bad upstream URL {_quote(value)}: credentials are not allowed in the URL"
        )
    if port is None:
        raise ConfigError(
            file, key, f"bad upstream URL {_quote(value)}: missing port (write "
            f'"http://{url.hostname}:80" for the default)'
        )
    if url.path not in ("", "/"):
        raise ConfigError(
            file, key, f"bad upstream URL {_quote(value)}: path {_quote(url.path)} is not "
            "allowed; request paths are forwarded as they are, give only http://host:port"
        )
    if url.query or url.fragment or value.strip().endswith(("?", "#")):
        raise ConfigError(
            file, key, f"bad upstream URL {_quote(value)}: no query or fragment allowed"
        )
    host = url.hostname
    if ":" in host:
        return f"http://[{host}]:{port}"
    if not _is_hostname(host):
        raise ConfigError(file, key, f"bad upstream URL {_quote(value)}: bad host {_quote(host)}")
    return f"http://{host}:{port}"


def _parse_origin_url(value: Any, file: str, key: str, *, what: str, allow_path: bool) -> str:
    """Normalise an origin's URL to ``scheme://host[:port][/path]`` (no trailing slash).

    Unlike a node's upstream, an origin may be https (it is often a storage service across the
    internet) and may keep the default port; an http origin may have a path prefix, to which
    request paths are appended. Credentials, queries and fragments are refused: they would be
    sent with, or silently change, every origin request.
    """
    if not isinstance(value, str):
        raise _type_error(file, key, 'a URL string like "http://127.0.0.1:8000"', value)
    text = value.strip()
    example = 'e.g. "http://127.0.0.1:8000"'
    bad = f"bad {what} {_quote(value)}"
    if "://" not in text:
        raise ConfigError(
            file, key, f"{bad}: missing http://, write {_quote('http://' + text)}"
        )
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ConfigError(file, key, f"{bad}: {exc}") from None
    scheme = url.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(
            file, key, f"{bad}: {url.scheme or 'no scheme'} is not supported, use http:// or "
            f"https:// ({example})"
        )
    if not url.hostname:
        raise ConfigError(file, key, f"{bad}: missing host ({example})")
    if url.username is not None or url.password is not None:
        raise ConfigError(file, key, f"{bad}: credentials are not allowed in the URL")
    if url.query or url.fragment or text.endswith(("?", "#")):
        raise ConfigError(file, key, f"{bad}: no query or fragment allowed")
    path = url.path.rstrip("/")
    if path and not allow_path:
        raise ConfigError(
            file, key, f"{bad}: path {_quote(url.path)} is not allowed, give only "
            f"{scheme}://host[:port]"
        )
    host = url.hostname
    if ":" in host:
        host = f"[{host}]"
    elif not _is_hostname(host):
        raise ConfigError(file, key, f"{bad}: bad host {_quote(host)}")
    netloc = host if port is None else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}"


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_token(token: str, file: str, key: str) -> str:
    if not token:
        raise ConfigError(file, key, "admin token must not be empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(
            file, key, "admin token must not contain spaces or control characters (it is sent "
            "in an Authorization: Bearer header)"
        )
    return token


# --------------------------------------------------------------------------------------------
# Node tables. Each layer (``[defaults]``, then ``[node.NAME]``) is parsed on its own, so an
# error names the key where the operator wrote the value; the parsed layers are then merged.
# Names in ``parents`` / ``origins`` are resolved later, once every table of the file is known.

_NODE_KEYS: tuple[str, ...] = (
    "role",
    "listen",
    "admin",
    "upstream",
    "parents",
    "origins",
    "parent_retry_after",
    "parent_failures",
    "cache_memory",
    "max_object_size",
    "sendfile_min_size",
    "cache_disk",
    "cache_dir",
    "admin_token",
    "admin_token_env",
    "host_in_key",
    "fill_headers",
    "honor_client_no_cache",
    "heuristic_fraction",
    "heuristic_max",
    "ignore_query_params",
    "extra_ignore_query_params",
    "ignore_query_prefixes",
    "server_names",
    "upstream_max_connections",
    "workers",
    "limits",
    "upstream_timeouts",
    "ttl",
    "carried_query_params",
    "render_playlists",
    "playlist_cache_entries",
    "prefetch_segments",
    "prefetch_cmcd",
    "prefetch_queue",
    "prefetch_concurrency",
    "cmsd",
    "steering",
)
# Where a node fetches from: exactly one of these, and a node's own choice replaces the default's
# as a whole (a [defaults] upstream must not combine with a node's parents).
_SOURCE_KEYS: tuple[str, ...] = ("upstream", "parents", "origins")
_TABLE_KEYS = ("limits", "upstream_timeouts", "steering")
_TTL_KEYS = ("match", "ttl", "statuses", "force")
_NODE_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
# Byte limits of zero would refuse every request; they must be positive.
_POSITIVE_SIZES = frozenset({"max_head_bytes", "max_target_bytes"})

# A parsed value together with the dotted key it came from.
_Sourced = tuple[Any, str]


def _parse_limit(name: str, type_name: str, value: Any, file: str, key: str) -> Any:
    """Parse one ``Limits`` field, by naming convention: ``*_bytes`` are sizes, float fields are
    durations, int fields are counts. New ``Limits`` fields get a parser without code here."""
    if name.endswith("_bytes"):
        size = parse_size(value, file=file, key=key)
        if name in _POSITIVE_SIZES and size == 0:
            raise ConfigError(file, key, "must be larger than 0")
        return size
    if type_name == "float":
        seconds = parse_duration(value, file=file, key=key)
        if name.endswith("_timeout") and seconds == 0:
            raise ConfigError(file, key, "timeout must be larger than 0")
        return seconds
    return _parse_int(value, file, key, minimum=1)


def _parse_limits(value: Any, file: str, key: str) -> dict[str, _Sourced]:
    if not isinstance(value, dict):
        raise _type_error(file, key, f"a table ([{key}])", value)
    fields = {f.name: str(f.type) for f in dataclasses.fields(Limits)}
    _check_keys(file, key, value, fields)
    return {
        name: (_parse_limit(name, fields[name], raw, file, f"{key}.{name}"), f"{key}.{name}")
        for name, raw in value.items()
    }


def _parse_upstream_timeouts(value: Any, file: str, key: str) -> dict[str, _Sourced]:
    if not isinstance(value, dict):
        raise _type_error(file, key, f"a table ([{key}])", value)
    names = [f.name for f in dataclasses.fields(UpstreamTimeouts)]
    _check_keys(file, key, value, names)
    out: dict[str, _Sourced] = {}
    for name, raw in value.items():
        sub = f"{key}.{name}"
        seconds = parse_duration(raw, file=file, key=sub)
        if seconds == 0:
            raise ConfigError(file, sub, "timeout must be larger than 0")
        out[name] = (seconds, sub)
    return out


# Content steering (rfc8216bis §4.4.6.6). The same rules as reelcdn.manifests' Steering and
# Pathway, checked here so that a bad value is a ConfigError naming its key before a node starts.
_STEERING_KEYS = ("server_uri", "initial", "pathways")
_PATHWAY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# Characters that cannot be copied into a quoted playlist attribute or a URI line.
_URI_UNSAFE_RE = re.compile(r'[\s"#\\\x00-\x1f\x7f-\x9f]')
_STEERING_EXAMPLE = (
    '[node.NAME.steering] server_uri = "/steer/{video_id}.json" and '
    '[node.NAME.steering.pathways] edge-a = "", backup = "https://cdn-b.example.com"'
)


def _parse_steering_uri(value: Any, file: str, key: str) -> str:
    """``server_uri``: where players fetch the steering manifest; ``{video_id}`` is the only
    placeholder. A URI reference (absolute, or relative to the master), without fragment,
    spaces or quotes; a query is allowed (carried tokens are appended with ``&``)."""
    if not isinstance(value, str):
        raise _type_error(file, key, 'a URI string like "/steer/{video_id}.json"', value)
    text = value.strip()
    if not text:
        raise ConfigError(file, key, "must not be empty (leave server_uri out for no steering)")
    bad = f"bad steering server URI {_quote(value)}"
    if _URI_UNSAFE_RE.search(text):
        raise ConfigError(file, key, f"{bad}: no spaces, quotes, backslashes or fragment (#)")
    if "{" in text.replace("{video_id}", "") or "}" in text.replace("{video_id}", ""):
        raise ConfigError(file, key, f"{bad}: the only placeholder is {{video_id}}")
    if "://" in text:
        try:
            url = urllib.parse.urlsplit(text.replace("{video_id}", "v"))
        except ValueError as exc:
            raise ConfigError(file, key, f"{bad}: {exc}") from None
        if url.scheme.lower() not in ("http", "https") or not url.hostname:
            raise ConfigError(file, key, f"{bad}: an absolute URI must be http(s)://host/…")
        if url.username is not None or url.password is not None:
            raise ConfigError(file, key, f"{bad}: credentials are not allowed in the URL")
    return text


def _parse_pathway_base(value: Any, file: str, key: str) -> str:
    """A pathway's base: ``""`` (relative URIs: the host that served the master), an http(s)
    URL or an absolute path, to which ``/v/{id}/…`` is appended."""
    if not isinstance(value, str):
        raise _type_error(file, key, 'a base URL like "https://cdn-b.example.com", or ""',
                          value)
    text = value.strip()
    if not text:
        return ""
    if _URI_UNSAFE_RE.search(text):
        raise ConfigError(file, key, f"bad pathway base {_quote(value)}: no spaces, quotes, "
                          "backslashes or fragment (#)")
    if text.startswith("/") and not text.startswith("//"):
        if "?" in text:
            raise ConfigError(file, key, f"bad pathway base {_quote(value)}: no query allowed")
        return text.rstrip("/")
    return _parse_origin_url(text, file, key, what="pathway base", allow_path=True)


def _parse_steering(value: Any, file: str, key: str) -> dict[str, _Sourced]:
    """``[….steering]``: ``server_uri``, ``initial`` and the ``pathways`` table (PATHWAY-ID →
    base, in file order). Checked as a whole once the layers are merged (``_build_steering``),
    so ``[defaults.steering]`` can list the pathways and each edge set its own ``initial``."""
    if not isinstance(value, dict):
        raise _type_error(file, key, f"a table ([{key}])", value)
    _check_keys(file, key, value, _STEERING_KEYS)
    out: dict[str, _Sourced] = {}
    for name, raw in value.items():
        sub = f"{key}.{name}"
        if name == "server_uri":
            out[name] = (_parse_steering_uri(raw, file, sub), sub)
        elif name == "initial":
            if not isinstance(raw, str):
                raise _type_error(file, sub, "a PATHWAY-ID (a string)", raw)
            out[name] = (raw, sub)
        else:
            if not isinstance(raw, dict):
                raise _type_error(file, sub, f"a table ([{sub}]) of PATHWAY-ID = base URL, e.g. "
                                  'edge-a = "", backup = "https://cdn-b.example.com"', raw)
            if not raw:
                raise ConfigError(file, sub, "must list at least one pathway")
            pathways = []
            for pathway, base in raw.items():
                shown = pathway if _BARE_KEY_RE.fullmatch(pathway) else _quote(pathway)
                pkey = f"{sub}.{shown}"
                if not _PATHWAY_ID_RE.fullmatch(pathway):
                    raise ConfigError(file, pkey, f"bad PATHWAY-ID {_quote(pathway)}: use 1 to "
                                      "64 letters, digits, '.', '_' and '-'")
                pathways.append((pathway, _parse_pathway_base(base, file, pkey)))
            out[name] = (tuple(pathways), sub)
    return out


def _build_steering(merged: dict[str, _Sourced], where: str, file: str) -> SteeringConfig:
    """The merged ``steering`` fields as a :class:`SteeringConfig`: pathways are required, and
    ``initial`` must be one of them."""
    if "pathways" not in merged:
        raise ConfigError(file, f"{where}.pathways", "missing: steering needs its pathways, e.g. "
                          + _STEERING_EXAMPLE)
    pathways, _ = merged["pathways"]
    initial = None
    if "initial" in merged:
        initial, initial_key = merged["initial"]
        ids = [pathway for pathway, _ in pathways]
        if initial not in ids:
            raise ConfigError(file, initial_key, f"initial pathway {_quote(initial)} is not one "
                              "of the pathways: " + ", ".join(ids))
    server_uri = merged["server_uri"][0] if "server_uri" in merged else None
    return SteeringConfig(pathways=pathways, server_uri=server_uri, initial=initial)


def _parse_ttl_rules(value: Any, file: str, key: str) -> tuple[TtlRule, ...]:
    """Parse ``[[node.X.ttl]]`` rules, in file order (the first matching rule applies)."""
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ConfigError(
            file, key, f"expected an array of tables ([[{key}]] with match and ttl), got "
            f"{_describe(value)}"
        )
    rules: list[TtlRule] = []
    for i, rule in enumerate(value):
        prefix = f"{key}[{i}]"
        _check_keys(file, prefix, rule, _TTL_KEYS)
        for required in ("match", "ttl"):
            if required not in rule:
                raise ConfigError(file, f"{prefix}.{required}", "missing: every TTL rule needs "
                                  'match and ttl, e.g. match = "*.m4s", ttl = "1d"')
        pattern = rule["match"]
        if not isinstance(pattern, str):
            raise _type_error(file, f"{prefix}.match", 'a glob string like "*.m4s"', pattern)
        if not pattern.strip():
            raise ConfigError(file, f"{prefix}.match", "pattern must not be empty")
        if pattern[0] not in "/*?[":
            raise ConfigError(
                file, f"{prefix}.match", f"pattern {_quote(pattern)} can never match: it is "
                f'matched against the whole request path, which starts with "/"; did you mean '
                f'"*/{pattern}"?'
            )
        ttl = parse_duration(rule["ttl"], file=file, key=f"{prefix}.ttl")
        statuses = DEFAULT_TTL_STATUSES
        if "statuses" in rule:
            raw = rule["statuses"]
            skey = f"{prefix}.statuses"
            if not isinstance(raw, list):
                raise _type_error(file, skey, "an array of status codes, e.g. [404]", raw)
            if not raw:
                raise ConfigError(file, skey, "must list at least one status code")
            statuses = frozenset(
                _parse_int(code, file, f"{skey}[{j}]", minimum=100, maximum=599)
                for j, code in enumerate(raw)
            )
        force = _parse_bool(rule.get("force", False), file, f"{prefix}.force")
        rules.append(TtlRule(match=pattern, ttl=ttl, statuses=statuses, force=force))
    return tuple(rules)


def _parse_name_list(
    value: Any, file: str, key: str, *, what: str, example: str
) -> tuple[str, ...]:
    """Parse ``parents`` / ``origins``: a non-empty array of names, in order (the order is the
    failover order of origins), each listed once. A name listed twice is refused rather than
    collapsed, since it usually stands where a different name was meant."""
    if not isinstance(value, list):
        raise _type_error(file, key, f"an array of {what} names, e.g. {example}", value)
    if not value:
        raise ConfigError(file, key, f"must list at least one {what}, e.g. {example}")
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        if not isinstance(item, str):
            raise _type_error(file, item_key, f"a {what} name (a string)", item)
        if not item.strip():
            raise ConfigError(file, item_key, f"{what} name must not be empty")
        if item in seen:
            raise ConfigError(
                file, item_key, f"{what} {_quote(item)} is listed twice (also at "
                f"{key}[{seen[item]}]); list each {what} once"
            )
        seen[item] = i
    return tuple(seen)


def _parse_layer(
    prefix: str,
    table: Mapping[str, Any],
    file: str,
    environ: Mapping[str, str],
    base_dir: str | None = None,
) -> dict[str, _Sourced]:
    """Parse one table of node keys (a ``[node.NAME]`` or the ``[defaults]``) into
    ``{field: (value, dotted key)}``; only keys present in the table appear. Relative paths
    (``cache_dir``) resolve against ``base_dir`` (default: the working directory)."""
    _check_keys(file, prefix, table, _NODE_KEYS)
    if "admin_token" in table and "admin_token_env" in table:
        raise ConfigError(
            file, f"{prefix}.admin_token_env", "set either admin_token or admin_token_env, not both"
        )
    sources = [k for k in table if k in _SOURCE_KEYS]  # in file order: blame the second
    if len(sources) > 1:
        raise ConfigError(
            file, f"{prefix}.{sources[1]}", f"set only one of upstream, parents and origins "
            f"(found {' and '.join(sources)}): a node fetches from an upstream URL, from parent "
            "nodes of this file, or (a shield) from origins"
        )
    out: dict[str, _Sourced] = {}

    def put(name: str, value: Any, key: str) -> None:
        out[name] = (value, f"{prefix}.{key}")

    for key, raw in table.items():
        dotted = f"{prefix}.{key}"
        if key == "role":
            if not isinstance(raw, str):
                raise _type_error(file, dotted, "a string (" + " | ".join(ROLES) + ")", raw)
            if raw not in ROLES:
                close = difflib.get_close_matches(raw, ROLES, n=1)
                hint = f'did you mean "{close[0]}"? ' if close else ""
                raise ConfigError(
                    file, dotted, f"unknown role {_quote(raw)}: {hint}use one of "
                    + ", ".join(ROLES)
                )
            put("role", raw, key)
        elif key in ("listen", "admin"):
            put(key, parse_address(raw, file=file, key=dotted), key)
        elif key == "upstream":
            put("upstream", _parse_upstream(raw, file, dotted), key)
        elif key == "parents":
            names = _parse_name_list(raw, file, dotted, what="parent", example='["regional-1"]')
            put(key, names, key)
        elif key == "origins":
            put(key, _parse_name_list(raw, file, dotted, what="origin", example='["main"]'), key)
        elif key == "parent_retry_after":
            seconds = parse_duration(raw, file=file, key=dotted)
            if seconds == 0:
                raise ConfigError(
                    file, dotted, "must be larger than 0 (a failed parent is skipped this long)"
                )
            put(key, seconds, key)
        elif key == "parent_failures":
            put(key, _parse_int(raw, file, dotted, minimum=1), key)
        elif key == "cache_memory":
            put("cache_memory", parse_size(raw, file=file, key=dotted), key)
        elif key == "max_object_size":
            put("max_object_bytes", parse_size(raw, file=file, key=dotted), key)
        elif key == "sendfile_min_size":
            put("sendfile_min_bytes", parse_size(raw, file=file, key=dotted), key)
        elif key == "cache_disk":
            put("cache_disk", parse_size(raw, file=file, key=dotted), key)
        elif key == "cache_dir":
            if not isinstance(raw, str):
                raise _type_error(file, dotted, 'a directory path like "/var/cache/reelcdn"',
                                  raw)
            if not raw.strip():
                raise ConfigError(file, dotted, "must not be empty")
            path = os.path.normpath(os.path.join(
                base_dir if base_dir is not None else os.getcwd(),
                os.path.expanduser(raw.strip()),
            ))
            if os.path.exists(path) and not os.path.isdir(path):
                raise ConfigError(file, dotted, f"{_quote(path)} exists and is not a directory")
            put("cache_dir", path, key)
        elif key == "admin_token":
            if not isinstance(raw, str):
                raise _type_error(file, dotted, "a string", raw)
            put("admin_token", _check_token(raw, file, dotted), key)
        elif key == "admin_token_env":
            if not isinstance(raw, str):
                raise _type_error(file, dotted, "the name of an environment variable", raw)
            if not _ENV_NAME_RE.fullmatch(raw):
                raise ConfigError(
                    file, dotted, f"{_quote(raw)} is not an environment variable name"
                )
            if raw not in environ:
                raise ConfigError(
                    file, dotted, f"environment variable {raw} is not set (it should hold the "
                    "admin token)"
                )
            put("admin_token", _check_token(environ[raw], file, dotted), key)
        elif key in ("host_in_key", "honor_client_no_cache", "render_playlists",
                     "prefetch_cmcd", "cmsd"):
            put(key, _parse_bool(raw, file, dotted), key)
        elif key == "carried_query_params":
            put(key, _parse_carried(raw, file, dotted), key)
        elif key in ("playlist_cache_entries", "prefetch_queue", "prefetch_concurrency"):
            put(key, _parse_int(raw, file, dotted, minimum=1), key)
        elif key == "prefetch_segments":
            put(key, _parse_int(raw, file, dotted, minimum=0, maximum=100), key)
        elif key == "heuristic_fraction":
            put(key, _parse_fraction(raw, file, dotted), key)
        elif key == "heuristic_max":
            put(key, parse_duration(raw, file=file, key=dotted), key)
        elif key in ("ignore_query_params", "extra_ignore_query_params"):
            names = _parse_str_list(raw, file, dotted, _query_name_checker(file, "parameter"))
            put(key, frozenset(names), key)
        elif key == "ignore_query_prefixes":
            put(key, _parse_str_list(raw, file, dotted, _query_name_checker(file, "prefix")), key)
        elif key == "fill_headers":
            names = _parse_str_list(raw, file, dotted, _field_name_checker(file))
            put(key, frozenset(name.lower() for name in names), key)
        elif key == "server_names":
            put(key, _parse_str_list(raw, file, dotted, _server_name_checker(file)), key)
        elif key in ("upstream_max_connections", "workers"):
            put(key, _parse_int(raw, file, dotted, minimum=1), key)
        elif key == "limits":
            put(key, _parse_limits(raw, file, dotted), key)
        elif key == "upstream_timeouts":
            put(key, _parse_upstream_timeouts(raw, file, dotted), key)
        elif key == "ttl":
            put("ttl_rules", _parse_ttl_rules(raw, file, dotted), key)
        elif key == "steering":
            put(key, _parse_steering(raw, file, dotted), key)
        else:  # pragma: no cover - _NODE_KEYS and this chain are kept in step
            raise AssertionError(key)
    return out


def _merge(layers: list[dict[str, _Sourced]]) -> dict[str, _Sourced]:
    """Later layers win key by key; ``limits`` and ``upstream_timeouts`` merge field by field,
    so ``[defaults.limits]`` can set one limit and a node another. The source keys (upstream,
    parents, origins) are one choice: a layer setting any of them replaces all three."""
    merged: dict[str, _Sourced] = {}
    for layer in layers:
        if any(k in layer for k in _SOURCE_KEYS):
            for k in _SOURCE_KEYS:
                merged.pop(k, None)
        for name, (value, where) in layer.items():
            if name in _TABLE_KEYS and name in merged:
                merged[name] = ({**merged[name][0], **value}, where)
            else:
                merged[name] = (value, where)
    return merged


def _check_node_name(name: Any, file: str) -> str:
    if not isinstance(name, str) or not _NODE_NAME_RE.fullmatch(name):
        raise ConfigError(
            file, f"node.{name}", f"bad node name {_quote(str(name))}: use letters, digits, - and _"
        )
    return name


def _article(word: str) -> str:
    """``an edge``, ``a regional``; origin types are said letter by letter (``an fs``)."""
    return ("an " if word[0] in "aeiou" or word in ORIGIN_TYPES else "a ") + word


def _parent_url(host: str, port: int) -> str:
    """How a child reaches a node: its listen address, with a wildcard (listen everywhere)
    replaced by the loopback of the same family, the one address sure to reach it locally."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f'did you mean "{close[0]}"? ' if close else ""


@dataclass(slots=True)
class _Draft:
    """A node between parsing and building: its merged layers, before names are resolved."""

    name: str
    merged: dict[str, _Sourced]

    @property
    def role(self) -> str:
        return str(self.merged["role"][0]) if "role" in self.merged else "edge"

    def names(self, key: str) -> tuple[str, ...]:
        return tuple(self.merged[key][0]) if key in self.merged else ()

    def item_key(self, key: str, index: int) -> str:
        """The dotted key of one list item, where the operator wrote it (maybe [defaults])."""
        return f"{self.merged[key][1]}[{index}]"


def _draft(name: str, layers: list[dict[str, _Sourced]], file: str) -> _Draft:
    draft = _Draft(name, _merge(layers))
    if "listen" not in draft.merged:
        raise ConfigError(
            file, f"node.{name}.listen", 'missing: every node needs listen (e.g. listen = '
            '"127.0.0.1:8080")'
        )
    disk = draft.merged.get("cache_disk")
    if disk is not None and disk[0] > 0 and "cache_dir" not in draft.merged:
        raise ConfigError(
            file, f"node.{name}.cache_dir", f"missing: {disk[1]} asks for a disk tier, which "
            'needs cache_dir, the directory for its files (e.g. cache_dir = '
            '"/var/cache/reelcdn"; created if missing)'
        )
    return draft


def _check_sources(
    drafts: Mapping[str, _Draft], origins: Mapping[str, OriginConfig], file: str
) -> None:
    """Each node fetches from the right kind of thing for its role, by names that exist."""
    for name, draft in drafts.items():
        role, merged = draft.role, draft.merged
        if role == "shield":
            if "parents" in merged:
                raise ConfigError(
                    file, merged["parents"][1], 'a shield fetches from origins; use role = '
                    '"regional" for a node with parents'
                )
            if "upstream" not in merged and "origins" not in merged:
                raise ConfigError(
                    file, f"node.{name}.origins", 'missing: a shield needs origins, e.g. '
                    'origins = ["main"] with an [origin.main] table (or an upstream URL)'
                )
        else:
            if "origins" in merged:
                raise ConfigError(
                    file, merged["origins"][1], f"{_article(role)} fetches from parents (or an "
                    'upstream URL); only a shield fetches from origins: set role = "shield" or '
                    "list parents"
                )
            if "upstream" not in merged and "parents" not in merged:
                raise ConfigError(
                    file, f"node.{name}.parents", f"missing: {_article(role)} needs parents (or "
                    'an upstream URL), e.g. parents = ["regional-1"] or upstream = '
                    '"http://127.0.0.1:8000"'
                )
        for i, parent in enumerate(draft.names("parents")):
            key = draft.item_key("parents", i)
            if parent == name:
                inherited = " (from [defaults]: give it its own parents)" if key.startswith(
                    "defaults."
                ) else ""
                raise ConfigError(
                    file, key, f"node {_quote(name)} lists itself as a parent{inherited}; a "
                    "parent is a node closer to the origin"
                )
            if parent not in drafts:
                hint = _suggest(parent, drafts)
                if not hint and parent in origins:
                    hint = f"{_quote(parent)} is an origin: only a shield lists origins. "
                raise ConfigError(
                    file, key, f"unknown parent {_quote(parent)}: {hint}nodes in this file are: "
                    + ", ".join(drafts)
                )
        for i, origin in enumerate(draft.names("origins")):
            if origin not in origins:
                key = draft.item_key("origins", i)
                if not origins:
                    raise ConfigError(
                        file, key, f"unknown origin {_quote(origin)}: this file has no origins; "
                        f"add an [origin.{origin}] table with type = " + " | ".join(ORIGIN_TYPES)
                    )
                hint = _suggest(origin, origins)
                if not hint and origin in drafts:
                    hint = f"{_quote(origin)} is a node: list nodes in parents. "
                raise ConfigError(
                    file, key, f"unknown origin {_quote(origin)}: {hint}origins in this file "
                    "are: " + ", ".join(origins)
                )


def _check_cycles(drafts: Mapping[str, _Draft], file: str) -> None:
    """Refuse parents that lead back to the node: each request would loop through the tiers
    until a timeout. The message spells out the whole loop, first node in file order first."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        draft = drafts[name]
        for parent in draft.names("parents"):
            if state.get(parent) == 1:
                loop = [*path[path.index(parent):], parent]
                first = drafts[loop[0]]
                index = first.names("parents").index(loop[1])
                raise ConfigError(
                    file, first.item_key("parents", index), "parents form a cycle: "
                    + " → ".join(loop) + "; every parent must be closer to the origin than "
                    "its children"
                )
            if parent not in state:
                visit(parent)
        path.pop()
        state[name] = 2

    for name in drafts:
        if name not in state:
            visit(name)


def _parent_refs(draft: _Draft, drafts: Mapping[str, _Draft], file: str) -> tuple[ParentRef, ...]:
    """Resolve parent names to URLs; a parent must be a tier closer to the origin."""
    refs: list[ParentRef] = []
    for i, parent_name in enumerate(draft.names("parents")):
        key = draft.item_key("parents", i)
        parent = drafts[parent_name]
        if parent.role not in ("regional", "shield"):
            raise ConfigError(
                file, key, f"parent {_quote(parent_name)} of node {_quote(draft.name)} is "
                f"{_article(parent.role)}; a parent must be a regional or a shield"
            )
        host, port = parent.merged["listen"][0]
        if port == 0:
            raise ConfigError(
                file, key, f"parent {_quote(parent_name)} listens on port 0 (a free port picked "
                f"at start), so its children cannot find it: give {parent.merged['listen'][1]} "
                "a fixed port"
            )
        refs.append(ParentRef(name=parent_name, url=_parent_url(host, port)))
    return tuple(refs)


def _build_node(
    draft: _Draft,
    drafts: Mapping[str, _Draft],
    origins: Mapping[str, OriginConfig],
    file: str,
) -> tuple[NodeConfig, dict[str, str]]:
    """Build a node from its checked draft; also return where listen/admin came from, for the
    duplicate-address check across nodes."""
    merged = draft.merged
    values = {k: v for k, (v, _) in merged.items()}
    listen_host, listen_port = values.pop("listen")
    admin_host, admin_port = values.pop("admin", (None, None))
    extra = values.pop("extra_ignore_query_params", frozenset())
    ignore = values.pop("ignore_query_params", DEFAULT_IGNORE_QUERY_PARAMS)
    if "limits" in values:
        values["limits"] = Limits(**{k: v for k, (v, _) in values["limits"].items()})
    if "upstream_timeouts" in values:
        values["upstream_timeouts"] = UpstreamTimeouts(
            **{k: v for k, (v, _) in values["upstream_timeouts"].items()}
        )
    if "steering" in values:
        values["steering"] = _build_steering(values["steering"], merged["steering"][1], file)
    values["parents"] = _parent_refs(draft, drafts, file)
    values["origins"] = tuple(origins[name] for name in draft.names("origins"))
    node = NodeConfig(
        name=draft.name,
        listen_host=listen_host,
        listen_port=listen_port,
        admin_host=admin_host,
        admin_port=admin_port,
        upstream=values.pop("upstream", None),
        # Carried parameters (tokens) are per viewer: they must never split the cache.
        ignore_query_params=frozenset(ignore | extra | set(values.get("carried_query_params", ()))),
        source_file=file,
        **values,
    )
    sources = {k: merged[k][1] for k in ("listen", "admin") if k in merged}
    return node, sources


def _build_nodes(
    drafts: Mapping[str, _Draft], origins: Mapping[str, OriginConfig], file: str
) -> dict[str, NodeConfig]:
    """Check the nodes against each other and build them, in file order."""
    _check_sources(drafts, origins, file)
    _check_cycles(drafts, file)
    built = {name: _build_node(draft, drafts, origins, file) for name, draft in drafts.items()}
    _check_addresses(built, file)
    return {name: node for name, (node, _) in built.items()}


def node_config_from_dict(
    name: str,
    table: Mapping[str, Any],
    *,
    file: str = "<dict>",
    environ: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Validate one node's table (as TOML would parse it) into a :class:`NodeConfig`.

    Used for configs built in code (tests, tools) so they get exactly the checks a file gets.
    The node stands alone, so it fetches from an ``upstream`` URL: parents and origins name
    other tables of a topology file (see :func:`topology_from_text`). ``environ`` defaults to
    ``os.environ`` (for ``admin_token_env``).
    """
    _check_node_name(name, file)
    prefix = f"node.{name}"
    if not isinstance(table, Mapping):
        raise _type_error(file, prefix, "a table", table)
    env = os.environ if environ is None else environ
    drafts = {name: _draft(name, [_parse_layer(prefix, table, file, env)], file)}
    return _build_nodes(drafts, {}, file)[name]


def _clash(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listeners would fight over a socket. Port 0 never clashes (the OS picks);
    a wildcard host clashes with every address of its family on the same port."""
    (host_a, port_a), (host_b, port_b) = a, b
    if port_a == 0 or port_a != port_b:
        return False
    host_a, host_b = host_a.lower(), host_b.lower()
    if host_a == host_b:
        return True
    for wild, other in ((host_a, host_b), (host_b, host_a)):
        if wild in ("0.0.0.0", "::"):
            try:
                family = ipaddress.ip_address(other).version
            except ValueError:
                family = 4  # a host name: it resolves to IPv4 at least on our platforms
            if family == ipaddress.ip_address(wild).version:
                return True
    return False


def _check_addresses(nodes: Mapping[str, tuple[NodeConfig, dict[str, str]]], file: str) -> None:
    """Refuse configs where two listeners share an address: the second node would fail to bind
    at start-up, far from the line that caused it."""
    seen: list[tuple[tuple[str, int], str, str]] = []  # (address, node, dotted key)
    for name, (node, sources) in nodes.items():
        listeners = [((node.listen_host, node.listen_port), sources["listen"])]
        if node.admin_host is not None and node.admin_port is not None:
            listeners.append(((node.admin_host, node.admin_port), sources["admin"]))
        for address, where in listeners:
            for other_address, other_name, other_where in seen:
                if not _clash(address, other_address):
                    continue
                shown = _format_address(*address)
                key = f"node.{name}.{where.rsplit('.', 1)[1]}"
                if other_name == name:
                    raise ConfigError(
                        file, key, f"node {_quote(name)} uses {shown} for both listen and admin; "
                        "give the admin API its own port"
                    )
                raise ConfigError(
                    file, key, f"address {shown} is used by both node {_quote(other_name)} "
                    f"({other_where}) and node {_quote(name)} ({where}); each listener needs "
                    "its own address"
                )
            seen.append((address, name, where))


# --------------------------------------------------------------------------------------------
# Origins: ``[origin.NAME]`` tables. Only a shield fetches from them; an origin no node uses is
# allowed (an operator may keep a spare one ready to list).

_ORIGIN_KEYS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "fs": ("root",),
    "http": ("url",),
    "s3": ("bucket", "prefix", "endpoint_url", "region", "profile"),
}
_ORIGIN_REQUIRED: dict[str, str] = {"fs": "root", "http": "url", "s3": "bucket"}
_ORIGIN_EXAMPLES: dict[str, str] = {
    "fs": 'root = "./data/origin"',
    "http": 'url = "http://127.0.0.1:8000"',
    "s3": 'bucket = "my-videos"',
}
_ORIGIN_KEYS: tuple[str, ...] = (
    "type", "timeouts", *(k for keys in _ORIGIN_KEYS_BY_TYPE.values() for k in keys)
)
# Names operators reach for that mean one of ours.
_ORIGIN_TYPE_ALIASES: dict[str, str] = {
    "file": "fs", "files": "fs", "filesystem": "fs", "local": "fs", "disk": "fs",
    "https": "http", "url": "http", "web": "http", "aws": "s3", "minio": "s3", "r2": "s3",
}
# Keys that would put a secret in the file. Refused with the way boto3 finds credentials.
_CREDENTIAL_KEYS = frozenset({
    "access_key", "access_key_id", "aws_access_key_id", "secret_key", "secret_access_key",
    "aws_secret_access_key", "session_token", "aws_session_token", "password", "credentials",
})
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION_RE = re.compile(r"[A-Za-z0-9_-]+")


def _origin_string(value: Any, file: str, key: str, what: str) -> str:
    if not isinstance(value, str):
        raise _type_error(file, key, what, value)
    text = value.strip()
    if not text:
        raise ConfigError(file, key, "must not be empty")
    return text


def _parse_bucket(value: Any, file: str, key: str) -> str:
    bucket = _origin_string(value, file, key, 'a bucket name like "my-videos"')
    if bucket.lower().startswith("s3://") or "/" in bucket:
        name, _, prefix = bucket.removeprefix("s3://").removeprefix("S3://").partition("/")
        suggestion = f'bucket = "{name}"' + (f', prefix = "{prefix}"' if prefix else "")
        raise ConfigError(
            file, key, f"bad bucket {_quote(value)}: give the bucket name only ({suggestion})"
        )
    if not _BUCKET_RE.fullmatch(bucket):
        raise ConfigError(
            file, key, f"bad bucket {_quote(value)}: a bucket name is 3..63 lowercase letters, "
            "digits, dots and hyphens, starting and ending with a letter or digit"
        )
    return bucket


def _parse_prefix(value: Any, file: str, key: str) -> str:
    """Store the prefix as a folder (``"videos/"``): object keys are prefix + request path, and
    ``"videos"`` + ``"v/…"`` would silently look up ``"videosv/…"``."""
    if not isinstance(value, str):
        raise _type_error(file, key, 'a key prefix like "videos/"', value)
    prefix = value.strip().lstrip("/")
    if any(part in (".", "..") for part in prefix.split("/")) or "\\" in prefix:
        raise ConfigError(file, key, f"bad prefix {_quote(value)}: no . or .. parts, no \\")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _parse_origin(
    name: str, table: Mapping[str, Any], file: str, base_dir: str
) -> OriginConfig:
    """Validate one ``[origin.NAME]``; a relative fs root is resolved against ``base_dir`` (the
    file's directory), so the origin is the same whichever directory a node is started from."""
    prefix = f"origin.{name}"
    for key in table:
        if key in _CREDENTIAL_KEYS:
            raise ConfigError(
                file, f"{prefix}.{key}", "credentials never go in the config file: boto3 finds "
                "them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), in "
                "~/.aws/credentials, or in an instance role; choose a named set with profile = …"
            )
    _check_keys(file, prefix, table, _ORIGIN_KEYS)
    if "type" not in table:
        raise ConfigError(
            file, f"{prefix}.type", "missing: every origin needs type = "
            + " | ".join(f'"{t}"' for t in ORIGIN_TYPES)
        )
    kind = table["type"]
    if not isinstance(kind, str):
        raise _type_error(file, f"{prefix}.type", " | ".join(ORIGIN_TYPES), kind)
    if kind not in ORIGIN_TYPES:
        alias = _ORIGIN_TYPE_ALIASES.get(kind.lower())
        close = [alias] if alias else difflib.get_close_matches(kind, ORIGIN_TYPES, n=1)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        raise ConfigError(
            file, f"{prefix}.type", f"unknown origin type {_quote(kind)}: {hint}use one of "
            + ", ".join(ORIGIN_TYPES)
        )
    for key in table:
        if key in ("type", "timeouts") or key in _ORIGIN_KEYS_BY_TYPE[kind]:
            continue
        owner = next(t for t, keys in _ORIGIN_KEYS_BY_TYPE.items() if key in keys)
        raise ConfigError(
            file, f"{prefix}.{key}", f"{key} is for {owner} origins; {_article(kind)} origin "
            "takes " + ", ".join(_ORIGIN_KEYS_BY_TYPE[kind])
        )
    required = _ORIGIN_REQUIRED[kind]
    if required not in table:
        raise ConfigError(
            file, f"{prefix}.{required}", f"missing: {_article(kind)} origin needs {required} "
            f"(e.g. {_ORIGIN_EXAMPLES[kind]})"
        )
    fields: dict[str, Any] = {}
    for key, raw in table.items():
        dotted = f"{prefix}.{key}"
        if key == "root":
            root = _origin_string(raw, file, dotted, 'a directory path like "./data/origin"')
            fields["root"] = os.path.normpath(
                os.path.join(base_dir, os.path.expanduser(root))
            )
        elif key == "url":
            fields["url"] = _parse_origin_url(raw, file, dotted, what="origin URL",
                                              allow_path=True)
        elif key == "endpoint_url":
            fields["endpoint_url"] = _parse_origin_url(raw, file, dotted, what="endpoint URL",
                                                       allow_path=False)
        elif key == "bucket":
            fields["bucket"] = _parse_bucket(raw, file, dotted)
        elif key == "prefix":
            fields["prefix"] = _parse_prefix(raw, file, dotted)
        elif key == "region":
            region = _origin_string(raw, file, dotted, 'a region name like "eu-west-1"')
            if not _REGION_RE.fullmatch(region):
                raise ConfigError(file, dotted, f"bad region {_quote(raw)}")
            fields["region"] = region
        elif key == "profile":
            fields["profile"] = _origin_string(raw, file, dotted, "an AWS profile name")
        elif key == "timeouts":
            parsed = _parse_upstream_timeouts(raw, file, dotted)
            fields["timeouts"] = UpstreamTimeouts(**{k: v for k, (v, _) in parsed.items()})
    return OriginConfig(name=name, type=kind, **fields)


def _parse_origins(value: Any, file: str, base_dir: str) -> dict[str, OriginConfig]:
    if not isinstance(value, dict):
        raise _type_error(file, "origin", "tables written [origin.NAME]", value)
    origins: dict[str, OriginConfig] = {}
    for name, table in value.items():
        if not isinstance(table, dict):
            if name in _ORIGIN_KEYS:
                raise ConfigError(
                    file, f"origin.{name}", f"{name} must be inside an origin's table: write "
                    f"[origin.NAME] then {name} = …"
                )
            raise _type_error(file, f"origin.{name}", f"a table ([origin.{name}])", table)
        if not _NODE_NAME_RE.fullmatch(name):
            raise ConfigError(
                file, f"origin.{name}", f"bad origin name {_quote(name)}: use letters, digits, "
                "- and _"
            )
        origins[name] = _parse_origin(name, table, file, base_dir)
    return origins


# --------------------------------------------------------------------------------------------
# Files.

_TOP_KEYS = ("defaults", "node", "origin")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def _read_text(file: str) -> str:
    try:
        with open(file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read the config file: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            file, "", f"the config file is not UTF-8 text (bad byte at offset {exc.start})"
        ) from None


def _parse_toml(text: str, file: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise ConfigError(file, "", f"TOML syntax error: {message}") from None
        line_no, column = int(position[1]), int(position[2])
        reason = message[: position.start()].rstrip()
        lines = text.splitlines()
        shown = lines[line_no - 1].strip() if 0 < line_no <= len(lines) else ""
        detail = f": {shown}" if shown else ""
        raise ConfigError(
            file, "", f"TOML syntax error at line {line_no}, column {column}: {reason}{detail}"
        ) from None


def topology_from_text(
    text: str,
    *,
    file: str = "<embedded>",
    base_dir: str,
    environ: Mapping[str, str] | None = None,
) -> Topology:
    """Validate a whole topology given as TOML text.

    ``file`` names the text in messages; ``base_dir`` is where relative paths (an fs origin's
    ``root``) are resolved — the file's directory for a file, the data directory for the
    embedded default. The whole text is validated even when one node is wanted: nodes of one
    topology start together, and a mistake in any of them should surface before the first binds.
    """
    env = os.environ if environ is None else environ
    base = os.path.abspath(base_dir)
    doc = _parse_toml(text, file)
    for key in doc:
        if key not in _TOP_KEYS:
            hint = _unknown_key(file, "", key, _TOP_KEYS).message
            raise ConfigError(
                file, key, hint + " (nodes are written [node.NAME], origins [origin.NAME])"
            )
    defaults_table = doc.get("defaults", {})
    if not isinstance(defaults_table, dict):
        raise _type_error(file, "defaults", "a table ([defaults])", defaults_table)
    defaults = _parse_layer("defaults", defaults_table, file, env, base)
    origins = _parse_origins(doc.get("origin", {}), file, base)
    node_tables = doc.get("node", {})
    if not isinstance(node_tables, dict):
        raise _type_error(file, "node", "tables written [node.NAME]", node_tables)
    if not node_tables:
        raise ConfigError(
            file, "", "no nodes: describe at least one node in a [node.NAME] table"
        )
    drafts: dict[str, _Draft] = {}
    for name, table in node_tables.items():
        if not isinstance(table, dict):
            if name in _NODE_KEYS:
                raise ConfigError(
                    file, f"node.{name}", f"{name} must be inside a node's table: write "
                    f"[node.NAME] then {name} = …, or put it in [defaults]"
                )
            raise _type_error(file, f"node.{name}", f"a table ([node.{name}])", table)
        _check_node_name(name, file)
        layer = _parse_layer(f"node.{name}", table, file, env, base)
        drafts[name] = _draft(name, [defaults, layer], file)
    return Topology(file=file, origins=origins, nodes=_build_nodes(drafts, origins, file))


def default_topology_text() -> str:
    """The embedded default topology (``reelcdn/default_topology.toml``), as TOML text.

    Read through ``importlib.resources`` so it is found the same way in a wheel, a zip and an
    editable checkout.
    """
    resource = importlib.resources.files("reelcdn").joinpath("default_topology.toml")
    return resource.read_text(encoding="utf-8")


def load_topology(
    path: str | os.PathLike[str] | None,
    *,
    data_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Topology:
    """Load and validate a topology file; with ``path=None``, the embedded default.

    A file's relative paths resolve against the file's own directory, never ``data_dir``:
    ``reelcdn up`` and every node process it starts load the same file, and they must agree on
    where the origin is. ``data_dir`` is the base of the embedded default (required then).
    """
    if path is None:
        if data_dir is None:
            raise ValueError("load_topology(None) loads the embedded default and needs data_dir")
        return topology_from_text(default_topology_text(), base_dir=data_dir, environ=environ)
    file = os.fspath(path)
    text = _read_text(file)
    base_dir = os.path.dirname(os.path.abspath(file))
    return topology_from_text(text, file=file, base_dir=base_dir, environ=environ)


def load_config_file(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> dict[str, NodeConfig]:
    """Load and validate every ``[node.NAME]`` of a topology file, in file order (see
    :func:`load_topology` for the origins too)."""
    return load_topology(path, environ=environ).nodes


def load_node_config(
    path: str | os.PathLike[str], name: str, *, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    """Load one node of a topology file (the whole file is validated, see
    :func:`topology_from_text`)."""
    nodes = load_config_file(path, environ=environ)
    if name not in nodes:
        raise ConfigError(
            os.fspath(path), f"node.{name}", f"no node named {_quote(name)} in this file; "
            f"{_suggest(name, nodes)}nodes are: " + ", ".join(nodes)
        )
    return nodes[name]


def describe_upstream(node: NodeConfig) -> str:
    """Where a node fetches from, for logs and ``reelcdn validate``."""
    if node.origins:
        return "origins " + ", ".join(f"{o.name} ({o.type})" for o in node.origins)
    if node.parents:
        return "parents " + ", ".join(p.name for p in node.parents)
    return f"upstream {node.upstream}"
