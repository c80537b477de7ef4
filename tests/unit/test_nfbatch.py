"""A batch of kernel queue messages in fixed slots -> the meter, from plain bytes."""

from __future__ import annotations

import struct

from harness.packets import ipv4, udp
from trafmetuxd import nfqconfig
from trafmetuxd.meter import Meter
from trafmetuxd.nfbatch import (
    BatchStats,
    Interfaces,
    feed_batch,
    is_metered,
    last_packet_id,
    packets,
)
from trafmetuxd.spec import DIR_IN, DIR_OUT, MonitorSpec, RuleSpec

SLOT = 640


def udp4(length: int) -> bytes:
    """A whole IPv4 UDP packet of `length` bytes."""
    return ipv4(17, udp(40000, 53, bytes(length - 28)))


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute (host-order header), padded to 4 bytes."""
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def packet_message(
    packet_id: int, hook: int, payload: bytes, indev: int = 0, outdev: int = 0
) -> bytes:
    """An NFQNL_MSG_PACKET as the kernel builds it: header, interfaces, then the payload."""
    attrs = attr(1, struct.pack("!IHB", packet_id, 0x0800, hook))
    if indev:
        attrs += attr(5, struct.pack("!I", indev))
    if outdev:
        attrs += attr(6, struct.pack("!I", outdev))
    attrs += attr(10, payload)
    body = bytes([2, 0, 0, 0]) + attrs
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, 0, 0) + body


def error_message() -> bytes:
    """An NLMSG_ERROR, as the kernel answers a verdict it could not apply."""
    body = struct.pack("=i", -2) + bytes(16)
    return struct.pack("=IHHII", 16 + len(body), 2, 0, 0, 0) + body


def batch(*messages: bytes, slot: int = SLOT) -> bytes:
    """Messages received into consecutive slots (stale bytes after each, as in a reused buffer)."""
    return b"".join(m[:slot] + b"\xee" * (slot - len(m[:slot])) for m in messages)


def test_the_batch_verdict_takes_the_highest_packet_id_and_skips_other_messages() -> None:
    buf = batch(packet_message(7, 0, udp4(60)), error_message(), packet_message(9, 4, udp4(60)))
    assert last_packet_id(buf, 3, SLOT) == 9
    assert last_packet_id(batch(error_message()), 1, SLOT) == -1


def test_verdict_batch_message_accepts_every_id_up_to_the_last() -> None:
    msg = nfqconfig.verdict_batch_message(queue=3, last_id=0x0A0B0C0D, seq=8)
    assert struct.unpack_from("=IHHI", msg) == (32, 0x0303, 0x1, 8)  # VERDICT_BATCH, REQUEST
    assert msg[16:20] == bytes([0, 0, 0, 3])
    assert msg[20:] == struct.pack("=HH", 12, 2) + bytes([0, 0, 0, 1, 10, 11, 12, 13])


def test_prerouting_and_input_are_in_by_input_device_the_rest_out_by_output_device() -> None:
    buf = batch(
        packet_message(1, 0, udp4(100), indev=2),
        packet_message(2, 1, udp4(200), indev=2),
        packet_message(3, 3, udp4(300), outdev=5),
        packet_message(4, 4, udp4(400), outdev=5),
    )
    got = [(d, i, len(p)) for d, i, p in packets(buf, 4, SLOT)]
    assert got == [(DIR_IN, 2, 100), (DIR_IN, 2, 200), (DIR_OUT, 5, 300), (DIR_OUT, 5, 400)]


def test_a_whole_batch_is_metered_exactly_with_interface_names() -> None:
    meter = Meter([MonitorSpec("eth0-in", (RuleSpec(direction=DIR_IN, interface="eth0"),))])
    stats = BatchStats()
    lookups: list[int] = []

    def lookup() -> dict[int, str]:
        lookups.append(1)
        return {2: "eth0"}

    buf = batch(packet_message(1, 0, udp4(100), indev=2), packet_message(2, 0, udp4(150), indev=3))
    feed_batch(meter, stats, 120.0, buf, 2, SLOT, Interfaces((), lookup))
    assert len(lookups) == 2  # a miss reads the system's map again; index 3 is gone: retried
    assert (stats.packets, stats.truncated) == (2, 0)
    assert (meter.stats.in_packets, meter.stats.in_bytes) == (2, 250)
    totals = meter.collectors[0].totals
    assert totals == {2: [100, 1, 0, 0]}  # minute 2 (120 s): only eth0 matches the monitor


def test_a_message_cut_by_its_slot_is_accepted_but_not_metered_from_stale_bytes() -> None:
    meter = Meter([MonitorSpec("all")])
    stats = BatchStats()
    big = packet_message(5, 0, udp4(600), indev=1)  # 600 bytes of payload: longer than the slot
    buf = batch(big, packet_message(6, 0, udp4(80), indev=1), slot=256)
    assert last_packet_id(buf, 2, 256) == 6  # both are accepted
    feed_batch(meter, stats, 0.0, buf, 2, 256, Interfaces((), lambda: {1: "eth0"}))
    assert (stats.packets, stats.truncated) == (2, 1)
    assert meter.stats.in_bytes == 80


def test_garbage_in_a_slot_is_neither_metered_nor_a_crash() -> None:
    meter = Meter([MonitorSpec("all")])
    stats = BatchStats()
    junk = struct.pack("=IHH", 0xFFFFFFFF, 0x0300, 0) + b"\xff" * 100
    feed_batch(meter, stats, 0.0, batch(junk), 1, SLOT, Interfaces((), dict))
    assert stats.truncated == stats.packets  # whatever it claims to be, nothing is read from it
    assert meter.stats.in_packets == 0


GATEWAY = {2: "lan0", 3: "wan0", 4: "dmz0"}


def test_a_forwarded_packet_counts_in_on_its_input_and_out_on_its_output_interface() -> None:
    # What the PREROUTING and POSTROUTING rules counted in two queueings, FORWARD counts in one.
    monitors = [
        MonitorSpec("all"),
        MonitorSpec("lan-in", (RuleSpec(direction=DIR_IN, interface="lan0"),)),
        MonitorSpec("wan-out", (RuleSpec(direction=DIR_OUT, interface="wan0"),)),
    ]
    meter = Meter(monitors)
    stats = BatchStats()
    buf = batch(packet_message(1, 2, udp4(300), indev=2, outdev=3))
    feed_batch(meter, stats, 0.0, buf, 1, SLOT, Interfaces((), lambda: dict(GATEWAY)))
    assert stats.packets == 1
    assert (meter.stats.in_packets, meter.stats.in_bytes) == (1, 300)
    assert (meter.stats.out_packets, meter.stats.out_bytes) == (1, 300)
    all_, lan_in, wan_out = (c.totals for c in meter.collectors)
    assert all_ == {0: [300, 1, 300, 1]}
    assert lan_in == {0: [300, 1, 0, 0]}
    assert wan_out == {0: [0, 0, 300, 1]}


def test_a_forwarded_packet_counts_only_on_the_metered_side() -> None:
    meter = Meter([MonitorSpec("all")])
    stats = BatchStats()
    interfaces = Interfaces(("wan*",), lambda: dict(GATEWAY))
    buf = batch(
        packet_message(1, 2, udp4(100), indev=2, outdev=3),  # lan0 -> wan0: out on wan0
        packet_message(2, 2, udp4(200), indev=3, outdev=2),  # wan0 -> lan0: in on wan0
        packet_message(3, 2, udp4(400), indev=2, outdev=4),  # lan0 -> dmz0: neither
    )
    feed_batch(meter, stats, 0.0, buf, 3, SLOT, interfaces)
    assert stats.packets == 3
    assert (meter.stats.in_packets, meter.stats.in_bytes) == (1, 200)
    assert (meter.stats.out_packets, meter.stats.out_bytes) == (1, 100)


def test_packets_gives_a_forwarded_packet_twice_in_then_out() -> None:
    buf = batch(packet_message(1, 2, udp4(120), indev=2, outdev=3))
    got = [(d, i, len(p)) for d, i, p in packets(buf, 1, SLOT)]
    assert got == [(DIR_IN, 2, 120), (DIR_OUT, 3, 120)]


def test_metered_interfaces_match_as_the_queue_rules_do() -> None:
    assert is_metered("eth0", ())
    assert not is_metered("lo", ())
    assert is_metered("wlan0", ("eth0", "wlan*"))
    assert is_metered("wlan", ("wlan*",))  # iptables' wlan+ matches the bare prefix too
    assert not is_metered("eth01", ("eth0",))
    assert not is_metered("eth0", ("eth?",))  # no other glob character: iptables has none
    assert Interfaces(("*",), dict).patterns == ()
