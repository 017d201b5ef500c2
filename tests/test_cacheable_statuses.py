"""Storable statuses (RFC 9111 §3, RFC 9110 §15.1), through a real node: a response with a
status the cache understands and explicit freshness is stored and reused with its own status
and body; a heuristically cacheable status is stored on Last-Modified alone."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from rawhttp import get

if TYPE_CHECKING:
    from conftest import TestOrigin

    from reelcdn.edge.ops.server import NodeServer

EXPLICIT = {
    "max-age": {"Cache-Control": "max-age=300"},
    "s-maxage": {"Cache-Control": "s-maxage=300"},
    "expires": {"Expires": "Thu, 01 Jan 2099 00:00:00 GMT",
                "Date": "Thu, 01 Jan 2026 00:00:00 GMT"},
}


@pytest.mark.parametrize("how", sorted(EXPLICIT))
@pytest.mark.parametrize("status", [203, 204, 300, 301, 302, 307, 308, 404, 405, 410, 414, 501])
async def test_understood_status_with_explicit_freshness_is_a_hit(
    origin: TestOrigin, node: NodeServer, status: int, how: str
) -> None:
    body = b"" if status == 204 else b"body of %d" % status
    headers = dict(EXPLICIT[how])
    if status in (300, 301, 302, 307, 308):
        headers["Location"] = "/elsewhere"
    origin.set("/s", body, status=status, headers=headers)
    first = await get(node.port, "/s")
    second = await get(node.port, "/s")
    assert (first.status, first.body) == (status, body)
    assert (second.status, second.body) == (status, body)
    assert origin.counts["/s"] == 1, second.header("cache-status")
    assert "hit" in (second.header("cache-status") or "")


@pytest.mark.parametrize("status", [299, 303, 400, 403, 429, 451])
async def test_other_final_status_with_explicit_freshness_is_a_hit(
    origin: TestOrigin, node: NodeServer, status: int
) -> None:
    """RFC 9111 §3: explicit freshness makes any final response storable; the cache needs to
    understand the code only under must-understand."""
    body = b"body of %d" % status
    origin.set("/s", body, status=status, headers={"Cache-Control": "max-age=300"})
    first = await get(node.port, "/s")
    second = await get(node.port, "/s")
    assert (first.status, first.body) == (second.status, second.body) == (status, body)
    assert origin.counts["/s"] == 1
    assert "hit" in (second.header("cache-status") or "")


@pytest.mark.parametrize(("status", "headers"), [
    (500, {"Cache-Control": "max-age=300"}),            # server errors: a TTL rule's decision
    (503, {"Cache-Control": "s-maxage=300"}),
])
async def test_server_errors_are_stored_only_for_negative_ttl_5xx(
    origin: TestOrigin, start_node, status: int, headers: dict[str, str]
) -> None:
    """A 5xx's own freshness is ignored; ``negative_ttl_5xx`` (a last TTL rule) stores it for
    that long, and 0 not at all."""
    origin.set("/s", b"x", status=status, headers=headers)
    off = await start_node(origin.url, negative_ttl_5xx=0)
    for _ in range(2):
        assert (await get(off.port, "/s")).status == status
    assert origin.counts["/s"] == 2
    # (Date has whole seconds, so a stored answer is up to 1 s old on arrival)
    short = await start_node(origin.url, name="edge-n", negative_ttl_5xx="1500ms")
    for _ in range(3):
        assert (await get(short.port, "/s")).status == status
    assert origin.counts["/s"] == 3  # one fill, then two hits
    await asyncio.sleep(1.6)
    assert (await get(short.port, "/s")).status == status
    assert origin.counts["/s"] == 4  # its 1.5 s are over, not the origin's 300 s


@pytest.mark.parametrize(("status", "headers"), [
    (299, {"Cache-Control": "must-understand, max-age=300"}),
    (299, {"Last-Modified": "Thu, 01 Jan 2015 00:00:00 GMT", "ETag": '"v"'}),  # no explicit
    (400, {"ETag": '"v"'}),
    (404, {"Cache-Control": "no-store, max-age=300"}),
])
async def test_not_stored(
    origin: TestOrigin, node: NodeServer, status: int, headers: dict[str, str]
) -> None:
    origin.set("/s", b"x", status=status, headers=headers)
    for _ in range(2):
        assert (await get(node.port, "/s")).status == status
    assert origin.counts["/s"] == 2


@pytest.mark.parametrize("status", [203, 300, 301, 308, 404, 410])
async def test_heuristically_cacheable_status_is_a_hit_on_last_modified(
    origin: TestOrigin, node: NodeServer, status: int
) -> None:
    origin.set("/s", b"h", status=status, headers={
        "Last-Modified": "Thu, 01 Jan 2015 00:00:00 GMT", "Location": "/elsewhere"})
    await get(node.port, "/s")
    second = await get(node.port, "/s")
    assert (second.status, second.body) == (status, b"h")
    assert origin.counts["/s"] == 1
