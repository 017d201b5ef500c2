"""Tests for reelcdn.extensions._ranges_py: RFC 9110 §14 Range parsing, multipart/byteranges.

Every test runs on each twin (the ``twin`` fixture, conftest.py): the pure
``reelcdn.extensions._ranges_py``, the reference, and the compiled
``reelcdn.extensions._ranges``. The tables and the strategies that draw Range headers are
in ``ranges_cases.py``; ``test_extensions.py`` compares the twins.
"""

from __future__ import annotations

import email.parser
import re
from types import ModuleType

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from ranges_cases import MAX_RANGES_CASES, PARSE_CASES, Spec, U, headers, render_spec, specs

from reelcdn.extensions import _ranges_py as pure_ranges
from reelcdn.extensions._ranges_py import UNSATISFIABLE

TWIN_MODULE = "ranges"  # the ``twin`` fixture (conftest.py) loads its twins

# ---------------------------------------------------------------------------------------------
# parse_range: the tables (ranges_cases.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "size", "expected"), PARSE_CASES)
def test_parse_range_table(
    twin: ModuleType, header: bytes | str | None, size: int, expected: object
) -> None:
    result = twin.parse_range(header, size)
    if expected is None or expected is U:
        assert result is expected
    else:
        assert result == expected
    if isinstance(header, bytes):
        # str and bytes inputs agree
        str_result = twin.parse_range(header.decode("latin-1"), size)
        assert str_result == result


@pytest.mark.parametrize(("header", "max_ranges", "expected"), MAX_RANGES_CASES)
def test_parse_range_max_ranges(
    twin: ModuleType, header: bytes, max_ranges: int, expected: object
) -> None:
    result = twin.parse_range(header, 100, max_ranges=max_ranges)
    if expected == "list":
        assert isinstance(result, list)
    elif expected is None:
        assert result is None
    else:
        assert result == expected


def test_parse_range_default_max_ranges_is_16(twin: ModuleType) -> None:
    spec16 = ",".join(f"{i * 3}-{i * 3}" for i in range(16))
    assert isinstance(twin.parse_range("bytes=" + spec16, 1000), list)
    assert twin.parse_range("bytes=" + spec16 + ",900-", 1000) is None


def test_parse_range_huge_header_is_rejected_early(twin: ModuleType) -> None:
    header = b"bytes=" + b"0-0," * 1_000_000
    assert twin.parse_range(header, 100) is None


def test_parse_range_negative_size(twin: ModuleType) -> None:
    with pytest.raises(ValueError):
        twin.parse_range(b"bytes=0-1", -1)


def test_unsatisfiable_sentinel(twin: ModuleType) -> None:
    assert twin.UNSATISFIABLE is twin.parse_range(b"bytes=-0", 10)
    assert twin.UNSATISFIABLE is not None
    assert not isinstance(twin.UNSATISFIABLE, list)
    assert repr(twin.UNSATISFIABLE) == "UNSATISFIABLE"


def test_result_is_fresh_list(twin: ModuleType) -> None:
    first = twin.parse_range(b"bytes=0-1", 10)
    assert isinstance(first, list)
    first.append((5, 6))
    assert twin.parse_range(b"bytes=0-1", 10) == [(0, 2)]


# ---------------------------------------------------------------------------------------------
# Content-Range
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "size", "expected"),
    [
        (0, 500, 1234, b"bytes 0-499/1234"),
        (0, 1, 1, b"bytes 0-0/1"),
        (9, 10, 10, b"bytes 9-9/10"),
        (0, 10, 10, b"bytes 0-9/10"),
        (
            10**18,
            10**19,
            10**19,
            b"bytes 1000000000000000000-9999999999999999999/10000000000000000000",
        ),
    ],
)
def test_content_range(twin: ModuleType, start: int, end: int, size: int, expected: bytes) -> None:
    assert twin.content_range(start, end, size) == expected


@pytest.mark.parametrize(
    ("start", "end", "size"),
    [(0, 0, 10), (5, 4, 10), (-1, 2, 10), (0, 11, 10), (10, 11, 10), (0, 1, 0)],
)
def test_content_range_rejects_bad_ranges(
    twin: ModuleType, start: int, end: int, size: int
) -> None:
    with pytest.raises(ValueError):
        twin.content_range(start, end, size)


@pytest.mark.parametrize(
    ("size", "expected"), [(1234, b"bytes */1234"), (0, b"bytes */0"), (1, b"bytes */1")]
)
def test_unsatisfied_range(twin: ModuleType, size: int, expected: bytes) -> None:
    assert twin.unsatisfied_range(size) == expected


