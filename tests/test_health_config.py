"""The failover keys: ``fallback`` (checked like ``parents``) and ``[node.NAME.health]``."""

from __future__ import annotations

import pytest

from reelcdn.edge.config import ConfigError, HealthConfig, topology_from_text

BASE = """
[origin.main]
type = "fs"
root = "origin"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:9100"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "127.0.0.1:9200"
parents = ["shield-1"]
{regional}

[node.edge-a]
listen = "127.0.0.1:9300"
parents = ["regional-1"]
{edge}
"""


def load(regional: str = "", edge: str = ""):
    return topology_from_text(BASE.format(regional=regional, edge=edge), base_dir="/tmp")


def error(regional: str = "", edge: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(regional, edge)
    return info.value


def test_fallback_and_health_keys() -> None:
    topology = load(edge='fallback = ["shield-1"]\n[node.edge-a.health]\ninterval = "500ms"\n'
                         'rise = 1\npath = "/ping?x=1"')
    edge = topology.nodes["edge-a"]
    assert [(ref.name, ref.url) for ref in edge.fallback] == [("shield-1", "http://127.0.0.1:9100")]
    assert edge.health == HealthConfig(interval=0.5, rise=1, path="/ping?x=1")
    assert topology.nodes["regional-1"].health == HealthConfig()  # the defaults
    assert topology.nodes["regional-1"].fallback == ()


def test_health_from_defaults_merges_field_by_field() -> None:
    text = BASE.format(regional="", edge="[node.edge-a.health]\nfall = 5") + (
        "\n[defaults.health]\ninterval = \"1s\"\nchecks = false\n")
    edge = topology_from_text(text, base_dir="/tmp").nodes["edge-a"]
    assert (edge.health.interval, edge.health.fall, edge.health.checks) == (1.0, 5, False)


@pytest.mark.parametrize(
    ("regional", "edge", "key", "fragment"),
    [
        ("", 'fallback = ["shield-2"]', "node.edge-a.fallback[0]",
         'unknown fallback node "shield-2": did you mean "shield-1"?'),
        ("", 'fallback = ["regional-1"]', "node.edge-a.fallback[0]", "is a parent already"),
        ("", 'fallback = ["edge-a"]', "node.edge-a.fallback[0]", "lists itself"),
        ("", 'fallback = []', "node.edge-a.fallback", "at least one"),
        ('fallback = ["edge-a"]', "", "node.regional-1.fallback[0]",
         "parents and fallback nodes form a cycle: regional-1 → edge-a → regional-1"),
        ("", "[node.edge-a.health]\nrise = 0", "node.edge-a.health.rise", "at least 1"),
        ("", "[node.edge-a.health]\ninterval = 0", "node.edge-a.health.interval",
         "larger than 0"),
        ("", '[node.edge-a.health]\npath = "health"', "node.edge-a.health.path",
         "an absolute path"),
        ("", "[node.edge-a.health]\nfal = 2", "node.edge-a.health.fal", 'did you mean "fall"?'),
    ],
)
def test_bad_failover_values_name_the_key(regional: str, edge: str, key: str,
                                          fragment: str) -> None:
    err = error(regional, edge)
    assert err.key == key
    assert fragment in err.message


def test_fallback_must_be_a_regional_or_shield() -> None:
    text = BASE.format(regional="", edge="") + (
        '\n[node.edge-b]\nlisten = "127.0.0.1:9301"\nparents = ["regional-1"]\n'
        'fallback = ["edge-a"]\n')
    with pytest.raises(ConfigError) as info:
        topology_from_text(text, base_dir="/tmp")
    assert info.value.key == "node.edge-b.fallback[0]"
    assert "a fallback node must be a regional or a shield" in info.value.message


def test_a_shield_has_no_fallback() -> None:
    text = BASE.replace('origins = ["main"]', 'origins = ["main"]\nfallback = ["regional-1"]')
    with pytest.raises(ConfigError) as info:
        topology_from_text(text.format(regional="", edge=""), base_dir="/tmp")
    assert info.value.key == "node.shield-1.fallback"
    assert "without parents" in info.value.message
