"""The PostgreSQL fleet store's schema and its migrations (a version table, as user_version).

The same tables and units as the SQLite store (schema.py), each row keyed by its gateway and
monitor names, so that a Grafana PostgreSQL data source can query them without joins.
"""

from __future__ import annotations

from collections.abc import Sequence

_TOTALS = """CREATE TABLE {table} (gateway text NOT NULL, monitor text NOT NULL,
    {unit} bigint NOT NULL, in_bytes bigint NOT NULL, in_packets bigint NOT NULL,
    out_bytes bigint NOT NULL, out_packets bigint NOT NULL,
    PRIMARY KEY (gateway, monitor, {unit}))"""
_HOSTS = """CREATE TABLE {table} (gateway text NOT NULL, monitor text NOT NULL,
    host text NOT NULL, {unit} bigint NOT NULL, in_bytes bigint NOT NULL,
    in_packets bigint NOT NULL, out_bytes bigint NOT NULL, out_packets bigint NOT NULL,
    PRIMARY KEY (gateway, monitor, host, {unit}))"""

TOTALS_TABLES = (("minute_totals", "minute"), ("quarter_totals", "quarter"),
                 ("hour_totals", "hour"), ("day_totals", "day"))  # fmt: skip

_V1: tuple[str, ...] = (
    *(_TOTALS.format(table=t, unit=u) for t, u in TOTALS_TABLES),
    *(_HOSTS.format(table="host_" + t, unit=u) for t, u in TOTALS_TABLES),
    """CREATE TABLE flush (id bigserial PRIMARY KEY, gateway text NOT NULL,
        monitor text NOT NULL, time double precision NOT NULL, overflow bigint NOT NULL,
        host_overflow bigint NOT NULL DEFAULT 0)""",
    "CREATE INDEX flush_gateway_monitor_time ON flush (gateway, monitor, time)",
    """CREATE TABLE flow (flush bigint NOT NULL REFERENCES flush (id) ON DELETE CASCADE,
        family smallint NOT NULL, protocol smallint NOT NULL, client text NOT NULL,
        client_port integer NOT NULL, server text NOT NULL, server_port integer NOT NULL,
        sent bigint NOT NULL, received bigint NOT NULL, packets bigint NOT NULL)""",
    "CREATE INDEX flow_flush ON flow (flush)",
    # Exactly once: the last flush committed by each run of each gateway's daemon, written in
    # the flush's own transaction (docs/store.md).
    """CREATE TABLE flush_sequence (gateway text NOT NULL, run text NOT NULL,
        seq bigint NOT NULL, time double precision NOT NULL, PRIMARY KEY (gateway, run))""",
    """CREATE TABLE replay (id bigserial PRIMARY KEY, gateway text NOT NULL,
        sha256 text NOT NULL, path text NOT NULL, size bigint NOT NULL,
        started double precision NOT NULL, first_packet double precision NOT NULL,
        finished double precision, last_packet double precision,
        last_flush double precision, frames bigint, packets bigint, bytes bigint)""",
    "CREATE INDEX replay_gateway_sha256 ON replay (gateway, sha256)",
    # SQLite histories imported (--import-sqlite), so that a second import adds nothing
    """CREATE TABLE import (gateway text NOT NULL, source text NOT NULL,
        time double precision NOT NULL, PRIMARY KEY (gateway, source))""",
)

# Version 2: the per-host quarters, hours and days indexed by (gateway, monitor, unit). The
# hosts of a range (hosts, hosts per period, top by host) select by gateway, monitor and unit;
# by the primary key (gateway, monitor, host, unit) they would read every row the monitor ever
# stored. One host's history reads by the primary key, so the minutes need no index.
_V2: tuple[str, ...] = tuple(
    f"CREATE INDEX host_{t}_by_time ON host_{t} (gateway, monitor, {u})"
    for t, u in TOTALS_TABLES[1:]
)

# MIGRATIONS[n] takes the store from version n to n + 1; append to add a version.
MIGRATIONS: tuple[Sequence[str], ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)
VERSION_TABLE = "trafmetux_schema"
# one advisory lock key: two daemons starting together migrate one after the other
MIGRATION_LOCK = 0x7472_6166  # "traf"
