"""Just enough HLS (RFC 8216) parsing for a player: variants of a master, segments of a media
playlist. No dependency on a playlist library because the harness must parse thousands of
playlists per second and only needs a handful of tags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin

_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


class PlaylistError(ValueError):
    """The text is not a playlist a player could use."""


@dataclass(frozen=True, slots=True)
class Variant:
    uri: str            # absolute
    bandwidth: int      # bit/s (BANDWIDTH)
    resolution: str = ""


@dataclass(frozen=True, slots=True)
class MediaSegment:
    uri: str            # absolute
    duration: float     # seconds (EXTINF)


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    init_uri: str | None
    segments: tuple[MediaSegment, ...]


def attributes(text: str) -> dict[str, str]:
    """``A=1,B="x,y"`` → {"A": "1", "B": "x,y"}."""
    return {k: v.strip('"') for k, v in _ATTRIBUTE.findall(text)}


def _lines(text: str, what: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError(f"{what}: does not start with #EXTM3U")
    return lines


def parse_master(text: str, base_url: str) -> list[Variant]:
    """Variants sorted by bandwidth, lowest first (the order ABR logic wants)."""
    variants = []
    pending: dict[str, str] | None = None
    for line in _lines(text, "master playlist"):
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = attributes(line.split(":", 1)[1])
        elif not line.startswith("#") and pending is not None:
            try:
                bandwidth = int(pending.get("BANDWIDTH", ""))
            except ValueError:
                raise PlaylistError(f"master playlist: variant {line} has no BANDWIDTH") from None
            variants.append(Variant(urljoin(base_url, line), bandwidth,
                                    pending.get("RESOLUTION", "")))
            pending = None
    if not variants:
        raise PlaylistError("master playlist: no variant (#EXT-X-STREAM-INF)")
    return sorted(variants, key=lambda v: v.bandwidth)


def parse_media(text: str, base_url: str) -> MediaPlaylist:
    init = None
    segments = []
    duration: float | None = None
    for line in _lines(text, "media playlist"):
        if line.startswith("#EXT-X-MAP:"):
            uri = attributes(line.split(":", 1)[1]).get("URI")
            init = urljoin(base_url, uri) if uri else None
        elif line.startswith("#EXTINF:"):
            try:
                duration = float(line[len("#EXTINF:"):].split(",", 1)[0])
            except ValueError:
                raise PlaylistError(f"media playlist: bad {line}") from None
        elif not line.startswith("#"):
            if duration is None:
                raise PlaylistError(f"media playlist: segment {line} has no #EXTINF")
            segments.append(MediaSegment(urljoin(base_url, line), duration))
            duration = None
    if not segments:
        raise PlaylistError("media playlist: no segment")
    return MediaPlaylist(init, tuple(segments))
