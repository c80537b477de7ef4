"""Benchmark 4: how long the packet loop stalls while a flush of 20 x 2000 positions is written.

A feeder on the event loop meters a batch of packets every millisecond, as the capture's
reader does when packets arrive; how late each batch runs is how long its packets would wait
for their verdict. Lags during flushes are compared with lags outside them, in the same run.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import Result, summary, target
from bench.mix import T0, Flow, Item, packet_bytes
from trafmetuxd.daemon import Daemon, tune_switch_interval
from trafmetuxd.spec import DIR_OUT, Config, MonitorSpec

# 32 packets every millisecond: 32,000 packets/s to 20 monitors, about half of one core here.
FULL = {
    "monitors": 20,
    "positions": 2000,
    "flushes": 4,
    "window": 0.5,
    "batch": 32,
    "period": 0.001,
}
SMOKE = {"monitors": 2, "positions": 50, "flushes": 1, "window": 0.02, "batch": 4, "period": 0.001}


def distinct_packets(count: int, offset: int) -> list[Item]:
    """`count` packets of `count` distinct UDP flows (each takes its own position)."""
    out: list[Item] = []
    for i in range(count):
        n = offset + i
        flow = Flow(4, 17, 0x0A000000 + n, 40000 + n % 20000, 0xCB007100 + n % 200, 53, "eth0")
        out.append((T0, packet_bytes(flow, True, 64), DIR_OUT, "eth0"))
    return out


def monitors(count: int, positions: int) -> tuple[MonitorSpec, ...]:
    """`count` monitors that each take every packet, `positions` flow positions each."""
    return tuple(
        MonitorSpec(f"m{i}", collector_size=positions, flush_collector_size=positions)
        for i in range(count)
    )


class Feeder:
    """Meters a batch of packets every `period` seconds on the loop; records each batch's lag.

    The lag of a batch (when it ran minus when it was due) is how long its packets would have
    waited for their verdict because the loop was busy elsewhere.
    """

    def __init__(self, daemon: Daemon, items: Sequence[Item], batch: int, period: float) -> None:
        self.feed = daemon.meter.feed
        self.items = items
        self.batch = batch
        self.period = period
        self.lags: list[float] = []
        self.flush_lags: list[float] = []
        self.flushing = False
        self.running = False
        self._due = 0.0
        self._at = 0

    def start(self) -> None:
        """Begin feeding at once."""
        loop = asyncio.get_running_loop()
        self.running = True
        self._due = loop.time()
        loop.call_at(self._due, self.step)

    def step(self) -> None:
        """One batch; note how late it ran."""
        loop = asyncio.get_running_loop()
        (self.flush_lags if self.flushing else self.lags).append(loop.time() - self._due)
        feed, items = self.feed, self.items
        for _ in range(self.batch):
            ts, buf, direction, iface = items[self._at]
            feed(ts, buf, direction, iface)
            self._at = (self._at + 1) % len(items)
        # The next batch is due one period after this one was due: a late batch is not excused.
        self._due = max(self._due + self.period, loop.time() - 1.0)
        if self.running:
            loop.call_at(self._due, self.step)


async def _one_flush(daemon: Daemon, feeder: Feeder, window: float) -> float:
    await asyncio.sleep(window)
    feeder.flushing = True
    start = time.perf_counter()
    result = await daemon.flush()
    took = time.perf_counter() - start
    feeder.flushing = False
    await asyncio.sleep(window)
    if not result["flushed"]:
        raise RuntimeError(f"flush failed: {result['error']}")
    return took


async def _run(daemon: Daemon, size: dict[str, float]) -> tuple[Feeder, list[float]]:
    positions = int(size["positions"])
    steady = distinct_packets(positions, 0)
    feeder = Feeder(daemon, steady, int(size["batch"]), size["period"])
    durations = []
    for round_ in range(int(size["flushes"])):
        # Fill every monitor's positions with flows of its own round, then keep feeding.
        for ts, buf, direction, iface in distinct_packets(positions, positions * (round_ + 1)):
            daemon.meter.feed(ts, buf, direction, iface)
        feeder.start()
        durations.append(await _one_flush(daemon, feeder, size["window"]))
        feeder.running = False
        await asyncio.sleep(0.01)
    return feeder, durations


def _loop_part_seconds(daemon: Daemon, positions: int) -> tuple[float, float]:
    """Time the two halves of a flush's preparation: the swap (on the loop thread) and the
    merge into the flush collectors (in the flush worker thread)."""
    for ts, buf, direction, iface in distinct_packets(positions, 10**6):
        daemon.meter.feed(ts, buf, direction, iface)
    start = time.perf_counter()
    batches = daemon.meter.swap()
    swapped = time.perf_counter()
    daemon.flusher.absorb(batches)
    return swapped - start, time.perf_counter() - swapped


def run(scale: str = "full") -> Result:
    """Flush 20 monitors x 2000 positions several times under packet load; lag statistics."""
    size = FULL if scale == "full" else SMOKE
    with tempfile.TemporaryDirectory(prefix="tmx-bench-flush-") as tmp:
        cfg = Config(
            path=Path(tmp) / "bench.toml",
            state_dir=Path(tmp),
            timezone="UTC",
            monitors=monitors(int(size["monitors"]), int(size["positions"])),
        )
        daemon = Daemon(cfg)
        tune_switch_interval()  # as the service does at start
        try:
            feeder, durations = asyncio.run(_run(daemon, size))
            flows = daemon.store.flows("m0", 0, 2**40)
            swap, absorb = _loop_part_seconds(daemon, int(size["positions"]))
        finally:
            daemon.close()
    ms = 1000.0
    during = summary([g * ms for g in feeder.flush_lags])
    idle = summary([g * ms for g in feeder.lags])
    return {
        "params": size,
        "flush_seconds": summary(durations),
        "stored_positions_m0": len(flows),
        # The flush's work on the loop thread (swap) and its merge in the worker thread.
        "swap_ms_on_loop": round(swap * ms, 3),
        "absorb_ms_in_thread": round(absorb * ms, 2),
        "lag_ms_during_flush": during,
        "lag_ms_without_flush": idle,
        "targets": [target("longest verdict delay during a flush", during["max"], "<=", 5.0, "ms")],
    }
