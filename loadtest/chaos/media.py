"""Videos for a soak: the demo videos ``reelcdn up`` makes (ffmpeg, about 30 s on two cores
the first time, reused after), or synthetic ones (random bytes with a real ``meta.json``, in
milliseconds) for the short soak of the tests.

The players never decode, so random bytes exercise everything a soak checks: the edges render
playlists from ``meta.json``, and every body is verified against its digests.
"""

from __future__ import annotations

import os
from pathlib import Path

from reelcdn.manifests.meta import (
    InitSection,
    Rendition,
    Segment,
    VideoMeta,
    average_bandwidth,
    peak_bandwidth,
    sha256_digest,
)
from reelcdn.origin.cache_control import META_CACHE_READY
from reelcdn.origin.demo import render_master_playlist
from reelcdn.origin.storage import write_sidecar

SEGMENT_SECONDS = 2.0
LADDER = (("360p", 640, 360, 800_000), ("720p", 1280, 720, 2_000_000))


def synthetic_videos(root: Path, count: int = 3, segments: int = 4) -> list[str]:
    """Write ``synth-1`` … under ``{root}/v/`` (skipping those already there) and
    ``{root}/catalog.txt``; return the ids."""
    ids = [f"synth-{n}" for n in range(1, count + 1)]
    for number, video in enumerate(ids, start=1):
        base = root / "v" / video
        if (base / "meta.json").is_file():
            continue
        renditions = []
        for name, width, height, bandwidth in LADDER:
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            init = os.urandom(1200)
            (folder / "init.mp4").write_bytes(init)
            segs = []
            for index in range(segments):
                size = int(bandwidth * SEGMENT_SECONDS / 8 * (0.8 + 0.05 * ((number + index) % 4)))
                data = os.urandom(size)
                uri = f"seg_{index:05d}.m4s"
                (folder / uri).write_bytes(data)
                segs.append(Segment(uri, SEGMENT_SECONDS, size, sha256_digest(data)))
            (folder / "index.m3u8").write_text(_media_playlist(segs))
            renditions.append(Rendition(
                name=name, width=width, height=height, bandwidth=peak_bandwidth(segs),
                average_bandwidth=average_bandwidth(segs), codecs="avc1.64001f,mp4a.40.2",
                video_codec="avc1.64001f", audio_codec="mp4a.40.2", frame_rate=30.0,
                init=InitSection("init.mp4", len(init), sha256_digest(init)),
                segments=tuple(segs)))
        meta = VideoMeta(video_id=video, state="ready", duration=SEGMENT_SECONDS * segments,
                         renditions=tuple(renditions))
        # The static playlists beside meta.json, as the demo videos have them: an edge that
        # cannot get meta.json serves the origin's own playlist instead.
        (base / "master.m3u8").write_text(render_master_playlist(meta))
        meta.write(base / "meta.json")
        write_sidecar(base / "meta.json", cache_control=META_CACHE_READY)
    (root / "catalog.txt").write_text("".join(f"{v}\n" for v in ids))
    return ids


def _media_playlist(segments: list[Segment]) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{SEGMENT_SECONDS:.0f}",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD", '#EXT-X-MAP:URI="init.mp4"']
    for segment in segments:
        lines += [f"#EXTINF:{segment.duration:.6f},", segment.uri]
    return "\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n"


def demo_videos(root: Path) -> list[str]:
    """The demo videos of ``reelcdn up`` in ``root`` (made with ffmpeg when missing)."""
    from reelcdn.origin.demo import synthesise_demo_videos

    root.mkdir(parents=True, exist_ok=True)
    return synthesise_demo_videos(root, log=lambda line: print(f"[soak] demo: {line}",
                                                                flush=True))


def longest_segment(root: Path, videos: list[str]) -> float:
    """The longest segment duration of the videos (what a stall is measured against)."""
    longest = 0.0
    for video in videos:
        meta = VideoMeta.read(root / "v" / video / "meta.json")
        for rendition in meta.renditions:
            longest = max([longest, *(s.duration for s in rendition.segments)])
    return longest
