"""Akamai EdgeAuth tokens (Property Manager's "Auth Token 2.0 Verification"), checked at the edge.

What is signed follows the reference minting library, ``akamai-edgeauth`` (``akamai/edgeauth/
edgeauth.py``, ``EdgeAuth._generate_token``); every official port (Java, Node, Ruby, Go) and
Akamai's older ``akamai_token_v2`` build the same string. A token is ``~``-joined
``name=value`` fields, always in this order, each but ``exp`` and ``hmac`` optional::

    ip=<addr>~st=<unix>~exp=<unix>~acl=<acl>~id=<session>~data=<payload>~hmac=<hex>

and the HMAC (key: the configured hex secret, decoded; SHA-256, SHA-1 or MD5; lowercase hex
digest) is over the UTF-8 bytes of::

    <the token's text before "~hmac=">[~url=<url>][~salt=<salt>]

- an **ACL token** carries ``acl``: one or more patterns joined by ``!``; each is matched
  against the whole canonical request path with ``*`` (any run of characters, ``/``
  included, possibly empty) and ``?`` (exactly one character); the text between wildcards is
  percent-decoded first (the node's path is decoded; ``acl=%2f*`` is ``/*``);
- a **URL token** carries neither ``acl`` nor ``url``: the URL it grants is signed, not sent,
  so the verifier signs the request's own canonical path (query excluded: Akamai's "Ignore
  query string", which a token carried in the query needs) — replayed on another path the
  signature fails;
- ``escape_early`` (Akamai's "Escape token inputs") makes the minter write ``ip``, ``id``,
  ``data`` and the signed ``url`` URL-escaped (``quote_plus``, escapes lowercased); ``acl`` is
  written as given either way. A verifier with it on signs the escaped path and compares
  ``ip`` unescaped;
- ``salt``, when configured, is signed but never sent.

EdgeAuth names no key, so every key of the ring is tried (constant-time comparison); a key
rotation is two keys in the ring (Akamai's "transition key"). The ring holds the decoded
secret (:func:`secret_from_hex`).

:func:`parse` is strict: the field names above, lowercase, each at most once, in that order,
``exp`` and ``hmac`` required, ``hmac`` last, no empty value, ``st``/``exp`` ASCII digits,
``hmac`` lowercase hex of the algorithm's length, no ``url`` field (the URL is never sent),
no empty ACL entry, no control characters. Anything else is ``malformed``, decided before
any key is used. :func:`verify` then checks, in order: the signature (``unknown-key`` with an
empty ring, else ``bad-signature``), ``st``/``exp`` (``not-yet-valid``/``expired``), the ACL
or URL (``acl``), ``ip`` (``ip``): nothing of a forged token's fields is interpreted.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, unquote, unquote_plus

from reelcdn.edge.auth.verdict import Grant, KeyRing, Refusal, TokenRequest

__all__ = [
    "ALGORITHMS",
    "EdgeToken",
    "acl_allows",
    "escape",
    "find_token",
    "parse",
    "secret_from_hex",
    "sign",
    "signed_string",
    "verify",
]

FIELD_DELIMITER = "~"
ACL_DELIMITER = "!"
#: Token fields, in the one order every EdgeAuth minter writes them.
FIELDS = ("ip", "st", "exp", "acl", "id", "data", "hmac")
_RANK = {name: rank for rank, name in enumerate(FIELDS)}
#: Algorithm name → (hashlib constructor, hex digest length).
ALGORITHMS = {"sha256": (hashlib.sha256, 64), "sha1": (hashlib.sha1, 40),
              "md5": (hashlib.md5, 32)}
MAX_TOKEN = 4096
_DIGITS = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"[0-9a-f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPE = re.compile(r"(%..)")


@dataclass(frozen=True, slots=True)
class EdgeToken:
    """A token's fields as written (``None`` when absent); ``signed`` is the text before
    ``~hmac=``, the part of the signed string the token carries."""

    exp: int
    hmac: str
    signed: str
    ip: str | None = None
    st: int | None = None
    acl: str | None = None
    id: str | None = None
    data: str | None = None


def _algorithm(name: str) -> tuple[Callable[..., Any], int]:
    try:
        return ALGORITHMS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown EdgeAuth algorithm {name!r}: use one of "
                         f"{', '.join(ALGORITHMS)}") from None


def escape(text: str) -> str:
    """EdgeAuth's ``escape_early`` escaping: ``quote_plus`` with each escape lowercased."""
    return _ESCAPE.sub(lambda m: m.group(1).lower(), quote_plus(text))


def secret_from_hex(key: str) -> bytes:
    """The HMAC secret of a configured EdgeAuth key (an even number of hex digits)."""
    if not key or not re.fullmatch(r"[0-9A-Fa-f]+", key) or len(key) % 2:
        raise ValueError("an EdgeAuth key is a non-empty, even number of hex digits")
    return binascii.a2b_hex(key)


