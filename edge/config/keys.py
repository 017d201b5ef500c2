"""The topology file's keys, as tables: each key once, with its parser, its field and its doc.

A row (:class:`Key`) says everything about one key: the TOML name, the model field the parsed
value goes to, the parser with its bounds, a one-line doc, and how layers combine. The rest is
derived from the rows: the keys a table accepts (a misspelt one is refused with a suggestion), the
dispatch from key to parser, the merging of ``[defaults]`` with ``[node.NAME]``, the building of
nested values, and the Markdown reference (:func:`reference_markdown`, docs/configuration.md).
Adding a node key is adding a :class:`NodeConfig` field and one row of :data:`NODE_KEY_TABLE`.

Keys whose parsing is special (addresses, the admin token from the environment, ``cache_dir``
resolved against the file's directory, the source keys that replace each other, nested tables,
TTL rules) are rows like the others, with their own parser. Every parser takes
``(value, context, dotted key)`` and either returns the value or raises :class:`ConfigError`;
none of them depends on another key, so a loop over a table's keys (``parse_layer``) is the one
place that decides what happens on an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reelcdn.edge.config.model import (
    ORIGIN_HEALTH,
    ORIGIN_TYPES,
    ROLES,
    HealthConfig,
    Limits,
    NodeConfig,
    OriginConfig,
    SteeringConfig,
    TokenConfig,
    TtlRule,
    UpstreamTimeouts,
)
from reelcdn.edge.config.values import (
    FAILED,
    ConfigError,
    Problems,
    check_token,
    describe,
    field_name_checker,
    parse_address,
    parse_bool,
    parse_carried,
    parse_duration,
    parse_fraction,
    parse_int,
    parse_origin_url,
    parse_size,
    parse_str_list,
    parse_upstream_url,
    query_name_checker,
    quote,
    server_name_checker,
    type_error,
    unknown_key,
)

__all__ = [
    "HEALTH_KEY_TABLE",
    "LIMIT_DOCS",
    "NODE_KEYS",
    "NODE_KEY_TABLE",
    "ORIGIN_KEY_TABLE",
    "SOURCE_KEYS",
    "STEERING_KEY_TABLE",
    "TTL_KEY_TABLE",
    "UPSTREAM_TIMEOUT_KEY_TABLE",
    "Context",
    "Key",
    "Sourced",
    "article",
    "limit_key_table",
    "merge_layers",
    "parse_layer",
    "parse_origin",
    "reference_markdown",
    "reference_sections",
]

# A parsed value together with the dotted key it came from.
Sourced = tuple[Any, str]


@dataclass(frozen=True, slots=True)
class Context:
    """What a parser may need besides the value: the file (for messages), the environment (for
    ``admin_token_env``) and the directory relative paths resolve against (None: the working
    directory)."""

    file: str
    environ: Mapping[str, str]
    base_dir: str | None = None


#: ``parse(value, context, dotted_key) -> parsed value``; raises :class:`ConfigError`.
Parser = Callable[[Any, Context, str], Any]
#: ``build(merged value, dotted key, file) -> model value``, once the layers are merged.
Builder = Callable[[Any, str, str], Any]


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a table of the file.

    ``field`` is where the parsed value goes: a field of the model, or a name the node builder
    folds into one (``listen`` → ``listen_host``/``listen_port``, ``extra_ignore_query_params``
    → ``ignore_query_params``). ``kind`` names type and bounds for the reference; ``default``
    is the reference's default when the model's field default says it badly (None: use that).
    ``merge`` is how a node's layer combines with ``[defaults]``: ``"replace"`` (the node's
    value wins), ``"fields"`` (a nested table, merged field by field) or ``"source"`` (one of
    the keys saying where a node fetches from: setting any replaces all of them). ``build``
    turns the merged value into the model's (nested tables into their dataclass).
    """

    name: str
    field: str
    parse: Parser
    kind: str
    doc: str
    default: str | None = None
    merge: str = "replace"
    build: Builder | None = None


# --------------------------------------------------------------------------------------------
# Parser makers: the common kinds of value, with their bounds, and their name in the reference.


def _size(*, positive: bool = False) -> tuple[Parser, str]:
    def parse(value: Any, ctx: Context, key: str) -> int:
        size = parse_size(value, file=ctx.file, key=key)
        if positive and size == 0:
            raise ConfigError(ctx.file, key, "must be larger than 0")
        return size

    return parse, "size > 0" if positive else "size"


def _duration(*, zero_message: str | None = None) -> tuple[Parser, str]:
    """A duration; with ``zero_message``, 0 is refused with it (a timer that never waits)."""

    def parse(value: Any, ctx: Context, key: str) -> float:
        seconds = parse_duration(value, file=ctx.file, key=key)
        if zero_message is not None and seconds == 0:
            raise ConfigError(ctx.file, key, zero_message)
        return seconds

    return parse, "duration > 0" if zero_message else "duration"


def _count(minimum: int, maximum: int | None = None) -> tuple[Parser, str]:
    def parse(value: Any, ctx: Context, key: str) -> int:
        return parse_int(value, ctx.file, key, minimum=minimum, maximum=maximum)

    return parse, f"integer {minimum}..{maximum}" if maximum is not None else f"integer ≥ {minimum}"


def _flag() -> tuple[Parser, str]:
    def parse(value: Any, ctx: Context, key: str) -> bool:
        return parse_bool(value, ctx.file, key)

    return parse, "boolean"


def _fraction() -> tuple[Parser, str]:
    def parse(value: Any, ctx: Context, key: str) -> float:
        return parse_fraction(value, ctx.file, key)

    return parse, "number 0..1"


def _query_names(what: str, *, as_set: bool) -> tuple[Parser, str]:
    """Query parameter names or prefixes, lowercased (compared case-insensitively)."""

    def parse(value: Any, ctx: Context, key: str) -> Any:
        names = parse_str_list(value, ctx.file, key, query_name_checker(ctx.file, what))
        return frozenset(names) if as_set else names

    return parse, "array of strings"


def _special(parse: Parser, kind: str) -> tuple[Parser, str]:
    return parse, kind


def _key(
    name: str,
    spec: tuple[Parser, str],
    doc: str,
    *,
    field: str | None = None,
    default: str | None = None,
    merge: str = "replace",
    build: Builder | None = None,
) -> Key:
    parse, kind = spec
    return Key(name, field or name, parse, kind, doc, default, merge, build)


def _table(*keys: Key) -> dict[str, Key]:
    table = {key.name: key for key in keys}
    assert len(table) == len(keys), "a key is listed twice"
    return table


# --------------------------------------------------------------------------------------------
# Special node keys.


def _parse_role(value: Any, ctx: Context, key: str) -> str:
    if not isinstance(value, str):
        raise type_error(ctx.file, key, "a string (" + " | ".join(ROLES) + ")", value)
    if value not in ROLES:
        close = difflib.get_close_matches(value, ROLES, n=1)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        raise ConfigError(
            ctx.file, key, f"unknown role {quote(value)}: {hint}use one of " + ", ".join(ROLES)
        )
    return value


def _parse_address(value: Any, ctx: Context, key: str) -> tuple[str, int]:
    return parse_address(value, file=ctx.file, key=key)


def _parse_advertise(value: Any, ctx: Context, key: str) -> tuple[str, int]:
    """An address other hosts connect to: a fixed port, and a host that names one machine
    (a wildcard is where a node listens, never where anyone can reach it)."""
    host, port = parse_address(value, file=ctx.file, key=key)
    if host in ("0.0.0.0", "::"):
        raise ConfigError(
            ctx.file, key, f"bad address {quote(value)}: {host} is not an address to connect "
            "to; give the host name or IP other hosts reach this node at (e.g. "
            f'"10.0.0.5:{port}")'
        )
    if port == 0:
        raise ConfigError(
            ctx.file, key, f"bad address {quote(value)}: other nodes connect to this port, so "
            "it must be fixed (1..65535)"
        )
    return host, port


def _parse_upstream(value: Any, ctx: Context, key: str) -> str:
    return parse_upstream_url(value, ctx.file, key)


