"""Report sums from a real store, checked against sums computed independently per local period."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from trafmetuxd import query
from trafmetuxd.collector import Snapshot
from trafmetuxd.periods import Calendar
from trafmetuxd.store import Store

START = int(datetime(2026, 3, 1, tzinfo=ZoneInfo("UTC")).timestamp())
STOP = int(datetime(2026, 11, 30, tzinfo=ZoneInfo("UTC")).timestamp())


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, list[int]]]:
    """A year's worth of random minutes (dense around both 2026 DST changes), in a real store."""
    rnd = random.Random(4)
    minutes = {rnd.randrange(START, STOP) // 60 for _ in range(3000)}
    for change in (datetime(2026, 3, 29), datetime(2026, 10, 25), datetime(2026, 4, 5)):
        base = int(change.replace(tzinfo=ZoneInfo("UTC")).timestamp()) // 60 - 36 * 60
        minutes |= set(range(base, base + 72 * 60, 7))
    totals = {m: [rnd.randrange(1, 10**6), 1, rnd.randrange(0, 10**5), 1] for m in minutes}
    db = tmp_path_factory.mktemp("store") / "trafmetux.sqlite3"
    store = Store(db)
    store.write(STOP, [("input", Snapshot(totals, {}, 0))])
    store.close()
    return db, totals


def local_key(kind: str, week_start: int) -> Callable[[datetime], object]:
    """What names a local period, from first principles (no periods.py)."""

    def week(d: date) -> date:
        return d - timedelta(days=(d.weekday() - week_start) % 7)

    return {
        "hour": lambda t: (t.date(), t.hour, t.utcoffset()),
        "day": lambda t: t.date(),
        "week": lambda t: week(t.date()),
        "month": lambda t: (t.year, t.month),
        "year": lambda t: t.year,
    }[kind]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "Asia/Kolkata", "Australia/Lord_Howe"])
@pytest.mark.parametrize(
    ("kind", "week_start"),
    [("hour", 6), ("day", 6), ("week", 6), ("week", 0), ("month", 6), ("year", 6)],
)
def test_every_period_sum_matches_an_independent_sum(
    traffic: tuple[Path, dict[int, list[int]]], zone: str, kind: str, week_start: int
) -> None:
    db, totals = traffic
    tz = ZoneInfo(zone)
    key = local_key(kind, week_start)
    expected: dict[object, list[int]] = defaultdict(lambda: [0, 0])
    for minute, (rx, _, tx, _) in totals.items():
        acc = expected[key(datetime.fromtimestamp(minute * 60, tz))]
        acc[0] += rx
        acc[1] += tx
    cal = Calendar(tz, week_start)
    periods = cal.span(kind, START - 86400 * 40, STOP + 86400 * 40)
    bounds = [p.begin for p in periods] + [periods[-1].end]
    got = query.bucket_sums(db, ["input"], bounds, "quarter")["input"]
    by_key = {key(datetime.fromtimestamp(p.begin, tz)): got[i] for i, p in enumerate(periods)}
    assert len(by_key) == len(periods)  # no period listed twice
    assert {k: v for k, v in by_key.items() if v != [0, 0]} == dict(expected)


def test_minute_grain_reads_minute_rows(traffic: tuple[Path, dict[int, list[int]]]) -> None:
    db, totals = traffic
    first = min(totals)
    bounds = [first * 60 + 60 * i for i in range(11)]
    got = query.bucket_sums(db, ["input"], bounds, "minute")["input"]
    assert got == [
        [totals[m][0], totals[m][2]] if m in totals else [0, 0] for m in range(first, first + 10)
    ]


def test_unknown_monitors_and_a_missing_database_read_as_zero(tmp_path: Path) -> None:
    missing = tmp_path / "none.sqlite3"
    assert query.bucket_sums(missing, ["input"], [0, 900], "quarter") == {"input": [[0, 0]]}
    assert query.first_instant(missing, ["input"]) is None
    assert query.flows(missing, "input", 0, 10) == {}
    assert not missing.exists()  # reading never creates the store


def test_first_instant_is_the_earliest_quarter(traffic: tuple[Path, dict[int, list[int]]]) -> None:
    db, totals = traffic
    assert query.first_instant(db, ["input"]) == min(totals) * 60 // 900 * 900
    assert query.first_instant(db, ["ghost"]) is None
