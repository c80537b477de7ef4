"""Monitor rules: which monitors a packet belongs to, by direction, interface, protocol,
family, addresses and ports, checked by scenario and against a naive reference matcher."""

from __future__ import annotations

import fnmatch
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.packets import addr as ip
from trafmetuxd import rules
from trafmetuxd.packet import NO_PORT, PacketInfo
from trafmetuxd.spec import DIR_ANY, DIR_IN, DIR_OUT, MonitorSpec, RuleSpec

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


def nets(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(text) for text in texts)


def pkt(
    src: str = "192.0.2.1",
    dst: str = "198.51.100.7",
    proto: int = TCP,
    sport: int = 40000,
    dport: int = 443,
) -> PacketInfo:
    family = ipaddress.ip_address(src).version
    return PacketInfo(family, proto, ip(src), sport, ip(dst), dport, 100, 0)


def monitors(*rule_sets: tuple[RuleSpec, ...]) -> list[MonitorSpec]:
    return [MonitorSpec(name=f"m{i}", rules=rs) for i, rs in enumerate(rule_sets)]


def match_one(rule: RuleSpec, packet: PacketInfo, direction: int = DIR_IN, iface: str = "eth0"):
    """Whether a single-rule monitor matches."""
    return rules.compile(monitors((rule,))).match(packet, direction, iface) == (0,)


# --- scenarios, one field at a time --------------------------------------------------------


def test_input_and_output_monitors_split_traffic_by_direction():
    classifier = rules.compile(
        monitors((RuleSpec(direction=DIR_IN),), (RuleSpec(direction=DIR_OUT),))
    )
    assert classifier.match(pkt(), DIR_IN, "eth0") == (0,)
    assert classifier.match(pkt(), DIR_OUT, "eth0") == (1,)


def test_packet_of_unknown_direction_matches_rules_of_either_direction():
    classifier = rules.compile(
        monitors((RuleSpec(direction=DIR_IN),), (RuleSpec(direction=DIR_OUT),), (RuleSpec(),))
    )
    assert classifier.match(pkt(), DIR_ANY, "eth0") == (0, 1, 2)


def test_monitor_without_rules_matches_every_packet():
    classifier = rules.compile(monitors((), (RuleSpec(protocol=UDP),)))
    assert classifier.match(pkt(proto=ICMP, sport=NO_PORT, dport=NO_PORT), DIR_OUT, "") == (0,)


def test_no_monitors_match_nothing():
    assert rules.compile([]).match(pkt(), DIR_IN, "eth0") == ()


def test_interface_exact_name_and_glob():
    wlan = RuleSpec(interface="wlan*")
    assert match_one(wlan, pkt(), iface="wlan0")
    assert match_one(wlan, pkt(), iface="wlan1")
    assert not match_one(wlan, pkt(), iface="eth0")
    assert match_one(RuleSpec(interface="eth0"), pkt(), iface="eth0")
    assert not match_one(RuleSpec(interface="eth0"), pkt(), iface="eth01")
    assert match_one(RuleSpec(interface="eth[01]"), pkt(), iface="eth1")


def test_interface_glob_is_case_sensitive_like_linux_names():
    assert not match_one(RuleSpec(interface="WLAN*"), pkt(), iface="wlan0")


def test_unknown_interface_never_matches_an_interface_rule_even_a_star():
    assert not match_one(RuleSpec(interface="*"), pkt(), iface="")
    assert match_one(RuleSpec(direction=DIR_IN), pkt(), iface="")


def test_protocol():
    assert match_one(RuleSpec(protocol=UDP), pkt(proto=UDP))
    assert not match_one(RuleSpec(protocol=UDP), pkt(proto=TCP))


def test_family():
    assert match_one(RuleSpec(family=6), pkt(src="2001:db8::1", dst="2001:db8::2"))
    assert not match_one(RuleSpec(family=6), pkt())
    assert match_one(RuleSpec(family=4), pkt())


def test_src_and_dst_cidrs():
    rule = RuleSpec(src=nets("192.0.2.0/24"), dst=nets("198.51.100.0/25"))
    assert match_one(rule, pkt(src="192.0.2.200", dst="198.51.100.127"))
    assert not match_one(rule, pkt(src="192.0.3.1", dst="198.51.100.1"))
    assert not match_one(rule, pkt(src="192.0.2.1", dst="198.51.100.128"))


def test_host_matches_either_side():
    rule = RuleSpec(host=nets("203.0.113.5/32"))
    assert match_one(rule, pkt(src="203.0.113.5"))
    assert match_one(rule, pkt(dst="203.0.113.5"))
    assert not match_one(rule, pkt())


