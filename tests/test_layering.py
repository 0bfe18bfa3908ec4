"""The layout shows the architecture: imports run one way, reference <- properties <- engine <- fronts.

Read from the source (every ``import`` anywhere in a module, functions included; ``if TYPE_CHECKING:`` blocks
left out, they are annotations only), so a lazy import inside a function cannot hide an arrow that points up.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "attncheck": "attncheck",
    "properties": "attncheck.properties",
    "reference": "attncheck.reference",
    "benchmarks": "attncheck.benchmarks",
}
FRONTS = {"attncheck.cli", "attncheck.api", "attncheck._pytestplugin", "attncheck.__main__", "attncheck.bench.cli"}


def modules() -> dict[str, Path]:
    """Every product module by its import name (the links inside attncheck/ are read once, as their folders)."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder)
            if folder == "attncheck" and rel.parts[0] in FOLDERS:
                continue  # attncheck/properties -> ../properties and the like: read under their own folder
            parts = [package, *rel.with_suffix("").parts]
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """The attncheck modules a file imports, at any depth, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    hidden = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update({node.module, *(f"{node.module}.{alias.name}" for alias in node.names)})
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def layer(module: str) -> int:
    """0 reference, 1 properties, 2 the engine, 3 the fronts, 4 the benchmark files; errors sit beneath all."""
    if module == "attncheck.errors" or module == "attncheck":
        return -1
    for prefix, rank in (("attncheck.reference", 0), ("attncheck.properties", 1), ("attncheck.benchmarks", 4)):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return 3 if module in FRONTS else 2


MODULES = modules()
IS_TEST = ("test_", "conftest")


@functools.cache
def graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports (a ``from package import module`` counts as the module)."""
    return {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_the_layout_is_what_the_readme_says() -> None:
    for moved in ("probe", "plugin", "report", "render", "html", "options", "known_failures", "targets"):
        assert f"attncheck.{moved}" in MODULES, moved
    assert "attncheck.adapters.pytorch" in MODULES and "attncheck.bench.statistics" in MODULES
    assert "attncheck.properties.contract" in MODULES and "attncheck.properties.oracle" in MODULES
    engine_in_properties = [m for m in MODULES if m.startswith("attncheck.properties.") and layer(m) != 1]
    assert not engine_in_properties


@pytest.mark.parametrize("module", [m for m in MODULES if not m.rsplit(".", 1)[-1].startswith(IS_TEST)])
def test_imports_point_down(module: str) -> None:
    """A product module imports only its own layer or those beneath: reference <- properties <- engine <- fronts."""
    up = sorted(m for m in graph()[module] if layer(m) > layer(module))
    if module == "attncheck.bench.run":  # it locates the benchmark files to hand them to pytest, imports no code
        up = [m for m in up if m != "attncheck.benchmarks"]
    assert not up, f"{module} imports {up} from a layer above it"
    assert not any(m.startswith("tests") for m in imports(MODULES[module])), f"{module} imports a test module"
    tests = [m for m in graph()[module] if m.rsplit(".", 1)[-1].startswith(IS_TEST)]
    assert not tests, f"{module} imports the test module(s) {tests}"


def test_no_import_cycle() -> None:
    """No module reaches itself through the imports of product modules (depth-first search for a back edge)."""
    edges = {m: {d for d in deps if not d.rsplit(".", 1)[-1].startswith(IS_TEST)} for m, deps in graph().items()}
    edges = {m: d - {"attncheck"} for m, d in edges.items()}  # the package's lazy (PEP 562) re-exports
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
