"""Per-host quotas over real stored and unflushed host totals: periods, IPv6 groups, `other`."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from scapy.all import IP, UDP, IPv6, Raw, wrpcap

from harness.packets import UDP as UDP_PROTO
from harness.packets import ipv4, udp
from trafmetuxd.metering import Metering
from trafmetuxd.periods import Calendar
from trafmetuxd.quota import OverLimit, quota_period
from trafmetuxd.replay import replay
from trafmetuxd.reports import Reports
from trafmetuxd.spec import DIR_IN, Config, MonitorSpec, QuotaSpec

PARIS = ZoneInfo("Europe/Paris")
LAN = (ipaddress.ip_network("192.168.190.0/24"), ipaddress.ip_network("fd00:190::/56"))
REMOTE4, REMOTE6 = "203.0.113.9", "2001:db8::80"
DAY_BEGIN = int(datetime(2026, 11, 10, tzinfo=PARIS).timestamp())
DAY_END = int(datetime(2026, 11, 11, tzinfo=PARIS).timestamp())
NOON = DAY_BEGIN + 12 * 3600


def lab(tmp_path: Path, packets: Sequence[tuple[float, Any]], max_hosts: int = 4096) -> Metering:
    """A daemon's metering side with one `hosts` monitor, after a replay of the packets."""
    frames = []
    for ts, ip in packets:
        ip.time = ts
        frames.append(ip)
    wrpcap(str(tmp_path / "lan.pcap"), frames, linktype=101)
    cfg = Config(
        path=tmp_path / "t.toml",
        state_dir=tmp_path / "state",
        timezone="Europe/Paris",
        local_networks=LAN,
        monitors=(MonitorSpec("lan", hosts=LAN, host_prefix_v6=64, max_hosts=max_hosts),),
        quotas=(
            QuotaSpec("each", ("lan",), limit=1000, period="day", per_host=True),
            QuotaSpec("all", ("lan",), limit=1000, period="day"),
        ),
    )
    cfg.state_dir.mkdir()
    metering = Metering(cfg)
    assert replay(metering, tmp_path / "lan.pcap", iface="")
    return metering


def down(host: str, size: int) -> object:
    """A UDP datagram from the remote server to a LAN host, size bytes of payload."""
    if ":" in host:
        return IPv6(src=REMOTE6, dst=host) / UDP(sport=53, dport=4000) / Raw(b"d" * size)
    return IP(src=REMOTE4, dst=host) / UDP(sport=53, dport=4000) / Raw(b"d" * size)


def up(host: str, size: int) -> object:
    """A UDP datagram from a LAN host to the remote server."""
    if ":" in host:
        return IPv6(src=host, dst=REMOTE6) / UDP(sport=4000, dport=53) / Raw(b"u" * size)
    return IP(src=host, dst=REMOTE4) / UDP(sport=4000, dport=53) / Raw(b"u" * size)


def quotas(metering: Metering, now: int) -> dict[str, dict[str, object]]:
    """The quota answer (as JSON dicts) and the over-limit state, at `now`."""
    reports = Reports(metering, clock=lambda: float(now))
    try:
        statuses = asyncio.run(reports.quotas())
    finally:
        reports.close()
    return {s.name: s.as_dict() for s in statuses}


def over(metering: Metering, now: int) -> list[OverLimit]:
    reports = Reports(metering, clock=lambda: float(now))
    try:
        return asyncio.run(reports.over_limits())
    finally:
        reports.close()


def host_used(result: dict[str, object]) -> dict[str, int]:
    hosts = result["hosts"]
    assert isinstance(hosts, list)
    return {h["host"]: h["used"] for h in hosts}


