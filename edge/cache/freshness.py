"""Storability and freshness of upstream responses, for a SHARED cache.

Pure policy (headers in, a :class:`Freshness` out), run once per cache fill. It implements
RFC 9111 (HTTP caching) as it applies to a shared cache, RFC 9213 (CDN-Cache-Control),
RFC 5861 (stale-while-revalidate / stale-if-error) and the node's operator TTL rules.

Policy choices beyond the RFCs (a cache is always allowed to store less):

* only GET responses are stored (the node turns HEAD misses into GET fills);
* 206 is never stored (the node fetches whole objects), nor 1xx/304 (not full responses);
* other 2xx, 3xx and 4xx codes (299, 303, 400, 403, 429, ...) are stored as RFC 9111 §3
  allows, on explicit freshness (or ``public``) alone, never on a validator or a heuristic of
  their own; ``must-understand`` refuses them;
* 5xx codes other than 501 are stored only through a TTL rule, even with explicit freshness:
  negative caching of server errors is an operator decision. A server error is transient by
  nature, a blanket ``Cache-Control`` on an origin would otherwise pin an outage for its
  max-age, and the node has stale-if-error to ride one out. (nginx stores any code with
  explicit freshness; Varnish, Fastly and Traffic Server store only a list of codes. This
  follows RFC 9111 §3 like nginx for 2xx–4xx and keeps server errors out like the others.);
* Set-Cookie makes a response unstorable: a shared cache must not replay one user's cookie;
* ``private`` and ``no-cache`` with field names are treated like their unqualified forms
  (RFC 9111 §5.2.2.4 notes this is common practice; it is always safe);
* a response with neither freshness nor a validator is not stored: it could never be reused.

Response headers are a ``Mapping[str, str]`` with lowercase names and repeated fields joined
with commas.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reelcdn.edge.config import TtlRule
from reelcdn.edge.http.dates import parse_http_date

__all__ = ["Freshness", "current_age", "decide", "parse_cache_control"]

# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
DELTA_SECONDS_MAX = 2**31

# Heuristically cacheable by default (RFC 9110 §15.1); 206 is one too but is never stored here.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Codes whose caching rules this cache implements ("understands", RFC 9111 §3 / must-understand).
# 302, 303 and 307 are not heuristically cacheable: stored only with explicit freshness.
UNDERSTOOD_STATUSES = (HEURISTIC_STATUSES - {206}) | {302, 303, 307}
_EXPLICIT_ONLY_STATUSES = frozenset({302, 303, 307})

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(slots=True)
class Freshness:
    """What the cache may do with one response.

    ``lifetime`` is the freshness lifetime in seconds (RFC 9111 §4.2.1); the response is fresh
    while its current age (see :func:`current_age`) is below it. ``must_revalidate`` forbids
    serving it stale (must-revalidate, proxy-revalidate, or s-maxage which implies
    proxy-revalidate for a shared cache). ``no_cache`` requires a successful revalidation before
    every reuse, however fresh. ``reason`` says why it is not stored ("method", "status",
    "vary-star", "no-store", "private", "authorization", "set-cookie",
    "no-freshness-no-validator"), or where ``lifetime`` came from ("s-maxage", "max-age",
    "cdn-cache-control", "expires", "heuristic", "ttl-rule", or "validator": no freshness but a
    validator, so stored stale and revalidated on each use).
    """

    storable: bool
    reason: str
    lifetime: float = 0.0
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    must_revalidate: bool = False
    no_cache: bool = False
    has_validator: bool = False


# --------------------------------------------------------------------------------------------
# Cache-Control


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Parse a Cache-Control value into ``{directive: argument or None}``.

    ``cache-directive = token [ "=" ( token / quoted-string ) ]`` (RFC 9111 §5.2). Names are
    case-insensitive so they are lowercased; quoted arguments are unquoted, since recipients
    ought to accept both forms (RFC 9111 §5.2). The first occurrence of a directive wins
    (RFC 9111 §4.2.1).

    Tolerance: a member whose name is not a token is ignored. A member with a valid name but a
    malformed argument (``max-age=1 2``, ``private="x``) keeps its raw argument text, because
    dropping it could lose a restriction (no-store, private); an unparsable number then reads as
    stale, as RFC 9111 §4.2.1 encourages. An unterminated quote is taken literally so it cannot
    swallow the directives after it.
    """
    result: dict[str, str | None] = {}
    if not value:
        return result
    for member in _split_members(value):
        name, eq, arg = member.partition("=")
        name = name.strip(" \t").lower()
        if not name or not _TCHAR.issuperset(name) or name in result:
            continue
        if not eq:
            result[name] = None
            continue
        arg = arg.strip(" \t")
        unquoted = _unquote(arg) if arg.startswith('"') else None
        result[name] = unquoted if unquoted is not None else arg
    return result


