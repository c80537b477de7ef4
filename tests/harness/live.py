"""The reliability suites' daemon (harness/daemon.py) with their monitors, and paced streams.

The launcher is shared with the e2e tests; here it meters four monitors and is restarted on the
same state directory any number of times.
"""

from __future__ import annotations

import os
import signal

from . import daemon
from .daemon import expected, fresh_counters
from .netns import Pair

# The e2e monitors without "tcp6": the four these suites meter and check.
MONITORS = "[[monitor]]".join(
    block for block in daemon.MONITORS.split("[[monitor]]") if 'name = "tcp6"' not in block
)
# Each monitor's expected totals as sums of the harness's nft counters.
NFT_SUMS = {name: sums for name, sums in daemon.NFT_SUMS.items() if name != "tcp6"}
__all__ = ["MONITORS", "NFT_SUMS", "Live", "Stream", "expected", "fresh_counters"]


class Live(daemon.Daemon):
    """The shared launcher metering the four monitors above unless told otherwise."""

    monitors = MONITORS


class Stream:
    """A paced UDP stream from one namespace to the other, pausable (SIGSTOP/SIGCONT)."""

    def __init__(self, pair: Pair, a_to_b: bool, port: int, pps: int, size: int, seconds: float):
        sender, receiver = (pair.a, pair.b) if a_to_b else (pair.b, pair.a)
        addr = pair.b4 if a_to_b else pair.a4
        count = int(pps * seconds)
        from .netns import HERE, start_sink

        self.sink = start_sink(receiver, "udp-sink", str(port), str(count), str(seconds + 120))
        self.proc = sender.popen(
            sender.python(str(HERE / "traffic.py"), "udp-send", addr, str(port), str(count),
                          str(size), str(pps))
        )  # fmt: skip

    def pause(self) -> None:
        """Freeze the sender (nothing crosses the link while the daemon is down)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let the sender go on at its pace."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """End the stream early (bounded runs) and the sink with it."""
        for proc in (self.proc, self.sink):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.communicate(timeout=10)
