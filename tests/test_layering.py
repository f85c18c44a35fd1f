"""Specification of dva's layering: the folder tree shows the architecture, and imports follow it.

- ``dva/core`` imports nothing from the other dva folders (components, plugins, finetune, ...).
- Nothing but the tests' helpers (``dva/testing``) imports ``dva/testing``.
- No two dva modules import each other, directly or through others (no import cycles), counting
  imports inside functions too: a lazy import is still a dependency.
- No function in ``dva/core`` is longer than 60 lines.

Run ``python tests/test_layering.py`` for the counts (cycles, upward imports, longest functions).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dva"
CORE_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """Every dva module by dotted name."""
    found = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def imports_of(file: Path, known: dict[str, Path]) -> set[str]:
    """The dva modules ``file`` imports anywhere in it (``from a import b`` counts ``a.b`` when it is a module)."""
    named: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named.add(node.module)
            named.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in named if name in known}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(file, known) - {name} for name, file in known.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports that go against the layers: the core reaching out, anything but tests' helpers reaching testing."""
    wrong = []
    for source, targets in graph.items():
        for target in targets:
            if source.startswith("dva.core") and not (target.startswith("dva.core") or target == "dva"):
                wrong.append((source, target))
            elif target.startswith("dva.testing") and not source.startswith("dva.testing"):
                wrong.append((source, target))
    return sorted(wrong)


def function_lengths(prefix: str = "dva") -> list[tuple[int, str]]:
    """(lines, "module:function") of every function under ``prefix``, longest first."""
    found = []
    for name, file in modules().items():
        if not name.startswith(prefix):
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
    return sorted(found, reverse=True)


def test_the_core_imports_nothing_from_other_dva_folders_and_only_testing_imports_testing():
    assert upward_imports(import_graph()) == []


def test_no_dva_modules_import_each_other_in_a_cycle():
    assert import_cycles(import_graph()) == []


def test_no_core_function_is_longer_than_sixty_lines():
    assert [entry for entry in function_lengths("dva.core") if entry[0] > CORE_FUNCTION_LINES] == []


if __name__ == "__main__":
    graph = import_graph()
    print(f"import cycles: {len(import_cycles(graph))}")
    for group in import_cycles(graph):
        print("  " + " <-> ".join(group))
    print(f"upward imports: {len(upward_imports(graph))}")
    for source, target in upward_imports(graph):
        print(f"  {source} -> {target}")
    print("longest functions:")
    for lines, name in function_lengths()[:10]:
        print(f"  {lines:4d}  {name}")
