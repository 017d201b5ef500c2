"""The topology configuration's values: ``ConfigError`` and the parsers of single values.

Every parser takes the raw TOML value, the file and the dotted key it came from, and returns the
typed value or raises a :class:`ConfigError` naming that file and key in words an operator
understands. None of them reads anything but its arguments, so a loader can call them in any
order, and one that collects errors instead of stopping at the first only has to catch
``ConfigError`` where it calls them: :class:`Problems` does that (``attempt``) and raises them
all at the end as one :class:`ConfigErrors`, each with the line its key is written on. Public
ones (``parse_size``, ``parse_duration``, ``parse_address``) serve other modules too;
``reelcdn.edge.config`` re-exports them.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any, TypeVar

from reelcdn.edge.config.lines import key_lines, line_of

__all__ = [
    "FAILED",
    "ConfigError",
    "ConfigErrors",
    "Problems",
    "parse_address",
    "parse_duration",
    "parse_size",
]


class ConfigError(ValueError):
    """A configuration problem, with the file and the dotted key it concerns.

    ``key`` is empty for problems with the file as a whole (unreadable, TOML syntax, no nodes);
    the message then reads ``file: message`` instead of ``file: key: message``. ``line``, when
    known, is the line of the file where the key is written: ``file:line: key: message``.
    """

    def __init__(self, file: str, key: str, message: str, *, line: int | None = None) -> None:
        self.file = file
        self.key = key
        self.message = message
        self.line = line
        super().__init__(file, key, message)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigErrors(ConfigError):
    """Every problem found in one file, in the order of the file (by line; those without a
    line last). Rendered one per line, ``file:line: key: problem``.

    A :class:`ConfigError` itself, so ``except ConfigError`` catches it: its ``file``, ``key``,
    ``message`` and ``line`` are those of the first problem found.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        first = errors[0]
        super().__init__(first.file, first.key, first.message, line=first.line)
        self.errors: tuple[ConfigError, ...] = tuple(sorted(
            errors, key=lambda e: (e.line is None, e.line or 0)
        ))
        self.args = (self.errors,)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class _Failed:
    """The value of a key whose parsing failed (its error is recorded)."""

    _instance: _Failed | None = None

    def __new__(cls) -> _Failed:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "FAILED"


#: Stands for a value that did not parse, so checks that need it can be skipped rather than
#: report a confusing follow-on error.
FAILED = _Failed()

T = TypeVar("T")


class Problems:
    """Collects the problems (:class:`ConfigError`) of one file, so a loader goes on after a bad key
    and reports them all at once (:meth:`raise_if_any`).

    ``text`` is the file's TOML source, when known: errors without a line get the line where
    their key is written (``reelcdn.edge.config.lines``).
    """

    def __init__(self, file: str, text: str | None = None) -> None:
        self.file = file
        self.text = text
        self.errors: list[ConfigError] = []

    def __len__(self) -> int:
        return len(self.errors)

    def add(self, error: ConfigError) -> None:
        """Record a problem (every problem of a :class:`ConfigErrors`)."""
        if isinstance(error, ConfigErrors):
            self.errors.extend(error.errors)
        else:
            self.errors.append(error)

    def attempt(self, parse: Callable[..., T], *args: Any, **kwargs: Any) -> T | _Failed:
        """``parse(*args, **kwargs)``, or :data:`FAILED` with its error recorded."""
        try:
            return parse(*args, **kwargs)
        except ConfigError as exc:
            self.add(exc)
            return FAILED

    def failed_under(self, key: str) -> bool:
        """Whether a problem was recorded for ``key`` or a key inside it (``origin.main``
        covers ``origin.main.type``)."""
        return any(
            e.key == key or e.key.startswith((f"{key}.", f"{key}[")) for e in self.errors
        )

    def raise_if_any(self) -> None:
        """Raise one :class:`ConfigErrors` listing every recorded problem, if there is one."""
        if not self.errors:
            return
        if self.text is not None:
            lines = key_lines(self.text)
            for error in self.errors:
                if error.line is None and error.file == self.file:
                    error.line = line_of(lines, error.key)
        raise ConfigErrors(self.errors)



# --------------------------------------------------------------------------------------------
# Messages: say what was found in TOML terms, since that is what the operator wrote.


def quote(text: str, limit: int = 60) -> str:
    """Quote a value the way it would appear in TOML, shortened so one bad value can't flood."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def describe(value: Any) -> str:
    """Name a TOML value's type and show it, e.g. ``string "yes"`` or ``integer 5``."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {quote(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"date/time {value.isoformat()}"
    return type(value).__name__


