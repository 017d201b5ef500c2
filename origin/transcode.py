"""What a transcoding worker runs: one uploaded source in, one published HLS ladder out.

The queue and the worker loop live elsewhere; this is the library they call::

    result = transcode(source, video_id, store, Ladder(), workdir=scratch, on_publish=notify)

Steps, each visible to players as soon as it is done (the early publish):

1. :func:`~reelcdn.origin.probe.probe` and :func:`~reelcdn.origin.probe.validate` the source
   (:class:`~reelcdn.origin.probe.InvalidSource` with a reason for the uploader).
2. :meth:`Ladder.for_source` picks the rungs: never upscaled.
3. The whole ladder and the poster are encoded in **one ffmpeg run** (the source decoded once,
   split per rung). While it runs, the **lowest rung** is published segment by segment as
   ffmpeg closes each one (:class:`_EarlyPublisher`): its files, then ``meta.json`` with
   ``state: "processing"`` listing only that rung as far as it goes (``Cache-Control:
   max-age=2``); ``on_publish(meta)`` is called at the first one. The edge renders that rung
   as an EVENT playlist, so players start at the lowest quality seconds after the upload and
   reload it as it grows.
4. When ffmpeg is done, every rung is published whole
   (:meth:`~reelcdn.origin.storage.ObjectStore.publish_dir`) and ``meta.json`` is rewritten
   ``ready`` with the whole ladder (``Cache-Control: max-age=86400``: not ``immutable``, a
   deleted video's meta must go).

Why one run rather than the lowest rung first in a run of its own: decoding the source is
paid once, so the pipeline costs what one ffmpeg command for the ladder costs, and the first
segment is out after about one segment's worth of encoding rather than after the whole rung.

Every rung is H.264/AAC-LC CMAF (fMP4) HLS, ``init.mp4`` + ``seg_NNNNN.m4s`` + ``index.m3u8``,
with keyframes forced at every multiple of the segment duration (2 s) of the same timeline on
every rung (closed GOPs, no scene-cut keyframes), so a player can switch rendition at any
segment boundary. The encoder options are the
demo synthesiser's (:func:`reelcdn.origin.demo.hls_rung_args`) and the rendition description
(:func:`reelcdn.origin.demo.build_rendition`) too, plus a Merkle root per rendition over its
segment digests (:mod:`reelcdn.manifests.merkle`).

Idempotent: encoding is deterministic (same ffmpeg, same options, same source: same bytes), and
publishing replaces what is there, so a rerun for the same video id (a retried job) publishes
the same digests and does not trip over existing outputs. A video already ``ready`` is never
set back to ``processing`` by a rerun.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from reelcdn.manifests import merkle
from reelcdn.manifests.meta import (
    Rendition,
    Segment,
    VideoMeta,
    average_bandwidth,
    peak_bandwidth,
    renditions_sorted,
)
from reelcdn.origin.cache_control import (
    MEDIA_CACHE,
    META_CACHE_PROCESSING,
    META_CACHE_READY,
    PLAYLIST_CACHE,
    POSTER_CACHE,
)
from reelcdn.origin.demo import (
    DEFAULT_LADDER,
    POSTER_WIDTH,
    SEGMENT_SECONDS,
    DemoError,
    LadderRung,
    as_vod_playlist,
    build_rendition,
    ffmpeg_exe,
    hls_rung_args,
    render_master_playlist,
    run_ffmpeg,
)
from reelcdn.origin.probe import MAX_DURATION, MAX_SIZE, SourceInfo, probe, validate
from reelcdn.origin.storage import ObjectStore

__all__ = [
    "META_CACHE_PROCESSING",
    "META_CACHE_READY",
    "Ladder",
    "TranscodeError",
    "TranscodeResult",
    "transcode",
]

MIN_BITRATE = 100_000
X264_PARAMS = "sliced-threads=1:threads=4"
"""Deterministic output, so a rerun publishes the same bytes. x264's default frame threads
with a VBV (``-maxrate``/``-bufsize``, which keep BANDWIDTH honest) give different bytes from
run to run; slices do not, and a fixed count of 4 makes the bytes the same on any machine
(at ~0.1 % more bits than frame threads, measured at 1080p)."""


class TranscodeError(RuntimeError):
    """Encoding failed (not the source's fault, or not known to be); ``stderr`` has ffmpeg's
    tail. What was published before the failure stays published (a ``processing`` video)."""

    def __init__(self, message: str, stderr: str = "") -> None:
        self.stderr = stderr
        super().__init__(message)


def _even(x: float) -> int:
    return max(2, int(x) // 2 * 2)


@dataclasses.dataclass(frozen=True, slots=True)
class Ladder:
    """The rungs to encode, and how. A rung's ``height`` is its *short* side ("720p" is 720
    lines for landscape, 720 columns for a portrait phone video); its width is recomputed from
    the source's aspect ratio, so ``LadderRung.width`` only matters for validation.

    From configuration: :meth:`from_config` (``{"rungs": [{"name": "360p", "height": 360,
    "video_bitrate": 600000, "audio_bitrate": 96000, "profile": "main"}, ...],
    "segment_seconds": 2, "preset": "veryfast", "max_frame_rate": 60}``).
    """

    rungs: tuple[LadderRung, ...] = DEFAULT_LADDER
    segment_seconds: float = SEGMENT_SECONDS
    preset: str = "veryfast"
    max_frame_rate: float = 60.0

    def __post_init__(self) -> None:
        rungs = tuple(self.rungs)
        if not rungs:
            raise ValueError("ladder: at least one rung is needed")
        for rung in rungs:
            rung.validate()
        if len({r.name for r in rungs}) != len(rungs):
            raise ValueError("ladder: rung names must be unique")
        if not (self.segment_seconds > 0 and math.isfinite(self.segment_seconds)):
            raise ValueError(f"ladder: segment_seconds must be > 0 (got {self.segment_seconds})")
        if not self.max_frame_rate > 0:
            raise ValueError(f"ladder: max_frame_rate must be > 0 (got {self.max_frame_rate})")
        object.__setattr__(self, "rungs", tuple(sorted(rungs, key=_short_side)))

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> Ladder:
        """A ladder from a config mapping; ValueError naming the bad key."""
        known = {"rungs", "segment_seconds", "preset", "max_frame_rate"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"ladder: unknown key(s) {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {k: data[k] for k in known - {"rungs"} if k in data}
        if "rungs" in data:
            rungs = []
            for i, item in enumerate(data["rungs"]):
                try:
                    height = int(item["height"])
                    rungs.append(LadderRung(
                        name=str(item.get("name", f"{height}p")),
                        width=int(item.get("width", _even(height * 16 / 9))),
                        height=height,
                        video_bitrate=int(item["video_bitrate"]),
                        audio_bitrate=int(item.get("audio_bitrate", 128_000)),
                        profile=str(item.get("profile", "high")),
                    ))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"ladder.rungs[{i}]: {exc!r} in {item!r}") from None
            kwargs["rungs"] = tuple(rungs)
        return cls(**kwargs)

    def for_source(self, info: SourceInfo) -> tuple[LadderRung, ...]:
        """The rungs for *info*, lowest first, sized to its aspect ratio; never upscaled.

        Rungs taller (short side) than the source are dropped; a source smaller than the
        lowest rung gets one rung at its own size (even dimensions), the lowest rung's bit
        rates scaled by area.
        """
        src_w, src_h = info.width, info.height
        short = min(src_w, src_h)
        out: list[LadderRung] = []
        for rung in self.rungs:
            side = _short_side(rung)
            if side > short:
                continue
            out.append(dataclasses.replace(rung, **_fit(src_w, src_h, side)))
        if not out:
            lowest = self.rungs[0]
            size = _fit(src_w, src_h, _even(short))
            scale = size["width"] * size["height"] / (lowest.width * lowest.height)
            out.append(dataclasses.replace(
                lowest, name=f"{min(size.values())}p", **size,
                video_bitrate=max(MIN_BITRATE, int(lowest.video_bitrate * scale)),
            ))
        seen: set[tuple[int, int]] = set()
        unique = []
        for rung in out:  # two rungs of one size (odd configs) would be one rendition twice
            if (rung.width, rung.height) not in seen:
                seen.add((rung.width, rung.height))
                unique.append(rung)
        return tuple(unique)

    def output_frame_rate(self, info: SourceInfo) -> float:
        return min(info.frame_rate, self.max_frame_rate)


def _short_side(rung: LadderRung) -> int:
    return min(rung.width, rung.height)


def _fit(src_w: int, src_h: int, side: int) -> dict[str, int]:
    """Width and height with the short side *side* and the source's aspect ratio (even)."""
    if src_w >= src_h:
        return {"width": _even(round(side * src_w / src_h)), "height": _even(side)}
    return {"width": _even(side), "height": _even(round(side * src_h / src_w))}


