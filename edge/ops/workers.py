"""One node on all cores: a master process supervising ``workers`` worker processes.

Why processes: the data plane is one asyncio loop, so one process uses one core. With
``workers = N`` in a node's table, ``reelcdn node`` becomes a small master (no data plane) that
starts N workers — each a full ``NodeServer`` — bound to the same listen address with
SO_REUSEPORT, so the kernel spreads incoming connections over them.

What that means for an operator:

* **Each worker has its own memory cache.** ``cache_memory`` is the node's total: each worker
  gets ``cache_memory // workers``. An object requested through several workers is fetched
  (and stored) once per worker, so a crowd for one cold object costs at most N upstream
  fetches instead of one — still bounded, and in a tiered topology the second fetch is a HIT
  at the parent.
* **One node to the outside.** The master serves the node's configured admin address with the
  API of a single node: ``/health`` (200 ``ok`` when every worker is, 200 ``degraded`` while
  at least one serves — a worker restarting does not take the node out of a load balancer's
  rotation — and 503 when none does), ``/metrics`` (the workers' counters, histograms and
  gauges summed per label set, plus ``reelcdn_workers`` and ``reelcdn_workers_up``),
  ``/cache/stats`` (summed, with a per-worker list), ``POST /purge`` and ``POST /prewarm``
  (both sent to every worker, since each has its own cache). Workers serve their admin app on
  unix sockets in a private directory; the master reads ``/internal/stats`` from them and
  renders metrics with the same code as a single node (``metrics.collect_families``).
* **Supervision.** A worker that dies is restarted with a growing back-off; SIGHUP is passed
  to every worker (each reloads the file), SIGUSR1 too (each reopens its access log);
  SIGTERM/SIGINT stop the workers gracefully (SIGTERM, ``shutdown_grace`` + 5 s, then
  SIGKILL) and the master exits 0. Workers ask Linux
  to SIGTERM them if the master dies (``PR_SET_PDEATHSIG``), so none outlives it.

Counters survive a worker's restart: the master keeps the last snapshot it read from each
worker process and, when that process dies, carries its counters forward, so the summed
counters Prometheus sees never go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from reelcdn.edge.config import NodeConfig
from reelcdn.edge.metrics import snapshot_registry, sum_snapshots
from reelcdn.edge.ops import ratios
from reelcdn.edge.ops.admin import AdminBackend, PurgeSpec, build_admin_app, start_admin

log = logging.getLogger("reelcdn.workers")

RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
RESTART_RESET_AFTER = 60.0     # a worker that ran this long starts its back-off over
START_TIMEOUT = 30.0           # for every worker to answer /health at start
PROBE_TIMEOUT = 2.0            # per admin request from the master to a worker
KILL_MARGIN = 5.0              # beyond shutdown_grace before SIGKILL
PREWARM_TIMEOUT = 120.0
# Summed in /cache/stats; the rest of a worker's cache stats are per worker.
CACHE_SUMS = ("objects", "bytes", "capacity", "evictions", "inflight", "requests", "hits",
              "disk_objects", "disk_bytes", "disk_capacity", "disk_hits")


def worker_config(config: NodeConfig, count: int) -> NodeConfig:
    """A worker's share of the node: ``cache_memory``, ``cache_disk`` and
    ``prefetch_bytes_per_second`` are the node's total budgets, so each of ``count`` workers
    gets an equal part and the node as a whole stays within them (each worker's disk tier has
    its own run directory under ``cache_dir``). ``prefetch_client_bytes_per_second`` stays
    whole: a player's connection lands on one worker, which must give it the full rate."""
    return dataclasses.replace(
        config,
        cache_memory=config.cache_memory // count,
        cache_disk=config.cache_disk // count,
        prefetch_bytes_per_second=max(1, config.prefetch_bytes_per_second // count),
    )


@dataclasses.dataclass
class Worker:
    index: int
    socket_path: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    session: aiohttp.ClientSession | None = None
    # The last /internal/stats read from the current process: carried forward when it dies.
    last: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class WorkerUnreachable(Exception):
    """A worker's admin socket did not answer (dead, starting, or stuck)."""


def _merge_upstreams(views: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per-upstream health across workers: up only if every worker has it in rotation,
    counts summed, the longest run of consecutive failures."""
    merged: dict[str, dict[str, Any]] = {}
    for view in views:
        for name, state in view.items():
            into = merged.setdefault(name, {})
            for key, value in state.items():
                if isinstance(value, bool):
                    into[key] = into.get(key, True) and value
                elif key == "consecutive_failures":
                    into[key] = max(into.get(key, 0), value)
                elif isinstance(value, int | float):
                    into[key] = into.get(key, 0) + value
                else:
                    into.setdefault(key, value)
    return merged


class WorkersAdmin(AdminBackend):
    """The admin backend of a workers' master: it asks every worker (over their unix
    sockets) and sums what they say, so the node's admin API reads as one process's."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def admin_token(self) -> str | None:
        return self.master.config.admin_token

    async def health(self) -> tuple[dict[str, Any], int]:
        master = self.master

        async def one(worker: Worker) -> dict[str, Any]:
            state = {"worker": worker.index, "pid": worker.pid, "restarts": worker.restarts}
            try:
                status, body = await master.call(worker, "GET", "/health")
            except WorkerUnreachable:
                return {**state, "status": "down"}
            return {**state, "status": body.get("status", str(status))
                    if isinstance(body, dict) else str(status)}

        workers = await asyncio.gather(*(one(w) for w in master.workers))
        up = sum(1 for w in workers if w["status"] == "ok")
        if master.stopping:
            status = "draining"
        elif not master.started:
            status = "starting"
        elif up == 0:
            status = "down"
        else:
            # The workers share the listener: while one serves, the node answers players
            # (a restarting worker's share of connections goes to the others).
            status = "ok" if up == len(workers) else "degraded"
        return ({"status": status, "node": master.config.name, "role": master.config.role,
                 "workers": {"up": up, "total": len(workers), "each": list(workers)}},
                200 if status in ("ok", "degraded") else 503)

    async def metrics(self) -> bytes:
        master = self.master
        master._view = master.metrics_view(await master.internal_stats())
        return generate_latest(master.registry)

    async def cache_stats(self) -> dict[str, Any]:
        master = self.master
        fresh = await master.internal_stats()
        per_worker: list[dict[str, Any]] = []
        total: dict[str, Any] = dict.fromkeys(CACHE_SUMS, 0)
        outcomes: dict[str, int] = {}
        upstreams = []
        for worker, body in zip(master.workers, fresh, strict=True):
            if body is None:
                per_worker.append({"worker": worker.index, "pid": worker.pid,
                                   "status": "down"})
                continue
            cache = body["cache"]
            for key in CACHE_SUMS:
                total[key] += cache.get(key, 0)
            ratios.add_counts(outcomes, cache.get("outcomes", {}))
            upstreams.append(cache.get("upstreams", {}))
            per_worker.append({"worker": worker.index, "pid": body["pid"],
                               "status": "draining" if body.get("draining") else "ok",
                               **{k: v for k, v in cache.items() if k != "upstreams"}})
        return {
            "node": master.config.name, **total,
            "outcomes": outcomes,
            "hit_ratio": ratios.hit_ratio(outcomes),
            "upstreams": _merge_upstreams(upstreams),
            "workers": per_worker,
        }

    async def purge(self, spec: PurgeSpec) -> tuple[dict[str, Any], int]:
        """Every worker has its own cache: purge them all. A worker that is not running
        has an empty cache (it starts cold), so it counts as purged; one that is running
        but does not answer makes the purge fail (502) so the operator retries."""
        master = self.master

        async def one(worker: Worker) -> dict[str, Any]:
            if not worker.running:
                return {"worker": worker.index, "purged": 0, "running": False}
            try:
                status, body = await master.call(worker, "POST", "/purge", spec.body())
            except WorkerUnreachable as exc:
                return {"worker": worker.index, "error": str(exc)}
            if status != 200:
                return {"worker": worker.index, "error": f"status {status}: {body}"}
            return {"worker": worker.index, "purged": body["purged"]}

        results = await asyncio.gather(*(one(w) for w in master.workers))
        failed = [r for r in results if "error" in r]
        return ({"purged": sum(r.get("purged", 0) for r in results), **spec.body(),
                 "workers": list(results)}, 502 if failed else 200)

    async def prewarm(self, paths: list[str]) -> dict[str, Any]:
        """Every worker has its own memory cache, so every worker fetches every path
        (through its own private listener). ``results`` per path gives the worst status
        over the workers, and each worker's own result."""
        master = self.master

        async def one(worker: Worker) -> dict[str, Any]:
            try:
                status, body = await master.call(worker, "POST", "/prewarm", {"paths": paths},
                                                 timeout=PREWARM_TIMEOUT)
            except WorkerUnreachable as exc:
                return {"worker": worker.index, "error": str(exc)}
            if status != 200 or not isinstance(body, dict):
                return {"worker": worker.index, "error": f"status {status}: {body}"}
            return {"worker": worker.index, **body}

        reports = await asyncio.gather(*(one(w) for w in master.workers))
        results: dict[str, dict[str, Any]] = {}
        for path in dict.fromkeys(paths):
            per = []
            for report in reports:
                got = report.get("results", {}).get(path) if "error" not in report else None
                per.append({"worker": report["worker"],
                            **(got or {"status": 599, "error": report.get("error", "")})})
            results[path] = {"status": max(int(p["status"]) for p in per), "workers": per}
        failed = sum(1 for r in results.values() if r["status"] >= 400)
        return {
            "requested": len(paths), "failed": failed, "results": results,
            "workers": [{"worker": r["worker"], "failed": r.get("failed"),
                         **({"error": r["error"]} if "error" in r else {})}
                        for r in reports],
        }


class Master:
    """Runs and supervises the workers of one node and serves its admin API."""

    def __init__(
        self,
        config_file: str,
        config: NodeConfig,
        reload_config: Callable[[], NodeConfig],
        *,
        log_level: str = "INFO",
        no_uvloop: bool = False,
    ) -> None:
        self.config_file = config_file
        self.config = config
        self.reload_config = reload_config
        self.log_level = log_level
        self.no_uvloop = no_uvloop
        self.count = config.workers
        self.socket_dir = tempfile.mkdtemp(prefix=f"reelcdn-{config.name}-")
        os.chmod(self.socket_dir, 0o700)
        self.workers = [
            Worker(i, os.path.join(self.socket_dir, f"w{i}.sock")) for i in range(self.count)
        ]
        self.started = False
        self.stopping = False
        self.stop_event = asyncio.Event()
        # Counters of worker processes that died, so sums never go backwards.
        self.retired: dict[str, Any] = sum_snapshots([])
        self._view: dict[str, Any] = {}
        self.registry = snapshot_registry(lambda: self._view)
        self._admin_runner: web.AppRunner | None = None
        self.admin_port: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- processes -------------------------------------------------------------------------

    def command(self, worker: Worker) -> list[str]:
        cmd = [
            sys.executable, "-m", "reelcdn.cli", "--log-level", self.log_level, "node",
            "--config", self.config_file, "--name", self.config.name,
            "--worker-index", str(worker.index), "--worker-count", str(self.count),
            "--worker-admin-socket", worker.socket_path,
        ]
        if self.no_uvloop:
            cmd.append("--no-uvloop")
        return cmd

    async def spawn(self, worker: Worker) -> None:
        """Start a worker in the master's process group (a group kill reaches it too), with
        stdout/stderr inherited so its log lines go where the master's go."""
        env = {**os.environ, "REELCDN_SUPERVISED": "1", "REELCDN_SUPERVISOR_PID": str(os.getpid())}
        worker.last = None
        worker.process = await asyncio.create_subprocess_exec(
            *self.command(worker), stdin=asyncio.subprocess.DEVNULL, env=env,
        )
        worker.started_at = time.monotonic()
        if worker.session is None:
            worker.session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=worker.socket_path, force_close=True),
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            )
        log.info("node %s: worker %d started (pid %d)", self.config.name, worker.index,
                 worker.pid)

    def _retire(self, worker: Worker, pid: int) -> None:
        """Carry a dead worker process's last counters into the node's totals."""
        last = worker.last
        if last is not None and last.get("pid") == pid:
            # Counters carry over; levels (gauges such as disk bytes) died with the process.
            self.retired = sum_snapshots([self.retired, {**last["stats"], "levels": {}}])
        worker.last = None

    async def supervise(self, worker: Worker) -> None:
        """Restart ``worker`` whenever it dies, with back-off, until the node stops."""
        while not self.stopping:
            process = worker.process
            if process is None:
                return
            code = await process.wait()
            if self.stopping:
                return
            self._retire(worker, process.pid)
            if time.monotonic() - worker.started_at > RESTART_RESET_AFTER:
                worker.restarts = 0
            delay = RESTART_BACKOFF[min(worker.restarts, len(RESTART_BACKOFF) - 1)]
            log.warning("node %s: worker %d (pid %d) exited with status %s; restarting in "
                        "%.1f s", self.config.name, worker.index, process.pid, code, delay)
            worker.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), delay)
            if self.stopping:
                return
            try:
                await self.spawn(worker)
            except OSError as exc:
                log.error("node %s: could not start worker %d: %s", self.config.name,
                          worker.index, exc)
                worker.started_at = time.monotonic()

    def signal_workers(self, sig: int) -> None:
        for worker in self.workers:
            if worker.running:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)  # type: ignore[union-attr]

    async def wait_started(self) -> int:
        """0 once every worker answers /health; else the exit status to leave with (a worker
        that dies at start, e.g. on a port in use, fails the node as a single node would)."""
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(self.workers)
        while pending:
            if self.stopping:
                return 0
            for worker in list(pending):
                process = worker.process
                if process is not None and process.returncode is not None:
                    log.error("node %s: worker %d exited with status %d while starting",
                              self.config.name, worker.index, process.returncode)
                    return process.returncode if process.returncode in (1, 2) else 1
                with contextlib.suppress(WorkerUnreachable):
                    status, _ = await self.call(worker, "GET", "/health")
                    if status == 200:
                        pending.remove(worker)
            if time.monotonic() > deadline:
                log.error("node %s: workers %s did not become healthy in %.0f s",
                          self.config.name, [w.index for w in pending], START_TIMEOUT)
                return 1
            if pending:
                await asyncio.sleep(0.05)
        return 0

    async def stop_workers(self) -> None:
        """SIGTERM every worker, wait ``shutdown_grace`` + 5 s, SIGKILL what is left."""
        self.signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.config.limits.shutdown_grace + KILL_MARGIN
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("node %s: worker %d did not stop in time; killing it",
                            self.config.name, worker.index)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def reload(self) -> None:
        """SIGHUP: check the file here first (one error message, not one per worker), keep
        what the master itself uses (token, grace), then let every worker reload."""
        try:
            config = self.reload_config()
        except Exception as exc:  # a bad file keeps the old config everywhere
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        if config.workers != self.count:
            log.warning("node %s: workers = %d needs a restart; keeping %d workers",
                        config.name, config.workers, self.count)
        self.config = config
        self.signal_workers(signal.SIGHUP)
        log.info("node %s: reload sent to %d workers", config.name, self.count)

    # ---- talking to workers ----------------------------------------------------------------

    async def call(
        self, worker: Worker, method: str, path: str, body: Any = None,
        timeout: float = PROBE_TIMEOUT,
    ) -> tuple[int, Any]:
        """One admin request to a worker over its unix socket: (status, JSON body)."""
        if worker.session is None or not worker.running:
            raise WorkerUnreachable(f"worker {worker.index} is not running")
        headers = {}
        if self.config.admin_token is not None:
            headers["Authorization"] = "Bearer " + self.config.admin_token
        try:
            async with worker.session.request(
                method, "http://worker" + path, json=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                return response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise WorkerUnreachable(f"worker {worker.index}: {exc or type(exc).__name__}") \
                from None

    async def internal_stats(self) -> list[dict[str, Any] | None]:
        """Each worker's /internal/stats (None where it did not answer)."""

        async def one(worker: Worker) -> dict[str, Any] | None:
            try:
                status, body = await self.call(worker, "GET", "/internal/stats")
            except WorkerUnreachable:
                return None
            if status != 200 or not isinstance(body, dict):
                return None
            if body.get("pid") == worker.pid:
                worker.last = body
            return body

        return list(await asyncio.gather(*(one(w) for w in self.workers)))

    def metrics_view(self, fresh: list[dict[str, Any] | None]) -> dict[str, Any]:
        """The node's metrics as one: counters summed over the workers (a worker that did not
        answer counts with its last snapshot, a dead one through ``retired``), gauges summed
        over the workers that answered, an upstream up only if up in every worker."""
        stats = [self.retired]
        for worker, body in zip(self.workers, fresh, strict=True):
            if body is not None:
                stats.append(body["stats"])
            elif worker.last is not None and worker.last.get("pid") == worker.pid:
                stats.append(worker.last["stats"])
        gauges: dict[str, float] = {}
        upstream_up: dict[str, float] | None = None
        serving = 0
        for body in fresh:
            if body is None:
                continue
            serving += not body.get("draining")
            for name, value in body["gauges"].items():
                gauges[name] = gauges.get(name, 0) + value
            if body.get("upstream_up") is not None:
                upstream_up = upstream_up or {}
                for name, value in body["upstream_up"].items():
                    upstream_up[name] = min(upstream_up.get(name, 1.0), value)
        # The workers the node runs, and those that answered serving (not draining).
        gauges["reelcdn_workers"] = self.count
        gauges["reelcdn_workers_up"] = serving
        return {"node": self.config.name, "stats": sum_snapshots(stats), "gauges": gauges,
                "upstream_up": upstream_up}

    # ---- the admin API -----------------------------------------------------------------------

    async def start_admin(self) -> None:
        config = self.config
        if config.admin_host is None or config.admin_port is None:
            return
        self._admin_runner, self.admin_port = await start_admin(
            build_admin_app(WorkersAdmin(self)), host=config.admin_host, port=config.admin_port
        )

    # ---- the whole life --------------------------------------------------------------------

    def _on_hup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_stop(self) -> None:
        self.stopping = True
        self.stop_event.set()

    async def run(self) -> int:
        """Start the admin listener and the workers, supervise until SIGTERM/SIGINT, then stop
        everything. Returns the process exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        # logrotate: each worker reopens its own descriptor of the access log.
        loop.add_signal_handler(signal.SIGUSR1, self.signal_workers, signal.SIGUSR1)
        config = self.config
        try:
            try:
                await self.start_admin()
            except OSError as exc:
                log.error("node %s: admin listener could not start: %s", config.name, exc)
                return 1
            for worker in self.workers:
                await self.spawn(worker)
            code = await self.wait_started()
            if code:
                return code
            self.started = True
            log.info("node %s: %d workers on %s:%d (SO_REUSEPORT), admin %s", config.name,
                     self.count, config.listen_host, config.listen_port,
                     f"{config.admin_host}:{self.admin_port}" if self.admin_port else "off")
            for worker in self.workers:
                task = loop.create_task(self.supervise(worker))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await self.stop_event.wait()
            return 0
        finally:
            log.info("node %s stopping %d workers", config.name, self.count)
            self.stopping = True
            self.stop_event.set()
            await self.stop_workers()
            for task in list(self._tasks):
                task.cancel()
            if self._admin_runner is not None:
                await self._admin_runner.cleanup()
            for worker in self.workers:
                if worker.session is not None:
                    await worker.session.close()
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            log.info("node %s stopped", config.name)
