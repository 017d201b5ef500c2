"""Body verification: every init and media segment a player receives checked against the
``size`` and ``digest`` (SHA-256) its video's ``meta.json`` declares (docs/meta-json.md).

Why from ``meta.json``: it is what the transcoder wrote while it still had the bytes, so a
body that differs from it in any byte was damaged somewhere between the origin's disk and the
player (a truncated fill stored as whole, two versions spliced by a resume, a cache serving
one object for another). A player checks it incrementally, as chunks arrive, so verifying
costs one SHA-256 pass and no copy of the body.

The reference comes from the origin's files (``digests_from_dir``: the truth, independent of
the CDN under test) or, for a CDN whose origin is not at hand, from ``meta.json`` fetched
through the CDN (``fetch_digests``). Objects ``meta.json`` lists as byte ranges of a larger
file are not checked (players here fetch whole files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from reelcdn.manifests.meta import VideoMeta


@dataclass(frozen=True, slots=True)
class Expected:
    """What ``meta.json`` says one object is: its size in bytes and SHA-256 (hex)."""

    size: int
    sha256: str


Digests = Mapping[str, Expected]
"""Request path (``/v/{id}/{rendition}/{uri}``, no query) → what its body must be."""


def digests_from_meta(meta: VideoMeta, video_dir: str) -> dict[str, Expected]:
    """The checkable objects of one video; ``video_dir`` is its URL directory (``/v/demo-1``)."""
    table: dict[str, Expected] = {}
    base = video_dir.rstrip("/")
    for rendition in (*meta.renditions, *meta.audio):
        objects = [rendition.init, *rendition.segments]
        for item in objects:
            if item.byterange is not None:
                continue
            table[f"{base}/{rendition.name}/{item.uri}"] = Expected(
                item.size, item.digest.removeprefix("sha256:"))
    return table


def video_dir_of(master_path: str) -> str:
    """``/v/demo-1/master.m3u8?x=1`` → ``/v/demo-1``."""
    return master_path.split("?", 1)[0].rsplit("/", 1)[0]


def digests_from_dir(origin_root: Path, master_paths: Iterable[str]) -> dict[str, Expected]:
    """Read ``{origin_root}{video_dir}/meta.json`` of each video (the origin's own files);
    a video without a readable meta.json raises ValueError naming it."""
    table: dict[str, Expected] = {}
    for master in master_paths:
        video_dir = video_dir_of(master)
        path = Path(origin_root) / video_dir.lstrip("/") / "meta.json"
        try:
            meta = VideoMeta.read(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read the reference digests: {exc}") from None
        table.update(digests_from_meta(meta, video_dir))
    return table


async def fetch_digests(base_url: str, master_paths: Iterable[str],
                        timeout: float = 10.0) -> dict[str, Expected]:
    """Fetch each video's ``meta.json`` through ``base_url`` (a CDN edge or an origin)."""
    table: dict[str, Expected] = {}
    async with aiohttp.ClientSession() as session:
        for master in master_paths:
            video_dir = video_dir_of(master)
            url = base_url.rstrip("/") + video_dir + "/meta.json"
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    if r.status != 200:
                        raise ValueError(f"HTTP {r.status}")
                    text = await r.text()
                meta = VideoMeta.from_json(text)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise ValueError(f"{url}: cannot read the reference digests: {exc}") from None
            table.update(digests_from_meta(meta, video_dir))
    return table


class BodyCheck:
    """One body checked as it arrives: ``feed`` each chunk, then ``problem()``."""

    __slots__ = ("expected", "hasher", "size")

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self.hasher = hashlib.sha256()
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.hasher.update(chunk)

    def problem(self) -> str | None:
        """None when the body is what meta.json says, else what differs."""
        if self.size != self.expected.size:
            return f"size {self.size} != {self.expected.size}"
        digest = self.hasher.hexdigest()
        if digest != self.expected.sha256:
            return f"sha256 {digest[:16]}… != {self.expected.sha256[:16]}…"
        return None


def check_body(expected: Expected, body: bytes) -> str | None:
    """A whole body at once (tests, tools): None when it matches."""
    check = BodyCheck(expected)
    check.feed(body)
    return check.problem()


def summary_of(results: Iterable[Any]) -> dict[str, Any]:
    """Totals over player results (``verified``, ``corrupted``… fields)."""
    bodies = checked_bytes = corrupted = corrupted_bytes = 0
    examples: list[dict[str, Any]] = []
    for result in results:
        bodies += result.verified
        checked_bytes += result.verified_bytes
        corrupted += result.corrupted
        corrupted_bytes += result.corrupted_bytes
        for example in result.corruptions:
            if len(examples) < 10:
                examples.append(example)
    return {"bodies": bodies, "bytes": checked_bytes, "corrupted_bodies": corrupted,
            "corrupted_bytes": corrupted_bytes, "examples": examples}


def as_table(digests: Mapping[str, Expected]) -> dict[str, list[Any]]:
    """JSON form (path → [size, sha256])."""
    return {path: [e.size, e.sha256] for path, e in digests.items()}
