"""The main process's side of enforcement: when a quota's state goes to the workers, and the
operator's extensions and resets, with the real metering core, store and an injected clock."""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from trafmetuxd import config
from trafmetuxd.limits import ADJUSTMENTS_FILE, Limits
from trafmetuxd.metering import Metering
from trafmetuxd.reports import Reports
from trafmetuxd.spec import DIR_OUT

T0 = 1_736_935_200  # 2025-01-15 10:00:00 UTC
DAY = 86400


class Clock:
    """A wall clock the test steps by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def udp4(total_length: int, src: bytes = bytes([10, 0, 0, 1])) -> bytes:
    """The first bytes of an outgoing IPv4 UDP packet of the given total length."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total_length, 1, 0, 64, 17, 0,
                         src, bytes([10, 0, 0, 2]))  # fmt: skip
    return header + struct.pack("!HHHH", 40000, 5001, total_length - 20, 0)


def setup(
    tmp: Path, per_host: bool = False
) -> tuple[Metering, Clock, Limits, list[dict[str, object]]]:
    """A daily 10 kB block quota on outgoing traffic (per host of 192.0.2.0/24 if asked);
    the pushes are collected."""
    path = tmp / "trafmetux.toml"
    hosts = 'hosts = ["192.0.2.0/24"]\n' if per_host else ""
    path.write_text(
        f'state_dir = "{tmp / "state"}"\nsocket = "{tmp / "sock"}"\ntimezone = "UTC"\n'
        f'[[monitor]]\nname = "out"\nrules = [{{ direction = "out" }}]\n{hosts}'
        '[[quota]]\nname = "cap"\nmonitors = ["out"]\nlimit = "10kB"\nperiod = "day"\n'
        f'action = "block"\nper_host = {str(per_host).lower()}\n'
    )
    (tmp / "state").mkdir()
    clock = Clock(T0)
    metering = Metering(config.load(path), clock)
    pushes: list[dict[str, object]] = []
    limits = Limits(Reports(metering, clock), pushes.append, metering.shipped)
    return metering, clock, limits, pushes


def send(metering: Metering, clock: Clock, packets: int, size: int = 1000, host: int = 0) -> None:
    """Meter outgoing packets at the clock's time (from 192.0.2.host when host is given)."""
    src = bytes([192, 0, 2, host]) if host else bytes([10, 0, 0, 1])
    for _ in range(packets):
        metering.meter.feed(clock.now, udp4(size, src), DIR_OUT, "eth0")


def test_a_quota_crossing_its_limit_is_pushed_over_and_lifted_when_its_day_ends(
    tmp_path: Path,
) -> None:
    metering, clock, limits, pushes = setup(tmp_path)

    async def scenario() -> None:
        send(metering, clock, 9)
        await limits.check()
        assert pushes[-1]["over"] == {} and pushes[-1]["left"] == {"cap": 1000}
        send(metering, clock, 1)  # 10,000 B: used reaches the limit
        await limits.check()
        assert pushes[-1]["over"] == {"cap": {"all": True, "hosts": []}}
        assert pushes[-1]["left"] == {}
        count = len(pushes)
        await limits.check()
        assert len(pushes) == count  # nothing changed: nothing pushed
        assert metering.flush_now(clock.now)  # stored totals count as well as unflushed ones
        clock.now = T0 + DAY  # the clock steps into the next day: a new period
        await limits.check()
        assert pushes[-1]["over"] == {} and pushes[-1]["left"] == {"cap": 10_000}

    asyncio.run(scenario())
    metering.close()


