"""The real NFQUEUE capture in a namespace: every packet accepted, every byte metered exactly."""

from __future__ import annotations

import time
from pathlib import Path

from harness.netns import HERE, MB, Pair, Probe, mixed_traffic, sink_result, start_sink, traffic
from trafmetuxd.kernel import queue_stats

# Meter keys ("family/proto") and the nft counter that counts the same packets on the veth.
CLASSES = {
    "4/1": "ip_icmp",
    "4/6": "ip_tcp",
    "4/17": "ip_udp",
    "6/6": "ip6_tcp",
    "6/17": "ip6_udp",
    "6/58": "ip6_icmp6_echo",
}


def deltas(after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]) -> dict:
    """Counter increments between two readings."""
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}


def metered(mark: dict, before: dict | None = None) -> dict[str, tuple[int, int]]:
    """The probe's counts as key -> (packets, bytes), minus an earlier mark."""
    counts = {k: tuple(v) for k, v in mark["counts"].items()}
    if before is None:
        return counts
    old = before["counts"]
    return {
        k: (v[0] - old.get(k, [0, 0])[0], v[1] - old.get(k, [0, 0])[1]) for k, v in counts.items()
    }


def test_every_packet_is_accepted_and_counted_to_the_byte(pair: Pair) -> None:
    probe = Probe(pair.a, "0", pair.a_if)
    pair.settle()
    nft_in0, nft_out0 = pair.a.nft_counters(), pair.b.nft_counters()
    start = probe.mark()

    mixed_traffic(pair, 4 * MB)

    pair.settle()
    end = probe.mark()
    nft_in = deltas(pair.a.nft_counters(), nft_in0)
    nft_out = deltas(pair.b.nft_counters(), nft_out0)
    got = metered(end, start)
    for cls, counter in CLASSES.items():
        # What arrived on veth-a is "in"; what veth-b received is what veth-a sent, "out".
        assert got.get(f"in/{pair.a_if}/{cls}") == nft_in[counter], cls
        assert got.get(f"out/{pair.a_if}/{cls}") == nft_out[counter], cls
    assert got[f"in/{pair.a_if}/4/6"][1] > 4 * MB  # the bulk transfer really went through
    assert {key.split("/")[1] for key in got} == {pair.a_if}
    assert end["errors"] == 0
    probe.stop()


def test_all_ip_bytes_including_neighbour_discovery_match_the_wire(pair: Pair) -> None:
    probe = Probe(pair.a, "0", pair.a_if)
    pair.settle()
    nft_in0, nft_out0 = pair.a.nft_counters(), pair.b.nft_counters()
    start = probe.mark()
    pair.a.run(["ip", "neigh", "flush", "dev", pair.a_if])  # forces fresh ND exchanges
    pair.b.run(["ip", "neigh", "flush", "dev", pair.b_if])
    mixed_traffic(pair, 1 * MB)
    pair.settle()
    got = metered(probe.mark(), start)
    nft_in = deltas(pair.a.nft_counters(), nft_in0)
    nft_out = deltas(pair.b.nft_counters(), nft_out0)
    for direction, nft in (("in", nft_in), ("out", nft_out)):
        for family, counter in (("4", "ip_all"), ("6", "ip6_all")):
            packets = sum(
                v[0] for k, v in got.items() if k.startswith(f"{direction}/veth-a/{family}/")
            )
            nbytes = sum(
                v[1] for k, v in got.items() if k.startswith(f"{direction}/veth-a/{family}/")
            )
            assert (packets, nbytes) == nft[counter], (direction, family)
    probe.stop()


def test_a_failing_meter_still_lets_every_packet_through(pair: Pair) -> None:
    probe = Probe(pair.a, "0", pair.a_if, "--raise")
    assert traffic(pair.a, "ping", pair.b4, "10").split() == ["10"]
    sink = start_sink(pair.b, "tcp-sink", "6001", "60")
    traffic(pair.a, "tcp-send", pair.b6, "6001", str(2 * MB))
    assert sink_result(sink) == 2 * MB
    final = probe.stop()
    # every batch's metering failed (an error per batch), and every packet still went through
    assert 0 < final["errors"] <= final["packets"]
    assert "injected" in final["last_error"]


def udp_burst(pair: Pair, count: int) -> int:
    """Send `count` datagrams from b to a at 3000/s, far above the meter's pace; how many came."""
    sink = start_sink(pair.a, "udp-sink", "5005", str(count), "5")
    traffic(pair.b, "udp-send", pair.a4, "5005", str(count), "200", "3000")
    return sink_result(sink)


def test_a_full_queue_fails_open_instead_of_dropping(pair: Pair) -> None:
    # A queue of one packet and a meter that needs 20 ms per packet: almost everything
    # overflows the queue. Fail-open must let it all through, unmetered.
    probe = Probe(pair.a, "0", pair.a_if, "--maxlen", "1", "--sleep", "0.02")
    proc_file = Path(f"/proc/{probe.pid}/net/netfilter/nfnetlink_queue")
    assert udp_burst(pair, 300) == 300
    sink = start_sink(pair.b, "tcp-sink", "6001", "60")
    traffic(pair.a, "tcp-send", pair.b4, "6001", str(1 * MB))
    assert sink_result(sink) == 1 * MB
    stats = queue_stats(0, proc_file)
    assert stats is not None
    assert stats.queue_dropped == 0
    final = probe.stop()
    assert final["packets"] < 300  # most packets really bypassed the overloaded meter


