"""The request path in its one canonical form: what the cache key, the fill and the origin see.

Why here, beside the request readers (``_reader_py.py`` and its compiled twin, which call
:func:`canonical_path` and :func:`valid_host`): a path is decided once, when the request is read,
so every later step (the cache key, purge, TTL rules, the fill toward a parent, a pass, an ``http``
origin with a path prefix) works on the same string and none can be fooled by a spelling the
others read differently. The canonical form (RFC 3986 §6.2.2, plus what origins do):

* percent-encoding canonical: unreserved characters decoded (``%7E`` → ``~``, ``%2E`` → ``.``),
  hex digits upper-cased, every other escape kept;
* ``%2F`` decoded to ``/``: an encoded slash must not make a second key for one object (S3,
  a file system and nginx all treat the object ``/v/x/meta.json`` as one name);
* ``.`` segments removed and ``//`` merged (nginx's ``merge_slashes``);
* a ``..`` segment, in any spelling, is refused: it could only walk out of a prefix the
  operator configured (``url = "http://origin/media"``), never name a video.

A path is ``str`` (ASCII, checked by the reader). The fast test :func:`is_canonical` costs
three substring searches, so the HIT path of a plain path pays nothing more.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")


# RFC 9110 §7.2 / RFC 3986 §3.2.2: uri-host [ ":" port ], where uri-host is an IP-literal in
# brackets or a (possibly empty, but not here) reg-name. No "/", "?", "#", "@", space or
# control character: the host may join the cache key, and a key's path starts at its first "/".
_HOST_FIELD = re.compile(rb"(?:\[[0-9A-Fa-f:.vV]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]*)?")
valid_host = _HOST_FIELD.fullmatch  # valid_host(value) is truthy for an acceptable Host field


class BadPath(ValueError):
    """A request path that cannot be made canonical; its text is the 400's reason."""


def _canonical_escape(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    if byte in _UNRESERVED or byte == 0x2F:  # 0x2F: "/", see the module docstring
        return chr(byte)
    return "%" + match.group(1).upper()


def canonical_escapes(text: str) -> str:
    """``text`` with unreserved characters decoded and other escapes upper-cased (no ``%2F``
    decoding: for query components, where ``/`` and ``%2F`` may differ)."""
    if "%" not in text:
        return text
    return _PCT.sub(
        lambda m: chr(b) if (b := int(m.group(1), 16)) in _UNRESERVED else "%" + m.group(1).upper(),
        text,
    )


def is_canonical(path: str) -> bool:
    """True when :func:`canonical_path` would return ``path`` unchanged (a quick, sufficient
    test: no escape, no dot segment candidate, no empty segment)."""
    return "%" not in path and "/." not in path and "//" not in path


def canonical_path(path: str) -> str:
    """The canonical form of an origin-form path (starting with ``/``); :class:`BadPath` for
    a ``..`` segment or a malformed escape."""
    if is_canonical(path):
        return path
    if "%" in path:
        if _BAD_PCT.search(path):
            raise BadPath("malformed percent-encoding in the path")
        path = _PCT.sub(_canonical_escape, path)
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments[1:-1]:
        if segment == "..":
            raise BadPath("a '..' segment in the path")
        if segment and segment != ".":
            kept.append(segment)
    last = segments[-1] if len(segments) > 1 else ""
    if last == "..":
        raise BadPath("a '..' segment in the path")
    trailing = "" if last == "." else last
    return "/" + "/".join(kept) + ("/" if kept else "") + trailing


def is_canonical_target(target: str) -> bool:
    """Whether an origin-form target's path is canonical: what an upstream connector checks
    before it puts the path after a configured prefix (``http://origin/media`` + path), so no
    spelling of ``..`` can reach an origin that resolves dots."""
    if not target.startswith("/"):
        return False
    path = target.split("?", 1)[0]
    if is_canonical(path):
        return True
    try:
        return canonical_path(path) == path
    except BadPath:
        return False
