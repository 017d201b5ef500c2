"""The tus 1.0.0 resumable upload protocol, without I/O.

Like h11, this module knows the protocol and nothing of sockets, files or clocks: each
function takes a request's headers (a case-insensitive mapping, e.g. aiohttp's
``CIMultiDictProxy``) and what the caller knows of the upload, and returns a verdict (what to
do) or raises ``TusError`` (the status, an error code, a reason and the headers to send).
``origin/api.py`` does the I/O; ``origin/uploads.py`` keeps the state.

What is implemented: the core protocol (HEAD, PATCH, OPTIONS, ``Tus-Resumable`` version
checks) and the extensions ``creation``, ``creation-with-upload``, ``checksum`` (sha1, md5,
crc32), ``termination`` and ``expiration``. Not implemented: ``creation-defer-length``,
``concatenation``, ``checksum-trailer``.

Statuses (tus 1.0.0 protocol text): 412 for a ``Tus-Resumable`` other than 1.0.0 (with
``Tus-Version``); 415 for a PATCH whose Content-Type is not application/offset+octet-stream;
409 for an ``Upload-Offset`` other than the upload's; 413 for an ``Upload-Length`` above
``Tus-Max-Size`` and for a body that would pass the upload's length; 400 for missing or
malformed headers and an unsupported checksum algorithm; 460 for a checksum mismatch; 404 for
an unknown upload, 410 for an expired or terminated one.

``crc32`` digests are the 4 bytes of the CRC-32 (zlib's) in big-endian order, base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate

TUS_VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "checksum", "termination", "expiration")
CHECKSUM_ALGORITHMS = ("sha1", "md5", "crc32")
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
STATUS_CHECKSUM_MISMATCH = 460

#: Request headers a browser client sends (CORS ``Access-Control-Allow-Headers``).
REQUEST_HEADERS = (
    "Authorization", "Content-Type", "Tus-Resumable", "Upload-Length", "Upload-Offset",
    "Upload-Metadata", "Upload-Checksum", "Upload-Defer-Length", "Upload-Concat",
    "X-HTTP-Method-Override", "X-Requested-With",
)
#: Response headers a browser client must be able to read (``Access-Control-Expose-Headers``).
RESPONSE_HEADERS = (
    "Location", "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires",
    "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm",
    "Retry-After",
)

_DIGITS = re.compile(r"[0-9]{1,19}")
_METADATA_KEY = re.compile(r"[!-+\--~]+")  # visible ASCII without space and comma
MAX_METADATA_HEADER = 8 * 1024


class TusError(Exception):
    """A request the protocol refuses: ``status``, an error ``code`` (for the JSON body), a
    ``reason`` for people, and ``headers`` to add to the answer."""

    def __init__(self, status: int, code: str, reason: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Limits:
    max_size: int  # Tus-Max-Size, bytes


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes

    def header(self) -> str:
        return f"{self.algorithm} {base64.b64encode(self.digest).decode('ascii')}"


@dataclass(frozen=True)
class Creation:
    """A POST's verdict: create an upload of ``length`` bytes with ``metadata``; when
    ``has_body`` the request also carries its first bytes (creation-with-upload), to be handled
    as a PATCH at offset 0 (``body_length`` from Content-Length, ``None`` when chunked)."""

    length: int
    metadata: dict[str, str]
    has_body: bool
    body_length: int | None
    checksum: Checksum | None


@dataclass(frozen=True)
class Patch:
    """A PATCH's verdict: append the body at ``offset``; ``body_length`` from Content-Length
    (``None`` when chunked; then the body must be watched with ``check_room``)."""

    offset: int
    body_length: int | None
    checksum: Checksum | None


@dataclass
class UploadView:
    """What the protocol needs of an upload: its state is ``uploading`` or ``uploaded`` (both
    answer), ``expired`` or ``terminated`` (both answer 410)."""

    length: int
    offset: int
    state: str
    expires: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


# -- common ------------------------------------------------------------------------------------

def check_version(method: str, headers: Mapping[str, str]) -> None:
    """Every request but OPTIONS carries ``Tus-Resumable: 1.0.0``; another version → 412 (with
    ``Tus-Version``), none → 412 too (the request cannot be a tus 1.0 request)."""
    if method == "OPTIONS":
        return
    version = headers.get("Tus-Resumable")
    if version is None:
        raise TusError(412, "tus_version_missing", "Tus-Resumable: 1.0.0 is required",
                       {"Tus-Version": TUS_VERSION})
    if version.strip() != TUS_VERSION:
        raise TusError(412, "tus_version_unsupported",
                       f"Tus-Resumable {version.strip()!r} is not supported (1.0.0 is)",
                       {"Tus-Version": TUS_VERSION})


def http_date(timestamp: float) -> str:
    """RFC 9110 IMF-fixdate, as ``Upload-Expires`` wants."""
    return formatdate(timestamp, usegmt=True)


def options_headers(limits: Limits) -> dict[str, str]:
    """The headers of a 204 answer to OPTIONS (capabilities)."""
    return {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(limits.max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }


def _non_negative(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not _DIGITS.fullmatch(value):
        raise TusError(400, "bad_header", f"{name} must be a non-negative integer")
    return int(value)


def _content_length(headers: Mapping[str, str]) -> int | None:
    return _non_negative(headers, "Content-Length")


def _is_offset_stream(headers: Mapping[str, str]) -> bool:
    content_type = headers.get("Content-Type", "")
    return content_type.split(";", 1)[0].strip().lower() == OFFSET_OCTET_STREAM


def check_available(upload: UploadView | None, expired: bool = False) -> UploadView:
    """404 for no upload; 410 for one expired (or past its expiry: ``expired``) or
    terminated."""
    if upload is None:
        raise TusError(404, "upload_not_found", "no such upload")
    if upload.state == "expired" or expired:
        raise TusError(410, "upload_expired", "the upload expired; start a new one")
    if upload.state == "terminated":
        raise TusError(410, "upload_terminated", "the upload was terminated")
    return upload


def upload_headers(upload: UploadView) -> dict[str, str]:
    """The headers of a HEAD answer, and the offset part of PATCH and POST answers."""
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Upload-Offset": str(upload.offset),
        "Upload-Length": str(upload.length),
        "Cache-Control": "no-store",
    }
    if upload.expires is not None and upload.offset < upload.length:
        headers["Upload-Expires"] = http_date(upload.expires)
    return headers


# -- metadata ----------------------------------------------------------------------------------

def parse_metadata(value: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (the value may be left
    out); keys unique, without spaces or commas; values must be UTF-8 here (video titles and
    captions). Anything else → 400."""
    if value is None or not value.strip():
        return {}
    if len(value) > MAX_METADATA_HEADER:
        raise TusError(400, "bad_metadata", "Upload-Metadata is too long")
    result: dict[str, str] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0]:
            raise TusError(400, "bad_metadata", "Upload-Metadata pairs are 'key base64value'")
        key = parts[0]
        if not _METADATA_KEY.fullmatch(key):
            raise TusError(400, "bad_metadata", f"metadata key {key!r} is not plain ASCII")
        if key in result:
            raise TusError(400, "bad_metadata", f"metadata key {key!r} appears twice")
        raw = parts[1] if len(parts) == 2 else ""
        try:
            result[key] = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise TusError(400, "bad_metadata",
                           f"metadata {key!r} is not base64 of UTF-8 text") from None
    return result


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode('ascii')}" if value else key
        for key, value in metadata.items()
    )


