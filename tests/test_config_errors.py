"""A file with several problems lists them all, each with its key and the line it is written
on (``FILE:LINE: key: problem``), rather than stopping at the first; a problem caused by
another (a check needing a value that did not parse) is not reported on top of it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from reelcdn.edge.config import ConfigError, ConfigErrors, load_topology
from reelcdn.edge.config.lines import key_lines, line_of
from reelcdn.origin.config import load_services

# Seven problems of seven kinds; each `# <-` marks the line its error must name.
SEVERAL = '''\
[defaults]
cache_memroy = "256MiB"                  # <- unknown key

[origin.main]
type = "fs"
root = "./origin"

[origin.spare]
type = "ftp"                             # <- an origin of a bad type
root = "/srv/spare"

[api]
listen = "127.0.0.1:8300"
max_sise = "1GiB"                        # <- a bad [api] key

[node.shield-1]
role = "shield"
listen = "127.0.0.1:8100"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "127.0.0.1:8200"
parents = ["shield-1"]
cache_memory = "12XB"                    # <- bad size

[node.edge-a]
listen = "localhost:99999"               # <- bad address
parents = ["regional-1"]
heuristic_max = "soon"                   # <- bad duration

[node.edge-b]
listen = "127.0.0.1:8081"
parents = [
  "regional-1",
  "regoinal-9",                          # <- a parent naming no node
]
'''

EXPECTED = [
    (2, "defaults.cache_memroy", 'unknown key "cache_memroy": did you mean "cache_memory"?'),
    (9, "origin.spare.type", 'unknown origin type "ftp"'),
    (14, "api.max_sise", 'unknown key "max_sise": did you mean "max_size"?'),
    (25, "node.regional-1.cache_memory", 'bad size "12XB"'),
    (28, "node.edge-a.listen", 'bad port "99999"'),
    (30, "node.edge-a.heuristic_max", 'bad duration "soon"'),
    (36, "node.edge-b.parents[1]", 'unknown parent "regoinal-9": did you mean "regional-1"?'),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cdn.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_marked_lines_are_where_the_expected_errors_point() -> None:
    marked = [i for i, line in enumerate(SEVERAL.splitlines(), 1) if "# <-" in line]
    assert marked == [line for line, _, _ in EXPECTED]


def test_a_file_with_several_errors_lists_them_all(tmp_path: Path) -> None:
    path = write(tmp_path, SEVERAL)
    with pytest.raises(ConfigErrors) as info:
        load_services(path)
    errors = info.value.errors
    assert [(e.line, e.key) for e in errors] == [(line, key) for line, key, _ in EXPECTED]
    for error, (_, _, fragment) in zip(errors, EXPECTED, strict=True):
        assert fragment in error.message
    rendered = str(info.value).splitlines()
    assert len(rendered) == len(EXPECTED)
    for text, (line, key, fragment) in zip(rendered, EXPECTED, strict=True):
        assert text.startswith(f"{path}:{line}: {key}: ")
        assert fragment in text
    # Still a ConfigError, naming the first problem found.
    assert isinstance(info.value, ConfigError)
    assert info.value.file == str(path) and info.value.key == "defaults.cache_memroy"


def test_the_node_loader_alone_lists_the_node_problems(tmp_path: Path) -> None:
    """A command that runs nodes only (reelcdn node, sign) reports every problem of the nodes
    and origins; the service sections are the origin services' to check."""
    with pytest.raises(ConfigErrors) as info:
        load_topology(write(tmp_path, SEVERAL))
    assert [e.key for e in info.value.errors] == [k for _, k, _ in EXPECTED if k != "api.max_sise"]


def test_no_follow_on_errors(tmp_path: Path) -> None:
    """A bad value is reported once: not again by the checks that need it."""
    text = '''\
[node.shield-1]
role = "sheild"
listen = "127.0.0.1:8100"
origins = ["main"]

[node.edge-a]
listen = "127.0.0.1:8080"
parents = 7

[node.edge-b]
listen = "127.0.0.1:99999"
upstream = "http://o:80"

[node.edge-c]
listen = "127.0.0.1:8082"
parents = ["shield-1"]

[origin.main]
type = "fs"
root = "/srv"
'''
    with pytest.raises(ConfigErrors) as info:
        load_topology(write(tmp_path, text))
    # Not reported: shield-1 listing origins while its role is unknown (only a shield may);
    # edge-a missing its parents; edge-c's parent being of the wrong kind.
    assert [(e.line, e.key) for e in info.value.errors] == [
        (2, "node.shield-1.role"), (8, "node.edge-a.parents"), (11, "node.edge-b.listen"),
    ]


