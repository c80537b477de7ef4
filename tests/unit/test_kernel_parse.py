"""Queue-rule counters and queue statistics parsed from the kernel tools' real output."""

from __future__ import annotations

from pathlib import Path

import pytest

from trafmetuxd.kernel import (
    KernelError,
    QueueRules,
    QueueStats,
    interface_matches,
    netlink_backlog,
    parse_listing,
    parse_rules,
    queue_stats,
)
from trafmetuxd.spec import CaptureSpec

# In the layout of `iptables -t mangle -L -v -x -n` (counters can be wider than their column).
LISTING = """\
Chain PREROUTING (policy ACCEPT 40 packets, 3360 bytes)
    pkts      bytes target     prot opt in     out     source               destination
      42     3528 TRAFMETUX-IN  0    --  *      *       0.0.0.0/0            0.0.0.0/0

Chain POSTROUTING (policy ACCEPT 12 packets, 1008 bytes)
    pkts      bytes target     prot opt in     out     source               destination
      12     1008 TRAFMETUX-OUT  0    --  *      *       0.0.0.0/0            0.0.0.0/0

Chain TRAFMETUX-IN (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      40     3360 NFQUEUE    0    --  veth-a *       0.0.0.0/0            0.0.0.0/0            NFQUEUE num 0 bypass
       2      168 NFQUEUE    0    --  wlan0  *       0.0.0.0/0            0.0.0.0/0            NFQUEUE num 0 bypass

Chain TRAFMETUX-OUT (1 references)
    pkts      bytes target     prot opt in     out     source               destination
12345678901 98765432109876 NFQUEUE    0    --  *      veth-a  0.0.0.0/0            0.0.0.0/0            NFQUEUE num 0 bypass
"""  # noqa: E501  (the tool's real line width)


def test_nfqueue_rule_counters_are_summed_per_chain() -> None:
    sums = parse_listing(LISTING)
    assert sums == {
        "TRAFMETUX-IN": (40 + 2, 3360 + 168),
        "TRAFMETUX-OUT": (12345678901, 98765432109876),
    }


# The forward hooks' counting chains (RETURN rules) next to a queue chain with a jump.
FORWARD_LISTING = """\
Chain TRAFMETUX-FWD (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      30     2520 TRAFMETUX-FWD-IN  0    --  *      *       0.0.0.0/0            0.0.0.0/0
      30     2520 NFQUEUE    0    --  !lo    *       0.0.0.0/0            0.0.0.0/0            NFQUEUE num 0 bypass

Chain TRAFMETUX-FWD-IN (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      20     1680 RETURN     0    --  lan0   *       0.0.0.0/0            0.0.0.0/0
       3      252 RETURN     0    --  wan0   *       0.0.0.0/0            0.0.0.0/0

Chain USER (0 references)
    pkts      bytes target     prot opt in     out     source               destination
       7      588 ACCEPT     0    --  *      *       0.0.0.0/0            0.0.0.0/0
"""  # noqa: E501  (the tool's real line width)


def test_return_rules_of_counting_chains_are_summed_and_jumps_are_not() -> None:
    assert parse_listing(FORWARD_LISTING) == {
        "TRAFMETUX-FWD": (30, 2520),
        "TRAFMETUX-FWD-IN": (23, 1932),
    }


def test_rules_listing_gives_our_chains_and_counts_plain_jumps() -> None:
    table = parse_rules(
        "-P PREROUTING ACCEPT\n"
        "-N TRAFMETUX-IN\n"
        "-A PREROUTING -j TRAFMETUX-IN\n"
        "-A PREROUTING -j TRAFMETUX-IN\n"
        "-A PREROUTING -i eth0 -j TRAFMETUX-IN\n"  # not a plain jump: never ours to delete
        "-A INPUT -j TRAFMETUX-IN\n"
        "-A TRAFMETUX-IN -i eth0 -j NFQUEUE --queue-num 0 --queue-bypass\n"
    )
    assert table.chains == {"TRAFMETUX-IN"}
    assert table.jumps == {("PREROUTING", "TRAFMETUX-IN"): 2, ("INPUT", "TRAFMETUX-IN"): 1}


def test_queue_statistics_line(tmp_path: Path) -> None:
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text(
        "    0  31337     0 2   128     0     0      733  1\n"
        "    5 -4123      3 2  4016    17     2   900001  1\n"
    )
    assert queue_stats(5, proc) == QueueStats(5, -4123, 3, 2, 4016, 17, 2, 900001)
    assert queue_stats(0, proc) == QueueStats(0, 31337, 0, 2, 128, 0, 0, 733)
    assert queue_stats(1, proc) is None
    assert queue_stats(0, tmp_path / "missing") is None


def test_interfaces_become_one_match_each_and_lo_is_never_metered() -> None:
    spec = CaptureSpec(interfaces=("eth0", "wlan*", "lo"))
    assert interface_matches(spec, "-i") == [["-i", "eth0"], ["-i", "wlan+"]]
    assert interface_matches(CaptureSpec(), "-o") == [["!", "-o", "lo"]]


def test_star_interface_never_queues_loopback():
    spec = CaptureSpec(interfaces=("*",))
    assert interface_matches(spec, "-i") == [["!", "-i", "lo"]]


def test_glob_matching_loopback_is_refused_not_queued():
    with pytest.raises(KernelError, match="'l\\*' matches lo"):
        interface_matches(CaptureSpec(interfaces=("eth0", "l*")), "-o")


def test_netlink_backlog_reads_unread_bytes_of_netfilter_sockets_by_port_id(
    tmp_path: Path,
) -> None:
    proc = tmp_path / "netlink"
    proc.write_text(
        "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
        "00000000e9991f50 0   0          00000000 0        0        0     2        0        4\n"
        "00000000b5544703 12  4123       00000000 2304     0        0     2        0        1435\n"
        "00000000b5544704 12  77         00000000 0        0        0     2        0        1436\n"
        "00000000b5544705 16  4123       00000000 999      0        0     2        0        1437\n"
    )
    assert netlink_backlog(proc) == {4123: 2304, 77: 0}  # protocol 12 (netfilter) only
    assert netlink_backlog(tmp_path / "missing") == {}


def test_a_strict_quota_installs_the_queue_rules_without_bypass() -> None:
    assert QueueRules(CaptureSpec()).target()[-1] == "--queue-bypass"
    assert QueueRules(CaptureSpec(), strict=True).target() == [
        "-j", "NFQUEUE", "--queue-num", "0"
    ]  # fmt: skip
    many = QueueRules(CaptureSpec(queue=4, queues=2), strict=True).target()
    assert many == ["-j", "NFQUEUE", "--queue-balance", "4:5", "--queue-cpu-fanout"]
