"""Report, flow, top, host and quota figures: stored rows plus the counts not yet flushed."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
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

Gateways = Sequence[str] | None  # the fleet store's gateways to read; None: this daemon's own

# (monitors, bucket bounds, grain, gateways) -> per monitor one [in, out] per bucket
SumsSource = Callable[[Sequence[str], Sequence[int], str, Gateways], Awaitable[query.Sums]]


class StoreReader(Protocol):
    """The report reads of a store (query.Reader: SQLite; pgquery.PgReader: PostgreSQL)."""

    def bucket_sums(
        self, db: Path, names: Sequence[str], bounds: Sequence[int], grain: str, gateways: Gateways
    ) -> query.Sums:
        """In/out bytes per monitor per bucket."""

    def stored_span(self, db: Path, names: Sequence[str], gateways: Gateways) -> Span:
        """First and last stored quarter (UTC seconds), or None."""

    def flows(
        self, db: Path, monitor: str, begin: float, end: float, gateways: Gateways
    ) -> query.TextFlows:
        """A monitor's flow positions over [begin, end)."""

    def host_sums(
        self, db: Path, monitor: str, first: int, end: int, gateways: Gateways
    ) -> query.HostSums:
        """A monitor's per-host totals over the quarters [first, end)."""

    def host_sums_over(
        self, db: Path, monitor: str, ranges: Sequence[tuple[int, int]], gateways: Gateways
    ) -> list[query.HostSums]:
        """A monitor's per-host totals over each range of quarters [first, end)."""

    def host_series(
        self,
        db: Path,
        monitor: str,
        host: str,
        ranges: Sequence[tuple[int, int]],
        grain: str,
        gateways: Gateways,
    ) -> list[list[int]]:
        """One host's [in, in packets, out, out packets] over each range of units of a grain."""

    def gateways(self) -> list[str]:
        """The gateways the store holds rows of."""

    def close(self) -> None:
        """Release the connection."""


Span = tuple[int, int] | None


def open_reader(cfg: Config) -> StoreReader:
    """The configured store's reader."""
    if not cfg.store.postgresql:
        return query.Reader()
    from trafmetuxd.pgquery import PgReader  # psycopg only where PostgreSQL is used

    return PgReader(cfg.store)


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


def _each(gateways: Gateways, each_gateway: bool) -> list[str | None]:
    """The gateways to read one by one, or [None]: read them (or this one) together."""
    return list(gateways or ()) if each_gateway else [None]


def _named(gateway: str | None) -> dict[str, object]:
    """The gateway field of an entry when the reply names each gateway."""
    return {"gateway": gateway} if gateway else {}


def _host_rank(sort: str, row: list[int]) -> int:
    """The figure hosts are ranked by: in, out or total bytes."""
    return row[0] if sort == "in" else row[2] if sort == "out" else row[0] + row[2]


