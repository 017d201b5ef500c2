"""Range requests served by the node (RFC 9110 §14), from cache and from an in-flight fetch."""

from __future__ import annotations

import asyncio
import email
import os
import time

from rawhttp import get

BODY = os.urandom(100_000)
HEADERS = {"Cache-Control": "max-age=60", "ETag": '"r1"', "Content-Type": "video/mp4",
           "Last-Modified": "Tue, 01 Sep 2026 10:00:00 GMT"}


async def warm(origin, node, path="/r"):
    origin.set(path, BODY, headers=HEADERS)
    await get(node.port, path)


async def test_single_open_and_suffix_ranges(origin, node):
    await warm(origin, node)
    single = await get(node.port, "/r", {"Range": "bytes=10-19"})
    assert single.status == 206 and single.body == BODY[10:20]
    assert single.header("content-range") == f"bytes 10-19/{len(BODY)}"
    assert single.header("accept-ranges") is None or single.header("accept-ranges") == "bytes"
    opened = await get(node.port, "/r", {"Range": "bytes=99990-"})
    assert opened.body == BODY[99990:]
    suffix = await get(node.port, "/r", {"Range": "bytes=-5"})
    assert suffix.body == BODY[-5:]
    assert suffix.header("content-range") == f"bytes 99995-99999/{len(BODY)}"
    assert origin.counts["/r"] == 1


async def test_accept_ranges_advertised(origin, node):
    await warm(origin, node)
    full = await get(node.port, "/r")
    assert full.header("accept-ranges") == "bytes"


async def test_multiple_ranges_multipart(origin, node):
    await warm(origin, node)
    response = await get(node.port, "/r", {"Range": "bytes=0-9,50-59,-10"})
    assert response.status == 206
    ctype = response.header("content-type")
    assert ctype.startswith("multipart/byteranges; boundary=")
    message = email.message_from_bytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + response.body
    )
    parts = [(p["Content-Range"], p.get_payload(decode=True)) for p in message.get_payload()]
    assert parts == [
        (f"bytes 0-9/{len(BODY)}", BODY[0:10]),
        (f"bytes 50-59/{len(BODY)}", BODY[50:60]),
        (f"bytes 99990-99999/{len(BODY)}", BODY[-10:]),
    ]
    assert all(p.get_content_type() == "video/mp4" for p in message.get_payload())


async def test_unsatisfiable_range_is_416(origin, node):
    await warm(origin, node)
    response = await get(node.port, "/r", {"Range": f"bytes={len(BODY)}-"})
    assert response.status == 416
    assert response.header("content-range") == f"bytes */{len(BODY)}"


async def test_invalid_range_is_ignored(origin, node):
    await warm(origin, node)
    response = await get(node.port, "/r", {"Range": "bytes=9-2"})
    assert response.status == 200 and response.body == BODY
    other_unit = await get(node.port, "/r", {"Range": "items=0-1"})
    assert other_unit.status == 200


async def test_if_range(origin, node):
    await warm(origin, node)
    match = await get(node.port, "/r", {"Range": "bytes=0-3", "If-Range": '"r1"'})
    assert match.status == 206 and match.body == BODY[:4]
    stale = await get(node.port, "/r", {"Range": "bytes=0-3", "If-Range": '"old"'})
    assert stale.status == 200 and stale.body == BODY
    by_date = await get(node.port, "/r", {"Range": "bytes=0-3",
                                           "If-Range": HEADERS["Last-Modified"]})
    assert by_date.status == 206
    other_date = await get(node.port, "/r", {"Range": "bytes=0-3",
                                              "If-Range": "Wed, 02 Sep 2026 10:00:00 GMT"})
    assert other_date.status == 200


async def test_head_with_range(origin, node):
    await warm(origin, node)
    response = await get(node.port, "/r", {"Range": "bytes=0-99"}, method="HEAD")
    assert response.status == 206 and response.header("content-length") == "100"


async def test_range_on_a_miss_is_served_from_one_whole_fetch_as_bytes_arrive(origin, node):
    """A range miss makes one whole-object fetch; a range near the start is answered as soon
    as its bytes are in, long before the object is complete."""
    big = os.urandom(400_000)
    origin.set("/slowr", big, headers=HEADERS, chunk_size=50_000, chunk_delay=0.1)
    start = time.perf_counter()
    early_task = asyncio.create_task(get(node.port, "/slowr", {"Range": "bytes=0-999"}))
    late_task = asyncio.create_task(get(node.port, "/slowr", {"Range": "bytes=-1000"}))
    early = await early_task
    early_time = time.perf_counter() - start
    late = await late_task
    late_time = time.perf_counter() - start
    assert early.status == 206 and early.body == big[:1000]
    assert late.status == 206 and late.body == big[-1000:]
    assert early_time < 0.3 < late_time
    assert origin.counts["/slowr"] == 1
    assert "range" not in {k.lower() for k in origin.seen_headers[0]}
    hit = await get(node.port, "/slowr", {"Range": "bytes=1000-1999"})
    assert hit.body == big[1000:2000] and "hit" in hit.header("cache-status")


async def test_range_request_for_uncached_error_passes_status(origin, node):
    response = await get(node.port, "/nothing-here", {"Range": "bytes=0-1"})
    assert response.status == 404
