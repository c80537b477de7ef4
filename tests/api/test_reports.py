"""Reports, flows, top and quota over the real socket: stored rows plus unflushed counts."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import GIB, NOW, Running, write_store

from trafmetuxd.collector import OTHER, Snapshot

PARIS = ZoneInfo("Europe/Paris")
A = int(ipaddress.IPv4Address("10.0.0.2"))
B = int(ipaddress.IPv4Address("10.0.0.3"))
WEB = int(ipaddress.IPv4Address("93.184.216.34"))
DNS = int(ipaddress.IPv4Address("9.9.9.9"))


def call(path: Path, **request: object) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(json.dumps({"v": 1, **request}).encode() + b"\n")
        reply = json.loads(s.makefile("rb").readline())
    assert reply["ok"] is True, reply
    result = reply["result"]
    assert isinstance(result, dict)
    return result


def hourly_traffic(hours: int) -> dict[int, list[int]]:
    """1000 B in + 10 B out at minute :05 of each of the last `hours` UTC hours."""
    top = NOW // 3600 * 3600
    return {(top - h * 3600 + 300) // 60: [1000, 1, 10, 1] for h in range(hours)}


def test_hourly_report_sums_store_and_unflushed_minutes(running: Running) -> None:
    write_store(running.path.parent / "state" / "trafmetux.sqlite3", NOW - 60, [
        ("input", Snapshot(hourly_traffic(30), {}, 0)),
    ])  # fmt: skip
    running.backend.pending = {"input": {NOW // 60: [7, 1, 3, 1]}}
    result = call(running.path, cmd="report", period="hour", monitors=["input"])
    rows = result["rows"]
    assert isinstance(rows, list) and len(rows) == 24
    local_now = datetime.fromtimestamp(NOW, PARIS)
    assert rows[-1]["label"] == f"{local_now:%Y-%m-%d %H}:00-{local_now.hour + 1:02d}:00"
    # every hour holds one stored event; the current one also the unflushed minute
    assert [r["values"]["input"] for r in rows[:-1]] == [[1000, 10]] * 23
    assert rows[-1]["values"]["input"] == [1007, 13]


def test_daily_report_defaults_to_all_monitors_and_seven_days(running: Running) -> None:
    running.backend.pending = {"output": {NOW // 60: [0, 0, 5000, 4]}}
    result = call(running.path, cmd="report", period="day")
    assert result["monitors"] == ["input", "output"]
    rows = result["rows"]
    assert isinstance(rows, list) and len(rows) == 7
    assert rows[-1]["label"] == f"{datetime.fromtimestamp(NOW, PARIS):%Y-%m-%d}"
    assert rows[-1]["values"] == {"input": [0, 0], "output": [0, 5000]}
    assert all(r["values"] == {"input": [0, 0], "output": [0, 0]} for r in rows[:-1])


def test_a_report_waits_while_a_flush_is_committing(running: Running) -> None:
    loops = running.backend
    running.loops.run(loops.flush_lock.acquire())
    result: list[dict[str, object]] = []
    started = time.monotonic()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.3)
            s.connect(str(running.path))
            s.sendall(b'{"v":1,"cmd":"report","period":"hour"}\n')
            try:
                s.recv(10)
                raise AssertionError("report answered while the flush held the lock")
            except TimeoutError:
                pass
            running.loops.loop.call_soon_threadsafe(loops.flush_lock.release)
            s.settimeout(5)
            result.append(json.loads(s.makefile("rb").readline()))
    finally:
        if loops.flush_lock.locked():
            running.loops.loop.call_soon_threadsafe(loops.flush_lock.release)
    assert result[0]["ok"] is True
    assert time.monotonic() - started >= 0.3


def test_flows_merge_store_and_unflushed_positions_largest_first(running: Running) -> None:
    stored = {
        (4, 6, A, 50000, WEB, 443): [100, 9000, 10],
        (4, 17, B, 40000, DNS, 53): [60, 120, 2],
        OTHER: [5, 5, 1],
    }
    write_store(running.path.parent / "state" / "trafmetux.sqlite3", NOW - 600, [
        ("input", Snapshot({}, stored, 1)),
    ])  # fmt: skip
    running.backend.pending_flows = {"input": {(4, 17, B, 40000, DNS, 53): [20000, 0, 3]}}
    result = call(running.path, cmd="flows", monitor="input")
    flows = result["flows"]
    assert isinstance(flows, list)
    got = [(f["client"], f["server_port"], f["sent"], f["received"], f["packets"]) for f in flows]
    assert got == [
        ("10.0.0.3", 53, 20060, 120, 5),
        ("10.0.0.2", 443, 100, 9000, 10),
        ("*", -1, 5, 5, 1),
    ]
    limited = call(running.path, cmd="flows", monitor="input", limit=1)
    assert len(limited["flows"]) == 1 and limited["count"] == 3  # type: ignore[arg-type]


def test_flows_outside_the_range_are_left_out(running: Running) -> None:
    db = running.path.parent / "state" / "trafmetux.sqlite3"
    write_store(
        db, NOW - 3 * 86400, [("input", Snapshot({}, {(4, 6, A, 1, WEB, 80): [1, 1, 1]}, 0))]
    )
    assert call(running.path, cmd="flows", monitor="input")["flows"] == []
    old = call(running.path, cmd="flows", monitor="input", begin=NOW - 4 * 86400, end=NOW - 86400)
    assert [f["server_port"] for f in old["flows"]] == [80]  # type: ignore[attr-defined]


def test_top_ranks_clients_servers_and_ports(running: Running) -> None:
    write_store(running.path.parent / "state" / "trafmetux.sqlite3", NOW - 600, [
        ("input", Snapshot({}, {(4, 6, A, 50000, WEB, 443): [100, 900, 3]}, 0)),
        ("output", Snapshot({}, {(4, 17, B, 40000, DNS, 53): [300, 400, 2],
                                 (4, 6, B, 40001, WEB, 443): [50, 50, 2]}, 0)),
    ])  # fmt: skip
    by_client = call(running.path, cmd="top", by="client")["entries"]
    assert by_client == [{"key": "10.0.0.2", "bytes": 1000}, {"key": "10.0.0.3", "bytes": 800}]
    by_port = call(running.path, cmd="top", by="port", monitors=["output"])["entries"]
    assert by_port == [{"key": "udp/53", "bytes": 700}, {"key": "tcp/443", "bytes": 100}]
    by_server = call(running.path, cmd="top", by="server", limit=1)["entries"]
    assert by_server == [{"key": "93.184.216.34", "bytes": 1100}]


def test_quota_counts_the_billing_month_and_extrapolates(running: Running) -> None:
    def minute(y: int, m: int, d: int) -> int:
        return int(datetime(y, m, d, 12, tzinfo=PARIS).timestamp()) // 60

    db = running.path.parent / "state" / "trafmetux.sqlite3"
    write_store(db, NOW - 60, [
        ("input", Snapshot({minute(2026, 10, 10): [GIB, 1, 0, 0],     # before the 15th: last period
                            minute(2026, 10, 20): [2 * GIB, 1, 0, 0]}, {}, 0)),
    ])  # fmt: skip
    running.backend.pending = {"output": {NOW // 60: [0, 0, GIB // 2, 1]}}
    (q,) = call(running.path, cmd="quota", name="mobile")["quotas"]  # type: ignore[misc]
    begin = int(datetime(2026, 10, 15, tzinfo=PARIS).timestamp())
    end = int(datetime(2026, 11, 15, tzinfo=PARIS).timestamp())
    used = 2 * GIB + GIB // 2
    assert (q["used"], q["limit"], q["state"]) == (used, 3 * GIB, "WARNING")
    assert (q["begin"], q["end"], q["period_label"]) == (begin, end, "2026-10-15 - 2026-11-14")
    assert q["estimate"] == round(used * (end - begin) / (NOW - begin))
    assert q["percent"] == round(100 * used / (3 * GIB), 2)


def test_admin_and_status_commands_reach_the_backend(running: Running) -> None:
    assert call(running.path, cmd="flush") == {"flushed": True}
    assert call(running.path, cmd="reload") == {"reloaded": True}
    status = call(running.path, cmd="status")
    assert status["timezone"] == "Europe/Paris" and status["protocol"] == 1
    assert running.backend.calls == ["flush", "reload"]


def test_no_database_yet_reads_as_empty(running: Running) -> None:
    assert not (running.path.parent / "state" / "trafmetux.sqlite3").exists()
    rows = call(running.path, cmd="report", period="month", last=2)["rows"]
    assert [r["values"]["input"] for r in rows] == [[0, 0], [0, 0]]  # type: ignore[index]


def test_total_runs_from_the_first_stored_quarter_to_now(running: Running) -> None:
    first = NOW - 40 * 86400
    write_store(running.path.parent / "state" / "trafmetux.sqlite3", NOW - 60, [
        ("input", Snapshot({first // 60: [10, 1, 20, 1], (NOW - 3600) // 60: [1, 1, 2, 1]}, {}, 0)),
    ])  # fmt: skip
    running.backend.pending = {"input": {NOW // 60: [100, 1, 200, 1]}}
    (row,) = call(running.path, cmd="report", period="total", monitors=["input"])["rows"]  # type: ignore[misc]
    assert row["values"]["input"] == [111, 222]
    assert row["begin"] == first // 900 * 900
    first_day = datetime.fromtimestamp(first, PARIS).strftime("%Y-%m-%d")
    assert row["label"] == f"{first_day} - {datetime.fromtimestamp(NOW, PARIS):%Y-%m-%d}"


def test_a_flush_between_two_reports_reaches_the_second_even_in_a_closed_month(
    running: Running,
) -> None:
    db = running.path.parent / "state" / "trafmetux.sqlite3"
    last_year = int(datetime(2025, 12, 3, 12, tzinfo=PARIS).timestamp()) // 60
    write_store(db, NOW - 60, [("input", Snapshot({last_year: [100, 1, 1, 1]}, {}, 0))])
    request = {"cmd": "report", "period": "month", "last": 12, "monitors": ["input"]}
    first = call(running.path, **request)["rows"]
    assert call(running.path, **request)["rows"] == first  # answered again, unchanged
    # a replay lands in the same long-closed month, then a live flush in this one
    write_store(db, NOW - 30, [("input", Snapshot({last_year + 5: [20, 1, 2, 1]}, {}, 0))])
    write_store(db, NOW - 10, [("input", Snapshot({NOW // 60 - 1: [3, 1, 4, 1]}, {}, 0))])
    rows = call(running.path, **request)["rows"]
    assert isinstance(first, list) and isinstance(rows, list)
    december = next(i for i, r in enumerate(rows) if r["label"].startswith("2025-12"))
    assert first[december]["values"]["input"] == [100, 1]
    assert rows[december]["values"]["input"] == [120, 3]
    assert rows[-1]["values"]["input"] == [3, 4]
    assert all(r["values"]["input"] == [0, 0] for i, r in enumerate(rows[:-1]) if i != december)


def test_quota_follows_each_flush(running: Running) -> None:
    db = running.path.parent / "state" / "trafmetux.sqlite3"
    used = []
    for _ in range(2):  # the same minute flushed twice: 1 GiB each time
        write_store(db, NOW - 60, [("input", Snapshot({NOW // 60 - 2: [GIB, 1, 0, 0]}, {}, 0))])
        (q,) = call(running.path, cmd="quota", name="mobile")["quotas"]  # type: ignore[misc]
        used.append(q["used"])
    assert used == [GIB, 2 * GIB]


def call_error(path: Path, **request: object) -> dict[str, str]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(json.dumps({"v": 1, **request}).encode() + b"\n")
        reply = json.loads(s.makefile("rb").readline())
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert isinstance(error, dict)
    return error


def test_top_over_overlapping_monitors_counts_each_packet_once(running: Running) -> None:
    # a forwarded packet is in both monitors under the same key: 1000 B, not 2000 B
    write_store(running.path.parent / "state" / "trafmetux.sqlite3", NOW - 600, [
        ("input", Snapshot({}, {(4, 6, A, 50000, WEB, 443): [100, 900, 3]}, 0)),
        ("output", Snapshot({}, {(4, 6, A, 50000, WEB, 443): [100, 900, 3],
                                 (4, 17, B, 40000, DNS, 53): [300, 400, 2]}, 0)),
    ])  # fmt: skip
    by_server = call(running.path, cmd="top", by="server")["entries"]
    assert by_server == [{"key": "93.184.216.34", "bytes": 1000}, {"key": "9.9.9.9", "bytes": 700}]


def test_top_takes_each_direction_from_the_monitor_that_saw_it(running: Running) -> None:
    # an 'in' monitor saw the received bytes, an 'out' monitor the sent ones: both count
    write_store(running.path.parent / "state" / "trafmetux.sqlite3", NOW - 600, [
        ("input", Snapshot({}, {(4, 6, A, 50000, WEB, 443): [0, 900, 2]}, 0)),
        ("output", Snapshot({}, {(4, 6, A, 50000, WEB, 443): [100, 0, 1]}, 0)),
    ])  # fmt: skip
    assert call(running.path, cmd="top", by="client")["entries"] == [
        {"key": "10.0.0.2", "bytes": 1000}
    ]


def test_flows_and_top_use_the_one_table_of_protocol_names(running: Running) -> None:
    six = int(ipaddress.IPv6Address("2001:db8::1"))
    write_store(running.path.parent / "state" / "trafmetux.sqlite3", NOW - 600, [
        ("input", Snapshot({}, {(6, 58, six, -1, six + 1, -1): [10, 10, 2],
                                (4, 2, A, -1, B, -1): [5, 0, 1]}, 0)),
    ])  # fmt: skip
    names = [f["proto_name"] for f in call(running.path, cmd="flows", monitor="input")["flows"]]
    assert names == ["icmpv6", "igmp"]  # type: ignore[comparison-overlap]
    ports = call(running.path, cmd="top", by="port", monitors=["input"])["entries"]
    assert [e["key"] for e in ports] == ["icmpv6", "igmp"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("request_args", "field"),
    [
        ({"period": "year", "begin": "0001-01-01"}, "begin: time '0001-01-01' is out of range"),
        ({"period": "year", "begin": 253402300799}, "begin: time 253402300799 is out of range"),
        ({"period": "year", "end": "9999-12-31"}, "end: time '9999-12-31' is out of range"),
        ({"period": "day", "begin": "2017-13-01"}, "begin: bad time '2017-13-01': month"),
    ],
)
def test_out_of_range_dates_are_bad_argument_naming_the_field(
    running: Running, request_args: dict[str, object], field: str
) -> None:
    error = call_error(running.path, cmd="report", **request_args)
    assert error["code"] == "bad_argument" and error["message"].startswith(field), error


def test_out_of_range_flow_range_names_the_field(running: Running) -> None:
    error = call_error(running.path, cmd="flows", monitor="input", end=253402300799)
    assert error["code"] == "bad_argument" and error["message"].startswith("end: time")


def test_report_last_is_capped_like_a_range(running: Running) -> None:
    error = call_error(running.path, cmd="report", period="week", last=100_000)
    assert error == {
        "code": "bad_argument",
        "message": "last = 100000: at most 20000 periods per report",
    }
    rows = call(running.path, cmd="report", period="minute", last=20_000)["rows"]
    assert len(rows) == 20_000  # type: ignore[arg-type]


def test_a_report_of_too_many_periods_times_monitors_is_refused_naming_the_limit() -> None:
    from trafmetuxd.protocol import ProtocolError
    from trafmetuxd.reports import MAX_CELLS, check_cells

    check_cells(MAX_CELLS // 20, 20)  # 20 monitors: a twentieth of the cells each
    with pytest.raises(ProtocolError, match=f"20000 periods x 20 monitors: at most {MAX_CELLS}"):
        check_cells(20_000, 20)


def test_report_range_over_the_row_cap_names_the_maximum(running: Running) -> None:
    error = call_error(running.path, cmd="report", period="hour", begin="2020-01-01")
    assert error["code"] == "bad_argument" and "at most 20000 periods" in error["message"]


def test_report_begin_with_last_is_refused_not_ignored(running: Running) -> None:
    error = call_error(running.path, cmd="report", period="day", begin="2026-10-01", last=3)
    assert error["code"] == "bad_argument" and "not begin and last" in error["message"]


def test_report_last_with_end_counts_back_from_end(running: Running) -> None:
    rows = call(running.path, cmd="report", period="day", last=2, end="2026-10-25")["rows"]
    assert [r["label"] for r in rows] == ["2026-10-23", "2026-10-24"]  # type: ignore[index]


def test_report_accepts_a_month_as_time_text(running: Running) -> None:
    rows = call(running.path, cmd="report", period="month", begin="2026-09", end="2026-11")["rows"]
    assert [r["label"] for r in rows] == ["2026-09", "2026-10"]  # type: ignore[index]


def test_yearly_report_back_to_1970_leaves_out_older_years(running: Running) -> None:
    rows = call(running.path, cmd="report", period="year", last=5000)["rows"]
    labels = [r["label"] for r in rows]  # type: ignore[index]
    assert labels[0] == "1970" and labels[-1] == "2026" and len(labels) == 57


def test_bad_value_message_says_what_is_expected(running: Running) -> None:
    error = call_error(running.path, cmd="flows", monitor="input", limit=200_000)
    assert error["message"] == "flows: bad value for 'limit': expected an integer 1..100000"


def test_hosts_sum_stored_and_unflushed_largest_first(running: Running) -> None:
    db = running.path.parent / "state" / "trafmetux.sqlite3"
    minute = NOW // 60 - 90  # an hour and a half ago
    a, b, six = (4, A, 32), (4, B, 32), (6, 0xFD00_0001 << 96, 64)
    write_store(db, NOW - 600, [("input", Snapshot(
        {minute: [3000, 3, 100, 1]}, {}, 0,
        {a: {minute: [1000, 1, 100, 1]}, b: {minute: [2000, 2, 0, 0]}},
    ))])  # fmt: skip
    running.backend.pending_hosts = {"input": {a: {NOW // 60: [5000, 5, 7, 1]},
                                               six: {NOW // 60: [0, 0, 900, 2]}}}  # fmt: skip
    result = call(running.path, cmd="hosts", monitor="input")
    assert result["hosts"] == [
        {"host": "10.0.0.2", "in": 6000, "out": 107, "in_packets": 6, "out_packets": 2},
        {"host": "10.0.0.3", "in": 2000, "out": 0, "in_packets": 2, "out_packets": 0},
        {"host": "fd00:1::/64", "in": 0, "out": 900, "in_packets": 0, "out_packets": 2},
    ]
    assert result["monitor"] == "input" and result["count"] == 3
    assert datetime.fromisoformat(str(result["end"])).timestamp() >= NOW
    by_out = call(running.path, cmd="hosts", monitor="input", sort="out", limit=1)
    assert [h["host"] for h in by_out["hosts"]] == ["fd00:1::/64"]
    before = call(running.path, cmd="hosts", monitor="input", end=NOW - 3600)
    assert [h["host"] for h in before["hosts"]] == ["10.0.0.3", "10.0.0.2"]
    assert before["hosts"][1]["in"] == 1000  # the unflushed minute lies after the range


def test_hosts_of_an_unknown_monitor_or_sort_are_refused(running: Running) -> None:
    for request, code in (({"monitor": "nope"}, "not_found"),
                          ({"monitor": "input", "sort": "size"}, "bad_argument")):  # fmt: skip
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(running.path))
            s.sendall(json.dumps({"v": 1, "cmd": "hosts", **request}).encode() + b"\n")
            reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"] is False and reply["error"]["code"] == code, reply
