"""One key policy and one fill policy: keys, purges, canonical paths, what a fill forwards,
and the fields a 304 carries down the tiers. Each case is an attack or a mismatch that two
copies of one rule once allowed."""

from __future__ import annotations

import asyncio
import posixpath
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from rawhttp import get

from reelcdn.edge.cache.keys import KeyPolicy
from reelcdn.edge.config import topology_from_text
from reelcdn.edge.http.message import normalise_accept_encoding
from reelcdn.edge.ops.server import NodeServer
from reelcdn.extensions.target import BadPath, canonical_path, is_canonical_target
from reelcdn.loadtest.bench.procs import free_port
from reelcdn.shield.connectors import build_upstream

CACHEABLE = {"Cache-Control": "max-age=300"}



async def raw(port: int, target: str, host: str = "127.0.0.1",
              fields: str = "") -> tuple[int, bytes, str]:
    """One request with an exact request-target (aiohttp would resolve dots itself)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{fields}Connection: close\r\n\r\n"
                 .encode("latin-1"))
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, head.decode("latin-1")


# ---------------------------------------------------------------------------------------------
# canonical paths (pure)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "canonical"), [
    ("/v/demo-2/meta.json", "/v/demo-2/meta.json"),
    ("/v%2Fdemo-2%2Fmeta.json", "/v/demo-2/meta.json"),
    ("/v%2fdemo-2/meta.json", "/v/demo-2/meta.json"),
    ("/%7Euser/%41", "/~user/A"),
    ("/a/./b//c", "/a/b/c"),
    ("/a/.", "/a/"),
    ("//", "/"),
    ("/.well-known/x", "/.well-known/x"),
    ("/a%20b", "/a%20b"),
    ("/a%3fb", "/a%3Fb"),
])
def test_canonical_path(path: str, canonical: str) -> None:
    assert canonical_path(path) == canonical
    assert canonical_path(canonical) == canonical


@pytest.mark.parametrize("path", [
    "/../private/secret.txt", "/%2e%2e/private/secret.txt", "/%2E%2E/x", "/obj/../../x",
    "/a/..", "/a/.%2e/b", "/a%2F..%2Fb", "/a%zz", "/a%2",
])
def test_dot_dot_in_any_spelling_is_refused(path: str) -> None:
    with pytest.raises(BadPath):
        canonical_path(path)
    assert not is_canonical_target(path)


def test_accept_encoding_is_normalised() -> None:
    assert normalise_accept_encoding(b"gzip, deflate, br") == b"br, deflate, gzip"
    assert normalise_accept_encoding(b"br;q=1.0, GZIP,deflate") == b"br, deflate, gzip"
    assert normalise_accept_encoding(b"gzip;q=0, identity") == b"identity"
    assert normalise_accept_encoding(b"evil\x7f") == b"identity"


def test_key_policy_for_targets_and_purges() -> None:
    plain = KeyPolicy(frozenset({"token"}))
    assert plain.for_target("/v%2Fx%2Fmeta.json?token=1&b=2&a=1") == "/v/x/meta.json?a=1&b=2"
    hosted = KeyPolicy(frozenset(), host_in_key=True)
    key = hosted.for_target("/v/x/seg_00001.m4s", "Site.Example")
    assert key == "site.example/v/x/seg_00001.m4s"
    assert hosted.upstream_target(key) == "/v/x/seg_00001.m4s"
    assert hosted.rule_path(key + "?q=1") == "/v/x/seg_00001.m4s"
    assert hosted.purge_matcher("path", "/v/x/seg_00001.m4s")(key)
    assert hosted.purge_matcher("video", "x")(key)
    assert hosted.purge_matcher("prefix", "/v/x/", "site.example")(key)
    assert not hosted.purge_matcher("prefix", "/v/x/", "other.example")(key)
    assert not hosted.purge_matcher("video", "xy")(key)


# ---------------------------------------------------------------------------------------------
# one key for request, invalidation and purge, host_in_key included
# ---------------------------------------------------------------------------------------------


async def admin_purge(server: NodeServer, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{server.admin_port}/purge", json=body
    ) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_host_in_key_post_invalidates_and_purges_remove(origin, start_node) -> None:
    node = await start_node(origin.url, host_in_key=True)
    origin.set("/v/vid/seg_00001.m4s", b"segment", headers=CACHEABLE)
    origin.set("/v/vid/meta.json", b"{}", headers=CACHEABLE)
    origin.set("/v/vid/rate", b"ok", headers=CACHEABLE)

    async def fetch(path: str, host: str = "site.example") -> int:
        status, _, _ = await raw(node.port, path, host)
        return status

    # A POST to the URI invalidates the stored GET of the same site.
    assert await fetch("/v/vid/rate") == 200
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{node.port}/v/vid/rate", data=b"x",
        headers={"Host": "site.example"},
    ) as response:
        assert response.status == 200
    assert await fetch("/v/vid/rate") == 200
    assert origin.counts["/v/vid/rate"] == 3  # GET, POST, GET again (the copy was gone)

    # Purge by path, by prefix and by video, without a host: every site's copy goes.
    for kind, value in (("path", "/v/vid/seg_00001.m4s"), ("prefix", "/v/vid/"),
                        ("video", "vid")):
        for host in ("site.example", "other.example"):
            await fetch("/v/vid/seg_00001.m4s", host)
        assert len(node.node.store) >= 2
        result = await admin_purge(node, {kind: value})
        assert result["purged"] >= 2, (kind, result)
        assert not any(e.primary.endswith("/v/vid/seg_00001.m4s") for e in node.node.store)
    # With a host, only that site's copy.
    for host in ("site.example", "other.example"):
        await fetch("/v/vid/seg_00001.m4s", host)
    result = await admin_purge(node, {"path": "/v/vid/seg_00001.m4s", "host": "site.example"})
    assert result["purged"] == 1
    assert [e.primary for e in node.node.store
            if e.primary.endswith("seg_00001.m4s")] == ["other.example/v/vid/seg_00001.m4s"]


async def test_encoded_slash_is_one_key_and_one_purge(origin, node) -> None:
    origin.set("/v/demo-2/meta.json", b"{}", headers=CACHEABLE)
    assert (await raw(node.port, "/v/demo-2/meta.json"))[0] == 200
    status, body, head = await raw(node.port, "/v%2Fdemo-2%2Fmeta.json")
    assert status == 200 and body == b"{}" and "; hit" in head
    status, _, head = await raw(node.port, "/v/./demo-2//meta.json")
    assert status == 200 and "; hit" in head
    assert origin.counts["/v/demo-2/meta.json"] == 1
    assert (await admin_purge(node, {"video": "demo-2"}))["purged"] == 1
    assert len(node.node.store) == 0


async def test_purge_refuses_a_dot_dot_path(node) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{node.admin_port}/purge", json={"path": "/v/%2e%2e/x"}
    ) as response:
        assert response.status == 400


# ---------------------------------------------------------------------------------------------
# an http origin with a path prefix cannot be escaped
# ---------------------------------------------------------------------------------------------


class DotResolvingOrigin:
    """An origin that resolves dot segments the way nginx does, serving a directory tree in
    which /media is public and /private is not."""

    def __init__(self) -> None:
        self.files = {"/media/v/a/seg.m4s": b"public", "/private/secret.txt": b"SECRET"}
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw_path = request.raw_path.split("?", 1)[0]
        self.seen.append(raw_path)
        from urllib.parse import unquote

        resolved = posixpath.normpath(unquote(raw_path))
        body = self.files.get(resolved)
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, headers=CACHEABLE)


@pytest.fixture
async def prefixed_shield(tmp_path: Path):
    origin = DotResolvingOrigin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    text = f"""
