"""One NFQUEUE: binding, flags, batched reads and batch verdicts. The only netfilterqueue import.

netfilterqueue keeps the binding (bind, copy mode, length, buffer, get_fd); the hot loop reads
the netlink messages itself: recvmmsg() takes up to BATCH queued packets in one system call,
each into a fixed slot of one buffer; one NFQNL_MSG_VERDICT_BATCH accepts all of them (every id
up to the highest) before a single byte is metered; then the whole batch goes to `consume`.
While a quota is over its limit, `judge` first gives the packets it blocks or marks their own
verdicts; the batch verdict then accepts the ids still queued (enforce.py).
Nothing waits for a batch to fill: a read takes what is queued now, so no packet waits for its
verdict longer than the batch before it took to meter.
"""

from __future__ import annotations

import ctypes
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
from trafmetuxd.nfbatch import last_packet_id
from trafmetuxd.spec import CaptureSpec

log = logging.getLogger("trafmetuxd.capture")

# consume(ts, buf, count, slot): meter `count` messages received into slots of `slot` bytes
Consume = Callable[[float, bytes, int, int], None]
# judge(buf, count, slot): the individual verdicts (drops, marks) of a batch, b"" for none
Judge = Callable[[bytes, int, int], bytes]

BATCH = 64  # messages per read and per verdict at most
SLOT_SPARE = 512  # bytes per slot beyond the copied payload: the message's other attributes
MSG_DONTWAIT = 0x40


class CaptureError(Exception):
    """The queue could not be bound or configured; the message says what to do."""


class CaptureStats:
    """Counters of the capture path (read by status and the accuracy audit)."""

    __slots__ = ("batches", "errors", "last_error", "messages", "unmetered")

    def __init__(self) -> None:
        self.messages = 0  # netlink messages received (packets, and the odd error answer)
        self.batches = 0  # batch verdicts sent
        self.errors = 0  # exceptions caught on the packet path or the reader
        self.last_error = ""
        self.unmetered = 0  # packets accepted while configuring the queue, never metered


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("hdr", _MsgHdr), ("len", ctypes.c_uint))


class Receiver:
    """recvmmsg(2) into BATCH fixed-size slots of one buffer, set up once."""

    def __init__(self, fd: int, slot: int, batch: int = BATCH) -> None:
        self.fd = fd
        self.slot = slot
        self.batch = batch
        self._buf = ctypes.create_string_buffer(slot * batch)
        self._addr = ctypes.addressof(self._buf)
        self._iov = (_IoVec * batch)()
        self._vec = (_MMsgHdr * batch)()
        for i in range(batch):
            self._iov[i].base = self._addr + i * slot
            self._iov[i].len = slot
            self._vec[i].hdr.iov = ctypes.pointer(self._iov[i])
            self._vec[i].hdr.iovlen = 1
        libc = ctypes.CDLL(None, use_errno=True)
        self._recvmmsg = libc.recvmmsg
        self._recvmmsg.argtypes = (
            ctypes.c_int,
            ctypes.POINTER(_MMsgHdr),
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        )
        self._recvmmsg.restype = ctypes.c_int

    def receive(self) -> tuple[bytes, int]:
        """(the filled slots' bytes, message count); count 0 when nothing is queued now."""
        count = self._recvmmsg(self.fd, self._vec, self.batch, MSG_DONTWAIT, None)
        if count < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EINTR):
                return b"", 0
            raise OSError(code, os.strerror(code))
        return ctypes.string_at(self._addr, count * self.slot), count