def type_error(file: str, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(file, key, f"expected {expected}, got {describe(value)}")


def unknown_key(file: str, prefix: str, key: str, allowed: Iterable[str]) -> ConfigError:
    """Reject a key nobody reads, suggesting the closest allowed one (it is usually a typo)."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"?' if close else "allowed keys are " + ", ".join(allowed)
    return ConfigError(file, f"{prefix}.{key}", f"unknown key {quote(key)}: {hint}")


def check_keys(
    file: str, prefix: str, table: Mapping[str, Any], allowed: Iterable[str]
) -> None:
    allowed = frozenset(allowed)
    for key in table:
        if key not in allowed:
            raise unknown_key(file, prefix, key, allowed)


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
        raise type_error(file, key, 'a size (integer bytes or a string like "256MiB")', value)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(file, key, f"size must not be negative, got {value}")
        return value
    text = value.strip().lower()
    if text.startswith("-"):
        raise ConfigError(file, key, f"size must not be negative, got {quote(value)}")
    match = _SIZE_RE.fullmatch(text)
    if match is None or match["unit"] not in _SIZE_UNITS:
        hint = ""
        if match is not None and match["unit"] in ("k", "m", "g"):
            u = match["unit"].upper()
            hint = f' ("{match["num"]}{u}" is ambiguous: write {u}iB or {u}B)'
        raise ConfigError(file, key, f"bad size {quote(value)}: {_SIZE_HELP}{hint}")
    amount = Fraction(match["num"]) * _SIZE_UNITS[match["unit"]]
    if amount.denominator != 1 and match["unit"] in ("", "b"):
        raise ConfigError(file, key, f"bad size {quote(value)}: not a whole number of bytes")
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
        raise type_error(file, key, 'a duration (seconds or a string like "2s")', value)
    if isinstance(value, int | float):
        seconds = float(value)
        if math.isnan(seconds) or math.isinf(seconds):
            raise ConfigError(file, key, f"bad duration {value}: must be a finite number")
        if seconds < 0:
            raise ConfigError(file, key, f"duration must not be negative, got {value}")
        return seconds
    text = value.strip().lower()
    if text.startswith("-"):
        raise ConfigError(file, key, f"duration must not be negative, got {quote(value)}")
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    if not _DURATION_RE.fullmatch(text):
        raise ConfigError(file, key, f"bad duration {quote(value)}: {_DURATION_HELP}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PARTS.findall(text))


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?", re.IGNORECASE)
_ADDRESS_HELP = 'use host:port, e.g. "127.0.0.1:8080" or "[::1]:8080"'


def is_hostname(host: str) -> bool:
    return _HOSTNAME_RE.fullmatch(host) is not None


def parse_address(value: str, *, file: str, key: str) -> tuple[str, int]:
    """Parse a listen address ``host:port`` (IPv6 in brackets) into ``(host, port)``.

    The host is required (``0.0.0.0`` to listen everywhere) so that exposing a node on every
    interface is a decision written in the file, not an accident of an omitted host. Port 0 asks
    the OS for a free port (tests use it). The host is returned without brackets.
    """
    if not isinstance(value, str):
        raise type_error(file, key, 'an address string like "127.0.0.1:8080"', value)
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(file, key, f"bad address {quote(value)}: missing port; {_ADDRESS_HELP}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(file, key, f"bad address {quote(value)}: unclosed [")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                file, key, f"bad address {quote(value)}: {quote(host)} is not an IPv6 address"
            ) from None
    elif ":" in host:
        raise ConfigError(
            file, key, f"bad address {quote(value)}: put an IPv6 address in brackets, e.g. "
            f'"[{host}]:{port_text}"'
        )
    elif not host:
        raise ConfigError(
            file, key, f'bad address {quote(value)}: missing host (use "0.0.0.0:{port_text}" '
            "to listen on every interface)"
        )
    elif not is_hostname(host):
        raise ConfigError(
            file, key, f"bad address {quote(value)}: {quote(host)} is not a host name or IP"
        )
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            file, key, f"bad port {quote(port_text)} in {quote(value)}: use a number 0..65535 "
            "(0 picks a free port)"
        )
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_bool(value: Any, file: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise type_error(file, key, "a boolean (true or false)", value)
    return value


def parse_int(value: Any, file: str, key: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(file, key, "an integer", value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(file, key, f"must be {bound}, got {value}")
    return value


def parse_fraction(value: Any, file: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise type_error(file, key, "a number between 0 and 1", value)
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ConfigError(file, key, f"must be between 0 and 1, got {value}")
    return float(value)


def parse_str_list(
    value: Any, file: str, key: str, check: Callable[[str, str], str]
) -> tuple[str, ...]:
    """Parse an array of strings, passing each through ``check(item, item_key)``; de-duplicate
    keeping order so the stored tuple is what the operator meant, once."""
    if not isinstance(value, list):
        raise type_error(file, key, "an array of strings", value)
    out: dict[str, None] = {}
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        if not isinstance(item, str):
            raise type_error(file, item_key, "a string", item)
        out[check(item, item_key)] = None
    return tuple(out)


def query_name_checker(file: str, what: str) -> Callable[[str, str], str]:
    """Query parameter names are compared case-insensitively, so they are stored lowercased."""

    def check(item: str, item_key: str) -> str:
        if not item or any(c.isspace() or c in "&=?#" for c in item):
            raise ConfigError(
                file, item_key, f"bad {what} {quote(item)}: must be non-empty, without spaces "
                "or any of & = ? #"
            )
        return item.lower()

    return check


#: Query parameters the playlist renderer reads as options; a carried (copied) parameter with
#: one of these names would be both at once.
_PLAYLIST_OPTIONS = ("max_height", "max_bandwidth", "codecs", "start")


def parse_carried(value: Any, file: str, key: str) -> tuple[str, ...]:
    """``carried_query_params``: names copied from a playlist request to every URI inside the
    rendered playlist (tokens). Lowercase, like every query name the node compares, and never an
    option name (``start`` cannot be both a filter and a token)."""
    names = parse_str_list(value, file, key, query_name_checker(file, "parameter"))
    for i, name in enumerate(names):
        if name in _PLAYLIST_OPTIONS or name == "cmcd":
            raise ConfigError(
                file, f"{key}[{i}]", f"{quote(name)} cannot be carried: it is read by the node "
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


def field_name_checker(file: str) -> Callable[[str, str], str]:
    def check(item: str, item_key: str) -> str:
        if not _FIELD_NAME_RE.fullmatch(item):
            raise ConfigError(file, item_key, f"{quote(item)} is not an HTTP field name")
        if item.lower() in _UNFORWARDABLE_FIELDS:
            raise ConfigError(
                file, item_key, f"{quote(item)} is set by the node or the connection and "
                "cannot be forwarded from a client"
            )
        return item

    return check


def server_name_checker(file: str) -> Callable[[str, str], str]:
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
                file, item_key, f"bad server name {quote(item)}: list host names without a port"
            )
        if not is_hostname(host):
            raise ConfigError(file, item_key, f"bad server name {quote(item)}: not a host name")
        return host

    return check


def parse_upstream_url(value: Any, file: str, key: str) -> str:
    """Normalise the upstream to ``http://host:port``: the node appends request paths to it, so a
    path prefix, query or credentials here would silently change every upstream request."""
    if not isinstance(value, str):
        raise type_error(file, key, 'a URL string like "http://127.0.0.1:8000"', value)
    example = "e.g. \"http://127.0.0.1:8000\""
    if "://" not in value:
        raise ConfigError(
            file, key, f"bad upstream URL {quote(value)}: missing http://, write "
            f"{quote('http://' + value.strip())}"
        )
    try:
        url = urllib.parse.urlsplit(value.strip())
        port = url.port
    except ValueError as exc:
        raise ConfigError(file, key, f"bad upstream URL {quote(value)}: {exc}") from None
    if url.scheme.lower() != "http":
        scheme = url.scheme or "no scheme"
        raise ConfigError(
            file, key, f"bad upstream URL {quote(value)}: {scheme} is not supported, use an "
            f"http:// URL ({example})"
        )
    if not url.hostname:
        raise ConfigError(file, key, f"bad upstream URL {quote(value)}: missing host ({example})")
    if url.username is not None or url.password is not None:
        raise ConfigError(
            file, key, f"bad upstream URL {quote(value)}: credentials are not allowed in the URL"
        )
    if port is None:
        raise ConfigError(
            file, key, f"bad upstream URL {quote(value)}: missing port (write "
            f'"http://{url.hostname}:80" for the default)'
        )
    if url.path not in ("", "/"):
        raise ConfigError(
            file, key, f"bad upstream URL {quote(value)}: path {quote(url.path)} is not "
            "allowed; request paths are forwarded as they are, give only http://host:port"
        )
    if url.query or url.fragment or value.strip().endswith(("?", "#")):
        raise ConfigError(
            file, key, f"bad upstream URL {quote(value)}: no query or fragment allowed"
        )
    host = url.hostname
    if ":" in host:
        return f"http://[{host}]:{port}"
    if not is_hostname(host):
        raise ConfigError(file, key, f"bad upstream URL {quote(value)}: bad host {quote(host)}")
    return f"http://{host}:{port}"


def parse_origin_url(value: Any, file: str, key: str, *, what: str, allow_path: bool) -> str:
    """Normalise an origin's URL to ``scheme://host[:port][/path]`` (no trailing slash).

    Unlike a node's upstream, an origin may be https (it is often a storage service across the
    internet) and may keep the default port; an http origin may have a path prefix, to which
    request paths are appended. Credentials, queries and fragments are refused: they would be
    sent with, or silently change, every origin request.
    """
    if not isinstance(value, str):
        raise type_error(file, key, 'a URL string like "http://127.0.0.1:8000"', value)
    text = value.strip()
    example = 'e.g. "http://127.0.0.1:8000"'
    bad = f"bad {what} {quote(value)}"
    if "://" not in text:
        raise ConfigError(
            file, key, f"{bad}: missing http://, write {quote('http://' + text)}"
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
            file, key, f"{bad}: path {quote(url.path)} is not allowed, give only "
            f"{scheme}://host[:port]"
        )
    host = url.hostname
    if ":" in host:
        host = f"[{host}]"
    elif not is_hostname(host):
        raise ConfigError(file, key, f"{bad}: bad host {quote(host)}")
    netloc = host if port is None else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}"



def check_token(token: str, file: str, key: str) -> str:
    if not token:
        raise ConfigError(file, key, "admin token must not be empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(
            file, key, "admin token must not contain spaces or control characters (it is sent "
            "in an Authorization: Bearer header)"
        )
    return token
