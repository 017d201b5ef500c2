"""Signed URLs at the node: the native token (sign, verify, every way to forge it), the gate
(protected paths, the verified-token cache), and a node that refuses before its cache, shares
one cached copy between viewers and never sends a token upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelcdn.edge.auth import native
from reelcdn.edge.auth.gate import TokenGate, VerifiedCache
from reelcdn.edge.auth.verdict import Grant, KeyRing, Refusal, TokenRequest
from reelcdn.edge.config import ConfigError, topology_from_text
from reelcdn.edge.config.model import TokenConfig
from reelcdn.edge.ops.server import NodeServer
from reelcdn.extensions.message import Request
from reelcdn.loadtest.bench.procs import free_port
from reelcdn.shield.connectors import build_upstream

K1, K2 = b"k1-secret-0123456789abcdef", b"k2-secret-0123456789abcdef"
RING = KeyRing({"k1": K1, "k2": K2}, "k1")
NOW = 1_800_000_000


def req(path: str, token: str | None = None, ip: str = "203.0.113.7", now: float = NOW,
        **kw: Any) -> TokenRequest:
    query = f"token={token}" if token is not None else kw.pop("query", "")
    return TokenRequest(path=path, query=query, client_ip=ip, now=now, **kw)


# ---------------------------------------------------------------------------------------------
# the native format
# ---------------------------------------------------------------------------------------------


def test_a_video_token_grants_its_video_and_nothing_else() -> None:
    token = native.sign(K1, "k1", acl="/v/abc/", expires=NOW + 60)
    for path in ("/v/abc/master.m3u8", "/v/abc/360p/seg_00001.m4s"):
        grant = native.verify(req(path, token), RING)
        assert isinstance(grant, Grant) and grant.expires == NOW + 60
        assert grant.carried == (("token", token),)
    assert native.verify(req("/v/abd/master.m3u8", token), RING) == Refusal("acl")
    assert native.verify(req("/v/abc", token), RING) == Refusal("acl")


@pytest.mark.parametrize(("acl", "path", "allowed"), [
    ("/v/a/", "/v/a/x", True), ("/v/a/", "/v/ab/x", False),
    ("/v/a/*.m4s", "/v/a/360p/s.m4s", True), ("/v/a/*.m4s", "/v/a/s.m3u8", False),
    ("/v/*/init.mp4", "/v/x/360p/init.mp4", True), ("/v/a/x", "/v/a/x", True),
    ("/v/a/x", "/v/a/x/y", False), ("*", "/anything", True), ("/a*b*c", "/abc", True),
    ("/a*b*c", "/ac", False), ("/a*a", "/a", False), ("/a*a", "/aa", True),
])
def test_acl_forms(acl: str, path: str, allowed: bool) -> None:
    assert native.acl_allows(acl, path) is allowed


def test_each_refusal_has_its_reason() -> None:
    good = native.sign(K1, "k1", acl="/v/a/", expires=NOW + 60)
    assert native.verify(req("/v/a/x"), RING) == Refusal("missing")
    assert native.verify(req("/v/a/x", "garbage"), RING) == Refusal("malformed")
    assert native.verify(req("/v/a/x", query=f"token={good}&token={good}"), RING) \
        == Refusal("malformed")
    expired = native.sign(K1, "k1", acl="/v/a/", expires=NOW - 31)
    assert native.verify(req("/v/a/x", expired), RING, clock_skew=30) == Refusal("expired")
    skewed = native.sign(K1, "k1", acl="/v/a/", expires=NOW - 29)
    assert isinstance(native.verify(req("/v/a/x", skewed), RING, clock_skew=30), Grant)
    early = native.sign(K1, "k1", acl="/v/a/", expires=NOW + 99, not_before=NOW + 31)
    assert native.verify(req("/v/a/x", early), RING, clock_skew=30) == Refusal("not-yet-valid")
    other = native.sign(b"another-secret-0123456789", "k1", acl="/v/a/", expires=NOW + 60)
    assert native.verify(req("/v/a/x", other), RING) == Refusal("bad-signature")
    unknown = native.sign(K1, "k9", acl="/v/a/", expires=NOW + 60)
    assert native.verify(req("/v/a/x", unknown), RING) == Refusal("unknown-key")
    bound = native.sign(K1, "k1", acl="/v/a/", expires=NOW + 60, ip="198.51.100.0/24")
    assert isinstance(native.verify(req("/v/a/x", bound, ip="198.51.100.9"), RING), Grant)
    assert native.verify(req("/v/a/x", bound, ip="198.51.101.9"), RING) == Refusal("ip")
    assert native.verify(req("/v/a/x", bound, ip="::1"), RING) == Refusal("ip")
    in_cookie = TokenRequest("/v/a/x", cookies={"reelcdn_token": good}, now=NOW)
    granted = native.verify(in_cookie, RING)
    assert isinstance(granted, Grant) and granted.carried == ()  # a cookie needs no carrying
    assert native.verify(in_cookie, RING, sources=("query",)) == Refusal("missing")


def test_a_refusal_says_nothing_of_the_expected_signature() -> None:
    with pytest.raises(ValueError):
        Refusal("bad-signature: expected abc")


def test_sign_refuses_what_it_could_not_sign_one_way() -> None:
    for acl in ("v/a/", "/v/a|b", "/v/\n"):
        with pytest.raises(ValueError):
            native.sign(K1, "k1", acl=acl, expires=NOW)
    with pytest.raises(ValueError):
        native.sign(K1, "bad kid", acl="/v/", expires=NOW)
    with pytest.raises(ValueError):
        native.sign(K1, "k1", acl="/v/", expires=NOW, ip="not-an-ip")


# hypothesis: >= 10,000 generated cases across the properties below (2,000 + 4 × 2,000).

paths = st.from_regex(r"/v/[a-z0-9]{1,8}/[a-z0-9_./]{1,20}", fullmatch=True)
times = st.integers(min_value=NOW - 10_000, max_value=NOW + 10_000)
SETTINGS = settings(max_examples=2000, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# (The properties take ~30 s together: the fast loop leaves them to the full run.)


@pytest.mark.slow
@SETTINGS
@given(path=paths, expires=st.integers(NOW + 1, NOW + 10**6), kid=st.sampled_from(["k1", "k2"]))
def test_valid_tokens_are_always_granted(path: str, expires: int, kid: str) -> None:
    video = "/".join(path.split("/")[:3]) + "/"
    token = native.sign(RING.keys[kid], kid, acl=video, expires=expires)
    assert isinstance(native.verify(req(path, token), RING), Grant)


def _mutations(token: str, data: st.DataObject) -> str:
    kind = data.draw(st.sampled_from(["flip", "truncate", "swap", "case", "extend"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(token) - 1))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
        c = data.draw(st.sampled_from(alphabet).filter(lambda x: x != token[i]))
        return token[:i] + c + token[i + 1:]
    if kind == "truncate":
        return token[: data.draw(st.integers(0, len(token) - 1))]
    if kind == "swap":
        payload, mac = token.split(".")
        return f"{mac}.{payload}"
    if kind == "case":
        changed = token.swapcase()
        return changed if changed != token else token + "A"
    return token + data.draw(st.sampled_from(["A", "=", ".", "AAAA"]))


@pytest.mark.slow
@SETTINGS
@given(path=paths, data=st.data())
def test_tampered_tokens_are_never_granted(path: str, data: st.DataObject) -> None:
    video = "/".join(path.split("/")[:3]) + "/"
    token = native.sign(K1, "k1", acl=video, expires=NOW + 3600)
    forged = _mutations(token, data)
    if forged == token:
        return
    verdict = native.verify(req(path, forged), RING)
    assert isinstance(verdict, Refusal), (token, forged)


@pytest.mark.slow
@SETTINGS
@given(path=paths, offset=st.integers(-10**6, 10**6), skew=st.integers(0, 60))
def test_expiry_is_exact(path: str, offset: int, skew: int) -> None:
    video = "/".join(path.split("/")[:3]) + "/"
    token = native.sign(K1, "k1", acl=video, expires=NOW + offset)
    verdict = native.verify(req(path, token), RING, clock_skew=skew)
    if NOW + offset <= NOW - skew:
        assert verdict == Refusal("expired")
    else:
        assert isinstance(verdict, Grant)


@pytest.mark.slow
@SETTINGS
@given(path=paths, other=paths)
def test_replayed_on_another_video_or_path_is_refused(path: str, other: str) -> None:
    exact = native.sign(K1, "k1", acl=path, expires=NOW + 3600)
    verdict = native.verify(req(other, exact), RING)
    assert isinstance(verdict, Grant) == (other == path)


@pytest.mark.slow
@SETTINGS
@given(path=paths, secret=st.binary(min_size=16, max_size=40),
       kid=st.sampled_from(["k1", "k2", "k3", "retired"]))
def test_other_and_retired_keys_are_refused(path: str, secret: bytes, kid: str) -> None:
    token = native.sign(secret, kid, acl="/v/", expires=NOW + 3600)
    verdict = native.verify(req(path, token), RING)
    if kid in RING.keys and secret == RING.keys[kid]:
        assert isinstance(verdict, Grant)
    else:
        assert verdict in (Refusal("bad-signature"), Refusal("unknown-key"))


# ---------------------------------------------------------------------------------------------
# the gate
# ---------------------------------------------------------------------------------------------


def request(path: str, query: str = "", ip: str = "203.0.113.7", cookie: str = "") -> Request:
    r = Request()
    r.path, r.query, r.client_ip = path, query, ip
    r.headers = {b"host": b"cdn.example"}
    if cookie:
        r.headers[b"cookie"] = cookie.encode()
    return r


def test_the_gate_protects_by_glob_and_remembers_only_grants() -> None:
    gate = TokenGate(TokenConfig(format="native", keys={"k1": K1}))
    assert gate.check(request("/v/a/poster.jpg"), NOW) is None  # exempt
    assert gate.check(request("/health"), NOW) is None  # not protected
    assert gate.check(request("/v/a/x.m4s"), NOW) == Refusal("missing")
    token = native.sign(K1, "k1", acl="/v/a/", expires=NOW + 30)
    assert isinstance(gate.check(request("/v/a/x.m4s", f"token={token}"), NOW), Grant)
    assert len(gate.cache) == 1  # the grant only: a refusal is never remembered
    # The remembered grant ends with the token: a later request is verified again, refused
    # (once past the clock skew of 30 s).
    later = gate.check(request("/v/a/x.m4s", f"token={token}"), NOW + 61)
    assert later == Refusal("expired")
    # Another address or path is another key: verified afresh.
    assert isinstance(gate.check(request("/v/a/y.m4s", f"token={token}", ip="10.0.0.1"), NOW),
                      Grant)
    assert len(gate.cache) == 1  # the expired entry went when it was looked up
    cookie = gate.check(request("/v/a/x.m4s", cookie=f"reelcdn_token={token}"), NOW)
    assert isinstance(cookie, Grant)


def test_the_cache_is_bounded_and_ends_entries_on_time() -> None:
    cache = VerifiedCache(capacity=2, seconds=10)
    for i in range(3):
        cache.put((str(i),), Grant(expires=NOW + 100), NOW)
    assert len(cache) == 2 and cache.get(("0",), NOW) is None
    assert cache.get(("2",), NOW + 9) is not None and cache.get(("2",), NOW + 10) is None


def test_the_config_names_the_mistake() -> None:
    base = """
