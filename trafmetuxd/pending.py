"""Flushes waiting for a store that sequences them (PostgreSQL): in memory, then a journal.

Each flush gets a sequence number of this run when it is taken from the flush collectors and
keeps it, with its contents, until the store committed it: a retry after a lost
acknowledgement carries the same (run, seq) and the store skips it (exactly once). Past
`limit` bytes held in memory the oldest flushes go to a local SQLite journal, replayed first,
in order, also after a restart. Blocking: called from the flush thread under the flush lock.
"""

from __future__ import annotations

import logging
import marshal
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from trafmetuxd.collector import Snapshot
from trafmetuxd.store import StoreError, create_file

log = logging.getLogger("trafmetuxd.flush")

Batches = list[tuple[str, Snapshot]]
POSITION_BYTES = 200  # what one flow position, minute row or host row costs in memory, about
DRAIN_BUDGET = 10.0  # seconds of one flush spent replaying held flushes; the rest waits


class SequencedStore(Protocol):
    """What the queue needs of a store: a write that skips a sequence already committed."""

    def write_sequenced(self, run: str, seq: int, flush_time: float, batches: Batches) -> bool:
        """Write flush `seq` of `run` in one transaction; False when it committed before."""

    def committed_seq(self, run: str) -> int:
        """The last sequence number of `run` committed (0: none)."""


class Held(NamedTuple):
    """A flush waiting for the store."""

    run: str
    seq: int
    time: float
    batches: Batches
    size: int  # estimated bytes in memory


def estimate(batches: Sequence[tuple[str, Snapshot]]) -> int:
    """About how many bytes a flush's contents hold in memory."""
    rows = 0
    for _, snap in batches:
        rows += len(snap.totals) + len(snap.flows)
        rows += sum(len(minutes) for minutes in snap.hosts.values())
    return (rows + 1) * POSITION_BYTES


def _encode(batches: Batches) -> bytes:
    return marshal.dumps([(n, s.totals, s.flows, s.overflow, s.hosts, s.host_overflow)
                          for n, s in batches])  # fmt: skip


def _decode(blob: bytes) -> Batches:
    return [(str(n), Snapshot(t, f, int(o), h, int(ho))) for n, t, f, o, h, ho in
            marshal.loads(blob)]  # fmt: skip


_JOURNAL = """CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, run TEXT NOT NULL,
    seq INTEGER NOT NULL, time REAL NOT NULL, size INTEGER NOT NULL, batches BLOB NOT NULL)"""


