"""The long-running service: capture, control socket, flush timer, watchdog, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from trafmetuxd.api import local_answer
from trafmetuxd.capture import Capture
from trafmetuxd.daemon import Daemon, tune_switch_interval
from trafmetuxd.handlers import Handlers
from trafmetuxd.kernel import KernelError, QueueRules, queue_stats
from trafmetuxd.link import Front
from trafmetuxd.notify import Notifier
from trafmetuxd.quota import QuotaWatcher
from trafmetuxd.spec import DIR_IN, DIR_OUT

log = logging.getLogger("trafmetuxd")

RATE_SAMPLE_EVERY = 1.0
# The audit runs iptables on the event loop; a client asking for status in a loop must not
# turn that into a stall of the meter, so one audit serves every status request for this long.
AUDIT_TTL = 0.2


class Service:
    """Runs a Daemon under asyncio until SIGTERM/SIGINT; SIGHUP reloads."""

    def __init__(self, daemon: Daemon, notifier: Notifier, live: bool = True) -> None:
        self.daemon = daemon
        self.notifier = notifier
        self.live = live
        self.capture: Capture | None = None
        self.rules: QueueRules | None = None
        self.stop = asyncio.Event()
        self.hup = asyncio.Event()
        self.flush_tick = time.monotonic()
        self.handlers = Handlers(daemon)
        self.quotas = QuotaWatcher()
        self.front: Front | None = None
        self._audit_cache: tuple[float, dict[str, object]] = (-AUDIT_TTL, {})
        self._audit_task: asyncio.Future[dict[str, object]] | None = None
        daemon.extra_status = self._capture_status

    async def run(self) -> int:
        """Bind, install, listen, announce READY; meter until told to stop; shut down cleanly."""
        loop = asyncio.get_running_loop()
        tune_switch_interval()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.hup.set)
        try:
            if self.live:
                self._start_capture(loop)
            cfg = self.daemon.config
            cfg.socket.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.front = Front(cfg.socket, cfg.socket_group, local_answer(self.handlers.table()))
            self.front.bind()  # clients may connect from here on: they queue until it runs
            self.front.start()
            self.notifier.ready()
            self._set_status()
            log.info("metering %d monitors", len(self.daemon.meter.monitors))
            await self._main_loop()
        finally:
            self.notifier.stopping()
            self._stop_capture()
            if self.front is not None:
                await self.front.stop()
            ok = await self.daemon.flush()
            self.handlers.close()  # the report reader first: the store's close is then the last
            self.daemon.close()  # and checkpoints the WAL
        return 0 if ok["flushed"] else 1

    def _start_capture(self, loop: asyncio.AbstractEventLoop) -> None:
        spec = self.daemon.config.capture
        self.capture = Capture(spec, self.daemon.meter.feed)
        self.capture.open()  # bind, copy mode, fail-open: before any rule sends traffic
        if spec.manage_rules:
            self.rules = QueueRules(spec)
            self.rules.install()
        self.capture.attach(loop)

    def _stop_capture(self) -> None:
        # Rules first: packets then bypass the queue instead of waiting on a closing socket.
        if self.rules is not None:
            with contextlib.suppress(KernelError):
                self.rules.remove()
        if self.capture is not None:
            self.capture.detach()
            self.capture.close()

    async def _main_loop(self) -> None:
        interval = self.daemon.config.flush_interval
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + interval
        tasks = [asyncio.create_task(self._watchdog()), asyncio.create_task(self._sample())]
        try:
            while not self.stop.is_set():
                await _wait_any((self.stop, self.hup), next_flush - loop.time())
                self.flush_tick = time.monotonic()
                if self.hup.is_set():
                    self.hup.clear()
                    await self._reload()
                if loop.time() >= next_flush and not self.stop.is_set():
                    await self.daemon.flush()
                    next_flush = max(next_flush + interval, loop.time() + 1.0)
                    self._set_status()
                    await self._check_quotas()
        finally:
            for task in tasks:
                task.cancel()

    async def _check_quotas(self) -> None:
        """Log once per period when a quota crosses its warning level and its limit."""
        for line in self.quotas.update(await self.handlers.quota_statuses()):
            log.warning("%s", line)

    async def _reload(self) -> None:
        self.notifier.reloading()
        result = await self.daemon.reload()
        self.notifier.ready()
        self._set_status(None if result["reloaded"] else "reload rejected: see the log")

    async def _watchdog(self) -> None:
        every = self.notifier.watchdog_interval()
        if every is None:
            return
        limit = 2 * self.daemon.config.flush_interval + 30.0
        while True:
            if time.monotonic() - self.flush_tick < limit:
                self.notifier.watchdog()
            await asyncio.sleep(every)

    async def _sample(self) -> None:
        while True:
            self.daemon.rates_sampler.sample(time.time(), self.daemon.cumulative_bytes())
            await asyncio.sleep(RATE_SAMPLE_EVERY)

    def _set_status(self, note: str | None = None) -> None:
        stats = self.daemon.meter.stats
        state = self.daemon.flusher.state
        text = (
            f"{len(self.daemon.meter.monitors)} monitors, "
            f"{stats.in_packets + stats.out_packets} packets, "
            f"last flush {'failed' if state.failures else 'ok'}"
        )
        self.notifier.status(f"{text}; {note}" if note else text)

    async def _capture_status(self) -> dict[str, object]:
        # "socket" (connections, evictions) is added by the front, which alone knows them
        out: dict[str, object] = {"front": self.front.info() if self.front else None}
        if self.capture is None:
            return {**out, "capture": None}
        spec = self.daemon.config.capture
        stats = self.capture.stats
        out |= {
            "capture": {
                "queue": spec.queue,
                "packets": stats.packets,
                "errors": stats.errors,
                "last_error": stats.last_error or None,
            }
        }
        queue = queue_stats(spec.queue)
        if queue is not None:
            out["queue"] = queue._asdict()
        if self.rules is not None:
            out["audit"] = await self._cached_audit()
        return out

    async def _cached_audit(self) -> dict[str, object]:
        """The audit, recomputed at most once per AUDIT_TTL (kernel and meter read together).

        Reading the rule counters runs iptables: in a worker thread, so a client asking for
        status in a loop never holds up the packet loop; concurrent requests share one read.
        """
        at, audit = self._audit_cache
        if time.monotonic() - at < AUDIT_TTL:
            return audit
        if self._audit_task is None or self._audit_task.done():
            self._audit_task = asyncio.ensure_future(asyncio.to_thread(self._audit))
        audit = await asyncio.shield(self._audit_task)
        self._audit_cache = (time.monotonic(), audit)
        return audit

    def _audit(self) -> dict[str, object]:
        """What the kernel's queue rules counted versus what the meter metered."""
        assert self.rules is not None
        try:
            kernel = self.rules.counters()
        except KernelError as exc:
            return {"error": str(exc)}
        stats = self.daemon.meter.stats
        metered = {
            DIR_IN: (stats.in_packets, stats.in_bytes),
            DIR_OUT: (stats.out_packets, stats.out_bytes),
        }
        out: dict[str, object] = {}
        for direction, label in ((DIR_IN, "in"), (DIR_OUT, "out")):
            k_packets, k_bytes = kernel.get(direction, (0, 0))
            m_packets, m_bytes = metered[direction]
            out[label] = {
                "kernel_packets": k_packets,
                "kernel_bytes": k_bytes,
                "metered_packets": m_packets,
                "metered_bytes": m_bytes,
                "unmetered_bytes": max(0, k_bytes - m_bytes),
            }
        return out


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
