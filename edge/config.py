"""Node configuration: the validated, typed form of one ``[node.NAME]`` table.

Operators describe nodes in one plain TOML file (DESIGN.md §3 "Operations")::

    [defaults]                      # optional: applies to every node unless the node sets the key
    cache_memory = "256MiB"

    [node.edge-a]
    listen = "127.0.0.1:8080"
    upstream = "http://127.0.0.1:8000"

    [[node.edge-a.ttl]]
    match = "*.m4s"
    ttl = "1d"

The loader follows the approach of shaka-streamer's validated config: the file is checked
completely before a node starts, and every problem is a :class:`ConfigError` naming the file, the
dotted key (``node.edge-a.cache_memory``) and what is wrong in words an operator understands. A
misspelt key is an error, never silently ignored, because an ignored ``cache_memroy`` would run a
node with a default the operator believes they changed.

The dataclasses below are the contract the rest of the node codes against; the loader only builds
them.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
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
    "ConfigError",
    "Limits",
    "NodeConfig",
    "TtlRule",
    "UpstreamTimeouts",
    "load_config_file",
    "load_node_config",
    "node_config_from_dict",
    "parse_address",
    "parse_duration",
    "parse_size",
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

#: The roles a node can play in the tier topology.
ROLES: tuple[str, ...] = ("edge", "regional", "shield")


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
    idle_timeout: float = 60.0               # keep-alive idle seconds
    send_timeout: float = 60.0               # a response write making no progress this long: close
    shutdown_grace: float = 10.0             # seconds to finish in-flight responses on shutdown


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    connect: float = 3.0
    first_byte: float = 10.0
    idle: float = 10.0       # between body chunks


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    listen_host: str
    listen_port: int
    admin_host: str | None
    admin_port: int | None
    upstream: str                      # base URL, e.g. "http://127.0.0.1:8000"
    role: str = "edge"                 # edge | regional | shield
    cache_memory: int = 256 * 1024 * 1024
    max_object_bytes: int = 64 * 1024 * 1024
    ttl_rules: tuple[TtlRule, ...] = ()
    ignore_query_params: frozenset[str] = DEFAULT_IGNORE_QUERY_PARAMS
    ignore_query_prefixes: tuple[str, ...] = ()
    host_in_key: bool = False
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

_NODE_KEYS: tuple[str, ...] = (
    "role",
    "listen",
    "admin",
    "upstream",
    "cache_memory",
    "max_object_size",
    "admin_token",
    "admin_token_env",
    "host_in_key",
    "honor_client_no_cache",
    "heuristic_fraction",
    "heuristic_max",
    "ignore_query_params",
    "extra_ignore_query_params",
    "ignore_query_prefixes",
    "server_names",
    "upstream_max_connections",
    "limits",
    "upstream_timeouts",
    "ttl",
)
_TABLE_KEYS = ("limits", "upstream_timeouts")
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


def _parse_layer(
    prefix: str, table: Mapping[str, Any], file: str, environ: Mapping[str, str]
) -> dict[str, _Sourced]:
    """Parse one table of node keys (a ``[node.NAME]`` or the ``[defaults]``) into
    ``{field: (value, dotted key)}``; only keys present in the table appear."""
    _check_keys(file, prefix, table, _NODE_KEYS)
    if "admin_token" in table and "admin_token_env" in table:
        raise ConfigError(
            file, f"{prefix}.admin_token_env", "set either admin_token or admin_token_env, not both"
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
        elif key == "cache_memory":
            put("cache_memory", parse_size(raw, file=file, key=dotted), key)
        elif key == "max_object_size":
            put("max_object_bytes", parse_size(raw, file=file, key=dotted), key)
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
        elif key in ("host_in_key", "honor_client_no_cache"):
            put(key, _parse_bool(raw, file, dotted), key)
        elif key == "heuristic_fraction":
            put(key, _parse_fraction(raw, file, dotted), key)
        elif key == "heuristic_max":
            put(key, parse_duration(raw, file=file, key=dotted), key)
        elif key in ("ignore_query_params", "extra_ignore_query_params"):
            names = _parse_str_list(raw, file, dotted, _query_name_checker(file, "parameter"))
            put(key, frozenset(names), key)
        elif key == "ignore_query_prefixes":
            put(key, _parse_str_list(raw, file, dotted, _query_name_checker(file, "prefix")), key)
        elif key == "server_names":
            put(key, _parse_str_list(raw, file, dotted, _server_name_checker(file)), key)
        elif key == "upstream_max_connections":
            put(key, _parse_int(raw, file, dotted, minimum=1), key)
        elif key == "limits":
            put(key, _parse_limits(raw, file, dotted), key)
        elif key == "upstream_timeouts":
            put(key, _parse_upstream_timeouts(raw, file, dotted), key)
        elif key == "ttl":
            put("ttl_rules", _parse_ttl_rules(raw, file, dotted), key)
        else:  # pragma: no cover - _NODE_KEYS and this chain are kept in step
            raise AssertionError(key)
    return out


def _merge(layers: list[dict[str, _Sourced]]) -> dict[str, _Sourced]:
    """Later layers win key by key; ``limits`` and ``upstream_timeouts`` merge field by field,
    so ``[defaults.limits]`` can set one limit and a node another."""
    merged: dict[str, _Sourced] = {}
    for layer in layers:
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


def _build_node(
    name: str, layers: list[dict[str, _Sourced]], file: str
) -> tuple[NodeConfig, dict[str, str]]:
    """Build a node from parsed layers; also return where listen/admin came from, for the
    duplicate-address check across nodes."""
    merged = _merge(layers)
    for required, example in (("listen", '"127.0.0.1:8080"'), ("upstream", '"http://origin:80"')):
        if required not in merged:
            raise ConfigError(
                file, f"node.{name}.{required}", f"missing: every node needs {required} "
                f"(e.g. {required} = {example})"
            )
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
    node = NodeConfig(
        name=name,
        listen_host=listen_host,
        listen_port=listen_port,
        admin_host=admin_host,
        admin_port=admin_port,
        ignore_query_params=frozenset(ignore | extra),
        source_file=file,
        **values,
    )
    origins = {k: merged[k][1] for k in ("listen", "admin") if k in merged}
    return node, origins


def node_config_from_dict(
    name: str,
    table: Mapping[str, Any],
    *,
    file: str = "<dict>",
    environ: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Validate one node's table (as TOML would parse it) into a :class:`NodeConfig`.

    Used for configs built in code (tests, the embedded defaults of ``reelcdn up``) so they get
    exactly the checks a file gets. ``environ`` defaults to ``os.environ`` (for
    ``admin_token_env``).
    """
    _check_node_name(name, file)
    prefix = f"node.{name}"
    if not isinstance(table, Mapping):
        raise _type_error(file, prefix, "a table", table)
    env = os.environ if environ is None else environ
    node, origins = _build_node(name, [_parse_layer(prefix, table, file, env)], file)
    _check_addresses({name: (node, origins)}, file)
    return node


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
    for name, (node, origins) in nodes.items():
        listeners = [((node.listen_host, node.listen_port), origins["listen"])]
        if node.admin_host is not None and node.admin_port is not None:
            listeners.append(((node.admin_host, node.admin_port), origins["admin"]))
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
# Files.

