"""Content-Type of an object from its name, for origins that cannot be trusted to know it.

Object stores guess badly: files have no type at all, and S3 objects uploaded without one
come back as ``binary/octet-stream``, which makes players (Safari above all) refuse an HLS
playlist. The shield therefore decides the type from the extension, the one thing every
origin agrees on, with the types the HLS and CMAF specifications name (RFC 8216 §4,
ISO/IEC 23000-19 for ``video/iso.segment``).
"""

from __future__ import annotations

import posixpath

__all__ = ["CONTENT_TYPES", "DEFAULT_CONTENT_TYPE", "content_type_bytes", "content_type_for"]

DEFAULT_CONTENT_TYPE = "application/octet-stream"

CONTENT_TYPES: dict[str, str] = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".json": "application/json",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".ts": "video/mp2t",
    ".vtt": "text/vtt",
    ".txt": "text/plain; charset=utf-8",
}

_ENCODED: dict[str, bytes] = {ext: value.encode("ascii") for ext, value in CONTENT_TYPES.items()}
_DEFAULT_ENCODED = DEFAULT_CONTENT_TYPE.encode("ascii")


def content_type_for(key: str) -> str:
    """The Content-Type for an object key or path (extension matched case-insensitively)."""
    return CONTENT_TYPES.get(_extension(key), DEFAULT_CONTENT_TYPE)


def content_type_bytes(key: str) -> bytes:
    """:func:`content_type_for` as header bytes, prebuilt: it is on every response."""
    return _ENCODED.get(_extension(key), _DEFAULT_ENCODED)


def _extension(key: str) -> str:
    # Only the last segment counts: "/v/a.b/c" has no extension.
    return posixpath.splitext(key.rsplit("/", 1)[-1])[1].lower()
