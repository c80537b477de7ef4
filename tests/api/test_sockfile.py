"""The socket file is created safely in a directory another user can write."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest

from trafmetuxd.sockfile import SOCKET_MODE, bind_socket, remove_socket

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uids")

NOBODY = pwd.getpwnam("nobody")
BINDS = 400  # the race was won after 361 binds on main; bounded in time below as well
# Runs as nobody: keep replacing the socket's name by a symlink to the victim file.
ATTACKER = """
import os, sys, time
path, victim, stop = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
while time.monotonic() < stop and not os.path.exists(sys.argv[4]):
    try:
        os.unlink(path)
    except OSError:
        pass
    try:
        os.symlink(victim, path)
    except OSError:
        pass
"""


def test_socket_creation_race_cannot_chmod_another_file(public_dir: Path) -> None:
    shared = public_dir / "run"  # writable by nobody, as a careless RuntimeDirectory might be
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    victim = public_dir / "secret"
    victim.write_text("root only")
    os.chmod(victim, 0o600)
    path = shared / "trafmetuxd.sock"
    done = public_dir / "done"
    attacker = subprocess.Popen(
        ["/usr/bin/python3", "-I", "-c", ATTACKER, str(path), str(victim), "30", str(done)],
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
    )
    made = refused = 0
    deadline = time.monotonic() + 20.0
    try:
        for _ in range(BINDS):
            if time.monotonic() > deadline:
                break
            try:
                sock = bind_socket(path, NOBODY.pw_gid)
            except OSError as exc:
                assert str(path) in str(exc)  # a clear refusal naming the file
                refused += 1
                continue
            made += 1
            sock.close()
            remove_socket(path)
    finally:
        done.touch()
        attacker.wait(40)
    st = victim.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == 0, "the victim was changed"
    assert made + refused > 0
    assert not [p for p in shared.iterdir() if p.name.startswith(".trafmetuxd-")]


def test_bound_socket_has_its_mode_and_group_and_replaces_nothing(public_dir: Path) -> None:
    path = public_dir / "trafmetuxd.sock"
    sock = bind_socket(path, NOBODY.pw_gid)
    try:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == SOCKET_MODE and st.st_gid == NOBODY.pw_gid
        assert sorted(p.name for p in public_dir.iterdir()) == ["trafmetuxd.sock"]
    finally:
        sock.close()
        remove_socket(path)
