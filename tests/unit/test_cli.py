"""trafmetuxctl against a canned fake server: usage errors, output lines, --json, exit codes."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trafmetuxctl.cli import build_parser, main, terminal_columns

GIB = 1024**3
QUOTA = {
    "name": "mobile", "monitors": ["input"], "used": 2 * GIB, "limit": 3 * GIB,
    "warn_bytes": 2_576_980_378, "percent": 66.67, "begin": 0, "end": 1,
    "period_label": "2026-10-15 - 2026-11-14", "estimate": 4 * GIB, "state": "OK",
}  # fmt: skip
DAYS = {
    "period": "day", "timezone": "UTC", "week_start": 6, "monitors": ["input", "output"],
    "rows": [
        {"label": "2008-10-20", "begin": 0, "end": 1,
         "values": {"input": [0, 0], "output": [0, 0]}},
        {"label": "2008-10-21", "begin": 1, "end": 2,
         "values": {"input": [103_630_356, 0], "output": [0, 17_259_561]}},
    ],
}  # fmt: skip


class Fake(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    replies: dict[str, Any]
    seen: list[dict[str, Any]]


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, Fake)
        for line in self.rfile:
            req = json.loads(line)
            server.seen.append(req)
            reply = server.replies.get(req["cmd"])
            if callable(reply):
                reply = reply(req)
            self.wfile.write(json.dumps(reply).encode() + b"\n")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Fake]:
    server = Fake(str(tmp_path / "fake.sock"), Handler)
    server.replies = {
        "report": {"ok": True, "result": DAYS},
        "status": {"ok": True, "result": {"state": "running", "protocol": 1}},
        "quota": {"ok": True, "result": {"quotas": [QUOTA]}},
        "flush": {"ok": False, "error": {"code": "forbidden", "message": "uid 1000 may not"}},
    }
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run(fake: Fake, *argv: str) -> int:
    return main(["--socket", fake.server_address, *argv])  # type: ignore[list-item]


def test_show_daily_prints_classic_lines_oldest_first(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(fake, "show-daily", "-t", "2", "-f", "mon", "input", "output") == 0
    assert capsys.readouterr().out.splitlines() == [
        "2008-10-20: [input= 0 B] [output= 0 B]",
        "2008-10-21: [input= 98.83 MiB] [output= 16.46 MiB]",
    ]
    (req,) = fake.seen
    assert req == {"v": 1, "cmd": "report", "period": "day", "last": 2, "week_start": 0,
                   "monitors": ["input", "output"]}  # fmt: skip


def test_json_prints_the_result(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "--json", "show-daily") == 0
    assert json.loads(capsys.readouterr().out) == DAYS


def test_begin_and_end_are_sent_as_local_text(fake: Fake) -> None:
    assert run(fake, "show-hourly", "-b", "2026-10-25", "-e", "2026-10-26 06:00") == 0
    assert fake.seen[0]["begin"] == "2026-10-25" and fake.seen[0]["end"] == "2026-10-26 06:00"


def test_report_prints_no_total_column_unless_sum_is_asked(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(fake, "show-daily", "--sum", "input", "output") == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "2008-10-21: [input= 98.83 MiB] [output= 16.46 MiB] [sum= 115.29 MiB]"
    )


@pytest.mark.parametrize(
    ("option", "given", "sent"),
    [
        ("-e", "2026-10-24", "2026-10-25"),  # a date-only end includes that whole day
        ("-e", "2026-10-31", "2026-11-01"),
        ("-e", "2026-12-31", "2027-01-01"),
        ("-e", "2024-02-28", "2024-02-29"),
        ("-e", "2026-02", "2026-03-01"),  # a month includes the whole month
        ("-e", "2026-10-25 05:00", "2026-10-25 05:00"),  # a time of day stays an instant
        ("-b", "2026-10", "2026-10-01"),
        ("-b", "2026-10-24 13:00", "2026-10-24 13:00"),
    ],
)
def test_date_only_end_includes_its_whole_day_as_vnstat_end(
    fake: Fake, option: str, given: str, sent: str
) -> None:
    assert run(fake, "show-daily", option, given) == 0
    assert fake.seen[0]["begin" if option == "-b" else "end"] == sent


def test_flows_and_top_until_date_includes_its_whole_day(fake: Fake) -> None:
    fake.replies["flows"] = {"ok": True, "result": {"flows": []}}
    assert run(fake, "show-flows", "m", "--since", "2026-10-24", "--until", "2026-10-24") == 0
    assert (fake.seen[0]["begin"], fake.seen[0]["end"]) == ("2026-10-24", "2026-10-25")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["show-daily", "-b", "2017-13-01"], "argument -b/--begin: bad time '2017-13-01': month"),
        (["show-daily", "-e", "2023-02-29"], "argument -e/--end: bad time '2023-02-29': no such"),
        (["show-yearly", "-b", "0001-01-01"], "argument -b/--begin: bad time '0001-01-01': year"),
        (["show-flows", "m", "-n", "200000"], "argument -n: expected an integer 1..100000"),
        (["top", "-n", "20000"], "argument -n: expected an integer 1..10000"),
        (["show-weekly", "-t", "100000"], "argument -t/--last: expected an integer 1..20000"),
        (["show-daily", "-b", "2026-10-01", "-t", "3"], "usage: not -b and -t"),
        (["show-total", "-t", "3"], "usage: do not apply"),
    ],
)
def test_bad_arguments_name_the_option_and_the_limit(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--socket", "/nonexistent", *argv]) == 2
    err = capsys.readouterr().err
    if named.startswith("usage: "):  # a combination: refused after argparse, before connecting
        assert err.startswith("trafmetuxctl ") and named.removeprefix("usage: ") in err
    else:
        assert "usage:" in err and named in err


def test_json_errors_are_json_on_stdout_with_the_same_exit_code(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--json", "show-flows", "m", "-n", "200000"], 2, "usage", "1..100000"),
        (["--json", "flush"], 2, "forbidden", "may not"),
        (["--json", "--socket", str(tmp_path / "gone"), "status"], 3, "unreachable", "missing"),
    ]
    for argv, status, code, text in cases:
        assert main(["--socket", fake.server_address, *argv]) == status  # type: ignore[list-item]
        out, err = capsys.readouterr()
        reply = json.loads(out)
        assert reply["ok"] is False and reply["error"]["code"] == code, reply
        assert text in reply["error"]["message"] and err == ""


def test_check_quota_json_error_is_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "--socket", str(tmp_path / "gone"), "check-quota", "q"]) == 3
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "unreachable"


@pytest.mark.parametrize("command", ["show-daily", "show-flows", "show-hosts", "top"])
def test_subcommand_help_gives_description_defaults_and_time_format(command: str) -> None:
    (sub,) = [p for p in subparsers(build_parser()) if p.prog.endswith(" " + command)]
    text = " ".join(sub.format_help().split())
    assert sub.description and sub.description in " ".join(text.split())
    assert "(default: " in text
    assert "YYYY-MM, YYYY-MM-DD, 'YYYY-MM-DD HH:MM'" in text
    assert "includes that whole day" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["show-daily", "-t", "0"],
        ["show-daily", "-f", "someday"],
        ["show-daily", "-u", "bits"],
        ["show-daily", "-b", "last tuesday"],
        ["frobnicate"],
        [],
        ["check-quota"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", "/nonexistent", *argv]) == 2
    assert "usage:" in capsys.readouterr().err


def test_a_missing_socket_exits_3_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gone.sock"
    assert main(["--socket", str(path), "status"]) == 3
    err = capsys.readouterr().err
    assert str(path) in err and "missing" in err


def test_a_stale_socket_exits_3_as_not_answering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    assert main(["--socket", str(path), "status"]) == 3
    assert "nobody is answering" in capsys.readouterr().err


def test_daemon_refusals_are_reported(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "flush") == 2
    assert "may not" in capsys.readouterr().err


@pytest.mark.parametrize(("state", "status"), [("OK", 0), ("WARNING", 1), ("CRITICAL", 2)])
def test_check_quota_exit_status_follows_the_state(
    fake: Fake, capsys: pytest.CaptureFixture[str], state: str, status: int
) -> None:
    fake.replies["quota"] = {"ok": True, "result": {"quotas": [{**QUOTA, "state": state}]}}
    assert run(fake, "check-quota", "mobile") == status
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"QUOTA {state} - mobile: used 2.00 GiB of 3.00 GiB")
    assert line.endswith(f" | used={2 * GIB}B;2576980378;{3 * GIB};0;{3 * GIB}")


def test_check_quota_unknown_when_no_such_quota_or_no_daemon(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.replies["quota"] = {"ok": False, "error": {"code": "not_found", "message": "no such"}}
    assert run(fake, "check-quota", "nope") == 3
    assert main(["--socket", str(tmp_path / "x.sock"), "check-quota", "mobile"]) == 3
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("QUOTA UNKNOWN - ") for line in out) and len(out) == 2


def test_status_prints_key_values(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "status") == 0
    assert capsys.readouterr().out.splitlines() == ["state: running", "protocol: 1"]


def test_status_prints_each_capture_worker_as_a_block_of_its_own(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    workers = [{"queue": 0, "pid": 7, "kernel": {"waiting": 0}}, {"queue": 1, "pid": None}]
    fake.replies["status"] = {"ok": True, "result": {"capture": {"workers": workers}}}
    assert run(fake, "status") == 0
    assert capsys.readouterr().out.splitlines() == [
        "capture:",
        "  workers:",
        "    - queue: 0",
        "      pid: 7",
        "      kernel:",
        "        waiting: 0",
        "    - queue: 1",
        "      pid: null",
    ]


def test_the_client_imports_nothing_heavy() -> None:
    code = (
        "import sys, trafmetuxctl.cli; "
        "print(sorted(m for m in ('asyncio', 'sqlite3', 'pydantic', 'netfilterqueue', "
        "'zoneinfo', 'scapy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_client_starts_without_typing_socket_py_or_shutil() -> None:
    # each costs milliseconds of every start (issue 5: show-daily <= 2x a bare interpreter)
    code = (
        "import sys\n"
        "from trafmetuxctl.cli import main\n"
        "assert main(['--socket', '/nonexistent/trafmetuxd.sock', 'show-daily', '-t', '3']) == 3\n"
        "print(sorted(m for m in ('typing', 'socket', 'shutil') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "socket /nonexistent/trafmetuxd.sock is missing" in out.stderr


@pytest.mark.parametrize("columns", [None, "120", "33", "0", "-5", "wide"])
def test_terminal_columns_match_shutil(
    monkeypatch: pytest.MonkeyPatch, columns: str | None
) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert terminal_columns() == shutil.get_terminal_size().columns


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every sub-command parser under it."""
    found = [parser]
    for action in parser._actions:  # argparse keeps no public list of its sub-commands
        if isinstance(action, argparse._SubParsersAction):
            found += list(action.choices.values())
    return found


