"""Per-host totals: every packet of a monitor with `hosts` counts for the hosts it is between."""

from __future__ import annotations

import ipaddress
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.packets import TCP, UDP, ipv4, ipv6, tcp, udp
from harness.stored import Stored
from harness.streams import events
from trafmetuxd.collector import OTHER_HOST, FlushCollector, Snapshot
from trafmetuxd.meter import Meter
from trafmetuxd.packet import parse
from trafmetuxd.spec import DIR_IN, MonitorSpec, RuleSpec
from trafmetuxd.store import Store

NETS = (ipaddress.ip_network("10.0.0.0/31"), ipaddress.ip_network("fd00::/64"))
T0 = 1_800_000_000.0


def host_sums(snaps: list[Snapshot]) -> tuple[int, int, int, int]:
    """(in bytes, in packets, out bytes, out packets) summed over every host of snaps."""
    sums = [0, 0, 0, 0]
    for snap in snaps:
        for minutes in snap.hosts.values():
            for row in minutes.values():
                for i in range(4):
                    sums[i] += row[i]
    return sums[0], sums[1], sums[2], sums[3]


def in_prefixes(family: int, addr: int) -> bool:
    return any(
        n.version == family and addr & int(n.netmask) == int(n.network_address) for n in NETS
    )


@settings(max_examples=200, deadline=None)
@given(events(), st.integers(1, 4), st.sampled_from((64, 128)))
def test_host_totals_sum_to_the_monitor_for_packets_in_the_prefixes(
    evs: list[tuple[bytes, int, str, int, int]], max_hosts: int, prefix: int
) -> None:
    options = {"hosts": NETS, "host_prefix_v6": prefix, "max_hosts": max_hosts}
    specs = (
        MonitorSpec("all", **options),  # type: ignore[arg-type]
        MonitorSpec("in", (RuleSpec(direction=DIR_IN),), **options),  # type: ignore[arg-type]
    )
    meter = Meter(specs)
    snaps: dict[str, list[Snapshot]] = {"all": [], "in": []}
    for buf, direction, iface, second, swap_now in evs:
        if not swap_now:
            for name, snap in meter.swap():
                snaps[name].append(snap)
        meter.feed(T0 + second, buf, direction, iface)
    for name, snap in meter.swap():
        snaps[name].append(snap)
    for name in ("all", "in"):
        want = [0, 0, 0, 0]
        for buf, direction, *_ in evs:
            pkt = parse(buf)
            if pkt is None or (name == "in" and direction != DIR_IN):
                continue
            if in_prefixes(pkt.family, pkt.dst):
                want[0] += pkt.length
                want[1] += 1
            if in_prefixes(pkt.family, pkt.src):
                want[2] += pkt.length
                want[3] += 1
        assert host_sums(snaps[name]) == tuple(want)
        for snap in snaps[name]:
            assert len([h for h in snap.hosts if h != OTHER_HOST]) <= max_hosts
            other = snap.hosts.get(OTHER_HOST, {}).values()
            assert snap.host_overflow == sum(row[1] + row[3] for row in other)


