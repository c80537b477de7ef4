"""NFQUEUE binding, queue flags and verdicts: the only netfilterqueue import."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable

import netfilterqueue

from trafmetuxd import nfqconfig
from trafmetuxd.logs import RateLimitedLog
from trafmetuxd.spec import DIR_IN, DIR_OUT, CaptureSpec

log = logging.getLogger("trafmetuxd.capture")

Handle = Callable[[float, bytes, int, str], None]

# Hooks up to LOCAL_IN (PREROUTING 0, INPUT 1) see arriving packets; the others (FORWARD 2,
# OUTPUT 3, POSTROUTING 4) are told by their output interface.
NF_INET_LOCAL_IN = 1
# Messages taken per wake-up: the queue is drained in bounded batches so that under overload
# the event loop still runs the flush timer, the API and the watchdog between batches.
BATCH = 256
_RECV_SIZE = 4096  # the binding's own buffer size; copy_range keeps messages far smaller


class CaptureError(Exception):
    """The queue could not be bound or configured; the message says what to do."""


class CaptureStats:
    """Counters of the capture path (read by status and the accuracy audit)."""

    __slots__ = ("errors", "last_error", "packets", "unmetered")

    def __init__(self) -> None:
        self.packets = 0  # packets given a verdict by the callback
        self.errors = 0  # exceptions caught on the packet path or the reader
        self.last_error = ""
        self.unmetered = 0  # packets accepted while configuring the queue, never metered


class _Batch:
    """A socket-like reader for run_socket() that reports EAGAIN after BATCH messages."""

    __slots__ = ("left", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.left = 0

    def recv(self, size: int) -> bytes:
        """One netlink message, or EAGAIN once the batch is used up (ends run_socket)."""
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        self.left -= 1
        return self.sock.recv(size, socket.MSG_DONTWAIT)


class Capture:
    """One bound NFQUEUE feeding handle(ts, ip_bytes, direction, iface) and accepting all."""

    def __init__(
        self,
        spec: CaptureSpec,
        handle: Handle,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spec = spec
        self._handle = handle
        self._clock = clock
        self._now = clock()
        self._queue: netfilterqueue.NetfilterQueue | None = None
        self._sock: socket.socket | None = None
        self._batch: _Batch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._names: dict[int, str] = {}
        self._errlog = RateLimitedLog(log)
        self.stats = CaptureStats()

    def open(self) -> None:
        """Bind the queue (copy mode, length, buffer), then set fail-open; CaptureError if not."""
        spec = self._spec
        try:
            queue = netfilterqueue.NetfilterQueue()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                queue.bind(
                    spec.queue,
                    self._on_packet,
                    max_len=spec.queue_maxlen,
                    mode=netfilterqueue.COPY_PACKET,
                    range=spec.copy_range,
                    sock_len=spec.rcvbuf,
                )
        except OSError as exc:
            raise CaptureError(
                f"cannot bind NFQUEUE {spec.queue}: {exc}. Another process may hold this queue "
                "(see /proc/net/netfilter/nfnetlink_queue) or CAP_NET_ADMIN is missing; choose "
                "another capture.queue or stop the other consumer"
            ) from exc
        for warning in caught:
            log.warning("NFQUEUE %d: %s", spec.queue, warning.message)
        self._queue = queue
        fd = queue.get_fd()
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, nfqconfig.NETLINK_NETFILTER, os.dup(fd)
        )
        self._batch = _Batch(self._sock)
        self._set_flags(fd)

    def _set_flags(self, fd: int) -> None:
        """Fail-open on (unless configured off), GSO off: the kernel segments before queueing."""
        spec = self._spec
        wanted = nfqconfig.NFQA_CFG_F_FAIL_OPEN if spec.fail_open else 0
        mask = nfqconfig.NFQA_CFG_F_FAIL_OPEN | nfqconfig.NFQA_CFG_F_GSO
        try:
            self.stats.unmetered += nfqconfig.set_queue_flags(fd, spec.queue, wanted, mask)
        except OSError as exc:
            if not spec.fail_open:
                log.warning("NFQUEUE %d: cannot set queue flags: %s", spec.queue, exc)
                return
            self.close()
            raise CaptureError(
                f"cannot set fail-open on NFQUEUE {spec.queue}: {exc}. The kernel would drop "
                "packets whenever the queue is full; refusing to start. Set "
                "capture.fail_open = false to run without it"
            ) from exc

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start taking packets on the event loop."""
        if self._sock is None:
            raise CaptureError("attach() before open()")
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._on_readable)

    def detach(self) -> None:
        """Stop taking packets (the rules' bypass or the queue's fail-open takes over)."""
        if self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._loop = None

    def close(self) -> None:
        """Verdict what is still queued, then unbind (call after the rules are removed)."""
        self.detach()
        if self._queue is not None and self._batch is not None:
            # Unbinding drops every packet still waiting for a verdict: drain them first.
            self.drain(limit=self._spec.queue_maxlen + BATCH)
        if self._queue is not None:
            self._queue.unbind()
            self._queue = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._batch = None

    def drain(self, limit: int = BATCH) -> None:
        """Take up to `limit` queued messages now, without blocking."""
        queue, batch = self._queue, self._batch
        if queue is None or batch is None:
            return
        self._now = self._clock()
        batch.left = limit
        try:
            queue.run_socket(batch)  # type: ignore[arg-type]  # it only calls recv()
        except OSError as exc:
            self._fail(exc)

    def refresh_interfaces(self) -> None:
        """Forget cached interface names (renames); looked up again on the next packet."""
        self._names = {}

    def _on_readable(self) -> None:
        """Event-loop reader: one bounded batch, one clock reading for all of it."""
        self.drain(BATCH)

    def _on_packet(self, pkt: netfilterqueue.Packet) -> None:
        """Accept first, then meter; nothing raised here reaches the binding."""
        try:
            # The verdict goes out before any metering: the network never waits on the meter.
            # The payload stays readable until this callback returns (netfilterqueue 1.1).
            pkt.accept()
            self.stats.packets += 1
            if pkt.hook <= NF_INET_LOCAL_IN:
                direction, ifindex = DIR_IN, pkt.indev
            else:
                direction, ifindex = DIR_OUT, pkt.outdev
            name = self._names.get(ifindex)
            if name is None:
                name = self._resolve(ifindex)
            self._handle(self._now, pkt.get_payload(), direction, name)
        except Exception as exc:
            self._fail(exc)

    def _resolve(self, ifindex: int) -> str:
        """Interface name for an index, refreshing the whole map (interfaces come and go)."""
        try:
            self._names = dict(socket.if_nameindex())
        except OSError:
            self._names = {}
        name = self._names.get(ifindex)
        if name is None:
            # Gone already (or index 0): a stable placeholder, not cached so it is retried.
            return f"if{ifindex}"
        return name

    def _fail(self, exc: BaseException) -> None:
        """Count an error and log it at a limited rate."""
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        self._errlog.error("capture error (packets still accepted): %s", self.stats.last_error)
