"""Replay: a capture file through the same pipeline, with the capture's own timestamps."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trafmetuxd.meter import LocalNetworks
from trafmetuxd.metering import Metering
from trafmetuxd.pcap import read_batches

log = logging.getLogger("trafmetuxd.replay")


@dataclass(slots=True)
class Summary:
    """What a replay read and metered: its one-line account."""

    path: Path
    frames: int = 0
    packets: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    flushed: bool = True

    def line(self) -> str:
        """frames, IP packets, bytes, skipped by reason."""
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{why} {n}" for why, n in sorted(self.skipped.items()))
        text = (
            f"replayed {self.path}: {self.frames} frames, {self.packets} IP packets, "
            f"{self.bytes} bytes; skipped {skipped}"
        )
        return f"{text} ({reasons})" if reasons else text


def replay(metering: Metering, path: Path, iface: str) -> bool:
    """Feed every frame through the meter, flushing at capture-time boundaries and at the end.

    Returns True when every flush committed.
    """
    summary = replay_file(metering, path, iface)
    log.info("%s", summary.line())
    return summary.flushed


def replay_file(metering: Metering, path: Path, iface: str) -> Summary:
    """Replay a capture in batches through the compiled core; its summary."""
    interval = metering.config.flush_interval
    local = LocalNetworks(metering.config.local_networks)
    meter = metering.meter
    stats = meter.stats
    before = (stats.in_packets + stats.out_packets, stats.in_bytes + stats.out_bytes)
    summary = Summary(path)
    boundary: float | None = None
    for frames in read_batches(path):
        summary.frames += len(frames)
        at = 0
        if boundary is None:
            boundary = _next_boundary(frames[0][0], interval)
        while at < len(frames):
            at = meter.feed_frames(frames, at, boundary, local, iface, summary.skipped)
            if at < len(frames):  # a frame of the next interval: flush what came before
                summary.flushed = metering.flush_now(boundary) and summary.flushed
                boundary = _next_boundary(frames[at][0], interval)
    end = boundary if boundary is not None else metering.clock()
    summary.flushed = metering.flush_now(end) and summary.flushed
    summary.packets = stats.in_packets + stats.out_packets - before[0]
    summary.bytes = stats.in_bytes + stats.out_bytes - before[1]
    return summary


def _next_boundary(ts: float, interval: float) -> float:
    return (ts // interval + 1) * interval
