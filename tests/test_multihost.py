"""Nodes on several hosts, emulated with distinct loopback addresses (Linux routes all of
127.0.0.0/8 to lo, so a node can bind 127.0.0.2 without any setup): each node is a real
``reelcdn node`` process started from the one topology file, listening only on its own
address, so a child that used the wrong address for its parent would fail."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from nodeproc import wait_health

from reelcdn.edge.config import load_topology
from reelcdn.loadtest.scrape import edge_urls_from_topology, endpoints_from_topology
from reelcdn.origin.config import services_from_topology

pytestmark = pytest.mark.slow  # node processes

SEGMENT = bytes(range(256)) * 400


def port_free_everywhere() -> int:
    """A port free on every address (so on each 127.0.0.x too)."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


class Nodes:
    """``reelcdn node --config F --name N`` processes of one topology file."""

    def __init__(self, tmp_path: Path, text: str) -> None:
        self.tmp_path = tmp_path
        self.config = tmp_path / "topology.toml"
        self.config.write_text(text)
        (tmp_path / "origin" / "v" / "clip").mkdir(parents=True)
        (tmp_path / "origin" / "v" / "clip" / "seg_00001.m4s").write_bytes(SEGMENT)
        self.topology = load_topology(self.config)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self) -> None:
        for name in self.topology.order_for_start():
            log = open(self.tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (kept by the child)
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "reelcdn.cli", "node", "--config", str(self.config),
                 "--name", name], stdout=log, stderr=subprocess.STDOUT,
            )
            log.close()
            node = self.topology.nodes[name]
            assert node.admin_host is not None and node.admin_port is not None
            host = node.admin_host if node.admin_host != "0.0.0.0" else "127.0.0.1"
            try:
                await wait_health(node.admin_port, 20.0, host=host)
            except AssertionError:
                raise AssertionError(f"{name} did not start:\n{self.log(name)}") from None

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def fetch(url: str) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as session, session.get(
        url, timeout=aiohttp.ClientTimeout(total=15)
    ) as response:
        return response.status, await response.read(), response.headers.get("Cache-Status", "")


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def tcp_connections(port: int) -> list[tuple[str, str]]:
    """(local, remote) ``host:port`` of every IPv4 TCP connection (not listener) of this
    network namespace with ``port`` at either end, from /proc/net/tcp."""

    def address(field: str) -> tuple[str, int]:
        host, port_hex = field.split(":")
        return socket.inet_ntoa(bytes.fromhex(host)[::-1]), int(port_hex, 16)

    found = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state = address(fields[1]), address(fields[2]), fields[3]
            if state != "0A" and port in (local[1], remote[1]):  # 0A: LISTEN
                found.append((f"{local[0]}:{local[1]}", f"{remote[0]}:{remote[1]}"))
    return found


THREE_HOSTS = """
[[defaults.ttl]]
match = "*.m4s"
ttl = "1h"

[origin.main]
type = "fs"
root = "./origin"

[node.shield-1]
role = "shield"
listen = "127.0.0.2:{port}"
admin = "127.0.0.2:{admin}"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "127.0.0.3:{port}"
admin = "127.0.0.3:{admin}"
parents = ["shield-1"]

[node.edge-a]
listen = "127.0.0.4:{port}"
admin = "127.0.0.4:{admin}"
parents = ["regional-1"]
"""


@pytest.fixture
async def nodes(tmp_path):
    started: list[Nodes] = []

    async def make(text: str) -> Nodes:
        group = Nodes(tmp_path, text)
        started.append(group)
        await group.start()
        return group

    yield make
    for group in started:
        group.stop()


