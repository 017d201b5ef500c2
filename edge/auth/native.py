"""reelcdn's own signed-URL token: compact, URL-safe, one token for a whole video.

A token is two base64url (unpadded) parts joined by a dot::

    payload   = "v1" | kid | exp | nbf | ip | acl          ("|"-joined, UTF-8)
    signature = HMAC-SHA256(secret[kid], "reelcdn-token-v1\\n" + payload)   (32 bytes)
    token     = b64url(payload) + "." + b64url(signature)

- ``exp``: Unix seconds after which the token fails (``expired``);
- ``nbf``: optional Unix seconds before which it fails (``not-yet-valid``), empty if none;
- ``ip``: optional client address or prefix (``203.0.113.7``, ``2001:db8::/48``), empty if
  none (``ip``);
- ``acl``: what it grants (``acl``): a path ending in ``/`` grants everything under it
  (``/v/abc/``: the master, the playlists and the segments of video ``abc``); a path with
  ``*`` is a glob where ``*`` matches any characters, ``/`` included (``/v/abc/*.m4s``);
  any other path grants itself alone.

``|`` cannot occur in a kid, a number or an address, and is refused in an ACL, so the payload
splits one way only. The signature covers the payload's exact bytes with a domain prefix of
its own (a user token of the origin API, signed differently, is never a URL token). Only the
kid is read before the signature is checked; nothing else of a forged token is interpreted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping

from reelcdn.edge.auth.verdict import Grant, KeyRing, Refusal, TokenRequest

__all__ = ["DOMAIN", "Claims", "parse_query_param", "sign", "verify", "verify_token"]

DOMAIN = b"reelcdn-token-v1\n"
VERSION = "v1"
MAX_TOKEN = 1024
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url: the one spelling ``_b64encode`` gives (the last character's unused
    bits zero), so no two token strings carry the same signed bytes."""
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(raw) != text:
        raise ValueError("not the canonical base64url spelling")
    return raw


class Claims:
    """What a verified token grants (kept by the gate's cache of verified tokens)."""

    __slots__ = ("acl", "expires", "network", "not_before")

    def __init__(self, expires: int, not_before: int | None, network: ipaddress.IPv4Network |
                 ipaddress.IPv6Network | None, acl: str) -> None:
        self.expires = expires
        self.not_before = not_before
        self.network = network
        self.acl = acl

    def check(self, path: str, client_ip: str, now: float, clock_skew: float) -> str | None:
        """The refusal reason for this request, or None: time, then ACL, then address."""
        if self.expires <= now - clock_skew:
            return "expired"
        if self.not_before is not None and self.not_before > now + clock_skew:
            return "not-yet-valid"
        if not acl_allows(self.acl, path):
            return "acl"
        if self.network is not None:
            try:
                address = ipaddress.ip_address(client_ip)
            except ValueError:
                return "ip"
            if address.version != self.network.version or address not in self.network:
                return "ip"
        return None


def acl_allows(acl: str, path: str) -> bool:
    """Whether ``acl`` (a ``/``-ended prefix, a ``*`` glob, or one path) covers ``path``."""
    if "*" in acl:
        head, *parts = acl.split("*")
        if not path.startswith(head):
            return False
        position = len(head)
        for index, part in enumerate(parts):
            if index == len(parts) - 1:
                return path.endswith(part) and len(path) - len(part) >= position
            found = path.find(part, position)
            if found < 0:
                return False
            position = found + len(part)
        return True  # pragma: no cover (parts is never empty when "*" is in acl)
    if acl.endswith("/"):
        return path.startswith(acl)
    return path == acl


def _check_acl(acl: str) -> None:
    if not acl.startswith("/") or "|" in acl or any(ord(c) < 0x20 or ord(c) == 0x7F
                                                   for c in acl):
        raise ValueError(f"acl must be an absolute path without '|' or control characters: "
                         f"{acl!r}")


