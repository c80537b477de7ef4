"""State files are never reached through symlinks; directories others can write are refused."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from trafmetuxd.collector import Snapshot
from trafmetuxd.flowlog import FlowLog
from trafmetuxd.spec import Config, MonitorSpec
from trafmetuxd.statedir import UnsafeDirectoryError, check, flow_log_directory
from trafmetuxd.store import Store, StoreError

OTHER_UID = 50003  # a user who is not the daemon's


def test_state_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("not a database")
    db = tmp_path / "trafmetux.sqlite3"
    db.symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link"):
        Store(db)
    db.unlink()
    (tmp_path / "trafmetux.sqlite3-wal").symlink_to(victim)
    with pytest.raises(StoreError, match=r"trafmetux\.sqlite3-wal: is a symbolic link"):
        Store(db)
    assert victim.read_text() == "not a database"
    # The flow log refuses a symlink at its file's name as well, and names the file.
    log = tmp_path / "flows" / "all.log"
    log.parent.mkdir()
    log.symlink_to(victim)
    with pytest.raises(OSError) as caught:
        FlowLog(str(log)).append_text(datetime(2026, 10, 25), "--- Time: x\n")
    assert caught.value.filename == str(log)
    assert victim.read_text() == "not a database"


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_database_and_wal_are_0640_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        store = Store(tmp_path / "trafmetux.sqlite3")
        store.write(60.0, [("all", Snapshot({1: [1, 1, 0, 0]}, {}, 0))])
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert modes == {
        "trafmetux.sqlite3": 0o640,
        "trafmetux.sqlite3-wal": 0o640,
        "trafmetux.sqlite3-shm": 0o640,
    }


def config(state: Path, flow_log: str = "") -> Config:
    return Config(path=state / "t.toml", state_dir=state,
                  monitors=(MonitorSpec("all", flow_log=flow_log),))  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "owner", "why"),
    [(0o770, 0, "writable by its group"), (0o757, 0, "writable by its group or by everyone"),
     (0o750, OTHER_UID, f"owned by uid {OTHER_UID}")],
)  # fmt: skip
def test_state_dir_writable_by_others_is_refused(
    tmp_path: Path, mode: int, owner: int, why: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    os.chown(state, owner, 0)
    with pytest.raises(UnsafeDirectoryError) as caught:
        check(config(state), uid=0)
    message = str(caught.value)
    assert message.startswith(f"{state}: {why}")
    assert f"mode {mode:04o}" in message and f"owner uid {owner}" in message
    os.chmod(state, 0o750)
    os.chown(state, 0, 0)
    check(config(state), uid=0)  # once fixed, accepted


def test_flow_log_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    flows = state / "flows"
    flows.mkdir(parents=True)
    os.chmod(state, 0o750)
    os.chmod(flows, 0o777)
    pattern = str(flows / "%Y" / "{monitor}.log").replace("{monitor}", "all")
    assert flow_log_directory(pattern) == flows  # up to the first part that depends on time
    with pytest.raises(UnsafeDirectoryError, match=f"^{flows}: writable"):
        check(config(state, pattern), uid=0)
    os.chmod(flows, 0o750)
    check(config(state, pattern), uid=0)
    # a directory still to be made is judged by the one it will be made in
    check(config(state, str(state / "later" / "x.log")), uid=0)


PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own the directory as another uid")
def test_daemon_refuses_to_start_on_a_state_dir_others_can_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, OTHER_UID, OTHER_UID)
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'state_dir = "{state}"\nsocket = "{tmp_path}/s.sock"\n'
                   '[[monitor]]\nname = "all"\n')  # fmt: skip
    capture = tmp_path / "empty.pcap"
    capture.write_bytes(PCAP_HEADER)  # --replay: the kernel is never touched
    out = subprocess.run(
        [sys.executable, "-m", "trafmetuxd", "--config", str(cfg), "--replay", str(capture)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1, out
    assert f"trafmetuxd: {state}: owned by uid {OTHER_UID}" in out.stderr
    assert "mode 0750" in out.stderr or "mode 0755" in out.stderr
    assert list(state.iterdir()) == []  # nothing created there