class Journal:
    """The local SQLite file of spilled flushes, oldest first (opened when first needed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        # kept here so that status never reads the file on the event loop
        self.count = 0
        self.oldest: float | None = None

    def load(self) -> None:
        """Open a journal left by an earlier run, if any, and count what it holds."""
        if self.path.exists():
            try:
                self._recount()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot read the pending journal: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            create_file(self.path)
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(_JOURNAL)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot open the pending journal: {exc}") from exc
            self._conn = conn
        return self._conn

    def append(self, held: Held) -> None:
        """Add a flush at the end (committed to the file before it leaves memory)."""
        sql = "INSERT INTO pending (run, seq, time, size, batches) VALUES (?, ?, ?, ?, ?)"
        values = (held.run, held.seq, held.time, held.size, _encode(held.batches))
        try:
            self._open().execute(sql, values)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write the pending journal: {exc}") from exc
        self.count += 1
        self.oldest = held.time if self.oldest is None else min(self.oldest, held.time)

    def first(self) -> tuple[int, Held] | None:
        """The oldest spilled flush and its row id, or None."""
        if not self.count:
            return None
        sql = "SELECT id, run, seq, time, size, batches FROM pending ORDER BY id LIMIT 1"
        try:
            row = self._open().execute(sql).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the pending journal: {exc}") from exc
        if row is None:
            return None
        row_id, run, seq, when, size, blob = row
        return int(row_id), Held(run, int(seq), float(when), _decode(blob), int(size))

    def remove(self, row_id: int) -> None:
        """Forget a spilled flush the store committed (a retry would be skipped by the store)."""
        try:
            self._open().execute("DELETE FROM pending WHERE id = ?", (row_id,))
            self._recount()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot update the pending journal: {exc}") from exc

    def _recount(self) -> None:
        row = self._open().execute("SELECT count(*), min(time) FROM pending").fetchone()
        self.count = int(row[0])
        self.oldest = float(row[1]) if row[1] is not None else None

    def close(self) -> None:
        """Close the file."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PendingFlushes:
    """Flushes taken from the collectors and not yet committed, in sequence order."""

    def __init__(self, journal: Path, limit: int, run: str | None = None) -> None:
        self.run = run or uuid.uuid4().hex
        self.limit = limit
        self.journal = Journal(journal)
        self.journal.load()  # what an earlier run could not write goes first
        self.memory: deque[Held] = deque()
        self._seq = 0
        self.spilled = 0  # flushes written to the journal since the start

    def push(self, when: float, batches: Batches) -> Held:
        """Give a flush its sequence number; spill the oldest past the memory limit."""
        self._seq += 1
        held = Held(self.run, self._seq, when, batches, estimate(batches))
        self.memory.append(held)
        try:
            self._spill(self.limit)
        except StoreError as exc:  # what could not be spilled stays in memory, nothing is lost
            log.error("%s; holding the flushes in memory past pending_memory", exc)
        return held

    def _spill(self, limit: int) -> None:
        """Move the oldest flushes to the journal until memory holds at most `limit` bytes."""
        while self.memory and self.memory_bytes() > limit:
            self.journal.append(self.memory[0])  # committed to the file first
            self.memory.popleft()
            self.spilled += 1

    def spill_all(self) -> None:
        """Put every flush held in memory into the journal (at exit, when the store is down)."""
        if self.memory:
            log.warning("%d unwritten flushes saved to %s for the next start",
                        len(self.memory), self.journal.path)  # fmt: skip
        self._spill(-1)

    def memory_bytes(self) -> int:
        """Estimated bytes of the flushes held in memory."""
        return sum(h.size for h in self.memory)

    def drain(self, store: SequencedStore, budget: float = DRAIN_BUDGET) -> bool:
        """Write the held flushes in order (journal first); True when none is left.

        Stops at the first failure (StoreError propagates) and after `budget` seconds, so that
        a long backlog is replayed over several flushes instead of holding one for minutes.
        """
        deadline = time.monotonic() + budget
        while (first := self.journal.first()) is not None:
            row_id, held = first
            self._write(store, held)
            self.journal.remove(row_id)
            if time.monotonic() > deadline:
                return False
        while self.memory:
            self._write(store, self.memory[0])
            self.memory.popleft()
            if self.memory and time.monotonic() > deadline:
                return False
        return True

    def settle(self, store: SequencedStore) -> int:
        """After a failed write: forget the flushes of this run the store did commit.

        A commit whose acknowledgement was lost would otherwise count in this gateway's
        reports twice (stored, and held here) until the next flush skipped it. Raises
        StoreError when the store cannot say; the next drain skips them then.
        """
        committed = store.committed_seq(self.run)
        dropped = 0
        while self.memory and self.memory[0].run == self.run and self.memory[0].seq <= committed:
            held = self.memory.popleft()
            dropped += 1
            log.warning("flush %d of run %s was committed although its acknowledgement was "
                        "lost: not written again", held.seq, held.run)  # fmt: skip
        return dropped

    @staticmethod
    def _write(store: SequencedStore, held: Held) -> None:
        if not store.write_sequenced(held.run, held.seq, held.time, held.batches):
            log.warning("flush %d of run %s was already committed (its acknowledgement was "
                        "lost): not written again", held.seq, held.run)  # fmt: skip

    def in_memory(self) -> list[Batches]:
        """The contents of the flushes held in memory, oldest first (for reports)."""
        return [h.batches for h in self.memory]

    def summary(self, now: float) -> dict[str, object]:
        """Flushes pending (memory and journal) and the age of the oldest, for status."""
        spilled, oldest = self.journal.count, self.journal.oldest
        times = [t for t in (oldest, self.memory[0].time if self.memory else None) if t]
        return {
            "pending_flushes": spilled + len(self.memory),
            "journal_flushes": spilled,
            "memory_bytes": self.memory_bytes(),
            "memory_limit": self.limit,
            "oldest_age": now - min(times) if times else None,
        }

    def close(self) -> None:
        """Close the journal."""
        self.journal.close()
