"""The daemon's end of the control socket: it runs the front process and answers its link.

The daemon binds the socket (path, mode, group, stale-file checks) and keeps it open; the
front (front.py) accepts on it. The link is a socketpair carrying "ID UID:GID:PID REQUEST-LINE"
one way (the client's credentials as the kernel gave them to the front) and "ID REPLY-LINE" the
other, so slow commands (a flush) do not hold up quick ones. If the
front dies it is started again on the same listening socket: clients queue in the backlog
meanwhile, and none is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from trafmetuxd import protocol
from trafmetuxd.api import Answer, Peer
from trafmetuxd.protocol import ProtocolError
from trafmetuxd.sockfile import bind_socket, remove_socket, resolve_group
from trafmetuxd.spec import HttpSpec

log = logging.getLogger(__name__)
RESTART_DELAY = 1.0  # seconds between a front's death and its replacement ...
RESTART_DELAY_MAX = 30.0  # ... doubled after each front that died young, up to this
SETTLED = 1.0  # seconds a front must have run for its successor to start after RESTART_DELAY
STOP_TIMEOUT = 3.0  # seconds a front has to exit once the link is closed
PROC_SELF_EXE = "/proc/self/exe"
MAX_CLIENTS = 1024  # the front's connections at most: each may buffer 128 KiB of a request line
HTTP_BACKLOG = 128
HASH_ENV = "TRAFMETUX_HTTP_PASSWORD_HASH"  # as front.py reads it


async def serve_link(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Answer
) -> None:
    """Answer the front's requests until it closes the link.

    Each request runs as a task of its own; the front bounds how many arrive. A request still
    running when the link closes (a flush) is left to finish: it must not be cut short.
    """
    running: set[asyncio.Task[None]] = set()

    async def one(ident: bytes, creds: bytes, line: bytes) -> None:
        try:
            req = protocol.decode_request(line)
            peer = link_peer(creds)
        except (ProtocolError, ValueError) as exc:
            code, message = (exc.code, exc.message) if isinstance(exc, ProtocolError) else (
                protocol.BAD_REQUEST, f"bad credentials on the link: {exc}")  # fmt: skip
            reply = protocol.encode_reply_err(code, message)
        else:
            reply = await answer(req, line, peer)  # the front checked who may ask
        if not writer.is_closing():
            writer.write(ident + b" " + reply)

    with contextlib.suppress(ConnectionError, asyncio.LimitOverrunError, ValueError):
        while line := await reader.readline():
            ident, _, rest = line.partition(b" ")
            creds, _, request = rest.partition(b" ")
            task = asyncio.create_task(one(ident, creds, request))
            running.add(task)
            task.add_done_callback(running.discard)


def link_peer(creds: bytes) -> Peer:
    """The client's identity from the link's "UID:GID:PID" field (the front may read)."""
    uid, gid, pid = (int(x) for x in creds.split(b":"))
    return Peer(pid, uid, gid, may_read=True, may_admin=uid == 0)


def interpreter() -> str:
    """The file to execute for the front: this very interpreter binary.

    sys.executable is a path (a venv's symlink, say) that the daemon's user may not be able
    to traverse once its capabilities are dropped, though the binary itself is executable:
    the kernel's /proc/self/exe reaches it directly. argv[0] stays sys.executable, so the
    front finds the same venv and site-packages.
    """
    return PROC_SELF_EXE if os.path.exists(PROC_SELF_EXE) else sys.executable


def bind_http(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (bound here, so the front needs no privilege)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(HTTP_BACKLOG)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise OSError(exc.errno, f"http.listen {where}: cannot listen: {exc.strerror}") from None
    return sock


class Front:
    """Runs the front process on the control socket, and again whenever it dies."""

    def __init__(
        self,
        path: Path,
        group: str,
        answer: Answer,
        idle_timeout: float = 30.0,
        http: HttpSpec | None = None,
    ) -> None:
        self.path = path
        self.http = http if http is not None else HttpSpec()
        self._http_listeners: list[socket.socket] = []
        self.group = group
        self.answer = answer
        self.idle_timeout = idle_timeout
        self.restarts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._listener: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._resolved = (-1, False)  # (gid, found) of the socket group, set by bind()

    def bind(self) -> None:
        """Create the socket file (0660, group) and listen; clients queue until the front runs."""
        self._resolved = resolve_group(self.group)
        self._listener = bind_socket(self.path, self._resolved[0])
        try:
            for host, port in self.http.listen:
                self._http_listeners.append(bind_http(host, port))
        except OSError:
            self._close_http()
            raise

    def _close_http(self) -> None:
        for sock in self._http_listeners:
            sock.close()
        self._http_listeners = []

    def start(self) -> None:
        """Start the front and keep it running until stop()."""
        self._task = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        """End the front (closing the link tells it to), then drop the socket file."""
        self._stopping = True
        if self._writer is not None:
            self._writer.close()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            remove_socket(self.path)
        self._close_http()

    def info(self) -> dict[str, object]:
        """JSON-able facts for the status command."""
        pid = self.proc.pid if self.proc is not None else None
        return {"pid": pid, "restarts": self.restarts}

    async def _supervise(self) -> None:
        delay = RESTART_DELAY
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except OSError as exc:
                log.error("cannot run the control socket front: %s", exc)
            if self._stopping:
                return
            self.restarts += 1
            # A front that keeps dying at once (a broken install) is retried ever more
            # slowly, so the log is not flooded; one that ran a while is replaced quickly.
            delay = RESTART_DELAY if time.monotonic() - started > SETTLED else delay
            log.warning("restarting the control socket front in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, RESTART_DELAY_MAX)

    async def _run_once(self) -> None:
        assert self._listener is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        http_fds = [sock.fileno() for sock in self._http_listeners]
        env = None
        if self.http.password_hash:
            env = {**os.environ, HASH_ENV: self.http.password_hash}
        with theirs:
            self.proc = await asyncio.create_subprocess_exec(
                *self._command(self._listener.fileno(), theirs.fileno()),
                *(f"--http-fd={fd}" for fd in http_fds),
                executable=interpreter(),
                stdin=subprocess.DEVNULL,
                pass_fds=(self._listener.fileno(), theirs.fileno(), *http_fds),
                env=env,
            )
        reader, self._writer = await asyncio.open_unix_connection(
            sock=ours, limit=protocol.MAX_LINE + 64
        )
        try:
            await serve_link(reader, self._writer, self.answer)
        finally:
            self._writer.close()
        status = await self.proc.wait()
        if not self._stopping:
            log.warning("control socket front (pid %d) exited, status %d", self.proc.pid, status)

    def _command(self, listen_fd: int, link_fd: int) -> list[str]:
        return [
            sys.executable, "-m", "trafmetuxd.front",
            "--parent", str(os.getpid()),
            "--listen-fd", str(listen_fd),
            "--link-fd", str(link_fd),
            "--path", str(self.path),
            "--group", self.group,
            "--gid", str(self._resolved[0]),
            "--group-found", str(int(self._resolved[1])),
            "--max-clients", str(MAX_CLIENTS),
            "--idle-timeout", str(self.idle_timeout),
            "--http-user", self.http.user,
            "--http-max-clients", str(self.http.max_clients),
        ]  # fmt: skip
