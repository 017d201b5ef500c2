"""Real memcached processes for the tests (``memcached -l 127.0.0.1 -p PORT -U 0 -m 16``),
each on a free loopback port; stopped by the fixture that started them.

Without a ``memcached`` binary the test skips, saying so; in CI (``CI`` set) it fails:
scripts/test.sh installs it with apt.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest
from nodeproc import free_port


def memcached_or_skip() -> str:
    exe = shutil.which("memcached") or ("/usr/bin/memcached"
                                        if os.path.exists("/usr/bin/memcached") else None)
    if exe is not None:
        return exe
    reason = "memcached is not installed (scripts/test.sh installs it: apt-get install memcached)"
    if os.environ.get("CI"):
        pytest.fail(reason + "; in CI the cache tests must run")
    pytest.skip(reason)


class Memcached:
    """One memcached process on 127.0.0.1:port; ``stop`` kills it, ``start`` runs it again on
    the same port."""

    def __init__(self, exe: str, port: int | None = None) -> None:
        self.exe = exe
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Memcached:
        args = [self.exe, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "16"]
        if os.geteuid() == 0:
            args += ["-u", "root"]  # memcached refuses to run as root without it
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded: until it accepts connections
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise AssertionError(f"memcached exited: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("memcached did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def items(self) -> int:
        """Items this server holds (``stats``' curr_items)."""
        from pymemcache.client.base import Client

        client = Client(("127.0.0.1", self.port), connect_timeout=1, timeout=1)
        try:
            return int(client.stats()[b"curr_items"])
        finally:
            client.close()
