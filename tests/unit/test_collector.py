"""Scenarios for the realtime and flush collectors: totals, flow positions, overflow, swap."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.packets import addr as ip
from trafmetuxd.collector import (
    COMPRESSED_PORT,
    OTHER,
    FlushCollector,
    RealtimeCollector,
    Snapshot,
    minute_of,
)
from trafmetuxd.packet import NO_PORT, PacketInfo
from trafmetuxd.spec import DIR_ANY, DIR_IN, DIR_OUT

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
SYN, ACK = 0x02, 0x10
MINUTE = minute_of(1_000_000_000.0)


def pkt(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    length: int,
    proto: int = TCP,
    flags: int = ACK,
) -> PacketInfo:
    """A packet between two textual addresses (family taken from the address)."""
    family = ipaddress.ip_address(src).version
    return PacketInfo(family, proto, ip(src), sport, ip(dst), dport, length, flags)


def flow_sums(snap: Snapshot) -> tuple[int, int]:
    """(bytes, packets) over all flow positions."""
    entries = snap.flows.values()
    return sum(e[0] + e[1] for e in entries), sum(e[2] for e in entries)


def total_sums(snap: Snapshot) -> tuple[int, int]:
    """(bytes, packets) over all minutes and both directions."""
    rows = snap.totals.values()
    return sum(r[0] + r[2] for r in rows), sum(r[1] + r[3] for r in rows)


CLIENT, SERVER = "192.168.190.62", "192.168.190.11"


def imap_sessions() -> list[tuple[PacketInfo, int]]:
    """Four IMAP connections from one client, both directions, with distinct sizes."""
    packets = []
    for i, port in enumerate(range(2532, 2536)):
        packets.append((pkt(CLIENT, port, SERVER, 143, 100 + i), DIR_OUT))
        packets.append((pkt(SERVER, 143, CLIENT, port, 1000 + 10 * i), DIR_IN))
        packets.append((pkt(CLIENT, port, SERVER, 143, 60), DIR_OUT))
    return packets


def test_connections_to_one_service_collapse_into_one_compressed_position() -> None:
    col = RealtimeCollector(100)
    for p, direction in imap_sessions():
        col.add(MINUTE, p, direction)
    snap = col.swap()
    sent = sum(p.length for p, _ in imap_sessions() if p.src == ip(CLIENT))
    received = sum(p.length for p, _ in imap_sessions() if p.src == ip(SERVER))
    key = (4, TCP, ip(CLIENT), COMPRESSED_PORT, ip(SERVER), 143)
    assert snap.flows == {key: [sent, received, len(imap_sessions())]}
    assert snap.overflow == 0


def test_without_compression_each_connection_keeps_its_own_position() -> None:
    col = RealtimeCollector(100, compress_ports=False)
    for p, direction in imap_sessions():
        col.add(MINUTE, p, direction)
    snap = col.swap()
    assert len(snap.flows) == 4
    for i, port in enumerate(range(2532, 2536)):
        key = (4, TCP, ip(CLIENT), port, ip(SERVER), 143)
        assert snap.flows[key] == [100 + i + 60, 1000 + 10 * i, 3]


def test_totals_split_by_direction_and_minute() -> None:
    col = RealtimeCollector(10)
    before, after = 1_000_000_019.999, 1_000_000_020.0  # 1e9 + 20 s is a minute boundary
    assert minute_of(before) + 1 == minute_of(after)
    col.add(minute_of(before), pkt(CLIENT, 2000, SERVER, 80, 500), DIR_OUT)
    col.add(minute_of(after), pkt(SERVER, 80, CLIENT, 2000, 1400), DIR_IN)
    col.add(minute_of(after), pkt(SERVER, 80, CLIENT, 2000, 40), DIR_ANY)  # unknown counts in
    assert col.totals == {minute_of(before): [0, 0, 500, 1], minute_of(after): [1440, 2, 0, 0]}


def test_proxy_connection_with_syn_seen_is_keyed_by_the_syn_sender() -> None:
    col = RealtimeCollector(10)
    browser, proxy = "10.0.0.5", "10.0.0.1"
    col.add(MINUTE, pkt(browser, 40000, proxy, 3128, 60, flags=SYN), DIR_IN)
    col.add(MINUTE, pkt(proxy, 3128, browser, 40000, 60, flags=SYN | ACK), DIR_OUT)
    col.add(MINUTE, pkt(proxy, 3128, browser, 40000, 1500), DIR_OUT)
    key = (4, TCP, ip(browser), COMPRESSED_PORT, ip(proxy), 3128)
    assert col.swap().flows == {key: [60, 1560, 3]}


def test_proxy_connection_seen_mid_stream_uses_the_ephemeral_port_side() -> None:
    col = RealtimeCollector(10)
    browser, proxy = "10.0.0.5", "10.0.0.1"
    col.add(MINUTE, pkt(proxy, 3128, browser, 40000, 1500), DIR_OUT)  # no SYN seen
    col.add(MINUTE, pkt(browser, 40000, proxy, 3128, 52), DIR_IN)
    key = (4, TCP, ip(browser), COMPRESSED_PORT, ip(proxy), 3128)
    assert col.swap().flows == {key: [52, 1500, 2]}


def test_syn_decides_even_when_the_server_port_looks_ephemeral() -> None:
    # A passive FTP data connection: the server listens on 50000, the client uses 2000.
    with_syn = RealtimeCollector(10)
    with_syn.add(MINUTE, pkt("10.0.0.5", 2000, "10.0.0.1", 50000, 60, flags=SYN), DIR_IN)
    with_syn.add(MINUTE, pkt("10.0.0.1", 50000, "10.0.0.5", 2000, 900), DIR_OUT)
    key = (4, TCP, ip("10.0.0.5"), COMPRESSED_PORT, ip("10.0.0.1"), 50000)
    assert with_syn.swap().flows == {key: [60, 900, 2]}

    mid_stream = RealtimeCollector(10)
    mid_stream.add(MINUTE, pkt("10.0.0.5", 2000, "10.0.0.1", 50000, 60), DIR_IN)
    key = (4, TCP, ip("10.0.0.1"), COMPRESSED_PORT, ip("10.0.0.5"), 2000)
    assert mid_stream.swap().flows == {key: [0, 60, 1]}


def test_without_ephemeral_ports_the_higher_port_is_the_client() -> None:
    col = RealtimeCollector(10, compress_ports=False)
    col.add(MINUTE, pkt("10.0.0.5", 5000, "10.0.0.1", 8080, 70, proto=UDP, flags=0), DIR_IN)
    col.add(MINUTE, pkt("10.0.0.1", 8080, "10.0.0.5", 5000, 30, proto=UDP, flags=0), DIR_OUT)
    key = (4, UDP, ip("10.0.0.1"), 8080, ip("10.0.0.5"), 5000)
    assert col.swap().flows == {key: [30, 70, 2]}


def test_icmp_echo_and_reply_share_the_position_of_the_first_sender() -> None:
    col = RealtimeCollector(10)
    col.add(MINUTE, pkt(CLIENT, NO_PORT, SERVER, NO_PORT, 84, ICMP, 0), DIR_OUT)
    col.add(MINUTE, pkt(SERVER, NO_PORT, CLIENT, NO_PORT, 84, ICMP, 0), DIR_IN)
    col.add(MINUTE, pkt(SERVER, NO_PORT, CLIENT, NO_PORT, 84, ICMP, 0), DIR_IN)
    key = (4, ICMP, ip(CLIENT), NO_PORT, ip(SERVER), NO_PORT)
    assert col.swap().flows == {key: [84, 168, 3]}


def test_both_privileged_ports_keep_their_ports() -> None:
    col = RealtimeCollector(10)
    col.add(MINUTE, pkt("10.0.0.1", 123, "10.0.0.2", 123, 76, UDP, 0), DIR_OUT)
    col.add(MINUTE, pkt("10.0.0.2", 123, "10.0.0.1", 123, 90, UDP, 0), DIR_IN)
    key = (4, UDP, ip("10.0.0.1"), 123, ip("10.0.0.2"), 123)
    assert col.swap().flows == {key: [76, 90, 2]}


def test_ipv6_flows_are_keyed_by_family_6_and_compressed() -> None:
    col = RealtimeCollector(10)
    a, b = "2001:db8::62", "2001:db8::11"
    col.add(MINUTE, pkt(a, 51000, b, 443, 120), DIR_OUT)
    col.add(MINUTE, pkt(b, 443, a, 51000, 1240), DIR_IN)
    col.add(MINUTE, pkt(a, NO_PORT, b, NO_PORT, 104, ICMPV6, 0), DIR_OUT)
    snap = col.swap()
    assert snap.flows == {
        (6, TCP, ip(a), COMPRESSED_PORT, ip(b), 443): [120, 1240, 2],
        (6, ICMPV6, ip(a), NO_PORT, ip(b), NO_PORT): [104, 0, 1],
    }


def test_full_positions_send_new_flows_to_other_and_count_overflow() -> None:
    col = RealtimeCollector(2)
    packets = [pkt("10.0.0.5", 40000, f"10.0.1.{n}", 80, 100 * n) for n in range(1, 6)]
    for p in packets + packets:  # every flow twice: the second round finds the same places
        col.add(MINUTE, p, DIR_OUT)
    assert col.positions_used == 2
    snap = col.swap()
    assert len(snap.flows) == 3
    assert snap.overflow == 6  # flows 3..5, two packets each
    assert snap.flows[OTHER] == [2 * (300 + 400 + 500), 0, 6]
    assert flow_sums(snap) == total_sums(snap) == (2 * 1500, 10)


def test_swap_hands_over_and_later_packets_do_not_touch_the_snapshot() -> None:
    col = RealtimeCollector(1)
    col.add(MINUTE, pkt(CLIENT, 2532, SERVER, 143, 100), DIR_OUT)
    col.add(MINUTE, pkt(CLIENT, 2532, "10.9.9.9", 25, 7), DIR_OUT)  # overflow
    snap = col.swap()
    frozen = (
        {m: list(r) for m, r in snap.totals.items()},
        {k: list(e) for k, e in snap.flows.items()},
        snap.overflow,
    )
    assert col.positions_used == 0 and col.totals == {}
    col.add(MINUTE, pkt(CLIENT, 2532, SERVER, 143, 100), DIR_OUT)
    col.add(MINUTE, pkt(CLIENT, 2532, "10.9.9.9", 25, 7), DIR_OUT)
    assert (snap.totals, snap.flows, snap.overflow) == frozen
    assert col.swap().flows[OTHER] == [7, 0, 1]


addresses = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1"])
ports = st.one_of(st.just(NO_PORT), st.sampled_from([22, 53, 143, 3128, 8080, 40000, 61000]))
packets = st.builds(
    lambda a, b, sp, dp, proto, n, fl: (
        pkt(a, sp, b, dp, n, proto, fl)
        if ipaddress.ip_address(a).version == ipaddress.ip_address(b).version
        else pkt(a, sp, a, dp, n, proto, fl)
    ),
    addresses,
    addresses,
    ports,
    ports,
    st.sampled_from([TCP, UDP, ICMP]),
    st.integers(20, 65535),
    st.sampled_from([0, SYN, SYN | ACK, ACK]),
)
events = st.lists(
    st.tuples(st.integers(0, 3), packets, st.sampled_from([DIR_IN, DIR_OUT, DIR_ANY])),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events, st.integers(0, 6), st.booleans())
def test_flows_always_sum_to_the_totals(
    evs: list[tuple[int, PacketInfo, int]], size: int, compress: bool
) -> None:
    col = RealtimeCollector(size, compress)
    for minute, p, direction in evs:
        col.add(minute, p, direction)
    assert col.positions_used <= size
    snap = col.swap()
    expected = (sum(p.length for _, p, _ in evs), len(evs))
    assert flow_sums(snap) == total_sums(snap) == expected
    assert snap.overflow == snap.flows.get(OTHER, [0, 0, 0])[2]
    assert len(snap.flows) - (OTHER in snap.flows) <= size


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(events, st.integers(0, 4)), max_size=6), st.integers(0, 5))
def test_flush_collector_keeps_sums_over_many_snapshots(
    batches: list[tuple[list[tuple[int, PacketInfo, int]], int]], size: int
) -> None:
    flush = FlushCollector(size)
    for evs, realtime_size in batches:
        col = RealtimeCollector(realtime_size)
        for minute, p, direction in evs:
            col.add(minute, p, direction)
        flush.merge(col.swap())
    snap = flush.pending()
    every = [p for evs, _ in batches for _, p, _ in evs]
    assert flow_sums(snap) == total_sums(snap) == (sum(p.length for p in every), len(every))
    assert snap.overflow == snap.flows.get(OTHER, [0, 0, 0])[2]
    assert len(snap.flows) - (OTHER in snap.flows) <= size
    assert flush.empty == (not every)


def test_flush_collector_merges_minutes_and_positions_and_folds_beyond_size() -> None:
    a = (4, TCP, ip(CLIENT), COMPRESSED_PORT, ip(SERVER), 143)
    b = (4, TCP, ip(CLIENT), COMPRESSED_PORT, ip(SERVER), 25)
    c = (4, UDP, ip(CLIENT), COMPRESSED_PORT, ip(SERVER), 53)
    flush = FlushCollector(2)
    assert flush.empty
    flush.merge(Snapshot({10: [1, 1, 2, 1]}, {a: [2, 1, 2], OTHER: [0, 0, 0]}, 0))
    flush.merge(Snapshot({10: [5, 1, 0, 0], 11: [0, 0, 3, 1]}, {a: [3, 0, 1], b: [4, 1, 2]}, 0))
    flush.merge(Snapshot({11: [9, 2, 0, 0]}, {c: [4, 5, 2], OTHER: [0, 0, 0]}, 0))
    flush.merge(Snapshot({12: [7, 1, 0, 0]}, {a: [0, 7, 1], OTHER: [0, 0, 0]}, 0))
    snap = flush.pending()
    assert snap.totals == {10: [6, 2, 2, 1], 11: [9, 2, 3, 1], 12: [7, 1, 0, 0]}
    assert snap.flows == {a: [5, 8, 4], b: [4, 1, 2], OTHER: [4, 5, 2]}
    assert snap.overflow == 2


def test_flush_collector_adds_realtime_overflow_and_clears_after_commit() -> None:
    flush = FlushCollector(5)
    col = RealtimeCollector(1)
    col.add(MINUTE, pkt(CLIENT, 2532, SERVER, 143, 100), DIR_OUT)
    col.add(MINUTE, pkt(CLIENT, 2532, SERVER, 25, 30), DIR_OUT)
    col.add(MINUTE, pkt(CLIENT, 2532, SERVER, 25, 30), DIR_OUT)
    flush.merge(col.swap())
    flush.merge(col.swap())  # an empty snapshot changes nothing
    assert flush.pending().overflow == 2
    assert flush.pending().flows[OTHER] == [60, 0, 2]
    flush.clear()
    assert flush.empty and flush.pending() == Snapshot({}, {}, 0)
