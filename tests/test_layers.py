"""The package's import rule (docs/architecture.md): lower layers never import higher ones, not
even inside a function, and no module imports one that imports it back (no circle)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "longshort"

# the rank of each top-level area; an import may only go to the same or a lower rank
LAYERS = {
    "errors": 0, "io": 0, "rundir": 0, "__init__": 0,
    "models": 1,
    "engines": 2,
    "evaluation": 3,
    "dialogue": 4,
    "thoughts": 5,
    "training": 6,
    "config": 7, "harness": 7,
    "cli": 8, "pipeline": 8, "serve": 8,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(["longshort", *parts])


def _imports(path: Path) -> set[str]:
    """Every longshort module `path` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("longshort")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("longshort"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    graph = {}
    for name, f in modules.items():
        graph[name] = {m for m in _imports(f) if m in modules and m != name}
    return graph


def test_every_area_has_a_layer():
    areas = {_area(m) for m in _graph()}
    assert areas <= set(LAYERS), f"areas without a layer: {sorted(areas - set(LAYERS))}"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for module, deps in _graph().items():
        for dep in deps:
            if LAYERS[_area(dep)] > LAYERS[_area(module)]:
                bad.append(f"{module} imports {dep}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circle():
    graph = _graph()
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for dep in graph.get(node, ()):
            # a package imports its own submodules (its __init__ re-exports): not a circle
            if dep.startswith(node + ".") or node.startswith(dep + "."):
                continue
            if seen.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]) if dep in path else f"{node} -> {dep}")
            elif dep not in seen:
                visit(dep, [*path, dep])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    assert not cycles, "\n".join(cycles[:10])
