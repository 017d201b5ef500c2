"""HTTP caching semantics (RFC 9111, RFC 9213, RFC 9211) through a running node."""

from __future__ import annotations

import asyncio

import aiohttp
from rawhttp import get

from reelcdn.edge.http.dates import format_http_date

MAX_AGE = {"Cache-Control": "max-age=60", "ETag": '"v1"'}


def status_of(response) -> str:
    return response.header("cache-status") or ""


async def test_hit_after_miss_with_age_cache_status_and_via(origin, node):
    origin.set("/a", b"hello", headers={**MAX_AGE, "Age": "10"})
    first = await get(node.port, "/a")
    assert first.status == 200 and first.body == b"hello"
    assert "edge-t; fwd=uri-miss; fwd-status=200" in status_of(first)
    second = await get(node.port, "/a")
    assert second.body == b"hello"
    assert status_of(second).startswith("edge-t; hit; ttl=")
    assert int(second.header("age")) >= 10  # the upstream's Age is carried, then grows
    assert "1.1 edge-t" in second.header("via")
    assert origin.counts["/a"] == 1


async def test_forwarding_fields_and_hop_by_hop(origin, node):
    """A fill carries the node's own fields and no client field outside its allow-list; a
    pass carries the client's end-to-end fields but not the hop-by-hop ones."""
    origin.set("/fwd", b"x", headers=MAX_AGE)
    await get(node.port, "/fwd", {"Connection": "X-Secret", "X-Secret": "1", "X-Keep": "2",
                                  "X-Forwarded-For": "10.1.2.3"})
    seen = {k.lower(): v for k, v in origin.seen_headers[-1].items()}
    assert seen["via"] == "1.1 edge-t"
    assert seen["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert "x-secret" not in seen and "x-keep" not in seen
    origin.set("/post", b"ok")
    fields = {"Connection": "X-Secret", "X-Secret": "1", "X-Keep": "2"}
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{node.port}/post", data=b"b", headers=fields
    ) as response:
        assert response.status == 200
    seen = {k.lower(): v for k, v in origin.seen_headers[-1].items()}
    assert "x-secret" not in seen and seen["x-keep"] == "2"


async def test_no_store_and_private_are_not_stored(origin, node):
    origin.set("/ns", b"x", headers={"Cache-Control": "no-store"})
    origin.set("/pv", b"x", headers={"Cache-Control": "private, max-age=60"})
    for path in ("/ns", "/pv"):
        await get(node.port, path)
        await get(node.port, path)
        assert origin.counts[path] == 2


async def test_neither_freshness_nor_validator_is_not_stored_unless_ttl_rule(origin,
                                                                              start_node):
    origin.set("/v/a/seg_00001.m4s", b"seg")
    origin.set("/plain", b"p")
    node = await start_node(origin.url, ttl=[{"match": "*.m4s", "ttl": "1d"}])
    for path in ("/v/a/seg_00001.m4s", "/plain"):
        await get(node.port, path)
        await get(node.port, path)
    assert origin.counts["/plain"] == 2
    assert origin.counts["/v/a/seg_00001.m4s"] == 1


async def test_ttl_rule_overrides_origin_max_age(origin, start_node):
    origin.set("/x.m3u8", b"#EXTM3U\n", headers={"Cache-Control": "max-age=3600"})
    node = await start_node(origin.url, ttl=[{"match": "*.m3u8", "ttl": "1s"}])
    await get(node.port, "/x.m3u8")
    hit = await get(node.port, "/x.m3u8")
    assert "ttl=0" in status_of(hit) or "ttl=1" in status_of(hit)
    await asyncio.sleep(1.2)
    await get(node.port, "/x.m3u8")
    assert origin.counts["/x.m3u8"] == 2


async def test_cdn_cache_control_takes_precedence(origin, node):
    origin.set("/cdn", b"x", headers={"Cache-Control": "no-store",
                                      "CDN-Cache-Control": "max-age=60"})
    origin.set("/cdn2", b"x", headers={"Cache-Control": "max-age=60",
                                       "CDN-Cache-Control": "no-store"})
    for path in ("/cdn", "/cdn2", "/cdn", "/cdn2"):
        await get(node.port, path)
    assert origin.counts["/cdn"] == 1
    assert origin.counts["/cdn2"] == 2


