"""The per-host rollups' (monitor, unit) index: added by migration 5, used by the host queries."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from trafmetuxd import query
from trafmetuxd.schema import HOST_TABLES, MIGRATIONS, SCHEMA_VERSION, host_range_index
from trafmetuxd.store import Store

RANGE_TABLES = ("quarter_totals", "hour_totals", "day_totals")
# (monitor, host, quarter) -> in_bytes; the rollups below are their sums
QUARTERS = {("lan", "10.0.0.2", 100): 10, ("lan", "10.0.0.2", 200): 20,
            ("lan", "10.0.0.3", 100): 7, ("wan", "10.0.0.2", 100): 1000}  # fmt: skip


def v4_database(db: Path) -> None:
    """A database of schema version 4 (host tables, no index) holding a few host rows."""
    with closing(sqlite3.connect(db)) as conn:
        for migrate in MIGRATIONS[:4]:
            migrate(conn)
        conn.executemany("INSERT INTO monitor (id, name) VALUES (?, ?)", [(1, "lan"), (2, "wan")])
        ids = {"lan": 1, "wan": 2}
        for (monitor, host, quarter), value in QUARTERS.items():
            for table, per in (("host_quarter_totals", 1), ("host_hour_totals", 4),
                               ("host_day_totals", 96)):  # fmt: skip
                conn.execute(
                    f"INSERT INTO {table} VALUES (?, ?, ?, ?, 1, 0, 0) ON CONFLICT DO UPDATE "
                    "SET in_bytes = in_bytes + excluded.in_bytes, "
                    "in_packets = in_packets + excluded.in_packets",
                    (ids[monitor], host, quarter // per, value),
                )
        conn.execute("PRAGMA user_version = 4")
        conn.commit()


def indexes(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {name for (name,) in rows}


def test_migration_5_indexes_the_host_rollups_and_keeps_every_row(tmp_path: Path) -> None:
    db = tmp_path / "v4.sqlite3"
    v4_database(db)
    before = [query.host_sums(db, "lan", first, 400) for first in (0, 150, 0)]
    assert before[0] == {"10.0.0.2": [30, 2, 0, 0], "10.0.0.3": [7, 1, 0, 0]}
    assert not {host_range_index(t) for t, *_ in HOST_TABLES} & indexes(db)
    Store(db).close()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    want = {host_range_index(t) for t in ("host_quarter_totals", "host_hour_totals",
                                          "host_day_totals")}  # fmt: skip
    assert want <= indexes(db)
    assert host_range_index("host_minute_totals") not in indexes(db)
    assert [query.host_sums(db, "lan", first, 400) for first in (0, 150, 0)] == before


@pytest.mark.parametrize("table", RANGE_TABLES)
def test_the_host_range_query_reads_the_range_by_the_index(tmp_path: Path, table: str) -> None:
    db = tmp_path / "t.sqlite3"
    v4_database(db)
    Store(db).close()
    with closing(sqlite3.connect(db)) as conn:
        plan = " | ".join(
            row[3]
            for row in conn.execute(
                f"EXPLAIN QUERY PLAN {query.host_range_sql(table)}", ("lan", 0, 10)
            )
        )
    host_table = f"host_{table}"
    unit = table.split("_")[0]
    assert f"USING INDEX {host_range_index(host_table)} (monitor=? AND {unit}>? AND {unit}<?)" in (
        plan
    ), plan


def test_one_hosts_history_reads_by_the_primary_key(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite3"
    v4_database(db)
    Store(db).close()
    assert query.host_series(db, "lan", "10.0.0.2", [(0, 150), (150, 400)], "quarter") == [
        [10, 1, 0, 0], [20, 1, 0, 0],
    ]  # fmt: skip
    with closing(sqlite3.connect(db)) as conn:
        sql = (
            "EXPLAIN QUERY PLAN SELECT SUM(in_bytes) FROM host_hour_totals t "
            "WHERE t.monitor = ? AND t.host = ? AND t.hour >= ? AND t.hour < ?"
        )
        (plan,) = [row[3] for row in conn.execute(sql, (1, "10.0.0.2", 0, 10))]
    assert plan == "SEARCH t USING PRIMARY KEY (monitor=? AND host=? AND hour>? AND hour<?)"
