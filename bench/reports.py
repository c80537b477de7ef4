"""Benchmark 3: report and quota latency through the daemon's socket over 2 years of history."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, summary, target
from bench.served import served_store
from trafmetuxctl.client import Client

FULL = {"monitors": 20, "years": 2.0, "requests": 60}
SMOKE = {"monitors": 2, "years": 0.02, "requests": 3}

# What the ctl commands send: show-hourly -t 48, show-daily -t 60, show-monthly -t 24,
# check-quota mobile.
QUERIES: dict[str, tuple[str, dict[str, Any]]] = {
    "show-hourly -t 48": ("report", {"period": "hour", "last": 48}),
    "show-daily -t 60": ("report", {"period": "day", "last": 60}),
    "show-monthly -t 24": ("report", {"period": "month", "last": 24}),
    "check-quota mobile": ("quota", {"name": "mobile"}),
}


def latencies(sock: Path, cmd: str, args: dict[str, Any], count: int) -> list[float]:
    """Milliseconds per request over one connection (the first request warms it up)."""
    out = []
    with Client(str(sock), 30.0) as client:
        client.call(cmd, **args)
        for _ in range(count):
            start = time.perf_counter()
            client.call(cmd, **args)
            out.append((time.perf_counter() - start) * 1000)
    return out


def run(scale: str = "full") -> Result:
    """Serve the history with the real daemon; median and p99 latency per query."""
    size = FULL if scale == "full" else SMOKE
    with tempfile.TemporaryDirectory(prefix="tmx-bench-reports-") as tmp:
        start = time.perf_counter()
        with served_store(Path(tmp), int(size["monitors"]), size["years"]) as (sock, rows):
            setup = time.perf_counter() - start
            figures = {
                label: summary(latencies(sock, cmd, args, int(size["requests"])))
                for label, (cmd, args) in QUERIES.items()
            }
    return {
        "params": {**size, "rows": rows, "setup_seconds": round(setup, 1)},
        "latency_ms": figures,
        "targets": [
            target(f"{label} p99", f["p99"], "<=", 50.0, "ms") for label, f in figures.items()
        ],
    }
