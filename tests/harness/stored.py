"""The rows a store holds, read by a connection of their own (what the daemon committed)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

Row = tuple[int, int, int, int]  # in_bytes, in_packets, out_bytes, out_packets
# totals table -> its unit column (fixed names, never input)
UNITS = {"minute_totals": "minute", "quarter_totals": "quarter", "hour_totals": "hour",
         "day_totals": "day"}  # fmt: skip
HOST_TABLES = {unit: f"host_{table}" for table, unit in UNITS.items()}  # unit -> host table


class FlowRow(NamedTuple):
    """One stored flow position of one flush."""

    time: float
    family: int
    protocol: int
    client: str
    client_port: int
    server: str
    server_port: int
    sent: int
    received: int
    packets: int


class Stored:
    """Read-only views of one database file; each call opens and closes its own connection."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def _rows(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        uri = f"file:{quote(str(self.db))}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as con:
            return con.execute(sql, params).fetchall()

    def totals(self, table: str, monitor: str) -> dict[int, Row]:
        """Every row of one totals table for one monitor: unit -> (in_b, in_p, out_b, out_p)."""
        unit = UNITS[table]
        sql = (
            f"SELECT t.{unit}, in_bytes, in_packets, out_bytes, out_packets FROM {table} t "
            "JOIN monitor m ON m.id = t.monitor WHERE m.name = ?"
        )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in self._rows(sql, (monitor,))}

    def minute_totals(self, monitor: str) -> dict[int, Row]:
        """Every stored minute of a monitor."""
        return self.totals("minute_totals", monitor)

    def quarter_totals(self, monitor: str) -> dict[int, Row]:
        """Every stored quarter of a monitor."""
        return self.totals("quarter_totals", monitor)

    def hour_totals(self, monitor: str) -> dict[int, Row]:
        """Every stored UTC hour of a monitor."""
        return self.totals("hour_totals", monitor)

    def day_totals(self, monitor: str) -> dict[int, Row]:
        """Every stored UTC day of a monitor."""
        return self.totals("day_totals", monitor)

    def host_totals(self, monitor: str, unit: str = "minute") -> dict[str, dict[int, Row]]:
        """Every stored row of a monitor's hosts in one unit: host -> unit -> totals."""
        table = HOST_TABLES[unit]
        sql = (
            f"SELECT host, t.{unit}, in_bytes, in_packets, out_bytes, out_packets FROM {table} t "
            "JOIN monitor m ON m.id = t.monitor WHERE m.name = ?"
        )
        out: dict[str, dict[int, Row]] = {}
        for r in self._rows(sql, (monitor,)):
            out.setdefault(r[0], {})[r[1]] = (r[2], r[3], r[4], r[5])
        return out

    def flows(self, monitor: str, since: float, until: float) -> list[FlowRow]:
        """Flow rows of flushes with since <= time < until, in flush then insertion order."""
        sql = (
            "SELECT f.time, w.family, w.protocol, w.client, w.client_port, w.server, "
            "w.server_port, w.sent, w.received, w.packets FROM flow w "
            "JOIN flush f ON f.id = w.flush JOIN monitor m ON m.id = f.monitor "
            "WHERE m.name = ? AND f.time >= ? AND f.time < ? ORDER BY f.time, w.rowid"
        )
        return [FlowRow(*r) for r in self._rows(sql, (monitor, since, until))]

    def overflow(self, monitor: str, since: float, until: float) -> int:
        """Packets folded into the other position by flushes with since <= time < until."""
        sql = (
            "SELECT coalesce(sum(f.overflow), 0) FROM flush f JOIN monitor m ON m.id = f.monitor "
            "WHERE m.name = ? AND f.time >= ? AND f.time < ?"
        )
        (row,) = self._rows(sql, (monitor, since, until))
        return int(row[0])
