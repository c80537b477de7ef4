"""The one table of IP protocol names: config rules, flows, top and the flow log use these. Pure.

Names are lower case here; the classic flow log prints them upper case (TCP, ICMPV6, IGMP).
A protocol without a name is shown as its number.
"""

from __future__ import annotations

NAMES = {
    1: "icmp",
    2: "igmp",
    6: "tcp",
    17: "udp",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmpv6",
    132: "sctp",
    136: "udplite",
}
NUMBERS = {name: number for number, name in NAMES.items()}


def name(number: int) -> str:
    """The protocol's name, or its number as text when it has none."""
    return NAMES.get(number) or str(number)
