"""Raw IP bytes -> PacketInfo. Pure: struct.unpack_from only, never raises."""

from __future__ import annotations

import struct
from typing import NamedTuple

NO_PORT = -1


class PacketInfo(NamedTuple):
    """What the meter needs of one IP packet."""

    family: int  # 4 or 6
    proto: int  # IP protocol number (IPv6: after the extension headers)
    src: int  # source address as an int
    sport: int  # NO_PORT when the protocol has no ports, a non-first fragment or truncated
    dst: int
    dport: int
    length: int  # IP bytes on the wire: IPv4 total length, IPv6 payload length + 40
    tcp_flags: int  # TCP flags byte; 0 for other protocols or when not present


# Version/IHL, total length, flags+fragment offset, protocol, source, destination.
_IPV4 = struct.Struct("!BxHxxHxBxxII")
# Payload length, next header, source (2 x 64 bits), destination (2 x 64 bits).
_IPV6 = struct.Struct("!4xHBxQQQQ")
_PORTS = struct.Struct("!HH")
_U32 = struct.Struct("!I")

_IPV4_HEADER = 20
_IPV6_HEADER = 40
# TCP, UDP, SCTP and UDP-Lite all start with source port, destination port.
PORTED = frozenset((6, 17, 132, 136))
TCP = 6
_HOP_BY_HOP = 0
_FRAGMENT = 44
_AH = 51
# Extension headers the walk steps over; anything else is the upper-layer protocol.
EXTENSIONS = frozenset((_HOP_BY_HOP, 43, _FRAGMENT, _AH, 60))
# A bound on the walk so crafted chains cannot cost more than a few steps per packet.
_MAX_EXTENSIONS = 8
_JUMBO_OPTION = 0xC2
_PAD1 = 0
# tuple.__new__ builds the NamedTuple without its Python-level __new__ frame (about 2x faster).
_new = tuple.__new__


def parse(buf: bytes) -> PacketInfo | None:
    """Parse one IP packet (from its IP header on); None when no IP length can be read."""
    if not buf:
        return None
    version = buf[0] >> 4
    if version == 4:
        return _parse_ipv4(buf)
    if version == 6:
        return _parse_ipv6(buf)
    return None


def _parse_ipv4(buf: bytes) -> PacketInfo | None:
    """Parse an IPv4 header and its transport ports."""
    if len(buf) < _IPV4_HEADER:
        return None
    ver_ihl, length, frag, proto, src, dst = _IPV4.unpack_from(buf)
    header = (ver_ihl & 0x0F) * 4
    if header < _IPV4_HEADER or length < header:
        return None
    if frag & 0x1FFF:
        # Only the first fragment carries the transport header.
        return _new(PacketInfo, (4, proto, src, NO_PORT, dst, NO_PORT, length, 0))
    # Never read past the IP length: trailing bytes may be link-layer padding.
    end = min(len(buf), length)
    return _with_ports(4, proto, src, dst, length, buf, header, end)


def _parse_ipv6(buf: bytes) -> PacketInfo | None:
    """Parse an IPv6 header, walk its extension headers, read the transport ports."""
    if len(buf) < _IPV6_HEADER:
        return None
    payload, next_header, src_hi, src_lo, dst_hi, dst_lo = _IPV6.unpack_from(buf)
    length = payload + _IPV6_HEADER if payload else _jumbo_length(buf, next_header)
    end = min(len(buf), length)
    if next_header in EXTENSIONS:
        proto, offset = _walk_extensions(buf, next_header, end)
    else:
        proto, offset = next_header, _IPV6_HEADER
    return _with_ports(
        6, proto, src_hi << 64 | src_lo, dst_hi << 64 | dst_lo, length, buf, offset, end
    )


def _walk_extensions(buf: bytes, next_header: int, end: int) -> tuple[int, int]:
    """Step over IPv6 extension headers: (upper-layer protocol, its offset).

    The offset is `end` when the transport header cannot be reached (non-first fragment,
    truncated chain), so that no ports are read; an over-long chain ends on an extension
    header number, which has no ports either.
    """
    offset = _IPV6_HEADER
    for _ in range(_MAX_EXTENSIONS):
        if next_header not in EXTENSIONS:
            return next_header, offset
        if offset + 4 > end:
            return next_header, end
        if next_header == _FRAGMENT:
            if (buf[offset + 2] << 8 | buf[offset + 3]) & 0xFFF8:
                return buf[offset], end
            size = 8
        elif next_header == _AH:
            size = (buf[offset + 1] + 2) * 4
        else:
            size = (buf[offset + 1] + 1) * 8
        next_header = buf[offset]
        offset += size
    # Chain longer than the bound: an extension header number is not ported, so no ports.
    return next_header, offset


def _jumbo_length(buf: bytes, next_header: int) -> int:
    """IPv6 length of a jumbogram: its Jumbo Payload option, else the bytes at hand."""
    if next_header != _HOP_BY_HOP or len(buf) < _IPV6_HEADER + 8:
        return len(buf)
    end = min(len(buf), _IPV6_HEADER + (buf[_IPV6_HEADER + 1] + 1) * 8)
    offset = _IPV6_HEADER + 2
    while offset + 2 <= end:
        option = buf[offset]
        if option == _PAD1:
            offset += 1
            continue
        if option == _JUMBO_OPTION and buf[offset + 1] == 4 and offset + 6 <= end:
            # The jumbo length counts everything after the fixed IPv6 header.
            return int(_U32.unpack_from(buf, offset + 2)[0]) + _IPV6_HEADER
        offset += 2 + buf[offset + 1]
    return len(buf)


def _with_ports(
    family: int, proto: int, src: int, dst: int, length: int, buf: bytes, offset: int, end: int
) -> PacketInfo:
    """Build the PacketInfo, reading ports (and TCP flags) when the transport header is there."""
    if proto in PORTED and offset + 4 <= end:
        sport, dport = _PORTS.unpack_from(buf, offset)
        flags = buf[offset + 13] if proto == TCP and offset + 14 <= end else 0
        return _new(PacketInfo, (family, proto, src, sport, dst, dport, length, flags))
    return _new(PacketInfo, (family, proto, src, NO_PORT, dst, NO_PORT, length, 0))
