"""The manifests library: every rendering parsed back with ``m3u8`` and checked against RFC 8216.

The checks below (``check_master``, ``check_media``, ``check_iframes``) are written from the
RFC and the documented rules, not from the renderer: bit rates in exact rational arithmetic,
EXT-X-VERSION from a scan of the text against the §7 table, byte ranges resolved the way a
player resolves them (§4.3.2.2). Hypothesis feeds them random valid metadata and options; a
few tests feed them broken playlists to show they do fail. The real demo video (ffmpeg) is
rendered too, and PyAV (libavformat) plays what was rendered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import m3u8
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reelcdn import manifests
from reelcdn.manifests import (
    MIN_VERSION,
    NotReady,
    NoVariants,
    OptionError,
    Pathway,
    RenderOptions,
    Steering,
    UnknownRendition,
    codec_allowed,
    options_from_query,
    render_iframes,
    render_master,
    render_media,
)
from reelcdn.manifests.meta import (
    AudioRendition,
    IFrame,
    InitSection,
    Rendition,
    Segment,
    VideoMeta,
)
from reelcdn.origin.demo import LadderRung, synthesise_demo_videos

DIGEST = "sha256:" + "ab" * 32
CREATED = "2025-01-02T03:04:05Z"

# =========================================================================== the oracle


def exact_peak(items: Sequence[Any]) -> int:
    """RFC 8216 §4.3.4.2 peak segment bit rate, rounded up, in exact arithmetic."""
    rates = [Fraction(i.size * 8) / Fraction(i.duration) for i in items]
    return math.ceil(max(rates, default=Fraction(0)))


def exact_average(items: Sequence[Any]) -> int:
    seconds = sum((Fraction(i.duration) for i in items), Fraction(0))
    return math.ceil(Fraction(sum(i.size * 8 for i in items)) / seconds) if seconds else 0


def version_needed(text: str) -> int:
    """The minimum EXT-X-VERSION per RFC 8216 §7, from what the text actually contains."""
    lines = text.splitlines()
    iframes_only = "#EXT-X-I-FRAMES-ONLY" in lines
    need = 1
    for line in lines:
        if line.startswith("#EXTINF:") and "." in line[8:].split(",")[0]:
            need = max(need, 3)
        if line.startswith("#EXT-X-BYTERANGE:") or line == "#EXT-X-I-FRAMES-ONLY":
            need = max(need, 4)
        if line.startswith("#EXT-X-MAP:"):
            need = max(need, 5 if iframes_only else 6)
    return need


def all_uris(text: str) -> list[str]:
    """Every URI in a playlist: URI lines and URI= / SERVER-URI= attributes."""
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            out.append(line)
        out += re.findall(r'[:,](?:URI|SERVER-URI)="([^"]*)"', line)
    return out


def strip_carried(uri: str, carried: str) -> str:
    """*uri* without the carried query, asserting it was appended once with the right joiner."""
    if not carried:
        return uri
    assert uri.endswith(carried), (uri, carried)
    base, joiner = uri[:-len(carried) - 1], uri[-len(carried) - 1]
    assert joiner == ("&" if "?" in base else "?"), uri
    assert carried not in base, uri
    return base


def check_common(text: str, carried: str) -> None:
    assert text.startswith("#EXTM3U\n") and text.endswith("\n")
    assert text.count("#EXT-X-VERSION:") == 1
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text), "control characters (§4.1)"
    uris = all_uris(text)
    assert uris
    for uri in uris:
        strip_carried(uri, carried)


def allowed(codec: str, entries: Sequence[str] | None) -> bool:
    """The documented matching rule: equal, or a prefix ending at a dot; case ignored."""
    if entries is None:
        return True
    c = codec.lower()
    return any(c == e.lower() or c.startswith(e.lower() + ".") for e in entries)


def expected_variants(meta: VideoMeta, options: RenderOptions | None) -> list[dict[str, Any]]:
    """The variants a master must list (before ordering), with their attribute values."""
    codecs_filter = options.codecs if options else None
    rows = []
    for r in meta.renditions:
        if not r.segments:
            continue
        bandwidth, average = exact_peak(r.segments), exact_average(r.segments)
        if meta.state == "processing":  # the stored estimate is a floor until ready
            bandwidth, average = max(bandwidth, r.bandwidth), max(average, r.average_bandwidth)
        codecs = [c.strip() for c in r.codecs.split(",")]
        members: list[AudioRendition] = []
        if r.audio_group is not None:
            members = [a for a in meta.audio if a.group == r.audio_group and a.segments
                       and allowed(a.codec, codecs_filter)]
            if not members:
                continue
            bandwidth += max(exact_peak(a.segments) for a in members)
            average += max(exact_average(a.segments) for a in members)
            for a in members:
                if a.codec not in codecs:
                    codecs.append(a.codec)
        rows.append(dict(r=r, members=members, bandwidth=bandwidth, average=average,
                         codecs=codecs))
    if options is None:
        return rows
    return [row for row in rows
            if (options.max_height is None or row["r"].height <= options.max_height)
            and (options.max_bandwidth is None or row["bandwidth"] <= options.max_bandwidth)
            and all(allowed(c, codecs_filter) for c in row["codecs"])]


def prefix(meta: VideoMeta, pathway: Pathway | None) -> str:
    if pathway is None or not pathway.base:
        return ""
    return f"{pathway.base.rstrip('/')}/v/{meta.video_id}/"


def check_master(meta: VideoMeta, options: RenderOptions, text: str) -> None:
    """Everything the multivariant playlist must satisfy for these metadata and options."""
    carried = options.carried_query
    check_common(text, carried)
    pl = m3u8.loads(text)
    assert pl.is_variant
    assert pl.version == version_needed(text) == 1
    rows = expected_variants(meta, options)
    n = len(rows)
    pathways: list[Pathway | None] = (list(options.steering.pathways) if options.steering
                                      else [None])
    assert len(pl.playlists) == n * len(pathways)
    groups_seen: list[set[str]] = []
    for block, pathway in enumerate(pathways):
        listed = pl.playlists[block * n:(block + 1) * n]
        by_name = {row["r"].name: row for row in rows}
        names = [strip_carried(v.uri, carried) for v in listed]
        expect_names = [prefix(meta, pathway) + f"{row['r'].name}/index.m3u8" for row in rows]
        assert sorted(names) == sorted(expect_names)
        order = []
        groups: set[str] = set()
        for v in listed:
            name = strip_carried(v.uri, carried).removeprefix(prefix(meta, pathway))
            row = by_name[name.split("/")[0]]
            r: Rendition = row["r"]
            info = v.stream_info
            assert info.bandwidth == row["bandwidth"]
            assert info.average_bandwidth == row["average"] <= info.bandwidth
            assert info.codecs == ",".join(row["codecs"])
            assert info.resolution == (r.width, r.height)
            assert info.frame_rate == round(r.frame_rate, 3)
            assert re.search(rf"FRAME-RATE={r.frame_rate:.3f}(,|$)", text, re.M)
            assert info.pathway_id == (pathway.id if pathway else None)
            if row["members"]:
                assert info.audio is not None
                groups.add(info.audio)
                group = [m for m in pl.media if m.group_id == info.audio]
                assert all(m.type == "AUDIO" and m.autoselect == "YES" for m in group)
                assert sorted(m.name for m in group) == sorted(
                    a.display_name for a in row["members"])
                for m in group:
                    a = next(a for a in row["members"] if a.display_name == m.name)
                    assert strip_carried(m.uri, carried) == prefix(meta, pathway) + \
                        f"{a.name}/index.m3u8"
                    assert m.language == a.language
                    assert m.default == ("YES" if a.default else "NO")
                    assert m.channels == (str(a.channels) if a.channels else None)
            else:
                assert info.audio is None
            order.append((r.width * r.height, info.bandwidth, r.name))
        if options.start == "lowest":
            assert order == sorted(order)
        elif options.start == "highest":
            assert order == sorted(order, reverse=True)
        else:
            assert [o[2] for o in order] == [row["r"].name for row in rows]
        groups_seen.append(groups)
        # I-frame variants: one per listed variant with I-frame data, same pathway.
        iframes = [p for p in pl.iframe_playlists
                   if p.iframe_stream_info.pathway_id == (pathway.id if pathway else None)]
        expect_iframes = {prefix(meta, pathway) + f"{row['r'].name}/iframes.m3u8": row["r"]
                          for row in rows if row["r"].iframes}
        assert sorted(strip_carried(p.uri, carried) for p in iframes) == sorted(expect_iframes)
        for p in iframes:
            r = expect_iframes[strip_carried(p.uri, carried)]
            assert p.iframe_stream_info.bandwidth == exact_peak(r.iframes)
            assert p.iframe_stream_info.average_bandwidth == exact_average(r.iframes)
            assert p.iframe_stream_info.codecs == r.video_codec
            assert p.iframe_stream_info.resolution == (r.width, r.height)
    for a, b in zip(groups_seen, groups_seen[1:], strict=False):
        assert not a & b, "each pathway needs its own audio groups (EXT-X-MEDIA has no PATHWAY)"
    assert len({(m.group_id, m.name) for m in pl.media}) == len(pl.media)  # NAME unique
    assert {m.group_id for m in pl.media} == set().union(*groups_seen)  # no unused groups
    used = [r for row in rows for r in (row["r"], *row["members"])]
    assert pl.is_independent_segments == all(s.independent for m in used for s in m.segments)
    if options.steering is None:
        assert pl.content_steering is None
    else:
        steering = options.steering
        assert pl.content_steering.pathway_id == (steering.initial or steering.pathways[0].id)
        assert strip_carried(pl.content_steering.uri, carried) == steering.server_uri.replace(
            "{video_id}", meta.video_id)


def resolve_ranges(segments: Sequence[Any]) -> list[tuple[int, int] | None]:
    """(offset, length) of each segment as a player resolves EXT-X-BYTERANGE (§4.3.2.2)."""
    out: list[tuple[int, int] | None] = []
    previous: tuple[str, int] | None = None
    for s in segments:
        if s.byterange is None:
            out.append(None)
            previous = None
            continue
        length, _, offset = s.byterange.partition("@")
        if offset:
            start = int(offset)
        else:  # only legal right after a sub-range of the same resource
            assert previous is not None and previous[0] == s.uri, "offset omitted illegally"
            start = previous[1]
        out.append((start, int(length)))
        previous = (s.uri, start + int(length))
    return out


def check_playlist_body(meta: VideoMeta, init: InitSection, entries: Sequence[Any],
                        text: str, carried: str) -> m3u8.M3U8:
    """What media and I-frame playlists share: type, target duration, map, entries."""
    check_common(text, carried)
    pl = m3u8.loads(text)
    assert not pl.is_variant
    assert pl.version == version_needed(text)
    assert pl.media_sequence == 0
    if meta.state == "ready":
        assert pl.playlist_type == "vod" and pl.is_endlist
    else:
        assert pl.playlist_type == "event" and not pl.is_endlist
    # rfc8216bis §4.4.3.1: the largest EXTINF *rounded to the nearest integer* (not ceiled)
    rounded = [math.floor(s.duration + 0.5) for s in pl.segments]
    assert pl.target_duration == max(1, *rounded)
    assert [(strip_carried(s.uri, carried)) for s in pl.segments] == [e.uri for e in entries]
    for s, e in zip(pl.segments, entries, strict=True):
        assert abs(s.duration - e.duration) <= 5e-7 + 1e-9 * e.duration
        assert s.duration > 0
    assert resolve_ranges(pl.segments) == [e.byterange for e in entries]
    maps = [line for line in text.splitlines() if line.startswith("#EXT-X-MAP:")]
    assert len(maps) == 1 and text.index(maps[0]) < text.index("#EXTINF")
    section = pl.segments[0].init_section
    assert strip_carried(section.uri, carried) == init.uri
    if init.byterange is None:
        assert section.byterange is None
    else:  # an explicit offset: no previous sub-range exists for it to continue
        assert section.byterange == f"{init.byterange[1]}@{init.byterange[0]}"
    return pl


def check_media(meta: VideoMeta, media: Rendition | AudioRendition, text: str,
                carried: str) -> None:
    pl = check_playlist_body(meta, media.init, media.segments, text, carried)
    assert not pl.is_i_frames_only
    assert pl.version == 6  # EXT-X-MAP outside an I-frames-only playlist
    assert pl.is_independent_segments == all(s.independent for s in media.segments)


def check_iframes(meta: VideoMeta, r: Rendition, text: str, carried: str) -> None:
    pl = check_playlist_body(meta, r.init, r.iframes, text, carried)
    assert pl.is_i_frames_only
    assert pl.version == 5  # EXT-X-MAP with EXT-X-I-FRAMES-ONLY


def check_everything(meta: VideoMeta, options: RenderOptions) -> None:
    """Render every playlist of *meta* for *options* and check each, or the right error."""
    unfiltered = expected_variants(meta, None)
    if not unfiltered:
        with pytest.raises(NotReady):
            render_master(meta, options)
    elif not expected_variants(meta, options):
        with pytest.raises(NoVariants):
            render_master(meta, options)
    else:
        text = render_master(meta, options)
        check_master(meta, options, text)
        template = manifests.master_template(meta, options)
        assert template.fill(options.carried_query) == text
    carried = options.carried_query
    for media in (*meta.renditions, *meta.audio):
        if not media.segments:
            with pytest.raises(NotReady):
                render_media(meta, media.name, options)
            continue
        check_media(meta, media, render_media(meta, media.name, options), carried)
    for r in meta.renditions:
        if r.iframes:
            check_iframes(meta, r, render_iframes(meta, r.name, options), carried)
        else:
            with pytest.raises(UnknownRendition):
                render_iframes(meta, r.name, options)


# =========================================================================== builders


def seg(uri: str, duration: float, size: int, br: tuple[int, int] | None = None,
        independent: bool = True) -> Segment:
    return Segment(uri, duration, size, DIGEST, br, independent)


def rendition(name: str, height: int, segments: Sequence[Segment], *, width: int | None = None,
              codecs: str = "avc1.64001f,mp4a.40.2", audio_group: str | None = None,
              init: InitSection | None = None, iframes: Sequence[IFrame] = (),
              bandwidth: int = 1, frame_rate: float = 30.0) -> Rendition:
    video, *rest = codecs.split(",")
    return Rendition(
        name=name, width=width or height * 16 // 9, height=height, bandwidth=bandwidth,
        average_bandwidth=min(bandwidth, 1), codecs=codecs, video_codec=video,
        audio_codec=rest[0] if rest else None, frame_rate=frame_rate,
        init=init or InitSection("init.mp4", 900, DIGEST), segments=tuple(segments),
        audio_group=audio_group, iframes=tuple(iframes))


def files(n: int, durations: Sequence[float] = (2.0,), size: int = 250_000) -> list[Segment]:
    return [seg(f"seg_{i:05d}.m4s", durations[i % len(durations)], size + i) for i in range(n)]


def video(*renditions: Rendition, state: str = "ready",
          audio: Sequence[AudioRendition] = ()) -> VideoMeta:
    return VideoMeta("vid-1", state, 4.0, tuple(renditions),  # type: ignore[arg-type]
                     created_at=CREATED, audio=tuple(audio))


LADDER = video(
    rendition("360p", 360, files(3, size=150_000)),
    rendition("720p", 720, files(3, size=500_000)),
    rendition("1080p", 1080, files(3, size=1_000_000), codecs="hvc1.2.4.L123.B0,mp4a.40.2"),
    rendition("540p", 540, files(3, size=300_000)),
)

# =========================================================================== examples


def names(text: str) -> list[str]:
    return [p.uri.split("/")[0] for p in m3u8.loads(text).playlists]


def test_master_lists_every_rendition_with_computed_attributes() -> None:
    text = render_master(LADDER)
    check_master(LADDER, RenderOptions(), text)
    assert names(text) == ["360p", "720p", "1080p", "540p"]  # meta order without start=
    # 720p: segments of 500000..500002 bytes, 2 s each
    assert ('#EXT-X-STREAM-INF:BANDWIDTH=2000008,AVERAGE-BANDWIDTH=2000004,'
            'CODECS="avc1.64001f,mp4a.40.2",RESOLUTION=1280x720,FRAME-RATE=30.000\n'
            '720p/index.m3u8\n') in text


def test_bandwidth_is_computed_from_segments_not_the_stored_field() -> None:
    r = rendition("a", 360, [seg("s0.m4s", 2.0, 100_000), seg("s1.m4s", 0.5, 40_000)],
                  bandwidth=5)  # stored value is wrong; a ready video must not trust it
    info = m3u8.loads(render_master(video(r))).playlists[0].stream_info
    assert info.bandwidth == 640_000  # the short segment is the peak: 320 kbit over 0.5 s
    assert info.average_bandwidth == math.ceil(140_000 * 8 / 2.5)


def test_target_duration_is_rounded_not_ceiled() -> None:
    for durations, target in [((2.4, 2.0), 2), ((2.5, 1.0), 3), ((2.49,), 2), ((0.3,), 1),
                              ((6.006, 6.006, 1.5), 6), ((10.0, 9.6), 10)]:
        meta = video(rendition("a", 360, files(len(durations), durations)))
        text = render_media(meta, "a")
        check_media(meta, meta.renditions[0], text, "")
        assert m3u8.loads(text).target_duration == target, durations


def test_vod_when_ready_event_with_validated_segments_while_processing() -> None:
    r = rendition("a", 360, files(2))
    ready = render_media(video(r), "a")
    assert "#EXT-X-PLAYLIST-TYPE:VOD\n" in ready and ready.endswith("#EXT-X-ENDLIST\n")
    empty = rendition("b", 720, [])
    processing = video(r, empty, state="processing")
    event = render_media(processing, "a")
    assert "#EXT-X-PLAYLIST-TYPE:EVENT\n" in event and "ENDLIST" not in event
    assert event.count("#EXTINF:") == 2
    # players join a playlist without ENDLIST near its end unless told where to start
    assert "#EXT-X-START:TIME-OFFSET=0\n" in event and "EXT-X-START" not in ready
    assert m3u8.loads(event).start.time_offset == 0
    check_everything(processing, RenderOptions())
    assert names(render_master(processing)) == ["a"]  # b has nothing to play yet
    with pytest.raises(NotReady):
        render_media(processing, "b")
    with pytest.raises(NotReady):
        render_master(video(empty, state="processing"))


def test_processing_master_uses_the_stored_estimate_as_a_floor() -> None:
    r = rendition("a", 360, files(1, size=1000), bandwidth=3_000_000)
    info = m3u8.loads(render_master(video(r, state="processing"))).playlists[0].stream_info
    assert info.bandwidth == 3_000_000


def test_single_file_renditions_use_byte_ranges_contiguously() -> None:
    init = InitSection("media.mp4", 812, DIGEST, (0, 812))
    segs = [seg("media.mp4", 2.0, 1000, (812, 1000)), seg("media.mp4", 2.0, 1500, (1812, 1500)),
            seg("media.mp4", 1.0, 700, (3400, 700))]  # a gap before the third: explicit again
    meta = video(rendition("a", 360, segs, init=init))
    text = render_media(meta, "a", RenderOptions(carried_query="t=1"))
    check_media(meta, meta.renditions[0], text, "t=1")
    assert '#EXT-X-MAP:URI="media.mp4?t=1",BYTERANGE="812@0"' in text
    ranges = [line for line in text.splitlines() if line.startswith("#EXT-X-BYTERANGE")]
    assert ranges == ["#EXT-X-BYTERANGE:1000@812", "#EXT-X-BYTERANGE:1500",
                      "#EXT-X-BYTERANGE:700@3400"]
    assert m3u8.loads(text).version == 6


def test_independent_segments_only_when_every_segment_starts_with_a_keyframe() -> None:
    good = rendition("a", 360, files(2))
    bad = rendition("b", 720, [seg("s0.m4s", 2.0, 10), seg("s1.m4s", 2.0, 10, None, False)])
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in render_media(video(good, bad), "a")
    assert "#EXT-X-INDEPENDENT-SEGMENTS" not in render_media(video(good, bad), "b")
    assert "#EXT-X-INDEPENDENT-SEGMENTS" not in render_master(video(good, bad))
    only_good = RenderOptions(max_height=360)
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in render_master(video(good, bad), only_good)


def test_filters_and_ordering() -> None:
    def listed(**kw: Any) -> list[str]:
        options = RenderOptions(**kw)
        text = render_master(LADDER, options)
        check_master(LADDER, options, text)
        return names(text)

    assert listed(max_height=540) == ["360p", "540p"]
    assert listed(max_bandwidth=2_000_008) == ["360p", "720p", "540p"]  # 500002 B in 2 s
    assert listed(max_bandwidth=2_000_007) == ["360p", "540p"]
    assert listed(codecs=("avc1", "mp4a")) == ["360p", "720p", "540p"]
    assert listed(codecs=("hvc1", "mp4a.40.2")) == ["1080p"]
    assert listed(start="lowest") == ["360p", "540p", "720p", "1080p"]
    assert listed(start="highest", max_height=720) == ["720p", "540p", "360p"]
    with pytest.raises(NoVariants, match="max_height=100"):
        render_master(LADDER, RenderOptions(max_height=100))
    with pytest.raises(NoVariants, match="codecs=av01"):
        render_master(LADDER, RenderOptions(codecs=("av01",)))


def test_codec_matching_rule() -> None:
    assert codec_allowed("avc1.64001f", ["avc1"])
    assert codec_allowed("AVC1.64001F", ["avc1.64001f"])
    assert codec_allowed("mp4a.40.2", ["MP4A"])
    assert not codec_allowed("avc1.640028", ["avc1.64"])  # prefixes stop at dots
    assert not codec_allowed("avc3.640028", ["avc1"])
    assert not codec_allowed("ec-3", ["ac-3"])


AUDIO = (
    AudioRendition("aud-en", "aac", "mp4a.40.2", InitSection("init.mp4", 600, DIGEST),
                   tuple(files(3, size=24_000)), language="en", label="English", channels=2,
                   default=True),
    AudioRendition("aud-fr", "aac", "mp4a.40.2", InitSection("init.mp4", 600, DIGEST),
                   tuple(files(3, size=30_000)), language="fr", label="Français", channels=2),
    AudioRendition("aud-51", "aac", "ec-3", InitSection("init.mp4", 600, DIGEST),
                   tuple(files(3, size=96_000)), language="en", label="English 5.1",
                   channels=6),
)


def demuxed() -> VideoMeta:
    return video(rendition("360p", 360, files(3, size=150_000), codecs="avc1.4d401e",
                           audio_group="aac"),
                 rendition("720p", 720, files(3, size=500_000), codecs="avc1.64001f",
                           audio_group="aac"),
                 audio=AUDIO)


def test_audio_groups_become_ext_x_media_and_count_in_bandwidth_and_codecs() -> None:
    meta = demuxed()
    text = render_master(meta)
    check_master(meta, RenderOptions(), text)
    pl = m3u8.loads(text)
    assert [m.name for m in pl.media] == ["English", "Français", "English 5.1"]
    assert pl.playlists[0].stream_info.audio == "aac"
    assert pl.playlists[0].stream_info.codecs == "avc1.4d401e,mp4a.40.2,ec-3"
    # video peak 150002*8/2 + the group's largest audio peak (ec-3: 96002*8/2)
    assert pl.playlists[0].stream_info.bandwidth == 600_008 + 384_008
    stereo = RenderOptions(codecs=("avc1", "mp4a"))
    text = render_master(meta, stereo)
    check_master(meta, stereo, text)
    pl = m3u8.loads(text)
    assert [m.name for m in pl.media] == ["English", "Français"]
    assert pl.playlists[0].stream_info.bandwidth == 600_008 + 120_008
    check_media(meta, AUDIO[0], render_media(meta, "aud-en"), "")


def test_iframe_playlists() -> None:
    segs = files(3)
    frames = [IFrame(s.uri, s.duration, 9_000 + i, (700, 9_000 + i)) for i, s in enumerate(segs)]
    meta = video(rendition("a", 360, segs, iframes=frames), rendition("b", 720, files(3)))
    check_everything(meta, RenderOptions(carried_query="t=1"))
    text = render_iframes(meta, "a")
    assert "#EXT-X-I-FRAMES-ONLY\n" in text and "#EXT-X-VERSION:5\n" in text
    master = m3u8.loads(render_master(meta))
    assert [p.uri for p in master.iframe_playlists] == ["a/iframes.m3u8"]
    assert master.iframe_playlists[0].iframe_stream_info.bandwidth == math.ceil(9_002 * 8 / 2)
    with pytest.raises(UnknownRendition):
        render_iframes(meta, "b")


def test_carried_query_reaches_every_uri() -> None:
    frames = [IFrame("seg_00000.m4s", 2.0, 100, (0, 100))]
    meta = video(rendition("360p", 360, files(2), codecs="avc1.4d401e", audio_group="aac",
                           iframes=frames), audio=AUDIO[:1])
    steering = Steering("https://steer.example/v1?video={video_id}",
                        (Pathway("cdn-a"), Pathway("cdn-b", "https://b.example.com/")))
    options = RenderOptions(carried_query="hdnts=exp%3D1~acl%3D%2Fv%2F*~hmac%3Dab",
                            steering=steering)
    text = render_master(meta, options)
    check_master(meta, options, text)
    uris = all_uris(text)
    # steering server, 2 x (EXT-X-MEDIA, variant, I-frame variant)
    assert len(uris) == 7
    assert 'SERVER-URI="https://steer.example/v1?video=vid-1&hdnts=exp%3D1~' in text
    assert "\nhttps://b.example.com/v/vid-1/360p/index.m3u8?hdnts=" in text
    media = render_media(meta, "360p", options)
    assert len(all_uris(media)) == 3 and all("?hdnts=exp%3D1~" in u for u in all_uris(media))
    check_everything(meta, options)


def test_content_steering_duplicates_variants_per_pathway() -> None:
    steering = Steering("/steer/{video_id}.json",
                        (Pathway("CDN-A"), Pathway("CDN-B", "https://b.example.com")),
                        initial="CDN-B")
    options = RenderOptions(steering=steering, max_height=720)
    text = render_master(LADDER, options)
    check_master(LADDER, options, text)
    assert '#EXT-X-CONTENT-STEERING:SERVER-URI="/steer/vid-1.json",PATHWAY-ID="CDN-B"' in text
    pl = m3u8.loads(text)
    assert [(p.stream_info.pathway_id, p.uri) for p in pl.playlists] == [
        ("CDN-A", "360p/index.m3u8"), ("CDN-A", "720p/index.m3u8"), ("CDN-A", "540p/index.m3u8"),
        ("CDN-B", "https://b.example.com/v/vid-1/360p/index.m3u8"),
        ("CDN-B", "https://b.example.com/v/vid-1/720p/index.m3u8"),
        ("CDN-B", "https://b.example.com/v/vid-1/540p/index.m3u8")]
    meta = demuxed()
    text = render_master(meta, options)
    check_master(meta, options, text)
    assert {m.group_id for m in m3u8.loads(text).media} == {"aac@CDN-A", "aac@CDN-B"}


def test_version_table_follows_rfc_8216_section_7() -> None:
    assert MIN_VERSION["EXTINF:<float>"] == 3
    assert MIN_VERSION["EXT-X-BYTERANGE"] == MIN_VERSION["EXT-X-I-FRAMES-ONLY"] == 4
    assert MIN_VERSION["EXT-X-MAP:I-FRAMES-ONLY"] == 5
    assert MIN_VERSION["EXT-X-MAP"] == 6
    assert manifests.required_version([]) == 1
    assert manifests.required_version(["EXT-X-BYTERANGE", "EXTINF:<float>"]) == 4
    with pytest.raises(KeyError):
        manifests.required_version(["EXT-X-SOMETHING-NEW"])


def test_unknown_rendition() -> None:
    with pytest.raises(UnknownRendition):
        render_media(LADDER, "4k")
    with pytest.raises(LookupError):
        render_iframes(LADDER, "4k")


def test_tiny_durations_are_never_written_as_zero() -> None:
    meta = video(rendition("a", 360, [seg("s0.m4s", 1e-7, 10), seg("s1.m4s", 2.0, 10)]))
    text = render_media(meta, "a")
    assert "#EXTINF:0.0000001,\n" in text
    check_media(meta, meta.renditions[0], text, "")


def test_template_is_token_free_and_fills_per_request() -> None:
    a = options_from_query("max_height=720&token=AAA", ["token"])
    b = options_from_query("token=BBB&max_height=720", ["token"])
    assert a.cache_key() == b.cache_key() and a != b
    template = manifests.master_template(LADDER, a)
    assert "AAA" not in template.text
    assert template.fill(b.carried_query) == render_master(LADDER, b)
    assert template.fill("") == render_master(LADDER, RenderOptions(max_height=720))
    with pytest.raises(OptionError):
        template.fill('x"y')


def test_the_documented_examples_match_the_renderer() -> None:
    docs = Path(__file__).parent.parent / "docs"
    meta_doc = (docs / "meta-json.md").read_text()
    example = re.search(r"```json\n(.*?)```", meta_doc[meta_doc.index("## Example"):], re.S)
    assert example
    meta = VideoMeta.from_json(example.group(1))
    doc = (docs / "manifests.md").read_text()
    blocks = re.findall(r"```\n(#EXTM3U\n.*?)```", doc[doc.index("## Examples"):], re.S)
    first = options_from_query("start=highest&token=abc&exp=1700000000", ["token", "exp"])
    steered = options_from_query(
        "max_height=480&token=abc", ["token"], steering=Steering(
            "/steer/{video_id}.json",
            (Pathway("edge"), Pathway("backup", "https://cdn-b.example.com"))))
    assert blocks == [render_master(meta, first), render_master(meta, steered),
                      render_media(meta, "360p", first)]
    for options in (first, steered):
        check_everything(meta, options)


def test_the_library_is_pure() -> None:
    """No I/O, clock, network or process modules imported by manifests/ (docs/contributing.md),
    and nothing of reelcdn outside manifests/.

    The one exception is the ``meta.json`` schema (``meta.py``): besides the model it reads and
    writes a meta.json file (``VideoMeta.read`` / ``write``, atomic by temp file and rename),
    digests files and stamps ``created_at``, for the origin that writes it. Those helpers may
    use the file system and the clock; the renderer never calls them."""
    import ast

    allowed = {"__future__", "collections", "dataclasses", "decimal", "fractions", "hashlib",
               "json", "math", "re", "types", "typing", "urllib", "reelcdn"}
    meta_io = {"contextlib", "datetime", "os", "pathlib", "tempfile"}
    folder = Path(manifests.__file__).parent
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
                if roots == ["reelcdn"]:
                    assert (node.module or "").startswith("reelcdn.manifests"), node.module
            else:
                continue
            assert set(roots) <= allowed | (meta_io if path.name == "meta.py" else set()), (
                path.name, roots)


# =========================================================================== the checkers fail


def test_the_checkers_reject_broken_playlists() -> None:
    """Guard against tautologies: each check must catch the fault it is there for."""
    meta = video(rendition("a", 360, files(2, (2.4, 1.0))))
    good = render_media(meta, "a", RenderOptions(carried_query="t=1"))
    check_media(meta, meta.renditions[0], good, "t=1")
    broken = {
        "ceiled target": good.replace("TARGETDURATION:2", "TARGETDURATION:3"),
        "version too high": good.replace("VERSION:6", "VERSION:7"),
        "version too low": good.replace("VERSION:6", "VERSION:5"),
        "token missing": good.replace("seg_00001.m4s?t=1", "seg_00001.m4s"),
        "token twice": good.replace("seg_00001.m4s?t=1", "seg_00001.m4s?t=1&t=1"),
        "endlist missing": good.replace("#EXT-X-ENDLIST\n", ""),
        "segment missing": good.replace("#EXTINF:1.000000,\nseg_00001.m4s?t=1\n", ""),
    }
    for what, text in broken.items():
        assert text != good, what
        with pytest.raises(AssertionError):
            check_media(meta, meta.renditions[0], text, "t=1")
    master = render_master(LADDER)
    bad_bandwidth = master.replace("BANDWIDTH=2000008,", "BANDWIDTH=2000007,")
    assert bad_bandwidth != master
    with pytest.raises(AssertionError):
        check_master(LADDER, RenderOptions(), bad_bandwidth)
    with pytest.raises(AssertionError):  # an unfiltered master for a filtered request
        check_master(LADDER, RenderOptions(max_height=720), master)
    single = video(rendition("a", 360, [seg("f.mp4", 2.0, 10, (0, 10)),
                                        seg("f.mp4", 2.0, 10, (20, 10))]))
    text = render_media(single, "a")
    with pytest.raises(AssertionError):  # dropping an offset that is not contiguous
        check_media(single, single.renditions[0], text.replace("10@20", "10"), "")


# =========================================================================== options


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("max_height=abc", "max_height"),
        ("max_height=0", "max_height"),
        ("max_height=-360", "max_height"),
        ("max_height=", "max_height"),
        ("max_height=1e3", "max_height"),
        ("max_height=1000000000000000000", "max_height"),
        ("max_bandwidth=2.5M", "max_bandwidth"),
        ("codecs=", "codecs"),
        ("codecs=avc1,,mp4a", "codecs"),
        ("codecs=avc1;mp4a", "codecs"),
        ("codecs=%22avc1", "codecs"),
        ("start=middle", "start"),
        ("start=lowest&start=highest", "start"),
        ("max_height=360&max_height=720", "max_height"),
        ('token=a"b', "token"),
        ("token=a b", "token"),
        ("token=a#b", "token"),
    ],
)
def test_options_from_query_rejects_bad_values_naming_the_parameter(query: str,
                                                                    parameter: str) -> None:
    with pytest.raises(ValueError) as caught:
        options_from_query(query, ["token"])
    assert isinstance(caught.value, OptionError)
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}: ")


def test_options_from_query_parses_options_and_keeps_carried_parameters_encoded() -> None:
    options = options_from_query(
        "?max_height=720&max_bandwidth=3000000&codecs=AVC1,%20mp4a,avc1&start=lowest"
        "&token=a%2Fb%3D&CMCD=br%3D3200%2Cot%3Dm&exp=1700000000&_HLS_msn=3&flag",
        ["token", "exp"])
    assert options == RenderOptions(max_height=720, max_bandwidth=3_000_000,
                                    codecs=("avc1", "mp4a"), start="lowest",
                                    carried_query="token=a%2Fb%3D&exp=1700000000")
    assert options_from_query("") == RenderOptions()
    steering = Steering("/s", (Pathway("a"),))
    assert options_from_query("start=highest", steering=steering).steering is steering
    with pytest.raises(ValueError, match="option names"):
        options_from_query("", ["start"])


def test_cache_key_is_stable_and_distinguishes_what_matters() -> None:
    base = RenderOptions(max_height=720, codecs=("mp4a", "AVC1"), start="lowest")
    assert base.cache_key() == '["o1",720,null,["avc1","mp4a"],"lowest",null]'
    assert RenderOptions(max_height=720, codecs=("avc1", "mp4a"), start="lowest",
                         carried_query="t=1").cache_key() == base.cache_key()
    variants = [RenderOptions(), RenderOptions(max_height=720), RenderOptions(max_bandwidth=720),
                RenderOptions(codecs=("avc1",)), RenderOptions(start="lowest"),
                RenderOptions(start="highest"),
                RenderOptions(steering=Steering("/s", (Pathway("a"),))),
                RenderOptions(steering=Steering("/s", (Pathway("a", "https://x.example"),))),
                RenderOptions(steering=Steering("/s", (Pathway("a"), Pathway("b")))),
                RenderOptions(steering=Steering("/s", (Pathway("a"), Pathway("b")), "b"))]
    keys = [v.cache_key() for v in variants]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: Pathway("bad id"), "pathways"),
        (lambda: Pathway("a", "https://x.example/?q=1"), "pathways"),
        (lambda: Pathway("a", "ftp://x.example"), "pathways"),
        (lambda: Steering("/s", ()), "pathways"),
        (lambda: Steering("/s", (Pathway("a"), Pathway("a"))), "pathways"),
        (lambda: Steering("/s", (Pathway("a"),), initial="b"), "pathways"),
        (lambda: Steering('/s"', (Pathway("a"),)), "steering"),
        (lambda: RenderOptions(max_height=True), "max_height"),
        (lambda: RenderOptions(max_bandwidth=10**18), "max_bandwidth"),
        (lambda: RenderOptions(codecs=()), "codecs"),
        (lambda: RenderOptions(codecs="avc1"), "codecs"),
        (lambda: RenderOptions(start="first"), "start"),  # type: ignore[arg-type]
        (lambda: RenderOptions(carried_query="?t=1"), "carried_query"),
        (lambda: RenderOptions(carried_query="t=\n1"), "carried_query"),
    ],
)
def test_options_validate_on_construction(build: Any, parameter: str) -> None:
    with pytest.raises(OptionError) as caught:
        build()
    assert caught.value.parameter == parameter


# =========================================================================== hypothesis

VIDEO_CODECS = ("avc1.64001f", "avc1.4d401e", "hvc1.1.6.L93.B0", "av01.0.05M.08")
AUDIO_CODECS = ("mp4a.40.2", "mp4a.40.5", "ec-3")
DURATIONS = st.one_of(
    st.floats(min_value=0.04, max_value=12.0, allow_nan=False, allow_infinity=False),
    st.sampled_from([2.0, 2.0, 2.5, 1.5, 0.5, 2.4999999, 2.5000001, 1.9999996, 6.006, 1e-7]),
)
HEIGHTS = st.one_of(st.sampled_from([144, 180, 360, 540, 720, 1080]), st.integers(16, 4320))


@st.composite
def media_files(draw: st.DrawFn, n: int) -> tuple[InitSection, tuple[Segment, ...]]:
    """An init section and *n* segments: one file each, or byte ranges of one file."""
    keyframes = draw(st.sampled_from(["all", "all", "some"]))

    def independent() -> bool:
        return keyframes == "all" or draw(st.booleans())

    if draw(st.booleans()):
        init_size = draw(st.integers(1, 4000))
        init = InitSection("media.mp4", init_size, DIGEST, (0, init_size))
        offset, segments = init_size, []
        for _ in range(n):
            offset += draw(st.sampled_from([0, 0, 0, 8]))  # now and then a box in between
            size = draw(st.integers(1, 3_000_000))
            segments.append(Segment("media.mp4", draw(DURATIONS), size, DIGEST,
                                    (offset, size), independent()))
            offset += size
        return init, tuple(segments)
    init = InitSection("init.mp4", draw(st.integers(1, 4000)), DIGEST)
    return init, tuple(Segment(f"seg_{i:05d}.m4s", draw(DURATIONS),
                               draw(st.integers(0, 3_000_000)), DIGEST, None, independent())
                       for i in range(n))


@st.composite
def metas(draw: st.DrawFn) -> VideoMeta:
    ready = draw(st.booleans())
    low = 1 if ready else 0
    audio = []
    groups = draw(st.lists(st.sampled_from(["aac", "ec3", "stereo"]), unique=True, max_size=2))
    for g in groups:
        k = draw(st.integers(1, 3))
        default = draw(st.one_of(st.none(), st.integers(0, k - 1)))
        for i in range(k):
            init, segments = draw(media_files(draw(st.integers(low, 4))))
            audio.append(AudioRendition(
                f"{g}-{i}", g, draw(st.sampled_from(AUDIO_CODECS)), init, segments,
                language=draw(st.sampled_from([None, "en", "fr", "pt-BR"])),
                label=draw(st.sampled_from([None, f"Track {i}"])),
                channels=draw(st.sampled_from([None, 2, 6])), default=default == i))
    references = [None, *groups] + ([] if ready else ["not-yet"])
    renditions = []
    for i in range(draw(st.integers(1, 5))):
        init, segments = draw(media_files(draw(st.integers(low, 8))))
        group = draw(st.sampled_from(references))
        video_codec = draw(st.sampled_from(VIDEO_CODECS))
        audio_codec = None if group else draw(st.sampled_from([None, *AUDIO_CODECS]))
        bandwidth = draw(st.integers(low, 50_000_000))
        iframes: tuple[IFrame, ...] = ()
        if segments and draw(st.booleans()):
            iframes = tuple(
                IFrame(s.uri, s.duration, size, (s.byterange[0] if s.byterange else 0, size))
                for s in segments for size in [draw(st.integers(1, 200_000))])
        height = draw(HEIGHTS)
        renditions.append(Rendition(
            name=f"r{i}", width=draw(st.sampled_from([height, height * 16 // 9])),
            height=height, bandwidth=bandwidth,
            average_bandwidth=draw(st.integers(0, bandwidth)),
            codecs=",".join(c for c in (video_codec, audio_codec) if c),
            video_codec=video_codec, audio_codec=audio_codec,
            frame_rate=draw(st.one_of(st.sampled_from([23.976, 25.0, 29.97, 30.0, 59.94]),
                                      st.floats(1.0, 120.0))),
            init=init, segments=segments, audio_group=group, iframes=iframes))
    return VideoMeta("vid-1", "ready" if ready else "processing", 0.0, tuple(renditions),
                     created_at=CREATED, audio=tuple(audio))


CARRIED = ["", "token=abc&exp=1700000000", "hdnts=exp%3D1~acl%3D%2Fv%2F*~hmac%3Dab12",
           "Policy=eyJ_&Signature=a-b~c&Key-Pair-Id=K1", "st=a/b+c==&e=1"]
PATHWAYS = st.lists(st.builds(Pathway, st.sampled_from(["cdn-a", "cdn-b", "CDN_C.1"]),
                              st.sampled_from(["", "https://b.example.com",
                                               "https://c.example.com/edge/"])),
                    min_size=1, max_size=3, unique_by=lambda p: p.id)


@st.composite
def options_for(draw: st.DrawFn, meta: VideoMeta) -> RenderOptions:
    """Options whose thresholds often fall on (or next to) the metadata's own values."""
    bandwidths = [row["bandwidth"] for row in expected_variants(meta, None)] or [1]
    heights = [r.height for r in meta.renditions]
    steering = None
    if draw(st.booleans()):
        pathways = tuple(draw(PATHWAYS))
        steering = Steering(
            draw(st.sampled_from(["/steer/{video_id}.json", "https://s.example/v1?id={video_id}"])),
            pathways, draw(st.sampled_from([None, *(p.id for p in pathways)])))
    def sometimes(strategy: st.SearchStrategy[Any]) -> Any:
        return draw(st.one_of(st.none(), st.none(), strategy))  # unset two times in three

    return RenderOptions(
        max_height=sometimes(st.one_of(st.sampled_from(heights), st.integers(1, 4000))),
        max_bandwidth=sometimes(st.sampled_from(bandwidths).flatmap(
            lambda b: st.sampled_from([max(1, b), max(1, b - 1), b + 1]))),
        codecs=sometimes(st.lists(st.sampled_from(
            ["avc1", "hvc1", "av01", "mp4a", "ec-3", "AVC1.64001F", "mp4a.40.2"]),
            min_size=1, max_size=4).map(tuple)),
        start=draw(st.sampled_from([None, "lowest", "highest"])),
        carried_query=draw(st.sampled_from(CARRIED)),
        steering=steering)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=metas(), data=st.data())