def test_unsatisfied_range_negative(twin: ModuleType) -> None:
    with pytest.raises(ValueError):
        twin.unsatisfied_range(-1)


# ---------------------------------------------------------------------------------------------
# Boundaries and multipart_plan: exact bytes
# ---------------------------------------------------------------------------------------------


def test_new_boundary(twin: ModuleType) -> None:
    seen = {twin.new_boundary() for _ in range(200)}
    assert len(seen) == 200
    for boundary in seen:
        assert isinstance(boundary, bytes)
        assert re.fullmatch(rb"[0-9a-f]{20}", boundary)


def test_multipart_plan_exact_bytes(twin: ModuleType) -> None:
    parts, closing, total = twin.multipart_plan([(0, 2), (5, 7)], 10, b"video/mp4", b"XYZ")
    assert parts == [
        (b"\r\n--XYZ\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-1/10\r\n\r\n", 0, 2),
        (b"\r\n--XYZ\r\nContent-Type: video/mp4\r\nContent-Range: bytes 5-6/10\r\n\r\n", 5, 7),
    ]
    assert closing == b"\r\n--XYZ--\r\n"
    body = b"".join(head + b"0123456789"[s:e] for head, s, e in parts) + closing
    assert body == (
        b"\r\n--XYZ\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-1/10\r\n\r\n01"
        b"\r\n--XYZ\r\nContent-Type: video/mp4\r\nContent-Range: bytes 5-6/10\r\n\r\n56"
        b"\r\n--XYZ--\r\n"
    )
    assert total == len(body)


def test_multipart_plan_without_content_type(twin: ModuleType) -> None:
    parts, closing, total = twin.multipart_plan([(3, 4)], 4, None, b"b")
    assert parts == [(b"\r\n--b\r\nContent-Range: bytes 3-3/4\r\n\r\n", 3, 4)]
    assert closing == b"\r\n--b--\r\n"
    assert total == len(parts[0][0]) + 1 + len(closing)


@pytest.mark.parametrize(
    ("ranges", "size", "content_type", "boundary"),
    [
        ([], 10, None, b"abc"),  # no parts
        ([(0, 0)], 10, None, b"abc"),  # empty range
        ([(0, 11)], 10, None, b"abc"),  # past the end
        ([(0, 1)], 10, None, b""),  # empty boundary
        ([(0, 1)], 10, None, b"a" * 71),  # too long
        ([(0, 1)], 10, None, b"abc "),  # trailing space
        ([(0, 1)], 10, None, b"a\r\nb"),  # header injection
        ([(0, 1)], 10, None, b'a"b'),  # not a bchar
        ([(0, 1)], 10, b"text/plain\r\nX-Evil: 1", b"abc"),
        ([(0, 1)], 10, b"text/plain\n", b"abc"),
    ],
)
def test_multipart_plan_rejects(
    twin: ModuleType,
    ranges: list[tuple[int, int]], size: int, content_type: bytes | None, boundary: bytes
) -> None:
    with pytest.raises(ValueError):
        twin.multipart_plan(ranges, size, content_type, boundary)


def test_multipart_plan_accepts_rfc2046_boundaries(twin: ModuleType) -> None:
    for boundary in (b"a" * 70, b"gc0p4Jq0M2Yt08jU534c0p", b"'()+_,-./:=? x", b"0"):
        parts, closing, _ = twin.multipart_plan([(0, 1)], 1, None, boundary)
        assert parts[0][0].startswith(b"\r\n--" + boundary + b"\r\n")
        assert closing == b"\r\n--" + boundary + b"--\r\n"


# ---------------------------------------------------------------------------------------------
# Hypothesis: parse_range against a naive reference
# ---------------------------------------------------------------------------------------------


def reference_bytes(spec_list: list[Spec], size: int) -> set[int]:
    """Positions selected by the specs, straight from the RFC 9110 §14.1.2 definitions."""
    selected: set[int] = set()
    for kind, a, b in spec_list:
        if kind == "suffix":
            if a > 0:
                selected.update(range(max(0, size - a), size))
        else:
            last = size - 1 if b is None else min(b, size - 1)
            selected.update(range(a, last + 1))  # empty when a >= size
    return selected