[node.e]
role = "edge"
listen = "127.0.0.1:1"
upstream = "http://127.0.0.1:2"
[node.e.tokens]
"""
    cases = {
        'format = "jwt"\nkeys = {k1 = "0123456789abcdef"}': "node.e.tokens.format",
        'format = "native"\nkeys = {k1 = "short"}': "node.e.tokens.keys.k1",
        'format = "native"': "node.e.tokens.keys",
        'format = "native"\nkeys = {k1 = "0123456789abcdef"}\ncurrent_key = "k2"':
            "node.e.tokens.current_key",
        'format = "native"\nkeys = {k1 = "0123456789abcdef"}\nalgorithm = "sha1"':
            "node.e.tokens.algorithm",
        'format = "nginx_md5"\nkeys = {k1 = "0123456789abcdef"}': "node.e.tokens.expression",
        'format = "native"\nkeys = {k1 = "0123456789abcdef"}\nsources = ["url"]':
            "node.e.tokens.sources[0]",
        'format = "native"\nkeys = {k1 = "0123456789abcdef"}\nprotect = ["v/*"]':
            "node.e.tokens.protect[0]",
        'format = "nginx_md5"\nkeys = {k1 = "0123456789abcdef"}\n'
        'expression = "$uri $request_uri $secret"': "node.e.tokens.expression",
    }
    for text, key in cases.items():
        with pytest.raises(ConfigError) as caught:
            topology_from_text(base + text, base_dir=".")
        assert caught.value.key == key, (text, caught.value)
    node = topology_from_text(base + 'format = "native"\nkeys = {k1 = "0123456789abcdef"}',
                              base_dir=".").nodes["e"]
    assert "token" in node.ignore_query_params and "token" in node.carried_query_params


# ---------------------------------------------------------------------------------------------
# a node
# ---------------------------------------------------------------------------------------------



async def _origin(seen: list[str]) -> tuple[web.AppRunner, int]:
    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path_qs + " cookie=" + request.headers.get("Cookie", "-"))
        return web.Response(body=b"segment-bytes", headers={"Cache-Control": "max-age=300"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def _edge(origin: int, keys: str = 'k1 = "k1-secret-0123456789abcdef"') -> Any:
    port, admin = free_port(), free_port()
    return topology_from_text(f"""
