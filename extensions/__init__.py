"""Hot-path modules compiled with Cython, each with a pure-Python twin, chosen once at import.

The pattern is aio-libs' multidict/yarl one (docs/architecture.md, "Extensions"):

* Every compiled module ``extensions/_<name>.pyx`` has a pure-Python twin that is the
  reference (``reelcdn.extensions._ranges_py`` for ``_ranges``, side by side in this folder,
  as yarl keeps ``_quoting_py.py`` beside ``_quoting_c.pyx``). Both have the same API and behaviour,
  down to the sentinel objects (the compiled one imports them from the twin) and the exceptions;
  ``tests/test_extensions.py`` runs the same cases and differential property tests on both.
* The choice is made here, once, at import: ``REELCDN_NO_EXTENSIONS`` set to anything but ``""``
  or ``"0"`` forces the twins (for debugging, profiling Python code, or checking that a bug is
  in the C path); otherwise the compiled module is used when it imports, and the twin when it
  does not (``ImportError``: built without Cython or a C compiler, see ``setup.py``). Callers
  import the chosen module object from here, e.g. ``from reelcdn.extensions import ranges``,
  and never choose again per call.
* :func:`implementations` tells which one runs, for logs and ``/health``; a missing compiled
  module is not an error (the twin is correct, only slower), so it is reported, not raised.

To add a module (docs/contributing.md, "Compiled twins"): write the twin first with its tests,
then ``_<name>.pyx`` importing the twin's constants/sentinels, a line in ``setup.py``'s
``CYTHON_MODULES``, a ``_select`` call below with its ``<NAME>_COMPILED`` flag, and tests that
run on both twins.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING

from reelcdn.extensions import _accesslog_py as _pure_accesslog
from reelcdn.extensions import _head_py as _pure_head
from reelcdn.extensions import _lru_py as _pure_lru
from reelcdn.extensions import _ranges_py as _pure_ranges
from reelcdn.extensions import _reader_py as _pure_reader

__all__ = [
    "ACCESSLOG_COMPILED",
    "HEAD_COMPILED",
    "LRU_COMPILED",
    "NO_EXTENSIONS",
    "RANGES_COMPILED",
    "READER_COMPILED",
    "accesslog",
    "head",
    "implementations",
    "lru",
    "ranges",
    "reader",
]


def _no_extensions(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``REELCDN_NO_EXTENSIONS`` forces the pure twins (any value but "" and "0")."""
    return environ.get("REELCDN_NO_EXTENSIONS", "") not in ("", "0")


NO_EXTENSIONS: bool = _no_extensions()

FALLBACK_REASONS: dict[str, str] = {}
"""Why a module runs its pure twin: ``"REELCDN_NO_EXTENSIONS"`` or the ``ImportError`` text."""


def _select(name: str, pure: ModuleType) -> ModuleType:
    """The compiled ``reelcdn.extensions._<name>`` if allowed and importable, else ``pure``."""
    if NO_EXTENSIONS:
        FALLBACK_REASONS[name] = "REELCDN_NO_EXTENSIONS"
        return pure
    try:
        return importlib.import_module(f"{__name__}._{name}")
    except ImportError as exc:
        FALLBACK_REASONS[name] = f"{type(exc).__name__}: {exc}"
        return pure


if TYPE_CHECKING:
    # Type checkers see the twin's precise signatures: it is the contract of both.
    from reelcdn.extensions import _ranges_py as ranges
else:
    ranges = _select("ranges", _pure_ranges)

RANGES_COMPILED: bool = ranges is not _pure_ranges
"""True when :data:`ranges` is the Cython module."""

if TYPE_CHECKING:
    from reelcdn.extensions import _lru_py as lru
else:
    lru = _select("lru", _pure_lru)

LRU_COMPILED: bool = lru is not _pure_lru
"""True when :data:`lru` (the store's LRU index) is the Cython module."""

if TYPE_CHECKING:
    from reelcdn.extensions import _head_py as head
else:
    head = _select("head", _pure_head)

HEAD_COMPILED: bool = head is not _pure_head
"""True when :data:`head` (response head building) is the Cython module."""

if TYPE_CHECKING:
    from reelcdn.extensions import _reader_py as reader
else:
    reader = _select("reader", _pure_reader)

READER_COMPILED: bool = reader is not _pure_reader
"""True when :data:`reader` (the request reader: llhttp callbacks and limits) is compiled."""

if TYPE_CHECKING:
    from reelcdn.extensions import _accesslog_py as accesslog
else:
    accesslog = _select("accesslog", _pure_accesslog)

ACCESSLOG_COMPILED: bool = accesslog is not _pure_accesslog
"""True when :data:`accesslog` (the access log's collector and line formatter) is compiled."""


def implementations() -> dict[str, str]:
    """``{"ranges": "compiled" | "pure", ...}``: what runs, for logs and ``/health``."""
    return {
        "ranges": "compiled" if RANGES_COMPILED else "pure",
        "lru": "compiled" if LRU_COMPILED else "pure",
        "head": "compiled" if HEAD_COMPILED else "pure",
        "reader": "compiled" if READER_COMPILED else "pure",
        "accesslog": "compiled" if ACCESSLOG_COMPILED else "pure",
    }
