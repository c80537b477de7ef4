"""sd_notify READY/STATUS/WATCHDOG/RELOADING/STOPPING; a no-op when not under systemd."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

import sdnotify


class _Connected(sdnotify.SystemdNotifier):  # type: ignore[misc]
    """sdnotify's sender on a socket we connect: its own constructor reads os.environ and
    leaks the socket when the connection fails."""

    def __init__(self, sock: socket.socket) -> None:
        self.debug = False
        self.socket = sock


def _connect(address: str) -> socket.socket | None:
    """A datagram socket connected to NOTIFY_SOCKET ('@name' is an abstract name), or None."""
    if address.startswith("@"):
        address = "\0" + address[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        return None
    # Never wait on the receiver: when its queue is full (systemd busy, a test not reading) a
    # blocking send would stall the packet loop. The message is dropped instead, as
    # libsystemd's sd_notify does with MSG_DONTWAIT; the next STATUS/WATCHDOG follows soon.
    sock.setblocking(False)
    return sock


class Notifier:
    """Talks to systemd's notification socket named by NOTIFY_SOCKET, if any."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._environ = environ
        address = environ.get("NOTIFY_SOCKET", "")
        sock = _connect(address) if address else None
        self._notifier = _Connected(sock) if sock is not None else None

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere."""
        return self._notifier is not None

    def send(self, state: str) -> None:
        """Send one raw notification (lines of KEY=VALUE); errors are ignored by design."""
        if self._notifier is not None:
            self._notifier.notify(state)

    def ready(self) -> None:
        """The queue is bound, the rules are in and the socket listens."""
        self.send("READY=1")

    def status(self, text: str) -> None:
        """One-line status shown by systemctl status (newlines would start new fields)."""
        self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> None:
        """Both loops are alive."""
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """A reload starts; ready() ends it."""
        self.send("RELOADING=1")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), None when not asked for."""
        usec = self._environ.get("WATCHDOG_USEC", "")
        pid = self._environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid != str(os.getpid()):
            return None
        return int(usec) / 2 / 1_000_000

    def close(self) -> None:
        """Close the notification socket."""
        if self._notifier is not None:
            with contextlib.suppress(OSError):
                self._notifier.socket.close()
        self._notifier = None
