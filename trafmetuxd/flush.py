"""Flush path: snapshots -> flush collectors -> one store transaction -> flow text logs.

The write runs in a worker thread; everything else runs on the event loop thread. A flush
collector is cleared only after its data committed, so a failed write keeps every byte for the
next flush and a successful one is never written twice.

Concurrency invariant: absorb(), write() and committed() of one flush (flush() runs all three,
with the retention pass when due and the GC kept off) never overlap with another
flush's or a reload's absorb(): the daemon runs them all under its flush lock (replay runs them
sequentially). pending() hands out the live dicts, so that lock is what keeps a write from
seeing a merge half done and committed() from clearing data that arrived during the write.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING

from trafmetuxd.collector import FlushCollector, Snapshot, Totals
from trafmetuxd.flowlog import FlowLog
from trafmetuxd.pending import PendingFlushes
from trafmetuxd.spec import MonitorSpec, RetentionSpec
from trafmetuxd.store import Store, StoreError

if TYPE_CHECKING:
    from trafmetuxd.pgstore import PgStore

log = logging.getLogger("trafmetuxd.flush")

FLOW_LOG_BACKLOG_LIMIT = 16 * 1024 * 1024  # characters held per log while it cannot be written
PRUNE_EVERY = 3600.0  # seconds between retention passes
GC_SWEEP_EVERY = 3600.0  # seconds between full cyclic collections (see flush)


@dataclass(slots=True)
class FlushState:
    """What the last flushes did, for status and the watchdog."""

    last_attempt: float = 0.0
    last_success: float = 0.0
    failures: int = 0  # consecutive failed writes
    last_error: str = ""
    flushes: int = 0
    held_bytes: int = 0  # counted but not committed, as of the last failed write
    database_recreated: int = 0  # times the database was found deleted and made again
    # per monitor: host attributions committed in "other" (beyond max_hosts) since the start
    host_overflow: dict[str, int] = field(default_factory=dict)


class Flusher:
    """Owns the flush collectors and writes them to the store."""

    def __init__(
        self,
        store: Store | PgStore,
        monitors: Sequence[MonitorSpec],
        zone: tzinfo,
        started: float | None = None,
        queue: PendingFlushes | None = None,
    ) -> None:
        self.store = store
        # A sequenced store (PostgreSQL): every flush taken from the collectors waits here,
        # with its sequence number, until the store committed it.
        self.queue = queue
        self.zone = zone
        self.state = FlushState()
        self._last_prune = 0.0
        self._last_sweep = time.time() if started is None else started
        self.collectors: dict[str, FlushCollector] = {}
        self._logs: dict[str, FlowLog] = {}
        self._backlog: dict[str, list[str]] = {}
        self.configure(monitors)

    def configure(self, monitors: Sequence[MonitorSpec]) -> None:
        """Adopt new monitor settings; collectors holding unwritten data are kept."""
        self._sizes = {m.name: (m.flush_collector_size, m.max_hosts) for m in monitors}
        self._logs = {m.name: FlowLog(m.flow_log) for m in monitors if m.flow_log}

    def absorb(self, batches: Sequence[tuple[str, Snapshot]]) -> None:
        """Merge swapped realtime snapshots into the flush collectors (loop thread)."""
        for name, snap in batches:
            coll = self.collectors.get(name)
            if coll is None:
                coll = FlushCollector(*self._sizes.get(name, (2000, 4096)))
                self.collectors[name] = coll
            coll.merge(snap)
            time.sleep(0)  # in the worker thread: let a waiting packet loop have the GIL

    def flush(
        self, batches: list[tuple[str, Snapshot]], when: float, retention: RetentionSpec
    ) -> bool:
        """Merge into the flush collectors, write them, forget what committed (worker thread).

        It also drops the last references to the snapshots and to the committed collectors,
        so freeing tens of thousands of positions happens here and not on the packet loop.
        """
        # Flow positions are tens of thousands of GC-tracked lists without reference cycles;
        # a cyclic collection set off by the merge's allocations would walk them all holding
        # the GIL and stall the packet loop for tens of ms. So no collection runs during the
        # flush, and what is alive afterwards is moved out of the collector's sight (it is
        # still freed by reference counting): later collections walk only newer objects.
        gc.disable()
        try:
            self.absorb(batches)
            batches.clear()
            ok = self._write_pruning(when, retention)
            if ok:
                self.committed(when)
        finally:
            self._sweep(when)
            gc.freeze()
            gc.enable()
        return ok

    def _write_pruning(self, when: float, retention: RetentionSpec) -> bool:
        """Write; apply the retention too when the last pass is PRUNE_EVERY ago."""
        due = when - self._last_prune >= PRUNE_EVERY
        ok = self.write(when, retention if due else None)
        if ok and due:
            self._last_prune = when
        return ok

    def _sweep(self, when: float) -> None:
        """Once an hour, a full collection over everything, frozen objects included.

        Freezing keeps any cyclic garbage alive at that moment; this bounds what could pile
        up, at the price of one longer pause an hour (CPython's own schedule pauses more often).
        """
        if when - self._last_sweep >= GC_SWEEP_EVERY:
            self._last_sweep = when
            gc.unfreeze()
            gc.collect()

    def pending(self) -> list[tuple[str, Snapshot]]:
        """Every non-empty flush collector's contents."""
        return [(n, c.pending()) for n, c in self.collectors.items() if not c.empty]

    def held(self) -> list[tuple[str, Snapshot]]:
        """Everything held here and not committed: the collectors and the queued flushes.

        Flushes spilled to the journal are not among them (they are read back to be written).
        """
        queued = self.queue.in_memory() if self.queue is not None else []
        return [pair for batches in queued for pair in batches] + self.pending()

    def unflushed_totals(self) -> dict[str, list[Totals]]:
        """Per monitor, the minute totals held here (not yet committed)."""
        out: dict[str, list[Totals]] = {}
        for name, snap in self.held():
            if snap.totals:
                out.setdefault(name, []).append(snap.totals)
        return out

    def write(self, when: float, retention: RetentionSpec | None = None) -> bool:
        """Write everything pending in one transaction (worker thread); True when committed."""
        if self.queue is not None:
            return self._write_queued(self.queue, when, retention)
        batches = self.pending()
        self.state.last_attempt = when
        try:
            self.store.write(when, batches)
            if retention is not None:
                self.store.prune(when, retention)
        except StoreError as exc:
            return self._failed(str(exc))
        except Exception as exc:  # a bug must not cost counted bytes: keep them, like a fault
            log.exception("flush write raised")
            return self._failed(f"{type(exc).__name__}: {exc}")
        finally:
            self.state.database_recreated = self.store.recreated
        self._render_logs(when, batches)
        return True

    def _write_queued(
        self, queue: PendingFlushes, when: float, retention: RetentionSpec | None
    ) -> bool:
        """Queue what the collectors hold as the next flush, then write the queue in order.

        The collectors are emptied at once: their contents now wait in the queue (and count in
        reports from there) under a sequence number that a retry keeps.
        """
        batches = self.pending()
        self.state.last_attempt = when
        if batches:
            queue.push(when, batches)
            self._count_host_overflow(batches)
            self.collectors = {}
            self._render_logs(when, batches)
        try:
            done = queue.drain(self.store)  # type: ignore[arg-type]  # a PgStore
            if done and retention is not None:
                self.store.prune(when, retention)
        except StoreError as exc:
            with suppress(StoreError):  # the store may not answer: the next drain skips them
                queue.settle(self.store)  # type: ignore[arg-type]
            return self._failed(str(exc))
        except Exception as exc:  # a bug must not cost counted bytes: they stay queued
            log.exception("flush write raised")
            return self._failed(f"{type(exc).__name__}: {exc}")
        return True

    def _count_host_overflow(self, batches: Sequence[tuple[str, Snapshot]]) -> None:
        for name, snap in batches:
            if snap.host_overflow:
                was = self.state.host_overflow.get(name, 0)
                self.state.host_overflow[name] = was + snap.host_overflow

    def _failed(self, error: str) -> bool:
        self.state.failures += 1
        self.state.last_error = error
        self.state.held_bytes = self.held_bytes()
        return False

    def committed(self, when: float) -> None:
        """Forget what the last write committed (loop thread, after write() returned True)."""
        for name in [n for n, c in self.collectors.items() if not c.empty]:
            overflow = self.collectors[name].pending().host_overflow
            if overflow:
                was = self.state.host_overflow.get(name, 0)
                self.state.host_overflow[name] = was + overflow
            del self.collectors[name]
        self.state.last_success = when
        self.state.failures = 0
        self.state.last_error = ""
        self.state.held_bytes = 0
        self.state.flushes += 1

    def held_bytes(self) -> int:
        """Bytes counted but not yet committed to the store."""
        return sum(sum(r[0] + r[2] for r in s.totals.values()) for _, s in self.held())

    def _render_logs(self, when: float, batches: Sequence[tuple[str, Snapshot]]) -> None:
        local = datetime.fromtimestamp(when, self.zone)
        for name, snap in batches:
            flow_log = self._logs.get(name)
            if flow_log is not None:
                self._append(name, flow_log, local, flow_log.render(local, snap))
        for name in list(self._backlog):
            if name not in {n for n, _ in batches} and name in self._logs:
                self._append(name, self._logs[name], local, "")

    def _append(self, name: str, flow_log: FlowLog, local: datetime, text: str) -> None:
        held = self._backlog.pop(name, [])
        chunk = "".join([*held, text])
        try:
            flow_log.append_text(local, chunk)
        except OSError as exc:
            log.error("flow log for monitor %s cannot be written: %s", name, exc)
            if len(chunk) <= FLOW_LOG_BACKLOG_LIMIT:
                self._backlog[name] = [chunk]
            else:
                log.error("flow log backlog of monitor %s over its limit: dropped", name)
