"""The per-packet pipeline: parse, classify, collect. Pure, and its feed never raises."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from trafmetuxd import rules
from trafmetuxd.collector import (
    Plan,
    RealtimeCollector,
    Slot,
    Snapshot,
    count_slots,
    host_matcher,
    is_syn,
    plan,
)  # fmt: skip
from trafmetuxd.packet import EXTENSIONS, PORTED, TCP, PacketInfo, parse
from trafmetuxd.spec import DIR_ANY, DIR_IN, DIR_OUT, MonitorSpec, Network

# The verdict cache: (header bytes every rule and flow key reads, protocol, direction, iface)
# -> Verdict. It holds only what those bytes decide, so a hit counts exactly what parse +
# classify + add would. Bounded: cleared when full and on reconfigure. The header slices have
# 8, 12, 32 or 36 bytes (IPv4/IPv6, without/with ports), so they also tell the family apart.
CacheKey = tuple[bytes, int, int, str]
Collectors = tuple[RealtimeCollector, ...]


class Verdict(NamedTuple):
    """What a cached flow's packets need: its slot in each matching collector without/with port
    compression, the flow's plan for each kind, and the TCP flags offset when the plan reads
    them (else 0).
    """

    plain: list[Slot]
    compressed: list[Slot]
    plain_plan: Plan | None
    compressed_plan: Plan | None
    flags_at: int


CACHE_LIMIT = 65_536
# Slots held by the cached flows at most (one per matching collector and flow, ~100 bytes
# each): with 20 monitors matching every flow a full cache would hold 1.3 million of them.
SLOT_LIMIT = 1 << 18
_GROUP_LIMIT = 4096
# Shortest packets the cache takes (the bytes at hand and the IP length both): the TCP flags
# byte (IPv4 offset 33, IPv6 53) is then always read, as parse() reads it.
_IPV4_MIN = 34
_IPV6_MIN = 54


class MeterStats:
    """Counters over every packet the meter was given, whatever monitors matched."""

    __slots__ = ("errors", "in_bytes", "in_packets", "malformed", "out_bytes", "out_packets")

    def __init__(self) -> None:
        self.in_packets = 0
        self.in_bytes = 0
        self.out_packets = 0
        self.out_bytes = 0
        self.malformed = 0  # could not be read as IP: counted here, in no monitor
        self.errors = 0  # a stage raised: a bug, counted so it is visible in status

    def as_dict(self) -> dict[str, int]:
        """The counters as a JSON-able dict."""
        # Spelled out: a compiled (mypyc) class has no __slots__ attribute to walk.
        return {
            "errors": self.errors,
            "in_bytes": self.in_bytes,
            "in_packets": self.in_packets,
            "malformed": self.malformed,
            "out_bytes": self.out_bytes,
            "out_packets": self.out_packets,
        }


class LocalNetworks:
    """Tells a replayed packet's direction from the configured local networks."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self._nets = [(net.version, int(net.network_address), int(net.netmask)) for net in networks]

    @property
    def active(self) -> bool:
        """Whether any local network is configured (else every direction is unknown)."""
        return bool(self._nets)

    def is_local(self, family: int, addr: int) -> bool:
        """True when addr lies in one of the local networks."""
        return any(f == family and addr & mask == net for f, net, mask in self._nets)

    def side(self, pkt: PacketInfo) -> int:
        """0 when only the sender is local, 1 when only the receiver is, else -1."""
        if not self._nets:
            return -1
        src = self.is_local(pkt.family, pkt.src)
        if src == self.is_local(pkt.family, pkt.dst):
            return -1
        return 0 if src else 1

    def direction(self, pkt: PacketInfo) -> int:
        """OUT from a local address, IN to one; both or neither: unknown (DIR_ANY)."""
        src = self.is_local(pkt.family, pkt.src)
        dst = self.is_local(pkt.family, pkt.dst)
        if src and not dst:
            return DIR_OUT
        if dst and not src:
            return DIR_IN
        return DIR_ANY


def _same_collector(a: MonitorSpec, b: MonitorSpec) -> bool:
    return (
        a.collector_size == b.collector_size
        and a.compress_ports == b.compress_ports
        and (a.hosts, a.host_prefix_v6, a.max_hosts) == (b.hosts, b.host_prefix_v6, b.max_hosts)
    )


