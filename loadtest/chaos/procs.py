"""The soak's processes: the chaos origin and one ``reelcdn node`` process per node, each in its
own process group so it can be SIGKILLed and started again, and every one of them stopped at
the end — on success, failure, Ctrl-C or SIGTERM.

Nodes get ``REELCDN_SUPERVISED=1`` and this process's pid, so they ask Linux to SIGTERM them
when the soak dies, even by SIGKILL (``PR_SET_PDEATHSIG``, as under ``reelcdn up``); the chaos
origin does the same. Output goes to one log file per process (appended across restarts),
never to a pipe that could fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HEALTH_TIMEOUT = 30.0
STOP_GRACE = 10.0


def child_env() -> dict[str, str]:
    return {**os.environ, "REELCDN_SUPERVISED": "1", "REELCDN_SUPERVISOR_PID": str(os.getpid()),
            "PYTHONUNBUFFERED": "1"}


@dataclass
class Managed:
    """A process the soak started: its command, log, current process and history."""

    name: str
    argv: list[str]
    log: Path
    health_url: str | None = None          # GET → 200 when ready
    token: str | None = None
    role: str = ""
    proc: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)   # monotonic start times
    pids: list[int] = field(default_factory=list)
    ready: bool = False                    # healthy since its last start

    def start(self) -> None:
        self.ready = False
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=child_env(),
                                         start_new_session=True)
        self.starts.append(time.monotonic())
        self.pids.append(self.proc.pid)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Signal the whole process group (a node's workers too)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    async def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.proc is not None and self.proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def wait_healthy(self, session: aiohttp.ClientSession,
                           timeout: float = HEALTH_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        while time.monotonic() < deadline:
            if not self.alive:
                return False
            if self.health_url is None:
                self.ready = True
                return True
            try:
                async with session.get(self.health_url, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        self.ready = True
                        return True
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.1)
        return False

    def tree_pids(self) -> list[int]:
        """The process and its children (a node's workers), for sampling."""
        if not self.alive or self.proc is None:
            return []
        pids = [self.proc.pid]
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            pids += [int(p) for p in children.split()]
        return pids


class Processes:
    """Everything the soak started, in start order; ``stop_all`` ends them all."""

    def __init__(self) -> None:
        self.items: dict[str, Managed] = {}

    def add(self, item: Managed) -> Managed:
        self.items[item.name] = item
        return item

    async def stop_all(self, grace: float = STOP_GRACE) -> None:
        for item in reversed(list(self.items.values())):
            if item.alive:
                item.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for item in self.items.values():
            if not await item.wait_exit(max(0.0, deadline - time.monotonic())):
                item.signal(signal.SIGKILL)
                await item.wait_exit(5.0)

    def kill_now(self) -> None:
        """Last resort, synchronous (atexit): SIGKILL every group still running."""
        for item in self.items.values():
            if item.alive:
                item.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if item.proc is not None:
                        item.proc.wait(timeout=2)

    def leftovers(self) -> list[int]:
        """Pids the soak started that still exist (should be none after ``stop_all``)."""
        left = []
        for item in self.items.values():
            for pid in item.pids:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                except PermissionError:
                    pass
                state = _state(pid)
                if state not in (None, "Z"):
                    left.append(pid)
        return left


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def node_argv(config: Path, name: str, log_level: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "reelcdn.cli", "--log-level", log_level, "node", "--config",
            str(config), "--name", name]


def origin_argv(root: Path, port: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "reelcdn.loadtest.chaos.origin", "--root", str(root),
            "--port", str(port), "--seed", str(seed)]


def read_status(pid: int) -> tuple[int | None, int | None]:
    """(VmRSS in bytes, open descriptors) of a process, from /proc; None where unreadable."""
    rss = fds = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    with contextlib.suppress(OSError):
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds
