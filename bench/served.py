"""A store with long history served by the real daemon (replay + serve) for benchmarks 3 and 6.

The store is written directly with sqlite3 in the daemon's schema (Store creates the schema):
per-quarter totals over `years` years and per-minute totals over the last 7 days, for every
monitor. The daemon then runs as `trafmetuxd --config X --replay one.pcap --serve`.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import VENV_BIN
from trafmetuxctl.client import Client, UnreachableError
from trafmetuxd.store import Store, rebuild_rollups

QUARTER, MINUTE = 900, 60
WEEK = 7 * 86400
YEAR = 365 * 86400


def build_store(path: Path, monitors: int, years: float, now: int, seed: int = 3) -> int:
    """Write the history; the number of rows written."""
    Store(path).close()  # the schema, at its current version
    rng = random.Random(seed)
    con = sqlite3.connect(path, isolation_level=None)
    rows = 0
    try:
        con.execute("BEGIN")
        for mid in range(1, monitors + 1):
            con.execute("INSERT INTO monitor (id, name) VALUES (?, ?)", (mid, f"m{mid - 1}"))
            scale = rng.randint(1, 50) * 1000
            first_q, last_q = (now - int(years * YEAR)) // QUARTER, now // QUARTER
            con.executemany(
                "INSERT INTO quarter_totals VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (mid, q, scale * 90, scale // 8, scale * 15, scale // 10)
                    for q in range(first_q, last_q)
                ),
            )
            first_m, last_m = (now - WEEK) // MINUTE, now // MINUTE
            con.executemany(
                "INSERT INTO minute_totals VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (mid, m, scale * 6, scale // 120, scale, scale // 150)
                    for m in range(first_m, last_m)
                ),
            )
            rows += (last_q - first_q) + (last_m - first_m)
        rebuild_rollups(con)  # the hour and day tables the daemon reads, from the quarters
        con.execute("COMMIT")
    finally:
        con.close()
    return rows


def write_pcap(path: Path) -> None:
    """A one-packet capture (raw IP link type): replay needs a file, the store has the data."""
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 28, 0, 0, 64, 17, 0, 0x0A000001, 0x0A000002)
    packet = ip + struct.pack("!HHHH", 40000, 53, 8, 0)
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    record = struct.pack("<IIII", int(time.time()) - 3600, 0, len(packet), len(packet))
    path.write_bytes(header + record + packet)


def write_config(directory: Path, monitors: int) -> Path:
    """The daemon's TOML: state and socket in `directory`, UTC, the monitors, one quota."""
    monitor_tables = "".join(
        f'[[monitor]]\nname = "m{i}"\nrules = [{{ direction = "in" }}]\n\n' for i in range(monitors)
    )
    text = (
        f'state_dir = "{directory}"\n'
        f'socket = "{directory / "tmx.sock"}"\n'
        'socket_group = "root"\n'
        'timezone = "UTC"\n'
        'flush_interval = "1h"\n\n'
        "[retention]\n"
        'minutes = "forever"\n'
        'flows = "forever"\n\n'
        f"{monitor_tables}"
        '[[quota]]\nname = "mobile"\nmonitors = ["m0", "m1"]\nlimit = "3GiB"\nperiod = "month"\n'
    )
    path = directory / "trafmetux.toml"
    path.write_text(text)
    return path


def wait_ready(sock: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the daemon answers `status` on its socket (or it died, or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"trafmetuxd exited with {proc.returncode}")
        with contextlib.suppress(UnreachableError, OSError), Client(str(sock), 5.0) as client:
            client.call("status")
            return
        time.sleep(0.1)
    raise RuntimeError(f"trafmetuxd did not answer on {sock} within {timeout}s")


@contextlib.contextmanager
def served_store(directory: Path, monitors: int, years: float) -> Iterator[tuple[Path, int]]:
    """(socket path, rows) of a daemon serving the history; stopped on every path."""
    config = write_config(directory, monitors)
    rows = build_store(directory / "trafmetux.sqlite3", monitors, years, int(time.time()))
    write_pcap(directory / "one.pcap")
    argv = [
        str(VENV_BIN / "trafmetuxd"),
        "--config",
        str(config),
        "--replay",
        str(directory / "one.pcap"),
        "--serve",
    ]
    log = (directory / "daemon.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(directory / "tmx.sock", proc, 60.0)
        yield directory / "tmx.sock", rows
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s; always reaped."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
