"""The house rules of DESIGN.md, checked on the source: imports point one way, no cycles, small files.

Imports are read with `ast` (plain and `from` imports, at any depth, plus module names passed
as strings to `importlib.import_module`), so a lazy import inside a function counts as much as
one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "hub", "serving", "demos", "trainers", "spaces")
MAY_IMPORT = {
    "tasks": set(),
    "hub": {"tasks"},
    "serving": {"tasks", "hub"},
    "demos": {"tasks", "hub", "serving"},
    "trainers": {"tasks", "hub", "serving"},
    "spaces": {"tasks", "hub", "serving", "demos"},
}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of our packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported_names(path: Path) -> set[str]:
    """Every module name `path` imports, however it imports it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == \
                "import_module":
            names.update(arg.value for arg in node.args if isinstance(arg, ast.Constant)
                         and isinstance(arg.value, str))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            # registries of module names that are imported later by importlib (hub.cli.COMMAND_MODULES)
            names.update(elt.value for elt in node.value.elts if isinstance(elt, ast.Constant)
                         and isinstance(elt.value, str) and elt.value.split(".")[0] in PACKAGES
                         and "." in elt.value)
    return names


def our_edges() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for imported in imported_names(path):
            if imported.split(".")[0] not in PACKAGES:
                continue
            while imported and imported not in known:  # `from pkg import name` names an attribute
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        edges[name] = targets
    return edges


def test_imports_point_one_way() -> None:
    wrong = sorted(f"{source} imports {target}" for source, targets in our_edges().items()
                   for target in targets
                   if target.split(".")[0] != source.split(".")[0]
                   and target.split(".")[0] not in MAY_IMPORT[source.split(".")[0]])
    assert wrong == []


def test_no_import_cycles() -> None:
    edges = our_edges()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("package", PACKAGES)
def test_files_stay_small(package: str) -> None:
    long = {str(path.relative_to(ROOT)): count for path in (ROOT / package).rglob("*.py")
            if (count := len(path.read_text().splitlines())) >= MAX_LINES}
    assert long == {}


def test_the_checker_sees_lazy_and_importlib_imports(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text("import importlib\n"
                      "def f():\n    from demos.app import build_app\n"
                      "    return importlib.import_module('trainers.sft')\n")
    assert {"demos.app", "demos.app.build_app", "trainers.sft"} <= imported_names(source)
