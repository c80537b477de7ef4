"""Per-monitor exact totals per UTC minute and fixed-size flow positions. Pure.

Which side of a packet is the client (the key's first address):
- one port below 1024 and the other not: the unprivileged side;
- both ports 1024 or above: an existing position of either orientation, else the sender of a
  TCP SYN without ACK, else the side in the local networks when exactly one side is (with
  `local_networks` configured), else the side whose port is ephemeral (32768-65535, the union of the
  Linux 32768-60999 and IANA 49152-65535 ranges) while the other's is not, else the higher port
  (the sender on a tie);
- both ports below 1024, or no ports (NO_PORT on both): an existing position of either
  orientation, else the sender.
With port compression the client's port becomes COMPRESSED_PORT whenever it is unprivileged, so
the many connections of one client to one service share one position.
"""

from __future__ import annotations

from typing import NamedTuple

from trafmetuxd.packet import PacketInfo
from trafmetuxd.spec import DIR_OUT, MonitorSpec

# (family, protocol, client address, client port, server address, server port); ports are
# packet.NO_PORT (-1) for protocols without ports. OTHER collects flows that found no free position.
# Typed variable-length on purpose: compiled (mypyc), a fixed-length tuple type is unboxed into a
# C struct and boxed into a new tuple at every dict lookup; this keeps the key tuples built once
# per flow shared, as in plain Python. Keys always have six items.
FlowKey = tuple[int, ...]
OTHER: FlowKey = (0, 0, 0, 0, 0, 0)
COMPRESSED_PORT = 65535

# UTC minute (int(unix_seconds) // 60) -> [in_bytes, in_packets, out_bytes, out_packets]
Totals = dict[int, list[int]]
# flow key -> [bytes sent by the client, bytes received by the client, packets]
Flows = dict[FlowKey, list[int]]

# A host of a monitor with `hosts`: (family, address, prefix length); an IPv6 address is masked
# to host_prefix_v6. OTHER_HOST collects the hosts beyond max_hosts.
HostKey = tuple[int, ...]
OTHER_HOST: HostKey = (0, 0, 0)
# host -> UTC minute -> [in_bytes, in_packets, out_bytes, out_packets]; in = to the host
Hosts = dict[HostKey, Totals]

_PRIVILEGED = 1024
_EPHEMERAL_LOW = 32768
_SYN_ACK = 0x12
_SYN = 0x02


