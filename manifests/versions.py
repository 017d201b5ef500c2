"""The minimum ``EXT-X-VERSION`` each playlist feature needs, as data.

Source: RFC 8216 §7 "Protocol Version Compatibility" (the same section of
draft-pantos-hls-rfc8216bis only adds features this library does not emit: EXT-X-DEFINE,
EXT-X-SKIP, REQ- attributes, ...). A playlist must declare at least the highest
version any of its features needs, and declaring more than needed shuts out older clients for
nothing, so the renderer records every feature it writes and declares exactly the maximum.

Every feature the renderer can write is listed, including the ones version 1 already allows,
so that a new tag added to the renderer without a line here fails loudly (KeyError) instead of
silently declaring a too-low version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

__all__ = ["MIN_VERSION", "required_version"]

MIN_VERSION: Mapping[str, int] = MappingProxyType({
    # --- RFC 8216 §7: "MUST indicate an EXT-X-VERSION of N or higher if it contains" ---
    "EXTINF:<float>": 3,             # floating-point EXTINF duration values
    "EXT-X-BYTERANGE": 4,
    "EXT-X-I-FRAMES-ONLY": 4,
    "EXT-X-MAP:I-FRAMES-ONLY": 5,    # EXT-X-MAP in a playlist that has EXT-X-I-FRAMES-ONLY
    "EXT-X-MAP": 6,                  # EXT-X-MAP in a Media Playlist without EXT-X-I-FRAMES-ONLY
    # --- version 1 suffices (nothing in §7 raises them) ---
    "EXTINF:<integer>": 1,
    "EXT-X-TARGETDURATION": 1,
    "EXT-X-MEDIA-SEQUENCE": 1,
    "EXT-X-PLAYLIST-TYPE": 1,
    "EXT-X-ENDLIST": 1,
    "EXT-X-INDEPENDENT-SEGMENTS": 1,
    "EXT-X-STREAM-INF": 1,           # BANDWIDTH, AVERAGE-BANDWIDTH, CODECS, RESOLUTION, FRAME-RATE
    "EXT-X-I-FRAME-STREAM-INF": 1,   # the I-frame *playlist* needs 4, the master entry does not
    # §7: "The EXT-X-MEDIA tag and the AUDIO ... attribute of the EXT-X-STREAM-INF tag are
    # backward compatible to protocol version 1"; a server MAY declare 4 but need not.
    "EXT-X-MEDIA": 1,
    "EXT-X-STREAM-INF:AUDIO": 1,
    # rfc8216bis §4.4.6.6 (EXT-X-CONTENT-STEERING) and PATHWAY-ID raise no version.
    "EXT-X-CONTENT-STEERING": 1,
    "PATHWAY-ID": 1,
})


def required_version(features: Iterable[str]) -> int:
    """The lowest EXT-X-VERSION allowing every feature in *features* (1 when none)."""
    return max((MIN_VERSION[f] for f in features), default=1)
