"""packet.parse: raw IP bytes as NFQUEUE delivers them -> PacketInfo, or None."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers import inet, inet6

from harness.packets import (
    ACK,
    AH,
    DEST_OPTIONS,
    ESP,
    FIN,
    FRAGMENT,
    GRE,
    HOP_BY_HOP,
    ICMP,
    ICMPV6,
    NO_NEXT,
    PSH,
    ROUTING,
    SCTP,
    SYN,
    TCP,
    UDP,
    UDPLITE,
    addr,
    ah_header,
    fragment_header,
    gre,
    icmp,
    ipv4,
    ipv6,
    jumbo_option,
    options_header,
    routing_header,
    sctp,
    tcp,
    udp,
)
from trafmetuxd.packet import NO_PORT, PacketInfo, parse

COPY_RANGE = 128  # the daemon's usual NFQUEUE copy range


def ports_of(info: PacketInfo | None) -> tuple[int, int]:
    """(sport, dport) of a parsed packet that must not be None."""
    assert info is not None
    return info.sport, info.dport


# --- IPv4 -------------------------------------------------------------------------------------


def test_ipv4_tcp_syn_ack_gives_addresses_ports_length_and_flags() -> None:
    payload = b"hello"
    buf = ipv4(TCP, tcp(443, 51000, SYN | ACK, payload), src="10.1.2.3", dst="172.16.0.9")

    info = parse(buf)

    assert info == PacketInfo(
        family=4,
        proto=TCP,
        src=addr("10.1.2.3"),
        sport=443,
        dst=addr("172.16.0.9"),
        dport=51000,
        length=20 + 20 + len(payload),
        tcp_flags=SYN | ACK,
    )


@pytest.mark.parametrize(
    ("proto", "transport"),
    [
        (UDP, udp(53, 33000, b"query")),
        (UDPLITE, udp(5004, 5005, b"media")),
        (SCTP, sctp(3868, 3869)),
    ],
    ids=["udp", "udplite", "sctp"],
)
def test_ipv4_ported_protocols_report_ports_without_tcp_flags(proto: int, transport: bytes) -> None:
    buf = ipv4(proto, transport)

    info = parse(buf)

    assert info is not None
    assert (info.family, info.proto, info.length, info.tcp_flags) == (4, proto, len(buf), 0)
    assert ports_of(info) == (int.from_bytes(transport[0:2]), int.from_bytes(transport[2:4]))


@pytest.mark.parametrize(
    ("proto", "transport"),
    [(ICMP, icmp(8, 0, b"ping" * 10)), (GRE, gre(ipv4(UDP, udp(1, 2))))],
    ids=["icmp", "gre"],
)
def test_ipv4_portless_protocols_are_counted_without_ports(proto: int, transport: bytes) -> None:
    buf = ipv4(proto, transport)

    info = parse(buf)

    assert info is not None
    assert (info.proto, info.length, info.tcp_flags) == (proto, len(buf), 0)
    assert ports_of(info) == (NO_PORT, NO_PORT)


@pytest.mark.parametrize("option_words", [1, 4, 10])
def test_ipv4_options_move_the_transport_header(option_words: int) -> None:
    options = b"\x01" * (option_words * 4)  # NOPs
    buf = ipv4(UDP, udp(123, 124), options=options)

    info = parse(buf)

    assert ports_of(info) == (123, 124)
    assert info is not None and info.length == 20 + len(options) + 8


def test_ipv4_first_fragment_carries_ports() -> None:
    buf = ipv4(TCP, tcp(22, 40000, PSH | ACK, b"x" * 64), more_fragments=True)

    info = parse(buf)

    assert ports_of(info) == (22, 40000)
    assert info is not None and info.tcp_flags == PSH | ACK


def test_ipv4_later_fragment_has_no_ports_even_if_its_data_looks_like_tcp() -> None:
    buf = ipv4(TCP, tcp(22, 40000, SYN), frag_offset=185)

    info = parse(buf)

    assert info is not None
    assert (info.proto, info.length, info.tcp_flags) == (TCP, len(buf), 0)
    assert ports_of(info) == (NO_PORT, NO_PORT)


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ipv4_header_length_below_five_words_is_rejected(ihl: int) -> None:
    assert parse(ipv4(TCP, tcp(1, 2), ihl=ihl)) is None


@pytest.mark.parametrize(
    ("options", "total_length"), [(b"", 19), (b"", 0), (b"\x01" * 4, 20)], ids=["19", "0", "opts"]
)
def test_ipv4_total_length_shorter_than_its_header_is_rejected(
    options: bytes, total_length: int
) -> None:
    assert parse(ipv4(UDP, udp(1, 2), options=options, total_length=total_length)) is None


def test_ipv4_truncated_to_copy_range_still_counts_the_full_length() -> None:
    full = ipv4(TCP, tcp(8080, 50123, ACK, bytes(1448)))

    info = parse(full[:COPY_RANGE])

    assert info is not None
    assert info.length == len(full) == 1488
    assert (ports_of(info), info.tcp_flags) == ((8080, 50123), ACK)


def test_ipv4_transport_header_cut_before_the_ports_is_counted_without_ports() -> None:
    full = ipv4(TCP, tcp(8080, 50123, ACK, bytes(100)))

    info = parse(full[:23])

    assert info is not None and info.length == len(full)
    assert ports_of(info) == (NO_PORT, NO_PORT)


def test_ipv4_tcp_cut_after_the_ports_keeps_ports_but_not_flags() -> None:
    full = ipv4(TCP, tcp(8080, 50123, FIN, bytes(100)))

    info = parse(full[:30])

    assert ports_of(info) == (8080, 50123)
    assert info is not None and info.tcp_flags == 0


def test_ipv4_options_cut_off_by_the_copy_range_give_no_ports() -> None:
    full = ipv4(UDP, udp(1, 2), options=b"\x01" * 40)

    info = parse(full[:40])

    assert info is not None and info.length == len(full)
    assert ports_of(info) == (NO_PORT, NO_PORT)


def test_ipv4_link_padding_after_the_ip_length_is_not_read_as_ports() -> None:
    # A minimum-size Ethernet frame pads a 20-byte IP packet; the pad bytes are not TCP.
    buf = ipv4(TCP, b"", total_length=20) + b"\x00\x50\x00\x50\x00\x00"

    info = parse(buf)

    assert info is not None and info.length == 20
    assert ports_of(info) == (NO_PORT, NO_PORT)


def test_ipv4_shorter_than_the_fixed_header_is_rejected() -> None:
    assert parse(ipv4(TCP, tcp(1, 2))[:19]) is None


# --- IPv6 -------------------------------------------------------------------------------------


def test_ipv6_tcp_gives_addresses_ports_length_and_flags() -> None:
    buf = ipv6(TCP, tcp(443, 50000, FIN | ACK, b"bye"), src="2001:db8::a", dst="fe80::1")

    info = parse(buf)

    assert info == PacketInfo(
        family=6,
        proto=TCP,
        src=addr("2001:db8::a"),
        sport=443,
        dst=addr("fe80::1"),
        dport=50000,
        length=40 + 20 + 3,
        tcp_flags=FIN | ACK,
    )


def test_ipv6_high_and_low_address_halves_are_combined() -> None:
    src, dst = "ffff:0:0:1:8000::ffff", "::1"
    info = parse(ipv6(UDP, udp(1, 2), src=src, dst=dst))

    assert info is not None and (info.src, info.dst) == (addr(src), addr(dst))


def test_ipv6_udp_and_icmpv6() -> None:
    udp_info = parse(ipv6(UDP, udp(547, 546, b"dhcp")))
    icmp_info = parse(ipv6(ICMPV6, icmp(128, 0, b"echo")))

    assert udp_info is not None and udp_info.length == 40 + 12
    assert ports_of(udp_info) == (547, 546)
    assert icmp_info is not None and (icmp_info.proto, icmp_info.length) == (ICMPV6, 40 + 12)
    assert ports_of(icmp_info) == (NO_PORT, NO_PORT)


def test_ipv6_hop_by_hop_routing_and_destination_options_are_walked() -> None:
    chain = (
        options_header(ROUTING, b"\x05\x02\x00\x00")  # hop-by-hop with a router alert
        + routing_header(DEST_OPTIONS)
        + options_header(UDP, bytes(14))
        + udp(4500, 4501, b"payload")
    )

    info = parse(ipv6(HOP_BY_HOP, chain))

    assert info is not None and (info.proto, info.length) == (UDP, 40 + len(chain))
    assert ports_of(info) == (4500, 4501)


def test_ipv6_authentication_header_is_walked_by_its_four_byte_length() -> None:
    info = parse(ipv6(AH, ah_header(TCP) + tcp(179, 33333, ACK)))

    assert info is not None and (info.proto, info.tcp_flags) == (TCP, ACK)
    assert ports_of(info) == (179, 33333)


def test_ipv6_first_fragment_continues_to_the_transport_header() -> None:
    info = parse(ipv6(FRAGMENT, fragment_header(UDP, 0, more=True) + udp(53, 53000, bytes(100))))

    assert info is not None and info.proto == UDP
    assert ports_of(info) == (53, 53000)


def test_ipv6_later_fragment_reports_its_protocol_without_ports() -> None:
    buf = ipv6(FRAGMENT, fragment_header(UDP, 181, more=False) + udp(53, 53000, bytes(100)))

    info = parse(buf)

    assert info is not None and (info.proto, info.length) == (UDP, len(buf))
    assert ports_of(info) == (NO_PORT, NO_PORT)


def test_ipv6_chain_of_eight_extension_headers_reaches_tcp() -> None:
    chain = b"".join(options_header(DEST_OPTIONS) for _ in range(7)) + options_header(TCP)

    info = parse(ipv6(DEST_OPTIONS, chain + tcp(1, 2)))

    assert info is not None and info.proto == TCP
    assert ports_of(info) == (1, 2)


@pytest.mark.parametrize("headers", [9, 200])
def test_ipv6_over_long_extension_chain_is_counted_without_ports(headers: int) -> None:
    chain = b"".join(options_header(DEST_OPTIONS) for _ in range(headers - 1))
    buf = ipv6(DEST_OPTIONS, chain + options_header(TCP) + tcp(1, 2))

    info = parse(buf)

    assert info is not None and info.length == len(buf)
    assert info.proto == DEST_OPTIONS
    assert ports_of(info) == (NO_PORT, NO_PORT)


def test_ipv6_chain_cut_by_the_copy_range_is_counted_without_ports() -> None:
    chain = options_header(ROUTING, bytes(100)) + routing_header(TCP) + tcp(1, 2)
    buf = ipv6(HOP_BY_HOP, chain)

    info = parse(buf[:COPY_RANGE])

    assert info is not None and info.length == len(buf)
    assert info.proto == ROUTING  # the header the walk could not read
    assert ports_of(info) == (NO_PORT, NO_PORT)


@pytest.mark.parametrize("proto", [ESP, NO_NEXT])
def test_ipv6_esp_and_no_next_header_end_the_walk(proto: int) -> None:
    info = parse(ipv6(proto, bytes(32)))

    assert info is not None and (info.proto, info.length) == (proto, 72)
    assert ports_of(info) == (NO_PORT, NO_PORT)


def test_ipv6_truncated_to_copy_range_still_counts_the_full_length() -> None:
    full = ipv6(TCP, tcp(443, 50000, ACK, bytes(1400)))

    info = parse(full[:COPY_RANGE])

    assert info is not None and info.length == len(full) == 1460
    assert ports_of(info) == (443, 50000)


def test_ipv6_jumbogram_length_comes_from_the_jumbo_payload_option() -> None:
    jumbo = 70_000
    buf = ipv6(HOP_BY_HOP, options_header(TCP, jumbo_option(jumbo)) + tcp(1, 2), payload_length=0)

    info = parse(buf)

    assert info is not None and info.length == 40 + jumbo
    assert ports_of(info) == (1, 2)


def test_ipv6_jumbo_option_is_found_after_pad1_and_padn() -> None:
    jumbo = 100_000
    options = b"\x00" + b"\x01\x01\x00" + jumbo_option(jumbo)  # Pad1, PadN(1), Jumbo
    buf = ipv6(HOP_BY_HOP, options_header(UDP, options) + udp(1, 2), payload_length=0)

    info = parse(buf)

    assert info is not None and info.length == 40 + jumbo


def test_ipv6_zero_payload_length_without_jumbo_option_counts_the_bytes_at_hand() -> None:
    buf = ipv6(UDP, udp(7, 9, bytes(20)), payload_length=0)

    info = parse(buf)

    assert info is not None and info.length == len(buf) == 68
    assert ports_of(info) == (7, 9)


def test_ipv6_shorter_than_the_fixed_header_is_rejected() -> None:
    assert parse(ipv6(TCP, tcp(1, 2))[:39]) is None


# --- not IP -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "buf",
    [b"", b"\x00" * 60, b"\x50" + bytes(59), b"\xff" * 60, b"\x08\x00\x45\x00"],
    ids=["empty", "zeros", "version5", "ones", "ethertype"],
)
def test_bytes_that_are_not_ipv4_or_ipv6_are_rejected(buf: bytes) -> None:
    assert parse(buf) is None


# --- properties -------------------------------------------------------------------------------


def assert_sane(buf: bytes, info: PacketInfo | None) -> None:
    """Whatever came in, a result is either None or fields a counter can use."""
    if info is None:
        return
    assert info.family == buf[0] >> 4 and info.family in (4, 6)
    assert 0 <= info.proto <= 255 and 0 <= info.tcp_flags <= 255
    assert info.length >= 0
    assert -1 <= info.sport <= 65535 and -1 <= info.dport <= 65535
    assert (info.sport == NO_PORT) == (info.dport == NO_PORT)
    bits = 32 if info.family == 4 else 128
    assert 0 <= info.src < 2**bits and 0 <= info.dst < 2**bits


@given(st.binary(max_size=300))
def test_any_bytes_parse_without_raising(buf: bytes) -> None:
    assert_sane(buf, parse(buf))


@given(
    st.sampled_from([0x45, 0x46, 0x4F, 0x44, 0x60]),
    st.sampled_from([HOP_BY_HOP, ROUTING, FRAGMENT, AH, DEST_OPTIONS, TCP, UDP, 0xFF]),
    st.binary(max_size=300),
)
def test_plausible_headers_with_random_tails_parse_without_raising(
    first: int, next_header: int, tail: bytes
) -> None:
    # Random bytes rarely look like IP; these start like IP so the deeper paths get fuzzed.
    buf = bytearray(bytes([first]) + tail)
    if len(buf) > 9:
        buf[9 if first < 0x60 else 6] = next_header
    assert_sane(bytes(buf), parse(bytes(buf)))


ipv4_addresses = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6_addresses = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
ports = st.integers(0, 65535)


@settings(deadline=None, max_examples=60)
@given(
    family=st.sampled_from([4, 6]),
    v4=st.tuples(ipv4_addresses, ipv4_addresses),
    v6=st.tuples(ipv6_addresses, ipv6_addresses),
    use_tcp=st.booleans(),
    sport=ports,
    dport=ports,
    flags=st.integers(0, 255),
    size=st.integers(0, 1400),
    copy_range=st.sampled_from([COPY_RANGE, 65535]),
)
def test_scapy_built_packets_parse_to_what_was_built(
    family: int,
    v4: tuple[str, str],
    v6: tuple[str, str],
    use_tcp: bool,
    sport: int,
    dport: int,
    flags: int,
    size: int,
    copy_range: int,
) -> None:
    src, dst = v4 if family == 4 else v6
    network = inet.IP(src=src, dst=dst) if family == 4 else inet6.IPv6(src=src, dst=dst)
    transport = (
        inet.TCP(sport=sport, dport=dport, flags=flags)
        if use_tcp
        else inet.UDP(sport=sport, dport=dport)
    )
    wire = bytes(network / transport / bytes(size))

    info = parse(wire[:copy_range])

    assert info == PacketInfo(
        family=family,
        proto=TCP if use_tcp else UDP,
        src=addr(src),
        sport=sport,
        dst=addr(dst),
        dport=dport,
        length=len(wire),
        tcp_flags=flags if use_tcp else 0,
    )
