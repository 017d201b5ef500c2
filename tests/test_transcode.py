"""The transcoder with the real ffmpeg (imageio-ffmpeg) and PyAV, and source probing.

The output is checked with tools other than the code that wrote it where it matters: PyAV
decodes segments and finds keyframes, hashlib re-digests the files, the Merkle proofs are
verified leaf by leaf. Clips are tiny (6 s, 640x360, ``-preset ultrafast``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random as _random
from pathlib import Path
from typing import Any

import av
import pytest
from media import make_clip

from reelcdn.manifests import merkle
from reelcdn.manifests.meta import VideoMeta
from reelcdn.origin.demo import (
    LadderRung,
    ffmpeg_exe,
    parse_init,
    run_ffmpeg,
    segment_starts_with_keyframe,
)
from reelcdn.origin.probe import InvalidSource, SourceInfo, probe, validate
from reelcdn.origin.storage import FsStore
from reelcdn.origin.transcode import (
    META_CACHE_PROCESSING,
    META_CACHE_READY,
    Ladder,
    transcode,
)

# Bytes that are no media: seeded, because some random draws look like an audio stream to
# ffmpeg's probe (then the refusal's reason is "no video stream", not "not a media file").
POISON = _random.Random(2026).randbytes

LADDER = Ladder(rungs=(
    LadderRung("180p", 320, 180, 250_000, 64_000, "main"),
    LadderRung("360p", 640, 360, 600_000, 96_000),
    LadderRung("720p", 1280, 720, 2_000_000, 128_000),
), preset="ultrafast")


def info(width: int, height: int, **kw: Any) -> SourceInfo:
    base = dict(has_video=True, width=width, height=height, duration=10.0, frame_rate=30.0,
                has_audio=True, video_frames=300)
    return SourceInfo(**{**base, **kw})


# --------------------------------------------------------------------------- the ladder


def test_ladder_never_upscales() -> None:
    default = Ladder()
    sizes = lambda i: [(r.name, r.width, r.height) for r in default.for_source(i)]  # noqa: E731
    assert sizes(info(1920, 1080)) == [("360p", 640, 360), ("720p", 1280, 720),
                                       ("1080p", 1920, 1080)]
    assert sizes(info(1280, 720)) == [("360p", 640, 360), ("720p", 1280, 720)]
    assert sizes(info(1000, 700)) == [("360p", 514, 360)]  # aspect kept, even sizes
    # smaller than the lowest rung: one rung at its own size, never 640x360
    assert sizes(info(480, 270)) == [("270p", 480, 270)]
    assert sizes(info(321, 181)) == [("180p", 318, 180)]
    # portrait phone video: the rung's number is the short side
    assert sizes(info(1080, 1920)) == [("360p", 360, 640), ("720p", 720, 1280),
                                       ("1080p", 1080, 1920)]
    small = Ladder().for_source(info(480, 270))[0]
    assert small.video_bitrate < Ladder().rungs[0].video_bitrate


def test_ladder_from_config_and_bad_configs() -> None:
    ladder = Ladder.from_config({"rungs": [
        {"height": 720, "video_bitrate": 2_000_000},
        {"name": "low", "height": 240, "video_bitrate": 300_000, "profile": "main"},
    ], "segment_seconds": 2, "preset": "faster"})
    assert [(r.name, r.width, r.height) for r in ladder.rungs] == [("low", 426, 240),
                                                                   ("720p", 1280, 720)]
    assert ladder.preset == "faster"
    with pytest.raises(ValueError, match="unknown key"):
        Ladder.from_config({"rung": []})
    with pytest.raises(ValueError, match=r"rungs\[0\]"):
        Ladder.from_config({"rungs": [{"name": "x"}]})
    with pytest.raises(ValueError, match="at least one"):
        Ladder(rungs=())


# --------------------------------------------------------------------------- probing


@pytest.mark.slow
def test_probe_reads_a_real_clip(tmp_path: Path) -> None:
    got = probe(make_clip(tmp_path / "c.mp4", seconds=2))
    assert (got.has_video, got.width, got.height, got.has_audio) == (True, 640, 360, True)
    assert got.frame_rate == 30.0 and 1.9 < got.duration < 2.2 and got.video_frames == 60
    validate(got, 10_000)


@pytest.mark.slow
def test_a_rotated_phone_video_is_probed_and_laddered_as_displayed(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "c.mp4", seconds=1)
    rotated = tmp_path / "rotated.mp4"
    run_ffmpeg(ffmpeg_exe(), ["-y", "-display_rotation:v:0", "90", "-i", str(clip), "-c",
                              "copy", str(rotated)], timeout=30, what="rotate")
    got = probe(rotated)
    assert (got.width, got.height, got.rotation) == (360, 640, 90)
    assert [(r.width, r.height) for r in Ladder().for_source(got)] == [(360, 640)]


@pytest.mark.slow
def test_poison_files_fail_with_a_reason(tmp_path: Path) -> None:
    def reason(path: Path) -> str:
        with pytest.raises(InvalidSource) as caught:
            validate(probe(path), path.stat().st_size)
        return caught.value.reason

    random = tmp_path / "random.mp4"
    random.write_bytes(POISON(200_000))
    assert reason(random).startswith("truncated or unreadable file: not a media file")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert reason(empty) == "empty file: 0 bytes"
    clip = make_clip(tmp_path / "clip.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # moov at the end: lost
    assert reason(cut).startswith("truncated or unreadable file")
    fast = make_clip(tmp_path / "fast.mp4", extra=["-movflags", "+faststart"])
    cut_fast = tmp_path / "cut-fast.mp4"
    cut_fast.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])  # header intact
    assert reason(cut_fast).startswith("truncated or unreadable file: the header says 6.0 s "
                                       "but the data ends at")
    sound = tmp_path / "sound.mp4"
    run_ffmpeg(ffmpeg_exe(), ["-y", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac",
                              str(sound)], timeout=30, what="audio")
    assert reason(sound) == "not a video: an audio file, no video stream"
    picture = tmp_path / "picture.mp4"
    run_ffmpeg(ffmpeg_exe(), ["-y", "-f", "lavfi", "-i", "testsrc=s=64x64:d=1", "-frames:v",
                              "1", "-f", "mjpeg", str(picture)], timeout=30, what="picture")
    assert reason(picture) == "not a video: a single still picture"


def test_limits_name_the_numbers() -> None:
    with pytest.raises(InvalidSource, match=r"^too long: 312 s, the limit is 180 s$"):
        validate(info(640, 360, duration=312.2), 1000)
    with pytest.raises(InvalidSource, match=r"^too long: 180.4 s, the limit is 180 s$"):
        validate(info(640, 360, duration=180.4), 1000)
    with pytest.raises(InvalidSource, match=r"^too big: 250.0 MB, the limit is 200 MB$"):
        validate(info(640, 360), 250_000_000)
    with pytest.raises(InvalidSource, match=r"^not a video: no video stream$"):
        validate(info(0, 0, has_video=False, has_audio=False), 1000)
    with pytest.raises(InvalidSource, match=r"^picture too large: 8192x4320"):
        validate(info(8192, 4320), 1000)


# --------------------------------------------------------------------------- transcoding


class RecordingStore(FsStore):
    """An FsStore that logs what is written, in order, and meta.json's Cache-Control."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.log: list[tuple[str, ...]] = []
        # Per meta.json written: its state and, per rendition, whether each segment it lists
        # was already in the store at that moment.
        self.listed: list[tuple[str, dict[str, list[bool]]]] = []

    def publish_dir(self, local_dir: Any, key_prefix: str,
                    cache_control: dict[str, str] | None = None) -> list[str]:
        self.log.append(("publish", key_prefix))
        return super().publish_dir(local_dir, key_prefix, cache_control)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None,
                  cache_control: str | None = None) -> None:
        if key.endswith("meta.json"):
            meta = VideoMeta.from_json(data)
            self.log.append(("meta", meta.state, cache_control or ""))
            video = key.rsplit("/", 1)[0]
            self.listed.append((meta.state, {
                r.name: [self.exists(f"{video}/{r.name}/{s.uri}") for s in r.segments]
                for r in meta.renditions}))
        super().put_bytes(key, data, content_type, cache_control)


