"""The engagement store: likes, follows, view counters, what each user played, the edges' play
batches already counted, the feeds' session snapshots. SQLite (WAL) in the API's data dir.

:class:`EngagementStore` is the interface the feed service is typed against (as the catalog's
``Catalog`` is), so a shared backend can take the place of :class:`SqliteEngagementStore`
later; one SQLite file serves the API processes of one host.

Tables (``DATA_DIR/feed.sqlite``):

==============  =========================================================================
likes           (user, video) — a like; the primary key makes a second like nothing
follows         (follower, followee)
counters        per video: views (play starts), completions, likes — counted as they come
views_hourly    per video and hour (its start, Unix seconds): starts, completions — the
                trending score's input; rows older than the trending window are dropped
seen            (user, video, at): videos the user played (from the edges' CMCD sessions)
sessions        CMCD session id → user, for a while (``register_session``)
batches         play batch ids already counted, with their ``unknown`` count and when;
                kept ``BATCH_KEEP`` (48 h), then dropped
snapshots       a feed session's ranked video ids (JSON), until it expires
==============  =========================================================================

Methods are called from several threads at once (one connection behind a lock).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reelcdn.origin.sqlite_file import SqliteFile

__all__ = ["BATCH_KEEP", "Counters", "EngagementStore", "Play", "SqliteEngagementStore"]

#: How long a play batch id is remembered (a retried batch inside it is counted once).
BATCH_KEEP = 48 * 3600.0
HOUR = 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS likes (
    user TEXT NOT NULL, video TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (user, video)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS likes_user_at ON likes (user, at);
CREATE TABLE IF NOT EXISTS follows (
    follower TEXT NOT NULL, followee TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (follower, followee)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    video TEXT PRIMARY KEY, views INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0, likes INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS views_hourly (
    hour INTEGER NOT NULL, video TEXT NOT NULL, starts INTEGER NOT NULL,
    completions INTEGER NOT NULL, PRIMARY KEY (hour, video)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    user TEXT NOT NULL, video TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (user, video)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_user_at ON seen (user, at);
CREATE TABLE IF NOT EXISTS sessions (
    sid TEXT PRIMARY KEY, user TEXT NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    batch TEXT PRIMARY KEY, node TEXT NOT NULL, unknown INTEGER NOT NULL, at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_at ON batches (at);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY, items TEXT NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshots_expires ON snapshots (expires)
"""


@dataclass(frozen=True, slots=True)
class Play:
    """One video's plays in a batch: starts, completions, the CMCD session ids that started
    it."""

    video: str
    starts: int
    completions: int
    sessions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Counters:
    views: int = 0
    likes: int = 0
    completions: int = 0


class EngagementStore(Protocol):
    """What the feed service keeps of users' engagement; every implementation keeps these
    rules: likes and follows are sets (adding twice is adding once), a play batch is counted
    once however often it is sent (within ``BATCH_KEEP``)."""

    def like(self, user: str, video: str, now: float) -> bool:
        """Add a like; True if it is new (then the video's like counter goes up)."""
        ...

    def unlike(self, user: str, video: str) -> bool:
        """Remove a like; True if there was one."""
        ...

    def follow(self, follower: str, followee: str, now: float) -> bool:
        ...

    def unfollow(self, follower: str, followee: str) -> bool:
        ...

    def follows_of(self, user: str, limit: int) -> list[str]:
        """Whom ``user`` follows, most recently followed first."""
        ...

    def likes_of(self, user: str, limit: int) -> list[str]:
        """The videos ``user`` liked, most recent first."""
        ...

    def seen_of(self, user: str, limit: int) -> list[str]:
        """The videos ``user`` played, most recent first."""
        ...

    def viewer_marks(self, user: str, videos: Sequence[str],
                     owners: Sequence[str]) -> tuple[set[str], set[str]]:
        """Which of *videos* ``user`` likes and which of *owners* ``user`` follows (what a
        feed page shows on its buttons)."""
        ...

    def counters(self, videos: Iterable[str]) -> dict[str, Counters]:
        """The counters of those videos that have any."""
        ...

    def hourly_views(self, since: float) -> dict[str, list[tuple[float, int]]]:
        """Per video, ``(hour start, starts)`` of the hours starting at or after ``since``."""
        ...

    def ingest(self, batch: str, node: str, plays: Sequence[Play], unknown: int,
               now: float) -> tuple[bool, int]:
        """Count a play batch once: ``(duplicate, unknown)``; a batch already counted changes
        nothing and answers the ``unknown`` it was counted with. Sessions registered to a user
        mark the video seen for that user."""
        ...

    def register_session(self, sid: str, user: str, expires: float, now: float) -> bool:
        """Map a CMCD session id to ``user`` until ``expires``; False if another user holds
        it (unexpired)."""
        ...

    def save_snapshot(self, snapshot: str, items: Sequence[str], expires: float) -> None:
        """Keep a feed session's ranked ids; an existing id keeps its items, and the later of
        the two expiries (a shared snapshot lives as long as its last session)."""
        ...

    def snapshot(self, snapshot: str, now: float) -> list[str] | None:
        """The ranked ids, or None once expired or unknown."""
        ...

    def cleanup(self, now: float, hourly_before: float) -> dict[str, int]:
        """Drop batch ids older than ``BATCH_KEEP``, hourly rows of hours before
        ``hourly_before``, expired snapshots and sessions: rows dropped per table."""
        ...

    def close(self) -> None:
        ...


