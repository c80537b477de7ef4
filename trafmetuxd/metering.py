"""The metering side's core: shipments in, flush collectors, the store, reload and status.

Live, the packets are counted by the capture workers (worker.py), whose shipments are staged
here until the next flush; a replay counts with the in-process meter. Either way a flush merges
what was staged (and swapped) into the flush collectors and writes them in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from trafmetuxd import __version__, config, periods
from trafmetuxd.collector import Flows, Hosts, Snapshot, Totals
from trafmetuxd.flush import Flusher
from trafmetuxd.meter import Meter
from trafmetuxd.pending import PendingFlushes
from trafmetuxd.rates import HostRates, RateSampler
from trafmetuxd.spec import Config
from trafmetuxd.store import Store

if TYPE_CHECKING:
    from trafmetuxd.pgstore import PgStore

log = logging.getLogger("trafmetuxd")

GIL_SWITCH_INTERVAL = 0.001  # seconds; CPython's default is 0.005


def tune_switch_interval() -> None:
    """Make the flush thread hand the GIL back to the packet loop every millisecond.

    The flush thread's Python work (merging, building rows) holds the GIL; with the default
    5 ms interval every wake-up of the packet loop during a flush could wait that long.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


Key = TypeVar("Key")


def merge_counts(into: dict[Key, list[int]], add: Mapping[Key, list[int]]) -> None:
    """Add one mapping of counter rows (minute totals, flow positions) into another, exactly."""
    for key, row in add.items():
        have = into.get(key)
        if have is None:
            into[key] = list(row)
        else:
            for i, value in enumerate(row):
                have[i] += value


async def _nothing_to_refresh() -> None:
    return None


Refresh = Callable[[], Awaitable[object]]
Reconfigure = Callable[[Config], Awaitable[None]]


async def _no_workers(cfg: Config) -> None:
    return None


