"""The compiled twin of an ``extensions`` module, for tests that run on both twins.

Fails (never skips) when the module is missing, not an extension, or older than its ``.pyx``:
CI must prove both twins ran, and a silent fallback would hide a broken build. Skips only
when ``REELCDN_NO_EXTENSIONS`` asks for the pure twins alone.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from pathlib import Path
from types import ModuleType

import pytest

from reelcdn import extensions


def load_compiled(name: str) -> ModuleType:
    """``reelcdn.extensions._<name>``, checked as above."""
    if extensions.NO_EXTENSIONS:
        pytest.skip("REELCDN_NO_EXTENSIONS is set: only the pure twins are tested")
    module_name = f"reelcdn.extensions._{name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pytest.fail(
            f"{module_name} is not built ({exc}); build it with `pip install -e .` (needs "
            "Cython and a C compiler), or set REELCDN_NO_EXTENSIONS=1 to test the pure twins only"
        )
    path = Path(module.__file__ or "")
    assert path.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), path
    source = path.with_name(f"_{name}.pyx")
    if source.exists() and source.stat().st_mtime > path.stat().st_mtime:
        pytest.fail(f"{path.name} is older than {source.name}: rebuild with `pip install -e .`")
    return module
