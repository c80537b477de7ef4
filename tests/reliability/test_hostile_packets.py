"""Crafted malformed and hostile packets sent on the wire into the metered namespace.

The daemon stays up, its totals still equal the kernel's counters, no stage raised, and
nothing a packet carries (format strings, paths, shell syntax) reaches its log, a file name
or a shell.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness import packets as p
from harness.live import Live, expected, fresh_counters
from harness.netns import Pair

SENDER = """
import sys
from scapy.all import Ether, Raw, sendp
mac, iface = sys.argv[1], sys.argv[2]
frames = []
for line in sys.stdin:
    data = bytes.fromhex(line.strip())
    kind = 0x86DD if data[0] >> 4 == 6 else 0x0800
    frames.append(Ether(dst=mac, type=kind) / Raw(data))
sendp(frames, iface=iface, verbose=False)
print(len(frames))
"""

MONITORS = """
[[monitor]]
name = "all"
flow_log = "flows/{monitor}-%Y%m%d.log"

[[monitor]]
name = "udp"
rules = [{ protocol = "udp" }]
"""


def hostile(pair: Pair, canary: Path) -> list[bytes]:
    """Malformed and hostile IP packets from b to a (some the kernel itself drops)."""
    src4, dst4, src6, dst6 = pair.b4, pair.a4, pair.b6, pair.a6
    evil = (f"%s%s%n%x{{monitor}} ../../../etc/passwd $(touch {canary}) `touch {canary}` "
            "\x00\r\n\x1b[2J; rm -rf / |").encode()  # fmt: skip
    v4 = {"src": src4, "dst": dst4}
    v6 = {"src": src6, "dst": dst6}
    loop = p.options_header(p.DEST_OPTIONS)
    out = [
        p.ipv4(p.UDP, p.udp(4444, 5555, evil), **v4),
        p.ipv4(253, evil, **v4),
        p.ipv4(p.TCP, p.tcp(80, 8080, payload=evil)[:4], **v4),  # TCP header cut short
        p.ipv4(p.UDP, p.udp(1, 2, evil), options=bytes([7, 39]) + bytes(38), **v4),  # IHL 15
        p.ipv4(p.UDP, p.udp(1, 2, evil)[:8], frag_offset=100, **v4),  # a later fragment
        p.ipv4(p.UDP, p.udp(1, 2, evil), more_fragments=True, **v4),  # a first fragment
        p.ipv4(p.UDP, p.udp(3, 4, evil), ihl=3, **v4),  # bad IHL: the kernel drops it
        p.ipv4(p.UDP, p.udp(3, 4, evil), total_length=30, **v4) + evil,  # frame longer than IP
        p.ipv6(p.DEST_OPTIONS, loop * 30 + p.udp(5, 6, evil), **v6),  # 30-deep chain
        p.ipv6(p.ROUTING, p.routing_header(p.ROUTING) * 12 + evil, **v6),  # routing loop
        p.ipv6(p.FRAGMENT, p.fragment_header(p.UDP, 77) + evil, **v6),  # a later fragment
        p.ipv6(p.FRAGMENT, p.fragment_header(p.TCP, 0, True) + p.tcp(22, 23, payload=evil), **v6),
        p.ipv6(p.UDP, p.udp(7, 8, evil), payload_length=len(evil) + 8, **v6),
        p.ipv6(p.TCP, b"\x00\x50", **v6),  # transport header cut short
        p.ipv6(p.HOP_BY_HOP, p.options_header(p.UDP, evil[:20]) + p.udp(9, 9), **v6),
        p.ipv6(250, evil, **v6),
    ]
    return out * 25


def test_malformed_and_hostile_packets_on_the_wire(pair: Pair, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    fresh_counters(pair)
    live = Live(pair, tmp_path, monitors=MONITORS)
    live.start()
    mac = pair.a.run(["cat", f"/sys/class/net/{pair.a_if}/address"]).stdout.strip()
    frames = hostile(pair, canary)
    sent = pair.b.run(
        pair.b.python("-c", SENDER, mac, pair.b_if),
        input="".join(f.hex() + "\n" for f in frames),
        timeout=120,
    )
    assert int(sent.stdout.split()[-1]) == len(frames)
    pair.settle()

    status = live.status()  # still up and answering
    meter = status["meter"]
    assert meter["errors"] == 0  # type: ignore[index]
    assert meter["in_packets"] > 0  # type: ignore[index]
    a, b, stored = live.totals_after_stop()
    assert stored["all"] == expected("all", a, b)
    assert stored["udp"] == expected("udp", a, b)

    log = live.log()
    for marker in ("passwd", "pwned", "%n", "{monitor}", "rm -rf"):
        assert marker not in log
    assert "Traceback" not in log
    assert not canary.exists()
    made = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*"))
    assert all(name.startswith(("state", "trafmetux", "notify-")) for name in made), (
        made
    )  # nothing named after packet content, nothing outside the configured paths
    flow_logs = list((tmp_path / "state" / "flows").glob("all-*.log"))
    assert flow_logs and all(b"passwd" not in f.read_bytes() for f in flow_logs)
    print("hostile packets:", len(frames), "frames,", os.path.basename(str(flow_logs[0])))
