"""From a finished upload to a published ladder: the queue step and the worker that runs it.

The upload service calls :func:`enqueue_on_upload`'s hook when an upload's last byte is
committed: the video's catalog row goes to ``processing`` and one ``transcode`` job is queued
(idempotent by video id and step, so a hook called twice queues once). A
:class:`TranscodeWorker` — any number of them, ``reelcdn worker`` — leases jobs, keeps the lease
alive while ffmpeg runs (a heartbeat thread), and runs :func:`reelcdn.origin.transcode.transcode`,
which publishes the lowest rendition segment by segment as it is encoded. The catalog follows:
``processing`` listing the first rendition as soon as it is playable, then ``ready``; a source
that is not a usable video ends ``failed`` at once with the prober's reason (retrying cannot
help), while an encoding failure is retried with backoff and, after the queue's
``max_attempts``, dead-lettered with the video ``failed``. A worker killed mid-job loses
nothing: its lease expires and another worker runs the job again (transcode is idempotent:
same keys, same bytes).

A direct-to-bucket upload (``origin/direct.py``) is queued by :func:`enqueue_on_direct_upload`
with ``{"source_s3": {"bucket", "key"}}`` instead of a local path: the worker downloads the
object into its workdir (boto3 ``download_file``, ranged and parallel for large objects),
transcodes it like any source and removes the copy. A source that is gone fails the video at
once; a download that fails otherwise is retried like an encoding failure.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reelcdn.manifests.meta import VideoMeta
from reelcdn.origin.logs import fields
from reelcdn.origin.probe import MAX_DURATION, MAX_SIZE, InvalidSource
from reelcdn.origin.queue import Job, JobQueue, LeaseLost
from reelcdn.origin.storage import ObjectStore
from reelcdn.origin.transcode import Ladder, transcode
from reelcdn.origin.videos import Catalog

log = logging.getLogger("reelcdn.worker")

TRANSCODE = "transcode"


def enqueue_on_upload(
    queue: JobQueue, catalog: Catalog, max_attempts: int = 3
) -> Callable[[str, Path, dict[str, str], str], None]:
    """The upload service's completion hook: catalog row → ``processing``, one job queued."""

    def on_upload_complete(video_id: str, path: Path, metadata: dict[str, str],
                           owner: str) -> None:
        catalog.create(video_id, owner, metadata, status="processing")
        current = catalog.get(video_id)
        if current is not None and current["status"] == "uploading":
            catalog.set_status(video_id, "processing")
        queue.enqueue(video_id, TRANSCODE, {"source": str(path)}, max_attempts=max_attempts)

    return on_upload_complete


def enqueue_on_direct_upload(
    queue: JobQueue, catalog: Catalog, max_attempts: int = 3
) -> Callable[[str, str, str, dict[str, str], str], None]:
    """The same step for a direct-to-bucket upload: the job names the S3 object
    (``{"source_s3": {"bucket", "key"}}``), which the worker downloads before probing."""

    def on_direct_complete(video_id: str, bucket: str, key: str, metadata: dict[str, str],
                           owner: str) -> None:
        catalog.create(video_id, owner, metadata, status="processing")
        current = catalog.get(video_id)
        if current is not None and current["status"] == "uploading":
            catalog.set_status(video_id, "processing")
        queue.enqueue(video_id, TRANSCODE, {"source_s3": {"bucket": bucket, "key": key}},
                      max_attempts=max_attempts)

    return on_direct_complete


def _rendition_names(meta: VideoMeta) -> list[str]:
    return [rendition.name for rendition in meta.renditions]