def test_random_metadata_renders_playlists_that_follow_the_rules(meta: VideoMeta,
                                                                 data: st.DataObject) -> None:
    options = data.draw(options_for(meta))
    # Labels for --hypothesis-show-statistics: every branch should be well represented.
    outcome = ("not ready" if not expected_variants(meta, None) else
               "filtered out" if not expected_variants(meta, options) else "rendered")
    event(f"master: {outcome}, {meta.state}")
    event(f"steering: {options.steering is not None}; audio: {bool(meta.audio)}; "
          f"iframes: {any(r.iframes for r in meta.renditions)}")
    event(f"byte ranges: {any(s.byterange for r in meta.renditions for s in r.segments)}")
    check_everything(meta, options)


@settings(max_examples=60, deadline=None)
@given(meta=metas(), data=st.data())
def test_query_strings_round_trip_through_options(meta: VideoMeta, data: st.DataObject) -> None:
    options = data.draw(options_for(meta))
    parts = [options.carried_query] if options.carried_query else []
    for key in ("max_height", "max_bandwidth", "start"):
        if getattr(options, key) is not None:
            parts.append(f"{key}={getattr(options, key)}")
    if options.codecs is not None:
        parts.append("codecs=" + ",".join(options.codecs))
    carried = {p.split("=")[0] for p in options.carried_query.split("&") if p}
    parsed = options_from_query("&".join(parts), carried, steering=options.steering)
    assert parsed.cache_key() == options.cache_key()
    assert sorted(parsed.carried_query.split("&")) == sorted(options.carried_query.split("&"))


