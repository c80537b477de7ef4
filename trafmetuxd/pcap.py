"""Capture files (pcap, pcapng) -> (timestamp, raw IP bytes) for replay through the meter.

A reader of its own (struct over a memory map, no object per packet beyond the IP bytes), so
that replay costs little more than the metering. Frames that hold no IP packet come out with
the reason they were skipped instead, for the replay's summary.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

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
ETHERTYPE_ARP = 0x0806
ETHERTYPE_PPPOE_DISCOVERY = 0x8863
ETHERTYPE_PPPOE_SESSION = 0x8864
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
_U16 = struct.Struct("!H")
BATCH = 4096  # frames per list handed to the meter

# What a frame yields: (unix seconds, IP bytes, "") or (unix seconds, None, why it was skipped)
Frame = tuple[float, bytes | None, str]

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BYTE_ORDER = 0x1A2B3C4D
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
_IF_TSRESOL = 9


class CaptureFileError(Exception):
    """The capture file cannot be read; the message names the file."""


def strip_link(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside a link-layer frame, or None for non-IP frames."""
    return unwrap(linktype, frame)[0]


def unwrap(linktype: int, frame: bytes) -> tuple[bytes | None, str]:
    """(the IP packet, "") or (None, why this frame holds none)."""
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_OPENBSD, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return frame, ""
    if linktype == LINKTYPE_ETHERNET:
        return _ethernet(frame)
    if linktype == LINKTYPE_LINUX_SLL:
        return _ip_after(frame, 14, 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        return _ip_after(frame, 0, 20)
    return None, f"link-layer type {linktype}"


def _ethernet(frame: bytes) -> tuple[bytes | None, str]:
    offset = 12
    while len(frame) >= offset + 2:
        ethertype = _U16.unpack_from(frame, offset)[0]
        if ethertype not in VLAN_TAGS:
            return _ip_after(frame, offset, offset + 2)
        offset += 4  # 802.1Q / 802.1ad tag: skip TPID+TCI
    return None, "truncated"


def _ip_after(frame: bytes, type_at: int, ip_at: int) -> tuple[bytes | None, str]:
    if len(frame) < ip_at:
        return None, "truncated"
    ethertype = _U16.unpack_from(frame, type_at)[0]
    if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        return frame[ip_at:], ""
    if ethertype == ETHERTYPE_PPPOE_SESSION:
        return _pppoe(frame, ip_at)
    return None, _ethertype_name(ethertype)


def _pppoe(frame: bytes, at: int) -> tuple[bytes | None, str]:
    """A PPPoE session frame (RFC 2516): 6 bytes of PPPoE, the PPP protocol, then IP."""
    if len(frame) < at + 8:
        return None, "truncated"
    protocol = _U16.unpack_from(frame, at + 6)[0]
    if protocol in (PPP_IPV4, PPP_IPV6):
        return frame[at + 8 :], ""
    return None, f"PPP protocol 0x{protocol:04x}"


def _ethertype_name(ethertype: int) -> str:
    known = {ETHERTYPE_ARP: "ARP", ETHERTYPE_PPPOE_DISCOVERY: "PPPoE discovery"}
    return known.get(ethertype, f"ethertype 0x{ethertype:04x}")


def read(path: Path) -> Iterator[tuple[float, bytes | None]]:
    """Yield (unix seconds, IP bytes or None for a non-IP frame) for every frame in the file."""
    for batch in read_batches(path):
        for ts, ip, _why in batch:
            yield ts, ip


def read_batches(path: Path, size: int = BATCH) -> Iterator[list[Frame]]:
    """Every frame of a pcap or pcapng file, `size` at a time, in file order."""
    try:
        with path.open("rb") as fileobj:
            if path.stat().st_size == 0:
                raise CaptureFileError(f"{path}: not a readable pcap or pcapng file (empty)")
            with mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ) as data:
                yield from _batches(path, data, size)
    except OSError as exc:
        raise CaptureFileError(f"{path}: cannot open the capture file ({exc.strerror})") from exc
    except struct.error as exc:
        raise CaptureFileError(f"{path}: damaged capture file ({exc})") from exc


