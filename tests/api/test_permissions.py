"""Who may talk to the socket: checked with real unprivileged uids (the tests run as root)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest
from conftest import NOW, FakeBackend, LoopThread, Running, make_config

from trafmetuxd.api import start_server
from trafmetuxd.handlers import Handlers
from trafmetuxd.limits import Limits
from trafmetuxd.reports import Reports

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uids")

# Runs as the unprivileged peer: send each argv line, print each reply (or the connect error).
PEER = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_error": type(exc).__name__}))
    sys.exit(0)
f = s.makefile("rwb")
for cmd in sys.argv[2:]:
    request = json.loads(cmd) if cmd.startswith("{") else {"cmd": cmd}
    f.write(json.dumps({"v": 1, **request}).encode() + b"\\n")
    f.flush()
    print(f.readline().decode().strip())
"""
NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_gid
DAEMON_GID = grp.getgrnam("daemon").gr_gid  # the socket group in these scenarios


@cache
def interpreter() -> str:
    """A Python the unprivileged uid can execute (the venv's may live under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            subprocess.run(
                [candidate, "-I", "-c", "pass"], user=NOBODY, group=NOGROUP, extra_groups=[],
                capture_output=True, check=True, timeout=20,
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            continue
        return candidate
    pytest.skip("no Python interpreter the nobody user may run")


def as_peer(path: Path, gid: int, *cmds: str, uid: int = NOBODY) -> list[dict[str, object]]:
    """Run the peer script as uid/gid (no supplementary groups) and collect its replies."""
    out = subprocess.run(
        [interpreter(), "-I", "-c", PEER, str(path), *cmds],
        user=uid, group=gid, extra_groups=[], capture_output=True, check=True, timeout=20,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def error_code(reply: dict[str, object]) -> object:
    err = reply.get("error")
    return err.get("code") if isinstance(err, dict) else None


def test_a_user_outside_the_group_cannot_connect(running: Running) -> None:
    (reply,) = as_peer(running.path, NOGROUP, "status")
    assert reply == {"connect_error": "PermissionError"}


def test_a_group_member_may_read_but_not_run_admin_commands(running: Running) -> None:
    status, flush, reload_, monitors = as_peer(
        running.path, DAEMON_GID, "status", "flush", "reload", "monitors"
    )
    assert status["ok"] is True
    assert error_code(flush) == "forbidden"
    assert error_code(reload_) == "forbidden"
    assert monitors["ok"] is True  # the connection survived the refusals
    assert running.backend.calls == []


def test_peer_credentials_refuse_outsiders_even_if_the_socket_mode_is_loosened(
    running: Running,
) -> None:
    os.chmod(running.path, 0o666)  # e.g. an admin's mistake: SO_PEERCRED still guards
    status, flush = as_peer(running.path, NOGROUP, "status", "flush")
    assert error_code(status) == "forbidden"
    assert error_code(flush) == "forbidden"
    assert running.backend.calls == []


def test_root_may_run_admin_commands(running: Running) -> None:
    flush, reload_ = as_peer(running.path, 0, "flush", "reload", uid=0)
    assert flush == {"ok": True, "result": {"flushed": True}}
    assert reload_["ok"] is True
    assert running.backend.calls == ["flush", "reload"]


EXTEND = json.dumps({"cmd": "quota-extend", "name": "mobile", "bytes": 1000})
RESET = json.dumps({"cmd": "quota-reset", "name": "mobile"})


@pytest.fixture
def enforcing(public_dir: Path) -> Iterator[Running]:
    """The server with quota enforcement behind it and admin_group "daemon"."""
    here = public_dir / "enforcing"
    here.mkdir(mode=0o755)
    (here / "state").mkdir()
    sock = here / "trafmetuxd.sock"
    backend = FakeBackend(replace(make_config(here / "state", sock), admin_group="daemon"))
    loops = LoopThread()
    reports = Reports(backend, clock=lambda: float(NOW))
    limits = Limits(reports, lambda _value: None, {})
    handlers = Handlers(reports, limits=limits).table()
    server = loops.run(start_server(sock, "daemon", handlers))
    try:
        yield Running(sock, server, backend, loops)
    finally:
        loops.run(server.close())
        loops.stop()


def test_quota_adjustments_take_root_or_admin_group_not_any_socket_member(
    running: Running, enforcing: Running
) -> None:
    # Without admin_group, a socket-group member may read quotas but not adjust them.
    quota, extend = as_peer(running.path, DAEMON_GID, "quota", EXTEND)
    assert quota["ok"] is True
    assert error_code(extend) == "forbidden"
    assert "uid 65534 may not run 'quota-extend': it takes root" in str(extend["error"])
    # With admin_group = "daemon", its member may; the log of the quota names who did.
    extend, reset = as_peer(enforcing.path, DAEMON_GID, EXTEND, RESET)
    assert extend["ok"] is True and reset["ok"] is True
    history = reset["result"]["quota"]["history"]  # type: ignore[index]
    assert f"extended by 1000 B by uid {NOBODY}" in history[0]
    assert f"reset by uid {NOBODY}" in history[1]
    (again,) = as_peer(enforcing.path, DAEMON_GID, '{"cmd": "quota-extend", "name": "mobile", '
                       '"bytes": 1, "peer": {"uid": 0}}')  # fmt: skip
    assert error_code(again) == "bad_argument"  # nobody passes itself off as root
