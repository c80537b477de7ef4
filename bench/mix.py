"""Synthetic traffic for the benchmarks: IMIX sizes, 80/18/2 TCP/UDP/ICMP, IPv4 and IPv6,
Zipf-distributed flows, built with struct (no scapy), and the monitor configurations."""

from __future__ import annotations

import ipaddress
import itertools
import random
import struct
from typing import NamedTuple

from trafmetuxd.spec import DIR_IN, DIR_OUT, MonitorSpec, RuleSpec

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
IMIX = ((64, 7), (576, 4), (1500, 1))  # IP packet size, weight
PROTOCOLS = ((TCP, 80), (UDP, 18), (ICMP, 2))  # ICMP means ICMPv6 in IPv6 flows
IPV6_SHARE = 0.3
COPY_RANGE = 128  # what the daemon asks the kernel for: the meter never sees more
INTERFACES = (("eth0", 70), ("wlan0", 20), ("eth1", 10))
IN_SHARE = 0.6  # downloads outweigh uploads
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC

_TCP_SERVER_PORTS = ((443, 50), (80, 20), (22, 5), (0, 25))  # 0: a random unprivileged port
_UDP_SERVER_PORTS = ((53, 40), (443, 30), (123, 10), (0, 20))
_IPV4 = struct.Struct("!BBHHHBBHII")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP_HEADER = struct.Struct("!HHIIBBHHH")
_UDP_HEADER = struct.Struct("!HHHH")
_ICMP_HEADER = struct.Struct("!BBHHH")


class Flow(NamedTuple):
    """One conversation: the client is on this side of the meter."""

    family: int
    proto: int
    client: int
    client_port: int
    server: int
    server_port: int
    iface: str


Item = tuple[float, bytes, int, str]  # what Meter.feed takes: ts, IP bytes, direction, iface


def _pick(rng: random.Random, table: tuple[tuple[object, int], ...]) -> object:
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights)[0]


def _server_port(rng: random.Random, proto: int) -> int:
    table = _TCP_SERVER_PORTS if proto == TCP else _UDP_SERVER_PORTS
    port = int(_pick(rng, table))  # type: ignore[call-overload]
    return port or rng.randint(1024, 65535)


def make_flow(rng: random.Random) -> Flow:
    """A random flow of the mix."""
    family = 6 if rng.random() < IPV6_SHARE else 4
    proto = int(_pick(rng, PROTOCOLS))  # type: ignore[call-overload]
    if family == 4:
        client = int(ipaddress.IPv4Address("10.0.0.0")) + rng.randrange(1, 1 << 16)
        server = int(ipaddress.IPv4Address(rng.choice(("203.0.113.0", "198.51.100.0"))))
        server += rng.randrange(1, 255)
    else:
        client = int(ipaddress.IPv6Address("fd00:1::")) + rng.randrange(1, 1 << 32)
        server = int(ipaddress.IPv6Address("2001:db8::")) + (rng.randrange(16) << 80)
        server += rng.randrange(1, 1 << 16)
    if proto == ICMP:
        proto = ICMPV6 if family == 6 else ICMP
        client_port = server_port = -1
    else:
        client_port = rng.randint(32768, 60999)
        server_port = _server_port(rng, proto)
    iface = str(_pick(rng, INTERFACES))
    return Flow(family, proto, client, client_port, server, server_port, iface)


def _transport(proto: int, sport: int, dport: int, payload: int, flags: int) -> bytes:
    if proto == TCP:
        return _TCP_HEADER.pack(sport, dport, 1, 1, 0x50, flags, 65535, 0, 0)
    if proto == UDP:
        return _UDP_HEADER.pack(sport, dport, payload, 0)
    return _ICMP_HEADER.pack(128 if proto == ICMPV6 else 8, 0, 0, 1, 1)


def packet_bytes(flow: Flow, outbound: bool, size: int, flags: int = 0x18) -> bytes:
    """The first COPY_RANGE bytes of one IP packet of `size` bytes on the wire."""
    src, dst = (flow.client, flow.server) if outbound else (flow.server, flow.client)
    sport, dport = (
        (flow.client_port, flow.server_port) if outbound else (flow.server_port, flow.client_port)
    )
    if flow.family == 4:
        header = _IPV4.pack(0x45, 0, size, 0, 0x4000, 64, flow.proto, 0, src, dst)
    else:
        header = _IPV6.pack(
            0x60000000, size - 40, flow.proto, 64, src.to_bytes(16, "big"), dst.to_bytes(16, "big")
        )
    transport = _transport(flow.proto, sport, dport, size - len(header), flags)
    raw = header + transport
    return raw.ljust(min(size, COPY_RANGE), b"\0")[:COPY_RANGE]