# -- checksums ---------------------------------------------------------------------------------

def parse_checksum(headers: Mapping[str, str]) -> Checksum | None:
    """``Upload-Checksum: ALGORITHM BASE64``; an unsupported algorithm or a malformed value →
    400."""
    value = headers.get("Upload-Checksum")
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2:
        raise TusError(400, "bad_checksum", "Upload-Checksum is 'algorithm base64digest'")
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise TusError(400, "checksum_algorithm_unsupported",
                       f"checksum algorithm {parts[0]!r} is not supported "
                       f"({', '.join(CHECKSUM_ALGORITHMS)} are)")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise TusError(400, "bad_checksum", "the Upload-Checksum digest is not base64") from None
    if len(digest) != {"sha1": 20, "md5": 16, "crc32": 4}[algorithm]:
        raise TusError(400, "bad_checksum", f"a {algorithm} digest has another length")
    return Checksum(algorithm, digest)


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def hasher(algorithm: str):  # noqa: ANN201 - a hashlib-like object: update(), digest()
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.new(algorithm, usedforsecurity=False)


def check_checksum(expected: Checksum, actual: bytes) -> None:
    """460 when a body's digest is not the one announced."""
    if expected.digest != actual:
        raise TusError(STATUS_CHECKSUM_MISMATCH, "checksum_mismatch",
                       f"the body's {expected.algorithm} is not the Upload-Checksum; "
                       "nothing of it was kept")


