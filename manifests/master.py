"""The multivariant (master) playlist: which variants a request gets, in which order, and how.

Bandwidths are computed from the segments (RFC 8216 §4.3.4.2: BANDWIDTH is the peak segment
bit rate; "if all the Media Segments ... have already been created, the BANDWIDTH value MUST be
the largest sum of peak segment bit rates produced by any playable combination of
Renditions"), not copied from the stored fields, so a stale or hand-edited number in meta.json
cannot make players under-estimate a variant and stall. While the video is ``processing`` the
stored values are the encoder's estimate for segments not made yet (rfc8216bis: "a
representative period"), so the larger of stored and computed is used then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from reelcdn.manifests.errors import NotReady, NoVariants
from reelcdn.manifests.meta import (
    AudioRendition,
    Rendition,
    VideoMeta,
    average_bandwidth,
    peak_bandwidth,
)
from reelcdn.manifests.options import Pathway, RenderOptions
from reelcdn.manifests.text import Template, quoted, uri_slot
from reelcdn.manifests.versions import required_version

__all__ = ["IFRAME_PLAYLIST", "MEDIA_PLAYLIST", "Variant", "master_template", "select_variants"]

MEDIA_PLAYLIST = "index.m3u8"
"""Media playlist file name in a rendition directory (``/v/{id}/{rendition}/index.m3u8``)."""
IFRAME_PLAYLIST = "iframes.m3u8"
"""I-frame playlist file name in a rendition directory."""


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """One EXT-X-STREAM-INF to write: a video rendition plus the audio it plays with."""

    rendition: Rendition
    audio: tuple[AudioRendition, ...]  # usable members of its audio group (empty: muxed)
    bandwidth: int
    average_bandwidth: int
    codecs: tuple[str, ...]

    @property
    def height(self) -> int:
        return self.rendition.height

    @property
    def iframe_bandwidth(self) -> int:
        return peak_bandwidth(self.rendition.iframes)

    @property
    def iframe_average_bandwidth(self) -> int:
        return average_bandwidth(self.rendition.iframes)


def _variant(meta: VideoMeta, r: Rendition, options: RenderOptions) -> Variant | None:
    """The variant for *r*, or None when it cannot play yet (no segments, no usable audio)."""
    if not r.segments:
        return None
    peak = peak_bandwidth(r.segments)
    average = average_bandwidth(r.segments)
    if not meta.ready:
        peak = max(peak, r.bandwidth)
        average = max(average, r.average_bandwidth)
    codecs = [c.strip() for c in r.codecs.split(",")]
    audio: tuple[AudioRendition, ...] = ()
    if r.audio_group is not None:
        audio = tuple(a for a in meta.audio_in_group(r.audio_group)
                      if a.segments and options.allows([a.codec]))
        if not audio:
            return None
        peak += max(peak_bandwidth(a.segments) for a in audio)
        average += max(average_bandwidth(a.segments) for a in audio)
        codecs += [a.codec for a in audio]
    return Variant(r, audio, peak, average, tuple(dict.fromkeys(codecs)))


def _order_key(v: Variant) -> tuple[int, int, str]:
    r = v.rendition
    return (r.width * r.height, v.bandwidth, r.name)


def select_variants(meta: VideoMeta, options: RenderOptions) -> tuple[Variant, ...]:
    """The variants of the master for *options*, in playlist order.

    Raises NotReady when nothing is playable yet, NoVariants when the filters exclude all.
    """
    unfiltered = RenderOptions()
    playable = [v for r in meta.renditions if (v := _variant(meta, r, unfiltered))]
    if not playable:
        raise NotReady(f"{meta.video_id}: no rendition has segments yet ({meta.state})")
    chosen = []
    for r in meta.renditions:
        v = _variant(meta, r, options)
        if v is None or (options.max_height is not None and v.height > options.max_height):
            continue
        if options.max_bandwidth is not None and v.bandwidth > options.max_bandwidth:
            continue
        if options.allows(v.codecs):
            chosen.append(v)
    if not chosen:
        raise NoVariants(f"{meta.video_id}: no variant matches {options.describe_filters()}")
    if options.start is not None:
        chosen.sort(key=_order_key, reverse=options.start == "highest")
    return tuple(chosen)


def _yes(flag: bool) -> str:
    return "YES" if flag else "NO"


def _group_id(group: str, pathway: Pathway | None) -> str:
    # EXT-X-MEDIA has no PATHWAY-ID: each pathway needs its own copy of a group (with its own
    # URIs), as in the content-steering example of rfc8216bis. '@' cannot occur in a
    # PATHWAY-ID, so splitting at the last '@' recovers the pair: no two copies can collide.
    return group if pathway is None else f"{group}@{pathway.id}"


def _media_lines(meta: VideoMeta, variants: Sequence[Variant],
                 pathway: Pathway | None) -> list[str]:
    lines = []
    used = {a.name for v in variants for a in v.audio}
    for a in meta.audio:
        if a.name not in used:
            continue
        attrs = [f"TYPE=AUDIO,GROUP-ID={quoted(_group_id(a.group, pathway))}",
                 f"NAME={quoted(a.display_name)}"]
        if a.language is not None:
            attrs.append(f"LANGUAGE={quoted(a.language)}")
        attrs.append(f"DEFAULT={_yes(a.default)},AUTOSELECT=YES")
        if a.channels is not None:
            attrs.append(f'CHANNELS="{a.channels}"')
        uri = f"{a.name}/{MEDIA_PLAYLIST}"
        if pathway is not None:
            uri = pathway.uri(meta.video_id, uri)
        attrs.append(f"URI={quoted(uri_slot(uri))}")
        lines.append("#EXT-X-MEDIA:" + ",".join(attrs))
    return lines


def master_template(meta: VideoMeta, options: RenderOptions) -> Template:
    """The multivariant playlist for *options*, with URI slots for the carried query.

    Raises NotReady or NoVariants (see :func:`select_variants`).
    """
    variants = select_variants(meta, options)
    steering = options.steering
    pathways: tuple[Pathway | None, ...] = steering.pathways if steering else (None,)
    features = {"EXT-X-STREAM-INF"}
    head = []
    body: list[str] = []
    independent = all(s.independent for v in variants
                      for media in (v.rendition, *v.audio) for s in media.segments)
    if independent:
        features.add("EXT-X-INDEPENDENT-SEGMENTS")
        head.append("#EXT-X-INDEPENDENT-SEGMENTS")
    if steering is not None:
        features.update(("EXT-X-CONTENT-STEERING", "PATHWAY-ID"))
        head.append(f"#EXT-X-CONTENT-STEERING:"
                    f"SERVER-URI={quoted(uri_slot(steering.server_uri_for(meta.video_id)))},"
                    f"PATHWAY-ID={quoted(steering.initial_pathway)}")
    for pathway in pathways:
        media = _media_lines(meta, variants, pathway)
        if media:
            features.update(("EXT-X-MEDIA", "EXT-X-STREAM-INF:AUDIO"))
        body += media
    for pathway in pathways:
        for v in variants:
            r = v.rendition
            attrs = (f"BANDWIDTH={v.bandwidth},AVERAGE-BANDWIDTH={v.average_bandwidth},"
                     f"CODECS={quoted(','.join(v.codecs))},RESOLUTION={r.resolution},"
                     f"FRAME-RATE={r.frame_rate:.3f}")
            if r.audio_group is not None:
                attrs += f",AUDIO={quoted(_group_id(r.audio_group, pathway))}"
            if pathway is not None:
                attrs += f",PATHWAY-ID={quoted(pathway.id)}"
            uri = f"{r.name}/{MEDIA_PLAYLIST}"
            body += ["#EXT-X-STREAM-INF:" + attrs,
                     uri_slot(pathway.uri(meta.video_id, uri) if pathway else uri)]
    for pathway in pathways:
        for v in variants:
            r = v.rendition
            if not r.iframes:
                continue
            features.add("EXT-X-I-FRAME-STREAM-INF")
            uri = f"{r.name}/{IFRAME_PLAYLIST}"
            if pathway is not None:
                uri = pathway.uri(meta.video_id, uri)
            attrs = (f"BANDWIDTH={v.iframe_bandwidth},"
                     f"AVERAGE-BANDWIDTH={v.iframe_average_bandwidth},"
                     f"CODECS={quoted(r.video_codec)},RESOLUTION={r.resolution},"
                     f"URI={quoted(uri_slot(uri))}")
            if pathway is not None:
                attrs += f",PATHWAY-ID={quoted(pathway.id)}"
            body.append("#EXT-X-I-FRAME-STREAM-INF:" + attrs)
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{required_version(features)}", *head, *body]
    return Template("\n".join(lines) + "\n")