[node.edge-a]
role = "edge"
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
upstream = "http://127.0.0.1:{origin}"
[node.edge-a.tokens]
format = "native"
keys = {{ {keys} }}
""", base_dir=".").nodes["edge-a"]


async def test_a_node_refuses_before_its_cache_and_shares_one_copy() -> None:
    seen: list[str] = []
    runner, origin = await _origin(seen)
    config = _edge(origin)
    server = NodeServer(config, build_upstream)
    await server.start()
    base = f"http://127.0.0.1:{config.listen_port}"
    ann = native.sign(K1, "k1", acl="/v/abc/", expires=NOW * 2)
    bob = native.sign(K1, "k1", acl="/v/abc/", expires=NOW * 2, ip="127.0.0.0/8")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/v/abc/seg.m4s") as response:
                assert response.status == 403
                assert response.headers["Reelcdn-Token-Error"] == "missing"
                assert "missing" in await response.text()
            assert seen == []  # refused before any fill
            async with session.get(f"{base}/v/abc/seg.m4s?token={ann}",
                                   headers={"Cookie": "session=ann"}) as response:
                assert response.status == 200 and await response.read() == b"segment-bytes"
            async with session.get(f"{base}/v/abc/seg.m4s?token={bob}") as response:
                assert response.status == 200
                assert response.headers["Cache-Status"].split(";")[1].strip() == "hit"
            # The token and the cookie stayed at the edge: the origin saw neither.
            assert seen == ["/v/abc/seg.m4s cookie=-"]
            tampered = ann[:-2] + ("AA" if not ann.endswith("AA") else "BB")
            async with session.get(f"{base}/v/abc/seg.m4s?token={tampered}") as response:
                assert response.status == 403
                assert response.headers["Reelcdn-Token-Error"] == "bad-signature"
            async with session.head(f"{base}/v/abc/seg.m4s") as response:
                assert response.status == 403
            async with session.get(f"{base}/v/abc/poster.jpg") as response:
                assert response.status == 200  # exempt by default
            async with session.get(
                    f"http://127.0.0.1:{config.admin_port}/metrics") as response:
                text = await response.text()
            assert 'reelcdn_token_refusals_total{node="edge-a",reason="missing"} 2.0' in text
            assert 'reason="bad-signature"} 1.0' in text
            # A reload retires k1: its tokens fail from that moment, k2's pass.
            await server.reload(_edge(origin, 'k2 = "k2-secret-0123456789abcdef"'))
            async with session.get(f"{base}/v/abc/seg.m4s?token={ann}") as response:
                assert response.status == 403
                assert response.headers["Reelcdn-Token-Error"] == "unknown-key"
            fresh = native.sign(K2, "k2", acl="/v/abc/", expires=NOW * 2)
            async with session.get(f"{base}/v/abc/seg.m4s?token={fresh}") as response:
                assert response.status == 200
    finally:
        await server.stop(grace=1.0)
        await runner.cleanup()


async def test_rendered_playlists_carry_the_viewers_token() -> None:
    """The master and media playlists an edge renders name every URI with the token the
    viewer came with (covered at length in the playlists tests; here: with a token config)."""
    config = _edge(1)
    assert "token" in config.carried_query_params
    await asyncio.sleep(0)


def test_the_signed_example_checks_tokens_at_the_edge_only() -> None:
    from pathlib import Path

    from reelcdn.edge.config import load_topology

    example = Path(__file__).resolve().parent.parent / "examples" / "signed.toml"
    nodes = load_topology(example).nodes
    assert nodes["edge-a"].tokens is not None and nodes["edge-a"].tokens.current_key == "k2"
    assert nodes["regional-1"].tokens is None and nodes["shield-1"].tokens is None


def test_the_gate_checks_an_nginx_link_and_keys_its_grants_by_the_signed_fields() -> None:
    from reelcdn.edge.auth import nginx_md5

    expression = "$secure_link_expires$uri$remote_addr$http_x_viewer $secret"
    gate = TokenGate(TokenConfig(format="nginx_md5", keys={"k1": K1},
                                 options={"expression": expression}))
    params = nginx_md5.sign("/v/a/x.m4s", NOW + 60, K1, expression, client_ip="203.0.113.7",
                            headers={"x-viewer": "ann"})
    query = "&".join(f"{k}={v}" for k, v in params.items())
    ann = request("/v/a/x.m4s", query)
    ann.headers[b"x-viewer"] = b"ann"
    assert isinstance(gate.check(ann, NOW), Grant)
    bob = request("/v/a/x.m4s", query)
    bob.headers[b"x-viewer"] = b"bob"  # another signed field: not ann's remembered grant
    assert gate.check(bob, NOW) == Refusal("bad-signature")


def test_akamai_tokens_minted_by_edgeauth_pass_a_node_configured_with_the_hex_key(
        tmp_path: Any) -> None:
    """The configured EdgeAuth key is hex, as Akamai's property manager shows it; the gate
    verifies with the bytes it spells, as the reference library signs."""
    from akamai.edgeauth import EdgeAuth

    from reelcdn.cli import main

    key = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
    node = topology_from_text(f"""
