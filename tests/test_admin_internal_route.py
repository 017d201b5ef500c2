"""``/internal/stats`` (a worker's JSON snapshot for its master) exists only on a worker's
private admin socket, never on a single-process node's admin address."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from reelcdn.edge.ops.server import NodeServer
from reelcdn.shield.connectors import build_upstream


async def test_a_single_node_answers_404(node, client) -> None:
    url = f"http://127.0.0.1:{node.admin_port}"
    async with client.get(url + "/internal/stats") as response:
        assert response.status == 404
    async with client.get(url + "/cache/stats") as response:
        assert response.status == 200  # the admin app itself is there


async def test_a_worker_serves_its_snapshot(origin, tmp_path: Path) -> None:
    from conftest import make_config

    sock = str(tmp_path / "w0.sock")
    server = NodeServer(make_config(origin.url), build_upstream, admin_socket=sock, worker_index=0)
    await server.start()
    try:
        connector = aiohttp.UnixConnector(path=sock)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://worker/internal/stats") as response,
        ):
            assert response.status == 200
            assert isinstance(await response.json(), dict)
    finally:
        await server.stop(grace=1.0)
