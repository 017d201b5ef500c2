"""Direct-to-bucket uploads: the client sends the source to S3 itself, in presigned parts.

When the origin has an S3 upload bucket (``reelcdn origin --s3-bucket``), a client may skip
tus and the origin's disk:

1. ``POST /api/v1/videos`` ``{"size", "filename", "content_type", ...}``: the origin creates
   the video id and catalog row (``uploading``), starts an S3 multipart upload for
   ``{prefix}{video_id}/source`` and answers one presigned ``PUT`` URL per part.
2. The client PUTs each part to its URL and keeps each answer's ``ETag``.
3. ``POST /api/v1/videos/{id}/complete`` ``{"parts": [{"part_number", "etag"}]}``: the origin
   checks the parts' sizes against the announced size (S3's ``ListParts``), completes the
   multipart upload, checks the object's size (``HeadObject``), and queues the transcode job
   with ``{"source_s3": {"bucket", "key"}}``; the worker downloads the object before probing.

The S3 multipart upload id stays on the server (``DATA_DIR/direct.sqlite``): the client only
ever holds URLs for its own parts, and only the video's owner may complete it. This module is
the state and the S3 calls (synchronous, thread-safe: the API runs them in worker threads).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reelcdn.origin.tus import TusError

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB          # S3's smallest part (all but the last)
MAX_PARTS = 10_000               # S3's most parts in one multipart upload
MAX_URL_TTL = 7 * 24 * 3600      # SigV4 presigned URLs live at most a week

UPLOADING = "uploading"
COMPLETED = "completed"
EXPIRED = "expired"
ABORTED = "aborted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS direct_uploads (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    s3_upload_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    part_size INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS direct_expiry ON direct_uploads(state, expires)
"""


class DirectError(TusError):
    """A completion the origin refuses: HTTP ``status``, an error ``code``, a ``reason`` (the
    API answers it as it answers the tus errors)."""


@dataclass(frozen=True)
class S3Source:
    """Where direct uploads go: a bucket, a key prefix, and how to reach the S3 API
    (credentials from boto3's usual chain: environment, config files, instance role)."""

    bucket: str
    prefix: str = "sources/"
    endpoint_url: str | None = None
    region: str | None = None

    def key_for(self, video_id: str) -> str:
        return f"{self.prefix}{video_id}/source"


def s3_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client signing with SigV4 (presigned URLs included)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                        config=Config(signature_version="s3v4",
                                      retries={"max_attempts": 5, "mode": "standard"}))


def part_size_for(size: int, preferred: int) -> int:
    """The part size for *size* bytes: *preferred* (at least S3's 5 MiB), larger when the
    file would need more than 10 000 parts."""
    part = max(preferred, MIN_PART_SIZE)
    return max(part, math.ceil(size / MAX_PARTS))


def part_count(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))


@dataclass(frozen=True)
class DirectUpload:
    id: str
    owner: str
    bucket: str
    key: str
    s3_upload_id: str
    size: int
    part_size: int
    metadata: dict[str, str]
    state: str
    created: float
    expires: float


def s3_error(exc: Exception) -> tuple[str, str]:
    """A botocore ClientError's S3 code and message."""
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", "") or exc)


