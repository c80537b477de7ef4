"""A NAT gateway metered with capture.hooks = "forward": both directions belong to the LAN host.

The daemon runs in the gateway namespace of harness.natlab (MASQUERADE on wan0, one DNAT port
forward per protocol) and meters every interface but lo. The monitor "wan" takes what crosses
wan0 and keeps per-host totals for the LAN prefixes; every LAN host's totals must equal, to the
byte, what nft counted on that host's own interface.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.daemon import Daemon
from harness.natlab import (
    FORWARDED_TCP,
    FORWARDED_UDP,
    GW_WAN,
    HOST1,
    HOST2,
    SERVER,
    NatLab,
    nat_lab,
)
from harness.netns import sink_result, start_sink, traffic

LAN_MONITORS = """
[[monitor]]
name = "wan"
rules = [{ interface = "wan0" }]
hosts = ["192.168.1.0/24", "192.168.2.0/24"]

[[monitor]]
name = "all"
"""
TCP_BYTES = 1_000_000
UDP_COUNT, UDP_SIZE = 200, 1000
GATEWAY_PINGS = 10
ICMP_ECHO_V4 = 20 + 8 + 56
HostRow = tuple[int, int, int, int]  # in packets, in bytes, out packets, out bytes


@pytest.fixture
def lab() -> Iterator[NatLab]:
    """The four namespaces, quiet."""
    with nat_lab() as made:
        made.settle()
        yield made


def forward_daemon(lab: NatLab, tmp_path: Path, monitors: str) -> Daemon:
    """The daemon in the gateway with the forward hooks, started, counters then zeroed."""
    capture = {"hooks": '"forward"'}
    daemon = Daemon(lab, tmp_path, monitors=monitors, capture=capture)  # type: ignore[arg-type]
    daemon.start()
    lab.settle()
    lab.reset_counters()
    return daemon


def hosts_of(daemon: Daemon, monitor: str) -> dict[str, HostRow]:
    """The daemon's `hosts` answer for a monitor: host -> (in/out packets and bytes)."""
    reply = daemon.request("hosts", monitor=monitor, limit=100_000)
    assert reply["ok"], reply
    rows = reply["result"]["hosts"]  # type: ignore[index]
    return {r["host"]: (r["in_packets"], r["in"], r["out_packets"], r["out"]) for r in rows}


def audit_agrees(daemon: Daemon, timeout: float = 15.0) -> dict[str, object]:
    """The status audit once the meter has shipped what the queue rules counted."""
    deadline = time.monotonic() + timeout
    while True:
        audit = daemon.status()["audit"]
        sides = [audit[d] for d in ("in", "out")]  # type: ignore[index]
        if all(
            s["kernel_packets"] == s["metered_packets"] and s["kernel_bytes"] == s["metered_bytes"]
            for s in sides
        ):
            return audit  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"the rule counters never matched the meter: {audit}")
        time.sleep(0.3)


def lan_traffic(lab: NatLab) -> None:
    """Uploads, downloads and the port forwards, TCP and UDP, from both LAN hosts; all complete."""
    h1, h2, server = lab.host1, lab.host2, lab.server
    sink = start_sink(server, "tcp-sink", "6001", "60")
    traffic(h1, "tcp-send", SERVER, "6001", str(TCP_BYTES), timeout=90)
    assert sink_result(sink) == TCP_BYTES
    sink = start_sink(server, "udp-sink", "5001", str(UDP_COUNT), "20")
    traffic(h2, "udp-send", SERVER, "5001", str(UDP_COUNT), str(UDP_SIZE), "2000")
    assert sink_result(sink) == UDP_COUNT
    source = start_sink(server, "tcp-source", "6002", str(TCP_BYTES))
    assert traffic(h2, "tcp-fetch", SERVER, "6002", timeout=90).split() == [str(TCP_BYTES)]
    sink_result(source)
    source = start_sink(server, "udp-source", "5002", str(UDP_COUNT), str(UDP_SIZE))
    assert traffic(h1, "udp-fetch", SERVER, "5002", str(UDP_COUNT)).split() == [str(UDP_COUNT)]
    sink_result(source)
    sink = start_sink(h2, "tcp-sink", str(FORWARDED_TCP), "60")
    traffic(server, "tcp-send", GW_WAN, str(FORWARDED_TCP), str(TCP_BYTES), timeout=90)
    assert sink_result(sink) == TCP_BYTES
    sink = start_sink(h2, "udp-sink", str(FORWARDED_UDP), str(UDP_COUNT), "20")
    traffic(server, "udp-send", GW_WAN, str(FORWARDED_UDP), str(UDP_COUNT), str(UDP_SIZE), "2000")
    assert sink_result(sink) == UDP_COUNT


