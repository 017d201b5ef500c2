"""Trending → CDN pre-warm: after each trending recompute, the top ``prewarm_top`` videos'
first seconds are fetched into every node with an admin listener, so a trending video's
first play is a HIT at every tier.

What is warmed, per video (read from its ``meta.json`` in the store videos are published
into): on nodes that render playlists (edges) the master playlist and every rendition's
media playlist (rendering them fetches ``meta.json``), on the others ``meta.json`` itself
(parents never render); on all, the init segment and the first ``prewarm_segments`` segments
of the ``prewarm_rungs`` lowest renditions (players start low) and of every separate audio
rendition.

How: through the nodes' admin ``POST /prewarm`` (``origin/nodes.py``, the client the delete's
purge uses too), tier by tier — shields, then regionals, then edges — so an edge's fills find
their parents warm; within a tier at most ``CONCURRENCY`` nodes at once, each request bounded
by ``prewarm_timeout``. A round runs in the background after the recompute; while one runs,
the next recompute's round is skipped (counted), so prewarm never holds the feed up nor piles
up.

Which videos: those new to the top since they were last warmed, and the others again every
``REWARM_AFTER`` (a node's LRU may have evicted them). A video is marked warmed when every
node accepted its paths; a failure (a node down, a path that did not answer 200) is counted,
logged, and the video is tried again at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram

from reelcdn.manifests.meta import VideoMeta
from reelcdn.origin.logs import fields
from reelcdn.origin.nodes import AdminTarget, admin_post, by_tier

__all__ = ["CONCURRENCY", "REWARM_AFTER", "Prewarmer", "prewarm_paths"]

log = logging.getLogger("reelcdn.origin.feed")

CONCURRENCY = 4               # nodes of one tier asked at once
REWARM_AFTER = 600.0          # a video still in the top is warmed again this often
MAX_PATHS = 1000              # the admin API's bound per request (edge/ops/admin.py)


def prewarm_paths(video: str, meta: VideoMeta, rungs: int, segments: int,
                  renders: bool) -> list[str]:
    """The paths to warm of one video on a node (``renders``: it renders playlists)."""
    base = f"/v/{video}"
    paths = [f"{base}/master.m3u8"] if renders else [f"{base}/meta.json"]
    lowest = sorted(meta.renditions, key=lambda r: r.bandwidth)[:rungs]
    if renders:
        paths += [f"{base}/{r.name}/index.m3u8" for r in (*meta.renditions, *meta.audio)]
    for rendition in (*lowest, *meta.audio):
        directory = f"{base}/{rendition.name}"
        paths.append(f"{directory}/{rendition.init.uri}")
        paths += [f"{directory}/{segment.uri}" for segment in rendition.segments[:segments]]
    return list(dict.fromkeys(paths))


class PrewarmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rounds = Counter("reelcdn_origin_prewarm_rounds", "prewarm rounds, by result "
                              "(done, failed: some node or path failed, skipped: the last "
                              "round was still running)", ["result"], registry=registry)
        self.videos = Counter("reelcdn_origin_prewarm_videos",
                              "trending videos warmed into every node", registry=registry)
        self.paths = Counter("reelcdn_origin_prewarm_paths", "paths warmed, by tier (the "
                             "node's role) and result (ok, failed)", ["tier", "result"],
                             registry=registry)
        self.errors = Counter("reelcdn_origin_prewarm_errors", "prewarm failures by stage "
                              "(meta: a video's meta.json unreadable; node: a node's request "
                              "failed or timed out)", ["stage"], registry=registry)
        self.seconds = Histogram("reelcdn_origin_prewarm_seconds", "seconds of a prewarm round",
                                 buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
                                 registry=registry)


class Prewarmer:
    def __init__(self, targets: Sequence[AdminTarget], published: Callable[[], Any],
                 registry: CollectorRegistry, *, top: int = 10, rungs: int = 2,
                 segments: int = 2, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``published()``: the object store videos are published into (``get_bytes``)."""
        self.tiers = by_tier(targets)
        self.published = published
        self.top, self.rungs, self.segments, self.timeout = top, rungs, segments, timeout
        self.clock = clock
        self.metrics = PrewarmMetrics(registry)
        self.warmed: dict[str, float] = {}   # video → when every node accepted it
        self.task: asyncio.Task[dict[str, Any]] | None = None

    def due(self, ranked: Sequence[str]) -> list[str]:
        now = self.clock()
        top = list(ranked[:self.top])
        for video in list(self.warmed):  # out of the top: forget (warmed again on return)
            if video not in top:
                del self.warmed[video]
        return [v for v in top if now - self.warmed.get(v, -REWARM_AFTER) >= REWARM_AFTER]

    def schedule(self, ranked: Sequence[str]) -> None:
        """Start a round in the background (skipped while the last one runs)."""
        if self.task is not None and not self.task.done():
            self.metrics.rounds.labels("skipped").inc()
            return
        self.task = asyncio.ensure_future(self.run(ranked))

    async def wait(self) -> dict[str, Any] | None:
        """The running (or last) round's report."""
        if self.task is None:
            return None
        return await self.task

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def run(self, ranked: Sequence[str]) -> dict[str, Any]:
        """One round; its report: ``{"videos": [...], "nodes": {name: {"failed": n} |
        {"error": ...}}}``. Never raises (failures are counted and logged)."""
        started = time.perf_counter()
        videos = self.due(ranked)
        report: dict[str, Any] = {"videos": [], "nodes": {}}
        if not videos:
            return report
        metas: dict[str, VideoMeta] = {}
        for video in videos:
            try:
                raw = await asyncio.to_thread(self.published().get_bytes,
                                              f"v/{video}/meta.json")
                metas[video] = VideoMeta.from_json(raw)
            except Exception as exc:  # missing, unreadable, invalid: the others go on
                self.metrics.errors.labels("meta").inc()
                log.warning("prewarm: no meta.json for %s: %s", video, exc,
                            extra=fields(event="prewarm_failed", video=video, stage="meta"))
        failed_videos: set[str] = set(videos) - set(metas)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        limit = asyncio.Semaphore(CONCURRENCY)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for tier in self.tiers:  # shields, regionals, edges: in order
                results = await asyncio.gather(*(self._node(session, limit, node, metas)
                                                 for node in tier))
                for node, (answer, failed) in zip(tier, results, strict=True):
                    report["nodes"][node.name] = answer
                    failed_videos |= failed
        now = self.clock()
        for video in metas:
            if video not in failed_videos:
                self.warmed[video] = now
                self.metrics.videos.inc()
        report["videos"] = [v for v in metas if v not in failed_videos]
        self.metrics.rounds.labels("failed" if failed_videos else "done").inc()
        seconds = time.perf_counter() - started
        self.metrics.seconds.observe(seconds)
        log.info("trending prewarmed", extra=fields(
            event="prewarm", videos=len(report["videos"]), failed=sorted(failed_videos),
            seconds=round(seconds, 3)))
        return report

    async def _node(self, session: aiohttp.ClientSession, limit: asyncio.Semaphore,
                    node: AdminTarget, metas: dict[str, VideoMeta],
                    ) -> tuple[dict[str, Any], set[str]]:
        """Warm every video's paths on one node: its answer and the videos that failed."""
        owner: dict[str, str] = {}
        for video, meta in metas.items():
            for path in prewarm_paths(video, meta, self.rungs, self.segments, node.renders):
                owner.setdefault(path, video)
        paths = list(owner)
        failed: set[str] = set()
        ok = bad = 0
        async with limit:
            for start in range(0, len(paths), MAX_PATHS):
                chunk = paths[start:start + MAX_PATHS]
                try:
                    status, body = await admin_post(session, node.url, node.token, "/prewarm",
                                                    {"paths": chunk})
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, body = 0, {"error": str(exc) or exc.__class__.__name__}
                results = body.get("results") if isinstance(body, dict) else None
                if status != 200 or not isinstance(results, dict):
                    self.metrics.errors.labels("node").inc()
                    bad += len(chunk)
                    failed.update(owner[p] for p in chunk)
                    log.warning("prewarm of %s failed: %s", node.name,
                                body.get("error") if isinstance(body, dict)
                                else f"status {status}",
                                extra=fields(event="prewarm_failed", node=node.name,
                                             stage="node", status=status))
                    continue
                for path in chunk:
                    result = results.get(path)
                    if isinstance(result, dict) and result.get("status") == 200:
                        ok += 1
                    else:
                        bad += 1
                        failed.add(owner[path])
        self.metrics.paths.labels(node.role, "ok").inc(ok)
        self.metrics.paths.labels(node.role, "failed").inc(bad)
        return {"paths": len(paths), "ok": ok, "failed": bad}, failed
