"""Exactly once: a flush whose COMMIT reached the server but whose reply was lost.

A small TCP proxy between the store and a real PostgreSQL forwards everything, and once armed
cuts both connections after it forwarded a COMMIT and before the server's reply gets back:
the flush committed, the daemon saw an error. The retry carries the same sequence number and
is skipped; nothing is counted twice. Also: flushes queued while the server is gone, past the
memory bound in the journal, are written in order once it is back, and survive a restart.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import psycopg
import pytest

from harness.postgres import Postgres
from trafmetuxd.collector import Snapshot, minute_of
from trafmetuxd.flush import Flusher
from trafmetuxd.pending import PendingFlushes
from trafmetuxd.pgstore import PgStore
from trafmetuxd.spec import MonitorSpec, RetentionSpec, StoreSpec
from trafmetuxd.store import StoreError

T0 = 1_000_000_800.0
M0 = minute_of(T0)
FLOW = (4, 6, 0x0A000002, 50000, 0x0A000001, 443)
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-query message psycopg sends to commit


class CuttingProxy:
    """127.0.0.1:port -> upstream; when armed, cuts after forwarding a COMMIT, before its reply."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cuts = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=5)
            committed = threading.Event()
            self._start(self._pump, client, server, committed, True)
            self._start(self._pump, server, client, committed, False)

    def _pump(
        self, src: socket.socket, dst: socket.socket, committed: threading.Event, up: bool
    ) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if not up and committed.is_set():
                # the server's answer to COMMIT: it committed; the client must not learn it
                self.cuts += 1
                break
            try:
                dst.sendall(data)
            except OSError:
                break
            if up and COMMIT in data and self.armed.is_set():
                self.armed.clear()
                committed.set()
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=2)


@pytest.fixture
def proxy(pg_server: Postgres) -> Iterator[CuttingProxy]:
    made = CuttingProxy(("127.0.0.1", pg_server.port))
    yield made
    made.close()


def snap(bytes_in: int) -> Snapshot:
    return Snapshot({M0: [bytes_in, 1, 0, 0]}, {FLOW: [0, bytes_in, 1]}, 0)


def flusher(store: PgStore, journal: Path, limit: int = 1 << 20) -> Flusher:
    return Flusher(store, [MonitorSpec("input")], UTC, queue=PendingFlushes(journal, limit))


def stored_in(url: str) -> tuple[int, int, int]:
    """(minute bytes, flow bytes, flush rows) of every gateway."""
    with psycopg.connect(url) as conn:
        minutes = conn.execute("SELECT coalesce(sum(in_bytes), 0) FROM minute_totals").fetchone()
        flows = conn.execute("SELECT coalesce(sum(received), 0) FROM flow").fetchone()
        flushes = conn.execute("SELECT count(*) FROM flush").fetchone()
    assert minutes and flows and flushes
    return int(minutes[0]), int(flows[0]), int(flushes[0])


