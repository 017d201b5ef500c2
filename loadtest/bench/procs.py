"""Subprocess and loopback-HTTP plumbing shared by the benchmarks.

Why so careful: a benchmark that leaves an nginx master or a node behind poisons the next run
(ports, CPU) on a shared 2-core machine. Every server therefore runs in its own process group
(``start_new_session``) so that it and its children (nginx workers) can be stopped together, with
SIGTERM first and SIGKILL after a grace period. Output goes to files, not pipes, so a chatty server
can never block on a full pipe, and the tail is at hand to explain a failed start.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 15.0


class StartupError(RuntimeError):
    """A server did not become ready; ``details`` carries its output tail for the user."""

    def __init__(self, name: str, reason: str, details: str = "") -> None:
        self.name = name
        self.reason = reason
        self.details = details
        super().__init__(f"{name}: {reason}")


_handed_out: set[int] = set()
_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range (``ip_local_port_range``; 32768–60999 by
    default), 20,000 of them at most, or an empty range when that range starts too low."""
    try:
        low = int(_PORT_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 20_000), low)


def free_port(host: str = LOOPBACK) -> int:
    """A currently free TCP port on ``host`` for a server started next, never the same one
    twice in this process.

    Chosen at random *below* the kernel's ephemeral range and checked by binding it: a port
    the kernel picks for ``bind(port 0)`` is one it also hands to outgoing connections, and
    on a busy machine one of them took it before the server bound it ("address already in
    use" at startup). Only where there is no room below the range is the kernel's pick used.
    """
    candidates = _below_ephemeral()
    for attempt in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, random.choice(candidates) if candidates and attempt < 150
                           else 0))
            except OSError:
                continue  # in use: another
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find a free loopback port")


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free ports (:func:`free_port`)."""
    return [free_port(host) for _ in range(count)]


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """All values of ``name`` joined by ", " (RFC 9110 list semantics), or None."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


def http_get(port: int, path: str, host: str = LOOPBACK, timeout: float = 5.0) -> HttpReply:
    """One blocking GET on a fresh connection: for readiness checks and warming, not load."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return HttpReply(resp.status, resp.getheaders(), body)
    finally:
        conn.close()


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or "" if there is none yet."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data[-64 * 1024 :].decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """A server subprocess in its own process group, with its output in ``log_dir``."""

    name: str
    argv: Sequence[str]
    log_dir: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.stderr.log"

    def start(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            try:
                self.proc = subprocess.Popen(
                    list(self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,  # own process group: stop() reaches the children
                )
            except OSError as exc:
                raise StartupError(self.name, f"cannot execute {self.argv[0]}: {exc}") from exc

    def exit_status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def output_tail(self, lines: int = 30) -> str:
        """stderr tail (and stdout tail if stderr is empty), for failure reports."""
        err = tail(self.stderr_path, lines)
        return err if err.strip() else tail(self.stdout_path, lines)

    def wait_ready(
        self, ready: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT
    ) -> None:
        """Poll ``ready`` until true; fail fast if the process dies, or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            status = self.exit_status()
            if status is not None:
                raise StartupError(
                    self.name, f"exited with status {status} before {what}", self.output_tail()
                )
            try:
                if ready():
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() >= deadline:
                raise StartupError(
                    self.name, f"not ready after {timeout:.0f} s ({what})", self.output_tail()
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole group, SIGKILL after ``grace`` s; idempotent and never raises."""
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # session leader: its pid is the group id
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        # Sweep stragglers (e.g. a worker whose master died): the group may outlive its leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
