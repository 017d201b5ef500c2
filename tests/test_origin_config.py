"""The origin services' sections of the topology file: ``[api]``, ``[queue]``, ``[catalog]``,
``[transcode]`` — validated with errors that name the key, and run for real: ``reelcdn origin
--config`` and ``reelcdn worker --config`` sharing an SQS queue (moto server)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from media import make_clip
from nodeproc import free_port
from s3server import s3_endpoint  # noqa: F401  (a fixture)

from reelcdn.cli import main
from reelcdn.edge.config import ConfigError, topology_from_text
from reelcdn.origin.config import (
    SECTIONS,
    load_services,
    open_queue,
    reference_markdown,
    services_from_topology,
)
from reelcdn.origin.users import mint, parse_keys

ROOT = Path(__file__).resolve().parent.parent
NODES = """
[origin.media]
type = "fs"
root = "media"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:18100"
admin = "127.0.0.1:19100"
origins = ["media"]
"""


def services(text: str, tmp_path: Path) -> Any:
    return services_from_topology(topology_from_text(NODES + text, base_dir=str(tmp_path)))


def error(text: str, tmp_path: Path, nodes: str = NODES) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        services_from_topology(topology_from_text(nodes + text, base_dir=str(tmp_path)))
    return caught.value


def test_defaults_resolve_against_the_files_directory(tmp_path: Path) -> None:
    got = services("", tmp_path)
    assert got.api.listen == ("127.0.0.1", 8300) and got.api.admin is None
    assert got.data_dir == tmp_path / "origin-service"
    assert got.api.key_file == tmp_path / "origin-keys"
    assert got.publish is not None and got.publish.name == "media"
    assert got.queue.type == "sqlite" and got.queue.path == got.data_dir / "queue.sqlite"
    assert got.catalog.type == "sqlite" and got.catalog.path == got.data_dir / "videos.sqlite"
    assert [r.name for r in got.transcode.ladder.rungs] == ["360p", "720p", "1080p"]
    assert got.purge_targets == (("shield-1", "http://127.0.0.1:19100", None),)


def test_every_key_is_read(tmp_path: Path) -> None:
    got = services("""
[api]
listen = "127.0.0.1:8400"
admin = "127.0.0.1:9400"
data_dir = "/srv/api"
publish_to = "media"
key_file = "keys.txt"
max_size = "1GiB"
upload_ttl = "2h"
uploads_per_window = 5
rate_window = "10m"
cors_origins = ["https://app.example"]
purge_nodes = false
direct_bucket = "uploads"
direct_prefix = "src/"
direct_endpoint_url = "http://127.0.0.1:5000/"
direct_region = "eu-west-1"
direct_part_size = "16MiB"

[queue]
type = "sqs"
name = "jobs"
endpoint_url = "http://127.0.0.1:5000"
region = "eu-west-1"
create = true
max_attempts = 4
wait = 2

[catalog]
type = "dynamodb"
table = "videos"
endpoint_url = "http://127.0.0.1:5000"
region = "eu-west-1"
create = true

[transcode]
lease = "30s"
workdir = "scratch"
max_duration = "60s"
max_source_size = "50MB"
segment_seconds = 4
preset = "ultrafast"
max_frame_rate = 30

[[transcode.rungs]]
name = "240p"
height = 240
video_bitrate = 300000

