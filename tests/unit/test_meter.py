"""The meter: every packet to every matching monitor; reconfiguration without a gap."""

from __future__ import annotations

import ipaddress

from packets import TCP, UDP, ipv4, tcp, udp

from trafmetuxd.meter import LocalNetworks, Meter
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
