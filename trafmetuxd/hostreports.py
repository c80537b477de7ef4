"""Per-host figures: a monitor's hosts per period."""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise

from trafmetuxd import query
from trafmetuxd.addresses import host_text
from trafmetuxd.periods import Calendar
from trafmetuxd.protocol import BAD_ARGUMENT, ProtocolError
from trafmetuxd.reports import MAX_CELLS, Reports, _host_dict, _host_rank, _periods


def check_host_cells(periods: int, limit: int) -> None:
    """Refuse more than MAX_CELLS host lines (periods x hosts per period), naming the limit."""
    if periods * limit > MAX_CELLS:
        raise ProtocolError(
            BAD_ARGUMENT,
            f"{periods} periods x {limit} hosts: at most {MAX_CELLS} host lines per report; "
            "ask for fewer periods or a smaller limit",
        )


def ranked(sums: query.HostSums, sort: str, limit: int) -> list[dict[str, object]]:
    """The hosts largest first by `sort` (ties by name), at most `limit` of them."""
    order = sorted(sums.items(), key=lambda kv: (-_host_rank(sort, kv[1]), kv[0]))
    return [_host_dict(h, row) for h, row in order[:limit]]


class HostReports:
    """The per-host figures, read like the monitors' through one Reports (same lock, clock)."""

    def __init__(self, reports: Reports) -> None:
        self.reports = reports
        self.backend = reports.backend

    async def quarter_sums(self, name: str, edges: Sequence[int], now: int) -> list[query.HostSums]:
        """A monitor's hosts over the UTC quarters [edges[i], edges[i + 1]): stored + unflushed."""
        backend = self.backend
        ranges = list(pairwise(edges))
        recent = edges[-1] * 900 > now
        if recent:
            await backend.refresh()  # the capture workers' counts up to this request
        async with backend.flush_lock:
            db = backend.config.database
            out = await asyncio.to_thread(query.host_sums_over, db, name, ranges)
            pending = backend.unflushed_hosts(name) if recent else {}
        minutes = [e * 15 for e in edges]
        for key, per_minute in pending.items():
            text = host_text(key)
            for minute, row in per_minute.items():
                i = bisect_right(minutes, minute) - 1
                if 0 <= i < len(out):
                    acc = out[i].setdefault(text, [0, 0, 0, 0])
                    for j in range(4):
                        acc[j] += row[j]
        return out

    async def by_period(
        self,
        cal: Calendar,
        name: str,
        kind: str,
        span: tuple[int | None, int | None, int | None],
        limit: int,
        sort: str,
        now: int,
    ) -> dict[str, object]:
        """A monitor's hosts in each period (span: last, begin, end as a report takes them)."""
        last, begin, end = span
        periods = _periods(cal, kind, last, begin, end, now)
        check_host_cells(len(periods), limit)
        bounds = [p.begin for p in periods] + [periods[-1].end]
        # the quarters of each period, as the monitors' reports read them
        sums = await self.quarter_sums(name, [-(-b // 900) for b in bounds], now)
        rows = [
            {"label": p.label, "begin": p.begin, "end": p.end, "count": len(s),
             "hosts": ranked(s, sort, limit)}
            for p, s in zip(periods, sums, strict=True)
        ]  # fmt: skip
        return {
            "monitor": name,
            "period": kind,
            "timezone": cal.zone.key,
            "week_start": cal.week_start,
            "begin": bounds[0],
            "end": bounds[-1],
            "periods": rows,
        }
