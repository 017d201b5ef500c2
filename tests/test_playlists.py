"""Playlists rendered at the edge from meta.json, through a real 3-tier topology over ffmpeg
demo videos: options, carried tokens, caching of templates, headers, conditionals, HEAD,
errors, and the fallback to the origin's static playlist when meta.json is missing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from pathlib import Path
from urllib.parse import urljoin

import m3u8
import pytest
from player.demo_tiers import VIDEO, DemoTiers, synthesise
from rawhttp import get, read_response

from reelcdn.edge.config import SteeringConfig
from reelcdn.manifests import options_from_query, render_master, render_media
from reelcdn.manifests.meta import VideoMeta

pytestmark = pytest.mark.slow  # ffmpeg demo videos served through a real 3-tier topology


@pytest.fixture(scope="module")
def origin_root(tmp_path_factory) -> Path:
    return synthesise(tmp_path_factory.mktemp("playlists"))


@pytest.fixture(scope="module")
def meta(origin_root) -> VideoMeta:
    return VideoMeta.read(origin_root / "v" / VIDEO / "meta.json")


@pytest.fixture
async def tiers(origin_root):
    tiers = await DemoTiers(origin_root, carried_query_params=["token", "exp"]).start()
    yield tiers
    await tiers.stop()


def edge_member(response) -> str:
    return (response.header("cache-status") or "").split(",")[-1].strip()


def variants(body: bytes) -> list[str]:
    return [p.uri for p in m3u8.loads(body.decode()).playlists]


async def test_master_is_rendered_from_meta_json_at_the_edge_only(tiers, meta):
    response = await get(tiers.port, f"/v/{VIDEO}/master.m3u8")
    assert response.status == 200
    assert response.body.decode() == render_master(meta)
    assert response.header("content-type") == "application/vnd.apple.mpegurl"
    assert response.header("cache-control") == "public, max-age=3600"  # ready: long
    assert response.header("etag").startswith(f'"{meta.version}-')
    assert edge_member(response).startswith("edge-a; fwd=uri-miss; fwd-status=200")
    assert "detail=rendered" in edge_member(response)
    # The parents' members come from the meta.json fetch: the whole path is visible.
    assert response.header("cache-status").split(",")[0].startswith("shield-1")
    assert response.header("cmsd-static") == 'ot=m,sf=h,st=v,n="edge-a"'
    # Parents hold meta.json, never a playlist: nobody upstream renders per request.
    for name in ("regional-1", "shield-1"):
        keys = {entry.primary for entry in tiers.servers[name].node.store}
        assert f"/v/{VIDEO}/meta.json" in keys
        assert not any(key.endswith(".m3u8") for key in keys), (name, keys)

    again = await get(tiers.port, f"/v/{VIDEO}/master.m3u8")
    assert edge_member(again) == "edge-a; hit; detail=rendered"
    assert again.body == response.body
    assert again.header("etag") == response.header("etag")


async def test_conditional_and_head(tiers):
    first = await get(tiers.port, f"/v/{VIDEO}/master.m3u8")
    etag = first.header("etag")
    not_modified = await get(tiers.port, f"/v/{VIDEO}/master.m3u8",
                             headers={"If-None-Match": etag})
    assert not_modified.status == 304
    assert not_modified.body == b""
    assert not_modified.header("etag") == etag
    changed = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?start=highest",
                        headers={"If-None-Match": etag})
    assert changed.status == 200  # other options, other bytes, other tag
    assert changed.header("etag") != etag
    head = await get(tiers.port, f"/v/{VIDEO}/master.m3u8", method="HEAD")
    assert head.status == 200
    assert head.header("content-length") == str(len(first.body))
    assert head.body == b""


async def test_filters_and_start_order(tiers, meta):
    low, high = meta.renditions  # 360p avc1 Main, 720p avc1 High
    cases = {
        "": ["360p/index.m3u8", "720p/index.m3u8"],
        "max_height=360": ["360p/index.m3u8"],
        f"max_bandwidth={render_bandwidth(meta, 'max_height=360')}": ["360p/index.m3u8"],
        f"codecs={high.video_codec},mp4a": ["720p/index.m3u8"],
        "codecs=avc1,mp4a": ["360p/index.m3u8", "720p/index.m3u8"],
        "start=highest": ["720p/index.m3u8", "360p/index.m3u8"],
        "start=lowest&max_height=720": ["360p/index.m3u8", "720p/index.m3u8"],
    }
    assert low.height == 360
    for query, expected in cases.items():
        response = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?{query}")
        assert response.status == 200, (query, response.body)
        assert variants(response.body) == expected, query
        assert response.body.decode() == render_master(meta, options_from_query(query))


def render_bandwidth(meta: VideoMeta, query: str) -> int:
    """The BANDWIDTH the master gives the only variant a query keeps."""
    text = render_master(meta, options_from_query(query))
    return m3u8.loads(text).playlists[0].stream_info.bandwidth


async def test_bad_options_are_400_naming_the_parameter_and_no_variants_404(tiers):
    for query, parameter in (("max_height=abc", "max_height"), ("start=middle", "start"),
                             ("max_height=1&max_height=2", "max_height"), ("codecs=", "codecs")):
        response = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?{query}")
        assert response.status == 400, query
        assert response.body.decode().startswith(f"400 {parameter}:"), response.body
        assert response.header("cache-control") == "no-store"
    none = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?max_height=100")
    assert none.status == 404
    assert b"max_height" in none.body
    unknown = await get(tiers.port, f"/v/{VIDEO}/4k/index.m3u8")
    assert unknown.status == 404


async def test_filters_leaving_nothing_playable_are_a_404_that_says_which_filters(tiers):
    """A player that asks for what no variant offers gets a clear, uncached refusal, not an
    empty master (which players report as a parse error) and not the unfiltered one."""
    for query, reason in (
        ("max_height=100", "max_height=100"),
        ("max_bandwidth=1000", "max_bandwidth=1000"),
        ("codecs=hvc1,mp4a", "codecs=hvc1,mp4a"),
        ("codecs=avc1", "codecs=avc1"),  # every variant also has mp4a audio
        ("max_height=720&max_bandwidth=1000&codecs=AVC1,mp4a&token=t",
         "max_height=720&max_bandwidth=1000&codecs=avc1,mp4a"),
    ):
        for method in ("GET", "HEAD"):
            response = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?{query}", method=method)
            assert response.status == 404, (query, method)
            assert response.header("cache-control") == "no-store"
            assert response.header("content-type") == "text/plain; charset=utf-8"
            assert edge_member(response).endswith("detail=no-variants"), response.headers
            if method == "GET":
                assert response.body.decode() == (
                    f"404 {VIDEO}: no variant matches {reason}\n"), query
    # The variants are still there for a request that fits them; media playlists are unfiltered.
    assert (await get(tiers.port, f"/v/{VIDEO}/master.m3u8?max_height=360")).status == 200
    media = await get(tiers.port, f"/v/{VIDEO}/720p/index.m3u8?max_height=100")
    assert media.status == 200


async def test_tokens_are_carried_to_every_uri_and_never_cached(tiers, meta):
    renderer = tiers.edge.node.features.playlists
    a = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?token=aaa&exp=17&CMCD=sid%3D%22s%22")
    b = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?exp=18&token=bbb")
    assert variants(a.body) == ["360p/index.m3u8?token=aaa&exp=17",
                                "720p/index.m3u8?token=aaa&exp=17"]
    assert variants(b.body) == ["360p/index.m3u8?exp=18&token=bbb",
                                "720p/index.m3u8?exp=18&token=bbb"]
    assert edge_member(b) == "edge-a; hit; detail=rendered"  # one template for both tokens
    assert a.header("etag") != b.header("etag")
    assert len(renderer.templates) == 1
    assert not any("aaa" in repr(t) or "bbb" in repr(t) for t in renderer.templates.values())

    media = await get(tiers.port, f"/v/{VIDEO}/360p/index.m3u8?token=aaa&exp=17")
    playlist = m3u8.loads(media.body.decode())
    assert playlist.segment_map[0].uri == "init.mp4?token=aaa&exp=17"
    assert [s.uri for s in playlist.segments] == [
        f"seg_{i:05d}.m4s?token=aaa&exp=17" for i in range(3)]
    # Segments asked for with different tokens share one cached copy.
    await get(tiers.port, f"/v/{VIDEO}/360p/seg_00002.m4s?token=aaa&exp=17")
    shared = await get(tiers.port, f"/v/{VIDEO}/360p/seg_00002.m4s?token=zzz&exp=99")
    assert edge_member(shared).startswith("edge-a; hit")


async def test_media_playlist_is_rendered_and_prefetches_init_and_first_segments(tiers, meta):
    response = await get(tiers.port, f"/v/{VIDEO}/720p/index.m3u8")
    assert response.status == 200
    assert response.body.decode() == render_media(meta, "720p")
    prefetcher = tiers.edge.node.features.prefetcher
    async with asyncio.timeout(10):
        while prefetcher.pending:
            await asyncio.sleep(0.02)
    keys = {entry.primary for entry in tiers.edge.node.store}
    base = f"/v/{VIDEO}/720p/"
    assert {base + "init.mp4", base + "seg_00000.m4s", base + "seg_00001.m4s"} <= keys
    assert base + "seg_00002.m4s" not in keys  # K = 2 (the default)
    stats = tiers.edge.node.stats
    assert stats.prefetch_issued == 3
    for uri in ("init.mp4", "seg_00000.m4s"):
        hit = await get(tiers.port, base + uri)
        assert edge_member(hit).startswith("edge-a; hit"), uri
    assert stats.prefetch_used == 2


async def test_missing_meta_json_falls_back_to_the_static_playlist(tiers, origin_root):
    static = b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow/index.m3u8\n"
    folder = origin_root / "v" / "legacy-1"
    folder.mkdir(exist_ok=True)
    (folder / "master.m3u8").write_bytes(static)
    for _ in range(2):
        response = await get(tiers.port, "/v/legacy-1/master.m3u8?max_height=10")
        assert response.status == 200
        assert response.body == static  # as stored: options apply to rendered playlists only
        assert "detail=rendered" not in response.header("cache-status")
    missing = await get(tiers.port, "/v/nothing-here/master.m3u8")
    assert missing.status == 404


async def test_processing_video_gets_an_event_playlist_with_a_short_ttl(tiers, origin_root, meta):
    processing = meta.replace(video_id="proc-1", state="processing")
    folder = origin_root / "v" / "proc-1"
    folder.mkdir(exist_ok=True)
    (folder / "meta.json").write_text(processing.to_json())
    media = await get(tiers.port, "/v/proc-1/360p/index.m3u8")
    assert media.status == 200
    assert media.header("cache-control") == "public, max-age=1"
    assert media.header("cmsd-static") == 'ot=m,sf=h,st=l,n="edge-a"'
    text = media.body.decode()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "#EXT-X-ENDLIST" not in text
    assert json.loads((folder / "meta.json").read_text())["state"] == "processing"


def test_config_keys_are_validated_with_errors_naming_the_key():
    from reelcdn.edge.config import ConfigError, node_config_from_dict

    base = {"listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:1"}
    node = node_config_from_dict("e", {**base, "carried_query_params": ["Token", "exp"]})
    assert node.carried_query_params == ("token", "exp")
    assert {"token", "exp"} <= node.ignore_query_params  # tokens never split the cache
    assert (node.prefetch_segments, node.prefetch_cmcd, node.render_playlists) == (2, True, None)
    for key, value, message in (
        ("carried_query_params", ["start"], "cannot be carried"),
        ("carried_query_params", ["a b"], "bad parameter"),
        ("prefetch_segments", -1, "must be 0..100"),
        ("prefetch_queue", 0, "at least 1"),
        ("prefetch_concurrency", "4", "expected an integer"),
        ("render_playlists", "yes", "expected"),
        ("playlist_cache_entries", 0, "at least 1"),
    ):
        with pytest.raises(ConfigError) as error:
            node_config_from_dict("e", {**base, key: value})
        assert error.value.key.startswith(f"node.e.{key}"), (key, error.value)
        assert message in error.value.message, (key, error.value.message)


# -- content steering (topology pathways) -------------------------------------------------------
BACKUP = "https://cdn-b.example.com"
STEERING = {  # dotted TOML keys inside [node.edge-a]
    "steering.server_uri": "/steer/{video_id}.json",
    "steering.pathways.edge-a": "",
    "steering.pathways.backup": BACKUP,
}


@pytest.fixture
async def steered(origin_root):
    tiers = await DemoTiers(origin_root, carried_query_params=["token", "exp"],
                            **STEERING).start()
    yield tiers
    await tiers.stop()


async def test_master_carries_content_steering_and_a_copy_of_each_variant_per_pathway(steered):
    response = await get(steered.port, f"/v/{VIDEO}/master.m3u8?token=t1&exp=9&max_height=720")
    assert response.status == 200, response.body
    playlist = m3u8.loads(response.body.decode())
    assert playlist.content_steering.uri == f"/steer/{VIDEO}.json?token=t1&exp=9"
    assert playlist.content_steering.pathway_id == "edge-a"  # the first pathway by default
    listed = [(p.stream_info.pathway_id, p.uri) for p in playlist.playlists]
    assert listed == [
        ("edge-a", "360p/index.m3u8?token=t1&exp=9"),
        ("edge-a", "720p/index.m3u8?token=t1&exp=9"),
        ("backup", f"{BACKUP}/v/{VIDEO}/360p/index.m3u8?token=t1&exp=9"),
        ("backup", f"{BACKUP}/v/{VIDEO}/720p/index.m3u8?token=t1&exp=9"),
    ]
    by_path = {}
    for variant in playlist.playlists:
        info = variant.stream_info
        by_path.setdefault(info.pathway_id, []).append(
            (info.bandwidth, info.codecs, info.resolution))
    assert by_path["edge-a"] == by_path["backup"]  # the same variants on every pathway
    # This edge's pathway is relative to the master: its URIs work here, token and all.
    master_url = f"http://127.0.0.1:{steered.port}/v/{VIDEO}/master.m3u8"
    for variant in playlist.playlists[:2]:
        target = urljoin(master_url, variant.uri).split(str(steered.port), 1)[1]
        media = await get(steered.port, target)
        assert media.status == 200, target
        assert "PATHWAY-ID" not in media.body.decode()  # steering is a master-only matter
        assert m3u8.loads(media.body.decode()).segments[0].uri.endswith("?token=t1&exp=9")

    # One template per options (steering included), filled per token; the ETag names it.
    other = await get(steered.port, f"/v/{VIDEO}/master.m3u8?token=t2&exp=9&max_height=720")
    assert edge_member(other) == "edge-a; hit; detail=rendered"
    assert m3u8.loads(other.body.decode()).content_steering.uri.endswith("?token=t2&exp=9")
    templates = steered.edge.node.features.playlists.templates
    masters = [key for key in templates if key[1] == "master"]
    assert len(masters) == 1 and '"/steer/{video_id}.json"' in masters[0][3]


async def test_steering_follows_a_config_reload_and_needs_a_server_uri(steered):
    node = steered.edge.node
    first = await get(steered.port, f"/v/{VIDEO}/master.m3u8")
    config = node.config
    await node.apply_config(dataclasses.replace(config, steering=SteeringConfig(
        pathways=config.steering.pathways, server_uri=config.steering.server_uri,
        initial="backup")))
    moved = await get(steered.port, f"/v/{VIDEO}/master.m3u8")
    assert m3u8.loads(moved.body.decode()).content_steering.pathway_id == "backup"
    assert moved.header("etag") != first.header("etag")  # other bytes, other tag
    # Pathways without a steering server: nothing to steer with, so no tag and no copies.
    await node.apply_config(dataclasses.replace(config, steering=SteeringConfig(
        pathways=config.steering.pathways)))
    plain = await get(steered.port, f"/v/{VIDEO}/master.m3u8")
    assert "EXT-X-CONTENT-STEERING" not in plain.body.decode()
    assert "PATHWAY-ID" not in plain.body.decode()
    assert variants(plain.body) == ["360p/index.m3u8", "720p/index.m3u8"]


def test_steering_config_is_validated_with_errors_naming_the_key():
    from reelcdn.edge.config import ConfigError, node_config_from_dict

    base = {"listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:1"}
    node = node_config_from_dict("e", {**base, "steering": {
        "server_uri": "https://steer.example/{video_id}?v=1", "initial": "b",
        "pathways": {"a": "", "b": "https://cdn-b.example.com/", "c": "/mirror/"}}})
    assert node.steering == SteeringConfig(
        pathways=(("a", ""), ("b", "https://cdn-b.example.com"), ("c", "/mirror")),
        server_uri="https://steer.example/{video_id}?v=1", initial="b")
    for steering, key, message in (
        ({"pathways": {"a b": ""}}, 'steering.pathways."a b"', "bad PATHWAY-ID"),
        ({"pathways": {"b": "cdn-b.example.com"}}, "steering.pathways.b", "missing http://"),
        ({"pathways": {"b": "https://cdn-b.example.com/?x=1"}}, "steering.pathways.b",
         "no query"),
        ({"pathways": {"b": 'https://cdn-b.example.com/"x'}}, "steering.pathways.b", "quotes"),
        ({"pathways": {"b": 7}}, "steering.pathways.b", "expected a base URL"),
        ({"pathways": {}}, "steering.pathways", "at least one pathway"),
        ({"pathways": ["a"]}, "steering.pathways", "expected a table"),
        ({"server_uri": "/s"}, "steering.pathways", "missing"),
        ({"pathways": {"a": ""}, "initial": "z"}, "steering.initial", "not one of"),
        ({"pathways": {"a": ""}, "server_uri": "/s/{id}"}, "steering.server_uri",
         "only placeholder"),
        ({"pathways": {"a": ""}, "server_uri": "ftp://x/s"}, "steering.server_uri", "http(s)"),
        ({"pathways": {"a": ""}, "server_uri": "/s#x"}, "steering.server_uri", "fragment"),
        ({"pathway": {"a": ""}}, "steering.pathway", 'did you mean "pathways"'),
    ):
        with pytest.raises(ConfigError) as error:
            node_config_from_dict("e", {**base, "steering": steering})
        assert error.value.key == f"node.e.{key}", (steering, error.value)
        assert message in error.value.message, (steering, error.value.message)


def test_defaults_steering_merges_with_a_node_s_own_initial_pathway():
    from reelcdn.edge.config import ConfigError, topology_from_text

    text = """
