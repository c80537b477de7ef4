"""The real control socket server in a temp dir, a fake daemon behind it, a real store."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from trafmetuxd.api import Server, start_server
from trafmetuxd.collector import Flows, Hosts, Snapshot, Totals
from trafmetuxd.handlers import Handlers
from trafmetuxd.reports import Reports
from trafmetuxd.spec import Config, MonitorSpec, QuotaSpec
from trafmetuxd.store import Store

T = TypeVar("T")
NOW = 1_793_000_000  # 2026-10-26 ~ UTC: a fixed clock for every scenario
GIB = 1024**3


@dataclass
class FakeBackend:
    """Stands in for the daemon: config, pending counts, rates, admin calls recorded."""

    config: Config
    flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: dict[str, Totals] = field(default_factory=dict)
    pending_flows: dict[str, Flows] = field(default_factory=dict)
    pending_hosts: dict[str, Hosts] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    pending_host_rates: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    refreshes: int = 0

    async def refresh(self) -> object:
        self.refreshes += 1
        return True

    def unflushed(self) -> dict[str, Totals]:
        return self.pending

    def unflushed_flows(self, monitor: str) -> Flows:
        return self.pending_flows.get(monitor, {})

    def unflushed_hosts(self, monitor: str) -> Hosts:
        return self.pending_hosts.get(monitor, {})

    async def status(self) -> dict[str, object]:
        return {"state": "running", "monitors": len(self.config.monitors)}

    def rates(self) -> dict[str, tuple[float, float]]:
        return {"input": (1536.0, 0.0), "output": (0.0, 2048.0)}

    def host_rates(self, monitor: str) -> dict[str, tuple[float, float]]:
        return self.pending_host_rates.get(monitor, {})

    async def flush(self) -> dict[str, object]:
        self.calls.append("flush")
        return {"flushed": True}

    async def reload(self) -> dict[str, object]:
        self.calls.append("reload")
        return {"reloaded": True}


def make_config(
    state_dir: Path,
    sock: Path,
    group: str = "daemon",
    monitors: tuple[MonitorSpec, ...] = (MonitorSpec("input"), MonitorSpec("output")),
) -> Config:
    """Two monitors (by default), one monthly quota billed from the 15th, Paris time."""
    return Config(
        path=state_dir / "trafmetux.toml",
        state_dir=state_dir,
        socket=sock,
        socket_group=group,
        timezone="Europe/Paris",
        monitors=monitors,
        quotas=(QuotaSpec("mobile", ("input", "output"), limit=3 * GIB, start_day=15),),
    )


def write_store(db: Path, flush_time: float, batches: list[tuple[str, Snapshot]]) -> None:
    """Commit one flush through the store, as the daemon would."""
    store = Store(db)
    try:
        store.write(flush_time, batches)
    finally:
        store.close()


class LoopThread:
    """An event loop in a background thread: the server runs there, tests use plain sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Running:
    """A started server and what is behind it."""

    path: Path
    server: Server
    backend: FakeBackend
    loops: LoopThread


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A temp dir unprivileged test users can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="trafmetux-api-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def serve(
    public_dir: Path,
    max_clients: int = 64,
    idle_timeout: float = 5.0,
    group: str = "daemon",
    monitors: tuple[MonitorSpec, ...] | None = None,
) -> Iterator[Running]:
    """Start the real server on a socket in public_dir; close it afterwards."""
    sock = public_dir / "trafmetuxd.sock"
    config = make_config(public_dir / "state", sock, group)
    if monitors is not None:
        config = make_config(public_dir / "state", sock, group, monitors)
    backend = FakeBackend(config)
    (public_dir / "state").mkdir()
    loops = LoopThread()
    handlers = Handlers(Reports(backend, clock=lambda: float(NOW))).table()
    server = loops.run(start_server(sock, group, handlers, max_clients, idle_timeout))
    try:
        yield Running(sock, server, backend, loops)
    finally:
        loops.run(server.close())
        loops.stop()


@pytest.fixture
def running(public_dir: Path) -> Iterator[Running]:
    """The server with default limits."""
    yield from serve(public_dir)