[origin.web]
type = "http"
url = "http://127.0.0.1:{port}/media"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:{free_port()}"
origins = ["web"]

# No active checks of the origin: they would GET its prefix every 2 s and show up among the
# paths these tests assert the origin saw.
[node.shield-1.health]
checks = false
"""
    topology = topology_from_text(text, base_dir=str(tmp_path))
    server = NodeServer(topology.nodes["shield-1"], build_upstream)
    await server.start()
    yield server, origin
    await server.stop(grace=1.0)
    await runner.cleanup()


@pytest.mark.parametrize("target", [
    "/../private/secret.txt",
    "/%2e%2e/private/secret.txt",
    "/%2E%2e/private/secret.txt",
    "/obj/../../private/secret.txt",
    "/v/..%2F..%2Fprivate/secret.txt",
    "/v%2F..%2F..%2Fprivate%2Fsecret.txt",
])
async def test_http_origin_prefix_cannot_be_escaped(prefixed_shield, target: str) -> None:
    server, origin = prefixed_shield
    status, body, _ = await raw(server.port, target)
    assert status == 400 and b"SECRET" not in body
    assert origin.seen == []
    assert len(server.node.store) == 0
    # the public object is still served through the prefix
    status, body, _ = await raw(server.port, "/v/a/seg.m4s")
    assert status == 200 and body == b"public"
    assert origin.seen == ["/media/v/a/seg.m4s"]


async def test_upstream_refuses_a_non_canonical_target(prefixed_shield) -> None:
    """Defence in depth: the connector itself never appends a dot path to its prefix."""
    server, origin = prefixed_shield
    upstream = server.node.upstream
    from reelcdn.edge.fetch.contract import FetchFailed

    with pytest.raises(FetchFailed) as caught:
        await upstream.request("GET", "/../private/secret.txt", [])
    assert caught.value.status == 400
    assert origin.seen == []


# ---------------------------------------------------------------------------------------------
# a shared fill forwards only its allow-list
# ---------------------------------------------------------------------------------------------

POISON = {
    "X-Forwarded-Host": "evil.example",
    "X-Original-URL": "/admin",
    "X-Rewrite-URL": "/admin",
    "Forwarded": "host=evil.example;proto=http",
    "X-Forwarded-Proto": "gopher",
    "Cookie": "session=victim",
    "User-Agent": "evil-agent",
    "X-Custom": "1",
    "CMCD-Request": "bl=100",
    "If-None-Match": '"x"',
}


async def test_fill_forwards_no_unkeyed_client_field(origin, start_node) -> None:
    """An origin that reflects X-Forwarded-Host (a classic poisoning gadget) never sees it:
    the copy every viewer gets is the clean one."""

    async def reflect(request: web.Request) -> web.Response:
        host = request.headers.get("X-Forwarded-Host", "cdn.example")
        return web.Response(body=f"<base href=//{host}/>".encode(), headers=CACHEABLE)

    origin.set("/page", handler=reflect)
    shield = await start_node(origin.url, name="shield-t")
    edge_a = await start_node(f"http://127.0.0.1:{shield.port}", name="edge-a")
    edge_b = await start_node(f"http://127.0.0.1:{shield.port}", name="edge-b")
    first = await get(edge_a.port, "/page", {**POISON, "Accept-Encoding": "gzip, deflate, br"})
    assert first.body == b"<base href=//cdn.example/>"
    seen = {k.lower(): v for k, v in origin.seen_headers[-1].items()}
    for name in POISON:
        assert name.lower() not in seen, name
    assert seen["accept-encoding"] == "br, deflate, gzip"
    assert seen["via"] == "1.1 edge-a, 1.1 shield-t"
    other = await get(edge_b.port, "/page")
    assert other.body == b"<base href=//cdn.example/>"
    assert origin.counts["/page"] == 1


async def test_fill_headers_key_allows_more(origin, start_node) -> None:
    origin.set("/ua", b"x", headers=CACHEABLE)
    node = await start_node(origin.url, fill_headers=["User-Agent", "Accept-Encoding"])
    await get(node.port, "/ua", {"User-Agent": "player/1", "Cookie": "a=b"})
    seen = {k.lower(): v for k, v in origin.seen_headers[-1].items()}
    assert seen["user-agent"] == "player/1" and "cookie" not in seen


async def test_fill_forwards_the_fields_a_stored_response_varies_on(origin, node) -> None:
    """Once the node knows the URI Varies on X-Variant, fills forward it, and each variant is
    stored under what the origin saw."""

    async def by_variant(request: web.Request) -> web.Response:
        variant = request.headers.get("X-Variant", "none")
        return web.Response(body=variant.encode(),
                            headers={**CACHEABLE, "Vary": "X-Variant"})

    origin.set("/var", handler=by_variant)
    first = await get(node.port, "/var", {"X-Variant": "a"})
    assert first.body == b"none"  # the first fill could not know the field mattered
    second = await get(node.port, "/var", {"X-Variant": "b"})
    assert second.body == b"b"
    third = await get(node.port, "/var", {"X-Variant": "b"})
    assert third.body == b"b" and "; hit" in (third.header("cache-status") or "")
    again = await get(node.port, "/var", {"X-Variant": "a"})
    assert again.body == b"a"


# ---------------------------------------------------------------------------------------------
# a 304 carries the refreshed fields down the tiers
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_304_updates_reach_the_lower_tier(origin, start_node) -> None:
    """RFC 9111 §4.3.4: the edge revalidates through the shield; the origin's 304 brings new
    field values, and the edge's copy (and the client) must get them too."""
    version = {"n": 1}

    async def versioned(request: web.Request) -> web.Response:
        fields = {"ETag": '"v"', "Cache-Control": "max-age=1",
                  "X-Version": str(version["n"])}
        if request.headers.get("If-None-Match") == '"v"':
            return web.Response(status=304, headers=fields)
        return web.Response(body=b"body", headers=fields)

    origin.set("/r", handler=versioned)
    shield = await start_node(origin.url, name="shield-t")
    edge = await start_node(f"http://127.0.0.1:{shield.port}", name="edge-t")
    first = await get(edge.port, "/r")
    assert first.header("x-version") == "1"
    version["n"] = 2
    await asyncio.sleep(2.1)  # both copies stale
    second = await get(edge.port, "/r")
    assert second.status == 200 and second.body == b"body"
    assert second.header("x-version") == "2"
    entry = edge.node.store.peek("/r")
    assert entry is not None and (b"X-Version", b"2") in entry.headers


