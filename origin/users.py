"""Users of the origin API: HMAC-signed user tokens and a per-user upload rate limiter.

A token is ``NAME.EXP.KID.SIG`` — URL-safe, with no padding and no percent-escapes:

- ``NAME``: the user, 1-64 of ``A-Z a-z 0-9 _ -``;
- ``EXP``: when the token expires, in Unix seconds (decimal);
- ``KID``: which key signed it, 1-32 of the same characters;
- ``SIG``: base64url (unpadded) of HMAC-SHA256(key, ``"reelcdn-user-v1\\n" + NAME.EXP.KID``).

Several keys are valid at once (``verify`` takes a ``{kid: secret}`` mapping), so a key is
rotated by adding the new one, minting with it, and removing the old one once the tokens it
signed have expired. Signatures are compared in constant time (``hmac.compare_digest``).

A key file holds one key a line, ``KID SECRET`` (``#`` starts a comment); the first line is the
key new tokens are signed with. A file holding a single word is one key with the id ``k0``.
Secrets are taken as UTF-8 bytes and must be at least 32 characters long.

No I/O apart from ``load_keys``; the clock is always an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_EXP = re.compile(r"[0-9]{1,12}")
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url unpadded


def valid_name(name: str) -> bool:
    """Whether ``name`` is a user name (1-64 of A-Z a-z 0-9 _ -)."""
    return _NAME.fullmatch(name) is not None
_DOMAIN = b"reelcdn-user-v1\n"
MIN_SECRET = 32
MAX_TOKEN = 200


class BadToken(Exception):
    """A token that does not let its bearer in; ``reason`` says why, for logs and the 401."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Keys:
    """The keys a service accepts (``{kid: secret}``) and the one it signs with."""

    keys: dict[str, bytes]
    current: str

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"the signing key {self.current!r} is not among the keys")
        for kid, secret in self.keys.items():
            if not _KID.fullmatch(kid):
                raise ValueError(f"key id {kid!r}: use 1-32 of A-Z a-z 0-9 _ -")
            if len(secret) < MIN_SECRET:
                raise ValueError(f"key {kid!r}: the secret needs at least {MIN_SECRET} bytes")


def parse_keys(text: str) -> Keys:
    """Keys from a key file's text (format in the module docstring); ValueError if unusable."""
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("the key file holds no key")
    if len(lines) == 1 and len(lines[0].split()) == 1:
        return Keys({"k0": lines[0].encode()}, "k0")
    keys: dict[str, bytes] = {}
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"key line {number}: expected 'KID SECRET'")
        kid, secret = parts
        if kid in keys:
            raise ValueError(f"key line {number}: key id {kid!r} appears twice")
        keys[kid] = secret.encode()
    return Keys(keys, next(iter(keys)))


def load_keys(path: str | Path) -> Keys:
    return parse_keys(Path(path).read_text(encoding="utf-8"))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _sign(secret: bytes, signed: str) -> str:
    return _b64(hmac.new(secret, _DOMAIN + signed.encode("ascii"), hashlib.sha256).digest())


def mint(name: str, key: tuple[str, bytes] | Keys, ttl: float, now: float | None = None) -> str:
    """A token for ``name`` valid for ``ttl`` seconds, signed by ``key`` (``(kid, secret)``, or
    a ``Keys``' current key)."""
    if isinstance(key, Keys):
        key = (key.current, key.keys[key.current])
    kid, secret = key
    if not _NAME.fullmatch(name):
        raise ValueError(f"user name {name!r}: use 1-64 of A-Z a-z 0-9 _ -")
    if not _KID.fullmatch(kid):
        raise ValueError(f"key id {kid!r}: use 1-32 of A-Z a-z 0-9 _ -")
    if ttl <= 0:
        raise ValueError("the ttl must be positive")
    exp = int((time.time() if now is None else now) + ttl)
    signed = f"{name}.{exp}.{kid}"
    return f"{signed}.{_sign(secret, signed)}"


def verify(token: str, keys: Keys | dict[str, bytes], now: float | None = None) -> str:
    """The user a token names, or BadToken(reason): ``malformed``, ``unknown_key``,
    ``bad_signature`` or ``expired``. The signature is checked before the expiry, so an
    expired token never tells a forger anything a valid one would not."""
    table = keys.keys if isinstance(keys, Keys) else keys
    if not token or len(token) > MAX_TOKEN:
        raise BadToken("malformed")
    parts = token.split(".")
    if len(parts) != 4:
        raise BadToken("malformed")
    name, exp, kid, sig = parts
    if not (_NAME.fullmatch(name) and _EXP.fullmatch(exp) and _KID.fullmatch(kid)
            and _SIG.fullmatch(sig)):
        raise BadToken("malformed")
    secret = table.get(kid)
    if secret is None:
        raise BadToken("unknown_key")
    expected = _sign(secret, f"{name}.{exp}.{kid}")
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii")):
        raise BadToken("bad_signature")
    if int(exp) <= (time.time() if now is None else now):
        raise BadToken("expired")
    return name


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` → seconds (positive)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 12h, 30d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class RateLimiter:
    """A token bucket per user: ``rate`` actions per ``window`` seconds, at most ``rate`` in a
    burst. ``take(user, now)`` answers 0.0 when the action may go ahead (and counts it), else
    the seconds until one token is back. Keeps at most ``max_users`` buckets (least recently
    used go first; a forgotten user starts again with a full bucket)."""

    def __init__(self, rate: int, window: float, max_users: int = 100_000) -> None:
        if rate < 1 or window <= 0:
            raise ValueError("the rate limit needs rate >= 1 and window > 0")
        self.rate = rate
        self.window = window
        self.max_users = max_users
        self._per_second = rate / window
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, user: str, now: float) -> float:
        tokens, last = self._buckets.pop(user, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + max(0.0, now - last) * self._per_second)
        if tokens >= 1.0:
            self._buckets[user] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[user] = (tokens, now)
            wait = (1.0 - tokens) / self._per_second
        while len(self._buckets) > self.max_users:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` value (whole seconds, at least 1) for a wait."""
        return str(max(1, math.ceil(wait)))