[defaults.steering]
server_uri = "/steer/{video_id}.json"
[defaults.steering.pathways]
pop-a = "https://a.cdn.example"
pop-b = "https://b.cdn.example"

[node.edge-a]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:1"

[node.edge-b]
listen = "127.0.0.1:8081"
upstream = "http://127.0.0.1:1"
steering.initial = "pop-b"
"""
    nodes = topology_from_text(text, file="t.toml", base_dir="/").nodes
    assert nodes["edge-a"].steering.initial is None
    assert nodes["edge-b"].steering.initial == "pop-b"
    assert nodes["edge-b"].steering.pathways == nodes["edge-a"].steering.pathways
    with pytest.raises(ConfigError) as error:
        topology_from_text(text.replace('"pop-b"\n', '"pop-c"\n'), file="t.toml", base_dir="/")
    # named with the line that sets it (the loader locates every key it reports)
    assert str(error.value) == ('t.toml:15: node.edge-b.steering.initial: initial pathway '
                                '"pop-c" is not one of the pathways: pop-a, pop-b')


# -- CMSD measured per connection --------------------------------------------------------------
CMSD_MEMBER = re.compile(r'"edge-a"(;etp=(?P<etp>[0-9]+))?;rtt=(?P<rtt>[0-9]+)')


async def test_rendered_playlists_carry_the_connection_s_measured_rtt_and_etp(tiers):
    first = await get(tiers.port, f"/v/{VIDEO}/master.m3u8")
    # A rendered answer's head is built for this connection: its member has the kernel's rtt
    # (loopback measures one on the handshake); no parents' members: nobody else made it.
    assert CMSD_MEMBER.fullmatch(first.header("cmsd-dynamic")), first.header("cmsd-dynamic")
    # Later answers on a connection that has delivered bytes also carry the delivery rate.
    reader, writer = await asyncio.open_connection("127.0.0.1", tiers.port)
    try:
        members = []
        for path in ("master.m3u8", "360p/index.m3u8", "master.m3u8?max_height=360"):
            writer.write(f"GET /v/{VIDEO}/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = await read_response(reader)
            assert response.status == 200
            members.append(CMSD_MEMBER.fullmatch(response.header("cmsd-dynamic")))
        assert all(members), members
        assert members[-1]["etp"] is not None and int(members[-1]["etp"]) > 0
    finally:
        writer.close()
    # Stored objects keep the shared, identifier-only member of every tier.
    segment = await get(tiers.port, f"/v/{VIDEO}/360p/seg_00000.m4s")
    assert segment.header("cmsd-dynamic") == '"shield-1", "regional-1", "edge-a"'
    # Errors from the renderer are built per response too.
    none = await get(tiers.port, f"/v/{VIDEO}/master.m3u8?max_height=100")
    assert CMSD_MEMBER.fullmatch(none.header("cmsd-dynamic"))
