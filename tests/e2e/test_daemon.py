"""The real trafmetuxd in a namespace: stored totals equal the wire, signals, reload, crash."""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import HERE, MB, PYTHON, ROOT, Pair, mixed_traffic, sink_result, start_sink, traffic

MONITORS = """
[[monitor]]
name = "all"

[[monitor]]
name = "v4"
rules = [{ family = "ipv4" }]

[[monitor]]
name = "tcp6"
rules = [{ family = "ipv6", protocol = "tcp" }]

[[monitor]]
name = "udp"
rules = [{ protocol = "udp" }]

[[monitor]]
name = "icmp"
rules = [{ protocol = "icmp" }]
"""

# Each monitor's expected totals as sums of the harness's nft counters.
NFT_SUMS = {
    "all": ("ip_all", "ip6_all"),
    "v4": ("ip_all",),
    "tcp6": ("ip6_tcp",),
    "udp": ("ip_udp", "ip6_udp"),
    "icmp": ("ip_icmp",),
}
Counters = dict[str, tuple[int, int]]


class Daemon:
    """trafmetuxd started in namespace a with a test config and a test NOTIFY_SOCKET."""

    def __init__(self, pair: Pair, tmp: Path, monitors: str = MONITORS, **capture: str) -> None:
        self.pair = pair
        self.tmp = tmp
        self.config = tmp / "trafmetux.toml"
        self.write_config(monitors, **capture)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = tmp / f"notify-{time.monotonic_ns()}"
        self.notify.bind(str(notify_path))
        self.messages: list[str] = []
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        argv = [PYTHON, "-m", "trafmetuxd", "--config", str(self.config)]
        self.proc = pair.a.popen(argv, env=env, cwd=ROOT)
        self.expect("READY=1", 30.0)

    def write_config(self, monitors: str, **capture: str) -> None:
        """The test configuration: everything below tmp, flush every second."""
        extra = "".join(f"{key} = {value}\n" for key, value in capture.items())
        self.config.write_text(
            f'state_dir = "{self.tmp / "state"}"\n'
            f'socket = "{self.tmp / "trafmetuxd.sock"}"\n'
            f'socket_group = "{grp.getgrgid(os.getgid()).gr_name}"\n'
            'timezone = "UTC"\n'
            'flush_interval = "1s"\n'
            "[capture]\n"
            f'interfaces = ["{self.pair.a_if}"]\n'
            f"{extra}{monitors}"
        )

    def expect(self, message: str, timeout: float = 10.0) -> str:
        """Wait for a notification starting with `message`; every message is kept."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.proc.poll() is not None:
                raise RuntimeError(f"trafmetuxd exited {self.proc.returncode}: {self.stderr()}")
            self.notify.settimeout(min(left, 0.5))
            try:
                got = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(got)
            if got.startswith(message):
                return got
        raise RuntimeError(f"no {message} within {timeout}s; got {self.messages}")

    def drain(self) -> None:
        """Keep the notifications already sent (the daemon has exited)."""
        self.notify.setblocking(False)
        while True:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                return

    def stderr(self) -> str:
        """The daemon's log once it has exited."""
        _out, err = self.proc.communicate(timeout=10)
        return err

    def request(self, cmd: str) -> dict[str, object]:
        """One request on the control socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.tmp / "trafmetuxd.sock"))
            sock.sendall(json.dumps({"v": 1, "cmd": cmd}).encode() + b"\n")
            reply = json.loads(sock.makefile().readline())
        assert reply["ok"], reply
        return reply["result"]  # type: ignore[no-any-return]

    def reload(self, monitors: str) -> str:
        """Rewrite the monitors, SIGHUP, wait for RELOADING then READY; the next STATUS."""
        self.write_config(monitors)
        self.proc.send_signal(signal.SIGHUP)
        self.expect("RELOADING=1")
        self.expect("READY=1")
        return self.expect("STATUS=")

    def terminate(self) -> float:
        """SIGTERM; the seconds it took to exit (asserting exit status 0)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
            elapsed = time.monotonic() - start
            self.drain()
        finally:
            self.notify.close()
        assert self.proc.returncode == 0, self.stderr()
        return elapsed

    def stored(self) -> dict[str, tuple[int, int, int, int]]:
        """Per monitor: (in packets, in bytes, out packets, out bytes) summed over minutes."""
        db = sqlite3.connect(self.tmp / "state" / "trafmetux.sqlite3")
        try:
            rows = db.execute(
                "SELECT name, sum(in_packets), sum(in_bytes), sum(out_packets), sum(out_bytes)"
                " FROM minute_totals JOIN monitor ON monitor.id = minute_totals.monitor"
                " GROUP BY name"
            ).fetchall()
        finally:
            db.close()
        return {name: tuple(values) for name, *values in rows}


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Iterator[Path]:
    """A state directory the namespaced daemon can use."""
    yield tmp_path


def expected(monitor: str, a: Counters, b: Counters) -> tuple[int, int, int, int]:
    """A monitor's totals from the nft counters: a's prerouting is in, b's is out."""
    names = NFT_SUMS[monitor]
    return (
        sum(a[n][0] for n in names),
        sum(a[n][1] for n in names),
        sum(b[n][0] for n in names),
        sum(b[n][1] for n in names),
    )


def diff(after: Counters, before: Counters) -> Counters:
    """Counter increments between two readings."""
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}


def fresh_counters(pair: Pair) -> None:
    """Quiet link, zeroed counters: from here on both sides count the same packets."""
    pair.settle()
    pair.a.reset_counters()
    pair.b.reset_counters()


