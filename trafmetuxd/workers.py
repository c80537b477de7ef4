"""The main process's side of the capture workers: start, ship, restart, and the stall guard.

One worker process per queue (worker.py). Each sends what it counted as shipments of frames
over its link; a shipment is applied (handed to `apply`) only once complete, so a worker that
dies midway loses that shipment whole (at most what it counted since the last one) and never
counts anything twice. A worker that dies is restarted; its queue bypasses meanwhile.

The stall guard: every GUARD_EVERY the kernel's queue table and each worker's progress page are
read. A worker whose queue has had packets waiting, with no verdict from it, for longer than
`stall_timeout` is killed: the kernel unbinds its queue at once, `--queue-bypass` lets traffic
through, and a fresh worker takes over. A worker that stopped turning its loop at all is treated
the same way after a longer grace, even with nothing waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trafmetuxd import specwire, wire
from trafmetuxd.capture import CaptureError
from trafmetuxd.collector import Snapshot
from trafmetuxd.kernel import QueueStats, netlink_backlog, queue_table
from trafmetuxd.link import interpreter
from trafmetuxd.spec import CaptureSpec, MonitorSpec, Network

log = logging.getLogger("trafmetuxd.workers")

GUARD_EVERY = 0.1  # seconds between two looks of the stall guard
START_TIMEOUT = 15.0  # seconds a new worker has to bind its queue
STOP_TIMEOUT = 5.0  # seconds a worker has to drain, ship and exit once told to stop
REFRESH_TIMEOUT = 0.5  # seconds a report or flush waits for the workers' latest counts
RESTART_DELAY = 0.1  # seconds before a dead worker is replaced ...
RESTART_DELAY_MAX = 5.0  # ... doubled after each worker that died young, up to this
SETTLED = 2.0  # seconds a worker must have run for its successor to start after RESTART_DELAY
HEARTBEAT_GRACE = 2.0  # seconds beyond 2 x stall_timeout a silent loop is given
READ_SIZE = 1 << 20

# apply(batches, stats): one complete shipment of one worker
Apply = Callable[[list[tuple[str, Snapshot]], dict[str, int]], None]


@dataclass(slots=True)
class Life:
    """One running worker process of a queue and what the guard knows of it."""

    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    progress: wire.Progress
    started: float  # monotonic
    portid: int = 0  # its queue socket's netlink port id (READY says it)
    batches: int = 0  # verdict batches, as last read from the progress page
    loops: int = 0
    verdict_at: float = 0.0  # monotonic time the batches last moved
    loop_at: float = 0.0
    waiting_since: float | None = None  # packets waiting, no verdict since then
    killed: str = ""  # why the guard killed it
    parts: list[tuple[str, Snapshot]] = field(default_factory=list)  # shipment in transit
    reading: asyncio.Task[None] | None = None  # applies its shipments until its link closes


@dataclass(slots=True)
class QueueWorker:
    """A queue and the succession of worker lives that serve it."""

    queue: int
    life: Life | None = None
    restarts: int = 0
    stalls: int = 0
    outage_seconds: float = 0.0  # waiting packets held by stalled workers, in seconds
    dropped_at_unbind: int = 0  # packets the kernel held when a stalled worker was killed
    metered: dict[str, int] = field(default_factory=dict)  # shipped stats, every life
    acked: int = -1  # highest shipment request answered
    last_error: str = ""
    down_since: float | None = None  # monotonic time its last life ended, while none runs


class Workers:
    """Runs one capture worker per queue and the stall guard; applies their shipments."""

    def __init__(
        self,
        spec: CaptureSpec,
        monitors: Sequence[MonitorSpec],
        apply: Apply,
        nice: int | None = None,
        local_networks: Sequence[Network] = (),
    ) -> None:
        self.spec = spec
        self.local_networks = tuple(local_networks)
        self.nice = nice  # the workers' priority when the main process lowered its own
        self.monitors = tuple(monitors)
        self.apply = apply
        self.queues = [QueueWorker(q) for q in range(spec.queue, spec.queue + spec.queues)]
        self.stopping = False
        self.guard_at = time.monotonic()  # the guard's last look (the watchdog reads it)
        self.enforcement: dict[str, object] = {}  # the last ENFORCE value, for new lives too
        self._requests = 0
        self._acked = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until each has bound its queue (CaptureError if not)."""
        # All at once: a worker takes a few hundred milliseconds to start and bind.
        spawned = await asyncio.gather(*(self._spawn(qw) for qw in self.queues),
                                       return_exceptions=True)  # fmt: skip
        for failure in spawned:
            if isinstance(failure, BaseException):
                raise failure  # stop() ends the workers that did start
        self._tasks = [asyncio.create_task(self._supervise(qw)) for qw in self.queues]
        self._tasks.append(asyncio.create_task(self._guard()))

    async def stop(self) -> None:
        """Tell every worker to take what is queued and ship it; wait for their exit."""
        self.stopping = True
        for task in self._tasks[-1:]:
            task.cancel()  # the guard: nothing is to be killed for stalling from here on
        for qw in self.queues:
            if qw.life is not None and not qw.life.writer.is_closing():
                qw.life.writer.write(wire.frame(wire.STOP))
        readers = [qw.life.reading for qw in self.queues if qw.life and qw.life.reading]
        # The final shipments are applied by the readers, which end when the workers exit.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.gather(*readers, return_exceptions=True)
        for qw in self.queues:
            if qw.life is not None and qw.life.proc.returncode is None:
                log.error("capture worker of queue %d did not stop: killed", qw.queue)
                qw.life.proc.kill()
        await asyncio.gather(*readers, *self._tasks, return_exceptions=True)

    async def _spawn(self, qw: QueueWorker) -> None:
        """A new worker life for qw: process, link, configuration, READY."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        progress = wire.Progress.create()
        try:
            with theirs:
                proc = await asyncio.create_subprocess_exec(
                    *self._command(qw.queue, theirs.fileno(), progress.fd),
                    executable=interpreter(),
                    stdin=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(), progress.fd),
                )
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=READ_SIZE)
        except BaseException:
            progress.close()
            ours.close()
            raise
        writer.write(wire.json_frame(wire.CONFIG, self._config()))
        if self.enforcement:
            writer.write(wire.json_frame(wire.ENFORCE, self.enforcement))
        now = time.monotonic()
        life = Life(proc, writer, progress, now, verdict_at=now, loop_at=now)
        frames = wire.Frames()
        await self._await_ready(qw, life, reader, frames)
        qw.life, qw.down_since = life, None
        life.reading = asyncio.create_task(self._read(qw, life, reader, frames))

    async def _await_ready(
        self, qw: QueueWorker, life: Life, reader: asyncio.StreamReader, frames: wire.Frames
    ) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        raise CaptureError(f"capture worker of queue {qw.queue} exited at start")
                    for kind, body in frames.feed(data):
                        if kind == wire.FAILED:
                            raise CaptureError(body.decode(errors="replace"))
                        if kind == wire.READY:
                            life.portid = int(wire.json_body(body).get("portid", 0))
                            return
        except (CaptureError, TimeoutError) as exc:
            qw.last_error = str(exc) or "no READY in time"
            await self._end(life)
            raise CaptureError(f"capture worker of queue {qw.queue}: {qw.last_error}") from exc

    def _config(self) -> dict[str, object]:
        return {
            "capture": specwire.capture_to_wire(self.spec),
            "monitors": [specwire.monitor_to_wire(m) for m in self.monitors],
            "local_networks": [str(net) for net in self.local_networks],
        }

    def _command(self, queue: int, link_fd: int, progress_fd: int) -> list[str]:
        return [
            sys.executable, "-m", "trafmetuxd.worker",
            "--queue", str(queue),
            "--parent", str(os.getpid()),
            "--link-fd", str(link_fd),
            "--progress-fd", str(progress_fd),
            *(["--nice", str(self.nice)] if self.nice is not None else []),
        ]  # fmt: skip

    async def _end(self, life: Life) -> None:
        """Kill a life if it still runs, reap it, release its link and page."""
        if life.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                life.proc.kill()
        await life.proc.wait()
        life.writer.close()
        life.progress.close()

    # -- shipments ---------------------------------------------------------------------------
    async def _read(
        self, qw: QueueWorker, life: Life, reader: asyncio.StreamReader, frames: wire.Frames
    ) -> None:
        """Apply the worker's shipments until its link closes (it exited or was killed)."""
        try:
            while data := await reader.read(READ_SIZE):
                for kind, body in frames.feed(data):
                    await self._on_frame(qw, life, kind, body)
        except (ConnectionError, ValueError) as exc:
            log.error("link to the capture worker of queue %d broken: %s", qw.queue, exc)
        life.parts.clear()  # an incomplete shipment is never applied
        await self._end(life)

    async def _on_frame(self, qw: QueueWorker, life: Life, kind: int, body: bytes) -> None:
        if kind == wire.PART:
            life.parts.append(wire.read_part(body))
        elif kind == wire.DONE:
            request, stats = wire.read_done(body)
            parts, life.parts = life.parts, []
            self.apply(parts, stats)
            for key, value in stats.items():
                qw.metered[key] = qw.metered.get(key, 0) + value
            async with self._acked:
                qw.acked = max(qw.acked, request)
                self._acked.notify_all()

    async def refresh(self, timeout: float = REFRESH_TIMEOUT) -> bool:
        """Have every running worker ship what it counted so far; False if one was late."""
        if self.stopping:
            return True  # stop() applied their final shipments
        self._requests += 1
        request = self._requests
        asking = [
            (qw, qw.life)
            for qw in self.queues
            if qw.life is not None and not qw.life.killed and qw.life.proc.returncode is None
        ]
        for _qw, life in asking:
            if not life.writer.is_closing():
                life.writer.write(wire.ship_frame(request))

        def answered() -> bool:
            # a worker that died meanwhile has nothing more to say
            return all(qw.acked >= request or qw.life is not life for qw, life in asking)

        try:
            async with asyncio.timeout(timeout), self._acked:
                await self._acked.wait_for(answered)
        except TimeoutError:
            return False
        return True

    async def reconfigure(
        self, monitors: Sequence[MonitorSpec], local_networks: Sequence[Network] = ()
    ) -> None:
        """New monitors for every worker (and every later life); retired counts are shipped."""
        self.monitors = tuple(monitors)
        self.local_networks = tuple(local_networks)
        frame = wire.json_frame(wire.CONFIG, self._config())
        for qw in self.queues:
            if qw.life is not None and not qw.life.writer.is_closing():
                qw.life.writer.write(frame)
        await self.refresh()

    def enforce(self, value: dict[str, object]) -> None:
        """The enforcing quotas and which are over their limit, to every worker now."""
        self.enforcement = value
        frame = wire.json_frame(wire.ENFORCE, value)
        for qw in self.queues:
            if qw.life is not None and not qw.life.writer.is_closing():
                qw.life.writer.write(frame)

    # -- supervision and the stall guard ----------------------------------------------------
    async def _supervise(self, qw: QueueWorker) -> None:
        """Restart the queue's worker whenever it dies, until stop()."""
        delay = RESTART_DELAY
        while True:
            life = qw.life
            if life is not None:
                status = await life.proc.wait()
                if self.stopping:
                    return
                why = life.killed or f"exited with status {status}"
                log.error("capture worker of queue %d (pid %d) %s; restarting", qw.queue,
                          life.proc.pid, why)  # fmt: skip
                young = time.monotonic() - life.started < SETTLED
                delay = min(2 * delay, RESTART_DELAY_MAX) if young else RESTART_DELAY
                qw.life, qw.down_since = None, time.monotonic()
            await asyncio.sleep(delay)
            if self.stopping:
                return
            try:
                await self._spawn(qw)
                qw.restarts += 1
            except (CaptureError, OSError) as exc:
                qw.last_error = str(exc)
                delay = min(2 * delay, RESTART_DELAY_MAX)
                log.error("cannot restart the capture worker of queue %d: %s", qw.queue, exc)

    async def _guard(self) -> None:
        while True:
            await asyncio.sleep(GUARD_EVERY)
            self.guard_at = time.monotonic()
            table = queue_table()
            backlog = {} if table else netlink_backlog()
            for qw in self.queues:
                life = qw.life
                if life is None or life.killed:
                    continue
                kernel = table.get(qw.queue)
                # The queue table is root's only: unprivileged, a socket holding unread
                # messages says the same of a worker that stopped (one packet or more waits).
                waiting = kernel.waiting if kernel else min(1, backlog.get(life.portid, 0))
                self._look(qw, life, waiting, kernel is not None, self.guard_at)

    def _look(self, qw: QueueWorker, life: Life, waiting: int, exact: bool, now: float) -> None:
        """One look at a worker: note its progress; kill it if it holds packets or froze."""
        batches, loops = life.progress.read()
        if batches != life.batches:
            life.batches, life.verdict_at = batches, now
        if loops != life.loops:
            life.loops, life.loop_at = loops, now
        if waiting == 0 or life.verdict_at == now:
            life.waiting_since = None
        elif life.waiting_since is None:
            life.waiting_since = now
        timeout = self.spec.stall_timeout
        if life.waiting_since is not None and now - life.waiting_since >= timeout:
            qw.outage_seconds += now - life.waiting_since
            qw.dropped_at_unbind += waiting if exact else 0  # the count is root's to read
            self._kill(qw, life, f"held {waiting} packets without a verdict for {timeout:g} s")
        elif now - life.loop_at >= 2 * timeout + HEARTBEAT_GRACE:
            self._kill(qw, life, f"stopped turning its loop for {now - life.loop_at:.1f} s")

    def _kill(self, qw: QueueWorker, life: Life, why: str) -> None:
        """SIGKILL: the kernel unbinds the queue, whose rules then bypass until a new worker."""
        life.killed = f"killed by the stall guard: {why}"
        qw.stalls += 1
        with contextlib.suppress(ProcessLookupError):
            os.kill(life.proc.pid, signal.SIGKILL)

    # -- what status and the watchdog read ---------------------------------------------------
    def progressing(self, now: float, limit: float) -> bool:
        """The packet path moves: the guard looks, and no queue has been without a worker
        for `limit` seconds (its restarts keep failing)."""
        if now - self.guard_at > limit:
            return False
        return all(qw.down_since is None or now - qw.down_since < limit for qw in self.queues)

    def status(self, table: dict[int, QueueStats]) -> list[dict[str, object]]:
        """Per queue: its worker, restarts, stalls and what the kernel says of the queue."""
        out: list[dict[str, object]] = []
        for qw in self.queues:
            life = qw.life
            kernel = table.get(qw.queue)
            out.append(
                {
                    "queue": qw.queue,
                    "pid": life.proc.pid if life is not None else None,
                    "restarts": qw.restarts,
                    "stalls": qw.stalls,
                    "outage_seconds": round(qw.outage_seconds, 3),
                    "dropped_at_unbind": qw.dropped_at_unbind,
                    "packets": qw.metered.get("packets", 0),
                    "errors": qw.metered.get("errors_capture", 0),
                    "kernel": kernel._asdict() if kernel is not None else None,
                    "last_error": qw.last_error or None,
                }
            )
        return out
