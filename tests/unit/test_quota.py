"""Quota state, estimate, billing periods and the once-per-period log lines."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from trafmetuxd.periods import Calendar, Period
from trafmetuxd.quota import QuotaWatcher, evaluate, quota_period, warn_threshold
from trafmetuxd.spec import QuotaSpec

UTC = ZoneInfo("UTC")
SPEC = QuotaSpec("mobile", ("input", "output"), limit=1000, period="month", start_day=15, warn=0.8)
MONTH = Period(0, 1000, "x")


def at(y: int, m: int, d: int, h: int = 0) -> int:
    return int(datetime(y, m, d, h, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("used", "state"),
    [(0, "OK"), (799, "OK"), (800, "WARNING"), (1000, "WARNING"), (1001, "CRITICAL")],
)
def test_state_follows_warn_and_limit(used: int, state: str) -> None:
    assert evaluate(SPEC, used, 500, MONTH).state == state


def test_warn_threshold_rounds_up_to_a_whole_byte() -> None:
    spec = QuotaSpec("q", ("a",), limit=1001, warn=0.8)  # 800.8 bytes
    assert warn_threshold(spec) == 801
    assert evaluate(spec, 800, 1, MONTH).state == "OK"
    assert evaluate(spec, 801, 1, MONTH).state == "WARNING"


def test_billing_day_15_period_crosses_the_month_end() -> None:
    cal = Calendar(UTC)
    now = at(2027, 1, 3, 12)
    p = quota_period(SPEC, cal, now)
    assert (p.begin, p.end) == (at(2026, 12, 15), at(2027, 1, 15))
    assert p.label == "2026-12-15 - 2027-01-14"
    st = evaluate(SPEC, 600, now, p)
    elapsed, length = now - at(2026, 12, 15), at(2027, 1, 15) - at(2026, 12, 15)
    assert st.estimate == round(600 * length / elapsed)
    assert st.percent == 60.0


def test_day_and_week_quotas_use_local_days() -> None:
    paris = Calendar(ZoneInfo("Europe/Paris"), week_start=0)
    now = int(datetime(2026, 10, 28, 10, tzinfo=ZoneInfo("Europe/Paris")).timestamp())
    day = quota_period(QuotaSpec("d", ("a",), 1, period="day"), paris, now)
    week = quota_period(QuotaSpec("w", ("a",), 1, period="week"), paris, now)
    assert day.label == "2026-10-28"
    assert week.label == "2026-10-26 - 2026-11-01"


def test_estimate_at_the_first_instant_is_the_usage() -> None:
    assert evaluate(SPEC, 42, 0, MONTH).estimate == 42
    assert evaluate(SPEC, 100, 250, MONTH).estimate == 400


def test_watcher_logs_warn_and_limit_once_per_period() -> None:
    watcher = QuotaWatcher()
    p1, p2 = Period(0, 1000, "p1"), Period(1000, 2000, "p2")
    logs = [watcher.update([evaluate(SPEC, used, t, p)]) for used, t, p in (
        (100, 10, p1), (850, 20, p1), (900, 30, p1), (1200, 40, p1), (1300, 50, p1),
        (10, 1010, p2), (2000, 1020, p2),
    )]  # fmt: skip
    assert [len(lines) for lines in logs] == [0, 1, 0, 1, 0, 0, 2]
    assert "warning level" in logs[1][0] and "mobile" in logs[1][0]
    assert "exceeded its limit" in logs[3][0]
    assert "warning level" in logs[6][0] and "exceeded" in logs[6][1]
