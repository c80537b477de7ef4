"""Byte builders for IP packets as NFQUEUE hands them over (from the IP header on).

Checksums are left at zero: the meter never verifies them.
"""

from __future__ import annotations

import ipaddress
import struct

TCP, UDP, UDPLITE, SCTP, ICMP, GRE, ESP, AH = 6, 17, 136, 132, 1, 47, 50, 51
ICMPV6, NO_NEXT = 58, 59
HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTIONS = 0, 43, 44, 60
SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08


def addr(text: str) -> int:
    """An address as the int the parser reports."""
    return int(ipaddress.ip_address(text))


def ipv4(
    proto: int,
    payload: bytes = b"",
    *,
    src: str = "192.0.2.1",
    dst: str = "198.51.100.2",
    options: bytes = b"",
    ihl: int | None = None,
    total_length: int | None = None,
    frag_offset: int = 0,
    more_fragments: bool = False,
) -> bytes:
    """An IPv4 packet; ihl and total_length default to the honest values."""
    if ihl is None:
        ihl = 5 + len(options) // 4
    if total_length is None:
        total_length = 20 + len(options) + len(payload)
    flags_frag = (0x2000 if more_fragments else 0) | frag_offset
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        total_length,
        0x1234,
        flags_frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + options + payload


def ipv6(
    next_header: int,
    payload: bytes = b"",
    *,
    src: str = "2001:db8::1",
    dst: str = "2001:db8:ffff::2",
    payload_length: int | None = None,
) -> bytes:
    """An IPv6 packet; payload (extension headers included) follows the fixed header."""
    if payload_length is None:
        payload_length = len(payload)
    header = struct.pack(
        "!IHBB16s16s",
        0x6000_0000,
        payload_length,
        next_header,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


def options_header(next_header: int, options: bytes = b"") -> bytes:
    """A hop-by-hop or destination options header, padded with PadN to 8-byte units."""
    body = options
    pad = (-(2 + len(body))) % 8
    if pad == 1:
        body += b"\x00"  # Pad1
    elif pad:
        body += bytes((1, pad - 2)) + bytes(pad - 2)
    return bytes((next_header, (2 + len(body)) // 8 - 1)) + body


def jumbo_option(jumbo_length: int) -> bytes:
    """The Jumbo Payload option (RFC 2675), to go in a hop-by-hop header."""
    return struct.pack("!BBI", 0xC2, 4, jumbo_length)


def routing_header(next_header: int) -> bytes:
    """A type-0 routing header with one address (24 bytes)."""
    return bytes((next_header, 2, 0, 1)) + bytes(4) + bytes(16)


def fragment_header(next_header: int, offset_units: int = 0, more: bool = False) -> bytes:
    """An IPv6 fragment header; offset in 8-byte units."""
    return struct.pack("!BBHI", next_header, 0, offset_units << 3 | more, 0xCAFE)


def ah_header(next_header: int, icv: bytes = bytes(12)) -> bytes:
    """An authentication header; its length field counts 4-byte units minus 2."""
    body = struct.pack("!II", 0x100, 1) + icv
    return bytes((next_header, (4 + len(body)) // 4 - 2, 0, 0)) + body


def tcp(sport: int, dport: int, flags: int = SYN, payload: bytes = b"") -> bytes:
    """A 20-byte TCP header and payload."""
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP (or UDP-Lite) header and payload."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int) -> bytes:
    """An SCTP common header."""
    return struct.pack("!HHII", sport, dport, 0xDEADBEEF, 0)


def icmp(kind: int = 8, code: int = 0, payload: bytes = b"") -> bytes:
    """An ICMP or ICMPv6 header and payload."""
    return struct.pack("!BBHHH", kind, code, 0, 1, 1) + payload


def gre(payload: bytes = b"") -> bytes:
    """A GRE header carrying an IPv4 payload."""
    return struct.pack("!HH", 0, 0x0800) + payload
