"""Demo video synthesis with the real ffmpeg (imageio-ffmpeg) and the meta.json schema.

The encoded output is checked with independent tools, not with the code that wrote it: PyAV
(libavformat) decodes the playlists and finds the keyframes, the ``m3u8`` library parses the
playlists, hashlib re-digests the files. Videos are short and the ladder small (180p + 360p,
5 s: two full 2 s segments and a short last one) so the module runs in a few seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import time
from pathlib import Path

import av  # noqa: E402  (test dependencies: a missing one must fail, not skip)
import imageio_ffmpeg  # noqa: E402, F401
import m3u8  # noqa: E402
import pytest

from reelcdn.manifests.meta import (
    InitSection,
    Rendition,
    Segment,
    VideoMeta,
    average_bandwidth,
    peak_bandwidth,
)
from reelcdn.origin import demo
from reelcdn.origin.cache_control import META_CACHE_READY
from reelcdn.origin.demo import DemoError, LadderRung, synthesise_demo_videos

pytestmark = pytest.mark.slow  # ffmpeg synthesises demo videos

LADDER = (
    LadderRung("180p", 320, 180, 250_000, 64_000, "main"),
    LadderRung("360p", 640, 360, 600_000, 96_000),
)
DURATION = 5.0
IDS = ["demo-1", "demo-2"]


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("origin")
    lines: list[str] = []
    started = time.monotonic()
    ids = synthesise_demo_videos(root, count=2, duration=DURATION, renditions=LADDER,
                                 log=lines.append)
    elapsed = time.monotonic() - started
    assert ids == IDS
    assert elapsed < 30, f"synthesis took {elapsed:.1f} s: {lines}"
    return root


def meta_of(origin: Path, video_id: str) -> VideoMeta:
    return VideoMeta.read(origin / "v" / video_id / "meta.json")


# --------------------------------------------------------------------------- layout


def test_layout_is_exactly_the_url_scheme(origin: Path) -> None:
    for video_id in IDS:
        vdir = origin / "v" / video_id
        assert {p.name for p in vdir.iterdir()} == {
            "master.m3u8", "meta.json", "poster.jpg", "180p", "360p", ".headers"}
        # meta.json is ready: the transcoder's day-long freshness for ready videos.
        assert [p.name for p in (vdir / ".headers").iterdir()] == ["meta.json"]
        assert (vdir / ".headers" / "meta.json").read_text() == (
            f"Cache-Control: {META_CACHE_READY}\n")
        for rung in LADDER:
            names = sorted(p.name for p in (vdir / rung.name).iterdir())
            assert names == ["index.m3u8", "init.mp4",
                             "seg_00000.m4s", "seg_00001.m4s", "seg_00002.m4s"]
    assert (origin / "catalog.txt").read_text() == "demo-1\ndemo-2\n"
    # Nothing half-written is left in the staging area.
    assert [p.name for p in (origin / demo.STAGING_DIR).iterdir()] == ["demo.lock"]


def test_poster_is_640_wide(origin: Path) -> None:
    with av.open(str(origin / "v" / "demo-1" / "poster.jpg")) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (640, 360)


# --------------------------------------------------------------------------- meta.json


def test_meta_round_trips_and_validates(origin: Path) -> None:
    for video_id in IDS:
        text = (origin / "v" / video_id / "meta.json").read_text()
        meta = VideoMeta.from_json(text)
        assert meta.video_id == video_id and meta.state == "ready" and meta.ready
        assert meta.poster == "poster.jpg"
        assert meta.to_json() == text
        assert VideoMeta.from_json(meta.to_json()) == meta
        assert json.loads(text)["version"] == meta.version
        assert [r.name for r in meta.renditions] == ["180p", "360p"]  # lowest first
        assert meta.duration == pytest.approx(DURATION, abs=0.1)


def test_codecs_come_from_the_real_stream(origin: Path) -> None:
    meta = meta_of(origin, "demo-1")
    profiles = {"Main": 0x4D, "High": 0x64, "Constrained Baseline": 0x42, "Baseline": 0x42}
    for r in meta.renditions:
        assert re.fullmatch(r"avc1\.[0-9a-f]{6}", r.video_codec), r.video_codec
        assert r.audio_codec == "mp4a.40.2"
        assert r.codecs == f"{r.video_codec},mp4a.40.2"
        assert r.frame_rate == 30.0
        rung = next(x for x in LADDER if x.name == r.name)
        assert (r.width, r.height) == (rung.width, rung.height)
        with av.open(str(origin / "v" / "demo-1" / r.name / "index.m3u8")) as container:
            ctx = container.streams.video[0].codec_context
            assert int(r.video_codec[5:7], 16) == profiles[ctx.profile]
            assert ctx.profile.lower().endswith(rung.profile)
            assert container.streams.audio[0].codec_context.name == "aac"


def test_sizes_digests_and_bandwidths_match_the_files(origin: Path) -> None:
    for video_id in IDS:
        meta = meta_of(origin, video_id)
        for r in meta.renditions:
            rdir = origin / "v" / video_id / r.name
            data = (rdir / r.init.uri).read_bytes()
            assert r.init.size == len(data)
            assert r.init.digest == "sha256:" + hashlib.sha256(data).hexdigest()
            for seg in r.segments:
                data = (rdir / seg.uri).read_bytes()
                assert seg.size == len(data)
                assert seg.digest == "sha256:" + hashlib.sha256(data).hexdigest()
            assert r.bandwidth == peak_bandwidth(r.segments)
            assert r.average_bandwidth == average_bandwidth(r.segments)
            assert 0 < r.average_bandwidth <= r.bandwidth


def test_segments_are_two_seconds_and_independent(origin: Path) -> None:
    for video_id in IDS:
        for r in meta_of(origin, video_id).renditions:
            durations = [s.duration for s in r.segments]
            assert all(d == pytest.approx(2.0, abs=0.1) for d in durations[:-1]), durations
            assert 0 < durations[-1] <= 2.1
            assert sum(durations) == pytest.approx(DURATION, abs=0.1)
            assert all(s.independent for s in r.segments)


def test_every_segment_starts_with_a_keyframe_per_pyav(origin: Path) -> None:
    for video_id in IDS:
        for r in meta_of(origin, video_id).renditions:
            rdir = origin / "v" / video_id / r.name
            init = (rdir / "init.mp4").read_bytes()
            for seg in r.segments:
                with av.open(io.BytesIO(init + (rdir / seg.uri).read_bytes())) as container:
                    packet = next(p for p in container.demux(video=0) if p.size)
                    assert packet.is_keyframe, f"{video_id}/{r.name}/{seg.uri}"


# --------------------------------------------------------------------------- playback


def test_pyav_plays_the_master_and_media_playlists(origin: Path) -> None:
    vdir = origin / "v" / "demo-2"
    with av.open(str(vdir / "master.m3u8")) as container:
        widths = sorted(s.codec_context.width for s in container.streams.video)
        assert widths == [320, 640]
    for rung in LADDER:
        with av.open(str(vdir / rung.name / "index.m3u8")) as container:
            frames = 0
            last = 0.0
            for frame in container.decode(video=0):
                assert (frame.width, frame.height) == (rung.width, rung.height)
                frames += 1
                last = frame.time
            assert last >= 2.0 and frames >= 60, (frames, last)


def test_m3u8_library_parses_master_and_media(origin: Path) -> None:
    vdir = origin / "v" / "demo-1"
    meta = meta_of(origin, "demo-1")
    master = m3u8.load(str(vdir / "master.m3u8"))
    assert master.is_variant
    assert [p.uri for p in master.playlists] == ["180p/index.m3u8", "360p/index.m3u8"]
    for playlist, r in zip(master.playlists, meta.renditions, strict=True):
        info = playlist.stream_info
        assert info.bandwidth == r.bandwidth
        assert info.average_bandwidth == r.average_bandwidth
        assert info.codecs == r.codecs
        assert info.resolution == (r.width, r.height)
        assert info.frame_rate == pytest.approx(30.0)
        media = m3u8.load(str(vdir / playlist.uri))
        assert media.is_endlist and media.playlist_type == "vod"
        assert media.target_duration == r.target_duration == 2
        assert media.segments[0].init_section.uri == r.init.uri == "init.mp4"
        assert [(s.uri, s.duration) for s in media.segments] == [
            (s.uri, s.duration) for s in r.segments]
        for s in media.segments:
            assert (vdir / r.name / s.uri).is_file()


# --------------------------------------------------------------------------- idempotency


def test_second_call_keeps_ready_videos(origin: Path) -> None:
    watched = [origin / "v" / "demo-1" / "meta.json",
               origin / "v" / "demo-2" / "360p" / "seg_00000.m4s"]
    before = [p.stat().st_mtime_ns for p in watched]
    lines: list[str] = []
    started = time.monotonic()
    ids = synthesise_demo_videos(origin, count=2, duration=DURATION, renditions=LADDER,
                                 log=lines.append)
    assert ids == IDS
    assert time.monotonic() - started < 1.0
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert lines == ["demo-1: ready, kept", "demo-2: ready, kept"]


TINY = (LadderRung("144p", 256, 144, 150_000, 48_000, "main"),)


def test_force_replaces_a_video_and_a_broken_one_is_redone(tmp_path: Path) -> None:
    synthesise_demo_videos(tmp_path, count=1, duration=2.0, renditions=TINY, log=lambda _: None)
    meta_path = tmp_path / "v" / "demo-1" / "meta.json"
    first = VideoMeta.read(meta_path)
    time.sleep(1.1)  # created_at has one-second resolution
    synthesise_demo_videos(tmp_path, count=1, duration=2.0, renditions=TINY, force=True,
                           log=lambda _: None)
    second = VideoMeta.read(meta_path)
    assert second.created_at != first.created_at
    meta_path.write_text("{not json")  # not ready any more: redone without force
    synthesise_demo_videos(tmp_path, count=1, duration=2.0, renditions=TINY, log=lambda _: None)
    assert VideoMeta.read(meta_path).ready
    assert [p.name for p in (tmp_path / demo.STAGING_DIR).iterdir()] == ["demo.lock"]


# --------------------------------------------------------------------------- failures


def test_failing_ffmpeg_raises_demo_error_with_stderr(tmp_path: Path) -> None:
    with pytest.raises(DemoError) as caught:
        synthesise_demo_videos(tmp_path, count=1, duration=2.0, renditions=TINY,
                               preset="no-such-preset", log=lambda _: None)
    assert "exited with status" in str(caught.value)
    assert caught.value.stderr and caught.value.stderr in str(caught.value)
    assert "preset" in caught.value.stderr.lower()
    assert not (tmp_path / "v" / "demo-1").exists()
    assert [p.name for p in (tmp_path / demo.STAGING_DIR).iterdir()] == ["demo.lock"]


def test_bogus_origin_root_raises_demo_error(tmp_path: Path) -> None:
    root = tmp_path / "a-file"
    root.write_text("not a directory")
    with pytest.raises(DemoError, match="cannot create"):
        synthesise_demo_videos(root, count=1, renditions=TINY, log=lambda _: None)


def test_bad_arguments_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        synthesise_demo_videos(tmp_path, renditions=[LadderRung("odd", 321, 180, 1000)])
    with pytest.raises(ValueError, match="unique"):
        synthesise_demo_videos(tmp_path, renditions=[TINY[0], TINY[0]])
    with pytest.raises(ValueError, match="duration"):
        synthesise_demo_videos(tmp_path, duration=0)


# --------------------------------------------------------------------------- meta.py alone


def sample_meta(**changes: object) -> VideoMeta:
    digest = "sha256:" + "ab" * 32
    segs = (Segment("seg_00000.m4s", 2.0, 250_000, digest),
            Segment("seg_00001.m4s", 1.5, 150_000, digest))
    rendition = Rendition(
        name="360p", width=640, height=360, bandwidth=peak_bandwidth(segs),
        average_bandwidth=average_bandwidth(segs), codecs="avc1.4d401e,mp4a.40.2",
        video_codec="avc1.4d401e", audio_codec="mp4a.40.2", frame_rate=30.0,
        init=InitSection("init.mp4", 1200, digest), segments=segs)
    fields: dict[str, object] = dict(video_id="v1", state="ready", duration=3.5,
                                     poster="poster.jpg", renditions=(rendition,),
                                     created_at="2025-01-02T03:04:05Z")
    fields.update(changes)
    return VideoMeta(**fields)  # type: ignore[arg-type]


def test_bandwidth_helpers() -> None:
    meta = sample_meta()
    r = meta.renditions[0]
    assert r.bandwidth == 1_000_000  # 250 kB over 2 s; 150 kB over 1.5 s is 800 kbit/s
    assert r.average_bandwidth == 914_286  # 3.2 Mbit over 3.5 s, rounded up
    assert peak_bandwidth([]) == 0 and average_bandwidth([]) == 0


def test_version_follows_content_not_created_at() -> None:
    meta = sample_meta()
    assert re.fullmatch(r"[0-9a-f]{16}", meta.version)
    assert sample_meta(created_at="2030-01-01T00:00:00Z").version == meta.version
    assert sample_meta(duration=3.6).version != meta.version
    assert meta.replace(state="processing").version != meta.version


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.update(state="done"), "state"),
        (lambda d: d.update(video_id="../x"), "video_id"),
        (lambda d: d.pop("renditions"), "renditions"),
        (lambda d: d.update(schema=2), "schema"),
        (lambda d: d.update(version="0" * 16), "version"),
        (lambda d: d.update(created_at="yesterday"), "created_at"),
        (lambda d: d["renditions"][0].update(width=0), "renditions[0].width"),
        (lambda d: d["renditions"][0].update(codecs="hvc1.1"), "renditions[0].codecs"),
        (lambda d: d["renditions"][0].update(average_bandwidth=10**9),
         "renditions[0].average_bandwidth"),
        (lambda d: d["renditions"][0]["init"].update(uri="../../etc/passwd"),
         "renditions[0].init.uri"),
        (lambda d: d["renditions"][0]["segments"][1].update(duration=-1),
         "renditions[0].segments[1].duration"),
        (lambda d: d["renditions"][0]["segments"][0].update(digest="md5:00"),
         "renditions[0].segments[0].digest"),
        (lambda d: d["renditions"][0]["segments"][0].update(size=True),
         "renditions[0].segments[0].size"),
        (lambda d: d["renditions"][0]["segments"][0].update(byterange=[0, 5]),
         "renditions[0].segments[0].byterange[1]"),
        (lambda d: d["renditions"][0]["segments"][0].pop("uri"),
         "renditions[0].segments[0].uri"),
        (lambda d: d["renditions"][0].update(segments=[]), "renditions[0].segments"),
    ],
)
def test_validation_names_the_field(edit: object, field: str) -> None:
    data = sample_meta().to_dict()
    edit(data)  # type: ignore[operator]
    with pytest.raises(ValueError) as caught:
        VideoMeta.from_dict(data)
    assert f" {field}: " in str(caught.value), str(caught.value)


def _with_optional_parts() -> dict[str, object]:
    """sample_meta() as a dict plus every optional part: demuxed audio, I-frames, init range."""
    data = sample_meta().to_dict()
    digest = "sha256:" + "cd" * 32
    r = data["renditions"][0]
    r["audio_group"] = "aac"
    r["codecs"] = r["video_codec"]
    r["audio_codec"] = None
    r["init"]["byterange"] = [0, r["init"]["size"]]
    r["iframes"] = [{"uri": "seg_00000.m4s", "duration": 2.0, "size": 9000,
                     "byterange": [812, 9000]}]
    data["audio"] = [{"name": "audio-en", "group": "aac", "codec": "mp4a.40.2",
                      "language": "en", "label": "English", "channels": 2, "default": True,
                      "init": {"uri": "init.mp4", "size": 700, "digest": digest},
                      "segments": [{"uri": "seg_00000.m4s", "duration": 2.0, "size": 32000,
                                    "digest": digest}]}]
    del data["version"]
    return data


def test_optional_parts_round_trip_and_leave_old_versions_alone() -> None:
    plain = sample_meta()
    assert "audio" not in plain.to_dict()
    assert {"iframes"} & plain.to_dict()["renditions"][0].keys() == set()
    assert "byterange" not in plain.to_dict()["renditions"][0]["init"]
    full = VideoMeta.from_dict(_with_optional_parts())
    assert VideoMeta.from_json(full.to_json()) == full
    assert full.version != plain.version
    assert full.audio_in_group("aac")[0].display_name == "English"
    assert full.renditions[0].iframes[0].byterange == (812, 9000)
    assert full.renditions[0].init.byterange == (0, 1200)


def _add_audio(d: dict, **changes: object) -> None:
    extra = dict(d["audio"][0], **changes)
    d["audio"].append(extra)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["renditions"][0].update(audio_group="no-such-group"),
         "renditions[0].audio_group"),
        (lambda d: d["renditions"][0].update(audio_group='a"b'), "renditions[0].audio_group"),
        (lambda d: d["renditions"][0].update(codecs='avc1.4d401e"', video_codec='avc1.4d401e"'),
         "renditions[0].codecs"),
        (lambda d: d["renditions"][0]["init"].update(byterange=[0, 5]),
         "renditions[0].init.byterange[1]"),
        (lambda d: d["renditions"][0]["iframes"][0].update(byterange=[0, 5]),
         "renditions[0].iframes[0].byterange[1]"),
        (lambda d: d["renditions"][0]["iframes"][0].update(duration=0),
         "renditions[0].iframes[0].duration"),
        (lambda d: d["renditions"][0]["iframes"].append(d["renditions"][0]["iframes"][0]),
         "renditions[0].iframes[1].uri"),
        (lambda d: d["audio"][0].update(name="360p"), "audio[0].name"),
        (lambda d: d["audio"][0].update(codec="mp4a.40.2,ac-3"), "audio[0].codec"),
        (lambda d: d["audio"][0].update(language="english!"), "audio[0].language"),
        (lambda d: d["audio"][0].update(channels=0), "audio[0].channels"),
        (lambda d: d["audio"][0].update(segments=[]), "audio[0].segments"),
        (lambda d: _add_audio(d, name="audio-fr", language="fr"), "audio[1].label"),
        (lambda d: _add_audio(d, name="audio-fr", label="French"), "audio[1].default"),
    ],
)
def test_optional_parts_validation_names_the_field(edit: object, field: str) -> None:
    data = _with_optional_parts()
    edit(data)  # type: ignore[operator]
    with pytest.raises(ValueError) as caught:
        VideoMeta.from_dict(data)
    assert f" {field}: " in str(caught.value), str(caught.value)


def test_a_processing_video_may_lack_its_audio_group_yet() -> None:
    data = _with_optional_parts()
    data["state"] = "processing"
    data["audio"] = []
    assert VideoMeta.from_dict(data).audio == ()


def test_bandwidth_helpers_are_exact_at_integer_boundaries() -> None:
    # 0.1 is a hair above 1/10 as a float, so 1000 bytes over it is a hair *under* 80 kbit/s
    # exactly, while float division says exactly 80000.0; either way ceil must not go under.
    seg = Segment("s.m4s", 0.1, 1000, "sha256:" + "00" * 32)
    assert peak_bandwidth([seg]) >= 1000 * 8 / 0.1
    odd = Segment("s.m4s", 0.3, 3, "sha256:" + "00" * 32)  # 80 bit/s and a hair: rounds up
    assert peak_bandwidth([odd]) == 81 and average_bandwidth([odd]) == 81


def test_processing_meta_may_be_partial_and_json_errors_are_value_errors() -> None:
    meta = sample_meta()
    partial = dataclasses.replace(meta.renditions[0], segments=(), bandwidth=0,
                                  average_bandwidth=0)
    processing = sample_meta(state="processing", renditions=(partial,), poster=None)
    assert VideoMeta.from_json(processing.to_json()) == processing
    with pytest.raises(ValueError, match="not valid JSON"):
        VideoMeta.from_json("{")
    with pytest.raises(ValueError, match="version"):
        data = meta.to_dict()
        data["duration"] = 9.0  # edited by hand without recomputing the version
        VideoMeta.from_dict(data)
    data = meta.to_dict()
    del data["version"]  # a hand-written file may leave it out
    assert VideoMeta.from_dict(data) == meta


def test_the_documented_example_is_valid_and_renders_the_documented_master() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "meta-json.md").read_text()
    section = doc[doc.index("## Example"):]
    example = re.search(r"```json\n(.*?)```", section, re.S)
    master = re.search(r"```\n(#EXTM3U\n.*?)```", section, re.S)
    assert example and master
    meta = VideoMeta.from_json(example.group(1))
    assert meta.ready and [r.name for r in meta.renditions] == ["360p", "720p"]
    assert demo.render_master_playlist(meta) == master.group(1)


def _box(kind: str, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind.encode() + payload


def _moof(tfhd_flags: int, default_flags: int | None, trun_flags: int,
          first_flags: int | None) -> bytes:
    tfhd = tfhd_flags.to_bytes(4, "big") + (1).to_bytes(4, "big")
    if default_flags is not None:
        tfhd += default_flags.to_bytes(4, "big")
    trun = trun_flags.to_bytes(4, "big") + (3).to_bytes(4, "big") + (0).to_bytes(4, "big")
    if first_flags is not None:
        trun += first_flags.to_bytes(4, "big")
    traf = _box("tfhd", tfhd) + _box("trun", trun)
    return _box("styp", b"msdh") + _box("moof", _box("mfhd", bytes(8)) + _box("traf", traf))


def test_keyframe_check_reads_trun_tfhd_and_trex_flags() -> None:
    sync, non_sync = 0x0200_0000, 0x0101_0000
    info = demo.InitInfo("avc1.64001f", None, 640, 360, 1, {1: non_sync})
    # first_sample_flags in trun win over everything
    assert demo.segment_starts_with_keyframe(info, _moof(0x20, non_sync, 0x005, sync))
    assert not demo.segment_starts_with_keyframe(info, _moof(0x20, sync, 0x005, non_sync))
    # else tfhd default_sample_flags
    assert demo.segment_starts_with_keyframe(info, _moof(0x20, sync, 0x001, None))
    assert not demo.segment_starts_with_keyframe(info, _moof(0x20, non_sync, 0x001, None))
    # else trex (from the init segment)
    assert not demo.segment_starts_with_keyframe(info, _moof(0x00, None, 0x001, None))
    with pytest.raises(ValueError, match="moof"):
        demo.segment_starts_with_keyframe(info, _box("mdat", b"x"))


def test_without_drawtext_the_pictures_are_still_made(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without fonts: no burnt-in text, everything else the same."""
    monkeypatch.setattr(demo, "ffmpeg_has_drawtext", lambda exe: False)
    synthesise_demo_videos(tmp_path, count=1, duration=2.0, renditions=TINY, log=lambda _: None)
    meta = VideoMeta.read(tmp_path / "v" / "demo-1" / "meta.json")
    assert meta.ready and meta.renditions[0].segments[0].independent


def test_a_crashed_runs_leftovers_are_cleared(tmp_path: Path) -> None:
    leftover = tmp_path / demo.STAGING_DIR / "demo-1-crashed"
    leftover.mkdir(parents=True)
    (leftover / "seg_00000.m4s").write_bytes(b"half")
    synthesise_demo_videos(tmp_path, count=0, log=lambda _: None)
    assert not leftover.exists()
    assert (tmp_path / "catalog.txt").read_text() == ""
