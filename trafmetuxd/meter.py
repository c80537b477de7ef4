"""The per-packet pipeline: parse, classify, collect. Pure, and its feed never raises."""

from __future__ import annotations

from collections.abc import Sequence

from trafmetuxd import rules
from trafmetuxd.collector import RealtimeCollector, Snapshot
from trafmetuxd.packet import PacketInfo, parse
from trafmetuxd.spec import DIR_ANY, DIR_IN, DIR_OUT, MonitorSpec, Network


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
        return {name: getattr(self, name) for name in self.__slots__}


class LocalNetworks:
    """Tells a replayed packet's direction from the configured local networks."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self._nets = [(net.version, int(net.network_address), int(net.netmask)) for net in networks]

    def is_local(self, family: int, addr: int) -> bool:
        """True when addr lies in one of the local networks."""
        return any(f == family and addr & mask == net for f, net, mask in self._nets)

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
    return a.collector_size == b.collector_size and a.compress_ports == b.compress_ports


class Meter:
    """Feeds packets through the classifier into each matching monitor's collector."""

    def __init__(self, monitors: Sequence[MonitorSpec]) -> None:
        self.stats = MeterStats()
        self.monitors: tuple[MonitorSpec, ...] = ()
        self.collectors: list[RealtimeCollector] = []
        self._classifier = rules.compile(())
        self.reconfigure(monitors)

    @property
    def names(self) -> list[str]:
        """Monitor names in classifier order."""
        return [m.name for m in self.monitors]

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
                collectors.append(RealtimeCollector(spec.collector_size, spec.compress_ports))
        retired = [(name, coll.swap()) for name, (_, coll) in old.items()]
        self.monitors = tuple(monitors)
        self.collectors = collectors
        self._classifier = rules.compile(self.monitors)
        return retired

    def feed(self, ts: float, buf: bytes, direction: int, iface: str) -> None:
        """Count one raw IP packet seen at ts (unix seconds) in a known direction."""
        try:
            pkt = parse(buf)
            if pkt is None:
                self.stats.malformed += 1
                return
            self._count(ts, pkt, direction, iface)
        except Exception:  # a bug in a stage must never stop metering
            self.stats.errors += 1

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
        for index in self._classifier.match(pkt, direction, iface):
            collectors[index].add(minute, pkt, direction)

    def swap(self) -> list[tuple[str, Snapshot]]:
        """Hand over every monitor's realtime collector contents (O(1) per monitor)."""
        return [(m.name, c.swap()) for m, c in zip(self.monitors, self.collectors, strict=True)]


__all__ = ["DIR_ANY", "DIR_IN", "DIR_OUT", "LocalNetworks", "Meter", "MeterStats"]
