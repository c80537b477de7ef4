"""Report, flow, top, host and quota figures: stored rows plus the counts not yet flushed."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from trafmetuxd import ipproto, query
from trafmetuxd.addresses import host_text
from trafmetuxd.collector import OTHER, FlowKey, Flows, Hosts, Totals
from trafmetuxd.periods import Calendar, Period, resolve_zone
from trafmetuxd.protocol import BAD_ARGUMENT, ProtocolError
from trafmetuxd.quota import (
    Adjustment,
    OverLimit,
    QuotaStatus,
    Usage,
    evaluate,
    over_limit,
    quota_period,
)
from trafmetuxd.spec import Config, QuotaSpec

# (monitors, bucket bounds, grain) -> per monitor one [in, out] per bucket
SumsSource = Callable[[Sequence[str], Sequence[int], str], Awaitable[query.Sums]]


class Backend(Protocol):
    """What the reports and the handlers need from the running daemon."""

    config: Config
    flush_lock: asyncio.Lock

    async def refresh(self) -> object:
        """Have the capture workers ship what they counted so far (bounded wait)."""

    def unflushed(self) -> dict[str, Totals]:
        """Per monitor: minute totals counted but not committed yet."""

    def unflushed_flows(self, monitor: str) -> Flows:
        """A monitor's flow positions not committed yet."""

    def unflushed_hosts(self, monitor: str) -> Hosts:
        """A monitor's per-host totals not committed yet."""

    async def status(self) -> dict[str, object]:
        """JSON-able daemon status (may read kernel counters: awaited, off the loop)."""

    def rates(self) -> dict[str, tuple[float, float]]:
        """Monitor -> (in B/s, out B/s)."""

    def host_rates(self, monitor: str) -> dict[str, tuple[float, float]]:
        """A monitor's host text -> (in B/s, out B/s), the hosts that counted lately."""

    async def flush(self) -> dict[str, object]:
        """Flush now; returns what was written."""

    async def reload(self) -> dict[str, object]:
        """Reload the configuration; returns what changed."""


DEFAULT_LAST = {"minute": 60, "hour": 24, "day": 7, "week": 4, "month": 12, "year": 5}
MAX_ROWS = 20_000
# A report's cost grows with its cells (periods x monitors): 20,000 hours of 20 monitors took
# seconds of the main process, holding the flush lock through its reads. Bounded like the rows.
MAX_CELLS = 50_000


# the shortest a period of each kind can be (a DST day has 23 hours, Lord Howe's hour 30 min)
_SHORTEST = {"minute": 60, "hour": 1800, "day": 82800, "week": 601200, "month": 28 * 82800}
_SHORTEST["year"] = 365 * 82800


def check_cells(periods: int, monitors: int) -> None:
    """Refuse a report of more than MAX_CELLS figures, naming the limit."""
    if periods * monitors > MAX_CELLS:
        raise ProtocolError(
            BAD_ARGUMENT,
            f"{periods} periods x {monitors} monitors: at most {MAX_CELLS} figures per report; "
            "ask for fewer periods or monitors",
        )


def _too_many(what: str) -> ProtocolError:
    return ProtocolError(BAD_ARGUMENT, f"{what}: at most {MAX_ROWS} periods per report")


def _periods(
    cal: Calendar, kind: str, last: int | None, begin: int | None, end: int | None, now: int
) -> list[Period]:
    """The report's periods: the last n up to end (or now), or those covering [begin, end)."""
    if begin is None:
        n = last or DEFAULT_LAST[kind]
        anchor = now if end is None else end - 1
        if n > MAX_ROWS:
            raise _too_many(f"last = {n}")
        try:
            return cal.last(kind, n, anchor)
        except (ValueError, OverflowError):  # counted back past year 1
            raise ProtocolError(BAD_ARGUMENT, f"last = {n} reaches back before year 1") from None
    stop = now + 1 if end is None else end
    if stop <= begin:
        raise ProtocolError(BAD_ARGUMENT, "begin must be before end")
    # estimate the row count before building rows, so a huge range fails fast
    if (stop - begin) // _SHORTEST[kind] > MAX_ROWS + 1:
        raise _too_many("begin .. end")
    try:
        return cal.span(kind, begin, stop, MAX_ROWS)
    except ValueError:
        raise _too_many("begin .. end") from None


