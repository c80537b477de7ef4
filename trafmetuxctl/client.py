"""Blocking client for the daemon's control socket: one request line out, one reply line in."""

from __future__ import annotations

import _socket  # the C module behind `socket`: same calls, without socket.py's enum set-up
import errno
import time

from trafmetuxd import protocol

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; annotations only need it for mypy
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/run/trafmetux/trafmetuxd.sock"


class UnreachableError(Exception):
    """The daemon cannot be reached; the message names the socket and why."""


class DaemonError(Exception):
    """The daemon answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _why(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        return f"socket {path} is missing (is trafmetuxd running?)"
    if isinstance(exc, PermissionError):
        return f"permission denied on socket {path} (root or the socket group may connect)"
    if isinstance(exc, ConnectionRefusedError):
        return f"nobody is answering on socket {path} (stale socket: is trafmetuxd running?)"
    if isinstance(exc, TimeoutError):
        return f"trafmetuxd is not answering on socket {path} (timed out)"
    return f"cannot talk to trafmetuxd on socket {path}: {exc.strerror or exc}"


def connect_socket(sock: _socket.socket, path: str, timeout: float) -> None:
    """Connect, waiting while the daemon's accept queue is full (EAGAIN), up to timeout.

    A Unix socket with a timeout fails at once with EAGAIN when the listener's backlog is full,
    where a TCP client would keep retrying its SYN: do the same here.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, "accept queue full") from None
            time.sleep(0.01)


class Client:
    """A connection to the daemon; several requests may share it."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: _socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open the socket or raise UnreachableError."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            connect_socket(sock, self.path, self.timeout)
        except OSError as exc:
            sock.close()
            raise UnreachableError(_why(self.path, exc)) from None
        self._sock = sock

    def close(self) -> None:
        """Close the connection."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, cmd: str, **args: Any) -> Any:
        """Send one request; return its result or raise DaemonError / UnreachableError."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(protocol.encode_request(cmd, **args))
            line = self._readline(self._sock)
        except OSError as exc:
            self.close()
            raise UnreachableError(_why(self.path, exc)) from None
        reply = protocol.decode_reply(line)
        if not reply.ok:
            raise DaemonError(reply.code, reply.message)
        return reply.result

    def _readline(self, sock: _socket.socket) -> bytes:
        while b"\n" not in self._buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "connection closed by trafmetuxd")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line
