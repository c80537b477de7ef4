"""Quota enforcement in the capture worker: which queued packets to drop or mark. Pure.

The main process evaluates the quotas and tells every worker (an ENFORCE frame) which
enforcing quotas exist, which are over their limit and how many bytes each of the others has
left. Without an enforcing quota the worker does not look at its batches before accepting them:
its packet path is exactly the one without enforcement. With one, each batch is judged first:
the packets that an over-limit quota's monitors match (and none of its exempt rules) get their
own verdict, NF_DROP or NF_ACCEPT with a new mark, and one batch verdict then accepts the rest.
Under the limit, the judge spends the quota's bytes left as its monitors' packets pass: the
packet that uses up the last byte is the last one let through unchanged, so a worker cuts at
the limit itself, without waiting for the main process's next look (which would confirm it).

Judging a packet costs a dict lookup: its flow's classification (the monitors and exempt rules
it matches, as an index tuple, and for per-host quotas the hosts it counts for) is cached by the
header bytes the rules read, and what to do for an index tuple is cached until the over-limit
state changes. A per-host quota (`per_host`) is over for some hosts only: a packet is dropped
or marked when its sending or receiving host (as the monitor's `hosts` group it: an IPv4
address or an IPv6 prefix) is one of them, a set lookup per such quota.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from trafmetuxd import nfqconfig, rules
from trafmetuxd.addresses import host_text
from trafmetuxd.collector import HostMatcher
from trafmetuxd.nfbatch import NF_INET_FORWARD, NF_INET_LOCAL_IN, Interfaces, headers
from trafmetuxd.packet import PORTED, PacketInfo, parse
from trafmetuxd.spec import DIR_IN, DIR_OUT, MonitorSpec, QuotaSpec, RuleSpec

BLOCK, MARK = "block", "mark"
CACHE_LIMIT = 65_536
# What a quota counts per worker: packets and bytes it dropped, packets and bytes it marked.
DROPPED_PACKETS, DROPPED_BYTES, MARKED_PACKETS, MARKED_BYTES = range(4)
COUNT_NAMES = ("dropped_packets", "dropped_bytes", "marked_packets", "marked_bytes")
STATS_PREFIX = "quota:"  # shipped stats keys: quota:NAME:dropped_packets ...
# (index of the quota that drops or -1, ((quota index, mark, mask), ...) of the marking ones,
# ((quota index, how many of its monitors match), ...) of those under their limit)
Decision = tuple[int, tuple[tuple[int, int, int], ...], tuple[tuple[int, int], ...]]
Hosts = tuple[frozenset[str], ...]  # per quota: the host texts a packet counts for
Flow = tuple[tuple[int, ...], Hosts]  # a flow's classifier indices and hosts
_NOTHING: Decision = (-1, (), ())


@dataclass(frozen=True, slots=True)
class Over:
    """One enforcing quota's over-limit state: the whole quota, or only these hosts."""

    all: bool = False
    hosts: frozenset[str] = frozenset()


def new_mark(old: int, mark: int, mask: int) -> int:
    """The packet mark after setting `mark` under `mask` (the bits outside mask are kept)."""
    return (old & ~mask & 0xFFFFFFFF) | (mark & mask)


def _flow_key(ip: bytes) -> bytes | None:
    """The header bytes every rule reads (protocol, addresses, ports), None when uncacheable."""
    size = len(ip)
    if size >= 24 and ip[0] == 0x45 and not (ip[6] & 0x1F or ip[7]):
        return ip[9:10] + (ip[12:24] if ip[9] in PORTED else ip[12:20])
    if size >= 44 and ip[0] >> 4 == 6:
        return ip[6:7] + (ip[8:44] if ip[6] in PORTED else ip[8:40])
    return None  # options, fragments, extension headers: parsed each time


