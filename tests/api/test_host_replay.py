"""Per-host reports of the real daemon serving a replayed capture: figures equal the capture's."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6, Raw, wrpcap

from trafmetuxctl.cli import main
from trafmetuxd import protocol

PARIS = ZoneInfo("Europe/Paris")
START = datetime(2026, 11, 23, 8, tzinfo=PARIS).timestamp()
DAYS = 3
# (host as reported, its address in the capture)
HOSTS = (
    ("192.168.190.20", "192.168.190.20"),
    ("192.168.190.21", "192.168.190.21"),
    ("fd00:190:0:1::/64", "fd00:190:0:1:a1b2:c3d4:e5f6:1"),  # a privacy address ...
    ("fd00:190:0:1::/64", "fd00:190:0:1:a1b2:c3d4:e5f6:2"),  # ... and the next day's
)
WEB, WEB6 = "203.0.113.9", "2001:db8::443"
CONFIG = """state_dir = "{root}/state"
socket = "{root}/trafmetuxd.sock"
socket_group = "root"
timezone = "Europe/Paris"
week_start = "monday"
local_networks = ["192.168.190.0/24", "fd00:190::/56"]

[[monitor]]
name = "lan"
hosts = ["192.168.190.0/24", "fd00:190::/56"]
host_prefix_v6 = 64

[[monitor]]
name = "web"
rules = [{{ protocol = "tcp", port = 443 }}]
hosts = ["192.168.190.0/24"]
"""
# per local day, per host: [in bytes, out bytes] (the capture's own sums)
Expected = dict[date, dict[str, list[int]]]


def office_capture(path: Path) -> Expected:
    """Three days of an office's web and DNS traffic, every hour 08:00-18:00; its sums."""
    frames, sums = [], {}
    for day in range(DAYS):
        for hour in range(10):
            for index, (host, addr) in enumerate(HOSTS):
                if ":" in host and index % 2 != day % 2:
                    continue  # one privacy address per day
                t = START + day * 86400 + hour * 3600 + index * 60
                size = 200 * (index + 1) * (day + 1) + 17 * hour
                if ":" in addr:
                    up = IPv6(src=addr, dst=WEB6) / TCP(sport=50000 + hour, dport=443)
                    down = IPv6(src=WEB6, dst=addr) / TCP(sport=443, dport=50000 + hour)
                else:
                    up = IP(src=addr, dst=WEB) / TCP(sport=50000 + hour, dport=443)
                    down = IP(src="9.9.9.9", dst=addr) / UDP(sport=53, dport=40000 + hour)
                eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                up, down = eth / up / Raw(b"u" * 40), eth / down / Raw(b"d" * size)
                up.time, down.time = t, t + 1
                frames += [up, down]
                per = sums.setdefault(datetime.fromtimestamp(t, PARIS).date(), {})
                acc = per.setdefault(host, [0, 0])
                acc[0] += len(down.payload)
                acc[1] += len(up.payload)
    wrpcap(str(path), frames)
    return sums


class Served:
    """trafmetuxd --replay CAPTURE --serve on a socket of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "trafmetuxd.sock"
        self.conf = root / "t.toml"
        self.conf.write_text(CONFIG.format(root=root))
        self.capture = root / "office.pcap"
        self.expected = office_capture(self.capture)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trafmetuxd", "--config", str(self.conf),
             "--replay", str(self.capture), "--serve"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self._answers():
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon never answered"
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            self.ask("status")
        except (OSError, AssertionError):
            return False
        return True

    def ask(self, cmd: str, **args: object) -> protocol.Reply:
        """One request over the control socket; the decoded reply."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)
            s.connect(str(self.sock))
            s.sendall(protocol.encode_request(cmd, **args))
            line = s.makefile("rb").readline()
        assert line, "no reply"
        return protocol.decode_reply(line)

    def result(self, cmd: str, **args: object) -> dict[str, object]:
        reply = self.ask(cmd, **args)
        assert reply.ok, reply
        assert isinstance(reply.result, dict)
        return reply.result

    def stop(self) -> None:
        """SIGTERM (a process this test started) and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """One replay daemon for the module's scenarios (they only read)."""
    root = Path(tempfile.mkdtemp(prefix="trafmetux-hosts-"))
    os.chmod(root, 0o755)
    daemon = Served(root)
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_hosts_per_day_equal_the_captures_sums(served: Served) -> None:
    result = served.result("hosts", monitor="lan", period="day", begin="2026-11-23",
                           end="2026-11-26", limit=10)  # fmt: skip
    periods = result["periods"]
    assert isinstance(periods, list) and len(periods) == DAYS
    for period in periods:
        want = served.expected[date.fromisoformat(period["label"])]
        got = {h["host"]: [h["in"], h["out"]] for h in period["hosts"]}
        assert got == want
        totals = [h["in"] + h["out"] for h in period["hosts"]]
        assert totals == sorted(totals, reverse=True)


def test_one_hosts_daily_history_equals_its_show_hosts_figures(served: Served) -> None:
    for host, _ in HOSTS:
        rows = served.result("report", period="day", begin="2026-11-23", end="2026-11-26",
                             host=host, monitors=["lan"])["rows"]  # fmt: skip
        assert isinstance(rows, list)
        want = [served.expected[date(2026, 11, 23 + i)].get(host, [0, 0]) for i in range(DAYS)]
        assert [r["values"]["lan"] for r in rows] == want


def test_the_client_prints_a_hosts_hourly_history_and_refuses_a_stranger(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--socket", str(served.sock), "show-hourly", "-b", "2026-11-24 08:00", "-e",
            "2026-11-24 10:00", "-u", "B", "--host", "192.168.190.21"]  # fmt: skip
    assert main(argv) == 0
    # HOSTS[1] on day 1: down 20 + 8 + 800 (+ 17 an hour) bytes of DNS, up 80 bytes to :443
    assert capsys.readouterr().out.splitlines() == [
        "2026-11-24 08:00-09:00: [lan= 908 B] [web= 80 B]",
        "2026-11-24 09:00-10:00: [lan= 925 B] [web= 80 B]",
    ]
    assert main([*argv[:-1], "10.9.9.9"]) == 2
    assert capsys.readouterr().err == (
        "trafmetuxctl: host '10.9.9.9': no monitor counts it (monitors with `hosts`: lan, web)"
        " (bad_argument)\n"
    )


def test_top_by_host_equals_the_captures_sums(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    top = served.result("top", by="host", monitors=["lan"], begin="2026-11-23",
                        end="2026-11-26")  # fmt: skip
    want: dict[str, int] = {}
    for per in served.expected.values():
        for host, (rx, tx) in per.items():
            want[host] = want.get(host, 0) + rx + tx
    assert top["entries"] == [
        {"key": h, "bytes": b} for h, b in sorted(want.items(), key=lambda kv: -kv[1])
    ]
    argv = ["--socket", str(served.sock), "top", "--by", "host", "--since", "2026-11-23",
            "--until", "2026-11-25", "-u", "B", "-n", "1", "lan"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out == f"{max(want.values()):>12} B  fd00:190:0:1::/64\n"
