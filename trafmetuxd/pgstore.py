"""PostgreSQL fleet store: the SQLite store's interface, every row keyed by this gateway.

The connection is made on first use (and again after any connection error): a gateway whose
server is down still starts and meters; its flushes wait (pending.py). Every call is bounded by
the connect and statement timeouts, and a dead peer is noticed by TCP within tcp_user_timeout.
Exactly once: write_sequenced() stores the flush's (run, seq) in the flush's own transaction
and skips a flush whose sequence number is already committed (docs/store.md).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from trafmetuxd.addresses import host_text
from trafmetuxd.collector import Snapshot
from trafmetuxd.config_values import redact_url
from trafmetuxd.pgschema import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE
from trafmetuxd.schema import HOST_TABLES, MINUTES_PER_DAY, MINUTES_PER_HOUR, rollup
from trafmetuxd.schema import MINUTES_PER_QUARTER as _QUARTER
from trafmetuxd.spec import RetentionSpec, StoreSpec
from trafmetuxd.store import ReplayEnd, ReplayRow, StoreError, _FlowRows, prune_bounds

log = logging.getLogger("trafmetuxd.store")

_UPSERT = """INSERT INTO {table} AS t (gateway, monitor, {unit}, in_bytes, in_packets, out_bytes,
out_packets) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (gateway, monitor, {unit}) DO UPDATE
SET in_bytes = t.in_bytes + excluded.in_bytes, in_packets = t.in_packets + excluded.in_packets,
out_bytes = t.out_bytes + excluded.out_bytes, out_packets = t.out_packets + excluded.out_packets"""
_UPSERT_HOST = """INSERT INTO {table} AS t (gateway, monitor, host, {unit}, in_bytes, in_packets,
out_bytes, out_packets) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (gateway, monitor, host, {unit}) DO UPDATE
SET in_bytes = t.in_bytes + excluded.in_bytes, in_packets = t.in_packets + excluded.in_packets,
out_bytes = t.out_bytes + excluded.out_bytes, out_packets = t.out_packets + excluded.out_packets"""
_ROLLED = (
    ("minute_totals", "minute", 1),
    ("quarter_totals", "quarter", _QUARTER),
    ("hour_totals", "hour", MINUTES_PER_HOUR),
    ("day_totals", "day", MINUTES_PER_DAY),
)
_COPY_FLOW = (
    "COPY flow (flush, family, protocol, client, client_port, server, server_port, sent, "
    "received, packets) FROM STDIN"
)
# Retention spares what replays run since the bound wrote (as store.py does for SQLite).
_SPARED_MINUTE = """NOT EXISTS (SELECT 1 FROM replay r WHERE r.gateway = %(gw)s
    AND r.started >= %(since)s AND {table}.minute * 60 + 60 > r.first_packet
    AND {table}.minute * 60 <= coalesce(r.last_packet, 1e18))"""
_SPARED_FLUSH = """NOT EXISTS (SELECT 1 FROM replay r WHERE r.gateway = %(gw)s
    AND r.started >= %(since)s AND flush.time >= r.first_packet
    AND flush.time <= coalesce(r.last_flush, 1e18))"""
_SPARED_DAY = """NOT EXISTS (SELECT 1 FROM replay r WHERE r.gateway = %(gw)s
    AND r.started >= %(since)s
    AND {table}.{unit} / {per_day} >= floor(r.first_packet / 86400)
    AND {table}.{unit} / {per_day} <= coalesce(floor(r.last_packet / 86400), 1e18))"""


def connect(spec: StoreSpec, **extra: Any) -> psycopg.Connection[Any]:
    """A connection bounded by the spec's timeouts; a dead peer is noticed by TCP."""
    timeout_ms = int(spec.statement_timeout * 1000)
    return psycopg.connect(
        spec.url,
        autocommit=True,
        connect_timeout=max(2, round(spec.connect_timeout)),
        options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        tcp_user_timeout=timeout_ms,
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        application_name="trafmetuxd",
        **extra,
    )


def describe(spec: StoreSpec) -> str:
    """How messages name the store: its URL without a password, and the gateway."""
    return f"{redact_url(spec.url)} (gateway {spec.gateway})"


