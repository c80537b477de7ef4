"""Load: SIGHUP every second while traffic flows; overload beyond what the meter can take.

Reloads never cost an unchanged monitor a byte. Overload never costs the network a packet
(fail-open): the kernel lets through what the meter cannot take, status says how much, and
metering is exact again once the load is gone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from harness.live import MONITORS, Live, Stream, expected, fresh_counters
from harness.netns import Pair, sink_result, start_sink, traffic

EXTRA = """
[[monitor]]
name = "tcp"
rules = [{ protocol = "tcp" }]
"""


def reload_under_traffic(pair: Pair, tmp: Path, seconds: int) -> int:
    """SIGHUP once a second for `seconds` while UDP flows both ways; the reloads done."""
    fresh_counters(pair)
    live = Live(pair, tmp)
    live.start()
    flows = [Stream(pair, False, 5001, 600, 800, seconds + 30),
             Stream(pair, True, 5002, 400, 300, seconds + 30)]  # fmt: skip
    reloads = 0
    try:
        for n in range(seconds):
            time.sleep(1.0)
            # Every other reload adds or drops a monitor: the others must count without a gap.
            live.write_config(MONITORS + (EXTRA if n % 2 == 0 else ""))
            live.signal(signal.SIGHUP)
            live.expect("RELOADING=1")
            live.expect("READY=1")
            reloads += 1
        time.sleep(1.0)
    finally:
        for flow in flows:
            flow.stop()
    pair.settle()
    assert live.status()["reload_error"] is None
    a, b, stored = live.totals_after_stop()
    for monitor in ("all", "v4", "udp"):
        assert stored[monitor] == expected(monitor, a, b), monitor
    assert stored["udp"][1] > seconds * 100_000
    return reloads


def test_sighup_every_second_for_5s_keeps_unchanged_monitors_exact(
    pair: Pair, tmp_path: Path
) -> None:
    print("reloads:", reload_under_traffic(pair, tmp_path, 5))


@pytest.mark.long
def test_sighup_every_second_for_30s_keeps_unchanged_monitors_exact(
    pair: Pair, tmp_path: Path
) -> None:
    print("reloads:", reload_under_traffic(pair, tmp_path, 30))


BURST = 30_000  # datagrams per burst: well inside the sink's forced 16 MB buffer


def freeze_cycles(pid: int, stop: threading.Event) -> None:
    """Freeze the capture worker 150 ms out of every 250 ms until told to stop (then thaw it)."""
    for _ in range(100_000):
        if stop.is_set():
            break
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.15)
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.1)


def overload(pair: Pair, tmp: Path, seconds: float) -> dict[str, int]:
    """A flood into a capture worker frozen half of the time; every datagram must arrive."""
    fresh_counters(pair)
    # The freezes are shorter than the stall timeout: the worker is slow, not stalled.
    live = Live(pair, tmp, capture={"queue_maxlen": "64", "stall_timeout": '"10s"'})
    live.start()
    assert live.proc is not None
    before = live.status()["queue"]
    stop = threading.Event()
    (worker,) = live.worker_pids()
    freezer = threading.Thread(target=freeze_cycles, args=(worker, stop), daemon=True)
    sent = delivered = bursts = 0
    deadline = time.monotonic() + seconds
    freezer.start()
    try:
        while time.monotonic() < deadline and bursts < 1000:
            sink = start_sink(pair.a, "udp-sink", "5001", str(BURST), "60")
            traffic(pair.b, "udp-send", pair.a4, "5001", str(BURST), "200", timeout=60)
            delivered += sink_result(sink)
            sent += BURST
            bursts += 1
    finally:
        stop.set()
        freezer.join(timeout=10)
        os.kill(worker, signal.SIGCONT)
    pair.settle()
    status = live.status()
    audit = status["audit"]["in"]  # type: ignore[index]
    after = status["queue"]
    assert delivered == sent  # fail-open: not one datagram dropped on the meter's account
    assert after["queue_dropped"] == before["queue_dropped"]  # type: ignore[index]
    assert after["user_dropped"] == before["user_dropped"]  # type: ignore[index]
    assert audit["unmetered_bytes"] == audit["kernel_bytes"] - audit["metered_bytes"] > 0

    # The load is gone: metering is exact again from here on.
    resumed = live.status()["audit"]["in"]  # type: ignore[index]
    wire = pair.a.nft_counters()
    assert traffic(pair.b, "ping", pair.a4, "20").split() == ["20"]
    pair.settle()
    audit = live.status()["audit"]["in"]  # type: ignore[index]
    now = pair.a.nft_counters()
    wire_bytes = now["ip_all"][1] - wire["ip_all"][1]
    assert audit["metered_bytes"] - resumed["metered_bytes"] == wire_bytes > 0
    assert audit["unmetered_bytes"] == resumed["unmetered_bytes"]
    assert live.terminate() == 0, live.log()
    return {"datagrams": sent, "delivered": delivered, "bursts": bursts,
            "unmetered_bytes": resumed["unmetered_bytes"],
            "metered_bytes": resumed["metered_bytes"]}  # fmt: skip


def test_overload_for_5s_drops_nothing_and_reports_the_unmetered(
    pair: Pair, tmp_path: Path
) -> None:
    print("overload short:", overload(pair, tmp_path, 5.0))


@pytest.mark.long
def test_overload_for_30s_drops_nothing_and_reports_the_unmetered(
    pair: Pair, tmp_path: Path
) -> None:
    print("overload long:", overload(pair, tmp_path, 30.0))
