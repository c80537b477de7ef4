"""A database deleted while the daemon runs is made again with everything it held."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from trafmetuxd.collector import Snapshot
from trafmetuxd.flush import Flusher
from trafmetuxd.metering import Metering
from trafmetuxd.periods import resolve_zone
from trafmetuxd.spec import Config, MonitorSpec
from trafmetuxd.store import Store

M0 = 29_883_333  # a minute (UTC minutes since the epoch)


def stored(db: Path) -> dict[int, tuple[int, int]]:
    """minute -> (in_bytes, out_bytes) of monitor 'all', read by a fresh connection."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT minute, in_bytes, out_bytes FROM minute_totals").fetchall()
    finally:
        con.close()
    return {m: (i, o) for m, i, o in rows}


@pytest.mark.parametrize("side_files_too", [False, True])
def test_deleted_database_is_recreated_and_data_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, side_files_too: bool
) -> None:
    db = tmp_path / "trafmetux.sqlite3"
    store = Store(db)
    flusher = Flusher(store, (MonitorSpec("all"),), resolve_zone("UTC"))
    try:
        flusher.absorb([("all", Snapshot({M0: [100, 1, 10, 1]}, {}, 0))])
        assert flusher.write(M0 * 60 + 60)
        flusher.committed(M0 * 60 + 60)
        for name in (db.name, *([f"{db.name}-wal", f"{db.name}-shm"] * side_files_too)):
            os.unlink(tmp_path / name)  # rm trafmetux.sqlite3[*]
        flusher.absorb([("all", Snapshot({M0 + 1: [200, 1, 20, 1]}, {}, 0))])
        with caplog.at_level(logging.ERROR, logger="trafmetuxd.store"):
            assert flusher.write(M0 * 60 + 120)
        flusher.committed(M0 * 60 + 120)
        assert flusher.state.database_recreated == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and all(str(db) in m for m in errors)
        assert any("was deleted" in m for m in errors)
        # the flush after that goes to the same new file, without another word
        flusher.absorb([("all", Snapshot({M0 + 2: [300, 1, 30, 1]}, {}, 0))])
        assert flusher.write(M0 * 60 + 180)
        assert flusher.state.database_recreated == 1
    finally:
        store.close()
    # everything ever committed is on disk: before the deletion, at it and after it
    assert stored(db) == {M0: (100, 10), M0 + 1: (200, 20), M0 + 2: (300, 30)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [db.name]  # no copy left behind
    assert (os.stat(db).st_mode & 0o777) == 0o640


def test_a_database_replaced_by_another_file_is_not_written_and_counts_are_held(
    tmp_path: Path,
) -> None:
    db = tmp_path / "trafmetux.sqlite3"
    store = Store(db)
    flusher = Flusher(store, (MonitorSpec("all"),), resolve_zone("UTC"))
    try:
        os.unlink(db)
        db.write_text("someone else's file")
        flusher.absorb([("all", Snapshot({M0: [100, 1, 10, 1]}, {}, 0))])
        assert not flusher.write(M0 * 60 + 60)
        assert "replaced by another file" in flusher.state.last_error
        assert str(db) in flusher.state.last_error
        assert flusher.state.held_bytes == 110
    finally:
        store.close()
    assert db.read_text() == "someone else's file"


def test_status_says_the_database_was_recreated(tmp_path: Path) -> None:
    cfg = Config(path=tmp_path / "t.toml", state_dir=tmp_path, monitors=(MonitorSpec("all"),))
    daemon = Metering(cfg, clock=lambda: float(M0 * 60 + 60))
    try:
        assert daemon.flush_now(M0 * 60 + 60)
        os.unlink(cfg.database)
        assert daemon.flush_now(M0 * 60 + 120)
        assert cfg.database.exists()
        status = asyncio.run(daemon.status())
        assert status["flush"]["database_recreated"] == 1  # type: ignore[index]
    finally:
        daemon.close()
