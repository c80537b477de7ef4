"""Benchmark 7: the PostgreSQL fleet store against SQLite.

Flush: one flush of 20 monitors x 2,000 flow positions (and a few minutes of totals each)
written to a real PostgreSQL (a temporary cluster, harness/postgres.py) and to SQLite.
Reports: the period sums of the report commands read from PostgreSQL holding 2 years of
quarter, hour and day rows of 20 monitors x 10 gateways (generated on the server with
generate_series), for one gateway and for all of them summed: warm (again, from the reader's
cache) and cold (after a write committed from another connection, as after any flush).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, summary, target
from tests.harness import postgres as pg
from trafmetuxd.collector import Snapshot
from trafmetuxd.periods import Calendar, resolve_zone
from trafmetuxd.pgquery import PgReader
from trafmetuxd.pgstore import PgStore
from trafmetuxd.reports import _periods
from trafmetuxd.spec import StoreSpec
from trafmetuxd.store import Store

FULL = {"monitors": 20, "positions": 2000, "flushes": 10, "years": 2.0, "gateways": 10,
        "requests": 30}  # fmt: skip
SMOKE = {"monitors": 2, "positions": 50, "flushes": 2, "years": 0.01, "gateways": 2,
         "requests": 3}  # fmt: skip
FLUSH_LIMIT_MS = 1000.0  # a flush must fit well inside a 60 s interval and the 30 s patience
REPORT_LIMIT_MS = 50.0  # as for the SQLite reports (benchmark 3)
QUERIES = {"show-hourly -t 48": ("hour", 48), "show-daily -t 60": ("day", 60),
           "show-monthly -t 24": ("month", 24)}  # fmt: skip


def snapshot(positions: int, minute: int, seed: int) -> Snapshot:
    """A flush's worth of one monitor: five minutes of totals, `positions` flows."""
    totals = {minute - i: [1500 * (i + 1), 3, 800, 2] for i in range(5)}
    flows = {
        (4, 6, 0x0A000000 + seed * 65536 + p, 40000 + p % 20000, 0xC6336400 + p % 250, 443):
        [100 + p, 2000 + p, 5] for p in range(positions)
    }  # fmt: skip
    return Snapshot(totals, flows, 0)


def batches(size: dict[str, Any], minute: int) -> list[tuple[str, Snapshot]]:
    """One flush of every monitor."""
    n, positions = int(size["monitors"]), int(size["positions"])
    return [(f"m{i}", snapshot(positions, minute, i)) for i in range(n)]


def flush_times(size: dict[str, Any], url: str, tmp: Path) -> dict[str, list[float]]:
    """Milliseconds per flush into SQLite and into PostgreSQL, the same batches."""
    out: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    sqlite = Store(tmp / "bench.sqlite3")
    postgres = PgStore(StoreSpec(url=url, gateway="bench", statement_timeout=60.0))
    base = int(time.time()) // 60
    try:
        for i in range(int(size["flushes"])):
            work = batches(size, base + 5 * i)
            start = time.perf_counter()
            sqlite.write(float(base * 60 + i), work)
            out["sqlite"].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            postgres.write_sequenced("bench", i + 1, float(base * 60 + i), work)
            out["postgresql"].append((time.perf_counter() - start) * 1000)
    finally:
        sqlite.close()
        postgres.close()
    return out


_FILL = """INSERT INTO {table} (gateway, monitor, {unit}, in_bytes, in_packets, out_bytes,
out_packets)
SELECT 'gw' || g, 'm' || m, u, 1500 * per, per, 800 * per, per
FROM generate_series(0, %(gateways)s - 1) g, generate_series(0, %(monitors)s - 1) m,
     generate_series(%(first)s / %(per)s, %(last)s / %(per)s) u,
     (SELECT %(per)s::bigint AS per) p"""


