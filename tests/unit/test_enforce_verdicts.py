"""Enforcing verdicts from plain bytes: which queued packets are dropped or marked, and how."""

from __future__ import annotations

import struct
from ipaddress import ip_network

from harness.packets import ipv4, tcp, udp
from trafmetuxd import nfqconfig
from trafmetuxd.enforce import Enforcer, Over, control_exempt, judge_batch, new_mark
from trafmetuxd.nfbatch import Interfaces, headers
from trafmetuxd.spec import DIR_OUT, MonitorSpec, QuotaSpec, RuleSpec

SLOT = 640
ETH0 = 2
NAMES = {ETH0: "eth0"}
MONITORS = (
    MonitorSpec("out", (RuleSpec(direction=DIR_OUT),)),
    MonitorSpec("udp", (RuleSpec(protocol=17),)),
)
DNS = RuleSpec(protocol=17, port=((53, 53),))
BLOCK = QuotaSpec("cap", ("out",), limit=1000, action="block", exempt=(DNS,))
MARK = QuotaSpec("shape", ("out",), limit=1000, action="mark", mark=0x10, mask=0xFF)


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute (host-order header), padded to 4 bytes."""
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def packet_message(packet_id: int, hook: int, payload: bytes, mark: int | None = None) -> bytes:
    """An NFQNL_MSG_PACKET: header, the packet's mark when it has one, interface, payload."""
    attrs = attr(1, struct.pack("!IHB", packet_id, 0x0800, hook))
    if mark is not None:
        attrs += attr(3, struct.pack("!I", mark))
    attrs += attr(5 if hook <= 1 else 6, struct.pack("!I", ETH0))
    attrs += attr(10, payload)
    body = bytes([2, 0, 0, 0]) + attrs
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, 0, 0) + body


def batch(*messages: bytes) -> bytes:
    """Messages received into consecutive slots."""
    return b"".join(m + b"\xee" * (SLOT - len(m)) for m in messages)


def out_udp(dport: int, length: int = 100) -> bytes:
    """An outgoing IPv4 UDP packet of `length` bytes."""
    return ipv4(17, udp(40000, dport, bytes(length - 28)))


def verdicts(data: bytes) -> list[tuple[int, int, int | None]]:
    """(packet id, verdict, mark or None) of each NFQNL_MSG_VERDICT in data."""
    out = []
    for msg in nfqconfig.parse_messages(data):
        assert msg.type == 0x0301 and msg.body[:4] == bytes([0, 0, 0, 7])  # VERDICT, queue 7
        verdict, ident = struct.unpack_from("!II", msg.body, 8)
        mark = struct.unpack_from("!I", msg.body, 20)[0] if len(msg.body) > 16 else None
        out.append((ident, verdict, mark))
    return out


def judged(enforcer: Enforcer, *messages: bytes) -> list[tuple[int, int, int | None]]:
    """The individual verdicts queue 7's worker sends for a batch of these messages."""
    interfaces = Interfaces((), lambda: dict(NAMES))
    data = judge_batch(enforcer, 7, batch(*messages), len(messages), SLOT, interfaces)
    return verdicts(data)


def enforcer(*quotas: QuotaSpec, over: tuple[str, ...] = ()) -> Enforcer:
    """An enforcer over MONITORS with these quotas, the named ones over their limit."""
    e = Enforcer()
    e.configure(MONITORS, quotas)
    e.set_over({name: Over(all=True) for name in over})
    return e


def test_verdict_messages_drop_one_packet_or_accept_it_with_a_mark() -> None:
    drop = nfqconfig.verdict_message(queue=3, packet_id=9, verdict=0, mark=None, seq=5)
    assert struct.unpack_from("=IHHI", drop) == (32, 0x0301, 0x1, 5)  # VERDICT, REQUEST
    assert drop[20:] == struct.pack("=HH", 12, 2) + struct.pack("!II", 0, 9)
    marked = nfqconfig.verdict_message(queue=3, packet_id=9, verdict=1, mark=0x110, seq=5)
    assert marked[20:] == (
        struct.pack("=HH", 12, 2) + struct.pack("!II", 1, 9)
        + struct.pack("=HH", 8, 3) + struct.pack("!I", 0x110)
    )  # fmt: skip


def test_headers_read_id_mark_hook_interfaces_and_payload() -> None:
    got = headers(batch(packet_message(4, 4, out_udp(53), mark=0x100),
                        packet_message(5, 0, out_udp(80))), 2, SLOT)  # fmt: skip
    assert got == [(4, 0x100, 4, 0, ETH0, out_udp(53)), (5, 0, 0, ETH0, 0, out_udp(80))]


def test_an_over_limit_block_quota_drops_its_monitors_packets_but_not_exempt_dns() -> None:
    e = enforcer(BLOCK, over=("cap",))
    got = judged(
        e,
        packet_message(1, 4, out_udp(5001)),  # out: dropped
        packet_message(2, 4, out_udp(53)),  # out, but DNS: exempt
        packet_message(3, 0, out_udp(5001)),  # in: not the quota's monitor
        packet_message(4, 4, ipv4(6, tcp(40000, 443))),  # out: dropped
    )
    assert got == [(1, 0, None), (4, 0, None)]
    assert e.take_counts() == {
        "quota:cap:dropped_packets": 2, "quota:cap:dropped_bytes": 100 + 40,
        "quota:cap:marked_packets": 0, "quota:cap:marked_bytes": 0,
    }  # fmt: skip
    assert e.take_counts() == {}  # shipped once


