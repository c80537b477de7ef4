"""Report sums from a real store, checked against sums computed independently per local period."""

from __future__ import annotations

import random
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from contextlib import closing
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trafmetuxd import query
from trafmetuxd.collector import Snapshot
from trafmetuxd.periods import Calendar
from trafmetuxd.schema import MIGRATIONS
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
    assert query.stored_span(missing, ["input"]) is None
    assert query.flows(missing, "input", 0, 10) == {}
    assert not missing.exists()  # reading never creates the store


def test_stored_span_runs_from_the_first_to_the_last_stored_quarter(
    traffic: tuple[Path, dict[int, list[int]]],
) -> None:
    db, totals = traffic
    span = (min(totals) // 15 * 900, max(totals) // 15 * 900)
    assert query.stored_span(db, ["input", "ghost"]) == span
    assert query.stored_span(db, ["ghost"]) is None


def month_bounds(zone: str = "Europe/Paris") -> list[int]:
    """Every local month of the fixture's range, as bucket bounds."""
    periods = Calendar(ZoneInfo(zone), 0).span("month", START - 86400 * 40, STOP + 86400 * 40)
    return [p.begin for p in periods] + [periods[-1].end]


def copy_store(src: Path, dst: Path) -> Path:
    """A private copy of the fixture's store that a test may write to."""
    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)
    return dst


def test_a_reader_answers_like_a_fresh_read_and_answers_again_from_its_cache(
    traffic: tuple[Path, dict[int, list[int]]],
) -> None:
    db, _ = traffic
    bounds = month_bounds()
    fresh = query.bucket_sums(db, ["input", "ghost"], bounds, "quarter")
    with closing(query.Reader()) as reader:
        assert reader.bucket_sums(db, ["input", "ghost"], bounds, "quarter") == fresh
        assert reader.cached == len(bounds) - 1  # one sum per month of the known monitor
        again = reader.bucket_sums(db, ["input", "ghost"], bounds, "quarter")
        assert again == fresh
        again["input"][0][0] += 1  # callers may add unflushed minutes to what they get
        assert reader.bucket_sums(db, ["input"], bounds, "quarter")["input"] == fresh["input"]


def test_a_flush_into_an_old_closed_month_reaches_the_next_report(
    traffic: tuple[Path, dict[int, list[int]]], tmp_path: Path
) -> None:
    # replayed traffic can land in any past period: the cache must never hide it
    db = copy_store(traffic[0], tmp_path / "trafmetux.sqlite3")
    bounds = month_bounds()
    with closing(query.Reader()) as reader:
        before = reader.bucket_sums(db, ["input"], bounds, "quarter")["input"]
        old = int(datetime(2026, 4, 10, 12, tzinfo=ZoneInfo("Europe/Paris")).timestamp()) // 60
        store = Store(db)
        try:
            store.write(STOP + 60, [("input", Snapshot({old: [5000, 1, 70, 1]}, {}, 0))])
            after = reader.bucket_sums(db, ["input"], bounds, "quarter")["input"]
        finally:
            store.close()
    april = next(i for i in range(len(bounds) - 1) if bounds[i] <= old * 60 < bounds[i + 1])
    expected = [list(v) for v in before]
    expected[april] = [before[april][0] + 5000, before[april][1] + 70]
    assert after == expected


def test_a_new_monitor_written_after_the_first_read_is_found(tmp_path: Path) -> None:
    db = tmp_path / "trafmetux.sqlite3"
    with closing(query.Reader()) as reader:
        assert reader.bucket_sums(db, ["late"], [0, 900], "quarter") == {"late": [[0, 0]]}
        assert not db.exists()  # reading never creates the store
        store = Store(db)
        try:
            assert reader.bucket_sums(db, ["late"], [0, 900], "quarter") == {"late": [[0, 0]]}
            store.write(60, [("late", Snapshot({0: [4, 1, 2, 1]}, {}, 0))])
            assert reader.bucket_sums(db, ["late"], [0, 900], "quarter") == {"late": [[4, 2]]}
        finally:
            store.close()


def test_a_replaced_or_removed_database_is_read_afresh(tmp_path: Path) -> None:
    db, other = tmp_path / "trafmetux.sqlite3", tmp_path / "other.sqlite3"
    for path, rx in ((db, 10), (other, 99)):
        store = Store(path)
        store.write(60, [("input", Snapshot({0: [rx, 1, 1, 1]}, {}, 0))])
        store.close()
    with closing(query.Reader()) as reader:
        assert reader.bucket_sums(db, ["input"], [0, 900], "quarter")["input"] == [[10, 1]]
        other.replace(db)
        assert reader.bucket_sums(db, ["input"], [0, 900], "quarter")["input"] == [[99, 1]]
        db.unlink()
        assert reader.bucket_sums(db, ["input"], [0, 900], "quarter")["input"] == [[0, 0]]
        assert reader.cached == 0


