"""Capture files (pcap, pcapng) -> (timestamp, raw IP bytes) for replay through the meter."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Link-layer types (tcpdump.org/linktypes.html) and how far the IP header is from the start.
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_RAW_OPENBSD = 12
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED = (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_RAW_OPENBSD,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
)
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
_U16 = struct.Struct("!H")


class CaptureFileError(Exception):
    """The capture file cannot be read; the message names the file."""


def strip_link(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside a link-layer frame, or None for non-IP frames."""
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_OPENBSD, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return frame
    if linktype == LINKTYPE_ETHERNET:
        return _ethernet(frame)
    if linktype == LINKTYPE_LINUX_SLL:
        return _ip_after(frame, 14, 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        return _ip_after(frame, 0, 20)
    return None


def _ethernet(frame: bytes) -> bytes | None:
    offset = 12
    while len(frame) >= offset + 2:
        ethertype = _U16.unpack_from(frame, offset)[0]
        if ethertype not in VLAN_TAGS:
            return _ip_after(frame, offset, offset + 2)
        offset += 4  # 802.1Q / 802.1ad tag: skip TPID+TCI
    return None


def _ip_after(frame: bytes, type_at: int, ip_at: int) -> bytes | None:
    if len(frame) < ip_at:
        return None
    ethertype = _U16.unpack_from(frame, type_at)[0]
    if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        return frame[ip_at:]
    return None


def read(path: Path) -> Iterator[tuple[float, bytes | None]]:
    """Yield (unix seconds, IP bytes or None for a non-IP frame) for every frame in the file."""
    from scapy.error import Scapy_Exception  # scapy only when reading a capture
    from scapy.utils import RawPcapReader

    open_reader: Any = RawPcapReader  # accepts an open file too, whatever its stubs say

    try:
        fileobj = path.open("rb")
    except OSError as exc:
        raise CaptureFileError(f"{path}: cannot open the capture file ({exc.strerror})") from exc
    with fileobj:
        try:
            reader = open_reader(fileobj)
        except Scapy_Exception as exc:
            raise CaptureFileError(f"{path}: not a readable pcap or pcapng file ({exc})") from exc
        try:
            yield from _frames(path, reader)
        except Scapy_Exception as exc:
            raise CaptureFileError(f"{path}: damaged capture file ({exc})") from exc


def _frames(path: Path, reader: Any) -> Iterator[tuple[float, bytes | None]]:
    linktype = getattr(reader, "linktype", None)
    divisor = 1e9 if getattr(reader, "nano", False) else 1e6
    for frame, meta in reader:
        if hasattr(meta, "tsresol"):  # pcapng: per-interface link type and resolution
            ts = ((meta.tshigh << 32) + meta.tslow) / meta.tsresol
            kind = meta.linktype
        else:
            ts = meta.sec + meta.usec / divisor
            kind = linktype
        if kind not in SUPPORTED:
            raise CaptureFileError(
                f"{path}: link-layer type {kind} is not supported "
                "(Ethernet, Linux cooked v1/v2 and raw IP are)"
            )
        yield ts, strip_link(kind, bytes(frame))