[[transcode.rungs]]
height = 480
video_bitrate = 1000000
audio_bitrate = 96000
profile = "main"
""", tmp_path)
    api = got.api
    assert (api.listen, api.admin) == (("127.0.0.1", 8400), ("127.0.0.1", 9400))
    assert got.data_dir == Path("/srv/api") and api.key_file == tmp_path / "keys.txt"
    assert (api.max_size, api.upload_ttl, api.uploads_per_window, api.rate_window) == (
        1 << 30, 7200.0, 5, 600.0)
    assert api.cors_origins == ("https://app.example",) and got.purge_targets == ()
    assert (api.direct_bucket, api.direct_prefix, api.direct_endpoint_url, api.direct_region,
            api.direct_part_size) == ("uploads", "src/", "http://127.0.0.1:5000", "eu-west-1",
                                      16 << 20)
    q = got.queue
    assert (q.type, q.name, q.create, q.max_attempts, q.wait) == ("sqs", "jobs", True, 4, 2)
    c = got.catalog
    assert (c.type, c.table, c.region, c.create) == ("dynamodb", "videos", "eu-west-1", True)
    t = got.transcode
    assert (t.lease, t.workdir, t.max_duration, t.max_source_size) == (
        30.0, tmp_path / "scratch", 60.0, 50_000_000)
    ladder = t.ladder
    assert (ladder.segment_seconds, ladder.preset, ladder.max_frame_rate) == (4, "ultrafast", 30)
    assert [(r.name, r.height, r.video_bitrate) for r in ladder.rungs] == [
        ("240p", 240, 300_000), ("480p", 480, 1_000_000)]
    config = services("[api]\nkey_file = \"k\"\n", tmp_path)
    (tmp_path / "k").write_text("k1 " + "s" * 32 + "\n")
    assert config.service_config().origin_root == tmp_path / "media"


@pytest.mark.parametrize(("text", "key", "words"), [
    ("[api]\nlisten = 8300\n", "api.listen", "HOST:PORT"),
    ("[api]\nlistne = \"127.0.0.1:1\"\n", "api.listne", 'did you mean "listen"'),
    ("[api]\nmax_size = \"lots\"\n", "api.max_size", "size"),
    ("[api]\nuploads_per_window = 0\n", "api.uploads_per_window", ""),
    ("[api]\nupload_ttl = \"0s\"\n", "api.upload_ttl", "longer than 0"),
    ("[api]\ndirect_part_size = \"1MiB\"\n", "api.direct_part_size", "5 MiB"),
    ("[api]\ndirect_endpoint_url = \"ftp://x\"\n", "api.direct_endpoint_url", "http"),
    ("[api]\npublish_to = \"nowhere\"\n", "api.publish_to", "media"),
    ("[queue]\ntype = \"kafka\"\n", "queue.type", "sqlite, sqs"),
    ("[queue]\ntype = \"sqs\"\n", "queue.name", "required"),
    ("[queue]\nmax_attempts = 0\n", "queue.max_attempts", ""),
    ("[catalog]\ntype = \"dynamodb\"\n", "catalog.table", "required"),
    ("[transcode]\nrungs = []\n", "transcode.rungs", "array of tables"),
    ("[[transcode.rungs]]\nheight = 360\n", "transcode.rungs[0]", "video_bitrate"),
    ("[[transcode.rungs]]\nheight = 360\nvideo_bitrate = 1\nbitrate = 2\n",
     "transcode.rungs[0].bitrate", "unknown key"),
    ("[[transcode.rungs]]\nheight = 7\nvideo_bitrate = 500000\n", "transcode.rungs", ""),
    ("[transcode]\nmax_frame_rate = \"fast\"\n", "transcode.max_frame_rate", "number"),
    ("api = 3\n", "api", "table"),
])
def test_a_mistake_names_its_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    # Top-level keys must come before the tables of NODES.
    nodes_after = text.startswith("api =")
    with pytest.raises(ConfigError) as caught:
        body = text + NODES if nodes_after else NODES + text
        services_from_topology(topology_from_text(body, base_dir=str(tmp_path)))
    assert caught.value.key == key, caught.value
    assert words in str(caught.value)


def test_publish_to_must_be_a_store_the_workers_can_write(tmp_path: Path) -> None:
    http_only = """
