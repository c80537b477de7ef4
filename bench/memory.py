"""Benchmark 5: resident memory with 20 monitors x 65,536 flow positions full.

A running daemon is three processes, each measured in a fresh interpreter of its own
(`python -m bench.memory ROLE MONITORS POSITIONS`) with what that process imports: the capture
worker with every realtime position full, the main process with every flush position full
(what a write that keeps failing, or a slow one, leaves in memory), the front idle. VmRSS after
the imports is each one's baseline.
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


def _specs(monitors: int, positions: int) -> tuple[object, ...]:
    from trafmetuxd.spec import MonitorSpec

    return tuple(
        MonitorSpec(f"m{i}", collector_size=positions, flush_collector_size=positions)
        for i in range(monitors)
    )


def worker_child(monitors: int, positions: int) -> dict[str, int]:
    """The capture worker's modules, then every realtime position full: RSS in KiB."""
    import trafmetuxd.worker  # noqa: F401  (what the worker process imports)
    from trafmetuxd.meter import Meter

    gc.collect()
    base = rss_kib()
    meter = Meter(_specs(monitors, positions))  # type: ignore[arg-type]
    fed = _fill(meter, positions, random.Random(7))
    gc.collect()
    return {"baseline_kib": base, "full_kib": rss_kib(), "fed": fed}


def main_child(monitors: int, positions: int) -> dict[str, int]:
    """The main process's modules, then every flush position full (as shipments merge in)."""
    import trafmetuxd.service  # noqa: F401  (what the main process imports)
    from bench.mix import make_flow
    from trafmetuxd.collector import FlushCollector, Snapshot

    gc.collect()
    base = rss_kib()
    rng = random.Random(7)
    held = [FlushCollector(positions) for _ in range(monitors)]
    flows = {}
    while len(flows) < positions:  # the keys one shipment brings, as the worker built them
        flow = make_flow(rng)
        key = (flow.family, flow.proto, flow.client, 65535, flow.server, flow.server_port)
        flows[key] = [64, 0, 1]
    for coll in held:
        coll.merge(Snapshot({29_000_000: [0, 0, 64 * positions, positions]}, flows, 0))
    del flows
    gc.collect()
    return {"baseline_kib": base, "full_kib": rss_kib(), "fed": positions}


def front_child(monitors: int, positions: int) -> dict[str, int]:
    """The front process's modules, idle."""
    import trafmetuxd.front  # noqa: F401

    gc.collect()
    return {"baseline_kib": rss_kib(), "full_kib": rss_kib(), "fed": 0}


ROLES = {"worker": worker_child, "main": main_child, "front": front_child}


def _role(role: str, size: dict[str, int]) -> dict[str, int]:
    argv = [PYTHON, "-m", "bench.memory", role, str(size["monitors"]), str(size["positions"])]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def run(scale: str = "full") -> Result:
    """Measure each process's role in a child interpreter; RSS figures in MiB."""
    size = FULL if scale == "full" else SMOKE
    roles = {role: _role(role, size) for role in ROLES}
    worker, main, front = roles["worker"], roles["main"], roles["front"]
    positions = size["monitors"] * size["positions"]
    realtime_total = _mib(worker["full_kib"] + main["baseline_kib"] + front["full_kib"])
    both_total = _mib(worker["full_kib"] + main["full_kib"] + front["full_kib"])
    return {
        "params": size,
        "packets_fed": worker["fed"],
        "processes_mib": {
            role: {"baseline": _mib(r["baseline_kib"]), "full": _mib(r["full_kib"])}
            for role, r in roles.items()
        },
        "realtime_total_mib": realtime_total,
        "both_total_mib": both_total,
        "bytes_per_realtime_position": round(
            (worker["full_kib"] - worker["baseline_kib"]) * 1024 / positions
        ),
        "bytes_per_flush_position": round(
            (main["full_kib"] - main["baseline_kib"]) * 1024 / positions
        ),
        "targets": [
            target(
                "RSS, all processes, realtime positions full", realtime_total, "<=", 200.0, "MiB"
            ),
            target(
                "RSS, all processes, realtime + flush positions full",
                both_total,
                "<=",
                200.0,
                "MiB",
            ),
        ],
    }


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] in ROLES:
    print(json.dumps(ROLES[sys.argv[1]](int(sys.argv[2]), int(sys.argv[3]))))
