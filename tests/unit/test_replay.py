"""Replay scenarios: a capture made here, metered, and checked against sums computed here."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
import struct
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, IPv6, Raw, wrpcap, wrpcapng
from scapy.layers.l2 import CookedLinux

from trafmetuxd.collector import Snapshot
from trafmetuxd.metering import Metering
from trafmetuxd.notify import Notifier
from trafmetuxd.pcap import CaptureFileError
from trafmetuxd.replay import (
    AlreadyReplayedError,
    fingerprint,
    replay,
    replay_file,
    report_clock,
)
from trafmetuxd.service import Service
from trafmetuxd.spec import DIR_IN, DIR_OUT, Config, MonitorSpec, RetentionSpec, RuleSpec

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


def daemon_for(tmp: Path) -> Metering:
    cfg = make_config(tmp)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    return Metering(cfg)


def all_bytes(db: Path) -> int:
    return sum(r[0] + r[2] for r in stored(db)["all"].values())


def test_replaying_the_same_capture_twice_is_refused_without_force(tmp_path: Path) -> None:
    sent = traffic()
    write_capture(tmp_path / "a.pcap", sent, "ether")
    copy = tmp_path / "renamed.pcap"
    copy.write_bytes((tmp_path / "a.pcap").read_bytes())
    total = sum(len(bytes(s.ip)) for s in sent)
    daemon = daemon_for(tmp_path)
    try:
        replay_file(daemon, tmp_path / "a.pcap", iface="")
        assert all_bytes(daemon.config.database) == total
        for again in (tmp_path / "a.pcap", copy):  # the same bytes under another name too
            with pytest.raises(AlreadyReplayedError) as refused:
                replay_file(daemon, again, iface="")
            message = str(refused.value)
            assert message.startswith(f"{again}: it was already replayed into ")
            assert "replaying it again would count its traffic twice. --force" in message
            assert all_bytes(daemon.config.database) == total  # nothing counted
        assert f"(as {tmp_path / 'a.pcap'})" in message  # the copy names the original
        started = daemon.store.replays_of(fingerprint(copy))[0].started
        assert f"{datetime.fromtimestamp(started, UTC):%Y-%m-%d %H:%M:%S} UTC" in message
        replay_file(daemon, copy, iface="", force=True)
        assert all_bytes(daemon.config.database) == 2 * total
        assert len(daemon.store.replays_of(fingerprint(copy))) == 2
    finally:
        daemon.close()


def test_a_replay_record_holds_what_the_capture_held(tmp_path: Path) -> None:
    sent = traffic()
    write_capture(tmp_path / "a.pcap", sent, "ether")
    daemon = daemon_for(tmp_path)
    try:
        summary = replay_file(daemon, tmp_path / "a.pcap", iface="")
    finally:
        daemon.close()
    with sqlite3.connect(daemon.config.database) as conn:
        row = conn.execute(
            "SELECT sha256, path, size, first_packet, last_packet, last_flush, frames, packets, "
            "bytes, started <= finished FROM replay"
        ).fetchall()
    capture = tmp_path / "a.pcap"
    first, last = min(s.ts for s in sent), max(s.ts for s in sent)
    assert row == [
        (fingerprint(capture), str(capture), capture.stat().st_size, pytest.approx(first),
         pytest.approx(last), summary.end, len(sent), len(sent), summary.bytes, 1),
    ]  # fmt: skip
    assert summary.end is not None and summary.end > last


def raw_ip_capture(path: Path, count: int, cut: int = 0) -> int:
    """`count` 128-byte UDP packets a second apart (raw IP link type), the file cut short by
    `cut` bytes; the IP bytes it holds in full."""
    packet = bytes(IP(src=REMOTE, dst=CLIENT) / UDP() / Raw(b"z" * 100))
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    records = b"".join(
        struct.pack("<IIII", int(T0) + i, 0, len(packet), len(packet)) + packet
        for i in range(count)
    )
    path.write_bytes((header + records)[: len(header) + len(records) - cut])
    return count * len(packet)


def test_a_repeat_of_an_interrupted_replay_says_it_did_not_finish(tmp_path: Path) -> None:
    capture = tmp_path / "cut.pcap"
    total = raw_ip_capture(capture, 5000, cut=20)  # more than a batch: some flushes commit
    daemon = daemon_for(tmp_path)
    try:
        with pytest.raises(CaptureFileError, match="truncated record"):
            replay_file(daemon, capture, iface="")
        assert 0 < all_bytes(daemon.config.database) < total
        with pytest.raises(AlreadyReplayedError, match=r"started .* and did not finish"):
            replay_file(daemon, capture, iface="")
    finally:
        daemon.close()


def test_the_command_line_refuses_a_repeat_with_exit_status_2(tmp_path: Path) -> None:
    sent = traffic()
    write_capture(tmp_path / "a.pcap", sent, "ether")
    state = tmp_path / "state"
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'state_dir = "{state}"\nsocket = "{tmp_path}/s.sock"\n'
                   '[[monitor]]\nname = "all"\n')  # fmt: skip
    argv = [sys.executable, "-m", "trafmetuxd", "--config", str(cfg), "--replay"]
    first = subprocess.run([*argv, str(tmp_path / "a.pcap")], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert first.returncode == 0, first
    again = subprocess.run([*argv, str(tmp_path / "a.pcap")], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert again.returncode == 2, again
    assert again.stderr.startswith(f"trafmetuxd: {tmp_path / 'a.pcap'}: it was already replayed")
    assert again.stdout == ""
    forced = subprocess.run([*argv, str(tmp_path / "a.pcap"), "--force"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert forced.returncode == 0, forced
    assert forced.stdout.startswith(f"replayed {tmp_path / 'a.pcap'}: {len(sent)} frames")


def minute_count(db: Path) -> int:
    return sum(len(v) for v in stored(db).values())


def flow_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM flow").fetchone()[0])


def test_retention_never_deletes_what_a_replay_wrote(tmp_path: Path) -> None:
    sent = traffic()  # from T0, months before the wall clock: far beyond 7 and 30 days
    write_capture(tmp_path / "a.pcap", sent, "ether")
    daemon = daemon_for(tmp_path)
    db = daemon.config.database
    assert daemon.config.retention == RetentionSpec()  # the defaults: 7 days, 30 days
    try:
        # detail written live two days before the capture: not a replay's, so retention applies
        live = Snapshot({int(T0) // 60 - 2880: [5, 1, 0, 0]}, {}, 0)
        daemon.store.write(T0 - 2 * 86400, [("all", live)])
        summary = replay_file(daemon, tmp_path / "a.pcap", iface="")
        minutes, flows = minute_count(db), flow_count(db)
        # what --serve does a flush interval later: a flush by the wall clock, with its prune
        assert daemon.flush_now(time.time())
        assert minute_count(db) == minutes - 1  # only the live minute went
        assert flow_count(db) == flows > 0
        assert all_bytes(db) == sum(len(bytes(s.ip)) for s in sent)
        # retention counts from when the replay ran: 8 days later its minutes go, flows stay
        daemon.store.prune(time.time() + 8 * 86400, daemon.config.retention)
        assert minute_count(db) == 0 and flow_count(db) == flows
        daemon.store.prune(time.time() + 31 * 86400, daemon.config.retention)
        assert flow_count(db) == 0
        assert summary.bytes + 5 == sum(  # totals stay, the live day's included
            r[0] + r[2] for r in stored(db, "day_totals", "day")["all"].values()
        )
    finally:
        daemon.close()


def test_quarter_retention_spares_the_utc_days_a_replay_wrote(tmp_path: Path) -> None:
    write_capture(tmp_path / "a.pcap", traffic(), "ether")
    daemon = daemon_for(tmp_path)
    db = daemon.config.database
    try:
        old = Snapshot({int(T0) // 60 - 3 * 1440: [5, 1, 0, 0]}, {}, 0)
        daemon.store.write(T0 - 3 * 86400, [("all", old)])
        replay_file(daemon, tmp_path / "a.pcap", iface="")
        before = {t: stored(db, f"{t}_totals", t)["all"] for t in ("quarter", "hour", "day")}
        daemon.store.prune(time.time(), RetentionSpec(minutes=0, flows=0, quarters=86400))
        after = {t: stored(db, f"{t}_totals", t)["all"] for t in ("quarter", "hour", "day")}
    finally:
        daemon.close()
    old_day = (int(T0) - 3 * 86400) // 86400
    assert old_day in before["day"] and old_day not in after["day"]  # the live day went
    assert {t: {k: v for k, v in rows.items() if k not in (old_day, old_day * 24, old_day * 96)}
            for t, rows in before.items() if t == "day"} == {"day": after["day"]}  # fmt: skip
    assert len(after["quarter"]) == len(before["quarter"]) - 1
    assert len(after["hour"]) == len(before["hour"]) - 1


def test_default_windows_after_a_replay_end_at_its_newest_data(tmp_path: Path) -> None:
    sent = traffic()
    write_capture(tmp_path / "a.pcap", sent, "ether")
    daemon = daemon_for(tmp_path)
    try:
        summary = replay_file(daemon, tmp_path / "a.pcap", iface="")
        clock = report_clock(daemon, summary)
        assert clock() == summary.end  # the end of its last flush, not the wall clock
        service = Service(daemon, Notifier(), live=False, clock=clock)  # as --serve builds it
        handlers = service.handlers
        try:
            day = asyncio.run(handlers.report({"period": "day", "monitors": ["all"]}))
            flows = asyncio.run(handlers.flows({"monitor": "imap-raw"}))
            top = asyncio.run(handlers.top({"monitors": ["all"], "by": "server", "limit": 1}))
        finally:
            service.reports.close()
    finally:
        daemon.close()
    total = sum(len(bytes(s.ip)) for s in sent)
    rows = day["rows"]  # type: ignore[index]
    assert rows[-1]["label"] == f"{datetime.fromtimestamp(T0, UTC):%Y-%m-%d}"
    assert sum(rows[-1]["values"]["all"]) == total
    assert sorted(f["client_port"] for f in flows["flows"]) == [2532, 2533, 2534, 2535]  # type: ignore[index]
    assert top["entries"][0]["bytes"] > 0  # type: ignore[index]
