"""The video catalog: each video's owner, title and processing status, in SQLite.

One row per video id (the id of its upload). The status moves ``uploading`` → ``processing``
(the upload is complete and queued; once the first rendition is published the row lists it) →
``ready``, or → ``failed`` with a reason a person can act on. The upload service creates rows,
the transcoding workers move them along, the API reads them. SQLite in WAL mode with a
``busy_timeout`` is shared by the service and the worker processes of one host.

:class:`Catalog` is the interface every caller is typed against (the service, the API, the
pipeline, the worker command); :class:`VideoCatalog` is its SQLite implementation and the
reference for its semantics. Origin hosts that share one catalog use
:class:`reelcdn.origin.videos_dynamo.DynamoCatalog` (DynamoDB), which keeps the same rules with
conditional writes. A catalog whose database fails or cannot be reached raises
:class:`CatalogUnavailable` (the API answers 503).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from reelcdn.origin.sqlite_file import SqliteFile

STATUSES = ("uploading", "processing", "ready", "failed", "deleted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    caption TEXT NOT NULL DEFAULT '',
    hashtags TEXT NOT NULL DEFAULT '[]',
    filename TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    error TEXT,
    duration REAL,
    renditions TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    timings TEXT
);
CREATE INDEX IF NOT EXISTS videos_owner ON videos (owner, created);
CREATE INDEX IF NOT EXISTS videos_status ON videos (status, created)
"""


def hashtags_of(text: str) -> list[str]:
    """``"#cats  dogs,#fun"`` → ``["cats", "dogs", "fun"]``: tags as an uploader types them."""
    tags = []
    for word in text.replace(",", " ").split():
        tag = word.lstrip("#").strip()
        if tag and tag not in tags:
            tags.append(tag[:64])
    return tags[:30]


def row_fields(metadata: dict[str, str]) -> dict[str, Any]:
    """The text a new row keeps of an upload's metadata, cut to the catalog's lengths
    (``hashtags`` parsed into a list): the same in every implementation."""
    return {
        "title": metadata.get("title", "")[:200],
        "caption": metadata.get("caption", "")[:2000],
        "hashtags": hashtags_of(metadata.get("hashtags", "")),
        "filename": metadata.get("filename", "")[:255],
    }


class CatalogUnavailable(RuntimeError):
    """The catalog's database failed or could not be reached (throttled, unreachable, its
    table missing): nothing was changed that the caller can rely on; try again later."""


class Catalog(Protocol):
    """The video catalog, as its callers use it; every implementation keeps these rules.

    A row (``get``, ``by_owner``) is a dict with exactly the keys ``id``, ``owner``,
    ``title``, ``caption``, ``hashtags`` (list), ``filename``, ``status``, ``error`` (str or
    None), ``duration`` (float or None), ``renditions`` (list), ``created``, ``updated`` (Unix
    seconds, float). Methods are called from several threads at once.
    """

    def create(self, video_id: str, owner: str, metadata: dict[str, str],
               status: str = "uploading") -> None:
        """A row for a new upload; an existing row is left as it is (creation is retried),
        even when two hosts create the same id at once: the first write wins."""
        ...

    def set_status(
        self,
        video_id: str,
        status: str,
        *,
        error: str | None = None,
        duration: float | None = None,
        renditions: Sequence[str] | None = None,
    ) -> None:
        """Set ``status`` and ``error`` (None clears it); ``duration`` and ``renditions`` only
        when given. ValueError for a status not in STATUSES, KeyError for an unknown id. A
        ``ready`` video is never set back to ``processing`` (the call does nothing), checked
        atomically with the write."""
        ...

    def get(self, video_id: str) -> dict[str, Any] | None:
        """The row, as of the latest write (any host's), or None."""
        ...

    def count_by_status(self) -> dict[str, int]:
        """Rows per status; statuses with none are left out. For a gauge: on a shared
        catalog it may lag the latest writes by a moment."""
        ...

    def by_owner(self, owner: str, limit: int = 100) -> list[dict[str, Any]]:
        """An owner's rows, newest ``created`` first, at most ``limit`` (0: none; negative:
        all). On a shared catalog it may lag the latest writes by a moment (an index)."""
        ...

    def newest(self, status: str, limit: int = 100) -> list[dict[str, Any]]:
        """Rows in ``status``, newest ``created`` first, at most ``limit`` (0: none; negative:
        all): the feeds' pool of videos. On a shared catalog it may lag the latest writes by
        a moment, and it may cost a read of the whole table (DynamoDB: a Scan)."""
        ...

    def record_timings(self, video_id: str, timings: Mapping[str, float]) -> None:
        """Keep how long the video's transcoding took to publish each rendition (rendition
        → seconds from the job's start), replacing what a rerun recorded before. Workers
        write them; the API service's metrics read them (:meth:`publish_times`). Not part of
        a row. KeyError for an unknown id."""
        ...

    def publish_times(self) -> dict[str, list[float]]:
        """Every recorded publish time, by rendition: the samples of a histogram that any
        host can rebuild (deleted videos' rows keep theirs, so it never decreases)."""
        ...

    def close(self) -> None:
        ...