def _name_list(what: str, example: str) -> tuple[Parser, str]:
    """``parents`` / ``origins``: a non-empty array of names, in order (the order is the
    failover order of origins), each listed once. A name listed twice is refused rather than
    collapsed, since it usually stands where a different name was meant."""

    def parse(value: Any, ctx: Context, key: str) -> tuple[str, ...]:
        file = ctx.file
        if not isinstance(value, list):
            raise type_error(file, key, f"an array of {what} names, e.g. {example}", value)
        if not value:
            raise ConfigError(file, key, f"must list at least one {what}, e.g. {example}")
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            item_key = f"{key}[{i}]"
            if not isinstance(item, str):
                raise type_error(file, item_key, f"a {what} name (a string)", item)
            if not item.strip():
                raise ConfigError(file, item_key, f"{what} name must not be empty")
            if item in seen:
                raise ConfigError(
                    file, item_key, f"{what} {quote(item)} is listed twice (also at "
                    f"{key}[{seen[item]}]); list each {what} once"
                )
            seen[item] = i
        return tuple(seen)

    return parse, f"array of {what} names"


def _parse_cache_dir(value: Any, ctx: Context, key: str) -> str:
    """An absolute path, resolved against the file's directory (the working directory for a
    node built in code); it must be a directory if it exists (it is created otherwise)."""
    if not isinstance(value, str):
        raise type_error(ctx.file, key, 'a directory path like "/var/cache/reelcdn"', value)
    if not value.strip():
        raise ConfigError(ctx.file, key, "must not be empty")
    path = os.path.normpath(os.path.join(
        ctx.base_dir if ctx.base_dir is not None else os.getcwd(),
        os.path.expanduser(value.strip()),
    ))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(ctx.file, key, f"{quote(path)} exists and is not a directory")
    return path


def _parse_access_log(value: Any, ctx: Context, key: str) -> str | None:
    """``"off"`` (or empty): no access log; ``"stdout"``; else a file path, resolved against
    the file's directory, whose directory must exist (the file is created, appended to)."""
    if value is False:
        return None
    if not isinstance(value, str):
        raise type_error(ctx.file, key, '"off", "stdout" or a file path', value)
    text = value.strip()
    if not text or text == "off":
        return None
    if text == "stdout":
        return text
    path = os.path.normpath(os.path.join(
        ctx.base_dir if ctx.base_dir is not None else os.getcwd(), os.path.expanduser(text),
    ))
    if os.path.isdir(path):
        raise ConfigError(ctx.file, key, f"{quote(path)} is a directory, not a file")
    if not os.path.isdir(os.path.dirname(path)):
        raise ConfigError(ctx.file, key,
                          f"directory {quote(os.path.dirname(path))} does not exist")
    return path


def _parse_access_log_format(value: Any, ctx: Context, key: str) -> str:
    if value not in ("json", "combined"):
        raise ConfigError(ctx.file, key, f'must be "json" or "combined", got {value!r}')
    return str(value)


def _parse_admin_token(value: Any, ctx: Context, key: str) -> str:
    if not isinstance(value, str):
        raise type_error(ctx.file, key, "a string", value)
    return check_token(value, ctx.file, key)


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _parse_admin_token_env(value: Any, ctx: Context, key: str) -> str:
    """The admin token, read from the environment variable named here (not the name)."""
    if not isinstance(value, str):
        raise type_error(ctx.file, key, "the name of an environment variable", value)
    if not _ENV_NAME_RE.fullmatch(value):
        raise ConfigError(ctx.file, key, f"{quote(value)} is not an environment variable name")
    if value not in ctx.environ:
        raise ConfigError(
            ctx.file, key, f"environment variable {value} is not set (it should hold the admin "
            "token)"
        )
    return check_token(ctx.environ[value], ctx.file, key)


def _parse_plays_url(value: Any, ctx: Context, key: str) -> str | None:
    """Where an edge posts its play counts: an http(s) URL with a host and a path (the
    origin's ingest endpoint, e.g. ``http://127.0.0.1:8300/api/v1/plays``); empty: off."""
    if not isinstance(value, str):
        raise type_error(ctx.file, key, 'a URL like "http://127.0.0.1:8300/api/v1/plays"', value)
    text = value.strip()
    if not text:
        return None
    try:
        url = urllib.parse.urlsplit(text)
        url.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise ConfigError(ctx.file, key, f"bad URL {quote(value)}: {exc}") from None
    if url.scheme.lower() not in ("http", "https"):
        raise ConfigError(ctx.file, key, f"bad URL {quote(value)}: use an http:// or https:// "
                          'URL, e.g. "http://127.0.0.1:8300/api/v1/plays"')
    if not url.hostname:
        raise ConfigError(ctx.file, key, f"bad URL {quote(value)}: missing host")
    if url.username is not None or url.password is not None:
        raise ConfigError(ctx.file, key, f"bad URL {quote(value)}: credentials are not allowed "
                          "in the URL (set plays_token or plays_token_env)")
    if url.fragment:
        raise ConfigError(ctx.file, key, f"bad URL {quote(value)}: a fragment is not sent")
    return text


def _plays_token(token: str, ctx: Context, key: str) -> str:
    if not token:
        raise ConfigError(ctx.file, key, "plays token must not be empty")
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in token):
        raise ConfigError(
            ctx.file, key, "plays token must be printable ASCII without spaces (it is sent in an "
            "Authorization: Bearer header)"
        )
    return token


def _parse_plays_token(value: Any, ctx: Context, key: str) -> str:
    if not isinstance(value, str):
        raise type_error(ctx.file, key, "a string", value)
    return _plays_token(value, ctx, key)


def _parse_plays_token_env(value: Any, ctx: Context, key: str) -> str:
    """The plays token, read from the environment variable named here (not the name)."""
    if not isinstance(value, str):
        raise type_error(ctx.file, key, "the name of an environment variable", value)
    if not _ENV_NAME_RE.fullmatch(value):
        raise ConfigError(ctx.file, key, f"{quote(value)} is not an environment variable name")
    if value not in ctx.environ:
        raise ConfigError(
            ctx.file, key, f"environment variable {value} is not set (it should hold the plays "
            "token)"
        )
    return _plays_token(ctx.environ[value], ctx, key)


def _parse_fill_headers(value: Any, ctx: Context, key: str) -> frozenset[str]:
    names = parse_str_list(value, ctx.file, key, field_name_checker(ctx.file))
    return frozenset(name.lower() for name in names)


def _parse_server_names(value: Any, ctx: Context, key: str) -> tuple[str, ...]:
    return parse_str_list(value, ctx.file, key, server_name_checker(ctx.file))


_CORS_ORIGIN_RE = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")


def _parse_cors_origins(value: Any, ctx: Context, key: str) -> tuple[str, ...]:
    """``cors_origins``: ``["*"]`` alone, or origins as browsers send them in ``Origin``
    (scheme, host and port only, lower case: no path, no trailing slash)."""

    def check(item: str, item_key: str) -> str:
        if item == "*" or _CORS_ORIGIN_RE.fullmatch(item):
            return item
        hint = ""
        if _CORS_ORIGIN_RE.fullmatch(item.lower().rstrip("/")):
            hint = f' (write {quote(item.lower().rstrip("/"))}: browsers send it so)'
        raise ConfigError(ctx.file, item_key, f"bad origin {quote(item)}: \"*\" or "
                          f'scheme://host[:port] like "https://www.example.com"{hint}')

    origins = parse_str_list(value, ctx.file, key, check)
    if "*" in origins and len(origins) > 1:
        raise ConfigError(ctx.file, key, '"*" allows every origin: list it alone or not at all')
    return origins


def _parse_carried(value: Any, ctx: Context, key: str) -> tuple[str, ...]:
    return parse_carried(value, ctx.file, key)


# --------------------------------------------------------------------------------------------
# Nested tables: a table of keys of its own, parsed into ``{field: (value, dotted key)}`` so that
# ``[defaults.X]`` and ``[node.NAME.X]`` merge field by field, and built once merged.


def _subtable(rows: Callable[[], Mapping[str, Key]]) -> Parser:
    """A nested table's parser: every bad key of the table is reported (one
    :class:`ConfigErrors`), not only the first."""

    def parse(value: Any, ctx: Context, key: str) -> dict[str, Sourced]:
        if not isinstance(value, dict):
            raise type_error(ctx.file, key, f"a table ([{key}])", value)
        table = rows()
        problems = Problems(ctx.file)
        out: dict[str, Sourced] = {}
        for name, raw in value.items():
            sub = f"{key}.{name}"
            if name not in table:
                problems.add(unknown_key(ctx.file, key, name, table))
                continue
            row = table[name]
            out[row.field] = (problems.attempt(row.parse, raw, ctx, sub), sub)
        problems.raise_if_any()
        return out

    return parse


