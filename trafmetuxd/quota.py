"""Quota evaluation: usage against a limit over a day, week or billing month. Pure.

A per-host quota (`per_host = true`) gives each host of its monitors the limit of its own. The
host `other` (the hosts beyond a monitor's `max_hosts`, summed) gets none: it is many hosts
whose share is unknown, so it is reported beside the hosts but never over a limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from trafmetuxd.periods import Calendar, Period
from trafmetuxd.spec import QuotaSpec

OK, WARNING, CRITICAL = "OK", "WARNING", "CRITICAL"
STRICT_WARNING = (
    "a quota has strict = true: the queue rules are installed without --queue-bypass, so "
    "while trafmetuxd is stopped, restarting or crashed, ALL traffic of the metered "
    "interfaces is dropped (not only the quota's)"
)
_LEVEL = {OK: 0, WARNING: 1, CRITICAL: 2}
_KIND = {"day": "day", "week": "week", "month": "billing"}
OTHER_HOST = "other"  # the host text of the hosts beyond max_hosts: no limit of its own
HOSTS_LISTED = 10  # hosts listed per per-host quota, largest first


@dataclass(frozen=True, slots=True)
class Usage:
    """A quota's bytes (in + out, summed over its monitors) so far in its current period."""

    total: int
    hosts: Mapping[str, int] = field(default_factory=dict)  # per-host quotas: host text -> bytes


@dataclass(frozen=True, slots=True)
class OverLimit:
    """What of one quota is over its limit now: the whole quota, or hosts of a per-host quota."""

    quota: str
    whole: bool  # a quota without per_host used more than its limit
    hosts: frozenset[str]  # a per-host quota: the hosts (text, never "other") over the limit


@dataclass(frozen=True, slots=True)
class HostUse:
    """One host of a per-host quota: its bytes and state."""

    host: str
    used: int
    percent: float
    state: str


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """A quota's figures at one instant."""

    name: str
    monitors: tuple[str, ...]
    used: int
    limit: int
    warn_bytes: int
    percent: float
    begin: int  # UTC seconds, period start
    end: int  # UTC seconds, period end (exclusive)
    period_label: str
    estimate: int  # linear extrapolation of `used` to the period end
    state: str
    # per-host quotas: `used`, `percent`, `estimate` and `state` are the worst host's (`host`)
    per_host: bool = False
    host: str | None = None
    host_count: int = 0  # hosts with traffic in the period, "other" aside
    hosts_warning: int = 0
    hosts_critical: int = 0
    other: int = 0  # bytes of the host "other" (no limit of its own)
    hosts: tuple[HostUse, ...] = ()  # the HOSTS_LISTED largest, largest first
    action: str = "report"
    extended: int = 0  # bytes added to the limit for this period (quota-extend)
    reset_used: int = 0  # bytes of `used` not counted against the limit (quota-reset)
    blocked_since: int | None = None  # UTC seconds the action took effect, None if it has not
    enforced: dict[str, int] | None = None  # dropped/marked packets and bytes, since start
    history: tuple[str, ...] = ()  # the operator's adjustments in this period

    def as_dict(self) -> dict[str, object]:
        """JSON-able form (monitors as a list; the host fields only for per-host quotas)."""
        d = asdict(self)
        d["monitors"] = list(self.monitors)
        d["history"] = list(self.history)
        if not self.per_host:
            for key in ("host", "host_count", "hosts_warning", "hosts_critical", "other", "hosts"):
                del d[key]
        else:
            d["hosts"] = [asdict(h) for h in self.hosts]
        return d


def quota_period(spec: QuotaSpec, calendar: Calendar, now: int) -> Period:
    """The quota's current period: a local day, week or billing month from start_day."""
    cal = Calendar(calendar.zone, calendar.week_start, spec.start_day)
    kind = _KIND[spec.period]
    return cal.period(kind, cal.floor(kind, now))


def warn_threshold(spec: QuotaSpec) -> int:
    """Smallest byte count that is a warning (usage >= warn * limit)."""
    return math.ceil(spec.limit * spec.warn)


def state_of(used: int, spec: QuotaSpec, extended: int = 0) -> str:
    """CRITICAL over the limit, WARNING at or above warn, else OK."""
    if used > spec.limit + extended:
        return CRITICAL
    return WARNING if used >= warn_threshold(spec) + extended else OK


@dataclass(frozen=True, slots=True)
class Adjustment:
    """What the operator changed of a quota for one period: more bytes, a fresh start."""

    period: int  # the period's begin (UTC seconds); another period's adjustment is void
    extended: int = 0
    reset_used: int = 0
    history: tuple[str, ...] = ()
    reset_hosts: Mapping[str, int] = field(default_factory=dict)  # per-host: each host's use


def counted(used: int, adj: Adjustment | None) -> int:
    """The bytes counted against the limit: used, less what a reset set aside."""
    return used - adj.reset_used if adj is not None else used


def host_counted(host: str, used: int, adj: Adjustment | None) -> int:
    """A host's bytes counted against a per-host quota's limit."""
    return used - adj.reset_hosts.get(host, 0) if adj is not None else used


def enforced_over(spec: QuotaSpec, usage: Usage, adj: Adjustment | None) -> OverLimit:
    """What an enforcing quota acts on now: the whole quota or the hosts whose counted bytes
    reached the limit (with this period's extension); "other" never, it is many hosts."""
    limit = spec.limit + (adj.extended if adj is not None else 0)
    if not spec.per_host:
        return OverLimit(spec.name, counted(usage.total, adj) >= limit, frozenset())
    over = frozenset(
        h for h, u in usage.hosts.items() if h != OTHER_HOST and host_counted(h, u, adj) >= limit
    )
    return OverLimit(spec.name, False, over)