@dataclasses.dataclass
class Run:
    store: RecordingStore
    root: Path
    source: Path
    meta: VideoMeta
    published: list[VideoMeta]
    dirs_at_publish: list[str]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("transcode")
    source = make_clip(tmp / "source.mp4")
    store = RecordingStore(tmp / "origin")
    published: list[VideoMeta] = []
    dirs: list[str] = []

    def on_publish(meta: VideoMeta) -> None:
        published.append(meta)
        store.log.append(("on_publish",))
        dirs.extend(sorted(p.name for p in (tmp / "origin/v/clip").iterdir()))

    result = transcode(source, "clip", store, LADDER, workdir=tmp / "work",
                       on_publish=on_publish)
    assert not list((tmp / "work").iterdir())  # scratch space cleaned
    return Run(store, tmp / "origin" / "v" / "clip", source, result.meta, published, dirs)


@pytest.mark.slow
def test_meta_validates_and_the_ladder_is_not_upscaled(run: Run) -> None:
    stored = VideoMeta.read(run.root / "meta.json")
    assert stored == dataclasses.replace(stored, created_at=run.meta.created_at) == run.meta
    assert stored.ready and stored.poster == "poster.jpg" and (run.root / "poster.jpg").is_file()
    assert [(r.name, r.width, r.height) for r in stored.renditions] == [
        ("180p", 320, 180), ("360p", 640, 360)]  # 720p dropped for a 360p source
    assert not (run.root / "720p").exists()
    for r in stored.renditions:
        assert r.codecs.startswith("avc1.") and r.audio_codec == "mp4a.40.2"
        assert [s.duration for s in r.segments] == [2.0, 2.0, 2.0]
    assert (run.root / "master.m3u8").read_text().count("#EXT-X-STREAM-INF") == 2