@dataclasses.dataclass(frozen=True, slots=True)
class TranscodeResult:
    meta: VideoMeta
    source: SourceInfo
    first_publish_seconds: float
    """From the call to the processing meta.json being written (the video playable)."""
    total_seconds: float
    published: dict[str, float] = dataclasses.field(default_factory=dict)
    """Rendition name → seconds from the call to that rendition being published (the lowest:
    its first segments, when the video became playable; the others: whole)."""


def _filtergraph(rungs: Sequence[LadderRung], fps_filter: str, poster_at: float | None) -> str:
    labels = [f"s{i}" for i in range(len(rungs))] + (["sp"] if poster_at is not None else [])
    chains = [f"[0:v:0]{fps_filter}split={len(labels)}" + "".join(f"[{x}]" for x in labels)]
    for i, rung in enumerate(rungs):
        chains.append(f"[s{i}]scale={rung.width}:{rung.height}:flags=bicubic,setsar=1[v{i}]")
    if poster_at is not None:
        chains.append(f"[sp]trim=start={poster_at:.3f},setpts=PTS-STARTPTS,"
                      f"scale={POSTER_WIDTH}:-2[poster]")
    return ";".join(chains)


def _encode(exe: str, source: Path, rungs: Sequence[LadderRung], out: Path, info: SourceInfo,
            ladder: Ladder, *, poster: bool, timeout: float, what: str,
            growing: Collection[str] = (),
            while_running: Callable[[], object] | None = None) -> None:
    """One ffmpeg run: the source decoded once, split to *rungs* (and the poster). The rungs
    named in *growing* are written so they can be read while ffmpeg runs (see
    :func:`~reelcdn.origin.demo.hls_rung_args`); *while_running* is called meanwhile."""
    fps = ladder.output_frame_rate(info)
    fps_filter = f"fps={fps:.6g}," if info.frame_rate > ladder.max_frame_rate else ""
    gop = max(1, round(ladder.segment_seconds * fps))
    poster_at = min(1.0, info.duration / 2) if poster else None
    args = ["-i", str(source), "-filter_complex", _filtergraph(rungs, fps_filter, poster_at)]
    for i, rung in enumerate(rungs):
        (out / rung.name).mkdir(parents=True)
        # -g twice the segment: the forced keyframes make the GOPs; keyint is a safety net
        # that must not add keyframes of its own on a variable frame rate source.
        args += hls_rung_args(rung, out / rung.name, video=f"[v{i}]",
                              audio="0:a:0" if info.has_audio else None, gop=2 * gop,
                              segment_seconds=ladder.segment_seconds, preset=ladder.preset,
                              x264_params=X264_PARAMS, growing=rung.name in growing)
    if poster_at is not None:
        # atomic_writing: the file appears whole (it is published while ffmpeg runs).
        args += ["-map", "[poster]", "-frames:v", "1", "-q:v", "3", "-update", "1",
                 "-atomic_writing", "1", str(out / "poster.jpg")]
    try:
        run_ffmpeg(exe, args, timeout=timeout, what=what, while_running=while_running)
    except DemoError as exc:
        raise TranscodeError(str(exc).split("\n---", 1)[0], exc.stderr) from None


