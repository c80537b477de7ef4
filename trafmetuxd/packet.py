"""Raw IP bytes -> PacketInfo. Pure: struct.unpack_from only, never raises."""

from __future__ import annotations

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


def parse(buf: bytes) -> PacketInfo | None:
    """Parse one IP packet (from its IP header on); None when no IP length can be read."""
    raise NotImplementedError
