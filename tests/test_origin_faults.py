"""The origin services when what they share fails: a worker outlives a catalog outage (the
job runs again once its lease runs out), and the admin listener keeps serving metrics.

The catalog is the real SQLite one with one fault switched on: a database that refuses writes
for a while, as a throttled or unreachable shared catalog does (``CatalogUnavailable``)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from reelcdn.origin.pipeline import TranscodeWorker, enqueue_on_upload
from reelcdn.origin.queue import SqliteQueue
from reelcdn.origin.service import OriginConfig, OriginService
from reelcdn.origin.storage import FsStore
from reelcdn.origin.users import Keys
from reelcdn.origin.videos import CatalogUnavailable, VideoCatalog


class FlakyCatalog(VideoCatalog):
    """The SQLite catalog, refusing ``set_status`` and ``count_by_status`` while ``down``."""

    down = False
    refused = 0

    def set_status(self, *args: Any, **kwargs: Any) -> None:
        if self.down:
            self.refused += 1
            raise CatalogUnavailable("throttled")
        super().set_status(*args, **kwargs)

    def count_by_status(self) -> dict[str, int]:
        if self.down:
            raise CatalogUnavailable("unreachable")
        return super().count_by_status()


def test_a_worker_outlives_a_catalog_outage(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "queue.sqlite")
    catalog = FlakyCatalog(tmp_path / "videos.sqlite")
    poison = tmp_path / "poison.mp4"
    poison.write_bytes(random.Random(2026).randbytes(50_000))  # seeded: always "not media"
    enqueue_on_upload(queue, catalog)("BADVIDEO", poison, {}, "ann")
    worker = TranscodeWorker(queue, FsStore(tmp_path / "origin"), catalog,
                             workdir=tmp_path / "work", lease_seconds=1.0)
    catalog.down = True
    stop = threading.Event()
    runner = threading.Thread(target=worker.run, args=(stop, 0.05))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while catalog.refused < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert catalog.refused >= 2  # the job failed more than once, and the worker went on
        assert runner.is_alive()
        catalog.down = False
        deadline = time.monotonic() + 10
        while (catalog.get("BADVIDEO") or {}).get("status") != "failed" \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(10)
    row = catalog.get("BADVIDEO")
    assert row is not None and row["status"] == "failed" and "media" in (row["error"] or "")
    assert queue.depth() == 0 and queue.counts().get("dead", 0) == 0


async def test_metrics_are_served_while_the_catalog_is_down(tmp_path: Path) -> None:
    catalog = FlakyCatalog(tmp_path / "videos.sqlite")
    service = OriginService(OriginConfig(data_dir=tmp_path, keys=Keys({"k1": b"0" * 32}, "k1")),
                            catalog=catalog)
    _, admin = await service.start("127.0.0.1", 0, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{admin}/metrics"
            async with session.get(url) as response:
                assert response.status == 200
                assert "reelcdn_origin_pipeline_scrape_errors_total 0.0" in await response.text()
            catalog.down = True
            async with session.get(url) as response:
                assert response.status == 200
                text = await response.text()
            assert "reelcdn_origin_pipeline_scrape_errors_total 1.0" in text
            assert "reelcdn_origin_uploads_started_total" in text
    finally:
        await service.stop()