_TOP_KEYS = ("defaults", "node")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def _read_toml(file: str) -> dict[str, Any]:
    try:
        with open(file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read the config file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            file, "", f"the config file is not UTF-8 text (bad byte at offset {exc.start})"
        ) from None
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


def load_config_file(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> dict[str, NodeConfig]:
    """Load and validate every ``[node.NAME]`` of a topology file, in file order.

    The whole file is validated even when one node is wanted: nodes of one topology start
    together, and a mistake in any of them should surface before the first one binds.
    """
    file = os.fspath(path)
    env = os.environ if environ is None else environ
    doc = _read_toml(file)
    for key in doc:
        if key not in _TOP_KEYS:
            hint = _unknown_key(file, "", key, _TOP_KEYS).message
            raise ConfigError(file, key, hint + " (nodes are written [node.NAME])")
    defaults_table = doc.get("defaults", {})
    if not isinstance(defaults_table, dict):
        raise _type_error(file, "defaults", "a table ([defaults])", defaults_table)
    defaults = _parse_layer("defaults", defaults_table, file, env)
    node_tables = doc.get("node", {})
    if not isinstance(node_tables, dict):
        raise _type_error(file, "node", "tables written [node.NAME]", node_tables)
    if not node_tables:
        raise ConfigError(
            file, "", "no nodes: describe at least one node in a [node.NAME] table"
        )
    nodes: dict[str, tuple[NodeConfig, dict[str, str]]] = {}
    for name, table in node_tables.items():
        if not isinstance(table, dict):
            if name in _NODE_KEYS:
                raise ConfigError(
                    file, f"node.{name}", f"{name} must be inside a node's table: write "
                    f"[node.NAME] then {name} = …, or put it in [defaults]"
                )
            raise _type_error(file, f"node.{name}", f"a table ([node.{name}])", table)
        _check_node_name(name, file)
        layer = _parse_layer(f"node.{name}", table, file, env)
        nodes[name] = _build_node(name, [defaults, layer], file)
    _check_addresses(nodes, file)
    return {name: node for name, (node, _) in nodes.items()}


def load_node_config(
    path: str | os.PathLike[str], name: str, *, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    """Load one node of a topology file (the whole file is validated, see
    :func:`load_config_file`)."""
    nodes = load_config_file(path, environ=environ)
    if name not in nodes:
        close = difflib.get_close_matches(name, list(nodes), n=1)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        raise ConfigError(
            os.fspath(path), f"node.{name}", f"no node named {_quote(name)} in this file; "
            f"{hint}nodes are: " + ", ".join(nodes)
        )
    return nodes[name]
