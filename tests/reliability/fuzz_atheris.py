"""Coverage-guided fuzzing of the packet pipeline with atheris (run as a script).

fuzz_atheris.py RUNS: feeds atheris' inputs to Meter.feed and checks every one against
parse(); exits non-zero (with the input saved by libFuzzer) on an escaped exception or a
mismatch.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from trafmetuxd.meter import Meter
    from trafmetuxd.packet import parse
    from trafmetuxd.spec import DIR_IN, MonitorSpec

METER = Meter((MonitorSpec("all", collector_size=32),))


def one(data: bytes) -> None:
    """Feed one input; the meter's totals must move by exactly parse()'s length."""
    before = METER.stats.in_bytes
    METER.feed(1_700_000_000.0, data, DIR_IN, "eth0")
    info = parse(data)
    moved = METER.stats.in_bytes - before
    if METER.stats.errors or moved != (0 if info is None else info.length):
        raise AssertionError(f"meter and parse disagree on {data!r}")
    if len(METER.collectors[0].totals) > 1000:
        METER.swap()


def main() -> None:
    """Run atheris for the number of runs given on the command line."""
    runs = sys.argv[1]
    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=512", "-seed=1"], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