def test_ipv6_cidrs_and_mixed_family_lists():
    rule = RuleSpec(dst=nets("10.0.0.0/8", "2001:db8:1::/48"))
    assert match_one(rule, pkt(src="2001:db8::9", dst="2001:db8:1:ffff::1"))
    assert not match_one(rule, pkt(src="2001:db8::9", dst="2001:db8:2::1"))
    assert match_one(rule, pkt(dst="10.9.8.7"))
    # An IPv4 list never matches an IPv6 packet whose address has the same low bits.
    assert not match_one(RuleSpec(src=nets("0.0.0.0/0")), pkt(src="::1", dst="::2"))


def test_port_lists_and_ranges():
    rule = RuleSpec(dst_port=((22, 22), (8000, 8080)))
    assert match_one(rule, pkt(dport=22))
    assert match_one(rule, pkt(dport=8000))
    assert match_one(rule, pkt(dport=8080))
    assert not match_one(rule, pkt(dport=8081))
    assert not match_one(rule, pkt(dport=23))
    assert match_one(RuleSpec(src_port=((1024, 65535),)), pkt(sport=65535))
    assert not match_one(RuleSpec(src_port=((1024, 65535),)), pkt(sport=1023))


def test_port_matches_either_side():
    ssh = RuleSpec(protocol=TCP, port=((22, 22),))
    assert match_one(ssh, pkt(sport=22, dport=50000))
    assert match_one(ssh, pkt(sport=50000, dport=22))
    assert not match_one(ssh, pkt(sport=50000, dport=443))


def test_port_rule_never_matches_packets_without_ports():
    icmp = pkt(proto=ICMP, sport=NO_PORT, dport=NO_PORT)
    assert not match_one(RuleSpec(port=((0, 65535),)), icmp)
    assert not match_one(RuleSpec(src_port=((0, 65535),)), icmp)
    assert not match_one(RuleSpec(dst_port=((0, 65535),)), icmp)


def test_fields_of_one_rule_and_together():
    rule = RuleSpec(direction=DIR_OUT, protocol=TCP, dst_port=((443, 443),), interface="eth*")
    assert match_one(rule, pkt(), DIR_OUT, "eth0")
    assert not match_one(rule, pkt(), DIR_IN, "eth0")
    assert not match_one(rule, pkt(proto=UDP), DIR_OUT, "eth0")
    assert not match_one(rule, pkt(dport=80), DIR_OUT, "eth0")
    assert not match_one(rule, pkt(), DIR_OUT, "wlan0")


def test_rules_of_one_monitor_or_together_and_count_once():
    web = (RuleSpec(protocol=TCP, port=((80, 80),)), RuleSpec(protocol=TCP, port=((443, 443),)))
    classifier = rules.compile(monitors(web, (RuleSpec(protocol=UDP),)))
    assert classifier.match(pkt(dport=80), DIR_IN, "eth0") == (0,)
    assert classifier.match(pkt(dport=443), DIR_IN, "eth0") == (0,)
    assert classifier.match(pkt(sport=80, dport=443), DIR_IN, "eth0") == (0,)
    assert classifier.match(pkt(dport=22), DIR_IN, "eth0") == ()


def test_packet_counts_for_every_matching_monitor_in_index_order():
    classifier = rules.compile(
        monitors(
            (RuleSpec(direction=DIR_IN),),
            (RuleSpec(protocol=UDP),),
            (RuleSpec(protocol=TCP, port=((443, 443),)),),
            (),
        )
    )
    assert classifier.match(pkt(), DIR_IN, "eth0") == (0, 2, 3)
    assert classifier.match(pkt(proto=UDP), DIR_OUT, "eth0") == (1, 3)


def test_cached_answers_do_not_leak_between_packets_of_one_key():
    # Same direction, interface, protocol and family: only the address tells them apart.
    classifier = rules.compile(monitors((RuleSpec(src=nets("192.0.2.0/24")),), ()))
    for _ in range(3):
        assert classifier.match(pkt(src="192.0.2.9"), DIR_IN, "eth0") == (0, 1)
        assert classifier.match(pkt(src="192.0.3.9"), DIR_IN, "eth0") == (1,)


def test_many_interface_names_stay_correct_past_the_cache_bound():
    classifier = rules.compile(monitors((RuleSpec(interface="v1*"),)))
    for n in range(1000):
        expected = (0,) if str(n).startswith("1") else ()
        assert classifier.match(pkt(), DIR_IN, f"v{n}") == expected


# --- the compiled classifier agrees with a naive reference over random rule sets -----------

IFACES = ("eth0", "eth1", "wlan0", "wlp2s0", "")
GLOBS = ("eth0", "eth*", "wlan?", "w*", "*", "eth[1-9]")
PROTOS = (TCP, UDP, ICMP, ICMPV6)
V4_POOL = ("10.0.0.0", "10.0.1.0", "10.1.0.0", "192.168.1.0")
V6_POOL = ("2001:db8::", "2001:db8:0:1::", "2001:db8:1::", "fe80::")


