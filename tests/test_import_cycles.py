"""The product's modules import in one direction: ``scripts/import_cycles.py`` finds no cycle,
among the modules or among the design folders.

A lower layer never imports a higher one. The script reads the imports with ``ast``: lazy
imports inside functions count, and so do ``if TYPE_CHECKING:`` ones (a type hint is still a
dependency of whoever reads the module); the graph collapsed to the design folders (``edge/``,
``shield/``, ...) must be acyclic too, in the order of docs/architecture.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "import_cycles.py"


@pytest.fixture(scope="module")
def import_cycles() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import import_cycles
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return import_cycles


def test_no_import_cycle() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 import cycle(s)" in done.stdout
    assert " 0 folder cycle(s)" in done.stdout


def test_type_hint_imports_count(import_cycles: ModuleType) -> None:
    """An import under ``if TYPE_CHECKING:`` is an edge of the graph the check uses (and
    left out only with ``type_hints=False``); the real graph still has no cycle."""
    import ast

    source = (
        "from typing import TYPE_CHECKING\n"
        "from reelcdn.edge.fetch import contract\n"
        "if TYPE_CHECKING:\n"
        "    from reelcdn.edge.node import CacheNode\n"
        "else:\n"
        "    import reelcdn.edge.metrics\n"
    )
    tree = ast.parse(source)
    hinted = import_cycles._imports(tree, "reelcdn.edge.x", False, True)
    running = import_cycles._imports(tree, "reelcdn.edge.x", False, False)
    assert {"reelcdn.edge.node", "reelcdn.edge.metrics", "reelcdn.edge.fetch"} <= hinted
    assert "reelcdn.edge.node" not in running
    assert {"reelcdn.edge.metrics", "reelcdn.edge.fetch"} <= running
    graph = import_cycles.import_graph()
    assert graph == import_cycles.import_graph(type_hints=True)
    assert import_cycles.cycles(graph) == []
    assert import_cycles.folder_cycles(graph) == []


def test_the_folders_import_downward(import_cycles: ModuleType) -> None:
    """Every folder imports only folders before it in the documented order."""
    graph = import_cycles.import_graph()
    assert set(import_cycles.FOLDER_ORDER) == set(import_cycles.PACKAGES)
    assert import_cycles.upward_imports(graph) == []


def test_the_script_finds_a_cycle(import_cycles: ModuleType) -> None:
    """Control: the same graph code reports a cycle that is there."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles.cycles(graph) == [["a", "b", "c"]]
    assert import_cycles.cycles({"a": {"b"}, "b": set()}) == []


def test_the_script_finds_a_folder_cycle(
    import_cycles: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """Control: a planted import from manifests/ up to origin/ makes no module cycle but a
    folder cycle (origin/ imports manifests/, directly and through edge/), and the check fails
    on it alone."""
    graph = {module: set(targets) for module, targets in import_cycles.import_graph().items()}
    graph["reelcdn.manifests.text"].add("reelcdn.origin.probe")
    assert import_cycles.cycles(graph) == []
    [component] = import_cycles.folder_cycles(graph)  # with what lies between them
    assert {"manifests", "origin"} <= set(component)
    assert ("manifests", "origin") in import_cycles.upward_imports(graph)
    assert import_cycles.report(graph) == 1
    out = capsys.readouterr().out
    assert "folder cycle: " in out and "reelcdn.manifests.text -> reelcdn.origin.probe" in out
    assert " 0 import cycle(s)" in out and " 1 folder cycle(s)" in out


def test_folder_of(import_cycles: ModuleType) -> None:
    folder_of = import_cycles.folder_of
    assert folder_of("reelcdn.edge.video.host") == "edge"
    assert folder_of("reelcdn.extensions") == "extensions"
    assert folder_of("reelcdn.cli") == "reelcdn"
    assert folder_of("reelcdn") == "reelcdn"