# =========================================================================== real media

DEMO_LADDER = (
    LadderRung("180p", 320, 180, 250_000, 64_000, "main"),
    LadderRung("360p", 640, 360, 600_000, 96_000),
)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 4 s demo video (two 2 s segments per rendition) encoded by ffmpeg."""
    root = tmp_path_factory.mktemp("origin")
    synthesise_demo_videos(root, count=1, duration=4.0, renditions=DEMO_LADDER,
                           log=lambda _: None)
    return root / "v" / "demo-1"


def decode(path: Path) -> list[tuple[int, int, float]]:
    """(width, height, time) of every video frame libavformat/libavcodec decode from *path*."""
    with av.open(str(path)) as container:
        return [(f.width, f.height, f.time) for f in container.decode(video=0)]


@pytest.mark.slow
def test_demo_master_and_media_render_parse_and_play(demo_dir: Path) -> None:
    meta = VideoMeta.read(demo_dir / "meta.json")
    check_everything(meta, RenderOptions())
    check_everything(meta, RenderOptions(carried_query="token=abc", start="highest"))
    (demo_dir / "rendered.m3u8").write_text(render_master(meta))
    for r in meta.renditions:
        (demo_dir / r.name / "rendered.m3u8").write_text(render_media(meta, r.name))
    master = m3u8.loads((demo_dir / "rendered.m3u8").read_text())
    assert [p.uri for p in master.playlists] == ["180p/index.m3u8", "360p/index.m3u8"]
    with av.open(str(demo_dir / "rendered.m3u8")) as container:
        assert sorted(s.codec_context.width for s in container.streams.video) == [320, 640]
    for rung in DEMO_LADDER:
        frames = decode(demo_dir / rung.name / "rendered.m3u8")
        assert {(w, h) for w, h, _ in frames} == {(rung.width, rung.height)}
        assert len(frames) >= 110 and frames[-1][2] >= 3.5, (len(frames), frames[-1])


@pytest.mark.slow
def test_demo_filtered_master_plays_only_the_allowed_rendition(demo_dir: Path) -> None:
    meta = VideoMeta.read(demo_dir / "meta.json")
    options = options_from_query("max_height=200")
    text = render_master(meta, options)
    check_master(meta, options, text)
    (demo_dir / "rendered-180.m3u8").write_text(text)
    with av.open(str(demo_dir / "rendered-180.m3u8")) as container:
        assert [s.codec_context.width for s in container.streams.video] == [320]


@pytest.mark.slow
def test_demo_as_a_single_file_rendition_with_byte_ranges_plays(demo_dir: Path) -> None:
    """The 360p rendition concatenated into one file: EXT-X-MAP/EXT-X-BYTERANGE must work."""
    meta = VideoMeta.read(demo_dir / "meta.json")
    r = meta.rendition("360p")
    rdir = demo_dir / "360p"
    blob = (rdir / r.init.uri).read_bytes()
    init = InitSection("single.mp4", len(blob), r.init.digest, (0, len(blob)))
    segments = []
    for s in r.segments:
        data = (rdir / s.uri).read_bytes()
        segments.append(Segment("single.mp4", s.duration, len(data), s.digest,
                                (len(blob), len(data)), s.independent))
        blob += data
    (rdir / "single.mp4").write_bytes(blob)
    # I-frame data: each segment starts with an IDR, so the first segment bytes decode alone
    iframes = tuple(IFrame("single.mp4", s.duration, s.size, s.byterange) for s in segments)
    single = VideoMeta("demo-1", "ready", meta.duration, (Rendition(
        **{**{f: getattr(r, f) for f in r.__slots__}, "name": "single", "init": init,
           "segments": tuple(segments), "iframes": iframes}),), created_at=CREATED)
    text = render_media(single, "single")
    check_media(single, single.renditions[0], text, "")
    assert text.count("@") == 2  # the map and the first segment; the rest are contiguous
    (rdir / "single.m3u8").write_text(text)
    assert decode(rdir / "single.m3u8") == decode(rdir / "index.m3u8")
    (rdir / "single-iframes.m3u8").write_text(render_iframes(single, "single"))
    assert len(decode(rdir / "single-iframes.m3u8")) > 0


def test_is_video_id_is_the_schemas_rule() -> None:
    from reelcdn.manifests.meta import is_video_id

    assert is_video_id("demo-1") and is_video_id("a" * 128) and is_video_id("x_Y-9")
    for bad in ("", "-a", "_a", "a" * 129, "a/b", "a.b", "..", "a b", "é", None, 7):
        assert not is_video_id(bad), bad
        if isinstance(bad, str):
            with pytest.raises(ValueError, match="video_id"):
                VideoMeta(video_id=bad, state="processing", duration=0.0, renditions=())
