"""Playlist text building: number formats, quoting, and templates with URI slots.

A rendered playlist differs between viewers only by the carried query (a token) appended to
each URI. Rendering once into a :class:`Template` with a marker at the end of every URI, and
filling the markers per request, lets the edge cache one rendering per (meta version, options)
and still give every viewer playlists carrying their own token, at the cost of a string
``replace`` per request.
"""

from __future__ import annotations

import dataclasses
import math
import re
from decimal import Decimal

from reelcdn.manifests.errors import OptionError

__all__ = ["Template", "byterange", "duration", "quoted", "rounded", "uri_slot"]

_SLOT_Q = "\x00"
"""End of a URI without a query: the carried query is joined with ``?``."""
_SLOT_AMP = "\x01"
"""End of a URI that already has a query: joined with ``&``."""

CARRIED_QUERY = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
"""An already-encoded query (RFC 3986 §3.4: pchar / "/" / "?"). Excludes the quote, space and
``#`` among others, so it can neither end a quoted attribute nor change the URI's meaning."""

_UNSAFE_IN_URI = re.compile(r'[\s"#\\\x00-\x1f\x7f-\x9f]')


def check_carried_query(query: str, parameter: str = "carried_query") -> None:
    """Raise OptionError unless *query* can be appended to URIs inside a playlist as is."""
    if not isinstance(query, str):
        raise OptionError(parameter, "must be a string", query)
    if query.startswith(("?", "&")):
        raise OptionError(parameter, "must not start with '?' or '&'", query)
    if not CARRIED_QUERY.fullmatch(query):
        raise OptionError(parameter, "must be an encoded query string "
                          "(letters, digits, -._~!$&'()*+,;=:@/? and %XX)", query)


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    """A rendered playlist whose URIs end in slots; :meth:`fill` appends the carried query."""

    text: str

    def fill(self, carried_query: str = "") -> str:
        """The playlist with *carried_query* appended to every URI (nothing when empty)."""
        if not carried_query:
            return self.text.replace(_SLOT_Q, "").replace(_SLOT_AMP, "")
        check_carried_query(carried_query)
        return self.text.replace(_SLOT_Q, "?" + carried_query).replace(
            _SLOT_AMP, "&" + carried_query)


def uri_slot(uri: str) -> str:
    """*uri* followed by the slot that joins a query to it correctly."""
    if _UNSAFE_IN_URI.search(uri):  # meta.py and options validate; this guards the output
        raise ValueError(f"URI cannot go into a playlist: {uri!r}")
    return uri + (_SLOT_AMP if "?" in uri else _SLOT_Q)


def quoted(value: str) -> str:
    """An HLS quoted-string (RFC 8216 §4.2): no escaping exists, so bad input is an error."""
    if '"' in value or "\r" in value or "\n" in value:
        raise ValueError(f"cannot be an HLS quoted-string: {value!r}")
    return f'"{value}"'


def duration(seconds: float) -> str:
    """An EXTINF duration: six decimals (as ffmpeg writes them), never rounded down to 0."""
    text = f"{seconds:.6f}"
    if float(text) == 0.0 and seconds > 0:
        text = format(Decimal(repr(seconds)), "f")
    return text


def rounded(text: str) -> int:
    """A written EXTINF value rounded to the nearest integer, halves up.

    RFC 8216 §4.3.3.1 (and rfc8216bis, which replaced "ceiling" by "rounded"): every EXTINF,
    rounded to the nearest integer, must be <= EXT-X-TARGETDURATION. Rounding the value *as
    written* (not the float it came from) is what a player sees; halves go up so the target
    holds under either tie-breaking rule a player might apply.
    """
    return math.floor(Decimal(text) + Decimal("0.5"))


def byterange(length: int, offset: int | None) -> str:
    """``<n>[@<o>]`` (RFC 8216 §4.3.2.2)."""
    return f"{length}" if offset is None else f"{length}@{offset}"