def _ip_length(ip: bytes) -> int:
    """The packet's IP length from its header (the queue copies only its first bytes)."""
    if len(ip) >= 6 and ip[0] >> 4 == 6:
        return (ip[4] << 8 | ip[5]) + 40
    if len(ip) >= 4:
        return ip[2] << 8 | ip[3]
    return len(ip)


class Enforcer:
    """The enforcing quotas, their over-limit state and the caches that make judging O(1)."""

    def __init__(self) -> None:
        self.quotas: tuple[QuotaSpec, ...] = ()
        self.over: list[Over] = []
        self.left: list[int] = []  # per quota: bytes left before its limit, -1 when not known
        # per quota name: bytes spent since the worker's last shipment, which the main
        # process's figure of bytes left cannot hold yet
        self.unshipped: dict[str, int] = {}
        self.active = False  # some quota enforces: batches are judged
        self.counts: dict[str, list[int]] = {}
        self._monitors: list[tuple[int, ...]] = []  # per quota: its monitors' classifier indices
        self._exempt: list[int] = []  # per quota: its exempt pseudo-monitor's index, or -1
        self._classifier = rules.compile(())
        # per quota: the host matchers of its monitors (per-host quotas), else ()
        self._matchers: list[tuple[HostMatcher, ...]] = []
        self._host_over: list[int] = []  # the per-host quotas with hosts over their limit
        self._flows: dict[tuple[bytes, int, str], Flow] = {}
        self._decisions: dict[tuple[int, ...], Decision] = {}

    def configure(self, monitors: Sequence[MonitorSpec], quotas: Sequence[QuotaSpec]) -> None:
        """The enforcing quotas over these monitors; every quota starts not over its limit."""
        by_name = {m.name: m for m in monitors}
        quotas = [q for q in quotas if q.enforces and all(n in by_name for n in q.monitors)]
        names = list(dict.fromkeys(n for q in quotas for n in q.monitors))
        specs = [by_name[n] for n in names]
        self._monitors = [tuple(names.index(n) for n in q.monitors) for q in quotas]
        self._matchers = [
            tuple(HostMatcher(by_name[n]) for n in q.monitors if by_name[n].hosts)
            if q.per_host else ()
            for q in quotas
        ]  # fmt: skip
        self._exempt = []
        for q in quotas:
            # a monitor without rules matches everything: an empty exempt list is no entry
            self._exempt.append(len(specs) if q.exempt else -1)
            if q.exempt:
                specs.append(MonitorSpec(f"exempt:{q.name}", q.exempt))
        self._classifier = rules.compile(specs)
        self.quotas = tuple(quotas)
        self._flows = {}
        self.set_over({})

    def set_over(self, over: Mapping[str, Over], left: Mapping[str, int] | None = None) -> None:
        """Which quotas are over their limit now, and the bytes the others have left."""
        self.over = [over.get(q.name, Over()) for q in self.quotas]
        self._host_over = [i for i, o in enumerate(self.over) if o.hosts and self._matchers[i]]
        left = left or {}
        self.left = [left.get(q.name, -1) for q in self.quotas]
        self.active = bool(self.quotas)
        self._decisions = {}

    def told(self, over: Mapping[str, Over], left: Mapping[str, int]) -> None:
        """The main process's state, its bytes left counted from the last shipment."""
        self.set_over(over)
        for index, quota in enumerate(self.quotas):
            have = left.get(quota.name)
            if have is None or self.over[index].all:
                continue
            have -= self.unshipped.get(quota.name, 0)
            if have > 0:
                self.left[index] = have
            else:  # spent since the shipment the figure counts from: over already
                self.over[index] = Over(True, self.over[index].hosts)

    def spend(self, index: int, size: int) -> None:
        """A packet of `size` bytes counted by quota `index`: over its limit once none are left."""
        name = self.quotas[index].name
        self.unshipped[name] = self.unshipped.get(name, 0) + size
        left = self.left[index] - size
        if left > 0:
            self.left[index] = left
            return
        self.left[index] = -1
        self.over[index] = Over(True, self.over[index].hosts)
        self._decisions = {}  # the next packets see the quota over its limit

    def judge(self, ip: bytes, direction: int, iface: str) -> Decision:
        """What the over-limit quotas do to one packet."""
        key = _flow_key(ip)
        if key is None:
            matched, hosts = self._match(ip, direction, iface)
        else:
            flow = (key, direction, iface)
            cached = self._flows.get(flow)
            if cached is None:
                cached = self._match(ip, direction, iface)
                if len(self._flows) >= CACHE_LIMIT:
                    self._flows.clear()
                self._flows[flow] = cached
            matched, hosts = cached
        decision = self._decisions.get(matched)
        if decision is None:
            decision = self._decisions[matched] = self._decide(matched)
        if self._host_over and decision[0] < 0:
            return self._by_host(decision, matched, hosts)
        return decision

    def _by_host(self, decision: Decision, matched: tuple[int, ...], hosts: Hosts) -> Decision:
        """The decision with the per-host quotas over the limit for the packet's hosts."""
        _drop, marks, spends = decision
        added: list[tuple[int, int, int]] = []
        for index in self._host_over:
            if not hosts[index] & self.over[index].hosts or self._exempt[index] in matched:
                continue
            if not any(m in matched for m in self._monitors[index]):
                continue
            quota = self.quotas[index]
            if quota.action == BLOCK:
                return index, (), spends
            added.append((index, quota.mark, quota.mask))
        return (-1, marks + tuple(added), spends) if added else decision

    def _match(self, ip: bytes, direction: int, iface: str) -> Flow:
        """The classifier indices a packet matches (none when it cannot be parsed) and, per
        quota, the hosts it counts for (per-host quotas whose monitors it matches)."""
        pkt = parse(ip)
        if pkt is None:
            return (), self._no_hosts()
        matched = self._classifier.match(pkt, direction, iface)
        return matched, tuple(self._hosts_of(i, pkt, matched) for i in range(len(self.quotas)))

    def _no_hosts(self) -> Hosts:
        return tuple(frozenset() for _ in self.quotas)

    def _hosts_of(self, index: int, pkt: PacketInfo, matched: tuple[int, ...]) -> frozenset[str]:
        """The host texts a packet counts for in per-host quota `index` (its two ends)."""
        matchers = self._matchers[index]
        if not matchers or not any(m in matched for m in self._monitors[index]):
            return frozenset()
        keys = {
            matcher.key(pkt.family, addr) for matcher in matchers for addr in (pkt.src, pkt.dst)
        }
        return frozenset(host_text(k) for k in keys if k is not None)

    def _decide(self, matched: tuple[int, ...]) -> Decision:
        """Drop if an over-limit blocking quota applies, else the marks of the marking ones;
        and the quotas under their limit whose bytes the packet spends."""
        drop = -1
        marks: list[tuple[int, int, int]] = []
        spends: list[tuple[int, int]] = []
        for index, quota in enumerate(self.quotas):
            # a packet counts in a quota's use once per monitor of it that it matches
            times = sum(1 for m in self._monitors[index] if m in matched)
            if not times:
                continue
            if not self.over[index].all:
                if self.left[index] >= 0:
                    spends.append((index, times))  # exempt traffic is used traffic too
            elif self._exempt[index] in matched:
                continue
            elif quota.action == BLOCK:
                drop = index if drop < 0 else drop
            else:
                marks.append((index, quota.mark, quota.mask))
        if drop >= 0:
            marks = []
        if drop < 0 and not marks and not spends:
            return _NOTHING
        return drop, tuple(marks), tuple(spends)

    def count(self, index: int, what: int, size: int) -> None:
        """Count one packet of `size` bytes dropped or marked by quota `index`."""
        row = self.counts.setdefault(self.quotas[index].name, [0, 0, 0, 0])
        row[what] += 1
        row[what + 1] += size

    def take_counts(self) -> dict[str, int]:
        """The counts since the last call as shipped stats keys (then zeroed)."""
        out = {
            f"{STATS_PREFIX}{name}:{COUNT_NAMES[i]}": value
            for name, row in self.counts.items()
            for i, value in enumerate(row)
        }
        self.counts = {}
        return out


