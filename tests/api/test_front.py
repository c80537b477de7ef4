"""The control socket's front process: forwarding, fairness, privileges, restarts, shutdown."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NOW, FakeBackend, LoopThread, make_config

from trafmetuxd import protocol
from trafmetuxd.api import Peer, local_answer
from trafmetuxd.front import Forwarder, unprivileged_user
from trafmetuxd.handlers import Handlers
from trafmetuxd.link import Front, serve_link
from trafmetuxd.protocol import Request
from trafmetuxd.reports import Reports
from trafmetuxd.store import Store


def ask(path: Path, cmd: str, timeout: float = 10.0) -> dict[str, object]:
    """One request on a fresh connection; the decoded reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(protocol.encode_request(cmd))
        return json.loads(s.makefile("rb").readline())  # type: ignore[no-any-return]


def wait_for(check: object, timeout: float = 10.0) -> None:
    """Poll a zero-argument callable until it returns true."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def launch(loops: LoopThread, front: Front) -> None:
    """Bind the front's socket and start it, on the loop thread."""

    async def start() -> None:
        front.bind()
        front.start()

    loops.run(start())


@pytest.fixture
def front(public_dir: Path) -> Iterator[tuple[Front, Path, LoopThread]]:
    """A real front process serving the handlers of a fake daemon."""
    sock = public_dir / "trafmetuxd.sock"
    (public_dir / "state").mkdir()
    backend = FakeBackend(make_config(public_dir / "state", sock))
    loops = LoopThread()
    handlers = Handlers(Reports(backend, clock=lambda: float(NOW))).table()
    running = Front(sock, "daemon", local_answer(handlers), idle_timeout=5.0)

    launch(loops, running)
    try:
        yield running, sock, loops
    finally:
        loops.run(running.stop())
        loops.stop()


def test_requests_are_answered_by_the_daemon_through_the_front(
    front: tuple[Front, Path, LoopThread],
) -> None:
    running, sock, _loops = front
    reply = ask(sock, "status")
    assert reply["ok"] is True
    result = reply["result"]
    assert isinstance(result, dict)
    assert result["state"] == "running"  # the daemon's answer ...
    info = result["socket"]  # ... with the socket's own figures, which only the front knows
    assert info["front_pid"] == running.info()["pid"] != os.getpid()
    assert info["forwarded"] == 1
    assert info["socket_group"] == "daemon" and info["socket_group_found"] is True
    assert info["socket_gid"] == grp.getgrnam("daemon").gr_gid == sock.stat().st_gid
    assert ask(sock, "reload")["ok"] is True  # root may run admin commands


def test_front_runs_niced_and_without_capabilities(front: tuple[Front, Path, LoopThread]) -> None:
    running, sock, _loops = front
    assert ask(sock, "monitors")["ok"] is True  # up and serving
    pid = running.info()["pid"]
    assert isinstance(pid, int)
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 10
    caps = {
        line.split(":")[0]: int(line.split()[1], 16)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Cap")
    }
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapInh"] == caps["CapAmb"] == 0
    assert os.geteuid() != 0 or int(
        next(
            line.split()[1]
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("CapEff")
        ),
        16,
    ), "the test itself runs with capabilities: the front dropped them"


# Runs with the front's very credentials: may it open the database for writing?
OPEN_FOR_WRITING = """
import os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDWR))
except OSError as exc:
    print(type(exc).__name__)
else:
    print("opened")
"""


