"""What every token format shares: the request as a verifier sees it, and the verdicts.

A verifier is a pure function of a :class:`TokenRequest` (the canonical path, the raw query,
the cookies, the client's address, the time) and a :class:`KeyRing`: it returns a
:class:`Grant` or a :class:`Refusal` naming one of :data:`REASONS`. No I/O, no clock of its
own, so hypothesis can drive it and the node can call it on every request.

Reasons (the ``Token-Error`` field and body of a 403, and the refusal metric's label):

- ``missing``: the request carries no token where the node looks for one;
- ``malformed``: something that should be a token does not parse (truncated, bad encoding,
  a field twice, a field out of place);
- ``bad-signature``: well-formed, but the signature does not verify under the named key;
- ``unknown-key``: the token names a key the node does not hold (never held, or retired);
- ``expired`` / ``not-yet-valid``: outside its validity window (± the node's clock skew);
- ``acl``: valid, but not for this path;
- ``ip``: valid, but bound to another client address.

A refusal never says what the expected signature would have been.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "REASONS",
    "Grant",
    "KeyRing",
    "Refusal",
    "TokenRequest",
    "Verifier",
]

REASONS = ("missing", "malformed", "bad-signature", "unknown-key", "expired", "not-yet-valid",
           "acl", "ip")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """The parts of a request a token may sign or be carried in.

    ``path`` is the canonical, percent-decoded path the node keys and fills by (never the raw
    target: two spellings of one path must not get two verdicts). ``query`` is the raw query
    string (without ``?``) as the client sent it: formats that sign the URL need its exact
    bytes. ``cookies`` are the request's cookies by name (the last of a repeated name wins).
    ``client_ip`` is the peer address of the connection. ``now`` is Unix seconds.
    """

    path: str
    query: str = ""
    cookies: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lowercased names
    client_ip: str = ""
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class Grant:
    """A verified token: until when it is valid (Unix seconds) and, for a verifier that can
    tell, which query parameters carried it (rendered playlists copy them to every URI)."""

    expires: float
    carried: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown refusal reason {self.reason!r}")


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The keys a node accepts, by key id: HMAC secrets (bytes), or for CloudFront, public
    keys (PEM text). ``current`` is the id new tokens are signed with (``reelcdn sign``).
    A reload replaces the whole ring: a retired key fails from that moment."""

    keys: Mapping[str, bytes]
    current: str | None = None

    def get(self, kid: str) -> bytes | None:
        return self.keys.get(kid)


class Verifier:
    """The shape of a format's verifier (documentation; formats are plain functions):

    ``verify(request: TokenRequest, ring: KeyRing, *, clock_skew: float, **options)
    -> Grant | Refusal``."""
