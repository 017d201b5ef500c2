"""The servers a cache benchmark starts: the origin, and the targets being compared.

Why a small class per target: the benchmark loop only needs "start it, give me its URL, tell me
whether this response was a cache HIT, stop it". nginx and the reelcdn node differ in all four;
keeping that behind one interface means the loop, the warm-up and the report never special-case
a server, and adding a target (Varnish, a second node flavour) is one class in ``TARGETS``.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from .procs import (
    LOOPBACK,
    HttpReply,
    ManagedProcess,
    StartupError,
    free_port,
    http_get,
    port_open,
    tail,
)

TEMPLATE = Path(__file__).with_name("nginx.conf.tmpl")
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What the targets need from the command line."""

    connections: int
    nginx_bin: str | None
    node_cmd: tuple[str, ...] | None
    node_args: tuple[str, ...] = ()  # appended after `node --config F --name bench`
    workers: int = 1  # nginx worker_processes, and the node's `workers` (SO_REUSEPORT)


class OriginServer:
    """The aiohttp origin (``bench/origin.py``) in a subprocess; only its request count matters.

    ``extra_args`` go to the origin's command line (the crowd benchmark sets ``--cold-size``
    and ``--cold-delay`` there).
    """

    def __init__(self, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            "origin",
            [
                sys.executable,
                "-m",
                "reelcdn.loadtest.bench.origin",
                "--port",
                str(self.port),
                *extra_args,
            ],
            workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self.process.start()
        self.process.wait_ready(
            lambda: http_get(self.port, "/__count", timeout=1.0).status == 200,
            "GET /__count answered 200",
        )

    def count(self) -> int:
        """Requests the origin has served so far (excluding /__count itself)."""
        reply = http_get(self.port, "/__count", timeout=5.0)
        return int(json.loads(reply.body)["total"])

    def count_path(self, path: str) -> int:
        """Requests the origin has served for exactly ``path``."""
        reply = http_get(self.port, "/__count?path=" + quote(path, safe="/"), timeout=5.0)
        return int(json.loads(reply.body)["count"])

    def stop(self) -> None:
        self.process.stop()


class Target(ABC):
    """A cache server under test, started in ``workdir`` and proxying to the origin."""

    key: ClassVar[str]  # name on the command line (--only KEY)
    label: str  # name in the report (an instance may refine it, e.g. with its workers)
    status_header: ClassVar[str]  # response header that says HIT or MISS

    def __init__(self, options: BenchOptions, workdir: Path, origin: OriginServer) -> None:
        self.options = options
        self.workdir = workdir
        self.origin = origin
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @classmethod
    @abstractmethod
    def missing(cls, options: BenchOptions) -> list[str]:
        """Human-readable prerequisites that are absent (empty if ready to run)."""

    @abstractmethod
    def start(self) -> None:
        """Start and wait until it serves; raise StartupError (with output tail) otherwise."""

    def cache_status(self, reply: HttpReply) -> str | None:
        """The response's cache status header value, for messages."""
        return reply.header(self.status_header)

    def is_hit(self, reply: HttpReply) -> bool:
        """Whether the response was served from this server's cache."""
        return self.is_hit_value(self.cache_status(reply))

    @abstractmethod
    def is_hit_value(self, value: str | None) -> bool:
        """Whether a ``status_header`` value means a cache HIT (for tallies from other
        processes, which only have the header value)."""

    @abstractmethod
    def version(self) -> str:
        """A one-line version string for the report."""

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def get(self, path: str) -> HttpReply:
        return http_get(self.port, path, timeout=10.0)

    def diagnostics(self) -> str:
        """Output tail for failure reports."""
        return self.process.output_tail() if self.process else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def find_nginx(explicit: str | None) -> str | None:
    """nginx binary: --nginx, else /usr/sbin/nginx (not on a normal user's PATH), else PATH."""
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    return shutil.which("nginx")


def _nginx_info(nginx: str) -> str:
    """``nginx -V`` output (nginx prints it on stderr)."""
    done = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stderr + done.stdout).strip()


