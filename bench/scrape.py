"""Benchmark 7: /metrics scraped every second by 10 clients while paced traffic is metered.

The daemon meters namespace a's veth with its HTTP listener on a's loopback; paced UDP flows in
from namespace b, once quiet and once with the scrapers (tests/harness/scrape.py, the same
phases the reliability test judges). Compared: the bytes metered against the kernel's counters
on the wire, the flush intervals, and what a scrape costs its client.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Result, target
from bench.e2e import missing_requirements
from tests.harness.live import Live, fresh_counters
from tests.harness.netns import veth_pair
from tests.harness.scrape import FLUSH_INTERVAL, free_port, http_config, phase

FULL = {"pps": 2000, "size": 400, "seconds": 20, "scrapers": 10}
SMOKE = {"pps": 200, "size": 200, "seconds": 2, "scrapers": 2}


def run(scale: str = "full") -> Result:
    """A quiet and a scraped phase against one daemon; skipped when namespaces are impossible."""
    size = FULL if scale == "full" else SMOKE
    reason = missing_requirements()
    if reason:
        return {"skipped": reason, "targets": []}
    pps, octets, seconds = size["pps"], size["size"], size["seconds"]
    with tempfile.TemporaryDirectory(prefix="tmx-bench-scrape-") as tmp, veth_pair() as pair:
        fresh_counters(pair)
        port = free_port()
        live = Live(pair, Path(tmp), flush_interval=FLUSH_INTERVAL, top=http_config(port))
        live.start()
        try:
            quiet = phase(pair, live, port, pps, octets, seconds, 0)
            scraped = phase(pair, live, port, pps, octets, seconds, size["scrapers"])
        finally:
            live.terminate()
    missed = sum(int(r["wire_bytes"]) - int(r["metered_bytes"]) for r in (quiet, scraped))  # type: ignore[call-overload]
    later = float(scraped["flush_gap_max_s"]) - float(quiet["flush_gap_max_s"])  # type: ignore[arg-type]
    return {
        "params": {**size, "flush_interval": FLUSH_INTERVAL},
        "quiet": quiet,
        "scraped": scraped,
        "targets": [
            target("bytes on the wire not metered", missed, "<=", 0, "B"),
            target("longest flush gap over the quiet one", round(later, 3), "<=", 0.5, "s"),
        ],
    }
