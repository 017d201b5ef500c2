"""The compiled extension modules and their pure-Python twins: same behaviour, selection, build.

Why these tests look the way they do:

* The pure twin (``reelcdn.extensions._ranges_py``) is the reference and
  ``tests/test_ranges.py`` is its specification, which runs on each twin (the ``twin``
  fixture of conftest.py). Its tables and strategies (``ranges_cases.py``) are used here again.
* Differential property tests then feed both twins the same random arguments, well-formed and
  junk, and require identical outcomes: equal results of identical types, the very same
  sentinel object, or the same exception type and message.
* The ``compiled`` parameter is skipped only when ``REELCDN_NO_EXTENSIONS`` disables the
  extensions. Otherwise a missing (or stale) compiled module fails: CI must prove that both
  twins ran, and a silent fallback would hide a broken build.
* The build tests run ``setup.py`` on a copy of the project with ``CC=false`` (and with Cython
  hidden) and check that the install still works on the pure twins.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import compiled_twin
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ranges_cases import MAX_RANGES_CASES, PARSE_CASES, headers, specs

from reelcdn import extensions
from reelcdn.extensions import _ranges_py as pure_ranges

ROOT = Path(__file__).resolve().parents[1]
COMPILED_NAME = "reelcdn.extensions._ranges"
PYX = ROOT / "extensions" / "_ranges.pyx"

TWIN_MODULE = "ranges"  # the ``twin`` and ``compiled`` fixtures (conftest.py) load its twins

# What the ranges module offers callers: each twin has all of it.
TWIN_NAMES = (
    "parse_range",
    "content_range",
    "unsatisfied_range",
    "multipart_plan",
    "new_boundary",
    "UNSATISFIABLE",
)


# ---------------------------------------------------------------------------------------------
# The twins
# ---------------------------------------------------------------------------------------------


def test_twins_share_api_and_sentinel(twin: ModuleType) -> None:
    for name in (*TWIN_NAMES, "RangeResult", "Unsatisfiable", "MAX_DIGITS"):
        assert hasattr(twin, name), name
    assert twin.UNSATISFIABLE is pure_ranges.UNSATISFIABLE
    assert twin.RangeResult is pure_ranges.RangeResult
    assert twin.parse_range(b"bytes=-0", 10) is pure_ranges.UNSATISFIABLE


# ---------------------------------------------------------------------------------------------
# (a) the tables of ranges_cases.py, with exact result types, on each twin
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "size", "expected"), PARSE_CASES)
def test_parse_table_identical(
    twin: ModuleType, header: bytes | str | None, size: int, expected: object
) -> None:
    """The table again, with exact result types (ints in tuples in a list) checked too."""
    result = twin.parse_range(header, size)
    assert_same(result, pure_ranges.parse_range(header, size))
    if expected is None or expected is pure_ranges.UNSATISFIABLE:
        assert result is expected
    else:
        assert result == expected


@pytest.mark.parametrize(("header", "max_ranges", "expected"), MAX_RANGES_CASES)
def test_max_ranges_table_identical(
    twin: ModuleType, header: bytes, max_ranges: int, expected: object
) -> None:
    result = twin.parse_range(header, 100, max_ranges=max_ranges)
    assert_same(result, pure_ranges.parse_range(header, 100, max_ranges=max_ranges))


# ---------------------------------------------------------------------------------------------
# (b) differential tests: pure vs compiled on the same random arguments
# ---------------------------------------------------------------------------------------------


def assert_same(got: object, want: object) -> None:
    """Equal values of identical types, recursively; singletons must be the same object."""
    if want is None or isinstance(want, pure_ranges.Unsatisfiable | bool):
        assert got is want
        return
    assert type(got) is type(want), (got, want)
    if isinstance(want, list | tuple):
        assert len(got) == len(want), (got, want)  # type: ignore[arg-type]
        for g, w in zip(got, want, strict=True):  # type: ignore[call-overload]
            assert_same(g, w)
    else:
        assert got == want


def outcome(func: Callable[..., object], *args: object, **kwargs: object) -> tuple[str, object]:
    """``("ok", result)`` or ``("raised", (exception type, message))``."""
    try:
        return "ok", func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any exception is an outcome to compare
        return "raised", (type(exc), str(exc))


def assert_same_outcome(
    compiled_func: Callable[..., object],
    pure_func: Callable[..., object],
    *args: object,
    **kwargs: object,
) -> None:
    got, want = outcome(compiled_func, *args, **kwargs), outcome(pure_func, *args, **kwargs)
    assert got[0] == want[0], (args, kwargs, got, want)
    if want[0] == "raised":
        assert got == want, (args, kwargs)
    else:
        assert_same(got[1], want[1])


DIFF_SETTINGS = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

sizes = st.one_of(
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=12_000),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64, 10**19 - 1, 10**19, -1, -(2**70)]),
)

well_formed = st.lists(specs, min_size=1, max_size=20).flatmap(headers)
near_miss = st.text(
    alphabet="0123456789-, \t=+xbytesBYTES;\u0661\u00b2\x00\x0b\xa0", max_size=40
).map(lambda tail: "bytes=" + tail)
header_text = st.one_of(well_formed, near_miss, st.text(max_size=40))
range_headers = st.one_of(
    header_text,
    header_text.map(lambda text: text.encode("utf-8")),
    st.binary(max_size=60),
    st.binary(max_size=30).map(lambda tail: b"bytes=" + tail),
    st.none(),
)
max_ranges_values = st.one_of(
    st.just(16),
    st.integers(min_value=-2, max_value=40),
    st.sampled_from([2**63, 2**64, -(2**63) - 1]),
)


@DIFF_SETTINGS
@given(header=range_headers, size=sizes, max_ranges=max_ranges_values)
@example(header=b"bytes=" + b"0-0," * 40, size=10, max_ranges=100)  # past the C stack buffer
@example(
    header="bytes=" + ",".join(f"{i * 3}-{i * 3}" for i in range(70)), size=10**6, max_ranges=2**64
)
@example(header=b"bytes=0-0", size=-1, max_ranges=16)
@example(header=None, size=-1, max_ranges=16)
def test_parse_range_differential(
    compiled: ModuleType, header: bytes | str | None, size: int, max_ranges: int
) -> None:
    assert_same_outcome(
        compiled.parse_range, pure_ranges.parse_range, header, size, max_ranges=max_ranges
    )


@pytest.mark.parametrize(
    ("header", "size", "max_ranges"),
    [
        (bytearray(b"bytes=0-1"), 10, 16),  # pure: TypeError from str.partition on bytearray
        (memoryview(b"bytes=0-1"), 10, 16),
        (123, 10, 16),
        (b"bytes=0-1", 10.0, 16),
        (b"bytes=0-1", True, 16),
        (b"bytes=0-1", "10", 16),
        (b"bytes=0-1,3-4", 10, 1.5),
        (b"bytes=0-1", 10, None),
        (b"bytes=0-1", -1.0, 16),
        (type("S", (str,), {})("bytes=0-1"), 10, 16),
        (type("B", (bytes,), {})(b"bytes=0-1"), 10, 16),
        ("bytes=0-1\ud800", 10, 16),  # a lone surrogate: not ASCII, never encoded
        (b"bytes=0-1", 2**100, 16),
        ("bytes=-5", 2**63 + 3, 16),
    ],
)
def test_parse_range_unusual_arguments(
    compiled: ModuleType, header: object, size: object, max_ranges: object
) -> None:
    assert_same_outcome(
        compiled.parse_range, pure_ranges.parse_range, header, size, max_ranges=max_ranges
    )


positions = st.one_of(
    st.integers(min_value=-3, max_value=2**40),
    st.integers(min_value=2**62, max_value=2**65),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, 10**19, 2**64 - 1, 2**64]),
)


@DIFF_SETTINGS
@given(start=positions, end=positions, size=positions)
@example(start=0, end=10**19, size=10**19)
@example(start=2**63 - 2, end=2**63 - 1, size=2**63 - 1)
def test_content_range_differential(compiled: ModuleType, start: int, end: int, size: int) -> None:
    assert_same_outcome(compiled.content_range, pure_ranges.content_range, start, end, size)
    assert_same_outcome(compiled.unsatisfied_range, pure_ranges.unsatisfied_range, size)


@pytest.mark.parametrize(
    "args", [(0.0, 1, 2), (0, 1.5, 2), (True, 2, 3), (0, 1, "2"), (None, 1, 2)]
)
def test_content_range_unusual_arguments(compiled: ModuleType, args: tuple[object, ...]) -> None:
    assert_same_outcome(compiled.content_range, pure_ranges.content_range, *args)
    assert_same_outcome(compiled.unsatisfied_range, pure_ranges.unsatisfied_range, args[-1])


BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
boundaries = st.one_of(
    st.just(b"bnd"),
    st.text(alphabet=BCHARS, max_size=72).map(str.encode),
    st.binary(max_size=72),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from([b"video/mp4", b"application/octet-stream", b"text/plain; charset=utf-8"]),
    st.binary(max_size=30),
)


@st.composite
def plans(draw: st.DrawFn) -> tuple[object, int]:
    """``(ranges, size)``: mostly parse_range results, sometimes anything range-shaped."""
    size = draw(st.one_of(st.integers(min_value=0, max_value=2**40), positions))
    if draw(st.booleans()) and size >= 0:
        parsed = pure_ranges.parse_range(draw(well_formed), size)
        if isinstance(parsed, list):
            return parsed, size
    pair = st.tuples(positions, positions)
    ranges = draw(
        st.one_of(
            st.lists(pair, max_size=6),
            st.lists(pair.map(list), min_size=1, max_size=3),  # pure unpacks lists as well
            st.lists(st.tuples(positions, positions, positions), min_size=1, max_size=2),
            st.tuples(pair),
        )
    )
    return ranges, size


@pytest.mark.slow
@DIFF_SETTINGS
@given(plan=plans(), content_type=content_types, boundary=boundaries)
@example(plan=([(0, 2**63 - 1)] * 3, 2**63 - 1), content_type=None, boundary=b"b")  # > 2**64
def test_multipart_plan_differential(
    compiled: ModuleType, plan: tuple[object, int], content_type: bytes | None, boundary: bytes
) -> None:
    ranges, size = plan
    assert_same_outcome(
        compiled.multipart_plan, pure_ranges.multipart_plan, ranges, size, content_type, boundary
    )


def test_multipart_plan_unusual_arguments(compiled: ModuleType) -> None:
    for args in [
        ([(0, 1)], 10, None, "abc"),
        ([(0, 1)], 10, "text/plain", b"abc"),
        ([(0, 1)], 10, bytearray(b"video/mp4"), b"abc"),
        ([(0, 1)], 10, None, bytearray(b"abc")),
        ([(0, 1)], 10.0, None, b"abc"),
        ([], 10, None, b""),
        (None, 10, None, b"abc"),
    ]:
        assert_same_outcome(compiled.multipart_plan, pure_ranges.multipart_plan, *args)
    # an iterator is consumed by a call: each twin gets its own
    assert_same(
        compiled.multipart_plan(iter([(0, 1), (3, 5)]), 10, None, b"abc"),
        pure_ranges.multipart_plan(iter([(0, 1), (3, 5)]), 10, None, b"abc"),
    )


def test_multipart_plan_keeps_the_callers_ints(twin: ModuleType) -> None:
    ranges = [(10**12, 10**12 + 5), (2 * 10**12, 2 * 10**12 + 1)]
    parts, _, _ = twin.multipart_plan(ranges, 3 * 10**12, None, b"b")
    for (_, start, end), (want_start, want_end) in zip(parts, ranges, strict=True):
        assert start is want_start and end is want_end


def test_new_boundary_same_bytes_for_same_randomness(
    compiled: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    for raw in (bytes(range(10)), b"\xff" * 10, b"\x00" * 10, bytes(range(246, 256))):
        monkeypatch.setattr(os, "urandom", lambda n, raw=raw: raw[:n])
        assert compiled.new_boundary() == pure_ranges.new_boundary() == raw.hex().encode()


# ---------------------------------------------------------------------------------------------
# (c) the selector
# ---------------------------------------------------------------------------------------------


def compiled_is_importable() -> bool:
    return importlib.util.find_spec(COMPILED_NAME) is not None


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REELCDN_NO_EXTENSIONS", "CC")}
    env.update(overrides)
    return env


PROBE = (
    "import json; from reelcdn import extensions as e; import reelcdn.edge.node as node; "
    "print(json.dumps({'impl': e.implementations(), 'compiled': e.RANGES_COMPILED, "
    "'module': e.ranges.__name__, 'node_uses_it': node.ranges is e.ranges, "
    "'reasons': e.FALLBACK_REASONS, 'file': e.__file__}))"
)

# An editable install of this checkout adds a finder that maps reelcdn.* to the checkout,
# after the normal path search: a module missing from a built tree (the compiled one) would be
# found in the checkout instead. Probes of a built tree drop that finder first.
WITHOUT_EDITABLE_FINDER = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
    "if not getattr(f, '__module__', '').startswith('__editable__')]; "
)


def probe(env: dict[str, str], cwd: Path, tree: Path | None = None) -> dict[str, Any]:
    """What the selector chose in a fresh interpreter (importing ``tree`` if given)."""
    code = PROBE
    if tree is not None:
        env = {**env, "PYTHONPATH": str(tree)}
        code = WITHOUT_EDITABLE_FINDER + PROBE
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("value", ["1", "yes", "true", " "])
def test_selector_no_extensions_forces_pure(value: str, tmp_path: Path) -> None:
    report = probe(clean_env(REELCDN_NO_EXTENSIONS=value), tmp_path)
    assert report["impl"]["ranges"] == "pure"
    assert set(report["impl"].values()) == {"pure"}  # every module, not only ranges
    assert report["compiled"] is False
    assert report["module"] == "reelcdn.extensions._ranges_py"
    assert report["node_uses_it"] is True
    assert report["reasons"] == dict.fromkeys(report["impl"], "REELCDN_NO_EXTENSIONS")


@pytest.mark.slow
@pytest.mark.parametrize("value", [None, "", "0"])
def test_selector_prefers_compiled(value: str | None, tmp_path: Path) -> None:
    env = clean_env() if value is None else clean_env(REELCDN_NO_EXTENSIONS=value)
    if not compiled_is_importable():
        compiled_twin.load_compiled("ranges")  # skips under REELCDN_NO_EXTENSIONS, fails otherwise
        pytest.fail(f"{COMPILED_NAME} is not importable")
    report = probe(env, tmp_path)
    assert report["impl"]["ranges"] == "compiled"
    assert set(report["impl"].values()) == {"compiled"}  # every module is built
    assert report["compiled"] is True
    assert report["module"] == COMPILED_NAME
    assert report["node_uses_it"] is True
    assert report["reasons"] == {}


def test_selector_in_this_process() -> None:
    if extensions.NO_EXTENSIONS:
        assert extensions.ranges is pure_ranges
        assert extensions.implementations()["ranges"] == "pure"
    else:
        assert extensions.ranges is compiled_twin.load_compiled("ranges")
        assert extensions.implementations()["ranges"] == "compiled"
    assert extensions.RANGES_COMPILED is (extensions.ranges is not pure_ranges)


@pytest.mark.parametrize(
    ("value", "disabled"), [("", False), ("0", False), ("1", True), ("no", True), ("00", True)]
)
def test_no_extensions_values(value: str, disabled: bool) -> None:
    assert extensions._no_extensions({"REELCDN_NO_EXTENSIONS": value}) is disabled
    assert extensions._no_extensions({}) is False


# ---------------------------------------------------------------------------------------------
# (d) building without a C compiler (or without Cython) still installs, on the pure twins
# ---------------------------------------------------------------------------------------------

PROJECT_FILES = ["setup.py", "pyproject.toml", "README.md"]
PROJECT_DIRS = ["reelcdn", "edge", "shield", "origin", "manifests", "extensions", "loadtest"]
BUILD_TIMEOUT = 60  # seconds, per build command


def copy_project(dest: Path) -> Path:
    """The project's sources (no builds, binaries or generated C) copied under ``dest``."""
    dest.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.pyd", "build", "*.egg-info")
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


