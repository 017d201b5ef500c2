"""Tests for topology files: origins, parents resolved to URLs, start order, and the cross-node
checks (every error names the file and the dotted key), the embedded default and the examples."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from reelcdn.edge.config import (
    ConfigError,
    NodeConfig,
    OriginConfig,
    ParentRef,
    Topology,
    UpstreamTimeouts,
    default_topology_text,
    load_config_file,
    load_node_config,
    load_topology,
    node_config_from_dict,
    topology_from_text,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The shape operators write (docs/overview.md).
THREE_TIER = """
[origin.main]
type = "fs"
root = "./data/origin"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:8100"
admin = "127.0.0.1:9100"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "127.0.0.1:8200"
admin = "127.0.0.1:9200"
parents = ["shield-1"]

[node.edge-a]
role = "edge"
listen = "127.0.0.1:8080"
admin = "127.0.0.1:9080"
parents = ["regional-1"]
cache_memory = "256MiB"
"""

SHIELD = """
[origin.main]
type = "fs"
root = "/srv/origin"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:8100"
origins = ["main"]
"""


def topo(text: str, base_dir: str = "/base", **kwargs: Any) -> Topology:
    return topology_from_text(text, file="t.toml", base_dir=base_dir, **kwargs)


def topo_error(text: str, **kwargs: Any) -> ConfigError:
    """Load ``text`` and return the ConfigError it must raise (which names the file)."""
    with pytest.raises(ConfigError) as info:
        topo(text, **kwargs)
    assert info.value.file == "t.toml"
    assert re.match(r"t\.toml(:\d+)?: ", str(info.value))  # the key's line, when found
    return info.value


def node(name: str, role: str, port: int, **keys: str) -> str:
    """One ``[node.NAME]`` table; ``keys`` values are written as TOML verbatim."""
    lines = [f"[node.{name}]", f'role = "{role}"', f'listen = "127.0.0.1:{port}"']
    lines += [f"{key} = {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n\n"


def origin_error(table: str) -> ConfigError:
    """The error of an ``[origin.main]`` table whose body is ``table``."""
    return topo_error(f"[origin.main]\n{table}\n" + SHIELD.split("\n", 4)[4])


# --- a valid topology ---------------------------------------------------------------------------


def test_the_documented_shape_loads(tmp_path: Path) -> None:
    path = tmp_path / "cdn.toml"
    path.write_text(THREE_TIER)
    topology = load_topology(path)
    assert topology.file == str(path)
    assert list(topology.nodes) == ["shield-1", "regional-1", "edge-a"]
    assert topology.origins == {
        "main": OriginConfig(name="main", type="fs", root=str(tmp_path / "data" / "origin"))
    }
    shield, regional, edge = topology.nodes.values()
    assert shield.origins == (topology.origins["main"],)
    assert shield.parents == () and shield.upstream is None
    assert regional.parents == (ParentRef("shield-1", "http://127.0.0.1:8100"),)
    assert edge.parents == (ParentRef("regional-1", "http://127.0.0.1:8200"),)
    assert regional.upstream is None and regional.origins == ()
    assert edge.upstream is None and edge.cache_memory == 256 * 1024**2
    assert (edge.parent_retry_after, edge.parent_failures) == (10.0, 3)
    assert topology.roles() == {"shield-1": "shield", "regional-1": "regional", "edge-a": "edge"}
    assert topology.edges() == ["edge-a"]
    assert load_config_file(path) == topology.nodes
    assert load_node_config(path, "edge-a") == edge


def test_node_config_keeps_keyword_construction() -> None:
    """Code that builds a NodeConfig by keyword (tests, tools) keeps working; new fields default."""
    config = NodeConfig(
        name="a", listen_host="127.0.0.1", listen_port=1, admin_host=None, admin_port=None,
        upstream="http://o:80",
    )
    assert config.parents == () and config.origins == ()
    assert (config.parent_retry_after, config.parent_failures) == (10.0, 3)


def test_parents_in_list_order_with_several_parents() -> None:
    text = (
        SHIELD
        + node("regional-1", "regional", 8200, parents='["shield-1"]')
        + node("regional-2", "regional", 8201, parents='["shield-1"]')
        + node("edge-a", "edge", 8080, parents='["regional-2", "regional-1"]')
    )
    assert topo(text).nodes["edge-a"].parents == (
        ParentRef("regional-2", "http://127.0.0.1:8201"),
        ParentRef("regional-1", "http://127.0.0.1:8200"),
    )


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("0.0.0.0:8200", "http://127.0.0.1:8200"),
        ("[::]:8200", "http://[::1]:8200"),
        ("[::1]:8200", "http://[::1]:8200"),
        ("10.0.0.7:8200", "http://10.0.0.7:8200"),
        ("regional.internal:8200", "http://regional.internal:8200"),
    ],
)
def test_parent_url_from_the_listen_address(listen: str, url: str) -> None:
    text = (
        SHIELD
        + f'[node.regional-1]\nrole = "regional"\nlisten = "{listen}"\nparents = ["shield-1"]\n'
        + node("edge-a", "edge", 8080, parents='["regional-1"]')
    )
    assert topo(text).nodes["edge-a"].parents == (ParentRef("regional-1", url),)


def test_upstream_url_nodes_mix_with_parents() -> None:
    """``upstream`` stays the way to point at a parent outside the file."""
    text = (
        node("regional-1", "regional", 8200, upstream='"http://shield.example:8100"')
        + node("edge-a", "edge", 8080, parents='["regional-1"]')
    )
    nodes = topo(text).nodes
    assert nodes["regional-1"].upstream == "http://shield.example:8100"
    assert nodes["regional-1"].parents == ()
    assert nodes["edge-a"].parents == (ParentRef("regional-1", "http://127.0.0.1:8200"),)


def test_a_node_choice_replaces_the_default_upstream() -> None:
    text = (
        '[defaults]\nupstream = "http://127.0.0.1:8000"\n\n'
        + node("regional-1", "regional", 8200)
        + node("edge-a", "edge", 8080, parents='["regional-1"]')
    )
    nodes = topo(text).nodes
    assert nodes["regional-1"].upstream == "http://127.0.0.1:8000"
    assert nodes["edge-a"].upstream is None
    assert [p.name for p in nodes["edge-a"].parents] == ["regional-1"]


def test_parents_from_defaults() -> None:
    text = (
        '[defaults]\nparents = ["regional-1"]\n\n'
        + SHIELD
        + node("regional-1", "regional", 8200, parents='["shield-1"]')
        + node("edge-a", "edge", 8080)
        + node("edge-b", "edge", 8081)
    )
    nodes = topo(text).nodes
    assert nodes["edge-a"].parents == nodes["edge-b"].parents
    assert nodes["edge-b"].parents[0].name == "regional-1"


def test_defaults_parents_that_name_the_node_itself() -> None:
    text = '[defaults]\nparents = ["regional-1"]\n\n' + node("regional-1", "regional", 8200)
    err = topo_error(text)
    assert err.key == "defaults.parents[0]"
    assert 'node "regional-1" lists itself as a parent (from [defaults]' in err.message


def test_parent_failover_settings() -> None:
    text = (
        '[defaults]\nparent_retry_after = "30s"\nparent_failures = 5\n\n'
        + SHIELD
        + node("edge-a", "edge", 8080, parents='["shield-1"]', parent_retry_after='"500ms"')
    )
    nodes = topo(text).nodes
    assert (nodes["shield-1"].parent_retry_after, nodes["shield-1"].parent_failures) == (30.0, 5)
    assert (nodes["edge-a"].parent_retry_after, nodes["edge-a"].parent_failures) == (0.5, 5)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("parent_retry_after", "0", "must be larger than 0"),
        ("parent_retry_after", '"soon"', 'bad duration "soon"'),
        ("parent_failures", "0", "must be at least 1, got 0"),
        ("parent_failures", '"3"', 'expected an integer, got string "3"'),
    ],
)
def test_bad_parent_failover_settings(key: str, value: str, message: str) -> None:
    err = topo_error(SHIELD + node("edge-a", "edge", 8080, parents='["shield-1"]', **{key: value}))
    assert err.key == f"node.edge-a.{key}"
    assert message in err.message


def test_an_origin_nobody_uses_is_allowed() -> None:
    text = SHIELD + '[origin.spare]\ntype = "http"\nurl = "http://spare:80"\n'
    assert list(topo(text).origins) == ["main", "spare"]


def test_origins_in_failover_order() -> None:
    text = (
        '[origin.a]\ntype = "fs"\nroot = "/a"\n[origin.b]\ntype = "fs"\nroot = "/b"\n'
        + node("shield-1", "shield", 8100, origins='["b", "a"]')
    )
    assert [o.name for o in topo(text).nodes["shield-1"].origins] == ["b", "a"]


# --- start order --------------------------------------------------------------------------------


def test_order_for_start_puts_parents_first_whatever_the_file_order() -> None:
    text = (
        node("edge-b", "edge", 8081, parents='["regional-2"]')
        + node("edge-a", "edge", 8080, parents='["regional-1", "regional-2"]')
        + node("regional-2", "regional", 8201, parents='["regional-1"]')
        + node("regional-1", "regional", 8200, parents='["shield-1"]')
        + node("lone", "edge", 8090, upstream='"http://elsewhere:80"')
        + SHIELD
    )
    topology = topo(text)
    order = topology.order_for_start()
    assert order == ["shield-1", "regional-1", "regional-2", "edge-b", "edge-a", "lone"]
    for name, config in topology.nodes.items():
        for parent in config.parents:
            assert order.index(parent.name) < order.index(name)


def test_order_for_start_of_the_documented_shape() -> None:
    assert topo(THREE_TIER).order_for_start() == ["shield-1", "regional-1", "edge-a"]


# --- which kind of source a node has ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (node("edge-a", "edge", 8080), "node.edge-a.parents",
         "missing: an edge needs parents (or an upstream URL)"),
        (node("regional-1", "regional", 8200), "node.regional-1.parents",
         "missing: a regional needs parents (or an upstream URL)"),
        (node("shield-1", "shield", 8100), "node.shield-1.origins",
         "missing: a shield needs origins"),
        (SHIELD + node("shield-2", "shield", 8101, parents='["shield-1"]'),
         "node.shield-2.parents",
         'a shield fetches from origins; use role = "regional" for a node with parents'),
        (SHIELD + node("edge-a", "edge", 8080, origins='["main"]'), "node.edge-a.origins",
         'only a shield fetches from origins: set role = "shield" or list parents'),
        (SHIELD + node("regional-1", "regional", 8200, origins='["main"]'),
         "node.regional-1.origins", "a regional fetches from parents (or an upstream URL)"),
        (SHIELD + node("edge-a", "edge", 8080, parents='["shield-1"]', upstream='"http://o:80"'),
         "node.edge-a.upstream", "set only one of upstream, parents and origins"),
        (SHIELD + node("edge-a", "edge", 8080, upstream='"http://o:80"', origins='["main"]'),
         "node.edge-a.origins", "(found upstream and origins)"),
        ('[defaults]\nparents = ["x"]\nupstream = "http://o:80"\n' + SHIELD,
         "defaults.upstream", "set only one of upstream, parents and origins"),
    ],
)
def test_each_node_fetches_from_exactly_one_kind_of_source(
    text: str, key: str, message: str
) -> None:
    err = topo_error(text)
    assert err.key == key
    assert message in err.message


def test_a_shield_may_still_use_an_upstream_url() -> None:
    nodes = topo(node("shield-1", "shield", 8100, upstream='"http://origin:8000"')).nodes
    assert nodes["shield-1"].upstream == "http://origin:8000"


def test_shield_parents_from_defaults_names_the_defaults_key() -> None:
    err = topo_error('[defaults]\nparents = ["regional-1"]\n' + node("shield-1", "shield", 8100))
    assert err.key == "defaults.parents"
    assert "a shield fetches from origins" in err.message


# --- parent and origin names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parents", "key", "message"),
    [
        ('["regional1"]', "node.edge-a.parents[0]",
         'unknown parent "regional1": did you mean "regional-1"? nodes in this file are: '
         "shield-1, regional-1, edge-a"),
        ('["regional-1", "zzz"]', "node.edge-a.parents[1]", 'unknown parent "zzz": nodes in'),
        ('["main"]', "node.edge-a.parents[0]",
         '"main" is an origin: only a shield lists origins'),
        ('["edge-a"]', "node.edge-a.parents[0]", 'node "edge-a" lists itself as a parent'),
        ('["regional-1", "regional-1"]', "node.edge-a.parents[1]",
         'parent "regional-1" is listed twice (also at node.edge-a.parents[0])'),
        ("[]", "node.edge-a.parents", "must list at least one parent"),
        ('"regional-1"', "node.edge-a.parents",
         'expected an array of parent names, e.g. ["regional-1"], got string "regional-1"'),
        ('["regional-1", 2]', "node.edge-a.parents[1]", "expected a parent name (a string)"),
        ('[""]', "node.edge-a.parents[0]", "parent name must not be empty"),
    ],
)
def test_bad_parents(parents: str, key: str, message: str) -> None:
    text = (
        SHIELD
        + node("regional-1", "regional", 8200, parents='["shield-1"]')
        + node("edge-a", "edge", 8080, parents=parents)
    )
    err = topo_error(text)
    assert err.key == key
    assert message in err.message


@pytest.mark.parametrize(
    ("origins", "key", "message"),
    [
        ('["mian"]', "node.shield-1.origins[0]",
         'unknown origin "mian": did you mean "main"? origins in this file are: main'),
        ('["main", "main"]', "node.shield-1.origins[1]",
         'origin "main" is listed twice (also at node.shield-1.origins[0])'),
        ('["regional-1"]', "node.shield-1.origins[0]",
         '"regional-1" is a node: list nodes in parents'),
        ("[]", "node.shield-1.origins", "must list at least one origin"),
    ],
)
def test_bad_origins_list(origins: str, key: str, message: str) -> None:
    text = (
        '[origin.main]\ntype = "fs"\nroot = "/srv"\n\n'
        + node("shield-1", "shield", 8100, origins=origins)
        + node("regional-1", "regional", 8200, parents='["shield-1"]')
    )
    err = topo_error(text)
    assert err.key == key
    assert message in err.message


def test_origin_named_in_a_file_without_origins() -> None:
    err = topo_error(node("shield-1", "shield", 8100, origins='["main"]'))
    assert err.key == "node.shield-1.origins[0]"
    assert 'this file has no origins; add an [origin.main] table with type = fs | s3 | http' in (
        err.message
    )


def test_a_cycle_among_regionals_is_named() -> None:
    text = (
        node("regional-1", "regional", 8200, parents='["regional-2"]')
        + node("regional-2", "regional", 8201, parents='["regional-3"]')
        + node("regional-3", "regional", 8202, parents='["regional-1"]')
    )
    err = topo_error(text)
    assert err.key == "node.regional-1.parents[0]"
    assert "parents form a cycle: regional-1 → regional-2 → regional-3 → regional-1" in (
        err.message
    )


def test_a_cycle_through_an_edge_is_named() -> None:
    text = (
        SHIELD
        + node("edge-a", "edge", 8080, parents='["shield-1", "regional-1"]')
        + node("regional-1", "regional", 8200, parents='["edge-a"]')
    )
    err = topo_error(text)
    assert err.key == "node.edge-a.parents[1]"
    assert "parents form a cycle: edge-a → regional-1 → edge-a" in err.message


def test_a_cycle_reached_from_outside_names_only_the_loop() -> None:
    text = (
        node("edge-a", "edge", 8080, parents='["regional-1"]')
        + node("regional-1", "regional", 8200, parents='["regional-2"]')
        + node("regional-2", "regional", 8201, parents='["regional-1"]')
    )
    err = topo_error(text)
    assert err.key == "node.regional-1.parents[0]"
    assert "cycle: regional-1 → regional-2 → regional-1;" in err.message


@pytest.mark.parametrize("child_role", ["edge", "regional"])
def test_a_parent_must_be_a_regional_or_a_shield(child_role: str) -> None:
    text = (
        SHIELD
        + node("edge-b", "edge", 8081, parents='["shield-1"]')
        + node("child", child_role, 8080, parents='["shield-1", "edge-b"]')
    )
    err = topo_error(text)
    assert err.key == "node.child.parents[1]"
    assert (
        'parent "edge-b" of node "child" is an edge; a parent must be a regional or a shield'
        in err.message
    )


def test_a_parent_on_port_zero_cannot_be_reached() -> None:
    text = (
        '[node.shield-1]\nrole = "shield"\nlisten = "127.0.0.1:0"\nupstream = "http://o:80"\n'
        + node("edge-a", "edge", 8080, parents='["shield-1"]')
    )
    err = topo_error(text)
    assert err.key == "node.edge-a.parents[0]"
    assert "listens on port 0" in err.message
    assert "node.shield-1.listen a fixed port" in err.message


def test_ports_used_twice_across_a_topology() -> None:
    text = THREE_TIER.replace('admin = "127.0.0.1:9080"', 'admin = "127.0.0.1:9200"')
    err = topo_error(text)
    assert err.key == "node.edge-a.admin"
    assert 'address 127.0.0.1:9200 is used by both node "regional-1"' in err.message


def test_bad_size_keeps_its_message() -> None:
    err = topo_error(THREE_TIER.replace('"256MiB"', '"256XB"'))
    assert err.key == "node.edge-a.cache_memory"
    assert str(err).endswith(
        'node.edge-a.cache_memory: bad size "256XB": use a number with B, KiB, MiB, GiB, KB, MB, GB'
    )


def test_unknown_node_key_suggests_parents() -> None:
    err = topo_error(SHIELD + node("edge-a", "edge", 8080, parent='["shield-1"]'))
    assert err.key == "node.edge-a.parent"
    assert 'did you mean "parents"?' in err.message


def test_lone_node_dict_cannot_name_parents() -> None:
    with pytest.raises(ConfigError) as info:
        node_config_from_dict("edge-a", {"listen": "127.0.0.1:1", "parents": ["regional-1"]})
    assert info.value.key == "node.edge-a.parents[0]"
    assert 'unknown parent "regional-1"' in info.value.message


# --- origins ------------------------------------------------------------------------------------


def test_fs_root_relative_to_the_file_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "cdn.toml"
    path.write_text(SHIELD.replace('"/srv/origin"', '"../videos/./origin"'))
    origin = load_topology(path).origins["main"]
    assert origin.root == str(tmp_path / "videos" / "origin")


def test_fs_root_absolute_and_home() -> None:
    assert topo(SHIELD).origins["main"].root == "/srv/origin"
    home = topo(SHIELD.replace('"/srv/origin"', '"~/origin"')).origins["main"].root
    assert home == os.path.join(os.path.expanduser("~"), "origin")


def test_http_origin_url_is_normalised() -> None:
    text = SHIELD.replace(
        'type = "fs"\nroot = "/srv/origin"', 'type = "http"\nurl = "HTTP://Origin.example:8000/media/"'
    )
    assert topo(text).origins["main"] == OriginConfig(
        name="main", type="http", url="http://origin.example:8000/media"
    )


def test_https_origin_without_port() -> None:
    text = SHIELD.replace('type = "fs"\nroot = "/srv/origin"', 'type = "http"\nurl = "https://cdn.example"')
    assert topo(text).origins["main"].url == "https://cdn.example"


def test_s3_origin_every_key() -> None:
    text = SHIELD.replace(
        'type = "fs"\nroot = "/srv/origin"',
        'type = "s3"\nbucket = "reelcdn-videos"\nprefix = "/videos"\n'
        'endpoint_url = "http://127.0.0.1:9000/"\nregion = "eu-west-1"\nprofile = "reelcdn"\n'
        '[origin.main.timeouts]\nconnect = "1s"\nfirst_byte = "20s"',
    )
    assert topo(text).origins["main"] == OriginConfig(
        name="main",
        type="s3",
        bucket="reelcdn-videos",
        prefix="videos/",
        endpoint_url="http://127.0.0.1:9000",
        region="eu-west-1",
        profile="reelcdn",
        timeouts=UpstreamTimeouts(connect=1.0, first_byte=20.0),
    )


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ('root = "/srv"', "origin.main.type", 'missing: every origin needs type = "fs" | "s3" | '),
        ('type = "nfs"\nroot = "/srv"', "origin.main.type",
         'unknown origin type "nfs": did you mean "fs"? use one of fs, s3, http'),
        ('type = "file"\nroot = "/srv"', "origin.main.type", 'did you mean "fs"?'),
        ('type = "https"\nurl = "https://x"', "origin.main.type", 'did you mean "http"?'),
        ("type = 3", "origin.main.type", "expected fs | s3 | http, got integer 3"),
        ('type = "fs"', "origin.main.root",
         'missing: an fs origin needs root (e.g. root = "./data/origin")'),
        ('type = "s3"', "origin.main.bucket", "missing: an s3 origin needs bucket"),
        ('type = "http"', "origin.main.url", "missing: an http origin needs url"),
        ('type = "fs"\nrooot = "/srv"', "origin.main.rooot",
         'unknown key "rooot": did you mean "root"?'),
        ('type = "fs"\nroot = "/srv"\nurl = "http://o:80"', "origin.main.url",
         "url is for http origins; an fs origin takes root"),
        ('type = "http"\nurl = "http://o:80"\nbucket = "b"', "origin.main.bucket",
         "bucket is for s3 origins; an http origin takes url"),
        ('type = "fs"\nroot = ""', "origin.main.root", "must not be empty"),
        ('type = "fs"\nroot = 3', "origin.main.root", "expected a directory path"),
        ('type = "http"\nurl = "origin:8000"', "origin.main.url",
         'bad origin URL "origin:8000": missing http://, write "http://origin:8000"'),
        ('type = "http"\nurl = "ftp://origin"', "origin.main.url", "ftp is not supported"),
        ('type = "http"\nurl = "http://u:p@origin:80"', "origin.main.url",
         "credentials are not allowed"),
        ('type = "http"\nurl = "http://origin:80/?a=1"', "origin.main.url",
         "no query or fragment"),
        ('type = "http"\nurl = "http://origin:99999"', "origin.main.url", "bad origin URL"),
        ('type = "http"\nurl = "http:///x"', "origin.main.url", "missing host"),
        ('type = "s3"\nbucket = "s3://videos/hls"', "origin.main.bucket",
         'give the bucket name only (bucket = "videos", prefix = "hls")'),
        ('type = "s3"\nbucket = "My_Bucket"', "origin.main.bucket", "3..63 lowercase letters"),
        ('type = "s3"\nbucket = "b12"\nendpoint_url = "http://minio:9000/x"',
         "origin.main.endpoint_url", 'bad endpoint URL "http://minio:9000/x": path "/x"'),
        ('type = "s3"\nbucket = "b12"\nprefix = "../x"', "origin.main.prefix", "no . or .."),
        ('type = "s3"\nbucket = "b12"\nregion = "eu west"', "origin.main.region", "bad region"),
        ('type = "s3"\nbucket = "b12"\naws_secret_access_key = "x"',
         "origin.main.aws_secret_access_key", "credentials never go in the config file"),
        ('type = "fs"\nroot = "/srv"\ntimeouts = { conect = "1s" }', "origin.main.timeouts.conect",
         'did you mean "connect"?'),
        ('type = "fs"\nroot = "/srv"\ntimeouts = { idle = 0 }', "origin.main.timeouts.idle",
         "timeout must be larger than 0"),
    ],
)
def test_bad_origins(table: str, key: str, message: str) -> None:
    err = origin_error(table)
    assert err.key == key
    assert message in err.message


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('[origin]\ntype = "fs"\n' + SHIELD.split("\n", 4)[4], "origin.type",
         "type must be inside an origin's table: write [origin.NAME]"),
        ("origin = 3\n" + SHIELD.split("\n", 4)[4], "origin",
         "expected tables written [origin.NAME], got integer 3"),
        ('[origin."a b"]\ntype = "fs"\nroot = "/"\n' + SHIELD, 'origin.a b', "bad origin name"),
        ("[origins.main]\n" + SHIELD, "origins", 'did you mean "origin"?'),
    ],
)
def test_bad_origin_tables(text: str, key: str, message: str) -> None:
    err = topo_error(text)
    assert err.key == key
    assert message in err.message


# --- the embedded default and the examples ------------------------------------------------------


def test_embedded_default_loads_against_a_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    topology = topology_from_text(default_topology_text(), base_dir=str(data))
    assert topology.file == "<embedded>"
    root = topology.origins["main"].root
    assert root is not None and os.path.isabs(root)
    assert Path(root) == data / "origin"
    assert topology.order_for_start() == ["shield-1", "regional-1", "edge-a", "edge-b"]
    assert topology.edges() == ["edge-a", "edge-b"]
    nodes = topology.nodes
    assert nodes["shield-1"].origins == (topology.origins["main"],)
    assert [(n.listen_port, n.admin_port) for n in nodes.values()] == [
        (8100, 9100), (8200, 9200), (8080, 9080), (8081, 9081)
    ]
    regional = ParentRef("regional-1", "http://127.0.0.1:8200")
    assert nodes["edge-a"].parents == nodes["edge-b"].parents == (regional,)
    rules = nodes["edge-a"].ttl_rules
    ttl = {(rule.match, tuple(sorted(rule.statuses))): rule.ttl for rule in rules}
    assert ttl == {
        ("*.m4s", (200, 206)): 86400.0,
        ("*/init.mp4", (200, 206)): 86400.0,
        ("*.m3u8", (200, 206)): 2.0,
        ("*.jpg", (200, 206)): 3600.0,
        ("*", (404,)): 5.0,
    }


def test_load_topology_none_is_the_embedded_default(tmp_path: Path) -> None:
    topology = load_topology(None, data_dir=str(tmp_path))
    assert topology.origins["main"].root == str(tmp_path / "origin")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_topology(None)


def test_a_file_resolves_against_its_own_directory_not_the_data_dir(tmp_path: Path) -> None:
    """``reelcdn up`` and the node processes load the same file and must agree on the origin."""
    path = tmp_path / "cdn.toml"
    path.write_text(THREE_TIER)
    topology = load_topology(path, data_dir=str(tmp_path / "elsewhere"))
    assert topology.origins["main"].root == str(tmp_path / "data" / "origin")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_loads(path: Path) -> None:
    topology = load_topology(path)
    assert topology.nodes
    order = topology.order_for_start()
    assert sorted(order) == sorted(topology.nodes)


def test_example_two_pops() -> None:
    topology = load_topology(EXAMPLES / "two-pops.toml")
    assert topology.roles() == {
        "shield-1": "shield",
        "regional-1": "regional",
        "regional-2": "regional",
        "edge-ams-1": "edge",
        "edge-ams-2": "edge",
        "edge-fra-1": "edge",
        "edge-fra-2": "edge",
    }
    assert [o.name for o in topology.nodes["shield-1"].origins] == ["s3", "mirror"]
    for name in topology.edges():
        assert [p.name for p in topology.nodes[name].parents] == ["regional-1", "regional-2"]
    assert topology.origins["s3"].bucket == "reelcdn-videos"


def test_example_three_tier() -> None:
    topology = load_topology(EXAMPLES / "three-tier.toml")
    assert topology.origins["main"].type == "http"
    assert topology.origins["main"].url == "http://127.0.0.1:8000"
    assert topology.order_for_start() == ["shield-1", "regional-1", "edge-a"]
    assert topology.nodes["edge-a"].parents == (ParentRef("regional-1", "http://127.0.0.1:8200"),)
