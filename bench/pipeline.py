"""Benchmark 1: parse + classify + collect in process, against baselines from the same run."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence

from bench.common import Result, target
from bench.mix import Item, one_monitor, packets, twenty_monitors
from trafmetuxd import rules
from trafmetuxd.meter import Meter
from trafmetuxd.packet import parse

FULL = {"packets": 200_000, "flows": 10_000, "repeats": 5}
SMOKE = {"packets": 2_000, "flows": 200, "repeats": 1}


def _noop(ts: float, buf: bytes, direction: int, iface: str) -> None:
    """The cheapest possible per-packet call: what any Python callback costs at least."""


def time_noop(items: Sequence[Item]) -> int:
    """Nanoseconds for a bare loop calling a no-op with feed's arguments."""
    noop = _noop
    start = time.perf_counter_ns()
    for ts, buf, direction, iface in items:
        noop(ts, buf, direction, iface)
    return time.perf_counter_ns() - start


def time_parse(items: Sequence[Item]) -> int:
    """Nanoseconds for parse() alone."""
    start = time.perf_counter_ns()
    for _ts, buf, _direction, _iface in items:
        parse(buf)
    return time.perf_counter_ns() - start


def classify_timer(monitors: Sequence[object]) -> Callable[[Sequence[Item]], int]:
    """A timer for parse() + Classifier.match() without collecting."""
    match = rules.compile(monitors).match  # type: ignore[arg-type]

    def run(items: Sequence[Item]) -> int:
        start = time.perf_counter_ns()
        for _ts, buf, direction, iface in items:
            pkt = parse(buf)
            if pkt is not None:
                match(pkt, direction, iface)
        return time.perf_counter_ns() - start

    return run


def feed_timer(meter: Meter) -> Callable[[Sequence[Item]], int]:
    """A timer for the whole per-packet pipeline, Meter.feed."""
    feed = meter.feed

    def run(items: Sequence[Item]) -> int:
        start = time.perf_counter_ns()
        for ts, buf, direction, iface in items:
            feed(ts, buf, direction, iface)
        return time.perf_counter_ns() - start

    return run


def measure(
    run: Callable[[Sequence[Item]], int], items: Sequence[Item], repeats: int
) -> dict[str, float]:
    """Warm up once (caches, flow positions), then time `repeats` passes: ns/packet and pps."""
    run(items)
    per_packet = [run(items) / len(items) for _ in range(repeats)]
    best = min(per_packet)
    return {
        "ns_per_packet": round(best, 1),
        "ns_per_packet_median": round(statistics.median(per_packet), 1),
        "packets_per_second": round(1e9 / best),
        "runs_ns_per_packet": [round(x, 1) for x in per_packet],
    }


def _pin_one_core() -> int | None:
    """Run on one core (the last), as the daemon's single thread does; None if not allowed."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
        return cpus[-1]
    except (AttributeError, OSError):
        return None


def run(scale: str = "full") -> Result:
    """Time every stage over the same pre-generated packets."""
    size = FULL if scale == "full" else SMOKE
    items = packets(size["packets"], size["flows"])
    gc.collect()
    gc.freeze()  # the generated packets are not the daemon's: keep them out of gc passes
    previous = os.sched_getaffinity(0)
    core = _pin_one_core()
    try:
        stages = _stages(items, size["repeats"])
    finally:
        os.sched_setaffinity(0, previous)
        gc.unfreeze()
    noop = stages["noop_call"]["ns_per_packet"]
    for stage in stages.values():
        stage["x_noop"] = round(stage["ns_per_packet"] / noop, 2)
    pps20 = stages["feed_20_monitors"]["packets_per_second"]
    pps1 = stages["feed_1_monitor"]["packets_per_second"]
    return {
        "params": {**size, "core": core, "imix": "7:4:1 of 64/576/1500", "copy_range": 128},
        "stages": stages,
        "targets": [
            target("pipeline, 20 monitors", pps20, ">=", 1_000_000, "packets/s"),
            target("pipeline, 1 monitor", pps1, ">=", 2_000_000, "packets/s"),
        ],
    }


def _stages(items: Sequence[Item], repeats: int) -> dict[str, dict[str, float]]:
    twenty = twenty_monitors()
    one = one_monitor()
    return {
        "noop_call": measure(time_noop, items, repeats),
        "parse": measure(time_parse, items, repeats),
        "parse_classify_20": measure(classify_timer(twenty), items, repeats),
        "feed_1_monitor": measure(feed_timer(Meter(one)), items, repeats),
        "feed_20_monitors": measure(feed_timer(Meter(twenty)), items, repeats),
    }
