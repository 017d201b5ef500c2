"""Topology configuration: the validated, typed form of a reelcdn TOML file.

Operators describe a whole tier topology in one plain TOML file (docs/overview.md, "What makes it a
CDN"): origins, and nodes that fetch from other nodes of the file (``parents``), from origins (a
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

The model (the dataclasses the rest of the node codes against) is ``reelcdn.edge.config.model``;
the keys, one table with each key's parser, field and doc, are ``reelcdn.edge.config.keys``; single
values are parsed in ``reelcdn.edge.config.values``. This module is the loader that puts them
together: reading TOML, layering ``[defaults]`` under each node, and the checks across nodes and
origins. It re-exports the model, so ``from reelcdn.edge.config import NodeConfig`` keeps working.
"""
from __future__ import annotations

import difflib
import importlib.resources
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reelcdn.edge.config.keys import (
    NODE_KEYS,
    ORIGIN_KEY_TABLE,
    Context,
    Sourced,
    article,
    build_nested,
    merge_layers,
    parse_layer,
    parse_origin,
    reference_markdown,
)
from reelcdn.edge.config.model import (
    DEFAULT_FILL_HEADERS,
    DEFAULT_IGNORE_QUERY_PARAMS,
    DEFAULT_TTL_STATUSES,
    HEALTH_PATH,
    ORIGIN_TYPES,
    ROLES,
    TOKEN_CARRIED_FORMATS,
    HealthConfig,
    Limits,
    NodeConfig,
    OriginConfig,
    ParentRef,
    SteeringConfig,
    Topology,
    TtlRule,
    UpstreamTimeouts,
    describe_upstream,
    http_base,
    reachable_host,
    token_query_params,
)
from reelcdn.edge.config.values import (
    ConfigError,
    format_address,
    parse_address,
    parse_duration,
    parse_size,
    quote,
    type_error,
    unknown_key,
)

__all__ = [
    "DEFAULT_FILL_HEADERS",
    "DEFAULT_IGNORE_QUERY_PARAMS",
    "DEFAULT_TTL_STATUSES",
    "ROLES",
    "ORIGIN_TYPES",
    "ConfigError",
    "HEALTH_PATH",
    "HealthConfig",
    "Limits",
    "NodeConfig",
    "OriginConfig",
    "ParentRef",
    "SteeringConfig",
    "Topology",
    "TtlRule",
    "UpstreamTimeouts",
    "default_topology_text",
    "describe_upstream",
    "load_config_file",
    "load_node_config",
    "load_topology",
    "node_config_from_dict",
    "parse_address",
    "parse_duration",
    "parse_size",
    "reference_markdown",
    "topology_from_text",
]

# --------------------------------------------------------------------------------------------
# Nodes. Each layer (``[defaults]``, then ``[node.NAME]``) is parsed on its own by the key table,
# so an error names the key where the operator wrote the value; the parsed layers are then
# merged. Names in ``parents`` / ``origins`` are resolved once every table of the file is known.

_NODE_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


def _check_node_name(name: Any, file: str) -> str:
    if not isinstance(name, str) or not _NODE_NAME_RE.fullmatch(name):
        raise ConfigError(
            file, f"node.{name}", f"bad node name {quote(str(name))}: use letters, digits, - and _"
        )
    return name


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f'did you mean "{close[0]}"? ' if close else ""


@dataclass(slots=True)
class _Draft:
    """A node between parsing and building: its merged layers, before names are resolved."""

    name: str
    merged: dict[str, Sourced]

    @property
    def role(self) -> str:
        return str(self.merged["role"][0]) if "role" in self.merged else "edge"

    def names(self, key: str) -> tuple[str, ...]:
        return tuple(self.merged[key][0]) if key in self.merged else ()

    def item_key(self, key: str, index: int) -> str:
        """The dotted key of one list item, where the operator wrote it (maybe [defaults])."""
        return f"{self.merged[key][1]}[{index}]"