def migrate(conn: psycopg.Connection[Any], where: str) -> None:
    """Create or migrate the schema to SCHEMA_VERSION (one transaction, under a lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer NOT NULL)")
        row = conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{where}: schema version {version} is newer than this trafmetuxd supports "
                f"({SCHEMA_VERSION}); refusing to use it"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"DELETE FROM {VERSION_TABLE}")
            conn.execute(f"INSERT INTO {VERSION_TABLE} VALUES (%s)", (SCHEMA_VERSION,))
            log.info("%s: schema at version %d", where, SCHEMA_VERSION)


class PgStore:
    """This gateway's rows in a PostgreSQL fleet store (the caller serialises every call)."""

    sequenced = True  # flushes carry (run, seq): the flusher queues them (pending.py)

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self.gateway = spec.gateway
        self.path = describe(spec)  # named in messages, as the SQLite store's file is
        self.recreated = 0  # the SQLite store's counter of re-made files; never here
        self.connected = False
        self.error = ""
        self._conn: psycopg.Connection[Any] | None = None
        self._direct_run = "direct-" + uuid.uuid4().hex  # write() outside the flusher
        self._direct_seq = 0

    # -- the connection ----------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        """The open connection, connected and migrated on first use or after an error."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = connect(self.spec)
        except psycopg.Error as exc:
            raise self._lost("cannot connect", exc) from exc
        try:
            migrate(conn, self.path)
        except psycopg.Error as exc:
            conn.close()
            raise self._lost("cannot create or migrate the schema", exc) from exc
        except StoreError:
            conn.close()
            raise
        self._conn = conn
        self.connected, self.error = True, ""
        return conn

    def _lost(self, what: str, exc: Exception) -> StoreError:
        """Forget a connection that failed (the next call reconnects); the error to raise."""
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self.connected = False
        self.error = f"{self.path}: {what}: {str(exc).strip()}"
        return StoreError(self.error)

    def ensure_file(self) -> None:
        """Nothing to check: there is no local file (the SQLite store's check)."""

    @contextmanager
    def _transaction(self, what: str) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction; any error rolls it back and raises StoreError naming the store."""
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise self._lost(what, exc) from exc

    @contextmanager
    def _reading(self, what: str) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor for reads; errors as StoreError."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise self._lost(what, exc) from exc

    def probe(self) -> bool:
        """Connect (and migrate) now if not connected; True when the store answers."""
        try:
            self._connection()
        except StoreError as exc:
            log.warning("%s", exc)
            return False
        return True

    # -- flushes ------------------------------------------------------------------------------
    def write_sequenced(
        self, run: str, seq: int, flush_time: float, batches: Sequence[tuple[str, Snapshot]]
    ) -> bool:
        """Write flush `seq` of this run in one transaction; False when it committed before."""
        with self._transaction("cannot write flush") as cur:
            gw = self.gateway
            cur.execute(
                "INSERT INTO flush_sequence (gateway, run, seq, time) VALUES (%s, %s, 0, %s) "
                "ON CONFLICT DO NOTHING",
                (gw, run, flush_time),
            )
            cur.execute(
                "SELECT seq FROM flush_sequence WHERE gateway = %s AND run = %s FOR UPDATE",
                (gw, run),
            )
            row = cur.fetchone()
            if row is not None and int(row[0]) >= seq:
                return False  # its commit succeeded; only the acknowledgement was lost
            self._write_batches(cur, flush_time, batches)
            cur.execute(
                "UPDATE flush_sequence SET seq = %s, time = %s WHERE gateway = %s AND run = %s",
                (seq, flush_time, gw, run),
            )
        return True

    def committed_seq(self, run: str) -> int:
        """The last sequence number of `run` this gateway committed (0: none)."""
        sql = "SELECT seq FROM flush_sequence WHERE gateway = %s AND run = %s"
        with self._reading("cannot read the flush sequence") as cur:
            row = cur.execute(sql, (self.gateway, run)).fetchone()
        return int(row[0]) if row else 0

    def write(
        self,
        flush_time: float,
        batches: Sequence[tuple[str, Snapshot]],
        prune_before: tuple[int, int] | None = None,
    ) -> None:
        """Add every monitor's snapshot in one transaction (a sequence of its own)."""
        self._direct_seq += 1
        self.write_sequenced(self._direct_run, self._direct_seq, flush_time, batches)
        if prune_before is not None:
            with self._transaction("cannot prune") as cur:
                self._prune(cur, *prune_before)

    def _write_batches(
        self, cur: psycopg.Cursor[Any], flush_time: float, batches: Sequence[tuple[str, Snapshot]]
    ) -> None:
        """Upsert-add totals and hosts, insert flush rows, COPY the flow rows."""
        gw = self.gateway
        flows: list[tuple[int, Snapshot]] = []
        for name, snap in batches:
            if not (snap.totals or snap.flows or snap.hosts):
                continue
            for table, unit, minutes in _ROLLED:
                units = snap.totals if minutes == 1 else rollup(snap.totals, minutes)
                sql = _UPSERT.format(table=table, unit=unit)
                cur.executemany(sql, [(gw, name, u, *r) for u, r in units.items()])
            cur.execute(
                "INSERT INTO flush (gateway, monitor, time, overflow, host_overflow) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (gw, name, flush_time, snap.overflow, snap.host_overflow),
            )
            row = cur.fetchone()
            assert row is not None
            flows.append((int(row[0]), snap))
            if snap.hosts:
                self._write_hosts(cur, name, snap)
        rows = _FlowRows()
        with cur.copy(_COPY_FLOW) as copy:
            for flush_id, snap in flows:
                for flow_row in rows.rows(flush_id, snap.flows):
                    copy.write_row(flow_row)

    def _write_hosts(self, cur: psycopg.Cursor[Any], name: str, snap: Snapshot) -> None:
        """Upsert-add the per-host minutes and their quarter, hour and day rollups."""
        texts = {host: host_text(host) for host in snap.hosts}
        for table, unit, minutes in HOST_TABLES:
            sql = _UPSERT_HOST.format(table=table, unit=unit)
            params = [
                (self.gateway, name, texts[host], u, *r)
                for host, totals in snap.hosts.items()
                for u, r in (totals if minutes == 1 else rollup(totals, minutes)).items()
            ]
            cur.executemany(sql, params)

    # -- retention ----------------------------------------------------------------------------
    def _prune(self, cur: psycopg.Cursor[Any], first_minute: int, first_flush: int) -> None:
        """Delete this gateway's minutes and flushes before the bounds (<= 0: keep)."""
        gw = self.gateway
        if first_minute > 0:
            params = {"gw": gw, "first": first_minute, "since": first_minute * 60}
            for table in ("minute_totals", "host_minute_totals"):
                spared = _SPARED_MINUTE.format(table=table)
                cur.execute(
                    f"DELETE FROM {table} WHERE gateway = %(gw)s AND minute < %(first)s "
                    f"AND {spared}",
                    params,
                )
        if first_flush > 0:
            params = {"gw": gw, "first": first_flush, "since": first_flush}
            cur.execute(
                "DELETE FROM flush WHERE gateway = %(gw)s AND time < %(first)s AND "
                f"{_SPARED_FLUSH}",
                params,
            )  # the flow rows go with their flush (ON DELETE CASCADE)

    def prune(self, now: float, retention: RetentionSpec) -> None:
        """Delete this gateway's detail older than the retention allows."""
        with self._transaction("cannot prune") as cur:
            self._prune(cur, *prune_bounds(now, retention))
            if retention.quarters > 0:
                self._prune_quarters(cur, int(now - retention.quarters) // 900)

    def _prune_quarters(self, cur: psycopg.Cursor[Any], first: int) -> None:
        """Delete quarters, hours and days before the UTC day holding quarter `first`."""
        day = first // 96
        for table, unit, minutes in (*_ROLLED[1:], *HOST_TABLES[1:]):
            per_day = MINUTES_PER_DAY // minutes
            spared = _SPARED_DAY.format(table=table, unit=unit, per_day=per_day)
            params = {"gw": self.gateway, "first": day * per_day, "since": first * 900}
            cur.execute(
                f"DELETE FROM {table} WHERE gateway = %(gw)s AND {unit} < %(first)s AND {spared}",
                params,
            )

    # -- the record of replayed captures ----------------------------------------------------
    def replays_of(self, sha256: str) -> list[ReplayRow]:
        """This gateway's earlier replays of the capture with this SHA-256, oldest first."""
        sql = (
            "SELECT path, started, finished FROM replay WHERE gateway = %s AND sha256 = %s "
            "ORDER BY started"
        )
        with self._reading("cannot read the record of replays") as cur:
            return [ReplayRow(*r) for r in cur.execute(sql, (self.gateway, sha256)).fetchall()]

    def begin_replay(
        self, sha256: str, path: str, size: int, started: float, first_packet: float
    ) -> int:
        """Record a replay before its first flush; its row id."""
        sql = (
            "INSERT INTO replay (gateway, sha256, path, size, started, first_packet) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"
        )
        with self._transaction("cannot record the replay") as cur:
            row = cur.execute(sql, (self.gateway, sha256, path, size, started, first_packet))
            found = row.fetchone()
        return int(found[0]) if found else 0

    def finish_replay(self, replay_id: int, end: ReplayEnd) -> None:
        """Complete the record of a replay whose last flush committed."""
        sql = (
            "UPDATE replay SET finished = %s, first_packet = %s, last_packet = %s, "
            "last_flush = %s, frames = %s, packets = %s, bytes = %s WHERE id = %s"
        )
        with self._transaction("cannot record the replay") as cur:
            cur.execute(sql, (*end, replay_id))

    def newest_time(self) -> float | None:
        """The end of this gateway's newest stored detail (minute or flush), or None."""
        sql = (
            "SELECT (SELECT (max(minute) + 1) * 60 FROM minute_totals WHERE gateway = %s), "
            "(SELECT max(time) FROM flush WHERE gateway = %s)"
        )
        with self._reading("cannot read the newest data") as cur:
            row = cur.execute(sql, (self.gateway, self.gateway)).fetchone()
        times = [float(t) for t in (row or ()) if t is not None]
        return max(times) if times else None

    def state(self) -> dict[str, object]:
        """What status shows of the store (never the URL's password)."""
        return {"kind": "postgresql", "url": redact_url(self.spec.url), "gateway": self.gateway,
                "connected": self.connected, "error": self.error or None}  # fmt: skip

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
