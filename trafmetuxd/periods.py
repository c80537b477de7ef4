"""Local-time period boundaries (hour .. year, billing month) as UTC instants, DST-safe. Pure.

Every boundary is found by walking UTC instants in 15-minute steps and watching a *key* of the
local time change (every real UTC offset and every transition is a multiple of 15 minutes).
So a DST day has 23 or 25 hours, each listed once, and a repeated local hour is a different
period because its key carries the UTC offset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

STEP = 900  # seconds; the grain every boundary falls on
# Instants a request may name: local 1970-01-01 .. 9997-12-31 in every zone (UTC-12 .. UTC+14),
# so that every period around them, the next one and its label stay in datetime's years, and
# every zone's offsets are whole quarter hours (local mean times before 1970 are not).
MIN_TIME = -2 * 86400
MAX_TIME = 253339315200  # 9998-01-02 00:00 UTC
TIME_RANGE = "1970-01-01 .. 9997-12-31"
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?)?$")
TIME_FORMATS = "YYYY-MM, YYYY-MM-DD, 'YYYY-MM-DD HH:MM' or 'YYYY-MM-DD HH:MM:SS'"


def resolve_zone(
    name: str,
    environ: Mapping[str, str] = os.environ,
    localtime: Path = Path("/etc/localtime"),
) -> ZoneInfo:
    """An IANA zone; "local" means TZ, else the /etc/localtime link target, else UTC."""
    if name != "local":
        return ZoneInfo(name)
    candidates = [environ.get("TZ", "").lstrip(":")]
    try:
        target = os.readlink(localtime)
        candidates.append(target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "")
    except OSError:
        pass
    for candidate in candidates:
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open UTC interval [begin, end) and its local label."""

    begin: int
    end: int
    label: str


def _local(t: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(t, zone)


def _offset_text(dt: datetime) -> str:
    off = dt.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _ambiguous(dt: datetime) -> bool:
    """True when this local wall time occurs twice (a DST fall-back)."""
    naive = dt.replace(tzinfo=None)
    zone = dt.tzinfo
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return False
    # a skipped (spring-forward) time also has two offsets but does not round-trip
    return all(
        d.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive for d in (first, second)
    )


def parse_local(text: str, zone: ZoneInfo) -> int:
    """'YYYY-MM[-DD[ HH:MM[:SS]]]' in local time -> unix seconds (the earlier of a repeated time).

    ValueError names the text and what is wrong, including a time outside MIN_TIME..MAX_TIME.
    """
    m = _DATE_RE.match(text.strip())
    if not m:
        raise ValueError(f"bad time {text!r}: expected {TIME_FORMATS}")
    y, mo, d, h, mi, sec = (int(p) if p else 0 for p in m.groups())
    d = d if m.group(3) else 1  # YYYY-MM: the first of the month
    try:
        naive = datetime(y, mo, d, h, mi, sec)
        t = int(naive.replace(tzinfo=zone, fold=0).timestamp())
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"bad time {text!r}: {exc}") from None
    check_instant(t, text)
    return t


def check_instant(t: float, shown: object) -> None:
    """ValueError unless MIN_TIME <= t <= MAX_TIME (shown: how the request wrote it)."""
    if not MIN_TIME <= t <= MAX_TIME:
        raise ValueError(f"time {shown!r} is out of range: expected {TIME_RANGE}")


