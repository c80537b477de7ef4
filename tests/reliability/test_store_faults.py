"""Store faults while metering: a full disk, a database locked by another process, a corrupt file.

The daemon keeps metering, says in status and in its log that the store cannot be written and
how much it holds, and once the store is writable again every held byte is written, none twice.
A corrupt database at start is refused with the file named, never replaced by a fresh one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.live import NFT_SUMS, Live, Stream, expected, fresh_counters
from harness.netns import Pair


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted on `where` (a directory of the test's own), unmounted on every path."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(where)],
                   check=True, timeout=30)  # fmt: skip
    try:
        yield where
    finally:
        done = subprocess.run(["umount", str(where)], capture_output=True, timeout=30)
        if done.returncode != 0:  # still busy (a process we could not stop): detach it anyway
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; the file (delete it to free the space)."""
    filler = directory / "filler"
    block = bytes(4096)
    with filler.open("wb", buffering=0) as out:
        for _ in range(1 << 20):  # bounded: 4 GB at most, far beyond any tmpfs used here
            try:
                out.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def wait_until(what: Callable[[], bool], timeout: float, why: str) -> None:
    """Poll `what` every 0.1 s; fail with `why` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {why}")
        time.sleep(0.1)


def flush_state(live: Live) -> dict[str, object]:
    """The flush part of status."""
    return live.status()["flush"]  # type: ignore[return-value]


def held_then_written(pair: Pair, live: Live, fault: Callable[[], Callable[[], None]]) -> int:
    """Meter under traffic, apply the fault for a few flushes, lift it; the bytes held."""
    flows = [Stream(pair, False, 5001, 400, 700, 40), Stream(pair, True, 5002, 300, 200, 40)]
    try:
        time.sleep(1.5)
        lift = fault()
        try:
            wait_until(lambda: flush_state(live)["failures"] >= 3, 15, "three failed flushes")
            state = flush_state(live)
            assert state["error"], state
            held = state["held_bytes"]
            assert isinstance(held, int) and held > 0
            meter = live.status()["meter"]
            assert meter["in_packets"] > 0  # type: ignore[index]
        finally:
            lift()
        wait_until(lambda: flush_state(live)["failures"] == 0, 15, "a successful flush")
        assert flush_state(live)["held_bytes"] == 0
        time.sleep(1.0)
    finally:
        for flow in flows:
            flow.stop()
    pair.settle()
    a, b, stored = live.totals_after_stop()
    for monitor in NFT_SUMS:
        assert stored.get(monitor, (0, 0, 0, 0)) == expected(monitor, a, b), monitor
    assert "holding" in live.log() and "flush failed" in live.log()
    return held


def test_full_disk_holds_every_byte_until_space_is_freed(pair: Pair, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state", "2m") as state:
        fresh_counters(pair)
        live = Live(pair, tmp_path, state_dir=state)
        live.start()

        def disk_full() -> Callable[[], None]:
            filler = fill(state)
            return filler.unlink

        try:
            held = held_then_written(pair, live, disk_full)
        finally:
            if live.proc is not None and live.proc.poll() is None:
                live.kill9()
        assert "full" in live.log()
        print("disk full: held", held, "bytes, all written after space was freed")


def test_store_locked_by_another_process_holds_then_writes(pair: Pair, tmp_path: Path) -> None:
    fresh_counters(pair)
    live = Live(pair, tmp_path)
    live.start()

    def lock() -> Callable[[], None]:
        other = sqlite3.connect(live.database, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        return other.close  # closing ends (rolls back) the transaction

    held = held_then_written(pair, live, lock)
    assert "locked" in live.log()
    print("store locked: held", held, "bytes, all written after the lock was released")


CORRUPTIONS = {
    "not a database": lambda path: path.write_bytes(b"this is not a database\n" * 400),
    "truncated header": lambda path: path.write_bytes(path.read_bytes()[:50]),
    "schema page overwritten": lambda path: path.write_bytes(
        path.read_bytes()[:100] + b"\xa5" * 3996 + path.read_bytes()[4096:]
    ),
}


@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_corrupt_database_at_start_is_refused_and_left_alone(
    pair: Pair, tmp_path: Path, damage: str
) -> None:
    live = Live(pair, tmp_path)
    live.start()
    assert live.terminate() == 0
    db = live.database
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = DELETE")  # one file: the damage is all in it
    conn.close()
    CORRUPTIONS[damage](db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    live.start(ready=False)
    assert live.wait() != 0
    assert str(db) in live.log()
    print(damage, "->", live.log().strip().splitlines()[-1])
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert "TRAFMETUX" not in pair.a.iptables_save()