def run_build(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def binaries_under(path: Path) -> list[Path]:
    return [
        p for suffix in importlib.machinery.EXTENSION_SUFFIXES for p in path.rglob("*" + suffix)
    ]


def only_tree(path: Path, pattern: str) -> Path:
    (found,) = list(path.glob(pattern))
    return found


def cython_available() -> bool:
    return importlib.util.find_spec("Cython") is not None


@pytest.mark.slow
def test_build_without_c_compiler_falls_back(tmp_path: Path) -> None:
    """``CC=false``: the build warns, succeeds, ships no binary, and the pure twin is selected.

    With Cython installed here this is ``setup.py build`` (what a wheel build runs); without it,
    ``pip install --target`` in pip's isolated build environment, which installs Cython itself
    from ``[build-system] requires`` (as ``pip install .`` does), so the compiler path is the one
    tested either way.
    """
    src = copy_project(tmp_path / "src")
    env = clean_env(CC="false")
    if cython_available():
        proc = run_build([sys.executable, "setup.py", "build", "--build-base", "b"], src, env)
        tree = only_tree(src / "b", "lib*")
    else:
        tree = tmp_path / "target"
        proc = run_build(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-v",
                "--no-deps",
                "--disable-pip-version-check",
                "--no-input",
                "--target",
                str(tree),
                str(src),
            ],
            tmp_path,
            env,
        )
    log = proc.stdout + proc.stderr
    assert "WARNING: building reelcdn.extensions._ranges failed" in log, log[-3000:]
    assert "the pure-Python twin will be used" in log
    assert (tree / "reelcdn" / "extensions" / "__init__.py").exists()
    assert binaries_under(tree) == []
    report = probe(clean_env(), tmp_path, tree=tree)
    assert report["file"].startswith(str(tree)), report  # the build's tree, not this checkout
    assert set(report["impl"].values()) == {"pure"} and "ranges" in report["impl"]
    for reason in report["reasons"].values():
        assert reason.startswith("ModuleNotFoundError"), report


