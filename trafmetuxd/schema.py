"""The SQLite schema and its migrations: DDL, PRAGMA user_version steps and the UTC rollups.

Units: a minute is unix seconds // 60, a quarter // 900, an hour // 3600, a day // 86400 (UTC).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

MINUTES_PER_QUARTER = 15  # a quarter is unix seconds // 900, so minute // 15
MINUTES_PER_HOUR = 60  # an hour is unix seconds // 3600 (UTC)
MINUTES_PER_DAY = 1440  # a day is unix seconds // 86400 (UTC)
SECONDS_PER_QUARTER = 60 * MINUTES_PER_QUARTER
QUARTERS_PER_HOUR = 4
QUARTERS_PER_DAY = 96
MINUTE_TOTALS, QUARTER_TOTALS = "minute_totals", "quarter_totals"
HOUR_TOTALS, DAY_TOTALS = "hour_totals", "day_totals"
# every totals table and its unit column
TOTALS_UNITS = {MINUTE_TOTALS: "minute", QUARTER_TOTALS: "quarter", HOUR_TOTALS: "hour",
                DAY_TOTALS: "day"}  # fmt: skip

_SCHEMA_V1 = """
CREATE TABLE monitor (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE minute_totals (monitor INTEGER NOT NULL REFERENCES monitor(id),
    minute INTEGER NOT NULL,
    in_bytes INTEGER NOT NULL, in_packets INTEGER NOT NULL,
    out_bytes INTEGER NOT NULL, out_packets INTEGER NOT NULL,
    PRIMARY KEY (monitor, minute)) WITHOUT ROWID;
CREATE TABLE quarter_totals (monitor INTEGER NOT NULL REFERENCES monitor(id),
    quarter INTEGER NOT NULL,
    in_bytes INTEGER NOT NULL, in_packets INTEGER NOT NULL,
    out_bytes INTEGER NOT NULL, out_packets INTEGER NOT NULL,
    PRIMARY KEY (monitor, quarter)) WITHOUT ROWID;
CREATE TABLE flush (id INTEGER PRIMARY KEY, monitor INTEGER NOT NULL REFERENCES monitor(id),
    time REAL NOT NULL, overflow INTEGER NOT NULL);
CREATE INDEX flush_monitor_time ON flush(monitor, time);
CREATE TABLE flow (flush INTEGER NOT NULL REFERENCES flush(id), family INTEGER NOT NULL,
    protocol INTEGER NOT NULL, client TEXT NOT NULL, client_port INTEGER NOT NULL,
    server TEXT NOT NULL, server_port INTEGER NOT NULL, sent INTEGER NOT NULL,
    received INTEGER NOT NULL, packets INTEGER NOT NULL);
CREATE INDEX flow_flush ON flow(flush);
"""


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """Version 0 (empty file) -> 1: the initial schema."""
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)


_ROLLUP_TABLE = """CREATE TABLE {table} (monitor INTEGER NOT NULL REFERENCES monitor(id),
    {unit} INTEGER NOT NULL,
    in_bytes INTEGER NOT NULL, in_packets INTEGER NOT NULL,
    out_bytes INTEGER NOT NULL, out_packets INTEGER NOT NULL,
    PRIMARY KEY (monitor, {unit})) WITHOUT ROWID"""
# floor(quarter / n) in SQL, whose integer division truncates toward zero
_ROLLUP_FILL = """INSERT INTO {table}
SELECT monitor, (quarter - ((quarter % {n}) + {n}) % {n}) / {n} AS unit, SUM(in_bytes),
    SUM(in_packets), SUM(out_bytes), SUM(out_packets)
FROM quarter_totals GROUP BY monitor, unit"""
ROLLUPS = ((HOUR_TOTALS, "hour", QUARTERS_PER_HOUR), (DAY_TOTALS, "day", QUARTERS_PER_DAY))


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2: UTC hour and day rollups, filled from the stored quarters."""
    for table, unit, _ in ROLLUPS:
        conn.execute(_ROLLUP_TABLE.format(table=table, unit=unit))
    rebuild_rollups(conn)


def rebuild_rollups(conn: sqlite3.Connection) -> None:
    """Refill the hour and day rollups from quarter_totals (for quarters written directly)."""
    for table, _, per in ROLLUPS:
        conn.execute(f"DELETE FROM {table}")
        conn.execute(_ROLLUP_FILL.format(table=table, n=per))


# What each replay metered, so that a capture is not counted twice and retention spares what
# a replay wrote (times in unix seconds: started/finished by the wall clock, the others by the
# capture's own timestamps; finished and the columns after it stay NULL until it completes).
_REPLAY_TABLE = """CREATE TABLE replay (id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL,
    path TEXT NOT NULL, size INTEGER NOT NULL, started REAL NOT NULL, first_packet REAL NOT NULL,
    finished REAL, last_packet REAL, last_flush REAL,
    frames INTEGER, packets INTEGER, bytes INTEGER)"""


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Version 2 -> 3: the record of replayed captures."""
    conn.execute(_REPLAY_TABLE)
    conn.execute("CREATE INDEX replay_sha256 ON replay(sha256)")


_HOST_TABLE = """CREATE TABLE {table} (monitor INTEGER NOT NULL REFERENCES monitor(id),
    host TEXT NOT NULL, {unit} INTEGER NOT NULL,
    in_bytes INTEGER NOT NULL, in_packets INTEGER NOT NULL,
    out_bytes INTEGER NOT NULL, out_packets INTEGER NOT NULL,
    PRIMARY KEY (monitor, host, {unit})) WITHOUT ROWID"""
# Per-host totals (monitors with `hosts`): host is the address text, an IPv6 group as
# "fd00:1::/64", or "other" for the hosts beyond max_hosts. Same units as the monitor totals.
HOST_TABLES = (
    ("host_minute_totals", "minute", 1),
    ("host_quarter_totals", "quarter", MINUTES_PER_QUARTER),
    ("host_hour_totals", "hour", MINUTES_PER_HOUR),
    ("host_day_totals", "day", MINUTES_PER_DAY),
)


def _migrate_to_4(conn: sqlite3.Connection) -> None:
    """Version 3 -> 4: per-host totals and each flush's host overflow."""
    for table, unit, _ in HOST_TABLES:
        conn.execute(_HOST_TABLE.format(table=table, unit=unit))
    conn.execute("ALTER TABLE flush ADD COLUMN host_overflow INTEGER NOT NULL DEFAULT 0")


def host_range_index(table: str) -> str:
    """The name of a per-host rollup's index by (monitor, unit)."""
    return f"{table}_by_time"


def _migrate_to_5(conn: sqlite3.Connection) -> None:
    """Version 4 -> 5: the per-host quarters, hours and days indexed by (monitor, unit).

    The host reports of a range (a monitor's hosts over some quarters, hours or days) select by
    monitor and unit; by the primary key (monitor, host, unit) they read every row the monitor
    ever stored. Minutes are read by the primary key only (one host's history), so not indexed.
    """
    for table, unit, _ in HOST_TABLES[1:]:
        conn.execute(f"CREATE INDEX {host_range_index(table)} ON {table}(monitor, {unit})")


# MIGRATIONS[n] takes a database from user_version n to n + 1; append to add a version.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
    _migrate_to_4,
    _migrate_to_5,
)
SCHEMA_VERSION = len(MIGRATIONS)
ROLLUP_VERSION = MIGRATIONS.index(_migrate_to_2) + 1  # the version that added the rollups
HOSTS_VERSION = MIGRATIONS.index(_migrate_to_4) + 1  # the version that added the host tables


def rollup(totals: dict[int, list[int]], minutes: int) -> dict[int, list[int]]:
    """Roll minute totals up into totals of `minutes`-minute units (minute // minutes)."""
    out: dict[int, list[int]] = {}
    for minute, row in totals.items():
        acc = out.setdefault(minute // minutes, [0, 0, 0, 0])
        for i in range(4):
            acc[i] += row[i]
    return out
