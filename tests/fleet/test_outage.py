"""The PostgreSQL server stopped for 60 s under live traffic, then started: nothing lost or
doubled against the kernel's counters.

The daemon meters two UDP streams in namespaces (the harness's veth pair) and flushes every
second to a real PostgreSQL. The server is stopped for the 60 s of the issue: the daemon keeps
metering, answers status at once with the store's state, the flushes waiting (memory and, past
its 16 KiB bound, the journal) and the age of the oldest. Once the server is back every held
flush is written in order; the stored totals equal the nft counters to the byte.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from harness.live import NFT_SUMS, Live, Stream, expected, fresh_counters
from harness.netns import Pair
from harness.postgres import Postgres

OUTAGE = 60.0  # seconds, as the issue asks


def wait_until(what: Callable[[], bool], timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {why}")
        time.sleep(0.2)


def store_state(live: Live) -> dict[str, object]:
    started = time.monotonic()
    state = live.status()["store"]
    assert time.monotonic() - started < 3.0, "status waited on the store"
    return state  # type: ignore[return-value]


def stored(server: Postgres, gateway: str) -> dict[str, tuple[int, ...]]:
    rows = server.query(
        "SELECT monitor, sum(in_packets), sum(in_bytes), sum(out_packets), sum(out_bytes) "
        "FROM minute_totals WHERE gateway = %s GROUP BY monitor",
        gateway,
    )
    return {str(r[0]): tuple(int(v) for v in r[1:]) for r in rows}  # type: ignore[call-overload]


def test_server_down_60s_under_live_traffic_loses_and_doubles_nothing(
    pair: Pair, own_server: Postgres, tmp_path: Path
) -> None:
    top = (
        f'[store]\nurl = "{own_server.socket_url()}"\ngateway = "gw-live"\n'
        'pending_memory = "16 KiB"\nconnect_timeout = "2s"\nstatement_timeout = "5s"\n'
    )
    fresh_counters(pair)
    live = Live(pair, tmp_path, top=top).start()
    seconds = OUTAGE + 30
    flows = [
        Stream(pair, False, 5001, 300, 700, seconds),
        Stream(pair, True, 5002, 200, 200, seconds),
    ]
    try:
        wait_until(lambda: store_state(live)["connected"] is True, 15, "connected")
        time.sleep(2.0)
        own_server.stop()
        down = time.monotonic()
        wait_until(lambda: store_state(live)["connected"] is False, 10, "the outage noticed")
        while time.monotonic() - down < OUTAGE:
            state = store_state(live)  # answered at once all through the outage
            time.sleep(5.0)
        state = store_state(live)
        assert int(state["pending_flushes"]) >= OUTAGE / 2, state  # type: ignore[call-overload]
        assert int(state["journal_flushes"]) > 0, state  # type: ignore[call-overload]
        assert float(state["oldest_age"]) >= OUTAGE - 10, state  # type: ignore[arg-type]
        assert "s3cret" not in str(state) and state["error"]
        meter = live.status()["meter"]
        assert meter["in_packets"] > 0  # type: ignore[index]
        own_server.start()
        wait_until(lambda: store_state(live)["pending_flushes"] == 0, 60, "the backlog written")
        assert store_state(live)["connected"] is True
    finally:
        for flow in flows:
            flow.stop()
    pair.settle()
    assert live.terminate() == 0, live.log()
    a, b = pair.a.nft_counters(), pair.b.nft_counters()
    got = stored(own_server, "gw-live")
    for monitor in NFT_SUMS:
        assert got.get(monitor, (0, 0, 0, 0)) == expected(monitor, a, b), monitor
    assert "flush failed" in live.log()
