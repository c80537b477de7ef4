"""Live per-host rates: from the host rows the totals come from, across swaps and shipments."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from harness.packets import UDP, ipv4, udp
from trafmetuxd.meter import Meter
from trafmetuxd.metering import Metering
from trafmetuxd.rates import HostRates
from trafmetuxd.spec import DIR_IN, DIR_OUT, Config, MonitorSpec

T0 = 1_800_000_000.0
LAN = MonitorSpec("lan", hosts=(ipaddress.ip_network("10.0.0.0/24"),))
PLAIN = MonitorSpec("plain")


def metering(tmp: Path) -> Metering:
    cfg = Config(path=tmp / "t.toml", state_dir=tmp, socket=tmp / "s.sock",
                 monitors=(LAN, PLAIN))  # fmt: skip
    return Metering(cfg)


def down(host: str, size: int) -> bytes:
    return ipv4(UDP, udp(53, 40000, bytes(size)), src="192.0.2.1", dst=host)


def up(host: str, size: int) -> bytes:
    return ipv4(UDP, udp(40000, 53, bytes(size)), src=host, dst="192.0.2.1")


def test_host_rates_count_what_was_swapped_shipped_and_is_still_in_the_collectors(
    tmp_path: Path,
) -> None:
    m = metering(tmp_path)
    m.meter.feed(T0, down("10.0.0.2", 5000), DIR_IN, "eth0")  # before the first sample: not in
    m.sample_rates(T0)
    m.meter.feed(T0 + 0.5, down("10.0.0.2", 972), DIR_IN, "eth0")  # 1000 B in
    m.flush_now(T0 + 0.6)  # swapped and written: counted once, from the swap
    m.meter.feed(T0 + 0.7, up("10.0.0.2", 172), DIR_OUT, "eth0")  # 200 B out, not swapped yet
    worker = Meter((LAN, PLAIN))  # a capture worker's shipment, staged for the next flush
    worker.feed(T0 + 0.8, down("10.0.0.3", 1972), DIR_IN, "eth0")  # 2000 B in
    m.stage(worker.swap(), {})
    m.sample_rates(T0 + 1.0)
    m.meter.feed(T0 + 1.5, up("10.0.0.2", 372), DIR_OUT, "eth0")  # 400 B out, grown in place
    m.sample_rates(T0 + 2.0)
    assert m.host_rates("lan") == {"10.0.0.2": (500.0, 300.0), "10.0.0.3": (1000.0, 0.0)}
    assert m.host_rates("plain") == {}
    # the same counting as the monitor's rate: every packet has one host in the prefixes
    lan_in, lan_out = m.rates()["lan"]
    hosts = m.host_rates("lan").values()
    assert (sum(r[0] for r in hosts), sum(r[1] for r in hosts)) == (lan_in, lan_out)


def test_a_host_rate_leaves_the_window_and_idle_hosts_are_not_held() -> None:
    sampler = HostRates(window=2)
    sampler.sample(T0, {})
    sampler.moved("lan", {(4, 0x0A000002, 32): {0: [3000, 1, 0, 0]}})
    sampler.sample(T0 + 1, {})
    assert sampler.rates("lan") == {"10.0.0.2": (3000.0, 0.0)}
    sampler.sample(T0 + 2, {})
    assert sampler.rates("lan") == {"10.0.0.2": (1500.0, 0.0)}
    sampler.sample(T0 + 3, {})
    assert sampler.rates("lan") == {}  # out of the window: gone, nothing held for it


def test_nothing_is_noted_before_the_first_sample() -> None:
    sampler = HostRates()
    sampler.moved("lan", {(4, 0x0A000002, 32): {0: [3000, 1, 0, 0]}})  # a replay's swaps
    sampler.sample(T0, {})
    sampler.sample(T0 + 1, {})
    assert sampler.rates("lan") == {}


def test_a_clock_stepped_back_starts_the_window_again() -> None:
    sampler = HostRates()
    sampler.sample(T0, {})
    sampler.moved("lan", {(4, 0x0A000002, 32): {0: [3000, 1, 0, 0]}})
    sampler.sample(T0 + 1, {})
    sampler.sample(T0 - 100, {})
    assert sampler.rates("lan") == {}