def minute_of(unix_seconds: float) -> int:
    """The UTC minute a timestamp falls in (the Totals key)."""
    return int(unix_seconds // 60)


class Snapshot(NamedTuple):
    """What a collector held at swap time; never mutated after the swap."""

    totals: Totals
    flows: Flows
    overflow: int  # packets that went to OTHER because the positions were full
    # Per-host totals (monitors with `hosts`); the defaults are shared: never mutate them.
    hosts: Hosts = {}  # noqa: RUF012  (a snapshot is read-only)
    host_overflow: int = 0  # host attributions (a packet's sender, receiver) that went to other


class HostMatcher:
    """Which host of a monitor's `hosts` prefixes an address counts for, if any."""

    __slots__ = ("_nets", "_v6_mask", "_v6_prefix", "limit")

    def __init__(self, spec: MonitorSpec) -> None:
        self._nets = [(n.version, int(n.network_address), int(n.netmask)) for n in spec.hosts]
        self._v6_prefix = spec.host_prefix_v6
        self._v6_mask = ((1 << spec.host_prefix_v6) - 1) << (128 - spec.host_prefix_v6)
        self.limit = spec.max_hosts

    def key(self, family: int, addr: int) -> HostKey | None:
        """The host addr counts for, or None when it lies in none of the prefixes."""
        for version, net, mask in self._nets:
            if version == family and addr & mask == net:
                if family == 4:
                    return (4, addr, 32)
                return (6, addr & self._v6_mask, self._v6_prefix)
        return None


def host_matcher(spec: MonitorSpec) -> HostMatcher | None:
    """The monitor's host matcher, None when it has no `hosts`."""
    return HostMatcher(spec) if spec.hosts else None


# How the packets of one flow find their position, decided once per flow (collector state aside)
# and shared by every collector the flow lands in, so that they share its key tuples too:
# (key, side, back, back_when_new). Look up key (the packet's sender is `side` in it: 0 client,
# 1 server); when absent and back is set, look up back (sender side 1); when both are absent
# a new position takes key, or back when back_when_new and the packet is no TCP SYN without ACK.
# The decision is exactly RealtimeCollector.add's.
Plan = tuple[FlowKey, int, FlowKey | None, bool]


def plan(pkt: PacketInfo, compress: bool, local: int = -1) -> Plan:
    """The packet's flow plan, for collectors with port compression on or off.

    local: which side lies in the local networks when exactly one does (0 the sender, 1 the
    receiver), else -1.
    """
    family, proto, src, sport, dst, dport, _length, _flags = pkt
    if sport >= _PRIVILEGED:
        client_port = COMPRESSED_PORT if compress else sport
        forward = (family, proto, src, client_port, dst, dport)
        if dport < _PRIVILEGED:
            return forward, 0, None, False
        backward = (family, proto, dst, COMPRESSED_PORT if compress else dport, src, sport)
        if local >= 0:
            return forward, 0, backward, local == 1
        src_ephemeral = sport >= _EPHEMERAL_LOW
        if src_ephemeral != (dport >= _EPHEMERAL_LOW):
            return forward, 0, backward, not src_ephemeral
        return forward, 0, backward, sport < dport
    if dport >= _PRIVILEGED:
        return (
            (family, proto, dst, COMPRESSED_PORT if compress else dport, src, sport),
            1,
            None,
            False,
        )
    # Both ports privileged, or none: the ports stay, compression or not.
    return (
        (family, proto, src, sport, dst, dport),
        0,
        (family, proto, dst, dport, src, sport),
        False,
    )


def is_syn(flags: int) -> bool:
    """Whether TCP flags are a SYN without ACK (a connection's first packet)."""
    return flags & _SYN_ACK == _SYN


def _add_row(row: list[int], out: bool, length: int) -> None:
    """Add one packet to a totals row's in or out bytes and packets."""
    if out:
        row[2] += length
        row[3] += 1
    else:
        row[0] += length
        row[1] += 1


def _add_total(totals: Totals, minute: int, out: bool, length: int) -> None:
    """Add one packet to its minute's in or out bytes and packets."""
    row = totals.get(minute)
    if row is None:
        row = totals[minute] = [0, 0, 0, 0]
    _add_row(row, out, length)


def _resolve(coll: RealtimeCollector, flow: Plan, syn: bool) -> tuple[list[int], int, bool]:
    """The position a packet of the planned flow counts in, its sender's side there, and
    whether that position is the plan's key (or OTHER): found by the first lookup add() does.
    """
    key, side, back, back_when_new = flow
    flows = coll._flows
    entry = flows.get(key)
    if entry is not None:
        return entry, side, True
    if back is None:
        return coll._new_position(key), side, True
    entry = flows.get(back)
    if entry is not None:
        return entry, 1, False
    if back_when_new and not syn:
        entry = coll._new_position(back)
        return entry, 1, coll._flows.get(back) is not entry  # OTHER when the collector is full
    return coll._new_position(key), side, True


class Slot:
    """Where one cached flow counts in one collector, and until when that holds.

    Positions are never removed between two swaps. A flow whose position is its plan's key
    (the first lookup) therefore keeps it until the swap: looking it up again is skipped. One
    found under the reverse key keeps it only while no new position is made (a new one at its
    key would be found first). A flow sent to OTHER (the collector was full) is looked up for
    every packet, as add() does: which side of OTHER a packet counts in depends on the packet.

    The flow's hosts (monitors with `hosts`) are found once here; their rows are looked up
    again only when the minute or the generation changes: a host's row of a minute, like its
    being in OTHER_HOST, lasts until the swap.
    """

    __slots__ = (
        "coll", "dst_host", "dst_other", "dst_row", "entry", "gen", "hgen", "hminute", "hosted",
        "made", "other", "side", "src_host", "src_other", "src_row",
    )  # fmt: skip

    def __init__(self, coll: RealtimeCollector, pkt: PacketInfo | None = None) -> None:
        self.coll = coll
        self.gen = -1  # no generation: resolved on the first packet
        self.made = -1  # positions made when resolved under the reverse key; -1: key or OTHER
        self.entry: list[int] = []
        self.side = 0
        self.other = False
        matcher = coll._hosts_of
        self.src_host: HostKey | None = None
        self.dst_host: HostKey | None = None
        if matcher is not None and pkt is not None:
            self.src_host = matcher.key(pkt.family, pkt.src)
            self.dst_host = matcher.key(pkt.family, pkt.dst)
        self.hosted = self.src_host is not None or self.dst_host is not None
        self.hgen = -1
        self.hminute = -1
        self.src_row: list[int] | None = None
        self.dst_row: list[int] | None = None
        self.src_other = False
        self.dst_other = False

    def count_hosts(self, minute: int, length: int) -> None:
        """Count one packet for the flow's sending (out) and receiving (in) hosts."""
        coll = self.coll
        if self.hminute != minute or self.hgen != coll._gen:
            self.hminute = minute
            self.hgen = coll._gen
            if self.src_host is not None:
                self.src_row, self.src_other = coll._host_row(self.src_host, minute)
            if self.dst_host is not None:
                self.dst_row, self.dst_other = coll._host_row(self.dst_host, minute)
        row = self.src_row
        if row is not None:
            _add_row(row, True, length)  # sent by this host: its out
            if self.src_other:
                coll._host_overflow += 1
        row = self.dst_row
        if row is not None:
            _add_row(row, False, length)  # received by this host: its in
            if self.dst_other:
                coll._host_overflow += 1


def count_slots(
    slots: list[Slot], flow: Plan, minute: int, out: bool, length: int, syn: bool
) -> None:
    """Count one packet in each slot's collector: what add() does, without the lookups."""
    for slot in slots:
        coll = slot.coll
        if coll._minute == minute:
            row = coll._row
        else:
            found = coll._totals.get(minute)
            if found is None:
                found = coll._totals[minute] = [0, 0, 0, 0]
            row = coll._row = found
            coll._minute = minute
        _add_row(row, out, length)
        if slot.other or slot.gen != coll._gen or (slot.made >= 0 and slot.made != coll._made):
            overflow = coll._overflow
            entry, slot.side, first = _resolve(coll, flow, syn)
            slot.entry = entry
            slot.other = coll._overflow != overflow  # looked up again: the side may differ
            slot.made = -1 if first else coll._made
            slot.gen = coll._gen
        entry = slot.entry
        entry[slot.side] += length
        entry[2] += 1
        if slot.hosted:
            slot.count_hosts(minute, length)


class RealtimeCollector:
    """Counts packets as they arrive; swap() hands the contents over in O(1)."""

    __slots__ = (
        "_compress", "_flows", "_free", "_gen", "_host_free", "_host_overflow", "_hosts",
        "_hosts_of", "_made", "_minute", "_overflow", "_row", "_size", "_totals",
    )  # fmt: skip

    def __init__(
        self, size: int, compress_ports: bool = True, hosts: HostMatcher | None = None
    ) -> None:
        self._size = size
        self._compress = compress_ports
        self._hosts_of = hosts
        self._hosts: Hosts = {}
        self._host_free = hosts.limit if hosts is not None else 0
        self._host_overflow = 0
        self._totals: Totals = {}
        self._flows: Flows = {}
        self._free = size  # positions still free; OTHER does not take one
        self._overflow = 0
        self._gen = 0  # bumped by every swap: cached slots of the old contents are stale
        self._made = 0  # positions made since the start (a slot under a reverse key checks it)
        self._minute = -1  # the minute of _row, the totals row last counted in
        self._row: list[int] = []

    @property
    def totals(self) -> Totals:
        """The totals counted since the last swap (live; do not mutate)."""
        return self._totals

    @property
    def flows(self) -> Flows:
        """The flow positions counted since the last swap (read-only view)."""
        return self._flows

    @property
    def hosts(self) -> Hosts:
        """The per-host totals counted since the last swap (live; do not mutate)."""
        return self._hosts

    @property
    def compress_ports(self) -> bool:
        """Whether client ports are compressed in this collector's flow keys."""
        return self._compress

    @property
    def positions_used(self) -> int:
        """How many of the `size` flow positions hold a flow (OTHER not included)."""
        return self._size - self._free

    def add(self, minute: int, pkt: PacketInfo, direction: int, local: int = -1) -> None:
        """Count one packet (direction DIR_OUT counts as out, anything else as in).

        local: which side lies in the local networks when exactly one does (0 the sender,
        1 the receiver), else -1.
        """
        family, proto, src, sport, dst, dport, length, _flags = pkt
        _add_total(self._totals, minute, direction == DIR_OUT, length)
        if self._hosts_of is not None:
            self._add_hosts(minute, pkt)
        flows = self._flows
        key: FlowKey
        if sport >= _PRIVILEGED:
            if dport < _PRIVILEGED:
                key = (family, proto, src, COMPRESSED_PORT if self._compress else sport, dst, dport)
                side = 0
            else:
                key, side = self._unprivileged(pkt, local)
        elif dport >= _PRIVILEGED:
            key = (family, proto, dst, COMPRESSED_PORT if self._compress else dport, src, sport)
            side = 1
        else:
            key = (family, proto, src, sport, dst, dport)
            side = 0
            if key not in flows:
                back = (family, proto, dst, dport, src, sport)
                if back in flows:
                    key = back
                    side = 1

        entry = flows.get(key)
        if entry is None:
            entry = self._new_position(key)
        entry[side] += length  # 0: sent by the client, 1: received by it
        entry[2] += 1

    def _add_hosts(self, minute: int, pkt: PacketInfo) -> None:
        """Count one packet for its sending (out) and receiving (in) hosts, if any."""
        matcher = self._hosts_of
        assert matcher is not None
        for addr, out in ((pkt.src, True), (pkt.dst, False)):
            host = matcher.key(pkt.family, addr)
            if host is not None:
                row, other = self._host_row(host, minute)
                _add_row(row, out, pkt.length)
                if other:
                    self._host_overflow += 1

    def _host_row(self, host: HostKey, minute: int) -> tuple[list[int], bool]:
        """The host's row of the minute, and whether it is OTHER_HOST's (max_hosts taken)."""
        hosts = self._hosts
        per = hosts.get(host)
        other = False
        if per is None:
            if self._host_free > 0:
                self._host_free -= 1
                per = hosts[host] = {}
            else:
                other = True
                per = hosts.get(OTHER_HOST)
                if per is None:
                    per = hosts[OTHER_HOST] = {}
        row = per.get(minute)
        if row is None:
            row = per[minute] = [0, 0, 0, 0]
        return row, other

    def _unprivileged(self, pkt: PacketInfo, local: int) -> tuple[FlowKey, int]:
        """Key and sender side (0 client, 1 server) when both ports are unprivileged."""
        family, proto, src, sport, dst, dport, _length, flags = pkt
        compress = self._compress
        forward = (family, proto, src, COMPRESSED_PORT if compress else sport, dst, dport)
        backward = (family, proto, dst, COMPRESSED_PORT if compress else dport, src, sport)
        flows = self._flows
        if forward in flows:
            return forward, 0
        if backward in flows:
            return backward, 1
        if flags & _SYN_ACK == _SYN:
            return forward, 0
        if local >= 0:
            return (forward, 0) if local == 0 else (backward, 1)
        src_ephemeral = sport >= _EPHEMERAL_LOW
        if src_ephemeral != (dport >= _EPHEMERAL_LOW):
            return (forward, 0) if src_ephemeral else (backward, 1)
        return (forward, 0) if sport >= dport else (backward, 1)

    def _new_position(self, key: FlowKey) -> list[int]:
        """A fresh position for `key`, or OTHER (counted as overflow) when all are taken."""
        if self._free > 0:
            self._free -= 1
            self._made += 1
            entry = self._flows[key] = [0, 0, 0]
            return entry
        # Every packet routed to OTHER counts, so OTHER's packets always equal the overflow.
        self._overflow += 1
        other = self._flows.get(OTHER)
        if other is None:
            other = self._flows[OTHER] = [0, 0, 0]
        return other

    def swap(self) -> Snapshot:
        """Hand over everything counted so far and start empty."""
        snap = Snapshot(self._totals, self._flows, self._overflow, self._hosts, self._host_overflow)
        self._totals = {}
        self._flows = {}
        self._free = self._size
        self._overflow = 0
        self._hosts = {}
        self._host_free = self._hosts_of.limit if self._hosts_of is not None else 0
        self._host_overflow = 0
        self._gen += 1
        self._minute = -1
        self._row = []
        return snap


def _merge_totals(into: Totals, totals: Totals) -> None:
    """Add minute totals into others."""
    for minute, (in_b, in_p, out_b, out_p) in totals.items():
        row = into.get(minute)
        if row is None:
            into[minute] = [in_b, in_p, out_b, out_p]
        else:
            row[0] += in_b
            row[1] += in_p
            row[2] += out_b
            row[3] += out_p


class FlushCollector:
    """Accumulates snapshots until a write commits; keeps everything while writes fail.

    Not thread-safe: the caller serializes merge(), pending() and clear(), and does not merge
    between taking pending() for a write and clear() after that write committed.
    """

    __slots__ = (
        "_flows", "_free", "_host_free", "_host_overflow", "_hosts", "_max_hosts", "_overflow",
        "_size", "_totals",
    )  # fmt: skip

    def __init__(self, size: int, max_hosts: int = 4096) -> None:
        self._size = size
        self._totals: Totals = {}
        self._flows: Flows = {}
        self._free = size
        self._overflow = 0
        self._max_hosts = max_hosts
        self._hosts: Hosts = {}
        self._host_free = max_hosts
        self._host_overflow = 0

    @property
    def empty(self) -> bool:
        """True when nothing is waiting to be written."""
        return not self._totals and not self._flows and not self._hosts

    def merge(self, snap: Snapshot) -> None:
        """Add a snapshot; flows beyond `size` positions go to OTHER, hosts beyond
        max_hosts to OTHER_HOST.
        """
        _merge_totals(self._totals, snap.totals)
        for key, (sent, received, packets) in snap.flows.items():
            entry = self._position(key, packets)
            entry[0] += sent
            entry[1] += received
            entry[2] += packets
        self._overflow += snap.overflow
        for host, minutes in snap.hosts.items():
            _merge_totals(self._host_totals(host, minutes), minutes)
        self._host_overflow += snap.host_overflow

    def _host_totals(self, host: HostKey, minutes: Totals) -> Totals:
        """The totals `host` merges into; folding into OTHER_HOST counts its packets as
        host overflow (one per attribution, as the realtime collector counts them).
        """
        hosts = self._hosts
        per = hosts.get(host)
        if per is not None:
            return per
        if host != OTHER_HOST and self._host_free > 0:
            self._host_free -= 1
            per = hosts[host] = {}
            return per
        if host != OTHER_HOST:
            self._host_overflow += sum(row[1] + row[3] for row in minutes.values())
        per = hosts.get(OTHER_HOST)
        if per is None:
            per = hosts[OTHER_HOST] = {}
        return per

    def _position(self, key: FlowKey, packets: int) -> list[int]:
        """The position `key` merges into; folding into OTHER adds its packets to overflow."""
        flows = self._flows
        entry = flows.get(key)
        if entry is not None:
            return entry
        if key != OTHER and self._free > 0:
            self._free -= 1
            entry = flows[key] = [0, 0, 0]
            return entry
        if key != OTHER:
            self._overflow += packets
        other = flows.get(OTHER)
        if other is None:
            other = flows[OTHER] = [0, 0, 0]
        return other

    def pending(self) -> Snapshot:
        """A read-only view of what has not been written yet."""
        return Snapshot(self._totals, self._flows, self._overflow, self._hosts, self._host_overflow)

    def clear(self) -> None:
        """Forget everything: call only after the write committed."""
        self._totals = {}
        self._flows = {}
        self._free = self._size
        self._overflow = 0
        self._hosts = {}
        self._host_free = self._max_hosts
        self._host_overflow = 0
