"""Quota evaluation: usage against a limit over a day, week or billing month. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

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
    action: str = "report"
    extended: int = 0  # bytes added to the limit for this period (quota-extend)
    reset_used: int = 0  # bytes of `used` not counted against the limit (quota-reset)
    blocked_since: int | None = None  # UTC seconds the action took effect, None if it has not
    enforced: dict[str, int] | None = None  # dropped/marked packets and bytes, since start
    history: tuple[str, ...] = ()  # the operator's adjustments in this period

    def as_dict(self) -> dict[str, object]:
        """JSON-able form (monitors as a list)."""
        d = asdict(self)
        d["monitors"] = list(self.monitors)
        d["history"] = list(self.history)
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


def counted(used: int, adj: Adjustment | None) -> int:
    """The bytes counted against the limit: used, less what a reset set aside."""
    return used - adj.reset_used if adj is not None else used


def over_limit(spec: QuotaSpec, used: int, adj: Adjustment | None) -> bool:
    """Whether an enforcing quota acts now: its counted bytes reached limit + extension."""
    extended = adj.extended if adj is not None else 0
    return spec.enforces and counted(used, adj) >= spec.limit + extended


def estimate(used: int, now: int, period: Period) -> int:
    """Usage at period end if the rate so far continues."""
    elapsed = now - period.begin
    if elapsed <= 0:
        return used
    return round(used * (period.end - period.begin) / elapsed)


def evaluate(
    spec: QuotaSpec, used: int, now: int, period: Period, adj: Adjustment | None = None
) -> QuotaStatus:
    """All figures for one quota given its usage in `period` up to `now`."""
    if adj is not None and adj.period != period.begin:
        adj = None  # an adjustment of an earlier period
    extended = adj.extended if adj is not None else 0
    left = counted(used, adj)
    percent = 100.0 * left / (spec.limit + extended) if spec.limit > 0 else 0.0
    return QuotaStatus(
        name=spec.name,
        monitors=spec.monitors,
        used=used,
        limit=spec.limit,
        warn_bytes=warn_threshold(spec),
        percent=round(percent, 2),
        begin=period.begin,
        end=period.end,
        period_label=period.label,
        estimate=estimate(used, now, period),
        state=state_of(left, spec, extended),
        action=spec.action,
        extended=extended,
        reset_used=adj.reset_used if adj is not None else 0,
        history=adj.history if adj is not None else (),
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
    return (
        f"quota {st.name} {what}: used {st.used} B ({st.percent:.1f}%) in period {st.period_label}"
    )
