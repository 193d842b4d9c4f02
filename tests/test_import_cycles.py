"""The edgedelta package has no import cycles. The graph holds every `import` statement in the
four folders of the design card (edgedelta/, export/ -> edgedelta.export, runtime/ ->
edgedelta.runtime, devices/ -> edgedelta.devices), including imports inside functions: a lazy
import that hides a cycle is still a cycle. A package's __init__ is a node of its own; importing
`a.b.c` is an edge to `a.b.c`, not to the packages above it (Python runs those first, so they
never close a cycle at import time)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Module imports that close a cycle between subpackages (edgedelta.delta, edgedelta.models, ...),
# each with the reason it stays: none.
KNOWN_PACKAGE_EDGES: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    """module name -> file, for every .py under the folders pyproject.toml maps into edgedelta."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in package_dir.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if package == "edgedelta" and parts and parts[0] in ("export", "runtime", "devices"):
                continue  # not a folder of edgedelta/ (mapped from the top level)
            modules[".".join((package, *parts))] = path
    return modules


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The edgedelta modules one import statement loads."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    found = set()
    for alias in node.names:
        child = f"{source}.{alias.name}"
        if child in modules:        # `from pkg import submodule`
            found.add(child)
        elif source in modules:     # `from module import name`
            found.add(source)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(tree):  # walks function bodies too
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(node, module, is_package, modules)
        graph[module] = edges - {module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), each
    printed as a closed path a -> b -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_in(graph, c) for c in components]


def _path_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside it)."""
    start = min(component)
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle found in strongly connected {sorted(component)}")


def test_finder_sees_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycles = find_cycles(graph)
    assert len(cycles) == 1 and set(cycles[0]) == {"a", "b", "c"} and cycles[0][0] == cycles[0][-1]
    source = "def f():\n    from .plan import x\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom))
    assert _targets(node, "edgedelta.delta.compress", False, {"edgedelta.delta.plan": Path()}) == {"edgedelta.delta.plan"}


def test_graph_covers_the_four_folders():
    graph = import_graph()
    for name in ("edgedelta.delta.compress", "edgedelta.export.exporter", "edgedelta.runtime.session",
                 "edgedelta.devices.planner"):
        assert name in graph
    assert "edgedelta.delta.config" in graph["edgedelta.delta.compress"]


def package_of(module: str) -> str:
    """edgedelta.delta.plan -> edgedelta.delta; a top-level module (edgedelta.errors) is its own node."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else module


def test_no_cycles_between_subpackages():
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        for target in targets:
            if (module, target) not in KNOWN_PACKAGE_EDGES and package_of(module) != package_of(target):
                graph.setdefault(package_of(module), set()).add(package_of(target))
                graph.setdefault(package_of(target), set())
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
