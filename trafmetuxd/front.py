"""The control socket's front process: accept, authorize, validate, forward to the daemon.

The daemon runs it as `python -m trafmetuxd.front ...` with the listening socket and one end
of a private link. Every connection, partial line, garbage request and deaf client is
handled here, in a process of its own that holds no capability and runs at a lower priority:
the packet path shares neither its event loop nor its GIL with anything a local user sends.
Only validated, authorized requests cross the link, at a bounded rate and fairly between users
and their processes, so even a flood of well-formed requests costs the meter a bounded share
of its time and cannot crowd out anyone else's.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures.thread  # noqa: F401  asyncio.to_thread's, loaded before the uid switch
import contextlib
import ctypes
import json
import logging
import os
import pwd
import resource
import signal
import socket
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from trafmetuxd import logs, protocol
from trafmetuxd.api import Bucket, Peer, Server
from trafmetuxd.child import die_with_parent
from trafmetuxd.protocol import UNAVAILABLE, Request
from trafmetuxd.web import HTTP_UID, Auth, WebServer

log = logging.getLogger("trafmetuxd.front")

NICE = 10  # the meter first: under CPU contention this process yields to the packet path
FORWARD_RATE = 200.0  # requests per second the daemon is asked, all clients together ...
FORWARD_BURST = 100.0  # ... and at once
FD_WANTED = 4096  # open files asked for (soft limit, within the hard one)
FD_SPARE = 64  # files kept for the link, the store-less rest of the process
HASH_ENV = "TRAFMETUX_HTTP_PASSWORD_HASH"  # the basic-auth hash: not on the command line
LINK_LIMIT = 1 << 28  # longest reply line from the daemon (it is trusted; flows can be large)

_STOPPING = protocol.encode_reply_err(UNAVAILABLE, "the daemon is stopping")
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
CAP_LAST_CAP = Path("/proc/sys/kernel/cap_last_cap")
USERS = ("trafmetux", "nobody")  # the front's user when the daemon runs as root: the first found
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522


class Rounds:
    """Waiting requests served user by user in rotation, and each user's process by process.

    A user flooding the socket from a thousand processes gets one turn a round, as another
    user's monitoring script asking now and then does; within one user (root, say), a process
    flooding over hundreds of connections gets one turn in its user's round.
    """

    def __init__(self) -> None:
        # uid -> pid -> turns; dicts keep insertion order, so the first entry is next
        self.users: dict[int, dict[int, deque[asyncio.Future[None]]]] = {}

    def __bool__(self) -> bool:
        return bool(self.users)

    def push(self, uid: int, pid: int, turn: asyncio.Future[None]) -> None:
        """Queue a request of process pid of user uid."""
        self.users.setdefault(uid, {}).setdefault(pid, deque()).append(turn)

    def pop(self) -> asyncio.Future[None]:
        """The next turn; its process and user go to the back of their rounds."""
        uid, procs = next(iter(self.users.items()))
        del self.users[uid]
        pid, turns = next(iter(procs.items()))
        del procs[pid]
        turn = turns.popleft()
        if turns:
            procs[pid] = turns
        if procs:
            self.users[uid] = procs
        return turn

    def every(self) -> Iterator[asyncio.Future[None]]:
        """Every waiting turn."""
        for procs in self.users.values():
            for turns in procs.values():
                yield from turns


class Forwarder:
    """Sends validated request lines to the daemon and hands each its reply.

    The daemon is asked at a bounded rate, so its share of time stays bounded whatever the
    clients do; waiting requests take their turns fairly between users and processes (Rounds).
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.waiting = Rounds()
        self.bucket = Bucket(FORWARD_RATE, FORWARD_BURST)
        self.sent = 0
        self.closed = False
        self._pump: asyncio.Task[None] | None = None

    async def call(self, line: bytes, uid: int = 0, pid: int = 0, gid: int = 0) -> bytes:
        """The daemon's reply line to one request line of process pid of user uid."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.push(uid, pid, turn)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._grant())
        await turn
        if self.closed:
            return _STOPPING
        self.sent += 1
        ident = self.sent
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        # the server's lines end with b"\n"; the credentials are the kernel's (SO_PEERCRED)
        self.writer.write(b"%d %d:%d:%d %s" % (ident, uid, gid, pid, line))
        try:
            return await future
        finally:
            self.pending.pop(ident, None)

    async def _grant(self) -> None:
        """Give the waiting requests their turns, at FORWARD_RATE."""
        while self.waiting and not self.closed:
            turn = self.waiting.pop()
            if turn.done():
                continue  # its client went away while it waited
            await asyncio.sleep(self.bucket.wait())
            if not turn.done():
                turn.set_result(None)

    async def read_replies(self, reader: asyncio.StreamReader) -> None:
        """Resolve pending requests with their replies until the daemon closes the link."""
        try:
            while line := await reader.readline():
                ident, _, reply = line.partition(b" ")
                future = self.pending.get(int(ident))
                if future is not None and not future.done():
                    future.set_result(reply)
        except (ConnectionError, ValueError, asyncio.LimitOverrunError) as exc:
            log.error("link to the daemon broken: %s", exc)
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_result(_STOPPING)
        for turn in self.waiting.every():
            if not turn.done():
                turn.set_result(None)

    def info(self) -> dict[str, object]:
        """JSON-able facts for the status command."""
        return {"front_pid": os.getpid(), "forwarded": self.sent}


def with_socket_info(reply: bytes, info: dict[str, object]) -> bytes:
    """A status reply with the socket's own figures (known only here) added."""
    obj = json.loads(reply)
    if not obj.get("ok") or not isinstance(obj.get("result"), dict):
        return reply
    return protocol.encode_reply_ok({**obj["result"], "socket": info})


