"""Print the import cycles among reelcdn's modules and its design folders; exit 1 on one.

    python scripts/import_cycles.py            # module cycles, then folder cycles
    python scripts/import_cycles.py --graph    # every module and what it imports
    python scripts/import_cycles.py --folders  # every design folder and what it imports

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a ``reelcdn`` module (relative ones resolved), at any depth of the file,
including imports inside functions — a lazy import is still a dependency, only a hidden one —
and imports under ``if TYPE_CHECKING:``. Those never run, but a type hint is still a dependency
of whoever reads the module (a person, a type checker, a reviewer's tool): a module typed
against a higher one cannot be understood or checked without it, so such a cycle is a cycle.
Break one with a ``typing.Protocol`` in the lower module that states what it needs.

Cycles are the strongly connected components of the graph with more than one module. The
same graph collapsed to the design folders (``edge/``, ``shield/``, ...: ``PACKAGES``) must
have none either: the folders are layers, lowest first ``FOLDER_ORDER``, and a folder imports
only folders before it.
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

# The design folders as layers, lowest first: each imports only folders before it
# (docs/architecture.md). ``reelcdn`` is the command line (cli, up, upload).
FOLDER_ORDER = ("extensions", "manifests", "edge", "shield", "origin", "loadtest", "reelcdn")


# Top-level Python imports of a .pyx file (its cimports are C-level, not module imports).
_COMMENT = re.compile(r"#[^\n]*")
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


def _imports(tree: ast.AST, module: str, is_package: bool, type_hints: bool) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not type_hints and isinstance(node, ast.If) and _is_type_checking(node.test):
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


def import_graph(type_hints: bool = True) -> dict[str, set[str]]:
    """Module → the product modules it imports (with ``type_hints`` False, leaving out the
    imports under ``if TYPE_CHECKING:``)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        text = path.read_text()
        if path.suffix == ".pyx":  # the Python-level imports of a Cython module
            bare = _COMMENT.sub("", text)  # a comment may hold a parenthesis
            text = "\n".join(match.group(0) for match in _PYX_IMPORT.finditer(bare))
        tree = ast.parse(text, filename=str(path))
        named = _imports(tree, module, path.stem == "__init__", type_hints)
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


def folder_of(module: str) -> str:
    """The design folder of a product module (``reelcdn.edge.node`` → ``edge``; the
    ``reelcdn`` package itself and its cli/up/upload → ``reelcdn``)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in PACKAGES and parts[1] != "reelcdn":
        return parts[1]
    return "reelcdn"


def folder_graph(graph: dict[str, set[str]]) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Folder → folder it imports → the module imports that make the edge (a folder's
    imports of itself left out)."""
    folders: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for module in sorted(graph):
        source = folder_of(module)
        edges = folders.setdefault(source, {})
        for target in sorted(graph[module]):
            if folder_of(target) != source:
                edges.setdefault(folder_of(target), []).append((module, target))
    return folders


def folder_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of the module graph collapsed to the design folders."""
    folders = folder_graph(graph)
    return cycles({source: set(edges) for source, edges in folders.items()})


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(folder, folder) pairs where a folder imports one after it in ``FOLDER_ORDER``."""
    rank = {name: i for i, name in enumerate(FOLDER_ORDER)}
    return [(source, target) for source, edges in sorted(folder_graph(graph).items())
            for target in sorted(edges) if rank[target] > rank[source]]


def report(graph: dict[str, set[str]]) -> int:
    """Print the module cycles and the folder cycles of ``graph``; 1 if there is either."""
    found = cycles(graph)
    for component in found:
        inner = {m: sorted(graph[m] & set(component)) for m in component}
        print("cycle:", "; ".join(f"{m} -> {', '.join(t)}" for m, t in inner.items()))
    folders = folder_graph(graph)
    found_folders = folder_cycles(graph)
    for component in found_folders:
        members = set(component)
        edges = []
        for source in component:
            for target, made_by in sorted(folders[source].items()):
                if target in members:
                    shown = ", ".join(f"{m} -> {t}" for m, t in made_by[:3])
                    more = f" (+{len(made_by) - 3} more)" if len(made_by) > 3 else ""
                    edges.append(f"{source} -> {target} [{shown}{more}]")
        print("folder cycle:", "; ".join(edges))
    print(f"{len(graph)} modules, {len(found)} import cycle(s); "
          f"{len(folders)} folders, {len(found_folders)} folder cycle(s)")
    return 1 if found or found_folders else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--graph", action="store_true", help="print the whole import graph")
    parser.add_argument("--folders", action="store_true",
                        help="print the graph collapsed to the design folders")
    args = parser.parse_args(argv)
    graph = import_graph()
    if args.graph:
        for module in sorted(graph):
            print(module, "->", ", ".join(sorted(graph[module])) or "-")
    if args.folders:
        folders = folder_graph(graph)
        for source in FOLDER_ORDER:
            edges = folders.get(source, {})
            print(source, "->", ", ".join(f"{t} ({len(edges[t])})" for t in sorted(edges))
                  or "-")
    return report(graph)


if __name__ == "__main__":
    raise SystemExit(main())