async def test_three_tiers_on_three_addresses_one_port(nodes, tmp_path) -> None:
    """Every node on the same ports, each on its own address: a child reaching its parent at
    any other address than the parent's would reach another tier (or nothing)."""
    port, admin = port_free_everywhere(), port_free_everywhere()
    group = await nodes(THREE_HOSTS.format(port=port, admin=admin))
    assert refused("127.0.0.1", port) and refused("127.0.0.1", admin)

    status, body, cache_status = await fetch(f"http://127.0.0.4:{port}/v/clip/seg_00001.m4s")
    assert status == 200 and body == SEGMENT
    assert [m.split(";")[0] for m in cache_status.split(", ")] == [
        "shield-1", "regional-1", "edge-a"]
    status, body, cache_status = await fetch(f"http://127.0.0.4:{port}/v/clip/seg_00001.m4s")
    assert status == 200 and body == SEGMENT and "edge-a; hit" in cache_status

    # What reads the file to reach nodes uses the same addresses.
    assert edge_urls_from_topology(str(group.config)) == [f"http://127.0.0.4:{port}"]
    assert [e.url for e in endpoints_from_topology(str(group.config))] == [
        f"http://127.0.0.{i}:{admin}" for i in (2, 3, 4)]
    targets = services_from_topology(group.topology).purge_targets
    assert [(name, url) for name, url, _ in targets] == [
        ("shield-1", f"http://127.0.0.2:{admin}"), ("regional-1", f"http://127.0.0.3:{admin}"),
        ("edge-a", f"http://127.0.0.4:{admin}")]
    async with aiohttp.ClientSession() as session:
        for _, url, _ in targets:
            async with session.post(url + "/purge", json={"video": "clip"}) as response:
                assert response.status == 200
    status, _, cache_status = await fetch(f"http://127.0.0.4:{port}/v/clip/seg_00001.m4s")
    assert status == 200 and "hit" not in cache_status  # purged at every tier

    validate = subprocess.run(
        [sys.executable, "-m", "reelcdn.cli", "validate", str(group.config)],
        capture_output=True, text=True, timeout=60,
    )
    assert validate.returncode == 0, validate.stderr
    assert (f"regional-1: regional listen 127.0.0.3:{port} advertise 127.0.0.3:{port} "
            f"admin 127.0.0.3:{admin}") in validate.stdout


MIXED = """
[origin.main]
type = "fs"
root = "./origin"

[node.shield-1]
role = "shield"
listen = "{shield_listen}"
advertise = "{shield_advertise}"
admin = "{shield_admin}"
origins = ["main"]

[node.edge-a]
listen = "127.0.0.4:{port}"
admin = "127.0.0.4:{admin}"
parents = ["shield-1"]

[node.edge-a.upstream_timeouts]
connect = "1s"
"""


async def test_children_use_the_advertise_address_not_the_listen_address(nodes) -> None:
    """The shield listens on every address but advertises 127.0.0.5: the edge's connections
    arrive at the shield on 127.0.0.5 (the kernel's table of the shield's connections says
    which local address each arrived on), and its admin API is advertised there too."""
    port, admin, shield_port, shield_admin = (port_free_everywhere() for _ in range(4))
    group = await nodes(MIXED.format(
        shield_listen=f"0.0.0.0:{shield_port}", shield_advertise=f"127.0.0.5:{shield_port}",
        shield_admin=f"0.0.0.0:{shield_admin}", port=port, admin=admin,
    ))
    shield = group.topology.nodes["shield-1"]
    assert group.topology.nodes["edge-a"].parents[0].url == f"http://127.0.0.5:{shield_port}"
    assert shield.admin_advertised() == ("127.0.0.5", shield.admin_port)

    status, body, _ = await fetch(f"http://127.0.0.4:{port}/v/clip/seg_00001.m4s")
    assert status == 200 and body == SEGMENT
    # The edge keeps its upstream connection alive: the shield's end of it is 127.0.0.5.
    shield_ends = [local for local, _ in tcp_connections(shield_port)
                   if local.endswith(f":{shield_port}")]
    assert shield_ends, tcp_connections(shield_port)
    assert set(shield_ends) == {f"127.0.0.5:{shield_port}"}
    assert [e.url for e in endpoints_from_topology(str(group.config))][0] == (
        f"http://127.0.0.5:{shield.admin_port}")


async def test_a_wrong_advertise_address_fails_though_the_listen_address_works(nodes) -> None:
    """The converse: the shield listens on 127.0.0.5 only and (wrongly) advertises 127.0.0.6.
    The shield serves at its listen address, but the edge, which must use the advertised one,
    cannot reach it: so children do not fall back on listen."""
    port, admin, shield_port, shield_admin = (port_free_everywhere() for _ in range(4))
    await nodes(MIXED.format(
        shield_listen=f"127.0.0.5:{shield_port}", shield_advertise=f"127.0.0.6:{shield_port}",
        shield_admin=f"127.0.0.5:{shield_admin}", port=port, admin=admin,
    ))
    status, body, _ = await fetch(f"http://127.0.0.5:{shield_port}/v/clip/seg_00001.m4s")
    assert status == 200 and body == SEGMENT
    status, _, _ = await fetch(f"http://127.0.0.4:{port}/v/clip/seg_00001.m4s")
    assert status >= 500
