"""Crashes under steady traffic: kill -9 at random moments and at flush time, restart each time.

Nothing committed is ever lost or counted twice: for every monitor the stored totals never
exceed the kernel's counters, and what is missing is at most about one flush interval of
traffic per crash. SIGTERM restarts lose nothing at all.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from harness.live import NFT_SUMS, Live, Stream, expected, fresh_counters
from harness.netns import Pair

FLUSH = 1.0  # seconds: many flushes per life, so some kills land on one
PPS_IN, SIZE_IN = 800, 900
PPS_OUT, SIZE_OUT = 500, 300


def streams(pair: Pair, seconds: float) -> list[Stream]:
    """Steady UDP both ways across the metered interface (bounded in count and time)."""
    return [
        Stream(pair, False, 5001, PPS_IN, SIZE_IN, seconds),
        Stream(pair, True, 5002, PPS_OUT, SIZE_OUT, seconds),
    ]


def wait_for_flush(live: Live) -> float:
    """Wait for the STATUS the daemon sends after each flush; the monotonic time it came."""
    live.expect("STATUS=", 5.0)
    return time.monotonic()


def run_crashes(pair: Pair, tmp: Path, kills: int, seed: int) -> dict[str, float]:
    """kill -9 `kills` times under traffic, restart each time, then SIGTERM; the figures."""
    rng = random.Random(seed)
    fresh_counters(pair)
    live = Live(pair, tmp, flush_interval=f"{FLUSH}s")
    live.start()
    flows = streams(pair, seconds=kills * 6 + 30)
    active = 0.0
    try:
        for n in range(kills):
            began = time.monotonic()
            if n % 2:
                # Aim at the flush write: the next flush is FLUSH after the last STATUS.
                last = wait_for_flush(live)
                time.sleep(max(0.0, last + FLUSH + rng.uniform(-0.005, 0.03) - time.monotonic()))
            else:
                time.sleep(rng.uniform(0.3, 2.5))
            live.kill9()
            for flow in flows:
                flow.pause()  # nothing crosses the link while no daemon meters it
            active += time.monotonic() - began
            live.start()
            for flow in flows:
                flow.resume()
        began = time.monotonic()
        time.sleep(rng.uniform(0.5, 1.5))
    finally:
        for flow in flows:
            flow.stop()
    active += time.monotonic() - began
    pair.settle()
    a, b, stored = live.totals_after_stop()
    figures: dict[str, float] = {"crashes": kills, "seconds_metered": round(active, 1)}
    for monitor in NFT_SUMS:
        kernel = expected(monitor, a, b)
        got = stored.get(monitor, (0, 0, 0, 0))
        for field, (k, s) in enumerate(zip(kernel, got, strict=True)):
            assert s <= k, f"{monitor}[{field}]: stored {s} > kernel {k}: counted twice"
        kernel_bytes, stored_bytes = kernel[1] + kernel[3], got[1] + got[3]
        per_interval = kernel_bytes / active * FLUSH
        lost = kernel_bytes - stored_bytes
        # One interval per crash, plus the packets sent between a kill and the pause.
        assert lost <= kills * per_interval * 1.25, (monitor, lost, per_interval)
        if per_interval:
            figures[f"{monitor}_lost_intervals_per_crash"] = round(lost / per_interval / kills, 2)
        figures[f"{monitor}_kernel_bytes"] = kernel_bytes
    assert "Traceback" not in live.log()
    return figures


def test_kill_9_three_times_under_traffic_loses_at_most_a_flush_each(
    pair: Pair, tmp_path: Path
) -> None:
    figures = run_crashes(pair, tmp_path, kills=3, seed=3)
    print("crash short:", figures)


@pytest.mark.long
def test_kill_9_twelve_times_under_traffic_loses_at_most_a_flush_each(
    pair: Pair, tmp_path: Path
) -> None:
    figures = run_crashes(pair, tmp_path, kills=12, seed=12)
    print("crash long:", figures)


def test_sigterm_restarts_under_traffic_lose_nothing(pair: Pair, tmp_path: Path) -> None:
    fresh_counters(pair)
    live = Live(pair, tmp_path, flush_interval=f"{FLUSH}s")
    live.start()
    flows = streams(pair, seconds=60)
    # Packets the kernel sends on its own while no daemon runs (neighbour discovery, ...) are
    # not the meter's to count: they are read off the counters across each restart.
    gaps = dict.fromkeys(NFT_SUMS, (0, 0, 0, 0))
    try:
        for pause in (0.7, 1.3, 2.1):
            time.sleep(pause)
            for flow in flows:
                flow.pause()
            pair.settle(quiet=0.3)
            before = pair.a.nft_counters(), pair.b.nft_counters()
            assert live.terminate() == 0, live.log()
            live.start()
            after = pair.a.nft_counters(), pair.b.nft_counters()
            for monitor in NFT_SUMS:
                gap = minus(expected(monitor, *after), expected(monitor, *before))
                gaps[monitor] = plus(gaps[monitor], gap)
            for flow in flows:
                flow.resume()
        time.sleep(1.0)
    finally:
        for flow in flows:
            flow.stop()
    pair.settle()
    a, b, stored = live.totals_after_stop()
    for monitor in NFT_SUMS:
        want = minus(expected(monitor, a, b), gaps[monitor])
        assert stored.get(monitor, (0, 0, 0, 0)) == want, monitor
    assert stored["udp"][1] > 0 and stored["udp"][3] > 0
    print("sigterm restarts:", stored["all"], "unmetered while down:", gaps["all"])


def minus(x: tuple[int, ...], y: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Fieldwise difference of two totals."""
    return tuple(i - j for i, j in zip(x, y, strict=True))  # type: ignore[return-value]


def plus(x: tuple[int, ...], y: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Fieldwise sum of two totals."""
    return tuple(i + j for i, j in zip(x, y, strict=True))  # type: ignore[return-value]