class NginxTarget(Target):
    """nginx ``proxy_cache``, ``worker_processes`` = the bench's ``--workers`` (default 1), its
    own prefix in the run's temp dir."""

    key = "nginx"
    label = "nginx proxy_cache (1 worker)"
    status_header = "X-Cache-Status"  # $upstream_cache_status, added by the config

    @classmethod
    def missing(cls, options: BenchOptions) -> list[str]:
        if find_nginx(options.nginx_bin):
            return []
        if options.nginx_bin:
            return [f"nginx: {options.nginx_bin} is not an executable file"]
        return ["nginx: not at /usr/sbin/nginx nor on PATH (apt-get install nginx-light, or nginx)"]

    def __init__(self, options: BenchOptions, workdir: Path, origin: OriginServer) -> None:
        super().__init__(options, workdir, origin)
        nginx = find_nginx(options.nginx_bin)
        if nginx is None:  # missing() is checked first; this is a programming error
            raise RuntimeError("nginx binary not found")
        self.nginx = nginx
        self.prefix = workdir / "nginx"
        self._info = ""
        if options.workers > 1:
            self.label = f"nginx proxy_cache ({options.workers} workers)"

    def version(self) -> str:
        first = self._info.splitlines()[0] if self._info else ""
        return first.removeprefix("nginx version: ") or "unknown"

    def render_config(self) -> str:
        """Fill the template; temp paths of modules this build lacks are left out."""
        extra = [
            f"    {mod}_temp_path {self.prefix}/{mod}_temp;"
            for mod in ("fastcgi", "uwsgi", "scgi")
            if f"--without-http_{mod}_module" not in self._info
        ]
        user_line = ""
        if os.geteuid() == 0:
            # Workers would otherwise run as "nobody" and could not use our 0700 temp dir.
            user = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            user_line = f"user {user} {group};"
        connections = max(1024, 2 * self.options.connections + 256)
        values = {
            "@USER_LINE@": user_line,
            "@PREFIX@": str(self.prefix),
            "@RLIMIT_NOFILE@": str(2 * connections + 64),
            "@WORKER_CONNECTIONS@": str(connections),
            "@WORKERS@": str(self.options.workers),
            "@EXTRA_TEMP_PATHS@": "\n".join(extra),
            "@ORIGIN_PORT@": str(self.origin.port),
            "@PORT@": str(self.port),
        }
        text = TEMPLATE.read_text()
        for name, value in values.items():
            text = text.replace(name, value)
        leftover = _PLACEHOLDER.search(text)
        if leftover:
            raise RuntimeError(f"{TEMPLATE.name}: unfilled placeholder {leftover.group(0)}")
        return text

    def start(self) -> None:
        try:
            self._info = _nginx_info(self.nginx)
        except (OSError, subprocess.SubprocessError) as exc:
            raise StartupError("nginx", f"cannot run {self.nginx} -V: {exc}") from exc
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.render_config())
        argv = [self.nginx, "-p", f"{self.prefix}/", "-c", str(conf)]
        if self._supports_e_flag():
            # Startup errors to our file, not the compiled-in /var/log/nginx/error.log.
            argv += ["-e", str(self.prefix / "error.log")]
        self.process = ManagedProcess("nginx", argv, self.workdir)
        self.process.start()
        try:
            self.process.wait_ready(
                lambda: self.get("/__nginx_ready").status == 204,
                "GET /__nginx_ready answered 204",
            )
        except StartupError as exc:
            # nginx reports most problems in its error_log, not on stderr.
            raise StartupError(exc.name, exc.reason, self.diagnostics()) from None

    def _supports_e_flag(self) -> bool:
        """``-e`` (error log at startup) exists since nginx 1.19.5."""
        m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", self._info)
        return m is not None and tuple(map(int, m.groups())) >= (1, 19, 5)

    def diagnostics(self) -> str:
        parts = [super().diagnostics(), tail(self.prefix / "error.log")]
        return "\n".join(p for p in parts if p.strip())

    def is_hit_value(self, value: str | None) -> bool:
        return (value or "").strip().upper() == "HIT"


def cache_status_is_hit(value: str | None) -> bool:
    """RFC 9211: the last Cache-Status entry (the cache nearest the client) has ``hit``.

    Entries are comma-separated, parameters ``;``-separated; ``hit`` is a Structured Fields
    boolean, so both ``hit`` and ``hit=?1`` mean true.
    """
    if not value:
        return False
    params = [p.strip() for p in value.split(",")[-1].split(";")[1:]]
    return any(p == "hit" or p.replace(" ", "") == "hit=?1" for p in params)