async def test_s_maxage_wins_over_max_age(origin, node):
    origin.set("/s", b"x", headers={"Cache-Control": "max-age=0, s-maxage=60"})
    await get(node.port, "/s")
    hit = await get(node.port, "/s")
    assert "hit" in status_of(hit)
    assert origin.counts["/s"] == 1


async def test_expires_and_heuristic(origin, node):
    import time

    now = time.time()
    origin.set("/exp", b"x", headers={"Date": format_http_date(now),
                                      "Expires": format_http_date(now + 60)})
    origin.set("/heur", b"x", headers={"Last-Modified": format_http_date(now - 86400 * 10)})
    for path in ("/exp", "/heur", "/exp", "/heur"):
        await get(node.port, path)
    assert origin.counts["/exp"] == 1
    assert origin.counts["/heur"] == 1  # 10% of ten days: fresh for a day (capped)


async def test_stale_entry_is_revalidated_and_304_refreshes_headers(origin, node):
    calls = []

    async def handler(request):
        from aiohttp import web

        calls.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"', "Cache-Control": "max-age=1",
                                                     "X-Version": "refreshed"})
        return web.Response(body=b"body-v1", headers={"ETag": '"v1"',
                                                      "Cache-Control": "max-age=1",
                                                      "X-Version": "first"})

    origin.set("/rv", handler=handler)
    await get(node.port, "/rv")
    await asyncio.sleep(1.1)
    revalidated = await get(node.port, "/rv")
    assert revalidated.status == 200 and revalidated.body == b"body-v1"
    assert "fwd=stale; fwd-status=304" in status_of(revalidated)
    assert revalidated.header("x-version") == "refreshed"
    assert calls == [None, '"v1"']
    hit = await get(node.port, "/rv")
    assert "hit" in status_of(hit) and hit.header("x-version") == "refreshed"


async def test_no_cache_response_is_revalidated_every_time(origin, node):
    origin.set("/nc", b"x", headers={"Cache-Control": "no-cache", "ETag": '"a"'})
    for _ in range(3):
        await get(node.port, "/nc")
    assert origin.counts["/nc"] == 3


async def test_stale_if_error_serves_stale_when_origin_fails(origin, node):
    route = origin.set("/sie", b"good", headers={"Cache-Control": "max-age=1, stale-if-error=60"})
    await get(node.port, "/sie")
    await asyncio.sleep(1.1)
    route.status, route.body, route.headers = 503, b"down", {}
    stale = await get(node.port, "/sie")
    assert stale.status == 200 and stale.body == b"good"
    assert "stale-if-error" in status_of(stale)


async def test_stale_if_error_when_upstream_unreachable(origin, start_node):
    origin.set("/sie2", b"good", headers={"Cache-Control": "max-age=1, stale-if-error=60"})
    node = await start_node(origin.url)
    await get(node.port, "/sie2")
    await asyncio.sleep(1.1)
    await origin.stop()
    stale = await get(node.port, "/sie2")
    assert stale.status == 200 and stale.body == b"good"


async def test_must_revalidate_never_serves_stale_on_error(origin, node):
    route = origin.set("/mr", b"good", headers={
        "Cache-Control": "max-age=1, must-revalidate, stale-if-error=60"})
    await get(node.port, "/mr")
    await asyncio.sleep(1.1)
    route.status, route.body, route.headers = 503, b"down", {}
    response = await get(node.port, "/mr")
    assert response.status == 503


async def test_stale_while_revalidate_serves_stale_and_refreshes_in_background(origin, node):
    route = origin.set("/swr", b"old", headers={
        "Cache-Control": "max-age=1, stale-while-revalidate=30"})
    await get(node.port, "/swr")
    await asyncio.sleep(1.1)
    route.body = b"new"
    route.delay = 0.3
    stale = await get(node.port, "/swr", timeout=0.25)  # answered without waiting for origin
    assert stale.body == b"old"
    assert "stale-while-revalidate" in status_of(stale)
    await asyncio.sleep(0.5)
    fresh = await get(node.port, "/swr")
    assert fresh.body == b"new" and "hit" in status_of(fresh)
    assert origin.counts["/swr"] == 2


