"""Every module of the benchmarks (``reelcdn.loadtest.bench``) imports: they run only by hand,
so nothing else would notice a module that broke on a move or a rename."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import reelcdn.loadtest.bench as bench

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(bench.__path__, prefix=bench.__name__ + ".")
)


def test_the_walk_finds_the_benchmarks() -> None:
    assert f"{bench.__name__}.s3_clients" in MODULES and len(MODULES) > 5


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str) -> None:
    importlib.import_module(name)