async def serve(listener: socket.socket, link: socket.socket, args: argparse.Namespace) -> int:
    """Serve the socket until the daemon closes the link."""
    reader, writer = await asyncio.open_unix_connection(sock=link, limit=LINK_LIMIT)
    forwarder = Forwarder(writer)

    async def answer(req: Request, line: bytes, peer: Peer | None) -> bytes:
        if peer is None:
            reply = await forwarder.call(line, HTTP_UID, HTTP_UID, HTTP_UID)
        else:
            reply = await forwarder.call(line, peer.uid, peer.pid, peer.gid)
        if req.cmd != "status":
            return reply
        return with_socket_info(reply, server.info() | forwarder.info())

    resolved = (args.gid, args.group_found == 1)  # the daemon resolved it, and warned
    privileged = frozenset({0, args.daemon_uid})  # always served, whoever fills the slots
    server = Server(
        Path(args.path), args.group, answer, args.max_clients, args.idle_timeout, resolved,
        privileged,
    )  # fmt: skip
    await server.start(listener)
    web = WebServer(
        lambda line: forwarder.call(line, HTTP_UID, HTTP_UID, HTTP_UID),
        args.http_max_clients,
        Auth(args.http_user, args.http_hash),
    )
    await web.start([socket.socket(fileno=fd) for fd in args.http_fd])
    await forwarder.read_replies(reader)
    await web.close()
    await server.close(unlink=False)  # the daemon owns the socket file
    writer.close()
    return 0


def drop_privileges() -> None:
    """Lower the priority and give up every capability: this process faces untrusted users."""
    os.nice(NICE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    empty = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: two words each
    if libc.capset(header, empty) != 0:
        raise OSError(ctypes.get_errno(), "capset: cannot drop capabilities")
    # nothing exec'd from here (a setuid binary, file capabilities) may gain a privilege
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl: cannot set no_new_privs")


def unprivileged_user() -> pwd.struct_passwd:
    """The user the front becomes when started as root: trafmetux, else nobody."""
    for name in USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise OSError(f"none of the users {', '.join(USERS)} exists; the front will not run as root")


def leave_root() -> None:
    """Started as root: empty the capability bounding set and become an unprivileged user.

    Root without capabilities still owns root's files (the database, the config) and could
    regain every capability by exec'ing; as another uid with an empty bounding set it can
    do neither. The listening socket and the link are already open: they stay usable.
    """
    if os.geteuid() != 0:
        return
    user = unprivileged_user()
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(int(CAP_LAST_CAP.read_text()) + 1):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl: cannot drop capability {cap}")
    os.setgroups([])
    os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
    os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)


def client_limit(wanted: int) -> int:
    """Raise the open-file limit toward FD_WANTED; the clients it leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_WANTED if hard == resource.RLIM_INFINITY else min(FD_WANTED, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(1, min(wanted, soft - FD_SPARE))


def build_parser() -> argparse.ArgumentParser:
    """Arguments the daemon passes (not meant to be typed by hand)."""
    parser = argparse.ArgumentParser(prog="trafmetuxd.front")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--link-fd", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--group-found", type=int, choices=(0, 1), required=True)
    parser.add_argument("--max-clients", type=int, required=True)
    parser.add_argument("--idle-timeout", type=float, required=True)
    parser.add_argument("--http-fd", type=int, action="append", default=[])
    parser.add_argument("--http-user", default="trafmetux")
    parser.add_argument("--http-max-clients", type=int, default=64)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the front; exit status 0 when the daemon closed the link."""
    args = build_parser().parse_args(argv)
    args.http_hash = os.environ.pop(HASH_ENV, "")
    die_with_parent(args.parent)
    # The daemon decides when to stop: it closes the link. A terminal's ^C or hangup reaches
    # the whole process group and must not end the socket under a running daemon.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.setup()
    args.max_clients = client_limit(args.max_clients)
    args.daemon_uid = os.getuid()  # the daemon's: this process was started with it
    leave_root()
    drop_privileges()
    die_with_parent(args.parent)  # again: changing the uid cleared the parent-death signal
    listener = socket.socket(fileno=args.listen_fd)
    link = socket.socket(fileno=args.link_fd)
    return asyncio.run(serve(listener, link, args))


if __name__ == "__main__":
    sys.exit(main())