def test_an_extension_lets_more_through_from_the_use_now_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    metering, clock, limits, pushes = setup(tmp_path)

    async def scenario() -> None:
        send(metering, clock, 12)  # 2,000 B past the limit (dropped ones count as used)
        await limits.check()
        status = await limits.adjust(metering.config.quotas[0], 5000, "uid 0 (pid 1)")
        assert pushes[-1]["over"] == {} and pushes[-1]["left"] == {"cap": 5000}
        assert status.extended == 7000 and status.state == "OK"  # 12,000 of 17,000 B
        assert "extended by 5000 B by uid 0 (pid 1)" in status.history[-1]

    asyncio.run(scenario())
    stored = json.loads((tmp_path / "state" / ADJUSTMENTS_FILE).read_text())
    assert stored["cap"]["extended"] == 7000
    # A new daemon life in the same period reads the extension back; the next period not.
    restarted = Limits(limits.reports, pushes.append, metering.shipped)

    async def after_restart() -> None:
        await restarted.check()
        assert pushes[-1]["left"] == {"cap": 5000}
        clock.now = T0 + DAY
        (st,) = await restarted.reports.quotas(adjustments=restarted.adjustments)
        assert st.extended == 0

    asyncio.run(after_restart())
    metering.close()


def test_a_reset_counts_afresh_and_a_reload_without_the_quota_lifts_it(tmp_path: Path) -> None:
    metering, clock, limits, pushes = setup(tmp_path)

    async def scenario() -> None:
        send(metering, clock, 10)
        await limits.check()
        assert "cap" in pushes[-1]["over"]  # type: ignore[operator]
        status = await limits.adjust(metering.config.quotas[0], None, "uid 0 (pid 1)")
        assert status.reset_used == 10_000 and status.used == 10_000
        assert pushes[-1]["left"] == {"cap": 10_000}
        send(metering, clock, 10)
        await limits.check()
        assert "cap" in pushes[-1]["over"]  # type: ignore[operator]
        metering.config = replace(metering.config, quotas=())  # what a reload does
        await limits.check()
        assert pushes[-1] == {"quotas": [], "over": {}, "left": {}}

    asyncio.run(scenario())
    metering.close()


def test_an_unreadable_adjustments_file_is_logged_and_ignored(tmp_path: Path, caplog) -> None:
    metering, _clock, limits, pushes = setup(tmp_path)
    (tmp_path / "state" / ADJUSTMENTS_FILE).write_text("{not json")
    again = Limits(limits.reports, pushes.append, metering.shipped)
    assert again.adjustments == {}
    assert "cannot read the quota adjustments" in caplog.text
    metering.close()


def test_a_per_host_quota_is_over_for_the_hosts_over_their_limit_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metering, clock, limits, pushes = setup(tmp_path, per_host=True)

    async def scenario() -> None:
        send(metering, clock, 10, host=1)  # 192.0.2.1 reaches the limit
        send(metering, clock, 3, host=2)
        await limits.check()
        assert pushes[-1]["over"] == {"cap": {"all": False, "hosts": ["192.0.2.1"]}}
        assert pushes[-1]["left"] == {}  # per host: the main process's look decides
        send(metering, clock, 8, host=2)
        await limits.check()
        assert pushes[-1]["over"] == {"cap": {"all": False, "hosts": ["192.0.2.1", "192.0.2.2"]}}
        status = await limits.adjust(metering.config.quotas[0], 2000, "uid 0 (pid 1)")
        # from the worst host's use now (11,000 B): 1,000 B over, so the limit is 13,000 B
        assert status.extended == 3000 and pushes[-1]["over"] == {}
        await limits.adjust(metering.config.quotas[0], None, "uid 0 (pid 1)")
        send(metering, clock, 1, host=1)
        await limits.check()
        assert pushes[-1]["over"] == {}  # each host counts from its use at the reset
        (st,) = await limits.reports.quotas(adjustments=limits.adjustments)
        assert (st.host, st.used) == ("192.0.2.1", 1000)

    asyncio.run(scenario())
    assert "quota cap: host 192.0.2.1 over its limit (10000 B used in 2025-01-15)" in caplog.text
    assert caplog.text.count("host 192.0.2.1 over its limit") == 1  # logged once per going over
    metering.close()
