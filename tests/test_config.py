"""Tests for the node config loader: every error names the file and the dotted key, in words an
operator understands, and valid files produce the expected ``NodeConfig``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelcdn.edge.config import (
    DEFAULT_IGNORE_QUERY_PARAMS,
    ConfigError,
    Limits,
    NodeConfig,
    TtlRule,
    UpstreamTimeouts,
    load_config_file,
    load_node_config,
    node_config_from_dict,
    parse_address,
    parse_duration,
    parse_size,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node.toml"

MINIMAL = """
[node.edge-a]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:8000"
"""


def write(tmp_path: Path, text: str, name: str = "cdn.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, **kwargs: Any) -> ConfigError:
    """Load ``text`` as a config file and return the ConfigError it must raise."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path, **kwargs)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)
    return info.value


def node_error(table: dict[str, Any], **kwargs: Any) -> ConfigError:
    base: dict[str, Any] = {"listen": "127.0.0.1:8080", "upstream": "http://127.0.0.1:8000"}
    with pytest.raises(ConfigError) as info:
        node_config_from_dict("edge-a", {**base, **table}, file="t.toml", **kwargs)
    return info.value


# --- ConfigError --------------------------------------------------------------------------------


def test_config_error_names_file_and_key() -> None:
    err = ConfigError("cdn.toml", "node.a.listen", "bad address")
    assert str(err) == "cdn.toml: node.a.listen: bad address"
    assert (err.file, err.key, err.message) == ("cdn.toml", "node.a.listen", "bad address")
    assert isinstance(err, ValueError)
    assert str(ConfigError("cdn.toml", "", "no nodes")) == "cdn.toml: no nodes"


# --- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("100B", 100),
        ("100", 100),
        ("512KB", 512_000),
        ("512kb", 512_000),
        ("256MiB", 256 * 1024**2),
        ("256mib", 256 * 1024**2),
        ("64 MiB", 64 * 1024**2),
        ("1.5GiB", 1536 * 1024**2),
        ("2GB", 2_000_000_000),
        ("1KiB", 1024),
        (" 3 MB ", 3_000_000),
    ],
)
def test_parse_size_accepts(value: int | str, expected: int) -> None:
    assert parse_size(value, file="f", key="k") == expected


def test_parse_size_bad_unit_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse_size("256XB", file="cdn.toml", key="node.edge-a.cache_memory")
    assert info.value.key == "node.edge-a.cache_memory"
    assert info.value.message == 'bad size "256XB": use a number with B, KiB, MiB, GiB, KB, MB, GB'


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("256M", "ambiguous: write MiB or MB"),
        ("", "bad size"),
        ("MiB", "bad size"),
        ("1.2.3MB", "bad size"),
        ("-5MiB", "must not be negative"),
        (-1, "must not be negative"),
        ("1.5B", "not a whole number of bytes"),
        (1.5, "expected a size"),
        (True, "got boolean true"),
        ([1], "got an array"),
    ],
)
def test_parse_size_rejects(value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value, file="f", key="node.a.cache_memory")
    assert info.value.key == "node.a.cache_memory"
    assert fragment in info.value.message


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["KiB", "MiB", "GiB", "KB"]))
def test_parse_size_units_multiply(n: int, unit: str) -> None:
    factor = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000}[unit]
    assert parse_size(f"{n}{unit}", file="f", key="k") == n * factor
    assert parse_size(f"{n} {unit.lower()}", file="f", key="k") == n * factor


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("500ms", 0.5),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("10", 10.0),
        ("1h30m", 5400.0),
        ("2S", 2.0),
        (" 10 s ", 10.0),
    ],
)
def test_parse_duration_accepts(value: Any, expected: float) -> None:
    assert parse_duration(value, file="f", key="k") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("5x", 'bad duration "5x": use a number of seconds or a number with ms, s, m, h, d'),
        ("", "bad duration"),
        ("s", "bad duration"),
        ("1 week", "bad duration"),
        ("-2s", "must not be negative"),
        (-1, "must not be negative"),
        (math.inf, "finite"),
        (math.nan, "finite"),
        (False, 'expected a duration (seconds or a string like "2s"), got boolean false'),
        ({}, "got a table"),
    ],
)
def test_parse_duration_rejects(value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, file="f", key="node.a.heuristic_max")
    assert info.value.key == "node.a.heuristic_max"
    assert fragment in info.value.message


@given(st.integers(min_value=0, max_value=10**9))
def test_parse_duration_ms(n: int) -> None:
    assert parse_duration(f"{n}ms", file="f", key="k") == pytest.approx(n / 1000)