def _build_fields(model: type) -> Builder:
    def build(merged: dict[str, Sourced], where: str, file: str) -> Any:
        return model(**{name: value for name, (value, _) in merged.items()})

    return build


# Byte limits of zero would refuse every request; they must be positive.
_POSITIVE_SIZES = frozenset({"max_head_bytes", "max_target_bytes"})


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
    return parse_int(value, file, key, minimum=1)


def _limit_kind(name: str, type_name: str) -> str:
    if name.endswith("_bytes"):
        return "size > 0" if name in _POSITIVE_SIZES else "size"
    if type_name == "float":
        return "duration > 0" if name.endswith("_timeout") else "duration"
    return "integer ≥ 1"


#: One line per ``Limits`` field, for the reference. A field added to ``Limits`` is parsed by
#: its name (``_parse_limit``) at once, but tests/test_config.py fails until it has a line here
#: and in docs/configuration.md.
LIMIT_DOCS: dict[str, str] = {
    "max_head_bytes": "Request line and headers; larger: 431.",
    "max_target_bytes": "Request target; longer: 414.",
    "max_body_bytes": "Request body; larger: 413.",
    "max_headers": "Header fields in a request; more: 431.",
    "max_connections": "Open client connections; beyond: 503 and close.",
    "max_pipelined": "Requests queued on one connection before the node stops reading it.",
    "header_timeout": "Time to receive a complete request head.",
    "body_timeout": "Time to receive a whole request body, from the end of its head.",
    "body_min_rate_bytes": "Body bytes per second, averaged from the head's end; slower: 408.",
    "body_rate_grace": "How long a body may take before body_min_rate_bytes applies.",
    "idle_timeout": "Keep-alive: how long an idle connection stays open.",
    "send_timeout": "A response write making no progress this long closes the connection.",
    "shutdown_grace": "On shutdown, time left to finish the responses in flight.",
}


def limit_key_table() -> dict[str, Key]:
    """The ``limits`` keys, one per ``Limits`` field, parsed by naming convention."""
    rows = []
    for f in dataclasses.fields(Limits):
        type_name = str(f.type)

        def parse(value: Any, ctx: Context, key: str, *, _n: str = f.name,
                  _t: str = type_name) -> Any:
            return _parse_limit(_n, _t, value, ctx.file, key)

        rows.append(Key(f.name, f.name, parse, _limit_kind(f.name, type_name),
                        LIMIT_DOCS.get(f.name, "")))
    return _table(*rows)


_TIMEOUT = _duration(zero_message="timeout must be larger than 0")

UPSTREAM_TIMEOUT_KEY_TABLE: dict[str, Key] = _table(
    _key("connect", _TIMEOUT, "Time to open a connection upstream."),
    _key("first_byte", _TIMEOUT, "Time from sending a request to the response's first byte."),
    _key("idle", _TIMEOUT, "Time between two chunks of a response body."),
)

_HEALTH_PATH_RE = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")


def _parse_health_path(value: Any, ctx: Context, key: str) -> str:
    """The path (and query) a health check GETs: absolute, no spaces, quotes or fragment."""
    if not isinstance(value, str) or not _HEALTH_PATH_RE.fullmatch(value):
        raise type_error(ctx.file, key, 'an absolute path like "/__reelcdn/health"', value)
    return value


HEALTH_KEY_TABLE: dict[str, Key] = _table(
    _key("checks", _flag(), "Check parents, fallback nodes and a shield's http origins actively; "
         "false: only passive marking (parent_failures, parent_retry_after)."),
    _key("path", _special(_parse_health_path, "path"),
         "What a check GETs; a node answers it from its data plane without its cache "
         "(other http origins: any answer below 500 passes)."),
    _key("interval", _TIMEOUT, "Time between two checks of one upstream."),
    _key("timeout", _TIMEOUT, "A check without an answer this long fails."),
    _key("rise", _count(1), "Passed checks in a row that put a down upstream back."),
    _key("fall", _count(1), "Failed checks in a row that take an upstream out."),
)

# Content steering (rfc8216bis §4.4.6.6). The same rules as reelcdn.manifests' Steering and
# Pathway, checked here so that a bad value is a ConfigError naming its key before a node starts.
_PATHWAY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# Characters that cannot be copied into a quoted playlist attribute or a URI line.
_URI_UNSAFE_RE = re.compile(r'[\s"#\\\x00-\x1f\x7f-\x9f]')
_STEERING_EXAMPLE = (
    '[node.NAME.steering] server_uri = "/steer/{video_id}.json" and '
    '[node.NAME.steering.pathways] edge-a = "", backup = "https://cdn-b.example.com"'
)


def _parse_steering_uri(value: Any, ctx: Context, key: str) -> str:
    """``server_uri``: where players fetch the steering manifest; ``{video_id}`` is the only
    placeholder. A URI reference (absolute, or relative to the master), without fragment,
    spaces or quotes; a query is allowed (carried tokens are appended with ``&``)."""
    file = ctx.file
    if not isinstance(value, str):
        raise type_error(file, key, 'a URI string like "/steer/{video_id}.json"', value)
    text = value.strip()
    if not text:
        raise ConfigError(file, key, "must not be empty (leave server_uri out for no steering)")
    bad = f"bad steering server URI {quote(value)}"
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


def _parse_initial(value: Any, ctx: Context, key: str) -> str:
    if not isinstance(value, str):
        raise type_error(ctx.file, key, "a PATHWAY-ID (a string)", value)
    return value


def _parse_pathway_base(value: Any, file: str, key: str) -> str:
    """A pathway's base: ``""`` (relative URIs: the host that served the master), an http(s)
    URL or an absolute path, to which ``/v/{id}/…`` is appended."""
    if not isinstance(value, str):
        raise type_error(file, key, 'a base URL like "https://cdn-b.example.com", or ""', value)
    text = value.strip()
    if not text:
        return ""
    if _URI_UNSAFE_RE.search(text):
        raise ConfigError(file, key, f"bad pathway base {quote(value)}: no spaces, quotes, "
                          "backslashes or fragment (#)")
    if text.startswith("/") and not text.startswith("//"):
        if "?" in text:
            raise ConfigError(file, key, f"bad pathway base {quote(value)}: no query allowed")
        return text.rstrip("/")
    return parse_origin_url(text, file, key, what="pathway base", allow_path=True)


def _parse_pathways(value: Any, ctx: Context, key: str) -> tuple[tuple[str, str], ...]:
    """``[….steering.pathways]``: PATHWAY-ID → base, in file order (the first is the default)."""
    file = ctx.file
    if not isinstance(value, dict):
        raise type_error(file, key, f"a table ([{key}]) of PATHWAY-ID = base URL, e.g. "
                         'edge-a = "", backup = "https://cdn-b.example.com"', value)
    if not value:
        raise ConfigError(file, key, "must list at least one pathway")
    pathways = []
    for pathway, base in value.items():
        shown = pathway if _BARE_KEY_RE.fullmatch(pathway) else quote(pathway)
        pkey = f"{key}.{shown}"
        if not _PATHWAY_ID_RE.fullmatch(pathway):
            raise ConfigError(file, pkey, f"bad PATHWAY-ID {quote(pathway)}: use 1 to 64 "
                              "letters, digits, '.', '_' and '-'")
        pathways.append((pathway, _parse_pathway_base(base, file, pkey)))
    return tuple(pathways)


def _parse_health_path(value: Any, ctx: Context, key: str) -> str:
    """``health_path``: an absolute path (a query allowed) GET on each pathway's base."""
    if not isinstance(value, str):
        raise type_error(ctx.file, key, 'an absolute path like "/health.txt"', value)
    text = value.strip()
    if not text.startswith("/") or text.startswith("//") or _URI_UNSAFE_RE.search(text):
        raise ConfigError(ctx.file, key, f"bad health path {quote(value)}: an absolute path "
                          'like "/health.txt", without spaces, quotes or fragment')
    return text


def _parse_health_urls(value: Any, ctx: Context, key: str) -> tuple[tuple[str, str], ...]:
    """``[….steering.health_urls]``: PATHWAY-ID → the URL its check GETs."""
    file = ctx.file
    if not isinstance(value, dict):
        raise type_error(file, key, f"a table ([{key}]) of PATHWAY-ID = URL, e.g. "
                         'backup = "https://cdn-b.example.com/health"', value)
    urls = []
    for pathway, url in value.items():
        shown = pathway if _BARE_KEY_RE.fullmatch(pathway) else quote(pathway)
        urls.append((pathway, parse_origin_url(url, file, f"{key}.{shown}",
                                               what="health URL", allow_path=True)))
    return tuple(urls)


