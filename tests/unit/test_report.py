"""Classic report lines and the other human views, from reply dicts."""

from __future__ import annotations

import time

from trafmetuxctl.report import (
    check_quota_line,
    flow_lines,
    live_lines,
    perfdata,
    quota_lines,
    report_lines,
    top_lines,
)

MIB = 1024**2


def reply(label: str, values: dict[str, list[int]]) -> dict[str, object]:
    return {"monitors": list(values), "rows": [{"label": label, "values": values}]}


def test_hourly_line_in_the_classic_format_shows_only_the_listed_monitors() -> None:
    rx, tx = 25_386_516, 3_533_701  # 24.21 MiB and 3.37 MiB
    (line,) = report_lines(reply("2008-10-27 19:00-20:00", {"input": [rx, 0], "output": [0, tx]}))
    assert line == "2008-10-27 19:00-20:00: [input= 24.21 MiB] [output= 3.37 MiB]"


def test_a_monitor_named_total_is_printed_as_itself_not_summed_again() -> None:
    values = {"input": [100, 0], "output": [0, 50], "total": [100, 50]}
    (line,) = report_lines(reply("2008", values))
    assert line == "2008: [input= 100 B] [output= 50 B] [total= 150 B]"


def test_sum_cell_only_when_asked() -> None:
    rx, tx = 25_386_516, 3_533_701
    values = {"input": [rx, 0], "output": [0, tx]}
    (line,) = report_lines(reply("2008-10-27 19:00-20:00", values), add_sum=True)
    total = f"{(rx + tx) / MIB:.2f}"
    assert line.endswith(f"[output= 3.37 MiB] [sum= {total} MiB]")


def test_daily_weekly_monthly_yearly_labels_pass_through() -> None:
    for label in ("2008-10-21", "2008-10-19 - 2008-10-25", "2008-10", "2008"):
        (line,) = report_lines(reply(label, {"input": [1, 2]}))
        assert line == f"{label}: [input= 3 B]"


def test_split_shows_in_and_out_per_monitor() -> None:
    result = reply("2008", {"ssh": [2048, 1024], "web": [0, 512]})
    (line,) = report_lines(result, split=True, add_sum=True)
    assert line == (
        "2008: [ssh in= 2.00 KiB out= 1.00 KiB] [web in= 0 B out= 512 B] "
        "[sum in= 2.00 KiB out= 1.50 KiB]"
    )


def test_a_fixed_unit_applies_to_every_cell() -> None:
    (line,) = report_lines(reply("2008", {"a": [MIB, 0]}), unit="KiB", add_sum=True)
    assert line == "2008: [a= 1024.00 KiB] [sum= 1024.00 KiB]"


def test_periods_keep_the_daemons_order() -> None:
    result = {
        "monitors": ["a"],
        "rows": [{"label": "2026-10-24", "values": {"a": [0, 0]}},
                 {"label": "2026-10-25", "values": {"a": [5, 0]}}],
    }  # fmt: skip
    assert [line.split(":")[0] for line in report_lines(result)] == ["2026-10-24", "2026-10-25"]


def test_flow_lines_show_endpoints_and_bytes() -> None:
    result = {"flows": [
        {"proto_name": "tcp", "protocol": 6, "client": "10.0.0.2", "client_port": 51234,
         "server": "2001:db8::1", "server_port": 443, "sent": 1024, "received": 2 * MIB,
         "packets": 12},
        {"proto_name": "icmp", "protocol": 1, "client": "10.0.0.2", "client_port": -1,
         "server": "10.0.0.1", "server_port": -1, "sent": 84, "received": 84, "packets": 2},
    ]}  # fmt: skip
    assert flow_lines(result) == [
        "tcp 10.0.0.2:51234 -> [2001:db8::1]:443 sent= 1.00 KiB received= 2.00 MiB packets=12",
        "icmp 10.0.0.2 -> 10.0.0.1 sent= 84 B received= 84 B packets=2",
    ]


def test_top_and_live_lines() -> None:
    assert top_lines({"entries": [{"key": "udp/53", "bytes": 700}]}) == ["         700 B  udp/53"]
    assert live_lines({"rates": {"input": [1536.0, 0.0]}}) == ["input: in= 1.50 KiB/s out= 0 B/s"]


QUOTA = {
    "name": "mobile",
    "used": 2_684_354_560,
    "limit": 3_221_225_472,
    "warn_bytes": 2_576_980_378,
    "percent": 83.33,
    "period_label": "2026-10-15 - 2026-11-14",
    "estimate": 4_000_000_000,
    "state": "WARNING",
}


def test_check_quota_prints_one_status_line_with_perfdata() -> None:
    status, line = check_quota_line(QUOTA)
    assert status == 1
    assert line == (
        "QUOTA WARNING - mobile: used 2.50 GiB of 3.00 GiB (83.3%), "
        "period 2026-10-15 - 2026-11-14, estimate 3.73 GiB at period end"
        " | used=2684354560B;2576980378;3221225472;0;3221225472"
    )
    assert perfdata(QUOTA) == "used=2684354560B;2576980378;3221225472;0;3221225472"