def fill(url: str, size: dict[str, Any], now: int) -> int:
    """Two years (of the scale) of quarters, hours and days for every gateway and monitor."""
    import psycopg

    first_quarter = (now - int(float(size["years"]) * 365 * 86400)) // 900
    last_quarter = now // 900
    rows = 0
    with psycopg.connect(url, autocommit=True) as conn:
        schema = PgStore(StoreSpec(url=url, gateway="gw0"))
        schema.probe()  # creates the schema
        schema.close()
        for table, unit, per in (("quarter_totals", "quarter", 1), ("hour_totals", "hour", 4),
                                 ("day_totals", "day", 96)):  # fmt: skip
            params = {"gateways": size["gateways"], "monitors": size["monitors"],
                      "first": first_quarter, "last": last_quarter, "per": per}  # fmt: skip
            cur = conn.execute(_FILL.format(table=table, unit=unit), params)  # type: ignore[arg-type]
            rows += cur.rowcount
        conn.execute(
            "INSERT INTO flush_sequence SELECT 'gw' || g, 'bench', 1, 0 "
            "FROM generate_series(0, %s - 1) g",
            (size["gateways"],),
        )
        conn.execute("VACUUM ANALYZE")
    return rows


def report_times(url: str, size: dict[str, Any], now: int) -> dict[str, dict[str, Any]]:
    """Milliseconds per report's period sums, one gateway and every gateway summed: warm (the
    reader's cache holds them) and cold (a write committed from another connection first)."""
    import psycopg

    cal = Calendar(resolve_zone("UTC"), 0)
    names = [f"m{i}" for i in range(int(size["monitors"]))]
    everyone = [f"gw{g}" for g in range(int(size["gateways"]))]
    reader = PgReader(StoreSpec(url=url, gateway="gw0", statement_timeout=60.0))
    out: dict[str, dict[str, Any]] = {"warm": {}, "cold": {}}
    bump = "UPDATE flush_sequence SET seq = seq + 1 WHERE gateway = 'gw0'"  # as a flush commits
    try:
        reader.gateways()  # connected before the first timed request
        with psycopg.connect(url, autocommit=True) as writer:
            for label, (kind, last) in QUERIES.items():
                periods = _periods(cal, kind, last, None, None, now)
                bounds = [p.begin for p in periods] + [periods[-1].end]
                for who, gateways in (("gateway", None), ("all --sum", everyone)):
                    for phase in ("cold", "warm"):
                        times = []
                        for _ in range(int(size["requests"])):
                            if phase == "cold":
                                writer.execute(bump)
                            start = time.perf_counter()
                            reader.bucket_sums(Path("-"), names, bounds, "quarter", gateways)
                            times.append((time.perf_counter() - start) * 1000)
                        out[phase][f"{label} ({who})"] = summary(times)
    finally:
        reader.close()
    return out


def run(scale: str) -> Result:
    """Flush and report timings; the targets: flush under 1 s, report p99 under 50 ms."""
    size = FULL if scale == "full" else SMOKE
    why = pg.missing()
    if why:
        return {"skipped": why, "targets": []}
    now = int(time.time())
    with (
        tempfile.TemporaryDirectory(prefix="trafmetux-bench-") as tmp,
        pg.running(Path(tempfile.mkdtemp(prefix="trafmetux-pg-"))) as server,
    ):
        flushes = flush_times(size, server.new_database(), Path(tmp))
        url = server.new_database()
        started = time.monotonic()
        rows = fill(url, size, now)
        fill_seconds = time.monotonic() - started
        reports = report_times(url, size, now)
    flush_ms = {k: summary(v) for k, v in flushes.items()}
    worst = {k: max(s["p99"] for s in v.values()) for k, v in reports.items()}
    pg_median = flush_ms["postgresql"]["median"]
    return {
        "params": {**size, "rows": rows, "fill_seconds": round(fill_seconds, 1)},
        "flush_ms": flush_ms,
        "latency_ms": reports["warm"],
        "cold_latency_ms": reports["cold"],
        "targets": [
            target("PostgreSQL flush median", pg_median, "<=", FLUSH_LIMIT_MS, "ms"),
            *(
                target(f"PostgreSQL report p99 ({k}, worst query)", w, "<=", REPORT_LIMIT_MS, "ms")
                for k, w in worst.items()
            ),
        ],
    }