# --- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("edge-1.example.com:80", ("edge-1.example.com", 80)),
    ],
)
def test_parse_address_accepts(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value, file="f", key="k") == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("8080", "missing port"),
        ("127.0.0.1", "missing port"),
        ("127.0.0.1:65536", 'bad port "65536"'),
        ("127.0.0.1:http", 'bad port "http"'),
        ("127.0.0.1:", 'bad port ""'),
        ("::1:8080", 'put an IPv6 address in brackets, e.g. "[::1]:8080"'),
        ("[::1:8080", "unclosed ["),
        ("[nothost]:80", "is not an IPv6 address"),
        (":8080", 'missing host (use "0.0.0.0:8080"'),
        ("bad host:80", "is not a host name or IP"),
        (8080, "expected an address string"),
    ],
)
def test_parse_address_rejects(value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(value, file="f", key="node.a.listen")
    assert info.value.key == "node.a.listen"
    assert fragment in info.value.message


# --- one node from a dict -----------------------------------------------------------------------


def test_minimal_node_gets_the_dataclass_defaults() -> None:
    node = node_config_from_dict(
        "edge-a", {"listen": "127.0.0.1:8080", "upstream": "http://127.0.0.1:8000/"}
    )
    assert node == NodeConfig(
        name="edge-a",
        listen_host="127.0.0.1",
        listen_port=8080,
        admin_host=None,
        admin_port=None,
        upstream="http://127.0.0.1:8000",
        source_file="<dict>",
    )


def test_every_key() -> None:
    node = node_config_from_dict(
        "shield_1",
        {
            "role": "shield",
            "listen": "[::1]:0",
            "admin": "127.0.0.1:0",
            "upstream": "http://Origin.example:8000",
            "cache_memory": "1GiB",
            "max_object_size": "8MiB",
            "admin_token": "s3cret",
            "host_in_key": True,
            "honor_client_no_cache": True,
            "heuristic_fraction": 0,
            "heuristic_max": "1h",
            "stale_if_error_max": "10m",
            "failure_backoff_base": "500ms",
            "failure_backoff_max": "1m",
            "negative_ttl_5xx": 0,
            "ignore_query_params": ["CMCD", "Token", "cmcd"],
            "extra_ignore_query_params": ["Session"],
            "ignore_query_prefixes": ["UTM_"],
            "server_names": ["CDN.example.com.", "[::1]"],
            "upstream_max_connections": 8,
            "limits": {
                "max_head_bytes": "16KiB",
                "max_body_bytes": 0,
                "max_headers": 50,
                "header_timeout": "5s",
                "shutdown_grace": 0,
            },
            "upstream_timeouts": {"connect": "500ms", "idle": 30},
            "ttl": [
                {"match": "*.m4s", "ttl": "1d"},
                {"match": "/v/*", "ttl": "10s", "statuses": [404, 410], "force": True},
            ],
        },
        file="t.toml",
    )
    assert node.role == "shield"
    assert (node.listen_host, node.listen_port) == ("::1", 0)
    assert (node.admin_host, node.admin_port) == ("127.0.0.1", 0)
    assert node.upstream == "http://origin.example:8000"
    assert node.cache_memory == 1024**3
    assert node.max_object_bytes == 8 * 1024**2
    assert node.admin_token == "s3cret"
    assert node.host_in_key and node.honor_client_no_cache
    assert node.heuristic_fraction == 0.0
    assert node.heuristic_max == 3600.0
    assert (node.stale_if_error_max, node.failure_backoff_base, node.failure_backoff_max,
            node.negative_ttl_5xx) == (600.0, 0.5, 60.0, 0.0)
    assert node.ignore_query_params == {"cmcd", "token", "session"}
    assert node.ignore_query_prefixes == ("utm_",)
    assert node.server_names == ("cdn.example.com", "::1")
    assert node.upstream_max_connections == 8
    assert node.limits == Limits(
        max_head_bytes=16384, max_body_bytes=0, max_headers=50, header_timeout=5.0,
        shutdown_grace=0.0,
    )
    assert node.upstream_timeouts == UpstreamTimeouts(connect=0.5, idle=30.0)
    assert node.ttl_rules == (
        TtlRule("*.m4s", 86400.0),
        TtlRule("/v/*", 10.0, frozenset({404, 410}), force=True),
    )
    assert node.source_file == "t.toml"


def test_extra_ignore_query_params_add_to_the_defaults() -> None:
    node = node_config_from_dict(
        "a",
        {
            "listen": "127.0.0.1:1",
            "upstream": "http://o:80",
            "extra_ignore_query_params": ["Session"],
        },
    )
    assert node.ignore_query_params == DEFAULT_IGNORE_QUERY_PARAMS | {"session"}


def test_ipv6_upstream_keeps_brackets() -> None:
    node = node_config_from_dict("a", {"listen": "127.0.0.1:1", "upstream": "http://[::1]:8000"})
    assert node.upstream == "http://[::1]:8000"


@pytest.mark.parametrize(
    ("missing", "key", "message"),
    [
        ("listen", "node.edge-a.listen", "every node needs listen"),
        # a lone node has no parents to list, but the message names both ways to fetch
        ("upstream", "node.edge-a.parents", "an edge needs parents (or an upstream URL)"),
    ],
)
def test_missing_required_key(missing: str, key: str, message: str) -> None:
    table = {"listen": "127.0.0.1:8080", "upstream": "http://127.0.0.1:8000"}
    del table[missing]
    with pytest.raises(ConfigError) as info:
        node_config_from_dict("edge-a", table, file="t.toml")
    assert info.value.key == key
    assert message in info.value.message


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"cache_memroy": "1GiB"}, "node.edge-a.cache_memroy",
         'unknown key "cache_memroy": did you mean "cache_memory"?'),
        ({"limits": {"max_conections": 5}}, "node.edge-a.limits.max_conections",
         'did you mean "max_connections"?'),
        ({"upstream_timeouts": {"firstbyte": "1s"}}, "node.edge-a.upstream_timeouts.firstbyte",
         'did you mean "first_byte"?'),
        ({"ttl": [{"match": "*", "ttl": 1, "stauses": [404]}]}, "node.edge-a.ttl[0].stauses",
         'did you mean "statuses"?'),
        ({"zzz": 1}, "node.edge-a.zzz",
         "allowed keys are access_log, access_log_buffer, access_log_format"),
    ],
)
def test_unknown_keys_are_errors(table: dict[str, Any], key: str, message: str) -> None:
    err = node_error(table)
    assert err.key == key
    assert message in err.message


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"host_in_key": "yes"}, "node.edge-a.host_in_key",
         'expected a boolean (true or false), got string "yes"'),
        ({"honor_client_no_cache": 1}, "node.edge-a.honor_client_no_cache",
         "expected a boolean (true or false), got integer 1"),
        ({"role": "edg"}, "node.edge-a.role", 'unknown role "edg": did you mean "edge"?'),
        ({"role": 3}, "node.edge-a.role", "expected a string (edge | regional | shield)"),
        ({"heuristic_fraction": 1.5}, "node.edge-a.heuristic_fraction",
         "must be between 0 and 1, got 1.5"),
        ({"heuristic_fraction": "0.1"}, "node.edge-a.heuristic_fraction",
         'expected a number between 0 and 1, got string "0.1"'),
        ({"upstream_max_connections": 0}, "node.edge-a.upstream_max_connections",
         "must be at least 1, got 0"),
        ({"upstream_max_connections": 2.0}, "node.edge-a.upstream_max_connections",
         "expected an integer, got number 2.0"),
        ({"cache_memory": "lots"}, "node.edge-a.cache_memory", 'bad size "lots"'),
        ({"max_object_size": "1XB"}, "node.edge-a.max_object_size", 'bad size "1XB"'),
        ({"heuristic_max": "soon"}, "node.edge-a.heuristic_max", 'bad duration "soon"'),
        ({"admin": "localhost"}, "node.edge-a.admin", "missing port"),
        ({"ignore_query_params": "cmcd"}, "node.edge-a.ignore_query_params",
         'expected an array of strings, got string "cmcd"'),
        ({"ignore_query_params": ["ok", 3]}, "node.edge-a.ignore_query_params[1]",
         "expected a string, got integer 3"),
        ({"extra_ignore_query_params": [""]}, "node.edge-a.extra_ignore_query_params[0]",
         "must be non-empty"),
        ({"ignore_query_prefixes": ["a=b"]}, "node.edge-a.ignore_query_prefixes[0]",
         'bad prefix "a=b"'),
        ({"server_names": ["cdn.example.com:8080"]}, "node.edge-a.server_names[0]",
         "without a port"),
        ({"server_names": ["not a host"]}, "node.edge-a.server_names[0]", "not a host name"),
        ({"admin_token": ""}, "node.edge-a.admin_token", "must not be empty"),
        ({"admin_token": "two words"}, "node.edge-a.admin_token", "must not contain spaces"),
        ({"admin_token": 123}, "node.edge-a.admin_token", "expected a string, got integer 123"),
        ({"failure_backoff_base": 0}, "node.edge-a.failure_backoff_base",
         "must be larger than 0"),
        ({"failure_backoff_max": "0s"}, "node.edge-a.failure_backoff_max",
         "must be larger than 0"),
        ({"negative_ttl_5xx": "soon"}, "node.edge-a.negative_ttl_5xx", 'bad duration "soon"'),
        ({"stale_if_error_max": -1}, "node.edge-a.stale_if_error_max", ""),
        ({"limits": {"max_headers": 0}}, "node.edge-a.limits.max_headers",
         "must be at least 1"),
        ({"limits": {"max_head_bytes": 0}}, "node.edge-a.limits.max_head_bytes",
         "must be larger than 0"),
        ({"limits": {"max_body_bytes": "64XB"}}, "node.edge-a.limits.max_body_bytes",
         'bad size "64XB"'),
        ({"limits": {"idle_timeout": "0s"}}, "node.edge-a.limits.idle_timeout",
         "timeout must be larger than 0"),
        ({"limits": {"send_timeout": "forever"}}, "node.edge-a.limits.send_timeout",
         'bad duration "forever"'),
        ({"limits": {"max_pipelined": True}}, "node.edge-a.limits.max_pipelined",
         "expected an integer, got boolean true"),
        ({"limits": 5}, "node.edge-a.limits", "expected a table"),
        ({"upstream_timeouts": {"connect": 0}}, "node.edge-a.upstream_timeouts.connect",
         "timeout must be larger than 0"),
        ({"ttl": "1d"}, "node.edge-a.ttl", "expected an array of tables ([[node.edge-a.ttl]]"),
        ({"ttl": [{"ttl": "1d"}]}, "node.edge-a.ttl[0].match", "every TTL rule needs match"),
        ({"ttl": [{"match": "*"}]}, "node.edge-a.ttl[0].ttl", "every TTL rule needs match"),
        ({"ttl": [{"match": "", "ttl": 1}]}, "node.edge-a.ttl[0].match", "must not be empty"),
        ({"ttl": [{"match": 5, "ttl": 1}]}, "node.edge-a.ttl[0].match", "got integer 5"),
        ({"ttl": [{"match": "meta.json", "ttl": 1}]}, "node.edge-a.ttl[0].match",
         'can never match: it is matched against the whole request path, which starts with "/"; '
         'did you mean "*/meta.json"?'),
        ({"ttl": [{"match": "*", "ttl": "1x"}]}, "node.edge-a.ttl[0].ttl", 'bad duration "1x"'),
        ({"ttl": [{"match": "*", "ttl": 1, "statuses": [200, 99]}]},
         "node.edge-a.ttl[0].statuses[1]", "must be 100..599, got 99"),
        ({"ttl": [{"match": "*", "ttl": 1, "statuses": []}]}, "node.edge-a.ttl[0].statuses",
         "at least one status code"),
        ({"ttl": [{"match": "*", "ttl": 1, "statuses": 404}]}, "node.edge-a.ttl[0].statuses",
         "expected an array of status codes"),
        ({"ttl": [{"match": "*", "ttl": 1}, {"match": "*", "ttl": 1, "force": "yes"}]},
         "node.edge-a.ttl[1].force", 'expected a boolean (true or false), got string "yes"'),
    ],
)
def test_bad_values_name_the_key(table: dict[str, Any], key: str, message: str) -> None:
    err = node_error(table)
    assert err.key == key
    assert message in err.message
    assert str(err).startswith(f"t.toml: {key}: ")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://origin:443", "https is not supported, use an http:// URL"),
        ("origin:8000", 'missing http://, write "http://origin:8000"'),
        ("ftp://origin:21", "ftp is not supported"),
        ("http://origin", 'missing port (write "http://origin:80" for the default)'),
        ("http://:8000", "missing host"),
        ("http://origin:8000/videos", 'path "/videos" is not allowed'),
        ("http://origin:8000/?a=1", "no query or fragment"),
        ("http://user:pw@origin:8000", "credentials are not allowed"),
        ("http://origin:99999", "bad upstream URL"),
        ("http://bad_host!:80", "bad host"),
    ],
)
def test_bad_upstream(url: str, message: str) -> None:
    err = node_error({"upstream": url})
    assert err.key == "node.edge-a.upstream"
    assert message in err.message


