"""Address ints as text, formatted the same way everywhere (store, flow logs, reports)."""

from __future__ import annotations

import ipaddress
import socket

_V4 = socket.AF_INET
_V6 = socket.AF_INET6
_LOW_V6 = 1 << 48  # ::/80 holds the IPv4-mapped and -compatible forms libc writes differently


def address_text(family: int, value: int) -> str:
    """RFC 5952 text of an IPv4 (family 4) or IPv6 (family 6) address given as an int.

    inet_ntop is three times faster than ipaddress; for the few addresses where the two differ
    (IPv4-mapped and IPv4-compatible IPv6) ipaddress's text is used, so stored, logged and
    reported text always agree.
    """
    try:
        if family == 4:
            return socket.inet_ntop(_V4, value.to_bytes(4, "big"))
        if value < _LOW_V6:
            return str(ipaddress.IPv6Address(value))
        return socket.inet_ntop(_V6, value.to_bytes(16, "big"))
    except OverflowError:
        raise ValueError(f"{value} is not an IPv{family} address") from None


def host_text(host: tuple[int, ...]) -> str:
    """A host key's text: "192.168.1.23", an IPv6 group as "fd00:1::/64", family 0 "other"."""
    family, addr, prefix = host
    if family == 0:
        return "other"
    text = address_text(family, addr)
    return text if prefix in (32, 128) else f"{text}/{prefix}"