def zipf_cumulative(n: int, s: float = 1.0) -> list[float]:
    """Cumulative Zipf weights 1/k**s for ranks 1..n."""
    return list(itertools.accumulate(1.0 / k**s for k in range(1, n + 1)))


def packets(count: int, flows: int, seed: int = 5, span: float = 60.0) -> list[Item]:
    """`count` packets over `flows` concurrent Zipf-ranked flows, timestamps over `span` s."""
    rng = random.Random(seed)
    table = [make_flow(rng) for _ in range(flows)]
    chosen = rng.choices(table, cum_weights=zipf_cumulative(flows), k=count)
    sizes, weights = zip(*IMIX, strict=True)
    lengths = rng.choices(sizes, weights, k=count)
    out: list[Item] = []
    for i, (flow, size) in enumerate(zip(chosen, lengths, strict=True)):
        size = max(size, 48 if flow.family == 4 else 68)  # room for the headers
        outbound = rng.random() >= IN_SHARE
        buf = packet_bytes(flow, outbound, size)
        out.append((T0 + span * i / count, buf, DIR_OUT if outbound else DIR_IN, flow.iface))
    return out


def _ports(*ports: int) -> tuple[tuple[int, int], ...]:
    return tuple((p, p) for p in ports)


def _nets(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def _server_monitor(k: int) -> MonitorSpec:
    v4 = _nets(f"203.0.113.{k * 16}/28")
    v6 = _nets(f"2001:db8:0:{k:x}::/64")
    return MonitorSpec(
        f"srv{k}",
        (
            RuleSpec(dst=v4, dst_port=_ports(443, 8443)),
            RuleSpec(src=v4, src_port=_ports(443, 8443)),
            RuleSpec(host=v6, interface="eth*"),
        ),
    )


def twenty_monitors(collector_size: int = 1000) -> tuple[MonitorSpec, ...]:
    """20 monitors of 2-3 rules each over interfaces, directions, protocols, ports and CIDRs."""
    named = (
        ("input", (RuleSpec(DIR_IN, "eth0"), RuleSpec(DIR_IN, "wlan*"))),
        ("output", (RuleSpec(DIR_OUT, "eth0"), RuleSpec(DIR_OUT, "wlan*"))),
        (
            "ssh",
            (RuleSpec(protocol=TCP, port=_ports(22)), RuleSpec(protocol=TCP, port=_ports(2222))),
        ),
        (
            "web",
            (
                RuleSpec(protocol=TCP, port=_ports(80, 443)),
                RuleSpec(protocol=UDP, port=_ports(443)),
            ),
        ),
        ("dns", (RuleSpec(protocol=UDP, port=_ports(53)), RuleSpec(protocol=TCP, port=_ports(53)))),
        (
            "ntp",
            (
                RuleSpec(protocol=UDP, port=_ports(123)),
                RuleSpec(interface="eth1", protocol=UDP, src_port=_ports(123)),
            ),
        ),
        ("lan", (RuleSpec(host=_nets("10.0.0.0/8")), RuleSpec(host=_nets("fd00::/8")))),
        ("wifi", (RuleSpec(interface="wlan*"), RuleSpec(interface="wlan*", family=6))),
        ("ipv6", (RuleSpec(family=6, interface="eth0"), RuleSpec(family=6, interface="eth1"))),
        ("icmp", (RuleSpec(protocol=ICMP), RuleSpec(protocol=ICMPV6))),
    )
    monitors = [MonitorSpec(name, rules) for name, rules in named]
    monitors += [_server_monitor(k) for k in range(10)]
    return tuple(_sized(m, collector_size) for m in monitors)


def one_monitor(collector_size: int = 1000) -> tuple[MonitorSpec, ...]:
    """The single-monitor configuration: web traffic (protocol and port rules)."""
    return tuple(_sized(m, collector_size) for m in twenty_monitors() if m.name == "web")


def one_hosts_monitor(collector_size: int = 1000) -> tuple[MonitorSpec, ...]:
    """The single monitor again, with per-host totals for the LAN side (10/8, fd00::/8 by /64)."""
    (web,) = one_monitor(collector_size)
    hosts = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    return (
        MonitorSpec(
            web.name, web.rules, collector_size=web.collector_size,
            flush_collector_size=web.flush_collector_size, hosts=hosts, host_prefix_v6=64,
        ),
    )  # fmt: skip


def _sized(spec: MonitorSpec, size: int) -> MonitorSpec:
    return MonitorSpec(
        spec.name, spec.rules, collector_size=size, flush_collector_size=max(size, 2000)
    )
