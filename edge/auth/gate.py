"""A node's token check: which requests need a token, and the verdict, before the cache.

:class:`TokenGate` is built from a node's ``[tokens]`` (:class:`TokenConfig`). For a request
whose path is protected (a ``protect`` glob matches and no ``exempt`` one does) it builds the
:class:`~reelcdn.edge.auth.verdict.TokenRequest` and asks the format's verifier; a refusal
becomes a 403 at the node, naming its reason.

Verified tokens are remembered (:class:`VerifiedCache`): the key is everything a verdict
depends on — the canonical path, the raw query, the Cookie field, the Host field, the client's
address, and the request fields a token may come in or an expression signs — and a grant is
reused until the token's own expiry or for ``CACHE_SECONDS``, whichever comes first. So the
same request again (a player's retries, a benchmark's loop, a playlist refreshed) costs a
dictionary lookup instead of an HMAC or an RSA verification, and nothing is granted that a
fresh verification would refuse: a different path, address or time-window position is a
different key or an expired entry. Refusals are never remembered (a flood of forged tokens
cannot evict the good ones, and a token that becomes valid — ``nbf`` — is seen at once). The
cache belongs to one gate: a reload that changes the keys builds a new gate, so a retired key
fails from that moment. """

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from http.cookies import CookieError, SimpleCookie
from typing import Any

from reelcdn.edge.auth.verdict import Grant, KeyRing, Refusal, TokenRequest
from reelcdn.edge.config.model import TokenConfig
from reelcdn.extensions.message import Request

__all__ = ["CACHE_SECONDS", "FORMATS", "TokenConfig", "TokenGate", "VerifiedCache"]

#: The formats a node checks, and the query parameters each may carry a token in (left out of
#: cache keys and never forwarded upstream).
FORMATS: dict[str, tuple[str, ...]] = {
    "native": ("token",),
    "akamai": ("hdnts", "__token__"),
    "cloudfront": ("expires", "policy", "signature", "key-pair-id"),
    "nginx_md5": ("md5", "expires"),
}
CACHE_SECONDS = 60.0
CACHE_ENTRIES = 16_384


def _verifier(config: TokenConfig, ring: KeyRing) -> Callable[[TokenRequest], Grant | Refusal]:
    """The format's ``verify`` with the node's options bound."""
    options: dict[str, Any] = {"clock_skew": config.clock_skew}
    if config.format == "native":
        from reelcdn.edge.auth import native as module

        options.update(sources=config.sources, param=config.query_param or "token",
                       cookie=config.cookie or "reelcdn_token",
                       header=(config.header or "reelcdn-token").lower())
    elif config.format == "akamai":
        from reelcdn.edge.auth import akamai as module  # type: ignore[no-redef]

        names = (config.query_param,) if config.query_param else ("hdnts", "__token__")
        options.update(sources=config.sources, token_names=names)
    elif config.format == "cloudfront":
        from reelcdn.edge.auth import cloudfront as module  # type: ignore[no-redef]

        options.update(sources=config.sources)
    elif config.format == "nginx_md5":
        from reelcdn.edge.auth import nginx_md5 as module  # type: ignore[no-redef]
    else:
        raise ValueError(f"unknown token format {config.format!r}")
    options.update(config.options)
    return partial(module.verify, ring=ring, **options)


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regular expression for a list of globs (``*`` matches ``/`` too, as fnmatch)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class VerifiedCache:
    """Grants by request key, each until its deadline; LRU-bounded."""

    def __init__(self, capacity: int = CACHE_ENTRIES, seconds: float = CACHE_SECONDS) -> None:
        self.capacity = capacity
        self.seconds = seconds
        #: key → (deadline, grant).
        self.entries: OrderedDict[tuple[Any, ...], tuple[float, Grant]] = OrderedDict()

    def get(self, key: tuple[Any, ...], now: float) -> Grant | None:
        found = self.entries.get(key)
        if found is None:
            return None
        deadline, grant = found
        if now >= deadline:
            del self.entries[key]
            return None
        return grant

    def put(self, key: tuple[Any, ...], grant: Grant, now: float) -> None:
        """Remember a grant; the entry put longest ago goes when full (first in, first out:
        a hit does not refresh it, which keeps the lookup a plain dictionary read)."""
        self.entries[key] = (min(grant.expires, now + self.seconds), grant)
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)


def _cookies(value: str) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(value)
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


class TokenGate:
    def __init__(self, config: TokenConfig) -> None:
        self.config = config
        self.ring = KeyRing(dict(config.keys), config.current_key or next(iter(config.keys),
                                                                         None))
        self.verify = _verifier(config, self.ring)
        self._protect = _globs(config.protect)
        self._exempt = _globs(config.exempt)
        self.cache = VerifiedCache()
        # Request fields a verdict depends on besides path, query, Cookie, Host and address:
        # a token's own field (the header source) and the fields an nginx expression signs.
        # They are part of a remembered grant's key, or a request without the token (or with
        # other signed fields) would find the grant of one that had it.
        key_fields: list[bytes] = []
        if "header" in config.sources:
            if config.format == "native":
                key_fields.append((config.header or "reelcdn-token").lower().encode())
            elif config.format == "akamai":
                names = (config.query_param,) if config.query_param else ("hdnts", "__token__")
                key_fields += [name.lower().encode() for name in names]
        if config.format == "nginx_md5":
            from reelcdn.edge.auth.nginx_md5 import Expression

            expression = Expression.parse(str(config.options["expression"]))
            key_fields += [name.lower().encode() for name in expression.headers]
        self._key_fields = tuple(dict.fromkeys(key_fields))

    def applies(self, path: str) -> bool:
        """Whether ``path`` needs a token."""
        protect = self._protect
        if protect is None or protect.match(path) is None:
            return False
        exempt = self._exempt
        return exempt is None or exempt.match(path) is None

    def check(self, req: Request, now: float) -> Grant | Refusal | None:
        """None when the path needs no token; else the verdict.

        A remembered grant is looked up first, under the request's key (a grant exists
        only for a protected path, so the protect globs are matched only on the way to a
        verification); the key is the raw bytes of what a verdict depends on."""
        path = req.path
        headers = req.headers
        key: tuple[Any, ...] = (path, req.query, headers.get(b"cookie"), headers.get(b"host"),
                                req.client_ip)
        if self._key_fields:
            key += tuple(headers.get(name) for name in self._key_fields)
        grant = self.cache.get(key, now)
        if grant is not None:
            return grant
        if not self.applies(path):
            return None
        fields = {name.decode("latin-1"): value.decode("latin-1")
                  for name, value in headers.items()}
        cookie = fields.get("cookie", "")
        request = TokenRequest(path=path, query=req.query,
                               cookies=_cookies(cookie) if cookie else {}, headers=fields,
                               client_ip=req.client_ip, now=now)
        verdict = self.verify(request)
        if isinstance(verdict, Grant):
            self.cache.put(key, verdict, now)
        return verdict
