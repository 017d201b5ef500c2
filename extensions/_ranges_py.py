"""HTTP Range requests (RFC 9110 §14): parse ``Range``, build ``Content-Range`` and plan
``multipart/byteranges`` bodies.

Why this module looks the way it does:

* It is pure: no I/O, no clock, no logging. The request handler decides what to send; this module
  only answers "which bytes?" and "which framing bytes?". That keeps it trivially testable and lets
  a range miss be served from the coalesced whole-object fetch (docs/overview.md) without this code
  knowing anything about caches or sockets.
* It runs on the hot path of every request that carries ``Range`` and has a Cython twin, so
  it is plain functions over ``str``/``bytes``/``int`` with simple string operations (no regex, no
  dataclasses, no per-range objects). The only class is the ``UNSATISFIABLE`` sentinel.
* Numbers are limited to 19 decimal digits, so every position fits in an unsigned 64-bit integer
  in the Cython version; anything longer is treated as invalid.

Ranges are half-open ``(start, end_exclusive)`` pairs everywhere in Python code; only the wire
format (``Content-Range``) uses inclusive last positions.
"""

from __future__ import annotations

import enum
import os
from typing import Final, Literal


class Unsatisfiable(enum.Enum):
    """Type of the :data:`UNSATISFIABLE` sentinel (an enum so type checkers narrow on ``is``)."""

    UNSATISFIABLE = "UNSATISFIABLE"

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE: Final = Unsatisfiable.UNSATISFIABLE
"""Returned by :func:`parse_range` when ``Range`` is valid but no range overlaps the object: the
caller answers 416 with ``Content-Range: bytes */size`` (see :func:`unsatisfied_range`). Compare
with ``is``; it is not a list and must not be iterated."""

RangeResult = list[tuple[int, int]] | None | Literal[Unsatisfiable.UNSATISFIABLE]
"""What :func:`parse_range` returns."""

MAX_DIGITS: Final = 19
"""Longest accepted first-pos / last-pos / suffix-length (10**19 - 1 fits in a uint64)."""

_OWS: Final = " \t"


def _number(text: str) -> int:
    """The value of a 1*DIGIT token, or -1 if ``text`` is not one (or is too long).

    The caller has already checked that the whole header is ASCII, so ``str.isdigit`` only
    accepts ``0``-``9`` here (``int()`` alone would also take signs, ``_`` and whitespace).
    """
    if 0 < len(text) <= MAX_DIGITS and text.isdigit():
        return int(text)
    return -1


