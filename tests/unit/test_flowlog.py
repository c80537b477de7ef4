"""Scenarios for the classic text flow log: rendering and appending to strftime-named files."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from harness.packets import addr as ip
from trafmetuxd.collector import OTHER, RealtimeCollector, Snapshot
from trafmetuxd.flowlog import FlowLog, render
from trafmetuxd.packet import NO_PORT, PacketInfo
from trafmetuxd.spec import DIR_IN, DIR_OUT

WHEN = datetime(2001, 9, 12, 11, 32, 54)
CLIENT, SERVER = "192.168.190.62", "192.168.190.11"


def imap_snapshot() -> Snapshot:
    """Two IMAP connections of one client, counted by a compressing collector."""
    col = RealtimeCollector(10)
    for port, up, down in ((2532, 1000, 2000), (2533, 1548, 1748)):
        col.add(1, PacketInfo(4, 6, ip(CLIENT), port, ip(SERVER), 143, up, 0x10), DIR_OUT)
        col.add(1, PacketInfo(4, 6, ip(SERVER), 143, ip(CLIENT), port, down, 0x10), DIR_IN)
    return col.swap()


def test_compressed_imap_connections_render_as_one_classic_line() -> None:
    assert render(WHEN, imap_snapshot()) == (
        "--- Time: 2001-09-12 11:32:54\nTCP 192.168.190.62 65535 192.168.190.11 143 2548 3748\n"
    )


def test_lines_are_sorted_by_bytes_with_other_last_and_missing_ports_as_zero() -> None:
    v6a, v6b = ip("2001:db8::1"), ip("2001:db8::2")
    snap = Snapshot(
        {},
        {
            (4, 1, ip(CLIENT), NO_PORT, ip(SERVER), NO_PORT): [84, 84, 2],
            OTHER: [90000, 10, 7],
            (6, 17, v6a, 65535, v6b, 53): [60, 200, 2],
            (6, 58, v6a, NO_PORT, v6b, NO_PORT): [64, 64, 2],
            (4, 99, ip(SERVER), NO_PORT, ip(CLIENT), NO_PORT): [5000, 0, 3],
            (4, 6, ip(CLIENT), 65535, ip(SERVER), 25): [0, 0, 0],  # never counted: not shown
        },
        7,
    )
    assert render(WHEN, snap).splitlines()[1:] == [
        "99 192.168.190.11 0 192.168.190.62 0 5000 0",
        "UDP 2001:db8::1 65535 2001:db8::2 53 60 200",
        "ICMP 192.168.190.62 0 192.168.190.11 0 84 84",
        "ICMPV6 2001:db8::1 0 2001:db8::2 0 64 64",
        "* * 0 * 0 90000 10",
    ]


def test_an_empty_flush_renders_only_its_header() -> None:
    assert render(WHEN, Snapshot({}, {}, 0)) == "--- Time: 2001-09-12 11:32:54\n"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_append_creates_directories_and_files_per_strftime_pattern(tmp_path: Path) -> None:
    flow_log = FlowLog(str(tmp_path / "input" / "%Y" / "flows-%Y-%m-%d.log"))
    later = WHEN.replace(hour=23)
    next_day = WHEN.replace(day=13, hour=0)
    flow_log.append(WHEN, imap_snapshot())
    flow_log.append(later, Snapshot({}, {OTHER: [1, 2, 1]}, 1))
    flow_log.append(next_day, imap_snapshot())

    first = tmp_path / "input" / "2001" / "flows-2001-09-12.log"
    second = tmp_path / "input" / "2001" / "flows-2001-09-13.log"
    assert first.read_text() == render(WHEN, imap_snapshot()) + (
        "--- Time: 2001-09-12 23:32:54\n* * 0 * 0 1 2\n"
    )
    assert second.read_text() == render(next_day, imap_snapshot())
    assert stat.S_IMODE(first.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "input").stat().st_mode) == 0o750
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o750


def test_a_directory_blocked_by_a_file_raises_oserror_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "input").write_text("not a directory")
    flow_log = FlowLog(str(tmp_path / "input" / "flows.log"))
    with pytest.raises(OSError) as err:
        flow_log.append(WHEN, imap_snapshot())
    assert str(tmp_path / "input") in str(err.value)


def test_a_full_disk_raises_oserror_naming_the_file() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with pytest.raises(OSError) as err:
        FlowLog("/dev/full").append(WHEN, imap_snapshot())
    assert err.value.errno == errno.ENOSPC
    assert err.value.filename == "/dev/full"
