"""The origin service: the state of ``origin/state.py`` behind its two listeners.

``OriginService`` is an :class:`~reelcdn.origin.state.OriginState` with the public application
(``/api/v1/``) and the admin one (``/metrics``, ``/health``) that ``origin/api.py`` builds over
it, the sweeps of expired uploads, and ``start``/``stop``. ``reelcdn origin`` runs one (``run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiohttp import web

from reelcdn.edge.ops.heap import freeze_startup_heap
from reelcdn.origin.api import build_admin_app, build_app
from reelcdn.origin.config import OriginServices, open_catalog, open_queue, open_store
from reelcdn.origin.logs import AccessLogger, access_log
from reelcdn.origin.queue import JobQueue
from reelcdn.origin.state import OriginConfig, OriginMetrics, OriginState
from reelcdn.origin.storage import ObjectStore
from reelcdn.origin.videos import Catalog

__all__ = ["OriginConfig", "OriginMetrics", "OriginService", "run"]

log = logging.getLogger("reelcdn.origin")


class OriginService(OriginState):
    def __init__(self, config: OriginConfig, clock: Callable[[], float] = time.time, *,
                 queue: JobQueue | None = None, catalog: Catalog | None = None,
                 published: ObjectStore | None = None) -> None:
        super().__init__(config, clock, queue=queue, catalog=catalog, published=published)
        self._runners: list[web.AppRunner] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.app = build_app(self)
        self.admin_app = build_admin_app(self)

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sweep_direct)
            except Exception:
                log.exception("direct upload sweep failed")
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:
                log.exception("upload sweep failed")

    # -- listeners -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    admin_host: str | None = None, admin_port: int | None = None,
                    ) -> tuple[int, int | None]:
        """Listen; returns the API port and the admin port (None without an admin listener)."""
        ports: list[int | None] = []
        for app, h, p in ((self.app, host, port), (self.admin_app, admin_host, admin_port)):
            if h is None or p is None:
                ports.append(None)
                continue
            # The public API logs each answer (structured); the admin listener's scrapes not.
            logged = {"access_log": access_log, "access_log_class": AccessLogger} \
                if app is self.app else {"access_log": None}
            runner = web.AppRunner(app, read_bufsize=self.config.read_bufsize, **logged)
            await runner.setup()
            await web.TCPSite(runner, h, p).start()
            self._runners.append(runner)
            bound = next(a for a in runner.addresses if isinstance(a, tuple))
            ports.append(bound[1])
        self.sweep()
        self._sweeper = asyncio.ensure_future(self._sweep_loop())
        await self.notify_pending()
        return ports[0], ports[1]  # type: ignore[return-value]

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self.finish_tasks()
        self.close()



async def run(services: OriginServices) -> None:
    """Serve the ``[api]`` of a topology until SIGTERM or SIGINT, with the queue and catalog
    its ``[queue]`` and ``[catalog]`` name."""
    import signal

    config = services.service_config()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    service = OriginService(config, queue=open_queue(services.queue),
                            catalog=open_catalog(services.catalog),
                            published=open_store(services.publish_origin()))
    (host, port), admin = services.api.listen, services.api.admin
    admin_host, admin_port = admin if admin is not None else (None, None)
    try:
        bound, admin_bound = await service.start(host, port, admin_host, admin_port)
    except BaseException:
        await service.stop()
        raise
    freeze_startup_heap()
    log.info("origin API on http://%s:%d/api/v1/%s", host, bound,
             f", admin on http://{admin_host}:{admin_bound}/" if admin_bound else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening {host}:{bound} admin {admin_host}:{admin_bound}", flush=True)
    await stop.wait()
    await service.stop()
