"""Replay scenarios: a capture made here, metered, and checked against sums computed here."""

from __future__ import annotations

import ipaddress
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, IPv6, Raw, wrpcap, wrpcapng
from scapy.layers.l2 import CookedLinux

from trafmetuxd.metering import Metering
from trafmetuxd.replay import replay, replay_file
from trafmetuxd.spec import DIR_IN, DIR_OUT, Config, MonitorSpec, RuleSpec

LOCAL = ipaddress.ip_network("192.168.190.0/24")
LOCAL6 = ipaddress.ip_network("fd00:190::/64")
T0 = 1_790_000_000.0  # 2026-09-21, well inside a minute: 1_790_000_000 % 60 == 20
CLIENT, SERVER, REMOTE = "192.168.190.62", "192.168.190.11", "203.0.113.9"


@dataclass
class Sent:
    ts: float
    ip: IP | IPv6


def traffic() -> list[Sent]:
    """IMAP connections on four client ports, DNS, ping, IPv6 web: spread over three minutes."""
    out: list[Sent] = []
    t = T0
    for sport in range(2532, 2536):
        for i in range(5):
            t += 3.0
            up = IP(src=REMOTE, dst=SERVER) / TCP(sport=sport, dport=143) / Raw(b"a" * (10 * i))
            down = IP(src=SERVER, dst=REMOTE) / TCP(sport=143, dport=sport) / Raw(b"b" * 300)
            out += [Sent(t, up), Sent(t + 0.5, down)]
    for i in range(10):
        t += 1.7
        query = IP(src=CLIENT, dst="198.51.100.53") / UDP(sport=40000 + i, dport=53) / Raw(b"q")
        out.append(Sent(t, query))
    out.append(Sent(t + 1, IP(src=CLIENT, dst=REMOTE) / ICMP() / Raw(b"p" * 56)))
    out.append(Sent(t + 2, IP(src=REMOTE, dst=CLIENT) / ICMP(type=0) / Raw(b"p" * 56)))
    web = IPv6(src="fd00:190::5", dst="2001:db8::80") / TCP(sport=50123, dport=443)
    out.append(Sent(t + 3, web / Raw(b"x" * 700)))
    return out


def monitors(tmp: Path) -> tuple[MonitorSpec, ...]:
    imap = RuleSpec(protocol=6, port=((143, 143),))
    return (
        MonitorSpec("input", (RuleSpec(direction=DIR_IN),)),
        MonitorSpec("output", (RuleSpec(direction=DIR_OUT),)),
        MonitorSpec("imap", (imap,), flow_log=str(tmp / "logs" / "imap-%Y-%m-%d.log")),
        MonitorSpec("imap-raw", (imap,), compress_ports=False),
        MonitorSpec("all"),
    )


def make_config(tmp: Path, interval: float = 60.0) -> Config:
    return Config(
        path=tmp / "t.toml",
        state_dir=tmp / "state",
        timezone="UTC",
        flush_interval=interval,
        local_networks=(LOCAL, LOCAL6),
        monitors=monitors(tmp),
    )


def direction(p: IP | IPv6) -> int:
    src = ipaddress.ip_address(p.src)
    return DIR_OUT if src in LOCAL or src in LOCAL6 else DIR_IN


def expected(sent: list[Sent]) -> dict[str, dict[int, list[int]]]:
    """Per monitor and minute: [in bytes, in packets, out bytes, out packets], computed here."""
    sums: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0] * 4))
    for s in sent:
        size, d = len(bytes(s.ip)), direction(s.ip)
        names = ["all", "input" if d == DIR_IN else "output"]
        if s.ip.haslayer(TCP) and 143 in (s.ip[TCP].sport, s.ip[TCP].dport):
            names += ["imap", "imap-raw"]
        col = 0 if d == DIR_IN else 2
        for name in names:
            row = sums[name][int(s.ts) // 60]
            row[col] += size
            row[col + 1] += 1
    return sums


def stored(db: Path, table: str = "minute_totals", key: str = "minute") -> dict[str, dict]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            f"SELECT m.name, t.{key}, t.in_bytes, t.in_packets, t.out_bytes, t.out_packets "
            f"FROM {table} t JOIN monitor m ON m.id = t.monitor"
        ).fetchall()
    out: dict[str, dict] = defaultdict(dict)
    for name, k, *row in rows:
        out[name][k] = row
    return out


def write_capture(path: Path, sent: list[Sent], kind: str) -> None:
    frames = []
    for s in sent:
        frame = {"ether": Ether() / s.ip, "sll": CookedLinux() / s.ip}.get(kind, s.ip)
        frame.time = s.ts
        frames.append(frame)
    (wrpcapng if path.suffix == ".pcapng" else wrpcap)(str(path), frames)


def run_replay(tmp: Path, capture: Path, interval: float = 60.0) -> Config:
    cfg = make_config(tmp, interval)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    daemon = Metering(cfg)
    try:
        assert replay(daemon, capture, iface="")
    finally:
        daemon.close()
    return cfg


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.pcap", "ether"), ("a.pcapng", "ether"), ("sll.pcap", "sll"), ("raw.pcap", "raw")],
)
def test_replayed_minute_totals_equal_the_sums_of_the_capture(
    tmp_path: Path, name: str, kind: str
) -> None:
    sent = traffic()
    capture = tmp_path / name
    write_capture(capture, sent, kind)
    cfg = run_replay(tmp_path, capture, interval=45.0)
    want = expected(sent)
    got = stored(cfg.database)
    assert {k: {m: list(r) for m, r in v.items()} for k, v in got.items()} == {
        k: dict(v) for k, v in want.items()
    }


