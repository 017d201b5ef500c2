"""The ``meta.json`` schema: one video's rendition metadata, the source of every playlist.

The edge renders master and media playlists from this file (``manifests/``), so per-request
variations cost no origin traffic; the origin writes it when transcoding (``state`` goes from
``processing`` to ``ready``). Keeping it as typed dataclasses with strict validation means a bad
file fails loudly where it is read, with the offending field named, instead of turning into a
broken playlist at the edge. The format is documented in ``docs/meta-json.md``.

Units: durations in seconds (float), sizes in bytes, bandwidths in bit/s, digests as
``sha256:<64 hex>``. URIs are relative: segment and init URIs to the rendition directory
(``/v/{video_id}/{rendition}/``), the poster to the video directory (``/v/{video_id}/``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

from reelcdn.manifests.merkle import root as merkle_tree_root

__all__ = [
    "SCHEMA",
    "STATES",
    "AudioRendition",
    "IFrame",
    "InitSection",
    "Rendition",
    "Segment",
    "VideoMeta",
    "average_bandwidth",
    "file_digest",
    "is_video_id",
    "peak_bandwidth",
    "renditions_sorted",
    "sha256_digest",
]

SCHEMA = 1
"""Schema number written into every file; readers reject numbers they do not know."""

STATES = ("processing", "ready")
State = Literal["processing", "ready"]

_VIDEO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX256 = re.compile(r"^[0-9a-f]{64}$")
_URI_FORBIDDEN = re.compile(r"[\s\\?#\x00-\x1f\x7f]")
# What may not appear inside an HLS quoted-string attribute value (RFC 8216 §4.2): the quote
# itself, CR and LF; other control characters are banned from playlists altogether (§4.1).
_UNQUOTABLE = re.compile(r'["\x00-\x1f\x7f-\x9f]')
_LANGUAGE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")  # RFC 5646 shape, loosely


# --------------------------------------------------------------------------- helpers


def is_video_id(text: object) -> bool:
    """Whether *text* can name a video (``v/{video_id}/``): the schema's one rule, which the
    origin API also applies to any id it looks up (uploads mint a narrower form of it)."""
    return isinstance(text, str) and _VIDEO_ID.match(text) is not None


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of *data*: the digest format every ``digest`` field uses."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> tuple[int, str]:
    """(size, ``sha256:<hex>``) of a file, read in chunks so large segments stay cheap."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, "sha256:" + h.hexdigest()


class _Timed(Protocol):
    """Anything with a byte size and a playing time: a Segment, an IFrame."""

    @property
    def size(self) -> int: ...

    @property
    def duration(self) -> float: ...


def peak_bandwidth(segments: Iterable[_Timed]) -> int:
    """HLS ``BANDWIDTH``: the largest segment bit rate, ``max(size * 8 / duration)``, rounded up.

    RFC 8216 §4.3.4.2 defines BANDWIDTH as the peak segment bit rate; players use it to pick a
    rendition, so under-stating it causes rebuffering. Rounded up so it is never under, in exact
    rational arithmetic: a float quotient can land a hair below an exact integer and round down.
    """
    peak = Fraction(0)
    for seg in segments:
        if seg.duration > 0:
            peak = max(peak, Fraction(seg.size * 8) / Fraction(seg.duration))
    return math.ceil(peak)


def average_bandwidth(segments: Iterable[_Timed]) -> int:
    """HLS ``AVERAGE-BANDWIDTH``: total bits over total duration, rounded up (exactly)."""
    bits = 0
    seconds = Fraction(0)
    for seg in segments:
        bits += seg.size * 8
        seconds += Fraction(seg.duration)
    return math.ceil(bits / seconds) if seconds > 0 else 0


def _now_rfc3339() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- validation


def _fail(field: str, problem: str, value: Any) -> ValueError:
    return ValueError(f"meta.json: {field}: {problem} (got {value!r})")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(field: str, value: Any, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, "must be an integer", value)
    if value < minimum:
        raise _fail(field, f"must be >= {minimum}", value)


