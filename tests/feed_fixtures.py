"""A real origin service on loopback for the feed's tests (test_feed.py, test_plays_ingest.py):
videos put straight into its catalog, a clock the test moves, the feed's service at hand."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from reelcdn.origin.feed.api import FEED
from reelcdn.origin.feed.service import FeedService
from reelcdn.origin.service import OriginConfig, OriginService
from reelcdn.origin.users import Keys, mint

KEYS = Keys({"k1": b"s" * 40}, "k1")
PLAYS_TOKEN = "edge-plays-secret-0123456789"
_ids = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def video_id(n: int | None = None) -> str:
    """A valid video id (26 of a-z 2-7), distinct per call."""
    n = next(_ids) if n is None else n
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    digits = []
    for _ in range(26):
        digits.append(alphabet[n % 32])
        n //= 32
    return "".join(reversed(digits))


class Origin:
    def __init__(self, service: OriginService, port: int, admin_port: int, clock: Clock):
        self.service = service
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.clock = clock

    @property
    def feed(self) -> FeedService:
        return self.service.app[FEED]

    def auth(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(user, KEYS, 3600, now=self.clock.now)}"}

    def video(self, owner: str, title: str = "", hashtags: str = "", status: str = "ready",
              ) -> str:
        """A video in the catalog (created now, by the catalog's own clock), in ``status``."""
        vid = video_id()
        self.service.catalog.create(vid, owner, {"title": title or vid, "caption": "c",
                                                 "hashtags": hashtags})
        if status != "uploading":
            self.service.catalog.set_status(vid, status, duration=12.5,
                                            renditions=["360p"])
        time.sleep(0.002)  # created is the catalog's clock: keep the order unambiguous
        return vid

    async def recompute(self) -> None:
        await asyncio.to_thread(self.feed.recompute)

    async def plays(self, http: aiohttp.ClientSession, plays: Sequence[dict[str, Any]],
                    batch: str | None = None, token: str = PLAYS_TOKEN,
                    ) -> tuple[int, dict[str, Any]]:
        batch = batch or f"edge-a:{next(_ids):032x}"
        async with http.post(f"{self.url}/api/v1/plays",
                             json={"batch": batch, "node": "edge-a", "plays": list(plays)},
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()


async def start_origin(tmp_path: Path, **config: Any) -> tuple[OriginService, Origin]:
    clock = Clock()
    settings: dict[str, Any] = {"plays_token": PLAYS_TOKEN, "trending_interval": 3600.0}
    settings.update(config)
    service = OriginService(OriginConfig(data_dir=tmp_path / "data", keys=KEYS, **settings),
                            clock=clock)
    port, admin_port = await service.start("127.0.0.1", 0, "127.0.0.1", 0)
    assert admin_port is not None
    return service, Origin(service, port, admin_port, clock)


@contextlib.asynccontextmanager
async def running_origin(tmp_path: Path, **config: Any) -> AsyncIterator[Origin]:
    service, made = await start_origin(tmp_path, **config)
    try:
        yield made
    finally:
        await service.stop()