def _draft(name: str, layers: list[dict[str, Sourced]], file: str) -> _Draft:
    draft = _Draft(name, merge_layers(layers))
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
                    file, merged["origins"][1], f"{article(role)} fetches from parents (or an "
                    'upstream URL); only a shield fetches from origins: set role = "shield" or '
                    "list parents"
                )
            if "upstream" not in merged and "parents" not in merged:
                raise ConfigError(
                    file, f"node.{name}.parents", f"missing: {article(role)} needs parents (or "
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
                    file, key, f"node {quote(name)} lists itself as a parent{inherited}; a "
                    "parent is a node closer to the origin"
                )
            if parent not in drafts:
                hint = _suggest(parent, drafts)
                if not hint and parent in origins:
                    hint = f"{quote(parent)} is an origin: only a shield lists origins. "
                raise ConfigError(
                    file, key, f"unknown parent {quote(parent)}: {hint}nodes in this file are: "
                    + ", ".join(drafts)
                )
        _check_fallback(draft, drafts, file)
        for i, origin in enumerate(draft.names("origins")):
            if origin not in origins:
                key = draft.item_key("origins", i)
                if not origins:
                    raise ConfigError(
                        file, key, f"unknown origin {quote(origin)}: this file has no origins; "
                        f"add an [origin.{origin}] table with type = " + " | ".join(ORIGIN_TYPES)
                    )
                hint = _suggest(origin, origins)
                if not hint and origin in drafts:
                    hint = f"{quote(origin)} is a node: list nodes in parents. "
                raise ConfigError(
                    file, key, f"unknown origin {quote(origin)}: {hint}origins in this file "
                    "are: " + ", ".join(origins)
                )


def _check_fallback(draft: _Draft, drafts: Mapping[str, _Draft], file: str) -> None:
    """``fallback`` names other nodes of the file, tried after the parents: so only a node with
    parents has one, and it names neither the node itself nor one of its parents."""
    if "fallback" not in draft.merged:
        return
    if "parents" not in draft.merged:
        raise ConfigError(
            file, draft.merged["fallback"][1], "fallback nodes are tried after the parents; "
            f"{article(draft.role)} without parents has none (a shield's failover is its "
            "origins list)"
        )
    parents = draft.names("parents")
    for i, node in enumerate(draft.names("fallback")):
        key = draft.item_key("fallback", i)
        if node == draft.name:
            raise ConfigError(file, key, f"node {quote(node)} lists itself as a fallback")
        if node not in drafts:
            raise ConfigError(
                file, key, f"unknown fallback node {quote(node)}: {_suggest(node, drafts)}"
                "nodes in this file are: " + ", ".join(drafts)
            )
        if node in parents:
            raise ConfigError(
                file, key, f"{quote(node)} is a parent already (a parent is tried before any "
                "fallback); list it in one of parents and fallback"
            )


_UPSTREAM_NODE_KEYS = ("parents", "fallback")
_CYCLE_WHAT = {"parents": "parents", "fallback": "parents and fallback nodes"}


