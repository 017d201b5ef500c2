"""`reelcdn up` end to end: the embedded default topology with demo videos, played through
edge-a by real decoders, then stopped with no process left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import m3u8
import pytest
from media import make_clip

pytestmark = pytest.mark.slow  # reelcdn up: ffmpeg demo synthesis and a process per node

DEFAULT_PORTS = (8080, 8081, 8100, 8200, 9080, 9081, 9100, 9200, 8300, 9300)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def children_of(pid: int) -> set[int]:
    """Every descendant of ``pid``, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and ") Z" not in stat.read_text()


def fetch(url: str, timeout: float = 10.0,
          token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback)
        return response.status, dict(response.headers), response.read()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data dir for the module: demo videos are synthesised on the first start only."""
    return tmp_path_factory.mktemp("up") / "data"


@pytest.fixture
def running_up(tmp_path, data_dir):
    busy = [p for p in DEFAULT_PORTS if not port_free(p)]
    if busy:
        pytest.fail(f"the default topology's ports are in use: {busy}")
    log = open(tmp_path / "up.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "reelcdn.cli", "up", "--data-dir", str(data_dir)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            log.seek(0)
            if "reelcdn is up" in log.read():
                break
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"reelcdn up exited early:\n{log.read()[-3000:]}")
            time.sleep(0.2)
        else:
            pytest.fail("reelcdn up did not come up within 180 s")
        yield process, data_dir, log
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()  # the nodes die with it (PR_SET_PDEATHSIG)
                process.wait()
        log.close()


def test_up_plays_demo_video_through_edge_a_and_stops_cleanly(running_up):
    process, data, log = running_up
    catalog = (data / "origin" / "catalog.txt").read_text().split()
    assert len(catalog) >= 3
    video = catalog[0]
    master_url = f"http://127.0.0.1:8080/v/{video}/master.m3u8"
    status, headers, body = fetch(master_url)
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.apple.mpegurl"
    master = m3u8.loads(body.decode(), uri=master_url)
    assert master.is_variant and len(master.playlists) >= 3
    lowest = master.playlists[0]
    assert lowest.stream_info.resolution[1] <= 360

    # PyAV (ffmpeg's demuxers and decoders) plays the master playlist through edge-a.
    decoded = 0.0
    with av.open(master_url, timeout=20) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            decoded = float(frame.pts * stream.time_base) if frame.pts is not None else decoded
            if decoded >= 2.0:
                break
    assert decoded >= 2.0

    # The segment came through all three tiers and is now a HIT at edge-a.
    media = m3u8.loads(fetch(f"http://127.0.0.1:8080/v/{video}/{lowest.uri}")[2].decode())
    segment = f"http://127.0.0.1:8080/v/{video}/{lowest.uri.rsplit('/', 1)[0]}/" \
              f"{media.segments[0].uri}"
    _, seg_headers, _ = fetch(segment)
    assert seg_headers["Cache-Status"].split(",")[-1].strip().startswith("edge-a; hit")
    token = (data / "admin-token").read_text().strip()
    request = urllib.request.Request("http://127.0.0.1:9080/metrics",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        assert b"reelcdn_requests_total" in response.read()
    with pytest.raises(urllib.error.HTTPError) as unauthorised:
        urllib.request.urlopen("http://127.0.0.1:9080/metrics", timeout=5)  # noqa: S310
    assert unauthorised.value.code == 401

    # The demo is seeded: the demo videos are uploads of a few creators, whom the user demo
    # partly follows and whose videos it partly likes, so the feed and the page show them.
    user = (data / "user-token").read_text().strip()
    _, _, body = fetch("http://127.0.0.1:8300/api/v1/feed?feed_type=for_you&limit=50",
                       token=user)
    items = json.loads(body)["items"]
    assert set(catalog) <= {item["id"] for item in items}, (catalog, items)
    assert len({item["owner"] for item in items}) >= 3
    assert any(item["viewer"]["liked"] and item["stats"]["likes"] for item in items), items
    _, _, body = fetch("http://127.0.0.1:8300/api/v1/feed?feed_type=following", token=user)
    following = json.loads(body)["items"]
    assert following and all(item["viewer"]["following"] for item in following), following
    _, _, body = fetch(f"http://127.0.0.1:8300/api/v1/videos/{video}", token=user)
    assert json.loads(body)["status"] == "ready"

    # A creator's upload: reelcdn upload → origin API → worker → playable through edge-a.
    clip = make_clip(data.parent / "upload.mp4", size="640x360", seconds=4.0)
    done = subprocess.run(
        [sys.executable, "-m", "reelcdn.cli", "upload", str(clip), "--title", "up test",
         "--token-file", str(data / "user-token")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    playback = done.stdout.strip().splitlines()[-1].strip()
    assert playback.startswith("http://127.0.0.1:8080/v/") and playback.endswith("master.m3u8")
    with av.open(playback, timeout=20) as container:
        assert any(True for _ in container.decode(video=0))
    # ... and deleted: its objects go and every node of the topology purges its copies.
    video_id = playback.split("/v/", 1)[1].split("/", 1)[0]
    request = urllib.request.Request(f"http://127.0.0.1:8300/api/v1/videos/{video_id}",
                                     method="DELETE",
                                     headers={"Authorization": f"Bearer {user}"})
    with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310 (loopback)
        deleted = json.loads(response.read())
    assert deleted["objects"] == 1
    assert set(deleted["purged"]) == {"shield-1", "regional-1", "edge-a", "edge-b"}
    assert all(isinstance(n, int) for n in deleted["purged"].values()), deleted
    with pytest.raises(urllib.error.HTTPError) as gone:
        fetch(playback)
    assert gone.value.code == 404

    nodes = children_of(process.pid)
    assert len(nodes) >= 6  # four nodes, the origin API, a transcoding worker
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    time.sleep(0.2)
    stray = [pid for pid in nodes if alive(pid)]
    assert not stray, f"processes left behind: {stray}"
    assert all(port_free(p) for p in DEFAULT_PORTS)
    log.seek(0)
    text = log.read()
    assert "[edge-a]" in text and "stopped" in text


def test_nodes_die_with_a_killed_supervisor(running_up):
    process, _, _ = running_up
    nodes = children_of(process.pid)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(pid) for pid in nodes):
        time.sleep(0.2)
    assert not [pid for pid in nodes if alive(pid)]


def test_up_restarts_a_node_that_dies(running_up):
    process, data, log = running_up
    nodes = children_of(process.pid)
    edge = next(pid for pid in nodes
                if "edge-a" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
    os.kill(edge, signal.SIGKILL)
    token = (data / "admin-token").read_text().strip()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if fetch("http://127.0.0.1:9080/health", timeout=1, token=token)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        pytest.fail("edge-a was not restarted")
    log.seek(0)
    assert "node edge-a exited" in log.read()
