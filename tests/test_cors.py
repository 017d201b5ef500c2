"""CORS on the data plane (``cors_origins``, docs/cors.md): preflights answered by the node,
the node's own Access-Control-* fields on HIT, MISS and Range answers, never an upstream's,
and an echoed origin that a stored entry cannot carry to another page."""

from __future__ import annotations

import pytest
from rawhttp import get

from reelcdn.edge.config import ConfigError, node_config_from_dict

APP = "https://app.example.com"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "range, cmcd-request"}


def values(response, name: str) -> list[str]:
    return [v for n, v in response.headers if n.lower() == name.lower()]


async def test_preflight_is_answered_without_going_upstream(origin, node) -> None:
    response = await get(node.port, "/v/a/seg.m4s", PREFLIGHT, method="OPTIONS")
    assert response.status == 204 and response.body == b""
    assert values(response, "access-control-allow-origin") == ["*"]
    assert response.header("access-control-allow-methods") == "GET, HEAD, OPTIONS"
    allowed = (response.header("access-control-allow-headers") or "").lower()
    assert "range" in allowed and "cmcd-request" in allowed and "cmcd-session" in allowed
    assert response.header("access-control-max-age") == "86400"
    assert "origin" not in (response.header("vary") or "").lower()
    assert origin.counts == {}


@pytest.mark.parametrize("origin_acao", [None, "https://evil.example"])
async def test_get_miss_hit_and_range_carry_the_nodes_fields(origin, node, origin_acao) -> None:
    headers = {"Cache-Control": "max-age=60", "ETag": '"s1"'}
    if origin_acao:  # an upstream's own CORS fields never pass: the node's replace them
        headers.update({"Access-Control-Allow-Origin": origin_acao,
                        "Access-Control-Allow-Credentials": "true"})
    origin.set("/v/a/seg.m4s", b"x" * 5000, headers=headers)
    miss = await get(node.port, "/v/a/seg.m4s", {"Origin": APP})
    hit = await get(node.port, "/v/a/seg.m4s", {"Origin": APP})
    part = await get(node.port, "/v/a/seg.m4s", {"Origin": APP, "Range": "bytes=10-19"})
    head = await get(node.port, "/v/a/seg.m4s", method="HEAD")
    assert "miss" in (miss.header("cache-status") or "")
    assert "hit" in (hit.header("cache-status") or "")
    assert part.status == 206 and part.body == b"x" * 10
    for response in (miss, hit, part, head):
        assert values(response, "access-control-allow-origin") == ["*"]
        assert values(response, "access-control-allow-credentials") == []
        exposed = (response.header("access-control-expose-headers") or "").lower()
        for name in ("content-length", "content-range", "age", "cache-status", "cmsd-dynamic"):
            assert name in exposed
        assert "origin" not in (response.header("vary") or "").lower()
    assert origin.counts["/v/a/seg.m4s"] == 1


async def test_a_list_of_origins_echoes_the_allowed_one(origin, start_node) -> None:
    node = await start_node(origin.url, cors_origins=[APP, "http://localhost:8300"])
    origin.set("/v/b/seg.m4s", b"y" * 3000, headers={"Cache-Control": "max-age=60"})
    mine = await get(node.port, "/v/b/seg.m4s", {"Origin": APP})  # the MISS stores it
    other = await get(node.port, "/v/b/seg.m4s", {"Origin": "https://other.example"})
    local = await get(node.port, "/v/b/seg.m4s", {"Origin": "http://localhost:8300"})
    plain = await get(node.port, "/v/b/seg.m4s")
    assert values(mine, "access-control-allow-origin") == [APP]
    assert values(other, "access-control-allow-origin") == []  # the stored entry leaks nothing
    assert values(local, "access-control-allow-origin") == ["http://localhost:8300"]
    assert values(plain, "access-control-allow-origin") == []
    for response in (mine, other, local, plain):
        assert response.status == 200 and len(response.body) == 3000
        assert "Origin" in values(response, "vary")
    assert origin.counts["/v/b/seg.m4s"] == 1
    allowed = await get(node.port, "/v/b/seg.m4s", PREFLIGHT, method="OPTIONS")
    refused = await get(node.port, "/v/b/seg.m4s",
                        {**PREFLIGHT, "Origin": "https://other.example"}, method="OPTIONS")
    assert allowed.status == 204 and values(allowed, "access-control-allow-origin") == [APP]
    assert refused.status == 204 and values(refused, "access-control-allow-origin") == []
    assert "Origin" in values(allowed, "vary")


async def test_no_cors_fields_when_off(origin, start_node) -> None:
    node = await start_node(origin.url, cors_origins=[])
    origin.set("/v/c/seg.m4s", b"z", headers={"Cache-Control": "max-age=60"})
    response = await get(node.port, "/v/c/seg.m4s", {"Origin": APP})
    assert response.header("access-control-allow-origin") is None
    assert response.header("access-control-expose-headers") is None
    await get(node.port, "/v/c/seg.m4s", PREFLIGHT, method="OPTIONS")
    assert origin.counts["/v/c/seg.m4s"] == 2  # no CORS of its own: OPTIONS passes upstream


async def test_two_tiers_send_one_allow_origin(origin, start_node) -> None:
    parent = await start_node(origin.url, name="regional-t")
    edge = await start_node(f"http://127.0.0.1:{parent.port}",
                            cors_origins=[APP])
    origin.set("/v/d/seg.m4s", b"w" * 100, headers={"Cache-Control": "max-age=60"})
    response = await get(edge.port, "/v/d/seg.m4s", {"Origin": APP})
    assert values(response, "access-control-allow-origin") == [APP]  # the parent's "*": gone
    assert len(values(response, "access-control-expose-headers")) == 1


@pytest.mark.parametrize(
    ("value", "key", "fragment"),
    [
        (["*", APP], "node.n.cors_origins", "alone"),
        (["https://app.example.com/"], "node.n.cors_origins[0]",
         'write "https://app.example.com"'),
        (["app.example.com"], "node.n.cors_origins[0]", "scheme://host[:port]"),
        ("*", "node.n.cors_origins", "an array of strings"),
    ],
)
def test_bad_cors_origins_name_the_key(value, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        node_config_from_dict("n", {"listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:9",
                                    "cors_origins": value}, file="t.toml")
    assert info.value.key == key
    assert fragment in info.value.message


def test_cors_origins_default_and_values() -> None:
    def load(**extra):
        return node_config_from_dict("n", {"listen": "127.0.0.1:0",
                                           "upstream": "http://127.0.0.1:9", **extra})

    assert load().cors_origins == ("*",)
    assert load(cors_origins=[]).cors_origins == ()
    assert load(cors_origins=[APP, "http://[::1]:8080"]).cors_origins == (
        APP, "http://[::1]:8080")