class Metering:
    """The metering core and its persistence, shared by live capture and replay."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = cfg
        self.clock = clock
        self.started = clock()
        # Uptime from the monotonic clock: a wall clock stepped back must not make it negative.
        self._started_monotonic = time.monotonic()
        self.meter = Meter(cfg.monitors, cfg.local_networks)
        self.store, queue = open_store(cfg)
        zone = periods.resolve_zone(cfg.timezone)
        self.flusher = Flusher(self.store, cfg.monitors, zone, started=self.started, queue=queue)
        self.flush_lock = asyncio.Lock()
        self.rates_sampler = RateSampler()
        self.host_sampler = HostRates()
        self.reload_error = ""
        self._swapped: dict[str, tuple[int, int]] = {}
        # Live: the capture workers' shipments wait here for the next flush (loop thread only).
        self.staged: list[tuple[str, Snapshot]] = []
        self.shipped: dict[str, int] = {}  # the workers' stats, summed over every shipment
        self.refresher: Refresh = _nothing_to_refresh  # have the workers ship what they counted
        self.reconfigure_workers: Reconfigure = _no_workers

    async def refresh(self) -> object:
        """Have the capture workers ship what they counted so far (a bounded wait)."""
        return await self.refresher()

    def stage(self, batches: list[tuple[str, Snapshot]], stats: dict[str, int]) -> None:
        """Keep a worker's shipment for the next flush (reports count it from now on)."""
        self._note_swapped(batches)
        self.staged.extend(batches)
        for key, value in stats.items():
            self.shipped[key] = self.shipped.get(key, 0) + value

    def meter_stats(self) -> dict[str, int]:
        """The in-process meter's counters plus the workers' (what status calls "meter")."""
        out = self.meter.stats.as_dict()
        for key in out:
            out[key] += self.shipped.get(key, 0)
        return out

    # -- flushing ---------------------------------------------------------------------------
    def _swap(self) -> list[tuple[str, Snapshot]]:
        """What the next write takes: the staged shipments and the in-process meter's counts."""
        batches = self.meter.swap()  # O(1) per monitor
        self._note_swapped(batches)
        staged, self.staged = self.staged, []
        return staged + batches

    def _note_swapped(self, batches: list[tuple[str, Snapshot]]) -> None:
        for name, snap in batches:
            was_in, was_out = self._swapped.get(name, (0, 0))
            moved_in, moved_out = _bytes(snap.totals)
            self._swapped[name] = (was_in + moved_in, was_out + moved_out)
            self.host_sampler.moved(name, snap.hosts)

    def _after_write(self, ok: bool) -> None:
        if ok:
            return
        state = self.flusher.state
        log.error(
            "flush failed (%d in a row), holding %d bytes for the next flush: %s",
            state.failures,
            state.held_bytes,
            state.last_error,
        )

    def flush_now(self, when: float) -> bool:
        """Swap and write synchronously (replay, shutdown without a loop)."""
        ok = self.flusher.flush(self._swap(), when, self.config.retention)
        self._after_write(ok)
        return ok

    async def flush(self) -> dict[str, object]:
        """Swap on the loop, merge and write in a worker thread, clear only after commit.

        Merging tens of thousands of positions takes milliseconds: done on the loop it would
        delay verdicts. Readers of the flush collectors hold flush_lock, so they never see a
        merge half done nor the moment a snapshot is in neither place.
        """
        await self.refresh()  # the workers' counts up to now: staged before the swap below
        async with self.flush_lock:
            when = self.clock()
            batches = self._swap()
            retention = self.config.retention
            ok = await asyncio.to_thread(self.flusher.flush, batches, when, retention)
            self._after_write(ok)
        state = self.flusher.state
        return {"flushed": ok, "time": when, "error": state.last_error or None}

    # -- what the control socket reads -----------------------------------------------------
    def unflushed(self) -> dict[str, Totals]:
        """Per monitor: minute totals counted but not committed yet."""
        out: dict[str, Totals] = {}
        for name, pieces in self.flusher.unflushed_totals().items():
            for totals in pieces:
                merge_counts(out.setdefault(name, {}), totals)
        for name, snap in self.staged:
            merge_counts(out.setdefault(name, {}), snap.totals)
        for spec, coll in zip(self.meter.monitors, self.meter.collectors, strict=True):
            merge_counts(out.setdefault(spec.name, {}), coll.totals)
        return out

    def unflushed_flows(self, monitor: str) -> Flows:
        """A monitor's flow positions counted but not committed yet."""
        out: Flows = {}
        for name, snap in self.flusher.held():
            if name == monitor:
                merge_counts(out, snap.flows)
        for name, snap in self.staged:
            if name == monitor:
                merge_counts(out, snap.flows)
        for spec, coll in zip(self.meter.monitors, self.meter.collectors, strict=True):
            if spec.name == monitor:
                merge_counts(out, coll.flows)
        return out

    def unflushed_hosts(self, monitor: str) -> Hosts:
        """A monitor's per-host totals counted but not committed yet."""
        out: Hosts = {}
        pieces = [snap.hosts for name, snap in self.flusher.held() if name == monitor]
        pieces += [snap.hosts for name, snap in self.staged if name == monitor]
        pieces += [c.hosts for m, c in zip(self.meter.monitors, self.meter.collectors,
                                           strict=True) if m.name == monitor]  # fmt: skip
        for hosts in pieces:
            for host, totals in hosts.items():
                merge_counts(out.setdefault(host, {}), totals)
        return out

    def cumulative_bytes(self) -> dict[str, tuple[int, int]]:
        """Per monitor, (in, out) bytes counted since start (for live rates)."""
        out: dict[str, tuple[int, int]] = {}
        for spec, coll in zip(self.meter.monitors, self.meter.collectors, strict=True):
            was_in, was_out = self._swapped.get(spec.name, (0, 0))
            now_in, now_out = _bytes(coll.totals)
            out[spec.name] = (was_in + now_in, was_out + now_out)
        return out

    def rates(self) -> dict[str, tuple[float, float]]:
        """Per monitor: (in B/s, out B/s) over the last sampling window."""
        return self.rates_sampler.rates()

    def sample_rates(self, when: float) -> None:
        """Sample the monitors' and their hosts' counts for the live rates (once a second)."""
        self.rates_sampler.sample(when, self.cumulative_bytes())
        pairs = zip(self.meter.monitors, self.meter.collectors, strict=True)
        self.host_sampler.sample(when, {m.name: c.hosts for m, c in pairs if m.hosts})

    def host_rates(self, monitor: str) -> dict[str, tuple[float, float]]:
        """A monitor's hosts: (in B/s, out B/s) over the last sampling window."""
        return self.host_sampler.rates(monitor)

    async def status(self) -> dict[str, object]:
        """The daemon's state as a JSON-able dict (the workers' counts up to now included)."""
        await self.refresh()
        state = self.flusher.state
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": self.started,
            "uptime": time.monotonic() - self._started_monotonic,
            "config": str(self.config.path),
            "database": str(self.config.database),
            "monitors": self.meter.names,
            "meter": self.meter_stats(),
            "flush": {
                "interval": self.config.flush_interval,
                "last_attempt": state.last_attempt or None,
                "last_success": state.last_success or None,
                "flushes": state.flushes,
                "failures": state.failures,
                "error": state.last_error or None,
                "held_bytes": state.held_bytes,
                "database_recreated": state.database_recreated,
                "host_overflow": dict(state.host_overflow),
            },
            "store": self.store_status(),
            "reload_error": self.reload_error or None,
        }

    def store_status(self) -> dict[str, object]:
        """The store's kind and state; for PostgreSQL the flushes waiting and the oldest's age."""
        queue = self.flusher.queue
        if queue is None or isinstance(self.store, Store):
            return {"kind": "sqlite", "path": str(self.config.database)}
        return self.store.state() | queue.summary(self.clock())

    # -- reload ----------------------------------------------------------------------------
    async def reload(self) -> dict[str, object]:
        """Re-read the config file; on error keep running on the old one."""
        try:
            new = await asyncio.to_thread(config.load, self.config.path)
        except config.ConfigError as exc:
            self.reload_error = str(exc)
            log.error("reload rejected, still running on the old configuration:\n%s", exc)
            return {"reloaded": False, "error": str(exc)}
        restart = [
            key
            for key in ("state_dir", "socket", "socket_group", "capture", "http", "store")
            if getattr(new, key) != getattr(self.config, key)
        ]
        async with self.flush_lock:
            self.flusher.absorb(self.meter.reconfigure(new.monitors))
            self.meter.set_local_networks(new.local_networks)
            self.flusher.configure(new.monitors)
            self.flusher.zone = periods.resolve_zone(new.timezone)
        # Workers ship what their dropped or rebuilt collectors held: staged for the next flush.
        await self.reconfigure_workers(new)
        if new.strict != self.config.strict:
            restart.append("quota strict")
        keep = {k: getattr(self.config, k) for k in restart if k != "quota strict"}
        self.config = replace(new, **keep)  # restart-only keys keep their old values
        self.reload_error = ""
        log.info("configuration reloaded: %d monitors", len(new.monitors))
        if restart:
            log.warning("changes to %s take effect on restart", ", ".join(restart))
        return {"reloaded": True, "monitors": self.meter.names, "needs_restart": restart}

    def close(self) -> None:
        """Release the store; flushes still unwritten go to the journal for the next start."""
        queue = self.flusher.queue
        if queue is not None:
            queue.spill_all()
            queue.close()
        self.store.close()


def open_store(cfg: Config) -> tuple[Store | PgStore, PendingFlushes | None]:
    """The configured store: SQLite, or PostgreSQL with its queue of pending flushes."""
    if not cfg.store.postgresql:
        return Store(cfg.database), None
    from trafmetuxd.pgstore import PgStore  # psycopg only where PostgreSQL is used

    store = PgStore(cfg.store)
    store.probe()  # bounded by the connect timeout; a server down is retried at each flush
    return store, PendingFlushes(cfg.journal, cfg.store.pending_memory)


def _bytes(totals: Totals) -> tuple[int, int]:
    return sum(r[0] for r in totals.values()), sum(r[2] for r in totals.values())