def test_upstream_must_be_a_string() -> None:
    err = node_error({"upstream": 8000})
    assert err.message.startswith("expected a URL string")


def test_bad_node_name() -> None:
    with pytest.raises(ConfigError) as info:
        node_config_from_dict("edge a", {"listen": "127.0.0.1:1", "upstream": "http://o:80"})
    assert info.value.key == "node.edge a"
    assert "use letters, digits, - and _" in info.value.message


def test_listen_equal_to_admin_in_one_node() -> None:
    err = node_error({"admin": "127.0.0.1:8080"})
    assert err.key == "node.edge-a.admin"
    assert 'node "edge-a" uses 127.0.0.1:8080 for both listen and admin' in err.message


def test_port_zero_never_clashes() -> None:
    node = node_config_from_dict(
        "a", {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0", "upstream": "http://o:80"}
    )
    assert node.listen_port == node.admin_port == 0


# --- admin token from the environment -----------------------------------------------------------


def test_admin_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELCDN_TEST_TOKEN", "abc123")
    node = node_config_from_dict(
        "a",
        {
            "listen": "127.0.0.1:1",
            "upstream": "http://o:80",
            "admin_token_env": "REELCDN_TEST_TOKEN",
        },
    )
    assert node.admin_token == "abc123"


def test_admin_token_env_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REELCDN_TEST_TOKEN", raising=False)
    err = node_error({"admin_token_env": "REELCDN_TEST_TOKEN"})
    assert err.key == "node.edge-a.admin_token_env"
    assert "environment variable REELCDN_TEST_TOKEN is not set" in err.message


def test_admin_token_env_explicit_environ() -> None:
    node = node_config_from_dict(
        "a",
        {"listen": "127.0.0.1:1", "upstream": "http://o:80", "admin_token_env": "TOK"},
        environ={"TOK": "t0k"},
    )
    assert node.admin_token == "t0k"
    err = node_error({"admin_token_env": "TOK"}, environ={"TOK": ""})
    assert err.key == "node.edge-a.admin_token_env"
    assert "must not be empty" in err.message


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"admin_token_env": "1BAD"}, "is not an environment variable name"),
        ({"admin_token_env": ["X"]}, "expected the name of an environment variable"),
        ({"admin_token": "a", "admin_token_env": "X"}, "either admin_token or admin_token_env"),
    ],
)
def test_admin_token_env_errors(table: dict[str, Any], message: str) -> None:
    err = node_error(table, environ={"X": "x"})
    assert err.key == "node.edge-a.admin_token_env"
    assert message in err.message