def _check_number(field: str, value: Any, *, positive: bool = False) -> None:
    if not _is_number(value):
        raise _fail(field, "must be a finite number", value)
    if positive and value <= 0:
        raise _fail(field, "must be > 0", value)
    if value < 0:
        raise _fail(field, "must be >= 0", value)


def _check_str(field: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise _fail(field, "must be a non-empty string", value)


def _check_quotable(field: str, value: Any) -> None:
    """A non-empty string that can be written inside an HLS quoted-string attribute.

    Codec strings, group ids and labels are copied into playlists verbatim; a quote or a line
    break in one would end the attribute or the tag and corrupt every playlist of the video.
    """
    _check_str(field, value)
    if _UNQUOTABLE.search(value):
        raise _fail(field, "must not contain '\"' or control characters", value)


def _check_byterange(field: str, value: Any, size: int) -> None:
    """``[offset, length]`` of a sub-range of a file; *length* must equal the object's *size*."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise _fail(field, "must be [offset, length]", value)
    _check_int(f"{field}[0]", value[0])
    _check_int(f"{field}[1]", value[1], minimum=1)
    if value[1] != size:
        raise _fail(f"{field}[1]", f"must equal size {size}", value[1])


def _byterange_from(data: Mapping[str, Any], field: str) -> tuple[Any, Any] | None:
    br = data.get("byterange")
    if br is None:
        return None
    if not isinstance(br, list) or len(br) != 2:
        raise _fail(f"{field}.byterange", "must be [offset, length]", br)
    return (br[0], br[1])


def _check_uri(field: str, value: Any) -> None:
    """A relative URI that cannot climb out of its directory (it becomes a cache/origin path)."""
    _check_str(field, value)
    if value.startswith("/") or "://" in value or _URI_FORBIDDEN.search(value):
        raise _fail(field, "must be a relative path without scheme, query or whitespace", value)
    if any(part in ("", ".", "..") for part in value.split("/")):
        raise _fail(field, "must not contain empty, '.' or '..' path segments", value)


def _check_digest(field: str, value: Any) -> None:
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise _fail(field, "must be 'sha256:' followed by 64 lowercase hex digits", value)


def _require(data: Mapping[str, Any], field: str, key: str) -> Any:
    if key not in data:
        raise ValueError(f"meta.json: {field}{'.' if field else ''}{key}: missing")
    return data[key]


def _mapping(field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(field, "must be an object", value)
    return value


def _list(field: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(field, "must be a list", value)
    return value


# --------------------------------------------------------------------------- dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """One CMAF media segment (or a byte range of a file) of a rendition."""

    uri: str
    duration: float
    size: int
    digest: str
    byterange: tuple[int, int] | None = None
    independent: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.byterange, list):
            object.__setattr__(self, "byterange", tuple(self.byterange))

    def validate(self, field: str = "segment") -> None:
        _check_uri(f"{field}.uri", self.uri)
        _check_number(f"{field}.duration", self.duration, positive=True)
        _check_int(f"{field}.size", self.size)
        _check_digest(f"{field}.digest", self.digest)
        if self.byterange is not None:
            _check_byterange(f"{field}.byterange", self.byterange, self.size)
        if not isinstance(self.independent, bool):
            raise _fail(f"{field}.independent", "must be true or false", self.independent)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uri": self.uri,
            "duration": self.duration,
            "size": self.size,
            "digest": self.digest,
        }
        if self.byterange is not None:
            out["byterange"] = [self.byterange[0], self.byterange[1]]
        out["independent"] = self.independent
        return out

    @classmethod
    def from_dict(cls, data: Any, field: str = "segment") -> Segment:
        data = _mapping(field, data)
        br = _byterange_from(data, field)
        seg = cls(
            uri=_require(data, field, "uri"),
            duration=_require(data, field, "duration"),
            size=_require(data, field, "size"),
            digest=_require(data, field, "digest"),
            byterange=br,
            independent=data.get("independent", True),
        )
        seg.validate(field)
        return seg


@dataclasses.dataclass(frozen=True, slots=True)
class InitSection:
    """The CMAF header (``EXT-X-MAP``): ``ftyp`` + ``moov`` with the codec configuration.

    ``byterange`` is set when the header is the start of a larger file (a single-file
    rendition: header and every segment are byte ranges of one ``.mp4``).
    """

    uri: str
    size: int
    digest: str
    byterange: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.byterange, list):
            object.__setattr__(self, "byterange", tuple(self.byterange))

    def validate(self, field: str = "init") -> None:
        _check_uri(f"{field}.uri", self.uri)
        _check_int(f"{field}.size", self.size, minimum=1)
        _check_digest(f"{field}.digest", self.digest)
        if self.byterange is not None:
            _check_byterange(f"{field}.byterange", self.byterange, self.size)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri, "size": self.size, "digest": self.digest}
        if self.byterange is not None:  # absent when unused: older files keep their version
            out["byterange"] = [self.byterange[0], self.byterange[1]]
        return out

    @classmethod
    def from_dict(cls, data: Any, field: str = "init") -> InitSection:
        data = _mapping(field, data)
        init = cls(
            uri=_require(data, field, "uri"),
            size=_require(data, field, "size"),
            digest=_require(data, field, "digest"),
            byterange=_byterange_from(data, field),
        )
        init.validate(field)
        return init


@dataclasses.dataclass(frozen=True, slots=True)
class IFrame:
    """One I-frame of a rendition, for trick play (``EXT-X-I-FRAMES-ONLY`` playlists).

    ``uri`` names the file holding it (normally a media segment) and ``byterange`` the bytes
    a player must fetch to decode that one frame (for CMAF: the ``moof`` and the sample's data);
    ``duration`` is the time until the next I-frame, the EXTINF of an I-frame playlist
    (RFC 8216 §4.3.3.6). ``size`` is the range length, or the file size without a range.
    """

    uri: str
    duration: float
    size: int
    byterange: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.byterange, list):
            object.__setattr__(self, "byterange", tuple(self.byterange))

    def validate(self, field: str = "iframe") -> None:
        _check_uri(f"{field}.uri", self.uri)
        _check_number(f"{field}.duration", self.duration, positive=True)
        _check_int(f"{field}.size", self.size, minimum=1)
        if self.byterange is not None:
            _check_byterange(f"{field}.byterange", self.byterange, self.size)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri, "duration": self.duration, "size": self.size}
        if self.byterange is not None:
            out["byterange"] = [self.byterange[0], self.byterange[1]]
        return out

    @classmethod
    def from_dict(cls, data: Any, field: str = "iframe") -> IFrame:
        data = _mapping(field, data)
        frame = cls(
            uri=_require(data, field, "uri"),
            duration=_require(data, field, "duration"),
            size=_require(data, field, "size"),
            byterange=_byterange_from(data, field),
        )
        frame.validate(field)
        return frame


def _check_media(field: str, init: Any, segments: Any) -> None:
    """The init section and segment list every media playlist (video or audio) is made of."""
    if not isinstance(init, InitSection):
        raise _fail(f"{field}.init", "must be an InitSection", init)
    init.validate(f"{field}.init")
    if not isinstance(segments, tuple):
        raise _fail(f"{field}.segments", "must be a tuple of Segment", segments)
    seen: set[tuple[str, tuple[int, int] | None]] = set()
    for i, seg in enumerate(segments):
        sfield = f"{field}.segments[{i}]"
        if not isinstance(seg, Segment):
            raise _fail(sfield, "must be a Segment", seg)
        seg.validate(sfield)
        key = (seg.uri, seg.byterange)
        if key in seen:
            raise _fail(f"{sfield}.uri", "appears twice", seg.uri)
        seen.add(key)


@dataclasses.dataclass(frozen=True, slots=True)
class Rendition:
    """One rung of the ladder: one media playlist, one init section, its segments.

    ``bandwidth`` and ``average_bandwidth`` are stored (not only derived) because while a video
    is ``processing`` the segments seen so far may not represent the whole stream; once ``ready``
    they are :func:`peak_bandwidth` / :func:`average_bandwidth` of the segments.
    """

    name: str
    width: int
    height: int
    bandwidth: int
    average_bandwidth: int
    codecs: str
    video_codec: str
    audio_codec: str | None
    frame_rate: float
    init: InitSection
    segments: tuple[Segment, ...] = ()
    audio_group: str | None = None
    iframes: tuple[IFrame, ...] = ()
    merkle_root: str | None = None

    def __post_init__(self) -> None:
        # Lists are accepted for convenience; stored as tuples so the object stays hashable-ish
        # and immutable. Validation with the full field path happens in VideoMeta.
        if isinstance(self.segments, list):
            object.__setattr__(self, "segments", tuple(self.segments))
        if isinstance(self.iframes, list):
            object.__setattr__(self, "iframes", tuple(self.iframes))

    @property
    def duration(self) -> float:
        """Sum of the segment durations (seconds)."""
        return math.fsum(s.duration for s in self.segments)

    @property
    def target_duration(self) -> int:
        """``EXT-X-TARGETDURATION``: the longest segment rounded to the nearest integer.

        RFC 8216 §4.3.3.1 requires each EXTINF, rounded to the nearest integer, to be <= it.
        """
        longest = max((s.duration for s in self.segments), default=0.0)
        return max(1, math.floor(longest + 0.5))

    @property
    def resolution(self) -> str:
        """``RESOLUTION`` attribute value, ``WIDTHxHEIGHT``."""
        return f"{self.width}x{self.height}"

    def validate(self, field: str = "rendition") -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise _fail(f"{field}.name", "must match [A-Za-z0-9][A-Za-z0-9_-]*", self.name)
        _check_int(f"{field}.width", self.width, minimum=1)
        _check_int(f"{field}.height", self.height, minimum=1)
        _check_int(f"{field}.bandwidth", self.bandwidth)
        _check_int(f"{field}.average_bandwidth", self.average_bandwidth)
        if self.average_bandwidth > self.bandwidth:
            raise _fail(f"{field}.average_bandwidth",
                        f"must not exceed bandwidth {self.bandwidth}", self.average_bandwidth)
        _check_quotable(f"{field}.codecs", self.codecs)
        _check_quotable(f"{field}.video_codec", self.video_codec)
        listed = [c.strip() for c in self.codecs.split(",")]
        if self.video_codec not in listed:
            raise _fail(f"{field}.codecs", f"must list video_codec {self.video_codec!r}",
                        self.codecs)
        if self.audio_codec is not None:
            _check_quotable(f"{field}.audio_codec", self.audio_codec)
            if self.audio_codec not in listed:
                raise _fail(f"{field}.codecs", f"must list audio_codec {self.audio_codec!r}",
                            self.codecs)
        _check_number(f"{field}.frame_rate", self.frame_rate, positive=True)
        if self.audio_group is not None:
            _check_quotable(f"{field}.audio_group", self.audio_group)
        _check_media(field, self.init, self.segments)
        if not isinstance(self.iframes, tuple):
            raise _fail(f"{field}.iframes", "must be a tuple of IFrame", self.iframes)
        seen: set[tuple[str, tuple[int, int] | None]] = set()
        for i, frame in enumerate(self.iframes):
            ifield = f"{field}.iframes[{i}]"
            if not isinstance(frame, IFrame):
                raise _fail(ifield, "must be an IFrame", frame)
            frame.validate(ifield)
            key = (frame.uri, frame.byterange)
            if key in seen:
                raise _fail(f"{ifield}.uri", "appears twice", frame.uri)
            seen.add(key)
        if self.merkle_root is not None:
            if not isinstance(self.merkle_root, str) or not _HEX256.match(self.merkle_root):
                raise _fail(f"{field}.merkle_root", "must be 64 lowercase hex digits",
                            self.merkle_root)
            # Checked, not trusted: a root that does not cover the listed digests would make
            # every segment fail verification downstream (cost: 2n hashes of 33-65 bytes).
            expected = merkle_tree_root([s.digest for s in self.segments])
            if self.merkle_root != expected:
                raise _fail(f"{field}.merkle_root",
                            f"does not match the segment digests (expected {expected!r})",
                            self.merkle_root)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "bandwidth": self.bandwidth,
            "average_bandwidth": self.average_bandwidth,
            "codecs": self.codecs,
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
            "frame_rate": self.frame_rate,
        }
        if self.audio_group is not None:
            out["audio_group"] = self.audio_group
        out["init"] = self.init.to_dict()
        out["segments"] = [s.to_dict() for s in self.segments]
        if self.iframes:  # absent when unused: older files keep their version
            out["iframes"] = [f.to_dict() for f in self.iframes]
        if self.merkle_root is not None:  # likewise
            out["merkle_root"] = self.merkle_root
        return out

    @classmethod
    def from_dict(cls, data: Any, field: str = "rendition") -> Rendition:
        data = _mapping(field, data)
        segs = _list(f"{field}.segments", _require(data, field, "segments"))
        frames = _list(f"{field}.iframes", data.get("iframes", []))
        rendition = cls(
            name=_require(data, field, "name"),
            width=_require(data, field, "width"),
            height=_require(data, field, "height"),
            bandwidth=_require(data, field, "bandwidth"),
            average_bandwidth=_require(data, field, "average_bandwidth"),
            codecs=_require(data, field, "codecs"),
            video_codec=_require(data, field, "video_codec"),
            audio_codec=data.get("audio_codec"),
            frame_rate=_require(data, field, "frame_rate"),
            audio_group=data.get("audio_group"),
            init=InitSection.from_dict(_require(data, field, "init"), f"{field}.init"),
            segments=tuple(
                Segment.from_dict(s, f"{field}.segments[{i}]") for i, s in enumerate(segs)
            ),
            iframes=tuple(
                IFrame.from_dict(f, f"{field}.iframes[{i}]") for i, f in enumerate(frames)
            ),
            merkle_root=data.get("merkle_root"),
        )
        rendition.validate(field)
        return rendition


@dataclasses.dataclass(frozen=True, slots=True)
class AudioRendition:
    """A separate (not muxed) audio media playlist, one member of an ``EXT-X-MEDIA`` group.

    Video renditions whose ``audio_group`` equals ``group`` play with one member of the group
    (the player picks by language / default). ``name`` is the directory, as for a Rendition
    (``/v/{video_id}/{name}/index.m3u8``), so it shares their namespace; ``label`` is the
    human-readable ``NAME`` attribute (``name`` when absent).
    """

    name: str
    group: str
    codec: str
    init: InitSection
    segments: tuple[Segment, ...] = ()
    language: str | None = None
    label: str | None = None
    channels: int | None = None
    default: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.segments, list):
            object.__setattr__(self, "segments", tuple(self.segments))

    @property
    def display_name(self) -> str:
        """The ``NAME`` attribute: ``label``, else ``name``."""
        return self.label if self.label is not None else self.name

    def validate(self, field: str = "audio") -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise _fail(f"{field}.name", "must match [A-Za-z0-9][A-Za-z0-9_-]*", self.name)
        _check_quotable(f"{field}.group", self.group)
        _check_quotable(f"{field}.codec", self.codec)
        if "," in self.codec:
            raise _fail(f"{field}.codec", "must be one RFC 6381 codec string", self.codec)
        if self.language is not None and (
                not isinstance(self.language, str) or not _LANGUAGE.match(self.language)):
            raise _fail(f"{field}.language", "must be a BCP 47 language tag", self.language)
        if self.label is not None:
            _check_quotable(f"{field}.label", self.label)
        if self.channels is not None:
            _check_int(f"{field}.channels", self.channels, minimum=1)
        if not isinstance(self.default, bool):
            raise _fail(f"{field}.default", "must be true or false", self.default)
        _check_media(field, self.init, self.segments)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "group": self.group, "codec": self.codec}
        for key in ("language", "label", "channels"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["default"] = self.default
        out["init"] = self.init.to_dict()
        out["segments"] = [s.to_dict() for s in self.segments]
        return out

    @classmethod
    def from_dict(cls, data: Any, field: str = "audio") -> AudioRendition:
        data = _mapping(field, data)
        segs = _list(f"{field}.segments", _require(data, field, "segments"))
        audio = cls(
            name=_require(data, field, "name"),
            group=_require(data, field, "group"),
            codec=_require(data, field, "codec"),
            init=InitSection.from_dict(_require(data, field, "init"), f"{field}.init"),
            segments=tuple(
                Segment.from_dict(s, f"{field}.segments[{i}]") for i, s in enumerate(segs)
            ),
            language=data.get("language"),
            label=data.get("label"),
            channels=data.get("channels"),
            default=data.get("default", False),
        )
        audio.validate(field)
        return audio


@dataclasses.dataclass(frozen=True, slots=True)
class VideoMeta:
    """A whole video: its state, poster and renditions (lowest bandwidth first).

    ``version`` is not a field: it is a hash of the content (everything except ``created_at``),
    computed on demand, so it changes exactly when something a playlist depends on changes and
    can serve as a validator (ETag) for rendered playlists. It is written into the file for
    readers in other languages; :meth:`from_json` rejects a stored value that does not match.
    """

    video_id: str
    state: State
    duration: float
    renditions: tuple[Rendition, ...]
    poster: str | None = None
    created_at: str = dataclasses.field(default_factory=_now_rfc3339)
    audio: tuple[AudioRendition, ...] = ()
    # ``version``, once computed (hashing the canonical JSON costs ~30 µs and the edge asks for
    # it on every rendered playlist). Not a field of the content: not compared, not copied.
    _version: str | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.renditions, list):
            object.__setattr__(self, "renditions", tuple(self.renditions))
        if isinstance(self.audio, list):
            object.__setattr__(self, "audio", tuple(self.audio))
        self.validate()

    # ------------------------------------------------------------------ derived

    @property
    def version(self) -> str:
        """16 hex digits of the SHA-256 of the canonical content (``created_at`` left out);
        computed once per (immutable) object."""
        if self._version is None:
            content = self._content_dict()
            canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
            version = hashlib.sha256(canonical.encode()).hexdigest()[:16]
            object.__setattr__(self, "_version", version)
            return version
        return self._version

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def rendition(self, name: str) -> Rendition:
        """The rendition called *name*; KeyError when there is none."""
        for r in self.renditions:
            if r.name == name:
                return r
        raise KeyError(name)

    def audio_in_group(self, group: str) -> tuple[AudioRendition, ...]:
        """The members of audio group *group*, in file order (empty when there is none)."""
        return tuple(a for a in self.audio if a.group == group)

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Raise ValueError naming the first bad field; called on construction."""
        if not isinstance(self.video_id, str) or not _VIDEO_ID.match(self.video_id):
            raise _fail("video_id", "must match [A-Za-z0-9][A-Za-z0-9_-]{0,127}", self.video_id)
        if self.state not in STATES:
            raise _fail("state", f"must be one of {', '.join(STATES)}", self.state)
        _check_number("duration", self.duration)
        if self.poster is not None:
            _check_uri("poster", self.poster)
        if not isinstance(self.created_at, str):
            raise _fail("created_at", "must be an RFC 3339 timestamp string", self.created_at)
        try:
            _dt.datetime.fromisoformat(self.created_at)
        except ValueError:
            raise _fail("created_at", "must be an RFC 3339 timestamp", self.created_at) from None
        if not isinstance(self.renditions, tuple):
            raise _fail("renditions", "must be a tuple of Rendition", self.renditions)
        names: set[str] = set()
        for i, r in enumerate(self.renditions):
            field = f"renditions[{i}]"
            if not isinstance(r, Rendition):
                raise _fail(field, "must be a Rendition", r)
            r.validate(field)
            if r.name in names:
                raise _fail(f"{field}.name", "appears twice", r.name)
            names.add(r.name)
        self._validate_audio(names)
        if self.state == "ready":
            if not self.renditions:
                raise _fail("renditions", "a ready video needs at least one rendition", [])
            for i, r in enumerate(self.renditions):
                if not r.segments:
                    raise _fail(f"renditions[{i}].segments",
                                "a ready video needs segments in every rendition", [])
                if r.bandwidth <= 0:
                    raise _fail(f"renditions[{i}].bandwidth", "must be > 0 when ready",
                                r.bandwidth)
                if r.audio_group is not None and not self.audio_in_group(r.audio_group):
                    raise _fail(f"renditions[{i}].audio_group",
                                "a ready video needs the group in 'audio'", r.audio_group)
            for i, a in enumerate(self.audio):
                if not a.segments:
                    raise _fail(f"audio[{i}].segments",
                                "a ready video needs segments in every rendition", [])

    def _validate_audio(self, names: set[str]) -> None:
        """Audio renditions: valid, named apart from every rendition, one default per group.

        Names share the URL namespace with video renditions (``/v/{id}/{name}/``); within a
        group the NAME attribute must be unique and at most one member may be DEFAULT=YES
        (RFC 8216 §4.3.4.1.1).
        """
        if not isinstance(self.audio, tuple):
            raise _fail("audio", "must be a tuple of AudioRendition", self.audio)
        labels: set[tuple[str, str]] = set()
        defaults: set[str] = set()
        for i, a in enumerate(self.audio):
            field = f"audio[{i}]"
            if not isinstance(a, AudioRendition):
                raise _fail(field, "must be an AudioRendition", a)
            a.validate(field)
            if a.name in names:
                raise _fail(f"{field}.name", "appears twice (renditions and audio)", a.name)
            names.add(a.name)
            if (a.group, a.display_name) in labels:
                raise _fail(f"{field}.label", f"appears twice in group {a.group!r}",
                            a.display_name)
            labels.add((a.group, a.display_name))
            if a.default:
                if a.group in defaults:
                    raise _fail(f"{field}.default", f"a second default in group {a.group!r}",
                                a.default)
                defaults.add(a.group)

    # ------------------------------------------------------------------ (de)serialisation

    def _content_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "video_id": self.video_id,
            "state": self.state,
            "duration": self.duration,
            "poster": self.poster,
            "renditions": [r.to_dict() for r in self.renditions],
            # absent when unused: older files keep their version
            **({"audio": [a.to_dict() for a in self.audio]} if self.audio else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        out = self._content_dict()
        out["version"] = self.version
        out["created_at"] = self.created_at
        return out

    def to_json(self) -> str:
        """Pretty JSON (stable key order, trailing newline): diffs and humans read it too."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> VideoMeta:
        data = _mapping("(top level)", data)
        schema = data.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise _fail("schema", f"unsupported schema (this reader knows {SCHEMA})", schema)
        renditions = _list("renditions", _require(data, "", "renditions"))
        audio = _list("audio", data.get("audio", []))
        created_at = data.get("created_at")
        meta = cls(
            video_id=_require(data, "", "video_id"),
            state=_require(data, "", "state"),
            duration=_require(data, "", "duration"),
            poster=data.get("poster"),
            renditions=tuple(
                Rendition.from_dict(r, f"renditions[{i}]") for i, r in enumerate(renditions)
            ),
            audio=tuple(AudioRendition.from_dict(a, f"audio[{i}]") for i, a in enumerate(audio)),
            **({"created_at": created_at} if created_at is not None else {}),
        )
        stored = data.get("version")
        if stored is not None and stored != meta.version:
            raise _fail("version", f"does not match the content (expected {meta.version!r}; "
                        "was the file edited without recomputing it?)", stored)
        return meta

    @classmethod
    def from_json(cls, text: str | bytes) -> VideoMeta:
        """Parse and validate; ValueError (naming the field) for anything malformed."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"meta.json: not valid JSON: {exc}") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------------ files

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> VideoMeta:
        """Load a ``meta.json`` file."""
        return cls.from_json(Path(path).read_bytes())

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + rename): a reader never sees half a file."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=".meta-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the file is served to the world
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def replace(self, **changes: Any) -> VideoMeta:
        """A copy with *changes* applied (validated again; ``version`` follows the content)."""
        return dataclasses.replace(self, **changes)


def renditions_sorted(renditions: Sequence[Rendition]) -> tuple[Rendition, ...]:
    """Lowest first, the order of ``renditions`` and of the master playlist (first = start).

    By picture size, then bandwidth: simple content can make a bigger rung cost fewer bits than
    a smaller one, yet "lowest" means the smallest picture to players and people.
    """
    return tuple(sorted(renditions, key=lambda r: (r.width * r.height, r.bandwidth, r.name)))
