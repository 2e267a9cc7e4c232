"""The house rules of cutlib's layout: no import cycles (imports inside functions count too) and no
file over 400 lines. A registry sits above the classes it names; reading a run does not import the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cutlib"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The cutlib modules ``path`` imports anywhere (top level, in functions, in classes)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # "from cutlib.data import city" imports the module cutlib.data.city
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_and_relative_imports_are_seen(tmp_path):
    pkg = tmp_path / "cutlib"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from cutlib.b import g\n    from . import c\n")
    known = {"cutlib.a", "cutlib.b", "cutlib.c"}
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        assert imports_of(pkg / "a.py", known) == {"cutlib.b", "cutlib.c"}
    finally:
        PACKAGE = saved


def test_cutlib_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_file_of_cutlib_is_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by concern): {long}"


def test_reading_a_run_does_not_import_the_trainer():
    graph = import_graph()

    def reaches(start: str, target: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == target:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    for reader in ("cutlib.runs", "cutlib.evaluate", "cutlib.translate", "cutlib.benchmarks", "cutlib.results"):
        assert not reaches(reader, "cutlib.train"), f"{reader} imports the trainer"


def test_the_model_registry_sits_above_the_models():
    graph = import_graph()
    for model in ("cutlib.models.cut", "cutlib.models.cyclegan", "cutlib.models.sincut"):
        assert "cutlib.models" not in graph[model]
        assert model in graph["cutlib.models"]