ASK_MONITORS = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b'{"cmd":"monitors"}\\n')
print(s.makefile("rb").readline().decode())
"""


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of field -> text."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.mark.skipif(os.geteuid() != 0, reason="the daemon must run as root for this")
def test_front_run_as_root_drops_to_unprivileged_uid(
    front: tuple[Front, Path, LoopThread],
) -> None:
    running, sock, _loops = front
    database = sock.parent / "state" / "trafmetux.sqlite3"
    Store(database).close()  # the daemon's database, created as root
    assert ask(sock, "monitors")["ok"] is True  # the front is up (past its start-up)
    pid = running.info()["pid"]
    assert isinstance(pid, int)
    user = unprivileged_user()
    assert user.pw_name in ("trafmetux", "nobody") and user.pw_uid != 0
    status = proc_status(pid)
    assert status["Uid"].split() == [str(user.pw_uid)] * 4  # real, effective, saved, fs
    assert status["Gid"].split() == [str(user.pw_gid)] * 4
    assert status["Groups"] == ""
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, (field, status[field])
    assert status["NoNewPrivs"] == "1"
    # It still serves: the inherited socket and link work, and so does a member's lookup.
    assert ask(sock, "status")["ok"] is True
    assert ask(sock, "reload")["ok"] is True  # the peer (root) is still root
    member = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", ASK_MONITORS, str(sock)],
        user=50002, group=grp.getgrnam("daemon").gr_gid, extra_groups=[],
        capture_output=True, text=True, check=True, timeout=20,
    )  # fmt: skip
    assert json.loads(member.stdout)["ok"] is True  # a group member, looked up in a thread
    # A process with exactly the front's credentials cannot open the database for writing.
    out = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", OPEN_FOR_WRITING, str(database)],
        user=user.pw_uid, group=user.pw_gid, extra_groups=[],
        capture_output=True, text=True, check=True, timeout=20,
    )  # fmt: skip
    assert out.stdout.strip() == "PermissionError"
    # ... though it is the same file root just opened: the refusal is the uid's, not a typo.
    os.close(os.open(database, os.O_RDWR))


def test_a_killed_front_is_replaced_and_the_socket_keeps_answering(
    front: tuple[Front, Path, LoopThread],
) -> None:
    running, sock, _loops = front
    # Answered only once the front runs and its link is served, so its pid is known by then.
    assert ask(sock, "monitors")["ok"] is True
    first = running.info()["pid"]
    assert isinstance(first, int)
    os.kill(first, signal.SIGKILL)
    # Connections made while no front runs wait in the listen backlog and are served after.
    reply = ask(sock, "status", timeout=15.0)
    assert reply["ok"] is True
    assert reply["result"]["socket"]["front_pid"] != first  # type: ignore[index]
    assert running.info()["restarts"] == 1
    assert sock.is_socket()


def test_stopping_ends_the_front_and_removes_the_socket(public_dir: Path) -> None:
    sock = public_dir / "trafmetuxd.sock"
    (public_dir / "state").mkdir()
    backend = FakeBackend(make_config(public_dir / "state", sock))
    loops = LoopThread()
    running = Front(sock, "daemon", local_answer(Handlers(Reports(backend)).table()))

    try:
        launch(loops, running)
        assert ask(sock, "monitors")["ok"] is True
        pid = running.info()["pid"]
        assert isinstance(pid, int) and alive(pid)
        loops.run(running.stop())
        assert not alive(pid)
        assert not sock.exists()
        assert running.restarts == 0
    finally:
        loops.stop()


DAEMON_STANDIN = """
import asyncio, sys
from pathlib import Path
from trafmetuxd.api import local_answer
from trafmetuxd.link import Front

