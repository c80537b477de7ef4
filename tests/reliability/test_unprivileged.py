"""The daemon without root, started the way the systemd unit starts it.

User nobody, no supplementary groups, CAP_NET_ADMIN and CAP_NET_RAW as ambient capabilities
and nothing else in the bounding set (setpriv does what AmbientCapabilities= and
CapabilityBoundingSet= do); state and socket directories owned by that user. It must bind its
queue, install its rules and meter exactly.
"""

from __future__ import annotations

import os
import pwd
import shutil
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


def test_daemon_as_nobody_with_net_admin_only_meters_exactly(pair: Pair, public_dir: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    state = public_dir / "state"
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    run = public_dir / "run"
    run.mkdir(mode=0o750)
    os.chown(run, NOBODY.pw_uid, NOBODY.pw_gid)
    fresh_counters(pair)
    live = Live(pair, public_dir, state_dir=state, socket_group="nogroup")
    live.sock_path = run / "trafmetuxd.sock"
    live.write_config(MONITORS)
    live.start(argv_prefix=SETPRIV)
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
