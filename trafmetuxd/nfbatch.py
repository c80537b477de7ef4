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
# Hooks up to LOCAL_IN (PREROUTING 0, INPUT 1) see arriving packets, told by their input
# interface; OUTPUT 3 and POSTROUTING 4 leaving ones, by their output interface. FORWARD 2 sees
# a forwarded packet once: it counts in on its input and out on its output interface (each
# when metered), as the PREROUTING and POSTROUTING rules would have queued it twice.
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
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


def _attributes(buf: bytes, base: int, end: int) -> tuple[int, int, int, int, int, int, int]:
    """(packet id or -1, mark or 0, hook, in ifindex, out ifindex, payload offset or -1,
    payload size) of one message: one walk over its attributes."""
    ident = -1
    mark = 0
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
            ident = _be32(buf, at + 4)
            hook = buf[at + 10]
        elif kind == NFQA_IFINDEX_INDEV and length >= 8 and at + 8 <= end:
            indev = _be32(buf, at + 4)
        elif kind == NFQA_IFINDEX_OUTDEV and length >= 8 and at + 8 <= end:
            outdev = _be32(buf, at + 4)
        elif kind == NFQA_PAYLOAD:
            payload = at + 4
            size = length - 4
        elif kind == NFQA_MARK and length >= 8 and at + 8 <= end:
            mark = _be32(buf, at + 4)
        at += (length + 3) & ~3
    if payload + size > end:
        payload = -1  # cut short by the slot: the bytes at hand are not the packet's
    return ident, mark, hook, indev, outdev, payload, size


def packets(buf: bytes, count: int, slot: int) -> list[tuple[int, int, bytes]]:
    """(direction, ifindex, IP bytes) of each whole packet message of a batch (probes, tests).

    A forwarded packet gives two: in by its input interface, then out by its output one.
    """
    out: list[tuple[int, int, bytes]] = []
    for i in range(count):
        base = i * slot
        end = _end(buf, base, slot)
        if end == base:
            continue
        _, _, hook, indev, outdev, payload, size = _attributes(buf, base, end)
        if payload < 0:
            continue
        ip = buf[payload : payload + size]
        if hook <= NF_INET_FORWARD:
            out.append((DIR_IN, indev, ip))
        if hook >= NF_INET_FORWARD:
            out.append((DIR_OUT, outdev, ip))
    return out


def is_metered(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether capture.interfaces meters the interface, as the queue rules match it."""
    if name == "lo":
        return False
    if not patterns:
        return True
    for pattern in patterns:
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return True
        elif name == pattern:
            return True
    return False


class Interfaces:
    """Interface names by index, and which of them capture.interfaces meters.

    Both maps are read again whole on a miss (interfaces come and go); `lookup` returns the
    system's index -> name map (the worker's I/O, injected).
    """

    def __init__(self, patterns: tuple[str, ...], lookup: Callable[[], dict[int, str]]) -> None:
        self.patterns = () if "*" in patterns else patterns
        self.lookup = lookup
        self.names: dict[int, str] = {}
        self.metered: dict[int, str] = {}  # index -> name if metered, else ""

    def refresh(self) -> None:
        """Read the system's interfaces again."""
        self.names = self.lookup()
        patterns = self.patterns
        self.metered = {i: n if is_metered(n, patterns) else "" for i, n in self.names.items()}

    def name(self, ifindex: int) -> str:
        """An interface's name; 'ifN' for one that is gone already (not cached: retried)."""
        name = self.names.get(ifindex)
        if name is None:
            self.refresh()
            name = self.names.get(ifindex)
        return f"if{ifindex}" if name is None else name

    def metered_name(self, ifindex: int) -> str:
        """An interface's name when it is metered, else ''."""
        name = self.metered.get(ifindex)
        if name is None:
            name = self.name(ifindex)
            return name if is_metered(name, self.patterns) else ""
        return name


def headers(buf: bytes, count: int, slot: int) -> list[tuple[int, int, int, int, int, bytes]]:
    """(packet id, mark, hook, in ifindex, out ifindex, IP bytes) of each whole packet message.

    What the enforcing verdicts are decided from; a truncated message is left out (it is
    accepted by the batch verdict, as it is left unmetered).
    """
    out: list[tuple[int, int, int, int, int, bytes]] = []
    for i in range(count):
        base = i * slot
        end = _end(buf, base, slot)
        if end == base:
            continue
        ident, mark, hook, indev, outdev, payload, size = _attributes(buf, base, end)
        if payload < 0 or ident < 0:
            continue
        out.append((ident, mark, hook, indev, outdev, buf[payload : payload + size]))
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
    interfaces: Interfaces,
) -> None:
    """Meter every packet message of a batch received into count slots of buf."""
    for i in range(count):
        base = i * slot
        end = _end(buf, base, slot)
        if end == base:
            continue  # not a packet message (an error answering a verdict, say)
        _, _, hook, indev, outdev, payload, size = _attributes(buf, base, end)
        stats.packets += 1
        if payload < 0:
            stats.truncated += 1
            continue
        if hook == NF_INET_FORWARD:
            _forwarded(meter, ts, buf[payload : payload + size], indev, outdev, interfaces)
            continue
        if hook <= NF_INET_LOCAL_IN:
            direction = DIR_IN
            ifindex = indev
        else:
            direction = DIR_OUT
            ifindex = outdev
        name = interfaces.names.get(ifindex)
        if name is None:
            name = interfaces.name(ifindex)
        meter.feed(ts, buf[payload : payload + size], direction, name)


def _forwarded(
    meter: Meter, ts: float, ip: bytes, indev: int, outdev: int, interfaces: Interfaces
) -> None:
    """A forwarded packet: in on its input interface, out on its output one, each if metered."""
    name = interfaces.metered_name(indev)
    if name:
        meter.feed(ts, ip, DIR_IN, name)
    name = interfaces.metered_name(outdev)
    if name:
        meter.feed(ts, ip, DIR_OUT, name)
