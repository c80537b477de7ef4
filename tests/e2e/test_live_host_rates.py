"""live --hosts against the real daemon in a namespace: the hosts' rates are the totals' rates."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness.daemon import Daemon, fresh_counters
from harness.netns import HERE, Pair, sink_result, start_sink

MONITORS = """
[[monitor]]
name = "lan"
hosts = ["10.231.0.0/24"]

[[monitor]]
name = "plain"
"""


def steady_readings(daemon: Daemon, tries: int = 40) -> tuple[dict[str, object], list[float]]:
    """live --hosts lan between two equal live readings of lan (no sample taken in between)."""
    for _ in range(tries):
        before = daemon.request("live", monitors=["lan"])["result"]
        hosts = daemon.request("live", hosts="lan")["result"]
        after = daemon.request("live", monitors=["lan"])["result"]
        lan = before["rates"]["lan"]  # type: ignore[index]
        if before == after and lan[1] > 0:
            return hosts, lan  # type: ignore[return-value]
        time.sleep(0.13)
    raise AssertionError("no two equal live readings while the traffic flowed")


def test_live_host_rates_are_the_monitors_rates_of_the_same_packets(
    pair: Pair, tmp_path: Path
) -> None:
    fresh_counters(pair)
    daemon = Daemon(pair, tmp_path, MONITORS, flush_interval="2s").start()
    sink = start_sink(pair.b, "udp-sink", "5001", "600", "30")
    # 600 datagrams of 1000 B at 100 a second: six seconds of a steady stream from a to b
    sender = pair.a.popen(pair.a.python(str(HERE / "traffic.py"),
                          "udp-send", pair.b4, "5001", "600", "1000", "100"),
                          stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(3.0)  # a full sampling window of the stream
        hosts, lan = steady_readings(daemon)
    finally:
        sender.wait(30)
    assert sink_result(sink) == 600
    entries = hosts["hosts"]
    assert isinstance(entries, list)
    got = {e["host"]: (e["in"], e["out"]) for e in entries}
    # leaving namespace a the stream is the monitor's out; it is b's in and a's out, exactly
    assert got == {pair.b4: (lan[1], 0.0), pair.a4: (0.0, lan[1])}
    assert 1028 * 100 * 0.5 < lan[1] < 1028 * 100 * 1.5  # about 100 datagrams of 1028 B a second
    error = daemon.request("live", hosts="plain")
    assert error["error"] == {"code": "bad_argument",
                              "message": "live: monitor 'plain' has no `hosts`"}  # fmt: skip
    daemon.stop()
