"""Range HITs at any offset, of any length, one range or several, checked against a reference.

The node answers a single range of a large body with ``sendfile`` (at an offset off a page
boundary, the bytes up to the next one copied with the head first: ``lead_length``), and
several ranges (or a body held as bytes) with one gather write of heads and slices; every
path must give exactly the bytes, ``Content-Range``, ``Content-Length`` and
``multipart/byteranges`` framing that a plain model of RFC 9110 §14 gives. Run on whichever
Range twin the node was built with (the suite runs again with ``REELCDN_NO_EXTENSIONS=1``).
"""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawhttp import get, read_response

from reelcdn.edge.http.connection import lead_length

PAGE = 4096
# A body stored as a memory file (at least sendfile_min_bytes, 64 KiB) whose size is not a
# multiple of a page, and one small enough to stay bytes.
LARGE = os.urandom(1024 * 1024 + 123)
SMALL = os.urandom(60_000)
HEADERS = {"Cache-Control": "max-age=600", "ETag": '"o1"', "Content-Type": "video/mp4"}

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def reference(spans: list[tuple[int, int]], size: int) -> list[tuple[int, int]] | None:
    """RFC 9110 §14: the ranges (first, last inclusive) a server sends for ``spans``, as
    half-open pairs, clipped, unsatisfiable ones dropped; overlapping or adjacent ones merged
    in order (what the node does, which §14.2 permits), disjoint ones kept in request order.
    None: nothing satisfiable (416)."""
    kept = [(first, min(last + 1, size)) for first, last in spans if first < size]
    if not kept:
        return None
    ordered = sorted(kept)
    if all(a[1] < b[0] for a, b in zip(ordered, ordered[1:], strict=False)):
        return kept
    merged = [ordered[0]]
    for start, end in ordered[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def parse_multipart(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/byteranges`` body, strictly: each delimiter preceded by
    CRLF (the first one too: an empty preamble), the closing one last, nothing after it."""
    closing = b"\r\n--" + boundary + b"--\r\n"
    assert body.endswith(closing), body[-80:]
    delimiter = b"\r\n--" + boundary + b"\r\n"
    assert body.startswith(delimiter), body[:80]
    parts = []
    for piece in body[len(delimiter):-len(closing)].split(delimiter):
        head, sep, data = piece.partition(b"\r\n\r\n")
        assert sep, piece[:80]
        fields = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        parts.append((fields, data))
    return parts


async def check(node, path: str, content: bytes, spans: list[tuple[int, int]]) -> None:
    header = "bytes=" + ",".join(f"{first}-{last}" for first, last in spans)
    response = await get(node.port, path, {"Range": header})
    size = len(content)
    expected = reference(spans, size)
    if expected is None:
        assert response.status == 416, header
        assert response.header("content-range") == f"bytes */{size}"
        return
    assert response.status == 206, header
    assert int(response.header("content-length")) == len(response.body), header
    if len(expected) == 1:
        start, end = expected[0]
        assert response.header("content-range") == f"bytes {start}-{end - 1}/{size}", header
        assert response.body == content[start:end], header
        return
    ctype = response.header("content-type")
    assert ctype.startswith("multipart/byteranges; boundary="), ctype
    parts = parse_multipart(response.body, ctype.partition("boundary=")[2].encode())
    assert [
        (fields["content-range"], fields["content-type"], data) for fields, data in parts
    ] == [
        (f"bytes {start}-{end - 1}/{size}", "video/mp4", content[start:end])
        for start, end in expected
    ], header


def positions(size: int) -> st.SearchStrategy[int]:
    """Offsets anywhere, and often on either side of a page boundary."""
    near_page = st.builds(
        lambda page, delta: max(0, min(size - 1, page * PAGE + delta)),
        st.integers(0, size // PAGE), st.integers(-2, 2),
    )
    return st.one_of(st.integers(0, size - 1), near_page)


@st.composite
def spans_of(draw: st.DrawFn, size: int, most: int) -> list[tuple[int, int]]:
    """1 to ``most`` range-specs (first, last): lengths from 1 byte to past the end, around
    64 KiB and the page size more often than chance would."""
    spans = []
    for _ in range(draw(st.integers(1, most))):
        first = draw(positions(size + 10))
        length = draw(st.one_of(
            st.integers(1, size),
            st.sampled_from([1, PAGE - 1, PAGE, PAGE + 1, 65535, 65536, 65537, 16 * PAGE + 1]),
            st.integers(65536 - PAGE, 65536 + PAGE),
        ))
        spans.append((first, first + length - 1))
    return spans


def test_bytes_up_to_a_page_boundary_go_with_the_head() -> None:
    assert lead_length(0, 65536) == 0 and lead_length(65536, 1024 * 1024) == 0
    assert lead_length(1, 65537) == PAGE - 1
    assert lead_length(4095, 4095 + 65536) == 1
    assert lead_length(12345, 12345 + 200_000) == 4 * PAGE - 12345
    assert lead_length(100, 200) == 100  # a range inside one page: all of it


@SETTINGS
@given(spans=spans_of(len(LARGE), 1))
async def test_one_range_of_a_memory_file_body(origin, node, spans) -> None:
    origin.set("/large", LARGE, headers=HEADERS)
    await check(node, "/large", LARGE, spans)


@SETTINGS
@given(spans=spans_of(len(LARGE), 5))
async def test_several_ranges_of_a_memory_file_body(origin, node, spans) -> None:
    origin.set("/large", LARGE, headers=HEADERS)
    await check(node, "/large", LARGE, spans)


@SETTINGS
@given(spans=spans_of(len(SMALL), 4))
async def test_ranges_of_a_body_held_as_bytes(origin, node, spans) -> None:
    origin.set("/small", SMALL, headers=HEADERS)
    await check(node, "/small", SMALL, spans)


async def test_a_random_offset_range_after_a_pipelined_one(origin, node) -> None:
    """Two unaligned 64 KiB ranges in one write: the second answer waits for the first's
    body (sendfile, the head alone) and both arrive whole and in order."""
    origin.set("/large", LARGE, headers=HEADERS)
    await get(node.port, "/large")
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        request = "GET /large HTTP/1.1\r\nHost: t\r\nRange: bytes={}-{}\r\n\r\n"
        writer.write((request.format(1, 65536) + request.format(70001, 135536)).encode())
        first = await read_response(reader)
        second = await read_response(reader)
    finally:
        writer.close()
    assert (first.status, first.body) == (206, LARGE[1:65537])
    assert (second.status, second.body) == (206, LARGE[70001:135537])
