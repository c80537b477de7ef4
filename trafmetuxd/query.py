"""Read-only report queries over the SQLite store. Blocking: call them in a worker thread."""

from __future__ import annotations

import sqlite3
from bisect import bisect_right
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

# per monitor name: one [in_bytes, out_bytes] per bucket
Sums = dict[str, list[list[int]]]
# (family, protocol, client, client_port, server, server_port) -> [sent, received, packets]
TextFlows = dict[tuple[int, int, str, int, str, int], list[int]]

_GRAIN = {"minute": ("minute_totals", "minute", 60), "quarter": ("quarter_totals", "quarter", 900)}


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
    sums: Sums = {n: [[0, 0] for _ in range(len(bounds) - 1)] for n in names}
    con = open_readonly(db)
    if con is None or len(bounds) < 2:
        return sums
    table, column, seconds = _GRAIN[grain]
    lo, hi = bounds[0] // seconds, -(-bounds[-1] // seconds)
    sql = (
        f"SELECT {column}, in_bytes, out_bytes FROM {table} "
        f"WHERE monitor = ? AND {column} >= ? AND {column} < ?"
    )
    with closing(con):
        for name, mid in _ids(con, names).items():
            for unit, rx, tx in con.execute(sql, (mid, lo, hi)):
                add_to_bucket(sums[name], bounds, unit * seconds, rx, tx)
    return sums


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