@pytest.mark.slow
def test_digests_match_the_bytes_and_verify_against_the_merkle_root(run: Run) -> None:
    for r in run.meta.renditions:
        digests = [s.digest for s in r.segments]
        assert r.merkle_root == merkle.root(digests)
        for i, seg in enumerate(r.segments):
            data = (run.root / r.name / seg.uri).read_bytes()
            assert seg.size == len(data)
            assert seg.digest == "sha256:" + hashlib.sha256(data).hexdigest()
            assert merkle.verify(data and hashlib.sha256(data).digest(),
                                 merkle.proof(digests, i), r.merkle_root)


def keyframe_times(rendition_dir: Path) -> list[float]:
    with av.open(str(rendition_dir / "index.m3u8")) as container:
        stream = container.streams.video[0]
        return [round(float(p.pts * p.time_base), 3) for p in container.demux(stream)
                if p.is_keyframe and p.pts is not None]


@pytest.mark.slow
def test_keyframes_are_aligned_across_rungs(run: Run) -> None:
    times = {}
    for r in run.meta.renditions:
        init = parse_init((run.root / r.name / "init.mp4").read_bytes())
        assert all(segment_starts_with_keyframe(init, (run.root / r.name / s.uri).read_bytes())
                   for s in r.segments)
        times[r.name] = keyframe_times(run.root / r.name)
    first = times["180p"]
    assert len(first) == 3 and [round(t - first[0], 3) for t in first] == [0.0, 2.0, 4.0]
    assert times["360p"] == first  # one timeline on every rung


@pytest.mark.slow
def test_a_segment_decodes_with_pyav(run: Run) -> None:
    r = run.meta.renditions[-1]
    data = (run.root / r.name / "init.mp4").read_bytes()
    data += (run.root / r.name / r.segments[1].uri).read_bytes()
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 60 and (frames[0].width, frames[0].height) == (640, 360)
    assert frames[0].key_frame


