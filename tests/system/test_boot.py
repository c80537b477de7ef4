"""The unit under a real systemd: start, status, reload, hardening, watchdog, metering, stop.

One container per module (see conftest.py); the tests run in file order and each leaves the
service running, except the last, which stops it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from machine import Container

UNIT = "trafmetuxd"
MEMBER, OTHER = "tmxmember", "tmxother"
HOST, PEER = "10.77.0.1", "10.77.0.2"
CAP_NET_ADMIN_AND_RAW = (1 << 12) | (1 << 13)
DATABASE = "/var/lib/trafmetux/trafmetux.sqlite3"

# Meter only the veth to the peer namespace; flush only when asked or at stop, so that what a
# final flush writes can be told apart.
CONFIG = """\
flush_interval = "1h"
[capture]
interfaces = ["vmeter"]
[[monitor]]
name = "all"
"""


def setup_script(config: str) -> str:
    """Users, the config, the metered veth to a peer namespace, the service enabled, started."""
    return f"""\
useradd -G trafmetux {MEMBER}
useradd {OTHER}
cat > /etc/trafmetux/trafmetux.toml <<'END'
{config}END
ip netns add peer
ip link add vmeter type veth peer name vpeer netns peer
sysctl -qw net.ipv6.conf.vmeter.disable_ipv6=1
ip netns exec peer sysctl -qw net.ipv6.conf.vpeer.disable_ipv6=1
ip addr add {HOST}/24 dev vmeter
ip link set vmeter up
ip -n peer addr add {PEER}/24 dev vpeer
ip -n peer link set vpeer up
systemctl enable --now {UNIT}
"""


UDP_BURST = f"""\
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for size in range(100, 3100, 100):
    s.sendto(bytes(size), ("{PEER}", 9))
"""

STORED = f"""\
import sqlite3
db = sqlite3.connect("file:{DATABASE}?mode=ro", uri=True)
print(*db.execute("SELECT coalesce(sum(in_bytes), 0), coalesce(sum(out_bytes), 0) "
    "FROM minute_totals JOIN monitor ON monitor.id = minute_totals.monitor "
    "WHERE monitor.name = 'all'").fetchone())
"""

TIMESPAN_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}


@pytest.fixture(scope="module")
def box(booted: Container) -> Iterator[Container]:
    """The booted container with users, config, the metered veth and the service started."""
    booted.sh(setup_script(CONFIG))
    yield booted


def show(box: Container, prop: str) -> str:
    """One property of the unit as systemd reports it."""
    return box.run(["systemctl", "show", "-P", prop, UNIT]).stdout.strip()


def timespan(text: str) -> float:
    """Seconds in a systemd time span such as '30s', '1min 30s' or '500ms'."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|min|h)", text)
    assert parts, text
    return sum(float(value) * TIMESPAN_UNITS[unit] for value, unit in parts)


def status(box: Container, user: str = "") -> dict[str, object]:
    """`trafmetuxctl --json status` as the given user (root by default)."""
    result = box.run(["trafmetuxctl", "--json", "status"], user=user)
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


def proc_status(box: Container, pid: int) -> dict[str, str]:
    """/proc/PID/status inside the container, as a dict."""
    text = box.run(["cat", f"/proc/{pid}/status"]).stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def main_pid(box: Container) -> int:
    """The service's main PID in the container (0 when it is not running)."""
    return int(show(box, "MainPID"))


def kernel_counters(box: Container) -> tuple[int, int]:
    """(in, out) bytes of the daemon's queue rules, IPv4 and IPv6, as the kernel counted them."""
    totals = {"IN": 0, "OUT": 0}
    for tool in ("iptables-save", "ip6tables-save"):
        for line in box.run([tool, "-c", "-t", "mangle"]).stdout.splitlines():
            match = re.match(r"\[\d+:(\d+)\] -A TRAFMETUX-(IN|OUT) ", line)
            if match:
                totals[match.group(2)] += int(match.group(1))
    return totals["IN"], totals["OUT"]


def metered(box: Container) -> tuple[int, int]:
    """(in, out) bytes the daemon metered since it started, from its status."""
    meter = status(box)["meter"]
    assert isinstance(meter, dict)
    return int(meter["in_bytes"]), int(meter["out_bytes"])