def _check_cycles(drafts: Mapping[str, _Draft], file: str) -> None:
    """Refuse parents (or fallback nodes) that lead back to the node: each request would loop
    through the tiers until a timeout. The message spells out the whole loop, first node in
    file order first."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        draft = drafts[name]
        for parent in (*draft.names("parents"), *draft.names("fallback")):
            if state.get(parent) == 1:
                loop = [*path[path.index(parent):], parent]
                first = drafts[loop[0]]
                what = next(k for k in _UPSTREAM_NODE_KEYS if loop[1] in first.names(k))
                index = first.names(what).index(loop[1])
                raise ConfigError(
                    file, first.item_key(what, index), f"{_CYCLE_WHAT[what]} form a cycle: "
                    + " → ".join(loop) + "; every parent (and fallback node) must be closer to "
                    "the origin than its children"
                )
            if parent not in state:
                visit(parent)
        path.pop()
        state[name] = 2

    for name in drafts:
        if name not in state:
            visit(name)


def _parent_refs(
    draft: _Draft, drafts: Mapping[str, _Draft], file: str, what: str = "parents"
) -> tuple[ParentRef, ...]:
    """Resolve parent (or fallback) names to URLs; a parent must be a tier closer to the
    origin."""
    refs: list[ParentRef] = []
    label = "parent" if what == "parents" else "fallback node"
    for i, parent_name in enumerate(draft.names(what)):
        key = draft.item_key(what, i)
        parent = drafts[parent_name]
        if parent.role not in ("regional", "shield"):
            raise ConfigError(
                file, key, f"{label} {quote(parent_name)} of node {quote(draft.name)} is "
                f"{article(parent.role)}; a {label} must be a regional or a shield"
            )
        # Children reach a parent at its advertise address (the listen address by default,
        # with a wildcard as loopback: right only when parent and child share a host).
        host, port = parent.merged.get("advertise", parent.merged["listen"])[0]
        if port == 0:
            raise ConfigError(
                file, key, f"parent {quote(parent_name)} listens on port 0 (a free port picked "
                f"at start), so its children cannot find it: give {parent.merged['listen'][1]} "
                "a fixed port"
            )
        refs.append(ParentRef(name=parent_name, url=http_base((reachable_host(host), port))))
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
    if "admin_advertise" in merged and admin_host is None:
        raise ConfigError(
            file, merged["admin_advertise"][1], "admin_advertise names where the admin API is "
            'reached, but this node has none: set admin too (e.g. admin = "0.0.0.0:9100")'
        )
    if (values.get("plays_url") and values.get("role", "edge") == "edge"
            and not values.get("plays_token")):
        raise ConfigError(
            file, merged["plays_url"][1], "an edge posting plays needs a token: set plays_token "
            "or plays_token_env (the origin answers 401 without one)"
        )
    if values.get("plays_url") and values.get("role", "edge") == "edge" and len(draft.name) > 64:
        raise ConfigError(
            file, merged["plays_url"][1], f"node name {quote(draft.name)} is longer than 64 "
            "characters: the origin refuses play batches from such a node (it names the batch)"
        )
    extra = values.pop("extra_ignore_query_params", frozenset())
    ignore = values.pop("ignore_query_params", DEFAULT_IGNORE_QUERY_PARAMS)
    build_nested(values, merged, file)  # limits, upstream_timeouts, steering: their dataclasses
    values["parents"] = _parent_refs(draft, drafts, file)
    values["fallback"] = _parent_refs(draft, drafts, file, "fallback")
    values["origins"] = tuple(origins[name] for name in draft.names("origins"))
    tokens = values.get("tokens")
    if tokens is not None:
        # A token is per viewer: its parameters never enter a key (so never a fill), and
        # rendered playlists carry the viewer's to every URI when the format allows it.
        params = token_query_params(tokens)
        extra = frozenset(extra | {param.lower() for param in params})
        if tokens.format in TOKEN_CARRIED_FORMATS:
            carried = values.get("carried_query_params", ())
            values["carried_query_params"] = tuple(dict.fromkeys((*carried, *params)))
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
    sources = {k: merged[k][1] for k in ("listen", "admin", "advertise", "admin_advertise")
               if k in merged}
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
        raise type_error(file, prefix, "a table", table)
    ctx = Context(file, os.environ if environ is None else environ)
    drafts = {name: _draft(name, [parse_layer(prefix, table, ctx)], file)}
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


def _machine(node: NodeConfig) -> str | None:
    """The host a node runs on, as far as the file tells: the host of its advertise address;
    None for a loopback one (reachable only from its own host, so it shares a host with every
    node that uses it). Nodes advertising different hosts run on different machines, so they
    may listen on the same address (the same file on every host: ``0.0.0.0:8080`` each)."""
    host = node.advertised()[0].lower()
    if host == "localhost":
        return None
    try:
        return None if ipaddress.ip_address(host).is_loopback else host
    except ValueError:
        return host


def _check_addresses(nodes: Mapping[str, tuple[NodeConfig, dict[str, str]]], file: str) -> None:
    """Refuse configs where two listeners share an address on one host: the second node would
    fail to bind at start-up, far from the line that caused it; and configs where two nodes
    advertise one address: a child would reach one of them under the other's name."""
    seen: list[tuple[tuple[str, int], str, str]] = []  # (address, node, dotted key)
    for name, (node, sources) in nodes.items():
        listeners = [((node.listen_host, node.listen_port), sources["listen"])]
        if node.admin_host is not None and node.admin_port is not None:
            listeners.append(((node.admin_host, node.admin_port), sources["admin"]))
        machine = _machine(node)
        for address, where in listeners:
            for other_address, other_name, other_where in seen:
                if not _clash(address, other_address):
                    continue
                other_machine = _machine(nodes[other_name][0])
                if machine is not None and other_machine is not None and machine != other_machine:
                    continue  # different hosts: each binds its own
                shown = format_address(*address)
                key = f"node.{name}.{where.rsplit('.', 1)[1]}"
                if other_name == name:
                    raise ConfigError(
                        file, key, f"node {quote(name)} uses {shown} for both listen and admin; "
                        "give the admin API its own port"
                    )
                raise ConfigError(
                    file, key, f"address {shown} is used by both node {quote(other_name)} "
                    f"({other_where}) and node {quote(name)} ({where}); each listener needs "
                    "its own address (nodes on different hosts: set advertise to each "
                    "node's own host)"
                )
            seen.append((address, name, where))
    advertised: dict[tuple[str, int], tuple[str, str]] = {}  # address → (node, dotted key)
    for name, (node, sources) in nodes.items():
        pairs = [(node.advertised(), sources.get("advertise", sources["listen"]))]
        admin = node.admin_advertised()
        if admin is not None:
            pairs.append((admin, sources.get("admin_advertise", sources["admin"])))
        for (host, port), where in pairs:
            if port == 0:
                continue  # a free port picked at start: never the same
            address = (host.lower(), port)
            if address in advertised:
                other_name, other_where = advertised[address]
                shown = format_address(host, port)
                key = f"node.{name}.{where.rsplit('.', 1)[1]}"
                owner = "itself" if other_name == name else f"node {quote(other_name)}"
                raise ConfigError(
                    file, key, f"node {quote(name)} is reached at {shown} ({where}), and so "
                    f"is {owner} ({other_where}); every node (and admin API) needs an address "
                    "of its own (nodes on different hosts: set advertise, or admin_advertise, "
                    "to each one's own host)"
                )
            advertised[address] = (name, where)


