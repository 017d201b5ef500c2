"""Demo videos synthesised with ffmpeg, so ``reelcdn up`` has something to serve offline.

Each demo video is generated from lavfi test sources (distinct pictures and a sine tone of a
distinct pitch, with the video id and a running timecode burnt in when the ffmpeg build can draw
text) and encoded in one ffmpeg run into a CMAF/fMP4 HLS ladder laid out exactly as the origin
serves it (docs/overview.md, "URL scheme")::

    {root}/v/{video_id}/master.m3u8            written here from meta.json
    {root}/v/{video_id}/meta.json              reelcdn.manifests.meta.VideoMeta
    {root}/v/{video_id}/.headers/meta.json     its Cache-Control (reelcdn.shield.sidecar)
    {root}/v/{video_id}/poster.jpg             a frame at ~1 s, 640 px wide
    {root}/v/{video_id}/{rendition}/index.m3u8 ffmpeg's VOD media playlist
    {root}/v/{video_id}/{rendition}/init.mp4   CMAF header
    {root}/v/{video_id}/{rendition}/seg_00000.m4s, seg_00001.m4s, ...
    {root}/catalog.txt                         ready video ids, one per line (load harness)
    {root}/.staging/demo/                      work in progress, renamed into v/ when done

H.264 (libx264) + AAC-LC because that is what hls.js, Safari and ExoPlayer all play. GOPs are
closed, fixed and aligned to the segment duration on every rendition (same split source, same
forced keyframe times), so players can switch rendition at any segment boundary.

ffmpeg comes from the ``imageio-ffmpeg`` wheel (a static build, installable by pip alone) unless
``IMAGEIO_FFMPEG_EXE`` points elsewhere. That wheel has no ffprobe, so everything this module
needs to know about the encoded media (codec strings, dimensions, keyframes) is read from the MP4
boxes directly by the small parser below, which the transcoder can reuse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from reelcdn.manifests.meta import (
    InitSection,
    Rendition,
    Segment,
    VideoMeta,
    average_bandwidth,
    peak_bandwidth,
    renditions_sorted,
    sha256_digest,
)
from reelcdn.origin.cache_control import META_CACHE_READY
from reelcdn.origin.storage import write_sidecar

__all__ = [
    "DEFAULT_LADDER",
    "DemoError",
    "InitInfo",
    "LadderRung",
    "MediaPlaylist",
    "build_rendition",
    "ffmpeg_exe",
    "ffmpeg_has_drawtext",
    "hls_rung_args",
    "parse_init",
    "parse_media_playlist",
    "render_master_playlist",
    "run_ffmpeg",
    "segment_starts_with_keyframe",
    "synthesise_demo_videos",
    "write_catalog",
]

SEGMENT_SECONDS = 2.0
FRAME_RATE = 30
POSTER_WIDTH = 640
STAGING_DIR = ".staging/demo"
"""Under the origin root, beside ``v/``: same filesystem, so the final rename is atomic.
Only this module writes there, so anything but the lock left in it is a crashed run's."""


class DemoError(RuntimeError):
    """Synthesis failed; ``stderr`` holds the tail of ffmpeg's error output when it ran."""

    def __init__(self, message: str, stderr: str = "") -> None:
        self.stderr = stderr
        super().__init__(f"{message}\n--- ffmpeg stderr (tail) ---\n{stderr}" if stderr
                         else message)


@dataclasses.dataclass(frozen=True, slots=True)
class LadderRung:
    """One rendition to encode: name, frame size, and target bit rates (bit/s)."""

    name: str
    width: int
    height: int
    video_bitrate: int
    audio_bitrate: int = 128_000
    profile: str = "high"

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", self.name):
            raise ValueError(f"ladder rung name {self.name!r}: use letters, digits, '_' or '-'")
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(f"ladder rung {self.name}: width and height must be positive "
                             f"and even for 4:2:0 video (got {self.width}x{self.height})")
        if self.video_bitrate <= 0 or self.audio_bitrate <= 0:
            raise ValueError(f"ladder rung {self.name}: bit rates must be positive")


