"""The web page the origin API serves at ``/`` (origin/web/, docs/web.md).

Fast tests: the page, its files, their types and caching, no traversal, the public config
endpoint, the ``playback_base`` key, the vendored libraries against their pinned versions.
Slow: the page in headless Chromium (tests/player/web.js, playwright-core) against a real
origin service with a seeded catalog and a real edge tier over demo videos — sign in, the
feed and its second page, a video played to its first frame through the edge, a like, a
follow, an upload with tus-js-client followed until it plays.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import aiohttp
import pytest
from player.demo_tiers import DURATION, VIDEO, DemoTiers, synthesise
from rawhttp import get

from reelcdn.edge.config import ConfigError, topology_from_text
from reelcdn.origin.config import load_services, services_from_topology
from reelcdn.origin.service import OriginConfig, OriginService
from reelcdn.origin.users import Keys, mint
from reelcdn.origin.web.routes import WEB_DIR, load_assets

ROOT = Path(__file__).resolve().parents[1]
PLAYER_DIR = Path(__file__).parent / "player"
KEY = ("k1", b"k" * 32)
KEYS = Keys({KEY[0]: KEY[1]}, KEY[0])
EDGE = "http://127.0.0.1:8080"


@pytest.fixture
async def origin(tmp_path):
    service = OriginService(OriginConfig(data_dir=tmp_path, keys=KEYS, playback_base=EDGE))
    port, _ = await service.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await service.stop()


def static_refs(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/static/[^"]+)"', html)


async def test_the_page_is_html_naming_versioned_files(origin):
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/index.html"):
            async with http.get(f"http://127.0.0.1:{origin}{path}") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "text/html; charset=utf-8"
                assert response.headers["Cache-Control"] == "no-cache"
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                csp = response.headers["Content-Security-Policy"]
                html = await response.text()
        assert "script-src 'self';" in csp and f"media-src 'self' blob: {EDGE};" in csp
        assert f"connect-src 'self' {EDGE};" in csp and "'unsafe-inline'" not in csp
        refs = static_refs(html)
        assert {ref.split("?")[0] for ref in refs} == {
            "/static/app.css", "/static/app.js", "/static/vendor/hls.min.js",
            "/static/vendor/tus.min.js"}
        types = {"css": "text/css", "js": "text/javascript"}
        for ref in refs:
            name, version = ref.removeprefix("/static/").split("?v=")
            source = (WEB_DIR / name).read_bytes()
            assert version == hashlib.sha256(source).hexdigest()[:16]
            async with http.get(f"http://127.0.0.1:{origin}{ref}",
                                headers={"Accept-Encoding": "identity"}) as response:
                assert response.status == 200, ref
                assert response.headers["Content-Type"] == (
                    types[name.rsplit(".", 1)[1]] + "; charset=utf-8")
                assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                assert await response.read() == source
            # Unversioned, or an old version: revalidated, never kept a year.
            for query in ("", "?v=0123456789abcdef"):
                async with http.get(f"http://127.0.0.1:{origin}/static/{name}{query}") as response:
                    assert response.status == 200
                    assert response.headers["Cache-Control"] == "no-cache"


async def test_files_are_gzipped_when_asked_and_revalidated_with_etags(origin):
    source = (WEB_DIR / "vendor" / "hls.min.js").read_bytes()
    url = f"http://127.0.0.1:{origin}/static/vendor/hls.min.js"
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(url, headers={"Accept-Encoding": "gzip, br"}) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Vary"] == "Accept-Encoding"
            zipped_tag = response.headers["ETag"]
            body = await response.read()
        assert gzip.decompress(body) == source and len(body) < len(source) / 2
        async with http.get(url, headers={"Accept-Encoding": "identity"}) as response:
            plain_tag = response.headers["ETag"]
            assert "Content-Encoding" not in response.headers
            assert await response.read() == source
        assert zipped_tag != plain_tag
        for tag, coding in ((plain_tag, "identity"), (zipped_tag, "gzip")):
            async with http.get(url, headers={"If-None-Match": tag,
                                              "Accept-Encoding": coding}) as response:
                assert response.status == 304 and response.headers["ETag"] == tag
                assert await response.read() == b""
        async with http.get(url, headers={"If-None-Match": '"other"',
                                          "Accept-Encoding": "gzip;q=0"}) as response:
            assert response.status == 200 and await response.read() == source


@pytest.mark.parametrize("path", [
    "/static/../routes.py",
    "/static/..%2froutes.py",
    "/static/%2e%2e/web/routes.py",
    "/static/%2e%2e%2f%2e%2e%2fapi.py",
    "/static/vendor/../app.js",
    "/static/vendor/..%2f..%2froutes.py",
    "/static/./app.js",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/routes.py",
    "/static/__init__.py",
    "/static/index.html",
    "/static/vendor",
    "/static/vendor/",
    "/static/app.js%00.css",
    "/static/APP.JS",
    "/../../etc/passwd",
    "/index.html/../routes.py",
])
async def test_nothing_but_the_files_is_served(origin, path):
    """Only the exact names of the page's files: no traversal, no Python source, no listing."""
    response = await get(origin, path)
    assert response.status in (400, 401, 404), (path, response.status)
    assert b"import" not in response.body and b"root:" not in response.body
    assert (response.header("content-type") or "").startswith("application/json")


