"""Benchmark 5: resident memory with 20 monitors x 65,536 flow positions full.

Measured in a fresh interpreter (`python -m bench.memory CHILD MONITORS POSITIONS`) so that
nothing else in the benchmark run inflates it: VmRSS after importing the daemon's modules is
the baseline, then again with every realtime position full, then with the flush collectors
holding a full set too (what a write that keeps failing, or a slow one, leaves in memory).
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys

from bench.common import PYTHON, ROOT, Result, rss_kib, target

FULL = {"monitors": 20, "positions": 65_536}
SMOKE = {"monitors": 2, "positions": 500}
CHILD = "child"


def _fill(meter: object, positions: int, rng: random.Random) -> int:
    """Feed new flows of the mix until every monitor's positions are taken; packets fed."""
    from bench.mix import make_flow, packet_bytes
    from trafmetuxd.meter import Meter
    from trafmetuxd.spec import DIR_OUT

    assert isinstance(meter, Meter)
    first = meter.collectors[0]
    fed = 0
    while first.positions_used < positions:
        flow = make_flow(rng)
        meter.feed(1_767_225_600.0, packet_bytes(flow, True, 64), DIR_OUT, flow.iface)
        fed += 1
    return fed


def child(monitors: int, positions: int) -> dict[str, int]:
    """Run in the fresh process: RSS (KiB) at each stage."""
    from trafmetuxd.collector import FlushCollector
    from trafmetuxd.flush import Flusher  # noqa: F401  (the daemon's modules, imported)
    from trafmetuxd.meter import Meter
    from trafmetuxd.spec import MonitorSpec

    gc.collect()
    base = rss_kib()
    specs = tuple(
        MonitorSpec(f"m{i}", collector_size=positions, flush_collector_size=positions)
        for i in range(monitors)
    )
    meter = Meter(specs)
    rng = random.Random(7)
    fed = _fill(meter, positions, rng)
    gc.collect()
    realtime = rss_kib()
    held = [FlushCollector(positions) for _ in specs]
    for coll, (_name, snap) in zip(held, meter.swap(), strict=True):
        coll.merge(snap)
    fed += _fill(meter, positions, rng)
    gc.collect()
    both = rss_kib()
    return {"baseline_kib": base, "realtime_full_kib": realtime, "both_full_kib": both, "fed": fed}


def run(scale: str = "full") -> Result:
    """Measure in a child interpreter; RSS figures in MiB."""
    size = FULL if scale == "full" else SMOKE
    argv = [PYTHON, "-m", "bench.memory", CHILD, str(size["monitors"]), str(size["positions"])]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    kib = json.loads(out.stdout)
    mib = {k.replace("_kib", "_mib"): round(v / 1024, 1) for k, v in kib.items() if "kib" in k}
    realtime = mib["realtime_full_mib"]
    return {
        "params": size,
        "packets_fed": kib["fed"],
        **mib,
        "realtime_over_baseline_mib": round(realtime - mib["baseline_mib"], 1),
        "both_over_baseline_mib": round(mib["both_full_mib"] - mib["baseline_mib"], 1),
        "bytes_per_position": round(
            (kib["realtime_full_kib"] - kib["baseline_kib"])
            * 1024
            / (size["monitors"] * size["positions"])
        ),
        "targets": [
            target("RSS, realtime positions full", realtime, "<=", 200.0, "MiB"),
            target(
                "RSS, realtime + flush positions full", mib["both_full_mib"], "<=", 200.0, "MiB"
            ),
        ],
    }


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == CHILD:
    print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]))))