# ---------------------------------------------------------------------------------------------
# Cache-Status says "stored" only of what was stored
# ---------------------------------------------------------------------------------------------


async def test_a_truncated_response_is_not_called_stored(origin, node) -> None:
    body = b"x" * 200_000
    origin.set("/broken", body, headers=CACHEABLE, chunk_size=16_384, chunk_delay=0.01,
               break_after=100_000)
    status, received, head = await raw(node.port, "/broken")
    assert status == 200 and len(received) < len(body)
    member = [line for line in head.split("\r\n") if line.lower().startswith("cache-status")]
    assert member and "stored" not in member[0]
    assert len(node.node.store) == 0
    origin.set("/whole", b"small", headers=CACHEABLE)
    await raw(node.port, "/whole")
    assert node.node.store.peek("/whole") is not None


# ---------------------------------------------------------------------------------------------
# invalidation by an unsafe method, and a client's reload through the tiers
# ---------------------------------------------------------------------------------------------


async def test_unsafe_method_invalidates_location_and_content_location(origin, node) -> None:
    """RFC 9111 §4.4: the target URI, and the same host's Location / Content-Location URIs;
    another host's URI is never invalidated."""
    for path in ("/a", "/b", "/c", "/d"):
        origin.set(path, path.encode(), headers=CACHEABLE)

    async def created(request: web.Request) -> web.Response:
        return web.Response(status=201, headers={
            "Location": "/b", "Content-Location": f"http://127.0.0.1:{node.port}/c",
            "Link": "</d>",
        })

    origin.set("/post", handler=created)
    for path in ("/a", "/b", "/c", "/d"):
        await get(node.port, path)
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{node.port}/post", data=b"x"
    ) as response:
        assert response.status == 201
    primaries = {e.primary for e in node.node.store}
    assert "/b" not in primaries and "/c" not in primaries
    assert {"/a", "/d"} <= primaries