async def test_the_vendored_licences_are_served_as_text(origin):
    for name in ("hls.js-LICENSE.txt", "tus-js-client-LICENSE.txt"):
        response = await get(origin, f"/static/vendor/{name}")
        assert response.status == 200
        assert response.header("content-type") == "text/plain; charset=utf-8"


async def test_the_config_endpoint_is_public_and_the_api_is_not(origin):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{origin}/api/v1/config") as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "no-store"
            config = await response.json()
        assert config == {"playback_base": EDGE, "api": "/api/v1", "uploads": "/api/v1/uploads",
                          "max_upload_size": 4 << 30}
        async with http.get(f"http://127.0.0.1:{origin}/api/v1/feed") as response:
            assert response.status == 401
        token = mint("ann", KEYS, 600)
        async with http.get(f"http://127.0.0.1:{origin}/api/v1/feed",
                            headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200


def test_playback_base_defaults_to_the_first_edge_and_is_checked(tmp_path):
    embedded = load_services(None, data_dir=str(tmp_path))
    (tmp_path / "origin-keys").write_text("k1 " + "s" * 40 + "\n")
    assert embedded.api.playback_base == "http://127.0.0.1:8080"
    assert embedded.service_config().playback_base == "http://127.0.0.1:8080"
    nodes = """
[origin.main]
type = "fs"
root = "o"

[node.s]
role = "shield"
listen = "127.0.0.1:8100"
origins = ["main"]

[node.e]
role = "edge"
listen = "127.0.0.1:8101"
advertise = "cdn.example.net:80"
parents = ["s"]
"""
    topology = topology_from_text(nodes, base_dir=str(tmp_path))
    assert services_from_topology(topology).api.playback_base == "http://cdn.example.net:80"
    given = topology_from_text(nodes + '\n[api]\nplayback_base = "https://cdn.example.com/"\n',
                               base_dir=str(tmp_path))
    assert services_from_topology(given).api.playback_base == "https://cdn.example.com"
    bad = topology_from_text(nodes + '\n[api]\nplayback_base = "cdn.example.com"\n',
                             base_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"api\.playback_base"):
        services_from_topology(bad)


def test_the_vendored_libraries_are_the_pinned_versions():
    pinned = json.loads((PLAYER_DIR / "package.json").read_text())["dependencies"]
    readme = (WEB_DIR / "vendor" / "README.md").read_text()
    for file, package in (("hls.min.js", "hls.js"), ("tus.min.js", "tus-js-client")):
        digest = hashlib.sha256((WEB_DIR / "vendor" / file).read_bytes()).hexdigest()
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{file}`"))
        assert f"| {pinned[package]} |" in row, (file, row)
        assert f"`{digest}`" in row, f"update the sha256 of {file} in vendor/README.md"
        installed = PLAYER_DIR / "node_modules" / package / "package.json"
        if installed.exists():  # npm ci in tests/player: the same bytes as the package's dist
            dist = {"hls.js": "dist/hls.min.js", "tus-js-client": "dist/tus.min.js"}[package]
            vendored = (WEB_DIR / "vendor" / file).read_bytes()
            assert (installed.parent / dist).read_bytes() == vendored


def test_every_file_of_the_page_is_package_data():
    """setup.py's package_data ships what the page serves (globbed as setuptools does: a
    pattern of the "" key matches in the package's own folder, not below it)."""
    text = (ROOT / "setup.py").read_text()
    table = text[text.index("package_data="):text.index("include_package_data")]
    shared = re.search(r'"": \[([^]]*)\]', table)
    own = re.search(r'"reelcdn.origin.web": \[([^]]*)\]', table)
    assert shared and own
    patterns = re.findall(r'"([^"]+)"', shared.group(1) + own.group(1))
    shipped = {path.relative_to(WEB_DIR).as_posix() for p in patterns for path in WEB_DIR.glob(p)}
    _, static = load_assets()
    assert {*static, "index.html"} <= shipped, "add a package_data pattern in setup.py"


# -- the page in Chromium ---------------------------------------------------------------------

SEEDED = 30   # pages more than a window holds
PAGE = 6      # the page's ?limit=


def seed_videos(root: Path, catalog, count: int) -> list[str]:
    """``count`` ready videos in the catalog, each a copy of demo-1 under its own id in the
    origin folder (the feed lists catalog ids; the edge serves them from the folder)."""
    from feed_fixtures import video_id

    ids = []
    for n in range(count):
        vid = video_id(10_000 + n)
        target = root / "v" / vid
        shutil.copytree(root / "v" / VIDEO, target)
        meta = json.loads((target / "meta.json").read_text())
        meta["video_id"] = vid
        (target / "meta.json").write_text(json.dumps(meta))
        catalog.create(vid, ("alice", "bob")[n % 2], {
            "title": f"clip {n:02d}", "caption": "c", "hashtags": "#demo"})
        catalog.set_status(vid, "ready", duration=DURATION, renditions=["360p", "720p"])
        ids.append(vid)
    return ids


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return synthesise(tmp_path_factory.mktemp("web"))


@pytest.mark.slow
async def test_the_page_in_chromium_feed_scroll_play_like_follow_upload(tmp_path, demo_root):
    from media import make_clip
    from test_player import chromium_or_skip

    from reelcdn.origin.feed.api import FEED
    from reelcdn.origin.pipeline import TranscodeWorker
    from reelcdn.origin.storage import FsStore

    chromium_or_skip()
    root = tmp_path / "origin"
    shutil.copytree(demo_root, root)
    tiers = await DemoTiers(root, meta_ttl="1s").start()
    service = OriginService(OriginConfig(data_dir=tmp_path / "data", keys=KEYS,
                                         playback_base=tiers.base(), trending_interval=3600.0))
    port, _ = await service.start("127.0.0.1", 0)
    worker = TranscodeWorker(service.queue, FsStore(root), service.catalog,
                             workdir=tmp_path / "work")
    clip = make_clip(tmp_path / "upload.mp4", size="640x360", seconds=4.0)
    stop = asyncio.Event()

    async def transcode() -> None:  # a worker polling the queue while the browser runs
        while not stop.is_set():
            if not await asyncio.to_thread(worker.run_one):
                await asyncio.sleep(0.3)

    running = asyncio.ensure_future(transcode())
    try:
        ids = seed_videos(root, service.catalog, SEEDED)
        await asyncio.to_thread(service.app[FEED].recompute)
        process = await asyncio.create_subprocess_exec(
            "node", str(PLAYER_DIR / "web.js"), f"http://127.0.0.1:{port}/?limit={PAGE}",
            mint("viewer", KEYS, 600), str(clip), "40000",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 240)
        assert process.returncode == 0, stderr.decode()[-2000:]
        result = json.loads(stdout)
        steps = result["steps"]
        assert "failure" not in result, (result.get("failure"), steps, result["console"][-20:])
        assert not result["errors"], result["errors"]  # no CSP violation, no script error

        # Signed in; the first page of cards, with posters from the edge.
        assert result["signedInAtStart"] is False and result["username"] == "viewer"
        assert PAGE <= result["cardsBeforeScroll"] < SEEDED, result
        first = result["firstCard"]
        assert first["poster"].startswith(tiers.base() + "/v/")
        assert first["owner"] in ("@alice", "@bob") and first["title"].startswith("clip ")
        assert first["stats"] == "0 views · ♡ 0 likes"
        assert all(width > 0 for width in result["postersLoaded"]), result["postersLoaded"]
        # Scrolling loaded the rest, page by page, with no card twice.
        assert result["pagesAfterScroll"] > result["pagesBeforeScroll"]
        assert result["pagesAfterScroll"] >= -(-SEEDED // PAGE)
        assert sorted(result["cardIds"]) == sorted(ids)
        assert result["feedState"] == "That's all for now."

        # The like: optimistic, then confirmed by the API.
        assert result["likeBefore"] == "♡ 0 likes" and result["likeOptimistic"] == "♥ 1 like"
        assert result["likeStatus"] == 200 and result["likeAfter"] == "♥ 1 like"
        liked = result["cardIds"][0]
        counters = service.app[FEED].store.counters([liked])
        assert counters[liked].likes == 1
        assert result["followStatus"] == 200
        assert set(result["followTexts"]) == {"Following"} and len(result["followTexts"]) >= 2

        # Played through the edge to a frame, with the registered CMCD session id.
        play = result["play"]
        assert play["currentTime"] > 0 and play["frames"] > 0 and play["hls"], play
        assert play["sessionRegistered"], play
        requests = result["requests"]
        assert [204, "POST", f"http://127.0.0.1:{port}/api/v1/sessions/{play['sid']}"] \
            in requests
        edge = [url for status, _, url in requests if url.startswith(tiers.base())]
        segments = [url for url in edge if ".m4s" in url and f"/v/{liked}/" in url]
        assert segments and all("CMCD=" in url and play["sid"] in url for url in segments)
        assert not [r for r in requests if r[0] >= 400], [r for r in requests if r[0] >= 400]

        # The upload: 100 %, processing, playable (first rendition) and played, then ready.
        assert result["uploadProgress"] == {"value": 100, "text": "100 %"}
        video_id = result["uploadId"]
        upload = service.store.get(video_id)
        assert upload.state == "uploaded" and upload.owner == "viewer"
        assert upload.path.read_bytes() == clip.read_bytes()
        row = service.catalog.get(video_id)
        assert row["title"] == "from the web page" and row["hashtags"] == ["web", "test"]
        assert row["status"] == "ready"
        states = result["uploadStates"]
        assert states[0].startswith(("Uploaded", "Processing", "Playable")), states
        assert states[1].startswith(("Playable", "Ready")) and states[2].startswith("Ready")
        assert result["uploadPlayed"] > 0
    finally:
        stop.set()
        await running
        await service.stop()
        await tiers.stop()
