"""The layout the README describes holds: imports point one way, from the harnesses down to the
sans-IO core, and the folders at the same level never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Where each folder of the source tree installs.
FOLDERS = {"swarmfl": "swarmfl", "radio": "swarmfl.radio", "sim": "swarmfl.sim"}

# From the bottom up. A module may import from its own level and the levels below; modules of
# different units on one level may not import each other.
LEVELS: list[set[str]] = [
    {"swarmfl.errors"},
    {"swarmfl.sizes", "swarmfl.seeding"},
    {"swarmfl.core"},
    {"swarmfl.learning", "swarmfl.radio"},
    {"swarmfl.config"},
    {"swarmfl.clock"},
    {"swarmfl.agent", "swarmfl.drone"},
    {"swarmfl.sim", "swarmfl.field"},
    {"swarmfl.plan_table", "swarmfl.testing_autopilot"},
    {"swarmfl.cli", "swarmfl.testing"},
]


def unit_of(module: str) -> str:
    """The unit a dotted module name belongs to: its folder package, or the top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def level_of(unit: str) -> int:
    for index, units in enumerate(LEVELS):
        if unit in units:
            return index
    raise AssertionError(f"{unit} is on no level of the layout: add it to tests/test_layout.py")


def modules() -> list[tuple[str, Path]]:
    found = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            found.append((".".join([package, *parts]), path))
    return found


def imports_of(path: Path) -> set[str]:
    """swarmfl modules imported at run time (not those under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "swarmfl" or name.startswith("swarmfl.")}


MODULES = modules()


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down_the_layers(module: str, path: Path) -> None:
    if module == "swarmfl":
        return  # the package's own __init__ re-exports the error tree only
    unit = unit_of(module)
    level = level_of(unit)
    for imported in imports_of(path):
        other = unit_of(imported)
        if other == unit or imported == "swarmfl":
            continue
        other_level = level_of(other)
        assert other_level < level, (
            f"{module} imports {imported}: {other} is on level {other_level}, "
            f"{unit} on level {level} (imports must point down)"
        )


def test_every_module_is_placed() -> None:
    units = {unit_of(module) for module, _ in MODULES} - {"swarmfl"}
    for unit in units:
        level_of(unit)
