"""Read-only report queries over the SQLite store. Blocking: call them in a worker thread."""

from __future__ import annotations

import os
import sqlite3
import threading
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from itertools import pairwise
from pathlib import Path
from urllib.parse import quote

# per monitor name: one [in_bytes, out_bytes] per bucket
Sums = dict[str, list[list[int]]]
# (family, protocol, client, client_port, server, server_port) -> [sent, received, packets]
TextFlows = dict[tuple[int, int, str, int, str, int], list[int]]

_GRAIN = {"minute": ("minute_totals", "minute", 60), "quarter": ("quarter_totals", "quarter", 900)}
_GRAIN_COLUMN = {table: column for table, column, _ in _GRAIN.values()}
CACHE_LIMIT = 50_000  # cached bucket sums per reader (~10 MB)


def open_readonly(db: Path) -> sqlite3.Connection | None:
    """A read-only connection, or None while the store has no database or schema yet."""
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, check_same_thread=False)
    if con.execute("PRAGMA user_version").fetchone()[0] < 1:
        con.close()
        return None
    return con


def _ids(con: sqlite3.Connection, names: Sequence[str]) -> dict[str, int]:
    rows = con.execute("SELECT name, id FROM monitor").fetchall()
    return {name: mid for name, mid in rows if name in names}


def bucket_sums(db: Path, names: Sequence[str], bounds: Sequence[int], grain: str) -> Sums:
    """Sum in/out bytes into the buckets [bounds[i], bounds[i+1]) (UTC seconds, ascending)."""
    with closing(Reader()) as reader:
        return reader.bucket_sums(db, names, bounds, grain)


