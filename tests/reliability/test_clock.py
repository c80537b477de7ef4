"""Wall clock steps while metering: forward a day, back an hour, into minutes already stored.

The daemon runs in-process with an injected clock; packets go through the real meter, flushes
through the real store, reports through the real control socket. Every byte is attributed to
the minute the clock said when it was metered, once; no figure is negative; reports agree.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import random
import struct
from collections import Counter
from pathlib import Path

import pytest

from harness.stored import Stored
from trafmetuxd import config
from trafmetuxd.api import start_server
from trafmetuxd.handlers import Handlers
from trafmetuxd.metering import Metering
from trafmetuxd.reports import Reports
from trafmetuxd.spec import DIR_IN, DIR_OUT

T0 = 1_736_935_200  # 2025-01-15 10:00:00 UTC
DAY, HOUR = 86400, 3600


class Clock:
    """A wall clock the test steps by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def udp4(total_length: int) -> bytes:
    """The first bytes of an IPv4 UDP packet of the given total length (as NFQUEUE copies)."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total_length, 1, 0, 64, 17, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return header + struct.pack("!HHHH", 40000, 53, total_length - 20, 0)


def write_config(tmp: Path) -> config.Config:
    """Two monitors, UTC, everything below tmp."""
    path = tmp / "trafmetux.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\nsocket = "{tmp / "sock"}"\n'
        f'socket_group = "{grp.getgrgid(os.getgid()).gr_name}"\ntimezone = "UTC"\n'
        '[[monitor]]\nname = "all"\n'
        '[[monitor]]\nname = "udp"\nrules = [{ protocol = "udp" }]\n'
    )
    (tmp / "state").mkdir()
    return config.load(path)


async def ask(path: Path, **request: object) -> dict[str, object]:
    """One request over the real socket; the result (the reply must be ok)."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    writer.write(json.dumps({"v": 1, **request}).encode() + b"\n")
    reply = json.loads(await reader.readline())
    writer.close()
    await writer.wait_closed()
    assert reply["ok"], reply
    return reply["result"]  # type: ignore[no-any-return]


async def scenario(tmp: Path, seed: int, total: bool = False) -> None:
    rng = random.Random(seed)
    clock = Clock(float(T0))
    cfg = write_config(tmp)
    daemon = Metering(cfg, clock=clock)
    server = await start_server(
        cfg.socket, cfg.socket_group, Handlers(Reports(daemon, clock)).table()
    )
    fed: Counter[tuple[int, int]] = Counter()  # (minute, direction) -> bytes, kept independently
    try:
        # 70 minutes of metering, then a day forward, 70 minutes, an hour back (into minutes
        # already stored), 70 minutes, an hour back once more and 20 minutes: the clock ends
        # behind the last minutes metered.
        for step, ticks in ((0, 70), (DAY, 70), (-HOUR, 70), (-HOUR, 20)):
            clock.now += step
            status = await ask(cfg.socket, cmd="status")
            assert status["uptime"] >= 0, status  # type: ignore[operator]
            for tick in range(ticks):
                for _ in range(rng.randint(1, 30)):
                    length = rng.randint(28, 1500)
                    direction = rng.choice((DIR_IN, DIR_OUT))
                    daemon.meter.feed(clock(), udp4(length), direction, "eth0")
                    fed[int(clock()) // 60, direction] += length
                if tick % 7 == 0:
                    result = await daemon.flush()
                    assert result["flushed"], result
                clock.now += rng.uniform(40, 80)
        await daemon.flush()
        assert daemon.meter.stats.errors == 0
        await check_reports(cfg.socket, daemon, fed)
        if total:
            await check_total(cfg.socket, fed, clock)
    finally:
        await server.close()
        daemon.close()


async def check_reports(sock: Path, daemon: Metering, fed: Counter[tuple[int, int]]) -> None:
    """Stored minutes equal what was fed minute by minute; reports over the socket agree."""
    want_in = sum(v for (_, d), v in fed.items() if d == DIR_IN)
    want_out = sum(v for (_, d), v in fed.items() if d == DIR_OUT)
    for monitor in ("all", "udp"):
        minutes = Stored(daemon.config.database).minute_totals(monitor)
        got = Counter()
        for minute, (in_b, in_p, out_b, out_p) in minutes.items():
            assert min(in_b, in_p, out_b, out_p) >= 0
            got[minute, DIR_IN] += in_b
            got[minute, DIR_OUT] += out_b
        assert +got == +fed, monitor  # every minute exact: nothing lost, nothing twice
        quarters = Stored(daemon.config.database).quarter_totals(monitor).values()
        assert sum(q[0] for q in quarters) == want_in
        assert sum(q[2] for q in quarters) == want_out
    first = min(m for m, _ in fed) * 60
    last = max(m for m, _ in fed) * 60 + 60
    for period in ("minute", "hour", "day"):
        result = await ask(sock, cmd="report", period=period, begin=first, end=last)
        rows = result["rows"]
        assert all(v >= 0 for row in rows for pair in row["values"].values() for v in pair)
        assert sum(row["values"]["all"][0] for row in rows) == want_in, period
        assert sum(row["values"]["udp"][1] for row in rows) == want_out, period


async def check_total(sock: Path, fed: Counter[tuple[int, int]], clock: Clock) -> None:
    """The clock stands behind the last metered minutes: "total" must still hold them."""
    want_in = sum(v for (_, d), v in fed.items() if d == DIR_IN)
    want_out = sum(v for (_, d), v in fed.items() if d == DIR_OUT)
    assert clock() < max(m for m, _ in fed) * 60
    total = (await ask(sock, cmd="report", period="total"))["rows"]
    assert [row["values"]["all"] for row in total] == [[want_in, want_out]]


@pytest.mark.parametrize("seed", [1, 2])
def test_clock_steps_lose_nothing_and_count_nothing_twice(tmp_path: Path, seed: int) -> None:
    asyncio.run(scenario(tmp_path, seed))


def test_total_report_after_a_step_back_holds_the_minutes_ahead_of_the_clock(
    tmp_path: Path,
) -> None:
    asyncio.run(scenario(tmp_path, 1, total=True))


def test_uptime_stays_positive_when_the_clock_steps_back_after_start(tmp_path: Path) -> None:
    async def run() -> None:
        clock = Clock(float(T0))
        cfg = write_config(tmp_path)
        daemon = Metering(cfg, clock=clock)
        server = await start_server(
            cfg.socket, cfg.socket_group, Handlers(Reports(daemon, clock)).table()
        )
        try:
            clock.now -= HOUR
            status = await ask(cfg.socket, cmd="status")
            assert 0 <= status["uptime"] < 60  # type: ignore[operator]
        finally:
            await server.close()
            daemon.close()

    asyncio.run(run())