@pytest.mark.parametrize("columns", ["100", "47"])
def test_help_and_usage_read_as_argparse_formats_them(
    monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    ours, plain = subparsers(build_parser()), subparsers(build_parser())
    for parser in plain:
        parser.formatter_class = argparse.HelpFormatter  # argparse's own sizing (shutil)
    assert len(ours) == 19
    for a, b in zip(ours, plain, strict=True):
        assert a.format_help() == b.format_help()
        assert a.format_usage() == b.format_usage()


def test_show_hosts_prints_one_classic_line_per_host_and_sends_the_range(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = {"monitor": "lan", "begin": "2026-10-25T00:00:00+02:00", "count": 2,
             "end": "2026-10-26T00:00:00+01:00", "hosts": [
                 {"host": "192.168.1.23", "in": 1_299_227_607, "out": 87_136_256,
                  "in_packets": 900_000, "out_packets": 400_000},
                 {"host": "fd00:1::/64", "in": 2048, "out": 0, "in_packets": 2,
                  "out_packets": 0}]}  # fmt: skip
    fake.replies["hosts"] = {"ok": True, "result": hosts}
    argv = ("show-hosts", "lan", "-b", "2026-10-25", "-e", "2026-10-25", "-n", "5")
    assert run(fake, *argv, "--sort", "in") == 0
    assert capsys.readouterr().out.splitlines() == [
        "192.168.1.23: [in= 1.21 GiB] [out= 83.10 MiB] [total= 1.29 GiB]",
        "fd00:1::/64: [in= 2.00 KiB] [out= 0 B] [total= 2.00 KiB]",
    ]
    assert fake.seen[0] == {"v": 1, "cmd": "hosts", "monitor": "lan", "begin": "2026-10-25",
                            "end": "2026-10-26", "limit": 5, "sort": "in"}  # fmt: skip
    assert run(fake, "--json", "show-hosts", "lan") == 0
    assert json.loads(capsys.readouterr().out) == hosts


def test_show_hosts_per_period_prints_a_block_per_period_and_sends_the_periods(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    def host(name: str, rx: int, tx: int) -> dict[str, object]:
        return {"host": name, "in": rx, "out": tx, "in_packets": 1, "out_packets": 1}

    result = {"monitor": "lan", "period": "day", "timezone": "Europe/Paris", "week_start": 0,
              "begin": "2026-10-24T00:00:00+02:00", "end": "2026-10-26T00:00:00+01:00",
              "periods": [
                  {"label": "2026-10-24", "begin": "2026-10-24T00:00:00+02:00",
                   "end": "2026-10-25T00:00:00+02:00", "count": 2,
                   "hosts": [host("192.168.1.23", 2048, 1024), host("fd00:1::/64", 0, 512)]},
                  {"label": "2026-10-25", "begin": "2026-10-25T00:00:00+02:00",
                   "end": "2026-10-26T00:00:00+01:00", "count": 0, "hosts": []}]}  # fmt: skip
    fake.replies["hosts"] = {"ok": True, "result": result}
    assert run(fake, "show-hosts", "lan", "-t", "2", "--period", "day", "-f", "mon") == 0
    assert capsys.readouterr().out.splitlines() == [
        "2026-10-24:",
        "  192.168.1.23: [in= 2.00 KiB] [out= 1.00 KiB] [total= 3.00 KiB]",
        "  fd00:1::/64: [in= 0 B] [out= 512 B] [total= 512 B]",
        "2026-10-25:",
        "  (none)",
    ]
    assert fake.seen[0] == {"v": 1, "cmd": "hosts", "monitor": "lan", "limit": 20,
                            "sort": "total", "period": "day", "last": 2,
                            "week_start": 0}  # fmt: skip
    assert run(fake, "--json", "show-hosts", "lan", "--period", "day") == 0
    assert json.loads(capsys.readouterr().out) == result


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("-t", "3"), "-t and -f apply to periods: give --period"),
        (("-f", "mon"), "-t and -f apply to periods: give --period"),
        (("--period", "day", "-t", "3", "-b", "2026-10-01"), "not -b and -t"),
        (("--period", "minute"), "argument --period: invalid choice: 'minute'"),
    ],
)
def test_show_hosts_period_usage_errors_send_nothing(
    fake: Fake, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    assert run(fake, "show-hosts", "lan", *argv) == 2
    assert message in capsys.readouterr().err
    assert fake.seen == []


def test_show_daily_with_host_sends_it(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "show-daily", "-t", "2", "--host", "fd00:1::5", "lan") == 0
    assert fake.seen[0] == {"v": 1, "cmd": "report", "period": "day", "last": 2,
                            "monitors": ["lan"], "host": "fd00:1::5"}  # fmt: skip


def test_live_hosts_prints_one_rate_line_per_host(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.replies["live"] = {"ok": True, "result": {"monitor": "lan", "count": 2, "hosts": [
        {"host": "192.168.1.23", "in": 2048.0, "out": 512.0},
        {"host": "fd00:1::/64", "in": 0.0, "out": 100.0}]}}  # fmt: skip
    assert run(fake, "live", "--once", "--hosts", "lan", "-n", "5") == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "192.168.1.23: in= 2.00 KiB/s out= 512 B/s",
        "fd00:1::/64: in= 0 B/s out= 100 B/s",
    ]
    assert fake.seen[0] == {"v": 1, "cmd": "live", "hosts": "lan", "limit": 5}
    assert run(fake, "live", "--once", "-n", "5") == 2
    assert "-n counts hosts: give --hosts" in capsys.readouterr().err
    assert run(fake, "live", "--once", "--hosts", "lan", "wan") == 2
    assert "give MONITOR... or --hosts, not both" in capsys.readouterr().err
    assert len(fake.seen) == 1


def test_gateway_option_reads_names_or_all_and_refuses_empty_ones() -> None:
    from trafmetuxctl.cli import UsageError, _parse

    a = _parse(["show-daily", "--gateway", "east,west", "--sum", "input"])
    assert (a.gateway, a.sum, a.monitors) == (["east", "west"], True, ["input"])
    assert _parse(["top", "--gateway", "all"]).gateway == ["all"]
    assert _parse(["quota", "--gateway", "all", "--sum"]).sum
    with pytest.raises(UsageError, match="--gateway: expected NAME"):
        _parse(["show-hosts", "lan", "--gateway", "east,,west"])
