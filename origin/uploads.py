"""The durable upload store: one data file per upload, the uploads' state in SQLite.

Layout under the data dir::

    uploads.sqlite3 (+ -wal, -shm)   one row per upload (WAL journal, synchronous=FULL)
    uploads/{video_id}.bin          the upload's bytes; the whole video once it is uploaded

The rule that makes offsets survive a crash, ``kill -9`` included: a PATCH's bytes are
written to the data file and fsynced *before* the new offset is committed, so the committed
offset never exceeds the bytes on disk. Bytes past the committed offset (a PATCH cut short by
the crash, or refused) are cut off when the store opens and before every write, so a later
PATCH at the committed offset always lands at the right place.

A row keeps, besides length, offset, metadata, owner and expiry, ``checksum``: the
``Upload-Checksum`` of the last PATCH that carried one (verified before it was kept); once
the upload is complete ``sha256``, the digest of the whole file, and ``notified``, whether the
completion hook has taken it. Expired and terminated uploads stay a week as tombstones (their
files removed) so that they answer 410.

The store is synchronous and thread-safe (one connection behind a lock): the API runs its
fsyncs and commits in a worker thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from reelcdn.origin.tus import UploadView

UPLOADING = "uploading"
UPLOADED = "uploaded"
EXPIRED = "expired"
TERMINATED = "terminated"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    length INTEGER NOT NULL,
    offset INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    state TEXT NOT NULL,
    checksum TEXT,
    sha256 TEXT,
    notified INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_expiry ON uploads(state, expires);
"""


def new_video_id() -> str:
    """16 random bytes, lowercase base32 without padding: 26 URL-safe characters."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def valid_video_id(text: str) -> bool:
    return len(text) == 26 and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in text)


@dataclass
class Upload(UploadView):
    id: str = ""
    owner: str = ""
    created: float = 0.0
    checksum: str | None = None
    sha256: str | None = None
    path: Path = field(default_factory=Path)

    @property
    def complete(self) -> bool:
        return self.state == UPLOADED


class UploadStore:
    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "uploads"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # sha256 of each incomplete upload's committed bytes, kept while the process runs (so
        # completing an upload does not read it again): {video_id: (offset, hash)}.
        self._running: dict[str, tuple[int, hashlib._Hash]] = {}
        self._db = sqlite3.connect(self.data_dir / "uploads.sqlite3", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.recover()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def path_of(self, video_id: str) -> Path:
        return self.files_dir / f"{video_id}.bin"

    # -- reading -------------------------------------------------------------------------------

    def _row(self, row: tuple) -> Upload:
        (vid, owner, length, offset, metadata, created, expires, state, checksum,
         sha256) = row
        return Upload(length=length, offset=offset, state=state, expires=expires,
                      metadata=json.loads(metadata), id=vid, owner=owner, created=created,
                      checksum=checksum, sha256=sha256, path=self.path_of(vid))

    _COLUMNS = "id, owner, length, offset, metadata, created, expires, state, checksum, sha256"

    def get(self, video_id: str) -> Upload | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLUMNS} FROM uploads WHERE id = ?",
                                   (video_id,)).fetchone()
        return self._row(row) if row else None

    def all(self) -> list[Upload]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM uploads").fetchall()
        return [self._row(row) for row in rows]

    # -- changing ------------------------------------------------------------------------------

    def create(self, owner: str, length: int, metadata: dict[str, str], now: float,
               expires: float | None) -> Upload:
        """A new upload with an empty, fsynced data file (the file first: a crash between
        the two leaves an orphan file, which ``recover`` removes)."""
        video_id = new_video_id()
        path = self.path_of(video_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.files_dir)
        state = UPLOADED if length == 0 else UPLOADING
        sha256 = hashlib.sha256().hexdigest() if length == 0 else None
        with self._lock:
            self._db.execute(
                "INSERT INTO uploads (id, owner, length, offset, metadata, created, expires,"
                " state, sha256, updated) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
                (video_id, owner, length, json.dumps(metadata), now, expires, state, sha256,
                 now),
            )
        upload = self.get(video_id)
        assert upload is not None
        return upload

    def open_writer(self, upload: Upload) -> UploadWriter:
        return UploadWriter(self, upload)

    def commit(self, upload: Upload, new_offset: int, checksum: str | None, now: float,
               expires: float | None, sha256: str | None = None) -> bool:
        """Record ``new_offset`` (its bytes already fsynced). True when the upload is now
        complete. Only moves an ``uploading`` upload forward from its committed offset."""
        complete = new_offset == upload.length
        with self._lock:
            cursor = self._db.execute(
                "UPDATE uploads SET offset = ?, checksum = COALESCE(?, checksum), expires = ?,"
                " state = ?, sha256 = ?, updated = ? WHERE id = ? AND state = ? AND offset = ?",
                (new_offset, checksum, None if complete else expires,
                 UPLOADED if complete else UPLOADING, sha256, now, upload.id, UPLOADING,
                 upload.offset),
            )
        if cursor.rowcount != 1:
            raise RuntimeError(f"upload {upload.id} changed under a write")
        if complete:
            self._running.pop(upload.id, None)
        upload.offset = new_offset
        upload.state = UPLOADED if complete else UPLOADING
        upload.expires = None if complete else expires
        upload.sha256 = sha256
        if checksum:
            upload.checksum = checksum
        return complete

    def end(self, video_id: str, state: str, now: float) -> bool:
        """Terminate or expire an upload: its data file goes, its row stays as a tombstone
        (so it answers 410). True when it was live."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE uploads SET state = ?, updated = ? WHERE id = ? AND state IN (?, ?)",
                (state, now, video_id, UPLOADING, UPLOADED),
            )
            self._running.pop(video_id, None)
        with contextlib.suppress(FileNotFoundError):
            self.path_of(video_id).unlink()
        return cursor.rowcount == 1

    def mark_notified(self, video_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE uploads SET notified = 1 WHERE id = ?", (video_id,))

    def unnotified(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM uploads WHERE state = ? AND notified = 0 ORDER BY updated",
                (UPLOADED,)).fetchall()
        return [row[0] for row in rows]

    def expired(self, now: float) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM uploads WHERE state = ? AND expires IS NOT NULL AND expires <= ?",
                (UPLOADING, now),
            ).fetchall()
        return [row[0] for row in rows]

    def sweep(self, now: float, tombstone_ttl: float = 7 * 86400) -> list[str]:
        """Expire every incomplete upload past its expiry (file removed, 410 from now on);
        forget tombstones older than ``tombstone_ttl`` (404 from then on)."""
        ended = [vid for vid in self.expired(now) if self.end(vid, EXPIRED, now)]
        with self._lock:
            self._db.execute("DELETE FROM uploads WHERE state IN (?, ?) AND updated < ?",
                             (EXPIRED, TERMINATED, now - tombstone_ttl))
        return ended

    def recover(self) -> None:
        """After a start (maybe after a crash): cut every incomplete data file back to its
        committed offset, lower an offset whose bytes are missing (a disk that lost fsynced
        data: never by this code's doing), remove files no live row owns."""
        live: set[str] = set()
        for upload in self.all():
            if upload.state not in (UPLOADING, UPLOADED):
                continue
            live.add(upload.path.name)
            if upload.state != UPLOADING:
                continue
            try:
                size = upload.path.stat().st_size
            except FileNotFoundError:
                upload.path.touch()
                size = 0
            if size > upload.offset:
                _truncate(upload.path, upload.offset)
            elif size < upload.offset:
                with self._lock:
                    self._db.execute("UPDATE uploads SET offset = ? WHERE id = ?",
                                     (size, upload.id))
        for path in self.files_dir.iterdir():
            if path.name not in live:
                path.unlink()


