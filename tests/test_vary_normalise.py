"""Vary matching normalises the selecting fields (RFC 9111 §4.1): whitespace around commas,
the case of case-insensitive tokens and the way a list was split over field lines do not make
a new variant; anything that may change the meaning does."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from rawhttp import RawResponse, read_response

from reelcdn.edge.cache.store import MemoryStore, selecting_value

if TYPE_CHECKING:
    from conftest import TestOrigin

    from reelcdn.edge.ops.server import NodeServer


@pytest.mark.parametrize(("name", "a", "b"), [
    (b"accept-language", b"en-US, fr;q=0.8", b"en-us,FR ; q=0.8"),
    (b"accept-language", b"en-US,   fr", b" en-us ,fr "),
    (b"accept-encoding", b"gzip, br", b"GZIP,BR"),
    (b"accept-encoding", b"gzip,, br,", b"gzip, br"),  # empty members are ignored
    (b"accept", b"Text/HTML;Level=1, */*", b"text/html; level=1,*/*"),
    (b"x-list", b"a, b", b"a,b"),                       # two field lines joined by the reader
    (b"x-list", b'"a, b", c', b'"a, b",c'),
    (b"x-list", b"a  b", b"a b"),
])
def test_equivalent_values_select_the_same_variant(name: bytes, a: bytes, b: bytes) -> None:
    assert selecting_value(name, a) == selecting_value(name, b)
    vary = (name,)
    assert MemoryStore.variant_key("/p", vary, {name: a}) == \
        MemoryStore.variant_key("/p", vary, {name: b})


@pytest.mark.parametrize(("name", "a", "b"), [
    (b"accept-language", b"en, fr", b"fr, en"),         # order carries preference
    (b"x-device", b"iPhone", b"iphone"),                # unknown field: case kept
    (b"accept", b'text/html;profile="A"', b'text/html;profile="a"'),
    (b"x-list", b'"a,b"', b'"a","b"'),                  # a comma inside a quoted string
    (b"accept-encoding", b"gzip", b""),
])
def test_different_values_select_different_variants(name: bytes, a: bytes, b: bytes) -> None:
    assert selecting_value(name, a) != selecting_value(name, b)


def test_a_missing_field_is_the_empty_value() -> None:
    assert MemoryStore.variant_key("/p", (b"accept-language",), {}) == \
        MemoryStore.variant_key("/p", (b"accept-language",), {b"accept-language": b" , "})
    assert MemoryStore.variant_key("/p", (), {b"accept-language": b"en"}) == "/p"


async def request(port: int, fields: bytes) -> RawResponse:
    """GET /v with these raw field lines, on a fresh connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /v HTTP/1.1\r\nHost: 127.0.0.1\r\n" + fields + b"\r\n")
        return await read_response(reader)
    finally:
        writer.close()


async def test_an_equivalent_request_is_a_hit_through_the_node(
    origin: TestOrigin, node: NodeServer
) -> None:
    origin.set("/v", b"english", headers={"Cache-Control": "max-age=60",
                                          "Vary": "Accept-Language"})
    await request(node.port, b"")  # the node learns that /v Varies (and stores that variant)
    first = await request(node.port, b"Accept-Language: en-US, fr;q=0.8\r\n")
    assert first.status == 200 and first.body == b"english"
    assert origin.counts["/v"] == 2
    # the same list as two field lines, other case and spacing
    second = await request(node.port, b"Accept-Language: EN-us\r\nAccept-Language: fr ;q=0.8\r\n")
    assert second.status == 200 and second.body == b"english"
    assert origin.counts["/v"] == 2
    assert "hit" in (second.header("cache-status") or "")
    third = await request(node.port, b"Accept-Language: de\r\n")
    assert third.status == 200 and origin.counts["/v"] == 3


async def test_vary_accept_encoding_is_a_hit_through_the_node(
    origin: TestOrigin, node: NodeServer
) -> None:
    """The fill files the variant under the node's spelling of Accept-Encoding; a lookup with
    the client's own spelling finds it."""
    origin.set("/v", b"coded", headers={"Cache-Control": "max-age=60",
                                        "Vary": "Accept-Encoding"})
    await request(node.port, b"Accept-Encoding: gzip, deflate, br\r\n")
    again = await request(node.port, b"Accept-Encoding: gzip, deflate, br\r\n")
    other = await request(
        node.port, b"Accept-Encoding: BR;q=1.0,gzip\r\nAccept-Encoding: deflate\r\n"
    )
    assert again.body == other.body == b"coded"
    assert origin.counts["/v"] == 1
    assert "hit" in (other.header("cache-status") or "")
