"""The PostgreSQL store against a real server: exact writes, rollups, exactly once, schema."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest

from trafmetuxd import query
from trafmetuxd.collector import OTHER, Snapshot, minute_of
from trafmetuxd.periods import Calendar, resolve_zone
from trafmetuxd.pgquery import PgReader
from trafmetuxd.pgschema import MIGRATIONS, SCHEMA_VERSION
from trafmetuxd.pgstore import PgStore
from trafmetuxd.spec import StoreSpec
from trafmetuxd.store import Store, StoreError

T0 = 1_000_000_800.0  # a minute and quarter-hour boundary
M0 = minute_of(T0)
FLOW = (4, 6, 0xC0A8BE3E, 50000, 0xC0A8BE0B, 443)


def sample(factor: int = 1) -> Snapshot:
    totals = {M0: [100 * factor, 2, 50 * factor, 1], M0 + 20: [7 * factor, 1, 0, 0]}
    flows = {FLOW: [50 * factor, 100 * factor, 3], OTHER: [0, 7 * factor, 1]}
    hosts = {(4, 0xC0A8BE3E, 32): {M0: [100 * factor, 2, 50 * factor, 1]}}
    return Snapshot(totals, flows, 1, hosts, 0)


@pytest.fixture
def spec(pg_url: str) -> StoreSpec:
    return StoreSpec(url=pg_url, gateway="branch-1", statement_timeout=5.0)


@pytest.fixture
def store(spec: StoreSpec) -> Iterator[PgStore]:
    s = PgStore(spec)
    yield s
    s.close()


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]


def test_a_flush_lands_in_every_table_keyed_by_gateway_and_monitor(
    store: PgStore, pg_url: str
) -> None:
    assert store.write_sequenced("run", 1, T0, [("input", sample())])
    minutes = rows(pg_url, "SELECT gateway, monitor, minute, in_bytes, out_bytes "
                   "FROM minute_totals ORDER BY minute")  # fmt: skip
    assert minutes == [("branch-1", "input", M0, 100, 50), ("branch-1", "input", M0 + 20, 7, 0)]
    assert rows(pg_url, "SELECT quarter, in_bytes FROM quarter_totals ORDER BY quarter") == [
        (M0 // 15, 100),
        ((M0 + 20) // 15, 7),
    ]
    assert rows(pg_url, "SELECT sum(in_bytes) FROM hour_totals") == [(107,)]
    assert rows(pg_url, "SELECT sum(in_bytes) FROM day_totals") == [(107,)]
    flows = rows(pg_url, "SELECT client, server, server_port, sent, received FROM flow "
                 "ORDER BY client")  # fmt: skip
    assert flows == [("*", "*", -1, 0, 7), ("192.168.190.62", "192.168.190.11", 443, 50, 100)]
    assert rows(pg_url, "SELECT host, in_bytes FROM host_day_totals") == [("192.168.190.62", 100)]
    assert rows(pg_url, "SELECT gateway, monitor, overflow FROM flush") == [
        ("branch-1", "input", 1)
    ]


def test_a_replayed_flush_whose_commit_succeeded_is_skipped(store: PgStore, pg_url: str) -> None:
    assert store.write_sequenced("run", 1, T0, [("input", sample())])
    assert not store.write_sequenced("run", 1, T0, [("input", sample())])
    assert store.write_sequenced("run", 2, T0 + 60, [("input", sample(2))])
    assert rows(pg_url, "SELECT sum(in_bytes) FROM minute_totals") == [(107 * 3,)]
    assert rows(pg_url, "SELECT count(*) FROM flush") == [(2,)]


def test_sequences_of_two_gateways_and_two_runs_are_independent(
    spec: StoreSpec, store: PgStore, pg_url: str
) -> None:
    other = PgStore(replace(spec, gateway="branch-2"))
    try:
        assert store.write_sequenced("run", 1, T0, [("input", sample())])
        assert other.write_sequenced("run", 1, T0, [("input", sample(2))])
        assert store.write_sequenced("next-run", 1, T0, [("input", sample(3))])
    finally:
        other.close()
    got = rows(pg_url, "SELECT gateway, sum(in_bytes) FROM minute_totals GROUP BY gateway "
               "ORDER BY gateway")  # fmt: skip
    assert got == [("branch-1", 107 * 4), ("branch-2", 107 * 2)]


def test_the_schema_is_versioned_and_a_newer_one_is_refused(spec: StoreSpec, pg_url: str) -> None:
    first = PgStore(spec)
    assert first.probe()
    first.close()
    assert rows(pg_url, "SELECT version FROM trafmetux_schema") == [(SCHEMA_VERSION,)]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE trafmetux_schema SET version = 99")
    late = PgStore(spec)
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        late.write_sequenced("run", 1, T0, [("input", sample())])
    late.close()


def test_an_unreachable_server_is_a_store_error_naming_it_without_password() -> None:
    spec = StoreSpec(url="postgresql://u:s3cret@127.0.0.1:1/db", gateway="g", connect_timeout=2)
    store = PgStore(spec)
    with pytest.raises(StoreError) as caught:
        store.write_sequenced("run", 1, T0, [("input", sample())])
    assert "127.0.0.1:1/db" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert store.state()["connected"] is False
    assert "s3cret" not in str(store.state())


def test_replays_and_newest_time_are_this_gateways(store: PgStore, spec: StoreSpec) -> None:
    rid = store.begin_replay("ab" * 32, "/x.pcap", 10, T0, T0)
    assert [r.path for r in store.replays_of("ab" * 32)] == ["/x.pcap"]
    other = PgStore(replace(spec, gateway="branch-2"))
    assert other.replays_of("ab" * 32) == []
    store.write_sequenced("run", 1, T0, [("input", sample())])
    assert store.newest_time() == (M0 + 21) * 60  # the end of the newest minute
    assert other.newest_time() is None
    other.close()
    assert rid > 0


def test_period_sums_equal_the_sqlite_stores_in_a_half_hour_zone(
    store: PgStore, spec: StoreSpec, tmp_path: Path
) -> None:
    """Rollups, edge quarters and the spans read together add up as SQLite's reader does."""
    sqlite = Store(tmp_path / "t.sqlite3")
    first = M0 - M0 % 1440 - 3 * 1440  # three UTC days before T0's
    for seq, start in enumerate(range(first, first + 5 * 1440, 97), start=1):
        totals = {start + k: [1000 + seq * 7 + k, 1, 10 + seq, 1] for k in range(0, 90, 11)}
        batch = [("input", Snapshot(totals, {}, 0)), ("output", Snapshot(totals, {}, 0))]
        store.write_sequenced("run", seq, start * 60.0, batch)
        sqlite.write(start * 60.0, batch)
    sqlite.close()
    cal = Calendar(resolve_zone("Asia/Kolkata"), 0)
    reader = PgReader(spec)
    try:
        for kind, last in (("hour", 100), ("day", 6), ("week", 2)):
            periods = cal.last(kind, last, (first + 5 * 1440) * 60)
            bounds = [p.begin for p in periods] + [periods[-1].end]
            names = ["input", "output"]
            want = query.bucket_sums(tmp_path / "t.sqlite3", names, bounds, "quarter")
            assert reader.bucket_sums(tmp_path, names, bounds, "quarter", None) == want, kind
            assert sum(rx for rx, _ in want["input"]) > 0
            assert reader.bucket_sums(tmp_path, names, bounds, "quarter", ["other"]) == {
                n: [[0, 0]] * len(periods) for n in names
            }
    finally:
        reader.close()