class UploadWriter:
    """Appends one request's bytes to an upload's data file at its committed offset.

    ``write`` (event loop thread, page cache only) as bytes arrive; then ``sync_and_commit``
    (a worker thread: fsync, then the offset) or ``discard`` (truncate back to the committed
    offset, as for a checksum mismatch)."""

    def __init__(self, store: UploadStore, upload: Upload) -> None:
        self.store = store
        self.upload = upload
        self.start = upload.offset
        self.written = 0
        running = store._running.get(upload.id)
        if running is not None and running[0] == self.start:
            self._sha256 = running[1].copy()
        elif self.start == 0:
            self._sha256 = hashlib.sha256()
        else:
            self._sha256 = None  # after a restart: read back once the upload completes
        self.fd = os.open(upload.path, os.O_WRONLY)
        # A refused or crashed request may have left bytes past the committed offset.
        os.ftruncate(self.fd, self.start)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, self.start + self.written)
            self.written += done
            view = view[done:]
        if self._sha256 is not None:
            self._sha256.update(data)

    def sync_and_commit(self, checksum: str | None, now: float,
                        expires: float | None) -> bool:
        """fsync the bytes, then commit the offset; True when the upload is complete (its
        sha256 is then computed and stored)."""
        os.fsync(self.fd)
        new_offset = self.start + self.written
        sha256 = None
        if new_offset == self.upload.length:
            sha256 = (self._sha256.hexdigest() if self._sha256 is not None
                      else _sha256_file(self.upload.path))
        complete = self.store.commit(self.upload, new_offset, checksum, now, expires, sha256)
        if not complete and self._sha256 is not None:
            with self.store._lock:
                self.store._running[self.upload.id] = (new_offset, self._sha256)
        return complete

    def discard(self) -> None:
        """Keep nothing of this request: the file goes back to the committed offset."""
        os.ftruncate(self.fd, self.start)
        self.written = 0
        running = self.store._running.get(self.upload.id)
        self._sha256 = running[1].copy() if running and running[0] == self.start else None
        if self.start == 0:
            self._sha256 = hashlib.sha256()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