def test_the_cache_is_bounded_and_sums_stay_exact_past_the_bound(
    traffic: tuple[Path, dict[int, list[int]]],
) -> None:
    db, _ = traffic
    bounds = month_bounds("UTC")
    with closing(query.Reader(limit=3)) as reader:
        for _ in range(2):
            got = reader.bucket_sums(db, ["input"], bounds, "quarter")
            assert got == query.bucket_sums(db, ["input"], bounds, "quarter")
            assert reader.cached == 3


def test_every_bucket_is_read_from_the_rollups_where_they_fit(
    traffic: tuple[Path, dict[int, list[int]]], tmp_path: Path
) -> None:
    # the reader must use the rollups: with the quarters gone, whole days still answer
    db = copy_store(traffic[0], tmp_path / "trafmetux.sqlite3")
    bounds = month_bounds("UTC")
    want = query.bucket_sums(db, ["input"], bounds, "quarter")
    with closing(sqlite3.connect(db)) as con, con:
        con.execute("DELETE FROM quarter_totals")
    assert query.bucket_sums(db, ["input"], bounds, "quarter") == want


def quarters_of(pieces: list[query.Segment]) -> list[int]:
    """The quarters a list of (table, first, end) pieces stands for, in order."""
    per = {"quarter_totals": 1, "hour_totals": 4, "day_totals": 96}
    return [q for table, lo, hi in pieces for q in range(lo * per[table], hi * per[table])]


@given(st.integers(-(10**6), 10**6), st.integers(0, 3000))
def test_a_split_stands_for_exactly_its_quarters_in_order(lo: int, length: int) -> None:
    pieces = query.split_quarters(lo, lo + length)
    assert quarters_of(pieces) == list(range(lo, lo + length))
    assert len(pieces) <= 5  # at most quarters, hours, days, hours, quarters
    assert sum(1 for p in pieces if p[0] == "day_totals") <= 1


DENSE_START = int(datetime(2026, 3, 20, tzinfo=ZoneInfo("UTC")).timestamp()) // 60
ZONES = ["UTC", "Europe/Paris", "Asia/Kolkata", "Australia/Lord_Howe", "Asia/Kathmandu",
         "Pacific/Chatham", "America/St_Johns", "America/Los_Angeles"]  # fmt: skip


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, list[int]]]:
    """Three weeks with a row every 7 minutes (across the March DST changes), in a real store."""
    rnd = random.Random(9)
    totals = {
        m: [rnd.randrange(1, 10**6), 1, rnd.randrange(0, 10**5), 1]
        for m in range(DENSE_START, DENSE_START + 21 * 1440, 7)
    }
    db = tmp_path_factory.mktemp("dense") / "trafmetux.sqlite3"
    store = Store(db)
    store.write(STOP, [("input", Snapshot(totals, {}, 0))])
    store.close()
    return db, totals


def plain_quarter_sums(totals: dict[int, list[int]], bounds: list[int]) -> list[list[int]]:
    """Each bucket's sum over its quarters, from the minutes alone (no store, no rollups)."""
    sums = [[0, 0] for _ in bounds[1:]]
    for minute, (rx, _, tx, _) in totals.items():
        start = minute // 15 * 900  # the quarter's start decides its bucket
        for i in range(len(sums)):
            if bounds[i] <= start < bounds[i + 1]:
                sums[i][0] += rx
                sums[i][1] += tx
    return sums


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    kind=st.sampled_from(["hour", "day", "week", "month"]),
    begin=st.integers(-3 * 86400, 24 * 86400),
    count=st.integers(1, 40),
)
def test_local_periods_from_days_hours_and_quarters_equal_plain_quarter_sums(
    dense: tuple[Path, dict[int, list[int]]], zone: str, kind: str, begin: int, count: int
) -> None:
    db, totals = dense
    cal = Calendar(ZoneInfo(zone), 0)
    first = DENSE_START * 60 + begin
    periods = cal.span(kind, first, first + 1)
    while len(periods) < count:
        periods.append(cal.period(kind, periods[-1].end))
    bounds = [p.begin for p in periods] + [periods[-1].end]
    got = query.bucket_sums(db, ["input"], bounds, "quarter")["input"]
    assert got == plain_quarter_sums(totals, bounds)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-86400, 23 * 86400), min_size=2, max_size=12, unique=True))
def test_arbitrary_second_bounds_sum_like_plain_quarters(
    dense: tuple[Path, dict[int, list[int]]], offsets: list[int]
) -> None:
    db, totals = dense
    bounds = sorted(DENSE_START * 60 + o for o in offsets)
    got = query.bucket_sums(db, ["input"], bounds, "quarter")["input"]
    assert got == plain_quarter_sums(totals, bounds)


def test_host_sums_of_a_database_from_before_the_host_tables_read_as_none(
    tmp_path: Path,
) -> None:
    db = tmp_path / "v3.sqlite3"
    with closing(sqlite3.connect(db)) as conn:
        for migrate in MIGRATIONS[:3]:  # version 3: the replay record, before the host tables
            migrate(conn)
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    assert query.host_sums(db, "lan", 0, 96) == {}
    Store(db).close()  # migrated to the current version: the host tables exist, still empty
    assert query.host_sums(db, "lan", 0, 96) == {}
