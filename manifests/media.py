"""Media playlists (one rendition's segments) and I-frame playlists (its I-frames).

A ``ready`` video gets a VOD playlist with EXT-X-ENDLIST: complete and immutable, cacheable for
long. A ``processing`` one gets an EVENT playlist listing only the segments already in
meta.json (the transcoder adds a segment there once it is written and validated), without
EXT-X-ENDLIST, so players reload it and playback starts before transcoding ends. It carries
``EXT-X-START:TIME-OFFSET=0``: a player treats a playlist without ENDLIST as live and would
otherwise start near its end (hls.js: three target durations back), skipping the beginning
of a video someone just uploaded.

Byte ranges are written with an explicit offset except when a segment continues the previous
one in the same file (RFC 8216 §4.3.2.2 allows omitting it then, and requires it otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from reelcdn.manifests.errors import NotReady, UnknownRendition
from reelcdn.manifests.meta import (
    AudioRendition,
    IFrame,
    InitSection,
    Rendition,
    Segment,
    VideoMeta,
)
from reelcdn.manifests.text import Template, byterange, duration, quoted, rounded, uri_slot
from reelcdn.manifests.versions import required_version

__all__ = ["find_media", "iframe_template", "media_template"]


class _Entry(Protocol):
    """A Segment or an IFrame: what one EXTINF + URI (+ BYTERANGE) pair is written from."""

    @property
    def uri(self) -> str: ...

    @property
    def duration(self) -> float: ...

    @property
    def byterange(self) -> tuple[int, int] | None: ...


def find_media(meta: VideoMeta, name: str) -> Rendition | AudioRendition:
    """The video or audio rendition called *name* (they share the URL namespace)."""
    for media in (*meta.renditions, *meta.audio):
        if media.name == name:
            return media
    raise UnknownRendition(f"{meta.video_id}: no rendition {name!r}")


def _map_line(init: InitSection) -> str:
    attrs = f"URI={quoted(uri_slot(init.uri))}"
    if init.byterange is not None:
        offset, length = init.byterange
        attrs += f",BYTERANGE={quoted(byterange(length, offset))}"
    return "#EXT-X-MAP:" + attrs


def _playlist(meta: VideoMeta, init: InitSection, entries: Sequence[_Entry], *,
              independent: bool, iframes_only: bool) -> Template:
    """The shared skeleton of media and I-frame playlists."""
    features = {"EXT-X-TARGETDURATION", "EXT-X-MEDIA-SEQUENCE", "EXT-X-PLAYLIST-TYPE"}
    features.add("EXT-X-MAP:I-FRAMES-ONLY" if iframes_only else "EXT-X-MAP")
    body = [_map_line(init)]
    target = 1  # a 0 target duration would make players reload continuously
    previous: tuple[str, int] | None = None  # (uri, end offset) of the last byte range
    for entry in entries:
        extinf = duration(entry.duration)
        features.add("EXTINF:<float>" if "." in extinf else "EXTINF:<integer>")
        target = max(target, rounded(extinf))
        body.append(f"#EXTINF:{extinf},")
        if entry.byterange is not None:
            features.add("EXT-X-BYTERANGE")
            offset, length = entry.byterange
            contiguous = previous == (entry.uri, offset)
            body.append(f"#EXT-X-BYTERANGE:{byterange(length, None if contiguous else offset)}")
            previous = (entry.uri, offset + length)
        else:
            previous = None
        body.append(uri_slot(entry.uri))
    head = ["#EXTM3U", "", f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-MEDIA-SEQUENCE:0",
            f"#EXT-X-PLAYLIST-TYPE:{'VOD' if meta.ready else 'EVENT'}"]
    if not meta.ready:
        head.append("#EXT-X-START:TIME-OFFSET=0")  # (any version may carry it)
    if iframes_only:
        features.add("EXT-X-I-FRAMES-ONLY")
        head.append("#EXT-X-I-FRAMES-ONLY")
    elif independent:
        features.add("EXT-X-INDEPENDENT-SEGMENTS")
        head.append("#EXT-X-INDEPENDENT-SEGMENTS")
    if meta.ready:
        features.add("EXT-X-ENDLIST")
        body.append("#EXT-X-ENDLIST")
    head[1] = f"#EXT-X-VERSION:{required_version(features)}"
    return Template("\n".join(head + body) + "\n")


def media_template(meta: VideoMeta, name: str) -> Template:
    """The media playlist of rendition (or audio rendition) *name*, with URI slots.

    Raises UnknownRendition for a name not in *meta*, NotReady for a rendition with no
    segment yet (an EVENT playlist must start with a target duration it can keep).
    """
    media = find_media(meta, name)
    segments: Sequence[Segment] = media.segments
    if not segments:
        raise NotReady(f"{meta.video_id}: rendition {name!r} has no segments yet")
    return _playlist(meta, media.init, segments,
                     independent=all(s.independent for s in segments), iframes_only=False)


def iframe_template(meta: VideoMeta, name: str) -> Template:
    """The I-frame playlist (EXT-X-I-FRAMES-ONLY) of video rendition *name*.

    Raises UnknownRendition when there is no such rendition or it has no I-frame data.
    """
    media = find_media(meta, name)
    frames: Sequence[IFrame] = media.iframes if isinstance(media, Rendition) else ()
    if not frames:
        raise UnknownRendition(f"{meta.video_id}: rendition {name!r} has no I-frame data")
    return _playlist(meta, media.init, frames, independent=True, iframes_only=True)