def stored(box: Container) -> tuple[int, int]:
    """(in, out) bytes of monitor 'all' in the SQLite store, read-only."""
    inb, outb = box.run(["python3", "-c", STORED]).stdout.split()
    return int(inb), int(outb)


def traffic(box: Container) -> None:
    """Pings and UDP datagrams (some fragmented) across the metered veth."""
    box.run(["ping", "-q", "-c", "20", "-i", "0.05", "-s", "1000", PEER])
    box.run(["python3", "-c", UDP_BURST])


def settle(box: Container, timeout: float = 10.0) -> tuple[tuple[int, int], tuple[int, int]]:
    """(kernel counters, metered) read together, once they agree (or the last readings).

    Both are read again each time: a packet crossing the link between two readings (the
    kernel's own traffic) must not make two readings of different moments disagree.
    """
    deadline = time.monotonic() + timeout
    while True:
        kernel = kernel_counters(box)
        meter = metered(box)
        if meter == kernel or time.monotonic() > deadline:
            return kernel, meter
        time.sleep(0.2)


def rules_left(box: Container) -> list[str]:
    """Lines of the mangle tables (IPv4 and IPv6) that mention the daemon's chains."""
    lines: list[str] = []
    for tool in ("iptables-save", "ip6tables-save"):
        dump = box.run([tool, "-t", "mangle"]).stdout
        lines += [line for line in dump.splitlines() if "TRAFMETUX" in line]
    return lines


