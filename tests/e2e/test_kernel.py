"""Queue rules in a namespace: idempotent install and removal, counters, IPv6, interfaces."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from harness.netns import HERE, Namespace, Pair, Probe, traffic
from trafmetuxd.kernel import queue_stats

ICMP_ECHO_V4 = 20 + 8 + 56  # IPv4 header + ICMP header + the default payload
ICMP_ECHO_V6 = 40 + 8 + 56


def rules(
    ns: Namespace, action: str, queue: int = 0, *interfaces: str, hooks: str = "prerouting"
) -> dict[str, list[int]]:
    """Run QueueRules inside the namespace; the counters for 'counters'."""
    probe = ns.python(str(HERE / "probe_kernel.py"), action, str(queue), *interfaces)
    out = ns.run([*probe, "--hooks", hooks]).stdout
    return json.loads(out) if out.strip() else {}


def rule_lines(ns: Namespace) -> list[str]:
    """The -A lines of both families' mangle tables."""
    return [line for line in ns.iptables_save().splitlines() if line.startswith("-A")]


def test_install_twice_gives_the_same_rules_once(pair: Pair) -> None:
    rules(pair.a, "install", 0, pair.a_if)
    once = rule_lines(pair.a)
    rules(pair.a, "install", 0, pair.a_if)
    assert rule_lines(pair.a) == once
    expected = [
        "-A PREROUTING -j TRAFMETUX-IN",
        "-A POSTROUTING -j TRAFMETUX-OUT",
        f"-A TRAFMETUX-IN -i {pair.a_if} -j NFQUEUE --queue-num 0 --queue-bypass",
        f"-A TRAFMETUX-OUT -o {pair.a_if} -j NFQUEUE --queue-num 0 --queue-bypass",
    ]
    assert once == expected + expected  # IPv4 then IPv6


def test_install_repairs_duplicated_jumps_and_replaces_old_rules(pair: Pair) -> None:
    rules(pair.a, "install", 0, "old0")
    for tool in ("iptables", "ip6tables"):
        pair.a.run([tool, "-t", "mangle", "-A", "PREROUTING", "-j", "TRAFMETUX-IN"])
    rules(pair.a, "install", 1, pair.a_if)
    lines = rule_lines(pair.a)
    assert lines.count("-A PREROUTING -j TRAFMETUX-IN") == 2  # one per family
    assert not [line for line in lines if "old0" in line or "--queue-num 0" in line]


FORWARD_RULES = [
    "-A INPUT -j TRAFMETUX-IN",
    "-A FORWARD -j TRAFMETUX-FWD",
    "-A OUTPUT -j TRAFMETUX-OUT",
    "-A TRAFMETUX-FWD -j TRAFMETUX-FWD-IN",
    "-A TRAFMETUX-FWD -j TRAFMETUX-FWD-OUT",
    "-A TRAFMETUX-FWD -i lan0 -j NFQUEUE --queue-num 0 --queue-bypass",
    "-A TRAFMETUX-FWD -i wan0 -j NFQUEUE --queue-num 0 --queue-bypass",
    "-A TRAFMETUX-FWD -o lan0 -j NFQUEUE --queue-num 0 --queue-bypass",
    "-A TRAFMETUX-FWD -o wan0 -j NFQUEUE --queue-num 0 --queue-bypass",
    "-A TRAFMETUX-FWD-IN -i lan0 -j RETURN",
    "-A TRAFMETUX-FWD-IN -i wan0 -j RETURN",
    "-A TRAFMETUX-FWD-OUT -o lan0 -j RETURN",
    "-A TRAFMETUX-FWD-OUT -o wan0 -j RETURN",
    "-A TRAFMETUX-IN -i lan0 -j NFQUEUE --queue-num 0 --queue-bypass",
    "-A TRAFMETUX-IN -i wan0 -j NFQUEUE --queue-num 0 --queue-bypass",
    "-A TRAFMETUX-OUT -o lan0 -j NFQUEUE --queue-num 0 --queue-bypass",
    "-A TRAFMETUX-OUT -o wan0 -j NFQUEUE --queue-num 0 --queue-bypass",
]


def test_forward_hooks_install_input_forward_output_chains_once(pair: Pair) -> None:
    for _ in range(2):
        rules(pair.a, "install", 0, "lan0", "wan0", hooks="forward")
    assert sorted(rule_lines(pair.a)) == sorted(FORWARD_RULES + FORWARD_RULES)  # both families
    rules(pair.a, "remove")
    assert "TRAFMETUX" not in pair.a.iptables_save()


def test_changing_hooks_leaves_no_jump_of_the_other_layout(pair: Pair) -> None:
    # After kill -9 the rules stay; a restart with other hooks must not queue packets twice.
    rules(pair.a, "install", 0, pair.a_if, hooks="forward")
    rules(pair.a, "install", 0, pair.a_if)
    saved = pair.a.iptables_save()
    assert "INPUT -j" not in saved and "OUTPUT -j" not in saved and "FWD" not in saved
    assert saved.count("-A PREROUTING -j TRAFMETUX-IN") == 2
    rules(pair.a, "install", 0, pair.a_if, hooks="forward")
    saved = pair.a.iptables_save()
    assert "PREROUTING -j" not in saved and "POSTROUTING -j" not in saved
    assert (
        saved.count("-A INPUT -j TRAFMETUX-IN") == saved.count("-A FORWARD -j TRAFMETUX-FWD") == 2
    )
    rules(pair.a, "remove")
    assert "TRAFMETUX" not in pair.a.iptables_save()


