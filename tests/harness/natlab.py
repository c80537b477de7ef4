"""A NAT gateway lab in four network namespaces; always torn down.

    host1 (192.168.1.11) --- lan1 \
                                   gw (MASQUERADE on wan0, DNAT 8080/tcp, 9090/udp -> host2)
    host2 (192.168.2.12) --- lan2 /  wan0 (203.0.113.1) --- server (203.0.113.2)

IPv4 only (IPv6 is disabled everywhere, so nothing but the test's own packets crosses a link),
offloads off, neighbours pinned. Every link is counted where the packets arrive, before
anything else sees them: host1, host2 and the server count what arrives on their eth0 (nft
counter "in"), the gateway what arrives on lan1, lan2 and wan0 (counters of those names), so a
host's out is counted at the gateway's end of its link. Not at the sender: even with every
offload off, TCP hands the output hooks GSO super-packets that the device then segments.
Nothing here touches the namespace the tests run in.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import time
from collections.abc import Iterator

from .netns import HERE, Namespace

_NUMBERS = itertools.count()

HOST1, HOST2 = "192.168.1.11", "192.168.2.12"
GW_LAN1, GW_LAN2, GW_WAN, SERVER = "192.168.1.1", "192.168.2.1", "203.0.113.1", "203.0.113.2"
FORWARDED_TCP, FORWARDED_UDP = 8080, 9090  # DNAT on the gateway's WAN address -> host2
SPRAY_PREFIX = "10.77.0.0/16"  # sources host1 may send from (routed to it by the gateway)

_SYSCTLS = (
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
)
_GATEWAY_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
)


def arrivals(names: dict[str, str]) -> str:
    """An nft table counting what arrives on each interface: counter name -> interface."""
    counters = "".join(f"  counter {name} {{}}\n" for name in names)
    rules = "".join(f'    iifname "{dev}" counter name "{name}"\n' for name, dev in names.items())
    return (
        "table inet tmx {\n"
        f"{counters}"
        "  chain pre {\n"
        "    type filter hook prerouting priority -400; policy accept;\n"
        f"{rules}"
        "  }\n"
        "}\n"
    )


class NatLab:
    """The four namespaces. `a` and `a_if` are what harness.daemon.Daemon runs the daemon with:
    in the gateway, metering every interface but lo."""

    a_if = "*"

    def __init__(self, prefix: str) -> None:
        self.gw = Namespace(prefix + "-gw")
        self.host1 = Namespace(prefix + "-h1")
        self.host2 = Namespace(prefix + "-h2")
        self.server = Namespace(prefix + "-srv")
        self.a = self.gw
        self.all = (self.gw, self.host1, self.host2, self.server)

    # (gateway interface, gateway address, peer namespace, peer address)
    def links(self) -> tuple[tuple[str, str, Namespace, str], ...]:
        """The three links of the gateway."""
        return (
            ("lan1", GW_LAN1, self.host1, HOST1),
            ("lan2", GW_LAN2, self.host2, HOST2),
            ("wan0", GW_WAN, self.server, SERVER),
        )

    def setup(self) -> None:
        """Namespaces, links, addresses, routes, NAT, counters; then one ping across each."""
        for ns in self.all:
            subprocess.run(["ip", "netns", "add", ns.name], check=True, timeout=30)
            for setting in _SYSCTLS:
                ns.run(["sysctl", "-q", "-w", setting])
            ns.run(["ip", "link", "set", "lo", "up"])
        for setting in _GATEWAY_SYSCTLS:
            self.gw.run(["sysctl", "-q", "-w", setting])
        for dev, gw_addr, peer, peer_addr in self.links():
            self.gw.run(
                ["ip", "link", "add", dev, "type", "veth", "peer", "eth0", "netns", peer.name]
            )
            self.gw.run(["ip", "addr", "add", f"{gw_addr}/24", "dev", dev])
            peer.run(["ip", "addr", "add", f"{peer_addr}/24", "dev", "eth0"])
            for ns, name in ((self.gw, dev), (peer, "eth0")):
                ns.run(["ethtool", "-K", name, "gro", "off", "gso", "off", "tso", "off"])
                ns.run(["ip", "link", "set", name, "up"])
            peer.run(["nft", "-f", "-"], input=arrivals({"in": "eth0"}))
            self._pin(dev, gw_addr, peer, peer_addr)
        for host, gw_addr in ((self.host1, GW_LAN1), (self.host2, GW_LAN2)):
            host.run(["ip", "route", "add", "default", "via", gw_addr])
        self.gw.run(["nft", "-f", "-"], input=arrivals({dev: dev for dev, *_ in self.links()}))
        self.gw.run(["ip", "route", "add", SPRAY_PREFIX, "via", HOST1, "dev", "lan1"])
        self._nat()
        for host in (self.host1, self.host2):
            self.ping(host, SERVER, 1)

    def _pin(self, dev: str, gw_addr: str, peer: Namespace, peer_addr: str) -> None:
        """Permanent neighbour entries both ways: no ARP ever joins the counts."""
        gw_mac, peer_mac = self.gw.mac(dev), peer.mac("eth0")
        self.gw.run(["ip", "neigh", "replace", peer_addr, "lladdr", peer_mac, "dev", dev,
                     "nud", "permanent"])  # fmt: skip
        peer.run(["ip", "neigh", "replace", gw_addr, "lladdr", gw_mac, "dev", "eth0",
                  "nud", "permanent"])  # fmt: skip

    def _nat(self) -> None:
        """MASQUERADE on the WAN side; TCP 8080 and UDP 9090 forwarded to host2."""
        nat = ["iptables", "-w", "-t", "nat"]
        self.gw.run([*nat, "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE"])
        for proto, port in (("tcp", FORWARDED_TCP), ("udp", FORWARDED_UDP)):
            match = ["-i", "wan0", "-p", proto, "--dport", str(port)]
            target = ["-j", "DNAT", "--to-destination", f"{HOST2}:{port}"]
            self.gw.run([*nat, "-A", "PREROUTING", *match, *target])

    def ping(self, ns: Namespace, addr: str, count: int) -> None:
        """`count` echo requests, every one answered."""
        out = ns.run(ns.python(str(HERE / "traffic.py"), "ping", addr, str(count))).stdout
        assert out.split() == [str(count)], out

    def counters(self) -> dict[str, tuple[int, int]]:
        """(packets, bytes) that arrived: "host1", "host2", "server" and the gateway's "lan1",
        "lan2" (what host1 and host2 sent) and "wan0" (what the server sent)."""
        gw = self.gw.nft_counters()
        peers = {"host1": self.host1, "host2": self.host2, "server": self.server}
        return {**gw, **{name: ns.nft_counters()["in"] for name, ns in peers.items()}}

    def reset_counters(self) -> None:
        """Zero every nft counter of the lab."""
        for ns in self.all:
            ns.reset_counters()

    def settle(self, quiet: float = 0.5, timeout: float = 15.0) -> None:
        """Wait until no packet crosses any counted link for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last = self.counters()
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.counters()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
        raise RuntimeError("the lab never went quiet")

    def teardown(self) -> None:
        """Kill started processes, delete the namespaces (the veths go with them)."""
        for ns in self.all:
            ns.kill_all()
        for ns in self.all:
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30)


@contextlib.contextmanager
def nat_lab() -> Iterator[NatLab]:
    """A fresh lab with unique namespace names, torn down on every path."""
    lab = NatLab(f"tmx-{os.getpid()}-{next(_NUMBERS)}")
    try:
        lab.setup()
        yield lab
    finally:
        lab.teardown()
