"""Scenarios for the SQLite store: exact writes, rollups, failing writes, bad files, retention."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.packets import addr as ip
from harness.stored import FlowRow, Stored
from trafmetuxd.collector import (
    COMPRESSED_PORT,
    OTHER,
    FlushCollector,
    RealtimeCollector,
    Snapshot,
    minute_of,
)
from trafmetuxd.packet import NO_PORT, PacketInfo
from trafmetuxd.spec import DIR_IN, DIR_OUT, RetentionSpec
from trafmetuxd.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Store,
    StoreError,
    prune_bounds,
)

T0 = 1_000_000_800.0  # a minute and quarter-hour boundary
M0 = minute_of(T0)
CLIENT, SERVER = "192.168.190.62", "192.168.190.11"
V6_CLIENT, V6_SERVER = "2001:db8::62", "2001:db8::11"


IMAP = (4, 6, ip(CLIENT), COMPRESSED_PORT, ip(SERVER), 143)
PING6 = (6, 58, ip(V6_CLIENT), NO_PORT, ip(V6_SERVER), NO_PORT)


def stored(store: Store) -> Stored:
    """What the store committed, read through a connection of its own."""
    return Stored(store.path)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "trafmetux.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    s = Store(db, busy_timeout=0.05)
    yield s
    s.close()


def sample() -> Snapshot:
    """Two minutes in different quarters, an IPv4 and an IPv6 flow and an overflow."""
    return Snapshot(
        {M0: [1000, 3, 200, 2], M0 + 14: [7, 1, 0, 0], M0 + 15: [0, 0, 50, 1]},
        {IMAP: [250, 1007, 6], PING6: [84, 84, 2], OTHER: [0, 0, 0]},
        0,
    )


def test_write_and_read_back_exact_totals_and_flows(store: Store) -> None:
    snap = sample()
    store.write(T0 + 60, [("input", snap), ("idle", Snapshot({}, {}, 0))])
    assert stored(store).minute_totals("input") == {m: tuple(r) for m, r in snap.totals.items()}
    assert stored(store).minute_totals("idle") == {}
    assert stored(store).flows("input", T0, T0 + 61) == [
        FlowRow(T0 + 60, 4, 6, CLIENT, COMPRESSED_PORT, SERVER, 143, 250, 1007, 6),
        FlowRow(T0 + 60, 6, 58, V6_CLIENT, NO_PORT, V6_SERVER, NO_PORT, 84, 84, 2),
    ]
    assert stored(store).flows("input", T0, T0 + 60) == []  # the interval's end is exclusive


def test_quarter_rollup_is_the_sum_of_its_minutes(store: Store) -> None:
    store.write(T0 + 60, [("input", sample())])
    store.write(T0 + 120, [("input", Snapshot({M0 + 3: [1, 1, 1, 1]}, {}, 0))])
    minutes = stored(store).minute_totals("input")
    expected: dict[int, list[int]] = {}
    for minute, row in minutes.items():
        acc = expected.setdefault(int(minute * 60 // 900), [0, 0, 0, 0])
        expected[int(minute * 60 // 900)] = [a + b for a, b in zip(acc, row, strict=True)]
    assert stored(store).quarter_totals("input") == {q: tuple(r) for q, r in expected.items()}
    assert len(expected) == 2


def test_repeated_writes_add_up_per_minute(store: Store) -> None:
    store.write(T0 + 60, [("input", Snapshot({M0: [10, 1, 20, 2]}, {}, 0))])
    store.write(T0 + 120, [("input", Snapshot({M0: [5, 1, 0, 0], M0 + 1: [3, 1, 0, 0]}, {}, 0))])
    assert stored(store).minute_totals("input") == {M0: (15, 2, 20, 2), M0 + 1: (3, 1, 0, 0)}


def test_other_position_is_stored_with_stars_and_overflow_counted(store: Store) -> None:
    snap = Snapshot({M0: [900, 4, 0, 0]}, {IMAP: [100, 0, 1], OTHER: [700, 100, 3]}, 3)
    store.write(T0 + 60, [("input", snap)])
    rows = stored(store).flows("input", 0, T0 + 61)
    assert rows[-1] == FlowRow(T0 + 60, 0, 0, "*", -1, "*", -1, 700, 100, 3)
    assert stored(store).overflow("input", 0, T0 + 61) == 3


def counts(db: Path) -> dict[str, int]:
    """Row counts of every table, read through a separate connection."""
    conn = sqlite3.connect(db)
    try:
        tables = ["monitor", "minute_totals", "quarter_totals", "hour_totals", "day_totals"]
        tables += ["flush", "flow"]
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


def test_write_while_another_connection_holds_the_lock_fails_and_changes_nothing(
    db: Path, store: Store
) -> None:
    store.write(T0 + 60, [("input", sample())])
    before = (counts(db), stored(store).minute_totals("input"))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="database is locked") as err:
            store.write(T0 + 120, [("input", sample()), ("output", sample())])
        assert str(db) in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (counts(db), stored(store).minute_totals("input")) == before


def reopen_with(
    monkeypatch: pytest.MonkeyPatch, tune: Callable[[sqlite3.Connection], None]
) -> None:
    """Make the next Store connection pass through `tune` right after it is opened."""
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        tune(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


def test_write_to_a_read_only_connection_fails_and_changes_nothing(
    db: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(T0 + 60, [("input", sample())])
    before = counts(db)
    reopen_with(monkeypatch, lambda c: c.execute("PRAGMA query_only = ON"))
    readonly = Store(db)
    monkeypatch.undo()
    try:
        with pytest.raises(StoreError, match="readonly database") as err:
            readonly.write(T0 + 120, [("input", sample())])
        assert str(db) in str(err.value)
        assert counts(db) == before
        # The failed transaction was rolled back, so it holds no lock over other writers.
        store.write(T0 + 180, [("input", Snapshot({}, {IMAP: [1, 1, 2]}, 0))])
    finally:
        readonly.close()
    assert counts(db)["flow"] == before["flow"] + 1


def test_write_into_a_full_database_fails_and_changes_nothing(
    db: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(T0 + 60, [("input", sample())])
    before = counts(db)

    def cap_size(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    reopen_with(monkeypatch, cap_size)
    full = Store(db)
    monkeypatch.undo()
    many = {(4, 17, i, COMPRESSED_PORT, i + 1, 53): [100, 100, 2] for i in range(2000)}
    try:
        with pytest.raises(StoreError, match="database or disk is full"):
            full.write(T0 + 120, [("input", Snapshot({M0: [1, 1, 1, 1]}, many, 0))])
        # The connection stays usable: a later write that fits succeeds.
        full.write(T0 + 180, [("input", Snapshot({M0 + 2: [1, 1, 1, 1]}, {}, 0))])
    finally:
        full.close()
    assert counts(db)["flow"] == before["flow"]
    assert counts(db)["minute_totals"] == before["minute_totals"] + 1


def test_a_file_of_random_bytes_is_refused_by_name(db: Path) -> None:
    junk = os.urandom(64 * 1024)
    db.write_bytes(junk)
    with pytest.raises(StoreError, match="not a SQLite database") as err:
        Store(db)
    assert str(db) in str(err.value)
    assert db.read_bytes() == junk


def test_a_database_from_a_newer_version_is_refused(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer") as err:
        Store(db)
    assert str(db) in str(err.value)


def test_another_programs_database_is_not_taken_over(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="something else"):
        Store(db)


def test_a_new_database_gets_the_schema_wal_and_current_version(db: Path) -> None:
    Store(db).close()
    Store(db).close()  # reopening an up-to-date file migrates nothing
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert counts(db) == dict.fromkeys(counts(db), 0)


def test_prune_drops_old_minutes_and_flushes_but_keeps_quarters(store: Store) -> None:
    day = 86400
    retention = RetentionSpec(minutes=day, flows=2 * day, quarters=0)
    for age in (3 * day, 1.5 * day, 60):
        t = T0 - age
        snap = Snapshot({minute_of(t): [10, 1, 0, 0]}, {IMAP: [10, 0, 1]}, 0)
        store.write(t, [("input", snap)])
    store.prune(T0, retention)
    assert sorted(stored(store).minute_totals("input")) == [minute_of(T0 - 60)]
    assert [r.time for r in stored(store).flows("input", 0, T0)] == [T0 - 1.5 * day, T0 - 60]
    assert sum(r[0] for r in stored(store).quarter_totals("input").values()) == 30


def test_prune_with_zero_retention_keeps_everything(store: Store) -> None:
    store.write(T0 - 400 * 86400, [("input", sample())])
    store.prune(T0, RetentionSpec(minutes=0, flows=0, quarters=0))
    assert stored(store).minute_totals("input") == {m: tuple(r) for m, r in sample().totals.items()}
    assert len(stored(store).flows("input", 0, T0)) == 2


def test_write_can_prune_in_the_same_transaction(store: Store) -> None:
    old = T0 - 10 * 86400
    store.write(old, [("input", Snapshot({minute_of(old): [1, 1, 0, 0]}, {IMAP: [1, 0, 1]}, 0))])
    bounds = prune_bounds(T0, RetentionSpec(minutes=86400, flows=86400))
    store.write(T0, [("input", Snapshot({M0: [2, 1, 0, 0]}, {IMAP: [2, 0, 1]}, 0))], bounds)
    assert stored(store).minute_totals("input") == {M0: (2, 1, 0, 0)}
    assert [r.time for r in stored(store).flows("input", 0, T0 + 1)] == [T0]


def test_failed_flushes_keep_every_byte_until_a_write_succeeds_once(db: Path) -> None:
    """Store unwritable for several flushes: the flush collector keeps merging, nothing lost."""
    realtime = RealtimeCollector(3)
    pending = FlushCollector(4)
    store = Store(db, busy_timeout=0.05)
    sent: list[tuple[int, PacketInfo, int]] = []
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for flush in range(4):
            for i in range(25):
                port = 2532 + (flush * 7 + i) % 9  # more flows than positions: overflow
                out = PacketInfo(4, 6, ip(CLIENT), port, ip(SERVER), 143 + i % 6, 60 + i, 0x10)
                back = PacketInfo(4, 6, ip(SERVER), 143 + i % 6, ip(CLIENT), port, 900 + i, 0x10)
                minute = minute_of(T0 + flush * 60 + i * 2.4)
                sent += [(minute, out, DIR_OUT), (minute, back, DIR_IN)]
                realtime.add(minute, out, DIR_OUT)
                realtime.add(minute, back, DIR_IN)
            pending.merge(realtime.swap())
            with pytest.raises(StoreError, match="database is locked"):
                store.write(T0 + (flush + 1) * 60, [("input", pending.pending())])
            assert stored(store).minute_totals("input") == {}
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.write(T0 + 300, [("input", pending.pending())])
    pending.clear()
    pending.merge(realtime.swap())  # nothing new arrived
    assert pending.empty
    store.write(T0 + 360, [("input", pending.pending())])

    expected: dict[int, list[int]] = {}
    for minute, p, direction in sent:
        row = expected.setdefault(minute, [0, 0, 0, 0])
        col = 2 if direction == DIR_OUT else 0
        row[col] += p.length
        row[col + 1] += 1
    assert stored(store).minute_totals("input") == {m: tuple(r) for m, r in expected.items()}
    flows = stored(store).flows("input", 0, T0 + 1000)
    assert sum(r.sent + r.received for r in flows) == sum(p.length for _, p, _ in sent)
    assert sum(r.packets for r in flows) == len(sent)
    assert stored(store).overflow("input", 0, T0 + 1000) == sum(
        r.packets for r in flows if r.family == 0
    )
    assert stored(store).overflow("input", 0, T0 + 1000) > 0
    store.close()


def test_a_write_failing_midway_keeps_no_part_of_the_flush(db: Path, store: Store) -> None:
    store.write(T0 + 60, [("input", sample())])
    before = (counts(db), stored(store).minute_totals("input"))
    broken = Snapshot({M0: [1, 1, 0, 0]}, {(4, 6, 2**40, 1, 2, 80): [1, 0, 1]}, 0)
    with pytest.raises(ValueError):  # an IPv4 flow with an address beyond 32 bits
        store.write(T0 + 120, [("input", sample()), ("output", broken)])
    assert (counts(db), stored(store).minute_totals("input")) == before
    store.write(T0 + 180, [("output", sample())])  # no transaction was left open
    assert stored(store).minute_totals("output") == stored(store).minute_totals("input")


def rolled_up(
    rows: dict[int, Any], seconds_per_row: int, seconds: int
) -> dict[int, tuple[int, ...]]:
    """Rows of one unit summed into coarser UTC units, computed here from the rows alone."""
    out: dict[int, list[int]] = {}
    for unit, row in rows.items():
        acc = out.setdefault(unit * seconds_per_row // seconds, [0, 0, 0, 0])
        out[unit * seconds_per_row // seconds] = [a + b for a, b in zip(acc, row, strict=True)]
    return {u: tuple(r) for u, r in out.items()}


def test_hours_and_days_are_the_sums_of_their_minutes_across_boundaries(store: Store) -> None:
    midnight = 1_000_080_000 // 60  # minute of a UTC midnight (1_000_080_000 = 86400 * 11575)
    first = {midnight - 61: [1, 1, 2, 1], midnight - 1: [10, 2, 20, 2], midnight: [4, 1, 0, 0]}
    store.write(midnight * 60 + 60, [("input", Snapshot(first, {}, 0))])
    again = {midnight - 1: [5, 1, 0, 0], midnight + 75: [0, 0, 7, 1]}
    store.write(midnight * 60 + 4800, [("input", Snapshot(again, {}, 0))])
    minutes = stored(store).minute_totals("input")
    assert stored(store).hour_totals("input") == rolled_up(minutes, 60, 3600)
    assert stored(store).day_totals("input") == rolled_up(minutes, 60, 86400)
    assert (
        len(stored(store).hour_totals("input")) == 4 and len(stored(store).day_totals("input")) == 2
    )


def v1_database(db: Path, quarters: dict[int, list[int]]) -> None:
    """A database as schema version 1 left it, holding these quarters of monitor `input`."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        MIGRATIONS[0](conn)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO monitor (id, name) VALUES (1, 'input')")
        conn.executemany(
            "INSERT INTO quarter_totals VALUES (1, ?, ?, ?, ?, ?)",
            [(q, *r) for q, r in quarters.items()],
        )
    finally:
        conn.close()