[origin.web]
type = "http"
url = "http://127.0.0.1:9000"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:18100"
origins = ["web"]
"""
    assert "type http" in str(error("[api]\npublish_to = \"web\"\n", tmp_path, http_only))
    assert error("[api]\n", tmp_path, http_only).key == "api.publish_to"
    # A file of nodes alone has no services: loading it is no error, running them is.
    alone = services_from_topology(topology_from_text(http_only, base_dir=str(tmp_path)))
    assert alone.publish is None
    with pytest.raises(ConfigError, match="no fs or s3 origin"):
        alone.publish_origin()
    two = NODES + '\n[origin.other]\ntype = "fs"\nroot = "x"\n'
    assert "several" in str(error("[api]\n", tmp_path, two))


def test_the_key_file_is_checked_with_its_key_named(tmp_path: Path) -> None:
    got = services("", tmp_path)
    with pytest.raises(ConfigError) as caught:
        got.keys()
    assert caught.value.key == "api.key_file" and "reelcdn up" in str(caught.value)
    got.api.key_file.write_text("k1 short\n")
    with pytest.raises(ConfigError, match="32 bytes"):
        got.keys()


def test_the_reference_in_the_docs_is_current() -> None:
    text = (ROOT / "docs" / "origin.md").read_text()
    assert reference_markdown() in text, "regenerate: python -m reelcdn.origin.config"
    for section, rows in SECTIONS.items():
        for name in rows:
            assert f"`{name}`" in text, f"[{section}] {name} undocumented"


def test_the_embedded_default_runs_the_services(tmp_path: Path) -> None:
    got = load_services(None, data_dir=str(tmp_path))
    assert got.api.listen == ("127.0.0.1", 8300) and got.api.admin == ("127.0.0.1", 9300)
    assert got.publish is not None and got.publish.root == str(tmp_path / "origin")
    assert got.api.key_file == tmp_path / "origin-keys"


def test_validate_and_user_token_read_the_services(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "topology.toml"
    config.write_text(NODES + "[api]\nkey_file = \"keys\"\n")
    assert main(["validate", str(config)]) == 0
    assert "publishing to media" in capsys.readouterr().out
    assert main(["user-token", "ann", "--config", str(config)]) == 2
    assert "api.key_file" in capsys.readouterr().err
    (tmp_path / "keys").write_text("k1 " + "s" * 32 + "\n")
    assert main(["user-token", "ann", "--config", str(config)]) == 0
    token = capsys.readouterr().out.strip()
    from reelcdn.origin.users import verify

    assert verify(token, parse_keys("k1 " + "s" * 32)) == "ann"
    config.write_text(NODES + "[queue]\ntype = \"sqs\"\n")
    assert main(["validate", str(config)]) == 2
    assert "queue.name" in capsys.readouterr().err
    assert main(["origin", "--config", str(config)]) == 2
    assert main(["worker", "--config", str(config)]) == 2


# -- for real: the API and a worker on an SQS queue --------------------------------------------


def _wait(url: str, token: str, wanted: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            state = json.load(response)
        if state["status"] in wanted:
            return state
        time.sleep(0.2)
    return state


@pytest.mark.slow
def test_origin_and_worker_share_an_sqs_queue(tmp_path: Path, s3_endpoint: str) -> None:  # noqa: F811
    api_port = free_port()
    config = tmp_path / "topology.toml"
    config.write_text(NODES + f"""
[api]
listen = "127.0.0.1:{api_port}"
key_file = "keys"
purge_nodes = false

[queue]
type = "sqs"
name = "jobs-{api_port}"
endpoint_url = "{s3_endpoint}"
create = true
wait = 1

[transcode]
lease = "20s"
preset = "ultrafast"

