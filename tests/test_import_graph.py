"""The packages import downward only and no module imports itself through others.

Layers, lowest first: common <- variants, datamodules <- analysis <- experiments <- benchmarks
(docs/DESIGN.md, "Dependency direction"). Read from the source with ast, imports inside
functions included, so a lazy import cannot hide a circle.
"""

from __future__ import annotations

import ast

from helpers import REPO

LAYERS = {"common": 0, "variants": 1, "datamodules": 1, "analysis": 2, "experiments": 3, "benchmarks": 4}


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for package in LAYERS:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def _imports(name: str, tree: ast.Module, known: set[str], is_package: bool) -> set[str]:
    """The repository modules `name` imports (a submodule itself when `from pkg import submodule`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            targets = submodules or [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imports(name, tree, known, is_package=(REPO / name.replace(".", "/") / "__init__.py").exists())
        for name, tree in modules.items()
    }


def test_packages_import_downward_only():
    upward = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        for target in targets
        if LAYERS[target.split(".")[0]] > LAYERS[name.split(".")[0]]
        or ({name.split(".")[0], target.split(".")[0]} == {"variants", "datamodules"})
    ]
    assert not upward, f"imports against the layering: {upward}"


def test_no_import_circles():
    graph = _graph()
    circles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circles.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles, f"import circles: {circles}"


def test_the_checks_see_a_circle():
    """The walker finds a circle when one exists (guards the tests above against passing vacuously)."""
    tree_a = ast.parse("from common import b\n")
    tree_b = ast.parse("import common.a\n")
    known = {"common", "common.a", "common.b"}
    assert _imports("common.a", tree_a, known, False) == {"common.b"}
    assert _imports("common.b", tree_b, known, False) == {"common.a"}
    assert len(_graph()) > 50
