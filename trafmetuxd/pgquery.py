"""Read-only report queries over the PostgreSQL fleet store, for any set of gateways.

The same figures as query.py over SQLite: quarter buckets are summed from the UTC day and hour
rollups where whole days and hours fit. Blocking: call in a worker thread. One connection,
serialised by a lock, reconnected after an error; a store that cannot be reached is an
`unavailable` reply naming it (never its password). Bucket sums are cached until the server
has any write transaction newer than the cache (docs/store.md, "Report reads").
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg

from trafmetuxd.pgstore import connect, describe
from trafmetuxd.protocol import UNAVAILABLE, ProtocolError
from trafmetuxd.query import CACHE_LIMIT, HostSums, Sums, TextFlows, split_quarters
from trafmetuxd.schema import MINUTE_TOTALS, QUARTER_TOTALS, SECONDS_PER_QUARTER, TOTALS_UNITS
from trafmetuxd.spec import StoreSpec

_GRAIN = {"minute": ("minute_totals", 60), "quarter": (QUARTER_TOTALS, SECONDS_PER_QUARTER)}
_HOST_TABLES = {"minute_totals": "host_minute_totals", "quarter_totals": "host_quarter_totals",
                "hour_totals": "host_hour_totals", "day_totals": "host_day_totals"}  # fmt: skip
# a cached bucket sum: (gateways, grain, monitor, begin, end) -> (in_bytes, out_bytes)
_Key = tuple[tuple[str, ...], str, str, int, int]


class PgReader:
    """Report reads for the gateways asked (default: this one), bucket sums cached.

    The cache is never stale: each bucket_sums call reads in one REPEATABLE READ snapshot and
    first compares that snapshot's identity (pg_current_snapshot(): the next transaction id and
    those in progress) with the one the cache was filled under. Any write transaction that
    began or ended since (a flush of any gateway, a prune, an import, an edit by hand) changes
    it and clears the cache; with no such transaction the rows read are the same rows.
    """

    def __init__(self, spec: StoreSpec, limit: int = CACHE_LIMIT) -> None:
        self.spec = spec
        self.where = describe(spec)
        self.limit = limit
        self.hits = 0  # bucket sums answered from the cache since the reader was made
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._snapshot: str | None = None  # the snapshot the cache was filled under
        self._cache: dict[_Key, tuple[int, int]] = {}

    @property
    def cached(self) -> int:
        """How many bucket sums are cached now."""
        return len(self._cache)

    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor on the one connection (made when needed); errors as `unavailable`."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.spec)
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                self._drop()
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
                msg = f"the store {self.where} cannot be read: {detail}"
                raise ProtocolError(UNAVAILABLE, msg) from exc

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._snapshot = None
        self._cache.clear()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._drop()

    def _gws(self, gateways: Sequence[str] | None) -> list[str]:
        return [self.spec.gateway] if gateways is None else list(gateways)

    def gateways(self) -> list[str]:
        """Every gateway with rows in the store, sorted."""
        sql = "SELECT DISTINCT gateway FROM flush_sequence ORDER BY gateway"
        with self._cursor() as cur:
            if not _has_schema(cur):
                return []
            return [str(r[0]) for r in cur.execute(sql).fetchall()]

    def bucket_sums(
        self,
        db: Path,
        names: Sequence[str],
        bounds: Sequence[int],
        grain: str,
        gateways: Sequence[str] | None = None,
    ) -> Sums:
        """Sum in/out bytes of the gateways into the buckets [bounds[i], bounds[i+1])."""
        sums: Sums = {n: [[0, 0] for _ in range(len(bounds) - 1)] for n in names}
        if len(bounds) < 2 or not names:
            return sums
        gws = tuple(sorted(set(self._gws(gateways))))
        keys = {(n, i): (gws, grain, n, lo, hi) for n in names
                for i, (lo, hi) in enumerate(pairwise(bounds))}  # fmt: skip
        with self._cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if not _has_schema(cur):
                return sums
            self._check_snapshot(cur)
            missing = [k for k in keys if keys[k] not in self._cache]
            self.hits += len(keys) - len(missing)
            if missing:
                wanted = sorted({i for _, i in missing})
                read = _bucket_sums(cur, sorted({n for n, _ in missing}), bounds, wanted,
                                    grain, list(gws))  # fmt: skip
                for k in missing:
                    if len(self._cache) < self.limit:  # bounded; cleared on the next write
                        self._cache[keys[k]] = read.get(k, (0, 0))
                    sums[k[0]][k[1]] = list(read.get(k, (0, 0)))
            for k, key in keys.items():
                if key in self._cache:
                    sums[k[0]][k[1]] = list(self._cache[key])
        return sums

    def _check_snapshot(self, cur: psycopg.Cursor[Any]) -> None:
        """Clear the cache when this transaction's snapshot is not the one it was filled under."""
        row = cur.execute("SELECT pg_current_snapshot()::text").fetchone()
        snapshot = str(row[0]) if row else None
        if snapshot is None or snapshot != self._snapshot:
            self._cache.clear()
        self._snapshot = snapshot

    def stored_span(
        self, db: Path, names: Sequence[str], gateways: Sequence[str] | None = None
    ) -> tuple[int, int] | None:
        """(start of the first, start of the last) stored quarter of these monitors."""
        sql = (
            "SELECT min(quarter), max(quarter) FROM quarter_totals "
            "WHERE gateway = ANY(%s) AND monitor = ANY(%s)"
        )
        with self._cursor() as cur:
            if not _has_schema(cur):
                return None
            row = cur.execute(sql, (self._gws(gateways), list(names))).fetchone()
        if row is None or row[0] is None:
            return None
        return int(row[0]) * SECONDS_PER_QUARTER, int(row[1]) * SECONDS_PER_QUARTER

    def flows(
        self,
        db: Path,
        monitor: str,
        begin: float,
        end: float,
        gateways: Sequence[str] | None = None,
    ) -> TextFlows:
        """A monitor's flow positions summed over the gateways' flushes in [begin, end)."""
        sql = (
            "SELECT f.family, f.protocol, f.client, f.client_port, f.server, f.server_port, "
            "SUM(f.sent), SUM(f.received), SUM(f.packets) FROM flow f "
            "JOIN flush ON flush.id = f.flush WHERE flush.gateway = ANY(%s) "
            "AND flush.monitor = %s AND flush.time >= %s AND flush.time < %s "
            "GROUP BY f.family, f.protocol, f.client, f.client_port, f.server, f.server_port"
        )
        out: TextFlows = {}
        with self._cursor() as cur:
            if not _has_schema(cur):
                return out
            for fam, proto, cli, cport, srv, sport, sent, recv, pkts in cur.execute(
                sql, (self._gws(gateways), monitor, begin, end)
            ):
                out[(fam, proto, cli, cport, srv, sport)] = [int(sent), int(recv), int(pkts)]
        return out

    def host_sums(
        self,
        db: Path,
        monitor: str,
        first: int,
        end: int,
        gateways: Sequence[str] | None = None,
    ) -> HostSums:
        """A monitor's per-host totals of the gateways over the UTC quarters [first, end)."""
        return self.host_sums_over(db, monitor, [(first, end)], gateways)[0]

    def host_sums_over(
        self,
        db: Path,
        monitor: str,
        ranges: Sequence[tuple[int, int]],
        gateways: Sequence[str] | None = None,
    ) -> list[HostSums]:
        """A monitor's per-host totals of the gateways over each range of UTC quarters.

        Each range is read as whole days, hours and quarters (split_quarters); per table one
        statement for every range, each a scan of the (gateway, monitor, unit) index.
        """
        out: list[HostSums] = [{} for _ in ranges]
        per_table = _pieces(ranges, "quarter")
        with self._cursor() as cur:
            if not _has_schema(cur):
                return out
            for table, parts in per_table.items():
                unit = TOTALS_UNITS[table]
                sql = (
                    "SELECT c.i, s.host, s.a, s.b, s.c, s.d FROM "
                    "unnest(%s::int[], %s::bigint[], %s::bigint[]) AS c(i, lo, hi) "
                    "CROSS JOIN LATERAL (SELECT t.host, SUM(t.in_bytes) AS a, "
                    "SUM(t.in_packets) AS b, SUM(t.out_bytes) AS c, SUM(t.out_packets) AS d "
                    f"FROM {_HOST_TABLES[table]} t WHERE t.gateway = ANY(%s) "
                    f"AND t.monitor = %s AND t.{unit} >= c.lo AND t.{unit} < c.hi "
                    "GROUP BY t.host) s"
                )
                params = (*_columns(parts), self._gws(gateways), monitor)
                for i, host, *row in cur.execute(sql, params):
                    acc = out[i].setdefault(str(host), [0, 0, 0, 0])
                    for j in range(4):
                        acc[j] += int(row[j])
        return out

    def host_series(
        self,
        db: Path,
        monitor: str,
        host: str,
        ranges: Sequence[tuple[int, int]],
        grain: str,
        gateways: Sequence[str] | None = None,
    ) -> list[list[int]]:
        """One host's [in_bytes, in_packets, out_bytes, out_packets] over each range of units.

        grain "quarter": ranges of UTC quarters, from the day, hour and quarter rollups;
        "minute": ranges of UTC minutes. Per table one statement, primary-key range scans.
        """
        sums = [[0, 0, 0, 0] for _ in ranges]
        per_table = _pieces(ranges, grain)
        with self._cursor() as cur:
            if not _has_schema(cur):
                return sums
            for table, parts in per_table.items():
                unit = TOTALS_UNITS[table]
                sql = (
                    "SELECT c.i, SUM(t.in_bytes), SUM(t.in_packets), SUM(t.out_bytes), "
                    "SUM(t.out_packets) FROM "
                    "unnest(%s::int[], %s::bigint[], %s::bigint[]) AS c(i, lo, hi) "
                    f"JOIN {_HOST_TABLES[table]} t ON t.gateway = ANY(%s) AND t.monitor = %s "
                    f"AND t.host = %s AND t.{unit} >= c.lo AND t.{unit} < c.hi GROUP BY c.i"
                )
                params = (*_columns(parts), self._gws(gateways), monitor, host)
                for i, *row in cur.execute(sql, params):
                    for j in range(4):
                        sums[i][j] += int(row[j])
        return sums


