"""Replay: a capture file through the same pipeline, with the capture's own timestamps."""

from __future__ import annotations

import logging
from pathlib import Path

from trafmetuxd.daemon import Daemon
from trafmetuxd.meter import LocalNetworks
from trafmetuxd.pcap import read as read_capture

log = logging.getLogger("trafmetuxd.replay")


def replay(daemon: Daemon, path: Path, iface: str) -> bool:
    """Feed every frame through the meter, flushing at capture-time boundaries and at the end.

    Returns True when every flush committed.
    """
    interval = daemon.config.flush_interval
    local = LocalNetworks(daemon.config.local_networks)
    meter = daemon.meter
    boundary: float | None = None
    frames = 0
    ok = True
    for ts, ip in read_capture(path):
        frames += 1
        if boundary is None:
            boundary = _next_boundary(ts, interval)
        elif ts >= boundary:
            ok = daemon.flush_now(boundary) and ok  # intervals with no packets need no flush
            boundary = _next_boundary(ts, interval)
        if ip is None:
            meter.stats.malformed += 1
            continue
        meter.feed_local(ts, ip, local, iface)
    ok = daemon.flush_now(boundary if boundary is not None else daemon.clock()) and ok
    log.info("replayed %d frames from %s", frames, path)
    return ok


def _next_boundary(ts: float, interval: float) -> float:
    return (ts // interval + 1) * interval
