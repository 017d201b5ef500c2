"""Response head building: the pure twin (extensions/_head_py.py) and the compiled one
(extensions/_head.pyx) give the same bytes, and the bytes are right."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelcdn.extensions import _head_py as pure_head

BLOCK = b"Content-Type: video/mp4\r\nETag: \"e1\"\r\n"


TWIN_MODULE = "head"  # the ``twin`` and ``compiled`` fixtures (conftest.py) load its twins


def call(impl: ModuleType, **overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "status": 200,
        "header_block": BLOCK,
        "age": 5,
        "prior_status": b"",
        "node_member": b"reelcdn-edge-a",
        "detail": b"hit",
        "ttl": 55,
        "prior_via": b"",
        "via_hop": b"1.1 edge-a",
        "length": 2048,
        "chunked": False,
        "connection": b"",
    }
    args.update(overrides)
    return impl.build_head(**args)


def test_a_hit_head(twin: ModuleType) -> None:
    assert call(twin) == (
        b"HTTP/1.1 200 OK\r\n" + BLOCK + b"Age: 5\r\n"
        b"Cache-Status: reelcdn-edge-a; hit; ttl=55\r\nVia: 1.1 edge-a\r\n"
        b"Content-Length: 2048\r\n\r\n"
    )


def test_tiers_above_come_first(twin: ModuleType) -> None:
    out = call(twin, prior_status=b"reelcdn-shield-1; fwd=uri-miss",
               prior_via=b"1.1 shield-1", detail=b"fwd=uri-miss; stored", ttl=9)
    assert b"Cache-Status: reelcdn-shield-1; fwd=uri-miss, reelcdn-edge-a; " \
           b"fwd=uri-miss; stored\r\n" in out  # no ttl: not a hit
    assert b"Via: 1.1 shield-1, 1.1 edge-a\r\n" in out


def test_optional_fields(twin: ModuleType) -> None:
    out = call(twin, status=304, header_block=b"", age=None, ttl=None, length=None,
               connection=b"Connection: close\r\n")
    assert out == (b"HTTP/1.1 304 Not Modified\r\nCache-Status: reelcdn-edge-a; hit\r\n"
                   b"Via: 1.1 edge-a\r\nConnection: close\r\n\r\n")
    chunked = call(twin, length=None, chunked=True)
    assert chunked.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    assert b"Content-Length" not in chunked
    both = call(twin, length=0, chunked=True)  # a length wins over chunked
    assert both.endswith(b"Content-Length: 0\r\n\r\n")


def test_negative_numbers(twin: ModuleType) -> None:
    out = call(twin, age=-3, ttl=-12, detail=b"hit; detail=stale-while-revalidate")
    assert b"Age: 0\r\n" in out
    assert b"; hit; detail=stale-while-revalidate; ttl=-12\r\n" in out


def test_unknown_status_gets_a_generic_phrase(twin: ModuleType) -> None:
    assert call(twin, status=599).startswith(b"HTTP/1.1 599 Unknown\r\n")


UNUSUAL: list[dict[str, Any]] = [
    {"age": 2**70},
    {"ttl": -(2**64)},
    {"length": 2**63},
    {"age": True},
    {"chunked": 1, "length": None},
    {"header_block": bytearray(b"X: y\r\n")},
    {"detail": memoryview(b"hit")},
    {"status": 206.0},
]


@pytest.mark.parametrize("overrides", UNUSUAL, ids=[str(sorted(u)) for u in UNUSUAL])
def test_unusual_arguments_behave_like_the_twin(
    compiled: ModuleType, overrides: dict[str, Any]
) -> None:
    """The compiled module hands what it has no fast path for to the pure one: same result,
    or the same exception."""
    try:
        expected: Any = call(pure_head, **overrides)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the twin must match it
        with pytest.raises(type(exc)):
            call(compiled, **overrides)
        return
    assert call(compiled, **overrides) == expected


field_bytes = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
int64 = st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)
blocks = st.lists(field_bytes, max_size=4).map(lambda ls: b"".join(x + b"\r\n" for x in ls))
details = st.sampled_from([b"hit", b"hit; detail=x", b"fwd=miss", b"", b"hi", b"HIT"])


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.integers(min_value=100, max_value=999),
    header_block=blocks,
    age=st.none() | int64,
    prior_status=field_bytes,
    node_member=field_bytes,
    detail=details | field_bytes,
    ttl=st.none() | int64,
    prior_via=field_bytes,
    via_hop=field_bytes,
    length=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    chunked=st.booleans(),
    connection=st.sampled_from([b"", b"Connection: close\r\n", b"Connection: keep-alive\r\n"]),
)
def test_differential(compiled: ModuleType, **kwargs: Any) -> None:
    assert compiled.build_head(**kwargs) == pure_head.build_head(**kwargs)