def test_migration_to_version_2_fills_hours_and_days_from_the_quarters(db: Path) -> None:
    q0 = 1_000_080_000 // 900  # the first quarter of a UTC day
    quarters = {q0 - 97: [1, 1, 1, 1], q0 - 1: [2, 1, 3, 1], q0: [5, 1, 0, 0], q0 + 3: [7, 2, 1, 1]}
    quarters[q0 + 4] = [11, 3, 13, 4]
    v1_database(db, quarters)
    store = Store(db)
    try:
        assert stored(store).hour_totals("input") == rolled_up(quarters, 900, 3600)
        assert stored(store).day_totals("input") == rolled_up(quarters, 900, 86400)
        assert len(stored(store).day_totals("input")) == 3
        store.write(q0 * 900 + 60, [("input", Snapshot({q0 * 15: [100, 1, 0, 0]}, {}, 0))])
        after = stored(store).quarter_totals("input")
        assert after[q0] == (105, 2, 0, 0)  # the write added onto the migrated rows
        assert stored(store).hour_totals("input") == rolled_up(after, 900, 3600)
        assert stored(store).day_totals("input") == rolled_up(after, 900, 86400)
    finally:
        store.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_prune_of_quarters_keeps_whole_utc_days_whose_hours_and_days_stay_exact(
    store: Store,
) -> None:
    day = 86400
    midnight = 1_000_080_000
    for t in (midnight - 3 * day + 600, midnight - 5400, midnight + 900, midnight + 7200):
        store.write(t + 60, [("input", Snapshot({int(t) // 60: [10, 1, 5, 1]}, {}, 0))])
    # keep 2 hours of quarters at 02:00: the whole UTC day is kept, the days before it go
    store.prune(midnight + 7200, RetentionSpec(minutes=0, flows=0, quarters=7200))
    quarters = stored(store).quarter_totals("input")
    assert sorted(quarters) == [(midnight + 900) // 900, (midnight + 7200) // 900]
    assert stored(store).hour_totals("input") == rolled_up(quarters, 900, 3600)
    assert stored(store).day_totals("input") == rolled_up(quarters, 900, 86400)
    assert len(stored(store).minute_totals("input")) == 4  # minutes follow their own retention
