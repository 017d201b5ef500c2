"""Helpers for tests that start ``reelcdn`` processes: a free loopback port for a node to
listen on, and waiting until a node's admin ``/health`` answers 200.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from reelcdn.loadtest.bench.procs import free_port as free_port  # shared by the tests


async def wait_health(admin: int, deadline: float = 15.0, host: str = "127.0.0.1") -> None:
    end = time.monotonic() + deadline
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            try:
                async with session.get(f"http://{host}:{admin}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("node did not become healthy")
