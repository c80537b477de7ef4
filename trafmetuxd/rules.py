"""Monitor rules compiled for the per-packet path: (PacketInfo, direction, iface) -> monitor ids.

Pure. What every packet's cache key carries (direction, interface, protocol, family) decides
most rules once per key: the classifier builds, once per key, an _Entry with the monitors
that match outright and an index of the rules left, by port and by masked address. match()
then costs a cache lookup plus a few dict lookups, and checks in full only the rules that
the index says can match (none at all when rules use direction/interface/protocol only).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import NamedTuple

from trafmetuxd.packet import PacketInfo
from trafmetuxd.spec import MonitorSpec, Network, PortRange, RuleSpec

Nets = tuple[tuple[int, int], ...]  # (network address, netmask) as ints, one family
Ports = tuple[PortRange, ...]
# What remains of a rule once direction, interface, protocol and family are known:
# src, dst, host, src_port, dst_port, port; None = not set.
Checks = tuple[Nets | None, Nets | None, Nets | None, Ports | None, Ports | None, Ports | None]
Candidate = tuple[int, Checks]  # (monitor index, the rule's checks)
Key = tuple[int, str, int, int]  # (direction, iface, protocol, family)
ByValue = dict[int, tuple[Candidate, ...]]


class _Entry(NamedTuple):
    """What is left to decide for the packets of one key."""

    answer: tuple[int, ...] | None  # the whole answer when no rule is left to check
    fixed: frozenset[int]  # monitors matched outright
    fixed_answer: tuple[int, ...]  # the answer when the index yields no rule to check
    by_sport: ByValue  # rules that need one of a few source ports (or either-side ports)
    by_dport: ByValue
    by_mask: tuple[tuple[int, ByValue, ByValue], ...]  # (mask, src net -> rules, dst net -> ..)
    always: tuple[Candidate, ...]  # rules no index can narrow (wide port ranges only)


# Bounds on the caches: their keys come from packets, so an odd stream must not grow them
# without limit. Real hosts have a handful of interfaces and protocols; clearing is rare.
_ENTRY_LIMIT = 4096
_IFACE_LIMIT = 256
_INDEXED_PORTS = 64  # port lists up to this many ports are indexed port by port


class _Rule:
    """A rule with the monitor it belongs to."""

    __slots__ = ("monitor", "spec")

    def __init__(self, monitor: int, spec: RuleSpec) -> None:
        self.monitor = monitor
        self.spec = spec


def _nets(networks: tuple[Network, ...] | None, family: int) -> Nets | None:
    if networks is None:
        return None
    return tuple(
        (int(net.network_address), int(net.netmask)) for net in networks if net.version == family
    )


def _checks(spec: RuleSpec, family: int) -> Checks | None:
    """The rule's remaining checks for packets of family, None when it cannot match them."""
    if spec.family is not None and spec.family != family:
        return None
    src, dst, host = (_nets(nets, family) for nets in (spec.src, spec.dst, spec.host))
    if () in (src, dst, host):  # set, but no network of this family
        return None
    return (src, dst, host, spec.src_port, spec.dst_port, spec.port)


_NOTHING_LEFT: Checks = (None, None, None, None, None, None)


def _passes(checks: Checks, src: int, dst: int, sport: int, dport: int) -> bool:
    """Whether a packet passes every remaining check of a rule (NO_PORT passes no port check).

    Plain loops rather than any(generator): this runs per candidate rule per packet.
    """
    s, d, h, sp, dp, pp = checks
    if s is not None and not _in_nets(src, s):
        return False
    if d is not None and not _in_nets(dst, d):
        return False
    if h is not None and not (_in_nets(src, h) or _in_nets(dst, h)):
        return False
    if sp is not None and not _in_ports(sport, sp):
        return False
    if dp is not None and not _in_ports(dport, dp):
        return False
    return pp is None or _in_ports(sport, pp) or _in_ports(dport, pp)


def _in_nets(address: int, nets: Nets) -> bool:
    for net, mask in nets:  # noqa: SIM110 - a loop is faster than any() on a generator
        if address & mask == net:
            return True
    return False


def _in_ports(port: int, ranges: Ports) -> bool:
    for low, high in ranges:  # noqa: SIM110 - as above
        if low <= port <= high:
            return True
    return False


def _few_ports(ranges: Ports | None) -> list[int] | None:
    if ranges is None or sum(high - low + 1 for low, high in ranges) > _INDEXED_PORTS:
        return None
    return [port for low, high in ranges for port in range(low, high + 1)]


def _freeze(table: dict[int, list[Candidate]]) -> ByValue:
    return {value: tuple(candidates) for value, candidates in table.items()}