# -- requests ----------------------------------------------------------------------------------

def creation_verdict(headers: Mapping[str, str], limits: Limits) -> Creation:
    """A POST (creation, creation-with-upload)."""
    length = _non_negative(headers, "Upload-Length")
    if length is None:
        if headers.get("Upload-Defer-Length") is not None:
            raise TusError(400, "defer_length_unsupported",
                           "Upload-Defer-Length is not supported: send Upload-Length")
        raise TusError(400, "upload_length_missing", "Upload-Length is required")
    if headers.get("Upload-Concat") is not None:
        raise TusError(400, "concatenation_unsupported", "Upload-Concat is not supported")
    if length > limits.max_size:
        raise TusError(413, "upload_too_large",
                       f"Upload-Length {length} is above Tus-Max-Size {limits.max_size}",
                       {"Tus-Max-Size": str(limits.max_size)})
    metadata = parse_metadata(headers.get("Upload-Metadata"))
    body_length = _content_length(headers)
    chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
    has_body = bool(body_length) or chunked
    if has_body and not _is_offset_stream(headers):
        raise TusError(415, "bad_content_type",
                       f"a creation request with a body needs Content-Type: {OFFSET_OCTET_STREAM}")
    checksum = parse_checksum(headers) if has_body else None
    if has_body and body_length is not None and body_length > length:
        raise TusError(413, "body_too_large",
                       f"the body ({body_length} bytes) is longer than Upload-Length {length}")
    return Creation(length, metadata, has_body, body_length if has_body else None, checksum)


def patch_verdict(headers: Mapping[str, str], upload: UploadView) -> Patch:
    """A PATCH against an available upload (``check_available`` first)."""
    if not _is_offset_stream(headers):
        raise TusError(415, "bad_content_type", f"PATCH needs Content-Type: {OFFSET_OCTET_STREAM}")
    offset = _non_negative(headers, "Upload-Offset")
    if offset is None:
        raise TusError(400, "upload_offset_missing", "Upload-Offset is required")
    checksum = parse_checksum(headers)
    if offset != upload.offset:
        raise TusError(409, "offset_mismatch",
                       f"Upload-Offset {offset} is not the upload's offset {upload.offset}",
                       upload_headers(upload))
    body_length = _content_length(headers)
    if body_length is not None and offset + body_length > upload.length:
        raise TusError(413, "body_too_large",
                       f"{body_length} bytes at offset {offset} pass Upload-Length "
                       f"{upload.length}")
    return Patch(offset, body_length, checksum)


def check_room(offset: int, received: int, length: int) -> None:
    """While reading a body: 413 once it passes the upload's length."""
    if offset + received > length:
        raise TusError(413, "body_too_large", f"the body passes Upload-Length {length}")
