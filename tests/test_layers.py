"""The house keeps its layers: imports run only downward, no cycles, no other package's private modules.

The module import graph is read from the source with `ast`, counting imports inside functions (they run too, only
later), and without `if TYPE_CHECKING:` blocks (they never run). The layers, lowest first:

    core          vtc's config, errors, ops, layout, ledger, state, the components, checkpoint IO, local loading,
                  the registry
    api           compress / unpatch / last_stats / save_pretrained / load_pretrained (vtc.api, vtc.pretrained);
                  the adapters (vtc.adapters) sit beside it, on the core's public names
    testing       the tiny-model zoo and the reference recipes (vtc.testing)
    applications  tasks, evaluate, bench, training, ablate, plots, report, the lmms-eval plugin (vtc.lmms)
    cli           the command line (vtc.cli)
    facade        `vtc/__init__.py`, the names users import

A module may import its own layer or a lower one. Scripts (benchmarks/, examples/) sit above everything and use
public names only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the import name it installs as (pyproject.toml's package-dir)
SOURCES = {"vtc": "vtc", "adapters": "vtc.adapters", "testing": "vtc.testing"}
SCRIPTS = ("benchmarks", "compat", "examples")

LAYERS = ("core", "api", "testing", "applications", "cli", "facade")
_APPLICATIONS = ("vtc.tasks", "vtc.evaluate", "vtc.bench", "vtc.training", "vtc.ablate", "vtc.plots", "vtc.report",
                 "vtc.lmms")
_API = ("vtc.api", "vtc.pretrained", "vtc.adapters")


def layer_of(module: str) -> str:
    if module == "vtc":
        return "facade"
    if module == "vtc.cli" or module.startswith("vtc.cli."):
        return "cli"
    for layer, prefixes in (("applications", _APPLICATIONS), ("api", _API), ("testing", ("vtc.testing",))):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    return "core"


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [*SOURCES[folder].split("."), *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    modules = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imported_names(path: Path, module: str) -> list[tuple[str, str | None]]:
    """`(module, name)` for every import statement that runs (`name` is None for `import module`)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(base, alias.name) for alias in node.names]
    return found


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports (a `from package import submodule` counts as the submodule)."""
    edges = {}
    for module, path in modules.items():
        targets = set()
        for base, name in imported_names(path, module):
            if name is not None and f"{base}.{name}" in modules:
                targets.add(f"{base}.{name}")
            elif base in modules:
                targets.add(base)
        targets.discard(module)
        edges[module] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_analysis_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from .sibling import x\n\ndef f():\n    from ..other import y\n    import vtc.api\n")
    assert imported_names(source, "vtc.tasks.mod") == [("vtc.tasks.sibling", "x"), ("vtc.other", "y"),
                                                      ("vtc.api", None)]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_counting_imports_inside_functions():
    edges = import_edges(package_modules())
    # the facade imports everything by design; nothing in the package imports it back (checked below)
    edges.pop("vtc")
    assert find_cycle(edges) is None


def test_every_import_runs_downward():
    modules = package_modules()
    upward = [f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
              for module, targets in import_edges(modules).items() for target in sorted(targets)
              if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module))]
    assert upward == []


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_imports(path: Path, module: str, own_package: str | None) -> list[str]:
    """The imports in `path` of a private module or name (`_x`) that lives outside the package `own_package`."""
    found = []
    for base, name in imported_names(path, module):
        if not (base == "vtc" or base.startswith("vtc.")):
            continue
        parts = [*base.split("."), *([name] if name else [])]
        private = next((i for i, part in enumerate(parts) if _is_private(part)), None)
        if private is not None and ".".join(parts[:private]) != own_package:
            found.append(f"{module} imports {'.'.join(parts)}")
    return found


def test_no_module_imports_another_packages_private_module_or_name():
    offenders = []
    for module, path in package_modules().items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        offenders += _private_imports(path, module, package)
    for folder in SCRIPTS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            offenders += _private_imports(path, f"{folder}.{path.stem}", None)
    assert offenders == []


def test_scripts_import_no_private_benchmark_names():
    """Benchmarks share one public module (`benchmarks/common.py`), never each other's private names."""
    offenders = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith(("vtc", "torch")):
                offenders += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                              if _is_private(a.name) or _is_private(node.module.split(".")[-1])]
    assert offenders == []


_FAMILIES = re.compile(r"llava|internvl|qwen|siglip|gemma|idefics|mistral|clip(?!_grad)", re.I)


def test_core_never_names_a_model_family():
    named = [f"{path.relative_to(ROOT)}:{number}" for path in sorted((ROOT / "vtc").rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if _FAMILIES.search(line)]
    assert named == []


@pytest.mark.parametrize("folder", [*SOURCES, *SCRIPTS])
def test_no_source_file_over_500_lines(folder):
    long = {str(path.relative_to(ROOT)): n for path in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}
