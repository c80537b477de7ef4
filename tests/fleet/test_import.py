"""--import-sqlite: a gateway's SQLite history copied into PostgreSQL once, the file untouched."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from harness.netns import PYTHON, ROOT
from harness.postgres import Postgres
from trafmetuxd.collector import OTHER, Snapshot, minute_of
from trafmetuxd.store import Store

T0 = 1_000_000_800.0
M0 = minute_of(T0)
FLOW = (4, 6, 0xC0A8BE3E, 50000, 0xC0A8BE0B, 443)


def old_database(path: Path) -> None:
    store = Store(path)
    try:
        for i in range(3):
            snap = Snapshot(
                {M0 + 7 * i: [100 + i, 2, 50, 1]},
                {FLOW: [50, 100 + i, 3], OTHER: [0, 7, 1]},
                0,
                {(4, 0xC0A8BE3E, 32): {M0 + 7 * i: [100 + i, 2, 50, 1]}},
            )
            store.write(T0 + 60 * i, [("input", snap), ("output", snap)])
        store.begin_replay("ab" * 32, "/old.pcap", 1, T0, T0)
    finally:
        store.close()


def run_import(config: Path, old: Path) -> subprocess.CompletedProcess[str]:
    argv = [PYTHON, "-m", "trafmetuxd", "--config", str(config), "--import-sqlite", str(old)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_copies_the_history_once_and_leaves_the_file_alone(
    pg_server: Postgres, tmp_path: Path
) -> None:
    url = pg_server.new_database()
    old = tmp_path / "old.sqlite3"
    old_database(old)
    digest = hashlib.sha256(old.read_bytes()).hexdigest()
    config = tmp_path / "t.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n[store]\nurl = "{url}"\ngateway = "moved"\n'
    )
    first = run_import(config, old)
    assert first.returncode == 0, first.stderr
    assert "imported" in first.stdout and "6 flushes" in first.stdout  # 3 per monitor
    second = run_import(config, old)
    assert second.returncode == 0, second.stderr
    assert "already imported" in second.stdout
    assert hashlib.sha256(old.read_bytes()).hexdigest() == digest
    import psycopg

    with psycopg.connect(url) as conn:
        per_table = {
            table: conn.execute(
                f"SELECT monitor, sum(in_bytes) FROM {table} WHERE gateway = 'moved' "
                "GROUP BY monitor ORDER BY monitor"
            ).fetchall()
            for table in ("minute_totals", "quarter_totals", "hour_totals", "day_totals",
                          "host_minute_totals", "host_day_totals")
        }  # fmt: skip
        flows = conn.execute(
            "SELECT flush.monitor, sum(received) FROM flow JOIN flush ON flush.id = flow.flush "
            "GROUP BY flush.monitor ORDER BY 1"
        ).fetchall()
        replays = conn.execute("SELECT gateway, path FROM replay").fetchall()
    for table, rows in per_table.items():
        assert rows == [("input", 303), ("output", 303)], table
    assert flows == [("input", 303 + 21), ("output", 303 + 21)]
    assert replays == [("moved", "/old.pcap")]


def test_import_without_a_postgresql_store_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\n')
    done = run_import(config, tmp_path / "old.sqlite3")
    assert done.returncode == 2
    assert "no [store] url" in done.stderr and str(config) in done.stderr
