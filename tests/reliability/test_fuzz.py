"""Fuzzing the packet pipeline: Meter.feed over generated malformed packets.

No exception escapes (meter.stats.errors stays 0), malformed packets are counted as such, and
every monitor's totals equal the sums of parse() lengths of the packets it should have got,
computed here independently of the meter; parse() itself is checked against a reference
reading of the IP length fields.
"""

from __future__ import annotations

import importlib.util
import random
import struct
import subprocess
import sys
from pathlib import Path

import fuzzgen
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trafmetuxd.meter import Meter
from trafmetuxd.packet import PacketInfo, parse
from trafmetuxd.spec import DIR_IN, DIR_OUT, MonitorSpec, RuleSpec

HERE = Path(__file__).resolve().parent
T0 = 1_700_000_000.0
MONITORS = (
    MonitorSpec("all", collector_size=64, flush_collector_size=64),
    MonitorSpec("udp", (RuleSpec(protocol=17),), collector_size=16),
    MonitorSpec("v6", (RuleSpec(family=6),)),
    MonitorSpec("http-out", (RuleSpec(direction=DIR_OUT, protocol=6, port=((80, 80),)),)),
)
WANTS = {
    "all": lambda info, d: True,
    "udp": lambda info, d: info.proto == 17,
    "v6": lambda info, d: info.family == 6,
    "http-out": lambda info, d: d == DIR_OUT and info.proto == 6 and 80 in (info.sport, info.dport),
}


def reference_length(buf: bytes) -> int | None:
    """The IP length as RFC 791 / 8200 define it, when the header says it plainly."""
    if len(buf) >= 20 and buf[0] >> 4 == 4:
        ihl, total = (buf[0] & 0x0F) * 4, struct.unpack_from("!H", buf, 2)[0]
        return total if ihl >= 20 and total >= ihl else None
    if len(buf) >= 40 and buf[0] >> 4 == 6:
        payload = struct.unpack_from("!H", buf, 4)[0]
        return payload + 40 if payload else -1  # -1: a jumbogram, read from its option
    return None


class Ledger:
    """Totals kept by the test, next to the meter's."""

    def __init__(self) -> None:
        self.want = {name: [0, 0, 0, 0] for name in WANTS}
        self.got = {name: [0, 0, 0, 0] for name in WANTS}
        self.flow_bytes = dict.fromkeys(WANTS, 0)
        self.malformed = 0

    def expect(self, buf: bytes, direction: int) -> None:
        """What feeding buf must add, from parse() and the monitors' plain rules."""
        info = parse(buf)
        ref = reference_length(buf)
        if info is None:
            assert ref is None or (ref == -1 and len(buf) < 40), buf
            self.malformed += 1
            return
        assert isinstance(info, PacketInfo) and info.length >= 0
        assert ref is not None and (ref == -1 or info.length == ref), buf
        col = 0 if direction == DIR_IN else 2
        for name, wants in WANTS.items():
            if wants(info, direction):
                self.want[name][col] += info.length
                self.want[name][col + 1] += 1

    def collect(self, meter: Meter) -> None:
        """Swap the meter's collectors and add what they held."""
        for name, snap in meter.swap():
            for row in snap.totals.values():
                for i in range(4):
                    self.got[name][i] += row[i]
            self.flow_bytes[name] += sum(e[0] + e[1] for e in snap.flows.values())


def fuzz(seed: int, count: int) -> Ledger:
    """Feed `count` generated packets; check the invariants; the ledger."""
    meter = Meter(MONITORS)
    ledger = Ledger()
    rng = random.Random(seed)
    for i, buf in enumerate(fuzzgen.packets(seed, count)):
        direction = rng.choice((DIR_IN, DIR_OUT))
        meter.feed(T0 + i * 0.01, buf, direction, rng.choice(("eth0", "wlan0")))
        ledger.expect(buf, direction)
        if i % 20_000 == 19_999:
            ledger.collect(meter)
    ledger.collect(meter)
    assert meter.stats.errors == 0
    assert meter.stats.malformed == ledger.malformed
    assert ledger.got == ledger.want
    for name, (in_b, _, out_b, _) in ledger.got.items():
        assert ledger.flow_bytes[name] == in_b + out_b, name  # flows (with "other") add up
    stats = meter.stats
    assert stats.in_bytes + stats.out_bytes == ledger.want["all"][0] + ledger.want["all"][2]
    return ledger


def test_fuzz_50_000_generated_packets() -> None:
    ledger = fuzz(seed=50_000, count=50_000)
    assert 0 < ledger.malformed < 50_000 and ledger.want["v6"][1] > 1000
    print("fuzz short: 50000 packets,", ledger.malformed, "malformed, totals", ledger.want["all"])


@pytest.mark.long
def test_fuzz_1_200_000_generated_packets() -> None:
    ledger = fuzz(seed=1_200_000, count=1_200_000)
    print("fuzz long: 1200000 packets,", ledger.malformed, "malformed")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.binary(max_size=120))
def test_hypothesis_mutated_packets_and_raw_bytes(rng: random.Random, raw: bytes) -> None:
    meter = Meter(MONITORS)
    ledger = Ledger()
    for buf in (fuzzgen.mutate(rng, fuzzgen.valid(rng)), fuzzgen.loop_chain(rng), raw):
        meter.feed(T0, buf, DIR_IN, "eth0")
        ledger.expect(buf, DIR_IN)
    ledger.collect(meter)
    assert meter.stats.errors == 0
    assert ledger.got == ledger.want


def atheris_runs(runs: int) -> None:
    """Run the atheris target in a child process (libFuzzer exits the process when done)."""
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install atheris)")
    done = subprocess.run(
        [sys.executable, str(HERE / "fuzz_atheris.py"), str(runs)],
        capture_output=True, text=True, timeout=1800, cwd=HERE,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Done {runs} runs" in done.stderr


def test_atheris_20_000_runs() -> None:
    atheris_runs(20_000)


@pytest.mark.long
def test_atheris_1_000_000_runs() -> None:
    atheris_runs(1_000_000)