def test_host_sums_and_series_equal_the_sqlite_stores_per_gateway_and_summed(
    store: PgStore, spec: StoreSpec, tmp_path: Path
) -> None:
    """Per-host reads over days, hours and quarters: each gateway's as SQLite's, two added up."""
    sqlite = Store(tmp_path / "t.sqlite3")
    other = PgStore(replace(spec, gateway="branch-2"))
    first = M0 - M0 % 1440 - 2 * 1440  # two UTC days before T0's
    hosts = [(4, 0xC0A8BE0A + i, 32) for i in range(3)]
    for seq, start in enumerate(range(first, first + 4 * 1440, 89), start=1):
        per_host = {
            key: {start + k: [500 + seq * 3 + k + i, 2, 40 + i, 1] for k in range(0, 80, 13)}
            for i, key in enumerate(hosts[: 1 + seq % 3])
        }
        totals = {start: [1, 1, 1, 1]}
        batch = [("lan", Snapshot(totals, {}, 0, per_host, 0))]
        store.write_sequenced("run", seq, start * 60.0, batch)
        other.write_sequenced("run", seq, start * 60.0, batch)  # the same figures again
        sqlite.write(start * 60.0, batch)
    sqlite.close()
    other.close()
    db = tmp_path / "t.sqlite3"
    cal = Calendar(resolve_zone("Asia/Kolkata"), 0)
    reader, local = PgReader(spec), query.Reader()
    both = ["branch-1", "branch-2"]

    def doubled(rows: list[list[int]]) -> list[list[int]]:
        return [[2 * v for v in row] for row in rows]

    try:
        for kind, last in (("hour", 60), ("day", 5)):
            periods = cal.last(kind, last, (first + 4 * 1440) * 60)
            edges = [-(-b // 900) for b in [p.begin for p in periods] + [periods[-1].end]]
            ranges = list(pairwise(edges))
            want = local.host_sums_over(db, "lan", ranges)
            assert reader.host_sums_over(db, "lan", ranges, None) == want, kind
            assert reader.host_sums_over(db, "lan", ranges, ["branch-2"]) == want, kind
            assert sum(len(s) for s in want) > 0
            summed = reader.host_sums_over(db, "lan", ranges, both)
            assert summed == [{h: [2 * v for v in row] for h, row in s.items()} for s in want]
            for host in ("192.168.190.11", "192.168.190.12"):
                series = local.host_series(db, "lan", host, ranges, "quarter")
                assert sum(row[0] for row in series) > 0
                assert reader.host_series(db, "lan", host, ranges, "quarter", None) == series
                got = reader.host_series(db, "lan", host, ranges, "quarter", both)
                assert got == doubled(series)
        minutes = [(m, m + 7) for m in range(first, first + 300, 7)]
        series = local.host_series(db, "lan", "192.168.190.10", minutes, "minute")
        assert sum(row[0] for row in series) > 0
        got = reader.host_series(db, "lan", "192.168.190.10", minutes, "minute", both)
        assert got == doubled(series)
        assert reader.host_sums_over(db, "lan", ranges, ["elsewhere"]) == [{} for _ in ranges]
    finally:
        reader.close()
        local.close()


def test_a_version_1_store_gains_the_host_range_indexes_and_keeps_its_rows(
    spec: StoreSpec, pg_url: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("CREATE TABLE trafmetux_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO trafmetux_schema VALUES (1)")
        conn.execute(
            "INSERT INTO host_day_totals VALUES ('branch-1', 'lan', '10.0.0.1', 5, 7, 1, 3, 1)"
        )
    store = PgStore(spec)
    assert store.probe()
    store.close()
    assert rows(pg_url, "SELECT version FROM trafmetux_schema") == [(SCHEMA_VERSION,)]
    indexes = rows(pg_url, "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%by_time' "
                   "ORDER BY indexname")  # fmt: skip
    assert indexes == [(f"host_{t}_totals_by_time",) for t in ("day", "hour", "quarter")]
    reader = PgReader(spec)
    try:
        assert reader.host_sums(Path("unused"), "lan", 5 * 96, 6 * 96) == {"10.0.0.1": [7, 1, 3, 1]}
    finally:
        reader.close()