def parse_range(header: bytes | str | None, size: int, max_ranges: int = 16) -> RangeResult:
    """Ranges as ``(start, end_exclusive)`` within an object of ``size`` bytes.

    * ``None``: serve the full representation. The header is absent, its unit is not ``bytes``
      (case-insensitive), its syntax is invalid anywhere (e.g. ``bytes=``, ``bytes=5-2``, signs,
      non-digits, numbers over 19 digits), or it has more than ``max_ranges`` ranges. RFC 9110
      §14.2 lets a server ignore ``Range``, and an invalid one must not be partially honoured.
    * :data:`UNSATISFIABLE`: answer 416. The header is valid but no range overlaps the object
      (``first-pos >= size``, ``bytes=-0``, or any range when ``size == 0``).
    * a non-empty list: the satisfiable ranges, clipped to the object; unsatisfiable ones are
      dropped. Disjoint, non-adjacent ranges keep the client's order (RFC 9110 §15.3.7.2 asks
      parts in request order). If any two overlap or touch, all are sorted and merged, so the
      list is strictly increasing with gaps between ranges; a single range may result. This
      is the coalescing RFC 9110 permits (§14.2, §15.3.7.2) and a defense against the
      "many overlapping / tiny ranges" amplification attack (§17.15): the body we send is
      never larger than the object plus the multipart framing.

    Syntax accepted (RFC 9110 §14.1.1, list rules of §5.6.1): ``bytes=0-499``, ``bytes=500-``,
    ``bytes=-500``, ``bytes=0-0,-1``; optional whitespace (SP / HTAB) around the value, around
    ``=`` and around commas; empty list elements (``bytes=0-1,,2-3``). No whitespace is allowed
    inside a single range-spec.
    """
    if header is None:
        return None
    if size < 0:
        raise ValueError(f"negative size {size}")
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    if not text.isascii():
        return None
    unit, eq, range_set = text.partition("=")
    if not eq or unit.strip(_OWS).lower() != "bytes":
        return None

    ranges: list[tuple[int, int]] = []
    count = 0
    for element in range_set.split(","):
        spec = element.strip(_OWS)
        if not spec:
            continue  # empty list elements are allowed (RFC 9110 §5.6.1.2)
        count += 1
        if count > max_ranges:
            return None
        first_text, dash, last_text = spec.partition("-")
        if not dash:
            return None
        if not first_text:
            # suffix-range: the last `suffix` bytes
            suffix = _number(last_text)
            if suffix < 0:
                return None
            if suffix > 0 and size > 0:
                ranges.append((max(size - suffix, 0), size))
            continue
        first = _number(first_text)
        if first < 0:
            return None
        if last_text:
            last = _number(last_text)
            if last < first:  # also catches last == -1 (invalid number)
                return None
            end = min(last + 1, size)
        else:
            end = size
        if first < size:
            ranges.append((first, end))

    if count == 0:
        return None  # "bytes=" or only empty elements: 1#range-spec needs one
    if not ranges:
        return UNSATISFIABLE
    if len(ranges) == 1:
        return ranges

    ordered = sorted(ranges)
    if all(a[1] < b[0] for a, b in zip(ordered, ordered[1:], strict=False)):
        # Disjoint and not adjacent: keep the client's order (RFC 9110 §15.3.7.2 SHOULD).
        return ranges
    merged = [ordered[0]]
    for start, end in ordered[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:  # overlapping or adjacent
            if end > last_end:
                merged[-1] = (last_start, end)
        else:
            merged.append((start, end))
    return merged


def content_range(start: int, end: int, size: int) -> bytes:
    """``Content-Range`` value for ``[start, end)`` of ``size`` bytes: ``b"bytes 0-499/1234"``."""
    if not 0 <= start < end <= size:
        raise ValueError(f"bad range [{start}, {end}) for size {size}")
    return b"bytes %d-%d/%d" % (start, end - 1, size)


def unsatisfied_range(size: int) -> bytes:
    """``Content-Range`` value for a 416 response: ``b"bytes */1234"``."""
    if size < 0:
        raise ValueError(f"negative size {size}")
    return b"bytes */%d" % size


_BCHARS: Final = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
)


def multipart_plan(
    ranges: list[tuple[int, int]],
    size: int,
    content_type: bytes | None,
    boundary: bytes,
) -> tuple[list[tuple[bytes, int, int]], bytes, int]:
    """Plan a ``multipart/byteranges`` body (RFC 9110 §14.6).

    Returns ``([(part_head, start, end_exclusive), ...], closing, total_length)``. The body is
    each ``part_head`` followed by the object's bytes ``[start, end)``, then ``closing``;
    ``total_length`` is its exact length, for ``Content-Length``.

    Every part head, the first included, is
    ``b"\\r\\n--" + boundary + b"\\r\\n" [+ b"Content-Type: " + content_type + b"\\r\\n"]
    + b"Content-Range: bytes a-b/size\\r\\n\\r\\n"``. The body therefore starts with a CRLF
    (an empty preamble, allowed by RFC 2046 §5.1.1), as nginx and Apache do; this keeps all heads
    uniform, since each CRLF belongs to the delimiter that follows it. ``closing`` is
    ``b"\\r\\n--" + boundary + b"--\\r\\n"``. The response's own header is
    ``Content-Type: multipart/byteranges; boundary=<boundary>``.
    """
    if not ranges:
        raise ValueError("multipart_plan needs at least one range")
    if not 0 < len(boundary) <= 70 or boundary[-1:] == b" " or not _BCHARS.issuperset(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    if content_type is not None and (b"\r" in content_type or b"\n" in content_type):
        raise ValueError(f"invalid content type {content_type!r}")

    delimiter = b"\r\n--" + boundary + b"\r\n"
    if content_type is not None:
        delimiter += b"Content-Type: " + content_type + b"\r\n"
    parts: list[tuple[bytes, int, int]] = []
    total = 0
    for start, end in ranges:
        head = delimiter + b"Content-Range: " + content_range(start, end, size) + b"\r\n\r\n"
        parts.append((head, start, end))
        total += len(head) + end - start
    closing = b"\r\n--" + boundary + b"--\r\n"
    return parts, closing, total + len(closing)


def new_boundary() -> bytes:
    """A fresh random boundary: 20 hex digits (80 bits from ``os.urandom``).

    Byte-range parts carry arbitrary object data, so the boundary must be unpredictable rather
    than checked against the content; 80 random bits make an accidental (or attacker-planted)
    match in a cached object negligible.
    """
    return os.urandom(10).hex().encode("ascii")
