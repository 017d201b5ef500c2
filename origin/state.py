"""The origin service's state: its configuration, metrics, stores and the work they share.

``OriginState`` owns the upload store, the signing keys, the rate limiter, the video catalog,
the transcoding queue and the metrics; the handlers of ``origin/api.py`` work on it, and
``origin/service.py`` puts it behind listeners (``OriginService``). Kept apart from both so the
API's handlers and the service that serves them import it, not each other.

With ``s3_bucket`` set, clients may also upload straight to the bucket in presigned parts
(``origin/direct.py``, ``POST /api/v1/videos``); ``on_direct_complete``
(``pipeline.enqueue_on_direct_upload``) queues those with the S3 object as the source.

``on_upload_complete`` is a plain attribute: a callable ``(video_id, path, metadata, owner)``,
sync or async, called once the last byte of an upload is committed. By default it is
``pipeline.enqueue_on_upload``: the video's catalog row (``videos.sqlite``) goes to
``processing`` and a transcoding job is queued (``queue.sqlite``) for ``reelcdn worker``. A
call that raises is logged and tried again at the next start (the row keeps ``notified = 0``
until a call returns), so a crash between the last byte and the call does not lose the video.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from reelcdn.origin import nodes
from reelcdn.origin.cache import CacheSettings, ReadThrough, open_cache
from reelcdn.origin.direct import MAX_URL_TTL, DirectUploads, S3Source
from reelcdn.origin.pipeline import enqueue_on_direct_upload, enqueue_on_upload
from reelcdn.origin.queue import JobQueue, SqliteQueue
from reelcdn.origin.storage import FsStore, ObjectStore
from reelcdn.origin.tus import Limits
from reelcdn.origin.uploads import UploadStore
from reelcdn.origin.users import Keys, RateLimiter
from reelcdn.origin.videos import STATUSES, Catalog, VideoCatalog

log = logging.getLogger("reelcdn.origin")

GiB = 1 << 30
CompleteHook = Callable[[str, Path, dict[str, str], str], Any]


@dataclass(frozen=True)
class OriginConfig:
    data_dir: Path
    keys: Keys
    max_size: int = 4 * GiB             # Tus-Max-Size
    upload_ttl: float = 24 * 3600.0     # incomplete uploads expire this long after their last write
    uploads_per_window: int = 30        # upload creations per user ...
    rate_window: float = 3600.0         # ... per this many seconds
    cors_origins: tuple[str, ...] = ("*",)
    # Where workers publish videos (the shield's fs origin root): DELETE removes them there.
    origin_root: Path | None = None
    # The nodes a deleted video is purged from: (name, admin base URL, bearer token or None),
    # parents first, so an edge that refills after its purge finds its parent purged too.
    purge_targets: tuple[tuple[str, str, str | None], ...] = ()
    sweep_interval: float = 60.0
    read_bufsize: int = 1 << 20         # aiohttp's per-request read buffer
    # Direct-to-bucket uploads (origin/direct.py): off without a bucket. Sources go to
    # s3://{s3_bucket}/{s3_prefix}{video_id}/source; credentials from boto3's usual chain.
    s3_bucket: str | None = None
    s3_prefix: str = "sources/"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_part_size: int = 8 << 20         # at least 5 MiB (S3's smallest part but the last)
    max_attempts: int = 3               # runs of a transcoding job before it is dead-lettered
    # The feed service (origin/feed/, docs/feed.md). No plays_token: POST /api/v1/plays 404s.
    plays_token: str | None = None
    trending_interval: float = 60.0     # trending and the feeds' pool recomputed this often
    trending_window: float = 48 * 3600.0
    trending_half_life: float = 6 * 3600.0
    feed_pool: int = 5000               # newest ready videos for_you ranks
    feed_depth: int = 500               # items of one feed session
    feed_cursor_ttl: float = 3600.0     # a feed session lasts this long
    # memcached ([cache]; origin/cache.py): None or no servers, every read is the database's.
    cache: CacheSettings | None = None
    # Trending pre-warm (origin/feed/prewarm.py): the nodes (every one with an admin
    # listener, parents first) and what of the top prewarm_top trending videos goes to them.
    prewarm_targets: tuple[nodes.AdminTarget, ...] = ()
    prewarm_top: int = 10
    prewarm_rungs: int = 2
    prewarm_segments: int = 2
    prewarm_timeout: float = 30.0
    # The web page (origin/web/): the edge base URL it plays and shows posters from.
    playback_base: str | None = None


#: Upper bounds (seconds) of the publish-time histogram's buckets: a first rung of a short
#: clip in a couple of seconds up to the ladder of a long 1080p source in minutes.
PUBLISH_BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class PublishTimes(Collector):
    """``reelcdn_origin_rendition_publish_seconds{rendition}``: how long transcoding took to
    publish each rendition (from the job's start), over every video the catalog recorded.

    The workers that observe these run in other processes, on other hosts, so the histogram
    is rebuilt from the catalog (``Catalog.publish_times``) at each scrape, in the scrape's
    worker thread (:meth:`OriginMetrics.observe_pipeline`); collecting only hands out that
    snapshot, never blocking the event loop on the database."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "reelcdn_origin_rendition_publish_seconds",
            "seconds from a transcoding job's start to a rendition published, by rendition",
            labels=["rendition"])
        for rendition, values in sorted(self.samples.items()):
            counts = [0] * (len(PUBLISH_BUCKETS) + 1)
            for value in values:
                counts[bisect.bisect_left(PUBLISH_BUCKETS, value)] += 1
            cumulative, buckets = 0, []
            for bound, count in zip((*PUBLISH_BUCKETS, math.inf), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            family.add_metric([rendition], buckets, sum_value=sum(values))
        yield family


class OriginMetrics:
    """Counters in a registry of the service's own (several services may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = Counter("reelcdn_origin_uploads_started", "uploads created",
                               registry=self.registry)
        self.completed = Counter("reelcdn_origin_uploads_completed",
                                 "uploads whose last byte was committed", registry=self.registry)
        self.failed = Counter(
            "reelcdn_origin_uploads_failed",
            "upload requests whose bytes were not kept (checksum_mismatch, body_too_large, "
            "aborted) and uploads lost (expired, terminated)",
            ["reason"], registry=self.registry)
        self.bytes_received = Counter("reelcdn_origin_upload_bytes_received",
                                      "upload bytes committed (fsynced)", registry=self.registry)
        self.errors = Counter("reelcdn_origin_api_errors", "API error answers by code",
                              ["status", "code"], registry=self.registry)
        self.jobs = Gauge("reelcdn_origin_jobs", "transcoding jobs by state (pending, leased, "
                          "done, dead)", ["state"], registry=self.registry)
        self.queue_depth = Gauge("reelcdn_origin_queue_depth",
                                 "transcoding jobs not finished (pending + leased)",
                                 registry=self.registry)
        self.videos = Gauge("reelcdn_origin_videos", "videos by status", ["status"],
                            registry=self.registry)
        self.scrape_errors = Counter(
            "reelcdn_origin_pipeline_scrape_errors",
            "scrapes whose queue and catalog levels could not be read (the gauges kept their "
            "last values)", registry=self.registry)
        self.publish_times = PublishTimes()
        self.registry.register(self.publish_times)

    def observe_pipeline(self, queue: JobQueue, catalog: Catalog) -> None:
        """Read the queue's and the catalog's levels (at scrape: workers change them from
        other processes)."""
        counts = queue.counts()
        for state in ("pending", "leased", "done", "dead"):
            self.jobs.labels(state).set(counts.get(state, 0))
        self.queue_depth.set(queue.depth())
        by_status = catalog.count_by_status()
        for status in STATUSES:
            self.videos.labels(status).set(by_status.get(status, 0))
        self.publish_times.samples = catalog.publish_times()


class OriginState:
    def __init__(self, config: OriginConfig, clock: Callable[[], float] = time.time, *,
                 queue: JobQueue | None = None, catalog: Catalog | None = None,
                 published: ObjectStore | None = None) -> None:
        """``queue`` and ``catalog`` default to SQLite files in the data dir; the topology's
        ``[queue]`` and ``[catalog]`` may name shared ones (``origin/config.py``).
        ``published`` is the store workers publish into (what DELETE removes a video from):
        by default the directory ``config.origin_root``, if any."""
        self.config = config
        self.clock = clock
        self.limits = Limits(max_size=config.max_size)
        self.store = UploadStore(config.data_dir)
        self.limiter = RateLimiter(config.uploads_per_window, config.rate_window)
        self.metrics = OriginMetrics()
        self.published = published if published is not None else (
            FsStore(config.origin_root) if config.origin_root is not None else None)
        self.catalog: Catalog = catalog if catalog is not None else VideoCatalog(
            config.data_dir / "videos.sqlite")
        self.queue = queue if queue is not None else SqliteQueue(
            config.data_dir / "queue.sqlite")
        self.on_upload_complete: CompleteHook | None = enqueue_on_upload(
            self.queue, self.catalog, config.max_attempts)
        # Direct-to-bucket uploads, when the config names a bucket (else None: the routes
        # answer 404 no_direct_upload). Their presigned URLs, and the uploads, live as long
        # as an idle tus upload (upload_ttl), at most SigV4's week.
        self.direct: DirectUploads | None = None
        self.direct_ttl = int(min(config.upload_ttl, MAX_URL_TTL))
        if config.s3_bucket:
            prefix = config.s3_prefix.lstrip("/")
            prefix += "/" if prefix and not prefix.endswith("/") else ""
            source = S3Source(config.s3_bucket, prefix, config.s3_endpoint_url,
                              config.s3_region)
            self.direct = DirectUploads(config.data_dir / "direct.sqlite", source,
                                        part_size=config.s3_part_size)
        self.on_direct_complete = enqueue_on_direct_upload(self.queue, self.catalog,
                                                           config.max_attempts)
        self.locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.cache: ReadThrough = open_cache(config.cache, self.metrics.registry)
        # Called with a deleted video's id (the feed forgets its copies of the row).
        self.on_video_deleted: list[Callable[[str], None]] = []

    def video_deleted(self, video_id: str) -> None:
        """Drop every cached copy of a deleted video's row and counters."""
        self.cache.delete("video", [video_id])
        self.cache.delete("counters", [video_id])
        for hook in self.on_video_deleted:
            hook(video_id)

    def video_row(self, video_id: str) -> dict[str, Any] | None:
        """The catalog's row of a video through the cache (ready rows are cached: a row
        still moving, uploading or processing, is read from the catalog each time)."""
        return self.cache.get("video", video_id, lambda: self.catalog.get(video_id),
                              store_if=lambda row: row is not None and row["status"] == "ready")

    # -- the completion hook -------------------------------------------------------------------

    async def upload_complete(self, video_id: str) -> None:
        """Tell ``on_upload_complete`` about a complete upload (inline for a sync callable; an
        async one is awaited in a task of its own, so the client's 204 does not wait)."""
        hook = self.on_upload_complete
        upload = self.store.get(video_id)
        if hook is None or upload is None:
            return
        try:
            result = hook(video_id, upload.path, dict(upload.metadata), upload.owner)
        except Exception:
            log.exception("on_upload_complete(%s) failed; tried again at the next start",
                          video_id)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(self._await_hook(video_id, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.store.mark_notified(video_id)

    async def _await_hook(self, video_id: str, result: Any) -> None:
        try:
            await result
        except Exception:
            log.exception("on_upload_complete(%s) failed; tried again at the next start",
                          video_id)
        else:
            self.store.mark_notified(video_id)

    async def notify_pending(self) -> None:
        """Uploads completed but never handed to the hook (a crash, or a hook that raised)."""
        if self.on_upload_complete is None:
            return
        for video_id in self.store.unnotified():
            await self.upload_complete(video_id)

    # -- deleting a video ----------------------------------------------------------------------

    async def purge_video(self, video_id: str) -> dict[str, Any]:
        """Purge a video from every node of the topology through their admin APIs, parents
        first; each node's answer (objects purged) or its error."""
        return await nodes.purge_video(self.config.purge_targets, video_id)

    # -- expiry --------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        ended = self.store.sweep(self.clock())
        for video_id in ended:
            self.locks.pop(video_id, None)
            self.metrics.failed.labels("expired").inc()
        if ended:
            log.info("expired %d incomplete upload(s)", len(ended))
        return ended

    def sweep_direct(self) -> list[str]:
        """Abort the direct uploads not completed in time (S3 drops their parts)."""
        if self.direct is None:
            return []
        ended = self.direct.sweep(self.clock())
        if ended:
            self.metrics.failed.labels("expired").inc(len(ended))
            log.info("expired %d direct upload(s)", len(ended))
        return ended

    async def finish_tasks(self) -> None:
        """Wait for the completion hooks still running."""
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    def close(self) -> None:
        self.cache.close()
        self.store.close()
        if self.direct is not None:
            self.direct.close()
        self.catalog.close()
        self.queue.close()
