"""Replay: a capture file through the same pipeline, with the capture's own timestamps."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING

from trafmetuxd import periods
from trafmetuxd.meter import LocalNetworks
from trafmetuxd.metering import Metering
from trafmetuxd.pcap import CaptureFileError, Frame, read_batches
from trafmetuxd.store import ReplayEnd, ReplayRow, Store

if TYPE_CHECKING:
    from trafmetuxd.pgstore import PgStore

log = logging.getLogger("trafmetuxd.replay")
_TS = itemgetter(0)
HASH_CHUNK = 1 << 20


class AlreadyReplayedError(Exception):
    """The capture was replayed into this database before; the message names file and time."""


@dataclass(slots=True)
class Summary:
    """What a replay read and metered: its one-line account."""

    path: Path
    frames: int = 0
    packets: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    flushed: bool = True
    first: float | None = None  # the earliest and latest packet time of the capture
    last: float | None = None
    end: float | None = None  # the time of the last flush: every count is stored before it

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


def replay_file(metering: Metering, path: Path, iface: str, force: bool = False) -> Summary:
    """Replay a capture in batches through the compiled core; its summary.

    A capture already replayed into this database (same SHA-256, whatever its name) raises
    AlreadyReplayedError before anything is counted, unless `force`.
    """
    digest = fingerprint(path)
    if not force:
        refuse_repeat(metering, path, digest)
    record = 0
    summary = Summary(path)
    local = LocalNetworks(metering.config.local_networks)
    stats = metering.meter.stats
    before = (stats.in_packets + stats.out_packets, stats.in_bytes + stats.out_bytes)
    for frames in read_batches(path):
        if not record:  # before the first flush: retention spares what the replay writes
            first = min(frames, key=_TS)[0]
            record = metering.store.begin_replay(
                digest, str(path.absolute()), path.stat().st_size, metering.clock(), first
            )
        _feed(metering, frames, iface, local, summary)
    summary.end = summary.end if summary.end is not None else metering.clock()
    summary.flushed = metering.flush_now(summary.end) and summary.flushed
    summary.packets = stats.in_packets + stats.out_packets - before[0]
    summary.bytes = stats.in_bytes + stats.out_bytes - before[1]
    if record and summary.flushed:
        metering.store.finish_replay(record, _end(metering, summary))
    return summary


def _feed(
    metering: Metering, frames: list[Frame], iface: str, local: LocalNetworks, summary: Summary
) -> None:
    """Meter one batch, flushing at each flush-interval boundary of capture time it crosses."""
    interval = metering.config.flush_interval
    meter = metering.meter
    summary.frames += len(frames)
    low, high = min(frames, key=_TS)[0], max(frames, key=_TS)[0]
    summary.first = low if summary.first is None else min(summary.first, low)
    summary.last = high if summary.last is None else max(summary.last, high)
    boundary = summary.end
    if boundary is None:
        boundary = _next_boundary(frames[0][0], interval)
    at = 0
    while at < len(frames):
        at = meter.feed_frames(frames, at, boundary, local, iface, summary.skipped)
        if at < len(frames):  # a frame of the next interval: flush what came before
            summary.flushed = metering.flush_now(boundary) and summary.flushed
            boundary = _next_boundary(frames[at][0], interval)
    summary.end = boundary


def _end(metering: Metering, summary: Summary) -> ReplayEnd:
    assert summary.first is not None and summary.last is not None and summary.end is not None
    return ReplayEnd(
        metering.clock(),
        summary.first,
        summary.last,
        summary.end,
        summary.frames,
        summary.packets,
        summary.bytes,
    )


def fingerprint(path: Path) -> str:
    """The capture file's SHA-256 (hex): what identifies it whatever its name."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise CaptureFileError(f"{path}: cannot open the capture file ({exc.strerror})") from exc
    return digest.hexdigest()


def refuse_repeat(metering: Metering, path: Path, digest: str) -> None:
    """Raise AlreadyReplayedError when this capture was replayed into the store before."""
    earlier = metering.store.replays_of(digest)
    if earlier:
        raise AlreadyReplayedError(
            repeat_message(path, metering.store, earlier[-1], metering.config.timezone)
        )


def repeat_message(path: Path, store: Store | PgStore, earlier: ReplayRow, timezone: str) -> str:
    """Why a repeat is refused: the file, the earlier replay and when it ran."""
    zone = periods.resolve_zone(timezone)
    when = f"{datetime.fromtimestamp(earlier.started, zone):%Y-%m-%d %H:%M:%S %Z}"
    same = "" if earlier.path == str(path.absolute()) else f" (as {earlier.path})"
    if earlier.finished is None:
        what = f"a replay of it into {store.path} started {when}{same} and did not finish"
        counted = "the counts it flushed are stored; replaying it again would count those twice"
    else:
        what = f"it was already replayed into {store.path} on {when}{same}"
        counted = "replaying it again would count its traffic twice"
    return f"{path}: {what}; {counted}. --force replays it anyway"


def report_clock(metering: Metering, summary: Summary) -> Callable[[], float]:
    """The clock reports answer by after a replay: the end of the newest stored data.

    Default windows (`-t`, flows and top without begin) then end where the replayed capture
    (or newer data) ends instead of at the wall clock, which may be months later.
    """
    times = [t for t in (metering.store.newest_time(), summary.end) if t is not None]
    newest = max(times) if times else time.time()

    def clock() -> float:
        return newest

    return clock


def _next_boundary(ts: float, interval: float) -> float:
    return (ts // interval + 1) * interval