class SqliteEngagementStore(SqliteFile):
    """The engagement store in one SQLite file (WAL); usable from several threads."""

    def __init__(self, path: str | Path, busy_timeout: float = 10.0) -> None:
        # NORMAL: a power cut may lose the last transactions; a lost batch's retry by the
        # edge is then counted (once), a lost like is liked again.
        self._open(path, _SCHEMA, synchronous="NORMAL", busy_timeout=busy_timeout)

    # -- likes and follows ---------------------------------------------------------------------

    def like(self, user: str, video: str, now: float) -> bool:
        with self._write() as conn:
            added = conn.execute("INSERT OR IGNORE INTO likes (user, video, at) VALUES (?, ?, ?)",
                                 (user, video, now)).rowcount == 1
            if added:
                conn.execute("INSERT INTO counters (video, likes) VALUES (?, 1) ON CONFLICT "
                             "(video) DO UPDATE SET likes = likes + 1", (video,))
        return added

    def unlike(self, user: str, video: str) -> bool:
        with self._write() as conn:
            removed = conn.execute("DELETE FROM likes WHERE user = ? AND video = ?",
                                   (user, video)).rowcount == 1
            if removed:
                conn.execute("UPDATE counters SET likes = MAX(0, likes - 1) WHERE video = ?",
                             (video,))
        return removed

    def follow(self, follower: str, followee: str, now: float) -> bool:
        with self._write() as conn:
            return conn.execute(
                "INSERT OR IGNORE INTO follows (follower, followee, at) VALUES (?, ?, ?)",
                (follower, followee, now)).rowcount == 1

    def unfollow(self, follower: str, followee: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM follows WHERE follower = ? AND followee = ?",
                                (follower, followee)).rowcount == 1

    def follows_of(self, user: str, limit: int) -> list[str]:
        return [row[0] for row in self._read(
            "SELECT followee FROM follows WHERE follower = ? ORDER BY at DESC, followee "
            "LIMIT ?", (user, limit))]

    def likes_of(self, user: str, limit: int) -> list[str]:
        return [row[0] for row in self._read(
            "SELECT video FROM likes WHERE user = ? ORDER BY at DESC, video LIMIT ?",
            (user, limit))]

    def seen_of(self, user: str, limit: int) -> list[str]:
        return [row[0] for row in self._read(
            "SELECT video FROM seen WHERE user = ? ORDER BY at DESC, video LIMIT ?",
            (user, limit))]

    def viewer_marks(self, user: str, videos: Sequence[str],
                     owners: Sequence[str]) -> tuple[set[str], set[str]]:
        liked: set[str] = set()
        followed: set[str] = set()
        for wanted, sql, into in (
                (list(dict.fromkeys(videos)), "SELECT video FROM likes WHERE user = ? AND "
                 "video IN ({})", liked),
                (list(dict.fromkeys(owners)), "SELECT followee FROM follows WHERE follower = ? "
                 "AND followee IN ({})", followed)):
            for start in range(0, len(wanted), 500):  # SQLite's bound on variables
                chunk = wanted[start:start + 500]
                into.update(row[0] for row in self._read(
                    sql.format(",".join("?" * len(chunk))), (user, *chunk)))
        return liked, followed

    # -- counters ------------------------------------------------------------------------------

    def counters(self, videos: Iterable[str]) -> dict[str, Counters]:
        wanted = list(dict.fromkeys(videos))
        found: dict[str, Counters] = {}
        for start in range(0, len(wanted), 500):  # SQLite's bound on variables
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for video, views, likes, completions in self._read(
                    f"SELECT video, views, likes, completions FROM counters "
                    f"WHERE video IN ({marks})", chunk):
                found[video] = Counters(views, likes, completions)
        return found

    def hourly_views(self, since: float) -> dict[str, list[tuple[float, int]]]:
        views: dict[str, list[tuple[float, int]]] = {}
        for hour, video, starts in self._read(
                "SELECT hour, video, starts FROM views_hourly WHERE hour >= ?",
                (int(since // HOUR * HOUR),)):
            if hour >= since:
                views.setdefault(video, []).append((float(hour), starts))
        return views

    # -- play batches --------------------------------------------------------------------------

    def ingest(self, batch: str, node: str, plays: Sequence[Play], unknown: int,
               now: float) -> tuple[bool, int]:
        hour = int(now // HOUR * HOUR)
        with self._write() as conn:
            if conn.execute("INSERT OR IGNORE INTO batches (batch, node, unknown, at) "
                            "VALUES (?, ?, ?, ?)", (batch, node, unknown, now)).rowcount == 0:
                row = conn.execute("SELECT unknown FROM batches WHERE batch = ?",
                                   (batch,)).fetchone()
                return True, int(row[0])
            conn.executemany(
                "INSERT INTO counters (video, views, completions) VALUES (?, ?, ?) "
                "ON CONFLICT (video) DO UPDATE SET views = views + excluded.views, "
                "completions = completions + excluded.completions",
                [(p.video, p.starts, p.completions) for p in plays])
            conn.executemany(
                "INSERT INTO views_hourly (hour, video, starts, completions) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (hour, video) DO UPDATE SET starts = starts + excluded.starts, "
                "completions = completions + excluded.completions",
                [(hour, p.video, p.starts, p.completions) for p in plays])
            sids = sorted({sid for p in plays for sid in p.sessions})
            owners: dict[str, str] = {}
            for start in range(0, len(sids), 500):
                chunk = sids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                owners.update(conn.execute(
                    f"SELECT sid, user FROM sessions WHERE expires > ? AND sid IN ({marks})",
                    (now, *chunk)).fetchall())
            seen = {(owners[sid], p.video) for p in plays for sid in p.sessions if sid in owners}
            conn.executemany(
                "INSERT INTO seen (user, video, at) VALUES (?, ?, ?) ON CONFLICT (user, video) "
                "DO UPDATE SET at = excluded.at", [(user, video, now) for user, video in seen])
        return False, unknown

    def register_session(self, sid: str, user: str, expires: float, now: float) -> bool:
        with self._write() as conn:
            row = conn.execute("SELECT user, expires FROM sessions WHERE sid = ?",
                               (sid,)).fetchone()
            if row is not None and row[0] != user and row[1] > now:
                return False
            conn.execute("INSERT INTO sessions (sid, user, expires) VALUES (?, ?, ?) "
                         "ON CONFLICT (sid) DO UPDATE SET user = excluded.user, "
                         "expires = excluded.expires", (sid, user, expires))
        return True

    # -- snapshots -----------------------------------------------------------------------------

    def save_snapshot(self, snapshot: str, items: Sequence[str], expires: float) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO snapshots (id, items, expires) VALUES (?, ?, ?) "
                         "ON CONFLICT (id) DO UPDATE SET expires = MAX(expires, "
                         "excluded.expires)", (snapshot, json.dumps(list(items)), expires))

    def snapshot(self, snapshot: str, now: float) -> list[str] | None:
        rows = self._read("SELECT items FROM snapshots WHERE id = ? AND expires > ?",
                          (snapshot, now))
        return None if not rows else list(json.loads(rows[0][0]))

    # -- cleanup -------------------------------------------------------------------------------

    def cleanup(self, now: float, hourly_before: float) -> dict[str, int]:
        with self._write() as conn:
            return {
                "batches": conn.execute("DELETE FROM batches WHERE at < ?",
                                        (now - BATCH_KEEP,)).rowcount,
                "views_hourly": conn.execute("DELETE FROM views_hourly WHERE hour < ?",
                                             (int(hourly_before // HOUR * HOUR),)).rowcount,
                "snapshots": conn.execute("DELETE FROM snapshots WHERE expires <= ?",
                                          (now,)).rowcount,
                "sessions": conn.execute("DELETE FROM sessions WHERE expires <= ?",
                                         (now,)).rowcount,
            }
