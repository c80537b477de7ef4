"""Under a real systemd, a frozen capture worker blacks out the metered link for at most
stall_timeout + 0.5 s: the stall guard kills it (the kernel unbinds its queue, --queue-bypass
lets traffic through) and starts a fresh worker, long before the watchdog would act.

Its own container (see conftest.py): a worker left frozen must not disturb test_boot.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from machine import Container
from test_boot import CONFIG, PEER, main_pid, setup_script, show

STALL_TIMEOUT = 1.0
PING_INTERVAL = 0.1
PINGS = 100  # 10 s
STALL_CONFIG = CONFIG.replace(
    'interfaces = ["vmeter"]\n', f'interfaces = ["vmeter"]\nstall_timeout = "{STALL_TIMEOUT:g}s"\n'
)


@pytest.fixture(scope="module")
def box(booted: Container) -> Iterator[Container]:
    """The booted container metering the veth with a 1 s stall timeout."""
    assert STALL_CONFIG != CONFIG
    booted.sh(setup_script(STALL_CONFIG))
    yield booted


def workers(box: Container) -> list[int]:
    """PIDs of the capture workers under the daemon's main process."""
    found = box.run(["pgrep", "-P", str(main_pid(box)), "-f", "trafmetuxd.worker"], check=False)
    return [int(pid) for pid in found.stdout.split()]


def test_a_frozen_capture_worker_is_replaced_within_the_stall_timeout(box: Container) -> None:
    main = main_pid(box)
    before = workers(box)
    assert before, "no capture worker (a 'trafmetuxd.worker' child of the daemon)"
    frozen = before[0]
    box.run(["kill", "-STOP", str(frozen)])
    ping = ["ping", "-n", "-c", str(PINGS), "-i", f"{PING_INTERVAL:g}", "-W", "1", PEER]
    result = box.run(ping, check=False, timeout=PINGS * PING_INTERVAL + 30)
    match = re.search(r"(\d+) packets transmitted, (\d+) received", result.stdout)
    assert match is not None, result.stdout
    lost = int(match.group(1)) - int(match.group(2))
    # "About" stall_timeout + 0.5 s: one more ping interval either side of the outage.
    assert lost * PING_INTERVAL <= STALL_TIMEOUT + 0.5 + 2 * PING_INTERVAL, result.stdout
    after = workers(box)
    assert frozen not in after, "the frozen worker was not killed"
    assert [pid for pid in after if pid not in before], "no fresh worker replaced the frozen one"
    assert main_pid(box) == main, "the watchdog restarted the service instead"
    assert show(box, "ActiveState") == "active"