def test_a_mark_quota_sets_its_bits_under_the_mask_and_keeps_the_others() -> None:
    assert new_mark(0x1234, 0x10, 0xFF) == 0x1210
    e = enforcer(MARK, over=("shape",))
    got = judged(
        e, packet_message(1, 4, out_udp(80), mark=0x1234), packet_message(2, 4, out_udp(80))
    )
    assert got == [(1, 1, 0x1210), (2, 1, 0x10)]


def test_a_quota_under_its_limit_sends_no_verdict_of_its_own() -> None:
    e = enforcer(BLOCK)
    assert judged(e, packet_message(1, 4, out_udp(5001))) == []


def test_the_packet_that_uses_up_the_bytes_left_passes_and_the_next_is_dropped() -> None:
    e = enforcer(BLOCK)
    e.told({}, {"cap": 250})
    msgs = [packet_message(i, 4, out_udp(5001)) for i in range(1, 5)]
    assert judged(e, *msgs) == [(4, 0, None)]  # 100 + 100 + 100 >= 250: the fourth is cut
    assert e.over[0].all


def test_exempt_traffic_still_spends_the_quota_and_two_monitors_spend_twice() -> None:
    both = QuotaSpec("both", ("out", "udp"), limit=1000, action="block")
    e = enforcer(BLOCK, both)
    e.told({}, {"cap": 150, "both": 350})
    # DNS is never blocked by cap, but its 100 bytes are used: cap has 50 left after it
    assert judged(e, packet_message(1, 4, out_udp(53))) == []
    assert e.left == [50, 150]  # "both" counts an out UDP packet in each of its monitors
    assert judged(e, packet_message(2, 4, out_udp(5001)), packet_message(3, 4, out_udp(5001))) == [
        (3, 0, None)
    ]


def test_bytes_spent_since_the_last_shipment_come_off_what_the_main_process_says_is_left() -> None:
    e = enforcer(BLOCK)
    e.told({}, {"cap": 1000})
    judged(e, packet_message(1, 4, out_udp(5001, 400)))
    e.told({}, {"cap": 500})  # counted from a shipment that did not hold those 400 bytes yet
    assert e.left == [100]
    e.unshipped = {}  # the next shipment holds them
    e.told({}, {"cap": 100})
    assert e.left == [100]
    judged(e, packet_message(2, 4, out_udp(5001, 100)))
    e.told({}, {"cap": 100})  # its figure has not seen the 100 just spent: over already
    assert e.over[0].all


def test_nothing_enforces_without_an_enforcing_quota() -> None:
    e = enforcer(QuotaSpec("report", ("out",), limit=10))
    assert not e.active and e.quotas == ()


def test_the_daemons_listening_ports_are_added_to_every_exempt_list() -> None:
    quota = control_exempt(BLOCK, [8080, 9100, 8080])
    assert quota.exempt == (
        DNS, RuleSpec(protocol=6, port=((8080, 8080),)), RuleSpec(protocol=6, port=((9100, 9100),))
    )  # fmt: skip
    e = enforcer(quota, over=("cap",))
    assert judged(e, packet_message(1, 4, ipv4(6, tcp(9100, 50000)))) == []


def test_a_per_host_quota_cuts_only_the_hosts_over_their_limit() -> None:
    lan = (MonitorSpec("lan", (RuleSpec(direction=DIR_OUT),), hosts=(ip_network("192.0.2.0/24"),)),)
    quota = QuotaSpec("each", ("lan",), limit=1000, action="block", per_host=True)
    e = Enforcer()
    e.configure(lan, [quota])
    e.set_over({"each": Over(hosts=frozenset({"192.0.2.1"}))})
    over_host = ipv4(17, udp(40000, 5001, bytes(72)), src="192.0.2.1")
    other_host = ipv4(17, udp(40000, 5001, bytes(72)), src="192.0.2.7")
    to_over_host = ipv4(17, udp(5001, 40000, bytes(72)), src="192.0.2.7", dst="192.0.2.1")
    got = judged(
        e,
        packet_message(1, 4, over_host),
        packet_message(2, 4, other_host),
        packet_message(3, 4, to_over_host),  # its receiving host is over: cut as well
        packet_message(4, 0, over_host),  # in: not the quota's monitor
    )
    assert got == [(1, 0, None), (3, 0, None)]
    e.set_over({})
    assert judged(e, packet_message(5, 4, over_host)) == []


def forwarded(packet_id: int, payload: bytes, indev: int, outdev: int) -> bytes:
    """An NFQNL_MSG_PACKET from the FORWARD hook: both interfaces, then the payload."""
    attrs = attr(1, struct.pack("!IHB", packet_id, 0x0800, 2))
    attrs += attr(5, struct.pack("!I", indev)) + attr(6, struct.pack("!I", outdev))
    attrs += attr(10, payload)
    body = bytes([2, 0, 0, 0]) + attrs
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, 0, 0) + body


def test_a_forwarded_packet_is_judged_out_on_its_output_interface_when_that_is_metered() -> None:
    e = enforcer(BLOCK, over=("cap",))
    names = {ETH0: "eth0", 3: "eth1"}
    msgs = [forwarded(1, out_udp(5001), indev=3, outdev=ETH0),  # out on eth0: cut
            forwarded(2, out_udp(5001), indev=ETH0, outdev=3)]  # out on eth1 # fmt: skip
    every = Interfaces((), lambda: dict(names))
    data = judge_batch(e, 7, batch(*msgs), 2, SLOT, every)
    assert verdicts(data) == [(1, 0, None), (2, 0, None)]
    only_eth0 = Interfaces(("eth0",), lambda: dict(names))  # eth1 is not metered
    data = judge_batch(e, 7, batch(*msgs), 2, SLOT, only_eth0)
    assert verdicts(data) == [(1, 0, None)]
