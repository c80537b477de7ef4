"""A batch of nfnetlink_queue packet messages -> the meter. Pure and compiled (mypyc).

The capture worker receives up to a batch of netlink messages in one system call, each in a
fixed-size slot of one buffer, accepts them all with one batch verdict (the highest packet id),
then hands the whole batch to feed_batch() in one call. A message is read only within its slot:
a longer one was truncated by the kernel and its payload, if cut, is not metered (counted).

Netlink headers are in host byte order; the queue's attribute values in network byte order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from trafmetuxd.meter import Meter
from trafmetuxd.spec import DIR_IN, DIR_OUT

PACKET_TYPE = 3 << 8  # NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
NFQA_PACKET_HDR = 1
NFQA_MARK = 3
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_PAYLOAD = 10
_ATTR_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_HEADERS = 20  # struct nlmsghdr (16) + struct nfgenmsg (4)
# Hooks up to LOCAL_IN (PREROUTING 0, INPUT 1) see arriving packets; the others (FORWARD 2,
# OUTPUT 3, POSTROUTING 4) are told by their output interface.
NF_INET_LOCAL_IN = 1
_LITTLE = sys.byteorder == "little"


def _host16(buf: bytes, at: int) -> int:
    """A 16-bit value in host byte order."""
    if _LITTLE:
        return buf[at] | buf[at + 1] << 8
    return buf[at] << 8 | buf[at + 1]


def _host32(buf: bytes, at: int) -> int:
    """A 32-bit value in host byte order."""
    if _LITTLE:
        return buf[at] | buf[at + 1] << 8 | buf[at + 2] << 16 | buf[at + 3] << 24
    return buf[at] << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 | buf[at + 3]


def _be32(buf: bytes, at: int) -> int:
    """A 32-bit value in network byte order."""
    return buf[at] << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 | buf[at + 3]


def _end(buf: bytes, base: int, slot: int) -> int:
    """Where the message in the slot at base ends (within the slot); base when none is there."""
    length = _host32(buf, base)
    if length < _HEADERS or _host16(buf, base + 4) != PACKET_TYPE:
        return base
    return base + min(length, slot)


def last_packet_id(buf: bytes, count: int, slot: int) -> int:
    """The highest packet id of the batch's packet messages; -1 when there is none."""
    last = -1
    for i in range(count):
        base = i * slot
        end = _end(buf, base, slot)
        at = base + _HEADERS
        while at + 4 <= end:
            length = _host16(buf, at)
            if length < 4:
                break
            if _host16(buf, at + 2) & _ATTR_TYPE_MASK == NFQA_PACKET_HDR:
                if length >= 8 and at + 8 <= end:
                    ident = _be32(buf, at + 4)
                    if ident > last:
                        last = ident
                break
            at += (length + 3) & ~3
    return last


def _attributes(buf: bytes, base: int, end: int) -> tuple[int, int, int, int, int]:
    """(hook, in ifindex, out ifindex, payload offset or -1, payload size) of one message."""
    hook = 0
    indev = 0
    outdev = 0
    payload = -1
    size = 0
    at = base + _HEADERS
    while at + 4 <= end:
        length = _host16(buf, at)
        if length < 4:
            break
        kind = _host16(buf, at + 2) & _ATTR_TYPE_MASK
        if kind == NFQA_PACKET_HDR and length >= 11 and at + 11 <= end:
            hook = buf[at + 10]
        elif kind == NFQA_IFINDEX_INDEV and length >= 8 and at + 8 <= end:
            indev = _be32(buf, at + 4)
        elif kind == NFQA_IFINDEX_OUTDEV and length >= 8 and at + 8 <= end:
            outdev = _be32(buf, at + 4)
        elif kind == NFQA_PAYLOAD:
            payload = at + 4
            size = length - 4
        at += (length + 3) & ~3
    if payload + size > end:
        payload = -1  # cut short by the slot: the bytes at hand are not the packet's
    return hook, indev, outdev, payload, size


def packets(buf: bytes, count: int, slot: int) -> list[tuple[int, int, bytes]]:
    """(direction, ifindex, IP bytes) of each whole packet message of a batch (probes, tests)."""
    out: list[tuple[int, int, bytes]] = []
    for i in range(count):
        base = i * slot
        end = _end(buf, base, slot)
        if end == base:
            continue
        hook, indev, outdev, payload, size = _attributes(buf, base, end)
        if payload >= 0:
            inbound = hook <= NF_INET_LOCAL_IN
            direction = DIR_IN if inbound else DIR_OUT
            out.append((direction, indev if inbound else outdev, buf[payload : payload + size]))
    return out


def _id_and_mark(buf: bytes, base: int, end: int) -> tuple[int, int]:
    """(packet id or -1, the packet's mark as queued, 0 when it has none) of one message."""
    ident = -1
    mark = 0
    at = base + _HEADERS
    while at + 4 <= end:
        length = _host16(buf, at)
        if length < 4:
            break
        kind = _host16(buf, at + 2) & _ATTR_TYPE_MASK
        if kind == NFQA_PACKET_HDR and length >= 8 and at + 8 <= end:
            ident = _be32(buf, at + 4)
        elif kind == NFQA_MARK and length >= 8 and at + 8 <= end:
            mark = _be32(buf, at + 4)
        at += (length + 3) & ~3
    return ident, mark


def headers(buf: bytes, count: int, slot: int) -> list[tuple[int, int, int, int, bytes]]:
    """(packet id, mark, direction, ifindex, IP bytes) of each whole packet message of a batch.

    What the enforcing verdicts are decided from; a truncated message is left out (it is
    accepted by the batch verdict, as it is left unmetered).
    """
    out: list[tuple[int, int, int, int, bytes]] = []
    for i in range(count):
        base = i * slot
        end = _end(buf, base, slot)
        if end == base:
            continue
        hook, indev, outdev, payload, size = _attributes(buf, base, end)
        ident, mark = _id_and_mark(buf, base, end)
        if payload < 0 or ident < 0:
            continue
        if hook <= NF_INET_LOCAL_IN:
            out.append((ident, mark, DIR_IN, indev, buf[payload : payload + size]))
        else:
            out.append((ident, mark, DIR_OUT, outdev, buf[payload : payload + size]))
    return out


class BatchStats:
    """What feed_batch saw besides the packets it metered."""

    def __init__(self) -> None:
        self.packets = 0  # packet messages (each accepted by the batch verdict)
        self.truncated = 0  # packet messages whose payload did not fit their slot: not metered


def feed_batch(
    meter: Meter,
    stats: BatchStats,
    ts: float,
    buf: bytes,
    count: int,
    slot: int,
    names: dict[int, str],
    resolve: Callable[[int], str],
) -> None:
    """Meter every packet message of a batch received into count slots of buf."""
    for i in range(count):
        base = i * slot
        end = _end(buf, base, slot)
        if end == base:
            continue  # not a packet message (an error answering a verdict, say)
        hook, indev, outdev, payload, size = _attributes(buf, base, end)
        stats.packets += 1
        if payload < 0:
            stats.truncated += 1
            continue
        if hook <= NF_INET_LOCAL_IN:
            direction = DIR_IN
            ifindex = indev
        else:
            direction = DIR_OUT
            ifindex = outdev
        name = names.get(ifindex)
        if name is None:
            name = resolve(ifindex)
        meter.feed(ts, buf[payload : payload + size], direction, name)
