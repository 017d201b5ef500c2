"""Tests for reelcdn.edge.cache.freshness (RFC 9111 / 9213 / 5861) and reelcdn.edge.http.dates."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelcdn.edge.cache.freshness import (
    DELTA_SECONDS_MAX,
    Freshness,
    current_age,
    decide,
    parse_cache_control,
)
from reelcdn.edge.config import TtlRule
from reelcdn.edge.http import dates as httpdate
from reelcdn.edge.http.dates import format_http_date, http_date_now_bytes, parse_http_date

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
PATH = "/v/abc/720p/seg_00001.m4s"


def H(ts: float) -> str:
    return format_http_date(ts)


def run(
    headers: dict[str, str],
    status: int = 200,
    *,
    method: str = "GET",
    path: str = PATH,
    auth: bool = False,
    rules: tuple[TtlRule, ...] = (),
    **kw: float,
) -> Freshness:
    return decide(
        method,
        status,
        headers,
        path,
        request_has_authorization=auth,
        ttl_rules=rules,
        now=NOW,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# parse_cache_control
# ---------------------------------------------------------------------------------------------

CC_CASES: list[tuple[str | None, dict[str, str | None]]] = [
    (None, {}),
    ("", {}),
    ("max-age=60", {"max-age": "60"}),
    ("Max-Age=60, PUBLIC", {"max-age": "60", "public": None}),
    ("no-store,no-cache , private", {"no-store": None, "no-cache": None, "private": None}),
    ('max-age="60"', {"max-age": "60"}),
    ('no-cache="Set-Cookie, X-Foo", max-age=5', {"no-cache": "Set-Cookie, X-Foo", "max-age": "5"}),
    (r'private="a\"b", x=1', {"private": 'a"b', "x": "1"}),
    ("max-age=5, max-age=10", {"max-age": "5"}),  # first wins
    ("MAX-AGE=5, max-age=10", {"max-age": "5"}),
    (",, ,max-age=5,", {"max-age": "5"}),
    ("=5, foo bar, a/b, max-age=5", {"max-age": "5"}),  # invalid names ignored
    ("max-age=1 2", {"max-age": "1 2"}),  # junk argument kept raw: reads as invalid (stale)
    ("max-age =  7", {"max-age": "7"}),
    ("max-age=", {"max-age": ""}),
    ('no-cache="x, no-store', {"no-cache": '"x', "no-store": None}),  # unterminated quote
    (
        "stale-while-revalidate=30, stale-if-error=600",
        {
            "stale-while-revalidate": "30",
            "stale-if-error": "600",
        },
    ),
]


@pytest.mark.parametrize(("value", "expected"), CC_CASES)
def test_parse_cache_control(value: str | None, expected: dict[str, str | None]) -> None:
    assert parse_cache_control(value) == expected


@given(st.text())
def test_parse_cache_control_never_raises(value: str) -> None:
    result = parse_cache_control(value)
    assert all(name == name.lower() and name for name in result)


@given(st.text(alphabet='abcdeimnoprstvx-=", \\;*0123456789'))
def test_parse_cache_control_never_raises_on_near_miss(value: str) -> None:
    parse_cache_control(value)


# ---------------------------------------------------------------------------------------------
# decide: table of (headers, kwargs, expected fields)
# ---------------------------------------------------------------------------------------------

LM = H(NOW - 10_000)
DECIDE_CASES: list[tuple[str, dict[str, str], dict[str, object], dict[str, object]]] = [
    # explicit freshness, shared-cache order
    (
        "max-age",
        {"cache-control": "max-age=60"},
        {},
        dict(storable=True, reason="max-age", lifetime=60),
    ),
    (
        "s-maxage wins",
        {"cache-control": "max-age=60, s-maxage=30"},
        {},
        dict(storable=True, reason="s-maxage", lifetime=30, must_revalidate=True),
    ),
    (
        "s-maxage=0 wins",
        {"cache-control": "s-maxage=0, max-age=60"},
        {},
        dict(storable=True, reason="s-maxage", lifetime=0),
    ),
    (
        "max-age over expires",
        {"cache-control": "max-age=60", "expires": H(NOW + 999), "date": H(NOW)},
        {},
        dict(reason="max-age", lifetime=60),
    ),
    (
        "quoted max-age",
        {"cache-control": 'max-age="120"'},
        {},
        dict(reason="max-age", lifetime=120),
    ),
    ("first max-age", {"cache-control": "max-age=5, max-age=500"}, {}, dict(lifetime=5)),
    (
        "invalid max-age is stale",
        {"cache-control": "max-age=abc", "last-modified": LM},
        {},
        dict(storable=True, reason="max-age", lifetime=0),
    ),
    (
        "negative max-age is stale",
        {"cache-control": "max-age=-1"},
        {},
        dict(storable=True, lifetime=0),
    ),
    (
        "huge max-age clamps",
        {"cache-control": "max-age=99999999999999999999999"},
        {},
        dict(lifetime=DELTA_SECONDS_MAX),
    ),
    (
        "expires - date",
        {"expires": H(NOW + 100), "date": H(NOW - 20)},
        {},
        dict(storable=True, reason="expires", lifetime=120),
    ),
    ("expires, no date", {"expires": H(NOW + 100)}, {}, dict(reason="expires", lifetime=100)),
    (
        "expires, bad date",
        {"expires": H(NOW + 100), "date": "yesterday"},
        {},
        dict(reason="expires", lifetime=100),
    ),
    (
        "expires asctime",
        {"expires": time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(NOW + 50))},
        {},
        dict(reason="expires", lifetime=50),
    ),
    (
        "expires in past",
        {"expires": H(NOW - 100), "date": H(NOW)},
        {},
        dict(storable=True, reason="expires", lifetime=0),
    ),
    (
        "invalid expires is stale",
        {"expires": "0", "last-modified": LM},
        {},
        dict(storable=True, reason="expires", lifetime=0),
    ),
    (
        "two expires is stale",
        {"expires": f"{H(NOW + 10)}, {H(NOW + 20)}"},
        {},
        dict(reason="expires", lifetime=0),
    ),
    # heuristic
    (
        "heuristic",
        {"last-modified": LM, "date": H(NOW)},
        {},
        dict(storable=True, reason="heuristic", lifetime=1000, has_validator=True),
    ),
    (
        "heuristic uses Date",
        {"last-modified": LM, "date": H(NOW - 5000)},
        {},
        dict(reason="heuristic", lifetime=500),
    ),
    ("heuristic no Date", {"last-modified": LM}, {}, dict(reason="heuristic", lifetime=1000)),
    ("heuristic fraction", {"last-modified": LM}, {"heuristic_fraction": 0.5}, dict(lifetime=5000)),
    (
        "heuristic cap",
        {"last-modified": H(NOW - 10_000_000)},
        {},
        dict(reason="heuristic", lifetime=86400),
    ),
    ("heuristic cap kw", {"last-modified": LM}, {"heuristic_max": 60.0}, dict(lifetime=60)),
    (
        "heuristic future LM",
        {"last-modified": H(NOW + 500), "date": H(NOW)},
        {},
        dict(storable=True, reason="heuristic", lifetime=0),
    ),
    ("heuristic 404", {"last-modified": LM}, {"status": 404}, dict(reason="heuristic")),
    ("heuristic 301", {"last-modified": LM}, {"status": 301}, dict(reason="heuristic")),
    (
        "no heuristic without LM",
        {"etag": '"x"'},
        {},
        dict(storable=True, reason="validator", lifetime=0, has_validator=True),
    ),
    (
        "invalid LM is no validator",
        {"last-modified": "yesterday"},
        {},
        dict(storable=False, reason="no-freshness-no-validator", has_validator=False),
    ),
    ("nothing", {}, {}, dict(storable=False, reason="no-freshness-no-validator")),
    (
        "public alone",
        {"cache-control": "public"},
        {},
        dict(storable=False, reason="no-freshness-no-validator"),
    ),
    (
        "heuristic not over explicit",
        {"cache-control": "max-age=0", "last-modified": LM},
        {},
        dict(reason="max-age", lifetime=0),
    ),
    # 302/307: explicit freshness only (or public + heuristic)
    (
        "302 max-age",
        {"cache-control": "max-age=60"},
        {"status": 302},
        dict(storable=True, lifetime=60),
    ),
    ("307 expires", {"expires": H(NOW + 60)}, {"status": 307}, dict(storable=True, lifetime=60)),
    (
        "302 LM only",
        {"last-modified": LM, "etag": '"e"'},
        {"status": 302},
        dict(storable=False, reason="status"),
    ),
    (
        "302 public LM",
        {"cache-control": "public", "last-modified": LM},
        {"status": 302},
        dict(storable=True, reason="heuristic", lifetime=1000),
    ),
    # statuses
    (
        "206",
        {"cache-control": "max-age=60"},
        {"status": 206},
        dict(storable=False, reason="status"),
    ),
    (
        "304",
        {"cache-control": "max-age=60"},
        {"status": 304},
        dict(storable=False, reason="status"),
    ),
    (
        "100",
        {"cache-control": "max-age=60"},
        {"status": 100},
        dict(storable=False, reason="status"),
    ),
    (
        "500",
        {"cache-control": "max-age=60"},
        {"status": 500},
        dict(storable=False, reason="status"),
    ),
    (
        "503",
        {"cache-control": "max-age=60"},
        {"status": 503},
        dict(storable=False, reason="status"),
    ),
    (
        "303",
        {"cache-control": "max-age=60"},
        {"status": 303},
        dict(storable=True, lifetime=60),
    ),
    (
        "299 max-age",
        {"cache-control": "max-age=60"},
        {"status": 299},
        dict(storable=True, lifetime=60),
    ),
    (
        "400 validator only",
        {"etag": '"e"', "last-modified": LM},
        {"status": 400},
        dict(storable=False, reason="status"),
    ),
    ("410", {"cache-control": "max-age=60"}, {"status": 410}, dict(storable=True, lifetime=60)),
    ("204", {"cache-control": "max-age=60"}, {"status": 204}, dict(storable=True, lifetime=60)),
    ("501", {"cache-control": "max-age=60"}, {"status": 501}, dict(storable=True, lifetime=60)),
    # methods
    (
        "HEAD",
        {"cache-control": "max-age=60"},
        {"method": "HEAD"},
        dict(storable=False, reason="method"),
    ),
    (
        "POST",
        {"cache-control": "max-age=60"},
        {"method": "POST"},
        dict(storable=False, reason="method"),
    ),
    (
        "get",
        {"cache-control": "max-age=60"},
        {"method": "get"},
        dict(storable=False, reason="method"),
    ),
    # storability restrictions
    (
        "no-store",
        {"cache-control": "no-store, max-age=60"},
        {},
        dict(storable=False, reason="no-store"),
    ),
    (
        "private",
        {"cache-control": "private, max-age=60"},
        {},
        dict(storable=False, reason="private"),
    ),
    (
        "private fields",
        {"cache-control": 'private="set-cookie", max-age=60'},
        {},
        dict(storable=False, reason="private"),
    ),
    (
        "set-cookie",
        {"cache-control": "public, max-age=60", "set-cookie": "a=b"},
        {},
        dict(storable=False, reason="set-cookie"),
    ),
    (
        "vary star",
        {"cache-control": "max-age=60", "vary": "*"},
        {},
        dict(storable=False, reason="vary-star"),
    ),
    (
        "vary list star",
        {"cache-control": "max-age=60", "vary": "accept-encoding, *"},
        {},
        dict(storable=False, reason="vary-star"),
    ),
    (
        "vary ok",
        {"cache-control": "max-age=60", "vary": "accept-encoding"},
        {},
        dict(storable=True),
    ),
    (
        "must-understand ignores no-store",
        {"cache-control": "no-store, must-understand, max-age=9"},
        {},
        dict(storable=True, lifetime=9),
    ),
    (
        "must-understand unknown status",
        {"cache-control": "must-understand, max-age=9"},
        {"status": 599},
        dict(storable=False, reason="status"),
    ),
    # Authorization (RFC 9111 §3.5)
    (
        "auth",
        {"cache-control": "max-age=60"},
        {"auth": True},
        dict(storable=False, reason="authorization"),
    ),
    ("auth public", {"cache-control": "public, max-age=60"}, {"auth": True}, dict(storable=True)),
    ("auth s-maxage", {"cache-control": "s-maxage=60"}, {"auth": True}, dict(storable=True)),
    (
        "auth must-revalidate",
        {"cache-control": "must-revalidate, max-age=60"},
        {"auth": True},
        dict(storable=True, must_revalidate=True),
    ),
    (
        "auth proxy-revalidate",
        {"cache-control": "proxy-revalidate, max-age=60"},
        {"auth": True},
        dict(storable=False, reason="authorization"),
    ),
    ("auth nothing", {"etag": '"x"'}, {"auth": True}, dict(storable=False, reason="authorization")),
    # no-cache: lifetime still parsed
    (
        "no-cache",
        {"cache-control": "no-cache, max-age=60"},
        {},
        dict(storable=True, reason="max-age", lifetime=60, no_cache=True),
    ),
    (
        "no-cache fields",
        {"cache-control": 'no-cache="x-user", max-age=60'},
        {},
        dict(lifetime=60, no_cache=True),
    ),
    (
        "no-cache validator",
        {"cache-control": "no-cache", "etag": '"v"'},
        {},
        dict(storable=True, reason="validator", no_cache=True),
    ),
    (
        "no-cache nothing",
        {"cache-control": "no-cache"},
        {},
        dict(storable=False, reason="no-freshness-no-validator"),
    ),
    (
        "pragma",
        {"pragma": "no-cache", "expires": H(NOW + 60)},
        {},
        dict(lifetime=60, no_cache=True),
    ),
    (
        "pragma ignored with CC",
        {"pragma": "no-cache", "cache-control": "max-age=60"},
        {},
        dict(no_cache=False),
    ),
    ("pragma other", {"pragma": "x-foo", "expires": H(NOW + 60)}, {}, dict(no_cache=False)),
    # stale-while-revalidate / stale-if-error
    (
        "swr sie",
        {"cache-control": "max-age=1, stale-while-revalidate=30, stale-if-error=600"},
        {},
        dict(stale_while_revalidate=30, stale_if_error=600, must_revalidate=False),
    ),
    (
        "swr invalid",
        {"cache-control": "max-age=1, stale-while-revalidate=x, stale-if-error=-5"},
        {},
        dict(stale_while_revalidate=0, stale_if_error=0),
    ),
    (
        "swr no value",
        {"cache-control": "max-age=1, stale-while-revalidate"},
        {},
        dict(stale_while_revalidate=0),
    ),
    (
        "swr quoted",
        {"cache-control": 'max-age=1, stale-while-revalidate="7"'},
        {},
        dict(stale_while_revalidate=7),
    ),
    (
        "swr must-revalidate",
        {
            "cache-control": "max-age=1, must-revalidate, stale-while-revalidate=30, "
            "stale-if-error=60"
        },
        {},
        dict(stale_while_revalidate=0, stale_if_error=0, must_revalidate=True),
    ),
    (
        "swr proxy-revalidate",
        {"cache-control": "max-age=1, proxy-revalidate, stale-if-error=60"},
        {},
        dict(stale_if_error=0, must_revalidate=True),
    ),
    (
        "swr s-maxage",
        {"cache-control": "s-maxage=1, stale-while-revalidate=30"},
        {},
        dict(stale_while_revalidate=0, must_revalidate=True),
    ),
    (
        "swr no-cache",
        {"cache-control": "max-age=1, no-cache, stale-if-error=60"},
        {},
        dict(stale_if_error=0),
    ),
    # CDN-Cache-Control (RFC 9213)
    (
        "cdn over cc",
        {"cdn-cache-control": "max-age=600", "cache-control": "no-store"},
        {},
        dict(storable=True, reason="cdn-cache-control", lifetime=600),
    ),
    (
        "cdn over cc max-age",
        {"cdn-cache-control": "max-age=600", "cache-control": "s-maxage=5"},
        {},
        dict(reason="cdn-cache-control", lifetime=600, must_revalidate=False),
    ),
    (
        "cdn s-maxage",
        {"cdn-cache-control": "s-maxage=60, max-age=600"},
        {},
        dict(reason="cdn-cache-control", lifetime=60, must_revalidate=True),
    ),
    (
        "cdn no-store",
        {"cdn-cache-control": "no-store", "cache-control": "public, max-age=60"},
        {},
        dict(storable=False, reason="no-store"),
    ),
    (
        "cdn private",
        {"cdn-cache-control": "private", "cache-control": "max-age=60"},
        {},
        dict(storable=False, reason="private"),
    ),
    (
        "cdn ignores expires",
        {"cdn-cache-control": "must-revalidate", "expires": H(NOW + 60), "etag": '"e"'},
        {},
        dict(storable=True, reason="validator", lifetime=0),
    ),
    (
        "cdn public heuristic",
        {"cdn-cache-control": "public", "expires": H(NOW + 60), "last-modified": LM},
        {},
        dict(reason="heuristic", lifetime=1000),
    ),
    (
        "cdn stale directives",
        {
            "cdn-cache-control": "max-age=10, stale-while-revalidate=20",
            "cache-control": "max-age=1, stale-if-error=99",
        },
        {},
        dict(lifetime=10, stale_while_revalidate=20, stale_if_error=0),
    ),
    (
        "cdn no-cache",
        {"cdn-cache-control": "no-cache, max-age=10", "cache-control": "max-age=1"},
        {},
        dict(lifetime=10, no_cache=True),
    ),
    (
        "cdn ignores cc no-cache",
        {"cdn-cache-control": "max-age=10", "cache-control": "no-cache"},
        {},
        dict(lifetime=10, no_cache=False),
    ),
    (
        "cdn ignores pragma",
        {"cdn-cache-control": "max-age=10", "pragma": "no-cache"},
        {},
        dict(no_cache=False),
    ),
    (
        "cdn string max-age makes the field invalid",
        {"cdn-cache-control": 'max-age="30", private="set-cookie"', "cache-control": "private"},
        {},
        dict(storable=False, reason="private"),
    ),
    (
        "cdn string arg of a restriction",
        {"cdn-cache-control": 'max-age=30, private="set-cookie"'},
        {},
        dict(storable=False, reason="private"),
    ),
    ("cdn last duplicate", {"cdn-cache-control": "max-age=5, max-age=50"}, {}, dict(lifetime=50)),
    (
        "cdn params ignored",
        {"cdn-cache-control": "max-age=50;foo=bar, public"},
        {},
        dict(lifetime=50),
    ),
    (
        "cdn auth",
        {"cdn-cache-control": "s-maxage=60", "cache-control": "max-age=60"},
        {"auth": True},
        dict(storable=True),
    ),
    (
        "cdn invalid falls back",
        {"cdn-cache-control": "Max-Age=600", "cache-control": "max-age=6"},
        {},
        dict(reason="max-age", lifetime=6),
    ),
    (
        "cdn trailing comma falls back",
        {"cdn-cache-control": "max-age=600,", "cache-control": "max-age=6"},
        {},
        dict(lifetime=6),
    ),
    (
        "cdn empty falls back",
        {"cdn-cache-control": "", "cache-control": "max-age=6"},
        {},
        dict(reason="max-age", lifetime=6),
    ),
    (
        "cdn falls back to expires",
        {"cdn-cache-control": "max-age=1 2", "expires": H(NOW + 9)},
        {},
        dict(reason="expires", lifetime=9),
    ),
    (
        "cdn decimal makes the field invalid",
        {"cdn-cache-control": "max-age=1.5", "cache-control": "max-age=6"},
        {},
        dict(reason="max-age", lifetime=6),
    ),
]


@pytest.mark.parametrize(
    ("headers", "kwargs", "expected"),
    [pytest.param(h, k, e, id=name) for name, h, k, e in DECIDE_CASES],
)
def test_decide(
    headers: dict[str, str], kwargs: dict[str, object], expected: dict[str, object]
) -> None:
    kw = dict(kwargs)
    status = kw.pop("status", 200)
    result = run(headers, status, **kw)  # type: ignore[arg-type]
    got = {name: getattr(result, name) for name in expected}
    assert got == expected, result


# ---------------------------------------------------------------------------------------------
# TTL rules
# ---------------------------------------------------------------------------------------------

SEG = TtlRule(match="/v/*/seg_*.m4s", ttl=3600)
M3U8 = TtlRule(match="*.m3u8", ttl=2)
NEG = TtlRule(match="/v/*", ttl=10, statuses=frozenset({404, 500, 502, 503, 504}))
FORCE = TtlRule(match="/v/*", ttl=30, force=True)

RULE_CASES: list[tuple[str, dict[str, str], dict[str, object], dict[str, object]]] = [
    (
        "rule overrides max-age",
        {"cache-control": "max-age=60"},
        {"rules": (SEG,)},
        dict(storable=True, reason="ttl-rule", lifetime=3600),
    ),
    (
        "rule no freshness no validator",
        {},
        {"rules": (SEG,)},
        dict(storable=True, reason="ttl-rule", lifetime=3600),
    ),
    (
        "rule path mismatch",
        {"cache-control": "max-age=60"},
        {"rules": (M3U8,)},
        dict(reason="max-age", lifetime=60),
    ),
    (
        "rule glob",
        {},
        {"rules": (M3U8,), "path": "/v/abc/720p/index.m3u8"},
        dict(reason="ttl-rule", lifetime=2),
    ),
    (
        "rule path case-sensitive",
        {},
        {"rules": (M3U8,), "path": "/v/a/INDEX.M3U8"},
        dict(storable=False, reason="no-freshness-no-validator"),
    ),
    ("first rule wins", {}, {"rules": (SEG, NEG)}, dict(lifetime=3600)),
    (
        "rule status mismatch skips to next",
        {},
        {"rules": (SEG, NEG), "status": 404},
        dict(reason="ttl-rule", lifetime=10),
    ),
    (
        "rule status mismatch",
        {"cache-control": "max-age=60"},
        {"rules": (NEG,)},
        dict(reason="max-age", lifetime=60),
    ),
    (
        "negative caching 503",
        {},
        {"rules": (NEG,), "status": 503},
        dict(storable=True, reason="ttl-rule", lifetime=10),
    ),
    (
        "negative caching 500 no-store",
        {"cache-control": "no-store"},
        {"rules": (NEG,), "status": 500},
        dict(storable=False, reason="no-store"),
    ),
    ("no rule 503", {}, {"rules": (SEG,), "status": 503}, dict(storable=False, reason="status")),
    ("rule 206 never", {}, {"rules": (SEG,), "status": 206}, dict(storable=False, reason="status")),
    (
        "rule no-store without force",
        {"cache-control": "no-store"},
        {"rules": (SEG,)},
        dict(storable=False, reason="no-store"),
    ),
    (
        "rule private without force",
        {"cache-control": "private"},
        {"rules": (SEG,)},
        dict(storable=False, reason="private"),
    ),
    (
        "rule set-cookie without force",
        {"set-cookie": "a=b"},
        {"rules": (SEG,)},
        dict(storable=False, reason="set-cookie"),
    ),
    (
        "force no-store",
        {"cache-control": "no-store, no-cache, must-revalidate"},
        {"rules": (FORCE,)},
        dict(storable=True, reason="ttl-rule", lifetime=30, no_cache=False, must_revalidate=True),
    ),
    (
        "force private",
        {"cache-control": "private"},
        {"rules": (FORCE,)},
        dict(storable=True, reason="ttl-rule", lifetime=30),
    ),
    (
        "force set-cookie",
        {"set-cookie": "a=b"},
        {"rules": (FORCE,)},
        dict(storable=True, reason="ttl-rule"),
    ),
    (
        "rule keeps no-cache without force",
        {"cache-control": "no-cache"},
        {"rules": (SEG,)},
        dict(storable=True, lifetime=3600, no_cache=True),
    ),
    (
        "force never vary star",
        {"vary": "*"},
        {"rules": (FORCE,)},
        dict(storable=False, reason="vary-star"),
    ),
    (
        "force never HEAD",
        {},
        {"rules": (FORCE,), "method": "HEAD"},
        dict(storable=False, reason="method"),
    ),
    (
        "force never POST",
        {},
        {"rules": (FORCE,), "method": "POST"},
        dict(storable=False, reason="method"),
    ),
    (
        "force never authorization",
        {},
        {"rules": (FORCE,), "auth": True},
        dict(storable=False, reason="authorization"),
    ),
    ("rule negative ttl", {}, {"rules": (TtlRule(match="*", ttl=-5),)}, dict(lifetime=0)),
    (
        "rule keeps stale directives",
        {"cache-control": "max-age=1, stale-if-error=60"},
        {"rules": (SEG,)},
        dict(lifetime=3600, stale_if_error=60),
    ),
    (
        "rule with cdn no-store",
        {"cdn-cache-control": "no-store"},
        {"rules": (SEG,)},
        dict(storable=False, reason="no-store"),
    ),
]


@pytest.mark.parametrize(
    ("headers", "kwargs", "expected"),
    [pytest.param(h, k, e, id=name) for name, h, k, e in RULE_CASES],
)
def test_decide_ttl_rules(
    headers: dict[str, str], kwargs: dict[str, object], expected: dict[str, object]
) -> None:
    test_decide(headers, kwargs, expected)


def test_not_storable_fields() -> None:
    result = run({"cache-control": "no-store"})
    assert result == Freshness(storable=False, reason="no-store", lifetime=0.0)


# ---------------------------------------------------------------------------------------------
# Hypothesis: decide never raises, lifetime is never negative
# ---------------------------------------------------------------------------------------------

HEADER_NAMES = st.sampled_from(
    [
        "cache-control",
        "cdn-cache-control",
        "expires",
        "date",
        "last-modified",
        "etag",
        "vary",
        "pragma",
        "set-cookie",
        "age",
        "x-other",
    ]
)
DIRECTIVE_TEXT = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "max-age",
                "s-maxage",
                "no-store",
                "no-cache",
                "private",
                "public",
                "must-revalidate",
                "proxy-revalidate",
                "must-understand",
                "stale-while-revalidate",
                "stale-if-error",
                "max-age=60",
                "s-maxage=-1",
                "max-age=1.5",
                'max-age="9"',
                "max-age=99999999999999999",
                "stale-if-error=5",
                '"',
                "=",
                ";x=1",
                "?0",
                "(1 2)",
                ":YQ==:",
                "*",
                " ",
                "Max-Age=3",
            ]
        ),
        st.text(max_size=12),
    ),
    max_size=6,
).map(", ".join)
DATE_TEXT = st.one_of(
    st.floats(min_value=-2e9, max_value=2e10).map(format_http_date),
    st.text(max_size=30),
)
HEADER_VALUES = st.one_of(DIRECTIVE_TEXT, DATE_TEXT, st.text())


@pytest.mark.slow
@settings(max_examples=400)
@given(
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=8),
    status=st.sampled_from([100, 200, 203, 204, 206, 301, 302, 304, 307, 404, 500, 503, 999]),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    auth=st.booleans(),
    rules=st.lists(
        st.builds(
            TtlRule,
            match=st.sampled_from(["*", "/v/*", "*.m3u8", "[", "/x"]),
            ttl=st.floats(min_value=-10, max_value=1e12),
            statuses=st.frozensets(st.sampled_from([200, 206, 404, 500, 503])),
            force=st.booleans(),
        ),
        max_size=3,
    ),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_decide_never_raises(
    headers: dict[str, str], status: int, method: str, auth: bool, rules: list[TtlRule], now: float
) -> None:
    result = decide(
        method, status, headers, PATH, request_has_authorization=auth, ttl_rules=rules, now=now
    )
    assert isinstance(result, Freshness)
    assert result.lifetime >= 0
    assert result.stale_while_revalidate >= 0 and result.stale_if_error >= 0
    if result.must_revalidate or result.no_cache:
        assert result.stale_while_revalidate == 0 == result.stale_if_error
    if method != "GET" or status in (206, 304):
        assert not result.storable


# ---------------------------------------------------------------------------------------------
# current_age (RFC 9111 §4.2.3)
# ---------------------------------------------------------------------------------------------

AGE_CASES: list[tuple[str | None, str | None, float, float, float]] = [
    # (Age, Date, request_time, response_time, corrected_initial_age)
    (None, None, NOW - 1, NOW, 1.0),  # response_delay only
    ("0", None, NOW, NOW, 0.0),
    ("100", None, NOW - 2, NOW, 102.0),  # age_value + response_delay
    (None, H(NOW - 30), NOW - 1, NOW, 30.0),  # apparent age wins
    ("10", H(NOW - 30), NOW - 1, NOW, 30.0),
    ("50", H(NOW - 30), NOW - 1, NOW, 51.0),  # corrected age value wins
    (None, H(NOW + 30), NOW, NOW, 0.0),  # Date in the future: apparent age 0
    ("abc", None, NOW, NOW, 0.0),  # invalid Age ignored
    ("-5", None, NOW, NOW, 0.0),
    ("7, 9", None, NOW, NOW, 7.0),  # list: first member
    (" 7 ", None, NOW, NOW, 7.0),
    ("99999999999999999999", None, NOW, NOW, float(DELTA_SECONDS_MAX)),
    ("5", "not a date", NOW - 1, NOW, 6.0),
]


@pytest.mark.parametrize(("age", "date", "req", "resp", "expected"), AGE_CASES)
def test_current_age(
    age: str | None, date: str | None, req: float, resp: float, expected: float
) -> None:
    assert current_age(age, date, req, resp) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# httpdate
# ---------------------------------------------------------------------------------------------

EPOCH_1994 = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT

DATE_CASES: list[tuple[str | bytes | None, float | None]] = [
    ("Sun, 06 Nov 1994 08:49:37 GMT", EPOCH_1994),
    (b"Sun, 06 Nov 1994 08:49:37 GMT", EPOCH_1994),
    ("Sunday, 06-Nov-94 08:49:37 GMT", EPOCH_1994),
    ("Sun Nov  6 08:49:37 1994", EPOCH_1994),
    ("Sun Nov 06 08:49:37 1994", EPOCH_1994),
    ("sun, 06 nov 1994 08:49:37 gmt", EPOCH_1994),  # RFC 9111 §4.2: case-insensitive
    ("SUNDAY, 06-NOV-94 08:49:37 GMT", EPOCH_1994),
    (" Sun, 06 Nov 1994 08:49:37 GMT ", EPOCH_1994),
    ("Mon, 06 Nov 1994 08:49:37 GMT", EPOCH_1994),  # weekday not cross-checked
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ("Wed, 31 Dec 1969 23:59:59 GMT", -1.0),
    ("Wed, 31 Dec 2008 23:59:60 GMT", 1230768000.0),  # leap second
    ("Tue, 29 Feb 2000 00:00:00 GMT", 951782400.0),
    (None, None),
    ("", None),
    ("0", None),
    ("-1", None),
    ("Sun, 06 Nov 1994 08:49:37 UTC", None),  # only GMT
    ("Sun, 06 Nov 1994 08:49:37 +0000", None),
    ("Sun, 06 Nov 1994 08:49:37", None),
    ("Sun, 6 Nov 1994 08:49:37 GMT", None),
    ("Sun, 06 Nov 94 08:49:37 GMT", None),
    ("Sun Nov 6 08:49:37 1994", None),
    ("Sun, 31 Feb 1994 08:49:37 GMT", None),
    ("Mon, 29 Feb 1900 00:00:00 GMT", None),
    ("Sun, 06 Nov 1994 24:00:00 GMT", None),
    ("Sun, 06 Nov 1994 08:60:00 GMT", None),
    ("Sun, 06 Nov 1994 08:49:61 GMT", None),
    ("Sun, 00 Nov 1994 08:49:37 GMT", None),
    ("Sun, 06 Nov 0000 08:49:37 GMT", None),
    ("Sun, 06 Foo 1994 08:49:37 GMT", None),
    ("Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT", None),
    ("Sun, ٠٦ Nov 1994 08:49:37 GMT", None),  # non-ASCII digits
    ("Sun, 06 Nov 1994 08:49:37 GMTX", None),
]


@pytest.mark.parametrize(("value", "expected"), DATE_CASES)
def test_parse_http_date(value: str | bytes | None, expected: float | None) -> None:
    assert parse_http_date(value) == expected


def test_rfc850_two_digit_year_window() -> None:
    year = time.gmtime().tm_year
    past = (year - 1) % 100
    assert (
        time.gmtime(parse_http_date(f"Monday, 01-Jan-{past:02d} 00:00:00 GMT")).tm_year == year - 1
    )
    # 49 years ahead: still in the future; 51 years ahead: the most recent past year instead.
    ahead = (year + 49) % 100
    assert time.gmtime(parse_http_date(f"Monday, 01-Jan-{ahead:02d} 00:00:00 GMT")).tm_year == (
        year + 49
    )
    beyond = (year + 51) % 100
    assert time.gmtime(parse_http_date(f"Monday, 01-Jan-{beyond:02d} 00:00:00 GMT")).tm_year == (
        year - 49
    )


FORMAT_CASES = [
    (EPOCH_1994, "Sun, 06 Nov 1994 08:49:37 GMT"),
    (EPOCH_1994 + 0.999, "Sun, 06 Nov 1994 08:49:37 GMT"),  # truncated, never rounded up
    (0.0, "Thu, 01 Jan 1970 00:00:00 GMT"),
    (253402300799.0, "Fri, 31 Dec 9999 23:59:59 GMT"),
]


@pytest.mark.parametrize(("ts", "expected"), FORMAT_CASES)
def test_format_http_date(ts: float, expected: str) -> None:
    assert format_http_date(ts) == expected


@given(st.integers(min_value=-62135596800, max_value=253402300799))
def test_http_date_round_trip(ts: int) -> None:
    text = format_http_date(ts)
    assert len(text) == 29
    assert parse_http_date(text) == ts
    assert parse_http_date(text.encode()) == ts


@given(st.one_of(st.text(), st.binary()))
def test_parse_http_date_never_raises(value: str | bytes) -> None:
    result = parse_http_date(value)
    assert result is None or isinstance(result, float)


def test_http_date_now_bytes_cached_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [EPOCH_1994 + 0.1]
    monkeypatch.setattr(httpdate.time, "time", lambda: clock[0])
    first = http_date_now_bytes()
    assert first == b"Sun, 06 Nov 1994 08:49:37 GMT"
    clock[0] = EPOCH_1994 + 0.9
    assert http_date_now_bytes() is first  # same second: no reformatting
    clock[0] = EPOCH_1994 + 1.0
    assert http_date_now_bytes() == b"Sun, 06 Nov 1994 08:49:38 GMT"


def test_http_date_now_bytes_is_now() -> None:
    value = http_date_now_bytes()
    assert abs(parse_http_date(value) - time.time()) < 2  # type: ignore[operator]