def find_node_command(explicit: tuple[str, ...] | None) -> list[str] | None:
    """How to run ``reelcdn``: --node-cmd, else the console script of *this* interpreter's
    environment, else ``reelcdn`` on PATH, else None."""
    if explicit:
        return list(explicit)
    beside = Path(sys.executable).parent / "reelcdn"
    if os.access(beside, os.X_OK):
        return [str(beside)]
    on_path = shutil.which("reelcdn")
    return [on_path] if on_path else None


class NodeTarget(Target):
    """The reelcdn cache node (one process, or ``workers`` processes sharing the listener),
    configured by a generated TOML file."""

    key = "node"
    label = "reelcdn node (1 process)"
    status_header = "Cache-Status"  # RFC 9211
    NAME = "bench"

    @classmethod
    def missing(cls, options: BenchOptions) -> list[str]:
        if find_node_command(options.node_cmd) is None:
            return [
                "reelcdn: no `reelcdn` console script (pip install -e /work/main), "
                "or pass --node-cmd; use --only nginx to benchmark nginx alone"
            ]
        return []

    def __init__(self, options: BenchOptions, workdir: Path, origin: OriginServer) -> None:
        super().__init__(options, workdir, origin)
        self.admin_port = free_port()
        command = find_node_command(options.node_cmd)
        if command is None:
            raise RuntimeError("reelcdn command not found")
        self.command = command
        self.config_path = workdir / "node.toml"
        if options.workers > 1:
            self.label = f"reelcdn node ({options.workers} workers)"

    def render_config(self) -> str:
        return (
            f"[node.{self.NAME}]\n"
            f'listen = "{LOOPBACK}:{self.port}"\n'
            f'admin = "{LOOPBACK}:{self.admin_port}"\n'
            f'upstream = "{self.origin.base_url}"\n'
            'cache_memory = "256MiB"\n'
            f"workers = {self.options.workers}\n"
        )

    def start(self) -> None:
        self.config_path.write_text(self.render_config())
        argv = [
            *self.command,
            "node",
            "--config",
            str(self.config_path),
            "--name",
            self.NAME,
            *self.options.node_args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = ManagedProcess(self.key, argv, self.workdir, env=env)
        self.process.start()
        self.process.wait_ready(
            lambda: (
                http_get(self.admin_port, "/health", timeout=1.0).status == 200
                and port_open(self.port)
            ),
            f"admin GET /health answered 200 and {LOOPBACK}:{self.port} accepts connections",
        )

    def version(self) -> str:
        try:
            return f"reelcdn {metadata.version('reelcdn')}"
        except metadata.PackageNotFoundError:
            return "reelcdn (version unknown)"

    def command_line(self) -> str:
        return shlex.join(self.command)

    def is_hit_value(self, value: str | None) -> bool:
        return cache_status_is_hit(value)


#: Targets in report order; the first is the reference of the ratio column.
class LoggingNodeTarget(NodeTarget):
    """The same node with its access log on, to a file in ``workdir`` (JSON lines): compared
    with ``NodeTarget`` by ``bench.hit --access-log``."""

    key = "node-log"
    label = "reelcdn node, access log on (1 process)"

    def __init__(self, options: BenchOptions, workdir: Path, origin: OriginServer) -> None:
        super().__init__(options, workdir, origin)
        self.config_path = workdir / "node-log.toml"
        self.log_path = workdir / "access.log"
        if options.workers > 1:
            self.label = f"reelcdn node, access log on ({options.workers} workers)"

    def render_config(self) -> str:
        return super().render_config() + f'access_log = "{self.log_path}"\n'


TARGETS: tuple[type[Target], ...] = (NginxTarget, NodeTarget)
REFERENCE = NginxTarget.key


def stop_all(items: list[Target | OriginServer]) -> None:
    """Stop in reverse start order; one failing stop must not leave the others running."""
    for item in reversed(items):
        with contextlib.suppress(Exception):
            item.stop()
