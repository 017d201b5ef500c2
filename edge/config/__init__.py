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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reelcdn.edge.config.keys import (
    NODE_KEYS,
    ORIGIN_KEY_TABLE,
    SOURCE_KEYS,
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
    FAILED,
    ConfigError,
    ConfigErrors,
    Problems,
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
    "ConfigErrors",
    "HEALTH_PATH",
    "HealthConfig",
    "Limits",
    "NodeConfig",
    "OriginConfig",
    "ParentRef",
    "Problems",
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
    """A node between parsing and building: its merged layers, before names are resolved.

    ``failed`` holds the fields whose value did not parse (or named nothing usable); they are
    left out of ``merged``, and a check that needs one of them is skipped, so a bad value gives
    one error rather than a train of follow-on ones."""

    name: str
    merged: dict[str, Sourced]
    failed: set[str] = field(default_factory=set)

    @property
    def role(self) -> str:
        return str(self.merged["role"][0]) if "role" in self.merged else "edge"

    def ok(self, *keys: str) -> bool:
        """Whether none of ``keys`` failed."""
        return not self.failed.intersection(keys)

    def fail(self, key: str) -> None:
        self.failed.add(key)
        self.merged.pop(key, None)

    def names(self, key: str) -> tuple[str, ...]:
        return tuple(self.merged[key][0]) if key in self.merged else ()

    def item_key(self, key: str, index: int) -> str:
        """The dotted key of one list item, where the operator wrote it (maybe [defaults])."""
        return f"{self.merged[key][1]}[{index}]"


def _draft(name: str, layers: list[dict[str, Sourced]], file: str, problems: Problems) -> _Draft:
    merged = merge_layers(layers)
    failed = {k for k, (value, _) in merged.items() if value is FAILED}
    draft = _Draft(name, {k: v for k, v in merged.items() if k not in failed}, failed)
    if "listen" not in draft.merged and draft.ok("listen"):
        problems.add(ConfigError(
            file, f"node.{name}.listen", 'missing: every node needs listen (e.g. listen = '
            '"127.0.0.1:8080")'
        ))
    disk = draft.merged.get("cache_disk")
    if disk is not None and disk[0] > 0 and "cache_dir" not in draft.merged and draft.ok(
        "cache_dir"
    ):
        problems.add(ConfigError(
            file, f"node.{name}.cache_dir", f"missing: {disk[1]} asks for a disk tier, which "
            'needs cache_dir, the directory for its files (e.g. cache_dir = '
            '"/var/cache/reelcdn"; created if missing)'
        ))
    return draft


@dataclass(frozen=True, slots=True)
class _Names:
    """What node and origin names mean in this file: ``nodes`` and ``origins`` are the drafts
    and parsed origins; ``known_*`` every name the file gives a table, those that failed too
    (naming one is no error of its own), or None when the file's tables could not be read."""

    nodes: Mapping[str, _Draft]
    origins: Mapping[str, OriginConfig]
    known_nodes: frozenset[str] | None
    known_origins: frozenset[str] | None


def _check_sources(names: _Names, file: str, problems: Problems) -> None:
    """Each node fetches from the right kind of thing for its role, by names that exist. A list
    found wrong here is not used further (no cycle or parent check on it)."""
    drafts, origins = names.nodes, names.origins
    bad: set[str] = set()  # of the node being checked: lists not to use further

    def report(key: str, message: str, unusable: str | None = None) -> None:
        problems.add(ConfigError(file, key, message))
        if unusable is not None:
            bad.add(unusable)

    for name, draft in drafts.items():
        role, merged = draft.role, draft.merged
        sources_ok = draft.ok(*SOURCE_KEYS)
        bad.clear()

        if not draft.ok("role"):
            pass  # which sources fit is unknown
        elif role == "shield":
            if "parents" in merged:
                report(merged["parents"][1], 'a shield fetches from origins; use role = '
                       '"regional" for a node with parents', "parents")
            if sources_ok and "upstream" not in merged and "origins" not in merged:
                report(f"node.{name}.origins", 'missing: a shield needs origins, e.g. '
                       'origins = ["main"] with an [origin.main] table (or an upstream URL)')
        else:
            if "origins" in merged:
                report(merged["origins"][1], f"{article(role)} fetches from parents (or an "
                       'upstream URL); only a shield fetches from origins: set role = "shield" '
                       "or list parents", "origins")
            if sources_ok and "upstream" not in merged and "parents" not in merged:
                report(f"node.{name}.parents", f"missing: {article(role)} needs parents (or "
                       'an upstream URL), e.g. parents = ["regional-1"] or upstream = '
                       '"http://127.0.0.1:8000"')
        known_nodes = names.known_nodes
        for i, parent in enumerate(draft.names("parents") if "parents" not in bad else ()):
            key = draft.item_key("parents", i)
            if parent == name:
                inherited = " (from [defaults]: give it its own parents)" if key.startswith(
                    "defaults."
                ) else ""
                report(key, f"node {quote(name)} lists itself as a parent{inherited}; a "
                       "parent is a node closer to the origin", "parents")
            elif known_nodes is not None and parent not in known_nodes:
                hint = _suggest(parent, drafts)
                if not hint and parent in origins:
                    hint = f"{quote(parent)} is an origin: only a shield lists origins. "
                report(key, f"unknown parent {quote(parent)}: {hint}nodes in this file are: "
                       + ", ".join(drafts), "parents")
        if "parents" in bad:
            draft.fail("parents")
        if not _check_fallback(draft, names, file, problems):
            draft.fail("fallback")
        known_origins = names.known_origins
        for i, origin in enumerate(draft.names("origins") if "origins" not in bad else ()):
            if known_origins is None or origin in known_origins:
                continue
            key = draft.item_key("origins", i)
            if not known_origins:
                report(key, f"unknown origin {quote(origin)}: this file has no origins; "
                       f"add an [origin.{origin}] table with type = " + " | ".join(ORIGIN_TYPES),
                       "origins")
                continue
            hint = _suggest(origin, known_origins)
            if not hint and origin in drafts:
                hint = f"{quote(origin)} is a node: list nodes in parents. "
            report(key, f"unknown origin {quote(origin)}: {hint}origins in this file "
                   "are: " + ", ".join(known_origins), "origins")
        if "origins" in bad:
            draft.fail("origins")


def _check_fallback(draft: _Draft, names: _Names, file: str, problems: Problems) -> bool:
    """``fallback`` names other nodes of the file, tried after the parents: so only a node with
    parents has one, and it names neither the node itself nor one of its parents. False when
    something was wrong (reported)."""
    if "fallback" not in draft.merged or not draft.ok("parents"):
        return True
    before = len(problems)
    if "parents" not in draft.merged:
        problems.add(ConfigError(
            file, draft.merged["fallback"][1], "fallback nodes are tried after the parents; "
            f"{article(draft.role)} without parents has none (a shield's failover is its "
            "origins list)"
        ))
        return False
    parents = draft.names("parents")
    drafts = names.nodes
    for i, node in enumerate(draft.names("fallback")):
        key = draft.item_key("fallback", i)
        if node == draft.name:
            problems.add(ConfigError(file, key, f"node {quote(node)} lists itself as a fallback"))
        elif names.known_nodes is not None and node not in names.known_nodes:
            problems.add(ConfigError(
                file, key, f"unknown fallback node {quote(node)}: {_suggest(node, drafts)}"
                "nodes in this file are: " + ", ".join(drafts)
            ))
        elif node in parents:
            problems.add(ConfigError(
                file, key, f"{quote(node)} is a parent already (a parent is tried before any "
                "fallback); list it in one of parents and fallback"
            ))
    return len(problems) == before


_UPSTREAM_NODE_KEYS = ("parents", "fallback")
_CYCLE_WHAT = {"parents": "parents", "fallback": "parents and fallback nodes"}


def _check_cycles(drafts: Mapping[str, _Draft], file: str, problems: Problems) -> None:
    """Refuse parents (or fallback nodes) that lead back to the node: each request would loop
    through the tiers until a timeout. The message spells out the whole loop, first node in
    file order first; each loop is reported once."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        draft = drafts[name]
        for parent in (*draft.names("parents"), *draft.names("fallback")):
            if parent not in drafts:
                continue  # a node whose table failed: nothing to follow
            if state.get(parent) == 1:
                loop = [*path[path.index(parent):], parent]
                first = drafts[loop[0]]
                what = next(k for k in _UPSTREAM_NODE_KEYS if loop[1] in first.names(k))
                index = first.names(what).index(loop[1])
                problems.add(ConfigError(
                    file, first.item_key(what, index), f"{_CYCLE_WHAT[what]} form a cycle: "
                    + " → ".join(loop) + "; every parent (and fallback node) must be closer to "
                    "the origin than its children"
                ))
            elif parent not in state:
                visit(parent)
        path.pop()
        state[name] = 2

    for name in drafts:
        if name not in state:
            visit(name)


def _parent_refs(
    draft: _Draft, drafts: Mapping[str, _Draft], file: str, problems: Problems,
    what: str = "parents",
) -> tuple[ParentRef, ...] | None:
    """Resolve parent (or fallback) names to URLs; a parent must be a tier closer to the
    origin. None when one cannot be resolved (reported, unless its own table failed)."""
    refs: list[ParentRef] = []
    label = "parent" if what == "parents" else "fallback node"
    resolved = True
    for i, parent_name in enumerate(draft.names(what)):
        key = draft.item_key(what, i)
        parent = drafts.get(parent_name)
        if parent is None or "listen" not in parent.merged or not parent.ok("advertise"):
            resolved = False  # its own table failed: reported there
            continue
        if parent.ok("role") and parent.role not in ("regional", "shield"):
            problems.add(ConfigError(
                file, key, f"{label} {quote(parent_name)} of node {quote(draft.name)} is "
                f"{article(parent.role)}; a {label} must be a regional or a shield"
            ))
            resolved = False
            continue
        # Children reach a parent at its advertise address (the listen address by default,
        # with a wildcard as loopback: right only when parent and child share a host).
        host, port = parent.merged.get("advertise", parent.merged["listen"])[0]
        if port == 0:
            problems.add(ConfigError(
                file, key, f"parent {quote(parent_name)} listens on port 0 (a free port picked "
                f"at start), so its children cannot find it: give {parent.merged['listen'][1]} "
                "a fixed port"
            ))
            resolved = False
            continue
        refs.append(ParentRef(name=parent_name, url=http_base((reachable_host(host), port))))
    return tuple(refs) if resolved else None


_ADDRESS_KEYS = ("listen", "admin", "advertise", "admin_advertise")


@dataclass(frozen=True, slots=True)
class _Built:
    """A node built from its draft. ``complete`` is False when some of its values failed: the
    node then has their defaults, good for checks of the values that did parse (addresses,
    when ``addresses_ok``) but never for running."""

    node: NodeConfig
    sources: dict[str, str]
    complete: bool
    addresses_ok: bool


def _build_node(
    draft: _Draft,
    drafts: Mapping[str, _Draft],
    origins: Mapping[str, OriginConfig],
    file: str,
    problems: Problems,
) -> _Built | None:
    """Build a node from its checked draft; also return where listen/admin came from, for the
    duplicate-address check across nodes. None when it cannot be built at all (no listen)."""
    merged = draft.merged
    if "listen" not in merged:
        return None
    before = len(problems)
    values = {k: v for k, (v, _) in merged.items()}
    listen_host, listen_port = values.pop("listen")
    admin_host, admin_port = values.pop("admin", (None, None))
    role_ok = draft.ok("role")
    if "admin_advertise" in merged and admin_host is None and draft.ok("admin"):
        problems.add(ConfigError(
            file, merged["admin_advertise"][1], "admin_advertise names where the admin API is "
            'reached, but this node has none: set admin too (e.g. admin = "0.0.0.0:9100")'
        ))
    edge_posting = role_ok and values.get("plays_url") and values.get("role", "edge") == "edge"
    if (edge_posting and not values.get("plays_token")
            and draft.ok("plays_token", "plays_token_env")):
        problems.add(ConfigError(
            file, merged["plays_url"][1], "an edge posting plays needs a token: set plays_token "
            "or plays_token_env (the origin answers 401 without one)"
        ))
    if edge_posting and len(draft.name) > 64:
        problems.add(ConfigError(
            file, merged["plays_url"][1], f"node name {quote(draft.name)} is longer than 64 "
            "characters: the origin refuses play batches from such a node (it names the batch)"
        ))
    extra = values.pop("extra_ignore_query_params", frozenset())
    ignore = values.pop("ignore_query_params", DEFAULT_IGNORE_QUERY_PARAMS)
    build_nested(values, merged, file, problems)  # limits, upstream_timeouts, steering, tokens
    unresolved = False
    for what in ("parents", "fallback"):
        refs = _parent_refs(draft, drafts, file, problems, what)
        values[what] = refs if refs is not None else ()
        unresolved |= refs is None
    values["origins"] = tuple(origins[name] for name in draft.names("origins") if name in origins)
    unresolved |= len(values["origins"]) != len(draft.names("origins"))
    failed_values = {k for k, v in values.items() if v is FAILED}
    for key in failed_values:
        del values[key]
    tokens = values.get("tokens")
    if tokens is not None:
        # A token is per viewer: its parameters never enter a key (so never a fill), and
        # rendered playlists carry the viewer's to every URI when the format allows it.
        params = token_query_params(tokens)
        extra = frozenset(extra | {param.lower() for param in params})
        if tokens.format in TOKEN_CARRIED_FORMATS:
            carried = values.get("carried_query_params", ())
            values["carried_query_params"] = tuple(dict.fromkeys((*carried, *params)))
    complete = not (draft.failed or failed_values or unresolved or len(problems) > before)
    try:
        node = NodeConfig(
            name=draft.name,
            listen_host=listen_host,
            listen_port=listen_port,
            admin_host=admin_host,
            admin_port=admin_port,
            upstream=values.pop("upstream", None),
            # Carried parameters (tokens) are per viewer: they must never split the cache.
            ignore_query_params=frozenset(
                ignore | extra | set(values.get("carried_query_params", ()))
            ),
            source_file=file,
            **values,
        )
    except (TypeError, ValueError):
        if complete:
            raise
        return None  # built from what parsed only for the checks: not even that
    sources = {k: merged[k][1] for k in _ADDRESS_KEYS if k in merged}
    return _Built(node, sources, complete, draft.ok(*_ADDRESS_KEYS))


def _build_nodes(names: _Names, file: str, problems: Problems) -> dict[str, NodeConfig]:
    """Check the nodes against each other and build them, in file order. Nodes with problems
    are left out of the result (the caller raises), but still checked against the others with
    the values that parsed."""
    drafts = names.nodes
    _check_sources(names, file, problems)
    _check_cycles(drafts, file, problems)
    built = {}
    for name, draft in drafts.items():
        node = _build_node(draft, drafts, names.origins, file, problems)
        if node is not None:
            built[name] = node
    _check_addresses({n: b for n, b in built.items() if b.addresses_ok}, file, problems)
    return {name: b.node for name, b in built.items() if b.complete}


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
    ``os.environ`` (for ``admin_token_env``). Every problem is raised at once
    (:class:`ConfigErrors`).
    """
    problems = Problems(file)
    _check_node_name(name, file)
    prefix = f"node.{name}"
    if not isinstance(table, Mapping):
        raise type_error(file, prefix, "a table", table)
    ctx = Context(file, os.environ if environ is None else environ)
    drafts = {name: _draft(name, [parse_layer(prefix, table, ctx, problems)], file, problems)}
    nodes = _build_nodes(_Names(drafts, {}, frozenset(drafts), frozenset()), file, problems)
    problems.raise_if_any()
    return nodes[name]


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


def _check_addresses(nodes: Mapping[str, _Built], file: str, problems: Problems) -> None:
    """Refuse configs where two listeners share an address on one host: the second node would
    fail to bind at start-up, far from the line that caused it; and configs where two nodes
    advertise one address: a child would reach one of them under the other's name."""
    seen: list[tuple[tuple[str, int], str, str]] = []  # (address, node, dotted key)
    clashed: set[tuple[str, str]] = set()  # (node, dotted key): reported, not again below
    for name, built in nodes.items():
        node, sources = built.node, built.sources
        listeners = [((node.listen_host, node.listen_port), sources["listen"])]
        if node.admin_host is not None and node.admin_port is not None:
            listeners.append(((node.admin_host, node.admin_port), sources["admin"]))
        machine = _machine(node)
        for address, where in listeners:
            for other_address, other_name, other_where in seen:
                if not _clash(address, other_address):
                    continue
                other_machine = _machine(nodes[other_name].node)
                if machine is not None and other_machine is not None and machine != other_machine:
                    continue  # different hosts: each binds its own
                shown = format_address(*address)
                key = f"node.{name}.{where.rsplit('.', 1)[1]}"
                if other_name == name:
                    problems.add(ConfigError(
                        file, key, f"node {quote(name)} uses {shown} for both listen and admin; "
                        "give the admin API its own port"
                    ))
                else:
                    problems.add(ConfigError(
                        file, key, f"address {shown} is used by both node {quote(other_name)} "
                        f"({other_where}) and node {quote(name)} ({where}); each listener needs "
                        "its own address (nodes on different hosts: set advertise to each "
                        "node's own host)"
                    ))
                clashed.add((name, where))
                break  # one clash per listener is enough
            seen.append((address, name, where))
    advertised: dict[tuple[str, int], tuple[str, str]] = {}  # address → (node, dotted key)
    for name, built in nodes.items():
        node, sources = built.node, built.sources
        pairs = [(node.advertised(), sources.get("advertise", sources["listen"]))]
        admin = node.admin_advertised()
        if admin is not None:
            pairs.append((admin, sources.get("admin_advertise", sources["admin"])))
        for (host, port), where in pairs:
            if port == 0 or (name, where) in clashed:
                continue  # port 0 is picked at start, never the same; a clash is reported
            address = (host.lower(), port)
            if address in advertised:
                other_name, other_where = advertised[address]
                shown = format_address(host, port)
                key = f"node.{name}.{where.rsplit('.', 1)[1]}"
                owner = "itself" if other_name == name else f"node {quote(other_name)}"
                problems.add(ConfigError(
                    file, key, f"node {quote(name)} is reached at {shown} ({where}), and so "
                    f"is {owner} ({other_where}); every node (and admin API) needs an address "
                    "of its own (nodes on different hosts: set advertise, or admin_advertise, "
                    "to each one's own host)"
                ))
                continue
            advertised[address] = (name, where)


# --------------------------------------------------------------------------------------------
# Origins: ``[origin.NAME]`` tables (their keys: configkeys.ORIGIN_KEY_TABLE). Only a shield
# fetches from them; an origin no node uses is allowed (an operator may keep a spare one ready).


def _parse_origins(
    value: Any, ctx: Context, problems: Problems
) -> tuple[dict[str, OriginConfig], frozenset[str] | None]:
    """The origins that parsed, and the names of every origin table (None: ``origin`` is not a
    table of tables, so no name can be checked against them)."""
    file = ctx.file
    if not isinstance(value, dict):
        problems.add(type_error(file, "origin", "tables written [origin.NAME]", value))
        return {}, None
    origins: dict[str, OriginConfig] = {}
    for name, table in value.items():
        if not isinstance(table, dict):
            if name in ORIGIN_KEY_TABLE:
                problems.add(ConfigError(
                    file, f"origin.{name}", f"{name} must be inside an origin's table: write "
                    f"[origin.NAME] then {name} = …"
                ))
            else:
                problems.add(type_error(file, f"origin.{name}", f"a table ([origin.{name}])",
                                        table))
            continue
        if not _NODE_NAME_RE.fullmatch(name):
            problems.add(ConfigError(
                file, f"origin.{name}", f"bad origin name {quote(name)}: use letters, digits, "
                "- and _"
            ))
            continue
        origin = problems.attempt(parse_origin, name, table, ctx)
        if origin is not FAILED:
            origins[name] = origin
    return origins, frozenset(value)


# --------------------------------------------------------------------------------------------
# Files.

#: Sections of the origin services (``reelcdn origin``, ``reelcdn worker``): kept as written
#: in :attr:`Topology.services` and validated by ``reelcdn.origin.config``.
SERVICE_SECTIONS = ("api", "queue", "catalog", "transcode", "cache")
_TOP_KEYS = ("defaults", "node", "origin", *SERVICE_SECTIONS)
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")

#: More checks of a file, run by the loader on what parsed (``reelcdn.origin.config``'s
#: service sections): they record their problems with the loader's, so one list says all.
Check = Callable[[Topology, Problems], object]


def _read_text(file: str) -> str:
    try:
        with open(file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigErrors([ConfigError(
            file, "", f"cannot read the config file: {exc.strerror or exc}"
        )]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors([ConfigError(
            file, "", f"the config file is not UTF-8 text (bad byte at offset {exc.start})"
        )]) from None


def _parse_toml(text: str, file: str) -> dict[str, Any]:
    """The TOML document; a syntax error is the one problem reported (nothing after it can be
    read), with its line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise ConfigErrors([ConfigError(file, "", f"TOML syntax error: {message}")]) from None
        line_no, column = int(position[1]), int(position[2])
        reason = message[: position.start()].rstrip()
        lines = text.splitlines()
        shown = lines[line_no - 1].strip() if 0 < line_no <= len(lines) else ""
        detail = f": {shown}" if shown else ""
        raise ConfigErrors([ConfigError(
            file, "", f"TOML syntax error at line {line_no}, column {column}: {reason}{detail}",
            line=line_no,
        )]) from None


def topology_from_text(
    text: str,
    *,
    file: str = "<embedded>",
    base_dir: str,
    environ: Mapping[str, str] | None = None,
    check: Check | None = None,
) -> Topology:
    """Validate a whole topology given as TOML text.

    ``file`` names the text in messages; ``base_dir`` is where relative paths (an fs origin's
    ``root``) are resolved — the file's directory for a file, the data directory for the
    embedded default. The whole text is validated even when one node is wanted: nodes of one
    topology start together, and a mistake in any of them should surface before the first binds.

    Every problem is found before one :class:`ConfigErrors` lists them all, each with the line
    of its key: a bad value is reported and the next key parsed; the checks across nodes and
    origins run on what parsed, skipping those that need a value that did not. ``check`` (the
    origin services' sections) runs last, on a topology of what parsed, adding its problems to
    the same list.
    """
    problems = Problems(file, text)
    ctx = Context(file, os.environ if environ is None else environ, os.path.abspath(base_dir))
    doc = _parse_toml(text, file)
    for key in doc:
        if key not in _TOP_KEYS:
            hint = unknown_key(file, "", key, _TOP_KEYS).message
            problems.add(ConfigError(
                file, key, hint + " (nodes are written [node.NAME], origins [origin.NAME])"
            ))
    services: dict[str, dict[str, Any]] = {}
    for section in SERVICE_SECTIONS:
        if section in doc:
            if not isinstance(doc[section], dict):
                problems.add(type_error(file, section, f"a table ([{section}])", doc[section]))
            else:
                services[section] = doc[section]
    defaults_table = doc.get("defaults", {})
    defaults_ok = isinstance(defaults_table, dict)
    if not defaults_ok:
        problems.add(type_error(file, "defaults", "a table ([defaults])", defaults_table))
        defaults_table = {}
    defaults = parse_layer("defaults", defaults_table, ctx, problems)
    origins, origin_names = _parse_origins(doc.get("origin", {}), ctx, problems)
    node_tables = doc.get("node", {})
    if not isinstance(node_tables, dict):
        problems.add(type_error(file, "node", "tables written [node.NAME]", node_tables))
        node_tables = {}
    elif not node_tables:
        problems.add(ConfigError(
            file, "", "no nodes: describe at least one node in a [node.NAME] table"
        ))
    drafts: dict[str, _Draft] = {}
    for name, table in node_tables.items():
        if not isinstance(table, dict):
            if name in NODE_KEYS:
                problems.add(ConfigError(
                    file, f"node.{name}", f"{name} must be inside a node's table: write "
                    f"[node.NAME] then {name} = …, or put it in [defaults]"
                ))
            else:
                problems.add(type_error(file, f"node.{name}", f"a table ([node.{name}])", table))
            continue
        name_ok = problems.attempt(_check_node_name, name, file) is not FAILED
        layer = parse_layer(f"node.{name}", table, ctx, problems)
        if name_ok and defaults_ok:  # else what it inherits is unknown: its own keys only
            drafts[name] = _draft(name, [defaults, layer], file, problems)
    nodes: dict[str, NodeConfig] = {}
    if defaults_ok:
        names = _Names(drafts, origins, frozenset(node_tables), origin_names)
        nodes = _build_nodes(names, file, problems)
    topology = Topology(file=file, origins=origins, nodes=nodes, services=services,
                        base_dir=ctx.base_dir or os.getcwd())
    if check is not None:
        check(topology, problems)
    problems.raise_if_any()
    return topology


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
    check: Check | None = None,
) -> Topology:
    """Load and validate a topology file; with ``path=None``, the embedded default.

    A file's relative paths resolve against the file's own directory, never ``data_dir``:
    ``reelcdn up`` and every node process it starts load the same file, and they must agree on
    where the origin is. ``data_dir`` is the base of the embedded default (required then).
    Problems are raised all at once, as one :class:`ConfigErrors` (see
    :func:`topology_from_text`, and for ``check``).
    """
    if path is None:
        if data_dir is None:
            raise ValueError("load_topology(None) loads the embedded default and needs data_dir")
        return topology_from_text(default_topology_text(), base_dir=data_dir, environ=environ,
                                  check=check)
    file = os.fspath(path)
    text = _read_text(file)
    base_dir = os.path.dirname(os.path.abspath(file))
    return topology_from_text(text, file=file, base_dir=base_dir, environ=environ, check=check)


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
        raise ConfigErrors([ConfigError(
            os.fspath(path), f"node.{name}", f"no node named {quote(name)} in this file; "
            f"{_suggest(name, nodes)}nodes are: " + ", ".join(nodes)
        )])
    return nodes[name]
