"""The layers hold: `skipper.core` names no transport and no module (the composition root in `skipper.app`
does), and modules never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

SKIPPER = Path(__file__).resolve().parents[2] / "skipper"


def named_packages(path: Path) -> set[str]:
    """Every `skipper.*` dotted name a file imports or spells in a string (import paths in configuration count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("skipper."):
            names.add(node.value.partition(":")[0])
    return {n for n in names if n.startswith("skipper.")}


def test_core_imports_neither_a_transport_nor_a_module() -> None:
    offenders = {
        f"{path.relative_to(SKIPPER)}: {name}"
        for path in sorted((SKIPPER / "core").rglob("*.py"))
        for name in named_packages(path)
        if name.startswith(("skipper.transports", "skipper.modules", "skipper.app"))
    }
    assert offenders == set()


def test_modules_import_only_core_never_each_other() -> None:
    offenders = set()
    for package in sorted(p for p in (SKIPPER / "modules").iterdir() if (p / "__init__.py").is_file()):
        own = f"skipper.modules.{package.name}"
        for path in package.rglob("*.py"):
            for name in named_packages(path):
                if name.startswith(("skipper.modules.", "skipper.transports", "skipper.app")) and not (
                    name == own or name.startswith(own + ".")
                ):
                    offenders.add(f"{path.relative_to(SKIPPER)}: {name}")
    assert offenders == set()