async def _elsewhere() -> web.Response:
    return web.Response(status=201, headers={"Location": "http://other.example/a"})


async def test_another_hosts_location_is_not_invalidated(origin, node) -> None:
    origin.set("/a", b"a", headers=CACHEABLE)
    origin.set("/post", handler=lambda request: _elsewhere())
    await get(node.port, "/a")
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{node.port}/post", data=b"x"
    ) as response:
        assert response.status == 201
    assert "/a" in {e.primary for e in node.node.store}


async def test_a_client_reload_reaches_the_origin_through_the_tiers(origin, start_node) -> None:
    """With honor_client_no_cache on every tier, ``Cache-Control: no-cache`` from a client
    makes each tier validate with the one above, up to the origin (RFC 9111 §5.2.1.4)."""
    calls = {"n": 0}

    async def counted(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.Response(body=b"v%d" % calls["n"], headers=CACHEABLE)

    origin.set("/r", handler=counted)
    shield = await start_node(origin.url, name="shield-t", honor_client_no_cache=True)
    edge = await start_node(f"http://127.0.0.1:{shield.port}", name="edge-t",
                            honor_client_no_cache=True)
    assert (await get(edge.port, "/r")).body == b"v1"
    assert (await get(edge.port, "/r")).body == b"v1"  # both tiers hold it
    reloaded = await get(edge.port, "/r", {"Cache-Control": "no-cache"})
    assert reloaded.body == b"v2" and calls["n"] == 2