def test_cross_node_checks_run_on_what_parsed(tmp_path: Path) -> None:
    text = '''\
[node.edge-a]
listen = "127.0.0.1:8080"
upstream = "http://o:80"
cache_memory = "lots"

[node.edge-b]
listen = "127.0.0.1:8080"
upstream = "http://o:80"
'''
    with pytest.raises(ConfigErrors) as info:
        load_topology(write(tmp_path, text))
    assert [(e.line, e.key) for e in info.value.errors] == [
        (4, "node.edge-a.cache_memory"), (7, "node.edge-b.listen"),
    ]
    assert "used by both" in info.value.errors[1].message


def test_problems_inside_nested_tables_and_rules_are_all_listed(tmp_path: Path) -> None:
    text = '''\
[node.edge-a]
listen = "127.0.0.1:8080"
upstream = "http://o:80"
limits = { idle_timeout = "x", max_headres = 5 }

[[node.edge-a.ttl]]
match = "*.m4s"
ttl = "1d"

[[node.edge-a.ttl]]
match = "*.m3u8"
ttl = "never"
'''
    with pytest.raises(ConfigErrors) as info:
        load_topology(write(tmp_path, text))
    assert [(e.line, e.key) for e in info.value.errors] == [
        (4, "node.edge-a.limits.idle_timeout"), (4, "node.edge-a.limits.max_headres"),
        (12, "node.edge-a.ttl[1].ttl"),
    ]


def test_a_missing_key_points_at_its_table(tmp_path: Path) -> None:
    text = '\n[node.edge-a]\nupstream = "http://o:80"\n'
    with pytest.raises(ConfigErrors) as info:
        load_topology(write(tmp_path, text))
    assert (info.value.line, info.value.key) == (2, "node.edge-a.listen")


def test_a_syntax_error_is_one_error_with_its_line(tmp_path: Path) -> None:
    text = SEVERAL.replace('max_sise = "1GiB"', "max_size 1GiB")
    path = write(tmp_path, text)
    with pytest.raises(ConfigErrors) as info:
        load_services(path)
    assert len(info.value.errors) == 1
    error = info.value.errors[0]
    assert error.line == 14 and error.key == ""
    assert str(info.value) == str(error)
    assert str(error).startswith(f"{path}:14: TOML syntax error at line 14, column")


def test_validate_prints_them_all_and_fails(tmp_path: Path) -> None:
    path = write(tmp_path, SEVERAL)
    result = subprocess.run([sys.executable, "-m", "reelcdn.cli", "validate", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"reelcdn: {len(EXPECTED)} config errors in {path}:"
    assert lines[1:] == [line for line in lines[1:] if line.startswith(f"{path}:")]
    for (line, key, fragment), shown in zip(EXPECTED, lines[1:], strict=True):
        assert shown.startswith(f"{path}:{line}: {key}: ") and fragment in shown


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("node", 3), ("node.a", 3), ("node.a.listen", 4), ("node.a.limits.idle_timeout", 5),
        ("node.a.parents", 6), ("node.a.parents[0]", 7), ("node.a.parents[1]", 8),
        ("node.a.tokens.keys.k1", 10), ("node.a.ttl[0].match", 15), ("node.a.ttl[1]", 17),
        ("node.a.ttl[1].ttl", 18), ("node.a.cache_dir", 3), ("node.a.ttl[1].force", 17),
        ("origin.main.type", 21), ("api.listen", None), ("nope", None), ("node.b", None),
    ],
)
def test_key_lines(key: str, line: int | None) -> None:
    text = '''\
# a comment with [not.a.table]

[node."a"]
listen = "127.0.0.1:1"  # with = and [brackets]
limits.idle_timeout = "5s"
parents = [
  "r1",  # ]
  "r2",
]
tokens = { format = "native", keys = { k1 = """a
[fake.table]
b""" } }
note = \'\'\'x = 1\'\'\'
[[node.a.ttl]]
match = "*.m4s"
ttl = 1979-05-27 07:32:00Z
[[node.a.ttl]]
ttl = "1d"

[origin.main]
type = "fs"
'''
    tomllib.loads(text)  # valid TOML: what the locator is for
    assert line_of(key_lines(text), key) == line