async def main():
    front = Front(Path(sys.argv[1]), "daemon", local_answer({}))
    front.bind()
    front.start()
    while front.proc is None:
        await asyncio.sleep(0.01)
    print(front.proc.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_the_front_dies_with_a_daemon_killed_by_sigkill(public_dir: Path) -> None:
    sock = public_dir / "trafmetuxd.sock"
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON_STANDIN, str(sock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert daemon.stdout is not None
        front_pid = int(daemon.stdout.readline())
        wait_for(lambda: alive(front_pid))
        daemon.kill()
        daemon.wait(10)
        wait_for(lambda: not alive(front_pid), timeout=5.0)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        assert daemon.stdout is not None
        daemon.stdout.close()


async def forward_many(calls: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Forward one request per (uid, pid) through a Forwarder to an in-process link server.

    Returns the (uid, pid) of each in the order their replies came.
    """
    ours, theirs = socket.socketpair()
    f_reader, f_writer = await asyncio.open_unix_connection(sock=ours)
    d_reader, d_writer = await asyncio.open_unix_connection(sock=theirs)

    async def echo(req: Request, _line: bytes, _peer: Peer | None) -> bytes:
        return protocol.encode_reply_ok(req.cmd)

    daemon = asyncio.create_task(serve_link(d_reader, d_writer, echo))
    forwarder = Forwarder(f_writer)
    forwarder.bucket.tokens = 0.0  # no burst: every turn is paced, so the order shows
    replies = asyncio.create_task(forwarder.read_replies(f_reader))
    order: list[tuple[int, int]] = []
    line = protocol.encode_request("monitors")

    async def one(uid: int, pid: int) -> None:
        reply = protocol.decode_reply(await forwarder.call(line, uid, pid))
        assert reply.ok and reply.result == "monitors"
        order.append((uid, pid))

    await asyncio.gather(*(one(uid, pid) for uid, pid in calls))
    f_writer.close()
    d_writer.close()
    await asyncio.gather(daemon, replies)
    return order


def test_a_process_flooding_requests_gets_one_turn_per_round() -> None:
    # Process 1 of root queues 30 requests (over 30 connections) before root's process 2 asks.
    order = asyncio.run(forward_many([(0, 1)] * 30 + [(0, 2)]))
    assert sorted(order) == [(0, 1)] * 30 + [(0, 2)]
    assert order.index((0, 2)) <= 1  # served in the first round, not after the flood


def test_a_user_flooding_from_many_processes_gets_one_turn_per_round() -> None:
    # User 1000 asks from 30 processes before user 1001's one process asks once.
    flood = [(1000, pid) for pid in range(100, 130)]
    order = asyncio.run(forward_many([*flood, (1001, 7)]))
    assert sorted(order) == sorted([*flood, (1001, 7)])
    assert order.index((1001, 7)) <= 1


def test_pending_requests_are_told_the_daemon_is_stopping() -> None:
    async def scenario() -> bytes:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        forwarder = Forwarder(writer)
        done = asyncio.create_task(forwarder.read_replies(reader))
        call = asyncio.create_task(forwarder.call(protocol.encode_request("status"), 7))
        await asyncio.sleep(0.05)  # the request is on the link; the daemon never answers
        theirs.close()
        await done
        return await call

    reply = protocol.decode_reply(asyncio.run(scenario()))
    assert not reply.ok and reply.code == protocol.UNAVAILABLE


class BrokenFront(Front):
    """A front whose program exits at once, as a broken installation's would."""

    def _command(self, listen_fd: int, link_fd: int) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit(3)"]


def test_a_front_that_keeps_dying_is_retried_ever_more_slowly(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("trafmetuxd.link.RESTART_DELAY", 0.1)
    monkeypatch.setattr("trafmetuxd.link.RESTART_DELAY_MAX", 0.4)
    sock = public_dir / "trafmetuxd.sock"
    loops = LoopThread()
    broken = BrokenFront(sock, "daemon", local_answer({}))

    try:
        with caplog.at_level("WARNING", logger="trafmetuxd.link"):
            launch(loops, broken)
            wait_for(lambda: broken.restarts >= 5)
            loops.run(broken.stop())
    finally:
        loops.stop()
    delays = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert delays[:5] == [f"restarting the control socket front in {d} s"
                          for d in ("0.1", "0.2", "0.4", "0.4", "0.4")]  # fmt: skip
    exits = [r.getMessage() for r in caplog.records if "exited" in r.getMessage()]
    assert exits and all(m.endswith("exited, status 3") for m in exits)
    assert not sock.exists()


def test_a_missing_socket_group_is_reported_once_not_by_both_processes(
    public_dir: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    sock = public_dir / "trafmetuxd.sock"
    loops = LoopThread()
    running = Front(sock, "tmx-no-such-group", local_answer({}))

    try:
        with caplog.at_level("WARNING"):
            launch(loops, running)
            reply = ask(sock, "status")  # unknown_command here, but served by the front
            loops.run(running.stop())
    finally:
        loops.stop()
    assert reply["ok"] is False
    warned = [r for r in caplog.records if "does not exist" in r.getMessage()]
    assert len(warned) == 1  # the daemon's, when it created the socket
    assert "does not exist" not in capfd.readouterr().err  # the front's stderr


def test_deep_json_gets_bad_json_reply(public_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    sock = public_dir / "trafmetuxd.sock"
    (public_dir / "state").mkdir()
    backend = FakeBackend(make_config(public_dir / "state", sock))
    loops = LoopThread()
    running = Front(sock, "daemon", local_answer(Handlers(Reports(backend)).table()))
    try:
        launch(loops, running)  # in the test, so the front's stderr is captured
        for _ in range(20):  # a client repeating it must not fill the log either
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10.0)
                s.connect(str(sock))
                s.sendall(b"[" * 3000 + b"\n")
                lines = s.makefile("rb")
                reply = json.loads(lines.readline())
                assert reply["error"]["code"] == "bad_json"
                assert "nested deeper than 32" in reply["error"]["message"]
                s.sendall(protocol.encode_request("monitors"))  # the connection stays usable
                assert json.loads(lines.readline())["ok"] is True
        loops.run(running.stop())
    finally:
        loops.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "RecursionError" not in err
    logged = [line for line in err.splitlines() if "nested deeper" in line]
    assert 1 <= len(logged) <= 5, err  # one line per request, at most a few a minute


def test_the_clients_credentials_cross_the_link_with_its_request() -> None:
    async def scenario() -> list[Peer | None]:
        ours, theirs = socket.socketpair()
        f_reader, f_writer = await asyncio.open_unix_connection(sock=ours)
        d_reader, d_writer = await asyncio.open_unix_connection(sock=theirs)
        seen: list[Peer | None] = []

        async def answer(req: Request, _line: bytes, peer: Peer | None) -> bytes:
            seen.append(peer)
            return protocol.encode_reply_ok(req.cmd)

        daemon = asyncio.create_task(serve_link(d_reader, d_writer, answer))
        forwarder = Forwarder(f_writer)
        replies = asyncio.create_task(forwarder.read_replies(f_reader))
        line = protocol.encode_request("quota", name="mobile")
        assert protocol.decode_reply(await forwarder.call(line, 1234, 55, 777)).ok
        f_writer.close()
        d_writer.close()
        await asyncio.gather(daemon, replies)
        return seen

    (peer,) = asyncio.run(scenario())
    assert peer == Peer(pid=55, uid=1234, gid=777, may_read=True, may_admin=False)
