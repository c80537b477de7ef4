"""Benchmark 3: report and quota latency through the daemon's socket over 2 years of history.

Two measurements per query: warm (the same request again, the daemon's report cache holds the
period sums) and cold (a flush-like write from another connection before each request changes
the store's data_version, so the daemon clears its cache and sums from the tables again: what
the first report after each flush costs).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from bench.common import Result, summary, target
from bench.served import served_store
from trafmetuxctl.client import Client
from trafmetuxd.api import REQUEST_RATE
from trafmetuxd.collector import Snapshot
from trafmetuxd.store import Store

FULL = {"monitors": 20, "years": 2.0, "requests": 60}
SMOKE = {"monitors": 2, "years": 0.02, "requests": 3}
LIMIT_MS = 50.0
# Requests are spaced a little wider than the daemon's per-connection rate limit allows, so
# the figures are the reports' own latency, not the limiter's pacing of a request loop.
PAUSE = 1.2 / REQUEST_RATE

# What the ctl commands send: show-hourly -t 48, show-daily -t 60, show-monthly -t 24,
# check-quota mobile.
QUERIES: dict[str, tuple[str, dict[str, Any]]] = {
    "show-hourly -t 48": ("report", {"period": "hour", "last": 48}),
    "show-daily -t 60": ("report", {"period": "day", "last": 60}),
    "show-monthly -t 24": ("report", {"period": "month", "last": 24}),
    "check-quota mobile": ("quota", {"name": "mobile"}),
}


def latencies(
    sock: Path, cmd: str, args: dict[str, Any], count: int, before: Callable[[], None]
) -> list[float]:
    """Milliseconds per request over one connection (the first request warms it up).

    `before` runs untimed ahead of every timed request.
    """
    out = []
    with Client(str(sock), 30.0) as client:
        client.call(cmd, **args)
        for _ in range(count):
            before()
            start = time.perf_counter()
            client.call(cmd, **args)
            out.append((time.perf_counter() - start) * 1000)
    return out


def pause() -> None:
    """Wait out the rate limit before the next request."""
    time.sleep(PAUSE)


def flusher(db: Path, monitors: int) -> tuple[Store, Callable[[], None]]:
    """A second writer and a function that commits one flush of every monitor's current minute."""
    store = Store(db)

    def flush() -> None:
        time.sleep(PAUSE)
        now = time.time()
        snap = Snapshot({int(now) // 60: [1500, 1, 80, 1]}, {}, 0)
        store.write(now, [(f"m{i}", snap) for i in range(monitors)])

    return store, flush


def measure(sock: Path, db: Path, size: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"warm": {query: summary}, "cold": {query: summary}}."""
    count, monitors = int(size["requests"]), int(size["monitors"])
    out: dict[str, dict[str, Any]] = {"warm": {}, "cold": {}}
    writer, flush = flusher(db, monitors)
    with closing(writer):
        for label, (cmd, args) in QUERIES.items():
            out["warm"][label] = summary(latencies(sock, cmd, args, count, pause))
            out["cold"][label] = summary(latencies(sock, cmd, args, count, flush))
    return out


def run(scale: str = "full") -> Result:
    """Serve the history with the real daemon; median and p99 latency per query, warm and cold."""
    size = FULL if scale == "full" else SMOKE
    with tempfile.TemporaryDirectory(prefix="tmx-bench-reports-") as tmp:
        start = time.perf_counter()
        db = Path(tmp) / "trafmetux.sqlite3"
        with served_store(Path(tmp), int(size["monitors"]), size["years"]) as (sock, rows):
            setup = time.perf_counter() - start
            figures = measure(sock, db, size)
    return {
        "params": {**size, "rows": rows, "setup_seconds": round(setup, 1)},
        "latency_ms": figures["warm"],
        "cold_latency_ms": figures["cold"],
        "targets": [
            target(f"{label} p99 ({kind})", f["p99"], "<=", LIMIT_MS, "ms")
            for kind in ("warm", "cold")
            for label, f in figures[kind].items()
        ],
    }
