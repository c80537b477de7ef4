"""A host argument read as a monitor's host key: addresses, IPv6 groups, 'other'."""

from __future__ import annotations

import ipaddress

import pytest

from trafmetuxd.addresses import host_text
from trafmetuxd.collector import OTHER_HOST
from trafmetuxd.hostaddr import host_key, parse_host
from trafmetuxd.spec import MonitorSpec

LAN = MonitorSpec(
    "lan",
    hosts=(ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("fd00:1::/48")),
    host_prefix_v6=64,
)


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("192.168.1.23", "192.168.1.23"),
        ("192.168.1.23/32", "192.168.1.23"),
        ("fd00:1:0:7::1", "fd00:1:0:7::/64"),
        ("fd00:1:0:7:ffff:ffff:ffff:ffff", "fd00:1:0:7::/64"),
        ("fd00:1:0:7::/64", "fd00:1:0:7::/64"),
        ("fd00:1:0:7::/80", "fd00:1:0:7::/64"),
        ("other", "other"),
    ],
)
def test_a_host_argument_reads_as_the_host_the_meter_counts_it_under(text: str, host: str) -> None:
    assert host_text(host_key(LAN, parse_host(text))) == host


def test_an_address_in_ungrouped_ipv6_hosts_is_its_own_host() -> None:
    spec = MonitorSpec("six", hosts=(ipaddress.ip_network("fd00:1::/64"),))
    assert host_text(host_key(spec, parse_host("fd00:1::5"))) == "fd00:1::5"


@pytest.mark.parametrize(
    "text", ["", "lan", "192.168.1", "192.168.1.1/33", "fd00:1::5/64", " 1.2.3.4"]
)
def test_a_malformed_host_is_refused_naming_the_value(text: str) -> None:
    with pytest.raises(ValueError, match=f"{text!r} is not an address"):
        parse_host(text)


@pytest.mark.parametrize(
    ("spec", "text", "why"),
    [
        (LAN, "10.0.0.1", r"outside the monitor's hosts \(192.168.1.0/24, fd00:1::/48\)"),
        (LAN, "fd00:2::1", "outside the monitor's hosts"),
        (LAN, "fd00:1::/56", "its IPv6 hosts are /64 groups, not /56 prefixes"),
        (LAN, "192.168.1.0/24", "its IPv4 hosts are addresses, not /24 prefixes"),
        (MonitorSpec("plain"), "192.168.1.23", "the monitor has no `hosts`"),
        (MonitorSpec("plain"), "other", "the monitor has no `hosts`"),
    ],
)
def test_a_host_the_monitor_does_not_count_says_why(spec: MonitorSpec, text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        host_key(spec, parse_host(text))


def test_other_is_a_host_of_every_monitor_with_hosts() -> None:
    assert host_key(LAN, parse_host("other")) == OTHER_HOST
