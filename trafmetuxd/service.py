"""The long-running service: capture workers, control socket, flush timer, watchdog, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from trafmetuxd.api import local_answer
from trafmetuxd.audit import Audit, capture_status
from trafmetuxd.handlers import Handlers
from trafmetuxd.kernel import KernelError, QueueRules, queue_table
from trafmetuxd.limits import Limits
from trafmetuxd.link import Front
from trafmetuxd.metering import Metering, tune_switch_interval
from trafmetuxd.notify import Notifier
from trafmetuxd.quota import STRICT_WARNING, QuotaWatcher
from trafmetuxd.reports import Reports
from trafmetuxd.spec import Config
from trafmetuxd.workers import Workers

log = logging.getLogger("trafmetuxd")

RATE_SAMPLE_EVERY = 1.0
ENFORCE_EVERY = 0.5  # seconds between two evaluations of the enforcing quotas
# The watchdog is fed only while the packet path and the flush path make progress: the stall
# guard has looked within this many seconds and no queue has been without a worker for as long,
# and no flush has been running (or been overdue) for longer than FLUSH_PATIENCE.
PROGRESS_LIMIT = 5.0
FLUSH_PATIENCE = 30.0
# The main process (flushes, reports) yields the CPU to its capture workers under contention.
MAIN_NICE = 10


class Service:
    """The running daemon: its metering core under asyncio until SIGTERM/SIGINT; SIGHUP reloads."""

    def __init__(
        self,
        metering: Metering,
        notifier: Notifier,
        live: bool = True,
        clock: Callable[[], float] = time.time,  # what reports take as now (replay: its end)
    ) -> None:
        self.metering = metering
        self.notifier = notifier
        self.live = live
        self.workers: Workers | None = None
        self.rules: QueueRules | None = None
        self.stop = asyncio.Event()
        self.hup = asyncio.Event()
        self.flush_tick = time.monotonic()  # when the flush timer last came round
        self.flush_busy_since: float | None = None  # a flush running since then
        self.reports = Reports(metering, clock)
        self.limits = Limits(self.reports, self._push_enforcement, metering.shipped)
        self.handlers = Handlers(self.reports, status=self.status, limits=self.limits)
        self.quotas = QuotaWatcher()
        self.front: Front | None = None
        self.audit: Audit | None = None

    async def run(self) -> int:
        """Bind, install, listen, announce READY; meter until told to stop; shut down cleanly."""
        loop = asyncio.get_running_loop()
        tune_switch_interval()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.hup.set)
        try:
            if self.live:
                await self._start_capture()
            cfg = self.metering.config
            cfg.socket.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            answer = local_answer(self.handlers.table())
            self.front = Front(cfg.socket, cfg.socket_group, answer, http=cfg.http)
            self.front.bind()  # clients may connect from here on: they queue until it runs
            self.front.start()
            self.notifier.ready()
            self._set_status()
            log.info("metering %d monitors", len(self.metering.meter.monitors))
            await self._main_loop()
        finally:
            self.notifier.stopping()
            await self._stop_capture()
            if self.front is not None:
                await self.front.stop()
            ok = await self.metering.flush()
            self.reports.close()  # the report reader first: the store's close is then the last
            self.metering.close()  # and checkpoints the WAL
        return 0 if ok["flushed"] else 1

    async def _start_capture(self) -> None:
        metering = self.metering
        spec = metering.config.capture
        nice = lower_priority()
        self.workers = Workers(
            spec, metering.config.monitors, metering.stage, nice, metering.config.local_networks
        )
        metering.refresher = self.workers.refresh
        metering.reconfigure_workers = self._reconfigure_workers
        await self.workers.start()  # every queue bound, fail-open set: before any rule
        if spec.manage_rules:
            self.rules = QueueRules(spec, strict=metering.config.strict)
            if metering.config.strict:
                log.warning("%s", STRICT_WARNING)
            self.audit = Audit(self.rules, metering.meter_stats)
            await asyncio.to_thread(self.rules.install)

    def _push_enforcement(self, value: dict[str, object]) -> None:
        if self.workers is not None:
            self.workers.enforce(value)

    async def _reconfigure_workers(self, cfg: Config) -> None:
        if self.workers is not None:
            await self.workers.reconfigure(cfg.monitors, cfg.local_networks)

    async def _stop_capture(self) -> None:
        # Rules first: packets then bypass the queues instead of waiting on closing sockets.
        if self.rules is not None:
            with contextlib.suppress(KernelError):
                await asyncio.to_thread(self.rules.remove)
        if self.workers is not None:
            await self.workers.stop()

    async def _main_loop(self) -> None:
        interval = self.metering.config.flush_interval
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + interval
        tasks = [asyncio.create_task(self._watchdog()), asyncio.create_task(self._sample())]
        tasks.append(asyncio.create_task(self._enforce()))
        try:
            while not self.stop.is_set():
                await _wait_any((self.stop, self.hup), next_flush - loop.time())
                self.flush_tick = time.monotonic()
                if self.hup.is_set():
                    self.hup.clear()
                    await self._reload()
                if loop.time() >= next_flush and not self.stop.is_set():
                    self.flush_busy_since = time.monotonic()
                    await self.metering.flush()
                    self.flush_busy_since = None
                    next_flush = max(next_flush + interval, loop.time() + 1.0)
                    self._set_status()
                    await self._check_quotas()
        finally:
            for task in tasks:
                task.cancel()

    async def _check_quotas(self) -> None:
        """Log once per period when a quota crosses its warning level and its limit."""
        for line in self.quotas.update(await self.reports.quotas()):
            log.warning("%s", line)

    async def _reload(self) -> None:
        self.notifier.reloading()
        result = await self.metering.reload()
        if result["reloaded"]:
            await self.limits.check()  # a quota removed or no longer enforcing: lifted now
        self.notifier.ready()
        self._set_status(None if result["reloaded"] else "reload rejected: see the log")

    def progressing(self) -> bool:
        """Whether the packet path and the flush path both move (what feeds the watchdog)."""
        now = time.monotonic()
        busy = self.flush_busy_since
        if busy is not None and now - busy > FLUSH_PATIENCE:
            return False  # a flush stuck in the store
        if now - self.flush_tick > self.metering.config.flush_interval + FLUSH_PATIENCE:
            return False  # the flush timer no longer comes round
        return self.workers is None or self.workers.progressing(now, PROGRESS_LIMIT)

    async def _watchdog(self) -> None:
        every = self.notifier.watchdog_interval()
        if every is None:
            return
        while True:
            if self.progressing():
                self.notifier.watchdog()
            await asyncio.sleep(every)

    async def _sample(self) -> None:
        while True:
            await self.metering.refresh()  # the workers' counts up to now, for one-second rates
            self.metering.sample_rates(time.time())
            await asyncio.sleep(RATE_SAMPLE_EVERY)

    async def _enforce(self) -> None:
        """While a quota blocks or marks: ship and evaluate every ENFORCE_EVERY seconds.

        Twice a second, so that from the byte crossing a limit to the workers' first drop
        less than a second passes (a shipment, a read of the stored totals, one frame).
        """
        while True:
            await asyncio.sleep(ENFORCE_EVERY)
            if not self.limits.enforcing():
                continue  # nothing enforces: no extra shipment, no read
            try:
                await self.metering.refresh()
                await self.limits.check()
            except Exception:  # a failing read must not end enforcement's loop
                log.exception("quota enforcement check failed")

    def _set_status(self, note: str | None = None) -> None:
        stats = self.metering.meter_stats()
        state = self.metering.flusher.state
        text = (
            f"{len(self.metering.meter.monitors)} monitors, "
            f"{stats['in_packets'] + stats['out_packets']} packets, "
            f"last flush {'failed' if state.failures else 'ok'}"
        )
        self.notifier.status(f"{text}; {note}" if note else text)

    async def status(self) -> dict[str, object]:
        """The daemon's status: the metering core's, the front's and the capture side's."""
        out = await self.metering.status()
        # "socket" (connections, evictions) is added by the front, which alone knows them
        out["front"] = self.front.info() if self.front else None
        out["enforcement"] = {
            st.name: {"action": st.action, "blocked_since": st.blocked_since, **(st.enforced or {})}
            for st in self.limits.decorate(
                await self.reports.quotas(
                    self.limits.enforcing(), fresh=False, adjustments=self.limits.adjustments
                )
            )
        }
        if self.workers is None:
            out["capture"] = None
            return out
        table = await asyncio.to_thread(queue_table)
        workers = self.workers.status(table)
        out |= capture_status(self.metering.config.capture, self.metering.shipped, table, workers)
        if self.audit is not None:
            out["audit"] = await self.audit.read()
        return out


def lower_priority() -> int | None:
    """Lower this process's priority by MAIN_NICE; the priority its workers are to keep.

    Linux priorities are per thread and inherited: done before any thread is started, it
    covers the whole main process (the report and flush threads included).
    """
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, base + MAIN_NICE))
    except OSError:
        return None
    return base


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
