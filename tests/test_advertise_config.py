"""``advertise`` / ``admin_advertise``: where other nodes and hosts reach a node, apart from
where it listens. Parents are reached at their advertise address; bad or shared addresses are
config errors naming the key; nodes advertising different hosts may listen on one address."""

from __future__ import annotations

from typing import Any

import pytest

from reelcdn.edge.config import ConfigError, ParentRef, node_config_from_dict, topology_from_text

SHIELD = """
[origin.main]
type = "fs"
root = "/srv/origin"

[node.shield-1]
role = "shield"
listen = "{listen}"
{extra}
origins = ["main"]

[node.edge-a]
listen = "{edge_listen}"
parents = ["shield-1"]
{edge_extra}
"""


def topo(listen: str = "0.0.0.0:8100", extra: str = "", edge_listen: str = "127.0.0.1:8080",
         edge_extra: str = ""):
    text = SHIELD.format(listen=listen, extra=extra, edge_listen=edge_listen,
                         edge_extra=edge_extra)
    return topology_from_text(text, file="t.toml", base_dir="/")


def error(**kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        topo(**kwargs)
    return info.value


def test_children_reach_a_parent_at_its_advertise_address() -> None:
    nodes = topo(extra='advertise = "10.0.0.5:8100"').nodes
    assert nodes["edge-a"].parents == (ParentRef("shield-1", "http://10.0.0.5:8100"),)
    assert nodes["shield-1"].advertised() == ("10.0.0.5", 8100)
    assert (nodes["shield-1"].listen_host, nodes["shield-1"].listen_port) == ("0.0.0.0", 8100)


@pytest.mark.parametrize(
    ("advertise", "url"),
    [
        ("shield-1.internal:9000", "http://shield-1.internal:9000"),  # a port of its own (NAT)
        ("[fd00::5]:8100", "http://[fd00::5]:8100"),
    ],
)
def test_advertise_host_names_ipv6_and_other_ports(advertise: str, url: str) -> None:
    nodes = topo(extra=f'advertise = "{advertise}"').nodes
    assert nodes["edge-a"].parents == (ParentRef("shield-1", url),)


def test_default_advertise_is_the_listen_address_with_wildcards_as_loopback() -> None:
    nodes = topo(listen="[::]:8100", extra='admin = "0.0.0.0:9100"').nodes
    shield = nodes["shield-1"]
    assert shield.advertised() == ("::1", 8100)
    assert shield.admin_advertised() == ("127.0.0.1", 9100)
    assert nodes["edge-a"].advertised() == ("127.0.0.1", 8080)
    assert nodes["edge-a"].admin_advertised() is None


def test_admin_on_a_wildcard_is_advertised_on_the_advertise_host() -> None:
    shield = topo(extra='advertise = "10.0.0.5:8100"\nadmin = "0.0.0.0:9100"').nodes["shield-1"]
    assert shield.admin_advertised() == ("10.0.0.5", 9100)
    shield = topo(extra='advertise = "10.0.0.5:8100"\nadmin = "0.0.0.0:9100"\n'
                        'admin_advertise = "mgmt.internal:19100"').nodes["shield-1"]
    assert shield.admin_advertised() == ("mgmt.internal", 19100)
    # An IPv6 wildcard admin is not reached at an IPv4 advertise host: loopback then.
    shield = topo(extra='advertise = "10.0.0.5:8100"\nadmin = "[::]:9100"').nodes["shield-1"]
    assert shield.admin_advertised() == ("::1", 9100)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('"0.0.0.0:8100"', "0.0.0.0 is not an address to connect to"),
        ('"[::]:8100"', ":: is not an address to connect to"),
        ('"10.0.0.5:0"', "must be fixed"),
        ('"10.0.0.5"', "missing port"),
        ('"bad host:80"', "is not a host name or IP"),
        ("8100", "expected an address string"),
    ],
)
def test_a_bad_advertise_address_names_the_key(value: str, fragment: str) -> None:
    err = error(extra=f"advertise = {value}")
    assert err.key == "node.shield-1.advertise"
    assert fragment in err.message
    err = error(extra=f'admin = "127.0.0.1:9100"\nadmin_advertise = {value}')
    assert err.key == "node.shield-1.admin_advertise"


