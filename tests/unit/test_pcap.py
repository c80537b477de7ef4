"""Capture files: link layers stripped down to the IP packet, timestamps kept exact enough."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.all import ARP, IP, UDP, Dot1Q, Ether, IPv6, wrpcap
from scapy.layers.l2 import CookedLinux

from trafmetuxd import pcap


def test_ethernet_vlan_and_cooked_frames_yield_the_ip_packet() -> None:
    ip = bytes(IP(dst="192.0.2.1") / UDP())
    ip6 = bytes(IPv6(dst="2001:db8::1") / UDP())
    assert pcap.strip_link(pcap.LINKTYPE_ETHERNET, bytes(Ether() / IP(ip))) == ip
    assert pcap.strip_link(pcap.LINKTYPE_ETHERNET, bytes(Ether() / Dot1Q() / IPv6(ip6))) == ip6
    qinq = Ether(type=0x88A8) / Dot1Q(type=0x8100) / Dot1Q() / IP(ip)
    assert pcap.strip_link(pcap.LINKTYPE_ETHERNET, bytes(qinq)) == ip
    assert pcap.strip_link(pcap.LINKTYPE_LINUX_SLL, bytes(CookedLinux() / IP(ip))) == ip
    assert pcap.strip_link(pcap.LINKTYPE_RAW, ip) == ip


def test_sll2_header_is_twenty_bytes_with_the_protocol_first() -> None:
    ip = bytes(IP(dst="192.0.2.1") / UDP())
    frame = b"\x08\x00" + bytes(18) + ip
    assert pcap.strip_link(pcap.LINKTYPE_LINUX_SLL2, frame) == ip


def test_non_ip_and_short_frames_give_none() -> None:
    assert pcap.strip_link(pcap.LINKTYPE_ETHERNET, bytes(Ether() / ARP())) is None
    assert pcap.strip_link(pcap.LINKTYPE_ETHERNET, b"\x00" * 5) is None
    assert pcap.strip_link(pcap.LINKTYPE_LINUX_SLL, b"\x00" * 15) is None


def test_microsecond_timestamps_survive_the_reader(tmp_path: Path) -> None:
    frame = Ether() / IP() / UDP()
    frame.time = 1_790_000_059.999999
    wrpcap(str(tmp_path / "t.pcap"), [frame])
    ((ts, ip),) = list(pcap.read(tmp_path / "t.pcap"))
    assert int(ts) // 60 == 1_790_000_059 // 60
    assert abs(ts - 1_790_000_059.999999) < 1e-6
    assert ip == bytes(frame[IP])


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(pcap.CaptureFileError, match=r"notes\.txt"):
        list(pcap.read(bad))
    with pytest.raises(pcap.CaptureFileError, match=r"missing\.pcap"):
        list(pcap.read(tmp_path / "missing.pcap"))


def test_an_unsupported_link_type_is_refused_by_name(tmp_path: Path) -> None:
    wrpcap(str(tmp_path / "t.pcap"), [IP() / UDP()], linktype=105)  # 802.11
    with pytest.raises(pcap.CaptureFileError, match="link-layer type 105"):
        list(pcap.read(tmp_path / "t.pcap"))
