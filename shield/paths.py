"""Request targets to object keys, refusing every path that could leave the origin's root.

A shield maps ``/v/abc/seg_00001.m4s`` to a file under a directory or a key under an S3
prefix. Both are reachable by anyone who can send a request to an edge, so the mapping is the
security boundary of the origin store and is written as an allow-list of shapes rather than a
clean-up: the target is percent-decoded exactly once (what a client encoded twice stays
literal: ``%252e`` is the file name ``%2e``, never a dot), then every segment must be a plain
name. Nothing is normalised away: a ``..`` or ``.`` segment, an empty segment, a backslash, a
NUL or other control byte, or a drive letter is an error (400), because a request that needs
normalising is either a bug or an attack and serving it would make two URLs name one object
(two cache entries, one purge missing the other).

The filesystem origin adds its own check after this one (the real path of the opened file
must be under the real root), since symlinks inside the root can still point outside.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from reelcdn.edge.fetch.contract import FetchFailed

__all__ = ["OriginRefused", "join_key", "resolve_key"]

# A Windows drive ("C:", "c:foo"): meaningless on POSIX, an absolute path on Windows.
_DRIVE = re.compile(r"[A-Za-z]:")
# C0 controls and DEL: no object key needs them; NUL truncates paths in C APIs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class OriginRefused(FetchFailed):
    """A request target the origin refuses to map to a key: 400 (malformed or hostile) or
    404 (well-formed but can never name an object, e.g. ``/`` or a directory-style ``/v/``).

    A subclass of ``FetchFailed`` so callers that only know upstream failures still turn it
    into the right status; the origins themselves answer it as a response, not a failure, so
    hostile requests neither count against an origin's health nor cause failover.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)


def resolve_key(target: str) -> str:
    """The object key (no leading slash) named by an origin-form ``target``.

    The query is dropped, the path percent-decoded once as UTF-8, and then refused with
    :class:`OriginRefused` unless every ``/``-separated segment is a plain name.
    """
    path = target.split("?", 1)[0]
    if not path.startswith("/"):
        raise OriginRefused(400, "target is not an absolute path")
    raw = unquote_to_bytes(path)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OriginRefused(400, "target is not valid UTF-8 once decoded") from exc
    if "\\" in decoded:
        raise OriginRefused(400, "backslash in path")
    if _CONTROL.search(decoded):
        raise OriginRefused(400, "control character in path")
    key = decoded[1:]
    if key == "":
        raise OriginRefused(404, "the root is not an object")
    segments = key.split("/")
    directory = len(segments) > 1 and segments[-1] == ""  # "/v/abc/": checked, then 404
    for segment in segments[:-1] if directory else segments:
        if segment == "":
            raise OriginRefused(400, "empty path segment")
        if segment in (".", ".."):
            raise OriginRefused(400, "dot segment in path")
    if _DRIVE.match(segments[0]):
        raise OriginRefused(400, "drive letter in path")
    if directory:
        raise OriginRefused(404, "a directory is not an object")
    return key


def join_key(prefix: str, key: str) -> str:
    """``key`` under an object-store ``prefix`` (``"media"``, ``"media/"`` or ``""``)."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key