@pytest.mark.slow
def test_failed_in_place_build_removes_stale_binary(tmp_path: Path) -> None:
    """An editable install builds in place; if that fails, an older binary must not stay."""
    if not cython_available():
        pytest.skip("Cython is not installed in this environment (the in-place build needs it)")
    src = copy_project(tmp_path / "src")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    stale = src / "extensions" / f"_ranges{suffix}"
    stale.write_bytes(b"not a real binary")
    proc = run_build(
        [sys.executable, "setup.py", "build_ext", "--inplace"], src, clean_env(CC="false")
    )
    assert "removed the stale in-place build" in proc.stderr, proc.stderr[-3000:]
    assert not stale.exists()


@pytest.mark.slow
def test_build_without_cython_falls_back(tmp_path: Path) -> None:
    """No Cython at all: no extension is even attempted, the build succeeds with a warning."""
    src = copy_project(tmp_path / "src")
    hide_cython = (
        "import runpy, sys; "
        "sys.modules.update(dict.fromkeys(['Cython', 'Cython.Build', 'Cython.Distutils'])); "
        "sys.argv = ['setup.py', 'build', '--build-base', 'b']; "
        "runpy.run_path('setup.py', run_name='__main__')"
    )
    proc = run_build([sys.executable, "-c", hide_cython], src, clean_env())
    assert "WARNING: Cython is not installed" in proc.stderr, proc.stderr[-3000:]
    tree = only_tree(src / "b", "lib*")
    assert binaries_under(tree) == []
    report = probe(clean_env(), tmp_path, tree=tree)
    assert report["file"].startswith(str(tree)), report
    assert set(report["impl"].values()) == {"pure"} and "ranges" in report["impl"]