def test_per_host_usage_counts_exactly_the_local_day_stored_and_unflushed(
    tmp_path: Path,
) -> None:
    a, b = "192.168.190.1", "192.168.190.2"
    sent = [
        (DAY_BEGIN - 1, down(a, 5000)),  # the day before: not counted
        (DAY_BEGIN, down(a, 100)),
        (DAY_BEGIN + 60, up(a, 200)),
        (DAY_END - 1, down(b, 300)),
        (DAY_END, down(b, 7000)),  # the next day: not counted
    ]
    metering = lab(tmp_path, sent)
    try:
        size = [len(bytes(ip)) for _, ip in sent]
        # unflushed: 1 packet more for a, counted by the main process's meter
        extra = ipv4(UDP_PROTO, udp(53, 4000, b"x" * 500), src=REMOTE4, dst=a)
        metering.meter.feed(NOON, extra, DIR_IN, "eth0")
        got = quotas(metering, NOON)
    finally:
        metering.close()
    each = got["each"]
    assert host_used(each) == {a: size[1] + size[2] + len(extra), b: size[3]}
    assert (each["host"], each["used"], each["state"]) == (
        a,
        size[1] + size[2] + len(extra),
        "WARNING",
    )
    assert (each["begin"], each["end"]) == (DAY_BEGIN, DAY_END)
    # the whole quota counts the same bytes: in + out of the monitor
    assert got["all"]["used"] == sum(host_used(each).values())
    assert got["all"]["state"] == "CRITICAL"  # 1,161+ bytes > 1,000


def test_ipv6_privacy_addresses_share_their_prefixs_limit(tmp_path: Path) -> None:
    sent = [
        (NOON, down("fd00:190:0:1::a", 500)),  # two addresses of one /64: 1,096 bytes
        (NOON + 1, up("fd00:190:0:1::b", 500)),
        (NOON + 2, down("fd00:190:0:2::a", 500)),  # another /64: 548 bytes
        (NOON + 3, down("192.168.190.7", 900)),  # 928 bytes: warning
    ]
    metering = lab(tmp_path, sent)
    try:
        got = quotas(metering, NOON + 60)
        limits = over(metering, NOON + 60)
    finally:
        metering.close()
    each = got["each"]
    assert host_used(each) == {"fd00:190:0:1::/64": 1096, "192.168.190.7": 928,
                               "fd00:190:0:2::/64": 548}  # fmt: skip
    assert (each["host"], each["state"]) == ("fd00:190:0:1::/64", "CRITICAL")
    assert (each["hosts_critical"], each["hosts_warning"], each["host_count"]) == (1, 1, 3)
    assert limits == [
        OverLimit("each", False, frozenset({"fd00:190:0:1::/64"})),
        OverLimit("all", True, frozenset()),
    ]


def test_hosts_beyond_max_hosts_count_in_other_which_has_no_limit(tmp_path: Path) -> None:
    sent = [(NOON, down("192.168.190.1", 100))]
    sent += [(NOON + i, down(f"192.168.190.{i}", 1000)) for i in range(2, 6)]
    metering = lab(tmp_path, sent, max_hosts=1)
    try:
        got = quotas(metering, NOON + 60)
        limits = over(metering, NOON + 60)
    finally:
        metering.close()
    each = got["each"]
    assert host_used(each) == {"192.168.190.1": 128}
    assert each["other"] == 4 * 1028 and each["state"] == "OK"
    assert limits[0] == OverLimit("each", False, frozenset())


def test_the_quota_period_after_midnight_starts_clean(tmp_path: Path) -> None:
    sent = [(DAY_END - 10, down("192.168.190.1", 2000))]
    metering = lab(tmp_path, sent)
    try:
        before, after = quotas(metering, DAY_END - 1), quotas(metering, DAY_END)
    finally:
        metering.close()
    assert before["each"]["state"] == "CRITICAL"
    assert (after["each"]["state"], after["each"]["hosts"], after["each"]["host"]) == (
        "OK",
        [],
        None,
    )
    spec = metering.config.quotas[0]
    assert quota_period(spec, Calendar(PARIS), DAY_END).begin == DAY_END
