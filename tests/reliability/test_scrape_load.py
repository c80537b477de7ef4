"""Scraping /metrics every second from 10 clients changes neither metering nor flush timing.

Live traffic through the namespaces, paced, once without scrapers and once with them, against
one daemon: both times every packet is metered (the meter's bytes equal the kernel's counters
on the wire, nothing unmetered) and flushes come round every interval. The bounds on flush
timing are generous: the machine is shared; what would fail is a scrape holding up a flush.
"""

from __future__ import annotations

from pathlib import Path

from harness.live import Live, fresh_counters
from harness.netns import Pair
from harness.scrape import FLUSH_INTERVAL, free_port, http_config, phase

PPS, SIZE, SECONDS, SCRAPERS = 800, 400, 8, 10


def test_scrapes_every_second_from_10_clients_change_neither_metering_nor_flushes(
    pair: Pair, tmp_path: Path
) -> None:
    fresh_counters(pair)
    port = free_port()
    live = Live(pair, tmp_path, flush_interval=FLUSH_INTERVAL, top=http_config(port))
    live.start()
    quiet = phase(pair, live, port, PPS, SIZE, SECONDS, 0)
    loaded = phase(pair, live, port, PPS, SIZE, SECONDS, SCRAPERS)
    print("quiet:", quiet)
    print("scraped:", loaded)
    scrapes = loaded["scrapes"]
    assert isinstance(scrapes, dict)
    assert scrapes["requests"] == SCRAPERS * SECONDS
    assert scrapes["statuses"] == {"200": SCRAPERS * SECONDS}  # every scrape answered
    for run in (quiet, loaded):
        assert run["delivered"] == run["sent"] == run["wire_packets"]
        assert run["metered_bytes"] == run["wire_bytes"] > 0  # every byte metered
        assert run["unmetered_bytes"] == 0
        # a 1 s flush interval: about one flush a second, none held up for long
        assert isinstance(run["flushes"], int) and run["flushes"] >= SECONDS - 2
        assert isinstance(run["flush_gap_max_s"], float) and run["flush_gap_max_s"] <= 2.5
    assert abs(loaded["flush_gap_median_s"] - quiet["flush_gap_median_s"]) <= 0.25  # type: ignore[operator]
    assert loaded["metered_bytes"] == quiet["metered_bytes"]  # same paced traffic, same bytes
    assert live.terminate() == 0, live.log()
