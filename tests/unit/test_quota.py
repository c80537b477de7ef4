"""Quota state, estimate, billing periods and the once-per-period log lines."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from trafmetuxd.periods import Calendar, Period
from trafmetuxd.quota import (
    HOSTS_LISTED,
    OverLimit,
    QuotaWatcher,
    Usage,
    evaluate,
    over_limit,
    quota_period,
    warn_threshold,
)
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


# --- per-host quotas ---------------------------------------------------------------------

HOSTLY = QuotaSpec("lan", ("lan",), limit=1000, period="day", warn=0.8, per_host=True)
DAY = Period(0, 86400, "d")


def test_per_host_quota_state_is_the_worst_hosts() -> None:
    hosts = {"192.168.1.2": 900, "192.168.1.3": 1500, "192.168.1.4": 10, "fd00:1::/64": 1001}
    st = evaluate(HOSTLY, Usage(sum(hosts.values()), hosts), 43200, DAY)
    assert (st.state, st.host, st.used, st.percent) == ("CRITICAL", "192.168.1.3", 1500, 150.0)
    assert st.estimate == 3000
    assert (st.host_count, st.hosts_critical, st.hosts_warning) == (4, 2, 1)
    assert [(h.host, h.used, h.state) for h in st.hosts] == [
        ("192.168.1.3", 1500, "CRITICAL"),
        ("fd00:1::/64", 1001, "CRITICAL"),
        ("192.168.1.2", 900, "WARNING"),
        ("192.168.1.4", 10, "OK"),
    ]


def test_per_host_quota_under_its_limit_sums_nothing_across_hosts() -> None:
    hosts = {f"10.0.0.{i}": 700 for i in range(10)}  # 7000 B in all, each host below warn
    st = evaluate(HOSTLY, Usage(7000, hosts), 100, DAY)
    assert (st.state, st.used, st.hosts_warning, st.hosts_critical) == ("OK", 700, 0, 0)
    assert over_limit(HOSTLY, Usage(7000, hosts)) == OverLimit("lan", False, frozenset())


def test_other_host_gets_no_limit_but_is_reported() -> None:
    hosts = {"other": 50_000, "10.0.0.1": 5}
    st = evaluate(HOSTLY, Usage(50_005, hosts), 100, DAY)
    assert (st.state, st.host, st.other, st.host_count) == ("OK", "10.0.0.1", 50_000, 1)
    assert [h.host for h in st.hosts] == ["10.0.0.1"]
    assert over_limit(HOSTLY, Usage(50_005, hosts)).hosts == frozenset()


def test_per_host_quota_without_traffic_is_ok_with_no_host() -> None:
    st = evaluate(HOSTLY, Usage(0, {}), 100, DAY)
    assert (st.state, st.host, st.used, st.hosts) == ("OK", None, 0, ())
    d = st.as_dict()
    assert d["per_host"] is True and d["hosts"] == [] and d["host"] is None


def test_per_host_quota_lists_at_most_the_largest_hosts() -> None:
    hosts = {f"10.0.{i // 250}.{i % 250}": 2000 + i for i in range(HOSTS_LISTED + 25)}
    st = evaluate(HOSTLY, Usage(sum(hosts.values()), hosts), 100, DAY)
    assert len(st.hosts) == HOSTS_LISTED
    assert [h.used for h in st.hosts] == sorted(hosts.values(), reverse=True)[:HOSTS_LISTED]
    assert st.hosts_critical == HOSTS_LISTED + 25


def test_over_limit_names_the_hosts_above_the_limit_only() -> None:
    hosts = {"10.0.0.1": 1000, "10.0.0.2": 1001, "fd00:1::/64": 5000, "other": 10**9}
    assert over_limit(HOSTLY, Usage(0, hosts)) == OverLimit(
        "lan", False, frozenset({"10.0.0.2", "fd00:1::/64"})
    )


@pytest.mark.parametrize(("used", "whole"), [(1000, False), (1001, True)])
def test_over_limit_of_a_whole_quota(used: int, whole: bool) -> None:
    assert over_limit(SPEC, Usage(used)) == OverLimit("mobile", whole, frozenset())


def test_a_whole_quota_keeps_its_json_shape() -> None:
    d = evaluate(SPEC, 5, 10, MONTH).as_dict()
    assert d["per_host"] is False
    assert not {"host", "hosts", "host_count", "other"} & d.keys()


def test_watcher_names_the_worst_host() -> None:
    watcher = QuotaWatcher()
    lines = watcher.update([evaluate(HOSTLY, Usage(1200, {"10.0.0.9": 1200}), 1, DAY)])
    assert len(lines) == 2 and "host 10.0.0.9 used 1200 B" in lines[1]
