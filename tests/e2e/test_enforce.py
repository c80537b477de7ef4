"""Quota enforcement in the namespace lab: the real daemon blocks or marks what the wire carries.

The daemon meters veth-a in namespace a; a paced UDP stream goes from a to b, so its packets
pass a's POSTROUTING queue rule, and b's nft counters count what got through. A 1 MiB quota
on the outgoing traffic is the cap under test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from harness.daemon import Daemon, fresh_counters
from harness.netns import HERE, PYTHON, Pair, sink_result, start_sink, traffic

MIB = 1 << 20
SIZE = 1000  # IP bytes per datagram (972 bytes of UDP payload)
PPS = 1000  # datagrams per second: 1 MB/s, so one second of traffic is RATE bytes
RATE = SIZE * PPS
PORT = 5001

MONITOR = """
[[monitor]]
name = "out"
rules = [{ direction = "out" }]
"""
BLOCK = """
[[quota]]
name = "cap"
monitors = ["out"]
limit = "1MiB"
period = "day"
action = "block"
exempt = [{ protocol = "udp", port = 53 }]
"""
PER_HOST = """
[[monitor]]
name = "lan"
rules = [{ direction = "out" }]
hosts = ["10.231.0.0/24", "fd00:231::/64"]

[[quota]]
name = "each"
monitors = ["lan"]
limit = "1MiB"
period = "day"
action = "block"
per_host = true
"""
MARK = """
[[quota]]
name = "cap"
monitors = ["out"]
limit = "1MiB"
period = "day"
action = "mark"
mark = 0x10
mask = 0xff
strict = true
"""
# In a, after the queue's mangle hook (-150): counts what leaves carrying the quota's mark.
MARK_COUNTER = """table inet tmxmark {
  counter marked {}
  chain post {
    type filter hook postrouting priority 100; policy accept;
    oifname "veth-a" meta mark & 0xff == 0x10 counter name "marked"
  }
}
"""


def received(pair: Pair, counter: str = "ip_udp") -> int:
    """UDP bytes (IPv4 unless told) b has seen arrive."""
    return pair.b.nft_counters()[counter][1]


def send(pair: Pair, count: int, port: int = PORT, v6: bool = False) -> list[tuple[float, int]]:
    """Send `count` paced datagrams of SIZE IP bytes a -> b (over IPv6 if asked); b's received
    bytes sampled every 50 ms meanwhile."""
    sink = start_sink(pair.b, "udp-sink", str(port), str(count), str(count / PPS + 5))
    addr, payload, counter = (
        (pair.b6, SIZE - 48, "ip6_udp") if v6 else (pair.b4, SIZE - 28, "ip_udp")
    )
    sender = pair.a.popen(
        pair.a.python(str(HERE / "traffic.py"), "udp-send", addr, str(port), str(count),
                      str(payload), str(PPS))
    )  # fmt: skip
    samples = []
    deadline = time.monotonic() + count / PPS + 30
    while sender.poll() is None and time.monotonic() < deadline:
        samples.append((time.monotonic(), received(pair, counter)))
        time.sleep(0.05)
    assert sender.wait(timeout=10) == 0
    time.sleep(0.3)  # the last datagrams land
    samples.append((time.monotonic(), received(pair, counter)))
    sink.send_signal(signal.SIGTERM)
    sink.communicate(timeout=10)
    return samples


def quota(daemon: Daemon, name: str = "cap") -> dict[str, object]:
    """The quota command's answer for one quota."""
    reply = daemon.request("quota", name=name)
    assert reply["ok"], reply
    (q,) = reply["result"]["quotas"]  # type: ignore[index]
    return q  # type: ignore[no-any-return]


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    """Until predicate() is true (AssertionError after timeout)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def cut_after(samples: list[tuple[float, int]], start: int, allowance: int) -> float:
    """Seconds from the sample where `allowance` bytes had passed to the last growth."""
    crossed = next(t for t, got in samples if got - start >= allowance)
    pairs = zip(samples[1:], samples[:-1], strict=True)
    last = max(t for (t, got), (_, before) in pairs if got > before)
    return last - crossed


def test_a_block_quota_cuts_the_stream_extends_exempts_and_lifts_on_reload(
    pair: Pair, tmp_path: Path
) -> None:
    fresh_counters(pair)
    daemon = Daemon(pair, tmp_path, MONITOR + BLOCK).start()

    count = 4 * MIB // SIZE
    samples = send(pair, count)
    got = received(pair)
    # Cut after the limit plus at most one second of traffic; nothing before the limit.
    assert MIB <= got <= MIB + RATE, got
    assert cut_after(samples, 0, MIB) <= 1.0 + 0.1  # the sampling's own granularity
    q = quota(daemon)
    assert q["state"] == "CRITICAL" and q["blocked_since"] is not None
    enforced = q["enforced"]
    assert isinstance(enforced, dict)
    # Every datagram sent arrived at b or was dropped by the quota, and was metered.
    assert enforced["dropped_bytes"] == count * SIZE - got
    assert enforced["dropped_packets"] == count - got // SIZE
    assert q["used"] == count * SIZE
    status = daemon.status()
    assert status["enforcement"]["cap"]["dropped_packets"] == count - got // SIZE  # type: ignore[index]
    audit = status["audit"]["out"]  # type: ignore[index]
    assert audit["unmetered_bytes"] == 0  # type: ignore[index]

    # DNS is exempt: it passes while the quota blocks.
    sink = start_sink(pair.b, "udp-sink", "53", "20", "10")
    traffic(pair.a, "udp-send", pair.b4, "53", "20", "100", "200")
    assert sink_result(sink) == 20

    # One more MiB for this period: about that much passes, then the cut again.
    reply = daemon.request("quota-extend", name="cap", bytes=MIB)
    assert reply["ok"], reply
    assert "extended by 1048576 B by uid 0" in reply["result"]["quota"]["history"][-1]  # type: ignore[index]
    before = received(pair)
    samples = send(pair, count)
    passed = received(pair) - before
    assert MIB <= passed <= MIB + RATE, passed
    assert cut_after(samples, before, MIB) <= 1.0 + 0.1
    assert "quota cap extended by 1048576 B by uid 0" in daemon.log()

    # A reload without the quota lifts the block at once.
    daemon.reload(MONITOR)
    before = received(pair)
    send(pair, 500)
    assert received(pair) - before == 500 * SIZE
    assert daemon.request("quota", name="cap")["error"]["code"] == "not_found"  # type: ignore[index]
    daemon.stop()


def test_a_mark_quota_marks_past_its_limit_and_drops_nothing(pair: Pair, tmp_path: Path) -> None:
    pair.a.run(["nft", "-f", "-"], input=MARK_COUNTER)
    fresh_counters(pair)
    daemon = Daemon(pair, tmp_path, MONITOR + MARK).start()
    rules = pair.a.iptables_save()
    assert rules.count("-j NFQUEUE --queue-num 0") == 4
    assert "--queue-bypass" not in rules  # strict = true

    count = 2 * MIB // SIZE
    send(pair, count)
    assert received(pair) == count * SIZE  # nothing dropped
    listing = pair.a.run(["nft", "-j", "list", "counter", "inet", "tmxmark", "marked"]).stdout
    (marked,) = [i["counter"] for i in json.loads(listing)["nftables"] if "counter" in i]
    q = quota(daemon)
    enforced = q["enforced"]
    assert isinstance(enforced, dict)
    assert marked["packets"] == enforced["marked_packets"] > 0
    assert marked["bytes"] == enforced["marked_bytes"]
    assert count * SIZE - MIB - RATE <= enforced["marked_bytes"] <= count * SIZE - MIB
    assert enforced["dropped_packets"] == 0
    ctl = [str(Path(PYTHON).parent / "trafmetuxctl"), "--socket", str(daemon.sock_path), "quota"]
    done = subprocess.run(ctl, capture_output=True, text=True, check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    shown = done.stdout
    assert "; mark, marked since " in shown and " packets (" in shown
    daemon.stop()


def test_a_per_host_quota_blocks_only_the_hosts_over_their_limit(
    pair: Pair, tmp_path: Path
) -> None:
    fresh_counters(pair)
    daemon = Daemon(pair, tmp_path, PER_HOST).start()

    samples = send(pair, 2 * MIB // SIZE)  # IPv4: 10.231.0.1 -> 10.231.0.2 go over
    got = received(pair)
    assert MIB <= got <= MIB + RATE, got
    assert cut_after(samples, 0, MIB) <= 1.0 + 0.1
    q = quota(daemon, "each")
    assert q["state"] == "CRITICAL" and q["blocked_since"] is not None
    assert {h["host"] for h in q["hosts"] if h["state"] == "CRITICAL"} == {  # type: ignore[union-attr]
        pair.a4,
        pair.b4,
    }
    # The IPv6 hosts (fd00:231::1 and ::2) are under their limit: their traffic passes whole.
    send(pair, 500, v6=True)
    assert received(pair, "ip6_udp") == 500 * SIZE
    assert f"quota each: host {pair.a4} over its limit" in daemon.log()
    daemon.stop()