DEFAULT_LADDER: tuple[LadderRung, ...] = (
    LadderRung("360p", 640, 360, 600_000, 96_000, "main"),
    LadderRung("720p", 1280, 720, 2_000_000, 128_000),
    LadderRung("1080p", 1920, 1080, 4_500_000, 128_000),
)


# --------------------------------------------------------------------------- ffmpeg


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped by the ``imageio-ffmpeg`` wheel (or its env override)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise DemoError("ffmpeg is needed for demo videos: pip install imageio-ffmpeg") from exc
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:
        raise DemoError(f"imageio-ffmpeg found no ffmpeg binary: {exc}") from exc


def _tail(text: str, lines: int = 25, chars: int = 4000) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-chars:]


def run_ffmpeg(exe: str, args: Sequence[str], *, timeout: float, what: str,
               while_running: Callable[[], object] | None = None,
               interval: float = 0.2) -> None:
    """Run ffmpeg quietly (errors only) and raise DemoError with its stderr when it fails.

    *while_running* is called every *interval* seconds while ffmpeg runs, and once more after
    it exits successfully (the transcoder publishes what ffmpeg has finished so far); if it
    raises, ffmpeg is killed and the exception propagates.
    """
    cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as stderr_file:  # a file, not a pipe: never a full buffer
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=stderr_file)
        except OSError as exc:
            raise DemoError(f"{what}: cannot run ffmpeg ({exe}): {exc}") from exc

        def stderr_text() -> str:
            stderr_file.seek(0)
            return stderr_file.read().decode(errors="replace")

        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoError(f"{what}: ffmpeg did not finish within {timeout:.0f} s",
                                    _tail(stderr_text()))
                try:
                    proc.wait(timeout=min(left, interval) if while_running else left)
                    break
                except subprocess.TimeoutExpired:
                    if while_running is not None:
                        while_running()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise DemoError(f"{what}: ffmpeg exited with status {proc.returncode}",
                            _tail(stderr_text()) or "(no output)")
    if while_running is not None:
        while_running()


@functools.cache
def ffmpeg_has_drawtext(exe: str) -> bool:
    """Whether this ffmpeg can draw text: built with drawtext *and* a font it can find.

    A build can list the filter yet fail at run time when fontconfig finds no font (a bare
    container), so this renders one tiny frame rather than trusting ``-filters``.
    """
    try:
        run_ffmpeg(exe, ["-f", "lavfi", "-i", "color=c=black:s=64x64:d=0.04",
                          "-vf", "drawtext=text='x':fontsize=12", "-f", "null", "-"],
                    timeout=30, what="drawtext probe")
    except DemoError:
        return False
    return True


# --------------------------------------------------------------------------- MP4 boxes


