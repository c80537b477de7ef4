"""asyncio Unix-socket server: frame -> protocol -> handler table -> frame, with peer auth."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trafmetuxd import protocol
from trafmetuxd.logs import RateLimitedLog
from trafmetuxd.protocol import (
    ADMIN,
    BAD_JSON,
    FORBIDDEN,
    INTERNAL,
    OPERATE,
    PEER,
    TOO_LARGE,
    UNAVAILABLE,
    UNKNOWN_COMMAND,
    ProtocolError,
    Request,
)
from trafmetuxd.sockfile import bind_socket, remove_socket, resolve_group

if TYPE_CHECKING:  # the front process imports this module: not the handlers and the store
    from trafmetuxd.handlers import Handler

log = logging.getLogger(__name__)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
FIRST_LINE_TIMEOUT = 5.0  # seconds a new connection has to send its first complete request
WRITE_TIMEOUT = 5.0  # seconds a reply may wait for a client that does not read
EVICT_GRACE = 0.5  # seconds of silence (or not reading) before a connection may be evicted
REPLY_BUFFER = 16 * 1024  # bytes of replies held for one client before it must read
MAX_CLIENTS = 512  # an idle connection costs a few KiB; the fd limit is 1024 by default
UID_SHARE = 8  # one uid may hold at most 1/UID_SHARE of the connections (root: no cap)
REQUEST_RATE = 100.0  # requests per second one connection may make (sustained) ...
REQUEST_BURST = 20.0  # ... and at once; past that its requests wait, nobody else's do
MEMBERSHIP_TTL = 10.0  # seconds a group-membership answer is reused for the same uid/gid
MEMBERSHIP_CACHE = 1024  # (uid, gid) answers kept at most

# A validated, authorized request, its line as received and who sent it -> the reply line.
Answer = Callable[[Request, bytes, "Peer | None"], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end (SO_PEERCRED) and what it may do."""

    pid: int
    uid: int
    gid: int
    may_read: bool
    may_admin: bool


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connected process, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def is_member(uid: int, gid: int, group_gid: int) -> bool:
    """True when the peer's gid, its user's primary gid or supplementary groups include group."""
    if gid == group_gid:
        return True
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == group_gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(group_gid).gr_mem
    except KeyError:
        return False


def authorize(pid: int, uid: int, gid: int, group_gid: int) -> Peer:
    """Root may do anything; group members may read; everyone else nothing."""
    member = uid == 0 or is_member(uid, gid, group_gid)
    return Peer(pid, uid, gid, may_read=member, may_admin=uid == 0)


def may_operate(peer: Peer | None, admin_group: str) -> bool:
    """Root, or a member of admin_group (when one is configured), may adjust quotas."""
    if peer is None:
        return False
    if peer.uid == 0:
        return True
    if not admin_group:
        return False
    try:
        gid = grp.getgrnam(admin_group).gr_gid
    except KeyError:
        log.warning("admin_group %r does not exist: only root may adjust quotas", admin_group)
        return False
    return is_member(peer.uid, peer.gid, gid)


def local_answer(handlers: Mapping[str, Handler]) -> Answer:
    """Answer requests by running the handler table in this process.

    An OPERATE command's handler receives the peer (as the front forwarded its credentials)
    under the PEER argument: decode_request refuses that name from a client.
    """
    table = dict(handlers)

    async def answer(req: Request, _line: bytes = b"", peer: Peer | None = None) -> bytes:
        handler = table.get(req.cmd)
        if handler is None:
            return protocol.encode_reply_err(UNKNOWN_COMMAND, f"{req.cmd!r} is not served here")
        args = {**req.args, PEER: peer} if req.permission == OPERATE else req.args
        try:
            result = await handler(args)
        except ProtocolError as exc:
            return protocol.encode_reply_err(exc.code, exc.message)
        except Exception as exc:
            log.exception("command %r failed", req.cmd)
            return protocol.encode_reply_err(INTERNAL, f"{type(exc).__name__}: {exc}")
        return protocol.encode_reply_ok(result)

    return answer


def limit_replies(writer: asyncio.StreamWriter) -> None:
    """Hold at most REPLY_BUFFER of replies for a client, in the kernel and in the loop.

    A client that sends requests and never reads the replies then blocks after a few of
    them (and is dropped after WRITE_TIMEOUT) instead of being served until a 200 KiB
    socket buffer and a 64 KiB transport buffer are full. A large reply to a client that
    reads is unaffected: it is written in pieces as the client reads.
    """
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, REPLY_BUFFER)
    writer.transport.set_write_buffer_limits(high=REPLY_BUFFER)


