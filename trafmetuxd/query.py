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

from trafmetuxd.schema import (
    DAY_TOTALS,
    HOSTS_VERSION,
    HOUR_TOTALS,
    MINUTE_TOTALS,
    QUARTER_TOTALS,
    QUARTERS_PER_DAY,
    QUARTERS_PER_HOUR,
    ROLLUP_VERSION,
    SECONDS_PER_QUARTER,
    TOTALS_UNITS,
)

# per monitor name: one [in_bytes, out_bytes] per bucket
Sums = dict[str, list[list[int]]]
# (family, protocol, client, client_port, server, server_port) -> [sent, received, packets]
TextFlows = dict[tuple[int, int, str, int, str, int], list[int]]

_GRAIN = {"minute": (MINUTE_TOTALS, 60), "quarter": (QUARTER_TOTALS, SECONDS_PER_QUARTER)}
BATCH = 200  # ranges per statement: 4 parameters each, under SQLite's oldest limit of 999
# (table, first unit, end unit): the rows lo <= unit < hi of one totals table
Segment = tuple[str, int, int]
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


def split_quarters(lo: int, hi: int) -> list[Segment]:
    """The quarters [lo, hi) as whole UTC days, whole hours beside them, quarters at the edges.

    The rollups are exact sums of their quarters, so the pieces' rows sum to the same figures
    as the quarters [lo, hi) themselves, in every zone: local midnight need not be UTC midnight
    nor even on the hour (+05:30, Lord Howe's +10:30).
    """
    first, end = -(-lo // QUARTERS_PER_DAY), hi // QUARTERS_PER_DAY
    if first >= end:
        return _split_hours(lo, hi)
    return [
        *_split_hours(lo, first * QUARTERS_PER_DAY),
        (DAY_TOTALS, first, end),
        *_split_hours(end * QUARTERS_PER_DAY, hi),
    ]


def _split_hours(lo: int, hi: int) -> list[Segment]:
    """The quarters [lo, hi) as whole UTC hours in the middle and quarters at the edges."""
    first, end = -(-lo // QUARTERS_PER_HOUR), hi // QUARTERS_PER_HOUR
    if first >= end:
        pieces = [(QUARTER_TOTALS, lo, hi)]
    else:
        pieces = [
            (QUARTER_TOTALS, lo, first * QUARTERS_PER_HOUR),
            (HOUR_TOTALS, first, end),
            (QUARTER_TOTALS, end * QUARTERS_PER_HOUR, hi),
        ]
    return [p for p in pieces if p[1] < p[2]]


def bucket_sums(db: Path, names: Sequence[str], bounds: Sequence[int], grain: str) -> Sums:
    """Sum in/out bytes into the buckets [bounds[i], bounds[i+1]) (UTC seconds, ascending)."""
    with closing(Reader()) as reader:
        return reader.bucket_sums(db, names, bounds, grain)


# (table, monitor id, first unit, end unit): one bucket of one monitor
_Key = tuple[str, int, int, int]


class Reader:
    """A long-lived read-only connection to the store and a cache of bucket sums.

    The cache is never stale: it is cleared whenever the store changed. `PRAGMA data_version`
    differs as soon as any other connection (the daemon's writer, a flush, a prune, anything)
    committed since this connection's last read, and the file's identity is checked on every
    call, so a replaced database is reopened. Each call reads one snapshot in one read
    transaction. Thread-safe: calls are serialised by a lock. Quarter buckets are summed from
    the UTC day and hour rollups where whole days and hours fit (schema version 2 on).
    """

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._ident: tuple[str, int, int] | None = None
        self._version: int | None = None
        self._rollups = False
        self._cache: dict[_Key, tuple[int, int]] = {}  # -> (in_bytes, out_bytes)

    @property
    def cached(self) -> int:
        """How many bucket sums are cached now."""
        return len(self._cache)

    def close(self) -> None:
        """Close the connection and forget the cache."""
        with self._lock:
            self._drop()

    def bucket_sums(
        self,
        db: Path,
        names: Sequence[str],
        bounds: Sequence[int],
        grain: str,
        gateways: Sequence[str] | None = None,
    ) -> Sums:
        """Sum in/out bytes into the buckets [bounds[i], bounds[i+1]) (UTC seconds, ascending).

        The SQLite store holds this gateway only: `gateways` is checked by the handlers.
        """
        sums: Sums = {n: [[0, 0] for _ in range(len(bounds) - 1)] for n in names}
        if len(bounds) < 2:
            return sums
        table, seconds = _GRAIN[grain]
        # a row of unit u lies in bucket i when bounds[i] <= u * seconds < bounds[i + 1]
        edges = [-(-b // seconds) for b in bounds]
        with self._lock:
            con = self._connect(db)
            if con is None:
                return sums
            with self._snapshot(con):
                keys = {
                    (name, i): (table, mid, lo, hi)
                    for name, mid in _ids(con, names).items()
                    for i, (lo, hi) in enumerate(pairwise(edges))
                    if lo < hi
                }
                found = self._lookup(con, set(keys.values()))
        for (name, i), key in keys.items():
            sums[name][i] = list(found[key])
        return sums

    def stored_span(
        self, db: Path, names: Sequence[str], gateways: Sequence[str] | None = None
    ) -> tuple[int, int] | None:
        """stored_span() of the file (this gateway's only)."""
        return stored_span(db, names)

    def flows(
        self,
        db: Path,
        monitor: str,
        begin: float,
        end: float,
        gateways: Sequence[str] | None = None,
    ) -> TextFlows:
        """flows() of the file (this gateway's only)."""
        return flows(db, monitor, begin, end)

    def host_sums(
        self, db: Path, monitor: str, first: int, end: int, gateways: Sequence[str] | None = None
    ) -> HostSums:
        """host_sums() of the file (this gateway's only)."""
        return host_sums(db, monitor, first, end)

    def host_sums_over(
        self,
        db: Path,
        monitor: str,
        ranges: Sequence[tuple[int, int]],
        gateways: Sequence[str] | None = None,
    ) -> list[HostSums]:
        """host_sums_over() of the file (this gateway's only)."""
        return host_sums_over(db, monitor, ranges)

    def host_series(
        self,
        db: Path,
        monitor: str,
        host: str,
        ranges: Sequence[tuple[int, int]],
        grain: str,
        gateways: Sequence[str] | None = None,
    ) -> list[list[int]]:
        """host_series() of the file (this gateway's only)."""
        return host_series(db, monitor, host, ranges, grain)

    def gateways(self) -> list[str]:
        """The gateways the store holds: none but this one (the handlers name it)."""
        return []

    def _lookup(self, con: sqlite3.Connection, keys: set[_Key]) -> dict[_Key, tuple[int, int]]:
        """Every key's sum: from the cache, the rest read in batches and cached while room."""
        found = {k: self._cache[k] for k in keys if k in self._cache}
        missing = [k for k in keys if k not in found]
        fresh = _read_sums(con, missing, self._rollups)
        for key, value in fresh.items():
            if len(self._cache) < self.limit:  # bounded memory; cleared on the next change
                self._cache[key] = value
        return found | fresh

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
                # a migration by the daemon is a change too: the rollups appear with it
                schema = con.execute("PRAGMA user_version").fetchone()[0]
                self._rollups = schema >= ROLLUP_VERSION
            yield
            con.execute("COMMIT")
        except BaseException:
            self._drop()  # a failed read leaves no transaction and no cache behind
            raise

    def _drop(self) -> None:
        if self._con is not None:
            self._con.close()
        self._con = self._ident = self._version = None
        self._rollups = False
        self._cache.clear()


def _read_sums(
    con: sqlite3.Connection, keys: Sequence[_Key], rollups: bool
) -> dict[_Key, tuple[int, int]]:
    """In/out bytes of each key's rows, quarter keys split into days, hours and quarters."""
    per_table: dict[str, list[tuple[int, int, int, int]]] = {}
    for index, (table, mid, lo, hi) in enumerate(keys):
        pieces = split_quarters(lo, hi) if rollups and table == QUARTER_TOTALS else None
        for piece, first, end in pieces or [(table, lo, hi)]:
            per_table.setdefault(piece, []).append((index, mid, first, end))
    sums = [[0, 0] for _ in keys]
    for table, ranges in per_table.items():
        for start in range(0, len(ranges), BATCH):
            for index, rx, tx in _range_sums(con, table, ranges[start : start + BATCH]):
                sums[index][0] += rx
                sums[index][1] += tx
    return {key: (rx, tx) for key, (rx, tx) in zip(keys, sums, strict=True)}


def _range_sums(
    con: sqlite3.Connection, table: str, ranges: Sequence[tuple[int, int, int, int]]
) -> list[tuple[int, int, int]]:
    """(index, in, out) per (index, monitor, lo, hi) with rows: lo <= unit < hi, one statement.

    CROSS JOIN keeps the ranges as the outer loop: one primary-key range scan per range.
    """
    unit = TOTALS_UNITS[table]
    marks = ",".join(["(?, ?, ?, ?)"] * len(ranges))
    sql = (
        f"WITH r(i, m, lo, hi) AS (VALUES {marks}) "
        f"SELECT r.i, SUM(t.in_bytes), SUM(t.out_bytes) FROM r CROSS JOIN {table} t "
        f"WHERE t.monitor = r.m AND t.{unit} >= r.lo AND t.{unit} < r.hi GROUP BY r.i"
    )
    params = [value for r in ranges for value in r]
    return [(int(i), int(rx), int(tx)) for i, rx, tx in con.execute(sql, params)]


def add_to_bucket(
    buckets: list[list[int]], bounds: Sequence[int], t: int, rx: int, tx: int
) -> None:
    """Add (rx, tx) at instant t to the bucket containing it; outside the bounds is ignored."""
    i = bisect_right(bounds, t) - 1
    if 0 <= i < len(buckets):
        buckets[i][0] += rx
        buckets[i][1] += tx


def stored_span(db: Path, names: Sequence[str]) -> tuple[int, int] | None:
    """(start of the first, start of the last) stored quarter of these monitors, UTC seconds."""
    con = open_readonly(db)
    if con is None:
        return None
    first: list[int] = []
    last: list[int] = []
    with closing(con):
        for mid in _ids(con, names).values():
            # one primary-key seek at each end per monitor, never a scan
            for order, out in (("ASC", first), ("DESC", last)):
                row = con.execute(
                    f"SELECT quarter FROM {QUARTER_TOTALS} WHERE monitor = ? "
                    f"ORDER BY quarter {order} LIMIT 1",
                    (mid,),
                ).fetchone()
                if row is not None:
                    out.append(int(row[0]))
    if not first:
        return None
    return min(first) * SECONDS_PER_QUARTER, max(last) * SECONDS_PER_QUARTER


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


# host text -> [in_bytes, in_packets, out_bytes, out_packets]
HostSums = dict[str, list[int]]
_HOST_TABLES = {"minute_totals": "host_minute_totals", "quarter_totals": "host_quarter_totals",
                "hour_totals": "host_hour_totals", "day_totals": "host_day_totals"}  # fmt: skip


def host_sums(db: Path, monitor: str, first: int, end: int) -> HostSums:
    """A monitor's per-host totals over the UTC quarters [first, end): days, hours, quarters."""
    return host_sums_over(db, monitor, [(first, end)])[0]


def host_sums_over(db: Path, monitor: str, ranges: Sequence[tuple[int, int]]) -> list[HostSums]:
    """A monitor's per-host totals over each range of UTC quarters [first, end), one snapshot."""
    out: list[HostSums] = [{} for _ in ranges]
    con = _open_hosts(db)
    if con is None:
        return out
    with closing(con), _read(con):
        for sums, (first, end) in zip(out, ranges, strict=True):
            for table, lo, hi in split_quarters(first, end):
                for host, *row in con.execute(host_range_sql(table), (monitor, lo, hi)):
                    acc = sums.setdefault(host, [0, 0, 0, 0])
                    for i in range(4):
                        acc[i] += int(row[i])
    return out


def host_range_sql(table: str) -> str:
    """A monitor's per-host sums over a range of one totals table's units (by its index).

    "GROUP BY +host": grouping by the bare column would make SQLite walk the primary key
    (monitor, host, unit) for its host order, reading every row the monitor ever stored; the
    unary plus leaves it the (monitor, unit) index, which reads only the range (schema.py).
    """
    unit = TOTALS_UNITS[table]
    return (
        "SELECT host, SUM(in_bytes), SUM(in_packets), SUM(out_bytes), SUM(out_packets) "
        f"FROM {_HOST_TABLES[table]} t JOIN monitor m ON m.id = t.monitor "
        f"WHERE m.name = ? AND t.{unit} >= ? AND t.{unit} < ? GROUP BY +host"
    )


def host_series(
    db: Path, monitor: str, host: str, ranges: Sequence[tuple[int, int]], grain: str
) -> list[list[int]]:
    """One host's [in_bytes, in_packets, out_bytes, out_packets] over each range of units.

    grain "quarter": ranges of UTC quarters, read from the day, hour and quarter rollups;
    "minute": ranges of UTC minutes. Primary-key range scans, a batch of ranges per statement.
    """
    sums = [[0, 0, 0, 0] for _ in ranges]
    con = _open_hosts(db)
    if con is None:
        return sums
    per_table: dict[str, list[tuple[int, int, int]]] = {}
    for index, (lo, hi) in enumerate(ranges):
        pieces = split_quarters(lo, hi) if grain == "quarter" else [(MINUTE_TOTALS, lo, hi)]
        for table, first, end in pieces:
            per_table.setdefault(table, []).append((index, first, end))
    with closing(con), _read(con):
        row = con.execute("SELECT id FROM monitor WHERE name = ?", (monitor,)).fetchone()
        if row is None:
            return sums
        for table, parts in per_table.items():
            for start in range(0, len(parts), BATCH):
                for index, *figures in _host_range_sums(
                    con, table, int(row[0]), host, parts[start : start + BATCH]
                ):
                    for i in range(4):
                        sums[index][i] += figures[i]
    return sums


def _host_range_sums(
    con: sqlite3.Connection,
    table: str,
    monitor: int,
    host: str,
    ranges: Sequence[tuple[int, int, int]],
) -> list[tuple[int, ...]]:
    """(index, in_bytes, in_packets, out_bytes, out_packets) per (index, lo, hi) with rows."""
    unit = TOTALS_UNITS[table]
    marks = ",".join(["(?, ?, ?)"] * len(ranges))
    sql = (
        f"WITH r(i, lo, hi) AS (VALUES {marks}) "
        "SELECT r.i, SUM(t.in_bytes), SUM(t.in_packets), SUM(t.out_bytes), SUM(t.out_packets) "
        f"FROM r CROSS JOIN {_HOST_TABLES[table]} t "
        f"WHERE t.monitor = ? AND t.host = ? AND t.{unit} >= r.lo AND t.{unit} < r.hi "
        "GROUP BY r.i"
    )
    params = [value for r in ranges for value in r] + [monitor, host]
    return [tuple(int(v) for v in row) for row in con.execute(sql, params)]


def _open_hosts(db: Path) -> sqlite3.Connection | None:
    """A read-only connection in autocommit mode, or None while there are no host tables."""
    con = open_readonly(db)
    if con is None:
        return None
    if con.execute("PRAGMA user_version").fetchone()[0] < HOSTS_VERSION:
        con.close()
        return None
    con.isolation_level = None  # explicit BEGIN: one snapshot for every statement of a call
    return con


@contextmanager
def _read(con: sqlite3.Connection) -> Iterator[None]:
    """One read transaction around the statements of a call."""
    con.execute("BEGIN")
    try:
        yield
    finally:
        con.execute("COMMIT")