def test_each_state_maps_to_its_plugin_exit_status() -> None:
    for state, status in (("OK", 0), ("WARNING", 1), ("CRITICAL", 2), ("???", 3)):
        assert check_quota_line({**QUOTA, "state": state})[0] == status


def test_quota_lines_for_humans() -> None:
    (line,) = quota_lines({"quotas": [QUOTA]})
    assert line.startswith("WARNING  mobile: used 2.50 GiB of 3.00 GiB (83.3%)")


def test_a_blocking_quota_says_since_when_and_what_it_dropped() -> None:
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(1_793_000_000))  # local time
    blocked = {
        **QUOTA, "state": "CRITICAL", "action": "block", "extended": 1 << 30,
        "blocked_since": 1_793_000_000,
        "enforced": {"dropped_packets": 12, "dropped_bytes": 12_000, "marked_packets": 0,
                     "marked_bytes": 0},
        "history": ["2026-10-26 09:00:00 UTC extended by 1048576 B by uid 0 (pid 7)"],
    }  # fmt: skip
    first, history = quota_lines({"quotas": [blocked]})
    assert "used 2.50 GiB of 4.00 GiB" in first  # the extension is in the figure
    assert first.endswith(
        f"; block, extended by 1.00 GiB, blocked since {since}, 12 packets (11.72 KiB) dropped"
    )
    assert history == "         2026-10-26 09:00:00 UTC extended by 1048576 B by uid 0 (pid 7)"
    status, line = check_quota_line(blocked)
    assert status == 2 and f"blocked since {since}, 12 packets" in line
    assert quota_lines({"quotas": [QUOTA]})[0].endswith("at period end")  # report: as before


HOSTLY = {
    "name": "lan",
    "monitors": ["lan"],
    "used": 1_288_490_189,  # the worst host's
    "limit": 1024**3,
    "warn_bytes": 858_993_460,
    "percent": 120.0,
    "period_label": "2026-11-10",
    "estimate": 2_576_980_378,
    "state": "CRITICAL",
    "per_host": True,
    "host": "192.168.1.23",
    "host_count": 14,
    "hosts_warning": 2,
    "hosts_critical": 1,
    "other": 0,
    "hosts": [
        {"host": "192.168.1.23", "used": 1_288_490_189, "percent": 120.0, "state": "CRITICAL"},
        {"host": "fd00:1::/64", "used": 966_367_641, "percent": 90.0, "state": "WARNING"},
        *[
            {"host": f"192.168.1.{i}", "used": 1000 - i, "percent": 0.0, "state": "OK"}
            for i in range(1, 9)
        ],
    ],
}


def test_per_host_check_names_the_worst_host_and_gives_each_listed_hosts_perfdata() -> None:
    status, line = check_quota_line(HOSTLY)
    assert status == 2
    summary, perf = line.split(" | ")
    assert summary == (
        "QUOTA CRITICAL - lan: host 192.168.1.23 used 1.20 GiB of 1.00 GiB per host (120.0%), "
        "period 2026-11-10, estimate 2.40 GiB at period end; 1 host over limit, 2 over warn"
    )
    items = perf.split(" ")
    levels = "858993460;1073741824;0;1073741824"
    assert items[:3] == [
        f"used=1288490189B;{levels}",
        f"'192.168.1.23'=1288490189B;{levels}",
        f"'fd00:1::/64'=966367641B;{levels}",
    ]
    assert len(items) == 1 + 10


def test_per_host_quota_lines_list_the_hosts_over_warn_and_count_the_rest() -> None:
    listed = {**HOSTLY, "hosts_warning": 5, "other": 2048}
    lines = quota_lines({"quotas": [listed]})
    assert lines[0].startswith("CRITICAL lan: host 192.168.1.23 used 1.20 GiB of 1.00 GiB per host")
    assert lines[1:] == [
        "         CRITICAL 192.168.1.23: used 1.20 GiB (120.0%)",
        "         WARNING  fd00:1::/64: used 921.60 MiB (90.0%)",
        "         ... and 4 more over warn",
        "         other (hosts beyond max_hosts, no limit): used 2.00 KiB",
    ]


def test_per_host_quota_without_traffic_names_no_host() -> None:
    empty = {**HOSTLY, "used": 0, "percent": 0.0, "estimate": 0, "state": "OK", "host": None,
             "host_count": 0, "hosts_warning": 0, "hosts_critical": 0, "hosts": []}  # fmt: skip
    status, line = check_quota_line(empty)
    assert status == 0
    assert line.startswith("QUOTA OK - lan: used 0 B of 1.00 GiB per host (0.0%)")
    assert line.endswith("| used=0B;858993460;1073741824;0;1073741824")