STEERING_KEY_TABLE: dict[str, Key] = _table(
    _key("server_uri", _special(_parse_steering_uri, "URI"),
         "Where players fetch the steering manifest (`{video_id}` is replaced); none: no steering. "
         "The node answers it at that path (docs/steering.md).",
         default="none"),
    _key("ttl", _count(1, 3600),
         "Seconds players wait before reloading the steering manifest (its TTL).", default="10"),
    _key("health_path", _special(_parse_health_path, "path"),
         "Path GET on each pathway's base to check its health (a base of `\"\"` or a path: "
         "this node's listener); none: only pathways in health_urls are checked.",
         default="none"),
    _key("health_urls", _special(_parse_health_urls, "table PATHWAY-ID = URL"),
         "A pathway's own health URL, instead of base + health_path.", default="none"),
    _key("health_interval", _duration(zero_message="interval must be larger than 0"),
         "Time between two health checks of a pathway.", default="2s"),
    _key("health_timeout", _duration(zero_message="timeout must be larger than 0"),
         "A health check not answered within this fails.", default="1s"),
    _key("down_after", _count(1, 100),
         "Failed checks in a row that put a pathway down (last in PATHWAY-PRIORITY).",
         default="2"),
    _key("up_after", _count(1, 100), "Passed checks in a row that put a down pathway up again.",
         default="2"),
    _key("initial", _special(_parse_initial, "PATHWAY-ID"),
         "The pathway players start on; one of pathways.", default="the first pathway"),
    _key("pathways", _special(_parse_pathways, "table PATHWAY-ID = base"),
         'Pathways in order; base is `""` (the serving host), an http(s) URL or an absolute path.',
         default="required"),
)


def _build_steering(merged: dict[str, Sourced], where: str, file: str) -> SteeringConfig:
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
            raise ConfigError(file, initial_key, f"initial pathway {quote(initial)} is not one "
                              "of the pathways: " + ", ".join(ids))
    server_uri = merged["server_uri"][0] if "server_uri" in merged else None
    if "health_urls" in merged:
        urls, urls_key = merged["health_urls"]
        ids = [pathway for pathway, _ in pathways]
        for pathway, _ in urls:
            if pathway not in ids:
                raise ConfigError(file, f"{urls_key}.{pathway}", f"{quote(pathway)} is not one "
                                  "of the pathways: " + ", ".join(ids))
    checks = {name: value for name, (value, _) in merged.items()
              if name not in ("pathways", "initial", "server_uri")}
    return SteeringConfig(pathways=pathways, server_uri=server_uri, initial=initial, **checks)


# --------------------------------------------------------------------------------------------
# Signed URLs: ``[node.NAME.tokens]`` (docs/tokens.md).

TOKEN_FORMATS = ("native", "akamai", "cloudfront", "nginx_md5")
TOKEN_SOURCES = ("query", "cookie", "header")
_TOKEN_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MIN_SECRET = 16


def _parse_token_format(value: Any, ctx: Context, key: str) -> str:
    if value not in TOKEN_FORMATS:
        raise ConfigError(ctx.file, key, f"unknown token format {describe(value)}: use one of "
                          + ", ".join(TOKEN_FORMATS))
    return str(value)


def _parse_token_keys(value: Any, ctx: Context, key: str) -> dict[str, bytes]:
    """``{KID = "secret"}``; a value starting ``-----BEGIN`` is PEM text (cloudfront public
    keys), one ending ``.pem`` a file read now (relative to the config file's directory)."""
    if not isinstance(value, dict) or not value:
        raise type_error(ctx.file, key, 'a table of key id = "secret", e.g. { k1 = "…" }',
                         value)
    keys: dict[str, bytes] = {}
    for kid, secret in value.items():
        sub = f"{key}.{kid}"
        if not _TOKEN_KID_RE.fullmatch(kid):
            raise ConfigError(ctx.file, sub, "key ids are 1-64 of A-Z a-z 0-9 _ -")
        if not isinstance(secret, str):
            raise type_error(ctx.file, sub, "a string", secret)
        if secret.endswith(".pem") and not secret.startswith("-----BEGIN"):
            path = secret if os.path.isabs(secret) else os.path.join(ctx.base_dir or ".", secret)
            try:
                with open(path, "rb") as fh:
                    keys[kid] = fh.read()
            except OSError as exc:
                raise ConfigError(ctx.file, sub, f"cannot read {path}: {exc.strerror or exc}"
                                  ) from None
            continue
        if len(secret) < _MIN_SECRET and not secret.startswith("-----BEGIN"):
            raise ConfigError(ctx.file, sub, f"a secret of at least {_MIN_SECRET} characters, "
                              "please: tokens are forged by guessing it")
        keys[kid] = secret.encode()
    return keys


def _parse_token_globs(value: Any, ctx: Context, key: str) -> tuple[str, ...]:
    def check(item: str, item_key: str) -> str:
        if not item.startswith("/") and not item.startswith("*"):
            raise ConfigError(ctx.file, item_key, f"a glob on the request path, starting with "
                              f"/ or *: got {quote(item)}")
        return item

    return parse_str_list(value, ctx.file, key, check)


#: Bounds of ``slice_size`` (besides 0, off): below 64 KiB a request per slice costs more
#: than the bytes it saves; above 256 MiB a slice is no longer a part of an object.
SLICE_MIN = 64 * 1024
SLICE_MAX = 256 * 1024 * 1024


def _parse_slice_size(value: Any, ctx: Context, key: str) -> int:
    size = parse_size(value, file=ctx.file, key=key)
    if size != 0 and not SLICE_MIN <= size <= SLICE_MAX:
        raise ConfigError(ctx.file, key, "0 (off) or a size from 64KiB to 256MiB, e.g. "
                          f"\"1MiB\": got {size} bytes")
    return size


def _parse_token_sources(value: Any, ctx: Context, key: str) -> tuple[str, ...]:
    def check(item: str, item_key: str) -> str:
        if item not in TOKEN_SOURCES:
            raise ConfigError(ctx.file, item_key, f"unknown source {quote(item)}: use "
                              + ", ".join(TOKEN_SOURCES))
        return item

    sources = parse_str_list(value, ctx.file, key, check)
    if not sources:
        raise ConfigError(ctx.file, key, "name at least one place a token may come from")
    return sources


