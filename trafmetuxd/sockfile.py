"""The control socket's file: created with its mode and group, replaced only when stale."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat
from pathlib import Path

log = logging.getLogger(__name__)
SOCKET_MODE = 0o660
LISTEN_BACKLOG = 1024  # connections the kernel queues before accept (capped by somaxconn)


def resolve_group(name: str) -> tuple[int, bool]:
    """(gid, found): the socket group's gid, or the process's own gid when it does not exist."""
    try:
        return grp.getgrnam(name).gr_gid, True
    except KeyError:
        log.warning("socket group %r does not exist; socket group is gid %d", name, os.getgid())
        return os.getgid(), False


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def clear_stale(path: Path) -> None:
    """Remove an existing socket file nobody answers on; refuse anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; refusing to replace it")
    if _answers(path):
        raise OSError(f"another process answers on {path}; is trafmetuxd already running?")
    path.unlink()


def bind_socket(path: Path, gid: int) -> socket.socket:
    """A listening socket at path with mode 0660 and the given group."""
    clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # the default umask leaves no write bit for others, so nobody can connect before chmod
        sock.bind(str(path))
        os.chown(path, -1, gid)
        os.chmod(path, SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def remove_socket(path: Path) -> None:
    """Remove the socket file, if it is still there and still a socket."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