class Meter:
    """Feeds packets through the classifier into each matching monitor's collector."""

    def __init__(
        self, monitors: Sequence[MonitorSpec], local_networks: Sequence[Network] = ()
    ) -> None:
        self.stats = MeterStats()
        # Which side is the client when the ports cannot tell (both unprivileged, no SYN seen).
        self.local = LocalNetworks(local_networks)
        self.monitors: tuple[MonitorSpec, ...] = ()
        self.collectors: list[RealtimeCollector] = []
        self._classifier = rules.compile(())
        self._cache: dict[CacheKey, Verdict] = {}
        self._slots = 0  # slots held by the cached verdicts
        self._directions: dict[bytes, int] = {}  # replay: address pair -> direction
        self._directions_of: LocalNetworks | None = None  # ... for these local networks
        # match() answer -> the collectors, split by compression: one shared pair per answer.
        self._groups: dict[tuple[int, ...], tuple[Collectors, Collectors]] = {}
        self.reconfigure(monitors)

    @property
    def cached_flows(self) -> int:
        """How many flows the verdict cache holds."""
        return len(self._cache)

    @property
    def names(self) -> list[str]:
        """Monitor names in classifier order."""
        return [m.name for m in self.monitors]

    def set_local_networks(self, networks: Sequence[Network]) -> None:
        """New local networks: flows seen from now on are planned with them."""
        self.local = LocalNetworks(networks)
        self._cache = {}
        self._slots = 0

    def reconfigure(self, monitors: Sequence[MonitorSpec]) -> list[tuple[str, Snapshot]]:
        """Switch to new monitors; unchanged ones keep their collectors without a gap.

        Returns the final snapshots of collectors that are dropped or rebuilt, so the caller
        can flush what they counted.
        """
        old = {m.name: (m, c) for m, c in zip(self.monitors, self.collectors, strict=True)}
        collectors: list[RealtimeCollector] = []
        for spec in monitors:
            kept = old.get(spec.name)
            if kept is not None and _same_collector(kept[0], spec):
                collectors.append(kept[1])
                del old[spec.name]
            else:
                collectors.append(
                    RealtimeCollector(spec.collector_size, spec.compress_ports, host_matcher(spec))
                )
        retired = [(name, coll.swap()) for name, (_, coll) in old.items()]
        self.monitors = tuple(monitors)
        self.collectors = collectors
        self._classifier = rules.compile(self.monitors)
        self._cache = {}
        self._slots = 0
        self._groups = {}
        return retired

    def feed(self, ts: float, buf: bytes, direction: int, iface: str) -> None:
        """Count one raw IP packet seen at ts (unix seconds) in a known direction."""
        # One long function on purpose: a Python call costs ~50 ns, a sizeable share of the
        # few hundred a cached packet takes. Plain IPv4 (IHL 5, no fragment offset) and IPv6
        # without extension headers, long enough to hold the TCP flags, go through the cache;
        # everything else takes the full path.
        try:
            size = len(buf)
            first = buf[0] if size >= _IPV4_MIN else 0
            if first == 0x45:
                length = buf[2] << 8 | buf[3]
                proto = buf[9]
                if buf[6] & 0x1F or buf[7] or length < _IPV4_MIN:
                    self._feed_parsed(ts, buf, direction, iface)
                    return
                header = buf[12:24] if proto in PORTED else buf[12:20]
            elif first >> 4 == 6:
                length = (buf[4] << 8 | buf[5]) + 40
                proto = buf[6]
                if proto in EXTENSIONS or size < _IPV6_MIN or length < _IPV6_MIN:
                    self._feed_parsed(ts, buf, direction, iface)
                    return
                header = buf[8:44] if proto in PORTED else buf[8:40]
            else:
                self._feed_parsed(ts, buf, direction, iface)
                return
            key = (header, proto, direction, iface)
            hit = self._cache.get(key)
            if hit is None:
                hit = self._fill(key, buf, direction, iface)
            stats = self.stats
            if direction == DIR_OUT:
                stats.out_packets += 1
                stats.out_bytes += length
            else:
                stats.in_packets += 1
                stats.in_bytes += length
            plain, compressed, plain_plan, compressed_plan, flags_at = hit
            if plain_plan is None and compressed_plan is None:
                return
            syn = flags_at > 0 and is_syn(buf[flags_at])
            minute = int(ts) // 60
            out = direction == DIR_OUT
            if compressed_plan is not None:
                count_slots(compressed, compressed_plan, minute, out, length, syn)
            if plain_plan is not None:
                count_slots(plain, plain_plan, minute, out, length, syn)
        except Exception:  # a bug in a stage must never stop metering
            self.stats.errors += 1

    def _fill(self, key: CacheKey, buf: bytes, direction: int, iface: str) -> Verdict:
        """Classify and plan a cacheable packet's flow, and cache the answer."""
        pkt = parse(buf)
        assert pkt is not None  # the cache takes only packets parse() reads in full
        plain, compressed = self._group(self._classifier.match(pkt, direction, iface))
        local = self.local.side(pkt)
        plain_plan = plan(pkt, False, local) if plain else None
        compressed_plan = plan(pkt, True, local) if compressed else None
        # The TCP flags matter only where a new position's client is the SYN sender.
        needs_flags = pkt.proto == TCP and any(
            p is not None and p[3] for p in (plain_plan, compressed_plan)
        )
        flags_at = (33 if pkt.family == 4 else 53) if needs_flags else 0
        hit = Verdict(
            [Slot(c, pkt) for c in plain], [Slot(c, pkt) for c in compressed], plain_plan,
            compressed_plan,
            flags_at,
        )  # fmt: skip
        cache = self._cache
        self._slots += len(plain) + len(compressed)
        if len(cache) >= CACHE_LIMIT or self._slots > SLOT_LIMIT:
            cache.clear()
            self._slots = len(plain) + len(compressed)
        cache[key] = hit
        return hit

    def _group(self, indices: tuple[int, ...]) -> tuple[Collectors, Collectors]:
        """The collectors of a match() answer, without and with port compression (shared)."""
        group = self._groups.get(indices)
        if group is None:
            chosen = [self.collectors[i] for i in indices]
            group = (
                tuple(c for c in chosen if not c.compress_ports),
                tuple(c for c in chosen if c.compress_ports),
            )
            if len(self._groups) >= _GROUP_LIMIT:
                self._groups.clear()
            self._groups[indices] = group
        return group

    def _feed_parsed(self, ts: float, buf: bytes, direction: int, iface: str) -> None:
        """The full path: parse, classify, add to each matching collector."""
        pkt = parse(buf)
        if pkt is None:
            self.stats.malformed += 1
            return
        self._count(ts, pkt, direction, iface)

    def feed_local(self, ts: float, buf: bytes, local: LocalNetworks, iface: str) -> None:
        """Count one raw IP packet whose direction comes from the local networks (replay)."""
        try:
            pkt = parse(buf)
            if pkt is None:
                self.stats.malformed += 1
                return
            self._count(ts, pkt, local.direction(pkt), iface)
        except Exception:  # a bug in a stage must never stop metering
            self.stats.errors += 1

    def feed_frames(
        self,
        frames: list[tuple[float, bytes | None, str]],
        start: int,
        stop_at: float,
        local: LocalNetworks,
        iface: str,
        skipped: dict[str, int],
    ) -> int:
        """Meter a capture's frames from `start` until one at or after `stop_at` (replay).

        Returns that frame's index, or len(frames) when all were metered. A frame without an
        IP packet is counted in `skipped` under the reason the reader gave.
        """
        for i in range(start, len(frames)):
            ts, ip, why = frames[i]
            if ts >= stop_at:
                return i
            if ip is None:
                skipped[why] = skipped.get(why, 0) + 1
                continue
            direction = self._direction_of(ip, local)
            if direction < 0:
                self.feed_local(ts, ip, local, iface)  # not plain IP: parsed, or malformed
            else:
                self.feed(ts, ip, direction, iface)  # the cached path, as live packets take
        return len(frames)

    def _direction_of(self, ip: bytes, local: LocalNetworks) -> int:
        """A replayed packet's direction from its addresses, remembered per address pair.

        -1 when the packet is too short to hold both addresses (feed_local then decides).
        """
        if not local.active:
            return DIR_ANY
        if local is not self._directions_of:
            self._directions = {}  # remembered for other local networks
            self._directions_of = local
        size = len(ip)
        version = ip[0] >> 4 if size else 0
        if version == 4 and size >= 20:
            key = ip[12:20]
        elif version == 6 and size >= 40:
            key = ip[8:40]
        else:
            return -1
        known = self._directions.get(key)
        if known is not None:
            return known
        pkt = parse(ip)
        if pkt is None:
            return -1
        direction = local.direction(pkt)
        if len(self._directions) >= CACHE_LIMIT:
            self._directions.clear()
        self._directions[key] = direction
        return direction

    def _count(self, ts: float, pkt: PacketInfo, direction: int, iface: str) -> None:
        stats = self.stats
        if direction == DIR_OUT:
            stats.out_packets += 1
            stats.out_bytes += pkt.length
        else:
            stats.in_packets += 1
            stats.in_bytes += pkt.length
        minute = int(ts) // 60
        collectors = self.collectors
        local = self.local.side(pkt)
        for index in self._classifier.match(pkt, direction, iface):
            collectors[index].add(minute, pkt, direction, local)

    def swap(self) -> list[tuple[str, Snapshot]]:
        """Hand over every monitor's realtime collector contents (O(1) per monitor)."""
        return [(m.name, c.swap()) for m, c in zip(self.monitors, self.collectors, strict=True)]


__all__ = ["DIR_ANY", "DIR_IN", "DIR_OUT", "LocalNetworks", "Meter", "MeterStats"]
