"""The real trafmetuxd in a namespace: stored totals equal the wire, signals, reload, crash."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.daemon import MONITORS, NFT_SUMS, Counters, Daemon, expected, fresh_counters
from harness.netns import HERE, MB, Pair, mixed_traffic, sink_result, start_sink, traffic


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Iterator[Path]:
    """A state directory the namespaced daemon can use."""
    yield tmp_path


def diff(after: Counters, before: Counters) -> Counters:
    """Counter increments between two readings."""
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}


def test_stored_totals_equal_the_wire_and_sigterm_flushes(pair: Pair, daemon_dir: Path) -> None:
    fresh_counters(pair)
    daemon = Daemon(pair, daemon_dir).start()
    assert pair.a.iptables_save().count("-j NFQUEUE --queue-num 0 --queue-bypass") == 4

    mixed_traffic(pair, 16 * MB)
    pair.settle()

    assert daemon.stop() < 5.0
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
    daemon = Daemon(pair, daemon_dir, all_v4).start()

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
    assert daemon.status()["reload_error"]
    sink = start_sink(pair.a, "udp-sink", "5002", "10", "10")
    traffic(pair.b, "udp-send", pair.a4, "5002", "10", "100", "1000")
    assert sink_result(sink) == 10
    pair.settle()
    daemon.stop()

    a, b = pair.a.nft_counters(), pair.b.nft_counters()
    stored = daemon.stored()
    assert stored["all"] == expected("all", a, b)  # counted without a gap across reloads
    assert stored["v4"] == expected("v4", *phase1)  # stopped at the reload, nothing lost
    after = (diff(a, phase1[0]), diff(b, phase1[1]))
    assert stored["udp"] == expected("udp", *after)  # started at zero on the reload


def test_kill_9_mid_transfer_then_restart(pair: Pair, daemon_dir: Path) -> None:
    daemon = Daemon(pair, daemon_dir).start()
    rules = pair.a.iptables_save().count("TRAFMETUX")
    size = 400 * MB  # long enough to still be running at the crash however fast the meter is
    sink = start_sink(pair.b, "tcp-sink", "6001", "60")
    sender = pair.a.popen(
        pair.a.python(str(HERE / "traffic.py"), "tcp-send", pair.b4, "6001", str(size))
    )
    time.sleep(0.2)
    assert sender.poll() is None, "the transfer ended before the crash; make it longer"
    daemon.kill9()
    assert sender.wait(timeout=60) == 0  # bypass carried the rest of the transfer
    assert sink_result(sink) == size

    fresh_counters(pair)
    before = daemon.stored().get("icmp", (0, 0, 0, 0))
    restarted = Daemon(pair, daemon_dir).start()
    assert pair.a.iptables_save().count("TRAFMETUX") == rules  # no duplicates
    assert traffic(pair.a, "ping", pair.b4, "5").split() == ["5"]
    pair.settle()
    restarted.stop()
    got = restarted.stored()["icmp"]
    a, b = pair.a.nft_counters(), pair.b.nft_counters()
    want = expected("icmp", a, b)
    assert tuple(g - o for g, o in zip(got, before, strict=True)) == want
    assert want[0] == 5


def test_overload_fails_open_and_status_reports_the_unmetered(pair: Pair, daemon_dir: Path) -> None:
    fresh_counters(pair)
    capture = {"queue_maxlen": "16", "stall_timeout": '"60s"'}  # no stall guard in this one
    daemon = Daemon(pair, daemon_dir, capture=capture).start()
    sink = start_sink(pair.a, "udp-sink", "5001", "20000", "20")
    # A frozen capture worker is one that cannot keep up at all: the queue fills after 16.
    (worker,) = daemon.worker_pids()
    os.kill(worker, signal.SIGSTOP)
    try:
        traffic(pair.b, "udp-send", pair.a4, "5001", "20000", "100")
    finally:
        os.kill(worker, signal.SIGCONT)
    # Only the 16 queued packets waited for the thawed daemon; none was dropped.
    assert sink_result(sink) == 20000
    pair.settle()
    status = daemon.status()
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
    daemon.stop()
