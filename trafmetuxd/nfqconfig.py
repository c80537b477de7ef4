"""The nfnetlink_queue messages the binding does not expose: queue flags, with their ACK."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import NamedTuple

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_GSO = 1 << 2
NF_DROP = 0
NF_ACCEPT = 1

# struct nlmsghdr (host order) and struct nfgenmsg (family, version, res_id in network order).
_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLATTR = struct.Struct("=HH")
_BE32 = struct.Struct("!I")
_ERRNO = struct.Struct("=i")
_PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
# A sequence number of our own: the binding's library numbers its requests from time(), and the
# ACK we wait for is told apart by it.
_SEQ_BASE = 0x74720000


class NetlinkMessage(NamedTuple):
    """One netlink message: its type, flags, sequence number and body after the header."""

    type: int
    flags: int
    seq: int
    body: bytes


def _align(n: int) -> int:
    """Round up to netlink's 4-byte alignment."""
    return (n + 3) & ~3


def _attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded."""
    length = _NLATTR.size + len(value)
    return _NLATTR.pack(length, kind) + value + b"\0" * (_align(length) - length)


def _message(msg_type: int, flags: int, seq: int, queue: int, attrs: bytes) -> bytes:
    """A queue-subsystem message: nlmsghdr + nfgenmsg(res_id = queue) + attributes."""
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def config_flags_message(queue: int, flags: int, mask: int, seq: int) -> bytes:
    """NFQNL_MSG_CONFIG setting the queue flags under mask, asking for an ACK."""
    attrs = _attr(NFQA_CFG_MASK, _BE32.pack(mask)) + _attr(NFQA_CFG_FLAGS, _BE32.pack(flags))
    msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return _message(msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, queue, attrs)


def accept_message(queue: int, packet_id: int, seq: int) -> bytes:
    """NFQNL_MSG_VERDICT accepting one packet."""
    attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
    msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
    return _message(msg_type, NLM_F_REQUEST, seq, queue, attrs)


def verdict_message(queue: int, packet_id: int, verdict: int, mark: int | None, seq: int) -> bytes:
    """NFQNL_MSG_VERDICT for one packet: NF_DROP, or NF_ACCEPT setting its mark when given."""
    attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    if mark is not None:
        attrs += _attr(NFQA_MARK, _BE32.pack(mark))
    msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
    return _message(msg_type, NLM_F_REQUEST, seq, queue, attrs)


def verdict_batch_message(queue: int, last_id: int, seq: int) -> bytes:
    """NFQNL_MSG_VERDICT_BATCH accepting every queued packet whose id is <= last_id."""
    attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last_id))
    msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH
    return _message(msg_type, NLM_F_REQUEST, seq, queue, attrs)


def parse_messages(buf: bytes) -> Iterator[NetlinkMessage]:
    """Split one datagram into its netlink messages (stops at a truncated one)."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(buf):
        length, msg_type, flags, seq, _pid = _NLMSGHDR.unpack_from(buf, offset)
        if length < _NLMSGHDR.size or offset + length > len(buf):
            return
        yield NetlinkMessage(msg_type, flags, seq, buf[offset + _NLMSGHDR.size : offset + length])
        offset += _align(length)


def ack_errno(msg: NetlinkMessage) -> int:
    """The positive errno an NLMSG_ERROR carries (0 for a plain ACK)."""
    return -int(_ERRNO.unpack_from(msg.body)[0])


def packet_id(msg: NetlinkMessage) -> int | None:
    """The packet id of an NFQNL_MSG_PACKET message, None when it has no packet header."""
    offset = _NFGENMSG.size
    body = msg.body
    while offset + _NLATTR.size <= len(body):
        length, kind = _NLATTR.unpack_from(body, offset)
        if length < _NLATTR.size:
            return None
        if kind & 0x7FFF == NFQA_PACKET_HDR and length >= _NLATTR.size + 4:
            return int(_BE32.unpack_from(body, offset + _NLATTR.size)[0])
        offset += _align(length)
    return None


def set_queue_flags(fd: int, queue: int, flags: int, mask: int, timeout: float = 2.0) -> int:
    """Set the bound queue's flags on the binding's own socket and wait for the ACK.

    Returns how many packets arrived meanwhile (each accepted at once, unmetered). Raises
    OSError with the kernel's errno on a refusal, ETIMEDOUT when no ACK comes.
    """
    # The kernel only lets the queue's owner (its netlink port) configure it, so the message
    # must leave through the binding's socket: a duplicate of its descriptor is that socket.
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, os.dup(fd))
    try:
        seq = _SEQ_BASE | (queue & 0xFFFF)
        sock.send(config_flags_message(queue, flags, mask, seq))
        return _await_ack(sock, queue, seq, time.monotonic() + timeout)
    finally:
        sock.close()


def _await_ack(sock: socket.socket, queue: int, seq: int, deadline: float) -> int:
    """Read until our ACK; accept any queued packet that comes first so none waits."""
    accepted = 0
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if not poller.poll(int(left * 1000) + 1):
            continue
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            continue
        for msg in parse_messages(data):
            if msg.type == NLMSG_ERROR and msg.seq == seq:
                code = ack_errno(msg)
                if code:
                    raise OSError(code, os.strerror(code))
                return accepted
            if msg.type == _PACKET_TYPE and (pid := packet_id(msg)) is not None:
                sock.send(accept_message(queue, pid, seq))
                accepted += 1
    raise OSError(errno.ETIMEDOUT, "no acknowledgement from nfnetlink_queue")