def parse(token: str, *, algorithm: str = "sha256") -> EdgeToken | Refusal:
    """The fields of ``token`` or ``Refusal("malformed")``; no key is involved."""
    _, digest_len = _algorithm(algorithm)
    if not token or len(token) > MAX_TOKEN or _CONTROL.search(token):
        return Refusal("malformed")
    values: dict[str, str] = {}
    last_rank = -1
    for part in token.split(FIELD_DELIMITER):
        name, eq, value = part.partition("=")
        rank = _RANK.get(name)
        # Unknown names (``url`` included), a field twice or out of order, an empty value.
        if not eq or rank is None or rank <= last_rank or not value:
            return Refusal("malformed")
        last_rank = rank
        values[name] = value
    if "exp" not in values or "hmac" not in values:
        return Refusal("malformed")  # hmac is last by rank, so present means last
    mac = values["hmac"]
    if len(mac) != digest_len or not _HEX.fullmatch(mac):
        return Refusal("malformed")
    st = values.get("st")
    if not _DIGITS.fullmatch(values["exp"]) or (st is not None and not _DIGITS.fullmatch(st)):
        return Refusal("malformed")
    acl = values.get("acl")
    if acl is not None and "" in acl.split(ACL_DELIMITER):
        return Refusal("malformed")
    signed = token[: len(token) - len(mac) - len("~hmac=")]
    return EdgeToken(exp=int(values["exp"]), hmac=mac, signed=signed, ip=values.get("ip"),
                     st=None if st is None else int(st), acl=acl, id=values.get("id"),
                     data=values.get("data"))


def signed_string(carried: str, *, url: str | None, salt: str = "",
                  escape_early: bool = False) -> str:
    """What the HMAC covers: the carried fields, then ``url`` (URL tokens), then ``salt``."""
    parts = [carried]
    if url is not None:
        parts.append("url=" + (escape(url) if escape_early else url))
    if salt:
        parts.append("salt=" + salt)
    return FIELD_DELIMITER.join(parts)


def _mac(secret: bytes, message: str, algorithm: str) -> str:
    constructor, _ = _algorithm(algorithm)
    return hmac.new(secret, message.encode("utf-8"), constructor).hexdigest()


# -- matching ----------------------------------------------------------------------------------

_WILDCARDS = re.compile(r"([*?])")


def _compile(pattern: str) -> list[str]:
    """One ACL entry as a list of single characters and the wildcards ``*`` / ``?``; literal
    runs are percent-decoded (so ``%2a`` is a literal ``*``)."""
    out: list[str] = []
    for piece in _WILDCARDS.split(pattern):
        if piece in ("*", "?"):
            out.append(piece)
        elif piece:
            out.extend("\\" + c for c in unquote(piece))  # "\\x": the literal character x
    return out


def _glob(pattern: list[str], path: str) -> bool:
    """Wildcard match of the whole path, linear backtracking to the last ``*`` (no regex: a
    pattern of many ``*`` costs O(len(pattern) * len(path)) at worst)."""
    p = s = 0
    star = -1
    mark = 0
    while s < len(path):
        if p < len(pattern) and (pattern[p] == "?" or
                                 (pattern[p] != "*" and pattern[p][1] == path[s])):
            p += 1
            s += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark = p, s
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            s = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def acl_allows(acl: str, path: str) -> bool:
    """Whether any ``!``-separated entry of ``acl`` matches the whole ``path``."""
    return any(_glob(_compile(entry), path) for entry in acl.split(ACL_DELIMITER))


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _ip_matches(bound: str, client_ip: str, escape_early: bool) -> bool:
    if escape_early:
        bound = unquote_plus(bound)
    a, b = _address(bound), _address(client_ip)
    if a is not None and b is not None:
        return a == b
    return bound == client_ip


# -- finding the token -------------------------------------------------------------------------

def _value(raw: str) -> str:
    """A token as carried: as written, unless it holds no ``=`` at all — then it was
    URL-encoded whole (``urlencode``) and is decoded once. Decoding a token written as is
    would alter what was signed (``acl=%2f*``, escape_early's ``%2f`` and ``+``)."""
    return raw if "=" in raw else unquote_plus(raw)


def find_token(request: TokenRequest, *, token_names: tuple[str, ...] = ("hdnts", "__token__"),
               sources: tuple[str, ...] = ("query", "cookie")
               ) -> tuple[str, str, str, str] | Refusal | None:
    """``(token, where, name, raw)`` from the first of ``sources`` that has one; ``raw`` is
    the value as the request carried it. A token parameter given twice (under one name or
    two) is ``malformed``."""
    for source in sources:
        if source == "query":
            found: list[tuple[str, str]] = []
            for part in request.query.split("&"):
                name, eq, raw = part.partition("=")
                if eq and unquote_plus(name) in token_names:
                    found.append((unquote_plus(name), raw))
            if len(found) > 1:
                return Refusal("malformed")
            if found:
                name, raw = found[0]
                return _value(raw), "query", name, raw
        elif source == "cookie":
            for name in token_names:
                raw = request.cookies.get(name)
                if raw is not None:
                    return _value(raw), "cookie", name, raw
        elif source == "header":
            for name in token_names:
                raw = request.headers.get(name.lower())
                if raw is not None:
                    raw = raw.strip()
                    return _value(raw), "header", name, raw
        else:
            raise ValueError(f"unknown token source {source!r}: query, cookie or header")
    return None