def _pieces(ranges: Sequence[tuple[int, int]], grain: str) -> dict[str, list[tuple[int, int, int]]]:
    """Per totals table the (range index, first unit, end unit) pieces of the ranges."""
    per_table: dict[str, list[tuple[int, int, int]]] = {}
    for index, (lo, hi) in enumerate(ranges):
        pieces = split_quarters(lo, hi) if grain == "quarter" else [(MINUTE_TOTALS, lo, hi)]
        for table, first, end in pieces:
            if first < end:
                per_table.setdefault(table, []).append((index, first, end))
    return per_table


def _columns(parts: Sequence[tuple[int, int, int]]) -> tuple[list[int], list[int], list[int]]:
    """The pieces as three arrays (index, lo, hi), for unnest."""
    return [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts]


def _has_schema(cur: psycopg.Cursor[Any]) -> bool:
    """Whether the daemons created the schema yet (a fresh database reads as empty)."""
    row = cur.execute("SELECT to_regclass('flush_sequence') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _bucket_sums(
    cur: psycopg.Cursor[Any],
    names: Sequence[str],
    bounds: Sequence[int],
    wanted: Sequence[int],
    grain: str,
    gateways: list[str],
) -> dict[tuple[str, int], tuple[int, int]]:
    """(monitor, bucket) -> (in, out) for the buckets `wanted`, read from the store."""
    table, seconds = _GRAIN[grain]
    edges = [-(-b // seconds) for b in bounds]
    per_table: dict[str, list[tuple[int, int, int]]] = {}
    for i in wanted:
        lo, hi = edges[i], edges[i + 1]
        if lo >= hi:
            continue
        pieces = split_quarters(lo, hi) if table == QUARTER_TOTALS else [(table, lo, hi)]
        for piece, first, end in pieces:
            per_table.setdefault(piece, []).append((i, first, end))
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for piece, ranges in per_table.items():
        for name, i, rx, tx in _range_sums(cur, piece, ranges, gateways, names):
            got = out.get((name, i), (0, 0))
            out[(name, i)] = (got[0] + rx, got[1] + tx)
    return out


def _range_sums(
    cur: psycopg.Cursor[Any],
    table: str,
    ranges: Sequence[tuple[int, int, int]],
    gateways: list[str],
    names: Sequence[str],
) -> list[tuple[str, int, int, int]]:
    """(monitor, bucket, in, out) for rows lo <= unit < hi of each (bucket, lo, hi).

    Nearby ranges are read as one span: per span one primary-key range scan for each
    (gateway, monitor), the gateways summed on the server per monitor and unit, and the units
    put in their buckets here (units between the ranges are read and left out). A scan per
    range would descend the index gateways x monitors times for every bucket.
    """
    unit = TOTALS_UNITS[table]
    ordered = sorted(ranges, key=lambda r: r[1])
    spans: list[list[int]] = []
    for _, lo, hi in ordered:
        # join the last span when the gap is no longer than what the two cover
        if spans and lo - spans[-1][1] <= (hi - lo) + (spans[-1][1] - spans[-1][0]):
            spans[-1][1] = hi
        else:
            spans.append([lo, hi])
    sql = (
        "SELECT s.monitor, s.unit, s.rx, s.tx FROM unnest(%s::bigint[], %s::bigint[]) "
        "AS c(lo, hi) CROSS JOIN LATERAL "
        f"(SELECT t.monitor, t.{unit} AS unit, SUM(t.in_bytes) AS rx, "
        f"SUM(t.out_bytes) AS tx FROM {table} t WHERE t.gateway = ANY(%s) "
        f"AND t.monitor = ANY(%s) AND t.{unit} >= c.lo AND t.{unit} < c.hi "
        f"GROUP BY t.monitor, t.{unit}) s"
    )
    params = ([s[0] for s in spans], [s[1] for s in spans], gateways, list(names))
    starts = [r[1] for r in ordered]
    out: dict[tuple[str, int], list[int]] = {}
    for monitor, u, rx, tx in cur.execute(sql, params):
        at = bisect_right(starts, int(u)) - 1
        if at >= 0 and int(u) < ordered[at][2]:
            acc = out.setdefault((str(monitor), ordered[at][0]), [0, 0])
            acc[0] += int(rx)
            acc[1] += int(tx)
    return [(m, i, rx, tx) for (m, i), (rx, tx) in out.items()]
