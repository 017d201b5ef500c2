"""nginx's ``secure_link_md5`` URLs: ``?md5=<hash>&expires=<unix seconds>``, checked as nginx does.

An nginx deployment protects a location with::

    secure_link $arg_md5,$arg_expires;
    secure_link_md5 "$secure_link_expires$uri$remote_addr secret";

and the link's hash is the MD5 of that expression, in base64url. This module verifies the same
links with the same answers (``tests/test_token_nginx.py`` asks a real nginx and this module
about the same URLs), as pure functions of a :class:`TokenRequest` and a :class:`KeyRing`.

The expression (:class:`Expression`) is nginx's syntax: literal text and ``$name`` or
``${name}`` variables, names case-insensitive as in nginx. Supported variables:

- ``$secure_link_expires``: the expiry text of the link, exactly as sent (leading zeros kept);
  empty when the link carries none;
- ``$uri``: the request's path, fully percent-decoded (nginx's ``$uri``: the normalised,
  decoded URI; the node's canonical path has ``.``/``//`` resolved and keeps the escapes of
  reserved bytes, which are decoded here);
- ``$remote_addr``: the client's address;
- ``$host``: the ``Host`` field lowercased, without port or trailing dot (nginx falls back to
  the server name without one; a node has none: empty);
- ``$arg_NAME``: the first ``NAME=`` query argument (name case-insensitive), raw, not decoded;
- ``$http_NAME``: the request header ``NAME`` (``_`` for ``-``), empty when absent;
- ``$secret``: a secret of the key ring. Not an nginx variable: where an nginx config writes
  its secret as literal text, the node's expression writes ``$secret`` and the secret goes in
  the ``[tokens]`` keys. So secrets live in one place (the ring, replaced whole on reload, as
  for every format), the expression can be shown and logged, and several secrets are valid
  at once for a rotation: a link verifies when the expression with *any* key of the ring
  hashes to it. An expression without ``$secret`` is refused: its hash would be unkeyed.

Any other variable (``$args``, regex captures ``$1``...) is a :class:`ValueError` naming it.

nginx's own edge cases, kept (from ``ngx_http_secure_link_module.c``, nginx 1.22):

- the ``secure_link`` value is ``<md5>,<expires>``, split at its *first* comma; the expiry
  must be ASCII digits, > 0 and ≤ 2**63 − 1: absent, empty, ``0``, signed or non-numeric is
  refused like a bad hash (``malformed`` here). With ``expires_arg=None`` (``secure_link
  $arg_md5;``) a link never expires (``Grant.expires`` is infinity);
- the hash text is at most 24 bytes; it decodes up to its first ``=`` (what follows is not
  read, so ``==`` padding, one ``=`` or ``=`` plus any byte pass), with the base64url alphabet
  only (``+`` or ``/`` fail), and must give exactly 16 bytes, i.e. 22 characters before any
  ``=``. The low 4 bits of the 22nd character are not checked (nginx drops them: an encoding
  of the same 16 bytes, not another signature);
- the hash is compared before the expiry: an expired link with a wrong hash is a bad
  signature (nginx's ``$secure_link`` is ``""``), an expired good one is ``expired`` (``"0"``);
- expired means ``expires < now``, whole seconds (``ngx_time()``): a link is still good
  during its ``expires`` second. With the node's clock skew: ``expires < floor(now − skew)``.

A grant carries nothing (``carried=()``): the usual expressions sign ``$uri``, so a rendered
playlist cannot copy one URI's link to the segments it lists, each needs its own hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from reelcdn.edge.auth.verdict import Grant, KeyRing, Refusal, TokenRequest

__all__ = ["DEFAULT_EXPRESSION", "Expression", "decode_hash", "query_arg", "sign", "verify"]

#: What nginx's documentation signs (expiry, URI, client address), with the ring's secret.
DEFAULT_EXPRESSION = "$secure_link_expires$uri$remote_addr $secret"

_MISSING = Refusal("missing")
_MALFORMED = Refusal("malformed")
_BAD_SIGNATURE = Refusal("bad-signature")
_UNKNOWN_KEY = Refusal("unknown-key")
_EXPIRED = Refusal("expired")

_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_PLAIN = frozenset({"secure_link_expires", "uri", "remote_addr", "host", "secret"})
_B64URL = re.compile(r"[A-Za-z0-9_-]{22}")
_DIGITS = re.compile(r"[0-9]+")
_MAX_TIME = 2**63 - 1  # NGX_MAX_TIME_T_VALUE on a 64-bit build


def _raw(text: str) -> bytes:
    """The bytes a request field arrived as (the node decodes fields as latin-1)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed ``secure_link_md5`` expression: literal text and variables, in order.

    ``parts`` holds ``(False, literal bytes)`` and ``(True, variable name)`` items, names
    lowercased (nginx's variable names are case-insensitive)."""

    text: str
    parts: tuple[tuple[bool, bytes | str], ...]

    @classmethod
    def parse(cls, text: str) -> Expression:
        """Parse nginx's syntax; :class:`ValueError` naming an unknown or malformed variable,
        or an expression without ``$secret``."""
        parts: list[tuple[bool, bytes | str]] = []
        literal: list[str] = []
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch != "$":
                literal.append(ch)
                i += 1
                continue
            i += 1
            braced = i < n and text[i] == "{"
            if braced:
                i += 1
            start = i
            if i < n and "1" <= text[i] <= "9" and not braced:
                raise ValueError(f"regex capture ${text[i]} in a secure_link_md5 expression "
                                 "is not supported (no location regex at the node)")
            while i < n and text[i] in _NAME_CHARS:
                i += 1
            name = text[start:i]
            if braced:
                if i >= n or text[i] != "}":
                    raise ValueError(f"the closing bracket in ${{{name} variable is missing")
                i += 1
            if not name:
                raise ValueError(f"invalid variable name at offset {start - 1} of {text!r}")
            lowered = name.lower()
            if not _known(lowered):
                raise ValueError(f"unknown variable ${name} in secure_link_md5 expression "
                                 f"(known: $secure_link_expires, $uri, $remote_addr, $host, "
                                 f"$arg_NAME, $http_NAME, $secret)")
            if literal:
                parts.append((False, "".join(literal).encode("utf-8")))
                literal = []
            parts.append((True, lowered))
        if literal:
            parts.append((False, "".join(literal).encode("utf-8")))
        if (True, "secret") not in parts:
            raise ValueError("secure_link_md5 expression without $secret: the hash would not "
                             "be keyed (write $secret where the nginx config has its secret)")
        return cls(text, tuple(parts))

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(str(value) for is_var, value in self.parts if is_var)

    @property
    def headers(self) -> tuple[str, ...]:
        """The request header fields the hash binds (lowercased, ``-`` for ``_``): whatever
        remembers verdicts must tell requests apart by them too."""
        return tuple(name[5:].replace("_", "-") for name in self.variables
                     if name.startswith("http_"))

    def pieces(self, values: Mapping[str, bytes]) -> list[bytes | None]:
        """The expression rendered for one request, ``None`` where a secret goes."""
        out: list[bytes | None] = []
        for is_var, value in self.parts:
            if not is_var:
                out.append(value)  # type: ignore[arg-type]
            elif value == "secret":
                out.append(None)
            else:
                out.append(values.get(value, b""))  # type: ignore[arg-type]
        return out

    def render(self, values: Mapping[str, bytes], secret: bytes) -> bytes:
        """The bytes nginx would hash, with ``secret`` for ``$secret``."""
        return _join(self.pieces(values), secret)


def _join(pieces: list[bytes | None], secret: bytes) -> bytes:
    return b"".join(secret if piece is None else piece for piece in pieces)


def _known(name: str) -> bool:
    if name in _PLAIN:
        return True
    return (name.startswith("arg_") and len(name) > 4) or (
        name.startswith("http_") and len(name) > 5)


@lru_cache(maxsize=64)
def _compiled(text: str) -> Expression:
    return Expression.parse(text)


def _expression(expression: str | Expression) -> Expression:
    return expression if isinstance(expression, Expression) else _compiled(expression)


def query_arg(query: str, name: str) -> str | None:
    """nginx's ``$arg_NAME`` (``ngx_http_arg``): the raw value of the first ``&``-separated
    argument whose name matches case-insensitively and is followed by ``=``; None if none."""
    if not query:
        return None
    width = len(name)
    lowered = name.lower()
    for part in query.split("&"):
        if part[width:width + 1] == "=" and part[:width].lower() == lowered:
            return part[width + 1:]
    return None


def _host(value: str) -> bytes:
    """nginx's ``$host`` from a Host field: lowercased, no port, no trailing dot."""
    host = value.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[:end + 1] if end >= 0 else host
    else:
        host = host.partition(":")[0]
    return _raw(host.rstrip("."))


def _values(expr: Expression, *, path: str, query: str, headers: Mapping[str, str],
            client_ip: str, link_expires: str) -> dict[str, bytes]:
    values: dict[str, bytes] = {}
    for name in expr.variables:
        if name in values or name == "secret":
            continue
        if name == "uri":
            values[name] = unquote_to_bytes(path)
        elif name == "secure_link_expires":
            values[name] = _raw(link_expires)
        elif name == "remote_addr":
            values[name] = _raw(client_ip)
        elif name == "host":
            values[name] = _host(headers.get("host", ""))
        elif name.startswith("arg_"):
            found = query_arg(query, name[4:])
            values[name] = _raw(found) if found is not None else b""
        else:  # http_
            values[name] = _raw(headers.get(name[5:].replace("_", "-"), ""))
    return values


def _atotm(text: str) -> int:
    """nginx's ``ngx_atotm``: ASCII digits to a time, −1 for anything else (or overflow)."""
    if not _DIGITS.fullmatch(text):
        return -1
    value = int(text)
    return value if value <= _MAX_TIME else -1


def decode_hash(text: str) -> bytes | None:
    """The 16 bytes of a link's hash as nginx decodes it, or None (see the module doc)."""
    if len(_raw(text)) > 24:
        return None
    body = text.partition("=")[0]
    if not _B64URL.fullmatch(body):
        return None
    return base64.urlsafe_b64decode(body + "==")


def verify(request: TokenRequest, ring: KeyRing, *, expression: str | Expression,
           clock_skew: float = 0.0, hash_arg: str = "md5",
           expires_arg: str | None = "expires") -> Grant | Refusal:
    """nginx's ``$secure_link`` for ``secure_link $arg_<hash_arg>,$arg_<expires_arg>;`` and
    ``secure_link_md5 <expression>;``, as a verdict: ``"1"`` → :class:`Grant`, ``"0"`` →
    ``expired``, ``""`` → ``missing`` (no hash argument, or an empty one), ``malformed``
    (the expiry or the hash does not parse), ``unknown-key`` (an empty ring) or
    ``bad-signature`` (no secret of the ring gives the hash)."""
    expr = _expression(expression)
    query = request.query
    sent = query_arg(query, hash_arg)
    if not sent:
        return _MISSING
    link = sent if expires_arg is None else f"{sent},{query_arg(query, expires_arg) or ''}"
    hash_text, comma, expires_text = link.partition(",")
    expires = 0
    if comma:
        expires = _atotm(expires_text)
        if expires <= 0:
            return _MALFORMED
    digest = decode_hash(hash_text)
    if digest is None:
        return _MALFORMED
    secrets = tuple(ring.keys.values())
    if not secrets:
        return _UNKNOWN_KEY
    pieces = expr.pieces(_values(expr, path=request.path, query=query, headers=request.headers,
                                 client_ip=request.client_ip,
                                 link_expires=expires_text if comma else ""))
    matched = False
    for secret in secrets:  # every secret, each compared in constant time
        matched |= hmac.compare_digest(hashlib.md5(_join(pieces, secret)).digest(), digest)
    if not matched:
        return _BAD_SIGNATURE
    if expires and expires < math.floor(request.now - clock_skew):
        return _EXPIRED
    return Grant(float(expires) if expires else math.inf)


def sign(path: str, expires: int | None, secret: bytes | str, expression: str | Expression,
         *, client_ip: str = "", host: str = "", args: Mapping[str, str] | None = None,
         headers: Mapping[str, str] | None = None, hash_arg: str = "md5",
         expires_arg: str | None = "expires") -> dict[str, str]:
    """The query parameters of a link to ``path`` (as it appears in the URL, before
    ``?``) valid until ``expires`` (Unix seconds; None: no expiry, for ``expires_arg=None``),
    hashed with ``secret``. ``client_ip``, ``host``, ``args`` (other query arguments, raw)
    and ``headers`` (lowercased names) fill the expression's other variables and must be what
    the node will see."""
    expr = _expression(expression)
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    params: dict[str, str] = {}
    link_expires = ""
    if (expires is None) != (expires_arg is None):
        raise ValueError("expires and expires_arg go together: nginx refuses a link without "
                         "the expiry its secure_link directive names")
    if expires is not None:
        if not 0 < expires <= _MAX_TIME:
            raise ValueError(f"expires {expires} out of range (nginx takes 1..2**63-1)")
        link_expires = str(int(expires))
    arguments = dict(args or {})
    if expires_arg is not None and expires is not None:
        arguments[expires_arg] = link_expires
    query = "&".join(f"{name}={value}" for name, value in arguments.items())
    fields = {name.lower(): value for name, value in (headers or {}).items()}
    if host:
        fields["host"] = host
    values = _values(expr, path=path, query=query, headers=fields, client_ip=client_ip,
                     link_expires=link_expires)
    digest = hashlib.md5(expr.render(values, secret)).digest()
    params[hash_arg] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    if expires_arg is not None and expires is not None:
        params[expires_arg] = link_expires
    return params
