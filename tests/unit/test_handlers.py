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


def test_an_sqlite_store_answers_for_its_own_gateway_only(tmp_path: Path) -> None:
    import asyncio

    import pytest

    from trafmetuxd.spec import StoreSpec

    cfg = Config(
        path=tmp_path / "t.toml",
        state_dir=tmp_path,
        monitors=(MonitorSpec("all"),),
        store=StoreSpec(gateway="here"),
    )
    metering = Metering(cfg)
    reports = Reports(metering)
    table = Handlers(reports).table()
    try:
        own = asyncio.run(table["report"]({"period": "total", "gateways": ["here"]}))
        assert own["monitors"] == ["all"]  # type: ignore[index]
        with pytest.raises(protocol.ProtocolError) as caught:
            asyncio.run(table["report"]({"period": "total", "gateways": ["branch-2"]}))
        assert caught.value.code == protocol.BAD_ARGUMENT
        assert "SQLite store holds this gateway (here) only" in caught.value.message
        assert asyncio.run(metering.status())["store"] == {
            "kind": "sqlite",
            "path": str(tmp_path / "trafmetux.sqlite3"),
        }
    finally:
        reports.close()
        metering.close()
