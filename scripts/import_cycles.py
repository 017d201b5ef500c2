"""Print the import cycles among reelcdn's modules; exit 1 when there is one.

    python scripts/import_cycles.py            # cycles, one per line
    python scripts/import_cycles.py --graph    # every module and what it imports

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a ``reelcdn`` module (relative ones resolved), at any depth of the file,
including imports inside functions — a lazy import is still a dependency, only a hidden one.
Imports under ``if TYPE_CHECKING:`` are left out: they exist for type hints only and never
run. Cycles are the strongly connected components of the graph with more than one module.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The design folders and the package each is installed as (setup.py maps them the same way).
PACKAGES = {
    "reelcdn": "reelcdn",
    "edge": "reelcdn.edge",
    "shield": "reelcdn.shield",
    "origin": "reelcdn.origin",
    "manifests": "reelcdn.manifests",
    "extensions": "reelcdn.extensions",
    "loadtest": "reelcdn.loadtest",
}


# Top-level Python imports of a .pyx file (its cimports are C-level, not module imports).
_PYX_IMPORT = re.compile(r"^(?:from\s+\S+\s+import\s+(?:\([^)]*\)|[^\n]+)|import\s+[^\n]+)",
                         re.MULTILINE)


def module_files() -> dict[str, Path]:
    """Module name → file, for every .py and .pyx of the product."""
    modules: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*")):
            if path.suffix not in (".py", ".pyx") or "node_modules" in path.parts:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the product modules it imports."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        text = path.read_text()
        if path.suffix == ".pyx":  # the Python-level imports of a Cython module
            text = "\n".join(match.group(0) for match in _PYX_IMPORT.finditer(text))
        tree = ast.parse(text, filename=str(path))
        named = _imports(tree, module, path.stem == "__init__")
        graph[module] = {name for name in named if name in files and name != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--graph", action="store_true", help="print the whole import graph")
    args = parser.parse_args(argv)
    graph = import_graph()
    if args.graph:
        for module in sorted(graph):
            print(module, "->", ", ".join(sorted(graph[module])) or "-")
    found = cycles(graph)
    for component in found:
        inner = {m: sorted(graph[m] & set(component)) for m in component}
        print("cycle:", "; ".join(f"{m} -> {', '.join(t)}" for m, t in inner.items()))
    print(f"{len(graph)} modules, {len(found)} import cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
