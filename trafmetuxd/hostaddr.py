"""A host asked for by text ("192.168.1.23", "fd00:1::/64", "other") -> a monitor's host key."""

from __future__ import annotations

import ipaddress

from trafmetuxd.collector import OTHER_HOST, HostKey, HostMatcher
from trafmetuxd.spec import MonitorSpec

# what a host argument was read as: (family, address, prefix length); "other" is OTHER_HOST
Asked = HostKey


def parse_host(text: str) -> Asked:
    """An address, an IPv6 prefix or "other"; ValueError naming the value when none of these."""
    if text == "other":
        return OTHER_HOST
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an address, an IPv6 prefix such as 'fd00:1::/64' or 'other'"
        ) from None
    return (net.version, int(net.network_address), net.prefixlen)


def host_key(spec: MonitorSpec, asked: Asked) -> HostKey:
    """The host of `spec` that `asked` counts under; ValueError saying why there is none.

    An address inside a grouped IPv6 prefix maps to its group; a prefix is a host when it is
    exactly one of the monitor's groups (or lies inside one).
    """
    if not spec.hosts:
        raise ValueError("the monitor has no `hosts` (per-host totals are off)")
    if asked == OTHER_HOST:
        return OTHER_HOST
    family, addr, prefix = asked  # (family, address, prefix length)
    group = 32 if family == 4 else spec.host_prefix_v6
    if prefix < group:
        unit = "addresses" if family == 4 else f"/{group} groups"
        raise ValueError(f"its IPv{family} hosts are {unit}, not /{prefix} prefixes")
    key = HostMatcher(spec).key(family, addr)
    if key is None:
        nets = ", ".join(str(n) for n in spec.hosts)
        raise ValueError(f"it lies outside the monitor's hosts ({nets})")
    return key