# --- play counts (plays_*) ---------------------------------------------------------------------


def test_plays_keys() -> None:
    node = node_config_from_dict(
        "a",
        {"listen": "127.0.0.1:1", "upstream": "http://o:80",
         "plays_url": "https://origin.example/api/v1/plays", "plays_token_env": "TOK",
         "plays_flush_interval": "2s", "plays_max_pending": "1MiB"},
        environ={"TOK": "s3cret"},
    )
    assert (node.plays_url, node.plays_token) == ("https://origin.example/api/v1/plays", "s3cret")
    assert (node.plays_flush_interval, node.plays_max_pending) == (2.0, 1 << 20)
    off = node_config_from_dict("a", {"listen": "127.0.0.1:1", "upstream": "http://o:80",
                                      "plays_url": ""})
    assert off.plays_url is None and off.plays_flush_interval == 5.0


def test_plays_node_name_fits_the_batch_id() -> None:
    name = "e" * 65
    with pytest.raises(ConfigError, match="longer than 64 characters") as info:
        node_config_from_dict(name, {"listen": "127.0.0.1:1", "upstream": "http://o:80",
                                     "plays_url": "http://o/plays", "plays_token": "t"})
    assert info.value.key == f"node.{name}.plays_url"


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"plays_url": "ftp://o/plays", "plays_token": "t"}, "plays_url",
         "use an http:// or https:// URL"),
        ({"plays_url": "http:///plays", "plays_token": "t"}, "plays_url", "missing host"),
        ({"plays_url": "http://u:p@o/plays", "plays_token": "t"}, "plays_url",
         "credentials are not allowed"),
        ({"plays_url": 5}, "plays_url", "expected a URL"),
        ({"plays_url": "http://o/plays"}, "plays_url", "needs a token: set plays_token"),
        ({"plays_token": "a b"}, "plays_token", "without spaces"),
        ({"plays_token": ""}, "plays_token", "must not be empty"),
        ({"plays_token_env": "NOPE"}, "plays_token_env", "NOPE is not set"),
        ({"plays_token": "a", "plays_token_env": "X"}, "plays_token_env",
         "either plays_token or plays_token_env"),
        ({"plays_flush_interval": 0}, "plays_flush_interval", "must be larger than 0"),
        ({"plays_flush_interval": "soon"}, "plays_flush_interval", ""),
        ({"plays_max_pending": 0}, "plays_max_pending", "must be larger than 0"),
    ],
)
def test_plays_key_errors(table: dict[str, Any], key: str, message: str) -> None:
    err = node_error(table, environ={"X": "x"})
    assert err.key == f"node.edge-a.{key}"
    assert message in err.message