async def test_client_conditionals_answered_from_cache(origin, node):
    lm = "Tue, 01 Sep 2026 10:00:00 GMT"
    origin.set("/c", b"content", headers={**MAX_AGE, "Last-Modified": lm})
    await get(node.port, "/c")
    not_modified = await get(node.port, "/c", {"If-None-Match": '"v1"'})
    assert not_modified.status == 304 and not_modified.body == b""
    assert not_modified.header("etag") == '"v1"'
    assert (await get(node.port, "/c", {"If-None-Match": '"other"'})).status == 200
    assert (await get(node.port, "/c", {"If-Modified-Since": lm})).status == 304
    assert (await get(node.port, "/c", {"If-Match": '"other"'})).status == 412
    assert origin.counts["/c"] == 1


async def test_client_conditional_on_a_miss(origin, node):
    origin.set("/cm", b"content", headers=MAX_AGE)
    response = await get(node.port, "/cm", {"If-None-Match": '"v1"'})
    assert response.status == 304
    # The fill was unconditional, so the object is now stored for everyone.
    assert (await get(node.port, "/cm")).body == b"content"
    assert origin.counts["/cm"] == 1
    assert "if-none-match" not in {k.lower() for k in origin.seen_headers[0]}


async def test_vary_stores_variants_separately(origin, node):
    async def handler(request):
        from aiohttp import web

        encoding = request.headers.get("Accept-Encoding", "")
        return web.Response(body=f"for {encoding}".encode(),
                            headers={"Cache-Control": "max-age=60", "Vary": "Accept-Encoding"})

    origin.set("/vary", handler=handler)
    gz = await get(node.port, "/vary", {"Accept-Encoding": "gzip"})
    br = await get(node.port, "/vary", {"Accept-Encoding": "br"})
    assert gz.body == b"for gzip" and br.body == b"for br"
    assert (await get(node.port, "/vary", {"Accept-Encoding": "gzip"})).body == b"for gzip"
    assert (await get(node.port, "/vary", {"Accept-Encoding": "br"})).body == b"for br"
    assert origin.counts["/vary"] == 2


async def test_vary_star_is_not_stored(origin, node):
    origin.set("/vs", b"x", headers={"Cache-Control": "max-age=60", "Vary": "*"})
    await get(node.port, "/vs")
    await get(node.port, "/vs")
    assert origin.counts["/vs"] == 2


async def test_cache_key_ignores_cmcd_and_tokens_and_sorts_query(origin, node):
    origin.set("/k", b"x", headers=MAX_AGE)
    await get(node.port, "/k?b=2&a=1&CMCD=bl%3D1000")
    hit = await get(node.port, "/k?a=1&b=2&token=abc&CMCD=bl%3D2000")
    assert "hit" in status_of(hit)
    other = await get(node.port, "/k?a=1&b=3")
    assert "hit" not in status_of(other)
    # The fill went upstream with the normalised key, tokens and CMCD left out.
    assert origin.counts == {"/k?a=1&b=2": 1, "/k?a=1&b=3": 1}


async def test_host_is_not_in_the_key_unless_configured(origin, start_node):
    origin.set("/h", b"x", headers=MAX_AGE)
    node = await start_node(origin.url)
    await get(node.port, "/h", {"Host": "a.example"})
    assert "hit" in status_of(await get(node.port, "/h", {"Host": "b.example"}))
    keyed = await start_node(origin.url, name="keyed", host_in_key=True)
    await get(keyed.port, "/h", {"Host": "a.example"})
    assert "hit" not in status_of(await get(keyed.port, "/h", {"Host": "b.example"}))
    assert "hit" in status_of(await get(keyed.port, "/h", {"Host": "a.example"}))


async def test_unsafe_method_invalidates_and_is_never_cached(origin, node):
    origin.set("/inv", b"x", headers=MAX_AGE)
    await get(node.port, "/inv")
    assert "hit" in status_of(await get(node.port, "/inv"))
    post = await get(node.port, "/inv", method="POST", headers={"Content-Length": "0"})
    assert "fwd=method" in status_of(post)
    assert "hit" not in status_of(await get(node.port, "/inv"))


async def test_negative_caching_by_ttl_rule(origin, start_node):
    node = await start_node(origin.url, ttl=[{"match": "*", "ttl": "10s", "statuses": [404]}])
    first = await get(node.port, "/missing")
    second = await get(node.port, "/missing")
    assert first.status == second.status == 404
    assert "hit" in status_of(second)
    assert origin.counts["/missing"] == 1


