"""The ``reelcdn`` command: a node as its own process, reload on SIGHUP, clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import aiohttp
import pytest
from nodeproc import free_port, wait_health
from rawhttp import get

pytestmark = pytest.mark.slow  # reelcdn commands and node processes, each a new Python process

NODE_TOML = """
[node.edge-a]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
upstream = "{upstream}"
cache_memory = "{memory}"
"""


def reelcdn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reelcdn.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_help_lists_commands():
    result = reelcdn("--help")
    assert result.returncode == 0
    assert "node" in result.stdout and "validate" in result.stdout


def test_validate_reports_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[node.e]\nlisten = "127.0.0.1:1"\nupstream = "http://127.0.0.1:2"\n'
                   'cache_memory = "256XB"\n')
    result = reelcdn("validate", str(bad))
    assert result.returncode == 2
    assert "node.e.cache_memory" in result.stderr and "256XB" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text('[node.e]\nlisten = "127.0.0.1:1"\nupstream = "http://127.0.0.1:2"\n')
    assert reelcdn("validate", str(good)).returncode == 0


@pytest.fixture
async def node_process(origin, tmp_path):
    port, admin = free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(NODE_TOML.format(port=port, admin=admin, upstream=origin.url,
                                       memory="64MiB"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reelcdn.cli", "node", "--config", str(config), "--name",
        "edge-a", stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_health(admin)
        yield process, port, admin, config
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_node_process_serves_reloads_and_stops_cleanly(origin, node_process):
    process, port, admin, config = node_process
    origin.set("/obj", b"x" * 1000, headers={"Cache-Control": "max-age=60"})
    await get(port, "/obj")
    assert "hit" in (await get(port, "/obj")).header("cache-status")

    # A bad file on reload is reported and the running config kept (cache intact).
    good = config.read_text()
    config.write_text(good.replace('cache_memory = "64MiB"', 'cache_memory = "64XB"'))
    process.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert "hit" in (await get(port, "/obj")).header("cache-status")

    # A good reload applies without dropping the cache or open connections.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    config.write_text(good.replace('cache_memory = "64MiB"', 'cache_memory = "32MiB"'))
    process.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{admin}/cache/stats") as response:
        stats = await response.json()
    assert stats["capacity"] == 32 * 1024 * 1024 and stats["objects"] == 1
    writer.write(b"GET /obj HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()

    # SIGTERM with a response in flight: it completes, then the process exits 0.
    origin.set("/slow", b"y" * 5000, headers={"Cache-Control": "max-age=60"}, delay=0.5)
    in_flight = asyncio.create_task(get(port, "/slow"))
    await asyncio.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    response = await in_flight
    assert response.status == 200 and response.body == b"y" * 5000
    assert await asyncio.wait_for(process.wait(), 15) == 0
    stderr = (await process.stderr.read()).decode()
    assert "reload failed" in stderr and "64XB" in stderr


def test_config_error_exit_code(tmp_path):
    missing = reelcdn("node", "--config", str(tmp_path / "nope.toml"), "--name", "x")
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
    assert os.path.exists(tmp_path)