@pytest.mark.slow
def test_the_lowest_rung_is_published_first_as_it_is_encoded(run: Run) -> None:
    assert [m.state for m in run.published] == ["processing"]
    early = run.published[0]
    assert [r.name for r in early.renditions] == ["180p"] and early.renditions[0].segments
    assert early.renditions[0].merkle_root is None  # a growing rung has no root yet
    assert run.dirs_at_publish == [".headers", "180p", "master.m3u8", "meta.json", "poster.jpg"]
    metas = [e for e in run.store.log if e[0] == "meta"]
    assert metas[-1] == ("meta", "ready", META_CACHE_READY)
    assert metas[:-1] and set(metas[:-1]) == {("meta", "processing", META_CACHE_PROCESSING)}
    # every processing meta lists only the lowest rung, more of it each time, and only
    # segments already in the store: a player never asks for one that is not there yet
    growing = [listed for state, listed in run.store.listed if state == "processing"]
    assert all(list(listed) == ["180p"] and all(listed["180p"]) for listed in growing)
    counts = [len(listed["180p"]) for listed in growing]
    assert counts == sorted(set(counts))
    # the whole renditions are published after the last processing meta, before ready
    last_processing = max(i for i, e in enumerate(run.store.log) if e[1:2] == ("processing",))
    assert run.store.log[last_processing + 1:] == [
        ("publish", "v/clip/180p"), ("publish", "v/clip/360p"),
        ("meta", "ready", META_CACHE_READY)]
    assert "#EXT-X-PLAYLIST-TYPE:VOD\n" in (run.root / "180p" / "index.m3u8").read_text()


@pytest.mark.slow
def test_every_object_has_its_cache_control_in_a_sidecar(run: Run) -> None:
    """What the shield's fs origin sends with each file (reelcdn.shield.sidecar)."""
    def sidecar(path: str) -> str:
        directory, name = path.rsplit("/", 1) if "/" in path else ("", path)
        return (run.root / directory / ".headers" / name).read_text()

    assert sidecar("meta.json") == f"Cache-Control: {META_CACHE_READY}\n"
    assert sidecar("master.m3u8") == f"Cache-Control: {META_CACHE_READY}\n"
    assert sidecar("poster.jpg") == "Cache-Control: max-age=86400\n"
    for rung in ("180p", "360p"):
        assert sidecar(f"{rung}/index.m3u8") == "Cache-Control: max-age=86400\n"
        assert sidecar(f"{rung}/init.mp4") == "Cache-Control: max-age=31536000, immutable\n"
        segments = sorted(p.name for p in (run.root / rung).glob("seg_*.m4s"))
        assert segments and sorted(
            p.name for p in (run.root / rung / ".headers").glob("seg_*.m4s")) == segments


@pytest.mark.slow
def test_a_rerun_publishes_the_same_digests_and_keeps_the_video_ready(
        run: Run, tmp_path: Path) -> None:
    source = run.source  # the same bytes: a new clip may encode differently
    run.store.log.clear()
    seen: list[VideoMeta] = []
    again = transcode(source, "clip", run.store, LADDER, workdir=tmp_path / "work",
                      on_publish=seen.append).meta
    assert again.version == run.meta.version  # every digest, size and duration the same
    assert [m.state for m in seen] == ["ready"]
    assert [e for e in run.store.log if e[0] == "meta"] == [("meta", "ready", META_CACHE_READY)]


@pytest.mark.slow
def test_a_poison_source_publishes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "upload.mp4"
    bad.write_bytes(POISON(50_000))
    store = FsStore(tmp_path / "origin")
    with pytest.raises(InvalidSource, match="not a media file"):
        transcode(bad, "bad", store, LADDER, workdir=tmp_path / "work")
    assert not store.exists("v/bad/meta.json")