class VideoCatalog(SqliteFile):
    """The catalog in one SQLite file; usable from several threads of one process."""

    def __init__(self, path: str | Path, busy_timeout: float = 10.0) -> None:
        self._open(path, _SCHEMA, synchronous="FULL", busy_timeout=busy_timeout,
                   row_factory=sqlite3.Row)
        with self._write() as conn:
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(videos)")}
            if "timings" not in columns:  # a catalog made before publish times were kept
                conn.execute("ALTER TABLE videos ADD COLUMN timings TEXT")

    def create(self, video_id: str, owner: str, metadata: dict[str, str],
               status: str = "uploading") -> None:
        """A row for a new upload (nothing changes if it exists: creation is retried)."""
        now = time.time()
        fields = row_fields(metadata)
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO videos (id, owner, title, caption, hashtags, filename,"
                " status, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (video_id, owner, fields["title"], fields["caption"],
                 json.dumps(fields["hashtags"]), fields["filename"], status, now, now),
            )

    def set_status(
        self,
        video_id: str,
        status: str,
        *,
        error: str | None = None,
        duration: float | None = None,
        renditions: Sequence[str] | None = None,
    ) -> None:
        """Move a video along. A ``ready`` video is never set back to ``processing`` (a step
        run again after a lost lease republishes the same result)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._write() as conn:
            row = conn.execute("SELECT status FROM videos WHERE id = ?", (video_id,)).fetchone()
            if row is None:
                raise KeyError(video_id)
            if row["status"] == "ready" and status == "processing":
                return
            conn.execute(
                "UPDATE videos SET status = ?, error = ?, duration = COALESCE(?, duration),"
                " renditions = COALESCE(?, renditions), updated = ? WHERE id = ?",
                (status, error, duration,
                 None if renditions is None else json.dumps(list(renditions)),
                 time.time(), video_id),
            )

    def get(self, video_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM videos WHERE id = ?", (video_id,)).fetchone()
        return None if row is None else _as_dict(row)

    def record_timings(self, video_id: str, timings: Mapping[str, float]) -> None:
        body = json.dumps({str(k): float(v) for k, v in timings.items()})
        with self._write() as conn:
            if conn.execute("UPDATE videos SET timings = ? WHERE id = ?",
                            (body, video_id)).rowcount == 0:
                raise KeyError(video_id)

    def publish_times(self) -> dict[str, list[float]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT timings FROM videos WHERE timings IS NOT NULL").fetchall()
        samples: dict[str, list[float]] = {}
        for row in rows:
            for rendition, seconds in json.loads(row["timings"]).items():
                samples.setdefault(rendition, []).append(float(seconds))
        return samples

    def count_by_status(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT status, COUNT(*) AS n FROM videos GROUP BY status").fetchall()
        return {row["status"]: row["n"] for row in rows}

    def by_owner(self, owner: str, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM videos WHERE owner = ? ORDER BY created DESC LIMIT ?",
                (owner, limit),
            ).fetchall()
        return [_as_dict(row) for row in rows]

    def newest(self, status: str, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM videos WHERE status = ? ORDER BY created DESC, id DESC LIMIT ?",
                (status, limit),
            ).fetchall()
        return [_as_dict(row) for row in rows]


def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
    video = dict(row)
    video.pop("timings", None)  # not part of a row: see Catalog.record_timings
    video["hashtags"] = json.loads(video["hashtags"])
    video["renditions"] = json.loads(video["renditions"])
    return video
