"""Command handlers behind the dispatch table: requests checked, answered through Reports."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from trafmetuxd import metrics
from trafmetuxd.addresses import host_text
from trafmetuxd.api import Peer, may_operate
from trafmetuxd.hostreports import HostReports
from trafmetuxd.periods import Calendar, check_instant, parse_local, resolve_zone
from trafmetuxd.protocol import (
    BAD_ARGUMENT,
    FORBIDDEN,
    NOT_FOUND,
    PEER,
    UNAVAILABLE,
    VERSION,
    ProtocolError,
)  # fmt: skip
from trafmetuxd.quota import QuotaStatus
from trafmetuxd.reports import Reports
from trafmetuxd.spec import QuotaSpec

if TYPE_CHECKING:
    from trafmetuxd.limits import Limits

Handler = Callable[[Mapping[str, Any]], Awaitable[object]]
Status = Callable[[], Awaitable[dict[str, object]]]
DAY = 86400


class Handlers:
    """The commands of the control socket, as an explicit name -> coroutine table."""

    def __init__(
        self, reports: Reports, status: Status | None = None, limits: Limits | None = None
    ) -> None:
        self.reports = reports
        self.limits = limits  # quota enforcement (the running daemon only)
        self.backend = reports.backend
        self.host_reports = HostReports(reports)
        # the running daemon's status: the service's, composed around its metering core
        self.daemon_status = self.backend.status if status is None else status

    def table(self) -> dict[str, Handler]:
        """Command name -> handler; api.py dispatches through this dict only."""
        return {
            "status": self.status,
            "monitors": self.monitors,
            "report": self.report,
            "flows": self.flows,
            "top": self.top,
            "hosts": self.hosts,
            "live": self.live,
            "quota": self.quota,
            "quota-extend": self.quota_extend,
            "quota-reset": self.quota_reset,
            "metrics": self.metrics,
            "flush": self.flush,
            "reload": self.reload,
        }

    def monitor_names(self, wanted: list[str] | None) -> list[str]:
        """The requested monitors (all configured ones by default); unknown -> not_found."""
        known = [m.name for m in self.backend.config.monitors]
        if not wanted:
            return known
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ProtocolError(NOT_FOUND, f"no such monitor: {missing[0]}")
        return list(dict.fromkeys(wanted))

    def instant(self, args: Mapping[str, Any], field: str, cal: Calendar) -> int | None:
        """A time argument: unix seconds or local 'YYYY-MM[-DD[ HH:MM]]' text; errors name it."""
        value = args.get(field)
        if value is None:
            return None
        try:
            if isinstance(value, str):
                return parse_local(value, cal.zone)
            assert isinstance(value, int | float)
            check_instant(value, value)
        except ValueError as exc:
            raise ProtocolError(BAD_ARGUMENT, f"{field}: {exc}") from None
        return int(value)

    async def status(self, args: Mapping[str, Any]) -> object:
        """Daemon status plus the protocol version and zone."""
        cfg = self.backend.config
        return {
            **(await self.daemon_status()),
            "protocol": VERSION,
            "timezone": resolve_zone(cfg.timezone).key,
            "time": self.reports.clock(),
        }

    async def monitors(self, args: Mapping[str, Any]) -> object:
        """The configured monitors."""
        return {
            "monitors": [
                {"name": m.name, "rules": len(m.rules), "collector_size": m.collector_size}
                for m in self.backend.config.monitors
            ]
        }

    async def live(self, args: Mapping[str, Any]) -> object:
        """Current rates per monitor, bytes per second; with `hosts`, per host of one monitor."""
        if args.get("hosts") is not None:
            return self.host_reports.live(args)
        if args.get("limit") is not None:
            raise ProtocolError(BAD_ARGUMENT, "live: 'limit' counts hosts: give 'hosts'")
        names = self.monitor_names(args.get("monitors"))
        rates = self.backend.rates()
        return {"rates": {n: list(rates.get(n, (0.0, 0.0))) for n in names}}

    async def report(self, args: Mapping[str, Any]) -> object:
        """Per-period in/out bytes per monitor, stored plus unflushed."""
        cal = self.reports.calendar(args.get("week_start"))
        names = self.monitor_names(args.get("monitors"))
        begin = self.instant(args, "begin", cal)
        end = self.instant(args, "end", cal)
        if begin is not None and args.get("last") is not None:
            message = "'last' counts back from 'end' (or now): give begin and end, or last"
            raise ProtocolError(BAD_ARGUMENT, f"report: {message}, not begin and last")
        kind, last = args["period"], args.get("last")
        gateways, each = await self.fleet(args)
        now = self.reports.now()
        host = args.get("host")
        if host is None:
            return await self.reports.report(
                cal, names, kind, last, begin, end, now, gateways, each
            )
        # one host's history: the monitors asked for, else every monitor counting that host
        keys = self.host_reports.keys(names if args.get("monitors") else None, host)
        source = self.host_reports.series(keys)
        result = await self.reports.report(
            cal, list(keys), kind, last, begin, end, now, gateways, each, source
        )
        return {**result, "host": host, "hosts": {n: host_text(k) for n, k in keys.items()}}

    async def flows(self, args: Mapping[str, Any]) -> object:
        """A monitor's flow positions over a range, largest first."""
        cal = self.reports.calendar()
        (name,) = self.monitor_names([args["monitor"]])
        begin, end = self._range(args, cal)
        limit = args.get("limit", 20)
        gateways, each = await self.fleet(args)
        now = self.reports.now()
        return await self.reports.flows(name, begin, end, limit, now, gateways, each)

    async def top(self, args: Mapping[str, Any]) -> object:
        """Top clients, servers or ports by bytes over a range."""
        cal = self.reports.calendar()
        names = self.monitor_names(args.get("monitors"))
        begin, end = self._range(args, cal)
        by, limit = args.get("by", "client"), args.get("limit", 10)
        gateways, each = await self.fleet(args)
        now = self.reports.now()
        if by == "host":
            name = self.host_reports.host_monitor(args.get("monitors") and names)
            return await self.host_reports.top(name, (begin, end), limit, now, gateways, each)
        return await self.reports.top(names, begin, end, by, limit, now, gateways, each)

    async def hosts(self, args: Mapping[str, Any]) -> object:
        """A monitor's hosts over a range (the last day by default), largest first.

        With a period: the hosts of each period (the last n, or those covering begin..end).
        """
        (name,) = self.monitor_names([args["monitor"]])
        cal = self.reports.calendar(args.get("week_start"))
        limit, sort = args.get("limit", 20), args.get("sort", "total")
        gateways, each = await self.fleet(args)
        kind = args.get("period")
        if kind is None:
            for field in ("last", "week_start"):
                if args.get(field) is not None:
                    message = f"hosts: {field!r} applies to periods: give 'period'"
                    raise ProtocolError(BAD_ARGUMENT, message)
            begin, end = self._range(args, cal)
            now = self.reports.now()
            result = await self.reports.hosts(name, begin, end, limit, sort, now, gateways, each)
            return _local_times(result, cal)
        span = (args.get("last"), self.instant(args, "begin", cal), self.instant(args, "end", cal))
        if span[0] is not None and span[1] is not None:
            message = "'last' counts back from 'end' (or now): give begin and end, or last"
            raise ProtocolError(BAD_ARGUMENT, f"hosts: {message}, not begin and last")
        now = self.reports.now()
        result = await self.host_reports.by_period(
            cal, name, kind, span, limit, sort, now, gateways, each
        )
        periods = result["periods"]
        assert isinstance(periods, list)
        result["periods"] = [_local_times(p, cal) for p in periods]
        return _local_times(result, cal)

    async def quota(self, args: Mapping[str, Any]) -> object:
        """One quota (by name) or all of them."""
        specs = self.backend.config.quotas
        name = args.get("name")
        if name is not None:
            specs = (self._quota_spec(name),)
        gateways, each = await self.fleet(args)
        if not each:
            statuses = await self._quota_statuses(specs, gateways)
            return {"quotas": [s.as_dict() for s in statuses]}
        out: list[dict[str, object]] = []
        for gateway in gateways or ():
            statuses = await self._quota_statuses(specs, [gateway])
            out += [s.as_dict() | {"gateway": gateway} for s in statuses]
        return {"quotas": out}

    def _quota_spec(self, name: str) -> QuotaSpec:
        for spec in self.backend.config.quotas:
            if spec.name == name:
                return spec
        raise ProtocolError(NOT_FOUND, f"no such quota: {name}")

    async def _quota_statuses(
        self, specs: tuple[QuotaSpec, ...], gateways: list[str] | None = None
    ) -> list[QuotaStatus]:
        """The quotas' states; this gateway's own carry its enforcement and adjustments."""
        limits = self.limits
        if limits is None or gateways not in (None, [self.backend.config.store.gateway]):
            return await self.reports.quotas(specs, gateways)
        adjusted = await self.reports.quotas(specs, gateways, adjustments=limits.adjustments)
        return limits.decorate(adjusted)

    async def quota_extend(self, args: Mapping[str, Any]) -> object:
        """Add bytes to a quota's limit for its current period (root or admin_group)."""
        return await self._adjust(args, args["bytes"])

    async def quota_reset(self, args: Mapping[str, Any]) -> object:
        """Start a quota's count afresh for its current period (root or admin_group)."""
        return await self._adjust(args, None)

    async def _adjust(self, args: Mapping[str, Any], extend: int | None) -> object:
        spec = self._quota_spec(args["name"])
        peer: Peer | None = args.get(PEER)
        group = self.backend.config.admin_group
        cmd = "quota-reset" if extend is None else "quota-extend"
        if not await asyncio.to_thread(may_operate, peer, group):
            who = "an unknown peer" if peer is None else f"uid {peer.uid}"
            need = f"root or a member of admin_group {group!r}" if group else "root"
            raise ProtocolError(FORBIDDEN, f"{who} may not run {cmd!r}: it takes {need}")
        if self.limits is None:
            raise ProtocolError(UNAVAILABLE, f"{cmd}: no quota enforcement in this daemon")
        assert peer is not None
        who = f"uid {peer.uid} (pid {peer.pid})"
        return {"quota": (await self.limits.adjust(spec, extend, who)).as_dict()}

    async def fleet(self, args: Mapping[str, Any]) -> tuple[list[str] | None, bool]:
        """The gateways a request reads (None: this daemon's) and whether each is named.

        ["all"] is every gateway the store holds (and this one while it meters); without a
        PostgreSQL store no other gateway can be asked for.
        """
        wanted = args.get("gateways")
        if not wanted:
            return None, False
        store = self.backend.config.store
        own = store.gateway
        if not store.postgresql:
            if set(wanted) <= {own, "all"}:
                return None, False
            message = (f"gateways: the SQLite store holds this gateway ({own}) only; "
                       "reports across gateways need a PostgreSQL store ([store] url)")  # fmt: skip
            raise ProtocolError(BAD_ARGUMENT, message)
        known = await asyncio.to_thread(self.reports.reader.gateways)
        if self.backend.config.capture.enabled:
            known = sorted({*known, own})
        if "all" in wanted:
            return known, not args.get("sum", False)
        for name in wanted:
            if name not in known and name != own:
                held = ", ".join(known) or "none yet"
                raise ProtocolError(NOT_FOUND, f"no such gateway: {name} (the store holds: {held})")
        return list(dict.fromkeys(wanted)), not args.get("sum", False)

    async def metrics(self, args: Mapping[str, Any]) -> object:
        """Every figure of one /metrics scrape: all-time totals, quotas, health."""
        names = [m.name for m in self.backend.config.monitors]
        statuses = await self.reports.quotas(self.backend.config.quotas)
        return await metrics.gather(self.backend, statuses, names, self.daemon_status)

    async def flush(self, args: Mapping[str, Any]) -> object:
        """Flush the collectors now (admin)."""
        return await self.backend.flush()

    async def reload(self, args: Mapping[str, Any]) -> object:
        """Reload the configuration (admin)."""
        return await self.backend.reload()

    def _range(self, args: Mapping[str, Any], cal: Calendar) -> tuple[int, int]:
        now = self.reports.now()
        end = self.instant(args, "end", cal)
        end = now + 1 if end is None else end
        begin = self.instant(args, "begin", cal)
        begin = end - DAY if begin is None else begin
        if begin >= end:
            raise ProtocolError(BAD_ARGUMENT, "begin must be before end")
        return begin, end


def _local_times(result: dict[str, object], cal: Calendar) -> dict[str, object]:
    """The result with its begin and end (unix seconds) as local ISO 8601 with the offset."""
    for key in ("begin", "end"):
        value = result[key]
        assert isinstance(value, int)
        result[key] = datetime.fromtimestamp(value, cal.zone).isoformat()
    return result