def _describe(rendition_dir: Path, rung: LadderRung, fps: float) -> Rendition:
    try:
        r = build_rendition(rendition_dir, rung.name, fps)
    except (OSError, ValueError) as exc:
        raise TranscodeError(f"{rung.name}: ffmpeg's output is not what was expected: "
                             f"{exc}") from exc
    return dataclasses.replace(r, merkle_root=merkle.root([s.digest for s in r.segments]))


def _existing_meta(store: ObjectStore, key: str) -> VideoMeta | None:
    try:
        return VideoMeta.from_json(store.get_bytes(key))
    except (KeyError, ValueError):
        return None


class _EarlyPublisher:
    """Publishes the lowest rung segment by segment while ffmpeg is still encoding the ladder.

    Called between waits on ffmpeg (and once after it exits): when ffmpeg's EVENT playlist of
    the rung lists new segments, their files go to the store (init first, the poster once it
    exists), then ``meta.json`` with ``state: "processing"`` listing the rung as far as it
    goes — the edge renders it as an EVENT playlist, so players start on it and reload it.
    Files before the meta that lists them: a reader never sees a segment it cannot fetch.
    """

    def __init__(self, store: ObjectStore, base: str, rung: LadderRung, rung_dir: Path,
                 poster: Path, fps: float, publish_meta: Callable[[VideoMeta], None],
                 ready: VideoMeta | None, on_publish: Callable[[VideoMeta], object] | None,
                 started: float) -> None:
        self.store, self.base, self.rung, self.rung_dir = store, base, rung, rung_dir
        self.poster, self.fps, self.publish_meta = poster, fps, publish_meta
        self.ready, self.on_publish, self.started = ready, on_publish, started
        self.segments: dict[str, Segment] = {}
        self.poster_published = False
        self.first_publish: float | None = None
        self.ffmpeg_done = False  # set once ffmpeg has exited: every listed segment is whole
        self._stamp: tuple[int, int] | None = None

    def poll(self) -> None:
        index = self.rung_dir / "index.m3u8"
        try:
            stat = index.stat()
        except FileNotFoundError:
            return  # no segment closed yet
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            rendition = build_rendition(self.rung_dir, self.rung.name, self.fps, self.segments)
        except (OSError, ValueError):
            return  # caught between two writes of ffmpeg: the next poll reads it whole
        self._stamp = stamp
        # The segment ffmpeg listed last may still be written to (a loaded CI run published
        # one that was not whole): only a segment with another listed after it is final,
        # until ffmpeg has exited.
        final = rendition.segments if self.ffmpeg_done else rendition.segments[:-1]
        if not final:
            return
        if len(final) < len(rendition.segments):
            rendition = dataclasses.replace(
                rendition, segments=final, bandwidth=peak_bandwidth(final),
                average_bandwidth=average_bandwidth(final))
        new = [s for s in rendition.segments if s.uri not in self.segments]
        if not new:
            return
        if self.ready is None:  # a rerun of a ready video publishes at the end only
            self._publish_files(rendition, new)
        self.segments.update((s.uri, s) for s in new)
        if self.first_publish is not None:
            if self.ready is None:
                self.publish_meta(self._meta(rendition))
            return
        meta = self.ready or self._meta(rendition)
        if self.ready is None:
            self.publish_meta(meta)
        self.first_publish = time.monotonic() - self.started
        if self.on_publish is not None:
            self.on_publish(meta)

    def _publish_files(self, rendition: Rendition, new: Sequence[Segment]) -> None:
        prefix = f"{self.base}/{self.rung.name}"
        if not self.segments:
            self.store.put_file(f"{prefix}/{rendition.init.uri}",
                                self.rung_dir / rendition.init.uri, cache_control=MEDIA_CACHE)
        for segment in new:
            self.store.put_file(f"{prefix}/{segment.uri}", self.rung_dir / segment.uri,
                                cache_control=MEDIA_CACHE)
        if not self.poster_published and self.poster.is_file():
            self.store.put_file(f"{self.base}/poster.jpg", self.poster,
                                cache_control=POSTER_CACHE)
            self.poster_published = True

    def _meta(self, rendition: Rendition) -> VideoMeta:
        return VideoMeta(video_id=self.base.rsplit("/", 1)[-1], state="processing",
                         duration=round(rendition.duration, 6),
                         poster="poster.jpg" if self.poster_published else None,
                         renditions=(rendition,))