def test_without_fail_open_the_same_overload_drops_packets(pair: Pair) -> None:
    # The counter-check of the test above: it proves the flag we set is what kept packets alive.
    probe = Probe(pair.a, "0", pair.a_if, "--maxlen", "1", "--sleep", "0.02", "--no-fail-open")
    proc_file = Path(f"/proc/{probe.pid}/net/netfilter/nfnetlink_queue")
    arrived = udp_burst(pair, 300)
    stats = queue_stats(0, proc_file)
    assert stats is not None
    assert stats.queue_dropped > 0
    assert arrived + stats.queue_dropped == 300
    probe.stop()


def test_kill_9_during_a_transfer_then_restart_without_duplicate_rules(pair: Pair) -> None:
    probe = Probe(pair.a, "0", pair.a_if)
    rules_before = pair.a.iptables_save()
    sink = start_sink(pair.b, "tcp-sink", "6001", "60")
    sender = pair.a.popen(
        pair.a.python(str(HERE / "traffic.py"), "tcp-send", pair.b4, "6001", str(40 * MB))
    )
    time.sleep(0.3)
    assert sender.poll() is None, "the transfer ended before the crash; make it longer"
    probe.kill9()
    # The consumer is gone: --queue-bypass lets the rest of the transfer through.
    assert sender.wait(timeout=60) == 0
    assert sink_result(sink) == 40 * MB
    assert "TRAFMETUX-IN" in pair.a.iptables_save()  # a crash leaves the rules behind

    restarted = Probe(pair.a, "0", pair.a_if)
    assert pair.a.iptables_save().count("-j TRAFMETUX-IN") == 2  # one jump per family
    assert strip_counters(pair.a.iptables_save()) == strip_counters(rules_before)
    assert traffic(pair.a, "ping", pair.b4, "5").split() == ["5"]
    pair.settle()
    final = restarted.stop()
    assert final["counts"][f"out/{pair.a_if}/4/1"] == [
        5,
        5 * (20 + 8 + 56),
    ]  # IPv4 + ICMP headers + payload
    assert "TRAFMETUX" not in pair.a.iptables_save()


def test_stop_removes_every_rule(pair: Pair) -> None:
    before = pair.a.iptables_save()
    probe = Probe(pair.a, "3", "all")
    assert "--queue-num 3" in pair.a.iptables_save()
    assert "! -i lo" in pair.a.iptables_save()
    probe.stop()
    assert strip_counters(pair.a.iptables_save()) == strip_counters(before)


def test_loopback_is_never_metered(pair: Pair) -> None:
    probe = Probe(pair.a, "0", "all")
    assert traffic(pair.a, "ping", pair.a4, "5").split() == ["5"]  # own address: via lo
    assert traffic(pair.a, "ping", pair.b4, "3").split() == ["3"]
    final = probe.stop()
    assert {key.split("/")[1] for key in final["counts"]} == {pair.a_if}
    assert final["counts"][f"out/{pair.a_if}/4/1"][0] == 3


def strip_counters(save: str) -> list[str]:
    """iptables-save lines without comments and counters, comparable across runs."""
    return [line.split(" [")[0] for line in save.splitlines() if not line.startswith("#")]


def test_gso_super_packets_are_metered_as_the_segments_on_the_wire(pair: Pair) -> None:
    # With TSO/GSO on, TCP hands POSTROUTING super-packets; the queue (no NFQA_CFG_F_GSO)
    # segments them first, so the meter counts what the peer really receives.
    pair.offloads(gro=False, gso=True, tso=True)
    probe = Probe(pair.a, "0", pair.a_if)
    pair.settle()
    nft_out0 = pair.b.nft_counters()
    start = probe.mark()
    sink = start_sink(pair.b, "tcp-sink", "6001", "60")
    traffic(pair.a, "tcp-send", pair.b4, "6001", str(4 * MB))
    assert sink_result(sink) == 4 * MB
    pair.settle()
    end = probe.mark()
    wire = deltas(pair.b.nft_counters(), nft_out0)["ip_tcp"]
    meter = metered(end, start)[f"out/{pair.a_if}/4/6"]
    assert meter == wire
    rule_packets = end["rules"]["2"][0] - start["rules"]["2"][0]
    rule_bytes = end["rules"]["2"][1] - start["rules"]["2"][1]
    # The rule counter saw the super-packets: fewer packets, and fewer bytes (one set of
    # headers per super-packet instead of per segment).
    assert rule_packets < wire[0]
    assert rule_bytes < wire[1]
    print(f"GSO: rule {rule_packets} pkts/{rule_bytes} B, wire+meter {wire[0]} pkts/{wire[1]} B")
    probe.stop()