def _in(address: int, family: int, networks) -> bool:
    addr = ipaddress.ip_address(address) if family == 4 else ipaddress.IPv6Address(address)
    return any(addr in net for net in networks if net.version == family)


def _port_in(port: int, ranges) -> bool:
    return any(low <= port <= high for low, high in ranges)


def reference(specs, packet: PacketInfo, direction: int, iface: str) -> tuple[int, ...]:
    """The rule semantics, spelled out with ipaddress and fnmatch, no indexing or caching."""

    def rule_matches(r: RuleSpec) -> bool:
        return (
            bool(r.direction & direction)
            and (r.interface is None or (iface != "" and fnmatch.fnmatchcase(iface, r.interface)))
            and r.protocol in (None, packet.proto)
            and r.family in (None, packet.family)
            and (r.src is None or _in(packet.src, packet.family, r.src))
            and (r.dst is None or _in(packet.dst, packet.family, r.dst))
            and (
                r.host is None
                or _in(packet.src, packet.family, r.host)
                or _in(packet.dst, packet.family, r.host)
            )
            and (r.src_port is None or _port_in(packet.sport, r.src_port))
            and (r.dst_port is None or _port_in(packet.dport, r.dst_port))
            and (r.port is None or _port_in(packet.sport, r.port) or _port_in(packet.dport, r.port))
        )

    return tuple(
        i for i, m in enumerate(specs) if not m.rules or any(rule_matches(r) for r in m.rules)
    )


# Small pools of addresses and ports, so that random rules and packets meet often.
OFFSETS = (0, 1, 7, 255, 256)
PORT_POOL = (0, 22, 53, 80, 443, 1024, 8080, 40000, 65535)


@st.composite
def address(draw, family: int) -> int:
    base = ipaddress.ip_address(draw(st.sampled_from(V4_POOL if family == 4 else V6_POOL)))
    return int(base) + draw(st.sampled_from(OFFSETS))


@st.composite
def network(draw):
    family = draw(st.sampled_from((4, 6)))
    top = 32 if family == 4 else 128
    prefix = draw(st.sampled_from((top, top - 1, top - 8, top - 9, top - 16, 0)))
    base = ipaddress.ip_address(draw(address(family)))
    return ipaddress.ip_network(f"{base}/{prefix}", strict=False)


# Ranges from one port to all of them: short lists are indexed port by port, long ones not.
port_ranges = st.lists(
    st.tuples(st.sampled_from(PORT_POOL), st.sampled_from(PORT_POOL)).map(sorted).map(tuple),
    min_size=1,
    max_size=3,
).map(tuple)


def optional(strategy):
    """Mostly unset, so that rules combining a few fields still match some packets."""
    return st.integers(min_value=0, max_value=3).flatmap(
        lambda k: strategy if k == 0 else st.none()
    )


rule_spec = st.builds(
    RuleSpec,
    direction=st.sampled_from((DIR_IN, DIR_OUT, DIR_ANY)),
    interface=optional(st.sampled_from(GLOBS)),
    protocol=optional(st.sampled_from(PROTOS)),
    family=optional(st.sampled_from((4, 6))),
    src=optional(st.lists(network(), min_size=1, max_size=3).map(tuple)),
    dst=optional(st.lists(network(), min_size=1, max_size=3).map(tuple)),
    host=optional(st.lists(network(), min_size=1, max_size=2).map(tuple)),
    src_port=optional(port_ranges),
    dst_port=optional(port_ranges),
    port=optional(port_ranges),
)
monitor_specs = st.lists(st.lists(rule_spec, max_size=3).map(tuple), min_size=1, max_size=8).map(
    lambda rule_sets: monitors(*rule_sets)
)


@st.composite
def packet(draw) -> PacketInfo:
    family = draw(st.sampled_from((4, 6)))
    proto = draw(st.sampled_from(PROTOS))
    ported = proto in (TCP, UDP)
    port = st.sampled_from(PORT_POOL).map(
        lambda p: min(65535, p + draw(st.sampled_from((0, 0, 1))))
    )
    sport, dport = (draw(port), draw(port)) if ported else (NO_PORT, NO_PORT)
    return PacketInfo(
        family, proto, draw(address(family)), sport, draw(address(family)), dport, 60, 0
    )


observation = st.tuples(
    packet(), st.sampled_from((DIR_IN, DIR_OUT, DIR_ANY)), st.sampled_from(IFACES)
)


@settings(max_examples=300, deadline=None)
@given(specs=monitor_specs, observations=st.lists(observation, min_size=1, max_size=40))
def test_classifier_agrees_with_reference_matcher(specs, observations):
    classifier = rules.compile(specs)
    # Twice over, so that the second pass is answered from the classifier's caches.
    for packet_, direction, iface in observations + observations:
        expected = reference(specs, packet_, direction, iface)
        assert classifier.match(packet_, direction, iface) == expected
