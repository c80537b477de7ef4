"""Connection slots of the real front are shared between users: nobody locks root out."""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import FakeBackend, LoopThread, make_config

from trafmetuxd import protocol
from trafmetuxd.api import local_answer
from trafmetuxd.handlers import Handlers
from trafmetuxd.link import Front
from trafmetuxd.reports import Reports

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uids")

SLOTS = 16  # the front's connection limit here; one uid may hold SLOTS // 8 = 2
DAEMON_GID = grp.getgrnam("daemon").gr_gid  # the socket group: its members may read
NOBODY = pwd.getpwnam("nobody").pw_uid
# Runs as one user: open N connections, ask `monitors` on each and keep them all open (busy,
# not idle: each read its reply) until stdin closes; print every reply first.
HOG = """
import json, socket, sys
held, replies = [], []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(b'{"cmd":"monitors"}\\n')
    line = s.makefile("rb").readline()
    replies.append(json.loads(line) if line else None)
    held.append(s)
print(json.dumps(replies), flush=True)
sys.stdin.read()
"""


def ask(path: Path, cmd: str) -> dict[str, object]:
    """One request as root on a fresh connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10.0)
        s.connect(str(path))
        s.sendall(protocol.encode_request(cmd))
        return json.loads(s.makefile("rb").readline())  # type: ignore[no-any-return]


class Hog:
    """A process of one uid holding connections open."""

    def __init__(self, path: Path, uid: int, connections: int) -> None:
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-I", "-c", HOG, str(path), str(connections)],
            user=uid, group=DAEMON_GID, extra_groups=[],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.replies: list[dict[str, object] | None] = json.loads(self.proc.stdout.readline())

    def served(self) -> int:
        """How many of its connections got an answer."""
        return sum(1 for r in self.replies if r is not None and r.get("ok") is True)

    def refusals(self) -> list[str]:
        """The messages of the unavailable replies it got."""
        return [
            r["error"]["message"]  # type: ignore[index]
            for r in self.replies
            if r is not None and r.get("ok") is False
        ]

    def close(self) -> None:
        """Let go of every connection."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(20)
        self.proc.stdout.close()


@contextmanager
def front(public_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real front with SLOTS connection slots."""
    monkeypatch.setattr("trafmetuxd.link.MAX_CLIENTS", SLOTS)
    sock = public_dir / "trafmetuxd.sock"
    (public_dir / "state").mkdir()
    backend = FakeBackend(make_config(public_dir / "state", sock))
    loops = LoopThread()
    running = Front(sock, "daemon", local_answer(Handlers(Reports(backend)).table()))

    async def start() -> None:
        running.bind()
        running.start()

    loops.run(start())
    try:
        yield sock
    finally:
        loops.run(running.stop())
        loops.stop()


def test_one_uid_cannot_lock_out_root(public_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with front(public_dir, monkeypatch) as sock:
        hog = Hog(sock, NOBODY, SLOTS)  # every slot there is, all busy
        try:
            assert hog.served() == 2
            assert set(hog.refusals()) == {f"too many connections for uid {NOBODY} (max 2)"}
            reply = ask(sock, "status")
            assert reply["ok"] is True  # root
            socket_info = reply["result"]["socket"]  # type: ignore[index]
            assert socket_info["max_clients"] == SLOTS
            assert socket_info["max_clients_per_uid"] == 2
            other = Hog(sock, 50001, 1)  # another user is served too
            assert other.served() == 1
            other.close()
        finally:
            hog.close()


def test_users_filling_every_slot_still_let_root_and_newcomers_in(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with front(public_dir, monkeypatch) as sock:
        hogs = [Hog(sock, 50001 + i, 2) for i in range(SLOTS // 2)]
        try:
            assert [h.served() for h in hogs] == [2] * (SLOTS // 2)  # every slot busy
            reply = ask(sock, "status")
            assert reply["ok"] is True, reply  # root takes a slot from a user holding two
            assert reply["result"]["socket"]["evicted"] == 1  # type: ignore[index]
            late = Hog(sock, 50100, 2)  # a user holding none gets a slot ...
            assert late.served() == 1  # ... but not a second: it would hold 2, others hold 2
            assert late.refusals() == [f"too many clients (max {SLOTS})"]
            late.close()
        finally:
            for hog in hogs:
                hog.close()
