"""A small topology of real processes on 127.0.0.1 for the operator tests (the dashboard's
metric names, ``reelcdn status``): shield-1 over an fs origin, edge-a and edge-b below it, and
the origin API (``reelcdn origin``) with its admin listener, all on ephemeral ports and behind
one admin token; each node is ``python -m reelcdn.cli node --config F --name N``."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from nodeproc import free_port

from reelcdn.edge.config import load_topology

ADMIN_TOKEN = "status-test-token-0123456789"
SEGMENT = bytes(range(256)) * 256  # 64 KiB

TOPOLOGY = """
[defaults]
admin_token = "{token}"
cache_memory = "32MiB"

[[defaults.ttl]]
match = "*.m4s"
ttl = "1h"

[origin.main]
type = "fs"
root = "./origin"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:{shield}"
admin = "127.0.0.1:{shield_admin}"
origins = ["main"]

[node.edge-a]
role = "edge"
listen = "127.0.0.1:{edge_a}"
admin = "127.0.0.1:{edge_a_admin}"
parents = ["shield-1"]

[node.edge-b]
role = "edge"
listen = "127.0.0.1:{edge_b}"
admin = "127.0.0.1:{edge_b_admin}"
parents = ["shield-1"]

[api]
listen = "127.0.0.1:{api}"
admin = "127.0.0.1:{api_admin}"
data_dir = "origin-service"
publish_to = "main"
key_file = "origin-keys"
purge_nodes = false
"""


def get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Topology:
    """The processes of one topology file; ``start()`` waits for every admin ``/health``."""

    def __init__(self, tmp_path: Path, token: str = ADMIN_TOKEN) -> None:
        self.dir = tmp_path
        self.token = token
        ports = {name: free_port() for name in (
            "shield", "shield_admin", "edge_a", "edge_a_admin", "edge_b", "edge_b_admin",
            "api", "api_admin")}
        self.ports = ports
        self.config = tmp_path / "topology.toml"
        self.config.write_text(TOPOLOGY.format(token=token, **ports))
        clip = tmp_path / "origin" / "v" / "clip"
        clip.mkdir(parents=True)
        for i in range(1, 4):
            (clip / f"seg_{i:05d}.m4s").write_bytes(SEGMENT)
        (tmp_path / "origin-keys").write_text("k1 " + "s" * 32 + "\n")
        self.topology = load_topology(self.config)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def admin(self, name: str) -> str:
        if name == "origin-api":
            return f"http://127.0.0.1:{self.ports['api_admin']}"
        node = self.topology.nodes[name]
        return f"http://127.0.0.1:{node.admin_port}"

    def data(self, name: str) -> str:
        return f"http://127.0.0.1:{self.topology.nodes[name].listen_port}"

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def _spawn(self, name: str, command: list[str]) -> None:
        with open(self.dir / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "reelcdn.cli", *command, "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def _wait_health(self, name: str, token: str | None, deadline: float = 30.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            process = self.processes[name]
            if process.poll() is not None:
                raise AssertionError(f"{name} exited ({process.returncode}):\n{self.log(name)}")
            try:
                if get(self.admin(name) + "/health", token, timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{name} did not become healthy:\n{self.log(name)}")

    def start(self) -> None:
        for name in self.topology.order_for_start():
            self._spawn(name, ["node", "--name", name])
            self._wait_health(name, self.token)
        self._spawn("origin-api", ["origin"])
        self._wait_health("origin-api", None)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def traffic(self, rounds: int = 2) -> None:
        """A few requests through both edges: misses, then hits, a 404 (an error series)."""
        for _ in range(rounds):
            for edge in ("edge-a", "edge-b"):
                for i in range(1, 4):
                    status, body = get(f"{self.data(edge)}/v/clip/seg_{i:05d}.m4s")
                    assert status == 200 and body == SEGMENT
                assert get(f"{self.data(edge)}/v/clip/missing.m4s")[0] == 404
