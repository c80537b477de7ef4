"""Framing, errors and limits of the real control socket server."""

from __future__ import annotations

import grp
import json
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LoopThread, Running, serve

from trafmetuxd.api import start_server
from trafmetuxd.protocol import MAX_LINE


def connect(path: Path, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def read_line(s: socket.socket) -> dict[str, object] | None:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
    obj = json.loads(buf)
    assert isinstance(obj, dict)
    return obj


def ask(s: socket.socket, raw: bytes) -> dict[str, object]:
    s.sendall(raw)
    reply = read_line(s)
    assert reply is not None
    return reply


def code(reply: dict[str, object]) -> object:
    err = reply["error"]
    assert isinstance(err, dict)
    return err["code"]


def test_socket_file_is_0660_in_the_socket_group(running: Running) -> None:
    st = running.path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == grp.getgrnam("daemon").gr_gid


def test_several_requests_share_one_connection(running: Running) -> None:
    with connect(running.path) as s:
        first = ask(s, b'{"v":1,"cmd":"status"}\n')
        second = ask(s, b'{"v":1,"cmd":"monitors"}\n')
        third = ask(s, b'{"cmd":"live"}\n')
    assert first["ok"] is True and first["result"]["state"] == "running"  # type: ignore[index]
    names = [m["name"] for m in second["result"]["monitors"]]  # type: ignore[index]
    assert names == ["input", "output"]
    assert third["result"] == {"rates": {"input": [1536.0, 0.0], "output": [0.0, 2048.0]}}


def test_two_requests_in_one_write_get_two_replies_in_order(running: Running) -> None:
    with connect(running.path) as s:
        s.sendall(b'{"v":1,"cmd":"monitors"}\n{"v":1,"cmd":"nope"}\n')
        buf = b""
        while buf.count(b"\n") < 2:
            buf += s.recv(65536)
    first, second = (json.loads(x) for x in buf.splitlines())
    assert first["ok"] is True
    assert second["error"]["code"] == "unknown_command"


def test_bad_json_gets_an_error_and_the_connection_stays(running: Running) -> None:
    with connect(running.path) as s:
        assert code(ask(s, b"{not json\n")) == "bad_json"
        assert code(ask(s, b"[1, 2]\n")) == "bad_request"
        assert ask(s, b'{"v":1,"cmd":"status"}\n')["ok"] is True


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"v":1,"cmd":"shutdown"}\n', "unknown_command"),
        (b'{"v":1,"cmd":"__class__"}\n', "unknown_command"),
        (b'{"v":2,"cmd":"status"}\n', "bad_request"),
        (b'{"v":1}\n', "bad_request"),
        (b'{"v":1,"cmd":"report"}\n', "bad_argument"),
        (b'{"v":1,"cmd":"report","period":"fortnight"}\n', "bad_argument"),
        (b'{"v":1,"cmd":"report","period":"day","last":0}\n', "bad_argument"),
        (b'{"v":1,"cmd":"report","period":"day","last":true}\n', "bad_argument"),
        (b'{"v":1,"cmd":"report","period":"day","monitors":["ghost"]}\n', "not_found"),
        (b'{"v":1,"cmd":"report","period":"day","begin":"yesterday"}\n', "bad_argument"),
        (b'{"v":1,"cmd":"status","verbose":true}\n', "bad_argument"),
        (b'{"v":1,"cmd":"quota","name":"nope"}\n', "not_found"),
        (b'{"v":1,"cmd":"flows"}\n', "bad_argument"),
    ],
)
def test_bad_requests_get_stable_error_codes(running: Running, line: bytes, expected: str) -> None:
    with connect(running.path) as s:
        reply = ask(s, line)
    assert reply["ok"] is False
    assert code(reply) == expected


def test_a_line_of_exactly_64_kib_is_read(running: Running) -> None:
    body = b'{"v":1,"cmd":"status"}'
    line = body + b" " * (MAX_LINE - len(body))
    with connect(running.path) as s:
        assert ask(s, line + b"\n")["ok"] is True


def test_a_line_over_64_kib_is_refused_and_the_connection_closed(running: Running) -> None:
    body = b'{"v":1,"cmd":"status"}'
    line = body + b" " * (MAX_LINE + 1 - len(body))
    with connect(running.path) as s:
        reply = ask(s, line + b"\n")
        assert code(reply) == "too_large"
        assert read_line(s) is None  # closed


@pytest.fixture
def quick(public_dir: Path) -> Iterator[Running]:
    yield from serve(public_dir, max_clients=3, idle_timeout=0.5)


def test_a_stalled_client_is_disconnected(quick: Running) -> None:
    with connect(quick.path) as s:
        s.sendall(b'{"v":1,"cmd":"sta')  # half a request, then nothing
        started = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - started < 3
    with connect(quick.path) as s:  # the server still serves others
        assert ask(s, b'{"v":1,"cmd":"status"}\n')["ok"] is True


def test_clients_beyond_the_limit_get_unavailable(quick: Running) -> None:
    held = [connect(quick.path) for _ in range(3)]
    try:
        for s in held:  # all three are being served
            assert ask(s, b'{"v":1,"cmd":"status"}\n')["ok"] is True
        with connect(quick.path) as extra:
            reply = read_line(extra)
            assert reply is not None and code(reply) == "unavailable"
            assert read_line(extra) is None
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 3
    while quick.server.clients and time.monotonic() < deadline:
        time.sleep(0.02)
    with connect(quick.path) as s:
        assert ask(s, b'{"v":1,"cmd":"status"}\n')["ok"] is True


def test_a_stale_socket_file_is_replaced(public_dir: Path) -> None:
    path = public_dir / "trafmetuxd.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    loops = LoopThread()
    try:
        server = loops.run(start_server(path, "daemon", {}))
        with connect(path) as s:
            assert code(ask(s, b'{"v":1,"cmd":"status"}\n')) == "unknown_command"
        loops.run(server.close())
        assert not path.exists()
    finally:
        loops.stop()


def test_a_live_socket_is_not_replaced(running: Running) -> None:
    loops = LoopThread()
    try:
        with pytest.raises(OSError, match=str(running.path)):
            loops.run(start_server(running.path, "daemon", {}))
    finally:
        loops.stop()
    with connect(running.path) as s:
        assert ask(s, b'{"v":1,"cmd":"status"}\n')["ok"] is True


def test_a_regular_file_at_the_socket_path_is_left_alone(public_dir: Path) -> None:
    path = public_dir / "trafmetuxd.sock"
    path.write_text("precious")
    loops = LoopThread()
    try:
        with pytest.raises(OSError, match="not a socket"):
            loops.run(start_server(path, "daemon", {}))
    finally:
        loops.stop()
    assert path.read_text() == "precious"


def test_a_missing_group_falls_back_to_the_process_gid(public_dir: Path) -> None:
    gen = serve(public_dir, group="no-such-group-trafmetux")
    r = next(gen)
    try:
        info = r.server.info()
        assert info["socket_group_found"] is False
        assert r.path.stat().st_gid == info["socket_gid"]
    finally:
        gen.close()