def _iter_boxes(
    data: bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[str, int, int]]:
    """Yield (type, payload_start, box_end) for the boxes laid end to end in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"truncated or corrupt MP4 box {kind!r} at offset {pos}")
        yield kind, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: str) -> tuple[int, int] | None:
    for k, s, e in _iter_boxes(data, start, end):
        if k == kind:
            return s, e
    return None


def _path(data: bytes, start: int, end: int, *kinds: str) -> tuple[int, int] | None:
    span: tuple[int, int] | None = (start, end)
    for kind in kinds:
        if span is None:
            return None
        span = _child(data, span[0], span[1], kind)
    return span


def _descriptor(data: bytes, pos: int) -> tuple[int, int, int]:
    """An MPEG-4 descriptor at *pos*: (tag, payload_start, payload_end)."""
    tag = data[pos]
    pos += 1
    length = 0
    for _ in range(4):
        byte = data[pos]
        pos += 1
        length = (length << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, pos, pos + length


def _esds_codec(data: bytes, start: int, end: int) -> str:
    """RFC 6381 string (``mp4a.40.2``) from an ``esds`` box payload."""
    tag, pos, _ = _descriptor(data, start + 4)  # skip version/flags
    if tag != 0x03:
        raise ValueError("esds: no ES_Descriptor")
    flags = data[pos + 2]
    pos += 3
    if flags & 0x80:
        pos += 2
    if flags & 0x40:
        pos += 1 + data[pos]
    if flags & 0x20:
        pos += 2
    tag, pos, dend = _descriptor(data, pos)
    if tag != 0x04:
        raise ValueError("esds: no DecoderConfigDescriptor")
    object_type = data[pos]
    pos += 13
    if pos < dend and data[pos] == 0x05:
        _, dsi, _ = _descriptor(data, pos)
        aot = data[dsi] >> 3
        if aot == 31:  # escape: 6 more bits
            aot = 32 + (((data[dsi] & 0x07) << 3) | (data[dsi + 1] >> 5))
        return f"mp4a.{object_type:02x}.{aot}"
    return f"mp4a.{object_type:02x}"


@dataclasses.dataclass(frozen=True, slots=True)
class InitInfo:
    """What a CMAF init segment says about its tracks (enough for a master playlist)."""

    video_codec: str | None
    audio_codec: str | None
    width: int
    height: int
    video_track_id: int | None
    default_sample_flags: dict[int, int]  # track_ID -> trex default_sample_flags

    @property
    def codecs(self) -> str:
        """The ``CODECS`` attribute value: video first, then audio."""
        return ",".join(c for c in (self.video_codec, self.audio_codec) if c)


def parse_init(data: bytes) -> InitInfo:
    """Read codec strings, frame size and fragment defaults from an init segment (ftyp+moov).

    The avc1 string comes from the ``avcC`` box (profile, constraint flags, level bytes as the
    encoder actually wrote them), which is what RFC 6381 asks for; the AAC object type from
    ``esds``. Raises ValueError when there is no moov or the boxes are malformed.
    """
    moov = _child(data, 0, len(data), "moov")
    if moov is None:
        raise ValueError("init segment has no moov box")
    video_codec = audio_codec = None
    width = height = 0
    video_track: int | None = None
    for kind, s, e in _iter_boxes(data, *moov):
        if kind != "trak":
            continue
        tkhd = _child(data, s, e, "tkhd")
        hdlr = _path(data, s, e, "mdia", "hdlr")
        stsd = _path(data, s, e, "mdia", "minf", "stbl", "stsd")
        if tkhd is None or hdlr is None or stsd is None:
            continue
        version = data[tkhd[0]]
        track_id = int.from_bytes(
            data[tkhd[0] + (20 if version == 1 else 12):][:4], "big")
        handler = data[hdlr[0] + 8:hdlr[0] + 12].decode("latin-1")
        for entry, es, ee in _iter_boxes(data, stsd[0] + 8, stsd[1]):
            if handler == "vide" and video_codec is None:
                width = int.from_bytes(data[es + 24:es + 26], "big")
                height = int.from_bytes(data[es + 26:es + 28], "big")
                video_track = track_id
                config = _child(data, es + 78, ee, "avcC")
                if entry in ("avc1", "avc3") and config is not None:
                    p, c, lv = data[config[0] + 1:config[0] + 4]
                    video_codec = f"{entry}.{p:02x}{c:02x}{lv:02x}"
                else:
                    video_codec = entry
            elif handler == "soun" and audio_codec is None:
                sound_version = int.from_bytes(data[es + 8:es + 10], "big")
                children = es + 28 + {1: 16, 2: 36}.get(sound_version, 0)
                esds = _child(data, children, ee, "esds") if entry == "mp4a" else None
                audio_codec = _esds_codec(data, *esds) if esds else entry
    defaults: dict[int, int] = {}
    mvex = _child(data, *moov, "mvex")
    if mvex is not None:
        for kind, s, _e in _iter_boxes(data, *mvex):
            if kind == "trex":
                defaults[int.from_bytes(data[s + 4:s + 8], "big")] = int.from_bytes(
                    data[s + 20:s + 24], "big")
    return InitInfo(video_codec, audio_codec, width, height, video_track, defaults)


_NON_SYNC = 0x0001_0000


def segment_starts_with_keyframe(init: InitInfo, data: bytes) -> bool:
    """Whether the first video sample of a media segment is a sync sample (an IDR frame).

    Reads the first ``moof``'s video ``traf``: the first sample's flags come from ``trun``
    (first_sample_flags or per-sample flags), else ``tfhd``'s defaults, else ``trex``'s
    (ISO/IEC 14496-12 §8.8). A segment with no video track counts as independent.
    """
    if init.video_track_id is None:
        return True
    moof = _child(data, 0, len(data), "moof")
    if moof is None:
        raise ValueError("media segment has no moof box")
    for kind, s, e in _iter_boxes(data, *moof):
        if kind != "traf":
            continue
        tfhd = _child(data, s, e, "tfhd")
        if tfhd is None:
            continue
        tf_flags = int.from_bytes(data[tfhd[0] + 1:tfhd[0] + 4], "big")
        if int.from_bytes(data[tfhd[0] + 4:tfhd[0] + 8], "big") != init.video_track_id:
            continue
        flags = init.default_sample_flags.get(init.video_track_id, 0)
        pos = tfhd[0] + 8
        for bit, width in ((0x01, 8), (0x02, 4), (0x08, 4), (0x10, 4)):
            if tf_flags & bit:
                pos += width
        if tf_flags & 0x20:
            flags = int.from_bytes(data[pos:pos + 4], "big")
        trun = _child(data, s, e, "trun")
        if trun is None:
            return False
        tr_flags = int.from_bytes(data[trun[0] + 1:trun[0] + 4], "big")
        pos = trun[0] + 8  # version/flags, sample_count
        if tr_flags & 0x01:
            pos += 4
        if tr_flags & 0x04:
            flags = int.from_bytes(data[pos:pos + 4], "big")
        elif tr_flags & 0x400:
            pos += 4 * (bool(tr_flags & 0x100) + bool(tr_flags & 0x200))
            flags = int.from_bytes(data[pos:pos + 4], "big")
        return not flags & _NON_SYNC
    return False


# --------------------------------------------------------------------------- playlists


@dataclasses.dataclass(frozen=True, slots=True)
class MediaPlaylist:
    """The parts of a (VOD, fMP4) media playlist that meta.json records."""

    init_uri: str | None
    segments: tuple[tuple[str, float], ...]  # (uri, EXTINF duration)


_MAP_URI = re.compile(r'#EXT-X-MAP:.*?URI="([^"]+)"')


def parse_media_playlist(text: str) -> MediaPlaylist:
    """EXT-X-MAP URI and (uri, duration) pairs of a media playlist such as ffmpeg writes.

    Byte-range segments are not expected from ffmpeg's single-file-per-segment output and are
    rejected so they are never silently recorded as whole files.
    """
    init_uri = None
    segments: list[tuple[str, float]] = []
    duration: float | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#EXT-X-MAP:"):
            m = _MAP_URI.match(line)
            if m is None:
                raise ValueError(f"EXT-X-MAP without URI: {line}")
            init_uri = m.group(1)
        elif line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:"):].split(",", 1)[0])
        elif line.startswith("#EXT-X-BYTERANGE"):
            raise ValueError("byte-range segments are not supported here")
        elif not line.startswith("#"):
            if duration is None:
                raise ValueError(f"segment {line!r} has no EXTINF")
            segments.append((line, duration))
            duration = None
    return MediaPlaylist(init_uri, tuple(segments))


def render_master_playlist(meta: VideoMeta) -> str:
    """The multivariant playlist for *meta*, lowest rendition first (players start there).

    Renditions here carry muxed audio, so no EXT-X-MEDIA groups are written. The manifests
    library will render per-request variants at the edge; this is the plain origin copy.
    """
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in renditions_sorted(meta.renditions):
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={r.bandwidth},AVERAGE-BANDWIDTH={r.average_bandwidth},"
            f'CODECS="{r.codecs}",RESOLUTION={r.resolution},FRAME-RATE={r.frame_rate:.3f}'
        )
        lines.append(f"{r.name}/index.m3u8")
    return "\n".join(lines) + "\n"


def build_rendition(rendition_dir: Path, name: str, frame_rate: float,
                    known: Mapping[str, Segment] | None = None) -> Rendition:
    """Describe an encoded rendition directory (index.m3u8 + init + segments) for meta.json.

    Durations come from the media playlist's EXTINF values (what the muxer measured), sizes and
    digests from the files, codecs/dimensions from the init segment, independence from each
    segment's first video sample. *known*: segments already described by uri (a growing
    rendition described again as ffmpeg adds to it), reused when the playlist gives the same
    duration, so each file is read and hashed once.
    """
    playlist = parse_media_playlist((rendition_dir / "index.m3u8").read_text())
    if playlist.init_uri is None:
        raise ValueError(f"{rendition_dir}/index.m3u8 has no EXT-X-MAP (not fMP4?)")
    if not playlist.segments:
        raise ValueError(f"{rendition_dir}/index.m3u8 lists no segments")
    init_bytes = (rendition_dir / playlist.init_uri).read_bytes()
    info = parse_init(init_bytes)
    if info.video_codec is None:
        raise ValueError(f"{rendition_dir}/{playlist.init_uri} has no video track")
    segments = []
    for uri, duration in playlist.segments:
        seen = known.get(uri) if known else None
        if seen is not None and seen.duration == duration:
            segments.append(seen)
            continue
        data = (rendition_dir / uri).read_bytes()  # a few MB at most: read once, use twice
        segments.append(Segment(uri=uri, duration=duration, size=len(data),
                                digest=sha256_digest(data),
                                independent=segment_starts_with_keyframe(info, data)))
    return Rendition(
        name=name,
        width=info.width,
        height=info.height,
        bandwidth=peak_bandwidth(segments),
        average_bandwidth=average_bandwidth(segments),
        codecs=info.codecs,
        video_codec=info.video_codec,
        audio_codec=info.audio_codec,
        frame_rate=float(frame_rate),
        init=InitSection(uri=playlist.init_uri, size=len(init_bytes),
                         digest=sha256_digest(init_bytes)),
        segments=tuple(segments),
    )


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True, slots=True)
class _Pattern:
    """A lavfi picture: ``graph(width, height, fps)`` -> a filter chain (or small graph) whose
    one unlabelled output is the picture at that size; ``tone_hz`` is the sine it comes with."""

    name: str
    tone_hz: int
    graph: Callable[[int, int, int], str]


def _testsrc2(w: int, h: int, fps: int) -> str:
    return f"testsrc2=s={w}x{h}:r={fps}"


def _bars_with_box(w: int, h: int, fps: int) -> str:
    # A white square sweeping across HD bars: obvious motion, and cheap to generate.
    side = h // 6
    return (f"smptehdbars=s={w}x{h}:r={fps}[bars];color=c=white:s={side}x{side}:r={fps}[box];"
            f"[bars][box]overlay=x='mod(t*{w // 4},W-w)':y='H/2-h/2+sin(t*3)*H/4':shortest=1")


def _life(w: int, h: int, fps: int) -> str:
    # 8-pixel cells (generated at 1/8 size, scaled up with nearest neighbour): cheap to make
    # and, without "mold" trails, not so noisy that x264 spends seconds on it.
    return (f"life=s={max(2, w // 8)}x{max(2, h // 8)}:r={fps}:ratio=0.1:seed=7:"
            f"life_color=#40e0a0:death_color=#202048,scale={w}:{h}:flags=neighbor")


def _mandelbrot(w: int, h: int, fps: int) -> str:
    # Rendering fractals at 1080p costs ~1 s per second of video; a third of the size is enough.
    return f"mandelbrot=s={w // 3}x{h // 3}:r={fps},scale={w}:{h}:flags=bicubic"


_PATTERNS: tuple[_Pattern, ...] = (
    _Pattern("testsrc2", 440, _testsrc2),
    _Pattern("bars", 550, _bars_with_box),
    _Pattern("life", 660, _life),
    _Pattern("mandelbrot", 330, _mandelbrot),
)


def _filtergraph(video_id: str, pattern: _Pattern, rungs: Sequence[LadderRung], src_w: int,
                 src_h: int, fps: int, duration: float, poster_at: float, text: bool) -> str:
    """Source -> (timecode) -> split into one branch per rung (scaled, labelled) + a poster."""
    chains = [pattern.graph(src_w, src_h, fps) + f",trim=duration={duration:.3f},format=yuv420p"]
    if text:
        size = max(12, src_h // 16)
        chains[0] += (f",drawtext=text='{video_id}  %{{pts\\:hms}}':fontsize={size}:"
                      f"fontcolor=white:box=1:boxcolor=black@0.6:boxborderw={size // 4}:"
                      f"x={size}:y={size}")
    labels = [f"s{i}" for i in range(len(rungs))] + ["sp"]
    chains[0] += f",split={len(labels)}" + "".join(f"[{x}]" for x in labels)
    for i, rung in enumerate(rungs):
        steps = []
        if (rung.width, rung.height) != (src_w, src_h):
            steps.append(f"scale={rung.width}:{rung.height}:flags=bicubic")
        if text:
            size = max(10, rung.height // 20)
            steps.append(f"drawtext=text='{rung.name}':fontsize={size}:fontcolor=yellow:"
                         f"box=1:boxcolor=black@0.6:x=w-tw-{size}:y=h-th-{size}")
        chains.append(f"[s{i}]{','.join(steps) or 'null'}[v{i}]")
    chains.append(f"[sp]trim=start={poster_at:.3f},setpts=PTS-STARTPTS,"
                  f"scale={POSTER_WIDTH}:-2[poster]")
    return ";".join(chains)


def hls_rung_args(rung: LadderRung, out: Path, *, video: str, audio: str | None, gop: int,
                  segment_seconds: float, preset: str, duration: float | None = None,
                  x264_params: str | None = None, growing: bool = False) -> list[str]:
    """ffmpeg output options encoding one rung into *out* as CMAF/fMP4 HLS.

    H.264 + AAC-LC, ``index.m3u8`` + ``init.mp4`` + ``seg_%05d.m4s``; keyframes forced at every
    multiple of *segment_seconds* of the output timeline (no scene cuts), so rungs encoded from
    the same timeline, in one run or several, switch cleanly at every segment boundary.
    *video* / *audio* are ``-map`` specifiers (``[v0]``, ``0:a``; *audio* None for none).
    Shared by the demo synthesiser and the transcoder (``reelcdn.origin.transcode``).

    *growing*: for a reader that takes segments while ffmpeg still runs. A VOD playlist is
    written only at the end; an EVENT one after every segment is closed, and ``temp_file``
    makes each segment (and the playlist) appear under its name only once whole. The playlist
    ends ``EVENT`` + ``EXT-X-ENDLIST`` (:func:`as_vod_playlist` turns it into VOD).
    """
    args = [
        "-map", video, *(["-map", audio] if audio else []),
        "-c:v", "libx264", "-preset", preset, "-profile:v", rung.profile,
        "-pix_fmt", "yuv420p",
        "-b:v", str(rung.video_bitrate), "-maxrate", str(int(rung.video_bitrate * 1.1)),
        # A 1 s VBV buffer keeps each 2 s segment's peak near maxrate (BANDWIDTH honest).
        "-bufsize", str(rung.video_bitrate),
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
        "-force_key_frames", f"expr:gte(t,n_forced*{segment_seconds:g})",
        *(["-x264-params", x264_params] if x264_params else []),
    ]
    if audio:
        args += ["-c:a", "aac", "-b:a", str(rung.audio_bitrate), "-ac", "2", "-ar", "48000"]
    if duration is not None:
        args += ["-t", f"{duration:.3f}"]
    args += [
        "-f", "hls", "-hls_time", f"{segment_seconds:g}",
        "-hls_playlist_type", "event" if growing else "vod",
        "-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4",
        "-hls_flags", "independent_segments+temp_file" if growing else "independent_segments",
        "-hls_segment_filename", str(out / "seg_%05d.m4s"),
        str(out / "index.m3u8"),
    ]
    return args


def as_vod_playlist(path: Path) -> None:
    """Rewrite a finished EVENT playlist (``growing`` above) as the VOD playlist it now is:
    the same lines, ``EXT-X-PLAYLIST-TYPE:VOD``; a playlist without ENDLIST is left alone."""
    text = path.read_text()
    if "#EXT-X-ENDLIST" in text and "#EXT-X-PLAYLIST-TYPE:EVENT\n" in text:
        path.write_text(text.replace("#EXT-X-PLAYLIST-TYPE:EVENT\n",
                                     "#EXT-X-PLAYLIST-TYPE:VOD\n", 1))


def _ffmpeg_args(video_id: str, pattern: _Pattern, rungs: Sequence[LadderRung], out: Path, *,
                 duration: float, fps: int, segment_seconds: float, preset: str,
                 text: bool) -> list[str]:
    """One ffmpeg invocation: source decoded/generated once, split to every rung and a poster."""
    src_w = max(r.width for r in rungs)
    src_h = max(r.height for r in rungs)
    gop = max(1, round(segment_seconds * fps))
    poster_at = min(1.0, duration / 2)
    # Video is generated inside -filter_complex (a source may be a graph of several filters);
    # audio is an ordinary lavfi input that every output maps and encodes.
    args = [
        "-f", "lavfi", "-t", f"{duration:.3f}",
        "-i", f"sine=frequency={pattern.tone_hz}:beep_factor=2:sample_rate=48000",
        "-filter_complex",
        _filtergraph(video_id, pattern, rungs, src_w, src_h, fps, duration, poster_at, text),
    ]
    for i, rung in enumerate(rungs):
        args += hls_rung_args(rung, out / rung.name, video=f"[v{i}]", audio="0:a", gop=gop,
                              segment_seconds=segment_seconds, preset=preset,
                              duration=duration)
    args += ["-map", "[poster]", "-frames:v", "1", "-q:v", "3", "-update", "1",
             str(out / "poster.jpg")]
    return args


# --------------------------------------------------------------------------- synthesis


def _natural_key(video_id: str) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", video_id))


def _ready(video_dir: Path) -> bool:
    """A video counts as present only when its meta.json parses and says ``ready``."""
    try:
        return VideoMeta.read(video_dir / "meta.json").ready
    except (OSError, ValueError):
        return False


def write_catalog(origin_root: Path) -> list[str]:
    """Write ``{root}/catalog.txt``: every ready video under ``v/``, one id per line.

    All ready videos, not only demo ones, so the load harness sees uploads too; natural order
    (demo-2 before demo-10); written atomically so the harness never reads half a list.
    """
    vdir = origin_root / "v"
    ids = sorted((d.name for d in vdir.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and _ready(d)), key=_natural_key) if vdir.is_dir() else []
    fd, tmp = tempfile.mkstemp(prefix=".catalog-", dir=origin_root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{i}\n" for i in ids))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the harness may run as another user
        os.replace(tmp, origin_root / "catalog.txt")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return ids


@contextlib.contextmanager
def _root_lock(staging: Path) -> Iterator[None]:
    """One synthesiser per origin root at a time (two ``reelcdn up`` sharing a data dir)."""
    with open(staging / "demo.lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _encode_video(exe: str, video_id: str, pattern: _Pattern, rungs: Sequence[LadderRung],
                  work: Path, *, duration: float, fps: int, segment_seconds: float,
                  preset: str, timeout: float) -> VideoMeta:
    """Encode one video into *work* (a staging dir) and write its meta.json and master."""
    for rung in rungs:
        (work / rung.name).mkdir()
    args = _ffmpeg_args(video_id, pattern, rungs, work, duration=duration, fps=fps,
                        segment_seconds=segment_seconds, preset=preset,
                        text=ffmpeg_has_drawtext(exe))
    run_ffmpeg(exe, args, timeout=timeout, what=f"{video_id}: encoding")
    try:
        renditions = [build_rendition(work / r.name, r.name, fps) for r in rungs]
    except (OSError, ValueError) as exc:
        raise DemoError(f"{video_id}: ffmpeg's output is not what was expected: {exc}") from exc
    if not (work / "poster.jpg").is_file():
        raise DemoError(f"{video_id}: ffmpeg wrote no poster")
    meta = VideoMeta(
        video_id=video_id,
        state="ready",
        duration=round(max(r.duration for r in renditions), 6),
        poster="poster.jpg",
        renditions=renditions_sorted(renditions),
    )
    (work / "master.m3u8").write_text(render_master_playlist(meta))
    meta.write(work / "meta.json")
    # Ready from the start: the day-long freshness the transcoder gives a ready meta.json.
    write_sidecar(work / "meta.json", cache_control=META_CACHE_READY)
    return meta


def synthesise_demo_videos(
    origin_root: Path,
    *,
    count: int = 3,
    duration: float = 8.0,
    renditions: Sequence[LadderRung] = DEFAULT_LADDER,
    force: bool = False,
    log: Callable[[str], object] = print,
    preset: str = "superfast",
    frame_rate: int = FRAME_RATE,
    segment_seconds: float = SEGMENT_SECONDS,
    timeout: float = 600.0,
) -> list[str]:
    """Make ``demo-1`` … ``demo-{count}`` under ``{origin_root}/v/`` and return their ids.

    Idempotent: a video whose meta.json is ``ready`` is left alone unless *force*. Each video
    is encoded in a staging directory beside ``v/`` and renamed into place when complete, so a
    reader (or a crash) never sees half a video. ``catalog.txt`` is rewritten at the end.
    Raises DemoError (with ffmpeg's stderr) when encoding fails; ValueError for bad arguments.

    *preset* is the x264 preset: ``superfast`` because these clips exist to be served, not
    watched closely, and it encodes the default 3 videos x 3 renditions x 8 s about a third
    faster than ``veryfast`` on two cores. *timeout* bounds each ffmpeg run (seconds).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0 (got {count})")
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be a positive number of seconds (got {duration})")
    if frame_rate <= 0 or segment_seconds <= 0:
        raise ValueError("frame_rate and segment_seconds must be positive")
    rungs = tuple(renditions)
    if not rungs:
        raise ValueError("renditions: at least one ladder rung is needed")
    for rung in rungs:
        rung.validate()
    if len({r.name for r in rungs}) != len(rungs):
        raise ValueError("renditions: rung names must be unique")

    origin_root = Path(origin_root)
    vdir = origin_root / "v"
    staging = origin_root / STAGING_DIR
    try:
        vdir.mkdir(parents=True, exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"cannot create the origin folders under {origin_root}: {exc}") from exc
    ids = [f"demo-{i}" for i in range(1, count + 1)]
    exe: str | None = None
    with _root_lock(staging):
        for leftover in staging.iterdir():  # a run killed mid-encode (we hold the lock)
            if leftover.name != "demo.lock":
                shutil.rmtree(leftover, ignore_errors=True)
        for n, video_id in enumerate(ids):
            final = vdir / video_id
            if not force and _ready(final):
                log(f"{video_id}: ready, kept")
                continue
            exe = exe or ffmpeg_exe()
            pattern = _PATTERNS[n % len(_PATTERNS)]
            if n >= len(_PATTERNS):  # cycle the pictures, but keep every tone distinct
                pattern = dataclasses.replace(pattern, tone_hz=pattern.tone_hz + 110 * n)
            started = time.monotonic()
            log(f"{video_id}: encoding {pattern.name}, {duration:g} s, "
                f"{', '.join(r.name for r in rungs)}")
            work = Path(tempfile.mkdtemp(prefix=f"{video_id}-", dir=staging))
            try:
                # mkdtemp makes 0700; the tree is public content that another user's server
                # (nginx in the benchmarks) must be able to read once it is renamed into v/.
                os.chmod(work, 0o755)
                meta = _encode_video(exe, video_id, pattern, rungs, work, duration=duration,
                                     fps=frame_rate, segment_seconds=segment_seconds,
                                     preset=preset, timeout=timeout)
                old = None
                if final.exists():
                    old = Path(tempfile.mkdtemp(prefix=f"old-{video_id}-", dir=staging))
                    os.rename(final, old / video_id)
                os.rename(work, final)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            finally:
                if work.exists():
                    shutil.rmtree(work, ignore_errors=True)
            log(f"{video_id}: ready in {time.monotonic() - started:.1f} s ("
                + ", ".join(f"{r.name} {r.codecs} {r.bandwidth // 1000} kbit/s"
                            for r in meta.renditions) + ")")
        write_catalog(origin_root)
    return ids
