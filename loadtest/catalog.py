"""The catalog (which videos exist) and popularity (which one a new viewer picks).

A catalog file has one video per line: a video id (``demo-1`` → ``/v/demo-1/master.m3u8``), a
path (``/v/x/master.m3u8``) or an absolute master URL; blank lines and ``#`` comments are
skipped. With ``--target`` given, paths and URLs are rebased onto the target(s), so the same
catalog drives reelcdn and nginx alike. ``reelcdn up`` writes ``catalog.txt`` in its data dir.

Popularity is Zipf: the video of rank ``k`` (its line in the file) is chosen with weight
``1 / k**s``. Short-video traffic is strongly skewed; ``s`` around 0.8-1.0 is what measurement
studies of video popularity report, and ``s = 0`` is uniform.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class CatalogError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Video:
    video: str      # a name for reports (the id, or the master path)
    path: str       # path (+ query) of the master playlist on a target
    url: str | None = None   # an absolute master URL from the file (used when no target)


def parse_line(line: str) -> Video | None:
    text = line.split("#", 1)[0].strip() if not line.lstrip().startswith("http") \
        else line.strip()
    if not text:
        return None
    if text.startswith(("http://", "https://")):
        parts = urlsplit(text)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return Video(_name_of(parts.path), path, text)
    if text.startswith("/"):
        return Video(_name_of(text), text)
    if "/" in text or " " in text:
        raise CatalogError(f"{text!r} is neither a video id, a /path nor an http(s) URL")
    return Video(text, f"/v/{text}/master.m3u8")


def _name_of(path: str) -> str:
    """``/v/demo-1/master.m3u8`` → ``demo-1``; other paths stay whole."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "v":
        return parts[1]
    return path


def load_catalog(path: str | Path) -> list[Video]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"--catalog {path}: {exc.strerror or exc}") from None
    videos = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            video = parse_line(line)
        except CatalogError as exc:
            raise CatalogError(f"--catalog {path} line {number}: {exc}") from None
        if video is not None:
            videos.append(video)
    if not videos:
        raise CatalogError(f"--catalog {path}: no video in the file")
    return videos


def master_url(video: Video, target: str | None) -> str:
    if target:
        return target.rstrip("/") + video.path
    if video.url is None:
        raise CatalogError(f"{video.video}: a video id or path needs --target")
    return video.url


class Zipf:
    """Draw catalog indices with weight ``1 / rank**exponent`` (rank = index + 1)."""

    def __init__(self, size: int, exponent: float) -> None:
        if size <= 0:
            raise ValueError("an empty catalog")
        weights = [1.0 / (rank ** exponent) for rank in range(1, size + 1)]
        self.cumulative = list(itertools.accumulate(weights))

    def draw(self, rng: random.Random) -> int:
        point = rng.random() * self.cumulative[-1]
        return min(bisect.bisect_right(self.cumulative, point), len(self.cumulative) - 1)