def _split_members(value: str) -> list[str]:
    """Split a list on commas that are not inside a (terminated) quoted-string."""
    if '"' not in value:
        return value.split(",")
    members: list[str] = []
    start = i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == ",":
            members.append(value[start:i])
            start = i + 1
        elif c == '"':
            end = _quoted_end(value, i)
            if end > 0:
                i = end
        i += 1
    members.append(value[start:])
    return members


def _quoted_end(value: str, start: int) -> int:
    """Index of the closing quote of the quoted-string at ``start``, or -1 if unterminated."""
    i = start + 1
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i
        else:
            i += 1
    return -1


def _unquote(arg: str) -> str | None:
    """Contents of a quoted-string spanning all of ``arg``, or None if it is not one."""
    if _quoted_end(arg, 0) != len(arg) - 1:
        return None
    out: list[str] = []
    i = 1
    end = len(arg) - 1
    while i < end:
        c = arg[i]
        if c == "\\":  # quoted-pair
            i += 1
            c = arg[i]
        out.append(c)
        i += 1
    return "".join(out)


def _delta_seconds(arg: str | None) -> int | None:
    """``delta-seconds = 1*DIGIT`` (RFC 9111 §1.2.2), clamped to 2^31; None if invalid."""
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    digits = arg.lstrip("0")
    if len(digits) > 10:  # also keeps int() away from huge strings
        return DELTA_SECONDS_MAX
    return min(int(digits or "0"), DELTA_SECONDS_MAX)


# --------------------------------------------------------------------------------------------
# CDN-Cache-Control: a Structured Fields Dictionary (RFC 9213 §2.2, RFC 8941 §4.2.2)


class _SFError(ValueError):
    pass


_SF_LCALPHA = frozenset("abcdefghijklmnopqrstuvwxyz")
_SF_KEY_FIRST = _SF_LCALPHA | {"*"}
_SF_KEY_CHARS = _SF_LCALPHA | frozenset("0123456789_-.*")
_SF_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SF_DIGITS = frozenset("0123456789")
_SF_TOKEN_CHARS = _TCHAR | {":", "/"}
_SF_BASE64 = _SF_ALPHA | _SF_DIGITS | {"+", "/", "="}
# Directives whose argument is delta-seconds: in a targeted field, a non-negative Integer.
_SF_INTEGER_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate",
                                    "stale-if-error"})


def _parse_targeted(value: str) -> dict[str, str | None] | None:
    """Parse CDN-Cache-Control into directives, or None when it is invalid or empty.

    RFC 9213 §2.2: the field is a Structured Fields Dictionary and a parse failure ignores the
    whole field; §2.1: only a valid, non-empty value replaces Cache-Control and Expires. Members
    map back to directives: Boolean true is a directive without argument, Integer, Decimal,
    String and Token give their text, parameters are ignored. Boolean false drops the member.
    Per RFC 8941 a repeated key keeps its last value.

    A member of the wrong type for its directive makes the whole field invalid, as a parse
    failure does: a delta-seconds directive (max-age, s-maxage, stale-while-revalidate,
    stale-if-error) must be a non-negative Integer, so ``max-age="10000"`` (a String),
    ``max-age=1.5``, ``max-age=-1`` or a bare ``max-age`` fall back to Cache-Control. RFC 9213
    §2.2 defines the argument types through the Structured Fields types, and a cache that
    guessed a number out of a String would store what the origin may not have meant; falling
    back is what §2.1 prescribes for an invalid field.
    Restrictive directives (no-store, private, no-cache, ...) with an unexpected value are
    kept without argument instead, like Cache-Control's parser keeps them: dropping the field
    for them could lose a restriction. Byte Sequences and Inner Lists mean nothing to other
    cache directives; they keep the directive with no argument.
    """
    parser = _SFParser(value)
    try:
        members = parser.dictionary()
    except _SFError:
        return None
    kinds = parser.kinds
    for name in _SF_INTEGER_DIRECTIVES.intersection(members):
        if kinds.get(name) != "integer" or (members[name] or "").startswith("-"):
            return None
    return members or None