def _sides(hook: int, indev: int, outdev: int, interfaces: Interfaces) -> list[tuple[int, str]]:
    """(direction, interface) a queued packet is metered as: a forwarded one (FORWARD hook)
    in on its input and out on its output interface, each when metered; others once."""
    if hook == NF_INET_FORWARD:
        sides = [
            (DIR_IN, interfaces.metered_name(indev)),
            (DIR_OUT, interfaces.metered_name(outdev)),
        ]
        return [(d, name) for d, name in sides if name]
    if hook <= NF_INET_LOCAL_IN:
        return [(DIR_IN, interfaces.name(indev))]
    return [(DIR_OUT, interfaces.name(outdev))]


def _verdict_of(enforcer: Enforcer, ip: bytes, sides: list[tuple[int, str]]) -> Decision:
    """The decision for a packet metered on one side, or both combined (a drop wins)."""
    if len(sides) == 1:
        return enforcer.judge(ip, *sides[0])
    drop = -1
    marks: tuple[tuple[int, int, int], ...] = ()
    spends: tuple[tuple[int, int], ...] = ()
    for direction, name in sides:
        d, m, sp = enforcer.judge(ip, direction, name)
        drop = d if drop < 0 else drop
        marks, spends = marks + m, spends + sp
    return drop, () if drop >= 0 else marks, spends


