"""The control socket's front process killed under steady traffic: metering never notices.

The front is started again on the same socket (a request made meanwhile waits in the backlog
and is answered), the daemon itself runs on, and after SIGTERM every monitor's stored totals
equal the kernel's counters exactly.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from harness.live import NFT_SUMS, Live, Stream, expected, fresh_counters
from harness.netns import Pair

PPS, SIZE = 800, 600


def kill_fronts(pair: Pair, tmp: Path, kills: int) -> dict[str, object]:
    """kill -9 the front `kills` times under traffic; check each comes back; the figures."""
    fresh_counters(pair)
    live = Live(pair, tmp, flush_interval="1s")
    live.start()
    assert live.proc is not None
    flows = [Stream(pair, False, 5001, PPS, SIZE, kills * 5 + 30),
             Stream(pair, True, 5002, PPS, SIZE, kills * 5 + 30)]  # fmt: skip
    fronts = []
    try:
        for n in range(kills):
            time.sleep(1.0)
            status = live.status()
            front = status["front"]["pid"]  # type: ignore[index]
            assert status["front"]["restarts"] == n  # type: ignore[index]
            assert status["pid"] == live.proc.pid  # the same daemon all along
            fronts.append(front)
            os.kill(front, signal.SIGKILL)  # type: ignore[arg-type]
            # At once: this request waits in the backlog for the next front.
            replaced = live.status()
            assert replaced["socket"]["front_pid"] not in fronts  # type: ignore[index]
        time.sleep(1.0)
    finally:
        for flow in flows:
            flow.stop()
    pair.settle()
    final = live.status()
    assert final["front"]["restarts"] == kills  # type: ignore[index]
    assert final["audit"]["in"]["unmetered_bytes"] == 0  # type: ignore[index]
    a, b, stored = live.totals_after_stop()
    for monitor in NFT_SUMS:
        assert stored.get(monitor, (0, 0, 0, 0)) == expected(monitor, a, b), monitor
    assert stored["udp"][1] > 0 and stored["udp"][3] > 0
    assert "Traceback" not in live.log()
    return {"front_kills": kills, "stored_all": stored["all"]}


def test_front_killed_three_times_under_traffic_meters_exactly(pair: Pair, tmp_path: Path) -> None:
    print("front crash short:", kill_fronts(pair, tmp_path, 3))


@pytest.mark.long
def test_front_killed_ten_times_under_traffic_meters_exactly(pair: Pair, tmp_path: Path) -> None:
    print("front crash long:", kill_fronts(pair, tmp_path, 10))
