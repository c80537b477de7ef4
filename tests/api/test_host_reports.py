"""Per-host reports over the real socket: hosts per period, one host's history, top hosts."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import NOW, Running, serve, write_store
from test_reports import call, call_error

from trafmetuxd.collector import Snapshot
from trafmetuxd.reports import MAX_CELLS
from trafmetuxd.spec import MonitorSpec

PARIS = ZoneInfo("Europe/Paris")
A = int(ipaddress.IPv4Address("10.0.0.2"))
B = int(ipaddress.IPv4Address("10.0.0.3"))
SIX = int(ipaddress.IPv6Address("fd00:1::"))
HA, HB, H6 = (4, A, 32), (4, B, 32), (6, SIX, 64)
LAN = MonitorSpec(
    "lan",
    hosts=(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00:1::/48")),
    host_prefix_v6=64,
)
WIFI = MonitorSpec("wifi", hosts=(ipaddress.ip_network("10.0.0.0/30"),))
PLAIN = MonitorSpec("plain")


@pytest.fixture
def lan(public_dir: Path) -> Iterator[Running]:
    """The server with monitors lan (hosts 10.0.0.0/24, fd00:1::/48 by /64), wifi, plain."""
    yield from serve(public_dir, monitors=(LAN, WIFI, PLAIN))


def db(running: Running) -> Path:
    return running.path.parent / "state" / "trafmetux.sqlite3"


def minute(y: int, m: int, d: int, hh: int, mm: int = 5, fold: int = 0) -> int:
    """A local Paris minute as a UTC minute number."""
    return int(datetime(y, m, d, hh, mm, tzinfo=PARIS, fold=fold).timestamp()) // 60


def hosts_snapshot(hosts: dict[tuple[int, ...], dict[int, list[int]]]) -> Snapshot:
    """A flush of per-host rows whose monitor totals are their sums."""
    totals: dict[int, list[int]] = {}
    for per_minute in hosts.values():
        for m, row in per_minute.items():
            acc = totals.setdefault(m, [0, 0, 0, 0])
            for i in range(4):
                acc[i] += row[i]
    return Snapshot(totals, {}, 0, hosts)


def named(hosts: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(h["host"], h["in"], h["out"]) for h in hosts]


def test_hosts_per_day_rank_each_day_and_add_the_unflushed_minutes(lan: Running) -> None:
    today = datetime.fromtimestamp(NOW, PARIS)
    y, m, d = today.year, today.month, today.day
    write_store(db(lan), NOW - 600, [("lan", hosts_snapshot({
        HA: {minute(y, m, d - 2, 10): [100, 1, 10, 1], minute(y, m, d - 1, 23, 59): [5, 1, 0, 0]},
        HB: {minute(y, m, d - 2, 11): [900, 3, 0, 0]},
    }))])  # fmt: skip
    lan.backend.pending_hosts = {"lan": {H6: {NOW // 60: [0, 0, 70, 1]},
                                         HA: {NOW // 60: [1, 1, 1, 1]}}}  # fmt: skip
    result = call(lan.path, cmd="hosts", monitor="lan", period="day", last=3)
    periods = result["periods"]
    assert isinstance(periods, list)
    labels = [f"{today.replace(day=d - i):%Y-%m-%d}" for i in (2, 1, 0)]
    assert [p["label"] for p in periods] == labels
    assert [named(p["hosts"]) for p in periods] == [
        [("10.0.0.3", 900, 0), ("10.0.0.2", 100, 10)],
        [("10.0.0.2", 5, 0)],
        [("fd00:1::/64", 0, 70), ("10.0.0.2", 1, 1)],
    ]
    assert [p["count"] for p in periods] == [2, 1, 2]
    assert result["period"] == "day" and result["timezone"] == "Europe/Paris"
    first = datetime.fromisoformat(periods[0]["begin"])
    # the first day is the 24th, still at +02:00: each period's local midnight with its offset
    assert first == datetime(y, m, d - 2, tzinfo=PARIS)
    assert first.utcoffset() != today.utcoffset()
    assert result["begin"] == periods[0]["begin"] and result["end"] == periods[-1]["end"]
    one = call(lan.path, cmd="hosts", monitor="lan", period="day", last=3, limit=1, sort="out")
    assert [named(p["hosts"]) for p in one["periods"]] == [  # type: ignore[attr-defined]
        [("10.0.0.2", 100, 10)], [("10.0.0.2", 5, 0)], [("fd00:1::/64", 0, 70)],
    ]  # fmt: skip


def test_hosts_per_hour_on_the_dst_day_show_the_repeated_hour_twice(lan: Running) -> None:
    # 2026-10-25, Paris: 02:00-03:00 happens at +02:00, then again at +01:00
    write_store(db(lan), NOW - 600, [("lan", hosts_snapshot({
        HA: {minute(2026, 10, 25, 2, 10): [1000, 1, 0, 0],
             minute(2026, 10, 25, 2, 10, fold=1): [0, 0, 30, 1]},
        HB: {minute(2026, 10, 25, 3, 0): [7, 1, 0, 0]},
    }))])  # fmt: skip
    hours = call(lan.path, cmd="hosts", monitor="lan", period="hour", begin="2026-10-25 01:00",
                 end="2026-10-25 04:00")["periods"]  # fmt: skip
    assert [(p["label"], named(p["hosts"])) for p in hours] == [  # type: ignore[attr-defined]
        ("2026-10-25 01:00-02:00", []),
        ("2026-10-25 02:00-03:00 +02:00", [("10.0.0.2", 1000, 0)]),
        ("2026-10-25 02:00-03:00 +01:00", [("10.0.0.2", 0, 30)]),
        ("2026-10-25 03:00-04:00", [("10.0.0.3", 7, 0)]),
    ]
    (day,) = call(lan.path, cmd="hosts", monitor="lan", period="day", last=1,
                  end="2026-10-26")["periods"]  # type: ignore[misc]  # fmt: skip
    begin, end = (datetime.fromisoformat(day[k]).timestamp() for k in ("begin", "end"))
    assert end - begin == 25 * 3600
    assert named(day["hosts"]) == [("10.0.0.2", 1000, 30), ("10.0.0.3", 7, 0)]


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({"period": "minute"}, "hosts: bad value for 'period': expected one of hour, day, week"),
        ({"last": 3}, "hosts: 'last' applies to periods: give 'period'"),
        ({"week_start": 0}, "hosts: 'week_start' applies to periods: give 'period'"),
        ({"period": "day", "last": 3, "begin": "2026-10-01"}, "not begin and last"),
        ({"period": "hour", "last": 30_000}, "last = 30000: at most 20000 periods per report"),
        ({"period": "hour", "begin": "2020-01-01"}, "begin .. end: at most 20000 periods"),
        ({"period": "day", "begin": "2026-13-01"}, "begin: bad time '2026-13-01'"),
        ({"period": "hour", "last": 5001, "limit": 10},
         f"5001 periods x 10 hosts: at most {MAX_CELLS} host lines per report"),
        ({"period": "week", "week_start": 7}, "hosts: bad value for 'week_start'"),
    ],
)  # fmt: skip
def test_bad_host_period_requests_name_the_field_and_value(
    lan: Running, request_args: dict[str, object], message: str
) -> None:
    error = call_error(lan.path, cmd="hosts", monitor="lan", **request_args)
    assert error["code"] == "bad_argument" and message in error["message"], error


def test_one_hosts_history_in_the_daily_report(lan: Running) -> None:
    today = datetime.fromtimestamp(NOW, PARIS)
    y, m, d = today.year, today.month, today.day
    write_store(db(lan), NOW - 600, [("lan", hosts_snapshot({
        HA: {minute(y, m, d - 1, 9): [100, 1, 10, 1]},
        HB: {minute(y, m, d - 1, 9): [900, 3, 0, 0]},
        H6: {minute(y, m, d - 2, 9): [40, 1, 4, 1]},
    }))])  # fmt: skip
    lan.backend.pending_hosts = {"lan": {HA: {NOW // 60: [1, 1, 2, 1]}}}
    result = call(lan.path, cmd="report", period="day", last=3, monitors=["lan"], host="10.0.0.2")
    assert [r["values"] for r in result["rows"]] == [  # type: ignore[attr-defined]
        {"lan": [0, 0]}, {"lan": [100, 10]}, {"lan": [1, 2]},
    ]  # fmt: skip
    assert result["host"] == "10.0.0.2" and result["hosts"] == {"lan": "10.0.0.2"}
    # an address of a grouped IPv6 prefix reads as its group, in the one monitor counting it
    six = call(lan.path, cmd="report", period="day", last=3, host="fd00:1::dead:beef")
    assert six["monitors"] == ["lan"] and six["hosts"] == {"lan": "fd00:1::/64"}
    assert [r["values"]["lan"] for r in six["rows"]] == [[40, 4], [0, 0], [0, 0]]  # type: ignore[index]
    group = call(lan.path, cmd="report", period="day", last=3, host="fd00:1::/64")
    assert group["rows"] == six["rows"]


def test_a_hosts_history_defaults_to_every_monitor_counting_it(lan: Running) -> None:
    write_store(db(lan), NOW - 600, [
        ("lan", hosts_snapshot({HA: {NOW // 60 - 30: [100, 1, 10, 1]}})),
        ("wifi", hosts_snapshot({HA: {NOW // 60 - 30: [60, 1, 6, 1]}})),
    ])  # fmt: skip
    result = call(lan.path, cmd="report", period="hour", last=1, host="10.0.0.2")
    assert result["monitors"] == ["lan", "wifi"]
    assert result["rows"][0]["values"] == {"lan": [100, 10], "wifi": [60, 6]}  # type: ignore[index]
    only_lan = call(lan.path, cmd="report", period="hour", last=1, host="10.0.0.9")
    assert only_lan["monitors"] == ["lan"]


def test_a_hosts_history_in_minutes_months_and_the_total(lan: Running) -> None:
    write_store(db(lan), NOW - 600, [("lan", hosts_snapshot({
        HA: {NOW // 60 - 2: [3, 1, 4, 1], NOW // 60 - 50 * 1440: [10, 1, 20, 1]},
        HB: {NOW // 60 - 2: [500, 1, 0, 0]},
    }))])  # fmt: skip
    minutes = call(
        lan.path, cmd="report", period="minute", last=3, monitors=["lan"], host="10.0.0.2"
    )
    assert [r["values"]["lan"] for r in minutes["rows"]] == [[3, 4], [0, 0], [0, 0]]  # type: ignore[index]
    months = call(lan.path, cmd="report", period="month", last=3, monitors=["lan"], host="10.0.0.2")
    # August, September (50 days back), October
    assert [r["values"]["lan"] for r in months["rows"]] == [[0, 0], [10, 20], [3, 4]]  # type: ignore[index]
    (total,) = call(lan.path, cmd="report", period="total", monitors=["lan"],
                    host="10.0.0.2")["rows"]  # type: ignore[misc]  # fmt: skip
    assert total["values"] == {"lan": [13, 24]}


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({"host": "10.0.0.300"}, "host: '10.0.0.300' is not an address, an IPv6 prefix"),
        ({"host": "10.0.0.1/33"}, "host: '10.0.0.1/33' is not an address"),
        ({"host": "fd00:1::5/64"}, "host: 'fd00:1::5/64' is not an address"),
        ({"host": "192.168.1.1", "monitors": ["lan"]},
         "host '192.168.1.1' in monitor 'lan': it lies outside the monitor's hosts "
         "(10.0.0.0/24, fd00:1::/48)"),
        ({"host": "10.0.0.2", "monitors": ["plain"]},
         "host '10.0.0.2' in monitor 'plain': the monitor has no `hosts`"),
        ({"host": "fd00:1::/56", "monitors": ["lan"]},
         "host 'fd00:1::/56' in monitor 'lan': its IPv6 hosts are /64 groups, not /56 prefixes"),
        ({"host": "10.0.0.0/30", "monitors": ["wifi"]},
         "host '10.0.0.0/30' in monitor 'wifi': its IPv4 hosts are addresses, not /30"),
        ({"host": "192.168.1.1"},
         "host '192.168.1.1': no monitor counts it (monitors with `hosts`: lan, wifi)"),
        ({"host": ""}, "report: bad value for 'host': expected a string of 1..256"),
    ],
)  # fmt: skip
def test_bad_host_in_a_report_names_the_monitor_and_the_address(
    lan: Running, request_args: dict[str, object], message: str
) -> None:
    error = call_error(lan.path, cmd="report", period="day", **request_args)
    assert error["code"] == "bad_argument" and error["message"].startswith(message), error


def test_a_host_of_no_monitor_with_hosts_names_none(public_dir: Path) -> None:
    for running in serve(public_dir, monitors=(PLAIN,)):
        error = call_error(running.path, cmd="report", period="day", host="10.0.0.2")
        assert error["message"] == (
            "host '10.0.0.2': no monitor counts it (monitors with `hosts`: none)"
        )


def test_top_by_host_ranks_by_the_figures_of_show_hosts(lan: Running) -> None:
    write_store(db(lan), NOW - 600, [("lan", hosts_snapshot({
        HA: {NOW // 60 - 90: [1000, 1, 100, 1]},
        HB: {NOW // 60 - 90: [2000, 2, 0, 0]},
    }))])  # fmt: skip
    lan.backend.pending_hosts = {"lan": {H6: {NOW // 60: [0, 0, 4000, 2]}}}
    top = call(lan.path, cmd="top", by="host", monitors=["lan"], limit=2)
    assert top["entries"] == [{"key": "fd00:1::/64", "bytes": 4000},
                              {"key": "10.0.0.3", "bytes": 2000}]  # fmt: skip
    hosts = call(lan.path, cmd="hosts", monitor="lan", limit=2)
    assert [(h["host"], h["in"] + h["out"]) for h in hosts["hosts"]] == [  # type: ignore[attr-defined]
        (e["key"], e["bytes"])
        for e in top["entries"]  # type: ignore[attr-defined]
    ]
    assert (top["by"], top["monitors"]) == ("host", ["lan"])
    assert top["begin"] % 900 == 0 and top["end"] % 900 == 0  # type: ignore[operator]


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({}, "top by host ranks the hosts of one monitor: name one (lan, wifi)"),
        ({"monitors": ["lan", "wifi"]}, "top by host ranks the hosts of one monitor: name one"),
        ({"monitors": ["plain"]}, "top by host: monitor 'plain' has no `hosts`"),
        ({"monitors": ["lan"], "limit": 0}, "top: bad value for 'limit'"),
    ],
)
def test_top_by_host_needs_one_monitor_with_hosts(
    lan: Running, request_args: dict[str, object], message: str
) -> None:
    error = call_error(lan.path, cmd="top", by="host", **request_args)
    assert error["code"] == "bad_argument" and error["message"].startswith(message), error


def test_top_by_host_takes_the_only_monitor_with_hosts(public_dir: Path) -> None:
    for running in serve(public_dir, monitors=(PLAIN, LAN)):
        write_store(db(running), NOW - 600, [("lan", hosts_snapshot({
            HA: {NOW // 60 - 90: [10, 1, 1, 1]}}))])  # fmt: skip
        top = call(running.path, cmd="top", by="host")
        assert top["monitors"] == ["lan"] and top["entries"] == [{"key": "10.0.0.2", "bytes": 11}]


def test_live_hosts_rank_the_current_rates_largest_first(lan: Running) -> None:
    lan.backend.pending_host_rates = {"lan": {
        "10.0.0.2": (100.0, 50.0), "fd00:1::/64": (0.0, 900.0), "10.0.0.3": (150.0, 0.0),
    }}  # fmt: skip
    result = call(lan.path, cmd="live", hosts="lan")
    assert result == {"monitor": "lan", "count": 3, "hosts": [
        {"host": "fd00:1::/64", "in": 0.0, "out": 900.0},
        {"host": "10.0.0.2", "in": 100.0, "out": 50.0},
        {"host": "10.0.0.3", "in": 150.0, "out": 0.0},
    ]}  # fmt: skip
    one = call(lan.path, cmd="live", hosts="lan", limit=1)
    assert one["count"] == 3 and len(one["hosts"]) == 1  # type: ignore[arg-type]
    assert call(lan.path, cmd="live", hosts="wifi") == {"monitor": "wifi", "count": 0, "hosts": []}


@pytest.mark.parametrize(
    ("request_args", "code", "message"),
    [
        ({"hosts": "plain"}, "bad_argument", "live: monitor 'plain' has no `hosts`"),
        ({"hosts": "nope"}, "not_found", "no such monitor: nope"),
        ({"hosts": "lan", "monitors": ["lan"]}, "bad_argument",
         "live: give 'monitors' or 'hosts', not both"),
        ({"limit": 3}, "bad_argument", "live: 'limit' counts hosts: give 'hosts'"),
        ({"hosts": 7}, "bad_argument", "live: bad value for 'hosts': expected a string"),
        ({"hosts": "lan", "limit": 0}, "bad_argument", "live: bad value for 'limit'"),
    ],
)  # fmt: skip
def test_bad_live_hosts_requests_name_the_field_and_value(
    lan: Running, request_args: dict[str, object], code: str, message: str
) -> None:
    error = call_error(lan.path, cmd="live", **request_args)
    assert error["code"] == code and error["message"].startswith(message), error