def test_quarter_rollup_holds_the_same_bytes_as_the_minutes(tmp_path: Path) -> None:
    sent = traffic()
    write_capture(tmp_path / "a.pcap", sent, "ether")
    cfg = run_replay(tmp_path, tmp_path / "a.pcap", interval=30.0)
    for name, minutes in expected(sent).items():
        quarters: dict[int, list[int]] = defaultdict(lambda: [0] * 4)
        for minute, row in minutes.items():
            quarters[minute * 60 // 900] = [
                a + b for a, b in zip(quarters[minute * 60 // 900], row, strict=True)
            ]
        got = stored(cfg.database, "quarter_totals", "quarter")[name]
        assert {q: list(r) for q, r in got.items()} == dict(quarters)


def test_flow_log_collapses_client_ports_and_adds_up_to_the_totals(tmp_path: Path) -> None:
    sent = traffic()
    write_capture(tmp_path / "a.pcap", sent, "ether")
    cfg = run_replay(tmp_path, tmp_path / "a.pcap", interval=3600.0)
    logs = list((tmp_path / "logs").glob("imap-*.log"))
    assert len(logs) == 1
    lines = logs[0].read_text().splitlines()
    assert lines[0].startswith("--- Time: ")
    flows = [line.split() for line in lines[1:]]
    up = sum(len(bytes(s.ip)) for s in sent if s.ip.haslayer(TCP) and s.ip[TCP].dport == 143)
    down = sum(len(bytes(s.ip)) for s in sent if s.ip.haslayer(TCP) and s.ip[TCP].sport == 143)
    assert flows == [["TCP", REMOTE, "65535", SERVER, "143", str(up), str(down)]]
    with sqlite3.connect(cfg.database) as conn:
        raw = conn.execute(
            "SELECT client_port, sent, received FROM flow JOIN flush ON flush.id = flow.flush "
            "JOIN monitor ON monitor.id = flush.monitor WHERE monitor.name = 'imap-raw' "
            "ORDER BY client_port"
        ).fetchall()
    assert [r[0] for r in raw] == [2532, 2533, 2534, 2535]
    assert sum(r[1] for r in raw) == up
    assert sum(r[2] for r in raw) == down


def test_a_capture_truncated_to_128_bytes_still_counts_full_ip_lengths(tmp_path: Path) -> None:
    sent = [Sent(T0 + i, IP(src=REMOTE, dst=CLIENT) / UDP() / Raw(b"z" * 1400)) for i in range(4)]
    frames = []
    for s in sent:
        frame = Raw(bytes(s.ip)[:128])
        frame.time = s.ts
        frames.append(frame)
    wrpcap(str(tmp_path / "t.pcap"), frames, linktype=101)
    cfg = run_replay(tmp_path, tmp_path / "t.pcap")
    got = stored(cfg.database)["input"]
    assert sum(r[0] for r in got.values()) == 4 * 1428
    assert sum(r[1] for r in got.values()) == 4


def test_non_ip_frames_are_skipped_by_reason_not_called_malformed(tmp_path: Path) -> None:
    from scapy.all import ARP
    from scapy.layers.ppp import PPP, PPPoE

    arp = Ether() / ARP()
    arp.time = T0
    ping = Ether() / IP(src=REMOTE, dst=CLIENT) / ICMP()
    ping.time = T0 + 1
    lcp = Ether(type=0x8864) / PPPoE(sessionid=7) / PPP(proto=0xC021) / Raw(b"\x01\x01\x00\x04")
    lcp.time = T0 + 2
    wrpcap(str(tmp_path / "m.pcap"), [arp, ping, lcp])
    cfg = make_config(tmp_path)
    cfg.state_dir.mkdir(parents=True)
    daemon = Metering(cfg)
    try:
        summary = replay_file(daemon, tmp_path / "m.pcap", iface="")
        assert daemon.meter.stats.malformed == 0
        assert daemon.meter.stats.in_packets == 1
    finally:
        daemon.close()
    assert summary.skipped == {"ARP": 1, "PPP protocol 0xc021": 1}
    line = summary.line()
    assert "3 frames, 1 IP packets" in line and "skipped 2 (ARP 1, PPP protocol 0xc021 1)" in line
    assert sum(r[1] for r in stored(cfg.database)["all"].values()) == 1


def test_pppoe_session_frames_of_a_dsl_gateway_are_metered(tmp_path: Path) -> None:
    from scapy.layers.ppp import PPP, PPPoE

    frames = []
    for i, (src, dst) in enumerate(((CLIENT, REMOTE), (REMOTE, CLIENT))):
        for proto, inner in (
            (0x0021, IP(src=src, dst=dst)),
            (0x0057, IPv6(src="fd00::1", dst="fd00::2")),
        ):
            frame = (
                Ether(type=0x8864)
                / PPPoE(sessionid=9)
                / PPP(proto=proto)
                / inner
                / UDP()
                / Raw(bytes(100))
            )
            frame.time = T0 + i
            frames.append(frame)
    wrpcap(str(tmp_path / "dsl.pcap"), frames)
    cfg = make_config(tmp_path)
    cfg.state_dir.mkdir(parents=True)
    daemon = Metering(cfg)
    try:
        summary = replay_file(daemon, tmp_path / "dsl.pcap", iface="")
    finally:
        daemon.close()
    assert (summary.frames, summary.packets, summary.skipped) == (4, 4, {})
    assert summary.bytes == 2 * (20 + 8 + 100) + 2 * (40 + 8 + 100)