class Bucket:
    """A token bucket: how long the next request waits (one connection's, or all of them)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def wait(self) -> float:
        """Seconds until a token is free; takes it."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(slots=True)
class _Connection:
    """One client connection; `evictable` while it has sent no request or reads no reply."""

    writer: asyncio.StreamWriter
    uid: int = -1  # the peer's, from the kernel
    evictable: bool = True
    since: float = 0.0  # monotonic time it became evictable

    def mark(self, evictable: bool) -> None:
        """Note whether the connection is of no use right now, and since when."""
        self.evictable = evictable
        self.since = time.monotonic()


class Server:
    """The running control socket server.

    At the client limit a newcomer takes the slot of the oldest connection that is of no use
    to anyone (it has not sent a complete request yet, or does not read its reply), so idle or
    deaf clients can delay a legitimate one by a moment but never lock it out.
    """

    def __init__(
        self,
        path: Path,
        group: str,
        answer: Answer,
        max_clients: int,
        idle_timeout: float,
        resolved: tuple[int, bool] | None = None,
        privileged: frozenset[int] | None = None,
    ) -> None:
        self.path = path
        self.group = group
        # (gid, found) when the caller already resolved the group (and warned if missing)
        self.gid, self.group_found = resolved if resolved is not None else resolve_group(group)
        self.answer = answer
        self.max_clients = max_clients
        self.per_uid = max(1, max_clients // UID_SHARE)
        self.privileged = frozenset({0, os.getuid()}) if privileged is None else privileged
        self.idle_timeout = idle_timeout
        self.clients = 0
        self.evicted = 0
        self.first_line_timeout = min(FIRST_LINE_TIMEOUT, idle_timeout)
        self.write_timeout = min(WRITE_TIMEOUT, idle_timeout)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: dict[asyncio.Task[None], _Connection] = {}  # insertion order: oldest first
        self._held: dict[int, int] = {}  # uid -> connections of self._conns it holds
        self._members: dict[tuple[int, int], tuple[bool, float]] = {}  # -> (member, expires)
        # what clients cause is logged as one line, a few a minute: never a traceback per client
        self._log = RateLimitedLog(log)

    def info(self) -> dict[str, object]:
        """JSON-able facts for the status command."""
        return {
            "socket": str(self.path),
            "socket_group": self.group,
            "socket_gid": self.gid,
            "socket_group_found": self.group_found,
            "clients": self.clients,
            "max_clients": self.max_clients,
            "max_clients_per_uid": self.per_uid,
            "evicted": self.evicted,
        }

    async def start(self, sock: socket.socket | None = None) -> None:
        """Start accepting connections on sock (already listening), or bind the path first."""
        if sock is None:
            sock = bind_socket(self.path, self.gid)
        self._server = await asyncio.start_unix_server(
            self._client, sock=sock, limit=protocol.MAX_LINE
        )

    async def close(self, unlink: bool = True) -> None:
        """Stop accepting, end every connection, drop the socket file (when unlink)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        # Abort the connections first: their tasks end on their own. Cancelling a stream
        # task makes Python 3.11's stream callback log a spurious CancelledError.
        for conn in self._conns.values():
            conn.writer.transport.abort()
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if unlink:
            remove_socket(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.clients += 1
        conn = _Connection(writer, since=time.monotonic())
        limit_replies(writer)
        try:
            pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
            conn.uid = uid
            refusal = self._admit(uid)
            if refusal:
                await self._send(conn, protocol.encode_reply_err(UNAVAILABLE, refusal))
                return
            self._add(task, conn)
            peer = await self._peer(pid, uid, gid)
            await self._serve(peer, reader, conn)
        except (ConnectionError, TimeoutError):
            pass
        except Exception as exc:
            self._log.error("control connection failed: %s: %s", type(exc).__name__, exc)
        finally:
            self.clients -= 1
            self._tasks.discard(task)
            self._remove(task)
            writer.close()

    def _admit(self, uid: int) -> str:
        """'' when a new connection of uid may have a slot (evicting one if need be), or why not."""
        if uid not in self.privileged and self._held.get(uid, 0) >= self.per_uid:
            return f"too many connections for uid {uid} (max {self.per_uid})"
        if self.clients <= self.max_clients or self._evict() or self._evict_for(uid):
            return ""
        return f"too many clients (max {self.max_clients})"

    def _add(self, task: asyncio.Task[None], conn: _Connection) -> None:
        self._conns[task] = conn
        self._held[conn.uid] = self._held.get(conn.uid, 0) + 1

    def _remove(self, task: asyncio.Task[None]) -> _Connection | None:
        conn = self._conns.pop(task, None)
        if conn is not None:
            left = self._held[conn.uid] - 1
            if left:
                self._held[conn.uid] = left
            else:
                del self._held[conn.uid]
        return conn

    def _evict_for(self, uid: int) -> bool:
        """Every slot busy: take the oldest of the user holding the most, if that is fairer."""
        others = [(n, u) for u, n in self._held.items() if u not in self.privileged]
        if not others:
            return False
        most, top = max(others)
        if uid not in self.privileged and self._held.get(uid, 0) + 2 > most:
            return False  # the newcomer's user already holds about as many: no fairer
        task = next(t for t, c in self._conns.items() if c.uid == top)
        self._drop(task)
        return True

    def _drop(self, task: asyncio.Task[None]) -> None:
        """Take a connection's slot now; its task ends on the abort."""
        conn = self._remove(task)
        assert conn is not None
        conn.writer.transport.abort()
        self.evicted += 1

    def _evict(self) -> bool:
        """Drop the connection longest silent before its first request, or longest not reading.

        Only connections in that state for EVICT_GRACE: a real client sends its request and
        reads its reply at once, so it is never taken for an idle one.
        """
        limit = time.monotonic() - EVICT_GRACE
        victims = [(c.since, t) for t, c in self._conns.items() if c.evictable and c.since < limit]
        if not victims:
            return False
        self._drop(min(victims, key=lambda victim: victim[0])[1])
        return True

    async def _peer(self, pid: int, uid: int, gid: int) -> Peer:
        if uid == 0:
            return authorize(pid, uid, gid, self.gid)  # root: no lookup at all
        now = time.monotonic()
        cached = self._members.get((uid, gid))
        if cached is None or cached[1] < now:
            # pwd/grp may consult NSS (LDAP, ...): keep it off the loop. The answer is reused
            # for a while, so a storm of connections does not queue lookups in the thread pool
            # ahead of a legitimate client's.
            member = await asyncio.to_thread(is_member, uid, gid, self.gid)
            if len(self._members) >= MEMBERSHIP_CACHE:
                self._members.clear()
            cached = self._members[(uid, gid)] = (member, now + MEMBERSHIP_TTL)
        return Peer(pid, uid, gid, may_read=cached[0], may_admin=False)

    async def _serve(self, peer: Peer, reader: asyncio.StreamReader, conn: _Connection) -> None:
        timeout = self.first_line_timeout  # a new connection must say something soon
        bucket = Bucket(REQUEST_RATE, REQUEST_BURST)
        while True:
            # Pipelined requests are already buffered: without this pause one connection would
            # be served until its socket buffers fill while every other client (and the packet
            # reader on the same loop) waits. Each request yields the loop; a connection over
            # its rate waits its turn.
            await asyncio.sleep(bucket.wait())
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), timeout)
            except asyncio.IncompleteReadError:
                return  # peer closed (a final line without newline is ignored)
            except asyncio.LimitOverrunError:
                msg = f"request line longer than {protocol.MAX_LINE} bytes"
                await self._send(conn, protocol.encode_reply_err(TOO_LARGE, msg))
                return
            if conn.writer.is_closing():
                return  # the client is gone: its buffered requests have nobody to answer
            conn.mark(False)
            timeout = self.idle_timeout
            await self._send(conn, await self.dispatch(peer, line))

    async def dispatch(self, peer: Peer, line: bytes) -> bytes:
        """One request line -> one reply line; never raises."""
        try:
            req = protocol.decode_request(line)
            if not peer.may_read or (req.permission == ADMIN and not peer.may_admin):
                raise ProtocolError(FORBIDDEN, f"uid {peer.uid} may not run {req.cmd!r}")
        except ProtocolError as exc:
            if exc.code == BAD_JSON and protocol.too_deep(line):
                self._log.log(logging.WARNING, "uid %d pid %d: %s", peer.uid, peer.pid, exc)
            return protocol.encode_reply_err(exc.code, exc.message)
        return await self.answer(req, line, peer)

    async def _send(self, conn: _Connection, data: bytes) -> None:
        conn.writer.write(data)
        if conn.writer.transport.get_write_buffer_size() == 0:
            return
        # A client that does not read its replies may lose its slot, and is dropped soon.
        conn.mark(True)
        await asyncio.wait_for(conn.writer.drain(), self.write_timeout)
        conn.mark(False)


async def start_server(
    path: Path | str,
    group: str,
    handlers: Mapping[str, Handler],
    max_clients: int = MAX_CLIENTS,
    idle_timeout: float = 30.0,
) -> Server:
    """Create the socket (0660, group) and serve requests through the handler table."""
    server = Server(Path(path), group, local_answer(handlers), max_clients, idle_timeout)
    await server.start()
    return server
