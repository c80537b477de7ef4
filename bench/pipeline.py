"""Benchmark 1: parse + classify + collect in process, against baselines from the same run."""

from __future__ import annotations

import gc
import os
import statistics
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import Result, target
from bench.mix import Item, one_hosts_monitor, one_monitor, packets, twenty_monitors
from trafmetuxd import pcap, rules
from trafmetuxd.meter import LocalNetworks, Meter
from trafmetuxd.nfbatch import BatchStats, Interfaces, feed_batch
from trafmetuxd.packet import parse
from trafmetuxd.spec import DIR_IN

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


SLOT = 640  # as the capture worker's slots for a 128-byte copy range
BATCH = 64
IFINDEX = {"eth0": 2, "eth1": 3, "wlan0": 4, "wlan1": 5}
_NLATTR = struct.Struct("=HH")


def _attr(kind: int, value: bytes) -> bytes:
    length = _NLATTR.size + len(value)
    return _NLATTR.pack(length, kind) + value + bytes(-length % 4)


def netlink_message(packet_id: int, direction: int, iface: str, payload: bytes) -> bytes:
    """The NFQNL_MSG_PACKET the kernel would send for this packet (PREROUTING or POSTROUTING)."""
    hook = 0 if direction == DIR_IN else 4
    index = struct.pack("!I", IFINDEX.get(iface, 9))
    attrs = _attr(1, struct.pack("!IHB", packet_id, 0x0800, hook))
    attrs += _attr(5 if direction == DIR_IN else 6, index) + _attr(10, payload)
    body = bytes([2, 0, 0, 0]) + attrs
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, 0, 0) + body


def batches(items: Sequence[Item]) -> list[tuple[float, bytes, int]]:
    """The items as the worker receives them: BATCH messages in SLOT-byte slots per read."""
    out = []
    for at in range(0, len(items), BATCH):
        chunk = items[at : at + BATCH]
        msgs = [netlink_message(at + i, d, f, b) for i, (_ts, b, d, f) in enumerate(chunk)]
        buf = b"".join(m + bytes(SLOT - len(m)) for m in msgs)
        out.append((chunk[0][0], buf, len(chunk)))
    return out


def batch_timer(meter: Meter, items: Sequence[Item]) -> Callable[[Sequence[Item]], int]:
    """A timer for the capture worker's entry: a read's batch of messages in one call."""
    reads = batches(items)
    names = {index: name for name, index in IFINDEX.items()}
    interfaces = Interfaces((), lambda: names)
    stats = BatchStats()

    def run(_items: Sequence[Item]) -> int:
        start = time.perf_counter_ns()
        for ts, buf, count in reads:
            feed_batch(meter, stats, ts, buf, count, SLOT, interfaces)
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
        replay = replay_figures(items, size["repeats"])
    finally:
        os.sched_setaffinity(0, previous)
        gc.unfreeze()
    noop = stages["noop_call"]["ns_per_packet"]
    for stage in stages.values():
        stage["x_noop"] = round(stage["ns_per_packet"] / noop, 2)
    pps20 = stages["feed_20_monitors"]["packets_per_second"]
    pps1 = stages["feed_1_monitor"]["packets_per_second"]
    ratio = replay["replay_20_monitors"]["packets_per_second"] / max(
        1, replay["naive_loop"]["packets_per_second"]
    )
    return {
        "params": {**size, "core": core, "imix": "7:4:1 of 64/576/1500", "copy_range": 128},
        "stages": stages,
        "replay": replay,
        "targets": [
            target("pipeline, 20 monitors", pps20, ">=", 1_000_000, "packets/s"),
            target("pipeline, 1 monitor", pps1, ">=", 2_000_000, "packets/s"),
            target("replay / naive one-dict loop", round(ratio, 3), ">=", 0.5, "x"),
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
        "feed_1_monitor_hosts": measure(feed_timer(Meter(one_hosts_monitor())), items, repeats),
        "feed_20_monitors": measure(feed_timer(Meter(twenty)), items, repeats),
        "batch_20_monitors": measure(batch_timer(Meter(twenty), items), items, repeats),
    }


def write_capture(path: Path, items: Sequence[Item]) -> None:
    """The items as a raw-IP pcap (link type 101), microsecond timestamps."""
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, pcap.LINKTYPE_RAW))
        for ts, buf, _direction, _iface in items:
            sec, usec = int(ts), round((ts - int(ts)) * 1e6) % 1_000_000
            out.write(struct.pack("<IIII", sec, usec, len(buf), len(buf)) + buf)


def naive_loop(path: Path) -> dict[tuple[bytes, bytes], int]:
    """The simplest meter of a capture: one dict of bytes per address pair, struct per record."""
    data = path.read_bytes()
    record = struct.Struct("<IIII")
    totals: dict[tuple[bytes, bytes], int] = {}
    at = 24
    while at + 16 <= len(data):
        _sec, _usec, caplen, _length = record.unpack_from(data, at)
        at += 16
        ip = data[at : at + caplen]
        at += caplen
        if ip[0] >> 4 == 4:
            key, size = (ip[12:16], ip[16:20]), ip[2] << 8 | ip[3]
        else:
            key, size = (ip[8:24], ip[24:40]), (ip[4] << 8 | ip[5]) + 40
        totals[key] = totals.get(key, 0) + size
    return totals


def replay_loop(path: Path, meter: Meter) -> int:
    """What --replay does per frame: the capture reader's batches into the compiled core."""
    local = LocalNetworks(())
    skipped: dict[str, int] = {}
    frames = 0
    for batch in pcap.read_batches(path):
        frames += len(batch)
        meter.feed_frames(batch, 0, float("inf"), local, "", skipped)
    return frames


def replay_figures(items: Sequence[Item], repeats: int) -> dict[str, dict[str, float]]:
    """Replay of the same packets as a capture file against the naive loop over that file."""
    with tempfile.TemporaryDirectory(prefix="tmx-bench-replay-") as tmp:
        path = Path(tmp) / "pipeline.pcap"
        write_capture(path, items)
        count = len(items)

        def timed(fn: Callable[[], object]) -> Callable[[Sequence[Item]], int]:
            def run(_items: Sequence[Item]) -> int:
                start = time.perf_counter_ns()
                fn()
                return time.perf_counter_ns() - start

            return run

        twenty = twenty_monitors()
        return {
            "naive_loop": measure(timed(lambda: naive_loop(path)), items[:count], repeats),
            "replay_20_monitors": measure(
                timed(lambda: replay_loop(path, Meter(twenty))), items[:count], repeats
            ),
        }