def sign(secret: bytes, kid: str, *, acl: str, expires: int, not_before: int | None = None,
         ip: str | None = None) -> str:
    """A token (for ``reelcdn sign`` and tests)."""
    if not _KID.fullmatch(kid):
        raise ValueError(f"key id {kid!r}: use 1-32 of A-Z a-z 0-9 _ -")
    _check_acl(acl)
    if ip:
        ipaddress.ip_network(ip, strict=False)  # ValueError when it is no address
    payload = "|".join((VERSION, kid, str(int(expires)),
                        "" if not_before is None else str(int(not_before)), ip or "", acl))
    raw = payload.encode("utf-8")
    mac = hmac.new(secret, DOMAIN + raw, hashlib.sha256).digest()
    return f"{_b64encode(raw)}.{_b64encode(mac)}"


def verify_token(token: str, ring: KeyRing) -> Claims | Refusal:
    """Check a token's signature and read its claims (not yet held against a request)."""
    if len(token) > MAX_TOKEN or token.count(".") != 1:
        return Refusal("malformed")
    encoded, signature = token.split(".")
    try:
        raw = _b64decode(encoded)
        mac = _b64decode(signature)
        fields = raw.decode("utf-8").split("|")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return Refusal("malformed")
    if len(fields) != 6 or fields[0] != VERSION or len(mac) != 32:
        return Refusal("malformed")
    kid = fields[1]
    secret = ring.get(kid) if _KID.fullmatch(kid) else None
    if secret is None:
        return Refusal("unknown-key" if _KID.fullmatch(kid) else "malformed")
    expected = hmac.new(secret, DOMAIN + raw, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        return Refusal("bad-signature")
    # Signed by us: a field that does not parse is a bug of the signer, still refused.
    _, _, exp, nbf, ip, acl = fields
    try:
        if not exp.isdigit() or (nbf and not nbf.isdigit()):
            raise ValueError("times")
        network = ipaddress.ip_network(ip, strict=False) if ip else None
        _check_acl(acl)
    except ValueError:
        return Refusal("malformed")
    return Claims(int(exp), int(nbf) if nbf else None, network, acl)


def parse_query_param(query: str, name: str) -> str | None | Refusal:
    """The value of query parameter ``name`` (None when absent; malformed when given twice).
    Tokens are base64url and dots: nothing in them is percent-encoded, so the raw value is
    the token."""
    found: str | None = None
    prefix = name + "="
    for part in query.split("&"):
        if part.startswith(prefix):
            if found is not None:
                return Refusal("malformed")
            found = part[len(prefix):]
    return found


def find_token(request: TokenRequest, *, param: str, cookie: str, header: str,
               sources: tuple[str, ...]) -> tuple[str, str] | Refusal | None:
    """``(token, where)`` from the first source that has one, in ``sources`` order."""
    for source in sources:
        if source == "query":
            value = parse_query_param(request.query, param)
            if isinstance(value, Refusal):
                return value
            if value is not None:
                return value, "query"
        elif source == "cookie":
            value = request.cookies.get(cookie)
            if value is not None:
                return value, "cookie"
        elif source == "header":
            value = request.headers.get(header.lower())
            if value is not None:
                return value.strip(), "header"
    return None


def verify(request: TokenRequest, ring: KeyRing, *, clock_skew: float = 0.0,
           param: str = "token", cookie: str = "reelcdn_token", header: str = "reelcdn-token",
           sources: tuple[str, ...] = ("query", "cookie", "header")) -> Grant | Refusal:
    found = find_token(request, param=param, cookie=cookie, header=header, sources=sources)
    if found is None:
        return Refusal("missing")
    if isinstance(found, Refusal):
        return found
    token, where = found
    claims = verify_token(token, ring)
    if isinstance(claims, Refusal):
        return claims
    reason = claims.check(request.path, request.client_ip, request.now, clock_skew)
    if reason is not None:
        return Refusal(reason)
    return Grant(expires=float(claims.expires),
                 carried=((param, token),) if where == "query" else ())


def ring_from(keys: Mapping[str, bytes], current: str | None = None) -> KeyRing:
    return KeyRing(dict(keys), current or next(iter(keys), None))