class _SFParser:
    """Just enough of RFC 8941 §4.2 to validate a Dictionary and read its member values."""

    __slots__ = ("s", "i", "n", "kind", "kinds")

    def __init__(self, value: str) -> None:
        self.s = value.strip(" \t")
        self.i = 0
        self.n = len(self.s)
        self.kind = ""  # the type of the last bare item (or "inner-list")
        self.kinds: dict[str, str] = {}  # member key → the type of its value

    def _peek(self) -> str:
        return self.s[self.i] if self.i < self.n else ""

    def _skip(self, chars: str) -> None:
        while self.i < self.n and self.s[self.i] in chars:
            self.i += 1

    def dictionary(self) -> dict[str, str | None]:
        if not self.s.isascii():
            raise _SFError("non-ASCII")
        out: dict[str, str | None] = {}
        while self.i < self.n:
            key = self._key()
            if self._peek() == "=":
                self.i += 1
                value = self._item_or_inner_list()
                self.kinds[key] = self.kind
            else:
                value = True
                self.kinds[key] = "boolean"
                self._parameters()
            if value is False:
                out.pop(key, None)
            else:
                out[key] = None if value is True else value
            self._skip(" \t")
            if self.i >= self.n:
                break
            if self.s[self.i] != ",":
                raise _SFError("expected ','")
            self.i += 1
            self._skip(" \t")
            if self.i >= self.n:
                raise _SFError("trailing comma")
        return out

    def _key(self) -> str:
        start = self.i
        if self._peek() not in _SF_KEY_FIRST:
            raise _SFError("bad key")
        self.i += 1
        while self.i < self.n and self.s[self.i] in _SF_KEY_CHARS:
            self.i += 1
        return self.s[start : self.i]

    def _item_or_inner_list(self) -> str | bool | None:
        if self._peek() == "(":
            self.i += 1
            while True:
                self._skip(" ")
                if self.i >= self.n:
                    raise _SFError("unterminated inner list")
                if self.s[self.i] == ")":
                    self.i += 1
                    self._parameters()
                    self.kind = "inner-list"
                    return None
                self._bare_item()
                self._parameters()
                if self._peek() not in (" ", ")"):
                    raise _SFError("bad inner list")
        value = self._bare_item()
        kind = self.kind
        self._parameters()  # (parameters parse bare items too: keep the member's type)
        self.kind = kind
        return value

    def _parameters(self) -> None:
        while self._peek() == ";":
            self.i += 1
            self._skip(" ")
            self._key()
            if self._peek() == "=":
                self.i += 1
                self._bare_item()

    def _bare_item(self) -> str | bool | None:
        c = self._peek()
        if c == "-" or c in _SF_DIGITS:
            number = self._number()
            self.kind = "decimal" if "." in number else "integer"
            return number
        if c == '"':
            self.kind = "string"
            return self._string()
        if c == "*" or c in _SF_ALPHA:
            self.kind = "token"
            start = self.i
            self.i += 1
            while self.i < self.n and self.s[self.i] in _SF_TOKEN_CHARS:
                self.i += 1
            return self.s[start : self.i]
        if c == ":":
            end = self.s.find(":", self.i + 1)
            if end < 0 or not _SF_BASE64.issuperset(self.s[self.i + 1 : end]):
                raise _SFError("bad byte sequence")
            self.i = end + 1
            self.kind = "byte-sequence"
            return None
        if c == "?":
            flag = self.s[self.i + 1 : self.i + 2]
            if flag not in ("0", "1"):
                raise _SFError("bad boolean")
            self.i += 2
            self.kind = "boolean"
            return flag == "1"
        raise _SFError("bad item")

    def _number(self) -> str:
        start = self.i
        if self._peek() == "-":
            self.i += 1
        digits_start = self.i
        if self._peek() not in _SF_DIGITS:
            raise _SFError("bad number")
        dot = -1
        while self.i < self.n:
            c = self.s[self.i]
            if c in _SF_DIGITS:
                self.i += 1
            elif c == "." and dot < 0:
                if self.i - digits_start > 12:
                    raise _SFError("decimal too long")
                dot = self.i
                self.i += 1
            else:
                break
            if self.i - digits_start > (15 if dot < 0 else 16):
                raise _SFError("number too long")
        if dot >= 0 and not 1 <= self.i - dot - 1 <= 3:
            raise _SFError("bad decimal")
        return self.s[start : self.i]

    def _string(self) -> str:
        self.i += 1
        out: list[str] = []
        while self.i < self.n:
            c = self.s[self.i]
            self.i += 1
            if c == "\\":
                nxt = self._peek()
                if nxt not in ('"', "\\"):
                    raise _SFError("bad escape")
                out.append(nxt)
                self.i += 1
            elif c == '"':
                return "".join(out)
            elif not " " <= c <= "~":
                raise _SFError("bad string character")
            else:
                out.append(c)
        raise _SFError("unterminated string")