def test_forward_hooks_count_the_hosts_own_traffic_at_input_and_output(pair: Pair) -> None:
    # No consumer is bound: --queue-bypass lets traffic through and the rules still count.
    rules(pair.a, "install", 0, pair.a_if, hooks="forward")
    assert traffic(pair.a, "ping", pair.b4, "4").split() == ["4"]
    assert traffic(pair.b, "ping", pair.a6, "3").split() == ["3"]
    pair.settle()
    expected = [4 + 3, 4 * ICMP_ECHO_V4 + 3 * ICMP_ECHO_V6]
    assert rules(pair.a, "counters", hooks="forward") == {"1": expected, "2": expected}
    rules(pair.a, "remove")


def test_remove_is_idempotent_and_leaves_foreign_rules_alone(pair: Pair) -> None:
    foreign = ["iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "-j", "MARK"]
    pair.a.run([*foreign, "--set-mark", "7"])
    rules(pair.a, "remove")  # nothing installed yet
    rules(pair.a, "install", 0)
    rules(pair.a, "remove")
    rules(pair.a, "remove")
    assert rule_lines(pair.a) == ["-A PREROUTING -p udp -j MARK --set-xmark 0x7/0xffffffff"]
    assert "TRAFMETUX" not in pair.a.iptables_save()


def test_counters_sum_both_families_per_direction_with_bypass(pair: Pair) -> None:
    # No consumer is bound: --queue-bypass lets traffic through and the rules still count.
    rules(pair.a, "install", 0, pair.a_if)
    assert traffic(pair.a, "ping", pair.b4, "4").split() == ["4"]
    assert traffic(pair.a, "ping", pair.b6, "3").split() == ["3"]
    pair.settle()
    counters = rules(pair.a, "counters")
    nft_in, nft_out = pair.a.nft_counters(), pair.b.nft_counters()
    expected_out = (4 + 3, 4 * ICMP_ECHO_V4 + 3 * ICMP_ECHO_V6)
    # The nft counters saw the pre-install reachability pings too: compare echo traffic.
    assert tuple(counters["2"]) == expected_out
    assert tuple(counters["1"]) == expected_out  # the replies mirror the requests
    assert nft_out["ip_icmp"][0] >= 4 and nft_in["ip6_icmp6_echo"][0] >= 3
    rules(pair.a, "remove")


def test_interface_restriction_and_globs(pair: Pair) -> None:
    rules(pair.a, "install", 0, "other0")
    assert traffic(pair.a, "ping", pair.b4, "3").split() == ["3"]
    assert rules(pair.a, "counters") == {"1": [0, 0], "2": [0, 0]}
    rules(pair.a, "install", 0, "veth*")
    assert "-A TRAFMETUX-IN -i veth+ -j NFQUEUE" in pair.a.iptables_save()
    assert traffic(pair.a, "ping", pair.b6, "2").split() == ["2"]
    assert rules(pair.a, "counters") == {"1": [2, 2 * ICMP_ECHO_V6], "2": [2, 2 * ICMP_ECHO_V6]}


def test_all_interfaces_means_all_but_loopback(pair: Pair) -> None:
    rules(pair.a, "install", 0)
    assert traffic(pair.a, "ping", pair.a6, "3").split() == ["3"]  # to itself, over lo
    assert rules(pair.a, "counters") == {"1": [0, 0], "2": [0, 0]}
    assert "! -i lo" in pair.a.iptables_save() and "! -o lo" in pair.a.iptables_save()


def test_queue_stats_of_a_bound_queue(pair: Pair) -> None:
    probe = Probe(pair.a, "5", pair.a_if)
    proc_file = Path(f"/proc/{probe.pid}/net/netfilter/nfnetlink_queue")
    assert traffic(pair.a, "ping", pair.b4, "3").split() == ["3"]
    stats = queue_stats(5, proc_file)
    assert stats is not None
    assert (stats.queue, stats.copy_mode, stats.copy_range) == (5, 2, 128)
    assert stats.waiting == stats.queue_dropped == stats.user_dropped == 0
    assert stats.id_sequence == 6  # three requests out, three replies in
    assert queue_stats(6, proc_file) is None
    probe.stop()


def test_iptables_legacy_works_the_same(pair: Pair, tmp_path: Path) -> None:
    legacy = {"iptables": "iptables-legacy", "ip6tables": "ip6tables-legacy"}
    if not all(shutil.which(tool) for tool in legacy.values()):
        pytest.skip("iptables-legacy not installed")
    for name, tool in legacy.items():
        (tmp_path / name).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    env = ["env", f"PATH={tmp_path}:{os.environ['PATH']}"]
    probe = [*env, *pair.a.python(str(HERE / "probe_kernel.py"))]
    for _ in range(2):
        pair.a.run([*probe, "install", "0", pair.a_if])
    saved = pair.a.run(["iptables-legacy-save", "-t", "mangle"]).stdout
    assert saved.count("-A PREROUTING -j TRAFMETUX-IN") == 1
    assert "TRAFMETUX" not in pair.a.iptables_save()  # the nft side is untouched
    assert traffic(pair.a, "ping", pair.b4, "2").split() == ["2"]
    counters = json.loads(pair.a.run([*probe, "counters", "0"]).stdout)
    assert counters == {"1": [2, 2 * ICMP_ECHO_V4], "2": [2, 2 * ICMP_ECHO_V4]}
    pair.a.run([*probe, "remove", "0"])
    assert "TRAFMETUX" not in pair.a.run(["iptables-legacy-save", "-t", "mangle"]).stdout
    assert "TRAFMETUX" not in pair.a.run(["ip6tables-legacy-save", "-t", "mangle"]).stdout
