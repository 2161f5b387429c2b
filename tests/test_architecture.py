"""The layout's rules (docs/architecture.md), read off the imports: packages import one way, core imports
torch alone, reports never torch, nothing below recipes imports recipes or the command line, and a
function-level import outside the command line says why it is one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "detoxrl"
PARTS = {p.stem for p in SRC.glob("*.py")} | {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
# What each package (or top-level module) may import, as docs/architecture.md draws it: the graph's edges
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "resources": {"errors"},
    "rundir": {"errors"},
    "core": set(),
    "config": {"errors"},
    "parallel": {"errors"},
    "data": {"config", "errors", "resources"},
    "metrics": {"config"},
    "engine": {"config", "core", "errors"},
    "models": {"config", "core", "engine", "errors", "resources"},
    "reports": {"config", "errors", "metrics", "rundir"},
    "rewards": {"config", "errors", "metrics", "models", "resources"},
    "training": {"config", "core", "engine", "errors", "models", "parallel", "rundir"},
    "evaluation": {
        "config",
        "core",
        "engine",
        "errors",
        "metrics",
        "models",
        "parallel",
        "reports",
        "rewards",
    },
    "recipes": PARTS - {"cli", "recipes", "__main__", "__init__"},
    "cli": {"config", "data", "errors", "models", "parallel", "recipes", "reports", "__init__"},
    "__main__": {"cli"},
    "__init__": set(),
}
STDLIB = set(sys.stdlib_module_names)


def _part(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> list[tuple[ast.AST, str]]:
    """Every import of a module as (node, imported module), function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node, node.module))
        elif isinstance(node, ast.Import):
            out += [(node, alias.name) for alias in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        part = _part(path)
        for _, module in _imports(path):
            if module.startswith("detoxrl."):
                target = module.split(".")[1]
                if target != part:
                    edges.setdefault(part, set()).add(target)
            elif module == "detoxrl" and part != "__init__":
                edges.setdefault(part, set()).add("__init__")
    return edges


def test_packages_import_only_what_the_layout_allows() -> None:
    wrong = {part: targets - ALLOWED[part] for part, targets in _graph().items() if targets - ALLOWED[part]}
    assert not wrong, f"imports against the layout (docs/architecture.md): {wrong}"


def test_the_package_graph_has_no_cycle() -> None:
    graph, order, state = _graph(), [], {}

    def visit(node: str, trail: tuple[str, ...]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join((*trail, node))}"
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            visit(target, (*trail, node))
        state[node] = "done"
        order.append(node)

    for node in sorted(graph):
        visit(node, ())
    assert set(graph) <= set(order)


def test_core_imports_torch_alone() -> None:
    for path in (SRC / "core").rglob("*.py"):
        outside = {m.split(".")[0] for _, m in _imports(path)} - STDLIB - {"torch", "detoxrl"}
        inside = {
            m for _, m in _imports(path) if m.startswith("detoxrl.") and not m.startswith("detoxrl.core")
        }
        assert not outside and not inside, (path.name, outside, inside)


def test_reports_never_import_torch() -> None:
    modules = ", ".join(
        f"detoxrl.reports.{p.stem}" for p in (SRC / "reports").glob("*.py") if p.stem != "__init__"
    )
    code = f"import sys, {modules}, detoxrl.rundir; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_a_function_level_import_outside_the_command_line_says_why(path: Path) -> None:
    if path.parent.name == "cli":  # its recipes, imported per verb: the module docstring says why
        return
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    assert "#" in lines[inner.lineno - 1], f"{path.name}:{inner.lineno} imports lazily, why?"


def test_the_public_api_resolves_and_importing_the_package_stays_light() -> None:
    import detoxrl

    assert all(getattr(detoxrl, name) is not None for name in detoxrl.__all__)
    code = "import sys, detoxrl, detoxrl.cli; sys.exit('torch' in sys.modules)"  # --help answers in 0.1 s
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