async def test_head_miss_fills_the_cache_with_a_get(origin, node):
    origin.set("/hd", b"0123456789", headers=MAX_AGE)
    head = await get(node.port, "/hd", method="HEAD")
    assert head.status == 200 and head.header("content-length") == "10"
    full = await get(node.port, "/hd")
    assert full.body == b"0123456789" and "hit" in status_of(full)
    assert origin.counts["/hd"] == 1


async def test_lru_eviction_stays_within_budget(origin, start_node):
    node = await start_node(origin.url, cache_memory="100KiB")
    for i in range(10):
        origin.set(f"/big{i}", bytes([i]) * 30_000, headers=MAX_AGE)
        await get(node.port, f"/big{i}")
    store = node.node.store
    assert store.bytes <= store.capacity
    assert node.node.stats.evictions >= 7
    assert "hit" in status_of(await get(node.port, "/big9"))
    assert "hit" not in status_of(await get(node.port, "/big0"))


async def test_client_no_cache_ignored_by_default_honoured_when_configured(origin, start_node):
    origin.set("/cnc", b"x", headers={**MAX_AGE})
    node = await start_node(origin.url)
    await get(node.port, "/cnc")
    assert "hit" in status_of(await get(node.port, "/cnc", {"Cache-Control": "no-cache"}))
    honouring = await start_node(origin.url, name="honour", honor_client_no_cache=True)
    await get(honouring.port, "/cnc")
    forced = await get(honouring.port, "/cnc", {"Cache-Control": "no-cache"})
    assert "fwd=request" in status_of(forced)
    assert origin.counts["/cnc"] == 3


async def test_stale_entry_replaced_by_uncacheable_answer_is_dropped(origin, node):
    route = origin.set("/gone-private", b"v1", headers={"Cache-Control": "max-age=1"})
    await get(node.port, "/gone-private")
    await asyncio.sleep(1.1)
    route.headers = {"Cache-Control": "no-store"}
    route.body = b"v2"
    assert (await get(node.port, "/gone-private")).body == b"v2"
    assert len(node.node.store) == 0


async def test_a_304_without_date_makes_the_refreshed_entry_fresh_again(start_node):
    """An origin that sends no Date on its 304 (the fs origin does not): the refreshed entry
    is dated when the 304 arrived, so it is fresh again, not revalidated on every request."""
    first_date = format_http_date(__import__("time").time())
    seen: list[str | None] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            conditional = b"if-none-match" in head.lower()
            seen.append("conditional" if conditional else None)
            if conditional:  # exactly the bytes below: no Date field
                writer.write(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n"
                             b"Cache-Control: max-age=1\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nDate: " + first_date.encode() + b"\r\n"
                             b"ETag: \"v1\"\r\nCache-Control: max-age=1\r\n"
                             b"Content-Length: 5\r\n\r\nhello")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        node = await start_node(f"http://127.0.0.1:{port}")
        assert (await get(node.port, "/d")).body == b"hello"
        await asyncio.sleep(1.2)
        revalidated = await get(node.port, "/d")
        assert "fwd=stale; fwd-status=304" in status_of(revalidated)
        assert revalidated.header("date") != first_date  # dated on arrival of the 304
        hit = await get(node.port, "/d")
        assert status_of(hit).startswith("edge-t; hit"), status_of(hit)
        assert seen == [None, "conditional"]
    finally:
        server.close()
        await server.wait_closed()


async def test_ttl_rules_match_the_path_when_the_host_is_in_the_key(origin, start_node):
    """With host_in_key the cache key starts with the host; a rule for ``/v/*`` still applies."""
    origin.set("/v/a/seg_00002.m4s", b"seg")  # no freshness, no validator: only a rule stores it
    node = await start_node(origin.url, host_in_key=True, ttl=[{"match": "/v/*", "ttl": "1d"}])
    for _ in range(2):
        response = await get(node.port, "/v/a/seg_00002.m4s", {"Host": "site-a.example"})
        assert response.body == b"seg"
    assert "hit" in status_of(response)
    assert origin.counts["/v/a/seg_00002.m4s"] == 1
