"""The figures behind /metrics, gathered in the main process: all-time totals, quotas, health.

All-time totals are the store's day rollups (exact sums of every stored quarter) plus what is
counted and not committed yet, read under the flush lock like a report: nothing is missed or
counted twice, and the sums never go backwards across a restart (as long as the quarter
retention keeps everything, its default). The front turns this into the exposition format.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trafmetuxd import query
from trafmetuxd.addresses import host_text
from trafmetuxd.quota import QuotaStatus
from trafmetuxd.schema import HOSTS_VERSION, ROLLUP_VERSION

if TYPE_CHECKING:
    from trafmetuxd.reports import Backend

# [in_bytes, in_packets, out_bytes, out_packets]
Counts = list[int]
OTHER = "other"  # the host label of the hosts beyond the cap (and beyond a monitor's max_hosts)


def stored_totals(db: Path, names: Sequence[str]) -> tuple[dict[str, Counts], dict[str, int]]:
    """Per monitor: everything stored, summed over the day rollups (or quarters before them),
    and the packets folded into the 'other' flow position over the flushes still kept."""
    out: dict[str, Counts] = {name: [0, 0, 0, 0] for name in names}
    folded = dict.fromkeys(names, 0)
    con = query.open_readonly(db)
    if con is None:
        return out, folded
    with closing(con):
        version = con.execute("PRAGMA user_version").fetchone()[0]
        table = "day_totals" if version >= ROLLUP_VERSION else "quarter_totals"
        rows = con.execute(
            "SELECT m.name, SUM(t.in_bytes), SUM(t.in_packets), SUM(t.out_bytes), "
            f"SUM(t.out_packets) FROM {table} t JOIN monitor m ON m.id = t.monitor "
            "GROUP BY m.name"
        ).fetchall()
        overflow = con.execute(
            "SELECT m.name, SUM(f.overflow) FROM flush f JOIN monitor m ON m.id = f.monitor "
            "GROUP BY m.name"
        ).fetchall()
    for name, *sums in rows:
        if name in out:
            out[name] = [int(v or 0) for v in sums]
    for name, packets in overflow:
        if name in folded:
            folded[name] = int(packets or 0)
    return out, folded


def add_unflushed(
    totals: dict[str, Counts], pending: Mapping[str, Mapping[int, list[int]]]
) -> None:
    """Add the minute totals not committed yet to the stored sums, in place."""
    for name, minutes in pending.items():
        acc = totals.get(name)
        if acc is None:
            continue
        for row in minutes.values():
            for i in range(4):
                acc[i] += row[i]


def stored_hosts(db: Path, names: Sequence[str]) -> dict[str, dict[str, Counts]]:
    """Per monitor: every host's stored totals, summed over the host day rollups."""
    out: dict[str, dict[str, Counts]] = {name: {} for name in names}
    con = query.open_readonly(db) if names else None
    if con is None:
        return out
    with closing(con):
        if con.execute("PRAGMA user_version").fetchone()[0] < HOSTS_VERSION:
            return out
        rows = con.execute(
            "SELECT m.name, t.host, SUM(t.in_bytes), SUM(t.in_packets), SUM(t.out_bytes), "
            "SUM(t.out_packets) FROM host_day_totals t JOIN monitor m ON m.id = t.monitor "
            "GROUP BY m.name, t.host"
        ).fetchall()
    for name, host, *sums in rows:
        if name in out:
            out[name][host] = [int(v or 0) for v in sums]
    return out


def add_unflushed_hosts(
    hosts: dict[str, Counts], pending: Mapping[tuple[int, ...], Mapping[int, list[int]]]
) -> None:
    """Add a monitor's per-host minutes not committed yet to its stored host sums, in place."""
    for key, minutes in pending.items():
        acc = hosts.setdefault(host_text(key), [0, 0, 0, 0])
        for row in minutes.values():
            for i in range(4):
                acc[i] += row[i]


def cap_hosts(hosts: Mapping[str, Counts], cap: int) -> dict[str, Counts]:
    """The `cap` largest hosts (bytes in + out, then name); the rest summed into "other".

    The sum over the result equals the sum over `hosts`: nothing is dropped, only folded.
    """
    ranked = sorted(
        ((h, row) for h, row in hosts.items() if h != OTHER),
        key=lambda kv: (-kv[1][0] - kv[1][2], kv[0]),
    )
    out = dict(ranked[:cap])
    rest = [row for _, row in ranked[cap:]]
    if OTHER in hosts:
        rest.append(hosts[OTHER])
    if rest:
        out[OTHER] = [sum(column) for column in zip(*rest, strict=True)]
    return out


def _quota(status: QuotaStatus) -> dict[str, object]:
    return {
        "name": status.name,
        "used": status.used,
        "limit": status.limit,
        "estimate": status.estimate,
        "end": status.end,
        "state": status.state,
    }


def _get(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]..., None where a level is missing."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def health(status: Mapping[str, Any]) -> dict[str, object]:
    """The status figures /metrics exports (missing ones, as in a replay, are left out)."""
    flush = status.get("flush") or {}
    out: dict[str, object] = {
        "flushes": flush.get("flushes", 0),
        "flush_failures": flush.get("failures", 0),
        "last_flush": flush.get("last_success") or 0,
        "held_bytes": flush.get("held_bytes", 0),
        "meter": status.get("meter") or {},
        "started": status.get("started", 0),
    }
    audit = status.get("audit")
    if isinstance(audit, dict) and "error" not in audit:
        out["unmetered"] = {d: _get(audit, d, "unmetered_bytes") or 0 for d in ("in", "out")}
    queue = status.get("queue")
    if isinstance(queue, dict):
        out["queue"] = dict(queue)
    workers = _get(status, "capture", "workers")
    if isinstance(workers, list):
        keys = ("queue", "stalls", "outage_seconds", "restarts")
        out["workers"] = [{k: w.get(k, 0) for k in keys} for w in workers]
    return out


async def gather(
    backend: Backend,
    reader_quotas: Sequence[QuotaStatus],
    names: Sequence[str],
    status_of: Callable[[], Awaitable[dict[str, object]]] | None = None,
) -> dict[str, object]:
    """Every figure of one scrape (the status first: it has the workers ship).

    status_of: the running daemon's whole status (capture and audit included); by default
    the metering core's own.
    """
    status = await (status_of or backend.status)()  # the workers' counts up to now are staged
    cfg = backend.config
    with_hosts = [m.name for m in cfg.monitors if m.hosts and m.name in names]
    async with backend.flush_lock:
        totals, folded = await asyncio.to_thread(stored_totals, cfg.database, names)
        add_unflushed(totals, backend.unflushed())
        hosts = await asyncio.to_thread(stored_hosts, cfg.database, with_hosts)
        for name in with_hosts:
            add_unflushed_hosts(hosts[name], backend.unflushed_hosts(name))
    cap = cfg.http.max_host_series
    return {
        "time": time.time(),
        "monitors": {name: totals[name] for name in names},
        "hosts": {name: cap_hosts(hosts[name], cap) for name in with_hosts},
        "flow_overflow": folded,
        "quotas": [_quota(q) for q in reader_quotas],
        "health": health(status),
    }
