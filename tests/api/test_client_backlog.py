"""The client waits for room in a full accept queue instead of failing at once."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from trafmetuxctl.client import Client, UnreachableError


def full_listener(path: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: backlog 0 plus the connections that fill it."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    fillers: list[socket.socket] = []
    while True:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            probe.connect(str(path))
        except BlockingIOError:
            probe.close()
            return server, fillers
        fillers.append(probe)
        assert len(fillers) < 100, "the accept queue never filled"


def test_a_full_accept_queue_delays_the_client_until_the_daemon_accepts(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server, fillers = full_listener(path)
    accepted: list[socket.socket] = []

    def drain_later() -> None:
        time.sleep(0.3)
        for _ in range(len(fillers) + 1):
            accepted.append(server.accept()[0])

    thread = threading.Thread(target=drain_later)
    thread.start()
    client = Client(str(path), timeout=5.0)
    started = time.monotonic()
    try:
        client.connect()  # would fail with EAGAIN at once without the wait
        assert time.monotonic() - started >= 0.25
    finally:
        thread.join()
        client.close()
        for s in [server, *fillers, *accepted]:
            s.close()


def test_a_queue_that_stays_full_times_out_naming_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server, fillers = full_listener(path)
    try:
        with pytest.raises(UnreachableError, match="not answering"):
            Client(str(path), timeout=0.3).connect()
    finally:
        for s in [server, *fillers]:
            s.close()