def test_admin_advertise_needs_an_admin_api() -> None:
    err = error(extra='admin_advertise = "10.0.0.5:9100"')
    assert err.key == "node.shield-1.admin_advertise"
    assert "set admin too" in err.message


def test_two_nodes_advertising_one_address_is_an_error() -> None:
    err = error(extra='advertise = "10.0.0.5:8100"', edge_listen="0.0.0.0:8080",
                edge_extra='advertise = "10.0.0.5:8100"')
    assert err.key == "node.edge-a.advertise"
    assert 'node "edge-a" is reached at 10.0.0.5:8100 (node.edge-a.advertise)' in err.message
    assert 'node "shield-1" (node.shield-1.advertise)' in err.message
    # The default (listen) counts too: an edge advertising the shield's loopback listen.
    err = error(listen="127.0.0.1:8100", edge_extra='advertise = "127.0.0.1:8100"')
    assert err.key == "node.edge-a.advertise"
    # And a node's data plane and admin API are two addresses.
    err = error(extra='advertise = "10.0.0.5:8100"\nadmin = "0.0.0.0:9100"\n'
                      'admin_advertise = "10.0.0.5:8100"')
    assert err.key == "node.shield-1.admin_advertise"
    assert "and so is itself" in err.message


def test_advertise_in_defaults_is_shared_so_refused() -> None:
    text = '[defaults]\nadvertise = "10.0.0.5:8100"\n' + SHIELD.format(
        listen="0.0.0.0:8100", extra="", edge_listen="0.0.0.0:8080", edge_extra="")
    with pytest.raises(ConfigError) as info:
        topology_from_text(text, file="t.toml", base_dir="/")
    assert "defaults.advertise" in info.value.message


def test_one_file_for_many_hosts_nodes_on_different_hosts_share_a_listen_address() -> None:
    """The same file on every host: each node listens on 0.0.0.0:8080 of its own machine."""
    nodes = topo(listen="0.0.0.0:8080", extra='advertise = "shield-1.internal:8080"\n'
                 'admin = "0.0.0.0:9100"', edge_listen="0.0.0.0:8080",
                 edge_extra='advertise = "edge-a.internal:8080"\nadmin = "0.0.0.0:9100"').nodes
    assert nodes["edge-a"].parents == (ParentRef("shield-1", "http://shield-1.internal:8080"),)
    assert nodes["edge-a"].admin_advertised() == ("edge-a.internal", 9100)


@pytest.mark.parametrize(
    ("shield_advertise", "edge_advertise"),
    [
        ("10.0.0.5:8100", "10.0.0.5:8080"),   # one host: both bind 0.0.0.0:8080 there
        ("10.0.0.5:8100", None),              # the edge's is loopback: it shares every host
        (None, "10.0.0.6:8080"),
    ],
)
def test_nodes_on_one_host_still_cannot_share_a_listen_address(
    shield_advertise: str | None, edge_advertise: str | None
) -> None:
    err = error(listen="0.0.0.0:8080",
                extra=f'advertise = "{shield_advertise}"' if shield_advertise else "",
                edge_listen="0.0.0.0:8080",
                edge_extra=f'advertise = "{edge_advertise}"' if edge_advertise else "")
    assert err.key == "node.edge-a.listen"
    assert "address 0.0.0.0:8080 is used by both" in err.message


def test_a_single_node_from_a_dict_takes_advertise() -> None:
    node = node_config_from_dict("a", {"listen": "0.0.0.0:1", "advertise": "a.example:80",
                                       "upstream": "http://o:80"})
    assert node.advertise == ("a.example", 80) and node.advertised() == ("a.example", 80)


def test_a_node_serves_absolute_targets_naming_its_advertise_address() -> None:
    from reelcdn.edge.ops.server import NodeServer

    node = node_config_from_dict("a", {"listen": "0.0.0.0:8080", "advertise": "A.example:9000",
                                       "upstream": "http://o:80"})
    served = NodeServer._served_hosts(node, 8080)
    assert "a.example:9000" in served and "a.example:8080" not in served