def _batches(path: Path, data: mmap.mmap, size: int) -> Iterator[list[Frame]]:
    head = bytes(data[:4])
    if head in _PCAP_MAGIC:
        frames = _pcap(path, data, *_PCAP_MAGIC[head])
    elif len(data) >= 12 and struct.unpack_from("<I", data, 0)[0] == _PCAPNG_SHB:
        frames = _pcapng(path, data)
    else:
        raise CaptureFileError(f"{path}: not a readable pcap or pcapng file")
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check(path: Path, linktype: int) -> None:
    if linktype not in SUPPORTED:
        raise CaptureFileError(
            f"{path}: link-layer type {linktype} is not supported "
            "(Ethernet, Linux cooked v1/v2 and raw IP are)"
        )


def _pcap(path: Path, data: mmap.mmap, order: str, divisor: float) -> Iterator[Frame]:
    """Classic pcap: a 24-byte file header, then 16-byte record headers and the frames."""
    if len(data) < 24:
        raise CaptureFileError(f"{path}: not a readable pcap or pcapng file (short header)")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    _check(path, linktype)
    record = struct.Struct(order + "IIII")
    at, end = 24, len(data)
    while at + 16 <= end:
        sec, frac, caplen, _length = record.unpack_from(data, at)
        at += 16
        if at + caplen > end:
            raise CaptureFileError(f"{path}: damaged capture file (truncated record)")
        ip, why = unwrap(linktype, data[at : at + caplen])
        yield sec + frac / divisor, ip, why
        at += caplen


class _Section:
    """One pcapng section: its byte order and its interfaces' link types and resolutions."""

    def __init__(self, order: str) -> None:
        self.order = order
        self.interfaces: list[tuple[int, float]] = []  # (link type, ticks per second)


def _pcapng(path: Path, data: mmap.mmap) -> Iterator[Frame]:
    """pcapng: blocks of (type, length, body, length); packets in EPB, SPB and old PB blocks."""
    section = _Section("<")
    at, end = 0, len(data)
    last_ts = 0.0
    while at + 12 <= end:
        kind = struct.unpack_from(section.order + "I", data, at)[0]
        if kind == _PCAPNG_SHB:
            section = _section(path, data, at)
        length = struct.unpack_from(section.order + "I", data, at + 4)[0]
        if length < 12 or at + length > end:
            raise CaptureFileError(f"{path}: damaged capture file (block of {length} bytes)")
        body = at + 8
        if kind == _IDB:
            section.interfaces.append(_interface(path, data, body, at + length - 4, section))
        elif kind in (_EPB, _PB, _SPB):
            frame = _packet(path, data, kind, body, section, last_ts)
            last_ts = frame[0]
            yield frame
        at += length


def _section(path: Path, data: mmap.mmap, at: int) -> _Section:
    for order in ("<", ">"):
        if struct.unpack_from(order + "I", data, at + 8)[0] == _PCAPNG_BYTE_ORDER:
            return _Section(order)
    raise CaptureFileError(f"{path}: damaged capture file (section byte order)")


def _interface(
    path: Path, data: mmap.mmap, at: int, end: int, section: _Section
) -> tuple[int, float]:
    """An interface description: its link type and its timestamp ticks per second."""
    order = section.order
    linktype = struct.unpack_from(order + "H", data, at)[0]
    resolution = 1e6
    opt = at + 8
    while opt + 4 <= end:
        code, size = struct.unpack_from(order + "HH", data, opt)
        if code == 0:
            break
        if code == _IF_TSRESOL and size >= 1:
            value = data[opt + 4]
            resolution = float(2 ** (value & 0x7F)) if value & 0x80 else float(10**value)
        opt += 4 + (size + 3) // 4 * 4
    return linktype, resolution


def _packet(
    path: Path, data: mmap.mmap, kind: int, at: int, section: _Section, last_ts: float
) -> Frame:
    order = section.order
    if kind == _SPB:  # no interface id and no timestamp: interface 0, the previous time
        (length,) = struct.unpack_from(order + "I", data, at)
        iface, ts_ticks, caplen, start = 0, -1, length, at + 4
    elif kind == _EPB:
        iface, high, low, caplen = struct.unpack_from(order + "IIII", data, at)
        ts_ticks, start = high << 32 | low, at + 20
    else:  # the obsolete Packet Block
        iface, _drops, high, low, caplen = struct.unpack_from(order + "HHIII", data, at)
        ts_ticks, start = high << 32 | low, at + 20
    if iface >= len(section.interfaces):
        raise CaptureFileError(f"{path}: damaged capture file (packet of unknown interface)")
    linktype, resolution = section.interfaces[iface]
    _check(path, linktype)
    ts = last_ts if ts_ticks < 0 else ts_ticks / resolution
    ip, why = unwrap(linktype, data[start : start + caplen])
    return ts, ip, why