def judge_batch(
    enforcer: Enforcer, queue: int, buf: bytes, count: int, slot: int, interfaces: Interfaces
) -> bytes:
    """The individual verdicts (drops, marks) of a batch, as one send's worth of messages.

    The batch verdict sent after them accepts every other packet of the batch.
    """
    out: list[bytes] = []
    for ident, old, hook, indev, outdev, ip in headers(buf, count, slot):
        drop, marks, spends = _verdict_of(enforcer, ip, _sides(hook, indev, outdev, interfaces))
        size = _ip_length(ip)
        if drop >= 0:
            out.append(nfqconfig.verdict_message(queue, ident, nfqconfig.NF_DROP, None, 0))
            enforcer.count(drop, DROPPED_PACKETS, size)
        elif marks:
            mark = old
            for index, value, mask in dict.fromkeys(marks):  # a quota marks once
                mark = new_mark(mark, value, mask)
                enforcer.count(index, MARKED_PACKETS, size)
            out.append(nfqconfig.verdict_message(queue, ident, nfqconfig.NF_ACCEPT, mark, 0))
        for index, times in spends:  # after the verdict: the packet that crosses passes
            enforcer.spend(index, times * size)
    return b"".join(out)


def control_exempt(quota: QuotaSpec, ports: Sequence[int]) -> QuotaSpec:
    """The quota with the daemon's own TCP listening ports added to its exempt rules."""
    extra = tuple(RuleSpec(protocol=6, port=((p, p),)) for p in sorted(set(ports)))
    return replace(quota, exempt=quota.exempt + extra) if extra else quota


def over_from_wire(value: Mapping[str, object]) -> dict[str, Over]:
    """The over-limit state as the ENFORCE frame carries it: name -> {"all", "hosts"}."""
    out: dict[str, Over] = {}
    for name, state in value.items():
        if isinstance(state, dict):
            hosts = frozenset(str(h) for h in state.get("hosts", ()))
            out[str(name)] = Over(bool(state.get("all")), hosts)
    return out


def over_to_wire(over: Mapping[str, Over]) -> dict[str, object]:
    """The over-limit state as JSON-able values."""
    return {name: {"all": o.all, "hosts": sorted(o.hosts)} for name, o in over.items()}
