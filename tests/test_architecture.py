"""The package's shape, read from the source with ``ast``: imports point down the layers, never in a circle.

The layers (docs/ARCHITECTURE.md draws them) are the table ``LAYERS``: a module may import modules of its own
layer or of layers below it. Imports inside functions count like any other.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# VCF_ARCH_ROOT points the checks at another copy of the package (the folder that holds vcf/).
ROOT = Path(os.environ.get("VCF_ARCH_ROOT", Path(__file__).resolve().parents[1]))
PACKAGE = ROOT / "vcf"

# Module-name prefix -> layer; the longest matching prefix decides.
LAYERS: dict[str, int] = {
    "vcf.version": 0,
    "vcf.errors": 0,
    "vcf.progress": 0,
    "vcf.sampling": 0,
    "vcf.model_kinds": 0,
    "vcf.io": 1,
    "vcf.models": 2,
    "vcf.run": 3,
    "vcf.stages": 4,
    "vcf.stages.merge": 5,
    "vcf.stages.check": 5,
    "vcf.stages.check_outputs": 5,
    "vcf.stages.check_shots": 5,
    "vcf.stages.features": 5,
    "vcf.cli": 6,
    "vcf.__main__": 7,
    "vcf": 7,
}
UI_LIBRARIES = {"typer", "rich", "click"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported vcf module
    line: int
    names: tuple[str, ...]  # names taken from the target (from ... import a, b) or used as target.<name>


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(source: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from`` import (relative ones included)."""
    if not node.level:
        return node.module or ""
    is_package = modules()[source].name == "__init__.py"
    base = source.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, tree: ast.AST) -> tuple[list[Import], list[tuple[str, int]]]:
    """The vcf imports of a module and the top-level names of every third-party import."""
    known = modules()
    found: list[Import] = []
    external: list[tuple[str, int]] = []
    aliases: dict[str, str] = {}  # local name -> vcf module bound to it
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "vcf":
                    external.append((alias.name.split(".")[0], node.lineno))
                    continue
                found.append(Import(source, alias.name, node.lineno, ()))
                if alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = resolve(source, node)
            if base.split(".")[0] != "vcf":
                external.append((base.split(".")[0], node.lineno))
                continue
            plain: list[str] = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:
                    found.append(Import(source, submodule, node.lineno, ()))
                    aliases[alias.asname or alias.name] = submodule
                else:
                    plain.append(alias.name)
            if plain:  # names defined in the module ``base`` itself (submodules count as their own imports)
                found.append(Import(source, base, node.lineno, tuple(plain)))
    for node in ast.walk(tree):  # module.attribute uses of an imported vcf module
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.append(Import(source, aliases[node.value.id], node.lineno, (node.attr,)))
    return found, external


def all_imports() -> tuple[list[Import], dict[str, list[tuple[str, int]]]]:
    edges: list[Import] = []
    external: dict[str, list[tuple[str, int]]] = {}
    for name, path in modules().items():
        found, outside = imports_of(name, ast.parse(path.read_text(), str(path)))
        edges += [edge for edge in found if edge.target != name]
        external[name] = outside
    return edges, external


def layer_of(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def find_cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_package_is_found() -> None:
    assert len(modules()) > 10, f"no vcf package under {ROOT}"


def test_no_import_cycle() -> None:
    edges, _ = all_imports()
    assert find_cycles(edges) == []


def test_no_private_name_taken_from_another_module() -> None:
    edges, _ = all_imports()
    private = sorted(
        f"{edge.source}:{edge.line} takes {edge.target}.{name}"
        for edge in edges
        for name in edge.names
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
    )
    assert private == []


def test_only_the_cli_imports_ui_libraries() -> None:
    _, external = all_imports()
    offenders = sorted(
        f"{module}:{line} imports {name}"
        for module, found in external.items()
        for name, line in found
        if name in UI_LIBRARIES and not (module == "vcf.cli" or module.startswith("vcf.cli."))
    )
    assert offenders == []


def test_every_module_has_a_layer() -> None:
    assert [name for name in modules() if layer_of(name) is None] == []


def test_imports_point_down_the_layers() -> None:
    edges, _ = all_imports()
    upward = sorted(
        {
            f"{edge.source} (layer {layer_of(edge.source)}) imports {edge.target} (layer {layer_of(edge.target)})"
            for edge in edges
            if (layer_of(edge.target) or 0) > (layer_of(edge.source) or 0)
        }
    )
    assert upward == []


@pytest.mark.parametrize("module", ["vcf.run", "vcf.stages", "vcf.cli"])
def test_layers_show_in_the_folders(module: str) -> None:
    assert (PACKAGE / module.split(".")[1]).is_dir()
