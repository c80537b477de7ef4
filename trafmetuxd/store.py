"""SQLite store: opening (migrated by schema.py), one-transaction flush writes, retention.

A Store holds one connection opened with check_same_thread=False so the daemon can use it from
its flush worker thread; the caller serializes every call (one thread at a time).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

from trafmetuxd.addresses import address_text, host_text
from trafmetuxd.collector import OTHER, Flows, Hosts, Snapshot
from trafmetuxd.schema import HOST_TABLES as HOST_TABLES
from trafmetuxd.schema import MIGRATIONS as MIGRATIONS
from trafmetuxd.schema import MINUTES_PER_DAY as MINUTES_PER_DAY
from trafmetuxd.schema import MINUTES_PER_HOUR as MINUTES_PER_HOUR
from trafmetuxd.schema import MINUTES_PER_QUARTER as MINUTES_PER_QUARTER
from trafmetuxd.schema import QUARTERS_PER_DAY as QUARTERS_PER_DAY
from trafmetuxd.schema import ROLLUPS as ROLLUPS
from trafmetuxd.schema import SCHEMA_VERSION as SCHEMA_VERSION
from trafmetuxd.schema import rebuild_rollups as rebuild_rollups
from trafmetuxd.schema import rollup as rollup
from trafmetuxd.spec import RetentionSpec

_UPSERT = """INSERT INTO {table} (monitor, {unit}, in_bytes, in_packets, out_bytes, out_packets)
VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (monitor, {unit}) DO UPDATE SET
in_bytes = in_bytes + excluded.in_bytes, in_packets = in_packets + excluded.in_packets,
out_bytes = out_bytes + excluded.out_bytes, out_packets = out_packets + excluded.out_packets"""
_UPSERT_MINUTE = _UPSERT.format(table="minute_totals", unit="minute")
_UPSERT_QUARTER = _UPSERT.format(table="quarter_totals", unit="quarter")
_UPSERT_HOUR = _UPSERT.format(table="hour_totals", unit="hour")
_UPSERT_DAY = _UPSERT.format(table="day_totals", unit="day")
_UPSERT_HOST = """INSERT INTO {table} (monitor, host, {unit}, in_bytes, in_packets, out_bytes,
out_packets) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (monitor, host, {unit}) DO UPDATE SET
in_bytes = in_bytes + excluded.in_bytes, in_packets = in_packets + excluded.in_packets,
out_bytes = out_bytes + excluded.out_bytes, out_packets = out_packets + excluded.out_packets"""
_INSERT_FLOW = "INSERT INTO flow VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Retention spares the time range of every replay run since the bound (:since): a replay's
# detail is kept as long as if it had been written when the replay ran. A replay still running
# (or one that never finished) has no end yet: it spares everything after its first packet.
_SPARED_MINUTE = """NOT EXISTS (SELECT 1 FROM replay r WHERE r.started >= :since
    AND {table}.minute * 60 + 60 > r.first_packet
    AND {table}.minute * 60 <= coalesce(r.last_packet, 1e18))"""
_SPARED_FLUSH = """NOT EXISTS (SELECT 1 FROM replay r WHERE r.started >= :since
    AND flush.time >= r.first_packet AND flush.time <= coalesce(r.last_flush, 1e18))"""
# Rollup rows are spared by whole UTC days ({per_day} units a day), so that every hour and day
# kept stays the exact sum of the quarters kept.
_SPARED_DAY = """NOT EXISTS (SELECT 1 FROM replay r WHERE r.started >= :since
    AND {table}.{unit} / {per_day} >= CAST(r.first_packet AS INTEGER) / 86400
    AND {table}.{unit} / {per_day} <= coalesce(CAST(r.last_packet AS INTEGER) / 86400, 1e18))"""

log = logging.getLogger("trafmetuxd.store")
FILE_MODE = 0o640  # the database; SQLite gives its -wal and -shm files the same mode
SIDE_FILES = ("-wal", "-shm", "-journal")


class StoreError(Exception):
    """The database cannot be opened, read or written; the message names the file."""


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at path, or None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def create_file(path: Path) -> None:
    """Create the database file (FILE_MODE whatever the umask) unless it exists; no symlinks.

    SQLite follows a symlink at the database's path or at its -wal/-shm names: a user who
    could place one would have the daemon create or write a file of their choosing.
    """
    for name in (path, *(path.with_name(path.name + side) for side in SIDE_FILES)):
        if name.is_symlink():
            raise StoreError(f"{name}: is a symbolic link; refusing to follow it")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileExistsError:
        if not stat.S_ISREG(path.lstat().st_mode):
            raise StoreError(f"{path}: not a regular file; refusing to open it") from None
        return
    except OSError as exc:
        raise StoreError(f"{path}: cannot create database: {exc.strerror}") from exc
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away
    finally:
        os.close(fd)
    log.info("created a new database %s", path)


class ReplayRow(NamedTuple):
    """An earlier replay of a capture: where it was read and when (unix seconds)."""

    path: str
    started: float
    finished: float | None  # None: it never completed (interrupted, or a flush failed)


class ReplayEnd(NamedTuple):
    """What a completed replay read and wrote (packet and flush times are the capture's)."""

    finished: float
    first_packet: float
    last_packet: float
    last_flush: float
    frames: int
    packets: int
    bytes: int


def prune_bounds(now: float, retention: RetentionSpec) -> tuple[int, int]:
    """(first minute to keep, first flush second to keep); 0 keeps everything of that kind."""
    minutes = int(now - retention.minutes) // 60 if retention.minutes > 0 else 0
    flows = int(now - retention.flows) if retention.flows > 0 else 0
    return minutes, flows


def quarters(totals: dict[int, list[int]]) -> dict[int, list[int]]:
    """Roll minute totals up into quarter-hour totals."""
    return rollup(totals, MINUTES_PER_QUARTER)


class Store:
    """The SQLite database at `path`; created with the current schema when it does not exist."""

    def __init__(self, path: Path, busy_timeout: float = 1.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.recreated = 0  # times the file was found deleted and made again from this copy
        self._conn = self._open()
        self._ident = identity(path)

    def _open(self) -> sqlite3.Connection:
        """Connect to the file at self.path (made if missing) and migrate it."""
        create_file(self.path)
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open database: {exc}") from exc
        try:
            self._setup(self.busy_timeout)
        except BaseException:
            self._conn.close()
            raise
        return self._conn

    def ensure_file(self) -> None:
        """Before a write: the file at path must still be the one open here.

        Someone deleting the database while the daemon runs would otherwise have every flush
        "succeed" into a file nobody can see, and be gone at exit. The open connection still
        holds every committed byte: the file is made again from it, loudly.
        """
        now = identity(self.path)
        if now == self._ident:
            return
        if now is not None:
            raise StoreError(
                f"{self.path}: replaced by another file while the daemon ran; not writing to it "
                "(the counts are held): move it away so the database can be made again"
            )
        log.error("%s was deleted while the daemon ran: making it again from the open copy",
                  self.path)  # fmt: skip
        self._recreate()
        self.recreated += 1
        log.error("%s made again with every committed count; nothing is lost", self.path)

    def _recreate(self) -> None:
        """Copy the open (deleted) database to a new file at path and continue on that one."""
        staged = self.path.with_name(self.path.name + ".recovering")
        with suppress(FileNotFoundError):
            staged.unlink()
        create_file(staged)
        with self._errors("cannot copy the deleted database"):
            copy = sqlite3.connect(staged)
            try:
                self._conn.backup(copy)  # a consistent snapshot, WAL contents included
            finally:
                copy.close()
        self._conn.close()
        # The old -wal/-shm belong to the deleted file: a new database must not adopt them.
        for side in SIDE_FILES:
            with suppress(FileNotFoundError):
                self.path.with_name(self.path.name + side).unlink()
        try:
            os.link(staged, self.path)  # never over a file that appeared meanwhile
        except OSError as exc:
            msg = f"{self.path}: cannot put the copy in place ({exc.strerror}); it is {staged}"
            raise StoreError(msg) from exc
        staged.unlink()
        self._conn = self._open()
        self._ident = identity(self.path)

    def _setup(self, busy_timeout: float) -> None:
        """Check the file, set the connection pragmas and migrate to SCHEMA_VERSION."""
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a SQLite database ({exc})") from exc
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this trafmetuxd "
                f"supports ({SCHEMA_VERSION}); refusing to open it"
            )
        with self._errors("cannot prepare database"):
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
        if version == 0 and self._has_foreign_tables():
            raise StoreError(f"{self.path}: a SQLite database of something else; refusing it")
        if version < SCHEMA_VERSION:
            with self._transaction(f"cannot migrate schema to version {SCHEMA_VERSION}"):
                self._migrate()

    def _migrate(self) -> None:
        """Run the missing migrations; re-read the version under the write lock (races)."""
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](self._conn)
        self._conn.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")

    def _has_foreign_tables(self) -> bool:
        """True when an unversioned file already holds tables (not ours to take over)."""
        with self._errors("cannot read schema"):
            row = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return bool(row[0])

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn sqlite3 errors into StoreError naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {what}: {exc}") from exc

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; roll back and raise StoreError on any sqlite3 error."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"{self.path}: {what}: {exc}") from exc
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Roll back an open transaction, if SQLite has not already done so."""
        # A failing ROLLBACK leaves nothing more to do here; the next BEGIN reports it.
        if self._conn.in_transaction:
            with suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def write(
        self,
        flush_time: float,
        batches: Sequence[tuple[str, Snapshot]],
        prune_before: tuple[int, int] | None = None,
    ) -> None:
        """Add every monitor's snapshot (and prune, if asked) in one transaction."""
        self.ensure_file()
        with self._transaction("cannot write flush"):
            rows = _FlowRows()
            for name, snap in batches:
                if snap.totals or snap.flows or snap.hosts:
                    self._write_one(self._monitor_id(name), flush_time, snap, rows)
            if prune_before is not None:
                self._prune(*prune_before)

    def _monitor_id(self, name: str) -> int:
        """The monitor's row id, inserting the row the first time."""
        conn = self._conn
        conn.execute("INSERT OR IGNORE INTO monitor (name) VALUES (?)", (name,))
        row = conn.execute("SELECT id FROM monitor WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _write_one(self, monitor: int, flush_time: float, snap: Snapshot, rows: _FlowRows) -> None:
        """Upsert-add one snapshot's totals and insert its flush and flow rows."""
        conn = self._conn
        conn.executemany(_UPSERT_MINUTE, ((monitor, m, *r) for m, r in snap.totals.items()))
        # a flush holds a few minutes: one or two hour and day rows per monitor to upsert
        for sql, minutes in (
            (_UPSERT_QUARTER, MINUTES_PER_QUARTER),
            (_UPSERT_HOUR, MINUTES_PER_HOUR),
            (_UPSERT_DAY, MINUTES_PER_DAY),
        ):
            units = rollup(snap.totals, minutes).items()
            conn.executemany(sql, ((monitor, u, *r) for u, r in units))
        cur = conn.execute(
            "INSERT INTO flush (monitor, time, overflow, host_overflow) VALUES (?, ?, ?, ?)",
            (monitor, flush_time, snap.overflow, snap.host_overflow),
        )
        conn.executemany(_INSERT_FLOW, rows.rows(cur.lastrowid, snap.flows))
        if snap.hosts:
            self._write_hosts(monitor, snap.hosts)

    def _write_hosts(self, monitor: int, hosts: Hosts) -> None:
        """Upsert-add the per-host minutes and their quarter, hour and day rollups."""
        conn = self._conn
        texts = {host: host_text(host) for host in hosts}
        for table, unit, minutes in HOST_TABLES:
            sql = _UPSERT_HOST.format(table=table, unit=unit)
            for host, totals in hosts.items():
                text = texts[host]
                units = totals if minutes == 1 else rollup(totals, minutes)
                conn.executemany(sql, ((monitor, text, u, *r) for u, r in units.items()))

    def _prune(self, first_minute: int, first_flush_time: int) -> None:
        """Delete minutes and flushes before the bounds (a bound <= 0 keeps everything).

        What lies in the time range of a replay run since the bound is kept (_SPARED_*).
        """
        conn = self._conn
        if first_minute > 0:
            minutes = {"first": first_minute, "since": first_minute * 60}
            for table in ("minute_totals", "host_minute_totals"):
                spared = _SPARED_MINUTE.format(table=table)
                conn.execute(f"DELETE FROM {table} WHERE minute < :first AND {spared}", minutes)
        if first_flush_time > 0:
            flushes = {"first": first_flush_time, "since": first_flush_time}
            old = f"SELECT id FROM flush WHERE time < :first AND {_SPARED_FLUSH}"
            conn.execute(f"DELETE FROM flow WHERE flush IN ({old})", flushes)
            conn.execute(f"DELETE FROM flush WHERE id IN ({old})", flushes)

    def prune(self, now: float, retention: RetentionSpec) -> None:
        """Delete detail older than the retention allows (quarters only when quarters > 0)."""
        with self._transaction("cannot prune"):
            self._prune(*prune_bounds(now, retention))
            if retention.quarters > 0:
                self._prune_quarters(int(now - retention.quarters) // 900)

    def _prune_quarters(self, first: int) -> None:
        """Delete quarters, hours and days before the UTC day holding quarter `first`.

        The bound is rounded down to a UTC day so that every hour and day kept is still the
        exact sum of the quarters kept: reports may read either.
        """
        day = first // QUARTERS_PER_DAY
        since = {"since": first * 900}
        for table, unit, per in (("quarter_totals", "quarter", 1), *ROLLUPS):
            spared = _SPARED_DAY.format(table=table, unit=unit, per_day=QUARTERS_PER_DAY // per)
            sql = f"DELETE FROM {table} WHERE {unit} < :first AND {spared}"
            self._conn.execute(sql, {"first": day * QUARTERS_PER_DAY // per, **since})
        for table, unit, minutes in HOST_TABLES[1:]:
            per_day = MINUTES_PER_DAY // minutes
            spared = _SPARED_DAY.format(table=table, unit=unit, per_day=per_day)
            sql = f"DELETE FROM {table} WHERE {unit} < :first AND {spared}"
            self._conn.execute(sql, {"first": day * per_day, **since})

    # -- the record of replayed captures ---------------------------------------------------
    def replays_of(self, sha256: str) -> list[ReplayRow]:
        """Earlier replays of the capture with this SHA-256, oldest first."""
        sql = "SELECT path, started, finished FROM replay WHERE sha256 = ? ORDER BY started"
        with self._errors("cannot read the record of replays"):
            return [ReplayRow(*r) for r in self._conn.execute(sql, (sha256,)).fetchall()]

    def begin_replay(
        self, sha256: str, path: str, size: int, started: float, first_packet: float
    ) -> int:
        """Record a replay before its first flush; its row id."""
        self.ensure_file()
        sql = (
            "INSERT INTO replay (sha256, path, size, started, first_packet) VALUES (?, ?, ?, ?, ?)"
        )
        with self._transaction("cannot record the replay"):
            cur = self._conn.execute(sql, (sha256, path, size, started, first_packet))
        return int(cur.lastrowid or 0)

    def finish_replay(self, replay_id: int, end: ReplayEnd) -> None:
        """Complete the record of a replay whose last flush committed."""
        self.ensure_file()
        sql = (
            "UPDATE replay SET finished = ?, first_packet = ?, last_packet = ?, last_flush = ?, "
            "frames = ?, "
            "packets = ?, bytes = ? WHERE id = ?"
        )
        with self._transaction("cannot record the replay"):
            self._conn.execute(sql, (*end, replay_id))

    def newest_time(self) -> float | None:
        """The end of the newest stored detail (minute or flush), or None when there is none."""
        sql = (
            "SELECT (SELECT (max(minute) + 1) * 60 FROM minute_totals), "
            "(SELECT max(time) FROM flush)"
        )
        with self._errors("cannot read the newest data"):
            row = self._conn.execute(sql).fetchone()
        times = [float(t) for t in row if t is not None]
        return max(times) if times else None

    def close(self) -> None:
        """Close the connection (WAL is checkpointed by SQLite on the last close)."""
        self._conn.close()


class _FlowRows:
    """Flow table rows for one write; address text memoised across monitors.

    Every `YIELD_EVERY` rows it sleeps(0): the write runs in a worker thread and holds the GIL
    for its Python work, and that pause hands the GIL to a waiting packet loop at once instead
    of after the interpreter's switch interval.
    """

    YIELD_EVERY = 256

    def __init__(self) -> None:
        self._texts: dict[tuple[int, int], str] = {}
        self._count = 0

    def text(self, family: int, value: int) -> str:
        """The address's text, formatted once per write."""
        key = (family, value)
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = address_text(family, value)
        return text

    def rows(self, flush_id: int | None, flows: Flows) -> Iterator[tuple[object, ...]]:
        """A row per position with packets (OTHER: family 0, protocol 0, '*' addresses)."""
        text = self.text
        for key, (sent, received, packets) in flows.items():
            if not packets:
                continue
            self._count += 1
            if not self._count % self.YIELD_EVERY:
                time.sleep(0)
            if key == OTHER:
                yield (flush_id, 0, 0, "*", -1, "*", -1, sent, received, packets)
                continue
            family, proto, client, client_port, server, server_port = key
            yield (
                flush_id,
                family,
                proto,
                text(family, client),
                client_port,
                text(family, server),
                server_port,
                sent,
                received,
                packets,
            )
