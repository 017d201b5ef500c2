"""Running a node: the data-plane listener, the admin listener, timeouts, reload, shutdown.

The data plane is ``protocol.HttpConnection`` on a plain ``loop.create_server``; the admin API
is an aiohttp application (``admin.py``) on its own address, where convenience beats
microseconds. One sweep per second drives every connection's timeouts from a coarse clock.

A worker of a multi-worker node (``workers.py``) binds the data listener with SO_REUSEPORT, so
the kernel spreads connections over the node's processes, and serves its admin app on a unix
socket that only the master talks to. It also opens a private loopback listener of its own,
for requests that must reach *this* worker (prewarm fills this worker's cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

from aiohttp import web

from reelcdn.edge.cache.bodyfile import descriptor_budget
from reelcdn.edge.config import NodeConfig, describe_upstream
from reelcdn.edge.fetch.contract import Upstream
from reelcdn.edge.http.connection import HttpConnection
from reelcdn.edge.node import CacheNode
from reelcdn.edge.ops.accesslog import AccessLog
from reelcdn.edge.ops.admin import LocalAdmin, build_admin_app, start_admin
from reelcdn.edge.ops.heap import freeze_startup_heap

log = logging.getLogger("reelcdn.server")

SWEEP_SECONDS = 1.0
# Connections checked per loop pass in a sweep. Thousands of slow clients opened together time
# out together; answering them all 408 in one callback would stall every other client for a
# few hundred milliseconds, so the loop serves I/O between batches.
SWEEP_BATCH = 256


class NodeServer:
    """One node's listeners and connections, on the running event loop."""

    def __init__(
        self,
        config: NodeConfig,
        build_upstream: Callable[[NodeConfig], Upstream],
        *,
        reuse_port: bool = False,
        admin_socket: str | None = None,
        worker_index: int | None = None,
    ) -> None:
        """``build_upstream`` makes the node's upstream from its config (handed to
        :class:`CacheNode`, which calls it again on a reload): what composes a node passes
        ``reelcdn.shield.connectors.build_upstream``, which knows every connector, so the
        edge never imports the shield above it. ``reuse_port``: bind the data listener with
        SO_REUSEPORT (a worker; with it, a private loopback listener too). ``admin_socket``:
        serve admin (with ``/internal/stats``) on this unix socket instead of the configured
        TCP address."""
        self.node = CacheNode(config, build_upstream, worker_index)
        self.reuse_port = reuse_port
        self.admin_socket = admin_socket
        self.worker_index = worker_index
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.clock = self.loop.time()
        self.draining = False
        self.served_hosts: frozenset[str] = self._served_hosts(config)
        self._server: asyncio.Server | None = None
        self._private: asyncio.Server | None = None
        self._admin_runner: web.AppRunner | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.port: int = 0
        self.admin_port: int | None = None
        self.private_port: int | None = None
        # The access log (accesslog.py): each connection hands it its finished responses.
        self.access_log: AccessLog | None = None

    @staticmethod
    def _served_hosts(config: NodeConfig, port: int | None = None) -> frozenset[str]:
        """The authorities an absolute-form target may name for this node: ``host:port``
        of this listener (its address, localhost, 127.0.0.1; the bare name only on port 80,
        the scheme's default) and the operator's ``server_names`` bare or with the port."""
        port = config.listen_port if port is None else port
        local = {config.listen_host.lower(), "localhost", "127.0.0.1"}
        names = {h.lower() for h in config.server_names}
        served = {f"{h}:{port}" for h in local | names} | names
        if port == 80:
            served |= local
        if config.advertise is not None:  # the address other nodes know this node by
            advertise_host, advertise_port = config.advertise[0].lower(), config.advertise[1]
            served.add(f"{advertise_host}:{advertise_port}")
            if advertise_port == 80:
                served.add(advertise_host)
        return frozenset(served)

    @property
    def self_url(self) -> str:
        """A base URL reaching this process's data plane (the private listener if any)."""
        host = self.node.config.listen_host
        port = self.port
        if self.private_port is not None:
            host = _loopback_for(host)
            port = self.private_port
        elif host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        config = self.node.config
        # Raise RLIMIT_NOFILE; what client connections, upstream pools and the disk tier may
        # need is kept, and cached bodies' memory files get the rest (one descriptor each).
        descriptor_budget(config)
        await self.node.start()
        self._start_access_log(config)
        self._server = await self.loop.create_server(
            lambda: HttpConnection(self),
            host=config.listen_host,
            port=config.listen_port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=4096,
        )
        sock = self._server.sockets[0]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = sock.getsockname()[1]
        self.served_hosts = self._served_hosts(config, self.port)
        if self.reuse_port:
            self._private = await self.loop.create_server(
                lambda: HttpConnection(self), host=_loopback_for(config.listen_host), port=0,
            )
            self.private_port = self._private.sockets[0].getsockname()[1]
        admin_where = "off"
        if self.admin_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.admin_socket)  # left by a previous worker that was killed
            self._admin_runner, _ = await start_admin(
                build_admin_app(LocalAdmin(self), internal=True), unix_path=self.admin_socket
            )
            admin_where = f"unix:{self.admin_socket}"
        elif config.admin_host is not None and config.admin_port is not None:
            self._admin_runner, self.admin_port = await start_admin(
                build_admin_app(LocalAdmin(self)), host=config.admin_host,
                port=config.admin_port,
            )
            admin_where = f"{config.admin_host}:{self.admin_port}"
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)
        log.info(
            "node %s (%s)%s listening on %s:%d%s, admin %s, %s",
            config.name, config.role,
            f" worker {self.worker_index}" if self.worker_index is not None else "",
            config.listen_host, self.port, " (SO_REUSEPORT)" if self.reuse_port else "",
            admin_where, describe_upstream(config),
        )

    def _start_access_log(self, config: NodeConfig) -> None:
        if config.access_log is not None:
            self.access_log = AccessLog(config, self.node.stats, self.node.delivery.member)
            self.access_log.upstream_name = self.node.upstream.name
            self.access_log.start()

    async def _close_access_log(self) -> None:
        """Stop the log: its last batch formatted here, the writer (which writes what is
        queued first, bounded) waited for off the loop."""
        access_log, self.access_log = self.access_log, None
        if access_log is not None:
            access_log.close()
            await self.loop.run_in_executor(None, access_log.join)

    def reopen_logs(self) -> None:
        """SIGUSR1: the access log opens its path again (after logrotate renamed it)."""
        if self.access_log is not None:
            self.access_log.reopen()

    def _sweep(self) -> None:
        self.clock = now = self.loop.time()
        self._sweep_batch(list(self.connections), 0, now)
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep_batch(self, conns: list[HttpConnection], start: int, now: float) -> None:
        end = start + SWEEP_BATCH
        for conn in conns[start:end]:
            conn.check_timeouts(now)  # (a connection closed meanwhile returns at once)
        if end < len(conns):
            self.loop.call_soon(self._sweep_batch, conns, end, now)

    async def reload(self, config: NodeConfig) -> None:
        """Apply a new config to the running node (listen addresses stay as they are)."""
        old = self.node.config
        if (config.listen_host, config.listen_port) != (old.listen_host, old.listen_port):
            log.warning("listen address changes need a restart; keeping %s:%d",
                        old.listen_host, old.listen_port)
        await self.node.apply_config(config)
        if config.access_log is None:
            await self._close_access_log()
        elif self.access_log is None:
            self._start_access_log(config)
        else:
            self.access_log.configure(config)
            self.access_log.upstream_name = self.node.upstream.name
        self.served_hosts = self._served_hosts(config, self.port)
        log.info("node %s reloaded its configuration", config.name)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight responses finish (up to ``grace``), then close."""
        if grace is None:
            grace = self.node.config.limits.shutdown_grace
        self.draining = True
        if self._server is not None:
            self._server.close()
        if self._private is not None:
            self._private.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + grace
        while (self.connections or self.tasks) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)  # shutdown only: bounded by the grace period
        for conn in list(self.connections):
            conn.abort()
        for task in list(self.tasks):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.admin_socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.admin_socket)
        await self._close_access_log()
        await self.node.close()
        for listener in (self._server, self._private):
            if listener is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.wait_closed(), 1.0)


def _loopback_for(host: str) -> str:
    """The loopback address of the family of ``host`` (a private listener never listens
    beyond this machine)."""
    return "::1" if ":" in host else "127.0.0.1"


def install_uvloop() -> bool:
    """Use uvloop when it is installed (the production loop); plain asyncio still works."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve(
    config: NodeConfig,
    build_upstream: Callable[[NodeConfig], Upstream],
    reload_config: Callable[[], NodeConfig] | None = None,
    ready: Callable[[NodeServer], None] | None = None,
    *,
    reuse_port: bool = False,
    admin_socket: str | None = None,
    worker_index: int | None = None,
) -> None:
    """Run a node until SIGINT/SIGTERM; SIGHUP reloads through ``reload_config``; SIGUSR1
    reopens the access log (logrotate).

    ``build_upstream`` as for :class:`NodeServer`; ``reuse_port``, ``admin_socket`` and
    ``worker_index`` make it one worker of a multi-worker node."""
    server = NodeServer(config, build_upstream, reuse_port=reuse_port,
                        admin_socket=admin_socket, worker_index=worker_index)
    loop = asyncio.get_running_loop()
    # Before the listener opens: SIGUSR1's default action would end the process.
    loop.add_signal_handler(signal.SIGUSR1, server.reopen_logs)
    await server.start()
    freeze_startup_heap()
    if ready is not None:
        ready(server)
    stop = asyncio.Event()

    reloading: set[asyncio.Task[None]] = set()

    async def do_reload() -> None:
        assert reload_config is not None
        try:
            await server.reload(reload_config())
        except Exception as exc:  # a bad file keeps the old config
            log.error("reload failed, keeping the running configuration: %s", exc)

    def on_hup() -> None:
        if reload_config is None:
            return
        task = loop.create_task(do_reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await stop.wait()
    finally:
        log.info("node %s stopping", config.name)
        await server.stop()
