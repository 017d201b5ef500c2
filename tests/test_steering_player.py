"""Multi-CDN failover with content steering, played by hls.js in Chromium: two edges under
the same regional and shield are two pathways of one master; the primary edge is stopped
mid-playback and the player goes on from the backup edge without a stall longer than one
segment (docs/steering.md)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from player.demo_tiers import VIDEO, DemoTiers, free_ports, synthesise
from test_player import chromium_or_skip, play_in_chromium

pytestmark = pytest.mark.slow  # a 16 s video played in real time by Chromium

DURATION = 16.0  # eight 2 s segments
SEGMENT = 2.0


@pytest.fixture(scope="module")
def origin_root(tmp_path_factory) -> Path:
    return synthesise(tmp_path_factory.mktemp("steering"), duration=DURATION)


async def test_hlsjs_fails_over_to_the_backup_edge_when_the_primary_edge_dies(origin_root):
    chromium_or_skip()
    (port_b,) = free_ports(1)
    backup = f"http://127.0.0.1:{port_b}"
    tiers = await DemoTiers(
        origin_root,
        more_nodes=f"""
[node.edge-b]
role = "edge"
listen = "127.0.0.1:{port_b}"
parents = ["regional-1"]
""",
        steering={
            "server_uri": "steering.json",  # /v/{id}/steering.json on edge-a
            "ttl": 2,
            "health_path": f"/v/{VIDEO}/meta.json",
            "health_interval": "500ms",
            "pathways": {"edge-a": "", "edge-b": backup},
        },
    ).start()
    edge_a = tiers.edge
    steering_stats = edge_a.node.stats.steering_manifests
    killed_at: list[float] = []

    async def kill_mid_playback() -> None:
        # The player asks edge-a for steering as soon as the master is parsed; give it four
        # seconds of playback (two segments), then stop edge-a at once (no grace).
        while not steering_stats:
            await asyncio.sleep(0.05)
        await asyncio.sleep(4.0)
        killed_at.append(time.time() * 1000)
        await tiers.servers.pop("edge-a").stop(grace=0)

    src = f"/v/{VIDEO}/master.m3u8"
    page = (f"{tiers.base()}/player/page.html?src={quote(src, safe='')}"
            f"&buffer={2 * SEGMENT}&until={DURATION - 1.0}")
    os.environ["PLAY_CROSS_ORIGIN"] = "1"  # edge-b is another origin (port) than the page's
    started = time.monotonic()
    killer = asyncio.ensure_future(kill_mid_playback())
    try:
        result = await play_in_chromium(page, timeout_ms=40000)
        await killer
    finally:
        os.environ.pop("PLAY_CROSS_ORIGIN", None)
        killer.cancel()
        await tiers.stop()
    played = time.monotonic() - started

    assert result["manifestParsed"] and result["playing"], result
    assert not [e for e in result["errors"] if "fatal" in e], result["errors"]
    # Steering was in play before the kill: edge-a's manifests ranked edge-a, then edge-b.
    assert result["steering"] and result["steering"][0][1] == ["edge-a", "edge-b"], result
    kill = killed_at[0]
    before = [urlsplit(url) for t, url in result["loaded"] if t < kill]
    after = [urlsplit(url) for t, url in result["loaded"] if t >= kill]
    assert before and all(u.port == edge_a.port for u in before), result["loaded"]
    # After the kill every fragment came from edge-b, and playback went on to the end.
    assert len(after) >= 3 and all(u.port == port_b for u in after), result["loaded"]
    assert result["currentTime"] >= DURATION - 1.0 or result["ended"], result
    stalls = [seconds for _, seconds in result["stalls"]]
    if result.get("waitingSince"):
        stalls.append(time.time() - result["waitingSince"] / 1000)
    assert all(seconds <= SEGMENT for seconds in stalls), (stalls, result["errors"])
    first = min(t for t, _ in result["loaded"] if t >= kill)
    print(f"failover: played {played:.1f}s, first edge-b fragment {first - kill:.0f} ms after "
          f"the kill, stalls {stalls}, fragments before/after the kill {len(before)}/"
          f"{len(after)}, errors {result['errors']}, steering {result['steering']}")
