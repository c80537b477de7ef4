"""Local period boundaries as UTC instants: plain days, DST days, odd offsets."""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trafmetuxd.periods import MAX_TIME, MIN_TIME, Calendar, parse_local, resolve_zone

ZONES = ("UTC", "Europe/Paris", "Asia/Kolkata", "Australia/Lord_Howe", "America/New_York")


def midnight(zone: str, y: int, m: int, d: int) -> int:
    return int(datetime(y, m, d, tzinfo=ZoneInfo(zone)).timestamp())


def hours_of(zone: str, y: int, m: int, d: int) -> list[str]:
    cal = Calendar(ZoneInfo(zone))
    begin = midnight(zone, y, m, d)
    return [p.label for p in cal.span("hour", begin, cal.next("day", begin))]


def test_a_utc_day_has_24_whole_hours() -> None:
    labels = hours_of("UTC", 2026, 3, 29)
    assert labels == [f"2026-03-29 {h:02d}:00-{h + 1:02d}:00" for h in range(23)] + [
        "2026-03-29 23:00-00:00"
    ]


def test_paris_spring_forward_day_has_23_hours_without_2am() -> None:
    labels = hours_of("Europe/Paris", 2026, 3, 29)
    assert len(labels) == 23
    assert labels[1:3] == ["2026-03-29 01:00-02:00", "2026-03-29 03:00-04:00"]
    cal = Calendar(ZoneInfo("Europe/Paris"))
    day = cal.period("day", midnight("Europe/Paris", 2026, 3, 29))
    assert day.end - day.begin == 23 * 3600


def test_paris_fall_back_day_lists_the_repeated_hour_twice_with_offsets() -> None:
    labels = hours_of("Europe/Paris", 2026, 10, 25)
    assert len(labels) == 25
    assert labels[1:5] == [
        "2026-10-25 01:00-02:00",
        "2026-10-25 02:00-03:00 +02:00",
        "2026-10-25 02:00-03:00 +01:00",
        "2026-10-25 03:00-04:00",
    ]
    cal = Calendar(ZoneInfo("Europe/Paris"))
    day = cal.period("day", midnight("Europe/Paris", 2026, 10, 25))
    assert day.end - day.begin == 25 * 3600


def test_kolkata_hours_start_at_half_past_utc() -> None:
    cal = Calendar(ZoneInfo("Asia/Kolkata"))
    begin = midnight("Asia/Kolkata", 2026, 7, 1)
    hours = cal.span("hour", begin, cal.next("day", begin))
    assert len(hours) == 24
    assert all(p.begin % 3600 == 1800 and p.end - p.begin == 3600 for p in hours)
    assert datetime.fromtimestamp(begin, ZoneInfo("UTC")).strftime("%d %H:%M") == "30 18:30"


def test_lord_howe_half_hour_dst_end_repeats_half_an_hour() -> None:
    labels = hours_of("Australia/Lord_Howe", 2026, 4, 5)
    assert labels[1:4] == [
        "2026-04-05 01:00-02:00 +11:00",
        "2026-04-05 01:30-02:00 +10:30",
        "2026-04-05 02:00-03:00",
    ]
    zone = "Australia/Lord_Howe"
    length = midnight(zone, 2026, 4, 6) - midnight(zone, 2026, 4, 5)
    assert length == 24 * 3600 + 1800
    cal = Calendar(ZoneInfo(zone))
    assert cal.period("day", midnight(zone, 2026, 4, 5)).end == midnight(zone, 2026, 4, 6)


def test_lord_howe_half_hour_dst_start_skips_half_an_hour() -> None:
    labels = hours_of("Australia/Lord_Howe", 2026, 10, 4)
    assert labels[1:3] == ["2026-10-04 01:00-02:00", "2026-10-04 02:30-03:00"]
    assert len(labels) == 24


@pytest.mark.parametrize(("week_start", "first_day"), [(6, "2026-10-25"), (0, "2026-10-19")])
def test_weeks_start_on_the_chosen_day_and_span_dst(week_start: int, first_day: str) -> None:
    cal = Calendar(ZoneInfo("Europe/Paris"), week_start=week_start)
    t = midnight("Europe/Paris", 2026, 10, 25) + 12 * 3600
    week = cal.period("week", cal.floor("week", t))
    assert week.label.startswith(first_day)
    y, m, d = map(int, first_day.split("-"))
    assert week.begin == midnight("Europe/Paris", y, m, d)
    assert week.end - week.begin == 7 * 86400 + 3600  # both weeks hold the 25-hour day