class _IndexBuilder:
    """Files each rule left under one necessary condition: a port or a masked address."""

    def __init__(self) -> None:
        self.by_sport: dict[int, list[Candidate]] = {}
        self.by_dport: dict[int, list[Candidate]] = {}
        self.by_mask: dict[int, tuple[dict[int, list[Candidate]], dict[int, list[Candidate]]]] = {}
        self.always: list[Candidate] = []

    def add(self, candidate: Candidate) -> None:
        """File a rule where a packet it matches is sure to look."""
        s, d, h, sp, dp, pp = candidate[1]
        if (ports := _few_ports(pp)) is not None:
            self._ports(candidate, ports, self.by_sport, self.by_dport)
        elif (ports := _few_ports(dp)) is not None:
            self._ports(candidate, ports, self.by_dport)
        elif (ports := _few_ports(sp)) is not None:
            self._ports(candidate, ports, self.by_sport)
        elif s is not None:
            self._nets(candidate, s, src=True, dst=False)
        elif d is not None:
            self._nets(candidate, d, src=False, dst=True)
        elif h is not None:
            self._nets(candidate, h, src=True, dst=True)
        else:
            self.always.append(candidate)

    def _nets(self, candidate: Candidate, nets: Nets, *, src: bool, dst: bool) -> None:
        for net, mask in nets:
            on_src, on_dst = self.by_mask.setdefault(mask, ({}, {}))
            for table in (on_src,) * src + (on_dst,) * dst:
                table.setdefault(net, []).append(candidate)

    @staticmethod
    def _ports(candidate: Candidate, ports: list[int], *tables: dict[int, list[Candidate]]) -> None:
        for table in tables:
            for port in ports:
                table.setdefault(port, []).append(candidate)

    def entry(self, fixed: set[int]) -> _Entry:
        """The finished, immutable entry."""
        answer = tuple(sorted(fixed))
        if not (self.by_sport or self.by_dport or self.by_mask or self.always):
            return _Entry(answer, frozenset(fixed), answer, {}, {}, (), ())
        masks = tuple(
            (m, _freeze(on_src), _freeze(on_dst)) for m, (on_src, on_dst) in self.by_mask.items()
        )
        return _Entry(
            None,
            frozenset(fixed),
            answer,
            _freeze(self.by_sport),
            _freeze(self.by_dport),
            masks,
            tuple(self.always),
        )


class Classifier:
    """Which monitors a packet belongs to; build it with compile()."""

    __slots__ = ("_by_dir_proto", "_entries", "_iface_hits", "_rules", "_unruled")

    def __init__(self, monitors: Sequence[MonitorSpec]) -> None:
        self._rules = tuple(_Rule(i, r) for i, m in enumerate(monitors) for r in m.rules)
        self._unruled = frozenset(i for i, m in enumerate(monitors) if not m.rules)
        self._by_dir_proto: dict[tuple[int, int], tuple[int, ...]] = {}
        self._iface_hits: dict[str, frozenset[int]] = {}
        self._entries: dict[Key, _Entry] = {}

    def match(self, pkt: PacketInfo, direction: int, iface: str) -> tuple[int, ...]:
        """Indices of the monitors pkt matches, ascending ("" iface = unknown interface)."""
        key = (direction, iface, pkt.proto, pkt.family)
        # Unpacked once: NamedTuple attribute reads cost more than one tuple unpack.
        answer, fixed, fixed_answer, by_sport, by_dport, by_mask, always = self._entries.get(
            key
        ) or self._entry(key)
        if answer is not None:
            return answer
        src, dst, sport, dport = pkt.src, pkt.dst, pkt.sport, pkt.dport
        candidates = by_sport.get(sport, ()) + by_dport.get(dport, ()) + always
        for mask, on_src, on_dst in by_mask:
            candidates += on_src.get(src & mask, ()) + on_dst.get(dst & mask, ())
        if not candidates:
            return fixed_answer
        hits = set(fixed)
        for monitor, checks in candidates:
            if monitor not in hits and _passes(checks, src, dst, sport, dport):
                hits.add(monitor)
        return tuple(sorted(hits))

    def _entry(self, key: Key) -> _Entry:
        """Build (and cache) what is left to decide for packets with this key."""
        direction, iface, proto, family = key
        fixed = set(self._unruled)
        left: list[Candidate] = []
        iface_hits = self._iface_rules(iface)
        for rule_id in self._candidates(direction, proto):
            rule = self._rules[rule_id]
            if rule.spec.interface is not None and rule_id not in iface_hits:
                continue
            checks = _checks(rule.spec, family)
            if checks == _NOTHING_LEFT:
                fixed.add(rule.monitor)
            elif checks is not None:
                left.append((rule.monitor, checks))
        index = _IndexBuilder()
        for candidate in left:
            if candidate[0] not in fixed:
                index.add(candidate)
        entry = index.entry(fixed)
        if len(self._entries) >= _ENTRY_LIMIT:
            self._entries.clear()
        self._entries[key] = entry
        return entry

    def _candidates(self, direction: int, proto: int) -> tuple[int, ...]:
        """Ids of the rules whose direction and protocol admit these."""
        ids = self._by_dir_proto.get((direction, proto))
        if ids is None:
            ids = tuple(
                i
                for i, rule in enumerate(self._rules)
                if rule.spec.direction & direction and rule.spec.protocol in (None, proto)
            )
            self._by_dir_proto[(direction, proto)] = ids
        return ids

    def _iface_rules(self, iface: str) -> frozenset[int]:
        """Ids of the rules with an interface pattern that iface matches (none when unknown)."""
        hits = self._iface_hits.get(iface)
        if hits is None:
            hits = frozenset(
                i
                for i, rule in enumerate(self._rules)
                if iface and rule.spec.interface is not None
                if fnmatchcase(iface, rule.spec.interface)
            )
            if len(self._iface_hits) >= _IFACE_LIMIT:
                self._iface_hits.clear()
            self._iface_hits[iface] = hits
        return hits


def compile(monitors: Sequence[MonitorSpec]) -> Classifier:
    """Compile the monitors' rules into a Classifier (match returns indices into monitors)."""
    return Classifier(monitors)