class Capture:
    """One bound NFQUEUE: every packet is accepted in batches, then handed to consume."""

    def __init__(
        self,
        spec: CaptureSpec,
        queue: int,
        consume: Consume,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spec = spec
        self.queue = queue
        self._consume = consume
        self._clock = clock
        self._binding: netfilterqueue.NetfilterQueue | None = None
        self._sock: socket.socket | None = None
        self._receiver: Receiver | None = None
        self._seq = 0
        self._errlog = RateLimitedLog(log)
        self.stats = CaptureStats()
        # Set only while a quota is over its limit (enforce.py): None keeps the batch path as
        # it is without enforcement, one accept before any look at the packets.
        self.judge: Judge | None = None

    @property
    def slot(self) -> int:
        """Bytes per received message at most: the copied payload and its attributes."""
        return self._spec.copy_range + SLOT_SPARE

    def portid(self) -> int:
        """The queue socket's netlink port id (how /proc/net/netlink names it)."""
        if self._sock is None:
            raise CaptureError("portid() before open()")
        return int(self._sock.getsockname()[0])

    def fileno(self) -> int:
        """The queue socket's descriptor (poll it for readability)."""
        if self._sock is None:
            raise CaptureError("fileno() before open()")
        return self._sock.fileno()

    def open(self) -> None:
        """Bind the queue (copy mode, length, buffer), then set fail-open; CaptureError if not."""
        spec, queue = self._spec, self.queue
        try:
            binding = netfilterqueue.NetfilterQueue()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                binding.bind(
                    queue,
                    _never_called,
                    max_len=spec.queue_maxlen,
                    mode=netfilterqueue.COPY_PACKET,
                    range=spec.copy_range,
                    sock_len=spec.rcvbuf,
                )
        except OSError as exc:
            raise CaptureError(
                f"cannot bind NFQUEUE {queue}: {exc}. Another process may hold this queue "
                "(see /proc/net/netfilter/nfnetlink_queue) or CAP_NET_ADMIN is missing; choose "
                "another capture.queue or stop the other consumer"
            ) from exc
        for warning in caught:
            log.warning("NFQUEUE %d: %s", queue, warning.message)
        self._binding = binding
        fd = binding.get_fd()
        # The binding's own socket (a duplicate descriptor of it): verdicts must come from the
        # queue's owner, and when this process dies the kernel unbinds the queue at once.
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, nfqconfig.NETLINK_NETFILTER, os.dup(fd)
        )
        self._receiver = Receiver(self._sock.fileno(), self.slot)
        self._set_flags(fd)

    def _set_flags(self, fd: int) -> None:
        """Fail-open on (unless configured off), GSO off: the kernel segments before queueing."""
        spec = self._spec
        wanted = nfqconfig.NFQA_CFG_F_FAIL_OPEN if spec.fail_open else 0
        mask = nfqconfig.NFQA_CFG_F_FAIL_OPEN | nfqconfig.NFQA_CFG_F_GSO
        try:
            self.stats.unmetered += nfqconfig.set_queue_flags(fd, self.queue, wanted, mask)
        except OSError as exc:
            if not spec.fail_open:
                log.warning("NFQUEUE %d: cannot set queue flags: %s", self.queue, exc)
                return
            self.close()
            raise CaptureError(
                f"cannot set fail-open on NFQUEUE {self.queue}: {exc}. The kernel would drop "
                "packets whenever the queue is full; refusing to start. Set "
                "capture.fail_open = false to run without it"
            ) from exc

    def close(self) -> None:
        """Verdict what is still queued, then unbind (call after the rules are removed)."""
        if self._binding is not None and self._receiver is not None:
            # Unbinding drops every packet still waiting for a verdict: take them first.
            self.drain(batches=self._spec.queue_maxlen // BATCH + 2)
        if self._binding is not None:
            self._binding.unbind()
            self._binding = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._receiver = None

    def drain(self, batches: int = 16) -> int:
        """Take up to `batches` batches queued now, without blocking; the packets taken."""
        receiver, sock = self._receiver, self._sock
        if receiver is None or sock is None:
            return 0
        taken = 0
        for _ in range(batches):
            try:
                buf, count = receiver.receive()
            except OSError as exc:
                self._fail(exc)  # ENOBUFS: the kernel could not queue to us (fail-open took it)
                continue
            if count == 0:
                break
            taken += count
            self.stats.messages += count
            self.handle_batch(sock, buf, count, receiver.slot)
        return taken

    def handle_batch(self, sock: socket.socket, buf: bytes, count: int, slot: int) -> None:
        """Verdicts for a batch received (judged first only while a quota enforces), then meter."""
        if self.judge is not None:
            self._judged(sock, self.judge, buf, count, slot)
        self._verdict(sock, last_packet_id(buf, count, slot))
        try:
            self._consume(self._clock(), buf, count, slot)
        except Exception as exc:  # a metering bug must never stop the verdicts
            self._fail(exc)

    def _verdict(self, sock: socket.socket, last_id: int) -> None:
        """Accept every queued packet up to last_id (the verdict comes before any metering)."""
        if last_id < 0:
            return
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            sock.send(nfqconfig.verdict_batch_message(self.queue, last_id, self._seq))
            self.stats.batches += 1
        except OSError as exc:
            self._fail(exc)

    def _judged(self, sock: socket.socket, judge: Judge, buf: bytes, count: int, slot: int) -> None:
        """Send the batch's individual verdicts; a failure leaves every packet to the accept."""
        try:
            verdicts = judge(buf, count, slot)
            if verdicts:
                sock.send(verdicts)
        except Exception as exc:  # enforcement fails open: the batch verdict accepts them all
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """Count an error and log it at a limited rate."""
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        self._errlog.error("capture error (packets still accepted): %s", self.stats.last_error)


def _never_called(pkt: netfilterqueue.Packet) -> None:
    """The binding's callback: never run, since its own loop never reads the socket."""
    pkt.accept()
