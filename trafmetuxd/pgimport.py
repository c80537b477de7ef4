"""--import-sqlite: copy a SQLite store's history into the PostgreSQL store, once.

The file is read through a migrated copy (the original is never written), and everything goes
in one transaction that also records the import under (gateway, absolute path): a second
import of the same file for the same gateway adds nothing and says so.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import psycopg

from trafmetuxd.pgschema import TOTALS_TABLES
from trafmetuxd.pgstore import PgStore
from trafmetuxd.store import HOST_TABLES, Store, StoreError

_UPSERT = """INSERT INTO {table} AS t (gateway, monitor, {keys}, in_bytes, in_packets,
out_bytes, out_packets) SELECT %s, monitor, {keys}, in_bytes, in_packets, out_bytes, out_packets
FROM {temp} ON CONFLICT (gateway, monitor, {keys}) DO UPDATE
SET in_bytes = t.in_bytes + excluded.in_bytes, in_packets = t.in_packets + excluded.in_packets,
out_bytes = t.out_bytes + excluded.out_bytes, out_packets = t.out_packets + excluded.out_packets"""


class Imported(NamedTuple):
    """What an import copied (all zero and `already` when it had been imported before)."""

    source: str
    already: bool
    rows: int
    flushes: int
    flows: int

    def line(self) -> str:
        """One line for the terminal."""
        if self.already:
            return f"{self.source}: already imported for this gateway; nothing done"
        return (f"{self.source}: imported {self.rows} total rows, {self.flushes} flushes, "
                f"{self.flows} flow rows")  # fmt: skip


def import_sqlite(store: PgStore, old: Path) -> Imported:
    """Copy the SQLite file's history into the store as this gateway's (idempotent)."""
    if not old.is_file():
        raise StoreError(f"{old}: no such SQLite database")
    source = str(old.resolve())
    with tempfile.TemporaryDirectory(prefix="trafmetux-import-") as tmp:
        copy = Path(tmp) / "copy.sqlite3"
        _snapshot(old, copy)
        Store(copy).close()  # migrates the copy to the current schema
        with closing(sqlite3.connect(copy)) as con, store._transaction("cannot import") as cur:
            return _copy(con, cur, store.gateway, source)


def _snapshot(old: Path, copy: Path) -> None:
    """A consistent copy of the (possibly live) database, WAL included."""
    try:
        with closing(sqlite3.connect(f"file:{old}?mode=ro", uri=True)) as src:
            src.execute("PRAGMA user_version").fetchone()
            with closing(sqlite3.connect(copy)) as dst:
                src.backup(dst)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{old}: not a readable SQLite database ({exc})") from exc


def _copy(con: sqlite3.Connection, cur: psycopg.Cursor[Any], gateway: str, source: str) -> Imported:
    cur.execute(
        "INSERT INTO import (gateway, source, time) VALUES (%s, %s, %s) "
        "ON CONFLICT DO NOTHING RETURNING source",
        (gateway, source, time.time()),
    )
    if cur.fetchone() is None:
        return Imported(source, True, 0, 0, 0)
    rows = 0
    tables = [(t, (u,)) for t, u in TOTALS_TABLES] + [(t, ("host", u)) for t, u, _ in HOST_TABLES]
    for table, keys in tables:
        rows += _copy_totals(con, cur, gateway, table, keys)
    flushes, flows = _copy_flushes(con, cur, gateway)
    _copy_replays(con, cur, gateway)
    return Imported(source, False, rows, flushes, flows)


def _copy_totals(
    con: sqlite3.Connection,
    cur: psycopg.Cursor[Any],
    gateway: str,
    table: str,
    keys: tuple[str, ...],
) -> int:
    """One totals table through a temporary table (COPY), upsert-added into the store's."""
    cols = ", ".join(keys)
    temp = f"import_{table}"
    cur.execute(f"CREATE TEMPORARY TABLE {temp} (LIKE {table}) ON COMMIT DROP")
    cur.execute(f"ALTER TABLE {temp} DROP COLUMN gateway")
    picked = ", ".join("t." + k for k in keys)
    sql = (
        f"SELECT m.name, {picked}, t.in_bytes, t.in_packets, t.out_bytes, t.out_packets "
        f"FROM {table} t JOIN monitor m ON m.id = t.monitor"
    )
    count = 0
    names = f"monitor, {cols}, in_bytes, in_packets, out_bytes, out_packets"
    with cur.copy(f"COPY {temp} ({names}) FROM STDIN") as copy:
        for row in con.execute(sql):
            copy.write_row(row)
            count += 1
    cur.execute(_UPSERT.format(table=table, keys=cols, temp=temp), (gateway,))
    return count


def _copy_flushes(
    con: sqlite3.Connection, cur: psycopg.Cursor[Any], gateway: str
) -> tuple[int, int]:
    """Flush rows under new ids from the store's sequence, their flow rows after them."""
    old = con.execute(
        "SELECT f.id, m.name, f.time, f.overflow, f.host_overflow FROM flush f "
        "JOIN monitor m ON m.id = f.monitor ORDER BY f.id"
    ).fetchall()
    if not old:
        return 0, 0
    cur.execute(
        "SELECT nextval(pg_get_serial_sequence('flush', 'id')) FROM generate_series(1, %s)",
        (len(old),),
    )
    new_ids = {row[0]: int(new[0]) for row, new in zip(old, cur.fetchall(), strict=True)}
    with cur.copy(
        "COPY flush (id, gateway, monitor, time, overflow, host_overflow) FROM STDIN"
    ) as copy:
        for flush_id, name, when, overflow, host_overflow in old:
            copy.write_row((new_ids[flush_id], gateway, name, when, overflow, host_overflow))
    flows = 0
    with cur.copy(
        "COPY flow (flush, family, protocol, client, client_port, server, server_port, sent, "
        "received, packets) FROM STDIN"
    ) as copy:
        for row in con.execute("SELECT * FROM flow"):
            copy.write_row((new_ids[row[0]], *row[1:]))
            flows += 1
    return len(old), flows


def _copy_replays(con: sqlite3.Connection, cur: psycopg.Cursor[Any], gateway: str) -> None:
    """The record of replayed captures: a capture replayed there is refused here too."""
    rows = con.execute(
        "SELECT sha256, path, size, started, first_packet, finished, last_packet, last_flush, "
        "frames, packets, bytes FROM replay"
    ).fetchall()
    cur.executemany(
        "INSERT INTO replay (gateway, sha256, path, size, started, first_packet, finished, "
        "last_packet, last_flush, frames, packets, bytes) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [(gateway, *row) for row in rows],
    )