class DirectUploads:
    """The direct uploads' server-side state (SQLite) and their S3 calls."""

    def __init__(self, path: str | Path, source: S3Source, client: Any = None, *,
                 part_size: int = 8 * MiB) -> None:
        self.source = source
        self.client = client if client is not None else s3_client(source.endpoint_url,
                                                                  source.region)
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    # -- state ---------------------------------------------------------------------------------

    def get(self, video_id: str) -> DirectUpload | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM direct_uploads WHERE id = ?",
                                   (video_id,)).fetchone()
        if row is None:
            return None
        fields = dict(row)
        fields.pop("updated")
        fields["metadata"] = json.loads(fields["metadata"])
        return DirectUpload(**fields)

    def _set_state(self, video_id: str, state: str, now: float, *, only_from: str) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE direct_uploads SET state = ?, updated = ? WHERE id = ? AND state = ?",
                (state, now, video_id, only_from))
        return cursor.rowcount == 1

    @contextlib.contextmanager
    def busy(self, video_id: str) -> Iterator[None]:
        """One completion at a time per video (another one meanwhile: 409)."""
        with self._lock:
            if video_id in self._busy:
                raise DirectError(409, "completing", "another request is completing this upload")
            self._busy.add(video_id)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(video_id)

    # -- S3 ------------------------------------------------------------------------------------

    def create(self, video_id: str, owner: str, size: int, content_type: str,
               metadata: dict[str, str], now: float, expires_in: int,
               ) -> tuple[DirectUpload, list[dict[str, Any]]]:
        """Start the multipart upload, keep its id, presign one PUT URL per part."""
        bucket, key = self.source.bucket, self.source.key_for(video_id)
        part_size = part_size_for(size, self.part_size)
        answer = self.client.create_multipart_upload(Bucket=bucket, Key=key,
                                                     ContentType=content_type)
        upload_id = answer["UploadId"]
        with self._lock:
            self._db.execute(
                "INSERT INTO direct_uploads (id, owner, bucket, key, s3_upload_id, size,"
                " part_size, metadata, state, created, expires, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (video_id, owner, bucket, key, upload_id, size, part_size,
                 json.dumps(metadata), UPLOADING, now, now + expires_in, now))
        parts = [
            {"part_number": n,
             "url": self.client.generate_presigned_url(
                 "upload_part", ExpiresIn=expires_in, HttpMethod="PUT",
                 Params={"Bucket": bucket, "Key": key, "UploadId": upload_id,
                         "PartNumber": n})}
            for n in range(1, part_count(size, part_size) + 1)
        ]
        upload = self.get(video_id)
        assert upload is not None
        return upload, parts

    def _listed_parts(self, upload: DirectUpload) -> dict[int, tuple[str, int]]:
        """The parts S3 holds: part number → (ETag, size)."""
        listed: dict[int, tuple[str, int]] = {}
        paginator = self.client.get_paginator("list_parts")
        for page in paginator.paginate(Bucket=upload.bucket, Key=upload.key,
                                       UploadId=upload.s3_upload_id):
            for part in page.get("Parts", []):
                listed[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
        return listed

    def complete(self, upload: DirectUpload, parts: list[tuple[int, str]], now: float) -> None:
        """Complete the multipart upload and check the object's size. Raises DirectError:
        400 for parts S3 refuses or sizes that do not add up (the upload stays open: the
        client may fix it and complete again). A completion S3 already did (a retry after a
        lost answer or a crash) is recognised by the object being there, whole."""
        from botocore.exceptions import ClientError

        try:
            listed = self._listed_parts(upload)
        except ClientError as exc:
            code, message = s3_error(exc)
            if code != "NoSuchUpload":
                raise
            listed = None  # completed before (or aborted): the object says which
        if listed is not None:
            # Parts S3 does not hold, or with another ETag: S3 refuses them itself (its
            # reason goes to the client). Parts it holds must add up to the announced size.
            known = all(n in listed and listed[n][0].strip('"') == e.strip('"')
                        for n, e in parts)
            total = sum(listed[n][1] for n, _ in parts if n in listed)
            if known and total != upload.size:
                raise DirectError(400, "size_mismatch",
                                  f"the parts named hold {total} bytes, the upload announced "
                                  f"{upload.size} (a part missing, or short?)")
            try:
                self.client.complete_multipart_upload(
                    Bucket=upload.bucket, Key=upload.key, UploadId=upload.s3_upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e}
                                               for n, e in parts]})
            except ClientError as exc:
                code, message = s3_error(exc)
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
                if int(status) >= 500:
                    raise
                if code != "NoSuchUpload":
                    raise DirectError(400, code or "s3_refused", message) from None
        try:
            head = self.client.head_object(Bucket=upload.bucket, Key=upload.key)
        except ClientError as exc:
            code, _ = s3_error(exc)
            if code in ("404", "NoSuchKey", "NotFound"):
                raise DirectError(410, "upload_gone",
                                  "the multipart upload was aborted or has expired") from None
            raise
        if int(head["ContentLength"]) != upload.size:
            # Parts changed between the check and the completion: the object is not the
            # announced file. It goes, and so does the video.
            self.client.delete_object(Bucket=upload.bucket, Key=upload.key)
            self._set_state(upload.id, ABORTED, now, only_from=UPLOADING)
            raise DirectError(400, "size_mismatch",
                              f"the object holds {head['ContentLength']} bytes, the upload "
                              f"announced {upload.size}; start again")

    def mark_completed(self, video_id: str, now: float) -> bool:
        return self._set_state(video_id, COMPLETED, now, only_from=UPLOADING)

    def abort(self, upload: DirectUpload, now: float, state: str = ABORTED) -> bool:
        """Abort an open multipart upload (S3 drops its parts)."""
        from botocore.exceptions import ClientError

        if not self._set_state(upload.id, state, now, only_from=UPLOADING):
            return False
        try:
            self.client.abort_multipart_upload(Bucket=upload.bucket, Key=upload.key,
                                               UploadId=upload.s3_upload_id)
        except ClientError as exc:
            if s3_error(exc)[0] != "NoSuchUpload":
                raise
        return True

    def sweep(self, now: float) -> list[str]:
        """Abort the multipart uploads not completed in time; their ids."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM direct_uploads WHERE state = ? AND expires <= ?",
                (UPLOADING, now)).fetchall()
        ended = []
        for row in rows:
            upload = self.get(row["id"])
            if upload is not None and self.abort(upload, now, EXPIRED):
                ended.append(upload.id)
        return ended