# --------------------------------------------------------------------------------------------
# The decision


def decide(
    method: str,
    status: int,
    headers: Mapping[str, str],
    path: str,
    *,
    request_has_authorization: bool,
    ttl_rules: Sequence[TtlRule],
    now: float,
    heuristic_fraction: float = 0.1,
    heuristic_max: float = 86400.0,
) -> Freshness:
    """Decide whether a response to ``method path`` may be stored, and how long it is fresh.

    ``now`` is when the response was received (it stands in for a missing or invalid Date,
    RFC 9110 §6.6.1). Checks, in order; the first that fails gives ``reason``:

    1. "method" (not GET), "status" (1xx, 206, 304 — never), "vary-star" (``Vary: *`` can
       never be matched again, RFC 9111 §4.1) — no TTL rule overrides these.
    2. "status": a 5xx the cache does not understand (all but 501), or ``must-understand``
       with any code it does not understand, unless a TTL rule covers it. Other codes it
       does not understand (2xx–4xx) go on, but need explicit freshness (RFC 9111 §3).
    3. "no-store", "private", then "authorization" (RFC 9111 §3.5: a request with
       Authorization needs public, s-maxage or must-revalidate), then "set-cookie". A forcing
       TTL rule overrides no-store, private and Set-Cookie, never Authorization.
    4. Freshness: a matching TTL rule sets it ("ttl-rule"); else s-maxage, max-age, Expires
       − Date, heuristic; else, with a validator, lifetime 0 ("validator"); else not stored
       ("no-freshness-no-validator"). 302/303/307 and codes the cache does not understand need
       explicit freshness (or ``public`` with a heuristic, RFC 9111 §4.2.2), else "status".

    A valid, non-empty CDN-Cache-Control replaces Cache-Control and Expires (RFC 9213 §2.1).
    """
    get = headers.get
    targeted: dict[str, str | None] | None = None
    cdn_value = get("cdn-cache-control")
    if cdn_value is not None:
        targeted = _parse_targeted(cdn_value)
    if targeted is not None:
        cc = targeted
        no_cache = "no-cache" in cc
    else:
        cc_value = get("cache-control")
        cc = parse_cache_control(cc_value)
        # Pragma is deprecated (RFC 9111 §5.4); honoured only in the absence of Cache-Control.
        no_cache = "no-cache" in cc or (cc_value is None and _has_pragma_no_cache(get("pragma")))

    must_revalidate = "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc
    etag = get("etag")
    last_modified = parse_http_date(get("last-modified"))
    has_validator = bool(etag and etag.strip(" \t")) or last_modified is not None
    swr = sie = 0.0
    # RFC 9111 §4.2.4: no stale reuse when no-cache, must-revalidate or s-maxage forbid it.
    if not (must_revalidate or no_cache):
        swr = float(_delta_seconds(cc.get("stale-while-revalidate")) or 0)
        sie = float(_delta_seconds(cc.get("stale-if-error")) or 0)

    def result(
        storable: bool, reason: str, lifetime: float = 0.0, nc: bool = no_cache
    ) -> Freshness:
        return Freshness(storable, reason, lifetime, swr, sie, must_revalidate, nc, has_validator)

    if method != "GET":
        return result(False, "method")
    if status < 200 or status == 206 or status == 304:
        return result(False, "status")
    if _has_vary_star(get("vary")):
        return result(False, "vary-star")

    rule = _match_rule(ttl_rules, path, status)
    force = rule is not None and rule.force
    understood = status in UNDERSTOOD_STATUSES
    must_understand = "must-understand" in cc
    if not understood and (
        (must_understand and not force) or (rule is None and status >= 500)
    ):
        return result(False, "status")
    # must-understand with an understood status: ignore no-store (RFC 9111 §5.2.2.3).
    if "no-store" in cc and not force and not (must_understand and understood):
        return result(False, "no-store")
    if "private" in cc and not force:
        return result(False, "private")
    if request_has_authorization and not (
        "public" in cc or "s-maxage" in cc or "must-revalidate" in cc
    ):
        return result(False, "authorization")
    if "set-cookie" in headers and not force:
        return result(False, "set-cookie")

    if rule is not None:
        # The operator's TTL replaces the origin's. A forcing rule also drops no-cache: the
        # usual "no-cache, no-store" pair would otherwise make every hit a revalidation.
        ttl = min(max(float(rule.ttl), 0.0), float(DELTA_SECONDS_MAX))
        return result(True, "ttl-rule", ttl, nc=no_cache and not force)

    explicit = _explicit_lifetime(cc, targeted is not None, headers, now)
    if explicit is not None:
        return result(True, explicit[1], explicit[0])

    # Heuristic freshness (RFC 9111 §4.2.2): no explicit expiration, a heuristically cacheable
    # status or public, and Last-Modified to measure the age of the content by.
    public = "public" in cc
    if last_modified is not None and (public or status in HEURISTIC_STATUSES):
        date = parse_http_date(get("date"))
        elapsed = (now if date is None else date) - last_modified
        lifetime = min(heuristic_max, heuristic_fraction * elapsed)
        return result(True, "heuristic", max(0.0, lifetime))
    if status in _EXPLICIT_ONLY_STATUSES or not understood:
        return result(False, "status")
    if has_validator:
        return result(True, "validator")
    return result(False, "no-freshness-no-validator")