class Calendar:
    """Period arithmetic in one zone, with a week start (0=Mon..6=Sun) and billing start day."""

    def __init__(self, zone: ZoneInfo, week_start: int = 6, start_day: int = 1) -> None:
        self.zone = zone
        self.week_start = week_start
        self.start_day = start_day

    def key(self, kind: str, t: int) -> tuple[object, ...]:
        """What identifies the period of `kind` containing UTC instant t."""
        dt = _local(t, self.zone)
        d = dt.date()
        if kind == "hour":
            return (d, dt.hour, dt.utcoffset())
        if kind == "day":
            return (d,)
        if kind == "week":
            return (d - timedelta(days=(d.weekday() - self.week_start) % 7),)
        if kind == "month":
            return (d.year, d.month)
        if kind == "billing":
            y, m = (d.year, d.month) if d.day >= self.start_day else _prev_month(d.year, d.month)
            return (y, m)
        if kind == "year":
            return (d.year,)
        raise ValueError(f"unknown period kind {kind!r}")

    def floor(self, kind: str, t: int) -> int:
        """Start (UTC seconds) of the period containing t."""
        if kind == "minute":
            return t - t % 60
        want = self.key(kind, t)
        g = self._guess_start(kind, t)
        while self.key(kind, g) != want and g < t:  # guess too early
            g += STEP
        while self.key(kind, g - STEP) == want:  # guess too late
            g -= STEP
        return g

    def next(self, kind: str, begin: int) -> int:
        """Start of the period after the one beginning at `begin`."""
        if kind == "minute":
            return begin + 60
        if kind == "hour":  # at most a few steps; safe across repeated hours
            want, t = self.key(kind, begin), begin + STEP
            while self.key(kind, t) == want:
                t += STEP
            return t
        d = _local(begin, self.zone).date()
        inside_next = datetime.combine(_advance(kind, d), datetime.min.time()).replace(hour=12)
        return self.floor(kind, int(inside_next.replace(tzinfo=self.zone).timestamp()))

    def period(self, kind: str, begin: int) -> Period:
        """The period starting at `begin` with its label."""
        end = self.next(kind, begin)
        return Period(begin, end, self.label(kind, begin, end))

    def span(self, kind: str, begin: int, end: int, limit: int | None = None) -> list[Period]:
        """The periods covering [begin, end), oldest first (empty ones included).

        With a limit, ValueError as soon as more than `limit` periods would be needed.
        """
        out: list[Period] = []
        t = self.floor(kind, begin)
        while t < end:
            if limit is not None and len(out) >= limit:
                raise ValueError(f"more than {limit} periods")
            p = self.period(kind, t)
            out.append(p)
            t = p.end
        return out

    def last(self, kind: str, n: int, now: int) -> list[Period]:
        """The last n periods, the current one included, oldest first (none before 1970)."""
        out = [self.period(kind, self.floor(kind, now))]
        while len(out) < n and out[-1].begin > max(MIN_TIME, 0):
            prev = out[-1].begin - 1  # periods before 1970 are left out: no data is older
            out.append(self.period(kind, self.floor(kind, prev)))
        return out[::-1]

    def label(self, kind: str, begin: int, end: int) -> str:
        """The classic label: '2008-10-27 19:00-20:00', '2008-10-21', '2008-10', ..."""
        first = _local(begin, self.zone)
        if kind == "minute":
            text = first.strftime("%Y-%m-%d %H:%M")
            return f"{text} {_offset_text(first)}" if _ambiguous(first) else text
        if kind == "hour":
            return self._hour_label(first, end)
        if kind in ("day",):
            return first.strftime("%Y-%m-%d")
        if kind in ("week", "billing"):
            last_day = _local(end - 1, self.zone).date()
            return f"{first:%Y-%m-%d} - {last_day:%Y-%m-%d}"
        if kind == "month":
            return first.strftime("%Y-%m")
        return first.strftime("%Y")

    def _hour_label(self, first: datetime, end: int) -> str:
        # the end is shown in the start's offset so "02:00-03:00 +02:00" reads naturally
        stop = datetime.fromtimestamp(end, timezone(first.utcoffset() or timedelta(0)))
        text = f"{first:%Y-%m-%d %H:%M}-{stop:%H:%M}"
        last_minute = datetime.fromtimestamp(end - 60, first.tzinfo)
        if _ambiguous(first) or _ambiguous(last_minute):
            text += f" {_offset_text(first)}"
        return text

    def _guess_start(self, kind: str, t: int) -> int:
        if kind == "hour":
            return t - t % STEP
        start = _start_date(kind, self.key(kind, t), self.start_day)
        naive = datetime.combine(start, datetime.min.time())
        return int(naive.replace(tzinfo=self.zone).timestamp()) // STEP * STEP


def _prev_month(y: int, m: int) -> tuple[int, int]:
    return (y - 1, 12) if m == 1 else (y, m - 1)


def _start_date(kind: str, key: tuple[object, ...], start_day: int) -> date:
    first = key[0]
    if isinstance(first, date):  # day, week
        return first
    assert isinstance(first, int)
    month = key[1] if len(key) > 1 else 1
    assert isinstance(month, int)
    return date(first, month, start_day if kind == "billing" else 1)


def _advance(kind: str, d: date) -> date:
    """A date inside the next period, given any date in this one."""
    if kind == "day":
        return d + timedelta(days=1)
    if kind == "week":
        return d + timedelta(days=7)
    if kind in ("month", "billing"):
        y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        return date(y, m, min(d.day, 28))
    return date(d.year + 1, 1, 1)