def wait_active_with_new_pid(box: Container, old: int, timeout: float) -> float:
    """Seconds until the service is active again under a PID other than old."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        pid = main_pid(box)
        if pid not in (0, old) and show(box, "ActiveState") == "active":
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"no restart within {timeout:.0f} s: {show(box, 'ActiveState')}")


def test_the_unit_starts_and_reports_ready_with_a_status_text(box: Container) -> None:
    assert box.run(["systemctl", "is-active", UNIT]).stdout.strip() == "active"
    # Type=notify: active means systemd received READY=1.
    assert show(box, "Type") == "notify"
    assert re.fullmatch(r"1 monitors, \d+ packets, last flush ok", show(box, "StatusText"))
    assert show(box, "NRestarts") == "0"


def test_status_for_root_and_the_trafmetux_group_refused_for_others(box: Container) -> None:
    pid = main_pid(box)
    assert status(box)["pid"] == pid
    assert status(box, user=MEMBER)["pid"] == pid
    refused = box.run(["trafmetuxctl", "status"], user=OTHER, check=False)
    assert refused.returncode != 0
    assert "/run/trafmetux/trafmetuxd.sock" in refused.stderr, refused.stderr


def test_install_systemd_put_the_manual_pages_and_a_working_completion_in_place(
    box: Container,
) -> None:
    share = "/usr/local/share"
    for page in ("man1/trafmetuxctl.1", "man5/trafmetux.toml.5", "man8/trafmetuxd.8"):
        assert box.sh(f"head -c 4 {share}/man/{page}") == ".TH "
    assert box.sh(f"head -1 {share}/zsh/site-functions/_trafmetuxctl") == "#compdef trafmetuxctl\n"
    script = (
        f"source {share}/bash-completion/completions/trafmetuxctl; "
        "COMP_WORDS=(trafmetuxctl show-daily ''); COMP_CWORD=2; _trafmetuxctl; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    assert box.run(["bash", "-c", script], user=MEMBER).stdout == "all\n"  # from the daemon
    assert box.run(["trafmetuxctl", "--version"]).stdout.startswith("trafmetuxctl ")


def test_hardening_of_the_daemon_and_its_front_as_the_kernel_reports_it(box: Container) -> None:
    uid = box.run(["id", "-u", "trafmetux"]).stdout.strip()
    daemon = proc_status(box, main_pid(box))
    assert daemon["Uid"].split() == [uid] * 4
    assert int(daemon["CapEff"], 16) == CAP_NET_ADMIN_AND_RAW
    assert daemon["NoNewPrivs"] == "1"
    assert daemon["Seccomp"] == "2"
    front_pid = status(box)["front"]
    assert isinstance(front_pid, dict)
    front = proc_status(box, int(front_pid["pid"]))
    assert front["PPid"] == str(main_pid(box))
    assert front["Uid"].split() == [uid] * 4
    assert front["CapEff"] == "0000000000000000"
    assert front["NoNewPrivs"] == "1"
    assert front["Seccomp"] == "2"


def test_the_service_sees_the_system_read_only_and_no_home(box: Container) -> None:
    # The service's own mount namespace, entered as root: only the mount flags stop a write.
    enter = ["nsenter", "-t", str(main_pid(box)), "-m", "--"]
    for path in ("/usr", "/etc", "/opt/trafmetux", "/var/lib"):
        assert box.run([*enter, "test", "-w", path], check=False).returncode != 0, path
    for path in ("/var/lib/trafmetux", "/run/trafmetux", "/var/log/trafmetux"):
        assert box.run([*enter, "test", "-w", path], check=False).returncode == 0, path
    for path in ("/root", "/home"):
        assert box.run([*enter, "stat", "-c", "%a", path]).stdout.strip() == "0", path


def test_metered_bytes_equal_the_kernel_rule_counters(box: Container) -> None:
    before = stored(box)
    traffic(box)
    kernel, meter = settle(box)
    assert kernel[0] > 20 * 1000 and kernel[1] > 20 * 1000 + sum(range(100, 3100, 100))
    assert meter == kernel
    box.run(["trafmetuxctl", "flush"])
    assert stored(box) == (before[0] + kernel[0], before[1] + kernel[1])


def test_reload_rereads_the_config_in_the_same_process(box: Container) -> None:
    pid = main_pid(box)
    box.sh(
        "cat >> /etc/trafmetux/trafmetux.toml <<'END'\n"
        '[[monitor]]\nname = "icmp"\nrules = [{ protocol = "icmp" }]\nEND\n'
    )
    box.run(["systemctl", "reload", UNIT])
    deadline = time.monotonic() + 10
    while status(box)["monitors"] != ["all", "icmp"] and time.monotonic() < deadline:
        time.sleep(0.2)
    reply = status(box)
    assert reply["monitors"] == ["all", "icmp"]
    assert reply["reload_error"] is None
    assert main_pid(box) == pid
    assert show(box, "ActiveState") == "active"


def test_the_watchdog_restarts_a_frozen_daemon(box: Container) -> None:
    watchdog = timespan(show(box, "WatchdogUSec"))
    # After WatchdogSec systemd sends SIGABRT, which a stopped process does not act on, then
    # SIGKILL after TimeoutAbortSec (= TimeoutStopSec), then restarts after RestartSec.
    bound = watchdog + timespan(show(box, "TimeoutAbortUSec")) + timespan(show(box, "RestartUSec"))
    restarts = int(show(box, "NRestarts"))
    pid = main_pid(box)
    box.run(["kill", "-STOP", str(pid)])
    took = wait_active_with_new_pid(box, pid, timeout=bound + 30)
    assert took >= watchdog - 1, "restarted before the watchdog could have fired"
    assert int(show(box, "NRestarts")) == restarts + 1
    journal = box.run(["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"]).stdout
    assert "Watchdog timeout" in journal
    deadline = time.monotonic() + 15
    while len(rules_left(box)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(rules_left(box)) >= 4, "the restarted daemon installed no queue rules"


def test_stop_within_timeoutstopsec_with_a_final_flush_and_no_rules_left(box: Container) -> None:
    box.run(["trafmetuxctl", "flush"])
    before_stored, (before_kernel, _) = stored(box), settle(box)
    box.run(["ping", "-q", "-c", "10", "-i", "0.05", PEER])
    kernel, _meter = settle(box)
    sent = (kernel[0] - before_kernel[0], kernel[1] - before_kernel[1])
    assert sent[0] > 0 and sent[1] > 0
    limit = timespan(show(box, "TimeoutStopUSec"))
    start = time.monotonic()
    box.run(["systemctl", "stop", UNIT], timeout=limit + 30)
    took = time.monotonic() - start
    assert took < limit, f"stop took {took:.1f} s, TimeoutStopSec is {limit:.0f} s"
    assert show(box, "ActiveState") == "inactive"
    assert show(box, "Result") == "success"
    assert rules_left(box) == []
    after = stored(box)
    assert (after[0] - before_stored[0], after[1] - before_stored[1]) == sent
