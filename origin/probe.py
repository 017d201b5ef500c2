"""What an uploaded source file is, and whether the transcoder should take it.

:func:`probe` reads a file with PyAV (libavformat/libavcodec in-process, no ffprobe needed:
the imageio-ffmpeg wheel ships none): which streams it has, the picture size as displayed
(rotation applied), duration and frame rate. It demuxes every packet (no decoding beyond the
first picture, so a 200 MB file costs about a second of reading) because headers lie: a file
cut short keeps the duration its header announced, and only the data shows where it ends.

:func:`validate` applies the platform's limits. Both raise :class:`InvalidSource` whose
``reason`` is written for the person who uploaded the file ("too long: 312 s, the limit is
180 s"), never a traceback: a poison file (random bytes named ``.mp4``, a truncated upload, a
picture, an audio file) is an expected input of an upload service.
"""

from __future__ import annotations

import dataclasses
import math
import os

import av

__all__ = ["MAX_DURATION", "MAX_SIZE", "InvalidSource", "SourceInfo", "probe", "validate"]

MAX_DURATION = 180.0
"""Seconds: a short-video platform's limit."""
MAX_SIZE = 200 * 1000 * 1000
"""Bytes (200 MB)."""
MAX_SIDE = 4096
"""Pixels on the long side of the displayed picture (4K DCI); beyond it x264 levels end."""
MIN_DURATION = 0.1
TRUNCATION_SLACK = 0.5
"""Seconds the data may end before the header's duration before the file counts as cut."""


class InvalidSource(ValueError):
    """The source cannot or must not be transcoded; ``reason`` says why, for a person."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclasses.dataclass(frozen=True, slots=True)
class SourceInfo:
    """What :func:`probe` found. ``width``/``height`` are the picture as displayed (a phone's
    portrait video stored 1920x1080 with a 90° rotation is 1080x1920 here)."""

    has_video: bool
    width: int
    height: int
    duration: float
    frame_rate: float
    has_audio: bool
    video_codec: str | None = None
    audio_codec: str | None = None
    rotation: int = 0
    video_frames: int = 0
    format_name: str = ""

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # PyAV prefixes "[Errno 1094995529] "; the file name is the caller's, not news to them.
    if text.startswith("[Errno") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(": '", 1)[0].rstrip(".")


def _seconds(ts: int | None, time_base: object) -> float | None:
    if ts is None or time_base is None:
        return None
    return float(ts * time_base)


def probe(path: str | os.PathLike[str]) -> SourceInfo:
    """Streams, displayed size, duration and frame rate of *path*; InvalidSource when it cannot
    be read (not a media file, truncated, undecodable)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidSource(f"no such file: {path}")
    if os.path.getsize(path) == 0:
        raise InvalidSource("empty file: 0 bytes")
    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as exc:  # libav's errors for hostile input are many kinds; all mean this
        raise InvalidSource(f"truncated or unreadable file: not a media file ffmpeg can read "
                            f"({_reason(exc)})") from None
    try:
        return _probe_open(container)
    except InvalidSource:
        raise
    except Exception as exc:
        raise InvalidSource(f"truncated or unreadable file: {_reason(exc)}") from None
    finally:
        container.close()


def _probe_open(container: av.container.InputContainer) -> SourceInfo:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    declared = container.duration / 1e6 if container.duration else None
    fmt = container.format.name if container.format else ""
    if video is None:
        return SourceInfo(False, 0, 0, declared or 0.0, 0.0, audio is not None,
                          audio_codec=audio.codec_context.name if audio else None,
                          format_name=fmt)
    streams = [s for s in (video, audio) if s is not None]
    ends: dict[int, float] = {}
    starts: dict[int, float] = {}
    frames = 0
    first = None
    try:
        for packet in container.demux(streams):
            if packet.size == 0 and packet.pts is None:
                continue  # the flush packet at the end of each stream
            index = packet.stream.index
            begin = _seconds(packet.pts if packet.pts is not None else packet.dts,
                             packet.time_base)
            if begin is not None:
                starts[index] = min(starts.get(index, begin), begin)
                end = begin + (_seconds(packet.duration, packet.time_base) or 0.0)
                ends[index] = max(ends.get(index, end), end)
            if packet.stream is video:
                frames += 1
                if first is None:
                    decoded = packet.decode()
                    if decoded:
                        first = decoded[0]
    except av.error.EOFError:
        pass
    if first is None:  # frames held back by the decoder (B-frames): drain it
        try:
            first = next(iter(video.codec_context.decode(None)), None)
        except Exception:  # noqa: BLE001 - nothing decoded is reported just below
            first = None
    if first is None:
        raise InvalidSource("truncated or unreadable file: no picture could be decoded "
                            f"from the {video.codec_context.name} video stream")
    measured = max((ends[i] - starts.get(i, 0.0) for i in ends), default=0.0)
    if declared is not None and measured + TRUNCATION_SLACK < declared * 0.98:
        raise InvalidSource(f"truncated or unreadable file: the header says {declared:.1f} s "
                            f"but the data ends at {measured:.1f} s")
    duration = measured or declared or 0.0
    rotation = int(round(getattr(first, "rotation", 0) or 0)) % 360
    width, height = first.width, first.height
    if rotation in (90, 270):
        width, height = height, width
    rate = video.average_rate or video.guessed_rate
    frame_rate = float(rate) if rate else 0.0
    if not frame_rate or not math.isfinite(frame_rate) or frame_rate > 1000:
        frame_rate = frames / duration if duration > 0 else 0.0
    return SourceInfo(
        has_video=True, width=width, height=height, duration=round(duration, 6),
        frame_rate=frame_rate, has_audio=audio is not None,
        video_codec=video.codec_context.name,
        audio_codec=audio.codec_context.name if audio else None,
        rotation=rotation, video_frames=frames, format_name=fmt,
    )


def validate(info: SourceInfo, size: int, max_duration: float = MAX_DURATION,
             max_size: int = MAX_SIZE, max_side: int = MAX_SIDE) -> None:
    """Raise InvalidSource with a reason a person can act on unless *info* is acceptable."""
    if size > max_size:
        raise InvalidSource(f"too big: {size / 1e6:.1f} MB, the limit is {max_size / 1e6:g} MB")
    if not info.has_video:
        what = "an audio file" if info.has_audio else "no video stream"
        raise InvalidSource(f"not a video: {what}" + (", no video stream" if info.has_audio
                                                      else ""))
    if info.video_frames <= 1:
        raise InvalidSource("not a video: a single still picture")
    if info.width < 2 or info.height < 2:
        raise InvalidSource(f"not a video: no picture size ({info.width}x{info.height})")
    if max(info.width, info.height) > max_side:
        raise InvalidSource(f"picture too large: {info.width}x{info.height}, the limit is "
                            f"{max_side} pixels on the long side")
    if info.duration < MIN_DURATION:
        raise InvalidSource(f"too short: {info.duration:.2f} s")
    if info.duration > max_duration:
        shown = f"{info.duration:.0f}" if info.duration >= max_duration + 1 else (
            f"{info.duration:.1f}")  # never "too long: 180 s, the limit is 180 s"
        raise InvalidSource(f"too long: {shown} s, the limit is {max_duration:g} s")
    if not info.frame_rate > 0:
        raise InvalidSource("truncated or unreadable file: no frame rate could be measured")