# --- files --------------------------------------------------------------------------------------


def test_minimal_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    nodes = load_config_file(path)
    assert list(nodes) == ["edge-a"]
    assert nodes["edge-a"].source_file == str(path)
    assert load_node_config(str(path), "edge-a") == nodes["edge-a"]


def test_nodes_keep_file_order(tmp_path: Path) -> None:
    text = "\n".join(
        f'[node.{name}]\nlisten = "127.0.0.1:{port}"\nupstream = "http://o:80"\n'
        for name, port in (("zeta", 1), ("alpha", 2), ("mid_1", 3))
    )
    assert list(load_config_file(write(tmp_path, text))) == ["zeta", "alpha", "mid_1"]


def test_defaults_apply_unless_the_node_sets_the_key(tmp_path: Path) -> None:
    text = """
[defaults]
upstream = "http://127.0.0.1:8000"
cache_memory = "1GiB"
role = "regional"
admin_token = "shared"

[defaults.limits]
max_connections = 500
idle_timeout = "30s"

[[defaults.ttl]]
match = "*.m4s"
ttl = "1d"

[node.a]
listen = "127.0.0.1:8081"

[node.b]
listen = "127.0.0.1:8082"
cache_memory = "2GiB"
upstream = "http://127.0.0.1:9000"
admin_token_env = "B_TOKEN"

[node.b.limits]
idle_timeout = "5s"

[[node.b.ttl]]
match = "*.m3u8"
ttl = "2s"
"""
    nodes = load_config_file(write(tmp_path, text), environ={"B_TOKEN": "btoken"})
    a, b = nodes["a"], nodes["b"]
    assert a.upstream == "http://127.0.0.1:8000"
    assert a.cache_memory == 1024**3
    assert a.role == b.role == "regional"
    assert a.admin_token == "shared"
    assert a.limits == Limits(max_connections=500, idle_timeout=30.0)
    assert a.ttl_rules == (TtlRule("*.m4s", 86400.0),)
    assert b.upstream == "http://127.0.0.1:9000"
    assert b.cache_memory == 2 * 1024**3
    assert b.admin_token == "btoken"  # the node's env token beats the default literal token
    # limits merge field by field: max_connections from defaults, idle_timeout from the node
    assert b.limits == Limits(max_connections=500, idle_timeout=5.0)
    # ttl rules are one value: the node's list replaces the default list
    assert b.ttl_rules == (TtlRule("*.m3u8", 2.0),)


