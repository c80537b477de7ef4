"""Per-host quotas over the real socket: a daemon serving a replayed capture, trafmetuxctl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from scapy.all import IP, UDP, Ether, IPv6, Raw, wrpcap

from trafmetuxd import protocol

PARIS = ZoneInfo("Europe/Paris")
DAY = datetime(2026, 11, 10, tzinfo=PARIS)  # every packet lies in this local day
REMOTE4, REMOTE6 = "203.0.113.9", "2001:db8::80"
KIB = 1024

CONFIG = """\
state_dir = "{root}/state"
socket = "{root}/trafmetuxd.sock"
socket_group = "root"
timezone = "Europe/Paris"
local_networks = ["192.168.190.0/24", "fd00:190::/56"]

[[monitor]]
name = "lan"
hosts = ["192.168.190.0/24", "fd00:190::/56"]
host_prefix_v6 = 64
max_hosts = 3

[[quota]]
name = "tight"
monitors = ["lan"]
limit = "10KiB"
period = "day"
per_host = true

[[quota]]
name = "warm"
monitors = ["lan"]
limit = "14KiB"
period = "day"
per_host = true

[[quota]]
name = "roomy"
monitors = ["lan"]
limit = "1GiB"
per_host = true

[[quota]]
name = "whole"
monitors = ["lan"]
limit = "10KiB"
period = "day"
"""


def datagram(src: str, dst: str, size: int) -> Any:
    """An Ethernet frame holding one UDP datagram with size bytes of payload."""
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return Ether() / ip / UDP(sport=53, dport=4000) / Raw(b"x" * size)


def ip_bytes(frame: Any) -> int:
    return len(frame[IPv6] if IPv6 in frame else frame[IP])


def make_capture(path: Path) -> dict[str, int]:
    """Downloads and uploads of four LAN hosts (one beyond max_hosts); bytes per host."""
    plan = [  # (host, from the host?, payload bytes)
        ("192.168.190.1", False, 8 * KIB), ("192.168.190.1", True, 4 * KIB),
        ("192.168.190.2", False, 9 * KIB),
        ("fd00:190:0:1::a", False, 3 * KIB), ("fd00:190:0:1::b", True, 3 * KIB),
        ("192.168.190.4", False, 20 * KIB),  # the fourth host: counted in "other"
    ]  # fmt: skip
    start = DAY.timestamp() + 9 * 3600
    frames, used = [], {}
    for i, (host, outgoing, size) in enumerate(plan):
        remote = REMOTE6 if ":" in host else REMOTE4
        frame = datagram(host, remote, size) if outgoing else datagram(remote, host, size)
        frame.time = start + i  # one flush interval: the fourth host finds max_hosts taken
        frames.append(frame)
        key = "fd00:190:0:1::/64" if ":" in host else host
        used[key] = used.get(key, 0) + ip_bytes(frame)
    wrpcap(str(path), frames)
    return used


class Daemon:
    """trafmetuxd --replay CAPTURE --serve on a socket in root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "trafmetuxd.sock"
        self.conf = root / "t.toml"
        self.conf.write_text(CONFIG.format(root=root))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, capture: Path) -> None:
        """Replay the capture and serve; return once the socket answers."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trafmetuxd", "--config", str(self.conf),
             "--replay", str(capture), "--serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            try:
                self.ask("status")
                return
            except OSError:
                assert time.monotonic() < deadline, "the socket never answered"
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def ask(self, cmd: str, **args: object) -> Any:
        """One request over the control socket; its result."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)
            s.connect(str(self.sock))
            s.sendall(protocol.encode_request(cmd, **args))
            reply = protocol.decode_reply(s.makefile("rb").readline())
        assert reply.ok, reply
        return reply.result

    def ctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """trafmetuxctl against this daemon."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "trafmetuxctl"), "--socket", str(self.sock), *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Daemon, dict[str, int]]]:
    """A daemon serving the replayed capture; the bytes per host."""
    root = Path(tempfile.mkdtemp(prefix="trafmetux-hostquota-"))
    os.chmod(root, 0o755)
    daemon = Daemon(root)
    used = make_capture(root / "lan.pcap")
    daemon.start(root / "lan.pcap")
    try:
        yield daemon, used
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def quota(daemon: Daemon, name: str) -> dict[str, Any]:
    (q,) = daemon.ask("quota", name=name)["quotas"]
    return q  # type: ignore[no-any-return]


def test_quota_lists_each_hosts_bytes_worst_first_and_other_apart(
    served: tuple[Daemon, dict[str, int]],
) -> None:
    daemon, used = served
    q = quota(daemon, "tight")
    a, b, six = used["192.168.190.1"], used["192.168.190.2"], used["fd00:190:0:1::/64"]
    assert q["hosts"] == [
        {"host": "192.168.190.1", "used": a, "percent": round(100 * a / 10240, 2),
         "state": "CRITICAL"},
        {"host": "192.168.190.2", "used": b, "percent": round(100 * b / 10240, 2),
         "state": "WARNING"},
        {"host": "fd00:190:0:1::/64", "used": six, "percent": round(100 * six / 10240, 2),
         "state": "OK"},
    ]  # fmt: skip
    assert (q["per_host"], q["host"], q["used"], q["state"]) == (True, "192.168.190.1", a,
                                                                 "CRITICAL")  # fmt: skip
    assert (q["host_count"], q["hosts_critical"], q["hosts_warning"]) == (3, 1, 1)
    assert q["other"] == used["192.168.190.4"]  # over 10 KiB, but "other" has no limit
    label = DAY.strftime("%Y-%m-%d")
    assert q["period_label"] == label
    assert q["begin"] == int(DAY.timestamp())


def test_the_whole_quota_counts_the_same_bytes_as_the_hosts(
    served: tuple[Daemon, dict[str, int]],
) -> None:
    daemon, used = served
    whole = quota(daemon, "whole")
    assert whole["used"] == sum(used.values())
    assert whole["per_host"] is False and "hosts" not in whole


@pytest.mark.parametrize(
    ("name", "status", "state"),
    [("roomy", 0, "OK"), ("warm", 1, "WARNING"), ("tight", 2, "CRITICAL")],
)
def test_check_quota_exit_status_is_the_worst_hosts(
    served: tuple[Daemon, dict[str, int]], name: str, status: int, state: str
) -> None:
    daemon, used = served
    done = daemon.ctl("check-quota", name)
    assert done.returncode == status, done
    summary, perf = done.stdout.strip().split(" | ")
    assert summary.startswith(f"QUOTA {state} - {name}: host 192.168.190.1 used ")
    items = perf.split(" ")
    assert items[0].startswith(f"used={used['192.168.190.1']}B;")
    assert [item.split("=")[0] for item in items[1:]] == [
        "'192.168.190.1'", "'192.168.190.2'", "'fd00:190:0:1::/64'"]  # fmt: skip


def test_check_quota_of_an_unknown_quota_is_unknown(
    served: tuple[Daemon, dict[str, int]],
) -> None:
    done = served[0].ctl("check-quota", "nope")
    assert done.returncode == 3
    assert done.stdout.strip() == "QUOTA UNKNOWN - not_found: no such quota: nope"


def test_quota_text_lists_the_hosts_over_warn(served: tuple[Daemon, dict[str, int]]) -> None:
    done = served[0].ctl("quota", "tight")
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert lines[0].startswith("CRITICAL tight: host 192.168.190.1 used 12.")
    assert lines[0].endswith("; 1 host over limit, 1 over warn")
    assert [line.split(":")[0].split() for line in lines[1:3]] == [
        ["CRITICAL", "192.168.190.1"], ["WARNING", "192.168.190.2"]]  # fmt: skip
    assert lines[3].startswith("         other (hosts beyond max_hosts, no limit): used 20.")
    as_json = json.loads(served[0].ctl("--json", "quota", "tight").stdout)
    assert as_json["quotas"][0]["host"] == "192.168.190.1"