def test_each_lan_host_behind_nat_is_metered_to_the_byte_in_both_directions(
    lab: NatLab, tmp_path: Path
) -> None:
    daemon = forward_daemon(lab, tmp_path, LAN_MONITORS)
    lan_traffic(lab)
    lab.ping(lab.gw, SERVER, GATEWAY_PINGS)  # the gateway's own traffic
    lab.settle()
    nft = lab.counters()
    hosts = hosts_of(daemon, "wan")
    audit = audit_agrees(daemon)
    assert daemon.terminate() == 0, daemon.log()
    stored = daemon.stored()

    # Downloads arrive on wan0 addressed to the LAN host (after de-NAT), uploads leave before
    # SNAT from it: each host's totals are exactly what crossed its own interface.
    assert set(hosts) == {HOST1, HOST2}  # the gateway's addresses are no LAN host
    for host, name, link in ((HOST1, "host1", "lan1"), (HOST2, "host2", "lan2")):
        assert hosts[host] == (*nft[name], *nft[link]), host
    assert hosts[HOST1][1] > UDP_COUNT * UDP_SIZE  # in: its UDP download
    assert hosts[HOST1][3] > TCP_BYTES  # out: its TCP upload
    assert hosts[HOST2][1] > 2 * TCP_BYTES + UDP_COUNT * UDP_SIZE  # in: download, port forwards
    assert hosts[HOST2][3] > UDP_COUNT * UDP_SIZE  # out: its UDP upload

    # The monitor has everything that crossed wan0: the server's view, the other way round;
    # what no host has is the gateway's own ping, exactly.
    wan = stored["wan"]
    assert wan == (*nft["wan0"], *nft["server"])
    host_sum = [sum(row[i] for row in hosts.values()) for i in range(4)]
    own = (GATEWAY_PINGS, GATEWAY_PINGS * ICMP_ECHO_V4)
    assert (wan[0] - host_sum[0], wan[1] - host_sum[1]) == own
    assert (wan[2] - host_sum[2], wan[3] - host_sum[3]) == own

    # A forwarded packet counts in on lan and out on wan (or the other way): "all" sees each
    # of them twice, exactly as the queue rules' counting chains did.
    in_, out = audit["in"], audit["out"]  # type: ignore[index]
    assert stored["all"] == (
        in_["kernel_packets"], in_["kernel_bytes"], out["kernel_packets"], out["kernel_bytes"],
    )  # fmt: skip
    assert stored["all"][1] == nft["lan1"][1] + nft["lan2"][1] + nft["wan0"][1]


SPRAYED, MAX_HOSTS, SPRAY_SIZE = 10_000, 1000, 20
SPRAY_MONITORS = f"""
[[monitor]]
name = "wan"
rules = [{{ interface = "wan0" }}]
hosts = ["10.77.0.0/16"]
max_hosts = {MAX_HOSTS}
"""


def test_ten_thousand_hosts_beyond_max_hosts_stay_exact_in_total(
    lab: NatLab, tmp_path: Path
) -> None:
    daemon = forward_daemon(lab, tmp_path, SPRAY_MONITORS)
    sink = start_sink(lab.server, "udp-sink", "5003", str(SPRAYED), "30")
    spray = [SERVER, "5003", str(SPRAYED), str(SPRAY_SIZE), "4000", "10.77.0.1"]
    traffic(lab.host1, "udp-spray", *spray, timeout=60)
    assert sink_result(sink) == SPRAYED
    lab.settle()
    nft = lab.counters()
    hosts = hosts_of(daemon, "wan")
    audit_agrees(daemon)
    assert daemon.terminate() == 0, daemon.log()
    stored = daemon.stored()

    size = 28 + SPRAY_SIZE
    assert nft["server"] == (SPRAYED, SPRAYED * size)
    assert stored["wan"] == (0, 0, SPRAYED, SPRAYED * size)
    other = hosts.pop("other")
    # Every named host sent its one datagram; the rest are in "other", none lost or doubled.
    assert all(row == (0, 0, 1, size) for row in hosts.values())
    assert len(hosts) < SPRAYED
    assert other == (0, 0, SPRAYED - len(hosts), (SPRAYED - len(hosts)) * size)
    assert host_overflow(daemon.database) > 0  # what status reports per flush


def host_overflow(database: Path) -> int:
    """The host attributions that went to "other", summed over the stored flushes."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT sum(host_overflow) FROM flush").fetchone()[0])
    finally:
        db.close()
