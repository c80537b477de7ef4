"""The handler table and the layering of the answer modules."""

from __future__ import annotations

import ast
from pathlib import Path

import trafmetuxd
from trafmetuxd import protocol
from trafmetuxd.handlers import Handlers
from trafmetuxd.metering import Metering
from trafmetuxd.reports import Reports
from trafmetuxd.spec import Config, MonitorSpec

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


def test_the_handler_table_answers_exactly_the_protocol_commands(tmp_path: Path) -> None:
    cfg = Config(path=tmp_path / "t.toml", state_dir=tmp_path, monitors=(MonitorSpec("all"),))
    metering = Metering(cfg)
    reports = Reports(metering)
    try:
        table = Handlers(reports).table()
    finally:
        reports.close()
        metering.close()
    assert set(table) == set(protocol.COMMANDS)
