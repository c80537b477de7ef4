"""The meter: every packet to every matching monitor; reconfiguration without a gap."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.packets import (
    ACK,
    HOP_BY_HOP,
    ICMP,
    SYN,
    TCP,
    UDP,
    addr,
    icmp,
    ipv4,
    ipv6,
    options_header,
    tcp,
    udp,
)
from harness.streams import events
from trafmetuxd import rules
from trafmetuxd.collector import RealtimeCollector, Snapshot, host_matcher
from trafmetuxd.meter import CACHE_LIMIT, LocalNetworks, Meter
from trafmetuxd.packet import parse
from trafmetuxd.spec import DIR_IN, DIR_OUT, MonitorSpec, RuleSpec

SSH = MonitorSpec("ssh", (RuleSpec(protocol=TCP, port=((22, 22),)),))
INPUT = MonitorSpec("input", (RuleSpec(direction=DIR_IN),))
ALL = MonitorSpec("all")


def totals(meter: Meter) -> dict[str, int]:
    out = {}
    for spec, coll in zip(meter.monitors, meter.collectors, strict=True):
        out[spec.name] = sum(r[0] + r[2] for r in coll.totals.values())
    return out


def test_a_packet_lands_in_every_monitor_it_matches() -> None:
    meter = Meter((SSH, INPUT, ALL))
    ssh_in = ipv4(TCP, tcp(40000, 22, payload=b"x" * 100))
    dns_out = ipv4(UDP, udp(5353, 53, payload=b"q" * 20))
    meter.feed(60.0, ssh_in, DIR_IN, "eth0")
    meter.feed(61.0, dns_out, DIR_OUT, "eth0")
    assert totals(meter) == {
        "ssh": len(ssh_in),
        "input": len(ssh_in),
        "all": len(ssh_in) + len(dns_out),
    }
    assert meter.stats.in_packets == 1
    assert meter.stats.out_bytes == len(dns_out)


def test_garbage_is_counted_as_malformed_and_never_raises() -> None:
    meter = Meter((ALL,))
    for junk in (b"", b"\x45", b"\x60" + bytes(10), b"\xff" * 64):
        meter.feed(0.0, junk, DIR_IN, "eth0")
    assert meter.stats.malformed == 4
    assert totals(meter) == {"all": 0}


def test_reload_keeps_unchanged_monitors_counting_and_starts_new_ones_at_zero() -> None:
    meter = Meter((SSH, ALL))
    packet = ipv4(TCP, tcp(40000, 22, payload=b"x" * 10))
    meter.feed(0.0, packet, DIR_IN, "eth0")
    retired = meter.reconfigure((ALL, INPUT))
    assert [name for name, _ in retired] == ["ssh"]
    assert sum(r[0] for r in retired[0][1].totals.values()) == len(packet)
    meter.feed(1.0, packet, DIR_IN, "eth0")
    assert totals(meter) == {"all": 2 * len(packet), "input": len(packet)}


def test_a_resized_monitor_hands_over_its_counts_and_starts_a_new_collector() -> None:
    meter = Meter((ALL,))
    packet = ipv4(UDP, udp(1, 2))
    meter.feed(0.0, packet, DIR_IN, "")
    retired = meter.reconfigure((MonitorSpec("all", collector_size=5000),))
    assert [(n, sum(r[1] for r in s.totals.values())) for n, s in retired] == [("all", 1)]
    assert totals(meter) == {"all": 0}


def test_replay_direction_comes_from_the_local_networks() -> None:
    local = LocalNetworks((ipaddress.ip_network("10.0.0.0/8"),))
    meter = Meter((INPUT, MonitorSpec("output", (RuleSpec(direction=DIR_OUT),)), ALL))
    inbound = ipv4(UDP, udp(53, 5000), src="192.0.2.1", dst="10.1.1.1")
    outbound = ipv4(UDP, udp(5000, 53), src="10.1.1.1", dst="192.0.2.1")
    transit = ipv4(UDP, udp(5000, 53), src="192.0.2.1", dst="198.51.100.1")
    for buf in (inbound, outbound, transit):
        meter.feed_local(0.0, buf, local, "")
    got = totals(meter)
    # neither side local: the direction is unknown and rules of either direction match
    assert got["output"] == len(outbound) + len(transit)
    assert got["input"] == len(inbound) + len(transit)
    assert got["all"] == len(inbound) + len(outbound) + len(transit)


# The verdict cache: a cached meter must count exactly what parse + classify + add count.

CACHE_MONITORS = (
    ("all", ()),
    ("ssh", (RuleSpec(protocol=TCP, port=((22, 22),)),)),
    ("in_eth", (RuleSpec(direction=DIR_IN, interface="eth*"),)),
    ("lan", (RuleSpec(host=(ipaddress.ip_network("10.0.0.0/31"),)), RuleSpec(family=6))),
    ("dns", (RuleSpec(protocol=UDP, dst_port=((53, 53),)),)),
    ("high", (RuleSpec(src_port=((1024, 65535),), dst=(ipaddress.ip_network("10.0.0.2/32"),)),)),
    ("hosts", ()),
    ("hosts_in", (RuleSpec(direction=DIR_IN),)),
)
# Monitors with `hosts`: few hosts allowed, so that some packets count in "other".
HOST_OPTIONS = {
    "hosts": {"hosts": (ipaddress.ip_network("10.0.0.0/30"), ipaddress.ip_network("fd00::/64")),
              "max_hosts": 2},
    "hosts_in": {"hosts": (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
                 "host_prefix_v6": 64, "max_hosts": 3},
}  # fmt: skip


def reference(specs: tuple[MonitorSpec, ...]) -> tuple[Callable[..., None], Callable[[], list]]:
    """The uncached path: parse, classify, RealtimeCollector.add per matching monitor."""
    classifier = rules.compile(specs)
    colls = [RealtimeCollector(s.collector_size, s.compress_ports, host_matcher(s)) for s in specs]

    def feed(ts: float, buf: bytes, direction: int, iface: str) -> None:
        pkt = parse(buf)
        if pkt is not None:
            for i in classifier.match(pkt, direction, iface):
                colls[i].add(int(ts) // 60, pkt, direction)

    def swap() -> list[Snapshot]:
        return [c.swap() for c in colls]

    return feed, swap


@settings(max_examples=300, deadline=None)
@given(events(), st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=8, max_size=8))
def test_the_cached_meter_counts_exactly_what_the_uncached_path_counts(
    evs: list[tuple[bytes, int, str, int, int]], shapes: list[tuple[int, bool]]
) -> None:
    specs = tuple(
        MonitorSpec(
            name, rules, collector_size=size, compress_ports=compress, **HOST_OPTIONS.get(name, {})
        )
        for (name, rules), (size, compress) in zip(CACHE_MONITORS, shapes, strict=True)
    )
    meter = Meter(specs)
    feed, swap = reference(specs)
    for buf, direction, iface, second, swap_now in evs:
        if not swap_now:
            assert [s for _, s in meter.swap()] == swap()
        meter.feed(1_800_000_000.0 + second, buf, direction, iface)
        feed(1_800_000_000.0 + second, buf, direction, iface)
    assert [s for _, s in meter.swap()] == swap()
    assert meter.stats.errors == 0
    expected = [parse(buf) for buf, *_ in evs]
    assert meter.stats.malformed == expected.count(None)
    in_bytes = sum(p.length for p, e in zip(expected, evs, strict=True) if p and e[1] == DIR_IN)
    assert meter.stats.in_bytes == in_bytes


def test_a_cached_flow_follows_a_reload_to_the_new_monitors() -> None:
    meter = Meter((SSH, ALL))
    packet = ipv4(TCP, tcp(40000, 22, payload=b"x" * 30))
    meter.feed(0.0, packet, DIR_IN, "eth0")  # cached: ssh and all
    meter.reconfigure((INPUT,))
    meter.feed(1.0, packet, DIR_IN, "eth0")
    assert totals(meter) == {"input": len(packet)}


def test_the_cache_stays_bounded_under_a_stream_of_new_flows() -> None:
    meter = Meter((ALL,))
    for n in range(CACHE_LIMIT + 10):
        src = str(ipaddress.IPv4Address(0x0A000000 + n))
        meter.feed(0.0, ipv4(UDP, udp(5000, 53, bytes(10)), src=src), DIR_OUT, "eth0")
    assert 0 < meter.cached_flows <= CACHE_LIMIT
    assert meter.stats.out_packets == CACHE_LIMIT + 10


def test_a_syn_decides_the_client_of_a_cached_flow_after_a_swap() -> None:
    # Both ports unprivileged: the SYN sender is the client even when its port is lower,
    # and the cached flow re-reads the flags after the swap emptied the positions.
    meter = Meter((MonitorSpec("raw", compress_ports=False),))
    syn = ipv4(TCP, tcp(3128, 40000, SYN), src="10.0.0.1", dst="10.0.0.2")
    data = ipv4(TCP, tcp(3128, 40000, ACK, bytes(20)), src="10.0.0.1", dst="10.0.0.2")
    meter.feed(0.0, data, DIR_OUT, "eth0")
    first = meter.swap()[0][1].flows
    meter.feed(0.0, syn, DIR_OUT, "eth0")
    second = meter.swap()[0][1].flows
    ten1, ten2 = addr("10.0.0.1"), addr("10.0.0.2")
    assert first == {(4, TCP, ten2, 40000, ten1, 3128): [0, len(data), 1]}
    assert second == {(4, TCP, ten1, 3128, ten2, 40000): [len(syn), 0, 1]}


def test_packets_the_cache_cannot_key_are_counted_by_their_own_headers() -> None:
    # Same raw bytes where the cache would look for ports, different flows: each such packet
    # must be parsed in full (IPv6 extension headers, IPv4 fragments and options).
    meter = Meter((MonitorSpec("raw", compress_ports=False),))
    hop = [ipv6(HOP_BY_HOP, options_header(TCP) + tcp(40000, port, ACK)) for port in (22, 80)]
    first = ipv4(TCP, tcp(40000, 22, ACK, bytes(20)))
    later = ipv4(TCP, tcp(40000, 22, ACK, bytes(20)), frag_offset=3)
    optioned = ipv4(TCP, tcp(40000, 80, ACK), options=bytes(4))
    for buf in (*hop, first, later, optioned):
        meter.feed(0.0, buf, DIR_OUT, "eth0")
    got = {(k[0], k[3], k[5]): e for k, e in meter.swap()[0][1].flows.items()}
    assert got == {
        (6, 40000, 22): [len(hop[0]), 0, 1],
        (6, 40000, 80): [len(hop[1]), 0, 1],
        (4, 40000, 22): [len(first), 0, 1],
        (4, -1, -1): [len(later), 0, 1],
        (4, 40000, 80): [len(optioned), 0, 1],
    }


@pytest.mark.parametrize("options", [b"", b"\x01\x01\x01\x00"])  # cached path, full path
def test_with_local_networks_the_local_side_is_the_client_when_the_ports_cannot_tell(
    options: bytes,
) -> None:
    # A call between unprivileged, non-ephemeral ports: neither port tells the client.
    local, remote = "10.24.82.188", "1.201.1.174"
    reply = ipv4(17, udp(23044, 11320, bytes(20)), src=remote, dst=local, options=options)
    call = ipv4(17, udp(11320, 23044, bytes(10)), src=local, dst=remote, options=options)
    with_nets = Meter([MonitorSpec("all")], [ipaddress.ip_network("10.0.0.0/8")])
    without = Meter([MonitorSpec("all")])
    for meter in (with_nets, without):
        meter.feed(0.0, reply, DIR_IN, "eth0")  # the remote side speaks first
        meter.feed(1.0, call, DIR_OUT, "eth0")
    sent, received = len(call), len(reply)
    # The local host is the client: the remote service port is kept, its own port compressed.
    assert with_nets.collectors[0].flows == {
        (4, 17, addr(local), 65535, addr(remote), 23044): [sent, received, 2]
    }
    # Without local networks the higher port's side is the client, as before.
    assert without.collectors[0].flows == {
        (4, 17, addr(remote), 65535, addr(local), 11320): [received, sent, 2]
    }


def test_replayed_frames_count_exactly_what_feed_local_counts() -> None:
    # feed_frames remembers each address pair's direction and takes the cached path.
    nets = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("fd00::/64")]
    packets = [
        ipv4(UDP, udp(40000, 53, bytes(30)), src="192.0.2.1", dst="198.51.100.2"),
        ipv4(UDP, udp(53, 40000, bytes(90)), src="198.51.100.2", dst="192.0.2.1"),
        ipv4(TCP, tcp(40001, 443, SYN), src="192.0.2.7", dst="192.0.2.9"),  # both local
        ipv4(TCP, tcp(443, 40001, SYN | ACK), src="203.0.113.5", dst="198.51.100.2"),  # neither
        ipv6(UDP, udp(5000, 6000, bytes(10)), src="fd00::1", dst="2001:db8::2"),
        ipv6(UDP, udp(6000, 5000, bytes(20)), src="2001:db8::2", dst="fd00::1"),
        ipv4(ICMP, icmp(), src="192.0.2.1", dst="198.51.100.2", options=b"\x01\x01\x01\x00"),
        b"\x45\x00",  # malformed
    ]
    frames: list[tuple[float, bytes | None, str]] = [
        (600.0 + i, pkt, "") for i, pkt in enumerate(packets * 3)
    ]
    frames.append((700.0, None, "ARP"))
    monitors = [ALL, INPUT, MonitorSpec("six", (RuleSpec(family=6),))]
    replayed, reference = Meter(monitors, nets), Meter(monitors, nets)
    local = LocalNetworks(nets)
    skipped: dict[str, int] = {}
    assert replayed.feed_frames(frames, 0, float("inf"), local, "eth0", skipped) == len(frames)
    for ts, ip, _why in frames:
        if ip is not None:
            reference.feed_local(ts, ip, local, "eth0")
    assert skipped == {"ARP": 1}
    assert replayed.swap() == reference.swap()
    assert replayed.stats.as_dict() == reference.stats.as_dict()
    assert replayed.stats.malformed == 3