[node.e]
role = "edge"
listen = "127.0.0.1:1"
upstream = "http://127.0.0.1:2"
[node.e.tokens]
format = "akamai"
keys = {{ k1 = "{key}" }}
""", base_dir=".").nodes["e"]
    assert node.tokens is not None
    gate = TokenGate(node.tokens)
    import time as clock

    token = EdgeAuth(key=key, window_seconds=300).generate_acl_token("/v/abc/*")
    assert isinstance(gate.check(request("/v/abc/seg.m4s", f"hdnts={token}"), clock.time()),
                      Grant)
    assert gate.check(request("/v/abd/seg.m4s", f"hdnts={token}"), clock.time()) \
        == Refusal("acl")
    with pytest.raises(ConfigError, match="hex"):
        topology_from_text("""
[node.e]
role = "edge"
listen = "127.0.0.1:1"
upstream = "http://127.0.0.1:2"
[node.e.tokens]
format = "akamai"
keys = { k1 = "not-hex-not-hex-not-hex" }
""", base_dir=".")
    # reelcdn sign mints what the gate accepts
    config = tmp_path / "t.toml"
    config.write_text(f"""
[node.e]
role = "edge"
listen = "127.0.0.1:1"
upstream = "http://127.0.0.1:2"
[node.e.tokens]
format = "akamai"
keys = {{ k1 = "{key}" }}
""")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["sign", "--config", str(config), "http://h/v/abc/master.m3u8"]) == 0
    query = out.getvalue().strip().split("?", 1)[1]
    assert isinstance(gate.check(request("/v/abc/x.m4s", query), clock.time()), Grant)


def test_a_grant_for_a_header_token_is_not_one_for_a_request_without_it() -> None:
    """A token in a request field: the field is part of the remembered grant's key, so the
    same path from the same address without the field is verified, and refused."""
    gate = TokenGate(TokenConfig(format="native", keys={"k1": K1},
                                 sources=("query", "cookie", "header")))
    token = native.sign(K1, "k1", acl="/v/a/", expires=NOW + 60)
    with_field = request("/v/a/x.m4s")
    with_field.headers[b"reelcdn-token"] = token.encode()
    assert isinstance(gate.check(with_field, NOW), Grant)
    assert gate.check(request("/v/a/x.m4s"), NOW) == Refusal("missing")
    other = request("/v/a/x.m4s")
    other.headers[b"reelcdn-token"] = b"forged." + token.encode()[7:]
    assert isinstance(gate.check(other, NOW), Refusal)