def _addr(family: int, value: int) -> str:
    if family == 4:
        return str(ipaddress.IPv4Address(value))
    if family == 6:
        return str(ipaddress.IPv6Address(value))
    return "*"


def text_key(key: FlowKey) -> tuple[int, int, str, int, str, int]:
    """A collector flow key in the store's text form ('*' addresses for the other position)."""
    fam, proto, cli, cport, srv, sport = key
    if key == OTHER:
        return (0, 0, "*", -1, "*", -1)  # as the store writes it
    return (fam, proto, _addr(fam, cli), cport, _addr(fam, srv), sport)


def _flow_dict(key: tuple[int, int, str, int, str, int], v: list[int]) -> dict[str, object]:
    fam, proto, cli, cport, srv, sport = key
    return {
        "family": fam,
        "protocol": proto,
        "proto_name": ipproto.name(proto) if fam else "other",
        "client": cli,
        "client_port": cport,
        "server": srv,
        "server_port": sport,
        "sent": v[0],
        "received": v[1],
        "packets": v[2],
    }


def _top_key(by: str, key: tuple[int, int, str, int, str, int]) -> str:
    fam, proto, cli, _, srv, sport = key
    if by == "client":
        return cli
    if by == "server":
        return srv
    name = ipproto.name(proto) if fam else "other"
    return f"{name}/{sport}" if sport >= 0 else name


def _host_dict(host: str, row: list[int]) -> dict[str, object]:
    return {"host": host, "in": row[0], "out": row[2], "in_packets": row[1],
            "out_packets": row[3]}  # fmt: skip


def _host_rank(sort: str, row: list[int]) -> int:
    """The figure hosts are ranked by: in, out or total bytes."""
    return row[0] if sort == "in" else row[2] if sort == "out" else row[0] + row[2]