def intervals(positions_set: set[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive positions as half-open ranges, ascending."""
    result: list[tuple[int, int]] = []
    for p in sorted(positions_set):
        if result and result[-1][1] == p:
            result[-1] = (result[-1][0], p + 1)
        else:
            result.append((p, p + 1))
    return result


def check_invariants(result: object, size: int) -> None:
    if result is None or result is UNSATISFIABLE:
        return
    assert isinstance(result, list)
    assert result, "a list result is never empty"
    for start, end in result:
        assert type(start) is int and type(end) is int
        assert 0 <= start < end <= size
    if len(result) > 1:
        ordered = sorted(result)
        for (_, prev_end), (next_start, _) in zip(ordered, ordered[1:], strict=False):
            assert prev_end < next_start, "disjoint and not adjacent"


@st.composite
def cases(draw: st.DrawFn) -> tuple[int, list[Spec], str]:
    size = draw(st.integers(min_value=0, max_value=10_000))
    spec_list = draw(st.lists(specs, min_size=1, max_size=16))
    return size, spec_list, draw(headers(spec_list))


@pytest.mark.slow
@settings(max_examples=400)
@given(case=cases())
@example(case=(0, [("suffix", 0, None)], "bytes=-0"))
@example(case=(0, [("int", 0, None)], "bytes=0-"))
@example(case=(10, [("int", 10, None)], "bytes=10-"))
@example(case=(10, [("int", 0, 4), ("int", 5, 9)], "bytes=0-4,5-9"))
@example(case=(10, [("suffix", 11, None), ("int", 3, 3)], "bytes=-11,3-3"))
def test_parse_range_matches_reference(twin: ModuleType, case: tuple[int, list[Spec], str]) -> None:
    size, spec_list, header = case
    for value in (header, header.encode("latin-1")):
        result = twin.parse_range(value, size)
        check_invariants(result, size)
        expected = reference_bytes(spec_list, size)
        if not expected:
            assert result is twin.UNSATISFIABLE
        else:
            assert isinstance(result, list)
            # union-of-bytes equality; with coalescing the runs are exactly the result
            got: set[int] = set()
            for start, end in result:
                got.update(range(start, end))
            assert got == expected
            assert sorted(result) == intervals(expected)


@given(
    size=st.integers(min_value=0, max_value=10_000),
    spec_list=st.lists(specs, min_size=1, max_size=40),
    max_ranges=st.integers(min_value=1, max_value=20),
)
def test_parse_range_max_ranges_property(
    twin: ModuleType, size: int, spec_list: list[Spec], max_ranges: int
) -> None:
    header = "bytes=" + ",".join(render_spec(s) for s in spec_list)
    result = twin.parse_range(header, size, max_ranges=max_ranges)
    if len(spec_list) > max_ranges:
        assert result is None
    else:
        assert result is not None
        check_invariants(result, size)


@given(
    size=st.integers(min_value=0, max_value=10_000),
    spec_list=st.lists(specs, min_size=1, max_size=8),
    bad=st.sampled_from(["5-2", "-", "x", "1-2-3", "+1-", "-+1", "0x1-", " 1 - 2", "1;2", "1e3-"]),
    where=st.integers(min_value=0, max_value=8),
)
def test_one_invalid_spec_invalidates_header(
    twin: ModuleType,
    size: int, spec_list: list[Spec], bad: str, where: int
) -> None:
    elements = [render_spec(s) for s in spec_list]
    elements.insert(min(where, len(elements)), bad)
    assert twin.parse_range("bytes=" + ",".join(elements), size) is None


@given(
    unit=st.text(alphabet="abcdefghijklmnopqrstuvwxyzBYTES-", min_size=0, max_size=8),
    spec_list=st.lists(specs, min_size=1, max_size=4),
)
def test_other_units_are_ignored(twin: ModuleType, unit: str, spec_list: list[Spec]) -> None:
    assume(unit.lower() != "bytes")
    header = unit + "=" + ",".join(render_spec(s) for s in spec_list)
    assert twin.parse_range(header, 1000) is None


@settings(max_examples=300)
@given(header=st.binary(max_size=80), size=st.integers(min_value=0, max_value=10_000))
def test_arbitrary_bytes_never_crash(twin: ModuleType, header: bytes, size: int) -> None:
    result = twin.parse_range(header, size)
    check_invariants(result, size)
    assert twin.parse_range(header.decode("latin-1"), size) == result


@settings(max_examples=300)
@given(
    tail=st.text(alphabet="0123456789-, \t=+x\u0661\u00b2", max_size=40),
    size=st.integers(min_value=0, max_value=10_000),
)
def test_near_miss_text_never_crashes(twin: ModuleType, tail: str, size: int) -> None:
    result = twin.parse_range("bytes=" + tail, size)
    check_invariants(result, size)
    if result is not None and result is not twin.UNSATISFIABLE:
        # anything accepted consists of ASCII digits, '-', ',' and OWS only
        assert re.fullmatch(r"[0-9, \t-]*", tail)


@given(
    digits=st.integers(min_value=20, max_value=40),
    kind=st.sampled_from(["{n}-", "0-{n}", "-{n}", "{n}-{n}"]),
)
def test_numbers_over_19_digits_are_invalid(twin: ModuleType, digits: int, kind: str) -> None:
    number = "1" + "0" * (digits - 1)
    assert twin.parse_range("bytes=" + kind.format(n=number), 100) is None


# ---------------------------------------------------------------------------------------------
# Hypothesis: multipart_plan assembled and parsed back
# ---------------------------------------------------------------------------------------------


def assemble(parts: list[tuple[bytes, int, int]], closing: bytes, data: bytes) -> bytes:
    return b"".join(head + data[start:end] for head, start, end in parts) + closing


def split_body(body: bytes, boundary: bytes) -> list[tuple[dict[bytes, bytes], bytes]]:
    """A strict, independent parser for our multipart/byteranges framing."""
    delimiter = b"\r\n--" + boundary
    assert body.endswith(delimiter + b"--\r\n")
    chunks = body[: -len(delimiter + b"--\r\n")].split(delimiter)
    assert chunks[0] == b"", "empty preamble: the body starts with CRLF--boundary"
    parsed = []
    for chunk in chunks[1:]:
        assert chunk.startswith(b"\r\n")
        head, sep, payload = chunk[2:].partition(b"\r\n\r\n")
        assert sep
        fields = {}
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b": ")
            assert colon
            fields[name.lower()] = value
        parsed.append((fields, payload))
    return parsed


content_types = st.one_of(
    st.none(),
    st.sampled_from([b"video/mp4", b"application/octet-stream", b"text/plain; charset=utf-8"]),
)


@st.composite
def objects_and_ranges(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]]]:
    size = draw(st.integers(min_value=1, max_value=2_000))
    data = draw(st.binary(min_size=size, max_size=size))
    spec_list = draw(st.lists(specs, min_size=1, max_size=16))
    header = "bytes=" + ",".join(render_spec(s) for s in spec_list)
    result = pure_ranges.parse_range(header, size)
    assume(isinstance(result, list))
    assert isinstance(result, list)
    return data, result


@settings(max_examples=200)
@given(obj=objects_and_ranges(), content_type=content_types)
def test_multipart_plan_roundtrip(
    twin: ModuleType,
    obj: tuple[bytes, list[tuple[int, int]]], content_type: bytes | None
) -> None:
    data, ranges = obj
    size = len(data)
    boundary = twin.new_boundary()
    assume(boundary not in data)
    parts, closing, total = twin.multipart_plan(ranges, size, content_type, boundary)

    assert [(s, e) for _, s, e in parts] == ranges
    body = assemble(parts, closing, data)
    assert total == len(body)

    # strict split on the boundary
    parsed = split_body(body, boundary)
    assert len(parsed) == len(ranges)
    for (fields, payload), (start, end) in zip(parsed, ranges, strict=True):
        assert payload == data[start:end]
        assert fields[b"content-range"] == b"bytes %d-%d/%d" % (start, end - 1, size)
        if content_type is None:
            assert set(fields) == {b"content-range"}
        else:
            assert fields[b"content-type"] == content_type

    # Python's email parser, as an independent MIME implementation
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: multipart/byteranges; boundary=" + boundary + b"\r\n\r\n" + body
    )
    assert message.is_multipart()
    assert message.get_content_type() == "multipart/byteranges"
    mime_parts = message.get_payload()
    assert isinstance(mime_parts, list)
    assert len(mime_parts) == len(ranges)
    for part, (start, end) in zip(mime_parts, ranges, strict=True):
        assert part.get_payload(decode=True) == data[start:end]
        assert part["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        if content_type is not None:
            assert part["Content-Type"] == content_type.decode("ascii")
        else:
            assert part["Content-Type"] is None
    assert message.defects == []


@given(
    size=st.integers(min_value=1, max_value=10**19 - 1),
    data=st.data(),
    content_type=content_types,
)
def test_multipart_plan_total_matches_heads(
    twin: ModuleType,
    size: int, data: st.DataObject, content_type: bytes | None
) -> None:
    """Total length without materialising the body, for objects of any size."""
    bounds = data.draw(
        st.lists(st.integers(min_value=0, max_value=size), min_size=2, max_size=20, unique=True)
    )
    bounds.sort()
    ranges = list(zip(bounds[::2], bounds[1::2], strict=False))
    assume(ranges)
    parts, closing, total = twin.multipart_plan(ranges, size, content_type, b"bnd")
    assert total == sum(len(h) + e - s for h, s, e in parts) + len(closing)
    for head, start, end in parts:
        assert head.startswith(b"\r\n--bnd\r\n")
        field = b"Content-Range: " + twin.content_range(start, end, size)
        assert head.endswith(field + b"\r\n\r\n")