def bytes_left(spec: QuotaSpec, usage: Usage, adj: Adjustment | None) -> int:
    """Bytes a whole quota (not per-host) may still pass before its limit."""
    return spec.limit + (adj.extended if adj is not None else 0) - counted(usage.total, adj)


def estimate(used: int, now: int, period: Period) -> int:
    """Usage at period end if the rate so far continues."""
    elapsed = now - period.begin
    if elapsed <= 0:
        return used
    return round(used * (period.end - period.begin) / elapsed)


def percent_of(used: int, spec: QuotaSpec, extended: int = 0) -> float:
    """Usage as a percentage of the limit (with this period's extension), two decimals."""
    limit = spec.limit + extended
    return round(100.0 * used / limit if limit > 0 else 0.0, 2)


def ranked_hosts(hosts: Mapping[str, int]) -> list[tuple[str, int]]:
    """The hosts that have a limit ("other" aside), largest first, then by name."""
    return sorted(
        ((h, used) for h, used in hosts.items() if h != OTHER_HOST), key=lambda kv: (-kv[1], kv[0])
    )


def over_limit(spec: QuotaSpec, usage: Usage) -> OverLimit:
    """What of the quota is over its limit: cheap (one pass over the hosts), for every second."""
    if not spec.per_host:
        return OverLimit(spec.name, usage.total > spec.limit, frozenset())
    limit = spec.limit
    over = frozenset(h for h, used in usage.hosts.items() if used > limit and h != OTHER_HOST)
    return OverLimit(spec.name, False, over)


def evaluate(
    spec: QuotaSpec, usage: Usage | int, now: int, period: Period, adj: Adjustment | None = None
) -> QuotaStatus:
    """All figures for one quota given its usage in `period` up to `now`."""
    usage = usage if isinstance(usage, Usage) else Usage(usage)
    if adj is not None and adj.period != period.begin:
        adj = None  # an adjustment of an earlier period
    if spec.per_host:
        return _evaluate_hosts(spec, usage.hosts, now, period, adj)
    return _status(spec, usage.total, counted(usage.total, adj), now, period, adj)


def _status(
    spec: QuotaSpec,
    used: int,
    left: int,
    now: int,
    period: Period,
    adj: Adjustment | None,
    **more: Any,
) -> QuotaStatus:
    """A quota's status: `used` as shown and estimated, `left` (used since a reset) judged."""
    extended = adj.extended if adj is not None else 0
    return QuotaStatus(
        name=spec.name,
        monitors=spec.monitors,
        used=used,
        limit=spec.limit,
        warn_bytes=warn_threshold(spec),
        percent=percent_of(left, spec, extended),
        begin=period.begin,
        end=period.end,
        period_label=period.label,
        estimate=estimate(used, now, period),
        state=state_of(left, spec, extended),
        action=spec.action,
        extended=extended,
        reset_used=adj.reset_used if adj is not None else 0,
        history=adj.history if adj is not None else (),
        **more,
    )


def _evaluate_hosts(
    spec: QuotaSpec, hosts: Mapping[str, int], now: int, period: Period, adj: Adjustment | None
) -> QuotaStatus:
    """A per-host quota: the worst host's figures, the counts by state, the largest hosts.

    A reset sets each host's use at that moment aside; an extension raises every host's limit.
    """
    extended = adj.extended if adj is not None else 0
    hosts = {h: host_counted(h, u, adj) for h, u in hosts.items()}
    ranked = ranked_hosts(hosts)
    host, used = ranked[0] if ranked else (None, 0)
    states = [state_of(u, spec, extended) for _, u in ranked]
    listed = tuple(
        HostUse(h, u, percent_of(u, spec, extended), state_of(u, spec, extended))
        for h, u in ranked[:HOSTS_LISTED]
    )
    return _status(
        spec,
        used,
        used,
        now,
        period,
        adj,
        per_host=True,
        host=host,
        host_count=len(ranked),
        hosts_warning=states.count(WARNING),
        hosts_critical=states.count(CRITICAL),
        other=hosts.get(OTHER_HOST, 0),
        hosts=listed,
    )


class QuotaWatcher:
    """Remembers, per quota and period, which thresholds were already reported."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (period begin, level logged)

    def update(self, statuses: Iterable[QuotaStatus]) -> list[str]:
        """Log lines for thresholds crossed since the last call (each once per period)."""
        lines: list[str] = []
        for st in statuses:
            begin, logged = self._seen.get(st.name, (st.begin, 0))
            if begin != st.begin:
                logged = 0  # a new period starts clean
            level = _LEVEL[st.state]
            if level >= 1 > logged:
                lines.append(_line(st, f"reached its warning level ({st.warn_bytes} B)"))
            if level >= 2 > logged:
                lines.append(_line(st, f"exceeded its limit ({st.limit} B)"))
            self._seen[st.name] = (st.begin, max(level, logged))
        return lines


def _line(st: QuotaStatus, what: str) -> str:
    who = f"host {st.host} " if st.host is not None else ""
    return (
        f"quota {st.name} {what}: {who}used {st.used} B ({st.percent:.1f}%) "
        f"in period {st.period_label}"
    )
