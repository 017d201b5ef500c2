"""Per-file response headers for the filesystem origin, in the spirit of Apache's mod_cern_meta.

A file carries no headers, yet its publisher knows some the cache tiers need: above all how
long it stays fresh (``meta.json`` is ``max-age=2`` while a video is processing and
``max-age=86400`` once it is ready). So beside ``{dir}/{name}`` a publisher may write a
*sidecar*, ``{dir}/.headers/{name}``, and the shield's ``fs`` origin sends its fields with the
file. The format is header lines, ASCII, each ending in LF::

    Cache-Control: max-age=2
    Content-Type: application/json

Only the fields of :data:`ALLOWED` may appear (names case-insensitive, each at most once),
values are 1 to :data:`MAX_VALUE` visible ASCII characters, spaces or tabs (no CR, LF, NUL or
other control byte, so a value can never end a header line early), and the whole file is at
most :data:`MAX_BYTES`. Anything else makes the whole sidecar malformed (:class:`ValueError`):
the fs origin then serves the file without it and logs why, and a publisher never writes one
(:func:`render` checks as :func:`parse` does).

The hidden directory keeps sidecars out of the way of anything listing a video's files, and
the fs origin refuses every dot-leading path segment, so a sidecar is never served itself.
The writer (atomic, and in which order beside its object) is
:func:`reelcdn.origin.storage.write_sidecar`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = ["ALLOWED", "HEADERS_DIR", "MAX_BYTES", "MAX_VALUE", "parse", "render", "sidecar_path"]

HEADERS_DIR = ".headers"
"""The hidden directory, beside the objects it describes, that holds their sidecars."""
ALLOWED: dict[str, str] = {
    "cache-control": "Cache-Control",
    "content-type": "Content-Type",
    "content-disposition": "Content-Disposition",
}
"""The fields a sidecar may set (lower-case name → the spelling sent)."""
MAX_VALUE = 1024
MAX_BYTES = 4096

_VALUE = re.compile(r"[\x20-\x7e\t]+")


def sidecar_path(path: str | os.PathLike[str]) -> str:
    """Where the sidecar of the file at *path* lives: ``{dir}/.headers/{name}``."""
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, HEADERS_DIR, name)


def _field(name: str, value: str) -> tuple[str, str]:
    """``(canonical name, value)`` if both are acceptable, else ValueError."""
    canonical = ALLOWED.get(name.lower())
    if canonical is None:
        raise ValueError(f"field {name!r} is not one of {', '.join(ALLOWED.values())}")
    if len(value) > MAX_VALUE:
        raise ValueError(f"{canonical}: value longer than {MAX_VALUE} characters")
    if not _VALUE.fullmatch(value) or value != value.strip(" \t"):
        raise ValueError(f"{canonical}: empty value, control character, non-ASCII character"
                         " or surrounding whitespace")
    return canonical, value


def parse(data: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of a sidecar's bytes, in file order; ValueError when malformed."""
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not ASCII") from None
    if text and not text.endswith("\n"):
        raise ValueError("the last line does not end with a line feed")
    fields: list[tuple[bytes, bytes]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.split("\n")[:-1], 1):
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"line {number}: not 'Name: value'")
        canonical, value = _field(name, value.strip(" \t"))
        if canonical in seen:
            raise ValueError(f"line {number}: {canonical} given twice")
        seen.add(canonical)
        fields.append((canonical.encode("ascii"), value.encode("ascii")))
    return fields


def render(fields: Mapping[str, str]) -> bytes:
    """A sidecar's bytes for *fields*, checked as :func:`parse` checks them (ValueError)."""
    lines = []
    seen: set[str] = set()
    for name, value in fields.items():
        canonical, value = _field(name, value)
        if canonical in seen:
            raise ValueError(f"{canonical} given twice")
        seen.add(canonical)
        lines.append(f"{canonical}: {value}\n")
    data = "".join(lines).encode("ascii")
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    return data
