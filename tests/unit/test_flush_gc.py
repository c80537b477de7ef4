"""Flushes keep the cyclic GC out of the packet loop's way without letting garbage pile up,
and apply the retention at most once per PRUNE_EVERY."""

from __future__ import annotations

import gc
import sqlite3
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from trafmetuxd.collector import Snapshot
from trafmetuxd.flush import GC_SWEEP_EVERY, PRUNE_EVERY, Flusher
from trafmetuxd.metering import Metering
from trafmetuxd.periods import resolve_zone
from trafmetuxd.spec import Config, MonitorSpec, RetentionSpec
from trafmetuxd.store import Store

T0 = 1_790_000_000.0


class Node:
    """Something that can sit in a reference cycle and be watched through a weakref."""

    other: object = None


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Metering, Clock]]:
    clock = Clock()
    cfg = Config(path=tmp_path / "t.toml", state_dir=tmp_path, monitors=(MonitorSpec("all"),))
    d = Metering(cfg, clock=clock)
    try:
        yield d, clock
    finally:
        d.close()
        gc.unfreeze()  # the GC state is the whole test process's: leave it as found
        gc.enable()


def cyclic_garbage() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_the_gc_is_on_again_after_a_flush_that_failed(daemon: tuple[Metering, Clock]) -> None:
    d, clock = daemon
    d.store.close()  # every write now fails (a programming error, not a store fault)
    assert not d.flush_now(clock())
    assert gc.isenabled()
    assert "closed database" in d.flusher.state.last_error


def test_cycles_frozen_by_flushes_are_collected_by_the_hourly_sweep(
    daemon: tuple[Metering, Clock],
) -> None:
    d, clock = daemon
    gc.disable()  # the cycle must still be there when the flush freezes what is alive
    ref = cyclic_garbage()
    assert d.flush_now(clock())
    assert gc.isenabled()
    gc.collect()
    assert ref() is not None  # frozen: out of the collector's sight, as designed
    clock.now += GC_SWEEP_EVERY
    assert d.flush_now(clock())
    assert ref() is None  # the sweep unfroze and collected it


def stored_minutes(db: Path) -> list[int]:
    """The stored minutes of every monitor, read by a fresh connection."""
    con = sqlite3.connect(db)
    try:
        return sorted(m for (m,) in con.execute("SELECT minute FROM minute_totals"))
    finally:
        con.close()


def test_retention_is_applied_on_the_first_flush_then_once_per_prune_interval(
    tmp_path: Path,
) -> None:
    db = tmp_path / "trafmetux.sqlite3"
    store = Store(db)
    flusher = Flusher(store, (MonitorSpec("all"),), resolve_zone("UTC"), started=T0)
    keep_two_hours = RetentionSpec(minutes=7200, flows=0)
    old = int(T0) // 60 - 180  # three hours before the first flush: past the retention

    def flush_at(when: float, minute: int) -> None:
        assert flusher.flush(
            [("all", Snapshot({minute: [10, 1, 0, 0]}, {}, 0))], when, keep_two_hours
        )

    try:
        flush_at(T0, old)
        assert stored_minutes(db) == []  # the first flush prunes what it wrote too late
        flush_at(T0 + 60, old + 1)
        assert stored_minutes(db) == [old + 1]  # no second pass within PRUNE_EVERY
        flush_at(T0 + PRUNE_EVERY, old + 2)
        assert stored_minutes(db) == []
    finally:
        store.close()
        gc.unfreeze()
        gc.enable()