class Reader:
    """A long-lived read-only connection to the store and a cache of bucket sums.

    The cache is never stale: it is cleared whenever the store changed. `PRAGMA data_version`
    differs as soon as any other connection (the daemon's writer, a flush, a prune, anything)
    committed since this connection's last read, and the file's identity is checked on every
    call, so a replaced database is reopened. Each call reads one snapshot in one read
    transaction. Thread-safe: calls are serialised by a lock.
    """

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._ident: tuple[str, int, int] | None = None
        self._version: int | None = None
        # (table, monitor id, first unit, end unit) -> (in_bytes, out_bytes)
        self._cache: dict[tuple[str, int, int, int], tuple[int, int]] = {}

    @property
    def cached(self) -> int:
        """How many bucket sums are cached now."""
        return len(self._cache)

    def close(self) -> None:
        """Close the connection and forget the cache."""
        with self._lock:
            self._drop()

    def bucket_sums(
        self, db: Path, names: Sequence[str], bounds: Sequence[int], grain: str
    ) -> Sums:
        """Sum in/out bytes into the buckets [bounds[i], bounds[i+1]) (UTC seconds, ascending)."""
        sums: Sums = {n: [[0, 0] for _ in range(len(bounds) - 1)] for n in names}
        if len(bounds) < 2:
            return sums
        table, _, seconds = _GRAIN[grain]
        # a row of unit u lies in bucket i when bounds[i] <= u * seconds < bounds[i + 1]
        edges = [-(-b // seconds) for b in bounds]
        with self._lock:
            con = self._connect(db)
            if con is None:
                return sums
            with self._snapshot(con):
                for name, mid in _ids(con, names).items():
                    sums[name] = self._sums(con, table, mid, edges)
        return sums

    def _sums(
        self, con: sqlite3.Connection, table: str, mid: int, edges: Sequence[int]
    ) -> list[list[int]]:
        out = []
        for lo, hi in pairwise(edges):
            if lo >= hi:
                out.append([0, 0])
                continue
            key = (table, mid, lo, hi)
            hit = self._cache.get(key)
            if hit is None:
                hit = _range_sum(con, table, mid, lo, hi)
                if len(self._cache) < self.limit:  # bounded memory; cleared on the next change
                    self._cache[key] = hit
            out.append([hit[0], hit[1]])
        return out

    def _connect(self, db: Path) -> sqlite3.Connection | None:
        """The open connection, (re)opened when the file at `db` is not the one it reads."""
        try:
            st = os.stat(db)
        except OSError:
            self._drop()
            return None
        ident = (str(db), st.st_dev, st.st_ino)
        if self._con is not None and ident == self._ident:
            return self._con
        self._drop()
        con = open_readonly(db)
        if con is not None:
            con.isolation_level = None  # explicit BEGIN: one snapshot per call
            self._con, self._ident = con, ident
        return con

    @contextmanager
    def _snapshot(self, con: sqlite3.Connection) -> Iterator[None]:
        """One read transaction; the cache is cleared first when the store changed."""
        try:
            con.execute("BEGIN")
            # data_version is read inside the transaction: it names the snapshot read below
            version = con.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._cache.clear()
                self._version = version
            yield
            con.execute("COMMIT")
        except BaseException:
            self._drop()  # a failed read leaves no transaction and no cache behind
            raise

    def _drop(self) -> None:
        if self._con is not None:
            self._con.close()
        self._con = self._ident = self._version = None
        self._cache.clear()


def _range_sum(con: sqlite3.Connection, table: str, mid: int, lo: int, hi: int) -> tuple[int, int]:
    """In/out bytes of one monitor's rows with lo <= unit < hi (a primary-key range)."""
    column = _GRAIN_COLUMN[table]
    row = con.execute(
        f"SELECT SUM(in_bytes), SUM(out_bytes) FROM {table} "
        f"WHERE monitor = ? AND {column} >= ? AND {column} < ?",
        (mid, lo, hi),
    ).fetchone()
    return (int(row[0] or 0), int(row[1] or 0))


def add_to_bucket(
    buckets: list[list[int]], bounds: Sequence[int], t: int, rx: int, tx: int
) -> None:
    """Add (rx, tx) at instant t to the bucket containing it; outside the bounds is ignored."""
    i = bisect_right(bounds, t) - 1
    if 0 <= i < len(buckets):
        buckets[i][0] += rx
        buckets[i][1] += tx


def first_instant(db: Path, names: Sequence[str]) -> int | None:
    """UTC seconds of the earliest stored quarter of these monitors, None when nothing is stored."""
    con = open_readonly(db)
    if con is None:
        return None
    with closing(con):
        ids = list(_ids(con, names).values())
        if not ids:
            return None
        marks = ",".join("?" * len(ids))
        row = con.execute(
            f"SELECT MIN(quarter) FROM quarter_totals WHERE monitor IN ({marks})", ids
        ).fetchone()
    return None if row[0] is None else int(row[0]) * 900


def flows(db: Path, monitor: str, begin: float, end: float) -> TextFlows:
    """A monitor's flow positions summed over the flushes with begin <= time < end."""
    out: TextFlows = {}
    con = open_readonly(db)
    if con is None:
        return out
    sql = (
        "SELECT f.family, f.protocol, f.client, f.client_port, f.server, f.server_port, "
        "SUM(f.sent), SUM(f.received), SUM(f.packets) FROM flow f "
        "JOIN flush ON flush.id = f.flush JOIN monitor m ON m.id = flush.monitor "
        "WHERE m.name = ? AND flush.time >= ? AND flush.time < ? "
        "GROUP BY f.family, f.protocol, f.client, f.client_port, f.server, f.server_port"
    )
    with closing(con):
        for fam, proto, cli, cport, srv, sport, sent, recv, pkts in con.execute(
            sql, (monitor, begin, end)
        ):
            out[(fam, proto, cli, cport, srv, sport)] = [sent, recv, pkts]
    return out


def overflow(db: Path, monitor: str, begin: float, end: float) -> int:
    """Packets folded into the 'other' position over the flushes in [begin, end)."""
    con = open_readonly(db)
    if con is None:
        return 0
    with closing(con):
        row = con.execute(
            "SELECT SUM(overflow) FROM flush JOIN monitor m ON m.id = flush.monitor "
            "WHERE m.name = ? AND flush.time >= ? AND flush.time < ?",
            (monitor, begin, end),
        ).fetchone()
    return int(row[0] or 0)
