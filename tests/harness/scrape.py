"""Metering under /metrics scrapes: one phase of paced traffic, with or without scrapers.

Shared by the reliability test (which judges the figures) and the bench stage (which records
them). The daemon meters namespace a's veth; the scrapers run in namespace a against its
loopback HTTP listener, so their own packets are not metered.
"""

from __future__ import annotations

import itertools
import json
import socket
import sqlite3
import statistics
import subprocess
import time

from .daemon import Daemon
from .live import Stream
from .netns import HERE, Pair, sink_result

FLUSH_INTERVAL = "1s"


def free_port() -> int:
    """A TCP port nobody listens on right now (namespaces have their own ports: any will do)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_config(port: int) -> str:
    """The top-level lines that turn on the HTTP listener on namespace a's loopback."""
    return f'[http]\nlisten = ["127.0.0.1:{port}"]\n'


def flush_times(live: Daemon, begin: float, end: float) -> list[float]:
    """When each flush within [begin, end] committed (the store's flush rows, one per flush)."""
    db = sqlite3.connect(f"file:{live.database}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT DISTINCT time FROM flush WHERE time >= ? AND time <= ? ORDER BY time",
            (begin, end),
        ).fetchall()
    finally:
        db.close()
    return [float(t) for (t,) in rows]


def _audit_in(live: Daemon) -> dict[str, int]:
    return live.status()["audit"]["in"]  # type: ignore[index,no-any-return]


def phase(
    pair: Pair, live: Daemon, port: int, pps: int, size: int, seconds: int, scrapers: int
) -> dict[str, object]:
    """Paced UDP into namespace a for `seconds`, `scrapers` clients scraping /metrics each
    second meanwhile (none: the quiet baseline); what was sent, delivered, seen and metered."""
    wire = pair.a.nft_counters()["ip_all"]
    audit = _audit_in(live)
    begin = time.time()
    stream = Stream(pair, False, 5400 + scrapers, pps, size, seconds)
    scrape = None
    if scrapers:
        url = f"http://127.0.0.1:{port}/metrics"
        script = [str(HERE / "traffic.py"), "http-scrape", url, str(scrapers), str(seconds)]
        scrape = pair.a.popen(pair.a.python(*script))
    try:
        stream.proc.communicate(timeout=seconds * 3 + 60)
        delivered = sink_result(stream.sink, timeout=120)
        scraped = _scrape_result(scrape, seconds) if scrape else {}
    finally:
        stream.stop()
    end = time.time()
    pair.settle()
    now_wire, now_audit = pair.a.nft_counters()["ip_all"], _audit_in(live)
    flushes = flush_times(live, begin, end)
    gaps = [b - a for a, b in itertools.pairwise(flushes)]
    metered = now_audit["metered_bytes"] - audit["metered_bytes"]
    return {
        "sent": int(pps * seconds),
        "delivered": delivered,
        "wire_packets": now_wire[0] - wire[0],
        "wire_bytes": now_wire[1] - wire[1],
        "metered_bytes": metered,
        "unmetered_bytes": now_audit["unmetered_bytes"] - audit["unmetered_bytes"],
        "metered_bytes_per_s": round(metered / (end - begin)),
        "seconds": round(end - begin, 2),
        "flushes": len(flushes),
        "flush_gap_median_s": round(statistics.median(gaps), 3) if gaps else 0.0,
        "flush_gap_max_s": round(max(gaps), 3) if gaps else 0.0,
        "scrapes": scraped,
    }


def _scrape_result(proc: subprocess.Popen[str], seconds: int) -> dict[str, object]:
    out, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"scraper failed: {err}")
    found = json.loads(out)
    latency = found.pop("latency_ms")
    found["latency_ms_median"] = round(statistics.median(latency), 1) if latency else 0.0
    found["latency_ms_max"] = round(max(latency), 1) if latency else 0.0
    return found  # type: ignore[no-any-return]