def test_stored_totals_equal_the_wire_and_sigterm_flushes(pair: Pair, daemon_dir: Path) -> None:
    fresh_counters(pair)
    daemon = Daemon(pair, daemon_dir)
    assert pair.a.iptables_save().count("-j NFQUEUE --queue-num 0 --queue-bypass") == 4

    mixed_traffic(pair, 16 * MB)
    pair.settle()

    assert daemon.terminate() < 5.0
    assert daemon.messages[0] == "READY=1"
    assert daemon.messages[-1] == "STOPPING=1"
    assert any(m.startswith("STATUS=5 monitors") for m in daemon.messages)
    assert "TRAFMETUX" not in pair.a.iptables_save()
    a, b = pair.a.nft_counters(), pair.b.nft_counters()
    stored = daemon.stored()
    for monitor in NFT_SUMS:
        assert stored[monitor] == expected(monitor, a, b), monitor
    assert stored["all"][1] > 2 * 16 * MB  # the bulk transfers are in it


def test_reload_adds_and_removes_monitors_without_a_gap(pair: Pair, daemon_dir: Path) -> None:
    first = MONITORS.split("[[monitor]]")
    all_v4 = "[[monitor]]".join(first[:3])  # "all" and "v4"
    all_udp = "[[monitor]]".join([first[0], first[1], first[4]])  # "all" and "udp"
    fresh_counters(pair)
    daemon = Daemon(pair, daemon_dir, all_v4)

    assert traffic(pair.a, "ping", pair.b4, "5").split() == ["5"]
    pair.settle()
    phase1 = (pair.a.nft_counters(), pair.b.nft_counters())
    daemon.reload(all_udp)

    sink = start_sink(pair.b, "udp-sink", "5001", "30", "10")
    traffic(pair.a, "udp-send", pair.b6, "5001", "30", "300", "1000")
    assert sink_result(sink) == 30
    pair.settle()
    status = daemon.reload("this is not TOML")
    assert "rejected" in status
    assert traffic(pair.a, "ping", pair.b4, "2").split() == ["2"]
    assert daemon.request("status")["reload_error"]
    sink = start_sink(pair.a, "udp-sink", "5002", "10", "10")
    traffic(pair.b, "udp-send", pair.a4, "5002", "10", "100", "1000")
    assert sink_result(sink) == 10
    pair.settle()
    daemon.terminate()

    a, b = pair.a.nft_counters(), pair.b.nft_counters()
    stored = daemon.stored()
    assert stored["all"] == expected("all", a, b)  # counted without a gap across reloads
    assert stored["v4"] == expected("v4", *phase1)  # stopped at the reload, nothing lost
    after = (diff(a, phase1[0]), diff(b, phase1[1]))
    assert stored["udp"] == expected("udp", *after)  # started at zero on the reload


def test_kill_9_mid_transfer_then_restart(pair: Pair, daemon_dir: Path) -> None:
    daemon = Daemon(pair, daemon_dir)
    rules = pair.a.iptables_save().count("TRAFMETUX")
    size = 400 * MB  # long enough to still be running at the crash however fast the meter is
    sink = start_sink(pair.b, "tcp-sink", "6001", "60")
    sender = pair.a.popen(
        pair.a.python(str(HERE / "traffic.py"), "tcp-send", pair.b4, "6001", str(size))
    )
    time.sleep(0.2)
    assert sender.poll() is None, "the transfer ended before the crash; make it longer"
    daemon.proc.kill()
    daemon.proc.wait(timeout=10)
    daemon.notify.close()
    assert sender.wait(timeout=60) == 0  # bypass carried the rest of the transfer
    assert sink_result(sink) == size

    fresh_counters(pair)
    before = daemon.stored().get("icmp", (0, 0, 0, 0))
    restarted = Daemon(pair, daemon_dir)
    assert pair.a.iptables_save().count("TRAFMETUX") == rules  # no duplicates
    assert traffic(pair.a, "ping", pair.b4, "5").split() == ["5"]
    pair.settle()
    restarted.terminate()
    got = restarted.stored()["icmp"]
    a, b = pair.a.nft_counters(), pair.b.nft_counters()
    want = expected("icmp", a, b)
    assert tuple(g - o for g, o in zip(got, before, strict=True)) == want
    assert want[0] == 5


def test_overload_fails_open_and_status_reports_the_unmetered(pair: Pair, daemon_dir: Path) -> None:
    fresh_counters(pair)
    daemon = Daemon(pair, daemon_dir, queue_maxlen="16")
    sink = start_sink(pair.a, "udp-sink", "5001", "20000", "20")
    # A frozen daemon is one that cannot keep up at all: the queue fills after 16 packets.
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        traffic(pair.b, "udp-send", pair.a4, "5001", "20000", "100")
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    # Only the 16 queued packets waited for the thawed daemon; none was dropped.
    assert sink_result(sink) == 20000
    pair.settle()
    status = daemon.request("status")
    audit = status["audit"]["in"]  # type: ignore[index]
    a = pair.a.nft_counters()
    # Non-GSO traffic: the rule counter equals the wire, and the difference is what fail-open
    # let through unmetered.
    wire_packets = a["ip_all"][0] + a["ip6_all"][0]
    wire_bytes = a["ip_all"][1] + a["ip6_all"][1]
    assert (audit["kernel_packets"], audit["kernel_bytes"]) == (wire_packets, wire_bytes)
    assert audit["metered_packets"] <= 16 + 1
    assert audit["unmetered_bytes"] == wire_bytes - audit["metered_bytes"] > 0
    assert status["queue"]["queue_dropped"] == 0  # type: ignore[index]
    daemon.terminate()
