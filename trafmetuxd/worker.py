"""A capture worker process: one queue, batched verdicts, realtime collectors, nothing else.

Started by the main process as `python -m trafmetuxd.worker --queue N ...` with one end of a
private link. It binds its queue, then loops: take the queued packets in batches (each accepted
by one batch verdict before it is metered), count them into its realtime collectors, and ship
what it counted when the main process asks (every second for the live figures, before every
flush, on reload and on stop). No SQLite, socket server, report or pydantic runs here: nothing
but the packet path can hold up a verdict. It dies with the main process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence

from trafmetuxd import enforce, logs, specwire, wire
from trafmetuxd.capture import Capture, CaptureError
from trafmetuxd.child import die_with_parent
from trafmetuxd.meter import Meter, MeterStats
from trafmetuxd.nfbatch import BatchStats, Interfaces, feed_batch
from trafmetuxd.spec import CaptureSpec, MonitorSpec, Network, QuotaSpec

log = logging.getLogger("trafmetuxd.worker")

IDLE_POLL_MS = 100  # the heartbeat's period when no packet arrives
BATCHES_PER_TURN = 16  # batches taken before the link gets a look
OUTBOX_LIMIT = 1 << 20  # bytes of shipment frames encoded ahead of what the link took


class Worker:
    """The worker's state: its meter, its queue, its link and the shipment being sent."""

    def __init__(
        self, link: socket.socket, queue: int, progress: wire.Progress, spec: CaptureSpec
    ) -> None:
        self.link = link
        self.queue = queue
        self.progress = progress
        self.meter = Meter(())
        self.batch_stats = BatchStats()
        self.interfaces = Interfaces(spec.interfaces, _interface_names)
        self.capture = Capture(spec, queue, self._consume)
        self.enforcer = enforce.Enforcer()
        self.enforcing: list[QuotaSpec] = []  # the enforcing quotas, as the main process sent
        self.frames = wire.Frames()
        self.outbox = bytearray()
        self.pending: Iterator[bytes] | None = None  # the shipment being encoded
        self.asked = -1  # highest shipment request not yet started
        self.stopping = False
        self.loops = 0

    def _consume(self, ts: float, buf: bytes, count: int, slot: int) -> None:
        feed_batch(self.meter, self.batch_stats, ts, buf, count, slot, self.interfaces)

    def _judge(self, buf: bytes, count: int, slot: int) -> bytes:
        return enforce.judge_batch(self.enforcer, self.queue, buf, count, slot, self.interfaces)

    def enforce(self, body: bytes) -> None:
        """New enforcing quotas and over-limit state (an ENFORCE frame)."""
        value = wire.json_body(body)
        quotas = [specwire.quota_from_wire(q) for q in value.get("quotas", [])]
        if quotas != self.enforcing:
            self.enforcing = quotas
            self.enforcer.configure(self.meter.monitors, quotas)
        left = {str(k): int(v) for k, v in value.get("left", {}).items()}
        self.enforcer.told(enforce.over_from_wire(value.get("over", {})), left)
        self.capture.judge = self._judge if self.enforcer.active else None

    def configure(self, monitors: Sequence[MonitorSpec]) -> None:
        """New monitors; what dropped or rebuilt collectors held goes out in a shipment."""
        retired = self.meter.reconfigure(monitors)
        names = [q.name for q in self.enforcer.quotas]
        over = dict(zip(names, self.enforcer.over, strict=True))
        left = dict(zip(names, self.enforcer.left, strict=True))
        self.enforcer.configure(monitors, self.enforcing)
        self.enforcer.set_over(over, left)  # until the main process says otherwise
        self.capture.judge = self._judge if self.enforcer.active else None
        if any(snap.totals or snap.flows for _, snap in retired):
            self.outbox += b"".join(wire.shipment(retired, -1, {}))

    def stats(self) -> dict[str, int]:
        """What was counted since the last shipment besides the collectors (then zeroed)."""
        meter, batch, capture = self.meter.stats, self.batch_stats, self.capture.stats
        out = {**meter.as_dict(), "packets": batch.packets, "truncated": batch.truncated}
        out |= {"errors_capture": capture.errors, "unmetered": capture.unmetered}
        out |= self.enforcer.take_counts()
        self.meter.stats = MeterStats()
        self.batch_stats = BatchStats()
        capture.errors = capture.unmetered = 0
        return out

    def start_shipment(self) -> None:
        """Swap every collector now and encode the shipment piece by piece from here on."""
        request, self.asked = self.asked, -1
        self.enforcer.unshipped = {}  # the main process counts all of it from this shipment
        self.pending = wire.shipment(self.meter.swap(), request, self.stats())

    def encode_some(self) -> None:
        """One more piece of the shipment into the outbox (each piece costs a ms or two)."""
        if self.pending is None or len(self.outbox) > OUTBOX_LIMIT:
            return
        piece = next(self.pending, None)
        if piece is None:
            self.pending = None
        else:
            self.outbox += piece

    def send_some(self) -> None:
        """Write what the link takes now, never waiting for the main process."""
        if not self.outbox:
            return
        try:
            sent = self.link.send(self.outbox, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        del self.outbox[:sent]

    def read_link(self) -> bool:
        """Act on the main process's frames; False when it closed the link."""
        try:
            data = self.link.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        if not data:
            return False
        for kind, body in self.frames.feed(data):
            if kind == wire.SHIP:
                self.asked = max(self.asked, wire.request_id(body))
            elif kind == wire.CONFIG:
                self.configure(_monitors(body))
                self.meter.set_local_networks(_local_networks(body))
            elif kind == wire.ENFORCE:
                self.enforce(body)
            elif kind == wire.STOP:
                self.stopping = True
        return True

    def turn(self, poller: select.poll) -> bool:
        """One turn of the loop; False when the worker should stop."""
        events = dict(poller.poll(0 if self.outbox or self.pending else IDLE_POLL_MS))
        self.loops += 1
        if events.get(self.capture.fileno()):
            self.capture.drain(BATCHES_PER_TURN)
        self.progress.write(self.capture.stats.batches, self.loops)
        if events.get(self.link.fileno()) and not self.read_link():
            return False
        if self.asked >= 0 and self.pending is None:
            self.start_shipment()
        self.encode_some()
        self.send_some()
        return not self.stopping

    def run(self) -> int:
        """Meter until told to stop; then take what is queued and ship everything."""
        poller = select.poll()
        poller.register(self.capture.fileno(), select.POLLIN)
        poller.register(self.link.fileno(), select.POLLIN)
        while self.turn(poller):
            pass
        self.capture.close()  # the rules are gone by now: take what is still queued
        self.asked = max(self.asked, 0)
        self.start_shipment()
        self.link.setblocking(True)
        while self.pending is not None:
            self.encode_some()
            self.link.sendall(self.outbox)
            self.outbox.clear()
        return 0


def _interface_names() -> dict[int, str]:
    """The system's interfaces, index -> name (none when they cannot be read)."""
    try:
        return dict(socket.if_nameindex())
    except OSError:
        return {}


def _monitors(body: bytes) -> list[MonitorSpec]:
    return [specwire.monitor_from_wire(m) for m in wire.json_body(body)["monitors"]]


def _local_networks(body: bytes) -> list[Network]:
    return [ipaddress.ip_network(n) for n in wire.json_body(body).get("local_networks", [])]


def _read_config(
    link: socket.socket,
) -> tuple[CaptureSpec, list[MonitorSpec], list[Network]]:
    """The first frame from the main process: capture settings, monitors, local networks."""
    frames = wire.Frames()
    while True:
        data = link.recv(1 << 16)
        if not data:
            raise EOFError("the main process closed the link before configuring")
        for kind, body in frames.feed(data):
            if kind == wire.CONFIG:
                value = wire.json_body(body)
                capture = specwire.capture_from_wire(value["capture"])
                return capture, _monitors(body), _local_networks(body)


def build_parser() -> argparse.ArgumentParser:
    """Arguments the main process passes (not meant to be typed by hand)."""
    parser = argparse.ArgumentParser(prog="trafmetuxd.worker")
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--link-fd", type=int, required=True)
    parser.add_argument("--progress-fd", type=int, required=True)
    parser.add_argument("--nice", type=int, help="the priority to take back (main's own)")
    return parser


def take_priority(nice: int | None) -> None:
    """Run at the daemon's own priority, above the main process, which lowered its own."""
    if nice is None:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:  # no CAP_SYS_NICE and RLIMIT_NICE too low: the unit sets LimitNICE
        log.warning("capture worker keeps the main process's lower priority: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Bind, meter, ship; exit 0 when told to stop, 1 when the queue cannot be bound."""
    args = build_parser().parse_args(argv)
    die_with_parent(args.parent)
    # The main process decides when to stop (a STOP frame); a terminal's ^C or hangup reaches
    # the whole process group and must not end the packet path under a running daemon.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.setup()
    take_priority(args.nice)
    link = socket.socket(fileno=args.link_fd)
    try:
        spec, monitors, local = _read_config(link)
    except (EOFError, ConnectionResetError):
        return 0  # the main process went away before configuring this worker
    worker = Worker(link, args.queue, wire.Progress(args.progress_fd), spec)
    worker.meter.reconfigure(monitors)
    worker.meter.set_local_networks(local)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: setattr(worker, "stopping", True))
    try:
        return serve(worker, link, args.queue)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the main process is gone (killed): nobody is left to ship to


def serve(worker: Worker, link: socket.socket, queue: int) -> int:
    """Bind (or report why not), say READY, meter until told to stop."""
    try:
        worker.capture.open()
    except CaptureError as exc:
        link.sendall(wire.frame(wire.FAILED, str(exc).encode()))
        return 1
    ready = {"queue": queue, "pid": os.getpid(), "portid": worker.capture.portid(),
             "started": time.time()}  # fmt: skip
    link.sendall(wire.json_frame(wire.READY, ready))
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
