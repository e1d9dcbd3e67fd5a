"""The import graph of st_leap: no circle; the layer loop, loading and backends stay clear of the CLI-side
helpers (data and model names: ``resources``) and of the report writers (``reporting``); and the file helpers
(``files``, a leaf) and the corpus reader (``corpus``) sit below the evaluation layer.

Every ``import st_leap...`` / ``from st_leap... import ...`` statement counts, at module level or inside a function
(a lazy import is still a dependency); ``from st_leap.pkg import name`` points at ``st_leap.pkg.name`` when that is a
module, else at ``st_leap.pkg``."""

from __future__ import annotations

import ast
from pathlib import Path

import st_leap

ROOT = Path(st_leap.__file__).resolve().parent
KEPT_APART = {
    "st_leap.model": {"st_leap.resources", "st_leap.reporting"},
    "st_leap.modules": {"st_leap.resources", "st_leap.reporting"},
    "st_leap.backends": {"st_leap.resources", "st_leap.reporting"},
}
#: Modules that import nothing from st_leap.
LEAVES = ("st_leap.files",)
#: Modules that reach nothing of ``st_leap.evaluation``, directly or through other st_leap modules.
BELOW_EVALUATION = ("st_leap.files", "st_leap.corpus")


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: st_leap modules it imports}`` over every ``.py`` file of the package."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def owner(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [owner(alias.name) for alias in node.names if alias.name.split(".")[0] == "st_leap"]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "st_leap":
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else owner(node.module)
                    for alias in node.names
                ]
            else:
                continue
            graph[name].update(target for target in targets if target != name)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through the modules it imports (``start`` itself not included
    unless a circle leads back to it)."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def in_package(modules: set[str], package: str) -> list[str]:
    """The modules of ``modules`` that are ``package`` or inside it, sorted."""
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"st_leap.model", "st_leap.modules", "st_leap.backends", "st_leap.cli.export"} <= set(graph)
    assert "st_leap.modules" in graph["st_leap.model"]


def test_find_cycle_finds_a_lazy_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_st_leap_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_loop_loading_and_backends_import_no_cli_helpers_or_writers():
    graph = import_graph()
    for module, forbidden in KEPT_APART.items():
        assert not graph[module] & forbidden, f"{module} imports {sorted(graph[module] & forbidden)}"


def test_reachable_follows_chains_into_a_package():
    graph = {"a": {"b"}, "b": {"pkg.sub"}, "pkg.sub": set(), "c": {"pkgx"}}
    assert reachable(graph, "a") == {"b", "pkg.sub"}
    assert in_package(reachable(graph, "a"), "pkg") == ["pkg.sub"]
    assert in_package(reachable(graph, "c"), "pkg") == []  # a name that only starts alike is another package


def test_file_helpers_and_corpus_sit_below_evaluation():
    graph = import_graph()
    for module in LEAVES:
        assert not graph[module], f"{module} imports {sorted(graph[module])}"
    for module in BELOW_EVALUATION:
        upward = in_package(reachable(graph, module), "st_leap.evaluation")
        assert not upward, f"{module} reaches the evaluation layer: {upward}"
