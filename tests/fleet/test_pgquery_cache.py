"""The fleet reader's cache of bucket sums: exact, and cleared by any write to the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from trafmetuxd.collector import Snapshot, minute_of
from trafmetuxd.periods import Calendar, resolve_zone
from trafmetuxd.pgquery import PgReader
from trafmetuxd.pgstore import PgStore
from trafmetuxd.spec import RetentionSpec, StoreSpec

T0 = 1_000_000_800.0  # a minute and quarter-hour boundary
M0 = minute_of(T0)
FIRST = M0 - M0 % 1440 - 40 * 1440  # forty UTC days before T0's
END = (FIRST + 45 * 1440) * 60
NAMES = ["input", "output"]
GATEWAYS = ["branch-1", "branch-2"]


def fill(store: PgStore, run: str, factor: int) -> None:
    """Forty-five days of totals, a flush every 97 minutes, both monitors."""
    for seq, start in enumerate(range(FIRST, FIRST + 45 * 1440, 97 * 15), start=1):
        totals = {start + k: [factor * (1000 + k), 1, factor * (10 + seq), 1] for k in (0, 31)}
        batch = [(n, Snapshot(totals, {}, 0)) for n in NAMES]
        store.write_sequenced(run, seq, start * 60.0, batch)


def bounds_of(kind: str, last: int) -> list[int]:
    """The report's bucket bounds (UTC seconds) for the last periods before END."""
    periods = Calendar(resolve_zone("Europe/Berlin"), 0).last(kind, last, END)
    return [p.begin for p in periods] + [periods[-1].end]


def uncached(spec: StoreSpec, bounds: list[int], gateways: list[str]) -> dict[str, object]:
    """The sums read by a reader that caches nothing."""
    reader = PgReader(spec, limit=0)
    try:
        return dict(reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", gateways))
    finally:
        reader.close()


@pytest.fixture
def stores(pg_url: str) -> Iterator[list[PgStore]]:
    made = [PgStore(StoreSpec(url=pg_url, gateway=g, statement_timeout=5.0)) for g in GATEWAYS]
    yield made
    for s in made:
        s.close()


@pytest.fixture
def reader(pg_url: str) -> Iterator[PgReader]:
    r = PgReader(StoreSpec(url=pg_url, gateway="branch-1", statement_timeout=5.0))
    yield r
    r.close()


def test_cached_sums_equal_an_uncached_read_and_a_second_read_hits(
    stores: list[PgStore], reader: PgReader
) -> None:
    fill(stores[0], "a", 1)
    fill(stores[1], "b", 3)
    spec = reader.spec
    for kind, last in (("month", 3), ("week", 7), ("day", 45), ("hour", 30)):
        bounds = bounds_of(kind, last)
        want = uncached(spec, bounds, GATEWAYS)
        assert sum(rx for rx, _ in want["input"]) > 0  # type: ignore[attr-defined]
        hits = reader.hits
        assert reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", GATEWAYS) == want
        assert reader.hits == hits  # the first read of these buckets is read from the store
        assert reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", GATEWAYS) == want
        assert reader.hits == hits + len(NAMES) * (len(bounds) - 1), kind
    # the gateways are part of the key: one gateway alone is not the sum of both
    bounds = bounds_of("month", 3)
    one = reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", ["branch-1"])
    assert one == uncached(spec, bounds, ["branch-1"])
    assert one != uncached(spec, bounds, GATEWAYS)


def test_a_flush_of_another_gateway_after_a_cached_read_is_seen_by_the_next_read(
    stores: list[PgStore], reader: PgReader
) -> None:
    fill(stores[0], "a", 1)
    bounds = bounds_of("month", 3)
    before = reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", GATEWAYS)
    assert reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", GATEWAYS) == before
    assert reader.cached == len(NAMES) * (len(bounds) - 1)
    # another writer connection adds 5,000 bytes in to a closed month of the report
    late = {FIRST + 3 * 1440: [5000, 1, 0, 0]}
    stores[1].write_sequenced("b", 1, FIRST * 60.0, [("input", Snapshot(late, {}, 0))])
    hits = reader.hits
    after = reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", GATEWAYS)
    assert reader.hits == hits  # the write cleared the cache
    assert after == uncached(reader.spec, bounds, GATEWAYS)
    assert sum(rx for rx, _ in after["input"]) == sum(rx for rx, _ in before["input"]) + 5000
    assert after["output"] == before["output"]


def test_a_prune_and_a_row_deleted_by_hand_are_seen_by_the_next_read(
    stores: list[PgStore], reader: PgReader, pg_url: str
) -> None:
    fill(stores[0], "a", 1)
    bounds = bounds_of("day", 45)
    full = reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", None)
    # keep 20 days of quarters: the days before are deleted
    stores[0].prune(END, RetentionSpec(quarters=20 * 86400))
    pruned = reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", None)
    assert pruned == uncached(reader.spec, bounds, ["branch-1"])
    assert sum(rx for rx, _ in pruned["input"]) < sum(rx for rx, _ in full["input"])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("quarter_totals", "hour_totals", "day_totals"):
            conn.execute(f"DELETE FROM {table} WHERE monitor = 'output'")
    edited = reader.bucket_sums(Path("-"), NAMES, bounds, "quarter", None)
    assert edited == uncached(reader.spec, bounds, ["branch-1"])
    assert edited["output"] == [[0, 0]] * (len(bounds) - 1) != pruned["output"]
    assert edited["input"] == pruned["input"]