class Reports:
    """The figures the daemon answers with: stored rows (one shared reader) plus unflushed."""

    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.clock = clock
        # one store connection (and for SQLite a cache of period sums), shared by every request
        self.reader = open_reader(backend.config)

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

    def own(self, gateways: Gateways) -> bool:
        """Whether this daemon's gateway is among those read (its unflushed counts then are)."""
        return gateways is None or self.backend.config.store.gateway in gateways

    async def sums(
        self,
        names: Sequence[str],
        bounds: Sequence[int],
        grain: str,
        gateways: Gateways = None,
        fresh: bool = True,
    ) -> query.Sums:
        """Stored sums plus unflushed minutes, read under the flush lock: nothing counts twice.

        fresh: have the capture workers ship first (the caller may just have had them ship).
        """
        backend = self.backend
        db = backend.config.database
        own = self.own(gateways)
        if own and fresh:
            await backend.refresh()  # the capture workers' counts up to this request
        async with backend.flush_lock:
            result = await asyncio.to_thread(
                self.reader.bucket_sums, db, names, bounds, grain, gateways
            )
            pending = backend.unflushed() if own else {}
        for name in names:
            for minute, (rx, _, tx, _) in pending.get(name, {}).items():
                query.add_to_bucket(result[name], bounds, minute * 60, rx, tx)
        return result

    async def _total_period(
        self, cal: Calendar, names: Sequence[str], now: int, gateways: Gateways = None
    ) -> list[Period]:
        """One period from the first stored or unflushed quarter through the latest of them.

        It ends after now, or after the latest data when that lies ahead of the clock (the wall
        clock stepped back after it was metered): the total holds everything stored and
        unflushed.
        """
        backend = self.backend
        db = backend.config.database
        span = await asyncio.to_thread(self.reader.stored_span, db, names, gateways)
        pending = backend.unflushed() if self.own(gateways) else {}
        minutes = [m for n, t in pending.items() if n in names for m in t]
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
        gateways: Gateways = None,
        each_gateway: bool = False,
        source: SumsSource | None = None,
    ) -> dict[str, object]:
        """Rows of [in, out] bytes per monitor per period, oldest first.

        each_gateway: a column per gateway and monitor, named 'gateway/monitor'; otherwise the
        gateways read are summed per monitor. source: where the figures come from instead of
        the monitors' totals (one host's history), read for the same gateways.
        """
        if kind == "total":
            periods = await self._total_period(cal, names, now, gateways)
        else:
            periods = _periods(cal, kind, last, begin, end, now)
        split = list(gateways or ()) if each_gateway else []
        check_cells(len(periods), len(names) * max(1, len(split)))
        bounds = [p.begin for p in periods] + [periods[-1].end]
        grain = "minute" if kind == "minute" else "quarter"
        columns: dict[str, list[list[int]]] = {}
        read = self.sums if source is None else source
        for gateway in _each(gateways, each_gateway):
            figures = await read(names, bounds, grain, [gateway] if gateway else gateways)
            for name in names:
                columns[f"{gateway}/{name}" if gateway else name] = figures[name]
        rows = [
            {
                "label": p.label,
                "begin": p.begin,
                "end": p.end,
                "values": {n: figures[i] for n, figures in columns.items()},
            }
            for i, p in enumerate(periods)
        ]
        return {
            "period": kind,
            "timezone": cal.zone.key,
            "week_start": cal.week_start,
            "monitors": list(columns),
            "rows": rows,
        }

    async def merged_flows(
        self, name: str, begin: int, end: int, now: int, gateways: Gateways = None
    ) -> query.TextFlows:
        """Stored flows in [begin, end) plus unflushed ones when the range reaches now."""
        backend = self.backend
        db = backend.config.database
        recent = end > now and self.own(gateways)
        if recent:
            await backend.refresh()  # the capture workers' counts up to this request
        async with backend.flush_lock:
            out = await asyncio.to_thread(self.reader.flows, db, name, begin, end, gateways)
            pending = backend.unflushed_flows(name) if recent else {}
        for key, (sent, recv, pkts) in pending.items():
            acc = out.setdefault(text_key(key), [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + sent, acc[1] + recv, acc[2] + pkts
        return out

    async def flows(
        self,
        name: str,
        begin: int,
        end: int,
        limit: int,
        now: int,
        gateways: Gateways = None,
        each_gateway: bool = False,
    ) -> dict[str, object]:
        """A monitor's positions over [begin, end), largest (sent + received) first.

        each_gateway: every flow names its gateway; otherwise the gateways' are summed.
        """
        named: list[tuple[str | None, query.TextFlows]] = []
        for gateway in _each(gateways, each_gateway):
            wanted = [gateway] if gateway else gateways
            named.append((gateway, await self.merged_flows(name, begin, end, now, wanted)))
        items = [(gw, k, v) for gw, merged in named for k, v in merged.items()]
        ranked = sorted(items, key=lambda e: (-(e[2][0] + e[2][1]), e[1], e[0] or ""))
        return {
            "monitor": name,
            "begin": begin,
            "end": end,
            "count": len(ranked),
            "flows": [_flow_dict(k, v) | _named(gw) for gw, k, v in ranked[:limit]],
        }

    async def once_across(
        self, names: Sequence[str], begin: int, end: int, now: int, gateways: Gateways = None
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
            merged = await self.merged_flows(name, begin, end, now, gateways)
            for key, (sent, recv, pkts) in merged.items():
                acc = out.setdefault(key, [0, 0, 0])
                acc[0], acc[1], acc[2] = max(acc[0], sent), max(acc[1], recv), max(acc[2], pkts)
        return out

    async def top(
        self,
        names: Sequence[str],
        begin: int,
        end: int,
        by: str,
        limit: int,
        now: int,
        gateways: Gateways = None,
        each_gateway: bool = False,
    ) -> dict[str, object]:
        """Top clients, servers or server ports by bytes over [begin, end), each packet once.

        each_gateway: an entry per gateway and key, naming the gateway; otherwise summed.
        """
        totals: dict[tuple[str, str | None], int] = {}
        for gateway in _each(gateways, each_gateway):
            wanted = [gateway] if gateway else gateways
            for key, v in (await self.once_across(names, begin, end, now, wanted)).items():
                k = (_top_key(by, key), gateway)
                totals[k] = totals.get(k, 0) + v[0] + v[1]
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] or ""))
        return {
            "by": by,
            "monitors": list(names),
            "begin": begin,
            "end": end,
            "entries": [{"key": k, "bytes": b} | _named(gw) for (k, gw), b in ranked[:limit]],
        }

    async def usage(
        self,
        spec: QuotaSpec,
        period: Period,
        now: int,
        gateways: Gateways = None,
        fresh: bool = True,
    ) -> Usage:
        """A quota's bytes in its period (stored + unflushed): per host too for a per-host one.

        fresh: have the capture workers ship first (the caller may just have had them ship).
        """
        if spec.per_host:
            per_host: dict[str, int] = {}
            first, stop = period.begin // 900, -(-period.end // 900)
            for name in spec.monitors:
                figures = await self.host_figures(name, first, stop, now, gateways, fresh)
                for host, row in figures.items():
                    per_host[host] = per_host.get(host, 0) + row[0] + row[2]
            return Usage(sum(per_host.values()), per_host)
        bounds = [period.begin, period.end]
        sums = await self.sums(spec.monitors, bounds, "quarter", gateways, fresh)
        return Usage(sum(rx + tx for per in sums.values() for rx, tx in per))

    async def quotas(
        self,
        specs: Sequence[QuotaSpec] | None = None,
        gateways: Gateways = None,
        fresh: bool = True,
        adjustments: Mapping[str, Adjustment] | None = None,
    ) -> list[QuotaStatus]:
        """Each quota's usage so far in its current period (stored + unflushed); all by default.

        Over several gateways their usage is summed (call once per gateway to see each).
        adjustments: the operator's extensions and resets by quota name.
        """
        cal, now = self.calendar(), self.now()
        out = []
        adjusted = adjustments or {}
        for spec in self.backend.config.quotas if specs is None else specs:
            period = quota_period(spec, cal, now)
            usage = await self.usage(spec, period, now, gateways, fresh)
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
        self,
        name: str,
        first: int,
        stop: int,
        now: int,
        gateways: Gateways = None,
        fresh: bool = True,
    ) -> query.HostSums:
        """A monitor's hosts over the UTC quarters [first, stop): stored rows plus unflushed."""
        return (await self.host_figures_over(name, [first, stop], now, gateways, fresh))[0]

    async def host_figures_over(
        self,
        name: str,
        edges: Sequence[int],
        now: int,
        gateways: Gateways = None,
        fresh: bool = True,
    ) -> list[query.HostSums]:
        """A monitor's hosts over the UTC quarters [edges[i], edges[i + 1]): stored + unflushed.

        Read under the flush lock, so nothing is missed or counted twice; the gateways' stored
        rows summed, and this daemon's unflushed counts when it is among them.
        """
        backend = self.backend
        ranges = list(pairwise(edges))
        recent = edges[-1] * 900 > now and self.own(gateways)
        if recent and fresh:
            await backend.refresh()  # the capture workers' counts up to this request
        async with backend.flush_lock:
            db = backend.config.database
            out = await asyncio.to_thread(self.reader.host_sums_over, db, name, ranges, gateways)
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

    async def hosts(
        self,
        name: str,
        begin: int,
        end: int,
        limit: int,
        sort: str,
        now: int,
        gateways: Gateways = None,
        each_gateway: bool = False,
    ) -> dict[str, object]:
        """A monitor's hosts over [begin, end) widened to whole quarter hours, largest first.

        Stored rows plus the unflushed minutes in the same quarters, under the flush lock.
        each_gateway: an entry per gateway and host, naming the gateway; otherwise summed.
        """
        first, stop = begin // 900, -(-end // 900)
        items: list[tuple[str | None, str, list[int]]] = []
        for gateway in _each(gateways, each_gateway):
            wanted = [gateway] if gateway else gateways
            sums = await self.host_figures(name, first, stop, now, wanted)
            items += [(gateway, host, row) for host, row in sums.items()]
        ranked = sorted(items, key=lambda e: (-_host_rank(sort, e[2]), e[1], e[0] or ""))
        return {
            "monitor": name,
            "begin": first * 900,
            "end": stop * 900,
            "count": len(ranked),
            "hosts": [_host_dict(h, row) | _named(gw) for gw, h, row in ranked[:limit]],
        }