def _parse_token_name(value: Any, ctx: Context, key: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise type_error(ctx.file, key, "a name of A-Z a-z 0-9 _ . -", value)
    return value


def _parse_token_option(value: Any, ctx: Context, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise type_error(ctx.file, key, "a non-empty string", value)
    return value


TOKEN_KEY_TABLE: dict[str, Key] = _table(
    _key("format", _special(_parse_token_format, "string"),
         "`native`, `akamai`, `cloudfront` or `nginx_md5`.", default="required"),
    _key("keys", _special(_parse_token_keys, "table KID = secret"),
         "Keys accepted, by id (cloudfront: PEM public keys, or paths to .pem files); a "
         "reload retires the ones removed.", default="required"),
    _key("current_key", _special(_parse_token_name, "key id"),
         "The key `reelcdn sign` signs with.", default="the first key"),
    _key("protect", _special(_parse_token_globs, "array of globs"),
         "Request paths that need a token.", default='`["/v/*"]`'),
    _key("exempt", _special(_parse_token_globs, "array of globs"),
         "Protected paths that need none after all.", default='`["/v/*/poster.jpg"]`'),
    _key("sources", _special(_parse_token_sources, "array of strings"),
         "Where a token may come from: `query`, `cookie`, `header`.",
         default='`["query", "cookie"]`'),
    _key("query_param", _special(_parse_token_name, "string"),
         "The token's query parameter.", default="the format's (`token`, `hdnts`, …)"),
    _key("cookie", _special(_parse_token_name, "string"), "The token's cookie.",
         default="the format's (`reelcdn_token`, `__token__`, …)"),
    _key("header", _special(_parse_token_name, "string"), "The token's request field (native).",
         default="`Reelcdn-Token`"),
    _key("clock_skew", _duration(), "Tolerance on `exp` and `nbf`.", default="`30s`"),
    _key("algorithm", _special(_parse_token_option, "string"),
         "akamai: the HMAC's hash, `sha256`, `sha1` or `md5`.", default="`sha256`"),
    _key("expression", _special(_parse_token_option, "string"),
         "nginx_md5: what is hashed, as nginx's `secure_link_md5`.",
         default="required for nginx_md5"),
    _key("scheme", _special(_parse_token_option, "string"),
         "cloudfront: the scheme of the URLs viewers sign (`https`).", default="`https`"),
)

_TOKEN_OPTIONS = {"algorithm": "akamai", "expression": "nginx_md5", "scheme": "cloudfront"}


def _build_tokens(merged: dict[str, Sourced], where: str, file: str) -> TokenConfig:
    """The merged ``tokens`` fields as a :class:`TokenConfig`: a format and keys are required,
    ``current_key`` must be one of the keys, options only for their format."""
    for required in ("format", "keys"):
        if required not in merged:
            raise ConfigError(file, f"{where}.{required}", "missing: [tokens] needs a format "
                              'and its keys, e.g. format = "native" and keys = { k1 = "…" }')
    fmt, _ = merged["format"]
    keys, keys_key = merged["keys"]
    if fmt == "cloudfront":  # public keys: a bad PEM is refused now, not on every request
        from reelcdn.edge.auth.cloudfront import load_public_key

        for kid, pem in keys.items():
            try:
                load_public_key(pem)
            except ValueError as exc:
                raise ConfigError(file, f"{keys_key}.{kid}", f"cloudfront: {exc}") from None
    if fmt == "akamai":  # EdgeAuth keys are hex: the HMAC key is the bytes they spell
        from reelcdn.edge.auth.akamai import secret_from_hex

        try:
            keys = {kid: secret_from_hex(secret.decode()) for kid, secret in keys.items()}
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(file, keys_key, f"akamai: {exc}") from None
    values: dict[str, Any] = {"format": fmt, "keys": keys}
    options: dict[str, Any] = {}
    for name, (value, key) in merged.items():
        if name in _TOKEN_OPTIONS:
            if _TOKEN_OPTIONS[name] != fmt:
                raise ConfigError(file, key, f"{name} is an option of the "
                                  f"{_TOKEN_OPTIONS[name]} format, not of {fmt}")
            options[name] = value
        elif name not in ("format", "keys"):
            values[name] = value
    if fmt == "nginx_md5":
        if "expression" not in options:
            raise ConfigError(file, f"{where}.expression", "missing: nginx_md5 needs the "
                              'expression nginx hashes, e.g. "$secure_link_expires$uri '
                              '$remote_addr $secret"')
        from reelcdn.edge.auth.nginx_md5 import Expression

        try:
            Expression.parse(options["expression"])
        except ValueError as exc:
            raise ConfigError(file, merged["expression"][1], str(exc)) from None
    current = values.get("current_key")
    if current is not None and current not in keys:
        raise ConfigError(file, merged["current_key"][1], f"{quote(current)} is not one of the "
                          "keys: " + ", ".join(keys))
    if "header" in values and fmt != "native":
        raise ConfigError(file, merged["header"][1], "tokens in a request field are read for "
                          "the native format only")
    return TokenConfig(**values, options=options)


# --------------------------------------------------------------------------------------------
# TTL rules: ``[[node.NAME.ttl]]``, an array of tables, each parsed with its own key table.


def _parse_match(value: Any, ctx: Context, key: str) -> str:
    if not isinstance(value, str):
        raise type_error(ctx.file, key, 'a glob string like "*.m4s"', value)
    if not value.strip():
        raise ConfigError(ctx.file, key, "pattern must not be empty")
    if value[0] not in "/*?[":
        raise ConfigError(
            ctx.file, key, f"pattern {quote(value)} can never match: it is matched against the "
            f'whole request path, which starts with "/"; did you mean "*/{value}"?'
        )
    return value


def _parse_statuses(value: Any, ctx: Context, key: str) -> frozenset[int]:
    if not isinstance(value, list):
        raise type_error(ctx.file, key, "an array of status codes, e.g. [404]", value)
    if not value:
        raise ConfigError(ctx.file, key, "must list at least one status code")
    return frozenset(
        parse_int(code, ctx.file, f"{key}[{j}]", minimum=100, maximum=599)
        for j, code in enumerate(value)
    )


TTL_KEY_TABLE: dict[str, Key] = _table(
    _key("match", _special(_parse_match, "glob"),
         'Glob on the whole request path, e.g. `"*.m4s"` or `"/v/*/seg_*.m4s"`.'),
    _key("ttl", _duration(), "How long matching responses stay fresh, whatever the origin says."),
    _key("statuses", _special(_parse_statuses, "array of status codes"),
         "Response codes the rule applies to (list 404 etc. for negative caching)."),
    _key("force", _flag(), "Store matching responses even when no-store, private or Set-Cookie."),
)
# The keys every rule needs: the fields of TtlRule without a default.
_TTL_REQUIRED = tuple(
    f.name for f in dataclasses.fields(TtlRule)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def _parse_ttl_rules(value: Any, ctx: Context, key: str) -> tuple[TtlRule, ...]:
    """Parse ``[[node.X.ttl]]`` rules, in file order (the first matching rule applies); each
    rule's keys in table order."""
    file = ctx.file
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ConfigError(
            file, key, f"expected an array of tables ([[{key}]] with match and ttl), got "
            f"{describe(value)}"
        )
    rules: list[TtlRule] = []
    problems = Problems(file)  # every bad key of every rule, not only the first
    for i, rule in enumerate(value):
        prefix = f"{key}[{i}]"
        for name in rule:
            if name not in TTL_KEY_TABLE:
                problems.add(unknown_key(file, prefix, name, TTL_KEY_TABLE))
        for required in _TTL_REQUIRED:
            if required not in rule:
                problems.add(ConfigError(file, f"{prefix}.{required}", "missing: every TTL rule "
                                         'needs match and ttl, e.g. match = "*.m4s", ttl = "1d"'))
        fields = {
            row.field: problems.attempt(row.parse, rule[name], ctx, f"{prefix}.{name}")
            for name, row in TTL_KEY_TABLE.items() if name in rule
        }
        if not problems:
            rules.append(TtlRule(**fields))
    problems.raise_if_any()
    return tuple(rules)


# --------------------------------------------------------------------------------------------
# Node keys: ``[defaults]`` and ``[node.NAME]``.

NODE_KEY_TABLE: dict[str, Key] = _table(
    _key("role", _special(_parse_role, " | ".join(ROLES)),
         "The node's tier: edges serve players, regionals and shields are parents, shields "
         "fetch from origins."),
    _key("listen", _special(_parse_address, "host:port"),
         "Address the node serves on (IPv6 in brackets; port 0 picks a free port).",
         default="required"),
    _key("admin", _special(_parse_address, "host:port"),
         "Address of the admin API (health, metrics, purge, reload); none: no admin API.",
         default="none"),
    _key("advertise", _special(_parse_advertise, "host:port"),
         "Address other nodes (children) reach this node at, e.g. its host's name or IP.",
         default="listen (0.0.0.0 / :: as loopback)"),
    _key("admin_advertise", _special(_parse_advertise, "host:port"),
         "Address other hosts' tools (the origin API's purge, loadtest) reach the admin API at.",
         default="admin (0.0.0.0 / :: as loopback)"),
    _key("upstream", _special(_parse_upstream, "http://host:port"),
         "Fetch from this URL outside the file. Set one of upstream, parents, origins.",
         default="none", merge="source"),
    _key("parents", _name_list("parent", '["regional-1"]'),
         "Fetch from these regionals or shields of the file, chosen per object by HRW.",
         merge="source"),
    _key("origins", _name_list("origin", '["main"]'),
         "A shield's origins ([origin.NAME]), in failover order.", merge="source"),
    _key("parent_retry_after",
         _duration(zero_message="must be larger than 0 (a failed parent is skipped this long)"),
         "How long a failed parent (or origin) is skipped."),
    _key("parent_failures", _count(1),
         "Consecutive errors or 5xx that mark a parent (or origin) down."),
    _key("fallback", _name_list("fallback node", '["shield-1"]'),
         "Regionals or shields of the file tried, in order, when no parent answers "
         "(docs/failover.md).", default="`[]`"),
    _key("health", _special(_subtable(lambda: HEALTH_KEY_TABLE), "table"),
         "Active health checks of upstreams, see health below.", default="see below",
         merge="fields", build=_build_fields(HealthConfig)),
    _key("cache_memory", _size(), "Memory for cached objects."),
    _key("max_object_size", _size(), "Larger responses are streamed through, not stored.",
         field="max_object_bytes"),
    _key("sendfile_min_size", _size(),
         "Stored bodies this large live in memory files and are sent with sendfile(2); 0: never.",
         field="sendfile_min_bytes"),
    _key("cache_disk", _size(),
         "Disk tier for memory's evicted large bodies, at most this much; 0: no disk tier."),
    _key("slice_size", _special(_parse_slice_size, "0 or size 64KiB..256MiB"),
         "Fetch and store objects of slice_paths in aligned slices of this size (Range "
         "requests upstream, docs/slices.md); 0: off."),
    _key("slice_paths", _special(_parse_token_globs, "array of globs"),
         "Request paths fetched in slices when slice_size > 0.", default='`["*.mp4"]`'),
    _key("cache_dir", _special(_parse_cache_dir, "path"),
         "Directory of the disk tier (relative to the file; created if missing).",
         default="none"),
    _key("admin_token", _special(_parse_admin_token, "string"),
         "Bearer token the admin API requires; prefer admin_token_env.", default="none"),
    _key("admin_token_env", _special(_parse_admin_token_env, "environment variable name"),
         "Read the admin token from this environment variable.", field="admin_token",
         default="none"),
    _key("host_in_key", _flag(), "Make the request's Host part of the cache key."),
    _key("fill_headers", _special(_parse_fill_headers, "array of field names"),
         "Client fields a shared fill forwards upstream (besides fields a response Varies on)."),
    _key("honor_client_no_cache", _flag(),
         "Let a client's Cache-Control: no-cache revalidate the cached copy."),
    _key("heuristic_fraction", _fraction(),
         "Heuristic freshness: this fraction of the age given by Last-Modified."),
    _key("heuristic_max", _duration(), "Upper bound of heuristic freshness."),
    _key("stale_if_error_max", _duration(),
         "Serve a stale copy this long past its freshness when the upstream fails, where the "
         "origin sent no stale-if-error (never for must-revalidate/no-cache); 0: only the "
         "origin's stale-if-error."),
    _key("failure_backoff_base",
         _duration(zero_message="must be larger than 0 (the first back-off of a failing object)"),
         "After a failed revalidation, ask upstream for that object again only after this, "
         "doubled per further failure, jittered (docs/failover.md)."),
    _key("failure_backoff_max",
         _duration(zero_message="must be larger than 0 (the longest back-off)"),
         "Upper bound of the per-object failure back-off."),
    _key("negative_ttl_5xx", _duration(),
         "Cache an upstream's 5xx answer this long (coalesced fills share it); 0: not cached, "
         "as RFC 9111 has it for a 5xx without freshness. TTL rules for 5xx codes come first."),
    _key("ignore_query_params", _query_names("parameter", as_set=True),
         "Query parameters left out of the cache key (replaces the default list)."),
    _key("extra_ignore_query_params", _query_names("parameter", as_set=True),
         "Query parameters left out of the cache key besides ignore_query_params.",
         default="`[]`"),
    _key("ignore_query_prefixes", _query_names("prefix", as_set=False),
         "Query parameters starting with these are left out of the cache key."),
    _key("server_names", _special(_parse_server_names, "array of host names"),
         "Hosts accepted in absolute-form request targets, besides the listen host."),
    _key("upstream_max_connections", _count(1), "Open connections to the upstream, at most."),
    _key("workers", _count(1), "Processes sharing the listener (SO_REUSEPORT)."),
    _key("limits", _special(_subtable(limit_key_table), "table"),
         "Client-side limits and timeouts, see limits below.", default="see below",
         merge="fields", build=_build_fields(Limits)),
    _key("upstream_timeouts", _special(_subtable(lambda: UPSTREAM_TIMEOUT_KEY_TABLE), "table"),
         "Timeouts of upstream requests, see upstream_timeouts below.", default="see below",
         merge="fields", build=_build_fields(UpstreamTimeouts)),
    _key("ttl", _special(_parse_ttl_rules, "array of tables"),
         "TTL rules overriding origin freshness, first match applies; see ttl below.",
         field="ttl_rules", default="`[]`"),
    _key("carried_query_params", _special(_parse_carried, "array of strings"),
         "Query parameters copied into every URI of a rendered playlist (tokens); never keyed."),
    _key("render_playlists", _flag(), "Render HLS playlists from meta.json.",
         default="true for edges"),
    _key("playlist_cache_entries", _count(1), "Rendered playlist templates kept (LRU)."),
    _key("prefetch_segments", _count(0, 100),
         "After a media playlist, prefetch its init and this many segments."),
    _key("prefetch_cmcd", _flag(), "Prefetch the objects CMCD nor/nrr announce."),
    _key("prefetch_queue", _count(1), "Queued prefetches beyond this are dropped."),
    _key("prefetch_concurrency", _count(1), "Prefetch fills in flight at once."),
    _key("prefetch_client_bytes_per_second", _size(positive=True),
         "Bytes one client's requests may make the node prefetch per second (IPv6: per /64), "
         "with a burst of 4 s; charged after each fill."),
    _key("prefetch_bytes_per_second", _size(positive=True),
         "Bytes the node may prefetch per second for all clients (a burst of 1 s; with "
         "workers, each takes its share)."),
    _key("cmsd", _flag(), "Add a CMSD-Dynamic header naming this node (CTA-5006)."),
    _key("cors_origins", _special(_parse_cors_origins, "array of origins"),
         'Pages that may play through this node cross-origin (CORS, docs/cors.md): ["*"] any '
         'page, or origins like "https://www.example.com"; [] adds no CORS field.',
         default='`["*"]`'),
    _key("steering", _special(_subtable(lambda: STEERING_KEY_TABLE), "table"),
         "Content steering of rendered master playlists, see steering below.", default="none",
         merge="fields", build=_build_steering),
    _key("tokens", _special(_subtable(lambda: TOKEN_KEY_TABLE), "table"),
         "Signed URLs and cookies checked before the cache, see tokens below.",
         default="none", merge="fields", build=_build_tokens),
    _key("access_log", _special(_parse_access_log, '"off", "stdout" or a path'),
         "One line per response (docs/operations.md#access-logs): \"stdout\" or a file "
         "(reopened on SIGUSR1); off by default.", default='`"off"`'),
    _key("access_log_format", _special(_parse_access_log_format, '"json" or "combined"'),
         "JSON lines, or nginx's combined format.", default='`"json"`'),
    _key("access_log_sample", _fraction(),
         "The share of responses logged (each one drawn at random): for very busy nodes."),
    _key("access_log_buffer", _count(16, 1 << 22),
         "Lines queued for the log's writer thread; beyond, lines are dropped and counted "
         "(reelcdn_access_log_dropped_total), never waited for."),
    _key("plays_url", _special(_parse_plays_url, "http(s) URL"),
         "An edge counts plays and posts them in batches here (docs/plays.md); empty: off.",
         default="none (off)"),
    _key("plays_token", _special(_parse_plays_token, "string"),
         "Bearer token of the plays_url POSTs; prefer plays_token_env.", default="none"),
    _key("plays_token_env", _special(_parse_plays_token_env, "environment variable name"),
         "Read the plays token from this environment variable.", field="plays_token",
         default="none"),
    _key("plays_flush_interval",
         _duration(zero_message="must be larger than 0 (plays are sent this often)"),
         "Plays counted are posted as one batch this often."),
    _key("plays_max_pending", _size(positive=True),
         "Bytes of unsent play batches kept while plays_url fails; the oldest go beyond."),
)

#: Every key a ``[defaults]`` or ``[node.NAME]`` table accepts.
NODE_KEYS: tuple[str, ...] = tuple(NODE_KEY_TABLE)
#: Where a node fetches from: exactly one of these, and a node's own choice replaces the
#: default's as a whole (a [defaults] upstream must not combine with a node's parents).
SOURCE_KEYS: tuple[str, ...] = tuple(k.name for k in NODE_KEY_TABLE.values() if k.merge == "source")
_NESTED_FIELDS = frozenset(k.field for k in NODE_KEY_TABLE.values() if k.merge == "fields")
#: Pairs of keys a table may not set together: (first, second); the second is blamed.
_EXCLUSIVE = (("admin_token", "admin_token_env"), ("plays_token", "plays_token_env"))


def parse_layer(
    prefix: str,
    table: Mapping[str, Any],
    ctx: Context,
    problems: Problems | None = None,
) -> dict[str, Sourced]:
    """Parse one table of node keys (a ``[node.NAME]`` or the ``[defaults]``) into
    ``{field: (value, dotted key)}``; only keys present in the table appear.

    The checks of the table as a whole come first; then each key is parsed by its row, in file
    order. This loop is the one place that decides what a bad key does: its error goes to
    ``problems`` and its value is :data:`FAILED` (so checks needing it are skipped), and the
    next key is parsed. Without ``problems``, the layer's errors are raised together at the
    end (one :class:`ConfigErrors`). An unknown key is reported and left out; keys that may
    not be set together are parsed, then both (all) stand as :data:`FAILED`."""
    file = ctx.file
    own = problems is None
    found = Problems(file) if problems is None else problems
    conflicting: set[str] = set()
    for first, second in _EXCLUSIVE:
        if first in table and second in table:
            found.add(ConfigError(
                file, f"{prefix}.{second}", f"set either {first} or {second}, not both"
            ))
            conflicting |= {first, second}
    sources = [k for k in table if k in SOURCE_KEYS]  # in file order: blame the second
    if len(sources) > 1:
        found.add(ConfigError(
            file, f"{prefix}.{sources[1]}", f"set only one of {', '.join(SOURCE_KEYS[:-1])} and "
            f"{SOURCE_KEYS[-1]} (found {' and '.join(sources)}): a node fetches from an upstream "
            "URL, from parent nodes of this file, or (a shield) from origins"
        ))
        conflicting |= set(sources)
    out: dict[str, Sourced] = {}
    for key, raw in table.items():
        if key not in NODE_KEY_TABLE:
            found.add(unknown_key(file, prefix, key, NODE_KEY_TABLE))
            continue
        row = NODE_KEY_TABLE[key]
        dotted = f"{prefix}.{key}"
        value = found.attempt(row.parse, raw, ctx, dotted)
        out[row.field] = (FAILED if key in conflicting else value, dotted)
    if own:
        found.raise_if_any()
    return out


def merge_layers(layers: Iterable[dict[str, Sourced]]) -> dict[str, Sourced]:
    """Later layers win key by key; nested tables (``limits``, ``upstream_timeouts``,
    ``steering``) merge field by field, so ``[defaults.limits]`` can set one limit and a node
    another. The source keys (upstream, parents, origins) are one choice: a layer setting any of
    them replaces all three."""
    merged: dict[str, Sourced] = {}
    for layer in layers:
        if any(k in layer for k in SOURCE_KEYS):
            for k in SOURCE_KEYS:
                merged.pop(k, None)
        for name, (value, where) in layer.items():
            if name in _NESTED_FIELDS and name in merged:
                below = merged[name][0]
                failed = value is FAILED or below is FAILED
                merged[name] = (FAILED if failed else {**below, **value}, where)
            else:
                merged[name] = (value, where)
    return merged


def build_nested(
    values: dict[str, Any], merged: Mapping[str, Sourced], file: str, problems: Problems
) -> None:
    """Replace the merged nested tables in ``values`` by their model values, in place; one that
    cannot be built is recorded in ``problems`` and becomes :data:`FAILED`."""
    for row in NODE_KEY_TABLE.values():
        if row.build is not None and row.field in values and values[row.field] is not FAILED:
            values[row.field] = problems.attempt(
                row.build, values[row.field], merged[row.field][1], file
            )


# --------------------------------------------------------------------------------------------
# Origins: ``[origin.NAME]``. Which keys apply depends on the origin's type.


def article(word: str) -> str:
    """``an edge``, ``a regional``; origin types are said letter by letter (``an fs``)."""
    return ("an " if word[0] in "aeiou" or word in ORIGIN_TYPES else "a ") + word


def _origin_string(value: Any, file: str, key: str, what: str) -> str:
    if not isinstance(value, str):
        raise type_error(file, key, what, value)
    text = value.strip()
    if not text:
        raise ConfigError(file, key, "must not be empty")
    return text


def _parse_root(value: Any, ctx: Context, key: str) -> str:
    """A relative fs root is resolved against the file's directory, so the origin is the same
    whichever directory a node is started from."""
    root = _origin_string(value, ctx.file, key, 'a directory path like "./data/origin"')
    base = ctx.base_dir if ctx.base_dir is not None else os.getcwd()
    return os.path.normpath(os.path.join(base, os.path.expanduser(root)))


def _parse_http_origin_url(value: Any, ctx: Context, key: str) -> str:
    return parse_origin_url(value, ctx.file, key, what="origin URL", allow_path=True)


def _parse_endpoint_url(value: Any, ctx: Context, key: str) -> str:
    return parse_origin_url(value, ctx.file, key, what="endpoint URL", allow_path=False)


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION_RE = re.compile(r"[A-Za-z0-9_-]+")


def _parse_bucket(value: Any, ctx: Context, key: str) -> str:
    file = ctx.file
    bucket = _origin_string(value, file, key, 'a bucket name like "my-videos"')
    if bucket.lower().startswith("s3://") or "/" in bucket:
        name, _, prefix = bucket.removeprefix("s3://").removeprefix("S3://").partition("/")
        suggestion = f'bucket = "{name}"' + (f', prefix = "{prefix}"' if prefix else "")
        raise ConfigError(
            file, key, f"bad bucket {quote(value)}: give the bucket name only ({suggestion})"
        )
    if not _BUCKET_RE.fullmatch(bucket):
        raise ConfigError(
            file, key, f"bad bucket {quote(value)}: a bucket name is 3..63 lowercase letters, "
            "digits, dots and hyphens, starting and ending with a letter or digit"
        )
    return bucket


def _parse_prefix(value: Any, ctx: Context, key: str) -> str:
    """Store the prefix as a folder (``"videos/"``): object keys are prefix + request path, and
    ``"videos"`` + ``"v/…"`` would silently look up ``"videosv/…"``."""
    if not isinstance(value, str):
        raise type_error(ctx.file, key, 'a key prefix like "videos/"', value)
    prefix = value.strip().lstrip("/")
    if any(part in (".", "..") for part in prefix.split("/")) or "\\" in prefix:
        raise ConfigError(ctx.file, key, f"bad prefix {quote(value)}: no . or .. parts, no \\")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _parse_region(value: Any, ctx: Context, key: str) -> str:
    region = _origin_string(value, ctx.file, key, 'a region name like "eu-west-1"')
    if not _REGION_RE.fullmatch(region):
        raise ConfigError(ctx.file, key, f"bad region {quote(value)}")
    return region


def _parse_profile(value: Any, ctx: Context, key: str) -> str:
    return _origin_string(value, ctx.file, key, "an AWS profile name")


def _parse_origin_timeouts(value: Any, ctx: Context, key: str) -> UpstreamTimeouts:
    parsed = _subtable(lambda: UPSTREAM_TIMEOUT_KEY_TABLE)(value, ctx, key)
    return UpstreamTimeouts(**{k: v for k, (v, _) in parsed.items()})


def _parse_origin_health(value: Any, ctx: Context, key: str) -> HealthConfig:
    """``[origin.NAME.health]``: the keys of ``[node.NAME.health]``; unset ones take
    ``ORIGIN_HEALTH``'s values (path "/": any answer below 500 passes)."""
    parsed = _subtable(lambda: HEALTH_KEY_TABLE)(value, ctx, key)
    return dataclasses.replace(ORIGIN_HEALTH, **{k: v for k, (v, _) in parsed.items()})


def _parse_origin_type(value: Any, ctx: Context, key: str) -> str:
    if not isinstance(value, str):
        raise type_error(ctx.file, key, " | ".join(ORIGIN_TYPES), value)
    if value not in ORIGIN_TYPES:
        alias = _ORIGIN_TYPE_ALIASES.get(value.lower())
        close = [alias] if alias else difflib.get_close_matches(value, ORIGIN_TYPES, n=1)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        raise ConfigError(
            ctx.file, key, f"unknown origin type {quote(value)}: {hint}use one of "
            + ", ".join(ORIGIN_TYPES)
        )
    return value


ORIGIN_KEY_TABLE: dict[str, Key] = _table(
    _key("type", _special(_parse_origin_type, " | ".join(ORIGIN_TYPES)),
         "The kind of origin; decides which keys below apply.", default="required"),
    _key("timeouts", _special(_parse_origin_timeouts, "table"),
         "Timeouts of requests to this origin, keys as in upstream_timeouts.",
         default="see upstream_timeouts"),
    _key("root", _special(_parse_root, "path"),
         "fs: the directory holding the objects (relative to the file).", default="required"),
    _key("url", _special(_parse_http_origin_url, "http(s) URL"),
         "http: base URL, request paths are appended to it.", default="required"),
    _key("health", _special(_parse_origin_health, "table"),
         "http: active checks of the origin, keys as in health (path: any answer below 500 "
         "passes); off with the shield's health.checks = false. fs and s3 origins have "
         "passive health only (docs/failover.md).",
         default='path `"/"`, else as health'),
    _key("bucket", _special(_parse_bucket, "bucket name"), "s3: the bucket.",
         default="required"),
    _key("prefix", _special(_parse_prefix, "key prefix"),
         "s3: prefix of object keys (a folder, e.g. \"videos/\").", default='`""`'),
    _key("endpoint_url", _special(_parse_endpoint_url, "http(s) URL"),
         "s3: endpoint of an S3-compatible service (MinIO, R2); none: AWS.", default="none"),
    _key("region", _special(_parse_region, "region name"), "s3: the bucket's region.",
         default="from the environment"),
    _key("profile", _special(_parse_profile, "string"),
         "s3: named credentials profile (credentials never go in the file).",
         default="from the environment"),
)
_ORIGIN_KEYS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "fs": ("root",),
    "http": ("url", "health"),
    "s3": ("bucket", "prefix", "endpoint_url", "region", "profile"),
}
_ORIGIN_COMMON = ("type", "timeouts")
assert set(ORIGIN_KEY_TABLE) == {
    *_ORIGIN_COMMON, *(k for keys in _ORIGIN_KEYS_BY_TYPE.values() for k in keys)
}
_ORIGIN_REQUIRED: dict[str, str] = {"fs": "root", "http": "url", "s3": "bucket"}
_ORIGIN_EXAMPLES: dict[str, str] = {
    "fs": 'root = "./data/origin"',
    "http": 'url = "http://127.0.0.1:8000"',
    "s3": 'bucket = "my-videos"',
}
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


def parse_origin(name: str, table: Mapping[str, Any], ctx: Context) -> OriginConfig:
    """Validate one ``[origin.NAME]``: its type first, then the keys of that type, in file
    order; relative paths resolve against ``ctx.base_dir`` (the file's directory). Every
    problem of the table is reported (one :class:`ConfigErrors`); with a bad type, only the
    keys every origin takes are checked further."""
    file = ctx.file
    prefix = f"origin.{name}"
    problems = Problems(file)
    known: list[str] = []
    for key in table:
        if key in _CREDENTIAL_KEYS:
            problems.add(ConfigError(
                file, f"{prefix}.{key}", "credentials never go in the config file: boto3 finds "
                "them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), in "
                "~/.aws/credentials, or in an instance role; choose a named set with profile = …"
            ))
        elif key not in ORIGIN_KEY_TABLE:
            problems.add(unknown_key(file, prefix, key, ORIGIN_KEY_TABLE))
        else:
            known.append(key)
    kind: Any = FAILED
    if "type" not in table:
        problems.add(ConfigError(
            file, f"{prefix}.type", "missing: every origin needs type = "
            + " | ".join(f'"{t}"' for t in ORIGIN_TYPES)
        ))
    else:
        kind = problems.attempt(ORIGIN_KEY_TABLE["type"].parse, table["type"], ctx,
                                f"{prefix}.type")
    if kind is FAILED:  # which keys apply is unknown: check only the common ones
        keys = [key for key in known if key in _ORIGIN_COMMON and key != "type"]
    else:
        keys = []
        for key in known:
            if key == "type":
                continue
            if key in _ORIGIN_COMMON or key in _ORIGIN_KEYS_BY_TYPE[kind]:
                keys.append(key)
                continue
            owner = next(t for t, keys in _ORIGIN_KEYS_BY_TYPE.items() if key in keys)
            problems.add(ConfigError(
                file, f"{prefix}.{key}", f"{key} is for {owner} origins; {article(kind)} origin "
                "takes " + ", ".join(_ORIGIN_KEYS_BY_TYPE[kind])
            ))
        required = _ORIGIN_REQUIRED[kind]
        if required not in table:
            problems.add(ConfigError(
                file, f"{prefix}.{required}", f"missing: {article(kind)} origin needs {required} "
                f"(e.g. {_ORIGIN_EXAMPLES[kind]})"
            ))
    fields = {
        ORIGIN_KEY_TABLE[key].field: problems.attempt(
            ORIGIN_KEY_TABLE[key].parse, table[key], ctx, f"{prefix}.{key}"
        )
        for key in keys
    }
    problems.raise_if_any()
    return OriginConfig(name=name, type=kind, **fields)


# --------------------------------------------------------------------------------------------
# The reference: every key of every table, with its kind, default and doc, as Markdown.

_BINARY_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DURATION_SHOWN = (("d", 86400), ("h", 3600), ("m", 60))


def _show(value: Any, kind: str) -> str:
    """A default as it would be written in the file."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind.startswith("size") and isinstance(value, int):
        for unit, size in _BINARY_UNITS:
            if value and value % size == 0:
                return f'"{value // size}{unit}"'
        return str(value)
    if kind.startswith("duration") and isinstance(value, int | float):
        for unit, seconds in _DURATION_SHOWN:
            if value and value % seconds == 0:
                return f'"{int(value // seconds)}{unit}"'
        return f'"{value:g}s"'
    if isinstance(value, frozenset | tuple | list):
        items = sorted(value) if isinstance(value, frozenset) else list(value)
        return "[" + ", ".join(_show(item, "") for item in items) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _model_default(model: type, name: str, kind: str) -> str:
    for f in dataclasses.fields(model):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f"`{_show(f.default, kind)}`"
            if f.default_factory is not dataclasses.MISSING:
                return f"`{_show(f.default_factory(), kind)}`"
    return "required"


def _rows(table: Mapping[str, Key], model: type | None) -> list[tuple[str, str, str, str]]:
    rows = []
    for key in table.values():
        if key.default is not None or model is None:
            default = key.default if key.default is not None else "required"
        else:
            default = _model_default(model, key.field, key.kind)
        rows.append((key.name, key.kind, default, key.doc))
    return rows


def reference_sections() -> list[tuple[str, str, list[tuple[str, str, str, str]]]]:
    """Every table of the file as ``(title, where it is written, [(key, kind, default, doc)])``,
    in the order of the reference."""
    return [
        ("Node keys", "`[defaults]` and `[node.NAME]`", _rows(NODE_KEY_TABLE, NodeConfig)),
        ("limits", "`[defaults.limits]` and `[node.NAME.limits]`",
         _rows(limit_key_table(), Limits)),
        ("upstream_timeouts", "`[defaults.upstream_timeouts]` and "
         "`[node.NAME.upstream_timeouts]`", _rows(UPSTREAM_TIMEOUT_KEY_TABLE, UpstreamTimeouts)),
        ("health", "`[defaults.health]` and `[node.NAME.health]` (docs/failover.md)",
         _rows(HEALTH_KEY_TABLE, HealthConfig)),
        ("steering", "`[defaults.steering]` and `[node.NAME.steering]`",
         _rows(STEERING_KEY_TABLE, None)),
        ("tokens", "`[defaults.tokens]` and `[node.NAME.tokens]` (docs/tokens.md)",
         _rows(TOKEN_KEY_TABLE, None)),
        ("ttl rules", "`[[defaults.ttl]]` and `[[node.NAME.ttl]]`, first match applies",
         _rows(TTL_KEY_TABLE, TtlRule)),
        ("origins", "`[origin.NAME]`", _rows(ORIGIN_KEY_TABLE, None)),
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The reference of every key, as Markdown: one section and table per table of the file.
    docs/configuration.md is this, after its introduction."""
    out: list[str] = []
    for title, where, rows in reference_sections():
        out += [f"## {title}", "", f"In {where}.", "",
                "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        out += [f"| `{key}` | {_cell(kind)} | {_cell(default)} | {_cell(doc)} |"
                for key, kind, default, doc in rows]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # python -m reelcdn.edge.config.keys: the tables of the reference
    print(reference_markdown(), end="")
