"""Local time arguments (-b, -e, --since, --until): checked, then made the daemon's bounds. Pure.

Stdlib `re` only: datetime would cost every start of the client. The daemon reads the text in
its own zone; the client only checks the calendar and moves a date-only end to the next day.
"""

from __future__ import annotations

import re

FORMATS = "YYYY-MM, YYYY-MM-DD, 'YYYY-MM-DD HH:MM' or 'YYYY-MM-DD HH:MM:SS'"
YEARS = (1970, 9997)  # what the daemon accepts (trafmetuxd.periods.TIME_RANGE)
_RE = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?)?$")


def days_in(year: int, month: int) -> int:
    """Days of a Gregorian month."""
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse(text: str) -> tuple[int, int, int | None, bool]:
    """(year, month, day or None, has a time of day); ValueError says what is wrong."""
    m = _RE.match(text.strip())
    if m is None:
        raise ValueError(f"bad time {text!r}: expected {FORMATS}")
    y, mo, d, h, mi, s = (int(g) if g else None for g in m.groups())
    assert y is not None and mo is not None
    problems = [
        (not YEARS[0] <= y <= YEARS[1], f"year must be in {YEARS[0]}..{YEARS[1]}"),
        (not 1 <= mo <= 12, "month must be in 1..12"),
        (d is not None and not 1 <= d <= days_in(y, min(max(mo, 1), 12)), "no such day"),
        (h is not None and h > 23, "hour must be in 0..23"),
        ((mi or 0) > 59 or (s or 0) > 59, "minutes and seconds must be in 0..59"),
    ]
    for wrong, message in problems:
        if wrong:
            raise ValueError(f"bad time {text!r}: {message}")
    return y, mo, d, h is not None


def begin(text: str) -> str:
    """A range's start: the text, a month as its first day."""
    y, mo, d, _ = parse(text)
    return f"{y:04d}-{mo:02d}-01" if d is None else text.strip()


def end(text: str) -> str:
    """A range's end: a date includes its whole day and a month its whole month (as vnStat's
    --end); a time of day stays the instant it names (exclusive)."""
    y, mo, d, timed = parse(text)
    if timed:
        return text.strip()
    if d is not None and d < days_in(y, mo):
        return f"{y:04d}-{mo:02d}-{d + 1:02d}"
    y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
    return f"{y:04d}-{mo:02d}-01"
