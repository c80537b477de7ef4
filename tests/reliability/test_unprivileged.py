"""The daemon without root, started the way the systemd unit starts it.

User nobody, no supplementary groups, CAP_NET_ADMIN and CAP_NET_RAW as ambient capabilities
and nothing else in the bounding set (setpriv does what AmbientCapabilities= and
CapabilityBoundingSet= do); state and socket directories owned by that user. It must bind its
queue, install its rules and meter exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.live import MONITORS, Live, expected, fresh_counters
from harness.netns import Pair, traffic

NOBODY = pwd.getpwnam("nobody")
SETPRIV = (
    "setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
    "--inh-caps=-all,+net_admin,+net_raw", "--ambient-caps=-all,+net_admin,+net_raw",
    "--bounding-set=-all,+net_admin,+net_raw", "--no-new-privs",
)  # fmt: skip


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory the unprivileged daemon can reach (pytest's tmp_path is 0700 root)."""
    made = Path(tempfile.mkdtemp(prefix="trafmetux-rel-"))
    os.chmod(made, 0o755)
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def start_as_nobody(pair: Pair, public_dir: Path, capture: dict[str, str] | None = None) -> Live:
    """The daemon as nobody with CAP_NET_ADMIN and CAP_NET_RAW only, as the unit runs it."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is not installed")
    state = public_dir / "state"
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    run = public_dir / "run"
    run.mkdir(mode=0o750)
    os.chown(run, NOBODY.pw_uid, NOBODY.pw_gid)
    fresh_counters(pair)
    live = Live(pair, public_dir, state_dir=state, socket_group="nogroup", capture=capture)
    live.sock_path = run / "trafmetuxd.sock"
    live.write_config(MONITORS)
    live.start(argv_prefix=SETPRIV)
    assert live.proc is not None
    return live


def test_daemon_as_nobody_with_net_admin_only_meters_exactly(pair: Pair, public_dir: Path) -> None:
    live = start_as_nobody(pair, public_dir)
    assert live.proc is not None
    status = Path(f"/proc/{live.proc.pid}/status").read_text()
    assert f"Uid:\t{NOBODY.pw_uid}" in status
    assert "CapEff:\t0000000000003000" in status  # CAP_NET_ADMIN | CAP_NET_RAW, nothing else
    # The socket's front process, which faces local users, keeps none of them.
    front = live.status()["front"]["pid"]  # type: ignore[index]
    front_status = Path(f"/proc/{front}/status").read_text()
    assert f"Uid:\t{NOBODY.pw_uid}" in front_status
    for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert f"{field}:\t0000000000000000" in front_status, front_status
    assert "TRAFMETUX" in pair.a.iptables_save()
    assert traffic(pair.a, "ping", pair.b4, "10").split() == ["10"]
    pair.settle()
    assert live.terminate() == 0, live.log()
    assert "TRAFMETUX" not in pair.a.iptables_save()
    a, b = pair.a.nft_counters(), pair.b.nft_counters()
    stored = live.stored()
    assert "icmp" in stored, (stored, live.log(), live.config.read_text())
    assert stored["icmp"] == expected("icmp", a, b)
    assert stored["all"] == expected("all", a, b)
    assert live.database.stat().st_uid == NOBODY.pw_uid


def test_unprivileged_stall_guard_sees_a_frozen_worker_without_the_root_only_queue_table(
    pair: Pair, public_dir: Path
) -> None:
    # /proc/net/netfilter/nfnetlink_queue is 0440 root: as nobody the guard reads the worker
    # socket's unread bytes in /proc/net/netlink instead, and must still act within the bound.
    live = start_as_nobody(pair, public_dir, capture={"stall_timeout": '"1s"'})
    (frozen,) = live.worker_pids()
    os.kill(frozen, signal.SIGSTOP)
    try:
        result = json.loads(traffic(pair.b, "ping-every", pair.a4, "50", "0.1", timeout=60))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGCONT)
    assert result["longest_gap"] <= 15, result  # stall_timeout + 0.5 s at 100 ms a ping
    (entry,) = live.status()["capture"]["workers"]  # type: ignore[index]
    assert entry["stalls"] == 1 and entry["pid"] != frozen, entry
    assert "held 1 packets without a verdict" in live.log()
    assert live.terminate() == 0, live.log()