def test_a_flush_cut_between_commit_and_acknowledgement_is_not_doubled(
    proxy: CuttingProxy, pg_url: str, tmp_path: Path
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    via_proxy = f"postgresql://trafmetux@127.0.0.1:{proxy.port}/{database}"
    store = PgStore(StoreSpec(url=via_proxy, gateway="gw", statement_timeout=5.0))
    flush = flusher(store, tmp_path / "pending.sqlite3")
    try:
        assert flush.flush([("input", snap(1000))], T0, RetentionSpec())
        proxy.armed.set()
        assert not flush.flush([("input", snap(500))], T0 + 60, RetentionSpec())
        assert proxy.cuts == 1
        assert "cannot write flush" in flush.state.last_error
        # the cut flush did commit: the server holds it although the daemon saw an error
        assert stored_in(pg_url) == (1500, 1500, 2)
        # asked at once, the store says so: the daemon no longer holds it (or reports of this
        # gateway would count it twice, stored and held, until the next flush)
        assert flush.held_bytes() == 0
        assert flush.flush([("input", snap(25))], T0 + 120, RetentionSpec())
    finally:
        store.close()
    assert stored_in(pg_url) == (1525, 1525, 3)
    assert flush.held_bytes() == 0


def test_a_retried_flush_already_committed_is_skipped_by_the_store(
    proxy: CuttingProxy, pg_url: str, tmp_path: Path
) -> None:
    """The retry itself, when the daemon could not ask in time: the store skips the flush."""
    database = pg_url.rsplit("/", 1)[1]
    via_proxy = f"postgresql://trafmetux@127.0.0.1:{proxy.port}/{database}"
    store = PgStore(StoreSpec(url=via_proxy, gateway="gw", statement_timeout=5.0))
    queue = PendingFlushes(tmp_path / "pending.sqlite3", 1 << 20)
    try:
        queue.push(T0, [("input", snap(500))])
        proxy.armed.set()
        with pytest.raises(StoreError):
            queue.drain(store)
        assert proxy.cuts == 1 and len(queue.memory) == 1  # held: the daemon cannot know
        queue.push(T0 + 60, [("input", snap(25))])
        assert queue.drain(store)  # the first is skipped by its sequence number
    finally:
        store.close()
    assert stored_in(pg_url) == (525, 525, 2)
    assert not queue.memory


def test_flushes_wait_through_an_outage_in_memory_and_journal_then_land_in_order(
    own_server: Postgres, tmp_path: Path
) -> None:
    spec = StoreSpec(url=own_server.url, gateway="gw", connect_timeout=2, statement_timeout=5)
    journal = tmp_path / "pending.sqlite3"
    store = PgStore(spec)
    flush = flusher(store, journal, limit=600)  # room for about one flush in memory
    try:
        assert flush.flush([("input", snap(1))], T0, RetentionSpec())
        own_server.stop()
        started = time.monotonic()
        for i in range(1, 6):
            assert not flush.flush([("input", snap(10**i))], T0 + 60 * i, RetentionSpec())
        assert time.monotonic() - started < 10  # a server that refuses is not waited on
        assert flush.queue is not None
        summary = flush.queue.summary(T0 + 360)
        assert summary["pending_flushes"] == 5
        assert 1 <= int(summary["journal_flushes"]) < 5  # type: ignore[call-overload]
        assert summary["oldest_age"] == 300
        assert flush.held_bytes() > 0
        own_server.start()
        assert flush.flush([], T0 + 420, RetentionSpec())
    finally:
        store.close()
    assert stored_in(own_server.url) == (111111, 111111, 6)
    with psycopg.connect(own_server.url) as conn:
        order = conn.execute("SELECT monitor, time FROM flush ORDER BY id").fetchall()
    assert [t for _, t in order] == [T0 + 60 * i for i in range(6)]  # written in order
    assert flush.queue.summary(T0)["pending_flushes"] == 0


def test_the_journal_outlives_the_daemon_and_is_written_at_the_next_start(
    own_server: Postgres, tmp_path: Path
) -> None:
    spec = StoreSpec(url=own_server.url, gateway="gw", connect_timeout=2, statement_timeout=5)
    journal = tmp_path / "pending.sqlite3"
    own_server.stop()
    store = PgStore(spec)
    first = flusher(store, journal)
    assert not first.flush([("input", snap(7))], T0, RetentionSpec())
    assert first.queue is not None
    first.queue.spill_all()  # what Metering.close() does at exit
    first.queue.close()
    store.close()
    own_server.start()
    store = PgStore(spec)
    second = flusher(store, journal)  # a new run: a new run id, the old flush keeps its own
    try:
        assert second.queue is not None and second.queue.summary(T0)["pending_flushes"] == 1
        assert second.flush([("input", snap(3))], T0 + 60, RetentionSpec())
    finally:
        store.close()
    assert stored_in(own_server.url) == (10, 10, 2)


def test_a_journal_that_cannot_be_written_keeps_the_flushes_in_memory(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    queue = PendingFlushes(blocked / "pending.sqlite3", limit=0)
    held = queue.push(T0, [("input", snap(5))])
    assert list(queue.memory) == [held]
    assert queue.summary(T0 + 60)["pending_flushes"] == 1
    assert queue.summary(T0 + 60)["oldest_age"] == 60
