"""Flushes keep the cyclic GC out of the packet loop's way without letting garbage pile up."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from trafmetuxd.daemon import GC_SWEEP_EVERY, Daemon
from trafmetuxd.spec import Config, MonitorSpec


class Node:
    """Something that can sit in a reference cycle and be watched through a weakref."""

    other: object = None


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Clock]]:
    clock = Clock()
    cfg = Config(path=tmp_path / "t.toml", state_dir=tmp_path, monitors=(MonitorSpec("all"),))
    d = Daemon(cfg, clock=clock)
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


def test_the_gc_is_on_again_after_a_flush_that_failed(daemon: tuple[Daemon, Clock]) -> None:
    d, clock = daemon
    d.store.close()  # every write now fails (a programming error, not a store fault)
    assert not d.flush_now(clock())
    assert gc.isenabled()
    assert "closed database" in d.flusher.state.last_error


def test_cycles_frozen_by_flushes_are_collected_by_the_hourly_sweep(
    daemon: tuple[Daemon, Clock],
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