# --------------------------------------------------------------------------------------------
# Origins: ``[origin.NAME]`` tables (their keys: configkeys.ORIGIN_KEY_TABLE). Only a shield
# fetches from them; an origin no node uses is allowed (an operator may keep a spare one ready).


def _parse_origins(value: Any, ctx: Context) -> dict[str, OriginConfig]:
    file = ctx.file
    if not isinstance(value, dict):
        raise type_error(file, "origin", "tables written [origin.NAME]", value)
    origins: dict[str, OriginConfig] = {}
    for name, table in value.items():
        if not isinstance(table, dict):
            if name in ORIGIN_KEY_TABLE:
                raise ConfigError(
                    file, f"origin.{name}", f"{name} must be inside an origin's table: write "
                    f"[origin.NAME] then {name} = …"
                )
            raise type_error(file, f"origin.{name}", f"a table ([origin.{name}])", table)
        if not _NODE_NAME_RE.fullmatch(name):
            raise ConfigError(
                file, f"origin.{name}", f"bad origin name {quote(name)}: use letters, digits, "
                "- and _"
            )
        origins[name] = parse_origin(name, table, ctx)
    return origins


# --------------------------------------------------------------------------------------------
# Files.

#: Sections of the origin services (``reelcdn origin``, ``reelcdn worker``): kept as written
#: in :attr:`Topology.services` and validated by ``reelcdn.origin.config``.
SERVICE_SECTIONS = ("api", "queue", "catalog", "transcode", "cache")
_TOP_KEYS = ("defaults", "node", "origin", *SERVICE_SECTIONS)
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
    ctx = Context(file, os.environ if environ is None else environ, os.path.abspath(base_dir))
    doc = _parse_toml(text, file)
    for key in doc:
        if key not in _TOP_KEYS:
            hint = unknown_key(file, "", key, _TOP_KEYS).message
            raise ConfigError(
                file, key, hint + " (nodes are written [node.NAME], origins [origin.NAME])"
            )
    services: dict[str, dict[str, Any]] = {}
    for section in SERVICE_SECTIONS:
        if section in doc:
            if not isinstance(doc[section], dict):
                raise type_error(file, section, f"a table ([{section}])", doc[section])
            services[section] = doc[section]
    defaults_table = doc.get("defaults", {})
    if not isinstance(defaults_table, dict):
        raise type_error(file, "defaults", "a table ([defaults])", defaults_table)
    defaults = parse_layer("defaults", defaults_table, ctx)
    origins = _parse_origins(doc.get("origin", {}), ctx)
    node_tables = doc.get("node", {})
    if not isinstance(node_tables, dict):
        raise type_error(file, "node", "tables written [node.NAME]", node_tables)
    if not node_tables:
        raise ConfigError(
            file, "", "no nodes: describe at least one node in a [node.NAME] table"
        )
    drafts: dict[str, _Draft] = {}
    for name, table in node_tables.items():
        if not isinstance(table, dict):
            if name in NODE_KEYS:
                raise ConfigError(
                    file, f"node.{name}", f"{name} must be inside a node's table: write "
                    f"[node.NAME] then {name} = …, or put it in [defaults]"
                )
            raise type_error(file, f"node.{name}", f"a table ([node.{name}])", table)
        _check_node_name(name, file)
        layer = parse_layer(f"node.{name}", table, ctx)
        drafts[name] = _draft(name, [defaults, layer], file)
    return Topology(file=file, origins=origins, nodes=_build_nodes(drafts, origins, file),
                    services=services, base_dir=ctx.base_dir or os.getcwd())


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
            os.fspath(path), f"node.{name}", f"no node named {quote(name)} in this file; "
            f"{_suggest(name, nodes)}nodes are: " + ", ".join(nodes)
        )
    return nodes[name]