def _explicit_lifetime(
    cc: Mapping[str, str | None],
    targeted: bool,
    headers: Mapping[str, str],
    now: float,
) -> tuple[float, str] | None:
    """(lifetime, reason) from explicit expiration, or None (RFC 9111 §4.2.1, shared cache).

    An invalid s-maxage/max-age/Expires still counts as explicit, with lifetime 0: RFC 9111
    §4.2.1 encourages treating invalid freshness information as stale, and §5.3 says an invalid
    Expires means "already expired". That also rules out the heuristic for such responses.
    """
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            seconds = _delta_seconds(cc[directive])
            reason = "cdn-cache-control" if targeted else directive
            return float(seconds or 0), reason
    if targeted:
        return None  # RFC 9213 §2.1: Expires is ignored along with Cache-Control.
    expires_value = headers.get("expires")
    if expires_value is None:
        return None
    expires = parse_http_date(expires_value)
    if expires is None:
        return 0.0, "expires"
    date = parse_http_date(headers.get("date"))
    lifetime = expires - (now if date is None else date)
    return min(max(lifetime, 0.0), float(DELTA_SECONDS_MAX)), "expires"


def _match_rule(rules: Sequence[TtlRule], path: str, status: int) -> TtlRule | None:
    """The first rule whose glob matches the path and whose statuses include the status."""
    for rule in rules:
        if status in rule.statuses and fnmatch.fnmatchcase(path, rule.match):
            return rule
    return None


def _has_vary_star(vary: str | None) -> bool:
    return vary is not None and "*" in vary and any(m.strip(" \t") == "*" for m in vary.split(","))


def _has_pragma_no_cache(pragma: str | None) -> bool:
    return pragma is not None and any(
        m.strip(" \t").lower() == "no-cache" for m in pragma.split(",")
    )


# --------------------------------------------------------------------------------------------
# Age


def current_age(
    age_header: str | None, date_header: str | None, request_time: float, response_time: float
) -> float:
    """The corrected initial age of a response when it was received (RFC 9111 §4.2.3).

    ::

        apparent_age          = max(0, response_time - date_value)
        response_delay        = response_time - request_time
        corrected_age_value   = age_value + response_delay
        corrected_initial_age = max(apparent_age, corrected_age_value)

    The current age at a later time ``t`` is ``corrected_initial_age + (t - response_time)``
    (the resident time is added by the caller, which knows ``t``). A list-valued Age uses its
    first member and an invalid Age is ignored (RFC 9111 §5.1); a missing or invalid Date is
    taken as the time of receipt (RFC 9110 §6.6.1), giving an apparent age of 0.
    """
    age_value = 0
    if age_header is not None:
        age_value = _delta_seconds(age_header.split(",", 1)[0].strip(" \t")) or 0
    date_value = parse_http_date(date_header)
    apparent_age = 0.0 if date_value is None else max(0.0, response_time - date_value)
    corrected_age_value = age_value + (response_time - request_time)
    return max(apparent_age, corrected_age_value)
