"""Benchmark: what quota enforcement costs the capture worker's batch path, as ratios to a
baseline measured in the same run over the same batches.

baseline: the batch path as it was before enforcement (one accept for the highest id, then
meter). no_enforcing_quota: the worker's real path (Capture.handle_batch) with no quota that
blocks or marks, the configuration nearly everyone runs: it must cost nothing measurable.
The enforcing stages judge every packet first: under the limit (bytes left are spent), and
over it (the "wifi" monitor's packets dropped). The verdicts go to a socket that only counts
them: the system call is the same for every stage and would only dilute the ratios.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence

from bench.common import Result, target
from bench.mix import Item, packets, twenty_monitors
from bench.pipeline import IFINDEX, SLOT, _pin_one_core, batches, measure
from trafmetuxd import enforce, nfqconfig
from trafmetuxd.capture import Capture
from trafmetuxd.enforce import Enforcer, Over
from trafmetuxd.meter import Meter
from trafmetuxd.nfbatch import BatchStats, feed_batch, last_packet_id
from trafmetuxd.spec import CaptureSpec, QuotaSpec

FULL = {"packets": 200_000, "flows": 10_000, "repeats": 5}
SMOKE = {"packets": 2_000, "flows": 200, "repeats": 1}
NAMES = {index: name for name, index in IFINDEX.items()}
QUOTA = QuotaSpec("wifi-cap", ("wifi",), limit=1 << 40, action="block")


class CountingSocket:
    """Where the verdicts go: counted, not sent."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, data: bytes) -> int:
        """Take a message (or several) as the netlink socket would."""
        self.sent += 1
        return len(data)


def baseline_timer(items: Sequence[Item]) -> Callable[[Sequence[Item]], int]:
    """The batch path before enforcement: accept up to the highest id, then meter."""
    reads = batches(items)
    meter, stats, sock = Meter(twenty_monitors()), BatchStats(), CountingSocket()

    def run(_items: Sequence[Item]) -> int:
        start = time.perf_counter_ns()
        for ts, buf, count in reads:
            sock.send(nfqconfig.verdict_batch_message(0, last_packet_id(buf, count, SLOT), 1))
            feed_batch(meter, stats, ts, buf, count, SLOT, NAMES, str)
        return time.perf_counter_ns() - start

    return run


def capture_timer(items: Sequence[Item], state: str) -> Callable[[Sequence[Item]], int]:
    """Capture.handle_batch with no enforcing quota, or one "under" or "over" its limit."""
    reads = batches(items)
    meter, stats = Meter(twenty_monitors()), BatchStats()

    def consume(ts: float, buf: bytes, count: int, slot: int) -> None:
        feed_batch(meter, stats, ts, buf, count, slot, NAMES, str)

    capture = Capture(CaptureSpec(), 0, consume)
    sock = CountingSocket()
    if state != "none":
        enforcer = Enforcer()
        enforcer.configure(meter.monitors, [QUOTA])

        def judge(buf: bytes, count: int, slot: int) -> bytes:
            return enforce.judge_batch(enforcer, 0, buf, count, slot, NAMES, str)

        capture.judge = judge

    def run(_items: Sequence[Item]) -> int:
        if state != "none":  # every pass starts from the same state
            over = {QUOTA.name: Over(all=True)} if state == "over" else {}
            enforcer.told(over, {} if state == "over" else {QUOTA.name: QUOTA.limit})
        start = time.perf_counter_ns()
        for _ts, buf, count in reads:
            capture.handle_batch(sock, buf, count, SLOT)  # type: ignore[arg-type]
        return time.perf_counter_ns() - start

    return run


def run(scale: str = "full") -> Result:
    """Time the four stages over the same batches, on one core."""
    size = FULL if scale == "full" else SMOKE
    items = packets(size["packets"], size["flows"])
    gc.collect()
    gc.freeze()
    previous = os.sched_getaffinity(0)
    core = _pin_one_core()
    try:
        stages = {
            "baseline": measure(baseline_timer(items), items, size["repeats"]),
            "no_enforcing_quota": measure(capture_timer(items, "none"), items, size["repeats"]),
            "enforcing_under_limit": measure(capture_timer(items, "under"), items,
                                             size["repeats"]),
            "enforcing_over_limit": measure(capture_timer(items, "over"), items, size["repeats"]),
        }  # fmt: skip
    finally:
        os.sched_setaffinity(0, previous)
        gc.unfreeze()
    base = stages["baseline"]["ns_per_packet"]
    for stage in stages.values():
        stage["x_baseline"] = round(stage["ns_per_packet"] / base, 3)
    ratio = stages["no_enforcing_quota"]["x_baseline"]
    return {
        "params": {**size, "core": core, "monitors": 20, "quota": "block on 'wifi'"},
        "stages": stages,
        "targets": [target("no enforcing quota / baseline", ratio, "<=", 1.05, "x")],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(os.environ.get("BENCH_SCALE", "full")), indent=1))
