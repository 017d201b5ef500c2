"""The product's modules import in one direction: ``scripts/import_cycles.py`` finds no cycle.

A lower layer never imports a higher one. The script reads the imports with ``ast`` (lazy
imports inside functions count; ``if TYPE_CHECKING:`` ones, which never run, do not)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "import_cycles.py"


def test_no_import_cycle() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 import cycle(s)" in done.stdout


def test_the_script_finds_a_cycle(tmp_path: Path) -> None:
    """Control: the same graph code reports a cycle that is there."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import import_cycles
    finally:
        sys.path.remove(str(SCRIPT.parent))
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles.cycles(graph) == [["a", "b", "c"]]
    assert import_cycles.cycles({"a": {"b"}, "b": set()}) == []