def transcode(
    source: str | os.PathLike[str],
    video_id: str,
    store: ObjectStore,
    ladder: Ladder | None = None,
    *,
    workdir: str | os.PathLike[str],
    on_publish: Callable[[VideoMeta], object] | None = None,
    max_duration: float = MAX_DURATION,
    max_size: int = MAX_SIZE,
    timeout: float | None = None,
) -> TranscodeResult:
    """Encode *source* into an HLS ladder and publish it under ``v/{video_id}/`` in *store*.

    *workdir* is local scratch space (a subdirectory is made and removed). *on_publish* is
    called once, with the first ``meta.json`` that makes the video playable (``processing``
    with the lowest rung's first segments; on a rerun of a ``ready`` video, the ``ready`` meta
    already there). Raises InvalidSource for a source to refuse, TranscodeError when encoding
    fails, ValueError for a bad *video_id*. *timeout* bounds the ffmpeg run (default: 120 s +
    20 × duration).
    """
    started = time.monotonic()
    ladder = ladder or Ladder()
    source = Path(source)
    VideoMeta(video_id=video_id, state="processing", duration=0.0, renditions=())  # the id
    info = probe(source)
    validate(info, source.stat().st_size, max_duration=max_duration, max_size=max_size)
    rungs = ladder.for_source(info)
    fps = round(ladder.output_frame_rate(info), 6)
    timeout = timeout or 120.0 + 20.0 * info.duration
    exe = ffmpeg_exe()
    base = f"v/{video_id}"
    meta_key = f"{base}/meta.json"
    media_cache = {".m4s": MEDIA_CACHE, ".mp4": MEDIA_CACHE, "index.m3u8": PLAYLIST_CACHE}

    def publish_meta(meta: VideoMeta, cache_control: str) -> None:
        store.put_bytes(f"{base}/master.m3u8", render_master_playlist(meta).encode(),
                        cache_control=cache_control)
        store.put_bytes(meta_key, meta.to_json().encode(), cache_control=cache_control)

    Path(workdir).mkdir(parents=True, exist_ok=True)
    published: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix=f"{video_id}-", dir=workdir))
    try:
        lowest = rungs[0]
        existing = _existing_meta(store, meta_key)
        early = _EarlyPublisher(
            store, base, lowest, work / lowest.name, work / "poster.jpg", fps,
            lambda meta: publish_meta(meta, META_CACHE_PROCESSING),
            existing if existing is not None and existing.ready else None, on_publish, started)
        _encode(exe, source, rungs, work, info, ladder, poster=True, timeout=timeout,
                what=f"{video_id}: encoding {', '.join(r.name for r in rungs)}",
                growing={lowest.name}, while_running=early.poll)
        early.ffmpeg_done = True
        early._stamp = None
        early.poll()  # the last segment, now whole
        if early.first_publish is None:
            raise TranscodeError(f"{video_id}: ffmpeg wrote no segment of {lowest.name}")
        if not (work / "poster.jpg").is_file():
            raise TranscodeError(f"{video_id}: ffmpeg wrote no poster")
        as_vod_playlist(work / lowest.name / "index.m3u8")
        renditions = [_describe(work / rung.name, rung, fps) for rung in rungs]
        published[lowest.name] = early.first_publish  # playable from then on, growing
        for rung in rungs:
            store.publish_dir(work / rung.name, f"{base}/{rung.name}", media_cache)
            if rung is not lowest:
                published[rung.name] = time.monotonic() - started
        if not early.poster_published:
            store.put_file(f"{base}/poster.jpg", work / "poster.jpg", cache_control=POSTER_CACHE)
        final = VideoMeta(video_id=video_id, state="ready",
                          duration=round(max(r.duration for r in renditions), 6),
                          poster="poster.jpg", renditions=renditions_sorted(renditions))
        publish_meta(final, META_CACHE_READY)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return TranscodeResult(final, info, early.first_publish, time.monotonic() - started,
                           published)