[[transcode.rungs]]
height = 180
video_bitrate = 250000
""")
    secret = "s" * 32
    (tmp_path / "keys").write_text(f"k1 {secret}\n")
    token = mint("ann", ("k1", secret.encode()), 600)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in ("origin", "worker"):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "reelcdn.cli", "--log-level", "INFO", command,
                 "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        base = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/v1/uploads", timeout=1)
            except urllib.error.HTTPError:
                break  # listening (401 without a token)
            except OSError:
                assert time.monotonic() < deadline and processes[0].poll() is None
                time.sleep(0.1)
        from tusclient import client

        clip = make_clip(tmp_path / "clip.mp4", size="640x360", seconds=3.0)
        uploader = client.TusClient(f"{base}/api/v1/uploads",
                                    headers={"Authorization": f"Bearer {token}"}).uploader(
            str(clip), chunk_size=1 << 20, metadata={"filename": "clip.mp4"})
        uploader.upload()
        video_id = uploader.url.rsplit("/", 1)[1]
        state = _wait(f"{base}/api/v1/videos/{video_id}", token, {"ready", "failed"}, 90)
        assert state["status"] == "ready", state
        assert state["renditions"] == ["180p"]  # the file's ladder, not the default one
        meta = json.loads((tmp_path / "media" / "v" / video_id / "meta.json").read_text())
        assert meta["state"] == "ready"
        # The job went through SQS: the queue the file names holds it, done.
        sqs = open_queue(services_from_topology(topology_from_text(
            config.read_text(), base_dir=str(tmp_path))).queue)
        assert sqs.depth() == 0
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        logs = []
        for proc in processes:
            output = proc.stderr.read().decode() if proc.stderr else ""
            assert "Traceback" not in output, output
            logs.append([json.loads(line) for line in output.splitlines() if line.strip()])
    # Structured logs: every line of both processes is a JSON object.
    api_log, worker_log = logs
    assert any(r.get("event") == "upload_complete" and r["video"] == video_id for r in api_log)
    assert any(r["message"] == "request" and r.get("video") == video_id for r in api_log)
    done = [r for r in worker_log if r.get("event") == "job_done"]
    assert done and done[0]["video"] == video_id and "180p" in done[0]["published"]


@pytest.mark.slow
async def test_delete_removes_a_video_from_an_s3_publish_store(
        tmp_path: Path, s3_endpoint: str) -> None:  # noqa: F811
    """With ``publish_to`` an s3 origin, the API opens the same bucket and prefix the workers
    publish into and the shield reads, and DELETE removes the video's objects there."""
    import aiohttp
    import boto3

    from reelcdn.origin.config import open_catalog, open_store
    from reelcdn.origin.service import OriginService
    from reelcdn.origin.uploads import new_video_id

    vid1, vid2 = new_video_id(), new_video_id()

    bucket = f"media-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    (tmp_path / "keys").write_text("k1 " + "s" * 32 + "\n")
    got = services_from_topology(topology_from_text(f"""
[origin.media]
type = "s3"
bucket = "{bucket}"
prefix = "cdn/"
endpoint_url = "{s3_endpoint}"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:18100"
origins = ["media"]

[api]
key_file = "keys"
purge_nodes = false
""", base_dir=str(tmp_path)))
    store = open_store(got.publish_origin())
    for key in (f"v/{vid1}/meta.json", f"v/{vid1}/360p/index.m3u8", f"v/{vid2}/meta.json"):
        store.put_bytes(key, b"x")
    catalog = open_catalog(got.catalog)
    catalog.create(vid1, "ann", {}, status="processing")
    catalog.set_status(vid1, "ready", duration=3.0, renditions=["360p"])
    service = OriginService(got.service_config(), catalog=catalog, published=store)
    port, _ = await service.start("127.0.0.1", 0)
    try:
        # The video came through another API host sharing the catalog: this one has no
        # upload record of it, and answers from the catalog row.
        url = f"http://127.0.0.1:{port}/api/v1/videos/{vid1}"
        ann = {"Authorization": f"Bearer {mint('ann', ('k1', b's' * 32), 600)}"}
        bob = {"Authorization": f"Bearer {mint('bob', ('k1', b's' * 32), 600)}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=bob) as response:
                assert response.status == 200  # ready: anyone may read it
                assert (await response.json())["playback"] == f"/v/{vid1}/master.m3u8"
            async with session.delete(url, headers=bob) as response:
                assert response.status == 403
            async with session.delete(url, headers=ann) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["objects"] == 2
            async with session.get(url, headers=ann) as response:
                assert response.status == 410
    finally:
        await service.stop()
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed.get("Contents", [])] == [f"cdn/v/{vid2}/meta.json"]


def test_the_cache_section_and_the_prewarm_keys(tmp_path: Path) -> None:
    got = services("""
[api]
prewarm_top = 5
prewarm_rungs = 1
prewarm_segments = 3
prewarm_timeout = "10s"

[cache]
servers = ["127.0.0.1:11211", "10.0.0.2:11211"]
prefix = "cdn:"
timeout = "100ms"
connect_timeout = "200ms"
retry_attempts = 1
dead_timeout = "30s"
page_ttl = "20s"
counters_ttl = "2s"
lock_wait = "250ms"
""", tmp_path)
    cache = got.cache
    assert cache.servers == (("127.0.0.1", 11211), ("10.0.0.2", 11211))
    assert (cache.prefix, cache.timeout, cache.connect_timeout, cache.retry_attempts,
            cache.dead_timeout, cache.page_ttl, cache.counters_ttl, cache.lock_wait) == (
        "cdn:", 0.1, 0.2, 1, 30.0, 20.0, 2.0, 0.25)
    assert (got.api.prewarm_top, got.api.prewarm_rungs, got.api.prewarm_segments,
            got.api.prewarm_timeout) == (5, 1, 3, 10.0)
    assert [(a.name, a.role, a.renders) for a in got.admin_nodes] == [
        ("shield-1", "shield", False)]
    assert services("", tmp_path).cache.servers == ()  # no [cache]: no memcached
    for text, key, words in (
            ('servers = ["localhost"]', "cache.servers[0]", "missing port"),
            ('servers = "127.0.0.1:11211"', "cache.servers", "array"),
            ('prefix = "a b"', "cache.prefix", "no space"),
            ('timeout = "1m"', "cache.timeout", "at most 10"),
            ("retry_attempts = 11", "cache.retry_attempts", "10"),
            ('page_ttl = 0', "cache.page_ttl", "longer than 0"),
            ("sever = 1", "cache.sever", "unknown key")):
        caught = error(f"[cache]\n{text}\n", tmp_path)
        assert caught.key == key and words in str(caught), (text, str(caught))
    caught = error("[api]\nprewarm_top = -1\n", tmp_path)
    assert caught.key == "api.prewarm_top"