# -- verifying ---------------------------------------------------------------------------------

def verify(request: TokenRequest, ring: KeyRing, *, clock_skew: float = 0.0,
           algorithm: str = "sha256", token_names: tuple[str, ...] = ("hdnts", "__token__"),
           sources: tuple[str, ...] = ("query", "cookie"), escape_early: bool = False,
           salt: str = "") -> Grant | Refusal:
    """The verdict on ``request``'s EdgeAuth token (see the module's docstring)."""
    _algorithm(algorithm)
    found = find_token(request, token_names=token_names, sources=sources)
    if found is None:
        return Refusal("missing")
    if isinstance(found, Refusal):
        return found
    text, where, name, raw = found
    token = parse(text, algorithm=algorithm)
    if isinstance(token, Refusal):
        return token
    if not ring.keys:
        return Refusal("unknown-key")
    message = signed_string(token.signed, url=None if token.acl is not None else request.path,
                            salt=salt, escape_early=escape_early)
    verified = False
    for secret in ring.keys.values():
        # Every key is tried, whatever the earlier ones gave: the time taken does not say
        # which key (if any) verified.
        verified |= hmac.compare_digest(_mac(secret, message, algorithm), token.hmac)
    if not verified:
        return Refusal("bad-signature")
    if token.st is not None and token.st > request.now + clock_skew:
        return Refusal("not-yet-valid")
    if token.exp <= request.now - clock_skew:
        return Refusal("expired")
    if token.acl is not None and not acl_allows(token.acl, request.path):
        return Refusal("acl")
    if token.ip is not None and not _ip_matches(token.ip, request.client_ip, escape_early):
        return Refusal("ip")
    return Grant(expires=float(token.exp), carried=((name, raw),) if where == "query" else ())


# -- minting -----------------------------------------------------------------------------------

def sign(key: str | bytes, *, exp: int, acl: str | Sequence[str] | None = None,
         url: str | None = None, st: int | None = None, ip: str | None = None,
         session_id: str | None = None, data: str | None = None, algorithm: str = "sha256",
         escape_early: bool = False, salt: str = "") -> str:
    """A token for ``reelcdn sign``, byte for byte what ``akamai.edgeauth.EdgeAuth(key=key,
    start_time=st, end_time=exp, ip=ip, session_id=session_id, payload=data,
    algorithm=algorithm, escape_early=escape_early, salt=salt)`` gives from
    ``generate_acl_token(acl)`` or ``generate_url_token(url)``. ``key`` is the hex text
    EdgeAuth takes, or the decoded secret (``bytes``, as a :class:`KeyRing` holds it). Refuses
    (``ValueError``) what the verifier would refuse: no or both of ``acl``/``url``, ``~`` in a
    value, ``!`` or nothing in an ACL entry, ``exp`` not after ``st``."""
    secret = key if isinstance(key, bytes) else secret_from_hex(key)
    if not secret:
        raise ValueError("an empty EdgeAuth key")
    _algorithm(algorithm)
    if (acl is None) == (url is None):
        raise ValueError("give exactly one of acl and url")
    if acl is not None and not isinstance(acl, str):
        entries = list(acl)
        if any(not e or ACL_DELIMITER in e for e in entries):
            raise ValueError(f"an ACL entry is empty or holds {ACL_DELIMITER!r}")
        acl = ACL_DELIMITER.join(entries)
    if acl is not None and (not acl or "" in acl.split(ACL_DELIMITER)):
        raise ValueError("an ACL entry is empty")
    if url is not None and not url:
        raise ValueError("url is empty")
    if int(exp) <= 0 or (st is not None and int(st) <= 0):
        raise ValueError("st and exp are positive Unix seconds")
    if st is not None and int(exp) <= int(st):
        raise ValueError("exp must be after st")

    def written(value: str) -> str:
        return escape(value) if escape_early else value

    fields = []
    if ip:
        fields.append("ip=" + written(ip))
    if st is not None:
        fields.append(f"st={int(st)}")
    fields.append(f"exp={int(exp)}")
    if acl is not None:
        fields.append("acl=" + acl)
    if session_id:
        fields.append("id=" + written(session_id))
    if data:
        fields.append("data=" + written(data))
    carried = FIELD_DELIMITER.join(fields)
    for value in (carried, salt):
        if _CONTROL.search(value):
            raise ValueError("a control character in a token field")
    if any(FIELD_DELIMITER in f.partition("=")[2] for f in fields):
        raise ValueError(f"a token value holds the field delimiter {FIELD_DELIMITER!r}")
    message = signed_string(carried, url=url, salt=salt, escape_early=escape_early)
    return f"{carried}~hmac={_mac(secret, message, algorithm)}"