def test_beyond_max_hosts_packets_count_in_other_exactly() -> None:
    spec = MonitorSpec("lan", hosts=(ipaddress.ip_network("10.0.0.0/8"),), max_hosts=1000)
    meter = Meter((spec,))
    server = "192.0.2.1"
    sent = 0
    for i in range(10_000):
        host = str(ipaddress.ip_address(0x0A000000 + i))
        packet = ipv4(UDP, udp(40000, 53, bytes(i % 50)), src=host, dst=server)
        meter.feed(T0, packet, DIR_IN, "eth0")
        meter.feed(T0, packet, DIR_IN, "eth0")  # the cached path for the second packet
        sent += 2 * len(packet)
    ((_, snap),) = meter.swap()
    assert len(snap.hosts) == 1001
    assert host_sums([snap]) == (0, 0, sent, 20_000)
    assert snap.host_overflow == 2 * 9000
    other = snap.hosts[OTHER_HOST][int(T0) // 60]
    assert other[3] == 2 * 9000
    flush = FlushCollector(2000, max_hosts=500)
    flush.merge(snap)
    merged = flush.pending()
    assert len(merged.hosts) == 501
    assert host_sums([merged]) == (0, 0, sent, 20_000)
    assert merged.host_overflow == 2 * 9500


def test_a_packet_between_two_hosts_counts_for_both() -> None:
    spec = MonitorSpec("lan", hosts=(ipaddress.ip_network("10.0.0.0/24"),))
    meter = Meter((spec,))
    packet = ipv4(TCP, tcp(40000, 22, payload=b"x" * 60), src="10.0.0.2", dst="10.0.0.3")
    meter.feed(T0, packet, DIR_IN, "eth0")
    ((_, snap),) = meter.swap()
    minute = int(T0) // 60
    assert snap.hosts == {
        (4, 0x0A000002, 32): {minute: [0, 0, len(packet), 1]},
        (4, 0x0A000003, 32): {minute: [len(packet), 1, 0, 0]},
    }


def test_monitors_without_hosts_keep_no_host_totals() -> None:
    meter = Meter((MonitorSpec("all"),))
    meter.feed(T0, ipv4(UDP, udp(40000, 53, b"q"), src="10.0.0.2"), DIR_IN, "eth0")
    ((_, snap),) = meter.swap()
    assert snap.hosts == {} and snap.host_overflow == 0


def test_host_totals_are_stored_with_their_rollups_and_pruned_with_the_minutes(
    tmp_path: Path,
) -> None:
    minute = int(T0) // 60
    six = (6, 0xFD00 << 112, 64)
    snap = Snapshot(
        {minute: [100, 2, 30, 1]},
        {},
        0,
        {(4, 0x0A000002, 32): {minute: [100, 2, 0, 0]}, six: {minute: [0, 0, 30, 1]},
         OTHER_HOST: {minute + 1: [5, 1, 0, 0]}},
        1,
    )  # fmt: skip
    store = Store(tmp_path / "t.sqlite3")
    store.write(T0 + 60, [("lan", snap)])
    store.write(T0 + 120, [("lan", snap)])
    stored = Stored(store.path)
    assert stored.host_totals("lan") == {
        "10.0.0.2": {minute: (200, 4, 0, 0)},
        "fd00::/64": {minute: (0, 0, 60, 2)},
        "other": {minute + 1: (10, 2, 0, 0)},
    }
    assert stored.host_totals("lan", "day")["10.0.0.2"] == {minute // 1440: (200, 4, 0, 0)}
    with sqlite3.connect(tmp_path / "t.sqlite3") as conn:
        assert conn.execute("SELECT sum(host_overflow) FROM flush").fetchone()[0] == 2
    store.write(T0 + 8 * 86400, [], prune_before=(minute + 2, 0))
    assert stored.host_totals("lan") == {}
    assert stored.host_totals("lan", "hour")["other"] == {minute // 60: (10, 2, 0, 0)}
    store.close()


def test_ipv6_hosts_are_grouped_by_prefix_through_the_shipment_frames() -> None:
    from trafmetuxd import wire

    spec = MonitorSpec("lan", hosts=(ipaddress.ip_network("fd00:1::/48"),), host_prefix_v6=64)
    meter = Meter((spec,))
    for src in ("fd00:1:0:1::a", "fd00:1:0:1::b", "fd00:1:0:2::a"):
        meter.feed(T0, ipv6(UDP, udp(5000, 53, b"x" * 10), src=src, dst="2001:db8::1"),
                   DIR_IN, "eth0")  # fmt: skip
    frames = list(wire.shipment(meter.swap(), 1, {}))
    parts = [wire.read_part(body) for kind, body in wire.Frames().feed(b"".join(frames))
             if kind == wire.PART]  # fmt: skip
    ((name, snap),) = parts
    minute = int(T0) // 60
    assert name == "lan"
    assert snap.hosts == {
        (6, 0xFD00_0001_0000_0001 << 64, 64): {minute: [0, 0, 2 * 58, 2]},
        (6, 0xFD00_0001_0000_0002 << 64, 64): {minute: [0, 0, 58, 1]},
    }


def test_ipv6_hosts_are_grouped_by_prefix(tmp_path: Path) -> None:
    from scapy.all import IP, UDP, IPv6, Raw, wrpcap

    from trafmetuxd.metering import Metering
    from trafmetuxd.replay import replay
    from trafmetuxd.spec import Config

    lan = (ipaddress.ip_network("192.168.190.0/24"), ipaddress.ip_network("fd00:190::/56"))
    sent = [  # (time, packet): two privacy addresses of one /64, one of another, one IPv4 host
        (T0 + 1, IPv6(src="fd00:190:0:1::a", dst="2001:db8::80") / UDP() / Raw(b"a" * 100)),
        (T0 + 2, IPv6(src="2001:db8::80", dst="fd00:190:0:1::b") / UDP() / Raw(b"b" * 900)),
        (T0 + 3, IPv6(src="fd00:190:0:2::a", dst="2001:db8::80") / UDP() / Raw(b"c" * 10)),
        (T0 + 4, IP(src="203.0.113.9", dst="192.168.190.7") / UDP() / Raw(b"d" * 300)),
        (T0 + 65, IPv6(src="fd00:190:0:1::c", dst="fd00:190:0:2::a") / UDP() / Raw(b"e")),
    ]
    frames = []
    for ts, ip in sent:
        ip.time = ts
        frames.append(ip)
    wrpcap(str(tmp_path / "v6.pcap"), frames, linktype=101)
    cfg = Config(
        path=tmp_path / "t.toml",
        state_dir=tmp_path / "state",
        timezone="UTC",
        local_networks=lan,
        monitors=(MonitorSpec("lan", hosts=lan, host_prefix_v6=64),),
    )
    cfg.state_dir.mkdir()
    daemon = Metering(cfg)
    try:
        assert replay(daemon, tmp_path / "v6.pcap", iface="")
    finally:
        daemon.close()
    size = [len(bytes(ip)) for _, ip in sent]
    minute = int(T0) // 60
    got = Stored(cfg.database).host_totals("lan")
    assert got == {
        "fd00:190:0:1::/64": {minute: (size[1], 1, size[0], 1), minute + 1: (0, 0, size[4], 1)},
        "fd00:190:0:2::/64": {minute: (0, 0, size[2], 1), minute + 1: (size[4], 1, 0, 0)},
        "192.168.190.7": {minute: (size[3], 1, 0, 0)},
    }


def test_host_overflow_is_in_the_flush_status_once_committed(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    from trafmetuxd.flush import Flusher

    spec = MonitorSpec("lan", hosts=(ipaddress.ip_network("10.0.0.0/8"),), max_hosts=1)
    meter = Meter((spec,))
    for last in (1, 2, 3):
        meter.feed(T0, ipv4(UDP, udp(4000, 53, b"q"), src=f"10.0.0.{last}"), DIR_IN, "eth0")
    store = Store(tmp_path / "t.sqlite3")
    flusher = Flusher(store, (spec,), ZoneInfo("UTC"))
    flusher.absorb(meter.swap())
    assert flusher.state.host_overflow == {}
    assert flusher.write(T0 + 60)
    flusher.committed(T0 + 60)
    assert flusher.state.host_overflow == {"lan": 2}
    assert Stored(store.path).host_totals("lan")["other"] == {int(T0) // 60: (0, 0, 2 * 29, 2)}
    store.close()
