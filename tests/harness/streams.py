"""Hypothesis streams of packets: a few flows in every shape, with directions and times."""

from __future__ import annotations

from hypothesis import strategies as st

from harness.packets import (
    ACK,
    FRAGMENT,
    HOP_BY_HOP,
    ICMP,
    ICMPV6,
    SCTP,
    SYN,
    TCP,
    UDP,
    fragment_header,
    icmp,
    ipv4,
    ipv6,
    options_header,
    sctp,
    tcp,
    udp,
)
from trafmetuxd.spec import DIR_IN, DIR_OUT

V4_HOSTS = ("10.0.0.1", "10.0.0.2", "192.0.2.7")
V6_HOSTS = ("fd00::1", "fd00::2", "2001:db8::9")
PORTS = (22, 53, 443, 1023, 1024, 3128, 8080, 40000, 61000)
FLAGS = (SYN, SYN | ACK, ACK, 0)


def transport(proto: int, sport: int, dport: int, flags: int, size: int) -> bytes:
    """A transport header and payload for proto."""
    if proto == TCP:
        return tcp(sport, dport, flags, bytes(size))
    if proto == UDP:
        return udp(sport, dport, bytes(size))
    if proto == SCTP:
        return sctp(sport, dport) + bytes(size)
    return icmp(8, 0, bytes(size))


Flow = tuple[bool, str, str, int, int, int]  # IPv6?, source, destination, protocol, ports


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    """One conversation's fixed header fields."""
    v6 = draw(st.booleans())
    hosts = V6_HOSTS if v6 else V4_HOSTS
    src, dst = draw(st.sampled_from(hosts)), draw(st.sampled_from(hosts))
    proto = draw(st.sampled_from((TCP, UDP, SCTP, ICMPV6 if v6 else ICMP)))
    return v6, src, dst, proto, draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))


@st.composite
def raw_packets(draw: st.DrawFn, flow: Flow) -> bytes:
    """A packet of flow: plain, with options, extension headers, a fragment, cut short,
    with an odd IP length, or not IP at all."""
    v6, src, dst, proto, sport, dport = flow
    flags = draw(st.sampled_from(FLAGS))
    body = transport(proto, sport, dport, flags, draw(st.sampled_from((0, 6, 40, 200))))
    shape = draw(st.sampled_from(("plain",) * 4 + ("odd", "cut", "length", "junk")))
    if v6:
        if shape == "odd":
            kind = draw(st.sampled_from((HOP_BY_HOP, FRAGMENT)))
            ext = options_header(proto) if kind == HOP_BY_HOP else fragment_header(proto)
            buf = ipv6(kind, ext + body, src=src, dst=dst)
        else:
            buf = ipv6(proto, body, src=src, dst=dst)
    elif shape == "odd":
        options = draw(st.sampled_from((b"\x01\x01\x01\x01", b"")))
        offset = 0 if options else draw(st.sampled_from((1, 185)))
        buf = ipv4(proto, body, src=src, dst=dst, options=options, frag_offset=offset)
    else:
        buf = ipv4(proto, body, src=src, dst=dst)
    if shape == "cut":
        return buf[: draw(st.integers(0, len(buf)))]
    if shape == "length":  # an IP length that disagrees with the bytes at hand
        field = slice(4, 6) if v6 else slice(2, 4)
        value = draw(st.integers(0, 300)).to_bytes(2, "big")
        return buf[: field.start] + value + buf[field.stop :]
    if shape == "junk":
        return bytes([draw(st.sampled_from((0x00, 0x4F, 0x70, 0xFF)))]) + buf[1:]
    return buf


@st.composite
def events(draw: st.DrawFn) -> list[tuple[bytes, int, str, int, int]]:
    """Packets of a few flows (so flows repeat), with directions, interfaces and times."""
    pool = draw(st.lists(flows(), min_size=1, max_size=5))
    one = st.tuples(
        st.sampled_from(pool).flatmap(raw_packets),
        st.sampled_from((DIR_IN, DIR_OUT)),
        st.sampled_from(("eth0", "wlan0", "")),
        st.integers(0, 150),  # seconds: three minutes
        st.integers(0, 12),  # 0: swap before this packet
    )
    return draw(st.lists(one, max_size=80))