class Reports:
    """The figures the daemon answers with: stored rows (one shared reader) plus unflushed."""

    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.clock = clock
        # one store connection and its cache of period sums, shared by every request
        self.reader = query.Reader()

    def close(self) -> None:
        """Close the store connection the reports read through."""
        self.reader.close()

    def now(self) -> int:
        """The clock, in whole UTC seconds."""
        return int(self.clock())

    def calendar(self, week_start: int | None = None) -> Calendar:
        """The configured zone and week start (overridable per request)."""
        cfg = self.backend.config
        ws = cfg.week_start if week_start is None else week_start
        return Calendar(resolve_zone(cfg.timezone), ws)

    async def sums(
        self, names: Sequence[str], bounds: Sequence[int], grain: str, fresh: bool = True
    ) -> query.Sums:
        """Stored sums plus unflushed minutes, read under the flush lock: nothing counts twice.

        fresh: have the capture workers ship first (the caller may just have had them ship).
        """
        backend = self.backend
        db = backend.config.database
        if fresh:
            await backend.refresh()  # the capture workers' counts up to this request
        async with backend.flush_lock:
            result = await asyncio.to_thread(self.reader.bucket_sums, db, names, bounds, grain)
            pending = backend.unflushed()
        for name in names:
            for minute, (rx, _, tx, _) in pending.get(name, {}).items():
                query.add_to_bucket(result[name], bounds, minute * 60, rx, tx)
        return result

    async def _total_period(self, cal: Calendar, names: Sequence[str], now: int) -> list[Period]:
        """One period from the first stored or unflushed quarter through the latest of them.

        It ends after now, or after the latest data when that lies ahead of the clock (the wall
        clock stepped back after it was metered): the total holds everything stored and
        unflushed.
        """
        backend = self.backend
        span = await asyncio.to_thread(query.stored_span, backend.config.database, names)
        minutes = [m for n, t in backend.unflushed().items() if n in names for m in t]
        starts, lasts = [now], [now]
        if span is not None:
            starts.append(span[0])
            lasts.append(span[1])
        if minutes:
            starts.append(min(minutes) * 60)
            lasts.append(max(minutes) * 60)
        begin, last = min(starts), max(lasts)
        begin -= begin % 900
        label = f"{cal.label('day', begin, begin)} - {cal.label('day', last, last)}"
        return [Period(begin, last + 1, label)]

    async def report(
        self,
        cal: Calendar,
        names: Sequence[str],
        kind: str,
        last: int | None,
        begin: int | None,
        end: int | None,
        now: int,
        source: SumsSource | None = None,
    ) -> dict[str, object]:
        """Rows of [in, out] bytes per monitor per period, oldest first.

        source: where the figures come from (default: the monitors' totals, self.sums).
        """
        if kind == "total":
            periods = await self._total_period(cal, names, now)
        else:
            periods = _periods(cal, kind, last, begin, end, now)
        check_cells(len(periods), len(names))
        bounds = [p.begin for p in periods] + [periods[-1].end]
        grain = "minute" if kind == "minute" else "quarter"
        figures = await (source or self.sums)(names, bounds, grain)
        rows = [
            {
                "label": p.label,
                "begin": p.begin,
                "end": p.end,
                "values": {n: figures[n][i] for n in names},
            }
            for i, p in enumerate(periods)
        ]
        return {
            "period": kind,
            "timezone": cal.zone.key,
            "week_start": cal.week_start,
            "monitors": list(names),
            "rows": rows,
        }

    async def merged_flows(self, name: str, begin: int, end: int, now: int) -> query.TextFlows:
        """Stored flows in [begin, end) plus unflushed ones when the range reaches now."""
        backend = self.backend
        db = backend.config.database
        if end > now:
            await backend.refresh()  # the capture workers' counts up to this request
        async with backend.flush_lock:
            out = await asyncio.to_thread(query.flows, db, name, begin, end)
            pending = backend.unflushed_flows(name) if end > now else {}
        for key, (sent, recv, pkts) in pending.items():
            acc = out.setdefault(text_key(key), [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + sent, acc[1] + recv, acc[2] + pkts
        return out

    async def flows(
        self, name: str, begin: int, end: int, limit: int, now: int
    ) -> dict[str, object]:
        """A monitor's positions over [begin, end), largest (sent + received) first."""
        merged = await self.merged_flows(name, begin, end, now)
        ranked = sorted(merged.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))
        return {
            "monitor": name,
            "begin": begin,
            "end": end,
            "count": len(ranked),
            "flows": [_flow_dict(k, v) for k, v in ranked[:limit]],
        }

    async def once_across(
        self, names: Sequence[str], begin: int, end: int, now: int
    ) -> query.TextFlows:
        """Each flow position counted once over several monitors: per key, the largest sent
        and the largest received of any monitor.

        A packet lands in every monitor it matches, under the same key (client, server, ports);
        summing the monitors would count it once per monitor. One flow's packets in one
        direction share their header fields, so the monitor that saw most of them saw all that
        any did (a gateway's 'in' and 'out' monitors each see a forwarded packet once: it
        counts once).
        """
        out: query.TextFlows = {}
        for name in names:
            for key, (sent, recv, pkts) in (await self.merged_flows(name, begin, end, now)).items():
                acc = out.setdefault(key, [0, 0, 0])
                acc[0], acc[1], acc[2] = max(acc[0], sent), max(acc[1], recv), max(acc[2], pkts)
        return out

    async def top(
        self, names: Sequence[str], begin: int, end: int, by: str, limit: int, now: int
    ) -> dict[str, object]:
        """Top clients, servers or server ports by bytes over [begin, end), each packet once."""
        totals: dict[str, int] = {}
        for key, v in (await self.once_across(names, begin, end, now)).items():
            k = _top_key(by, key)
            totals[k] = totals.get(k, 0) + v[0] + v[1]
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return {
            "by": by,
            "monitors": list(names),
            "begin": begin,
            "end": end,
            "entries": [{"key": k, "bytes": b} for k, b in ranked],
        }

    async def usage(self, spec: QuotaSpec, period: Period, now: int, fresh: bool = True) -> Usage:
        """A quota's bytes in its period (stored + unflushed): per host too for a per-host one.

        fresh: have the capture workers ship first (the caller may just have had them ship).
        """
        if spec.per_host:
            per_host: dict[str, int] = {}
            first, stop = period.begin // 900, -(-period.end // 900)
            for name in spec.monitors:
                figures = await self.host_figures(name, first, stop, now, fresh)
                for host, row in figures.items():
                    per_host[host] = per_host.get(host, 0) + row[0] + row[2]
            return Usage(sum(per_host.values()), per_host)
        sums = await self.sums(spec.monitors, [period.begin, period.end], "quarter", fresh)
        return Usage(sum(rx + tx for per in sums.values() for rx, tx in per))

    async def quotas(
        self,
        specs: Sequence[QuotaSpec] | None = None,
        fresh: bool = True,
        adjustments: Mapping[str, Adjustment] | None = None,
    ) -> list[QuotaStatus]:
        """Each quota's usage so far in its current period (stored + unflushed); all by default.

        adjustments: the operator's extensions and resets by quota name.
        """
        cal, now = self.calendar(), self.now()
        out = []
        adjusted = adjustments or {}
        for spec in self.backend.config.quotas if specs is None else specs:
            period = quota_period(spec, cal, now)
            usage = await self.usage(spec, period, now, fresh)
            out.append(evaluate(spec, usage, now, period, adjusted.get(spec.name)))
        return out

    async def over_limits(self, specs: Sequence[QuotaSpec] | None = None) -> list[OverLimit]:
        """Per quota, what is over its limit now: the whole quota or the hosts of a per-host one."""
        cal, now = self.calendar(), self.now()
        out = []
        for spec in self.backend.config.quotas if specs is None else specs:
            period = quota_period(spec, cal, now)
            out.append(over_limit(spec, await self.usage(spec, period, now)))
        return out

    async def host_figures(
        self, name: str, first: int, stop: int, now: int, fresh: bool = True
    ) -> query.HostSums:
        """A monitor's hosts over the UTC quarters [first, stop): stored rows plus unflushed.

        Read under the flush lock, so nothing is missed or counted twice.
        """
        backend = self.backend
        db = backend.config.database
        live = stop * 900 > now
        if live and fresh:
            await backend.refresh()  # the capture workers' counts up to this request
        async with backend.flush_lock:
            out = await asyncio.to_thread(query.host_sums, db, name, first, stop)
            pending = backend.unflushed_hosts(name) if live else {}
        for key, minutes in pending.items():
            rows = [r for m, r in minutes.items() if first * 15 <= m < stop * 15]
            if rows:
                acc = out.setdefault(host_text(key), [0, 0, 0, 0])
                for row in rows:
                    for i in range(4):
                        acc[i] += row[i]
        return out

    async def hosts(
        self, name: str, begin: int, end: int, limit: int, sort: str, now: int
    ) -> dict[str, object]:
        """A monitor's hosts over [begin, end) widened to whole quarter hours, largest first.

        Stored rows plus the unflushed minutes in the same quarters, under the flush lock.
        """
        first, stop = begin // 900, -(-end // 900)
        out = await self.host_figures(name, first, stop, now)
        ranked = sorted(out.items(), key=lambda kv: (-_host_rank(sort, kv[1]), kv[0]))
        return {
            "monitor": name,
            "begin": first * 900,
            "end": stop * 900,
            "count": len(ranked),
            "hosts": [_host_dict(h, row) for h, row in ranked[:limit]],
        }
