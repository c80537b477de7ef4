"""The handler table and the layering of the answer modules."""

from __future__ import annotations

import ast
from pathlib import Path

import trafmetuxd

PACKAGE = Path(trafmetuxd.__file__).parent


def imported_modules(module: str) -> set[str]:
    """Every trafmetuxd module a source file imports, at any level (TYPE_CHECKING included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "trafmetuxd":
                out |= {f"trafmetuxd.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {name for name in out if name.startswith("trafmetuxd.")}


def test_reports_do_not_import_the_handlers_no_import_cycle() -> None:
    assert "trafmetuxd.reports" in imported_modules("handlers")
    assert "trafmetuxd.handlers" not in imported_modules("reports")