def test_month_and_year_boundaries_are_local_midnights() -> None:
    cal = Calendar(ZoneInfo("Europe/Paris"))
    october = cal.period("month", cal.floor("month", midnight("Europe/Paris", 2026, 10, 20)))
    assert october.label == "2026-10"
    assert (october.begin, october.end) == (
        midnight("Europe/Paris", 2026, 10, 1),
        midnight("Europe/Paris", 2026, 11, 1),
    )
    year = cal.period("year", cal.floor("year", october.begin))
    assert (year.label, year.end) == ("2026", midnight("Europe/Paris", 2027, 1, 1))


def test_billing_month_from_the_15th_crosses_the_year_end() -> None:
    cal = Calendar(ZoneInfo("UTC"), start_day=15)
    t = midnight("UTC", 2027, 1, 3)
    p = cal.period("billing", cal.floor("billing", t))
    assert (p.begin, p.end) == (midnight("UTC", 2026, 12, 15), midnight("UTC", 2027, 1, 15))
    assert p.label == "2026-12-15 - 2027-01-14"


def test_last_n_periods_are_contiguous_and_end_with_the_current_one() -> None:
    cal = Calendar(ZoneInfo("Europe/Paris"))
    now = midnight("Europe/Paris", 2026, 10, 26) + 5000
    days = cal.last("day", 7, now)
    assert [p.label for p in days] == [f"2026-10-{d}" for d in range(20, 27)]
    assert all(a.end == b.begin for a, b in itertools.pairwise(days))
    assert days[-1].begin <= now < days[-1].end


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    kind=st.sampled_from(("hour", "day", "week", "month", "year", "billing")),
    t=st.integers(min_value=1_700_000_000, max_value=1_900_000_000),
)
def test_every_instant_lies_in_exactly_one_period(zone: str, kind: str, t: int) -> None:
    cal = Calendar(ZoneInfo(zone), week_start=0, start_day=11)
    begin = cal.floor(kind, t)
    end = cal.next(kind, begin)
    assert begin <= t < end
    assert cal.key(kind, begin) == cal.key(kind, t) == cal.key(kind, end - 1)
    assert cal.key(kind, begin - 1) != cal.key(kind, begin)
    assert cal.next(kind, cal.floor(kind, begin - 1)) == begin


def test_local_zone_comes_from_tz_then_localtime_then_utc(tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Asia/Kolkata")
    assert resolve_zone("local", {"TZ": ":Europe/Paris"}, link).key == "Europe/Paris"
    assert resolve_zone("local", {}, link).key == "Asia/Kolkata"
    assert resolve_zone("local", {}, tmp_path / "missing").key == "UTC"
    assert resolve_zone("Australia/Lord_Howe").key == "Australia/Lord_Howe"


def test_parse_local_reads_wall_time_and_takes_the_first_of_a_repeated_hour() -> None:
    paris = ZoneInfo("Europe/Paris")
    assert parse_local("2026-10-25 02:30", paris) == midnight("UTC", 2026, 10, 25) + 1800
    assert parse_local("2026-07-01", paris) == midnight("Europe/Paris", 2026, 7, 1)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_local("yesterday", paris)


def test_parse_local_accepts_a_month_as_its_first_day() -> None:
    zone = ZoneInfo("Europe/Paris")
    assert parse_local("2026-10", zone) == parse_local("2026-10-01", zone)


@pytest.mark.parametrize("text", ["0001-01-01", "1969-12-01", "9999-12-31", "9998-06-01"])
def test_out_of_range_dates_are_value_errors_not_overflows(text: str) -> None:
    with pytest.raises(ValueError, match=r"out of range: expected 1970-01-01 \.\. 9997-12-31"):
        parse_local(text, ZoneInfo("Pacific/Kiritimati"))


@pytest.mark.parametrize("text", ["2026-10-00", "2017-13-01", "2026-02-30", "2026-10-25 25:00"])
def test_impossible_dates_are_value_errors_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match=f"bad time {text!r}"):
        parse_local(text, ZoneInfo("UTC"))


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Etc/GMT+12", "Europe/Paris"])
def test_periods_at_both_ends_of_the_accepted_range_stay_in_the_calendar(zone: str) -> None:
    cal = Calendar(ZoneInfo(zone))
    for kind in ("hour", "day", "week", "month", "year"):
        assert cal.last(kind, 3, MAX_TIME)[-1].end > MAX_TIME
        assert cal.span(kind, MIN_TIME, MIN_TIME + 1)[0].begin <= MIN_TIME


def test_last_leaves_out_periods_before_1970() -> None:
    years = Calendar(ZoneInfo("Europe/Paris")).last(
        "year", 100, midnight("Europe/Paris", 1972, 6, 1)
    )
    assert [p.label for p in years] == ["1970", "1971", "1972"]


def test_span_with_a_limit_stops_before_building_more_rows() -> None:
    cal = Calendar(ZoneInfo("UTC"))
    assert len(cal.span("minute", 0, 600, limit=10)) == 10
    with pytest.raises(ValueError, match="more than 10 periods"):
        cal.span("minute", 0, 660, limit=10)
