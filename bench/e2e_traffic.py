"""Frames for trafgen and the daemon's TOML for the end-to-end benchmark (no kernel here)."""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Sequence

from bench.mix import ICMP, ICMPV6, IMIX, PROTOCOLS, TCP, UDP
from trafmetuxd.spec import DIR_IN, DIR_OUT, MonitorSpec, RuleSpec

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")


def ipv4_checksum(header: bytes) -> int:
    """The IPv4 header checksum (the receiver drops packets whose checksum is wrong)."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _transport(proto: int, sport: int, dport: int, payload: int) -> bytes:
    if proto == TCP:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, 0x18, 65535, 0, 0)
    if proto == UDP:
        return struct.pack("!HHHH", sport, dport, payload, 0)
    return struct.pack("!BBHHH", 128 if proto == ICMPV6 else 8, 0, 0, 1, 1)


def ip_packet(
    family: int, proto: int, src: str, dst: str, sport: int, dport: int, size: int
) -> bytes:
    """The headers of an IP packet `size` bytes long (the rest is zero padding)."""
    if family == 4:
        args = (0x45, 0, size, 0, 0x4000, 64, proto, 0)
        addrs = (ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
        header = _IPV4.pack(*args, *addrs)
        header = _IPV4.pack(*args[:-1], ipv4_checksum(header), *addrs)
    else:
        addrs = (ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
        header = _IPV6.pack(0x60000000, size - 40, proto, 64, *addrs)
    return header + _transport(proto, sport, dport, size - len(header))


def trafgen_config(
    dst_mac: str, src_mac: str, dst4: str, dst6: str, count: int = 120, seed: int = 11
) -> str:
    """`count` frames cycling through IMIX sizes, the protocol mix, IPv4/IPv6 and many flows."""
    rng = random.Random(seed)
    sizes = [size for size, weight in IMIX for _ in range(weight)]
    protos, weights = zip(*PROTOCOLS, strict=True)
    frames = []
    for i in range(count):
        family = 6 if i % 10 >= 7 else 4
        proto = rng.choices(protos, weights)[0]
        if proto == ICMP and family == 6:
            proto = ICMPV6
        size = sizes[i % len(sizes)]
        src = f"10.231.0.{10 + i % 200}" if family == 4 else f"fd00:231::{0x100 + i:x}"
        dst = dst4 if family == 4 else dst6
        dport = rng.choice((443, 80, 53, 9000 + i % 50)) if proto in (TCP, UDP) else 0
        ip = ip_packet(family, proto, src, dst, 32768 + i * 97 % 28000, dport, size)
        eth = _ETH.pack(_mac(dst_mac), _mac(src_mac), 0x0800 if family == 4 else 0x86DD)
        frame = eth + ip
        body = ", ".join(f"0x{b:02x}" for b in frame)
        pad = size + len(eth) - len(frame)
        frames.append(f"{{ {body}, fill(0x00, {pad}) }}" if pad else f"{{ {body} }}")
    return "\n".join(frames) + "\n"


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def _range(low: int, high: int) -> str:
    return str(low) if low == high else f'"{low}-{high}"'


def _rule_toml(rule: RuleSpec) -> str:
    fields = []
    if rule.direction != DIR_IN | DIR_OUT:
        fields.append(f'direction = "{"in" if rule.direction == DIR_IN else "out"}"')
    if rule.interface is not None:
        fields.append(f'interface = "{rule.interface}"')
    if rule.protocol is not None:
        fields.append(f"protocol = {rule.protocol}")
    if rule.family is not None:
        fields.append(f'family = "ipv{rule.family}"')
    for name in ("src", "dst", "host"):
        nets = getattr(rule, name)
        if nets is not None:
            fields.append(f"{name} = [{', '.join(f'{chr(34)}{n}{chr(34)}' for n in nets)}]")
    for name in ("src_port", "dst_port", "port"):
        ports = getattr(rule, name)
        if ports is not None:
            fields.append(f"{name} = [{', '.join(_range(lo, hi) for lo, hi in ports)}]")
    return "{ " + ", ".join(fields) + " }"


def monitors_toml(monitors: Sequence[MonitorSpec]) -> str:
    """[[monitor]] tables for these monitors."""
    out = []
    for spec in monitors:
        rules = ", ".join(_rule_toml(r) for r in spec.rules)
        out.append(f'[[monitor]]\nname = "{spec.name}"\nrules = [{rules}]\n')
    return "\n".join(out)


__all__ = ["DIR_OUT", "ip_packet", "ipv4_checksum", "monitors_toml", "trafgen_config"]