def test_error_in_defaults_names_the_defaults_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[defaults]\ncache_memory = "1ZB"\n' + MINIMAL)
    assert err.key == "defaults.cache_memory"
    assert 'bad size "1ZB"' in err.message


def test_unknown_key_in_defaults(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[defaults]\nheuristic_fractoin = 0.2\n" + MINIMAL)
    assert err.key == "defaults.heuristic_fractoin"
    assert 'did you mean "heuristic_fraction"?' in err.message


def test_bad_value_in_file_names_file_and_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + 'cache_memory = "256XB"\n')
    assert err.key == "node.edge-a.cache_memory"
    assert str(err).endswith(
        'node.edge-a.cache_memory: bad size "256XB": use a number with B, KiB, MiB, GiB, KB, MB, GB'
    )


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[nodes.a]\nlisten = 1\n" + MINIMAL)
    assert err.key == "nodes"
    assert 'did you mean "node"?' in err.message


def test_node_key_outside_a_node_table(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[node]\nlisten = "127.0.0.1:80"\n')
    assert err.key == "node.listen"
    assert "must be inside a node's table" in err.message


def test_bad_node_name_in_file(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[node."edge a"]\nlisten = "127.0.0.1:1"\nupstream = "http://o:80"\n')
    assert err.key == "node.edge a"
    assert "use letters, digits, - and _" in err.message


def test_defaults_must_be_a_table(tmp_path: Path) -> None:
    err = load_error(tmp_path, "defaults = 3\n" + MINIMAL)
    assert err.key == "defaults"
    assert "expected a table ([defaults]), got integer 3" in err.message


def test_missing_listen_in_file(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[node.a]\nupstream = "http://o:80"\n')
    assert err.key == "node.a.listen"
    assert "missing" in err.message


def test_missing_upstream_in_file(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[node.a]\nlisten = "127.0.0.1:1"\n')
    assert err.key == "node.a.parents"
    assert "missing: an edge needs parents (or an upstream URL)" in err.message


@pytest.mark.parametrize("text", ["", "[defaults]\nrole = 'edge'\n", "[node]\n"])
def test_file_without_nodes(tmp_path: Path, text: str) -> None:
    err = load_error(tmp_path, text)
    assert err.key == ""
    assert "no nodes" in err.message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path / "missing.toml")
    assert info.value.file == str(tmp_path / "missing.toml")
    assert "cannot read the config file" in info.value.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cdn.toml"
    path.write_bytes(b'[node.a]\nlisten = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert "not UTF-8" in info.value.message


def test_toml_syntax_error_has_line_and_text(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + "cache_memory 256MiB\n")
    assert err.key == ""
    assert "TOML syntax error at line 5" in err.message
    assert "Expected '='" in err.message
    assert err.message.endswith(": cache_memory 256MiB")


def test_toml_duplicate_table_is_a_syntax_error(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + MINIMAL)
    assert "TOML syntax error at line 6" in err.message


def test_duplicate_listen_names_both_nodes(tmp_path: Path) -> None:
    text = MINIMAL + '[node.edge-b]\nlisten = "127.0.0.1:8080"\nupstream = "http://o:80"\n'
    err = load_error(tmp_path, text)
    assert err.key == "node.edge-b.listen"
    assert "127.0.0.1:8080" in err.message
    assert 'node "edge-a" (node.edge-a.listen)' in err.message
    assert 'node "edge-b" (node.edge-b.listen)' in err.message


def test_admin_of_one_node_is_listen_of_another(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + 'admin = "127.0.0.1:9080"\n'
        + '[node.edge-b]\nlisten = "127.0.0.1:9080"\nupstream = "http://o:80"\n'
    )
    err = load_error(tmp_path, text)
    assert err.key == "node.edge-b.listen"
    assert '"edge-a" (node.edge-a.admin)' in err.message


def test_admin_address_shared_through_defaults(tmp_path: Path) -> None:
    text = (
        '[defaults]\nadmin = "127.0.0.1:9080"\nupstream = "http://o:80"\n'
        '[node.a]\nlisten = "127.0.0.1:1"\n[node.b]\nlisten = "127.0.0.1:2"\n'
    )
    err = load_error(tmp_path, text)
    assert err.key == "node.b.admin"
    assert 'node "a" (defaults.admin) and node "b" (defaults.admin)' in err.message


def test_wildcard_listen_clashes_with_a_specific_address(tmp_path: Path) -> None:
    text = MINIMAL + '[node.edge-b]\nlisten = "0.0.0.0:8080"\nupstream = "http://o:80"\n'
    err = load_error(tmp_path, text)
    assert err.key == "node.edge-b.listen"
    assert "edge-a" in err.message


def test_ipv4_and_ipv6_wildcards_do_not_clash(tmp_path: Path) -> None:
    text = (
        '[node.a]\nlisten = "0.0.0.0:8080"\nupstream = "http://o:80"\n'
        '[node.b]\nlisten = "[::]:8080"\nupstream = "http://o:80"\n'
    )
    assert set(load_config_file(write(tmp_path, text))) == {"a", "b"}


def test_unknown_node_name_lists_the_nodes(tmp_path: Path) -> None:
    text = MINIMAL + '[node.shield]\nlisten = "127.0.0.1:8081"\nupstream = "http://o:80"\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_node_config(path, "edge-b")
    assert info.value.file == str(path)
    assert info.value.key == "node.edge-b"
    assert 'no node named "edge-b"' in info.value.message
    assert 'did you mean "edge-a"?' in info.value.message
    assert info.value.message.endswith("nodes are: edge-a, shield")


def test_env_token_unset_in_file(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + 'admin_token_env = "NOPE_UNSET"\n', environ={})
    assert err.key == "node.edge-a.admin_token_env"
    assert "NOPE_UNSET is not set" in err.message


def test_workers_key(tmp_path: Path) -> None:
    """``workers``: default 1, set in a node or [defaults], a whole number ≥ 1, errors named."""
    assert load_node_config(write(tmp_path, MINIMAL), "edge-a").workers == 1
    path = write(tmp_path, "[defaults]\nworkers = 3\n" + MINIMAL)
    assert load_node_config(path, "edge-a").workers == 3
    assert load_node_config(write(tmp_path, MINIMAL + "workers = 2\n"), "edge-a").workers == 2
    err = load_error(tmp_path, MINIMAL + "workers = 0\n")
    assert err.key == "node.edge-a.workers" and "must be at least 1, got 0" in err.message
    err = load_error(tmp_path, MINIMAL + 'workers = "2"\n')
    assert err.key == "node.edge-a.workers" and "expected an integer" in err.message


# --- the example --------------------------------------------------------------------------------


def test_example_file_loads() -> None:
    nodes = load_config_file(EXAMPLE)
    assert list(nodes) == ["edge-a"]
    node = load_node_config(EXAMPLE, "edge-a")
    assert node.role == "edge"
    assert (node.listen_host, node.listen_port) == ("127.0.0.1", 8080)
    assert (node.admin_host, node.admin_port) == ("127.0.0.1", 9080)
    assert node.upstream == "http://127.0.0.1:8000"
    assert node.source_file == str(EXAMPLE)
    rules = {rule.match: rule for rule in node.ttl_rules}
    assert rules["*.m4s"].ttl == rules["*.mp4"].ttl == 86400.0
    assert rules["*.m3u8"].ttl == 2.0
    assert "*/meta.json" not in rules  # its freshness is the origin's
    assert rules["*"] == TtlRule("*", 10.0, frozenset({404}))


# --- disk tier: cache_disk, cache_dir -----------------------------------------------------------


def test_disk_tier_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'cache_disk = "4GiB"\ncache_dir = "cache/disk"\n')
    node = load_config_file(path)["edge-a"]
    assert node.cache_disk == 4 * 1024**3
    assert node.cache_dir == str(tmp_path / "cache" / "disk")  # relative to the file
    assert not (tmp_path / "cache").exists()  # made by the node at start, not by the loader
    default = node_config_from_dict("edge-a", {"listen": "127.0.0.1:8080",
                                                "upstream": "http://127.0.0.1:8000"})
    assert (default.cache_disk, default.cache_dir) == (0, None)
    absolute = node_config_from_dict("edge-a", {
        "listen": "127.0.0.1:8080", "upstream": "http://127.0.0.1:8000",
        "cache_disk": 0, "cache_dir": str(tmp_path),
    })
    assert absolute.cache_dir == str(tmp_path)


def test_disk_tier_from_defaults(tmp_path: Path) -> None:
    text = '[defaults]\ncache_dir = "/var/cache/reelcdn"\ncache_disk = "1GiB"\n' + MINIMAL
    node = load_config_file(write(tmp_path, text))["edge-a"]
    assert (node.cache_disk, node.cache_dir) == (1024**3, "/var/cache/reelcdn")


def test_cache_disk_needs_cache_dir(tmp_path: Path) -> None:
    err = load_error(tmp_path, MINIMAL + 'cache_disk = "4GiB"\n')
    assert err.key == "node.edge-a.cache_dir"
    assert "node.edge-a.cache_disk asks for a disk tier" in err.message
    err = load_error(tmp_path, '[defaults]\ncache_disk = "1GiB"\n' + MINIMAL)
    assert err.key == "node.edge-a.cache_dir" and "defaults.cache_disk" in err.message


@pytest.mark.parametrize(
    ("table", "key", "fragment"),
    [
        ({"cache_disk": "4G"}, "node.edge-a.cache_disk", "ambiguous"),
        ({"cache_disk": -1}, "node.edge-a.cache_disk", "must not be negative"),
        ({"cache_dir": 5}, "node.edge-a.cache_dir", "expected a directory path"),
        ({"cache_dir": "  "}, "node.edge-a.cache_dir", "must not be empty"),
        ({"cache_disk": "1GiB", "cache_dir": __file__}, "node.edge-a.cache_dir",
         "exists and is not a directory"),
    ],
)
def test_disk_tier_key_errors(table: dict[str, Any], key: str, fragment: str) -> None:
    err = node_error(table)
    assert err.key == key and fragment in err.message
    assert str(err).startswith("t.toml: " + key)


# -- access log keys ---------------------------------------------------------------------------


def test_access_log_is_off_by_default_and_takes_stdout_or_a_path(tmp_path: Path) -> None:
    base: dict[str, Any] = {"listen": "127.0.0.1:8080", "upstream": "http://127.0.0.1:8000"}
    config = node_config_from_dict("edge-a", base)
    assert config.access_log is None and config.access_log_format == "json"
    assert config.access_log_sample == 1.0 and config.access_log_buffer == 16384
    assert node_config_from_dict("edge-a", {**base, "access_log": "off"}).access_log is None
    assert node_config_from_dict("edge-a", {**base, "access_log": "stdout"}).access_log == "stdout"
    path = tmp_path / "access.log"
    config = node_config_from_dict("edge-a", {
        **base, "access_log": str(path), "access_log_format": "combined",
        "access_log_sample": 0.25, "access_log_buffer": 1000,
    })
    assert config.access_log == str(path)
    assert (config.access_log_format, config.access_log_sample) == ("combined", 0.25)
    assert config.access_log_buffer == 1000


@pytest.mark.parametrize(("table", "words"), [
    ({"access_log": "/no/such/dir/access.log"}, "does not exist"),
    ({"access_log": 3}, '"off", "stdout" or a file path'),
    ({"access_log_format": "apache"}, '"json" or "combined"'),
    ({"access_log_sample": 1.5}, "between 0 and 1"),
    ({"access_log_buffer": 2}, "access_log_buffer"),
])
def test_bad_access_log_values_name_the_key(table: dict[str, Any], words: str) -> None:
    error = node_error(table)
    key = next(iter(table))
    assert key in str(error) and words in str(error)
