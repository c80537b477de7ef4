"""Benchmark 4: what flushes and the heaviest reports cost the packet path, seen on the wire.

The daemon meters namespace b's veth (20 monitors over a store with 2 years of history, a flush
every second) while trafgen sends a steady background load into it. A ping every 10 ms crosses
the metered link (queued both ways). First quiet (the load and the flushes only), then while 4
clients ask the heaviest report the daemon accepts, over and over. The packet path runs in its
own worker process, so the reports and flushes should add nothing to the round trips.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, VENV_BIN, Result, summary, target
from bench.e2e import (
    Pair,
    _generator,
    _link_macs,
    _stop,
    missing_requirements,
    veth_pair,
)
from bench.e2e_traffic import monitors_toml, trafgen_config
from bench.mix import twenty_monitors
from bench.served import build_store, wait_ready
from trafmetuxctl.client import Client
from trafmetuxd.reports import MAX_CELLS

HERE = ROOT / "tests" / "harness"

FULL = {"pings": 1000, "interval": 0.01, "clients": 4, "load_pps": 20000}
SMOKE = {"pings": 100, "interval": 0.01, "clients": 2, "load_pps": 2000}
HEAVIEST = {"cmd": "report", "period": "hour", "last": MAX_CELLS // 20}  # for 20 monitors


def _config(directory: Path, now: int) -> Path:
    db = directory / "trafmetux.sqlite3"
    build_store(db, 20, 2.0, now)
    named = [dataclasses.replace(m, name=f"m{i}") for i, m in enumerate(twenty_monitors(2000))]
    text = (
        f'state_dir = "{directory}"\nsocket = "{directory / "tmx.sock"}"\n'
        'socket_group = "root"\ntimezone = "UTC"\nflush_interval = "1s"\n\n'
        '[capture]\nqueue = 0\ninterfaces = ["veth-b"]\n\n'
        f"{monitors_toml(named)}"
    )
    path = directory / "trafmetux.toml"
    path.write_text(text)
    return path


def _ping(pair: Pair, count: int, interval: float) -> dict[str, Any]:
    argv = pair.a.python(str(HERE / "traffic.py"), "ping-every", pair.b4, str(count), str(interval))
    out = pair.a.run(argv, timeout=count * interval + 60).stdout
    result: dict[str, Any] = json.loads(out)
    rtt = result.pop("rtt_ms")
    result["rtt_ms"] = summary(rtt)
    result["lost"] = result["sent"] - result["answered"]
    return result


class _Reports:
    """Clients asking the heaviest report in a loop; how many answered, how long each took."""

    def __init__(self, sock: Path, clients: int) -> None:
        self.sock = sock
        self.stop = threading.Event()
        self.seconds: list[float] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        args = {k: v for k, v in HEAVIEST.items() if k != "cmd"}
        with Client(str(self.sock), 120.0) as client:
            for _ in range(100_000):
                if self.stop.is_set():
                    return
                start = time.monotonic()
                client.call(str(HEAVIEST["cmd"]), **args)
                self.seconds.append(time.monotonic() - start)

    def __enter__(self) -> _Reports:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


def _flushes(sock: Path) -> int:
    with Client(str(sock), 30.0) as client:
        return int(client.call("status")["flush"]["flushes"])


def _measure(pair: Pair, directory: Path, size: dict[str, Any]) -> dict[str, Any]:
    config = _config(directory, int(time.time()))
    dst_mac, src_mac = _link_macs(pair)
    conf = directory / "imix.trafgen"
    conf.write_text(trafgen_config(dst_mac, src_mac, pair.b4, pair.b6))
    argv = [str(VENV_BIN / "trafmetuxd"), "--config", str(config)]
    proc = pair.b.popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sock = directory / "tmx.sock"
    try:
        wait_ready(sock, proc, 60.0)  # type: ignore[arg-type]
        gen = _generator(pair, conf, int(size["load_pps"]))
        try:
            time.sleep(1.0)
            flushes0 = _flushes(sock)
            quiet = _ping(pair, size["pings"], size["interval"])
            with _Reports(sock, size["clients"]) as reports:
                time.sleep(0.5)
                loaded = _ping(pair, size["pings"], size["interval"])
            flushes = _flushes(sock) - flushes0
        finally:
            _stop(gen)
    finally:
        _stop(proc, timeout=30.0, group=False)
    return {
        "quiet": quiet,
        "loaded": loaded,
        "reports_answered": len(reports.seconds),
        "report_seconds": summary(reports.seconds),
        "flushes_during": flushes,
    }


def run(scale: str = "full") -> Result:
    """Quiet and loaded pings in one fresh pair of namespaces; skipped when impossible."""
    size = FULL if scale == "full" else SMOKE
    reason = missing_requirements()
    if reason:
        return {"skipped": reason, "targets": []}
    with tempfile.TemporaryDirectory(prefix="tmx-bench-stall-") as tmp, veth_pair() as pair:
        pair.settle()
        measured = _measure(pair, Path(tmp), size)
    extra = measured["loaded"]["rtt_ms"]["max"] - measured["quiet"]["rtt_ms"]["max"]
    return {
        "params": {**size, "heaviest": HEAVIEST},
        **measured,
        "targets": [
            target("pings lost while reports run", measured["loaded"]["lost"], "<=", 0, "pings"),
            target("max RTT over the quiet baseline", round(extra, 3), "<=", 5.0, "ms"),
        ],
    }