class TranscodeWorker:
    """Leases ``transcode`` jobs and runs them, one at a time."""

    def __init__(
        self,
        queue: JobQueue,
        store: ObjectStore,
        catalog: Catalog,
        *,
        workdir: str | os.PathLike[str],
        ladder: Ladder | None = None,
        worker_id: str | None = None,
        lease_seconds: float = 60.0,
        on_published: Callable[[str, VideoMeta], Any] | None = None,
        s3_client: Any = None,
        s3_buckets: tuple[str, ...] = (),
        max_duration: float = MAX_DURATION,
        max_size: int = MAX_SIZE,
    ) -> None:
        self.queue = queue
        self.store = store
        self.catalog = catalog
        self.workdir = Path(workdir)
        self.ladder = ladder or Ladder()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.lease_seconds = lease_seconds
        self.on_published = on_published
        # Sources uploaded straight to a bucket (``source_s3`` jobs) are read with this
        # client (made with boto3's defaults on first use when None); with ``s3_buckets``,
        # a job naming another bucket is refused.
        self.s3_client = s3_client
        self.s3_buckets = s3_buckets
        # A source longer or larger fails its video with the reason (origin/probe.py).
        self.max_duration = max_duration
        self.max_size = max_size

    def run(self, stop: threading.Event, idle_wait: float = 1.0) -> None:
        """Run jobs until ``stop`` is set (waiting ``idle_wait`` s when the queue is empty)."""
        while not stop.is_set():
            try:
                ran = self.run_one()
            except Exception:  # the queue or catalog failing (throttled, unreachable, locked)
                # The job's lease runs out and it runs again (here or on another worker);
                # the worker itself stays up rather than exiting on a passing outage.
                log.exception("running a job failed; its lease will expire and it runs again")
                stop.wait(idle_wait)
                continue
            if not ran:
                stop.wait(idle_wait)

    def run_one(self) -> bool:
        """Lease and run one job; False when there was none."""
        job = self.queue.lease(self.worker_id, self.lease_seconds)
        if job is None:
            return False
        if job.step != TRANSCODE:
            self.queue.fail(job, f"this worker runs {TRANSCODE!r} steps, not {job.step!r}")
            return True
        beat = _Heartbeat(self.queue, job, self.lease_seconds)
        beat.start()
        try:
            self._transcode(job)
        except LeaseLost:
            log.warning("%s: lease lost while working; another worker has the job",
                        job.video_id)
        finally:
            beat.stop()
        return True

    def _transcode(self, job: Job) -> None:
        s3_source = job.payload.get("source_s3")
        if not s3_source:
            self._run(job, job.payload.get("source", ""))
            return
        # Per process: a worker that lost its lease may still be downloading the same video.
        local = self.workdir / f"{job.video_id}.{os.getpid()}.source"
        try:
            try:
                self._download(s3_source, local)
            except InvalidSource as exc:
                log.info("%s: refused: %s", job.video_id, exc,
                         extra=fields(event="job_refused", video=job.video_id, reason=str(exc)))
                self.catalog.set_status(job.video_id, "failed", error=str(exc))
                self.queue.complete(job)
                return
            except Exception as exc:  # the network, S3, the disk: retried with backoff
                self._failed(job, f"downloading the source: {exc.__class__.__name__}: {exc}")
                return
            self._run(job, str(local))
        finally:
            local.unlink(missing_ok=True)

    def _download(self, s3_source: dict[str, str], local: Path) -> None:
        """The job's S3 object into the workdir. InvalidSource when it is not there (deleted,
        or never completed: retrying cannot help) or in a bucket this worker may not read."""
        from botocore.exceptions import ClientError

        bucket, key = s3_source["bucket"], s3_source["key"]
        if self.s3_buckets and bucket not in self.s3_buckets:
            raise InvalidSource(f"the source is in bucket {bucket!r}, which this worker does "
                                "not read")
        if self.s3_client is None:
            import boto3

            self.s3_client = boto3.client("s3")
        self.workdir.mkdir(parents=True, exist_ok=True)
        partial = local.with_suffix(".partial")
        try:
            self.s3_client.download_file(bucket, key, str(partial))
        except ClientError as exc:
            partial.unlink(missing_ok=True)
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise InvalidSource(f"the uploaded source is gone (s3://{bucket}/{key})") \
                    from None
            raise
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, local)

    def _failed(self, job: Job, reason: str) -> None:
        reason = reason[:500]
        updated = self.queue.fail(job, reason)
        if updated.state == "dead":
            self.catalog.set_status(
                job.video_id, "failed",
                error=f"transcoding failed {updated.attempts} times; last: {reason}",
            )
        log.warning("%s: attempt %d failed: %s", job.video_id, updated.attempts, reason,
                    extra=fields(event="job_failed", video=job.video_id,
                                 attempts=updated.attempts, dead=updated.state == "dead",
                                 reason=reason))

    def _run(self, job: Job, source: str) -> None:
        video_id = job.video_id

        def published(meta: VideoMeta) -> None:
            self.catalog.set_status(video_id, "processing", duration=meta.duration,
                                    renditions=_rendition_names(meta))
            if self.on_published is not None:
                self.on_published(video_id, meta)

        try:
            result = transcode(source, video_id, self.store, self.ladder,
                               workdir=self.workdir, on_publish=published,
                               max_duration=self.max_duration, max_size=self.max_size)
        except InvalidSource as exc:
            log.info("%s: refused: %s", video_id, exc,
                     extra=fields(event="job_refused", video=video_id, reason=str(exc)))
            self.catalog.set_status(video_id, "failed", error=str(exc))
            self.queue.complete(job)  # a bad source stays bad: no retry
            return
        except LeaseLost:
            raise
        except Exception as exc:  # ffmpeg, the store, the disk: retried with backoff
            self._failed(job, f"{exc.__class__.__name__}: {exc}")
            return
        meta = result.meta
        self.catalog.record_timings(video_id, result.published)
        self.catalog.set_status(video_id, "ready", duration=meta.duration,
                                renditions=_rendition_names(meta))
        self.queue.complete(job)
        log.info("%s: ready (%s) in %.1f s, first rendition after %.1f s", video_id,
                 ", ".join(_rendition_names(meta)), result.total_seconds,
                 result.first_publish_seconds,
                 extra=fields(event="job_done", video=video_id, seconds=result.total_seconds,
                              published=result.published, worker=self.worker_id))


class _Heartbeat:
    """Extends a job's lease every third of it while the job runs (ffmpeg blocks the worker's
    thread). A lost lease is only logged here: the job's end raises it in ``complete``."""

    def __init__(self, queue: JobQueue, job: Job, lease_seconds: float) -> None:
        self.queue = queue
        self.job = job
        self.lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.job = self.queue.extend(self.job, self.lease_seconds)
            except LeaseLost:
                log.warning("%s: lease lost", self.job.video_id)
                return
