"""An invalid CDN-Cache-Control is ignored as a whole (RFC 9213 §2.1, §2.2): a member that is
not an RFC 8941 Dictionary member, or a delta-seconds directive that is not a non-negative
Integer, and the cache falls back to Cache-Control and Expires."""

from __future__ import annotations

import pytest

from reelcdn.edge.cache.freshness import decide

NOW = 1_700_000_000.0
FALLBACK = {"cache-control": "max-age=6"}


def run(headers: dict[str, str], status: int = 200):
    return decide("GET", status, headers, "/x", request_has_authorization=False,
                  ttl_rules=(), now=NOW)


@pytest.mark.parametrize("value", [
    'max-age="10000"',              # a String, not an Integer
    "max-age=1.5",                  # a Decimal
    "max-age=-1",                   # an Integer, but not delta-seconds
    "max-age",                      # Boolean true
    "max-age=?1",
    "max-age=:AAAA:",               # a Byte Sequence
    "max-age=(1 2)",                # an Inner List
    "max-age=tok",                  # a Token
    's-maxage="60"',
    'max-age=600, stale-while-revalidate="30"',
    "stale-if-error=1.0, max-age=600",
    "max-age=600, Public",          # an uppercase key: not a Dictionary
    "max-age=600, x y",             # a member that does not parse
    "max-age=600, é",
    "max-age=600;",                 # a parameter without a key
])
def test_an_invalid_targeted_field_falls_back_to_cache_control(value: str) -> None:
    result = run({"cdn-cache-control": value, **FALLBACK})
    assert (result.storable, result.reason, result.lifetime) == (True, "max-age", 6)
    assert result.stale_while_revalidate == 0 and result.stale_if_error == 0


def test_an_invalid_targeted_field_falls_back_to_expires_and_to_nothing() -> None:
    expires = {"expires": "Tue, 14 Nov 2023 22:13:29 GMT", "date": "Tue, 14 Nov 2023 22:13:20 GMT"}
    result = run({"cdn-cache-control": 'max-age="10000"', **expires})
    assert (result.reason, result.lifetime) == ("expires", 9)
    result = run({"cdn-cache-control": 'max-age="10000"'})
    assert (result.storable, result.reason) == (False, "no-freshness-no-validator")


@pytest.mark.parametrize(("value", "lifetime"), [
    ("max-age=600", 600),
    ("max-age=600;a=1, public", 600),       # parameters are ignored
    ('max-age=600, no-cache="set-cookie"', 600),
    ("max-age=600, x-ext=1.5, y=\"s\"", 600),  # unknown directives may be of any type
    ("max-age=0", 0),
])
def test_a_valid_targeted_field_still_wins(value: str, lifetime: int) -> None:
    result = run({"cdn-cache-control": value, **FALLBACK})
    assert (result.reason, result.lifetime) == ("cdn-cache-control", lifetime)
