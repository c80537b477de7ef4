"""Per-host figures: hosts per period, one host's history, the top hosts, live host rates."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import suppress
from itertools import pairwise
from typing import Any

from trafmetuxd import query
from trafmetuxd.addresses import host_text
from trafmetuxd.collector import HostKey
from trafmetuxd.hostaddr import host_key, parse_host
from trafmetuxd.periods import Calendar
from trafmetuxd.protocol import BAD_ARGUMENT, NOT_FOUND, ProtocolError
from trafmetuxd.reports import (
    MAX_CELLS,
    Gateways,
    Reports,
    SumsSource,
    _each,
    _host_dict,
    _host_rank,
    _named,
    _periods,
)

SECONDS = {"minute": 60, "quarter": 900}  # the units a report's grain reads


def check_host_cells(periods: int, limit: int) -> None:
    """Refuse more than MAX_CELLS host lines (periods x hosts per period), naming the limit."""
    if periods * limit > MAX_CELLS:
        raise ProtocolError(
            BAD_ARGUMENT,
            f"{periods} periods x {limit} hosts: at most {MAX_CELLS} host lines per report; "
            "ask for fewer periods or a smaller limit",
        )


# (gateway named, or None when the gateways are summed or only this one is read) -> host sums
NamedSums = list[tuple[str | None, query.HostSums]]
# (gateway or None, host, [in, in packets, out, out packets])
HostLine = tuple[str | None, str, list[int]]


def largest(named: NamedSums, sort: str, limit: int) -> list[HostLine]:
    """The hosts largest first by `sort` (ties by name, then gateway), at most `limit`."""
    items = [(gw, host, row) for gw, sums in named for host, row in sums.items()]
    return sorted(items, key=lambda e: (-_host_rank(sort, e[2]), e[1], e[0] or ""))[:limit]


def ranked(named: NamedSums, sort: str, limit: int) -> list[dict[str, object]]:
    """The hosts largest first as the hosts command sends them, each naming its gateway."""
    return [_host_dict(h, row) | _named(gw) for gw, h, row in largest(named, sort, limit)]


class HostReports:
    """The per-host figures, read like the monitors' through one Reports (same lock, clock)."""

    def __init__(self, reports: Reports) -> None:
        self.reports = reports
        self.backend = reports.backend

    def keys(self, wanted: Sequence[str] | None, text: str) -> dict[str, HostKey]:
        """Each monitor's host that `text` names: of the monitors wanted, else all counting it.

        wanted holds known monitor names; a bad value gets bad_argument naming it (and the
        monitor that cannot count it).
        """
        try:
            asked = parse_host(text)
        except ValueError as exc:
            raise ProtocolError(BAD_ARGUMENT, f"host: {exc}") from None
        specs = {m.name: m for m in self.backend.config.monitors}
        if wanted:
            out = {}
            for name in wanted:
                try:
                    out[name] = host_key(specs[name], asked)
                except ValueError as exc:
                    message = f"host {text!r} in monitor {name!r}: {exc}"
                    raise ProtocolError(BAD_ARGUMENT, message) from None
            return out
        found = {}
        for spec in specs.values():
            with suppress(ValueError):
                found[spec.name] = host_key(spec, asked)
        if not found:
            with_hosts = ", ".join(n for n, s in specs.items() if s.hosts) or "none"
            message = f"host {text!r}: no monitor counts it (monitors with `hosts`: {with_hosts})"
            raise ProtocolError(BAD_ARGUMENT, message)
        return found

    def host_monitor(self, wanted: Sequence[str] | None) -> str:
        """The one monitor whose hosts `top` ranks: the one asked for, or the only with hosts."""
        specs = self.backend.config.monitors
        if wanted:
            names = list(wanted)
            without = [n for n in names if not any(m.name == n and m.hosts for m in specs)]
            if without:
                message = f"top by host: monitor {without[0]!r} has no `hosts`"
                raise ProtocolError(BAD_ARGUMENT, message)
        else:
            names = [m.name for m in specs if m.hosts]
        if len(names) != 1:
            choice = ", ".join(names) or "none has `hosts`"
            message = f"top by host ranks the hosts of one monitor: name one ({choice})"
            raise ProtocolError(BAD_ARGUMENT, message)
        return names[0]

    async def top(
        self,
        name: str,
        span: tuple[int, int],
        limit: int,
        now: int,
        gateways: Gateways = None,
        each_gateway: bool = False,
    ) -> dict[str, object]:
        """A monitor's largest hosts by total bytes over span (begin, end), as top entries.

        The figures of show-hosts; each_gateway: an entry per gateway and host, naming it.
        """
        first, stop = span[0] // 900, -(-span[1] // 900)  # whole quarters, as hosts does
        named = [
            (gw, sums)
            for gw, (sums,) in await self.per_gateway(
                name, [first, stop], now, gateways, each_gateway
            )
        ]
        entries = [
            {"key": h, "bytes": row[0] + row[2]} | _named(gw)
            for gw, h, row in largest(named, "total", limit)
        ]
        return {
            "by": "host",
            "monitors": [name],
            "begin": first * 900,
            "end": stop * 900,
            "entries": entries,
        }

    def live(self, args: Mapping[str, Any]) -> dict[str, object]:
        """A monitor's hosts by current rate (args: hosts = the monitor, limit), largest first."""
        name = args["hosts"]
        spec = next((m for m in self.backend.config.monitors if m.name == name), None)
        if spec is None:
            raise ProtocolError(NOT_FOUND, f"no such monitor: {name}")
        if args.get("monitors") is not None:
            raise ProtocolError(BAD_ARGUMENT, "live: give 'monitors' or 'hosts', not both")
        if not spec.hosts:
            raise ProtocolError(BAD_ARGUMENT, f"live: monitor {name!r} has no `hosts`")
        rates = self.backend.host_rates(name)
        order = sorted(rates.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))
        return {
            "monitor": name,
            "count": len(order),
            "hosts": [
                {"host": h, "in": rx, "out": tx} for h, (rx, tx) in order[: args.get("limit", 20)]
            ],
        }

    async def per_gateway(
        self, name: str, edges: Sequence[int], now: int, gateways: Gateways, each_gateway: bool
    ) -> list[tuple[str | None, list[query.HostSums]]]:
        """host_figures_over() of each gateway (each_gateway) or of the gateways summed."""
        return [
            (gw, await self.reports.host_figures_over(name, edges, now, [gw] if gw else gateways))
            for gw in _each(gateways, each_gateway)
        ]

    async def by_period(
        self,
        cal: Calendar,
        name: str,
        kind: str,
        span: tuple[int | None, int | None, int | None],
        limit: int,
        sort: str,
        now: int,
        gateways: Gateways = None,
        each_gateway: bool = False,
    ) -> dict[str, object]:
        """A monitor's hosts in each period (span: last, begin, end as a report takes them).

        each_gateway: a host line per gateway and host, naming the gateway; otherwise summed.
        """
        last, begin, end = span
        periods = _periods(cal, kind, last, begin, end, now)
        check_host_cells(len(periods), limit)
        bounds = [p.begin for p in periods] + [periods[-1].end]
        # the quarters of each period, as the monitors' reports read them
        edges = [-(-b // 900) for b in bounds]
        named = await self.per_gateway(name, edges, now, gateways, each_gateway)
        per_period: list[NamedSums] = [
            [(gw, sums[i]) for gw, sums in named] for i in range(len(periods))
        ]
        rows = [
            {"label": p.label, "begin": p.begin, "end": p.end,
             "count": sum(len(s) for _, s in n), "hosts": ranked(n, sort, limit)}
            for p, n in zip(periods, per_period, strict=True)
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

    def series(self, hosts: Mapping[str, HostKey]) -> SumsSource:
        """A report's figures for one host per monitor: its [in, out] bytes per period.

        The gateways' stored rows summed; this daemon's unflushed counts when it is among them.
        """

        async def sums(
            names: Sequence[str], bounds: Sequence[int], grain: str, gateways: Gateways
        ) -> query.Sums:
            seconds = SECONDS[grain]
            ranges = list(pairwise([-(-b // seconds) for b in bounds]))
            backend, reader = self.backend, self.reports.reader
            db = backend.config.database
            own = self.reports.own(gateways)
            if own:
                await backend.refresh()  # the capture workers' counts up to this request
            stored: dict[str, list[list[int]]] = {}
            async with backend.flush_lock:
                for name in names:
                    text = host_text(hosts[name])
                    stored[name] = await asyncio.to_thread(
                        reader.host_series, db, name, text, ranges, grain, gateways
                    )
                pending = {
                    n: backend.unflushed_hosts(n).get(hosts[n], {}) if own else {} for n in names
                }
            result = {n: [[row[0], row[2]] for row in stored[n]] for n in names}
            for name, per_minute in pending.items():
                for minute, (rx, _, tx, _) in per_minute.items():
                    query.add_to_bucket(result[name], bounds, minute * 60, rx, tx)
            return result

        return sums
