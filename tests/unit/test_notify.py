"""sd_notify against a real AF_UNIX datagram socket named by NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trafmetuxd.notify import Notifier


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def received(sock: socket.socket) -> str:
    """The next notification."""
    return sock.recv(4096).decode()


def test_lifecycle_messages_reach_systemd(systemd_socket: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": systemd_socket.getsockname()})
    assert notifier.enabled
    notifier.ready()
    notifier.status("2 monitors\n 310 pkt/s")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    notifier.close()
    messages = [received(systemd_socket) for _ in range(5)]
    assert messages == [
        "READY=1",
        "STATUS=2 monitors  310 pkt/s",  # one line: a newline would start a new field
        "WATCHDOG=1",
        "RELOADING=1",
        "STOPPING=1",
    ]


def test_abstract_socket_names_are_understood(tmp_path: Path) -> None:
    name = f"trafmetux-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.close()
        assert received(sock) == "READY=1"


def test_without_notify_socket_everything_is_a_no_op(systemd_socket: socket.socket) -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready()
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()
    notifier.close()
    systemd_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        systemd_socket.recv(4096)


def test_a_vanished_systemd_socket_does_not_break_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "gone"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    path.unlink()
    notifier.ready()  # sd_notify semantics: errors are ignored
    notifier.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(
    environ: dict[str, str], expected: float | None
) -> None:
    assert Notifier(environ).watchdog_interval() == expected


def test_a_receiver_that_does_not_read_never_blocks_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    try:
        # far beyond the receiver's queue of datagrams: a blocking send would hang on the 11th
        sender = threading.Thread(
            target=lambda: [notifier.status(f"tick {n}") for n in range(2000)]
        )
        sender.start()
        sender.join(timeout=30)
        assert not sender.is_alive(), "the sender is stuck on a full receiver"
        assert receiver.recv(4096) == b"STATUS=tick 0"
    finally:
        notifier.close()
        receiver.close()
